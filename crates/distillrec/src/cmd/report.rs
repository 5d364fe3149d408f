//! `report`.

use anyhow::Result;

use distillrec_report::{write_report, ReportRequest};

use crate::args::ReportArgs;

/// Runs `report`.
pub fn run(a: ReportArgs) -> Result<()> {
    let req = ReportRequest {
        runs: a.runs,
        ablation_runs: a.ablation_runs,
        budget_runs: a.budget_runs,
        baseline: a.baseline,
        active_runs: a.active_runs,
        converged: a.converged,
        metric: a.metric.to_string(),
        out: a.out,
    };
    let md = write_report(&req)?;
    println!("{md}");
    println!("report -> {}", req.out.display());
    Ok(())
}
