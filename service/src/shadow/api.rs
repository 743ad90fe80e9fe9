//! What the REST API does with the model registry (operators only: `http/guard.rs`).
//! Every change is checked against the registry as this instance holds it, recorded on
//! `iot.models` (the journal, with who and when), and answered once this instance's
//! reader applied it, so the answer shows it.

use std::sync::Arc;
use std::time::Duration;

use fleetwatch_protocol::{now_ms, ModelEvent, ModelEventBody, ShadowScope, TenantId};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ModelRegistry, RegistryError, ShadowConfig};
use crate::kafka::Producer;

/// The one key of `iot.models`: one partition holds the registry's whole log, in order.
pub const REGISTRY_KEY: &str = "registry";

/// Why a registry call failed; the REST API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error(transparent)]
    Refused(#[from] RegistryError),
    #[error("{0}")]
    Unavailable(String),
}

/// The body of `POST /models`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCandidate {
    pub model_id: String,
    /// The model configuration: the backfill's candidate file as JSON (`trainer`,
    /// `scorer`; unset fields are the defaults).
    #[serde(default = "empty_object")]
    pub config: Value,
}

fn empty_object() -> Value {
    json!({})
}

/// The body of `POST /models/{id}/promote` and `POST /models/rollback`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// One tenant; none: the fleet.
    #[serde(default)]
    pub tenant: Option<TenantId>,
}

/// The registry, for the REST API.
pub struct ModelsApi {
    pub registry: Arc<ModelRegistry>,
    pub producer: Producer,
    pub topic: String,
    pub config: ShadowConfig,
}

impl ModelsApi {
    /// Every candidate with its state, the promotions and the recent journal.
    pub fn list(&self) -> Value {
        self.registry.read(|r| r.describe())
    }

    pub fn get(&self, model_id: &str) -> Result<Value, ModelsError> {
        self.registry.read(|r| {
            let candidate = r
                .get(model_id)
                .ok_or_else(|| RegistryError::NotFound(model_id.to_owned()))?;
            Ok(r.describe_one(candidate))
        })
    }

    pub async fn create(&self, by: &str, new: NewCandidate) -> Result<Value, ModelsError> {
        let created = self.registry.read(|r| r.created());
        if created >= self.config.max_created {
            return Err(RegistryError::Conflict(format!(
                "{created} candidates exist; the limit is {} (shadow.max_created)",
                self.config.max_created
            ))
            .into());
        }
        let model_id = new.model_id.clone();
        let body = ModelEventBody::Created {
            model_id: new.model_id,
            config: new.config,
        };
        self.record(by, body).await?;
        self.get(&model_id)
    }

    pub async fn start_shadow(
        &self,
        by: &str,
        model_id: &str,
        scope: ShadowScope,
    ) -> Result<Value, ModelsError> {
        self.within_cap(model_id)?;
        let body = ModelEventBody::ShadowStarted {
            model_id: model_id.to_owned(),
            scope,
        };
        self.record(by, body).await?;
        self.get(model_id)
    }

    pub async fn stop_shadow(&self, by: &str, model_id: &str) -> Result<Value, ModelsError> {
        let body = ModelEventBody::ShadowStopped {
            model_id: model_id.to_owned(),
        };
        self.record(by, body).await?;
        self.get(model_id)
    }

    pub async fn promote(
        &self,
        by: &str,
        model_id: &str,
        scope: Scope,
    ) -> Result<Value, ModelsError> {
        self.within_cap(model_id)?;
        let body = ModelEventBody::Promoted {
            model_id: model_id.to_owned(),
            tenant: scope.tenant,
        };
        self.record(by, body).await?;
        Ok(self.list())
    }

    pub async fn rollback(&self, by: &str, scope: Scope) -> Result<Value, ModelsError> {
        let body = ModelEventBody::RolledBack {
            tenant: scope.tenant,
        };
        self.record(by, body).await?;
        Ok(self.list())
    }

    /// Refuse a change that would make more than `max_candidates` candidates cost
    /// training at once.
    fn within_cap(&self, model_id: &str) -> Result<(), ModelsError> {
        let active = self.registry.read(|r| {
            let mut active = r.active();
            if r.get(model_id).is_some() {
                active.insert(model_id);
            }
            active.len()
        });
        if active > self.config.max_candidates {
            return Err(RegistryError::Conflict(format!(
                "{active} candidates would be trained at once; the limit is {} (shadow.max_candidates): stop a shadow first",
                self.config.max_candidates
            ))
            .into());
        }
        Ok(())
    }

    /// Check `body`, record it with who and when, and wait until this instance applied
    /// it.
    async fn record(&self, by: &str, body: ModelEventBody) -> Result<(), ModelsError> {
        self.registry.read(|r| r.check(&body))?;
        let event = ModelEvent {
            at_ms: now_ms(),
            by: by.to_owned(),
            body,
        };
        let payload = serde_json::to_vec(&event).expect("wire types serialize");
        let (_, offset) = self
            .producer
            .enqueue(&self.topic, REGISTRY_KEY, &payload)
            .await
            .confirmed_at()
            .await
            .map_err(|e| ModelsError::Unavailable(format!("recording the change: {e}")))?;
        let timeout = Duration::from_millis(self.config.apply_timeout_ms);
        if !self.registry.wait_applied(offset, timeout).await {
            return Err(ModelsError::Unavailable(
                "the change is recorded but not yet read back here; list the models shortly".into(),
            ));
        }
        Ok(())
    }
}
