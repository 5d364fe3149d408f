//! The one AdamW of distillrec, over flat `f32` buffers: students and
//! distillation (through `distillrec_train::optim`'s adapter from candle
//! `Params`), the LLM teacher and the LLM benchmarks all step with it.
//!
//! Arithmetic is PyTorch's `torch.optim.AdamW` in `f32` (decoupled weight
//! decay, bias-corrected moments, `ε` added after `√v̂`), preceded by
//! global-norm clipping: the norm is taken in `f64` over every gradient of
//! the step, a non-finite norm is refused before anything changes (the run
//! diverged), and a norm above `grad_clip` scales every gradient by
//! `grad_clip / norm`. The moments are plain host vectors, so a checkpoint
//! can save them and a resumed run continues exactly.

/// Why a step or a restore was refused.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// The gradient norm is NaN or infinite.
    #[error("gradient norm is {0}: training diverged (lower train.*.lr or enable grad_clip)")]
    Diverged(f64),
    /// Saved moments do not fit the parameters.
    #[error("optimiser state: {0}")]
    State(String),
}

/// AdamW hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate (the teacher's schedule changes it between steps).
    pub lr: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: off).
    pub grad_clip: f64,
}

impl AdamWConfig {
    /// Defaults of `torch.optim.AdamW` (β = (0.9, 0.999), ε = 1e-8) with
    /// the given lr, decay and clip.
    pub fn new(lr: f64, weight_decay: f64, grad_clip: f64) -> Self {
        AdamWConfig {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            grad_clip,
        }
    }
}

/// One tensor of a step: its index among the optimiser's tensors, its
/// values and its gradient.
pub struct Update<'a> {
    /// Position in the sizes the optimiser was made with.
    pub index: usize,
    /// The values, updated in place.
    pub param: &'a mut [f32],
    /// The gradient (same length).
    pub grad: &'a [f32],
}

/// AdamW state: hyper-parameters, steps taken, and first and second
/// moments per tensor.
#[derive(Clone, Debug)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Steps taken.
    pub step: u64,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl AdamW {
    /// A fresh optimiser for tensors of the given sizes.
    pub fn new(config: AdamWConfig, sizes: &[usize]) -> Self {
        let zeros = || sizes.iter().map(|&n| vec![0f32; n]).collect();
        AdamW {
            config,
            step: 0,
            m: zeros(),
            v: zeros(),
        }
    }

    /// One update of every tensor (`params` and `grads` in the order and
    /// sizes of construction); returns the gradient norm before clipping.
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]]) -> Result<f64, OptimError> {
        let mut updates: Vec<Update> = params
            .iter_mut()
            .zip(grads)
            .enumerate()
            .map(|(index, (p, &g))| Update {
                index,
                param: p,
                grad: g,
            })
            .collect();
        self.step_some(&mut updates)
    }

    /// One update of the tensors that have a gradient this step (the
    /// others keep their values and moments); returns the gradient norm
    /// before clipping.
    pub fn step_some(&mut self, updates: &mut [Update]) -> Result<f64, OptimError> {
        for u in updates.iter() {
            let n = self.m.get(u.index).map(Vec::len);
            if n != Some(u.param.len()) || u.grad.len() != u.param.len() {
                return Err(OptimError::State(format!(
                    "tensor {} has {} values and a gradient of {}, the optimiser expects {n:?}",
                    u.index,
                    u.param.len(),
                    u.grad.len()
                )));
            }
        }
        let sq: f64 = updates
            .iter()
            .map(|u| u.grad.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
            .fold(0.0, |a, b| a + b);
        let norm = sq.sqrt();
        if !norm.is_finite() {
            return Err(OptimError::Diverged(norm));
        }
        let c = &self.config;
        let clip = if c.grad_clip > 0.0 && norm > c.grad_clip {
            c.grad_clip / norm
        } else {
            1.0
        };
        self.step += 1;
        let k = Coefficients::of(c, self.step, clip);
        for u in updates.iter_mut() {
            let (m, v) = (&mut self.m[u.index], &mut self.v[u.index]);
            k.apply(u.param, u.grad, m, v);
        }
        Ok(norm)
    }

    /// The first and second moments, one vector per tensor.
    pub fn moments(&self) -> (&[Vec<f32>], &[Vec<f32>]) {
        (&self.m, &self.v)
    }

    /// Restores moments saved from [`AdamW::moments`] and the step count;
    /// refuses moments of other sizes than the tensors'.
    pub fn restore(
        &mut self,
        step: u64,
        m: Vec<Vec<f32>>,
        v: Vec<Vec<f32>>,
    ) -> Result<(), OptimError> {
        let sizes = |x: &[Vec<f32>]| x.iter().map(Vec::len).collect::<Vec<_>>();
        if sizes(&m) != sizes(&self.m) || sizes(&v) != sizes(&self.v) {
            return Err(OptimError::State(
                "moments of other shapes than the parameters".into(),
            ));
        }
        if i32::try_from(step).is_err() {
            return Err(OptimError::State(format!("step {step} out of range")));
        }
        (self.step, self.m, self.v) = (step, m, v);
        Ok(())
    }
}

