//! The trainer role: consumes `iot.telemetry` (group `trainer`), updates each device's
//! online model and publishes versioned parameter snapshots to `iot.model-params`.
//!
//! Publications are not awaited per event: parameters are derived state, refreshed every
//! few events, so a lost publication is replaced by the next one. Failures are counted.
//!
//! Training is durable (`durable.rs`): each device's model is checkpointed to
//! `iot.trainer-state` every few publications and whenever its partition is taken away
//! or the process stops; a new owner of a partition restores every model from there
//! before it handles anything of the partition, and continues the version count from the
//! newest parameters published, so versions never go backwards.

mod config;
mod durable;
mod role;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetwatch_models::production::{self, ModelTrainer};
use fleetwatch_models::{Observation, Trainer};
use fleetwatch_protocol::{
    now_ms, Damping, DeviceId, Feedback, KafkaTopics, ParamsEnvelope, SequenceTracker, Verdict,
};
use parking_lot::Mutex;

pub use config::TrainerConfig;
pub use durable::{Checkpoints, TrainerPartitions};
pub use role::ROLE;

use crate::kafka::{
    decode_model_input, decode_record, HandleError, ModelInput, Producer, Record, RecordHandler,
};
use crate::metrics::Metrics;

struct DeviceModel {
    trainer: ModelTrainer,
    partition: i32,
    sequence: SequenceTracker,
    version: u64,
    unpublished: u32,
    last_published: Instant,
    /// Publications since the last checkpoint (its cadence).
    since_checkpoint: u32,
    /// Learned something the last checkpoint does not hold.
    dirty: bool,
    /// Causes users marked as false positives, published with the parameters.
    damping: Vec<Damping>,
}

impl DeviceModel {
    fn new(trainer: ModelTrainer, partition: i32, version: u64) -> Self {
        Self {
            trainer,
            partition,
            sequence: SequenceTracker::default(),
            version,
            unpublished: 0,
            last_published: Instant::now(),
            since_checkpoint: 0,
            dirty: false,
            damping: Vec::new(),
        }
    }
}

/// The models of the partitions this instance owns; shared with the rebalance listener.
#[derive(Default)]
pub struct Models {
    devices: HashMap<DeviceId, DeviceModel>,
    /// Partitions whose models were read back from the checkpoints.
    restored: HashSet<i32>,
}

pub type SharedModels = Arc<Mutex<Models>>;

/// A record to produce: (topic, key, payload).
type Outgoing = (String, String, Vec<u8>);

pub struct TrainerHandler {
    config: TrainerConfig,
    params_topic: String,
    feedback_topic: String,
    state_topic: String,
    producer: Producer,
    metrics: Arc<Metrics>,
    models: SharedModels,
    checkpoints: Checkpoints,
}

impl TrainerHandler {
    pub fn new(
        config: TrainerConfig,
        topics: &KafkaTopics,
        producer: Producer,
        checkpoints: Checkpoints,
        models: SharedModels,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config,
            params_topic: topics.model_params(),
            feedback_topic: topics.feedback(),
            state_topic: topics.trainer_state(),
            producer,
            metrics,
            models,
            checkpoints,
        }
    }

    /// The records a publication of `device_id` makes: its parameters, and a checkpoint
    /// of its model every `checkpoint_every_publications`.
    fn publication(&self, device_id: &DeviceId, model: &mut DeviceModel) -> Vec<Outgoing> {
        model.version += 1;
        model.unpublished = 0;
        model.last_published = Instant::now();
        model.since_checkpoint += 1;
        let envelope = ParamsEnvelope {
            device_id: device_id.clone(),
            version: model.version,
            trained_events: model.trainer.events(),
            published_ms: now_ms(),
            damping: model.damping.clone(),
            params: model.trainer.snapshot().to_bytes(),
        };
        let mut records = vec![(
            self.params_topic.clone(),
            device_id.to_string(),
            envelope.encode(),
        )];
        if model.since_checkpoint >= self.config.checkpoint_every_publications {
            records.push(durable::checkpoint(&self.state_topic, device_id, model));
        }
        records
    }

    async fn send(&self, records: Vec<Outgoing>) {
        for (topic, key, payload) in records {
            let delivery = self.producer.enqueue(&topic, &key, &payload).await;
            if topic == self.params_topic {
                self.metrics.params_published.inc();
            }
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                if let Err(error) = delivery.confirmed().await {
                    tracing::warn!(%error, %topic, "trainer publication lost; the next one replaces it");
                    metrics
                        .skipped
                        .with_label_values(&["trainer", "publish_failed"])
                        .inc();
                }
            });
        }
    }

    /// Learn from one reading; the records to produce if a publication is due.
    fn learn(
        &self,
        device_id: &DeviceId,
        partition: i32,
        telemetry: &fleetwatch_protocol::TelemetryPayload,
    ) -> Vec<Outgoing> {
        let mut models = self.models.lock();
        let model = models.devices.entry(device_id.clone()).or_insert_with(|| {
            DeviceModel::new(production::trainer(&self.config.model), partition, 0)
        });
        if !model.sequence.accept(telemetry.seq) {
            self.metrics
                .skipped
                .with_label_values(&["trainer", "duplicate"])
                .inc();
            return Vec::new();
        }
        model.trainer.update(&Observation {
            ts_ms: telemetry.ts,
            metrics: &telemetry.metrics,
        });
        model.unpublished += 1;
        model.dirty = true;
        let due = model.unpublished >= self.config.publish_every_events
            || model.last_published.elapsed()
                >= Duration::from_millis(self.config.publish_every_ms);
        if due {
            self.publication(device_id, model)
        } else {
            Vec::new()
        }
    }
}

