//! The schedules role as the process starts it: the reader of `iot.schedules` (every
//! schedule, for REST and as the owners' state) and the group member that owns
//! partitions of `iot.schedules` and fires their schedules.

use std::sync::Arc;

use fleetwatch_protocol::Topic;

use super::owner::{ScheduleLogHandler, SchedulesOwner};
use super::state::ScheduleIndex;
use super::{ScheduleClock, SchedulesApi};
use crate::app::{holds_partitions, Launch, Membership, RoleSpec};
use crate::error::Result;
use crate::jobs::owner::Ownership;
use crate::kafka::{consume, ConsumerRole, RoleConsumer, StartAt};
use crate::metrics::Metrics;

pub const ROLE: RoleSpec = RoleSpec {
    name: "schedules",
    summary: "commands, desired-state patches and fleet jobs at a time or on a cron recurrence in a time zone: records each occurrence (fired, missed, expired, nonexistent local time) before sending its command or creating its job, once per (schedule, occurrence)",
    consumes: &[Topic::Schedules],
    produces: &[Topic::Schedules, Topic::Commands, Topic::Jobs],
    membership: Membership::Group("schedules"),
    start,
    ready,
};

fn start(launch: &mut Launch<'_>) -> Result<()> {
    let settings = launch.settings;
    let kafka = &settings.kafka;
    let config = settings.schedules.clone();
    let clock = ScheduleClock::new(&config);
    let index = Arc::new(ScheduleIndex::new(config.recent_kept));
    let topic = launch.topics.schedules();
    let marker_prefix = format!(
        "{}{}/schedules/",
        crate::kafka::MARKER_PREFIX,
        launch.instance
    );
    read_log(launch, index.clone(), marker_prefix.clone());
    let ownership = Arc::new(Ownership::new(
        launch.producer.clone(),
        topic.clone(),
        marker_prefix,
    ));
    let group = RoleConsumer::subscribe(
        kafka,
        ConsumerRole::Schedules,
        &kafka.group_id("schedules"),
        &[&topic],
        StartAt::Latest,
        launch.metrics.clone(),
        Some(ownership.clone()),
    )?;
    let owner = SchedulesOwner {
        ownership,
        index: index.clone(),
        producer: launch.producer.clone(),
        schedules_topic: topic.clone(),
        commands_topic: launch.topics.commands(),
        jobs_topic: launch.topics.jobs(),
        jobs_config: settings.jobs.clone(),
        config: config.clone(),
        clock,
        metrics: launch.metrics.clone(),
        directory: launch.directory.clone(),
        sent: Default::default(),
    };
    launch.consume("schedules", group, owner);
    launch.schedules = Some(Arc::new(SchedulesApi {
        index,
        directory: launch.directory.clone(),
        producer: launch.producer.clone(),
        topic,
        config,
        clock,
    }));
    Ok(())
}

/// Read every schedule's log from the beginning into `index`.
fn read_log(launch: &mut Launch<'_>, index: Arc<ScheduleIndex>, marker_prefix: String) {
    let (kafka, topic) = (launch.settings.kafka.clone(), launch.topics.schedules());
    let (metrics, shutdown) = (launch.metrics.clone(), launch.shutdown.clone());
    launch.tasks.spawn(async move {
        let reading = async {
            let consumer = RoleConsumer::read_whole_topic(
                &kafka,
                ConsumerRole::ScheduleLog,
                &topic,
                StartAt::Earliest,
                metrics.clone(),
            )
            .await?;
            index.start(consumer.end_offsets(&topic).await?);
            let handler = ScheduleLogHandler {
                index,
                marker_prefix,
                metrics,
            };
            consume(consumer, handler, shutdown).await
        };
        ("schedules-log", reading.await)
    });
}

fn ready(metrics: &Metrics) -> (bool, serde_json::Value) {
    holds_partitions(metrics, &["schedules"])
}