/// The per-step constants of the update, in `f32` as PyTorch applies them.
struct Coefficients {
    b1: f32,
    b2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    decay: f32,
    eps: f32,
    clip: f32,
}

impl Coefficients {
    fn of(c: &AdamWConfig, step: u64, clip: f64) -> Self {
        let t = step.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        Coefficients {
            b1: c.beta1 as f32,
            b2: c.beta2 as f32,
            step_size: (c.lr / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            decay: 1.0 - (c.lr * c.weight_decay) as f32,
            eps: c.eps as f32,
            clip: clip as f32,
        }
    }

    /// `p ← p·(1 − lr·wd) − lr/bc₁ · m / (√v / √bc₂ + ε)` after the moment
    /// updates with the clipped gradient.
    fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let k = self;
        for i in 0..p.len() {
            let gi = g[i] * k.clip;
            m[i] = k.b1 * m[i] + (1.0 - k.b1) * gi;
            v[i] = k.b2 * v[i] + (1.0 - k.b2) * gi * gi;
            p[i] *= k.decay;
            p[i] -= k.step_size * m[i] / (v[i].sqrt() / k.bc2_sqrt + k.eps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_pytorch_adamw_by_hand() {
        // One parameter p = 1, gradient of p² is 2p; lr 0.1, wd 0.01.
        let mut p = vec![1f32];
        let mut opt = AdamW::new(AdamWConfig::new(0.1, 0.01, 0.0), &[1]);
        let g = [2f32];
        opt.step(&mut [&mut p], &[&g]).unwrap();
        // step 1: m̂ = g, v̂ = g², update = lr·g/(|g|+eps) = 0.1; decay 1 - 0.001
        let want = 1.0 * (1.0 - 0.1 * 0.01) - 0.1 * 2.0 / (2.0 + 1e-8);
        assert!((p[0] as f64 - want).abs() < 1e-6, "{} vs {want}", p[0]);
    }

    #[test]
    fn clipping_scales_the_gradient() {
        let mut p = vec![3f32; 2];
        let mut opt = AdamW::new(AdamWConfig::new(0.1, 0.0, 1.0), &[2]);
        let norm = opt.step(&mut [&mut p], &[&[10.0, 10.0]]).unwrap();
        assert!((norm - 200f64.sqrt()).abs() < 1e-4);
        // Adam normalises the magnitude away, but the state records the clipped gradient
        let m = &opt.moments().0[0];
        assert!((m[0] - 0.1 * 10.0 / 200f32.sqrt()).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn a_non_finite_norm_changes_nothing() {
        let mut p = vec![1f32, 2.0];
        let mut opt = AdamW::new(AdamWConfig::new(0.1, 0.0, 1.0), &[2]);
        let e = opt.step(&mut [&mut p], &[&[f32::NAN, 1.0]]).unwrap_err();
        assert!(e.to_string().contains("training diverged"), "{e}");
        assert_eq!((p, opt.step), (vec![1.0, 2.0], 0));
        assert!(opt.moments().0[0].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn tensors_without_a_gradient_keep_their_moments() {
        let (mut a, mut b) = (vec![1f32], vec![1f32]);
        let mut opt = AdamW::new(AdamWConfig::new(0.1, 0.01, 0.0), &[1, 1]);
        opt.step_some(&mut [Update {
            index: 1,
            param: &mut b,
            grad: &[2.0],
        }])
        .unwrap();
        assert_eq!(a, [1.0]);
        assert_eq!(opt.moments().0[0], [0.0]);
        assert_ne!(opt.moments().0[1], [0.0]);
        // a later full step sees the shared step count
        opt.step(&mut [&mut a, &mut b], &[&[2.0], &[2.0]]).unwrap();
        assert_eq!(opt.step, 2);
    }

    #[test]
    fn a_restore_of_other_shapes_is_refused() {
        let mut opt = AdamW::new(AdamWConfig::new(0.1, 0.0, 0.0), &[2, 3]);
        let e = opt
            .restore(4, vec![vec![0.0; 2]], vec![vec![0.0; 2]])
            .unwrap_err();
        assert!(e.to_string().contains("other shapes"), "{e}");
        opt.restore(
            4,
            vec![vec![0.5; 2], vec![0.0; 3]],
            vec![vec![0.0; 2], vec![0.0; 3]],
        )
        .unwrap();
        assert_eq!((opt.step, opt.moments().0[0][0]), (4, 0.5));
    }
}
