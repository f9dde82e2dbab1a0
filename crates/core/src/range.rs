//! A device-side projector: randomized subspace iteration, warm-started from the previous
//! projector, orthonormalized with Newton–Schulz iterations — matmuls only, so a refresh never
//! copies the gradient to the host.
//!
//! For the right side (`P` is r×n, the top right singular subspace of `G`):
//!
//! ```text
//! Z₀ = previous Pᵀ (warm start) or a seeded random sign matrix n×r (Rademacher)
//! repeat q times:  Y = orth(G·Z),  Z = orth(Gᵀ·Y)
//! P = Zᵀ
//! ```
//!
//! and symmetrically for the left side. `Z₀` is not orthonormalized: only the span of `G·Z₀`
//! matters, and `orth` normalizes what it is given.
//!
//! The iteration finds a subspace; its frame is rotated arbitrarily inside it. A final
//! **Rayleigh–Ritz** step ([`rayleigh_ritz`]) turns that frame into the singular vectors of `G`
//! restricted to the subspace — ordered by singular value and signed as the exact SVD signs its
//! pairs — from the eigendecomposition of the `r × r` matrix `(G·Pᵀ)ᵀ(G·Pᵀ)` on the host. The
//! span (and the captured energy) is unchanged; the coordinates are the exact projector's where
//! the subspace is exact. This matters for GaLore: Adam's moments are per coordinate, and a
//! rotated frame gave a worse pretraining loss than the exact SVD on the same subspace quality
//! (`docs/perf-notes.md`, "The device projector's frame").
//!
//! `orth` ([`orthonormalize_fast`]) divides by the Frobenius norm (every singular value in
//! (0, 1]) and runs two kinds of Newton–Schulz steps, each a polynomial applied to every singular
//! value at once through `A = XᵀX`:
//!
//! ```text
//! quintic, 8 steps:  X ← 3.4445·X − 4.7750·X·A + 2.0315·X·A²   (×3.44 per step for small σ,
//!                                                                  lands σ in about [0.68, 1.2])
//! cubic,   5 steps:  X ← 1.5·X − 0.5·X·A                        (converges to 1, cubically)
//! ```
//!
//! Every singular value ≥ 2.4·10⁻⁵ of the largest ends within 10⁻⁵ of 1 — what 30 cubic steps
//! ([`orthonormalize`], the plain iteration) reach from ≥ 2·10⁻⁵ — for 13 steps whose matmuls cost
//! `8·(4kr² + 2r³) + 5·4kr²` instead of `30·4kr²` FLOPs (`X` is k×r): 2.1× fewer for the MLP
//! shapes of LLaMA (k ≫ r). The quintic coefficients are the ones Muon's orthogonalization uses;
//! the cubic steps then finish the convergence that those coefficients leave at about ±30 %.

use burn::prelude::*;
use burn::tensor::DType;
use ember_kernels::portable::fixed_order_sum;
use ember_kernels::EmberBackend;

/// Quintic steps of [`orthonormalize_fast`].
const QUINTIC_STEPS: usize = 8;
/// Cubic steps of [`orthonormalize_fast`] after the quintic ones.
const CUBIC_STEPS: usize = 5;

/// Plain Newton–Schulz orthonormalization of the columns of `x` (k ≤ rows): `iters` cubic steps
/// `X ← X·(1.5·I − 0.5·XᵀX)` after dividing by the Frobenius norm (×1.5 per step for small
/// singular values, cubic convergence near 1). The reference the fast schedule is checked against.
pub fn orthonormalize<B: Backend>(x: Tensor<B, 2>, iters: usize) -> Tensor<B, 2> {
    let mut x = frobenius_normalized(x);
    for _ in 0..iters {
        x = cubic_step(x);
    }
    x
}

