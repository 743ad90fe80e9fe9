//! The fault matrix: the simulator publishes at a steady rate while one thing breaks —
//! the service (killed five times), Mosquitto (restarted gracefully, then killed), tansu
//! (restarted, then frozen for 15 s), or one of two instances (killed and replaced). Each
//! case counts what the devices had acknowledged by the broker against what reached
//! `iot.telemetry`, the effects applied twice (twin events, alerts of one episode,
//! commands), model-parameter versions that went backwards, and the time to recover.
//!
//! The brokers are the test's own (Mosquitto with persistence, tansu on sqlite), so they
//! can be broken without touching the other tests. `scripts/test` runs a short matrix
//! (debug build); the full run (`FLEETWATCH_FAULTS_SECS`, `_DEVICES`, `_INTERVAL_MS`, a
//! release binary in `FLEETWATCH_BIN`) is in docs/reliability.md.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetwatch_e2e::brokers::{OwnBrokers, Stop};
use fleetwatch_e2e::{http_request, read_topic, Namespace, Rig, Service};
use fleetwatch_protocol::DeviceEventBody;
use fleetwatch_sim::{run_fleet, FleetStats, SimConfig};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    ServiceKilledFiveTimes,
    MosquittoRestarted,
    /// As above with ingest on a shared subscription, which Mosquitto does not keep
    /// across its restart: reported, not asserted (full run only).
    MosquittoRestartedShared,
    MosquittoKilled,
    TansuRestarted,
    TansuFrozen,
    InstanceReplaced,
}

impl Fault {
    const ALL: [Fault; 7] = [
        Fault::ServiceKilledFiveTimes,
        Fault::MosquittoRestarted,
        Fault::MosquittoRestartedShared,
        Fault::MosquittoKilled,
        Fault::TansuRestarted,
        Fault::TansuFrozen,
        Fault::InstanceReplaced,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::ServiceKilledFiveTimes => "service SIGKILL x5",
            Fault::MosquittoRestarted => "mosquitto SIGTERM",
            Fault::MosquittoRestartedShared => "mosquitto SIGTERM, shared sub",
            Fault::MosquittoKilled => "mosquitto SIGKILL",
            Fault::TansuRestarted => "tansu SIGTERM",
            Fault::TansuFrozen => "tansu SIGSTOP 15 s",
            Fault::InstanceReplaced => "1 of 2 killed",
        }
    }

    fn namespace(self) -> &'static str {
        match self {
            Fault::ServiceKilledFiveTimes => "fault-kill",
            Fault::MosquittoRestarted => "fault-mqterm",
            Fault::MosquittoRestartedShared => "fault-mqshared",
            Fault::MosquittoKilled => "fault-mqkill",
            Fault::TansuRestarted => "fault-kterm",
            Fault::TansuFrozen => "fault-kstop",
            Fault::InstanceReplaced => "fault-replace",
        }
    }
}

/// The load of each case.
struct Load {
    devices: usize,
    interval_ms: u64,
    secs: f64,
}

impl Load {
    fn from_env() -> Self {
        let get = |name: &str, default: f64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Self {
            devices: get("FLEETWATCH_FAULTS_DEVICES", 40.0) as usize,
            interval_ms: get("FLEETWATCH_FAULTS_INTERVAL_MS", 100.0) as u64,
            secs: get("FLEETWATCH_FAULTS_SECS", 8.0),
        }
    }
}

/// What one case measured.
#[derive(Debug, Default)]
struct Outcome {
    acknowledged: u64,
    stored: u64,
    lost: u64,
    twin_applied_twice: u64,
    alerts_raised: u64,
    /// Raises repeated with the same alert id (transport: one episode, sent again).
    alert_raises_repeated: u64,
    /// Alarms created more than once (distinct creation events for one alarm).
    alarms_created_twice: u64,
    commands: u64,
    /// Command ids beyond one per idempotency key, in the twins' command journals (which
    /// also hold commands whose answer was lost in a crash).
    commands_created_twice: u64,
    /// Commands the devices started beyond the journaled ones (a device starts each
    /// command id once, so a second execution needs a second id).
    commands_run_twice: u64,
    params_backwards: u64,
    recovery: Duration,
}

/// The instances of a case, by name; their HTTP addresses for the command client.
struct Deployment {
    rig: Rig,
    env: Vec<(&'static str, &'static str)>,
    namespace: Namespace,
    instances: BTreeMap<&'static str, Service>,
    addresses: Arc<Mutex<Vec<SocketAddr>>>,
}

