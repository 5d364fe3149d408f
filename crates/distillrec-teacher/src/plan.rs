//! `teacher plan`: what a teacher run will need, from the backbone's
//! config alone (no weights) and the `[teacher]` / `[train.teacher]`
//! settings: the parameter count, memory for the frozen weights, the
//! training activations at the configured batch and the longest prompt, the
//! trained tensors with their optimiser state, the tokens per optimiser step
//! and the time per epoch at a measured matrix-product throughput.
//! `train teacher` runs the same memory check before it loads the backbone.
//!
//! The activation figures follow what the explicit CPU path keeps for its
//! backward pass (`distillrec_llm::tape`: per layer and token the layer
//! input, rotated q/k/v, attention output, residual, gate/up pre-activations
//! and the adapters' rank-r activations; per layer, row and head the
//! attention weights); they are estimates to decide whether a run fits, not
//! an accounting of every buffer.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use distillrec_config::{TeacherConfig, TeacherObjective, TeacherTrain};
use distillrec_data::memory::{check_fits_in, human, product, TooLarge};
use distillrec_llm::Config as LlmConfig;

/// Bytes of an `f32`: adapters, networks, optimiser state and activations
/// of the explicit path are f32.
const F32: u64 = 4;

/// Copies of every trained value: weight, gradient, AdamW's two moments and
/// the best epoch's copy.
const TRAINED_COPIES: u64 = 5;

/// Rows of the LM head's loss computed at once (`distillrec_llm::loss`).
const LM_HEAD_BLOCK: u64 = 64;

/// Tables of `items × hidden` f32 values the ranking head holds at once
/// while its loss and gradient are computed (the composed candle graph over
/// the whole catalogue: the projector's outputs, the item table, its norms,
/// their gradients and the backward's temporaries). Measured with the
/// counted heap on a 391-item catalogue of hidden 512: 23.5 MiB, 31 tables.
const RANKING_HEAD_TABLES: u64 = 32;

/// Tokens a prompt template, its separators and the chat wrapper add
/// besides the items, at most (an allowance, since the plan reads no
/// tokenizer).
const TEMPLATE_TOKENS: usize = 96;

/// Tokens around each rendered item: a separator and the placeholder.
const PER_ITEM_TOKENS: usize = 3;

/// What a plan is computed from.
pub struct PlanInput<'a> {
    /// The backbone's shape (after `teacher.num_layers`).
    pub backbone: &'a LlmConfig,
    /// `[teacher]`.
    pub teacher: &'a TeacherConfig,
    /// `[train.teacher]`.
    pub train: &'a TeacherTrain,
    /// Width of the frozen student's representation (`student.hidden`).
    pub student_hidden: usize,
    /// Items of the catalogue.
    pub items: usize,
    /// Training rows and the sum of their [`prompt_bound`]s, when the
    /// dataset is known.
    pub epoch: Option<(usize, u64)>,
    /// The longest prompt in tokens ([`longest_prompt`] unless given).
    pub prompt_tokens: usize,
    /// Bytes of one frozen backbone weight (4 for f32 on the CPU).
    pub weight_bytes: u64,
}

/// One part of the memory a run needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    /// What the memory holds.
    pub what: &'static str,
    /// The setting(s) that size it, as the user wrote them.
    pub setting: String,
    /// Bytes.
    pub bytes: u64,
}

/// The sizes of a teacher run, before anything is loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Parameters of the backbone as built.
    pub parameters: u64,
    /// Trained values: adapters, gate, projector and heads.
    pub trained: u64,
    /// Memory, part by part.
    pub parts: Vec<Part>,
    /// Prompt tokens per optimiser step, at most (batch × accumulation ×
    /// longest prompt).
    pub tokens_per_step: u64,
    /// Floating-point operations per training token (forward and the
    /// backward of a frozen backbone: no weight gradients but the adapters').
    pub train_flops_per_token: f64,
    /// Training rows and prompt tokens of one epoch (bounds), when known.
    pub epoch: Option<(usize, u64)>,
    /// The longest prompt the plan assumed.
    pub prompt_tokens: usize,
    /// `(hidden, intermediate)`: the backbone's MLP product, on which
    /// [`measure_flops`] measures the device.
    pub mlp_shape: (usize, usize),
}

/// An upper bound of the length in tokens of `t`'s prompt for a row with
/// `history` items, without a tokenizer: the rendered history items (at
/// most `max_history`; for generative objectives also `candidates` and the
/// answer), each of `max_title_tokens` plus a separator and a placeholder,
/// and an allowance for the template.
pub fn prompt_bound(t: &TeacherConfig, history: usize) -> usize {
    let item = t.max_title_tokens + PER_ITEM_TOKENS;
    let shown = history.min(t.max_history);
    let items = match t.objective {
        TeacherObjective::Ranking => shown,
        _ => shown + t.candidates + 1,
    };
    TEMPLATE_TOKENS.saturating_add(items.saturating_mul(item))
}

