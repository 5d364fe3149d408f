//! `data prepare`, `data stats`.

use std::time::Instant;

use anyhow::Result;

use distillrec_config::reads;
use distillrec_data::{stats, store};
use distillrec_pipeline::stages;
use distillrec_run::init_logging;

use crate::args::{DataCommand, PrepareArgs, StatsArgs};
use crate::common::{load_config, quoted};

/// Runs a `data` subcommand.
pub fn run(c: DataCommand) -> Result<()> {
    match c {
        DataCommand::Prepare(a) => prepare(*a),
        DataCommand::Stats(a) => data_stats(a),
    }
}

fn prepare(a: PrepareArgs) -> Result<()> {
    init_logging(None)?;
    let mut sets = vec![format!("dataset.kind={}", quoted(a.dataset.name()))];
    if let Some(r) = &a.raw {
        sets.push(format!("dataset.raw={}", quoted(&r.display().to_string())));
    }
    let mut push = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            sets.push(format!("{k}={v}"));
        }
    };
    push("dataset.split", a.split.map(|s| quoted(s.name())));
    push("dataset.dedup", a.dedup.map(|d| quoted(d.name())));
    push("dataset.min_rating", a.min_rating.map(|x| format!("{x:?}")));
    push("dataset.k_core", a.k_core.map(|x| x.to_string()));
    push("dataset.min_seq_len", a.min_seq_len.map(|x| x.to_string()));
    push("dataset.min_history", a.min_history.map(|x| x.to_string()));
    push("seed", a.seed.map(|x| x.to_string()));
    push("dataset.synthetic.seed", a.seed.map(|x| x.to_string()));
    let mut cfg = load_config(&a.config, sets, reads::PREPARE)?;
    cfg.dataset.prepared = None;
    let t = Instant::now();
    let (ds, manifest) = stages::prepare(&cfg, &a.out)?;
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
