//! Model configuration: the upstream `config.json` of each supported family,
//! unified into one [`Config`] that the model code reads.
//!
//! Only what changes the computation is kept. Anything that would change it
//! but is not implemented (other activations, other RoPE scalings, Qwen2's
//! per-layer sliding window, ...) is refused with an error naming the key,
//! never silently ignored.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The architecture family, which fixes norms, positions and MLP shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Llama 2/3, Mistral, SmolLM2, TinyLlama: RMSNorm, RoPE, GQA, SwiGLU.
    Llama,
    /// Qwen2: Llama with biases on the q/k/v projections.
    Qwen2,
    /// OPT: learned positions (offset 2), LayerNorm, ReLU MLP, biases everywhere.
    Opt,
}

/// The MLP's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (used gated, SwiGLU, by Llama and Qwen2).
    Silu,
    /// ReLU (OPT).
    Relu,
    /// Exact (erf) GELU (some OPT variants).
    Gelu,
}

/// Llama 3 RoPE frequency scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Llama3RopeScaling {
    /// Overall stretch of the low frequencies.
    pub factor: f64,
    /// Wavelengths longer than `original / low_freq_factor` are divided by `factor`.
    pub low_freq_factor: f64,
    /// Wavelengths shorter than `original / high_freq_factor` are unchanged.
    pub high_freq_factor: f64,
    /// Context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
}

