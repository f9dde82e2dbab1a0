//! The portable implementation: burn tensor ops only, on any backend. It is what `flex` runs, the
//! default of every [`EmberBackend`](crate::EmberBackend) method, and the reference the fused
//! kernels are tested against.

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::{ElementConversion, Int};

use crate::blockwise::{Blockwise8, DynamicMaps};
use crate::{AdamCoefficients, Basis, ResidualUpdate, RoundingKey, Skip, UpdateCoefficients};

/// `new` where the skip flag is 0 (or absent), `old` where it is 1 (see the [crate docs](crate)).
pub fn hold<B: Backend, const D: usize, K>(
    skip: &Skip<B>,
    old: Tensor<B, D, K>,
    new: Tensor<B, D, K>,
) -> Tensor<B, D, K>
where
    K: burn::tensor::BasicOps<B>,
    K::Elem: burn::tensor::Element,
{
    match skip {
        None => new,
        Some(skip) => {
            let shape = new.shape();
            let mask = skip.clone().greater_elem(0.0).reshape([1; D]).expand(shape);
            new.mask_where(mask, old)
        }
    }
}

/// Blockwise 8-bit moments: the new ones where the skip flag is 0, the old ones where it is 1.
fn hold_8bit<B: Backend>(skip: &Skip<B>, old: Blockwise8<B>, new: Blockwise8<B>) -> Blockwise8<B> {
    match skip {
        None => new,
        Some(_) => Blockwise8 {
            codes: hold(skip, old.codes, new.codes),
            absmax: hold(skip, old.absmax, new.absmax),
            ..new
        },
    }
}

/// `N = 0` where the skip flag is 1.
fn zero_held<B: Backend>(skip: &Skip<B>, n: Tensor<B, 2>) -> Tensor<B, 2> {
    match skip {
        None => n,
        Some(_) => {
            let zeros = n.zeros_like();
            hold(skip, zeros, n)
        }
    }
}

/// See [`EmberBackend::subspace_adam`](crate::EmberBackend::subspace_adam).
pub fn subspace_adam<B: Backend>(
    r: Tensor<B, 2>,
    m: Tensor<B, 2>,
    v: Tensor<B, 2>,
    c: AdamCoefficients,
    skip: Skip<B>,
) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
    let old = skip.as_ref().map(|_| (m.clone(), v.clone()));
    let m_new = m
        .mul_scalar(c.beta_1)
        .add(r.clone().mul_scalar(1.0 - c.beta_1));
    let v_new = v
        .mul_scalar(c.beta_2)
        .add(r.clone().mul(r).mul_scalar(1.0 - c.beta_2));
    let mut root = v_new.clone().sqrt();
    if c.sqrt_v_divisor != 1.0 {
        root = root.div_scalar(c.sqrt_v_divisor);
    }
    let n = m_new.clone().div(root.add_scalar(c.epsilon));
    match old {
        None => (n, m_new, v_new),
        Some((m, v)) => (
            zero_held(&skip, n),
            hold(&skip, m, m_new),
            hold(&skip, v, v_new),
        ),
    }
}

/// See [`EmberBackend::adam_8bit`](crate::EmberBackend::adam_8bit): dequantize, the f32 Adam
/// update of [`subspace_adam`], quantize (fresh absmax per block).
pub fn adam_8bit<B: Backend>(
    r: Tensor<B, 2>,
    m: Blockwise8<B>,
    v: Blockwise8<B>,
    maps: &DynamicMaps<B>,
    c: AdamCoefficients,
    skip: Skip<B>,
) -> (Tensor<B, 2>, Blockwise8<B>, Blockwise8<B>) {
    let shape = r.dims();
    let (m32, v32) = (
        m.dequantize(&maps.signed, shape),
        v.dequantize(&maps.unsigned, shape),
    );
    let (n, m32, v32) = subspace_adam(r, m32, v32, c, None);
    let (m_new, v_new) = (
        Blockwise8::quantize(m32, &maps.signed, m.block),
        Blockwise8::quantize(v32, &maps.unsigned, v.block),
    );
    (
        zero_held(&skip, n),
        hold_8bit(&skip, m, m_new),
        hold_8bit(&skip, v, v_new),
    )
}

