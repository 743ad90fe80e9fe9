use serde::{Deserialize, Serialize};

/// The scorer role: scores telemetry and raises alerts. Section `[scorer]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScorerConfig {
    /// Score at or above which an anomaly episode starts. Unset: the model's recommended
    /// threshold (carried by `trainer.model.threshold`).
    pub threshold: Option<f64>,
    /// An episode ends after this many consecutive events scoring below
    /// `clear_ratio × threshold`.
    pub clear_after_events: u32,
    /// See `clear_after_events`; in (0, 1]. Below 1 gives hysteresis, so a score hovering
    /// at the threshold does not raise one alert per crossing.
    pub clear_ratio: f64,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            threshold: None,
            clear_after_events: 5,
            clear_ratio: 0.5,
        }
    }
}
