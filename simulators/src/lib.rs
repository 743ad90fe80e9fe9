//! The fleetwatch device simulator: N devices over MQTT with realistic signals, injected
//! anomalies with ground truth, and the tools to measure what the service made of them (an
//! alert listener and the evaluation that matches alerts to injected anomalies).

pub mod anomaly;
pub mod config;
pub mod device;
pub mod evaluate;
pub mod fleet;
pub mod listener;
pub mod reviewer;
pub mod signal;

pub use anomaly::{AnomalyKind, Injected};
pub use config::SimConfig;
pub use evaluate::{evaluate, Evaluation};
pub use fleet::{run_fleet, FleetStats};
pub use listener::{AlarmFeed, AlarmLog, AlertListener, JobNotice, ReceivedAlert};
pub use reviewer::{AlarmReviewer, Review, ReviewerConfig};
