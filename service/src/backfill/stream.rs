//! Replaying while reading: the readings of the range go, as they are decoded, to replay
//! threads that each own a share of the devices (by a hash of the device id) and run both
//! configurations over each of its readings; nothing holds the range.
//!
//! The same decisions as replaying the whole range after reading it
//! ([`super::models::all_alerts`]) as long as each device's readings arrive in Kafka order
//! (partition, offset): they do when a device's readings are in one partition (ingest keys
//! them by device), since each partition is read in offset order. A device whose readings
//! arrive out of that order (its readings in several partitions, after the partition
//! count changed) is noticed ([`Replayed::out_of_order`]), and the caller then replays the
//! range in memory instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use fleetwatch_models::production::{self, EpisodeRules, ModelScorer, ModelTrainer, Transition};
use fleetwatch_models::replay::Replayer;
use fleetwatch_models::Score;
use fleetwatch_protocol::SequenceTracker;
use tokio::sync::mpsc;

use super::config::ModelRun;
use super::models::Alert;
use super::source::Reading;

/// Readings sent to a replay thread at a time.
const BATCH: usize = 512;
/// Batches in flight to each replay thread; when full, the reader waits (nothing is
/// dropped) and counts it in [`Dispatch::waits`].
const IN_FLIGHT: usize = 8;

/// A batch of (device, reading).
type Batch = Vec<(String, Reading)>;

/// One configuration's replay of one device, a reading at a time: the production pairing
/// (`Replayer`) and episode machine, the alerts as they open and close.
struct Run {
    replayer: Replayer<ModelTrainer, ModelScorer>,
    episode: production::Episode,
    /// Readings replayed (the episode machine's event index).
    index: u64,
    alerts: Vec<Alert>,
    /// Whether the last alert is open (its peak still grows).
    open: bool,
}

impl Run {
    fn new(run: &ModelRun) -> Self {
        Self {
            replayer: Replayer::new(
                production::trainer(&run.trainer.model),
                production::scorer(),
                run.trainer.publish_every_events,
            ),
            episode: production::Episode::default(),
            index: 0,
            alerts: Vec::new(),
            open: false,
        }
    }

    /// As `models::device_alerts` decides over the whole series: an alert opens and
    /// closes on the episode machine's transitions; its peak is the highest ready score
    /// from its opening reading up to (without) its closing one.
    fn step(&mut self, rules: &EpisodeRules, reading: &Reading) {
        let score: Score = self.replayer.step(reading.ts, &reading.metrics);
        let value = (score.ready).then_some(score.value);
        match self.episode.observe(rules, &score, self.index) {
            Some(Transition::Opened) => {
                self.alerts.push(Alert {
                    opened_seq: reading.seq,
                    closed_seq: None,
                    opened_ms: reading.record_ms,
                    closed_ms: None,
                    peak: value.map_or(0.0, |v| 0.0_f64.max(v)),
                });
                self.open = true;
            }
            Some(Transition::Closed) => {
                if let Some(last) = self.alerts.last_mut() {
                    last.closed_seq = Some(reading.seq);
                    last.closed_ms = Some(reading.record_ms);
                }
                self.open = false;
            }
            _ => {
                if let (true, Some(v), Some(last)) = (self.open, value, self.alerts.last_mut()) {
                    last.peak = last.peak.max(v);
                }
            }
        }
        self.index += 1;
    }
}

/// One device on a replay thread.
struct Device {
    tracker: SequenceTracker,
    /// The highest (partition, offset) so far: the next reading must come after it.
    at: (i32, i64),
    /// A reading came before one already replayed.
    disordered: bool,
    baseline: Run,
    candidate: Run,
}

impl Device {
    fn new(plan: &Plan) -> Self {
        Self {
            tracker: SequenceTracker::default(),
            at: (i32::MIN, i64::MIN),
            disordered: false,
            baseline: Run::new(&plan.baseline.0),
            candidate: Run::new(&plan.candidate.0),
        }
    }
}

/// What replay threads share: the two configurations with their checked episode rules,
/// and the readings whose record time a verdict needs.
pub struct Plan {
    pub baseline: (ModelRun, EpisodeRules),
    pub candidate: (ModelRun, EpisodeRules),
    /// Per device, the sequence numbers of the readings that opened a judged alarm.
    pub wanted_times: HashMap<String, HashSet<u64>>,
}

/// What the replay threads decided.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Per device: (baseline alerts, candidate alerts), warm-up included.
    pub alerts: BTreeMap<String, (Vec<Alert>, Vec<Alert>)>,
    /// Readings replayed (duplicates dropped), and duplicates dropped.
    pub events: u64,
    pub duplicates: u64,
    /// Record time of the wanted readings (the last of equal (device, seq)).
    pub times: HashMap<(String, u64), i64>,
    /// Devices whose readings did not all come in Kafka order: the decisions are void.
    pub out_of_order: u64,
    /// Times the reader waited for a replay thread ([`Dispatch::waits`]).
    pub reader_waits: u64,
}

