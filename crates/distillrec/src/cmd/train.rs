//! `train student`.

use anyhow::Result;

use distillrec_pipeline::stages;

use crate::args::{TrainCommand, TrainStudentArgs};
use crate::common::{
    build_info, config_device, load_config, print_metrics, record_data, READS_TRAIN_STUDENT,
};

/// Runs a `train` subcommand.
pub fn run(c: TrainCommand) -> Result<()> {
    match c {
        TrainCommand::Student(a) => train_student(a),
    }
}

fn train_student(a: TrainStudentArgs) -> Result<()> {
    let mut cfg = load_config(&a.config, vec![], READS_TRAIN_STUDENT)?;
    record_data(&mut cfg, a.data.as_deref());
    let device = config_device(&mut cfg, &a.device)?;
    let t = stages::train_student(&cfg, a.data.as_deref(), &a.out, build_info(), &device)?;
    let name = format!(
        "{:?} (best epoch {})",
        cfg.student.model, t.outcome.best_epoch
    );
    print_metrics(&name.to_lowercase(), &t.metrics);
    println!("checkpoint: {}", t.outcome.best_checkpoint.display());
    Ok(())
}
