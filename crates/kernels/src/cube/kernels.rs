//! The CubeCL kernels (f32; the weight and gradient of the full-rank steps and of the NaN/Inf
//! check also bf16). One unit per element unless said otherwise; every kernel checks its
//! bound, so any length works (no tile-size multiples needed).

// the cube macro needs initialized variables before comptime branches assign them
#![allow(unused_assignments)]
// explicit comparisons and divisions: the cube macro expands each statement into kernel IR
#![allow(clippy::manual_clamp, clippy::manual_div_ceil)]

use cubecl::prelude::*;

/// Residual modes of [`apply_update`] (comptime).
pub const MODE_NONE: u32 = 0;
/// `− e·sign(G − U_R)`.
pub const MODE_SIGN: u32 = 1;
/// `− e·(G − U_R)`.
pub const MODE_SGD: u32 = 2;
/// `− e·(G − α·U_R)·φ / limiter`.
pub const MODE_FIRA: u32 = 3;

#[cube]
fn sign_of(x: f32) -> f32 {
    let mut s = 0.0f32;
    if x > 0.0 {
        s = 1.0;
    }
    if x < 0.0 {
        s = -1.0;
    }
    s
}

/// `β·prev + (1 − β)·x`: one moment update.
#[cube]
fn ema(prev: f32, x: f32, beta: f32) -> f32 {
    prev * beta + x * (1.0 - beta)
}

/// Adam's normalized update `M / (√V / d + ε)`.
#[cube]
fn normalized(m: f32, v: f32, inv_divisor: f32, epsilon: f32) -> f32 {
    m / (f32::sqrt(v) * inv_divisor + epsilon)
}

/// Whether the step's skip flag (`skip[0]`, read only when `guarded`) says to change nothing.
#[cube]
fn held(skip: &Array<f32>, #[comptime] guarded: bool) -> bool {
    let mut h = false;
    if comptime![guarded] {
        h = skip[0] != 0.0;
    }
    h
}

/// Adam: reads `M`, `V`, writes the new moments to `m_out`, `v_out` and `N` to `n` (in `O`: f32,
/// or f16/bf16 for an update GEMM on 16-bit tensor cores, rounded once). Where `strided`, `R` is
/// read and `N` written through their row strides (`cols` columns; rows padded for cuBLAS's
/// aligned kernels, `EmberBackend::projection_down`); the moments are dense.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn subspace_adam<O: Float>(
    r: &Tensor<f32>,
    m: &Array<f32>,
    v: &Array<f32>,
    m_out: &mut Array<f32>,
    v_out: &mut Array<f32>,
    n: &mut Tensor<O>,
    skip: &Array<f32>,
    len: u32,
    cols: u32,
    beta_1: f32,
    beta_2: f32,
    inv_divisor: f32,
    epsilon: f32,
    #[comptime] guarded: bool,
    #[comptime] strided: bool,
) {
    let i = ABSOLUTE_POS;
    if i < len as usize {
        let ri = offset_2d::<f32>(r, i, cols, strided);
        let mut ni = i;
        if comptime![strided] {
            ni = (i / cols as usize) * n.stride(0) + i % cols as usize;
        }
        if held(skip, guarded) {
            m_out[i] = m[i];
            v_out[i] = v[i];
            n[ni] = O::cast_from(0.0f32);
        } else {
            let x = r[ri];
            let m1 = ema(m[i], x, beta_1);
            let v1 = ema(v[i], x * x, beta_2);
            m_out[i] = m1;
            v_out[i] = v1;
            n[ni] = O::cast_from(normalized(m1, v1, inv_divisor, epsilon));
        }
    }
}

/// [`subspace_adam`] on a dense `R` and `N`, four f32 elements a load (16 bytes; `N` written
/// four at a time in `O`, `n_out`): the same arithmetic, element by element, in the same order, so the two
/// write the same bits. `vectors` = the element count / 4; one vector a unit.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn subspace_adam_vec<O: Float, N: Size>(
    r: &Array<Vector<f32, N>>,
    m: &Array<Vector<f32, N>>,
    v: &Array<Vector<f32, N>>,
    m_out: &mut Array<Vector<f32, N>>,
    v_out: &mut Array<Vector<f32, N>>,
    n_out: &mut Array<Vector<O, N>>,
    skip: &Array<f32>,
    vectors: u32,
    beta_1: f32,
    beta_2: f32,
    inv_divisor: f32,
    epsilon: f32,
    #[comptime] guarded: bool,
) {
    let i = ABSOLUTE_POS;
    if i < vectors as usize {
        if held(skip, guarded) {
            m_out[i] = m[i];
            v_out[i] = v[i];
            n_out[i] = Vector::new(O::cast_from(0.0f32));
        } else {
            let x = r[i];
            // `ema` and `normalized`, element-wise
            let m1 = m[i] * Vector::new(beta_1) + x * Vector::new(1.0 - beta_1);
            let v1 = v[i] * Vector::new(beta_2) + (x * x) * Vector::new(1.0 - beta_2);
            m_out[i] = m1;
            v_out[i] = v1;
            n_out[i] = Vector::cast_from(
                m1 / (Vector::sqrt(v1) * Vector::new(inv_divisor) + Vector::new(epsilon)),
            );
        }
    }
}

