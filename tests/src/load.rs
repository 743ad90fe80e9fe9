//! The load harness (docs/benchmarks.md, "Load"): a Mosquitto and a tansu of its own, the
//! service (the five pipeline roles in one process, or one process per role) and
//! `fleetsim`, each a process of its own, so every figure is per process:
//! - CPU per message of each process (user + system from /proc over a measuring window,
//!   divided by the readings ingest forwarded in it), the service's resident memory and
//!   its consumer lag at the window's end;
//! - loss: readings the devices had acknowledged that are not in `iot.telemetry`;
//! - device publish → WebSocket alert (fleetsim's evaluation of the anomalies it
//!   injected), device publish → twin updated (`fleetwatch_twin_update_delay_seconds`);
//! - the broker's own produce → consume latency, measured beside the load by a bare
//!   producer and consumer with the service's settings (the floor the pipeline's two
//!   hops stand on).

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::brokers::OwnBrokers;
use crate::{http_get, Namespace, Service};

/// One load: `devices` devices, each reading every `interval_ms`.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub devices: usize,
    pub interval_ms: u64,
    /// Seconds before measuring: connections made, models past their warm-up (fleetsim
    /// starts injecting anomalies then).
    pub warmup_secs: f64,
    /// Seconds measured.
    pub window_secs: f64,
    /// Partitions of every topic (`kafka.partitions`): as many as instances of a role
    /// may share the work. tansu's in-memory engine lists every batch stored in a
    /// partition on each fetch that finds new records there, so on tansu more partitions
    /// cost every consumer of the topic in proportion (docs/benchmarks.md, "Partitions
    /// on tansu"); on Kafka a fetch costs the same whatever the partition holds.
    pub partitions: u32,
    /// Anomalies fleetsim injects a minute over the whole fleet: the alert latency's
    /// samples.
    pub anomalies_per_minute: f64,
}

impl Load {
    pub fn rate(&self) -> f64 {
        self.devices as f64 * 1000.0 / self.interval_ms as f64
    }
}

/// How the service runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The five pipeline roles in one process.
    OneProcess,
    /// One process per role: each role's own cost.
    PerRole,
}

/// The roles of the pipeline measured (storage, when there is a store, runs on its own).
pub const PIPELINE_ROLES: [&str; 5] = ["ingest", "devices", "trainer", "scorer", "alerts"];

/// What one load measured.
#[derive(Debug, Default, serde::Serialize)]
pub struct Measured {
    pub layout: String,
    pub partitions: u32,
    pub devices: usize,
    pub interval_ms: u64,
    pub target_rate: f64,
    /// Readings ingest forwarded per second over the window.
    pub rate: f64,
    pub acknowledged: u64,
    pub stored: u64,
    pub lost: u64,
    /// CPU µs per message over the window, by process.
    pub cpu_us_per_message: BTreeMap<String, f64>,
    /// Resident memory of the service's processes at the window's end.
    pub service_rss_mb: f64,
    /// Records not yet handled, over every consumer of the service, at the window's end.
    pub lag_at_end: f64,
    pub alert_ms_p50: Option<i64>,
    pub alert_ms_p99: Option<i64>,
    pub anomalies_detected: u64,
    /// Upper bounds of the histogram buckets holding the quantile.
    pub twin_ms_p50: Option<f64>,
    pub twin_ms_p99: Option<f64>,
    pub floor_ms_p50: Option<f64>,
    pub floor_ms_p99: Option<f64>,
    /// The machine's speed just before the load ([`machine_reference_us`]), when the
    /// caller measured it.
    pub machine_reference_us: Option<f64>,
}

/// The service's processes of one run, by name.
struct Deployment {
    services: Vec<(String, Service)>,
}

