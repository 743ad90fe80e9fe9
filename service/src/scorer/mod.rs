//! The scorer role. Two consumers:
//! - the parameters reader takes every partition of `iot.model-params` from the start
//!   (compacted: the latest snapshot per device) and keeps the newest version per device;
//! - the scoring consumer takes `iot.telemetry` (group `scorer`), scores each event with
//!   the parameters it has, runs the device's alert state machine and produces alerts to
//!   `iot.alerts`, confirmed before the event's offset is stored.
//!
//! Each device's telemetry partition has exactly one scorer instance, so each device's
//! alert state has a single writer.

mod config;
mod episode;
mod role;

use std::collections::HashMap;
use std::sync::Arc;

use fleetwatch_models::production::{ModelScorer, Params};
use fleetwatch_models::{Observation, Scorer};
use fleetwatch_protocol::{
    now_ms, Alert, AlertState, Contributor, DeviceId, KafkaTopics, ParamsEnvelope, SequenceTracker,
};
use parking_lot::RwLock;

pub use config::ScorerConfig;
pub use episode::{Episode, EpisodeRules};
pub use role::ROLE;

use crate::kafka::{decode_record, decode_telemetry, HandleError, Producer, Record, RecordHandler};
use crate::metrics::Metrics;

pub type SharedParams = Arc<RwLock<HashMap<DeviceId, Arc<ParamsEnvelope<Params>>>>>;

/// Keeps the newest parameters per device.
pub struct ParamsHandler {
    pub params: SharedParams,
    pub metrics: Arc<Metrics>,
}

impl RecordHandler for ParamsHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        let Some(envelope) =
            decode_record::<ParamsEnvelope<Params>>(record, "scorer-params", &self.metrics)
        else {
            return Ok(());
        };
        if let Err(error) = envelope.params.check() {
            tracing::warn!(device = %envelope.device_id, %error, "parameters skipped");
            self.metrics
                .skipped
                .with_label_values(&["scorer-params", "incompatible"])
                .inc();
            return Ok(());
        }
        self.metrics.params_received.inc();
        let mut params = self.params.write();
        let newer = params
            .get(&envelope.device_id)
            .is_none_or(|known| known.version < envelope.version);
        if newer {
            params.insert(envelope.device_id.clone(), Arc::new(envelope));
        }
        Ok(())
    }
}

#[derive(Default)]
struct DeviceScoring {
    scorer: ModelScorer,
    sequence: SequenceTracker,
    episode: Episode,
}

pub struct ScoringHandler {
    rules: EpisodeRules,
    topic: String,
    producer: Producer,
    params: SharedParams,
    metrics: Arc<Metrics>,
    devices: HashMap<DeviceId, DeviceScoring>,
    /// An alert whose delivery failed; sent again before anything else.
    unsent: Option<Alert>,
}

impl ScoringHandler {
    pub fn new(
        config: &ScorerConfig,
        recommended_threshold: f64,
        topics: &KafkaTopics,
        producer: Producer,
        params: SharedParams,
        metrics: Arc<Metrics>,
    ) -> Self {
        let threshold = config.threshold.unwrap_or(recommended_threshold);
        Self {
            rules: EpisodeRules {
                threshold,
                clear_below: threshold * config.clear_ratio,
                clear_after_events: config.clear_after_events,
            },
            topic: topics.alerts(),
            producer,
            params,
            metrics,
            devices: HashMap::new(),
            unsent: None,
        }
    }

    async fn send_unsent(&mut self) -> Result<(), HandleError> {
        let Some(alert) = &self.unsent else {
            return Ok(());
        };
        self.producer
            .send_json(&self.topic, alert.device_id.as_str(), alert)
            .await
            .map_err(|error| HandleError::Retry(error.to_string()))?;
        let state = match alert.state {
            AlertState::Raised => "raised",
            AlertState::Cleared => "cleared",
        };
        self.metrics
            .alerts_emitted
            .with_label_values(&[state])
            .inc();
        self.unsent = None;
        Ok(())
    }
}

impl RecordHandler for ScoringHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        // A retried record finds its alert here; the record itself is then a duplicate.
        self.send_unsent().await?;
        let Some((device_id, telemetry)) = decode_telemetry(record, "scorer", &self.metrics) else {
            return Ok(());
        };
        let device = self.devices.entry(device_id.clone()).or_default();
        if !device.sequence.accept(telemetry.seq) {
            self.metrics
                .skipped
                .with_label_values(&["scorer", "duplicate"])
                .inc();
            return Ok(());
        }
        let Some(params) = self.params.read().get(&device_id).cloned() else {
            self.metrics
                .skipped
                .with_label_values(&["scorer", "no_params"])
                .inc();
            return Ok(());
        };
        let score = device.scorer.score(
            &params.params,
            &Observation {
                ts_ms: telemetry.ts,
                metrics: &telemetry.metrics,
            },
        );
        self.metrics.events_scored.inc();
        if !score.ready {
            return Ok(());
        }
        let Some(state) = device
            .episode
            .observe(&self.rules, score.value, telemetry.seq)
        else {
            return Ok(());
        };
        let opened_at = device.episode.opened_at();
        let reason = match state {
            AlertState::Raised => score.reason(),
            AlertState::Cleared => "back to normal".to_owned(),
        };
        self.unsent = Some(Alert {
            alert_id: format!("{device_id}:{opened_at}"),
            device_id,
            state,
            score: score.value,
            threshold: self.rules.threshold,
            reason,
            contributors: score
                .contributors
                .iter()
                .take(5)
                .map(|part| Contributor {
                    metric: part.metric.clone(),
                    value: part.value,
                    expected: part.expected,
                    score: part.score,
                })
                .collect(),
            event_ts: telemetry.ts,
            event_seq: telemetry.seq,
            emitted_ms: now_ms(),
            model_version: params.version,
        });
        self.send_unsent().await
    }
}

#[cfg(test)]
mod tests;
