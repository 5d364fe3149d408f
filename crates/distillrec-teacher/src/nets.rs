//! The teacher's small trainable networks, kept as flat named parameters
//! (so one optimiser and one checkpoint format cover them and the
//! adapters) and run as candle graphs built per step:
//!
//! - projector `d → H → H` with GELU: the student's item embedding into
//!   the LLM's input space (placeholder tokens, and the ranking head's
//!   item table);
//! - gate `d → g → E` with GELU and a softmax (no temperature): one gate
//!   vector per sample from the student's sequence representation;
//! - candidate cue (generative objectives with `teacher.student_prior`):
//!   a vector `c [H]` added to the input embeddings of each candidate's
//!   title tokens and `[CansEmb]` placeholder, scaled by the frozen
//!   student's score of that candidate, standardised over the prompt's
//!   candidates;
//! - ranking head: the item table in LLM space is `T M + projector(e)`,
//!   with `T` the frozen LLM title embeddings and `M [H, H]` trained from
//!   `I`; a row's scores are scaled cosines of its last hidden state with
//!   the table (scale learnt, from 10).

use anyhow::{anyhow, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One named parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// Name in checkpoints (`projector.w1`, ...).
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub value: Vec<f32>,
}

/// The networks' sizes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetSizes {
    /// Student width `d`.
    pub student: usize,
    /// LLM hidden width `H`.
    pub hidden: usize,
    /// Gate hidden width (unused with one expert).
    pub gate_hidden: usize,
    /// Experts `E` (1: no gate).
    pub experts: usize,
    /// Whether the candidate cue exists (generative objectives with the
    /// student prior).
    pub cue: bool,
    /// Whether the ranking map exists (ranking objectives).
    pub ranking: bool,
    /// Initial scale of the ranking head's cosines ([`INIT_SCALE`]; 1 when
    /// the head adds to the student's scores, so it starts as the student).
    pub init_scale: f64,
}

/// Projector, gate and ranking map.
#[derive(Clone, Debug, PartialEq)]
pub struct Nets {
    /// Sizes.
    pub sizes: NetSizes,
    /// Parameters in a fixed order.
    pub params: Vec<Param>,
}

/// Checkpoint name of the candidate cue.
pub const CUE: &str = "prior.cue";

/// Initial scale of the ranking head's cosine scores.
pub const INIT_SCALE: f64 = 10.0;

fn uniform(rng: &mut ChaCha8Rng, n: usize, bound: f64) -> Vec<f32> {
    (0..n)
        .map(|_| rng.gen_range(-bound..bound) as f32)
        .collect()
}

impl Nets {
    /// Fresh networks: linear layers initialised as PyTorch's `nn.Linear`
    /// (uniform `±1/√in` weights and biases), the ranking map as `I`.
    pub fn new(sizes: NetSizes, seed: u64) -> Nets {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x005E_ED0F_7E4C_4E25);
        let mut params = Vec::new();
        let mut linear = |name: &str, i: usize, o: usize, rng: &mut ChaCha8Rng| {
            let b = 1.0 / (i as f64).sqrt();
            params.push(Param {
                name: format!("{name}.weight"),
                shape: vec![i, o],
                value: uniform(rng, i * o, b),
            });
            params.push(Param {
                name: format!("{name}.bias"),
                shape: vec![o],
                value: uniform(rng, o, b),
            });
        };
        let (d, h, g) = (sizes.student, sizes.hidden, sizes.gate_hidden);
        linear("projector.0", d, h, &mut rng);
        linear("projector.2", h, h, &mut rng);
        if sizes.experts > 1 {
            linear("gate.0", d, g, &mut rng);
            linear("gate.2", g, sizes.experts, &mut rng);
        }
        if sizes.cue {
            // the projector's output scale, so the cue is visible from the
            // first step without swamping the item embedding
            let b = 1.0 / (h as f64).sqrt();
            params.push(Param {
                name: CUE.into(),
                shape: vec![h],
                value: uniform(&mut rng, h, b),
            });
        }
        if sizes.ranking {
            let mut m = vec![0f32; h * h];
            for i in 0..h {
                m[i * h + i] = 1.0;
            }
            params.push(Param {
                name: "head.map".into(),
                shape: vec![h, h],
                value: m,
            });
            params.push(Param {
                name: "head.log_scale".into(),
                shape: vec![1],
                value: vec![sizes.init_scale.ln() as f32],
            });
        }
        Nets { sizes, params }
    }

    /// Index of the candidate cue in [`Nets::params`], if it exists.
    pub fn cue_index(&self) -> Option<usize> {
        self.sizes
            .cue
            .then_some(if self.sizes.experts > 1 { 8 } else { 4 })
    }

    /// Candle variables on `dev` holding the current values (one step's
    /// graph; always f32).
    pub fn live(&self, dev: &Device) -> Result<Live> {
        let vars = self
            .params
            .iter()
            .map(|p| Var::from_vec(p.value.clone(), p.shape.as_slice(), dev))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Live {
            sizes: self.sizes,
            vars,
        })
    }
}

