//! Durable training: checkpoints of each device's model on `iot.trainer-state`
//! (compacted, co-partitioned with telemetry), and their restoration by whichever
//! instance owns the partition next.
//!
//! A checkpoint is written every `trainer.checkpoint_every_publications` publications,
//! when the partition is revoked (a rebalance) and at shutdown, so a graceful restart or
//! a hand-over loses nothing; after a crash the model continues from its last checkpoint.
//! The version count continues from the newest parameters on `iot.model-params`, which
//! may be newer than the checkpoint: versions never go backwards, so scorers never ignore
//! what the new owner publishes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fleetwatch_models::production::{self, ModelTrainer};
use fleetwatch_models::Trainer;
use fleetwatch_protocol::{
    now_ms, params_key, parse_params_key, ModelId, ParamsEnvelope, PRODUCTION_MODEL,
};

use super::{DeviceModel, ModelKey, Outgoing, SharedModels};
use crate::error::Result;
use crate::kafka::{PartitionListener, PartitionReader, Producer, ScanFrom};
use crate::metrics::Metrics;
use crate::shadow::ModelRegistry;

/// How long a revoked partition's checkpoints may take to reach Kafka.
const REVOKE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The checkpoint record of a device's model: the binary envelope of
/// `iot.model-params`, carrying the trainer's state instead of the scorer's parameters.
pub(super) fn checkpoint(
    topic: &str,
    (device_id, model_id): &ModelKey,
    model: &mut DeviceModel,
) -> Outgoing {
    model.since_checkpoint = 0;
    model.dirty = false;
    let envelope = ParamsEnvelope {
        device_id: device_id.clone(),
        model_id: model_id.to_string(),
        version: model.version,
        trained_events: model.trainer.events(),
        published_ms: now_ms(),
        damping: model.damping.to_vec(),
        params: model.trainer.state_bytes(),
    };
    let key = params_key(device_id, model_id);
    (topic.to_owned(), model.partition, key, envelope.encode())
}

/// Checkpoints of every model that learned something since its last checkpoint
/// (published or not: the readings' offsets are committed, so nobody learns them again).
pub(super) fn stale_checkpoints(topic: &str, models: &SharedModels) -> Vec<Outgoing> {
    let mut models = models.lock();
    models
        .devices
        .iter_mut()
        .filter(|(_, model)| model.dirty)
        .map(|(key, model)| checkpoint(topic, key, model))
        .collect()
}

/// Reads a partition's checkpoints and newest parameter versions back.
pub struct Checkpoints {
    pub params: PartitionReader,
    pub states: PartitionReader,
    pub metrics: std::sync::Arc<Metrics>,
}

impl Checkpoints {
    /// Restore the models of `partition` unless that was done since it was assigned.
    pub async fn ensure_restored(
        &self,
        partition: i32,
        models: &SharedModels,
        config: &Arc<production::Config>,
        registry: &ModelRegistry,
    ) -> Result<()> {
        if models.lock().restored.contains(&partition) {
            return Ok(());
        }
        // Versions from the parameters; models (and their versions) from the checkpoints.
        let published = self.newest(&self.params, partition, false).await?;
        let mut checkpoints = self.newest(&self.states, partition, true).await?;
        let mut devices: HashMap<ModelKey, u64> = published
            .into_iter()
            .map(|(device_id, envelope)| (device_id, envelope.version))
            .collect();
        for (device_id, checkpoint) in &checkpoints {
            let version = devices.entry(device_id.clone()).or_default();
            *version = (*version).max(checkpoint.version);
        }
        let mut models = models.lock();
        let restored = devices.len();
        for (key, version) in devices {
            // A candidate the registry no longer knows is not trained any more.
            let config = match key.1.as_str() {
                PRODUCTION_MODEL => config.clone(),
                model_id => match registry.read(|r| r.get(model_id).map(|c| c.config.clone())) {
                    Some(config) => config,
                    None => continue,
                },
            };
            let (trainer, damping) = match checkpoints.remove(&key) {
                Some(checkpoint) => (
                    self.trainer_from(&key, &checkpoint.params, &config),
                    checkpoint.damping,
                ),
                None => (production::shared_trainer(&config), Vec::new()),
            };
            let mut model = DeviceModel::new(trainer, partition, version);
            model.damping = damping.into_boxed_slice();
            models.devices.insert(key, Box::new(model));
        }
        models.restored.insert(partition);
        tracing::info!(partition, restored, "trainer models restored");
        Ok(())
    }

    fn trainer_from(
        &self,
        (device_id, model_id): &ModelKey,
        state: &[u8],
        config: &Arc<production::Config>,
    ) -> ModelTrainer {
        ModelTrainer::from_state_bytes(config.clone(), state).unwrap_or_else(|error| {
            tracing::warn!(device = %device_id, model = %model_id, %error, "checkpoint unusable; the model starts afresh");
            self.skipped("unusable_checkpoint");
            production::shared_trainer(config)
        })
    }

    /// The newest envelope of each device in `partition` of `reader`'s topic, read once;
    /// a tombstone forgets the device. Without `keep_bytes` only the header is kept.
    async fn newest(
        &self,
        reader: &PartitionReader,
        partition: i32,
        keep_bytes: bool,
    ) -> Result<HashMap<ModelKey, ParamsEnvelope<Vec<u8>>>> {
        let mut newest: HashMap<ModelKey, ParamsEnvelope<Vec<u8>>> = HashMap::new();
        reader
            .scan(partition, ScanFrom::Beginning, |_, key, payload| {
                if payload.is_empty() {
                    if let Some((device_id, model_id)) = parse_params_key(key) {
                        newest.remove(&(device_id, ModelId::new(model_id)));
                    }
                    return false;
                }
                let Ok(mut envelope) = ParamsEnvelope::decode(payload) else {
                    self.skipped("undecodable");
                    return false;
                };
                if !keep_bytes {
                    envelope.params = Vec::new();
                }
                let key = (
                    envelope.device_id.clone(),
                    ModelId::new(envelope.model_id.as_str()),
                );
                let known = newest.get(&key).map(|e| e.version);
                if known.is_none_or(|version| version <= envelope.version) {
                    newest.insert(key, envelope);
                }
                false
            })
            .await?;
        Ok(newest)
    }

    fn skipped(&self, reason: &str) {
        self.metrics
            .skipped
            .with_label_values(&["trainer", reason])
            .inc();
    }
}

/// Keeps the models in step with the partitions the trainer group hands this instance.
pub struct TrainerPartitions {
    pub models: SharedModels,
    pub producer: Producer,
    pub state_topic: String,
}

impl PartitionListener for TrainerPartitions {
    /// Checkpoint before the partitions go: the next owner restores from them.
    fn revoked(&self, _partitions: &[i32], lost: bool) {
        for (topic, partition, key, payload) in stale_checkpoints(&self.state_topic, &self.models) {
            // The delivery is awaited by the flush below.
            let _ = (self.producer).enqueue_to_now(&topic, partition, &key, &payload);
        }
        self.producer.flush_blocking(REVOKE_FLUSH_TIMEOUT);
        if lost {
            self.assigned(&[]);
        }
    }

    /// Keep the models of partitions still owned (nobody else trained them in between);
    /// forget the others, which a later owner restores from their checkpoints.
    fn assigned(&self, partitions: &[i32]) {
        let owned: HashSet<i32> = partitions.iter().copied().collect();
        let mut models = self.models.lock();
        models
            .devices
            .retain(|_, model| owned.contains(&model.partition));
        models
            .restored
            .retain(|partition| owned.contains(partition));
    }
}
