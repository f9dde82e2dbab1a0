//! The analytic memory estimate, method by method — the formulas of `docs/memory.md`, written
//! out here independently of the optimizers' code so that `measure` checks one against the other.

use serde::{Deserialize, Serialize};

use crate::llama::LlamaShape;

/// The optimizers the benchmark knows (`ember::recipe::Method`).
pub use ember::recipe::Method;

/// Element types of weights (`f32`, `bf16`) and of optimizer state (`f32`, `bf16`, `int8`:
/// blockwise 8-bit moments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 4 bytes.
    #[default]
    F32,
    /// 2 bytes.
    Bf16,
    /// Blockwise 8-bit (state only): 1 byte per element plus an f32 absmax per block of 256.
    Int8,
}

/// Elements per block of 8-bit state (Ember's default, bitsandbytes').
pub const INT8_BLOCK: usize = 256;
/// Moments of fewer elements stay f32 under 8-bit state (bitsandbytes' `min_8bit_size`).
pub const MIN_8BIT_SIZE: usize = 4096;
/// The two 256-entry f32 maps of 8-bit state, held once per optimizer.
pub const MAPS_BYTES: usize = 2 * 256 * 4;

impl Dtype {
    /// Bytes per element of a weight (f32: 4, bf16: 2; int8 weights are `QLinear`'s, not this).
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
            Dtype::Int8 => 1,
        }
    }

    /// Bytes of one moment of `n` elements stored in this dtype.
    pub fn moment_bytes(self, n: usize) -> usize {
        match self {
            Dtype::F32 => 4 * n,
            Dtype::Bf16 => 2 * n,
            Dtype::Int8 if n < MIN_8BIT_SIZE => 4 * n,
            Dtype::Int8 => {
                let blocks = n.div_ceil(INT8_BLOCK);
                blocks * INT8_BLOCK + 4 * blocks
            }
        }
    }

    /// Whether a moment of `n` elements is 8-bit (the maps are then held).
    pub fn is_8bit(self, n: usize) -> bool {
        self == Dtype::Int8 && n >= MIN_8BIT_SIZE
    }

    /// Bytes per element of a dense projector under this state dtype: f32 with f32 state, bf16
    /// otherwise.
    pub fn projector_bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            _ => 2,
        }
    }

    /// The core's state dtype.
    /// The dtype of a core storage type.
    pub fn of_state(s: ember_core::StateDtype) -> Self {
        match s {
            ember_core::StateDtype::F32 => Dtype::F32,
            ember_core::StateDtype::Bf16 => Dtype::Bf16,
            ember_core::StateDtype::Int8Blockwise => Dtype::Int8,
        }
    }

    /// The core's storage type.
    pub fn state(self) -> ember_core::StateDtype {
        match self {
            Dtype::F32 => ember_core::StateDtype::F32,
            Dtype::Bf16 => ember_core::StateDtype::Bf16,
            Dtype::Int8 => ember_core::StateDtype::Int8Blockwise,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::Int8 => "int8",
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
    /// Optimizer state: moments in this dtype (8-bit: blockwise, moments under 4096 elements
    /// f32), dense projectors f32 with f32 state and bf16 otherwise; DCT bases stay f32,
    /// indices int32, Q-GaLore's INT4 projector as it is.
    pub state: Dtype,
}

/// How the model is run: what decides the gradients held, the weights of INT8 layers and the
/// activations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunShape {
    /// Layer-wise training: one stage's gradients at a time, block inputs kept, one block's
    /// activations (`ember_core::layerwise`).
    pub layerwise: bool,
    /// Attention and MLP projections stored in INT8 (`QLinear`, groups of 256 where they divide a
    /// row, else one group per row).
    pub int8_weights: bool,
    /// `(batch, sequence)` tokens per step: activations and step temporaries are estimated
    /// (`peak_bytes`); `None`: tensors held only.
    pub tokens: Option<(usize, usize)>,
    /// The backend multiplies bf16 as it is (CUDA, `EmberBackend::native_dtype`): GaLore's
    /// projector of a bf16 weight is then stored in bf16 whatever the state's dtype
    /// (`Engine::projector_dtype`); elsewhere (the CPU) in the state's.
    #[serde(default)]
    pub native_bf16: bool,
}

