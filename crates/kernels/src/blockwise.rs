//! Blockwise 8-bit optimizer state: bitsandbytes' dynamic quantization.
//!
//! A moment tensor (flattened row-major, `len` elements) is cut into blocks of `block` elements
//! (default 256). Each block stores one f32 `absmax = max |x|` and one 8-bit code per element: the
//! index of the value of a 256-entry **dynamic map** nearest to `x / absmax`. Dequantization is
//! `x̂ = map[code]·absmax`. The first moment uses the **signed** map, the second (non-negative)
//! moment the **unsigned** one — bitsandbytes' `create_dynamic_map(signed, 7, 8)`, the code book
//! of its 8-bit Adam (and of galore-torch's `GaLoreAdamW8bit`):
//!
//! ```text
//! for i in 0..7:  n = 2^i + 1 (signed) or 2^(i+1) + 1 (unsigned)
//!                 b = linspace(0.1, 1, n) in f32,  means = (b[k] + b[k+1]) / 2
//!                 values += 10^(i−6)·means  (and −10^(i−6)·means when signed)
//! values += [0, 1];  sort
//! ```
//!
//! i.e. a sign, a run of zeros giving the decimal exponent `10^(i−6)` and a linear fraction
//! in the bits left: large relative precision near 0, 2⁻⁷ near 1.
//!
//! **Layout**: codes are packed four to a 32-bit word (lowest byte first) and padded to whole
//! blocks: `⌈len/block⌉·block` bytes of codes plus `4·⌈len/block⌉` bytes of absmax.
//!
//! **Rounding**: `code = argmin |map[k] − x/absmax|` (binary search for the last `map[k] ≤ x`,
//! then the nearer of `k` and `k+1`; ties go to `k`). A block of zeros has `absmax = 0` and
//! dequantizes to zeros. Round-trip error of an element: at most half the gap between the two
//! map values around `x/absmax`, times `absmax` (tested). The signed map is bitsandbytes':
//! it holds `+1` but not `−1` (its minimum is `−0.99297`), so a block whose extreme is negative
//! stores that extreme as `−0.99297·absmax`.

use burn::prelude::*;
use burn::tensor::{ElementConversion, Int};

/// Elements per block by default (bitsandbytes' blockwise 8-bit optimizers).
pub const DEFAULT_BLOCK: usize = 256;

/// torch's CPU `linspace` in f32: `start + step·i` below the midpoint, `end − step·(n−1−i)` from
/// it, `step = (end − start)/(n − 1)`.
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// bitsandbytes' dynamic map (`create_dynamic_map(signed, max_exponent_bits = 7,
/// total_bits = 8)`), in f32 arithmetic as torch computes it; sorted ascending.
pub fn dynamic_map(signed: bool) -> [f32; 256] {
    // 10^(i−6) as Python computes it (a correctly rounded double), times an f32 tensor: the
    // scalar is rounded to f32 first
    const DECADES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let mut data = Vec::with_capacity(256);
    for (i, decade) in DECADES.iter().enumerate() {
        let n = if signed {
            (1 << i) + 1
        } else {
            (1 << (i + 1)) + 1
        };
        let b = linspace_f32(0.1, 1.0, n);
        let scale = *decade as f32;
        for k in 0..n - 1 {
            let mean = (b[k] + b[k + 1]) / 2.0;
            data.push(scale * mean);
            if signed {
                data.push(-scale * mean);
            }
        }
    }
    data.push(0.0);
    data.push(1.0);
    assert_eq!(data.len(), 256);
    data.sort_by(|a, b| a.partial_cmp(b).expect("finite map"));
    let mut out = [0f32; 256];
    out.copy_from_slice(&data);
    out
}

/// The code of `x` (already divided by the block's absmax): the index of the nearest map value.
pub fn nearest_code(map: &[f32; 256], x: f32) -> u8 {
    let mut lo = 0usize;
    for k in (0..8).rev() {
        let cand = lo + (1 << k);
        if cand <= 255 && map[cand] <= x {
            lo = cand;
        }
    }
    if lo < 255 && (map[lo + 1] - x) < (x - map[lo]) {
        (lo + 1) as u8
    } else {
        lo as u8
    }
}

