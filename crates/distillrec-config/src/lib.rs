//! Run configuration (SPEC 9): TOML with the groups of the old Hydra layout
//! — `dataset`, `student`, `teacher`, `distill`, `selection`,
//! `train.student` / `train.distill` (each with its own
//! `max_epochs`) and `eval` — plus dotted `--set key=value` overrides.
//!
//! Resolution: the built-in defaults are serialised to a TOML table, the
//! user's file is merged over it, then each override; the result is
//! deserialised with unknown keys denied. So every error names the dotted
//! key (`train.student.max_epoch: unknown field ...`) and the resolved
//! config written into a run directory is always complete.

pub mod active;
mod device;
mod memory;
pub mod reads;
pub mod selection;
mod source;
mod teacher;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use active::{ActiveConfig, TeacherRows, Until};
pub use device::DeviceSpec;
pub use distillrec_data::synthetic::SyntheticOptions;
use distillrec_data::PrepareOptions;
pub use distillrec_eval::{EvalOptions, Metric, MetricKind};
pub use reads::Reads;
pub use selection::{Budget, BudgetError, Policy};
pub use teacher::{
    AdapterTarget, BackbonePath, TeacherConfig, TeacherDtype, TeacherObjective, TeacherTrain,
    DEFAULT_PROMPTS, DEFAULT_RANKING_PROMPTS,
};

/// Largest width or length a config (or a checkpoint) may set:
/// `student.hidden`, `student.max_len`, `teacher.rank`,
/// `teacher.gate_hidden`, and a checkpoint's `hidden`, `max_len`, `heads`.
pub const MAX_SIZE: usize = 1 << 16;

/// Largest `student.layers` (and a checkpoint's `layers`).
pub const MAX_LAYERS: usize = 1024;

/// Largest `teacher.experts`: a gate over more experts than this is no
/// mixture anyone trains.
pub const MAX_EXPERTS: usize = 1024;

/// A configuration error; one line, naming the file and/or the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (said in words: missing, a directory, a
    /// symlink loop, unreadable).
    #[error("{}: {}", path.display(), distillrec_data::fsutil::io_reason(err))]
    Io {
        /// Config file.
        path: PathBuf,
        /// Underlying error.
        err: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}: {msg}", path.display())]
    Syntax {
        /// Config file.
        path: PathBuf,
        /// Parser message with line and column.
        msg: String,
    },
    /// A `--set` override is malformed.
    #[error("--set {arg}: {msg}")]
    Override {
        /// The override as given.
        arg: String,
        /// What is wrong.
        msg: String,
    },
    /// A key is unknown or has the wrong type or value.
    #[error("{source_name}: config key `{key}`: {msg}")]
    Key {
        /// File name or "defaults".
        source_name: String,
        /// Dotted key path.
        key: String,
        /// What is wrong.
        msg: String,
    },
}

distillrec_data::named_enum! {
    /// Which source layout a dataset comes from.
    pub enum DatasetKind {
        /// The built-in generator; no files needed.
        Synthetic = "synthetic",
        /// MovieLens 100k (`u.data`, `u.item`).
        Ml100k = "ml-100k",
        /// MovieLens 1M (`ratings.dat`, `movies.dat`).
        Ml1m = "ml-1m",
        /// Amazon reviews (2014/2018 JSON or 2023 JSONL) with metadata.
        Amazon = "amazon",
        /// Generic CSV/TSV `user,item,timestamp[,rating]` plus `item,title`.
        Csv = "csv",
        /// DLLM2Rec processed CSV layout.
        Dllm2rec = "dllm2rec",
        /// iLoRA/LLaRA processed JSONL layout.
        Ilora = "ilora",
    }
}

impl DatasetKind {
    /// Whether the splits come with the files (processed reference layouts).
    pub fn has_given_splits(self) -> bool {
        matches!(self, DatasetKind::Dllm2rec | DatasetKind::Ilora)
    }
}

