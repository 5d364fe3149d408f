//! The LLM backbone's jobs: generation, next-token logits, item-title
//! embeddings of a prepared dataset, and the speed benchmark.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;

use distillrec_data::outguard::check_file_output;
use distillrec_data::store;
use distillrec_llm::bench::time_step;
pub use distillrec_llm::bench::{BenchSpec, BenchStep};
/// Which backend the explicit path's large products run on (for benchmark records).
pub use distillrec_llm::blas::describe as blas_backend;
use distillrec_llm::embed::{item_table, save_table};
use distillrec_llm::generate::{generate as greedy, next_logits, GenerateOptions, Generation};
pub use distillrec_llm::model::Target;
use distillrec_llm::{load, KvCache, Llm, LoadOptions};
pub use distillrec_teacher::bench::{BenchSpec as TeacherBenchSpec, Mode as TeacherMode, Timing};

/// Which backbone to load, and where.
#[derive(Clone, Debug)]
pub struct Backbone {
    /// Hugging Face model directory or GGUF file.
    pub path: PathBuf,
    /// Keep only the first n decoder layers.
    pub num_layers: Option<usize>,
}

impl Backbone {
    /// Loads the backbone onto `device`.
    pub fn load(&self, device: &Device) -> Result<Llm> {
        let opts = LoadOptions {
            num_layers: self.num_layers,
            device: device.clone(),
            ..Default::default()
        };
        load(&self.path, &opts).with_context(|| format!("loading {}", self.path.display()))
    }
}

/// The token ids of `prompt`, rendered with the chat template first when
/// `chat` (the template's BOS is not added twice).
pub fn prompt_ids(llm: &Llm, prompt: &str, chat: bool) -> Result<Vec<u32>> {
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

/// A greedy generation and what it cost.
pub struct Generated {
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// The generation.
    pub generation: Generation,
    /// Wall seconds of the generation.
    pub secs: f64,
}

/// Greedy generation for `prompt`: with the chat template and its stop
/// strings unless `raw`, plus the `stop` strings given.
pub fn generate(
    backbone: &Backbone,
    prompt: &str,
    max_tokens: usize,
    raw: bool,
    stop: Vec<String>,
    device: &Device,
) -> Result<Generated> {
    let llm = backbone.load(device)?;
    let ids = prompt_ids(&llm, prompt, !raw)?;
    let mut stops = if raw {
        Vec::new()
    } else {
        llm.chat.stop_strings()
    };
    stops.extend(stop);
    let t0 = Instant::now();
    let generation = greedy(
        &llm.model,
        &llm.tokenizer,
        &ids,
        &GenerateOptions {
            max_tokens,
            stop: stops,
        },
    )?;
    Ok(Generated {
        prompt_tokens: ids.len(),
        generation,
        secs: t0.elapsed().as_secs_f64(),
    })
}

/// The prompt's token ids and the logits of its last position.
pub fn logits(
    backbone: &Backbone,
    prompt: &str,
    chat: bool,
    device: &Device,
) -> Result<(Vec<u32>, Vec<f32>)> {
    let llm = backbone.load(device)?;
    let ids = prompt_ids(&llm, prompt, chat)?;
    let mut cache = KvCache::new(&llm.model);
    let logits = next_logits(&llm.model, &ids, &mut cache)?;
    Ok((ids, logits))
}

/// What `embed_items` wrote.
pub struct ItemEmbeddings {
    /// Items embedded (the table has one more row, the padding row).
    pub items: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Seconds to load the dataset and the model.
    pub load_secs: f64,
    /// Seconds to embed the titles.
    pub embed_secs: f64,
    /// Seconds in total, writing the table included.
    pub total_secs: f64,
}

/// Embeds every item title of the prepared dataset `data` (last hidden
/// state of the title's last token, `batch_size` titles per pass) and
/// writes the table with the dataset's fingerprint to `out`.
pub fn embed_items(
    backbone: &Backbone,
    data: &Path,
    out: &Path,
    batch_size: usize,
    max_title_tokens: usize,
    device: &Device,
) -> Result<ItemEmbeddings> {
    // the table must not land on the backbone or the dataset it reads
    check_file_output(&[out], &[&backbone.path, data], "--out")?;
    let t0 = Instant::now();
    let ds = store::load(data)?;
    let manifest = store::read_manifest(data)?;
    let llm = backbone.load(device)?;
    let load_secs = t0.elapsed().as_secs_f64();
    let table = item_table(
        &llm.model,
        &llm.tokenizer,
        &ds,
        batch_size,
        max_title_tokens,
    )?;
    let embed_secs = t0.elapsed().as_secs_f64() - load_secs;
    let meta = HashMap::from([
        ("dataset".to_string(), manifest.name.clone()),
        (
            "dataset_fingerprint".to_string(),
            manifest.fingerprint.clone(),
        ),
        ("model".to_string(), backbone.path.display().to_string()),
        (
            "num_layers".to_string(),
            llm.model.config().num_hidden_layers.to_string(),
        ),
        (
            "pooling".to_string(),
            "last_token_last_hidden_state".to_string(),
        ),
        ("max_title_tokens".to_string(), max_title_tokens.to_string()),
    ]);
    save_table(out, &table, meta)?;
    let (n, hidden) = table.dims2()?;
    Ok(ItemEmbeddings {
        items: n - 1,
        hidden,
        load_secs,
        embed_secs,
        total_secs: t0.elapsed().as_secs_f64(),
    })
}

/// Median seconds of one benchmark step on the backbone at `path`.
pub fn bench(path: &Path, spec: &BenchSpec, device: &Device) -> Result<f64> {
    let llm = Backbone {
        path: path.to_path_buf(),
        num_layers: None,
    }
    .load(device)?;
    Ok(time_step(&llm.model, spec)?)
}

/// Times the real teacher's training micro-step or inference
/// (`distillrec_teacher::bench`) on the backbone at `path`, loaded onto
/// `device` in `spec.base.dtype` (`auto`: bf16 on CUDA, f32 on the CPU);
/// first writes the [`BenchFiles`] asked for.
pub fn bench_teacher(
    path: &Path,
    spec: &TeacherBenchSpec,
    files: BenchFiles<'_>,
    device: &Device,
) -> Result<Timing> {
    let opts = LoadOptions {
        num_layers: None,
        dtype: distillrec_teacher::setup::backbone_dtype(spec.base.dtype, device),
        device: device.clone(),
    };
    let llm = if files.random_weights {
        distillrec_llm::random::random_backbone(path, &opts, spec.seed)
    } else {
        load(path, &opts)
    }
    .with_context(|| format!("loading {}", path.display()))?;
    let mut b = distillrec_teacher::bench::Bench::new(llm, spec)?;
    if let Some(p) = files.dump {
        b.dump(p)?;
    }
    if let Some(p) = files.grads_out {
        b.write_grads(p)?;
    }
    b.time()
}

/// Where a teacher benchmark's weights come from and the files it writes
/// besides its timing.
#[derive(Clone, Copy, Debug, Default)]
pub struct BenchFiles<'a> {
    /// Seeded random weights of the shape of the `config.json` at the
    /// path, built on the device in the compute dtype
    /// (`distillrec_llm::random`), instead of the weight files.
    pub random_weights: bool,
    /// The step's inputs and initial weights (`--dump`).
    pub dump: Option<&'a Path>,
    /// The first step's loss and gradients, or the first batch's scores
    /// (`--grads-out`).
    pub grads_out: Option<&'a Path>,
}
