//! `select`.

use anyhow::Result;

use distillrec_config::reads;
use distillrec_pipeline::stages::{self, SelectRequest};
use distillrec_run::init_logging;

use crate::args::SelectArgs;
use crate::common::{config_device, load_config};

/// Runs `select`; `--policy`, `--budget` and `--threshold` override the
/// config's `[selection]`.
pub fn run(a: SelectArgs) -> Result<()> {
    init_logging(None)?;
    let mut cfg = load_config(&a.config, vec![], reads::SELECT)?;
    let policy = a.policy.unwrap_or(cfg.selection.policy);
    let budget = a.budget.unwrap_or(cfg.selection.budget);
    let device = config_device(&mut cfg, &a.device)?;
    let req = SelectRequest {
        policy,
        budget,
        threshold: a.threshold.or(cfg.selection.threshold),
        data: a.data,
        student: a.student,
        teacher_cache: a.teacher_cache,
        out: a.out,
        exclude: Default::default(),
    };
    let o = stages::select(&cfg, &req, &device)?;
    println!(
        "{}: {} of {} trained rows ({:.1}%) in {:.1}s -> {}",
        policy.name(),
        o.selected,
        o.pool,
        100.0 * o.selected as f64 / o.pool.max(1) as f64,
        o.wall_secs,
        req.out.display()
    );
    Ok(())
}
