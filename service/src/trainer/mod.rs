//! The trainer role: consumes `iot.telemetry` (group `trainer`), updates each device's
//! online model and publishes versioned parameter snapshots to `iot.model-params`.
//!
//! Publications are not awaited per event: parameters are derived state, refreshed every
//! few events, so a lost publication is replaced by the next one. Failures are counted.
//!
//! Every device has its production model and, beside it, the candidates the model
//! registry names for it (`shadow::Registry::models_for`: in shadow for it, promoted for
//! it, or what a rollback would restore), each trained with its own configuration and
//! published under its own key (`params_key`: device and model) to the device's
//! telemetry partition, with versions counted per (device, model).
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
    now_ms, params_key, Damping, DeviceId, Feedback, KafkaTopics, ModelId, ParamsEnvelope,
    SequenceTracker, TenantId, Verdict, PRODUCTION_MODEL,
};
use parking_lot::Mutex;
use prometheus::IntCounter;

pub use config::TrainerConfig;
pub use durable::{Checkpoints, TrainerPartitions};
pub use role::ROLE;

use crate::kafka::{
    decode_model_input, decode_record, HandleError, ModelInput, Producer, Record, RecordHandler,
};
use crate::metrics::Metrics;
use crate::shadow::ModelRegistry;

/// A device and one of its models.
pub type ModelKey = (DeviceId, ModelId);

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
    /// Causes users marked as false positives, published with the parameters (a boxed
    /// slice: verdicts are rare, and every device keeps one).
    damping: Box<[Damping]>,
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
            damping: Box::default(),
        }
    }
}

/// The models of the partitions this instance owns; shared with the rebalance listener.
#[derive(Default)]
pub struct Models {
    /// Boxed: a map keeps room for more entries than it holds (up to twice as many),
    /// and an empty slot costs the pointer, not the whole model (about 560 bytes).
    devices: HashMap<ModelKey, Box<DeviceModel>>,
    /// Partitions whose models were read back from the checkpoints.
    restored: HashSet<i32>,
}

pub type SharedModels = Arc<Mutex<Models>>;

/// A record to produce: (topic, partition, key, payload).
type Outgoing = (String, i32, String, Vec<u8>);

pub struct TrainerHandler {
    config: TrainerConfig,
    /// `config.model`, shared by every device's production model.
    production: Arc<production::Config>,
    params_topic: String,
    feedback_topic: String,
    state_topic: String,
    producer: Producer,
    metrics: Arc<Metrics>,
    models: SharedModels,
    checkpoints: Checkpoints,
    registry: Arc<ModelRegistry>,
    /// Production's update counters, looked up once: every reading counts in them.
    production_updates: (IntCounter, IntCounter),
}

impl TrainerHandler {
    pub fn new(
        config: TrainerConfig,
        topics: &KafkaTopics,
        producer: Producer,
        checkpoints: Checkpoints,
        models: SharedModels,
        registry: Arc<ModelRegistry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let production_updates = (
            (metrics.trainer_model_updates).with_label_values(&[PRODUCTION_MODEL]),
            (metrics.trainer_model_micros).with_label_values(&[PRODUCTION_MODEL]),
        );
        Self {
            production_updates,
            production: Arc::new(config.model.clone()),
            config,
            params_topic: topics.model_params(),
            feedback_topic: topics.feedback(),
            state_topic: topics.trainer_state(),
            producer,
            metrics,
            models,
            checkpoints,
            registry,
        }
    }

    /// The records a publication of a device's model makes: its parameters, and a
    /// checkpoint of the model every `checkpoint_every_publications`.
    fn publication(
        &self,
        (device_id, model_id): &ModelKey,
        model: &mut DeviceModel,
    ) -> Vec<Outgoing> {
        model.version += 1;
        model.unpublished = 0;
        model.last_published = Instant::now();
        model.since_checkpoint += 1;
        let envelope = ParamsEnvelope {
            device_id: device_id.clone(),
            model_id: model_id.to_string(),
            version: model.version,
            trained_events: model.trainer.events(),
            published_ms: now_ms(),
            damping: model.damping.to_vec(),
            params: model.trainer.snapshot().to_bytes(),
        };
        let mut records = vec![(
            self.params_topic.clone(),
            model.partition,
            params_key(device_id, model_id),
            envelope.encode(),
        )];
        if model.since_checkpoint >= self.config.checkpoint_every_publications {
            let key = (device_id.clone(), model_id.clone());
            records.push(durable::checkpoint(&self.state_topic, &key, model));
        }
        records
    }