/// Newton–Schulz orthonormalization of the columns of `x` (k ≤ rows) in 13 steps: 8 quintic
/// steps that lift small singular values ×3.44 per step, then 5 cubic steps that converge
/// (module docs).
///
/// Each step is `X ← X·poly(A)`: the `r × r` polynomial in one op
/// ([`EmberBackend::newton_schulz_poly`], fused on GPU backends), then one product.
pub fn orthonormalize_fast<B: EmberBackend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let mut x = frobenius_normalized(x);
    for _ in 0..QUINTIC_STEPS {
        let gram = product(x.clone().transpose(), x.clone());
        let square = gram.clone().matmul(gram.clone());
        let poly = B::newton_schulz_poly(gram, Some(square), [3.4445, -4.7750, 2.0315]);
        x = product(x, poly);
    }
    for _ in 0..CUBIC_STEPS {
        let gram = product(x.clone().transpose(), x.clone());
        x = product(x, B::newton_schulz_poly(gram, None, [1.5, -0.5, 0.0]));
    }
    x
}

/// `a·b` for the fits' tall products (`XᵀX` with `K` the layer's width, `G·Z`, `Pᵀ·G`): the
/// backend's projection product ([`EmberBackend::projection_matmul`]: cuBLAS on CUDA), burn's
/// `matmul` elsewhere and with `EMBER_FIT_PRODUCTS=burn` (for comparisons). Same precision (TF32
/// for f32 on CUDA either way). Measured on the H100 (a warm refresh, `ember-bench step
/// --refreshes`): −15% at 4096×11008 r512, −6% at 2048×5461 r512, none at 512×1376 r128 — the
/// fit is bound there by launches and by the host's `r × r` eigendecomposition, not by these
/// products.
fn product<B: EmberBackend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    static BURN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let burn =
        *BURN.get_or_init(|| matches!(std::env::var("EMBER_FIT_PRODUCTS").as_deref(), Ok("burn")));
    if burn || a.dtype() != b.dtype() {
        a.matmul(b)
    } else {
        B::projection_matmul(a, b)
    }
}

fn frobenius_normalized<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = fixed_order_sum(x.clone().powi_scalar(2))
        .sqrt()
        .add_scalar(1e-30);
    x.div(norm.unsqueeze())
}

/// `X ← 1.5·X − 0.5·X·(XᵀX)`.
fn cubic_step<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let gram = x.clone().transpose().matmul(x.clone());
    x.clone()
        .mul_scalar(1.5)
        .sub(x.matmul(gram).mul_scalar(0.5))
}

/// Top-`r` right singular subspace of `g` as `r × n` rows (`left = false`) or left singular
/// subspace as `m × r` columns (`left = true`), from `start` (n×r or m×r).
pub fn subspace_iteration<B: EmberBackend>(
    g: &Tensor<B, 2>,
    start: Tensor<B, 2>,
    left: bool,
    power_iters: usize,
) -> Tensor<B, 2> {
    let gt = g.clone().transpose();
    let (a, at) = if left {
        (gt, g.clone())
    } else {
        (g.clone(), gt)
    };
    // right side: a = G (m×n), z in ℝ^{n×r}; left side: a = Gᵀ (n×m), z in ℝ^{m×r}
    let mut z = start;
    for _ in 0..power_iters.max(1) {
        let y = orthonormalize_fast(product(a.clone(), z));
        z = orthonormalize_fast(product(at.clone(), y));
    }
    if left {
        z
    } else {
        z.transpose()
    }
}

