//! `fleetwatch demo`: the production roles, unchanged, on embedded infrastructure — an
//! in-process MQTT broker (rumqttd) and librdkafka's mock Kafka cluster — driven by the
//! simulator, with the live page. A default for trying fleetwatch out, not a second
//! pipeline: [`crate::app::start`] is the same call `fleetwatch run` makes.

mod broker;
mod job;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use fleetwatch_protocol::{now_ms, Verdict};
use fleetwatch_sim::fleet::SimError;
use fleetwatch_sim::{
    evaluate, run_fleet, AlarmReviewer, AlertListener, Evaluation, FleetStats, Injected, Review,
    ReviewerConfig, SimConfig,
};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde::Serialize;
use tokio::sync::oneshot;
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
    /// The simulator's verdicts on the alarms ([`fleetwatch_sim::AlarmReviewer`]): false
    /// positives match no injected anomaly.
    #[serde(flatten)]
    pub feedback: FeedbackFigures,
    /// What the WebSocket client's alerts say about the injected anomalies.
    #[serde(flatten)]
    pub evaluation: Evaluation,
    /// The demo's fleet job at the end (`None`: it was never created).
    pub job: Option<job::JobFigures>,
    /// Job events the WebSocket client received.
    pub job_events_received: usize,
}

/// The false-positive rate before and after feedback. The window runs from the
/// simulator's first verdict to the devices' stop; "before" is its first half, "after"
/// its second (the model has the first half's verdicts by then). A rate is the false
/// alarms (alarms matching no injected anomaly) created in the half, per 1,000
/// device-minutes.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct FeedbackFigures {
    pub alarms_true_positive: usize,
    pub alarms_false_positive: usize,
    /// Acknowledgements the service refused or did not answer.
    pub acknowledgements_failed: usize,
    /// Seconds from the devices' start to the first verdict, and the window's length.
    pub verdicts_began_s: Option<f64>,
    pub feedback_window_s: f64,
    pub false_alarms_per_1000_device_minutes_before: Option<f64>,
    pub false_alarms_per_1000_device_minutes_after: Option<f64>,
}

impl FeedbackFigures {
    /// From the reviews of a run of `devices` that ran from `start_ms` to `stop_ms`.
    pub fn new(reviews: &[Review], devices: usize, start_ms: i64, stop_ms: i64) -> Self {
        let false_created: Vec<i64> = (reviews.iter())
            .filter(|r| r.verdict == Verdict::FalsePositive)
            .map(|r| r.created_ms)
            .collect();
        let mut figures = Self {
            alarms_true_positive: reviews.len() - false_created.len(),
            alarms_false_positive: false_created.len(),
            acknowledgements_failed: reviews.iter().filter(|r| r.status != 200).count(),
            ..Self::default()
        };
        let Some(began) = reviews.iter().map(|r| r.reviewed_ms).min() else {
            return figures;
        };
        let window_ms = (stop_ms - began).max(0);
        figures.verdicts_began_s = Some((began - start_ms) as f64 / 1000.0);
        figures.feedback_window_s = window_ms as f64 / 1000.0;
        if window_ms == 0 || devices == 0 {
            return figures;
        }
        let middle = began + window_ms / 2;
        let device_minutes = devices as f64 * (window_ms as f64 / 2.0) / 60_000.0;
        let rate = |from: i64, to: i64| {
            let count = false_created
                .iter()
                .filter(|&&at| from <= at && at < to)
                .count();
            Some((count as f64 / device_minutes * 1000.0 * 100.0).round() / 100.0)
        };
        figures.false_alarms_per_1000_device_minutes_before = rate(began, middle);
        figures.false_alarms_per_1000_device_minutes_after = rate(middle, stop_ms);
        figures
    }
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
    let stats = Arc::new(FleetStats::default());
    let reviewer = reviewer(&app, &operator, &listener, &stats);
    let (api, demo_job, job_stop) = start_job(&app, &settings)?;
    let start_ms = now_ms();
    let injected = drive(&app, sim, stats, interrupted).await?;
    let stop_ms = now_ms();
    tokio::time::sleep(DRAIN).await;
    job_stop.cancel();
    let job = match demo_job.await {
        Ok(Some(job_id)) => api.figures(&job_id).await,
        _ => None,
    };
    let reviews = reviewer.finish().await;
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
        feedback: FeedbackFigures::new(&reviews, options.devices, start_ms, stop_ms),
        evaluation,
        job,
        job_events_received: listener.job_events().len(),
    })
}

/// When the demo's job starts: once every device had time to connect and report.
const JOB_AFTER: Duration = Duration::from_secs(10);

/// Start the demo's job (as the first demo tenant when auth is on); the task answers its
/// id, and stops waiting when the token is cancelled.
fn start_job(
    app: &app::RunningApp,
    settings: &Settings,
) -> Result<(
    job::DemoApi,
    tokio::task::JoinHandle<Option<String>>,
    CancellationToken,
)> {
    let tenant_token = match settings.auth.mode {
        Some(AuthMode::Jwt) => Some(token(settings, Some(DEMO_TENANTS[0].0))?),
        _ => None,
    };
    let api = job::DemoApi::new(app.http_addr, tenant_token);
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (api, stop) = (api.clone(), stop.clone());
        async move { api.start_job(JOB_AFTER, stop).await }
    });
    Ok((api, task, stop))
}

