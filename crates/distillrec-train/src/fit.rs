//! The one training loop of distillrec: students and distillation
//! (`trainer`) and the LLM teacher (`distillrec_teacher::train`)
//! plug into [`fit`] through [`Trainee`].
//!
//! The loop owns the epochs, early stopping (patience on a score, higher is
//! better), the `best` checkpoint, `history.csv`, the progress bar or log
//! lines, `halt_after_epoch`, and the epoch commit with its exact resume:
//! after every epoch the trainee writes `checkpoints/last-e<epoch>` (weights
//! and optimiser state), then the loop writes `checkpoints/state.json`
//! ([`FitState`]) naming it, which commits the epoch ([`crate::commit`]).
//! A run restarted with the same command resumes after the last committed
//! epoch; a state of another run (another key) is refused in one line. The
//! trainee owns the arithmetic: batches, the loss, the optimiser, the
//! validation metrics, the checkpoint formats and the history layout.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use distillrec_data::fsutil::{atomic_write, atomic_write_json};

use crate::commit::{self, LastRef};

/// Optimiser steps between two progress log lines when stderr is not a
/// terminal (PyTorch Lightning's `log_every_n_steps` default).
pub const LOG_EVERY: u64 = 50;

/// What one finished epoch measured, for its history row.
pub struct EpochRecord<'a> {
    /// The epoch (1-based).
    pub epoch: usize,
    /// Mean training loss of the epoch.
    pub train_loss: f64,
    /// Validation metrics.
    pub metrics: &'a BTreeMap<String, f64>,
    /// Wall seconds of training (validation excluded).
    pub epoch_secs: f64,
    /// Wall seconds of validation.
    pub eval_secs: f64,
}

/// A model being trained by [`fit`]: students, distillation and the teacher.
pub trait Trainee {
    /// One row of `history.csv` as [`FitState`] keeps it (each trainee
    /// keeps its own layout).
    type Row: Clone + Serialize + DeserializeOwned;
    /// The config group of the stage, for messages (`train.student`).
    fn stage_name(&self) -> &str;
    /// Trains epoch `epoch` (1-based), reporting to `progress`; returns
    /// the mean training loss.
    fn train_epoch(&mut self, epoch: usize, progress: &mut Progress) -> Result<f64>;
    /// Optimiser steps taken so far.
    fn steps(&self) -> u64;
    /// Validates the current weights: the early-stopping score (higher is
    /// better) and the metrics.
    fn validate(&mut self) -> Result<(f64, BTreeMap<String, f64>)>;
    /// The history row of a finished epoch.
    fn history_row(&self, record: &EpochRecord) -> Self::Row;
    /// `history.csv` of `rows`.
    fn history_csv(&self, rows: &[Self::Row]) -> Result<String>;
    /// Saves the weights just validated as the `best` checkpoint of the
    /// epoch `record`.
    fn save_best(&mut self, record: &EpochRecord) -> Result<()>;
    /// Saves the weights and the optimiser state after the epoch `record`
    /// as `<dir>/<stem>`; returns the SHA-256 of the weights as the
    /// manifest records it.
    fn save_last(&mut self, dir: &Path, stem: &str, record: &EpochRecord) -> Result<String>;
    /// Loads the weights and the optimiser state (at `step`) of the `last`
    /// checkpoint `path`; returns its manifest's epoch and weights SHA-256.
    fn load_last(&mut self, path: &Path, step: u64) -> Result<(usize, String)>;
}

/// Loop settings.
pub struct FitOptions<'a> {
    /// Run directory: `history.csv` here, `checkpoints/` below.
    pub out_dir: &'a Path,
    /// What the run's weights depend on; a state with another key is refused.
    pub run_key: String,
    /// Epochs at most.
    pub max_epochs: usize,
    /// Epochs without improvement before stopping (at least 1).
    pub patience: usize,
    /// Show a progress bar (log lines when stderr is not a terminal).
    pub progress: bool,
    /// Stop with an error right after this epoch's commit, exactly where a
    /// killed run would stop (tests of resume; time-boxed runs).
    pub halt_after_epoch: Option<usize>,
    /// Where runs from before the loop was shared kept their state, read
    /// when `checkpoints/state.json` is absent (the teacher's run root).
    pub legacy_state: Option<PathBuf>,
}

