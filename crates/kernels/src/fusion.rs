//! [`EmberBackend`] for burn's operation-fusion backend, `Fusion<B>` — what `burn::backend::Cuda`
//! and `burn::backend::Wgpu` are with burn's default features: each op of the trait is registered
//! in the fusion stream as one **custom operation** that runs `B`'s own implementation (the fused
//! CubeCL kernels when `B` is a CubeCL backend) on the inner tensors. burn's fuser sees the op's
//! inputs and outputs and ends its element-wise fusion there, as for any custom kernel (the
//! pattern of burn's own custom ops, e.g. `burn-vision`'s connected components).
//!
//! The block's layer ops (`rms_norm`, `swiglu`, `rotary` and their backward passes) go through a
//! custom operation for f32 and bf16 inputs: their kernels write each output in its input's dtype.
//! Any other op goes through the custom operation when `B` runs fused kernels and every float
//! input is f32 — then its outputs are known before it runs: the shapes of the trait's contract and f32
//! (the dtype of every output of a fused kernel, and of the portable path on f32 inputs, which `B`
//! may still take for shapes its kernels do not cover). Otherwise the portable path runs on
//! `Fusion<B>` itself, where burn fuses its element-wise chains.

use std::marker::PhantomData;
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::{DType, Int, Shape, TensorPrimitive};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use crate::{
    portable, AdamCoefficients, Basis, Blockwise8, DynamicMaps, EmberBackend, ResidualUpdate,
    RoundingKey, Skip, UpdateCoefficients,
};

/// The skip flag's dtype, if any (it joins the op's float inputs).
fn skip_dtype<B: Backend>(skip: &Skip<B>) -> Vec<DType> {
    skip.iter().map(|s| s.dtype()).collect()
}

/// Appends the skip flag (if any) to a custom operation's inputs.
fn with_skip<B: FusionBackend>(
    mut inputs: Vec<FTensor<B>>,
    skip: Skip<Fusion<B>>,
) -> Vec<FTensor<B>> {
    inputs.extend(skip.map(fin));
    inputs
}

/// Splits a custom operation's inputs into the op's own and the skip flag (the last input when
/// `has_skip`).
fn split_skip<B: Backend>(mut inputs: Vec<Prim<B>>, has_skip: bool) -> (Vec<Prim<B>>, Skip<B>) {
    let skip = if has_skip {
        inputs.pop().map(|s| s.float())
    } else {
        None
    };
    (inputs, skip)
}

type FTensor<B> = FusionTensor<<B as FusionBackend>::FusionRuntime>;

/// An inner-backend tensor handed to or returned by a custom operation.
enum Prim<B: Backend> {
    Float(B::FloatTensorPrimitive),
    Int(B::IntTensorPrimitive),
}

impl<B: Backend> Prim<B> {
    fn float<const D: usize>(self) -> Tensor<B, D> {
        match self {
            Prim::Float(t) => Tensor::from_primitive(TensorPrimitive::Float(t)),
            Prim::Int(_) => unreachable!("declared float"),
        }
    }

    fn int<const D: usize>(self) -> Tensor<B, D, Int> {
        match self {
            Prim::Int(t) => Tensor::from_primitive(t),
            Prim::Float(_) => unreachable!("declared int"),
        }
    }

    fn from_float<const D: usize>(t: Tensor<B, D>) -> Self {
        Prim::Float(t.into_primitive().tensor())
    }

    fn from_int<const D: usize>(t: Tensor<B, D, Int>) -> Self {
        Prim::Int(t.into_primitive())
    }
}

type Body<B> = dyn Fn(Vec<Prim<B>>) -> Vec<Prim<B>> + Send + Sync;

/// The operation the fusion server runs: takes the inner tensors of `desc.inputs`, calls `body`,
/// registers its results under `desc.outputs`.
struct Custom<B: FusionBackend> {
    desc: CustomOpIr,
    body: Arc<Body<B>>,
    _backend: PhantomData<fn() -> B>,
}

