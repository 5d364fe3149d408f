//! `distillrec llm ...` and `distillrec bench llm`: the LLM backbone from the
//! command line (generation, logits, item-title embeddings, speed).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use distillrec_data::{fsutil, store};
use distillrec_llm::bench::{bench_ids, prefill, LoraTrainer};
use distillrec_llm::embed::{item_table, save_table};
use distillrec_llm::generate::{generate, next_logits, GenerateOptions};
use distillrec_llm::model::Target;
use distillrec_llm::{load, KvCache, Llm, LoadOptions};

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
}

impl ModelArgs {
    fn load(&self) -> Result<Llm> {
        let opts = LoadOptions {
            num_layers: self.num_layers,
            ..Default::default()
        };
        load(&self.model, &opts).with_context(|| format!("loading {}", self.model.display()))
    }
}

/// Arguments of `llm generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
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
}

/// Arguments of `bench llm`.
#[derive(Args, Debug)]
pub struct BenchLlmArgs {
    /// Hugging Face model directory or GGUF file.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    /// Timed repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// LoRA rank of the training step (adapters on q_proj and v_proj of every layer).
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
}

/// Candle runs element-wise ops on its own spinning thread pool besides the
/// rayon threads of matmuls; on small machines (and under load) the spinning
/// workers steal cycles from the matmuls. Unless the user chose otherwise,
/// element-wise ops stay on the calling thread; matmuls still use every
/// `RAYON_NUM_THREADS` core. Must run before the first tensor op.
fn tune_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Runs an `llm` subcommand.
pub fn run(c: LlmCommand) -> Result<()> {
    tune_threads();
    match c {
        LlmCommand::Generate(a) => llm_generate(a),
        LlmCommand::Logits(a) => llm_logits(a),
        LlmCommand::EmbedItems(a) => embed_items(a),
    }
}

fn prompt_ids(llm: &Llm, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    let text = if chat {
        llm.chat.render(prompt)
    } else {
        prompt.to_string()
    };
    let add_special = !(chat && llm.chat.includes_bos());
    let ids = llm.tokenizer.encode(&text, add_special)?;
    if ids.is_empty() {
        bail!("the prompt has no tokens");
    }
    Ok(ids)
}

fn llm_generate(a: GenerateArgs) -> Result<()> {
    let llm = a.model.load()?;
    let ids = prompt_ids(&llm, &a.prompt, !a.raw)?;
    let mut stop = if a.raw {
        Vec::new()
    } else {
        llm.chat.stop_strings()
    };
    stop.extend(a.stop);
    let t0 = Instant::now();
    let g = generate(
        &llm.model,
        &llm.tokenizer,
        &ids,
        &GenerateOptions {
            max_tokens: a.max_tokens,
            stop,
        },
    )?;
    let secs = t0.elapsed().as_secs_f64();
    println!("{}", g.text.trim());
    eprintln!(
        "[{} prompt tokens, {} generated in {secs:.2}s, finish: {:?}]",
        ids.len(),
        g.ids.len(),
        g.finish
    );
    Ok(())
}

fn llm_logits(a: LogitsArgs) -> Result<()> {
    let llm = a.model.load()?;
    let ids = prompt_ids(&llm, &a.prompt, a.chat)?;
    let mut cache = KvCache::new(&llm.model);
    let logits = next_logits(&llm.model, &ids, &mut cache)?;
    let json = serde_json::json!({ "ids": ids, "logits": logits });
    match a.out {
        Some(p) => fsutil::atomic_write(&p, json.to_string().as_bytes())?,
        None => println!("{json}"),
    }
    Ok(())
}

fn embed_items(a: EmbedItemsArgs) -> Result<()> {
    let t0 = Instant::now();
    let ds = store::load(&a.data)?;
    let manifest = store::read_manifest(&a.data)?;
    let llm = a.model.load()?;
    let t_load = t0.elapsed().as_secs_f64();
    let table = item_table(&llm.model, &llm.tokenizer, &ds, a.batch_size)?;
    let t_embed = t0.elapsed().as_secs_f64() - t_load;
    let meta = HashMap::from([
        ("dataset".to_string(), manifest.name.clone()),
        (
            "dataset_fingerprint".to_string(),
            manifest.fingerprint.clone(),
        ),
        ("model".to_string(), a.model.model.display().to_string()),
        (
            "num_layers".to_string(),
            llm.model.config().num_hidden_layers.to_string(),
        ),
        (
            "pooling".to_string(),
            "last_token_last_hidden_state".to_string(),
        ),
    ]);
    save_table(&a.out, &table, meta)?;
    let (n, h) = table.dims2()?;
    println!(
        "wrote {} ({} items + padding row, hidden {h}); load {t_load:.1}s, embed {t_embed:.1}s, total {:.1}s, peak RSS {}",
        a.out.display(),
        n - 1,
        t0.elapsed().as_secs_f64(),
        peak_rss()
    );
    Ok(())
}

/// Peak resident memory (VmHWM) of this process, for reports.
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l["VmHWM:".len()..].trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `bench llm`.
pub fn bench(a: BenchLlmArgs) -> Result<()> {
    tune_threads();
    if a.tokens < 2 || a.repeats == 0 {
        bail!("--tokens must be at least 2 and --repeats at least 1");
    }
    let mut llm = load(&a.model, &LoadOptions::default())
        .with_context(|| format!("loading {}", a.model.display()))?;
    let ids = bench_ids(a.tokens, llm.model.config().vocab_size);
    prefill(&llm.model, &ids)?; // warm-up
    let mut prefill_s = Vec::new();
    for _ in 0..a.repeats {
        let t = Instant::now();
        prefill(&llm.model, &ids)?;
        prefill_s.push(t.elapsed().as_secs_f64());
    }
    let mut trainer = LoraTrainer::new(
        &mut llm.model,
        &[Target::Q, Target::V],
        a.lora_rank,
        2.0 * a.lora_rank as f64,
        1e-4,
    )?;
    trainer.step(&llm.model, &ids)?; // warm-up
    let mut train_s = Vec::new();
    for _ in 0..a.repeats.clamp(1, 3) {
        let t = Instant::now();
        trainer.step(&llm.model, &ids)?;
        train_s.push(t.elapsed().as_secs_f64());
    }
    let (p, s) = (median(prefill_s), median(train_s));
    let name = a
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!(
        "RESULT impl=distillrec model={name} tokens={} threads={} prefill_tok_s={:.1} train_tok_s={:.1} prefill_ms={:.1} train_step_ms={:.1} peak_rss={}",
        a.tokens,
        candle_core::utils::get_num_threads(),
        a.tokens as f64 / p,
        a.tokens as f64 / s,
        p * 1e3,
        s * 1e3,
        peak_rss().replace(' ', "")
    );
    Ok(())
}
