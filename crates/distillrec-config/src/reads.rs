//! What each command and each pipeline stage reads of the config, defined
//! once: the binary validates and warns by these sets, and the pipeline
//! projects a stage's config (and so its key) on the same set plus
//! [`Reads::RECORD`].

/// The config groups a command reads, as dotted prefixes (`seed`,
/// `student`, `train.student`, `eval`, ...). A command validates only what it
/// reads, and a `--set` of a key it does not read earns a warning instead of
/// being silently ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reads(pub &'static [&'static str]);

impl Reads {
    /// What every pipeline stage's recorded config keeps besides the
    /// groups it reads: the seed, the device and the data it ran on (the
    /// device is left out of its key).
    pub const RECORD: Reads = Reads(&["seed", "device", "dataset"]);

    /// Every group (the `pipeline`, and tests).
    pub const ALL: Reads = Reads(&[
        "seed",
        "student_seed",
        "device",
        "dataset",
        "student",
        "teacher",
        "distill",
        "selection",
        "train",
        "eval",
        "active",
    ]);

    /// Whether `key` (dotted) lies in a group read, or is a group that
    /// holds one (`train` when `train.student` is read).
    pub fn covers(&self, key: &str) -> bool {
        self.0.iter().any(|p| {
            key == *p
                || key.strip_prefix(p).is_some_and(|r| r.starts_with('.'))
                || p.strip_prefix(key).is_some_and(|r| r.starts_with('.'))
        })
    }

    /// Warnings for the overrides whose key this command does not read.
    pub fn unread_overrides(&self, overrides: &[String]) -> Vec<String> {
        overrides
            .iter()
            .filter_map(|o| {
                let key = o.split_once('=').map_or(o.as_str(), |(k, _)| k).trim();
                (!self.covers(key)).then(|| {
                    format!(
                        "--set {o}: this command does not read `{key}`; it reads {}",
                        self.0.join(", ")
                    )
                })
            })
            .collect()
    }
}

/// The groups `data prepare` (the pipeline's `data` stage) reads.
pub const PREPARE: Reads = Reads(&["seed", "dataset"]);
/// The groups `eval popularity` (the `popularity` stage) reads.
pub const EVAL_POPULARITY: Reads = Reads(&["seed", "eval"]);
/// The groups `train student` (the `student` stage) reads.
pub const TRAIN_STUDENT: Reads = Reads(&[
    "seed",
    "device",
    "dataset",
    "student",
    "train.student",
    "eval",
]);
/// The groups `eval student` reads.
pub const EVAL_STUDENT: Reads = Reads(&["seed", "device", "eval"]);
/// The groups `select` (the `selection` stage) reads (`student` for the
/// pool of trained rows).
pub const SELECT: Reads = Reads(&["seed", "device", "selection", "student"]);
/// The groups `train teacher` (the `teacher` stage) reads.
pub const TRAIN_TEACHER: Reads = Reads(&[
    "seed",
    "device",
    "dataset",
    "teacher",
    "train.teacher",
    "eval",
]);
/// The groups `eval teacher` reads (the teacher's settings come from its
/// checkpoint).
pub const EVAL_TEACHER: Reads = Reads(&["device", "eval"]);
/// The groups `teacher infer | from-student` (the `cache` stage) read.
pub const TEACHER_CACHE: Reads = Reads(&["device", "teacher"]);
/// The groups `distill` (the `distill` stage) reads.
pub const DISTILL: Reads = Reads(&[
    "seed",
    "device",
    "dataset",
    "student",
    "distill",
    "train.distill",
    "eval",
]);
/// The groups `active` reads: a round selects, labels (`teacher` for an LLM
/// teacher's inference; `train.teacher` when `active.teacher_rows =
/// "retrain"` fine-tunes it first) and distils.
pub const ACTIVE: Reads = Reads(&[
    "seed",
    "device",
    "dataset",
    "student",
    "teacher",
    "selection",
    "distill",
    "train.teacher",
    "train.distill",
    "eval",
    "active",
]);
/// The groups the pipeline's `report` stage reads (`train.student` for the
/// metric it ranks by).
pub const REPORT: Reads = Reads(&["eval", "train.student"]);
/// The groups `pipeline` and `sweep` read: all of them.
pub const PIPELINE: Reads = Reads::ALL;