impl<B: FusionBackend> std::fmt::Debug for Custom<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ember custom op {}", self.desc.id)
    }
}

fn is_int(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::I64
            | DType::I32
            | DType::I16
            | DType::I8
            | DType::U64
            | DType::U32
            | DType::U16
            | DType::U8
    )
}

impl<B: FusionBackend> Operation<B::FusionRuntime> for Custom<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let inputs = self
            .desc
            .inputs
            .iter()
            .map(|t| {
                if is_int(t.dtype) {
                    Prim::Int(handles.get_int_tensor::<B>(t))
                } else {
                    Prim::Float(handles.get_float_tensor::<B>(t))
                }
            })
            .collect();
        let outputs = (self.body)(inputs);
        assert_eq!(
            outputs.len(),
            self.desc.outputs.len(),
            "{}: outputs",
            self.desc.id
        );
        for (ir, out) in self.desc.outputs.iter().zip(outputs) {
            match out {
                Prim::Float(t) => handles.register_float_tensor::<B>(&ir.id, t),
                Prim::Int(t) => handles.register_int_tensor::<B>(&ir.id, t),
            }
        }
    }
}

/// Registers `body` as one custom operation on `inputs` (all on one device) with outputs of the
/// given shapes and dtypes; returns the (lazy) outputs.
fn custom<B: FusionBackend>(
    name: &'static str,
    inputs: Vec<FTensor<B>>,
    outputs: &[OutSpec],
    body: impl Fn(Vec<Prim<B>>) -> Vec<Prim<B>> + Send + Sync + 'static,
) -> Vec<FTensor<B>> {
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(inputs.iter());
    let outs: Vec<TensorIr> = outputs
        .iter()
        .map(|(shape, dtype)| {
            TensorIr::uninit(
                client.create_empty_handle(),
                Shape::from(shape.clone()),
                *dtype,
            )
        })
        .collect();
    let ins: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new(name, &ins, &outs);
    let op = Custom::<B> {
        desc: desc.clone(),
        body: Arc::new(body),
        _backend: PhantomData,
    };
    client.register(streams, OperationIr::Custom(desc), op)
}

fn fin<B: FusionBackend, const D: usize>(t: Tensor<Fusion<B>, D>) -> FTensor<B> {
    t.into_primitive().tensor()
}

fn iin<B: FusionBackend, const D: usize>(t: Tensor<Fusion<B>, D, Int>) -> FTensor<B> {
    t.into_primitive()
}

fn fout<B: FusionBackend, const D: usize>(t: FTensor<B>) -> Tensor<Fusion<B>, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn iout<B: FusionBackend, const D: usize>(t: FTensor<B>) -> Tensor<Fusion<B>, D, Int> {
    Tensor::from_primitive(t)
}

/// Whether the custom operation runs: `B` has fused kernels and every float input is f32.
fn fused<B: FusionBackend + EmberBackend>(dtypes: &[DType]) -> bool {
    B::fused_kernels() && dtypes.iter().all(|d| *d == DType::F32)
}

/// Whether a layer op ([`EmberBackend::rms_norm`], `swiglu`, `rotary` and their backward passes)
/// runs as a custom operation: `B` has fused kernels and every float input is f32 or bf16 (the
/// kernels compute in f32 and write each output in its input's dtype).
fn fused_layer<B: FusionBackend + EmberBackend>(dtypes: &[DType]) -> bool {
    B::fused_kernels() && dtypes.iter().all(|d| matches!(d, DType::F32 | DType::BF16))
}

fn f32_of(shape: &[usize]) -> OutSpec {
    (shape.to_vec(), DType::F32)
}

/// A custom operation's output: shape and dtype.
type OutSpec = (Vec<usize>, DType);

