use serde::{Deserialize, Serialize};

/// The jobs role: fleet jobs rolled out in waves. Section `[jobs]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// How often a job owner advances its jobs (outcomes, waves, sends), ms.
    pub tick_ms: u64,
    /// Most devices one job may target.
    pub max_targets: usize,
    /// Most jobs a tenant (or the operators) may have running at once.
    pub max_active_per_tenant: usize,
    /// Executions whose command is not yet visible on the device's twin are sent again
    /// (same command id: transport, not a second execution) after this long, ms.
    pub resend_after_ms: u64,
    /// How often the owner of a continuous job resolves its target again to pick up
    /// devices that match since, ms.
    pub continuous_every_ms: u64,
    /// Alarm creation times remembered per device for the canary criterion.
    pub alarms_per_device: usize,
    /// Defaults of a `POST /jobs` that leaves them out.
    pub default_soak_ms: u64,
    pub default_max_per_minute: u32,
    pub default_device_timeout_ms: u64,
    pub default_ttl_ms: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            tick_ms: 250,
            max_targets: 100_000,
            max_active_per_tenant: 5,
            resend_after_ms: 30_000,
            continuous_every_ms: 10_000,
            alarms_per_device: 32,
            default_soak_ms: 60_000,
            default_max_per_minute: 600,
            default_device_timeout_ms: 10 * 60_000,
            default_ttl_ms: 24 * 60 * 60_000,
        }
    }
}
