//! One function per command; each reads files, calls the library, writes files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use distillrec_config::{Config, DatasetKind};
use distillrec_data::{stats, store, Dataset, ItemId, SplitName};
use distillrec_eval::{evaluate_popularity, EvalReport};
use distillrec_run::{init_logging, BuildInfo, Metrics, Run, SplitMetrics};
use distillrec_train::checkpoint::{self, Expect};
use distillrec_train::{
    evaluate_student, train_student, DatasetRef, EvalCost, TrainOptions, TrainOutcome,
};

use crate::cli::{
    BenchCommand, Cli, Command, ConfigArgs, DataCommand, EvalCommand, EvalStudentArgs,
    PipelineArgs, PopularityArgs, PrepareArgs, RecommendArgs, StatsArgs, TrainCommand,
    TrainStudentArgs,
};
use crate::source;

/// What this binary was built from, for `run.json`.
pub fn build_info() -> BuildInfo {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: opt(env!("DISTILLREC_GIT_COMMIT")),
        git_dirty: opt(env!("DISTILLREC_GIT_DIRTY")).map(|s| s == "true"),
        rustc: opt(env!("DISTILLREC_RUSTC")),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .to_string(),
    }
}

/// Dispatches a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data(DataCommand::Prepare(a)) => prepare(*a),
        Command::Data(DataCommand::Stats(a)) => data_stats(a),
        Command::Train(TrainCommand::Student(a)) => train(a),
        Command::Eval(EvalCommand::Popularity(a)) => eval_popularity(a),
        Command::Eval(EvalCommand::Student(a)) => eval_student(a),
        Command::Teacher(c) => crate::distill_cmd::teacher(c),
        Command::Select(a) => crate::distill_cmd::select_cmd(a),
        Command::Distill(a) => crate::distill_cmd::distill(a),
        Command::Report(a) => crate::report_cmd::report(a),
        Command::Recommend(a) => recommend(a),
        Command::Pipeline(a) => pipeline(a),
        Command::Llm(c) => crate::llm_cmd::run(c),
        Command::Bench(BenchCommand::Llm(a)) => crate::llm_cmd::bench(a),
        Command::Bench(BenchCommand::Student(a)) => crate::bench_cmd::bench_student(a),
    }
}

/// A TOML literal for a `--set` value (JSON string escapes are valid TOML).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

pub(crate) fn load_config(c: &ConfigArgs, extra: Vec<String>) -> Result<Config> {
    let mut sets = c.set.clone();
    sets.extend(extra);
    Ok(Config::load(c.config.as_deref(), &sets)?)
}

fn prepare(a: PrepareArgs) -> Result<()> {
    init_logging(None)?;
    let kind = DatasetKind::parse(&a.dataset).with_context(|| {
        let names: Vec<_> = DatasetKind::ALL.iter().map(|(n, _)| *n).collect();
        format!(
            "--dataset '{}' is not one of {}",
            a.dataset,
            names.join(", ")
        )
    })?;
    let mut sets = vec![format!("dataset.kind={}", quoted(kind.name()))];
    if let Some(r) = &a.raw {
        sets.push(format!("dataset.raw={}", quoted(&r.display().to_string())));
    }
    let mut push = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            sets.push(format!("{k}={v}"));
        }
    };
    push("dataset.split", a.split.as_deref().map(quoted));
    push("dataset.dedup", a.dedup.as_deref().map(quoted));
    push("dataset.min_rating", a.min_rating.map(|x| format!("{x:?}")));
    push("dataset.k_core", a.k_core.map(|x| x.to_string()));
    push("dataset.min_seq_len", a.min_seq_len.map(|x| x.to_string()));
    push("dataset.min_history", a.min_history.map(|x| x.to_string()));
    push("seed", a.seed.map(|x| x.to_string()));
    push("dataset.synthetic.seed", a.seed.map(|x| x.to_string()));
    let mut cfg = load_config(&a.config, sets)?;
    cfg.dataset.prepared = None;
    let t = std::time::Instant::now();
    let ds = source::build_dataset(&cfg)?;
    let manifest = store::save(&ds, &a.out)?;
    let c = &manifest.counts;
    println!(
        "prepared {} in {:.1}s: {} users, {} items, {} interactions; rows train {} valid {} test {} -> {}",
        ds.name,
        t.elapsed().as_secs_f64(),
        c.users.map_or("unknown".into(), |u| u.to_string()),
        c.items,
        c.interactions,
        c.train,
        c.valid,
        c.test,
        a.out.display()
    );
    Ok(())
}

fn data_stats(a: StatsArgs) -> Result<()> {
    let manifest = store::read_manifest(&a.dir)?;
    let ds = store::load(&a.dir)?;
    let s = stats::stats(&ds, Some(manifest.fingerprint));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!("{s}");
    }
    Ok(())
}

