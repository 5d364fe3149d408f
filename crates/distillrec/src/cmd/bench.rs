//! `bench student`, `bench distill` and `bench eval` (`bench llm` lives
//! with the other LLM commands).

use anyhow::Result;

use distillrec_config::Config;
use distillrec_data::SplitName;
use distillrec_distill::bench::{bench_distill_step, TeacherShape};
use distillrec_models::{Student, StudentSpec};
use distillrec_train::bench::{bench_step, StepBench, StepBenchReport};
use distillrec_train::evaluate_student;

use crate::args::{BenchDistillArgs, BenchEvalArgs, BenchStudentArgs, EvalSplit};
use crate::common::{config_device, use_threads};

/// The benchmark's arguments as config overrides: a SASRec student and the
/// student stage with plain AdamW (no weight decay, no clipping), as the
/// PyTorch reference.
fn overrides(a: &BenchStudentArgs) -> Vec<String> {
    let objective = a.objective.name();
    vec![
        "student.model=sasrec".into(),
        format!("student.objective={objective}"),
        format!("student.heads={}", a.heads),
        format!("student.layers={}", a.layers),
        format!("student.hidden={}", a.hidden),
        format!("student.max_len={}", a.len),
        "student.dropout=0.2".into(),
        "student.loss=ce".into(),
        format!("train.student.batch_size={}", a.batch),
        "train.student.lr=0.001".into(),
        "train.student.weight_decay=0.0".into(),
        "train.student.grad_clip=0.0".into(),
    ]
}

/// Prints the optional breakdown and the `RESULT` line of a step benchmark.
fn print_result(a: &BenchStudentArgs, r: &StepBenchReport, extra: &str) {
    let rss = distillrec_run::peak_rss_mb().unwrap_or(0.0);
    let obj = a.objective.name();
    if a.breakdown {
        let n = r.steps as f64;
        println!(
            "breakdown ms/step: forward {:.1}  backward {:.1}  optimizer {:.1}",
            1e3 * r.forward_secs / n,
            1e3 * r.backward_secs / n,
            1e3 * r.optimizer_secs / n
        );
    }
    println!(
        "RESULT impl=distillrec objective={obj} heads={} items={} len={} batch={}{extra} steps_per_s={:.3} ms_per_step={:.1} peak_rss_mb={:.0}",
        a.heads,
        a.items,
        a.len,
        a.batch,
        r.steps as f64 / r.wall_secs,
        1000.0 * r.wall_secs / r.steps as f64,
        rss
    );
}

/// Runs `bench student`: the trainer's step, timed, printed as the PyTorch
/// script prints it.
pub fn student(a: BenchStudentArgs) -> Result<()> {
    let mut cfg = Config::from_toml_str("", "bench student arguments", &overrides(&a))?;
    cfg.check_student_memory("student", a.items)?;
    use_threads(a.threads)?;
    let device = config_device(&mut cfg, &a.device)?;
    let r = bench_step(&cfg.student, &cfg.train.student, &bench(&a), &device)?;
    print_result(&a, &r, "");
    Ok(())
}

/// Runs `bench distill`: the distillation objective's step on the same
/// shapes, with a teacher of `k` candidates on every row.
pub fn distill(a: BenchDistillArgs) -> Result<()> {
    let s = &a.step;
    let mut sets = overrides(s);
    sets.push(format!("distill.k={}", a.k));
    sets.extend(a.set.iter().cloned());
    let mut cfg = Config::from_toml_str("", "bench distill arguments", &sets)?;
    cfg.check_student_memory("student", s.items)?;
    use_threads(s.threads)?;
    let device = config_device(&mut cfg, &s.device)?;
    let teacher = TeacherShape {
        k: a.k,
        dim: a.teacher_dim,
    };
    let r = bench_distill_step(
        &cfg.student,
        &cfg.train.student,
        &cfg.distill,
        teacher,
        &bench(s),
        &device,
    )?;
    let d = &cfg.distill;
    let extra = format!(
        " k={} teacher_dim={} lambda={} alpha={} ed_weight={}",
        a.k, a.teacher_dim, d.lambda, d.alpha, d.ed_weight
    );
    print_result(s, &r, &extra);
    Ok(())
}

/// The benchmark's size: 3 warm-up steps, then the timed ones.
fn bench(a: &BenchStudentArgs) -> StepBench {
    StepBench {
        items: a.items,
        warmup: 3,
        steps: a.steps,
    }
}

/// Runs `bench eval`: full-ranking evaluation of every row of a split with
/// a randomly initialised SASRec (seed 0) — the scoring, history masking
/// and ranking `train` and `eval student` run, timed.
pub fn eval(a: BenchEvalArgs) -> Result<()> {
    use_threads(a.threads)?;
    let sets = vec![
        "student.model=sasrec".to_string(),
        format!("student.heads={}", a.heads),
        format!("student.layers={}", a.layers),
        format!("student.hidden={}", a.hidden),
        format!("student.max_len={}", a.len),
        format!("eval.batch_size={}", a.batch),
        "eval.ks=[10]".into(),
        "eval.exclude_history=true".into(),
    ];
    let mut cfg = Config::from_toml_str("", "bench eval arguments", &sets)?;
    let device = config_device(&mut cfg, &a.device)?;
    let data = distillrec_pipeline::load_prepared(&a.data)?;
    let ds = &data.ds;
    let spec = StudentSpec::from_config(&cfg.student, ds.num_items());
    let student = Student::new(&spec, 0, &device)?;
    let split = match a.split {
        EvalSplit::Valid => SplitName::Valid,
        EvalSplit::Test => SplitName::Test,
    };
    let t = std::time::Instant::now();
    let report = evaluate_student(&student, ds, split, &cfg.eval)?;
    let wall = t.elapsed().as_secs_f64();
    let rss = distillrec_run::peak_rss_mb().unwrap_or(0.0);
    let metric = |k: &str| report.metrics.get(k).copied().unwrap_or(f64::NAN);
    println!(
        "RESULT impl=distillrec bench=eval rows={} items={} len={} batch={} rows_per_s={:.1} wall_secs={:.3} peak_rss_mb={:.0} hr@10={:.4} ndcg@10={:.4}",
        report.rows,
        ds.num_items(),
        a.len,
        a.batch,
        report.rows as f64 / wall.max(1e-12),
        wall,
        rss,
        metric("hr@10"),
        metric("ndcg@10"),
    );
    Ok(())
}
