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
//! leaf is remembered (per parameter and device, see `leaves`) and [`quantized_grads`] — used
//! instead of `GradientsParams::from_grads` — files `∂L/∂Ŵ` under the id of the float parameter
//! `qparams` (reshaped `[d_input, groups, group]`), where burn's gradient accumulation and its
//! multi-device strategy carry it like any float gradient.
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
    ///
    /// `Ŵ` is dequantized in f32 and rounded once to the dtype of `input` (bf16 activations of a
    /// bf16 model get a bf16 `Ŵ`, and its gradient is bf16 like every other weight's).
    pub fn forward<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        let w = self.weight();
        let w = if w.dtype() == input.dtype() {
            w
        } else {
            w.cast(input.dtype())
        };
        let w = w.set_require_grad(false).require_grad();
        if w.is_require_grad() {
            leaves::push(self.codes.id, &w);
        }
        // one 2-D product over the rows of `input` (a batched matmul against the broadcast
        // weight would differentiate into a `[batch, in, out]` gradient first)
        let dims = input.dims();
        let n: usize = dims[..D - 1].iter().product();
        let out = input.reshape([n, dims[D - 1]]).matmul(w);
        let out = match &self.bias {
            Some(b) if b.val().dtype() != out.dtype() => {
                let b = b.val().cast(out.dtype());
                out + b.unsqueeze()
            }
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
/// gradient of every [`QLinear`] weight, filed under the id of its `qparams` (a float parameter,
/// so that burn's gradient accumulation and multi-device transfer carry it) as a
/// `[d_input, groups, group]` tensor: the `[d_input, d_output]` gradient, rows split by group.
pub fn quantized_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    mut grads: B::Gradients,
    module: &M,
) -> GradientsParams {
    let mut finder = QuantizedIds::default();
    module.visit(&mut finder);
    let generation = leaves::next_generation();
    let mut collected = Vec::new();
    for (codes, qparams, groups, device) in finder.found {
        let key = leaves::key::<B>(codes, &device);
        let mut sum: Option<Tensor<B::InnerBackend, 2>> = None;
        // take the leaves of this graph; leave other graphs' (a clone of the model with the same
        // ids, another replica) to their own call, and drop leaves no call took for two calls
        leaves::retain::<B>(&key, generation, |leaf| {
            match leaf.grad_remove(&mut grads) {
                Some(g) => {
                    sum = Some(match sum.take() {
                        Some(s) => s + g,
                        None => g,
                    });
                    false
                }
                None => true,
            }
        });
        if let Some(g) = sum {
            let [rows, cols] = g.dims();
            collected.push((qparams, g.reshape([rows, groups, cols / groups])));
        }
    }
    let mut params = GradientsParams::from_grads(grads, module);
    for (id, g) in collected {
        params.register::<B::InnerBackend, 3>(id, g);
    }
    params
}

/// Finds every INT8 weight of a module by its shape: a 2-D int parameter (the codes,
/// `[rows, words]`) followed by a 3-D float parameter `[rows, groups, 2]` (scale and zero point
/// per group) in the same module.
#[derive(Default)]
pub(crate) struct QuantizedIds<D> {
    /// `(codes id, qparams id, groups, device)`.
    pub(crate) found: Vec<(ParamId, ParamId, usize, D)>,
    pending: Option<(ParamId, usize, usize)>,
    depth: usize,
}

impl<B: Backend> ModuleVisitor<B> for QuantizedIds<B::Device> {
    fn enter_module(&mut self, _name: &str, _container_type: &str) {
        self.depth += 1;
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.depth -= 1;
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
        let dims = param.val().dims();
        self.pending = (D == 2).then(|| (param.id, dims[0], self.depth));
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some((codes, rows, depth)) = self.pending.take() {
            let t = param.val();
            let dims = t.dims();
            if D == 3 && dims[0] == rows && dims[2] == 2 && depth == self.depth {
                self.found.push((codes, param.id, dims[1], t.device()));
            }
        }
    }
}

/// The autodiff leaves of dequantized weights, per `(codes id, device)`, waiting for
/// [`quantized_grads`]. A layer used twice in one graph leaves two (their gradients are summed).
///
/// A leaf holds the dequantized f32 weight. Each [`quantized_grads`] call takes the leaves whose
/// gradient its graph holds and leaves the others (a clone of the model, or a replica with the
/// same parameter ids, keeps its own leaves for its own call); a layer keeps at most
/// [`MAX_PENDING`] leaves — forward passes that never reach a backward pass (inference on an
/// autodiff backend) drop the oldest, with a warning. Inference belongs on the inner backend
/// (`model.valid()`), where no leaf is made.
mod leaves {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Leaves kept per layer before the oldest are dropped.
    pub(super) const MAX_PENDING: usize = 4;

