use serde::{Deserialize, Serialize};

/// The schedules role: commands and desired-state patches at times or on recurrences.
/// Section `[schedules]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulesConfig {
    /// How often a schedule owner looks for occurrences whose time has come, ms.
    pub tick_ms: u64,
    /// Grace period of a schedule created without `grace_ms`: an occurrence noticed
    /// later than this after its time (the service was down) is recorded `missed`, ms.
    pub default_grace_ms: u64,
    /// Time to live of a one-time schedule's command without `ttl_ms` (a recurring
    /// schedule's lasts until its next occurrence), ms.
    pub default_ttl_ms: u64,
    /// Most schedules a tenant (or the operators) may have.
    pub max_per_tenant: usize,
    /// Most occurrences one owner step handles per schedule (a long downtime is caught
    /// up over several ticks).
    pub max_occurrences_per_tick: usize,
    /// Recent occurrences kept per schedule for the REST API.
    pub recent_kept: usize,
    /// Upcoming occurrences shown per schedule.
    pub upcoming_shown: usize,
    /// For tests only: the schedule clock runs this many times faster than the wall
    /// clock from `clock_anchor_ms` on (schedule time = anchor + (now − anchor) ×
    /// speed), so a test sees a minute's recurrence every second. Every instance must
    /// use the same values. 1 (the default) is the wall clock.
    pub clock_speed: u32,
    /// See `clock_speed`: the wall-clock instant (ms) where the two clocks agree.
    pub clock_anchor_ms: i64,
}

impl Default for SchedulesConfig {
    fn default() -> Self {
        Self {
            tick_ms: 250,
            default_grace_ms: 5 * 60_000,
            default_ttl_ms: 24 * 60 * 60_000,
            max_per_tenant: 1000,
            max_occurrences_per_tick: 500,
            recent_kept: 50,
            upcoming_shown: 5,
            clock_speed: 1,
            clock_anchor_ms: 0,
        }
    }
}

/// The schedule clock (`clock_speed`, `clock_anchor_ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleClock {
    speed: i64,
    anchor_ms: i64,
}

impl ScheduleClock {
    pub fn new(config: &SchedulesConfig) -> Self {
        Self {
            speed: i64::from(config.clock_speed.max(1)),
            anchor_ms: config.clock_anchor_ms,
        }
    }

    /// Schedule time at wall-clock instant `wall_ms`.
    pub fn at(&self, wall_ms: i64) -> i64 {
        self.anchor_ms
            .saturating_add((wall_ms - self.anchor_ms).saturating_mul(self.speed))
    }

    pub fn now_ms(&self) -> i64 {
        self.at(fleetwatch_protocol::now_ms())
    }

    /// The wall-clock length of a schedule-time duration (at least 1 ms).
    pub fn wall_ms(&self, schedule_ms: i64) -> u64 {
        (schedule_ms / self.speed).max(1) as u64
    }
}
