//! A soak run: one optimizer for many steps on the LLaMA model, with a projector refresh every
//! 10 steps, watching what must not drift: the heap's peak per step (measured by the counting
//! allocator, `crate::heap`), the orthonormality of every fresh projector, non-finite
//! gradients, the loss.

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use ember_core::{EmberBackend, NonFinitePolicy, ProjectorState};
use ember_llama::{Llama, LlamaShape, Tokens};
use serde::{Deserialize, Serialize};

use crate::estimate::Settings;

/// What a soak run saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakResult {
    /// Method.
    pub optimizer: String,
    /// Steps run.
    pub steps: usize,
    /// Peak heap bytes of the step at 10% of the run (counting allocator; `None` without it).
    pub peak_heap_first: Option<usize>,
    /// Peak heap bytes of the last step.
    pub peak_heap_last: Option<usize>,
    /// `(last − first) / first`.
    pub peak_heap_growth: Option<f64>,
    /// Of the last step's peak, the bytes live in page-aligned allocations: faer's per-thread
    /// GEMM workspaces, address space reserved at a thread's first matrix product and mostly
    /// never written (`crate::heap`).
    #[serde(default)]
    pub workspace_heap_last: Option<usize>,
    /// Largest `max |PᵀP − I|` (entries) over every refresh of every orthonormal projector
    /// (SVD, device range, DCT columns); `None` for methods whose projector is not orthonormal
    /// (Q-GaLore's INT4 projector) or that have none (AdamW).
    pub max_orthonormality_error: Option<f64>,
    /// Projector refreshes checked.
    pub refreshes: usize,
    /// Steps skipped for a non-finite gradient.
    pub non_finite_steps: usize,
    /// Loss of the first step.
    pub loss_first: f32,
    /// Loss of the last step.
    pub loss_last: f32,
    /// Mean loss of the last 10% of the steps.
    pub loss_tail_mean: f32,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// `max |PᵀP − I|` of a dense projector (columns of a left one, rows of a right one).
fn orthonormality_error<B: Backend>(p: &ProjectorState<B>) -> Option<f64> {
    let (gram, r) = match p {
        ProjectorState::Left(p) => {
            let r = p.dims()[1];
            (p.clone().transpose().matmul(p.clone()), r)
        }
        ProjectorState::Right(p) => {
            let r = p.dims()[0];
            (p.clone().matmul(p.clone().transpose()), r)
        }
        _ => return None,
    };
    let eye = Tensor::<B, 2>::eye(r, &gram.device());
    Some((gram - eye).abs().max().into_scalar().elem::<f64>())
}

/// Runs `steps` steps of `s` on `shape` (batch `batch` × `seq` tokens, refresh gap 10).
pub fn soak<B: AutodiffBackend + ember_llama::ModelOps>(
    shape: &LlamaShape,
    s: &Settings,
    steps: usize,
    (batch, seq): (usize, usize),
    device: &B::Device,
    progress: bool,
) -> Result<SoakResult, String>
where
    B::InnerBackend: EmberBackend,
    Llama<B>: AutodiffModule<B, InnerModule = Llama<B::InnerBackend>>,
{
    B::seed(device, 0);
    let mut model = shape.init::<B>(device);
    let mut optim = crate::measure::recipe(s, vec!["attn".into(), "mlp".into()], 10, None)
        .with_non_finite(NonFinitePolicy::SkipStep)
        .build::<B, Llama<B>>()?;
    let orthonormal = s.method != crate::estimate::Method::Qgalore;
    let bar = crate::progress::Progress::new(progress, s.method.name(), steps);
    let first_at = (steps / 10).max(1) - 1;
    let (mut peak_first, mut peak_last, mut workspaces) = (None, None, None);
    let (mut worst, mut refreshes) = (None::<f64>, 0usize);
    let mut seen: std::collections::HashMap<burn::module::ParamId, usize> = Default::default();
    let (mut loss_first, mut loss_last, mut tail) = (f32::NAN, f32::NAN, vec![]);
    let start = std::time::Instant::now();
    for k in 0..steps {
        crate::heap::reset_peak();
        let tokens = Tokens::synthetic(batch, seq, shape.vocab_size, k % 64).tensor(device);
        let loss = model.loss(tokens);
        let grads = ember_core::quantized_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
        let l = loss.into_scalar().elem::<f32>();
        let peak = crate::heap::peak();
        if k == first_at {
            peak_first = peak;
        }
        if k + 1 == steps {
            peak_last = peak;
            workspaces = crate::heap::page_aligned_live();
        }
        if k == 0 {
            loss_first = l;
        }
        loss_last = l;
        if k >= steps - (steps / 10).max(1) {
            tail.push(l);
        }
        // every fresh projector (its refresh count moved)
        if orthonormal {
            for (_, id, _, target) in optim.plan(&model) {
                if !target {
                    continue;
                }
                let Some(state) = optim.param_state(id) else {
                    continue;
                };
                let n = state.refresh.refreshes;
                if seen.insert(id, n) != Some(n) {
                    let p = state.projector.materialize(optim.shared_bases());
                    if let Some(e) = orthonormality_error(&p) {
                        refreshes += 1;
                        worst = Some(worst.map_or(e, |w| w.max(e)));
                    }
                }
            }
        }
        if k % 50 == 0 || k + 1 == steps {
            bar.step(k, &format!("loss {l:.3}"));
        }
    }
    bar.finish();
    Ok(SoakResult {
        optimizer: s.method.name().into(),
        steps,
        peak_heap_growth: peak_first
            .zip(peak_last)
            .map(|(a, b)| (b as f64 - a as f64) / a as f64),
        peak_heap_first: peak_first,
        peak_heap_last: peak_last,
        workspace_heap_last: workspaces,
        max_orthonormality_error: worst,
        refreshes,
        non_finite_steps: optim.skipped_steps(),
        loss_first,
        loss_last,
        loss_tail_mean: tail.iter().sum::<f32>() / tail.len().max(1) as f32,
        seconds: start.elapsed().as_secs_f64(),
    })
}
