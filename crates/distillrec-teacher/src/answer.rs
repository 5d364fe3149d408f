//! The teacher's generative inference: the adapters attached to the
//! backbone's composed path (frozen), the generative evaluation prompt of
//! a row laid out for the backbone, and the greedy answer decoded from it.
//! One student pass per row feeds the gate, the cue and the student's own
//! pick ([`Teacher::answer_scored`]).

use anyhow::Result;
use candle_core::Tensor;

use distillrec_data::{Dataset, ItemId, Row};
use distillrec_llm::generate::{generate_from_embeds, GenerateOptions};
use distillrec_llm::lora::AdapterCtx;

use crate::model::{Inputs, PromptInputs, RowView, Teacher};
use crate::prompt::Prompt;

/// A row's generative evaluation prompt laid out for the backbone.
pub(crate) struct AnswerInputs {
    /// The laid-out prompt (no answer).
    pub(crate) inp: Inputs,
    /// The placeholder items, what the slots index.
    pub(crate) order: Vec<ItemId>,
    /// The row's gate `[1, E]`; `None` with one expert.
    pub(crate) gate: Option<Tensor>,
    /// The student's scores `[N + 1]` of the row (column 0 −∞).
    pub(crate) scores: Vec<f32>,
}

impl Teacher {
    /// Attaches the adapters to the backbone's composed path for inference
    /// (generation with a KV cache; frozen, so no autograd graph is kept);
    /// [`Teacher::detach`] removes them.
    pub fn attach(&mut self) -> Result<()> {
        self.adapters.to_candle_frozen(&mut self.llm.model)?;
        Ok(())
    }

    /// Removes adapters attached by [`Teacher::attach`].
    pub fn detach(&mut self) -> Result<()> {
        for li in 0..self.llm.model.layers.len() {
            for &t in &self.cfg.targets {
                self.llm.model.linear_mut(li, t)?.set_adapter(None);
            }
        }
        Ok(())
    }

    /// The generative evaluation prompt of `row` with `candidates` (no
    /// answer) laid out for the backbone, with what one student pass gives
    /// the row (gate, cue, scores).
    pub(crate) fn answer_inputs(
        &self,
        ds: &Dataset,
        row: &Row,
        candidates: &[ItemId],
    ) -> Result<AnswerInputs> {
        let live = self.live()?;
        let RowView {
            gate,
            prior,
            scores,
            ..
        } = self.gate_and_prior(&live, ds, &[row])?;
        let prior_v = self.cue_scores(prior.as_ref())?;
        let prompt = Prompt {
            answer: Vec::new(),
            ..self.eval_prompt(ds, row, Some(candidates))
        };
        let (order, index) = Self::placeholder_items(std::slice::from_ref(&prompt));
        let projected = self.project_items(&live, &order)?;
        let inp = self.inputs(
            std::slice::from_ref(&prompt),
            &index,
            &projected,
            self.cue(prior_v.as_deref()),
        )?;
        Ok(AnswerInputs {
            inp,
            order,
            gate,
            scores,
        })
    }

    /// The input embeddings `[T, H]` of `row`'s generative evaluation
    /// prompt with `candidates` and its placeholders as `(position, item)`:
    /// what [`Teacher::answer`] decodes from.
    pub fn answer_prompt_inputs(
        &self,
        ds: &Dataset,
        row: &Row,
        candidates: &[ItemId],
    ) -> Result<PromptInputs> {
        let AnswerInputs { inp, order, .. } = self.answer_inputs(ds, row, candidates)?;
        let slots = inp.slots.iter().map(|&(p, k)| (p, order[k])).collect();
        Ok((inp.embeds, slots))
    }

    /// Greedy answer (at most 64 new tokens, first line) to the generative
    /// prompt of `row` with `candidates`; the adapters must be attached.
    pub fn answer(&self, ds: &Dataset, row: &Row, candidates: &[ItemId]) -> Result<String> {
        Ok(self.answer_scored(ds, row, candidates)?.0)
    }

    /// [`Teacher::answer`] and the student's scores `[N + 1]` of the row
    /// (column 0 −∞, as `Student::score_histories` gives them), from the
    /// student pass that fed the gate and the cue: evaluation reads the
    /// student's pick from them instead of running the student again.
    pub fn answer_scored(
        &self,
        ds: &Dataset,
        row: &Row,
        candidates: &[ItemId],
    ) -> Result<(String, Vec<f32>)> {
        let h = self.llm.model.config().hidden_size;
        let AnswerInputs {
            inp, gate, scores, ..
        } = self.answer_inputs(ds, row, candidates)?;
        let embeds = Tensor::from_vec(inp.embeds, (1, inp.t, h), self.dev())?
            .to_dtype(self.llm.model.dtype())?;
        let ctx = AdapterCtx {
            gate: gate.as_ref(),
            train: false,
        };
        let mut stop = self.llm.chat.stop_strings();
        stop.push("\n".into());
        let g = generate_from_embeds(
            &self.llm.model,
            &self.llm.tokenizer,
            &embeds,
            &ctx,
            &GenerateOptions {
                max_tokens: 64,
                stop,
            },
        )?;
        let answer = g.text.lines().next().unwrap_or("").trim().to_string();
        Ok((answer, scores))
    }
}
