//! Exact truncated SVD on the host (`faer`, computed in f64, factors returned in f32), with the
//! sign convention of the reference cases.
//!
//! `torch.linalg.svd` leaves the sign of each singular pair to LAPACK. GaLore keeps its Adam moments
//! across a projector refresh, so that sign changes the numbers; Ember fixes it: **each pair
//! `(uᵢ, vᵢ)` is flipped so that the entry of largest `|value|` of `uᵢ` is positive** (on ties the
//! first such entry wins).

use crate::error::EmberError;

/// The leading `r` singular triplets of a row-major `m × n` matrix.
#[derive(Debug, Clone)]
pub struct TruncatedSvd {
    /// `m × r`, row-major: the left singular vectors as columns.
    pub u: Vec<f32>,
    /// The `r` singular values, non-increasing.
    pub s: Vec<f32>,
    /// `r × n`, row-major: the right singular vectors as rows (`Vhᵣ`).
    pub vt: Vec<f32>,
    /// Rows of the input.
    pub m: usize,
    /// Columns of the input.
    pub n: usize,
    /// Number of triplets kept.
    pub r: usize,
}

/// Computes the top-`r` SVD of the row-major `m × n` matrix `a` (in f64; f32 factors).
///
/// Errors when `r` is 0 or larger than `min(m, n)`, when the data length does not match, or when
/// the decomposition does not converge (non-finite input).
pub fn truncated_svd(a: &[f32], m: usize, n: usize, r: usize) -> Result<TruncatedSvd, EmberError> {
    if a.len() != m * n {
        return Err(EmberError::Internal(format!(
            "svd: {} values for a {m}x{n} matrix",
            a.len()
        )));
    }
    if r == 0 || r > m.min(n) {
        return Err(EmberError::Internal(format!(
            "svd: rank {r} outside 1..={} for a {m}x{n} matrix",
            m.min(n)
        )));
    }
    // computed in f64 and rounded: the f32 factors are then orthonormal to f32 rounding
    // (max |PᵀP − I| ≈ 1e-7, against ≈ 1e-5 for faer's f32 SVD at LLaMA layer sizes)
    let mat = faer::Mat::<f64>::from_fn(m, n, |i, j| a[i * n + j] as f64);
    let svd = mat
        .thin_svd()
        .map_err(|e| EmberError::Internal(format!("svd did not converge: {e:?}")))?;
    let (uu, ss, vv) = (svd.U(), svd.S().column_vector(), svd.V());
    let k = m.min(n);
    // faer returns singular values in non-increasing order; sort defensively (stable).
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| {
        ss[b]
            .partial_cmp(&ss[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut u = vec![0f32; m * r];
    let mut vt = vec![0f32; r * n];
    let mut s = vec![0f32; r];
    for (c, &src) in order.iter().take(r).enumerate() {
        // sign: the entry of largest |value| of u_c must be positive
        let mut best = 0usize;
        let mut best_abs = -1f64;
        for i in 0..m {
            let v = uu[(i, src)].abs();
            if v > best_abs {
                best_abs = v;
                best = i;
            }
        }
        let sign = if uu[(best, src)] < 0.0 { -1.0 } else { 1.0 };
        for i in 0..m {
            u[i * r + c] = (sign * uu[(i, src)]) as f32;
        }
        for j in 0..n {
            vt[c * n + j] = (sign * vv[(j, src)]) as f32;
        }
        s[c] = ss[src] as f32;
    }
    Ok(TruncatedSvd { u, s, vt, m, n, r })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconstructs_a_rank_two_matrix_and_fixes_signs() {
        // A = 3 u1 v1ᵀ - 2 u2 v2ᵀ with orthonormal factors whose largest entries are unique.
        let (m, n) = (4, 3);
        let u1 = [0.8f32, 0.2, 0.4, 0.4];
        let v1 = [1.0f32, 0.0, 0.0];
        let u2 = [0.2f32, -0.8, 0.4, -0.4];
        let v2 = [0.0f32, 0.6, 0.8];
        let mut a = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                a[i * n + j] = 3.0 * u1[i] * v1[j] - 2.0 * u2[i] * v2[j];
            }
        }
        let svd = truncated_svd(&a, m, n, 2).unwrap();
        assert!((svd.s[0] - 3.0).abs() < 1e-5 && (svd.s[1] - 2.0).abs() < 1e-5);
        for c in 0..2 {
            let col: Vec<f32> = (0..m).map(|i| svd.u[i * 2 + c]).collect();
            let imax = (0..m)
                .max_by(|&a, &b| col[a].abs().partial_cmp(&col[b].abs()).unwrap())
                .unwrap();
            assert!(col[imax] > 0.0, "sign convention violated: {col:?}");
        }
        for i in 0..m {
            for j in 0..n {
                let rec: f32 = (0..2)
                    .map(|c| svd.u[i * 2 + c] * svd.s[c] * svd.vt[c * n + j])
                    .sum();
                assert!((rec - a[i * n + j]).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn rejects_bad_rank() {
        assert!(truncated_svd(&[1.0; 6], 2, 3, 3).is_err());
        assert!(truncated_svd(&[1.0; 6], 2, 3, 0).is_err());
    }
}
