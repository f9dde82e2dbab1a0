//! # ember-llama: the LLaMA-style decoder of Ember's benchmark and examples
//!
//! A LLaMA-style decoder in burn (RMSNorm, rotary embeddings, SwiGLU, causal attention), the
//! architecture of the GaLore paper's experiments, with its presets (60M … 7B). Attention and
//! MLP linears live under fields named `attn` and `mlp`, so the official scripts' target rule
//! (`["attn", "mlp"]`) selects them.
//!
//! * **Precision**: [`Llama::cast`] stores every parameter in bf16 (or any float dtype); the
//!   rotary embedding and the loss are computed in f32 (as HF transformers upcasts them).
//! * **INT8 weights**: [`Llama::into_int8`] stores the projections as Ember's `QLinear`.

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::{
    Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig, RotaryEncoding,
    RotaryEncodingConfig,
};
use burn::prelude::*;
use burn::tensor::DType;
use ember_core::QLinear;
pub use ember_kernels::model::ModelOps;
use ember_kernels::model::{causal_attention, dense, rms_norm, rotary_heads, swiglu};
use serde::{Deserialize, Serialize};

/// Model shape, as in the GaLore paper's `configs/llama_*.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaShape {
    /// Preset name (or the config file's name).
    #[serde(default)]
    pub name: String,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP intermediate size.
    pub intermediate_size: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Vocabulary.
    pub vocab_size: usize,
    /// Maximum sequence length (for the rotary table).
    #[serde(default = "default_seq")]
    pub max_sequence_length: usize,
}

fn default_seq() -> usize {
    1024
}

impl LlamaShape {
    fn preset(name: &str, h: usize, i: usize, heads: usize, layers: usize, vocab: usize) -> Self {
        Self {
            name: name.into(),
            hidden_size: h,
            intermediate_size: i,
            num_attention_heads: heads,
            num_hidden_layers: layers,
            vocab_size: vocab,
            max_sequence_length: 1024,
        }
    }

    /// The presets: the GaLore paper's LLaMA family (vocabulary 32000) plus `tiny`, a small model
    /// for the CPU.
    pub fn presets() -> Vec<Self> {
        vec![
            Self::preset("tiny", 256, 688, 4, 4, 8000),
            Self::preset("60m", 512, 1376, 8, 8, 32000),
            Self::preset("130m", 768, 2048, 12, 12, 32000),
            Self::preset("350m", 1024, 2736, 16, 24, 32000),
            Self::preset("1b", 2048, 5461, 32, 24, 32000),
            Self::preset("7b", 4096, 11008, 32, 32, 32000),
        ]
    }

    /// `pico`: the tests' model (hidden 32, MLP 64, 2 heads, 2 blocks, vocabulary 64, 32
    /// positions), small enough for many steps of every method on the CPU in a unit test.
    pub fn pico() -> Self {
        Self {
            name: "pico".into(),
            hidden_size: 32,
            intermediate_size: 64,
            num_attention_heads: 2,
            num_hidden_layers: 2,
            vocab_size: 64,
            max_sequence_length: 32,
        }
    }

