//! The scorer role. Two consumers:
//! - the scoring consumer takes `iot.telemetry` (group `scorer`), scores each event with
//!   the newest parameters of its device, runs the device's episode state machine
//!   (`fleetwatch_models::episode`, the same one the replay CLI and the NAB harness use)
//!   and produces alerts to `iot.alerts`, confirmed before the event's offset is stored;
//! - the parameters reader follows the scoring consumer's assignment: it reads the same
//!   partition numbers of `iot.model-params` (co-partitioned, compacted: the newest
//!   snapshot per device) from their beginning, so an instance holds parameters only for
//!   the devices it scores and its memory follows its share of the fleet.
//!
//! Each device's telemetry partition has exactly one scorer instance, so each device's
//! alert state has a single writer.

mod config;
mod params;
mod role;

use std::collections::HashMap;
use std::sync::Arc;

use fleetwatch_models::production::{Episode, EpisodeRules, ModelScorer, Transition};
use fleetwatch_models::{Observation, Score, Scorer};
use fleetwatch_protocol::{
    now_ms, Alert, AlertState, Contributor, DeviceId, KafkaTopics, SequenceTracker,
    TelemetryPayload,
};

pub use config::ScorerConfig;
pub use params::{DeviceParams, ParamsFollower, ParamsHandler, SharedParams};
pub use role::ROLE;

use crate::kafka::{decode_model_input, HandleError, ModelInput, Producer, Record, RecordHandler};
use crate::metrics::Metrics;

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
        Self {
            rules: config.rules(recommended_threshold),
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
            AlertState::Updated => "updated",
            AlertState::Cleared => "cleared",
        };
        self.metrics
            .alerts_emitted
            .with_label_values(&[state])
            .inc();
        self.unsent = None;
        Ok(())
    }

    /// Score one reading of a known device; the episode transition it causes, if any,
    /// with the score and the parameters' version.
    fn score(
        &mut self,
        device_id: &DeviceId,
        telemetry: &TelemetryPayload,
    ) -> Option<(Transition, Score, u64)> {
        let device = self.devices.entry(device_id.clone()).or_default();
        if !device.sequence.accept(telemetry.seq) {
            self.metrics
                .skipped
                .with_label_values(&["scorer", "duplicate"])
                .inc();
            return None;
        }
        let Some(params) = self.params.read().get(device_id).cloned() else {
            self.metrics
                .skipped
                .with_label_values(&["scorer", "no_params"])
                .inc();
            return None;
        };
        let observation = Observation {
            ts_ms: telemetry.ts,
            metrics: &telemetry.metrics,
        };
        let mut score = device.scorer.score(&params.params, &observation);
        damp(&mut score, &params.damping, telemetry.ts);
        self.metrics.events_scored.inc();
        if !score.ready {
            return None;
        }
        let transition = device.episode.observe(&self.rules, &score, telemetry.seq)?;
        Some((transition, score, params.version))
    }

    fn alert(
        &self,
        device_id: DeviceId,
        tenant: Option<fleetwatch_protocol::TenantId>,
        telemetry: &TelemetryPayload,
        (transition, score, model_version): (Transition, Score, u64),
    ) -> Alert {
        let opened_at = self.devices[&device_id].episode.opened_at();
        let (state, reason) = match transition {
            Transition::Opened => (AlertState::Raised, score.reason()),
            Transition::Escalated => (AlertState::Updated, score.reason()),
            Transition::Closed => (AlertState::Cleared, "back to normal".to_owned()),
        };
        let cause = Some(fleetwatch_models::episode::cause_label(&score))
            .filter(|label| state != AlertState::Cleared && !label.is_empty());
        Alert {
            alert_id: format!("{device_id}:{opened_at}"),
            device_id,
            tenant,
            state,
            score: score.value,
            threshold: self.rules.threshold,
            reason,
            cause,
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
            model_version,
        }
    }
}

/// Apply users' false-positive verdicts: parts whose cause (`metric:kind`) was marked
/// score less (bounded, fading; the trainer's `learn_verdict` sets the factors), and the
/// event's score is the largest part again.
fn damp(score: &mut Score, damping: &[fleetwatch_protocol::Damping], now_ms: i64) {
    if damping.is_empty() || score.contributors.is_empty() {
        return;
    }
    for part in &mut score.contributors {
        let label = format!(
            "{}:{}",
            part.metric,
            fleetwatch_models::episode::kind_label(&part.cause)
        );
        if let Some(damping) = damping.iter().find(|d| d.cause == label) {
            part.score *= damping.factor_at(now_ms);
        }
    }
    score
        .contributors
        .sort_by(|a, b| b.score.total_cmp(&a.score));
    score.value = score.contributors[0].score;
}

impl RecordHandler for ScoringHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        // A retried record finds its alert here; the record itself is then a duplicate.
        self.send_unsent().await?;
        let (device_id, tenant, telemetry) =
            match decode_model_input(record, "scorer", &self.metrics) {
                Some(ModelInput::Reading {
                    device_id,
                    tenant,
                    telemetry,
                }) => (device_id, tenant, telemetry),
                Some(ModelInput::Forget(device_id)) => {
                    // Its parameters' tombstone follows on the parameters topic.
                    self.devices.remove(&device_id);
                    self.params.write().remove(&device_id);
                    return Ok(());
                }
                None => return Ok(()),
            };
        let Some(scored) = self.score(&device_id, &telemetry) else {
            return Ok(());
        };
        self.unsent = Some(self.alert(device_id, tenant, &telemetry, scored));
        self.send_unsent().await
    }
}

#[cfg(test)]
mod feedback_tests;
#[cfg(test)]
mod tests;
