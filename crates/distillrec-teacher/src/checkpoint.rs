//! Teacher checkpoints: `<name>.safetensors` holding only the trainable
//! tensors (adapters, projector, gate, ranking map; `last` also the
//! optimiser moments) and `<name>.json`, a manifest naming the backbone
//! (path and SHA-256), the student checkpoint (path and weights SHA-256),
//! the dataset and the teacher settings. Loading onto another backbone,
//! student or dataset is refused with one line.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use distillrec_data::fsutil::{sha256_of, sha256_of_file, sha256_tag};

use distillrec_config::TeacherConfig;
use distillrec_train::DatasetRef;

use crate::model::{has_ranking, Teacher, TeacherSpec};
use crate::nets::CUE;

/// `format` of a teacher manifest.
pub const FORMAT: &str = "distillrec-teacher";
/// Manifest version. Version 2 marks a candidate's title tokens with the
/// candidate cue as well as its placeholder; version 1 checkpoints load
/// unless they hold a cue (which marked the placeholders only).
pub const VERSION: u32 = 2;
/// The oldest manifest version that still loads.
const OLDEST: u32 = 1;

/// A file or directory and its SHA-256.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pinned {
    /// Where it was.
    pub path: PathBuf,
    /// `sha256:<hex>` of its content.
    pub sha256: String,
}

/// The manifest of a teacher checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherManifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// Shapes and adapter layout.
    pub spec: TeacherSpec,
    /// The settings it was trained with (prompts included), so evaluation
    /// and inference render the same prompts.
    pub teacher: TeacherConfig,
    /// Run seed (prompt templates, candidates).
    pub seed: u64,
    /// The backbone.
    pub backbone: Pinned,
    /// The student checkpoint (SHA-256 of its weights file).
    pub student: Pinned,
    /// The dataset.
    pub dataset: DatasetRef,
    /// Epochs finished.
    pub epoch: usize,
    /// Optimiser steps taken.
    pub step: u64,
    /// Validation metrics of this checkpoint.
    pub metrics: BTreeMap<String, f64>,
    /// Weights file name (next to the manifest).
    pub weights: String,
    /// SHA-256 of the weights file.
    pub weights_sha256: String,
    /// [`settings_sha256`] of `teacher` and `seed` as trained, written by
    /// [`save`] and verified by [`read_manifest`], so an edited prompt or
    /// setting is refused. Checkpoints from before it have none and load
    /// on the config checks alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_sha256: Option<String>,
}

/// `sha256:<hex>` of the settings a teacher was trained with: what
/// `config_sha256` pins.
pub fn settings_sha256(teacher: &TeacherConfig, seed: u64) -> Result<String> {
    Ok(sha256_of(
        serde_json::to_string(&(teacher, seed))?.as_bytes(),
    ))
}

/// `sha256:<hex>` of a backbone: the GGUF file, or for a Hugging Face
/// directory the names and hashes of its `config.json`, `tokenizer.json`
/// and `*.safetensors` files.
pub fn backbone_sha256(path: &Path) -> Result<String> {
    if path.is_file() {
        return Ok(sha256_of_file(path)?);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("{}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n == "config.json" || n == "tokenizer.json" || n.ends_with(".safetensors")
        })
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(
            f.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .as_bytes(),
        );
        h.update(sha256_of_file(&f)?.as_bytes());
    }
    Ok(sha256_tag(&h.finalize()))
}

/// The manifest path of a checkpoint given by its weights or manifest path.
pub fn manifest_path(path: &Path) -> PathBuf {
    path.with_extension("json")
}

/// Optimiser state saved in `last`.
#[derive(Clone, Debug)]
pub struct OptState {
    /// Steps taken.
    pub step: u64,
    /// First moments, one per trainable tensor.
    pub m: Vec<Vec<f32>>,
    /// Second moments.
    pub v: Vec<Vec<f32>>,
}

