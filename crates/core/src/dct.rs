//! The orthonormal DCT-II basis, shared by every parameter of the same size.
//!
//! `Q[i, j] = √(2/s)·cos(π·i·(2j+1)/(2s))`, row 0 multiplied by `√½` (the official
//! `dct3_matrix`). `Q` is orthogonal, so its columns are an orthonormal basis of `ℝˢ`.

use std::sync::{Arc, Mutex};

use burn::prelude::*;
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
#[derive(Clone, Default)]
pub struct SharedBases<B: Backend> {
    bases: Arc<Mutex<HashMap<usize, Tensor<B, 2>>>>,
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

    /// Bytes held by all cached bases (each counted once).
    pub fn bytes(&self) -> usize {
        self.bases
            .lock()
            .unwrap()
            .values()
            .map(crate::projector::tensor_bytes)
            .sum()
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
