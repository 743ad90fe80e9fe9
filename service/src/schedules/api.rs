//! What the REST API does with schedules: create, edit, delete and read them, always
//! within the caller's tenant (another tenant's schedule is "not found"). Every instance
//! running the role answers; writes are events on `iot.schedules`, which the schedule's
//! owner acts on.

use std::sync::Arc;

use fleetwatch_protocol::{
    DeviceId, ScheduleAction, ScheduleEvent, ScheduleEventBody, ScheduleSpec, ScheduleWhen,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::plan::Recurrence;
use super::state::{ScheduleIndex, ScheduleState};
use super::{ScheduleClock, SchedulesConfig};
use crate::auth::Caller;
use crate::kafka::Producer;
use crate::tenancy::Directory;

/// Why a schedules call failed; the REST API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum SchedulesError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no schedule {0} is known")]
    NotFound(String),
    /// The device is unknown, or not the caller's tenant's (worded alike).
    #[error("{0}")]
    NoDevice(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooMany(String),
    #[error("{0}")]
    Unavailable(String),
}

/// The body of `POST /schedules` and `PUT /schedules/{id}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    pub device_id: DeviceId,
    pub action: ScheduleAction,
    pub when: ScheduleWhen,
    #[serde(default)]
    pub grace_ms: Option<u64>,
    #[serde(default)]
    pub ttl_ms: Option<u64>,
}

/// Largest desired-state patch a schedule may carry (serialized).
const MAX_PATCH_BYTES: usize = 16 * 1024;

fn check(new: &NewSchedule) -> Result<(), String> {
    Recurrence::new(&new.when)?;
    match &new.action {
        ScheduleAction::Command { name, .. } if name.is_empty() || name.len() > 128 => {
            Err("action.name must be 1 to 128 characters".into())
        }
        ScheduleAction::Desired { desired } if desired.is_empty() => {
            Err("action.desired must patch at least one key".into())
        }
        ScheduleAction::Desired { desired }
            if serde_json::to_vec(desired).map_or(0, |v| v.len()) > MAX_PATCH_BYTES =>
        {
            Err(format!(
                "action.desired is larger than {MAX_PATCH_BYTES} bytes"
            ))
        }
        _ if new.ttl_ms == Some(0) => Err("ttl_ms must be at least 1".into()),
        ScheduleAction::Job { command } => {
            crate::jobs::check_command(command).map_err(|e| format!("action.{e}"))
        }
        _ => Ok(()),
    }
}

/// The schedules of the deployment, for the REST API.
pub struct SchedulesApi {
    pub index: Arc<ScheduleIndex>,
    pub directory: Arc<Directory>,
    pub producer: Producer,
    pub topic: String,
    pub config: SchedulesConfig,
    pub clock: ScheduleClock,
}

impl SchedulesApi {
    /// The device's tenant, when the caller may schedule it (a tenant's user: its own
    /// known devices only).
    fn device_tenant(
        &self,
        caller: &Caller,
        device_id: &DeviceId,
    ) -> Result<Option<fleetwatch_protocol::TenantId>, SchedulesError> {
        let tenant = self.directory.tenant_of(device_id);
        let known = caller.is_operator() || self.directory.knows(device_id);
        if !known || !caller.sees(tenant.as_ref()) {
            return Err(SchedulesError::NoDevice(crate::auth::no_such_device(
                device_id,
            )));
        }
        Ok(tenant)
    }

    /// Check and record a new schedule, and return it.
    pub async fn create(&self, caller: &Caller, new: NewSchedule) -> Result<Value, SchedulesError> {
        check(&new).map_err(SchedulesError::BadRequest)?;
        self.device_tenant(caller, &new.device_id)?;
        let mine = self.index.with_schedules(|all| {
            all.values()
                .filter(|s| s.spec.tenant == caller.tenant && s.deleted.is_none())
                .count()
        });
        if mine >= self.config.max_per_tenant {
            return Err(SchedulesError::TooMany(format!(
                "{mine} schedules exist for this tenant; the limit is {} (schedules.max_per_tenant)",
                self.config.max_per_tenant
            )));
        }
        let schedule_id = format!(
            "{:x}{:04x}",
            fleetwatch_protocol::now_ms(),
            rand::random::<u16>()
        );
        let spec = self.spec(caller, schedule_id.clone(), new, 0);
        self.record(&schedule_id, ScheduleEventBody::Saved(Box::new(spec)))
            .await?;
        self.get(caller, &schedule_id)
    }