/// The (codes, absmax) tensors of blockwise 8-bit moments, their output specs, (len, block).
fn blockwise_in<B: FusionBackend>(
    q: Blockwise8<Fusion<B>>,
) -> ([FTensor<B>; 2], [OutSpec; 2], (usize, usize)) {
    let codes_shape = (q.codes.dims().to_vec(), q.codes.dtype());
    let absmax_shape = f32_of(&q.absmax.dims());
    (
        [iin(q.codes), fin(q.absmax)],
        [codes_shape, absmax_shape],
        (q.len, q.block),
    )
}

fn blockwise_out<B: FusionBackend>(
    codes: FTensor<B>,
    absmax: FTensor<B>,
    (len, block): (usize, usize),
) -> Blockwise8<Fusion<B>> {
    Blockwise8 {
        codes: iout(codes),
        absmax: fout(absmax),
        len,
        block,
    }
}

fn inner_blockwise<B: Backend>(
    codes: Prim<B>,
    absmax: Prim<B>,
    (len, block): (usize, usize),
) -> Blockwise8<B> {
    Blockwise8 {
        codes: codes.int(),
        absmax: absmax.float(),
        len,
        block,
    }
}

/// What an 8-bit Adam step returns: `N` or the new weight (f32), and the new moments.
type Adam8Out<B> = (Tensor<B, 2>, Blockwise8<B>, Blockwise8<B>);

/// An Adam step with blockwise 8-bit moments as one custom operation: `leading` float inputs
/// (the gradient, or the weight and the gradient), the moments and the maps in; an f32 tensor of
/// `shape` and the new moments out. `step` runs the inner backend's kernel on the leading inputs.
fn adam_8bit_op<B: FusionBackend + EmberBackend>(
    name: &'static str,
    leading: Vec<FTensor<B>>,
    shape: &[usize],
    m: Blockwise8<Fusion<B>>,
    v: Blockwise8<Fusion<B>>,
    maps: &DynamicMaps<Fusion<B>>,
    step: impl Fn(Vec<Prim<B>>, Blockwise8<B>, Blockwise8<B>, &DynamicMaps<B>) -> Adam8Out<B>
        + Send
        + Sync
        + 'static,
) -> Adam8Out<Fusion<B>> {
    let lead = leading.len();
    let ([mc, ma], [mcs, mas], mlen) = blockwise_in(m);
    let ([vc, va], [vcs, vas], vlen) = blockwise_in(v);
    let mut inputs = leading;
    inputs.extend([
        mc,
        ma,
        vc,
        va,
        fin(maps.signed.clone()),
        fin(maps.unsigned.clone()),
    ]);
    let outs = [f32_of(shape), mcs, mas, vcs, vas];
    let out = custom::<B>(name, inputs, &outs, move |mut i| {
        let rest = i.split_off(lead);
        let [mc, ma, vc, va, s, u]: [Prim<B>; 6] = vec_array(rest);
        let maps = DynamicMaps {
            signed: s.float(),
            unsigned: u.float(),
        };
        let (x, m, v) = step(
            i,
            inner_blockwise(mc, ma, mlen),
            inner_blockwise(vc, va, vlen),
            &maps,
        );
        vec![
            Prim::from_float(x),
            Prim::from_int(m.codes),
            Prim::from_float(m.absmax),
            Prim::from_int(v.codes),
            Prim::from_float(v.absmax),
        ]
    });
    let [x, mc, ma, vc, va]: [FTensor<B>; 5] = vec_array(out);
    (
        fout(x),
        blockwise_out(mc, ma, mlen),
        blockwise_out(vc, va, vlen),
    )
}

impl<B: FusionBackend + EmberBackend> EmberBackend for Fusion<B> {
    fn fused_kernels() -> bool {
        B::fused_kernels()
    }

