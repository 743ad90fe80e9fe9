//! The trainer role: consumes `iot.telemetry` (group `trainer`), updates each device's
//! online model and publishes versioned parameter snapshots to `iot.model-params`.
//!
//! Publications are not awaited per event: parameters are derived state, refreshed every
//! few events, so a lost publication is replaced by the next one. Failures are counted.

mod config;
mod role;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetwatch_models::production::{self, ModelTrainer};
use fleetwatch_models::{Observation, Trainer};
use fleetwatch_protocol::{now_ms, DeviceId, KafkaTopics, ParamsEnvelope, SequenceTracker};

pub use config::TrainerConfig;
pub use role::ROLE;

use crate::kafka::{decode_telemetry, HandleError, Producer, Record, RecordHandler};
use crate::metrics::Metrics;

struct DeviceModel {
    trainer: ModelTrainer,
    sequence: SequenceTracker,
    version: u64,
    unpublished: u32,
    last_published: Instant,
}

pub struct TrainerHandler {
    config: TrainerConfig,
    topic: String,
    producer: Producer,
    metrics: Arc<Metrics>,
    devices: HashMap<DeviceId, DeviceModel>,
}

impl TrainerHandler {
    pub fn new(
        config: TrainerConfig,
        topics: &KafkaTopics,
        producer: Producer,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config,
            topic: topics.model_params(),
            producer,
            metrics,
            devices: HashMap::new(),
        }
    }

    async fn publish(&mut self, device_id: &DeviceId) {
        let Some(model) = self.devices.get_mut(device_id) else {
            return;
        };
        model.version += 1;
        model.unpublished = 0;
        model.last_published = Instant::now();
        let envelope = ParamsEnvelope {
            device_id: device_id.clone(),
            version: model.version,
            trained_events: model.trainer.events(),
            published_ms: now_ms(),
            params: model.trainer.snapshot(),
        };
        let payload = serde_json::to_vec(&envelope).expect("wire types serialize");
        let delivery = self
            .producer
            .enqueue(&self.topic, device_id.as_str(), &payload)
            .await;
        self.metrics.params_published.inc();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            if let Err(error) = delivery.confirmed().await {
                tracing::warn!(%error, "parameter publication lost; the next one replaces it");
                metrics
                    .skipped
                    .with_label_values(&["trainer", "publish_failed"])
                    .inc();
            }
        });
    }
}

#[cfg(test)]
impl TrainerHandler {
    /// Move `device_id`'s last publication `ago` further into the past, as if that much
    /// time had passed: lets tests reach `publish_every_ms` without sleeping. (tokio's
    /// paused clock would not do: the handler reads `std::time::Instant`.)
    pub(crate) fn backdate_last_publication(&mut self, device_id: &DeviceId, ago: Duration) {
        if let Some(model) = self.devices.get_mut(device_id) {
            model.last_published = model
                .last_published
                .checked_sub(ago)
                .expect("the monotonic clock started long enough ago");
        }
    }
}

impl RecordHandler for TrainerHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        let Some((device_id, telemetry)) = decode_telemetry(record, "trainer", &self.metrics)
        else {
            return Ok(());
        };
        let model_config = &self.config.model;
        let model = self
            .devices
            .entry(device_id.clone())
            .or_insert_with(|| DeviceModel {
                trainer: production::trainer(model_config),
                sequence: SequenceTracker::default(),
                version: 0,
                unpublished: 0,
                last_published: Instant::now(),
            });
        if !model.sequence.accept(telemetry.seq) {
            self.metrics
                .skipped
                .with_label_values(&["trainer", "duplicate"])
                .inc();
            return Ok(());
        }
        model.trainer.update(&Observation {
            ts_ms: telemetry.ts,
            metrics: &telemetry.metrics,
        });
        model.unpublished += 1;
        let due = model.unpublished >= self.config.publish_every_events
            || model.last_published.elapsed()
                >= Duration::from_millis(self.config.publish_every_ms);
        if due {
            self.publish(&device_id).await;
        }
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(
            (self.config.publish_every_ms / 2).max(50),
        ))
    }

    /// Publish devices that have news but have not reached the event count in time.
    async fn on_tick(&mut self) -> Result<(), HandleError> {
        let every = Duration::from_millis(self.config.publish_every_ms);
        let due: Vec<DeviceId> = self
            .devices
            .iter()
            .filter(|(_, model)| model.unpublished > 0 && model.last_published.elapsed() >= every)
            .map(|(id, _)| id.clone())
            .collect();
        for device_id in due {
            self.publish(&device_id).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
