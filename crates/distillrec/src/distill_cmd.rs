//! Distillation-side commands: `teacher from-student | from-files | merge`,
//! `select`, `distill`, and `report`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use distillrec_cache::{
    from_files, read_selection_rows, write_selection, FromFiles, IdSpace, RowKeys, ShardSpec,
    TeacherCache,
};
use distillrec_distill::teacher::{cache_from_student, FromStudent};
use distillrec_distill::{DistillObjective, TeacherRows};
use distillrec_run::{init_logging, Metrics, Run};
use distillrec_select::{select, Budget, Policy, RowSignals, SelectInputs, SignalOptions};
use distillrec_train::checkpoint::{self, Expect};
use distillrec_train::{train_with, TrainOptions};

use crate::cli::ConfigArgs;
use crate::commands::{
    build_info, finish, load_config, load_prepared, print_metrics, run_data, Data,
};

/// `teacher` subcommands.
#[derive(Subcommand, Debug)]
pub enum TeacherCommand {
    /// Build a teacher cache from a trained student checkpoint (top-K of its scores, d = −log p, its item table).
    FromStudent(FromStudentArgs),
    /// Build a teacher cache from plain files (top-K ids and distances as CSV/TXT/NPY, item embeddings as NPY or safetensors).
    FromFiles(FromFilesArgs),
    /// Join cache shards (written with --shard i/n) into one cache, by row key.
    Merge(MergeArgs),
}

