//! Checkpoints: `<name>.safetensors` (weights) beside `<name>.json`
//! (manifest: model kind and spec, dataset fingerprint, epoch, validation
//! metrics, SHA-256 of the weights). Loading checks all of it, so a
//! truncated file, a checkpoint of another dataset or of another model kind
//! is refused with an error naming the file.
//!
//! A manifest is untrusted input: its sizes are bounded ([`MAX_ITEMS`],
//! [`MAX_SIZE`], [`MAX_LAYERS`]) and checked against the shapes stored in
//! the weights file before any model is built, so a manifest cannot make the
//! loader allocate more than the weights file holds; its `weights` entry is
//! a plain file name next to the manifest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use distillrec_config::StudentKind;
use distillrec_data::fsutil::{atomic_write, atomic_write_json};
use distillrec_models::params::{read_safetensors, safetensors_bytes};
use distillrec_models::student::checkpoint_layout;
use distillrec_models::{Student, StudentSpec};

/// Format tag of checkpoint manifests.
pub const FORMAT: &str = "distillrec-checkpoint";

/// The manifest version this code writes and reads.
pub const VERSION: u32 = 1;

/// Largest catalogue a manifest may declare (`num_items`).
pub const MAX_ITEMS: usize = 1 << 24;

/// Largest `hidden`, `max_len` and `heads` a manifest may declare (the
/// config's limit, so a config that trains is a checkpoint that loads).
pub use distillrec_config::MAX_SIZE;

/// Largest `layers` a manifest may declare (the config's limit).
pub use distillrec_config::MAX_LAYERS;

/// Largest manifest file read (it holds a spec, a few metrics and names).
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// The dataset a checkpoint belongs to (the one type every file uses).
pub use distillrec_data::DatasetRef;

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
        version: VERSION,
        role: "student".into(),
        spec: student.spec.clone(),
        dataset: dataset.clone(),
        epoch,
        metrics: metrics.clone(),
        weights: weights_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        weights_sha256: distillrec_data::fsutil::sha256_of(&bytes),
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

/// Reads and checks a manifest (given the weights or the manifest path):
/// format, version, sizes within bounds and consistent, and a `weights`
/// entry that is a plain file name, resolved next to the manifest.
pub fn read_manifest(path: &Path) -> Result<(Manifest, PathBuf)> {
    if path.is_dir() {
        bail!("{}", directory_hint(path));
    }
    let mpath = if path.extension().is_some_and(|e| e == "json") {
        path.to_path_buf()
    } else {
        manifest_path(path)
    };
    let text = distillrec_data::fsutil::read_text_limited(&mpath, MAX_MANIFEST_BYTES).map_err(
        |e| match e {
            distillrec_data::fsutil::LimitedReadError::Io(e) => anyhow::anyhow!(
                "{}: cannot read the checkpoint manifest: {}",
                mpath.display(),
                distillrec_data::fsutil::io_reason(&e)
            ),
            distillrec_data::fsutil::LimitedReadError::TooLarge(n) => anyhow::anyhow!(
                "{}: {n} bytes is too large for a checkpoint manifest",
                mpath.display()
            ),
        },
    )?;
    refuse_teacher_manifest(&text, &mpath)?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a distillrec checkpoint manifest: {e}",
            mpath.display()
        )
    })?;
    if m.format != FORMAT {
        bail!("{}: format '{}' is not {FORMAT}", mpath.display(), m.format);
    }
    if m.version != VERSION {
        bail!(
            "{}: manifest version {} is not supported (this program reads version {VERSION})",
            mpath.display(),
            m.version
        );
    }
    check_spec(&m.spec).map_err(|e| anyhow::anyhow!("{}: {e}", mpath.display()))?;
    let name = &m.weights;
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
        && Path::new(name).file_name() == Some(std::ffi::OsStr::new(name));
    if !plain {
        bail!(
            "{}: key `weights`: '{name}' is not a plain file name next to the manifest",
            mpath.display()
        );
    }
    let weights = mpath.with_file_name(name);
    Ok((m, weights))
}

