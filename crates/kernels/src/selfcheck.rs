//! The kernel conformance checks: every [`EmberBackend`] op of a backend against the
//! [`portable`] path on the same backend, on fresh random inputs whose shapes are not multiples of
//! any tile or block size, with blocks of the back-projection made small so that every code path
//! runs.
//!
//! Used by the tests (`tests/kernels_wgpu.rs`: wgpu, lavapipe in CI) and by `ember-bench kernels` (the
//! same checks on the GPU machine, CUDA). On a backend without fused kernels the checks compare
//! the portable path with itself.

use burn::prelude::*;
use burn::tensor::{Distribution, Int};

use crate::{
    portable, AdamCoefficients, Basis, Blockwise8, DynamicMaps, EmberBackend, ResidualUpdate,
    RoundingKey, UpdateCoefficients,
};

/// One comparison.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was compared.
    pub name: String,
    /// `max |fused − portable| / max(1, max |portable|)`.
    pub error: f64,
    /// Allowed error.
    pub tolerance: f64,
}

impl Check {
    /// Whether the error is within tolerance.
    pub fn passed(&self) -> bool {
        self.error <= self.tolerance
    }
}

/// f32 tolerance of the checks, relative to the largest magnitude.
pub const TOLERANCE: f64 = 2e-5;

fn compare<B: Backend, const D: usize>(
    out: &mut Vec<Check>,
    name: String,
    fused: Tensor<B, D>,
    reference: Tensor<B, D>,
) {
    compare_within(out, name, fused, reference, TOLERANCE)
}

fn compare_within<B: Backend, const D: usize>(
    out: &mut Vec<Check>,
    name: String,
    fused: Tensor<B, D>,
    reference: Tensor<B, D>,
    tolerance: f64,
) {
    assert_eq!(fused.dims(), reference.dims(), "{name}: shapes differ");
    let a: Vec<f32> = fused.into_data().convert::<f32>().to_vec().unwrap();
    let b: Vec<f32> = reference.into_data().convert::<f32>().to_vec().unwrap();
    let scale = b.iter().fold(1f64, |s, &x| s.max(x.abs() as f64));
    let error = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| {
            if x.is_finite() && y.is_finite() {
                (x as f64 - y as f64).abs()
            } else {
                f64::INFINITY
            }
        })
        .fold(0f64, f64::max)
        / scale;
    out.push(Check {
        name,
        error,
        tolerance,
    });
}

fn normal<B: Backend>(shape: [usize; 2], std: f64, device: &B::Device) -> Tensor<B, 2> {
    Tensor::random(shape, Distribution::Normal(0.0, std), device)
}

/// Runs every check on `device`; `seed` seeds the inputs.
pub fn run_all<B: EmberBackend>(device: &B::Device, seed: u64) -> Vec<Check> {
    B::seed(device, seed);
    let saved = crate::block_elements();
    let saved_min = crate::vendor_gemm_min_macs();
    // blocks of 3 rows of 130 or 40 columns: many blocks, a ragged last one
    crate::set_block_elements(400);
    // every product on the vendor's GEMM where there is one (cuBLAS), however small
    crate::set_vendor_gemm_min_macs(0);
    let mut out = vec![];
    projection_products::<B>(&mut out, device);
    adam::<B>(&mut out, device);
    adam_8bit::<B>(&mut out, device);
    projected::<B>(&mut out, device);
    fira_repeats::<B>(&mut out, device);
    f16_update::<B>(&mut out, device);
    held_weights::<B>(&mut out, device);
    padded_rows::<B>(&mut out, device);
    full_and_state_free::<B>(&mut out, device);
    quantization::<B>(&mut out, device);
    stochastic_rounding::<B>(&mut out, device);
    dct::<B>(&mut out, device);
    newton_schulz::<B>(&mut out, device);
    non_finite::<B>(&mut out, device);
    non_finite_strided::<B>(&mut out, device);
    skip_flag::<B>(&mut out, device);
    attention::<B>(&mut out, device);
    dense::<B>(&mut out, device);
    layers::<B>(&mut out, device);
    if B::supports_dtype(device, burn::tensor::DType::BF16) {
        bf16::<B>(&mut out, device);
    }
    crate::set_block_elements(saved);
    crate::set_vendor_gemm_min_macs(saved_min);
    out
}

fn adam<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    for (i, c) in coefficient_sets().into_iter().enumerate() {
        let shape = [37, 301];
        let r = normal::<B>(shape, 1.0, device);
        let m = normal::<B>(shape, 0.1, device);
        let v = normal::<B>(shape, 0.1, device).abs();
        let f = B::subspace_adam(r.clone(), m.clone(), v.clone(), c, None);
        let p = portable::subspace_adam(r, m, v, c, None);
        compare(out, format!("subspace_adam[{i}] N"), f.0, p.0);
        compare(out, format!("subspace_adam[{i}] M"), f.1, p.1);
        compare(out, format!("subspace_adam[{i}] V"), f.2, p.2);
    }
}

/// Tolerance of [`EmberBackend::projection_matmul`] against burn's matmul: on CUDA both run on
/// TF32 tensor cores (10-bit mantissas) with different summation orders.
pub const PRODUCT_TOLERANCE: f64 = 2e-3;

/// The projection product against burn's matmul, for each layout the engine hands it: plain,
/// transposed views of either operand (`Pᵀ`), a row slice (a chunk of `P`), column slices (rows
/// with a pitch larger than their length).
fn projection_products<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    let (m, k, n) = (67, 301, 45);
    let a = || normal::<B>([m, k], 1.0, device);
    let b = || normal::<B>([k, n], 1.0, device);
    let cases = [
        ("plain", a(), b()),
        ("Aᵀ view", normal::<B>([k, m], 1.0, device).transpose(), b()),
        ("Bᵀ view", a(), normal::<B>([n, k], 1.0, device).transpose()),
        (
            "A row slice",
            normal::<B>([m + 9, k], 1.0, device).slice([5..5 + m, 0..k]),
            b(),
        ),
        (
            "pitched A and B",
            normal::<B>([m, k + 13], 1.0, device).slice([0..m, 3..3 + k]),
            normal::<B>([k, n + 7], 1.0, device).slice([0..k, 0..n]),
        ),
    ];
    for (name, a, b) in cases {
        let f = B::projection_matmul(a.clone(), b.clone());
        compare_within(
            out,
            format!("projection_matmul {m}x{k}·{k}x{n} {name}"),
            f,
            a.matmul(b),
            PRODUCT_TOLERANCE,
        );
    }
    // the down projection with Fira's residual: `R = down(G)` and `G − α·up(R)` (written over
    // `G` where the backend does it with the down product; else `G` back unchanged)
    for left in [true, false] {
        let (m, n, r) = if left { (70, 130, 9) } else { (150, 40, 7) };
        let basis = Basis {
            p: normal::<B>(if left { [m, r] } else { [r, n] }, 0.3, device),
            left,
        };
        let g = normal::<B>([m, n], 1.0, device);
        let want_r = if left {
            basis.p.clone().transpose().matmul(g.clone())
        } else {
            g.clone().matmul(basis.p.clone().transpose())
        };
        let up = if left {
            basis.p.clone().matmul(want_r.clone())
        } else {
            want_r.clone().matmul(basis.p.clone())
        };
        let want_d = g.clone() - up.mul_scalar(0.25);
        let (got_r, got, given) = B::projection_down_residual(&basis, g.clone(), 0.25);
        let side = if left { "left" } else { "right" };
        let name = format!("projection_down_residual {m}x{n} r{r} {side} (given: {given})");
        compare_within(out, format!("{name} R"), got_r, want_r, PRODUCT_TOLERANCE);
        let want = if given { want_d } else { g };
        compare_within(out, format!("{name} G or D"), got, want, PRODUCT_TOLERANCE);
    }
}

/// 8-bit Adam, subspace (`N`) and full (`W`), blocks of 256 and of 12 (3 units a cube), on
/// moments of an odd length (a ragged last block and a partial last word).
fn adam_8bit<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    let maps = DynamicMaps::<B>::new(device);
    for (i, c) in coefficient_sets().into_iter().enumerate() {
        for block in [256usize, 12] {
            let shape = [37, 301];
            let len = shape[0] * shape[1];
            let r = normal::<B>(shape, 1.0, device);
            let m = Blockwise8::quantize(normal::<B>(shape, 0.1, device), &maps.signed, block);
            let v =
                Blockwise8::quantize(normal::<B>(shape, 0.1, device).abs(), &maps.unsigned, block);
            let name = format!("adam_8bit[{i}] block {block}");
            let f = B::adam_8bit(r.clone(), m.clone(), v.clone(), &maps, c, None);
            let p = portable::adam_8bit(r.clone(), m.clone(), v.clone(), &maps, c, None);
            compare(out, format!("{name} N"), f.0.clone(), p.0);
            blockwise_checks(out, &name, (&f.1, &f.2), (&p.1, &p.2), len);
            // `N` written in bf16 (the update of a bf16 weight): the f32 `N` rounded once, the
            // same moments
            if B::supports_dtype(device, burn::tensor::DType::BF16) {
                let bf16 = burn::tensor::DType::BF16;
                let h = B::adam_8bit_into(r.clone(), m.clone(), v.clone(), &maps, c, None, bf16);
                out.push(Check {
                    name: format!("{name} N written bf16 = N rounded (dtype, max difference)"),
                    error: if h.0.dtype() == bf16 {
                        (h.0.cast(burn::tensor::DType::F32)
                            - f.0.cast(bf16).cast(burn::tensor::DType::F32))
                        .abs()
                        .max()
                        .into_scalar()
                        .elem::<f64>()
                    } else {
                        1.0
                    },
                    tolerance: 0.0,
                });
                blockwise_checks(
                    out,
                    &format!("{name} (N bf16)"),
                    (&h.1, &h.2),
                    (&f.1, &f.2),
                    len,
                );
            }

            let coef = UpdateCoefficients {
                decay_before: 1e-3 * i as f64,
                scale: 1.0,
                step: 1e-2,
                decay_after: 1e-3 * (1 - i) as f64,
            };
            let w = normal::<B>(shape, 1.0, device);
            let f = B::adam_full_step_8bit(
                w.clone(),
                r.clone(),
                m.clone(),
                v.clone(),
                &maps,
                c,
                coef,
                None,
            );
            let p = portable::adam_full_step_8bit(w, r, m, v, &maps, c, coef, None);
            let name = format!("adam_full_step_8bit[{i}] block {block}");
            compare(out, format!("{name} W"), f.0, p.0);
            blockwise_checks(out, &name, (&f.1, &f.2), (&p.1, &p.2), len);
        }
    }
}

