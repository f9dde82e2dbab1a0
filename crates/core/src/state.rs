//! State storage: how the engine keeps Adam's moments (and the projector) between steps.
//!
//! A part of the pipeline like the projector: the inner Adam always **computes** in f32; the
//! storage decides what is **kept**:
//!
//! | [`StateDtype`] | a moment of `n` elements | the projector |
//! |---|---|---|
//! | `F32` (default) | `4·n` bytes | f32 |
//! | `Bf16` | `2·n` bytes, rounded to nearest even after each step | bf16 |
//! | `Int8Blockwise` | `⌈n/b⌉·b + 4·⌈n/b⌉` bytes: one code per element and one f32 absmax per block of `b` (bitsandbytes' blockwise 8-bit Adam, [`ember_kernels::blockwise`]) | bf16 |
//!
//! `Int8Blockwise` stores the first moment with the signed dynamic map and the second with the
//! unsigned one; a moment of fewer than `min_8bit_size` elements (4096, bitsandbytes' default)
//! stays f32, as bitsandbytes does for small tensors. The dequantize → update → requantize step
//! is one fused kernel on CubeCL backends ([`EmberBackend::adam_8bit`]); the f32 moments exist
//! only in registers there, and per parameter (transiently) on the portable path.

use burn::prelude::*;
use burn::record::Record;
use burn::tensor::DType;
use ember_kernels::{AdamCoefficients, Blockwise8, EmberBackend, UpdateCoefficients};

use crate::dct::SharedBases;
use serde::{Deserialize, Serialize};

/// The storage type of the optimizer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum StateDtype {
    /// 32-bit floats (the official packages' default; conformance runs this).
    #[default]
    F32,
    /// bfloat16 moments and projectors.
    Bf16,
    /// Blockwise 8-bit moments (dynamic maps, one absmax per block), bf16 projectors: GaLore-8bit,
    /// AdamW-8bit.
    Int8Blockwise,
}

impl StateDtype {
    /// Lower-case name (`f32`, `bf16`, `int8`).
    pub fn name(self) -> &'static str {
        match self {
            StateDtype::F32 => "f32",
            StateDtype::Bf16 => "bf16",
            StateDtype::Int8Blockwise => "int8",
        }
    }
}

/// The state-storage part of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateStorage {
    /// Storage type.
    pub dtype: StateDtype,
    /// Elements per block of `Int8Blockwise` (a multiple of 4; default 256).
    pub block_size: usize,
    /// Moments of fewer elements stay f32 under `Int8Blockwise` (default 4096).
    pub min_8bit_size: usize,
    /// A parameter of more elements than this is updated in row chunks of about this many
    /// elements (`crate::chunked`), where its pipeline allows (the full-rank AdamW and dense
    /// projections whose residual is discarded: GaLore, Q-GaLore, the AdamW of the other
    /// parameters): the f32 working copies — of bf16 weights and gradients, of the update — are
    /// then a chunk's, not the whole parameter's. Default 2²⁴ (64 MiB of f32); 0: never.
    #[serde(default = "default_update_chunk")]
    pub update_chunk_elements: usize,
}

fn default_update_chunk() -> usize {
    1 << 24
}

impl Default for StateStorage {
    fn default() -> Self {
        Self {
            dtype: StateDtype::F32,
            block_size: ember_kernels::blockwise::DEFAULT_BLOCK,
            min_8bit_size: 4096,
            update_chunk_elements: default_update_chunk(),
        }
    }
}

/// One stored moment (a burn [`Record`]).
#[derive(Record, Clone, Debug)]
pub enum Moment<B: Backend> {
    /// f32 values.
    F32(Tensor<B, 2>),
    /// bf16 values (a checkpoint may hold them widened to the backend's float; they are rounded
    /// back at the next step).
    Bf16(Tensor<B, 2>),
    /// Blockwise 8-bit values.
    Int8(Int8Moment<B>),
}

/// A blockwise 8-bit moment as saved in a record.
#[derive(Record, Clone, Debug)]
pub struct Int8Moment<B: Backend> {
    /// Codes, four per word, padded to whole blocks.
    pub codes: Tensor<B, 1, Int>,
    /// One absmax per block.
    pub absmax: Tensor<B, 1>,
    /// Shape of the moment.
    pub shape: Vec<usize>,
    /// Elements per block.
    pub block: usize,
}

