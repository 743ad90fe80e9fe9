//! The model production runs: what the service's trainer and scorer roles, the NAB
//! harness and the replay CLI use by default. Changing the production model is changing
//! this file.
//!
//! Production runs `ewma-baseline`: it is right about the simulated fleet from a few dozen
//! events on. `fleetwatch-detector` ([`crate::detector`]) scores better on NAB but needs
//! hundreds of events of history per device before its calibration holds (see
//! docs/models.md); it is the candidate, evaluated with `nab --candidate`.

pub use crate::baseline::{
    BaselineConfig as Config, BaselineParams as Params, BaselineScorer as ModelScorer,
    BaselineTrainer as ModelTrainer,
};

/// Publish a device's parameters every this many events, unless configured otherwise.
pub const DEFAULT_PUBLISH_EVERY: u32 = 10;

pub fn trainer(config: &Config) -> ModelTrainer {
    ModelTrainer::new(config.clone())
}

pub fn scorer() -> ModelScorer {
    ModelScorer::default()
}