/// What to say when a directory is given where a checkpoint file is
/// expected: the checkpoint files it (or its `checkpoints/`) holds.
fn directory_hint(dir: &Path) -> String {
    let found = [
        dir.join("best.json"),
        dir.join("checkpoints").join("best.json"),
    ]
    .into_iter()
    .find(|p| p.is_file());
    match found {
        Some(p) => format!(
            "{} is a directory; give a checkpoint file, e.g. {}",
            dir.display(),
            p.display()
        ),
        None => format!(
            "{} is a directory; give a checkpoint file (<run>/checkpoints/best.json)",
            dir.display()
        ),
    }
}

/// Refuses a teacher checkpoint's manifest where a student's is expected,
/// saying so (the typed parse would only say "missing field `role`").
fn refuse_teacher_manifest(text: &str, mpath: &Path) -> Result<()> {
    let format = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("format")?.as_str().map(str::to_string));
    if format.as_deref() == Some("distillrec-teacher") {
        bail!(
            "{}: this is a teacher checkpoint, but a student checkpoint is expected (`train student` writes one: <run>/checkpoints/best.json)",
            mpath.display()
        );
    }
    Ok(())
}

/// Checks the sizes of a spec read from a manifest: each at least 1 and
/// below its limit, `heads` divides `hidden`, dropout in `[0, 1)`. The
/// message names the key.
pub fn check_spec(spec: &StudentSpec) -> Result<()> {
    for (key, value, max) in [
        ("num_items", spec.num_items, MAX_ITEMS),
        ("hidden", spec.hidden, MAX_SIZE),
        ("max_len", spec.max_len, MAX_SIZE),
        ("layers", spec.layers, MAX_LAYERS),
        ("heads", spec.heads, MAX_SIZE),
    ] {
        if value == 0 || value > max {
            bail!("key `spec.{key}`: {value} is not in 1..={max}");
        }
    }
    if !spec.hidden.is_multiple_of(spec.heads) {
        bail!(
            "key `spec.heads`: {} does not divide spec.hidden = {}",
            spec.heads,
            spec.hidden
        );
    }
    if !(0.0..1.0).contains(&spec.dropout) {
        bail!("key `spec.dropout`: {} is not in [0, 1)", spec.dropout);
    }
    Ok(())
}

