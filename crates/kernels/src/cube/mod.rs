//! [`EmberBackend`] for burn's CubeCL backends (`cuda`, `wgpu`): the fused kernels of
//! [`kernels`]. Tensors of another float type than f32, or 64-bit integers, take the portable
//! path (logged once).

#[cfg(feature = "cuda")]
pub mod cublas;
#[cfg(feature = "cuda")]
pub mod device_thread;
mod kernels;
mod layers;

use burn::prelude::*;
use burn::tensor::backend::DeviceOps;
use burn::tensor::{DType, Int, Shape, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::{empty_device_contiguous_dtype, empty_device_dtype};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::{ArrayArg, CubeCount};
use cubecl::server::ComputeServer;
use cubecl::server::{MemoryLayout, MemoryLayoutDescriptor};
use cubecl::zspace::metadata::Metadata;
use cubecl::{calculate_cube_count_elemwise, CubeDim};

use crate::{
    portable, AdamCoefficients, Basis, Blockwise8, DynamicMaps, EmberBackend, ResidualUpdate,
    RoundingKey, Skip, UpdateCoefficients,
};

use crate::block_elements;

type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

/// `$body` with the type `$E` bound to the Rust element of `$dtype` (`bf16` for BF16, else
/// `f32`): the launch of a kernel generic over the element of a weight or gradient.
macro_rules! with_element {
    ($dtype:expr, $E:ident => $body:expr) => {
        match $dtype {
            DType::BF16 => {
                type $E = burn::tensor::bf16;
                $body
            }
            _ => {
                type $E = f32;
                $body
            }
        }
    };
}

/// Whether `R` is CUDA's runtime (f16 arrays in the kernels).
#[cfg_attr(not(feature = "cuda"), allow(clippy::extra_unused_type_parameters))]
fn cuda_runtime<R: CubeRuntime>() -> bool {
    #[cfg(feature = "cuda")]
    {
        std::any::TypeId::of::<R>() == std::any::TypeId::of::<cubecl::cuda::CudaRuntime>()
    }
    #[cfg(not(feature = "cuda"))]
    false
}

fn float_in<R: CubeRuntime, B: Backend<FloatTensorPrimitive = CubeTensor<R>>, const D: usize>(
    t: Tensor<B, D>,
) -> CubeTensor<R> {
    dense(t.into_primitive().tensor())
}

/// A tensor with standard row-major strides (the kernels index it as a flat array). CUDA may
/// pad rows ("pitched" layouts, e.g. a row of 5461 f32): those are copied once into a dense
/// buffer.
fn dense<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    if t.is_contiguous() {
        return t;
    }
    let t = into_contiguous(t);
    if t.is_contiguous() {
        return t;
    }
    copy_dense(&t)
}

/// A fresh dense copy of `t` (which the kernel reads through its strides).
fn copy_dense<R: CubeRuntime>(t: &CubeTensor<R>) -> CubeTensor<R> {
    let shape = t.meta.shape().to_vec();
    let out = empty(t, shape, t.dtype);
    let len = out.meta.num_elements();
    let (count, dim) = launch_dims(&out, len);
    with_element!(t.dtype, E => kernels::copy_strided::launch::<E, R>(
        &out.client,
        count,
        dim,
        t.clone().into_tensor_arg(),
        arg(&out),
        len as u32,
    ));
    out
}

fn float_out<R: CubeRuntime, B: Backend<FloatTensorPrimitive = CubeTensor<R>>, const D: usize>(
    t: CubeTensor<R>,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn empty<R: CubeRuntime>(like: &CubeTensor<R>, shape: Vec<usize>, dtype: DType) -> CubeTensor<R> {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape),
        dtype,
    )
}

/// Contiguous tensors of `specs` (shape, dtype) in **one reservation**: one task on CubeCL's
/// device thread instead of one each. On CUDA that thread launches every kernel and runs every
/// reservation, and in a host-bound training step it is the bottleneck; a reservation walks the
/// memory pool's pages and is the larger part of its time (`docs/perf-notes.md`, "Where the
/// device thread's time goes"). Only for outputs that live as long as each other — the memory
/// returns to the pool when the last of them is dropped —: a step's new moments, or one op's
/// transients. `EMBER_GROUPED_ALLOC=off` reserves each alone (for comparisons).
fn empty_group<R: CubeRuntime>(
    like: &CubeTensor<R>,
    specs: Vec<(Vec<usize>, DType)>,
) -> Vec<CubeTensor<R>> {
    if !grouped_alloc() {
        return specs
            .into_iter()
            .map(|(shape, dtype)| empty(like, shape, dtype))
            .collect();
    }
    let descriptors = specs
        .iter()
        .map(|(shape, dtype)| {
            MemoryLayoutDescriptor::contiguous(Shape::from(shape.clone()), dtype.size())
        })
        .collect();
    like.client
        .empty_tensors(descriptors)
        .into_iter()
        .zip(specs)
        .map(|(MemoryLayout { memory, strides }, (shape, dtype))| {
            CubeTensor::new(
                like.client.clone(),
                memory,
                Metadata::new(Shape::from(shape), strides),
                like.device.clone(),
                dtype,
            )
        })
        .collect()
}

/// Whether [`empty_group`] reserves its tensors together (`EMBER_GROUPED_ALLOC` not `off`).
fn grouped_alloc() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("EMBER_GROUPED_ALLOC").as_deref(),
            Ok("off") | Ok("0")
        )
    })
}

/// Two tensors of one shape and dtype in one reservation ([`empty_group`]): a step's moments.
fn empty_pair<R: CubeRuntime>(
    like: &CubeTensor<R>,
    shape: Vec<usize>,
    dtype: DType,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let mut pair = empty_group(like, vec![(shape.clone(), dtype), (shape, dtype)]).into_iter();
    let first = pair.next().expect("two tensors");
    (first, pair.next().expect("two tensors"))
}

/// A 2-D tensor in CubeCL's own layout for the runtime: on CUDA rows padded to its pitch (up
/// to 512 bytes) where they are not already a multiple of it.
fn empty_pitched<R: CubeRuntime>(
    like: &CubeTensor<R>,
    shape: Vec<usize>,
    dtype: DType,
) -> CubeTensor<R> {
    empty_device_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape),
        dtype,
    )
}

/// Whether `t` is 2-D row-major with rows possibly padded (strides `[ld ≥ cols, 1]`): what a
/// kernel that indexes rows through `stride(0)` reads in place.
fn row_major<R: CubeRuntime>(t: &CubeTensor<R>) -> bool {
    let (shape, strides) = (t.meta.shape(), t.meta.strides());
    shape.len() == 2 && (strides[1] == 1 || shape[1] <= 1) && strides[0] >= shape[1]
}

fn arg<R: CubeRuntime>(t: &CubeTensor<R>) -> ArrayArg<R> {
    t.clone().into_array_arg()
}

/// `t`'s buffer as an array of `len` elements from its start — beyond its logical elements where
/// its rows are padded ([`pitched_outputs`] checks that the buffer holds them); [`arg`] gives a
/// tensor's own element count, which a checked kernel treats as the array's end.
fn flat_arg<R: CubeRuntime>(t: &CubeTensor<R>, len: usize) -> ArrayArg<R> {
    let binding = t.clone().binding();
    debug_assert!(binding.handle.size_in_used() >= (len * t.dtype.size()) as u64);
    // SAFETY: the callers pass at most the elements the buffer holds from its start (a dense
    // tensor's own count, or `rows · pitch` checked by `pitched_outputs`)
    unsafe { ArrayArg::from_raw_parts_binding(binding.handle, len) }
}

/// Whether the dense full-rank and subspace Adam steps run their vectorized kernels
/// (`EMBER_ADAM_VECTORS=off`: the one-element kernels, for comparisons).
fn vectorized_adam() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("EMBER_ADAM_VECTORS").as_deref() != Ok("off"))
}

/// The number of `width`-element vectors the Adam kernels read `len` elements in, where they
/// may (`EMBER_ADAM_VECTORS` not `off`, every tensor dense — not `strided` —, `len` a multiple of
/// `width`, every buffer starting on a 16-byte boundary); `None`: the one-element kernel.
fn adam_vectors<R: CubeRuntime>(
    len: usize,
    width: usize,
    strided: bool,
    ts: &[&CubeTensor<R>],
) -> Option<usize> {
    let aligned = ts
        .iter()
        .all(|t| t.handle.offset_start.unwrap_or(0).is_multiple_of(16));
    (vectorized_adam() && !strided && len.is_multiple_of(width) && aligned).then(|| len / width)
}

