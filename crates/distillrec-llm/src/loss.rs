//! Loss heads on the last hidden states of the explicit path: the mean
//! next-token cross-entropy of the LM head ([`lm_head_loss`]), computed in
//! one pass over the head's vocabulary chunks so that the `[rows, vocab]`
//! logits never exist at once, with its gradient with respect to the
//! hidden states (what `pass::backward` takes).

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::{mm, real, weight_view, Mat, MatMut, Real};
use crate::model::Model;

/// Vocabulary rows of the LM head per chunk of [`lm_head_loss`]: a 4,096 ×
/// 576 f32 chunk is 9.4 MB, so its second product reads it from the cache
/// the first one brought it into.
const VOCAB_CHUNK: usize = 4096;

/// Rows of hidden states per block of [`lm_head_loss`] (each block reads
/// the whole head once).
const ROW_BLOCK: usize = 1024;

/// Mean next-token cross-entropy of the LM head over `(row, target)`
/// pairs, with `d loss / d hidden` `[N, hidden]`. One pass over the head:
/// per chunk of the vocabulary, the logits of every row, an online softmax
/// (running maximum and sum, as flash attention keeps them) and the
/// softmax-weighted sum of the chunk's head rows, so the `[rows, vocab]`
/// logits never exist and each head row leaves memory once per step
/// instead of once per product (`d hidden = (Σ_v p_v e_v − e_target)/n`).
pub fn lm_head_loss<T: Real>(
    model: &Model,
    hidden: &[T],
    pairs: &[(usize, u32)],
) -> Result<(f64, Vec<T>)> {
    let h = model.config().hidden_size;
    let vocab = model.config().vocab_size;
    let g = model.lm_head_weight().storage_and_layout();
    let wv = weight_view::<T, _>(&g)?; // [vocab, h]
    head_loss(wv, (vocab, h), hidden, pairs, VOCAB_CHUNK)
}

/// [`lm_head_loss`] on the head `wv [vocab, h]` in vocabulary chunks of
/// `chunk` rows.
fn head_loss<T: Real>(
    wv: Mat<T>,
    (vocab, h): (usize, usize),
    hidden: &[T],
    pairs: &[(usize, u32)],
    chunk: usize,
) -> Result<(f64, Vec<T>)> {
    if pairs.is_empty() {
        return Err(Error::Input(
            "no target tokens for the language-model loss".into(),
        ));
    }
    for &(row, tok) in pairs {
        if tok as usize >= vocab || (row + 1) * h > hidden.len() {
            return Err(Error::Input(format!(
                "target token {tok} or row {row} out of range"
            )));
        }
    }
    let mut dh = vec![T::zero(); hidden.len()];
    let inv_n = 1.0 / pairs.len() as f64;
    let mut loss = 0.0;
    for block in pairs.chunks(ROW_BLOCK) {
        let m = block.len();
        let mut x = vec![T::zero(); m * h];
        for (i, &(row, _)) in block.iter().enumerate() {
            x[i * h..(i + 1) * h].copy_from_slice(&hidden[row * h..(row + 1) * h]);
        }
        // per row: running maximum, running sum, the target's logit
        let mut state = vec![(T::neg_infinity(), T::zero(), T::zero()); m];
        let mut acc = vec![T::zero(); m * h];
        let mut logits = vec![T::zero(); m * chunk.min(vocab)];
        for v0 in (0..vocab).step_by(chunk) {
            let vc = chunk.min(vocab - v0);
            let ec = Mat {
                off: wv.off + v0 * wv.rs,
                ..wv
            };
            let lg = &mut logits[..m * vc];
            mm(
                MatMut::rows(lg, vc),
                (m, vc, h),
                Mat::rows(&x, h),
                ec.t(),
                false,
            );
            lg.par_chunks_mut(vc)
                .zip(state.par_iter_mut())
                .zip(acc.par_chunks_mut(h))
                .zip(block.par_iter())
                .for_each(|(((row, st), a), &(_, tok))| {
                    let t = tok as usize;
                    if (v0..v0 + vc).contains(&t) {
                        st.2 = row[t - v0];
                    }
                    let cmax = row
                        .iter()
                        .fold(T::neg_infinity(), |a, &b| num_traits::Float::max(a, b));
                    let mx = num_traits::Float::max(st.0, cmax);
                    let rescale = (st.0 - mx).exp();
                    st.1 = st.1 * rescale + T::exp_shift_sum(row, mx);
                    st.0 = mx;
                    for v in a.iter_mut() {
                        *v *= rescale;
                    }
                });
            // acc += exp(logits − max) · head chunk
            mm(
                MatMut::rows(&mut acc, h),
                (m, h, vc),
                Mat::rows(lg, vc),
                ec,
                true,
            );
        }
        let s: T = real(inv_n);
        for (i, &(row, tok)) in block.iter().enumerate() {
            let (mx, z, tl) = state[i];
            loss += ((z.ln() + mx - tl).to_f64()) * inv_n;
            let e_t = Mat {
                off: wv.off + tok as usize * wv.rs,
                ..wv
            };
            for j in 0..h {
                let p = acc[i * h + j] / z - e_t.data[e_t.off + j * e_t.cs];
                dh[row * h + j] += p * s;
            }
        }
    }
    Ok((loss, dh))
}

