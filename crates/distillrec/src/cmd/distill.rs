//! `distill`.

use anyhow::Result;

use distillrec_config::reads;
use distillrec_pipeline::stages::{self, DistillRequest};

use crate::args::DistillArgs;
use crate::common::{build_info, config_device, data_override, load_config, print_metrics};

/// Runs `distill`.
pub fn run(a: DistillArgs) -> Result<()> {
    let mut cfg = load_config(&a.config, data_override(a.data.as_deref()), reads::DISTILL)?;
    let device = config_device(&mut cfg, &a.device)?;
    let req = DistillRequest {
        teacher_cache: a.teacher_cache,
        selection: a.selection,
        data: a.data,
        out: a.out,
        init: a.init,
    };
    let d = stages::distill(&cfg, &req, build_info(), &device)?;
    let name = format!(
        "distilled {:?} (best epoch {}, {} teacher rows)",
        cfg.student.model, d.outcome.best_epoch, d.teacher_rows
    );
    print_metrics(&name.to_lowercase(), &d.metrics, &cfg.eval.ks);
    println!("checkpoint: {}", d.outcome.best_checkpoint.display());
    Ok(())
}
