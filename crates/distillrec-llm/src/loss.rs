//! Loss heads on the last hidden states of the explicit path: the mean
//! next-token cross-entropy of the LM head ([`lm_head_loss`]), computed in
//! blocks of rows so that the `[rows, vocab]` logits never exist at once,
//! with its gradient with respect to the hidden states (what
//! `pass::backward` takes).

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::{mm, real, weight_view, Mat, MatMut, Real};
use crate::model::Model;

/// Mean next-token cross-entropy of the LM head over `(row, target)`
/// pairs, computed in blocks of rows so the `[rows, vocab]` logits never
/// exist at once. Returns the loss and `d loss / d hidden` `[N, hidden]`.
pub fn lm_head_loss<T: Real>(
    model: &Model,
    hidden: &[T],
    pairs: &[(usize, u32)],
) -> Result<(f64, Vec<T>)> {
    let h = model.config().hidden_size;
    let vocab = model.config().vocab_size;
    if pairs.is_empty() {
        return Err(Error::Input(
            "no target tokens for the language-model loss".into(),
        ));
    }
    let g = model.lm_head_weight().storage_and_layout();
    let wv = weight_view::<T, _>(&g)?; // [vocab, h]
    let mut dh = vec![T::zero(); hidden.len()];
    let inv_n = 1.0 / pairs.len() as f64;
    let mut loss = 0.0;
    const BLOCK: usize = 64;
    for chunk in pairs.chunks(BLOCK) {
        let m = chunk.len();
        let mut x = vec![T::zero(); m * h];
        for (i, &(row, tok)) in chunk.iter().enumerate() {
            if tok as usize >= vocab || (row + 1) * h > hidden.len() {
                return Err(Error::Input(format!(
                    "target token {tok} or row {row} out of range"
                )));
            }
            x[i * h..(i + 1) * h].copy_from_slice(&hidden[row * h..(row + 1) * h]);
        }
        let mut logits = vec![T::zero(); m * vocab];
        mm(
            MatMut::rows(&mut logits, vocab),
            (m, vocab, h),
            Mat::rows(&x, h),
            wv.t(),
            false,
        );
        let l: Vec<f64> = logits
            .par_chunks_mut(vocab)
            .zip(chunk.par_iter())
            .map(|(row, &(_, tok))| {
                let mx = row
                    .iter()
                    .fold(T::neg_infinity(), |a, &b| num_traits::Float::max(a, b));
                let z = T::exp_shift_sum(row, mx);
                let lp = (row[tok as usize] / z).ln().to_f64();
                let s: T = real(inv_n);
                for x in row.iter_mut() {
                    *x = *x / z * s;
                }
                row[tok as usize] -= s;
                -lp
            })
            .collect();
        loss += l.iter().sum::<f64>() * inv_n;
        let mut dx = vec![T::zero(); m * h];
        mm(
            MatMut::rows(&mut dx, h),
            (m, h, vocab),
            Mat::rows(&logits, vocab),
            wv,
            false,
        );
        for (i, &(row, _)) in chunk.iter().enumerate() {
            for (o, &v) in dh[row * h..(row + 1) * h]
                .iter_mut()
                .zip(&dx[i * h..(i + 1) * h])
            {
                *o += v;
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