/// Checks the manifest's spec against the tensors of the weights file
/// before the model is built: the item table is `[num_items + 1, hidden]`,
/// the net's [`checkpoint_layout`] holds (its spec-fixed shapes, e.g.
/// SASRec's position table and blocks `0..layers`), and the file holds at
/// least as many values as the model's largest parameters (a lower bound on
/// what building it allocates), so the model built from the spec is no
/// larger than the file. The net says what it holds; nothing here matches
/// on its kind.
fn check_shapes(
    spec: &StudentSpec,
    tensors: &BTreeMap<String, Tensor>,
    weights: &Path,
) -> Result<()> {
    let shape_of = |name: &str| tensors.get(name).map(|t| t.dims().to_vec());
    let expect = |name: &str, want: Vec<usize>, keys: &str| -> Result<()> {
        match shape_of(name) {
            Some(got) if got == want => Ok(()),
            Some(got) => bail!(
                "{}: tensor '{name}' has shape {got:?}, but the manifest's {keys} give {want:?}",
                weights.display()
            ),
            None => bail!("{}: tensor '{name}' is missing", weights.display()),
        }
    };
    let (n, h) = (spec.num_items, spec.hidden);
    expect(
        distillrec_models::student::ITEM_TABLE,
        vec![n + 1, h],
        "spec.num_items + 1 and spec.hidden",
    )?;
    let layout = checkpoint_layout(spec);
    for (name, shape, keys) in layout.exact {
        expect(name, shape, keys)?;
    }
    if let Some((prefix, count, key)) = layout.blocks {
        let mut blocks: Vec<usize> = tensors
            .keys()
            .filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse().ok())
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        if blocks != (0..count).collect::<Vec<_>>() {
            bail!(
                "{}: the file holds {} {} blocks, but the manifest's {key} is {count}",
                weights.display(),
                blocks.len(),
                spec.kind
            );
        }
    }
    let at_least = layout.at_least;
    let held: usize = tensors.values().map(|t| t.elem_count()).sum();
    if (n + 1) * h + at_least > held {
        bail!(
            "{}: the manifest's sizes need at least {} values, the file holds {held}",
            weights.display(),
            (n + 1) * h + at_least
        );
    }
    Ok(())
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
    if distillrec_data::fsutil::sha256_of(&bytes) != m.weights_sha256 {
        bail!(
            "{}: weights do not match the manifest checksum (truncated or modified file, {} bytes)",
            weights.display(),
            bytes.len()
        );
    }
    drop(bytes);
    let mut tensors = read_safetensors(&weights, device)?;
    check_shapes(&m.spec, &tensors, &weights)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Saves a tiny SASRec checkpoint and returns (dir, manifest path).
    fn saved(kind: StudentKind) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let spec = StudentSpec {
            kind,
            num_items: 7,
            hidden: 8,
            layers: 2,
            heads: 2,
            dropout: 0.1,
            max_len: 5,
        };
        let student = Student::new(&spec, 1, &Device::Cpu).unwrap();
        let w = dir.path().join("best.safetensors");
        let ds = DatasetRef {
            fingerprint: "fp".into(),
            name: "t".into(),
            dir: None,
        };
        save(&w, &student, BTreeMap::new(), &ds, 1, &BTreeMap::new()).unwrap();
        (dir, manifest_path(&w))
    }

    /// Loads after replacing `key` of the manifest by `value`.
    fn load_with(m: &Path, key: &str, value: serde_json::Value) -> String {
        let text = std::fs::read_to_string(m).unwrap();
        let mut j: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut cur = &mut j;
        let parts: Vec<&str> = key.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            cur = cur.get_mut(*p).unwrap();
        }
        cur[parts[parts.len() - 1]] = value;
        let bad = m.with_file_name("bad.json");
        std::fs::write(&bad, j.to_string()).unwrap();
        match load(&bad, &Expect::default(), &Device::Cpu) {
            Ok(_) => panic!("{key} accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn manifest_sizes_are_bounded_and_checked_against_the_weights() {
        let (_d, m) = saved(StudentKind::Sasrec);
        assert!(load(&m, &Expect::default(), &Device::Cpu).is_ok());
        let cases: &[(&str, serde_json::Value, &str)] = &[
            ("spec.num_items", 4_000_000_000u64.into(), "`spec.num_items`: 4000000000 is not in 1..=16777216"),
            ("spec.hidden", 0.into(), "`spec.hidden`: 0 is not in 1.."),
            ("spec.heads", 0.into(), "`spec.heads`: 0 is not in 1.."),
            ("spec.heads", 3.into(), "`spec.heads`: 3 does not divide spec.hidden = 8"),
            ("spec.layers", 0.into(), "`spec.layers`: 0 is not in 1.."),
            ("spec.max_len", 1_000_000_000u64.into(), "`spec.max_len`: 1000000000 is not in"),
            ("spec.num_items", 9.into(), "tensor 'item_emb' has shape [8, 8], but the manifest's spec.num_items + 1 and spec.hidden give [10, 8]"),
            ("spec.hidden", 16.into(), "tensor 'item_emb' has shape [8, 8]"),
            ("spec.max_len", 6.into(), "tensor 'pos_emb' has shape [5, 8]"),
            ("spec.layers", 3.into(), "the file holds 2 sasrec blocks, but the manifest's spec.layers is 3"),
            ("version", 2.into(), "manifest version 2 is not supported"),
            ("weights", "../../etc/passwd".into(), "key `weights`: '../../etc/passwd' is not a plain file name"),
            ("weights", "/etc/passwd".into(), "key `weights`: '/etc/passwd' is not a plain file name"),
            ("weights", "..".into(), "is not a plain file name"),
        ];
        for (key, value, want) in cases {
            let e = load_with(&m, key, value.clone());
            assert!(e.contains(want), "{key}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn gru4rec_hidden_beyond_the_file_is_refused_before_building() {
        let (_d, m) = saved(StudentKind::Gru4rec);
        // A larger hidden than the file's is refused by the item table's
        // shape before the model (6 x 4096^2 GRU weights) is built.
        let e = load_with(&m, "spec.hidden", 4096.into());
        assert!(e.contains("tensor 'item_emb' has shape [8, 8]"), "{e}");
    }
}