/// `[dataset]`: where the data comes from and how it is filtered and split.
/// The filter and split keys are [`PrepareOptions`]' fields, flattened into
/// this group; a key that neither knows is refused by [`Config::check`]
/// (serde cannot combine `flatten` with `deny_unknown_fields`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetConfig {
    /// Source layout.
    pub kind: DatasetKind,
    /// Raw input directory (not needed for `synthetic`).
    pub raw: Option<PathBuf>,
    /// A prepared dataset directory; when set it is used as is.
    pub prepared: Option<PathBuf>,
    /// Rating filter, k-core, minimum lengths, dedup and split (raw-log
    /// layouts; `min_history` also for the processed ones).
    #[serde(flatten)]
    pub options: PrepareOptions,
    /// Generator settings for `synthetic`.
    pub synthetic: SyntheticOptions,
    /// Keys of `[dataset]` that no field knows; refused by the check.
    #[serde(flatten, skip_serializing)]
    unknown: BTreeMap<String, toml::Value>,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        DatasetConfig {
            kind: DatasetKind::Synthetic,
            raw: None,
            prepared: None,
            options: PrepareOptions::default(),
            synthetic: SyntheticOptions::default(),
            unknown: BTreeMap::new(),
        }
    }
}

impl DatasetConfig {
    /// The minimum history length in force for this layout: the key, else
    /// 3 for `ilora` (its loaders keep `len_seq >= 3`) and 1 otherwise.
    pub fn effective_min_history(&self) -> usize {
        match (self.options.min_history, self.kind) {
            (Some(h), _) => h,
            (None, DatasetKind::Ilora) => 3,
            (None, _) => self.options.min_history(),
        }
    }
}

distillrec_data::named_enum! {
    /// Student architecture.
    pub enum StudentKind {
        /// Self-attentive sequential recommendation (Kang & McAuley 2018).
        Sasrec = "sasrec",
        /// One-layer GRU over the history.
        Gru4rec = "gru4rec",
        /// Convolutional sequence embedding (horizontal + vertical filters).
        Caser = "caser",
    }
}

distillrec_data::named_enum! {
    /// Student training loss.
    pub enum LossKind {
        /// Full softmax cross-entropy over all items.
        Ce = "ce",
        /// Binary cross-entropy with sampled negatives.
        Bce = "bce",
    }
}

distillrec_data::named_enum! {
    /// Which positions carry a training target.
    pub enum Objective {
        /// One target per row, predicted from the last position.
        Last = "last",
        /// Every position predicts the next item (original SASRec).
        AllPositions = "all_positions",
    }
}

/// `[student]`: the conventional recommender (SPEC 4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentConfig {
    /// Architecture.
    pub model: StudentKind,
    /// Embedding / hidden size.
    pub hidden: usize,
    /// Transformer blocks (SASRec) or GRU layers.
    pub layers: usize,
    /// Attention heads (SASRec).
    pub heads: usize,
    /// Dropout probability.
    pub dropout: f64,
    /// History window.
    pub max_len: usize,
    /// Loss.
    pub loss: LossKind,
    /// Sampled negatives per positive for `bce`.
    pub negatives: usize,
    /// Training objective.
    pub objective: Objective,
}

impl Default for StudentConfig {
    fn default() -> Self {
        StudentConfig {
            model: StudentKind::Sasrec,
            hidden: 64,
            layers: 2,
            heads: 1,
            dropout: 0.2,
            max_len: 50,
            loss: LossKind::Ce,
            negatives: 1,
            objective: Objective::Last,
        }
    }
}

/// `[distill]`: DLLM2Rec loss weights (SPEC 7; reference defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Weight λ of the ranking-distillation loss.
    pub lambda: f64,
    /// Position-weight mix γp.
    pub gamma_position: f64,
    /// Confidence-weight mix γc.
    pub gamma_confidence: f64,
    /// Consistency-weight mix γo.
    pub gamma_consistency: f64,
    /// Position-weight temperature τ.
    pub tau: f64,
    /// Embedding-distillation weight.
    pub ed_weight: f64,
    /// Weight α of the DRO term.
    pub alpha: f64,
    /// DRO temperature β.
    pub beta: f64,
    /// Propensity exponent.
    pub ps_power: f64,
    /// Teacher candidates used per row.
    pub k: usize,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            lambda: 0.8,
            gamma_position: 0.3,
            gamma_confidence: 0.5,
            gamma_consistency: 0.1,
            tau: 1.0,
            ed_weight: 0.2,
            alpha: 1.0,
            beta: 1.0,
            ps_power: 0.05,
            k: 10,
        }
    }
}

