//! Unit tests of the scorer role's handlers on in-memory records: no broker needed.
//!
//! Parameters are real: a production model trained on a deterministic synthetic series
//! (a sine plus seeded noise), snapshotted and wrapped the way the trainer publishes it.

use std::collections::BTreeMap;

use fleetwatch_models::production::{self, Params};
use fleetwatch_models::Trainer;
use fleetwatch_protocol::ParamsEnvelope;
use fleetwatch_protocol::{
    Connectivity, DeviceEvent, DeviceEventBody, StatePayload, StatusPayload, TelemetryPayload,
};

use super::*;
use crate::kafka::memory::MemoryLog;

// ---- helpers: synthetic readings and trained parameters -----------------------------------

/// Device clock of reading 0; readings are one second apart.
const T0_MS: i64 = 1_700_000_000_000;
/// Readings the model learns from before scoring starts: past its warm-up (30 events).
const TRAINING_EVENTS: u64 = 100;
/// How far a spike lifts `temp` (about 50 times its noise).
const SPIKE: f64 = 15.0;

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

/// One device's readings in order: `temp`, a one-minute sine around `level` plus noise;
/// `vibration`, noise around 1. Train on the first ones, score the ones after.
struct Series {
    level: f64,
    noise: Lcg,
    next_seq: u64,
}

impl Series {
    fn new(level: f64, seed: u64) -> Self {
        Self {
            level,
            noise: Lcg(seed),
            next_seq: 0,
        }
    }

    fn calm(&mut self) -> TelemetryPayload {
        let seq = self.next_seq;
        self.next_seq += 1;
        let phase = seq as f64 * std::f64::consts::TAU / 60.0;
        let temp = self.level + 2.0 * phase.sin() + 0.3 * self.noise.noise();
        let vibration = 1.0 + 0.05 * self.noise.noise();
        TelemetryPayload {
            ts: T0_MS + seq as i64 * 1000,
            seq,
            metrics: BTreeMap::from([("temp".into(), temp), ("vibration".into(), vibration)]),
        }
    }

    /// Pass over the next `readings` (ones a model learned from, say).
    fn skip(&mut self, readings: u64) {
        for _ in 0..readings {
            self.calm();
        }
    }

    /// The next reading with `temp` lifted by [`SPIKE`].
    fn spike(&mut self) -> TelemetryPayload {
        self.lift("temp", SPIKE)
    }

    /// The next reading with `metric` lifted by `by`.
    fn lift(&mut self, metric: &str, by: f64) -> TelemetryPayload {
        let mut reading = self.calm();
        *reading
            .metrics
            .get_mut(metric)
            .expect("a metric of the series") += by;
        reading
    }
}

/// The production model's settings.
fn model_config() -> production::Config {
    production::Config::default()
}

/// Parameters of a production model trained on the series' next `events` readings.
fn train(series: &mut Series, config: &production::Config, events: u64) -> Params {
    let mut trainer = production::trainer(config);
    for _ in 0..events {
        let reading = series.calm();
        trainer.update(&Observation {
            ts_ms: reading.ts,
            metrics: &reading.metrics,
        });
    }
    trainer.snapshot()
}

/// A record value of `iot.model-params`, built as the trainer publishes it.
fn params_record(device_id: &str, version: u64, params: &Params) -> Vec<u8> {
    params_bytes_record(device_id, version, params.to_bytes())
}

/// A binary `iot.model-params` envelope around arbitrary parameter bytes.
fn params_bytes_record(device_id: &str, version: u64, params: Vec<u8>) -> Vec<u8> {
    let envelope = ParamsEnvelope {
        damping: Vec::new(),
        device_id: device(device_id),
        model_id: fleetwatch_protocol::PRODUCTION_MODEL.into(),
        version,
        trained_events: 40 + version,
        published_ms: T0_MS + version as i64,
        params,
    };
    envelope.encode()
}

/// What the model alone scores for `readings` from a fresh scorer state: to check a
/// test's premise (the handler's scorer sees the same events in the same order).
fn model_scores(params: &Params, readings: &[TelemetryPayload]) -> Vec<f64> {
    (full_scores(params, readings).iter())
        .map(|score| score.value)
        .collect()
}

/// [`model_scores`] with the scores' parts, for the reasons alerts carry.
fn full_scores(params: &Params, readings: &[TelemetryPayload]) -> Vec<Score> {
    let mut scorer = production::scorer();
    readings
        .iter()
        .map(|reading| {
            let observation = Observation {
                ts_ms: reading.ts,
                metrics: &reading.metrics,
            };
            scorer.score(params, &observation)
        })
        .collect()
}

/// Sequence numbers of the readings scoring at or above `threshold`.
fn at_or_above(readings: &[TelemetryPayload], scores: &[f64], threshold: f64) -> Vec<u64> {
    (readings.iter().zip(scores))
        .filter(|(_, &score)| score >= threshold)
        .map(|(reading, _)| reading.seq)
        .collect()
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
        status: Connectivity::Offline,
        ts: None,
    };
    device_event(device_id, DeviceEventBody::Status(status))
}

/// An expected [`Rig::story`], written with string literals.
fn story(entries: &[(&str, AlertState, u64)]) -> Vec<(String, AlertState, u64)> {
    (entries.iter())
        .map(|&(alert_id, state, seq)| (alert_id.to_owned(), state, seq))
        .collect()
}

