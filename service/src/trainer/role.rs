//! The trainer role as the process starts it.

use fleetwatch_protocol::Topic;

use super::TrainerHandler;
use crate::app::{holds_partitions, Launch, Membership, RoleSpec};
use crate::error::Result;
use crate::kafka::{ConsumerRole, RoleConsumer, StartAt};
use crate::metrics::Metrics;

pub const ROLE: RoleSpec = RoleSpec {
    name: "trainer",
    summary: "one online model per device, trained on its telemetry; publishes versioned parameter snapshots",
    consumes: &[Topic::Telemetry],
    produces: &[Topic::ModelParams],
    membership: Membership::Group("trainer"),
    start,
    ready,
};

fn start(launch: &mut Launch<'_>) -> Result<()> {
    let kafka = &launch.settings.kafka;
    let consumer = RoleConsumer::subscribe(
        kafka,
        ConsumerRole::Trainer,
        &kafka.group_id("trainer"),
        &[&launch.topics.telemetry()],
        StartAt::Earliest,
        launch.metrics.clone(),
        None,
    )?;
    let handler = TrainerHandler::new(
        launch.settings.trainer.clone(),
        &launch.topics,
        launch.producer.clone(),
        launch.metrics.clone(),
    );
    launch.consume("trainer", consumer, handler);
    Ok(())
}

fn ready(metrics: &Metrics) -> (bool, serde_json::Value) {
    holds_partitions(metrics, &["trainer"])
}
