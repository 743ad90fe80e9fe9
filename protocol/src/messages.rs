//! The JSON messages. MQTT payloads are what devices send and receive; Kafka records wrap
//! them with what the service learned on the way (device id from the topic, arrival time).

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{DeviceId, TenantId};

/// A metric's name. Names up to 24 bytes are stored inline: the roles that decode each
/// reading build its map without a heap allocation per name (docs/benchmarks.md, "names
/// without a heap allocation per reading"). The same type as
/// `fleetwatch_models::MetricName`.
pub type MetricName = compact_str::CompactString;

/// A reading's values: metric name → value, in name order.
pub type MetricValues = BTreeMap<MetricName, f64>;

/// Most metrics one telemetry message may carry.
pub const MAX_METRICS: usize = 64;
/// Longest metric name.
pub const MAX_METRIC_NAME_LEN: usize = 64;

/// Why a payload was refused. The text is what lands in the dead-letter topic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is not valid UTF-8 JSON of the expected shape: {0}")]
    Json(String),
    #[error("metrics is empty; telemetry carries at least one metric")]
    NoMetrics,
    #[error("{0} metrics; the limit is {MAX_METRICS}")]
    TooManyMetrics(usize),
    #[error("metric name {0:?} is invalid: 1 to 64 characters from letters, digits and _ . -")]
    BadMetricName(String),
    #[error("metric {0:?} is not a finite number")]
    NotFinite(String),
    #[error("ts {0} is not a plausible time in milliseconds since 1970")]
    BadTimestamp(i64),
    #[error("not a binary parameters record: {0}")]
    Binary(String),
}

fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PayloadError> {
    serde_json::from_slice(bytes).map_err(|error| PayloadError::Json(error.to_string()))
}

/// Plausible device clocks: after 2001-09-09 and before 2286. Catches seconds sent as
/// milliseconds and garbage.
fn check_timestamp(ts: i64) -> Result<(), PayloadError> {
    if (1_000_000_000_000..10_000_000_000_000).contains(&ts) {
        Ok(())
    } else {
        Err(PayloadError::BadTimestamp(ts))
    }
}

/// `devices/{id}/telemetry`: named numeric metrics at a device timestamp.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TelemetryPayload {
    /// Device clock, milliseconds since the Unix epoch.
    pub ts: i64,
    /// Per-device sequence number, increasing by one per message the device produces.
    /// Used to drop duplicates (QoS 1 is at-least-once).
    pub seq: u64,
    /// Metric name → finite value.
    pub metrics: MetricValues,
}

impl TelemetryPayload {
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let payload: Self = decode_json(bytes)?;
        payload.validate()?;
        Ok(payload)
    }

    pub fn validate(&self) -> Result<(), PayloadError> {
        check_timestamp(self.ts)?;
        if self.metrics.is_empty() {
            return Err(PayloadError::NoMetrics);
        }
        if self.metrics.len() > MAX_METRICS {
            return Err(PayloadError::TooManyMetrics(self.metrics.len()));
        }
        for (name, value) in &self.metrics {
            let name_ok = !name.is_empty()
                && name.len() <= MAX_METRIC_NAME_LEN
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !name_ok {
                return Err(PayloadError::BadMetricName(name.to_string()));
            }
            if !value.is_finite() {
                return Err(PayloadError::NotFinite(name.to_string()));
            }
        }
        Ok(())
    }
}

/// `devices/{id}/state`: the device's reported state, a JSON object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatePayload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    pub reported: serde_json::Map<String, serde_json::Value>,
}

impl StatePayload {
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let payload: Self = decode_json(bytes)?;
        if let Some(ts) = payload.ts {
            check_timestamp(ts)?;
        }
        Ok(payload)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Connectivity {
    Online,
    Offline,
}

impl Connectivity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }
}

/// `devices/{id}/status`: online or offline. Devices set `{"status":"offline"}` as their
/// MQTT Last Will so that the broker reports a lost connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusPayload {
    pub status: Connectivity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
}

impl StatusPayload {
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        decode_json(bytes)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckOutcome {
    Received,
    Succeeded,
    Failed,
}

/// `devices/{id}/acks`: a device's answer to a command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AckPayload {
    pub command_id: String,
    pub outcome: AckOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
}

impl AckPayload {
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        decode_json(bytes)
    }
}

/// `devices/{id}/commands`: a command for the device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandPayload {
    pub command_id: String,
    pub name: String,
    #[serde(default)]
    pub args: serde_json::Value,
    pub ts: i64,
}