/// The parameters reader and the scoring handler of one scorer instance, sharing their
/// parameters as in production, with alerts going to memory.
struct Rig {
    registry: Arc<crate::shadow::ModelRegistry>,
    params_reader: ParamsHandler,
    scoring: ScoringHandler,
    log: MemoryLog,
    metrics: Arc<Metrics>,
    topics: KafkaTopics,
    next_offset: i64,
}

impl Rig {
    fn new(config: ScorerConfig) -> Self {
        let (log, metrics, topics) = (
            MemoryLog::default(),
            Arc::new(Metrics::new()),
            KafkaTopics::default(),
        );
        let params: SharedParams = Arc::default();
        let registry = crate::shadow::ModelRegistry::empty();
        let params_reader = ParamsHandler::new(params.clone(), metrics.clone());
        let recommended = production::Config::default().threshold;
        let producer = Producer::in_memory(&log, metrics.clone());
        let scoring = ScoringHandler::new(
            &config,
            recommended,
            &topics,
            ScorerProducers {
                alerts: producer.clone(),
                scores: producer,
            },
            params,
            registry.clone(),
            metrics.clone(),
        );
        Self {
            registry,
            params_reader,
            scoring,
            log,
            metrics,
            topics,
            next_offset: 0,
        }
    }

    fn offset(&mut self) -> i64 {
        self.next_offset += 1;
        self.next_offset
    }

    /// Hand one `iot.model-params` record of partition 0 to the parameters reader; it
    /// must not fail.
    async fn feed_params(&mut self, key: &str, payload: &[u8]) {
        self.feed_params_at(0, key, payload).await;
    }

    async fn feed_params_at(&mut self, partition: i32, key: &str, payload: &[u8]) {
        let topic = self.topics.model_params();
        let record = Record::new(&topic, key, payload).at(partition, self.offset());
        let outcome = self.params_reader.handle(&record).await;
        assert!(outcome.is_ok(), "params handle failed: {outcome:?}");
    }

    /// Hand one `iot.telemetry` record to the scoring handler; it must not fail.
    async fn feed(&mut self, key: &str, payload: &[u8]) {
        let topic = self.topics.telemetry();
        let record = Record::new(&topic, key, payload).at(0, self.offset());
        let outcome = self.scoring.handle(&record).await;
        assert!(outcome.is_ok(), "scoring handle failed: {outcome:?}");
    }

    async fn feed_reading(&mut self, device_id: &str, reading: &TelemetryPayload) {
        let payload = device_event(device_id, DeviceEventBody::Telemetry(reading.clone()));
        self.feed(device_id, &payload).await;
    }

    async fn feed_calm(&mut self, device_id: &str, series: &mut Series, events: u64) {
        for _ in 0..events {
            self.feed_reading(device_id, &series.calm()).await;
        }
    }

    /// Every alert on `iot.alerts`, in the order written; each is keyed by its device.
    fn alerts(&self) -> Vec<Alert> {
        let records = self.log.records(&self.topics.alerts());
        let alerts: Vec<Alert> = self.log.json(&self.topics.alerts());
        assert_eq!(alerts.len(), records.len(), "every record is an Alert");
        for (record, alert) in records.iter().zip(&alerts) {
            assert_eq!(record.key, alert.device_id.as_str(), "keyed by device");
        }
        alerts
    }

    /// (alert id, state, event seq) of every alert: the episode story at a glance.
    fn story(&self) -> Vec<(String, AlertState, u64)> {
        self.alerts()
            .into_iter()
            .map(|alert| (alert.alert_id, alert.state, alert.event_seq))
            .collect()
    }

    /// The parameters version the scorer holds for a device.
    fn known_version(&self, device_id: &str) -> Option<u64> {
        let params = self.params_reader.params.read();
        params
            .get(&device(device_id))
            .and_then(|models| models.get(fleetwatch_protocol::PRODUCTION_MODEL))
            .map(|envelope| envelope.version)
    }

    fn skipped(&self, role: &str, reason: &str) -> u64 {
        self.metrics
            .skipped
            .with_label_values(&[role, reason])
            .get()
    }

    fn emitted(&self, state: &str) -> u64 {
        self.metrics
            .alerts_emitted
            .with_label_values(&[state])
            .get()
    }
}

/// A scorer with the default settings (the model's recommended episode rules: threshold
/// 0.65, clear after 30 events in a row below 0.325, escalate at 1.2 times the score last
/// reported) holding `device_id`'s parameters, version 1, trained with `config` on the
/// first [`TRAINING_EVENTS`] readings of `series`; and those parameters.
async fn rig_with_params(
    device_id: &str,
    series: &mut Series,
    config: &production::Config,
) -> (Rig, Params) {
    let mut rig = Rig::new(ScorerConfig::default());
    let params = train(series, config, TRAINING_EVENTS);
    rig.feed_params(device_id, &params_record(device_id, 1, &params))
        .await;
    (rig, params)
}

// ---- parameters ---------------------------------------------------------------------------

