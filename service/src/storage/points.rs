//! What is stored: each consumed record becomes points of one measurement. Series are
//! named so that a replayed record gives the same series and timestamp again (the store
//! overwrites instead of adding a copy; VictoriaMetrics needs
//! `-dedup.minScrapeInterval=1ms` for that, docs/storage.md).
//!
//! VictoriaMetrics names a series `<measurement>_<field>`: `fleetwatch_telemetry_temperature
//! {device="d1"}`, `fleetwatch_anomaly_score`, `fleetwatch_metric_score_temperature`,
//! `fleetwatch_alert_score{state="raised"}`, `fleetwatch_connectivity_change{to="offline"}`,
//! `fleetwatch_command_step{state="expired"}`.

use fleetwatch_protocol::{Alert, AlertState, KafkaTopics, ScoreRecord, ScoresRecord, Topic};
use influxdb2::models::data_point::DataPointError;
use influxdb2::models::DataPoint;

use crate::devices::Twin;
use crate::kafka::{decode_model_input, decode_record, ModelInput, Record};
use crate::metrics::Metrics;

/// One point: a measurement, its tags, its numeric fields, the time (ms).
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub measurement: &'static str,
    pub tags: Vec<(&'static str, String)>,
    pub fields: Vec<(String, f64)>,
    pub ts_ms: i64,
}

/// The measurements, as the store and the metrics name them.
pub const TELEMETRY: &str = "fleetwatch_telemetry";
pub const ANOMALY: &str = "fleetwatch_anomaly";
pub const METRIC_SCORE: &str = "fleetwatch_metric_score";
pub const ALERT: &str = "fleetwatch_alert";
pub const CONNECTIVITY: &str = "fleetwatch_connectivity";
pub const COMMAND: &str = "fleetwatch_command";

impl Point {
    fn new(measurement: &'static str, device: &str, ts_ms: i64) -> Self {
        Self {
            measurement,
            tags: vec![("device", device.to_owned())],
            fields: Vec::new(),
            ts_ms,
        }
    }

    fn tag(mut self, name: &'static str, value: &str) -> Self {
        self.tags.push((name, value.to_owned()));
        self
    }

    fn field(mut self, name: &str, value: f64) -> Self {
        self.fields.push((name.to_owned(), value));
        self
    }

    /// The client's point, timestamp in ms. Fails for a point without fields, or with a
    /// non-finite value (line protocol has no NaN).
    pub fn to_data_point(&self) -> Result<DataPoint, DataPointError> {
        let mut builder = DataPoint::builder(self.measurement).timestamp(self.ts_ms);
        for (name, value) in &self.tags {
            builder = builder.tag(*name, value.as_str());
        }
        for (name, value) in self.fields.iter().filter(|(_, value)| value.is_finite()) {
            builder = builder.field(name.as_str(), *value);
        }
        builder.build()
    }
}

/// The topic names the role reads, to tell records apart.
pub struct StoredTopics {
    telemetry: String,
    scores: String,
    alerts: String,
    device_state: String,
}

impl StoredTopics {
    pub fn new(topics: &KafkaTopics) -> Self {
        Self {
            telemetry: topics.of(Topic::Telemetry),
            scores: topics.of(Topic::Scores),
            alerts: topics.of(Topic::Alerts),
            device_state: topics.of(Topic::DeviceState),
        }
    }

    /// The points of `record` (none for records that carry nothing to store: a state
    /// message, a tombstone, an undecodable record, which is counted).
    pub fn points(&self, record: &Record<'_>, metrics: &Metrics, out: &mut Vec<Point>) {
        if record.payload.is_empty() {
            return;
        }
        if record.topic == self.telemetry {
            if let Some(ModelInput::Reading {
                device_id,
                telemetry,
                ..
            }) = decode_model_input(record, "storage", metrics)
            {
                let mut point = Point::new(TELEMETRY, device_id.as_str(), telemetry.ts);
                for (metric, value) in &telemetry.metrics {
                    point = point.field(metric, *value);
                }
                out.push(point);
            }
        } else if record.topic == self.scores {
            if let Some(scores) = decode_record::<ScoresRecord>(record, "storage", metrics) {
                for score in scores.into_scores() {
                    score_points(&score, out);
                }
            }
        } else if record.topic == self.alerts {
            if let Some(alert) = decode_record::<Alert>(record, "storage", metrics) {
                out.push(alert_point(&alert));
            }
        } else if record.topic == self.device_state {
            if let Some(twin) = decode_record::<Twin>(record, "storage", metrics) {
                twin_points(&twin, out);
            }
        }
    }
}

fn score_points(score: &ScoreRecord, out: &mut Vec<Point>) {
    let device = score.device_id.as_str();
    out.push(Point::new(ANOMALY, device, score.ts).field("score", score.score));
    let mut parts = Point::new(METRIC_SCORE, device, score.ts);
    for (metric, value) in &score.metrics {
        parts = parts.field(metric, *value);
    }
    if !parts.fields.is_empty() {
        out.push(parts);
    }
}

fn alert_point(alert: &Alert) -> Point {
    let state = match alert.state {
        AlertState::Raised => "raised",
        AlertState::Updated => "updated",
        AlertState::Cleared => "cleared",
    };
    Point::new(ALERT, alert.device_id.as_str(), alert.event_ts)
        .tag("state", state)
        .field("score", alert.score)
        .field("threshold", alert.threshold)
}

/// Every connectivity change and command step the twin remembers. A twin record repeats
/// the earlier ones: they come out as the same points again, which the store overwrites.
fn twin_points(twin: &Twin, out: &mut Vec<Point>) {
    let device = twin.device_id.as_str();
    for change in twin.connectivity_history.iter() {
        out.push(
            Point::new(CONNECTIVITY, device, change.at_ms)
                .tag("to", change.to.as_str())
                .tag("cause", change.cause.as_str())
                .field("change", 1.0),
        );
    }
    for command in twin.commands() {
        for step in &command.history {
            out.push(
                Point::new(COMMAND, device, step.at_ms)
                    .tag("command", &command.name)
                    .tag("command_id", &command.command_id)
                    .tag("state", step.state.as_str())
                    .field("step", 1.0),
            );
        }
    }
}
