//! INT8 weights in the model: [`QLinear`], a linear layer whose weight is stored as 8-bit codes
//! (Q-GaLore §3), and [`quantized_grads`], which hands its gradient to the optimizer.
//!
//! ## Storage
//! The weight `W` (`[d_input, d_output]`, burn's `Linear` layout) is quantized asymmetrically per
//! group of `g` consecutive elements of a row (`g` divides `d_output`, `g % 4 == 0`):
//! `scale = max(max − min, 1e-5)/255`, `zero = clamp(−round(min/scale), 0, 255)`,
//! `q = clamp(round(W/scale) + zero, 0, 255)`. The codes are packed four to an `i32` word
//! (`codes`, `[d_input, d_output/4]`, an int parameter), `(scale, zero)` per group are the float
//! parameter `qparams` (`[d_input, d_output/g, 2]`, no gradient). Weight bytes:
//! `d_input·d_output + 8·d_input·d_output/g` — ¼ of f32 plus 8 bytes per group.
//!
//! ## Forward and gradient
//! `forward` dequantizes `Ŵ = scale·(q − zero)` into a temporary f32 tensor, makes it an autodiff
//! leaf and computes `x·Ŵ + b`. burn's autodiff only gives gradients to float parameters, so the
//! leaf is remembered (per parameter and device) and [`quantized_grads`] — used instead of
//! `GradientsParams::from_grads` — files `∂L/∂Ŵ` under the id of `codes`.
//!
//! ## Update
//! Any [`EmberOptimizer`](crate::EmberOptimizer) then treats `codes` as a `[d_input, d_output]`
//! weight named `<layer>.weight`: it dequantizes, applies the method's update (weight decay
//! included) in f32 and re-quantizes with **stochastic rounding** (`x = w/scale`, up with
//! probability `x − ⌊x⌋`), with fresh `(scale, zero)` from the new values, drawing its uniforms
//! from a counter-based generator keyed by `SplitMix64(seed, path, step)`
//! ([`ember_kernels::rng`], on the device on CubeCL backends): reproducible for a seed, unbiased.
//!
//! ## What a user changes
//! 1. `Linear<B>` → [`QLinear<B>`] for the targeted layers (`QLinearConfig` mirrors
//!    `LinearConfig`; [`QLinear::from_linear`] converts an initialized or trained layer).
//! 2. In the training step, `GradientsParams::from_grads(grads, &model)` →
//!    `ember_core::quantized_grads(grads, &model)` (with burn-train: `TrainOutput { grads, item }`).

use std::any::Any;
use std::sync::Mutex;

use burn::config::Config;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::nn::Initializer;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use ember_kernels::{EmberBackend, RoundingKey};
use hashbrown::HashMap;

use crate::error::EmberError;
use crate::quant::dequantize_device;
use crate::rng::SplitMix64;

/// Configuration of a [`QLinear`] (mirrors burn's `LinearConfig`).
#[derive(Config, Debug)]
pub struct QLinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Add a bias (kept in f32).
    #[config(default = true)]
    pub bias: bool,
    /// Elements per quantization group along a row of the weight (a multiple of 4 dividing
    /// `d_output`); −1: one group per row.
    #[config(default = 256)]
    pub group_size: i64,
    /// Initializer of the f32 weight before quantization (burn's `Linear` default).
    #[config(default = "Initializer::KaimingUniform{gain:0.5773502691896258, fan_out_only:false}")]
    pub initializer: Initializer,
}

/// A linear layer with INT8 weights (see the [module docs](self)).
#[derive(Module, Debug)]
pub struct QLinear<B: Backend> {
    /// Packed codes, four 8-bit codes per word: `[d_input, d_output / 4]`.
    pub codes: Param<Tensor<B, 2, Int>>,
    /// `(scale, zero)` per group: `[d_input, d_output / group, 2]` (no gradient).
    pub qparams: Param<Tensor<B, 3>>,
    /// Bias, `[d_output]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

/// The group size `g` for a row of `cols` elements, or why it does not fit.
pub fn resolve_group(group_size: i64, cols: usize) -> Result<usize, EmberError> {
    let g = if group_size == -1 {
        cols
    } else if group_size > 0 {
        group_size as usize
    } else {
        return Err(EmberError::InvalidConfig(format!(
            "group_size = {group_size} (a positive multiple of 4, or −1 for one group per row)"
        )));
    };
    if g == 0 || !g.is_multiple_of(4) || !cols.is_multiple_of(g) {
        return Err(EmberError::InvalidConfig(format!(
            "group size {g} must be a multiple of 4 dividing the row length {cols} \
             (d_output); pick another group_size or −1"
        )));
    }
    Ok(g)
}

impl QLinearConfig {
    /// Builds the layer, or explains why the group size does not fit.
    pub fn try_init<B: Backend>(&self, device: &B::Device) -> Result<QLinear<B>, EmberError> {
        let g = resolve_group(self.group_size, self.d_output)?;
        let w = self.initializer.init_with(
            [self.d_input, self.d_output],
            Some(self.d_input),
            Some(self.d_output),
            device,
        );
        let bias = self.bias.then(|| {
            self.initializer.init_with(
                [self.d_output],
                Some(self.d_input),
                Some(self.d_output),
                device,
            )
        });
        Ok(QLinear::from_weight(w.val(), bias.map(|b| b.val()), g))
    }

