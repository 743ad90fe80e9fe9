//! The jobs role as the process starts it: the reader of `iot.jobs` (every job, for
//! REST and as the owners' state), the reader of `iot.device-state` (the fleet's twins),
//! and the group member that owns partitions of `iot.jobs` and runs their jobs.

use std::sync::Arc;

use fleetwatch_protocol::Topic;

use super::fleet::{FleetHandler, FleetView};
use super::owner::{JobLogHandler, JobsOwner, Ownership};
use super::state::JobIndex;
use super::JobsApi;
use crate::app::{holds_partitions, Launch, Membership, RoleSpec};
use crate::error::Result;
use crate::kafka::{consume, ConsumerRole, RoleConsumer, StartAt};
use crate::metrics::Metrics;

pub const ROLE: RoleSpec = RoleSpec {
    name: "jobs",
    summary: "fleet jobs: resolves a job's targets across the fleet, creates one execution per device before sending its command (waves, rate limit, soak), follows the twins to their outcomes, aborts on failure ratios or the canary criterion",
    consumes: &[Topic::Jobs, Topic::DeviceState],
    produces: &[Topic::Jobs, Topic::Commands],
    membership: Membership::Group("jobs"),
    start,
    ready,
};

fn start(launch: &mut Launch<'_>) -> Result<()> {
    let settings = launch.settings;
    let kafka = &settings.kafka;
    let config = settings.jobs.clone();
    let index = Arc::new(JobIndex::default());
    let jobs_topic = launch.topics.jobs();
    let marker_prefix = format!("{}{}/jobs/", crate::kafka::MARKER_PREFIX, launch.instance);
    let topics = launch.topics.clone();
    let fleet = Arc::new(FleetView::new(config.alarms_per_device));
    read_fleet(launch, fleet.clone());
    read_log(launch, index.clone(), marker_prefix.clone());
    let ownership = Arc::new(Ownership::new(
        launch.producer.clone(),
        jobs_topic.clone(),
        marker_prefix,
    ));
    let group = RoleConsumer::subscribe(
        kafka,
        ConsumerRole::Jobs,
        &kafka.group_id("jobs"),
        &[&jobs_topic],
        StartAt::Latest,
        launch.metrics.clone(),
        Some(ownership.clone()),
    )?;
    let owner = JobsOwner {
        ownership,
        index: index.clone(),
        fleet: fleet.clone(),
        producer: launch.producer.clone(),
        jobs_topic: jobs_topic.clone(),
        commands_topic: topics.commands(),
        config: config.clone(),
        metrics: launch.metrics.clone(),
        directory: launch.directory.clone(),
        resolved_ms: Default::default(),
    };
    launch.consume("jobs", group, owner);
    launch.jobs = Some(Arc::new(JobsApi {
        index,
        fleet,
        directory: launch.directory.clone(),
        producer: launch.producer.clone(),
        topic: jobs_topic,
        config,
        counter: Default::default(),
    }));
    Ok(())
}

/// Read every twin from the beginning into `fleet`.
fn read_fleet(launch: &mut Launch<'_>, fleet: Arc<FleetView>) {
    let (kafka, topic) = (launch.settings.kafka.clone(), launch.topics.device_state());
    let (metrics, shutdown) = (launch.metrics.clone(), launch.shutdown.clone());
    launch.tasks.spawn(async move {
        let reading = async {
            let consumer = RoleConsumer::read_whole_topic(
                &kafka,
                ConsumerRole::JobsFleet,
                &topic,
                StartAt::Earliest,
                metrics.clone(),
            )
            .await?;
            fleet.start(consumer.end_offsets(&topic).await?);
            consume(consumer, FleetHandler { fleet, metrics }, shutdown).await
        };
        ("jobs-fleet", reading.await)
    });
}

/// Read every job's log from the beginning into `index`.
fn read_log(launch: &mut Launch<'_>, index: Arc<JobIndex>, marker_prefix: String) {
    let (kafka, topic) = (launch.settings.kafka.clone(), launch.topics.jobs());
    let (metrics, shutdown) = (launch.metrics.clone(), launch.shutdown.clone());
    launch.tasks.spawn(async move {
        let reading = async {
            let consumer = RoleConsumer::read_whole_topic(
                &kafka,
                ConsumerRole::JobLog,
                &topic,
                StartAt::Earliest,
                metrics.clone(),
            )
            .await?;
            index.start(consumer.end_offsets(&topic).await?);
            let handler = JobLogHandler {
                index,
                marker_prefix,
                metrics,
            };
            consume(consumer, handler, shutdown).await
        };
        ("jobs-log", reading.await)
    });
}

fn ready(metrics: &Metrics) -> (bool, serde_json::Value) {
    holds_partitions(metrics, &["jobs"])
}