impl Replayed {
    fn merge(&mut self, other: Replayed) {
        self.alerts.extend(other.alerts);
        self.events += other.events;
        self.duplicates += other.duplicates;
        self.times.extend(other.times);
        self.out_of_order += other.out_of_order;
    }
}

/// One replay thread: its devices' readings, until the channel closes.
fn replay_thread(plan: &Plan, mut batches: mpsc::Receiver<Batch>) -> Replayed {
    let mut devices: HashMap<String, Device> = HashMap::new();
    let mut replayed = Replayed::default();
    while let Some(batch) = batches.blocking_recv() {
        for (name, reading) in batch {
            let wanted = (plan.wanted_times.get(name.as_str()))
                .is_some_and(|seqs| seqs.contains(&reading.seq));
            let key = wanted.then(|| (name.clone(), reading.seq));
            let device = devices.entry(name).or_insert_with(|| Device::new(plan));
            let at = (reading.partition, reading.offset);
            if at <= device.at && !device.disordered {
                device.disordered = true;
                replayed.out_of_order += 1;
            }
            device.at = device.at.max(at);
            if !device.tracker.accept(reading.seq) {
                replayed.duplicates += 1;
                continue;
            }
            replayed.events += 1;
            device.baseline.step(&plan.baseline.1, &reading);
            device.candidate.step(&plan.candidate.1, &reading);
            if let Some(key) = key {
                replayed.times.insert(key, reading.record_ms);
            }
        }
    }
    for (name, device) in devices {
        let alerts = (device.baseline.alerts, device.candidate.alerts);
        replayed.alerts.insert(name, alerts);
    }
    replayed
}

/// The reader's end: readings batched per replay thread. Full batches wait in `ready`
/// until [`Dispatch::send_ready`].
#[derive(Debug)]
pub struct Dispatch {
    senders: Vec<mpsc::Sender<Batch>>,
    buffers: Vec<Batch>,
    ready: Vec<(usize, Batch)>,
    /// Times the reader waited for a replay thread (its channel was full).
    pub waits: u64,
}

/// The replay thread of a device: FNV-1a of its id, stable across runs.
fn thread_of(device: &str, threads: usize) -> usize {
    let hash = (device.bytes()).fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % threads as u64) as usize
}

impl Dispatch {
    /// Queue one reading of `device`.
    pub fn push(&mut self, device: String, reading: Reading) {
        let thread = thread_of(&device, self.buffers.len());
        let buffer = &mut self.buffers[thread];
        buffer.push((device, reading));
        if buffer.len() >= BATCH {
            let full = std::mem::replace(buffer, Vec::with_capacity(BATCH));
            self.ready.push((thread, full));
        }
    }

    /// Send the full batches; waits while a replay thread's channel is full.
    pub async fn send_ready(&mut self) {
        for (thread, batch) in self.ready.drain(..) {
            let sender = &self.senders[thread];
            let batch = match sender.try_send(batch) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(batch)) => batch,
                // A replay thread that stopped: `finish` reports it.
                Err(mpsc::error::TrySendError::Closed(_)) => continue,
            };
            self.waits += 1;
            let _ = sender.send(batch).await;
        }
    }

    /// Send what is left; the channels close. Returns the reader's waits.
    async fn flush(mut self) -> u64 {
        for (thread, batch) in std::mem::take(&mut self.buffers).into_iter().enumerate() {
            if !batch.is_empty() {
                self.ready.push((thread, batch));
            }
        }
        self.send_ready().await;
        self.waits
    }
}

/// The replay threads and the reader's end of their channels.
pub struct Replay {
    threads: Vec<std::thread::JoinHandle<Replayed>>,
}

/// Start `threads` replay threads (at least one).
pub fn start(plan: Plan, threads: usize) -> (Dispatch, Replay) {
    let plan = Arc::new(plan);
    let threads = threads.max(1);
    let mut dispatch = Dispatch {
        senders: Vec::with_capacity(threads),
        buffers: (0..threads).map(|_| Vec::with_capacity(BATCH)).collect(),
        ready: Vec::new(),
        waits: 0,
    };
    let mut handles = Vec::with_capacity(threads);
    for _ in 0..threads {
        let (sender, receiver) = mpsc::channel(IN_FLIGHT);
        dispatch.senders.push(sender);
        let plan = plan.clone();
        handles.push(std::thread::spawn(move || replay_thread(&plan, receiver)));
    }
    (dispatch, Replay { threads: handles })
}