    struct Leaf {
        generation: u64,
        tensor: Box<dyn Any + Send>,
    }

    type Store = HashMap<String, Vec<Leaf>>;

    static STORE: Mutex<Option<Store>> = Mutex::new(None);
    static GENERATION: AtomicU64 = AtomicU64::new(0);

    pub(super) fn key<B: Backend>(id: ParamId, device: &B::Device) -> String {
        format!("{id}@{device:?}")
    }

    /// A new [`quantized_grads`] call.
    pub(super) fn next_generation() -> u64 {
        GENERATION.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub(super) fn push<B: Backend>(id: ParamId, w: &Tensor<B, 2>) {
        let key = key::<B>(id, &w.device());
        let mut guard = STORE.lock().unwrap_or_else(|e| e.into_inner());
        let list = guard
            .get_or_insert_with(HashMap::new)
            .entry(key)
            .or_default();
        if list.len() >= MAX_PENDING {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                log::warn!(
                    "ember QLinear: {MAX_PENDING} forward passes of one layer without \
                     `quantized_grads`; dropping the oldest pending weight (run inference on \
                     `model.valid()`)"
                )
            });
            list.remove(0);
        }
        list.push(Leaf {
            generation: GENERATION.load(Ordering::SeqCst),
            tensor: Box::new(w.clone()),
        });
    }

    /// Keeps the leaves of `key` for which `keep` says so (those of other graphs) that are
    /// younger than this call.
    pub(super) fn retain<B: AutodiffBackend>(
        key: &str,
        generation: u64,
        mut keep: impl FnMut(&Tensor<B, 2>) -> bool,
    ) {
        let mut guard = STORE.lock().unwrap_or_else(|e| e.into_inner());
        let store = guard.get_or_insert_with(HashMap::new);
        let Some(list) = store.get_mut(key) else {
            return;
        };
        list.retain(|leaf| match leaf.tensor.downcast_ref::<Tensor<B, 2>>() {
            Some(t) => keep(t) && leaf.generation < generation,
            None => false,
        });
        if list.is_empty() {
            store.remove(key);
        }
    }

    /// Leaves pending for `key` (tests).
    #[cfg(test)]
    pub(super) fn pending(key: &str) -> usize {
        let guard = STORE.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().and_then(|s| s.get(key)).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    type B = Autodiff<Flex>;

    fn layer() -> QLinear<B> {
        QLinearConfig::new(8, 8)
            .with_group_size(8)
            .with_bias(false)
            .init(&Default::default())
    }

    fn grad_of(grads: &GradientsParams, l: &QLinear<B>) -> Option<Tensor<Flex, 3>> {
        grads.get::<Flex, 3>(l.qparams.id)
    }

    /// The store holds a bounded number of leaves per layer, whatever the number of forward
    /// passes without `quantized_grads`; the layer's next `quantized_grads` takes its graph's
    /// leaf and keeps the others (bounded).
    #[test]
    fn pending_leaves_are_bounded() {
        let l = layer();
        let x = Tensor::<B, 2>::ones([2, 8], &Default::default());
        let key = leaves::key::<B>(l.codes.id, &Default::default());
        for _ in 0..10 {
            let _ = l.forward(x.clone()); // inference on an autodiff backend, no backward
        }
        assert_eq!(leaves::pending(&key), leaves::MAX_PENDING);
        let y = l.forward(x.clone()).sum();
        let g = quantized_grads(y.backward(), &l);
        assert!(grad_of(&g, &l).is_some());
        assert_eq!(leaves::pending(&key), leaves::MAX_PENDING - 1);
    }

    /// Two clones of a layer (the same parameter ids) in flight at once: each `quantized_grads`
    /// takes its own graph's gradient and leaves the other's.
    #[test]
    fn clones_keep_their_own_gradients() {
        let a = layer();
        let b = a.clone();
        let device = Default::default();
        let xa = Tensor::<B, 2>::ones([2, 8], &device);
        let xb = Tensor::<B, 2>::ones([2, 8], &device).mul_scalar(3.0);
        let ya = a.forward(xa).sum();
        let yb = b.forward(xb).sum();
        let ga = grad_of(&quantized_grads(ya.backward(), &a), &a).unwrap();
        let gb = grad_of(&quantized_grads(yb.backward(), &b), &b).unwrap();
        // ∂Σ(x·W)/∂W = xᵀ·1: rows of 2 (ones, batch 2) and 6 (threes)
        let (ga, gb): (Vec<f32>, Vec<f32>) = (
            ga.into_data().to_vec().unwrap(),
            gb.into_data().to_vec().unwrap(),
        );
        assert!(ga.iter().all(|&v| v == 2.0), "{ga:?}");
        assert!(gb.iter().all(|&v| v == 6.0), "{gb:?}");
    }
}