/// A prepared dataset with its identity.
/// A loaded prepared dataset and how checkpoints refer to it.
pub(crate) struct Data {
    /// The dataset.
    pub ds: Dataset,
    /// Its fingerprint, name and directory.
    pub reference: DatasetRef,
}

pub(crate) fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

pub(crate) fn load_prepared(dir: &Path) -> Result<Data> {
    let m = store::read_manifest(dir)?;
    let ds = store::load(dir)?;
    Ok(Data {
        reference: DatasetRef {
            fingerprint: m.fingerprint,
            name: ds.name.clone(),
            dir: Some(absolute(dir)),
        },
        ds,
    })
}

/// The dataset of a run: `--data`, else `dataset.prepared`, else built from
/// the raw source and saved under `<out>/data` (so it has a fingerprint).
pub(crate) fn run_data(cfg: &Config, data: Option<&Path>, out: &Path) -> Result<Data> {
    if let Some(d) = data.or(cfg.dataset.prepared.as_deref()) {
        return load_prepared(d);
    }
    let ds = source::build_dataset(cfg)?;
    let dir = out.join("data");
    store::save(&ds, &dir)?;
    load_prepared(&dir)
}

/// Evaluates popularity on valid and test; records the cost in the run.
fn popularity_metrics(ds: &Dataset, cfg: &Config, run: &mut Run) -> Result<Metrics> {
    let valid = evaluate_popularity(ds, SplitName::Valid, &cfg.eval)?;
    let test = evaluate_popularity(ds, SplitName::Test, &cfg.eval)?;
    run.record_cost("popularity.valid", EvalCost::from(&valid))?;
    run.record_cost("popularity.test", EvalCost::from(&test))?;
    Ok(Metrics {
        valid: valid.metrics,
        test: test.metrics,
    })
}

pub(crate) fn finish(run: Run, result: Result<()>) -> Result<()> {
    let status = result.as_ref().map(|_| ()).map_err(|e| format!("{e:#}"));
    run.finish(status)?;
    result
}

fn eval_popularity(a: PopularityArgs) -> Result<()> {
    let mut cfg = load_config(&a.config, vec![])?;
    cfg.dataset.prepared = Some(a.data.clone());
    let mut run = Run::create(&a.out, Some(&cfg), cfg.seed, build_info())?;
    init_logging(Some(&a.out.join("run.log")))?;
    let result = (|| {
        let ds = run.stage("load", || store::load(&a.data).map_err(anyhow::Error::from))?;
        let m = popularity_metrics(&ds, &cfg, &mut run)?;
        run.write_metrics(&m)?;
        print_metrics("popularity", &m);
        Ok(())
    })();
    finish(run, result)
}

pub(crate) fn print_metrics(model: &str, m: &Metrics) {
    let pick = |s: &SplitMetrics, k: &str| s.get(k).map_or("-".into(), |v| format!("{v:.4}"));
    println!(
        "{model}: valid ndcg@10 {}  test hr@10 {}  ndcg@10 {}  hr@20 {}  ndcg@20 {}",
        pick(&m.valid, "ndcg@10"),
        pick(&m.test, "hr@10"),
        pick(&m.test, "ndcg@10"),
        pick(&m.test, "hr@20"),
        pick(&m.test, "ndcg@20"),
    );
}

/// Records a finished training stage's epochs and evaluation costs in `run`
/// (`stage` names the training entry, e.g. `student.train`).
pub(crate) fn record_training(run: &mut Run, stage: &str, outcome: &TrainOutcome) -> Result<()> {
    run.record_cost(
        stage,
        serde_json::json!({
            "epochs": outcome.epochs,
            "best_epoch": outcome.best_epoch,
            "mean_epoch_secs": outcome.mean_epoch_secs,
            "resumed_after": outcome.resumed_after,
        }),
    )?;
    run.record_cost("student.valid", &outcome.valid_cost)?;
    run.record_cost("student.test", &outcome.test_cost)?;
    Ok(())
}

/// Trains the configured student in `out` and records everything in `run`.
fn train_in_run(
    cfg: &Config,
    data: &Data,
    out: &Path,
    run: &mut Run,
) -> Result<(Metrics, TrainOutcome)> {
    let opts = TrainOptions {
        student: &cfg.student,
        stage: &cfg.train.student,
        eval: &cfg.eval,
        seed: cfg.seed,
        out_dir: out,
        progress: true,
        halt_after_epoch: None,
    };
    let outcome = run.stage("train.student", || {
        train_student(&data.ds, &data.reference, &opts)
    })?;
    record_training(run, "student.train", &outcome)?;
    let m = Metrics {
        valid: outcome.valid.clone(),
        test: outcome.test.clone(),
    };
    Ok((m, outcome))
}