impl Deployment {
    fn start(brokers: &OwnBrokers, namespace: &Namespace, layout: Layout, partitions: u32) -> Self {
        let partitions = partitions.to_string();
        let env = [
            ("RUST_LOG", "warn"),
            ("FLEETWATCH_KAFKA__PARTITIONS", partitions.as_str()),
        ];
        let mut services = Vec::new();
        match layout {
            Layout::OneProcess => {
                let roles = PIPELINE_ROLES.join(",");
                let service = Service::start_with(&brokers.rig, namespace, &roles, "all", &env);
                services.push(("fleetwatch".to_owned(), service));
            }
            Layout::PerRole => {
                for role in PIPELINE_ROLES {
                    let service = Service::start_with(&brokers.rig, namespace, role, role, &env);
                    services.push((format!("fleetwatch {role}"), service));
                }
            }
        }
        if std::env::var("FLEETWATCH_TEST_TSDB_URL").is_ok() {
            let service = Service::start_with(&brokers.rig, namespace, "storage", "storage", &env);
            services.push(("fleetwatch storage".to_owned(), service));
        }
        Self { services }
    }

    fn named(&self, role_or_all: &str) -> &Service {
        self.services
            .iter()
            .find(|(name, _)| name == "fleetwatch" || name.ends_with(role_or_all))
            .map(|(_, service)| service)
            .expect("the role runs")
    }

    /// The service's processes and the brokers', by name: what CPU is measured of.
    fn pids_with(&self, brokers: &OwnBrokers) -> Vec<(String, u32)> {
        let services = (self.services.iter()).map(|(name, service)| (name.clone(), service.pid()));
        let brokers = brokers.pids().map(|(name, pid)| (name.to_owned(), pid));
        services.chain(brokers).collect()
    }

    /// Sum of a metric family's samples over every process (e.g. all partitions' lag).
    fn sum(&self, family: &str) -> f64 {
        self.services
            .iter()
            .map(|(_, service)| metric_family_sum(service, family))
            .sum()
    }
}

/// Run `load` against `brokers` and measure it. `fleetsim` is the simulator's binary.
pub fn run(brokers: &OwnBrokers, fleetsim: &str, load: Load, layout: Layout) -> Measured {
    let namespace = Namespace::new("load");
    let deployment = Deployment::start(brokers, &namespace, layout, load.partitions);
    let floor = FloorProbe::start(&brokers.rig.kafka, &namespace.topic("load-floor"));
    let output_dir = std::env::temp_dir().join(&namespace.name);
    std::fs::create_dir_all(&output_dir).expect("a directory for fleetsim's output");
    let sim = start_fleetsim(
        fleetsim,
        brokers,
        &namespace,
        &deployment,
        load,
        &output_dir,
    );

    std::thread::sleep(Duration::from_secs_f64(load.warmup_secs));
    let mut pids = deployment.pids_with(brokers);
    pids.push(("fleetsim".to_owned(), sim.id()));
    let forwarded = || metric_family_sum(deployment.named("ingest"), FORWARDED);
    let (cpu_before, forwarded_before, started) = (cpu_of(&pids), forwarded(), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(load.window_secs));
    let (cpu_after, forwarded_after) = (cpu_of(&pids), forwarded());
    let window = started.elapsed().as_secs_f64();
    let messages = (forwarded_after - forwarded_before).max(1.0);

    let mut measured = Measured {
        layout: format!("{layout:?}"),
        partitions: load.partitions,
        devices: load.devices,
        interval_ms: load.interval_ms,
        target_rate: load.rate(),
        rate: messages / window,
        service_rss_mb: deployment
            .services
            .iter()
            .map(|(_, s)| rss_mb(s.pid()))
            .sum(),
        lag_at_end: deployment.sum("fleetwatch_consumer_lag"),
        ..Measured::default()
    };
    for ((name, _), (before, after)) in pids.iter().zip(cpu_before.iter().zip(&cpu_after)) {
        let per_message = (after - before) * 1e6 / messages;
        measured
            .cpu_us_per_message
            .insert(name.clone(), per_message);
    }
    let (acknowledged, evaluation) = finish_fleetsim(sim, &output_dir);
    measured.acknowledged = acknowledged;
    measured.alert_ms_p50 = evaluation["latency_ms_p50"].as_i64();
    measured.alert_ms_p99 = evaluation["latency_ms_p99"].as_i64();
    measured.anomalies_detected = evaluation["anomalies_detected"].as_u64().unwrap_or(0);
    let twin = histogram(deployment.named("devices"), TWIN_DELAY);
    (measured.twin_ms_p50, measured.twin_ms_p99) = (twin.quantile_ms(0.5), twin.quantile_ms(0.99));
    (measured.floor_ms_p50, measured.floor_ms_p99) = floor.finish();
    measured.stored = stored_readings(&brokers.rig.kafka, &namespace, acknowledged);
    measured.lost = measured.acknowledged.saturating_sub(measured.stored);
    measured
}