/// Elements each unit of [`adam_full`] updates: `ADAM_PER_UNIT` independent loads of each input
/// in flight per thread (one element a thread kept a bf16 step's loads at two bytes each).
pub const ADAM_PER_UNIT: usize = 4;

/// Offset of element `i` (row-major over `cols` columns) in `t`: `i` itself where every input is
/// dense, else through `t`'s strides (CUDA's padded rows, views) — no dense copy first.
#[cube]
fn offset_2d<E: CubePrimitive>(
    t: &Tensor<E>,
    i: usize,
    cols: u32,
    #[comptime] strided: bool,
) -> usize {
    let mut o = i;
    if comptime![strided] {
        o = (i / cols as usize) * t.stride(0) + (i % cols as usize) * t.stride(1);
    }
    o
}

/// Full-rank AdamW: reads `W`, `G`, `M`, `V` once, writes the new `W`, `M`, `V` once. `W` and
/// `G` in `E`, the moments in `S` (each f32 or bf16): computed in f32, `N` from the f32 moments,
/// then the weight and the moments rounded once. The inputs are read through their strides
/// where `strided` (2-D, `cols` columns), the outputs are dense; unit `u` of `units` updates
/// elements `u, u + units, …` ([`ADAM_PER_UNIT`] of them, each access coalesced across a warp).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn adam_full<E: Float, S: Float>(
    w: &Tensor<E>,
    g: &Tensor<E>,
    m: &Tensor<S>,
    v: &Tensor<S>,
    w_out: &mut Array<E>,
    m_out: &mut Array<S>,
    v_out: &mut Array<S>,
    skip: &Array<f32>,
    len: u32,
    cols: u32,
    units: u32,
    beta_1: f32,
    beta_2: f32,
    inv_divisor: f32,
    epsilon: f32,
    pre: f32,
    step: f32,
    post: f32,
    #[comptime] guarded: bool,
    #[comptime] strided: bool,
) {
    let hold = held(skip, guarded);
    #[unroll]
    for k in 0..ADAM_PER_UNIT as u32 {
        let i = ABSOLUTE_POS + (k * units) as usize;
        if i < len as usize {
            let wi = w[offset_2d::<E>(w, i, cols, strided)];
            let mi = m[offset_2d::<S>(m, i, cols, strided)];
            let vi = v[offset_2d::<S>(v, i, cols, strided)];
            if hold {
                m_out[i] = mi;
                v_out[i] = vi;
                w_out[i] = wi;
            } else {
                let x = f32::cast_from(g[offset_2d::<E>(g, i, cols, strided)]);
                let m1 = ema(f32::cast_from(mi), x, beta_1);
                let v1 = ema(f32::cast_from(vi), x * x, beta_2);
                m_out[i] = S::cast_from(m1);
                v_out[i] = S::cast_from(v1);
                let n = normalized(m1, v1, inv_divisor, epsilon);
                w_out[i] = E::cast_from((f32::cast_from(wi) * pre - n * step) * post);
            }
        }
    }
}

/// Vectors each unit of [`adam_full_vec`] updates (each vector `N` elements, 16 bytes of the
/// widest of `E` and `S`).
pub const ADAM_VECTORS_PER_UNIT: usize = 2;