    /// A preset by name, or a JSON config file (HF LLaMA keys) by path.
    pub fn resolve(model: &str) -> Result<Self, String> {
        if let Some(p) = Self::presets()
            .into_iter()
            .find(|p| p.name == model.to_lowercase())
        {
            return Ok(p);
        }
        let path = std::path::Path::new(model);
        if !path.exists() {
            let names: Vec<String> = Self::presets().into_iter().map(|p| p.name).collect();
            return Err(format!(
                "unknown model `{model}`: not a preset ({}) and no such config file",
                names.join(", ")
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {model}: {e}"))?;
        let mut shape: LlamaShape = serde_json::from_str(&text)
            .map_err(|e| format!("malformed model config {model}: {e}"))?;
        if shape.name.is_empty() {
            shape.name = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
        }
        shape.validate()?;
        Ok(shape)
    }

    /// Checks the sizes.
    pub fn validate(&self) -> Result<(), String> {
        let h = self.hidden_size;
        if h == 0
            || self.intermediate_size == 0
            || self.vocab_size == 0
            || self.num_hidden_layers == 0
        {
            return Err(format!(
                "model config {}: sizes must be positive",
                self.name
            ));
        }
        if self.num_attention_heads == 0
            || !h.is_multiple_of(self.num_attention_heads)
            || !(h / self.num_attention_heads).is_multiple_of(2)
        {
            return Err(format!(
                "model config {}: hidden_size {h} must split into {} heads of even size",
                self.name, self.num_attention_heads
            ));
        }
        Ok(())
    }

    /// Every parameter: `(path, shape, targeted by the official rule)`, in module order.
    pub fn parameters(&self) -> Vec<(String, Vec<usize>, bool)> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let mut p = vec![("embed.weight".to_string(), vec![v, h], false)];
        for l in 0..self.num_hidden_layers {
            for name in ["query", "key", "value", "output"] {
                p.push((format!("layers.{l}.attn.{name}.weight"), vec![h, h], true));
            }
            p.push((format!("layers.{l}.mlp.gate.weight"), vec![h, i], true));
            p.push((format!("layers.{l}.mlp.up.weight"), vec![h, i], true));
            p.push((format!("layers.{l}.mlp.down.weight"), vec![i, h], true));
            p.push((format!("layers.{l}.attn_norm.gamma"), vec![h], false));
            p.push((format!("layers.{l}.mlp_norm.gamma"), vec![h], false));
        }
        p.push(("norm.gamma".to_string(), vec![h], false));
        p.push(("lm_head.weight".to_string(), vec![h, v], false));
        p
    }

    /// Number of parameters.
    pub fn param_count(&self) -> usize {
        self.parameters()
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum()
    }

    /// Builds the burn model.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Llama<B> {
        self.init_with(device, DType::F32)
    }

    /// [`init`](Self::init) with float parameters in `dtype`, cast one block at a time: the f32
    /// values of only one block exist at once (a bf16 LLaMA-7B does not pass through 27 GB of
    /// f32 weights). The values are those of `init` rounded to `dtype`.
    pub fn init_with<B: Backend>(&self, device: &B::Device, dtype: DType) -> Llama<B> {
        self.init_blocks(device, dtype, None)
            .expect("no INT8 conversion, nothing to fail")
    }

    /// [`init_with`](Self::init_with) with the attention and MLP projections in INT8
    /// ([`Llama::into_int8`], groups of `group_size`), each block converted as soon as it is
    /// built: the model never holds more than one block's projections in `dtype` (building in
    /// `dtype` and then calling `into_int8` holds all of them, and on CUDA leaves their freed
    /// pages in the allocator's pools).
    pub fn init_int8<B: Backend>(
        &self,
        device: &B::Device,
        dtype: DType,
        group_size: i64,
    ) -> Result<Llama<B>, String> {
        self.init_blocks(device, dtype, Some(group_size))
    }

    fn init_blocks<B: Backend>(
        &self,
        device: &B::Device,
        dtype: DType,
        int8: Option<i64>,
    ) -> Result<Llama<B>, String> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let mut cast = CastParams(dtype);
        let head_dim = h / self.num_attention_heads;
        let lin = |a, b| LinearConfig::new(a, b).with_bias(false).init(device);
        let proj = |a, b| Proj::F32(lin(a, b));
        Ok(Llama {
            embed: EmbeddingConfig::new(self.vocab_size, h)
                .init(device)
                .map(&mut cast),
            layers: (0..self.num_hidden_layers)
                .map(|_| {
                    let block = Block {
                        attn_norm: RmsNormConfig::new(h).init(device),
                        attn: Attention {
                            query: proj(h, h),
                            key: proj(h, h),
                            value: proj(h, h),
                            output: proj(h, h),
                            heads: self.num_attention_heads,
                        },
                        mlp_norm: RmsNormConfig::new(h).init(device),
                        mlp: SwiGlu {
                            gate: proj(h, i),
                            up: proj(h, i),
                            down: proj(i, h),
                        },
                    }
                    .map(&mut cast);
                    match int8 {
                        Some(g) => block.into_int8(g),
                        None => Ok(block),
                    }
                })
                .collect::<Result<_, _>>()?,
            norm: RmsNormConfig::new(h).init(device).map(&mut cast),
            lm_head: lin(h, self.vocab_size).map(&mut cast),
            rope: RotaryEncodingConfig::new(self.max_sequence_length, head_dim).init(device),
        })
    }
}

