//! Explicit forward and backward of the decoder stack, for training adapters
//! on a frozen Llama-family model (Llama, Qwen2: pre-norm RMSNorm, RoPE,
//! grouped-query attention, SwiGLU).
//!
//! The composed candle graph of a layer is dozens of small nodes, each with
//! its own buffers, gradient accumulation and thread fork; on a 30-layer
//! model that bookkeeping, not the matmuls, decides the speed of a LoRA step.
//! Here each layer is one forward that saves only what its backward needs
//! and one backward written by hand (as hand-written trainers such as llm.c
//! do):
//!
//! ```text
//! forward, per layer (x = layer input, N = batch·seq rows):
//!   xn = RMSNorm(x)                      saves x, 1/rms
//!   qkv = xn·Wqkv (+ bias) + adapters    saves the adapters' rank-r activations
//!   q, k = RoPE(q), RoPE(k)              saves q, k (rotated), v
//!   P = softmax(q kᵀ/√d + mask); o = P v saves P
//!   h = x + o·Wo + adapter               saves o, h
//!   hn = RMSNorm(h)                      saves 1/rms
//!   g, u = hn·Wgu + adapters             saves g, u
//!   out = h + (silu(g)·u)·Wd + adapter
//! ```
//!
//! The backward computes, for every frozen weight, only the input gradient
//! (`dY·W`), plus the gradients of the adapters, of the per-sample gate and
//! of the input embeddings (the projector of iLoRA is trained through them).
//! Frozen weights are read in place from the model's tensors.
//!
//! Adapters are [`AdapterSet`]: a mixture-of-experts LoRA (iLoRA) on any of
//! the seven projections, `E` experts sharing total rank `r`, written as one
//! rank-`r` LoRA whose rank columns are scaled per sample by the gate of
//! their expert: `delta(x) = s · ((x Aᵀ) ⊙ gate_cols) Bᵀ`, `s = α / (r/E)`.
//! `E = 1` without a gate is plain LoRA (LLaRA). [`AdapterSet::to_candle`]
//! builds the same adapters for the composed path (other devices, tests).
//!
//! Everything is generic over [`Real`] (f32 for training, f64 for the
//! finite-difference checks) and runs on the CPU with the rayon pool.

use std::ops::Deref;

use candle_core::{Layout, Storage, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::config::Family;
use crate::dropmask::{drop_threshold, kept, mix};
use crate::error::{Error, Result};
use crate::model::{Mlp, Model, Norm, Target};

/// Float types of the explicit path: f32 to train, f64 to check gradients.
pub trait Real:
    candle_core::WithDType
    + num_traits::Float
    + std::iter::Sum
    + crate::blas::BlasFloat
    + Send
    + Sync
    + 'static
{
    /// Replaces `x[j]` by `exp(x[j] − shift)` and returns their sum (the
    /// softmax's inner loop: vectorised for f32, exact libm for f64).
    fn exp_shift_sum(x: &mut [Self], shift: Self) -> Self {
        let mut z = Self::zero();
        for v in x.iter_mut() {
            *v = (*v - shift).exp();
            z += *v;
        }
        z
    }

    /// `x[j] = exp(−x[j])` (SwiGLU's sigmoid; vectorised for f32).
    fn exp_neg_inplace(x: &mut [Self]) {
        for v in x.iter_mut() {
            *v = (-*v).exp();
        }
    }
}
impl Real for f32 {
    fn exp_shift_sum(x: &mut [f32], shift: f32) -> f32 {
        distillrec_models::fastmath::exp_shift_sum_inplace(x, shift)
    }

    fn exp_neg_inplace(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = -*v;
        }
        distillrec_models::fastmath::exp_shift_sum_inplace(x, 0.0);
    }
}
impl Real for f64 {}

fn real<T: Real>(x: f64) -> T {
    T::from_f64(x)
}

// ---------------------------------------------------------------------------
// Strided matrices and the matmul
// ---------------------------------------------------------------------------

/// A read-only 2-D view: element `(i, j)` at `data[off + i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct Mat<'a, T> {
    data: &'a [T],
    off: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major `[rows, cols]` matrix.
    fn rows(data: &'a [T], cols: usize) -> Self {
        Mat {
            data,
            off: 0,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    fn t(self) -> Self {
        Mat {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Asserts that `rows × cols` elements are inside `data`.
    fn check(&self, rows: usize, cols: usize) {
        if rows > 0 && cols > 0 {
            assert!(self.off + (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len());
        }
    }
}

/// A writable 2-D block: element `(i, j)` at `data[off + i·ld + j]`.
struct MatMut<'a, T> {
    data: &'a mut [T],
    off: usize,
    ld: usize,
}

impl<'a, T> MatMut<'a, T> {
    fn rows(data: &'a mut [T], cols: usize) -> Self {
        MatMut {
            data,
            off: 0,
            ld: cols,
        }
    }
}

/// A raw pointer shared by threads that write disjoint column blocks.
#[derive(Clone, Copy)]
struct SharedPtr<T>(*mut T);
// SAFETY: used only where every thread writes a disjoint region.
unsafe impl<T> Send for SharedPtr<T> {}
unsafe impl<T> Sync for SharedPtr<T> {}
impl<T> SharedPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

/// `c[m, n] (+)= a[m, k] · b[k, n]` (`accumulate`: add to `c`, else
/// overwrite). Large products are split into column blocks, one gemm per
/// thread (gemm's own threading splits these shapes poorly on few cores).
fn mm<T: Real>(
    mut c: MatMut<T>,
    (m, n, k): (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    acc: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    a.check(m, k);
    b.check(k, n);
    assert!(c.off + (m - 1) * c.ld + n <= c.data.len() && c.ld >= n);
    if k == 0 {
        if !acc {
            for i in 0..m {
                c.data[c.off + i * c.ld..c.off + i * c.ld + n].fill(T::zero());
            }
        }
        return;
    }
    let big = m * n * k >= 1 << 18;
    // the BLAS runs its own threads: only from outside rayon's workers
    if big && rayon::current_thread_index().is_none() && blas_mm(&mut c, (m, n, k), a, b, acc) {
        return;
    }
    gemm_mm(c, (m, n, k), a, b, acc);
}

/// [`mm`] on the `gemm` crate (bounds checked by the caller).
fn gemm_mm<T: Real>(
    c: MatMut<T>,
    (m, n, k): (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    acc: bool,
) {
    let threads = rayon::current_num_threads();
    let big = m * n * k >= 1 << 18;
    let block = if big && threads > 1 && n >= 32 * threads {
        n.div_ceil(threads).div_ceil(16) * 16
    } else {
        n
    };
    // tiles (first row, rows, first column, columns) of c, one per thread
    let tiles: Vec<(usize, usize, usize, usize)> = if block < n {
        (0..n)
            .step_by(block)
            .map(|n0| (0, m, n0, block.min(n - n0)))
            .collect()
    } else if big && threads > 1 && m >= 4 * threads {
        // narrow outputs (adapter ranks): split the rows instead
        let rows = m.div_ceil(threads);
        (0..m)
            .step_by(rows)
            .map(|m0| (m0, rows.min(m - m0), 0, n))
            .collect()
    } else {
        vec![(0, m, 0, n)]
    };
    let ptr = SharedPtr(c.data.as_mut_ptr());
    let (c_off, ld) = (c.off, c.ld);
    let run = |&(m0, mb, n0, nb): &(usize, usize, usize, usize)| {
        let a0 = Mat {
            off: a.off + m0 * a.rs,
            ..a
        };
        let b0 = Mat {
            off: b.off + n0 * b.cs,
            ..b
        };
        // SAFETY: bounds asserted above; the tiles are disjoint, so each
        // block of c belongs to this call alone.
        unsafe {
            gemm_block(
                ptr.get().add(c_off + m0 * ld + n0),
                ld,
                (mb, nb, k),
                a0,
                b0,
                acc,
            )
        }
    };
    if tiles.len() == 1 {
        run(&tiles[0]);
    } else {
        tiles.par_iter().for_each(run);
    }
}

/// One single-threaded gemm: `c[m, n] (+)= a·b` for `c` row-major with
/// leading dimension `ld`. A row-major `b` (a weight in the forward) goes
/// in as the left operand of cᵀ = bᵀ·aᵀ, a transposed one (the backward's
/// `dY·W`) as the right operand of c = a·b: the orientations gemm packs
/// fastest (measured on the teacher step: 110 → 120–130 GFLOP/s for the
/// backward products).
///
/// # Safety
/// `a`, `b` must hold their `m×k`, `k×n` elements at their strides, `c`
/// must be valid for `m` rows of `n` at `ld`, written by no one else.
unsafe fn gemm_block<T: Real>(
    c: *mut T,
    ld: usize,
    (m, n, k): (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    acc: bool,
) {
    let (ap, bp) = (a.data.as_ptr().add(a.off), b.data.as_ptr().add(b.off));
    let one = T::one();
    let none = gemm::Parallelism::None;
    let (ars, acs, brs, bcs) = (a.rs as isize, a.cs as isize, b.rs as isize, b.cs as isize);
    if b.cs == 1 {
        gemm::gemm(
            n,
            m,
            k,
            c,
            ld as isize,
            1,
            acc,
            bp,
            brs,
            bcs,
            ap,
            ars,
            acs,
            one,
            one,
            false,
            false,
            false,
            none,
        )
    } else {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ld as isize,
            acc,
            ap,
            acs,
            ars,
            bp,
            bcs,
            brs,
            one,
            one,
            false,
            false,
            false,
            none,
        )
    }
}

/// `c (+)= a·b` through the system BLAS when there is one and both views
/// have a unit stride ([`crate::blas`]); false when it did not run.
fn blas_mm<T: Real>(
    c: &mut MatMut<T>,
    (m, n, k): (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    acc: bool,
) -> bool {
    use crate::blas::Operand;
    let Some(blas) = crate::blas::get() else {
        return false;
    };
    let fits = |o: &Operand<T>, rows: usize, cols: usize| {
        o.ld >= if o.trans { rows } else { cols }.max(1) && o.ld <= i32::MAX as usize
    };
    let (Some(ao), Some(bo)) = (
        Operand::of(a.data[a.off..].as_ptr(), a.rs, a.cs),
        Operand::of(b.data[b.off..].as_ptr(), b.rs, b.cs),
    ) else {
        return false;
    };
    if !fits(&ao, m, k) || !fits(&bo, k, n) || m.max(n).max(k) > i32::MAX as usize {
        return false;
    }
    let beta = if acc { T::one() } else { T::zero() };
    // SAFETY: the views were bounds-checked by the caller (`Mat::check`,
    // the `c` assertion), the leading dimensions fit the shapes (above),
    // and `c` is borrowed mutably for the call.
    unsafe {
        T::gemm(
            blas,
            (m, n, k),
            ao,
            bo,
            beta,
            c.data.as_mut_ptr().add(c.off),
            c.ld,
        )
    };
    true
}

/// The CPU data and layout of a tensor of dtype `T`.
fn cpu_data<'a, T: Real, G: Deref<Target = Storage>>(
    g: &'a (G, &'a Layout),
) -> Result<(&'a [T], &'a Layout)> {
    match &*g.0 {
        Storage::Cpu(s) => Ok((T::cpu_storage_as_slice(s)?, g.1)),
        _ => Err(Error::Input(
            "the explicit training path runs on the CPU".into(),
        )),
    }
}

/// A 2-D view of a weight tensor's storage.
fn weight_view<'a, T: Real, G: Deref<Target = Storage>>(
    g: &'a (G, &'a Layout),
) -> Result<Mat<'a, T>> {
    let (data, l) = cpu_data::<T, G>(g)?;
    let st = l.stride();
    if st.len() != 2 {
        return Err(Error::Input("expected a 2-D weight".into()));
    }
    Ok(Mat {
        data,
        off: l.start_offset(),
        rs: st[0],
        cs: st[1],
    })
}

/// A contiguous 1-D tensor's values.
fn vector<'a, T: Real, G: Deref<Target = Storage>>(g: &'a (G, &'a Layout)) -> Result<&'a [T]> {
    let (data, l) = cpu_data::<T, G>(g)?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => Err(Error::Input("expected a contiguous vector".into())),
    }
}

// ---------------------------------------------------------------------------
// Adapters
// ---------------------------------------------------------------------------

/// The projections in slot order (a layer's adapters are `[_; 7]`).
const TARGETS: [Target; 7] = Target::ALL;

fn target_index(t: Target) -> usize {
    TARGETS
        .iter()
        .position(|&x| x == t)
        .expect("every target listed")
}

/// One adapted projection: `A [r, in]`, `B [out, r]` (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraWeights<T> {
    /// Down-projection `A`, `r × in`.
    pub a: Vec<T>,
    /// Up-projection `B`, `out × r`.
    pub b: Vec<T>,
    /// Input width.
    pub in_dim: usize,
    /// Output width.
    pub out_dim: usize,
}

