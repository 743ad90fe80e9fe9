use serde::{Deserialize, Serialize};

/// The devices role: one actor per device. Section `[devices]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesConfig {
    /// Mailbox capacity of each device actor. When a mailbox is full the Kafka consumer
    /// waits (backpressure): nothing is dropped, consumption slows down.
    pub mailbox_capacity: usize,
    /// Threads (actix arbiters) the actors are spread over; 0 means one per CPU core.
    /// The role's consumer runs on the first: with one, it hands each record to its
    /// actor and gets the answer without waking another thread (about 15% of the
    /// service's CPU at 10,000 readings/s, docs/benchmarks.md). More pods, not more
    /// arbiters, is how the role grows.
    pub arbiters: usize,
    /// An actor that handled nothing for this long (ms) and has no command waiting is
    /// stopped; its twin stays in `iot.device-state` and the next message brings it back.
    pub passivate_after_ms: u64,
    /// Capacity of the MQTT client's request queue for messages to devices. When full,
    /// a command publish is counted as dropped and retried by the resend rule.
    pub downlink_queue: usize,
    /// The rules every twin follows: section `[devices.twin]`.
    pub twin: TwinRules,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            mailbox_capacity: 64,
            arbiters: 1,
            passivate_after_ms: 10 * 60 * 1000,
            downlink_queue: 1024,
            twin: TwinRules::default(),
        }
    }
}

/// The rules every twin follows. Section `[devices.twin]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TwinRules {
    /// A device heard nothing from for this long (ms) is marked offline (cause
    /// `silence`). The broker's Last Will covers dropped connections sooner; this covers
    /// devices that stay connected but stop working.
    pub offline_after_ms: u64,
    /// A command not acknowledged this long after it was sent (ms) is sent again; each
    /// further attempt waits twice as long, up to `max_resend_after_ms`.
    pub resend_after_ms: u64,
    pub max_resend_after_ms: u64,
    /// Commands that may wait (queued, sent or acked) per device; more get 429.
    pub max_pending_commands: usize,
    /// Finished commands kept in the twin (and so readable, and their idempotency keys
    /// honoured), newest first.
    pub kept_finished_commands: usize,
}

impl Default for TwinRules {
    fn default() -> Self {
        Self {
            offline_after_ms: 90_000,
            resend_after_ms: 5_000,
            max_resend_after_ms: 5 * 60 * 1000,
            max_pending_commands: 16,
            kept_finished_commands: 16,
        }
    }
}