/// Outputs for [`EmberBackend::adam_full_step`] on inputs with padded rows: where `w`, `g`, `m`
/// and `v` are row-major with one row pitch `ld` (in elements, a multiple of `width`) and each
/// buffer holds `rows·ld` elements from its start, new `W`, `M`, `V` in CubeCL's own layout
/// with that same pitch, and the `rows·ld` elements the vectorized kernel then steps as dense
/// arrays. The padding's values are stepped too, but they stay padding: every reader of these
/// tensors goes through their strides. `None`: the strided kernel (pitches differ — e.g. bf16
/// weights beside f32 moments —, views, other runtimes' dense outputs, and
/// `EMBER_PITCHED_STEP=off`, for comparisons).
#[allow(clippy::type_complexity)]
fn pitched_outputs<R: CubeRuntime>(
    w: &CubeTensor<R>,
    g: &CubeTensor<R>,
    m: &CubeTensor<R>,
    v: &CubeTensor<R>,
    width: usize,
) -> Option<(CubeTensor<R>, CubeTensor<R>, CubeTensor<R>, usize)> {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *OFF.get_or_init(|| std::env::var("EMBER_PITCHED_STEP").as_deref() == Ok("off")) {
        return None;
    }
    let shape = w.meta.shape().to_vec();
    let [rows, _] = shape[..] else { return None };
    let ld = w.meta.strides()[0];
    let covers = |t: &CubeTensor<R>| {
        row_major(t)
            && t.meta.shape().to_vec() == shape
            && t.meta.strides()[0] == ld
            && t.handle.size_in_used() >= (rows * ld * t.dtype.size()) as u64
    };
    if !(ld.is_multiple_of(width) && fits(rows * ld) && [w, g, m, v].into_iter().all(covers)) {
        return None;
    }
    let w_out = empty_pitched(w, shape.clone(), w.dtype);
    let m_out = empty_pitched(w, shape.clone(), m.dtype);
    let v_out = empty_pitched(w, shape.clone(), m.dtype);
    let same = covers(&w_out) && covers(&m_out) && covers(&v_out);
    same.then_some((w_out, m_out, v_out, rows * ld))
}

fn launch_dims<R: CubeRuntime>(t: &CubeTensor<R>, units: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(&t.client, units.max(1));
    (
        calculate_cube_count_elemwise(&t.client, units.max(1), dim),
        dim,
    )
}

/// The skip flag of a guarded op as the kernel's `(skip, guarded)` arguments; without a flag the
/// slot is bound to `like` and never read.
fn skip_arg<R: CubeRuntime>(
    skip: &Option<CubeTensor<R>>,
    like: &CubeTensor<R>,
) -> (ArrayArg<R>, bool) {
    match skip {
        Some(s) => (arg(s), true),
        None => (arg(like), false),
    }
}

/// The skip flag's tensor, if any (f32 `[1]`, checked by [`skip_ok`]).
fn skip_in<R: CubeRuntime, B: Backend<FloatTensorPrimitive = CubeTensor<R>>>(
    skip: Skip<B>,
) -> Option<CubeTensor<R>> {
    skip.map(float_in)
}

/// Whether the kernels can read the skip flag: none, or f32 with one element.
fn skip_ok<B: Backend>(skip: &Skip<B>) -> bool {
    skip.as_ref()
        .is_none_or(|s| s.dtype() == DType::F32 && s.dims() == [1])
}

/// Lengths are passed to the kernels as u32.
fn fits(len: usize) -> bool {
    len < u32::MAX as usize
}

fn supported<F: FloatElement, I: IntElement>() -> bool {
    if !crate::fused_enabled() {
        return false;
    }
    static WARNED: std::sync::Once = std::sync::Once::new();
    let ok = F::dtype() == DType::F32 && I::dtype().size() == 4;
    if !ok {
        WARNED.call_once(|| {
            log::warn!(
                "ember-kernels: fused kernels need f32 floats and 32-bit ints (got {:?}, {:?}); \
                 using the portable path",
                F::dtype(),
                I::dtype()
            )
        });
    }
    ok
}

/// Whether `W` and its gradient are in a dtype the full-rank kernels and the NaN/Inf check read
/// and write as they are (f32, bf16 where the runtime has it), both the same.
fn weight_dtypes<B: Backend>(w: &Tensor<B, 2>, g: &Tensor<B, 2>) -> bool {
    w.dtype() == g.dtype() && matches!(w.dtype(), DType::F32 | DType::BF16)
}

/// Whether every float tensor is f32: the kernels read f32, whatever the backend's default float
/// type (a bf16 tensor on an f32 backend takes the portable path).
fn all_f32<B: Backend, const D: usize>(tensors: &[&Tensor<B, D>]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32)
}

/// Whether Fira's residual may be computed with the down projection
/// ([`EmberBackend::projection_down_residual`]); `EMBER_RESIDUAL_WITH_DOWN=off` leaves `up(R)` to
/// the update (the comparison).
#[cfg(feature = "cuda")]
fn residual_with_down() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("EMBER_RESIDUAL_WITH_DOWN").as_deref() != Ok("off"))
}

/// Rows of one column that one unit of Fira's `‖Ψ‖` pass sums (`kernels::fira_psi_partial`).
const FIRA_ROWS_PER_UNIT: usize = 8;

/// Units of the one cube of Fira's limiter (`kernels::fira_limit`), which sums the `‖Ψ‖` pass's
/// partials (a power of two).
const FIRA_LIMIT_UNITS: u32 = 256;

/// Units of a cube of Fira's `Ψ²` pass ([`kernels::fira_psi_partial`]: one partial sum a cube).
const FIRA_PSI_UNITS: u32 = 256;

/// Units of the cube of each output of Fira's `φ` ([`kernels::fira_phi`]).
const FIRA_PHI_UNITS: u32 = 64;

/// `cubes` one-dimensional cubes, as a grid no dimension of which exceeds 65 535 (the kernel
/// skips the cubes past `cubes` where the grid is rounded up).
fn grid_1d(cubes: usize) -> CubeCount {
    const MAX: usize = 65_535;
    let cubes = cubes.max(1);
    if cubes <= MAX {
        CubeCount::Static(cubes as u32, 1, 1)
    } else {
        CubeCount::Static(MAX as u32, cubes.div_ceil(MAX) as u32, 1)
    }
}

/// GaLore's update without a residual as one cuBLAS GEMM accumulating into `W` (in `W`'s dtype:
/// `P` and `N` rounded to it, the product and `β·W` in f32, `W` rounded once):
/// `W ← (1−λa)(1−λb)·W − (1−λa)·c·α·up(N)`, reading and writing `W` once. With a skip flag `N`
/// is 0 and the flag turns the scalars into `α = 0, β = 1` on the device. `Err(W)` (untouched)
/// where cuBLAS does not take it.
#[cfg(feature = "cuda")]
fn accumulate_update<R: CubeRuntime, B: Backend<FloatTensorPrimitive = CubeTensor<R>>>(
    w: Tensor<B, 2>,
    basis: &Basis<B>,
    n: &Tensor<B, 2>,
    coef: UpdateCoefficients,
    skip: &Skip<B>,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    // f16 operands into an f32 weight where `N` comes in f16 (`f16_update_operands`), else the
    // weight's dtype
    let dtype = match (w.dtype(), n.dtype()) {
        (DType::F32, DType::F16) => DType::F16,
        (w, _) => w,
    };
    let (p, n) = (basis.p.clone().cast(dtype), n.clone().cast(dtype));
    let (a, b) = if basis.left { (p, n) } else { (n, p) };
    let (a, b) = (a.into_primitive().tensor(), b.into_primitive().tensor());
    let keep = 1.0 - coef.decay_after;
    let alpha = (-keep * coef.step * coef.scale) as f32;
    let beta = (keep * (1.0 - coef.decay_before)) as f32;
    // `W` itself (not a clone): cuBLAS writes into its buffer where no one else holds it, else
    // into a fresh one
    let w = w.into_primitive().tensor();
    let skip_t = skip.clone().map(|s| s.into_primitive().tensor());
    match cublas::accumulate(&a, &b, &w, alpha, beta, skip_t.as_ref()) {
        Some(out) => Ok(float_out(out)),
        None => Err(float_out(w)),
    }
}