    /// Builds the layer (panics with the reason if the group size does not fit).
    pub fn init<B: Backend>(&self, device: &B::Device) -> QLinear<B> {
        self.try_init(device)
            .unwrap_or_else(|e| panic!("QLinearConfig::init: {e}"))
    }
}

impl<B: Backend> QLinear<B> {
    /// Quantizes an f32 weight `[d_input, d_output]` (round to nearest) into a layer with group
    /// size `g` (checked by [`resolve_group`]).
    pub fn from_weight(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>, g: usize) -> Self {
        let (codes, qparams) =
            ember_kernels::portable::quantize_int8(weight.set_require_grad(false), g, None);
        QLinear {
            codes: Param::initialized(ParamId::new(), codes),
            qparams: Param::from_tensor(qparams).set_require_grad(false),
            bias: bias.map(|b| Param::from_tensor(b.set_require_grad(false))),
        }
    }

    /// Converts burn's `Linear` (e.g. a trained one) with group size `group_size` (−1: per row).
    pub fn from_linear(linear: burn::nn::Linear<B>, group_size: i64) -> Result<Self, EmberError> {
        let w = linear.weight.val();
        let g = resolve_group(group_size, w.dims()[1])?;
        Ok(Self::from_weight(w, linear.bias.map(|b| b.val()), g))
    }

    /// `[d_input, d_output]`.
    pub fn shape(&self) -> [usize; 2] {
        let [rows, words] = self.codes.val().dims();
        [rows, words * 4]
    }

    /// The group size.
    pub fn group(&self) -> usize {
        let [_, groups, _] = self.qparams.val().dims();
        self.shape()[1] / groups
    }

    /// The dequantized weight `Ŵ` (f32, `[d_input, d_output]`, no gradient).
    pub fn weight(&self) -> Tensor<B, 2> {
        dequantize_int8(self.codes.val(), self.qparams.val())
    }

    /// Bytes held by the weight (codes and qparams; the bias is not counted).
    pub fn weight_bytes(&self) -> usize {
        let c = self.codes.val();
        let q = self.qparams.val();
        c.shape().num_elements() * c.dtype().size() + q.shape().num_elements() * q.dtype().size()
    }

    /// `y = x·Ŵ + b` over the last dimension of `x`. With an autodiff backend, `Ŵ` is a leaf
    /// whose gradient [`quantized_grads`] collects.
    pub fn forward<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        let w = self.weight().set_require_grad(false).require_grad();
        if w.is_require_grad() {
            leaves::push(self.codes.id, &w);
        }
        // one 2-D product over the rows of `input` (a batched matmul against the broadcast
        // weight would differentiate into a `[batch, in, out]` gradient first)
        let dims = input.dims();
        let n: usize = dims[..D - 1].iter().product();
        let out = input.reshape([n, dims[D - 1]]).matmul(w);
        let out = match &self.bias {
            Some(b) => out + b.val().unsqueeze(),
            None => out,
        };
        let mut shape = dims;
        shape[D - 1] = out.dims()[1];
        out.reshape(shape)
    }
}

/// Dequantizes packed INT8 codes `[rows, cols/4]` with `qparams` `[rows, groups, 2]`.
pub fn dequantize_int8<B: Backend>(
    codes: Tensor<B, 2, Int>,
    qparams: Tensor<B, 3>,
) -> Tensor<B, 2> {
    let [rows, words] = codes.dims();
    let [_, groups, _] = qparams.dims();
    let cols = words * 4;
    let scales = qparams
        .clone()
        .slice([0..rows, 0..groups, 0..1])
        .reshape([rows * groups]);
    let zeros = qparams
        .slice([0..rows, 0..groups, 1..2])
        .reshape([rows * groups]);
    dequantize_device(
        &codes.reshape([rows * words]),
        &scales,
        &zeros,
        8,
        cols / groups,
        rows,
        cols,
    )
}

