//! A device-side projector: randomized subspace iteration, warm-started from the previous
//! projector, orthonormalized with Newton–Schulz iterations — matmuls only, so a refresh never
//! copies the gradient to the host.
//!
//! For the right side (`P` is r×n, the top right singular subspace of `G`):
//!
//! ```text
//! Z₀ = previous Pᵀ (warm start) or a seeded Gaussian n×r
//! repeat q times:  Y = orth(G·Z),  Z = orth(Gᵀ·Y)
//! P = Zᵀ
//! ```
//!
//! and symmetrically for the left side. `orth` normalizes by the Frobenius norm and runs
//! `X ← X·(1.5·I − 0.5·XᵀX)`, which drives every singular value of `X` to 1 (cubic convergence
//! near 1, ×1.5 per step for small ones). The subspace, not the individual singular vectors, is
//! what this returns: a rotation inside the subspace differs from the exact SVD's.

use burn::prelude::*;

/// Newton–Schulz orthonormalization of the columns of `x` (k ≤ rows).
pub fn orthonormalize<B: Backend>(x: Tensor<B, 2>, iters: usize) -> Tensor<B, 2> {
    let [_, k] = x.dims();
    let device = x.device();
    let norm = x.clone().powi_scalar(2).sum().sqrt().add_scalar(1e-30);
    let mut x = x.div(norm.unsqueeze());
    let eye = Tensor::<B, 2>::eye(k, &device);
    for _ in 0..iters {
        let gram = x.clone().transpose().matmul(x.clone());
        x = x.matmul(eye.clone().mul_scalar(1.5).sub(gram.mul_scalar(0.5)));
    }
    x
}

/// Top-`r` right singular subspace of `g` as `r × n` rows (`left = false`) or left singular
/// subspace as `m × r` columns (`left = true`), from `start` (n×r or m×r).
pub fn subspace_iteration<B: Backend>(
    g: &Tensor<B, 2>,
    start: Tensor<B, 2>,
    left: bool,
    power_iters: usize,
    ns_iters: usize,
) -> Tensor<B, 2> {
    let gt = g.clone().transpose();
    let (a, at) = if left {
        (gt, g.clone())
    } else {
        (g.clone(), gt)
    };
    // right side: a = G (m×n), z in ℝ^{n×r}; left side: a = Gᵀ (n×m), z in ℝ^{m×r}
    let mut z = orthonormalize(start, ns_iters);
    for _ in 0..power_iters.max(1) {
        let y = orthonormalize(a.clone().matmul(z), ns_iters);
        z = orthonormalize(at.clone().matmul(y), ns_iters);
    }
    if left {
        z
    } else {
        z.transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use crate::svd::truncated_svd;
    use burn::backend::Flex;

    type B = Flex;

    /// `G = U·diag(σ)·Vᵀ + noise` with `σᵢ = decay^i`.
    fn decaying(m: usize, n: usize, decay: f64, seed: u64) -> Tensor<B, 2> {
        let mut rng = SplitMix64::new(seed, &[]);
        let k = m.min(n);
        let gauss = |rows, cols, rng: &mut SplitMix64| {
            let v: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
            Tensor::<B, 2>::from_data(TensorData::new(v, [rows, cols]), &Default::default())
        };
        let u = orthonormalize(gauss(m, k, &mut rng), 60);
        let v = orthonormalize(gauss(n, k, &mut rng), 60);
        let s: Vec<f32> = (0..k).map(|i| decay.powi(i as i32) as f32).collect();
        let s = Tensor::<B, 1>::from_data(TensorData::new(s, [k]), &Default::default());
        let noise = gauss(m, n, &mut rng).mul_scalar(1e-4);
        u.mul(s.unsqueeze()).matmul(v.transpose()) + noise
    }

    fn energy(g: &Tensor<B, 2>, p: &Tensor<B, 2>, left: bool) -> f64 {
        let proj = if left {
            p.clone().transpose().matmul(g.clone())
        } else {
            g.clone().matmul(p.clone().transpose())
        };
        proj.powi_scalar(2).sum().into_scalar() as f64
    }

    /// Captures ≥ 99% of the exact top-r energy `‖Pᵀ G‖² / ‖Uᵣᵀ G‖²` on decaying spectra, on both
    /// sides, from a cold start — and from a warm start after the gradient rotated a little.
    #[test]
    fn captures_the_top_r_energy() {
        for (m, n, r, left) in [(96, 64, 8, false), (48, 80, 6, true), (64, 64, 16, false)] {
            let g = decaying(m, n, 0.8, 1);
            let data = g.clone().into_data();
            let svd = truncated_svd(data.as_slice::<f32>().unwrap(), m, n, r).unwrap();
            let exact = if left {
                Tensor::<B, 2>::from_data(
                    TensorData::new(svd.u.clone(), [m, r]),
                    &Default::default(),
                )
            } else {
                Tensor::<B, 2>::from_data(
                    TensorData::new(svd.vt.clone(), [r, n]),
                    &Default::default(),
                )
            };
            let best = energy(&g, &exact, left);
            let dim = if left { m } else { n };
            let mut rng = SplitMix64::new(7, &[]);
            let start: Vec<f32> = (0..dim * r).map(|_| rng.normal() as f32).collect();
            let start =
                Tensor::<B, 2>::from_data(TensorData::new(start, [dim, r]), &Default::default());
            let p = subspace_iteration(&g, start, left, 4, 30);
            // orthonormal
            let gram = if left {
                p.clone().transpose().matmul(p.clone())
            } else {
                p.clone().matmul(p.clone().transpose())
            };
            let off = gram
                .sub(Tensor::eye(r, &Default::default()))
                .abs()
                .max()
                .into_scalar();
            assert!(off < 1e-3, "not orthonormal: {off}");
            let ratio = energy(&g, &p, left) / best;
            assert!(
                ratio >= 0.99,
                "{m}x{n} r{r} left={left}: cold start captures {ratio}"
            );

            // warm start: one iteration from the previous projector on a slightly changed gradient
            let g2 = g.clone() + decaying(m, n, 0.8, 2).mul_scalar(0.05);
            let data = g2.clone().into_data();
            let svd2 = truncated_svd(data.as_slice::<f32>().unwrap(), m, n, r).unwrap();
            let exact2 = if left {
                Tensor::<B, 2>::from_data(TensorData::new(svd2.u, [m, r]), &Default::default())
            } else {
                Tensor::<B, 2>::from_data(TensorData::new(svd2.vt, [r, n]), &Default::default())
            };
            let warm = if left {
                p.clone()
            } else {
                p.clone().transpose()
            };
            let p2 = subspace_iteration(&g2, warm, left, 1, 30);
            let ratio = energy(&g2, &p2, left) / energy(&g2, &exact2, left);
            assert!(
                ratio >= 0.99,
                "{m}x{n} r{r} left={left}: warm start captures {ratio}"
            );
        }
    }
}
