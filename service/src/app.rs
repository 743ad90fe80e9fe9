//! Starting the roles a process runs, and stopping them together.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use parking_lot::RwLock;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::alerts::{AlertsConfig, AlertsHandler};
use crate::devices::{Changelog, DeviceRegistry, DevicesHandler};
use crate::error::{Error, Result};
use crate::http::{HttpState, RepliesHandler, RequestClient};
use crate::ingest::Ingest;
use crate::kafka::{consume, ensure_topics, ConsumerRole, Producer, RoleConsumer, StartAt};
use crate::metrics::Metrics;
use crate::mqtt::MqttPublisher;
use crate::scorer::{ParamsHandler, ScoringHandler};
use crate::settings::Settings;
use crate::trainer::TrainerHandler;

/// Which roles this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    pub ingest: bool,
    pub devices: bool,
    pub trainer: bool,
    pub scorer: bool,
    pub alerts: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        ingest: true,
        devices: true,
        trainer: true,
        scorer: true,
        alerts: true,
    };

    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.ingest, "ingest"),
            (self.devices, "devices"),
            (self.trainer, "trainer"),
            (self.scorer, "scorer"),
            (self.alerts, "alerts"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

impl FromStr for Roles {
    type Err = String;

    /// `all`, or a comma-separated list of ingest, devices, trainer, scorer, alerts.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        if text.trim() == "all" {
            return Ok(Self::ALL);
        }
        let mut roles = Roles {
            ingest: false,
            devices: false,
            trainer: false,
            scorer: false,
            alerts: false,
        };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let flag = match name {
                "ingest" => &mut roles.ingest,
                "devices" => &mut roles.devices,
                "trainer" => &mut roles.trainer,
                "scorer" => &mut roles.scorer,
                "alerts" => &mut roles.alerts,
                other => {
                    return Err(format!(
                        "unknown role {other:?}; roles are ingest, devices, trainer, scorer, alerts, or all"
                    ))
                }
            };
            *flag = true;
        }
        if roles.names().is_empty() {
            return Err("no role given".to_owned());
        }
        Ok(roles)
    }
}

/// Bind `address`; when the port is taken and `fallback` is set, bind a free port on the
/// same interface instead.
pub fn bind(address: &str, fallback: bool) -> Result<TcpListener> {
    let parsed: SocketAddr = address
        .parse()
        .map_err(|e| Error::Config(format!("bad listen address {address:?}: {e}")))?;
    match TcpListener::bind(parsed) {
        Ok(listener) => Ok(listener),
        Err(error) if fallback && error.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::info!(%address, "port taken; using a free one");
            TcpListener::bind(SocketAddr::new(parsed.ip(), 0))
                .map_err(|e| Error::io(format!("binding a free port on {}", parsed.ip()), e))
        }
        Err(error) => Err(Error::io(format!("binding {address}"), error)),
    }
}

