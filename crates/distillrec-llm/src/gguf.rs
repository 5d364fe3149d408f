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
use std::io::{BufReader, Read, Seek, SeekFrom};
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

/// The most memory the parsed header (metadata values, tensor infos) may
/// take, estimated before parsing: a parsed value takes up to
/// `VALUE_BYTES` (32) bytes in memory for as little as one byte on disk.
pub const MAX_HEADER_MEMORY: u64 = 1 << 30;

/// In-memory size of one parsed metadata value (candle's `Value`).
const VALUE_BYTES: u64 = 32;

/// Element count limit of one tensor (2^40 values).
const MAX_TENSOR_ELEMS: u64 = 1 << 40;

/// Opens and parses the header of a GGUF file. The header is first walked
/// without allocating ([`check_header`]), so a hostile count, length or
/// shape ends with an error naming the file instead of a huge allocation.
pub fn read_content(path: &Path) -> Result<(BufReader<File>, Content)> {
    let file = File::open(path).map_err(|e| Error::file(path, e))?;
    let mut reader = BufReader::new(file);
    check_header(&mut reader)
        .map_err(|e| Error::file(path, format!("not a valid GGUF file: {e}")))?;
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::file(path, e))?;
    let content = Content::read(&mut reader)
        .map_err(|e| Error::file(path, format!("not a valid GGUF file: {e}")))?;
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims();
        if dims.is_empty() || dims.contains(&0) {
            return Err(Error::tensor(
                path,
                name,
                format!("shape {dims:?} has no elements"),
            ));
        }
    }
    Ok((reader, content))
}

/// Walks a GGUF header (magic, version, counts, metadata, tensor infos)
/// with every count and length bounded by the bytes left in the file and
/// the estimated memory of the parsed header bounded by
/// [`MAX_HEADER_MEMORY`]; checks `general.alignment` (a positive power of
/// two) and that each tensor's element count fits. Allocates nothing that
/// the file does not justify; strings are skipped, not read.
pub fn check_header<R: Read + Seek>(r: &mut R) -> std::result::Result<(), String> {
    let file_len = r.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    r.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut h = HeaderWalk {
        r,
        file_len,
        pos: 0,
        memory: 0,
        wide: true,
    };
    let magic = h.u32()?;
    if magic != 0x4655_4747 && magic != 0x4747_5546 {
        return Err(format!("bad magic 0x{magic:08x}"));
    }
    let version = h.u32()?;
    if version == 1 {
        return Err(
            "GGUF version 1 is not supported (v2 and v3 are); re-convert with a current llama.cpp"
                .into(),
        );
    }
    if !(2..=3).contains(&version) {
        return Err(format!(
            "unsupported GGUF version {version} (v2 and v3 are supported)"
        ));
    }
    h.wide = version >= 2;
    let tensors = h.len()?;
    let kvs = h.len()?;
    let prefix = if h.wide { 8 } else { 4 };
    h.need(kvs.saturating_mul(prefix + 4 + 1), "metadata entries")?;
    h.need(tensors.saturating_mul(prefix + 4 + 4 + 8), "tensor infos")?;
    for _ in 0..kvs {
        let is_alignment = h.key_is(b"general.alignment")?;
        let ty = h.u32()?;
        let value = h.value(ty, 0)?;
        // The parser divides by an integer alignment (other types: default).
        if let (true, Some(a)) = (is_alignment, value) {
            if a == 0 || !a.is_power_of_two() {
                return Err(format!(
                    "general.alignment {a} is not a positive power of two"
                ));
            }
        }
    }
    for _ in 0..tensors {
        h.string()?;
        let n_dims = h.u32()?;
        if n_dims == 0 || n_dims > 4 {
            return Err(format!(
                "a tensor has {n_dims} dimensions (1 to 4 supported)"
            ));
        }
        let mut elems: u64 = 1;
        for _ in 0..n_dims {
            let d = h.len()?;
            elems = elems
                .checked_mul(d)
                .filter(|&e| e <= MAX_TENSOR_ELEMS)
                .ok_or_else(|| {
                    format!("a tensor's shape has more than {MAX_TENSOR_ELEMS} elements")
                })?;
        }
        h.u32()?; // dtype (checked by the parser)
        h.len64()?; // offset (checked against the file when read)
        h.add_memory(128)?;
    }
    Ok(())
}

/// State of [`check_header`]'s walk.
struct HeaderWalk<'a, R> {
    r: &'a mut R,
    file_len: u64,
    pos: u64,
    memory: u64,
    /// Lengths are u64 (v2, v3) rather than u32 (v1).
    wide: bool,
}

