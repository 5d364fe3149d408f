//! `y = x · Wᵀ + b` as one CPU op with a hand-written backward pass.
//!
//! Composed from candle ops a linear layer is a reshape, a transpose, a
//! matmul, a broadcast add and a reshape; in the backward pass candle
//! allocates, zeroes and accumulates a gradient for each of those nodes.
//! One op computes `dx = dy · W`, `dW = dyᵀ · x` and `db = Σ dy` directly.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use crate::cpu::{f32_slice, matmul};

/// The fused affine map; inputs `x [rows, in]`, `W [out, in]`, `b [out]`.
struct FusedLinear;

impl CustomOp3 for FusedLinear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, inp) = l1.shape().dims2()?;
        let (out, inp2) = l2.shape().dims2()?;
        if inp != inp2 || l3.shape().elem_count() != out {
            candle_core::bail!(
                "{}: shapes {:?}, {:?}, {:?}",
                self.name(),
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let (x, w, b) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let mut y = Vec::with_capacity(rows * out);
        for _ in 0..rows {
            y.extend_from_slice(b);
        }
        matmul(
            rows,
            out,
            inp,
            &mut y,
            (out, 1),
            true,
            x,
            (inp, 1),
            w,
            (1, inp),
        );
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, inp) = x.dims2()?;
        let out = w.dim(0)?;
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &FusedLinearGrad)?;
        let dx = packed.narrow(0, 0, rows * inp)?.reshape((rows, inp))?;
        let dw = packed
            .narrow(0, rows * inp, out * inp)?
            .reshape((out, inp))?;
        let db = packed
            .narrow(0, rows * inp + out * inp, out)?
            .reshape(b.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Backward of [`FusedLinear`], packed flat as `dx ‖ dW ‖ db`.
struct FusedLinearGrad;

impl CustomOp3 for FusedLinearGrad {
    fn name(&self) -> &'static str {
        "fused-linear-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, inp) = l1.shape().dims2()?;
        let (out, _) = l2.shape().dims2()?;
        let (x, w, dy) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let mut buf = vec![0f32; rows * inp + out * inp + out];
        let (dx, rest) = buf.split_at_mut(rows * inp);
        let (dw, db) = rest.split_at_mut(out * inp);
        // dx = dy · W
        matmul(
            rows,
            inp,
            out,
            dx,
            (inp, 1),
            false,
            dy,
            (out, 1),
            w,
            (inp, 1),
        );
        // dW = dyᵀ · x
        matmul(
            out,
            inp,
            rows,
            dw,
            (inp, 1),
            false,
            dy,
            (1, out),
            x,
            (inp, 1),
        );
        // db = Σ_rows dy (row order fixed: deterministic)
        for r in dy.chunks_exact(out) {
            for (d, &g) in db.iter_mut().zip(r) {
                *d += g;
            }
        }
        let n = buf.len();
        Ok((CpuStorage::F32(buf), Shape::from(n)))
    }
}

/// `x · Wᵀ + b` for `x` of any rank ≥ 2 as one CPU op (models call
/// `ops::linear`, which picks this kernel on CPU; the test against the
/// composed computation lives beside that choice, in `ops`).
pub fn fused_linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inner = *dims.last().expect("rank >= 1");
    let rows = x.elem_count() / inner;
    let mut out_dims = dims;
    *out_dims.last_mut().expect("rank >= 1") = w.dim(0)?;
    let x2 = x.reshape((rows, inner))?.contiguous()?;
    x2.apply_op3(&w.contiguous()?, &b.contiguous()?, FusedLinear)?
        .reshape(out_dims)
}
