//! `teacher from-student | from-files | merge | infer | plan`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use candle_core::Device;

use distillrec_cache::{FromFiles, RowKeys, TeacherCache};
use distillrec_config::{reads, Config};
use distillrec_pipeline::stages::{self, CacheJob};
use distillrec_run::init_logging;

use crate::args::{
    CacheJobArgs, FromFilesArgs, FromStudentArgs, MergeArgs, TeacherCommand, TeacherInferArgs,
    TeacherPlanArgs,
};
use crate::common::{config_device, data_override, load_config};

/// Runs a `teacher` subcommand.
pub fn run(c: TeacherCommand) -> Result<()> {
    init_logging(None)?;
    match c {
        TeacherCommand::FromStudent(a) => from_student(a),
        TeacherCommand::FromFiles(a) => from_files(a),
        TeacherCommand::Merge(a) => merge(a),
        TeacherCommand::Infer(a) => infer(a),
        TeacherCommand::Plan(a) => plan(a),
    }
}

/// The config, device and cache job of `teacher infer` / `from-student`.
fn cache_job(checkpoint: PathBuf, j: CacheJobArgs) -> Result<(Config, Device, CacheJob)> {
    let mut cfg = load_config(&j.config, vec![], reads::TEACHER_CACHE)?;
    let device = config_device(&mut cfg, &j.device)?;
    let job = CacheJob {
        checkpoint,
        data: j.data,
        out: j.out,
        selection: j.selection,
        shard: j.shard,
        k: j.k,
    };
    Ok((cfg, device, job))
}

/// One line about a written cache.
fn print_cache(cache: &TeacherCache, what: &str, rate: String, secs: f64, out: &Path) {
    println!(
        "teacher cache: {} rows, top-{}, {}-d {what}{rate}, {secs:.1}s -> {}",
        cache.rows(),
        cache.k(),
        cache.embedding_dim().unwrap_or(0),
        out.display()
    );
}

/// `teacher plan`: prints the plan, then refuses (exit code 1) a run that
/// will not fit.
fn plan(a: TeacherPlanArgs) -> Result<()> {
    let data = data_override(a.data.as_deref());
    let mut cfg = load_config(&a.config, data, reads::TRAIN_TEACHER)?;
    // not opened here: only the throughput measurement needs the device
    if let Some(d) = a.device.device {
        cfg.device = d;
    }
    if let Some(gb) = a.memory_gb {
        anyhow::ensure!(
            gb.is_finite() && gb > 0.0,
            "--memory-gb {gb} must be a positive number of gigabytes"
        );
    }
    if a.prompt_tokens == Some(0) {
        anyhow::bail!("--prompt-tokens must be positive");
    }
    let req = stages::TeacherPlanRequest {
        data: a.data,
        backbone: a.backbone,
        prompt_tokens: a.prompt_tokens,
        memory_gb: a.memory_gb,
        measure: !a.no_measure,
    };
    let p = stages::plan_teacher(&cfg, &req, cfg.device)?;
    print!("{}", p.plan.render(p.available, p.flops_per_sec));
    match p.available {
        Some(avail) => {
            p.plan.check(avail)?;
            println!("fits: yes");
        }
        None => println!("fits: unknown (pass --memory-gb with the GPU's memory)"),
    }
    Ok(())
}

fn infer(a: TeacherInferArgs) -> Result<()> {
    let t0 = Instant::now();
    let (cfg, device, job) = cache_job(a.checkpoint, a.job)?;
    let req = stages::TeacherInferRequest {
        job,
        backbone: a.backbone,
        student: a.student,
    };
    let (cache, rps) = stages::teacher_infer(&cfg, &req, &device)?;
    let rate = format!(", {rps:.1} rows/s");
    let secs = t0.elapsed().as_secs_f64();
    print_cache(&cache, "LLM item embeddings", rate, secs, &req.job.out);
    Ok(())
}

fn from_student(a: FromStudentArgs) -> Result<()> {
    let t0 = Instant::now();
    let mut checkpoints = a.checkpoint.into_iter();
    let first = checkpoints.next().expect("clap requires --checkpoint");
    let more: Vec<_> = checkpoints.collect();
    let (cfg, device, job) = cache_job(first, a.job)?;
    let cache = stages::teacher_from_student(&cfg, &job, &more, &device)?;
    let secs = t0.elapsed().as_secs_f64();
    print_cache(&cache, "item embeddings", String::new(), secs, &job.out);
    Ok(())
}

fn from_files(a: FromFilesArgs) -> Result<()> {
    let keys = match (a.keys, a.train_order) {
        (Some(k), _) => RowKeys::KeysFile(k),
        (None, true) => RowKeys::TrainOrder,
        (None, false) => RowKeys::InFile,
    };
    let spec = FromFiles {
        topk: a.topk,
        distances: a.distances,
        embeddings: a.embeddings,
        keys,
        ids: a.ids,
        k: a.k,
        distance_kind: a.distance_kind,
        sort: a.sort,
    };
    let cache = stages::teacher_from_files(&a.data, &spec, &a.out)?;
    println!(
        "teacher cache: {} rows, top-{}, embeddings {} -> {}",
        cache.rows(),
        cache.k(),
        cache
            .embedding_dim()
            .map_or("none".to_string(), |d| format!("{d}-d")),
        a.out.display()
    );
    Ok(())
}

fn merge(a: MergeArgs) -> Result<()> {
    let merged = stages::merge_shards(&a.data, &a.shards, &a.out)?;
    println!(
        "merged {} shards: {} rows -> {}",
        a.shards.len(),
        merged.rows(),
        a.out.display()
    );
    Ok(())
}