/// One step's candle variables of [`Nets`].
pub struct Live {
    sizes: NetSizes,
    /// The variables, in [`Nets::params`] order.
    pub vars: Vec<Var>,
}

fn mlp(x: &Tensor, v: &[Var]) -> Result<Tensor> {
    let h = x
        .matmul(v[0].as_tensor())?
        .broadcast_add(v[1].as_tensor())?;
    Ok(h.gelu_erf()?
        .matmul(v[2].as_tensor())?
        .broadcast_add(v[3].as_tensor())?)
}

impl Live {
    /// `projector(e)` `[n, H]` for student item embeddings `e [n, d]`.
    pub fn project(&self, e: &Tensor) -> Result<Tensor> {
        mlp(e, &self.vars[0..4])
    }

    /// The gate `[B, E]` (softmax rows) for student representations
    /// `z [B, d]`; `None` with one expert.
    pub fn gate(&self, z: &Tensor) -> Result<Option<Tensor>> {
        if self.sizes.experts == 1 {
            return Ok(None);
        }
        // the composed softmax: candle's fused one has no backward
        Ok(Some(candle_nn::ops::softmax(
            &mlp(z, &self.vars[4..8])?,
            D::Minus1,
        )?))
    }

    fn head(&self) -> Result<(&Var, &Var)> {
        match (self.sizes.ranking, self.vars.as_slice()) {
            (true, [.., m, s]) => Ok((m, s)),
            _ => Err(anyhow!("these networks have no ranking head")),
        }
    }

    /// The ranking head's item table `[N + 1, H]`: `T M + projected`.
    pub fn item_table(&self, titles: &Tensor, projected: &Tensor) -> Result<Tensor> {
        let (m, _) = self.head()?;
        Ok((titles.matmul(m.as_tensor())? + projected)?)
    }

    /// Ranking scores `[B, N + 1]`: the cosine of each last hidden state
    /// `h [B, H]` with each row of `table`, times a learnt scale (init
    /// [`INIT_SCALE`]); column 0 (padding) pushed to −1e9 so it never wins
    /// and takes no probability. Cosines keep the first steps sane whatever
    /// the backbone's hidden-state norms (a raw dot product of two final
    /// hidden states starts far beyond a softmax's useful range).
    pub fn scores(&self, h: &Tensor, table: &Tensor) -> Result<Tensor> {
        let (_, log_s) = self.head()?;
        let unit = |x: &Tensor| -> Result<Tensor> {
            let n = (x.sqr()?.sum_keepdim(1)? + 1e-12)?.sqrt()?;
            Ok(x.broadcast_div(&n)?)
        };
        let n1 = table.dim(0)?;
        let cos = unit(h)?.matmul(&unit(table)?.t()?)?;
        let s = cos.broadcast_mul(&log_s.as_tensor().exp()?.reshape((1, 1))?)?;
        let mut pad = vec![0f32; n1];
        pad[0] = -1e9;
        let pad = Tensor::from_vec(pad, (1, n1), h.device())?;
        Ok(s.broadcast_add(&pad)?)
    }

    /// The gradients of every variable (zeros where none flowed), in
    /// [`Nets::params`] order.
    pub fn grads(&self, store: &candle_core::backprop::GradStore) -> Result<Vec<Vec<f32>>> {
        self.vars
            .iter()
            .map(|v| {
                Ok(match store.get(v.as_tensor()) {
                    Some(g) => g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                    None => vec![0.0; v.elem_count()],
                })
            })
            .collect()
    }
}
