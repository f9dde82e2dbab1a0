//! The counter-based generator behind stochastic rounding.
//!
//! The uniform of element `i` under key `(k₀, k₁)` is `u = ⌊h/2⁸⌋·2⁻²⁴` with
//! `h = mix(mix(i ⊕ k₀) ⊕ k₁)`, `mix` a 32-bit integer hash (xor-shift–multiply, two rounds;
//! constants of Wellons' hash-prospector "lowbias32"). Only 32-bit integer arithmetic is used, so
//! the CubeCL kernel (WGSL has no 64-bit integers) and the host produce the same bits: a step
//! is reproducible on every backend, needs no state, and draws no memory for its uniforms.

use crate::RoundingKey;

/// The 32-bit mixing function.
pub fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The uniform in `[0, 1)` of element `i` (exactly representable in f32).
pub fn uniform(key: RoundingKey, i: u32) -> f32 {
    let h = mix(mix(i ^ key.0[0]) ^ key.0[1]);
    (h >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
}

/// The first `len` uniforms of `key`.
pub fn uniforms(key: RoundingKey, len: usize) -> Vec<f32> {
    (0..len as u32).map(|i| uniform(key, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniforms_are_uniform_and_keyed() {
        let a = uniforms(RoundingKey([1, 2]), 100_000);
        let b = uniforms(RoundingKey([1, 3]), 100_000);
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        assert!(a.iter().all(|&x| (0.0..1.0).contains(&x)));
        // ten equal bins, each within 5% of its expected count
        let mut bins = [0usize; 10];
        for &x in &a {
            bins[(x * 10.0) as usize] += 1;
        }
        assert!(
            bins.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{bins:?}"
        );
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same < 50, "another key gives other uniforms ({same} equal)");
        assert_eq!(a, uniforms(RoundingKey([1, 2]), 100_000));
    }
}
