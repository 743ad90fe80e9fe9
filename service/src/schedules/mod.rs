//! Schedules (docs/schedules.md): a command or a desired-state patch sent to one device
//! at a time or on a cron recurrence in a named time zone, each occurrence recorded
//! before its command is sent, once, whatever restarts or instances there are.
//!
//! - [`cron`]: the recurrence syntax; [`plan`]: occurrences and their outcomes (pure);
//! - [`state`]: a schedule's state, the fold of its events on `iot.schedules`;
//! - [`owner`]: who fires a schedule, recording before sending;
//! - [`api`]: what the REST API does with schedules.

pub mod api;
mod config;
pub mod cron;
pub mod owner;
pub mod plan;
mod role;
pub mod state;

pub use api::{NewSchedule, SchedulesApi, SchedulesError};
pub use config::{ScheduleClock, SchedulesConfig};
pub use role::ROLE;

#[cfg(test)]
mod tests;