/// `x / absmax`, with a block of zeros (absmax 0) mapping to 0.
pub fn normalize(x: f32, absmax: f32) -> f32 {
    x / absmax.max(f32::MIN_POSITIVE)
}

/// Host reference: quantizes `values` in blocks of `block`; returns one code per element and one
/// absmax per block.
pub fn quantize_host(values: &[f32], block: usize, signed: bool) -> (Vec<u8>, Vec<f32>) {
    let map = dynamic_map(signed);
    let mut codes = Vec::with_capacity(values.len());
    let mut absmax = Vec::new();
    for chunk in values.chunks(block) {
        let a = chunk.iter().fold(0f32, |m, x| m.max(x.abs()));
        absmax.push(a);
        codes.extend(chunk.iter().map(|&x| nearest_code(&map, normalize(x, a))));
    }
    (codes, absmax)
}

/// Host reference: `map[code]·absmax`.
pub fn dequantize_host(codes: &[u8], absmax: &[f32], block: usize, signed: bool) -> Vec<f32> {
    let map = dynamic_map(signed);
    codes
        .iter()
        .enumerate()
        .map(|(i, &c)| map[c as usize] * absmax[i / block])
        .collect()
}

/// One moment tensor in blockwise 8-bit form (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Blockwise8<B: Backend> {
    /// Codes, four per word, padded to whole blocks: `[blocks·block/4]`.
    pub codes: Tensor<B, 1, Int>,
    /// One absmax per block: `[blocks]`.
    pub absmax: Tensor<B, 1>,
    /// Elements represented.
    pub len: usize,
    /// Elements per block (a multiple of 4).
    pub block: usize,
}

impl<B: Backend> Blockwise8<B> {
    /// A tensor of `len` zeros.
    pub fn zeros(len: usize, block: usize, device: &B::Device) -> Self {
        let blocks = len.div_ceil(block);
        Self {
            codes: Tensor::zeros([blocks * block / 4], device),
            absmax: Tensor::zeros([blocks], device),
            len,
            block,
        }
    }

    /// Blocks.
    pub fn blocks(&self) -> usize {
        self.len.div_ceil(self.block)
    }

    /// Bytes held: one per element (padded to whole blocks) and four per block.
    pub fn bytes(&self) -> usize {
        Self::bytes_for(self.len, self.block)
    }

    /// Bytes of a blockwise 8-bit tensor of `len` elements in blocks of `block`.
    pub fn bytes_for(len: usize, block: usize) -> usize {
        let blocks = len.div_ceil(block);
        blocks * block + 4 * blocks
    }

    /// Moves the tensors to `device`.
    pub fn to_device(self, device: &B::Device) -> Self {
        Self {
            codes: self.codes.to_device(device),
            absmax: self.absmax.to_device(device),
            ..self
        }
    }

    /// The values `map[code]·absmax` as an f32 tensor of `shape` (`len` elements).
    pub fn dequantize(&self, map: &Tensor<B, 1>, shape: [usize; 2]) -> Tensor<B, 2> {
        let padded = self.blocks() * self.block;
        dequantize_blocks(self, map)
            .reshape([padded])
            .slice(0..self.len)
            .reshape(shape)
    }

    /// Quantizes `x` (any shape, flattened row-major) against `map`.
    pub fn quantize<const D: usize>(x: Tensor<B, D>, map: &Tensor<B, 1>, block: usize) -> Self {
        let len = x.shape().num_elements();
        let blocks = len.div_ceil(block);
        let flat = x.reshape([len]);
        let padded = if blocks * block > len {
            let pad = Tensor::zeros([blocks * block - len], &flat.device());
            Tensor::cat(vec![flat, pad], 0)
        } else {
            flat
        };
        let (codes, absmax) = quantize_blocks(padded.reshape([blocks, block]), map);
        Self {
            codes,
            absmax,
            len,
            block,
        }
    }
}

/// The dynamic maps on a device (uploaded once per optimizer and device).
#[derive(Debug, Clone)]
pub struct DynamicMaps<B: Backend> {
    /// Signed map (first moment).
    pub signed: Tensor<B, 1>,
    /// Unsigned map (second moment).
    pub unsigned: Tensor<B, 1>,
}

