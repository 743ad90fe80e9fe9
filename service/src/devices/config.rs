use serde::{Deserialize, Serialize};

/// The devices role: one actor per device. Section `[devices]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesConfig {
    /// Mailbox capacity of each device actor. When a mailbox is full the Kafka consumer
    /// waits (backpressure): nothing is dropped, consumption slows down.
    pub mailbox_capacity: usize,
    /// Threads (actix arbiters) the actors are spread over; 0 means one per CPU core.
    pub arbiters: usize,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            mailbox_capacity: 64,
            arbiters: 0,
        }
    }
}