/// See [`EmberBackend::adam_full_step_8bit`](crate::EmberBackend::adam_full_step_8bit).
#[allow(clippy::too_many_arguments)]
pub fn adam_full_step_8bit<B: Backend>(
    w: Tensor<B, 2>,
    g: Tensor<B, 2>,
    m: Blockwise8<B>,
    v: Blockwise8<B>,
    maps: &DynamicMaps<B>,
    adam: AdamCoefficients,
    coef: UpdateCoefficients,
    skip: Skip<B>,
) -> (Tensor<B, 2>, Blockwise8<B>, Blockwise8<B>) {
    let shape = g.dims();
    let (m32, v32) = (
        m.dequantize(&maps.signed, shape),
        v.dequantize(&maps.unsigned, shape),
    );
    let (w, m32, v32) = adam_full_step(w, g, m32, v32, adam, coef, skip.clone());
    let (m_new, v_new) = (
        Blockwise8::quantize(m32, &maps.signed, m.block),
        Blockwise8::quantize(v32, &maps.unsigned, v.block),
    );
    (w, hold_8bit(&skip, m, m_new), hold_8bit(&skip, v, v_new))
}

/// Fira's `φ = ‖N‖/(‖R‖ + 1e-8)`, norms along the low-rank shape's shorter side: `[1, cols]`
/// when it has fewer rows than columns, else `[rows, 1]`.
pub fn fira_phi<B: Backend>(n: &Tensor<B, 2>, r: &Tensor<B, 2>) -> Tensor<B, 2> {
    let [rows, cols] = n.dims();
    let dim = if rows < cols { 0 } else { 1 };
    let norm_n = n.clone().powi_scalar(2).sum_dim(dim).sqrt();
    let norm_r = r.clone().powi_scalar(2).sum_dim(dim).sqrt();
    norm_n.div(norm_r.add_scalar(1e-8))
}

/// Fira's limiter: `max(‖Ψ‖/(ζ + 1e-8), γ)/γ` (1 on the first step), and the new `ζ`.
pub fn fira_limiter<B: Backend>(
    norm: Tensor<B, 1>,
    zeta: Option<Tensor<B, 1>>,
    gamma: f64,
) -> (Option<Tensor<B, 1>>, Tensor<B, 1>) {
    match zeta {
        None => (None, norm),
        Some(prev) => {
            let limiter = norm
                .clone()
                .div(prev.add_scalar(1e-8))
                .clamp_min(gamma)
                .div_scalar(gamma);
            let zeta = norm.div(limiter.clone());
            (Some(limiter), zeta)
        }
    }
}

/// The sum of every element of `x` as a one-element tensor, added in an order that is the same
/// from run to run: burn's `sum()` on CubeCL backends adds its cubes' partial sums with atomics
/// (`shared_sum`), in whatever order the cubes finish — on the H100, GaLore with the device
/// projector (whose Newton–Schulz steps normalize by a Frobenius norm) did not repeat bit for bit
/// from one run to the next. Here: the sums of rows of `x` viewed as `[d₀, numel/d₀]`, then
/// their sum (`sum_dim`: each output reduced by one unit, plane or cube, without atomics).
pub fn fixed_order_sum<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, 1> {
    let numel = x.shape().num_elements();
    if numel == 0 {
        return Tensor::<B, 1>::zeros([1], &x.device()).cast(x.dtype());
    }
    let rows = if D == 0 { 1 } else { x.dims()[0].max(1) };
    x.reshape([rows, numel / rows])
        .sum_dim(1)
        .sum_dim(0)
        .reshape([1])
}

