//! `active`.

use anyhow::Result;

use distillrec_config::reads;
use distillrec_pipeline::active::{active, ActiveRequest, Labeller};
use distillrec_run::init_logging;

use crate::args::ActiveArgs;
use crate::common::{build_info, config_device, data_override, load_config};

/// Runs `active` and prints one line per round.
pub fn run(a: ActiveArgs) -> Result<()> {
    init_logging(None)?;
    let mut cfg = load_config(&a.config, data_override(Some(&a.data)), reads::ACTIVE)?;
    let device = config_device(&mut cfg, &a.device)?;
    let labeller = match (a.teacher, a.teacher_student, a.teacher_cache) {
        (Some(checkpoint), _, _) => Labeller::Llm {
            checkpoint,
            student: a.student.clone(),
        },
        (_, Some(checkpoint), _) => Labeller::Student(checkpoint),
        (_, _, Some(dir)) => Labeller::Cache(dir),
        // clap's `labeller` group requires one of the three
        (None, None, None) => unreachable!("clap requires a labeller"),
    };
    let req = ActiveRequest {
        data: a.data,
        student: a.student,
        labeller,
        out: a.out,
    };
    let o = active(&cfg, &req, build_info(), &device)?;
    let metric = cfg.train.distill.metric.to_string();
    for (r, stage) in o.rounds.iter().zip(&o.stages) {
        let earlier = if stage.skipped {
            " (finished earlier)"
        } else {
            ""
        };
        println!(
            "round {}{earlier}: {} new rows, {} of {} labelled, teacher {:.1}s in all, test {metric} {:.4}",
            r.round,
            r.new_rows,
            r.labelled_rows,
            r.pool_rows,
            r.teacher_secs_total,
            r.test.get(&metric).copied().unwrap_or(f64::NAN)
        );
    }
    println!("rounds: {}", req.out.join("active.csv").display());
    Ok(())
}
