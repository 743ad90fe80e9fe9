//! Running the fleet: one task and one MQTT connection per device.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetwatch_protocol::{now_ms, AckPayload, DeviceId, JsonObject, StatePayload};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::anomaly::{ActiveAnomaly, Effect};
use crate::device::{DeviceBrain, UpdatePlan, UpdateStage};
use crate::signal::DeviceSignal;
use crate::{AnomalyKind, Injected, SimConfig};

mod session;
use session::{session, SessionEnd};

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
    /// Ground truth of a run, appended to `config.ground_truth` when one is named.
    fn open(config: &SimConfig, stats: Arc<FleetStats>) -> Result<Self, SimError> {
        let file = match &config.ground_truth {
            Some(path) => Some(Mutex::new(std::io::BufWriter::new(
                std::fs::File::create(path).map_err(|source| SimError::GroundTruth {
                    path: path.display().to_string(),
                    source,
                })?,
            ))),
            None => None,
        };
        Ok(Self {
            injected: Mutex::new(Vec::new()),
            stats,
            file,
        })
    }

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
    validate(&config)?;
    let truth = Arc::new(GroundTruth::open(&config, stats.clone())?);
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

/// A configuration the fleet can run, or why not.
fn validate(config: &SimConfig) -> Result<(), SimError> {
    let invalid = |message: &str| Err(SimError::Config(message.into()));
    if config.devices == 0 || config.interval_ms == 0 {
        return invalid("devices and interval_ms must be positive");
    }
    if config.kinds.is_empty() && config.anomalies_per_minute > 0.0 {
        return invalid("no anomaly kinds to inject");
    }
    if config.anomalies_per_minute.is_nan() || config.anomalies_per_minute < 0.0 {
        return invalid("anomalies_per_minute must not be negative");
    }
    if config.outages_per_minute.is_nan()
        || config.outages_per_minute < 0.0
        || config.outage_secs.is_nan()
        || config.outage_secs <= 0.0
    {
        return invalid("outages_per_minute must not be negative and outage_secs must be positive");
    }
    for (name, rate) in [
        ("command_failure_rate", config.command_failure_rate),
        ("slow_command_rate", config.slow_command_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            return invalid(&format!("{name} must be between 0 and 1, not {rate}"));
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
    Ok(())
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
    /// Device `index` as the seed draws it: its signal, metrics and first anomaly and
    /// outage.
    fn new(
        index: usize,
        config: &SimConfig,
        schedule: &Schedule,
        outages: &Schedule,
        started_ms: i64,
    ) -> Self {
        let id = config.device_id(index);
        let device_id = DeviceId::parse(&id).expect("validated at start");
        let mut rng = device_rng(config.seed, index);
        let signal = DeviceSignal::random(&mut rng, config.day_secs);
        let metric_names = signal.metrics.iter().map(|m| m.name).collect();
        let next_anomaly =
            schedule.next_anomaly(&mut rng, started_ms, &config.kinds, config.interval_ms);
        let next_outage = outages.next_start(&mut rng, started_ms);
        let (finished_tx, finished_rx) = mpsc::channel(64);
        let (update_tx, update_rx) = mpsc::channel(16);
        let mut reported = JsonObject::new();
        reported.insert("firmware".into(), "1.4.2".into());
        reported.insert("interval_ms".into(), config.interval_ms.into());
        Self {
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
        }
    }

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

async fn run_device(
    index: usize,
    config: Arc<SimConfig>,
    clock: RunClock,
    truth: Arc<GroundTruth>,
    stats: Arc<FleetStats>,
    stop: CancellationToken,
) {
    let schedule = Schedule::anomalies(&config, clock.started_ms);
    let outages = Schedule {
        mean_gap_ms: 60_000.0 * config.devices as f64 / config.outages_per_minute,
        ..schedule
    };
    let mut device = SimDevice::new(index, &config, &schedule, &outages, clock.started_ms);
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
