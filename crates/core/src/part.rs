//! Parts of the caller's whose operations run on one backend.
//!
//! An engine's parts are named in an [`EngineConfig`](crate::EngineConfig), which is not generic
//! over the backend (one config builds optimizers for any backend, and serializes). A residual
//! rule ([`ResidualPart`](crate::residual::ResidualPart)) or a projector fit
//! ([`FitProjector`](crate::projector::FitProjector)) of the caller's runs burn tensor ops of one
//! backend `B`, so it is held here for that `B` — the optimizer's *inner* backend, the one its
//! engine steps on (`Flex` under `Autodiff<Flex>`) — and recovered, typed, when the engine steps
//! on `B`. On another backend the step fails with [`EmberError::InvalidConfig`] naming both.

use std::any::{type_name, Any};
use std::fmt;
use std::sync::Arc;

use crate::error::EmberError;

/// A caller's part for one backend, type-erased (see the [module docs](self)).
#[derive(Clone)]
pub struct BackendPart {
    name: String,
    backend: &'static str,
    part: Arc<dyn Any + Send + Sync>,
}

impl BackendPart {
    /// Holds `part` (e.g. an `Arc<dyn ResidualPart<B>>`) for the backend `B`.
    pub(crate) fn new<B: 'static, T: Any + Send + Sync>(name: impl Into<String>, part: T) -> Self {
        Self {
            name: name.into(),
            backend: type_name::<B>(),
            part: Arc::new(part),
        }
    }

    /// The part as a `T` held for the backend `B`, or an error naming the backend it was built for.
    pub(crate) fn get<B: 'static, T: Any>(&self) -> Result<&T, EmberError> {
        self.part.downcast_ref::<T>().ok_or_else(|| {
            EmberError::InvalidConfig(format!(
                "the custom part `{}` was built for the backend {}, but the engine steps on {} \
                 (build it for the optimizer's inner backend)",
                self.name,
                self.backend,
                type_name::<B>()
            ))
        })
    }

    /// The name given to the part.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend the part was built for (its type name).
    pub fn backend(&self) -> &'static str {
        self.backend
    }
}

impl fmt::Debug for BackendPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (for {})", self.name, self.backend)
    }
}

/// Two handles are equal when they hold the same part.
impl PartialEq for BackendPart {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.part, &other.part)
    }
}