/// The projections' product `A·B` ([`EmberBackend::projection_matmul`]; `wide`: an f32 product
/// of two bf16/f16 operands, [`EmberBackend::projection_matmul_wide`]; `aligned`: rows padded
/// where they are not a multiple of 16 bytes, [`EmberBackend::projection_down`]).
#[cfg_attr(
    not(feature = "cuda"),
    allow(unused_variables, clippy::only_used_in_recursion)
)]
fn product<R, F, I, BT>(
    a: Tensor<Cube<R, F, I, BT>, 2>,
    b: Tensor<Cube<R, F, I, BT>, 2>,
    wide: bool,
    aligned: bool,
) -> Tensor<Cube<R, F, I, BT>, 2>
where
    R: CubeRuntime,
    R::Device: DeviceOps,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    #[cfg(feature = "cuda")]
    let rows = if aligned {
        cublas::Rows::Aligned
    } else {
        cublas::Rows::Dense
    };
    let prim = |t: &Tensor<Cube<R, F, I, BT>, 2>| t.clone().into_primitive().tensor();
    if wide {
        #[cfg(feature = "cuda")]
        if crate::fused_enabled()
            && a.dtype() == b.dtype()
            && matches!(a.dtype(), DType::BF16 | DType::F16)
        {
            if let Some(out) = cublas::matmul_f32_out::<R>(&prim(&a), &prim(&b), rows) {
                return float_out(out);
            }
        }
        return product(a.cast(DType::F32), b.cast(DType::F32), false, aligned);
    }
    // a bf16 operand (a gradient) with an f32 one (the basis): the f32 one rounded to bf16, the
    // product in f32 (cuBLAS: bf16 tensor cores, f32 accumulation and output); without cuBLAS
    // the bf16 one widened to f32
    if a.dtype() != b.dtype() {
        let low = if a.dtype() == DType::F32 {
            b.dtype()
        } else {
            a.dtype()
        };
        #[cfg(feature = "cuda")]
        if crate::fused_enabled() && matches!(low, DType::BF16 | DType::F16) {
            let (pa, pb) = (prim(&a.clone().cast(low)), prim(&b.clone().cast(low)));
            if let Some(out) = cublas::matmul_f32_out::<R>(&pa, &pb, rows) {
                return float_out(out);
            }
        }
        let _ = low;
        return portable::projection_matmul(a, b);
    }
    #[cfg(feature = "cuda")]
    if crate::fused_enabled() {
        if let Some(out) = cublas::matmul::<R>(&prim(&a), &prim(&b), rows) {
            return float_out(out);
        }
    }
    a.matmul(b)
}

/// Largest block of the fused 8-bit kernel: one unit per word of four codes, 256 units a cube.
const MAX_8BIT_BLOCK: usize = 1024;

/// The shared launch of the 8-bit Adam kernel (`w`: update the weight, else write `N`), its
/// output in `out_dtype` (`g`'s where it updates the weight).
#[allow(clippy::too_many_arguments)]
fn launch_adam_8bit<
    R: CubeRuntime,
    B: Backend<FloatTensorPrimitive = CubeTensor<R>, IntTensorPrimitive = CubeTensor<R>>,
>(
    g: Tensor<B, 2>,
    w: Option<(Tensor<B, 2>, UpdateCoefficients)>,
    m: Blockwise8<B>,
    v: Blockwise8<B>,
    maps: &DynamicMaps<B>,
    c: AdamCoefficients,
    skip: Skip<B>,
    out_dtype: DType,
) -> (Tensor<B, 2>, Blockwise8<B>, Blockwise8<B>) {
    let shape = g.dims().to_vec();
    let len = m.len;
    let skip = skip_in(skip);
    let blocks = m.blocks();
    let words_per_block = m.block / 4;
    let g = float_in(g);
    let (w, coef) = match w {
        Some((w, coef)) => (Some(float_in(w)), coef),
        None => (
            None,
            UpdateCoefficients {
                decay_before: 0.0,
                scale: 1.0,
                step: 0.0,
                decay_after: 0.0,
            },
        ),
    };
    let int_in = |t: Tensor<B, 1, Int>| into_contiguous(t.into_primitive());
    let (c1, c2) = (int_in(m.codes), int_in(v.codes));
    let (a1, a2) = (float_in(m.absmax), float_in(v.absmax));
    let (map_1, map_2) = (
        float_in(maps.signed.clone()),
        float_in(maps.unsigned.clone()),
    );
    let out = empty(&g, shape, out_dtype);
    // the new state (codes and scales of both moments) in one reservation
    let mut state = empty_group(
        &g,
        vec![
            (vec![blocks * words_per_block], c1.dtype),
            (vec![blocks * words_per_block], c2.dtype),
            (vec![blocks], DType::F32),
            (vec![blocks], DType::F32),
        ],
    )
    .into_iter();
    let mut next = || state.next().expect("four tensors");
    let (c1_out, c2_out, a1_out, a2_out) = (next(), next(), next(), next());
    let dim = CubeDim::new_1d(words_per_block as u32);
    let count = calculate_cube_count_elemwise(&g.client, blocks * words_per_block, dim);
    let w_arg = w.as_ref().map(arg).unwrap_or_else(|| arg(&g));
    let (skip_arg, guarded) = skip_arg(&skip, &g);
    with_element!(g.dtype, E => with_element!(out_dtype, O => kernels::adam_8bit::launch::<E, O, R>(
        &g.client,
        count,
        dim,
        arg(&g),
        w_arg,
        arg(&out),
        arg(&c1),
        arg(&a1),
        arg(&c2),
        arg(&a2),
        arg(&c1_out),
        arg(&a1_out),
        arg(&c2_out),
        arg(&a2_out),
        arg(&map_1),
        arg(&map_2),
        skip_arg,
        len as u32,
        blocks as u32,
        c.beta_1 as f32,
        (1.0 - c.beta_1) as f32,
        c.beta_2 as f32,
        (1.0 - c.beta_2) as f32,
        c.sqrt_v_divisor as f32,
        c.epsilon as f32,
        (1.0 - coef.decay_before) as f32,
        (coef.step * coef.scale) as f32,
        (1.0 - coef.decay_after) as f32,
        words_per_block as u32,
        w.is_some(),
        guarded,
    )));
    let q = |codes, absmax, block| Blockwise8 {
        codes: Tensor::from_primitive(codes),
        absmax: float_out(absmax),
        len,
        block,
    };
    (
        float_out(out),
        q(c1_out, a1_out, m.block),
        q(c2_out, a2_out, v.block),
    )
}

/// Whether the model-layer kernels ([`layers`]) take tensors of these dtypes: all one dtype,
/// f32 or bf16, with the fused kernels on.
fn layer_dtypes(dtypes: &[DType]) -> bool {
    crate::fused_enabled()
        && matches!(dtypes[0], DType::F32 | DType::BF16)
        && dtypes.iter().all(|&d| d == dtypes[0])
}

/// One cube of [`layers::ROW_UNITS`] units per row.
fn row_cubes<R: CubeRuntime>(t: &CubeTensor<R>, rows: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new_1d(layers::ROW_UNITS);
    let units = rows.max(1) * layers::ROW_UNITS as usize;
    (calculate_cube_count_elemwise(&t.client, units, dim), dim)
}

/// Whether the fused 8-bit kernel can run these moments.
fn fits_8bit<B: Backend>(len: usize, m: &Blockwise8<B>, v: &Blockwise8<B>) -> bool {
    m.len == len
        && v.len == len
        && m.block == v.block
        && m.block.is_multiple_of(4)
        && m.block <= MAX_8BIT_BLOCK
        && fits(m.blocks() * m.block)
}