/// What a device said, as carried on `iot.telemetry` (key: device id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceEvent {
    pub device_id: DeviceId,
    /// When ingest received it (service clock, ms).
    pub received_ms: i64,
    /// The device's tenant as ingest knew it (`iot.device-directory`): carried so that
    /// the scorer and the alerts role route without a lookup. `None`: operators only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    pub body: DeviceEventBody,
}

/// Decoded by `body_de.rs` (the tag first, without buffering the body); encoded by serde.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeviceEventBody {
    Telemetry(TelemetryPayload),
    State(StatePayload),
    Status(StatusPayload),
    Ack(AckPayload),
    /// An operator decommissioned the device: every role forgets it (twin, commands,
    /// model, episode) and tombstones what it keeps on compacted topics. Travels on the
    /// device's own partition, so it is ordered with the device's events.
    Decommissioned,
}

/// A refused input on `iot.dlq`, with the reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Human-readable reason, e.g. "metric \"temp\" is not a finite number".
    pub reason: String,
    /// Where it came from, e.g. "mqtt".
    pub source: String,
    /// MQTT topic (or other origin) it arrived on.
    pub topic: String,
    /// The device, when the topic named a valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    /// The payload as text (lossy UTF-8), cut to [`DeadLetter::KEPT_PAYLOAD_BYTES`].
    pub payload: String,
    /// The payload's full size in bytes.
    pub payload_bytes: usize,
    pub received_ms: i64,
}

impl DeadLetter {
    pub const KEPT_PAYLOAD_BYTES: usize = 1024;
    /// Longest reason kept: a reason may quote the input (a metric name, a JSON
    /// decoder's "unknown variant"), which may be as large as the payload limit.
    pub const KEPT_REASON_BYTES: usize = 512;

    pub fn new(
        reason: String,
        topic: &str,
        device_id: Option<DeviceId>,
        payload: &[u8],
        received_ms: i64,
    ) -> Self {
        let kept = &payload[..payload.len().min(Self::KEPT_PAYLOAD_BYTES)];
        Self {
            reason: cut_reason(reason),
            source: "mqtt".to_owned(),
            topic: topic.to_owned(),
            device_id,
            payload: String::from_utf8_lossy(kept).into_owned(),
            payload_bytes: payload.len(),
            received_ms,
        }
    }
}

/// `reason` cut to [`DeadLetter::KEPT_REASON_BYTES`] at a character boundary, marked with
/// "…" when cut.
fn cut_reason(mut reason: String) -> String {
    if reason.len() > DeadLetter::KEPT_REASON_BYTES {
        let mut end = DeadLetter::KEPT_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// Model parameters for one device and model on `iot.model-params` (compacted; key:
/// [`crate::params_key`], partition: the device's telemetry partition).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamsEnvelope<P> {
    pub device_id: DeviceId,
    /// The model these parameters are of ([`crate::PRODUCTION_MODEL`] in records written
    /// before model ids existed).
    #[serde(default = "production_model")]
    pub model_id: String,
    /// Increases by one with every publication for this device.
    pub version: u64,
    /// Telemetry events the trainer had learned from when it published.
    pub trained_events: u64,
    pub published_ms: i64,
    /// What users' false-positive verdicts taught: causes whose scores are damped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damping: Vec<Damping>,
    pub params: P,
}

/// A false-positive verdict's effect on one cause of a device's scores. Scores of parts
/// with this cause are multiplied by [`Damping::factor_at`]: `factor` when the verdict
/// came, fading back to 1 over [`Damping::FADE_MS`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Damping {
    /// `metric:kind`, e.g. `pressure:deviation`.
    pub cause: String,
    pub factor: f32,
    pub since_ms: i64,
}

impl Damping {
    /// The strongest damping a verdict may give: a part must score above
    /// threshold / 0.7 to alarm (0.93 at the recommended 0.65), so a strong fault of
    /// the same cause still does.
    pub const MIN_FACTOR: f32 = 0.7;
    /// A week to fade out.
    pub const FADE_MS: i64 = 7 * 24 * 60 * 60 * 1000;

    pub fn factor_at(&self, now_ms: i64) -> f64 {
        let faded = ((now_ms - self.since_ms) as f64 / Self::FADE_MS as f64).clamp(0.0, 1.0);
        let factor = f64::from(self.factor.clamp(Self::MIN_FACTOR, 1.0));
        factor + (1.0 - factor) * faded
    }
}

fn production_model() -> String {
    crate::PRODUCTION_MODEL.to_owned()
}

