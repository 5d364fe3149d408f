//! Which training rows get the teacher (SPEC 8), and reading a selection
//! back as training rows.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::Device;

use distillrec_cache::{
    read_selection_rows, selection_meta_path, write_selection, DatasetRef, SelectionMeta,
    TeacherCache,
};
use distillrec_config::Config;
use distillrec_data::outguard::check_file_output;
use distillrec_models::Student;
use distillrec_select::{
    candidate_kl, select as choose, Budget, Policy, RowSignals, SelectInputs, SignalOptions,
};
use distillrec_train::checkpoint::{self, Expect};
use distillrec_train::units::trained_rows;

use crate::prepared::{load_prepared, Data};

/// Rows per forward pass of the student.
const BATCH: usize = 256;

/// Indices into `ds.train` of the rows named by a selection file (every row
/// without one), ascending. A selection of another dataset, one cut short
/// against its sidecar, or one naming a row that is not a training row is
/// refused (see [`read_selection_rows`]).
pub fn selected_rows(data: &Data, selection: Option<&Path>) -> Result<Vec<usize>> {
    match selection {
        None => Ok((0..data.ds.train.len()).collect()),
        Some(path) => Ok(read_selection_rows(
            path,
            &data.reference.fingerprint,
            &data.ds,
        )?),
    }
}

/// What `select` reads and writes.
pub struct SelectRequest {
    /// The policy.
    pub policy: Policy,
    /// How many rows the teacher may see.
    pub budget: Budget,
    /// Threshold of the post-hoc filters.
    pub threshold: Option<f64>,
    /// The prepared dataset.
    pub data: PathBuf,
    /// The student whose signals inform the policy.
    pub student: Option<PathBuf>,
    /// A teacher cache (the `kl` filter).
    pub teacher_cache: Option<PathBuf>,
    /// Output selection file (CSV `key,score`, plus `<file>.json`).
    pub out: PathBuf,
    /// Keys of rows that already have teacher output (an active round's
    /// earlier rounds): left out of the pool.
    pub exclude: HashSet<String>,
}

/// What `select` chose.
pub struct SelectOutcome {
    /// Rows selected.
    pub selected: usize,
    /// Rows the configured student trains on (the pool).
    pub pool: usize,
    /// Wall seconds of the choice (signals included).
    pub wall_secs: f64,
}

/// Refuses, before any work, a selection file (or its sidecar) that is one
/// of the inputs or lies inside one (the dataset, the student checkpoint
/// and its manifest, the teacher cache).
fn check_select_out(req: &SelectRequest) -> Result<()> {
    let student = req.student.as_deref().map(checkpoint::manifest_path);
    let mut inputs = vec![req.data.as_path()];
    inputs.extend(req.student.as_deref());
    inputs.extend(student.as_deref());
    inputs.extend(req.teacher_cache.as_deref());
    let meta = selection_meta_path(&req.out);
    check_file_output(&[&req.out, &meta], &inputs, "--out")?;
    Ok(())
}

/// The `kl` policy's signal: the student's KL to the teacher cache on each
/// pool row; `None` for the other policies.
fn kl_signal(
    req: &SelectRequest,
    student: Option<&Student>,
    data: &Data,
    pool: &[usize],
) -> Result<Option<Vec<Option<f64>>>> {
    if req.policy != Policy::Kl {
        return Ok(None);
    }
    let Some(dir) = &req.teacher_cache else {
        bail!("policy 'kl' needs --teacher-cache <dir>");
    };
    let Some(s) = student else {
        bail!("policy 'kl' needs --student <checkpoint>");
    };
    let cache = TeacherCache::load(dir)?;
    Ok(Some(candidate_kl(
        s,
        &data.ds,
        &data.reference.fingerprint,
        &cache,
        pool,
    )?))
}

/// Chooses training rows for the teacher among the rows the configured
/// student trains on, and writes the selection file with its sidecar.
pub fn select(cfg: &Config, req: &SelectRequest, device: &Device) -> Result<SelectOutcome> {
    let policy = req.policy;
    check_select_out(req)?;
    let data = load_prepared(&req.data)?;
    let student = match &req.student {
        Some(p) => Some(
            checkpoint::load(
                p,
                &Expect {
                    fingerprint: Some(&data.reference.fingerprint),
                    kind: None,
                },
                device,
            )?
            .student,
        ),
        None => None,
    };
    let t0 = Instant::now();
    // the rows the configured student actually trains on, less those that
    // already have teacher output
    let mut pool = trained_rows(&data.ds, cfg.student.objective, cfg.student.max_len);
    pool.retain(|&r| !req.exclude.contains(&data.ds.train[r].key));
    let signals = match (&student, policy.needs_signals()) {
        (Some(s), true) => Some(RowSignals::compute(
            s,
            &data.ds,
            &pool,
            &SignalOptions {
                batch_size: BATCH,
                seed: cfg.seed,
                progress: true,
            },
        )?),
        (None, true) => bail!("policy '{}' needs --student <checkpoint>", policy.name()),
        _ => None,
    };
    let kl = kl_signal(req, student.as_ref(), &data, &pool)?;
    let sel = choose(
        policy,
        req.budget,
        &SelectInputs {
            pool: pool.len(),
            signals: signals.as_ref(),
            kl: kl.as_deref(),
            threshold: req.threshold,
            seed: cfg.seed,
        },
    )?;
    if sel.rows.is_empty() {
        bail!(
            "policy '{}' selects no rows of {} (threshold {}): an empty selection gives the teacher nothing; loosen --threshold or raise --budget",
            policy.name(),
            pool.len(),
            req.threshold.map_or("none".into(), |t| t.to_string())
        );
    }
    let keys: Vec<(String, f64)> = sel
        .rows
        .iter()
        .map(|&(i, s)| (data.ds.train[pool[i]].key.clone(), s))
        .collect();
    let meta = SelectionMeta {
        policy: Some(policy.name().into()),
        budget: serde_json::to_value(req.budget)?,
        threshold: req.threshold,
        seed: cfg.seed,
        pool: pool.len(),
        train_rows: data.ds.train.len(),
        objective: cfg.student.objective.name().into(),
        max_len: cfg.student.max_len,
        selected: Some(keys.len()),
        fraction: keys.len() as f64 / pool.len().max(1) as f64,
        dataset: Some(DatasetRef {
            dir: None,
            ..data.reference.clone()
        }),
        student: req.student.as_ref().map(|p| p.display().to_string()),
        wall_secs: t0.elapsed().as_secs_f64(),
    };
    write_selection(&req.out, &keys, &meta)?;
    Ok(SelectOutcome {
        selected: keys.len(),
        pool: pool.len(),
        wall_secs: t0.elapsed().as_secs_f64(),
    })
}
