//! The scorer's parameters: the newest snapshot per device of the partitions this
//! instance scores, read from `iot.model-params` (binary envelopes).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use fleetwatch_models::production::Params;
use fleetwatch_protocol::{DeviceId, ParamsEnvelope};
use parking_lot::RwLock;

use crate::kafka::{Follower, HandleError, PartitionListener, Record, RecordHandler};
use crate::metrics::Metrics;

/// One device's newest parameters.
#[derive(Debug)]
pub struct DeviceParams {
    pub version: u64,
    pub trained_events: u64,
    pub published_ms: i64,
    pub partition: i32,
    pub params: Params,
    /// Causes damped by users' false-positive verdicts.
    pub damping: Vec<fleetwatch_protocol::Damping>,
}

pub type SharedParams = Arc<RwLock<HashMap<DeviceId, Arc<DeviceParams>>>>;

/// Keeps the newest parameters per device.
pub struct ParamsHandler {
    pub params: SharedParams,
    pub metrics: Arc<Metrics>,
}

impl ParamsHandler {
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
            if let Ok(device_id) = DeviceId::parse(&record.key_str()) {
                self.params.write().remove(&device_id);
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
        let params = match Params::from_bytes(&envelope.params) {
            Ok(params) => params,
            Err(error) => {
                tracing::warn!(device = %envelope.device_id, %error, "parameters skipped");
                self.skip("incompatible");
                return Ok(());
            }
        };
        self.metrics.params_received.inc();
        let mut known = self.params.write();
        let newer = known
            .get(&envelope.device_id)
            .is_none_or(|current| current.version < envelope.version);
        if newer {
            let device = DeviceParams {
                version: envelope.version,
                trained_events: envelope.trained_events,
                published_ms: envelope.published_ms,
                partition: record.partition,
                params,
                damping: envelope.damping,
            };
            known.insert(envelope.device_id, Arc::new(device));
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
        self.params
            .write()
            .retain(|_, device| owned.contains(&device.partition));
        self.follower.follow(partitions);
    }
}
