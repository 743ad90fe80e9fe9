//! Job events on the WebSocket: each alerts instance reads `iot.jobs` whole (a job's
//! tenant is only in its first event) and pushes what happens from now on to the
//! clients allowed to see the job, as
//! `{"type":"job","job_id":…,"event":…,"at_ms":…,…}`: its kind, the wave it concerns,
//! how many executions moved to each state, the abort decision. A page refreshes its job
//! list from `GET /jobs` on these frames; the frames are a notice, not the job's state.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use fleetwatch_protocol::{AbortDecision, JobEvent, JobEventBody, TenantId};
use serde::Serialize;

use super::{AlertFrame, LivePosition, Routes};
use crate::kafka::{HandleError, Record, RecordHandler};
use crate::metrics::Metrics;

/// The frame of one job event.
#[derive(Debug, PartialEq, Serialize)]
pub struct JobNotice<'a> {
    #[serde(rename = "type")]
    pub frame: &'static str,
    pub job_id: &'a str,
    /// `created`, `wave_started`, `wave_finished`, `executions`, `cancel_requested`,
    /// `aborted` or `finished`.
    pub event: &'static str,
    pub at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
    /// Executions that moved to each state in this event.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub executions: BTreeMap<&'static str, usize>,
    /// Targets of a created job, or targets a continuous job added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<&'a AbortDecision>,
}

impl<'a> JobNotice<'a> {
    pub fn of(event: &'a JobEvent) -> Self {
        let mut notice = Self {
            frame: "job",
            job_id: &event.job_id,
            event: event.body.kind(),
            at_ms: event.at_ms,
            wave: None,
            executions: BTreeMap::new(),
            targets: None,
            abort: None,
        };
        match &event.body {
            JobEventBody::Created(spec) => notice.targets = Some(spec.devices.len()),
            JobEventBody::TargetsAdded { devices } => notice.targets = Some(devices.len()),
            JobEventBody::WaveStarted { wave, .. } | JobEventBody::WaveFinished { wave } => {
                notice.wave = Some(*wave)
            }
            JobEventBody::Executions { changes } => {
                for change in changes {
                    *notice.executions.entry(change.state.as_str()).or_default() += 1;
                }
            }
            JobEventBody::Aborted(decision) => notice.abort = Some(decision),
            JobEventBody::CancelRequested { .. } | JobEventBody::Finished => {}
        }
        notice
    }
}

/// Reads `iot.jobs` from the beginning: learns each job's tenant from its `created`
/// event, and pushes the events that happen from now on (history is `GET /jobs`'s).
pub struct JobEventsHandler {
    pub routes: Arc<Routes>,
    pub live: LivePosition,
    /// Job id → its tenant (`None`: an operator's job, for operators only). A job id and
    /// a tenant id per job of the topic's retention.
    pub tenants: HashMap<String, Option<TenantId>>,
    pub metrics: Arc<Metrics>,
}

impl JobEventsHandler {
    pub fn new(routes: Arc<Routes>, metrics: Arc<Metrics>) -> Self {
        Self {
            routes,
            live: LivePosition::default(),
            tenants: HashMap::new(),
            metrics,
        }
    }
}

impl RecordHandler for JobEventsHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        let live = self.live.is_live(record.partition, record.offset);
        // Empty records are the job owners' markers.
        if record.payload.is_empty() {
            return Ok(());
        }
        let Some(event) = crate::kafka::decode_record::<JobEvent>(record, "alerts", &self.metrics)
        else {
            return Ok(());
        };
        if let JobEventBody::Created(spec) = &event.body {
            self.tenants
                .insert(event.job_id.clone(), spec.tenant.clone());
        }
        let Some(tenant) = self.tenants.get(&event.job_id) else {
            return Ok(());
        };
        if live {
            let text: Arc<str> = serde_json::to_string(&JobNotice::of(&event))
                .expect("wire types serialize")
                .into();
            self.routes.publish(AlertFrame {
                device_id: None,
                tenant: tenant.clone(),
                text: text.clone(),
                recent_text: text,
                position: None,
            });
            self.metrics.ws_job_events.inc();
        }
        Ok(())
    }
}