#[tokio::test]
async fn the_params_reader_keeps_the_newest_version_per_device() {
    let mut rig = Rig::new(ScorerConfig::default());
    let params = train(&mut Series::new(20.0, 7), &model_config(), 40);

    let mut held = Vec::new();
    for version in [2, 1, 2, 3] {
        rig.feed_params("pump-1", &params_record("pump-1", version, &params))
            .await;
        held.push(rig.known_version("pump-1"));
    }
    assert_eq!(held, vec![Some(2), Some(2), Some(2), Some(3)]);

    rig.feed_params("fan-2", &params_record("fan-2", 1, &params))
        .await;
    assert_eq!(
        rig.known_version("fan-2"),
        Some(1),
        "versions are per device"
    );
    assert_eq!(rig.known_version("pump-1"), Some(3));
    assert_eq!(
        rig.metrics.params_received.get(),
        5,
        "ignored ones are counted too"
    );
}

#[tokio::test]
async fn the_params_reader_keeps_what_the_envelope_says_and_the_partition() {
    let mut rig = Rig::new(ScorerConfig::default());
    let params = train(&mut Series::new(20.0, 7), &model_config(), 40);
    rig.feed_params_at(3, "pump-1", &params_record("pump-1", 4, &params))
        .await;

    let held = rig.params_reader.params.read()[&device("pump-1")]
        .get("production")
        .unwrap()
        .clone();
    assert_eq!(
        (
            held.version,
            held.trained_events,
            held.published_ms,
            held.partition
        ),
        (4, 44, T0_MS + 4, 3)
    );
    assert_eq!(
        held.params, params,
        "the bytes decode to what was published"
    );
}

#[tokio::test]
async fn the_params_reader_skips_incompatible_and_undecodable_params() {
    let mut rig = Rig::new(ScorerConfig::default());
    let params = train(&mut Series::new(20.0, 7), &model_config(), 40);
    rig.feed_params("pump-1", &params_record("pump-1", 1, &params))
        .await;

    // The model's bytes: "FP", the kind's number, the format (u16 LE), the body.
    let bytes = params.to_bytes();
    let mut other_kind = bytes.clone();
    other_kind[2] = 9;
    let mut other_format = bytes.clone();
    other_format[3] += 1;
    let truncated = bytes[..bytes.len() / 2].to_vec();
    let incompatible = [other_kind, other_format, truncated, b"junk".to_vec()];
    for (version, bytes) in (5..).zip(incompatible) {
        rig.feed_params("pump-1", &params_bytes_record("pump-1", version, bytes))
            .await;
    }
    // The JSON envelope of earlier releases, an envelope cut short, garbage.
    let json = serde_json::json!({"device_id": "pump-1", "version": 9, "params": {}});
    let short = &params_record("pump-1", 10, &params)[..20];
    for payload in [json.to_string().as_bytes(), short, b"{not json"] {
        rig.feed_params("pump-1", payload).await;
    }

    assert_eq!(
        rig.known_version("pump-1"),
        Some(1),
        "the compatible one stays"
    );
    assert_eq!(rig.skipped("scorer-params", "incompatible"), 4);
    assert_eq!(rig.skipped("scorer-params", "undecodable"), 3);
    assert_eq!(rig.metrics.params_received.get(), 1);

    rig.feed_params("pump-1", &params_record("pump-1", 2, &params))
        .await;
    assert_eq!(
        rig.known_version("pump-1"),
        Some(2),
        "skipped versions do not count as newer"
    );
}

#[tokio::test]
async fn a_tombstone_forgets_the_devices_params_and_markers_are_ignored() {
    let mut rig = Rig::new(ScorerConfig::default());
    let params = train(&mut Series::new(20.0, 7), &model_config(), 40);
    rig.feed_params("pump-1", &params_record("pump-1", 3, &params))
        .await;
    rig.feed_params("fan-2", &params_record("fan-2", 1, &params))
        .await;

    rig.feed_params("marker/scorer-1/0", b"").await;
    assert_eq!(
        (rig.known_version("pump-1"), rig.known_version("fan-2")),
        (Some(3), Some(1))
    );
    rig.feed_params("pump-1", b"").await;
    assert_eq!(
        (rig.known_version("pump-1"), rig.known_version("fan-2")),
        (None, Some(1)),
        "only the tombstoned device is forgotten"
    );
    assert_eq!(rig.skipped("scorer-params", "undecodable"), 0);

    rig.feed_params("pump-1", &params_record("pump-1", 1, &params))
        .await;
    assert_eq!(
        rig.known_version("pump-1"),
        Some(1),
        "a device back after its tombstone starts over"
    );
}

#[tokio::test]
async fn events_before_any_params_are_counted_as_no_params_then_scored_once_params_arrive() {
    let mut rig = Rig::new(ScorerConfig::default());
    let mut series = Series::new(20.0, 7);
    let params = train(&mut series, &model_config(), TRAINING_EVENTS);
    rig.feed_calm("pump-1", &mut series, 3).await;
    rig.feed_reading("pump-1", &series.spike()).await;

    assert_eq!(rig.skipped("scorer", "no_params"), 4);
    assert_eq!(rig.metrics.events_scored.get(), 0);
    assert_eq!(rig.alerts(), vec![], "nothing to score with: no alert");

    rig.feed_params("pump-1", &params_record("pump-1", 1, &params))
        .await;
    rig.feed_calm("pump-1", &mut series, 2).await;
    assert_eq!(
        rig.metrics.events_scored.get(),
        2,
        "parameters swap in live"
    );
    assert_eq!(rig.skipped("scorer", "no_params"), 4);
}

