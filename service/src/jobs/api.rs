//! What the REST API does with jobs: create one (resolving its target), cancel one, and
//! read them, always within the caller's tenant. Every instance running the jobs role
//! answers; writes are events on `iot.jobs`, which the job's owner acts on.

use std::collections::BTreeMap;
use std::sync::Arc;

use fleetwatch_protocol::{
    AbortCriteria, Canary, JobCommand, JobEvent, JobEventBody, JobSpec, Rollout,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::fleet::FleetView;
use super::state::{JobIndex, JobState};
use super::target::{resolve, scope, Target};
use super::JobsConfig;
use crate::auth::Caller;
use crate::kafka::Producer;
use crate::tenancy::Directory;

/// Why a jobs call failed; the REST API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no job {0} is known")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooMany(String),
    #[error("{0}")]
    Unavailable(String),
}

/// The body of `POST /jobs`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    pub command: JobCommand,
    pub target: Target,
    #[serde(default)]
    pub rollout: Option<Rollout>,
    #[serde(default)]
    pub abort: Option<AbortCriteria>,
    #[serde(default)]
    pub device_timeout_ms: Option<u64>,
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// Keep picking up devices that match the target (a prefix or selector) later.
    #[serde(default)]
    pub continuous: bool,
}

/// The jobs of the deployment, for the REST API.
pub struct JobsApi {
    pub index: Arc<JobIndex>,
    pub fleet: Arc<FleetView>,
    pub directory: Arc<Directory>,
    pub producer: Producer,
    pub topic: String,
    pub config: JobsConfig,
    pub counter: std::sync::atomic::AtomicU64,
}

fn check_rollout(rollout: &Rollout) -> Result<(), String> {
    let waves = &rollout.waves_percent;
    let increasing = waves.windows(2).all(|w| w[0] < w[1]);
    if waves.is_empty() || !increasing || waves[0] <= 0.0 || waves.last() != Some(&100.0) {
        return Err("rollout.waves_percent must increase, start above 0 and end at 100".into());
    }
    if rollout.max_per_minute == 0 {
        return Err("rollout.max_per_minute must be at least 1".into());
    }
    Ok(())
}

/// Largest configuration patch a job may carry (serialized).
const MAX_PATCH_BYTES: usize = 16 * 1024;

/// Whether a job's command is acceptable (also a schedule's or a rule's job).
pub fn check_command(command: &JobCommand) -> Result<(), String> {
    match command {
        JobCommand::Command { name, .. } if name.is_empty() || name.len() > 128 => {
            Err("command.name must be 1 to 128 characters".into())
        }
        JobCommand::Configuration { desired } if desired.is_empty() => {
            Err("command.desired must patch at least one key".into())
        }
        JobCommand::Configuration { desired }
            if serde_json::to_vec(desired).map_or(0, |v| v.len()) > MAX_PATCH_BYTES =>
        {
            Err(format!(
                "command.desired is larger than {MAX_PATCH_BYTES} bytes"
            ))
        }
        _ => Ok(()),
    }
}

fn check_abort(abort: &AbortCriteria) -> Result<(), String> {
    if !(0.0..=1.0).contains(&abort.failure_ratio) {
        return Err("abort.failure_ratio must be between 0 and 1".into());
    }
    if let Some(canary) = &abort.canary {
        if canary.ratio < 1.0 || !(canary.p_value > 0.0 && canary.p_value < 1.0) {
            return Err("abort.canary: ratio must be at least 1 and p_value in (0, 1)".into());
        }
    }
    Ok(())
}

impl JobsApi {
    fn defaults(&self) -> (Rollout, AbortCriteria) {
        let rollout = Rollout {
            waves_percent: vec![1.0, 5.0, 25.0, 100.0],
            soak_ms: self.config.default_soak_ms,
            max_per_minute: self.config.default_max_per_minute,
        };
        let abort = AbortCriteria {
            failure_ratio: 0.2,
            min_finished: 10,
            canary: Some(Canary {
                min_updated: 5,
                ratio: 3.0,
                p_value: 0.01,
            }),
        };
        (rollout, abort)
    }

