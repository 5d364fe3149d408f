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

/// The backbone's [`Config`] alone, no weights: from a Hugging Face
/// directory's `config.json`, a `config.json` file itself, or a GGUF file's
/// metadata (its tensors are not read). `num_layers` truncates as loading
/// would.
pub fn read_config(path: &Path, num_layers: Option<usize>) -> Result<Config> {
    let mut cfg = if path.is_dir() {
        Config::from_hf_json(&path.join("config.json"))?
    } else if path.extension().is_some_and(|e| e == "json") {
        Config::from_hf_json(path)?
    } else if path.is_file() {
        let (_, content) = read_content(path)?;
        config_from_gguf(&content, path)?
    } else {
        return Err(Error::file(path, "no such file or directory"));
    };
    if let Some(n) = num_layers {
        cfg.truncate_layers(n)?;
    }
    Ok(cfg)
}

/// The backbone's tokenizer and chat template alone, no weights: from a
/// Hugging Face directory (or the directory of its `config.json`) or a GGUF
/// file's metadata; `None` when a `config.json` stands alone.
pub fn read_tokenizer(path: &Path) -> Result<Option<(Tokenizer, ChatTemplate)>> {
    let dir = if path.is_dir() {
        path
    } else if path.extension().is_some_and(|e| e == "json") {
        match path.parent() {
            Some(d) if d.join("tokenizer.json").is_file() => d,
            _ => return Ok(None),
        }
    } else {
        let (_, content) = read_content(path)?;
        let tokenizer = Tokenizer::from_gguf(&content.metadata, path)?;
        let chat = ChatTemplate::detect(gguf_chat_template(&content).as_deref(), &tokenizer);
        return Ok(Some((tokenizer, chat)));
    };
    let cfg = Config::from_hf_json(&dir.join("config.json"))?;
    let tokenizer = Tokenizer::from_hf_dir(dir, &cfg)?;
    let template = read_chat_template(&dir.join("tokenizer_config.json"))?;
    let chat = ChatTemplate::detect(template.as_deref(), &tokenizer);
    Ok(Some((tokenizer, chat)))
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
    let tokenizer = Tokenizer::from_hf_dir(dir, &cfg)?;
    let template = read_chat_template(&dir.join("tokenizer_config.json"))?;
    let chat = ChatTemplate::detect(template.as_deref(), &tokenizer);
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
    let tokenizer = Tokenizer::from_gguf(&content.metadata, path)?;
    let chat = ChatTemplate::detect(gguf_chat_template(&content).as_deref(), &tokenizer);
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