#[tokio::test]
async fn params_still_warming_up_raise_nothing() {
    let mut rig = Rig::new(ScorerConfig::default());
    let mut series = Series::new(20.0, 7);
    let warming_up = train(&mut series, &model_config(), 10);
    rig.feed_params("pump-1", &params_record("pump-1", 1, &warming_up))
        .await;

    rig.feed_calm("pump-1", &mut series, 3).await;
    rig.feed_reading("pump-1", &series.spike()).await;
    assert_eq!(rig.metrics.events_scored.get(), 4);
    assert_eq!(
        rig.alerts(),
        vec![],
        "no verdict before the model's warm-up"
    );
}

#[tokio::test]
async fn alerts_carry_the_version_of_the_newest_params() {
    let config = model_config();
    let mut series = Series::new(20.0, 7);
    let (mut rig, _) = rig_with_params("pump-1", &mut series, &config).await;
    let retrained = train(&mut Series::new(20.0, 7), &config, TRAINING_EVENTS + 20);
    rig.feed_params("pump-1", &params_record("pump-1", 2, &retrained))
        .await;
    let stale = train(&mut Series::new(20.0, 7), &config, 40);
    rig.feed_params("pump-1", &params_record("pump-1", 1, &stale))
        .await;

    series.skip(20); // readings version 2 learned from
    rig.feed_calm("pump-1", &mut series, 10).await;
    rig.feed_reading("pump-1", &series.spike()).await;
    let versions: Vec<u64> = rig.alerts().iter().map(|a| a.model_version).collect();
    assert_eq!(versions, vec![2]);
}

// ---- episodes -----------------------------------------------------------------------------

#[tokio::test]
async fn an_anomaly_raises_one_alert_with_its_reason_and_contributors() {
    let mut series = Series::new(20.0, 7);
    let (mut rig, params) = rig_with_params("pump-1", &mut series, &model_config()).await;
    let mut readings: Vec<TelemetryPayload> = (0..20).map(|_| series.calm()).collect();
    readings.push(series.spike()); // 120
    let scores = full_scores(&params, &readings);
    for reading in &readings[..20] {
        rig.feed_reading("pump-1", reading).await;
    }
    assert_eq!(rig.alerts(), vec![], "calm readings raise nothing");

    let spike = &readings[20];
    rig.feed_reading("pump-1", spike).await;
    let alerts = rig.alerts();
    assert_eq!(alerts.len(), 1);
    let raised = &alerts[0];
    assert_eq!(raised.alert_id, "pump-1:120");
    assert_eq!(raised.device_id, device("pump-1"));
    assert_eq!(raised.state, AlertState::Raised);
    assert_eq!((raised.event_seq, raised.event_ts), (120, spike.ts));
    assert_eq!((raised.threshold, raised.model_version), (0.65, 1));
    assert_eq!(raised.score, 1.0);
    assert_eq!(raised.reason, scores[20].reason());
    assert!(
        raised
            .reason
            .starts_with("temp = 35.274 is 15.8 standard deviations above the expected"),
        "{}",
        raised.reason
    );
    let names: Vec<&str> = raised
        .contributors
        .iter()
        .map(|c| c.metric.as_str())
        .collect();
    let expected: Vec<&str> = scores[20]
        .contributors
        .iter()
        .take(5)
        .map(|c| c.metric.as_str())
        .collect();
    assert_eq!(names, expected, "the model's contributors, largest first");
    assert_eq!(names[0], "temp");
    let temp = &raised.contributors[0];
    assert_eq!(
        (temp.value, temp.score),
        (spike.metrics["temp"], raised.score)
    );
    assert_eq!(temp.expected, scores[20].contributors[0].expected);
    assert!(temp.value - temp.expected > SPIKE, "{temp:?}");
    assert_eq!(rig.emitted("raised"), 1);
}

#[tokio::test]
async fn calm_events_close_the_episode_with_one_cleared_alert() {
    let mut series = Series::new(20.0, 7);
    let (mut rig, params) = rig_with_params("pump-1", &mut series, &model_config()).await;
    let mut readings: Vec<TelemetryPayload> = (0..20).map(|_| series.calm()).collect();
    readings.extend((0..3).map(|_| series.spike())); // 120..=122
    readings.extend((0..60).map(|_| series.calm())); // 123..=182
    let scores = model_scores(&params, &readings);
    assert_eq!(
        at_or_above(&readings, &scores, 0.325),
        vec![120, 121, 122],
        "premise: {scores:.2?}"
    );

    for reading in &readings[..52] {
        rig.feed_reading("pump-1", reading).await;
    }
    let raised = ("pump-1:120", AlertState::Raised, 120);
    assert_eq!(
        rig.story(),
        story(&[raised]),
        "repeats of the same size and 29 calm: still open"
    );

    rig.feed_reading("pump-1", &readings[52]).await;
    let cleared = ("pump-1:120", AlertState::Cleared, 152);
    assert_eq!(rig.story(), story(&[raised, cleared]));
    let last = rig.alerts().pop().expect("cleared");
    assert_eq!(last.reason, "back to normal");
    assert_eq!(last.score, scores[52]);

    for reading in &readings[53..] {
        rig.feed_reading("pump-1", reading).await;
    }
    assert_eq!(
        rig.story(),
        story(&[raised, cleared]),
        "calm goes on quietly"
    );
    assert_eq!(
        (
            rig.emitted("raised"),
            rig.emitted("updated"),
            rig.emitted("cleared")
        ),
        (1, 0, 1)
    );
}