/// Mixture-of-experts LoRA on chosen projections of every layer.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSet<T> {
    /// Experts `E` (1: plain LoRA).
    pub experts: usize,
    /// Total rank `r` (each expert has `r / E`).
    pub rank: usize,
    /// `α`; the scale is `α / (r / E)`.
    pub alpha: f64,
    /// Adapted projections.
    pub targets: Vec<Target>,
    /// `[layer][target index]`: the weights of each adapted projection.
    pub layers: Vec<[Option<LoraWeights<T>>; 7]>,
}

impl<T: Real> AdapterSet<T> {
    /// Fresh adapters for `model`: Kaiming-uniform `A` (bound `1/√in`, as
    /// PEFT) and zero `B`, so a fresh set changes nothing. Seeded per
    /// layer and target from `seed`.
    pub fn new(
        model: &Model,
        targets: &[Target],
        experts: usize,
        rank: usize,
        alpha: f64,
        seed: u64,
    ) -> Result<Self> {
        if experts == 0 || rank == 0 || !rank.is_multiple_of(experts) {
            return Err(Error::Input(format!(
                "adapter rank {rank} must be a positive multiple of the {experts} experts"
            )));
        }
        let mut layers = Vec::with_capacity(model.layers.len());
        for (li, layer) in model.layers.iter().enumerate() {
            let mut slots: [Option<LoraWeights<T>>; 7] = Default::default();
            for &t in targets {
                let lin = layer.linear(t).ok_or_else(|| {
                    Error::Input(format!("{t:?} does not exist in this architecture"))
                })?;
                let (i, o) = (lin.in_dim(), lin.out_dim());
                let ti = target_index(t);
                let s = seed
                    ^ ((li as u64) << 32)
                    ^ (ti as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut rng = ChaCha8Rng::seed_from_u64(s);
                let bound = 1.0 / (i as f64).sqrt();
                let a = (0..rank * i)
                    .map(|_| real(rng.gen_range(-bound..bound)))
                    .collect();
                slots[ti] = Some(LoraWeights {
                    a,
                    b: vec![T::zero(); o * rank],
                    in_dim: i,
                    out_dim: o,
                });
            }
            layers.push(slots);
        }
        Ok(AdapterSet {
            experts,
            rank,
            alpha,
            targets: targets.to_vec(),
            layers,
        })
    }

    /// Weights the adapters on `targets` at total rank `rank` would hold on
    /// `model` (`A` and `B` of every adapted projection), so the size can
    /// be checked before [`AdapterSet::new`] allocates them.
    pub fn weight_count(model: &Model, targets: &[Target], rank: usize) -> u64 {
        let per_rank: u64 = model
            .layers
            .iter()
            .flat_map(|layer| targets.iter().filter_map(|&t| layer.linear(t)))
            .map(|lin| (lin.in_dim() as u64).saturating_add(lin.out_dim() as u64))
            .fold(0u64, u64::saturating_add);
        per_rank.saturating_mul(rank as u64)
    }

    /// `α / (r / E)`.
    pub fn scale(&self) -> f64 {
        self.alpha / (self.rank / self.experts) as f64
    }

    /// A zeroed set of the same shapes (gradient buffers).
    pub fn zeros_like(&self) -> Self {
        let mut z = self.clone();
        for w in z.weights_mut() {
            w.a.fill(T::zero());
            w.b.fill(T::zero());
        }
        z
    }

    /// Every adapted projection, layer by layer.
    pub fn weights(&self) -> impl Iterator<Item = &LoraWeights<T>> {
        self.layers.iter().flat_map(|l| l.iter().flatten())
    }

    /// Every adapted projection, mutable.
    pub fn weights_mut(&mut self) -> impl Iterator<Item = &mut LoraWeights<T>> {
        self.layers.iter_mut().flat_map(|l| l.iter_mut().flatten())
    }

    /// Trainable values in total.
    pub fn num_params(&self) -> usize {
        self.weights().map(|w| w.a.len() + w.b.len()).sum()
    }

    /// Attaches the same adapters to `model`'s linears for the composed
    /// candle path (any device); returns the candle variables, `A` then `B`
    /// per projection in [`AdapterSet::weights`] order.
    pub fn to_candle(&self, model: &mut Model) -> Result<Vec<candle_core::Var>> {
        self.to_candle_dropout(model, None)
    }

    /// [`AdapterSet::to_candle`] for a training step with LoRA dropout:
    /// each attached adapter applies, in training mode, the same masks the
    /// explicit path's [`forward_dropout`] draws for `dropout`.
    pub fn to_candle_dropout(
        &self,
        model: &mut Model,
        dropout: Option<Dropout>,
    ) -> Result<Vec<candle_core::Var>> {
        let (dtype, device) = (model.dtype(), model.device().clone());
        let mut vars = Vec::new();
        for (li, slots) in self.layers.iter().enumerate() {
            for (ti, w) in slots.iter().enumerate() {
                let Some(w) = w else { continue };
                let a = Tensor::from_vec(w.a.clone(), (self.rank, w.in_dim), &device)?
                    .to_dtype(dtype)?;
                let b = Tensor::from_vec(w.b.clone(), (w.out_dim, self.rank), &device)?
                    .to_dtype(dtype)?;
                let mut ad = crate::lora::MoeLora::from_tensors(&a, &b, self.experts, self.alpha)?;
                if let Some(dr) = dropout.filter(|dr| dr.p > 0.0) {
                    ad = ad.with_dropout(dr.p, mix(mix(dr.seed, li), ti));
                }
                vars.extend(crate::lora::Adapter::vars(&ad));
                model
                    .linear_mut(li, TARGETS[ti])?
                    .set_adapter(Some(std::sync::Arc::new(ad)));
            }
        }
        Ok(vars)
    }
}

/// Per-row gate column factors: `gc[n·r + j] = gate[n / t, j / (r/E)]`,
/// or `None` (all ones) without a gate.
fn gate_cols<T: Real>(
    gate: Option<&[T]>,
    n: usize,
    t: usize,
    r: usize,
    e: usize,
) -> Option<Vec<T>> {
    let g = gate?;
    let per = r / e;
    let mut out = Vec::with_capacity(n * r);
    for row in 0..n {
        let b = row / t;
        for j in 0..r {
            out.push(g[b * e + j / per]);
        }
    }
    Some(out)
}

/// LoRA dropout of one training step: each adapter sees its input with
/// elements zeroed with probability `p` and the rest scaled by
/// `1/(1 − p)` (PEFT's `lora_dropout`). The mask is a hash of the seed,
/// the layer, the projection and the element, so the backward recomputes
/// it instead of storing it, and a step is reproducible from its seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// Probability of zeroing an element, in `[0, 1)`.
    pub p: f64,
    /// Seed of the step's masks.
    pub seed: u64,
}