/// One row of the report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Breakdown {
    /// Method name.
    pub optimizer: String,
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
    /// Of which: other scalars (Fira's ζ per target, Q-GaLore's last first singular vector) and
    /// the 8-bit maps.
    pub scalar_bytes: usize,
    /// weights + grads + state.
    pub total_bytes: usize,
    /// How the run was modelled.
    #[serde(default)]
    pub run: RunShape,
    /// Activations at their peak (layer-wise: the block inputs plus the largest stage's
    /// activations; ordinary: every block's), when tokens were given.
    #[serde(default)]
    pub activation_bytes: Option<usize>,
    /// The optimizer step's temporaries at their peak (new weight and moments of the largest
    /// parameter before the old are freed, f32 copies of low-precision weights and gradients).
    #[serde(default)]
    pub temporary_bytes: Option<usize>,
    /// total + max(activations, temporaries): the estimated peak (when tokens were given).
    #[serde(default)]
    pub peak_bytes: Option<usize>,
    /// With parameter groups: each group's state (moments, projectors, indices; shared DCT
    /// bases and 8-bit maps counted once in the total only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_state_bytes: Option<std::collections::BTreeMap<String, usize>>,
}

/// The estimate for one model and settings (ordinary step, f32/bf16 weights, tensors held);
/// errors name a layer the rank does not fit.
pub fn estimate(shape: &LlamaShape, s: Settings) -> Result<Breakdown, String> {
    estimate_run(shape, s, RunShape::default())
}

/// Bytes of one INT8 (`QLinear`) weight `d_in × d_out`: one byte per weight (packed codes) and
/// an f32 `(scale, zero)` per group of 256 along a row (one group per row when 256 does not
/// Bytes of temporaries while one `rows × cols` parameter is updated (weights of `wb` bytes,
/// `int8`: an INT8 `QLinear` weight). The engine computes in f32: on the whole parameter, an f32
/// copy of the weight and of the gradient and the f32 result (`12·n`), plus the new weight for a
/// low-precision one (`8·n` counted with the casts); a parameter above
/// `StateStorage::update_chunk_elements` whose update is row-local (`row_local`: not a Fira or
/// FRUGAL target) is stepped in place one row chunk at a time (`ember_core::chunked`): the same
/// per element for its largest chunk (weights below f32 only). An INT8 weight is dequantized whole to f32 first and
/// re-quantized from it (codes and scales: `n + 8·n/256`).
pub fn update_temporaries(
    rows: usize,
    cols: usize,
    wb: usize,
    int8: bool,
    row_local: bool,
) -> usize {
    let numel = rows * cols;
    let chunk = ember_core::StateStorage::default().update_chunk_elements;
    let per_element = 12 + if wb < 4 || int8 { 8 } else { 0 };
    // the chunk geometry is the engine's own (`ember_core::chunked::row_chunks`; f32 moments: no
    // block alignment, the 8-bit embedding's 256-element blocks divide its rows anyway)
    let largest = ember_core::chunked::row_chunks(rows, cols, chunk, 0, 1)
        .and_then(|c| c.into_iter().map(|r| r.len()).max());
    let worked = match largest {
        // only weights below f32 are chunked (an f32 one has no working copies to save)
        Some(k) if row_local && wb < 4 => k * cols,
        _ => numel,
    };
    let int8_extra = if int8 {
        4 * numel + numel + 8 * numel.div_ceil(256)
    } else {
        0
    };
    worked * per_element + int8_extra
}

/// divide it) — the grouping `ember_llama::Llama::into_int8(256)` uses.
pub fn int8_weight_bytes(d_in: usize, d_out: usize) -> usize {
    let group = if d_out.is_multiple_of(256) {
        256
    } else {
        d_out
    };
    d_in * d_out + 8 * d_in * (d_out / group)
}

/// The estimate of a run (see [`RunShape`]).
pub fn estimate_run(shape: &LlamaShape, s: Settings, run: RunShape) -> Result<Breakdown, String> {
    let mut b = estimate_with(shape, s.weights, run, |_, _, target| {
        Ok(ParamSettings {
            method: s.method,
            rank: s.rank,
            density: s.density,
            state: s.state,
            projected: target && s.method != Method::Adamw,
            bf16_projector: bf16_projector(run, s.weights, s.method),
        })
    })?;
    b.optimizer = s.method.name().to_string();
    b.rank = match s.method {
        Method::Galore | Method::Fira | Method::Dct | Method::Qgalore => Some(s.rank),
        _ => None,
    };
    b.density = (s.method == Method::Frugal).then_some(s.density);
    b.state_dtype = s.state;
    Ok(b)
}

