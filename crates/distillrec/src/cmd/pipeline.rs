//! `pipeline` and `sweep`.

use anyhow::Result;

use distillrec_pipeline::pipeline;

use distillrec_config::{reads, Config};
use distillrec_pipeline::pipeline::StageReport;
use distillrec_pipeline::sweep::{self, split_sets, GridAxis, SweepPlan};

use crate::args::{ConfigArgs, PipelineArgs, SweepArgs};
use crate::common::{build_info, config_device, load_config, print_metrics};

/// Runs `pipeline`: every stage, then the stage timings and the report.
pub fn run(a: PipelineArgs) -> Result<()> {
    let mut cfg = load_config(&a.config, vec![], reads::PIPELINE)?;
    let device = config_device(&mut cfg, &a.device)?;
    let ks = cfg.eval.ks.clone();
    let outcome = pipeline::run(
        &cfg,
        &a.out,
        pipeline::Layout::Named,
        build_info(),
        &device,
        &mut |name, m| print_metrics(name, m, &ks),
    )?;
    print_stages(&outcome.stages);
    println!("{:<15} {:>9.1}", "total", outcome.wall_secs);
    if let Some(report) = &outcome.report {
        println!();
        print!("{}", std::fs::read_to_string(report).unwrap_or_default());
        println!("report: {}", report.display());
    }
    Ok(())
}

/// The stage table: seconds and share of this invocation, or when a skipped
/// stage ran before.
fn print_stages(stages: &[StageReport]) {
    println!();
    println!("{:<15} {:>9}  {:>6}", "stage", "seconds", "share");
    let total: f64 = stages.iter().map(|s| s.wall_secs).sum();
    for s in stages {
        if s.skipped {
            println!(
                "{:<15} {:>9}  (done earlier in {:.1} s)",
                s.name, "skipped", s.ran_secs
            );
        } else {
            println!(
                "{:<15} {:>9.1}  {:>5.1}%",
                s.name,
                s.wall_secs,
                100.0 * s.wall_secs / total.max(1e-9)
            );
        }
    }
}

/// Runs `sweep`: every run of the grid (`--grid` and comma-valued `--set`)
/// times the seeds, then the sweep's report.
pub fn sweep(a: SweepArgs) -> Result<()> {
    let (fixed, mut axes) = split_sets(&a.config.set)?;
    for g in &a.grid {
        axes.push(GridAxis::parse(g)?);
    }
    sweep::check_keys(&fixed, &axes)?;
    sweep::check_seeds(&a.seeds, &fixed, &axes)?;
    let base = ConfigArgs {
        config: a.config.config.clone(),
        set: fixed,
    };
    let mut cfg = load_config(&base, vec![], reads::PIPELINE)?;
    let device = config_device(&mut cfg, &a.device)?;
    let device_set = format!("device={}", cfg.device);
    let config_for = |extra: &[String]| -> Result<Config> {
        let mut e = extra.to_vec();
        e.push(device_set.clone());
        load_config(&base, e, reads::PIPELINE)
    };
    let plan = SweepPlan::new(&axes, &a.seeds, a.max_runs, &config_for)?;
    eprintln!("{}", plan.summary());
    let ks = cfg.eval.ks.clone();
    let outcome = sweep::run(&plan, &a.out, build_info(), &device, &mut |name, m| {
        print_metrics(name, m, &ks)
    })?;
    for (r, stages) in &outcome.runs {
        let ran = stages.iter().filter(|s| !s.skipped).count();
        println!(
            "{:<40} seed {:>6}  {} stages run, {} shared or done earlier",
            r.label(),
            r.seed.map_or("-".into(), |s| s.to_string()),
            ran,
            stages.len() - ran
        );
    }
    println!();
    print!(
        "{}",
        std::fs::read_to_string(&outcome.report).unwrap_or_default()
    );
    println!("report: {}", outcome.report.display());
    Ok(())
}