/// `x ⊙ mask / (1 − p)` for the mask of `seed`.
fn dropped_input<T: Real>(x: &[T], p: f64, seed: u64) -> Vec<T> {
    let keep: T = real(1.0 / (1.0 - p));
    let th = drop_threshold(p);
    x.par_iter()
        .enumerate()
        .map(|(i, &v)| {
            if kept(seed, i, th) {
                v * keep
            } else {
                T::zero()
            }
        })
        .collect()
}

/// What one adapter's forward keeps: `u = x Aᵀ` `[N, r]`.
struct AdapterSaved<T> {
    u: Vec<T>,
}

/// `y[:, cols] += s·((x Aᵀ) ⊙ gc) Bᵀ`; returns `u = x Aᵀ`.
fn adapter_forward<T: Real>(
    w: &LoraWeights<T>,
    x: Mat<T>,
    n: usize,
    (r, scale): (usize, T),
    gc: Option<&[T]>,
    y: MatMut<T>,
) -> AdapterSaved<T> {
    let mut u = vec![T::zero(); n * r];
    mm(
        MatMut::rows(&mut u, r),
        (n, r, w.in_dim),
        x,
        Mat::rows(&w.a, w.in_dim).t(),
        false,
    );
    let v: Vec<T> = match gc {
        Some(g) => u.iter().zip(g).map(|(&a, &b)| a * b * scale).collect(),
        None => u.iter().map(|&a| a * scale).collect(),
    };
    mm(
        y,
        (n, w.out_dim, r),
        Mat::rows(&v, r),
        Mat::rows(&w.b, r).t(),
        true,
    );
    AdapterSaved { u }
}

/// Backward of [`adapter_forward`] given `dy` (the output gradient block):
/// accumulates `dA`, `dB`, `d gate` and (when given) `dx`.
#[allow(clippy::too_many_arguments)]
fn adapter_backward<T: Real>(
    w: &LoraWeights<T>,
    saved: &AdapterSaved<T>,
    x: Mat<T>,
    dy: Mat<T>,
    (n, t, r, e, scale): (usize, usize, usize, usize, T),
    gc: Option<&[T]>,
    grad: &mut LoraWeights<T>,
    dgate: Option<&mut [T]>,
    dx: Option<MatMut<T>>,
) {
    let u = &saved.u;
    let v: Vec<T> = match gc {
        Some(g) => u.iter().zip(g).map(|(&a, &b)| a * b * scale).collect(),
        None => u.iter().map(|&a| a * scale).collect(),
    };
    // dB += dyᵀ v
    mm(
        MatMut::rows(&mut grad.b, r),
        (w.out_dim, r, n),
        dy.t(),
        Mat::rows(&v, r),
        true,
    );
    // dv = dy B
    let mut dv = vec![T::zero(); n * r];
    mm(
        MatMut::rows(&mut dv, r),
        (n, r, w.out_dim),
        dy,
        Mat::rows(&w.b, r),
        false,
    );
    if let Some(dg) = dgate {
        let per = r / e;
        for row in 0..n {
            let b = row / t;
            for j in 0..r {
                dg[b * e + j / per] += dv[row * r + j] * u[row * r + j] * scale;
            }
        }
    }
    let du: Vec<T> = match gc {
        Some(g) => dv.iter().zip(g).map(|(&a, &b)| a * b * scale).collect(),
        None => dv.iter().map(|&a| a * scale).collect(),
    };
    // dA += duᵀ x
    mm(
        MatMut::rows(&mut grad.a, w.in_dim),
        (r, w.in_dim, n),
        Mat::rows(&du, r).t(),
        x,
        true,
    );
    if let Some(dx) = dx {
        mm(
            dx,
            (n, w.in_dim, r),
            Mat::rows(&du, r),
            Mat::rows(&w.a, w.in_dim),
            true,
        );
    }
}

// ---------------------------------------------------------------------------
// Element-wise kernels
// ---------------------------------------------------------------------------

/// `Σ f(i)` over `0..n` with eight partial sums, so that the compiler can
/// vectorise the reduction (a single running sum fixes the order and
/// stays scalar).
#[inline(always)]
fn sum8<T: Real>(n: usize, f: impl Fn(usize) -> T) -> T {
    let mut acc = [T::zero(); 8];
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        for (k, a) in acc.iter_mut().enumerate() {
            *a += f(i + k);
        }
    }
    let mut s = T::zero();
    for i in full..n {
        s += f(i);
    }
    acc.iter().fold(s, |x, &y| x + y)
}

/// `y = x · inv · w` per row, returning `inv = 1/√(mean(x²) + eps)`.
fn rms_forward<T: Real>(x: &[T], w: &[T], eps: f64, y: &mut [T]) -> Vec<T> {
    let d = w.len();
    let mut inv = vec![T::zero(); x.len() / d];
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(inv.par_iter_mut())
        .for_each(|((yr, xr), iv)| {
            let ss: T = sum8(d, |i| xr[i] * xr[i]);
            *iv = T::one() / (ss / real(d as f64) + real(eps)).sqrt();
            for ((o, &a), &g) in yr.iter_mut().zip(xr).zip(w) {
                *o = a * *iv * g;
            }
        });
    inv
}

/// `x · inv · w` again (the backward's recomputation of a norm output).
fn rms_apply<T: Real>(x: &[T], w: &[T], inv: &[T]) -> Vec<T> {
    let d = w.len();
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(inv.par_iter())
        .for_each(|((yr, xr), &iv)| {
            for ((o, &a), &g) in yr.iter_mut().zip(xr).zip(w) {
                *o = a * iv * g;
            }
        });
    y
}

/// `dx += inv · (g − x̂ · mean(g · x̂))` with `g = dy · w`, `x̂ = x · inv`.
fn rms_backward<T: Real>(x: &[T], w: &[T], inv: &[T], dy: &[T], dx: &mut [T]) {
    let d = w.len();
    dx.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(dy.par_chunks(d))
        .zip(inv.par_iter())
        .for_each(|(((dxr, xr), dyr), &iv)| {
            let dot: T = sum8(d, |i| xr[i] * dyr[i] * w[i]) * iv;
            let mean = dot / real(d as f64);
            for (((o, &a), &g), &ww) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
                *o += iv * (g * ww - a * iv * mean);
            }
        });
}

/// `silu(g) · u` for the `[N, 2I]` gate/up buffer.
fn swiglu_forward<T: Real>(gu: &[T], i: usize) -> Vec<T> {
    let mut out = vec![T::zero(); gu.len() / 2];
    out.par_chunks_mut(i)
        .zip(gu.par_chunks(2 * i))
        .for_each_init(
            || vec![T::zero(); i],
            |e, (o, row)| {
                let (g, u) = row.split_at(i);
                e.copy_from_slice(g);
                T::exp_neg_inplace(e);
                for (((y, &a), &b), &en) in o.iter_mut().zip(g).zip(u).zip(e.iter()) {
                    *y = a / (T::one() + en) * b;
                }
            },
        );
    out
}

/// Gradient of `silu(g) · u` into the `[N, 2I]` buffer `dgu`.
fn swiglu_backward<T: Real>(gu: &[T], dh: &[T], i: usize) -> Vec<T> {
    let mut dgu = vec![T::zero(); gu.len()];
    dgu.par_chunks_mut(2 * i)
        .zip(gu.par_chunks(2 * i))
        .zip(dh.par_chunks(i))
        .for_each_init(
            || vec![T::zero(); i],
            |e, ((d, row), dhr)| {
                let (g, u) = row.split_at(i);
                let (dg, du) = d.split_at_mut(i);
                e.copy_from_slice(g);
                T::exp_neg_inplace(e);
                for j in 0..i {
                    let sig = T::one() / (T::one() + e[j]);
                    du[j] = dhr[j] * g[j] * sig;
                    dg[j] = dhr[j] * u[j] * sig * (T::one() + g[j] * (T::one() - sig));
                }
            },
        );
    dgu
}

