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
    now_ms, Alert, AlertState, Contributor, DeviceId, KafkaTopics, ScoreRecord, SequenceTracker,
    TelemetryPayload,
};

pub use config::ScorerConfig;
pub use params::{DeviceParams, ParamsFollower, ParamsHandler, SharedParams};
pub use role::ROLE;

use crate::kafka::{
    decode_model_input, DurableOffsets, HandleError, ModelInput, PendingDeliveries, Producer,
    Record, RecordHandler,
};
use crate::metrics::Metrics;

/// An episode transition with the score that caused it and the parameters' version.
type Change = (Transition, Score, u64);

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
    /// With `publish_scores`: `iot.scores`, and the records whose scores are on their way.
    scores: Option<(String, PendingDeliveries)>,
    /// Offsets whose alerts and scores Kafka confirmed, for the consume loop.
    durable: DurableOffsets,
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
        let producer_copy = producer.clone();
        Self {
            rules: config.rules(recommended_threshold),
            topic: topics.alerts(),
            producer,
            params,
            metrics,
            devices: HashMap::new(),
            unsent: None,
            scores: config.publish_scores.then(|| {
                let pending = PendingDeliveries::new(producer_copy, config.max_pending_scores);
                (topics.scores(), pending)
            }),
            durable: DurableOffsets::default(),
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

    /// Score one reading of a known device: the score when the model could judge it,
    /// and the episode transition it causes, if any, with the parameters' version.
    fn score(
        &mut self,
        device_id: &DeviceId,
        telemetry: &TelemetryPayload,
    ) -> Option<(Score, Option<Change>)> {
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
        let transition = device.episode.observe(&self.rules, &score, telemetry.seq);
        let change = transition.map(|transition| (transition, score.clone(), params.version));
        Some((score, change))
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

/// The compact record of one judged event for `iot.scores`: each metric of the reading
/// with the largest part naming it.
fn score_record(device_id: &DeviceId, telemetry: &TelemetryPayload, score: &Score) -> Vec<u8> {
    let metrics = telemetry
        .metrics
        .keys()
        .map(|metric| {
            let part = (score.contributors.iter())
                .filter(|part| &part.metric == metric)
                .map(|part| part.score)
                .fold(0.0, f64::max);
            (metric.clone(), part)
        })
        .collect();
    let record = ScoreRecord {
        device_id: device_id.clone(),
        ts: telemetry.ts,
        seq: telemetry.seq,
        score: score.value,
        metrics,
    };
    serde_json::to_vec(&record).expect("wire types serialize")
}

impl ScoringHandler {
    /// Wait for the queued scores when there are too many, before taking a record.
    async fn make_room(&mut self) -> Result<(), HandleError> {
        match &mut self.scores {
            Some((_, pending)) if pending.is_full() => pending.settle(&mut self.durable).await,
            _ => Ok(()),
        }
    }

    /// After `record` is handled: queue its score, if any, or count it done.
    async fn finish(&mut self, record: &Record<'_>, score: Option<(&DeviceId, Vec<u8>)>) {
        let Some((topic, pending)) = &mut self.scores else {
            return;
        };
        let effect =
            score.map(|(device_id, payload)| (topic.as_str(), device_id.as_str(), payload));
        let published = effect.is_some();
        pending.push(record, effect).await;
        if published {
            self.metrics.scores_published.inc();
        }
    }
}

impl RecordHandler for ScoringHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        // A retried record finds its alert here; the record itself is then a duplicate.
        self.send_unsent().await?;
        self.make_room().await?;
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
                    self.finish(record, None).await;
                    return Ok(());
                }
                None => {
                    self.finish(record, None).await;
                    return Ok(());
                }
            };
        let Some((score, change)) = self.score(&device_id, &telemetry) else {
            self.finish(record, None).await;
            return Ok(());
        };
        let payload = self
            .scores
            .is_some()
            .then(|| score_record(&device_id, &telemetry, &score));
        if let Some(change) = change {
            self.unsent = Some(self.alert(device_id.clone(), tenant, &telemetry, change));
        }
        self.finish(record, payload.map(|payload| (&device_id, payload)))
            .await;
        let sent = self.send_unsent().await;
        if self.scores.is_none() {
            // Without scores the offset is stored when this returns: only once the alert
            // is confirmed.
            return sent;
        }
        // With scores, an alert that failed here is sent again before the next record,
        // and no offset becomes durable before it is.
        Ok(())
    }

    fn tick_interval(&self) -> Option<std::time::Duration> {
        self.scores
            .as_ref()
            .map(|_| std::time::Duration::from_millis(200))
    }

    /// Collect the confirmations that arrived, without waiting for the others.
    async fn on_tick(&mut self) -> Result<(), HandleError> {
        self.send_unsent().await?;
        match &mut self.scores {
            Some((_, pending)) => pending.settle_ready(&mut self.durable),
            None => Ok(()),
        }
    }

    /// Wait for every queued score before the final commit.
    async fn on_shutdown(&mut self) {
        let mut outcome = self.send_unsent().await;
        if let (Ok(()), Some((_, pending))) = (&outcome, &mut self.scores) {
            outcome = pending.settle(&mut self.durable).await;
        }
        if let Err(HandleError::Retry(error) | HandleError::Fatal(error)) = outcome {
            tracing::warn!(%error, "scores not all confirmed at shutdown; they are scored again");
        }
    }

    fn defers_commit(&self) -> bool {
        self.scores.is_some()
    }

    fn take_durable(&mut self) -> DurableOffsets {
        std::mem::take(&mut self.durable)
    }
}

#[cfg(test)]
mod feedback_tests;
#[cfg(test)]
mod tests;