/// A projection of attention or MLP: burn's f32 `Linear`, or Ember's INT8 `QLinear`
/// (Q-GaLore's weights in 8 bits; see [`Llama::into_int8`]). Module paths include the variant:
/// `layers.0.attn.query.F32.weight`.
#[derive(Module, Debug)]
pub enum Proj<B: Backend> {
    /// f32 weights.
    F32(Linear<B>),
    /// INT8 weights.
    Int8(QLinear<B>),
}

impl<B: ModelOps> Proj<B> {
    /// `x·W (+ b)`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Proj::F32(l) => rows(x, |x| linear(l, x)),
            Proj::Int8(q) => q.forward(x),
        }
    }
}

/// burn's `Linear` through Ember's [`dense`] product: `x·W (+ b)` for `x` of `[rows, in]` — on
/// CUDA the forward and backward products are cuBLAS GEMMs (`ember_kernels::dense`).
pub fn linear<B: ModelOps>(l: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let y = dense(x, l.weight.val());
    match &l.bias {
        Some(b) => y + b.val().unsqueeze(),
        None => y,
    }
}

impl<B: Backend> Proj<B> {
    fn into_int8(self, group_size: i64) -> Result<Self, String> {
        match self {
            Proj::F32(l) => {
                // groups of `group_size` where they divide the row, else one group per row
                let d_out = l.weight.val().dims()[1] as i64;
                let g = if group_size > 0 && d_out % group_size == 0 {
                    group_size
                } else {
                    -1
                };
                QLinear::from_linear(l, g)
                    .map(Proj::Int8)
                    .map_err(|e| e.to_string())
            }
            q => Ok(q),
        }
    }
}

/// Causal self-attention with rotary embeddings.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Wq.
    pub query: Proj<B>,
    /// Wk.
    pub key: Proj<B>,
    /// Wv.
    pub value: Proj<B>,
    /// Wo.
    pub output: Proj<B>,
    heads: usize,
}

/// SwiGLU MLP: `down(silu(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct SwiGlu<B: Backend> {
    /// Gate projection.
    pub gate: Proj<B>,
    /// Up projection.
    pub up: Proj<B>,
    /// Down projection.
    pub down: Proj<B>,
}

/// One pre-norm decoder block.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    attn_norm: RmsNorm<B>,
    /// Attention.
    pub attn: Attention<B>,
    mlp_norm: RmsNorm<B>,
    /// MLP.
    pub mlp: SwiGlu<B>,
}

/// The decoder.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    embed: Embedding<B>,
    /// Decoder blocks.
    pub layers: Vec<Block<B>>,
    norm: RmsNorm<B>,
    lm_head: Linear<B>,
    rope: RotaryEncoding<B>,
}

impl<B: ModelOps> Attention<B> {
    fn forward(&self, x: Tensor<B, 3>, rope: &RotaryEncoding<B>) -> Tensor<B, 3> {
        let [b, t, h] = x.dims();
        let d = h / self.heads;
        let heads = |y: Tensor<B, 3>| y.reshape([b, t, self.heads, d]);
        // rotated in f32 by burn's (f32) table, in the model's dtype after, heads first: one op
        let rotate = |y| rotary_heads(heads(y), rope.freq_complex.clone());
        let q = rotate(self.query.forward(x.clone()));
        let k = rotate(self.key.forward(x.clone()));
        let v = heads(self.value.forward(x)).swap_dims(1, 2);
        // softmax(QKᵀ/√d + causal mask)·V as one op: its backward recomputes the attention
        // matrix instead of keeping it (`ember_kernels::attention`)
        let out = causal_attention(q, k, v, 1.0 / (d as f64).sqrt())
            .swap_dims(1, 2)
            .reshape([b, t, h]);
        self.output.forward(out)
    }
}

