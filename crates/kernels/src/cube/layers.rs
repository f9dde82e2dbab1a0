//! CubeCL kernels of the model's element-wise layers: RMSNorm ([`crate::norm`]), the SwiGLU gate
//! ([`crate::swiglu`]) and the rotary embedding ([`crate::rotary`]). Each reads its inputs in
//! their dtype `E` (f32 or bf16), computes in f32 and rounds its outputs once to `E`.

use cubecl::prelude::*;

/// Units of the cube that normalizes one row (a power of two).
pub const ROW_UNITS: u32 = 256;

/// Rows of one column that one unit of [`rms_norm_gamma_partial`] sums.
pub const GAMMA_ROWS_PER_UNIT: u32 = 32;

/// The sums over the cube of `a` and `b` (every unit gets both): a tree in shared memory.
#[cube]
pub(crate) fn cube_sums(a: f32, b: f32, #[comptime] units: u32) -> (f32, f32) {
    let u = UNIT_POS as usize;
    let mut shared_a = SharedMemory::<f32>::new(units as usize);
    let mut shared_b = SharedMemory::<f32>::new(units as usize);
    shared_a[u] = a;
    shared_b[u] = b;
    sync_cube();
    let mut stride = (CUBE_DIM / 2) as usize;
    while stride > 0 {
        if u < stride {
            shared_a[u] += shared_a[u + stride];
            shared_b[u] += shared_b[u + stride];
        }
        sync_cube();
        stride /= 2;
    }
    (shared_a[0], shared_b[0])
}

/// RMSNorm, one cube of [`ROW_UNITS`] units per row of `x` (`rows × cols`, dense):
/// `out = round(x·r)·γ`, `r = 1/√(mean(x²) + ε)`.
#[cube(launch)]
pub fn rms_norm<E: Float>(
    x: &Array<E>,
    gamma: &Array<E>,
    out: &mut Array<E>,
    rows: u32,
    cols: u32,
    epsilon: f32,
    #[comptime] units: u32,
) {
    let row = CUBE_POS;
    let u = UNIT_POS as usize;
    let n = cols as usize;
    let valid = row < rows as usize;
    let base = row * n;
    let mut acc = 0.0f32;
    if valid {
        let mut j = u;
        while j < n {
            let v = f32::cast_from(x[base + j]);
            acc += v * v;
            j += units as usize;
        }
    }
    let (sum, _) = cube_sums(acc, 0.0f32, units);
    let r = 1.0f32 / f32::sqrt(sum / cols as f32 + epsilon);
    if valid {
        let mut j = u;
        while j < n {
            let normed = E::cast_from(f32::cast_from(x[base + j]) * r);
            out[base + j] = E::cast_from(f32::cast_from(normed) * f32::cast_from(gamma[j]));
            j += units as usize;
        }
    }
}

/// RMSNorm's `dX`, one cube per row: `dX = r·dY∘γ − X·r³·Σ(dY∘γ∘X)/cols`; writes each row's `r`
/// to `r_out` for [`rms_norm_gamma_partial`].
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_backward_rows<E: Float>(
    x: &Array<E>,
    gamma: &Array<E>,
    dy: &Array<E>,
    dx: &mut Array<E>,
    r_out: &mut Array<f32>,
    rows: u32,
    cols: u32,
    epsilon: f32,
    #[comptime] units: u32,
) {
    let row = CUBE_POS;
    let u = UNIT_POS as usize;
    let n = cols as usize;
    let valid = row < rows as usize;
    let base = row * n;
    let mut squares = 0.0f32;
    let mut dots = 0.0f32;
    if valid {
        let mut j = u;
        while j < n {
            let v = f32::cast_from(x[base + j]);
            squares += v * v;
            dots += f32::cast_from(dy[base + j]) * f32::cast_from(gamma[j]) * v;
            j += units as usize;
        }
    }
    let (s1, s2) = cube_sums(squares, dots, units);
    let r = 1.0f32 / f32::sqrt(s1 / cols as f32 + epsilon);
    let c = r * r * r * s2 / cols as f32;
    if valid {
        let mut j = u;
        while j < n {
            let v = f32::cast_from(x[base + j]);
            let dn = f32::cast_from(dy[base + j]) * f32::cast_from(gamma[j]);
            dx[base + j] = E::cast_from(r * dn - v * c);
            j += units as usize;
        }
        if u == 0 {
            r_out[row] = r;
        }
    }
}

