//! The bad-input corpus: every hostile or malformed input under
//! `tests/bad_inputs/<area>/<case>/` (plus the ones this file generates at
//! run time: the large ones, and raw data sets in the shared sets' layout)
//! goes through the real binary, under `prlimit --as=2000000000` when
//! `prlimit` exists, and must end with exit code 1 and exactly one
//! `error: ` line holding the expected text: no panic, no abort, no runaway
//! memory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Address-space limit the binary runs under (2 GB).
const AS_LIMIT: &str = "--as=2000000000";

/// One case: area, case directory (relative to `tests/bad_inputs`, or a
/// generated one), arguments (`{case}` = the case directory, `{tmp}` = a
/// fresh temporary directory), and the text the error line must contain.
struct Case {
    area: &'static str,
    name: &'static str,
    args: &'static [&'static str],
    want: &'static str,
}

const PREPARE: &[&str] = &["data", "prepare", "--raw", "{case}", "--out", "{tmp}/out"];

fn corpus() -> Vec<Case> {
    let c = |area, name, args, want| Case {
        area,
        name,
        args,
        want,
    };
    vec![
        // data
        c(
            "data",
            "GENERATED:ilora-huge-id",
            &["--dataset", "ilora"],
            "id2name.txt:2: item id 4000000000 is not below the limit of 16777216 items",
        ),
        c(
            "data",
            "GENERATED:dllm2rec-item-num",
            &["--dataset", "dllm2rec"],
            "data_statis.json: item_num 4000000000 is not in 1..16777216",
        ),
        c(
            "data",
            "GENERATED:dllm2rec-seq-size",
            &["--dataset", "dllm2rec"],
            "train_data.csv:2: seq holds 3 entries but data_statis.json says seq_size = 2",
        ),
        c(
            "data",
            "GENERATED:ml-100k-duplicate-id",
            &["--dataset", "ml-100k"],
            "u.item:3: movie id 1 is listed twice (first on line 1)",
        ),
        c(
            "data",
            "GENERATED:ml-100k-no-valid-users",
            &["--dataset", "ml-100k", "--split", "by_user"],
            "the valid split has no rows: dataset.valid_fraction = 0.1 of 4 users gives 0 users",
        ),
        c(
            "data",
            "GENERATED:gzip-3gb-line",
            &["--dataset", "amazon"],
            "reviews_Books.json.gz:2: line longer than 1048576 bytes",
        ),
        // checkpoint manifests (read before anything else by `recommend`)
        c(
            "checkpoint",
            "version-2",
            &[],
            "manifest version 2 is not supported",
        ),
        c(
            "checkpoint",
            "weights-parent-dirs",
            &[],
            "key `weights`: '../../../../etc/passwd' is not a plain file name",
        ),
        c(
            "checkpoint",
            "weights-absolute",
            &[],
            "key `weights`: '/etc/passwd' is not a plain file name",
        ),
        c(
            "checkpoint",
            "heads-zero",
            &[],
            "key `spec.heads`: 0 is not in 1..=65536",
        ),
        c(
            "checkpoint",
            "hidden-zero",
            &[],
            "key `spec.hidden`: 0 is not in 1..=65536",
        ),
        c(
            "checkpoint",
            "layers-zero",
            &[],
            "key `spec.layers`: 0 is not in 1..=1024",
        ),
        c(
            "checkpoint",
            "num-items-4e9",
            &[],
            "key `spec.num_items`: 4000000000 is not in 1..=16777216",
        ),
        c(
            "checkpoint",
            "hidden-1e9",
            &[],
            "key `spec.hidden`: 1000000000 is not in 1..=65536",
        ),
        c(
            "checkpoint",
            "max-len-4e9",
            &[],
            "key `spec.max_len`: 4000000000 is not in 1..=65536",
        ),
        c(
            "checkpoint",
            "heads-not-dividing",
            &[],
            "key `spec.heads`: 3 does not divide spec.hidden = 8",
        ),
        // configs
        c(
            "config",
            "weight-decay-nan",
            &[],
            "config key `train.student.weight_decay`: must be a finite number >= 0, got NaN",
        ),
        c(
            "config",
            "grad-clip-negative",
            &[],
            "config key `train.student.grad_clip`: must be a finite number >= 0",
        ),
        c(
            "config",
            "bce-no-negatives",
            &[],
            "config key `student.negatives`: must be at least 1",
        ),
        c(
            "config",
            "toml-syntax",
            &[],
            "config.toml: invalid TOML at line 3, column 10: ",
        ),
        c(
            "config",
            "directory",
            &[],
            "config.toml: is a directory, not a file",
        ),
        // LLM loading and context length
        c(
            "llm",
            "rope-theta-zero",
            &["llm", "logits", "--model", "{case}", "--prompt", "a"],
            "`rope_theta` must be a positive finite number, got 0",
        ),
        c(
            "llm",
            "eos-outside-vocab",
            &["llm", "logits", "--model", "{case}", "--prompt", "a"],
            "`eos_token_id` 50000 is outside the vocabulary (vocab_size 3)",
        ),
        c(
            "llm",
            "bos-outside-vocab",
            &["llm", "logits", "--model", "{case}", "--prompt", "a"],
            "`bos_token_id` 3 is outside the vocabulary (vocab_size 3)",
        ),
        c(
            "llm",
            "GENERATED:nan-weight",
            &["llm", "logits", "--model", "{case}", "--prompt", "a"],
            "tensor `model.layers.0.mlp.up_proj.weight`: holds a non-finite value",
        ),
        c(
            "llm",
            "GENERATED:prompt-20000-tokens",
            &["llm", "logits", "--model", "{case}", "--prompt", "@20000"],
            "a sequence of 20000 tokens exceeds the model's context length of 128 tokens",
        ),
        c(
            "llm",
            "GENERATED:generate-20000-tokens",
            &[
                "llm", "generate", "--raw", "--model", "{case}", "--prompt", "@20000",
            ],
            "a sequence of 20000 tokens exceeds the model's context length of 128 tokens",
        ),
        c(
            "llm",
            "GENERATED:bench-100000-tokens",
            &["bench", "llm", "--model", "{case}", "--tokens", "100000"],
            "a sequence of 100000 tokens exceeds the model's context length of 128 tokens",
        ),
        c(
            "llm",
            "GENERATED:gguf-alignment-zero.gguf",
            &["llm", "logits", "--model", "{case}", "--prompt", "a"],
            "not a valid GGUF file: general.alignment 0 is not a positive power of two",
        ),
        c(
            "llm",
            "GENERATED:gguf-huge-string.gguf",
            &["llm", "logits", "--model", "{case}", "--prompt", "a"],
            "not a valid GGUF file: a string: 1099511627776 bytes needed",
        ),
        c(
            "llm",
            "GENERATED:gguf-huge-tensor-count.gguf",
            &["llm", "logits", "--model", "{case}", "--prompt", "a"],
            "not a valid GGUF file: tensor infos: 12884901888 bytes needed",
        ),
        c(
            "llm",
            "GENERATED:gguf-zero-dims.gguf",
            &["llm", "logits", "--model", "{case}", "--prompt", "a"],
            "not a valid GGUF file: a tensor has 0 dimensions",
        ),
        c(
            "llm",
            "GENERATED:gguf-huge-u8-array.gguf",
            &["llm", "logits", "--model", "{case}", "--prompt", "a"],
            "not a valid GGUF file: the header would take more than 1073741824 bytes of memory",
        ),
        // issue 27 §7: sizes from configs and flags are bounded before allocation
        c(
            "bounds",
            "GENERATED:empty-hidden",
            &["train", "student", "--set", "student.hidden=1000000", "--out", "{tmp}/run"],
            "config key `student.hidden`: 1000000 is not in 1..=65536",
        ),
        c(
            "bounds",
            "GENERATED:empty-max-len",
            &["train", "student", "--set", "student.max_len=10000000", "--out", "{tmp}/run"],
            "config key `student.max_len`: 10000000 is not in 1..=65536",
        ),
        c(
            "bounds",
            "GENERATED:empty-max-len-memory",
            &["train", "student", "--set", "student.max_len=65536", "--out", "{tmp}/run"],
            "student.max_len = 65536 with train.student.batch_size = 256 and student.hidden = 64 needs about",
        ),
        c(
            "bounds",
            "GENERATED:empty-users",
            &[
                "data", "prepare", "--dataset", "synthetic", "--set",
                "dataset.synthetic.users=1000000000", "--out", "{tmp}/out",
            ],
            "dataset.synthetic.users = 1000000000 (of up to max_len = 60 interactions each, over 400 items) needs about 3.8 TB",
        ),
        c(
            "bounds",
            "GENERATED:empty-bench-items",
            &["bench", "student", "--items", "4000000000", "--steps", "1"],
            "train.student.batch_size = 256 with 4000000000 items needs about 16 TB",
        ),
        c(
            "bounds",
            "GENERATED:empty-bench-hidden",
            &["bench", "student", "--hidden", "10000000", "--steps", "1"],
            "config key `student.hidden`: 10000000 is not in 1..=65536",
        ),
        c(
            "bounds",
            "GENERATED:empty-bench-threads",
            &["bench", "student", "--threads", "100000", "--steps", "1"],
            "--threads 100000 is not in 1..=",
        ),
        c(
            "bounds",
            "GENERATED:empty-teacher-rank",
            &["train", "teacher", "--set", "teacher.rank=1000000000", "--out", "{tmp}/run"],
            "config key `teacher.rank`: 1000000000 is not in 1..=65536",
        ),
        c(
            "bounds",
            "GENERATED:empty-teacher-experts",
            &["train", "teacher", "--set", "teacher.experts=1000000", "--out", "{tmp}/run"],
            "config key `teacher.experts`: 1000000 is not in 1..=1024",
        ),
        // issue 27 §8: the unclear errors that remain
        c(
            "clear",
            "GENERATED:empty-data-given",
            &[
                "train", "student", "--data", "{case}/none", "--set", "dataset.kind=ml-1m",
                "--out", "{tmp}/run",
            ],
            "/none: directory does not exist",
        ),
        c(
            "clear",
            "GENERATED:gguf-v1.gguf",
            &["llm", "logits", "--model", "{case}", "--prompt", "a"],
            "GGUF version 1 is not supported (v2 and v3 are); re-convert with a current llama.cpp",
        ),
        c(
            "clear",
            "GENERATED:tokenizer-unknown-type",
            &["llm", "logits", "--model", "{case}", "--prompt", "a"],
            "tokenizer.json: the `pre_tokenizer` section (type \"NoSuchSplit\") is not one the tokenizers library reads",
        ),
        c(
            "clear",
            "GENERATED:ml-1m-negative-user",
            &["data", "prepare", "--dataset", "ml-1m", "--raw", "{case}", "--out", "{tmp}/out"],
            "ratings.dat:1: user id '-5' is negative; it must be a non-negative integer",
        ),
        c(
            "clear",
            "GENERATED:empty-teacher-epochs",
            &["train", "teacher", "--set", "train.teacher.max_epochs=0", "--out", "{tmp}/run"],
            "config key `train.teacher.max_epochs`: must be at least 1",
        ),
        c(
            "clear",
            "GENERATED:empty-distill-epochs",
            &["train", "student", "--set", "train.student.max_epochs=0", "--out", "{tmp}/run"],
            "config key `train.student.max_epochs`: must be at least 1",
        ),
        c(
            "clear",
            "GENERATED:empty-checkpoint-dir",
            &["recommend", "--checkpoint", "{case}", "--history", "1"],
            "is a directory; give a checkpoint file (<run>/checkpoints/best.json)",
        ),
        c(
            "clear",
            "GENERATED:teacher-manifest",
            &["recommend", "--checkpoint", "{case}/best.json", "--history", "1"],
            "this is a teacher checkpoint, but a student checkpoint is expected",
        ),
        c(
            "clear",
            "GENERATED:empty-backbone-dev-zero",
            &["llm", "logits", "--model", "/dev/zero", "--prompt", "a"],
            "/dev/zero: is neither a regular file nor a directory; give a GGUF file or a Hugging Face model directory",
        ),
        c(
            "clear",
            "GENERATED:empty-runs-label",
            &["report", "--runs", "x=", "--out", "{tmp}/report"],
            "--runs 'x=': expected DIR or LABEL=DIR with both parts non-empty",
        ),
        // issue 27 §4: sweeps say what they will do before they do it
        c(
            "sweep",
            "GENERATED:sweep-grid-key-twice",
            &[
                "sweep",
                "--out",
                "{tmp}/sw",
                "--grid",
                "distill.lambda=0.5,0.6",
                "--grid",
                "distill.lambda=0.7",
            ],
            "--grid distill.lambda: the key is swept twice",
        ),
        c(
            "sweep",
            "GENERATED:sweep-set-and-grid-key",
            &[
                "sweep",
                "--out",
                "{tmp}/sw",
                "--set",
                "distill.lambda=0.5,0.6",
                "--grid",
                "distill.lambda=0.7",
            ],
            "--grid distill.lambda: the key is swept twice",
        ),
        c(
            "sweep",
            "GENERATED:sweep-dir-collision",
            &[
                "sweep",
                "--out",
                "{tmp}/sw",
                "--grid",
                "dataset.name=a/b,a_b",
            ],
            "sweep runs `dataset.name=a/b` and `dataset.name=a_b` would share the directory",
        ),
        c(
            "sweep",
            "GENERATED:sweep-over-max-runs",
            &[
                "sweep",
                "--out",
                "{tmp}/sw",
                "--grid",
                "distill.lambda=0.1,0.2,0.3",
                "--seeds",
                "1,2",
                "--max-runs",
                "5",
            ],
            "3 settings × 2 seeds = 6 runs, more than --max-runs 5",
        ),
        // issue 27 §6: reports are what they look like
        c(
            "report",
            "GENERATED:report-run-twice",
            &[
                "report",
                "--runs",
                "{case}/r-s1",
                "{case}/r-s1",
                "--out",
                "{tmp}/out",
            ],
            "r-s1: the run is given twice (as `r` and `r`)",
        ),
        c(
            "report",
            "GENERATED:report-run-twice-two-labels",
            &[
                "report",
                "--runs",
                "a={case}/r-s1",
                "b={case}/../report-run-twice-two-labels/r-s1",
                "--out",
                "{tmp}/out",
            ],
            "the run is given twice (as `a` and `b`), so it would count as two seeds",
        ),
        c(
            "report",
            "GENERATED:report-empty-label",
            &["report", "--runs", "={case}/r-s1", "--out", "{tmp}/out"],
            "expected DIR or LABEL=DIR with both parts non-empty",
        ),
        // issue 27 §2: an output onto the backbone it reads (the tiny model
        // of the 100000-token case)
        c(
            "llm",
            "GENERATED:bench-100000-tokens",
            &[
                "llm",
                "embed-items",
                "--model",
                "{case}",
                "--data",
                "{tmp}",
                "--out",
                "{case}/model.safetensors",
            ],
            "--out lies inside the input",
        ),
        c(
            "llm",
            "GENERATED:bench-100000-tokens",
            &[
                "llm",
                "logits",
                "--model",
                "{case}",
                "--prompt",
                "a",
                "--out",
                "{case}/config.json",
            ],
            "--out lies inside the input",
        ),
        // issue 28 §4: [distill] is checked with the config, before any data or cache loads
        c(
            "clear",
            "GENERATED:empty-distill-k",
            &[
                "distill",
                "--set",
                "distill.k=0",
                "--teacher-cache",
                "{tmp}/no-cache",
                "--out",
                "{tmp}/run",
            ],
            "config key `distill.k`: must be at least 1",
        ),
        c(
            "clear",
            "GENERATED:empty-distill-tau",
            &[
                "distill",
                "--set",
                "distill.tau=0.0",
                "--teacher-cache",
                "{tmp}/no-cache",
                "--out",
                "{tmp}/run",
            ],
            "config key `distill.tau`: 0: must be a finite number > 0",
        ),
        // issue 28 §1: bench llm's teacher steps (the tiny model of the
        // 100000-token case)
        c(
            "llm",
            "GENERATED:bench-100000-tokens",
            &[
                "bench", "llm", "--model", "{case}", "--step", "lm", "--dump", "{tmp}/d",
            ],
            "--dump is for --step teacher and --step infer",
        ),
        c(
            "llm",
            "GENERATED:bench-100000-tokens",
            &[
                "bench", "llm", "--model", "{case}", "--step", "teacher", "--items", "5",
            ],
            "--items 5 must be in 20..=1000000 for the teacher steps",
        ),
        c(
            "llm",
            "GENERATED:bench-100000-tokens",
            &[
                "bench",
                "llm",
                "--model",
                "{case}",
                "--step",
                "infer",
                "--dump",
                "{case}/dump.safetensors",
            ],
            "--dump lies inside the input",
        ),
        // teacher plan: the backbone config and the flags
        c(
            "llm",
            "plan-bad-config",
            &[
                "teacher",
                "plan",
                "--backbone",
                "{case}/config.json",
                "--no-measure",
            ],
            "config.json: bad JSON",
        ),
        c(
            "llm",
            "plan-bad-config",
            &[
                "teacher",
                "plan",
                "--backbone",
                "{case}/config.json",
                "--memory-gb=-3",
            ],
            "--memory-gb -3 must be a positive number of gigabytes",
        ),
        c(
            "llm",
            "plan-bad-config",
            &[
                "teacher",
                "plan",
                "--backbone",
                "{case}/config.json",
                "--prompt-tokens",
                "0",
            ],
            "--prompt-tokens must be positive",
        ),
        // <helper serve>: `serve` refuses before it listens
        c(
            "clear",
            "GENERATED:empty-checkpoint-dir",
            &["serve", "--checkpoint", "{case}", "--addr", "127.0.0.1:0"],
            "is a directory; give a checkpoint file (<run>/checkpoints/best.json)",
        ),
        c(
            "clear",
            "GENERATED:empty-checkpoint-dir",
            &["serve", "--checkpoint", "{case}", "--max-batch", "0"],
            "--max-batch must be at least 1",
        ),
        c(
            "clear",
            "GENERATED:teacher-manifest",
            &["serve", "--checkpoint", "{case}/best.json", "--max-connections", "0"],
            "--max-connections must be at least 1",
        ),
        c(
            "clear",
            "GENERATED:teacher-manifest",
            &["serve", "--checkpoint", "{case}/best.json", "--addr", "127.0.0.1:0"],
            "this is a teacher checkpoint, but a student checkpoint is expected",
        ),
        c(
            "clear",
            "GENERATED:empty-checkpoint-dir",
            &["bench", "serve", "--url", "http://10.1.2.3:80/recommend", "--duration", "1s"],
            "only targets loopback addresses",
        ),
        c(
            "clear",
            "GENERATED:empty-checkpoint-dir",
            &["bench", "serve", "--duration", "900s"],
            "--duration 900s: give a time in (0, 600] seconds",
        ),
        c(
            "clear",
            "GENERATED:empty-checkpoint-dir",
            &["serve", "--checkpoint", "{case}", "--idle-timeout-ms", "5000"],
            "--idle-timeout-ms 5000 must be above --timeout-ms 10000",
        ),
        // <helper gpu>: the teacher's backbone dtype and the device bench flags
        c(
            "clear",
            "GENERATED:empty-gpu",
            &["train", "teacher", "--set", "teacher.dtype=\"f64\"", "--out", "{tmp}/run"],
            "config key `teacher.dtype`: unknown variant `f64`, expected one of `auto`, `f32`, `bf16`, `f16`",
        ),
        c(
            "clear",
            "GENERATED:empty-gpu",
            &["bench", "llm", "--model", "{case}", "--step", "teacher", "--dtype", "f64"],
            "--dtype 'f64': 'f64' is not one of auto, f32, bf16, f16",
        ),
        c(
            "clear",
            "GENERATED:empty-gpu",
            &["bench", "llm", "--model", "{case}", "--step", "lm", "--grads-out", "{tmp}/g.safetensors"],
            "--grads-out is for --step teacher and --step infer",
        ),
        c(
            "clear",
            "GENERATED:empty-gpu",
            &["bench", "llm", "--model", "{case}", "--step", "teacher", "--random-weights"],
            "config.json: file not found",
        ),
        c(
            "clear",
            "GENERATED:gpu-small-vocab",
            &["bench", "llm", "--model", "{case}", "--step", "teacher", "--random-weights"],
            "vocab_size 100 is below the 257 ids of the byte tokenizer",
        ),
        // <helper cuda>: `teacher plan --device cuda` measuring a GPU this
        // (CPU) build cannot open names --no-measure, which plans without it
        c(
            "llm",
            "plan-gpu-not-here",
            &[
                "teacher",
                "plan",
                "--backbone",
                "{case}/config.json",
                "--device",
                "cuda",
                "--memory-gb",
                "80",
            ],
            "measuring the throughput (--no-measure plans without opening the device)",
        ),
    ]
}