/// Absmax within the f32 tolerance; codes as [`code_check`] (a code may differ by one where a
/// moment sits on a rounding boundary of the map).
fn blockwise_checks<B: Backend>(
    out: &mut Vec<Check>,
    name: &str,
    fused: (&Blockwise8<B>, &Blockwise8<B>),
    reference: (&Blockwise8<B>, &Blockwise8<B>),
    len: usize,
) {
    for (which, f, p) in [("M", fused.0, reference.0), ("V", fused.1, reference.1)] {
        compare(
            out,
            format!("{name} {which} absmax"),
            f.absmax.clone(),
            p.absmax.clone(),
        );
        let words = len.div_ceil(4);
        let trim = |t: &Tensor<B, 1, Int>| t.clone().slice(0..words).reshape([1, words]);
        out.push(code_check(
            format!("{name} {which}"),
            trim(&f.codes),
            trim(&p.codes),
        ));
    }
}

fn coefficient_sets() -> Vec<AdamCoefficients> {
    vec![
        AdamCoefficients {
            beta_1: 0.9,
            beta_2: 0.999,
            sqrt_v_divisor: 1.0,
            epsilon: 1e-8,
        },
        AdamCoefficients {
            beta_1: 0.8,
            beta_2: 0.95,
            sqrt_v_divisor: 0.3,
            epsilon: 1e-6,
        },
    ]
}

/// The projected update's cases: `(m, n, r, left)` — a left projector m×r with m ≤ n, a right
/// one r×n with m > n — each in blocks of a few rows (the block size `run_all` set) and in one
/// block (Fira keeps that block's `up(R)`), named so; sets each case's block size as it is
/// yielded. The caller restores the block size afterwards.
fn projected_shapes() -> impl Iterator<Item = ((usize, usize, usize, bool), &'static str)> {
    let few_rows = crate::block_elements();
    [(70, 130, 9, true), (150, 40, 7, false)]
        .into_iter()
        .flat_map(move |s| [(s, few_rows), (s, 1 << 23)])
        .map(|(s, block)| {
            crate::set_block_elements(block);
            (
                s,
                if block >= s.0 * s.1 {
                    "one block"
                } else {
                    "blocks"
                },
            )
        })
}

fn projected<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    let rules = [
        ResidualUpdate::None,
        ResidualUpdate::Sign { step: 3e-3 },
        ResidualUpdate::Sgd { step: 2e-2 },
        ResidualUpdate::Fira {
            gamma: 1.01,
            given: false,
        },
        ResidualUpdate::Fira {
            gamma: 1.01,
            given: true,
        },
    ];
    // (m, n, r, left): left projector m×r with m ≤ n; right projector r×n with m > n; in blocks
    // of a few rows, and in one block (Fira keeps that block's `up(R)` for the update)
    let saved = crate::block_elements();
    for ((m, n, r, left), blocks) in projected_shapes() {
        let p = normal::<B>(if left { [m, r] } else { [r, n] }, 0.3, device);
        let basis = Basis { p, left };
        let low = if left { [r, n] } else { [m, r] };
        for rule in rules {
            for (decay_before, decay_after) in [(0.0, 1e-3), (2e-3, 0.0)] {
                for with_zeta in [false, true] {
                    if with_zeta && !matches!(rule, ResidualUpdate::Fira { .. }) {
                        continue;
                    }
                    let w = normal::<B>([m, n], 1.0, device);
                    let g = normal::<B>([m, n], 1.0, device);
                    let nn = normal::<B>(low, 1.0, device);
                    let rr = basis.down(g.clone());
                    let coef = UpdateCoefficients {
                        decay_before,
                        scale: 0.25,
                        step: 1e-2,
                        decay_after,
                    };
                    // Fira with its residual given: `G − α·up(R)` stands in for `G`
                    let g = if matches!(rule, ResidualUpdate::Fira { given: true, .. }) {
                        g - basis.up(rr.clone()).mul_scalar(coef.scale)
                    } else {
                        g
                    };
                    // a previous ζ small enough for the limiter to act
                    let zeta = with_zeta.then(|| Tensor::<B, 1>::from_floats([1e-3], device));
                    let (f, p) = projected_both(w, g, &basis, (nn, rr), coef, rule, zeta, &|| None);
                    let name = format!(
                        "projected_update {m}x{n} r{r} {} {rule:?} decay({decay_before},{decay_after}) ζ={with_zeta} {blocks}",
                        if left { "left" } else { "right" }
                    );
                    compare(out, format!("{name} W"), f.0, p.0);
                    match (f.1, p.1) {
                        (Some(a), Some(b)) => compare(out, format!("{name} ζ"), a, b),
                        (None, None) => {}
                        _ => out.push(Check {
                            name: format!("{name} ζ present in one path only"),
                            error: f64::INFINITY,
                            tolerance: TOLERANCE,
                        }),
                    }
                }
            }
        }
    }
    crate::set_block_elements(saved);
}

/// Repetitions of [`fira_repeats`].
const FIRA_REPEATS: usize = 12;

/// Fira's projected update at the pretraining model's shapes (512×1376 with a left projector,
/// 1376×512 with a right one, r = 128, the whole matrix one block), [`FIRA_REPEATS`] times on the
/// same inputs: every `W'` and `ζ` equals the first **bit for bit** (the fused reductions — `φ`,
/// the `Ψ²` pass, the limiter — sum in a fixed order; a race between units would show here).
fn fira_repeats<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    let saved = crate::block_elements();
    crate::set_block_elements(1 << 23);
    for (m, n, r, left) in [(512, 1376, 128, true), (1376, 512, 128, false)] {
        let p = normal::<B>(if left { [m, r] } else { [r, n] }, 0.05, device);
        let basis = Basis { p, left };
        let w = normal::<B>([m, n], 1.0, device);
        let g = normal::<B>([m, n], 1.0, device);
        let nn = normal::<B>(if left { [r, n] } else { [m, r] }, 1.0, device);
        let rr = basis.down(g.clone());
        let coef = update_coefficients();
        let rule = ResidualUpdate::Fira {
            gamma: 1.01,
            given: false,
        };
        let zeta = Tensor::<B, 1>::from_floats([1e-3], device);
        let run = || {
            let (w1, z1) = B::projected_update(
                w.clone().add_scalar(0.0),
                g.clone(),
                &basis,
                nn.clone(),
                rr.clone(),
                coef,
                rule,
                Some(zeta.clone()),
                None,
            );
            let host = |t: Tensor<B, 1>| -> Vec<u32> {
                let v: Vec<f32> = t.into_data().convert::<f32>().to_vec().unwrap();
                v.into_iter().map(f32::to_bits).collect()
            };
            (host(w1.reshape([m * n])), z1.map(host).unwrap_or_default())
        };
        let first = run();
        let (mut w_differ, mut z_differ) = (0usize, 0usize);
        for _ in 1..FIRA_REPEATS {
            let again = run();
            w_differ += first.0.iter().zip(&again.0).filter(|(a, b)| a != b).count();
            z_differ += usize::from(first.1 != again.1);
        }
        let side = if left { "left" } else { "right" };
        for (what, differ) in [("W", w_differ), ("ζ", z_differ)] {
            out.push(Check {
                name: format!(
                    "Fira projected_update {m}x{n} r{r} {side}, {FIRA_REPEATS} runs: {what} bit for bit ({differ} values differ)"
                ),
                error: differ as f64,
                tolerance: 0.0,
            });
        }
    }
    crate::set_block_elements(saved);
}