/// A short session timeout, so a killed member's partitions are free again soon.
const SESSION_TIMEOUT: Duration = Duration::from_secs(4);
const ENV: [(&str, &str); 2] = [
    ("FLEETWATCH_STORAGE__FLUSH_INTERVAL_MS", "200"),
    ("FLEETWATCH_KAFKA__SESSION_TIMEOUT_MS", "4000"),
];

impl Deployment {
    async fn start(&mut self, name: &'static str) {
        let service =
            Service::start_async(&self.rig, &self.namespace, "all", name, &self.env).await;
        self.instances.insert(name, service);
        self.publish_addresses();
    }

    fn kill(&mut self, name: &str) {
        if let Some(service) = self.instances.remove(name) {
            service.kill();
        }
        self.publish_addresses();
    }

    /// Start again, under the same name, every instance whose process ended.
    async fn restart_exited(&mut self) {
        let exited: Vec<&'static str> = self
            .instances
            .iter_mut()
            .filter_map(|(name, service)| (!service.is_running()).then_some(*name))
            .collect();
        for name in exited {
            println!("  instance {name} exited; restarting it");
            self.kill(name);
            tokio::time::sleep(SESSION_TIMEOUT + Duration::from_secs(1)).await;
            self.start(name).await;
        }
    }

    fn publish_addresses(&self) {
        *self.addresses.lock().unwrap() = self.instances.values().map(|s| s.http).collect();
    }

