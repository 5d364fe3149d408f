//! `teacher plan`, and the same memory check at the start of `train
//! teacher`: the run sized from the backbone's config alone.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use distillrec_config::{Config, DeviceSpec};
use distillrec_data::memory::available_bytes;
use distillrec_data::Dataset;
use distillrec_llm::{ChatTemplate, Tokenizer};
use distillrec_teacher::plan::{longest_prompt, measure_flops, prompt_bound, Plan, PlanInput};
use distillrec_teacher::prompt::Prompter;

use crate::prepared::load_prepared;

/// What `teacher plan` reads besides the config.
pub struct TeacherPlanRequest {
    /// A prepared dataset (else `dataset.prepared`, else built in memory
    /// from the raw source).
    pub data: Option<PathBuf>,
    /// The backbone: a GGUF file, a Hugging Face directory or its
    /// `config.json` (else `teacher.backbone`).
    pub backbone: Option<PathBuf>,
    /// The longest prompt in tokens (else the bound of [`longest_prompt`]).
    pub prompt_tokens: Option<usize>,
    /// Memory of the device in GB (else what this machine has available;
    /// required for a GPU).
    pub memory_gb: Option<f64>,
    /// Measure the device's throughput and estimate the epoch time.
    pub measure: bool,
}

/// A plan with what it was judged against.
pub struct PlannedTeacher {
    /// The plan.
    pub plan: Plan,
    /// Bytes available (given, or this machine's), if known.
    pub available: Option<u64>,
    /// Measured FLOP/s, when asked.
    pub flops_per_sec: Option<f64>,
}

/// Bytes of a frozen backbone weight on `device`: f32 on the CPU, bf16 on a
/// GPU (`teacher.dtype`'s default there).
fn weight_bytes(device: DeviceSpec) -> u64 {
    match device {
        DeviceSpec::Cpu => 4,
        DeviceSpec::Cuda(_) => 2,
    }
}

/// The prompt length of each training row in `rows` (indices into
/// `ds.train`): the exact rendering of the backbone's tokenizer
/// ([`Prompter::length_bound`]) when it has one, else the tokenizer-free
/// [`prompt_bound`].
fn prompt_lengths(
    cfg: &Config,
    tokenizer: Option<&(Tokenizer, ChatTemplate)>,
    ds: &Dataset,
    rows: &[usize],
) -> Result<Vec<usize>> {
    let history = |r: usize| ds.history(&ds.train[r]);
    Ok(match tokenizer {
        Some((tok, chat)) => {
            let p = Prompter::new(tok, chat, ds, &cfg.teacher)?;
            rows.iter()
                .map(|&r| p.length_bound(history(r), cfg.teacher.objective))
                .collect()
        }
        None => rows
            .iter()
            .map(|&r| prompt_bound(&cfg.teacher, history(r).len()))
            .collect(),
    })
}

/// The plan of the configured teacher on `backbone` for the training rows
/// `rows` (indices into `ds.train`) of `ds`; `prompt_tokens` replaces the
/// longest prompt. The plan is for `device` but opens nothing on it.
pub fn plan_for(
    cfg: &Config,
    backbone: &Path,
    ds: &Dataset,
    rows: &[usize],
    prompt_tokens: Option<usize>,
    device: DeviceSpec,
) -> Result<Plan> {
    let meta = distillrec_llm::read_meta(backbone, cfg.teacher.num_layers)?;
    let lengths = prompt_lengths(cfg, meta.tokenizer.as_ref(), ds, rows)?;
    let longest = lengths
        .iter()
        .copied()
        .max()
        .unwrap_or_else(|| longest_prompt(&cfg.teacher));
    let tokens = lengths.iter().map(|&n| n as u64).sum::<u64>();
    Ok(Plan::new(&PlanInput {
        backbone: &meta.config,
        teacher: &cfg.teacher,
        train: &cfg.train.teacher,
        student_hidden: cfg.student.hidden,
        items: ds.num_items(),
        epoch: Some((rows.len(), tokens)),
        prompt_tokens: prompt_tokens.unwrap_or(longest),
        weight_bytes: weight_bytes(device),
    }))
}

/// `teacher plan`: sizes the configured run without loading any weights.
/// The device is opened only to measure its throughput (`req.measure`), so
/// that a GPU run can be planned on a machine without one (a login node).
pub fn plan_teacher(
    cfg: &Config,
    req: &TeacherPlanRequest,
    device: DeviceSpec,
) -> Result<PlannedTeacher> {
    let backbone = req
        .backbone
        .clone()
        .or_else(|| cfg.teacher.backbone.clone())
        .context("no backbone: pass --backbone or set `teacher.backbone` in the config")?;
    let backbone = crate::models::resolve_backbone(&backbone, Path::new("models"))?;
    let ds = match req.data.as_deref().or(cfg.dataset.prepared.as_deref()) {
        Some(dir) => load_prepared(dir)?.ds,
        None => cfg.build_dataset()?,
    };
    let rows: Vec<usize> = (0..ds.train.len()).collect();
    let plan = plan_for(cfg, &backbone, &ds, &rows, req.prompt_tokens, device)?;
    let available = match req.memory_gb {
        Some(gb) => Some((gb * 1e9) as u64),
        None if device == DeviceSpec::Cpu => Some(available_bytes()),
        None => None,
    };
    let flops_per_sec = if req.measure {
        let opened = distillrec_models::device::open(device)
            .context("measuring the throughput (--no-measure plans without opening the device)")?;
        Some(measure_flops(plan.mlp_shape, &opened)?)
    } else {
        None
    };
    Ok(PlannedTeacher {
        plan,
        available,
        flops_per_sec,
    })
}
