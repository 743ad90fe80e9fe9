//! What a role is: declared once, in its own folder, as a [`RoleSpec`]; [`ROLES`] lists
//! them. `fleetwatch run --roles`, readiness, the demo, `fleetwatch roles` and the docs all
//! read this one list, so adding a role is adding its folder and one entry here.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use fleetwatch_protocol::{KafkaTopics, Topic};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::devices::DeviceRegistry;
use crate::error::{Error, Result};
use crate::http::RequestClient;
use crate::kafka::{consume, Producer, RecordHandler, RoleConsumer};
use crate::metrics::Metrics;
use crate::scorer::SharedParams;
use crate::settings::Settings;
use crate::tenancy::Directory;

/// How a role's instances share the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// One consumer group (`<group_prefix><name>`): Kafka spreads the partitions over
    /// the instances.
    Group(&'static str),
    /// Every instance reads everything, in a group of its own.
    EveryInstance,
    /// No Kafka consumer group (MQTT shared subscription).
    MqttShared,
}

/// One role, declared once.
pub struct RoleSpec {
    pub name: &'static str,
    /// One line for `fleetwatch roles` and the docs.
    pub summary: &'static str,
    pub consumes: &'static [Topic],
    pub produces: &'static [Topic],
    pub membership: Membership,
    /// Start the role's tasks on `launch`. Runs inside an actix `System`.
    pub start: fn(&mut Launch<'_>) -> Result<()>,
    /// Whether the role is ready, and the figures that say so.
    pub ready: fn(&Metrics) -> (bool, serde_json::Value),
}

/// Every role, in start order.
pub const ROLES: &[&RoleSpec] = &[
    &crate::ingest::ROLE,
    &crate::devices::ROLE,
    &crate::trainer::ROLE,
    &crate::scorer::ROLE,
    &crate::alerts::ROLE,
    &crate::storage::ROLE,
    &crate::archive::ROLE,
    &crate::webhooks::ROLE,
    &crate::jobs::ROLE,
    &crate::schedules::ROLE,
    &crate::rules::ROLE,
];

/// A role's tasks report their name and outcome when they end.
pub type RoleTasks = JoinSet<(&'static str, Result<()>)>;

/// What a starting role can use, and what it hands back to the process.
pub struct Launch<'a> {
    pub settings: &'a Settings,
    pub topics: KafkaTopics,
    pub producer: Producer,
    pub metrics: Arc<Metrics>,
    /// This process's name on `iot.replies` and in marker records; unique per process.
    pub instance: String,
    pub requests: Arc<RequestClient>,
    pub shutdown: CancellationToken,
    pub tasks: &'a mut RoleTasks,
    /// Set by the devices role: the REST API reaches device actors through it.
    pub registry: Option<Arc<DeviceRegistry>>,
    /// Set by the alerts role: where its WebSocket server listens.
    pub ws_addr: Option<SocketAddr>,
    /// Set by the scorer role: the parameters it scores with, for `GET
    /// /devices/{id}/model`.
    pub model_params: Option<SharedParams>,
    /// Set by the alerts role: every alarm, for `GET /alarms`.
    pub alarms: Option<Arc<crate::alerts::AlarmIndex>>,
    /// Set by the alerts role: every alarm's webhook deliveries, for `GET
    /// /alarms/{id}/deliveries`.
    pub deliveries: Option<Arc<crate::webhooks::DeliveryLog>>,
    /// Set by the jobs role: every job, for `/jobs`.
    pub jobs: Option<Arc<crate::jobs::JobsApi>>,
    /// Set by the schedules role: every schedule, for `/schedules`.
    pub schedules: Option<Arc<crate::schedules::SchedulesApi>>,
    /// Set by the rules role: every rule and action, for `/rules`.
    pub rules: Option<Arc<crate::rules::RulesApi>>,
    /// Set by the alerts role (else the rules role): every rule action, for `GET
    /// /alarms/{id}/actions`.
    pub rule_actions: Option<Arc<crate::rules::state::RulesIndex>>,
    /// Set by the trainer or scorer role: the model registry, for `/models`.
    pub models: Option<Arc<crate::shadow::ModelsApi>>,
    /// Checks callers' tokens (the alerts WebSocket).
    pub auth: Arc<Authenticator>,
    /// Which tenant each device belongs to (ingest stamps events with it).
    pub directory: Arc<Directory>,
    /// TLS for the role's own listeners, when configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Launch<'_> {
    /// Run `handler` on `consumer` until shutdown, as task `name`.
    pub fn consume<H: RecordHandler + 'static>(
        &mut self,
        name: &'static str,
        consumer: RoleConsumer,
        handler: H,
    ) {
        let shutdown = self.shutdown.clone();
        self.tasks
            .spawn(async move { (name, consume(consumer, handler, shutdown).await) });
    }

