//! What every method config provides, and the `init` methods built from it.
//!
//! A method crate implements [`MethodConfig`] for its `#[derive(Config)]` struct (which parts of
//! the engine it picks, and any check of its own options) and invokes
//! [`impl_method_init!`](crate::impl_method_init) to get the inherent `try_init`, `init` and
//! `init_with_targets` that burn users call (`GaloreConfig::new().init()`, no trait import
//! needed).

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use crate::blocks::BlockSchedule;
use crate::engine::EngineConfig;
use crate::error::EmberError;
use crate::optimizer::{EmberOptimizer, NonFinitePolicy};
use crate::targets::Targets;

/// The parts a method chooses.
pub trait MethodConfig {
    /// Name used in `init`'s panic message.
    const NAME: &'static str;

    /// The pipeline of targeted parameters.
    fn engine(&self) -> EngineConfig;

    /// The method's AdamW for the other parameters.
    fn dense_engine(&self) -> EngineConfig;

    /// The `targets` patterns of the config.
    fn target_patterns(&self) -> Vec<String>;

    /// What a step does on NaN/Inf gradients.
    fn non_finite_policy(&self) -> NonFinitePolicy;

    /// Checks of the method's own options (the engine checks its parts).
    fn check(&self) -> Result<(), EmberError> {
        Ok(())
    }

    /// Restricts the targets further (DCT's `max_shape`).
    fn restrict(&self, targets: Targets) -> Targets {
        targets
    }

    /// Seed of the stochastic rounding of INT8 weights (Q-GaLore's `QLinear` layers).
    fn rounding_seed(&self) -> u64 {
        0
    }

    /// Blockwise mode (FRUGAL's `Blocks`).
    fn blocks(&self) -> Option<BlockSchedule> {
        None
    }

    /// Builds the optimizer for `targets`.
    fn build<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        targets: Targets,
    ) -> Result<EmberOptimizer<M, B>, EmberError> {
        self.check()?;
        let optim = EmberOptimizer::new(
            self.engine(),
            self.dense_engine(),
            self.restrict(targets),
            self.non_finite_policy(),
        )?
        .with_rounding_seed(self.rounding_seed());
        match self.blocks() {
            Some(b) => optim.with_blocks(b),
            None => Ok(optim),
        }
    }
}

/// Adds `try_init`, `init` and `init_with_targets` to a [`MethodConfig`].
#[macro_export]
macro_rules! impl_method_init {
    ($config:ty) => {
        impl $config {
            /// Builds the optimizer, or explains which option is out of range.
            pub fn try_init<
                B: $crate::__burn::tensor::backend::AutodiffBackend,
                M: $crate::__burn::module::AutodiffModule<B>,
            >(
                &self,
            ) -> Result<$crate::EmberOptimizer<M, B>, $crate::EmberError> {
                let patterns = $crate::MethodConfig::target_patterns(self);
                $crate::MethodConfig::build(self, $crate::Targets::patterns(patterns))
            }

            /// Builds the optimizer (panics with the reason on an invalid configuration; see
            /// `try_init`).
            pub fn init<
                B: $crate::__burn::tensor::backend::AutodiffBackend,
                M: $crate::__burn::module::AutodiffModule<B>,
            >(
                &self,
            ) -> $crate::EmberOptimizer<M, B> {
                self.try_init().unwrap_or_else(|e| {
                    panic!("{}::init: {e}", <$config as $crate::MethodConfig>::NAME)
                })
            }

            /// Builds the optimizer with explicit targets (e.g. by parameter id), added to the
            /// config's `targets` patterns: `init()` is `init_with_targets(Targets::default())`.
            pub fn init_with_targets<
                B: $crate::__burn::tensor::backend::AutodiffBackend,
                M: $crate::__burn::module::AutodiffModule<B>,
            >(
                &self,
                targets: $crate::Targets,
            ) -> Result<$crate::EmberOptimizer<M, B>, $crate::EmberError> {
                let patterns = $crate::MethodConfig::target_patterns(self);
                let targets = if patterns.is_empty() {
                    targets
                } else {
                    targets.with_patterns(patterns)
                };
                $crate::MethodConfig::build(self, targets)
            }
        }
    };
}

/// Implements [`MethodConfig`] for a method config with the usual fields and inherent methods
/// (`engine()`, `dense_engine()`, `targets`, `non_finite`), plus the trait items given in braces
/// (`check`, `restrict`, `rounding_seed`, `blocks`), and invokes
/// [`impl_method_init!`](crate::impl_method_init).
#[macro_export]
macro_rules! impl_method_config {
    ($config:ident { $($items:tt)* }) => {
        impl $crate::MethodConfig for $config {
            const NAME: &'static str = stringify!($config);

            fn engine(&self) -> $crate::EngineConfig {
                Self::engine(self)
            }

            fn dense_engine(&self) -> $crate::EngineConfig {
                Self::dense_engine(self)
            }

            fn target_patterns(&self) -> Vec<String> {
                self.targets.clone()
            }

            fn non_finite_policy(&self) -> $crate::NonFinitePolicy {
                self.non_finite
            }

            $($items)*
        }

        $crate::impl_method_init!($config);
    };
}
