//! Memory per device, all roles: what the trainer, the scorer (its scoring state and the
//! parameters it keeps), the alert episodes and the devices role hold per device.
//!
//! `cargo bench -p fleetwatch --bench memory [-- COUNT [READINGS]]` (default 100000 devices,
//! 120 readings each, 8 metrics, one reading every 10 s of device time).
//!
//! The trainer and the scorer are the roles' real handlers (`RecordHandler::handle`) on
//! the in-memory Kafka log: each reading goes to the trainer, the parameters it publishes
//! go to the scorer's parameters handler (as the `iot.model-params` reader would hand them
//! over), then the reading goes to the scorer. Then one spiked reading per device goes to
//! the scorer alone, which opens an alert episode on every device (the worst case for the
//! episode state). What each role holds is measured by dropping it at the end and counting
//! the bytes the heap gets back (counting allocator: exact, including the maps' overhead);
//! the resident set growth of the whole run is what the OS sees (allocator slack
//! included). The devices role is measured as `actors.rs` does, with an 8-metric twin.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetwatch::devices::Twin;
use fleetwatch::kafka::memory::MemoryLog;
use fleetwatch::kafka::{PartitionReader, Producer, Record, RecordHandler};
use fleetwatch::metrics::Metrics;
use fleetwatch::scorer::{
    ParamsHandler, ScorerConfig, ScorerProducers, ScoringHandler, SharedParams,
};
use fleetwatch::trainer::{Checkpoints, SharedModels, TrainerConfig, TrainerHandler};
use fleetwatch_protocol::{DeviceEvent, DeviceEventBody, DeviceId, KafkaTopics, TelemetryPayload};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[path = "common/counting.rs"]
mod counting;

#[path = "common/readings.rs"]
mod readings;
#[path = "common/registry.rs"]
mod registry;

use counting::{resident_bytes, Counting, HELD};
use readings::{telemetry, Lcg, METRICS};
use registry::offline_registry;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let count = args.first().copied().unwrap_or(100_000);
    let readings = args.get(1).copied().unwrap_or(120) as u64;
    actix_rt::System::new().block_on(models(count, readings));
    actix_rt::System::new().block_on(devices_role(count, readings));
}

fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// Give freed memory back to the OS, so the resident set shows what is still held.
fn trim() {
    // SAFETY: glibc's malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn device_id(n: usize) -> DeviceId {
    DeviceId::parse(&format!("sim-{n:07}")).expect("valid device id")
}

/// A `DeviceEvent` as ingest writes it to `iot.telemetry`.
fn event(device_id: &DeviceId, telemetry: TelemetryPayload) -> Vec<u8> {
    let event = DeviceEvent {
        tenant: None,
        device_id: device_id.clone(),
        received_ms: telemetry.ts,
        body: DeviceEventBody::Telemetry(telemetry),
    };
    serde_json::to_vec(&event).expect("wire types serialize")
}

/// The trainer, the scorer's parameters and scoring handlers, on one in-memory log.
struct Roles {
    log: MemoryLog,
    topics: KafkaTopics,
    metrics: Arc<Metrics>,
    trainer: TrainerHandler,
    models: SharedModels,
    params_handler: ParamsHandler,
    params: SharedParams,
    scorer: ScoringHandler,
    next_offset: i64,
}

impl Roles {
    fn new() -> Self {
        let (log, topics) = (MemoryLog::default(), KafkaTopics::default());
        let metrics = Arc::new(Metrics::new());
        let producer = Producer::in_memory(&log, metrics.clone());
        let reader = |topic| PartitionReader::in_memory(&log, topic, producer.clone());
        let checkpoints = Checkpoints {
            params: reader(topics.model_params()),
            states: reader(topics.trainer_state()),
            metrics: metrics.clone(),
        };
        let config = TrainerConfig::default();
        let threshold = config.model.threshold;
        let models = SharedModels::default();
        let trainer = TrainerHandler::new(
            config,
            &topics,
            producer.clone(),
            checkpoints,
            models.clone(),
            fleetwatch::shadow::ModelRegistry::empty(),
            metrics.clone(),
        );
        let params = SharedParams::default();
        let params_handler = ParamsHandler::new(params.clone(), metrics.clone());
        let scorer = ScoringHandler::new(
            &ScorerConfig::default(),
            threshold,
            &topics,
            ScorerProducers {
                alerts: producer.clone(),
                scores: producer,
            },
            params.clone(),
            fleetwatch::shadow::ModelRegistry::empty(),
            metrics.clone(),
        );
        Self {
            log,
            topics,
            metrics,
            trainer,
            models,
            params_handler,
            params,
            scorer,
            next_offset: 0,
        }
    }