/// Rotates the `heads` head vectors starting at column `c0` of each row of
/// `buf [N, w]` in place (`inverse`: by the negative angle, the backward).
fn rope_inplace<T: Real>(
    buf: &mut [T],
    w: usize,
    (c0, heads, hd): (usize, usize, usize),
    cos: &[T],
    sin: &[T],
    inverse: bool,
) {
    let half = hd / 2;
    buf.par_chunks_mut(w).enumerate().for_each(|(n, row)| {
        let (c, s) = (
            &cos[n * half..(n + 1) * half],
            &sin[n * half..(n + 1) * half],
        );
        for h in 0..heads {
            let x = &mut row[c0 + h * hd..c0 + (h + 1) * hd];
            for i in 0..half {
                let (a, b) = (x[i], x[i + half]);
                let sn = if inverse { -s[i] } else { s[i] };
                x[i] = a * c[i] - b * sn;
                x[i + half] = b * c[i] + a * sn;
            }
        }
    });
}

// ---------------------------------------------------------------------------
// The stack
// ---------------------------------------------------------------------------

/// Shapes of one pass.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    t: usize,
    /// Rows the row-wise work runs on: `b·t` padded, fewer when packed.
    rows: usize,
    h: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    inter: usize,
}

impl Dims {
    fn n(&self) -> usize {
        self.rows
    }
    fn w3(&self) -> usize {
        (self.nh + 2 * self.nkv) * self.hd
    }
    fn q_cols(&self) -> usize {
        self.nh * self.hd
    }
    fn kv_cols(&self) -> usize {
        self.nkv * self.hd
    }
}

/// What one layer's forward keeps for its backward.
struct LayerSaved<T> {
    x: Vec<T>,
    inv1: Vec<T>,
    qkv: Vec<T>,
    probs: Vec<Vec<T>>,
    attn: Vec<T>,
    h1: Vec<T>,
    inv2: Vec<T>,
    gu: Vec<T>,
    adapters: [Option<AdapterSaved<T>>; 7],
}

/// The saved state of [`forward`], consumed by [`backward`].
pub struct Tape<T> {
    dims: Dims,
    gate: Option<Vec<T>>,
    drop: Option<Dropout>,
    cos: Vec<T>,
    sin: Vec<T>,
    mask: Option<Vec<T>>,
    layers: Vec<LayerSaved<T>>,
    last: Vec<T>,
    inv_final: Vec<T>,
}

impl<T> Tape<T> {
    /// Bytes of activations this tape holds (the step's activation memory).
    pub fn bytes(&self) -> usize {
        let per: usize = self
            .layers
            .iter()
            .map(|l| {
                l.x.len()
                    + l.inv1.len()
                    + l.qkv.len()
                    + l.probs.iter().map(Vec::len).sum::<usize>()
                    + l.attn.len()
                    + l.h1.len()
                    + l.inv2.len()
                    + l.gu.len()
                    + l.adapters
                        .iter()
                        .flatten()
                        .map(|a| a.u.len())
                        .sum::<usize>()
            })
            .sum();
        (per + self.last.len() + self.cos.len() * 2) * std::mem::size_of::<T>()
    }
}

/// Gradients of one backward.
pub struct Grads<T> {
    /// Adapter gradients, same shapes as the [`AdapterSet`].
    pub adapters: AdapterSet<T>,
    /// `d loss / d gate`, `[batch, experts]` (when a gate was given).
    pub gate: Option<Vec<T>>,
    /// `d loss / d input embeddings`, `[batch·seq, hidden]`.
    pub embeds: Vec<T>,
}

/// Whether the explicit path can run `model` in dtype `T`: a pre-norm
/// RMSNorm/RoPE/SwiGLU family on the CPU in that dtype, with biases on
/// q/k/v at most (Qwen2); the rest (OPT, `attention_bias`/`mlp_bias`
/// Llamas) trains on the composed path.
pub fn supports<T: Real>(model: &Model) -> bool {
    let c = model.config();
    matches!(c.family, Family::Llama | Family::Qwen2)
        && model.device().is_cpu()
        && model.dtype() == T::DTYPE
        && c.word_embed_proj_dim == c.hidden_size
        && model.layers.iter().all(|l| {
            let plain = |t: Target| l.linear(t).is_some_and(|x| x.bias().is_none());
            matches!(l.attn_norm, Norm::Rms { .. })
                && matches!(l.mlp_norm, Norm::Rms { .. })
                && matches!(l.mlp, Mlp::Gated { .. })
                && [Target::O, Target::Gate, Target::Up, Target::Down]
                    .into_iter()
                    .all(plain)
        })
}

fn tensor_vec<T: Real>(t: &Tensor) -> Result<Vec<T>> {
    Ok(t.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()?)
}

/// Forward through every decoder layer and the final norm for input
/// embeddings `embeds [batch·seq, hidden]` (row-major), attention `mask`
/// (`true` = real token, any padding side) and an optional per-sample
/// `gate [batch, experts]`. Returns the last hidden states `[batch·seq,
/// hidden]` and the tape for [`backward`].
pub fn forward<T: Real>(
    model: &Model,
    adapters: &AdapterSet<T>,
    embeds: &[T],
    mask: &[Vec<bool>],
    gate: Option<&[T]>,
) -> Result<(Vec<T>, Tape<T>)> {
    run(model, adapters, embeds, mask, gate, None, true)
}

/// [`forward`] of a training step with LoRA dropout on every adapter's
/// input (the [`backward`] of its tape applies the same masks).
pub fn forward_dropout<T: Real>(
    model: &Model,
    adapters: &AdapterSet<T>,
    embeds: &[T],
    mask: &[Vec<bool>],
    gate: Option<&[T]>,
    dropout: Dropout,
) -> Result<(Vec<T>, Tape<T>)> {
    if !(0.0..1.0).contains(&dropout.p) {
        return Err(Error::Input(format!(
            "LoRA dropout {} must be in [0, 1)",
            dropout.p
        )));
    }
    let drop = (dropout.p > 0.0).then_some(dropout);
    run(model, adapters, embeds, mask, gate, drop, true)
}

/// [`forward`] without a tape: each layer's saved state is dropped as soon
/// as the next layer has its input (inference with unmerged, per-sample
/// adapters).
pub fn infer<T: Real>(
    model: &Model,
    adapters: &AdapterSet<T>,
    embeds: &[T],
    mask: &[Vec<bool>],
    gate: Option<&[T]>,
) -> Result<Vec<T>> {
    Ok(run(model, adapters, embeds, mask, gate, None, false)?.0)
}

/// Checks the inputs of a pass and returns its shapes (`rows = b·t`).
fn check_inputs<T: Real>(
    model: &Model,
    adapters: &AdapterSet<T>,
    embeds: &[T],
    mask: &[Vec<bool>],
    gate: Option<&[T]>,
) -> Result<Dims> {
    if !supports::<T>(model) {
        return Err(Error::Input(
            "the explicit training path needs a Llama or Qwen2 model on the CPU in the tape's dtype"
                .into(),
        ));
    }
    let c = model.config();
    let b = mask.len();
    let t = mask.first().map_or(0, Vec::len);
    let d = Dims {
        b,
        t,
        rows: b * t,
        h: c.hidden_size,
        nh: c.num_attention_heads,
        nkv: c.num_key_value_heads,
        hd: c.head_dim,
        inter: c.intermediate_size,
    };
    if b == 0 || t == 0 || mask.iter().any(|m| m.len() != t) {
        return Err(Error::Input(
            "the batch needs rows of equal, positive length".into(),
        ));
    }
    if embeds.len() != d.n() * d.h {
        return Err(Error::Input(format!(
            "embeddings hold {} values, expected {}·{}·{}",
            embeds.len(),
            b,
            t,
            d.h
        )));
    }
    if let Some(g) = gate {
        if g.len() != b * adapters.experts {
            return Err(Error::Input(format!(
                "gate holds {} values, expected {b}·{}",
                g.len(),
                adapters.experts
            )));
        }
    }
    if adapters.layers.len() != model.layers.len() {
        return Err(Error::Input("adapters were made for another model".into()));
    }
    model.check_context(0, t)?;
    Ok(d)
}