impl<B: Backend> Int8Moment<B> {
    fn into_blockwise(self) -> Blockwise8<B> {
        Blockwise8 {
            codes: self.codes,
            absmax: self.absmax,
            len: self.shape.iter().product(),
            block: self.block,
        }
    }

    fn from_blockwise(q: Blockwise8<B>, shape: [usize; 2]) -> Self {
        Self {
            codes: q.codes,
            absmax: q.absmax,
            shape: shape.to_vec(),
            block: q.block,
        }
    }
}

impl<B: Backend> Moment<B> {
    /// The moment's shape.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Moment::F32(t) | Moment::Bf16(t) => t.dims(),
            Moment::Int8(q) => [q.shape[0], q.shape.get(1).copied().unwrap_or(1)],
        }
    }

    /// Bytes held on the device.
    pub fn bytes(&self) -> usize {
        match self {
            Moment::F32(t) => tensor_bytes(t),
            // counted as stored, whatever a loaded checkpoint widened it to
            Moment::Bf16(t) => 2 * t.shape().num_elements(),
            Moment::Int8(q) => Blockwise8::<B>::bytes_for(q.shape.iter().product(), q.block),
        }
    }

    /// The storage type.
    pub fn dtype(&self) -> StateDtype {
        match self {
            Moment::F32(_) => StateDtype::F32,
            Moment::Bf16(_) => StateDtype::Bf16,
            Moment::Int8(_) => StateDtype::Int8Blockwise,
        }
    }

    /// Moves the tensors to `device`.
    pub fn to_device(self, device: &B::Device) -> Self {
        match self {
            Moment::F32(t) => Moment::F32(t.to_device(device)),
            Moment::Bf16(t) => Moment::Bf16(t.to_device(device).cast(DType::BF16)),
            Moment::Int8(mut q) => {
                q.codes = q.codes.to_device(device);
                q.absmax = q.absmax.to_device(device);
                Moment::Int8(q)
            }
        }
    }

    /// The values in f32 (8-bit moments are dequantized with the maps of `shared`; `signed`
    /// picks the map).
    pub fn to_f32(&self, shared: &SharedBases<B>, signed: bool) -> Tensor<B, 2> {
        match self {
            Moment::F32(t) | Moment::Bf16(t) => t.clone().cast(DType::F32),
            Moment::Int8(q) => {
                let maps = shared.dynamic_maps(&q.absmax.device());
                let map = if signed { &maps.signed } else { &maps.unsigned };
                let dims = self.dims();
                q.clone().into_blockwise().dequantize(map, dims)
            }
        }
    }
}

impl<B: Backend> Moment<B> {
    /// Rows `rows` of the moment (of `[rows, cols]` values). An 8-bit moment is cut at block
    /// boundaries: `rows.start · cols` must be a multiple of its block, and so must
    /// `rows.end · cols` unless `rows` ends at the last row (the padding goes with the last rows).
    pub(crate) fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        match self {
            Moment::F32(t) => Moment::F32(crate::chunked::rows_of(t, rows)),
            Moment::Bf16(t) => Moment::Bf16(crate::chunked::rows_of(t, rows)),
            Moment::Int8(q) => {
                let (words, blocks) = q.ranges(&rows);
                Moment::Int8(Int8Moment {
                    codes: q.codes.clone().slice(words),
                    absmax: q.absmax.clone().slice(blocks),
                    shape: vec![rows.len(), q.shape.get(1).copied().unwrap_or(1)],
                    block: q.block,
                })
            }
        }
    }

    /// Writes `chunk` (what [`rows`](Self::rows) cut, stepped) back at rows `rows`: in place
    /// where this moment's buffers are not shared.
    pub(crate) fn assign_rows(self, rows: std::ops::Range<usize>, chunk: Self) -> Self {
        match (self, chunk) {
            (Moment::F32(t), Moment::F32(c)) => {
                let cols = t.dims()[1];
                Moment::F32(t.slice_assign([rows, 0..cols], c))
            }
            (Moment::Bf16(t), Moment::Bf16(c)) => {
                let cols = t.dims()[1];
                let c = c.cast(t.dtype());
                Moment::Bf16(t.slice_assign([rows, 0..cols], c))
            }
            (Moment::Int8(mut q), Moment::Int8(c)) => {
                let (words, blocks) = q.ranges(&rows);
                q.codes = q.codes.slice_assign([words], c.codes);
                q.absmax = q.absmax.slice_assign([blocks], c.absmax);
                Moment::Int8(q)
            }
            (m, c) => unreachable!(
                "a moment chunk is stored as its moment ({:?} and {:?})",
                m.dtype(),
                c.dtype()
            ),
        }
    }
}