/// [`adam_full`] on dense inputs, `N` elements a load and a store (16-byte accesses: four f32 or
/// eight bf16 a unit instead of one): the same arithmetic, element by element, in the same order,
/// so the two write the same bits. `vectors` = the element count / `N`; unit `u` of `units`
/// updates vectors `u, u + units, …` ([`ADAM_VECTORS_PER_UNIT`] of them).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn adam_full_vec<E: Float, S: Float, N: Size>(
    w: &Array<Vector<E, N>>,
    g: &Array<Vector<E, N>>,
    m: &Array<Vector<S, N>>,
    v: &Array<Vector<S, N>>,
    w_out: &mut Array<Vector<E, N>>,
    m_out: &mut Array<Vector<S, N>>,
    v_out: &mut Array<Vector<S, N>>,
    skip: &Array<f32>,
    vectors: u32,
    units: u32,
    beta_1: f32,
    beta_2: f32,
    inv_divisor: f32,
    epsilon: f32,
    pre: f32,
    step: f32,
    post: f32,
    #[comptime] guarded: bool,
) {
    let hold = held(skip, guarded);
    #[unroll]
    for k in 0..ADAM_VECTORS_PER_UNIT as u32 {
        let i = ABSOLUTE_POS + (k * units) as usize;
        if i < vectors as usize {
            if hold {
                m_out[i] = m[i];
                v_out[i] = v[i];
                w_out[i] = w[i];
            } else {
                let x = Vector::<f32, N>::cast_from(g[i]);
                let m0 = Vector::<f32, N>::cast_from(m[i]);
                let v0 = Vector::<f32, N>::cast_from(v[i]);
                // `ema` and `normalized`, element-wise
                let m1 = m0 * Vector::new(beta_1) + x * Vector::new(1.0 - beta_1);
                let v1 = v0 * Vector::new(beta_2) + (x * x) * Vector::new(1.0 - beta_2);
                m_out[i] = Vector::cast_from(m1);
                v_out[i] = Vector::cast_from(v1);
                let n = m1 / (Vector::sqrt(v1) * Vector::new(inv_divisor) + Vector::new(epsilon));
                let w0 = Vector::<f32, N>::cast_from(w[i]);
                w_out[i] = Vector::cast_from(
                    (w0 * Vector::new(pre) - n * Vector::new(step)) * Vector::new(post),
                );
            }
        }
    }
}

/// The epilogue of the back-projection for one block of rows of `W` (elements
/// `offset..offset+len`, `u_n`/`u_r` the block's `up(N)`/`up(R)`), read from `w`, written to
/// `w_out`: `W' = post·(pre·W − step·U_N − residual)`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn apply_update(
    w: &Array<f32>,
    w_out: &mut Array<f32>,
    u_n: &Array<f32>,
    g: &Array<f32>,
    u_r: &Array<f32>,
    phi: &Array<f32>,
    limiter: &Array<f32>,
    skip: &Array<f32>,
    offset: u32,
    len: u32,
    cols: u32,
    row0: u32,
    pre: f32,
    step: f32,
    residual_step: f32,
    alpha: f32,
    post: f32,
    #[comptime] mode: u32,
    #[comptime] phi_per_column: bool,
    #[comptime] guarded: bool,
) {
    let i = ABSOLUTE_POS;
    if i < len as usize && held(skip, guarded) {
        let k = offset as usize + i;
        w_out[k] = w[k];
    } else if i < len as usize {
        let k = offset as usize + i;
        let mut x = w[k] * pre - u_n[i] * step;
        if comptime![mode == MODE_SIGN] {
            x -= residual_step * sign_of(g[k] - u_r[i]);
        }
        if comptime![mode == MODE_SGD] {
            x -= residual_step * (g[k] - u_r[i]);
        }
        if comptime![mode == MODE_FIRA] {
            let ph = phi_at(phi, i, cols, row0, phi_per_column);
            x -= residual_step * ((g[k] - alpha * u_r[i]) * ph / limiter[0]);
        }
        w_out[k] = x * post;
    }
}

/// Fira's `φ` for element `i` of a block of `cols` columns starting at row `row0`: per column
/// (`columns`) or per row.
#[cube]
fn phi_at(phi: &Array<f32>, i: usize, cols: u32, row0: u32, #[comptime] columns: bool) -> f32 {
    let mut ph = 0.0f32;
    if comptime![columns] {
        ph = phi[i % cols as usize];
    } else {
        ph = phi[row0 as usize + i / cols as usize];
    }
    ph
}

