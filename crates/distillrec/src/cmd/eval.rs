//! `eval popularity`, `eval student`, `eval teacher`.

use anyhow::Result;

use distillrec_config::reads;
use distillrec_pipeline::stages;
use distillrec_run::init_logging;
use distillrec_train::EvalCost;

use crate::args::{EvalCommand, EvalStudentArgs, EvalTeacherArgs, PopularityArgs};
use crate::common::{
    build_info, config_device, load_config, print_json, print_metrics, print_teacher_extras,
};

/// Runs an `eval` subcommand.
pub fn run(c: EvalCommand) -> Result<()> {
    match c {
        EvalCommand::Popularity(a) => popularity(a),
        EvalCommand::Student(a) => student(a),
        EvalCommand::Teacher(a) => teacher(a),
    }
}

fn teacher(a: EvalTeacherArgs) -> Result<()> {
    let mut cfg = load_config(&a.config, vec![], reads::EVAL_TEACHER)?;
    let device = config_device(&mut cfg, &a.device)?;
    if a.out.is_none() {
        init_logging(None)?;
    }
    let m = stages::eval_teacher(
        &cfg,
        &a.checkpoint,
        &a.data,
        (a.backbone.as_deref(), a.student.as_deref()),
        a.out.as_deref(),
        build_info(),
        &device,
    )?;
    if a.json {
        return print_json(
            &serde_json::json!({"model": "teacher", "valid": m.valid, "test": m.test}),
        );
    }
    print_metrics("teacher", &m, &cfg.eval.ks);
    print_teacher_extras(&m);
    Ok(())
}

fn popularity(a: PopularityArgs) -> Result<()> {
    let mut cfg = load_config(&a.config, vec![], reads::EVAL_POPULARITY)?;
    cfg.dataset.prepared = Some(a.data.clone());
    let m = stages::eval_popularity(&cfg, &a.data, &a.out, build_info())?;
    if a.json {
        return print_json(
            &serde_json::json!({"model": "popularity", "valid": m.valid, "test": m.test}),
        );
    }
    print_metrics("popularity", &m, &cfg.eval.ks);
    Ok(())
}

fn student(a: EvalStudentArgs) -> Result<()> {
    let mut cfg = load_config(&a.config, vec![], reads::EVAL_STUDENT)?;
    let device = config_device(&mut cfg, &a.device)?;
    if a.out.is_none() {
        init_logging(None)?; // with --out, the run directory's log starts once it is opened
    }
    let (first, more) = a
        .checkpoint
        .split_first()
        .expect("clap requires --checkpoint");
    let e = stages::eval_student(
        &cfg,
        first,
        more,
        &a.data,
        a.out.as_deref(),
        build_info(),
        &device,
    )?;
    if a.json {
        return print_json(&serde_json::json!({
            "model": e.kind.name(),
            "valid": e.valid.metrics,
            "test": e.test.metrics,
            "cost": {"valid": EvalCost::from(&e.valid), "test": EvalCost::from(&e.test)},
        }));
    }
    print_metrics(e.kind.name(), &e.metrics(), &cfg.eval.ks);
    println!(
        "test: {} rows in {:.2}s ({:.0} rows/s)",
        e.test.rows, e.test.wall_secs, e.test.rows_per_sec
    );
    Ok(())
}