/// How a verdict changes a device's damping of `cause`. A false positive damps it just
/// enough that the alarm's peak would have stayed 10% below the threshold, never below
/// [`Damping::MIN_FACTOR`] (a strong fault of the same cause still alarms, and other
/// causes and metrics are untouched), fading back over [`Damping::FADE_MS`]; another
/// false positive starts the fade again from the stronger of the two. A true positive
/// removes it.
pub fn learn_verdict(damping: &mut Vec<Damping>, feedback: &Feedback, threshold: f64) {
    let Some(cause) = &feedback.cause else {
        return;
    };
    let current = damping.iter().position(|d| &d.cause == cause);
    match feedback.verdict {
        Verdict::TruePositive => {
            if let Some(index) = current {
                damping.remove(index);
            }
        }
        Verdict::FalsePositive => {
            let wanted = (threshold / (feedback.peak_score.max(threshold) * 1.1)) as f32;
            let before = current.map_or(1.0, |i| damping[i].factor_at(feedback.at_ms) as f32);
            let entry = Damping {
                cause: cause.clone(),
                factor: wanted.min(before).max(Damping::MIN_FACTOR),
                since_ms: feedback.at_ms,
            };
            match current {
                Some(index) => damping[index] = entry,
                None => damping.push(entry),
            }
        }
    }
}

impl TrainerHandler {
    /// A user's verdict on one of the device's alarms: adapt its damping and publish at
    /// once, so scorers use it from their next event on.
    async fn learn_feedback(&self, record: &Record<'_>) -> Result<(), HandleError> {
        let Some(feedback) = decode_record::<Feedback>(record, "trainer", &self.metrics) else {
            return Ok(());
        };
        let records = {
            let mut models = self.models.lock();
            let Some(model) = models.devices.get_mut(&feedback.device_id) else {
                return Ok(());
            };
            learn_verdict(&mut model.damping, &feedback, self.config.model.threshold);
            model.dirty = true;
            self.publication(&feedback.device_id, model)
        };
        self.send(records).await;
        Ok(())
    }

    /// A decommissioned device: drop its model and tombstone its parameters and
    /// checkpoint, so neither comes back after a restart; a device that returns with
    /// the same id starts a fresh model.
    async fn forget(&self, device_id: &DeviceId, partition: i32) -> Result<(), HandleError> {
        self.models.lock().devices.remove(device_id);
        let key = device_id.as_str();
        let params = self
            .producer
            .enqueue_empty(&self.params_topic, partition, key);
        let state = self
            .producer
            .enqueue_empty(&self.state_topic, partition, key);
        for delivery in [params, state] {
            delivery
                .confirmed()
                .await
                .map_err(|error| HandleError::Retry(error.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
impl TrainerHandler {
    /// Move `device_id`'s last publication `ago` further into the past, as if that much
    /// time had passed: lets tests reach `publish_every_ms` without sleeping. (tokio's
    /// paused clock would not do: the handler reads `std::time::Instant`.)
    pub(crate) fn backdate_last_publication(&mut self, device_id: &DeviceId, ago: Duration) {
        if let Some(model) = self.models.lock().devices.get_mut(device_id) {
            model.last_published = model
                .last_published
                .checked_sub(ago)
                .expect("the monotonic clock started long enough ago");
        }
    }
}

impl RecordHandler for TrainerHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        // A new owner reads the partition's checkpoints before training on it.
        self.checkpoints
            .ensure_restored(record.partition, &self.models, &self.config.model)
            .await
            .map_err(|error| HandleError::Retry(error.to_string()))?;
        if record.topic == self.feedback_topic {
            return self.learn_feedback(record).await;
        }
        match decode_model_input(record, "trainer", &self.metrics) {
            Some(ModelInput::Reading {
                device_id,
                telemetry,
                ..
            }) => {
                let records = self.learn(&device_id, record.partition, &telemetry);
                self.send(records).await;
                Ok(())
            }
            Some(ModelInput::Forget(device_id)) => self.forget(&device_id, record.partition).await,
            None => Ok(()),
        }
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(
            (self.config.publish_every_ms / 2).max(50),
        ))
    }

    /// Publish devices that have news but have not reached the event count in time.
    async fn on_tick(&mut self) -> Result<(), HandleError> {
        let every = Duration::from_millis(self.config.publish_every_ms);
        let records: Vec<Outgoing> = {
            let mut models = self.models.lock();
            let due = models.devices.iter_mut().filter(|(_, model)| {
                model.unpublished > 0 && model.last_published.elapsed() >= every
            });
            due.flat_map(|(device_id, model)| self.publication(device_id, model))
                .collect()
        };
        self.send(records).await;
        Ok(())
    }

    /// Checkpoint every model with news, and wait for Kafka to confirm: a restart then
    /// continues exactly where this process stopped.
    async fn on_shutdown(&mut self) {
        let records = durable::stale_checkpoints(&self.state_topic, &self.models);
        let count = records.len();
        // Queue them all, then wait: one round trip, not one per device.
        let mut deliveries = Vec::with_capacity(count);
        for (topic, key, payload) in records {
            deliveries.push(self.producer.enqueue(&topic, &key, &payload).await);
        }
        for delivery in deliveries {
            if let Err(error) = delivery.confirmed().await {
                tracing::warn!(%error, "checkpoint at shutdown lost");
            }
        }
        tracing::info!(devices = count, "trainer checkpointed its models");
    }
}

#[cfg(test)]
mod tests;