/// Fira's update in one launch of `len + low_len` units, both parts of
/// `W' = post·(pre·W − c·(G∘φ)/l) − post·up(M)` but the product:
/// * units `i < len`, the full-size part: `W'[i] = post·(pre·W − c·(G∘φ)/l)[i]` (`W` where the
///   step is held);
/// * units `len + j`, the low-rank `M = a·N − b·(R∘φ)/l` (`low_rows × low_cols`), so that
///   `up(M) = a·up(N) − b·(up(R)∘φ)/l`; zero where the step is held.
///
/// `φ` per column (`columns`) or per row of both; `l = limiter[0]`. The GEMM
/// `W' ← W' − post·up(M)` follows.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn fira_parts(
    w: &Array<f32>,
    g: &Array<f32>,
    n: &Array<f32>,
    r: &Array<f32>,
    phi: &Array<f32>,
    limiter: &Array<f32>,
    skip: &Array<f32>,
    w_out: &mut Array<f32>,
    low: &mut Array<f32>,
    len: u32,
    cols: u32,
    low_len: u32,
    low_cols: u32,
    pre: f32,
    c: f32,
    post: f32,
    a: f32,
    b: f32,
    #[comptime] columns: bool,
    #[comptime] guarded: bool,
) {
    let i = ABSOLUTE_POS;
    let full = len as usize;
    if i < full {
        if held(skip, guarded) {
            w_out[i] = w[i];
        } else {
            let ph = phi_at(phi, i, cols, 0u32, columns);
            w_out[i] = (w[i] * pre - c * (g[i] * ph / limiter[0])) * post;
        }
    } else if i < full + low_len as usize {
        let j = i - full;
        if held(skip, guarded) {
            low[j] = 0.0;
        } else {
            let ph = phi_at(phi, j, low_cols, 0u32, columns);
            low[j] = a * n[j] - b * r[j] * ph / limiter[0];
        }
    }
}

/// Fira's `Ψ²` of one block of `rows × cols` (`u_r` holds `up(R)` of the block), one unit per
/// (group of `group` rows, column) — coalesced reads, a short chain of loads each — summed over
/// each cube (a tree in shared memory, [`crate::cube::layers::cube_sums`]):
/// `out[out0 + c] = Σ_{units t of cube c} Σ_{r in t's group} ((G − α·U_R)·φ)²[r, j]`. The
/// limiter ([`fira_limit`]) sums those per-cube partial sums. Every unit of a cube takes part in
/// the tree (units past the end add zero; cubes from `cubes` on, where the grid is rounded up,
/// write nothing); the order of every sum is fixed, so a step is
/// reproducible bit for bit. (burn's reduction of a whole block cost 0.29 ms at 762×11008 on
/// the H100; one unit per group of 32 rows, with the limiter summing per-unit partials, kept a
/// 512×1376 pass at ≈ 12 µs and the limiter at ≈ 8 µs by their chains of loads.)
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn fira_psi_partial(
    g: &Array<f32>,
    u_r: &Array<f32>,
    phi: &Array<f32>,
    out: &mut Array<f32>,
    offset: u32,
    rows: u32,
    cols: u32,
    row0: u32,
    group: u32,
    alpha: f32,
    out0: u32,
    cubes: u32,
    #[comptime] phi_per_column: bool,
    #[comptime] units: u32,
) {
    let t = ABSOLUTE_POS;
    let groups = (rows + group - 1) / group;
    let mut acc = 0.0f32;
    if t < (groups * cols) as usize {
        let k = t / cols as usize;
        let j = t % cols as usize;
        let start = k * group as usize;
        let mut end = start + group as usize;
        if end > rows as usize {
            end = rows as usize;
        }
        for r in start..end {
            let i = r * cols as usize + j;
            let ph = phi_at(phi, i, cols, row0, phi_per_column);
            let psi = (g[offset as usize + i] - alpha * u_r[i]) * ph;
            acc += psi * psi;
        }
    }
    let (sum, _) = crate::cube::layers::cube_sums(acc, 0.0f32, units);
    if UNIT_POS == 0 && CUBE_POS < cubes as usize {
        out[out0 as usize + CUBE_POS] = sum;
    }
}

/// Fira's scaling `φ = ‖N‖/(‖R‖ + 1e-8)` of the low-rank `rows × cols` pair: norms down the
/// columns (`columns`, `φ` is `[1, cols]`) or along the rows (`[rows, 1]`). One cube of `units`
/// units per output: unit `u` sums elements `u, u + units, …` of its column or row, then a tree
/// in shared memory ([`crate::cube::layers::cube_sums`]) — one unit per output, summing a
/// column of 128 alone, took ≈ 36 µs on the H100 (a chain of 128 loads).
#[cube(launch)]
pub fn fira_phi(
    n: &Array<f32>,
    r: &Array<f32>,
    out: &mut Array<f32>,
    rows: u32,
    cols: u32,
    #[comptime] columns: bool,
    #[comptime] units: u32,
) {
    let j = CUBE_POS;
    let (count, length) = if comptime![columns] {
        (cols as usize, rows as usize)
    } else {
        (rows as usize, cols as usize)
    };
    let mut sn = 0.0f32;
    let mut sr = 0.0f32;
    if j < count {
        let mut k = UNIT_POS as usize;
        while k < length {
            let mut at = j * cols as usize + k;
            if comptime![columns] {
                at = k * cols as usize + j;
            }
            let a = n[at];
            let b = r[at];
            sn += a * a;
            sr += b * b;
            k += units as usize;
        }
    }
    let (tn, tr) = crate::cube::layers::cube_sums(sn, sr, units);
    if UNIT_POS == 0 && j < count {
        out[j] = f32::sqrt(tn) / (f32::sqrt(tr) + 1e-8);
    }
}

