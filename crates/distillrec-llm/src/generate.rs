//! Greedy generation with a KV cache and stop strings.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::lora::AdapterCtx;
use crate::model::{KvCache, Model};
use crate::tokenizer::Tokenizer;

/// Options of [`generate`].
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most new tokens to produce.
    pub max_tokens: usize,
    /// Generation stops when the decoded text contains any of these (the
    /// stop string itself is cut from the result).
    pub stop: Vec<String>,
}

/// Why generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-sequence token.
    Eos,
    /// A stop string.
    Stop(String),
    /// `max_tokens` reached.
    Length,
}

/// The result of [`generate`].
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated ids (without the EOS token).
    pub ids: Vec<u32>,
    /// Their text, cut at the first stop string.
    pub text: String,
    /// Why it ended.
    pub finish: Finish,
}

/// Index of the largest value (lowest index on ties), for greedy decoding.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best
}

/// Logits of the last position for `ids` appended to `cache` (one row).
pub fn next_logits(model: &Model, ids: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
    let t = Tensor::from_vec(ids.to_vec(), (1, ids.len()), model.device())?;
    let h = model.forward_hidden(&model.embed(&t)?, None, Some(cache))?;
    let last = h.narrow(1, ids.len() - 1, 1)?;
    Ok(model
        .logits(&last)?
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1()?)
}

/// Greedy decoding from `prompt` ids with a KV cache: one prefill pass, then
/// one token per step, until EOS, a stop string, `max_tokens` or the end of
/// the model's context (both [`Finish::Length`]). A prompt longer than the
/// context is an error before anything is computed.
pub fn generate(
    model: &Model,
    tok: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::Input("empty prompt".into()));
    }
    let t = Tensor::from_vec(prompt.to_vec(), (1, prompt.len()), model.device())?;
    generate_from_embeds(model, tok, &model.embed(&t)?, &AdapterCtx::default(), opts)
}

/// [`generate`] from prompt input embeddings `(1, T, embed_dim)` (hybrid
/// prompts whose placeholders carry projected item embeddings), with an
/// adapter context (iLoRA's per-sample gate) applied at every step.
pub fn generate_from_embeds(
    model: &Model,
    tok: &Tokenizer,
    embeds: &Tensor,
    ctx: &AdapterCtx,
    opts: &GenerateOptions,
) -> Result<Generation> {
    let (b, t, _) = embeds.dims3()?;
    if b != 1 || t == 0 {
        return Err(Error::Input(format!(
            "generation takes one non-empty prompt, got ({b}, {t})"
        )));
    }
    let mut cache = KvCache::new(model);
    let mut ids = Vec::new();
    let step = |e: &Tensor, cache: &mut KvCache| -> Result<Vec<f32>> {
        let n = e.dim(1)?;
        let h = model.forward_hidden_with(e, None, Some(cache), ctx)?;
        Ok(model
            .logits(&h.narrow(1, n - 1, 1)?)?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1()?)
    };
    let mut logits = step(embeds, &mut cache)?;
    for _ in 0..opts.max_tokens {
        let next = argmax(&logits) as u32;
        if tok.eos_ids().contains(&next) {
            let text = tok.decode(&ids, true)?;
            return Ok(Generation {
                ids,
                text,
                finish: Finish::Eos,
            });
        }
        ids.push(next);
        let text = tok.decode(&ids, false)?;
        if let Some((at, s)) = opts
            .stop
            .iter()
            .filter_map(|s| text.find(s.as_str()).map(|i| (i, s)))
            .min()
        {
            return Ok(Generation {
                ids,
                text: text[..at].to_string(),
                finish: Finish::Stop(s.clone()),
            });
        }
        if ids.len() == opts.max_tokens || cache.len() >= model.config().max_position_embeddings {
            break;
        }
        let e = model.embed(&Tensor::from_vec(vec![next], (1, 1), model.device())?)?;
        logits = step(&e, &mut cache)?;
    }
    let text = tok.decode(&ids, true)?;
    Ok(Generation {
        ids,
        text,
        finish: Finish::Length,
    })
}
