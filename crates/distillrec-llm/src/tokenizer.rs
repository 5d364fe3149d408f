//! Tokenizers: a Hugging Face `tokenizer.json`, or a byte-level BPE rebuilt
//! from GGUF metadata (`tokenizer.ggml.*`) with control tokens registered as
//! special tokens so that chat markers like `<|im_start|>` encode to one id.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::Split;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::config::Config;
use crate::error::{Error, Result};

/// Llama 3's pre-tokenisation regex (`tokenizer.ggml.pre = llama-bpe`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pre-tokenisation regex.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token type of control tokens (`<|im_start|>`, `<|endoftext|>`, ...).
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF token type of user-defined tokens (added, but not special).
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// A tokenizer with the ids generation needs (BOS, EOS, padding).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    add_bos: bool,
    eos: Vec<u32>,
    pad: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Wraps a `tokenizers` tokenizer. `add_bos` prepends `bos` when encoding
    /// with special tokens (for tokenizers whose post-processor does not).
    pub fn new(
        inner: tokenizers::Tokenizer,
        bos: Option<u32>,
        add_bos: bool,
        eos: Vec<u32>,
    ) -> Tokenizer {
        let pad = eos.first().copied().or(bos).unwrap_or(0);
        Tokenizer {
            inner,
            bos,
            add_bos,
            eos,
            pad,
        }
    }

    /// Reads `tokenizer.json` of a Hugging Face directory; EOS ids come from
    /// the model config.
    pub fn from_hf_dir(dir: &Path, cfg: &Config) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::file(&path, "missing"));
        }
        let text = crate::error::read_small_file(&path)?;
        // tokenizers 0.21 unwraps inside some decoder deserialisers, so a
        // malformed file can panic; contain it as an error naming the file.
        let parsed =
            std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(text.as_bytes()))
                .map_err(|_| {
                    Error::file(
                        &path,
                        "malformed tokenizer.json (the tokenizers crate could not parse it)",
                    )
                })?;
        let inner = parsed.map_err(|e| match unreadable_section(&text) {
            Some(section) => Error::file(
                &path,
                format!("{section} is not one the tokenizers library reads; re-save the tokenizer with a current `tokenizers` or use the model's own tokenizer.json"),
            ),
            None => Error::file(&path, e),
        })?;
        Ok(Tokenizer::new(
            inner,
            cfg.bos_token_id,
            false,
            cfg.eos_token_ids.clone(),
        ))
    }

    /// Rebuilds the tokenizer from GGUF metadata: `tokenizer.ggml.model =
    /// gpt2` (byte-level BPE) with `tokens`, `merges`, `token_type`, `pre`,
    /// and the BOS/EOS ids. `path` names the file in errors.
    pub fn from_gguf(md: &HashMap<String, Value>, path: &Path) -> Result<Tokenizer> {
        let meta = GgufMeta { md, path };
        let model = md
            .get(&gguf_key("model"))
            .ok_or_else(|| Error::file(path, "missing metadata key `tokenizer.ggml.model`"))?
            .to_string()
            .map_err(|e| Error::file(path, format!("tokenizer.ggml.model: {e}")))?;
        if model != "gpt2" {
            return Err(Error::unsupported(
                path,
                format!("tokenizer.ggml.model = `{model}` (only gpt2 byte-level BPE; use the Hugging Face directory for this model)"),
            ));
        }
        let tokens = meta.strings("tokens")?;
        let merges_raw = meta.strings("merges")?;
        let types = meta.token_types(tokens.len())?;
        let mut vocab = tokenizers::models::bpe::Vocab::default();
        for (i, t) in tokens.iter().enumerate() {
            vocab.entry(t.clone()).or_insert(i as u32);
        }
        let merges = meta.merges(&merges_raw)?;
        let pre = match md.get(&gguf_key("pre")) {
            Some(v) => v
                .to_string()
                .map_err(|e| Error::file(path, format!("tokenizer.ggml.pre: {e}")))?
                .clone(),
            None => "default".into(),
        };
        let ignore_merges = pre == "llama-bpe" || pre == "llama3";
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| Error::file(path, format!("tokenizer: {e}")))?;
        let pre_tok = gguf_pre_tokenizer(&pre, path)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner
            .with_pre_tokenizer(Some(pre_tok))
            .with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()))
            .with_post_processor(Some(ByteLevel::new(false, false, true)));
        add_gguf_tokens(&mut inner, &tokens, &types);
        let n = tokens.len();
        let bos = meta.token_id("bos_token_id", n)?;
        let mut eos: Vec<u32> = meta.token_id("eos_token_id", n)?.into_iter().collect();
        if let Some(eot) = meta.token_id("eot_token_id", n)? {
            if !eos.contains(&eot) {
                eos.push(eot);
            }
        }
        let add_bos = match md.get(&gguf_key("add_bos_token")) {
            Some(Value::Bool(b)) => *b,
            _ => false,
        };
        let mut t = Tokenizer::new(inner, bos, add_bos, eos);
        if let Some(p) = meta.token_id("padding_token_id", n)? {
            t.pad = p;
        }
        Ok(t)
    }

    /// Token ids of `text`; with `add_special`, BOS (and whatever the
    /// tokenizer's post-processor adds). Special-token markers in `text` map
    /// to their single ids.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special).map_err(tok_err)?;
        let mut ids = enc.get_ids().to_vec();
        if add_special && self.add_bos {
            if let Some(b) = self.bos {
                if ids.first() != Some(&b) {
                    ids.insert(0, b);
                }
            }
        }
        Ok(ids)
    }

    /// Text of `ids`, optionally without special tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// End-of-sequence ids (generation stops at any of them).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// BOS id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The id used to fill padded positions (they are masked; any id works).
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// The metadata key `tokenizer.ggml.{k}`.
fn gguf_key(k: &str) -> String {
    format!("tokenizer.ggml.{k}")
}