impl<B: Backend> DynamicMaps<B> {
    /// Both maps on `device`.
    pub fn new(device: &B::Device) -> Self {
        let t = |signed| {
            Tensor::from_data(TensorData::new(dynamic_map(signed).to_vec(), [256]), device)
        };
        Self {
            signed: t(true),
            unsigned: t(false),
        }
    }

    /// Bytes of both maps.
    pub const BYTES: usize = 2 * 256 * 4;
}

/// `[blocks, block]` values of a blockwise tensor (burn ops).
pub fn dequantize_blocks<B: Backend>(q: &Blockwise8<B>, map: &Tensor<B, 1>) -> Tensor<B, 2> {
    let blocks = q.blocks();
    let words = blocks * q.block / 4;
    let device = q.codes.device();
    let shifts =
        Tensor::<B, 1, Int>::from_data(TensorData::new(vec![0i32, 8, 16, 24], [4]), &device)
            .reshape([1, 4])
            .expand([words, 4]);
    let idx = q
        .codes
        .clone()
        .reshape([words, 1])
        .expand([words, 4])
        .bitwise_right_shift(shifts)
        .bitwise_and_scalar(0xffi32.elem())
        .reshape([words * 4]);
    map.clone()
        .select(0, idx)
        .reshape([blocks, q.block])
        .mul(q.absmax.clone().reshape([blocks, 1]))
}

/// Quantizes `[blocks, block]` values: `(codes [blocks·block/4], absmax [blocks])` (burn ops).
pub fn quantize_blocks<B: Backend>(
    x: Tensor<B, 2>,
    map: &Tensor<B, 1>,
) -> (Tensor<B, 1, Int>, Tensor<B, 1>) {
    let [blocks, block] = x.dims();
    let n = blocks * block;
    let device = x.device();
    let absmax = x.clone().abs().max_dim(1); // [blocks, 1]
    let y = x
        .div(absmax.clone().clamp_min(f32::MIN_POSITIVE as f64))
        .reshape([n]);
    // binary search for the last map value ≤ y
    let mut lo = Tensor::<B, 1, Int>::zeros([n], &device);
    for k in (0..8).rev() {
        let cand = lo.clone().add_scalar(1i32 << k);
        let value = map.clone().select(0, cand.clone().clamp_max(255));
        let take = value
            .lower_equal(y.clone())
            .bool_and(cand.clone().lower_equal_elem(255));
        lo = lo.mask_where(take, cand);
    }
    let hi = lo.clone().add_scalar(1).clamp_max(255);
    let below = map.clone().select(0, lo.clone());
    let above = map.clone().select(0, hi.clone());
    let up = above
        .sub(y.clone())
        .lower(y.sub(below))
        .bool_and(lo.clone().lower_elem(255));
    let code = lo.mask_where(up, hi).reshape([n / 4, 4]);
    let shifts =
        Tensor::<B, 1, Int>::from_data(TensorData::new(vec![0i32, 8, 16, 24], [4]), &device)
            .reshape([1, 4])
            .expand([n / 4, 4]);
    // the four codes occupy disjoint bits, so the sum is their bitwise or
    let codes = code.bitwise_left_shift(shifts).sum_dim(1).reshape([n / 4]);
    (codes, absmax.reshape([blocks]))
}

#[cfg(test)]
mod tests {
    use super::*;

