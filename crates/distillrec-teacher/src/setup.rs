//! Assembling a teacher from its parts: the backbone (layers cut as
//! configured), the frozen student checkpoint of the same dataset, and the
//! LLM title embeddings (computed once per backbone and dataset and kept
//! next to the run's checkpoints).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Device;

use distillrec_config::TeacherConfig;
use distillrec_data::Dataset;
use distillrec_llm::{embed, LoadOptions};
use distillrec_train::checkpoint::{self, Expect};
use distillrec_train::DatasetRef;

use crate::checkpoint::{backbone_sha256, Pinned};
use crate::model::Teacher;

/// A teacher with the identities of its backbone and student.
pub struct Assembled {
    /// The teacher (fresh adapters and networks).
    pub teacher: Teacher,
    /// The backbone's path and SHA-256.
    pub backbone: Pinned,
    /// The student checkpoint's path and weights SHA-256.
    pub student: Pinned,
}

/// File name of the cached title table.
pub const TITLES: &str = "titles.safetensors";

/// Loads the backbone and the student, reuses the title table of
/// `titles.0` when it matches (dataset, backbone, layers) or computes it,
/// saving it there when `titles.1` (training writes it into its run;
/// evaluation and inference only read), and builds a fresh teacher.
pub fn assemble(
    cfg: &TeacherConfig,
    seed: u64,
    backbone: &Path,
    student: &Path,
    ds: &Dataset,
    reference: &DatasetRef,
    titles: (&Path, bool),
) -> Result<Assembled> {
    let (titles_dir, write) = titles;
    let loaded = checkpoint::load(
        student,
        &Expect {
            fingerprint: Some(&reference.fingerprint),
            kind: None,
        },
        &Device::Cpu,
    )
    .with_context(|| format!("the teacher's student {}", student.display()))?;
    let llm = distillrec_llm::load(
        backbone,
        &LoadOptions {
            num_layers: cfg.num_layers,
            ..LoadOptions::default()
        },
    )?;
    let sha = backbone_sha256(backbone)?;
    let layers = llm.model.layers.len();
    let path = titles_dir.join(TITLES);
    let reuse = match embed::load_table(&path) {
        Ok((t, meta))
            if meta.get("fingerprint") == Some(&reference.fingerprint)
                && meta.get("backbone_sha256") == Some(&sha)
                && meta.get("num_layers") == Some(&layers.to_string())
                && meta.get("max_title_tokens") == Some(&cfg.max_title_tokens.to_string()) =>
        {
            Some(t)
        }
        _ => None,
    };
    let titles = match reuse {
        Some(t) => t,
        None => {
            tracing::info!("embedding {} item titles with the backbone", ds.num_items());
            let t = embed::item_table(&llm.model, &llm.tokenizer, ds, 32, cfg.max_title_tokens)?;
            if !write {
                return finish(llm, loaded, t, (backbone, sha), student, ds, cfg, seed);
            }
            std::fs::create_dir_all(titles_dir)?;
            let meta: HashMap<String, String> = [
                ("fingerprint", reference.fingerprint.clone()),
                ("backbone_sha256", sha.clone()),
                ("num_layers", layers.to_string()),
                ("max_title_tokens", cfg.max_title_tokens.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            embed::save_table(&path, &t, meta)?;
            t
        }
    };
    finish(llm, loaded, titles, (backbone, sha), student, ds, cfg, seed)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    llm: distillrec_llm::Llm,
    loaded: checkpoint::Loaded,
    titles: candle_core::Tensor,
    (backbone, sha): (&Path, String),
    student: &Path,
    ds: &Dataset,
    cfg: &TeacherConfig,
    seed: u64,
) -> Result<Assembled> {
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let student_pin = Pinned {
        path: abs(student),
        sha256: loaded.manifest.weights_sha256.clone(),
    };
    let teacher = Teacher::new(llm, loaded.student, titles, ds, cfg, seed)?;
    Ok(Assembled {
        teacher,
        backbone: Pinned {
            path: abs(backbone),
            sha256: sha,
        },
        student: student_pin,
    })
}