impl Replay {
    /// Send what is left, close the channels and wait for every replay thread's
    /// decisions (without a `dispatch`: it was dropped, the channels are closed).
    pub async fn finish(self, dispatch: Option<Dispatch>) -> Result<Replayed, String> {
        let reader_waits = match dispatch {
            Some(dispatch) => dispatch.flush().await,
            None => 0,
        };
        tokio::task::spawn_blocking(move || {
            let mut all = Replayed {
                reader_waits,
                ..Replayed::default()
            };
            for thread in self.threads {
                all.merge(thread.join().map_err(|_| "a replay thread panicked")?);
            }
            Ok(all)
        })
        .await
        .map_err(|e| format!("the replay task failed: {e}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backfill::models;
    use fleetwatch_models::synthetic::Rng;

    const DEVICES: usize = 12;
    const READINGS: u64 = 700;

    /// Seeded 4-metric readings of `DEVICES` devices in 3 partitions, in the order a
    /// reader delivers them (each partition in offset order, partitions interleaved):
    /// spikes and level shifts so that both configurations alert, and redelivered
    /// readings (duplicates).
    fn readings(seed: u64) -> Vec<(String, Reading)> {
        let mut rng = Rng::new(seed);
        let mut offsets = [0_i64; 3];
        let mut all = Vec::new();
        for seq in 1..=READINGS {
            for device in 0..DEVICES {
                let partition = (device % 3) as i32;
                let shifted = seq > 400 && device % 4 == 1;
                let metrics: fleetwatch_protocol::MetricValues = (0..4)
                    .map(|m| {
                        let spike = if rng.uniform() < 0.004 { 12.0 } else { 0.0 };
                        let shift = if shifted && m == 2 { 6.0 } else { 0.0 };
                        (
                            format!("m{m}").into(),
                            50.0 + rng.gaussian() + spike + shift,
                        )
                    })
                    .collect();
                let copies = if rng.uniform() < 0.01 { 2 } else { 1 };
                for _ in 0..copies {
                    let offset = offsets[partition as usize];
                    offsets[partition as usize] += 1;
                    let reading = Reading {
                        partition,
                        offset,
                        record_ms: 1_000_000 + seq as i64 * 1_000,
                        seq,
                        ts: seq as i64 * 1_000,
                        metrics: metrics.clone(),
                    };
                    all.push((format!("dev-{device:02}"), reading));
                }
            }
        }
        all
    }

    fn plan(wanted: &[(String, u64)]) -> Plan {
        let baseline = ModelRun::default();
        let candidate = ModelRun::parse("[trainer.model]\nthreshold = 0.5\n").unwrap();
        let mut wanted_times: HashMap<String, HashSet<u64>> = HashMap::new();
        for (device, seq) in wanted {
            wanted_times.entry(device.clone()).or_default().insert(*seq);
        }
        Plan {
            baseline: (baseline.clone(), baseline.rules().unwrap()),
            candidate: (candidate.clone(), candidate.rules().unwrap()),
            wanted_times,
        }
    }

    async fn streamed(plan: Plan, threads: usize, readings: &[(String, Reading)]) -> Replayed {
        let (mut dispatch, replay) = start(plan, threads);
        for (device, reading) in readings {
            dispatch.push(device.clone(), reading.clone());
            dispatch.send_ready().await;
        }
        replay.finish(Some(dispatch)).await.unwrap()
    }

    #[tokio::test]
    async fn replaying_while_reading_decides_as_replaying_the_whole_range() {
        let readings = readings(7);
        let wanted = [("dev-01".to_owned(), 450), ("dev-05".to_owned(), 3)];
        // The whole range in memory, sorted and deduplicated, as `in_memory` replays it.
        let mut devices: BTreeMap<String, Vec<Reading>> = BTreeMap::new();
        for (device, reading) in &readings {
            devices
                .entry(device.clone())
                .or_default()
                .push(reading.clone());
        }
        let duplicates = models::deduplicate(&mut devices);
        let plan_in_memory = plan(&wanted);
        let all = |run: &ModelRun| models::all_alerts(run, &devices, 1, &|_| ()).unwrap();
        let (baseline, candidate) = (
            all(&plan_in_memory.baseline.0),
            all(&plan_in_memory.candidate.0),
        );
        assert!(duplicates > 0);
        assert!(
            baseline.values().map(Vec::len).sum::<usize>() > 0,
            "no alert"
        );
        assert_ne!(baseline, candidate, "the configurations should differ");
        let times = crate::backfill::report::reading_times(&devices);
        for threads in [1, 2, 3] {
            let replayed = streamed(plan(&wanted), threads, &readings).await;
            assert_eq!(replayed.out_of_order, 0);
            assert_eq!(replayed.duplicates, duplicates);
            assert_eq!(
                replayed.events,
                devices.values().map(|r| r.len() as u64).sum::<u64>()
            );
            assert_eq!(replayed.alerts.len(), DEVICES);
            for (device, (b, c)) in &replayed.alerts {
                assert_eq!(b, &baseline[device], "{device}, {threads} threads");
                assert_eq!(c, &candidate[device], "{device}, {threads} threads");
            }
            for (device, seq) in &wanted {
                let expected = times[&(device.as_str(), *seq)];
                assert_eq!(replayed.times[&(device.clone(), *seq)], expected);
            }
        }
    }

    #[tokio::test]
    async fn a_device_read_out_of_kafka_order_is_noticed() {
        let mut readings = readings(3);
        readings.truncate(200);
        // dev-00 in partition 0 and partition 2 with lower offsets: not Kafka order.
        let mut late = readings[0].clone();
        late.1.partition = 2;
        let mut early = readings[0].clone();
        early.1.seq = 999;
        readings.push(late);
        readings.push(early);
        let replayed = streamed(plan(&[]), 2, &readings).await;
        assert_eq!(replayed.out_of_order, 1);
    }
}