    // bitsandbytes' maps, value for value (f32 bits), as printed by
    // `scripts/bnb_dynamic_map.py` from the published construction
    const SIGNED: [u32; 256] = [
        0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a,
        0xbf650000, 0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666,
        0xbf4bcccd, 0xbf483333, 0xbf44999a, 0xbf410000, 0xbf3d6667, 0xbf39cccd, 0xbf363333,
        0xbf32999a, 0xbf2f0000, 0xbf2b6667, 0xbf27cccd, 0xbf243333, 0xbf20999a, 0xbf1d0000,
        0xbf196667, 0xbf15cccd, 0xbf123333, 0xbf0e999a, 0xbf0b0000, 0xbf076666, 0xbf03cccd,
        0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee39999, 0xbedc6666, 0xbed53332,
        0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13332, 0xbeaa0000, 0xbea2cccc,
        0xbe9b999a, 0xbe946666, 0xbe8d3333, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
        0xbe526666, 0xbe440000, 0xbe359999, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000,
        0xbddb3334, 0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8,
        0xbda75c2a, 0xbda1999a, 0xbd9bd70b, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd,
        0xbd7e147b, 0xbd728f5d, 0xbd670a3d, 0xbd5b8520, 0xbd500000, 0xbd447ae1, 0xbd38f5c2,
        0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae147, 0xbcfeb852, 0xbce7ae13, 0xbcd0a3d7,
        0xbcb9999a, 0xbca28f5c, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148, 0xbc1f3b64, 0xbc160418,
        0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3c, 0xbbbd70a4, 0xbbab020d,
        0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
        0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f00, 0xb9c7e282, 0xb98ce705,
        0xb923d70b, 0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94,
        0xb513a3b7, 0x00000000, 0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034,
        0x388aefb3, 0x38ba1f4b, 0x3923d70b, 0x398ce705, 0x39c7e282, 0x3a016f00, 0x3a1eecc1,
        0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d, 0x3af1a9fc, 0x3b1db22d, 0x3b428f5c,
        0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4, 0x3bcfdf3c, 0x3be24dd3,
        0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148, 0x3c68f5c3,
        0x3c8b851f, 0x3ca28f5c, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae13, 0x3cfeb852, 0x3d0ae147,
        0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c2, 0x3d447ae1, 0x3d500000, 0x3d5b8520,
        0x3d670a3d, 0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b,
        0x3d9bd70b, 0x3da1999a, 0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667,
        0x3dc428f7, 0x3dc9eb85, 0x3ddb3334, 0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333,
        0x3e359999, 0x3e440000, 0x3e526666, 0x3e60cccd, 0x3e6f3333, 0x3e7d9999, 0x3e860000,
        0x3e8d3333, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000, 0x3eb13332, 0x3eb86666,
        0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53332, 0x3edc6666, 0x3ee39999, 0x3eeacccc,
        0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccd, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
        0x3f123333, 0x3f15cccd, 0x3f196667, 0x3f1d0000, 0x3f20999a, 0x3f243333, 0x3f27cccd,
        0x3f2b6667, 0x3f2f0000, 0x3f32999a, 0x3f363333, 0x3f39cccd, 0x3f3d6667, 0x3f410000,
        0x3f44999a, 0x3f483333, 0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333,
        0x3f5dcccd, 0x3f616666, 0x3f650000, 0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666,
        0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
    ];
    const UNSIGNED: [u32; 256] = [
        0x00000000, 0x34ae7baa, 0x35500998, 0x360e9b38, 0x3692ccf6, 0x36de4c51, 0x3714e5d5,
        0x3783126e, 0x37e171a0, 0x381fe867, 0x384f1800, 0x387e479a, 0x3896bb99, 0x38ae5364,
        0x38c5eb31, 0x3906594b, 0x394154ca, 0x397c5048, 0x399ba5e4, 0x39b923a2, 0x39d6a162,
        0x39f41f22, 0x3a08ce71, 0x3a178d50, 0x3a264c31, 0x3a350b10, 0x3a43c9ef, 0x3a5288d0,
        0x3a6147af, 0x3a70068e, 0x3a7ec56e, 0x3a958106, 0x3aba5e35, 0x3adf3b64, 0x3b020c49,
        0x3b147ae1, 0x3b26e978, 0x3b39580f, 0x3b4bc6a7, 0x3b5e353e, 0x3b70a3d7, 0x3b818937,
        0x3b8ac082, 0x3b93f7ce, 0x3b9d2f1a, 0x3ba66666, 0x3baf9db3, 0x3bb8d4fd, 0x3bc20c4a,
        0x3bcb4395, 0x3bd47ae1, 0x3bddb22e, 0x3be6e978, 0x3bf020c5, 0x3bf95810, 0x3c0147ae,
        0x3c05e354, 0x3c0a7ef9, 0x3c0f1aa0, 0x3c13b645, 0x3c1851eb, 0x3c1ced92, 0x3c218937,
        0x3c2f5c2a, 0x3c466667, 0x3c5d70a3, 0x3c747ae2, 0x3c85c28f, 0x3c9147ae, 0x3c9ccccd,
        0x3ca851eb, 0x3cb3d70b, 0x3cbf5c29, 0x3ccae147, 0x3cd66667, 0x3ce1eb85, 0x3ced70a3,
        0x3cf8f5c3, 0x3d023d70, 0x3d080000, 0x3d0dc28f, 0x3d13851f, 0x3d1947af, 0x3d1f0a3d,
        0x3d24cccd, 0x3d2a8f5b, 0x3d3051eb, 0x3d36147b, 0x3d3bd70a, 0x3d41999a, 0x3d475c28,
        0x3d4d1eb8, 0x3d52e148, 0x3d58a3d7, 0x3d5e6667, 0x3d6428f7, 0x3d69eb85, 0x3d6fae15,
        0x3d7570a5, 0x3d7b3333, 0x3d807ae2, 0x3d835c29, 0x3d863d71, 0x3d891eb9, 0x3d8c0000,
        0x3d8ee148, 0x3d91c28f, 0x3d94a3d7, 0x3d97851f, 0x3d9a6667, 0x3d9d47af, 0x3da028f6,
        0x3da30a3e, 0x3da5eb85, 0x3da8cccd, 0x3dabae15, 0x3dae8f5c, 0x3db170a4, 0x3db451eb,
        0x3db73333, 0x3dba147b, 0x3dbcf5c3, 0x3dbfd70b, 0x3dc2b852, 0x3dc5999a, 0x3dc87ae2,
        0x3dcb5c29, 0x3dd40000, 0x3de26666, 0x3df0cccd, 0x3dff3333, 0x3e06cccc, 0x3e0e0000,
        0x3e153334, 0x3e1c6666, 0x3e23999a, 0x3e2acccc, 0x3e320000, 0x3e393333, 0x3e406666,
        0x3e47999a, 0x3e4ecccc, 0x3e560000, 0x3e5d3333, 0x3e646666, 0x3e6b999a, 0x3e72cccd,
        0x3e7a0000, 0x3e80999a, 0x3e843333, 0x3e87cccc, 0x3e8b6666, 0x3e8f0000, 0x3e92999a,
        0x3e963333, 0x3e99cccc, 0x3e9d6666, 0x3ea10000, 0x3ea4999a, 0x3ea83333, 0x3eabcccc,
        0x3eaf6666, 0x3eb30000, 0x3eb69999, 0x3eba3333, 0x3ebdcccc, 0x3ec16666, 0x3ec50000,
        0x3ec89999, 0x3ecc3333, 0x3ecfcccc, 0x3ed36666, 0x3ed70000, 0x3eda9999, 0x3ede3332,
        0x3ee1cccc, 0x3ee56666, 0x3ee90000, 0x3eec9999, 0x3ef03332, 0x3ef3cccc, 0x3ef76666,
        0x3efb0000, 0x3efe9999, 0x3f01199a, 0x3f02e666, 0x3f04b334, 0x3f068000, 0x3f084ccc,
        0x3f0a199a, 0x3f0be666, 0x3f0db334, 0x3f0f8000, 0x3f114ccd, 0x3f13199a, 0x3f14e666,
        0x3f16b334, 0x3f188000, 0x3f1a4ccd, 0x3f1c199a, 0x3f1de666, 0x3f1fb334, 0x3f218000,
        0x3f234ccd, 0x3f25199a, 0x3f26e666, 0x3f28b334, 0x3f2a8000, 0x3f2c4ccd, 0x3f2e199a,
        0x3f2fe666, 0x3f31b334, 0x3f338000, 0x3f354ccd, 0x3f37199a, 0x3f38e666, 0x3f3ab334,
        0x3f3c8000, 0x3f3e4ccd, 0x3f40199a, 0x3f41e666, 0x3f43b334, 0x3f458000, 0x3f474ccc,
        0x3f49199a, 0x3f4ae666, 0x3f4cb334, 0x3f4e8000, 0x3f504ccc, 0x3f52199a, 0x3f53e666,
        0x3f55b334, 0x3f578000, 0x3f594ccc, 0x3f5b199a, 0x3f5ce666, 0x3f5eb334, 0x3f608000,
        0x3f624ccc, 0x3f64199a, 0x3f65e666, 0x3f67b334, 0x3f698000, 0x3f6b4ccc, 0x3f6d199a,
        0x3f6ee666, 0x3f70b334, 0x3f728000, 0x3f744ccc, 0x3f76199a, 0x3f77e666, 0x3f79b334,
        0x3f7b8000, 0x3f7d4ccc, 0x3f7f199a, 0x3f800000,
    ];

