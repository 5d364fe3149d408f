//! Run directories (SPEC 9). Every command that trains or evaluates writes:
//!
//! ```text
//! <run>/config.toml    fully resolved configuration
//! <run>/run.json       command line, build (git commit + dirty flag),
//!                      versions, host, seed, start/end, per-stage wall
//!                      time and peak memory, status
//! <run>/metrics.json   {"valid": {...}, "test": {...}} with keys like ndcg@10
//! <run>/history.csv    one row per epoch
//! <run>/run.log        the tracing log
//! ```
//!
//! All files except the log are written atomically; `run.json` is rewritten
//! after every stage so that a killed run still records what it finished.
//!
//! A run directory belongs to one process and one config:
//! - [`Run::create`] takes an exclusive lock on the directory
//!   ([`distillrec_data::lock::DirLock`]); a second process gets a one-line
//!   error naming the holder's pid.
//! - A directory that holds results (checkpoints, metrics, ...) of another
//!   config is refused before anything is written, naming the keys that differ.
//! - A refused or failed command that produced nothing (no file besides
//!   `config.toml`, `run.json` and `run.log` changed) leaves the directory as
//!   it found it: those three files are restored (or removed if new).
//! - A `run.json` still saying `running` whose process is gone (its lock is
//!   free) is marked `interrupted` by the next command that opens the run.

pub mod heap;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use distillrec_config::{Config, DeviceSpec};
use distillrec_data::fsutil::{atomic_write, atomic_write_json};
use distillrec_data::lock::{DirLock, LOCK_FILE};
use distillrec_data::DataError;

/// Metrics of one split: `"ndcg@10" -> 0.31`, plus cost entries.
pub type SplitMetrics = BTreeMap<String, f64>;

/// The contents of `metrics.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Validation metrics (model selection).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub valid: SplitMetrics,
    /// Test metrics (reported once, at the end).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub test: SplitMetrics,
}

/// What the binary knows about how it was built.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildInfo {
    /// Program version.
    pub version: String,
    /// Git commit of the source tree, if built from a checkout.
    pub git_commit: Option<String>,
    /// Whether the tree had uncommitted changes at build time.
    pub git_dirty: Option<bool>,
    /// `rustc --version` used for the build.
    pub rustc: Option<String>,
    /// Cargo profile (`release` or `debug`).
    pub profile: String,
}

/// Wall time and memory of one stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Stage name (`prepare`, `train`, `eval`, ...).
    pub name: String,
    /// Wall-clock seconds.
    pub wall_secs: f64,
    /// Peak resident memory of the process at the end of the stage.
    pub peak_rss_mb: Option<f64>,
}

/// What a run directory holds, so the report groups runs by what they are
/// rather than by their labels or command lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// The most-popular-items baseline.
    Popularity,
    /// A student trained on its own labels.
    Student,
    /// The LLM teacher (iLoRA / LLaRA).
    Teacher,
    /// A student distilled from a teacher cache.
    Distilled,
    /// An evaluation of an existing checkpoint (its wall time is the
    /// evaluation's, not the model's cost).
    Evaluation,
}

/// The contents of `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The full command line.
    pub command: Vec<String>,
    /// What the run is (absent in records written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<RunKind>,
    /// Build information.
    pub build: BuildInfo,
    /// Run seed.
    pub seed: u64,
    /// The device the run's models ran on (absent for runs without a model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceSpec>,
    /// Host name.
    pub host: String,
    /// Operating system and architecture.
    pub platform: String,
    /// Logical CPUs available.
    pub cpus: usize,
    /// Start time (RFC 3339, UTC).
    pub started: String,
    /// End time, once finished.
    pub finished: Option<String>,
    /// `running`, `ok` or `failed: <message>`.
    pub status: String,
    /// Per-stage timings.
    pub stages: Vec<StageRecord>,
    /// Total wall seconds so far.
    pub wall_secs: f64,
    /// Peak resident memory of the whole run.
    pub peak_rss_mb: Option<f64>,
    /// Costs of evaluations and other measured steps (wall time, rows/s),
    /// kept out of `metrics.json` so that file is identical across reruns.
    #[serde(default)]
    pub costs: BTreeMap<String, serde_json::Value>,
}

