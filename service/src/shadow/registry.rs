//! The model registry as a fold of `iot.models` (pure: no I/O). Every instance that
//! reads the log ends with the same registry; an event the registry would refuse (a
//! race between two operators, say) changes nothing, on every instance alike.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use fleetwatch_models::production::{self, EpisodeRules};
use fleetwatch_protocol::{
    check_model_id, DeviceId, ModelEvent, ModelEventBody, ShadowScope, TenantId, PRODUCTION_MODEL,
};
use serde_json::{json, Value};

use crate::backfill::ModelRun;

/// Journal entries kept in memory for `GET /models` (the log keeps them all).
const KEPT_JOURNAL: usize = 200;

/// Why a change is refused.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no model {0} is known")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

/// One candidate model.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub model_id: String,
    /// Its configuration, as created (the backfill's candidate file).
    pub run: ModelRun,
    pub config: Arc<production::Config>,
    pub rules: EpisodeRules,
    pub created_ms: i64,
    pub created_by: String,
    /// Where it runs in shadow, if it does.
    pub shadow: Option<ShadowScope>,
}

/// Every candidate, every promotion and the recent journal.
#[derive(Debug, Default)]
pub struct Registry {
    candidates: BTreeMap<String, Candidate>,
    /// Promotions of the fleet (`None`) and of each tenant, oldest first: the last
    /// decides, a rollback removes it.
    promotions: BTreeMap<Option<TenantId>, Vec<String>>,
    journal: VecDeque<ModelEvent>,
}

impl Registry {
    /// Apply one event of the log; a refused one changes nothing (false).
    pub fn apply(&mut self, event: &ModelEvent) -> bool {
        if self.check(&event.body).is_err() {
            return false;
        }
        match &event.body {
            ModelEventBody::Created { model_id, config } => {
                let Ok(run) = parse_run(config) else {
                    return false;
                };
                let candidate = Candidate {
                    model_id: model_id.clone(),
                    config: Arc::new(run.trainer.model.clone()),
                    rules: run
                        .rules()
                        .unwrap_or_else(|_| production::episode_rules(&run.trainer.model)),
                    run,
                    created_ms: event.at_ms,
                    created_by: event.by.clone(),
                    shadow: None,
                };
                self.candidates.insert(model_id.clone(), candidate);
            }
            ModelEventBody::ShadowStarted { model_id, scope } => {
                self.candidates.get_mut(model_id).expect("checked").shadow = Some(scope.clone());
            }
            ModelEventBody::ShadowStopped { model_id } => {
                self.candidates.get_mut(model_id).expect("checked").shadow = None;
            }
            ModelEventBody::Promoted { model_id, tenant } => {
                let stack = self.promotions.entry(tenant.clone()).or_default();
                stack.push(model_id.clone());
            }
            ModelEventBody::RolledBack { tenant } => {
                self.promotions.get_mut(tenant).expect("checked").pop();
            }
        }
        self.journal.push_back(event.clone());
        if self.journal.len() > KEPT_JOURNAL {
            self.journal.pop_front();
        }
        true
    }

    /// Whether `body` may be applied now.
    pub fn check(&self, body: &ModelEventBody) -> Result<(), RegistryError> {
        let bad = |text: String| Err(RegistryError::BadRequest(text));
        match body {
            ModelEventBody::Created { model_id, config } => {
                check_model_id(model_id).map_err(RegistryError::BadRequest)?;
                if model_id == PRODUCTION_MODEL || self.candidates.contains_key(model_id) {
                    return Err(RegistryError::Conflict(format!(
                        "model {model_id} exists already"
                    )));
                }
                parse_run(config)
                    .map(|_| ())
                    .map_err(RegistryError::BadRequest)
            }
            ModelEventBody::ShadowStarted { model_id, scope } => {
                self.candidate(model_id)?;
                match scope.sample_percent {
                    Some(percent) if !(1..=100).contains(&percent) => {
                        bad("scope.sample_percent must be 1 to 100".into())
                    }
                    _ => Ok(()),
                }
            }
            ModelEventBody::ShadowStopped { model_id } => match &self.candidate(model_id)?.shadow {
                Some(_) => Ok(()),
                None => Err(RegistryError::Conflict(format!(
                    "model {model_id} is not in shadow"
                ))),
            },
            ModelEventBody::Promoted { model_id, .. } if model_id == PRODUCTION_MODEL => Ok(()),
            ModelEventBody::Promoted { model_id, .. } => self.candidate(model_id).map(|_| ()),
            ModelEventBody::RolledBack { tenant } => {
                match self.promotions.get(tenant).is_some_and(|s| !s.is_empty()) {
                    true => Ok(()),
                    false => Err(RegistryError::Conflict(
                        "nothing was promoted for this scope: there is nothing to roll back".into(),
                    )),
                }
            }
        }
    }