impl<R, F, I, BT> EmberBackend for Cube<R, F, I, BT>
where
    R: CubeRuntime,
    R::Server: ComputeServer,
    R::Device: DeviceOps,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn fused_kernels() -> bool {
        supported::<F, I>()
    }

    fn native_dtype(dtype: DType) -> bool {
        match dtype {
            DType::F32 => true,
            #[cfg(feature = "cuda")]
            DType::BF16 => {
                supported::<F, I>() && crate::fused_enabled() && cublas::available::<R>()
            }
            _ => false,
        }
    }

    fn f16_update_operands() -> bool {
        #[cfg(feature = "cuda")]
        {
            supported::<F, I>()
                && crate::fused_enabled()
                && cublas::available::<R>()
                && cublas::f16_update_operands()
        }
        #[cfg(not(feature = "cuda"))]
        false
    }

    fn projection_matmul(a: Tensor<Self, 2>, b: Tensor<Self, 2>) -> Tensor<Self, 2> {
        product::<R, F, I, BT>(a, b, false, false)
    }

    fn projection_matmul_wide(a: Tensor<Self, 2>, b: Tensor<Self, 2>) -> Tensor<Self, 2> {
        product::<R, F, I, BT>(a, b, true, false)
    }

    fn projection_down(a: Tensor<Self, 2>, b: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let wide = crate::down_is_wide(a.dtype(), b.dtype());
        product::<R, F, I, BT>(a, b, wide, true)
    }

    fn projection_down_residual(
        basis: &Basis<Self>,
        g: Tensor<Self, 2>,
        scale: f64,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>, bool) {
        #[cfg(feature = "cuda")]
        if crate::fused_enabled()
            && residual_with_down()
            && cublas::available::<R>()
            && g.dtype() == DType::F32
            && basis.p.dtype() == DType::F32
        {
            // `G` by value: a handle no one else holds is written in place. One the caller still
            // holds is copied first, so that the step takes this path, and its rounding, either
            // way (queued cuBLAS windows hold bindings, not handles, so a gradient is not held
            // by the window that produced it: that race made Fira's runs differ at random)
            let mut pg = g.into_primitive().tensor();
            if !pg.can_mut() {
                cublas::note_shared(cublas::Shared::Residual);
                pg = copy_dense(&pg);
            }
            let pt = basis.p.clone().transpose().into_primitive().tensor();
            let p = basis.p.clone().into_primitive().tensor();
            let operands = if basis.left { (&pt, &pg) } else { (&pg, &pt) };
            let r = cublas::down_residual::<R>(operands, &p, basis.left, &pg, scale as f32);
            let g = float_out::<R, Self, 2>(pg);
            if let Some(r) = r {
                return (float_out(r), g, true);
            }
            return (basis.down(g.clone()), g, false);
        }
        let _ = scale;
        (basis.down(g.clone()), g, false)
    }

    fn projection_matmul_pair(
        (a1, b1): (Tensor<Self, 2>, Tensor<Self, 2>),
        (a2, b2): (Tensor<Self, 2>, Tensor<Self, 2>),
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        #[cfg(feature = "cuda")]
        if crate::fused_enabled() && a1.dtype() == b1.dtype() && a2.dtype() == b2.dtype() {
            let p = |t: &Tensor<Self, 2>| t.clone().into_primitive().tensor();
            let (pa1, pb1, pa2, pb2) = (p(&a1), p(&b1), p(&a2), p(&b2));
            if let Some((c1, c2)) = cublas::matmul_pair::<R>((&pa1, &pb1), (&pa2, &pb2)) {
                return (float_out(c1), float_out(c2));
            }
        }
        (
            Self::projection_matmul(a1, b1),
            Self::projection_matmul(a2, b2),
        )
    }

    fn subspace_adam(
        r: Tensor<Self, 2>,
        m: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        c: AdamCoefficients,
        skip: Skip<Self>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 2>) {
        Self::subspace_adam_into(r, m, v, c, skip, DType::F32)
    }

    fn subspace_adam_into(
        r: Tensor<Self, 2>,
        m: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        c: AdamCoefficients,
        skip: Skip<Self>,
        n_dtype: DType,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 2>) {
        let len = r.shape().num_elements();
        if !supported::<F, I>() || !fits(len) || !all_f32(&[&r, &m, &v]) || !skip_ok(&skip) {
            let (n, m, v) = portable::subspace_adam(r, m, v, c, skip);
            return (n.cast(n_dtype), m, v);
        }
        // `N` written in f16 or bf16 where the runtime has them (CUDA), else in f32 and cast
        let n_native = n_dtype == DType::F32
            || (matches!(n_dtype, DType::F16 | DType::BF16) && cuda_runtime::<R>());
        if !n_native {
            let (n, m, v) = Self::subspace_adam_into(r, m, v, c, skip, DType::F32);
            return (n.cast(n_dtype), m, v);
        }
        let skip = skip_in(skip);
        let shape = r.dims().to_vec();
        // `R` read through its row stride (a padded product of `projection_down`), else dense
        let r = r.into_primitive().tensor();
        let r = if row_major(&r) { r } else { dense(r) };
        let (m, v) = (float_in(m), float_in(v));
        // a 16-bit `N` goes to the update GEMM only: rows padded where cuBLAS needs it (CUDA)
        #[cfg(feature = "cuda")]
        let n = if n_dtype != DType::F32
            && cublas::aligned_rows()
            && cublas::unaligned(shape[1], n_dtype)
        {
            empty_pitched(&r, shape.clone(), n_dtype)
        } else {
            empty(&r, shape.clone(), n_dtype)
        };
        #[cfg(not(feature = "cuda"))]
        let n = empty(&r, shape.clone(), n_dtype);
        let strided = !(r.is_contiguous() && n.is_contiguous());
        let cols = shape[1];
        let (m_out, v_out) = empty_pair(&r, shape, DType::F32);
        let (skip_arg, guarded) = skip_arg(&skip, &r);
        // dense `R` and `N`: four elements a load and a store (as `adam_full_step`)
        if let Some(vectors) = adam_vectors(len, 4, strided, &[&r, &m, &v, &n, &m_out, &v_out]) {
            let (count, dim) = launch_dims(&r, vectors);
            macro_rules! launch_vec {
                ($O:ty) => {
                    kernels::subspace_adam_vec::launch::<$O, R>(
                        &r.client,
                        count,
                        dim,
                        4,
                        arg(&r),
                        arg(&m),
                        arg(&v),
                        arg(&m_out),
                        arg(&v_out),
                        arg(&n),
                        skip_arg,
                        vectors as u32,
                        c.beta_1 as f32,
                        c.beta_2 as f32,
                        (1.0 / c.sqrt_v_divisor) as f32,
                        c.epsilon as f32,
                        guarded,
                    )
                };
            }
            match n_dtype {
                DType::F16 => launch_vec!(burn::tensor::f16),
                DType::BF16 => launch_vec!(burn::tensor::bf16),
                _ => launch_vec!(f32),
            }
            return (float_out(n), float_out(m_out), float_out(v_out));
        }
        let (count, dim) = launch_dims(&r, len);
        let targ = |t: &CubeTensor<R>| t.clone().into_tensor_arg();
        macro_rules! launch {
            ($O:ty) => {
                kernels::subspace_adam::launch::<$O, R>(
                    &r.client,
                    count,
                    dim,
                    targ(&r),
                    arg(&m),
                    arg(&v),
                    arg(&m_out),
                    arg(&v_out),
                    targ(&n),
                    skip_arg,
                    len as u32,
                    cols as u32,
                    c.beta_1 as f32,
                    c.beta_2 as f32,
                    (1.0 / c.sqrt_v_divisor) as f32,
                    c.epsilon as f32,
                    guarded,
                    strided,
                )
            };
        }
        match n_dtype {
            DType::F16 => launch!(burn::tensor::f16),
            DType::BF16 => launch!(burn::tensor::bf16),
            _ => launch!(f32),
        }
        (float_out(n), float_out(m_out), float_out(v_out))
    }

    fn adam_8bit(
        r: Tensor<Self, 2>,
        m: Blockwise8<Self>,
        v: Blockwise8<Self>,
        maps: &DynamicMaps<Self>,
        c: AdamCoefficients,
        skip: Skip<Self>,
    ) -> (Tensor<Self, 2>, Blockwise8<Self>, Blockwise8<Self>) {
        let len = r.shape().num_elements();
        if !supported::<F, I>() || !all_f32(&[&r]) || !fits_8bit(len, &m, &v) || !skip_ok(&skip) {
            return portable::adam_8bit(r, m, v, maps, c, skip);
        }
        launch_adam_8bit(r, None, m, v, maps, c, skip, DType::F32)
    }

    fn adam_8bit_into(
        r: Tensor<Self, 2>,
        m: Blockwise8<Self>,
        v: Blockwise8<Self>,
        maps: &DynamicMaps<Self>,
        c: AdamCoefficients,
        skip: Skip<Self>,
        n_dtype: DType,
    ) -> (Tensor<Self, 2>, Blockwise8<Self>, Blockwise8<Self>) {
        let len = r.shape().num_elements();
        if !supported::<F, I>()
            || !all_f32(&[&r])
            || !fits_8bit(len, &m, &v)
            || !skip_ok(&skip)
            || !matches!(n_dtype, DType::F32 | DType::BF16)
        {
            let (n, m, v) = Self::adam_8bit(r, m, v, maps, c, skip);
            return (n.cast(n_dtype), m, v);
        }
        launch_adam_8bit(r, None, m, v, maps, c, skip, n_dtype)
    }

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
        let len = g.shape().num_elements();
        if !supported::<F, I>()
            || !weight_dtypes(&w, &g)
            || !fits_8bit(len, &m, &v)
            || !skip_ok(&skip)
        {
            return portable::adam_full_step_8bit(w, g, m, v, maps, adam, coef, skip);
        }
        let dtype = g.dtype();
        launch_adam_8bit(g, Some((w, coef)), m, v, maps, adam, skip, dtype)
    }

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
        // a bf16 weight, or an f16 `N` for an f32 weight (`f16_update_operands`): without a
        // residual, one GEMM accumulating into the weight (cuBLAS: `P` and `N` rounded to the
        // operands' type, the product and `β·W` in f32, `W` rounded once to its dtype);
        // otherwise, or where cuBLAS does not take it, the update in f32, rounded once
        #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
        let mut w = w;
        if w.dtype() != DType::F32 || n.dtype() == DType::F16 {
            #[cfg(feature = "cuda")]
            if residual == ResidualUpdate::None
                && supported::<F, I>()
                && crate::fused_enabled()
                && skip_ok(&skip)
                && matches!(
                    (w.dtype(), n.dtype()),
                    (DType::BF16, _) | (DType::F32, DType::F16)
                )
            {
                match accumulate_update(w, basis, &n, coef, &skip) {
                    Ok(w) => return (w, None),
                    Err(back) => w = back,
                }
            }
            let dtype = w.dtype();
            // (`N` may come rounded to the weight's dtype: `adam_8bit_into`, or to f16)
            let (w, zeta) = Self::projected_update(
                w.cast(DType::F32),
                g.cast(DType::F32),
                basis,
                n.cast(DType::F32),
                r,
                coef,
                residual,
                zeta,
                skip,
            );
            return (w.cast(dtype), zeta);
        }
        let [rows, cols] = w.dims();
        // Fira's φ scales the columns (`[1, cols]`) or the rows (`[rows, 1]`) of the residual
        // (norms along the low-rank shape's longer side, as `portable::fira_phi`)
        let [lr_rows, lr_cols] = n.dims();
        let phi_dims = match residual {
            ResidualUpdate::Fira { .. } if lr_rows < lr_cols => Some([1, lr_cols]),
            ResidualUpdate::Fira { .. } => Some([lr_rows, 1]),
            _ => None,
        };
        let phi_ok = phi_dims.is_none_or(|d| d == [1, cols] || d == [rows, 1]);
        if !supported::<F, I>()
            || !fits(rows * cols)
            || cols == 0
            || !phi_ok
            || !all_f32(&[&w, &g, &basis.p, &n, &r])
            || !skip_ok(&skip)
        {
            return portable::projected_update(w, g, basis, n, r, coef, residual, zeta, skip);
        }
        // no residual: the back-projection and the update are one GEMM accumulating into `W`
        #[cfg(feature = "cuda")]
        let w = match residual {
            ResidualUpdate::None => match accumulate_update(w, basis, &n, coef, &skip) {
                Ok(w) => return (w, None),
                Err(w) => w,
            },
            _ => w,
        };
        let skip_t = skip_in(skip.clone());
        let w = float_in(w);
        // Fira: the new weight and the new `ζ` in one reservation (both outlive the step, and
        // both are replaced by the next one)
        let (w_out, mut zeta_slot) = if phi_dims.is_some() {
            let mut both = empty_group(
                &w,
                vec![(vec![rows, cols], DType::F32), (vec![1], DType::F32)],
            )
            .into_iter();
            let w_out = both.next().expect("two tensors");
            (w_out, both.next())
        } else {
            (empty(&w, vec![rows, cols], DType::F32), None)
        };
        let block = (block_elements() / cols).clamp(1, rows.max(1));
        let blocks = || {
            (0..rows)
                .step_by(block)
                .map(move |i| i..(i + block).min(rows))
        };
        let g = match residual {
            ResidualUpdate::None => None,
            _ => Some(float_in(g)),
        };

        // Fira: φ, then ‖Ψ‖ block by block and the limiter, all on the device. With one block
        // its `up(R)` is kept for the update below (one back-projection fewer).
        let single = rows <= block;
        let mut kept_u_r = None;
        let mut new_zeta = None;
        let mut fira = None;
        // Fira with its residual given (`G − α·up(R)` computed with the down projection): no
        // `up(R)` here, and `α = 0` where the kernels would subtract it
        let given = matches!(residual, ResidualUpdate::Fira { given: true, .. });
        if let (ResidualUpdate::Fira { gamma, .. }, Some(phi_dims)) = (residual, phi_dims) {
            let per_column = phi_dims == [1, cols];
            let (n_d, r_d) = (float_in(n.clone()), float_in(r.clone()));
            // partial sums of `Ψ²`, one a cube of the pass over groups of rows, every block's in
            // one buffer, summed by the limiter's cube
            let group = FIRA_ROWS_PER_UNIT;
            let units_of = |k: &std::ops::Range<usize>| k.len().div_ceil(group) * cols;
            let cubes_of =
                |k: &std::ops::Range<usize>| units_of(k).div_ceil(FIRA_PSI_UNITS as usize);
            let total: usize = blocks().map(|k| cubes_of(&k)).sum();
            // `φ`, the partial sums, the limiter and (CUDA, the update as one GEMM below) the
            // low-rank part `M`: the op's transients, in one reservation
            #[cfg(feature = "cuda")]
            let with_low = basis.left == per_column && cublas::available::<R>();
            #[cfg(not(feature = "cuda"))]
            let with_low = false;
            let mut specs = vec![
                (phi_dims.to_vec(), DType::F32),
                (vec![total], DType::F32),
                (vec![1], DType::F32),
            ];
            if with_low {
                specs.push((vec![lr_rows, lr_cols], DType::F32));
            }
            let mut transients = empty_group(&n_d, specs).into_iter();
            let mut next = || transients.next().expect("one tensor a spec");
            let (phi, squares, limiter) = (next(), next(), next());
            let low = with_low.then(next);
            let columns = phi_dims[0] == 1;
            kernels::fira_phi::launch::<R>(
                &phi.client,
                grid_1d(phi_dims[0] * phi_dims[1]),
                CubeDim::new_1d(FIRA_PHI_UNITS),
                arg(&n_d),
                arg(&r_d),
                arg(&phi),
                lr_rows as u32,
                lr_cols as u32,
                columns,
                FIRA_PHI_UNITS,
            );
            let g = g.as_ref().expect("residual gradient");
            let mut out0 = 0;
            for rows_k in blocks() {
                // (given: `up(R)` is not needed; its argument is bound to `G`, scaled by 0)
                let u_r = (!given).then(|| float_in(basis.up_rows(&r, rows_k.clone())));
                let cubes = cubes_of(&rows_k);
                kernels::fira_psi_partial::launch::<R>(
                    &g.client,
                    grid_1d(cubes),
                    CubeDim::new_1d(FIRA_PSI_UNITS),
                    arg(g),
                    arg(u_r.as_ref().unwrap_or(g)),
                    arg(&phi),
                    arg(&squares),
                    (rows_k.start * cols) as u32,
                    rows_k.len() as u32,
                    cols as u32,
                    rows_k.start as u32,
                    group as u32,
                    if given { 0.0 } else { coef.scale as f32 },
                    out0 as u32,
                    cubes as u32,
                    per_column,
                    FIRA_PSI_UNITS,
                );
                out0 += cubes;
                if single {
                    kept_u_r = u_r;
                }
            }
            // (`ζ` is state: reserved with the new weight, not with the transients)
            let zeta_out = zeta_slot
                .take()
                .unwrap_or_else(|| empty(&squares, vec![1], DType::F32));
            let prev = zeta.map(float_in);
            let (skip_a, guarded) = skip_arg(&skip_t, &squares);
            kernels::fira_limit::launch::<R>(
                &squares.client,
                CubeCount::Static(1, 1, 1),
                CubeDim::new_1d(FIRA_LIMIT_UNITS),
                arg(&squares),
                arg(prev.as_ref().unwrap_or(&squares)),
                skip_a,
                arg(&limiter),
                arg(&zeta_out),
                total as u32,
                gamma as f32,
                f32::INFINITY,
                FIRA_LIMIT_UNITS,
                prev.is_some(),
                guarded,
            );
            new_zeta = Some(float_out::<R, Self, 1>(zeta_out));
            fira = Some((phi, limiter, per_column, low));
        }

        // Fira on CUDA: `W' = post·(pre·W − c·(G∘φ)/l) − post·up(M)` with the low-rank
        // `M = c·α·N − c·α·(R∘φ)/l`: one full-size pass and one GEMM accumulating into `W'` —
        // no second `up(R)`, no `up(N)` block, no block loop
        #[cfg(feature = "cuda")]
        if let Some((phi, limiter, per_column, Some(low))) = &fira {
            let g = g.as_ref().expect("residual gradient");
            let (n_d, r_d) = (float_in(n.clone()), float_in(r.clone()));
            let low_len = lr_rows * lr_cols;
            let step = (coef.step * coef.scale) as f32;
            let len = rows * cols;
            let (count, dim) = launch_dims(&w, len + low_len);
            let (skip_a, guarded) = skip_arg(&skip_t, &w);
            let post = (1.0 - coef.decay_after) as f32;
            // `M = a·N − b·(R∘φ)/l`: with the residual given, `b = 0`
            let b_r = if given { 0.0 } else { step };
            kernels::fira_parts::launch::<R>(
                &w.client,
                count,
                dim,
                arg(&w),
                arg(g),
                arg(&n_d),
                arg(&r_d),
                arg(phi),
                arg(limiter),
                skip_a,
                arg(&w_out),
                arg(low),
                len as u32,
                cols as u32,
                low_len as u32,
                lr_cols as u32,
                (1.0 - coef.decay_before) as f32,
                coef.step as f32,
                post,
                step,
                b_r,
                *per_column,
                guarded,
            );
            let p = basis.p.clone().into_primitive().tensor();
            let (a, b) = if basis.left {
                (p, low.clone())
            } else {
                (low.clone(), p)
            };
            // held: `M = 0`, and the flag makes the scalars `α = 0, β = 1` on the device
            if let Some(out) = cublas::accumulate(&a, &b, &w_out, -post, 1.0, skip_t.as_ref()) {
                return (float_out(out), new_zeta);
            }
            let up = basis.up(float_out(low.clone())).mul_scalar(post);
            return (float_out::<R, Self, 2>(w_out).sub(up), new_zeta);
        }
        let (mode, residual_step) = match residual {
            ResidualUpdate::None => (kernels::MODE_NONE, 0.0),
            ResidualUpdate::Sign { step } => (kernels::MODE_SIGN, step),
            ResidualUpdate::Sgd { step } => (kernels::MODE_SGD, step),
            ResidualUpdate::Fira { .. } => (kernels::MODE_FIRA, coef.step),
        };
        for rows_k in blocks() {
            // with a residual, `up(N)` and `up(R)` of the block in one cuBLAS window
            let (u_n, u_r) = match (residual, kept_u_r.take()) {
                (ResidualUpdate::None, _) => (float_in(basis.up_rows(&n, rows_k.clone())), None),
                (_, Some(u_r)) => (float_in(basis.up_rows(&n, rows_k.clone())), Some(u_r)),
                (_, None) if given => (float_in(basis.up_rows(&n, rows_k.clone())), None),
                (_, None) => {
                    let (u_n, u_r) = basis.up_rows_pair(&n, &r, rows_k.clone());
                    (float_in(u_n), Some(float_in(u_r)))
                }
            };
            let len = rows_k.len() * cols;
            let (count, dim) = launch_dims(&u_n, len);
            // unused inputs of a mode are bound to `u_n`
            let g_arg = g.as_ref().map(arg).unwrap_or_else(|| arg(&u_n));
            let u_r_arg = u_r.as_ref().map(arg).unwrap_or_else(|| arg(&u_n));
            let (phi_arg, limiter_arg, per_column) = match &fira {
                Some((phi, limiter, per_column, _)) => (arg(phi), arg(limiter), *per_column),
                None => (arg(&u_n), arg(&u_n), true),
            };
            let (skip_arg, guarded) = skip_arg(&skip_t, &u_n);
            kernels::apply_update::launch::<R>(
                &w.client,
                count,
                dim,
                arg(&w),
                arg(&w_out),
                arg(&u_n),
                g_arg,
                u_r_arg,
                phi_arg,
                limiter_arg,
                skip_arg,
                (rows_k.start * cols) as u32,
                len as u32,
                cols as u32,
                rows_k.start as u32,
                (1.0 - coef.decay_before) as f32,
                (coef.step * coef.scale) as f32,
                residual_step as f32,
                if given { 0.0 } else { coef.scale as f32 },
                (1.0 - coef.decay_after) as f32,
                mode,
                per_column,
                guarded,
            );
        }
        (float_out(w_out), new_zeta)
    }

    fn adam_full_step(
        w: Tensor<Self, 2>,
        g: Tensor<Self, 2>,
        m: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        adam: AdamCoefficients,
        coef: UpdateCoefficients,
        skip: Skip<Self>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 2>) {
        let len = w.shape().num_elements();
        if !supported::<F, I>()
            || !fits(len)
            || !weight_dtypes(&w, &g)
            || !weight_dtypes(&m, &v)
            || !skip_ok(&skip)
        {
            return portable::adam_full_step(w, g, m, v, adam, coef, skip);
        }
        let skip = skip_in(skip);
        let shape = w.dims().to_vec();
        let cols = shape[1];
        // pitched rows (e.g. 5461 columns) or views are read in place, through their strides
        let raw = |t: Tensor<Self, 2>| t.into_primitive().tensor();
        let (w, g, m, v) = (raw(w), raw(g), raw(m), raw(v));
        let strided = ![&w, &g, &m, &v].iter().all(|t| t.is_contiguous());
        // dense inputs: 16-byte loads and stores (the widest of the weight's and the moments'
        // elements)
        let width = 16 / w.dtype.size().max(m.dtype.size());
        // the vectorized kernel on `flat` elements of each buffer (dense: the tensor's own)
        let vector_step = |outs: [&CubeTensor<R>; 3], flat: usize, vectors: usize| {
            let (skip_arg, guarded) = skip_arg(&skip, &w);
            let units = vectors.div_ceil(kernels::ADAM_VECTORS_PER_UNIT);
            let (count, dim) = launch_dims(&w, units);
            let a = |t: &CubeTensor<R>| flat_arg(t, flat);
            with_element!(w.dtype, E => with_element!(m.dtype, S => kernels::adam_full_vec::launch::<E, S, R>(
                &w.client,
                count,
                dim,
                width,
                a(&w),
                a(&g),
                a(&m),
                a(&v),
                a(outs[0]),
                a(outs[1]),
                a(outs[2]),
                skip_arg,
                vectors as u32,
                units as u32,
                adam.beta_1 as f32,
                adam.beta_2 as f32,
                (1.0 / adam.sqrt_v_divisor) as f32,
                adam.epsilon as f32,
                (1.0 - coef.decay_before) as f32,
                (coef.step * coef.scale) as f32,
                (1.0 - coef.decay_after) as f32,
                guarded,
            )));
        };
        // CUDA's pitched rows (2048×5461): where all four share one row pitch, their buffers are
        // stepped whole, padding included, into outputs of the same pitch (`pitched_outputs`)
        if let Some((w_out, m_out, v_out, flat)) = strided
            .then(|| pitched_outputs(&w, &g, &m, &v, width))
            .flatten()
        {
            let all = [&w, &g, &m, &v, &w_out, &m_out, &v_out];
            if let Some(vectors) = adam_vectors(flat, width, false, &all) {
                vector_step([&w_out, &m_out, &v_out], flat, vectors);
                return (float_out(w_out), float_out(m_out), float_out(v_out));
            }
        }
        let w_out = empty(&w, shape.clone(), w.dtype);
        let (m_out, v_out) = empty_pair(&w, shape, m.dtype);
        let all = [&w, &g, &m, &v, &w_out, &m_out, &v_out];
        if let Some(vectors) = adam_vectors(len, width, strided, &all) {
            vector_step([&w_out, &m_out, &v_out], len, vectors);
            return (float_out(w_out), float_out(m_out), float_out(v_out));
        }
        let (skip_arg, guarded) = skip_arg(&skip, &w);
        let units = len.div_ceil(kernels::ADAM_PER_UNIT);
        let (count, dim) = launch_dims(&w, units);
        let targ = |t: &CubeTensor<R>| t.clone().into_tensor_arg();
        with_element!(w.dtype, E => with_element!(m.dtype, S => kernels::adam_full::launch::<E, S, R>(
            &w.client,
            count,
            dim,
            targ(&w),
            targ(&g),
            targ(&m),
            targ(&v),
            arg(&w_out),
            arg(&m_out),
            arg(&v_out),
            skip_arg,
            len as u32,
            cols as u32,
            units as u32,
            adam.beta_1 as f32,
            adam.beta_2 as f32,
            (1.0 / adam.sqrt_v_divisor) as f32,
            adam.epsilon as f32,
            (1.0 - coef.decay_before) as f32,
            (coef.step * coef.scale) as f32,
            (1.0 - coef.decay_after) as f32,
            guarded,
            strided,
        )));
        (float_out(w_out), float_out(m_out), float_out(v_out))
    }

    fn state_free_step(
        w: Tensor<Self, 2>,
        g: Tensor<Self, 2>,
        rule: ResidualUpdate,
        coef: UpdateCoefficients,
        skip: Skip<Self>,
    ) -> Tensor<Self, 2> {
        let len = w.shape().num_elements();
        let (step, sign) = match rule {
            ResidualUpdate::Sign { step } => (step, true),
            ResidualUpdate::Sgd { step } => (step, false),
            _ => return portable::state_free_step(w, g, rule, coef, skip),
        };
        if !supported::<F, I>() || !fits(len) || !all_f32(&[&w, &g]) || !skip_ok(&skip) {
            return portable::state_free_step(w, g, rule, coef, skip);
        }
        let skip = skip_in(skip);
        let shape = w.dims().to_vec();
        let (w, g) = (float_in(w), float_in(g));
        let w_out = empty(&w, shape, DType::F32);
        let (count, dim) = launch_dims(&w, len);
        let (skip_arg, guarded) = skip_arg(&skip, &w);
        kernels::state_free::launch::<R>(
            &w.client,
            count,
            dim,
            arg(&w),
            arg(&w_out),
            arg(&g),
            skip_arg,
            len as u32,
            (1.0 - coef.decay_before) as f32,
            step as f32,
            (1.0 - coef.decay_after) as f32,
            sign,
            guarded,
        );
        float_out(w_out)
    }

    fn dequantize_packed(
        packed: Tensor<Self, 1, Int>,
        scales: Tensor<Self, 1>,
        zeros: Tensor<Self, 1>,
        bits: u32,
        group: usize,
        rows: usize,
        cols: usize,
    ) -> Tensor<Self, 2> {
        let len = rows * cols;
        if !supported::<F, I>()
            || !fits(len)
            || !matches!(bits, 1 | 2 | 4 | 8 | 16)
            || !all_f32(&[&scales, &zeros])
        {
            return portable::dequantize_packed(packed, scales, zeros, bits, group, rows, cols);
        }
        let packed = into_contiguous(packed.into_primitive());
        let (scales, zeros) = (float_in(scales), float_in(zeros));
        let out = empty(&scales, vec![rows, cols], DType::F32);
        let (count, dim) = launch_dims(&out, len);
        kernels::dequantize::launch::<R>(
            &out.client,
            count,
            dim,
            arg(&packed),
            arg(&scales),
            arg(&zeros),
            arg(&out),
            len as u32,
            group as u32,
            bits,
        );
        float_out(out)
    }

    fn quantize_int8(
        w: Tensor<Self, 2>,
        group: usize,
        key: Option<RoundingKey>,
    ) -> (Tensor<Self, 2, Int>, Tensor<Self, 3>) {
        let [rows, cols] = w.dims();
        if !supported::<F, I>()
            || !fits(rows * cols)
            || !all_f32(&[&w])
            || !group.is_multiple_of(4)
            || !cols.is_multiple_of(group)
        {
            return portable::quantize_int8(w, group, key);
        }
        let w = float_in(w);
        let groups = rows * (cols / group);
        let codes = empty(&w, vec![rows, cols / 4], I::dtype());
        let qparams = empty(&w, vec![rows, cols / group, 2], DType::F32);
        let (count, dim) = launch_dims(&w, groups);
        let [k0, k1] = key.map(|k| k.0).unwrap_or([0, 0]);
        kernels::quantize_int8::launch::<R>(
            &w.client,
            count,
            dim,
            arg(&w),
            arg(&codes),
            arg(&qparams),
            groups as u32,
            group as u32,
            k0,
            k1,
            key.is_some(),
        );
        (Tensor::from_primitive(codes), float_out(qparams))
    }

    fn non_finite_flags(grads: Vec<Tensor<Self, 2>>, device: &Device<Self>) -> Tensor<Self, 1> {
        if !supported::<F, I>()
            || grads.is_empty()
            || grads.iter().any(|g| !fits(g.shape().num_elements()))
            || grads
                .iter()
                .any(|g| !matches!(g.dtype(), DType::F32 | DType::BF16))
        {
            return portable::non_finite_flags(grads, device);
        }
        let flags = float_in(Tensor::<Self, 1>::zeros([grads.len()], device));
        for (index, g) in grads.into_iter().enumerate() {
            let len = g.shape().num_elements();
            if len == 0 {
                continue;
            }
            let cols = g.dims()[1];
            let g: CubeTensor<R> = g.to_device(device).into_primitive().tensor();
            // each unit reads `FLAG_PER_UNIT` elements, `units` apart
            let units = len.div_ceil(kernels::FLAG_PER_UNIT);
            let (count, dim) = launch_dims(&g, units);
            if g.is_contiguous() {
                with_element!(g.dtype, E => kernels::non_finite_flag::launch::<E, R>(
                    &g.client,
                    count,
                    dim,
                    arg(&g),
                    arg(&flags),
                    len as u32,
                    units as u32,
                    index as u32,
                ));
            } else {
                // pitched rows or a transposed view: read in place, through the strides
                with_element!(g.dtype, E => kernels::non_finite_flag_strided::launch::<E, R>(
                    &g.client,
                    count,
                    dim,
                    g.clone().into_tensor_arg(),
                    arg(&flags),
                    len as u32,
                    cols as u32,
                    units as u32,
                    index as u32,
                ));
            }
        }
        float_out(flags)
    }

    fn newton_schulz_poly(
        a: Tensor<Self, 2>,
        a2: Option<Tensor<Self, 2>>,
        c: [f64; 3],
    ) -> Tensor<Self, 2> {
        let [r, cols] = a.dims();
        let square = r == cols && a2.as_ref().is_none_or(|a2| a2.dims() == [r, r]);
        let f32s = a.dtype() == DType::F32 && a2.as_ref().is_none_or(|a2| a2.dtype() == DType::F32);
        if !supported::<F, I>() || !square || !f32s || !fits(r * r) {
            return portable::newton_schulz_poly(a, a2, c);
        }
        let a = float_in(a);
        let a2 = a2.map(float_in);
        let out = empty(&a, vec![r, r], DType::F32);
        let (count, dim) = launch_dims(&a, r * r);
        kernels::newton_schulz_poly::launch::<R>(
            &a.client,
            count,
            dim,
            arg(&a),
            arg(a2.as_ref().unwrap_or(&a)),
            arg(&out),
            r as u32,
            c[0] as f32,
            c[1] as f32,
            c[2] as f32,
            a2.is_some(),
        );
        float_out(out)
    }

    fn dct_scores(g: Tensor<Self, 2>, q: Tensor<Self, 2>, left: bool) -> Tensor<Self, 1> {
        if !supported::<F, I>() || !all_f32(&[&g, &q]) {
            return portable::dct_scores(g, q, left);
        }
        // left: rows of Qᵀ·G; right: columns of G·Q
        let x = if left {
            q.transpose().matmul(g)
        } else {
            g.matmul(q)
        };
        let [rows, cols] = x.dims();
        let x = float_in(x);
        let count_out = if left { rows } else { cols };
        let out = empty(&x, vec![count_out], DType::F32);
        let (count, dim) = launch_dims(&x, count_out);
        kernels::abs_sums::launch::<R>(
            &x.client,
            count,
            dim,
            arg(&x),
            arg(&out),
            rows as u32,
            cols as u32,
            !left,
        );
        float_out(out)
    }

    fn rms_norm(x: Tensor<Self, 2>, gamma: Tensor<Self, 1>, epsilon: f64) -> Tensor<Self, 2> {
        let [rows, cols] = x.dims();
        if !layer_dtypes(&[x.dtype(), gamma.dtype()]) || !fits(rows * cols) {
            return crate::norm::composed(x, gamma, epsilon);
        }
        let (x, gamma) = (float_in(x), float_in(gamma));
        let out = empty(&x, vec![rows, cols], x.dtype);
        let (count, dim) = row_cubes(&x, rows);
        with_element!(x.dtype, E => layers::rms_norm::launch::<E, R>(
            &x.client,
            count,
            dim,
            arg(&x),
            arg(&gamma),
            arg(&out),
            rows as u32,
            cols as u32,
            epsilon as f32,
            layers::ROW_UNITS,
        ));
        float_out(out)
    }

    fn rms_norm_backward(
        x: Tensor<Self, 2>,
        gamma: Tensor<Self, 1>,
        dy: Tensor<Self, 2>,
        epsilon: f64,
    ) -> (Tensor<Self, 2>, Tensor<Self, 1>) {
        let [rows, cols] = x.dims();
        if !layer_dtypes(&[x.dtype(), gamma.dtype(), dy.dtype()]) || !fits(rows * cols) {
            return crate::norm::composed_backward(x, gamma, dy, epsilon);
        }
        let (x, gamma, dy) = (float_in(x), float_in(gamma), float_in(dy));
        let dx = empty(&x, vec![rows, cols], x.dtype);
        let r = empty(&x, vec![rows.max(1)], DType::F32);
        let (count, dim) = row_cubes(&x, rows);
        with_element!(x.dtype, E => layers::rms_norm_backward_rows::launch::<E, R>(
            &x.client,
            count,
            dim,
            arg(&x),
            arg(&gamma),
            arg(&dy),
            arg(&dx),
            arg(&r),
            rows as u32,
            cols as u32,
            epsilon as f32,
            layers::ROW_UNITS,
        ));
        let per = layers::GAMMA_ROWS_PER_UNIT as usize;
        let chunks = rows.div_ceil(per).max(1);
        let partial = empty(&x, vec![chunks * cols], DType::F32);
        let (count, dim) = launch_dims(&x, chunks * cols);
        with_element!(x.dtype, E => layers::rms_norm_gamma_partial::launch::<E, R>(
            &x.client,
            count,
            dim,
            arg(&x),
            arg(&dy),
            arg(&r),
            arg(&partial),
            rows as u32,
            cols as u32,
            per as u32,
        ));
        let dgamma = empty(&x, vec![cols], gamma.dtype);
        let (count, dim) = launch_dims(&x, cols);
        with_element!(gamma.dtype, E => layers::rms_norm_gamma_sum::launch::<E, R>(
            &x.client,
            count,
            dim,
            arg(&partial),
            arg(&dgamma),
            chunks as u32,
            cols as u32,
        ));
        (float_out(dx), float_out(dgamma))
    }

    fn swiglu(g: Tensor<Self, 2>, u: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let shape = g.dims().to_vec();
        let len = g.shape().num_elements();
        if !layer_dtypes(&[g.dtype(), u.dtype()]) || !fits(len) {
            return crate::swiglu::composed(g, u);
        }
        let (g, u) = (float_in(g), float_in(u));
        let out = empty(&g, shape, g.dtype);
        let (count, dim) = launch_dims(&g, len);
        with_element!(g.dtype, E => layers::swiglu::launch::<E, R>(
            &g.client,
            count,
            dim,
            arg(&g),
            arg(&u),
            arg(&out),
            len as u32,
        ));
        float_out(out)
    }

    fn swiglu_backward(
        g: Tensor<Self, 2>,
        u: Tensor<Self, 2>,
        dz: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        let shape = g.dims().to_vec();
        let len = g.shape().num_elements();
        if !layer_dtypes(&[g.dtype(), u.dtype(), dz.dtype()]) || !fits(len) {
            return crate::swiglu::composed_backward(g, u, dz);
        }
        let (g, u, dz) = (float_in(g), float_in(u), float_in(dz));
        let dg = empty(&g, shape.clone(), g.dtype);
        let du = empty(&g, shape, g.dtype);
        let (count, dim) = launch_dims(&g, len);
        with_element!(g.dtype, E => layers::swiglu_backward::launch::<E, R>(
            &g.client,
            count,
            dim,
            arg(&g),
            arg(&u),
            arg(&dz),
            arg(&dg),
            arg(&du),
            len as u32,
        ));
        (float_out(dg), float_out(du))
    }

    fn causal_softmax(s: Tensor<Self, 4>, scale: f64) -> Tensor<Self, 4> {
        let shape = s.dims();
        let [b, h, t, tk] = shape;
        let rows = b * h * t;
        if !layer_dtypes(&[s.dtype()])
            || !fits(rows * tk)
            || t == 0
            || tk == 0
            || !crate::fused_softmax_enabled()
        {
            return crate::attention::composed_softmax(s, scale);
        }
        // read through its strides: no copy of a product's output
        let s: CubeTensor<R> = s.into_primitive().tensor();
        let out = empty(&s, shape.to_vec(), s.dtype);
        let (count, dim) = row_cubes(&s, rows);
        with_element!(s.dtype, E => layers::causal_softmax::launch::<E, R>(
            &s.client,
            count,
            dim,
            s.clone().into_tensor_arg(),
            arg(&out),
            rows as u32,
            t as u32,
            tk as u32,
            scale as f32,
            layers::ROW_UNITS,
        ));
        float_out(out)
    }

    fn causal_softmax_backward(
        p: Tensor<Self, 4>,
        dp: Tensor<Self, 4>,
        scale: f64,
    ) -> Tensor<Self, 4> {
        let shape = p.dims();
        let [b, h, t, tk] = shape;
        let rows = b * h * t;
        if !layer_dtypes(&[p.dtype(), dp.dtype()])
            || !fits(rows * tk)
            || dp.dims() != shape
            || !crate::fused_softmax_enabled()
        {
            return crate::attention::composed_softmax_backward(p, dp, scale);
        }
        let p = float_in(p);
        let dp: CubeTensor<R> = dp.into_primitive().tensor();
        let ds = empty(&p, shape.to_vec(), p.dtype);
        let (count, dim) = row_cubes(&p, rows);
        with_element!(p.dtype, E => layers::causal_softmax_backward::launch::<E, R>(
            &p.client,
            count,
            dim,
            arg(&p),
            dp.clone().into_tensor_arg(),
            arg(&ds),
            rows as u32,
            tk as u32,
            scale as f32,
            layers::ROW_UNITS,
        ));
        float_out(ds)
    }

    fn rotary(
        x: Tensor<Self, 4>,
        freq: Tensor<Self, 3>,
        seq_axis: usize,
        inverse: bool,
    ) -> Tensor<Self, 4> {
        let shape = x.dims().to_vec();
        let len = x.shape().num_elements();
        if !layer_dtypes(&[x.dtype()]) || !fits(len) || !matches!(seq_axis, 1 | 2) {
            return crate::rotary::composed(x, freq, seq_axis, inverse);
        }
        let freq = float_in(freq.cast(DType::F32));
        let x: CubeTensor<R> = x.into_primitive().tensor();
        let out = empty(&x, shape, x.dtype);
        let (count, dim) = launch_dims(&x, len);
        with_element!(x.dtype, E => layers::rotary::launch::<E, R>(
            &x.client,
            count,
            dim,
            x.clone().into_tensor_arg(),
            arg(&freq),
            arg(&out),
            len as u32,
            seq_axis as u32,
            inverse,
        ));
        float_out(out)
    }
}
