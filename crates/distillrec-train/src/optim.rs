//! AdamW (PyTorch semantics: decoupled weight decay, bias-corrected moments)
//! with global-norm gradient clipping. Its moments live on the host so that
//! they can be saved with a checkpoint and a resumed run continues exactly.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor};

use distillrec_models::Params;

/// AdamW hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate.
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
    /// Defaults of `torch.optim.AdamW` with the given lr, decay and clip.
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

/// AdamW state: step count and first/second moments per parameter name.
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Steps taken.
    pub step: u64,
    m: BTreeMap<String, Vec<f32>>,
    v: BTreeMap<String, Vec<f32>>,
}

impl AdamW {
    /// A fresh optimiser for `params`.
    pub fn new(config: AdamWConfig, params: &Params) -> Self {
        let zeros = |p: &Params| {
            p.vars()
                .map(|(k, v)| (k.clone(), vec![0f32; v.elem_count()]))
                .collect()
        };
        AdamW {
            config,
            step: 0,
            m: zeros(params),
            v: zeros(params),
        }
    }

    /// Applies one update from `grads`; returns the gradient norm before clipping.
    pub fn step(&mut self, params: &Params, grads: &GradStore) -> Result<f64> {
        let mut host: Vec<(String, Vec<f32>)> = Vec::new();
        let mut sq = 0f64;
        for (name, var) in params.vars() {
            if let Some(g) = grads.get(var) {
                let g = g.flatten_all()?.to_vec1::<f32>()?;
                sq += g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
                host.push((name.clone(), g));
            }
        }
        let norm = sq.sqrt();
        if !norm.is_finite() {
            candle_core::bail!(
                "gradient norm is {norm}: training diverged (lower train.*.lr or enable grad_clip)"
            );
        }
        let clip = if self.config.grad_clip > 0.0 && norm > self.config.grad_clip {
            self.config.grad_clip / norm
        } else {
            1.0
        };
        self.step += 1;
        let c = &self.config;
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        let step_size = (c.lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let decay = 1.0 - (c.lr * c.weight_decay) as f32;
        let eps = c.eps as f32;
        for (name, g) in host {
            let var = params.get(&name).expect("name from params");
            let mut p = var.flatten_all()?.to_vec1::<f32>()?;
            let m = self
                .m
                .get_mut(&name)
                .expect("moments exist for every parameter");
            let v = self
                .v
                .get_mut(&name)
                .expect("moments exist for every parameter");
            let clip = clip as f32;
            for i in 0..p.len() {
                let gi = g[i] * clip;
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                p[i] *= decay;
                p[i] -= step_size * m[i] / (v[i].sqrt() / bc2_sqrt + eps);
            }
            var.set(&Tensor::from_vec(p, var.shape(), var.device())?)?;
        }
        Ok(norm)
    }

    /// The moments as named tensors (`adam.m.<name>`, `adam.v.<name>`) plus the step.
    pub fn state_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (k, m) in &self.m {
            out.insert(
                format!("adam.m.{k}"),
                Tensor::from_vec(m.clone(), m.len(), &Device::Cpu)?,
            );
        }
        for (k, v) in &self.v {
            out.insert(
                format!("adam.v.{k}"),
                Tensor::from_vec(v.clone(), v.len(), &Device::Cpu)?,
            );
        }
        Ok(out)
    }

    /// Restores moments saved by [`AdamW::state_tensors`].
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, step: u64) -> Result<()> {
        for (prefix, map) in [("adam.m.", &mut self.m), ("adam.v.", &mut self.v)] {
            for (k, buf) in map.iter_mut() {
                let t = tensors.get(&format!("{prefix}{k}")).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state for '{k}' is missing"))
                })?;
                let v = t.flatten_all()?.to_vec1::<f32>()?;
                if v.len() != buf.len() {
                    candle_core::bail!(
                        "optimizer state for '{k}' has {} values, expected {}",
                        v.len(),
                        buf.len()
                    );
                }
                *buf = v;
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distillrec_models::{Init, Params};

    #[test]
    fn matches_pytorch_adamw_by_hand() {
        // One parameter p = 1, gradient of p² is 2p; lr 0.1, wd 0.01.
        let dev = Device::Cpu;
        let mut params = Params::default();
        let init = Init::new(0, &dev);
        let p = params.add("p", init.constant(&[1], 1.0).unwrap()).unwrap();
        let mut opt = AdamW::new(AdamWConfig::new(0.1, 0.01, 0.0), &params);
        let g = p.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        opt.step(&params, &g).unwrap();
        // step 1: m̂ = g, v̂ = g², update = lr·g/(|g|+eps) = 0.1; decay 1 - 0.001
        let got = params.get("p").unwrap().to_vec1::<f32>().unwrap()[0];
        let want = 1.0 * (1.0 - 0.1 * 0.01) - 0.1 * 2.0 / (2.0 + 1e-8);
        assert!((got as f64 - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn clipping_scales_the_gradient() {
        let dev = Device::Cpu;
        let mut params = Params::default();
        let init = Init::new(0, &dev);
        let p = params.add("p", init.constant(&[2], 3.0).unwrap()).unwrap();
        let mut opt = AdamW::new(AdamWConfig::new(0.1, 0.0, 1.0), &params);
        let g = (p * 10.0).unwrap().sum_all().unwrap().backward().unwrap();
        let norm = opt.step(&params, &g).unwrap();
        assert!((norm - 200f64.sqrt()).abs() < 1e-4);
        // Adam normalises the magnitude away, but the state records the clipped gradient
        let m = &opt.state_tensors().unwrap()["adam.m.p"]
            .to_vec1::<f32>()
            .unwrap();
        assert!((m[0] - 0.1 * 10.0 / 200f32.sqrt()).abs() < 1e-6, "{m:?}");
    }
}
