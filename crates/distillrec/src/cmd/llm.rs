//! `llm generate | logits | embed-items` and `bench llm`.

use anyhow::Result;

use distillrec_data::fsutil;
use distillrec_pipeline::llm::{self, Backbone};

use crate::args::{BenchLlmArgs, EmbedItemsArgs, GenerateArgs, LlmCommand, LogitsArgs, ModelArgs};
use crate::common::device;

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
        LlmCommand::Generate(a) => generate(a),
        LlmCommand::Logits(a) => logits(a),
        LlmCommand::EmbedItems(a) => embed_items(a),
    }
}

fn backbone(m: &ModelArgs) -> Backbone {
    Backbone {
        path: m.model.clone(),
        num_layers: m.num_layers,
    }
}

fn generate(a: GenerateArgs) -> Result<()> {
    let device = device(&a.model.device)?;
    let g = llm::generate(
        &backbone(&a.model),
        &a.prompt,
        a.max_tokens,
        a.raw,
        a.stop,
        &device,
    )?;
    println!("{}", g.generation.text.trim());
    eprintln!(
        "[{} prompt tokens, {} generated in {:.2}s, finish: {:?}]",
        g.prompt_tokens,
        g.generation.ids.len(),
        g.secs,
        g.generation.finish
    );
    Ok(())
}

fn logits(a: LogitsArgs) -> Result<()> {
    let device = device(&a.model.device)?;
    let (ids, logits) = llm::logits(&backbone(&a.model), &a.prompt, a.chat, &device)?;
    let json = serde_json::json!({ "ids": ids, "logits": logits });
    match a.out {
        Some(p) => fsutil::atomic_write(&p, json.to_string().as_bytes())?,
        None => println!("{json}"),
    }
    Ok(())
}

fn embed_items(a: EmbedItemsArgs) -> Result<()> {
    let device = device(&a.model.device)?;
    let e = llm::embed_items(&backbone(&a.model), &a.data, &a.out, a.batch_size, &device)?;
    println!(
        "wrote {} ({} items + padding row, hidden {}); load {:.1}s, embed {:.1}s, total {:.1}s, peak RSS {}",
        a.out.display(),
        e.items,
        e.hidden,
        e.load_secs,
        e.embed_secs,
        e.total_secs,
        peak_rss()
    );
    Ok(())
}

/// Peak resident memory (VmHWM) of this process as the kernel prints it.
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

/// Runs `bench llm`.
pub fn bench(a: BenchLlmArgs) -> Result<()> {
    tune_threads();
    let device = device(&a.device)?;
    let b = llm::bench(&a.model, a.tokens, a.repeats, a.lora_rank, &device)?;
    let name = a
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!(
        "RESULT impl=distillrec model={name} tokens={} threads={} prefill_tok_s={:.1} train_tok_s={:.1} prefill_ms={:.1} train_step_ms={:.1} peak_rss={}",
        a.tokens,
        candle_core::utils::get_num_threads(),
        a.tokens as f64 / b.prefill_secs,
        a.tokens as f64 / b.train_secs,
        b.prefill_secs * 1e3,
        b.train_secs * 1e3,
        peak_rss().replace(' ', "")
    );
    Ok(())
}
