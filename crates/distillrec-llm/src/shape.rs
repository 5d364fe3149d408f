//! The sizes a backbone [`Config`] implies, without any weights: the shape
//! of each adaptable projection and the parameter count. `teacher plan`
//! sizes a run from these before anything is loaded.

use crate::config::{Config, Family};
use crate::model::Target;

impl Config {
    /// `(input, output)` width of projection `t` in one decoder layer, or
    /// `None` where the family has no such projection (OPT has no SwiGLU
    /// gate).
    pub fn projection_dims(&self, t: Target) -> Option<(usize, usize)> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        match t {
            Target::Q => Some((h, q)),
            Target::K | Target::V => Some((h, kv)),
            Target::O => Some((q, h)),
            Target::Gate if self.family == Family::Opt => None,
            Target::Gate | Target::Up => Some((h, i)),
            Target::Down => Some((i, h)),
        }
    }

    /// Weights of one decoder layer: the projections with their biases and
    /// the norms.
    pub fn layer_parameters(&self) -> u64 {
        let h = self.hidden_size as u64;
        let mut n = 0u64;
        for t in Target::ALL {
            let Some((i, o)) = self.projection_dims(t) else {
                continue;
            };
            n += i as u64 * o as u64;
            let bias = match t {
                Target::Q | Target::K | Target::V => self.qkv_bias,
                Target::O => self.o_bias,
                Target::Gate | Target::Up | Target::Down => self.mlp_bias,
            };
            if bias {
                n += o as u64;
            }
        }
        // RMSNorm: a weight per norm; LayerNorm (OPT): weight and bias
        let per_norm = if self.family == Family::Opt { 2 * h } else { h };
        n + 2 * per_norm
    }

    /// Every weight of the model as built (after `num_layers`): embeddings,
    /// the decoder layers, the final norm and an untied LM head.
    pub fn parameter_count(&self) -> u64 {
        let (v, h) = (self.vocab_size as u64, self.hidden_size as u64);
        let layers = self.num_hidden_layers as u64 * self.layer_parameters();
        let (embed, extra, norm) = if self.family == Family::Opt {
            let e = self.word_embed_proj_dim as u64;
            // learned positions carry OPT's offset of 2
            let positions = (self.max_position_embeddings as u64 + 2) * h;
            let proj = if e == h { 0 } else { 2 * e * h };
            let norm = if self.final_norm { 2 * h } else { 0 };
            (v * e, positions + proj, norm)
        } else {
            (v * h, 0, h)
        };
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + extra + layers + norm + head
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn from_json(text: &str) -> Config {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        Config::from_hf_value(&v, Path::new("config.json")).unwrap()
    }

    #[test]
    fn llama_2_7b_has_6_74_billion_parameters() {
        let c = from_json(
            r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                "tie_word_embeddings": false}"#,
        );
        // the published count: 6,738,415,616
        assert_eq!(c.parameter_count(), 6_738_415_616);
    }

    #[test]
    fn smollm2_135m_ties_its_head() {
        let c = from_json(
            r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
                "tie_word_embeddings": true}"#,
        );
        // the published count: 134,515,008
        assert_eq!(c.parameter_count(), 134_515_008);
        assert_eq!(c.projection_dims(Target::K), Some((576, 192)));
    }
}
