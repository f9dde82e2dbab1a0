//! Asymmetric min/max quantization (Q-GaLore's scheme) and bit packing, on the host (the
//! projector). The weights' INT8 quantization with stochastic rounding is
//! [`EmberBackend::quantize_int8`](ember_kernels::EmberBackend::quantize_int8).
//!
//! Per group of `g` consecutive elements:
//! `scale = max(max − min, 1e-5) / (2ᵇ − 1)`, `zero = clamp(−round(min/scale), 0, 2ᵇ − 1)`,
//! `q = clamp(round(x/scale) + zero, 0, 2ᵇ − 1)`, and back `x̂ = scale·(q − zero)`; `round` is
//! round-half-to-even, as torch's. Codes are packed `32/b` to an `i32` word (8 INT4 or 4 INT8
//! codes a word), so a quantized tensor really takes `b/32` of its f32 size plus the scales.

use burn::prelude::*;

/// Host-side quantization of `values` in groups of `group` elements to `bits` bits.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    /// Packed codes, `32 / bits` per word, little end first.
    pub packed: Vec<i32>,
    /// One scale per group.
    pub scales: Vec<f32>,
    /// One zero point per group.
    pub zeros: Vec<f32>,
    /// Number of codes.
    pub len: usize,
}

/// Per-group `(scale, zero)` of the official scheme.
pub fn scale_zero(group: &[f32], bits: u32) -> (f32, f32) {
    let max_int = ((1u32 << bits) - 1) as f32;
    let (lo, hi) = group
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let scale = (hi - lo).max(1e-5) / max_int;
    let zero = (-(lo / scale).round_ties_even()).clamp(0.0, max_int);
    (scale, zero)
}

/// Packs codes (each `< 2^bits`) into `i32` words.
pub fn pack(codes: &[u32], bits: u32) -> Vec<i32> {
    let per = (32 / bits) as usize;
    codes
        .chunks(per)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u32, |w, (k, &q)| w | (q << (bits as usize * k))) as i32
        })
        .collect()
}

/// Quantizes with round-to-nearest-even (the projector).
pub fn quantize(values: &[f32], group: usize, bits: u32) -> Quantized {
    let max_int = ((1u32 << bits) - 1) as f32;
    let mut codes = Vec::with_capacity(values.len());
    let (mut scales, mut zeros) = (vec![], vec![]);
    for g in values.chunks(group) {
        let (scale, zero) = scale_zero(g, bits);
        codes.extend(
            g.iter()
                .map(|&x| ((x / scale).round_ties_even() + zero).clamp(0.0, max_int) as u32),
        );
        scales.push(scale);
        zeros.push(zero);
    }
    Quantized {
        packed: pack(&codes, bits),
        scales,
        zeros,
        len: values.len(),
    }
}

impl Quantized {
    /// Dequantizes on the host.
    pub fn dequantize(&self, group: usize, bits: u32) -> Vec<f32> {
        let per = (32 / bits) as usize;
        let mask = (1u32 << bits) - 1;
        (0..self.len)
            .map(|i| {
                let q = ((self.packed[i / per] as u32) >> (bits as usize * (i % per))) & mask;
                self.scales[i / group] * (q as f32 - self.zeros[i / group])
            })
            .collect()
    }
}

/// Dequantizes packed codes on the device into a `[rows, cols]` tensor (the portable path of
/// [`EmberBackend::dequantize_packed`](ember_kernels::EmberBackend::dequantize_packed)).
#[allow(clippy::too_many_arguments)]
pub fn dequantize_device<B: Backend>(
    packed: &Tensor<B, 1, Int>,
    scales: &Tensor<B, 1>,
    zeros: &Tensor<B, 1>,
    bits: u32,
    group: usize,
    rows: usize,
    cols: usize,
) -> Tensor<B, 2> {
    ember_kernels::portable::dequantize_packed(
        packed.clone(),
        scales.clone(),
        zeros.clone(),
        bits,
        group,
        rows,
        cols,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips_and_matches_the_formula() {
        let v: Vec<f32> = (0..48)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        for bits in [4u32, 8] {
            let q = quantize(&v, 16, bits);
            assert_eq!(q.packed.len(), 48 * bits as usize / 32);
            let back = q.dequantize(16, bits);
            for (g, chunk) in v.chunks(16).enumerate() {
                let step = q.scales[g];
                for (k, &x) in chunk.iter().enumerate() {
                    assert!(
                        (back[g * 16 + k] - x).abs() <= 0.5 * step + 1e-6,
                        "bits {bits}"
                    );
                }
            }
            // device dequantization equals the host one
            type B = burn::backend::Flex;
            let dev = Default::default();
            let packed = Tensor::<B, 1, Int>::from_data(
                TensorData::new(q.packed.clone(), [q.packed.len()]),
                &dev,
            );
            let s = Tensor::<B, 1>::from_data(TensorData::new(q.scales.clone(), [3]), &dev);
            let z = Tensor::<B, 1>::from_data(TensorData::new(q.zeros.clone(), [3]), &dev);
            let d: Vec<f32> = dequantize_device(&packed, &s, &z, bits, 16, 6, 8)
                .into_data()
                .to_vec()
                .unwrap();
            assert_eq!(d, back);
        }
    }
}
