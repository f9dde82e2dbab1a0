//! CubeCL kernels of the model's element-wise layers: RMSNorm ([`crate::norm`]), the SwiGLU gate
//! ([`crate::swiglu`]), the rotary embedding ([`crate::rotary`]) and attention's causal softmax
//! ([`crate::attention`]). Each reads its inputs in
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

/// The largest of `a` over the cube (every unit gets it): a tree in shared memory.
#[cube]
fn cube_max(a: f32, #[comptime] units: u32) -> f32 {
    let u = UNIT_POS as usize;
    let mut shared = SharedMemory::<f32>::new(units as usize);
    shared[u] = a;
    sync_cube();
    let mut stride = (CUBE_DIM / 2) as usize;
    while stride > 0 {
        if u < stride {
            let other = shared[u + stride];
            if other > shared[u] {
                shared[u] = other;
            }
        }
        sync_cube();
        stride /= 2;
    }
    shared[0]
}

/// Where row `row` (`= (b·heads + h)·queries + i`) of a 4-D tensor starts, read through its
/// strides, and the step between its elements: `(start, step)` (`(0, 1)` for a cube past the
/// last row, which reads nothing).
#[cube]
fn strided_row<E: Float>(t: &Tensor<E>, row: usize, valid: bool) -> (usize, usize) {
    let mut at = 0usize;
    let mut step = 1usize;
    if valid {
        let i = row % t.shape(2);
        let bh = row / t.shape(2);
        at = (bh / t.shape(1)) * t.stride(0) + (bh % t.shape(1)) * t.stride(1) + i * t.stride(2);
        step = t.stride(3);
    }
    (at, step)
}

/// The causal softmax of one row of scores per cube ([`crate::attention`]): row `row` of the
/// `[batch, heads, queries, keys]` scores `s` (read through its strides: a product's output
/// needs no copy) belongs to query `i = row mod queries`, which sees keys `j ≤ i`;
/// `out_j = exp(x_j − max)/Σ exp(x − max)` with `x = scale·s` for those keys, 0 for the others
/// (burn's `mask_fill(−10⁹)` then `softmax`, whose masked terms are exactly 0 in f32), `out`
/// dense. In f32, rounded once to `E`.
#[cube(launch)]
pub fn causal_softmax<E: Float>(
    s: &Tensor<E>,
    out: &mut Array<E>,
    rows: u32,
    queries: u32,
    keys: u32,
    scale: f32,
    #[comptime] units: u32,
) {
    let row = CUBE_POS;
    let u = UNIT_POS as usize;
    let n = keys as usize;
    let valid = row < rows as usize;
    let base = row * n;
    let (at, step) = strided_row(s, row, valid);
    // keys this query sees: `0..=i` (all of them where the row is shorter)
    let mut seen = row % queries as usize + 1;
    if seen > n {
        seen = n;
    }
    let mut top = f32::new(-3.0e38);
    if valid {
        let mut j = u;
        while j < seen {
            let x = scale * f32::cast_from(s[at + j * step]);
            if x > top {
                top = x;
            }
            j += units as usize;
        }
    }
    let top = cube_max(top, units);
    let mut acc = 0.0f32;
    if valid {
        let mut j = u;
        while j < seen {
            acc += f32::exp(scale * f32::cast_from(s[at + j * step]) - top);
            j += units as usize;
        }
    }
    let (sum, _) = cube_sums(acc, 0.0f32, units);
    let inv = 1.0f32 / sum;
    if valid {
        let mut j = u;
        while j < n {
            let mut p = 0.0f32;
            if j < seen {
                p = f32::exp(scale * f32::cast_from(s[at + j * step]) - top) * inv;
            }
            out[base + j] = E::cast_from(p);
            j += units as usize;
        }
    }
}

/// The gradient of the scores of [`causal_softmax`], one row per cube:
/// `dS = scale·P ∘ (dP − Σ_j dP_j·P_j)` (masked keys have `P = 0`, so `dS = 0` there); `P` and
/// `dS` dense, `dP` (a product's output) read through its strides.
#[cube(launch)]
pub fn causal_softmax_backward<E: Float>(
    p: &Array<E>,
    dp: &Tensor<E>,
    ds: &mut Array<E>,
    rows: u32,
    keys: u32,
    scale: f32,
    #[comptime] units: u32,
) {
    let row = CUBE_POS;
    let u = UNIT_POS as usize;
    let n = keys as usize;
    let valid = row < rows as usize;
    let base = row * n;
    let (at, step) = strided_row(dp, row, valid);
    let mut acc = 0.0f32;
    if valid {
        let mut j = u;
        while j < n {
            acc += f32::cast_from(dp[at + j * step]) * f32::cast_from(p[base + j]);
            j += units as usize;
        }
    }
    let (dot, _) = cube_sums(acc, 0.0f32, units);
    if valid {
        let mut j = u;
        while j < n {
            let pj = f32::cast_from(p[base + j]);
            ds[base + j] = E::cast_from(scale * pj * (f32::cast_from(dp[at + j * step]) - dot));
            j += units as usize;
        }
    }
}