fn train(a: TrainStudentArgs) -> Result<()> {
    let cfg = load_config(&a.config, vec![])?;
    let mut run = Run::create(&a.out, Some(&cfg), cfg.seed, build_info())?;
    init_logging(Some(&a.out.join("run.log")))?;
    let result = (|| {
        let data = run.stage("data", || run_data(&cfg, a.data.as_deref(), &a.out))?;
        let (m, outcome) = train_in_run(&cfg, &data, &a.out, &mut run)?;
        run.write_metrics(&m)?;
        print_metrics(
            &format!(
                "{:?} (best epoch {})",
                cfg.student.model, outcome.best_epoch
            )
            .to_lowercase(),
            &m,
        );
        println!("checkpoint: {}", outcome.best_checkpoint.display());
        Ok(())
    })();
    finish(run, result)
}

fn eval_student(a: EvalStudentArgs) -> Result<()> {
    let cfg = load_config(&a.config, vec![])?;
    let run = match &a.out {
        Some(out) => {
            let run = Run::create(out, Some(&cfg), cfg.seed, build_info())?;
            init_logging(Some(&out.join("run.log")))?;
            Some(run)
        }
        None => {
            init_logging(None)?;
            None
        }
    };
    let result = eval_student_in(&a, &cfg);
    match (run, result) {
        (Some(mut run), Ok((valid, test, m))) => {
            run.record_cost("student.valid", EvalCost::from(&valid))?;
            run.record_cost("student.test", EvalCost::from(&test))?;
            run.write_metrics(&m)?;
            run.finish(Ok(()))?;
            Ok(())
        }
        (Some(run), Err(e)) => finish(run, Err(e)),
        (None, r) => r.map(|_| ()),
    }
}

/// Evaluates the checkpoint of `eval student` and prints its metrics.
fn eval_student_in(a: &EvalStudentArgs, cfg: &Config) -> Result<(EvalReport, EvalReport, Metrics)> {
    let data = load_prepared(&a.data)?;
    let loaded = checkpoint::load(
        &a.checkpoint,
        &Expect {
            fingerprint: Some(&data.reference.fingerprint),
            kind: None,
        },
        &candle_core::Device::Cpu,
    )?;
    let valid = evaluate_student(&loaded.student, &data.ds, SplitName::Valid, &cfg.eval)?;
    let test = evaluate_student(&loaded.student, &data.ds, SplitName::Test, &cfg.eval)?;
    let m = Metrics {
        valid: valid.metrics.clone(),
        test: test.metrics.clone(),
    };
    print_metrics(
        &format!("{:?}", loaded.manifest.spec.kind).to_lowercase(),
        &m,
    );
    println!(
        "test: {} rows in {:.2}s ({:.0} rows/s)",
        test.rows, test.wall_secs, test.rows_per_sec
    );
    Ok((valid, test, m))
}

/// Resolves one history entry: a raw item id, else a title (exact, case
/// insensitive), else a unique title substring.
fn resolve_item(ds: &Dataset, entry: &str) -> Result<ItemId> {
    let e = entry.trim();
    if let Some(i) = ds.items.iter().position(|it| it.raw_id == e) {
        return Ok(i as ItemId + 1);
    }
    let lower = e.to_lowercase();
    if let Some(i) = ds
        .items
        .iter()
        .position(|it| it.title.to_lowercase() == lower)
    {
        return Ok(i as ItemId + 1);
    }
    let hits: Vec<usize> = ds
        .items
        .iter()
        .enumerate()
        .filter(|(_, it)| it.title.to_lowercase().contains(&lower))
        .map(|(i, _)| i)
        .collect();
    match hits.as_slice() {
        [i] => Ok(*i as ItemId + 1),
        [] => bail!(
            "--history: '{e}' is neither a raw item id nor a title of dataset '{}'",
            ds.name
        ),
        many => {
            let shown: Vec<&str> = many
                .iter()
                .take(5)
                .map(|&i| ds.items[i].title.as_str())
                .collect();
            bail!(
                "--history: '{e}' matches {} titles ({}{}); be more specific",
                many.len(),
                shown.join("; "),
                if many.len() > 5 { "; ..." } else { "" }
            )
        }
    }
}