    /// As [`Self::consume`], on `arbiter`'s thread: a handler that waits for actors
    /// living there hands each record over and gets its answer without waking another
    /// thread (two cross-thread wake-ups per record otherwise).
    pub fn consume_on<H: RecordHandler + 'static>(
        &mut self,
        arbiter: &actix_rt::ArbiterHandle,
        name: &'static str,
        consumer: RoleConsumer,
        handler: H,
    ) {
        let shutdown = self.shutdown.clone();
        let (done, outcome) = tokio::sync::oneshot::channel();
        // A stopped arbiter drops the loop unstarted, and with it `done`: reported below.
        arbiter.spawn(async move {
            let _ = done.send(consume(consumer, handler, shutdown).await);
        });
        self.tasks.spawn(async move {
            let outcome = outcome.await.unwrap_or_else(|_| {
                Err(Error::RoleFailed {
                    role: name,
                    reason: "its actors' thread stopped".to_owned(),
                })
            });
            (name, outcome)
        });
    }

    /// Read `topic` whole from the beginning with `handler`, as task `name`, telling
    /// `started` where it ended when reading began (for a [`crate::kafka::Loading`]).
    pub fn read_whole<H: RecordHandler + 'static>(
        &mut self,
        name: &'static str,
        role: crate::kafka::ConsumerRole,
        topic: String,
        handler: H,
        started: impl FnOnce(std::collections::HashMap<i32, i64>) + Send + 'static,
    ) {
        let kafka = self.settings.kafka.clone();
        let (metrics, shutdown) = (self.metrics.clone(), self.shutdown.clone());
        self.tasks.spawn(async move {
            let reading = async {
                let consumer = RoleConsumer::read_whole_topic(
                    &kafka,
                    role,
                    &topic,
                    crate::kafka::StartAt::Earliest,
                    metrics,
                )
                .await?;
                started(consumer.end_offsets(&topic).await?);
                consume(consumer, handler, shutdown).await
            };
            (name, reading.await)
        });
    }
}

/// The roles one process runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roles(Vec<&'static RoleSpec>);

impl PartialEq for RoleSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for RoleSpec {}

impl std::fmt::Debug for RoleSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Roles {
    pub fn all() -> Self {
        Self(ROLES.to_vec())
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|role| role.name).collect()
    }

    pub fn specs(&self) -> &[&'static RoleSpec] {
        &self.0
    }

    /// Ready when every role is, with each role's detail. A role that reads or writes
    /// Kafka is not ready while the process cannot reach Kafka, nor before its producers
    /// can send at once (`Producer::prepare`).
    pub fn readiness(&self, metrics: &Metrics) -> (bool, serde_json::Value) {
        let kafka_reachable = metrics.kafka_reachable.get() == 1;
        let producers_preparing = metrics.kafka_producers_preparing.get();
        let kafka_ready = kafka_reachable && producers_preparing == 0;
        let mut all_ready = true;
        let mut detail = serde_json::Map::new();
        for role in &self.0 {
            let (ready, mut figures) = (role.ready)(metrics);
            let uses_kafka = !role.consumes.is_empty() || !role.produces.is_empty();
            let ready = ready && (kafka_ready || !uses_kafka);
            if uses_kafka {
                figures["kafka_reachable"] = kafka_reachable.into();
                figures["kafka_producers_preparing"] = producers_preparing.into();
            }
            all_ready &= ready;
            detail.insert(
                role.name.to_owned(),
                serde_json::json!({ "ready": ready, "detail": figures }),
            );
        }
        (all_ready, detail.into())
    }
}

fn role_names() -> String {
    ROLES.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
}

impl FromStr for Roles {
    type Err = String;

    /// `all`, or a comma-separated list of role names.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        if text.trim() == "all" {
            return Ok(Self::all());
        }
        let mut chosen = Vec::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let Some(role) = ROLES.iter().find(|role| role.name == name) else {
                return Err(format!(
                    "unknown role {name:?}; roles are {}, or all",
                    role_names()
                ));
            };
            if !chosen.contains(role) {
                chosen.push(*role);
            }
        }
        if chosen.is_empty() {
            return Err("no role given".to_owned());
        }
        // Start order is the list's, whatever order they were given in.
        chosen.sort_by_key(|role| ROLES.iter().position(|r| r.name == role.name));
        Ok(Self(chosen))
    }
}

/// Consumers' readiness: holding at least one partition of each of `roles`' consumers.
pub fn holds_partitions(metrics: &Metrics, consumers: &[&str]) -> (bool, serde_json::Value) {
    let mut detail = serde_json::Map::new();
    let mut ready = true;
    for consumer in consumers {
        let partitions = metrics
            .assigned_partitions
            .with_label_values(&[consumer])
            .get();
        ready &= partitions > 0;
        detail.insert(format!("{consumer}_partitions"), partitions.into());
    }
    (ready, detail.into())
}

/// The roles as a Markdown table, for docs/architecture.md (a test keeps them equal).
pub fn markdown_table(topics: &KafkaTopics) -> String {
    let names = |list: &[Topic]| {
        if list.is_empty() {
            "—".to_owned()
        } else {
            list.iter()
                .map(|&t| format!("`{}`", topics.of(t)))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut table = "| role | consumes | produces | instances share work by | what it does |\n\
                     |---|---|---|---|---|\n"
        .to_owned();
    for role in ROLES {
        let membership = match role.membership {
            Membership::Group(group) => format!("consumer group `{group}`"),
            Membership::EveryInstance => "each instance reads everything".to_owned(),
            Membership::MqttShared => "MQTT shared subscription".to_owned(),
        };
        table += &format!(
            "| {} | {} | {} | {} | {} |\n",
            role.name,
            names(role.consumes),
            names(role.produces),
            membership,
            role.summary
        );
    }
    table
}

/// Bind `address`; when the port is taken and `fallback` is set, bind a free port on the
/// same interface instead.
pub fn bind(address: &str, fallback: bool) -> Result<std::net::TcpListener> {
    use std::net::TcpListener;
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