impl DistillConfig {
    /// Value checks of `[distill]` that need no data (`Config::check` runs
    /// them before any dataset or cache loads; `DistillObjective::new` runs
    /// them for library callers and adds the checks against the cache).
    pub fn check(&self, source_name: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| {
            Err(ConfigError::Key {
                source_name: source_name.to_string(),
                key: format!("distill.{key}"),
                msg,
            })
        };
        if self.k == 0 {
            return bad("k", "must be at least 1".into());
        }
        for (key, v) in [
            ("lambda", self.lambda),
            ("alpha", self.alpha),
            ("ed_weight", self.ed_weight),
            ("gamma_position", self.gamma_position),
            ("gamma_confidence", self.gamma_confidence),
            ("gamma_consistency", self.gamma_consistency),
            ("ps_power", self.ps_power),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(key, format!("{v}: must be a finite number >= 0"));
            }
        }
        for (key, v) in [("beta", self.beta), ("tau", self.tau)] {
            if !(v > 0.0 && v.is_finite()) {
                return bad(key, format!("{v}: must be a finite number > 0"));
            }
        }
        Ok(())
    }
}

/// `[selection]`: which rows get teacher supervision (SPEC 8).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionConfig {
    /// Policy (`all`, `random`, `loss`, `entropy`, ...; see [`Policy`]).
    pub policy: Policy,
    /// Budget: a fraction in (0, 1] (`0.25`, `"25%"`) or a row count of at
    /// least 2; a bare `1` is refused as ambiguous.
    #[serde(with = "selection::as_config_value")]
    pub budget: Budget,
    /// Threshold of the post-hoc filters: `kl` keeps rows whose
    /// teacher–student KL over the candidates is above it, `gt_error` rows
    /// whose student probability of the target is below it.
    pub threshold: Option<f64>,
}

impl Default for SelectionConfig {
    fn default() -> Self {
        SelectionConfig {
            policy: Policy::All,
            budget: Budget::Fraction(1.0),
            threshold: None,
        }
    }
}

/// One training stage's loop settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainStage {
    /// Epoch limit of this stage.
    pub max_epochs: usize,
    /// Rows per step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Epochs without validation improvement before stopping.
    pub patience: usize,
    /// Validation metric for early stopping and the best checkpoint
    /// (`ndcg@10`; its K must be in `eval.ks`).
    pub metric: Metric,
    /// Global gradient-norm clip (0: off).
    pub grad_clip: f64,
    /// What ends the stage: `budget` (`max_epochs`, or `patience` first) or
    /// `converged` (`patience` alone). Left out of configs and run keys
    /// when `budget`, so both read as before the key existed.
    #[serde(default, skip_serializing_if = "Until::is_budget")]
    pub until: Until,
}

impl TrainStage {
    /// The epoch limit `until` gives this stage.
    pub fn epoch_limit(&self) -> usize {
        self.until.epoch_limit(self.max_epochs)
    }

    fn with(max_epochs: usize, batch_size: usize, lr: f64) -> Self {
        TrainStage {
            max_epochs,
            batch_size,
            lr,
            weight_decay: 0.0,
            patience: 5,
            metric: Metric {
                kind: MetricKind::Ndcg,
                k: 10,
            },
            grad_clip: 5.0,
            until: Until::Budget,
        }
    }
}

/// `[train]`: one loop configuration per stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Baseline student training.
    pub student: TrainStage,
    /// Distillation into the student.
    pub distill: TrainStage,
    /// The LLM teacher.
    #[serde(default)]
    pub teacher: TeacherTrain,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            student: TrainStage::with(200, 256, 1e-3),
            distill: TrainStage::with(200, 256, 1e-3),
            teacher: TeacherTrain::default(),
        }
    }
}

