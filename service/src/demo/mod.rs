//! `fleetwatch demo`: the production roles, unchanged, on embedded infrastructure — an
//! in-process MQTT broker (rumqttd) and librdkafka's mock Kafka cluster — driven by the
//! simulator, with the live page. A default for trying fleetwatch out, not a second
//! pipeline: [`crate::app::start`] is the same call `fleetwatch run` makes.

mod broker;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use fleetwatch_sim::{evaluate, run_fleet, AlertListener, Evaluation, FleetStats, SimConfig};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::app::{self, Roles};
use crate::auth::{AuthMode, Secret};
use crate::error::{Error, Result};
use crate::settings::Settings;
use crate::tenancy::ProvisioningRule;
use fleetwatch_protocol::TenantId;

#[derive(Args, Clone, Debug)]
pub struct DemoOptions {
    /// Stop by itself after this many seconds and print a JSON summary as the last line.
    #[arg(long)]
    pub exit_after: Option<u64>,
    /// Simulated devices.
    #[arg(long, default_value_t = 300)]
    pub devices: usize,
    /// Milliseconds between two readings of one device. Ten a second lets the models
    /// learn enough of each device (the drift check and the relations between metrics
    /// need a few hundred readings) before the first anomaly of a short demo.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Anomalies injected per minute across the fleet.
    #[arg(long, default_value_t = 100.0)]
    pub anomalies_per_minute: f64,
    /// Seconds before the first anomaly, while the models learn.
    #[arg(long, default_value_t = 40.0)]
    pub warmup_secs: f64,
    /// Seed of the simulated fleet.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Port of the live page and REST API (a free one is used if it is taken).
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// Port of the alerts WebSocket (a free one is used if it is taken).
    #[arg(long, default_value_t = 8081)]
    pub ws_port: u16,
    /// Partitions of the in-process Kafka topics.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Write the injected anomalies (ground truth) as JSON lines to this file.
    #[arg(long)]
    pub ground_truth: Option<std::path::PathBuf>,
    /// Device outages per minute across the fleet: a device drops off without a goodbye
    /// (its Last Will marks it offline) and comes back 20 s later.
    #[arg(long, default_value_t = 1.0)]
    pub outages_per_minute: f64,
    /// Turn authentication on: the demo signs tokens with a secret of its own and prints
    /// one for each demo tenant (`acme`: devices sim-000xx, `globex`: sim-001xx) and one
    /// for an operator. Without it the demo runs with `auth.mode = "none"`.
    #[arg(long)]
    pub auth: bool,
    /// Also run the storage role, writing readings, scores, alerts and device events to
    /// this time-series store (InfluxDB v2 write API, e.g. VictoriaMetrics at
    /// `http://127.0.0.1:8428`); the same as the `storage.url` setting.
    #[arg(long, env = "FLEETWATCH_STORAGE__URL")]
    pub tsdb: Option<String>,
}

/// The demo's tenants: who owns which simulated devices.
const DEMO_TENANTS: [(&str, &str); 2] = [("acme", "sim-000"), ("globex", "sim-001")];

/// The demo's last line of output.
#[derive(Debug, Serialize)]
pub struct DemoSummary {
    pub devices: usize,
    /// Telemetry messages ingest forwarded to Kafka.
    pub telemetry_in: u64,
    pub dead_letters: u64,
    /// Alerts raised by the scorer.
    pub alerts_out: u64,
    /// Raised alerts a WebSocket client received.
    pub alerts_received: usize,
    /// Alarm events the WebSocket client received, by kind.
    pub alarms_created: usize,
    pub alarms_cleared: usize,
    pub alarms_acknowledged: usize,
    /// What the WebSocket client's alerts say about the injected anomalies.
    #[serde(flatten)]
    pub evaluation: Evaluation,
}

/// Time after the devices stop for the last alerts to arrive.
const DRAIN: Duration = Duration::from_secs(3);
/// How late an alert may come after its anomaly ended and still count for it.
const MATCH_GRACE_MS: i64 = 5_000;

