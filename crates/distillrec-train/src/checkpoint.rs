//! Checkpoints: `<name>.safetensors` (weights) beside `<name>.json`
//! (manifest: model kind and spec, dataset fingerprint, epoch, validation
//! metrics, SHA-256 of the weights). Loading checks all of it, so a
//! truncated file, a checkpoint of another dataset or of another model kind
//! is refused with an error naming the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use distillrec_config::StudentKind;
use distillrec_data::fsutil::{atomic_write, atomic_write_json};
use distillrec_models::params::{read_safetensors, safetensors_bytes};
use distillrec_models::{Student, StudentSpec};

/// Format tag of checkpoint manifests.
pub const FORMAT: &str = "distillrec-checkpoint";

/// The dataset a checkpoint belongs to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetRef {
    /// Content fingerprint (`dataset.json`).
    pub fingerprint: String,
    /// Dataset name, for messages.
    pub name: String,
    /// Where the prepared dataset was (absolute), for `recommend`'s titles.
    pub dir: Option<PathBuf>,
}

/// The JSON manifest beside a checkpoint's weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version.
    pub version: u32,
    /// What the weights are (`student`).
    pub role: String,
    /// How to rebuild the model.
    pub spec: StudentSpec,
    /// The dataset it was trained on.
    pub dataset: DatasetRef,
    /// Epoch (1-based) the weights come from.
    pub epoch: usize,
    /// Validation metrics at that epoch.
    pub metrics: BTreeMap<String, f64>,
    /// File name of the weights, beside the manifest.
    pub weights: String,
    /// `sha256:<hex>` of the weights file.
    pub weights_sha256: String,
    /// Program that wrote it.
    pub created_by: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::from("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The manifest path of a weights path or stem (`x.safetensors` → `x.json`).
pub fn manifest_path(path: &Path) -> PathBuf {
    path.with_extension("json")
}

/// Writes weights (plus `extra` tensors, e.g. optimizer state) and the
/// manifest atomically; weights first, manifest last.
pub fn save(
    weights_path: &Path,
    student: &Student,
    extra: BTreeMap<String, Tensor>,
    dataset: &DatasetRef,
    epoch: usize,
    metrics: &BTreeMap<String, f64>,
) -> Result<Manifest> {
    let mut tensors = student.params.tensors();
    tensors.extend(extra);
    let bytes = safetensors_bytes(&tensors)?;
    atomic_write(weights_path, &bytes)?;
    let m = Manifest {
        format: FORMAT.into(),
        version: 1,
        role: "student".into(),
        spec: student.spec.clone(),
        dataset: dataset.clone(),
        epoch,
        metrics: metrics.clone(),
        weights: weights_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        weights_sha256: sha256_hex(&bytes),
        created_by: format!("distillrec {}", env!("CARGO_PKG_VERSION")),
    };
    atomic_write_json(&manifest_path(weights_path), &m)?;
    Ok(m)
}

/// What a loader expects of a checkpoint.
#[derive(Clone, Debug, Default)]
pub struct Expect<'a> {
    /// The dataset fingerprint it must match.
    pub fingerprint: Option<&'a str>,
    /// The model kind it must be.
    pub kind: Option<StudentKind>,
}

/// A loaded checkpoint: manifest, the rebuilt student, and extra tensors.
pub struct Loaded {
    /// The manifest.
    pub manifest: Manifest,
    /// The student with the saved weights.
    pub student: Student,
    /// Tensors in the file that are not model parameters.
    pub extra: BTreeMap<String, Tensor>,
}

/// Reads and checks a manifest (given the weights or the manifest path).
pub fn read_manifest(path: &Path) -> Result<(Manifest, PathBuf)> {
    let mpath = if path.extension().is_some_and(|e| e == "json") {
        path.to_path_buf()
    } else {
        manifest_path(path)
    };
    let text = std::fs::read_to_string(&mpath)
        .with_context(|| format!("{}: cannot read the checkpoint manifest", mpath.display()))?;
    let m: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a distillrec checkpoint manifest", mpath.display()))?;
    if m.format != FORMAT {
        bail!("{}: format '{}' is not {FORMAT}", mpath.display(), m.format);
    }
    let weights = mpath.with_file_name(&m.weights);
    Ok((m, weights))
}

/// Loads a checkpoint and checks it against `expect`.
pub fn load(path: &Path, expect: &Expect, device: &Device) -> Result<Loaded> {
    let (m, weights) = read_manifest(path)?;
    if let Some(fp) = expect.fingerprint {
        if m.dataset.fingerprint != fp {
            bail!(
                "{}: checkpoint was trained on dataset '{}' ({}), not on this one ({fp})",
                weights.display(),
                m.dataset.name,
                m.dataset.fingerprint
            );
        }
    }
    if let Some(kind) = expect.kind {
        if m.spec.kind != kind {
            bail!(
                "{}: checkpoint holds a {:?} model, expected {:?}",
                weights.display(),
                m.spec.kind,
                kind
            );
        }
    }
    let bytes = std::fs::read(&weights)
        .with_context(|| format!("{}: cannot read weights", weights.display()))?;
    if sha256_hex(&bytes) != m.weights_sha256 {
        bail!(
            "{}: weights do not match the manifest checksum (truncated or modified file, {} bytes)",
            weights.display(),
            bytes.len()
        );
    }
    drop(bytes);
    let mut tensors = read_safetensors(&weights, device)?;
    let student = Student::new(&m.spec, 0, device)?;
    student.params.load_from(&tensors, &weights)?;
    let names: Vec<String> = student.params.vars().map(|(k, _)| k.clone()).collect();
    for k in names {
        tensors.remove(&k);
    }
    Ok(Loaded {
        manifest: m,
        student,
        extra: tensors,
    })
}
