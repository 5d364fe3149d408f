//! The LLM backbone of distillrec (SPEC section 6).
//!
//! A decoder-only transformer written for this project on top of candle, with
//! every op on the training path differentiable so that gradients reach LoRA
//! adapters in every layer and the input embeddings:
//!
//! - [`config`] — the upstream `config.json` of Llama-family, Qwen2 and OPT
//!   models (and the same fields read from GGUF metadata), unified in [`Config`].
//! - [`model`] — [`Model`]: embeddings, decoder layers, final norm, LM head;
//!   batched forward with attention masks, left or right padding,
//!   `inputs_embeds`, and a KV cache.
//! - [`ops`] — normalisation, RoPE and softmax, composed from differentiable
//!   primitives, with fused candle kernels used only where no gradient is
//!   needed; a fused cross-entropy with its own backward.
//! - [`lora`] — [`lora::Linear`], a frozen linear layer that can carry an
//!   adapter (`y = Wx + delta(x)`), the plain LoRA adapter, and the frozen
//!   matmul whose backward skips the weight gradient.
//! - [`source`] — [`source::WeightSource`], where tensors come from; the
//!   on-disk sources are [`weights`] (a Hugging Face directory's safetensors)
//!   and [`gguf`] (a GGUF file, dequantized at load).
//! - [`tokenizer`] — `tokenizer.json`, or a tokenizer rebuilt from GGUF metadata.
//! - [`chat`] — chat templates.
//! - [`loader`] — [`load`]: model, tokenizer and chat template from a path.
//! - [`generate`] — greedy generation with stop strings.
//!
//! Modules depend one way: `config` ← `tokenizer` ← `source` ← `weights`/`gguf`;
//! `source` ← `model` ← `loader` (with `chat`) and `model` ← `generate`, `embed`, `bench`.
//! - [`embed`] — item-title embeddings for a whole catalogue.
//! - `tape` — the explicit forward/backward of the decoder stack that
//!   trains adapters on the CPU (hand-written backward, saved activations
//!   only), with its attention and layers in private submodules over the
//!   crate-private `kernels` (float trait, matrix views, the one matmul);
//!   reached through [`pass`] (public only, hidden, for the f64 gradient
//!   checks of `tests/tape.rs`). The optimiser is
//!   `distillrec_models::optim::AdamW`, shared with the students.
//! - [`adapters`] — [`AdapterSet`] (the mixture-of-experts LoRA) and
//!   [`Dropout`] (LoRA dropout), the trainable state of the teacher.
//! - [`loss`] — [`lm_head_loss`], the LM-head cross-entropy and its
//!   gradient with respect to the last hidden states, in one pass over the
//!   head (online softmax per vocabulary chunk).
//! - [`pass`] — one training pass (forward, backward, last-row inference)
//!   on the tape or on the composed graph behind one interface, so the
//!   teacher trains on either and the two can be compared.
//! - [`blas`] — an optional system OpenBLAS found at run time for the tape's
//!   large products (gemm otherwise).
//! - [`mod@bench`] — what `distillrec bench llm` times on the backbone
//!   alone: prefill and the plain causal-LM adapter step on the tape (the
//!   teacher's steps are timed by `distillrec_teacher::bench`).

pub mod adapters;
pub mod bench;
pub mod blas;
pub mod chat;
pub mod config;
mod dropmask;
pub mod embed;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod infer;
mod kernels;
pub mod loader;
pub mod lora;
pub mod loss;
pub mod model;
mod norm;
pub mod ops;
pub mod parmatmul;
pub mod pass;
pub mod random;
mod shape;
pub mod source;
/// Public only for the f64 finite-difference checks of `tests/tape.rs`,
/// which need the generic explicit pass ([`pass`] is the f32 interface).
#[doc(hidden)]
pub mod tape;
pub mod tokenizer;
pub mod weights;

#[cfg(test)]
mod testutil;

pub use adapters::{AdapterSet, Dropout};
pub use chat::ChatTemplate;
pub use config::{Config, Family};
pub use error::{Error, Result};
pub use loader::{load, read_meta, BackboneMeta, Llm, LoadOptions};
pub use loss::{lm_head_loss, lm_head_loss_composed};
pub use model::{KvCache, Model};
pub use source::{MapSource, WeightSource};
pub use tape::Real;
pub use tokenizer::Tokenizer;