impl<B: Backend> Int8Moment<B> {
    /// The code words and absmax blocks of rows `rows`.
    fn ranges(
        &self,
        rows: &std::ops::Range<usize>,
    ) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let cols = self.shape.get(1).copied().unwrap_or(1);
        let (start, end) = (rows.start * cols, rows.end * cols);
        debug_assert!(start.is_multiple_of(self.block));
        let last = rows.end == self.shape[0];
        let words = start / 4..if last { self.codes.dims()[0] } else { end / 4 };
        let blocks = start / self.block..if last {
            self.absmax.dims()[0]
        } else {
            end / self.block
        };
        (words, blocks)
    }
}

impl StateStorage {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        if self.dtype == StateDtype::Int8Blockwise
            && (self.block_size == 0 || !self.block_size.is_multiple_of(4))
        {
            return Err(format!(
                "state block size {} must be a positive multiple of 4",
                self.block_size
            ));
        }
        Ok(())
    }

    /// How a moment of `numel` elements is stored.
    pub fn moment_dtype(&self, numel: usize) -> StateDtype {
        match self.dtype {
            StateDtype::Int8Blockwise if numel < self.min_8bit_size => StateDtype::F32,
            d => d,
        }
    }

    /// Bytes of one moment of `numel` elements.
    pub fn moment_bytes(&self, numel: usize) -> usize {
        match self.moment_dtype(numel) {
            StateDtype::F32 => 4 * numel,
            StateDtype::Bf16 => 2 * numel,
            StateDtype::Int8Blockwise => {
                Blockwise8::<burn::backend::Flex>::bytes_for(numel, self.block_size)
            }
        }
    }

    /// Whether any moment of `numel` elements is kept in 8 bits (the dynamic maps are then held).
    pub fn uses_maps(&self, numel: usize) -> bool {
        self.moment_dtype(numel) == StateDtype::Int8Blockwise
    }

    /// The dtype dense projectors are stored in: f32 with f32 state, bf16 otherwise.
    pub fn projector_dtype(&self) -> DType {
        match self.dtype {
            StateDtype::F32 => DType::F32,
            _ => DType::BF16,
        }
    }

    /// The dtype dense projectors are stored in on `device`: [`projector_dtype`](Self::projector_dtype),
    /// or f32 where the device has no bf16 (wgpu: WGSL has none; logged once).
    pub fn projector_dtype_on<B: Backend>(&self, device: &B::Device) -> DType {
        let d = self.projector_dtype();
        if d == DType::BF16 && !B::supports_dtype(device, DType::BF16) {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                log::warn!(
                    "ember: this device has no bf16; projectors of non-f32 optimizer state are \
                     kept in f32"
                )
            });
            return DType::F32;
        }
        d
    }

    /// Checks that `device` can hold this storage's moments (bf16 moments need bf16).
    pub fn check_device<B: Backend>(&self, device: &B::Device) -> Result<(), String> {
        if self.dtype == StateDtype::Bf16 && !B::supports_dtype(device, DType::BF16) {
            return Err(format!(
                "bf16 optimizer state on a device without bf16 ({device:?}); use f32 or 8-bit \
                 (int8) state"
            ));
        }
        Ok(())
    }

    /// Bytes per stored projector element.
    pub fn projector_element_bytes(&self) -> usize {
        self.projector_dtype().size()
    }

    /// Zero moments of `shape`.
    pub fn zeros<B: Backend>(
        &self,
        shape: [usize; 2],
        device: &B::Device,
    ) -> (Moment<B>, Moment<B>) {
        let numel = shape[0] * shape[1];
        let one = || match self.moment_dtype(numel) {
            StateDtype::F32 => Moment::F32(Tensor::zeros(shape, device)),
            StateDtype::Bf16 => {
                Moment::Bf16(Tensor::<B, 2>::zeros(shape, device).cast(DType::BF16))
            }
            StateDtype::Int8Blockwise => Moment::Int8(Int8Moment::from_blockwise(
                Blockwise8::zeros(numel, self.block_size, device),
                shape,
            )),
        };
        (one(), one())
    }

    fn store<B: Backend>(&self, m: Tensor<B, 2>, v: Tensor<B, 2>) -> (Moment<B>, Moment<B>) {
        match self.moment_dtype(m.shape().num_elements()) {
            StateDtype::Bf16 => (
                Moment::Bf16(m.cast(DType::BF16)),
                Moment::Bf16(v.cast(DType::BF16)),
            ),
            _ => (Moment::F32(m), Moment::F32(v)),
        }
    }

    /// Adam on the low-rank gradient `r` (f32): `(N, M, V)` with the moments stored as configured,
    /// `N` computed in f32 and rounded once to `n_dtype` (f32, or the weight's dtype for an update
    /// that reads `N` in it: [`EmberBackend::adam_8bit_into`]).
    #[allow(clippy::too_many_arguments)]
    pub fn adam<B: EmberBackend>(
        &self,
        r: Tensor<B, 2>,
        moments: Option<(Moment<B>, Moment<B>)>,
        c: AdamCoefficients,
        shared: &SharedBases<B>,
        skip: ember_kernels::Skip<B>,
        n_dtype: DType,
    ) -> (Tensor<B, 2>, Moment<B>, Moment<B>) {
        let shape = r.dims();
        let (m, v) = moments.unwrap_or_else(|| self.zeros(shape, &r.device()));
        match (m, v) {
            (Moment::Int8(m), Moment::Int8(v)) => {
                let maps = shared.dynamic_maps(&r.device());
                let (m, v) = (m.into_blockwise(), v.into_blockwise());
                let (n, m, v) = B::adam_8bit_into(r, m, v, &maps, c, skip, n_dtype);
                (
                    n,
                    Moment::Int8(Int8Moment::from_blockwise(m, shape)),
                    Moment::Int8(Int8Moment::from_blockwise(v, shape)),
                )
            }
            (m, v) => {
                let (m, v) = (m.to_f32(shared, true), v.to_f32(shared, false));
                let (n, m, v) = B::subspace_adam_into(r, m, v, c, skip, n_dtype);
                let (m, v) = self.store(m, v);
                (n, m, v)
            }
        }
    }

    /// Full-rank AdamW on `w` (f32) with gradient `g` (f32): `(W, M, V)`.
    #[allow(clippy::too_many_arguments)]
    pub fn adam_full<B: EmberBackend>(
        &self,
        w: Tensor<B, 2>,
        g: Tensor<B, 2>,
        moments: Option<(Moment<B>, Moment<B>)>,
        c: AdamCoefficients,
        coef: UpdateCoefficients,
        shared: &SharedBases<B>,
        skip: ember_kernels::Skip<B>,
    ) -> (Tensor<B, 2>, Moment<B>, Moment<B>) {
        let shape = g.dims();
        let (m, v) = moments.unwrap_or_else(|| self.zeros(shape, &g.device()));
        match (m, v) {
            (Moment::Int8(m), Moment::Int8(v)) => {
                let maps = shared.dynamic_maps(&g.device());
                let (w, m, v) = B::adam_full_step_8bit(
                    w,
                    g,
                    m.into_blockwise(),
                    v.into_blockwise(),
                    &maps,
                    c,
                    coef,
                    skip,
                );
                (
                    w,
                    Moment::Int8(Int8Moment::from_blockwise(m, shape)),
                    Moment::Int8(Int8Moment::from_blockwise(v, shape)),
                )
            }
            // bf16 moments read and written as they are where the backend takes bf16
            // (`EmberBackend::native_dtype`): no f32 copies of the moments
            (Moment::Bf16(m), Moment::Bf16(v)) if B::native_dtype(DType::BF16) => {
                let (m, v) = (m.cast(DType::BF16), v.cast(DType::BF16));
                let (w, m, v) = B::adam_full_step(w, g, m, v, c, coef, skip);
                (
                    w,
                    Moment::Bf16(m.cast(DType::BF16)),
                    Moment::Bf16(v.cast(DType::BF16)),
                )
            }
            (m, v) => {
                let (m, v) = (m.to_f32(shared, true), v.to_f32(shared, false));
                let (w, m, v) = B::adam_full_step(w, g, m, v, c, coef, skip);
                let (m, v) = self.store(m, v);
                (w, m, v)
            }
        }
    }
}

/// Bytes of a tensor's elements.
pub fn tensor_bytes<B: Backend, const D: usize, K: burn::tensor::BasicOps<B>>(
    t: &Tensor<B, D, K>,
) -> usize {
    t.shape().num_elements() * t.dtype().size()
}