/// A GGUF file's metadata, read for its tokenizer; every error names the
/// file and the key.
struct GgufMeta<'a> {
    md: &'a HashMap<String, Value>,
    path: &'a Path,
}

impl GgufMeta<'_> {
    /// The string array `tokenizer.ggml.{k}` (required).
    fn strings(&self, k: &str) -> Result<Vec<String>> {
        let path = self.path;
        let v = self.md.get(&gguf_key(k)).ok_or_else(|| {
            Error::file(path, format!("missing metadata key `tokenizer.ggml.{k}`"))
        })?;
        let arr = v
            .to_vec()
            .map_err(|e| Error::file(path, format!("tokenizer.ggml.{k}: {e}")))?;
        arr.iter()
            .map(|s| {
                s.to_string()
                    .cloned()
                    .map_err(|e| Error::file(path, format!("tokenizer.ggml.{k}: {e}")))
            })
            .collect()
    }

    /// `tokenizer.ggml.token_type`, one per token (all normal when absent).
    fn token_types(&self, tokens: usize) -> Result<Vec<i64>> {
        let path = self.path;
        let types: Vec<i64> = match self.md.get(&gguf_key("token_type")) {
            Some(v) => v
                .to_vec()
                .map_err(|e| Error::file(path, format!("tokenizer.ggml.token_type: {e}")))?
                .iter()
                .map(|x| {
                    int_value(x)
                        .ok_or_else(|| Error::file(path, "tokenizer.ggml.token_type: not integers"))
                })
                .collect::<Result<_>>()?,
            None => vec![1; tokens],
        };
        if types.len() != tokens {
            return Err(Error::file(
                path,
                format!(
                    "tokenizer.ggml.token_type has {} entries, tokens has {}",
                    types.len(),
                    tokens
                ),
            ));
        }
        Ok(types)
    }

    /// The BPE merges `a b` of `tokenizer.ggml.merges` as pairs.
    fn merges(&self, raw: &[String]) -> Result<Vec<(String, String)>> {
        let mut merges = Vec::with_capacity(raw.len());
        for (i, m) in raw.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                Error::file(
                    self.path,
                    format!("tokenizer.ggml.merges[{i}] `{m}` is not `a b`"),
                )
            })?;
            merges.push((a.to_string(), b.to_string()));
        }
        Ok(merges)
    }

    /// The token id `tokenizer.ggml.{k}` when present, checked against the
    /// vocabulary size `tokens`.
    fn token_id(&self, k: &str, tokens: usize) -> Result<Option<u32>> {
        match self.md.get(&gguf_key(k)) {
            None => Ok(None),
            Some(v) => match int_value(v) {
                Some(x) if x >= 0 && (x as usize) < tokens => Ok(Some(x as u32)),
                _ => Err(Error::file(
                    self.path,
                    format!("tokenizer.ggml.{k}: not a token id"),
                )),
            },
        }
    }
}