    /// Check and resolve a new job, record it, and return it.
    pub async fn create(&self, caller: &Caller, new: NewJob) -> Result<Value, JobsError> {
        let (default_rollout, default_abort) = self.defaults();
        let rollout = new.rollout.unwrap_or(default_rollout);
        let abort = new.abort.unwrap_or(default_abort);
        check_rollout(&rollout).map_err(JobsError::BadRequest)?;
        check_abort(&abort).map_err(JobsError::BadRequest)?;
        check_command(&new.command).map_err(JobsError::BadRequest)?;
        if new.continuous && new.target.device_ids.is_some() {
            return Err(JobsError::BadRequest(
                "a continuous job targets a prefix or a selector, not fixed device_ids".into(),
            ));
        }
        let scope = scope(&new.target, caller).map_err(JobsError::BadRequest)?;
        let devices = resolve(&new.target, scope.as_deref(), &self.directory, &self.fleet)
            .map_err(JobsError::BadRequest)?;
        if devices.is_empty() {
            return Err(JobsError::BadRequest("the target matches no device".into()));
        }
        if devices.len() > self.config.max_targets {
            return Err(JobsError::BadRequest(format!(
                "the target matches {} devices; the limit is {} (jobs.max_targets)",
                devices.len(),
                self.config.max_targets
            )));
        }
        let active = self.index.with_jobs(|jobs| {
            jobs.values()
                .filter(|j| j.spec.tenant == caller.tenant && j.finished_ms.is_none())
                .count()
        });
        if active >= self.config.max_active_per_tenant {
            return Err(JobsError::TooMany(format!(
                "{active} jobs are running for this tenant; the limit is {} (jobs.max_active_per_tenant)",
                self.config.max_active_per_tenant
            )));
        }
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let job_id = format!(
            "{:x}{:x}{n}",
            fleetwatch_protocol::now_ms(),
            rand::random::<u16>()
        );
        let spec = JobSpec {
            job_id: job_id.clone(),
            tenant: caller.tenant.clone(),
            tenants: match caller.tenant {
                None => scope.unwrap_or_default(),
                Some(_) => Vec::new(),
            },
            created_by: caller.subject.clone(),
            command: new.command,
            target: serde_json::to_value(&new.target).unwrap_or_default(),
            devices,
            rollout,
            abort,
            device_timeout_ms: new
                .device_timeout_ms
                .unwrap_or(self.config.default_device_timeout_ms),
            ttl_ms: new.ttl_ms.unwrap_or(self.config.default_ttl_ms),
            continuous: new.continuous,
        };
        self.record(&job_id, JobEventBody::Created(Box::new(spec)))
            .await?;
        self.get(caller, &job_id, false)
    }

    /// Ask the job's owner to cancel it.
    pub async fn cancel(&self, caller: &Caller, job_id: &str) -> Result<Value, JobsError> {
        let job = self.visible(caller, job_id)?;
        if job.finished_ms.is_some() {
            return Err(JobsError::Conflict(format!(
                "job {job_id} has finished ({})",
                job.status()
            )));
        }
        let by = caller.subject.clone();
        self.record(job_id, JobEventBody::CancelRequested { by })
            .await?;
        self.get(caller, job_id, false)
    }

    async fn record(&self, job_id: &str, body: JobEventBody) -> Result<(), JobsError> {
        let event = JobEvent {
            job_id: job_id.to_owned(),
            at_ms: fleetwatch_protocol::now_ms(),
            body,
        };
        let payload = serde_json::to_vec(&event).expect("job events serialize");
        let (partition, _) = self
            .producer
            .enqueue(&self.topic, job_id, &payload)
            .await
            .confirmed_at()
            .await
            .map_err(|e| JobsError::Unavailable(format!("recording the job failed: {e}")))?;
        self.index.apply(&event, partition);
        Ok(())
    }

    fn visible(&self, caller: &Caller, job_id: &str) -> Result<JobState, JobsError> {
        self.index
            .get(job_id)
            .filter(|job| caller.is_operator() || job.spec.tenant == caller.tenant)
            .ok_or_else(|| JobsError::NotFound(job_id.to_owned()))
    }

    /// One job, with its executions when asked.
    pub fn get(&self, caller: &Caller, job_id: &str, executions: bool) -> Result<Value, JobsError> {
        Ok(summary(&self.visible(caller, job_id)?, executions))
    }

