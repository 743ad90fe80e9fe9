//! The trainer role as the process starts it.

use fleetwatch_protocol::Topic;

use std::sync::Arc;

use super::{Checkpoints, SharedModels, TrainerHandler, TrainerPartitions};
use crate::app::{holds_partitions, Launch, Membership, RoleSpec};
use crate::error::Result;
use crate::kafka::{ConsumerRole, PartitionReader, Producer, RoleConsumer, StartAt};
use crate::metrics::Metrics;

pub const ROLE: RoleSpec = RoleSpec {
    name: "trainer",
    summary: "one online model per device, trained on its telemetry; publishes versioned parameter snapshots",
    consumes: &[Topic::Telemetry, Topic::Feedback, Topic::Models],
    produces: &[Topic::ModelParams, Topic::TrainerState],
    membership: Membership::Group("trainer"),
    start,
    ready,
};

fn start(launch: &mut Launch<'_>) -> Result<()> {
    let registry = crate::shadow::start(launch);
    let kafka = &launch.settings.kafka;
    let topics = &launch.topics;
    // The role's own producer: a revoke waits until the checkpoints in flight have
    // landed, which a producer shared with ingest's steady stream never is (devices/role.rs).
    let producer = Producer::new(kafka, launch.metrics.clone())?;
    let reader = |topic: String, name: &str| {
        PartitionReader::new(kafka, topic, name, producer.clone(), &launch.instance)
    };
    let checkpoints = Checkpoints {
        params: reader(topics.model_params(), "trainer-params")?,
        states: reader(topics.trainer_state(), "trainer-state")?,
        metrics: launch.metrics.clone(),
    };
    let models = SharedModels::default();
    let listener = Arc::new(TrainerPartitions {
        models: models.clone(),
        producer: producer.clone(),
        state_topic: topics.trainer_state(),
    });
    let consumer = RoleConsumer::subscribe(
        kafka,
        ConsumerRole::Trainer,
        &kafka.group_id("trainer"),
        &[&topics.telemetry(), &topics.feedback()],
        StartAt::Earliest,
        launch.metrics.clone(),
        Some(listener),
    )?;
    let handler = TrainerHandler::new(
        launch.settings.trainer.clone(),
        topics,
        producer,
        checkpoints,
        models,
        registry,
        launch.metrics.clone(),
    );
    launch.consume("trainer", consumer, handler);
    Ok(())
}

fn ready(metrics: &Metrics) -> (bool, serde_json::Value) {
    holds_partitions(metrics, &["trainer"])
}