pub async fn run(options: DemoOptions, interrupted: CancellationToken) -> Result<DemoSummary> {
    let mut settings = Settings::default();
    let broker = broker::start(settings.mqtt.max_packet_bytes)?;
    let cluster = kafka_cluster(&mut settings, options.partitions)?;
    embed(&mut settings, &broker, &options);

    let operator = demo_auth(&mut settings, options.auth)?;
    let app_stop = CancellationToken::new();
    let app = app::start(&settings, demo_roles(&options)?, app_stop.clone()).await?;
    print_addresses(&app, &broker, &settings);
    print_tokens(&app, &settings)?;
    wait_until_ready(&app).await?;
    let ws = app.ws_addr.expect("the demo runs the alerts role");
    let listener = AlertListener::connect(&format!("ws://{ws}/{operator}"), "")
        .await
        .map_err(|e| Error::RoleFailed {
            role: "demo",
            reason: e.to_string(),
        })?;
    let sim = simulator(&options, &broker);
    let injected = drive(&app, sim, interrupted).await?;
    tokio::time::sleep(DRAIN).await;
    listener.close();

    let received = listener.alerts();
    let alarm_events = listener.alarm_log().events;
    let alarms_of = |kind: fleetwatch_protocol::AlarmEventKind| {
        alarm_events
            .iter()
            .filter(|event| event.kind == kind)
            .count()
    };
    let evaluation = evaluate(&injected, &received, MATCH_GRACE_MS);
    let metrics = app.metrics.clone();
    app_stop.cancel();
    app.wait().await?;
    // The cluster stays up until the process exits: device actors (whose changelog
    // holds a producer) stop with the actix System only after this returns, and their
    // clients would log "all brokers down" for a cluster gone before them.
    std::mem::forget(cluster);
    Ok(DemoSummary {
        devices: options.devices,
        telemetry_in: metrics
            .ingest_messages
            .with_label_values(&["forwarded"])
            .get(),
        dead_letters: metrics
            .ingest_messages
            .with_label_values(&["dead_lettered"])
            .get(),
        alerts_out: metrics.alerts_emitted.with_label_values(&["raised"]).get(),
        alerts_received: received
            .iter()
            .filter(|r| r.alert.state == fleetwatch_protocol::AlertState::Raised)
            .count(),
        alarms_created: alarms_of(fleetwatch_protocol::AlarmEventKind::Created),
        alarms_cleared: alarms_of(fleetwatch_protocol::AlarmEventKind::Cleared),
        alarms_acknowledged: alarms_of(fleetwatch_protocol::AlarmEventKind::Acknowledged),
        evaluation,
    })
}

/// The in-process Kafka cluster with every topic provisioned. librdkafka's mock cluster
/// does not implement CreateTopics, so the demo provisions the topics itself, as an
/// operator would on a cluster that forbids creating them; `ensure_topics` then finds
/// them in place.
fn kafka_cluster(
    settings: &mut Settings,
    partitions: i32,
) -> Result<MockCluster<'static, DefaultProducerContext>> {
    let cluster = MockCluster::new(1)
        .map_err(|e| Error::kafka("starting the in-process Kafka cluster", e))?;
    settings.kafka.brokers = cluster.bootstrap_servers();
    settings.kafka.partitions = partitions;
    for spec in settings.kafka.topics().all() {
        cluster
            .create_topic(&spec.name, partitions, 1)
            .map_err(|e| {
                Error::kafka(
                    format!("creating {} in the in-process cluster", spec.name),
                    e,
                )
            })?;
    }
    Ok(cluster)
}

/// The demo's tenants, and authentication when asked for: a fresh secret each run.
/// Returns the query that authenticates the demo's own alert listener.
fn demo_auth(settings: &mut Settings, on: bool) -> Result<String> {
    settings.tenancy.provisioning = DEMO_TENANTS
        .iter()
        .map(|(tenant, prefix)| ProvisioningRule {
            prefix: (*prefix).to_owned(),
            tenant: TenantId::parse(tenant).expect("demo tenants are valid"),
        })
        .collect();
    if !on {
        settings.auth.mode = Some(AuthMode::None);
        return Ok(String::new());
    }
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    settings.auth.mode = Some(AuthMode::Jwt);
    settings.auth.hs256_secret = Some(Secret::new(secret));
    Ok(format!("?access_token={}", token(settings, None)?))
}

