//! The orthonormal DCT-II basis, shared by every parameter of the same size.
//!
//! `Q[i, j] = √(2/s)·cos(π·i·(2j+1)/(2s))`, row 0 multiplied by `√½` (the official
//! `dct3_matrix`). `Q` is orthogonal, so its columns are an orthonormal basis of `ℝˢ`.

use std::sync::{Arc, Mutex};

use burn::prelude::*;
use ember_kernels::DynamicMaps;
use hashbrown::HashMap;

/// Values of the `s × s` basis, row-major, computed in f64 and rounded to f32.
pub fn dct_basis_values(s: usize) -> Vec<f32> {
    let mut q = vec![0f32; s * s];
    let sf = s as f64;
    for i in 0..s {
        let norm = if i == 0 {
            (1.0 / sf).sqrt()
        } else {
            (2.0 / sf).sqrt()
        };
        for j in 0..s {
            let angle = std::f64::consts::PI * (i as f64) * (2.0 * j as f64 + 1.0) / (2.0 * sf);
            q[i * s + j] = (norm * angle.cos()) as f32;
        }
    }
    q
}

/// One basis per distinct size, built on first use and shared by every parameter of that size.
///
/// Cloning shares the cache (an `Arc`), so clones of an optimizer hold the bases once.
///
/// It also holds the optimizer's other shared constants: the dynamic maps of 8-bit state (one
/// pair per device, [`dynamic_maps`](Self::dynamic_maps)).
#[derive(Clone, Default)]
pub struct SharedBases<B: Backend> {
    bases: Arc<Mutex<HashMap<usize, Tensor<B, 2>>>>,
    maps: Arc<Mutex<Vec<DynamicMaps<B>>>>,
}

impl<B: Backend> std::fmt::Debug for SharedBases<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: Vec<usize> = self.bases.lock().unwrap().keys().copied().collect();
        write!(f, "SharedBases{sizes:?}")
    }
}

