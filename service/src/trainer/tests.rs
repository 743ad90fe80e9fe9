//! Unit tests of the trainer role's handler on in-memory records: no broker needed.

use std::collections::BTreeMap;

use fleetwatch_models::production::Params;
use fleetwatch_protocol::{
    Connectivity, DeviceEvent, DeviceEventBody, StatePayload, StatusPayload, TelemetryPayload,
};

use super::*;
use crate::kafka::memory::MemoryLog;

// ---- helpers: records in, parameters out ------------------------------------------------

/// Device clock of the first reading; readings are one second apart.
const T0_MS: i64 = 1_700_000_000_000;
/// Long enough never to elapse during a test: publication by count only.
const NEVER_MS: u64 = 3_600_000;

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
            "temp".to_owned(),
            level + 2.0 * phase.sin() + 0.3 * noise.noise(),
        ),
        ("vibration".to_owned(), 1.0 + 0.05 * noise.noise()),
    ]);
    TelemetryPayload {
        ts: T0_MS + seq as i64 * 1000,
        seq,
        metrics,
    }
}

/// A `DeviceEvent` as ingest writes it to `iot.telemetry`.
fn device_event(device_id: &str, body: DeviceEventBody) -> Vec<u8> {
    let event = DeviceEvent {
        device_id: device(device_id),
        received_ms: T0_MS,
        body,
    };
    serde_json::to_vec(&event).expect("wire types serialize")
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
    next_offset: i64,
}

impl Rig {
    fn new(publish_every_events: u32, publish_every_ms: u64) -> Self {
        let config = TrainerConfig {
            publish_every_events,
            publish_every_ms,
            model: production::Config::default(),
        };
        let (log, metrics, topics) = (
            MemoryLog::default(),
            Arc::new(Metrics::new()),
            KafkaTopics::default(),
        );
        let producer = Producer::in_memory(&log, metrics.clone());
        Self {
            handler: TrainerHandler::new(config, &topics, producer, metrics.clone()),
            log,
            metrics,
            topics,
            next_offset: 0,
        }
    }

    /// Hand one `iot.telemetry` record (key: the device) to the handler; it must not fail.
    async fn feed(&mut self, key: &str, payload: &[u8]) {
        let topic = self.topics.telemetry();
        let record = Record::new(&topic, key, payload).at(0, self.next_offset);
        self.next_offset += 1;
        let outcome = self.handler.handle(&record).await;
        assert!(outcome.is_ok(), "handle failed: {outcome:?}");
    }

    /// Feed readings `seqs` of one device (see [`reading`]).
    async fn feed_readings(&mut self, device_id: &str, seqs: std::ops::Range<u64>, level: f64) {
        let mut noise = Lcg(seqs.start ^ level.to_bits());
        for seq in seqs {
            let payload = telemetry_event(device_id, reading(seq, level, &mut noise));
            self.feed(device_id, &payload).await;
        }
    }

    async fn tick(&mut self) {
        let outcome = self.handler.on_tick().await;
        assert!(outcome.is_ok(), "on_tick failed: {outcome:?}");
    }

    /// Every parameter record on `iot.model-params`, decoded, in the order written.
    fn published(&self) -> Vec<ParamsEnvelope<Params>> {
        let records = self.log.records(&self.topics.model_params());
        let decoded: Vec<ParamsEnvelope<Params>> = self.log.json(&self.topics.model_params());
        assert_eq!(
            decoded.len(),
            records.len(),
            "every record is a ParamsEnvelope"
        );
        for (record, envelope) in records.iter().zip(&decoded) {
            assert_eq!(record.key, envelope.device_id.as_str(), "keyed by device");
        }
        decoded
    }

    /// (version, trained_events) of each publication for `device_id`.
    fn versions_of(&self, device_id: &str) -> Vec<(u64, u64)> {
        self.published()
            .iter()
            .filter(|envelope| envelope.device_id.as_str() == device_id)
            .map(|envelope| (envelope.version, envelope.trained_events))
            .collect()
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
    let learned: Vec<(&str, u64)> = latest
        .params
        .metrics
        .iter()
        .map(|(name, metric)| (name.as_str(), metric.n))
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
    let bad_id = String::from_utf8(telemetry_event("pump-1", reading(0, 20.0, &mut Lcg(1))))
        .expect("JSON is UTF-8")
        .replace("pump-1", "pump/1");
    rig.feed("pump-1", bad_id.as_bytes()).await;

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
        latest.params.metrics["temp"].value_mean
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
