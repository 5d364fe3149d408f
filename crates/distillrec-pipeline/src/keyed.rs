//! Stages keyed by content, shared by the pipeline and the active rounds:
//! a stage's key (its kind, its projected config and its inputs' keys), its
//! record in `stages/<name>.json` (or `marks/` in the shared layout) with
//! the SHA-256 of every file it wrote, and the rule that runs, skips or
//! re-runs it (see the `pipeline` module for the whole contract).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use distillrec_config::{Config, Reads};
use distillrec_data::fsutil::{atomic_write_json, sha256_of, sha256_of_file};
use distillrec_run::reset_peak_rss;

/// How one stage went in this invocation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageReport {
    /// Stage name (also its directory under `out`).
    pub name: String,
    /// Its key (`sha256:<hex>`).
    pub key: String,
    /// Finished earlier with the same key, so not run.
    pub skipped: bool,
    /// Wall seconds of this invocation (0 when skipped).
    pub wall_secs: f64,
    /// Wall seconds when it last ran (this invocation or an earlier one).
    pub ran_secs: f64,
}

/// `out/stages/<stage>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StageMark {
    key: String,
    /// `running` or `ok`.
    status: String,
    /// Wall seconds of the last finished run.
    #[serde(default)]
    wall_secs: f64,
    /// SHA-256 of every file in the stage's directory when it finished,
    /// by path relative to it (absent in marks of older versions).
    #[serde(default)]
    outputs: Option<BTreeMap<String, String>>,
}

/// Files of a stage directory that are not its output: the lock of a
/// running command and the temporary files of an unfinished atomic write.
fn is_bookkeeping(name: &str) -> bool {
    name == ".distillrec.lock" || (name.starts_with('.') && name.contains(".tmp"))
}

/// SHA-256 of every file under `dir` (recursively, bookkeeping files
/// aside), by path relative to `dir`; empty when `dir` does not exist.
fn output_digests(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("{}", d.display()))? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if !is_bookkeeping(&entry.file_name().to_string_lossy()) {
                let rel = path.strip_prefix(dir).unwrap_or(&path);
                out.insert(rel.to_string_lossy().into_owned(), sha256_of_file(&path)?);
            }
        }
    }
    Ok(out)
}

/// Why a finished stage's outputs cannot be trusted any more (the first
/// file that is missing or changed), or `None` when they are as recorded.
fn changed_output(dir: &Path, mark: &StageMark) -> Result<Option<String>> {
    let Some(recorded) = &mark.outputs else {
        return Ok(Some(
            "its record has no output digests (an older distillrec)".into(),
        ));
    };
    for (rel, digest) in recorded {
        let path = dir.join(rel);
        if !path.is_file() {
            return Ok(Some(format!("{} is missing", path.display())));
        }
        if sha256_of_file(&path)? != *digest {
            return Ok(Some(format!("{} changed", path.display())));
        }
    }
    Ok(None)
}

/// Where stage directories live.
#[derive(Clone, Debug)]
pub enum Layout {
    /// `out/<stage>` with the marks in `out/stages/<stage>.json`: one
    /// pipeline, a changed stage replaces its directory.
    Named,
    /// `root/<stage>-<key prefix>` with the marks in `root/marks/`: stages
    /// addressed by content, so pipelines that share a root (a sweep) share
    /// every stage whose key is the same.
    Shared(PathBuf),
}

/// The stages of one invocation, with their state on disk.
pub(crate) struct Stages<'a> {
    out: &'a Path,
    layout: Layout,
    done: Vec<StageReport>,
    /// A stage ran again because its outputs had changed: every stage
    /// after it runs again too.
    rerun_rest: bool,
}

impl<'a> Stages<'a> {
    /// The stages of one invocation in `out`, placed by `layout`.
    pub(crate) fn new(out: &'a Path, layout: Layout) -> Self {
        Stages {
            out,
            layout,
            done: Vec::new(),
            rerun_rest: false,
        }
    }

    /// The stages of one invocation in `out`'s named layout.
    pub(crate) fn named(out: &'a Path) -> Self {
        Stages::new(out, Layout::Named)
    }

    /// What ran or was skipped so far, in order.
    pub(crate) fn into_reports(self) -> Vec<StageReport> {
        self.done
    }

