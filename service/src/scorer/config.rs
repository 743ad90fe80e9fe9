use fleetwatch_models::production::EpisodeRules;
use serde::{Deserialize, Serialize};

/// The scorer role: scores telemetry and raises alerts. Section `[scorer]`. Unset
/// fields take the model's recommended episode rules (`EpisodeRules::recommended`), the
/// same the replay CLI and the NAB harness use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScorerConfig {
    /// Score at or above which an anomaly episode starts. Unset: the model's recommended
    /// threshold (carried by `trainer.model.threshold`).
    pub threshold: Option<f64>,
    /// An episode ends after this many consecutive events scoring below
    /// `clear_ratio × threshold`. Unset: the model's recommendation (30).
    pub clear_after_events: Option<u32>,
    /// See `clear_after_events`; in (0, 1]. Below 1 gives hysteresis, so a score hovering
    /// at the threshold does not raise one alert per crossing. Unset: 0.5.
    pub clear_ratio: Option<f64>,
    /// An open episode is escalated (an `updated` alert) when a score reaches this
    /// multiple of the last one reported, or when another metric or cause breaks.
    /// Unset: 1.2.
    pub escalate_ratio: Option<f64>,
    /// Publish the score of every judged event to `iot.scores`, for the storage role
    /// (in batches: see `score_batch_max`; docs/benchmarks.md measures the cost). Off:
    /// only alerts leave the scorer.
    pub publish_scores: bool,
    /// Scores written to Kafka (in batches) and not yet confirmed, at most, counting a
    /// telemetry record without a score outside any batch as one; when reached, the
    /// scorer waits for their confirmations before scoring more (their telemetry offsets
    /// are committed only once confirmed). Bounds the memory a stalled `iot.scores` can
    /// take: about 250 bytes a score at 8 metrics.
    pub max_pending_scores: usize,
    /// Most scores in one `iot.scores` record. A batch per telemetry partition is written
    /// when it has this many or 256 KB of JSON, and what is open every 200 ms, so a score
    /// reaches storage at most that much later. At least 1 (1: a record per score).
    pub score_batch_max: usize,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            threshold: None,
            clear_after_events: None,
            clear_ratio: None,
            escalate_ratio: None,
            publish_scores: true,
            max_pending_scores: 10_000,
            score_batch_max: 256,
        }
    }
}

impl ScorerConfig {
    /// The episode rules these settings give on top of the model's recommendation.
    pub fn rules(&self, recommended_threshold: f64) -> EpisodeRules {
        let threshold = self.threshold.unwrap_or(recommended_threshold);
        let recommended = EpisodeRules::recommended(threshold);
        EpisodeRules {
            threshold,
            clear_below: self
                .clear_ratio
                .map_or(recommended.clear_below, |ratio| ratio * threshold),
            clear_after_events: self
                .clear_after_events
                .unwrap_or(recommended.clear_after_events),
            escalate_ratio: self.escalate_ratio.unwrap_or(recommended.escalate_ratio),
        }
    }
}