/// Where the backend runs an f32 weight's update from an f16 `N`
/// ([`EmberBackend::f16_update_operands`], CUDA): Adam writing `N` in f16 against the portable
/// `N` rounded to f16 (within one f16 rounding: the two f32 computations may differ in their
/// last bit), and the update from that `N` against the portable update of the same `N` widened
/// to f32 (the f32 tolerance: the update is ~10⁻³ of `W`, its operands' f16 rounding far inside).
/// No checks where the backend does not (nothing is counted).
fn f16_update<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    use burn::tensor::DType;
    if !B::f16_update_operands() {
        return;
    }
    let c = coefficient_sets()[0];
    let shape = [37, 301];
    let m = normal::<B>(shape, 0.1, device);
    let v = normal::<B>(shape, 0.1, device).abs();
    // f16 `N` (an f32 weight's update GEMM) and bf16 `N` (a bf16 weight's): written in that
    // dtype by the kernel, within one rounding of the portable `N` rounded
    for (dtype, name, tolerance) in [(DType::F16, "f16", 1e-3), (DType::BF16, "bf16", 8e-3)] {
        let r = normal::<B>(shape, 1.0, device);
        let f = B::subspace_adam_into(r.clone(), m.clone(), v.clone(), c, None, dtype);
        let p = portable::subspace_adam(r, m.clone(), v.clone(), c, None);
        let dtype_ok = f.0.dtype() == dtype;
        compare_within(
            out,
            format!("subspace_adam_into {name} N (dtype {name}: {dtype_ok})"),
            if dtype_ok {
                f.0
            } else {
                f.0.mul_scalar(f32::NAN)
            },
            p.0.cast(dtype),
            tolerance,
        );
        compare(out, format!("subspace_adam_into {name} M"), f.1, p.1);
    }
    for (m, n, r, left) in [(96, 300, 40, true), (300, 96, 40, false)] {
        let basis = Basis {
            p: normal::<B>(if left { [m, r] } else { [r, n] }, 0.3, device),
            left,
        };
        let low = if left { [r, n] } else { [m, r] };
        let w = normal::<B>([m, n], 1.0, device);
        let g = normal::<B>([m, n], 1.0, device);
        let n16 = normal::<B>(low, 1.0, device).cast(DType::F16);
        let rr = basis.down(g.clone());
        let (fused, reference) = low_n_update(w, g, &basis, n16, rr);
        let side = if left { "left" } else { "right" };
        compare(
            out,
            format!("projected_update f16 N {m}x{n} r{r} {side} W"),
            fused,
            reference,
        );
    }
}

/// The update coefficients of the single-configuration checks: `α = 0.25`, `η = 10⁻²`, decay
/// `10⁻³` after the step.
fn update_coefficients() -> UpdateCoefficients {
    UpdateCoefficients {
        decay_before: 0.0,
        scale: 0.25,
        step: 1e-2,
        decay_after: 1e-3,
    }
}

/// The projected update of a weight that someone else still holds (burn-train's `Learner` keeps
/// its model while the optimizer steps on a clone): the result equals the portable update, and
/// the held tensor keeps its values (tolerance 0) — on CUDA the update GEMM then writes a fresh
/// buffer instead of `W` in place (`W` copied there first, or cuBLASLt's `D = α·A·B + β·C`
/// under `EMBER_OUT_OF_PLACE=on`). GaLore's rule with `N` in f32 and f16, and Fira's, both
/// sides, and a row of 301 elements (padded rows on CUDA, which the copy keeps).
fn held_weights<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    use burn::tensor::DType;
    let coef = update_coefficients();
    let fira = ResidualUpdate::Fira {
        gamma: 1.01,
        given: false,
    };
    for (m, n, r, left) in [
        (96, 320, 40, true),
        (320, 96, 40, false),
        (96, 301, 40, true),
    ] {
        let basis = Basis {
            p: normal::<B>(if left { [m, r] } else { [r, n] }, 0.3, device),
            left,
        };
        let low = if left { [r, n] } else { [m, r] };
        let side = if left { "left" } else { "right" };
        for (rule, n_dtype) in [
            (ResidualUpdate::None, DType::F32),
            (ResidualUpdate::None, DType::F16),
            (fira, DType::F32),
        ] {
            if n_dtype == DType::F16 && !B::f16_update_operands() {
                continue;
            }
            let w = normal::<B>([m, n], 1.0, device);
            let g = normal::<B>([m, n], 1.0, device);
            let g2 = normal::<B>([m, n], 1.0, device);
            let nn = normal::<B>(low, 1.0, device).cast(n_dtype);
            let rr = basis.down(g.clone());
            let mine = w.clone().add_scalar(0.0);
            let held = mine.clone();
            let fused = B::projected_update(
                mine,
                g.clone(),
                &basis,
                nn.clone(),
                rr.clone(),
                coef,
                rule,
                None,
                None,
            );
            let reference = portable::projected_update(
                w.clone(),
                g,
                &basis,
                nn.clone().cast(DType::F32),
                rr,
                coef,
                rule,
                None,
                None,
            );
            let name =
                format!("projected_update {m}x{n} r{r} {side} {rule:?} {n_dtype:?} N, W held");
            compare(
                out,
                format!("{name}: W'"),
                fused.0.clone(),
                reference.0.clone(),
            );
            compare_within(out, format!("{name}: the held W unchanged"), held, w, 0.0);
            // the next step on the new weight, which no one else holds now: in place (on CUDA
            // in the buffer the held step wrote, over its padded width where it has one)
            let next = B::projected_update(
                fused.0,
                g2.clone(),
                &basis,
                nn.clone(),
                basis.down(g2.clone()),
                coef,
                rule,
                None,
                None,
            );
            let reference = portable::projected_update(
                reference.0,
                g2.clone(),
                &basis,
                nn.cast(DType::F32),
                basis.down(g2),
                coef,
                rule,
                None,
                None,
            );
            compare(
                out,
                format!("{name}: the next step's W''"),
                next.0,
                reference.0,
            );
        }
    }
}

/// Rows that are not a multiple of 16 bytes (`n` = 301): the down projection's product as
/// [`EmberBackend::projection_down`] writes it (rows padded on CUDA) against burn's matmul, and
/// the subspace Adam kernel reading such an `R`, and a row slice of a wider buffer, through its
/// strides — `N` in f32, and in f16/bf16 (rows padded on CUDA) where the backend writes them —
/// against the portable Adam on the same `R`.
fn padded_rows<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    use burn::tensor::DType;
    let c = coefficient_sets()[0];
    let (r, m, n) = (40, 96, 301);
    let p = normal::<B>([m, r], 0.3, device);
    let g = normal::<B>([m, n], 1.0, device);
    let down = B::projection_down(p.clone().transpose(), g.clone());
    compare_within(
        out,
        format!("projection_down {r}x{m}·{m}x{n}"),
        down.clone(),
        p.transpose().matmul(g),
        PRODUCT_TOLERANCE,
    );
    let mut dtypes = vec![(DType::F32, "f32", TOLERANCE)];
    if B::f16_update_operands() {
        dtypes.extend([(DType::F16, "f16", 1e-3), (DType::BF16, "bf16", 8e-3)]);
    }
    let slice = normal::<B>([r, n + 19], 1.0, device).slice([0..r, 0..n]);
    for (input, rr) in [("projection_down's R", down), ("R a row slice", slice)] {
        for &(dtype, name, tolerance) in &dtypes {
            let mm = normal::<B>([r, n], 0.1, device);
            let vv = normal::<B>([r, n], 0.1, device).abs();
            let f = B::subspace_adam_into(rr.clone(), mm.clone(), vv.clone(), c, None, dtype);
            let p = portable::subspace_adam(rr.clone(), mm, vv, c, None);
            let label = format!("subspace_adam_into {input} {r}x{n}, {name} N");
            compare_within(out, format!("{label}: N"), f.0, p.0.cast(dtype), tolerance);
            compare(out, format!("{label}: M"), f.1, p.1);
            compare(out, format!("{label}: V"), f.2, p.2);
        }
    }
    // the update GEMM from a padded 16-bit `N` (as the Adam kernel writes it) into a weight of
    // the same odd width: on CUDA the GEMM runs over the padded width (`cube::cublas::widen`);
    // against the portable update of the same `N` widened to f32 (for a bf16 weight: of the
    // same weight values, within one bf16 rounding of `W`)
    if !B::f16_update_operands() {
        return;
    }
    let basis = Basis {
        p: normal::<B>([m, r], 0.3, device),
        left: true,
    };
    for (n_dtype, w_dtype, tolerance) in [
        (DType::F16, DType::F32, TOLERANCE),
        (DType::BF16, DType::BF16, 8e-3),
    ] {
        let g = normal::<B>([m, n], 1.0, device);
        let rr = basis.down(g.clone());
        let mm = normal::<B>([r, n], 0.1, device);
        let vv = normal::<B>([r, n], 0.1, device).abs();
        let (n_low, _, _) = B::subspace_adam_into(rr.clone(), mm, vv, c, None, n_dtype);
        let w = normal::<B>([m, n], 1.0, device).cast(w_dtype);
        let (fused, reference) = low_n_update(w, g, &basis, n_low, rr);
        compare_within(
            out,
            format!("projected_update {m}x{n} r{r} left, padded {n_dtype:?} N into {w_dtype:?} W"),
            fused.cast(DType::F32),
            reference,
            tolerance,
        );
    }
}

/// An update without a residual from a 16-bit `N` (an update GEMM's operand), fused and portable:
/// the fused one on a weight of its own (CUDA updates it in place) with the gradient in the
/// weight's dtype, the reference on `W`, `G` and `N` widened to f32 (one coefficient set:
/// decay after, `α` = 0.25).
fn low_n_update<B: EmberBackend>(
    w: Tensor<B, 2>,
    g: Tensor<B, 2>,
    basis: &Basis<B>,
    n: Tensor<B, 2>,
    r: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    use burn::tensor::DType;
    let coef = update_coefficients();
    let fused = B::projected_update(
        w.clone().add_scalar(0.0),
        g.clone().cast(w.dtype()),
        basis,
        n.clone(),
        r.clone(),
        coef,
        ResidualUpdate::None,
        None,
        None,
    );
    let reference = portable::projected_update(
        w.cast(DType::F32),
        g.cast(DType::F32),
        basis,
        n.cast(DType::F32),
        r,
        coef,
        ResidualUpdate::None,
        None,
        None,
    );
    (fused.0, reference.0)
}