/// Every anomalous event scores above the threshold: only the handler's episode keeps
/// the repeats from raising again.
#[tokio::test]
async fn repeated_anomalies_stay_one_episode_until_enough_calm_events_in_a_row() {
    let mut series = Series::new(20.0, 7);
    let (mut rig, params) = rig_with_params("pump-1", &mut series, &model_config()).await;
    let mut readings: Vec<TelemetryPayload> = (0..20).map(|_| series.calm()).collect();
    readings.extend((0..3).map(|_| series.spike())); // 120..=122
    readings.extend((0..29).map(|_| series.calm())); // 123..=151: too few to clear
    readings.push(series.spike()); // 152: the calm run starts over
    readings.extend((0..30).map(|_| series.calm())); // 153..=182: cleared at 182
    readings.push(series.spike()); // 183: a new episode
    let scores = model_scores(&params, &readings);
    assert_eq!(
        at_or_above(&readings, &scores, 0.65),
        vec![120, 121, 122, 152, 183],
        "premise: {scores:.2?}"
    );
    assert!(
        scores.iter().all(|s| !(0.325..0.65).contains(s)),
        "premise: {scores:.2?}"
    );

    for reading in &readings {
        rig.feed_reading("pump-1", reading).await;
    }
    let expected = story(&[
        ("pump-1:120", AlertState::Raised, 120),
        ("pump-1:120", AlertState::Cleared, 182),
        ("pump-1:183", AlertState::Raised, 183),
    ]);
    assert_eq!(rig.story(), expected);
}

/// The readings of [`a_bigger_fault_while_open_updates_the_alert_once`]: 20 calm, then
/// `temp` lifted by 4.5 (120, 125; an anomaly well below a score of 1), by [`SPIKE`] (130,
/// 135) with 4 calm readings after each.
fn small_then_big_faults(series: &mut Series) -> Vec<TelemetryPayload> {
    let mut readings: Vec<TelemetryPayload> = (0..20).map(|_| series.calm()).collect();
    for lift in [4.5, 4.5, SPIKE, SPIKE] {
        readings.push(series.lift("temp", lift));
        readings.extend((0..4).map(|_| series.calm()));
    }
    readings
}

#[tokio::test]
async fn a_bigger_fault_while_open_updates_the_alert_once() {
    let mut series = Series::new(20.0, 7);
    let (mut rig, params) = rig_with_params("pump-1", &mut series, &model_config()).await;
    let readings = small_then_big_faults(&mut series);
    let scores = full_scores(&params, &readings);
    let values: Vec<f64> = scores.iter().map(|score| score.value).collect();
    assert_eq!(
        at_or_above(&readings, &values, 0.65),
        vec![120, 125, 130, 135],
        "premise: {values:.3?}"
    );
    let (first, repeat, bigger, again) = (values[20], values[25], values[30], values[35]);
    assert!(
        repeat < 1.2 * first && bigger >= 1.2 * first && again < 1.2 * bigger,
        "premise: {first} {repeat} {bigger} {again}"
    );

    for reading in &readings {
        rig.feed_reading("pump-1", reading).await;
    }
    assert_eq!(
        rig.story(),
        story(&[
            ("pump-1:120", AlertState::Raised, 120),
            ("pump-1:120", AlertState::Updated, 130),
        ]),
        "a repeat of the same size (125, 135) is no news"
    );
    let alerts = rig.alerts();
    let (raised, updated) = (&alerts[0], &alerts[1]);
    assert_eq!(raised.score, first);
    assert_eq!(raised.reason, scores[20].reason());
    assert_eq!((updated.score, updated.threshold), (bigger, 0.65));
    assert_eq!(updated.reason, scores[30].reason());
    assert_ne!(updated.reason, raised.reason);
    assert!(
        updated
            .reason
            .starts_with("temp = 36.514 is 15.1 standard deviations above"),
        "{}",
        updated.reason
    );
    assert_eq!(updated.contributors[0].value, readings[30].metrics["temp"]);
    assert_eq!(
        (updated.event_ts, updated.model_version),
        (readings[30].ts, 1)
    );
    assert_eq!((rig.emitted("raised"), rig.emitted("updated")), (1, 1));
}