    fn spec(
        &self,
        caller: &Caller,
        schedule_id: String,
        new: NewSchedule,
        revision: u32,
    ) -> ScheduleSpec {
        ScheduleSpec {
            schedule_id,
            tenant: caller.tenant.clone(),
            device_id: new.device_id,
            action: new.action,
            when: new.when,
            grace_ms: new.grace_ms.unwrap_or(self.config.default_grace_ms),
            ttl_ms: new.ttl_ms,
            revision,
        }
    }

    /// Replace a schedule's spec: occurrences from now on follow it.
    pub async fn edit(
        &self,
        caller: &Caller,
        schedule_id: &str,
        new: NewSchedule,
    ) -> Result<Value, SchedulesError> {
        let current = self.live(caller, schedule_id)?;
        check(&new).map_err(SchedulesError::BadRequest)?;
        self.device_tenant(caller, &new.device_id)?;
        let mut spec = self.spec(
            caller,
            schedule_id.to_owned(),
            new,
            current.spec.revision + 1,
        );
        spec.tenant = current.spec.tenant.clone();
        self.record(schedule_id, ScheduleEventBody::Saved(Box::new(spec)))
            .await?;
        self.get(caller, schedule_id)
    }

    /// Stop a schedule: no occurrence from now on (its history stays readable).
    pub async fn delete(
        &self,
        caller: &Caller,
        schedule_id: &str,
    ) -> Result<Value, SchedulesError> {
        self.live(caller, schedule_id)?;
        let by = caller.subject.clone();
        self.record(schedule_id, ScheduleEventBody::Deleted { by })
            .await?;
        self.get(caller, schedule_id)
    }

    fn visible(&self, caller: &Caller, schedule_id: &str) -> Result<ScheduleState, SchedulesError> {
        self.index
            .get(schedule_id)
            .filter(|s| caller.sees(s.spec.tenant.as_ref()))
            .ok_or_else(|| SchedulesError::NotFound(schedule_id.to_owned()))
    }

    fn live(&self, caller: &Caller, schedule_id: &str) -> Result<ScheduleState, SchedulesError> {
        let schedule = self.visible(caller, schedule_id)?;
        if schedule.deleted.is_some() {
            return Err(SchedulesError::Conflict(format!(
                "schedule {schedule_id} was deleted"
            )));
        }
        Ok(schedule)
    }

    /// One schedule with its recent and next occurrences.
    pub fn get(&self, caller: &Caller, schedule_id: &str) -> Result<Value, SchedulesError> {
        let schedule = self.visible(caller, schedule_id)?;
        let mut view = schedule.view(self.config.upcoming_shown);
        view["now_ms"] = json!(self.clock.now_ms());
        Ok(view)
    }

    /// The caller's schedules by id (of one device, and with deleted ones, if asked), a
    /// page at a time.
    pub fn list(
        &self,
        caller: &Caller,
        device: Option<&str>,
        deleted: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Value {
        let mut ids: Vec<(String, Value)> = self.index.with_schedules(|all| {
            all.values()
                .filter(|s| caller.sees(s.spec.tenant.as_ref()))
                .filter(|s| device.is_none_or(|d| s.spec.device_id.as_str() == d))
                .filter(|s| deleted || s.deleted.is_none())
                .filter(|s| after.is_none_or(|a| s.spec.schedule_id.as_str() > a))
                .map(|s| {
                    (
                        s.spec.schedule_id.clone(),
                        s.view(self.config.upcoming_shown),
                    )
                })
                .collect()
        });
        ids.sort_by(|a, b| a.0.cmp(&b.0));
        let next = (ids.len() > limit).then(|| ids[limit - 1].0.clone());
        ids.truncate(limit);
        let schedules: Vec<Value> = ids.into_iter().map(|(_, v)| v).collect();
        json!({"schedules": schedules, "next": next})
    }

    async fn record(
        &self,
        schedule_id: &str,
        body: ScheduleEventBody,
    ) -> Result<(), SchedulesError> {
        let event = ScheduleEvent {
            schedule_id: schedule_id.to_owned(),
            at_ms: self.clock.now_ms(),
            body,
        };
        let payload = serde_json::to_vec(&event).expect("schedule events serialize");
        let (partition, _) = self
            .producer
            .enqueue(&self.topic, schedule_id, &payload)
            .await
            .confirmed_at()
            .await
            .map_err(|e| {
                SchedulesError::Unavailable(format!("recording the schedule failed: {e}"))
            })?;
        self.index.apply(&event, partition);
        Ok(())
    }
}
