//! One function per command; each reads files, calls the library, writes files.

use std::path::Path;

use anyhow::{Context, Result};

use distillrec_config::{Config, DatasetKind};
use distillrec_data::{stats, store, Dataset, SplitName};
use distillrec_eval::{evaluate_popularity, EvalReport};
use distillrec_run::{init_logging, BuildInfo, Metrics, Run, SplitMetrics};

use crate::cli::{
    BenchCommand, Cli, Command, ConfigArgs, DataCommand, EvalCommand, PipelineArgs, PopularityArgs,
    PrepareArgs, StatsArgs,
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
        Command::Eval(EvalCommand::Popularity(a)) => eval_popularity(a),
        Command::Pipeline(a) => pipeline(a),
        Command::Llm(c) => crate::llm_cmd::run(c),
        Command::Bench(BenchCommand::Llm(a)) => crate::llm_cmd::bench(a),
    }
}

/// A TOML literal for a `--set` value (JSON string escapes are valid TOML).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn load_config(c: &ConfigArgs, extra: Vec<String>) -> Result<Config> {
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
    if let Some(seed) = a.seed {
        sets.push(format!("dataset.synthetic.seed={seed}"));
    }
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

/// Metric map of one evaluation, with its cost.
fn with_cost(r: &EvalReport) -> SplitMetrics {
    let mut m = r.metrics.clone();
    m.insert("rows".into(), r.rows as f64);
    m.insert("eval_wall_secs".into(), r.wall_secs);
    m.insert("eval_rows_per_sec".into(), r.rows_per_sec);
    m
}

/// Evaluates popularity on valid and test of `ds`.
fn popularity_metrics(ds: &Dataset, cfg: &Config) -> Result<Metrics> {
    let valid = evaluate_popularity(ds, SplitName::Valid, &cfg.eval)?;
    let test = evaluate_popularity(ds, SplitName::Test, &cfg.eval)?;
    Ok(Metrics {
        valid: with_cost(&valid),
        test: with_cost(&test),
    })
}

fn finish(run: Run, result: Result<()>) -> Result<()> {
    let status = result.as_ref().map(|_| ()).map_err(|e| format!("{e:#}"));
    run.finish(status)?;
    result
}

fn eval_popularity(a: PopularityArgs) -> Result<()> {
    let mut cfg = load_config(&a.config, vec![])?;
    cfg.dataset.prepared = Some(a.data.clone());
    init_logging(Some(&a.out.join("run.log")))?;
    let mut run = Run::create(&a.out, Some(&cfg), cfg.seed, build_info())?;
    let result = (|| {
        let ds = run.stage("load", || store::load(&a.data).map_err(anyhow::Error::from))?;
        let m = run.stage("eval", || popularity_metrics(&ds, &cfg))?;
        run.write_metrics(&m)?;
        print_metrics("popularity", &m);
        Ok(())
    })();
    finish(run, result)
}

fn print_metrics(model: &str, m: &Metrics) {
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

/// Markdown table of test metrics, one row per model.
fn report_table(rows: &[(&str, &Metrics)], ks: &[usize]) -> String {
    let mut cols = Vec::new();
    for k in ks {
        cols.push(format!("hr@{k}"));
        cols.push(format!("ndcg@{k}"));
    }
    let mut s = format!(
        "| model | {} | eval rows/s |\n|---|{}---|\n",
        cols.join(" | "),
        "---|".repeat(cols.len())
    );
    for (name, m) in rows {
        let cells: Vec<String> = cols
            .iter()
            .map(|c| m.test.get(c).map_or("-".into(), |v| format!("{v:.4}")))
            .collect();
        let rps = m
            .test
            .get("eval_rows_per_sec")
            .map_or("-".into(), |v| format!("{v:.0}"));
        s.push_str(&format!("| {name} | {} | {rps} |\n", cells.join(" | ")));
    }
    s
}

fn pipeline(a: PipelineArgs) -> Result<()> {
    let cfg = load_config(&a.config, vec![])?;
    init_logging(Some(&a.out.join("run.log")))?;
    let mut run = Run::create(&a.out, Some(&cfg), cfg.seed, build_info())?;
    let result = (|| {
        let data_dir = a.out.join("data");
        let ds = run.stage("data", || -> Result<Dataset> {
            let ds = source::load_or_build(&cfg)?;
            store::save(&ds, &data_dir)?;
            Ok(ds)
        })?;
        let pop = run.stage("popularity", || popularity_metrics(&ds, &cfg))?;
        write_stage_metrics(&a.out.join("popularity"), &pop)?;
        print_metrics("popularity", &pop);
        let report = format!(
            "# distillrec pipeline report\n\ndataset: {} ({} items, {} test rows), seed {}\n\n## Test metrics\n\n{}",
            ds.name,
            ds.num_items(),
            ds.test.len(),
            cfg.seed,
            report_table(&[("popularity", &pop)], &cfg.eval.ks)
        );
        distillrec_data::fsutil::atomic_write(&a.out.join("report.md"), report.as_bytes())?;
        run.write_metrics(&pop)?;
        println!("report: {}", a.out.join("report.md").display());
        Ok(())
    })();
    finish(run, result)
}

fn write_stage_metrics(dir: &Path, m: &Metrics) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    distillrec_data::fsutil::atomic_write_json(&dir.join("metrics.json"), m)?;
    Ok(())
}
