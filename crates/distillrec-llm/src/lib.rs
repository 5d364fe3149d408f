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
//! - [`weights`] / [`gguf`] — loading a Hugging Face directory or a GGUF file.
//! - [`tokenizer`] — `tokenizer.json`, or a tokenizer rebuilt from GGUF metadata.
//! - [`generate`] — chat template and greedy generation with stop strings.
//! - [`embed`] — item-title embeddings for a whole catalogue.
//! - [`mod@bench`] — what `distillrec bench llm` times (prefill, one LoRA step).

pub mod bench;
pub mod config;
pub mod embed;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod infer;
pub mod lora;
pub mod model;
pub mod ops;
pub mod parmatmul;
pub mod tokenizer;
pub mod weights;

#[cfg(test)]
mod testutil;

pub use config::{Config, Family};
pub use error::{Error, Result};
pub use model::{KvCache, Model};
pub use tokenizer::Tokenizer;
pub use weights::{load, Llm, LoadOptions};