impl<B: Backend> Block<B> {
    /// The block with its attention and MLP projections in INT8 (see [`Llama::into_int8`]).
    fn into_int8(self, group_size: i64) -> Result<Self, String> {
        let Attention {
            query,
            key,
            value,
            output,
            heads,
        } = self.attn;
        let SwiGlu { gate, up, down } = self.mlp;
        Ok(Block {
            attn_norm: self.attn_norm,
            attn: Attention {
                query: query.into_int8(group_size)?,
                key: key.into_int8(group_size)?,
                value: value.into_int8(group_size)?,
                output: output.into_int8(group_size)?,
                heads,
            },
            mlp_norm: self.mlp_norm,
            mlp: SwiGlu {
                gate: gate.into_int8(group_size)?,
                up: up.into_int8(group_size)?,
                down: down.into_int8(group_size)?,
            },
        })
    }
}

impl<B: ModelOps> Llama<B> {
    /// The same model with every attention and MLP projection stored in INT8 (`QLinear`, groups
    /// of `group_size` along a row where that divides the row, else one group per row), for
    /// Q-GaLore's INT8-weight mode. Train it
    /// with gradients from `ember_core::quantized_grads`.
    pub fn into_int8(mut self, group_size: i64) -> Result<Self, String> {
        self.layers = self
            .layers
            .into_iter()
            .map(|b| b.into_int8(group_size))
            .collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// Logits `[batch, seq, vocab]` of token ids `[batch, seq]`.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let mut x = self.embed.forward(tokens);
        for k in 0..self.layers.len() {
            x = self.block_forward(k, x);
        }
        rows(norm(&self.norm, x), |x| linear(&self.lm_head, x))
    }

    /// The id of the embedding's weight.
    pub fn embed_weight_id(&self) -> burn::module::ParamId {
        self.embed.weight.id
    }

    /// Decoder block `k` on hidden states `[batch, seq, hidden]`.
    pub fn block_forward(&self, k: usize, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let block = &self.layers[k];
        let h = block
            .attn
            .forward(norm(&block.attn_norm, x.clone()), &self.rope);
        let x = x + h;
        let y = norm(&block.mlp_norm, x.clone());
        let gate = block.mlp.gate.forward(y.clone());
        let up = block.mlp.up.forward(y);
        let dims = gate.dims();
        let inner = rows(gate, |g| {
            swiglu(g, up.reshape([dims[0] * dims[1], dims[2]]))
        });
        x + block.mlp.down.forward(inner)
    }

    /// Mean next-token cross-entropy (in f32) of `logits` `[batch, seq, vocab]` against
    /// `targets` `[batch, seq]`.
    fn cross_entropy(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        let [b, t, v] = logits.dims();
        burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(
                logits.reshape([b * t, v]).cast(DType::F32),
                targets.reshape([b * t]),
            )
    }

    /// Mean next-token cross-entropy of `tokens` `[batch, seq]`.
    pub fn loss(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        let [b, t] = tokens.dims();
        let logits = self.forward(tokens.clone().slice([0..b, 0..t - 1]));
        // the loss in f32, whatever the weights' dtype
        Self::cross_entropy(logits, tokens.slice([0..b, 1..t]))
    }

    /// The same model with every float parameter stored as `dtype` (e.g. `DType::BF16`; ids and
    /// `require_grad` kept). INT8 codes are left as they are.
    pub fn cast(self, dtype: DType) -> Self {
        self.map(&mut CastParams(dtype))
    }
}

/// Casts every float parameter of a module to a dtype (ids and `require_grad` kept).
pub struct CastParams(pub DType);

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        if tensor.dtype() == self.0 {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let grad = tensor.is_require_grad();
        let mut t = tensor.set_require_grad(false).cast(self.0);
        if grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Token ids `[batch, seq]` kept on the host: the batch of layer-wise training, which reads it
/// on two backends (the forward pass without autodiff, the recomputation with it).
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    /// Row-major ids.
    pub ids: Vec<i32>,
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence (inputs `0..seq−1`, targets `1..seq`).
    pub seq: usize,
}

