//! Run configuration (SPEC 9): TOML with the groups of the old Hydra layout
//! — `dataset`, `student`, `teacher`, `distill`, `selection`,
//! `train.student` / `train.teacher` / `train.distill` (each with its own
//! `max_epochs`) and `eval` — plus dotted `--set key=value` overrides.
//!
//! Resolution: the built-in defaults are serialised to a TOML table, the
//! user's file is merged over it, then each override; the result is
//! deserialised with unknown keys denied. So every error names the dotted
//! key (`train.student.max_epoch: unknown field ...`) and the resolved
//! config written into a run directory is always complete.

mod device;
mod source;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use device::DeviceSpec;
pub use distillrec_data::synthetic::SyntheticOptions;
use distillrec_data::{Dedup, PrepareOptions, SplitKind};
pub use distillrec_eval::EvalOptions;

/// A configuration error; one line, naming the file and/or the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {err}", path.display())]
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

/// Which source layout a dataset comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// The built-in generator; no files needed.
    Synthetic,
    /// MovieLens 100k (`u.data`, `u.item`).
    #[serde(rename = "ml-100k")]
    Ml100k,
    /// MovieLens 1M (`ratings.dat`, `movies.dat`).
    #[serde(rename = "ml-1m")]
    Ml1m,
    /// Amazon reviews (2014/2018 JSON or 2023 JSONL) with metadata.
    Amazon,
    /// Generic CSV/TSV `user,item,timestamp[,rating]` plus `item,title`.
    Csv,
    /// DLLM2Rec processed CSV layout.
    Dllm2rec,
    /// iLoRA/LLaRA processed JSONL layout.
    Ilora,
}

impl DatasetKind {
    /// All kinds with their command-line names.
    pub const ALL: [(&'static str, DatasetKind); 7] = [
        ("synthetic", DatasetKind::Synthetic),
        ("ml-100k", DatasetKind::Ml100k),
        ("ml-1m", DatasetKind::Ml1m),
        ("amazon", DatasetKind::Amazon),
        ("csv", DatasetKind::Csv),
        ("dllm2rec", DatasetKind::Dllm2rec),
        ("ilora", DatasetKind::Ilora),
    ];

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, k)| *k)
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    /// Whether the splits come with the files (processed reference layouts).
    pub fn has_given_splits(self) -> bool {
        matches!(self, DatasetKind::Dllm2rec | DatasetKind::Ilora)
    }
}

/// `[dataset]`: where the data comes from and how it is filtered and split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// Source layout.
    pub kind: DatasetKind,
    /// Raw input directory (not needed for `synthetic`).
    pub raw: Option<PathBuf>,
    /// A prepared dataset directory; when set it is used as is.
    pub prepared: Option<PathBuf>,
    /// Minimum rating for an interaction to count (None: all).
    pub min_rating: Option<f32>,
    /// k-core threshold for users and items (0: off).
    pub k_core: usize,
    /// Minimum interactions per user.
    pub min_seq_len: usize,
    /// Consecutive-repeat handling.
    pub dedup: Dedup,
    /// Split strategy (raw-log layouts).
    pub split: SplitKind,
    /// Validation fraction (temporal, by_user).
    pub valid_fraction: f64,
    /// Test fraction (temporal, by_user).
    pub test_fraction: f64,
    /// Minimum history length of a row (None: 3 for `ilora`, as its
    /// loaders keep `len_seq >= 3`; 1 otherwise).
    pub min_history: Option<usize>,
    /// Generator settings for `synthetic`.
    pub synthetic: SyntheticOptions,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        let p = PrepareOptions::default();
        DatasetConfig {
            kind: DatasetKind::Synthetic,
            raw: None,
            prepared: None,
            min_rating: p.min_rating,
            k_core: p.k_core,
            min_seq_len: p.min_seq_len,
            dedup: p.dedup,
            split: p.split,
            valid_fraction: p.valid_fraction,
            test_fraction: p.test_fraction,
            min_history: None,
            synthetic: SyntheticOptions::default(),
        }
    }
}

impl DatasetConfig {
    /// The minimum history length in force for this layout.
    pub fn effective_min_history(&self) -> usize {
        self.min_history
            .unwrap_or(if self.kind == DatasetKind::Ilora {
                3
            } else {
                1
            })
    }

    /// The options of `distillrec_data::prepare::prepare`.
    pub fn prepare_options(&self, seed: u64) -> PrepareOptions {
        PrepareOptions {
            min_rating: self.min_rating,
            k_core: self.k_core,
            min_seq_len: self.min_seq_len,
            dedup: self.dedup,
            split: self.split,
            valid_fraction: self.valid_fraction,
            test_fraction: self.test_fraction,
            min_history: self.effective_min_history(),
            seed,
        }
    }
}

/// Student architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StudentKind {
    /// Self-attentive sequential recommendation (Kang & McAuley 2018).
    Sasrec,
    /// One-layer GRU over the history.
    Gru4rec,
    /// Convolutional sequence embedding (horizontal + vertical filters).
    Caser,
}

