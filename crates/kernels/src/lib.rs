//! Ember's projection kernels: the ops of the subspace-optimizer pipeline that burn cannot fuse by
//! itself, behind one backend extension trait, [`EmberBackend`].
//!
//! The trait follows burn's backend-extension convention (the burn book's custom-kernel chapter): a
//! trait over [`Backend`] whose methods have a **portable default** composed of burn tensor ops
//! ([`portable`]; any backend, the reference in tests), and which burn's CubeCL backends
//! (`CubeBackend<R, …>`: `cuda`, `wgpu`) override with **fused CubeCL kernels** (feature `cubecl`,
//! turned on by `cuda` or `wgpu`). The optimizer engine calls the trait and never knows which
//! implementation runs.
//!
//! | op | fused kernel (CubeCL backends) |
//! |---|---|
//! | [`projection_matmul`](EmberBackend::projection_matmul) | `A·B` of the projections: cuBLAS on burn's CUDA buffers (TF32 / bf16 tensor cores), burn's matmul elsewhere |
//! | [`projection_down`](EmberBackend::projection_down) | the down projection `R = down(G)`: as `projection_matmul`; on CUDA a row of unaligned bytes (`n` = 5461) gets padded rows and the GEMM runs over the padded width (three times faster on cuBLAS) |
//! | [`subspace_adam`](EmberBackend::subspace_adam) | moments, bias correction and normalization in one pass over `R` (read through its row stride; a 16-bit `N` written with padded rows where its row is unaligned) |
//! | [`projected_update`](EmberBackend::projected_update) | back-projection `P·N` by row blocks (burn's matmul), each block folded into `W` in place with decay, `α`, the step size and the residual rule (FRUGAL's signSGD/SGD, Fira's scaled and limited residual): no `m×n` temporary |
//! | [`adam_full_step`](EmberBackend::adam_full_step) | full-rank AdamW (non-targeted parameters) in one pass: `W`, `M`, `V` updated in place |
//! | [`state_free_step`](EmberBackend::state_free_step) | FRUGAL's signSGD/SGD on a whole block, in place |
//! | [`dequantize_packed`](EmberBackend::dequantize_packed) | INT4/INT8 codes → f32 (Q-GaLore's projector, INT8 weights) |
//! | [`quantize_int8`](EmberBackend::quantize_int8) | per-group INT8 quantization with stochastic rounding from a counter-based RNG ([`rng`]) |
//! | [`non_finite_flags`](EmberBackend::non_finite_flags) | the NaN/Inf check of every gradient in one coalesced pass |
//! | [`dct_scores`](EmberBackend::dct_scores) | DCT column scores `‖(G·Q)₍:,j₎‖₁` (after burn's matmul), then top-r by burn's `topk` |
//! | [`rms_norm`](EmberBackend::rms_norm), [`rms_norm_backward`](EmberBackend::rms_norm_backward) | the model's RMSNorm: one cube per row forward; `dX` per row, `dγ` in two column passes ([`norm`]) |
//! | [`swiglu`](EmberBackend::swiglu), [`swiglu_backward`](EmberBackend::swiglu_backward) | the SwiGLU gate and both its gradients, one pass each ([`swiglu`]) |
//! | [`rotary`](EmberBackend::rotary) | the rotary embedding of a strided view into a contiguous layout, forward or inverse ([`rotary`]) |
//!
//! The device-side projector (randomized range finder warm-started from the previous projector,
//! orthonormalized with Newton–Schulz steps on the device) lives in `ember-core`'s `range` module
//! and is built from burn ops only: matmuls, nothing to fuse.
//!
//! Implementations: `flex` (portable); `CubeBackend<R, F, I, BT>` with feature `cubecl` (turned on
//! by `cuda` or `wgpu`: fused for f32 floats and 32-bit ints, portable otherwise); burn's
//! `Fusion<B>` with feature `fusion` — what `Cuda`/`Wgpu` are with burn's default features: each
//! op is one custom operation of burn's fusion stream that runs `B`'s fused kernel (the portable
//! path on `Fusion<B>` itself, where burn fuses the element-wise chains, when `B` has no kernels or
//! a float input is not f32). A backend without an
//! implementation gets the portable defaults with one line:
//! `impl ember_kernels::EmberBackend for MyBackend {}`.
//!
//! [`set_fused`] turns the fused kernels off process-wide (to time both paths on one device).
//!
//! **The skip flag.** The ops that change a weight or a moment take a `skip`
//! ([`Skip`]): `None`, or a one-element f32 tensor on the device that holds 1 where the step must
//! change nothing (its gradients hold a NaN or ±Inf: [`skip_flag`] of
//! [`non_finite_flags`](EmberBackend::non_finite_flags)) and 0 otherwise. Where it is 1 the op
//! returns its inputs unchanged (`W`, the moments, Fira's norm) and `N = 0`, so the product
//! that follows adds nothing. The kernels read the flag on the device: the optimizer checks
//! gradients without reading anything back to the host (`NonFinitePolicy::SkipStepOnDevice`).

