//! The model production runs: what the service's trainer and scorer roles, the NAB
//! harness and the replay CLI all use. Changing the production model is changing this
//! file: the per-metric checks and the relations between metrics are parts of one
//! detector, whose single score is calibrated the same way for every part (the upper-tail
//! surprisal `ln p / ln 1e-10`); each part has its switch in [`Config`] (for example
//! `relation.enabled`, `drift_detection`).

pub use crate::detector::{
    ConfigCache, DetectorConfig as Config, DetectorParams as Params, DetectorScorer as ModelScorer,
    DetectorTrainer as ModelTrainer,
};
pub use crate::episode::{Episode, EpisodeRules, Transition};

use std::sync::Arc;

/// Publish a device's parameters every this many events, unless configured otherwise.
pub const DEFAULT_PUBLISH_EVERY: u32 = 10;

pub fn trainer(config: &Config) -> ModelTrainer {
    ModelTrainer::new(config.clone())
}

/// A trainer that shares `config` with the others made from it (a service's many
/// devices: one copy of the configuration, not one per device).
pub fn shared_trainer(config: &Arc<Config>) -> ModelTrainer {
    ModelTrainer::new(config.clone())
}

pub fn scorer() -> ModelScorer {
    ModelScorer::default()
}

/// The episode rules that go with the model's recommended threshold.
pub fn episode_rules(config: &Config) -> EpisodeRules {
    EpisodeRules::recommended(config.threshold)
}