/// Resets this process's peak resident set size (Linux: `5` into
/// `/proc/self/clear_refs`), so a stage run after another in one process
/// reports its own peak. Elsewhere, or when refused, the peak stays the
/// process's (an over-estimate, never an under-estimate).
pub fn reset_peak_rss() {
    heap::reset_peak_heap();
    if let Some(release) = RELEASE_FREED_MEMORY.get() {
        release();
    }
    #[cfg(target_os = "linux")]
    let _ = std::fs::write("/proc/self/clear_refs", b"5");
}

/// How the program hands freed memory back to the OS (the binary's
/// allocator keeps it otherwise, for speed); called by [`reset_peak_rss`]
/// so a stage's peak is not the memory an earlier stage freed.
static RELEASE_FREED_MEMORY: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Registers the allocator's "return freed memory now" (once per process).
pub fn set_release_freed_memory(f: fn()) {
    let _ = RELEASE_FREED_MEMORY.set(f);
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resident memory (VmRSS) of this process now, in MB: with
/// [`peak_rss_mb`], what a stage added on top of what was already there.
pub fn rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The larger of two optional peaks.
fn max_mb(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// The files a [`Run`] itself writes when it opens; everything else in the
/// directory is a result of the command's work.
const RUN_FILES: [&str; 4] = ["config.toml", "run.json", "run.log", LOCK_FILE];

/// What a run directory held when a command opened it, to put back if the
/// command is refused before producing anything.
#[derive(Debug)]
struct Snapshot {
    /// The directory did not exist.
    created_dir: bool,
    /// `config.toml`, `run.json` and `run.log` as they were (`None`: absent).
    files: Vec<(&'static str, Option<Vec<u8>>)>,
    /// Name, size and modification time of every other entry.
    results: Vec<(String, u64, Option<SystemTime>)>,
}

/// Name, size and modification time of the entries of `dir` that are not
/// the run's own files or temporary files, sorted.
fn result_entries(dir: &Path) -> Vec<(String, u64, Option<SystemTime>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if RUN_FILES.contains(&name.as_str()) || name.starts_with('.') {
                return None;
            }
            let m = e.metadata().ok()?;
            Some((name, m.len(), m.modified().ok()))
        })
        .collect();
    v.sort();
    v
}

/// Dotted keys whose values differ between two TOML documents.
fn differing_keys(old: &toml::Value, new: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    match (old, new) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => differing_keys(x, y, &p, out),
                    _ => out.push(p),
                }
            }
        }
        (a, b) if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

/// An open run directory.
pub struct Run {
    dir: PathBuf,
    record: RunRecord,
    start: Instant,
    /// Wall seconds and peak memory of the run's earlier invocations (a
    /// resumed or re-invoked run adds to them).
    prior_wall_secs: f64,
    prior_peak_rss_mb: Option<f64>,
    history: Option<History>,
    snapshot: Snapshot,
    _lock: DirLock,
}

