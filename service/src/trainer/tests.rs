//! Unit tests of the trainer role's handler on in-memory records: no broker needed.

use std::collections::BTreeMap;

use fleetwatch_models::production::Params;
use fleetwatch_protocol::{
    Connectivity, DeviceEvent, DeviceEventBody, StatePayload, StatusPayload, TelemetryPayload,
};

use super::*;
use crate::kafka::memory::MemoryLog;
use crate::kafka::{PartitionListener, PartitionReader, ScanFrom, MARKER_PREFIX};

// ---- helpers: records in, parameters out ------------------------------------------------

/// Device clock of the first reading; readings are one second apart.
const T0_MS: i64 = 1_700_000_000_000;
/// Long enough never to elapse during a test: publication by count only.
const NEVER_MS: u64 = 3_600_000;

/// A trainer restored from checkpoint state bytes with the default model settings.
fn restore(state: &[u8]) -> std::result::Result<ModelTrainer, fleetwatch_models::ModelError> {
    ModelTrainer::from_state_bytes(production::Config::default(), state)
}

fn device(id: &str) -> DeviceId {
    DeviceId::parse(id).expect("valid device id")
}

/// Deterministic noise in [-1, 1): a 64-bit LCG (Knuth's MMIX constants).
struct Lcg(u64);

