//! `pipeline`.

use anyhow::Result;

use distillrec_pipeline::pipeline;

use crate::args::PipelineArgs;
use crate::common::{build_info, config_device, load_config, print_metrics, READS_PIPELINE};

/// Runs `pipeline`: every stage, then the stage timings and the report.
pub fn run(a: PipelineArgs) -> Result<()> {
    let mut cfg = load_config(&a.config, vec![], READS_PIPELINE)?;
    let device = config_device(&mut cfg, &a.device)?;
    let ks = cfg.eval.ks.clone();
    let outcome = pipeline::run(&cfg, &a.out, build_info(), &device, &mut |name, m| {
        print_metrics(name, m, &ks)
    })?;
    println!();
    println!("{:<11} {:>9}  {:>6}", "stage", "seconds", "share");
    let total: f64 = outcome.stages.iter().map(|s| s.wall_secs).sum();
    for s in &outcome.stages {
        if s.skipped {
            println!(
                "{:<11} {:>9}  (done earlier in {:.1} s)",
                s.name, "skipped", s.ran_secs
            );
        } else {
            println!(
                "{:<11} {:>9.1}  {:>5.1}%",
                s.name,
                s.wall_secs,
                100.0 * s.wall_secs / total.max(1e-9)
            );
        }
    }
    println!("{:<11} {:>9.1}", "total", outcome.wall_secs);
    println!();
    print!(
        "{}",
        std::fs::read_to_string(&outcome.report).unwrap_or_default()
    );
    println!("report: {}", outcome.report.display());
    Ok(())
}
