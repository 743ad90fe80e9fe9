//! The ingest role as the process starts it.

use fleetwatch_protocol::Topic;

use super::Ingest;
use crate::app::{Launch, Membership, RoleSpec};
use crate::error::Result;
use crate::metrics::Metrics;

pub const ROLE: RoleSpec = RoleSpec {
    name: "ingest",
    summary: "MQTT device messages → Kafka, acknowledged to the broker once Kafka confirmed them; bad input dead-lettered with a reason",
    consumes: &[],
    produces: &[Topic::Telemetry, Topic::Dlq],
    membership: Membership::MqttShared,
    start,
    ready,
};

fn start(launch: &mut Launch<'_>) -> Result<()> {
    let ingest = Ingest {
        config: launch.settings.ingest.clone(),
        mqtt: launch.settings.mqtt.clone(),
        topics: launch.topics.clone(),
        producer: launch.producer.clone(),
        directory: launch.directory.clone(),
        metrics: launch.metrics.clone(),
    };
    let shutdown = launch.shutdown.clone();
    launch
        .tasks
        .spawn(async move { ("ingest", ingest.run(shutdown).await) });
    Ok(())
}

/// Connected to the MQTT broker and subscribed.
fn ready(metrics: &Metrics) -> (bool, serde_json::Value) {
    let subscribed = metrics.ingest_subscribed.get() == 1;
    (subscribed, serde_json::json!({ "subscribed": subscribed }))
}