/// The loop state, saved as `checkpoints/state.json` after every epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitState<R> {
    /// What this state belongs to (`key` in old teacher states).
    #[serde(alias = "key")]
    pub run_key: String,
    /// Epochs finished.
    pub epoch: usize,
    /// Optimiser steps taken.
    pub step: u64,
    /// Best score so far (`best` in old teacher states).
    #[serde(alias = "best")]
    pub best_metric: Option<f64>,
    /// Epoch of the best score (0: none yet).
    pub best_epoch: usize,
    /// Epochs since the best one.
    pub bad_epochs: usize,
    /// Early stopping or `max_epochs` ended the run.
    #[serde(default)]
    pub finished: bool,
    /// One row per finished epoch.
    pub history: Vec<R>,
    /// The `last` checkpoint of `epoch` (absent in states written before
    /// the epoch commit named it: `last.safetensors` then).
    #[serde(default)]
    pub last: Option<LastRef>,
}

impl<R> FitState<R> {
    fn fresh(run_key: String) -> Self {
        FitState {
            run_key,
            epoch: 0,
            step: 0,
            best_metric: None,
            best_epoch: 0,
            bad_epochs: 0,
            finished: false,
            history: Vec::new(),
            last: None,
        }
    }
}

/// How a [`fit`] went.
pub struct FitReport<R> {
    /// The final loop state.
    pub state: FitState<R>,
    /// The epoch this process resumed after, if it resumed.
    pub resumed_after: Option<usize>,
    /// Training seconds of each epoch this process ran.
    pub secs_here: Vec<f64>,
}

/// The epoch's progress: a bar on a terminal, a log line every
/// [`LOG_EVERY`] optimiser steps otherwise, nothing when not shown.
pub struct Progress {
    bar: indicatif::ProgressBar,
    show: bool,
    log_lines: bool,
    label: String,
    start: Instant,
    done: u64,
}

impl Progress {
    fn new(show: bool, label: String) -> Self {
        Progress {
            bar: indicatif::ProgressBar::hidden(),
            show,
            log_lines: show && !std::io::stderr().is_terminal(),
            label,
            start: Instant::now(),
            done: 0,
        }
    }

