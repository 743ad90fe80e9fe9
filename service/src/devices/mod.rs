//! The devices role: consumes `iot.telemetry` (its own partitions, group `devices`) and
//! hands each event to the device's actor, waiting for the actor to apply it before the
//! offset is stored.

mod actor;
mod config;
mod registry;

use std::sync::Arc;

use fleetwatch_protocol::DeviceEvent;
use rdkafka::message::BorrowedMessage;

pub use actor::{ApplyEvent, DeviceActor, DeviceSnapshot, GetSnapshot};
pub use config::DevicesConfig;
pub use registry::DeviceRegistry;

use crate::kafka::{decode_record, HandleError, RecordHandler};
use crate::metrics::Metrics;

pub struct DevicesHandler {
    pub registry: Arc<DeviceRegistry>,
    pub metrics: Arc<Metrics>,
}

impl RecordHandler for DevicesHandler {
    async fn handle(&mut self, record: &BorrowedMessage<'_>) -> Result<(), HandleError> {
        let Some(event) = decode_record::<DeviceEvent>(record, "devices", &self.metrics) else {
            return Ok(());
        };
        let actor = self.registry.get_or_start(&event.device_id);
        match actor.send(ApplyEvent(event)).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.metrics
                    .skipped
                    .with_label_values(&["devices", "duplicate"])
                    .inc();
                Ok(())
            }
            Err(error) => Err(HandleError::Fatal(format!(
                "device actor unreachable: {error}"
            ))),
        }
    }
}