/// A whole run configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Run seed; every random choice derives from it (SPEC 2.6).
    pub seed: u64,
    /// Seed of the pipeline's baseline student and distilled student
    /// (default: `seed`). The data, the selection and the teacher (with the
    /// student that feeds it) keep `seed`, so a sweep over `student_seed`
    /// averages students over seeds against one teacher cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_seed: Option<u64>,
    /// Where models run: `cpu` (default), `cuda` or `cuda:N` (`--device`
    /// overrides it).
    pub device: DeviceSpec,
    /// Dataset group.
    pub dataset: DatasetConfig,
    /// Student group.
    pub student: StudentConfig,
    /// Teacher group.
    pub teacher: TeacherConfig,
    /// Distillation group.
    pub distill: DistillConfig,
    /// Selection group.
    pub selection: SelectionConfig,
    /// Per-stage training loops.
    pub train: TrainConfig,
    /// Evaluation protocol.
    pub eval: EvalOptions,
    /// Active distillation in rounds (absent: one round, one-shot
    /// selection); left out of the resolved config when it is the default.
    #[serde(default, skip_serializing_if = "ActiveConfig::is_default")]
    pub active: ActiveConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 42,
            student_seed: None,
            device: DeviceSpec::Cpu,
            dataset: DatasetConfig::default(),
            student: StudentConfig::default(),
            teacher: TeacherConfig::default(),
            distill: DistillConfig::default(),
            selection: SelectionConfig::default(),
            train: TrainConfig::default(),
            eval: EvalOptions::default(),
            active: ActiveConfig::default(),
        }
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Parses `key=value`; the value is TOML (`3`, `0.5`, `true`, `[1, 5]`,
/// `"x"`) or, failing that, a bare string.
fn parse_override(arg: &str) -> Result<(Vec<String>, toml::Value), ConfigError> {
    let err = |msg: &str| ConfigError::Override {
        arg: arg.to_string(),
        msg: msg.to_string(),
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| err("expected key=value"))?;
    let path: Vec<String> = key
        .trim()
        .split('.')
        .map(|s| s.trim().to_string())
        .collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(err("empty key segment"));
    }
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    Ok((path, value))
}

fn apply_override(table: &mut toml::Table, arg: &str) -> Result<(), ConfigError> {
    let (path, value) = parse_override(arg)?;
    let mut cur = table;
    for (i, seg) in path[..path.len() - 1].iter().enumerate() {
        let entry = cur
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(ConfigError::Override {
                    arg: arg.to_string(),
                    msg: format!("`{}` is not a group", path[..=i].join(".")),
                })
            }
        };
    }
    cur.insert(path[path.len() - 1].clone(), value);
    Ok(())
}

impl Config {
    /// Resolves defaults, then the TOML text `text` (named `source_name` in
    /// errors), then the overrides, and validates every group.
    pub fn from_toml_str(
        text: &str,
        source_name: &str,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        Self::from_toml_str_for(text, source_name, overrides, Reads::ALL)
    }