    fn candidate(&self, model_id: &str) -> Result<&Candidate, RegistryError> {
        self.candidates
            .get(model_id)
            .ok_or_else(|| RegistryError::NotFound(model_id.to_owned()))
    }

    pub fn get(&self, model_id: &str) -> Option<&Candidate> {
        self.candidates.get(model_id)
    }

    pub fn created(&self) -> usize {
        self.candidates.len()
    }

    /// The model whose alerts reach the customers of `tenant`: its own promotion, else
    /// the fleet's, else production.
    pub fn promoted_for(&self, tenant: Option<&TenantId>) -> &str {
        let top = |key: Option<TenantId>| self.promotions.get(&key).and_then(|s| s.last());
        tenant
            .and_then(|tenant| top(Some(tenant.clone())))
            .or_else(|| top(None))
            .map_or(PRODUCTION_MODEL, String::as_str)
    }

    /// The model a rollback for `tenant` would restore.
    fn rollback_target(&self, tenant: Option<&TenantId>) -> &str {
        let fleet = self.promotions.get(&None).map_or(&[][..], Vec::as_slice);
        let own = tenant.and_then(|t| self.promotions.get(&Some(t.clone())));
        match own.map(Vec::as_slice) {
            Some([.., previous, _]) => previous,
            Some([_]) => fleet.last().map_or(PRODUCTION_MODEL, String::as_str),
            _ => match fleet {
                [.., previous, _] => previous,
                _ => PRODUCTION_MODEL,
            },
        }
    }

    /// The candidates a device of `tenant` is trained and scored with (production is
    /// always): those whose shadow covers it, the one promoted for it and the one a
    /// rollback would restore.
    pub fn models_for(&self, device_id: &DeviceId, tenant: Option<&TenantId>) -> Vec<&Candidate> {
        let promoted = self.promoted_for(tenant);
        let previous = self.rollback_target(tenant);
        self.candidates
            .values()
            .filter(|c| {
                c.model_id == promoted
                    || c.model_id == previous
                    || c.shadow
                        .as_ref()
                        .is_some_and(|s| s.covers(device_id, tenant))
            })
            .collect()
    }

    /// Candidates that cost training now: in shadow, promoted anywhere, or what a
    /// rollback anywhere would restore.
    pub fn active(&self) -> BTreeSet<&str> {
        let mut active: BTreeSet<&str> = (self.candidates.values())
            .filter(|c| c.shadow.is_some())
            .map(|c| c.model_id.as_str())
            .collect();
        for stack in self.promotions.values() {
            active.extend(stack.iter().rev().take(2).map(String::as_str));
        }
        active.remove(PRODUCTION_MODEL);
        active
    }

    /// Every candidate with its state, the promotions and the recent journal.
    pub fn describe(&self) -> Value {
        let candidates: Vec<Value> = self
            .candidates
            .values()
            .map(|c| self.describe_one(c))
            .collect();
        let promotions: BTreeMap<String, &Vec<String>> = (self.promotions.iter())
            .filter(|(_, stack)| !stack.is_empty())
            .map(|(tenant, stack)| (tenant.as_ref().map_or("*".into(), |t| t.to_string()), stack))
            .collect();
        json!({
            "production": PRODUCTION_MODEL,
            "fleet_promoted": self.promoted_for(None),
            "promotions": promotions,
            "candidates": candidates,
            "journal": self.journal,
        })
    }

    /// One candidate with its state: `shadow`, `promoted`, both or `idle`.
    pub fn describe_one(&self, c: &Candidate) -> Value {
        let promoted_for: Vec<String> = (self.promotions.iter())
            .filter(|(_, stack)| stack.last() == Some(&c.model_id))
            .map(|(tenant, _)| tenant.as_ref().map_or("*".into(), |t| t.to_string()))
            .collect();
        let state = match (c.shadow.is_some(), promoted_for.is_empty()) {
            (true, true) => "shadow",
            (true, false) => "shadow_and_promoted",
            (false, false) => "promoted",
            (false, true) => "idle",
        };
        json!({
            "model_id": c.model_id,
            "state": state,
            "shadow": c.shadow,
            "promoted_for": promoted_for,
            "config": c.run,
            "created_ms": c.created_ms,
            "created_by": c.created_by,
        })
    }
}

/// A candidate's configuration, checked like the backfill's candidate file.
pub fn parse_run(config: &Value) -> Result<ModelRun, String> {
    let run: ModelRun =
        serde_json::from_value(config.clone()).map_err(|e| format!("config: {e}"))?;
    run.check().map_err(|e| format!("config: {e}"))?;
    Ok(run)
}
