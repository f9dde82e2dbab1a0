//! Row-chunked updates of large parameters: the f32 working copies of one chunk, not of the
//! whole parameter.
//!
//! The engine computes in f32 whatever a parameter is stored in. Done on the whole tensor, a
//! step of a bf16 `m × n` weight holds, besides the weight and its gradient, an f32 copy of each
//! and the f32 result: `12·m·n` bytes of temporaries (LLaMA-7B's LM head: 1.6 GB; a 4096×11008
//! MLP weight: 0.54 GB), which is most of the peak of a layer-wise step. Where every operation
//! after the down projection is row-local — the full-rank AdamW (elementwise), and a dense
//! projection whose residual is discarded (GaLore, Q-GaLore: rows `i` of `W − c·α·P·N` need rows
//! `i` of `P` or of `N` only) — the engine walks the rows in chunks of about
//! [`StateStorage::update_chunk_elements`](crate::state::StateStorage::update_chunk_elements):
//!
//! * `R = down(G)`: left (`PᵀG`, `P` m×r) as `Σₖ P[k]ᵀ·f32(G[k])` over row chunks `k`; right
//!   (`G·Pᵀ`) as the row chunks `f32(G[k])·Pᵀ` of `R`;
//! * the moments of `R` (r×n or m×r) in one piece, as before;
//! * the update of chunk `k`: `f32(W[k])`, the same kernel as the whole-tensor path
//!   ([`EmberBackend::projected_update`](ember_kernels::EmberBackend::projected_update) with
//!   `P[k]` (left) or `N[k]` (right); [`EmberBackend::adam_full_step`]/`_8bit` with the moments'
//!   rows `k`), rounded once to the stored dtype and written into the output at rows `k`
//!   (in place where the buffer is not shared).
//!
//! The update is elementwise after `R`, so a chunked step equals the whole-tensor step bit for
//! bit, except a left projection's `R`, whose sum over chunks rounds differently (f32, tested to
//! 1e-6). 8-bit moments are cut at block boundaries (chunks of whole blocks).
//!
//! [`EmberBackend::adam_full_step`]: ember_kernels::EmberBackend::adam_full_step

use std::ops::Range;

use burn::prelude::*;
use burn::tensor::DType;
use ember_kernels::Basis;

/// Row ranges covering `rows` rows of `cols` columns in chunks of about `max_elements`
/// (at least `min_elements` each, a multiple of `align` elements except the last), or `None`
/// when the whole tensor is one chunk (`max_elements == 0`: never chunk).
pub fn row_chunks(
    rows: usize,
    cols: usize,
    max_elements: usize,
    min_elements: usize,
    align: usize,
) -> Option<Vec<Range<usize>>> {
    if max_elements == 0 || cols == 0 || rows * cols <= max_elements {
        return None;
    }
    // rows per chunk: a multiple of `align / gcd(cols, align)` rows keeps chunk starts aligned
    let step = align / gcd(cols, align.max(1)).max(1);
    let want = (max_elements / cols)
        .max(min_elements.div_ceil(cols))
        .max(1);
    let k = want.div_ceil(step.max(1)) * step.max(1);
    if k >= rows {
        return None;
    }
    let mut out: Vec<Range<usize>> = (0..rows).step_by(k).map(|s| s..(s + k).min(rows)).collect();
    // a short last chunk joins the one before (every chunk then has at least `k` rows)
    if out.len() > 1 && out.last().is_some_and(|r| r.len() < k) {
        let last = out.pop().expect("two chunks");
        out.last_mut().expect("one chunk").end = last.end;
    }
    (out.len() > 1).then_some(out)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Rows `rows` of `t`.
pub(crate) fn rows_of<B: Backend>(t: &Tensor<B, 2>, rows: Range<usize>) -> Tensor<B, 2> {
    let cols = t.dims()[1];
    t.clone().slice([rows, 0..cols])
}

/// `R = down(G)` (f32) with `G` in any float dtype, one row chunk of `G` in f32 at a time.
pub(crate) fn down<B: ember_kernels::EmberBackend>(
    basis: &Basis<B>,
    g: Tensor<B, 2>,
    chunks: &[Range<usize>],
) -> Tensor<B, 2> {
    if basis.left {
        let mut sum: Option<Tensor<B, 2>> = None;
        for rows in chunks {
            let g_k = rows_of(&g, rows.clone()).cast(DType::F32);
            let p_k = rows_of(&basis.p, rows.clone());
            let part = B::projection_matmul(p_k.transpose(), g_k);
            sum = Some(match sum {
                Some(s) => s + part,
                None => part,
            });
        }
        sum.expect("at least one chunk")
    } else {
        let parts = chunks
            .iter()
            .map(|rows| {
                B::projection_matmul(
                    rows_of(&g, rows.clone()).cast(DType::F32),
                    basis.p.clone().transpose(),
                )
            })
            .collect();
        Tensor::cat(parts, 0)
    }
}

/// The basis and the low-rank update `N` that give rows `rows` of `up(N)`: `(P[rows], N)` for a
/// left projection, `(P, N[rows])` for a right one.
pub(crate) fn basis_rows<B: Backend>(
    basis: &Basis<B>,
    n: &Tensor<B, 2>,
    rows: Range<usize>,
) -> (Basis<B>, Tensor<B, 2>) {
    if basis.left {
        (
            Basis {
                p: rows_of(&basis.p, rows),
                left: true,
            },
            n.clone(),
        )
    } else {
        (basis.clone(), rows_of(n, rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_rows_once_and_respect_the_alignment() {
        for (rows, cols, max, min, align) in [
            (1000, 7, 700, 0, 1),
            (4096, 11008, 1 << 22, 4096, 256),
            (1000, 30, 200, 0, 256),
            (10, 10, 25, 0, 1),
            (32000, 4096, 1 << 24, 4096, 256),
        ] {
            let chunks = row_chunks(rows, cols, max, min, align).expect("chunked");
            assert!(chunks.len() > 1);
            let mut next = 0;
            for (i, c) in chunks.iter().enumerate() {
                assert_eq!(c.start, next, "contiguous");
                assert!(!c.is_empty());
                assert!(c.len() * cols >= min);
                assert_eq!((c.start * cols) % align, 0, "aligned start");
                if i + 1 < chunks.len() {
                    assert_eq!((c.end * cols) % align, 0, "aligned end");
                    assert!(
                        c.len() * cols <= max.max(align * cols),
                        "{rows}×{cols}: {c:?}"
                    );
                }
                next = c.end;
            }
            assert_eq!(next, rows);
        }
    }

    #[test]
    fn small_tensors_and_zero_are_not_chunked() {
        assert!(row_chunks(100, 100, 10_000, 0, 1).is_none());
        assert!(row_chunks(100, 100, 0, 0, 1).is_none());
        assert!(row_chunks(3, 1000, 100, 0, 1).is_some());
        // one row per chunk would not reach the alignment: a single chunk
        assert!(row_chunks(2, 3, 3, 0, 256).is_none());
    }
}