/// The fused and the portable projected update on the same inputs, `(W, ζ)` each. The fused path
/// gets a weight of its own (not shared with the reference's): it may update it in place
/// (cuBLAS's GEMM accumulating into `W` on CUDA).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn projected_both<B: EmberBackend>(
    w: Tensor<B, 2>,
    g: Tensor<B, 2>,
    basis: &Basis<B>,
    (n, r): (Tensor<B, 2>, Tensor<B, 2>),
    coef: UpdateCoefficients,
    rule: ResidualUpdate,
    zeta: Option<Tensor<B, 1>>,
    skip: &dyn Fn() -> crate::Skip<B>,
) -> (
    (Tensor<B, 2>, Option<Tensor<B, 1>>),
    (Tensor<B, 2>, Option<Tensor<B, 1>>),
) {
    let fused = B::projected_update(
        w.clone().add_scalar(0.0),
        g.clone(),
        basis,
        n.clone(),
        r.clone(),
        coef,
        rule,
        zeta.clone(),
        skip(),
    );
    let reference = portable::projected_update(w, g, basis, n, r, coef, rule, zeta, skip());
    (fused, reference)
}

fn full_and_state_free<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    let shape = [33, 517];
    for (i, adam) in coefficient_sets().into_iter().enumerate() {
        let coef = UpdateCoefficients {
            decay_before: 1e-3 * i as f64,
            scale: 1.0,
            step: 1e-2,
            decay_after: 1e-3 * (1 - i) as f64,
        };
        let w = normal::<B>(shape, 1.0, device);
        let g = normal::<B>(shape, 1.0, device);
        let m = normal::<B>(shape, 0.1, device);
        let v = normal::<B>(shape, 0.1, device).abs();
        let f = B::adam_full_step(w.clone(), g.clone(), m.clone(), v.clone(), adam, coef, None);
        let p = portable::adam_full_step(w, g, m, v, adam, coef, None);
        compare(out, format!("adam_full_step[{i}] W"), f.0, p.0);
        compare(out, format!("adam_full_step[{i}] M"), f.1, p.1);
        compare(out, format!("adam_full_step[{i}] V"), f.2, p.2);
    }
    // non-contiguous inputs (transposed views; rows of a wider buffer, the layout of CUDA's
    // padded rows, beside dense moments): the kernels read them through their strides
    {
        let (adam, coef) = (
            coefficient_sets()[0],
            UpdateCoefficients {
                decay_before: 0.0,
                scale: 1.0,
                step: 1e-2,
                decay_after: 1e-3,
            },
        );
        let t = |seed: f64| normal::<B>([29, 41], seed, device).transpose();
        let (w, g, m, v) = (t(1.0), t(1.0), t(0.1), t(0.1).abs());
        let f = B::adam_full_step(w.clone(), g.clone(), m.clone(), v.clone(), adam, coef, None);
        let p = portable::adam_full_step(w, g, m, v, adam, coef, None);
        compare(out, "adam_full_step transposed inputs W".into(), f.0, p.0);
        compare(out, "adam_full_step transposed inputs M".into(), f.1, p.1);
        let pitched = |seed: f64| normal::<B>([29, 64], seed, device).slice([0..29, 0..41]);
        let (w, g) = (pitched(1.0), pitched(1.0));
        let (m, v) = (
            normal::<B>([29, 41], 0.1, device),
            normal::<B>([29, 41], 0.1, device).abs(),
        );
        let f = B::adam_full_step(w.clone(), g.clone(), m.clone(), v.clone(), adam, coef, None);
        let p = portable::adam_full_step(w, g, m, v, adam, coef, None);
        compare(out, "adam_full_step pitched W, G W".into(), f.0, p.0);
        compare(out, "adam_full_step pitched W, G V".into(), f.2, p.2);
    }
    adam_vectors::<B>(out, device, None, "f32", TOLERANCE);
    subspace_adam_vectors::<B>(out, device);
    for rule in [
        ResidualUpdate::Sign { step: 1e-2 },
        ResidualUpdate::Sgd { step: 1e-2 },
    ] {
        let coef = UpdateCoefficients {
            decay_before: 1e-3,
            scale: 1.0,
            step: 0.0,
            decay_after: 0.0,
        };
        let w = normal::<B>([19, 263], 1.0, device);
        let g = normal::<B>([19, 263], 1.0, device);
        let f = B::state_free_step(w.clone(), g.clone(), rule, coef, None);
        let p = portable::state_free_step(w, g, rule, coef, None);
        compare(out, format!("state_free_step {rule:?}"), f, p);
    }
}

/// A tensor of `dtype` from host values it holds exactly (bf16 rounded on the host), so that
/// every consumer sees the same bits however a backend evaluates the cast (burn's fusion
/// backend may compute a cast again inside a consumer's fused kernel).
fn exact_tensor<B: Backend>(
    values: Vec<f32>,
    shape: [usize; 2],
    dtype: burn::tensor::DType,
    device: &B::Device,
) -> Tensor<B, 2> {
    let values: Vec<f32> = if dtype == burn::tensor::DType::BF16 {
        values
            .into_iter()
            .map(|x| burn::tensor::bf16::from_f32(x).to_f32())
            .collect()
    } else {
        values
    };
    Tensor::<B, 2>::from_data(TensorData::new(values, shape), device).cast(dtype)
}

/// Normal values (standard deviation `std`) that `dtype` holds exactly ([`exact_tensor`]).
fn exact_normal<B: Backend>(
    shape: [usize; 2],
    std: f64,
    dtype: burn::tensor::DType,
    device: &B::Device,
) -> Tensor<B, 2> {
    let values = normal::<B>(shape, std, device)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
    exact_tensor(values, shape, dtype, device)
}

/// The same values as `t`, as the rows of a wider buffer (8 more columns): a view the kernels
/// read through its strides, one element a unit.
fn pitched_copy<B: Backend>(t: &Tensor<B, 2>, device: &B::Device) -> Tensor<B, 2> {
    let [rows, cols] = t.dims();
    let values: Vec<f32> = t.clone().into_data().convert::<f32>().to_vec().unwrap();
    let mut wide = vec![0f32; rows * (cols + 8)];
    for (r, row) in values.chunks(cols).enumerate() {
        wide[r * (cols + 8)..r * (cols + 8) + cols].copy_from_slice(row);
    }
    exact_tensor::<B>(wide, [rows, cols + 8], t.dtype(), device).slice([0..rows, 0..cols])
}

/// GaLore's subspace Adam on a dense `R` whose length is a multiple of four (the vectorized
/// kernel, `kernels::subspace_adam_vec`), with and without a set skip flag, `N` in f32 and in
/// f16: against the portable path, and — where the backend runs its kernels — against the
/// one-element kernel on the same `R` read through pitched rows, bit for bit.
fn subspace_adam_vectors<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    use burn::tensor::DType::{F16, F32};
    let shape = [32, 520];
    let adam = coefficient_sets()[1];
    let r = exact_normal::<B>(shape, 1.0, F32, device);
    let m = exact_normal::<B>(shape, 0.1, F32, device);
    let v = exact_normal::<B>(shape, 0.1, F32, device).abs();
    for set in [false, true] {
        let skip = || {
            Some(Tensor::<B, 1>::from_floats(
                [if set { 1.0 } else { 0.0 }],
                device,
            ))
        };
        let name = |what: &str| format!("subspace_adam vectors (skip={}) {what}", u8::from(set));
        let f = B::subspace_adam(r.clone(), m.clone(), v.clone(), adam, skip());
        let p = portable::subspace_adam(r.clone(), m.clone(), v.clone(), adam, skip());
        compare(out, name("N"), f.0.clone(), p.0);
        compare(out, name("M"), f.1.clone(), p.1);
        compare(out, name("V"), f.2.clone(), p.2);
        if B::fused_kernels() {
            let pr = pitched_copy(&r, device);
            let one = B::subspace_adam(pr.clone(), m.clone(), v.clone(), adam, skip());
            compare_within(out, name("N = one element a unit"), f.0, one.0, 0.0);
            compare_within(out, name("M = one element a unit"), f.1, one.1, 0.0);
            compare_within(out, name("V = one element a unit"), f.2, one.2, 0.0);
            // `N` in f16, as the update GEMM on 16-bit tensor cores reads it
            let h = B::subspace_adam_into(r.clone(), m.clone(), v.clone(), adam, skip(), F16);
            let one = B::subspace_adam_into(pr, m.clone(), v.clone(), adam, skip(), F16);
            compare_within(out, name("f16 N = one element a unit"), h.0, one.0, 0.0);
        }
    }
}