    fn projection_matmul(a: Tensor<Self, 2>, b: Tensor<Self, 2>) -> Tensor<Self, 2> {
        // any float dtypes: the inner backend's product takes them (an f32 product of mixed
        // operands, else the operands' dtype)
        let floats = [a.dtype(), b.dtype()]
            .iter()
            .all(|d| matches!(d, DType::F32 | DType::BF16 | DType::F16));
        if !(B::fused_kernels() && floats) {
            return portable::projection_matmul(a, b);
        }
        let shape = [a.dims()[0], b.dims()[1]].to_vec();
        let dtype = if a.dtype() == b.dtype() {
            a.dtype()
        } else {
            DType::F32
        };
        let mut out = custom::<B>(
            "ember.projection_matmul",
            vec![fin(a), fin(b)],
            &[(shape, dtype)],
            move |i| {
                let [a, b]: [Prim<B>; 2] = vec_array(i);
                vec![Prim::from_float(B::projection_matmul(a.float(), b.float()))]
            },
        );
        fout(out.pop().expect("product"))
    }

    fn subspace_adam(
        r: Tensor<Self, 2>,
        m: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        c: AdamCoefficients,
        skip: Skip<Self>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 2>) {
        let mut dtypes = vec![r.dtype(), m.dtype(), v.dtype()];
        dtypes.extend(skip_dtype(&skip));
        if !fused::<B>(&dtypes) {
            return portable::subspace_adam(r, m, v, c, skip);
        }
        let shape = r.dims().to_vec();
        let has_skip = skip.is_some();
        let mut out = custom::<B>(
            "ember.subspace_adam",
            with_skip(vec![fin(r), fin(m), fin(v)], skip),
            &[f32_of(&shape), f32_of(&shape), f32_of(&shape)],
            move |i| {
                let (i, skip) = split_skip(i, has_skip);
                let [r, m, v]: [Prim<B>; 3] = vec_array(i);
                let (n, m, v) = B::subspace_adam(r.float(), m.float(), v.float(), c, skip);
                vec![
                    Prim::from_float(n),
                    Prim::from_float(m),
                    Prim::from_float(v),
                ]
            },
        )
        .into_iter();
        let mut next = || fout(out.next().expect("output"));
        (next(), next(), next())
    }

    fn adam_8bit(
        r: Tensor<Self, 2>,
        m: Blockwise8<Self>,
        v: Blockwise8<Self>,
        maps: &DynamicMaps<Self>,
        c: AdamCoefficients,
        skip: Skip<Self>,
    ) -> (Tensor<Self, 2>, Blockwise8<Self>, Blockwise8<Self>) {
        let mut dtypes = vec![
            r.dtype(),
            m.absmax.dtype(),
            v.absmax.dtype(),
            maps.signed.dtype(),
            maps.unsigned.dtype(),
        ];
        dtypes.extend(skip_dtype(&skip));
        if !fused::<B>(&dtypes) {
            return portable::adam_8bit(r, m, v, maps, c, skip);
        }
        let shape = r.dims().to_vec();
        let has_skip = skip.is_some();
        adam_8bit_op::<B>(
            "ember.adam_8bit",
            with_skip(vec![fin(r)], skip),
            &shape,
            m,
            v,
            maps,
            move |i, m, v, maps| {
                let (i, skip) = split_skip(i, has_skip);
                let [r]: [Prim<B>; 1] = vec_array(i);
                B::adam_8bit(r.float(), m, v, maps, c, skip)
            },
        )
    }

