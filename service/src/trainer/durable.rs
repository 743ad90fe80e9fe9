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
use std::time::Duration;

use fleetwatch_models::production::{self, ModelTrainer};
use fleetwatch_models::Trainer;
use fleetwatch_protocol::{now_ms, DeviceId, ParamsEnvelope};

use super::{DeviceModel, Outgoing, SharedModels};
use crate::error::Result;
use crate::kafka::{PartitionListener, PartitionReader, Producer, ScanFrom};
use crate::metrics::Metrics;

/// How long a revoked partition's checkpoints may take to reach Kafka.
const REVOKE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The checkpoint record of a device's model: the binary envelope of
/// `iot.model-params`, carrying the trainer's state instead of the scorer's parameters.
pub(super) fn checkpoint(topic: &str, device_id: &DeviceId, model: &mut DeviceModel) -> Outgoing {
    model.since_checkpoint = 0;
    model.dirty = false;
    let envelope = ParamsEnvelope {
        device_id: device_id.clone(),
        version: model.version,
        trained_events: model.trainer.events(),
        published_ms: now_ms(),
        params: model.trainer.state_bytes(),
    };
    (topic.to_owned(), device_id.to_string(), envelope.encode())
}

/// Checkpoints of every model that learned something since its last checkpoint
/// (published or not: the readings' offsets are committed, so nobody learns them again).
pub(super) fn stale_checkpoints(topic: &str, models: &SharedModels) -> Vec<Outgoing> {
    let mut models = models.lock();
    models
        .devices
        .iter_mut()
        .filter(|(_, model)| model.dirty)
        .map(|(device_id, model)| checkpoint(topic, device_id, model))
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
        config: &production::Config,
    ) -> Result<()> {
        if models.lock().restored.contains(&partition) {
            return Ok(());
        }
        let versions = self.newest_versions(partition).await?;
        let states = self.newest_states(partition).await?;
        let mut restored = 0;
        let mut models = models.lock();
        for (device_id, version) in versions {
            let trainer = match states.get(&device_id) {
                Some(state) => match ModelTrainer::from_state_bytes(config.clone(), state) {
                    Ok(trainer) => trainer,
                    Err(error) => {
                        tracing::warn!(device = %device_id, %error, "checkpoint unusable; the model starts afresh");
                        self.skipped("unusable_checkpoint");
                        production::trainer(config)
                    }
                },
                None => production::trainer(config),
            };
            restored += 1;
            let model = DeviceModel::new(trainer, partition, version);
            models.devices.insert(device_id, model);
        }
        models.restored.insert(partition);
        tracing::info!(partition, restored, "trainer models restored");
        Ok(())
    }

    /// The newest version each device of `partition` reached, on either topic.
    async fn newest_versions(&self, partition: i32) -> Result<HashMap<DeviceId, u64>> {
        let mut newest: HashMap<DeviceId, u64> = HashMap::new();
        for reader in [&self.params, &self.states] {
            reader
                .scan(partition, ScanFrom::Beginning, |_, key, payload| {
                    if payload.is_empty() {
                        forget(&mut newest, key);
                        return false;
                    }
                    match ParamsEnvelope::decode(payload) {
                        Ok(envelope) => {
                            let version = newest.entry(envelope.device_id).or_default();
                            *version = (*version).max(envelope.version);
                        }
                        Err(_) => self.skipped("undecodable"),
                    }
                    false
                })
                .await?;
        }
        Ok(newest)
    }

    /// Each device's newest checkpointed state in `partition`.
    async fn newest_states(&self, partition: i32) -> Result<HashMap<DeviceId, Vec<u8>>> {
        let mut newest: HashMap<DeviceId, (u64, Vec<u8>)> = HashMap::new();
        self.states
            .scan(partition, ScanFrom::Beginning, |_, key, payload| {
                if payload.is_empty() {
                    forget(&mut newest, key);
                    return false;
                }
                if let Ok(envelope) = ParamsEnvelope::decode(payload) {
                    let known = newest.get(&envelope.device_id).map(|(v, _)| *v);
                    if known.is_none_or(|v| v <= envelope.version) {
                        newest.insert(envelope.device_id, (envelope.version, envelope.params));
                    }
                }
                false
            })
            .await?;
        Ok(newest
            .into_iter()
            .map(|(id, (_, state))| (id, state))
            .collect())
    }

    fn skipped(&self, reason: &str) {
        self.metrics
            .skipped
            .with_label_values(&["trainer", reason])
            .inc();
    }
}

/// A device's tombstone (a record without a value): it was decommissioned.
fn forget<T>(newest: &mut HashMap<DeviceId, T>, key: &str) {
    if let Ok(device_id) = DeviceId::parse(key) {
        newest.remove(&device_id);
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
        for (topic, key, payload) in stale_checkpoints(&self.state_topic, &self.models) {
            // The delivery is awaited by the flush below.
            let _ = self.producer.enqueue_now(&topic, &key, &payload);
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
