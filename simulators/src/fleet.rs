//! Running the fleet: one task and one MQTT connection per device.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetwatch_protocol::{
    now_ms, AckOutcome, AckPayload, CommandPayload, Connectivity, DesiredPayload, DeviceId,
    DeviceTopic, DeviceTopicKind, JsonObject, StatePayload, StatusPayload, TelemetryPayload,
};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::anomaly::{ActiveAnomaly, Effect};
use crate::device::{Answer, CommandBehaviour, DeviceBrain, UpdatePlan, UpdateStage};
use crate::signal::DeviceSignal;
use crate::{AnomalyKind, Injected, SimConfig};

/// Live counters of a running fleet.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Devices connected now.
    pub connected: AtomicU64,
    /// Telemetry messages handed to the MQTT client.
    pub published: AtomicU64,
    /// QoS 1 messages (telemetry and status) the broker acknowledged.
    pub acknowledged: AtomicU64,
    /// Messages still unacknowledged when their device stopped (should be 0).
    pub unacknowledged_at_exit: AtomicU64,
    /// Connections lost and made again.
    pub reconnects: AtomicU64,
    /// Anomalies started.
    pub anomalies: AtomicU64,
    /// Commands received (resends included), and outcomes reported.
    pub commands_received: AtomicU64,
    /// Commands whose work a device started: once per command id, resends excluded (a
    /// command executed twice would be two ids for one request).
    pub commands_started: AtomicU64,
    pub commands_succeeded: AtomicU64,
    pub commands_failed: AtomicU64,
    /// Desired-state deltas applied.
    pub desired_applied: AtomicU64,
    /// Software updates started (a resend of one never starts another), installed, and
    /// failed.
    pub updates_started: AtomicU64,
    pub updates_installed: AtomicU64,
    pub updates_failed: AtomicU64,
    /// Outages (connection dropped without goodbye), and the messages they lost
    /// before the broker acknowledged them.
    pub outages: AtomicU64,
    pub lost_in_outages: AtomicU64,
    /// The ground truth so far: every anomaly injected (and outage), as it starts.
    pub injected: Mutex<Vec<Injected>>,
}