/// [`lm_head_loss`] as a candle graph on the model's device and dtype (the
/// composed path: any device, any backbone dtype): the answer rows are
/// gathered on the host, multiplied with the LM head in the backbone's
/// dtype, and the cross-entropy taken in f32. Returns the loss and
/// `d loss / d hidden` `[N, hidden]` (zero off the answer rows).
pub fn lm_head_loss_composed(
    model: &Model,
    hidden: &[f32],
    pairs: &[(usize, u32)],
) -> Result<(f64, Vec<f32>)> {
    use candle_core::{DType, Tensor, Var};
    let h = model.config().hidden_size;
    let vocab = model.config().vocab_size;
    if pairs.is_empty() {
        return Err(Error::Input(
            "no target tokens for the language-model loss".into(),
        ));
    }
    let mut x = Vec::with_capacity(pairs.len() * h);
    for &(row, tok) in pairs {
        if tok as usize >= vocab || (row + 1) * h > hidden.len() {
            return Err(Error::Input(format!(
                "target token {tok} or row {row} out of range"
            )));
        }
        x.extend_from_slice(&hidden[row * h..(row + 1) * h]);
    }
    let dev = model.device();
    let n = pairs.len();
    let x = Var::from_vec(x, (1, n, h), dev)?;
    let logits = model
        .logits(&x.as_tensor().to_dtype(model.dtype())?)?
        .to_dtype(DType::F32)?
        .reshape((n, vocab))?;
    let targets: Vec<u32> = pairs.iter().map(|&(_, t)| t).collect();
    let loss = candle_nn::loss::cross_entropy(&logits, &Tensor::from_vec(targets, n, dev)?)?;
    let dx = match loss.backward()?.get(x.as_tensor()) {
        Some(g) => g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
        None => vec![0.0; n * h],
    };
    let mut dh = vec![0f32; hidden.len()];
    for (i, &(row, _)) in pairs.iter().enumerate() {
        for (o, &v) in dh[row * h..(row + 1) * h]
            .iter_mut()
            .zip(&dx[i * h..(i + 1) * h])
        {
            *o += v;
        }
    }
    Ok((loss.to_scalar::<f32>()? as f64, dh))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 4.0
            })
            .collect()
    }

    /// The one-pass online softmax in chunks of 7 (so the running maximum
    /// moves and the sums are rescaled) against the plain softmax in f64:
    /// loss and every hidden-state gradient, repeated rows included.
    #[test]
    fn chunked_head_loss_equals_the_plain_cross_entropy() {
        let (vocab, h, n) = (50, 6, 5);
        let w = values(vocab * h, 1);
        let hidden = values(n * h, 2);
        let pairs = [(0usize, 3u32), (2, 49), (2, 0), (4, 21), (1, 7)];
        let (loss, dh) = head_loss(Mat::rows(&w, h), (vocab, h), &hidden, &pairs, 7).unwrap();
        let mut want = 0.0;
        let mut want_dh = vec![0.0; n * h];
        for &(row, tok) in &pairs {
            let x = &hidden[row * h..(row + 1) * h];
            let l: Vec<f64> = (0..vocab)
                .map(|v| (0..h).map(|j| x[j] * w[v * h + j]).sum())
                .collect();
            let mx = l.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = l.iter().map(|v| (v - mx).exp()).sum();
            want += (z.ln() + mx - l[tok as usize]) / pairs.len() as f64;
            for v in 0..vocab {
                let p = (l[v] - mx).exp() / z - (v == tok as usize) as u8 as f64;
                for j in 0..h {
                    want_dh[row * h + j] += p * w[v * h + j] / pairs.len() as f64;
                }
            }
        }
        assert!((loss - want).abs() < 1e-12, "{loss} vs {want}");
        for (i, (a, b)) in dh.iter().zip(&want_dh).enumerate() {
            assert!((a - b).abs() < 1e-12, "dh[{i}]: {a} vs {b}");
        }
        // rows without a target get no gradient
        assert!(dh[3 * h..4 * h].iter().all(|&v| v == 0.0));
        let e = head_loss(Mat::rows(&w, h), (vocab, h), &hidden, &[(0, 50)], 7).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }
}