/// What a residual rule's term is computed from on the portable path
/// ([`projected_update_with`]); a rule of the caller's sees the same
/// (`ember_core::residual::ResidualPart`).
#[derive(Debug, Clone)]
pub struct ResidualInputs<B: Backend> {
    /// The full gradient `G`, in f32.
    pub g: Tensor<B, 2>,
    /// `up(R)`, without the scale α.
    pub up_r: Tensor<B, 2>,
    /// The low-rank gradient `R`.
    pub r: Tensor<B, 2>,
    /// Adam's normalized update `N` of `R`.
    pub n: Tensor<B, 2>,
    /// The scale α of the back-projection.
    pub scale: f64,
    /// The Adam step size `c` of this step (Fira's term uses it).
    pub step: f64,
    /// The rule's memory from the previous step (Fira's `ζ`); `None` on the first.
    pub memory: Option<Tensor<B, 1>>,
}

/// A residual rule's term on the portable path: `T` of `W ← W − T` (before the decay after the
/// update) and the rule's new memory.
pub type ResidualFn<'a, B> = &'a dyn Fn(ResidualInputs<B>) -> (Tensor<B, 2>, Option<Tensor<B, 1>>);

/// The term (`W ← W − term`) of one of the kernels' residual rules and Fira's new norm; `None`
/// for [`ResidualUpdate::None`].
pub fn residual_term<B: Backend>(
    rule: ResidualUpdate,
    x: ResidualInputs<B>,
) -> Option<(Tensor<B, 2>, Option<Tensor<B, 1>>)> {
    let ResidualInputs {
        g,
        up_r,
        r,
        n,
        scale,
        step,
        memory,
    } = x;
    match rule {
        ResidualUpdate::None => None,
        ResidualUpdate::Sign { step } => Some((g.sub(up_r).sign().mul_scalar(step), None)),
        ResidualUpdate::Sgd { step } => Some((g.sub(up_r).mul_scalar(step), None)),
        ResidualUpdate::Fira { gamma, given } => {
            let residual = if given {
                g
            } else {
                g.sub(up_r.mul_scalar(scale))
            };
            let mut psi = residual.mul(fira_phi(&n, &r));
            let norm = fixed_order_sum(psi.clone().powi_scalar(2)).sqrt();
            let (limiter, zeta) = fira_limiter(norm, memory, gamma);
            if let Some(limiter) = limiter {
                psi = psi.div(limiter.unsqueeze());
            }
            Some((psi.mul_scalar(step), Some(zeta)))
        }
    }
}

/// See [`EmberBackend::projection_matmul`](crate::EmberBackend::projection_matmul): burn's
/// matmul, operands of different dtypes (an f32 basis, a bf16 gradient) widened to f32.
pub fn projection_matmul<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    if a.dtype() != b.dtype() {
        return a.cast(DType::F32).matmul(b.cast(DType::F32));
    }
    a.matmul(b)
}