/// First bytes of a binary parameters record, the last one the layout's version: 1
/// without damping, 2 with it (both the production model's), 3 for any other model.
const PARAMS_MAGIC: [u8; 4] = *b"FWP\x01";
const PARAMS_MAGIC_V2: [u8; 4] = *b"FWP\x02";
const PARAMS_MAGIC_V3: [u8; 4] = *b"FWP\x03";

/// The binary layout of `iot.model-params` records: compact (parameters are most of
/// the traffic between trainer and scorers) and versioned. The parameters themselves are
/// the model's own bytes, which carry the model kind and its format.
///
/// ```text
/// "FWP" 0x01 | version u64 | trained_events u64 | published_ms i64 | id length u16 |
/// device id (UTF-8) | parameters (the rest)          integers little-endian
/// "FWP" 0x02 | the same header | damping count u8 | per damping: cause length u8,
/// cause (UTF-8), factor f32, since_ms i64 | parameters (the rest)
/// "FWP" 0x03 | the same header | model id length u8 | model id (UTF-8) | the damping
/// section of 0x02 (count 0 without) | parameters (the rest)
/// ```
///
/// The production model's records keep layouts 1 and 2, byte for byte as before model
/// ids existed; other models' use layout 3.
impl ParamsEnvelope<Vec<u8>> {
    pub fn encode(&self) -> Vec<u8> {
        let id = self.device_id.as_str().as_bytes();
        let mut out = Vec::with_capacity(32 + id.len() + self.params.len());
        let candidate = self.model_id != crate::PRODUCTION_MODEL;
        let magic = match (candidate, self.damping.is_empty()) {
            (true, _) => PARAMS_MAGIC_V3,
            (false, true) => PARAMS_MAGIC,
            (false, false) => PARAMS_MAGIC_V2,
        };
        out.extend_from_slice(&magic);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.trained_events.to_le_bytes());
        out.extend_from_slice(&self.published_ms.to_le_bytes());
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(id);
        if candidate {
            let model = &self.model_id.as_bytes()[..self.model_id.len().min(255)];
            out.push(model.len() as u8);
            out.extend_from_slice(model);
        }
        if candidate || !self.damping.is_empty() {
            let kept = &self.damping[..self.damping.len().min(u8::MAX as usize)];
            out.push(kept.len() as u8);
            for damping in kept {
                let cause = &damping.cause.as_bytes()[..damping.cause.len().min(255)];
                out.push(cause.len() as u8);
                out.extend_from_slice(cause);
                out.extend_from_slice(&damping.factor.to_le_bytes());
                out.extend_from_slice(&damping.since_ms.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.params);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let bad = |what: &str| PayloadError::Binary(what.to_owned());
        if let Some(rest) = bytes.strip_prefix(&PARAMS_MAGIC_V3) {
            let mut envelope = Self::decode_v1(rest)?;
            let len = *envelope
                .params
                .first()
                .ok_or_else(|| bad("truncated model id"))? as usize;
            let model = (envelope.params.get(1..1 + len))
                .and_then(|model| std::str::from_utf8(model).ok())
                .ok_or_else(|| bad("truncated or non-UTF-8 model id"))?;
            crate::check_model_id(model).map_err(|e| bad(&e))?;
            envelope.model_id = model.to_owned();
            envelope.params.drain(..1 + len);
            let (damping, used) =
                decode_damping(&envelope.params).ok_or_else(|| bad("truncated damping"))?;
            envelope.damping = damping;
            envelope.params.drain(..used);
            return Ok(envelope);
        }
        if let Some(rest) = bytes.strip_prefix(&PARAMS_MAGIC_V2) {
            let mut envelope = Self::decode_v1(rest)?;
            let (damping, used) =
                decode_damping(&envelope.params).ok_or_else(|| bad("truncated damping"))?;
            envelope.damping = damping;
            envelope.params.drain(..used);
            return Ok(envelope);
        }
        let rest = bytes
            .strip_prefix(&PARAMS_MAGIC)
            .ok_or_else(|| bad("unknown magic or layout version"))?;
        Self::decode_v1(rest)
    }

    /// The header after the magic; the rest is the parameters.
    fn decode_v1(rest: &[u8]) -> Result<Self, PayloadError> {
        let bad = |what: &str| PayloadError::Binary(what.to_owned());
        if rest.len() < 26 {
            return Err(bad("truncated header"));
        }
        let word = |at: usize| <[u8; 8]>::try_from(&rest[at..at + 8]).expect("8 bytes");
        let id_len = u16::from_le_bytes([rest[24], rest[25]]) as usize;
        let id = rest
            .get(26..26 + id_len)
            .ok_or_else(|| bad("truncated device id"))?;
        let id = std::str::from_utf8(id).map_err(|_| bad("device id is not UTF-8"))?;
        Ok(Self {
            device_id: DeviceId::parse(id).map_err(|e| bad(&e.to_string()))?,
            model_id: production_model(),
            version: u64::from_le_bytes(word(0)),
            trained_events: u64::from_le_bytes(word(8)),
            published_ms: i64::from_le_bytes(word(16)),
            damping: Vec::new(),
            params: rest[26 + id_len..].to_vec(),
        })
    }
}

/// The damping section of a v2 envelope, and the bytes it took.
fn decode_damping(bytes: &[u8]) -> Option<(Vec<Damping>, usize)> {
    let count = *bytes.first()? as usize;
    let mut at = 1;
    let mut damping = Vec::with_capacity(count);
    for _ in 0..count {
        let len = *bytes.get(at)? as usize;
        let cause = std::str::from_utf8(bytes.get(at + 1..at + 1 + len)?).ok()?;
        at += 1 + len;
        let factor = f32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?);
        let since_ms = i64::from_le_bytes(bytes.get(at + 4..at + 12)?.try_into().ok()?);
        at += 12;
        damping.push(Damping {
            cause: cause.to_owned(),
            factor,
            since_ms,
        });
    }
    Some((damping, at))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// An anomaly episode started.
    Raised,
    /// The open episode got worse (a higher score) or another metric or cause broke: the
    /// same incident, with the new peak and reason.
    Updated,
    /// The episode ended: the device behaves normally again.
    Cleared,
}