#[tokio::test]
async fn another_metric_breaking_while_open_updates_the_alert_once() {
    let mut series = Series::new(20.0, 7);
    let (mut rig, params) = rig_with_params("pump-1", &mut series, &model_config()).await;
    let mut readings: Vec<TelemetryPayload> = (0..20).map(|_| series.calm()).collect();
    for (metric, lift) in [
        ("temp", SPIKE),
        ("vibration", 0.5),
        ("temp", SPIKE),
        ("vibration", 0.5),
        ("temp", SPIKE),
    ] {
        readings.push(series.lift(metric, lift)); // 120, 122, 124, 126, 128
        readings.push(series.calm());
    }
    let scores = full_scores(&params, &readings);
    let values: Vec<f64> = scores.iter().map(|score| score.value).collect();
    assert_eq!(
        at_or_above(&readings, &values, 0.65),
        vec![120, 122, 124, 126, 128],
        "premise: {values:.3?}"
    );
    let causes: Vec<(f64, String)> = [20, 22, 24, 26, 28]
        .iter()
        .map(|&i| {
            (
                values[i],
                fleetwatch_models::episode::cause_label(&scores[i]),
            )
        })
        .collect();
    let temp = (1.0, "temp:deviation".to_owned());
    let vibration = (1.0, "vibration:deviation".to_owned());
    assert_eq!(
        causes,
        vec![
            temp.clone(),
            vibration.clone(),
            temp.clone(),
            vibration,
            temp
        ],
        "premise: every fault scores 1, none is bigger than the first"
    );

    for reading in &readings {
        rig.feed_reading("pump-1", reading).await;
    }
    assert_eq!(
        rig.story(),
        story(&[
            ("pump-1:120", AlertState::Raised, 120),
            ("pump-1:120", AlertState::Updated, 122),
        ]),
        "each metric's fault is news once"
    );
    let alerts = rig.alerts();
    let (raised, updated) = (&alerts[0], &alerts[1]);
    assert!(raised.reason.starts_with("temp = "), "{}", raised.reason);
    assert_eq!(updated.reason, scores[22].reason());
    assert!(
        updated
            .reason
            .starts_with("vibration = 1.531 is 17.9 standard deviations above"),
        "{}",
        updated.reason
    );
    assert_eq!(
        (updated.score, updated.contributors[0].metric.as_str()),
        (1.0, "vibration")
    );
    assert_eq!(rig.emitted("updated"), 1);
}

#[tokio::test]
async fn a_configured_escalate_ratio_replaces_the_models() {
    let config = ScorerConfig {
        escalate_ratio: Some(2.0),
        ..ScorerConfig::default()
    };
    let mut rig = Rig::new(config);
    let mut series = Series::new(20.0, 7);
    let params = train(&mut series, &model_config(), TRAINING_EVENTS);
    rig.feed_params("pump-1", &params_record("pump-1", 1, &params))
        .await;
    for reading in small_then_big_faults(&mut series) {
        rig.feed_reading("pump-1", &reading).await;
    }
    assert_eq!(
        rig.story(),
        story(&[("pump-1:120", AlertState::Raised, 120)]),
        "1.0 is less than twice the first score"
    );
}

