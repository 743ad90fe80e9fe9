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
//!
//! Every model a device has parameters of (production, and the candidates the model
//! registry names for it) scores each of its readings with its own episode machine.
//! One model *decides* for the device: the one promoted for its tenant
//! (`shadow::Registry::promoted_for`); its alerts go to `iot.alerts` (customers), the
//! others' to `iot.shadow-alerts` (nobody's). When the promoted model changes, the
//! deciding model's open episode is closed (`cleared`, reason `model_promoted`) and the
//! new one decides from its next reading on, from a closed episode; a device without
//! parameters of the new model yet keeps its previous model until they arrive (counted
//! in `fleetwatch_scorer_devices_awaiting_promoted_params`).

mod config;
mod model_map;
mod params;
mod role;
mod score_batches;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use fleetwatch_models::production::{Episode, EpisodeRules, ModelScorer, Transition};
use fleetwatch_models::{Observation, Score, Scorer};
use fleetwatch_protocol::{
    now_ms, Alert, AlertState, Contributor, DeviceId, KafkaTopics, ModelId, ScoreRecord,
    SequenceTracker, TelemetryPayload, TenantId, MODEL_PROMOTED, PRODUCTION_MODEL,
};

pub use config::ScorerConfig;
pub use model_map::ModelMap;
pub use params::{DeviceModels, DeviceParams, ParamsFollower, ParamsHandler, SharedParams};
pub use role::ROLE;

use crate::kafka::{
    decode_model_input, DurableOffsets, HandleError, ModelInput, PendingDeliveries, Producer,
    Record, RecordHandler,
};
use crate::metrics::Metrics;
use crate::shadow::ModelRegistry;
use score_batches::ScoreBatches;

/// An episode transition of a model with the score that caused it and the parameters'
/// version.
struct Change {
    model_id: String,
    transition: Transition,
    /// None: closed because another model was promoted.
    score: Option<Score>,
    /// The sequence number that opened the episode (with the device, its identity).
    opened_at: u64,
    version: u64,
    /// Whether the model decides for the device (its alerts reach customers).
    decides: bool,
}

/// One model's scoring context and episode for one device.
#[derive(Default)]
struct ModelScoring {
    scorer: ModelScorer,
    episode: Episode,
}

struct DeviceScoring {
    sequence: SequenceTracker,
    models: ModelMap<ModelScoring>,
    /// The model whose alerts reach customers for this device (production's id is not
    /// copied for every device).
    decides: ModelId,
    /// The promoted model has no parameters here yet: the previous one still decides.
    awaiting: bool,
}

impl Default for DeviceScoring {
    fn default() -> Self {
        Self {
            sequence: SequenceTracker::default(),
            models: ModelMap::default(),
            decides: ModelId::production(),
            awaiting: false,
        }
    }
}

/// Where the scorer writes: alerts on a producer that hardly lingers (a person waits
/// on each, and the scorer waits for each before it reads on), scores on the bulk one.
pub struct ScorerProducers {
    pub alerts: Producer,
    pub scores: Producer,
}

/// An alert to send, and whether it goes to customers (`iot.alerts`) or to
/// `iot.shadow-alerts`.
type Outgoing = (bool, Alert);

pub struct ScoringHandler {
    rules: EpisodeRules,
    topic: String,
    /// Of alerts and shadow alerts.
    producer: Producer,
    shadow_topic: String,
    params: SharedParams,
    registry: Arc<ModelRegistry>,
    metrics: Arc<Metrics>,
    /// Boxed: a map keeps room for up to twice the entries it holds, and an empty slot
    /// then costs the pointer, not the whole state.
    devices: HashMap<DeviceId, Box<DeviceScoring>>,
    /// Alerts not yet confirmed (a failed delivery is sent again before anything else).
    unsent: VecDeque<Outgoing>,
    /// With `publish_scores`: the batches of scores for `iot.scores`, open and on their
    /// way.
    scores: Option<ScoreBatches>,
    /// Offsets whose alerts and scores Kafka confirmed, for the consume loop.
    durable: DurableOffsets,
}

impl ScoringHandler {
    pub fn new(
        config: &ScorerConfig,
        recommended_threshold: f64,
        topics: &KafkaTopics,
        producers: ScorerProducers,
        params: SharedParams,
        registry: Arc<ModelRegistry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let ScorerProducers { alerts, scores } = producers;
        Self {
            rules: config.rules(recommended_threshold),
            topic: topics.alerts(),
            shadow_topic: topics.shadow_alerts(),
            producer: alerts,
            params,
            registry,
            metrics,
            devices: HashMap::new(),
            unsent: VecDeque::new(),
            scores: config.publish_scores.then(|| {
                let pending = PendingDeliveries::new(scores, config.max_pending_scores);
                ScoreBatches::new(topics.scores(), pending, config.score_batch_max)
            }),
            durable: DurableOffsets::default(),
        }
    }