    fn projected_update(
        w: Tensor<Self, 2>,
        g: Tensor<Self, 2>,
        basis: &Basis<Self>,
        n: Tensor<Self, 2>,
        r: Tensor<Self, 2>,
        coef: UpdateCoefficients,
        residual: ResidualUpdate,
        zeta: Option<Tensor<Self, 1>>,
        skip: Skip<Self>,
    ) -> (Tensor<Self, 2>, Option<Tensor<Self, 1>>) {
        let mut dtypes = vec![w.dtype(), g.dtype(), basis.p.dtype(), n.dtype(), r.dtype()];
        dtypes.extend(zeta.as_ref().map(|z| z.dtype()));
        dtypes.extend(skip_dtype(&skip));
        if !fused::<B>(&dtypes) {
            return portable::projected_update(w, g, basis, n, r, coef, residual, zeta, skip);
        }
        let has_skip = skip.is_some();
        let shape = w.dims().to_vec();
        let left = basis.left;
        let fira = matches!(residual, ResidualUpdate::Fira { .. });
        let has_zeta = zeta.is_some();
        let mut inputs = vec![fin(w), fin(g), fin(basis.p.clone()), fin(n), fin(r)];
        inputs.extend(zeta.map(fin));
        let inputs = with_skip(inputs, skip);
        let mut outs = vec![f32_of(&shape)];
        if fira {
            outs.push(f32_of(&[1]));
        }
        let out = custom::<B>("ember.projected_update", inputs, &outs, move |i| {
            let (i, skip) = split_skip(i, has_skip);
            let mut i = i.into_iter();
            let mut next = || i.next().expect("input");
            let (w, g, p, n, r) = (next(), next(), next(), next(), next());
            let zeta = has_zeta.then(|| next().float());
            let basis = Basis { p: p.float(), left };
            let (w, zeta) = B::projected_update(
                w.float(),
                g.float(),
                &basis,
                n.float(),
                r.float(),
                coef,
                residual,
                zeta,
                skip,
            );
            let mut out = vec![Prim::from_float(w)];
            if fira {
                out.push(Prim::from_float(zeta.expect("Fira's norm")));
            }
            out
        });
        let mut out = out.into_iter();
        let w = fout(out.next().expect("weight"));
        (w, out.next().map(fout))
    }

    fn adam_full_step(
        w: Tensor<Self, 2>,
        g: Tensor<Self, 2>,
        m: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        adam: AdamCoefficients,
        coef: UpdateCoefficients,
        skip: Skip<Self>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 2>) {
        let mut dtypes = vec![w.dtype(), g.dtype(), m.dtype(), v.dtype()];
        dtypes.extend(skip_dtype(&skip));
        if !fused::<B>(&dtypes) {
            return portable::adam_full_step(w, g, m, v, adam, coef, skip);
        }
        let shape = w.dims().to_vec();
        let has_skip = skip.is_some();
        let out = custom::<B>(
            "ember.adam_full_step",
            with_skip(vec![fin(w), fin(g), fin(m), fin(v)], skip),
            &[f32_of(&shape), f32_of(&shape), f32_of(&shape)],
            move |i| {
                let (i, skip) = split_skip(i, has_skip);
                let [w, g, m, v]: [Prim<B>; 4] = vec_array(i);
                let (w, m, v) =
                    B::adam_full_step(w.float(), g.float(), m.float(), v.float(), adam, coef, skip);
                vec![
                    Prim::from_float(w),
                    Prim::from_float(m),
                    Prim::from_float(v),
                ]
            },
        );
        let [w, m, v]: [FTensor<B>; 3] = vec_array(out);
        (fout(w), fout(m), fout(v))
    }

    fn adam_full_step_8bit(
        w: Tensor<Self, 2>,
        g: Tensor<Self, 2>,
        m: Blockwise8<Self>,
        v: Blockwise8<Self>,
        maps: &DynamicMaps<Self>,
        adam: AdamCoefficients,
        coef: UpdateCoefficients,
        skip: Skip<Self>,
    ) -> (Tensor<Self, 2>, Blockwise8<Self>, Blockwise8<Self>) {
        let mut dtypes = vec![
            w.dtype(),
            g.dtype(),
            m.absmax.dtype(),
            v.absmax.dtype(),
            maps.signed.dtype(),
            maps.unsigned.dtype(),
        ];
        dtypes.extend(skip_dtype(&skip));
        if !fused::<B>(&dtypes) {
            return portable::adam_full_step_8bit(w, g, m, v, maps, adam, coef, skip);
        }
        let shape = w.dims().to_vec();
        let has_skip = skip.is_some();
        adam_8bit_op::<B>(
            "ember.adam_full_step_8bit",
            with_skip(vec![fin(w), fin(g)], skip),
            &shape,
            m,
            v,
            maps,
            move |i, m, v, maps| {
                let (i, skip) = split_skip(i, has_skip);
                let [w, g]: [Prim<B>; 2] = vec_array(i);
                B::adam_full_step_8bit(w.float(), g.float(), m, v, maps, adam, coef, skip)
            },
        )
    }

