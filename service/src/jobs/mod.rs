//! Fleet jobs (docs/jobs.md): a command rolled out to many devices in growing waves,
//! with a rate limit and soak times, one durable execution per (job, device), and
//! abort criteria (a failure ratio, and the canary criterion on alarm rates).
//!
//! - [`state`]: a job's state, the fold of its events on `iot.jobs`;
//! - [`plan`]: what a job does next (pure); [`canary`]: the canary test;
//! - [`fleet`]: the twins of the whole fleet, as jobs need them;
//! - [`owner`]: who runs a job, recording before sending;
//! - [`target`]: resolving ids, prefixes and selectors within a tenant;
//! - [`api`]: what the REST API does with jobs.

pub mod api;
pub mod canary;
mod config;
pub mod fleet;
pub mod owner;
pub mod plan;
mod role;
pub mod state;
pub mod target;

pub use api::{check_command, device_job, record_created, JobsApi, JobsError, NewJob};
pub use config::JobsConfig;
pub use role::ROLE;

#[cfg(test)]
mod tests;
