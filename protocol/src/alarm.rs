//! Alarms: an alert episode a person can work with (severity, acknowledge, clear), and
//! the append-only events of their lifecycle on `iot.alarms`.

use serde::{Deserialize, Serialize};

use crate::{DeviceId, TenantId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Minor,
    Major,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warning => "warning",
            Self::Minor => "minor",
            Self::Major => "major",
            Self::Critical => "critical",
        }
    }
}

/// A person's judgement of an alarm, given with the acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    TruePositive,
    FalsePositive,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmEventKind {
    Created,
    Updated,
    Acknowledged,
    Cleared,
}

impl AlarmEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Acknowledged => "acknowledged",
            Self::Cleared => "cleared",
        }
    }
}

/// One change of an alarm: what, when, by whom.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmChange {
    pub kind: AlarmEventKind,
    pub at_ms: i64,
    /// `scorer` for changes from the anomaly episode, else the user's token subject.
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One alarm: one device, one incident (one episode of the scorer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// The episode's alert id, `{device}:{seq of the opening event}`.
    pub alarm_id: String,
    pub device_id: DeviceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    pub severity: Severity,
    /// Active until the episode ends or a user clears it.
    pub active: bool,
    pub acknowledged: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    pub created_ms: i64,
    pub updated_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_ms: Option<i64>,
    pub peak_score: f64,
    pub threshold: f64,
    /// The latest reason the scorer gave.
    pub reason: String,
    /// The latest cause, `metric:kind` (what a false-positive verdict teaches about).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Alerts folded into it (the raise and every update).
    pub count: u32,
    /// The sequence number of the last alert applied (later duplicates are ignored).
    pub last_alert_seq: u64,
    /// Changes so far; the n-th change's event id is `{alarm_id}/{n}`.
    pub changes: u32,
    /// Every change, oldest first (bounded: the first and the latest are kept).
    pub history: Vec<AlarmChange>,
}

impl Alarm {
    /// The device of an alarm id (`{device}:{seq}`; device ids may contain `:`).
    pub fn device_of(alarm_id: &str) -> Option<DeviceId> {
        let (device, seq) = alarm_id.rsplit_once(':')?;
        seq.parse::<u64>().ok()?;
        DeviceId::parse(device).ok()
    }
}

/// An event on `iot.alarms` (append-only; key: device id): the change and the alarm as it
/// is after it. `event_id` (`{alarm_id}/{n}`, n counting the alarm's changes) is the same
/// when an event is written again after a crash, so receivers can deduplicate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmEvent {
    pub event_id: String,
    pub kind: AlarmEventKind,
    pub at_ms: i64,
    pub by: String,
    pub alarm: Alarm,
}

/// A verdict on `iot.feedback` (key: device id), for the trainer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub device_id: DeviceId,
    pub alarm_id: String,
    pub verdict: Verdict,
    /// The alarm's cause, `metric:kind`.
    pub cause: Option<String>,
    pub peak_score: f64,
    pub at_ms: i64,
    pub by: String,
}

/// What became of one delivery of an alarm event to one webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// An attempt failed; another follows at `next_attempt_ms`.
    Retrying,
    /// Every attempt failed; no more follow.
    GivenUp,
}

/// One delivery attempt's outcome on `iot.webhook-deliveries` (append-only; key: device
/// id), written by the webhooks role: the status `GET /alarms/{id}/deliveries` answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// The alarm event's id, the same on every attempt (`X-Fleetwatch-Event-Id`).
    pub event_id: String,
    pub alarm_id: String,
    pub device_id: DeviceId,
    pub tenant: TenantId,
    /// The webhook's name (from the configuration; never its URL's secrets or its key).
    pub webhook: String,
    pub outcome: DeliveryOutcome,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// The receiver's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why the attempt failed (no answer, or a non-2xx status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_ids_name_their_device() {
        assert_eq!(Alarm::device_of("pump:7:42").unwrap().as_str(), "pump:7");
        assert!(Alarm::device_of("pump-7").is_none());
        assert!(Alarm::device_of("pump-7:x").is_none());
        assert!(Severity::Critical > Severity::Major && Severity::Minor > Severity::Warning);
    }
}
