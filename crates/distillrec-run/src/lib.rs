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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use distillrec_config::{Config, DeviceSpec};
use distillrec_data::fsutil::{atomic_write, atomic_write_json};
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

/// The contents of `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The full command line.
    pub command: Vec<String>,
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

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
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

/// An open run directory.
pub struct Run {
    dir: PathBuf,
    record: RunRecord,
    start: Instant,
    history: Option<History>,
}

impl Run {
    /// Creates (or reuses) `dir`, writes `config.toml` and a first `run.json`.
    pub fn create(
        dir: &Path,
        config: Option<&Config>,
        seed: u64,
        build: BuildInfo,
    ) -> Result<Self, DataError> {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        if let Some(c) = config {
            atomic_write(&dir.join("config.toml"), c.to_toml().as_bytes())?;
        }
        let record = RunRecord {
            command: std::env::args().collect(),
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
        let run = Run {
            dir: dir.to_path_buf(),
            record,
            start: Instant::now(),
            history: None,
        };
        run.write_record()?;
        Ok(run)
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
        self.record.stages.push(StageRecord {
            name: name.to_string(),
            wall_secs: wall,
            peak_rss_mb: peak_rss_mb(),
        });
        self.record.wall_secs = self.start.elapsed().as_secs_f64();
        self.record.peak_rss_mb = peak_rss_mb();
        self.write_record()?;
        out
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

    /// Marks the run finished (`ok` or the error) and writes `run.json`.
    pub fn finish(mut self, result: Result<(), String>) -> Result<RunRecord, DataError> {
        self.record.finished = Some(now_rfc3339());
        self.record.wall_secs = self.start.elapsed().as_secs_f64();
        self.record.peak_rss_mb = peak_rss_mb();
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

/// Sets up logging: human-readable to stderr (level from `RUST_LOG`,
/// default `info`) and, when `log_file` is given, the same events to it.
pub fn init_logging(log_file: Option<&Path>) -> Result<(), DataError> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(filter());
    let file_layer = match log_file {
        Some(p) => {
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(|e| DataError::io(d, e))?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| DataError::io(p, e))?;
            Some(
                fmt::layer()
                    .with_writer(std::sync::Mutex::new(f))
                    .with_ansi(false)
                    .with_filter(filter()),
            )
        }
        None => None,
    };
    // A second initialisation (tests) is harmless: keep the first.
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file_layer)
        .try_init();
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

    #[test]
    fn peak_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_mb().unwrap() > 0.0);
        }
    }
}