/// The pre-tokenizer named by `tokenizer.ggml.pre` (llama.cpp's names).
fn gguf_pre_tokenizer(pre: &str, path: &Path) -> Result<PreTokenizerWrapper> {
    let byte_level = ByteLevel::new(false, false, true);
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        Ok(Split::new(
            tokenizers::pre_tokenizers::split::SplitPattern::Regex(re.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err)?
        .into())
    };
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" => byte_level.into(),
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        "llama-bpe" | "llama3" => {
            Sequence::new(vec![split(LLAMA3_REGEX)?, ByteLevel::new(false, false, false).into()]).into()
        }
        "qwen2" => Sequence::new(vec![split(QWEN2_REGEX)?, ByteLevel::new(false, false, false).into()]).into(),
        other => {
            return Err(Error::unsupported(
                path,
                format!("tokenizer.ggml.pre = `{other}` (supported: default, gpt2, smollm, starcoder, llama-bpe, qwen2)"),
            ))
        }
    })
}

/// Adds the control tokens (special) and the user-defined tokens of a
/// GGUF vocabulary to `inner`.
fn add_gguf_tokens(inner: &mut tokenizers::Tokenizer, tokens: &[String], types: &[i64]) {
    let added = |ty: i64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(types)
            .filter(|(_, &t)| t == ty)
            .map(|(t, _)| AddedToken::from(t.clone(), special))
            .collect()
    };
    let special = added(TOKEN_TYPE_CONTROL, true);
    let user = added(TOKEN_TYPE_USER_DEFINED, false);
    inner.add_special_tokens(&special);
    inner.add_tokens(&user);
}

/// Any integer GGUF value as i64.
pub(crate) fn int_value(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

/// The first section of a `tokenizer.json` that the tokenizers library
/// cannot read, named with its `type` (`the \`model\` section (type
/// "Foo")`), so an error says where instead of "did not match any variant
/// of untagged enum".
fn unreadable_section(text: &str) -> Option<String> {
    use tokenizers::{
        decoders::DecoderWrapper, models::ModelWrapper, normalizers::NormalizerWrapper,
        pre_tokenizers::PreTokenizerWrapper, processors::PostProcessorWrapper,
    };
    type Reads = fn(serde_json::Value) -> bool;
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let sections: [(&str, Reads); 5] = [
        ("model", |x| {
            serde_json::from_value::<ModelWrapper>(x).is_ok()
        }),
        ("normalizer", |x| {
            x.is_null() || serde_json::from_value::<NormalizerWrapper>(x).is_ok()
        }),
        ("pre_tokenizer", |x| {
            x.is_null() || serde_json::from_value::<PreTokenizerWrapper>(x).is_ok()
        }),
        ("post_processor", |x| {
            x.is_null() || serde_json::from_value::<PostProcessorWrapper>(x).is_ok()
        }),
        ("decoder", |x| {
            x.is_null() || serde_json::from_value::<DecoderWrapper>(x).is_ok()
        }),
    ];
    sections.into_iter().find_map(|(key, reads)| {
        let section = v.get(key).cloned().unwrap_or(serde_json::Value::Null);
        let ty = section
            .get("type")
            .and_then(|t| t.as_str())
            .map(str::to_string);
        // some deserialisers unwrap: a panic is a section it cannot read
        let ok = std::panic::catch_unwind(|| reads(section)).unwrap_or(false);
        (!ok).then(|| match ty {
            Some(t) => format!("the `{key}` section (type \"{t}\")"),
            None => format!("the `{key}` section"),
        })
    })
}
