//! [`load`]: opens a Hugging Face model directory or a GGUF file and returns
//! model, tokenizer and chat template together.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device};

use crate::chat::ChatTemplate;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::gguf::{config_from_gguf, read_content, GgufSource};
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use crate::weights::SafetensorsSource;

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Keep only the first n layers.
    pub num_layers: Option<usize>,
    /// Parameter dtype (f32 on CPU).
    pub dtype: DType,
    /// Device.
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            num_layers: None,
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

/// A loaded backbone: model, tokenizer, chat template and where it came from.
pub struct Llm {
    /// The transformer.
    pub model: Model,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// How to render a chat prompt for it.
    pub chat: ChatTemplate,
    /// The file or directory it was loaded from.
    pub source: PathBuf,
}

/// Loads a Hugging Face model directory or a GGUF file.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Llm> {
    if path.is_dir() {
        load_hf_dir(path, opts)
    } else if path.is_file() {
        load_gguf(path, opts)
    } else if path.exists() {
        Err(Error::file(
            path,
            "is neither a regular file nor a directory; give a GGUF file or a Hugging Face model directory",
        ))
    } else {
        Err(Error::file(path, "no such file or directory"))
    }
}

/// What a backbone is without its weights: its [`Config`] and, when it has
/// one beside it, its tokenizer and chat template.
pub struct BackboneMeta {
    /// The shape (after `num_layers`).
    pub config: Config,
    /// Tokenizer and chat template (`None` for a `config.json` alone).
    pub tokenizer: Option<(Tokenizer, ChatTemplate)>,
}

/// A backbone's [`BackboneMeta`], no weights read: from a Hugging Face
/// directory, a `config.json` file (with the tokenizer of its directory
/// when there is one), or a GGUF file's metadata, read once. `num_layers`
/// truncates as loading would.
pub fn read_meta(path: &Path, num_layers: Option<usize>) -> Result<BackboneMeta> {
    let (mut config, tokenizer) = if path.is_dir() {
        let c = Config::from_hf_json(&path.join("config.json"))?;
        let t = hf_tokenizer(path, &c)?;
        (c, Some(t))
    } else if path.extension().is_some_and(|e| e == "json") {
        let c = Config::from_hf_json(path)?;
        let t = match path.parent() {
            Some(d) if d.join("tokenizer.json").is_file() => Some(hf_tokenizer(d, &c)?),
            _ => None,
        };
        (c, t)
    } else if path.is_file() {
        let (_, content) = read_content(path)?;
        let c = config_from_gguf(&content, path)?;
        let t = gguf_tokenizer(&content, path)?;
        (c, Some(t))
    } else {
        return Err(Error::file(path, "no such file or directory"));
    };
    if let Some(n) = num_layers {
        config.truncate_layers(n)?;
    }
    Ok(BackboneMeta { config, tokenizer })
}

/// The tokenizer and chat template of a Hugging Face directory.
fn hf_tokenizer(dir: &Path, cfg: &Config) -> Result<(Tokenizer, ChatTemplate)> {
    let tokenizer = Tokenizer::from_hf_dir(dir, cfg)?;
    let template = read_chat_template(&dir.join("tokenizer_config.json"))?;
    let chat = ChatTemplate::detect(template.as_deref(), &tokenizer);
    Ok((tokenizer, chat))
}

/// The tokenizer and chat template in a GGUF file's metadata.
fn gguf_tokenizer(
    content: &candle_core::quantized::gguf_file::Content,
    path: &Path,
) -> Result<(Tokenizer, ChatTemplate)> {
    let tokenizer = Tokenizer::from_gguf(&content.metadata, path)?;
    let chat = ChatTemplate::detect(gguf_chat_template(content).as_deref(), &tokenizer);
    Ok((tokenizer, chat))
}

/// The chat template in a GGUF file's metadata, if any.
fn gguf_chat_template(content: &candle_core::quantized::gguf_file::Content) -> Option<String> {
    match content.metadata.get("tokenizer.chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

/// Loads a Hugging Face directory: `config.json`, safetensors, `tokenizer.json`
/// (and the chat template of `tokenizer_config.json`, if any).
pub fn load_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<Llm> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        return Err(Error::file(&cfg_path, "missing"));
    }
    let mut cfg = Config::from_hf_json(&cfg_path)?;
    if let Some(n) = opts.num_layers {
        cfg.truncate_layers(n)?;
    }
    let mut src = SafetensorsSource::open(dir)?;
    let model = Model::new(&cfg, &mut src, opts.dtype, &opts.device)?;
    let (tokenizer, chat) = hf_tokenizer(dir, &cfg)?;
    Ok(Llm {
        model,
        tokenizer,
        chat,
        source: dir.to_path_buf(),
    })
}

fn read_chat_template(path: &Path) -> Result<Option<String>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::error::read_small_file(path)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::file(path, format!("bad JSON: {e}")))?;
    Ok(v.get("chat_template")
        .and_then(|t| t.as_str())
        .map(str::to_owned))
}

/// Loads model, tokenizer and chat template from a GGUF file.
pub fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Llm> {
    let (mut reader, content) = read_content(path)?;
    let mut cfg = config_from_gguf(&content, path)?;
    if let Some(n) = opts.num_layers {
        cfg.truncate_layers(n)?;
    }
    if let Some(info) = content.tensor_infos.get("rope_freqs.weight") {
        let t = info
            .read(&mut reader, content.tensor_data_offset, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .map_err(|e| Error::tensor(path, "rope_freqs.weight", e))?;
        let f = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if let Some(i) = f.iter().position(|x| !(x.is_finite() && *x > 0.0)) {
            return Err(Error::tensor(
                path,
                "rope_freqs.weight",
                format!(
                    "factor {} at index {i} is not a positive finite number",
                    f[i]
                ),
            ));
        }
        if f.len() != cfg.head_dim / 2 {
            return Err(Error::tensor(
                path,
                "rope_freqs.weight",
                format!("{} factors, expected {}", f.len(), cfg.head_dim / 2),
            ));
        }
        cfg.rope_freq_factors = Some(f);
    }
    let (tokenizer, chat) = gguf_tokenizer(&content, path)?;
    let arch = match content.metadata.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let mut src = GgufSource::new(path, reader, content, &cfg, &arch);
    let model = Model::new(&cfg, &mut src, opts.dtype, &opts.device)?;
    Ok(Llm {
        model,
        tokenizer,
        chat,
        source: path.to_path_buf(),
    })
}