/// The full-rank Adam step on dense inputs whose length is a multiple of a 16-byte vector (the
/// vectorized kernel, `kernels::adam_full_vec`), with and without a set skip flag: against the
/// portable path within `tolerance`, and — where the backend runs its kernels for these dtypes
/// ([`EmberBackend::native_dtype`]) — against the one-element kernel on the same values read
/// through pitched rows **bit for bit** (the same arithmetic in the same order). `dtypes`: the
/// weight's and the moments' dtype where not f32.
fn adam_vectors<B: EmberBackend>(
    out: &mut Vec<Check>,
    device: &B::Device,
    dtypes: Option<(burn::tensor::DType, burn::tensor::DType)>,
    tag: &str,
    tolerance: f64,
) {
    let shape = [32, 520];
    let adam = coefficient_sets()[1];
    let coef = UpdateCoefficients {
        decay_before: 1e-3,
        scale: 0.5,
        step: 1e-2,
        decay_after: 2e-3,
    };
    let f32 = burn::tensor::DType::F32;
    let (wd, sd) = dtypes.unwrap_or((f32, f32));
    let kernels_run = B::fused_kernels() && B::native_dtype(wd) && B::native_dtype(sd);
    let w = exact_normal::<B>(shape, 1.0, wd, device);
    let g = exact_normal::<B>(shape, 1.0, wd, device);
    let m = exact_normal::<B>(shape, 0.1, sd, device);
    let v = exact_normal::<B>(shape, 0.1, sd, device).abs();
    let pitched = |t: &Tensor<B, 2>| pitched_copy(t, device);
    for set in [false, true] {
        let skip = || {
            Some(Tensor::<B, 1>::from_floats(
                [if set { 1.0 } else { 0.0 }],
                device,
            ))
        };
        let name = |what: &str| {
            format!(
                "adam_full_step vectors ({tag}, skip={}) {what}",
                u8::from(set)
            )
        };
        let fused = |w, g| B::adam_full_step(w, g, m.clone(), v.clone(), adam, coef, skip());
        let f = fused(w.clone(), g.clone());
        let p = portable::adam_full_step(
            w.clone(),
            g.clone(),
            m.clone(),
            v.clone(),
            adam,
            coef,
            skip(),
        );
        let one = fused(pitched(&w), pitched(&g));
        compare_within(out, name("W"), f.0.clone(), p.0, tolerance);
        compare_within(out, name("M"), f.1.clone(), p.1, tolerance);
        compare_within(out, name("V"), f.2.clone(), p.2, tolerance);
        // only where this backend runs the kernels for these dtypes: burn's fusion backend runs
        // bf16 steps on the portable path (its custom operations take f32 only), where there is
        // no vector kernel to compare (two evaluations of the portable path may round apart)
        if kernels_run {
            compare_within(out, name("W = one element a unit"), f.0, one.0, 0.0);
            compare_within(out, name("M = one element a unit"), f.1, one.1, 0.0);
            compare_within(out, name("V = one element a unit"), f.2, one.2, 0.0);
        }
    }
}

/// Stochastic rounding on the path the optimizer runs (`B::quantize_int8` with a key): unbiased
/// (the mean of 300 roundings with different keys is within 4.5 standard errors of each value;
/// values within one quantization step of their group's extremes are left out: the zero point is
/// rounded, so rounding them outward can leave the code range and is clamped, as upstream) and
/// reproducible (one key, one result; another
/// key, another result).
fn stochastic_rounding<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    let (rows, cols, group) = (2usize, 128usize, 64usize);
    let w = normal::<B>([rows, cols], 0.05, device);
    let values: Vec<f32> = w.clone().into_data().convert::<f32>().to_vec().unwrap();
    let trials = 300u32;
    let (mut sum, mut sq) = (vec![0f64; rows * cols], vec![0f64; rows * cols]);
    for t in 0..trials {
        let (codes, qparams) = B::quantize_int8(w.clone(), group, Some(RoundingKey([t, 7])));
        let back: Vec<f32> = crate::portable::dequantize_int8_values(codes, qparams, rows, cols);
        for (i, x) in back.into_iter().enumerate() {
            sum[i] += x as f64;
            sq[i] += (x as f64).powi(2);
        }
    }
    // worst |mean − value| in standard errors, over the values that are not a group's extreme
    let mut worst = 0f64;
    for (g, chunk) in values.chunks(group).enumerate() {
        let (lo, hi) = chunk
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        let step = (hi - lo).max(1e-5) / 255.0;
        for (k, &x) in chunk.iter().enumerate() {
            if x < lo + step || x > hi - step {
                continue;
            }
            let i = g * group + k;
            let mean = sum[i] / trials as f64;
            let var = (sq[i] / trials as f64 - mean * mean).max(0.0);
            // a value on the grid always takes the same code (no variance): its mean differs from
            // it by float rounding only, ~1e-3 of a step
            let se = (var / trials as f64).sqrt().max(1e-2 * step as f64);
            worst = worst.max((mean - x as f64).abs() / se);
        }
    }
    out.push(Check {
        name: "quantize_int8 stochastic rounding unbiased (|mean − x| / standard error)".into(),
        error: worst,
        tolerance: 4.5,
    });
    let a = B::quantize_int8(w.clone(), group, Some(RoundingKey([5, 6])));
    let b = B::quantize_int8(w.clone(), group, Some(RoundingKey([5, 6])));
    let c = B::quantize_int8(w, group, Some(RoundingKey([5, 9])));
    let same = a.0.clone().equal(b.0).all().into_scalar().to_bool();
    let other = a.0.equal(c.0).all().into_scalar().to_bool();
    out.push(Check {
        name: "quantize_int8 stochastic rounding: one key one result, another key another".into(),
        error: if same && !other { 0.0 } else { 1.0 },
        tolerance: 0.0,
    });
}

fn quantization<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    // dequantization of random words, 4 and 8 bits
    for (bits, rows, cols, group) in [(4u32, 24usize, 40usize, 16usize), (8, 7, 36, 12)] {
        let per = 32 / bits as usize;
        let words = (rows * cols).div_ceil(per);
        let packed =
            Tensor::<B, 1, Int>::random([words], Distribution::Uniform(-2.1e9, 2.1e9), device);
        let groups = rows * cols / group;
        let scales = Tensor::<B, 1>::random([groups], Distribution::Uniform(0.01, 0.1), device);
        let zeros = Tensor::<B, 1>::random([groups], Distribution::Uniform(0.0, 8.0), device);
        let f = B::dequantize_packed(
            packed.clone(),
            scales.clone(),
            zeros.clone(),
            bits,
            group,
            rows,
            cols,
        );
        let p = portable::dequantize_packed(packed, scales, zeros, bits, group, rows, cols);
        compare(
            out,
            format!("dequantize_packed int{bits} {rows}x{cols}"),
            f,
            p,
        );
    }
    // INT8 quantization: nearest and stochastic, per group and per row
    for (rows, cols, group) in [(6, 512, 128), (5, 260, 260)] {
        for key in [None, Some(RoundingKey([12345, 678]))] {
            let w = normal::<B>([rows, cols], 0.05, device);
            let f = B::quantize_int8(w.clone(), group, key);
            let p = portable::quantize_int8(w, group, key);
            let name = format!(
                "quantize_int8 {rows}x{cols} g{group} {}",
                if key.is_some() {
                    "stochastic"
                } else {
                    "nearest"
                }
            );
            compare(out, format!("{name} qparams"), f.1, p.1);
            out.push(code_check(name, f.0, p.0));
        }
    }
}

/// Codes may differ by one step where `x/scale` sits on a rounding boundary (a division that
/// differs in its last bit between a kernel and burn's op): error = the fraction of codes that
/// differ (none may differ by more than one), allowed 0.1%.
fn code_check<B: Backend>(name: String, a: Tensor<B, 2, Int>, b: Tensor<B, 2, Int>) -> Check {
    let unpack = |t: Tensor<B, 2, Int>| -> Vec<i64> {
        let words: Vec<i64> = t.into_data().convert::<i64>().to_vec().unwrap();
        words
            .iter()
            .flat_map(|&w| (0..4).map(move |k| ((w as u32) >> (8 * k)) as i64 & 0xff))
            .collect()
    };
    let (a, b) = (unpack(a), unpack(b));
    let mut differ = 0usize;
    let mut worst = 0i64;
    for (x, y) in a.iter().zip(&b) {
        if x != y {
            differ += 1;
            worst = worst.max((x - y).abs());
        }
    }
    let error = if worst > 1 || a.len() != b.len() {
        f64::INFINITY
    } else {
        differ as f64 / a.len().max(1) as f64
    };
    Check {
        name: format!("{name} codes"),
        error,
        tolerance: 1e-3,
    }
}

fn non_finite<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    // flags of three gradients of odd sizes; `poison` entries of the middle one are NaN/±Inf
    for poison in [0usize, 1, 3] {
        let (m, n) = (53, 1031);
        let mut values: Vec<f32> = normal::<B>([m, n], 1.0, device)
            .into_data()
            .to_vec()
            .unwrap();
        for k in 0..poison {
            values[(k * 7919 + 13) % (m * n)] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][k];
        }
        let grads = vec![
            normal::<B>([7, 3], 1.0, device),
            Tensor::<B, 2>::from_data(TensorData::new(values, [m, n]), device),
            normal::<B>([301, 37], 1.0, device).transpose(),
        ];
        let f = B::non_finite_flags(grads.clone(), device);
        let p = portable::non_finite_flags(grads, device);
        compare(
            out,
            format!("non_finite_flags with {poison} poisoned"),
            f.clone(),
            p,
        );
        let flags: Vec<f32> = f.into_data().convert::<f32>().to_vec().unwrap();
        let want = [0.0, (poison > 0) as u8 as f32, 0.0];
        out.push(Check {
            name: format!("non_finite_flags flag {poison}"),
            error: flags
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs() as f64)
                .sum::<f64>()
                + (flags.len() as f64 - 3.0).abs(),
            tolerance: 0.0,
        });
    }
    // one NaN alone, at the first, the last and a middle element of an odd size, and in the last
    // slot a unit reads (a unit reads several elements `len / units` apart)
    let (m, n) = (37, 53);
    let len = m * n;
    for at in [0, len - 1, len / 2, len - len / 9] {
        let mut values: Vec<f32> = normal::<B>([m, n], 1.0, device)
            .into_data()
            .to_vec()
            .unwrap();
        values[at] = f32::NAN;
        let g = Tensor::<B, 2>::from_data(TensorData::new(values, [m, n]), device);
        for (view, g) in [("dense", g.clone()), ("transposed", g.transpose())] {
            let flags: Vec<f32> = B::non_finite_flags(vec![g], device)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap();
            out.push(Check {
                name: format!("non_finite_flags one NaN at {at} of {len} ({view})"),
                error: (flags.iter().map(|f| (1.0 - f).abs() as f64).sum::<f64>())
                    + (flags.len() as f64 - 1.0).abs(),
                tolerance: 0.0,
            });
        }
    }
}