/// [`prompt_bound`] of a full history: the longest prompt.
pub fn longest_prompt(t: &TeacherConfig) -> usize {
    prompt_bound(t, t.max_history)
}

/// Trained values besides the adapters: projector `d → H → H`, gate
/// `d → g → E` (none with one expert), the ranking map `M [H, H]` and its
/// scale, the candidate cue `[H]`.
fn net_values(t: &TeacherConfig, d: u64, h: u64) -> u64 {
    let projector = d * h + h + h * h + h;
    let e = t.experts as u64;
    let g = t.gate_hidden as u64;
    let gate = if e > 1 { d * g + g + g * e + e } else { 0 };
    let ranking = match t.objective {
        TeacherObjective::Generative => 0,
        _ => h * h + 1,
    };
    let cue = if t.student_prior { h } else { 0 };
    projector + gate + ranking + cue
}

/// Values the explicit path keeps per layer for one token of the backward
/// pass, and per layer for one row and head and key position (attention
/// weights).
fn saved_per_token(c: &LlmConfig, t: &TeacherConfig) -> u64 {
    let (h, i) = (c.hidden_size as u64, c.intermediate_size as u64);
    let hd = c.head_dim as u64;
    let qkv = (c.num_attention_heads as u64 + 2 * c.num_key_value_heads as u64) * hd;
    let attn = c.num_attention_heads as u64 * hd;
    let adapters = t.rank as u64 * t.targets.len() as u64;
    2 * h + 2 + qkv + attn + 2 * i + adapters
}

/// Tables of `items × hidden` values a run holds: the title table, and for
/// a ranking objective the head's [`RANKING_HEAD_TABLES`].
fn item_tables(objective: TeacherObjective) -> u64 {
    match objective {
        TeacherObjective::Generative => 1,
        _ => 1 + RANKING_HEAD_TABLES,
    }
}

impl Plan {
    /// The plan of `input`.
    pub fn new(input: &PlanInput) -> Plan {
        let (c, t, tr) = (input.backbone, input.teacher, input.train);
        let (h, v) = (c.hidden_size as u64, c.vocab_size as u64);
        let layers = c.num_hidden_layers as u64;
        let (b, len) = (tr.batch_size as u64, input.prompt_tokens as u64);
        let items = input.items as u64 + 1;
        let adapter_values: u64 = t
            .targets
            .iter()
            .filter_map(|&x| c.projection_dims(x))
            .map(|(i, o)| (i + o) as u64)
            .sum::<u64>()
            .saturating_mul(t.rank as u64)
            .saturating_mul(layers);
        let trained = adapter_values + net_values(t, input.student_hidden as u64, h);
        let parameters = c.parameter_count();
        let heads = c.num_attention_heads as u64;
        let saved = product(&[layers, b, len, saved_per_token(c, t), F32])
            .saturating_add(product(&[layers, b, heads, len, len, F32]));
        // one layer's gradients in flight, the input embeddings and their
        // gradient, and the LM head's loss block (logits and gradient)
        let transient = product(&[b, len, 4 * h + 2 * c.intermediate_size as u64, F32])
            .saturating_add(product(&[2, LM_HEAD_BLOCK, v, F32]));
        let batch = format!(
            "train.teacher.batch_size = {} with {} prompt tokens",
            tr.batch_size, input.prompt_tokens
        );
        let parts = vec![
            Part {
                what: "the frozen backbone",
                setting: format!("the backbone ({} parameters)", count(parameters)),
                bytes: parameters.saturating_mul(input.weight_bytes),
            },
            Part {
                what: "the activations kept for the backward pass",
                setting: batch.clone(),
                bytes: saved,
            },
            Part {
                what: "the backward pass's working buffers",
                setting: batch,
                bytes: transient,
            },
            Part {
                what: "the adapters and networks with gradients, AdamW state and the best copy",
                setting: format!(
                    "teacher.rank = {} on {} targets of {} layers",
                    t.rank,
                    t.targets.len(),
                    layers
                ),
                bytes: product(&[trained, F32, TRAINED_COPIES]),
            },
            Part {
                what: "the title table, and the ranking head's tables with their gradients",
                setting: format!("{} items with hidden size {h}", input.items),
                bytes: product(&[items, h, F32, item_tables(t.objective)]),
            },
        ];
        let attention_flops = 2.0 * layers as f64 * len as f64 * h as f64;
        Plan {
            parameters,
            trained,
            parts,
            tokens_per_step: product(&[b, tr.grad_accum as u64, len]),
            // forward 2N, backward input gradients 2N, attention 3 × its
            // forward (causal: half of the T² products)
            train_flops_per_token: 4.0 * parameters as f64 + 3.0 * attention_flops,
            epoch: input.epoch,
            prompt_tokens: input.prompt_tokens,
            mlp_shape: (c.hidden_size, c.intermediate_size),
        }
    }