/// See [`EmberBackend::projected_update`](crate::EmberBackend::projected_update).
#[allow(clippy::too_many_arguments)]
pub fn projected_update<B: crate::EmberBackend>(
    w: Tensor<B, 2>,
    g: Tensor<B, 2>,
    basis: &Basis<B>,
    n: Tensor<B, 2>,
    r: Tensor<B, 2>,
    coef: UpdateCoefficients,
    residual: ResidualUpdate,
    zeta: Option<Tensor<B, 1>>,
    skip: Skip<B>,
) -> (Tensor<B, 2>, Option<Tensor<B, 1>>) {
    let term = |x| residual_term(residual, x).expect("a residual rule other than `None`");
    let rule = (residual != ResidualUpdate::None).then_some(&term as ResidualFn<'_, B>);
    projected_update_with(w, g, &|x| basis.up(x), n, r, coef, rule, zeta, skip)
}

/// The update of [`projected_update`] with any back-projection `up` (the engine's coordinate
/// selections and two-sided projectors use it with their own) and any residual rule's term
/// (`None`: discarded; the kernels' rules through [`residual_term`], a rule of the caller's
/// through its own): the one place the update is written on the portable path,
/// `W ← (1−λ_after)·((1−λ_before)·W − c·α·up(N) − residual)`, the rule's new memory, and the
/// skip flag (where it is set, `W` and the memory stay as they were).
#[allow(clippy::too_many_arguments)]
pub fn projected_update_with<B: Backend>(
    w: Tensor<B, 2>,
    g: Tensor<B, 2>,
    up: &dyn Fn(Tensor<B, 2>) -> Tensor<B, 2>,
    n: Tensor<B, 2>,
    r: Tensor<B, 2>,
    coef: UpdateCoefficients,
    residual: Option<ResidualFn<'_, B>>,
    zeta: Option<Tensor<B, 1>>,
    skip: Skip<B>,
) -> (Tensor<B, 2>, Option<Tensor<B, 1>>) {
    // a weight below f32 is updated in f32 and rounded once
    let dtype = w.dtype();
    let (w, g) = (w.cast(DType::F32), g.cast(DType::F32));
    let w_old = skip.as_ref().map(|_| w.clone());
    let zeta_old = skip.as_ref().map(|_| zeta.clone());
    let mut w = decay_before(w, coef);
    let term = residual.map(|term| {
        term(ResidualInputs {
            g,
            up_r: up(r.clone()),
            r: r.clone(),
            n: n.clone(),
            scale: coef.scale,
            step: coef.step,
            memory: zeta,
        })
    });
    let mut delta = up(n);
    if coef.scale != 1.0 {
        delta = delta.mul_scalar(coef.scale);
    }
    w = w.sub(delta.mul_scalar(coef.step));
    let mut zeta = None;
    if let Some((t, z)) = term {
        w = w.sub(t);
        zeta = z;
    }
    let w = decay_after(w, coef);
    let (w, zeta) = match (w_old, zeta_old) {
        (Some(w_old), Some(zeta_old)) => (hold(&skip, w_old, w), hold_zeta(&skip, zeta_old, zeta)),
        _ => (w, zeta),
    };
    (w.cast(dtype), zeta)
}

/// Fira's norm where the skip flag is 1: the previous one, or `+∞` before the first step (the
/// limiter of the next step is then 1 and its norm becomes `ζ`, as on a first step).
pub fn hold_zeta<B: Backend>(
    skip: &Skip<B>,
    old: Option<Tensor<B, 1>>,
    new: Option<Tensor<B, 1>>,
) -> Option<Tensor<B, 1>> {
    let new = new?;
    let old = old.unwrap_or_else(|| new.ones_like().mul_scalar(f32::INFINITY));
    Some(hold(skip, old, new))
}

/// See [`EmberBackend::adam_full_step`](crate::EmberBackend::adam_full_step).
pub fn adam_full_step<B: Backend>(
    w: Tensor<B, 2>,
    g: Tensor<B, 2>,
    m: Tensor<B, 2>,
    v: Tensor<B, 2>,
    adam: AdamCoefficients,
    coef: UpdateCoefficients,
    skip: Skip<B>,
) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
    // a weight or moments below f32 are updated in f32 and rounded once
    let (dtype, state_dtype) = (w.dtype(), m.dtype());
    let (w, g) = (w.cast(DType::F32), g.cast(DType::F32));
    let (m, v) = (m.cast(DType::F32), v.cast(DType::F32));
    let w_old = skip.as_ref().map(|_| w.clone());
    let w_new = decay_before(w, coef);
    let (n, m, v) = subspace_adam(g, m, v, adam, skip.clone());
    let mut delta = n;
    if coef.scale != 1.0 {
        delta = delta.mul_scalar(coef.scale);
    }
    let w_new = decay_after(w_new.sub(delta.mul_scalar(coef.step)), coef);
    let w = match w_old {
        Some(w_old) => hold(&skip, w_old, w_new),
        None => w_new,
    };
    (w.cast(dtype), m.cast(state_dtype), v.cast(state_dtype))
}

