//! The analytic memory estimate, method by method — the formulas of `docs/memory.md`, written
//! out here independently of the optimizers' code so that `measure` checks one against the other.

use serde::Serialize;

use crate::llama::LlamaShape;

/// The optimizers the benchmark knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// AdamW on every parameter (galore-torch's AdamW arithmetic).
    Adamw,
    /// GaLore-AdamW.
    Galore,
    /// Fira.
    Fira,
    /// FRUGAL (SVD projection, density ρ).
    Frugal,
    /// DCT-AdamW.
    Dct,
    /// Q-GaLore (INT4 projector, one group per row; f32 weights).
    Qgalore,
}

impl Method {
    /// Every implemented method, in report order.
    pub const ALL: [Method; 6] = [
        Method::Adamw,
        Method::Galore,
        Method::Fira,
        Method::Frugal,
        Method::Dct,
        Method::Qgalore,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Adamw => "adamw",
            Method::Galore => "galore",
            Method::Fira => "fira",
            Method::Frugal => "frugal",
            Method::Dct => "dct",
            Method::Qgalore => "qgalore",
        }
    }

    /// The method of a lower-case name.
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| {
                format!(
                    "unknown optimizer `{name}`: one of {}",
                    Self::ALL.map(|m| m.name()).join(", ")
                )
            })
    }
}

/// Element types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 4 bytes.
    F32,
    /// 2 bytes.
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }
}

/// Settings of one estimate.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Method.
    pub method: Method,
    /// Rank (GaLore, Fira, DCT).
    pub rank: usize,
    /// Density ρ (FRUGAL).
    pub density: f64,
    /// Weights (and gradients).
    pub weights: Dtype,
    /// Optimizer state (moments, projectors; DCT bases stay f32, indices int32).
    pub state: Dtype,
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Breakdown {
    /// Method name.
    pub optimizer: &'static str,
    /// Rank (null for AdamW and FRUGAL).
    pub rank: Option<usize>,
    /// FRUGAL's density.
    pub density: Option<f64>,
    /// Weights dtype.
    pub weights_dtype: Dtype,
    /// State dtype.
    pub state_dtype: Dtype,
    /// Parameters.
    pub param_count: usize,
    /// Weight bytes.
    pub weight_bytes: usize,
    /// Gradient bytes.
    pub grad_bytes: usize,
    /// Everything the optimizer holds.
    pub state_bytes: usize,
    /// Of which: Adam moments.
    pub moment_bytes: usize,
    /// Of which: projector matrices.
    pub projector_bytes: usize,
    /// Of which: selected indices (DCT).
    pub index_bytes: usize,
    /// Of which: shared bases (DCT, counted once per size).
    pub basis_bytes: usize,
    /// Of which: other scalars (Fira's ζ per target).
    pub scalar_bytes: usize,
    /// weights + grads + state.
    pub total_bytes: usize,
}

/// The estimate for one model and settings; errors name a layer the rank does not fit.
pub fn estimate(shape: &LlamaShape, s: Settings) -> Result<Breakdown, String> {
    let (sb, wb) = (s.state.bytes(), s.weights.bytes());
    let mut b = Breakdown {
        optimizer: s.method.name(),
        rank: match s.method {
            Method::Galore | Method::Fira | Method::Dct | Method::Qgalore => Some(s.rank),
            _ => None,
        },
        density: (s.method == Method::Frugal).then_some(s.density),
        weights_dtype: s.weights,
        state_dtype: s.state,
        param_count: 0,
        weight_bytes: 0,
        grad_bytes: 0,
        state_bytes: 0,
        moment_bytes: 0,
        projector_bytes: 0,
        index_bytes: 0,
        basis_bytes: 0,
        scalar_bytes: 0,
        total_bytes: 0,
    };
    let mut basis_sizes = std::collections::BTreeSet::new();
    for (path, dims, target) in shape.parameters() {
        let numel: usize = dims.iter().product();
        b.param_count += numel;
        let target = target && s.method != Method::Adamw;
        if !target {
            b.moment_bytes += 2 * numel * sb; // AdamW: M and V
            continue;
        }
        let (m, n) = (dims[0], dims[1]);
        let (lo, hi) = (m.min(n), m.max(n));
        let r = match s.method {
            Method::Frugal => (s.density * lo as f64).round_ties_even() as usize,
            _ => s.rank,
        };
        if r == 0 || r > lo {
            return Err(format!(
                "rank {r} does not fit layer {path} of shape {m}x{n} (at most {lo})"
            ));
        }
        // std orientation: the moments are r × max(m, n); the projector spans min(m, n)
        b.moment_bytes += 2 * r * hi * sb;
        match s.method {
            Method::Galore | Method::Frugal => b.projector_bytes += r * lo * sb,
            Method::Fira => {
                b.projector_bytes += r * lo * sb;
                b.scalar_bytes += sb;
            }
            Method::Dct => {
                b.index_bytes += 4 * r;
                basis_sizes.insert(lo);
            }
            Method::Qgalore => {
                // INT4 codes packed 8 per 32-bit word; an f32 scale and zero per row of P
                // (P is r×n for m ≥ n, m×r otherwise); the last refresh's first singular
                // vector (lo floats, host)
                let rows = if m >= n { r } else { m };
                b.projector_bytes += 4 * (r * lo).div_ceil(8) + 8 * rows;
                b.scalar_bytes += 4 * lo;
            }
            Method::Adamw => unreachable!(),
        }
    }
    b.basis_bytes = basis_sizes.iter().map(|s| 4 * s * s).sum();
    b.weight_bytes = b.param_count * wb;
    b.grad_bytes = b.param_count * wb;
    b.state_bytes =
        b.moment_bytes + b.projector_bytes + b.index_bytes + b.basis_bytes + b.scalar_bytes;
    b.total_bytes = b.weight_bytes + b.grad_bytes + b.state_bytes;
    Ok(b)
}