/// The running roles of one process.
pub struct RunningApp {
    pub http_addr: SocketAddr,
    pub ws_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub registry: Option<Arc<DeviceRegistry>>,
    tasks: JoinSet<(&'static str, Result<()>)>,
    http: ServerHandle,
    shutdown: CancellationToken,
}

/// Start `roles`. Must run inside an actix `System` (the device actors need one).
/// Everything stops when `shutdown` is cancelled, or when any role fails.
pub async fn start(
    settings: &Settings,
    roles: Roles,
    shutdown: CancellationToken,
) -> Result<RunningApp> {
    let metrics = Arc::new(Metrics::new());
    let kafka = &settings.kafka;
    let topics = kafka.topics();
    ensure_topics(kafka).await?;
    let producer = Producer::new(kafka, metrics.clone())?;
    let mut tasks: JoinSet<(&'static str, Result<()>)> = JoinSet::new();

    if roles.ingest {
        let ingest = Ingest {
            config: settings.ingest.clone(),
            mqtt: settings.mqtt.clone(),
            topics: topics.clone(),
            producer: producer.clone(),
            metrics: metrics.clone(),
        };
        let shutdown = shutdown.clone();
        tasks.spawn(async move { ("ingest", ingest.run(shutdown).await) });
    }

    let group_consumer = |role: ConsumerRole, topic: String, start_at: StartAt| {
        RoleConsumer::subscribe(
            kafka,
            role,
            &kafka.group_id(role.name()),
            &[&topic],
            start_at,
            metrics.clone(),
            None,
        )
    };

    // This process's name on iot.replies and in marker records: unique per process,
    // since a restarted instance must not receive its predecessor's replies.
    let instance = format!(
        "{}-{}-{:x}",
        settings.mqtt.instance_id(),
        std::process::id(),
        fleetwatch_protocol::now_ms()
    );
    let requests = Arc::new(RequestClient::new(
        instance.clone(),
        &topics,
        producer.clone(),
        settings.http.max_pending_requests,
        Duration::from_millis(settings.http.request_timeout_ms),
        metrics.clone(),
    ));
    let replies = RoleConsumer::read_whole_topic(
        kafka,
        ConsumerRole::Replies,
        &topics.replies(),
        StartAt::Latest,
        metrics.clone(),
    )
    .await?;
    let replies_handler = RepliesHandler {
        client: requests.clone(),
        metrics: metrics.clone(),
    };
    tasks.spawn(consume_as(
        "replies",
        replies,
        replies_handler,
        shutdown.clone(),
    ));

    let registry = if roles.devices {
        let changelog = Arc::new(Changelog::new(
            kafka,
            topics.device_state(),
            producer.clone(),
            &instance,
            metrics.clone(),
        )?);
        let downlink = MqttPublisher::start(
            &settings.mqtt,
            "devices",
            settings.devices.downlink_queue,
            metrics.clone(),
            shutdown.clone(),
        );
        let registry = Arc::new(crate::devices::registry(
            settings.devices.clone(),
            changelog,
            downlink,
            metrics.clone(),
        ));
        let consumer = RoleConsumer::subscribe(
            kafka,
            ConsumerRole::Devices,
            &kafka.group_id(ConsumerRole::Devices.name()),
            &[&topics.telemetry(), &topics.commands()],
            StartAt::Earliest,
            metrics.clone(),
            Some(registry.clone()),
        )?;
        let handler = DevicesHandler {
            registry: registry.clone(),
            commands_topic: topics.commands(),
            replies_topic: topics.replies(),
            producer: producer.clone(),
            metrics: metrics.clone(),
        };
        tasks.spawn(consume_as("devices", consumer, handler, shutdown.clone()));
        Some(registry)
    } else {
        None
    };

    if roles.trainer {
        let consumer =
            group_consumer(ConsumerRole::Trainer, topics.telemetry(), StartAt::Earliest)?;
        let handler = TrainerHandler::new(
            settings.trainer.clone(),
            &topics,
            producer.clone(),
            metrics.clone(),
        );
        tasks.spawn(consume_as("trainer", consumer, handler, shutdown.clone()));
    }

    if roles.scorer {
        let params = Arc::new(RwLock::new(HashMap::new()));
        let reader = RoleConsumer::read_whole_topic(
            kafka,
            ConsumerRole::ScorerParams,
            &topics.model_params(),
            StartAt::Earliest,
            metrics.clone(),
        )
        .await?;
        let params_handler = ParamsHandler {
            params: params.clone(),
            metrics: metrics.clone(),
        };
        tasks.spawn(consume_as(
            "scorer-params",
            reader,
            params_handler,
            shutdown.clone(),
        ));
        let consumer = group_consumer(ConsumerRole::Scorer, topics.telemetry(), StartAt::Earliest)?;
        let handler = ScoringHandler::new(
            &settings.scorer,
            settings.trainer.model.threshold,
            &topics,
            producer.clone(),
            params,
            metrics.clone(),
        );
        tasks.spawn(consume_as("scorer", consumer, handler, shutdown.clone()));
    }

    let ws_addr = if roles.alerts {
        Some(start_alerts(
            &settings.alerts,
            kafka,
            &topics.alerts(),
            &metrics,
            &mut tasks,
            &shutdown,
        )?)
    } else {
        None
    };

    let listener = bind(&settings.http.bind, settings.http.fallback_to_free_port)?;
    let http_addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading HTTP address", e))?;
    let http = crate::http::start(
        listener,
        HttpState {
            registry: registry.clone(),
            metrics: metrics.clone(),
            roles: roles.names(),
            ws_port: ws_addr.map(|addr| addr.port()),
            max_page_size: settings.http.max_page_size,
            requests,
            default_command_ttl_ms: settings.http.default_command_ttl_ms,
            max_command_ttl_ms: settings.http.max_command_ttl_ms,
        },
    )?;
    tracing::info!(roles = ?roles.names(), %http_addr, ?ws_addr, "fleetwatch started");

    Ok(RunningApp {
        http_addr,
        ws_addr,
        metrics,
        registry,
        tasks,
        http,
        shutdown,
    })
}

fn start_alerts(
    config: &AlertsConfig,
    kafka: &crate::kafka::KafkaConfig,
    topic: &str,
    metrics: &Arc<Metrics>,
    tasks: &mut JoinSet<(&'static str, Result<()>)>,
    shutdown: &CancellationToken,
) -> Result<SocketAddr> {
    let listener = bind(&config.bind, config.fallback_to_free_port)?;
    let ws_addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading WebSocket address", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("configuring WebSocket listener", e))?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| Error::io("registering WebSocket listener", e))?;
    let (frames, _) = broadcast::channel(config.client_queue);
    // Every instance pushes every alert: a group of its own, starting at the newest.
    let group = format!(
        "{}-{}-{}",
        kafka.group_id("alerts"),
        std::process::id(),
        fleetwatch_protocol::now_ms()
    );
    let consumer = RoleConsumer::subscribe(
        kafka,
        ConsumerRole::Alerts,
        &group,
        &[topic],
        StartAt::Latest,
        metrics.clone(),
        None,
    )?;
    let recent = crate::alerts::RecentAlerts::default();
    let handler = AlertsHandler {
        frames: frames.clone(),
        recent: recent.clone(),
        metrics: metrics.clone(),
    };
    tasks.spawn(consume_as("alerts", consumer, handler, shutdown.clone()));
    let (max_clients, metrics, shutdown) = (config.max_clients, metrics.clone(), shutdown.clone());
    tasks.spawn(async move {
        crate::alerts::serve(listener, frames, recent, max_clients, metrics, shutdown).await;
        ("alerts-ws", Ok(()))
    });
    Ok(ws_addr)
}

async fn consume_as<H: crate::kafka::RecordHandler>(
    name: &'static str,
    consumer: RoleConsumer,
    handler: H,
    shutdown: CancellationToken,
) -> (&'static str, Result<()>) {
    (name, consume(consumer, handler, shutdown).await)
}

impl RunningApp {
    /// True once every role has connected and been assigned its partitions.
    pub fn is_ready(&self, roles: Roles) -> bool {
        roles
            .names()
            .into_iter()
            .all(|role| self.metrics.role_readiness(role).0)
    }

    /// Wait until shutdown is requested and every role has stopped, or until a role fails
    /// (which stops the others). Returns the first failure.
    pub async fn wait(mut self) -> Result<()> {
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let (role, outcome) = match joined {
                Ok(result) => result,
                Err(panic) => (
                    "unknown",
                    Err(Error::RoleFailed {
                        role: "unknown",
                        reason: panic.to_string(),
                    }),
                ),
            };
            match outcome {
                Ok(()) if self.shutdown.is_cancelled() => tracing::info!(role, "stopped"),
                Ok(()) => {
                    tracing::error!(role, "stopped unexpectedly; stopping everything");
                    first_error.get_or_insert(Error::RoleFailed {
                        role,
                        reason: "ended without shutdown".into(),
                    });
                    self.shutdown.cancel();
                }
                Err(error) => {
                    tracing::error!(role, %error, "failed; stopping everything");
                    first_error.get_or_insert(error);
                    self.shutdown.cancel();
                }
            }
        }
        self.http.stop(true).await;
        first_error.map_or(Ok(()), Err)
    }
}