/// See [`EmberBackend::state_free_step`](crate::EmberBackend::state_free_step).
pub fn state_free_step<B: Backend>(
    w: Tensor<B, 2>,
    g: Tensor<B, 2>,
    rule: ResidualUpdate,
    coef: UpdateCoefficients,
    skip: Skip<B>,
) -> Tensor<B, 2> {
    let w_old = skip.as_ref().map(|_| w.clone());
    let mut w = decay_before(w, coef);
    match rule {
        ResidualUpdate::Sign { step } => w = w.sub(g.sign().mul_scalar(step)),
        ResidualUpdate::Sgd { step } => w = w.sub(g.mul_scalar(step)),
        ResidualUpdate::None | ResidualUpdate::Fira { .. } => {}
    }
    let w = decay_after(w, coef);
    match w_old {
        Some(w_old) => hold(&skip, w_old, w),
        None => w,
    }
}

fn decay_before<B: Backend>(w: Tensor<B, 2>, coef: UpdateCoefficients) -> Tensor<B, 2> {
    if coef.decay_before != 0.0 {
        w.mul_scalar(1.0 - coef.decay_before)
    } else {
        w
    }
}

fn decay_after<B: Backend>(w: Tensor<B, 2>, coef: UpdateCoefficients) -> Tensor<B, 2> {
    if coef.decay_after != 0.0 {
        w.clone().sub(w.mul_scalar(coef.decay_after))
    } else {
        w
    }
}

/// See [`EmberBackend::dequantize_packed`](crate::EmberBackend::dequantize_packed).
#[allow(clippy::too_many_arguments)]
pub fn dequantize_packed<B: Backend>(
    packed: Tensor<B, 1, Int>,
    scales: Tensor<B, 1>,
    zeros: Tensor<B, 1>,
    bits: u32,
    group: usize,
    rows: usize,
    cols: usize,
) -> Tensor<B, 2> {
    let per = (32 / bits) as usize;
    let words = packed.dims()[0];
    let device = packed.device();
    let shifts: Vec<i32> = (0..per).map(|k| (bits as usize * k) as i32).collect();
    let shifts = Tensor::<B, 1, Int>::from_data(TensorData::new(shifts, [per]), &device)
        .unsqueeze_dim::<2>(0)
        .repeat_dim(0, words);
    let codes = packed
        .unsqueeze_dim::<2>(1)
        .repeat_dim(1, per)
        .bitwise_right_shift(shifts)
        .bitwise_and_scalar(((1u32 << bits) - 1).elem())
        .reshape([words * per])
        .slice(0..rows * cols)
        .float()
        .reshape([rows * cols / group, group]);
    let g = scales.dims()[0];
    codes
        .sub(zeros.reshape([g, 1]))
        .mul(scales.reshape([g, 1]))
        .reshape([rows, cols])
}

/// See [`EmberBackend::quantize_int8`](crate::EmberBackend::quantize_int8). The uniforms of
/// `key` are generated on the host ([`crate::rng::uniforms`]) and uploaded.
pub fn quantize_int8<B: Backend>(
    w: Tensor<B, 2>,
    group: usize,
    key: Option<RoundingKey>,
) -> (Tensor<B, 2, Int>, Tensor<B, 3>) {
    let [rows, cols] = w.dims();
    let groups = cols / group;
    let device = w.device();
    // scales and zero points are f32 whatever the weight's dtype (a bf16 weight is widened)
    let w = if w.dtype() == burn::tensor::DType::F32 {
        w
    } else {
        w.cast(burn::tensor::DType::F32)
    };
    let x = w.reshape([rows, groups, group]);
    let lo = x.clone().min_dim(2);
    let hi = x.clone().max_dim(2);
    let scale = (hi - lo.clone()).clamp_min(1e-5).div_scalar(255.0);
    let zero = lo.div(scale.clone()).neg().round().clamp(0.0, 255.0);
    let y = x.div(scale.clone());
    let r = match key {
        None => y.round(),
        Some(key) => {
            let u = Tensor::<B, 3>::from_data(
                TensorData::new(
                    crate::rng::uniforms(key, rows * cols),
                    [rows, groups, group],
                ),
                &device,
            );
            let f = y.clone().floor();
            let frac = y - f.clone();
            f + u.lower(frac).float()
        }
    };
    let q = (r + zero.clone())
        .clamp(0.0, 255.0)
        .int()
        .reshape([rows, cols / 4, 4]);
    let shifts =
        Tensor::<B, 1, Int>::from_data(TensorData::new(vec![0i32, 8, 16, 24], [4]), &device)
            .reshape([1, 1, 4])
            .expand([rows, cols / 4, 4]);
    // the four codes occupy disjoint bits, so the sum is their bitwise or
    let codes = q
        .bitwise_left_shift(shifts)
        .sum_dim(2)
        .reshape([rows, cols / 4]);
    (codes, Tensor::cat(vec![scale, zero], 2))
}

