//! `teacher from-student | from-files | merge`.

use std::time::Instant;

use anyhow::Result;

use distillrec_cache::{FromFiles, RowKeys};
use distillrec_pipeline::stages::{self, CacheJob};
use distillrec_run::init_logging;

use crate::args::{FromFilesArgs, FromStudentArgs, MergeArgs, TeacherCommand, TeacherInferArgs};
use crate::common::{config_device, load_config, READS_TEACHER};

/// Runs a `teacher` subcommand.
pub fn run(c: TeacherCommand) -> Result<()> {
    init_logging(None)?;
    match c {
        TeacherCommand::FromStudent(a) => from_student(a),
        TeacherCommand::FromFiles(a) => from_files(a),
        TeacherCommand::Merge(a) => merge(a),
        TeacherCommand::Infer(a) => infer(a),
    }
}

fn infer(a: TeacherInferArgs) -> Result<()> {
    let j = a.job;
    let mut cfg = load_config(&j.config, vec![], READS_TEACHER)?;
    let device = config_device(&mut cfg, &j.device)?;
    let t0 = Instant::now();
    let req = stages::TeacherInferRequest {
        job: CacheJob {
            checkpoint: a.checkpoint,
            data: j.data,
            out: j.out,
            selection: j.selection,
            shard: j.shard,
            k: j.k,
        },
        backbone: a.backbone,
        student: a.student,
    };
    let (cache, rps) = stages::teacher_infer(&cfg, &req, &device)?;
    println!(
        "teacher cache: {} rows, top-{}, {}-d LLM item embeddings, {:.1} rows/s, {:.1}s -> {}",
        cache.rows(),
        cache.k(),
        cache.embedding_dim().unwrap_or(0),
        rps,
        t0.elapsed().as_secs_f64(),
        req.job.out.display()
    );
    Ok(())
}

fn from_student(a: FromStudentArgs) -> Result<()> {
    let j = a.job;
    let mut cfg = load_config(&j.config, vec![], READS_TEACHER)?;
    let device = config_device(&mut cfg, &j.device)?;
    let t0 = Instant::now();
    let req = CacheJob {
        checkpoint: a.checkpoint,
        data: j.data,
        out: j.out,
        selection: j.selection,
        shard: j.shard,
        k: j.k,
    };
    let cache = stages::teacher_from_student(&cfg, &req, &device)?;
    println!(
        "teacher cache: {} rows, top-{}, {}-d item embeddings, {:.1}s -> {}",
        cache.rows(),
        cache.k(),
        cache.embedding_dim().unwrap_or(0),
        t0.elapsed().as_secs_f64(),
        req.out.display()
    );
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
