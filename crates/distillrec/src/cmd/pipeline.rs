//! `pipeline`.

use anyhow::Result;

use distillrec_pipeline::pipeline;

use crate::args::PipelineArgs;
use crate::common::{build_info, config_device, load_config, print_metrics, READS_PIPELINE};

/// Runs `pipeline`.
pub fn run(a: PipelineArgs) -> Result<()> {
    let mut cfg = load_config(&a.config, vec![], READS_PIPELINE)?;
    let device = config_device(&mut cfg, &a.device)?;
    let report = pipeline::run(&cfg, &a.out, build_info(), &device, &mut print_metrics)?;
    println!("report: {}", report.display());
    Ok(())
}
