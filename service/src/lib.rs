//! fleetwatch: actor-based IoT telemetry and anomaly detection.
//!
//! One folder per component, each with its configuration in `config.rs`:
//! - [`ingest`]: MQTT → `iot.telemetry` / `iot.dlq`
//! - [`devices`]: one actix actor per device, fed from `iot.telemetry`
//! - [`trainer`]: online models → `iot.model-params`
//! - [`scorer`]: scores telemetry with the latest params → `iot.alerts`
//! - [`alerts`]: WebSocket push of `iot.alerts`
//! - [`jobs`]: fleet jobs, rolled out in waves with abort criteria
//! - [`storage`]: telemetry, scores, alerts and twin events → a time-series store
//! - [`http`]: REST, Prometheus metrics and the live page
//! - [`kafka`], [`mqtt`]: the plumbing every role shares
//! - [`credentials`]: devices' MQTT credentials and ACLs on the broker (dynamic security)
//! - [`secret`]: secrets that print as `***`, and `*_file` settings
//! - [`backfill`]: replays history through a candidate model and reports (`fleetwatch backfill`)
//! - [`app`]: starts the roles a process runs; [`demo`] wraps it with embedded brokers.

pub mod alerts;
pub mod app;
pub mod archive;
pub mod auth;
pub mod backfill;
pub mod credentials;
pub mod demo;
pub mod devices;
pub mod error;
pub mod http;
pub mod ingest;
pub mod jobs;
pub mod kafka;
pub mod metrics;
pub mod mqtt;
pub mod rules;
pub mod schedules;
pub mod scorer;
pub mod secret;
pub mod settings;
pub mod shadow;
pub mod storage;
pub mod tenancy;
pub mod tls;
pub mod trainer;
pub mod webhooks;

pub use error::Error;
pub use tokio_util::sync::CancellationToken as Shutdown;
