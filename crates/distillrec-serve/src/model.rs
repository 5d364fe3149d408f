//! The served model: the dataset (fixed for the server's life) and the
//! current student, swapped whole on a checked reload.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Result;
use candle_core::Device;
use serde::Serialize;

use distillrec_data::ItemId;
use distillrec_pipeline::stages::{checkpoint_data, load_for, resolve_item};
use distillrec_pipeline::Data;
use distillrec_train::checkpoint::Loaded;

/// Which model answers: reported in every answer and in `/metrics`.
#[derive(Clone, Debug, Serialize)]
pub struct Identity {
    /// The checkpoint file it was loaded from.
    pub checkpoint: String,
    /// SHA-256 of its weights (checked on load).
    pub checkpoint_sha256: String,
    /// Fingerprint of the dataset it was trained on.
    pub dataset_fingerprint: String,
    /// The student's kind.
    pub kind: String,
    /// The epoch it was saved at.
    pub epoch: usize,
}

/// One loaded student with its identity.
pub struct Model {
    /// The checkpoint.
    pub loaded: Loaded,
    /// What it is.
    pub identity: Identity,
}

/// The dataset and the current model; readers take an `Arc` of the model,
/// so a swap never disturbs a forward pass in progress.
pub struct ModelHolder {
    data: Data,
    raw_ids: HashMap<String, ItemId>,
    path: PathBuf,
    current: RwLock<Arc<Model>>,
    reloading: Mutex<()>,
}

impl ModelHolder {
    /// Loads `checkpoint` with `data` (default: the checkpoint's dataset).
    pub fn open(checkpoint: &Path, data: Option<&Path>) -> Result<Self> {
        let data = checkpoint_data(checkpoint, data)?;
        let model = load_model(checkpoint, &data)?;
        let raw_ids = data
            .ds
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.raw_id.clone(), i as ItemId + 1))
            .collect();
        Ok(ModelHolder {
            data,
            raw_ids,
            path: checkpoint.to_path_buf(),
            current: RwLock::new(Arc::new(model)),
            reloading: Mutex::new(()),
        })
    }

    /// The model answering now.
    pub fn current(&self) -> Arc<Model> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Loads `path` (default: the served checkpoint's path) and swaps it in
    /// only when it loads and fits the served dataset; else keeps the old.
    pub fn reload(&self, path: Option<&Path>) -> Result<Identity> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let model = load_model(path.unwrap_or(&self.path), &self.data)?;
        let identity = model.identity.clone();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(model);
        Ok(identity)
    }

    /// The item of one history entry: a raw id (string or number), else a
    /// title as `recommend --history` resolves it.
    pub fn resolve(&self, entry: &serde_json::Value) -> Result<ItemId, String> {
        let text = match entry {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => return Err("must be an item id or a title".into()),
        };
        if let Some(&id) = self.raw_ids.get(text.trim()) {
            return Ok(id);
        }
        if entry.is_number() {
            return Err(format!("no item has raw id {text}"));
        }
        resolve_item(&self.data.ds, &text).map_err(|e| {
            let msg = e.to_string();
            msg.trim_start_matches("--history: ").to_string()
        })
    }

    /// The raw id and title of item `id` (1-based).
    pub fn item(&self, id: ItemId) -> (&str, &str) {
        let it = &self.data.ds.items[id as usize - 1];
        (&it.raw_id, &it.title)
    }
}

/// Loads a checkpoint checked against `data` (manifest, fingerprint,
/// weights' SHA-256, item count).
fn load_model(path: &Path, data: &Data) -> Result<Model> {
    let loaded = load_for(path, data, &Device::Cpu)?;
    let m = &loaded.manifest;
    let identity = Identity {
        checkpoint: path.display().to_string(),
        checkpoint_sha256: m.weights_sha256.clone(),
        dataset_fingerprint: m.dataset.fingerprint.clone(),
        kind: m.spec.kind.to_string(),
        epoch: m.epoch,
    };
    Ok(Model { loaded, identity })
}