impl Tokens {
    /// Synthetic but learnable batches: each sequence is an arithmetic progression
    /// `start + i·stride (mod vocab)` with a random start and one of 4 strides, so the loss falls
    /// as the model learns to continue it; batch `step` of a fixed stream.
    pub fn synthetic(batch: usize, seq: usize, vocab: usize, step: usize) -> Self {
        let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ (step as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut ids = Vec::with_capacity(batch * seq);
        for _ in 0..batch {
            let start = next() % vocab as u64;
            let stride = 1 + next() % 4;
            ids.extend((0..seq as u64).map(|i| ((start + i * stride) % vocab as u64) as i32));
        }
        Self { ids, batch, seq }
    }

    /// The ids as a `[batch, seq]` tensor on `device`.
    pub fn tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        Tensor::from_data(
            TensorData::new(self.ids.clone(), [self.batch, self.seq]),
            device,
        )
    }

    /// Reads a `[batch, seq]` id tensor back to the host.
    pub fn from_tensor<B: Backend>(t: Tensor<B, 2, Int>) -> Self {
        let [batch, seq] = t.dims();
        let ids = t
            .into_data()
            .convert::<i32>()
            .to_vec()
            .expect("i32 token ids");
        Self { ids, batch, seq }
    }

    fn slice<B: Backend>(
        &self,
        cols: std::ops::Range<usize>,
        device: &B::Device,
    ) -> Tensor<B, 2, Int> {
        self.tensor::<B>(device).slice([0..self.batch, cols])
    }
}

impl<B: ModelOps> ember_core::BlockModel<B> for Llama<B> {
    type Batch = Tokens;

    fn num_blocks(&self) -> usize {
        self.layers.len()
    }

    fn input(&self, batch: &Tokens) -> Tensor<B, 3> {
        let device = self.embed.weight.val().device();
        self.embed
            .forward(batch.slice::<B>(0..batch.seq - 1, &device))
    }

    fn block(&self, k: usize, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.block_forward(k, x)
    }

    fn output_loss(&self, x: Tensor<B, 3>, batch: &Tokens) -> Tensor<B, 1> {
        let device = x.device();
        let logits = rows(norm(&self.norm, x), |x| linear(&self.lm_head, x));
        Self::cross_entropy(logits, batch.slice::<B>(1..batch.seq, &device))
    }

    fn visit_stage<V: burn::module::ModuleVisitor<B>>(
        &self,
        stage: ember_core::Stage,
        visitor: &mut V,
    ) {
        // the same field names as the whole model's visit, so paths match
        let named = |name: &str, visitor: &mut V, f: &dyn Fn(&mut V)| {
            visitor.enter_module(name, "");
            f(visitor);
            visitor.exit_module(name, "");
        };
        match stage {
            ember_core::Stage::Input => named("embed", visitor, &|v| self.embed.visit(v)),
            ember_core::Stage::Block(k) => named("layers", visitor, &|v| {
                let key = k.to_string();
                v.enter_module(&key, "");
                self.layers[k].visit(v);
                v.exit_module(&key, "");
            }),
            ember_core::Stage::Output => {
                named("norm", visitor, &|v| self.norm.visit(v));
                named("lm_head", visitor, &|v| self.lm_head.visit(v));
            }
        }
    }
}

/// burn's `RmsNorm` module through Ember's [`rms_norm`] op (one kernel each way on the CubeCL
/// backends) on `x` viewed as rows.
pub fn norm<B: ModelOps, const D: usize>(n: &RmsNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    rows(x, |x| rms_norm(x, n.gamma.val(), n.epsilon))
}

/// Applies a linear map to `x` viewed as one matrix of rows (`[batch·seq, features]`). burn's
/// batched matmul against a broadcast weight differentiates into a `[batch, in, out]` weight
/// gradient before summing it; one 2-D product gives the `[in, out]` gradient directly (less
/// memory, one GEMM).
pub fn rows<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    f: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
) -> Tensor<B, D> {
    let dims = x.dims();
    let cols = dims[D - 1];
    let n: usize = dims[..D - 1].iter().product();
    let y = f(x.reshape([n, cols]));
    let mut out = dims;
    out[D - 1] = y.dims()[1];
    y.reshape(out)
}