    #[test]
    fn maps_equal_bitsandbytes_value_for_value() {
        for (signed, table) in [(true, SIGNED), (false, UNSIGNED)] {
            let map = dynamic_map(signed);
            for (k, (&ours, &want)) in map.iter().zip(table.iter()).enumerate() {
                assert_eq!(
                    ours.to_bits(),
                    want,
                    "signed={signed} entry {k}: {ours} vs {}",
                    f32::from_bits(want)
                );
            }
        }
        // shape of the maps: signed has 127 negatives, 0, 127 positives and 1; unsigned starts at 0
        let s = dynamic_map(true);
        assert_eq!(s[127], 0.0);
        assert_eq!(s[255], 1.0);
        assert!(s[..127].iter().all(|&x| x < 0.0));
        let u = dynamic_map(false);
        assert_eq!((u[0], u[255]), (0.0, 1.0));
        assert!(u.windows(2).all(|w| w[0] < w[1]));
    }

    /// The round trip of a block is within half the gap of the map values around each element
    /// (times absmax); extremes and zeros are exact.
    #[test]
    fn round_trip_error_is_bounded_by_the_map() {
        let mut s = 0x1234_5678u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        for signed in [true, false] {
            let map = dynamic_map(signed);
            // magnitudes over 8 decades, 3 blocks + a ragged one
            let values: Vec<f32> = (0..3 * 256 + 77)
                .map(|_| {
                    let mag = 10f64.powf(-8.0 * next()) as f32;
                    if signed && next() < 0.5 {
                        -mag
                    } else {
                        mag
                    }
                })
                .collect();
            let (codes, absmax) = quantize_host(&values, 256, signed);
            let back = dequantize_host(&codes, &absmax, 256, signed);
            for (i, (&x, &y)) in values.iter().zip(&back).enumerate() {
                let a = absmax[i / 256];
                let t = x / a;
                let bound = match map.iter().rposition(|&m| m <= t) {
                    // below the signed map's minimum (−0.993: the map has no −1)
                    None => (map[0] - t) * a,
                    Some(k) if k < 255 => 0.5 * (map[k + 1] - map[k]) * a,
                    Some(_) => 0.0,
                } * (1.0 + 1e-5)
                    + a * 1e-7;
                assert!(
                    (x - y).abs() <= bound,
                    "signed={signed} {i}: {x} → {y}, bound {bound}"
                );
                if x == a {
                    assert_eq!(x, y, "the block's positive extreme is exact");
                }
            }
        }
        // a block of zeros stays zero
        let (c, a) = quantize_host(&[0.0; 8], 4, true);
        assert_eq!(dequantize_host(&c, &a, 4, true), vec![0.0; 8]);
    }