fn run<T: Real>(
    model: &Model,
    adapters: &AdapterSet<T>,
    embeds: &[T],
    mask: &[Vec<bool>],
    gate: Option<&[T]>,
    drop: Option<Dropout>,
    keep: bool,
) -> Result<(Vec<T>, Tape<T>)> {
    let d = check_inputs(model, adapters, embeds, mask, gate)?;
    let t = d.t;
    let (cos, sin, mask_add) = model.rope_and_mask(mask)?;
    let cos = tensor_vec::<T>(&cos)?;
    let sin = tensor_vec::<T>(&sin)?;
    let mask_add = mask_add.map(|m| tensor_vec::<T>(&m)).transpose()?;
    let r = adapters.rank;
    let scale: T = real(adapters.scale());
    let gc = gate_cols(gate, d.n(), t, r, adapters.experts);
    let mut x = embeds.to_vec();
    let mut layers = Vec::with_capacity(model.layers.len());
    for (li, (layer, ad)) in model.layers.iter().zip(&adapters.layers).enumerate() {
        let saved = layer_forward(
            layer,
            ad,
            &d,
            x,
            (&cos, &sin),
            Attend::Padded(mask_add.as_deref()),
            Proj {
                n: d.n(),
                t,
                r,
                e: adapters.experts,
                scale,
                gc: gc.as_deref(),
                drop: drop.map(|dr| (dr.p, mix(dr.seed, li))),
            },
        )?;
        x = saved.1;
        if keep {
            layers.push(saved.0);
        }
    }
    let (out, inv_final) = final_norm(model, &x)?;
    Ok((
        out,
        Tape {
            dims: d,
            gate: gate.map(<[T]>::to_vec),
            drop,
            cos,
            sin,
            mask: mask_add,
            layers,
            last: x,
            inv_final,
        },
    ))
}

/// The model's final RMSNorm of `x`: the normalised rows and their 1/rms.
fn final_norm<T: Real>(model: &Model, x: &[T]) -> Result<(Vec<T>, Vec<T>)> {
    let Some(Norm::Rms { weight, eps }) = model.final_norm() else {
        return Err(Error::Input(
            "the explicit path needs a final RMSNorm".into(),
        ));
    };
    let g = weight.storage_and_layout();
    let w = vector::<T, _>(&g)?;
    let mut out = vec![T::zero(); x.len()];
    let inv = rms_forward(x, w, *eps, &mut out);
    Ok((out, inv))
}

/// The flat row `b·t + j` of each sequence's last real position, or an
/// error naming a prompt without one.
pub(crate) fn last_real_rows(mask: &[Vec<bool>]) -> Result<Vec<usize>> {
    mask.iter()
        .enumerate()
        .map(|(b, m)| {
            m.iter()
                .rposition(|&x| x)
                .map(|j| b * m.len() + j)
                .ok_or_else(|| Error::Input(format!("prompt {b} has no real token")))
        })
        .collect()
}

/// Rows `rows` of the row-major `x [_, cols]`, in that order.
pub(crate) fn gather_rows<T: Copy>(x: &[T], cols: usize, rows: &[usize]) -> Vec<T> {
    rows.iter()
        .flat_map(|&r| x[r * cols..(r + 1) * cols].iter().copied())
        .collect()
}

/// Each mask row's real tokens as `(first, count)` when they form one
/// non-empty run (left or right padding); `None` otherwise.
fn real_runs(mask: &[Vec<bool>]) -> Option<Vec<(usize, usize)>> {
    mask.iter()
        .map(|m| {
            let first = m.iter().position(|&x| x)?;
            let count = m[first..].iter().take_while(|&&x| x).count();
            m[first + count..]
                .iter()
                .all(|&x| !x)
                .then_some((first, count))
        })
        .collect()
}

/// The last hidden state of every sequence, `[batch, hidden]` (at its last
/// real position), as [`infer`] computes it. When each row's real tokens
/// form one run (left or right padding), the pass is packed: pad positions
/// are never computed, and the last layer runs its queries, output
/// projection and MLP on the last positions only. Other masks take the
/// padded pass.
pub fn infer_last<T: Real>(
    model: &Model,
    adapters: &AdapterSet<T>,
    embeds: &[T],
    mask: &[Vec<bool>],
    gate: Option<&[T]>,
) -> Result<Vec<T>> {
    let d = check_inputs(model, adapters, embeds, mask, gate)?;
    let Some(runs) = real_runs(mask) else {
        let last = last_real_rows(mask)?;
        let hidden = infer(model, adapters, embeds, mask, gate)?;
        return Ok(gather_rows(&hidden, d.h, &last));
    };
    // packed rows: sequence b's real positions, one sequence after another
    let src: Vec<usize> = runs
        .iter()
        .enumerate()
        .flat_map(|(b, &(first, count))| b * d.t + first..b * d.t + first + count)
        .collect();
    let spans: Vec<(usize, usize)> = runs
        .iter()
        .scan(0, |off, &(_, count)| {
            let span = (*off, count);
            *off += count;
            Some(span)
        })
        .collect();
    let pd = Dims {
        rows: src.len(),
        ..d
    };
    let (cos, sin, _) = model.rope_and_mask(mask)?;
    let half = d.hd / 2;
    let cos = gather_rows(&tensor_vec::<T>(&cos)?, half, &src);
    let sin = gather_rows(&tensor_vec::<T>(&sin)?, half, &src);
    let (r, e) = (adapters.rank, adapters.experts);
    let scale: T = real(adapters.scale());
    let gc = gate_cols(gate, d.n(), d.t, r, e).map(|g| gather_rows(&g, r, &src));
    let mut x = gather_rows(embeds, d.h, &src);
    let layers = model.layers.len();
    for (li, (layer, ad)) in model.layers.iter().zip(&adapters.layers).enumerate() {
        let attend = Attend::Packed {
            spans: &spans,
            last: li + 1 == layers,
        };
        let p = Proj {
            n: pd.n(),
            t: d.t,
            r,
            e,
            scale,
            gc: gc.as_deref(),
            drop: None,
        };
        x = layer_forward(layer, ad, &pd, x, (&cos, &sin), attend, p)?.1;
    }
    if layers == 0 {
        let last: Vec<usize> = spans.iter().map(|&(o, c)| o + c - 1).collect();
        x = gather_rows(&x, d.h, &last);
    }
    Ok(final_norm(model, &x)?.0)
}

/// Shapes and adapter settings shared by a layer's projections.
#[derive(Clone, Copy)]
struct Proj<'a, T> {
    n: usize,
    t: usize,
    r: usize,
    e: usize,
    scale: T,
    gc: Option<&'a [T]>,
    /// LoRA dropout of this layer (probability, layer seed).
    drop: Option<(f64, u64)>,
}

/// `y (+)= x·W` for a frozen (fused) projection `W [in, width]` (`acc`:
/// add to `y`, else overwrite), then the delta of every adapted part
/// (column offset, target), whose rank-r activations go into `saved`.
#[allow(clippy::too_many_arguments)]
fn project<T: Real>(
    weight_t: &Tensor,
    (x, in_dim): (&[T], usize),
    (y, width): (&mut [T], usize),
    acc: bool,
    parts: &[(usize, Target)],
    ad: &[Option<LoraWeights<T>>; 7],
    saved: &mut [Option<AdapterSaved<T>>; 7],
    p: Proj<T>,
) -> Result<()> {
    {
        let gw = weight_t.storage_and_layout();
        mm(
            MatMut::rows(&mut *y, width),
            (p.n, width, in_dim),
            Mat::rows(x, in_dim),
            weight_view::<T, _>(&gw)?,
            acc,
        );
    }
    for &(c0, target) in parts {
        let ti = target_index(target);
        if let Some(w) = &ad[ti] {
            let out = MatMut {
                data: &mut *y,
                off: c0,
                ld: width,
            };
            let dropped = p.drop.map(|(pr, seed)| dropped_input(x, pr, mix(seed, ti)));
            saved[ti] = Some(adapter_forward(
                w,
                Mat::rows(dropped.as_deref().unwrap_or(x), in_dim),
                p.n,
                (p.r, p.scale),
                p.gc,
                out,
            ));
        }
    }
    Ok(())
}

/// Whether any of `parts` carries an adapter.
fn adapted<T>(ad: &[Option<LoraWeights<T>>; 7], parts: &[(usize, Target)]) -> bool {
    parts.iter().any(|&(_, t)| ad[target_index(t)].is_some())
}

/// Backward of [`project`]: `dx = dy·Wᵀ` plus every adapter's input
/// gradient; adapter and gate gradients accumulate into `grads`, `dgate`.
/// `x` is the projection's input, needed only when a part is adapted.
#[allow(clippy::too_many_arguments)]
fn project_backward<T: Real>(
    weight_t: &Tensor,
    (dy, width): (&[T], usize),
    (x, in_dim): (Option<&[T]>, usize),
    parts: &[(usize, Target)],
    ad: &[Option<LoraWeights<T>>; 7],
    saved: &[Option<AdapterSaved<T>>; 7],
    grads: &mut [Option<LoraWeights<T>>; 7],
    mut dgate: Option<&mut [T]>,
    p: Proj<T>,
) -> Result<Vec<T>> {
    let mut dx = vec![T::zero(); p.n * in_dim];
    {
        let gw = weight_t.storage_and_layout();
        mm(
            MatMut::rows(&mut dx, in_dim),
            (p.n, in_dim, width),
            Mat::rows(dy, width),
            weight_view::<T, _>(&gw)?.t(),
            false,
        );
    }
    for &(c0, target) in parts {
        let ti = target_index(target);
        if let (Some(w), Some(sv), Some(gr), Some(x)) = (&ad[ti], &saved[ti], grads[ti].as_mut(), x)
        {
            let dyb = Mat {
                data: dy,
                off: c0,
                rs: width,
                cs: 1,
            };
            match p.drop {
                None => adapter_backward(
                    w,
                    sv,
                    Mat::rows(x, in_dim),
                    dyb,
                    (p.n, p.t, p.r, p.e, p.scale),
                    p.gc,
                    gr,
                    dgate.as_deref_mut(),
                    Some(MatMut::rows(&mut dx, in_dim)),
                ),
                Some((pr, seed)) => {
                    // the adapter saw x ⊙ mask / (1 − p): recompute it, and
                    // send its input gradient back through the same mask
                    let seed = mix(seed, ti);
                    let xd = dropped_input(x, pr, seed);
                    let mut dxa = vec![T::zero(); p.n * in_dim];
                    adapter_backward(
                        w,
                        sv,
                        Mat::rows(&xd, in_dim),
                        dyb,
                        (p.n, p.t, p.r, p.e, p.scale),
                        p.gc,
                        gr,
                        dgate.as_deref_mut(),
                        Some(MatMut::rows(&mut dxa, in_dim)),
                    );
                    let keep: T = real(1.0 / (1.0 - pr));
                    let th = drop_threshold(pr);
                    dx.par_iter_mut()
                        .zip(&dxa)
                        .enumerate()
                        .for_each(|(i, (o, g))| {
                            if kept(seed, i, th) {
                                *o += *g * keep;
                            }
                        });
                }
            }
        }
    }
    Ok(dx)
}

