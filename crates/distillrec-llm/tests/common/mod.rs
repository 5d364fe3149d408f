//! Tiny random-weight models written by the tests themselves: a Hugging Face
//! directory (config.json, model.safetensors, tokenizer.json) and a GGUF file
//! with llama.cpp's q/k permutation, both from the same weights.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::AddedToken;

pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

pub const SMOL_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Deterministic uniform numbers in [-1, 1).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn tensor(&mut self, shape: &[usize], scale: f32, offset: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| offset + scale * self.next()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}

/// Byte-level BPE vocabulary: control tokens, the 256 byte symbols, merges.
pub struct Vocab {
    pub tokens: Vec<String>,
    pub merges: Vec<(String, String)>,
    pub types: Vec<i32>,
}

pub fn vocab() -> Vocab {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut types = vec![3; SPECIALS.len()];
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort();
    for c in alphabet {
        tokens.push(c.to_string());
        types.push(1);
    }
    let pairs = [
        ("Ġ", "t"),
        ("h", "e"),
        ("Ġt", "he"),
        ("i", "n"),
        ("Ġ", "a"),
        ("o", "n"),
        ("e", "r"),
        ("Ġ", "s"),
        ("a", "t"),
        ("Ġ", "w"),
    ];
    let mut merges = Vec::new();
    for (a, b) in pairs {
        merges.push((a.to_string(), b.to_string()));
        tokens.push(format!("{a}{b}"));
        types.push(1);
    }
    Vocab {
        tokens,
        merges,
        types,
    }
}

pub fn write_tokenizer_json(dir: &Path, v: &Vocab) {
    let map: tokenizers::models::bpe::Vocab = v
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(map, v.merges.clone())
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(Sequence::new(vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ])))
    .with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    let specials: Vec<AddedToken> = SPECIALS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    tok.add_special_tokens(&specials);
    tok.save(dir.join("tokenizer.json"), false).unwrap();
}

/// A model of `cfg` with the random weights of `seed`, in `dtype` on the CPU.
pub fn build(cfg: &serde_json::Value, seed: u64, dtype: DType) -> distillrec_llm::Model {
    let c = distillrec_llm::Config::from_hf_value(cfg, Path::new("config.json")).unwrap();
    let w: std::collections::HashMap<String, Tensor> =
        random_weights(cfg, seed).into_iter().collect();
    distillrec_llm::Model::new(
        &c,
        &mut distillrec_llm::MapSource::new("mem", w),
        dtype,
        &Device::Cpu,
    )
    .unwrap()
}

/// A tiny Llama/Qwen2 `config.json`.
pub fn llama_config(model_type: &str, layers: usize, tie: bool) -> serde_json::Value {
    json!({
        "model_type": model_type,
        "vocab_size": vocab().tokens.len(),
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": tie,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
    })
}

/// A tiny OPT `config.json`.
pub fn opt_config(pre_norm: bool, proj_dim: usize) -> serde_json::Value {
    json!({
        "model_type": "opt",
        "vocab_size": vocab().tokens.len(),
        "hidden_size": 32,
        "ffn_dim": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "do_layer_norm_before": pre_norm,
        "word_embed_proj_dim": proj_dim,
        "activation_function": "relu",
        "enable_bias": true,
        "bos_token_id": 1,
        "eos_token_id": 2,
    })
}