    fn state_free_step(
        w: Tensor<Self, 2>,
        g: Tensor<Self, 2>,
        rule: ResidualUpdate,
        coef: UpdateCoefficients,
        skip: Skip<Self>,
    ) -> Tensor<Self, 2> {
        let mut dtypes = vec![w.dtype(), g.dtype()];
        dtypes.extend(skip_dtype(&skip));
        if !fused::<B>(&dtypes) {
            return portable::state_free_step(w, g, rule, coef, skip);
        }
        let shape = w.dims().to_vec();
        let has_skip = skip.is_some();
        let out = custom::<B>(
            "ember.state_free_step",
            with_skip(vec![fin(w), fin(g)], skip),
            &[f32_of(&shape)],
            move |i| {
                let (i, skip) = split_skip(i, has_skip);
                let [w, g]: [Prim<B>; 2] = vec_array(i);
                vec![Prim::from_float(B::state_free_step(
                    w.float(),
                    g.float(),
                    rule,
                    coef,
                    skip,
                ))]
            },
        );
        let [w]: [FTensor<B>; 1] = vec_array(out);
        fout(w)
    }

    fn dequantize_packed(
        packed: Tensor<Self, 1, Int>,
        scales: Tensor<Self, 1>,
        zeros: Tensor<Self, 1>,
        bits: u32,
        group: usize,
        rows: usize,
        cols: usize,
    ) -> Tensor<Self, 2> {
        if !fused::<B>(&[scales.dtype(), zeros.dtype()]) {
            return portable::dequantize_packed(packed, scales, zeros, bits, group, rows, cols);
        }
        let out = custom::<B>(
            "ember.dequantize_packed",
            vec![iin(packed), fin(scales), fin(zeros)],
            &[f32_of(&[rows, cols])],
            move |i| {
                let [packed, scales, zeros]: [Prim<B>; 3] = vec_array(i);
                vec![Prim::from_float(B::dequantize_packed(
                    packed.int(),
                    scales.float(),
                    zeros.float(),
                    bits,
                    group,
                    rows,
                    cols,
                ))]
            },
        );
        let [x]: [FTensor<B>; 1] = vec_array(out);
        fout(x)
    }

    fn quantize_int8(
        w: Tensor<Self, 2>,
        group: usize,
        key: Option<RoundingKey>,
    ) -> (Tensor<Self, 2, Int>, Tensor<Self, 3>) {
        let [rows, cols] = w.dims();
        // the shapes of the fused kernel's outputs (other groupings take the portable path)
        if !fused::<B>(&[w.dtype()])
            || group == 0
            || !group.is_multiple_of(4)
            || !cols.is_multiple_of(group)
        {
            return portable::quantize_int8(w, group, key);
        }
        // the codes' dtype is the inner backend's int type (what both its paths return)
        let int =
            <<B as burn::tensor::backend::BackendTypes>::IntElem as burn::tensor::Element>::dtype();
        let out = custom::<B>(
            "ember.quantize_int8",
            vec![fin(w)],
            &[
                (vec![rows, cols / 4], int),
                f32_of(&[rows, cols / group, 2]),
            ],
            move |i| {
                let [w]: [Prim<B>; 1] = vec_array(i);
                let (codes, qparams) = B::quantize_int8(w.float(), group, key);
                vec![Prim::from_int(codes), Prim::from_float(qparams)]
            },
        );
        let [codes, qparams]: [FTensor<B>; 2] = vec_array(out);
        (iout(codes), fout(qparams))
    }