/// The estimate of a run whose parameters follow parameter groups (`ember::groups`: first
/// match wins, by module path and shape); also each group's state (`group_state_bytes`).
pub fn estimate_groups(
    shape: &LlamaShape,
    groups: &ember::groups::GroupsConfig,
    weights: Dtype,
    run: RunShape,
) -> Result<Breakdown, String> {
    groups.resolve()?;
    let mut per_group: std::collections::BTreeMap<String, usize> = Default::default();
    let mut b = estimate_with(shape, weights, run, |path, dims, _| {
        let g = groups.route(path, dims);
        let r = g.resolved()?;
        let s = ParamSettings {
            method: r.method,
            rank: r.rank.unwrap_or(0),
            density: r.density.unwrap_or(0.0),
            state: Dtype::of_state(r.state),
            projected: r.projects && dims.len() == 2,
            bf16_projector: bf16_projector(run, weights, r.method),
        };
        *per_group.entry(g.name.clone()).or_default() += s.state_bytes(dims)?;
        Ok(s)
    })?;
    b.optimizer = "groups".into();
    b.state_dtype = Dtype::of_state(
        groups
            .default
            .as_ref()
            .map(|d| d.resolved())
            .transpose()?
            .map(|r| r.state)
            .unwrap_or_default(),
    );
    b.group_state_bytes = Some(per_group);
    Ok(b)
}

/// Whether GaLore's dense projector of a `weights` parameter is stored in bf16 whatever the
/// state's dtype ([`RunShape::native_bf16`]).
fn bf16_projector(run: RunShape, weights: Dtype, method: Method) -> bool {
    run.native_bf16 && weights == Dtype::Bf16 && method == Method::Galore
}

/// What the optimizer does to one parameter.
#[derive(Debug, Clone, Copy)]
struct ParamSettings {
    method: Method,
    rank: usize,
    density: f64,
    state: Dtype,
    /// Projected (else AdamW moments).
    projected: bool,
    /// A dense projector stored in bf16 whatever `state` ([`bf16_projector`]).
    bf16_projector: bool,
}

impl ParamSettings {
    /// Moments and projector bytes of a parameter of `dims` (DCT bases and 8-bit maps, shared,
    /// aside).
    fn state_bytes(&self, dims: &[usize]) -> Result<usize, String> {
        let mut b = Breakdown::default();
        let (mut eight, mut bases) = (false, Default::default());
        add_state(&mut b, &mut eight, &mut bases, *self, "", dims)?;
        Ok(b.moment_bytes + b.projector_bytes + b.index_bytes + b.scalar_bytes)
    }
}