/// INT8 codes (`[rows, cols/4]`) and `(scale, zero)` per group (`[rows, groups, 2]`, as
/// [`quantize_int8`] returns them) dequantized on the host, row-major.
pub fn dequantize_int8_values<B: Backend>(
    codes: Tensor<B, 2, Int>,
    qparams: Tensor<B, 3>,
    rows: usize,
    cols: usize,
) -> Vec<f32> {
    let words: Vec<i64> = codes.into_data().convert::<i64>().to_vec().unwrap();
    let q: Vec<f32> = qparams
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
    let groups = qparams.dims()[1];
    let group = cols / groups;
    (0..rows * cols)
        .map(|i| {
            let code = ((words[i / 4] as u32) >> (8 * (i % 4))) & 0xff;
            let (r, c) = (i / cols, i % cols);
            let g = r * groups + c / group;
            q[2 * g] * (code as f32 - q[2 * g + 1])
        })
        .collect()
}

/// See [`EmberBackend::dct_scores`](crate::EmberBackend::dct_scores).
pub fn dct_scores<B: Backend>(g: Tensor<B, 2>, q: Tensor<B, 2>, left: bool) -> Tensor<B, 1> {
    if left {
        q.transpose().matmul(g).abs().sum_dim(1).flatten::<1>(0, 1)
    } else {
        g.matmul(q).abs().sum_dim(0).flatten::<1>(0, 1)
    }
}

/// See [`EmberBackend::newton_schulz_poly`](crate::EmberBackend::newton_schulz_poly).
pub fn newton_schulz_poly<B: Backend>(
    a: Tensor<B, 2>,
    a2: Option<Tensor<B, 2>>,
    c: [f64; 3],
) -> Tensor<B, 2> {
    let [r, _] = a.dims();
    let eye = Tensor::<B, 2>::eye(r, &a.device())
        .cast(a.dtype())
        .mul_scalar(c[0]);
    let poly = a.mul_scalar(c[1]).add(eye);
    match a2 {
        Some(a2) => poly.add(a2.mul_scalar(c[2])),
        None => poly,
    }
}

/// See [`EmberBackend::non_finite_flags`](crate::EmberBackend::non_finite_flags).
pub fn non_finite_flags<B: Backend>(grads: Vec<Tensor<B, 2>>, device: &B::Device) -> Tensor<B, 1> {
    if grads.is_empty() {
        return Tensor::zeros([0], device);
    }
    let flags = grads
        .into_iter()
        .map(|g| non_finite_flag(g).to_device(device))
        .collect();
    Tensor::cat(flags, 0)
}

/// Elements per row chunk of [`non_finite_flag`].
const FLAG_CHUNK: usize = 1 << 22;

/// `[1]` where `g` holds a NaN or ±Inf, else `[0]`: `Σ 0·g` is NaN exactly then (`0·x = ±0` for
/// a finite `x`, NaN for ±Inf and NaN; a sum of zeros cannot overflow), in `g`'s own dtype, row
/// chunk by row chunk — the temporaries are one chunk's (a mask of the whole gradient, as
/// `is_finite` makes, took 4 bytes per element on CubeCL backends: 1 GB for LLaMA-7B's
/// embedding gradient).
fn non_finite_flag<B: Backend>(g: Tensor<B, 2>) -> Tensor<B, 1> {
    non_finite_flag_in_chunks(g, FLAG_CHUNK)
}