    /// One `iot.telemetry` record through the trainer, the parameters it published
    /// through the parameters handler, then the record through the scorer (unless
    /// `scorer_only`, then only the scorer).
    async fn feed(&mut self, device_id: &DeviceId, payload: &[u8], scorer_only: bool) {
        let topic = self.topics.telemetry();
        let key = device_id.as_str();
        let record = Record::new(&topic, key, payload).at(0, self.next_offset);
        self.next_offset += 1;
        if !scorer_only {
            self.trainer.handle(&record).await.expect("trainer handles");
            let params_topic = self.topics.model_params();
            for stored in self.log.take(&params_topic) {
                let record = Record::new(&params_topic, &stored.key, &stored.payload)
                    .at(stored.partition, stored.offset);
                (self.params_handler.handle(&record).await).expect("parameters handled");
            }
        }
        self.scorer.handle(&record).await.expect("scorer handles");
        self.drain();
    }

    /// Let the tasks that wait for the publications' confirmations finish (the consume
    /// loop awaits Kafka between records; on the in-memory log nothing ever waits), and
    /// collect the scores' confirmations, as the scorer's tick does.
    async fn settle(&mut self) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.scorer.on_tick().await.expect("scores settle");
        self.drain();
    }

    /// What the roles wrote that nobody here reads (checkpoints, scores, alerts) is
    /// consumed: the log is not part of any role's memory.
    fn drain(&self) {
        for topic in [
            self.topics.trainer_state(),
            self.topics.scores(),
            self.topics.alerts(),
        ] {
            self.log.take(&topic);
        }
    }
}

fn per_device(bytes: isize, count: usize) -> f64 {
    (bytes as f64 / count as f64).round()
}

/// Where one device's bytes go, by type: each built alone between two readings of the
/// counter (a copy is as large as the original but for spare capacity).
fn breakdown(roles: &Roles, id: &DeviceId, readings: u64) {
    use fleetwatch_models::production::{self, ModelTrainer};
    use fleetwatch_models::{Observation, Scorer, Trainer};
    let params = roles
        .params
        .read()
        .get(id)
        .and_then(|models| models.get(fleetwatch_protocol::PRODUCTION_MODEL).cloned())
        .expect("device 0 has parameters");
    let before = held();
    let copy = params.params.clone();
    let params_heap = held() - before;
    let before = held();
    // The configuration is shared (one per model and role), not the device's.
    let trainer = production::shared_trainer(&copy.config);
    let (mut trainer, mut scorer) = (trainer, production::scorer());
    let mut noise = Lcg(1);
    for seq in 0..readings {
        let reading = telemetry(0, seq, &mut noise, false);
        let observation = Observation {
            ts_ms: reading.ts,
            metrics: &reading.metrics,
        };
        trainer.update(&observation);
    }
    let trainer_heap = held() - before;
    let before = held();
    let mut noise = Lcg(1);
    for seq in 0..readings {
        let reading = telemetry(0, seq, &mut noise, false);
        let observation = Observation {
            ts_ms: reading.ts,
            metrics: &reading.metrics,
        };
        scorer.score(&copy, &observation);
    }
    let scorer_heap = held() - before;
    println!(
        "{}",
        json!({
            "breakdown_device": id.as_str(),
            "model_trainer_inline_bytes": std::mem::size_of::<ModelTrainer>(),
            "model_trainer_heap_bytes": trainer_heap,
            "model_scorer_inline_bytes": std::mem::size_of::<production::ModelScorer>(),
            "model_scorer_heap_bytes": scorer_heap,
            "params_inline_bytes": std::mem::size_of::<production::Params>(),
            "params_heap_bytes": params_heap,
            "config_bytes_shared_per_model": std::mem::size_of::<production::Config>(),
            "device_params_inline_bytes": std::mem::size_of::<fleetwatch::scorer::DeviceParams>(),
            "params_wire_bytes": copy.to_bytes().len(),
            "trainer_state_wire_bytes": trainer.state_bytes().len(),
        })
    );
}

