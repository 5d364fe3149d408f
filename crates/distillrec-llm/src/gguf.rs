//! Loading a GGUF file: configuration from `{arch}.*` metadata, tensors
//! dequantized to the model dtype at load, Hugging Face names mapped to
//! llama.cpp's, and the q/k rows un-permuted.
//!
//! llama.cpp's converter permutes the rows of `q_proj`/`k_proj` for Llama
//! models so that RoPE can rotate interleaved pairs `(2i, 2i+1)`; our RoPE
//! (like Hugging Face's) rotates the two halves of each head, so the rows are
//! permuted back here. Qwen2 GGUFs are not permuted.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};

use crate::config::{Activation, Config, Family};
use crate::error::{Error, Result};
use crate::source::WeightSource;
use crate::tokenizer::int_value;

/// The tensors of a GGUF file, addressed by Hugging Face names.
pub struct GgufSource {
    path: PathBuf,
    reader: BufReader<File>,
    content: Content,
    n_heads: usize,
    n_kv_heads: usize,
    permuted_qk: bool,
}

/// Opens and parses the header of a GGUF file.
pub fn read_content(path: &Path) -> Result<(BufReader<File>, Content)> {
    let file = File::open(path).map_err(|e| Error::file(path, e))?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader)
        .map_err(|e| Error::file(path, format!("not a valid GGUF file: {e}")))?;
    Ok((reader, content))
}

/// The llama.cpp name of a Hugging Face tensor name (Llama/Qwen2 layout).
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// Undoes llama.cpp's q/k permutation: rows grouped per head as
/// `(head, half, pair)` in the file become `(head, pair, half)`.
pub fn unpermute_qk(t: &Tensor, n_heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let out = dims[0];
    let half = out / n_heads / 2;
    let rest: Vec<usize> = dims[1..].to_vec();
    let mut shape = vec![n_heads, half, 2];
    shape.extend(&rest);
    t.reshape(shape)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

impl GgufSource {
    /// A source over the tensors of `content`, read through `reader`.
    pub fn new(
        path: &Path,
        reader: BufReader<File>,
        content: Content,
        cfg: &Config,
        arch: &str,
    ) -> GgufSource {
        GgufSource {
            path: path.to_path_buf(),
            reader,
            content,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            permuted_qk: arch == "llama",
        }
    }
}

impl WeightSource for GgufSource {
    fn path(&self) -> &Path {
        &self.path
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.content.tensor_infos.contains_key(&g))
    }

    fn load(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let g =
            gguf_name(name).ok_or_else(|| Error::tensor(&self.path, name, "no GGUF equivalent"))?;
        let info = self
            .content
            .tensor_infos
            .get(&g)
            .ok_or_else(|| Error::tensor(&self.path, &g, "missing"))?;
        if info.shape.dims() != shape {
            return Err(Error::tensor(
                &self.path,
                &g,
                format!("shape {:?}, expected {:?}", info.shape.dims(), shape),
            ));
        }
        let q = info
            .read(
                &mut self.reader,
                self.content.tensor_data_offset,
                &Device::Cpu,
            )
            .map_err(|e| {
                Error::tensor(
                    &self.path,
                    &g,
                    format!("unreadable (corrupt or truncated file?): {e}"),
                )
            })?;
        let t = q
            .dequantize(&Device::Cpu)
            .map_err(|e| Error::tensor(&self.path, &g, e))?;
        let t = if self.permuted_qk && g.contains(".attn_q.") {
            unpermute_qk(&t, self.n_heads)?
        } else if self.permuted_qk && g.contains(".attn_k.") {
            unpermute_qk(&t, self.n_kv_heads)?
        } else {
            t
        };
        Ok(t)
    }
}

fn md_int(md: &HashMap<String, Value>, key: &str, path: &Path) -> Result<Option<usize>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => match int_value(v) {
            Some(x) if x >= 0 => Ok(Some(x as usize)),
            _ => Err(Error::file(
                path,
                format!("metadata `{key}` is not a non-negative integer"),
            )),
        },
    }
}

