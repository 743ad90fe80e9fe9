//! Twins and commands: what the service sends devices, the command lifecycle, and the
//! requests and replies that carry operator writes to the instance owning a device.

use serde::{Deserialize, Serialize};

use crate::DeviceId;

/// A JSON object: reported and desired state.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// `devices/{id}/desired`: the desired keys whose value differs from what the device
/// reported. The device applies them and reports its new state on `devices/{id}/state`,
/// which closes the delta.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DesiredPayload {
    /// Version of the desired state this delta was computed from.
    pub version: u64,
    pub delta: JsonObject,
    pub ts: i64,
}

/// Where a command is in its life. Terminal: succeeded, failed, expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Accepted and journaled; waiting for the device to be online.
    Queued,
    /// Published to the device; not yet acknowledged (resent with backoff).
    Sent,
    /// The device said it received the command.
    Acked,
    Succeeded,
    Failed,
    /// Its time to live ran out before the device reported an outcome.
    Expired,
}

impl CommandState {
    pub const ALL: [CommandState; 6] = [
        Self::Queued,
        Self::Sent,
        Self::Acked,
        Self::Succeeded,
        Self::Failed,
        Self::Expired,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Expired)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Acked => "acked",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Expired => "expired",
        }
    }
}

/// One step of a command's journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandStep {
    pub state: CommandState,
    /// Service clock, ms.
    pub at_ms: i64,
    /// Why, when there is more to say (the device's message, the attempt number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A command and its journal, as served by `GET /devices/{id}/commands/{command_id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub command_id: String,
    pub name: String,
    #[serde(default)]
    pub args: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub state: CommandState,
    pub created_ms: i64,
    /// After this (service clock, ms) a command without an outcome is expired.
    pub expires_ms: i64,
    /// Times it was published to the device.
    pub attempts: u32,
    /// When it is published again if still unacknowledged (while the device is online).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<i64>,
    /// Every state it went through, oldest first.
    pub history: Vec<CommandStep>,
}

/// A new command, as the REST API accepted it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewCommand {
    /// Chosen by the instance that accepted the request.
    pub command_id: String,
    pub name: String,
    #[serde(default)]
    pub args: serde_json::Value,
    /// The same key for the same device returns the same command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub ttl_ms: u64,
}

/// A request for the actor of one device, on `iot.commands` (key: device id). Writes
/// always travel this way, so the owning instance applies them in partition order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceRequest {
    pub request_id: String,
    /// The instance waiting for the reply on `iot.replies`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    pub device_id: DeviceId,
    pub sent_ms: i64,
    pub body: DeviceRequestBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeviceRequestBody {
    SendCommand(NewCommand),
    /// Replace (or, with `merge`, merge-patch: null deletes) the desired state. With
    /// `if_match`, only when the desired version is still that.
    SetDesired {
        desired: JsonObject,
        #[serde(default)]
        merge: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_match: Option<u64>,
    },
    GetTwin,
    GetCommand {
        command_id: String,
    },
    ListCommands,
    /// Acknowledge (with an optional verdict) or clear one of the device's alarms.
    AlarmAction {
        alarm_id: String,
        action: AlarmAction,
        /// Who asks (the token's subject).
        by: String,
    },
    /// Assign the device to a tenant (`None`: to no tenant). Operators only.
    SetTenant {
        #[serde(default)]
        tenant: Option<crate::TenantId>,
    },
}

impl DeviceRequestBody {
    /// The `kind` tag, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SendCommand(_) => "send_command",
            Self::SetDesired { .. } => "set_desired",
            Self::GetTwin => "get_twin",
            Self::GetCommand { .. } => "get_command",
            Self::ListCommands => "list_commands",
            Self::SetTenant { .. } => "set_tenant",
            Self::AlarmAction { .. } => "alarm_action",
        }
    }

    /// Whether the request may create the twin of a device nobody has seen: writes may
    /// (a command waits for a device to appear); reads and alarm actions may not.
    pub fn creates_twin(&self) -> bool {
        !self.is_read() && !matches!(self, Self::AlarmAction { .. })
    }

    /// Reads never create a twin for a device nobody has seen.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Self::GetTwin | Self::GetCommand { .. } | Self::ListCommands
        )
    }
}

/// What a user does to an alarm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum AlarmAction {
    Acknowledge {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verdict: Option<crate::Verdict>,
    },
    Clear,
}

/// How a request went; the REST API maps it to an HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyStatus {
    Ok,
    Created,
    NotFound,
    /// A version precondition failed, or an idempotency key was reused for another
    /// command.
    Conflict,
    /// Too many commands are waiting for this device.
    TooManyPending,
}

impl ReplyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Created => "created",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::TooManyPending => "too_many_pending",
        }
    }
}

/// The answer to a [`DeviceRequest`], on `iot.replies`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceReply {
    pub request_id: String,
    pub reply_to: String,
    pub status: ReplyStatus,
    /// The resource, or `{"error": "..."}`.
    pub body: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let request = DeviceRequest {
            request_id: "r1".into(),
            reply_to: Some("i1".into()),
            device_id: DeviceId::parse("d1").unwrap(),
            sent_ms: 1,
            body: DeviceRequestBody::SetDesired {
                desired: serde_json::json!({"fan": "on"})
                    .as_object()
                    .unwrap()
                    .clone(),
                merge: false,
                if_match: Some(3),
            },
        };
        let json = serde_json::to_string(&request).unwrap();
        assert!(
            json.contains(&format!(r#""kind":"{}""#, request.body.kind())),
            "{json}"
        );
        for status in [ReplyStatus::Ok, ReplyStatus::TooManyPending] {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
        }
        assert_eq!(
            serde_json::from_str::<DeviceRequest>(&json).unwrap(),
            request
        );
    }
}
