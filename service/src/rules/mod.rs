//! Alarm rules (docs/rules.md): per tenant, a condition on alarms (severity, how long
//! active, device prefix or twin selector, metric) and the action it takes on the
//! alarm's device (a command such as safe mode, a fleet job, or a notification through
//! the tenant's webhooks), with safeguards: at most `rules.max_actions_per_device`
//! actions per device per window, counted durably from the actions journal; a dry-run
//! mode that records what it would have done; every decision journaled with the alarm
//! that caused it (`GET /alarms/{id}/actions`); a rule acts on its tenant's devices only.
//!
//! - [`rule`]: rules, conditions (pure matching), actions and the journal's records;
//! - [`limit`]: the per-device limit (pure);
//! - [`state`]: every rule, every action and the active alarms, as read from Kafka;
//! - [`owner`]: who decides and acts, recording before acting; [`perform`]: acting;
//! - [`api`]: what the REST API does with rules.

pub mod api;
mod config;
pub mod limit;
pub mod owner;
pub mod perform;
mod role;
pub mod rule;
pub mod state;

pub use api::{NewRule, RulesApi, RulesError};
pub use config::RulesConfig;
pub use role::{read_actions, ROLE};

#[cfg(test)]
mod tests;