    fn any(&self) -> &Service {
        self.instances.values().next().expect("an instance runs")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_acknowledged_is_lost_and_nothing_is_applied_twice() {
    let dir = std::env::temp_dir().join(fleetwatch_e2e::unique("faults"));
    let mut brokers = tokio::task::block_in_place(|| OwnBrokers::start(dir.clone()));
    let load = Load::from_env();
    let mut table = Vec::new();
    let only = std::env::var("FLEETWATCH_FAULTS_ONLY").unwrap_or_default();
    let full = std::env::var("FLEETWATCH_FAULTS_FULL").is_ok();
    for fault in Fault::ALL {
        if !only.is_empty() && !only.split(',').any(|o| fault.namespace().ends_with(o)) {
            continue;
        }
        if fault == Fault::MosquittoRestartedShared && !full {
            continue;
        }
        let outcome = run_case(&mut brokers, fault, &load).await;
        println!("{:<20} {outcome:?}", fault.name());
        table.push((fault, outcome));
    }
    print_table(&load, &table);
    for (fault, outcome) in &table {
        if !matches!(
            fault,
            Fault::MosquittoKilled | Fault::MosquittoRestartedShared
        ) {
            assert_eq!(outcome.lost, 0, "{}: readings lost", fault.name());
        }
        assert_eq!(outcome.twin_applied_twice, 0, "{}", fault.name());
        assert_eq!(outcome.alarms_created_twice, 0, "{}", fault.name());
        assert_eq!(outcome.commands_created_twice, 0, "{}", fault.name());
        assert_eq!(outcome.commands_run_twice, 0, "{}", fault.name());
        assert_eq!(outcome.params_backwards, 0, "{}", fault.name());
    }
    let _ = std::fs::remove_dir_all(dir);
}

async fn run_case(brokers: &mut OwnBrokers, fault: Fault, load: &Load) -> Outcome {
    let mut env = ENV.to_vec();
    if matches!(fault, Fault::MosquittoRestarted | Fault::MosquittoKilled) {
        // One ingest on a plain subscription: Mosquitto keeps it in ingest's persistent
        // session across its restart, which it does not do for shared subscriptions.
        env.push(("FLEETWATCH_INGEST__SHARE_GROUP", ""));
    }
    let mut deployment = Deployment {
        rig: brokers.rig.clone(),
        env,
        namespace: Namespace::new(fault.namespace()),
        instances: BTreeMap::new(),
        addresses: Arc::default(),
    };
    deployment.start("a").await;
    if fault == Fault::InstanceReplaced {
        deployment.start("b").await;
    }
    let prefix = deployment.namespace.device_prefix();
    let stats = Arc::new(FleetStats::default());
    let stop_fleet = CancellationToken::new();
    let fleet = tokio::spawn(run_fleet(
        sim_config(&deployment.rig, &prefix, load),
        stats.clone(),
        stop_fleet.clone(),
    ));
    let stop_commands = CancellationToken::new();
    let commander = tokio::spawn(send_commands(
        deployment.addresses.clone(),
        prefix.clone(),
        load.devices,
        stop_commands.clone(),
    ));
    tokio::time::sleep(Duration::from_secs_f64(load.secs / 2.0)).await;
    let fault_over = inject(brokers, &mut deployment, fault).await;
    let recovery = recovered(&mut deployment, &prefix, fault_over).await;
    tokio::time::sleep(Duration::from_secs_f64(load.secs / 2.0)).await;
    stop_fleet.cancel();
    fleet.await.unwrap().unwrap();
    stop_commands.cancel();
    let commands = commander.await.unwrap();
    tokio::task::block_in_place(|| {
        let mut outcome = measure(&deployment, &stats, &prefix);
        outcome.commands = commands;
        outcome.recovery = recovery;
        outcome
    })
}

fn sim_config(rig: &Rig, prefix: &str, load: &Load) -> SimConfig {
    let mut sim = SimConfig::new(&rig.mqtt_host, rig.mqtt_port, load.devices);
    sim.id_prefix = prefix.to_owned();
    sim.interval_ms = load.interval_ms;
    // Until the case stops it: the steady time before and after the fault.
    sim.duration_secs = None;
    sim.warmup_secs = 3.0;
    sim.anomalies_per_minute = 30.0;
    sim.seed = 15;
    sim
}

/// Break what `fault` names; returns when the broken part is back.
async fn inject(brokers: &mut OwnBrokers, deployment: &mut Deployment, fault: Fault) -> Instant {
    // tansu hands a dead member's partitions to no one until a member joins after its
    // session timed out (docs/architecture.md): a restart comes after that timeout, as
    // a crashed pod's would (Kubernetes waits 10 s before the first restart).
    let restart_after = SESSION_TIMEOUT + Duration::from_secs(1);
    match fault {
        Fault::ServiceKilledFiveTimes => {
            for _ in 0..5 {
                deployment.kill("a");
                tokio::time::sleep(restart_after).await;
                deployment.start("a").await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        Fault::MosquittoRestarted | Fault::MosquittoRestartedShared | Fault::MosquittoKilled => {
            let how = if fault == Fault::MosquittoKilled {
                Stop::Kill
            } else {
                Stop::Graceful
            };
            tokio::task::block_in_place(|| brokers.restart_mosquitto(how, Duration::from_secs(2)));
        }
        Fault::TansuRestarted => tokio::task::block_in_place(|| {
            brokers.restart_tansu(Stop::Graceful, Duration::from_secs(2))
        }),
        Fault::TansuFrozen => {
            tokio::task::block_in_place(|| brokers.freeze_tansu(Duration::from_secs(15)))
        }
        Fault::InstanceReplaced => {
            deployment.kill("b");
            // The replacement has the same name (its MQTT session), as a StatefulSet
            // pod would.
            tokio::time::sleep(restart_after).await;
            deployment.start("b").await;
        }
    }
    Instant::now()
}

/// How long after `since` the service was ready again and applied a reading to a twin.
/// An instance that exited (a role failed for good) is started again after the session
/// timeout, as Kubernetes restarts a pod: that is part of the recovery time.
async fn recovered(deployment: &mut Deployment, prefix: &str, since: Instant) -> Duration {
    let since_ms = now_ms() - since.elapsed().as_millis() as i64;
    let probe = format!("/devices/{prefix}00000");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        deployment.restart_exited().await;
        let answers = tokio::task::block_in_place(|| {
            let service = deployment.any();
            let ready = fleetwatch_e2e::http_get(service.http, "/readyz").map(|(s, _)| s);
            let twin = fleetwatch_e2e::http_get(service.http, &probe);
            (ready.ok(), twin.ok())
        });
        if let (Some(200), Some((200, twin))) = answers {
            let twin: serde_json::Value = serde_json::from_str(&twin).unwrap();
            if twin["last_seen_ms"].as_i64().unwrap_or(0) > since_ms {
                return since.elapsed();
            }
        }
        assert!(Instant::now() < deadline, "no recovery in 180 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One command a second to a device of the fleet, each with its own idempotency key; a
/// request that fails (an instance down) is sent again with the same key until it is
/// answered. Returns how many were answered (the twins' journals say how many were
/// created: an answer may be lost in a crash).
async fn send_commands(
    addresses: Arc<Mutex<Vec<SocketAddr>>>,
    prefix: String,
    devices: usize,
    stop: CancellationToken,
) -> u64 {
    let mut created = 0;
    for n in 0.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let key = format!("fault-{n}");
        let device = format!("{prefix}{:05}", n % devices);
        let answered = tokio::task::spawn_blocking({
            let (addresses, key) = (addresses.clone(), key.clone());
            move || post_until_answered(&addresses, &device, &key)
        })
        .await
        .unwrap();
        if answered.is_some() {
            created += 1;
        }
    }
    created
}

fn post_until_answered(
    addresses: &Mutex<Vec<SocketAddr>>,
    device: &str,
    key: &str,
) -> Option<String> {
    let body = r#"{"name":"reboot","args":{"simulate":"ok"},"ttl_ms":600000}"#;
    for attempt in 0..40 {
        let address = addresses.lock().unwrap().get(attempt % 2).copied();
        let address = address.or_else(|| addresses.lock().unwrap().first().copied());
        if let Some(address) = address {
            let path = format!("/devices/{device}/commands");
            let headers = [
                ("content-type", "application/json"),
                ("idempotency-key", key),
            ];
            if let Ok((status, _, text)) =
                http_request(address, "POST", &path, &headers, Some(body))
            {
                if status == 200 || status == 201 {
                    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
                    return answer["command_id"].as_str().map(str::to_owned);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    None
}

fn measure(deployment: &Deployment, stats: &FleetStats, prefix: &str) -> Outcome {
    let topic = |base: &str| deployment.namespace.topic(base);
    let published = stats.published.load(Ordering::Relaxed);
    let unacknowledged = stats.unacknowledged_at_exit.load(Ordering::Relaxed)
        + stats.lost_in_outages.load(Ordering::Relaxed);
    let acknowledged = published.saturating_sub(unacknowledged);
    let kafka = deployment.rig.kafka.clone();
    let telemetry = read_topic(&kafka, &topic("iot.telemetry"));
    let (readings, other_events) = telemetry_of(&telemetry, prefix);
    let stored: u64 = readings.values().map(|seqs| seqs.len() as u64).sum();
    report_gaps(&readings);
    let (alerts_raised, alert_raises_repeated) = raised_alerts(&kafka, &topic("iot.alerts"));
    let started = stats.commands_started.load(Ordering::Relaxed);
    let journaled = journaled_commands(deployment, readings.keys());
    let journaled_ids: u64 = journaled.values().map(|ids| ids.len() as u64).sum();
    Outcome {
        acknowledged,
        stored,
        lost: acknowledged.saturating_sub(stored),
        twin_applied_twice: twin_excess(deployment, &readings, &other_events),
        alerts_raised,
        alert_raises_repeated,
        alarms_created_twice: alarms_created_twice(&kafka, &topic("iot.alarms")),
        commands_created_twice: journaled_ids.saturating_sub(journaled.len() as u64),
        commands_run_twice: started.saturating_sub(journaled_ids),
        params_backwards: versions_backwards(&kafka, &topic("iot.model-params")),
        ..Outcome::default()
    }
}

/// Distinct reading sequence numbers per device, and the other device events per device.
#[allow(clippy::type_complexity)]
fn telemetry_of(
    records: &[fleetwatch_e2e::Record],
    prefix: &str,
) -> (HashMap<String, HashSet<u64>>, HashMap<String, u64>) {
    let (mut readings, mut others): (HashMap<_, HashSet<u64>>, HashMap<_, u64>) =
        Default::default();
    for record in records {
        let Some(event) = record.device_event() else {
            continue;
        };
        let device = event.device_id.to_string();
        if !device.starts_with(prefix) {
            continue;
        }
        match event.body {
            DeviceEventBody::Telemetry(t) => {
                readings.entry(device).or_default().insert(t.seq);
            }
            _ => *others.entry(device).or_default() += 1,
        }
    }
    (readings, others)
}

/// Twin events beyond what the device sent: each reading once, and each other event as
/// often as it is on the topic (a crash of ingest may put one there twice, legitimately).
fn twin_excess(
    deployment: &Deployment,
    readings: &HashMap<String, HashSet<u64>>,
    others: &HashMap<String, u64>,
) -> u64 {
    let mut excess = 0;
    for (device, seqs) in readings {
        let expected = seqs.len() as u64 + others.get(device).copied().unwrap_or(0);
        let (status, twin) = deployment.any().get(&format!("/devices/{device}"));
        assert_eq!(status, 200, "{twin}");
        let applied = twin["events"].as_u64().expect("the twin counts its events");
        excess += applied.saturating_sub(expected);
    }
    excess
}

/// Command ids per idempotency key, from the twins' command journals.
fn journaled_commands<'a>(
    deployment: &Deployment,
    devices: impl Iterator<Item = &'a String>,
) -> HashMap<String, HashSet<String>> {
    let mut journaled: HashMap<String, HashSet<String>> = HashMap::new();
    for device in devices {
        let (status, twin) = deployment.any().get(&format!("/devices/{device}"));
        assert_eq!(status, 200, "{twin}");
        for command in twin["commands"].as_array().into_iter().flatten() {
            if let (Some(key), Some(id)) = (
                command["idempotency_key"].as_str(),
                command["command_id"].as_str(),
            ) {
                journaled
                    .entry(key.to_owned())
                    .or_default()
                    .insert(id.to_owned());
            }
        }
    }
    journaled
}

/// (episodes raised, raises beyond the first of an episode).
fn raised_alerts(kafka: &str, topic: &str) -> (u64, u64) {
    let mut raised: HashMap<String, u64> = HashMap::new();
    for record in read_topic(kafka, topic) {
        let Ok(alert) = serde_json::from_str::<serde_json::Value>(&record.payload) else {
            continue;
        };
        if alert["state"] == "raised" {
            *raised
                .entry(alert["alert_id"].as_str().unwrap_or("").to_owned())
                .or_default() += 1;
        }
    }
    let twice = raised.values().map(|n| n - 1).sum();
    (raised.len() as u64, twice)
}

/// Creation events beyond one per alarm (a retried write repeats its event id: one).
fn alarms_created_twice(kafka: &str, topic: &str) -> u64 {
    let mut created: HashMap<String, HashSet<String>> = HashMap::new();
    for record in read_topic(kafka, topic) {
        let Ok(event) = serde_json::from_str::<fleetwatch_protocol::AlarmEvent>(&record.payload)
        else {
            continue;
        };
        if event.kind == fleetwatch_protocol::AlarmEventKind::Created {
            created
                .entry(event.alarm.alarm_id.clone())
                .or_default()
                .insert(event.event_id);
        }
    }
    created.values().map(|ids| ids.len() as u64 - 1).sum()
}

/// Parameter records whose version is not above the device's previous one.
fn versions_backwards(kafka: &str, topic: &str) -> u64 {
    let mut records = read_topic(kafka, topic);
    records.sort_by_key(|r| (r.partition, r.offset));
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut backwards = 0;
    for record in records {
        let Ok(envelope) = fleetwatch_protocol::ParamsEnvelope::decode(&record.bytes) else {
            continue;
        };
        let previous = last.insert(record.key.clone(), envelope.version);
        if previous.is_some_and(|p| envelope.version <= p) {
            backwards += 1;
        }
    }
    backwards
}

fn print_table(load: &Load, table: &[(Fault, Outcome)]) {
    println!(
        "\nfault matrix: {} devices every {} ms, {} s steady around each fault",
        load.devices, load.interval_ms, load.secs
    );
    println!("| fault | acknowledged | stored | lost | twin events twice | alerts (raise repeated) | alarms created twice | commands (created twice, run twice) | params backwards | recovery |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (fault, o) in table {
        println!(
            "| {} | {} | {} | {} | {} | {} ({}) | {} | {} ({}, {}) | {} | {:.1} s |",
            fault.name(),
            o.acknowledged,
            o.stored,
            o.lost,
            o.twin_applied_twice,
            o.alerts_raised,
            o.alert_raises_repeated,
            o.alarms_created_twice,
            o.commands,
            o.commands_created_twice,
            o.commands_run_twice,
            o.params_backwards,
            o.recovery.as_secs_f64()
        );
    }
}

/// Where readings are missing (the first few devices), to tell a broker's loss from a
/// device's: a gap in the middle of a device's sequence numbers.
fn report_gaps(readings: &HashMap<String, HashSet<u64>>) {
    let mut devices: Vec<_> = readings.iter().collect();
    devices.sort_by(|a, b| a.0.cmp(b.0));
    for (device, seqs) in devices.into_iter().take(3) {
        let (Some(&low), Some(&high)) = (seqs.iter().min(), seqs.iter().max()) else {
            continue;
        };
        let missing: Vec<u64> = (low..=high).filter(|seq| !seqs.contains(seq)).collect();
        if let (Some(first), Some(last)) = (missing.first(), missing.last()) {
            println!(
                "  {device}: seq {low}..={high}, {} missing between {first} and {last}",
                missing.len()
            );
        }
    }
}
