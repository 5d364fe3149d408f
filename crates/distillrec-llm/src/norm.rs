//! The normalisation layers of a decoder (RMSNorm for Llama and Qwen2,
//! LayerNorm for OPT) with their frozen parameters.

use crate::config::{Config, Family};
use crate::error::Result;
use crate::ops;

use candle_core::Tensor;

/// A normalisation layer with its (frozen) parameters.
#[derive(Clone, Debug)]
pub enum Norm {
    /// RMSNorm (Llama, Qwen2).
    Rms {
        /// Scale.
        weight: Tensor,
        /// Epsilon.
        eps: f64,
    },
    /// LayerNorm (OPT).
    Layer {
        /// Scale.
        weight: Tensor,
        /// Shift.
        bias: Tensor,
        /// Epsilon.
        eps: f64,
    },
}

impl Norm {
    /// The norm `name` of a `cfg` model, its tensors read with `get`
    /// (name, expected shape).
    pub(crate) fn load(
        cfg: &Config,
        get: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>,
        name: &str,
    ) -> Result<Norm> {
        let h = cfg.hidden_size;
        Ok(match cfg.family {
            Family::Opt => Norm::Layer {
                weight: get(&format!("{name}.weight"), &[h])?,
                bias: get(&format!("{name}.bias"), &[h])?,
                eps: cfg.norm_eps,
            },
            _ => Norm::Rms {
                weight: get(&format!("{name}.weight"), &[h])?,
                eps: cfg.norm_eps,
            },
        })
    }

    /// Normalises the last dimension; `allow_fused` lets untracked inputs use
    /// candle's fused kernel.
    pub fn forward(&self, x: &Tensor, allow_fused: bool) -> candle_core::Result<Tensor> {
        let fused = ops::can_fuse(allow_fused, &[x]);
        match self {
            Norm::Rms { weight, eps } => ops::rms_norm(x, weight, *eps, fused),
            Norm::Layer { weight, bias, eps } => ops::layer_norm(x, weight, bias, *eps, fused),
        }
    }
}