/// How much one metric contributed to an anomaly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contributor {
    pub metric: String,
    pub value: f64,
    /// What the model expected (its running mean).
    pub expected: f64,
    /// The metric's own anomaly score in [0, 1].
    pub score: f64,
}

/// An alert on `iot.alerts` (key: device id), pushed to customers over WebSockets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `{device}:{episode}`: the same for the raise and the clear of one episode.
    pub alert_id: String,
    pub device_id: DeviceId,
    /// The device's tenant, from the scored event: who may see this alert besides
    /// operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    pub state: AlertState,
    /// Anomaly score in [0, 1] of the event that changed the state.
    pub score: f64,
    pub threshold: f64,
    /// One sentence a person can act on.
    pub reason: String,
    /// Metrics ordered by contribution, largest first.
    pub contributors: Vec<Contributor>,
    /// The top contributor's metric and check, `metric:kind` (e.g. `pressure:relation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Device timestamp and sequence number of the event that changed the state.
    pub event_ts: i64,
    pub event_seq: u64,
    /// When the scorer emitted it (service clock, ms).
    pub emitted_ms: i64,
    /// Version of the parameters the scorer used.
    pub model_version: u64,
    /// The model whose episode this is; none: the production model (docs/shadow.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
}

/// The reason of the `cleared` alert that closes a model's open episode when another
/// model is promoted (or rolled back to) for the device.
pub const MODEL_PROMOTED: &str = "model_promoted";

/// The score of one scored event: what the storage role writes next to the reading.
/// Only events the model could judge (not warming up) have one. On `iot.scores` in a
/// [`ScoreBatch`]; a record of one score alone (key: device id) is what scorers wrote
/// before batches, and readers still accept it ([`ScoresRecord`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreRecord {
    pub device_id: DeviceId,
    /// Device timestamp and sequence number of the scored event.
    pub ts: i64,
    pub seq: u64,
    /// The event's anomaly score in [0, 1] (its largest part).
    pub score: f64,
    /// Each metric of the event with its own score: the largest part naming it, 0 when
    /// no part reached 0.05 (the model reports only parts from 0.05 up).
    pub metrics: MetricValues,
}

/// The scores of events of one `iot.telemetry` partition, in the order they were scored,
/// as one record on `iot.scores`, in the partition of the same number (the topics are
/// co-partitioned: each score is where a record keyed by its device would be), without a
/// key. One record per batch instead of one per event: a Kafka record costs the scorer
/// more than the score itself (docs/benchmarks.md, "Load").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreBatch {
    pub scores: Vec<ScoreRecord>,
}

/// A record of `iot.scores` as readers take it: a batch, or one score alone (written
/// before batches).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ScoresRecord {
    Batch(ScoreBatch),
    One(ScoreRecord),
}