#[test]
fn the_scorer_config_overrides_the_recommended_episode_rules() {
    let rules = |config: ScorerConfig| {
        let rules = config.rules(0.5);
        (
            rules.threshold,
            rules.clear_below,
            rules.clear_after_events,
            rules.escalate_ratio,
        )
    };
    assert_eq!(
        ScorerConfig::default().rules(0.5),
        EpisodeRules::recommended(0.5)
    );
    assert_eq!(rules(ScorerConfig::default()), (0.5, 0.25, 30, 1.2));
    let threshold = ScorerConfig {
        threshold: Some(0.75),
        ..ScorerConfig::default()
    };
    assert_eq!(
        rules(threshold),
        (0.75, 0.375, 30, 1.2),
        "calm: half the configured threshold"
    );
    let clear_ratio = ScorerConfig {
        clear_ratio: Some(0.25),
        ..ScorerConfig::default()
    };
    assert_eq!(rules(clear_ratio), (0.5, 0.125, 30, 1.2));
    let all = ScorerConfig {
        threshold: Some(0.75),
        clear_after_events: Some(3),
        clear_ratio: Some(0.5),
        escalate_ratio: Some(1.5),
        ..ScorerConfig::default()
    };
    assert_eq!(rules(all), (0.75, 0.375, 3, 1.5));

    let parsed: ScorerConfig =
        serde_json::from_str(r#"{"escalate_ratio": 1.5}"#).expect("valid settings");
    assert_eq!(
        rules(parsed),
        (0.5, 0.25, 30, 1.5),
        "unset fields recommended"
    );
}

#[tokio::test]
async fn a_configured_threshold_replaces_the_models() {
    let config = ScorerConfig {
        threshold: Some(0.9),
        clear_after_events: Some(2),
        clear_ratio: Some(0.5),
        escalate_ratio: None,
        ..ScorerConfig::default()
    };
    let mut rig = Rig::new(config);
    let mut series = Series::new(20.0, 7);
    let params = train(&mut series, &model_config(), TRAINING_EVENTS);
    rig.feed_params("pump-1", &params_record("pump-1", 1, &params))
        .await;
    rig.feed_calm("pump-1", &mut series, 20).await;
    rig.feed_reading("pump-1", &series.spike()).await;
    rig.feed_calm("pump-1", &mut series, 2).await;

    let alerts = rig.alerts();
    let states: Vec<(AlertState, u64, f64)> = (alerts.iter())
        .map(|alert| (alert.state, alert.event_seq, alert.threshold))
        .collect();
    assert_eq!(
        states,
        vec![
            (AlertState::Raised, 120, 0.9),
            (AlertState::Cleared, 122, 0.9)
        ]
    );
}

// ---- sequence numbers, devices, other records ---------------------------------------------

#[tokio::test]
async fn a_redelivered_event_is_skipped_and_raises_no_second_alert() {
    let mut series = Series::new(20.0, 7);
    let (mut rig, _) = rig_with_params("pump-1", &mut series, &model_config()).await;
    let calm: Vec<TelemetryPayload> = (0..10).map(|_| series.calm()).collect();
    for reading in &calm {
        rig.feed_reading("pump-1", reading).await;
    }
    let spike = series.spike();
    rig.feed_reading("pump-1", &spike).await;
    rig.feed_reading("pump-1", &spike).await;
    rig.feed_reading("pump-1", &calm[5]).await;

    assert_eq!(rig.skipped("scorer", "duplicate"), 2);
    assert_eq!(rig.metrics.events_scored.get(), 11);
    assert_eq!(
        rig.story(),
        story(&[("pump-1:110", AlertState::Raised, 110)])
    );
}

/// The sequence tracker keeps a window of recent numbers: a late event it has not seen
/// is new, so it is scored (only numbers seen before, or far behind, are skipped).
#[tokio::test]
async fn a_late_event_not_seen_before_is_scored() {
    let mut series = Series::new(20.0, 7);
    let (mut rig, _) = rig_with_params("pump-1", &mut series, &model_config()).await;
    let (earlier, later) = (series.calm(), series.calm());
    rig.feed_reading("pump-1", &later).await;
    rig.feed_reading("pump-1", &earlier).await;

    assert_eq!(rig.skipped("scorer", "duplicate"), 0);
    assert_eq!(rig.metrics.events_scored.get(), 2);
    assert_eq!(rig.alerts(), vec![]);
}

#[tokio::test]
async fn an_unknown_device_is_not_scored_with_another_devices_params() {
    let mut pump = Series::new(20.0, 7);
    let (mut rig, _) = rig_with_params("pump-1", &mut pump, &model_config()).await;
    let mut fan = Series::new(80.0, 11);
    rig.feed_calm("fan-2", &mut fan, 3).await;
    rig.feed_reading("fan-2", &fan.spike()).await;
    rig.feed_calm("pump-1", &mut pump, 2).await;

    assert_eq!(rig.skipped("scorer", "no_params"), 4);
    assert_eq!(rig.metrics.events_scored.get(), 2, "only pump-1's");
    assert_eq!(rig.alerts(), vec![]);
}

#[tokio::test]
async fn each_device_has_its_own_episode() {
    let config = model_config();
    let mut pump = Series::new(20.0, 7);
    let (mut rig, _) = rig_with_params("pump-1", &mut pump, &config).await;
    let mut fan = Series::new(80.0, 11);
    let fan_params = train(&mut fan, &config, TRAINING_EVENTS);
    rig.feed_params("fan-2", &params_record("fan-2", 1, &fan_params))
        .await;
    for _ in 0..20 {
        rig.feed_reading("pump-1", &pump.calm()).await;
        rig.feed_reading("fan-2", &fan.calm()).await;
    }
    rig.feed_reading("pump-1", &pump.spike()).await; // pump 120
    rig.feed_reading("fan-2", &fan.calm()).await; // fan 120
    rig.feed_reading("fan-2", &fan.spike()).await; // fan 121
    rig.feed_calm("pump-1", &mut pump, 30).await; // pump 121..=150

    let expected = story(&[
        ("pump-1:120", AlertState::Raised, 120),
        ("fan-2:121", AlertState::Raised, 121),
        ("pump-1:120", AlertState::Cleared, 150),
    ]);
    assert_eq!(rig.story(), expected, "fan-2's episode stays open");
}

#[tokio::test]
async fn state_status_and_undecodable_records_are_skipped_without_failing() {
    let mut series = Series::new(20.0, 7);
    let (mut rig, _) = rig_with_params("pump-1", &mut series, &model_config()).await;
    rig.feed("pump-1", &state_event("pump-1")).await;
    rig.feed("pump-1", &status_event("pump-1")).await;
    rig.feed("pump-1", b"{not json").await;
    rig.feed("pump-1", b"").await;

    assert_eq!(
        rig.skipped("scorer", "undecodable"),
        2,
        "state and status are not counted"
    );
    assert_eq!(rig.skipped("scorer", "no_params"), 0);
    assert_eq!(rig.metrics.events_scored.get(), 0);
    rig.feed_calm("pump-1", &mut series, 1).await;
    assert_eq!(
        rig.metrics.events_scored.get(),
        1,
        "the device is still scored"
    );
    assert_eq!(rig.alerts(), vec![]);
}

// ---- models in shadow, promotion, rollback ------------------------------------------------

/// A binary `iot.model-params` record of model `model_id` (key: device and model).
fn model_record(device_id: &str, model_id: &str, version: u64, params: &Params) -> Vec<u8> {
    let envelope = ParamsEnvelope {
        damping: Vec::new(),
        device_id: device(device_id),
        model_id: model_id.into(),
        version,
        trained_events: 40 + version,
        published_ms: T0_MS + version as i64,
        params: params.to_bytes(),
    };
    envelope.encode()
}

impl Rig {
    /// Apply one registry change at the registry's next offset.
    fn registry_change(&self, body: fleetwatch_protocol::ModelEventBody) {
        let offset = self
            .registry
            .read(|r| r.describe()["journal"].as_array().map_or(0, Vec::len));
        let event = fleetwatch_protocol::ModelEvent {
            at_ms: T0_MS,
            by: "ops".into(),
            body,
        };
        assert!(self.registry.apply_at(offset as i64, &event), "applied");
    }

    /// (alert id, state, model, reason) of every alert on `topic`.
    fn alerts_on(&self, topic: &str) -> Vec<(String, AlertState, Option<String>, String)> {
        (self.log.json::<Alert>(topic).into_iter())
            .map(|a| (a.alert_id, a.state, a.model_id, a.reason))
            .collect()
    }
}

fn short(
    alerts: &[(String, AlertState, Option<String>, String)],
) -> Vec<(&str, AlertState, Option<&str>)> {
    (alerts.iter())
        .map(|(id, state, model, _)| (id.as_str(), *state, model.as_deref()))
        .collect()
}

#[tokio::test]
async fn a_shadow_models_alerts_never_reach_customers_until_promoted_and_back_after_rollback() {
    use fleetwatch_protocol::{ModelEventBody, ShadowScope, MODEL_PROMOTED};
    let mut series = Series::new(20.0, 7);
    let (mut rig, params) = rig_with_params("pump-1", &mut series, &model_config()).await;
    rig.registry_change(ModelEventBody::Created {
        model_id: "cand-1".into(),
        config: serde_json::json!({}),
    });
    rig.registry_change(ModelEventBody::ShadowStarted {
        model_id: "cand-1".into(),
        scope: ShadowScope::default(),
    });
    rig.feed_params(
        "pump-1/cand-1",
        &model_record("pump-1", "cand-1", 1, &params),
    )
    .await;
    rig.feed_calm("pump-1", &mut series, 20).await;
    rig.feed_reading("pump-1", &series.spike()).await; // 120
    let (customers, shadow) = (rig.topics.alerts(), rig.topics.shadow_alerts());
    assert_eq!(
        short(&rig.alerts_on(&customers)),
        [("pump-1:120", AlertState::Raised, None)]
    );
    assert_eq!(
        short(&rig.alerts_on(&shadow)),
        [("pump-1:120", AlertState::Raised, Some("cand-1"))],
        "the candidate's alert is recorded apart"
    );
    // Promoted: production's open episode is closed for customers; the candidate decides
    // from a closed episode, so its next crossing raises.
    rig.registry_change(ModelEventBody::Promoted {
        model_id: "cand-1".into(),
        tenant: None,
    });
    rig.feed_calm("pump-1", &mut series, 1).await; // 121
    let customer = rig.alerts_on(&customers);
    assert_eq!(customer.len(), 2);
    assert_eq!(customer[1].0, "pump-1:120");
    assert_eq!(
        (customer[1].1, customer[1].3.as_str()),
        (AlertState::Cleared, MODEL_PROMOTED)
    );
    rig.feed_calm("pump-1", &mut series, 40).await; // 122..=161
    rig.feed_reading("pump-1", &series.spike()).await; // 162
    let customer = rig.alerts_on(&customers);
    assert_eq!(
        short(&customer[2..]),
        [("pump-1:162", AlertState::Raised, Some("cand-1"))],
        "the promoted model decides"
    );
    let shadow_alerts = rig.alerts_on(&shadow);
    let shadow_now = short(&shadow_alerts);
    assert!(
        shadow_now.contains(&("pump-1:162", AlertState::Raised, Some("production"))),
        "production runs in shadow now: {shadow_now:?}"
    );
    // Rolled back: the candidate's open episode closes the same way.
    rig.registry_change(ModelEventBody::RolledBack { tenant: None });
    rig.feed_calm("pump-1", &mut series, 1).await;
    let customer = rig.alerts_on(&customers);
    assert_eq!(
        (
            customer[3].0.as_str(),
            customer[3].1,
            customer[3].3.as_str()
        ),
        ("pump-1:162", AlertState::Cleared, MODEL_PROMOTED)
    );
    let decides = |model: &str| {
        (rig.metrics.model_alerts)
            .with_label_values(&[model, "decides", "raised"])
            .get()
    };
    assert_eq!((decides("production"), decides("cand-1")), (1, 1));
}

#[tokio::test]
async fn a_device_without_the_promoted_models_params_keeps_its_previous_model_visibly() {
    use fleetwatch_protocol::ModelEventBody;
    let mut series = Series::new(20.0, 7);
    let (mut rig, params) = rig_with_params("pump-1", &mut series, &model_config()).await;
    rig.registry_change(ModelEventBody::Created {
        model_id: "cand-1".into(),
        config: serde_json::json!({}),
    });
    rig.registry_change(ModelEventBody::Promoted {
        model_id: "cand-1".into(),
        tenant: None,
    });
    rig.feed_calm("pump-1", &mut series, 20).await;
    assert_eq!(rig.metrics.scorer_awaiting_params.get(), 1);
    rig.feed_reading("pump-1", &series.spike()).await; // 120
    assert_eq!(
        short(&rig.alerts_on(&rig.topics.alerts())),
        [("pump-1:120", AlertState::Raised, None)],
        "production still decides"
    );
    rig.feed_params(
        "pump-1/cand-1",
        &model_record("pump-1", "cand-1", 1, &params),
    )
    .await;
    rig.feed_calm("pump-1", &mut series, 1).await;
    assert_eq!(rig.metrics.scorer_awaiting_params.get(), 0);
    let customer = rig.alerts_on(&rig.topics.alerts());
    assert_eq!(
        (customer[1].1, customer[1].3.as_str()),
        (AlertState::Cleared, fleetwatch_protocol::MODEL_PROMOTED)
    );
}