/// Fira's norm-growth limiter from the `count` partial sums of `Ψ²` ([`fira_psi_partial`]),
/// one cube of `units` units (a power of two): they sum the partials (strided, then a tree in
/// shared memory), and unit 0 sets `ζ = ‖Ψ‖`, and with a previous `ζ` (`has_prev`)
/// `limiter = max(‖Ψ‖/(ζ_prev + 1e-8), γ)/γ`, `ζ = ‖Ψ‖/limiter` (else 1). Where the step is
/// held the old `ζ` stays (`no_prev`, `+∞`, without one: the next step's limiter is 1).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn fira_limit(
    partials: &Array<f32>,
    prev: &Array<f32>,
    skip: &Array<f32>,
    limiter: &mut Array<f32>,
    zeta: &mut Array<f32>,
    count: u32,
    gamma: f32,
    no_prev: f32,
    #[comptime] units: u32,
    #[comptime] has_prev: bool,
    #[comptime] guarded: bool,
) {
    let u = UNIT_POS as usize;
    let mut acc = 0.0f32;
    let mut k = u;
    while k < count as usize {
        acc += partials[k];
        k += units as usize;
    }
    let (sum, _) = crate::cube::layers::cube_sums(acc, 0.0f32, units);
    if u == 0 {
        let norm = f32::sqrt(sum);
        let mut l = 1.0f32;
        let mut z = norm;
        if comptime![has_prev] {
            let ratio = norm / (prev[0] + 1e-8);
            if ratio > gamma {
                l = ratio / gamma;
            }
            z = norm / l;
        }
        if held(skip, guarded) {
            if comptime![has_prev] {
                z = prev[0];
            } else {
                z = no_prev;
            }
        }
        limiter[0] = l;
        zeta[0] = z;
    }
}

/// State-free signSGD (`sign = true`) or SGD: `W' = post·(pre·W − step·f(G))`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn state_free(
    w: &Array<f32>,
    w_out: &mut Array<f32>,
    g: &Array<f32>,
    skip: &Array<f32>,
    len: u32,
    pre: f32,
    step: f32,
    post: f32,
    #[comptime] sign: bool,
    #[comptime] guarded: bool,
) {
    let i = ABSOLUTE_POS;
    if i < len as usize && held(skip, guarded) {
        w_out[i] = w[i];
    } else if i < len as usize {
        let mut d = g[i];
        if comptime![sign] {
            d = sign_of(d);
        }
        w_out[i] = (w[i] * pre - step * d) * post;
    }
}

/// Dequantizes `bits`-bit codes (`32/bits` per word, lowest bits first).
#[cube(launch)]
pub fn dequantize(
    packed: &Array<u32>,
    scales: &Array<f32>,
    zeros: &Array<f32>,
    out: &mut Array<f32>,
    len: u32,
    group: u32,
    #[comptime] bits: u32,
) {
    let i = ABSOLUTE_POS;
    if i < len as usize {
        let per = comptime![32 / bits] as usize;
        let mask = comptime![(1u32 << bits) - 1];
        let shift = comptime![bits] * (i % per) as u32;
        let q = (packed[i / per] >> shift) & mask;
        let gi = i / group as usize;
        out[i] = (f32::cast_from(q) - zeros[gi]) * scales[gi];
    }
}

#[cube]
fn mix(x: u32) -> u32 {
    let mut x = x;
    x ^= x >> 16;
    x *= 0x7feb_352du32;
    x ^= x >> 15;
    x *= 0x846c_a68bu32;
    x ^= x >> 16;
    x
}

#[cube]
fn uniform(key_0: u32, key_1: u32, i: u32) -> f32 {
    let h = mix(mix(i ^ key_0) ^ key_1);
    f32::cast_from(h >> 8) * (1.0 / 16_777_216.0)
}

