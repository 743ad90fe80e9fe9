//! Online anomaly models for fleetwatch. Pure: no I/O, no Kafka.
//!
//! Every model comes in two halves so that training and scoring can run in different
//! processes, as they do in production:
//! - a *trainer* learns from one observation at a time and can snapshot its parameters;
//! - a *scorer* scores one observation from a parameter snapshot that may be a few events
//!   old, keeping only the little per-device state that scoring itself needs.
//!
//! Parameters serialize with a model kind and a format version, so a scorer can refuse
//! parameters it does not understand instead of misreading them.

mod calibration;
pub mod detector;
pub mod episode;
pub mod nab;
pub mod names;
mod observation;
pub mod production;
pub mod prototypes;
pub mod relation;
pub mod replay;
mod ring;
mod score;
pub mod synthetic;

pub use observation::{MetricName, MetricValues, Observation};
pub use score::{Cause, MetricScore, Score};

/// Errors of model configuration and parameter handling.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    #[error("parameters are of kind {found:?} version {found_version}, expected {expected:?} version {expected_version}")]
    IncompatibleParams {
        found: String,
        found_version: u32,
        expected: &'static str,
        expected_version: u32,
    },
    #[error("cannot decode: {0}")]
    Decode(String),
}

/// The learning half of a model: one instance per device.
pub trait Trainer {
    type Params;
    /// Learn from one observation.
    fn update(&mut self, observation: &Observation<'_>);
    /// The parameters a scorer needs, as of now.
    fn snapshot(&self) -> Self::Params;
    /// Observations learned from so far.
    fn events(&self) -> u64;
}

/// The scoring half of a model: one instance per device, fed with parameter snapshots.
pub trait Scorer {
    type Params;
    /// Score one observation with the given parameters (which may lag the trainer).
    fn score(&mut self, params: &Self::Params, observation: &Observation<'_>) -> Score;
}
