//! `[teacher]` and `[train.teacher]`: the LLM teacher's settings and their
//! value checks (also run on every teacher checkpoint's manifest).

use serde::{Deserialize, Serialize};

use crate::*;

distillrec_data::named_enum! {
    /// What the LLM teacher is trained to do (SPEC 6).
    pub enum TeacherObjective {
        /// Causal-LM loss on the answer (the target's title) after a prompt
        /// with history and 20 candidates.
        Generative = "generative",
        /// History-only prompt; the last hidden state scored against the
        /// item table, cross-entropy over the whole catalogue.
        Ranking = "ranking",
        /// Both losses, summed.
        Both = "both",
    }
}

distillrec_data::named_enum! {
    /// Which implementation runs the teacher's backbone passes.
    pub enum BackbonePath {
        /// The explicit CPU path (`distillrec_llm::tape`) where the backbone
        /// supports it (Llama family and Qwen2 in f32), else the composed one.
        Auto = "auto",
        /// The composed candle graph with autograd: any backbone family
        /// (OPT, Llamas with biases), and the reference the explicit path
        /// is checked against.
        Composed = "composed",
    }
}

distillrec_data::named_enum! {
    /// The dtype the teacher's frozen backbone is held in (`teacher.dtype`);
    /// adapters, gate, projector, optimiser state and losses stay f32.
    pub enum TeacherDtype {
        /// bf16 on CUDA, f32 on the CPU.
        Auto = "auto",
        /// f32 (the CPU's explicit path needs it).
        F32 = "f32",
        /// bfloat16 (half the memory of f32, f32's range).
        Bf16 = "bf16",
        /// float16 (half the memory, a narrow range).
        F16 = "f16",
    }
}

impl TeacherDtype {
    /// Whether this is the default (`auto`): the manifests and the run key
    /// leave a default out, so checkpoints written before the key existed
    /// keep their bytes and their run keys.
    pub fn is_auto(&self) -> bool {
        *self == TeacherDtype::Auto
    }
}

/// A projection of a decoder layer that can carry an adapter (one table,
/// shared with the LLM and the teacher's checkpoint names).
pub use distillrec_data::AdapterTarget;

/// The generative prompts of the LastFM/LLaRA family: `{history}` and
/// `{candidates}` are replaced by the rendered item lists.
pub const DEFAULT_PROMPTS: [&str; 2] = [
    "Given a list of items the user interacted with before, recommend the one item from the candidates the user will choose next.\nHistory: {history}.\nCandidates: {candidates}.\nAnswer with one candidate's name.",
    "The user has chosen these items in this order: {history}. Which of these candidates will the user choose next: {candidates}? Answer with the name only.",
];

/// History-only prompts of the ranking objective.
pub const DEFAULT_RANKING_PROMPTS: [&str; 2] = [
    "The user has chosen these items in this order: {history}. The next item the user will choose is",
    "History of the user: {history}. Predict the user's next item:",
];