/// Saves `teacher`'s trainable tensors (and `opt`) as `dir/name`.
pub fn save(
    dir: &Path,
    name: &str,
    teacher: &Teacher,
    manifest: &TeacherManifest,
    opt: Option<&OptState>,
) -> Result<PathBuf> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = teacher
        .named_params()
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    if let Some(o) = opt {
        for (i, (m, v)) in o.m.iter().zip(&o.v).enumerate() {
            tensors.push((
                format!("optim.m.{i}"),
                vec![m.len()],
                m.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
            tensors.push((
                format!("optim.v.{i}"),
                vec![v.len()],
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
    }
    let views = tensors
        .iter()
        .map(|(n, s, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = HashMap::new();
    if let Some(o) = opt {
        meta.insert("optim_step".to_string(), o.step.to_string());
    }
    let bytes = safetensors::serialize(views, Some(meta))?;
    let weights = format!("{name}.safetensors");
    let wpath = dir.join(&weights);
    distillrec_data::fsutil::atomic_write(&wpath, &bytes)?;
    let mut m = manifest.clone();
    m.weights = weights;
    m.weights_sha256 = sha256_of(&bytes);
    m.config_sha256 = Some(settings_sha256(&m.teacher, m.seed)?);
    distillrec_data::fsutil::atomic_write(
        &dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&m)?.as_bytes(),
    )?;
    Ok(wpath)
}

/// Reads and checks a teacher manifest: format, version, weights name, the
/// teacher settings by the config's own checks, and their
/// `config_sha256` when the manifest has one.
pub fn read_manifest(path: &Path) -> Result<(TeacherManifest, PathBuf)> {
    let mpath = manifest_path(path);
    let text = std::fs::read_to_string(&mpath)
        .with_context(|| format!("teacher checkpoint manifest {}", mpath.display()))?;
    refuse_student_manifest(&text, &mpath)?;
    let m: TeacherManifest = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a teacher checkpoint manifest", mpath.display()))?;
    ensure!(
        m.format == FORMAT && (OLDEST..=VERSION).contains(&m.version),
        "{}: format {} v{}, expected {FORMAT} v{OLDEST} to v{VERSION}",
        mpath.display(),
        m.format,
        m.version
    );
    ensure!(
        !m.weights.is_empty()
            && Path::new(&m.weights)
                .file_name()
                .is_some_and(|n| n == m.weights.as_str()),
        "{}: `weights` must be a plain file name, got `{}`",
        mpath.display(),
        m.weights
    );
    m.teacher.check(&mpath.display().to_string())?;
    if let Some(pin) = &m.config_sha256 {
        ensure!(
            *pin == settings_sha256(&m.teacher, m.seed)?,
            "{}: the teacher settings or seed differ from those it was trained with (config_sha256 {}…); restore the manifest",
            mpath.display(),
            short(pin)
        );
    }
    let dir = mpath.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((m.clone(), dir.join(&m.weights)))
}

/// The teacher settings a checkpoint was trained as: its manifest's,
/// except that a generative checkpoint from before the candidate cue (no
/// `prior.cue` tensor, `student_prior` on) is read with `student_prior`
/// off, which is what it was trained as (the prior did not touch a
/// generative teacher then).
/// `m` and `wpath` are what [`read_manifest`] returned.
pub fn trained_settings(m: &TeacherManifest, wpath: &Path) -> Result<TeacherConfig> {
    let mut cfg = m.teacher.clone();
    if cfg.student_prior && !has_ranking(m.spec.objective) {
        let bytes = std::fs::read(wpath).with_context(|| format!("{}", wpath.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}", wpath.display()))?;
        cfg.student_prior = st.names().contains(&CUE);
    }
    Ok(cfg)
}

/// The start of a `sha256:<hex>` pin, for messages (by characters: a
/// manifest is read from a file and may hold anything).
fn short(pin: &str) -> String {
    pin.chars().take(19).collect()
}

/// Loads the trainable tensors of the checkpoint at `path` into `teacher`
/// after checking that it belongs to this backbone (`backbone_sha`),
/// student (`student_sha`), dataset and shape; returns the manifest and
/// the optimiser state when the file holds one.
pub fn load_into(
    path: &Path,
    teacher: &mut Teacher,
    backbone_sha: &str,
    student_sha: &str,
    fingerprint: &str,
) -> Result<(TeacherManifest, Option<OptState>)> {
    let (m, wpath) = read_manifest(path)?;
    let mp = manifest_path(path);
    if m.backbone.sha256 != backbone_sha {
        bail!(
            "{}: this teacher belongs to the backbone {} ({}…), not to the one given ({}…)",
            mp.display(),
            m.backbone.path.display(),
            short(&m.backbone.sha256),
            short(backbone_sha)
        );
    }
    if m.student.sha256 != student_sha {
        bail!(
            "{}: this teacher belongs to the student {} (weights {}…), not to the one given",
            mp.display(),
            m.student.path.display(),
            short(&m.student.sha256)
        );
    }
    if m.dataset.fingerprint != fingerprint {
        bail!(
            "{}: this teacher was trained on dataset {} (fingerprint {}), not on this one",
            mp.display(),
            m.dataset.name,
            m.dataset.fingerprint
        );
    }
    if m.spec != teacher.spec() {
        bail!(
            "{}: the checkpoint's teacher ({:?}) differs from the configured one ({:?})",
            mp.display(),
            m.spec,
            teacher.spec()
        );
    }
    // the student prior changes what the weights mean: the ranking head's
    // scores add the student's, a generative teacher's candidates carry
    // the cue (whose tensor says whether it was trained with one)
    if has_ranking(m.spec.objective) && m.teacher.student_prior != teacher.cfg.student_prior {
        bail!(
            "{}: this teacher's ranking head was trained {} the student's scores; set teacher.student_prior = {}",
            mp.display(),
            if m.teacher.student_prior { "on" } else { "without" },
            m.teacher.student_prior
        );
    }
    let bytes = std::fs::read(&wpath).with_context(|| format!("{}", wpath.display()))?;
    ensure!(
        sha256_of(&bytes) == m.weights_sha256,
        "{}: weights do not match the manifest's SHA-256 (truncated or replaced)",
        wpath.display()
    );
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}", wpath.display()))?;
    let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let v = st
            .tensor(name)
            .with_context(|| format!("{}: tensor `{name}`", wpath.display()))?;
        ensure!(
            v.dtype() == safetensors::Dtype::F32 && v.shape() == shape,
            "{}: tensor `{name}` is {:?} {:?}, expected F32 {shape:?}",
            wpath.display(),
            v.dtype(),
            v.shape()
        );
        let out: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        ensure!(
            out.iter().all(|x| x.is_finite()),
            "{}: tensor `{name}` holds non-finite values",
            wpath.display()
        );
        Ok(out)
    };
    let has_cue = st.names().contains(&CUE);
    let wants_cue = teacher.nets.cue_index().is_some();
    if has_cue && m.version < 2 {
        bail!(
            "{}: this teacher's candidate cue marks the placeholders only (checkpoint v{}); the cue now marks each candidate's title too, so retrain it",
            mp.display(),
            m.version
        );
    }
    if has_cue != wants_cue {
        bail!(
            "{}: this teacher was trained {} the candidate cue of teacher.student_prior; set teacher.student_prior = {}",
            mp.display(),
            if has_cue { "with" } else { "without" },
            has_cue
        );
    }
    let wanted: Vec<(String, Vec<usize>)> = teacher
        .named_params()
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect();
    let values = wanted
        .iter()
        .map(|(n, s)| read(n, s))
        .collect::<Result<Vec<_>>>()?;
    for (dst, src) in teacher.params_mut().into_iter().zip(values) {
        dst.copy_from_slice(&src);
    }
    let opt = match st.tensor("optim.m.0") {
        Ok(_) => {
            let sizes = teacher.param_sizes();
            let mut o = OptState {
                step: 0,
                m: Vec::new(),
                v: Vec::new(),
            };
            for (i, &n) in sizes.iter().enumerate() {
                o.m.push(read(&format!("optim.m.{i}"), &[n])?);
                o.v.push(read(&format!("optim.v.{i}"), &[n])?);
            }
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
            o.step = meta
                .metadata()
                .as_ref()
                .and_then(|m| m.get("optim_step"))
                .and_then(|s| s.parse().ok())
                .with_context(|| {
                    format!("{}: optimiser state without its step", wpath.display())
                })?;
            Some(o)
        }
        Err(_) => None,
    };
    Ok((m, opt))
}

/// Refuses a student checkpoint's manifest where a teacher's is expected,
/// saying so (the typed parse would only say "unknown field `role`").
fn refuse_student_manifest(text: &str, mpath: &Path) -> Result<()> {
    let format = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("format")?.as_str().map(str::to_string));
    ensure!(
        format.as_deref() != Some(distillrec_train::checkpoint::FORMAT),
        "{}: this is a student checkpoint, but a teacher checkpoint is expected (`train teacher` writes one: <run>/checkpoints/best.json)",
        mpath.display()
    );
    Ok(())
}
