//! The scorer role as the process starts it: the parameters reader and the scoring
//! consumer.

use std::collections::HashMap;
use std::sync::Arc;

use fleetwatch_protocol::Topic;
use parking_lot::RwLock;

use super::{ParamsHandler, ScoringHandler};
use crate::app::{holds_partitions, Launch, Membership, RoleSpec};
use crate::error::Result;
use crate::kafka::{consume, ConsumerRole, RoleConsumer, StartAt};
use crate::metrics::Metrics;

pub const ROLE: RoleSpec = RoleSpec {
    name: "scorer",
    summary: "scores each event with the newest parameters of its device; one alert episode per device at a time",
    consumes: &[Topic::Telemetry, Topic::ModelParams],
    produces: &[Topic::Alerts],
    membership: Membership::Group("scorer"),
    start,
    ready,
};

fn start(launch: &mut Launch<'_>) -> Result<()> {
    let settings = launch.settings;
    let kafka = &settings.kafka;
    let params = Arc::new(RwLock::new(HashMap::new()));
    let params_handler = ParamsHandler {
        params: params.clone(),
        metrics: launch.metrics.clone(),
    };
    let (config, topic, metrics) = (
        kafka.clone(),
        launch.topics.model_params(),
        launch.metrics.clone(),
    );
    let shutdown = launch.shutdown.clone();
    launch.tasks.spawn(async move {
        let reader = RoleConsumer::read_whole_topic(
            &config,
            ConsumerRole::ScorerParams,
            &topic,
            StartAt::Earliest,
            metrics,
        );
        let outcome = match reader.await {
            Ok(reader) => consume(reader, params_handler, shutdown).await,
            Err(error) => Err(error),
        };
        ("scorer-params", outcome)
    });
    let consumer = RoleConsumer::subscribe(
        kafka,
        ConsumerRole::Scorer,
        &kafka.group_id("scorer"),
        &[&launch.topics.telemetry()],
        StartAt::Earliest,
        launch.metrics.clone(),
        None,
    )?;
    let handler = ScoringHandler::new(
        &settings.scorer,
        settings.trainer.model.threshold,
        &launch.topics,
        launch.producer.clone(),
        params,
        launch.metrics.clone(),
    );
    launch.consume("scorer", consumer, handler);
    Ok(())
}

fn ready(metrics: &Metrics) -> (bool, serde_json::Value) {
    holds_partitions(metrics, &["scorer", "scorer-params"])
}
