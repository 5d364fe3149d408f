//! Row-wise losses over catalogue scores `rep · tableᵀ`, computed in
//! blocks so that the `[M, C]` score matrix never exists as a whole.
//!
//! The fused cross-entropy and the fused distillation loss share this
//! skeleton: the forward pass scores a block of `BLOCK` rows and hands each
//! row to a closure (in parallel); the backward pass scores the block
//! again, lets a closure turn each row into `∂loss/∂scores` in place and
//! multiplies the block straight into `d rep` and `d table`. Each closure
//! gets a per-thread scratch buffer, so nothing is allocated per row.

use rayon::prelude::*;

use crate::cpu::matmul;

/// The contiguous f32 data of a CPU storage, or an error naming the op
/// (for custom ops built on these passes outside this crate).
pub use crate::cpu::f32_slice;

/// Rows of scores materialised at a time.
pub const BLOCK: usize = 512;

/// Scores of rows `r0..r0+rows` into `buf` (`rows × c`).
fn block_scores(
    rep: &[f32],
    table: &[f32],
    d: usize,
    c: usize,
    r0: usize,
    rows: usize,
    buf: &mut [f32],
) {
    matmul(
        rows,
        c,
        d,
        &mut buf[..rows * c],
        (c, 1),
        false,
        &rep[r0 * d..(r0 + rows) * d],
        (d, 1),
        table,
        (1, d),
    );
}

/// Forward pass: for every row `r` of `rep [M, d]`, calls
/// `f(r, scores_r, out_r, scratch)` with the row's scores against
/// `table [C, d]` (which `f` may overwrite) and its `out_cols` outputs.
pub fn forward_rows<F>(rep: &[f32], table: &[f32], d: usize, out: &mut [f32], out_cols: usize, f: F)
where
    F: Fn(usize, &mut [f32], &mut [f32], &mut Vec<f32>) + Sync,
{
    let (m, c) = (rep.len() / d, table.len() / d);
    assert_eq!(out.len(), m * out_cols, "one output row per input row");
    let mut buf = vec![0f32; BLOCK.min(m) * c];
    for r0 in (0..m).step_by(BLOCK) {
        let rows = BLOCK.min(m - r0);
        block_scores(rep, table, d, c, r0, rows, &mut buf);
        out[r0 * out_cols..(r0 + rows) * out_cols]
            .par_chunks_mut(out_cols.max(1))
            .zip(buf[..rows * c].par_chunks_mut(c))
            .enumerate()
            .for_each_init(Vec::new, |scratch, (k, (o, scores))| {
                f(r0 + k, scores, o, scratch)
            });
    }
}

/// Backward pass: `f(r, row, scratch)` turns row `r`'s scores into
/// `∂loss/∂scores_r` in place. Returns `[(M + C) × d]`: `d rep` (`G · table`)
/// followed by `d table` (`Gᵀ · rep`).
pub fn backward_rows<F>(rep: &[f32], table: &[f32], d: usize, f: F) -> Vec<f32>
where
    F: Fn(usize, &mut [f32], &mut Vec<f32>) + Sync,
{
    let (m, c) = (rep.len() / d, table.len() / d);
    let mut out = vec![0f32; (m + c) * d];
    let (d_rep, d_table) = out.split_at_mut(m * d);
    let mut buf = vec![0f32; BLOCK.min(m) * c];
    for r0 in (0..m).step_by(BLOCK) {
        let rows = BLOCK.min(m - r0);
        block_scores(rep, table, d, c, r0, rows, &mut buf);
        buf[..rows * c]
            .par_chunks_mut(c)
            .enumerate()
            .for_each_init(Vec::new, |scratch, (k, row)| f(r0 + k, row, scratch));
        let gblk = &buf[..rows * c];
        // d rep[block] = G · E
        matmul(
            rows,
            d,
            c,
            &mut d_rep[r0 * d..(r0 + rows) * d],
            (d, 1),
            false,
            gblk,
            (c, 1),
            table,
            (d, 1),
        );
        // d E += Gᵀ · rep[block]
        matmul(
            c,
            d,
            rows,
            d_table,
            (d, 1),
            r0 > 0,
            gblk,
            (1, c),
            &rep[r0 * d..(r0 + rows) * d],
            (d, 1),
        );
    }
    out
}