/// The device projector's refresh: subspace iteration from the previous projector `warm`
/// (`dim × r`, `power_iters` iterations) or, without one, from the random `random(0)` with 2
/// more iterations. It **re-seeds** when the result has lost directions (`‖P‖²_F < r − ½`, an
/// orthonormal frame has `r`): a zero or rank-deficient gradient leaves `G·Z` rank-deficient, and
/// a warm start from a collapsed `P` would stay collapsed for every later refresh. Then it starts
/// again from a fresh random start, and if the gradient itself has rank < r, fills the missing
/// directions from the random `random(1)` (`orth(P + 10⁻²·Ω/√dim)`), so `P` is always an
/// orthonormal frame that contains the gradient's dominant subspace. The check's scalar comes to
/// the host with the rotation's `r × r` matrix, in the one read a refresh makes per matrix.
pub fn fit<B: EmberBackend>(
    g: &Tensor<B, 2>,
    warm: Option<Tensor<B, 2>>,
    random: impl Fn(u64) -> Tensor<B, 2>,
    left: bool,
    power_iters: usize,
) -> Tensor<B, 2> {
    let was_warm = warm.is_some();
    let p = match warm {
        Some(w) => subspace_iteration(g, w, left, power_iters),
        None => subspace_iteration(g, random(0), left, power_iters + 2),
    };
    let p = match rayleigh_ritz_unless_collapsed(g, p, left) {
        Ok(rotated) => return rotated,
        Err(p) => p,
    };
    let p = if was_warm {
        log::info!("device projector: the warm start lost directions; re-seeding");
        let p = subspace_iteration(g, random(0), left, power_iters + 2);
        match rayleigh_ritz_unless_collapsed(g, p, left) {
            Ok(rotated) => return rotated,
            Err(p) => p,
        }
    } else {
        p
    };
    // the gradient has rank < r: complete the frame
    let z = if left { p } else { p.transpose() };
    let [dim, _] = z.dims();
    let filled = orthonormalize_fast(z + random(1).mul_scalar(1e-2 / (dim as f64).sqrt()));
    rayleigh_ritz(g, if left { filled } else { filled.transpose() }, left)
}

/// [`rayleigh_ritz`] unless the frame `p` has lost directions (`‖P‖²_F < r − ½` or not a
/// number: `Err(p)`, for [`fit`] to re-seed). The frame's norm and the `r × r` Gram matrix come
/// to the host in **one** read — a refresh's one synchronization per matrix (there were two, the
/// check's and the rotation's).
fn rayleigh_ritz_unless_collapsed<B: EmberBackend>(
    g: &Tensor<B, 2>,
    p: Tensor<B, 2>,
    left: bool,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let rank = p.dims()[if left { 1 } else { 0 }];
    let (b, gram) = ritz_products(g, &p, left);
    let r = gram.dims()[0];
    let n2 = fixed_order_sum(p.clone().powi_scalar(2)).cast(DType::F32);
    let both = Tensor::cat(vec![gram.reshape([r * r]).cast(DType::F32), n2], 0);
    let Ok(host) = both.into_data().convert::<f32>().to_vec::<f32>() else {
        return Ok(p);
    };
    let n2 = host[r * r] as f64;
    if n2.is_nan() || n2 < rank as f64 - 0.5 {
        return Err(p);
    }
    Ok(ritz_rotate(p, b, &host[..r * r], left))
}

/// Rotates the orthonormal frame `p` (left: `m × r` columns; right: `r × n` rows) inside its span
/// onto the singular vectors of `G` restricted to it: with `B = Pᵀ·G` (left) or `B = G·Pᵀ`
/// (right) and the eigendecomposition `B·Bᵀ = W·Σ²·Wᵀ` (left) or `Bᵀ·B = W·Σ²·Wᵀ` (right), in
/// f64 on the host (`r × r`, one read), the frame becomes `P·W` (left) or `Wᵀ·P` (right), its
/// vectors ordered by decreasing `σ`. Each singular pair is signed as [`crate::svd`] signs the
/// exact one: the entry of largest magnitude of the left vector is positive (left: the new
/// column itself; right: the column of `G·Pᵀ·W`). Returns `p` unchanged if the small matrix is
/// not finite.
pub fn rayleigh_ritz<B: EmberBackend>(
    g: &Tensor<B, 2>,
    p: Tensor<B, 2>,
    left: bool,
) -> Tensor<B, 2> {
    let (b, gram) = ritz_products(g, &p, left);
    let host: Vec<f32> = match gram.into_data().convert::<f32>().to_vec() {
        Ok(v) => v,
        Err(_) => return p,
    };
    ritz_rotate(p, b, &host, left)
}

