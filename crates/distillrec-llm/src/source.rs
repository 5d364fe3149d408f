//! Where weights come from, as one interface: [`WeightSource`] resolves
//! Hugging Face tensor names; [`MapSource`] holds tensors in memory. The
//! on-disk sources are `SafetensorsSource` (module `weights`) and
//! `GgufSource` (module `gguf`), which implement it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::error::{Error, Result};

/// A store of named tensors, addressed by Hugging Face names.
pub trait WeightSource {
    /// The file or directory, for error messages.
    fn path(&self) -> &Path;
    /// Whether a tensor of that name exists.
    fn contains(&self, name: &str) -> bool;
    /// Reads tensor `name` (any float dtype, CPU). `shape` is the shape the
    /// model expects; sources check it before reading when they can.
    fn load(&mut self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// Whether the values are generated (known finite), so the loader
    /// skips its scan for NaN and infinity.
    fn generated(&self) -> bool {
        false
    }
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