/// Per-group INT8 quantization: one unit per group of `group` elements (a multiple of 4); writes
/// `(scale, zero)` and the packed codes. Stochastic rounding with the counter-based uniforms of
/// `(key_0, key_1)` when `stochastic`, else round to nearest.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn quantize_int8(
    w: &Array<f32>,
    codes: &mut Array<u32>,
    qparams: &mut Array<f32>,
    groups: u32,
    group: u32,
    key_0: u32,
    key_1: u32,
    #[comptime] stochastic: bool,
) {
    let gi = ABSOLUTE_POS;
    if gi < groups as usize {
        let size = group as usize;
        let base = gi * size;
        let mut lo = w[base];
        let mut hi = w[base];
        for k in 1..size {
            let x = w[base + k];
            if x < lo {
                lo = x;
            }
            if x > hi {
                hi = x;
            }
        }
        let mut scale = hi - lo;
        if scale < 1e-5 {
            scale = 1e-5;
        }
        scale /= 255.0;
        let mut zero = f32::round(-(lo / scale));
        if zero < 0.0 {
            zero = 0.0;
        }
        if zero > 255.0 {
            zero = 255.0;
        }
        qparams[2 * gi] = scale;
        qparams[2 * gi + 1] = zero;
        for word in 0..size / 4 {
            let mut packed = 0u32;
            for b in 0..4usize {
                let idx = base + word * 4 + b;
                let y = w[idx] / scale;
                let mut q = 0.0f32;
                if comptime![stochastic] {
                    let f = f32::floor(y);
                    q = f;
                    if uniform(key_0, key_1, idx as u32) < y - f {
                        q = f + 1.0;
                    }
                } else {
                    q = f32::round(y);
                }
                q += zero;
                if q < 0.0 {
                    q = 0.0;
                }
                if q > 255.0 {
                    q = 255.0;
                }
                packed |= u32::cast_from(q) << (8 * b as u32);
            }
            codes[base / 4 + word] = packed;
        }
    }
}

/// One Newton–Schulz polynomial on the `r × r` Gram matrix `A`:
/// `out = c₀·I + c₁·A + c₂·A²` (`a2` holds `A²`, read only with `has_a2`), one unit per element.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn newton_schulz_poly(
    a: &Array<f32>,
    a2: &Array<f32>,
    out: &mut Array<f32>,
    r: u32,
    c0: f32,
    c1: f32,
    c2: f32,
    #[comptime] has_a2: bool,
) {
    let i = ABSOLUTE_POS;
    let n = r as usize;
    if i < n * n {
        let mut v = c1 * a[i];
        if comptime![has_a2] {
            v += c2 * a2[i];
        }
        if i / n == i % n {
            v += c0;
        }
        out[i] = v;
    }
}

/// ℓ1 norms of the columns (`columns = true`) or rows of a `rows×cols` matrix: one unit per
/// output.
#[cube(launch)]
pub fn abs_sums(
    x: &Array<f32>,
    out: &mut Array<f32>,
    rows: u32,
    cols: u32,
    #[comptime] columns: bool,
) {
    let j = ABSOLUTE_POS;
    let (count, length) = if comptime![columns] {
        (cols as usize, rows as usize)
    } else {
        (rows as usize, cols as usize)
    };
    if j < count {
        let mut s = 0.0f32;
        for k in 0..length {
            if comptime![columns] {
                s += f32::abs(x[k * cols as usize + j]);
            } else {
                s += f32::abs(x[j * cols as usize + k]);
            }
        }
        out[j] = s;
    }
}

/// Copies a tensor of any strides into a dense buffer (row-major order), elements of type `E`.
#[cube(launch)]
pub fn copy_strided<E: Float>(input: &Tensor<E>, out: &mut Array<E>, len: u32) {
    let i = ABSOLUTE_POS;
    if i < len as usize {
        let mut offset = 0usize;
        let mut rest = i;
        let rank = input.rank();
        for d in 0..rank {
            let axis = rank - 1 - d;
            let size = input.shape(axis);
            offset += (rest % size) * input.stride(axis);
            rest /= size;
        }
        out[i] = input[offset];
    }
}

/// Elements each unit of [`non_finite_flag`] reads: `FLAG_PER_UNIT` independent loads in flight
/// per thread instead of one (a one-element pass ran at ≈ 1 TB/s on the H100).
pub const FLAG_PER_UNIT: usize = 8;

/// Sets `out[index]` to 1 where `g` holds a NaN or ±Inf (every writer stores the same value, so
/// the race is benign); `out` starts at 0. Unit `u` of `units` reads elements
/// `u, u + units, …` ([`FLAG_PER_UNIT`] of them): each load is coalesced across a warp.
#[cube(launch)]
pub fn non_finite_flag<E: Float>(
    g: &Array<E>,
    out: &mut Array<f32>,
    len: u32,
    units: u32,
    index: u32,
) {
    let mut bad = false;
    #[unroll]
    for k in 0..FLAG_PER_UNIT as u32 {
        let i = ABSOLUTE_POS + (k * units) as usize;
        if i < len as usize {
            let x = f32::cast_from(g[i]);
            if f32::is_nan(x) || f32::is_inf(x) {
                bad = true;
            }
        }
    }
    if bad {
        out[index as usize] = 1.0;
    }
}