impl Lcg {
    fn noise(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// `temp`: a one-minute sine around `level` plus noise; `vibration`: noise around 1.
fn reading(seq: u64, level: f64, noise: &mut Lcg) -> TelemetryPayload {
    let phase = seq as f64 * std::f64::consts::TAU / 60.0;
    let metrics = BTreeMap::from([
        (
            "temp".into(),
            level + 2.0 * phase.sin() + 0.3 * noise.noise(),
        ),
        ("vibration".into(), 1.0 + 0.05 * noise.noise()),
    ]);
    TelemetryPayload {
        ts: T0_MS + seq as i64 * 1000,
        seq,
        metrics,
    }
}

/// Readings `seqs` of the series around `level`: the same readings however the series is
/// split into calls (the noise depends on the level and the sequence number only).
fn readings(seqs: std::ops::Range<u64>, level: f64) -> Vec<TelemetryPayload> {
    let mut noise = Lcg(level.to_bits());
    let all: Vec<TelemetryPayload> = (0..seqs.end)
        .map(|seq| reading(seq, level, &mut noise))
        .collect();
    all[seqs.start as usize..].to_vec()
}

/// A `DeviceEvent` as ingest writes it to `iot.telemetry` by default: the compact form.
fn device_event(device_id: &str, body: DeviceEventBody) -> Vec<u8> {
    let event = DeviceEvent {
        tenant: None,
        device_id: device(device_id),
        received_ms: T0_MS,
        body,
    };
    event.to_record(fleetwatch_protocol::RecordEncoding::Compact)
}

fn telemetry_event(device_id: &str, telemetry: TelemetryPayload) -> Vec<u8> {
    device_event(device_id, DeviceEventBody::Telemetry(telemetry))
}

fn state_event(device_id: &str) -> Vec<u8> {
    let mut reported = serde_json::Map::new();
    reported.insert("firmware".to_owned(), "1.2.3".into());
    device_event(
        device_id,
        DeviceEventBody::State(StatePayload { ts: None, reported }),
    )
}

fn status_event(device_id: &str) -> Vec<u8> {
    let status = StatusPayload {
        status: Connectivity::Online,
        ts: None,
    };
    device_event(device_id, DeviceEventBody::Status(status))
}

/// A trainer handler writing to memory, and what it wrote.
struct Rig {
    handler: TrainerHandler,
    log: MemoryLog,
    metrics: Arc<Metrics>,
    topics: KafkaTopics,
    models: SharedModels,
    next_offset: i64,
}

/// Publication by count every `publish_every_events`, or after `publish_every_ms`; a
/// checkpoint every `checkpoint_every_publications` publications.
fn trainer_config(
    publish_every_events: u32,
    publish_every_ms: u64,
    checkpoint_every_publications: u32,
) -> TrainerConfig {
    TrainerConfig {
        publish_every_events,
        publish_every_ms,
        checkpoint_every_publications,
        model: production::Config::default(),
    }
}

impl Rig {
    /// Checkpoints out of the way: one every 1000 publications.
    fn new(publish_every_events: u32, publish_every_ms: u64) -> Self {
        Self::with_config(trainer_config(
            publish_every_events,
            publish_every_ms,
            1_000,
        ))
    }

    fn with_config(config: TrainerConfig) -> Self {
        Self::on_shared_log(config, &MemoryLog::default())
    }

    /// A fresh trainer instance (no models in memory) on an existing log: what a restart
    /// or the next owner of partition 0 sees.
    async fn on_log(config: TrainerConfig, log: &MemoryLog) -> Self {
        Self::on_log_with(config, log, crate::shadow::ModelRegistry::empty()).await
    }

    async fn on_log_with(
        config: TrainerConfig,
        log: &MemoryLog,
        registry: Arc<crate::shadow::ModelRegistry>,
    ) -> Self {
        let rig = Self::with_registry(config, log, registry);
        // Every in-memory reader names its markers `marker/test/<n>`, counting from 0:
        // the new readers must count past the markers earlier instances left, or their
        // scans would stop at one of those instead of their own.
        for reader in [
            &rig.handler.checkpoints.params,
            &rig.handler.checkpoints.states,
        ] {
            let markers = (log.records(reader.topic()).iter())
                .filter(|record| record.key.starts_with(MARKER_PREFIX))
                .count();
            for _ in 0..markers {
                let scanned = reader.scan(0, ScanFrom::Offset(i64::MAX), |_, _, _| true);
                scanned.await.expect("in memory");
            }
        }
        rig
    }

    fn on_shared_log(config: TrainerConfig, log: &MemoryLog) -> Self {
        Self::with_registry(config, log, crate::shadow::ModelRegistry::empty())
    }

    fn with_registry(
        config: TrainerConfig,
        log: &MemoryLog,
        registry: Arc<crate::shadow::ModelRegistry>,
    ) -> Self {
        let (metrics, topics) = (Arc::new(Metrics::new()), KafkaTopics::default());
        let producer = Producer::in_memory(log, metrics.clone());
        let checkpoints = Checkpoints {
            params: PartitionReader::in_memory(log, topics.model_params(), producer.clone()),
            states: PartitionReader::in_memory(log, topics.trainer_state(), producer.clone()),
            metrics: metrics.clone(),
        };
        let models = SharedModels::default();
        let handler = TrainerHandler::new(
            config,
            &topics,
            producer,
            checkpoints,
            models.clone(),
            registry,
            metrics.clone(),
        );
        Self {
            handler,
            log: log.clone(),
            metrics,
            topics,
            models,
            next_offset: 0,
        }
    }

    /// Hand one `iot.telemetry` record (key: the device) of partition 0 to the handler;
    /// it must not fail.
    async fn feed(&mut self, key: &str, payload: &[u8]) {
        self.feed_at(0, key, payload).await;
    }

    async fn feed_at(&mut self, partition: i32, key: &str, payload: &[u8]) {
        let topic = self.topics.telemetry();
        let record = Record::new(&topic, key, payload).at(partition, self.next_offset);
        self.next_offset += 1;
        let outcome = self.handler.handle(&record).await;
        assert!(outcome.is_ok(), "handle failed: {outcome:?}");
    }

    /// Feed readings `seqs` of one device's series around `level` (see [`readings`]) on
    /// partition 0.
    async fn feed_readings(&mut self, device_id: &str, seqs: std::ops::Range<u64>, level: f64) {
        self.feed_readings_at(0, device_id, seqs, level).await;
    }

    async fn feed_readings_at(
        &mut self,
        partition: i32,
        device_id: &str,
        seqs: std::ops::Range<u64>,
        level: f64,
    ) {
        for reading in readings(seqs, level) {
            let payload = telemetry_event(device_id, reading);
            self.feed_at(partition, device_id, &payload).await;
        }
    }

    async fn tick(&mut self) {
        let outcome = self.handler.on_tick().await;
        assert!(outcome.is_ok(), "on_tick failed: {outcome:?}");
    }

    /// Every record of `topic` but the partition readers' markers, as binary envelopes,
    /// in the order written; each is keyed by its device.
    fn envelopes(&self, topic: &str) -> Vec<ParamsEnvelope<Vec<u8>>> {
        (self.log.records(topic).iter())
            .filter(|record| !record.key.starts_with(MARKER_PREFIX))
            .map(|record| {
                let envelope = ParamsEnvelope::decode(&record.payload)
                    .expect("every record is a binary ParamsEnvelope");
                assert_eq!(record.key, envelope.device_id.as_str(), "keyed by device");
                envelope
            })
            .collect()
    }

    /// Every parameter record on `iot.model-params`, decoded, in the order written.
    fn published(&self) -> Vec<ParamsEnvelope<Params>> {
        (self.envelopes(&self.topics.model_params()).into_iter())
            .map(|envelope| ParamsEnvelope {
                damping: Vec::new(),
                params: Params::from_bytes(&envelope.params).expect("parameters decode"),
                device_id: envelope.device_id,
                model_id: envelope.model_id,
                version: envelope.version,
                trained_events: envelope.trained_events,
                published_ms: envelope.published_ms,
            })
            .collect()
    }

    /// Every checkpoint on `iot.trainer-state`, in the order written.
    fn checkpoints(&self) -> Vec<ParamsEnvelope<Vec<u8>>> {
        self.envelopes(&self.topics.trainer_state())
    }

    /// (version, trained_events) of each checkpoint of `device_id`; each checkpoint's
    /// state restores a trainer that has learned exactly `trained_events`.
    fn checkpointed(&self, device_id: &str) -> Vec<(u64, u64)> {
        (self.checkpoints().iter())
            .filter(|envelope| envelope.device_id.as_str() == device_id)
            .map(|envelope| {
                let trainer = restore(&envelope.params).expect("the checkpoint restores");
                assert_eq!(trainer.events(), envelope.trained_events);
                (envelope.version, envelope.trained_events)
            })
            .collect()
    }

    /// (version, trained_events) of each publication for `device_id`.
    fn versions_of(&self, device_id: &str) -> Vec<(u64, u64)> {
        self.published()
            .iter()
            .filter(|envelope| envelope.device_id.as_str() == device_id)
            .map(|envelope| (envelope.version, envelope.trained_events))
            .collect()
    }

    /// The encoded parameters of `device_id`'s publication `version`.
    fn params_bytes(&self, device_id: &str, version: u64) -> Vec<u8> {
        let envelopes = self.envelopes(&self.topics.model_params());
        let found = (envelopes.into_iter())
            .find(|e| e.device_id.as_str() == device_id && e.version == version);
        found.expect("published").params
    }

    /// (device, partition, version, events learned) of every model in memory, by device.
    fn held(&self) -> Vec<(String, i32, u64, u64)> {
        let models = self.models.lock();
        let mut held: Vec<_> = (models.devices.iter())
            .map(|((id, _), model)| {
                let events = model.trainer.events();
                (id.to_string(), model.partition, model.version, events)
            })
            .collect();
        held.sort();
        held
    }

    /// Partitions whose models were restored since they were assigned.
    fn restored(&self) -> Vec<i32> {
        let mut restored: Vec<i32> = self.models.lock().restored.iter().copied().collect();
        restored.sort_unstable();
        restored
    }

    /// The rebalance listener the role registers for this handler's models.
    fn partitions(&self) -> TrainerPartitions {
        TrainerPartitions {
            models: self.models.clone(),
            producer: Producer::in_memory(&self.log, self.metrics.clone()),
            state_topic: self.topics.trainer_state(),
        }
    }

    /// Write a record to `topic` of the log, as another instance would have.
    async fn write(&self, topic: &str, key: &str, payload: &[u8]) {
        let producer = Producer::in_memory(&self.log, self.metrics.clone());
        let delivery = producer.enqueue(topic, key, payload).await;
        delivery.confirmed().await.expect("in memory");
    }

    fn skipped(&self, reason: &str) -> u64 {
        self.metrics
            .skipped
            .with_label_values(&["trainer", reason])
            .get()
    }
}

// ---- publication cadence ------------------------------------------------------------------

#[tokio::test]
async fn publishes_every_n_events_with_versions_counting_from_one() {
    let mut rig = Rig::new(5, NEVER_MS);
    rig.feed_readings("pump-1", 0..17, 20.0).await;

    assert_eq!(rig.versions_of("pump-1"), vec![(1, 5), (2, 10), (3, 15)]);
    assert_eq!(rig.metrics.params_published.get(), 3);
    let latest = rig.published().pop().expect("published");
    assert!(latest.params.check().is_ok(), "{:?}", latest.params.check());
    let learned: Vec<(&str, u32)> = latest
        .params
        .metrics
        .iter()
        .map(|(name, metric)| (name, metric.n))
        .collect();
    assert_eq!(learned, vec![("temp", 15), ("vibration", 15)]);
}

#[tokio::test]
async fn on_tick_publishes_news_once_publish_every_ms_has_passed() {
    let mut rig = Rig::new(1_000, 5_000);
    rig.feed_readings("pump-1", 0..3, 20.0).await;
    rig.tick().await;
    assert_eq!(rig.versions_of("pump-1"), vec![], "5 s have not passed yet");

    rig.handler
        .backdate_last_publication(&device("pump-1"), Duration::from_millis(5_000));
    rig.tick().await;
    assert_eq!(rig.versions_of("pump-1"), vec![(1, 3)]);

    rig.handler
        .backdate_last_publication(&device("pump-1"), Duration::from_millis(5_000));
    rig.tick().await;
    assert_eq!(
        rig.versions_of("pump-1"),
        vec![(1, 3)],
        "nothing new: nothing sent"
    );
}

#[tokio::test]
async fn an_event_arriving_after_publish_every_ms_is_published_at_once() {
    let mut rig = Rig::new(1_000, 5_000);
    rig.feed_readings("pump-1", 0..2, 20.0).await;
    assert_eq!(rig.versions_of("pump-1"), vec![]);

    rig.handler
        .backdate_last_publication(&device("pump-1"), Duration::from_millis(5_000));
    rig.feed_readings("pump-1", 2..4, 20.0).await;
    assert_eq!(
        rig.versions_of("pump-1"),
        vec![(1, 3)],
        "the first late event publishes"
    );
}

#[test]
fn ticks_at_half_the_publication_interval_and_at_most_every_50_ms() {
    assert_eq!(
        Rig::new(10, 5_000).handler.tick_interval(),
        Some(Duration::from_millis(2_500))
    );
    assert_eq!(
        Rig::new(10, 60).handler.tick_interval(),
        Some(Duration::from_millis(50))
    );
}

// ---- what is not learned ------------------------------------------------------------------

#[tokio::test]
async fn duplicate_sequence_numbers_are_skipped_and_counted() {
    let mut rig = Rig::new(3, NEVER_MS);
    let mut noise = Lcg(1);
    for seq in [1, 2, 2, 3, 1, 4, 5, 6] {
        let payload = telemetry_event("pump-1", reading(seq, 20.0, &mut noise));
        rig.feed("pump-1", &payload).await;
    }

    assert_eq!(rig.skipped("duplicate"), 2);
    assert_eq!(
        rig.versions_of("pump-1"),
        vec![(1, 3), (2, 6)],
        "duplicates are neither learned nor counted towards the cadence"
    );
}

#[tokio::test]
async fn state_status_and_undecodable_records_are_skipped_without_failing() {
    let mut rig = Rig::new(1, NEVER_MS);
    rig.feed("pump-1", &state_event("pump-1")).await;
    rig.feed("pump-1", &status_event("pump-1")).await;
    rig.feed("pump-1", b"{not json").await;
    rig.feed("pump-1", b"").await;
    rig.feed("pump-1", br#"{"device_id":"pump-1"}"#).await;
    let mut bad_id = telemetry_event("pump-1", reading(0, 20.0, &mut Lcg(1)));
    let id_at = bad_id.windows(6).position(|w| w == b"pump-1").unwrap();
    bad_id[id_at + 4] = b'/';
    rig.feed("pump-1", &bad_id).await;

    assert_eq!(rig.published(), vec![]);
    assert_eq!(
        rig.skipped("undecodable"),
        4,
        "state and status are not counted"
    );
    assert_eq!(rig.skipped("duplicate"), 0);

    rig.feed_readings("pump-1", 0..1, 20.0).await;
    assert_eq!(
        rig.versions_of("pump-1"),
        vec![(1, 1)],
        "the device still trains"
    );
}

// ---- devices ------------------------------------------------------------------------------

#[tokio::test]
async fn each_device_has_its_own_model_and_version_count() {
    let mut rig = Rig::new(4, NEVER_MS);
    let (mut pump_noise, mut fan_noise) = (Lcg(1), Lcg(2));
    for seq in 0..9 {
        let pump = telemetry_event("pump-1", reading(seq, 20.0, &mut pump_noise));
        rig.feed("pump-1", &pump).await;
        if seq < 8 {
            let fan = telemetry_event("fan-2", reading(seq, 80.0, &mut fan_noise));
            rig.feed("fan-2", &fan).await;
        }
    }

    assert_eq!(rig.versions_of("pump-1"), vec![(1, 4), (2, 8)]);
    assert_eq!(rig.versions_of("fan-2"), vec![(1, 4), (2, 8)]);
    assert_eq!(
        rig.skipped("duplicate"),
        0,
        "one device's seq is not another's"
    );
    let latest_temp_mean = |device_id: &str| {
        let published = rig.published();
        let latest = published
            .iter()
            .rfind(|envelope| envelope.device_id.as_str() == device_id)
            .expect("published");
        let temp = latest.params.metrics.get("temp");
        temp.expect("temp learned").value_mean
    };
    let (pump, fan) = (latest_temp_mean("pump-1"), latest_temp_mean("fan-2"));
    assert!(
        (18.0..24.0).contains(&pump),
        "pump learned its own level: {pump}"
    );
    assert!(
        (78.0..84.0).contains(&fan),
        "fan learned its own level: {fan}"
    );
}

// ---- checkpoints --------------------------------------------------------------------------

/// A trainer of the default model that has learned `readings`, in order.
fn trained_on(readings: &[TelemetryPayload]) -> ModelTrainer {
    let mut trainer = production::trainer(&production::Config::default());
    for reading in readings {
        trainer.update(&Observation {
            ts_ms: reading.ts,
            metrics: &reading.metrics,
        });
    }
    trainer
}

#[tokio::test]
async fn a_checkpoint_lands_on_trainer_state_every_n_publications() {
    let mut rig = Rig::with_config(trainer_config(5, NEVER_MS, 2));
    rig.feed_readings("pump-1", 0..23, 20.0).await;
    rig.feed_readings("fan-2", 0..10, 80.0).await;

    assert_eq!(
        rig.versions_of("pump-1"),
        vec![(1, 5), (2, 10), (3, 15), (4, 20)]
    );
    assert_eq!(rig.checkpointed("pump-1"), vec![(2, 10), (4, 20)]);
    assert_eq!(rig.checkpointed("fan-2"), vec![(2, 10)]);
    assert_eq!(
        rig.metrics.params_published.get(),
        6,
        "checkpoints are not parameters"
    );
    let state = &rig.checkpoints()[1];
    assert_eq!((state.device_id.as_str(), state.version), ("pump-1", 4));
    assert_eq!(
        state.params,
        trained_on(&readings(0..20, 20.0)).state_bytes(),
        "the checkpoint is the trainer's state as of its publication"
    );
    let restored = restore(&state.params).expect("restores");
    assert_eq!(
        restored.snapshot().to_bytes(),
        rig.params_bytes("pump-1", 4),
        "it gives the parameters published with it"
    );
}

#[tokio::test]
async fn on_shutdown_checkpoints_the_models_published_since_their_last_checkpoint() {
    let mut rig = Rig::with_config(trainer_config(5, NEVER_MS, 2));
    rig.feed_readings("pump-1", 0..17, 20.0).await; // v1, v2 (checkpoint), v3, 2 more
    rig.feed_readings("fan-2", 0..10, 80.0).await; // v1, v2 (checkpoint)
    assert_eq!(rig.checkpointed("pump-1"), vec![(2, 10)]);

    rig.handler.on_shutdown().await;
    assert_eq!(
        rig.checkpointed("pump-1"),
        vec![(2, 10), (3, 17)],
        "the newest version, with every event learned"
    );
    assert_eq!(
        rig.checkpointed("fan-2"),
        vec![(2, 10)],
        "fan-2's checkpoint is current"
    );
    let last = rig.checkpoints().pop().expect("checkpointed");
    assert_eq!(
        last.params,
        trained_on(&readings(0..17, 20.0)).state_bytes()
    );

    rig.handler.on_shutdown().await;
    assert_eq!(rig.checkpoints().len(), 3, "nothing new: nothing written");
}

#[tokio::test]
async fn a_new_owner_restores_each_device_from_its_newest_checkpoint() {
    let config = trainer_config(5, NEVER_MS, 2);
    let mut first = Rig::with_config(config.clone());
    first.feed_readings("pump-1", 0..23, 20.0).await; // v1..v4; checkpoints v2, v4
    assert_eq!(first.checkpointed("pump-1"), vec![(2, 10), (4, 20)]);

    // The first instance crashes; the next owner of partition 0 gets the readings its
    // checkpoint does not cover again.
    let mut next = Rig::on_log(config, &first.log).await;
    next.feed_readings("pump-1", 20..21, 20.0).await;
    assert_eq!(
        next.held(),
        vec![("pump-1".to_owned(), 0, 4, 21)],
        "version 4 and the 20 events of the newest checkpoint, plus the new one"
    );
    assert_eq!(next.restored(), vec![0]);

    next.feed_readings("pump-1", 21..25, 20.0).await;
    assert_eq!(
        next.versions_of("pump-1"),
        vec![(1, 5), (2, 10), (3, 15), (4, 20), (5, 25)],
        "versions go on from the newest"
    );
    assert_eq!(
        next.params_bytes("pump-1", 5),
        trained_on(&readings(0..25, 20.0)).snapshot().to_bytes(),
        "as if one trainer had learned every reading"
    );
    assert_eq!(next.skipped("unusable_checkpoint"), 0);
    assert_eq!(next.skipped("undecodable"), 0, "markers are not records");
}

#[tokio::test]
async fn a_device_published_past_its_checkpoint_continues_from_its_newest_version() {
    let config = trainer_config(5, NEVER_MS, 2);
    let mut first = Rig::with_config(config.clone());
    first.feed_readings("pump-1", 0..15, 20.0).await; // v1, v2 (checkpoint), v3
    first.feed_readings("fan-2", 0..5, 80.0).await; // v1, never checkpointed
    assert_eq!(first.checkpointed("pump-1"), vec![(2, 10)]);
    assert_eq!(first.checkpointed("fan-2"), Vec::<(u64, u64)>::new());

    let mut next = Rig::on_log(config, &first.log).await;
    next.feed_readings("pump-1", 10..11, 20.0).await;
    assert_eq!(
        next.held(),
        vec![
            ("fan-2".to_owned(), 0, 1, 0),
            ("pump-1".to_owned(), 0, 3, 11),
        ],
        "pump-1: version 3 with the state of version 2; fan-2: version 1, afresh"
    );

    next.feed_readings("pump-1", 11..15, 20.0).await;
    next.feed_readings("fan-2", 0..5, 80.0).await;
    assert_eq!(
        next.versions_of("pump-1"),
        vec![(1, 5), (2, 10), (3, 15), (4, 15)]
    );
    assert_eq!(
        next.params_bytes("pump-1", 4),
        next.params_bytes("pump-1", 3),
        "relearning the same readings gives the same parameters"
    );
    assert_eq!(next.versions_of("fan-2"), vec![(1, 5), (2, 5)]);
}

#[tokio::test]
async fn an_unusable_checkpoint_starts_the_model_afresh_and_is_counted() {
    let config = trainer_config(5, NEVER_MS, 2);
    let mut rig = Rig::with_config(config);
    let (params_topic, state_topic) = (rig.topics.model_params(), rig.topics.trainer_state());
    let params = trained_on(&readings(0..40, 20.0)).snapshot().to_bytes();
    let envelope = |version: u64, bytes: &[u8]| {
        let envelope = ParamsEnvelope {
            damping: Vec::new(),
            device_id: device("pump-1"),
            model_id: fleetwatch_protocol::PRODUCTION_MODEL.into(),
            version,
            trained_events: 40,
            published_ms: T0_MS,
            params: bytes.to_vec(),
        };
        envelope.encode()
    };
    rig.write(&params_topic, "pump-1", &envelope(7, &params))
        .await;
    // Parameters where the trainer's state belongs: not a trainer state.
    rig.write(&state_topic, "pump-1", &envelope(7, &params))
        .await;
    rig.write(&params_topic, "pump-1", b"junk").await;
    rig.write(&state_topic, "pump-1", b"junk").await;

    rig.feed_readings("pump-1", 0..1, 20.0).await;
    assert_eq!(rig.held(), vec![("pump-1".to_owned(), 0, 7, 1)]);
    assert_eq!(rig.skipped("unusable_checkpoint"), 1);
    assert_eq!(rig.skipped("undecodable"), 2, "one junk record per topic");

    rig.feed_readings("pump-1", 1..5, 20.0).await;
    let published: Vec<(u64, u64)> = (rig.log.records(&params_topic).iter())
        .filter_map(|record| ParamsEnvelope::decode(&record.payload).ok())
        .map(|envelope| (envelope.version, envelope.trained_events))
        .collect();
    assert_eq!(published, vec![(7, 40), (8, 5)], "versions go on from 7");
}

// ---- rebalances ---------------------------------------------------------------------------

#[tokio::test]
async fn an_assignment_drops_the_models_of_partitions_no_longer_owned() {
    let mut rig = Rig::new(5, NEVER_MS);
    rig.feed_readings_at(0, "pump-1", 0..5, 20.0).await;
    rig.feed_readings_at(1, "fan-2", 0..3, 80.0).await;
    rig.feed_readings_at(2, "valve-3", 0..2, 50.0).await;
    assert_eq!(rig.restored(), vec![0, 1, 2]);
    let listener = rig.partitions();

    listener.assigned(&[0, 2, 3]);
    assert_eq!(
        rig.held(),
        vec![
            ("pump-1".to_owned(), 0, 1, 5),
            ("valve-3".to_owned(), 2, 0, 2),
        ],
        "the models of partitions still owned go on as they were"
    );
    assert_eq!(rig.restored(), vec![0, 2]);

    listener.assigned(&[]);
    assert_eq!(rig.held(), Vec::new());
    assert_eq!(rig.restored(), Vec::<i32>::new());
}

#[tokio::test]
async fn a_revocation_checkpoints_the_models_published_since_their_last_checkpoint() {
    let mut rig = Rig::with_config(trainer_config(5, NEVER_MS, 2));
    rig.feed_readings("pump-1", 0..17, 20.0).await; // v1, v2 (checkpoint), v3, 2 more
    rig.feed_readings("fan-2", 0..10, 80.0).await; // v1, v2 (checkpoint)
    let listener = rig.partitions();

    listener.revoked(&[0], false);
    assert_eq!(rig.checkpointed("pump-1"), vec![(2, 10), (3, 17)]);
    assert_eq!(rig.checkpointed("fan-2"), vec![(2, 10)]);
    assert_eq!(
        rig.held(),
        vec![
            ("fan-2".to_owned(), 0, 2, 10),
            ("pump-1".to_owned(), 0, 3, 17),
        ],
        "kept until the new assignment says otherwise"
    );

    listener.revoked(&[0], false);
    assert_eq!(rig.checkpoints().len(), 3, "nothing new: nothing written");

    rig.feed_readings("pump-1", 17..20, 20.0).await; // v4
    listener.revoked(&[0], true);
    assert_eq!(rig.checkpointed("pump-1"), vec![(2, 10), (3, 17), (4, 20)]);
    assert_eq!(
        rig.held(),
        Vec::new(),
        "lost partitions are dropped at once"
    );
    assert_eq!(rig.restored(), Vec::<i32>::new());
}

/// Shutdown (and revocation) checkpoint only the models published since their last
/// checkpoint, so events learned after a checkpointed publication are lost although
/// their offsets are committed: the next instance never learns them.
#[tokio::test]
async fn on_shutdown_checkpoints_events_learned_since_the_last_checkpoint() {
    let config = trainer_config(5, NEVER_MS, 2);
    let mut rig = Rig::with_config(config.clone());
    rig.feed_readings("pump-1", 0..13, 20.0).await; // v1, v2 (checkpoint), 3 more
    rig.handler.on_shutdown().await;
    assert_eq!(rig.checkpointed("pump-1"), vec![(2, 10), (2, 13)]);

    let mut next = Rig::on_log(config, &rig.log).await;
    next.feed_readings("pump-1", 13..14, 20.0).await;
    assert_eq!(next.held(), vec![("pump-1".to_owned(), 0, 2, 14)]);
}

// ---- candidate models ---------------------------------------------------------------------

/// A registry with candidate `cand-1` in shadow for the whole fleet.
fn registry_with_candidate() -> Arc<crate::shadow::ModelRegistry> {
    use fleetwatch_protocol::{ModelEvent, ModelEventBody, ShadowScope};
    let registry = crate::shadow::ModelRegistry::empty();
    let bodies = [
        ModelEventBody::Created {
            model_id: "cand-1".into(),
            config: serde_json::json!({"trainer": {"model": {"threshold": 0.7}}}),
        },
        ModelEventBody::ShadowStarted {
            model_id: "cand-1".into(),
            scope: ShadowScope::default(),
        },
    ];
    for (offset, body) in bodies.into_iter().enumerate() {
        let event = ModelEvent {
            at_ms: T0_MS,
            by: "ops".into(),
            body,
        };
        assert!(registry.apply_at(offset as i64, &event));
    }
    registry
}

#[tokio::test]
async fn candidate_parameters_land_on_the_device_partition_under_their_own_key() {
    let log = MemoryLog::default();
    let mut rig = Rig::with_registry(
        trainer_config(5, NEVER_MS, 2),
        &log,
        registry_with_candidate(),
    );
    rig.feed_readings_at(3, "pump-1", 0..20, 20.0).await;
    let records: Vec<_> = (log.records(&rig.topics.model_params()).into_iter())
        .filter(|record| !record.key.starts_with(MARKER_PREFIX))
        .collect();
    assert_eq!(records.len(), 8, "4 publications of each model");
    assert!(
        records.iter().all(|r| r.partition == 3),
        "the device's telemetry partition"
    );
    // What a compacted topic keeps: the newest record per key.
    let mut latest: BTreeMap<String, ParamsEnvelope<Vec<u8>>> = BTreeMap::new();
    for record in &records {
        let envelope = ParamsEnvelope::decode(&record.payload).expect("binary envelope");
        let key = fleetwatch_protocol::params_key(&envelope.device_id, &envelope.model_id);
        assert_eq!(record.key, key);
        latest.insert(record.key.clone(), envelope);
    }
    let kept: Vec<(&str, &str, u64)> = (latest.iter())
        .map(|(key, e)| (key.as_str(), e.model_id.as_str(), e.version))
        .collect();
    assert_eq!(
        kept,
        [("pump-1", "production", 4), ("pump-1/cand-1", "cand-1", 4)],
        "both survive, versions counted per (device, model)"
    );
    // The scorer's reader of the partition ends with both.
    let params = crate::scorer::SharedParams::default();
    let mut reader = crate::scorer::ParamsHandler::new(params.clone(), rig.metrics.clone());
    let topic = rig.topics.model_params();
    for record in &records {
        let read = Record::new(&topic, &record.key, &record.payload).at(3, record.offset);
        reader.handle(&read).await.expect("reads");
    }
    let held: Vec<String> = params.read()[&device("pump-1")]
        .iter()
        .map(|(id, _)| id.to_owned())
        .collect();
    assert_eq!(held, ["cand-1", "production"]);
    let checkpoints = log.records(&rig.topics.trainer_state());
    assert!(checkpoints
        .iter()
        .any(|r| r.key == "pump-1/cand-1" && r.partition == 3));
    let spent = (rig.metrics.trainer_model_updates)
        .with_label_values(&["cand-1"])
        .get();
    assert_eq!(spent, 20, "the candidate's cost is counted");
}

#[tokio::test]
async fn a_new_owner_continues_candidate_models_from_their_checkpoints() {
    let log = MemoryLog::default();
    let config = trainer_config(5, NEVER_MS, 2);
    let mut first = Rig::with_registry(config.clone(), &log, registry_with_candidate());
    first.feed_readings("pump-1", 0..20, 20.0).await;
    drop(first);
    let mut next = Rig::on_log_with(config, &log, registry_with_candidate()).await;
    next.feed_readings("pump-1", 20..25, 20.0).await;
    let key = (
        device("pump-1"),
        fleetwatch_protocol::ModelId::new("cand-1"),
    );
    let models = next.models.lock();
    let candidate = &models.devices[&key];
    assert_eq!(candidate.version, 5, "versions continue");
    assert_eq!(
        candidate.trainer.events(),
        25,
        "training continues from the checkpoint"
    );
}

/// The trainer's cost with one candidate in shadow for the whole fleet, against none
/// (docs/benchmarks.md): 200 devices × 300 readings through the handler (learning,
/// publications every 10 readings, checkpoints), interleaved runs, the fastest of each.
/// Run: `cargo test -p fleetwatch --lib trainer::tests::candidate_cost -- --ignored --nocapture`
/// (a debug build: the ratio is the figure, not the absolute times).
#[tokio::test]
#[ignore]
async fn candidate_cost() {
    async fn run(registry: Arc<crate::shadow::ModelRegistry>) -> Duration {
        let mut rig = Rig::with_registry(
            trainer_config(10, NEVER_MS, 10),
            &MemoryLog::default(),
            registry,
        );
        let events: Vec<(String, Vec<u8>)> = (0..200)
            .flat_map(|d| {
                let id = format!("dev-{d}");
                let payloads: Vec<(String, Vec<u8>)> = (readings(0..300, 20.0).into_iter())
                    .map(|r| (id.clone(), telemetry_event(&id, r)))
                    .collect();
                payloads
            })
            .collect();
        let started = Instant::now();
        for (key, payload) in &events {
            rig.feed(key, payload).await;
        }
        started.elapsed()
    }
    let (mut alone, mut with) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        alone = alone.min(run(crate::shadow::ModelRegistry::empty()).await);
        with = with.min(run(registry_with_candidate()).await);
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / 60_000.0;
    println!(
        "trainer handler, 60,000 readings: production only {:.1} µs/reading, with one fleet-wide candidate {:.1} µs/reading ({:.2}×)",
        per(alone),
        per(with),
        with.as_secs_f64() / alone.as_secs_f64()
    );
}
