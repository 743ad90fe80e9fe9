//! Unit tests of the scorer role's handlers on in-memory records: no broker needed.
//!
//! Parameters are real: a production model trained on a deterministic synthetic series
//! (a sine plus seeded noise), snapshotted and wrapped the way the trainer publishes it.

use std::collections::BTreeMap;

use fleetwatch_models::production;
use fleetwatch_models::Trainer;
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
            metrics: BTreeMap::from([
                ("temp".to_owned(), temp),
                ("vibration".to_owned(), vibration),
            ]),
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
        let mut reading = self.calm();
        *reading.metrics.get_mut("temp").expect("temp") += SPIKE;
        reading
    }
}

/// The production model's settings; `rest_events: 0` lets every anomalous event score
/// above the threshold (by default the model holds repeats just below it).
fn model_config(rest_events: u32) -> production::Config {
    production::Config {
        rest_events,
        ..production::Config::default()
    }
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
    let envelope = ParamsEnvelope {
        device_id: device(device_id),
        version,
        trained_events: params.metrics.values().map(|m| m.n).max().unwrap_or(0),
        published_ms: T0_MS,
        params: params.clone(),
    };
    serde_json::to_vec(&envelope).expect("wire types serialize")
}

/// What the model alone scores for `readings` from a fresh scorer state: to check a
/// test's premise (the handler's scorer sees the same events in the same order).
fn model_scores(params: &Params, readings: &[TelemetryPayload]) -> Vec<f64> {
    let mut scorer = production::scorer();
    readings
        .iter()
        .map(|reading| {
            let observation = Observation {
                ts_ms: reading.ts,
                metrics: &reading.metrics,
            };
            scorer.score(params, &observation).value
        })
        .collect()
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
        let params_reader = ParamsHandler {
            params: params.clone(),
            metrics: metrics.clone(),
        };
        let recommended = production::Config::default().threshold;
        let producer = Producer::in_memory(&log, metrics.clone());
        let scoring = ScoringHandler::new(
            &config,
            recommended,
            &topics,
            producer,
            params,
            metrics.clone(),
        );
        Self {
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

    /// Hand one `iot.model-params` record to the parameters reader; it must not fail.
    async fn feed_params(&mut self, key: &str, payload: &[u8]) {
        let topic = self.topics.model_params();
        let record = Record::new(&topic, key, payload).at(0, self.offset());
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

/// A scorer with the default settings (threshold: the model's 0.65, clear after 5 events
/// below 0.325) holding `device_id`'s parameters, version 1, trained with `config` on the
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
    let params = train(&mut Series::new(20.0, 7), &model_config(75), 40);

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
async fn the_params_reader_skips_incompatible_and_undecodable_params() {
    let mut rig = Rig::new(ScorerConfig::default());
    let params = train(&mut Series::new(20.0, 7), &model_config(75), 40);
    rig.feed_params("pump-1", &params_record("pump-1", 1, &params))
        .await;

    let other_kind = Params {
        kind: "ewma-baseline".to_owned(),
        ..params.clone()
    };
    let other_format = Params {
        format: params.format + 1,
        ..params.clone()
    };
    rig.feed_params("pump-1", &params_record("pump-1", 5, &other_kind))
        .await;
    rig.feed_params("pump-1", &params_record("pump-1", 6, &other_format))
        .await;
    rig.feed_params("pump-1", b"{not json").await;
    rig.feed_params("pump-1", b"").await;

    assert_eq!(
        rig.known_version("pump-1"),
        Some(1),
        "the compatible one stays"
    );
    assert_eq!(rig.skipped("scorer-params", "incompatible"), 2);
    assert_eq!(rig.skipped("scorer-params", "undecodable"), 2);
    assert_eq!(rig.metrics.params_received.get(), 1);
}

#[tokio::test]
async fn events_before_any_params_are_counted_as_no_params_then_scored_once_params_arrive() {
    let mut rig = Rig::new(ScorerConfig::default());
    let mut series = Series::new(20.0, 7);
    let params = train(&mut series, &model_config(75), TRAINING_EVENTS);
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
    let warming_up = train(&mut series, &model_config(75), 10);
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
    let config = model_config(75);
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
    let (mut rig, _) = rig_with_params("pump-1", &mut series, &model_config(75)).await;
    rig.feed_calm("pump-1", &mut series, 20).await;
    assert_eq!(rig.alerts(), vec![], "calm readings raise nothing");

    let spike = series.spike();
    rig.feed_reading("pump-1", &spike).await;
    let alerts = rig.alerts();
    assert_eq!(alerts.len(), 1);
    let raised = &alerts[0];
    assert_eq!(raised.alert_id, format!("pump-1:{}", spike.seq));
    assert_eq!(raised.device_id, device("pump-1"));
    assert_eq!(raised.state, AlertState::Raised);
    assert_eq!((raised.event_seq, raised.event_ts), (spike.seq, spike.ts));
    assert_eq!((raised.threshold, raised.model_version), (0.65, 1));
    assert!((0.65..=1.0).contains(&raised.score), "{}", raised.score);
    assert!(
        raised.reason.starts_with("temp = ") && raised.reason.contains("above the expected"),
        "{}",
        raised.reason
    );
    let names: Vec<&str> = raised
        .contributors
        .iter()
        .map(|c| c.metric.as_str())
        .collect();
    assert_eq!(
        names,
        vec!["temp", "vibration"],
        "largest contribution first"
    );
    let temp = &raised.contributors[0];
    assert_eq!(
        (temp.value, temp.score),
        (spike.metrics["temp"], raised.score)
    );
    assert!(temp.value - temp.expected > SPIKE - 5.0, "{temp:?}");
    assert_eq!(rig.emitted("raised"), 1);
}

#[tokio::test]
async fn calm_events_close_the_episode_with_one_cleared_alert() {
    let mut series = Series::new(20.0, 7);
    let (mut rig, _) = rig_with_params("pump-1", &mut series, &model_config(75)).await;
    rig.feed_calm("pump-1", &mut series, 20).await;
    for _ in 0..3 {
        rig.feed_reading("pump-1", &series.spike()).await;
    }
    rig.feed_calm("pump-1", &mut series, 4).await;
    let raised = ("pump-1:120", AlertState::Raised, 120);
    assert_eq!(
        rig.story(),
        story(&[raised]),
        "repeats and 4 calm: still open"
    );

    rig.feed_calm("pump-1", &mut series, 1).await;
    let cleared = ("pump-1:120", AlertState::Cleared, 127);
    assert_eq!(rig.story(), story(&[raised, cleared]));
    let last = rig.alerts().pop().expect("cleared");
    assert_eq!(last.reason, "back to normal");
    assert!(last.score < 0.65 * 0.5, "{}", last.score);

    rig.feed_calm("pump-1", &mut series, 30).await;
    assert_eq!(
        rig.story(),
        story(&[raised, cleared]),
        "calm goes on quietly"
    );
    assert_eq!((rig.emitted("raised"), rig.emitted("cleared")), (1, 1));
}

/// With the model's rest period off, every anomalous event scores above the threshold:
/// only the handler's episode keeps the repeats from raising again.
#[tokio::test]
async fn repeated_anomalies_stay_one_episode_until_enough_calm_events_in_a_row() {
    let mut series = Series::new(20.0, 7);
    let (mut rig, params) = rig_with_params("pump-1", &mut series, &model_config(0)).await;
    let mut readings: Vec<TelemetryPayload> = (0..20).map(|_| series.calm()).collect();
    readings.extend((0..3).map(|_| series.spike())); // 120..=122
    readings.extend((0..2).map(|_| series.calm())); // 123, 124: too few to clear
    readings.push(series.spike()); // 125: the calm run starts over
    readings.extend((0..5).map(|_| series.calm())); // 126..=130: cleared at 130
    readings.push(series.spike()); // 131: a new episode
    let scores = model_scores(&params, &readings);
    let anomalous: Vec<u64> = (readings.iter().zip(&scores))
        .filter(|(_, &score)| score >= 0.65)
        .map(|(reading, _)| reading.seq)
        .collect();
    assert_eq!(
        anomalous,
        vec![120, 121, 122, 125, 131],
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
        ("pump-1:120", AlertState::Cleared, 130),
        ("pump-1:131", AlertState::Raised, 131),
    ]);
    assert_eq!(rig.story(), expected);
}

#[tokio::test]
async fn a_configured_threshold_replaces_the_models() {
    let config = ScorerConfig {
        threshold: Some(0.9),
        clear_after_events: 2,
        clear_ratio: 0.5,
    };
    let mut rig = Rig::new(config);
    let mut series = Series::new(20.0, 7);
    let params = train(&mut series, &model_config(75), TRAINING_EVENTS);
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
    let (mut rig, _) = rig_with_params("pump-1", &mut series, &model_config(75)).await;
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
    let (mut rig, _) = rig_with_params("pump-1", &mut series, &model_config(75)).await;
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
    let (mut rig, _) = rig_with_params("pump-1", &mut pump, &model_config(75)).await;
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
    let config = model_config(75);
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
    rig.feed_calm("pump-1", &mut pump, 5).await; // pump 121..=125

    let expected = story(&[
        ("pump-1:120", AlertState::Raised, 120),
        ("fan-2:121", AlertState::Raised, 121),
        ("pump-1:120", AlertState::Cleared, 125),
    ]);
    assert_eq!(rig.story(), expected, "fan-2's episode stays open");
}

#[tokio::test]
async fn state_status_and_undecodable_records_are_skipped_without_failing() {
    let mut series = Series::new(20.0, 7);
    let (mut rig, _) = rig_with_params("pump-1", &mut series, &model_config(75)).await;
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