    /// [`Config::from_toml_str`] validating only the groups in `reads`.
    pub fn from_toml_str_for(
        text: &str,
        source_name: &str,
        overrides: &[String],
        reads: Reads,
    ) -> Result<Self, ConfigError> {
        let user: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: PathBuf::from(source_name),
            msg: format!(
                "invalid TOML{}: {}",
                location(text, &e),
                e.message().trim().replace('\n', "; ")
            ),
        })?;
        let mut table = toml::Table::try_from(Config::default()).expect("defaults serialise");
        merge(&mut table, user);
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let key_error = |key: String, msg: String| ConfigError::Key {
            source_name: source_name.to_string(),
            key,
            msg: msg.lines().next().unwrap_or("").trim().to_string(),
        };
        let dataset = table.get("dataset").cloned();
        let cfg: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                // serde's flatten hides the key inside `[dataset]`: read the
                // flattened options alone to name it.
                if key == "dataset" {
                    if let Some(Err(inner)) =
                        dataset.map(serde_path_to_error::deserialize::<_, PrepareOptions>)
                    {
                        let key = format!("dataset.{}", inner.path());
                        return key_error(key, inner.into_inner().to_string());
                    }
                }
                key_error(key, e.into_inner().to_string())
            })?;
        cfg.check(source_name, reads)?;
        Ok(cfg)
    }

    /// Loads a config file (or the defaults when `path` is None) with overrides.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        Self::load_for(path, overrides, Reads::ALL)
    }

    /// Loads a config for a command that reads `reads`: only those groups
    /// are validated (use [`Reads::unread_overrides`] to warn about the rest).
    pub fn load_for(
        path: Option<&Path>,
        overrides: &[String],
        reads: Reads,
    ) -> Result<Self, ConfigError> {
        match path {
            Some(p) => {
                use distillrec_data::fsutil::{read_text_limited, LimitedReadError};
                let limit = distillrec_data::fsutil::MAX_SMALL_FILE_BYTES;
                let text = read_text_limited(p, limit).map_err(|e| match e {
                    LimitedReadError::Io(err) => ConfigError::Io {
                        path: p.to_path_buf(),
                        err,
                    },
                    LimitedReadError::TooLarge(n) => ConfigError::Syntax {
                        path: p.to_path_buf(),
                        msg: format!(
                            "{n} bytes is larger than the limit of {limit} bytes for a config file"
                        ),
                    },
                })?;
                Self::from_toml_str_for(&text, &p.display().to_string(), overrides, reads)
            }
            None => Self::from_toml_str_for("", "defaults", overrides, reads),
        }
    }

    /// This config with the groups in `reads` kept and every other group at
    /// its default: what one pipeline stage depends on, so the stage's run
    /// directory records exactly that and its key changes only when that does.
    pub fn project(&self, reads: Reads) -> Config {
        self.project_paths(reads.0.iter())
    }

    /// The config a pipeline stage that reads `reads` records and is keyed
    /// by: [`Config::project`] on `reads` and [`Reads::RECORD`].
    pub fn project_stage(&self, reads: Reads) -> Config {
        self.project_paths(reads.0.iter().chain(Reads::RECORD.0))
    }

    fn project_paths<'a>(&self, paths: impl Iterator<Item = &'a &'static str>) -> Config {
        let full = toml::Table::try_from(self).expect("config serialises");
        let mut out = toml::Table::try_from(Config::default()).expect("defaults serialise");
        for path in paths {
            let segs: Vec<&str> = path.split('.').collect();
            let (last, parents) = segs.split_last().expect("a group path has a segment");
            let mut src = Some(&full);
            let mut dst = &mut out;
            for seg in parents {
                src = src
                    .and_then(|t| t.get(*seg))
                    .and_then(toml::Value::as_table);
                dst = dst
                    .entry(seg.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .expect("config groups are tables");
            }
            match src.and_then(|t| t.get(*last)) {
                Some(v) => {
                    dst.insert(last.to_string(), v.clone());
                }
                None => {
                    dst.remove(*last);
                }
            }
        }
        toml::Value::Table(out)
            .try_into()
            .expect("a projection of a valid config is a valid config")
    }

    /// The fully resolved config as TOML (what a run directory stores).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Value checks that types alone cannot express, for the groups read.
    fn check(&self, source_name: &str, reads: Reads) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| {
            Err(ConfigError::Key {
                source_name: source_name.to_string(),
                key: key.to_string(),
                msg,
            })
        };
        // What `deny_unknown_fields` does for the other groups.
        if let Some(key) = self.dataset.unknown.keys().next() {
            return bad(&format!("dataset.{key}"), format!("unknown field `{key}`"));
        }
        if reads.covers("eval") && (self.eval.ks.is_empty() || self.eval.ks.contains(&0)) {
            return bad(
                "eval.ks",
                "must be a non-empty list of positive cut-offs".into(),
            );
        }
        for (name, st) in [
            ("student", &self.train.student),
            ("distill", &self.train.distill),
        ] {
            if !reads.covers(&format!("train.{name}")) {
                continue;
            }
            if st.max_epochs == 0 {
                return bad(
                    &format!("train.{name}.max_epochs"),
                    "must be at least 1 (no epoch would be trained)".into(),
                );
            }
            if st.batch_size == 0 {
                return bad(
                    &format!("train.{name}.batch_size"),
                    "must be positive".into(),
                );
            }
            if !(st.lr > 0.0 && st.lr.is_finite()) {
                return bad(
                    &format!("train.{name}.lr"),
                    format!("must be positive, got {}", st.lr),
                );
            }
            if !(st.weight_decay >= 0.0 && st.weight_decay.is_finite()) {
                return bad(
                    &format!("train.{name}.weight_decay"),
                    format!("must be a finite number >= 0, got {}", st.weight_decay),
                );
            }
            if !(st.grad_clip >= 0.0 && st.grad_clip.is_finite()) {
                return bad(
                    &format!("train.{name}.grad_clip"),
                    format!(
                        "must be a finite number >= 0 (0: off), got {}",
                        st.grad_clip
                    ),
                );
            }
            if !self.eval.ks.contains(&st.metric.k) {
                let ks: Vec<String> = self.eval.ks.iter().map(|k| k.to_string()).collect();
                return bad(
                    &format!("train.{name}.metric"),
                    format!(
                        "'{}': K = {} is not in eval.ks [{}]",
                        st.metric,
                        st.metric.k,
                        ks.join(", ")
                    ),
                );
            }
        }
        if reads.covers("student") {
            self.check_student(source_name)?;
        }
        if reads.covers("distill") {
            self.distill.check(source_name)?;
        }
        if reads.covers("active") {
            self.active.check(&self.selection, source_name)?;
        }
        if reads.covers("teacher") {
            self.check_teacher(source_name, &reads)?;
        }
        if reads.covers("dataset")
            && self.dataset.kind != DatasetKind::Synthetic
            && self.dataset.raw.is_none()
            && self.dataset.prepared.is_none()
        {
            return bad(
                "dataset.raw",
                format!(
                    "dataset.kind = \"{}\" needs dataset.raw or dataset.prepared",
                    self.dataset.kind.name()
                ),
            );
        }
        Ok(())
    }

    /// Checks of the `[teacher]` and `[train.teacher]` groups.
    fn check_teacher(&self, source_name: &str, reads: &Reads) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| {
            Err(ConfigError::Key {
                source_name: source_name.to_string(),
                key: key.to_string(),
                msg,
            })
        };
        self.teacher.check(source_name)?;
        if reads.covers("eval") {
            self.teacher
                .sampled_negatives(self.eval.sampled_negatives, source_name)?;
        }
        let tr = &self.train.teacher;
        if !reads.covers("train.teacher") {
            return Ok(());
        }
        if tr.max_epochs == 0 {
            return bad(
                "train.teacher.max_epochs",
                "must be at least 1 (no epoch would be trained)".into(),
            );
        }
        if tr.batch_size == 0 || tr.grad_accum == 0 {
            return bad(
                "train.teacher.batch_size",
                "batch_size and grad_accum must be positive".into(),
            );
        }
        if !(tr.lr > 0.0 && tr.lr.is_finite()) {
            return bad(
                "train.teacher.lr",
                format!("must be positive, got {}", tr.lr),
            );
        }
        if !(tr.weight_decay >= 0.0 && tr.weight_decay.is_finite()) {
            return bad(
                "train.teacher.weight_decay",
                format!("must be a finite number >= 0, got {}", tr.weight_decay),
            );
        }
        if !(0.0..1.0).contains(&tr.warmup) {
            return bad(
                "train.teacher.warmup",
                format!("{} is not a fraction in [0, 1)", tr.warmup),
            );
        }
        if !(tr.grad_clip >= 0.0 && tr.grad_clip.is_finite()) {
            return bad(
                "train.teacher.grad_clip",
                format!(
                    "must be a finite number >= 0 (0: off), got {}",
                    tr.grad_clip
                ),
            );
        }
        if !self.eval.ks.contains(&tr.metric.k) {
            return bad(
                "train.teacher.metric",
                format!("'{}': K = {} is not in eval.ks", tr.metric, tr.metric.k),
            );
        }
        Ok(())
    }

    /// Checks of the `[student]` group.
    fn check_student(&self, source_name: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| {
            Err(ConfigError::Key {
                source_name: source_name.to_string(),
                key: key.to_string(),
                msg,
            })
        };
        let s = &self.student;
        for (key, v, max) in [
            ("hidden", s.hidden, MAX_SIZE),
            ("max_len", s.max_len, MAX_SIZE),
            ("layers", s.layers, MAX_LAYERS),
        ] {
            if v == 0 || v > max {
                return bad(
                    &format!("student.{key}"),
                    format!("{v} is not in 1..={max}"),
                );
            }
        }
        if s.heads == 0 || !s.hidden.is_multiple_of(s.heads) {
            return bad(
                "student.heads",
                format!("{} does not divide student.hidden = {}", s.heads, s.hidden),
            );
        }
        if !(0.0..1.0).contains(&s.dropout) {
            return bad("student.dropout", format!("{} is not in [0, 1)", s.dropout));
        }
        if s.loss == LossKind::Bce && s.negatives == 0 {
            return bad(
                "student.negatives",
                "must be at least 1 with student.loss = \"bce\" (the loss needs sampled negatives)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// ` at line L, column C` of the parser's error span (1-based, column in
/// characters), or nothing when the parser gave no span.
fn location(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let mut start = span.start.min(text.len());
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let before = &text[..start];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!(" at line {line}, column {column}")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests;