/// A token of `tenant` (an operator's for `None`) signed with the demo's secret.
fn token(settings: &Settings, tenant: Option<&str>) -> Result<String> {
    let secret = settings
        .auth
        .hs256_secret
        .as_ref()
        .ok_or_else(|| Error::Config("no HS256 secret to sign with".into()))?;
    crate::auth::mint(
        &crate::auth::claims_for(&settings.auth, "demo", tenant),
        secret.expose(),
    )
    .map_err(|e| Error::Config(format!("signing a token: {e}")))
}

fn print_tokens(app: &app::RunningApp, settings: &Settings) -> Result<()> {
    if settings.auth.mode != Some(AuthMode::Jwt) {
        return Ok(());
    }
    let http = app.http_addr;
    println!(
        "  auth           on; tokens valid {} s:",
        settings.auth.minted_ttl_secs
    );
    for (tenant, prefix) in DEMO_TENANTS {
        let token = token(settings, Some(tenant))?;
        println!("  {tenant:<14} http://{http}/#token={token}  (devices {prefix}xx)");
    }
    println!("  operator       {}", token(settings, None)?);
    Ok(())
}

/// Every role; the storage role only when there is a store to write to.
fn demo_roles(options: &DemoOptions) -> Result<Roles> {
    let names: Vec<&str> = (app::ROLES.iter())
        .map(|role| role.name)
        .filter(|&name| name != crate::storage::ROLE.name || options.tsdb.is_some())
        .collect();
    names.join(",").parse().map_err(Error::Config)
}

/// Point the settings at the embedded MQTT broker and the demo's ports.
fn embed(settings: &mut Settings, broker: &broker::EmbeddedBroker, options: &DemoOptions) {
    settings.mqtt.host = broker.v5.ip().to_string();
    settings.mqtt.port = broker.v5.port();
    settings.mqtt.instance_id = Some("demo".to_owned());
    // The embedded broker listens on loopback only, in plain MQTT and without accounts:
    // whatever the configuration says about TLS and credentials is for a real broker.
    settings.mqtt.tls = false;
    settings.mqtt.ca_file = None;
    settings.mqtt.client_cert_file = None;
    settings.mqtt.client_key_file = None;
    settings.mqtt.username = None;
    settings.mqtt.password = None;
    settings.credentials.enabled = false;
    // rumqttd 0.20 panics saving a persistent session that holds a shared subscription,
    // and the embedded broker dies with the process anyway: nothing to persist for.
    settings.mqtt.persistent_session = false;
    settings.http.bind = format!("127.0.0.1:{}", options.http_port);
    settings.http.fallback_to_free_port = true;
    settings.alerts.bind = format!("127.0.0.1:{}", options.ws_port);
    settings.alerts.fallback_to_free_port = true;
    // Episodes close after calm *readings*; the simulator's anomalies last seconds. At
    // ten readings a second the recommended 30 would close an episode after 3 s of calm
    // inside a longer fault and open another: keep the 15 s the recommendation gives
    // devices reading every 500 ms.
    let calm_readings = (15_000 / options.interval_ms.max(1)).max(30) as u32;
    settings.scorer.clear_after_events = Some(calm_readings);
    if let Some(url) = &options.tsdb {
        settings.storage.url = url.clone();
    }
}