impl Run {
    /// Opens `dir` for a command (created if needed): locks it, refuses a
    /// directory whose results belong to another config (naming the keys
    /// that differ), marks a dead run's `run.json` `interrupted`, then
    /// writes `config.toml` and a first `run.json`.
    pub fn create(
        dir: &Path,
        config: Option<&Config>,
        seed: u64,
        build: BuildInfo,
    ) -> Result<Self, DataError> {
        let created_dir = !dir.exists();
        let lock = DirLock::acquire(dir)?;
        let read = |name: &str| std::fs::read(dir.join(name)).ok();
        let mut old_record = read("run.json");
        if let Some(bytes) = &old_record {
            if let Ok(mut rec) = serde_json::from_slice::<RunRecord>(bytes) {
                if rec.status == "running" {
                    // We hold the lock, so the process that wrote it is gone.
                    rec.status = "interrupted".into();
                    atomic_write_json(&dir.join("run.json"), &rec)?;
                    old_record = read("run.json");
                }
            }
        }
        let results = result_entries(dir);
        let old_config = read("config.toml");
        if let (Some(c), Some(old)) = (config, &old_config) {
            let new_text = c.to_toml();
            if !results.is_empty() && old.as_slice() != new_text.as_bytes() {
                let parse = |b: &[u8]| {
                    std::str::from_utf8(b)
                        .ok()
                        .and_then(|t| t.parse::<toml::Value>().ok())
                };
                let mut keys = Vec::new();
                match (parse(old), parse(new_text.as_bytes())) {
                    (Some(a), Some(b)) => differing_keys(&a, &b, "", &mut keys),
                    _ => keys.push("(config.toml unreadable)".into()),
                }
                if !keys.is_empty() {
                    return Err(DataError::file(
                        dir,
                        format!(
                            "holds the results of a run with a different config ({}: {}); use another --out",
                            if keys.len() == 1 { "key differs" } else { "keys differ" },
                            keys.join(", ")
                        ),
                    ));
                }
            }
        }
        let snapshot = Snapshot {
            created_dir,
            files: vec![
                ("config.toml", old_config),
                ("run.json", old_record),
                ("run.log", read("run.log")),
            ],
            results,
        };
        // A directory holding this config's results is a continuation
        // (resume, or a finished run invoked again): its record goes on
        // adding up the run's cost instead of starting over.
        let prior: Option<RunRecord> = if snapshot.results.is_empty() {
            None
        } else {
            snapshot
                .files
                .iter()
                .find(|(name, _)| *name == "run.json")
                .and_then(|(_, bytes)| serde_json::from_slice(bytes.as_deref()?).ok())
        };
        if let Some(c) = config {
            atomic_write(&dir.join("config.toml"), c.to_toml().as_bytes())?;
        }
        let mut record = RunRecord {
            command: std::env::args().collect(),
            kind: None,
            build,
            seed,
            device: None,
            host: host_name(),
            platform: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            started: now_rfc3339(),
            finished: None,
            status: "running".into(),
            stages: Vec::new(),
            wall_secs: 0.0,
            peak_rss_mb: peak_rss_mb(),
            costs: BTreeMap::new(),
        };
        let (mut prior_wall_secs, mut prior_peak_rss_mb) = (0.0, None);
        if let Some(p) = prior {
            record.started = p.started;
            record.stages = p.stages;
            record.costs = p.costs;
            record.wall_secs = p.wall_secs;
            prior_wall_secs = p.wall_secs;
            prior_peak_rss_mb = p.peak_rss_mb;
            record.peak_rss_mb = max_mb(p.peak_rss_mb, record.peak_rss_mb);
        }
        let run = Run {
            dir: dir.to_path_buf(),
            record,
            start: Instant::now(),
            prior_wall_secs,
            prior_peak_rss_mb,
            history: None,
            snapshot,
            _lock: lock,
        };
        run.write_record()?;
        Ok(run)
    }

    /// Whether the command produced anything in the directory besides the
    /// run's own files since [`Run::create`].
    fn produced_results(&self) -> bool {
        result_entries(&self.dir) != self.snapshot.results
    }

    /// Puts `config.toml`, `run.json` and `run.log` back as they were (a
    /// directory this run created is removed again, with its lock file).
    fn restore(&self) -> Result<(), DataError> {
        for (name, bytes) in &self.snapshot.files {
            let p = self.dir.join(name);
            match bytes {
                Some(b) => atomic_write(&p, b)?,
                None => match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(DataError::io(&p, e)),
                },
            }
        }
        if self.snapshot.created_dir {
            let _ = std::fs::remove_file(self.dir.join(LOCK_FILE));
            let _ = std::fs::remove_dir(&self.dir);
        }
        Ok(())
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The record as it stands.
    pub fn record(&self) -> &RunRecord {
        &self.record
    }

    fn write_record(&self) -> Result<(), DataError> {
        atomic_write_json(&self.dir.join("run.json"), &self.record)
    }

