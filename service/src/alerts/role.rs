//! The alerts role as the process starts it: a reader of every alert and the WebSocket
//! server.

use std::sync::Arc;

use fleetwatch_protocol::Topic;

use super::{
    AlarmIndex, AlarmsFeed, AlarmsHandler, AlertsHandler, JobEventsHandler, LivePosition,
    RecentAlerts, Routes, Server,
};
use crate::app::{bind, holds_partitions, Launch, Membership, RoleSpec};
use crate::error::{Error, Result};
use crate::kafka::consume;
use crate::kafka::{ConsumerRole, RoleConsumer, StartAt};
use crate::metrics::Metrics;
use crate::webhooks::{DeliveriesHandler, DeliveryLog};

pub const ROLE: RoleSpec = RoleSpec {
    name: "alerts",
    summary: "pushes alerts, alarm events (resumable from a cursor) and job events to the WebSocket clients of their tenant; keeps every alarm, its webhook deliveries and its rule actions for `GET /alarms`",
    consumes: &[
        Topic::Alerts,
        Topic::Alarms,
        Topic::WebhookDeliveries,
        Topic::Jobs,
        Topic::RuleActions,
    ],
    produces: &[],
    membership: Membership::EveryInstance,
    start,
    ready,
};

fn start(launch: &mut Launch<'_>) -> Result<()> {
    let config = &launch.settings.alerts;
    let kafka = &launch.settings.kafka;
    let listener = bind(&config.bind, config.fallback_to_free_port)?;
    let ws_addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading WebSocket address", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("configuring WebSocket listener", e))?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| Error::io("registering WebSocket listener", e))?;
    let routes = Arc::new(Routes::new(config.client_queue));
    // Every instance pushes every alert: a group of its own, starting at the newest.
    let group = format!("{}-{}", kafka.group_id("alerts"), launch.instance);
    let consumer = RoleConsumer::subscribe(
        kafka,
        ConsumerRole::Alerts,
        &group,
        &[&launch.topics.alerts()],
        StartAt::Latest,
        launch.metrics.clone(),
        None,
    )?;
    let recent = RecentAlerts::default();
    let handler = AlertsHandler {
        routes: routes.clone(),
        recent: recent.clone(),
        metrics: launch.metrics.clone(),
        seen: super::SeenAlerts::default(),
    };
    launch.consume("alerts", consumer, handler);
    let live = Arc::new(LivePosition::default());
    launch.alarms = Some(read_alarms(launch, routes.clone(), live.clone()));
    launch.deliveries = Some(read_deliveries(launch));
    launch.rule_actions = Some(crate::rules::read_actions(launch));
    read_job_events(launch, routes.clone());
    let server = Server {
        alarms: Some(AlarmsFeed {
            kafka: kafka.clone(),
            topic: launch.topics.alarms(),
            live,
        }),
        routes,
        recent,
        auth: launch.auth.clone(),
        tls: launch.tls.clone().map(tokio_rustls::TlsAcceptor::from),
        max_clients: config.max_clients,
        metrics: launch.metrics.clone(),
    };
    let shutdown = launch.shutdown.clone();
    launch.tasks.spawn(async move {
        super::serve(listener, server, shutdown).await;
        ("alerts-ws", Ok(()))
    });
    launch.ws_addr = Some(ws_addr);
    Ok(())
}

/// Read every alarm event (from the beginning: the index REST answers from), pushing
/// those from now on to the clients.
fn read_alarms(
    launch: &mut Launch<'_>,
    routes: Arc<Routes>,
    live: Arc<LivePosition>,
) -> Arc<AlarmIndex> {
    let index = Arc::new(AlarmIndex::default());
    let handler = AlarmsHandler {
        index: index.clone(),
        routes,
        live: live.clone(),
        metrics: launch.metrics.clone(),
    };
    let (kafka, topic) = (launch.settings.kafka.clone(), launch.topics.alarms());
    let (metrics, shutdown) = (launch.metrics.clone(), launch.shutdown.clone());
    launch.tasks.spawn(async move {
        let reading = async {
            let consumer = RoleConsumer::read_whole_topic(
                &kafka,
                ConsumerRole::Alarms,
                &topic,
                StartAt::Earliest,
                metrics,
            )
            .await?;
            live.start(consumer.end_offsets(&topic).await?);
            consume(consumer, handler, shutdown).await
        };
        ("alarms", reading.await)
    });
    index
}

/// Read every webhook delivery outcome (from the beginning), for `GET
/// /alarms/{id}/deliveries`.
fn read_deliveries(launch: &mut Launch<'_>) -> Arc<DeliveryLog> {
    let log = Arc::new(DeliveryLog::default());
    let handler = DeliveriesHandler {
        log: log.clone(),
        metrics: launch.metrics.clone(),
    };
    let (kafka, topic) = (
        launch.settings.kafka.clone(),
        launch.topics.webhook_deliveries(),
    );
    let (metrics, shutdown) = (launch.metrics.clone(), launch.shutdown.clone());
    launch.tasks.spawn(async move {
        let reading = async {
            let consumer = RoleConsumer::read_whole_topic(
                &kafka,
                ConsumerRole::WebhookDeliveries,
                &topic,
                StartAt::Earliest,
                metrics,
            )
            .await?;
            consume(consumer, handler, shutdown).await
        };
        ("webhook-deliveries", reading.await)
    });
    log
}

/// Read every job event (from the beginning: a job's tenant is in its first event),
/// pushing those from now on to the clients.
fn read_job_events(launch: &mut Launch<'_>, routes: Arc<Routes>) {
    let handler = JobEventsHandler::new(routes, launch.metrics.clone());
    let (kafka, topic) = (launch.settings.kafka.clone(), launch.topics.jobs());
    let (metrics, shutdown) = (launch.metrics.clone(), launch.shutdown.clone());
    launch.tasks.spawn(async move {
        let reading = async {
            let consumer = RoleConsumer::read_whole_topic(
                &kafka,
                ConsumerRole::JobEvents,
                &topic,
                StartAt::Earliest,
                metrics,
            )
            .await?;
            handler.live.start(consumer.end_offsets(&topic).await?);
            consume(consumer, handler, shutdown).await
        };
        ("job-events", reading.await)
    });
}

fn ready(metrics: &Metrics) -> (bool, serde_json::Value) {
    holds_partitions(metrics, &["alerts"])
}