fn print_addresses(app: &app::RunningApp, broker: &broker::EmbeddedBroker, settings: &Settings) {
    let http = app.http_addr;
    let ws = app.ws_addr.expect("the demo runs the alerts role");
    println!("fleetwatch demo: every role in one process, no outside service");
    println!("  live page      http://{http}/");
    println!("  REST           http://{http}/devices  (API: http://{http}/openapi.json)");
    let auth = if settings.auth.mode == Some(AuthMode::Jwt) {
        " -H \"authorization: Bearer $OPERATOR_TOKEN\""
    } else {
        ""
    };
    println!(
        "  try            curl -X POST -H 'content-type: application/json'{auth} -d '{{\"name\":\"reboot\"}}' http://{http}/devices/sim-00001/commands"
    );
    println!("  metrics        http://{http}/metrics");
    println!("  health         http://{http}/readyz  (liveness: /livez)");
    println!("  alerts         ws://{ws}/");
    println!(
        "  MQTT devices   mqtt://{} (v3.1.1; embedded broker: local, plain, no TLS, no credentials)",
        broker.v4
    );
    println!(
        "  MQTT ingest    mqtt://{} (v5; same local plain broker)",
        broker.v5
    );
    println!(
        "  Kafka          {} (in-process mock cluster)",
        settings.kafka.brokers
    );
    if app.roles_running(crate::storage::ROLE.name) {
        println!(
            "  time series    {} (readings, scores, alerts, device events; Grafana: dashboards/)",
            settings.storage.url
        );
    } else {
        println!("  time series    none: --tsdb URL writes readings, scores and alerts to a store");
    }
}

async fn wait_until_ready(app: &app::RunningApp) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !app.is_ready() {
        if Instant::now() > deadline {
            return Err(Error::RoleFailed {
                role: "demo",
                reason: "roles not ready within 60 s".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The simulated fleet, connected to the embedded broker's v3.1.1 listener.
fn simulator(options: &DemoOptions, broker: &broker::EmbeddedBroker) -> SimConfig {
    let mut sim = SimConfig::new(
        &broker.v4.ip().to_string(),
        broker.v4.port(),
        options.devices,
    );
    sim.interval_ms = options.interval_ms;
    sim.seed = options.seed;
    sim.anomalies_per_minute = options.anomalies_per_minute;
    sim.warmup_secs = options.warmup_secs;
    sim.ground_truth = options.ground_truth.clone();
    sim.outages_per_minute = options.outages_per_minute;
    sim.duration_secs = options
        .exit_after
        .map(|secs| (secs as f64 - DRAIN.as_secs_f64()).max(1.0));
    println!(
        "  simulator      {} devices, a reading every {} ms, anomalies after {} s{}",
        sim.devices,
        sim.interval_ms,
        sim.warmup_secs,
        options
            .exit_after
            .map_or(String::new(), |s| format!(", stopping after {s} s"))
    );
    sim
}

/// Run the fleet to its end (or until interrupted), printing progress every 5 s; returns
/// the injected anomalies.
async fn drive(
    app: &app::RunningApp,
    sim: SimConfig,
    interrupted: CancellationToken,
) -> Result<Vec<fleetwatch_sim::Injected>> {
    let failed = |reason: String| Error::RoleFailed {
        role: "simulator",
        reason,
    };
    let stats = Arc::new(FleetStats::default());
    let fleet = tokio::spawn(run_fleet(sim, stats.clone(), interrupted.child_token()));
    tokio::pin!(fleet);
    let started = Instant::now();
    let mut progress = tokio::time::interval(Duration::from_secs(5));
    progress.tick().await;
    loop {
        tokio::select! {
            finished = &mut fleet => {
                return finished
                    .map_err(|e| failed(e.to_string()))?
                    .map_err(|e| failed(e.to_string()));
            }
            _ = progress.tick() => {
                let metrics = &app.metrics;
                println!(
                    "  [{:>4}s] devices connected {}  telemetry in {}  anomalies injected {}  alerts raised {}",
                    started.elapsed().as_secs(),
                    stats.connected.load(Ordering::Relaxed),
                    metrics.ingest_messages.with_label_values(&["forwarded"]).get(),
                    stats.anomalies.load(Ordering::Relaxed),
                    metrics.alerts_emitted.with_label_values(&["raised"]).get(),
                );
            }
        }
    }
}
