//! Schedules (docs/schedules.md): a command or a desired-state patch sent to one device
//! at a time or on a recurrence in a named time zone. A schedule's log is a sequence of
//! [`ScheduleEvent`]s on `iot.schedules` (key: schedule id); its state is their fold.

use serde::{Deserialize, Serialize};

use crate::{DeviceId, JsonObject, TenantId};

/// What each occurrence does to the device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleAction {
    /// A command through the device's journal (id and idempotency key: the occurrence's).
    Command {
        name: String,
        #[serde(default)]
        args: serde_json::Value,
    },
    /// A JSON merge patch of the device's desired state (applying it again changes
    /// nothing).
    Desired { desired: JsonObject },
    /// A fleet job on the device, one per occurrence (job id: the occurrence's command
    /// id, so a retried or doubled firing makes one job).
    Job { command: crate::JobCommand },
}

/// When a schedule's occurrences are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleWhen {
    /// Once, at this instant (ms since the epoch, schedule clock).
    At { at_ms: i64 },
    /// A five-field cron expression (minute hour day-of-month month day-of-week) read in
    /// `time_zone` (an IANA name such as `Europe/Berlin`).
    Cron { cron: String, time_zone: String },
}

/// A schedule as created or last edited.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub schedule_id: String,
    /// The tenant whose device it commands (`None`: made by an operator).
    pub tenant: Option<TenantId>,
    pub device_id: DeviceId,
    pub action: ScheduleAction,
    pub when: ScheduleWhen,
    /// An occurrence noticed later than this after its time is skipped, ms.
    pub grace_ms: u64,
    /// How long an occurrence's command may wait for the device, ms; `None`: until the
    /// next occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Counts edits: 0 when created.
    pub revision: u32,
}

impl ScheduleSpec {
    /// The command id (and idempotency key) of the occurrence due at `due_ms`: the same
    /// on every send, by every instance.
    pub fn command_id(&self, due_ms: i64) -> String {
        format!("sched-{}-{}", self.schedule_id, due_ms)
    }
}

/// What became of one occurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OccurrenceOutcome {
    /// Recorded, then sent (on time or late within the grace period).
    Fired,
    /// Noticed later than the grace period after its time (the service was down).
    Missed,
    /// Its time to live had ended before it could be sent (a later occurrence was due).
    Expired,
    /// Its local time does not exist in the zone (a daylight-saving gap).
    NonexistentLocalTime,
}

impl OccurrenceOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fired => "fired",
            Self::Missed => "missed",
            Self::Expired => "expired",
            Self::NonexistentLocalTime => "nonexistent_local_time",
        }
    }
}

/// One occurrence, recorded before anything is sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Occurrence {
    /// Its local time in the schedule's zone (`YYYY-MM-DDTHH:MM`): what orders
    /// occurrences (a local time that occurs twice is one occurrence).
    pub local: String,
    /// Its instant (`None` for a local time that does not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<i64>,
    pub outcome: OccurrenceOutcome,
    /// Of a fired occurrence: its command id and when its command expires (ms, schedule
    /// clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
}

/// One event of a schedule, on `iot.schedules` (key: schedule id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleEvent {
    pub schedule_id: String,
    /// Schedule clock, ms (the service clock unless `schedules.clock_speed` compresses
    /// time for tests).
    pub at_ms: i64,
    pub body: ScheduleEventBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScheduleEventBody {
    /// Created (revision 0) or edited: occurrences after `at_ms` follow this spec.
    Saved(Box<ScheduleSpec>),
    /// Occurrences handled, in local-time order.
    Occurrences { occurrences: Vec<Occurrence> },
    /// No occurrence from now on.
    Deleted { by: String },
}

impl ScheduleEventBody {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Saved(_) => "saved",
            Self::Occurrences { .. } => "occurrences",
            Self::Deleted { .. } => "deleted",
        }
    }
}