impl<B: Backend> SharedBases<B> {
    /// An empty cache.
    pub fn new() -> Self {
        Self {
            bases: Arc::new(Mutex::new(HashMap::new())),
            maps: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The `s × s` basis on `device`.
    pub fn get(&self, s: usize, device: &B::Device) -> Tensor<B, 2> {
        let mut map = self.bases.lock().unwrap();
        let q = map
            .entry(s)
            .or_insert_with(|| {
                Tensor::from_data(TensorData::new(dct_basis_values(s), [s, s]), device)
            })
            .clone();
        if &q.device() != device {
            q.to_device(device)
        } else {
            q
        }
    }

    /// The dynamic maps of 8-bit state on `device` (uploaded on first use).
    pub fn dynamic_maps(&self, device: &B::Device) -> DynamicMaps<B> {
        let mut maps = self.maps.lock().unwrap();
        if let Some(m) = maps.iter().find(|m| &m.signed.device() == device) {
            return m.clone();
        }
        let m = DynamicMaps::new(device);
        maps.push(m.clone());
        m
    }

    /// Bytes held by all cached bases (each counted once) and the 8-bit maps of each device.
    pub fn bytes(&self) -> usize {
        self.bases
            .lock()
            .unwrap()
            .values()
            .map(crate::state::tensor_bytes)
            .sum::<usize>()
            + DynamicMaps::<B>::BYTES * self.maps.lock().unwrap().len()
    }

    /// The sizes held.
    pub fn sizes(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.bases.lock().unwrap().keys().copied().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basis_is_orthonormal_for_odd_sizes_and_size_one() {
        for s in [1usize, 2, 3, 7, 12] {
            let q = dct_basis_values(s);
            for a in 0..s {
                for b in 0..s {
                    let dot: f64 = (0..s)
                        .map(|i| q[i * s + a] as f64 * q[i * s + b] as f64)
                        .sum();
                    let want = if a == b { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-5, "s={s} a={a} b={b} dot={dot}");
                }
            }
        }
        assert_eq!(dct_basis_values(1), vec![1.0]);
    }
}

/// Whether `B` computes on the host CPU (flex, ndarray, burn's MLIR `cpu`), so that the host FFT
/// scoring path is the fast one. Decided by `Backend::name`.
pub fn is_host_backend<B: Backend>(device: &B::Device) -> bool {
    let name = B::name(device).to_lowercase();
    ["flex", "ndarray", "cpu"].iter().any(|k| name.contains(k))
}

/// DCT alignment scores computed on the host with FFTs instead of a dense matmul.
///
/// For the right side, `scores[j] = Σᵢ |(G·Q)[i, j]|`; each row `g` of `G` needs
/// `(g·Q)[j] = Σₖ cₖ·g[k]·cos(πk(2j+1)/(2s))` — a DCT-III of `g` — which is
/// `Re(IDFT₂ₛ(z))[j]` with `z[k] = cₖ·g[k]·e^{iπk/(2s)}` zero-padded to `2s`: `O(m·s·log s)`
/// instead of `O(m·s²)`. The left side transforms the columns of `G` the same way.
pub fn fft_scores(g: &[f32], m: usize, n: usize, left: bool) -> Vec<f32> {
    use rustfft::{num_complex::Complex, FftPlanner};
    let (s, count) = if left { (m, n) } else { (n, m) };
    let len = 2 * s;
    let fft = FftPlanner::<f32>::new().plan_fft_inverse(len);
    let twiddle: Vec<Complex<f32>> = (0..s)
        .map(|k| {
            let c = if k == 0 {
                (1.0 / s as f64).sqrt()
            } else {
                (2.0 / s as f64).sqrt()
            };
            let a = std::f64::consts::PI * k as f64 / (2.0 * s as f64);
            Complex::new((c * a.cos()) as f32, (c * a.sin()) as f32)
        })
        .collect();
    let mut scores = vec![0f64; s];
    // transform a block of vectors at a time to bound memory
    let block = count.clamp(1, 64);
    let mut buf = vec![Complex::new(0f32, 0f32); block * len];
    let mut scratch = vec![Complex::new(0f32, 0f32); fft.get_inplace_scratch_len()];
    let mut start = 0;
    while start < count {
        let b = block.min(count - start);
        for v in 0..b {
            let dst = &mut buf[v * len..(v + 1) * len];
            let idx = start + v;
            for k in 0..s {
                let x = if left { g[k * n + idx] } else { g[idx * n + k] };
                dst[k] = twiddle[k] * x;
            }
            for z in &mut dst[s..] {
                *z = Complex::new(0.0, 0.0);
            }
        }
        fft.process_with_scratch(&mut buf[..b * len], &mut scratch);
        for v in 0..b {
            for (j, sc) in scores.iter_mut().enumerate() {
                *sc += buf[v * len + j].re.abs() as f64;
            }
        }
        start += b;
    }
    scores.into_iter().map(|x| x as f32).collect()
}

/// Indices of the `r` largest scores, in descending score order (ties: lower index first).
pub fn top_r(scores: &[f32], r: usize) -> Vec<i32> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        scores[b]
            .partial_cmp(&scores[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    idx.into_iter().take(r).map(|i| i as i32).collect()
}

#[cfg(test)]
mod fft_tests {
    use super::*;

    fn matmul_scores(g: &[f32], m: usize, n: usize, left: bool) -> Vec<f32> {
        let s = if left { m } else { n };
        let q = dct_basis_values(s);
        let mut scores = vec![0f64; s];
        if left {
            for j in 0..s {
                for c in 0..n {
                    let v: f64 = (0..m)
                        .map(|k| q[k * s + j] as f64 * g[k * n + c] as f64)
                        .sum();
                    scores[j] += v.abs();
                }
            }
        } else {
            for i in 0..m {
                for j in 0..s {
                    let v: f64 = (0..n)
                        .map(|k| g[i * n + k] as f64 * q[k * s + j] as f64)
                        .sum();
                    scores[j] += v.abs();
                }
            }
        }
        scores.into_iter().map(|x| x as f32).collect()
    }

    #[test]
    fn fft_scores_equal_the_dense_product_for_any_size() {
        for (m, n) in [(1, 1), (5, 1), (1, 5), (7, 3), (12, 40), (40, 24), (33, 64)] {
            let g: Vec<f32> = (0..m * n)
                .map(|i| ((i * 7919 % 101) as f32 / 50.0) - 1.0)
                .collect();
            for left in [false, true] {
                let a = fft_scores(&g, m, n, left);
                let b = matmul_scores(&g, m, n, left);
                for (x, y) in a.iter().zip(&b) {
                    assert!(
                        (x - y).abs() <= 1e-4 * y.abs().max(1.0),
                        "{m}x{n} left={left}: {x} vs {y}"
                    );
                }
            }
        }
    }
}
