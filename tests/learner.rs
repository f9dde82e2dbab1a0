//! Ember optimizers are drop-in for burn-train's `Learner` (`SupervisedTraining`): the same code
//! that takes `AdamConfig::new().init()` takes `GaloreConfig::new().init()`.

mod common;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::train::metric::LossMetric;
use burn::train::{
    InferenceStep, Learner, RegressionOutput, SupervisedTraining, TrainOutput, TrainStep,
};
use common::*;
use ember::galore::GaloreConfig;

#[derive(Clone, Debug)]
pub struct Item {
    x: Vec<f32>,
    y: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct Batch<B: Backend> {
    x: Tensor<B, 2>,
    y: Tensor<B, 2>,
}

#[derive(Clone)]
struct ItemBatcher;

impl<B: Backend> Batcher<B, Item, Batch<B>> for ItemBatcher {
    fn batch(&self, items: Vec<Item>, device: &B::Device) -> Batch<B> {
        let n = items.len();
        let x: Vec<f32> = items.iter().flat_map(|i| i.x.clone()).collect();
        let y: Vec<f32> = items.iter().flat_map(|i| i.y.clone()).collect();
        Batch {
            x: Tensor::from_data(TensorData::new(x, [n, D_IN]), device),
            y: Tensor::from_data(TensorData::new(y, [n, D_OUT]), device),
        }
    }
}

impl<B: AutodiffBackend> TrainStep for Tiny<B> {
    type Input = Batch<B>;
    type Output = RegressionOutput<B>;

    fn step(&self, batch: Batch<B>) -> TrainOutput<RegressionOutput<B>> {
        let out = self.regress(batch);
        TrainOutput::new(self, out.loss.backward(), out)
    }
}

impl<B: Backend> InferenceStep for Tiny<B> {
    type Input = Batch<B>;
    type Output = RegressionOutput<B>;

    fn step(&self, batch: Batch<B>) -> RegressionOutput<B> {
        self.regress(batch)
    }
}

trait Regress<B: Backend> {
    fn regress(&self, batch: Batch<B>) -> RegressionOutput<B>;
}

impl<B: Backend> Regress<B> for Tiny<B> {
    fn regress(&self, batch: Batch<B>) -> RegressionOutput<B> {
        let output = self.forward(batch.x);
        let loss = (output.clone() - batch.y.clone()).powi_scalar(2).mean();
        RegressionOutput::new(loss, output, batch.y)
    }
}

fn items(n: usize, seed: u64) -> Vec<Item> {
    // a fixed linear teacher plus a deterministic input per item
    let teacher = values(D_IN * D_OUT, 99);
    (0..n)
        .map(|i| {
            let x = values(D_IN, seed + i as u64);
            let y = (0..D_OUT)
                .map(|o| (0..D_IN).map(|j| x[j] * teacher[j * D_OUT + o]).sum())
                .collect();
            Item { x, y }
        })
        .collect()
}

#[test]
fn galore_trains_through_burn_learner() {
    let device = Default::default();
    let dir = std::env::temp_dir().join(format!("ember-learner-{}", std::process::id()));
    let train = DataLoaderBuilder::new(ItemBatcher)
        .batch_size(BATCH)
        .build(InMemDataset::new(items(64, 0)));
    let valid = DataLoaderBuilder::new(ItemBatcher)
        .batch_size(BATCH)
        .build(InMemDataset::new(items(16, 10_000)));

    let model = Tiny::<B>::new(&device);
    let loss_before = {
        let b: Batch<B> = ItemBatcher.batch(items(BATCH, 10_000), &device);
        model.regress(b).loss.into_scalar()
    };
    let optim = GaloreConfig::new()
        .with_rank(4)
        .with_update_proj_gap(4)
        .with_targets(vec!["mlp".into()])
        .init();
    let training = SupervisedTraining::new(&dir, train, valid)
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .with_application_logger(None)
        .num_epochs(3);
    let result = training.launch(Learner::new(model, optim, 1e-2));
    let trained = result.model;

    let b: Batch<burn::backend::Flex> = ItemBatcher.batch(items(BATCH, 10_000), &device);
    let loss_after = trained.regress(b).loss.into_scalar();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        loss_after < 0.8 * loss_before,
        "validation loss {loss_before} -> {loss_after}"
    );
}