    fn non_finite_flags(grads: Vec<Tensor<Self, 2>>, device: &Device<Self>) -> Tensor<Self, 1> {
        let dtypes: Vec<DType> = grads.iter().map(|g| g.dtype()).collect();
        if grads.is_empty() || !fused::<B>(&dtypes) || grads.iter().any(|g| g.device() != *device) {
            return portable::non_finite_flags(grads, device);
        }
        let count = grads.len();
        let out = custom::<B>(
            "ember.non_finite_flags",
            grads.into_iter().map(fin).collect(),
            &[f32_of(&[count])],
            move |i| {
                let grads: Vec<Tensor<B, 2>> = i.into_iter().map(|g| g.float()).collect();
                let device = grads[0].device();
                vec![Prim::from_float(B::non_finite_flags(grads, &device))]
            },
        );
        let [flags]: [FTensor<B>; 1] = vec_array(out);
        fout(flags)
    }

    fn rms_norm(x: Tensor<Self, 2>, gamma: Tensor<Self, 1>, epsilon: f64) -> Tensor<Self, 2> {
        if !fused_layer::<B>(&[x.dtype(), gamma.dtype()]) {
            return crate::norm::composed(x, gamma, epsilon);
        }
        let spec = (x.dims().to_vec(), x.dtype());
        let out = custom::<B>(
            "ember.rms_norm",
            vec![fin(x), fin(gamma)],
            &[spec],
            move |i| {
                let [x, gamma]: [Prim<B>; 2] = vec_array(i);
                vec![Prim::from_float(B::rms_norm(
                    x.float(),
                    gamma.float(),
                    epsilon,
                ))]
            },
        );
        let [y]: [FTensor<B>; 1] = vec_array(out);
        fout(y)
    }

    fn rms_norm_backward(
        x: Tensor<Self, 2>,
        gamma: Tensor<Self, 1>,
        dy: Tensor<Self, 2>,
        epsilon: f64,
    ) -> (Tensor<Self, 2>, Tensor<Self, 1>) {
        if !fused_layer::<B>(&[x.dtype(), gamma.dtype(), dy.dtype()]) {
            return crate::norm::composed_backward(x, gamma, dy, epsilon);
        }
        let specs = [
            (x.dims().to_vec(), x.dtype()),
            (gamma.dims().to_vec(), gamma.dtype()),
        ];
        let out = custom::<B>(
            "ember.rms_norm_backward",
            vec![fin(x), fin(gamma), fin(dy)],
            &specs,
            move |i| {
                let [x, gamma, dy]: [Prim<B>; 3] = vec_array(i);
                let (dx, dgamma) =
                    B::rms_norm_backward(x.float(), gamma.float(), dy.float(), epsilon);
                vec![Prim::from_float(dx), Prim::from_float(dgamma)]
            },
        );
        let [dx, dgamma]: [FTensor<B>; 2] = vec_array(out);
        (fout(dx), fout(dgamma))
    }

    fn swiglu(g: Tensor<Self, 2>, u: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if !fused_layer::<B>(&[g.dtype(), u.dtype()]) {
            return crate::swiglu::composed(g, u);
        }
        let spec = (g.dims().to_vec(), g.dtype());
        let out = custom::<B>("ember.swiglu", vec![fin(g), fin(u)], &[spec], move |i| {
            let [g, u]: [Prim<B>; 2] = vec_array(i);
            vec![Prim::from_float(B::swiglu(g.float(), u.float()))]
        });
        let [z]: [FTensor<B>; 1] = vec_array(out);
        fout(z)
    }

    fn swiglu_backward(
        g: Tensor<Self, 2>,
        u: Tensor<Self, 2>,
        dz: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        if !fused_layer::<B>(&[g.dtype(), u.dtype(), dz.dtype()]) {
            return crate::swiglu::composed_backward(g, u, dz);
        }
        let specs = [
            (g.dims().to_vec(), g.dtype()),
            (u.dims().to_vec(), u.dtype()),
        ];
        let out = custom::<B>(
            "ember.swiglu_backward",
            vec![fin(g), fin(u), fin(dz)],
            &specs,
            move |i| {
                let [g, u, dz]: [Prim<B>; 3] = vec_array(i);
                let (dg, du) = B::swiglu_backward(g.float(), u.float(), dz.float());
                vec![Prim::from_float(dg), Prim::from_float(du)]
            },
        );
        let [dg, du]: [FTensor<B>; 2] = vec_array(out);
        (fout(dg), fout(du))
    }

