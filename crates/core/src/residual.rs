//! Residual rules: what happens to the part of the gradient the projection threw away.
//!
//! A rule is a part of the engine, [`ResidualPart`]: from `G`, `up(R)`, `R`, `N` and its memory of
//! the previous step it computes the term `T` of `W ← W − T`. Three rules are built in —
//! [`Fira`], [`SignSgd`] and [`Sgd`] (FRUGAL) — beside discarding the residual (GaLore, Q-GaLore,
//! DCT-AdamW); [`ResidualRule`] names them in an [`EngineConfig`](crate::EngineConfig) (what a
//! config serializes), and the fused kernels run them (`ember_kernels::ResidualUpdate`). Any other
//! rule plugs in as [`ResidualRule::Custom`] and runs on the portable path (burn tensor ops of its
//! backend; [`crate::part`]).

use std::sync::Arc;

use burn::prelude::*;
use ember_kernels::portable::{residual_term, ResidualInputs};
use ember_kernels::ResidualUpdate;
use serde::{Deserialize, Serialize};

use crate::error::EmberError;
use crate::part::BackendPart;

/// A residual rule on backend `B`: the term `T` of `W ← W − T` from the residual's inputs.
///
/// `T` is applied before the decay that follows the update (the GaLore family's), which scales
/// it too, and is zero where a step is held by the deferred NaN/Inf check. The rule's memory
/// (`x.memory`, one tensor per parameter, `None` on its first step; kept in the parameter's
/// record) is what it returns as the second value; it keeps its shape from step to step. A held
/// step keeps the memory as it was — before the first step there is none, and a held first step
/// leaves `+∞` in its place (what Fira's limiter reads as "no previous norm").
pub trait ResidualPart<B: Backend>: std::fmt::Debug + Send + Sync {
    /// The term (the parameter's shape) and the new memory, at learning rate `lr`.
    fn term(&self, x: ResidualInputs<B>, lr: f64) -> (Tensor<B, 2>, Option<Tensor<B, 1>>);

    /// Bytes of memory the rule keeps per parameter (for the state estimate). Default: none.
    fn memory_bytes(&self) -> usize {
        0
    }

    /// Validates the configuration. Default: nothing to check.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Fira: the residual `G − α·up(R)` is scaled per row/column by `φ = ‖N‖/(‖R‖ + 1e-8)` (norms
/// along the low-rank shape's longer side), then the norm-growth limiter caps `‖Ψ‖` at `γ` times
/// its previous value (the memory `ζ`); applied with the Adam step size `η`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fira {
    /// Norm-growth limit γ (1.01 in the official code).
    pub gamma: f64,
}

/// FRUGAL's state-free signSGD: `W ← W − lr·s·sign(G − up(R))`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignSgd {
    /// `inactive_lr_scale` s.
    pub lr_scale: f64,
}

/// FRUGAL's state-free SGD: `W ← W − lr·s·(G − up(R))`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sgd {
    /// `inactive_lr_scale` s.
    pub lr_scale: f64,
}

impl<B: Backend> ResidualPart<B> for Fira {
    fn term(&self, x: ResidualInputs<B>, lr: f64) -> (Tensor<B, 2>, Option<Tensor<B, 1>>) {
        residual_term(ResidualRule::Fira(self.clone()).kernel_mode(lr), x).expect("Fira's term")
    }
    fn memory_bytes(&self) -> usize {
        4
    }
    fn validate(&self) -> Result<(), String> {
        self.check()
    }
}

impl Fira {
    /// γ must be positive and finite.
    fn check(&self) -> Result<(), String> {
        if !(self.gamma.is_finite() && self.gamma > 0.0) {
            return Err(format!(
                "the norm-growth limit γ = {} must be positive",
                self.gamma
            ));
        }
        Ok(())
    }
}

impl<B: Backend> ResidualPart<B> for SignSgd {
    fn term(&self, x: ResidualInputs<B>, lr: f64) -> (Tensor<B, 2>, Option<Tensor<B, 1>>) {
        residual_term(ResidualRule::SignSgd(self.clone()).kernel_mode(lr), x)
            .expect("signSGD's term")
    }
}

impl<B: Backend> ResidualPart<B> for Sgd {
    fn term(&self, x: ResidualInputs<B>, lr: f64) -> (Tensor<B, 2>, Option<Tensor<B, 1>>) {
        residual_term(ResidualRule::Sgd(self.clone()).kernel_mode(lr), x).expect("SGD's term")
    }
}

/// A residual rule of the caller's, held for one backend ([`ResidualRule::custom`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CustomResidual {
    part: BackendPart,
    memory_bytes: usize,
}