/// Quantizes `w` (`[rows, cols]`) to INT8 per group of `g` along rows: round to nearest when
/// `key` is `None`, else stochastic rounding (`x` goes up when `u < x − ⌊x⌋`, `u` the
/// counter-based uniform of that element under `key`, [`ember_kernels::rng`]). Returns
/// `(codes [rows, cols/4], qparams [rows, cols/g, 2])`. Runs the backend's
/// [`EmberBackend::quantize_int8`] (one fused kernel on CubeCL backends).
pub fn quantize_int8<B: EmberBackend>(
    w: Tensor<B, 2>,
    g: usize,
    key: Option<RoundingKey>,
) -> (Tensor<B, 2, Int>, Tensor<B, 3>) {
    B::quantize_int8(w, g, key)
}

/// The stochastic-rounding key of one re-quantization: `SplitMix64(seed, salts)` (the parameter's
/// path hash and the step), the same on every backend.
pub fn rounding_key(seed: u64, salts: &[u64]) -> RoundingKey {
    let x = SplitMix64::new(seed, salts).next_u64();
    RoundingKey([x as u32, (x >> 32) as u32])
}

/// The gradients of `module` as burn's `GradientsParams::from_grads` gives them, plus the
/// gradient of every [`QLinear`] weight, filed under the id of its `codes`.
pub fn quantized_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    mut grads: B::Gradients,
    module: &M,
) -> GradientsParams {
    let mut finder = IntIds::default();
    module.visit(&mut finder);
    let mut collected = Vec::new();
    for (id, device) in finder.ids {
        let key = leaves::key::<B>(id, &device);
        let mut sum: Option<Tensor<B::InnerBackend, 2>> = None;
        for leaf in leaves::take::<B>(&key) {
            if let Some(g) = leaf.grad_remove(&mut grads) {
                sum = Some(match sum {
                    Some(s) => s + g,
                    None => g,
                });
            }
        }
        if let Some(g) = sum {
            collected.push((id, g));
        }
    }
    let mut params = GradientsParams::from_grads(grads, module);
    for (id, g) in collected {
        params.register::<B::InnerBackend, 2>(id, g);
    }
    params
}

#[derive(Default)]
struct IntIds<D> {
    ids: Vec<(ParamId, D)>,
}

impl<B: Backend> ModuleVisitor<B> for IntIds<B::Device> {
    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
        if D == 2 {
            self.ids.push((param.id, param.val().device()));
        }
    }
}

/// The autodiff leaves of dequantized weights, per `(codes id, device)`, waiting for
/// [`quantized_grads`]. A layer used twice in one graph leaves two (their gradients are summed).
mod leaves {
    use super::*;

    /// Leaves kept per layer before the oldest are dropped (forward passes with no
    /// `quantized_grads` in between, e.g. inference on an autodiff backend).
    const MAX_PENDING: usize = 32;

    type Store = HashMap<String, Vec<Box<dyn Any + Send>>>;

    static STORE: Mutex<Option<Store>> = Mutex::new(None);

    pub(super) fn key<B: Backend>(id: ParamId, device: &B::Device) -> String {
        format!("{id}@{device:?}")
    }

    pub(super) fn push<B: Backend>(id: ParamId, w: &Tensor<B, 2>) {
        let key = key::<B>(id, &w.device());
        let mut guard = STORE.lock().unwrap_or_else(|e| e.into_inner());
        let list = guard
            .get_or_insert_with(HashMap::new)
            .entry(key)
            .or_default();
        if list.len() >= MAX_PENDING {
            log::warn!(
                "ember QLinear: {MAX_PENDING} forward passes without `quantized_grads`; \
                 dropping the oldest pending weight gradient"
            );
            list.remove(0);
        }
        list.push(Box::new(w.clone()));
    }

    pub(super) fn take<B: AutodiffBackend>(key: &str) -> Vec<Tensor<B, 2>> {
        let mut guard = STORE.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = guard.get_or_insert_with(HashMap::new).remove(key) else {
            return Vec::new();
        };
        list.into_iter()
            .filter_map(|b| b.downcast::<Tensor<B, 2>>().ok().map(|t| *t))
            .collect()
    }
}
