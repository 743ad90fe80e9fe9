//! The per-device limit: at most `max` actions taken on a device within a sliding
//! window, whatever rules take them. Fed from the actions journal (every `performed`
//! record, each counted once by its action id), so rebuilding it after a restart by
//! reading the journal gives the same counts: the limit is durable. Pure.

use std::collections::{HashMap, HashSet, VecDeque};

use fleetwatch_protocol::DeviceId;

/// Actions taken per device within the window.
#[derive(Debug, Default)]
pub struct DeviceLimit {
    max: usize,
    window_ms: i64,
    /// Device → instants of its actions, oldest first.
    taken: HashMap<DeviceId, VecDeque<i64>>,
    /// Action ids counted (a record read twice counts once).
    counted: HashSet<String>,
}

impl DeviceLimit {
    pub fn new(max: u32, window_ms: u64) -> Self {
        Self {
            max: max as usize,
            window_ms: window_ms.min(i64::MAX as u64) as i64,
            ..Self::default()
        }
    }

    /// Count action `action_id`, taken on `device` at `at_ms`.
    pub fn note(&mut self, device: &DeviceId, action_id: &str, at_ms: i64) {
        if !self.counted.insert(action_id.to_owned()) {
            return;
        }
        let taken = self.taken.entry(device.clone()).or_default();
        let at = taken.partition_point(|t| *t <= at_ms);
        taken.insert(at, at_ms);
    }

    /// Actions taken on `device` within the window ending at `now_ms`.
    pub fn count(&self, device: &DeviceId, now_ms: i64) -> usize {
        let since = now_ms.saturating_sub(self.window_ms);
        self.taken
            .get(device)
            .map_or(0, |taken| taken.iter().filter(|t| **t > since).count())
    }

    /// Whether one more action may be taken on `device` at `now_ms`.
    pub fn admits(&self, device: &DeviceId, now_ms: i64) -> bool {
        self.count(device, now_ms) < self.max
    }

    /// Forget actions older than the window ending at `now_ms` (their ids stay counted:
    /// a record read again late must not count again).
    pub fn prune(&mut self, now_ms: i64) {
        let since = now_ms.saturating_sub(self.window_ms);
        self.taken.retain(|_, taken| {
            while taken.front().is_some_and(|t| *t <= since) {
                taken.pop_front();
            }
            !taken.is_empty()
        });
    }
}
