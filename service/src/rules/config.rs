use serde::{Deserialize, Serialize};

/// The rules role: alarm rules that act on devices. Section `[rules]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// How often a rules owner looks at the active alarms of its devices, ms.
    pub tick_ms: u64,
    /// Most actions (performed, not dry-run) on one device within `limit_window_ms`,
    /// whatever rules cause them; a further action is recorded `limited` and not taken.
    /// Counted from the actions journal, so a restart does not reset it.
    pub max_actions_per_device: u32,
    /// The window of `max_actions_per_device`, ms (an hour).
    pub limit_window_ms: u64,
    /// Time to live of a rule's command (and of a rule's job, for an offline device):
    /// past it an offline device never runs it, ms. Also how long after recording it a
    /// new owner sends a recorded action again (same id: transport, not a second run).
    pub command_ttl_ms: u64,
    /// Most live rules a tenant (or the operators) may have.
    pub max_per_tenant: usize,
    /// Most recent actions shown per rule by the REST API.
    pub recent_kept: usize,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            tick_ms: 500,
            max_actions_per_device: 3,
            limit_window_ms: 60 * 60_000,
            command_ttl_ms: 10 * 60_000,
            max_per_tenant: 100,
            recent_kept: 50,
        }
    }
}
