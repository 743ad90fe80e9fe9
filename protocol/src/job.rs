//! Fleet jobs: a command rolled out to many devices in waves, on `iot.jobs` (key: job
//! id). The topic is the job's event log: its definition, the waves it started, every
//! execution's state changes, cancel requests and the abort decision. Folding a job's
//! events in order gives its state; every event is idempotent (applying it twice changes
//! nothing), so a reader may meet its own writes again.

use serde::{Deserialize, Serialize};

use crate::{DeviceId, TenantId};

/// What a job sends each device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobCommand {
    /// The device downloads `url`, checks `checksum` and installs it; the execution
    /// succeeds when the device reports `version` in `reported.firmware`. Sent as the
    /// command `software_update` with these fields as its args.
    SoftwareUpdate {
        url: String,
        version: String,
        checksum: String,
    },
    /// Any command devices accept; succeeds when the device reports it succeeded.
    Command {
        name: String,
        #[serde(default)]
        args: serde_json::Value,
    },
    /// A configuration change: `desired` is merged into each device's desired state (a
    /// JSON merge patch: `null` deletes a key); succeeds when the device reports every
    /// patched key as patched (the delta of those keys closed).
    Configuration { desired: crate::JsonObject },
}

impl JobCommand {
    /// What the device's twin is asked for the execution whose command id (and
    /// idempotency key) is `command_id`.
    pub fn request(&self, command_id: &str, ttl_ms: u64) -> crate::DeviceRequestBody {
        let command = |name: &str, args: serde_json::Value| {
            crate::DeviceRequestBody::SendCommand(crate::NewCommand {
                command_id: command_id.to_owned(),
                name: name.to_owned(),
                args,
                idempotency_key: Some(command_id.to_owned()),
                ttl_ms,
            })
        };
        match self {
            Self::SoftwareUpdate {
                url,
                version,
                checksum,
            } => command(
                "software_update",
                serde_json::json!({"url": url, "version": version, "checksum": checksum}),
            ),
            Self::Command { name, args } => command(name, args.clone()),
            // A merge patch applied again changes nothing: a resend is transport here too.
            Self::Configuration { desired } => crate::DeviceRequestBody::SetDesired {
                desired: desired.clone(),
                merge: true,
                if_match: None,
            },
        }
    }
}

/// Whether `reported` shows every key of the merge patch `patch` as patched (`null`:
/// absent).
pub fn patch_reported(patch: &crate::JsonObject, reported: &crate::JsonObject) -> bool {
    patch
        .iter()
        .all(|(key, wanted)| match (wanted, reported.get(key)) {
            (serde_json::Value::Null, found) => found.is_none_or(serde_json::Value::is_null),
            (serde_json::Value::Object(inner), Some(serde_json::Value::Object(found))) => {
                patch_reported(inner, found)
            }
            (wanted, found) => found == Some(wanted),
        })
}

/// How a job rolls out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Cumulative share of the targets (percent) each wave reaches, increasing and
    /// ending at 100: `[1, 5, 25, 100]` sends to 1%, then up to 5%, 25%, the rest.
    pub waves_percent: Vec<f64>,
    /// After a wave finished, how long to watch before the next one starts (and before
    /// the canary criterion is evaluated).
    pub soak_ms: u64,
    /// At most this many executions are first sent in any minute.
    pub max_per_minute: u32,
}

/// The canary criterion: abort when updated devices alarm more than the others.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    /// Evaluated only once this many devices are updated.
    pub min_updated: u32,
    /// The updated devices' alarm rate must be at least this multiple of the others'.
    pub ratio: f64,
    /// … and the one-sided test's p-value below this.
    pub p_value: f64,
}

/// When a job stops itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AbortCriteria {
    /// Abort when (failed + timed out) / finished exceeds this …
    pub failure_ratio: f64,
    /// … once at least this many executions finished.
    pub min_finished: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

/// A job as created: fixed from then on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub job_id: String,
    /// The creator's tenant (`None`: an operator's job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// An operator's job that named tenants reaches their devices only (empty: every
    /// device). A tenant's job reaches its own tenant's devices only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<TenantId>,
    pub created_by: String,
    pub command: JobCommand,
    /// The target as asked (`{"device_ids": …}`, `{"prefix": …}` or `{"selector": …}`).
    pub target: serde_json::Value,
    /// The devices, resolved when the job was created, in rollout order.
    pub devices: Vec<DeviceId>,
    pub rollout: Rollout,
    pub abort: AbortCriteria,
    /// A device that received the command has this long to report its outcome.
    pub device_timeout_ms: u64,
    /// A device that stays offline has this long to come back and receive it.
    pub ttl_ms: u64,
    /// Keeps picking up devices that match the target later (`targets_added`), until
    /// cancelled or aborted; never finishes by itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continuous: bool,
}

impl JobSpec {
    /// The command id (and idempotency key) of this job's execution on `device`: the
    /// same on every send, so a resend is transport, never a second execution.
    pub fn command_id(&self, device: &DeviceId) -> String {
        format!("job-{}-{}", self.job_id, device)
    }

    /// Whether a device of `tenant` is within the job's reach (checked again before each
    /// first send: a device may have changed tenant since the job was created).
    pub fn reaches(&self, tenant: Option<&TenantId>) -> bool {
        match &self.tenant {
            Some(own) => tenant == Some(own),
            None => self.tenants.is_empty() || tenant.is_some_and(|t| self.tenants.contains(t)),
        }
    }