    async fn send_unsent(&mut self) -> Result<(), HandleError> {
        while let Some((customers, alert)) = self.unsent.front() {
            let topic = if *customers {
                &self.topic
            } else {
                &self.shadow_topic
            };
            self.producer
                .send_json(topic, alert.device_id.as_str(), alert)
                .await
                .map_err(|error| HandleError::Retry(error.to_string()))?;
            let state = match alert.state {
                AlertState::Raised => "raised",
                AlertState::Updated => "updated",
                AlertState::Cleared => "cleared",
            };
            if *customers {
                self.metrics
                    .alerts_emitted
                    .with_label_values(&[state])
                    .inc();
            }
            let model = alert.model_id.as_deref().unwrap_or(PRODUCTION_MODEL);
            let role = if *customers { "decides" } else { "shadow" };
            (self.metrics.model_alerts)
                .with_label_values(&[model, role, state])
                .inc();
            self.unsent.pop_front();
        }
        Ok(())
    }

    /// Score one reading of a known device with each of its models: the deciding
    /// model's score when it could judge the reading, and every episode transition.
    fn score(
        &mut self,
        device_id: &DeviceId,
        tenant: Option<&TenantId>,
        telemetry: &TelemetryPayload,
    ) -> Option<(Option<Score>, Vec<Change>)> {
        if !self.devices.contains_key(device_id) {
            self.devices.insert(device_id.clone(), Box::default());
        }
        let device = self.devices.get_mut(device_id).expect("inserted above");
        if !device.sequence.accept(telemetry.seq) {
            self.metrics
                .skipped
                .with_label_values(&["scorer", "duplicate"])
                .inc();
            return None;
        }
        // Read under the lock (no copy of the device's parameters per reading); the
        // parameters reader waits for one reading's scoring at most.
        let shared = Arc::clone(&self.params);
        let known = shared.read();
        let Some(params) = known.get(device_id) else {
            self.metrics
                .skipped
                .with_label_values(&["scorer", "no_params"])
                .inc();
            return None;
        };
        let (candidates, mut changes) = self.decide(device_id, tenant, params);
        let device = self.devices.get_mut(device_id).expect("entered above");
        let observation = Observation {
            ts_ms: telemetry.ts,
            metrics: &telemetry.metrics,
        };
        let models = std::iter::once((PRODUCTION_MODEL, self.rules))
            .chain(candidates.iter().map(|(id, rules)| (id.as_str(), *rules)));
        let mut decided = None;
        for (model_id, rules) in models {
            let Some(params) = params.get(model_id) else {
                continue;
            };
            let scoring = device.models.get_or_default(model_id);
            let mut score = scoring.scorer.score(&params.params, &observation);
            damp(&mut score, &params.damping, telemetry.ts);
            if !score.ready {
                continue;
            }
            let decides = device.decides == model_id;
            let transition = scoring.episode.observe(&rules, &score, telemetry.seq);
            if let Some(transition) = transition {
                changes.push(Change {
                    model_id: model_id.to_owned(),
                    transition,
                    score: Some(score.clone()),
                    opened_at: scoring.episode.opened_at(),
                    version: params.version,
                    decides,
                });
            }
            if decides {
                decided = Some(score);
            }
        }
        self.metrics.events_scored.inc();
        Some((decided, changes))
    }

    /// The candidates that score a device of `tenant` beside production, with their
    /// episode rules; switches the deciding model when another is promoted and has
    /// parameters here, closing the old one's open episode (`model_promoted`). Without
    /// any candidate in the registry: none, and production decides (no lock taken, no
    /// allocation).
    fn decide(
        &mut self,
        device_id: &DeviceId,
        tenant: Option<&TenantId>,
        params: &DeviceModels,
    ) -> (Vec<(String, EpisodeRules)>, Vec<Change>) {
        let mut candidates = Vec::new();
        let promoted = if self.registry.has_candidates() {
            self.registry.read(|registry| {
                let named = registry.models_for(device_id, tenant).into_iter();
                candidates.extend(named.map(|c| (c.model_id.clone(), c.rules)));
                ModelId::new(registry.promoted_for(tenant))
            })
        } else {
            ModelId::production()
        };
        let device = self
            .devices
            .get_mut(device_id)
            .expect("entered by the caller");
        let mut changes = Vec::new();
        let awaiting = promoted != device.decides && !params.contains_key(&promoted);
        if awaiting != device.awaiting {
            device.awaiting = awaiting;
            let gauge = &self.metrics.scorer_awaiting_params;
            if awaiting {
                gauge.inc()
            } else {
                gauge.dec()
            }
        }
        if promoted != device.decides && !awaiting {
            let old = std::mem::replace(&mut device.decides, promoted.clone());
            let closed = (device.models.get_mut(&old))
                .and_then(|m| m.episode.close().then(|| m.episode.opened_at()));
            if let Some(opened_at) = closed {
                changes.push(Change {
                    opened_at,
                    version: params.get(&old).map_or(0, |p| p.version),
                    model_id: old.to_string(),
                    transition: Transition::Closed,
                    score: None,
                    decides: true,
                });
            }
            // The new model decides from a closed episode: its next crossing raises.
            device.models.get_or_default(&promoted).episode = Episode::default();
        }
        (candidates, changes)
    }

