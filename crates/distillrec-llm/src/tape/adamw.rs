//! AdamW over flat `f32` parameter buffers, the optimiser of the teacher.
//! It lives here until the optimisers are unified; users reach it as
//! `distillrec_llm::AdamW`.

use crate::error::{Error, Result};

/// AdamW over flat parameter buffers (the defaults of `torch.optim.AdamW`
/// and candle's: β = (0.9, 0.999), ε = 1e-8, decoupled weight decay).
#[derive(Clone, Debug)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f64,
    /// Weight decay (decoupled).
    pub weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    step: i32,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl AdamW {
    /// An optimiser for parameters of the given sizes.
    pub fn new(sizes: &[usize], lr: f64, weight_decay: f64) -> AdamW {
        AdamW {
            lr,
            weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    /// Updates done, first and second moments (what a checkpoint keeps
    /// for an exact resume).
    pub fn state(&self) -> (u64, &[Vec<f32>], &[Vec<f32>]) {
        (self.step as u64, &self.m, &self.v)
    }

    /// Restores a [`AdamW::state`]; refuses moments of other sizes.
    pub fn restore(&mut self, step: u64, m: Vec<Vec<f32>>, v: Vec<Vec<f32>>) -> Result<()> {
        let sizes = |x: &[Vec<f32>]| x.iter().map(Vec::len).collect::<Vec<_>>();
        if sizes(&m) != sizes(&self.m) || sizes(&v) != sizes(&self.v) {
            return Err(Error::Input(
                "optimiser moments of other shapes than the parameters".into(),
            ));
        }
        self.step = i32::try_from(step)
            .map_err(|_| Error::Input(format!("optimiser step {step} out of range")))?;
        (self.m, self.v) = (m, v);
        Ok(())
    }

    /// One update of `params` (same order and sizes as at construction)
    /// with `grads`.
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]]) {
        self.step += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.step);
        let c2 = 1.0 - b2.powi(self.step);
        let (lr, wd, eps) = (self.lr, self.weight_decay, self.eps);
        for (((p, g), m), v) in params
            .iter_mut()
            .zip(grads)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            for (((p, &g), m), v) in p
                .iter_mut()
                .zip(g.iter())
                .zip(m.iter_mut())
                .zip(v.iter_mut())
            {
                let g = g as f64;
                *m = (b1 * *m as f64 + (1.0 - b1) * g) as f32;
                *v = (b2 * *v as f64 + (1.0 - b2) * g * g) as f32;
                let mh = *m as f64 / c1;
                let vh = *v as f64 / c2;
                let x = *p as f64 * (1.0 - lr * wd);
                *p = (x - lr * mh / (vh.sqrt() + eps)) as f32;
            }
        }
    }
}