fn md_float(md: &HashMap<String, Value>, key: &str, path: &Path) -> Result<Option<f64>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::F32(x)) => Ok(Some(*x as f64)),
        Some(Value::F64(x)) => Ok(Some(*x)),
        Some(v) => match int_value(v) {
            Some(x) => Ok(Some(x as f64)),
            None => Err(Error::file(
                path,
                format!("metadata `{key}` is not a number"),
            )),
        },
    }
}

/// Builds the model configuration from GGUF metadata (`llama` and `qwen2`
/// architectures).
pub fn config_from_gguf(content: &Content, path: &Path) -> Result<Config> {
    let md = &content.metadata;
    let arch = match md.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(Error::file(
                path,
                "missing metadata key `general.architecture`",
            ))
        }
    };
    let family = match arch.as_str() {
        "llama" => Family::Llama,
        "qwen2" => Family::Qwen2,
        other => {
            return Err(Error::unsupported(
                path,
                format!("GGUF architecture `{other}` (supported: llama, qwen2)"),
            ))
        }
    };
    let req = |k: &str| -> Result<usize> {
        md_int(md, &format!("{arch}.{k}"), path)?
            .ok_or_else(|| Error::file(path, format!("missing metadata key `{arch}.{k}`")))
    };
    if md_int(md, &format!("{arch}.expert_count"), path)?.unwrap_or(0) > 0 {
        return Err(Error::unsupported(path, "mixture-of-experts models"));
    }
    if let Some(Value::String(s)) = md.get(&format!("{arch}.rope.scaling.type")) {
        if s != "none" {
            return Err(Error::unsupported(
                path,
                format!("{arch}.rope.scaling.type = `{s}`"),
            ));
        }
    }
    let hidden = req("embedding_length")?;
    let heads = req("attention.head_count")?;
    let kv = md_int(md, &format!("{arch}.attention.head_count_kv"), path)?.unwrap_or(heads);
    let head_dim =
        md_int(md, &format!("{arch}.attention.key_length"), path)?.unwrap_or(hidden / heads.max(1));
    if let Some(rd) = md_int(md, &format!("{arch}.rope.dimension_count"), path)? {
        if rd != head_dim {
            return Err(Error::unsupported(
                path,
                format!(
                    "partial rotary embeddings (rope.dimension_count {rd} != head_dim {head_dim})"
                ),
            ));
        }
    }
    let vocab = match md_int(md, &format!("{arch}.vocab_size"), path)? {
        Some(v) => v,
        None => match content.tensor_infos.get("token_embd.weight") {
            Some(i) => i.shape.dims()[0],
            None => return Err(Error::tensor(path, "token_embd.weight", "missing")),
        },
    };
    let has = |n: &str| content.tensor_infos.contains_key(n);
    let cfg = Config {
        family,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: req("feed_forward_length")?,
        num_hidden_layers: req("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim,
        max_position_embeddings: md_int(md, &format!("{arch}.context_length"), path)?
            .unwrap_or(4096),
        norm_eps: md_float(
            md,
            &format!("{arch}.attention.layer_norm_rms_epsilon"),
            path,
        )?
        .ok_or_else(|| {
            Error::file(
                path,
                format!("missing metadata key `{arch}.attention.layer_norm_rms_epsilon`"),
            )
        })?,
        rope_theta: md_float(md, &format!("{arch}.rope.freq_base"), path)?.unwrap_or(10_000.0),
        rope_scaling: None,
        rope_freq_factors: None,
        tie_word_embeddings: !has("output.weight"),
        qkv_bias: has("blk.0.attn_q.bias"),
        o_bias: has("blk.0.attn_output.bias"),
        mlp_bias: has("blk.0.ffn_up.bias"),
        activation: Activation::Silu,
        sliding_window: None,
        word_embed_proj_dim: hidden,
        do_layer_norm_before: true,
        final_norm: true,
        bos_token_id: md_int(md, "tokenizer.ggml.bos_token_id", path)?.map(|x| x as u32),
        eos_token_ids: md_int(md, "tokenizer.ggml.eos_token_id", path)?
            .map(|x| x as u32)
            .into_iter()
            .collect(),
    };
    cfg.validate(path)?;
    Ok(cfg)
}
