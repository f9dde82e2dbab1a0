//! Errors reported by Ember optimizers.

use std::fmt;

/// Everything that can go wrong in an Ember optimizer step, with the parameter it concerns.
#[derive(Debug, Clone, PartialEq)]
pub enum EmberError {
    /// A configuration value is out of range (reported by `try_init`).
    InvalidConfig(String),
    /// The rank does not fit a targeted parameter.
    InvalidRank {
        /// Module path (or id) of the parameter.
        param: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The rank asked for.
        rank: usize,
    },
    /// A gradient holds NaN or ±Inf.
    NonFiniteGradient {
        /// Module path (or id) of the parameter.
        param: String,
    },
    /// A parameter the method cannot handle (dtype, tensor rank, ...).
    UnsupportedParameter {
        /// Module path (or id) of the parameter.
        param: String,
        /// Why.
        reason: String,
    },
    /// A loaded optimizer record does not fit the module or the configuration.
    CheckpointMismatch {
        /// Module path (or id) of the parameter.
        param: String,
        /// What differs.
        reason: String,
    },
    /// A gradient whose shape is not its parameter's.
    GradientShape {
        /// Module path (or id) of the parameter.
        param: String,
        /// The parameter's shape.
        param_shape: Vec<usize>,
        /// The gradient's shape.
        grad_shape: Vec<usize>,
    },
    /// A numerical routine failed (e.g. the SVD did not converge).
    Internal(String),
}

impl fmt::Display for EmberError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmberError::InvalidConfig(m) => write!(f, "invalid optimizer configuration: {m}"),
            EmberError::InvalidRank { param, shape, rank } => write!(
                f,
                "rank {rank} does not fit parameter `{param}` of shape {shape:?}: the rank must be in 1..={}",
                shape.iter().copied().min().unwrap_or(0)
            ),
            EmberError::NonFiniteGradient { param } => write!(
                f,
                "the gradient of parameter `{param}` holds NaN or Inf; no parameter or state was changed"
            ),
            EmberError::UnsupportedParameter { param, reason } => {
                write!(f, "parameter `{param}` is not supported: {reason}")
            }
            EmberError::CheckpointMismatch { param, reason } => write!(
                f,
                "the loaded optimizer state does not match parameter `{param}`: {reason}"
            ),
            EmberError::GradientShape {
                param,
                param_shape,
                grad_shape,
            } => write!(
                f,
                "the gradient of parameter `{param}` has shape {grad_shape:?}, the parameter {param_shape:?}; nothing was changed"
            ),
            EmberError::Internal(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for EmberError {}
