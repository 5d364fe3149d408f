//! Assembling a teacher from its parts: the backbone (layers cut as
//! configured), the frozen student checkpoint of the same dataset, and the
//! LLM title embeddings (computed once per backbone and dataset and kept
//! next to the run's checkpoints).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use distillrec_config::{TeacherConfig, TeacherDtype};
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

/// The dtype the backbone is held in for `teacher.dtype` on `dev`: `auto`
/// is bf16 on a GPU and f32 on the CPU.
pub fn backbone_dtype(d: TeacherDtype, dev: &Device) -> DType {
    match d {
        TeacherDtype::Auto if dev.is_cpu() => DType::F32,
        TeacherDtype::Auto | TeacherDtype::Bf16 => DType::BF16,
        TeacherDtype::F32 => DType::F32,
        TeacherDtype::F16 => DType::F16,
    }
}

/// The title table's record of the backbone dtype it was computed in:
/// none for f32 (tables written before `teacher.dtype` existed are f32).
fn dtype_tag(d: DType) -> Option<String> {
    (d != DType::F32).then(|| d.as_str().to_string())
}

/// Loads the backbone (on `dev`, in `teacher.dtype`) and the student (on
/// the CPU), reuses the title table of `titles.0` when it matches (dataset,
/// backbone, layers, dtype) or computes it, saving it there when `titles.1`
/// (training writes it into its run; evaluation and inference only read),
/// and builds a fresh teacher.
#[allow(clippy::too_many_arguments)]
pub fn assemble(
    cfg: &TeacherConfig,
    seed: u64,
    backbone: &Path,
    student: &Path,
    ds: &Dataset,
    reference: &DatasetRef,
    titles: (&Path, bool),
    dev: &Device,
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
            dtype: backbone_dtype(cfg.dtype, dev),
            device: dev.clone(),
        },
    )?;
    let tag = dtype_tag(llm.model.dtype());
    let sha = backbone_sha256(backbone)?;
    let layers = llm.model.layers.len();
    let path = titles_dir.join(TITLES);
    let reuse = match embed::load_table(&path) {
        Ok((t, meta))
            if meta.get("fingerprint") == Some(&reference.fingerprint)
                && meta.get("backbone_sha256") == Some(&sha)
                && meta.get("num_layers") == Some(&layers.to_string())
                && meta.get("max_title_tokens") == Some(&cfg.max_title_tokens.to_string())
                && meta.get("dtype") == tag.as_ref() =>
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
            .chain(tag.map(|t| ("dtype", t)))
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
