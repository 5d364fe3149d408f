//! `train student`.

use anyhow::Result;

use distillrec_config::reads;
use distillrec_pipeline::stages;

use crate::args::{TrainCommand, TrainStudentArgs, TrainTeacherArgs};
use crate::common::{
    build_info, config_device, data_override, load_config, print_metrics, print_teacher_extras,
};

/// Runs a `train` subcommand.
pub fn run(c: TrainCommand) -> Result<()> {
    match c {
        TrainCommand::Student(a) => train_student(a),
        TrainCommand::Teacher(a) => train_teacher(a),
    }
}

fn train_teacher(a: TrainTeacherArgs) -> Result<()> {
    let data = data_override(a.data.as_deref());
    let mut cfg = load_config(&a.config, data, reads::TRAIN_TEACHER)?;
    let device = config_device(&mut cfg, &a.device)?;
    let req = stages::TrainTeacherRequest {
        data: a.data,
        selection: a.selection,
        backbone: a.backbone,
        student: a.student,
        out: a.out,
        halt_after_epoch: None,
        init: a.init,
    };
    let t = stages::train_teacher(&cfg, &req, build_info(), &device)?;
    let name = format!(
        "teacher {} E={} (best epoch {})",
        cfg.teacher.objective, cfg.teacher.experts, t.outcome.best_epoch
    );
    print_metrics(&name, &t.metrics, &cfg.eval.ks);
    print_teacher_extras(&t.metrics);
    println!(
        "training: {} rows, {:.0} tokens/s, {:.1}s per epoch",
        t.outcome.rows, t.outcome.tokens_per_sec, t.outcome.mean_epoch_secs
    );
    println!("checkpoint: {}", t.outcome.best.display());
    Ok(())
}

fn train_student(a: TrainStudentArgs) -> Result<()> {
    let data = data_override(a.data.as_deref());
    let mut cfg = load_config(&a.config, data, reads::TRAIN_STUDENT)?;
    let device = config_device(&mut cfg, &a.device)?;
    let t = stages::train_student(&cfg, a.data.as_deref(), &a.out, build_info(), &device)?;
    let name = format!(
        "{:?} (best epoch {})",
        cfg.student.model, t.outcome.best_epoch
    );
    print_metrics(&name.to_lowercase(), &t.metrics, &cfg.eval.ks);
    println!("checkpoint: {}", t.outcome.best_checkpoint.display());
    Ok(())
}
