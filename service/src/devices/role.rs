//! The devices role as the process starts it: the twins' changelog, the downlink MQTT
//! client, the actor registry and the consumer of telemetry and commands.

use std::sync::Arc;

use fleetwatch_protocol::Topic;

use super::{Changelog, DevicesHandler};
use crate::app::{holds_partitions, Launch, Membership, RoleSpec};
use crate::error::Result;
use crate::kafka::{ConsumerRole, PartitionReader, Producer, RoleConsumer, StartAt};
use crate::metrics::Metrics;
use crate::mqtt::MqttPublisher;

pub const ROLE: RoleSpec = RoleSpec {
    name: "devices",
    summary: "one actor per device: the twin (reported, desired, delta, connectivity, tenant), its journaled commands and its alarms (the one writer of each); answers REST requests",
    consumes: &[Topic::Telemetry, Topic::Commands, Topic::Alerts],
    produces: &[
        Topic::DeviceState,
        Topic::Replies,
        Topic::DeviceDirectory,
        Topic::Alarms,
        Topic::Feedback,
    ],
    membership: Membership::Group("devices"),
    start,
    ready,
};

fn start(launch: &mut Launch<'_>) -> Result<()> {
    let settings = launch.settings;
    let kafka = &settings.kafka;
    // The role's own producer: a revoke waits until the twins' writes in flight have
    // landed, and a producer shared with ingest's steady stream is never empty, so the
    // wait would always run out (and the late member be rebalanced again and again).
    let producer = Producer::new(kafka, launch.metrics.clone())?;
    let side_topics = super::SideTopics::of(&launch.topics);
    let twin_topics = vec![
        launch.topics.device_state(),
        side_topics.directory.clone(),
        side_topics.alarms.clone(),
        side_topics.feedback.clone(),
    ];
    // A command's journal write and its reply are on a person's path: their producers
    // know their topics before the role says it is ready.
    producer.prepare(twin_topics.clone());
    // The journal writes of commands a person waits on (`Lane::Urgent`).
    let urgent = Producer::urgent(kafka, twin_topics, launch.metrics.clone())?;
    let reader = PartitionReader::new(
        kafka,
        launch.topics.device_state(),
        "devices-changelog",
        producer.clone(),
        &launch.instance,
    )?;
    let changelog = Arc::new(Changelog::new(
        producer,
        urgent,
        reader,
        side_topics,
        launch.metrics.clone(),
    ));
    let downlink = MqttPublisher::start(
        &settings.mqtt,
        "devices",
        settings.devices.downlink_queue,
        launch.metrics.clone(),
        launch.shutdown.clone(),
    )?;
    let registry = Arc::new(super::registry(
        settings.devices.clone(),
        changelog,
        downlink,
        launch.directory.clone(),
        launch.metrics.clone(),
    ));
    let consumer = RoleConsumer::subscribe(
        kafka,
        ConsumerRole::Devices,
        &kafka.group_id("devices"),
        &[
            &launch.topics.telemetry(),
            &launch.topics.commands(),
            &launch.topics.alerts(),
        ],
        StartAt::Earliest,
        launch.metrics.clone(),
        Some(registry.clone()),
    )?;
    let replies = Producer::urgent(kafka, vec![launch.topics.replies()], launch.metrics.clone())?;
    let handler = DevicesHandler {
        registry: registry.clone(),
        commands_topic: launch.topics.commands(),
        alerts_topic: launch.topics.alerts(),
        replies_topic: launch.topics.replies(),
        replies,
        answers: tokio::runtime::Handle::current(),
        metrics: launch.metrics.clone(),
        pending: super::PendingWrites::new(super::MAX_PENDING_WRITES, launch.metrics.clone()),
    };
    launch.consume_on(registry.home_arbiter(), "devices", consumer, handler);
    launch.registry = Some(registry);
    Ok(())
}

/// Ready once it holds partitions and has read their twins back: until then a command
/// for one of its devices would wait for the restore (a first command after start took
/// seconds while later ones took milliseconds).
fn ready(metrics: &Metrics) -> (bool, serde_json::Value) {
    let (holds, mut detail) = holds_partitions(metrics, &["devices"]);
    let unrestored = metrics.device_partitions_unrestored.get();
    detail["unrestored_partitions"] = unrestored.into();
    (holds && unrestored == 0, detail)
}