#[allow(clippy::too_many_arguments)]
fn layer_forward<T: Real>(
    layer: &crate::model::DecoderLayer,
    ad: &[Option<LoraWeights<T>>; 7],
    d: &Dims,
    x: Vec<T>,
    (cos, sin): (&[T], &[T]),
    attend: Attend<T>,
    p: Proj<T>,
) -> Result<(LayerSaved<T>, Vec<T>)> {
    let n = d.n();
    let (
        Norm::Rms {
            weight: w1,
            eps: e1,
        },
        Norm::Rms {
            weight: w2,
            eps: e2,
        },
    ) = (&layer.attn_norm, &layer.mlp_norm)
    else {
        return Err(Error::Input(
            "the explicit path needs RMSNorm layers".into(),
        ));
    };
    let Mlp::Gated { gate_up, down, .. } = &layer.mlp else {
        return Err(Error::Input("the explicit path needs a SwiGLU MLP".into()));
    };
    let mut adapters: [Option<AdapterSaved<T>>; 7] = Default::default();
    // attention norm and q/k/v
    let g1 = w1.storage_and_layout();
    let mut xn = vec![T::zero(); x.len()];
    let inv1 = rms_forward(&x, vector::<T, _>(&g1)?, *e1, &mut xn);
    let w3 = d.w3();
    let mut qkv = vec![T::zero(); n * w3];
    let (qc, kvc) = (d.q_cols(), d.kv_cols());
    let qkv_parts = [(0, Target::Q), (qc, Target::K), (qc + kvc, Target::V)];
    let w = (&mut qkv[..], w3);
    project(
        &layer.attn.qkv.weight_t,
        (&xn, d.h),
        w,
        false,
        &qkv_parts,
        ad,
        &mut adapters,
        p,
    )?;
    for (lin, c0) in [
        (&layer.attn.q_proj, 0),
        (&layer.attn.k_proj, qc),
        (&layer.attn.v_proj, qc + kvc),
    ] {
        if let Some(bias) = lin.bias() {
            let g = bias.storage_and_layout();
            let bv = vector::<T, _>(&g)?;
            qkv.par_chunks_mut(w3).for_each(|row| {
                for (o, &bb) in row[c0..c0 + bv.len()].iter_mut().zip(bv) {
                    *o += bb;
                }
            });
        }
    }
    drop(xn);
    rope_inplace(&mut qkv, w3, (0, d.nh, d.hd), cos, sin, false);
    rope_inplace(&mut qkv, w3, (qc, d.nkv, d.hd), cos, sin, false);
    let gate_last: Option<Vec<T>>;
    let (attn, probs, x, p) = match attend {
        Attend::Padded(mask) => {
            let (attn, probs) = attention_forward(&qkv, d, mask);
            (attn, probs, x, p)
        }
        Attend::Packed { spans, last: false } => {
            (attention_packed(&qkv, d, spans, false), Vec::new(), x, p)
        }
        Attend::Packed { spans, last: true } => {
            // only each sequence's last row goes on through the layer
            let rows: Vec<usize> = spans.iter().map(|&(o, c)| o + c - 1).collect();
            gate_last = p.gc.map(|g| gather_rows(g, p.r, &rows));
            let p = Proj {
                n: rows.len(),
                gc: gate_last.as_deref(),
                ..p
            };
            let attn = attention_packed(&qkv, d, spans, true);
            (attn, Vec::new(), gather_rows(&x, d.h, &rows), p)
        }
    };
    // output projection and residual
    let mut h1 = x.clone();
    let o_parts = [(0, Target::O)];
    let w = (&mut h1[..], d.h);
    project(
        &layer.attn.o_proj.weight_t,
        (&attn, qc),
        w,
        true,
        &o_parts,
        ad,
        &mut adapters,
        p,
    )?;
    // MLP
    let g2 = w2.storage_and_layout();
    let mut hn = vec![T::zero(); h1.len()];
    let inv2 = rms_forward(&h1, vector::<T, _>(&g2)?, *e2, &mut hn);
    let i2 = 2 * d.inter;
    let mut gu = vec![T::zero(); p.n * i2];
    let gu_parts = [(0, Target::Gate), (d.inter, Target::Up)];
    let w = (&mut gu[..], i2);
    project(
        &gate_up.weight_t,
        (&hn, d.h),
        w,
        false,
        &gu_parts,
        ad,
        &mut adapters,
        p,
    )?;
    drop(hn);
    let act = swiglu_forward(&gu, d.inter);
    let mut out = h1.clone();
    let down_parts = [(0, Target::Down)];
    let w = (&mut out[..], d.h);
    project(
        &down.weight_t,
        (&act, d.inter),
        w,
        true,
        &down_parts,
        ad,
        &mut adapters,
        p,
    )?;
    Ok((
        LayerSaved {
            x,
            inv1,
            qkv,
            probs,
            attn,
            h1,
            inv2,
            gu,
            adapters,
        },
        out,
    ))
}

/// Query rows per block of the attention.
const QBLOCK: usize = 32;

/// The query blocks of sequence `b` as `(first row, keys to read)`: a
/// block reads keys up to the last one any of its rows sees (all `t`
/// without a mask). Keys at or below `-1e30` in the additive mask are hidden.
fn key_blocks<T: Real>(b: usize, t: usize, mask: Option<&[T]>) -> Vec<(usize, usize)> {
    let hidden: T = real(-1e30);
    (0..t)
        .step_by(QBLOCK)
        .map(|q0| {
            let kend = match mask {
                None => t,
                Some(m) => (q0..(q0 + QBLOCK).min(t))
                    .map(|i| {
                        let row = &m[(b * t + i) * t..(b * t + i + 1) * t];
                        row.iter().rposition(|&x| x > hidden).map_or(0, |j| j + 1)
                    })
                    .max()
                    .unwrap_or(0)
                    .max(1),
            };
            (q0, kend)
        })
        .collect()
}

/// Causal grouped-query attention over the rotated `qkv [N, w3]`: returns
/// the output `[N, nh·hd]` and the softmax weights per (row, head).
fn attention_forward<T: Real>(qkv: &[T], d: &Dims, mask: Option<&[T]>) -> (Vec<T>, Vec<Vec<T>>) {
    let (t, hd, w3) = (d.t, d.hd, d.w3());
    let groups = d.nh / d.nkv;
    let sc: T = real(1.0 / (hd as f64).sqrt());
    let units: Vec<(Vec<T>, Vec<T>)> = (0..d.b * d.nh)
        .into_par_iter()
        .map(|u| {
            let (b, h) = (u / d.nh, u % d.nh);
            let kvh = h / groups;
            let base = b * t * w3;
            let q = Mat {
                data: qkv,
                off: base + h * hd,
                rs: w3,
                cs: 1,
            };
            let k = Mat {
                data: qkv,
                off: base + d.q_cols() + kvh * hd,
                rs: w3,
                cs: 1,
            };
            let v = Mat {
                data: qkv,
                off: base + d.q_cols() + d.kv_cols() + kvh * hd,
                rs: w3,
                cs: 1,
            };
            let mut p = vec![T::zero(); t * t];
            let mut o = vec![T::zero(); t * hd];
            // query blocks see only the keys up to their last visible one
            // (the causal triangle): the masked tail is never multiplied
            for (q0, kend) in key_blocks(b, t, mask) {
                let qb = QBLOCK.min(t - q0);
                let qblk = Mat {
                    off: q.off + q0 * w3,
                    ..q
                };
                let pblk = MatMut {
                    data: &mut p,
                    off: q0 * t,
                    ld: t,
                };
                mm(pblk, (qb, kend, hd), qblk, k.t(), false);
                for i in q0..q0 + qb {
                    let row = &mut p[i * t..i * t + kend];
                    let m = mask.map(|m| &m[(b * t + i) * t..(b * t + i) * t + kend]);
                    let mut mx = T::neg_infinity();
                    for (j, x) in row.iter_mut().enumerate() {
                        *x = *x * sc + m.map_or(T::zero(), |m| m[j]);
                        mx = num_traits::Float::max(mx, *x);
                    }
                    let z = T::exp_shift_sum(row, mx);
                    let inv = T::one() / z;
                    // masked keys flush to exact zeros (no denormals in P·V)
                    let tiny: T = real(1e-30);
                    for x in row.iter_mut() {
                        *x = if *x < tiny { T::zero() } else { *x * inv };
                    }
                }
                let oblk = MatMut {
                    data: &mut o,
                    off: q0 * hd,
                    ld: hd,
                };
                let pview = Mat {
                    data: &p[..],
                    off: q0 * t,
                    rs: t,
                    cs: 1,
                };
                mm(oblk, (qb, hd, kend), pview, v, false);
            }
            (o, p)
        })
        .collect();
    let qc = d.q_cols();
    let mut out = vec![T::zero(); d.n() * qc];
    let mut probs = Vec::with_capacity(units.len());
    for (u, (o, p)) in units.into_iter().enumerate() {
        let (b, h) = (u / d.nh, u % d.nh);
        for i in 0..t {
            out[(b * t + i) * qc + h * hd..(b * t + i) * qc + (h + 1) * hd]
                .copy_from_slice(&o[i * hd..(i + 1) * hd]);
        }
        probs.push(p);
    }
    (out, probs)
}

