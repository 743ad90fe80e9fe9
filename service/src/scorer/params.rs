//! The scorer's parameters: the newest snapshot per device and model of the partitions
//! this instance scores, read from `iot.model-params` (binary envelopes; records in the
//! format from before model ids are the production model's).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use fleetwatch_models::production::{ConfigCache, Params};
use fleetwatch_protocol::{parse_params_key, DeviceId, ParamsEnvelope};
use parking_lot::RwLock;

use super::ModelMap;
use crate::kafka::{Follower, HandleError, PartitionListener, Record, RecordHandler};
use crate::metrics::Metrics;

/// One device's newest parameters of one model.
#[derive(Debug)]
pub struct DeviceParams {
    pub version: u64,
    pub trained_events: u64,
    pub published_ms: i64,
    pub partition: i32,
    pub params: Params,
    /// Causes damped by users' false-positive verdicts.
    pub damping: Box<[fleetwatch_protocol::Damping]>,
}

/// A device's newest parameters, by model id.
pub type DeviceModels = ModelMap<Arc<DeviceParams>>;

pub type SharedParams = Arc<RwLock<HashMap<DeviceId, DeviceModels>>>;

/// Keeps the newest parameters per device and model.
pub struct ParamsHandler {
    pub params: SharedParams,
    pub metrics: Arc<Metrics>,
    /// The models' configurations: one copy each, shared by the devices' parameters.
    configs: ConfigCache,
}

impl ParamsHandler {
    pub fn new(params: SharedParams, metrics: Arc<Metrics>) -> Self {
        Self {
            params,
            metrics,
            configs: ConfigCache::default(),
        }
    }

    fn skip(&self, reason: &str) {
        self.metrics
            .skipped
            .with_label_values(&["scorer-params", reason])
            .inc();
    }
}

impl RecordHandler for ParamsHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        // No value: a reader's marker, or a device's tombstone (decommissioned).
        if record.payload.is_empty() {
            if let Some((device_id, model_id)) = parse_params_key(&record.key_str()) {
                let mut known = self.params.write();
                if let Some(models) = known.get_mut(&device_id) {
                    models.remove(&model_id);
                    if models.is_empty() {
                        known.remove(&device_id);
                    }
                }
            }
            return Ok(());
        }
        let envelope = match ParamsEnvelope::decode(record.payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::warn!(%error, partition = record.partition, offset = record.offset, "undecodable parameters skipped");
                self.skip("undecodable");
                return Ok(());
            }
        };
        let params = match Params::from_bytes_with(&envelope.params, &mut self.configs) {
            Ok(params) => params,
            Err(error) => {
                tracing::warn!(device = %envelope.device_id, %error, "parameters skipped");
                self.skip("incompatible");
                return Ok(());
            }
        };
        self.metrics.params_received.inc();
        let mut known = self.params.write();
        let models = known.entry(envelope.device_id).or_default();
        let newer = models
            .get(&envelope.model_id)
            .is_none_or(|current| current.version < envelope.version);
        if newer {
            let device = DeviceParams {
                version: envelope.version,
                trained_events: envelope.trained_events,
                published_ms: envelope.published_ms,
                partition: record.partition,
                params,
                damping: envelope.damping.into_boxed_slice(),
            };
            models.insert(envelope.model_id, Arc::new(device));
        }
        Ok(())
    }
}

/// Makes the parameters reader follow the scoring consumer's partitions, and forgets
/// the parameters of devices no longer scored here.
pub struct ParamsFollower {
    pub follower: Follower,
    pub params: SharedParams,
}

impl PartitionListener for ParamsFollower {
    fn revoked(&self, _partitions: &[i32], lost: bool) {
        if lost {
            self.assigned(&[]);
        }
    }

    fn assigned(&self, partitions: &[i32]) {
        let owned: HashSet<i32> = partitions.iter().copied().collect();
        self.params.write().retain(|_, models| {
            models.retain(|_, device| owned.contains(&device.partition));
            !models.is_empty()
        });
        self.follower.follow(partitions);
    }
}