    /// Runs `f` as the stage `name`, recording its wall time and memory.
    pub fn stage<T, E: From<DataError>>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        tracing::info!(stage = name, "stage started");
        let t = Instant::now();
        let out = f();
        let wall = t.elapsed().as_secs_f64();
        tracing::info!(stage = name, wall_secs = wall, "stage finished");
        let peak = peak_rss_mb();
        match self.record.stages.iter_mut().find(|s| s.name == name) {
            // the same stage in an earlier invocation: its cost adds up
            Some(s) => {
                s.wall_secs += wall;
                s.peak_rss_mb = max_mb(s.peak_rss_mb, peak);
            }
            None => self.record.stages.push(StageRecord {
                name: name.to_string(),
                wall_secs: wall,
                peak_rss_mb: peak,
            }),
        }
        self.update_totals();
        self.write_record()?;
        out
    }

    /// Wall time and peak memory of the whole run, earlier invocations
    /// included.
    fn update_totals(&mut self) {
        self.record.wall_secs = self.prior_wall_secs + self.start.elapsed().as_secs_f64();
        self.record.peak_rss_mb = max_mb(self.prior_peak_rss_mb, peak_rss_mb());
    }

    /// Records what the run is and rewrites `run.json`.
    pub fn set_kind(&mut self, kind: RunKind) -> Result<(), DataError> {
        self.record.kind = Some(kind);
        self.write_record()
    }

    /// Records the device the run's models run on and rewrites `run.json`.
    pub fn set_device(&mut self, device: DeviceSpec) -> Result<(), DataError> {
        self.record.device = Some(device);
        self.write_record()
    }

    /// Records the cost of a measured step under `name` and rewrites `run.json`.
    pub fn record_cost(&mut self, name: &str, cost: impl Serialize) -> Result<(), DataError> {
        let v = serde_json::to_value(cost)
            .map_err(|e| DataError::Invalid(format!("cost '{name}': {e}")))?;
        self.record.costs.insert(name.to_string(), v);
        self.write_record()
    }

    /// Writes `metrics.json`.
    pub fn write_metrics(&self, m: &Metrics) -> Result<(), DataError> {
        atomic_write_json(&self.dir.join("metrics.json"), m)
    }

    /// Appends one epoch row to `history.csv` (rewritten atomically).
    pub fn log_epoch(&mut self, row: &[(&str, f64)]) -> Result<(), DataError> {
        let h = self
            .history
            .get_or_insert_with(|| History::new(row.iter().map(|(k, _)| k.to_string()).collect()));
        h.push(row)?;
        atomic_write(&self.dir.join("history.csv"), h.to_csv().as_bytes())
    }

    /// Marks the run finished (`ok` or the error) and writes `run.json`. A
    /// command that failed without producing anything (a refusal) leaves the
    /// directory as it was before [`Run::create`] instead.
    pub fn finish(mut self, result: Result<(), String>) -> Result<RunRecord, DataError> {
        if let Err(e) = &result {
            if !self.produced_results() {
                self.restore()?;
                let mut rec = self.record.clone();
                rec.status = format!("refused: {e}");
                return Ok(rec);
            }
        }
        self.record.finished = Some(now_rfc3339());
        self.update_totals();
        self.record.status = match result {
            Ok(()) => "ok".into(),
            Err(e) => format!("failed: {e}"),
        };
        self.write_record()?;
        Ok(self.record)
    }
}

/// Per-epoch history with a fixed set of columns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    columns: Vec<String>,
    rows: Vec<Vec<f64>>,
}

impl History {
    /// A history with these columns.
    pub fn new(columns: Vec<String>) -> Self {
        History {
            columns,
            rows: Vec::new(),
        }
    }

    /// Adds a row; its keys must be the columns, in order.
    pub fn push(&mut self, row: &[(&str, f64)]) -> Result<(), DataError> {
        if row.len() != self.columns.len()
            || row.iter().zip(&self.columns).any(|((k, _), c)| k != c)
        {
            return Err(DataError::Invalid(format!(
                "history row keys {:?} differ from columns {:?}",
                row.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
                self.columns
            )));
        }
        self.rows.push(row.iter().map(|(_, v)| *v).collect());
        Ok(())
    }

    /// CSV text with a header.
    pub fn to_csv(&self) -> String {
        let mut s = self.columns.join(",");
        s.push('\n');
        for r in &self.rows {
            let cells: Vec<String> = r.iter().map(|v| format!("{v}")).collect();
            s.push_str(&cells.join(","));
            s.push('\n');
        }
        s
    }
}

/// The log files that receive every event (a pipeline's `pipeline.log`
/// and the run directory of the stage running now).
static LOG_FILES: std::sync::Mutex<Vec<(PathBuf, std::fs::File)>> =
    std::sync::Mutex::new(Vec::new());

/// The log layer's writer: each event to every open log file.
struct LogFiles;

