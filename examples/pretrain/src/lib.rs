//! # Pretraining a small LLaMA with Ember optimizers through burn-train's `Learner`
//!
//! The pieces of the `pretrain` binary, public so that the tests drive the same code:
//! * [`Corpus`]: bytes of a text (tiny Shakespeare is embedded), split 90/10 into train and
//!   validation; the tokenizer is the identity on bytes (vocabulary 256).
//! * [`Windows`]: a burn `Dataset` of `seq + 1`-byte windows, in one seeded order (the same every
//!   epoch, so a resumed run sees the same batches as an uninterrupted one).
//! * [`LanguageModel`]: `ember_llama::Llama` (RMSNorm, rotary embeddings, SwiGLU, causal
//!   attention) with burn-train's `TrainStep`/`InferenceStep`.
//! * [`Run`] / [`train`]: builds the optimizer (`adamw|galore|qgalore|fira|frugal|dct`; the
//!   attention and MLP linears are the targets, the rest on the method's AdamW), a warm-up + cosine
//!   learning-rate schedule, and launches `SupervisedTraining` (one device or several, burn's
//!   multi-device strategy), with full-precision file checkpoints after every epoch.

pub mod data;
pub mod layerwise;
pub mod learner;
pub mod model;
pub mod report;
pub mod run;
pub mod schedule;
pub mod telemetry;

pub use data::{ByteBatcher, Corpus, TokenBatch, Windows, TINY_SHAKESPEARE};
pub use learner::{evaluate, QuietRenderer};
pub use model::LanguageModel;
pub use report::{param_bytes, plot, weights_hash};
pub use run::{train, ReplicaChecksum, Run, Summary};
pub use schedule::WarmupCosine;
