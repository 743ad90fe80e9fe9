//! The scorer role as the process starts it: the scoring consumer and the parameters
//! reader that follows its partitions.

use std::sync::Arc;

use fleetwatch_protocol::Topic;

use super::{ParamsFollower, ParamsHandler, ScorerProducers, ScoringHandler, SharedParams};
use crate::app::{holds_partitions, Launch, Membership, RoleSpec};
use crate::error::Result;
use crate::kafka::{ConsumerRole, Producer, RoleConsumer, StartAt};
use crate::metrics::Metrics;

pub const ROLE: RoleSpec = RoleSpec {
    name: "scorer",
    summary: "scores each event with the newest parameters of its device; one alert episode per device at a time",
    consumes: &[Topic::Telemetry, Topic::ModelParams, Topic::Models],
    produces: &[Topic::Alerts, Topic::ShadowAlerts, Topic::Scores],
    membership: Membership::Group("scorer"),
    start,
    ready,
};

fn start(launch: &mut Launch<'_>) -> Result<()> {
    let registry = crate::shadow::start(launch);
    let settings = launch.settings;
    let kafka = &settings.kafka;
    let params = SharedParams::default();
    let (reader, follower) = RoleConsumer::follower(
        kafka,
        ConsumerRole::ScorerParams,
        &launch.topics.model_params(),
        launch.metrics.clone(),
    )?;
    let params_handler = ParamsHandler::new(params.clone(), launch.metrics.clone());
    launch.consume("scorer-params", reader, params_handler);
    let listener = Arc::new(ParamsFollower {
        follower,
        params: params.clone(),
    });
    let consumer = RoleConsumer::subscribe(
        kafka,
        ConsumerRole::Scorer,
        &kafka.group_id("scorer"),
        &[&launch.topics.telemetry()],
        StartAt::Earliest,
        launch.metrics.clone(),
        Some(listener),
    )?;
    let producers = ScorerProducers {
        alerts: Producer::urgent(kafka, vec![launch.topics.alerts()], launch.metrics.clone())?,
        scores: launch.producer.clone(),
    };
    let handler = ScoringHandler::new(
        &settings.scorer,
        settings.trainer.model.threshold,
        &launch.topics,
        producers,
        params.clone(),
        registry,
        launch.metrics.clone(),
    );
    launch.consume("scorer", consumer, handler);
    launch.model_params = Some(params);
    Ok(())
}

fn ready(metrics: &Metrics) -> (bool, serde_json::Value) {
    holds_partitions(metrics, &["scorer", "scorer-params"])
}