impl FleetStats {
    /// One line for people: what was sent, answered and lost.
    pub fn summary(&self) -> String {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        format!(
            "published {}  acknowledged {}  unacknowledged at exit {}  anomalies {}  commands {} (ok {}, failed {})  desired applied {}  outages {} (messages lost in them {})",
            get(&self.published),
            get(&self.acknowledged),
            get(&self.unacknowledged_at_exit),
            get(&self.anomalies),
            get(&self.commands_received),
            get(&self.commands_succeeded),
            get(&self.commands_failed),
            get(&self.desired_applied),
            get(&self.outages),
            get(&self.lost_in_outages),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulator configuration: {0}")]
    Config(String),
    #[error("ground truth file {path}: {source}")]
    GroundTruth {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where ground truth goes: kept in memory and, if configured, appended to a file.
struct GroundTruth {
    injected: Mutex<Vec<Injected>>,
    stats: Arc<FleetStats>,
    file: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
}

impl GroundTruth {
    fn record(&self, injected: &Injected) {
        if let Some(file) = &self.file {
            let mut file = file.lock();
            let line = serde_json::to_string(injected).expect("serializes");
            if let Err(error) = writeln!(file, "{line}").and_then(|_| file.flush()) {
                tracing::warn!(%error, "could not write ground truth");
            }
        }
        self.injected.lock().push(injected.clone());
        self.stats.injected.lock().push(injected.clone());
    }
}

/// The clock of the run: instants mapped to wall-clock milliseconds, so readings carry
/// the time they were scheduled for even when the process falls behind.
#[derive(Clone, Copy)]
struct RunClock {
    started: Instant,
    started_ms: i64,
}

impl RunClock {
    fn ms(&self, at: Instant) -> i64 {
        self.started_ms + at.saturating_duration_since(self.started).as_millis() as i64
    }
}

/// Run the fleet until `shutdown` or the configured duration; returns the ground truth of
/// every anomaly injected.
pub async fn run_fleet(
    config: SimConfig,
    stats: Arc<FleetStats>,
    shutdown: CancellationToken,
) -> Result<Vec<Injected>, SimError> {
    if config.devices == 0 || config.interval_ms == 0 {
        return Err(SimError::Config(
            "devices and interval_ms must be positive".into(),
        ));
    }
    if config.kinds.is_empty() && config.anomalies_per_minute > 0.0 {
        return Err(SimError::Config("no anomaly kinds to inject".into()));
    }
    if config.anomalies_per_minute.is_nan() || config.anomalies_per_minute < 0.0 {
        return Err(SimError::Config(
            "anomalies_per_minute must not be negative".into(),
        ));
    }
    if config.outages_per_minute.is_nan()
        || config.outages_per_minute < 0.0
        || config.outage_secs.is_nan()
        || config.outage_secs <= 0.0
    {
        return Err(SimError::Config(
            "outages_per_minute must not be negative and outage_secs must be positive".into(),
        ));
    }
    for (name, rate) in [
        ("command_failure_rate", config.command_failure_rate),
        ("slow_command_rate", config.slow_command_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            return Err(SimError::Config(format!(
                "{name} must be between 0 and 1, not {rate}"
            )));
        }
    }
    for index in [0, config.devices - 1] {
        DeviceId::parse(&config.device_id(index)).map_err(|e| {
            SimError::Config(format!(
                "device ids from prefix {:?}: {e}",
                config.id_prefix
            ))
        })?;
    }
    let file = match &config.ground_truth {
        Some(path) => Some(Mutex::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|source| SimError::GroundTruth {
                path: path.display().to_string(),
                source,
            })?,
        ))),
        None => None,
    };
    let truth = Arc::new(GroundTruth {
        injected: Mutex::new(Vec::new()),
        stats: stats.clone(),
        file,
    });
    let clock = RunClock {
        started: Instant::now(),
        started_ms: now_ms(),
    };
    let stop = shutdown.child_token();
    if let Some(duration) = config.duration_secs {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(duration)).await;
            stop.cancel();
        });
    }
    let config = Arc::new(config);
    let mut devices = tokio::task::JoinSet::new();
    for index in 0..config.devices {
        devices.spawn(run_device(
            index,
            config.clone(),
            clock,
            truth.clone(),
            stats.clone(),
            stop.clone(),
        ));
    }
    while devices.join_next().await.is_some() {}
    let injected = std::mem::take(&mut *truth.injected.lock());
    Ok(injected)
}

/// When anomalies may start and how often, per device.
#[derive(Clone, Copy, Debug)]
struct Schedule {
    not_before_ms: i64,
    not_after_ms: i64,
    /// When the devices stop, in a run with a duration.
    stop_ms: Option<i64>,
    /// Mean time between anomaly starts on one device, ms.
    mean_gap_ms: f64,
}

/// Time after an anomaly during which the device stays normal, so its alert can clear.
const COOLDOWN_MS: i64 = 20_000;

impl Schedule {
    /// Anomaly starts of a run that started at `started_ms`: after the warm-up, not in the
    /// quiet tail.
    fn anomalies(config: &SimConfig, started_ms: i64) -> Self {
        let at = |secs: f64| started_ms + (secs * 1000.0) as i64;
        Self {
            not_before_ms: at(config.warmup_secs),
            not_after_ms: config
                .duration_secs
                .map_or(i64::MAX, |d| at(d - config.quiet_tail_secs)),
            stop_ms: config.duration_secs.map(at),
            mean_gap_ms: 60_000.0 * config.devices as f64 / config.anomalies_per_minute,
        }
    }

    fn next_start(&self, rng: &mut impl Rng, after_ms: i64) -> Option<i64> {
        if !self.mean_gap_ms.is_finite() {
            return None;
        }
        let wait = -self.mean_gap_ms * (1.0 - rng.random::<f64>()).ln();
        let start = after_ms.max(self.not_before_ms) + wait as i64;
        (start <= self.not_after_ms).then_some(start)
    }

