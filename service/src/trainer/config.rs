use fleetwatch_models::production;
use serde::{Deserialize, Serialize};

/// The trainer role: learns a model per device. Section `[trainer]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    /// Publish a device's parameters after this many new events...
    pub publish_every_events: u32,
    /// ...or this long (ms) after the previous publication, whichever comes first, as long
    /// as there is something new.
    pub publish_every_ms: u64,
    /// Checkpoint a device's model to `iot.trainer-state` every this many publications
    /// (also when its partition is revoked and at shutdown). After a crash the model
    /// continues from its last checkpoint; a lower value loses less training and writes
    /// more (a checkpoint is a few KB).
    pub checkpoint_every_publications: u32,
    /// The model's settings (section `[trainer.model]`).
    pub model: production::Config,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            publish_every_events: production::DEFAULT_PUBLISH_EVERY,
            publish_every_ms: 5_000,
            checkpoint_every_publications: 10,
            model: production::Config::default(),
        }
    }
}