    /// Starts the epoch's bar over `len` `units` (rows, batches).
    pub fn begin(&mut self, len: u64, units: &str) {
        if self.show {
            let template =
                format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {units}, {{msg}} · ETA {{eta}}");
            self.bar = indicatif::ProgressBar::new(len).with_style(
                indicatif::ProgressStyle::with_template(&template)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            self.bar.set_prefix(self.label.clone());
        }
        self.start = Instant::now();
        self.done = 0;
    }

    /// `n` more units done; `stepped`: the optimiser steps taken in all
    /// when one just ended; the epoch's mean loss so far and, when known,
    /// its tokens per second.
    pub fn advance(
        &mut self,
        n: u64,
        stepped: Option<u64>,
        mean_loss: f64,
        tokens_per_sec: Option<f64>,
    ) {
        self.done += n;
        self.bar.inc(n);
        let rate = tokens_per_sec.map_or(String::new(), |r| format!(", {r:.0} tokens/s"));
        self.bar.set_message(format!("loss {mean_loss:.3}{rate}"));
        let Some(step) = stepped else { return };
        if self.log_lines && step.is_multiple_of(LOG_EVERY) {
            let len = self.bar.length().unwrap_or(self.done).max(self.done);
            let secs = self.start.elapsed().as_secs_f64();
            let eta = secs / self.done.max(1) as f64 * (len - self.done) as f64;
            tracing::info!(
                what = %self.label,
                step,
                done = self.done,
                of = len,
                loss = format!("{mean_loss:.4}"),
                tokens_per_sec = tokens_per_sec.map(|r| format!("{r:.0}")),
                eta_secs = format!("{eta:.0}"),
                "training"
            );
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Trains `trainee` in `o.out_dir` until early stopping or `max_epochs`,
/// resuming after the last committed epoch of the same run.
pub fn fit<T: Trainee>(trainee: &mut T, o: &FitOptions) -> Result<FitReport<T::Row>> {
    let dir = o.out_dir.join("checkpoints");
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let (mut st, resumed_after) = resume(trainee, o, &dir)?;
    let mut secs_here = Vec::new();
    while !st.finished && st.epoch < o.max_epochs {
        let epoch = st.epoch + 1;
        let name = trainee.stage_name().to_string();
        let mut progress = Progress::new(o.progress, format!("{name} epoch {epoch}"));
        let t0 = Instant::now();
        let train_loss = trainee.train_epoch(epoch, &mut progress)?;
        progress.finish();
        let epoch_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let (score, metrics) = trainee.validate()?;
        let eval_secs = t1.elapsed().as_secs_f64();
        tracing::info!(stage = %name, epoch, train_loss, value = score, epoch_secs, "epoch done");
        let record = EpochRecord {
            epoch,
            train_loss,
            metrics: &metrics,
            epoch_secs,
            eval_secs,
        };
        end_epoch(trainee, o, &mut st, &record, score)?;
        commit_epoch(trainee, &dir, &mut st, &record)?;
        secs_here.push(epoch_secs);
        if o.halt_after_epoch == Some(epoch) && !st.finished {
            bail!("halted after epoch {epoch} (halt_after_epoch); re-run to resume");
        }
    }
    if st.best_epoch == 0 {
        bail!(
            "no epoch was trained ({}.max_epochs = {})",
            trainee.stage_name(),
            o.max_epochs
        );
    }
    Ok(FitReport {
        state: st,
        resumed_after,
        secs_here,
    })
}

/// Records a validated epoch: the best checkpoint when the score improved,
/// the patience count, the history row and `history.csv`, and whether the
/// run is finished.
fn end_epoch<T: Trainee>(
    trainee: &mut T,
    o: &FitOptions,
    st: &mut FitState<T::Row>,
    record: &EpochRecord,
    score: f64,
) -> Result<()> {
    let epoch = record.epoch;
    st.epoch = epoch;
    st.step = trainee.steps();
    if st.best_metric.is_none_or(|b| score > b) {
        st.best_metric = Some(score);
        st.best_epoch = epoch;
        st.bad_epochs = 0;
        trainee.save_best(record)?;
    } else {
        st.bad_epochs += 1;
    }
    st.history.push(trainee.history_row(record));
    let csv = trainee.history_csv(&st.history)?;
    atomic_write(&o.out_dir.join("history.csv"), csv.as_bytes())?;
    if st.bad_epochs >= o.patience.max(1) || epoch >= o.max_epochs {
        st.finished = true;
    }
    Ok(())
}

/// Commits the epoch ([`crate::commit`]): the trainee writes
/// `last-e<epoch>`, then `state.json` names it, then the older `last`
/// files go.
fn commit_epoch<T: Trainee>(
    trainee: &mut T,
    dir: &Path,
    st: &mut FitState<T::Row>,
    record: &EpochRecord,
) -> Result<()> {
    let stem = commit::last_stem(st.epoch);
    let sha256 = trainee.save_last(dir, &stem, record)?;
    st.last = Some(LastRef {
        file: format!("{stem}.safetensors"),
        sha256,
    });
    atomic_write_json(&dir.join("state.json"), st)?;
    commit::remove_stale_last(dir, &stem)
}

/// The state to start from: a fresh one, or the saved one of this run
/// (refusing another run's) with the weights and optimiser state of
/// exactly the `last` checkpoint it names loaded into the trainee.
fn resume<T: Trainee>(
    trainee: &mut T,
    o: &FitOptions,
    dir: &Path,
) -> Result<(FitState<T::Row>, Option<usize>)> {
    let fresh = FitState::fresh(o.run_key.clone());
    let path = std::iter::once(dir.join("state.json"))
        .chain(o.legacy_state.clone())
        .find(|p| p.exists());
    let Some(path) = path else {
        return Ok((fresh, None));
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut saved: FitState<T::Row> = serde_json::from_str(&text)
        .with_context(|| format!("{}: unreadable training state", path.display()))?;
    if saved.run_key != o.run_key {
        bail!(
            "{}: this run directory holds training state for a different config, dataset, seed or teacher; use another --out",
            path.display()
        );
    }
    if saved.epoch == 0 {
        return Ok((fresh, None));
    }
    let last = dir.join(commit::last_file(saved.last.as_ref()));
    let (epoch, sha256) = trainee.load_last(&last, saved.step)?;
    commit::check_last(&last, epoch, &sha256, saved.epoch, saved.last.as_ref())?;
    // states from before `finished` was saved: early stopping decides
    saved.finished |= saved.bad_epochs >= o.patience.max(1);
    let after = saved.epoch;
    tracing::info!(epoch = after, "resuming after the last finished epoch");
    Ok((saved, Some(after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-number "model": each epoch adds 1 to the weight; the scores
    /// of the epochs are given; checkpoints are text files.
    struct Counter {
        w: u64,
        scores: Vec<f64>,
        trained: Vec<usize>,
    }

    impl Counter {
        fn new(scores: &[f64]) -> Self {
            Counter {
                w: 0,
                scores: scores.to_vec(),
                trained: Vec::new(),
            }
        }
    }

    impl Trainee for Counter {
        type Row = (usize, f64);
        fn stage_name(&self) -> &str {
            "train.counter"
        }
        fn train_epoch(&mut self, epoch: usize, progress: &mut Progress) -> Result<f64> {
            progress.begin(1, "rows");
            self.w += 1;
            self.trained.push(epoch);
            progress.advance(1, Some(self.w), 1.0, None);
            Ok(1.0 / epoch as f64)
        }
        fn steps(&self) -> u64 {
            self.w
        }
        fn validate(&mut self) -> Result<(f64, BTreeMap<String, f64>)> {
            let s = self.scores[self.w as usize - 1];
            Ok((s, BTreeMap::from([("score".to_string(), s)])))
        }
        fn history_row(&self, r: &EpochRecord) -> (usize, f64) {
            (r.epoch, r.metrics["score"])
        }
        fn history_csv(&self, rows: &[(usize, f64)]) -> Result<String> {
            Ok(rows.iter().map(|(e, s)| format!("{e},{s}\n")).collect())
        }
        fn save_best(&mut self, r: &EpochRecord) -> Result<()> {
            let _ = r;
            Ok(())
        }
        fn save_last(&mut self, dir: &Path, stem: &str, r: &EpochRecord) -> Result<String> {
            let text = format!("{} {}", r.epoch, self.w);
            std::fs::write(dir.join(format!("{stem}.safetensors")), &text)?;
            Ok(format!("sha:{text}"))
        }
        fn load_last(&mut self, path: &Path, step: u64) -> Result<(usize, String)> {
            let text = std::fs::read_to_string(path)?;
            let (epoch, w) = text.split_once(' ').context("bad")?;
            self.w = w.parse()?;
            assert_eq!(self.w, step);
            Ok((epoch.parse()?, format!("sha:{text}")))
        }
    }

    fn options<'a>(dir: &'a Path, key: &str) -> FitOptions<'a> {
        FitOptions {
            out_dir: dir,
            run_key: key.into(),
            max_epochs: 5,
            patience: 2,
            progress: false,
            halt_after_epoch: None,
            legacy_state: Some(dir.join("state.json")),
        }
    }

    #[test]
    fn early_stopping_and_an_exact_resume() {
        let d = tempfile::tempdir().unwrap();
        let scores = [0.1, 0.3, 0.2, 0.25, 0.9];
        let mut whole = Counter::new(&scores);
        let done = fit(&mut whole, &options(d.path(), "k")).unwrap();
        // two epochs without beating 0.3 stop the run before epoch 5
        assert_eq!((done.state.epoch, done.state.best_epoch), (4, 2));
        assert!(done.state.finished);
        let cut = tempfile::tempdir().unwrap();
        let mut o = options(cut.path(), "k");
        o.halt_after_epoch = Some(3);
        let e = fit(&mut Counter::new(&scores), &o).err().unwrap();
        assert!(e.to_string().contains("halted after epoch 3"), "{e}");
        let mut rest = Counter::new(&scores);
        let resumed = fit(&mut rest, &options(cut.path(), "k")).unwrap();
        assert_eq!(resumed.resumed_after, Some(3));
        assert_eq!(rest.trained, [4], "only the missing epoch is trained");
        assert_eq!(resumed.state, done.state);
        let csv = |p: &Path| std::fs::read_to_string(p.join("history.csv")).unwrap();
        assert_eq!(csv(cut.path()), csv(d.path()));
    }

    #[test]
    fn another_runs_state_is_refused_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let mut o = options(d.path(), "k");
        o.max_epochs = 1;
        fit(&mut Counter::new(&[0.5]), &o).unwrap();
        let state = d.path().join("checkpoints/state.json");
        let before = std::fs::read(&state).unwrap();
        let mut other = Counter::new(&[0.5]);
        let e = fit(&mut other, &options(d.path(), "other")).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: this run directory holds training state for a different config, dataset, seed or teacher; use another --out",
                state.display()
            )
        );
        assert!(other.trained.is_empty());
        assert_eq!(std::fs::read(&state).unwrap(), before);
    }

    #[test]
    fn an_old_teacher_state_at_the_run_root_resumes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("checkpoints")).unwrap();
        std::fs::write(d.path().join("checkpoints/last.safetensors"), "2 2").unwrap();
        // the layout `distillrec-teacher` wrote before the loop was shared
        let old = r#"{"key": "k", "epoch": 2, "step": 2, "best": 0.3, "best_epoch": 2,
            "bad_epochs": 0, "history": [[1, 0.1], [2, 0.3]]}"#;
        std::fs::write(d.path().join("state.json"), old).unwrap();
        let mut c = Counter::new(&[0.1, 0.3, 0.2, 0.25, 0.9]);
        let r = fit(&mut c, &options(d.path(), "k")).unwrap();
        assert_eq!(r.resumed_after, Some(2));
        assert_eq!(c.trained, [3, 4]);
        assert_eq!((r.state.epoch, r.state.best_epoch), (4, 2));
        assert!(d.path().join("checkpoints/state.json").exists());
    }
}
