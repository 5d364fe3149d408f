//! Where weights come from: a Hugging Face directory (single or sharded
//! safetensors), a GGUF file (see [`crate::gguf`]), or tensors in memory.
//! [`load`] opens either on-disk layout and returns model, tokenizer and chat
//! template together.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::generate::ChatTemplate;
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// A store of named tensors, addressed by Hugging Face names.
pub trait WeightSource {
    /// The file or directory, for error messages.
    fn path(&self) -> &Path;
    /// Whether a tensor of that name exists.
    fn contains(&self, name: &str) -> bool;
    /// Reads tensor `name` (any float dtype, CPU). `shape` is the shape the
    /// model expects; sources check it before reading when they can.
    fn load(&mut self, name: &str, shape: &[usize]) -> Result<Tensor>;
}

/// Tensors held in memory (tests, tools that build models programmatically).
pub struct MapSource {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl MapSource {
    /// A source over `tensors`; `label` names it in errors.
    pub fn new(label: impl Into<PathBuf>, tensors: HashMap<String, Tensor>) -> MapSource {
        MapSource {
            path: label.into(),
            tensors,
        }
    }
}

impl WeightSource for MapSource {
    fn path(&self) -> &Path {
        &self.path
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn load(&mut self, name: &str, _shape: &[usize]) -> Result<Tensor> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| Error::tensor(&self.path, name, "missing"))
    }
}

/// The safetensors files of a Hugging Face model directory, memory-mapped.
pub struct SafetensorsSource {
    dir: PathBuf,
    files: Vec<(PathBuf, MmapedSafetensors)>,
    /// Tensor name → index into `files`.
    index: HashMap<String, usize>,
}

impl SafetensorsSource {
    /// Opens `model.safetensors`, or the shards listed by
    /// `model.safetensors.index.json`, in `dir`.
    pub fn open(dir: &Path) -> Result<SafetensorsSource> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let shard_of: Option<BTreeMap<String, String>> = if index_path.exists() {
            #[derive(serde::Deserialize)]
            struct Index {
                weight_map: BTreeMap<String, String>,
            }
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| Error::file(&index_path, e))?;
            let idx: Index = serde_json::from_str(&text)
                .map_err(|e| Error::file(&index_path, format!("bad index: {e}")))?;
            Some(idx.weight_map)
        } else if single.exists() {
            None
        } else {
            let hint = if dir.join("pytorch_model.bin").exists() {
                " (pickle checkpoints are never loaded; convert to safetensors)"
            } else {
                ""
            };
            return Err(Error::file(
                dir,
                format!("no model.safetensors or model.safetensors.index.json{hint}"),
            ));
        };
        let names: Vec<String> = match &shard_of {
            Some(m) => {
                let mut v: Vec<String> = m.values().cloned().collect();
                v.sort();
                v.dedup();
                v
            }
            None => vec!["model.safetensors".into()],
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            if name.contains('/') || name.contains('\\') || name.starts_with('.') {
                return Err(Error::file(
                    &index_path,
                    format!("shard name `{name}` is not a plain file name"),
                ));
            }
            let p = dir.join(name);
            if !p.exists() {
                return Err(Error::file(&p, "missing shard"));
            }
            // SAFETY: the file is mapped read-only; it must not be modified
            // while the model loads (the same contract as every mmap loader).
            let st = unsafe { MmapedSafetensors::new(&p) }
                .map_err(|e| Error::file(&p, format!("not a valid safetensors file: {e}")))?;
            for (t, _) in st.tensors() {
                index.insert(t, i);
            }
            files.push((p, st));
        }
        if let Some(m) = &shard_of {
            for (t, f) in m {
                let i = names.iter().position(|n| n == f).unwrap_or(0);
                if index.get(t) != Some(&i) {
                    return Err(Error::tensor(
                        &files[i].0,
                        t,
                        "listed in model.safetensors.index.json but not in the shard",
                    ));
                }
            }
        }
        Ok(SafetensorsSource {
            dir: dir.to_path_buf(),
            files,
            index,
        })
    }
}

impl WeightSource for SafetensorsSource {
    fn path(&self) -> &Path {
        &self.dir
    }
    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
    fn load(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let &i = self.index.get(name).ok_or_else(|| {
            let file = if self.files.len() == 1 {
                self.files[0].0.clone()
            } else {
                self.dir.clone()
            };
            Error::tensor(file, name, "missing")
        })?;
        let (path, st) = &self.files[i];
        let view = st.get(name).map_err(|e| Error::tensor(path, name, e))?;
        if view.shape() != shape {
            return Err(Error::tensor(
                path,
                name,
                format!("shape {:?}, expected {:?}", view.shape(), shape),
            ));
        }
        let t = st
            .load(name, &Device::Cpu)
            .map_err(|e| Error::tensor(path, name, e))?;
        match t.dtype() {
            DType::F32 | DType::F16 | DType::BF16 | DType::F64 => Ok(t),
            d => Err(Error::tensor(
                path,
                name,
                format!("dtype {d:?} is not a float type"),
            )),
        }
    }
}

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
        crate::gguf::load_gguf(path, opts)
    } else {
        Err(Error::file(path, "no such file or directory"))
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
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::file(path, format!("bad JSON: {e}")))?;
    Ok(v.get("chat_template")
        .and_then(|t| t.as_str())
        .map(str::to_owned))
}