/// How long the first member of a consumer group waits for others on the in-process
/// cluster. Each of the demo's groups has one member, started with the others, so the
/// broker's default of 3 s would only delay readiness.
const GROUP_INITIAL_REBALANCE_DELAY: Duration = Duration::from_millis(100);

/// Pause between two topic creations on the in-process cluster. Its thread drains its
/// wake-up pipe after serving its queue of operations, so an operation queued right
/// after the previous one's answer loses its wake-up and waits out a 1 s poll: 5 s for
/// the demo's topics. The pause lets the thread go back to its poll first.
const TOPIC_CREATION_PAUSE: Duration = Duration::from_millis(5);

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
    cluster.group_initial_rebalance_delay(GROUP_INITIAL_REBALANCE_DELAY);
    settings.kafka.brokers = cluster.bootstrap_servers();
    settings.kafka.partitions = partitions;
    for spec in settings.kafka.topics().all() {
        std::thread::sleep(TOPIC_CREATION_PAUSE);
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
        // The demo keeps no history: no archive.
        .filter(|&name| name != crate::archive::ROLE.name)
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

/// The simulator's reviewer: acknowledges the alarms the listener receives through the
/// REST API, with a verdict from the ground truth (so the demo exercises the feedback
/// loop).
fn reviewer(
    app: &app::RunningApp,
    operator: &str,
    listener: &AlertListener,
    stats: &Arc<FleetStats>,
) -> AlarmReviewer {
    let config = ReviewerConfig {
        http_url: format!("http://127.0.0.1:{}", app.http_addr.port()),
        token: operator.strip_prefix("?access_token=").map(str::to_owned),
        review_after_ms: REVIEW_AFTER_MS,
        grace_ms: MATCH_GRACE_MS,
    };
    AlarmReviewer::start(config, listener.alarm_feed(), stats.clone())
}

/// An alarm that has not cleared is reviewed this long after its creation.
const REVIEW_AFTER_MS: i64 = 10_000;

/// Run the fleet to its end (or until interrupted), printing progress every 5 s; returns
/// the injected anomalies.
async fn drive(
    app: &app::RunningApp,
    sim: SimConfig,
    stats: Arc<FleetStats>,
    interrupted: CancellationToken,
) -> Result<Vec<Injected>> {
    let failed = |reason: String| Error::RoleFailed {
        role: "simulator",
        reason,
    };
    let fleet = fleet_on_its_own_runtime(sim, stats.clone(), interrupted.child_token())
        .map_err(|e| failed(e.to_string()))?;
    tokio::pin!(fleet);
    let started = Instant::now();
    let mut progress = tokio::time::interval(Duration::from_secs(5));
    progress.tick().await;
    loop {
        tokio::select! {
            finished = &mut fleet => {
                return finished
                    .map_err(|_| failed("its thread stopped".to_owned()))?
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

/// Run the simulated fleet on a thread and runtime of its own, as `fleetsim` runs in a
/// process of its own beside a deployment. On the service's runtime, its devices' tasks
/// (all of them connecting at once, the moment the service is ready) queued ahead of the
/// service's own: a command sent then took 28 ms in the median instead of about 12.
fn fleet_on_its_own_runtime(
    sim: SimConfig,
    stats: Arc<FleetStats>,
    stop: CancellationToken,
) -> std::io::Result<oneshot::Receiver<std::result::Result<Vec<Injected>, SimError>>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, finished) = oneshot::channel();
    std::thread::Builder::new()
        .name("simulator".to_owned())
        .spawn(move || {
            let _ = done.send(runtime.block_on(run_fleet(sim, stats, stop)));
        })?;
    Ok(finished)
}

#[cfg(test)]
mod feedback_figures_tests {
    use super::*;

    fn review(created_ms: i64, reviewed_ms: i64, verdict: Verdict) -> Review {
        Review {
            alarm_id: format!("sim-1:{created_ms}"),
            device: "sim-1".into(),
            created_ms,
            verdict,
            status: 200,
            reviewed_ms,
        }
    }

    #[test]
    fn false_alarms_are_counted_per_half_of_the_window_after_the_first_verdict() {
        // Devices from 0 to 130 s; the first verdict at 10 s: halves 10–70 s and 70–130 s.
        let reviews = [
            review(5_000, 10_000, Verdict::FalsePositive),
            review(20_000, 30_000, Verdict::FalsePositive),
            review(40_000, 50_000, Verdict::FalsePositive),
            review(60_000, 70_000, Verdict::TruePositive),
            review(100_000, 110_000, Verdict::FalsePositive),
        ];
        let figures = FeedbackFigures::new(&reviews, 100, 0, 130_000);
        assert_eq!(
            (figures.alarms_false_positive, figures.alarms_true_positive),
            (4, 1)
        );
        assert_eq!(figures.verdicts_began_s, Some(10.0));
        assert_eq!(figures.feedback_window_s, 120.0);
        // 100 devices × 1 minute per half: 2 (at 20 s and 40 s) before, 1 after.
        assert_eq!(
            figures.false_alarms_per_1000_device_minutes_before,
            Some(20.0)
        );
        assert_eq!(
            figures.false_alarms_per_1000_device_minutes_after,
            Some(10.0)
        );
        assert_eq!(
            FeedbackFigures::new(&[], 100, 0, 1),
            FeedbackFigures::default()
        );
    }
}
