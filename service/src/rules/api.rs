//! What the REST API does with rules: create, edit, delete and read them, always within
//! the caller's tenant (another tenant's rule is "not found"), and the actions an alarm
//! caused. Every instance running the role answers; writes are events on `iot.rules`,
//! which the owners act on.

use std::sync::Arc;

use fleetwatch_protocol::TenantId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::rule::{Compiled, Condition, RuleAction, RuleEvent, RuleEventBody, RuleSpec};
use super::state::{RuleState, RulesIndex};
use super::RulesConfig;
use crate::auth::Caller;
use crate::kafka::Producer;

/// Why a rules call failed; the REST API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no rule {0} is known")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooMany(String),
    #[error("{0}")]
    Unavailable(String),
}

/// The body of `POST /rules` and `PUT /rules/{id}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRule {
    #[serde(default)]
    pub name: String,
    /// Operators only: the tenant whose devices it acts on (without it, an operator's
    /// rule acts on every tenant's devices). A tenant's rule is its own tenant's.
    #[serde(default)]
    pub tenant: Option<String>,
    pub condition: Condition,
    pub action: RuleAction,
    #[serde(default)]
    pub dry_run: bool,
}

/// Longest prefix, selector, metric, name or command name a rule may carry.
const MAX_TEXT: usize = 256;

/// Whether a rule is acceptable.
pub fn check(new: &NewRule) -> Result<(), String> {
    let c = &new.condition;
    let texts = [
        ("name", Some(&new.name)),
        ("condition.device_prefix", c.device_prefix.as_ref()),
        ("condition.selector", c.selector.as_ref()),
        ("condition.metric", c.metric.as_ref()),
    ];
    for (field, text) in texts {
        if text.is_some_and(|t| t.len() > MAX_TEXT) {
            return Err(format!("{field} is longer than {MAX_TEXT} bytes"));
        }
    }
    Compiled::new(c).map_err(|e| format!("condition.{e}"))?;
    match &new.action {
        RuleAction::Command { name, .. } if name.is_empty() || name.len() > 128 => {
            Err("action.name must be 1 to 128 characters".into())
        }
        RuleAction::Job { command } => {
            crate::jobs::check_command(command).map_err(|e| format!("action.{e}"))
        }
        RuleAction::Notify { message: Some(m) } if m.len() > MAX_TEXT => {
            Err(format!("action.message is longer than {MAX_TEXT} bytes"))
        }
        _ => Ok(()),
    }
}

/// The rules of the deployment, for the REST API.
pub struct RulesApi {
    pub index: Arc<RulesIndex>,
    pub producer: Producer,
    pub topic: String,
    pub config: RulesConfig,
}

impl RulesApi {
    /// The tenant a new rule of `caller` acts for.
    fn tenant_of(
        &self,
        caller: &Caller,
        named: Option<&str>,
    ) -> Result<Option<TenantId>, RulesError> {
        let Some(named) = named else {
            return Ok(caller.tenant.clone());
        };
        let tenant =
            TenantId::parse(named).map_err(|e| RulesError::BadRequest(format!("tenant: {e}")))?;
        if !caller.sees(Some(&tenant)) {
            return Err(RulesError::BadRequest(
                "tenant: a tenant's rule acts on its own devices only".into(),
            ));
        }
        Ok(Some(tenant))
    }

    /// Check and record a new rule, and return it.
    pub async fn create(&self, caller: &Caller, new: NewRule) -> Result<Value, RulesError> {
        check(&new).map_err(RulesError::BadRequest)?;
        let tenant = self.tenant_of(caller, new.tenant.as_deref())?;
        let mine = self.index.with_rules(|all| {
            (all.values())
                .filter(|r| r.spec.tenant == tenant && r.deleted.is_none())
                .count()
        });
        if mine >= self.config.max_per_tenant {
            return Err(RulesError::TooMany(format!(
                "{mine} rules exist for this tenant; the limit is {} (rules.max_per_tenant)",
                self.config.max_per_tenant
            )));
        }
        let rule_id = format!(
            "{:x}{:04x}",
            fleetwatch_protocol::now_ms(),
            rand::random::<u16>()
        );
        let spec = RuleSpec {
            rule_id: rule_id.clone(),
            tenant,
            name: new.name,
            condition: new.condition,
            action: new.action,
            dry_run: new.dry_run,
            revision: 0,
        };
        self.record(&rule_id, RuleEventBody::Saved(Box::new(spec)))
            .await?;
        self.get(caller, &rule_id)
    }

