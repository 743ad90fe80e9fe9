//! What a rule is: a condition on alarms and the action it takes, the events of a
//! rule's log on `iot.rules`, and the action records of the journal on
//! `iot.rule-actions`. Matching is pure (the clock and the twin are arguments).

use fleetwatch_protocol::{Alarm, DeviceId, JobCommand, JsonObject, Severity, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::jobs::target::{matches, parse_selector, Clause};

/// When a rule acts on an alarm: every condition given must hold (of an active alarm).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The alarm's severity is at least this (`warning` < `minor` < `major` <
    /// `critical`); any when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// The alarm has been active at least this long, ms (0: as soon as it exists).
    #[serde(default)]
    pub active_for_ms: u64,
    /// The device id starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_prefix: Option<String>,
    /// The device's twin matches this selector on its reported state (the jobs'
    /// syntax: `reported.<path> == <value>` or `!=`, joined by `AND`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The alarm's cause (the metric the scorer blames) is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
}

/// What a rule does to the alarm's device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleAction {
    /// A command through the device's journal (e.g. `safe_mode`); its id and
    /// idempotency key are the action's.
    Command {
        name: String,
        #[serde(default)]
        args: Value,
    },
    /// A fleet job on the device (job id: the action's).
    Job { command: JobCommand },
    /// A signed POST to each webhook of the alarm's tenant.
    Notify {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
}

impl RuleAction {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Command { .. } => "command",
            Self::Job { .. } => "job",
            Self::Notify { .. } => "notify",
        }
    }
}

/// A rule as created or last edited.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleSpec {
    pub rule_id: String,
    /// Whose devices it acts on (`None`: an operator's rule, every tenant's devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    pub name: String,
    pub condition: Condition,
    pub action: RuleAction,
    /// Record what it would do, do nothing.
    pub dry_run: bool,
    /// Counts edits: 0 when created.
    pub revision: u32,
}

impl RuleSpec {
    /// The action id for an alarm: one decision per (rule, alarm), also the command id,
    /// the job id and the notification's event id.
    pub fn action_id(&self, alarm_id: &str) -> String {
        format!("rule-{}-{}", self.rule_id, alarm_id)
    }
}

/// One event of a rule's log on `iot.rules` (key: rule id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleEvent {
    pub rule_id: String,
    pub at_ms: i64,
    pub body: RuleEventBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RuleEventBody {
    /// Created (revision 0) or edited.
    Saved(Box<RuleSpec>),
    /// Acts no more.
    Deleted { by: String },
}

/// What became of a rule's decision on an alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionOutcome {
    /// Recorded, then taken.
    Performed,
    /// A dry-run rule: recorded what it would have done; nothing taken.
    DryRun,
    /// Not taken: the device had `rules.max_actions_per_device` actions in the window.
    Limited,
    /// Not taken: the device is no longer in the rule's tenant.
    OtherTenant,
}

impl ActionOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Performed => "performed",
            Self::DryRun => "dry_run",
            Self::Limited => "limited",
            Self::OtherTenant => "other_tenant",
        }
    }
}

/// One entry of the actions journal on `iot.rule-actions` (key: device id), recorded
/// before anything is taken.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub action_id: String,
    pub rule_id: String,
    pub rule_revision: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// The alarm that caused it, as it was then.
    pub alarm_id: String,
    pub severity: Severity,
    pub alarm_created_ms: i64,
    pub device_id: DeviceId,
    pub action: RuleAction,
    pub outcome: ActionOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub at_ms: i64,
}

/// A condition with its selector parsed.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub condition: Condition,
    clauses: Vec<Clause>,
}

impl Compiled {
    pub fn new(condition: &Condition) -> Result<Self, String> {
        let clauses = match &condition.selector {
            Some(selector) => parse_selector(selector).map_err(|e| format!("selector: {e}"))?,
            None => Vec::new(),
        };
        Ok(Self {
            condition: condition.clone(),
            clauses,
        })
    }

    /// Whether the condition needs the device's twin.
    pub fn needs_twin(&self) -> bool {
        !self.clauses.is_empty()
    }

    /// Whether the condition holds of `alarm` at `now_ms`, the device reporting
    /// `reported` (`None`: its twin is unknown, which no selector matches).
    pub fn holds(&self, alarm: &Alarm, now_ms: i64, reported: Option<&JsonObject>) -> bool {
        let c = &self.condition;
        let lasted = now_ms.saturating_sub(alarm.created_ms);
        alarm.active
            && c.severity.is_none_or(|least| alarm.severity >= least)
            && lasted >= i64::try_from(c.active_for_ms).unwrap_or(i64::MAX)
            && (c.device_prefix.as_deref())
                .is_none_or(|prefix| alarm.device_id.as_str().starts_with(prefix))
            && (c.metric.as_deref()).is_none_or(|metric| alarm.cause.as_deref() == Some(metric))
            && (self.clauses.is_empty()
                || reported.is_some_and(|reported| matches(&self.clauses, reported)))
    }
}