impl CustomResidual {
    /// The rule for the backend `B` (the optimizer's inner backend), validated now.
    pub fn new<B: Backend, R: ResidualPart<B> + 'static>(
        name: impl Into<String>,
        rule: R,
    ) -> Result<Self, EmberError> {
        rule.validate().map_err(EmberError::InvalidConfig)?;
        let memory_bytes = rule.memory_bytes();
        let rule: Arc<dyn ResidualPart<B>> = Arc::new(rule);
        Ok(Self {
            part: BackendPart::new::<B, _>(name, rule),
            memory_bytes,
        })
    }

    /// The rule on `B`, or an error if it was built for another backend.
    pub fn part<B: Backend>(&self) -> Result<&dyn ResidualPart<B>, EmberError> {
        self.part
            .get::<B, Arc<dyn ResidualPart<B>>>()
            .map(|p| p.as_ref())
    }

    /// The name it was given.
    pub fn name(&self) -> &str {
        self.part.name()
    }
}

/// What the engine does with the residual `G − up(R)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResidualRule {
    /// Thrown away (GaLore, Q-GaLore, DCT-AdamW).
    Discard,
    /// [`Fira`]'s scaled and limited residual.
    Fira(Fira),
    /// FRUGAL's [`SignSgd`].
    SignSgd(SignSgd),
    /// FRUGAL's [`Sgd`].
    Sgd(Sgd),
    /// A rule of the caller's ([`ResidualRule::custom`]), on the portable path. A config holding
    /// one does not serialize (serde reports the variant as skipped); the rule's memory in the
    /// parameter's record does.
    #[serde(skip)]
    Custom(CustomResidual),
}

impl ResidualRule {
    /// Fira's rule with limit `gamma`.
    pub fn fira(gamma: f64) -> Self {
        ResidualRule::Fira(Fira { gamma })
    }

    /// A rule of the caller's for the backend `B` (the optimizer's inner backend: `Flex` for an
    /// optimizer of `Autodiff<Flex>`), validated now.
    pub fn custom<B: Backend, R: ResidualPart<B> + 'static>(
        name: impl Into<String>,
        rule: R,
    ) -> Result<Self, EmberError> {
        CustomResidual::new::<B, R>(name, rule).map(ResidualRule::Custom)
    }

    /// Whether the rule uses the residual at all.
    pub fn is_discard(&self) -> bool {
        matches!(self, ResidualRule::Discard)
    }

    /// The rule as the kernels' [`ResidualUpdate`] at learning rate `lr`; `None` for a rule of
    /// the caller's, which runs on the portable path ([`part`](Self::part)).
    pub fn to_update(&self, lr: f64) -> Option<ResidualUpdate> {
        Some(match self {
            ResidualRule::Discard => ResidualUpdate::None,
            ResidualRule::SignSgd(r) => ResidualUpdate::Sign {
                step: lr * r.lr_scale,
            },
            ResidualRule::Sgd(r) => ResidualUpdate::Sgd {
                step: lr * r.lr_scale,
            },
            ResidualRule::Fira(r) => ResidualUpdate::Fira {
                gamma: r.gamma,
                given: false,
            },
            ResidualRule::Custom(_) => return None,
        })
    }

    /// [`to_update`](Self::to_update) of a built-in rule (`None` for a rule of the caller's).
    fn kernel_mode(&self, lr: f64) -> ResidualUpdate {
        self.to_update(lr).unwrap_or(ResidualUpdate::None)
    }

    /// The caller's rule on `B` (`None` for the built-in ones), or an error if it was built for
    /// another backend.
    pub fn part<B: Backend>(&self) -> Result<Option<&dyn ResidualPart<B>>, EmberError> {
        match self {
            ResidualRule::Custom(c) => c.part::<B>().map(Some),
            _ => Ok(None),
        }
    }

    /// Bytes of memory the rule keeps per parameter.
    pub fn memory_bytes(&self) -> usize {
        match self {
            ResidualRule::Fira(_) => 4,
            ResidualRule::Custom(c) => c.memory_bytes,
            _ => 0,
        }
    }

    /// Validates the configuration (a rule of the caller's was validated when it was built).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ResidualRule::Fira(r) => r.check(),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-in rules serialize as before they became parts (`{"Fira":{"gamma":1.01}}`), and
    /// read back.
    #[test]
    fn built_in_rules_serialize_by_name() {
        let cases = [
            (ResidualRule::Discard, r#""Discard""#),
            (ResidualRule::fira(1.01), r#"{"Fira":{"gamma":1.01}}"#),
            (
                ResidualRule::SignSgd(SignSgd { lr_scale: 0.5 }),
                r#"{"SignSgd":{"lr_scale":0.5}}"#,
            ),
            (
                ResidualRule::Sgd(Sgd { lr_scale: 2.0 }),
                r#"{"Sgd":{"lr_scale":2.0}}"#,
            ),
        ];
        for (rule, json) in cases {
            assert_eq!(serde_json::to_string(&rule).unwrap(), json);
            let back: ResidualRule = serde_json::from_str(json).unwrap();
            assert_eq!(back, rule);
        }
        assert!(ResidualRule::fira(0.0).validate().is_err());
        assert!(ResidualRule::fira(f64::NAN).validate().is_err());
    }
}