    /// A device's next anomaly after `after_ms`: when, and of which kind (drawn uniformly
    /// from `kinds`, so a kind listed twice comes twice as often). A kind that must be
    /// seen whole (a slow drift) is started early enough to end before the devices stop:
    /// where it cannot, another kind is drawn among those that can.
    fn next_anomaly(
        &self,
        rng: &mut impl Rng,
        after_ms: i64,
        kinds: &[AnomalyKind],
        interval_ms: u64,
    ) -> Option<(i64, AnomalyKind)> {
        let start = self.next_start(rng, after_ms)?;
        let kind = kinds[rng.random_range(0..kinds.len())];
        let fitted = |kind| self.fitted(start, after_ms, kind, interval_ms);
        if let Some(start) = fitted(kind) {
            return Some((start, kind));
        }
        let fitting: Vec<AnomalyKind> = kinds
            .iter()
            .copied()
            .filter(|&kind| fitted(kind).is_some())
            .collect();
        let kind = *fitting.get(rng.random_range(0..fitting.len().max(1)))?;
        Some((fitted(kind)?, kind))
    }

    /// `start`, moved earlier if the anomaly would not be over before the devices stop:
    /// the starts of such a kind are squeezed (linearly) from `[first, not_after]` into
    /// `[first, latest]`, the part of the window where it fits whole, so they keep their
    /// number and stay spread out. `None` where it cannot fit at all.
    fn fitted(
        &self,
        start: i64,
        after_ms: i64,
        kind: AnomalyKind,
        interval_ms: u64,
    ) -> Option<i64> {
        let (Some(stop_ms), Some(span_ms)) = (
            self.stop_ms,
            ActiveAnomaly::whole_span_ms(kind, interval_ms),
        ) else {
            return Some(start);
        };
        let first = after_ms.max(self.not_before_ms);
        let latest = stop_ms - span_ms;
        if latest < first {
            return None;
        }
        if self.not_after_ms <= latest {
            return Some(start);
        }
        let fraction = (start - first) as f64 / (self.not_after_ms - first).max(1) as f64;
        Some(first + (fraction * (latest - first) as f64) as i64)
    }
}

/// A device's lasting state: what survives an outage.
struct SimDevice {
    id: String,
    device_id: DeviceId,
    rng: StdRng,
    signal: DeviceSignal,
    metric_names: Vec<&'static str>,
    seq: u64,
    previous: Vec<f64>,
    active: Option<ActiveAnomaly>,
    next_anomaly: Option<(i64, AnomalyKind)>,
    next_outage: Option<i64>,
    brain: DeviceBrain,
    /// Slow commands finishing: their outcome comes back here, and is published by
    /// whichever session is connected then.
    finished_tx: mpsc::Sender<AckPayload>,
    finished_rx: mpsc::Receiver<AckPayload>,
    /// Stages of a software update under way, reported by whichever session is
    /// connected then.
    update_tx: mpsc::Sender<(UpdatePlan, UpdateStage)>,
    update_rx: mpsc::Receiver<(UpdatePlan, UpdateStage)>,
    first_session: bool,
}

/// The random generator of device `index`: the same seed gives the same device.
fn device_rng(seed: u64, index: usize) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64)
}

impl SimDevice {
    fn runs_bad_build(&self, config: &SimConfig) -> bool {
        self.brain
            .firmware()
            .is_some_and(|version| config.bad_builds.iter().any(|bad| bad == version))
    }

    /// A bad build's next anomaly: a spike `bad_build_gap_ms` after `after_ms` (spikes,
    /// being short, make a misbehaving build alarm again and again).
    fn bad_build_anomaly(config: &SimConfig, after_ms: i64) -> Option<(i64, AnomalyKind)> {
        Some((after_ms + config.bad_build_gap_ms, AnomalyKind::Spike))
    }

