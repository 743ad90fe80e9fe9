//! The CPU of one reading on the service's hot path, in one thread and without brokers:
//! ingest's work on a device's MQTT message (`ingest::classify`, the event encoded for
//! `iot.telemetry`), then the record through the trainer (`TrainerHandler::handle`, its
//! parameters through the scorer's `ParamsHandler`), the scorer (`ScoringHandler::handle`,
//! scores published) and the devices role (`DevicesHandler::handle`: the device's actor
//! and its twin write), all on the in-memory Kafka log.
//!
//! `cargo bench -p fleetwatch --bench hot_path [-- DEVICES READINGS]` (default 200
//! devices, 200 readings each, 8 metrics). Prints the CPU time per reading of the whole
//! run (warm-up included). What the network, the brokers and the threads' hand-offs of a
//! real deployment cost is not in it (the load harness measures those). For a figure that
//! does not depend on the machine's load, count instructions: run the built binary under
//! `valgrind --tool=callgrind` with two reading counts and divide the difference of the
//! totals by the difference of the readings (docs/benchmarks.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetwatch::devices::{self, Changelog, DevicesHandler, PendingWrites, MAX_PENDING_WRITES};
use fleetwatch::ingest::{classify, Limits, Verdict};
use fleetwatch::kafka::memory::MemoryLog;
use fleetwatch::kafka::{PartitionListener, PartitionReader, Producer, Record, RecordHandler};
use fleetwatch::metrics::Metrics;
use fleetwatch::mqtt::{MqttConfig, MqttPublisher};
use fleetwatch::scorer::{
    ParamsHandler, ScorerConfig, ScorerProducers, ScoringHandler, SharedParams,
};
use fleetwatch::shadow::ModelRegistry;
use fleetwatch::tenancy::Directory;
use fleetwatch::trainer::{Checkpoints, SharedModels, TrainerConfig, TrainerHandler};
use fleetwatch_protocol::{DeviceId, DeviceTopic, DeviceTopicKind, KafkaTopics};
use tokio_util::sync::CancellationToken;

const LIMITS: Limits = Limits {
    max_payload_bytes: 65_536,
    max_ahead_ms: 60_000,
};

#[path = "common/readings.rs"]
mod readings;

use readings::{telemetry, Lcg, INTERVAL_MS, T0_MS};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let count = args.first().copied().unwrap_or(200);
    let readings = args.get(1).copied().unwrap_or(200) as u64;
    actix_rt::System::new().block_on(run(count, readings));
}

/// Reading `seq` of device `n` as the device sends it.
fn payload(n: usize, seq: u64, noise: &mut Lcg) -> Vec<u8> {
    serde_json::to_vec(&telemetry(n, seq, noise, false)).expect("wire types serialize")
}

/// The roles of one process on one in-memory log.
struct Roles {
    log: MemoryLog,
    topics: KafkaTopics,
    metrics: Arc<Metrics>,
    trainer: TrainerHandler,
    params_handler: ParamsHandler,
    scorer: ScoringHandler,
    devices: DevicesHandler,
    next_offset: i64,
}

impl Roles {
    fn new(shutdown: &CancellationToken) -> Self {
        let (log, topics) = (MemoryLog::default(), KafkaTopics::default());
        let metrics = Arc::new(Metrics::new());
        let producer = Producer::in_memory(&log, metrics.clone());
        let reader = |topic| PartitionReader::in_memory(&log, topic, producer.clone());
        let checkpoints = Checkpoints {
            params: reader(topics.model_params()),
            states: reader(topics.trainer_state()),
            metrics: metrics.clone(),
        };
        // Publications every `publish_every_events` only, not after `publish_every_ms` of
        // wall time: the count of instructions must not depend on how fast the run is.
        let config = TrainerConfig {
            publish_every_ms: 3_600_000,
            ..TrainerConfig::default()
        };
        let threshold = config.model.threshold;
        let registry = ModelRegistry::empty();
        let trainer = TrainerHandler::new(
            config,
            &topics,
            producer.clone(),
            checkpoints,
            SharedModels::default(),
            registry.clone(),
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
                scores: producer.clone(),
            },
            params,
            registry,
            metrics.clone(),
        );
        let devices = devices_handler(&log, &topics, &producer, &metrics, shutdown);
        Self {
            log,
            topics,
            metrics,
            trainer,
            params_handler,
            scorer,
            devices,
            next_offset: 0,
        }
    }

    /// One device message as ingest forwards it, then its record through every role.
    async fn feed(&mut self, mqtt_topic: &str, payload: &[u8], received_ms: i64) {
        let Verdict::Forward(event) = classify(mqtt_topic, payload, LIMITS, received_ms) else {
            panic!("the bench's readings are valid");
        };
        let encoded = event.to_record(fleetwatch_protocol::RecordEncoding::default());
        let topic = self.topics.telemetry();
        let record =
            Record::new(&topic, event.device_id.as_str(), &encoded).at(0, self.next_offset);
        self.next_offset += 1;
        self.trainer.handle(&record).await.expect("trainer handles");
        let params_topic = self.topics.model_params();
        for stored in self.log.take(&params_topic) {
            let record = Record::new(&params_topic, &stored.key, &stored.payload)
                .at(stored.partition, stored.offset);
            (self.params_handler.handle(&record).await).expect("parameters handled");
        }
        self.scorer.handle(&record).await.expect("scorer handles");
        self.devices.handle(&record).await.expect("devices handles");
    }

    /// Let the confirmation tasks run (the consume loops await Kafka between records),
    /// and drop what the roles wrote that nobody here reads.
    async fn settle(&mut self) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.scorer.on_tick().await.expect("scores settle");
        for topic in [
            self.topics.trainer_state(),
            self.topics.scores(),
            self.topics.alerts(),
            self.topics.device_state(),
        ] {
            self.log.take(&topic);
        }
    }
}