    /// How many targets the waves up to `wave` (0-based) reach.
    pub fn reach(&self, wave: usize) -> usize {
        let total = self.devices.len();
        let Some(&percent) = self.rollout.waves_percent.get(wave) else {
            return total;
        };
        if wave + 1 == self.rollout.waves_percent.len() {
            return total;
        }
        let reach = ((percent / 100.0) * total as f64).ceil() as usize;
        reach.clamp(1, total)
    }
}

/// Where one execution (one device of one job) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionState {
    /// Created with its wave; not yet sent (waiting for the rate limit).
    Queued,
    /// Handed to the device's command path; the device may be offline.
    Sent,
    /// The device received it.
    InProgress,
    Succeeded,
    Failed,
    /// No outcome within the device timeout, or offline past the time to live.
    TimedOut,
    /// Never sent: the job was aborted or cancelled first.
    Cancelled,
}

impl ExecutionState {
    pub const ALL: [ExecutionState; 7] = [
        Self::Queued,
        Self::Sent,
        Self::InProgress,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
        Self::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::TimedOut | Self::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::InProgress => "in_progress",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One execution's new state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionChange {
    pub device_id: DeviceId,
    pub state: ExecutionState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The canary criterion's figures at one evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryFigures {
    pub updated_devices: u32,
    pub other_devices: u32,
    /// Alarms of updated devices since their update, and their device-hours.
    pub updated_alarms: u64,
    pub updated_device_hours: f64,
    /// Alarms of the other devices over the same window, and their device-hours.
    pub other_alarms: u64,
    pub other_device_hours: f64,
    /// Updated rate / other rate (`null` when neither alarmed; infinite as 1e308).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_ratio: Option<f64>,
    /// One-sided p-value of the conditional binomial test.
    pub p_value: f64,
    /// Whether the figures call for an abort.
    pub abort: bool,
}

/// Why a job stopped itself, with the figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "criterion", rename_all = "snake_case")]
pub enum AbortDecision {
    FailureRatio {
        failed: u32,
        timed_out: u32,
        finished: u32,
        ratio: f64,
        limit: f64,
    },
    Canary {
        /// The wave after whose soak it was evaluated (0-based).
        wave: u32,
        figures: CanaryFigures,
    },
}

/// One event of a job, on `iot.jobs` (key: job id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: String,
    /// Service clock, ms.
    pub at_ms: i64,
    pub body: JobEventBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobEventBody {
    Created(Box<JobSpec>),
    /// Wave `wave` (0-based) started: its executions (the targets from the previous
    /// wave's reach up to `reach`) exist from this event on, `queued`.
    /// `canary`: the evaluation that let it start, after the previous wave's soak.
    WaveStarted {
        wave: u32,
        reach: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        canary: Option<CanaryFigures>,
    },
    /// Every execution of wave `wave` is finished or waiting for an offline device.
    WaveFinished {
        wave: u32,
    },
    Executions {
        changes: Vec<ExecutionChange>,
    },
    /// A continuous job's target matched these devices since it was created: they join
    /// its last wave (queued at once when that wave has started).
    TargetsAdded {
        devices: Vec<DeviceId>,
    },
    CancelRequested {
        by: String,
    },
    Aborted(AbortDecision),
    /// No execution is open any more.
    Finished,
}

impl JobEventBody {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Created(_) => "created",
            Self::WaveStarted { .. } => "wave_started",
            Self::WaveFinished { .. } => "wave_finished",
            Self::Executions { .. } => "executions",
            Self::TargetsAdded { .. } => "targets_added",
            Self::CancelRequested { .. } => "cancel_requested",
            Self::Aborted(_) => "aborted",
            Self::Finished => "finished",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_reach_a_growing_share_and_end_with_everything() {
        let spec = JobSpec {
            job_id: "j1".into(),
            tenant: None,
            tenants: Vec::new(),
            created_by: "me".into(),
            command: JobCommand::Command {
                name: "reboot".into(),
                args: serde_json::Value::Null,
            },
            target: serde_json::json!({"prefix": "d"}),
            devices: (0..200)
                .map(|i| DeviceId::parse(&format!("d{i}")).unwrap())
                .collect(),
            rollout: Rollout {
                waves_percent: vec![1.0, 5.0, 25.0, 100.0],
                soak_ms: 1,
                max_per_minute: 10,
            },
            abort: AbortCriteria {
                failure_ratio: 0.5,
                min_finished: 10,
                canary: None,
            },
            device_timeout_ms: 1,
            ttl_ms: 1,
            continuous: false,
        };
        let reach: Vec<usize> = (0..5).map(|w| spec.reach(w)).collect();
        assert_eq!(reach, [2, 10, 50, 200, 200]);
        assert_eq!(spec.command_id(&spec.devices[3]), "job-j1-d3");
        let event = JobEvent {
            job_id: "j1".into(),
            at_ms: 5,
            body: JobEventBody::Created(Box::new(spec)),
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains(r#""kind":"created""#), "{json}");
        assert_eq!(serde_json::from_str::<JobEvent>(&json).unwrap(), event);
    }
}
