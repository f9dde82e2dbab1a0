//! Parameter groups and gradient clipping.
//!
//! An [`EmberOptimizer`](crate::EmberOptimizer) holds an ordered list of [`Group`]s and a default
//! group. A parameter belongs to the **first** group whose selector ([`Targets`]: path patterns,
//! globs, ids, predicates such as `:1d`, `:norm`, `:bias`) selects it, else to the default group.
//! Within its group, a 2-D parameter runs the group's pipeline ([`Group::engine`]); any other
//! shape runs the group's AdamW ([`Group::dense`], the same hyperparameters without projection).
//! The single-method configs (`GaloreConfig`, …) are one group (their `targets`) plus the
//! default group (the method's AdamW); `ember::groups` builds several.
//!
//! Each group scales the learning rate (`lr_scale`) and has its own weight decay, state storage,
//! rank, projector and refresh policy — all parts of its [`EngineConfig`].

use burn::prelude::*;
use ember_kernels::portable::fixed_order_sum;
use serde::{Deserialize, Serialize};

use crate::engine::EngineConfig;
use crate::projector::ProjectorKind;
use crate::targets::Targets;

/// One parameter group.
#[derive(Debug, Clone)]
pub struct Group {
    /// Name (in plans and errors).
    pub name: String,
    /// Which parameters.
    pub selector: Targets,
    /// The pipeline of its 2-D parameters.
    pub engine: EngineConfig,
    /// The pipeline of its other parameters (the group's AdamW).
    pub dense: EngineConfig,
    /// Multiplies the learning rate.
    pub lr_scale: f64,
}

impl Group {
    /// The pipeline of a parameter of `shape` in this group.
    pub fn engine_for(&self, shape: &[usize]) -> &EngineConfig {
        if shape.len() == 2 {
            &self.engine
        } else {
            &self.dense
        }
    }

    /// A stable description of the group (method parts and settings), for checkpoints.
    pub fn layout(&self) -> String {
        serde_json::json!({
            "name": self.name,
            "engine": self.engine,
            "dense": self.dense,
            "lr_scale": self.lr_scale,
        })
        .to_string()
    }

    /// Whether its 2-D parameters are projected (not AdamW).
    pub fn projects(&self) -> bool {
        self.engine.projector != ProjectorKind::Identity
    }
}

/// Gradient clipping, before the update.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Clipping {
    /// Each gradient entry into `[−v, v]` (burn's `GradientClippingConfig::Value`).
    Value(f64),
    /// Each parameter's gradient to an ℓ₂ norm of at most `v`:
    /// `G·min(1, v/(‖G‖ + min_positive))` (burn's `GradientClippingConfig::Norm`, per tensor).
    Norm(f64),
    /// All gradients together to a global ℓ₂ norm of at most `v`: `G·min(1, v/(‖(G₁,…)‖ +
    /// 1e-6))` (PyTorch's `clip_grad_norm_`); the norm stays on the device.
    GlobalNorm(f64),
}

impl From<burn::grad_clipping::GradientClippingConfig> for Clipping {
    fn from(c: burn::grad_clipping::GradientClippingConfig) -> Self {
        match c {
            burn::grad_clipping::GradientClippingConfig::Value(v) => Clipping::Value(v as f64),
            burn::grad_clipping::GradientClippingConfig::Norm(v) => Clipping::Norm(v as f64),
        }
    }
}

impl Clipping {
    /// Checks the threshold.
    pub fn validate(&self) -> Result<(), String> {
        let v = match *self {
            Clipping::Value(v) | Clipping::Norm(v) | Clipping::GlobalNorm(v) => v,
        };
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("gradient clipping threshold {v} must be positive"));
        }
        Ok(())
    }

    /// Clips `grads` (per tensor, or all together for `GlobalNorm`), on their devices.
    pub fn apply<B: Backend>(&self, grads: Vec<Tensor<B, 2>>) -> Vec<Tensor<B, 2>> {
        match *self {
            Clipping::Value(v) => grads
                .into_iter()
                .map(|g| {
                    let hi = g.clone().greater_elem(v);
                    let lo = g.clone().lower_elem(-v);
                    g.mask_fill(hi, v).mask_fill(lo, -v)
                })
                .collect(),
            Clipping::Norm(v) => grads
                .into_iter()
                .map(|g| {
                    let min_positive = g
                        .dtype()
                        .finfo()
                        .unwrap_or(burn::tensor::FloatDType::F32.finfo())
                        .min_positive;
                    let norm = fixed_order_sum(g.clone().square()).sqrt();
                    let coef = norm.add_scalar(min_positive).recip().mul_scalar(v);
                    g.mul(coef.clamp_max(1.0).unsqueeze())
                })
                .collect(),
            Clipping::GlobalNorm(v) => {
                let Some(first) = grads.first() else {
                    return grads;
                };
                let device = first.device();
                let total = grads
                    .iter()
                    .map(|g| {
                        fixed_order_sum(g.clone().cast(burn::tensor::DType::F32).square())
                            .to_device(&device)
                    })
                    .reduce(|a, b| a + b)
                    .expect("one gradient")
                    .sqrt();
                let coef = total.add_scalar(1e-6).recip().mul_scalar(v).clamp_max(1.0);
                grads
                    .into_iter()
                    .map(|g| {
                        let c = coef.clone().to_device(&g.device()).cast(g.dtype());
                        g.mul(c.unsqueeze())
                    })
                    .collect()
            }
        }
    }
}