/// Random weights with Hugging Face names for a config made above.
pub fn random_weights(cfg: &serde_json::Value, seed: u64) -> BTreeMap<String, Tensor> {
    let mut r = Rng::new(seed);
    let g = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let mut w = BTreeMap::new();
    let v = g("vocab_size");
    let h = g("hidden_size");
    let heads = g("num_attention_heads");
    let hd = h / heads;
    let mut put = |name: String, shape: &[usize], scale: f32, offset: f32, r: &mut Rng| {
        w.insert(name, r.tensor(shape, scale, offset));
    };
    if cfg["model_type"] == "opt" {
        let e = g("word_embed_proj_dim");
        let f = g("ffn_dim");
        let p = "model.decoder";
        put(
            format!("{p}.embed_tokens.weight"),
            &[v, e],
            0.5,
            0.0,
            &mut r,
        );
        put(
            format!("{p}.embed_positions.weight"),
            &[g("max_position_embeddings") + 2, h],
            0.5,
            0.0,
            &mut r,
        );
        if e != h {
            put(format!("{p}.project_in.weight"), &[h, e], 0.3, 0.0, &mut r);
            put(format!("{p}.project_out.weight"), &[e, h], 0.3, 0.0, &mut r);
        }
        if cfg["do_layer_norm_before"].as_bool().unwrap() {
            put(
                format!("{p}.final_layer_norm.weight"),
                &[h],
                0.1,
                1.0,
                &mut r,
            );
            put(format!("{p}.final_layer_norm.bias"), &[h], 0.1, 0.0, &mut r);
        }
        for l in 0..g("num_hidden_layers") {
            let q = format!("{p}.layers.{l}");
            for m in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                put(
                    format!("{q}.self_attn.{m}.weight"),
                    &[h, h],
                    0.3,
                    0.0,
                    &mut r,
                );
                put(format!("{q}.self_attn.{m}.bias"), &[h], 0.1, 0.0, &mut r);
            }
            for n in ["self_attn_layer_norm", "final_layer_norm"] {
                put(format!("{q}.{n}.weight"), &[h], 0.1, 1.0, &mut r);
                put(format!("{q}.{n}.bias"), &[h], 0.1, 0.0, &mut r);
            }
            put(format!("{q}.fc1.weight"), &[f, h], 0.3, 0.0, &mut r);
            put(format!("{q}.fc1.bias"), &[f], 0.1, 0.0, &mut r);
            put(format!("{q}.fc2.weight"), &[h, f], 0.3, 0.0, &mut r);
            put(format!("{q}.fc2.bias"), &[h], 0.1, 0.0, &mut r);
        }
        return w;
    }
    let kv = g("num_key_value_heads") * hd;
    let i = g("intermediate_size");
    let bias = cfg["model_type"] == "qwen2";
    put(
        "model.embed_tokens.weight".into(),
        &[v, h],
        0.5,
        0.0,
        &mut r,
    );
    put("model.norm.weight".into(), &[h], 0.1, 1.0, &mut r);
    if !cfg["tie_word_embeddings"].as_bool().unwrap_or(false) {
        put("lm_head.weight".into(), &[v, h], 0.5, 0.0, &mut r);
    }
    for l in 0..g("num_hidden_layers") {
        let p = format!("model.layers.{l}");
        put(
            format!("{p}.input_layernorm.weight"),
            &[h],
            0.1,
            1.0,
            &mut r,
        );
        put(
            format!("{p}.post_attention_layernorm.weight"),
            &[h],
            0.1,
            1.0,
            &mut r,
        );
        put(
            format!("{p}.self_attn.q_proj.weight"),
            &[h, h],
            0.3,
            0.0,
            &mut r,
        );
        put(
            format!("{p}.self_attn.k_proj.weight"),
            &[kv, h],
            0.3,
            0.0,
            &mut r,
        );
        put(
            format!("{p}.self_attn.v_proj.weight"),
            &[kv, h],
            0.3,
            0.0,
            &mut r,
        );
        put(
            format!("{p}.self_attn.o_proj.weight"),
            &[h, h],
            0.3,
            0.0,
            &mut r,
        );
        if bias {
            put(format!("{p}.self_attn.q_proj.bias"), &[h], 0.2, 0.0, &mut r);
            put(
                format!("{p}.self_attn.k_proj.bias"),
                &[kv],
                0.2,
                0.0,
                &mut r,
            );
            put(
                format!("{p}.self_attn.v_proj.bias"),
                &[kv],
                0.2,
                0.0,
                &mut r,
            );
        }
        put(
            format!("{p}.mlp.gate_proj.weight"),
            &[i, h],
            0.3,
            0.0,
            &mut r,
        );
        put(format!("{p}.mlp.up_proj.weight"), &[i, h], 0.3, 0.0, &mut r);
        put(
            format!("{p}.mlp.down_proj.weight"),
            &[h, i],
            0.3,
            0.0,
            &mut r,
        );
    }
    w
}