/// `B = Pᵀ·G` (left) or `G·Pᵀ` (right) and its `r × r` Gram matrix ([`rayleigh_ritz`]).
fn ritz_products<B: EmberBackend>(
    g: &Tensor<B, 2>,
    p: &Tensor<B, 2>,
    left: bool,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let b = if left {
        product(p.clone().transpose(), g.clone())
    } else {
        product(g.clone(), p.clone().transpose())
    };
    let gram = if left {
        product(b.clone(), b.clone().transpose())
    } else {
        product(b.clone().transpose(), b.clone())
    };
    (b, gram)
}

/// The rotation of [`rayleigh_ritz`] from the Gram matrix read to the host (`host`, `r × r`
/// row-major); `p` unchanged if it is not finite or its decomposition fails.
fn ritz_rotate<B: EmberBackend>(
    p: Tensor<B, 2>,
    b: Tensor<B, 2>,
    host: &[f32],
    left: bool,
) -> Tensor<B, 2> {
    let r = (host.len() as f64).sqrt() as usize;
    if r * r != host.len() || host.iter().any(|x| !x.is_finite()) {
        return p;
    }
    let sym = faer::Mat::<f64>::from_fn(r, r, |i, j| {
        0.5 * (host[i * r + j] + host[j * r + i]) as f64
    });
    let Some(u) = symmetric_eigenvectors(&sym) else {
        return p;
    };
    // eigenvalues come non-decreasing: column c of W is the eigenvector of the c-th largest
    let w: Vec<f32> = (0..r * r)
        .map(|k| u[(k / r, r - 1 - k % r)] as f32)
        .collect();
    let w = Tensor::<B, 2>::from_data(TensorData::new(w, [r, r]), &p.device()).cast(p.dtype());
    if left {
        let q = product(p, w);
        let s = column_signs(q.clone());
        q.mul(s)
    } else {
        let q = product(w.clone().transpose(), p);
        let s = column_signs(product(b, w));
        q.mul(s.transpose())
    }
}

/// The eigenvectors of the symmetric `sym` (lower triangle read), by non-decreasing eigenvalue;
/// `None` if the decomposition fails. Up to [`EIG_SEQUENTIAL_MAX`] rows on the calling thread
/// (`Par::Seq`): faer's default spreads the work over rayon's threads, which for the `r × r`
/// matrices of a refresh costs more than it saves — 128×128 took 1.9 ms with rayon against
/// 0.5 ms on one thread, 256×256 1.9 against 1.4, 512×512 33 against 13 (release build, two
/// cores; `docs/perf-notes.md`). `EMBER_EIG_PAR=global` keeps faer's global setting at every
/// size, for comparisons.
fn symmetric_eigenvectors(sym: &faer::Mat<f64>) -> Option<faer::Mat<f64>> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::evd;
    static GLOBAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let global =
        *GLOBAL.get_or_init(|| matches!(std::env::var("EMBER_EIG_PAR").as_deref(), Ok("global")));
    let n = sym.nrows();
    let par = if global || n > EIG_SEQUENTIAL_MAX {
        faer::get_global_parallelism()
    } else {
        faer::Par::Seq
    };
    let mut u = faer::Mat::<f64>::zeros(n, n);
    let mut s = faer::diag::Diag::<f64>::zeros(n);
    let scratch = evd::self_adjoint_evd_scratch::<f64>(
        n,
        evd::ComputeEigenvectors::Yes,
        par,
        Default::default(),
    );
    evd::self_adjoint_evd(
        sym.as_ref(),
        s.as_mut(),
        Some(u.as_mut()),
        par,
        MemStack::new(&mut MemBuffer::new(scratch)),
        Default::default(),
    )
    .ok()?;
    Some(u)
}

/// The largest `r × r` eigendecomposition a refresh runs on one thread ([`symmetric_eigenvectors`]).
pub const EIG_SEQUENTIAL_MAX: usize = 512;

/// `[1, cols]`: ±1 per column of `x`, the sign of its entry of largest magnitude (+1 for a zero
/// column). On ties the device's `argmax` picks the entry.
fn column_signs<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let index = x.clone().abs().argmax(0);
    x.gather(0, index)
        .greater_equal_elem(0.0)
        .float()
        .mul_scalar(2.0)
        .sub_scalar(1.0)
}