    /// The burn-op quantizer (the portable path) equals the host reference code for code.
    #[test]
    fn device_quantizer_equals_host_reference() {
        type B = burn::backend::Flex;
        let device = Default::default();
        let values: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 1e-3 * (1.0 + (i % 7) as f32))
            .collect();
        for (signed, vals) in [
            (true, values.clone()),
            (false, values.iter().map(|x| x.abs()).collect::<Vec<_>>()),
        ] {
            let maps = DynamicMaps::<B>::new(&device);
            let map = if signed { &maps.signed } else { &maps.unsigned };
            let t = Tensor::<B, 2>::from_data(TensorData::new(vals.clone(), [10, 100]), &device);
            let q = Blockwise8::quantize(t, map, 256);
            let (codes, absmax) = quantize_host(&vals, 256, signed);
            let words: Vec<i32> = q
                .codes
                .clone()
                .into_data()
                .convert::<i32>()
                .to_vec()
                .unwrap();
            let ours: Vec<u8> = words
                .iter()
                .flat_map(|&w| (0..4).map(move |k| ((w as u32) >> (8 * k)) as u8))
                .take(vals.len())
                .collect();
            assert_eq!(ours, codes, "signed={signed}");
            let a: Vec<f32> = q.absmax.clone().into_data().to_vec().unwrap();
            assert_eq!(a, absmax);
            let back: Vec<f32> = q.dequantize(map, [10, 100]).into_data().to_vec().unwrap();
            assert_eq!(back, dequantize_host(&codes, &absmax, 256, signed));
        }
    }
}