/// What the service and the brokers cost with no devices at all: ms of CPU per second of
/// each process over `window_secs`, measured `settle_secs` after the service is ready.
/// Fixed costs (fetches, polls, timers) are what a reading's cost falls towards as the
/// rate grows, and what an idle pod costs.
pub fn idle(
    brokers: &OwnBrokers,
    partitions: u32,
    settle_secs: f64,
    window_secs: f64,
) -> BTreeMap<String, f64> {
    let namespace = Namespace::new("idle");
    let deployment = Deployment::start(brokers, &namespace, Layout::OneProcess, partitions);
    std::thread::sleep(Duration::from_secs_f64(settle_secs));
    let pids = deployment.pids_with(brokers);
    let (before, started) = (cpu_of(&pids), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(window_secs));
    let after = cpu_of(&pids);
    let window = started.elapsed().as_secs_f64();
    pids.iter()
        .zip(before.iter().zip(&after))
        .map(|((name, _), (before, after))| (name.clone(), (after - before) * 1e3 / window))
        .collect()
}

const FORWARDED: &str = "fleetwatch_ingest_messages_total{outcome=\"forwarded\"}";
const TWIN_DELAY: &str = "fleetwatch_twin_update_delay_seconds";

fn start_fleetsim(
    fleetsim: &str,
    brokers: &OwnBrokers,
    namespace: &Namespace,
    deployment: &Deployment,
    load: Load,
    output_dir: &std::path::Path,
) -> Child {
    // Files, not pipes: nobody reads them until fleetsim ends, and a full pipe would
    // stall it.
    let file = |name: &str| std::fs::File::create(output_dir.join(name)).expect("output file");
    let duration = load.warmup_secs + load.window_secs + 2.0;
    Command::new(fleetsim)
        .args(["--mqtt-port", &brokers.rig.mqtt_port.to_string()])
        .args(["--devices", &load.devices.to_string()])
        .args(["--interval-ms", &load.interval_ms.to_string()])
        .args(["--id-prefix", &namespace.device_prefix()])
        .args(["--warmup-secs", &load.warmup_secs.to_string()])
        .args(["--duration-secs", &duration.to_string()])
        .args(["--quiet-tail-secs", "1"])
        .args([
            "--anomalies-per-minute",
            &load.anomalies_per_minute.to_string(),
        ])
        .args(["--alerts-url", &deployment.named("alerts").ws_url()])
        .args(["--drain-secs", "3"])
        .env("RUST_LOG", "warn")
        .stdout(file("fleetsim.out"))
        .stderr(file("fleetsim.err"))
        .stdin(Stdio::null())
        .spawn()
        .expect("fleetsim starts")
}

/// Wait for fleetsim: (readings the broker acknowledged, its evaluation).
fn finish_fleetsim(mut sim: Child, output_dir: &std::path::Path) -> (u64, serde_json::Value) {
    let status = sim.wait().expect("fleetsim ends");
    let read = |name: &str| std::fs::read_to_string(output_dir.join(name)).unwrap_or_default();
    let (stdout, stderr) = (read("fleetsim.out"), read("fleetsim.err"));
    assert!(status.success(), "fleetsim failed: {stderr}");
    let evaluation = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_default();
    // `done: published N  acknowledged M  unacknowledged at exit K ...`: readings are
    // what was published; acknowledgements also count status messages. What a device
    // still held unacknowledged when it stopped was never the broker's.
    let tokens: Vec<&str> = stderr.split_whitespace().collect();
    let count_after = |words: &[&str]| -> u64 {
        tokens
            .windows(words.len() + 1)
            .rev()
            .find(|w| w[..words.len()] == *words)
            .and_then(|w| w[words.len()].parse().ok())
            .unwrap_or_else(|| panic!("no {words:?} in fleetsim's summary: {stderr}"))
    };
    let published = count_after(&["published"]);
    let unacknowledged = count_after(&["unacknowledged", "at", "exit"]);
    (published.saturating_sub(unacknowledged), evaluation)
}