/// The top singular vector of `g` inside the subspace of `p` (left: `m × r` columns, its left
/// singular vector, `m` entries; right: `r × n` rows, its right singular vector, `n` entries), by
/// `iters` power iterations on the small `r × r` Gram matrix of `G` projected onto `P`; the sign
/// is fixed so that its entry of largest magnitude is positive. Read to the host (Q-GaLore's
/// lazy rule compares consecutive first vectors).
pub fn top_vector<B: Backend>(
    g: &Tensor<B, 2>,
    p: &Tensor<B, 2>,
    left: bool,
    iters: usize,
) -> Vec<f32> {
    // right: M = G·Pᵀ (m×r), the top right singular vector of M is w (r), the vector Pᵀ·w;
    // left: M = Pᵀ·G (r×n), its top left singular vector w (r), the vector P·w
    let gram = if left {
        let m = p.clone().transpose().matmul(g.clone());
        m.clone().matmul(m.transpose())
    } else {
        let m = g.clone().matmul(p.clone().transpose());
        m.clone().transpose().matmul(m)
    };
    let r = gram.dims()[0];
    let device = g.device();
    let mut w = Tensor::<B, 2>::ones([r, 1], &device);
    for _ in 0..iters.max(1) {
        let next = gram.clone().matmul(w);
        let norm = fixed_order_sum(next.clone().powi_scalar(2))
            .sqrt()
            .add_scalar(1e-30);
        w = next.div(norm.unsqueeze());
    }
    let v = if left {
        p.clone().matmul(w)
    } else {
        p.clone().transpose().matmul(w)
    };
    let mut v: Vec<f32> = v.into_data().convert::<f32>().to_vec().unwrap_or_default();
    let flip = v
        .iter()
        .copied()
        .fold(0f32, |a, x| if x.abs() > a.abs() { x } else { a })
        < 0.0;
    if flip {
        v.iter_mut().for_each(|x| *x = -*x);
    }
    v
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

    /// The fast schedule (8 quintic + 5 cubic steps) orthonormalizes a matrix whose singular
    /// values span 1 … 3·10⁻⁵ and spans the same subspace as 60 plain cubic steps.
    #[test]
    fn fast_schedule_orthonormalizes_ill_conditioned_columns() {
        let x = decaying(96, 16, 0.5, 3); // σᵢ = 0.5^i, i < 16, plus noise 1e-4
        let plain = orthonormalize(x.clone(), 60);
        let fast = orthonormalize_fast(x);
        let off = fast
            .clone()
            .transpose()
            .matmul(fast.clone())
            .sub(Tensor::eye(16, &Default::default()))
            .abs()
            .max()
            .into_scalar();
        assert!(off < 1e-4, "fast schedule: max |XᵀX − I| = {off}");
        let span = |p: Tensor<B, 2>| p.clone().matmul(p.transpose());
        let diff = span(fast).sub(span(plain)).abs().max().into_scalar();
        assert!(diff < 1e-3, "fast and plain spans differ by {diff}");
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
            let p = subspace_iteration(&g, start, left, 4);
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
            let p2 = subspace_iteration(&g2, warm, left, 1);
            let ratio = energy(&g2, &p2, left) / energy(&g2, &exact2, left);
            assert!(
                ratio >= 0.99,
                "{m}x{n} r{r} left={left}: warm start captures {ratio}"
            );
        }
    }

    /// After Rayleigh–Ritz the device projector is the exact SVD's projector, vector for vector
    /// (order and sign included), where its subspace is exact: both sides, from a cold start.
    #[test]
    fn rayleigh_ritz_gives_the_exact_singular_vectors() {
        for (m, n, left) in [(48, 96, true), (96, 40, false)] {
            let r = 6;
            let g = decaying(m, n, 0.6, 5);
            let data = g.clone().into_data();
            let svd = truncated_svd(data.as_slice::<f32>().unwrap(), m, n, r).unwrap();
            let (exact, shape) = if left {
                (svd.u, [m, r])
            } else {
                (svd.vt, [r, n])
            };
            let dim = if left { m } else { n };
            let random = |stream: u64| {
                let mut rng = SplitMix64::new(9, &[stream]);
                let v: Vec<f32> = (0..dim * r).map(|_| rng.normal() as f32).collect();
                Tensor::<B, 2>::from_data(TensorData::new(v, [dim, r]), &Default::default())
            };
            let p = fit(&g, None, random, left, 6);
            assert_eq!(p.dims(), shape);
            let max_diff = |p: Tensor<B, 2>| {
                let p: Vec<f32> = p.into_data().to_vec().unwrap();
                p.iter()
                    .zip(&exact)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max)
            };
            let diff = max_diff(p);
            assert!(
                diff < 1e-3,
                "{m}x{n} left={left}: max |P − P_exact| = {diff}"
            );
            // without the rotation the frame spans the same subspace in other coordinates
            let off = max_diff(subspace_iteration(&g, random(0), left, 8));
            assert!(off > 1e-2, "premise: the bare frame is rotated ({off})");
        }
    }

    /// A zero gradient, then a rank-deficient one, must not leave `P` collapsed: every refresh
    /// returns an orthonormal frame, and the warm start from it captures a later full-rank
    /// gradient's top-r energy (≥ 99% of the exact SVD's).
    #[test]
    fn reseeds_after_a_zero_or_rank_deficient_gradient() {
        let (m, n, r) = (40, 72, 6);
        let device = Default::default();
        let gaussian = |stream: u64| {
            let mut rng = SplitMix64::new(11, &[stream]);
            let v: Vec<f32> = (0..n * r).map(|_| rng.normal() as f32).collect();
            Tensor::<B, 2>::from_data(TensorData::new(v, [n, r]), &device)
        };
        let orthonormal = |p: &Tensor<B, 2>| {
            p.clone()
                .matmul(p.clone().transpose())
                .sub(Tensor::eye(r, &device))
                .abs()
                .max()
                .into_scalar()
        };
        // zero gradient, cold: an orthonormal frame anyway (subspace iteration alone gives P = 0)
        let zero = Tensor::<B, 2>::zeros([m, n], &device);
        let bare = subspace_iteration(&zero, gaussian(0), false, 3);
        assert!(
            bare.clone().abs().max().into_scalar() < 1e-6,
            "premise: P = 0"
        );
        let p = fit(&zero, None, gaussian, false, 1);
        assert!(orthonormal(&p) < 1e-3, "zero gradient: {}", orthonormal(&p));
        // rank 2 < r, warm from that frame: still a full frame, containing the rank-2 range
        let low = decaying(m, 2, 0.5, 3).matmul(decaying(2, n, 0.5, 4));
        let p = fit(&low, Some(p.transpose()), gaussian, false, 1);
        assert!(
            orthonormal(&p) < 1e-3,
            "rank-deficient: {}",
            orthonormal(&p)
        );
        let kept = energy(&low, &p, false) / low.clone().powi_scalar(2).sum().into_scalar() as f64;
        assert!(kept > 0.999, "the rank-2 range is in P: {kept}");
        // a collapsed warm start (P with a zero row) is re-seeded: full-rank gradient, top-r energy
        let g = decaying(m, n, 0.8, 5);
        let collapsed = p.clone().slice([0..r - 1, 0..n]);
        let collapsed = Tensor::cat(vec![collapsed, Tensor::zeros([1, n], &device)], 0);
        let p = fit(&g, Some(collapsed.transpose()), gaussian, false, 1);
        assert!(orthonormal(&p) < 1e-3);
        let data = g.clone().into_data();
        let svd = truncated_svd(data.as_slice::<f32>().unwrap(), m, n, r).unwrap();
        let exact = Tensor::<B, 2>::from_data(TensorData::new(svd.vt, [r, n]), &device);
        let ratio = energy(&g, &p, false) / energy(&g, &exact, false);
        assert!(ratio >= 0.99, "after re-seeding: {ratio}");
    }
}