    /// The directory of stage `name` (of `kind`) under `key`: by name in
    /// the named layout, by kind and key in the shared one (so two stages of
    /// one kind with one key are one directory).
    fn dir(&self, name: &str, kind: &str, key: &str) -> PathBuf {
        match &self.layout {
            Layout::Named => self.out.join(name),
            Layout::Shared(root) => {
                let hex = key.strip_prefix("sha256:").unwrap_or(key);
                root.join(format!("{kind}-{}", &hex[..hex.len().min(12)]))
            }
        }
    }

    fn mark_path(&self, name: &str, kind: &str, key: &str) -> PathBuf {
        match &self.layout {
            Layout::Named => self.out.join("stages").join(format!("{name}.json")),
            Layout::Shared(root) => {
                let dir = self.dir(name, kind, key);
                let base = dir.file_name().unwrap_or_default().to_string_lossy();
                root.join("marks").join(format!("{base}.json"))
            }
        }
    }

    fn read_mark(&self, path: &Path) -> Result<Option<StageMark>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!(
                    "{}: not a stage record; remove it to re-run the stage",
                    path.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("{}: cannot read", path.display())),
        }
    }

    /// Runs stage `name` under `key` unless it finished under that key;
    /// `f` gets the stage's directory, which is returned.
    pub(crate) fn run(
        &mut self,
        name: &str,
        kind: &str,
        key: &str,
        f: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let dir = self.dir(name, kind, key);
        let mark_path = self.mark_path(name, kind, key);
        match self.read_mark(&mark_path)? {
            Some(m) if m.key == key && m.status == "ok" => {
                let why = if self.rerun_rest {
                    Some("a stage before it ran again".to_string())
                } else {
                    changed_output(&dir, &m)?
                };
                let Some(why) = why else {
                    tracing::info!(stage = name, "finished earlier with the same key: skipped");
                    self.done.push(StageReport {
                        name: name.into(),
                        key: key.into(),
                        skipped: true,
                        wall_secs: 0.0,
                        ran_secs: m.wall_secs,
                    });
                    return Ok(dir);
                };
                tracing::warn!(
                    "stage `{name}` finished earlier, but {why}: running it and every stage after it again"
                );
                self.rerun_rest = true;
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("{}: cannot remove", dir.display()))?;
                }
            }
            Some(m) if m.key == key => {
                tracing::info!(stage = name, "unfinished with the same key: continuing it");
            }
            Some(_) => {
                tracing::info!(
                    stage = name,
                    "its config or inputs changed: running it afresh"
                );
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("{}: cannot remove", dir.display()))?;
                }
            }
            None => {
                let empty = std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none());
                if !empty {
                    bail!(
                        "{}: exists but the pipeline has no record of it ({} is missing); move it away or use another --out",
                        dir.display(),
                        mark_path.display()
                    );
                }
            }
        }
        let mut mark = StageMark {
            key: key.into(),
            status: "running".into(),
            wall_secs: 0.0,
            outputs: None,
        };
        atomic_write_json(&mark_path, &mark)?;
        reset_peak_rss();
        let t = Instant::now();
        tracing::info!(stage = name, "pipeline stage started");
        f(&dir).with_context(|| format!("pipeline stage `{name}` failed"))?;
        let wall = t.elapsed().as_secs_f64();
        mark.status = "ok".into();
        mark.wall_secs = wall;
        mark.outputs = Some(output_digests(&dir)?);
        atomic_write_json(&mark_path, &mark)?;
        self.done.push(StageReport {
            name: name.into(),
            key: key.into(),
            skipped: false,
            wall_secs: wall,
            ran_secs: wall,
        });
        Ok(dir)
    }
}

/// The key of a stage: its kind, its projected config (device left out)
/// and the keys of its inputs.
pub(crate) fn stage_key(kind: &str, projected: &Config, inputs: &[&str]) -> String {
    let mut p = projected.clone();
    p.device = Config::default().device;
    let mut text = format!("{kind}\n{}\n", p.to_toml());
    for i in inputs {
        text.push_str(i);
        text.push('\n');
    }
    sha256_of(text.as_bytes())
}

/// `cfg` projected onto the groups a stage reads, trained with `seed`.
pub(crate) fn projected(cfg: &Config, reads: Reads, seed: u64) -> Config {
    let mut p = cfg.project_stage(reads);
    p.seed = seed;
    p.student_seed = None;
    p
}