/// Distinct readings (device, sequence number) of the run's devices in `iot.telemetry`,
/// read once ingest has forwarded what it holds: until `expected` are there, or the
/// count stopped growing for 20 s (an overloaded run drains its broker's queue first).
fn stored_readings(kafka: &str, namespace: &Namespace, expected: u64) -> u64 {
    let topic = namespace.topic("iot.telemetry");
    let (mut stored, mut grew) = (0, Instant::now());
    loop {
        let now = count_readings(kafka, &topic);
        if now > stored {
            (stored, grew) = (now, Instant::now());
        }
        if stored >= expected || grew.elapsed() > Duration::from_secs(20) {
            return stored;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn count_readings(kafka: &str, topic: &str) -> u64 {
    let mut readings: HashSet<(String, u64)> = HashSet::new();
    for record in crate::read_topic(kafka, topic) {
        if let Some(fleetwatch_protocol::DeviceEventBody::Telemetry(reading)) =
            record.device_event().map(|event| event.body)
        {
            readings.insert((record.key, reading.seq));
        }
    }
    readings.len() as u64
}

/// User + system CPU seconds of each process.
fn cpu_of(pids: &[(String, u32)]) -> Vec<f64> {
    pids.iter().map(|(_, pid)| cpu_seconds(*pid)).collect()
}

pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime, in clock ticks (100 per second on Linux).
    (ticks(11) + ticks(12)) / 100.0
}

pub fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Sum of the samples of `family` (a name, or a name with its exact labels).
fn metric_family_sum(service: &Service, family: &str) -> f64 {
    let Ok((_, text)) = http_get(service.http, "/metrics") else {
        return 0.0;
    };
    text.lines()
        .filter(|line| {
            line.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A Prometheus histogram's cumulative buckets: (upper bound in seconds, count).
struct Buckets(Vec<(f64, f64)>);

fn histogram(service: &Service, name: &str) -> Buckets {
    let (_, text) = http_get(service.http, "/metrics").expect("metrics answer");
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (bound, rest) = rest.split_once('"')?;
            let count = rest.rsplit_once(' ')?.1.parse().ok()?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count))
        })
        .collect();
    Buckets(buckets)
}

impl Buckets {
    /// The upper bound (ms) of the bucket holding quantile `q`.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.0.last()?.1;
        if total == 0.0 {
            return None;
        }
        let (bound, _) = self.0.iter().find(|(_, count)| *count >= q * total)?;
        Some(bound * 1000.0)
    }
}

/// A bare producer and consumer on a topic of their own, with the service's settings:
/// one timestamped record every 10 ms, each timed from produce to consume.
struct FloorProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<f64>>,
}

impl FloorProbe {
    fn start(kafka: &str, topic: &str) -> Self {
        let (kafka, topic) = (kafka.to_owned(), topic.to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || probe(&kafka, &topic, &stop)
        });
        Self { stop, thread }
    }

    /// (p50, p99) of produce → consume, ms.
    fn finish(self) -> (Option<f64>, Option<f64>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut latencies = self.thread.join().expect("the probe does not panic");
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
            latencies.get(index).copied()
        };
        (at(0.5), at(0.99))
    }
}

fn probe(kafka: &str, topic: &str, stop: &AtomicBool) -> Vec<f64> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .expect("probe producer");
    create_topic(kafka, topic);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", crate::unique("floor"))
        .set("enable.auto.commit", "false")
        // The service's urgent consumers' wait (`kafka.urgent_fetch_wait_ms`), the
        // consumers an alert crosses.
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("probe consumer");
    let mut assignment = TopicPartitionList::new();
    let _ = assignment.add_partition_offset(topic, 0, Offset::End);
    consumer.assign(&assignment).expect("assigns");
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut next_send = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next_send {
            let sent = started.elapsed().as_secs_f64() * 1000.0;
            let payload = sent.to_string();
            let _ = producer.send(BaseRecord::to(topic).key("probe").payload(&payload));
            next_send += Duration::from_millis(10);
        }
        producer.poll(Duration::ZERO);
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(2)) {
            let sent = message
                .payload()
                .and_then(|p| std::str::from_utf8(p).ok())
                .and_then(|p| p.parse::<f64>().ok());
            if let Some(sent) = sent.filter(|sent| *sent > 0.0) {
                latencies.push(started.elapsed().as_secs_f64() * 1000.0 - sent);
            }
        }
    }
    latencies
}