    /// Replace a rule's condition, action and dry-run flag (its tenant stays).
    pub async fn edit(
        &self,
        caller: &Caller,
        rule_id: &str,
        new: NewRule,
    ) -> Result<Value, RulesError> {
        let current = self.live(caller, rule_id)?;
        check(&new).map_err(RulesError::BadRequest)?;
        if let Some(named) = new.tenant.as_deref() {
            if current.spec.tenant.as_ref().map(TenantId::as_str) != Some(named) {
                return Err(RulesError::BadRequest(
                    "a rule's tenant cannot change".into(),
                ));
            }
        }
        let spec = RuleSpec {
            rule_id: rule_id.to_owned(),
            tenant: current.spec.tenant.clone(),
            name: new.name,
            condition: new.condition,
            action: new.action,
            dry_run: new.dry_run,
            revision: current.spec.revision + 1,
        };
        self.record(rule_id, RuleEventBody::Saved(Box::new(spec)))
            .await?;
        self.get(caller, rule_id)
    }

    /// Stop a rule: it decides nothing from now on (its actions stay readable).
    pub async fn delete(&self, caller: &Caller, rule_id: &str) -> Result<Value, RulesError> {
        self.live(caller, rule_id)?;
        let by = caller.subject.clone();
        self.record(rule_id, RuleEventBody::Deleted { by }).await?;
        self.get(caller, rule_id)
    }

    fn visible(&self, caller: &Caller, rule_id: &str) -> Result<RuleState, RulesError> {
        self.index
            .get(rule_id)
            .filter(|r| caller.sees(r.spec.tenant.as_ref()))
            .ok_or_else(|| RulesError::NotFound(rule_id.to_owned()))
    }

    fn live(&self, caller: &Caller, rule_id: &str) -> Result<RuleState, RulesError> {
        let rule = self.visible(caller, rule_id)?;
        if rule.deleted.is_some() {
            return Err(RulesError::Conflict(format!("rule {rule_id} was deleted")));
        }
        Ok(rule)
    }

    /// One rule with its counts and recent actions.
    pub fn get(&self, caller: &Caller, rule_id: &str) -> Result<Value, RulesError> {
        Ok(self.index.view(&self.visible(caller, rule_id)?))
    }

    /// The caller's rules by id (with deleted ones, if asked), a page at a time.
    pub fn list(&self, caller: &Caller, deleted: bool, after: Option<&str>, limit: usize) -> Value {
        let mut rules: Vec<RuleState> = self.index.with_rules(|all| {
            (all.values())
                .filter(|r| caller.sees(r.spec.tenant.as_ref()))
                .filter(|r| deleted || r.deleted.is_none())
                .filter(|r| after.is_none_or(|a| r.spec.rule_id.as_str() > a))
                .cloned()
                .collect()
        });
        rules.sort_by(|a, b| a.spec.rule_id.cmp(&b.spec.rule_id));
        let next = (rules.len() > limit).then(|| rules[limit - 1].spec.rule_id.clone());
        rules.truncate(limit);
        let rules: Vec<Value> = rules.iter().map(|r| self.index.view(r)).collect();
        json!({"rules": rules, "next": next})
    }

    async fn record(&self, rule_id: &str, body: RuleEventBody) -> Result<(), RulesError> {
        let event = RuleEvent {
            rule_id: rule_id.to_owned(),
            at_ms: fleetwatch_protocol::now_ms(),
            body,
        };
        let payload = serde_json::to_vec(&event).expect("rule events serialize");
        self.producer
            .enqueue(&self.topic, rule_id, &payload)
            .await
            .confirmed()
            .await
            .map_err(|e| RulesError::Unavailable(format!("recording the rule failed: {e}")))?;
        self.index.apply_rule(&event);
        Ok(())
    }
}
