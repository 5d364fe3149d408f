//! Command-line definitions. Every option has help text (`--help`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Distil LLM-based sequential recommenders into small, fast conventional ones.
#[derive(Parser, Debug)]
#[command(name = "distillrec", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands, in pipeline order.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Prepare datasets and inspect them.
    #[command(subcommand)]
    Data(DataCommand),
    /// Train models.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Evaluate models and baselines.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Teacher caches: from a student checkpoint, from plain files, merge shards.
    #[command(subcommand)]
    Teacher(crate::distill_cmd::TeacherCommand),
    /// Choose the training rows that get teacher supervision (selection policies).
    Select(crate::distill_cmd::SelectArgs),
    /// Distil a teacher cache into a student (DLLM2Rec: ranking, embedding, DRO).
    Distill(crate::distill_cmd::DistillArgs),
    /// Aggregate finished runs into tables (CSV, Markdown) and plots (models, budget curve).
    Report(crate::report_cmd::ReportArgs),
    /// Print a trained student's top items for a history.
    Recommend(RecommendArgs),
    /// Run every available stage from one config (the main job).
    Pipeline(PipelineArgs),
    /// LLM backbone: generation and item-title embeddings.
    #[command(subcommand)]
    Llm(crate::llm_cmd::LlmCommand),
    /// Speed and memory benchmarks against the PyTorch references.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// `bench` subcommands.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// One SASRec training step, comparable with ../shared/bench/torch_sasrec_step.py.
    Student(crate::bench_cmd::BenchStudentArgs),
    /// LLM prefill tokens/s and one LoRA training step's tokens/s.
    Llm(crate::llm_cmd::BenchLlmArgs),
}

/// Configuration file and overrides, shared by commands that take a config.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// TOML config file (see configs/); defaults are used for missing keys.
    #[arg(long, value_name = "TOML")]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. `--set train.student.max_epochs=5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// `data` subcommands.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Read a raw dataset, filter and split it, and save it in the prepared format.
    Prepare(Box<PrepareArgs>),
    /// Print users, items, interactions, density, length distribution and split sizes.
    Stats(StatsArgs),
}

/// Arguments of `data prepare`.
#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// Source layout: synthetic, ml-100k, ml-1m, amazon, csv, dllm2rec or ilora.
    #[arg(long, value_name = "NAME")]
    pub dataset: String,
    /// Directory with the raw files (not needed for synthetic).
    #[arg(long, value_name = "DIR")]
    pub raw: Option<PathBuf>,
    /// Output directory for the prepared dataset.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Split strategy: leave_one_out, temporal or by_user (raw-log layouts).
    #[arg(long, value_name = "SPLIT")]
    pub split: Option<String>,
    /// Keep only interactions rated at least this (default: every rating counts).
    #[arg(long, value_name = "R")]
    pub min_rating: Option<f32>,
    /// k-core filter on users and items (0: off).
    #[arg(long, value_name = "K")]
    pub k_core: Option<usize>,
    /// Drop users with fewer interactions than this (default 3).
    #[arg(long, value_name = "N")]
    pub min_seq_len: Option<usize>,
    /// Drop rows with a shorter history (default 1; 3 for ilora as in its loaders).
    #[arg(long, value_name = "N")]
    pub min_history: Option<usize>,
    /// Consecutive repeats: keep or drop_consecutive.
    #[arg(long, value_name = "MODE")]
    pub dedup: Option<String>,
    /// Seed for the split and the synthetic generator.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Config file and overrides for the `[dataset]` group.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `data stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// A prepared dataset directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `train` subcommands.
#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// Train a student (SASRec, GRU4Rec, Caser); re-running the same command resumes.
    Student(TrainStudentArgs),
}

/// Arguments of `train student`.
#[derive(Args, Debug)]
pub struct TrainStudentArgs {
    /// A prepared dataset directory (overrides dataset.prepared / dataset.raw of the config).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Run directory (config.toml, run.json, metrics.json, history.csv, checkpoints/, run.log).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Config file and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `eval` subcommands.
#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Evaluate the most-popular-items baseline (popularity from training rows only).
    Popularity(PopularityArgs),
    /// Evaluate a student checkpoint on validation and test.
    Student(EvalStudentArgs),
}

/// Arguments of `eval student`.
#[derive(Args, Debug)]
pub struct EvalStudentArgs {
    /// Checkpoint weights (`.safetensors`) or manifest (`.json`).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// The prepared dataset the checkpoint was trained on (fingerprints must match).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Optional run directory for metrics.json and run.json.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Config file and overrides for the `[eval]` group.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `recommend`.
#[derive(Args, Debug)]
pub struct RecommendArgs {
    /// Checkpoint weights (`.safetensors`) or manifest (`.json`).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// The prepared dataset (default: the one recorded when the checkpoint was trained).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// History, oldest first: raw item ids or titles separated by `,` (or by `|` when titles contain commas).
    #[arg(long, value_name = "ITEMS")]
    pub history: String,
    /// How many items to print.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Also recommend items already in the history.
    #[arg(long)]
    pub include_history: bool,
}

/// Arguments of `eval popularity`.
#[derive(Args, Debug)]
pub struct PopularityArgs {
    /// A prepared dataset directory.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Run directory to write (config.toml, run.json, metrics.json, run.log).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Config file and overrides for the `[eval]` group.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `pipeline`.
#[derive(Args, Debug)]
pub struct PipelineArgs {
    /// Run directory; each stage writes a subdirectory and `report.md` sums up.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Config file and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
}