/// The devices role's handler with its registry and changelog on the in-memory log, and
/// a downlink pointed at a port where nothing listens (telemetry sends nothing down).
fn devices_handler(
    log: &MemoryLog,
    topics: &KafkaTopics,
    producer: &Producer,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> DevicesHandler {
    let reader = PartitionReader::in_memory(log, topics.device_state(), producer.clone());
    let changelog = Arc::new(Changelog::new(
        producer.clone(),
        producer.clone(),
        reader,
        devices::SideTopics::of(topics),
        metrics.clone(),
    ));
    let mqtt = MqttConfig {
        port: 1,
        ..MqttConfig::default()
    };
    let downlink = MqttPublisher::start(&mqtt, "bench", 16, metrics.clone(), shutdown.clone())
        .expect("downlink options");
    let directory = Arc::new(Directory::loaded(Vec::new(), metrics.clone()));
    let config = devices::DevicesConfig {
        arbiters: 1,
        ..Default::default()
    };
    let registry = devices::registry(config, changelog, downlink, directory, metrics.clone());
    // As a consumer's assignment would: this instance owns every partition of the log.
    registry.assigned(&(0..64).collect::<Vec<i32>>());
    DevicesHandler {
        registry: Arc::new(registry),
        commands_topic: topics.commands(),
        alerts_topic: topics.alerts(),
        replies_topic: topics.replies(),
        replies: producer.clone(),
        answers: tokio::runtime::Handle::current(),
        metrics: metrics.clone(),
        pending: PendingWrites::new(MAX_PENDING_WRITES, metrics.clone()),
    }
}

fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

async fn run(count: usize, readings: u64) {
    let shutdown = CancellationToken::new();
    let mut roles = Roles::new(&shutdown);
    let mut noise: Vec<Lcg> = (0..count).map(|n| Lcg(n as u64 + 1)).collect();
    let topics: Vec<String> = (0..count)
        .map(|n| {
            let id = DeviceId::parse(&format!("sim-{n:07}")).expect("valid device id");
            DeviceTopic::new(id, DeviceTopicKind::Telemetry).to_string()
        })
        .collect();
    let (started, cpu_started) = (Instant::now(), cpu_seconds());
    for seq in 0..readings {
        for (n, topic) in topics.iter().enumerate() {
            let payload = payload(n, seq, &mut noise[n]);
            let received_ms = T0_MS + seq as i64 * INTERVAL_MS;
            roles.feed(topic, &payload, received_ms).await;
            if n % 256 == 0 {
                roles.settle().await;
            }
        }
    }
    roles.settle().await;
    let (wall, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu_started);
    let total = count as u64 * readings;
    let metrics = &roles.metrics;
    println!(
        "{}",
        serde_json::json!({
            "devices": count,
            "readings": total,
            "params_published": metrics.params_published.get(),
            "events_scored": metrics.events_scored.get(),
            "scores_published": metrics.scores_published.get(),
            "wall_secs": (wall * 100.0).round() / 100.0,
            "cpu_us_per_reading": (cpu * 1e7 / total as f64).round() / 10.0,
        })
    );
    shutdown.cancel();
    actix_rt::System::current().stop();
}
