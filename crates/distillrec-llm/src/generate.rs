//! Chat templates and greedy generation with a KV cache and stop strings.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::model::{KvCache, Model};
use crate::tokenizer::Tokenizer;

/// How a single user message is rendered into a prompt.
#[derive(Clone, Debug, PartialEq)]
pub enum ChatTemplate {
    /// ChatML (`<|im_start|>role\n...<|im_end|>\n`), as used by SmolLM2 and
    /// Qwen2, with the template's default system message if it has one.
    ChatMl {
        /// System message inserted when the conversation has none.
        default_system: Option<String>,
    },
    /// Llama 3 headers (`<|start_header_id|>user<|end_header_id|>\n\n...<|eot_id|>`).
    Llama3,
    /// No template: the prompt is used as is.
    Plain,
}

impl ChatTemplate {
    /// Recognises the template from its Jinja source (GGUF
    /// `tokenizer.chat_template` or `tokenizer_config.json`) or, failing
    /// that, from the tokenizer's special tokens.
    pub fn detect(jinja: Option<&str>, tok: &Tokenizer) -> ChatTemplate {
        let src = jinja.unwrap_or("");
        if src.contains("<|im_start|>")
            || (jinja.is_none() && tok.token_to_id("<|im_start|>").is_some())
        {
            let marker = "<|im_start|>system\n";
            let default_system = if src.contains("!= 'system'") || src.contains("!= \"system\"") {
                src.find(marker).and_then(|i| {
                    let rest = &src[i + marker.len()..];
                    rest.find("<|im_end|>").map(|j| rest[..j].to_string())
                })
            } else {
                None
            };
            ChatTemplate::ChatMl { default_system }
        } else if src.contains("<|start_header_id|>") {
            ChatTemplate::Llama3
        } else {
            ChatTemplate::Plain
        }
    }

    /// The prompt for one user message, ending where the assistant's answer starts.
    pub fn render(&self, user: &str) -> String {
        match self {
            ChatTemplate::ChatMl { default_system } => {
                let mut s = String::new();
                if let Some(sys) = default_system {
                    s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                }
                s.push_str(&format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"));
                s
            }
            ChatTemplate::Llama3 => format!(
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
            ),
            ChatTemplate::Plain => user.to_string(),
        }
    }

    /// Whether the rendered prompt already contains the BOS marker.
    pub fn includes_bos(&self) -> bool {
        matches!(self, ChatTemplate::Llama3)
    }

    /// Strings that end the assistant's turn.
    pub fn stop_strings(&self) -> Vec<String> {
        match self {
            ChatTemplate::ChatMl { .. } => vec!["<|im_end|>".into()],
            ChatTemplate::Llama3 => vec!["<|eot_id|>".into()],
            ChatTemplate::Plain => Vec::new(),
        }
    }
}

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
/// one token per step, until EOS, a stop string or `max_tokens`.
pub fn generate(
    model: &Model,
    tok: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::Input("empty prompt".into()));
    }
    let mut cache = KvCache::new(model);
    let mut ids = Vec::new();
    let mut logits = next_logits(model, prompt, &mut cache)?;
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
        if ids.len() == opts.max_tokens {
            break;
        }
        logits = next_logits(model, &[next], &mut cache)?;
    }
    let text = tok.decode(&ids, true)?;
    Ok(Generation {
        ids,
        text,
        finish: Finish::Length,
    })
}