/// Causal attention with its recomputing backward ([`crate::attention`]) against burn's autodiff
/// of the same composition, on the device: the output and the gradients of `Q`, `K`, `V` (odd
/// sizes, a loss weighing each output differently). Both run the same products (TF32 on CUDA).
fn attention<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    type A<B> = burn::backend::Autodiff<B>;
    let shape = [2, 3, 37, 16];
    let make = || Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let (q, k, v, w) = (make(), make(), make(), make());
    let scale = 0.25;
    let run = |fused: bool| {
        let leaf = |t: &Tensor<B, 4>| Tensor::<A<B>, 4>::from_inner(t.clone()).require_grad();
        let (qa, ka, va) = (leaf(&q), leaf(&k), leaf(&v));
        let o = if fused {
            crate::model::causal_attention(qa.clone(), ka.clone(), va.clone(), scale)
        } else {
            crate::attention::composed(qa.clone(), ka.clone(), va.clone(), scale)
        };
        let grads = (o.clone() * Tensor::from_inner(w.clone())).sum().backward();
        let g = |t: &Tensor<A<B>, 4>| t.grad(&grads).expect("a gradient");
        [o.inner(), g(&qa), g(&ka), g(&va)]
    };
    let fused = run(true);
    let reference = run(false);
    for (name, (a, b)) in ["output", "dQ", "dK", "dV"]
        .into_iter()
        .zip(fused.into_iter().zip(reference))
    {
        compare_within(
            out,
            format!("causal_attention {name} (recomputed backward vs autodiff)"),
            a,
            b,
            2e-3,
        );
    }
}

/// A linear layer's product with its own backward ([`crate::dense`]: cuBLAS on CUDA) against
/// burn's `matmul` under autodiff: `Y`, `dX`, `dW` of odd sizes, f32 (both TF32 on CUDA) and,
/// where the backend takes it, bf16 (both round to bf16: within two of its units).
fn dense<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    use burn::tensor::DType::{BF16, F32};
    type A<B> = burn::backend::Autodiff<B>;
    let mut dtypes = vec![(F32, 4e-3)];
    if B::supports_dtype(device, BF16) {
        dtypes.push((BF16, 1.0 / 64.0));
    }
    for (dtype, tolerance) in dtypes {
        let make = |s: [usize; 2]| normal::<B>(s, 1.0, device).cast(dtype);
        let (x, w, c) = (make([45, 70]), make([70, 33]), make([45, 33]));
        let run = |ours: bool| {
            let leaf = |t: &Tensor<B, 2>| Tensor::<A<B>, 2>::from_inner(t.clone()).require_grad();
            let (xa, wa) = (leaf(&x), leaf(&w));
            let y = if ours {
                crate::model::dense(xa.clone(), wa.clone())
            } else {
                xa.clone().matmul(wa.clone())
            };
            let grads = (y.clone() * Tensor::from_inner(c.clone())).sum().backward();
            let g = |t: &Tensor<A<B>, 2>| t.grad(&grads).expect("a gradient");
            [y.inner(), g(&xa), g(&wa)]
        };
        let ours = run(true);
        let dtypes_kept = ours.iter().all(|t| t.dtype() == dtype);
        out.push(Check {
            name: format!("dense {dtype:?}: Y, dX, dW keep the operands' dtype"),
            error: if dtypes_kept { 0.0 } else { 1.0 },
            tolerance: 0.0,
        });
        for (name, (a, b)) in ["Y", "dX", "dW"]
            .into_iter()
            .zip(ours.into_iter().zip(run(false)))
        {
            compare_within(
                out,
                format!("dense {dtype:?} {name} (own backward vs burn's matmul)"),
                a,
                b,
                tolerance,
            );
        }
    }
}

/// The model's element-wise layers ([`crate::norm`], [`crate::swiglu`], [`crate::rotary`],
/// attention's causal softmax) against their portable compositions, forward and backward:
/// RMSNorm and the softmax on rows longer and shorter than a cube (the softmax also on strided
/// views), the gate, and the rotary embedding read through a transposed view (both directions)
/// and its inverse's round trip; f32 and, where the backend takes it, bf16 (within two of its
/// units).
fn layers<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    use burn::tensor::DType::{BF16, F32};
    let mut dtypes = vec![(F32, TOLERANCE)];
    if B::supports_dtype(device, BF16) {
        dtypes.push((BF16, 1.0 / 64.0));
    }
    for (dtype, tol) in dtypes {
        let make = |s: [usize; 2], std: f64| normal::<B>(s, std, device).cast(dtype);
        for (rows, cols) in [(37, 300), (5, 40)] {
            let (x, dy) = (make([rows, cols], 2.0), make([rows, cols], 1.0));
            let gamma = make([1, cols], 0.5).squeeze_dim::<1>(0) + 1.0;
            let name = |what: &str| format!("rms_norm {dtype:?} {rows}x{cols} {what}");
            let fused = B::rms_norm(x.clone(), gamma.clone(), 1e-5);
            let reference = crate::norm::composed(x.clone(), gamma.clone(), 1e-5);
            compare_within(out, name("Y"), fused, reference, tol);
            let (dx, dg) = B::rms_norm_backward(x.clone(), gamma.clone(), dy.clone(), 1e-5);
            let (rx, rg) = crate::norm::composed_backward(x, gamma, dy, 1e-5);
            compare_within(out, name("dX"), dx, rx, tol);
            compare_within(out, name("dγ"), dg, rg, tol);
        }
        let (g, u, dz) = (
            make([19, 83], 3.0),
            make([19, 83], 1.0),
            make([19, 83], 1.0),
        );
        let fused = B::swiglu(g.clone(), u.clone());
        let reference = crate::swiglu::composed(g.clone(), u.clone());
        compare_within(out, format!("swiglu {dtype:?} Z"), fused, reference, tol);
        let (dg, du) = B::swiglu_backward(g.clone(), u.clone(), dz.clone());
        let (rg, ru) = crate::swiglu::composed_backward(g, u, dz);
        compare_within(out, format!("swiglu {dtype:?} dG"), dg, rg, tol);
        compare_within(out, format!("swiglu {dtype:?} dU"), du, ru, tol);
        // attention's causal softmax: rows longer than a cube (300 keys) and shorter (9), a
        // square mask and one with more keys than queries; the scores and `dP` dense, and read
        // through the strides of a view (`[b, t, h, k]` with its axes 1 and 2 swapped)
        for (shape, view) in [
            ([2, 3, 300, 300], false),
            ([1, 2, 7, 9], false),
            ([2, 3, 37, 41], true),
        ] {
            let layout = if view { " (strided view)" } else { "" };
            let name = |what: &str| format!("causal_softmax {dtype:?} {shape:?}{layout} {what}");
            let make = |std: f64| {
                let [b, h, t, k] = shape;
                let d = Distribution::Normal(0.0, std);
                if view {
                    Tensor::<B, 4>::random([b, t, h, k], d, device)
                        .cast(dtype)
                        .swap_dims(1, 2)
                } else {
                    Tensor::<B, 4>::random(shape, d, device).cast(dtype)
                }
            };
            let (scores, dp) = (make(3.0), make(1.0));
            let p = B::causal_softmax(scores.clone(), 0.3);
            let reference = crate::attention::composed_softmax(scores, 0.3);
            compare_within(out, name("P"), p.clone(), reference.clone(), tol);
            let ds = B::causal_softmax_backward(reference.clone(), dp.clone(), 0.3);
            let want = crate::attention::composed_softmax_backward(reference, dp, 0.3);
            compare_within(out, name("dS"), ds, want, tol);
        }
        // [batch, seq, heads, head_dim] read heads first (a transposed view), as the model does
        let (b, t, h, d) = (2, 11, 3, 10);
        let x = Tensor::<B, 4>::random([b, t, h, d], Distribution::Normal(0.0, 1.0), device)
            .cast(dtype);
        let freq = burn::nn::RotaryEncodingConfig::new(16, d)
            .init::<B>(device)
            .freq_complex;
        // the composition pairs the elements with a batched matmul: TF32 on CUDA (an error of
        // ≈ 2.4e-4 there), so against it f32 is held to the dense products' tolerance; the round
        // trip below holds the kernel itself to f32's
        let tol_composed = if dtype == F32 { 4e-3 } else { tol };
        let view = x.clone().swap_dims(1, 2);
        let y = B::rotary(view.clone(), freq.clone(), 2, false);
        let reference = crate::rotary::composed(view, freq.clone(), 2, false);
        compare_within(
            out,
            format!("rotary {dtype:?} Y"),
            y.clone(),
            reference,
            tol_composed,
        );
        let back = B::rotary(y.clone().swap_dims(1, 2), freq.clone(), 1, true);
        let reference = crate::rotary::composed(y.swap_dims(1, 2), freq, 1, true);
        compare_within(
            out,
            format!("rotary {dtype:?} inverse"),
            back.clone(),
            reference,
            tol_composed,
        );
        compare_within(
            out,
            format!("rotary {dtype:?} inverse(rotary(X)) = X"),
            back,
            x,
            tol,
        );
    }
}

