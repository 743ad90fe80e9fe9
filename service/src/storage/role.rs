//! The storage role as the process starts it: one consumer of everything it stores.

use std::time::Duration;

use fleetwatch_protocol::Topic;

use super::{StorageHandler, Store};
use crate::app::{holds_partitions, Launch, Membership, RoleSpec};
use crate::error::{Error, Result};
use crate::kafka::{ConsumerRole, RoleConsumer, StartAt};
use crate::metrics::Metrics;

pub const ROLE: RoleSpec = RoleSpec {
    name: "storage",
    summary: "writes readings with their scores, alerts, connectivity changes and command steps to a time-series store (InfluxDB v2 write API); commits once the store confirmed them",
    consumes: &[
        Topic::Telemetry,
        Topic::Scores,
        Topic::Alerts,
        Topic::DeviceState,
    ],
    produces: &[],
    membership: Membership::Group("storage"),
    start,
    ready,
};

fn start(launch: &mut Launch<'_>) -> Result<()> {
    let config = &launch.settings.storage;
    let kafka = &launch.settings.kafka;
    let store = Store::influx(config).map_err(Error::Config)?;
    let topics: Vec<String> = ROLE
        .consumes
        .iter()
        .map(|&topic| launch.topics.of(topic))
        .collect();
    let topic_names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let consumer = RoleConsumer::subscribe(
        kafka,
        ConsumerRole::Storage,
        &kafka.group_id("storage"),
        &topic_names,
        StartAt::Earliest,
        launch.metrics.clone(),
        None,
    )?;
    let handler = StorageHandler::new(
        store,
        &launch.topics,
        config.batch_points,
        Duration::from_millis(config.flush_interval_ms),
        launch.metrics.clone(),
    );
    launch.consume("storage", consumer, handler);
    tracing::info!(url = %config.url, "storage writes to the time-series store");
    Ok(())
}

/// Ready while holding partitions. Whether the store took the last write (or probe) is
/// reported (`store_up`) but does not make the process unready: restarting or unrouting
/// the role would not bring the store back, and the role catches up by itself.
fn ready(metrics: &Metrics) -> (bool, serde_json::Value) {
    let (holding, mut detail) = holds_partitions(metrics, &["storage"]);
    detail["store_up"] = (metrics.storage_up.get() == 1).into();
    detail["buffered_points"] = metrics.storage_buffered.get().into();
    (holding, detail)
}
