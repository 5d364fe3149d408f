//! Teacher caches: from a student checkpoint, from plain files, merged
//! shards.

use std::path::{Path, PathBuf};

use std::time::Instant;

use anyhow::Result;
use candle_core::Device;
use serde::{Deserialize, Serialize};

use distillrec_cache::{
    from_files, selection_meta_path, CacheSource, FromFiles, RowKeys, ShardSpec, TeacherCache,
};
use distillrec_config::Config;
use distillrec_data::fsutil::atomic_write_json;
use distillrec_data::outguard::{check_dir_output, DirOutput, OutputKind};
use distillrec_distill::teacher::{cache_from_students, FromStudent};
use distillrec_models::Student;
use distillrec_train::checkpoint::{self, Expect};

use crate::prepared::{absolute, load_prepared};
use crate::stages::select::selected_rows;

/// Rows per forward pass of the teacher student.
const BATCH: usize = 1024;

/// The file beside a teacher cache that records what building it cost (the
/// cache itself holds no timings, so equal caches stay equal bytes).
pub const CACHE_BUILD_FILE: &str = "build.json";

/// What building a teacher cache cost (`<cache>/build.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheBuild {
    /// Wall seconds from loading the teacher to the saved cache.
    pub wall_secs: f64,
    /// Rows inferred.
    pub rows: usize,
}

impl CacheBuild {
    /// Writes `<dir>/build.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        atomic_write_json(&dir.join(CACHE_BUILD_FILE), self)?;
        Ok(())
    }

    /// Reads `<dir>/build.json`, `None` when the cache has none (built by
    /// hand from files, merged, or by an older build) or it is unreadable.
    pub fn read(dir: &Path) -> Option<CacheBuild> {
        let text = distillrec_data::fsutil::read_text_limited(
            &dir.join(CACHE_BUILD_FILE),
            distillrec_data::fsutil::MAX_SMALL_FILE_BYTES,
        )
        .ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// A teacher-cache job (`teacher from-student`, `teacher infer`): which
/// checkpoint labels which training rows of which dataset, and where the
/// cache goes.
pub struct CacheJob {
    /// The teacher checkpoint (a student's, or an LLM teacher's).
    pub checkpoint: PathBuf,
    /// The prepared dataset (its fingerprint must match the checkpoint's).
    pub data: PathBuf,
    /// Output cache directory.
    pub out: PathBuf,
    /// Only the training rows of this selection file.
    pub selection: Option<PathBuf>,
    /// Only this shard of the (selected) rows.
    pub shard: Option<ShardSpec>,
    /// Candidates per row (default: `teacher.top_k`).
    pub k: Option<usize>,
}

impl CacheJob {
    /// Checks `out` before any work (see `distillrec_data::outguard`): not
    /// one of the job's inputs (checkpoint and manifest, dataset, selection
    /// and sidecar, plus `more`), and missing, empty or a cache `command`
    /// wrote from the same inputs, shard and `k`.
    pub fn check_out(&self, command: &str, more: &[&Path]) -> Result<DirOutput> {
        let manifest = self.checkpoint.with_extension("json");
        let sidecar = self.selection.as_deref().map(selection_meta_path);
        let mut inputs = vec![self.checkpoint.as_path(), &manifest, &self.data];
        inputs.extend(self.selection.as_deref());
        inputs.extend(sidecar.as_deref());
        inputs.extend_from_slice(more);
        let shard = self.shard.map(|s| s.to_string());
        let settings = serde_json::to_string(&(command, shard, self.k))?;
        Ok(check_dir_output(
            &self.out,
            &inputs,
            OutputKind::TeacherCache,
            &settings,
        )?)
    }
}

/// A teacher cache from a student checkpoint (top-K of its scores,
/// `d = −log p`, its item table, history masked per
/// `teacher.mask_history`), saved under `req.out`. With `more` checkpoints,
/// the teacher is the ensemble of `req.checkpoint` and them (mean
/// log-probabilities, item tables side by side; source `ensemble:<paths>`).
pub fn teacher_from_student(
    cfg: &Config,
    req: &CacheJob,
    more: &[PathBuf],
    device: &Device,
) -> Result<TeacherCache> {
    let more_refs: Vec<&Path> = more.iter().map(PathBuf::as_path).collect();
    let guard = req.check_out("teacher from-student", &more_refs)?;
    let t0 = Instant::now();
    let data = load_prepared(&req.data)?;
    let expect = Expect {
        fingerprint: Some(&data.reference.fingerprint),
        kind: None,
    };
    let paths: Vec<&Path> = std::iter::once(req.checkpoint.as_path())
        .chain(more_refs.iter().copied())
        .collect();
    let mut students = Vec::with_capacity(paths.len());
    for p in &paths {
        students.push(checkpoint::load(p, &expect, device)?.student);
    }
    let source = if more.is_empty() {
        CacheSource::Student(absolute(&req.checkpoint))
    } else {
        let all: Vec<String> = paths
            .iter()
            .map(|p| absolute(p).display().to_string())
            .collect();
        CacheSource::Other(format!("ensemble:{}", all.join(",")))
    };
    let mut rows = selected_rows(&data, req.selection.as_deref())?;
    if let Some(sh) = &req.shard {
        rows = rows[sh.range(rows.len())].to_vec();
    }
    let opts = FromStudent {
        k: req.k.unwrap_or(cfg.teacher.top_k),
        mask_history: cfg.teacher.mask_history,
        batch_size: BATCH,
        source,
        progress: true,
    };
    let refs: Vec<&Student> = students.iter().collect();
    let mut cache =
        cache_from_students(&refs, &data.ds, &data.reference.fingerprint, &rows, &opts)?;
    cache.manifest.shard = req.shard;
    guard.claim()?;
    cache.save(&req.out)?;
    CacheBuild {
        wall_secs: t0.elapsed().as_secs_f64(),
        rows: cache.rows(),
    }
    .write(&req.out)?;
    Ok(cache)
}

/// A teacher cache from plain files (`spec`) for the prepared dataset
/// `data`, saved under `out`.
pub fn teacher_from_files(data: &Path, spec: &FromFiles, out: &Path) -> Result<TeacherCache> {
    let mut inputs = vec![data, spec.topk.as_path()];
    inputs.extend(spec.distances.as_deref());
    inputs.extend(spec.embeddings.as_deref());
    if let RowKeys::KeysFile(k) = &spec.keys {
        inputs.push(k);
    }
    let settings = serde_json::to_string(&(
        "teacher from-files",
        spec.k,
        spec.ids,
        spec.distance_kind,
        spec.sort,
    ))?;
    let guard = check_dir_output(out, &inputs, OutputKind::TeacherCache, &settings)?;
    let data = load_prepared(data)?;
    let cache = from_files(spec, &data.reference.fingerprint, &data.ds)?;
    guard.claim()?;
    cache.save(out)?;
    Ok(cache)
}

/// Joins cache shards by row key (rows in the training order of `data`),
/// saved under `out`; an `out` that is (or lies inside) a shard or the
/// dataset is refused.
pub fn merge_shards(data: &Path, shards: &[PathBuf], out: &Path) -> Result<TeacherCache> {
    let mut inputs = vec![data];
    inputs.extend(shards.iter().map(PathBuf::as_path));
    let guard = check_dir_output(out, &inputs, OutputKind::TeacherCache, "teacher merge")?;
    let data = load_prepared(data)?;
    let shards = shards
        .iter()
        .map(|p| TeacherCache::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    let merged = TeacherCache::merge(shards, &data.reference.fingerprint, &data.ds)?;
    guard.claim()?;
    merged.save(out)?;
    Ok(merged)
}