    /// An update reached `stage`: report it (and its outcome); a bad build starts
    /// misbehaving at once.
    fn on_update_stage(
        &mut self,
        plan: &UpdatePlan,
        stage: UpdateStage,
        config: &SimConfig,
        stats: &FleetStats,
    ) -> (StatePayload, Option<AckPayload>) {
        let now = now_ms();
        let (state, outcome) = self.brain.update_stage(plan, stage, now);
        match stage {
            UpdateStage::Done => {
                stats.updates_installed.fetch_add(1, Ordering::Relaxed);
                if self.runs_bad_build(config) && self.active.is_none() {
                    self.next_anomaly =
                        Self::bad_build_anomaly(config, now - config.bad_build_gap_ms);
                }
            }
            UpdateStage::Failed => {
                stats.updates_failed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        (state, outcome)
    }

    /// The device's reading at `t_ms`, anomalies started, applied and ended as scheduled;
    /// `None` when the device stays silent. Counts the sequence number either way.
    fn reading(
        &mut self,
        t_ms: i64,
        config: &SimConfig,
        schedule: &Schedule,
        truth: &GroundTruth,
        stats: &FleetStats,
    ) -> Option<Vec<f64>> {
        if self.active.as_ref().is_some_and(|a| a.is_over(t_ms)) {
            let ended = self.active.take().expect("checked").truth.end_ms;
            self.next_anomaly = schedule.next_anomaly(
                &mut self.rng,
                ended + COOLDOWN_MS,
                &config.kinds,
                config.interval_ms,
            );
            if self.runs_bad_build(config) {
                self.next_anomaly = Self::bad_build_anomaly(config, ended);
            }
        }
        if let Some((start, kind)) = self.next_anomaly.filter(|_| self.active.is_none()) {
            if t_ms >= start {
                let anomaly = ActiveAnomaly::plan(
                    &mut self.rng,
                    kind,
                    &self.id,
                    &self.signal,
                    t_ms,
                    config.interval_ms,
                );
                truth.record(&anomaly.truth);
                stats.anomalies.fetch_add(1, Ordering::Relaxed);
                self.active = Some(anomaly);
                self.next_anomaly = None;
            }
        }
        let mut values = self.signal.sample(t_ms, &mut self.rng);
        if self.previous.is_empty() {
            self.previous = values.clone();
        }
        let effect = match self.active.as_mut() {
            Some(anomaly) => anomaly.apply(
                t_ms,
                &mut values,
                &self.signal,
                &self.previous,
                &mut self.rng,
            ),
            None => Effect::Publish,
        };
        self.seq += 1;
        (effect == Effect::Publish).then_some(values)
    }
}

/// How a connected session ended.
enum SessionEnd {
    Stopped,
    Outage,
}

async fn run_device(
    index: usize,
    config: Arc<SimConfig>,
    clock: RunClock,
    truth: Arc<GroundTruth>,
    stats: Arc<FleetStats>,
    stop: CancellationToken,
) {
    let id = config.device_id(index);
    let device_id = DeviceId::parse(&id).expect("validated at start");
    let mut rng = device_rng(config.seed, index);
    let signal = DeviceSignal::random(&mut rng, config.day_secs);
    let metric_names: Vec<&'static str> = signal.metrics.iter().map(|m| m.name).collect();
    let schedule = Schedule::anomalies(&config, clock.started_ms);
    let outages = Schedule {
        mean_gap_ms: 60_000.0 * config.devices as f64 / config.outages_per_minute,
        ..schedule
    };
    let next_anomaly = schedule.next_anomaly(
        &mut rng,
        clock.started_ms,
        &config.kinds,
        config.interval_ms,
    );
    let next_outage = outages.next_start(&mut rng, clock.started_ms);
    let (finished_tx, finished_rx) = mpsc::channel(64);
    let (update_tx, update_rx) = mpsc::channel(16);
    let mut reported = JsonObject::new();
    reported.insert("firmware".into(), "1.4.2".into());
    reported.insert("interval_ms".into(), config.interval_ms.into());
    let mut device = SimDevice {
        id,
        device_id,
        rng,
        signal,
        metric_names,
        seq: 0,
        previous: Vec::new(),
        active: None,
        next_anomaly,
        next_outage,
        brain: DeviceBrain::new(reported),
        finished_tx,
        finished_rx,
        update_tx,
        update_rx,
        first_session: true,
    };

    let interval = Duration::from_millis(config.interval_ms);
    let offset = Duration::from_millis(device.rng.random_range(0..config.interval_ms));
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::from_std(clock.started + offset),
        interval,
    );
    // After an outage the device resumes on its schedule; it does not replay the past.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let end = session(
            &mut device,
            &config,
            clock,
            &schedule,
            &truth,
            &stats,
            &mut ticker,
            &stop,
        )
        .await;
        match end {
            SessionEnd::Stopped => break,
            SessionEnd::Outage => {
                let start_ms = now_ms();
                let away = Duration::from_secs_f64(config.outage_secs);
                stats.outages.fetch_add(1, Ordering::Relaxed);
                truth.record(&Injected {
                    device: device.id.clone(),
                    kind: crate::AnomalyKind::Dropout,
                    metric: None,
                    magnitude_sigmas: 0.0,
                    start_ms,
                    end_ms: start_ms + away.as_millis() as i64,
                    peak_ms: None,
                });
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(away) => {}
                }
                device.seq += (away.as_millis() as u64) / config.interval_ms.max(1);
                device.next_outage = outages.next_start(&mut device.rng, now_ms() + COOLDOWN_MS);
            }
        }
    }
}