impl std::io::Write for LogFiles {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut files = LOG_FILES.lock().unwrap_or_else(|e| e.into_inner());
        for (_, f) in files.iter_mut() {
            // a full disk must not stop the run: the log is best effort
            let _ = f.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A log file that receives every event until dropped (see [`open_log_file`]).
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let mut files = LOG_FILES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = files.iter().rposition(|(p, _)| *p == self.path) {
            files.remove(i);
        }
    }
}

/// Appends every event to `path` (no colour codes) until the returned
/// guard is dropped, besides the log files already open: a pipeline stage's
/// `run.log` gets its stage while `pipeline.log` gets everything.
pub fn open_log_file(path: &Path) -> Result<LogFile, DataError> {
    init_logging(None)?;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| DataError::io(d, e))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| DataError::io(path, e))?;
    LOG_FILES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((path.to_path_buf(), f));
    Ok(LogFile {
        path: path.to_path_buf(),
    })
}

/// Sets up logging once per process: human-readable to stderr (level from
/// `RUST_LOG`, default `info`) and to the open log files; with `log_file`,
/// that file stays open for the rest of the process.
pub fn init_logging(log_file: Option<&Path>) -> Result<(), DataError> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, EnvFilter};
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let filter =
            || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        // colours only for a terminal: redirected logs (nohup, a batch
        // scheduler, a container's log) stay plain text
        let stderr = fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .with_filter(filter());
        let files = fmt::layer()
            .with_writer(|| LogFiles)
            .with_ansi(false)
            .with_filter(filter());
        // Another subscriber already installed (tests) is kept.
        let _ = tracing_subscriber::registry()
            .with(stderr)
            .with(files)
            .try_init();
    });
    if let Some(p) = log_file {
        std::mem::forget(open_log_file(p)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_directory_files() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config::default();
        let mut run = Run::create(d.path(), Some(&cfg), 7, BuildInfo::default()).unwrap();
        let x: Result<u32, DataError> = run.stage("work", || Ok(3));
        assert_eq!(x.unwrap(), 3);
        run.log_epoch(&[("epoch", 1.0), ("loss", 0.5)]).unwrap();
        run.log_epoch(&[("epoch", 2.0), ("loss", 0.25)]).unwrap();
        assert!(run.log_epoch(&[("epoch", 3.0)]).is_err());
        let mut m = Metrics::default();
        m.test.insert("ndcg@10".into(), 0.5);
        run.write_metrics(&m).unwrap();
        let rec = run.finish(Ok(())).unwrap();
        assert_eq!(rec.status, "ok");
        assert_eq!(
            std::fs::read_to_string(d.path().join("history.csv")).unwrap(),
            "epoch,loss\n1,0.5\n2,0.25\n"
        );
        let back: RunRecord =
            serde_json::from_str(&std::fs::read_to_string(d.path().join("run.json")).unwrap())
                .unwrap();
        assert_eq!(back.seed, 7);
        assert_eq!(back.stages[0].name, "work");
        assert!(back.finished.is_some());
        let mj: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.path().join("metrics.json")).unwrap())
                .unwrap();
        assert_eq!(mj["test"]["ndcg@10"], 0.5);
        let c = Config::load(Some(&d.path().join("config.toml")), &[]).unwrap();
        assert_eq!(c, cfg);
    }

    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                (n, std::fs::read(e.path()).unwrap())
            })
            .collect();
        v.sort();
        v
    }

    fn finished_run(dir: &Path, cfg: &Config) {
        let run = Run::create(dir, Some(cfg), 1, BuildInfo::default()).unwrap();
        run.write_metrics(&Metrics::default()).unwrap();
        run.finish(Ok(())).unwrap();
    }

    /// A resumed or re-invoked run keeps its start, adds this invocation's
    /// time to the same stages and the total, and keeps the larger peak,
    /// so the report's cost of a resumed run is the whole run's.
    #[test]
    fn a_continued_run_adds_to_its_recorded_cost() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config::default();
        let nap = || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            Ok::<(), DataError>(())
        };
        let mut run = Run::create(d.path(), Some(&cfg), 1, BuildInfo::default()).unwrap();
        run.stage("train", nap).unwrap();
        run.record_cost("train.epochs", 3).unwrap();
        run.write_metrics(&Metrics::default()).unwrap();
        let first = run.finish(Ok(())).unwrap();
        let mut run = Run::create(d.path(), Some(&cfg), 1, BuildInfo::default()).unwrap();
        run.stage("train", nap).unwrap();
        run.stage("eval", || Ok::<(), DataError>(())).unwrap();
        let second = run.finish(Ok(())).unwrap();
        assert_eq!(second.started, first.started);
        assert!(second.wall_secs >= first.wall_secs + 0.03, "{second:?}");
        let names: Vec<&str> = second.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["train", "eval"]);
        assert!(second.stages[0].wall_secs >= first.stages[0].wall_secs + 0.03);
        assert!(second.peak_rss_mb >= first.peak_rss_mb);
        assert_eq!(second.costs["train.epochs"], 3);
        // a directory without results starts a new record
        let e = tempfile::tempdir().unwrap();
        std::fs::write(
            e.path().join("run.json"),
            serde_json::to_vec(&first).unwrap(),
        )
        .unwrap();
        let run = Run::create(e.path(), Some(&cfg), 1, BuildInfo::default()).unwrap();
        let fresh = run.finish(Ok(())).unwrap();
        assert!(fresh.stages.is_empty() && fresh.wall_secs < first.wall_secs);
    }

    #[test]
    fn a_refused_rerun_changes_nothing_and_names_the_keys() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config::default();
        finished_run(d.path(), &cfg);
        let before = files(d.path());
        let mut other = cfg.clone();
        other.seed += 1;
        other.student.hidden *= 2;
        let e = Run::create(d.path(), Some(&other), 1, BuildInfo::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("different config") && e.contains("keys differ: seed, student.hidden"),
            "{e}"
        );
        assert_eq!(files(d.path()), before);
        // the same config re-opens the run (resume)
        let run = Run::create(d.path(), Some(&cfg), 1, BuildInfo::default()).unwrap();
        run.finish(Ok(())).unwrap();
    }

    #[test]
    fn a_failure_that_produced_nothing_restores_the_directory() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config::default();
        finished_run(d.path(), &cfg);
        let before = files(d.path());
        let run = Run::create(d.path(), Some(&cfg), 1, BuildInfo::default()).unwrap();
        let rec = run.finish(Err("no such cache".into())).unwrap();
        assert!(rec.status.starts_with("refused"), "{}", rec.status);
        assert_eq!(files(d.path()), before);
        // a failure after producing results is recorded
        let run = Run::create(d.path(), Some(&cfg), 1, BuildInfo::default()).unwrap();
        std::fs::write(d.path().join("history.csv"), "epoch\n1\n").unwrap();
        let rec = run.finish(Err("diverged".into())).unwrap();
        assert_eq!(rec.status, "failed: diverged");
        // a new directory is removed again
        let fresh = d.path().join("new");
        let run = Run::create(&fresh, Some(&cfg), 1, BuildInfo::default()).unwrap();
        run.finish(Err("bad input".into())).unwrap();
        assert!(!fresh.exists());
    }

    #[test]
    fn one_process_per_run_and_dead_runs_are_interrupted() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config::default();
        let first = Run::create(d.path(), Some(&cfg), 1, BuildInfo::default()).unwrap();
        let e = Run::create(d.path(), Some(&cfg), 1, BuildInfo::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(&format!("in use by process {}", std::process::id())),
            "{e}"
        );
        first.write_metrics(&Metrics::default()).unwrap();
        drop(first); // killed: run.json still says running, the lock is gone
        let rec: RunRecord =
            serde_json::from_slice(&std::fs::read(d.path().join("run.json")).unwrap()).unwrap();
        assert_eq!(rec.status, "running");
        let second = Run::create(d.path(), Some(&cfg), 1, BuildInfo::default()).unwrap();
        // refused after opening: the snapshot keeps the corrected status
        second.finish(Err("refused".into())).unwrap();
        let rec: RunRecord =
            serde_json::from_slice(&std::fs::read(d.path().join("run.json")).unwrap()).unwrap();
        assert_eq!(rec.status, "interrupted");
    }

    #[test]
    fn peak_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_mb().unwrap() > 0.0);
        }
    }
}