/// `[teacher]`: the LLM teacher (SPEC 6) and what its cache holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherConfig {
    /// Teacher top-K written to the cache.
    pub top_k: usize,
    /// Whether the teacher's top-K leaves out the row's history items
    /// (set it like `eval.exclude_history`).
    pub mask_history: bool,
    /// The LLM: a GGUF file or a Hugging Face directory (`--backbone`
    /// overrides it).
    pub backbone: Option<PathBuf>,
    /// Keep only the first n decoder layers (CPU-sized teachers).
    pub num_layers: Option<usize>,
    /// The frozen student checkpoint that feeds the gate and the
    /// projector (`--student` overrides it).
    pub student: Option<PathBuf>,
    /// Training objective.
    pub objective: TeacherObjective,
    /// Experts `E` of the MoE-LoRA (1: plain LoRA, i.e. LLaRA).
    pub experts: usize,
    /// Total adapter rank `r` (each expert has `r / E`).
    pub rank: usize,
    /// LoRA `α`; the scale is `α / (r / E)`.
    pub alpha: f64,
    /// Dropout on each adapter's input.
    pub lora_dropout: f64,
    /// Adapted projections.
    pub targets: Vec<AdapterTarget>,
    /// Hidden width of the gate network (an MLP on the student's
    /// sequence representation).
    pub gate_hidden: usize,
    /// Generative prompt templates (`{history}` and `{candidates}`); one
    /// is drawn per sample from the run seed.
    pub prompts: Vec<String>,
    /// Ranking prompt templates (`{history}` only).
    pub ranking_prompts: Vec<String>,
    /// Wrap prompts in the backbone's chat template.
    pub chat: bool,
    /// Most recent history items rendered in a prompt.
    pub max_history: usize,
    /// Tokens kept of each title (longer titles are cut).
    pub max_title_tokens: usize,
    /// Candidates of the generative prompt (the target plus seeded items
    /// outside the history).
    pub candidates: usize,
    /// LLaRA curriculum: the probability of the hybrid prompt (titles and
    /// item embeddings) rises linearly from 0 to 1 over training; text-only
    /// prompts otherwise. Off: always hybrid.
    pub curriculum: bool,
    /// Rows per batch at inference (`eval teacher`, `teacher infer`).
    pub infer_batch: usize,
    /// Build on the frozen student's scores. Ranking head: the teacher's
    /// scores are the student's plus the LLM head's, so a teacher trained on
    /// a few thousand rows starts from the student's ranking and learns the
    /// LLM's corrections. Generative: each candidate's `[CansEmb]`
    /// placeholder adds a learnt cue vector times the student's score of
    /// that candidate, standardised over the prompt's candidates, so the
    /// LLM sees which candidates the student prefers. Off: the LLM alone.
    pub student_prior: bool,
    /// Which implementation runs the backbone (`auto`: the explicit CPU
    /// path where it can, `composed`: the candle graph).
    pub path: BackbonePath,
    /// The dtype the frozen backbone is held in on the composed path
    /// (`auto`: bf16 on CUDA, f32 on the CPU). Not f32, or not the CPU,
    /// runs the composed path.
    #[serde(skip_serializing_if = "TeacherDtype::is_auto")]
    pub dtype: TeacherDtype,
    /// On the composed path, keep only each decoder layer's input during
    /// the forward and recompute the layer in the backward (activation
    /// memory of one layer instead of all; about a third more compute). The
    /// explicit CPU path ignores it (its tape already keeps only what its
    /// hand-written backward reads).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recompute: bool,
}

impl Default for TeacherConfig {
    fn default() -> Self {
        TeacherConfig {
            top_k: 10,
            mask_history: true,
            backbone: None,
            num_layers: None,
            student: None,
            objective: TeacherObjective::Ranking,
            experts: 4,
            rank: 8,
            alpha: 32.0,
            lora_dropout: 0.1,
            targets: vec![AdapterTarget::Q, AdapterTarget::V],
            gate_hidden: 64,
            prompts: DEFAULT_PROMPTS.iter().map(|s| s.to_string()).collect(),
            ranking_prompts: DEFAULT_RANKING_PROMPTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            chat: false,
            max_history: 10,
            max_title_tokens: 12,
            candidates: 20,
            curriculum: false,
            infer_batch: 16,
            student_prior: false,
            path: BackbonePath::Auto,
            dtype: TeacherDtype::Auto,
            recompute: false,
        }
    }
}