/// Everything the transformer needs to know about its shape, unified across
/// families. Build it with [`Config::from_hf_json`] or from GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Architecture family.
    pub family: Family,
    /// Rows of the token-embedding table (and of the LM head).
    pub vocab_size: usize,
    /// Residual-stream width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers actually built (after any `num_layers` override).
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (fewer than query heads = grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Longest position the model supports (a hard limit for learned positions).
    pub max_position_embeddings: usize,
    /// Epsilon of RMSNorm / LayerNorm.
    pub norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Llama 3 RoPE scaling, if the model uses it.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Per-frequency RoPE divisors (GGUF `rope_freqs.weight`), if present.
    pub rope_freq_factors: Option<Vec<f32>>,
    /// The LM head shares the token-embedding matrix.
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub o_bias: bool,
    /// Biases on the MLP projections.
    pub mlp_bias: bool,
    /// MLP activation.
    pub activation: Activation,
    /// Mistral's sliding attention window, if any.
    pub sliding_window: Option<usize>,
    /// OPT: width of the token embeddings (project_in/out when it differs from hidden).
    pub word_embed_proj_dim: usize,
    /// OPT: pre-norm (true) or post-norm (false) layers.
    pub do_layer_norm_before: bool,
    /// OPT: whether the decoder ends with a LayerNorm.
    pub final_norm: bool,
    /// BOS token id, if known.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (generation stops on any).
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<u32> {
        match self {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The fields of a Llama / Mistral / Qwen2 `config.json` that we read.
#[derive(Deserialize)]
struct LlamaJson {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    rope_scaling: Option<serde_json::Value>,
    /// transformers >= 5 layout: `{rope_theta, rope_type, factor, ...}`.
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "default_silu")]
    hidden_act: String,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: bool,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    pretraining_tp: Option<usize>,
    partial_rotary_factor: Option<f64>,
}

/// The fields of an OPT `config.json` that we read.
#[derive(Deserialize)]
struct OptJson {
    vocab_size: usize,
    hidden_size: usize,
    ffn_dim: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_true")]
    do_layer_norm_before: bool,
    word_embed_proj_dim: Option<usize>,
    #[serde(default = "default_relu")]
    activation_function: String,
    #[serde(default = "default_true")]
    enable_bias: bool,
    #[serde(default = "default_true")]
    layer_norm_elementwise_affine: bool,
    #[serde(default, rename = "_remove_final_layer_norm")]
    remove_final_layer_norm: bool,
    #[serde(default = "default_true")]
    tie_word_embeddings: bool,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
}

fn default_max_pos() -> usize {
    4096
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_silu() -> String {
    "silu".into()
}
fn default_relu() -> String {
    "relu".into()
}
fn default_true() -> bool {
    true
}

impl Config {
    /// Reads a Hugging Face `config.json` (Llama, Mistral, Qwen2 or OPT).
    pub fn from_hf_json(path: &Path) -> Result<Config> {
        let text = crate::error::read_small_file(path)?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::file(path, format!("bad JSON: {e}")))?;
        Self::from_hf_value(&value, path)
    }

    /// Like [`Config::from_hf_json`] on an already parsed document; `path`
    /// only names the file in errors.
    pub fn from_hf_value(value: &serde_json::Value, path: &Path) -> Result<Config> {
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::file(path, "missing key `model_type`"))?;
        let parse_err =
            |e: serde_json::Error| Error::file(path, format!("{model_type} config: {e}"));
        match model_type {
            "llama" | "mistral" | "qwen2" => {
                let c: LlamaJson = serde_json::from_value(value.clone()).map_err(parse_err)?;
                let family = if model_type == "qwen2" {
                    Family::Qwen2
                } else {
                    Family::Llama
                };
                Self::from_llama_json(c, family, path)
            }
            "opt" => {
                let c: OptJson = serde_json::from_value(value.clone()).map_err(parse_err)?;
                Self::from_opt_json(c, path)
            }
            other => Err(Error::unsupported(
                path,
                format!("model_type `{other}` (supported: llama, mistral, qwen2, opt)"),
            )),
        }
    }

    fn from_llama_json(c: LlamaJson, family: Family, path: &Path) -> Result<Config> {
        if c.hidden_act != "silu" {
            return Err(Error::unsupported(
                path,
                format!("hidden_act `{}` (only silu)", c.hidden_act),
            ));
        }
        if c.pretraining_tp.unwrap_or(1) != 1 {
            return Err(Error::unsupported(path, "pretraining_tp != 1"));
        }
        if c.partial_rotary_factor.is_some_and(|f| f != 1.0) {
            return Err(Error::unsupported(path, "partial_rotary_factor != 1"));
        }
        // transformers >= 5 writes `rope_parameters` (theta and scaling
        // together); older files have `rope_theta` and `rope_scaling`.
        let (rope_theta, scaling) = match &c.rope_parameters {
            Some(p @ serde_json::Value::Object(m)) => (
                m.get("rope_theta")
                    .and_then(|t| t.as_f64())
                    .unwrap_or(c.rope_theta),
                Some(p.clone()),
            ),
            _ => (c.rope_theta, c.rope_scaling.clone()),
        };
        let rope_scaling = match &scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let kind = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("");
                match kind {
                    "default" => None,
                    "llama3" => Some(
                        serde_json::from_value::<Llama3RopeScaling>(v.clone())
                            .map_err(|e| Error::file(path, format!("rope_scaling: {e}")))?,
                    ),
                    other => {
                        return Err(Error::unsupported(
                            path,
                            format!("rope_scaling type `{other}` (only llama3)"),
                        ))
                    }
                }
            }
        };
        let sliding_window = match family {
            Family::Qwen2 if c.use_sliding_window => {
                return Err(Error::unsupported(path, "qwen2 use_sliding_window = true"))
            }
            Family::Qwen2 => None,
            _ => c.sliding_window,
        };
        let heads = c.num_attention_heads;
        let cfg = Config {
            family,
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: c.num_key_value_heads.unwrap_or(heads),
            head_dim: c.head_dim.unwrap_or(c.hidden_size / heads.max(1)),
            max_position_embeddings: c.max_position_embeddings,
            norm_eps: c.rms_norm_eps,
            rope_theta,
            rope_scaling,
            rope_freq_factors: None,
            tie_word_embeddings: c.tie_word_embeddings,
            qkv_bias: family == Family::Qwen2 || c.attention_bias,
            o_bias: c.attention_bias,
            mlp_bias: c.mlp_bias,
            activation: Activation::Silu,
            sliding_window,
            word_embed_proj_dim: c.hidden_size,
            do_layer_norm_before: true,
            final_norm: true,
            bos_token_id: c.bos_token_id,
            eos_token_ids: c.eos_token_id.map(OneOrMany::into_vec).unwrap_or_default(),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn from_opt_json(c: OptJson, path: &Path) -> Result<Config> {
        let activation = match c.activation_function.as_str() {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            other => {
                return Err(Error::unsupported(
                    path,
                    format!("activation_function `{other}` (only relu, gelu)"),
                ))
            }
        };
        if !c.layer_norm_elementwise_affine {
            return Err(Error::unsupported(
                path,
                "layer_norm_elementwise_affine = false",
            ));
        }
        let heads = c.num_attention_heads;
        let cfg = Config {
            family: Family::Opt,
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.ffn_dim,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: heads,
            head_dim: c.hidden_size / heads.max(1),
            max_position_embeddings: c.max_position_embeddings,
            norm_eps: 1e-5,
            rope_theta: 0.0,
            rope_scaling: None,
            rope_freq_factors: None,
            tie_word_embeddings: c.tie_word_embeddings,
            qkv_bias: c.enable_bias,
            o_bias: c.enable_bias,
            mlp_bias: c.enable_bias,
            activation,
            sliding_window: None,
            word_embed_proj_dim: c.word_embed_proj_dim.unwrap_or(c.hidden_size),
            do_layer_norm_before: c.do_layer_norm_before,
            final_norm: c.do_layer_norm_before && !c.remove_final_layer_norm,
            bos_token_id: c.bos_token_id,
            eos_token_ids: c.eos_token_id.map(OneOrMany::into_vec).unwrap_or_default(),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks that the shape fields are consistent (non-zero, heads divide
    /// evenly, even head width for RoPE), that RoPE's base is a positive
    /// finite number and that the BOS/EOS ids are in the vocabulary. `path`
    /// names the source in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::file(path, msg));
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(format!("`{k}` must be positive"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.family != Family::Opt && !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if self.family == Family::Opt
            && self.head_dim * self.num_attention_heads != self.hidden_size
        {
            return bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            return bad("norm epsilon must be positive".into());
        }
        if self.family != Family::Opt && !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!(
                "`rope_theta` must be a positive finite number, got {}",
                self.rope_theta
            ));
        }
        let ids = self
            .bos_token_id
            .iter()
            .map(|&i| ("bos_token_id", i))
            .chain(self.eos_token_ids.iter().map(|&i| ("eos_token_id", i)));
        for (key, id) in ids {
            if id as usize >= self.vocab_size {
                return bad(format!(
                    "`{key}` {id} is outside the vocabulary (vocab_size {})",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// Keeps only the first `n` layers (a cheap teacher for CPU budgets).
    /// Errors if `n` is zero or larger than the model.
    pub fn truncate_layers(&mut self, n: usize) -> Result<()> {
        if n == 0 || n > self.num_hidden_layers {
            return Err(Error::Input(format!(
                "num_layers {n} must be in 1..={}",
                self.num_hidden_layers
            )));
        }
        self.num_hidden_layers = n;
        Ok(())
    }

    /// Query heads per key/value head.
    pub fn gqa_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// RoPE inverse frequencies (`head_dim / 2` of them), with Llama 3 scaling
    /// or GGUF frequency factors applied.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        let mut inv: Vec<f64> = (0..half)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / self.head_dim as f64))
            .collect();
        if let Some(s) = &self.rope_scaling {
            let old = s.original_max_position_embeddings as f64;
            let low_wavelen = old / s.low_freq_factor;
            let high_wavelen = old / s.high_freq_factor;
            for f in inv.iter_mut() {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                if wavelen < high_wavelen {
                    // unchanged
                } else if wavelen > low_wavelen {
                    *f /= s.factor;
                } else {
                    let smooth = (old / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                }
            }
        }
        if let Some(factors) = &self.rope_freq_factors {
            for (f, d) in inv.iter_mut().zip(factors) {
                *f /= *d as f64;
            }
        }
        inv
    }
}