/// Student training loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Full softmax cross-entropy over all items.
    Ce,
    /// Binary cross-entropy with sampled negatives.
    Bce,
}

/// Which positions carry a training target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// One target per row, predicted from the last position.
    Last,
    /// Every position predicts the next item (original SASRec).
    AllPositions,
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

/// `[teacher]`: the LLM teacher (iLoRA; SPEC 6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// Hugging Face directory or GGUF file of the backbone.
    pub backbone: Option<PathBuf>,
    /// Keep only the first n layers (a cheap teacher for CPU budgets).
    pub num_layers: Option<usize>,
    /// Objective: `generative`, `ranking` or `both`.
    pub objective: String,
    /// Number of LoRA experts E.
    pub experts: usize,
    /// Total LoRA rank r (r/E per expert).
    pub rank: usize,
    /// LoRA alpha.
    pub alpha: f64,
    /// LoRA dropout.
    pub lora_dropout: f64,
    /// Adapted linear layers.
    pub targets: Vec<String>,
    /// Teacher top-K written to the cache.
    pub top_k: usize,
    /// Whether the teacher's top-K leaves out the row's history items
    /// (set it like `eval.exclude_history`).
    pub mask_history: bool,
}

impl Default for TeacherConfig {
    fn default() -> Self {
        TeacherConfig {
            backbone: None,
            num_layers: None,
            objective: "ranking".into(),
            experts: 4,
            rank: 8,
            alpha: 32.0,
            lora_dropout: 0.1,
            targets: vec!["q_proj".into(), "v_proj".into()],
            top_k: 10,
            mask_history: true,
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

/// `[selection]`: which rows get teacher supervision (SPEC 8).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionConfig {
    /// Policy name (`all`, `random`, `loss`, `entropy`, ...).
    pub policy: String,
    /// Budget: a fraction in (0, 1] or a row count above 1.
    pub budget: f64,
    /// Threshold of the post-hoc filters: `kl` keeps rows whose
    /// teacher–student KL over the candidates is above it, `gt_error` rows
    /// whose student probability of the target is below it.
    pub threshold: Option<f64>,
}

impl Default for SelectionConfig {
    fn default() -> Self {
        SelectionConfig {
            policy: "all".into(),
            budget: 1.0,
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
    /// Validation metric for early stopping and the best checkpoint.
    pub metric: String,
    /// Global gradient-norm clip (0: off).
    pub grad_clip: f64,
    /// Gradient accumulation steps (teacher; the student loop requires 1).
    pub grad_accum: usize,
    /// Warm-up steps (teacher; the student loop requires 0).
    pub warmup_steps: usize,
}

impl TrainStage {
    fn with(max_epochs: usize, batch_size: usize, lr: f64) -> Self {
        TrainStage {
            max_epochs,
            batch_size,
            lr,
            weight_decay: 0.0,
            patience: 5,
            metric: "ndcg@10".into(),
            grad_clip: 5.0,
            grad_accum: 1,
            warmup_steps: 0,
        }
    }
}

/// `[train]`: one loop configuration per stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Baseline student training.
    pub student: TrainStage,
    /// Teacher fine-tuning.
    pub teacher: TrainStage,
    /// Distillation into the student.
    pub distill: TrainStage,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            student: TrainStage::with(200, 256, 1e-3),
            teacher: TrainStage {
                warmup_steps: 20,
                patience: 2,
                ..TrainStage::with(5, 8, 1e-4)
            },
            distill: TrainStage::with(200, 256, 1e-3),
        }
    }
}

/// A whole run configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Run seed; every random choice derives from it (SPEC 2.6).
    pub seed: u64,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 42,
            device: DeviceSpec::Cpu,
            dataset: DatasetConfig::default(),
            student: StudentConfig::default(),
            teacher: TeacherConfig::default(),
            distill: DistillConfig::default(),
            selection: SelectionConfig::default(),
            train: TrainConfig::default(),
            eval: EvalOptions::default(),
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
    /// errors), then the overrides.
    pub fn from_toml_str(
        text: &str,
        source_name: &str,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        let user: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: PathBuf::from(source_name),
            msg: e
                .to_string()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_string()
                + &location(text, &e),
        })?;
        let mut table = toml::Table::try_from(Config::default()).expect("defaults serialise");
        merge(&mut table, user);
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let cfg: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let msg = e.into_inner().to_string();
                ConfigError::Key {
                    source_name: source_name.to_string(),
                    key,
                    msg: msg.lines().next().unwrap_or("").trim().to_string(),
                }
            })?;
        cfg.check(source_name)?;
        Ok(cfg)
    }

    /// Loads a config file (or the defaults when `path` is None) with overrides.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|err| ConfigError::Io {
                    path: p.to_path_buf(),
                    err,
                })?;
                Self::from_toml_str(&text, &p.display().to_string(), overrides)
            }
            None => Self::from_toml_str("", "defaults", overrides),
        }
    }

    /// The fully resolved config as TOML (what a run directory stores).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Value checks that types alone cannot express.
    fn check(&self, source_name: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| {
            Err(ConfigError::Key {
                source_name: source_name.to_string(),
                key: key.to_string(),
                msg,
            })
        };
        if self.eval.ks.is_empty() || self.eval.ks.contains(&0) {
            return bad(
                "eval.ks",
                "must be a non-empty list of positive cut-offs".into(),
            );
        }
        for (name, st) in [
            ("student", &self.train.student),
            ("teacher", &self.train.teacher),
            ("distill", &self.train.distill),
        ] {
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
            if st.grad_accum == 0 {
                return bad(
                    &format!("train.{name}.grad_accum"),
                    "must be positive".into(),
                );
            }
            let known = st.metric.split_once('@').is_some_and(|(m, k)| {
                matches!(m, "hr" | "ndcg" | "recall" | "mrr")
                    && k.parse::<usize>().is_ok_and(|k| self.eval.ks.contains(&k))
            });
            if !known {
                return bad(
                    &format!("train.{name}.metric"),
                    format!(
                        "'{}' is not one of hr/ndcg/recall/mrr @ a K in eval.ks {:?}",
                        st.metric, self.eval.ks
                    ),
                );
            }
        }
        let s = &self.student;
        if s.hidden == 0 || s.max_len == 0 || s.layers == 0 {
            return bad(
                "student",
                "hidden, layers and max_len must be positive".into(),
            );
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
        if self.dataset.kind != DatasetKind::Synthetic
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
}

fn location(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, sets: &[&str]) -> Result<Config, ConfigError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::from_toml_str(text, "test.toml", &sets)
    }

    #[test]
    fn defaults_and_partial_groups_merge() {
        let c = load("[train.teacher]\nlr = 0.0002\n", &[]).unwrap();
        assert_eq!(c.train.teacher.lr, 2e-4);
        // a partial group keeps the stage's own defaults, not another stage's
        assert_eq!(c.train.teacher.max_epochs, 5);
        assert_eq!(c.train.student.max_epochs, 200);
        assert_eq!(
            c,
            load(&c.to_toml(), &[]).unwrap(),
            "resolved config round-trips"
        );
    }

    #[test]
    fn overrides_parse_values() {
        let c = load(
            "",
            &[
                "train.student.max_epochs=5",
                "eval.ks=[1, 10]",
                "student.model=gru4rec",
                "dataset.kind=ml-1m",
                "dataset.raw=/x",
            ],
        )
        .unwrap();
        assert_eq!(c.train.student.max_epochs, 5);
        assert_eq!(c.eval.ks, vec![1, 10]);
        assert_eq!(c.student.model, StudentKind::Gru4rec);
        assert_eq!(c.dataset.kind, DatasetKind::Ml1m);
        assert_eq!(c.dataset.raw.as_deref(), Some(Path::new("/x")));
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let e = load("[train.student]\nmax_epoch = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("test.toml: config key `train.student.max_epoch`"),
            "{e}"
        );
        assert!(e.contains("unknown field"), "{e}");
        let e = load("", &["train.student.max_epochs=many"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config key `train.student.max_epochs`: invalid type: string \"many\""),
            "{e}"
        );
        let e = load("", &["student.model=bert4rec"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`student.model`: unknown variant `bert4rec`"),
            "{e}"
        );
        let e = load("[student]\nhidden = \"big\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`student.hidden`"), "{e}");
        let e = load("", &["seed"]).unwrap_err().to_string();
        assert_eq!(e, "--set seed: expected key=value");
        let e = load("", &["seed.x=1"]).unwrap_err().to_string();
        assert!(e.contains("`seed` is not a group"), "{e}");
    }

    #[test]
    fn syntax_errors_and_value_checks() {
        let e = load("[student\nhidden = 3\n", &[]).unwrap_err().to_string();
        assert!(e.starts_with("test.toml: ") && e.contains("line 1"), "{e}");
        let e = load("", &["student.heads=3"]).unwrap_err().to_string();
        assert!(e.contains("`student.heads`: 3 does not divide"), "{e}");
        let e = load("", &["train.student.metric=auc@10"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`train.student.metric`"), "{e}");
        let e = load("", &["dataset.kind=ml-1m"]).unwrap_err().to_string();
        assert!(e.contains("`dataset.raw`"), "{e}");
    }
}

#[cfg(test)]
mod preset_tests {
    use super::*;

    /// Every preset in `configs/` resolves without error.
    #[test]
    fn presets_resolve() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Config::load(Some(&p), &[]).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 5, "expected the presets in {}", dir.display());
        let c = Config::load(Some(&dir.join("dllm2rec-game-sasrec.toml")), &[]).unwrap();
        assert_eq!(
            (c.student.max_len, c.student.loss, c.student.negatives),
            (10, LossKind::Bce, 1)
        );
        assert!(!c.eval.exclude_history);
        let c = Config::load(Some(&dir.join("ml-1m-sasrec.toml")), &[]).unwrap();
        assert_eq!(c.student.max_len, 200);
    }
}