/// [`non_finite_flag`] on a 2-D tensor read through its strides (rows padded by CUDA, transposed
/// views): no dense copy first, and the padding between rows is never read.
#[cube(launch)]
pub fn non_finite_flag_strided<E: Float>(
    g: &Tensor<E>,
    out: &mut Array<f32>,
    len: u32,
    cols: u32,
    units: u32,
    index: u32,
) {
    let mut bad = false;
    #[unroll]
    for k in 0..FLAG_PER_UNIT as u32 {
        let i = ABSOLUTE_POS + (k * units) as usize;
        if i < len as usize {
            let r = i / cols as usize;
            let c = i % cols as usize;
            let x = f32::cast_from(g[r * g.stride(0) + c * g.stride(1)]);
            if f32::is_nan(x) || f32::is_inf(x) {
                bad = true;
            }
        }
    }
    if bad {
        out[index as usize] = 1.0;
    }
}

/// Index of the nearest value of a sorted 256-entry map to `x` (binary search for the last
/// `map[k] ≤ x`, then the nearer of `k` and `k + 1`; ties go to `k`).
#[cube]
fn nearest_code(map: &Array<f32>, x: f32) -> u32 {
    let mut lo = 0u32;
    #[unroll]
    for k in 0..8u32 {
        // at most 128 + 64 + … + 1 = 255: always inside the map
        let cand = lo + (128u32 >> k);
        if map[cand as usize] <= x {
            lo = cand;
        }
    }
    let mut code = lo;
    if lo < 255 {
        let below = map[lo as usize];
        let above = map[(lo + 1) as usize];
        if above - x < x - below {
            code = lo + 1;
        }
    }
    code
}

/// Adam with blockwise 8-bit moments (bitsandbytes' dynamic maps), one cube per block of
/// `4·words_per_block` elements, one unit per 32-bit word of codes (4 elements): dequantize,
/// update in f32, block absmax through shared memory, requantize; the f32 moments never leave
/// registers. `out` receives `N` (subspace Adam) or, with `update_weight`, the new weight
/// `post·(pre·W − step·N)` (`w` is read only then). `G`, `W` and `out` in `E` (f32, or bf16 for
/// the full-rank step: computed in f32, rounded once).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn adam_8bit<E: Float, O: Float>(
    g: &Array<E>,
    w: &Array<E>,
    out: &mut Array<O>,
    codes_1: &Array<u32>,
    absmax_1: &Array<f32>,
    codes_2: &Array<u32>,
    absmax_2: &Array<f32>,
    codes_1_out: &mut Array<u32>,
    absmax_1_out: &mut Array<f32>,
    codes_2_out: &mut Array<u32>,
    absmax_2_out: &mut Array<f32>,
    map_1: &Array<f32>,
    map_2: &Array<f32>,
    skip: &Array<f32>,
    len: u32,
    blocks: u32,
    beta_1: f32,
    one_minus_beta_1: f32,
    beta_2: f32,
    one_minus_beta_2: f32,
    divisor: f32,
    epsilon: f32,
    pre: f32,
    step: f32,
    post: f32,
    #[comptime] words_per_block: u32,
    #[comptime] update_weight: bool,
    #[comptime] guarded: bool,
) {
    let wpb = comptime![words_per_block as usize];
    let b = CUBE_POS;
    let u = UNIT_POS as usize;
    let valid = b < blocks as usize;
    let word = b * wpb + u;
    let mut shared_1 = SharedMemory::<f32>::new(wpb);
    let mut shared_2 = SharedMemory::<f32>::new(wpb);
    let mut m_new = Array::<f32>::new(4usize);
    let mut v_new = Array::<f32>::new(4usize);
    let mut a1 = 0.0f32;
    let mut a2 = 0.0f32;
    let mut cw1 = 0u32;
    let mut cw2 = 0u32;
    if valid {
        a1 = absmax_1[b];
        a2 = absmax_2[b];
        cw1 = codes_1[word];
        cw2 = codes_2[word];
    }
    let mut local_1 = 0.0f32;
    let mut local_2 = 0.0f32;
    #[unroll]
    for k in 0..4u32 {
        let i = word * 4usize + k as usize;
        let mut m1 = 0.0f32;
        let mut v1 = 0.0f32;
        if valid && i < len as usize {
            let c1 = (cw1 >> (8 * k)) & 255u32;
            let c2 = (cw2 >> (8 * k)) & 255u32;
            let x = f32::cast_from(g[i]);
            m1 = map_1[c1 as usize] * a1 * beta_1 + x * one_minus_beta_1;
            v1 = map_2[c2 as usize] * a2 * beta_2 + x * x * one_minus_beta_2;
        }
        m_new[k as usize] = m1;
        v_new[k as usize] = v1;
        let am = f32::abs(m1);
        if am > local_1 {
            local_1 = am;
        }
        if v1 > local_2 {
            local_2 = v1;
        }
    }
    shared_1[u] = local_1;
    shared_2[u] = local_2;
    sync_cube();
    let mut block_1 = 0.0f32;
    let mut block_2 = 0.0f32;
    for j in 0..wpb {
        let s1 = shared_1[j];
        let s2 = shared_2[j];
        if s1 > block_1 {
            block_1 = s1;
        }
        if s2 > block_2 {
            block_2 = s2;
        }
    }
    if valid && held(skip, guarded) {
        // the step is skipped: the moments as they were, `N = 0` (or `W` as it was)
        if u == 0 {
            absmax_1_out[b] = a1;
            absmax_2_out[b] = a2;
        }
        codes_1_out[word] = cw1;
        codes_2_out[word] = cw2;
        #[unroll]
        for k in 0..4u32 {
            let i = word * 4usize + k as usize;
            if i < len as usize {
                if comptime![update_weight] {
                    out[i] = O::cast_from(w[i]);
                } else {
                    out[i] = O::cast_from(0.0f32);
                }
            }
        }
    } else if valid {
        if u == 0 {
            absmax_1_out[b] = block_1;
            absmax_2_out[b] = block_2;
        }
        let mut d1 = block_1;
        if d1 < 1.175_494_4e-38f32 {
            d1 = 1.175_494_4e-38f32;
        }
        let mut d2 = block_2;
        if d2 < 1.175_494_4e-38f32 {
            d2 = 1.175_494_4e-38f32;
        }
        let mut packed_1 = 0u32;
        let mut packed_2 = 0u32;
        #[unroll]
        for k in 0..4u32 {
            let m1 = m_new[k as usize];
            let v1 = v_new[k as usize];
            packed_1 |= nearest_code(map_1, m1 / d1) << (8 * k);
            packed_2 |= nearest_code(map_2, v1 / d2) << (8 * k);
            let i = word * 4usize + k as usize;
            if i < len as usize {
                let n = m1 / (f32::sqrt(v1) / divisor + epsilon);
                if comptime![update_weight] {
                    out[i] = O::cast_from((f32::cast_from(w[i]) * pre - n * step) * post);
                } else {
                    out[i] = O::cast_from(n);
                }
            }
        }
        codes_1_out[word] = packed_1;
        codes_2_out[word] = packed_2;
    }
}

