//! The LLaMA decoder as a burn-train model.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use ember_llama::Llama;

use crate::*;

/// The LLaMA decoder as a burn-train model.
#[derive(Module, Debug)]
pub struct LanguageModel<B: Backend> {
    /// The decoder (targets live under `…attn…` and `…mlp…`).
    pub llama: Llama<B>,
    /// Which run this model belongs to (keys its telemetry; not part of the weights).
    pub run_tag: u64,
}

impl<B: ember_llama::ModelOps> LanguageModel<B> {
    /// Next-token cross-entropy with the logits and targets (for burn-train's metrics).
    pub fn forward_classification(&self, batch: TokenBatch<B>) -> ClassificationOutput<B> {
        let [b, t] = batch.tokens.dims();
        let logits = self
            .llama
            .forward(batch.tokens.clone().slice([0..b, 0..t - 1]));
        let v = logits.dims()[2];
        // the loss in f32 whatever the weights' dtype
        let logits = logits
            .reshape([b * (t - 1), v])
            .cast(burn::tensor::DType::F32);
        let targets = batch.tokens.slice([0..b, 1..t]).reshape([b * (t - 1)]);
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), targets.clone());
        ClassificationOutput::new(loss, logits, targets)
    }
}

impl<B: AutodiffBackend + ember_llama::ModelOps> TrainStep for LanguageModel<B> {
    type Input = TokenBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: TokenBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        telemetry::on_step(self.run_tag, self);
        let out = self.forward_classification(batch);
        // `quantized_grads` = burn's `from_grads` plus the gradients of INT8 (`QLinear`) weights
        let grads = ember_core::quantized_grads(out.loss.backward(), self);
        TrainOutput { grads, item: out }
    }
}

impl<B: ember_llama::ModelOps> InferenceStep for LanguageModel<B> {
    type Input = TokenBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: TokenBatch<B>) -> ClassificationOutput<B> {
        self.forward_classification(batch)
    }
}