    fn causal_softmax(s: Tensor<Self, 4>, scale: f64) -> Tensor<Self, 4> {
        if !fused_layer::<B>(&[s.dtype()]) {
            return crate::attention::composed_softmax(s, scale);
        }
        let spec = (s.dims().to_vec(), s.dtype());
        let out = custom::<B>("ember.causal_softmax", vec![fin(s)], &[spec], move |i| {
            let [s]: [Prim<B>; 1] = vec_array(i);
            vec![Prim::from_float(B::causal_softmax(s.float(), scale))]
        });
        let [p]: [FTensor<B>; 1] = vec_array(out);
        fout(p)
    }

    fn causal_softmax_backward(
        p: Tensor<Self, 4>,
        dp: Tensor<Self, 4>,
        scale: f64,
    ) -> Tensor<Self, 4> {
        if !fused_layer::<B>(&[p.dtype(), dp.dtype()]) || p.dims() != dp.dims() {
            return crate::attention::composed_softmax_backward(p, dp, scale);
        }
        let spec = (p.dims().to_vec(), p.dtype());
        let out = custom::<B>(
            "ember.causal_softmax_backward",
            vec![fin(p), fin(dp)],
            &[spec],
            move |i| {
                let [p, dp]: [Prim<B>; 2] = vec_array(i);
                vec![Prim::from_float(B::causal_softmax_backward(
                    p.float(),
                    dp.float(),
                    scale,
                ))]
            },
        );
        let [ds]: [FTensor<B>; 1] = vec_array(out);
        fout(ds)
    }

    fn rotary(
        x: Tensor<Self, 4>,
        freq: Tensor<Self, 3>,
        seq_axis: usize,
        inverse: bool,
    ) -> Tensor<Self, 4> {
        if !fused_layer::<B>(&[x.dtype(), freq.dtype()]) {
            return crate::rotary::composed(x, freq, seq_axis, inverse);
        }
        let spec = (x.dims().to_vec(), x.dtype());
        let out = custom::<B>("ember.rotary", vec![fin(x), fin(freq)], &[spec], move |i| {
            let [x, freq]: [Prim<B>; 2] = vec_array(i);
            vec![Prim::from_float(B::rotary(
                x.float(),
                freq.float(),
                seq_axis,
                inverse,
            ))]
        });
        let [y]: [FTensor<B>; 1] = vec_array(out);
        fout(y)
    }

    fn dct_scores(g: Tensor<Self, 2>, q: Tensor<Self, 2>, left: bool) -> Tensor<Self, 1> {
        if !fused::<B>(&[g.dtype(), q.dtype()]) {
            return portable::dct_scores(g, q, left);
        }
        // left: rows of Qᵀ·G, right: columns of G·Q — one per column of Q
        let count = q.dims()[1];
        let out = custom::<B>(
            "ember.dct_scores",
            vec![fin(g), fin(q)],
            &[f32_of(&[count])],
            move |i| {
                let [g, q]: [Prim<B>; 2] = vec_array(i);
                vec![Prim::from_float(B::dct_scores(g.float(), q.float(), left))]
            },
        );
        let [scores]: [FTensor<B>; 1] = vec_array(out);
        fout(scores)
    }
}

/// A vector of known length as an array (the inputs and outputs of a custom op).
fn vec_array<T, const N: usize>(v: Vec<T>) -> [T; N] {
    let len = v.len();
    v.try_into()
        .unwrap_or_else(|_| panic!("expected {N} tensors, got {len}"))
}
