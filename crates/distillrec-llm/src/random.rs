//! A seeded random-weight backbone of a `config.json`'s shape, built one
//! tensor at a time directly in the compute dtype on the device (never a
//! full f32 copy of the model in host memory), so the teacher's step can
//! be timed at 1B and 7B shapes with no weight files (`bench llm
//! --random-weights`). Weights are uniform with the standard deviation of
//! Hugging Face's initialisation (0.02), norms one, biases zero. Without a
//! `tokenizer.json` beside the config, text is encoded byte by byte (ids
//! 0..256, end of text 256).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::loader::{read_meta, Llm, LoadOptions};
use crate::model::Model;
use crate::source::WeightSource;
use crate::tokenizer::Tokenizer;

/// Standard deviation of the random weights (Hugging Face's
/// `initializer_range` default).
const STD: f32 = 0.02;

/// The backbone of the `config.json` at `path` (the file, or a directory
/// holding it) with seeded random weights, loaded as `opts` says.
pub fn random_backbone(path: &Path, opts: &LoadOptions, seed: u64) -> Result<Llm> {
    let config = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let meta = read_meta(&config, opts.num_layers)?;
    let (tokenizer, chat) = match meta.tokenizer {
        Some(t) => t,
        None => {
            let tok = byte_tokenizer(&config, meta.config.vocab_size)?;
            let chat = ChatTemplate::detect(None, &tok);
            (tok, chat)
        }
    };
    let mut src = RandomSource {
        path: config.clone(),
        seed,
        device: opts.device.clone(),
        dtype: opts.dtype,
    };
    let model = Model::new(&meta.config, &mut src, opts.dtype, &opts.device)?;
    Ok(Llm {
        model,
        tokenizer,
        chat,
        source: config,
    })
}

/// A byte-level tokenizer: one token per byte, end of text after them.
fn byte_tokenizer(config: &Path, vocab: usize) -> Result<Tokenizer> {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    const EOS: &str = "<|endoftext|>";
    if vocab < 257 {
        return Err(Error::file(
            config,
            format!("vocab_size {vocab} is below the 257 ids of the byte tokenizer random weights use without a tokenizer.json"),
        ));
    }
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort();
    let map: tokenizers::models::bpe::Vocab = alphabet
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i as u32))
        .chain(std::iter::once((EOS.to_string(), 256)))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(map, Vec::new())
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    inner.add_special_tokens(&[tokenizers::AddedToken::from(EOS, true)]);
    Ok(Tokenizer::new(inner, None, false, vec![256]))
}

/// Every tensor the model asks for, generated on demand.
struct RandomSource {
    path: PathBuf,
    seed: u64,
    device: Device,
    dtype: candle_core::DType,
}

/// A well-mixed 64-bit hash (SplitMix64's finaliser).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl WeightSource for RandomSource {
    fn path(&self) -> &Path {
        &self.path
    }

    fn contains(&self, _name: &str) -> bool {
        true
    }

    fn generated(&self) -> bool {
        true
    }

    fn load(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let fill = if name.ends_with(".bias") {
            Some(0.0)
        } else if name.ends_with("norm.weight") {
            Some(1.0)
        } else {
            None
        };
        let host = match fill {
            Some(v) => Tensor::full(v, shape, &Device::Cpu)?,
            None => {
                let key = name.bytes().fold(mix(self.seed), |h, b| mix(h ^ b as u64));
                // uniform on [-√3 σ, √3 σ): standard deviation σ
                let bound = STD * 3f32.sqrt();
                let v: Vec<f32> = (0..n)
                    .into_par_iter()
                    .map(|i| {
                        let u = (mix(key ^ i as u64) >> 40) as f32 / (1u64 << 24) as f32;
                        (2.0 * u - 1.0) * bound
                    })
                    .collect();
                Tensor::from_vec(v, shape, &Device::Cpu)?
            }
        };
        // one tensor at a time: converted on the host, then moved
        Ok(host.to_dtype(self.dtype)?.to_device(&self.device)?)
    }
}