    fn alert(
        &self,
        device_id: DeviceId,
        tenant: Option<TenantId>,
        telemetry: &TelemetryPayload,
        change: Change,
    ) -> Outgoing {
        let opened_at = change.opened_at;
        let (state, reason) = match (&change.transition, &change.score) {
            (Transition::Opened, Some(score)) => (AlertState::Raised, score.reason()),
            (Transition::Escalated, Some(score)) => (AlertState::Updated, score.reason()),
            (_, None) => (AlertState::Cleared, MODEL_PROMOTED.to_owned()),
            _ => (AlertState::Cleared, "back to normal".to_owned()),
        };
        let score = change.score.unwrap_or_default();
        let cause = Some(fleetwatch_models::episode::cause_label(&score))
            .filter(|label| state != AlertState::Cleared && !label.is_empty());
        let threshold = self.registry.read(|r| {
            r.get(&change.model_id)
                .map_or(self.rules.threshold, |c| c.rules.threshold)
        });
        // Customers' alerts of the production model keep the format from before model
        // ids; every other alert names its model.
        let named = !change.decides || change.model_id != PRODUCTION_MODEL;
        let alert = Alert {
            alert_id: format!("{device_id}:{opened_at}"),
            device_id,
            tenant,
            state,
            score: score.value,
            threshold,
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
            model_version: change.version,
            model_id: named.then_some(change.model_id),
        };
        (change.decides, alert)
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
/// with the largest part naming it. Takes the reading's own map (its names are kept, its
/// values replaced) rather than copying every metric's name.
fn score_record(device_id: &DeviceId, telemetry: TelemetryPayload, score: &Score) -> ScoreRecord {
    let mut metrics = telemetry.metrics;
    for (metric, value) in &mut metrics {
        *value = (score.contributors.iter())
            .filter(|part| part.metric == metric)
            .map(|part| part.score)
            .fold(0.0, f64::max);
    }
    ScoreRecord {
        device_id: device_id.clone(),
        ts: telemetry.ts,
        seq: telemetry.seq,
        score: score.value,
        metrics,
    }
}

impl ScoringHandler {
    /// Wait for the queued scores when there are too many, before taking a record.
    async fn make_room(&mut self) -> Result<(), HandleError> {
        match &mut self.scores {
            Some(batches) if batches.is_full() => batches.settle(&mut self.durable).await,
            _ => Ok(()),
        }
    }

    /// After `record` is handled: its score, if any, joins a batch for `iot.scores`.
    async fn finish(&mut self, record: &Record<'_>, score: Option<ScoreRecord>) {
        let Some(batches) = &mut self.scores else {
            return;
        };
        if score.is_some() {
            self.metrics.scores_published.inc();
        }
        batches.add(record, score).await;
    }
}

impl RecordHandler for ScoringHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        // Which model decides for each device comes from the registry: nothing is
        // scored before it is read.
        if !self.registry.loading.is_loaded() {
            return Err(HandleError::Retry(
                "the model registry (iot.models) is still being read".into(),
            ));
        }
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
                    // Its parameters' tombstones follow on the parameters topic.
                    if self.devices.remove(&device_id).is_some_and(|d| d.awaiting) {
                        self.metrics.scorer_awaiting_params.dec();
                    }
                    self.params.write().remove(&device_id);
                    self.finish(record, None).await;
                    return Ok(());
                }
                None => {
                    self.finish(record, None).await;
                    return Ok(());
                }
            };
        let Some((score, changes)) = self.score(&device_id, tenant.as_ref(), &telemetry) else {
            self.finish(record, None).await;
            return Ok(());
        };
        for change in changes {
            let alert = self.alert(device_id.clone(), tenant.clone(), &telemetry, change);
            self.unsent.push_back(alert);
        }
        let score_record = (score.as_ref())
            .filter(|_| self.scores.is_some())
            .map(|score| score_record(&device_id, telemetry, score));
        self.finish(record, score_record).await;
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

    /// Write the open batches of scores and collect the confirmations that arrived,
    /// without waiting for the others.
    async fn on_tick(&mut self) -> Result<(), HandleError> {
        self.send_unsent().await?;
        match &mut self.scores {
            Some(batches) => {
                batches.write_open().await;
                batches.settle_ready(&mut self.durable)
            }
            None => Ok(()),
        }
    }

    /// Write the open batches and wait for every one before the final commit.
    async fn on_shutdown(&mut self) {
        let mut outcome = self.send_unsent().await;
        if let (Ok(()), Some(batches)) = (&outcome, &mut self.scores) {
            batches.write_open().await;
            outcome = batches.settle(&mut self.durable).await;
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
