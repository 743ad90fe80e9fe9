//! Starting the roles a process runs, and stopping them together. What each role is and
//! how it starts is declared in its own folder ([`roles::ROLES`]); this composes them.

mod roles;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use tokio_util::sync::CancellationToken;

pub use roles::{
    bind, holds_partitions, markdown_table, Launch, Membership, RoleSpec, RoleTasks, Roles, ROLES,
};

use crate::auth::Authenticator;
use crate::devices::DeviceRegistry;
use crate::error::{Error, Result};
use crate::http::{HttpState, RepliesHandler, RequestClient, Started};
use crate::kafka::{consume, ensure_topics, watch_reachability, ConsumerRole, Producer};
use crate::kafka::{RoleConsumer, StartAt};
use crate::metrics::Metrics;
use crate::settings::Settings;

/// The running roles of one process.
pub struct RunningApp {
    pub http_addr: SocketAddr,
    pub ws_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub registry: Option<Arc<DeviceRegistry>>,
    roles: Roles,
    tasks: RoleTasks,
    http: ServerHandle,
    shutdown: CancellationToken,
}

/// Start `roles`. Must run inside an actix `System` (the device actors need one).
/// The HTTP server (health, metrics) comes up first, so an orchestrator sees "not ready"
/// rather than nothing while Kafka is slow. Everything stops when `shutdown` is
/// cancelled, or when any role fails.
pub async fn start(
    settings: &Settings,
    roles: Roles,
    shutdown: CancellationToken,
) -> Result<RunningApp> {
    let auth = Arc::new(Authenticator::new(&settings.auth)?);
    let tls = crate::tls::server_config(&settings.tls)?;
    warn_if_exposed(settings, &auth, tls.is_some());
    let metrics = Arc::new(Metrics::new());
    let mut tasks = RoleTasks::new();
    spawn_watchdogs(settings, &metrics, &mut tasks, &shutdown);
    let kafka = &settings.kafka;
    let listener = bind(&settings.http.bind, settings.http.fallback_to_free_port)?;
    let http_addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading HTTP address", e))?;
    let http_state = Arc::new(HttpState::new(
        settings,
        roles.clone(),
        metrics.clone(),
        auth.clone(),
    ));
    let http = crate::http::start(listener, http_state.clone(), tls.clone())?;

    ensure_topics(kafka).await?;
    let producer = Producer::new(kafka, metrics.clone())?;
    let instance = instance_name(settings);
    let requests = start_replies(settings, &instance, &metrics, &mut tasks, &shutdown).await?;
    let directory = crate::tenancy::start_directory(
        kafka,
        &settings.tenancy,
        metrics.clone(),
        shutdown.clone(),
        &mut tasks,
    )
    .await?;
    let mut launch = Launch {
        settings,
        topics: kafka.topics(),
        producer,
        metrics: metrics.clone(),
        instance,
        requests: requests.clone(),
        shutdown: shutdown.clone(),
        tasks: &mut tasks,
        registry: None,
        ws_addr: None,
        model_params: None,
        alarms: None,
        deliveries: None,
        jobs: None,
        schedules: None,
        rules: None,
        rule_actions: None,
        models: None,
        auth,
        directory: directory.clone(),
        tls,
    };
    for role in roles.specs() {
        (role.start)(&mut launch)?;
    }
    let (registry, ws_addr) = (launch.registry.clone(), launch.ws_addr);
    http_state.connect(started(launch, requests, directory));
    tracing::info!(roles = ?roles.names(), %http_addr, ?ws_addr, "fleetwatch started");
    Ok(RunningApp {
        http_addr,
        ws_addr,
        metrics,
        registry,
        roles,
        tasks,
        http,
        shutdown,
    })
}

/// What the started roles hand the HTTP server.
fn started(
    mut launch: Launch<'_>,
    requests: Arc<RequestClient>,
    directory: Arc<crate::tenancy::Directory>,
) -> Started {
    Started {
        registry: launch.registry.take(),
        requests,
        ws_port: launch.ws_addr.map(|addr| addr.port()),
        model_params: launch.model_params.take(),
        directory,
        alarms: launch.alarms.take(),
        deliveries: launch.deliveries.take(),
        jobs: launch.jobs.take(),
        schedules: launch.schedules.take(),
        rules: launch.rules.take(),
        rule_actions: launch.rule_actions.take(),
        models: launch.models.take(),
    }
}

/// The runtime heartbeat (liveness) and the Kafka reachability probe (readiness).
fn spawn_watchdogs(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    tasks: &mut RoleTasks,
    shutdown: &CancellationToken,
) {
    tasks.spawn(heartbeat(metrics.clone(), shutdown.clone()));
    let (config, metrics, shutdown) = (settings.kafka.clone(), metrics.clone(), shutdown.clone());
    tasks.spawn(async move {
        watch_reachability(config, metrics, shutdown).await;
        ("kafka-probe", Ok(()))
    });
}