async fn models(count: usize, readings: u64) {
    let (held_start, resident_start) = (held(), resident_bytes());
    let mut roles = Roles::new();
    let started = Instant::now();
    let mut noise: Vec<Lcg> = (0..count).map(|n| Lcg(n as u64 + 1)).collect();
    let ids: Vec<DeviceId> = (0..count).map(device_id).collect();
    // A fleet: every device's reading `seq`, then every device's next one.
    for seq in 0..readings {
        for (n, id) in ids.iter().enumerate() {
            let payload = event(id, telemetry(n, seq, &mut noise[n], false));
            roles.feed(id, &payload, false).await;
            if n % 256 == 0 {
                roles.settle().await;
            }
        }
    }
    let trained_secs = started.elapsed().as_secs_f64();
    roles.settle().await;
    let calm = held();
    for (n, id) in ids.iter().enumerate() {
        let payload = event(id, telemetry(n, readings, &mut noise[n], true));
        roles.feed(id, &payload, true).await;
        if n % 256 == 0 {
            roles.settle().await;
        }
    }
    roles.settle().await;
    breakdown(&roles, &ids[0], readings);
    let (held_end, resident_end) = (held(), resident_bytes());
    let open_episodes = held_end as isize - calm as isize;
    let metrics = roles.metrics.clone();
    let (models, params) = (roles.models.clone(), roles.params.clone());
    drop(noise);
    drop(ids);

    // Each role's share: the bytes the heap gets back when it is dropped.
    let before = held();
    drop(roles.trainer);
    drop(models);
    drop(roles.models);
    let trainer = before as isize - held() as isize;
    let before = held();
    drop(roles.scorer);
    let scorer = before as isize - held() as isize;
    let before = held();
    drop(roles.params_handler);
    drop(roles.params);
    drop(params);
    let params = before as isize - held() as isize;
    drop(roles.log);
    trim();
    let alerts = |state: &str| metrics.alerts_emitted.with_label_values(&[state]).get();
    println!(
        "{}",
        json!({
            "devices": count,
            "metrics_per_device": METRICS.len(),
            "readings_per_device": readings + 1,
            "run_secs": (trained_secs * 10.0).round() / 10.0,
            "params_published": metrics.params_published.get(),
            "params_received": metrics.params_received.get(),
            "events_scored": metrics.events_scored.get(),
            "alerts_raised": alerts("raised"),
            "trainer_heap_bytes_per_device": per_device(trainer, count),
            "scorer_state_heap_bytes_per_device": per_device(scorer, count),
            "scorer_params_heap_bytes_per_device": per_device(params, count),
            "open_episode_extra_heap_bytes_per_device": per_device(open_episodes, count),
            "episode_inline_bytes": std::mem::size_of::<fleetwatch_models::production::Episode>(),
            "all_model_roles_heap_bytes_per_device": per_device(trainer + scorer + params, count),
            "heap_bytes_per_device_whole_run": per_device(held_end as isize - held_start as isize, count),
            "resident_bytes_per_device_whole_run":
                per_device(resident_end as isize - resident_start as isize, count),
        })
    );
    actix_rt::System::current().stop();
}

/// The devices role: an actor per device holding its twin after `readings` readings of
/// the 8 metrics, started through the real registry (as `actors.rs` does).
async fn devices_role(count: usize, readings: u64) {
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let (registry, rules) = offline_registry(&metrics, &shutdown);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut twins = Vec::with_capacity(count);
    let (held_before, resident_before) = (held(), resident_bytes());
    for n in 0..count {
        let id = device_id(n);
        let mut twin = Twin::new(id);
        let mut noise = Lcg(n as u64 + 1);
        // The twin keeps the latest values: a few readings reach its steady size.
        for seq in 0..readings.min(3) {
            let reading = telemetry(n, seq, &mut noise, false);
            let ts = reading.ts;
            twin.apply_event(&DeviceEventBody::Telemetry(reading), ts, &rules);
        }
        twins.push(twin);
    }
    // What the twins hold beside themselves (their strings, maps and lists).
    let twin_heap = held() as isize - held_before as isize;
    // (The vector's buffer, allocated before the count began, is kept until it ends.)
    for twin in twins.drain(..) {
        registry.start(twin, 0);
    }
    while (metrics.device_actors.get() as usize) < count {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (held_after, resident_after) = (held(), resident_bytes());
    println!(
        "{}",
        json!({
            "devices_role_actors": count,
            "metrics_per_device": METRICS.len(),
            "twin_and_actor_heap_bytes_per_device":
                per_device(held_after as isize - held_before as isize, count),
            "twin_and_actor_resident_bytes_per_device":
                per_device(resident_after as isize - resident_before as isize, count),
            "twin_inline_bytes": std::mem::size_of::<Twin>(),
            "twin_heap_bytes_per_device": per_device(twin_heap, count),
        })
    );
    drop(twins);
    shutdown.cancel();
    actix_rt::System::current().stop();
}
