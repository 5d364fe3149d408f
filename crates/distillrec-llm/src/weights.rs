//! The safetensors files of a Hugging Face model directory (single or
//! sharded), as a [`WeightSource`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::source::WeightSource;

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
            let text = crate::error::read_small_file(&index_path)?;
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