/// Arguments of `teacher from-student`.
#[derive(Args, Debug)]
pub struct FromStudentArgs {
    /// The teacher: a student checkpoint (`.safetensors` or its `.json` manifest).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// The prepared dataset (its fingerprint must match the checkpoint's).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Output cache directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Only these training rows (a selection file from `distillrec select`).
    #[arg(long, value_name = "FILE")]
    pub selection: Option<PathBuf>,
    /// Write only shard i of n (0-based), e.g. `--shard 0/4`; join with `teacher merge`.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<ShardSpec>,
    /// Candidates per row (default: teacher.top_k of the config).
    #[arg(long)]
    pub k: Option<usize>,
    /// Config file and overrides (`teacher.top_k`, `teacher.mask_history`).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `teacher from-files`.
#[derive(Args, Debug)]
pub struct FromFilesArgs {
    /// The prepared dataset the rows belong to.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Top-K item ids: CSV (`key,c1..cK`, or `c1..cK` with --keys/--train-order), whitespace TXT, or NPY `[rows, K]`.
    #[arg(long, value_name = "FILE")]
    pub topk: PathBuf,
    /// Confidence distances in the same layout (smaller = more confident); without them every candidate is equally confident.
    #[arg(long, value_name = "FILE")]
    pub distances: Option<PathBuf>,
    /// LLM item embeddings: NPY or safetensors, `[N + 1, D]` / `[N, D]` (internal ids) or one row per raw id.
    #[arg(long, value_name = "FILE")]
    pub embeddings: Option<PathBuf>,
    /// A file with one row key per line, naming the rows of the arrays.
    #[arg(long, value_name = "FILE", conflicts_with = "train_order")]
    pub keys: Option<PathBuf>,
    /// Row i of the arrays is the dataset's i-th training row (as DLLM2Rec's files are).
    #[arg(long)]
    pub train_order: bool,
    /// Id space of the files: `internal` (1..=N) or `raw` (the dataset's raw item ids).
    #[arg(long, default_value = "internal")]
    pub ids: String,
    /// Keep only the first K candidates.
    #[arg(long)]
    pub k: Option<usize>,
    /// What the distances are (recorded in the manifest), e.g. `l2` or `neg_log_prob`.
    #[arg(long, default_value = "given")]
    pub distance_kind: String,
    /// Order each row by distance (ties by item id) instead of refusing rows whose distances decrease.
    #[arg(long)]
    pub sort: bool,
    /// Output cache directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Arguments of `teacher merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The prepared dataset (rows are put back in training order).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Output cache directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Shard directories.
    #[arg(value_name = "SHARD", required = true)]
    pub shards: Vec<PathBuf>,
}

/// Arguments of `select`.
#[derive(Args, Debug)]
pub struct SelectArgs {
    /// Policy: all, random, loss, entropy, least_confidence, margin, gradient_norm, coreset, kmeans, badge, kl, gt_error (default: selection.policy).
    #[arg(long)]
    pub policy: Option<String>,
    /// Budget: a fraction (0.25 or 25%) or a row count (1000) (default: selection.budget).
    #[arg(long)]
    pub budget: Option<String>,
    /// The student whose signals inform the policy (every policy but all/random).
    #[arg(long, value_name = "FILE")]
    pub student: Option<PathBuf>,
    /// The prepared dataset.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// A teacher cache (the post-hoc `kl` filter).
    #[arg(long, value_name = "DIR")]
    pub teacher_cache: Option<PathBuf>,
    /// Threshold of the post-hoc filters (default: selection.threshold).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Output selection file (CSV `key,score`, plus `<file>.json`).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Config file and overrides (`seed`, `[selection]`).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `distill`.
#[derive(Args, Debug)]
pub struct DistillArgs {
    /// The teacher cache.
    #[arg(long, value_name = "DIR")]
    pub teacher_cache: PathBuf,
    /// Distil only the rows of this selection file (others train on the base loss).
    #[arg(long, value_name = "FILE")]
    pub selection: Option<PathBuf>,
    /// A prepared dataset directory (overrides dataset.prepared / dataset.raw).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Run directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Config file and overrides (`[student]`, `[distill]`, `[train.distill]`).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Runs a `teacher` subcommand.
pub fn teacher(c: TeacherCommand) -> Result<()> {
    init_logging(None)?;
    match c {
        TeacherCommand::FromStudent(a) => teacher_from_student(a),
        TeacherCommand::FromFiles(a) => teacher_from_files(a),
        TeacherCommand::Merge(a) => teacher_merge(a),
    }
}

/// Indices into `ds.train` of the rows named by a selection file (all rows without one).
fn selected_rows(data: &Data, selection: Option<&Path>) -> Result<Vec<usize>> {
    match selection {
        None => Ok((0..data.ds.train.len()).collect()),
        Some(path) => Ok(read_selection_rows(
            path,
            &data.reference.fingerprint,
            &data.ds,
        )?),
    }
}

fn teacher_from_student(a: FromStudentArgs) -> Result<()> {
    let cfg = load_config(&a.config, vec![])?;
    let data = load_prepared(&a.data)?;
    let loaded = checkpoint::load(
        &a.checkpoint,
        &Expect {
            fingerprint: Some(&data.reference.fingerprint),
            kind: None,
        },
        &candle_core::Device::Cpu,
    )?;
    let mut rows = selected_rows(&data, a.selection.as_deref())?;
    if let Some(sh) = &a.shard {
        rows = rows[sh.range(rows.len())].to_vec();
    }
    let t0 = std::time::Instant::now();
    let opts = FromStudent {
        k: a.k.unwrap_or(cfg.teacher.top_k),
        mask_history: cfg.teacher.mask_history,
        batch_size: 256,
        source: format!(
            "student:{}",
            crate::commands::absolute(&a.checkpoint).display()
        ),
        progress: true,
    };
    let mut cache = cache_from_student(
        &loaded.student,
        &data.ds,
        &data.reference.fingerprint,
        &rows,
        &opts,
    )?;
    cache.manifest.shard = a.shard;
    cache.save(&a.out)?;
    println!(
        "teacher cache: {} rows, top-{}, {}-d item embeddings, {:.1}s -> {}",
        cache.rows(),
        cache.k(),
        cache.embedding_dim().unwrap_or(0),
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

fn teacher_from_files(a: FromFilesArgs) -> Result<()> {
    let data = load_prepared(&a.data)?;
    let ids = match a.ids.as_str() {
        "internal" => IdSpace::Internal,
        "raw" => IdSpace::Raw,
        other => bail!("--ids {other}: expected internal or raw"),
    };
    let keys = match (&a.keys, a.train_order) {
        (Some(k), _) => RowKeys::KeysFile(k.clone()),
        (None, true) => RowKeys::TrainOrder,
        (None, false) => RowKeys::InFile,
    };
    let spec = FromFiles {
        topk: a.topk.clone(),
        distances: a.distances.clone(),
        embeddings: a.embeddings.clone(),
        keys,
        ids,
        k: a.k,
        distance_kind: a.distance_kind.clone(),
        sort: a.sort,
    };
    let cache = from_files(&spec, &data.reference.fingerprint, &data.ds)?;
    cache.save(&a.out)?;
    println!(
        "teacher cache: {} rows, top-{}, embeddings {} -> {}",
        cache.rows(),
        cache.k(),
        cache
            .embedding_dim()
            .map_or("none".to_string(), |d| format!("{d}-d")),
        a.out.display()
    );
    Ok(())
}

fn teacher_merge(a: MergeArgs) -> Result<()> {
    let data = load_prepared(&a.data)?;
    let shards = a
        .shards
        .iter()
        .map(|p| TeacherCache::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    let merged = TeacherCache::merge(shards, &data.reference.fingerprint, &data.ds)?;
    merged.save(&a.out)?;
    println!(
        "merged {} shards: {} rows -> {}",
        a.shards.len(),
        merged.rows(),
        a.out.display()
    );
    Ok(())
}

/// Teacher–student KL over each row's candidates: teacher `q ∝ exp(−d)`,
/// student `p ∝ exp(s)` over the same candidates, for the training rows
/// `pool` (`None` where the cache has no output for the row).
fn candidate_kl(
    student: &distillrec_models::Student,
    data: &Data,
    cache: &TeacherCache,
    pool: &[usize],
) -> Result<Vec<Option<f64>>> {
    let ds = &data.ds;
    let lookup = cache.row_lookup(&data.reference.fingerprint, ds)?;
    let n1 = ds.num_items() + 1;
    let mut out = vec![None; pool.len()];
    let rows: Vec<usize> = (0..pool.len())
        .filter(|&i| lookup[pool[i]].is_some())
        .collect();
    for chunk in rows.chunks(256) {
        let hist: Vec<&[u32]> = chunk
            .iter()
            .map(|&i| ds.history(&ds.train[pool[i]]))
            .collect();
        let scores = student.score_histories(&hist)?;
        for (j, &i) in chunk.iter().enumerate() {
            let t = lookup[pool[i]].expect("filtered");
            let s: Vec<f64> = cache
                .row_items(t)
                .iter()
                .map(|&it| scores[j * n1 + it as usize] as f64)
                .collect();
            let q: Vec<f64> = cache
                .row_distances(t)
                .iter()
                .map(|&x| -(x as f64))
                .collect();
            let lq = log_softmax(&q);
            let lp = log_softmax(&s);
            out[i] = Some(lq.iter().zip(&lp).map(|(q, p)| q.exp() * (q - p)).sum());
        }
    }
    Ok(out)
}

fn log_softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z = m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    x.iter().map(|v| v - z).collect()
}

/// Runs `select`.
pub fn select_cmd(a: SelectArgs) -> Result<()> {
    init_logging(None)?;
    let cfg = load_config(&a.config, vec![])?;
    let policy: Policy = a
        .policy
        .as_deref()
        .unwrap_or(&cfg.selection.policy)
        .parse()?;
    let budget: Budget = match &a.budget {
        Some(b) => b.parse()?,
        None => Budget::from_value(cfg.selection.budget).context("selection.budget")?,
    };
    let threshold = a.threshold.or(cfg.selection.threshold);
    let data = load_prepared(&a.data)?;
    let student = match &a.student {
        Some(p) => Some(
            checkpoint::load(
                p,
                &Expect {
                    fingerprint: Some(&data.reference.fingerprint),
                    kind: None,
                },
                &candle_core::Device::Cpu,
            )?
            .student,
        ),
        None => None,
    };
    let t0 = std::time::Instant::now();
    // the rows the configured student actually trains on
    let pool =
        distillrec_train::units::trained_rows(&data.ds, cfg.student.objective, cfg.student.max_len);
    let signals = match (&student, policy.needs_signals()) {
        (Some(s), true) => Some(RowSignals::compute(
            s,
            &data.ds,
            &pool,
            &SignalOptions {
                batch_size: 256,
                seed: cfg.seed,
                progress: true,
            },
        )?),
        (None, true) => bail!("policy '{}' needs --student <checkpoint>", policy.name()),
        _ => None,
    };
    let kl = if policy == Policy::Kl {
        let Some(dir) = &a.teacher_cache else {
            bail!("policy 'kl' needs --teacher-cache <dir>");
        };
        let Some(s) = &student else {
            bail!("policy 'kl' needs --student <checkpoint>");
        };
        let cache = TeacherCache::load(dir)?;
        Some(candidate_kl(s, &data, &cache, &pool)?)
    } else {
        None
    };
    let sel = select(
        policy,
        budget,
        &SelectInputs {
            pool: pool.len(),
            signals: signals.as_ref(),
            kl: kl.as_deref(),
            threshold,
            seed: cfg.seed,
        },
    )?;
    let keys: Vec<(String, f64)> = sel
        .rows
        .iter()
        .map(|&(i, s)| (data.ds.train[pool[i]].key.clone(), s))
        .collect();
    let meta = serde_json::json!({
        "policy": policy.name(),
        "budget": budget,
        "threshold": threshold,
        "seed": cfg.seed,
        "pool": pool.len(),
        "train_rows": data.ds.train.len(),
        "objective": cfg.student.objective,
        "max_len": cfg.student.max_len,
        "selected": keys.len(),
        "fraction": keys.len() as f64 / pool.len().max(1) as f64,
        "dataset": {"name": data.ds.name, "fingerprint": data.reference.fingerprint},
        "student": a.student.as_ref().map(|p| p.display().to_string()),
        "wall_secs": t0.elapsed().as_secs_f64(),
    });
    write_selection(&a.out, &keys, &meta)?;
    println!(
        "{}: {} of {} trained rows ({:.1}%) in {:.1}s -> {}",
        policy.name(),
        keys.len(),
        pool.len(),
        100.0 * keys.len() as f64 / pool.len().max(1) as f64,
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

/// Runs `distill`.
pub fn distill(a: DistillArgs) -> Result<()> {
    let cfg = load_config(&a.config, vec![])?;
    let mut run = Run::create(&a.out, Some(&cfg), cfg.seed, build_info())?;
    init_logging(Some(&a.out.join("run.log")))?;
    let result = (|| {
        let data = run.stage("data", || run_data(&cfg, a.data.as_deref(), &a.out))?;
        let mut cache = TeacherCache::load(&a.teacher_cache)?;
        let mut selection_rows = None;
        if let Some(sel) = &a.selection {
            let rows = selected_rows(&data, Some(sel))?;
            let keys: HashSet<String> =
                rows.iter().map(|&r| data.ds.train[r].key.clone()).collect();
            let before = cache.rows();
            cache = cache.restrict(&keys);
            selection_rows = Some(keys.len());
            if cache.rows() == 0 && !keys.is_empty() {
                bail!(
                    "none of the {} rows of the selection {} has teacher output in the cache {}: was the cache made for another selection?",
                    keys.len(),
                    sel.display(),
                    a.teacher_cache.display()
                );
            }
            tracing::info!(
                before,
                after = cache.rows(),
                "teacher rows restricted to the selection"
            );
            if cache.rows() < keys.len() {
                tracing::warn!(
                    missing = keys.len() - cache.rows(),
                    "selected rows without teacher output in the cache train on the base loss alone"
                );
            }
        }
        let teacher = TeacherRows::from_cache(&cache, &data.reference.fingerprint, &data.ds)?;
        let objective =
            DistillObjective::new(&data.ds, &cfg.student, &cfg.distill, teacher, cfg.seed)?;
        let terms = objective.terms().clone();
        run.record_cost(
            "distill.teacher",
            serde_json::json!({
                "cache": crate::commands::absolute(&a.teacher_cache).display().to_string(),
                "cache_source": cache.manifest.source,
                "selection": a
                    .selection
                    .as_ref()
                    .map(|p| crate::commands::absolute(p).display().to_string()),
                "selection_rows": selection_rows,
                "teacher_rows": terms.teacher_rows,
                "trained_rows": terms.trained_rows,
                "train_rows": data.ds.train.len(),
                "fraction": terms.teacher_rows as f64 / terms.trained_rows.max(1) as f64,
                "terms": terms,
            }),
        )?;
        let opts = TrainOptions {
            student: &cfg.student,
            stage: &cfg.train.distill,
            eval: &cfg.eval,
            seed: cfg.seed,
            out_dir: &a.out,
            progress: true,
            halt_after_epoch: None,
        };
        let outcome = run.stage("train.distill", || {
            train_with(&data.ds, &data.reference, &opts, &objective)
        })?;
        crate::commands::record_training(&mut run, "distill.train", &outcome)?;
        let m = Metrics {
            valid: outcome.valid.clone(),
            test: outcome.test.clone(),
        };
        run.write_metrics(&m)?;
        print_metrics(
            &format!(
                "distilled {:?} (best epoch {}, {} teacher rows)",
                cfg.student.model, outcome.best_epoch, terms.teacher_rows
            )
            .to_lowercase(),
            &m,
        );
        println!("checkpoint: {}", outcome.best_checkpoint.display());
        Ok(())
    })();
    finish(run, result)
}