fn non_finite_flag_in_chunks<B: Backend>(g: Tensor<B, 2>, chunk: usize) -> Tensor<B, 1> {
    let [rows, cols] = g.dims();
    let k = (chunk / cols.max(1)).max(1);
    let mut sum: Option<Tensor<B, 1>> = None;
    for start in (0..rows).step_by(k) {
        let part = g
            .clone()
            .slice([start..(start + k).min(rows), 0..cols])
            .mul_scalar(0.0)
            .sum()
            .cast(DType::F32);
        sum = Some(match sum {
            Some(s) => s + part,
            None => part,
        });
    }
    match sum {
        Some(s) => s.is_nan().float(),
        None => Tensor::zeros([1], &g.device()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    /// [`fixed_order_sum`] is the sum of every element (integer values: exact in any order) for
    /// tensors of rank 1 to 3, an empty one included, in the input's dtype.
    #[test]
    fn fixed_order_sum_adds_every_element() {
        let device = Default::default();
        let values = |n: usize| (0..n).map(|i| (i % 7) as f32 - 2.0).collect::<Vec<_>>();
        let want = |n: usize| values(n).iter().sum::<f32>();
        let one = Tensor::<Flex, 1>::from_data(TensorData::new(values(13), [13]), &device);
        let two = Tensor::<Flex, 2>::from_data(TensorData::new(values(35), [5, 7]), &device);
        let three = Tensor::<Flex, 3>::from_data(TensorData::new(values(24), [2, 3, 4]), &device);
        let empty = Tensor::<Flex, 2>::zeros([0, 4], &device);
        for (got, n) in [
            (fixed_order_sum(one), 13),
            (fixed_order_sum(two.clone()), 35),
            (fixed_order_sum(three), 24),
            (fixed_order_sum(empty), 0),
        ] {
            assert_eq!(got.dims(), [1]);
            assert_eq!(got.into_scalar(), want(n));
        }
        let bf16 = fixed_order_sum(two.cast(DType::BF16));
        assert_eq!(bf16.dtype(), DType::BF16);
    }

    /// `Σ 0·g` flags exactly the gradients holding a NaN or ±Inf, in f32 and bf16, whatever the
    /// chunk the non-finite value falls in — and not finite values whose plain sum overflows.
    #[test]
    fn non_finite_flag_finds_nan_and_inf_in_any_chunk_and_dtype() {
        let device = Default::default();
        for dtype in [DType::F32, DType::BF16] {
            for (poison, at, want) in [
                (None, 0, 0.0),
                (Some(f32::NAN), 0, 1.0),
                (Some(f32::INFINITY), 37, 1.0),
                (Some(f32::NEG_INFINITY), 59, 1.0),
            ] {
                // large finite values: their sum overflows bf16 and f32
                let mut v = vec![3.0e38f32; 60];
                if let Some(p) = poison {
                    v[at] = p;
                }
                let g =
                    Tensor::<Flex, 2>::from_data(TensorData::new(v, [12, 5]), &device).cast(dtype);
                for chunk in [5, 7, 1 << 22] {
                    let got: Vec<f32> = non_finite_flag_in_chunks(g.clone(), chunk)
                        .into_data()
                        .convert::<f32>()
                        .to_vec()
                        .unwrap();
                    assert_eq!(
                        got,
                        vec![want],
                        "{dtype:?}, {poison:?} at {at}, chunk {chunk}"
                    );
                }
            }
        }
        let flags: Vec<f32> = non_finite_flags(
            vec![
                Tensor::<Flex, 2>::ones([3, 3], &device),
                Tensor::<Flex, 2>::full([2, 2], f32::NAN, &device).cast(DType::BF16),
            ],
            &device,
        )
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
        assert_eq!(flags, vec![0.0, 1.0]);
    }
}