/// Say so when callers beyond this machine could reach the service without
/// authentication, or send their tokens in the clear.
fn warn_if_exposed(settings: &Settings, auth: &Authenticator, tls: bool) {
    let loopback_only = [&settings.http.bind, &settings.alerts.bind]
        .iter()
        .all(|bind| {
            bind.parse::<SocketAddr>()
                .is_ok_and(|addr| addr.ip().is_loopback())
                || bind.starts_with("localhost:")
        });
    if loopback_only {
        return;
    }
    if !auth.enabled() {
        tracing::warn!(
            "authentication is off (auth.mode = \"none\") and the service listens beyond loopback: anyone who reaches it can read and command every device"
        );
    } else if !tls {
        tracing::warn!(
            "authentication is on without TLS (tls.cert_file, tls.key_file) beyond loopback: tokens travel in the clear unless an ingress terminates TLS"
        );
    }
}

/// This process's name on `iot.replies` and in marker records: unique per process, since
/// a restarted instance must not receive its predecessor's replies.
fn instance_name(settings: &Settings) -> String {
    format!(
        "{}-{}-{:x}",
        settings.mqtt.instance_id(),
        std::process::id(),
        fleetwatch_protocol::now_ms()
    )
}

/// Every process answers REST requests, so every process reads the replies addressed
/// to it, whatever roles it runs. Requests go through a producer of their own lingering
/// `kafka.urgent_linger_ms`: a person waits on each, and on the process's shared
/// producer a request would linger `kafka.linger_ms` and queue behind ingest's stream.
async fn start_replies(
    settings: &Settings,
    instance: &str,
    metrics: &Arc<Metrics>,
    tasks: &mut RoleTasks,
    shutdown: &CancellationToken,
) -> Result<Arc<RequestClient>> {
    let topics = settings.kafka.topics();
    let kafka = &settings.kafka;
    let producer = Producer::urgent(
        kafka,
        vec![topics.commands(), topics.telemetry()],
        metrics.clone(),
    )?;
    let requests = Arc::new(RequestClient::new(
        instance.to_owned(),
        &topics,
        producer,
        settings.http.max_pending_requests,
        Duration::from_millis(settings.http.request_timeout_ms),
        metrics.clone(),
    ));
    let replies = RoleConsumer::read_whole_topic(
        &settings.kafka,
        ConsumerRole::Replies,
        &topics.replies(),
        StartAt::Latest,
        metrics.clone(),
    )
    .await?;
    let handler = RepliesHandler {
        client: requests.clone(),
        metrics: metrics.clone(),
    };
    let shutdown = shutdown.clone();
    tasks.spawn(async move { ("replies", consume(replies, handler, shutdown).await) });
    Ok(requests)
}

/// How often the runtime proves it is not wedged; liveness fails when it stops.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Stamp the time every [`HEARTBEAT`] on the async runtime. The HTTP server runs on its
/// own thread, so `/livez` can tell when the runtime stopped doing so.
async fn heartbeat(
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> (&'static str, Result<()>) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return ("heartbeat", Ok(())),
            _ = ticks.tick() => metrics.runtime_heartbeat.set(fleetwatch_protocol::now_ms() / 1000),
        }
    }
}

impl RunningApp {
    /// Whether this process runs the role named `name`.
    pub fn roles_running(&self, name: &str) -> bool {
        self.roles.names().contains(&name)
    }

    /// True once every role has connected and been assigned its partitions.
    pub fn is_ready(&self) -> bool {
        self.roles.readiness(&self.metrics).0
    }

    /// Wait until shutdown is requested and every role has stopped, or until a role fails
    /// (which stops the others). Returns the first failure.
    pub async fn wait(mut self) -> Result<()> {
        let mut first_error = None;
        loop {
            let joined = tokio::select! {
                joined = self.tasks.join_next() => joined,
                // Once stopping, roles get a bounded time to finish their work: a role
                // held by a broker that is gone must not keep a failed process alive
                // (its orchestrator restarts it; probes cannot tell it is stuck).
                _ = stopping_too_long(&self.shutdown) => {
                    tracing::error!(roles = self.tasks.len(), grace = ?SHUTDOWN_GRACE, "roles still stopping; ending them");
                    self.tasks.abort_all();
                    first_error.get_or_insert(Error::RoleFailed {
                        role: "shutdown",
                        reason: format!("roles did not stop within {SHUTDOWN_GRACE:?}"),
                    });
                    while self.tasks.join_next().await.is_some() {}
                    break;
                }
            };
            let Some(joined) = joined else { break };
            let (role, outcome) = joined.unwrap_or_else(|panic| {
                let reason = panic.to_string();
                (
                    "unknown",
                    Err(Error::RoleFailed {
                        role: "unknown",
                        reason,
                    }),
                )
            });
            let failure = match outcome {
                Ok(()) if self.shutdown.is_cancelled() => {
                    tracing::info!(role, "stopped");
                    continue;
                }
                Ok(()) => Error::RoleFailed {
                    role,
                    reason: "ended without shutdown".into(),
                },
                Err(error) => error,
            };
            tracing::error!(role, error = %failure, "failed; stopping everything");
            first_error.get_or_insert(failure);
            self.shutdown.cancel();
        }
        self.http.stop(true).await;
        first_error.map_or(Ok(()), Err)
    }
}

/// How long roles may take to stop once shutdown began: inside Kubernetes' default
/// termination grace period (30 s), so a SIGTERM still ends with every role's own
/// final commit rather than a SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// Resolves `SHUTDOWN_GRACE` after shutdown began.
async fn stopping_too_long(shutdown: &CancellationToken) {
    shutdown.cancelled().await;
    tokio::time::sleep(SHUTDOWN_GRACE).await;
}