    /// Total bytes.
    pub fn total(&self) -> u64 {
        self.parts
            .iter()
            .fold(0u64, |a, p| a.saturating_add(p.bytes))
    }

    /// Refuses the run when its total is more than `available` bytes; the
    /// message names the largest part's setting.
    pub fn check(&self, available: u64) -> Result<(), TooLarge> {
        let largest = self
            .parts
            .iter()
            .max_by_key(|p| p.bytes)
            .expect("a plan has parts");
        check_fits_in(
            &largest.setting,
            &format!(
                "a teacher run ({} of it for {})",
                human(largest.bytes),
                largest.what
            ),
            self.total(),
            available,
        )
    }

    /// Seconds of one training epoch at `flops_per_sec`, when the rows are
    /// known (an upper bound: every title counted at `max_title_tokens`).
    pub fn epoch_secs(&self, flops_per_sec: f64) -> Option<f64> {
        let (_, tokens) = self.epoch?;
        Some(tokens as f64 * self.train_flops_per_token / flops_per_sec)
    }

    /// The plan as the lines `teacher plan` prints.
    pub fn render(&self, available: Option<u64>, flops_per_sec: Option<f64>) -> String {
        let mut s = format!(
            "backbone: {} parameters; trained: {} values\n",
            count(self.parameters),
            count(self.trained)
        );
        for p in &self.parts {
            s.push_str(&format!("  {:>9}  {}\n", human(p.bytes), p.what));
        }
        let avail = available.map_or("unknown".to_string(), human);
        s.push_str(&format!(
            "  {:>9}  in all ({avail} available)\n",
            human(self.total()),
        ));
        s.push_str(&format!(
            "prompt: at most {} tokens; {} tokens per optimiser step at most\n",
            self.prompt_tokens, self.tokens_per_step
        ));
        if let Some(f) = flops_per_sec {
            s.push_str(&format!(
                "throughput: {:.1} GFLOP/s measured; {:.2} GFLOP per training token\n",
                f / 1e9,
                self.train_flops_per_token / 1e9
            ));
            if let (Some((rows, tokens)), Some(secs)) = (self.epoch, self.epoch_secs(f)) {
                s.push_str(&format!(
                    "epoch: {rows} rows, at most {tokens} prompt tokens, at most {} at that throughput\n",
                    duration(secs)
                ));
            }
        }
        s
    }
}

/// `1.2B`, `135M`, `45k`.
fn count(n: u64) -> String {
    let x = n as f64;
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.0}k", x / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}M", x / 1e6),
        _ => format!("{:.2}B", x / 1e9),
    }
}

/// `3h 05m`, `12m 30s`, `45s`.
fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

/// FLOP/s of matrix products of the backbone's MLP shape (`[256, H] ×
/// [H, I]` for `mlp_shape = (H, I)`, [`Plan::mlp_shape`]) on `device`, timed
/// over about half a second: the throughput the epoch estimate divides by.
pub fn measure_flops(mlp_shape: (usize, usize), device: &Device) -> candle_core::Result<f64> {
    let (m, (k, n)) = (256, mlp_shape);
    let a = Tensor::ones((m, k), DType::F32, device)?;
    let b = Tensor::ones((k, n), DType::F32, device)?;
    a.matmul(&b)?.sum_all()?.to_scalar::<f32>()?; // warm-up
    let start = Instant::now();
    let mut done = 0u32;
    while done < 2 || (start.elapsed().as_secs_f64() < 0.5 && done < 64) {
        a.matmul(&b)?.sum_all()?.to_scalar::<f32>()?;
        done += 1;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok(2.0 * (m * k * n) as f64 * done as f64 / secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_durations_read_well() {
        assert_eq!(count(6_738_415_616), "6.74B");
        assert_eq!(count(134_515_008), "134.5M");
        assert_eq!(count(45_000), "45k");
        assert_eq!(duration(42.0), "42s");
        assert_eq!(duration(750.0), "12m 30s");
        assert_eq!(duration(11_100.0), "3h 05m");
    }
}
