//! The model production runs: what the service's trainer and scorer roles, the NAB
//! harness and the replay CLI all use. Changing the production model is changing this
//! file.

pub use crate::detector::{
    DetectorConfig as Config, DetectorParams as Params, DetectorScorer as ModelScorer,
    DetectorTrainer as ModelTrainer,
};

/// Publish a device's parameters every this many events, unless configured otherwise.
pub const DEFAULT_PUBLISH_EVERY: u32 = 10;

pub fn trainer(config: &Config) -> ModelTrainer {
    ModelTrainer::new(config.clone())
}

pub fn scorer() -> ModelScorer {
    ModelScorer::default()
}
