//! The students' side of the one AdamW ([`distillrec_models::optim`]): a
//! thin adapter from candle [`Params`] and a [`GradStore`] to the flat
//! buffers it steps, with the moments saved in checkpoints as
//! `adam.m.<name>` / `adam.v.<name>`.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor};

use distillrec_models::optim::{self, Update};
use distillrec_models::Params;

pub use distillrec_models::optim::AdamWConfig;

/// AdamW over named candle parameters.
pub struct AdamW {
    inner: optim::AdamW,
    /// Parameter names, in the order of the inner optimiser's tensors.
    names: Vec<String>,
}

fn msg(e: optim::OptimError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl AdamW {
    /// A fresh optimiser for `params`.
    pub fn new(config: AdamWConfig, params: &Params) -> Self {
        let (names, sizes): (Vec<String>, Vec<usize>) = params
            .vars()
            .map(|(k, v)| (k.clone(), v.elem_count()))
            .unzip();
        AdamW {
            inner: optim::AdamW::new(config, &sizes),
            names,
        }
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.inner.step
    }

    /// Applies one update from `grads` to the parameters that have one;
    /// returns the gradient norm before clipping.
    pub fn step(&mut self, params: &Params, grads: &GradStore) -> Result<f64> {
        let mut host: Vec<(usize, &String, Vec<f32>, Vec<f32>)> = Vec::new();
        for (name, var) in params.vars() {
            let Some(g) = grads.get(var) else { continue };
            let index = self.index(name)?;
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            let p = var.flatten_all()?.to_vec1::<f32>()?;
            host.push((index, name, p, g));
        }
        let mut updates: Vec<Update> = host
            .iter_mut()
            .map(|(index, _, p, g)| Update {
                index: *index,
                param: p,
                grad: g,
            })
            .collect();
        let norm = self.inner.step_some(&mut updates).map_err(msg)?;
        for (_, name, p, _) in host {
            let var = params.get(name).expect("name from params");
            var.set(&Tensor::from_vec(p, var.shape(), var.device())?)?;
        }
        Ok(norm)
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| candle_core::Error::Msg(format!("no optimiser state for '{name}'")))
    }

    /// The moments as named tensors (`adam.m.<name>`, `adam.v.<name>`).
    pub fn state_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let (m, v) = self.inner.moments();
        let mut out = BTreeMap::new();
        for (prefix, moments) in [("adam.m.", m), ("adam.v.", v)] {
            for (k, x) in self.names.iter().zip(moments) {
                let t = Tensor::from_vec(x.clone(), x.len(), &Device::Cpu)?;
                out.insert(format!("{prefix}{k}"), t);
            }
        }
        Ok(out)
    }

    /// Restores moments saved by [`AdamW::state_tensors`] and the step.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, step: u64) -> Result<()> {
        let (m0, _) = self.inner.moments();
        let sizes: Vec<usize> = m0.iter().map(Vec::len).collect();
        let read = |prefix: &str| -> Result<Vec<Vec<f32>>> {
            let mut out = Vec::new();
            for (k, &n) in self.names.iter().zip(&sizes) {
                let t = tensors.get(&format!("{prefix}{k}")).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state for '{k}' is missing"))
                })?;
                let v = t.flatten_all()?.to_vec1::<f32>()?;
                if v.len() != n {
                    candle_core::bail!(
                        "optimizer state for '{k}' has {} values, expected {n}",
                        v.len()
                    );
                }
                out.push(v);
            }
            Ok(out)
        };
        let (m, v) = (read("adam.m.")?, read("adam.v.")?);
        self.inner.restore(step, m, v).map_err(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distillrec_models::Init;

    /// The student path (candle parameters and a gradient store) and the
    /// teacher path (flat buffers) of the one AdamW give the same update,
    /// bit for bit, clipping included.
    #[test]
    fn the_student_and_teacher_paths_give_the_same_update() {
        let dev = Device::Cpu;
        let mut params = Params::default();
        let mut init = Init::new(3, &dev);
        let a = params.add("a", init.normal(&[3, 2], 0.5).unwrap()).unwrap();
        let b = params.add("b", init.normal(&[4], 0.5).unwrap()).unwrap();
        let host = |p: &Params| -> Vec<Vec<f32>> {
            p.vars()
                .map(|(_, v)| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .collect()
        };
        let mut flat = host(&params);
        let config = AdamWConfig::new(0.05, 0.01, 0.5);
        let mut student = AdamW::new(config.clone(), &params);
        let mut teacher = optim::AdamW::new(config, &[6, 4]);
        for _ in 0..3 {
            let loss = (a.sqr().unwrap().sum_all().unwrap()
                + (b.clone() * 3.0).unwrap().sum_all().unwrap())
            .unwrap();
            let g = loss.backward().unwrap();
            let grads: Vec<Vec<f32>> = [&a, &b]
                .iter()
                .map(|t| g.get(t).unwrap().flatten_all().unwrap().to_vec1().unwrap())
                .collect();
            let ns = student.step(&params, &g).unwrap();
            let mut ps: Vec<&mut [f32]> = flat.iter_mut().map(Vec::as_mut_slice).collect();
            let gs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
            let nt = teacher.step(&mut ps, &gs).unwrap();
            assert!(ns > 0.5, "the clip is exercised");
            assert_eq!(ns.to_bits(), nt.to_bits());
        }
        assert_eq!(host(&params), flat);
        let saved = student.state_tensors().unwrap();
        assert_eq!(
            saved["adam.v.b"].to_vec1::<f32>().unwrap(),
            teacher.moments().1[1]
        );
    }

    #[test]
    fn saved_moments_restore_by_name() {
        let dev = Device::Cpu;
        let mut params = Params::default();
        let init = Init::new(0, &dev);
        let p = params.add("p", init.constant(&[2], 3.0).unwrap()).unwrap();
        let mut opt = AdamW::new(AdamWConfig::new(0.1, 0.0, 1.0), &params);
        let g = (p * 10.0).unwrap().sum_all().unwrap().backward().unwrap();
        opt.step(&params, &g).unwrap();
        let saved = opt.state_tensors().unwrap();
        let mut back = AdamW::new(AdamWConfig::new(0.1, 0.0, 1.0), &params);
        back.load_state(&saved, opt.steps()).unwrap();
        assert_eq!(
            back.state_tensors().unwrap()["adam.m.p"]
                .to_vec1::<f32>()
                .unwrap(),
            saved["adam.m.p"].to_vec1::<f32>().unwrap()
        );
        assert_eq!(back.steps(), 1);
        let mut gone = saved.clone();
        gone.remove("adam.v.p");
        let e = back.load_state(&gone, 1).unwrap_err().to_string();
        assert!(e.contains("optimizer state for 'p' is missing"), "{e}");
    }
}