impl TeacherConfig {
    /// Value checks of the `[teacher]` group, callable on their own: a
    /// teacher checkpoint's manifest carries these settings and is checked
    /// like a config (`source_name` names the file).
    pub fn check(&self, source_name: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| {
            Err(ConfigError::Key {
                source_name: source_name.to_string(),
                key: key.to_string(),
                msg,
            })
        };
        let t = self;
        if t.top_k == 0 {
            return bad("teacher.top_k", "must be positive".into());
        }
        for (key, v, max) in [
            ("rank", t.rank, MAX_SIZE),
            ("experts", t.experts, MAX_EXPERTS),
            ("gate_hidden", t.gate_hidden, MAX_SIZE),
        ] {
            if v > max {
                return bad(
                    &format!("teacher.{key}"),
                    format!("{v} is not in 1..={max}"),
                );
            }
        }
        if t.experts == 0 || t.rank == 0 || !t.rank.is_multiple_of(t.experts) {
            return bad(
                "teacher.rank",
                format!(
                    "{} must be a positive multiple of teacher.experts = {}",
                    t.rank, t.experts
                ),
            );
        }
        if !(t.alpha > 0.0 && t.alpha.is_finite()) {
            return bad(
                "teacher.alpha",
                format!("must be positive, got {}", t.alpha),
            );
        }
        if !(0.0..1.0).contains(&t.lora_dropout) {
            return bad(
                "teacher.lora_dropout",
                format!("{} is not in [0, 1)", t.lora_dropout),
            );
        }
        if t.targets.is_empty() {
            return bad("teacher.targets", "name at least one projection".into());
        }
        if t.num_layers == Some(0) {
            return bad("teacher.num_layers", "must be positive".into());
        }
        for (key, v) in [
            ("gate_hidden", t.gate_hidden),
            ("max_history", t.max_history),
            ("max_title_tokens", t.max_title_tokens),
            ("infer_batch", t.infer_batch),
        ] {
            if v == 0 {
                return bad(&format!("teacher.{key}"), "must be positive".into());
            }
        }
        if t.candidates < 2 {
            return bad(
                "teacher.candidates",
                format!("must be at least 2, got {}", t.candidates),
            );
        }
        for (key, list, cands) in [
            ("prompts", &t.prompts, true),
            ("ranking_prompts", &t.ranking_prompts, false),
        ] {
            if list.is_empty() {
                return bad(
                    &format!("teacher.{key}"),
                    "needs at least one template".into(),
                );
            }
            for (i, p) in list.iter().enumerate() {
                let h = p.matches("{history}").count();
                let c = p.matches("{candidates}").count();
                if h != 1 || c != usize::from(cands) {
                    let want = if cands {
                        "`{history}` and `{candidates}` once each"
                    } else {
                        "`{history}` once and no `{candidates}`"
                    };
                    return bad(
                        &format!("teacher.{key}[{i}]"),
                        format!("a template must hold {want}"),
                    );
                }
            }
        }
        Ok(())
    }

    /// The negatives of the sampled protocol when this teacher is
    /// evaluated with `eval.sampled_negatives = asked`: `asked`, or with 0
    /// (the default) the teacher's own `candidates − 1`. A generative
    /// teacher answers over its own candidates, so another count is refused
    /// rather than silently replaced.
    pub fn sampled_negatives(&self, asked: usize, source_name: &str) -> Result<usize, ConfigError> {
        let own = self.candidates.saturating_sub(1);
        if asked == 0 {
            return Ok(own);
        }
        if asked != own && self.objective != TeacherObjective::Ranking {
            return Err(ConfigError::Key {
                source_name: source_name.to_string(),
                key: "eval.sampled_negatives".into(),
                msg: format!(
                    "{asked}, but a generative teacher answers over its teacher.candidates = {} ({own} negatives); set it to {own} or 0",
                    self.candidates
                ),
            });
        }
        Ok(asked)
    }
}

/// `[train.teacher]`: the LLM teacher's training loop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherTrain {
    /// Epoch limit.
    pub max_epochs: usize,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Peak AdamW learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Fraction of the optimiser steps spent in linear warm-up (then
    /// cosine decay to 0).
    pub warmup: f64,
    /// Epochs without validation improvement before stopping.
    pub patience: usize,
    /// Validation metric of the ranking head (`ndcg@10`); the generative
    /// objective stops on its HR@1 over the candidates.
    pub metric: Metric,
    /// Global gradient-norm clip (0: off).
    pub grad_clip: f64,
    /// Validation rows used per epoch (0: all).
    pub valid_rows: usize,
}

impl Default for TeacherTrain {
    fn default() -> Self {
        TeacherTrain {
            max_epochs: 3,
            batch_size: 8,
            grad_accum: 1,
            lr: 1e-3,
            weight_decay: 0.01,
            warmup: 0.05,
            patience: 1,
            metric: Metric {
                kind: MetricKind::Ndcg,
                k: 10,
            },
            grad_clip: 1.0,
            valid_rows: 0,
        }
    }
}