    async fn send(&self, records: Vec<Outgoing>) {
        for (topic, partition, key, payload) in records {
            let delivery = (self.producer)
                .enqueue_to(&topic, partition, &key, &payload)
                .await;
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

    /// Learn from one reading with each of the device's models; the records to produce
    /// for those whose publication is due.
    fn learn(
        &self,
        device_id: &DeviceId,
        tenant: Option<&TenantId>,
        partition: i32,
        telemetry: &fleetwatch_protocol::TelemetryPayload,
    ) -> Vec<Outgoing> {
        // Production, then the candidates the registry names (none, and no lock taken,
        // while no candidate exists).
        let mut wanted = vec![(ModelId::production(), None)];
        if self.registry.has_candidates() {
            self.registry.read(|registry| {
                let candidates = registry.models_for(device_id, tenant).into_iter();
                wanted.extend(
                    candidates.map(|c| (ModelId::new(c.model_id.as_str()), Some(c.config.clone()))),
                );
            });
        }
        let mut models = self.models.lock();
        let mut records = Vec::new();
        for (model_id, config) in wanted {
            let key = (device_id.clone(), model_id);
            if !models.devices.contains_key(&key) {
                let config = config.as_ref().unwrap_or(&self.production);
                let model = DeviceModel::new(production::shared_trainer(config), partition, 0);
                models.devices.insert(key.clone(), Box::new(model));
            }
            let model = models.devices.get_mut(&key).expect("inserted above");
            if self.learn_one(&key, model, telemetry) {
                records.extend(self.publication(&key, model));
            }
        }
        records
    }

    /// Learn one reading with one model: whether its publication is due.
    fn learn_one(
        &self,
        (_, model_id): &ModelKey,
        model: &mut DeviceModel,
        telemetry: &fleetwatch_protocol::TelemetryPayload,
    ) -> bool {
        if !model.sequence.accept(telemetry.seq) {
            self.metrics
                .skipped
                .with_label_values(&["trainer", "duplicate"])
                .inc();
            return false;
        }
        let started = Instant::now();
        model.trainer.update(&Observation {
            ts_ms: telemetry.ts,
            metrics: &telemetry.metrics,
        });
        let spent = started.elapsed().as_micros() as u64;
        if model_id == PRODUCTION_MODEL {
            let (updates, micros) = &self.production_updates;
            updates.inc();
            micros.inc_by(spent);
        } else {
            let labels = [model_id.as_str()];
            (self
                .metrics
                .trainer_model_updates
                .with_label_values(&labels))
            .inc();
            (self.metrics.trainer_model_micros.with_label_values(&labels)).inc_by(spent);
        }
        model.unpublished += 1;
        model.dirty = true;
        model.unpublished >= self.config.publish_every_events
            || model.last_published.elapsed() >= Duration::from_millis(self.config.publish_every_ms)
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
        // Every model of the device learns the verdict: it is about the device's
        // behaviour, whichever model raised the alarm.
        let records: Vec<Outgoing> = {
            let mut models = self.models.lock();
            let mine = (models.devices.iter_mut()).filter(|((id, _), _)| *id == feedback.device_id);
            mine.flat_map(|(key, model)| {
                let mut damping = std::mem::take(&mut model.damping).into_vec();
                learn_verdict(&mut damping, &feedback, self.config.model.threshold);
                model.damping = damping.into_boxed_slice();
                model.dirty = true;
                self.publication(key, model)
            })
            .collect()
        };
        self.send(records).await;
        Ok(())
    }

    /// A decommissioned device: drop its model and tombstone its parameters and
    /// checkpoint, so neither comes back after a restart; a device that returns with
    /// the same id starts a fresh model.
    async fn forget(&self, device_id: &DeviceId, partition: i32) -> Result<(), HandleError> {
        let mut keys = vec![device_id.to_string()];
        self.models.lock().devices.retain(|(id, model_id), _| {
            if id == device_id && model_id != PRODUCTION_MODEL {
                keys.push(params_key(id, model_id));
            }
            id != device_id
        });
        let mut deliveries = Vec::with_capacity(keys.len() * 2);
        for key in &keys {
            deliveries.push((self.producer).enqueue_empty(&self.params_topic, partition, key));
            deliveries.push((self.producer).enqueue_empty(&self.state_topic, partition, key));
        }
        for delivery in deliveries {
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
        let key = (device_id.clone(), ModelId::production());
        if let Some(model) = self.models.lock().devices.get_mut(&key) {
            model.last_published = model
                .last_published
                .checked_sub(ago)
                .expect("the monotonic clock started long enough ago");
        }
    }
}

impl RecordHandler for TrainerHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        // Which candidates a device has, and their configurations, come from it.
        if !self.registry.loading.is_loaded() {
            return Err(HandleError::Retry(
                "the model registry (iot.models) is still being read".into(),
            ));
        }
        // A new owner reads the partition's checkpoints before training on it.
        self.checkpoints
            .ensure_restored(
                record.partition,
                &self.models,
                &self.production,
                &self.registry,
            )
            .await
            .map_err(|error| HandleError::Retry(error.to_string()))?;
        if record.topic == self.feedback_topic {
            return self.learn_feedback(record).await;
        }
        match decode_model_input(record, "trainer", &self.metrics) {
            Some(ModelInput::Reading {
                device_id,
                tenant,
                telemetry,
            }) => {
                let records = self.learn(&device_id, tenant.as_ref(), record.partition, &telemetry);
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
        for (topic, partition, key, payload) in records {
            deliveries.push(
                (self.producer)
                    .enqueue_to(&topic, partition, &key, &payload)
                    .await,
            );
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