pub fn write_safetensors(path: &Path, w: &BTreeMap<String, Tensor>) {
    let map: std::collections::HashMap<String, Tensor> =
        w.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

/// A Hugging Face directory with config.json, model.safetensors and tokenizer.json.
pub fn write_hf_dir(dir: &Path, cfg: &serde_json::Value, w: &BTreeMap<String, Tensor>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(cfg).unwrap(),
    )
    .unwrap();
    write_safetensors(&dir.join("model.safetensors"), w);
    write_tokenizer_json(dir, &vocab());
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string(&json!({ "chat_template": SMOL_TEMPLATE })).unwrap(),
    )
    .unwrap();
}

/// llama.cpp's `permute` of q/k rows for interleaved RoPE.
pub fn permute_qk(t: &Tensor, n_head: usize) -> Tensor {
    let (out, inp) = t.dims2().unwrap();
    t.reshape((n_head, 2, out / n_head / 2, inp))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((out, inp))
        .unwrap()
}

/// A GGUF file (arch `llama` or `qwen2`) with the same weights, llama.cpp
/// names, permuted q/k for llama, and the tokenizer in the metadata.
pub fn write_gguf(path: &Path, cfg: &serde_json::Value, w: &BTreeMap<String, Tensor>, arch: &str) {
    let g = |k: &str| cfg[k].as_u64().unwrap() as u32;
    let heads = g("num_attention_heads") as usize;
    let kv = g("num_key_value_heads") as usize;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in w {
        let gname = if let Some(rest) = name.strip_prefix("model.layers.") {
            let (l, rest) = rest.split_once('.').unwrap();
            let (m, suffix) = rest.rsplit_once('.').unwrap();
            let gm = match m {
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" => "ffn_norm",
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                other => panic!("{other}"),
            };
            format!("blk.{l}.{gm}.{suffix}")
        } else {
            match name.as_str() {
                "model.embed_tokens.weight" => "token_embd.weight".into(),
                "model.norm.weight" => "output_norm.weight".into(),
                "lm_head.weight" => "output.weight".into(),
                other => panic!("{other}"),
            }
        };
        let t = if arch == "llama" && gname.ends_with("attn_q.weight") {
            permute_qk(t, heads)
        } else if arch == "llama" && gname.ends_with("attn_k.weight") {
            permute_qk(t, kv)
        } else {
            t.clone()
        };
        tensors.push((
            gname,
            QTensor::quantize(&t.to_dtype(DType::F32).unwrap(), GgmlDType::F32).unwrap(),
        ));
    }
    let v = vocab();
    let s = |x: &str| Value::String(x.to_string());
    let md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s(arch)),
        (
            format!("{arch}.block_count"),
            Value::U32(g("num_hidden_layers")),
        ),
        (
            format!("{arch}.context_length"),
            Value::U32(g("max_position_embeddings")),
        ),
        (
            format!("{arch}.embedding_length"),
            Value::U32(g("hidden_size")),
        ),
        (
            format!("{arch}.feed_forward_length"),
            Value::U32(g("intermediate_size")),
        ),
        (
            format!("{arch}.attention.head_count"),
            Value::U32(heads as u32),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            Value::U32(kv as u32),
        ),
        (
            format!("{arch}.rope.freq_base"),
            Value::F32(cfg["rope_theta"].as_f64().unwrap() as f32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg["rms_norm_eps"].as_f64().unwrap() as f32),
        ),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("smollm")),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(v.tokens.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(v.types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(
                v.merges
                    .iter()
                    .map(|(a, b)| s(&format!("{a} {b}")))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.chat_template".into(), s(SMOL_TEMPLATE)),
    ];
    let md_ref: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_ref: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_ref, &t_ref).unwrap();
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