/// Writes `value` to `flags[0]` (one unit): queued after the kernels that wrote a cuBLAS GEMM's
/// operands, it tells cuBLAS's stream that they are ready (`cublas` module). `a`, `b`, `c`, `d` (the
/// GEMM's buffers and its device-side scalars, any dtype; a buffer may repeat) are bound and never read: CubeCL then orders this kernel after
/// their writers on its other streams too.
#[cube(launch)]
pub fn signal_flag(
    flags: &mut Array<Atomic<u32>>,
    _a: &Array<u32>,
    _b: &Array<u32>,
    _c: &Array<u32>,
    _d: &Array<u32>,
    value: u32,
) {
    if ABSOLUTE_POS == 0 {
        flags[0].store(value);
    }
}

/// Spins until `flags[1] ≥ value` (one unit; compared as sequence numbers, through wrap-around):
/// burn's stream goes on once cuBLAS's stream has written the product (`cublas` module). `c`, the
/// product, is bound and never read: its readers on CubeCL's other streams wait for this kernel.
#[cube(launch)]
pub fn wait_flag(flags: &mut Array<Atomic<u32>>, _c: &Array<u32>, value: u32) {
    if ABSOLUTE_POS == 0 {
        loop {
            // `flags[1] − value` wraps below zero to ≥ 2³¹
            if flags[1].load() - value < 0x8000_0000u32 {
                break;
            }
        }
    }
}

/// The `α`, `β` of an accumulating GEMM (`C ← α·A·B + β·C`) under the step's skip flag:
/// `out = [α, β]`, or `[0, 1]` where the step is skipped (`C` stays as it was). One unit; cuBLAS
/// reads `out` on the device (`cublas` module).
#[cube(launch)]
pub fn guarded_scalars(skip: &Array<f32>, out: &mut Array<f32>, alpha: f32, beta: f32) {
    if ABSOLUTE_POS == 0 {
        let mut a = alpha;
        let mut b = beta;
        if skip[0] != 0.0 {
            a = 0.0;
            b = 1.0;
        }
        out[0] = a;
        out[1] = b;
    }
}