/// Default arguments of an area (the case's own come after).
fn area_args(c: &Case) -> Vec<&'static str> {
    match c.area {
        "data" => PREPARE
            .iter()
            .copied()
            .chain(c.args.iter().copied())
            .collect(),
        "checkpoint" => vec![
            "recommend",
            "--checkpoint",
            "{case}/best.json",
            "--history",
            "1",
        ],
        "config" => vec![
            "train",
            "student",
            "--config",
            "{case}/config.toml",
            "--out",
            "{tmp}/run",
        ],
        _ => c.args.to_vec(),
    }
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_inputs")
}

fn has_prlimit() -> bool {
    Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(args: &[String]) -> Output {
    let bin = env!("CARGO_BIN_EXE_distillrec");
    let mut cmd = if has_prlimit() {
        let mut c = Command::new("prlimit");
        c.arg(AS_LIMIT).arg("--").arg(bin);
        c
    } else {
        Command::new(bin)
    };
    // progress logs off, as in `common::bin`: commands that open a run
    // directory log their stages at info level on stderr
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .env("RAYON_NUM_THREADS", "1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run distillrec")
}

/// A little-endian byte builder for hand-made binary files.
#[derive(Default)]
struct Bytes(Vec<u8>);

impl Bytes {
    fn u32(&mut self, x: u32) -> &mut Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn u64(&mut self, x: u64) -> &mut Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
}

/// A GGUF v3 header: magic, version, tensor count, metadata count.
fn gguf_head(tensors: u64, kvs: u64) -> Bytes {
    let mut b = Bytes::default();
    b.u32(0x4655_4747).u32(3).u64(tensors).u64(kvs);
    b
}

/// A `tokenizer.json` (word level over `<unk> a b`) and `config.json` of a
/// one-layer Llama with hidden size 8 and context 128, and its weights
/// (safetensors written by hand), with `nan_in` set to NaN if given.
fn tiny_model(dir: &Path, nan_in: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(
        corpus_dir().join("llm/rope-theta-zero/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg["rope_theta"] = 10000.0.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "a": 1, "b": 2}, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let h = 8usize;
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![3, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    for m in ["input_layernorm", "post_attention_layernorm"] {
        tensors.push((format!("model.layers.0.{m}.weight"), vec![h]));
    }
    for m in [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ] {
        tensors.push((format!("model.layers.0.{m}.weight"), vec![h, h]));
    }
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape) in &tensors {
        let n: usize = shape.iter().product();
        let start = data.len();
        for i in 0..n {
            let x = if nan_in == Some(name.as_str()) && i == 3 {
                f32::NAN
            } else {
                0.01 * ((i % 7) as f32 + 1.0)
            };
            data.extend_from_slice(&x.to_le_bytes());
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut file = Vec::new();
    file.extend_from_slice(&(head.len() as u64).to_le_bytes());
    file.extend_from_slice(&head);
    file.extend_from_slice(&data);
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
}

/// Builds a generated case in `tmp` and returns its path.
fn generate(name: &str, tmp: &Path) -> PathBuf {
    let p = tmp.join(name);
    match name {
        "gzip-3gb-line" => {
            // One gzip member of 1 MiB without a newline, repeated 3072
            // times: about 3 MB on disk, one 3 GiB line once decompressed.
            std::fs::create_dir_all(&p).unwrap();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            gz.write_all(&vec![b'x'; 1 << 20]).unwrap();
            let member = gz.finish().unwrap();
            let mut first = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            first
                .write_all(
                    b"{\"reviewerID\":\"u\",\"asin\":\"i\",\"overall\":5,\"unixReviewTime\":1}\n",
                )
                .unwrap();
            let mut f = std::fs::File::create(p.join("reviews_Books.json.gz")).unwrap();
            f.write_all(&first.finish().unwrap()).unwrap();
            for _ in 0..3072 {
                f.write_all(&member).unwrap();
            }
        }
        // Raw data sets in the layout of the shared ones, a few lines each,
        // written here rather than tracked (no file in the tree looks like
        // shared data).
        "ilora-huge-id" => write_files(
            &p,
            &[
                ("id2name.txt", "0::A\n4000000000::Huge\n"),
                (
                    "train_data.jsonl",
                    "{\"seq\":[0,1,4,4],\"len_seq\":2,\"next\":2}\n",
                ),
                (
                    "Val_data.jsonl",
                    "{\"seq\":[0,1,2,4],\"len_seq\":3,\"next\":3}\n",
                ),
                (
                    "Test_data.jsonl",
                    "{\"seq\":[0,1,2,4],\"len_seq\":3,\"next\":3}\n",
                ),
            ],
        ),
        "dllm2rec-item-num" => dllm2rec(&p, "{\"seq_size\":3,\"item_num\":4000000000}"),
        "dllm2rec-seq-size" => dllm2rec(&p, "{\"seq_size\":2,\"item_num\":5}"),
        "ml-100k-duplicate-id" => write_files(
            &p,
            &[
                ("u.data", "1\t1\t3\t100\n1\t2\t3\t101\n1\t1\t3\t102\n"),
                ("u.item", "1|A (1995)|x\n2|B (1995)|x\n1|C (1995)|x\n"),
            ],
        ),
        "ml-100k-no-valid-users" => {
            // 4 users with 4 ratings each of items 1..3
            let data: String = (1..=4)
                .flat_map(|u| (0..4).map(move |k| (u, k)))
                .map(|(u, k)| format!("{u}\t{}\t3\t{}\n", (u + k) % 3 + 1, 100 + k))
                .collect();
            write_files(
                &p,
                &[
                    ("u.data", &data),
                    ("u.item", "1|A (1995)|x\n2|B (1995)|x\n3|C (1995)|x\n"),
                ],
            )
        }
        "nan-weight" => tiny_model(&p, Some("model.layers.0.mlp.up_proj.weight")),
        "prompt-20000-tokens" | "generate-20000-tokens" | "bench-100000-tokens" => {
            tiny_model(&p, None)
        }
        "gguf-alignment-zero.gguf" => {
            let mut b = gguf_head(0, 1);
            b.str("general.alignment").u32(4).u32(0);
            std::fs::write(&p, &b.0).unwrap();
        }
        "gguf-huge-string.gguf" => {
            let mut b = gguf_head(0, 1);
            b.str("general.name").u32(8).u64(1 << 40);
            std::fs::write(&p, &b.0).unwrap();
        }
        "gguf-huge-tensor-count.gguf" => {
            let b = gguf_head(1 << 29, 0);
            std::fs::write(&p, &b.0).unwrap();
        }
        "gguf-zero-dims.gguf" => {
            let mut b = gguf_head(1, 0);
            b.str("token_embd.weight").u32(0).u32(0).u64(0);
            std::fs::write(&p, &b.0).unwrap();
        }
        "gguf-huge-u8-array.gguf" => {
            // 40 M one-byte elements: 40 MB on disk, 1.3 GB as parsed values.
            let n: u64 = 40_000_000;
            let mut b = gguf_head(0, 1);
            b.str("tokenizer.ggml.token_type").u32(9).u32(0).u64(n);
            b.0.resize(b.0.len() + n as usize, 1);
            std::fs::write(&p, &b.0).unwrap();
        }
        "gguf-v1.gguf" => {
            let mut b = Bytes::default();
            b.u32(0x4655_4747).u32(1).u32(0).u32(0);
            std::fs::write(&p, &b.0).unwrap();
        }
        "tokenizer-unknown-type" => {
            tiny_model(&p, None);
            let path = p.join("tokenizer.json");
            let mut tok: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            tok["pre_tokenizer"] = serde_json::json!({"type": "NoSuchSplit"});
            std::fs::write(&path, tok.to_string()).unwrap();
        }
        "ml-1m-negative-user" => write_files(
            &p,
            &[
                ("ratings.dat", "-5::1::3::100\n"),
                ("movies.dat", "1::A (1995)::x\n"),
            ],
        ),
        "teacher-manifest" => write_files(
            &p,
            &[(
                "best.json",
                "{\"format\": \"distillrec-teacher\", \"version\": 2, \"weights\": \"best.safetensors\"}",
            )],
        ),
        // cases that need no files, only a directory to run in
        empty if empty.starts_with("empty-") => std::fs::create_dir_all(&p).unwrap(),
        // a `config.json` alone, too small a vocabulary for random weights
        "gpu-small-vocab" => write_files(
            &p,
            &[(
                "config.json",
                r#"{"model_type": "llama", "vocab_size": 100, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-5}"#,
            )],
        ),
        // issue 27 §4, §6: an empty case directory for the sweeps, one
        // finished run for the reports
        n if n.starts_with("sweep-") => std::fs::create_dir_all(&p).unwrap(),
        n if n.starts_with("report-") => write_files(
            &p.join("r-s1"),
            &[
                (
                    "run.json",
                    r#"{"command": ["distillrec", "train", "student"], "status": "ok"}"#,
                ),
                ("metrics.json", r#"{"test": {"hr@10": 0.5}}"#),
            ],
        ),
        other => panic!("no generator for {other}"),
    }
    p
}

/// Writes `files` (name, contents) into a new directory `dir`.
fn write_files(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// A DLLM2Rec data set of two rows per split with the given `data_statis.json`.
fn dllm2rec(dir: &Path, statis: &str) {
    let rows = "seq,len_seq,next\n\"[1, 1, 5]\",2,4.0\n\"[0, 2, 3]\",3,1.0\n";
    write_files(
        dir,
        &[
            ("data_statis.json", statis),
            ("train_data.csv", rows),
            ("val_data.csv", rows),
            ("test_data.csv", rows),
        ],
    );
}

#[test]
fn every_bad_input_ends_with_one_clean_error() {
    let cases = corpus();
    let mut failures = Vec::new();
    for c in &cases {
        let tmp = tempfile::tempdir().unwrap();
        let case_dir = match c.name.strip_prefix("GENERATED:") {
            Some(g) => generate(g, tmp.path()),
            None => corpus_dir().join(c.area).join(c.name),
        };
        assert!(case_dir.exists(), "{}", case_dir.display());
        let args: Vec<String> = area_args(c)
            .iter()
            .map(|a| match a.strip_prefix('@') {
                // `@N`: a prompt of N words (one token each).
                Some(n) => vec!["a"; n.parse().unwrap()].join(" "),
                None => a
                    .replace("{case}", &case_dir.display().to_string())
                    .replace("{tmp}", &tmp.path().display().to_string()),
            })
            .collect();
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let ok = out.status.code() == Some(1)
            && lines.len() == 1
            && lines[0].starts_with("error: ")
            && lines[0].contains(c.want);
        if !ok {
            failures.push(format!(
                "{}/{}: exit {:?}, want '{}', stderr: {}",
                c.area,
                c.name,
                out.status.code(),
                c.want,
                stderr.trim()
            ));
        }
    }
    let mut by_area = std::collections::BTreeMap::new();
    for c in &cases {
        *by_area.entry(c.area).or_insert(0) += 1;
    }
    eprintln!("bad-input cases by area: {by_area:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_corpus_directory_has_a_case() {
    let cases = corpus();
    for area in std::fs::read_dir(corpus_dir()).unwrap() {
        let area = area.unwrap();
        for case in std::fs::read_dir(area.path()).unwrap() {
            let (a, n) = (
                area.file_name().to_string_lossy().into_owned(),
                case.unwrap().file_name().to_string_lossy().into_owned(),
            );
            assert!(
                cases.iter().any(|c| c.area == a && c.name == n),
                "{a}/{n} has no entry in the table"
            );
        }
    }
}
