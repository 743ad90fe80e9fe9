//! The archive role as the process starts it: one consumer group member on what it
//! archives, committing each uploaded file's offsets at once.

use std::sync::Arc;
use std::time::Duration;

use fleetwatch_protocol::Topic;

use super::{ArchiveHandler, Limits, Revocations, Sink};
use crate::app::{holds_partitions, Launch, Membership, RoleSpec};
use crate::error::{Error, Result};
use crate::kafka::{ConsumerRole, PartitionListener, RoleConsumer, StartAt};
use crate::metrics::Metrics;

pub const ROLE: RoleSpec = RoleSpec {
    name: "archive",
    summary: "writes telemetry, scores, alerts and alarm events as Parquet files partitioned by ingest hour to a directory or S3 (archive.url; idle when unset); commits a file's offsets once it is uploaded",
    consumes: &[Topic::Telemetry, Topic::Scores, Topic::Alerts, Topic::Alarms],
    produces: &[],
    membership: Membership::Group("archive"),
    start,
    ready,
};

fn start(launch: &mut Launch<'_>) -> Result<()> {
    let config = &launch.settings.archive;
    if config.url.is_empty() {
        launch.metrics.archive_enabled.set(0);
        tracing::info!("archive.url is not set: the archive role archives nothing");
        return Ok(());
    }
    let sink = Sink::open(config).map_err(Error::Config)?;
    let kafka = &launch.settings.kafka;
    let topics: Vec<String> = (ROLE.consumes.iter())
        .map(|&topic| launch.topics.of(topic))
        .collect();
    let topic_names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let revocations = Arc::new(Revocations::default());
    let listener: Arc<dyn PartitionListener> = revocations.clone();
    let consumer = RoleConsumer::subscribe(
        kafka,
        ConsumerRole::Archive,
        &kafka.group_id("archive"),
        &topic_names,
        StartAt::Earliest,
        launch.metrics.clone(),
        Some(listener),
    )?;
    let limits = Limits {
        max_file_bytes: config.max_file_bytes,
        max_file_age: Duration::from_millis(config.max_file_age_ms),
    };
    let handler = ArchiveHandler::new(sink, limits, launch.metrics.clone(), revocations);
    launch.metrics.archive_enabled.set(1);
    launch.consume("archive", consumer, handler);
    tracing::info!(url = %config.url, "archive writes Parquet files");
    Ok(())
}

/// Ready while holding partitions, or at once when no archive is configured. Whether the
/// last upload worked is reported (`store_up`), not required: the role catches up by
/// itself when the store answers again.
fn ready(metrics: &Metrics) -> (bool, serde_json::Value) {
    if metrics.archive_enabled.get() == 0 {
        return (true, serde_json::json!({ "enabled": false }));
    }
    let (holding, mut detail) = holds_partitions(metrics, &["archive"]);
    detail["enabled"] = true.into();
    detail["store_up"] = (metrics.archive_up.get() == 1).into();
    detail["buffered_bytes"] = metrics.archive_buffered_bytes.get().into();
    (holding, detail)
}