fn recommend(a: RecommendArgs) -> Result<()> {
    let (manifest, _) = checkpoint::read_manifest(&a.checkpoint)?;
    let dir = match (&a.data, &manifest.dataset.dir) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => bail!(
            "{}: the checkpoint records no dataset directory; pass --data",
            a.checkpoint.display()
        ),
    };
    let data = load_prepared(&dir)?;
    let loaded = checkpoint::load(
        &a.checkpoint,
        &Expect {
            fingerprint: Some(&data.reference.fingerprint),
            kind: None,
        },
        &candle_core::Device::Cpu,
    )?;
    let sep = if a.history.contains('|') { '|' } else { ',' };
    let history: Vec<ItemId> = a
        .history
        .split(sep)
        .filter(|s| !s.trim().is_empty())
        .map(|s| resolve_item(&data.ds, s))
        .collect::<Result<_>>()?;
    if history.is_empty() {
        bail!("--history is empty");
    }
    let mut scores = loaded.student.score_histories(&[&history])?;
    if !a.include_history {
        for &h in &history {
            scores[h as usize] = f32::NEG_INFINITY;
        }
    }
    let mut order: Vec<usize> = (1..scores.len())
        .filter(|&i| scores[i].is_finite())
        .collect();
    order.sort_by(|&x, &y| scores[y].total_cmp(&scores[x]).then(x.cmp(&y)));
    println!(
        "history: {}",
        history
            .iter()
            .map(|&i| data.ds.title(i).unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    for (rank, &i) in order.iter().take(a.top).enumerate() {
        let it = &data.ds.items[i - 1];
        println!(
            "{:>3}. {:<60} (id {}, score {:.3})",
            rank + 1,
            it.title,
            it.raw_id,
            scores[i]
        );
    }
    Ok(())
}

/// Markdown table of test metrics, one row per model, with its cost.
fn report_table(rows: &[(&str, &Metrics, String)], ks: &[usize]) -> String {
    let mut cols = Vec::new();
    for k in ks {
        cols.push(format!("hr@{k}"));
        cols.push(format!("ndcg@{k}"));
    }
    let mut s = format!(
        "| model | {} | cost |\n|---|{}---|\n",
        cols.join(" | "),
        "---|".repeat(cols.len())
    );
    for (name, m, cost) in rows {
        let cells: Vec<String> = cols
            .iter()
            .map(|c| m.test.get(c).map_or("-".into(), |v| format!("{v:.4}")))
            .collect();
        s.push_str(&format!("| {name} | {} | {cost} |\n", cells.join(" | ")));
    }
    s
}

fn pipeline(a: PipelineArgs) -> Result<()> {
    let cfg = load_config(&a.config, vec![])?;
    let mut run = Run::create(&a.out, Some(&cfg), cfg.seed, build_info())?;
    init_logging(Some(&a.out.join("run.log")))?;
    let result = (|| {
        let data = run.stage("data", || -> Result<Data> {
            match &cfg.dataset.prepared {
                Some(d) => load_prepared(d),
                None => {
                    let dir = a.out.join("data");
                    store::save(&source::build_dataset(&cfg)?, &dir)?;
                    load_prepared(&dir)
                }
            }
        })?;
        let mut pop_run = Run::create(
            &a.out.join("popularity"),
            Some(&cfg),
            cfg.seed,
            build_info(),
        )?;
        let pop = run.stage("popularity", || {
            popularity_metrics(&data.ds, &cfg, &mut pop_run)
        })?;
        pop_run.write_metrics(&pop)?;
        pop_run.finish(Ok(()))?;
        print_metrics("popularity", &pop);
        let student_dir = a.out.join("student");
        let mut student_run = Run::create(&student_dir, Some(&cfg), cfg.seed, build_info())?;
        let (student, outcome) = train_in_run(&cfg, &data, &student_dir, &mut student_run)?;
        student_run.write_metrics(&student)?;
        student_run.finish(Ok(()))?;
        let name = format!("{:?}", cfg.student.model).to_lowercase();
        print_metrics(&name, &student);
        let rows = [
            ("popularity", &pop, "-".to_string()),
            (
                name.as_str(),
                &student,
                format!(
                    "{} epochs, {:.1} s/epoch, eval {:.0} rows/s",
                    outcome.epochs, outcome.mean_epoch_secs, outcome.test_cost.rows_per_sec
                ),
            ),
        ];
        let report = format!(
            "# distillrec pipeline report\n\ndataset: {} ({} items, {} test rows), seed {}\n\n## Test metrics\n\n{}",
            data.ds.name,
            data.ds.num_items(),
            data.ds.test.len(),
            cfg.seed,
            report_table(&rows, &cfg.eval.ks)
        );
        distillrec_data::fsutil::atomic_write(&a.out.join("report.md"), report.as_bytes())?;
        run.write_metrics(&student)?;
        println!("report: {}", a.out.join("report.md").display());
        Ok(())
    })();
    finish(run, result)
}