impl ScoresRecord {
    pub fn into_scores(self) -> Vec<ScoreRecord> {
        match self {
            Self::Batch(batch) => batch.scores,
            Self::One(score) => vec![score],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_good_telemetry() {
        let payload =
            TelemetryPayload::decode(br#"{"ts":1700000000000,"seq":3,"metrics":{"temp":21.5}}"#)
                .unwrap();
        assert_eq!(payload.seq, 3);
        assert_eq!(payload.metrics["temp"], 21.5);
    }

    #[test]
    fn refuses_bad_telemetry_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"{not json", "JSON"),
            (
                br#"{"ts":1700000000000,"seq":1}"#,
                "missing field `metrics`",
            ),
            (
                br#"{"ts":1700000000000,"seq":1,"metrics":{"t":"hot"}}"#,
                "invalid type",
            ),
            (
                br#"{"ts":1700000000000,"seq":1,"metrics":{"t":NaN}}"#,
                "JSON",
            ),
            (
                br#"{"ts":1700000000000,"seq":1,"metrics":{"t":1e999}}"#,
                "JSON",
            ),
            (br#"{"ts":1700000000000,"seq":1,"metrics":{}}"#, "empty"),
            (
                br#"{"ts":1700000000,"seq":1,"metrics":{"t":1}}"#,
                "plausible",
            ),
            (
                br#"{"ts":1700000000000,"seq":-1,"metrics":{"t":1}}"#,
                "JSON",
            ),
            (
                br#"{"ts":1700000000000,"seq":1,"metrics":{"a b":1}}"#,
                "invalid",
            ),
        ];
        for (payload, expected) in cases {
            let error = TelemetryPayload::decode(payload).unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "{} gave {error:?}, wanted {expected:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn dead_letter_reasons_are_cut_at_a_character_boundary() {
        let name = "é".repeat(2000);
        let reason = PayloadError::BadMetricName(name).to_string();
        let letter = DeadLetter::new(reason, "devices/d1/telemetry", None, b"{}", 0);
        assert!(letter.reason.len() <= DeadLetter::KEPT_REASON_BYTES + '…'.len_utf8());
        assert!(letter.reason.starts_with("metric name \"é") && letter.reason.ends_with('…'));
        let short = DeadLetter::new("short".into(), "t", None, b"", 0);
        assert_eq!(short.reason, "short");
    }

    #[test]
    fn device_event_round_trips() {
        let event = DeviceEvent {
            device_id: DeviceId::parse("d1").unwrap(),
            received_ms: 5,
            tenant: TenantId::parse("acme").ok(),
            body: DeviceEventBody::Status(StatusPayload {
                status: Connectivity::Offline,
                ts: None,
            }),
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains(r#""kind":"status""#), "{json}");
        assert_eq!(serde_json::from_str::<DeviceEvent>(&json).unwrap(), event);
    }

    #[test]
    fn binary_parameters_round_trip_and_refuse_garbage() {
        let envelope = ParamsEnvelope {
            device_id: DeviceId::parse("pump-7").unwrap(),
            model_id: crate::PRODUCTION_MODEL.into(),
            version: 42,
            trained_events: 420,
            published_ms: 1_800_000_000_000,
            damping: Vec::new(),
            params: vec![1, 2, 3, 250],
        };
        let bytes = envelope.encode();
        assert_eq!(bytes.len(), 4 + 26 + 6 + 4);
        assert_eq!(ParamsEnvelope::decode(&bytes).unwrap(), envelope);
        let damped = ParamsEnvelope {
            damping: vec![Damping {
                cause: "pressure:deviation".into(),
                factor: 0.8,
                since_ms: 1_800_000_000_000,
            }],
            ..envelope.clone()
        };
        assert_eq!(ParamsEnvelope::decode(&damped.encode()).unwrap(), damped);
        for damping in [Vec::new(), damped.damping.clone()] {
            let candidate = ParamsEnvelope {
                model_id: "cand-1".into(),
                damping,
                ..envelope.clone()
            };
            let bytes = candidate.encode();
            assert_eq!(&bytes[..4], b"FWP\x03");
            assert_eq!(ParamsEnvelope::decode(&bytes).unwrap(), candidate);
        }
        let fresh = damped.damping[0].factor_at(1_800_000_000_000);
        let faded = damped.damping[0].factor_at(1_800_000_000_000 + Damping::FADE_MS / 2);
        assert!((fresh - 0.8).abs() < 1e-6 && (faded - 0.9).abs() < 1e-6);
        assert!(ParamsEnvelope::decode(b"{\"device_id\":\"x\"}").is_err());
        assert!(ParamsEnvelope::decode(&bytes[..20]).is_err());
        let mut long_id = bytes.clone();
        long_id[28] = 200;
        assert!(ParamsEnvelope::decode(&long_id).is_err());
    }
}