/// How a layer's attention sees its rows.
#[derive(Clone, Copy)]
enum Attend<'a, T> {
    /// `b·t` padded rows with the additive mask (training and [`infer`]).
    Padded(Option<&'a [T]>),
    /// Packed sequences without padding, each a causal run of rows
    /// `(first, count)`; with `last`, only each sequence's last row leaves
    /// the layer (the rest is never read).
    Packed {
        spans: &'a [(usize, usize)],
        last: bool,
    },
}

/// Causal grouped-query attention over packed sequences (see
/// [`Attend::Packed`]): the output `[rows, nh·hd]`, or `[sequences, nh·hd]`
/// with `last`. Nothing is kept for a backward.
fn attention_packed<T: Real>(qkv: &[T], d: &Dims, spans: &[(usize, usize)], last: bool) -> Vec<T> {
    let (hd, w3, qc) = (d.hd, d.w3(), d.q_cols());
    let groups = d.nh / d.nkv;
    let sc: T = real(1.0 / (hd as f64).sqrt());
    let tiny: T = real(1e-30);
    let units: Vec<Vec<T>> = (0..spans.len() * d.nh)
        .into_par_iter()
        .map(|u| {
            let (s, h) = (u / d.nh, u % d.nh);
            let (first, count) = spans[s];
            let q = Mat {
                data: qkv,
                off: first * w3 + h * hd,
                rs: w3,
                cs: 1,
            };
            let k = Mat {
                off: first * w3 + qc + (h / groups) * hd,
                ..q
            };
            let v = Mat {
                off: first * w3 + qc + d.kv_cols() + (h / groups) * hd,
                ..q
            };
            let q_first = if last { count - 1 } else { 0 };
            let mut o = vec![T::zero(); (count - q_first) * hd];
            let mut p = vec![T::zero(); QBLOCK.min(count - q_first) * count];
            for q0 in (q_first..count).step_by(QBLOCK) {
                let qb = QBLOCK.min(count - q0);
                // the block's last row sees keys up to itself
                let kend = q0 + qb;
                let qblk = Mat {
                    off: q.off + q0 * w3,
                    ..q
                };
                mm(
                    MatMut {
                        data: &mut p,
                        off: 0,
                        ld: kend,
                    },
                    (qb, kend, hd),
                    qblk,
                    k.t(),
                    false,
                );
                for i in 0..qb {
                    let row = &mut p[i * kend..(i + 1) * kend];
                    let (seen, hidden) = row.split_at_mut(q0 + i + 1);
                    let mut mx = T::neg_infinity();
                    for x in seen.iter_mut() {
                        *x *= sc;
                        mx = num_traits::Float::max(mx, *x);
                    }
                    let inv = T::one() / T::exp_shift_sum(seen, mx);
                    for x in seen.iter_mut() {
                        *x = if *x < tiny { T::zero() } else { *x * inv };
                    }
                    hidden.fill(T::zero());
                }
                mm(
                    MatMut {
                        data: &mut o,
                        off: (q0 - q_first) * hd,
                        ld: hd,
                    },
                    (qb, hd, kend),
                    Mat::rows(&p, kend),
                    v,
                    false,
                );
            }
            o
        })
        .collect();
    let mut out = vec![T::zero(); if last { spans.len() } else { d.n() } * qc];
    for (u, o) in units.into_iter().enumerate() {
        let (s, h) = (u / d.nh, u % d.nh);
        let r0 = if last { s } else { spans[s].0 };
        for (i, oi) in o.chunks_exact(hd).enumerate() {
            out[(r0 + i) * qc + h * hd..(r0 + i) * qc + (h + 1) * hd].copy_from_slice(oi);
        }
    }
    out
}

/// Backward of [`attention_forward`]: from `dout [N, nh·hd]` to the
/// gradient of the rotated `qkv [N, w3]`.
fn attention_backward<T: Real>(
    qkv: &[T],
    probs: &[Vec<T>],
    dout: &[T],
    d: &Dims,
    mask: Option<&[T]>,
) -> Vec<T> {
    let (t, hd, w3, qc) = (d.t, d.hd, d.w3(), d.q_cols());
    let groups = d.nh / d.nkv;
    let sc: T = real(1.0 / (hd as f64).sqrt());
    let units: Vec<(Vec<T>, Vec<T>, Vec<T>)> = (0..d.b * d.nh)
        .into_par_iter()
        .map(|u| {
            let (b, h) = (u / d.nh, u % d.nh);
            let kvh = h / groups;
            let base = b * t * w3;
            let q = Mat {
                data: qkv,
                off: base + h * hd,
                rs: w3,
                cs: 1,
            };
            let k = Mat {
                data: qkv,
                off: base + qc + kvh * hd,
                rs: w3,
                cs: 1,
            };
            let v = Mat {
                data: qkv,
                off: base + qc + d.kv_cols() + kvh * hd,
                rs: w3,
                cs: 1,
            };
            let dout_h = Mat {
                data: dout,
                off: b * t * qc + h * hd,
                rs: qc,
                cs: 1,
            };
            let p = &probs[u];
            let mut dv = vec![T::zero(); t * hd];
            let mut ds = vec![T::zero(); t * t];
            let mut dq = vec![T::zero(); t * hd];
            let mut dk = vec![T::zero(); t * hd];
            for (q0, kend) in key_blocks(b, t, mask) {
                let qb = QBLOCK.min(t - q0);
                let pblk = Mat {
                    data: &p[..],
                    off: q0 * t,
                    rs: t,
                    cs: 1,
                };
                let doblk = Mat {
                    off: dout_h.off + q0 * qc,
                    ..dout_h
                };
                // dV += Pᵀ dO
                mm(
                    MatMut::rows(&mut dv, hd),
                    (kend, hd, qb),
                    pblk.t(),
                    doblk,
                    true,
                );
                // dP = dO Vᵀ, then dS = P ⊙ (dP − rowsum(P ⊙ dP)), scaled
                let dsblk = MatMut {
                    data: &mut ds,
                    off: q0 * t,
                    ld: t,
                };
                mm(dsblk, (qb, kend, hd), doblk, v.t(), false);
                for i in q0..q0 + qb {
                    let (row, prow) = (&mut ds[i * t..i * t + kend], &p[i * t..i * t + kend]);
                    let dot: T = sum8(kend, |j| row[j] * prow[j]);
                    for (x, &pp) in row.iter_mut().zip(prow) {
                        *x = pp * (*x - dot) * sc;
                    }
                }
                let dsview = Mat {
                    data: &ds[..],
                    off: q0 * t,
                    rs: t,
                    cs: 1,
                };
                let dqblk = MatMut {
                    data: &mut dq,
                    off: q0 * hd,
                    ld: hd,
                };
                mm(dqblk, (qb, hd, kend), dsview, k, false);
                let qblk = Mat {
                    off: q.off + q0 * w3,
                    ..q
                };
                mm(
                    MatMut::rows(&mut dk, hd),
                    (kend, hd, qb),
                    dsview.t(),
                    qblk,
                    true,
                );
            }
            (dq, dk, dv)
        })
        .collect();
    let mut dqkv = vec![T::zero(); d.n() * w3];
    for (u, (dq, dk, dv)) in units.into_iter().enumerate() {
        let (b, h) = (u / d.nh, u % d.nh);
        let kvh = h / groups;
        for i in 0..t {
            let row = &mut dqkv[(b * t + i) * w3..(b * t + i + 1) * w3];
            row[h * hd..(h + 1) * hd].copy_from_slice(&dq[i * hd..(i + 1) * hd]);
            let kc = qc + kvh * hd;
            for (o, &g) in row[kc..kc + hd].iter_mut().zip(&dk[i * hd..(i + 1) * hd]) {
                *o += g;
            }
            let vc = qc + d.kv_cols() + kvh * hd;
            for (o, &g) in row[vc..vc + hd].iter_mut().zip(&dv[i * hd..(i + 1) * hd]) {
                *o += g;
            }
        }
    }
    dqkv
}