/// One MQTT connection of a device: from connect until the run stops or an outage cuts
/// it.
#[allow(clippy::too_many_arguments)]
async fn session(
    device: &mut SimDevice,
    config: &SimConfig,
    clock: RunClock,
    schedule: &Schedule,
    truth: &GroundTruth,
    stats: &Arc<FleetStats>,
    ticker: &mut tokio::time::Interval,
    stop: &CancellationToken,
) -> SessionEnd {
    // Its own copy of the id, so that the device stays free to change.
    let device_id = device.device_id.clone();
    let topic = |kind| DeviceTopic::new(device_id.clone(), kind).to_string();
    let status = |status| {
        serde_json::to_vec(&StatusPayload {
            status,
            ts: Some(now_ms()),
        })
        .expect("serializes")
    };
    let mut options = MqttOptions::new(device.id.clone(), &config.mqtt_host, config.mqtt_port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_max_packet_size(1024 * 1024, 1024 * 1024)
        .set_last_will(LastWill::new(
            topic(DeviceTopicKind::Status),
            status(Connectivity::Offline),
            QoS::AtLeastOnce,
            false,
        ));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    // Every QoS 1 message handed to the client, and every one the broker acknowledged
    // (counted by the connection task).
    let mut handed: u64 = 0;
    let acknowledged = Arc::new(AtomicU64::new(0));
    let (incoming_tx, mut incoming) = mpsc::channel::<Publish>(64);
    let downstream = [
        topic(DeviceTopicKind::Commands),
        topic(DeviceTopicKind::Desired),
    ];
    let connection = {
        let (stats, acknowledged, stop) = (stats.clone(), acknowledged.clone(), stop.clone());
        let (client, downstream) = (client.clone(), downstream.clone());
        tokio::spawn(async move {
            let mut connected = false;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if !connected {
                            stats.connected.fetch_add(1, Ordering::Relaxed);
                            connected = true;
                        }
                        for filter in &downstream {
                            let _ = client.try_subscribe(filter, QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        stats.acknowledged.fetch_add(1, Ordering::Relaxed);
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        if incoming_tx.send(publish).await.is_err() {
                            break;
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(error) => {
                        if stop.is_cancelled() {
                            break;
                        }
                        if connected {
                            stats.connected.fetch_sub(1, Ordering::Relaxed);
                            stats.reconnects.fetch_add(1, Ordering::Relaxed);
                            connected = false;
                        }
                        tracing::debug!(%error, "device connection lost; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            if connected {
                stats.connected.fetch_sub(1, Ordering::Relaxed);
            }
        })
    };
    let publish = |kind: DeviceTopicKind, payload: Vec<u8>| {
        let (client, topic) = (&client, topic(kind));
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_ok()
        }
    };

    handed += u64::from(publish(DeviceTopicKind::Status, status(Connectivity::Online)).await);
    if device.first_session {
        device.first_session = false;
        let state = StatePayload {
            ts: Some(now_ms()),
            reported: device.brain.reported.clone(),
        };
        handed += u64::from(publish(DeviceTopicKind::State, to_json(&state)).await);
    }
    let behaviour = CommandBehaviour {
        failure_rate: config.command_failure_rate,
        slow_rate: config.slow_command_rate,
        slow_ms: config.slow_command_ms,
    };

    let end = loop {
        let outage_in = device
            .next_outage
            .map(|at| Duration::from_millis((at - now_ms()).max(0) as u64));
        let tick = tokio::select! {
            _ = stop.cancelled() => break SessionEnd::Stopped,
            _ = async { match outage_in {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            } } => break SessionEnd::Outage,
            Some(message) = incoming.recv() => {
                let now = now_ms();
                if message.topic == downstream[0] {
                    match serde_json::from_slice::<CommandPayload>(&message.payload) {
                        Ok(command) => {
                            stats.commands_received.fetch_add(1, Ordering::Relaxed);
                            let started = device.brain.started;
                            let answers = if command.name == "software_update" {
                                let (answers, plan) = device.brain.on_update(&command, config.update_failure_rate, &mut device.rng, now);
                                if let Some(plan) = plan {
                                    stats.updates_started.fetch_add(1, Ordering::Relaxed);
                                    run_update(plan, config.update_stage_ms, device.update_tx.clone());
                                }
                                answers
                            } else {
                                device.brain.on_command(&command, behaviour, &mut device.rng, now)
                            };
                            stats.commands_started.fetch_add(device.brain.started - started, Ordering::Relaxed);
                            // A new (not resent) mode command changes what the device reports.
                            let mode = (device.brain.started > started)
                                .then(|| device.brain.on_mode_command(&command, now))
                                .flatten();
                            if let Some(state) = mode {
                                handed += u64::from(publish(DeviceTopicKind::State, to_json(&state)).await);
                            }
                            for answer in answers {
                                match answer {
                                    Answer::Now(ack) => {
                                        count_outcome(stats, &ack);
                                        handed += u64::from(publish(DeviceTopicKind::Acks, to_json(&ack)).await);
                                    }
                                    Answer::Later { delay_ms, ack } => {
                                        let finished = device.finished_tx.clone();
                                        tokio::spawn(async move {
                                            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                                            let _ = finished.send(ack).await;
                                        });
                                    }
                                }
                            }
                        }
                        Err(error) => tracing::warn!(%error, "unreadable command"),
                    }
                } else {
                    match serde_json::from_slice::<DesiredPayload>(&message.payload) {
                        Ok(desired) => {
                            stats.desired_applied.fetch_add(1, Ordering::Relaxed);
                            let state = device.brain.on_desired(desired, now);
                            handed += u64::from(publish(DeviceTopicKind::State, to_json(&state)).await);
                        }
                        Err(error) => tracing::warn!(%error, "unreadable desired state"),
                    }
                }
                continue;
            }
            Some((plan, stage)) = device.update_rx.recv() => {
                let (state, outcome) = device.on_update_stage(&plan, stage, config, stats);
                handed += u64::from(publish(DeviceTopicKind::State, to_json(&state)).await);
                if let Some(ack) = outcome {
                    count_outcome(stats, &ack);
                    handed += u64::from(publish(DeviceTopicKind::Acks, to_json(&ack)).await);
                }
                continue;
            }
            Some(ack) = device.finished_rx.recv() => {
                let ack = device.brain.finish(ack);
                count_outcome(stats, &ack);
                handed += u64::from(publish(DeviceTopicKind::Acks, to_json(&ack)).await);
                continue;
            }
            tick = ticker.tick() => tick,
        };
        let t_ms = clock.ms(tick.into_std());
        let Some(values) = device.reading(t_ms, config, schedule, truth, stats) else {
            continue;
        };
        let payload = TelemetryPayload {
            ts: t_ms,
            seq: device.seq,
            metrics: device
                .metric_names
                .iter()
                .map(|n| n.to_string())
                .zip(values.iter().copied())
                .collect(),
        };
        device.previous = values;
        if !publish(DeviceTopicKind::Telemetry, to_json(&payload)).await {
            break SessionEnd::Stopped;
        }
        handed += 1;
        stats.published.fetch_add(1, Ordering::Relaxed);
    };

    let outstanding = || handed.saturating_sub(acknowledged.load(Ordering::Relaxed));
    if let SessionEnd::Outage = end {
        // Power lost: no goodbye. Dropping the connection makes the broker publish the
        // Last Will; what was not acknowledged yet is lost with the device's memory.
        connection.abort();
        stats
            .lost_in_outages
            .fetch_add(outstanding(), Ordering::Relaxed);
        return end;
    }
    // A clean goodbye: wait (briefly) for the broker to acknowledge what was sent, say
    // offline, disconnect.
    let deadline = Instant::now() + Duration::from_secs(10);
    while outstanding() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stats
        .unacknowledged_at_exit
        .fetch_add(outstanding(), Ordering::Relaxed);
    publish(DeviceTopicKind::Status, status(Connectivity::Offline)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
    end
}

/// Walk an update through its stages, `stage_ms` apart (the first after a simulated
/// download of that long).
fn run_update(plan: UpdatePlan, stage_ms: u64, stages: mpsc::Sender<(UpdatePlan, UpdateStage)>) {
    tokio::spawn(async move {
        for stage in plan.stages() {
            if stages.send((plan.clone(), stage)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(stage_ms)).await;
        }
    });
}

fn count_outcome(stats: &FleetStats, ack: &AckPayload) {
    let counter = match ack.outcome {
        AckOutcome::Received => return,
        AckOutcome::Succeeded => &stats.commands_succeeded,
        AckOutcome::Failed => &stats.commands_failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A wire type as JSON bytes (they always serialize).
fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("wire types serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STARTED_MS: i64 = 1_800_000_000_000;

    /// The demo's simulator (`fleetwatch demo --exit-after 60`): 1,000 devices, a reading
    /// every 500 ms, 100 anomalies a minute from second 25, devices stopping at second 57.
    fn demo(exit_after_secs: f64) -> SimConfig {
        let mut config = SimConfig::new("127.0.0.1", 1883, 1000);
        config.interval_ms = 500;
        config.anomalies_per_minute = 100.0;
        config.warmup_secs = 25.0;
        config.duration_secs = Some(exit_after_secs - 3.0);
        config
    }

    /// Every device's first anomaly, drawn as `run_device` draws it (later ones depend on
    /// the readings drawn in between, and are rare: a device's mean gap is ten minutes).
    fn first_anomalies(config: &SimConfig) -> Vec<(i64, AnomalyKind)> {
        let schedule = Schedule::anomalies(config, STARTED_MS);
        (0..config.devices)
            .filter_map(|index| {
                let mut rng = device_rng(config.seed, index);
                DeviceSignal::random(&mut rng, config.day_secs);
                schedule.next_anomaly(&mut rng, STARTED_MS, &config.kinds, config.interval_ms)
            })
            .collect()
    }

    fn count(anomalies: &[(i64, AnomalyKind)], kind: AnomalyKind) -> usize {
        anomalies.iter().filter(|(_, k)| *k == kind).count()
    }

    #[test]
    fn in_the_demo_every_kind_is_injected_and_every_drift_ends_before_the_devices_stop() {
        let config = demo(60.0);
        let stop_ms = STARTED_MS + 57_000;
        let mut totals = [0; AnomalyKind::ALL.len()];
        for seed in 0..20 {
            let anomalies = first_anomalies(&SimConfig {
                seed,
                ..config.clone()
            });
            for (total, kind) in totals.iter_mut().zip(AnomalyKind::ALL) {
                *total += count(&anomalies, kind);
            }
            for &(start, kind) in &anomalies {
                assert!((STARTED_MS + 25_000..=STARTED_MS + 47_000).contains(&start));
                // The drift as planned at its first reading, at most a reading later.
                let mut rng = device_rng(seed, 0);
                let signal = DeviceSignal::random(&mut rng, config.day_secs);
                let planned = ActiveAnomaly::plan(&mut rng, kind, "d", &signal, start + 500, 500);
                assert!(kind != AnomalyKind::Drift || planned.truth.end_ms <= stop_ms);
            }
            if seed == config.seed {
                let counts: Vec<_> = AnomalyKind::ALL
                    .iter()
                    .map(|&kind| (kind, count(&anomalies, kind)))
                    .collect();
                println!("seed {seed}: {} anomalies {counts:?}", anomalies.len());
            }
        }
        // 100 a minute over the 22 s between the warm-up and the quiet tail: 36.7 a run,
        // a sixth of them of each kind.
        println!("mean of 20 seeds: {:?}", totals.map(|t| t as f64 / 20.0));
        for total in totals {
            assert!((90..=160).contains(&total), "{totals:?}");
        }
    }

    #[test]
    fn where_a_drift_cannot_end_before_the_devices_stop_another_kind_is_drawn() {
        // scripts/test's demo: `--exit-after 55` stops the devices 27 s after the warm-up,
        // too soon for a slow drift at 500 ms a reading (about 30 s).
        let short = first_anomalies(&demo(55.0));
        assert_eq!(count(&short, AnomalyKind::Drift), 0);
        assert!(count(&short, AnomalyKind::Spike) > 0);
        // Without a duration nothing is moved.
        let mut endless = demo(60.0);
        endless.duration_secs = None;
        let schedule = Schedule::anomalies(&endless, STARTED_MS);
        let late = STARTED_MS + 3_600_000;
        let fitted = schedule.fitted(late, STARTED_MS, AnomalyKind::Drift, 500);
        assert_eq!(fitted, Some(late));
    }
}
