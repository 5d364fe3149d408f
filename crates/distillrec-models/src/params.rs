//! Trainable parameters: named `Var`s in a fixed order, initialised from a
//! seeded generator (candle's CPU generator cannot be seeded, SPEC 2.6),
//! saved and loaded as safetensors.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::distributions::{Distribution, Uniform};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Named trainable tensors; iteration order is the name order.
#[derive(Clone, Default)]
pub struct Params {
    vars: BTreeMap<String, Var>,
}

/// Seeded parameter initialiser.
pub struct Init {
    rng: ChaCha8Rng,
    device: Device,
}

impl Init {
    /// An initialiser drawing from `seed`.
    pub fn new(seed: u64, device: &Device) -> Self {
        Init {
            rng: ChaCha8Rng::seed_from_u64(seed),
            device: device.clone(),
        }
    }

    /// Normal(0, std) values (Box–Muller on the seeded generator).
    pub fn normal(&mut self, shape: &[usize], std: f64) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let u = Uniform::new(f64::EPSILON, 1.0);
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let (a, b) = (u.sample(&mut self.rng), u.sample(&mut self.rng));
            let r = (-2.0 * a.ln()).sqrt();
            let t = 2.0 * std::f64::consts::PI * b;
            v.push((std * r * t.cos()) as f32);
            if v.len() < n {
                v.push((std * r * t.sin()) as f32);
            }
        }
        Tensor::from_vec(v, shape, &self.device)
    }

    /// Uniform(-bound, bound) values.
    pub fn uniform(&mut self, shape: &[usize], bound: f64) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let u = Uniform::new_inclusive(-bound as f32, bound as f32);
        let v: Vec<f32> = (0..n).map(|_| u.sample(&mut self.rng)).collect();
        Tensor::from_vec(v, shape, &self.device)
    }

    /// PyTorch's default `nn.Linear` weight init: U(±1/√fan_in).
    pub fn linear_weight(&mut self, out: usize, inp: usize) -> Result<Tensor> {
        self.uniform(&[out, inp], 1.0 / (inp as f64).sqrt())
    }

    /// Xavier-normal init for an embedding table `[rows, dim]`.
    pub fn xavier(&mut self, rows: usize, dim: usize) -> Result<Tensor> {
        self.normal(&[rows, dim], (2.0 / (rows + dim) as f64).sqrt())
    }

    /// An item table `[N + 1, dim]` (Xavier-normal) whose padding row 0 starts at zero.
    pub fn item_table(&mut self, num_items: usize, dim: usize) -> Result<Tensor> {
        let t = self.xavier(num_items + 1, dim)?;
        let zero = Tensor::zeros((1, dim), DType::F32, &self.device)?;
        Tensor::cat(&[&zero, &t.narrow(0, 1, num_items)?], 0)
    }

    /// Constant values.
    pub fn constant(&self, shape: &[usize], value: f64) -> Result<Tensor> {
        Tensor::full(value as f32, shape, &self.device)?.to_dtype(DType::F32)
    }
}

impl Params {
    /// Registers a new trainable tensor under `name` and returns it.
    pub fn add(&mut self, name: &str, init: Tensor) -> Result<Tensor> {
        if self.vars.contains_key(name) {
            candle_core::bail!("parameter '{name}' registered twice");
        }
        let v = Var::from_tensor(&init)?;
        let t = v.as_tensor().clone();
        self.vars.insert(name.to_string(), v);
        Ok(t)
    }

    /// Adds every variable of `other` under `prefix + name` (sharing the
    /// same storage, so updates through either are seen by both).
    pub fn extend_prefixed(&mut self, prefix: &str, other: &Params) {
        for (k, v) in &other.vars {
            self.vars.insert(format!("{prefix}{k}"), v.clone());
        }
    }

    /// The variables in name order.
    pub fn vars(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }

    /// One variable by name.
    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars.get(name)
    }

    /// Number of scalar parameters.
    pub fn count(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// The tensors by name (for saving).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Overwrites every parameter from `tensors`; each must exist with the
    /// same shape, and no parameter may be missing. Errors name the tensor.
    pub fn load_from(&self, tensors: &BTreeMap<String, Tensor>, source: &Path) -> Result<()> {
        for (name, var) in &self.vars {
            let t = tensors.get(name).ok_or_else(|| {
                candle_core::Error::Msg(format!("{}: tensor '{name}' is missing", source.display()))
            })?;
            if t.dims() != var.dims() {
                candle_core::bail!(
                    "{}: tensor '{name}' has shape {:?}, the model expects {:?}",
                    source.display(),
                    t.dims(),
                    var.dims()
                );
            }
            var.set(&t.to_dtype(DType::F32)?.to_device(var.device())?)?;
        }
        Ok(())
    }
}

/// Serialises named tensors to safetensors bytes (for an atomic write).
pub fn safetensors_bytes(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for (name, t) in tensors {
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        data.push((name.clone(), bytes, t.dims().to_vec()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, b, s)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| candle_core::Error::Msg(format!("tensor '{n}': {e}")))
        })
        .collect::<Result<_>>()?;
    safetensors::tensor::serialize(views, None).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// Reads a safetensors file; a truncated or corrupt file is an error naming it.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        candle_core::Error::Msg(format!(
            "{}: not a valid safetensors file ({e})",
            path.display()
        ))
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            candle_core::bail!(
                "{}: tensor '{name}' is {:?}, expected F32",
                path.display(),
                view.dtype()
            );
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(bad) = data.iter().position(|x| !x.is_finite()) {
            candle_core::bail!(
                "{}: tensor '{name}' holds a non-finite value at index {bad}",
                path.display()
            );
        }
        out.insert(name, Tensor::from_vec(data, view.shape(), device)?);
    }
    Ok(out)
}