impl<R: Read + Seek> HeaderWalk<'_, R> {
    fn need(&self, bytes: u64, what: &str) -> std::result::Result<(), String> {
        let left = self.file_len.saturating_sub(self.pos);
        if bytes > left {
            return Err(format!(
                "{what}: {bytes} bytes needed, only {left} left in the file"
            ));
        }
        Ok(())
    }
    fn add_memory(&mut self, bytes: u64) -> std::result::Result<(), String> {
        self.memory = self.memory.saturating_add(bytes);
        if self.memory > MAX_HEADER_MEMORY {
            return Err(format!(
                "the header would take more than {MAX_HEADER_MEMORY} bytes of memory"
            ));
        }
        Ok(())
    }
    fn bytes<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        self.need(N as u64, "the header")?;
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("truncated header: {e}"))?;
        self.pos += N as u64;
        Ok(b)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes::<4>()?))
    }
    fn len64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes::<8>()?))
    }
    fn len(&mut self) -> std::result::Result<u64, String> {
        if self.wide {
            self.len64()
        } else {
            Ok(self.u32()? as u64)
        }
    }
    fn skip(&mut self, n: u64) -> std::result::Result<(), String> {
        self.need(n, "a string")?;
        self.r
            .seek(SeekFrom::Current(n as i64))
            .map_err(|e| e.to_string())?;
        self.pos += n;
        Ok(())
    }
    /// Reads a metadata key; whether it equals `want` (only a key of that
    /// length is read, any other is skipped).
    fn key_is(&mut self, want: &[u8]) -> std::result::Result<bool, String> {
        let n = self.len()?;
        self.need(n, "a key")?;
        self.add_memory(n + 24)?;
        if n != want.len() as u64 {
            self.skip(n)?;
            return Ok(false);
        }
        let mut b = vec![0u8; want.len()];
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("truncated header: {e}"))?;
        self.pos += n;
        Ok(b == want)
    }

    /// Skips a string; returns its length.
    fn string(&mut self) -> std::result::Result<u64, String> {
        let n = self.len()?;
        self.need(n, "a string")?;
        self.add_memory(n + 24)?;
        self.skip(n)?;
        Ok(n)
    }
    /// Skips a value of type `ty`; returns it when it is an unsigned or
    /// non-negative integer (for `general.alignment`).
    fn value(&mut self, ty: u32, depth: usize) -> std::result::Result<Option<u64>, String> {
        if depth > 8 {
            return Err("metadata arrays nested too deeply".into());
        }
        self.add_memory(VALUE_BYTES)?;
        Ok(match ty {
            0 => Some(self.bytes::<1>()?[0] as u64),
            1 => u64::try_from(self.bytes::<1>()?[0] as i8).ok(),
            7 => {
                self.bytes::<1>()?;
                None
            }
            2 => Some(u16::from_le_bytes(self.bytes::<2>()?) as u64),
            3 => u64::try_from(i16::from_le_bytes(self.bytes::<2>()?)).ok(),
            4 => Some(self.u32()? as u64),
            5 => u64::try_from(i32::from_le_bytes(self.bytes::<4>()?)).ok(),
            6 => {
                self.bytes::<4>()?;
                None
            }
            10..=12 => {
                self.bytes::<8>()?;
                None
            }
            8 => {
                self.string()?;
                None
            }
            9 => {
                let elem = self.u32()?;
                let n = self.len()?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    10..=12 => 8,
                    8 => {
                        if self.wide {
                            8
                        } else {
                            4
                        }
                    }
                    9 => 4 + if self.wide { 8 } else { 4 },
                    other => return Err(format!("unknown metadata value type {other}")),
                };
                self.need(n.saturating_mul(min), "an array")?;
                self.add_memory(n.saturating_mul(VALUE_BYTES))?;
                match elem {
                    8 | 9 => {
                        for _ in 0..n {
                            self.value(elem, depth + 1)?;
                        }
                    }
                    _ => self.skip(n * min)?,
                }
                None
            }
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
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
            Some(i) => i.shape.dims().first().copied().unwrap_or(0),
            None => return Err(Error::tensor(path, "token_embd.weight", "missing")),
        },
    };
    let rope_key = format!("{arch}.rope.freq_base");
    if let Some(theta) = md_float(md, &rope_key, path)? {
        if !(theta.is_finite() && theta > 0.0) {
            return Err(Error::file(
                path,
                format!("metadata `{rope_key}` must be a positive finite number, got {theta}"),
            ));
        }
    }
    for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"] {
        if let Some(id) = md_int(md, key, path)? {
            if id >= vocab {
                return Err(Error::file(
                    path,
                    format!("metadata `{key}` {id} is outside the vocabulary (vocab_size {vocab})"),
                ));
            }
        }
    }
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