/// Backward of [`forward`] from `d_hidden`, the gradient of the last
/// hidden states `[batch·seq, hidden]`.
pub fn backward<T: Real>(
    model: &Model,
    adapters: &AdapterSet<T>,
    tape: Tape<T>,
    d_hidden: &[T],
) -> Result<Grads<T>> {
    let d = tape.dims;
    if d_hidden.len() != d.n() * d.h {
        return Err(Error::Input(
            "hidden-state gradient of the wrong size".into(),
        ));
    }
    let Some(Norm::Rms { weight, .. }) = model.final_norm() else {
        return Err(Error::Input(
            "the explicit path needs a final RMSNorm".into(),
        ));
    };
    let mut grads = adapters.zeros_like();
    let mut dgate = tape.gate.as_ref().map(|g| vec![T::zero(); g.len()]);
    let gc = gate_cols(
        tape.gate.as_deref(),
        d.n(),
        d.t,
        adapters.rank,
        adapters.experts,
    );
    let mut dx = vec![T::zero(); d_hidden.len()];
    {
        let g = weight.storage_and_layout();
        rms_backward(
            &tape.last,
            vector::<T, _>(&g)?,
            &tape.inv_final,
            d_hidden,
            &mut dx,
        );
    }
    let ctx = BackCtx {
        d,
        cos: &tape.cos,
        sin: &tape.sin,
        mask: tape.mask.as_deref(),
        r: adapters.rank,
        e: adapters.experts,
        scale: real(adapters.scale()),
        gc: gc.as_deref(),
        drop: tape.drop,
    };
    let mut saved = tape.layers;
    for li in (0..model.layers.len()).rev() {
        let s = saved.pop().expect("one saved state per layer");
        dx = layer_backward(
            &model.layers[li],
            &adapters.layers[li],
            &mut grads.layers[li],
            s,
            dx,
            (&ctx, li),
            dgate.as_deref_mut(),
        )?;
    }
    Ok(Grads {
        adapters: grads,
        gate: dgate,
        embeds: dx,
    })
}

struct BackCtx<'a, T> {
    d: Dims,
    cos: &'a [T],
    sin: &'a [T],
    mask: Option<&'a [T]>,
    r: usize,
    e: usize,
    scale: T,
    gc: Option<&'a [T]>,
    drop: Option<Dropout>,
}

fn layer_backward<T: Real>(
    layer: &crate::model::DecoderLayer,
    ad: &[Option<LoraWeights<T>>; 7],
    grads: &mut [Option<LoraWeights<T>>; 7],
    s: LayerSaved<T>,
    dout: Vec<T>,
    (c, li): (&BackCtx<T>, usize),
    mut dgate: Option<&mut [T]>,
) -> Result<Vec<T>> {
    let d = &c.d;
    let n = d.n();
    let (Norm::Rms { weight: w1, .. }, Norm::Rms { weight: w2, .. }) =
        (&layer.attn_norm, &layer.mlp_norm)
    else {
        return Err(Error::Input(
            "the explicit path needs RMSNorm layers".into(),
        ));
    };
    let Mlp::Gated { gate_up, down, .. } = &layer.mlp else {
        return Err(Error::Input("the explicit path needs a SwiGLU MLP".into()));
    };
    let (qc, kvc, i2) = (d.q_cols(), d.kv_cols(), 2 * d.inter);
    let p = Proj {
        n,
        t: d.t,
        r: c.r,
        e: c.e,
        scale: c.scale,
        gc: c.gc,
        drop: c.drop.map(|dr| (dr.p, mix(dr.seed, li))),
    };
    // MLP: out = h1 + act·Wd (+ adapter)
    let down_parts = [(0, Target::Down)];
    let act = adapted(ad, &down_parts).then(|| swiglu_forward(&s.gu, d.inter));
    let dact = project_backward(
        &down.weight_t,
        (&dout, d.h),
        (act.as_deref(), d.inter),
        &down_parts,
        ad,
        &s.adapters,
        grads,
        dgate.as_deref_mut(),
        p,
    )?;
    drop(act);
    let dgu = swiglu_backward(&s.gu, &dact, d.inter);
    drop(dact);
    let g2 = w2.storage_and_layout();
    let w2v = vector::<T, _>(&g2)?;
    let gu_parts = [(0, Target::Gate), (d.inter, Target::Up)];
    let hn = adapted(ad, &gu_parts).then(|| rms_apply(&s.h1, w2v, &s.inv2));
    let dhn = project_backward(
        &gate_up.weight_t,
        (&dgu, i2),
        (hn.as_deref(), d.h),
        &gu_parts,
        ad,
        &s.adapters,
        grads,
        dgate.as_deref_mut(),
        p,
    )?;
    drop((dgu, hn));
    let mut dh1 = dout;
    rms_backward(&s.h1, w2v, &s.inv2, &dhn, &mut dh1);
    drop(dhn);
    // attention: h1 = x + attn·Wo (+ adapter)
    let o_parts = [(0, Target::O)];
    let dattn = project_backward(
        &layer.attn.o_proj.weight_t,
        (&dh1, d.h),
        (Some(&s.attn), qc),
        &o_parts,
        ad,
        &s.adapters,
        grads,
        dgate.as_deref_mut(),
        p,
    )?;
    let mut dqkv = attention_backward(&s.qkv, &s.probs, &dattn, d, c.mask);
    drop(dattn);
    let w3 = d.w3();
    rope_inplace(&mut dqkv, w3, (0, d.nh, d.hd), c.cos, c.sin, true);
    rope_inplace(&mut dqkv, w3, (qc, d.nkv, d.hd), c.cos, c.sin, true);
    let g1 = w1.storage_and_layout();
    let w1v = vector::<T, _>(&g1)?;
    let qkv_parts = [(0, Target::Q), (qc, Target::K), (qc + kvc, Target::V)];
    let xn = adapted(ad, &qkv_parts).then(|| rms_apply(&s.x, w1v, &s.inv1));
    let dxn = project_backward(
        &layer.attn.qkv.weight_t,
        (&dqkv, w3),
        (xn.as_deref(), d.h),
        &qkv_parts,
        ad,
        &s.adapters,
        grads,
        dgate,
        p,
    )?;
    drop((dqkv, xn));
    let mut dx = dh1;
    rms_backward(&s.x, w1v, &s.inv1, &dxn, &mut dx);
    Ok(dx)
}

// ---------------------------------------------------------------------------
// Loss heads and the optimiser
// ---------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: Mat<f64>, b: Mat<f64>) -> Vec<f64> {
        let at = |x: &Mat<f64>, i: usize, j: usize| x.data[x.off + i * x.rs + j * x.cs];
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| at(&a, i, l) * at(&b, l, j)).sum();
            }
        }
        c
    }

    /// Both backends (gemm, and the system BLAS when one is installed)
    /// against a naive product, for every orientation of the operands,
    /// overwriting and accumulating, into a column block of a wider `c`.
    #[test]
    fn matmul_backends_match_a_naive_product_in_every_orientation() {
        // above the BLAS threshold: a column split, and a narrow output
        // (adapter ranks) split by rows
        for shape in [(70, 64, 60), (600, 8, 60)] {
            let (m, n, k) = shape;
            let vals = |len: usize, seed: usize| -> Vec<f64> {
                (0..len)
                    .map(|i| (((i * 7919 + seed * 104729) % 1000) as f64 - 500.0) / 250.0)
                    .collect()
            };
            let (ad, bd) = (vals(m * k, 1), vals(k * n, 2));
            let blas = crate::blas::get();
            for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = if a_t {
                    Mat {
                        data: &ad[..],
                        off: 0,
                        rs: 1,
                        cs: m,
                    }
                } else {
                    Mat::rows(&ad, k)
                };
                let b = if b_t {
                    Mat {
                        data: &bd[..],
                        off: 0,
                        rs: 1,
                        cs: k,
                    }
                } else {
                    Mat::rows(&bd, n)
                };
                let want = naive(m, n, k, a, b);
                for acc in [false, true] {
                    for use_blas in [false, true] {
                        if use_blas && blas.is_none() {
                            continue;
                        }
                        let ld = n + 5;
                        let mut c = vec![1.0; m * ld];
                        let block = MatMut {
                            data: &mut c,
                            off: 3,
                            ld,
                        };
                        if use_blas {
                            let mut block = block;
                            assert!(blas_mm(&mut block, (m, n, k), a, b, acc));
                        } else {
                            gemm_mm(block, (m, n, k), a, b, acc);
                        }
                        for i in 0..m {
                            for j in 0..n {
                                let got = c[3 + i * ld + j];
                                let w = want[i * n + j] + if acc { 1.0 } else { 0.0 };
                                assert!(
                                    (got - w).abs() < 1e-9,
                                    "a_t {a_t} b_t {b_t} acc {acc} blas {use_blas}: {got} vs {w}"
                                );
                            }
                            // the columns outside the block are untouched
                            assert_eq!(c[i * ld], 1.0);
                            assert_eq!(c[i * ld + 3 + n], 1.0);
                        }
                    }
                }
            }
        }
    }
}