/// The flags of strided gradients, read in place: a column slice whose outside columns hold
/// NaN (never flagged: not part of the gradient) and, poisoned or not inside, a transposed view.
fn non_finite_strided<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    let (m, n, pad) = (29, 67, 5);
    for inside in [false, true] {
        let mut values: Vec<f32> = normal::<B>([m, n + 2 * pad], 1.0, device)
            .into_data()
            .to_vec()
            .unwrap();
        for r in 0..m {
            values[r * (n + 2 * pad)] = f32::NAN;
            values[r * (n + 2 * pad) + n + 2 * pad - 1] = f32::INFINITY;
        }
        if inside {
            values[11 * (n + 2 * pad) + pad + 40] = f32::NEG_INFINITY;
        }
        let wide = Tensor::<B, 2>::from_data(TensorData::new(values, [m, n + 2 * pad]), device);
        let slice = wide.clone().slice([0..m, pad..pad + n]);
        let transposed = wide.slice([0..m, pad..pad + n]).transpose();
        let grads = vec![slice, transposed];
        let flags: Vec<f32> = B::non_finite_flags(grads, device)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap();
        let want = f32::from(u8::from(inside));
        out.push(Check {
            name: format!(
                "non_finite_flags strided (slice, transposed), poisoned inside: {inside}"
            ),
            error: flags.iter().map(|f| (f - want).abs() as f64).sum::<f64>()
                + (flags.len() as f64 - 2.0).abs(),
            tolerance: 0.0,
        });
    }
}

fn newton_schulz<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    for r in [1, 7, 33, 128] {
        let a = normal::<B>([r, r], 1.0, device);
        let a2 = normal::<B>([r, r], 1.0, device);
        let quintic = [3.4445, -4.7750, 2.0315];
        let f = B::newton_schulz_poly(a.clone(), Some(a2.clone()), quintic);
        let p = portable::newton_schulz_poly(a.clone(), Some(a2), quintic);
        compare(out, format!("newton_schulz_poly quintic r={r}"), f, p);
        let cubic = [1.5, -0.5, 0.0];
        let f = B::newton_schulz_poly(a.clone(), None, cubic);
        let p = portable::newton_schulz_poly(a, None, cubic);
        compare(out, format!("newton_schulz_poly cubic r={r}"), f, p);
    }
}

fn dct<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    for (m, n, left) in [(45, 70, true), (70, 45, false)] {
        let g = normal::<B>([m, n], 1.0, device);
        let s = if left { m } else { n };
        let q = normal::<B>([s, s], 0.2, device);
        let f = B::dct_scores(g.clone(), q.clone(), left);
        let p = portable::dct_scores(g, q, left);
        compare(out, format!("dct_scores {m}x{n} left={left}"), f, p);
    }
}

/// Prints the checks and returns how many failed.
pub fn report(checks: &[Check]) -> usize {
    let mut failed = 0;
    for c in checks {
        let ok = c.passed();
        failed += usize::from(!ok);
        println!(
            "{} {:<90} error {:.2e} (tolerance {:.0e})",
            if ok { "ok  " } else { "FAIL" },
            c.name,
            c.error,
            c.tolerance
        );
    }
    println!(
        "kernels: {} checks, {} passed, {failed} failed",
        checks.len(),
        checks.len() - failed
    );
    failed
}

/// The ops under the step's skip flag ([`crate::Skip`]), fused against portable: with the flag
/// at 0 the step as without it; at 1 on gradients holding NaN and ±Inf, the inputs returned
/// unchanged and `N = 0` (a NaN reaching an output fails the comparison).
fn skip_flag<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    let maps = DynamicMaps::<B>::new(device);
    let adam = coefficient_sets()[1];
    let coef = UpdateCoefficients {
        decay_before: 2e-3,
        scale: 0.25,
        step: 1e-2,
        decay_after: 1e-3,
    };
    // a gradient with NaN and ±Inf where the flag is 1
    let grad = |shape: [usize; 2], set: bool| {
        let g = normal::<B>(shape, 1.0, device);
        if !set {
            return g;
        }
        let bad =
            Tensor::<B, 2>::from_floats([[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]], device);
        g.slice_assign([1..2, 3..6], bad)
    };
    for set in [false, true] {
        let skip = || {
            Some(Tensor::<B, 1>::from_floats(
                [if set { 1.0 } else { 0.0 }],
                device,
            ))
        };
        let tag = format!("skip={}", u8::from(set));
        let shape = [37, 301];
        let (m, v) = (
            normal::<B>(shape, 0.1, device),
            normal::<B>(shape, 0.1, device).abs(),
        );
        let r = grad(shape, set);
        let f = B::subspace_adam(r.clone(), m.clone(), v.clone(), adam, skip());
        let p = portable::subspace_adam(r.clone(), m.clone(), v.clone(), adam, skip());
        compare(out, format!("subspace_adam {tag} N"), f.0, p.0);
        compare(out, format!("subspace_adam {tag} M"), f.1, p.1);
        compare(out, format!("subspace_adam {tag} V"), f.2, p.2);

        let w = normal::<B>(shape, 1.0, device);
        let f = B::adam_full_step(
            w.clone(),
            r.clone(),
            m.clone(),
            v.clone(),
            adam,
            coef,
            skip(),
        );
        let p = portable::adam_full_step(w.clone(), r.clone(), m.clone(), v, adam, coef, skip());
        compare(out, format!("adam_full_step {tag} W"), f.0, p.0);
        compare(out, format!("adam_full_step {tag} M"), f.1, p.1);

        let len = shape[0] * shape[1];
        let m8 = Blockwise8::quantize(m, &maps.signed, 256);
        let v8 = Blockwise8::quantize(normal::<B>(shape, 0.1, device).abs(), &maps.unsigned, 256);
        let f = B::adam_8bit(r.clone(), m8.clone(), v8.clone(), &maps, adam, skip());
        let p = portable::adam_8bit(r.clone(), m8.clone(), v8.clone(), &maps, adam, skip());
        compare(out, format!("adam_8bit {tag} N"), f.0, p.0);
        blockwise_checks(
            out,
            &format!("adam_8bit {tag}"),
            (&f.1, &f.2),
            (&p.1, &p.2),
            len,
        );
        let f = B::adam_full_step_8bit(
            w.clone(),
            r.clone(),
            m8.clone(),
            v8.clone(),
            &maps,
            adam,
            coef,
            skip(),
        );
        let p =
            portable::adam_full_step_8bit(w.clone(), r.clone(), m8, v8, &maps, adam, coef, skip());
        compare(out, format!("adam_full_step_8bit {tag} W"), f.0, p.0);
        blockwise_checks(
            out,
            &format!("adam_full_step_8bit {tag}"),
            (&f.1, &f.2),
            (&p.1, &p.2),
            len,
        );

        let rule = ResidualUpdate::Sign { step: 1e-2 };
        let f = B::state_free_step(w.clone(), r.clone(), rule, coef, skip());
        let p = portable::state_free_step(w, r, rule, coef, skip());
        compare(out, format!("state_free_step {tag}"), f, p);

        // the projected update: `N` finite (the engine passes `N = 0` on a skipped step), `G` and
        // `R` not; every residual rule, Fira with and without a previous norm
        let saved = crate::block_elements();
        for ((m, n, r, left), blocks) in projected_shapes() {
            let basis = Basis {
                p: normal::<B>(if left { [m, r] } else { [r, n] }, 0.3, device),
                left,
            };
            let low = if left { [r, n] } else { [m, r] };
            for (rule, zeta) in [
                (ResidualUpdate::None, None),
                (ResidualUpdate::Sgd { step: 2e-2 }, None),
                (
                    ResidualUpdate::Fira {
                        gamma: 1.01,
                        given: false,
                    },
                    None,
                ),
                (
                    ResidualUpdate::Fira {
                        gamma: 1.01,
                        given: false,
                    },
                    Some(1e-3f32),
                ),
            ] {
                let w = normal::<B>([m, n], 1.0, device);
                let g = grad([m, n], set);
                let nn = normal::<B>(low, 1.0, device);
                let rr = basis.down(g.clone());
                let zeta = zeta.map(|z| Tensor::<B, 1>::from_floats([z], device));
                let (f, p) = projected_both(w, g, &basis, (nn, rr), coef, rule, zeta, &skip);
                let name = format!(
                    "projected_update {tag} {m}x{n} {} {rule:?} {blocks}",
                    if left { "left" } else { "right" }
                );
                compare(out, format!("{name} W"), f.0, p.0);
                if let (Some(a), Some(b)) = (f.1, p.1) {
                    // `+∞` (no previous norm, skipped) compares as a failure: check it as such
                    let (a, b): (Vec<f32>, Vec<f32>) = (
                        a.into_data().convert::<f32>().to_vec().unwrap(),
                        b.into_data().convert::<f32>().to_vec().unwrap(),
                    );
                    let same = a.len() == b.len()
                        && a.iter().zip(&b).all(|(x, y)| {
                            x == y || (x - y).abs() as f64 <= TOLERANCE * y.abs().max(1.0) as f64
                        });
                    out.push(Check {
                        name: format!("{name} ζ"),
                        error: if same { 0.0 } else { f64::INFINITY },
                        tolerance: TOLERANCE,
                    });
                }
            }
        }
        crate::set_block_elements(saved);
    }
}

