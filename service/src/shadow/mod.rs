//! Candidate models in shadow beside production (docs/shadow.md).
//!
//! - [`registry`]: the registry as the fold of `iot.models` (pure): candidates with
//!   their model configuration and shadow scope, promotions per tenant or fleet-wide,
//!   the journal;
//! - [`api`]: what the REST API does with it (operators only);
//! - this file: the registry every trainer and scorer instance holds, read whole from
//!   `iot.models` from the beginning.
//!
//! The trainer trains every model [`Registry::models_for`] names for a device beside the
//! production model, each published under its own key; the scorer scores each, sends
//! the alerts of the model [`Registry::promoted_for`] the device's tenant to
//! `iot.alerts` (customers) and the others' to `iot.shadow-alerts` (nobody's).

pub mod api;
mod config;
pub mod registry;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleetwatch_protocol::ModelEvent;
use parking_lot::{Mutex, RwLock};

pub use api::{ModelsApi, ModelsError};
pub use config::ShadowConfig;
pub use registry::{Candidate, Registry, RegistryError};

use crate::app::Launch;
use crate::kafka::{decode_record, ConsumerRole, HandleError, Loading, Record, RecordHandler};
use crate::metrics::Metrics;

/// The registry as this instance read it.
#[derive(Default)]
pub struct ModelRegistry {
    state: RwLock<Registry>,
    /// Whether any candidate was created: read per reading without the lock, since until
    /// one is, every device has production alone and production decides.
    candidates: AtomicBool,
    pub loading: Loading,
    /// The offset after the last record applied.
    applied: Mutex<i64>,
}

impl ModelRegistry {
    /// A registry read from an empty log: loaded, no candidate (unit tests, benchmarks).
    pub fn empty() -> Arc<Self> {
        let registry = Self::default();
        registry.loading.start(Default::default());
        Arc::new(registry)
    }

    pub fn read<T>(&self, read: impl FnOnce(&Registry) -> T) -> T {
        read(&self.state.read())
    }

    /// Whether any candidate exists. Candidates are never removed, so without one
    /// [`Registry::models_for`] names none for any device and [`Registry::promoted_for`]
    /// is production for every tenant.
    pub fn has_candidates(&self) -> bool {
        self.candidates.load(Ordering::Acquire)
    }

    /// Apply the record at `offset` (idempotent on the offset: a record is applied once).
    pub fn apply_at(&self, offset: i64, event: &ModelEvent) -> bool {
        let mut applied = self.applied.lock();
        if offset < *applied {
            return false;
        }
        *applied = offset + 1;
        let mut state = self.state.write();
        let changed = state.apply(event);
        self.candidates
            .store(state.created() > 0, Ordering::Release);
        changed
    }

    /// Wait until the record at `offset` is applied, up to `timeout`.
    pub async fn wait_applied(&self, offset: i64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while *self.applied.lock() <= offset {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// Reads `iot.models` into the registry.
pub struct RegistryLog {
    pub registry: Arc<ModelRegistry>,
    pub metrics: Arc<Metrics>,
}

impl RecordHandler for RegistryLog {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        if let Some(event) = decode_record::<ModelEvent>(record, "models", &self.metrics) {
            if !self.registry.apply_at(record.offset, &event) {
                tracing::info!(
                    offset = record.offset,
                    "model registry event refused by the fold"
                );
            }
        }
        self.registry
            .loading
            .reached(Some((record.partition, record.offset)));
        Ok(())
    }
}

/// The process's registry: started by the first role that needs it (trainer, scorer),
/// shared by the others and the REST API.
pub fn start(launch: &mut Launch<'_>) -> Arc<ModelRegistry> {
    if let Some(api) = &launch.models {
        return api.registry.clone();
    }
    let registry = Arc::new(ModelRegistry::default());
    let handler = RegistryLog {
        registry: registry.clone(),
        metrics: launch.metrics.clone(),
    };
    let started = registry.clone();
    let topic = launch.topics.models();
    launch.read_whole(
        "models-log",
        ConsumerRole::ModelLog,
        topic.clone(),
        handler,
        move |ends| started.loading.start(ends),
    );
    launch.models = Some(Arc::new(ModelsApi {
        registry: registry.clone(),
        producer: launch.producer.clone(),
        topic,
        config: launch.settings.shadow.clone(),
    }));
    registry
}

#[cfg(test)]
mod tests;