    /// The caller's jobs, newest first: `status` filters, `after` is the previous page's
    /// `next`.
    pub fn list(
        &self,
        caller: &Caller,
        status: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Value {
        let mut page: Vec<Value> = self.index.with_jobs(|jobs| {
            let mut ids: Vec<&String> = jobs
                .iter()
                .filter(|(_, j)| caller.is_operator() || j.spec.tenant == caller.tenant)
                .filter(|(_, j)| status.is_none_or(|s| j.status() == s))
                .filter(|(id, _)| after.is_none_or(|a| id.as_str() < a))
                .map(|(id, _)| id)
                .collect();
            ids.sort_unstable_by(|a, b| b.cmp(a));
            ids.into_iter()
                .take(limit + 1)
                .map(|id| summary(&jobs[id], false))
                .collect()
        });
        let next = (page.len() > limit).then(|| {
            page.truncate(limit);
            page.last().map(|j| j["job_id"].clone())
        });
        json!({ "jobs": page, "next": next.flatten() })
    }
}

/// A job as `GET /jobs/{id}` shows it.
pub fn summary(job: &JobState, executions: bool) -> Value {
    let spec = &job.spec;
    let abort = job
        .abort
        .as_ref()
        .map(|(decision, at)| json!({"at_ms": at, "decision": decision}));
    let cancel = job
        .cancel
        .as_ref()
        .map(|(by, at)| json!({"at_ms": at, "by": by}));
    let mut value = json!({
        "job_id": spec.job_id,
        "tenant": spec.tenant,
        "tenants": spec.tenants,
        "continuous": spec.continuous,
        "created_by": spec.created_by,
        "created_ms": job.created_ms,
        "status": job.status(),
        "finished_ms": job.finished_ms,
        "command": spec.command,
        "target": spec.target,
        "targets": spec.devices.len(),
        "rollout": spec.rollout,
        "abort_criteria": spec.abort,
        "device_timeout_ms": spec.device_timeout_ms,
        "ttl_ms": spec.ttl_ms,
        "counts": job.counts(),
        "waves": job.waves,
        "abort": abort,
        "cancel": cancel,
    });
    if executions {
        let list: BTreeMap<&str, &super::state::Execution> = job
            .executions
            .iter()
            .map(|(d, e)| (d.as_str(), e))
            .collect();
        value["executions"] = json!(list);
    }
    value
}

/// A job on one device made by the service itself (a schedule's occurrence, an alarm
/// rule's action), with an id the caller derives from what made it: recording it twice
/// (a retry, two instances) leaves one job, since the fold keeps a job's first
/// `created`. One wave, the configured defaults, no canary (one device).
pub fn device_job(
    config: &JobsConfig,
    job_id: String,
    tenant: Option<fleetwatch_protocol::TenantId>,
    created_by: String,
    command: JobCommand,
    device: fleetwatch_protocol::DeviceId,
    ttl_ms: u64,
) -> JobSpec {
    JobSpec {
        job_id,
        tenant,
        tenants: Vec::new(),
        created_by,
        command,
        target: json!({ "device_ids": [device.as_str()] }),
        devices: vec![device],
        rollout: Rollout {
            waves_percent: vec![100.0],
            soak_ms: 0,
            max_per_minute: config.default_max_per_minute,
        },
        abort: AbortCriteria {
            failure_ratio: 1.0,
            min_finished: 1,
            canary: None,
        },
        device_timeout_ms: config.default_device_timeout_ms,
        ttl_ms,
        continuous: false,
    }
}

/// Record a job made by the service (see [`device_job`]) on `iot.jobs` (`topic`),
/// confirmed; the jobs role's owner of its partition runs it.
pub async fn record_created(
    producer: &Producer,
    topic: &str,
    spec: JobSpec,
    at_ms: i64,
) -> crate::error::Result<()> {
    let event = JobEvent {
        job_id: spec.job_id.clone(),
        at_ms,
        body: JobEventBody::Created(Box::new(spec)),
    };
    let payload = serde_json::to_vec(&event).expect("job events serialize");
    producer
        .enqueue(topic, &event.job_id, &payload)
        .await
        .confirmed()
        .await
}