/// Weights and gradients in bf16 (devices with bf16): the ops of
/// [`EmberBackend::native_dtype`] against the portable path, which computes in f32 and rounds the
/// weight once. Tolerance `2⁻⁷` relative to the largest weight: one bf16 step where the two f32
/// results round to neighbouring values; the products read the f32 basis rounded to bf16 where
/// the backend multiplies in bf16 (cuBLAS), the portable path widens the gradient instead.
fn bf16<B: EmberBackend>(out: &mut Vec<Check>, device: &B::Device) {
    use burn::tensor::DType::{BF16, F32};
    const BF16_TOLERANCE: f64 = 1.0 / 128.0;
    let low = |t: Tensor<B, 2>| t.cast(BF16);
    let coef = UpdateCoefficients {
        decay_before: 1e-3,
        scale: 0.25,
        step: 1e-2,
        decay_after: 2e-3,
    };
    let adam = coefficient_sets()[0];
    // full-rank AdamW, f32 and 8-bit moments
    let shape = [33, 517];
    let (w, g) = (
        low(normal::<B>(shape, 1.0, device)),
        low(normal::<B>(shape, 1.0, device)),
    );
    let (m, v) = (
        normal::<B>(shape, 0.1, device),
        normal::<B>(shape, 0.1, device).abs(),
    );
    let f = B::adam_full_step(w.clone(), g.clone(), m.clone(), v.clone(), adam, coef, None);
    let p = portable::adam_full_step(w.clone(), g.clone(), m, v, adam, coef, None);
    let dtype_ok = f.0.dtype() == BF16;
    compare_within(
        out,
        "bf16 adam_full_step W".into(),
        f.0,
        p.0,
        BF16_TOLERANCE,
    );
    compare(out, "bf16 adam_full_step M".into(), f.1, p.1);
    compare(out, "bf16 adam_full_step V".into(), f.2, p.2);
    out.push(Check {
        name: "bf16 adam_full_step keeps W in bf16".into(),
        error: if dtype_ok { 0.0 } else { f64::INFINITY },
        tolerance: TOLERANCE,
    });
    // the vectorized kernel with 16-bit elements (eight a vector where both are bf16)
    adam_vectors::<B>(
        out,
        device,
        Some((BF16, BF16)),
        "bf16 W, bf16 state",
        BF16_TOLERANCE,
    );
    adam_vectors::<B>(
        out,
        device,
        Some((F32, BF16)),
        "f32 W, bf16 state",
        BF16_TOLERANCE,
    );
    adam_vectors::<B>(
        out,
        device,
        Some((BF16, F32)),
        "bf16 W, f32 state",
        BF16_TOLERANCE,
    );
    // bf16 moments (bf16 state), with bf16 and with f32 weights
    for w_bf16 in [true, false] {
        let w = normal::<B>(shape, 1.0, device);
        let (w, g) = if w_bf16 {
            (low(w), low(normal::<B>(shape, 1.0, device)))
        } else {
            (w, normal::<B>(shape, 1.0, device))
        };
        let (m, v) = (
            low(normal::<B>(shape, 0.1, device)),
            low(normal::<B>(shape, 0.1, device).abs()),
        );
        let f = B::adam_full_step(w.clone(), g.clone(), m.clone(), v.clone(), adam, coef, None);
        let p = portable::adam_full_step(w, g, m, v, adam, coef, None);
        let tag = if w_bf16 { "bf16 W" } else { "f32 W" };
        let kept = f.1.dtype() == BF16 && f.2.dtype() == BF16;
        compare_within(
            out,
            format!("bf16 moments ({tag}) W"),
            f.0,
            p.0,
            BF16_TOLERANCE,
        );
        compare_within(
            out,
            format!("bf16 moments ({tag}) M"),
            f.1,
            p.1,
            BF16_TOLERANCE,
        );
        compare_within(
            out,
            format!("bf16 moments ({tag}) V"),
            f.2,
            p.2,
            BF16_TOLERANCE,
        );
        out.push(Check {
            name: format!("bf16 moments ({tag}) stay bf16"),
            error: if kept { 0.0 } else { f64::INFINITY },
            tolerance: TOLERANCE,
        });
    }
    let maps = DynamicMaps::new(device);
    let q = |t: Tensor<B, 2>, signed: bool| {
        let map = if signed { &maps.signed } else { &maps.unsigned };
        Blockwise8::quantize(t, map, 256)
    };
    let (m8, v8) = (
        q(normal::<B>(shape, 0.1, device), true),
        q(normal::<B>(shape, 0.1, device).abs(), false),
    );
    let f = B::adam_full_step_8bit(
        w.clone(),
        g.clone(),
        m8.clone(),
        v8.clone(),
        &maps,
        adam,
        coef,
        None,
    );
    let p = portable::adam_full_step_8bit(w, g, m8, v8, &maps, adam, coef, None);
    compare_within(
        out,
        "bf16 adam_full_step_8bit W".into(),
        f.0,
        p.0,
        BF16_TOLERANCE,
    );
    // the down projection of a bf16 gradient (f32 product) and the update without a residual
    let (m, n, r) = (70, 130, 9);
    let basis = Basis {
        p: normal::<B>([m, r], 0.3, device),
        left: true,
    };
    let g = low(normal::<B>([m, n], 1.0, device));
    let f = B::projection_matmul(basis.p.clone().transpose(), g.clone());
    let p = basis.p.clone().transpose().matmul(g.clone().cast(F32));
    out.push(Check {
        name: "bf16 projection_matmul gives f32".into(),
        error: if f.dtype() == F32 { 0.0 } else { f64::INFINITY },
        tolerance: TOLERANCE,
    });
    compare_within(
        out,
        "bf16 projection_matmul PᵀG".into(),
        f,
        p,
        BF16_TOLERANCE,
    );
    let w = low(normal::<B>([m, n], 1.0, device));
    let nn = normal::<B>([r, n], 1.0, device);
    let rr = basis.down(g.cast(F32));
    let f = B::projected_update(
        w.clone(),
        w.clone(),
        &basis,
        nn.clone(),
        rr.clone(),
        coef,
        ResidualUpdate::None,
        None,
        None,
    );
    let p = portable::projected_update(
        w.clone(),
        w,
        &basis,
        nn,
        rr.clone(),
        coef,
        ResidualUpdate::None,
        None,
        None,
    );
    compare_within(
        out,
        "bf16 projected_update W".into(),
        f.0,
        p.0,
        BF16_TOLERANCE,
    );
    // under the step's skip flag, with a weight held once (cuBLAS's GEMM accumulates into it in
    // place, its `α, β` on the device): a set flag leaves `W` as it was, bit for bit; a clear
    // one gives the unflagged update
    let w0 = low(normal::<B>([m, n], 1.0, device));
    // a buffer of its own each time (not a second handle on `w0`)
    let fresh = || w0.clone().mul_scalar(1.0);
    let nn = normal::<B>([r, n], 1.0, device);
    let update = |skip: Option<f32>| {
        B::projected_update(
            fresh(),
            rr.clone(),
            &basis,
            nn.clone(),
            rr.clone(),
            coef,
            ResidualUpdate::None,
            None,
            skip.map(|s| Tensor::<B, 1>::from_floats([s], device)),
        )
        .0
    };
    let plain = update(None);
    compare_within(
        out,
        "bf16 projected_update W, skip flag 0".into(),
        update(Some(0.0)),
        plain,
        BF16_TOLERANCE,
    );
    compare_within(
        out,
        "bf16 projected_update W, skip flag 1 (unchanged)".into(),
        update(Some(1.0)),
        w0,
        0.0,
    );
    // the NaN/Inf check reads bf16 gradients as they are
    let mut values: Vec<f32> = normal::<B>([53, 1031], 1.0, device)
        .into_data()
        .to_vec()
        .unwrap();
    values[4242] = f32::NAN;
    let grads = vec![
        low(normal::<B>([7, 3], 1.0, device)),
        low(Tensor::<B, 2>::from_data(
            TensorData::new(values, [53, 1031]),
            device,
        )),
        low(normal::<B>([301, 37], 1.0, device)).transpose(),
    ];
    let f = B::non_finite_flags(grads.clone(), device);
    let p = portable::non_finite_flags(grads, device);
    compare(out, "bf16 non_finite_flags".into(), f.clone(), p);
    let flags: Vec<f32> = f.into_data().convert::<f32>().to_vec().unwrap();
    out.push(Check {
        name: "bf16 non_finite_flags flag".into(),
        error: if flags == [0.0, 1.0, 0.0] {
            0.0
        } else {
            f64::INFINITY
        },
        tolerance: TOLERANCE,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On flex (no fused kernels) the checks run the portable path against itself: the harness
    /// itself works, and a broken comparison would show here first.
    #[test]
    fn checks_pass_on_flex() {
        let checks = run_all::<burn::backend::Flex>(&Default::default(), 7);
        assert!(checks.len() > 40, "{} checks", checks.len());
        assert_eq!(report(&checks), 0);
    }
}