fn create_topic(kafka: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .create()
        .expect("admin client");
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    futures::executor::block_on(admin.create_topics([&new], &AdminOptions::new()))
        .expect("the probe's topic is created");
}

/// The machine's speed at the moment: CPU µs to score one reading of 8 metrics with the
/// production model, on this thread, nothing else of the harness running. The same work
/// as criterion's `score/8_metrics` (`cargo bench -p fleetwatch-models --bench model`),
/// which measured 0.963 µs on a quiet machine (2026-11-26) and 3.0–3.9 µs on the night of
/// 2026-11-28: the shared machine's speed moves by that much from hour to hour, so a
/// load's CPU figures are read beside this one. Call it from a release build (about 1 s).
pub fn machine_reference_us() -> f64 {
    use fleetwatch_models::production::{self, Config};
    use fleetwatch_models::synthetic::related_readings;
    use fleetwatch_models::{MetricValues, Observation, Scorer, Trainer};
    const TRAINED: usize = 2_000;
    const SCORES: usize = 400_000;
    let readings = related_readings(8, 3_000, 1000, 100.0 * std::f64::consts::PI);
    fn observe((ts_ms, metrics): &(i64, MetricValues)) -> Observation<'_> {
        Observation {
            ts_ms: *ts_ms,
            metrics,
        }
    }
    let mut trainer = production::trainer(&Config::default());
    readings[..TRAINED]
        .iter()
        .for_each(|reading| trainer.update(&observe(reading)));
    let params = trainer.snapshot();
    let mut scorer = production::scorer();
    let scored = &readings[TRAINED..];
    let started = thread_cpu_ns();
    let mut checksum = 0.0;
    for reading in scored.iter().cycle().take(SCORES) {
        checksum += scorer.score(&params, &observe(reading)).value;
    }
    let spent_ns = thread_cpu_ns() - started;
    std::hint::black_box(checksum);
    spent_ns as f64 / 1000.0 / SCORES as f64
}

/// CPU time of the calling thread, in ns (`/proc/thread-self/schedstat`'s first field).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|stat| stat.split_whitespace().next()?.parse().ok())
        .expect("/proc/thread-self/schedstat (Linux)")
}

/// The run as a Markdown table row (see [`TABLE_HEADER`]).
pub fn table_row(m: &Measured) -> String {
    let cpu = |name: &str| {
        m.cpu_us_per_message
            .iter()
            .filter(|(process, _)| process.starts_with(name))
            .map(|(_, us)| us)
            .sum::<f64>()
    };
    let ms = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.0}"));
    let msi = |v: Option<i64>| v.map_or("—".into(), |v| v.to_string());
    format!(
        "| {} | {} | {:.0} | {:.0} | {} / {} ({} lost) | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {} / {} | {} / {} | {} / {} | {} |",
        m.layout, m.partitions, m.target_rate, m.rate, m.stored, m.acknowledged, m.lost,
        cpu("fleetwatch") - cpu("fleetwatch storage"), cpu("tansu"), cpu("mosquitto"), cpu("fleetsim"),
        m.service_rss_mb, m.lag_at_end,
        msi(m.alert_ms_p50), msi(m.alert_ms_p99), ms(m.twin_ms_p50), ms(m.twin_ms_p99),
        ms(m.floor_ms_p50), ms(m.floor_ms_p99),
        m.machine_reference_us.map_or("—".into(), |us| format!("{us:.2}")),
    )
}

pub const TABLE_HEADER: &str = "| layout | partitions | target msg/s | measured msg/s | stored / acknowledged | fleetwatch µs/msg | tansu | Mosquitto | fleetsim | fleetwatch RSS MB | lag at end | publish → alert p50 / p99 ms | publish → twin p50 / p99 ms (bucket bound) | broker floor p50 / p99 ms | machine reference µs |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";