/// Adds one parameter's optimizer state to `b`.
fn add_state(
    b: &mut Breakdown,
    eight_bit: &mut bool,
    basis_sizes: &mut std::collections::BTreeSet<usize>,
    s: ParamSettings,
    path: &str,
    dims: &[usize],
) -> Result<(), String> {
    let numel: usize = dims.iter().product();
    let sd = s.state;
    let pb = if s.bf16_projector {
        2
    } else {
        sd.projector_bytes()
    };
    if !s.projected {
        b.moment_bytes += 2 * sd.moment_bytes(numel); // AdamW: M and V
        *eight_bit |= sd.is_8bit(numel);
        return Ok(());
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
    b.moment_bytes += 2 * sd.moment_bytes(r * hi);
    *eight_bit |= sd.is_8bit(r * hi);
    match s.method {
        Method::Galore | Method::Frugal => b.projector_bytes += r * lo * pb,
        Method::Fira => {
            b.projector_bytes += r * lo * pb;
            b.scalar_bytes += 4; // ζ, one f32
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
    Ok(())
}

/// The estimate with each parameter's settings from `route(path, dims, targeted)` (`targeted`:
/// an attention or MLP linear).
fn estimate_with(
    shape: &LlamaShape,
    weights: Dtype,
    run: RunShape,
    mut route: impl FnMut(&str, &[usize], bool) -> Result<ParamSettings, String>,
) -> Result<Breakdown, String> {
    if weights == Dtype::Int8 {
        return Err("weights are f32 or bf16 (INT8 weights are Q-GaLore's QLinear)".into());
    }
    let wb = weights.bytes();
    let mut eight_bit = false;
    let mut b = Breakdown {
        weights_dtype: weights,
        run,
        ..Breakdown::default()
    };
    let mut basis_sizes = std::collections::BTreeSet::new();
    for (path, dims, target) in shape.parameters() {
        b.param_count += dims.iter().product::<usize>();
        let s = route(&path, &dims, target)?;
        add_state(&mut b, &mut eight_bit, &mut basis_sizes, s, &path, &dims)?;
    }
    if eight_bit {
        b.scalar_bytes += MAPS_BYTES;
    }
    b.basis_bytes = basis_sizes.iter().map(|s| 4 * s * s).sum();
    // weights; gradients: all at once, or the largest stage's (layer-wise). INT8 weights hold
    // codes + scales; their gradients are f32.
    let (h, i, v) = (shape.hidden_size, shape.intermediate_size, shape.vocab_size);
    let mut weight_bytes = 0;
    let mut stage_grads: std::collections::BTreeMap<String, usize> = Default::default();
    let mut largest_temporaries = 0usize;
    // per stage: the `R` of Fira's and FRUGAL's f32 targets, held from the step's start
    let mut stage_early: std::collections::BTreeMap<String, usize> = Default::default();
    for (path, dims, target) in shape.parameters() {
        let numel: usize = dims.iter().product();
        let int8 = run.int8_weights && target;
        weight_bytes += if int8 {
            int8_weight_bytes(dims[0], dims[1])
        } else {
            numel * wb
        };
        let stage = match path.split('.').collect::<Vec<_>>().as_slice() {
            ["layers", k, ..] => format!("layers.{k}"),
            ["embed", ..] => "input".into(),
            _ => "output".into(),
        };
        *stage_grads.entry(stage.clone()).or_default() += numel * if int8 { 4 } else { wb };
        // Fira's and FRUGAL's residual reads the whole gradient: their targets are not chunked
        let settings = route(&path, &dims, target)?;
        let method = settings.method;
        let row_local = !target || !matches!(method, Method::Fira | Method::Frugal);
        // ... and an f32 gradient's `R = down(G)` (f32) is computed before the step and held
        // beside `G` until its update (`EmberOptimizer::with_early_projection`)
        if settings.projected && !row_local && wb == 4 && dims.len() == 2 {
            let (lo, hi) = (dims[0].min(dims[1]), dims[0].max(dims[1]));
            let r = match method {
                Method::Frugal => (settings.density * lo as f64).round_ties_even() as usize,
                _ => settings.rank,
            };
            *stage_early.entry(stage).or_default() += 4 * r * hi;
        }
        largest_temporaries = largest_temporaries.max(update_temporaries(
            dims[0],
            dims.get(1).copied().unwrap_or(1),
            wb,
            int8,
            row_local,
        ));
    }
    b.weight_bytes = weight_bytes;
    b.grad_bytes = if run.layerwise {
        stage_grads.values().copied().max().unwrap_or(0)
    } else {
        stage_grads.values().sum()
    };
    b.run = run;
    if let Some((batch, seq)) = run.tokens {
        // the model reads `seq − 1` input tokens per sequence
        let n = batch * seq.saturating_sub(1);
        let t = seq.saturating_sub(1);
        let a = shape.num_attention_heads;
        let layers = shape.num_hidden_layers;
        // per block, live at the step's peak (fitted to the heap peaks measured on flex with
        // RMSNorm, the rotary embedding and SwiGLU as single ops, docs/memory.md):
        // (5·h + 1.5·i) values of the weights' dtype per token and ¾ of an attention row
        // (a·t values); the attention matrix is recomputed in the backward pass
        // (`ember_kernels::attention`), whose temporaries for one block are ≈ 3 matrices of
        // a·t values
        let block = n * ((5 * h + 3 * i / 2) * wb + 3 * a * t * wb / 4);
        let attention = 3 * n * a * t * wb;
        // INT8 weights: the dequantized f32 weight of each projection is an autodiff leaf
        let block_int8 = if run.int8_weights {
            4 * (4 * h * h + 3 * h * i)
        } else {
            0
        };
        let block_params = (4 * h * h + 3 * h * i) * if run.int8_weights { 4 } else { wb };
        let activations = if run.layerwise {
            // block inputs + the larger of one block (recomputed: its activations, 1.4× the
            // saved set with the backward's temporaries, the attention's, and gradients; ∂L/∂x
            // and ∂L/∂y) and the output stage recomputed (logits, their f32 log-softmax and
            // gradient: 7 bytes per logit besides the logits)
            let inputs = (layers + 1) * n * h * wb;
            let one_block =
                (14 * block) / 10 + attention + block_int8 + block_params + 2 * n * h * wb;
            inputs + one_block.max(n * v * (wb + 7))
        } else {
            // every block's saved set, the output stage (logits and 4 bytes per logit of their
            // loss's) and the first block's attention temporaries of the backward pass
            layers * (block + block_int8) + n * v * (wb + 4) + attention
        };
        // the optimizer step: the largest working set of one parameter's update, and the
        // projections computed before the step (the whole step's, or a stage's)
        let early = if run.layerwise {
            stage_early.values().copied().max().unwrap_or(0)
        } else {
            stage_early.values().sum()
        };
        let temporaries = largest_temporaries + early;
        b.activation_bytes = Some(activations);
        b.temporary_bytes = Some(temporaries);
    }
    b.state_bytes =
        b.moment_bytes + b.projector_bytes + b.index_bytes + b.basis_bytes + b.scalar_bytes;
    b.total_bytes = b.weight_bytes + b.grad_bytes + b.state_bytes;
    // activations are freed before the update they feed (the whole step's, or a stage's before
    // its update, the block inputs aside), so the peak is the larger of the two phases
    b.peak_bytes = b
        .activation_bytes
        .zip(b.temporary_bytes)
        .map(|(a, t)| b.total_bytes + a.max(t));
    Ok(b)
}