use burn::prelude::*;
use burn::tensor::Int;

pub use blockwise::{Blockwise8, DynamicMaps};

pub mod attention;
pub mod blockwise;
pub mod dense;
pub mod host_trace;
pub mod model;
pub mod norm;
pub mod nvml;
pub mod portable;
pub mod rng;
pub mod rotary;
pub mod selfcheck;
pub mod swiglu;

#[cfg(feature = "cubecl")]
pub mod cache;
#[cfg(feature = "cubecl")]
mod cube;
#[cfg(feature = "cuda")]
pub use cube::cublas;
#[cfg(feature = "cuda")]
pub use cube::device_thread;
#[cfg(feature = "fusion")]
mod fusion;

/// Whether the CubeCL backends run attention's causal softmax and its gradient as one kernel
/// each (default); `EMBER_FUSED_SOFTMAX=off` keeps burn's composition (for comparisons).
#[cfg_attr(not(feature = "cubecl"), allow(dead_code))]
pub(crate) fn fused_softmax_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("EMBER_FUSED_SOFTMAX").as_deref(),
            Ok("off") | Ok("0")
        )
    })
}

static BLOCK_ELEMENTS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(1 << 23);

/// Elements of `W` per block of the fused back-projection (default `2²³`, 32 MiB of f32): the
/// only `W`-sized temporaries of the fused [`EmberBackend::projected_update`] are one block (two
/// with a residual rule, three for Fira's on a matrix of one block, whose `up(R)` is kept for the
/// update), whatever the size of `W`.
pub fn block_elements() -> usize {
    BLOCK_ELEMENTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sets [`block_elements`] (at least 1). Results do not depend on it; the kernel tests use small
/// blocks so that every code path runs on small matrices.
pub fn set_block_elements(n: usize) {
    BLOCK_ELEMENTS.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// `usize::MAX`: not read from the environment yet.
static VENDOR_GEMM_MIN_MACS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(usize::MAX);

/// Whether the down product of operands in these dtypes is [`EmberBackend::projection_matmul_wide`]
/// (two operands of one low precision: an f32 product of bf16/f16 values) rather than
/// [`EmberBackend::projection_matmul`].
pub(crate) fn down_is_wide(a: burn::tensor::DType, b: burn::tensor::DType) -> bool {
    a == b && a != burn::tensor::DType::F32
}

/// Smallest product, in multiply-adds `m·k·n`, that [`EmberBackend::projection_matmul`] hands to
/// the vendor's GEMM (cuBLAS on CUDA; default `2²⁴`, environment `EMBER_CUBLAS_MIN_MACS`). Each
/// cuBLAS product adds two one-thread CubeCL kernels and our waiter around the GEMM
/// (`cube::cublas`). The default was `2²⁹` while every cuBLAS window blocked the host: then the
/// pretraining run's products (512×512 to 512×1376 at r128, 3.4·10⁷ to 9·10⁷ multiply-adds) were
/// faster on burn's matmul (Fira 66k against 55k tokens/s). With windows queued without blocking,
/// the same run on the H100 (2026-11-24, `scripts/h100_min_macs.sh`) trained GaLore at 209.7k
/// tokens/s with every product on cuBLAS against 192.8k on burn's matmul, Fira and FRUGAL within
/// 1.3% either way (`docs/benchmarks.md`); smaller products than `2²⁴` stay on burn's matmul.
pub fn vendor_gemm_min_macs() -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    match VENDOR_GEMM_MIN_MACS.load(Relaxed) {
        usize::MAX => {
            let n = std::env::var("EMBER_CUBLAS_MIN_MACS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1 << 24);
            VENDOR_GEMM_MIN_MACS.store(n, Relaxed);
            n
        }
        n => n,
    }
}

/// Sets [`vendor_gemm_min_macs`] (the kernel checks set 0, so that their small products reach
/// cuBLAS).
pub fn set_vendor_gemm_min_macs(n: usize) {
    VENDOR_GEMM_MIN_MACS.store(n.min(usize::MAX - 1), std::sync::atomic::Ordering::Relaxed);
}

static FUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the fused kernels off (`false`) or back on, process-wide: CubeCL backends then run the
/// portable path, so that both can be timed on one device (`ember-bench step --portable`).
pub fn set_fused(on: bool) {
    FUSED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether fused kernels are allowed ([`set_fused`]; on by default).
pub fn fused_enabled() -> bool {
    FUSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Adam's per-step coefficients: `M ← β₁M + (1−β₁)R`, `V ← β₂V + (1−β₂)R²`,
/// `N = M / (√V / d + ε)`.
///
/// The official packages place ε and the bias corrections differently; `d` and `ε` carry that
/// (galore-torch: `d = 1`; torch AdamW: `d = √(1−β₂ᵗ)`; DCT-AdamW: `ε·√(1−β₂ᵗ)` as ε).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamCoefficients {
    /// β₁.
    pub beta_1: f64,
    /// β₂.
    pub beta_2: f64,
    /// `d`: `√V` is divided by it.
    pub sqrt_v_divisor: f64,
    /// ε, added after the division.
    pub epsilon: f64,
}

/// How the parameter moves: `W ← W·(1 − λ_before)`, `W ← W − c·α·ΔW − residual`,
/// `W ← W − λ_after·W`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateCoefficients {
    /// `lr·λ` applied before the update (torch AdamW, FRUGAL, DCT-AdamW), else 0.
    pub decay_before: f64,
    /// α, the scale of the back-projected update.
    pub scale: f64,
    /// `c`, the Adam step size (learning rate with bias correction).
    pub step: f64,
    /// `lr·λ` applied after the update (the GaLore family), else 0.
    pub decay_after: f64,
}

/// What is done with the residual `G − up(R)` that the projection discards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ResidualUpdate {
    /// Thrown away.
    None,
    /// `W ← W − step·sign(G − up(R))` (FRUGAL's signSGD).
    Sign {
        /// `lr·s`.
        step: f64,
    },
    /// `W ← W − step·(G − up(R))` (FRUGAL's SGD).
    Sgd {
        /// `lr·s`.
        step: f64,
    },
    /// Fira: `Ψ = (G − α·up(R))·φ` with `φ = ‖N‖/(‖R‖ + 1e-8)` along the long side, limited so
    /// that `‖Ψ‖ ≤ γ·ζ` (ζ the previous step's norm), then `W ← W − c·Ψ`.
    Fira {
        /// The norm-growth limit γ.
        gamma: f64,
        /// The gradient given holds the residual `G − α·up(R)` already, computed with the down
        /// projection ([`EmberBackend::projection_down_residual`]): no `up(R)` at the update.
        given: bool,
    },
}

/// A materialized projector: `P` is `m×r` on the left (`down(G) = PᵀG`, `up(X) = P·X`) or
/// `r×n` on the right (`down(G) = G·Pᵀ`, `up(X) = X·P`).
#[derive(Debug, Clone)]
pub struct Basis<B: Backend> {
    /// `P`.
    pub p: Tensor<B, 2>,
    /// Left (`m×r`) or right (`r×n`).
    pub left: bool,
}

impl<B: EmberBackend> Basis<B> {
    /// `R = down(G)`, in f32 (a bf16 basis kept as it is stored, with a bf16 gradient:
    /// [`EmberBackend::projection_matmul_wide`]).
    pub fn down(&self, g: Tensor<B, 2>) -> Tensor<B, 2> {
        let (a, b) = if self.left {
            (self.p.clone().transpose(), g)
        } else {
            (g, self.p.clone().transpose())
        };
        B::projection_down(a, b)
    }

    /// `up(X)`.
    pub fn up(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        if self.left {
            B::projection_matmul(self.p.clone(), x)
        } else {
            B::projection_matmul(x, self.p.clone())
        }
    }

    /// Rows `rows` of `up(X)` and of `up(Y)`, the two products issued together
    /// ([`EmberBackend::projection_matmul_pair`]: one cuBLAS window on CUDA).
    pub fn up_rows_pair(
        &self,
        x: &Tensor<B, 2>,
        y: &Tensor<B, 2>,
        rows: std::ops::Range<usize>,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let operands = |x: &Tensor<B, 2>| {
            if self.left {
                let r = self.p.dims()[1];
                (self.p.clone().slice([rows.clone(), 0..r]), x.clone())
            } else {
                let r = x.dims()[1];
                (x.clone().slice([rows.clone(), 0..r]), self.p.clone())
            }
        };
        B::projection_matmul_pair(operands(x), operands(y))
    }

    /// Rows `rows` of `up(X)`.
    pub fn up_rows(&self, x: &Tensor<B, 2>, rows: std::ops::Range<usize>) -> Tensor<B, 2> {
        if self.left {
            let r = self.p.dims()[1];
            B::projection_matmul(self.p.clone().slice([rows, 0..r]), x.clone())
        } else {
            let r = x.dims()[1];
            B::projection_matmul(x.clone().slice([rows, 0..r]), self.p.clone())
        }
    }
}

/// A step's skip flag on the device (see the [crate docs](crate)): `None`, or f32 `[1]`, 1 where
/// the op must change nothing.
pub type Skip<B> = Option<Tensor<B, 1>>;

/// The skip flag of a step from its gradients' [`EmberBackend::non_finite_flags`] (one device):
/// 1 if any flag is set, else 0. Stays on the device.
pub fn skip_flag<B: Backend>(flags: Tensor<B, 1>) -> Tensor<B, 1> {
    let device = flags.device();
    if flags.dims()[0] == 0 {
        return Tensor::<B, 1>::zeros([1], &device).cast(burn::tensor::DType::F32);
    }
    // (not `clamp`: burn 0.21's fusion backend on CUDA vectorizes a fused `clamp` into
    // `min(float_4, float)`, which NVRTC rejects)
    flags
        .max()
        .greater_elem(0.0)
        .float()
        .cast(burn::tensor::DType::F32)
}

/// Key of the counter-based generator behind stochastic rounding: the uniform of element `i` is
/// [`rng::uniform`]`(key, i)`, the same on every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundingKey(pub [u32; 2]);

/// The ops of Ember's pipeline, with portable defaults. See the [crate docs](crate).
pub trait EmberBackend: Backend {
    /// Whether this backend runs the fused kernels (`false`: the portable defaults).
    fn fused_kernels() -> bool {
        false
    }

    /// Whether the fused ops take a weight and its gradient stored in `dtype` as they are, with
    /// no f32 working copy of the whole tensor: [`projection_matmul`](Self::projection_matmul)
    /// of an f32 basis and a `dtype` gradient (an f32 product), [`projected_update`](Self::projected_update)
    /// without a residual rule, [`adam_full_step`](Self::adam_full_step) /
    /// [`adam_full_step_8bit`](Self::adam_full_step_8bit) and [`non_finite_flags`](Self::non_finite_flags).
    /// The update is computed in f32 and the weight rounded once to `dtype` either way; where
    /// this is `false` the engine hands these ops f32 copies, one row chunk at a time for large
    /// parameters. f32 everywhere; bf16 on CUDA with the fused kernels and cuBLAS.
    fn native_dtype(dtype: burn::tensor::DType) -> bool {
        dtype == burn::tensor::DType::F32
    }

    /// `A·B`, the product of every projection (`down`, `up` of [`Basis`] and of the engine's
    /// projectors): the same product as burn's `matmul`, whose operands may be transposed views
    /// (`p.transpose()`) or row slices. CUDA (feature `cuda`): cuBLAS on burn's buffers, read in
    /// place, TF32 tensor cores for f32 operands (the precision of burn's f32 matmul there), f32
    /// accumulation for bf16/f16 (the `cube::cublas` module; `EMBER_CUBLAS=off` keeps burn's
    /// matmul). Elsewhere burn's matmul. Operands of different dtypes (an f32 basis and a bf16
    /// gradient) give an f32 product: CUDA rounds the f32 operand to bf16 and multiplies on bf16
    /// tensor cores into f32, elsewhere the bf16 operand is widened to f32.
    fn projection_matmul(a: Tensor<Self, 2>, b: Tensor<Self, 2>) -> Tensor<Self, 2> {
        portable::projection_matmul(a, b)
    }

    /// `(A₁·B₁, A₂·B₂)`, two [`projection_matmul`](Self::projection_matmul)s issued together
    /// (the two products of a linear layer's backward pass). CUDA: both GEMMs in one ordering
    /// window of the `cube::cublas` module (one round trip to CubeCL's server and three one-thread
    /// kernels for the pair instead of for each). Elsewhere the two products one after the other.
    /// [`projection_matmul`](Self::projection_matmul) with an f32 product whatever the
    /// operands' dtypes: two bf16 operands (a bf16 basis and a bf16 gradient) give the f32
    /// product of their values — on CUDA cuBLAS's bf16 tensor cores with f32 output, the product
    /// the mixed f32-basis case computes after rounding its basis to bf16; elsewhere both
    /// widened to f32.
    fn projection_matmul_wide(a: Tensor<Self, 2>, b: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let f32 = burn::tensor::DType::F32;
        Self::projection_matmul(a.cast(f32), b.cast(f32))
    }

    /// The down projection's product `R = A·B` ([`Basis::down`]): in f32,
    /// [`projection_matmul_wide`](Self::projection_matmul_wide) for two operands of one low
    /// precision, else [`projection_matmul`](Self::projection_matmul). CUDA (cuBLAS): a product
    /// whose rows are not a multiple of 16 bytes (`n` = 5461) gets rows padded to CubeCL's pitch,
    /// so that cuBLAS writes it with its aligned kernels and the subspace Adam kernel, which reads
    /// `R` through its strides, writes an `N` with aligned rows for the update GEMM (the other
    /// consumers copy a padded `R` first); `EMBER_ALIGNED_ROWS=off` keeps it dense.
    fn projection_down(a: Tensor<Self, 2>, b: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if down_is_wide(a.dtype(), b.dtype()) {
            Self::projection_matmul_wide(a, b)
        } else {
            Self::projection_matmul(a, b)
        }
    }

    /// `R = down(G)` and, where the backend does it with the same products' window, the
    /// residual `D = G − α·up(R)` written over `G` (Fira's residual, `α` = `scale`): returns
    /// `(R, D, true)`, or `(R, G, false)` where it does not (then the update computes `up(R)`
    /// itself). CUDA: both GEMMs in one cuBLAS window (`R = PᵀG`, then `G ← G − α·P·R` in place)
    /// for an f32 `G` no one else holds — one window a step fewer than `up(R)` at the update.
    /// Elsewhere (and by default) `(down(G), G, false)`.
    fn projection_down_residual(
        basis: &Basis<Self>,
        g: Tensor<Self, 2>,
        scale: f64,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>, bool) {
        let _ = scale;
        (basis.down(g.clone()), g, false)
    }

    fn projection_matmul_pair(
        (a1, b1): (Tensor<Self, 2>, Tensor<Self, 2>),
        (a2, b2): (Tensor<Self, 2>, Tensor<Self, 2>),
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        (
            Self::projection_matmul(a1, b1),
            Self::projection_matmul(a2, b2),
        )
    }

    /// Adam on the low-rank gradient `r`: returns `(N, M, V)` (see [`AdamCoefficients`]).
    fn subspace_adam(
        r: Tensor<Self, 2>,
        m: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        c: AdamCoefficients,
        skip: Skip<Self>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 2>) {
        portable::subspace_adam(r, m, v, c, skip)
    }

    /// [`subspace_adam`](Self::subspace_adam) with `N` written in `n_dtype`: f16 where
    /// [`f16_update_operands`](Self::f16_update_operands) lets the update GEMM read it (one
    /// rounding in the kernel, no f32 `N`). Default: f32, then a cast.
    fn subspace_adam_into(
        r: Tensor<Self, 2>,
        m: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        c: AdamCoefficients,
        skip: Skip<Self>,
        n_dtype: burn::tensor::DType,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 2>) {
        let (n, m, v) = Self::subspace_adam(r, m, v, c, skip);
        (n.cast(n_dtype), m, v)
    }

    /// Whether [`projected_update`](Self::projected_update) without a residual takes an **f16
    /// `N`** for an f32 weight and runs the back-projection on f16 tensor cores: `P` and `N`
    /// rounded to f16 (the 10-bit significand of TF32, the precision burn's and PyTorch's f32
    /// matmuls run at on CUDA), the products summed in f32 and added to the f32 `W` in one GEMM.
    /// The engine asks for it only for GEMMs of at least 2³⁰ multiply-adds
    /// (`ember_core::engine::F16_UPDATE_MIN_MACS`) and where `|N|` is bounded far inside f16's range (Adam's
    /// `|M|/√V ≤ (1−β₁)/√((1−β₂)(1−β₁²/β₂))`, f32 or bf16 moments). `false` by default; CUDA
    /// with cuBLAS (`EMBER_UPDATE_OPERANDS=tf32` keeps f32 operands on TF32 tensor cores).
    fn f16_update_operands() -> bool {
        false
    }

    /// Adam on the low-rank gradient `r` with **blockwise 8-bit moments** ([`blockwise`]):
    /// dequantize, update in f32 as [`subspace_adam`](Self::subspace_adam), requantize with a
    /// fresh absmax per block; `N` comes from the f32 moments before requantization (as
    /// bitsandbytes). Returns `(N, M, V)`. Fused: one pass, the f32 moments live in registers.
    fn adam_8bit(
        r: Tensor<Self, 2>,
        m: Blockwise8<Self>,
        v: Blockwise8<Self>,
        maps: &DynamicMaps<Self>,
        c: AdamCoefficients,
        skip: Skip<Self>,
    ) -> (Tensor<Self, 2>, Blockwise8<Self>, Blockwise8<Self>) {
        portable::adam_8bit(r, m, v, maps, c, skip)
    }

    /// [`adam_8bit`](Self::adam_8bit) with `N` in `n_dtype`: computed in f32 and rounded once
    /// (the fused kernel writes it so; the portable path casts). For an update that reads `N` in
    /// a low precision anyway (cuBLAS's bf16 GEMM accumulating into a bf16 weight), this saves
    /// the f32 `N` and its cast.
    #[allow(clippy::too_many_arguments)]
    fn adam_8bit_into(
        r: Tensor<Self, 2>,
        m: Blockwise8<Self>,
        v: Blockwise8<Self>,
        maps: &DynamicMaps<Self>,
        c: AdamCoefficients,
        skip: Skip<Self>,
        n_dtype: burn::tensor::DType,
    ) -> (Tensor<Self, 2>, Blockwise8<Self>, Blockwise8<Self>) {
        let (n, m, v) = Self::adam_8bit(r, m, v, maps, c, skip);
        (n.cast(n_dtype), m, v)
    }

    /// `W ← (1−λ_after)·(W·(1−λ_before) − c·α·up(N) − residual)` where the residual term uses
    /// `G`, `R` and `N` ([`ResidualUpdate`]); `zeta` is Fira's previous norm. Returns the new
    /// weight and Fira's new norm. `W` (and `G`) may be stored below f32: the update is computed
    /// in f32 and the weight rounded once to its dtype.
    #[allow(clippy::too_many_arguments)]
    fn projected_update(
        w: Tensor<Self, 2>,
        g: Tensor<Self, 2>,
        basis: &Basis<Self>,
        n: Tensor<Self, 2>,
        r: Tensor<Self, 2>,
        coef: UpdateCoefficients,
        residual: ResidualUpdate,
        zeta: Option<Tensor<Self, 1>>,
        skip: Skip<Self>,
    ) -> (Tensor<Self, 2>, Option<Tensor<Self, 1>>) {
        portable::projected_update(w, g, basis, n, r, coef, residual, zeta, skip)
    }

    /// Full-rank AdamW on `W` with gradient `g`: returns `(W, M, V)`. `W` and `g` may be stored
    /// below f32 (both the same), and so may `M` and `V` (bf16 state): computed in f32 (`N` from
    /// the f32 moments), the weight and the moments rounded once to their dtypes.
    fn adam_full_step(
        w: Tensor<Self, 2>,
        g: Tensor<Self, 2>,
        m: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        adam: AdamCoefficients,
        coef: UpdateCoefficients,
        skip: Skip<Self>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 2>) {
        portable::adam_full_step(w, g, m, v, adam, coef, skip)
    }

    /// Full-rank AdamW with blockwise 8-bit moments (AdamW-8bit): returns `(W, M, V)`; `W` and
    /// `g` as in [`adam_full_step`](Self::adam_full_step).
    #[allow(clippy::too_many_arguments)]
    fn adam_full_step_8bit(
        w: Tensor<Self, 2>,
        g: Tensor<Self, 2>,
        m: Blockwise8<Self>,
        v: Blockwise8<Self>,
        maps: &DynamicMaps<Self>,
        adam: AdamCoefficients,
        coef: UpdateCoefficients,
        skip: Skip<Self>,
    ) -> (Tensor<Self, 2>, Blockwise8<Self>, Blockwise8<Self>) {
        portable::adam_full_step_8bit(w, g, m, v, maps, adam, coef, skip)
    }

    /// A state-free step on the whole gradient: `W ← W − step·sign(G)` or `W ← W − step·G`
    /// with decay as in `coef` (`step` and `scale` of `coef` are ignored); `Fira`/`None`: decay
    /// only.
    fn state_free_step(
        w: Tensor<Self, 2>,
        g: Tensor<Self, 2>,
        rule: ResidualUpdate,
        coef: UpdateCoefficients,
        skip: Skip<Self>,
    ) -> Tensor<Self, 2> {
        portable::state_free_step(w, g, rule, coef, skip)
    }

    /// Dequantizes `bits`-bit codes packed `32/bits` per word (lowest bits first) into a
    /// `rows×cols` tensor: `x = scale_g·(q − zero_g)` per group `g` of `group` elements.
    #[allow(clippy::too_many_arguments)]
    fn dequantize_packed(
        packed: Tensor<Self, 1, Int>,
        scales: Tensor<Self, 1>,
        zeros: Tensor<Self, 1>,
        bits: u32,
        group: usize,
        rows: usize,
        cols: usize,
    ) -> Tensor<Self, 2> {
        portable::dequantize_packed(packed, scales, zeros, bits, group, rows, cols)
    }

    /// Quantizes `w` (`rows×cols`) to INT8 per group of `group` along rows: round to nearest
    /// without a key, else stochastic rounding with the counter-based uniforms of `key`. Returns
    /// `(codes [rows, cols/4], qparams [rows, cols/group, 2])` (scale, zero point; f32 whatever the
    /// dtype of `w`).
    fn quantize_int8(
        w: Tensor<Self, 2>,
        group: usize,
        key: Option<RoundingKey>,
    ) -> (Tensor<Self, 2, Int>, Tensor<Self, 3>) {
        portable::quantize_int8(w, group, key)
    }

    /// One flag per gradient, all on `device`: element `i` is 1 if `grads[i]` holds a NaN or ±Inf,
    /// else 0 (checked before every step, read back with one device sync). Fused: one coalesced
    /// pass over each gradient that only writes its flag where it finds a non-finite value, instead
    /// of burn's `is_finite().all()` chain and a reduction per gradient.
    fn non_finite_flags(grads: Vec<Tensor<Self, 2>>, device: &Device<Self>) -> Tensor<Self, 1> {
        portable::non_finite_flags(grads, device)
    }

    /// The polynomial of one Newton–Schulz step on the `r × r` Gram matrix `A = XᵀX`:
    /// `c₀·I + c₁·A + c₂·A²` (`a2` holds `A²`; `None` for `c₂ = 0`), so that the step is one
    /// product `X ← X·poly`. Fused: one pass (burn's composition launches 3–5 element-wise
    /// ops and the identity); the device projector's orthonormalizations run 13 such steps.
    fn newton_schulz_poly(
        a: Tensor<Self, 2>,
        a2: Option<Tensor<Self, 2>>,
        c: [f64; 3],
    ) -> Tensor<Self, 2> {
        portable::newton_schulz_poly(a, a2, c)
    }

    /// DCT alignment scores: the ℓ1 norm of each column of `G·Q` (right) or of each row of
    /// `Qᵀ·G` (left), `Q` the orthonormal DCT basis.
    fn dct_scores(g: Tensor<Self, 2>, q: Tensor<Self, 2>, left: bool) -> Tensor<Self, 1> {
        portable::dct_scores(g, q, left)
    }

    // The element-wise layers of the model's block (`crate::model`); each takes and returns
    // tensors of the input's dtype, computed in f32.

    /// RMSNorm of the rows of `x` `[rows, cols]` scaled by `gamma` `[cols]` ([`norm`]).
    fn rms_norm(x: Tensor<Self, 2>, gamma: Tensor<Self, 1>, epsilon: f64) -> Tensor<Self, 2> {
        norm::composed(x, gamma, epsilon)
    }

    /// The gradients `(dX, dγ)` of [`rms_norm`](Self::rms_norm) for the output gradient `dy`.
    fn rms_norm_backward(
        x: Tensor<Self, 2>,
        gamma: Tensor<Self, 1>,
        dy: Tensor<Self, 2>,
        epsilon: f64,
    ) -> (Tensor<Self, 2>, Tensor<Self, 1>) {
        norm::composed_backward(x, gamma, dy, epsilon)
    }

    /// `silu(G)·U` ([`swiglu`]).
    fn swiglu(g: Tensor<Self, 2>, u: Tensor<Self, 2>) -> Tensor<Self, 2> {
        swiglu::composed(g, u)
    }

    /// The gradients `(dG, dU)` of [`swiglu`](Self::swiglu) for the output gradient `dz`.
    fn swiglu_backward(
        g: Tensor<Self, 2>,
        u: Tensor<Self, 2>,
        dz: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        swiglu::composed_backward(g, u, dz)
    }

    /// `P = softmax(scale·S + M)` over the last axis of the attention scores `s`
    /// (`[batch, heads, queries, keys]`; `M` the causal mask: query `i` sees keys `j ≤ i`), in
    /// `s`'s dtype ([`attention`]). Portable: burn's `mask_fill` and `softmax`.
    fn causal_softmax(s: Tensor<Self, 4>, scale: f64) -> Tensor<Self, 4> {
        attention::composed_softmax(s, scale)
    }

    /// The gradient of the scores of [`causal_softmax`](Self::causal_softmax) from its output `p`
    /// and the output's gradient `dp`: `dS = scale·P ∘ (dP − rowsum(dP ∘ P))`, in `p`'s dtype.
    fn causal_softmax_backward(
        p: Tensor<Self, 4>,
        dp: Tensor<Self, 4>,
        scale: f64,
    ) -> Tensor<Self, 4> {
        attention::composed_softmax_backward(p, dp, scale)
    }

    /// The rotary embedding ([`rotary`]) of `x` (4-D, any strides: positions along `seq_axis`,
    /// 1 or 2, pairs along the last axis) by burn's table `freq` (`[max_seq, head_dim, 2]`), the
    /// inverse rotation where `inverse`; the result has `x`'s logical shape (the fused kernel
    /// writes it contiguous).
    fn rotary(
        x: Tensor<Self, 4>,
        freq: Tensor<Self, 3>,
        seq_axis: usize,
        inverse: bool,
    ) -> Tensor<Self, 4> {
        rotary::composed(x, freq, seq_axis, inverse)
    }
}

impl EmberBackend for burn::backend::Flex {}
