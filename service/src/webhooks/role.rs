//! The webhooks role as the process starts it: one consumer group on `iot.alarms` and
//! `iot.rule-actions`.

use fleetwatch_protocol::Topic;

use super::WebhookHandler;
use crate::app::{holds_partitions, Launch, Membership, RoleSpec};
use crate::error::{Error, Result};
use crate::kafka::{ConsumerRole, RoleConsumer, StartAt};
use crate::metrics::Metrics;

pub const ROLE: RoleSpec = RoleSpec {
    name: "webhooks",
    summary: "delivers each alarm event, and each notification an alarm rule performed, to the webhooks of its tenant (signed POST, retries with backoff, bounded outbox) and records each outcome; commits once delivered or given up",
    consumes: &[Topic::Alarms, Topic::RuleActions],
    produces: &[Topic::WebhookDeliveries],
    membership: Membership::Group("webhooks"),
    start,
    ready,
};

fn start(launch: &mut Launch<'_>) -> Result<()> {
    let config = &launch.settings.webhooks;
    let kafka = &launch.settings.kafka;
    // From the beginning for a new group: `max_event_age_ms` keeps old events from
    // being delivered, and nothing written before the first commit is skipped.
    let consumer = RoleConsumer::subscribe(
        kafka,
        ConsumerRole::Webhooks,
        &kafka.group_id("webhooks"),
        &[&launch.topics.alarms(), &launch.topics.rule_actions()],
        StartAt::Earliest,
        launch.metrics.clone(),
        None,
    )?;
    let handler = WebhookHandler::new(
        config,
        launch.producer.clone(),
        &launch.topics,
        launch.metrics.clone(),
        launch.shutdown.clone(),
    )
    .map_err(Error::Config)?;
    launch.consume("webhooks", consumer, handler);
    tracing::info!(
        endpoints = config.endpoints.len(),
        "webhooks deliver alarm events"
    );
    Ok(())
}

/// Ready while holding partitions; the outbox's size is reported, not judged (a
/// receiver that is down is not this process's fault).
fn ready(metrics: &Metrics) -> (bool, serde_json::Value) {
    let (holding, mut detail) = holds_partitions(metrics, &["webhooks"]);
    detail["outbox"] = metrics.webhook_outbox.get().into();
    (holding, detail)
}