/// Partial sums of RMSNorm's `dγ`: unit `(k, j)` sums `dY∘X·r` down column `j` over rows
/// `k·per … (k+1)·per` (coalesced across `j`).
#[cube(launch)]
#[allow(clippy::too_many_arguments, clippy::manual_div_ceil)]
pub fn rms_norm_gamma_partial<E: Float>(
    x: &Array<E>,
    dy: &Array<E>,
    r: &Array<f32>,
    out: &mut Array<f32>,
    rows: u32,
    cols: u32,
    per: u32,
) {
    let t = ABSOLUTE_POS;
    let chunks = (rows + per - 1) / per;
    if t < (chunks * cols) as usize {
        let k = t / cols as usize;
        let j = t % cols as usize;
        let start = k * per as usize;
        let mut end = start + per as usize;
        if end > rows as usize {
            end = rows as usize;
        }
        let mut acc = 0.0f32;
        for row in start..end {
            let i = row * cols as usize + j;
            acc += f32::cast_from(dy[i]) * f32::cast_from(x[i]) * r[row];
        }
        out[t] = acc;
    }
}

/// `dγ[j] = Σ_k partial[k, j]`, rounded to `E`.
#[cube(launch)]
pub fn rms_norm_gamma_sum<E: Float>(
    partial: &Array<f32>,
    out: &mut Array<E>,
    chunks: u32,
    cols: u32,
) {
    let j = ABSOLUTE_POS;
    if j < cols as usize {
        let mut acc = 0.0f32;
        for k in 0..chunks as usize {
            acc += partial[k * cols as usize + j];
        }
        out[j] = E::cast_from(acc);
    }
}

#[cube]
fn sigmoid(x: f32) -> f32 {
    1.0f32 / (1.0f32 + f32::exp(-x))
}

/// The SwiGLU gate: `out = round(silu(g))·u`.
#[cube(launch)]
pub fn swiglu<E: Float>(g: &Array<E>, u: &Array<E>, out: &mut Array<E>, len: u32) {
    let i = ABSOLUTE_POS;
    if i < len as usize {
        let x = f32::cast_from(g[i]);
        let act = E::cast_from(x * sigmoid(x));
        out[i] = E::cast_from(f32::cast_from(act) * f32::cast_from(u[i]));
    }
}

/// The SwiGLU gate's gradients: `dU = dZ·silu(G)`, `dG = dZ·U·σ(G)·(1 + G·(1 − σ(G)))`.
#[cube(launch)]
pub fn swiglu_backward<E: Float>(
    g: &Array<E>,
    u: &Array<E>,
    dz: &Array<E>,
    dg: &mut Array<E>,
    du: &mut Array<E>,
    len: u32,
) {
    let i = ABSOLUTE_POS;
    if i < len as usize {
        let x = f32::cast_from(g[i]);
        let d = f32::cast_from(dz[i]);
        let s = sigmoid(x);
        du[i] = E::cast_from(d * x * s);
        dg[i] = E::cast_from(d * f32::cast_from(u[i]) * s * (1.0f32 + x * (1.0f32 - s)));
    }
}

/// The rotary embedding of a 4-D `x` read through its strides (positions along axis
/// `seq_axis`, pairs along the last axis) into a contiguous `out` of `x`'s logical shape:
/// `out_j = x_j·cos ∓ x_{j^1}·sin` (`−` for even `j`; the signs swapped where `inverse`), with
/// `(cos, sin) = freq[t, j]` (burn's `freq_complex`, `[max_seq, head_dim, 2]`, f32).
#[cube(launch)]
pub fn rotary<E: Float>(
    x: &Tensor<E>,
    freq: &Array<f32>,
    out: &mut Array<E>,
    len: u32,
    #[comptime] seq_axis: u32,
    #[comptime] inverse: bool,
) {
    let i = ABSOLUTE_POS;
    if i < len as usize {
        let d = x.shape(3);
        let j = i % d;
        let rest = i / d;
        let c2 = rest % x.shape(2);
        let rest = rest / x.shape(2);
        let c1 = rest % x.shape(1);
        let c0 = rest / x.shape(1);
        let at = c0 * x.stride(0) + c1 * x.stride(1) + c2 * x.stride(2) + j * x.stride(3);
        let mut t = c2;
        if comptime![seq_axis == 1] {
            t = c1;
        }
        let odd = j % 2 == 1;
        let mut partner = at + x.stride(3);
        // the rotation's sign of the partner's term: −1 for the even element of a pair (+1
        // where `inverse`)
        let mut plus = odd;
        if odd {
            partner = at - x.stride(3);
        }
        if comptime![inverse] {
            plus = !odd;
        }
        let f = (t * d + j) * 2;
        let term = f32::cast_from(x[partner]) * freq[f + 1];
        let mut value = f32::cast_from(x[at]) * freq[f];
        if plus {
            value += term;
        } else {
            value -= term;
        }
        out[i] = E::cast_from(value);
    }
}
