//! The input every student reads: left-padded item ids `[B, L]` (SPEC 2.2),
//! and the per-forward context (training flag, seeded dropout).

use candle_core::{Device, Result, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use distillrec_data::{batch::left_pad_into, ItemId, PAD};

/// A batch of left-padded histories on the host and on the device.
pub struct SeqBatch {
    /// Row-major `[B, L]` ids, padding `0` on the left.
    pub ids: Vec<ItemId>,
    /// Batch size.
    pub b: usize,
    /// Window length.
    pub l: usize,
    /// The ids as a `[B, L]` u32 tensor.
    pub tensor: Tensor,
}

impl SeqBatch {
    /// Left-pads `histories` to `max_len`.
    pub fn from_histories<'a>(
        histories: impl IntoIterator<Item = &'a [ItemId]>,
        max_len: usize,
        device: &Device,
    ) -> Result<Self> {
        let mut ids = Vec::new();
        for h in histories {
            let start = ids.len();
            ids.resize(start + max_len, PAD);
            left_pad_into(&mut ids[start..], h);
        }
        Self::from_ids(ids, max_len, device)
    }

    /// Wraps already left-padded ids.
    pub fn from_ids(ids: Vec<ItemId>, l: usize, device: &Device) -> Result<Self> {
        let b = ids.len() / l.max(1);
        let tensor = Tensor::from_vec(ids.clone(), (b, l), device)?;
        Ok(SeqBatch { ids, b, l, tensor })
    }

    /// `[B, L, 1]` mask: 1 for real items, 0 for padding.
    pub fn pad_mask(&self) -> Result<Tensor> {
        let m: Vec<f32> = self
            .ids
            .iter()
            .map(|&i| if i == PAD { 0.0 } else { 1.0 })
            .collect();
        Tensor::from_vec(m, (self.b, self.l, 1), self.tensor.device())
    }
}

/// Training or inference, with the seeded generator that draws dropout masks.
pub struct ForwardCtx<'a> {
    /// Dropout is applied only when training.
    pub train: bool,
    /// The run's generator (None at inference).
    pub rng: Option<&'a mut ChaCha8Rng>,
}

impl<'a> ForwardCtx<'a> {
    /// Inference: no dropout.
    pub fn eval() -> Self {
        ForwardCtx {
            train: false,
            rng: None,
        }
    }

    /// Training with dropout masks drawn from `rng`.
    pub fn train(rng: &'a mut ChaCha8Rng) -> Self {
        ForwardCtx {
            train: true,
            rng: Some(rng),
        }
    }

    /// A fresh seed from the run generator (for ops that hash their own masks).
    pub fn next_seed(&mut self) -> u64 {
        self.rng.as_deref_mut().map_or(0, |r| r.gen::<u64>())
    }

    /// Inverted dropout. The mask is a counter-based hash of a seed drawn
    /// from the run generator and the element index, so it is reproducible
    /// and built in parallel.
    pub fn dropout(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        if !self.train || p <= 0.0 || self.rng.is_none() {
            return Ok(x.clone());
        }
        let seed = self.next_seed();
        let keep = (1.0 - p) as f32;
        let scale = 1.0 / keep;
        let mut mask = vec![0f32; x.elem_count()];
        mask.par_chunks_mut(4096)
            .enumerate()
            .for_each(|(c, chunk)| {
                for (k, m) in chunk.iter_mut().enumerate() {
                    if crate::fused_attention::keep_index(seed, (c * 4096 + k) as u64, keep) {
                        *m = scale;
                    }
                }
            });
        x * Tensor::from_vec(mask, x.shape(), x.device())?
    }
}
