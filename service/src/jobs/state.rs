//! A job's state: the fold of its events on `iot.jobs`. Every event is idempotent and
//! execution states only move forward, so applying a job's log again (a reader meeting
//! the owner's own writes, a restore after a crash) gives the same state.

use std::collections::{BTreeMap, HashMap, HashSet};

use fleetwatch_protocol::{
    AbortDecision, CanaryFigures, DeviceId, ExecutionState, JobEvent, JobEventBody, JobSpec,
};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;

/// One device's execution of a job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Execution {
    pub state: ExecutionState,
    /// The wave that created it (0-based).
    pub wave: u32,
    pub created_ms: i64,
    pub changed_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A wave as it went.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Wave {
    pub wave: u32,
    /// Targets reached once this wave's executions exist.
    pub reach: u32,
    pub started_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    /// The canary evaluation after the previous wave's soak that let this one start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryFigures>,
}

/// Everything known about one job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobState {
    pub spec: JobSpec,
    /// The `iot.jobs` partition its log is in (its owner is that partition's).
    pub partition: i32,
    pub created_ms: i64,
    pub executions: BTreeMap<DeviceId, Execution>,
    pub waves: Vec<Wave>,
    /// Who asked to cancel, and when.
    pub cancel: Option<(String, i64)>,
    pub abort: Option<(AbortDecision, i64)>,
    pub finished_ms: Option<i64>,
    /// When the first execution succeeded: the canary window starts there.
    pub first_success_ms: Option<i64>,
}

/// A new execution of `wave`, created at `at`.
fn queued(wave: u32, at: i64) -> Execution {
    Execution {
        state: ExecutionState::Queued,
        wave,
        created_ms: at,
        changed_ms: at,
        sent_ms: None,
        started_ms: None,
        detail: None,
    }
}

/// Forward order of execution states; terminal ones never change.
fn rank(state: ExecutionState) -> u8 {
    match state {
        ExecutionState::Queued => 0,
        ExecutionState::Sent => 1,
        ExecutionState::InProgress => 2,
        _ => 3,
    }
}

impl JobState {
    pub fn new(spec: JobSpec, partition: i32, at_ms: i64) -> Self {
        Self {
            spec,
            partition,
            created_ms: at_ms,
            executions: BTreeMap::new(),
            waves: Vec::new(),
            cancel: None,
            abort: None,
            finished_ms: None,
            first_success_ms: None,
        }
    }

    /// `running`, `completed`, `aborted` or `cancelled` (the last two as soon as decided:
    /// no execution is created or first sent from then on).
    pub fn status(&self) -> &'static str {
        if self.abort.is_some() {
            "aborted"
        } else if self.cancel.is_some() {
            "cancelled"
        } else if self.finished_ms.is_some() {
            "completed"
        } else {
            "running"
        }
    }

    /// Whether new executions may still be created or first sent.
    pub fn is_stopped(&self) -> bool {
        self.abort.is_some() || self.cancel.is_some() || self.finished_ms.is_some()
    }

    /// Executions per state, every state listed; `pending` counts targets that have no
    /// execution yet.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts: BTreeMap<&'static str, usize> = ExecutionState::ALL
            .iter()
            .map(|s| (s.as_str(), 0))
            .collect();
        for execution in self.executions.values() {
            *counts.entry(execution.state.as_str()).or_default() += 1;
        }
        counts.insert(
            "pending",
            self.spec
                .devices
                .len()
                .saturating_sub(self.executions.len()),
        );
        counts
    }

    /// Apply one event of this job's log.
    pub fn apply(&mut self, event: &JobEvent) {
        let at = event.at_ms;
        match &event.body {
            JobEventBody::Created(_) => {}
            JobEventBody::WaveStarted {
                wave,
                reach,
                canary,
            } => {
                if self.waves.len() == *wave as usize {
                    self.create_wave(*wave, *reach as usize, at);
                    self.waves.push(Wave {
                        wave: *wave,
                        reach: *reach,
                        started_ms: at,
                        finished_ms: None,
                        canary: canary.clone(),
                    });
                }
            }
            JobEventBody::WaveFinished { wave } => {
                if let Some(wave) = self.waves.get_mut(*wave as usize) {
                    wave.finished_ms.get_or_insert(at);
                }
            }
            JobEventBody::Executions { changes } => {
                for change in changes {
                    self.change(change, at);
                }
            }
            JobEventBody::TargetsAdded { devices } => self.add_targets(devices, at),
            JobEventBody::CancelRequested { by } => {
                self.cancel.get_or_insert((by.clone(), at));
            }
            JobEventBody::Aborted(decision) => {
                if self.abort.is_none() && self.cancel.is_none() {
                    self.abort = Some((decision.clone(), at));
                }
            }
            JobEventBody::Finished => {
                self.finished_ms.get_or_insert(at);
            }
        }
    }

    /// A wave's executions exist from the moment the wave starts (one event: a crash
    /// cannot record a wave without its executions).
    fn create_wave(&mut self, wave: u32, reach: usize, at: i64) {
        let from = self.waves.last().map_or(0, |w| w.reach as usize);
        let reach = reach.min(self.spec.devices.len());
        for device in &self.spec.devices[from.min(reach)..reach] {
            (self.executions)
                .entry(device.clone())
                .or_insert(queued(wave, at));
        }
    }

    /// New targets of a continuous job: in the last wave (created at once, `queued`,
    /// when it has started; with it otherwise).
    fn add_targets(&mut self, devices: &[DeviceId], at: i64) {
        let mut known: HashSet<DeviceId> = self.spec.devices.iter().cloned().collect();
        let new: Vec<DeviceId> = (devices.iter())
            .filter(|d| known.insert((*d).clone()))
            .cloned()
            .collect();
        let last_wave = self.spec.rollout.waves_percent.len().saturating_sub(1);
        let started = self.waves.len() > last_wave;
        for device in new {
            if started {
                self.executions
                    .insert(device.clone(), queued(last_wave as u32, at));
            }
            self.spec.devices.push(device);
        }
    }

    fn change(&mut self, change: &fleetwatch_protocol::ExecutionChange, at: i64) {
        let wave = self.waves.len().saturating_sub(1) as u32;
        let execution = (self.executions)
            .entry(change.device_id.clone())
            .or_insert(queued(wave, at));
        if execution.state.is_terminal() || rank(change.state) < rank(execution.state) {
            return;
        }
        if change.state == execution.state && change.state != ExecutionState::Queued {
            return;
        }
        execution.state = change.state;
        execution.changed_ms = at;
        match change.state {
            ExecutionState::Sent => {
                execution.sent_ms.get_or_insert(at);
            }
            ExecutionState::InProgress => {
                execution.started_ms.get_or_insert(at);
            }
            ExecutionState::Succeeded => {
                self.first_success_ms.get_or_insert(at);
            }
            _ => {}
        }
        if change.detail.is_some() {
            execution.detail = change.detail.clone();
        }
    }
}

/// Every job of the deployment, as this instance read them from `iot.jobs`, and the
/// markers it met there (how a new owner knows it has read a partition to the end).
#[derive(Default)]
pub struct JobIndex {
    jobs: RwLock<HashMap<String, JobState>>,
    markers: Mutex<HashSet<String>>,
    loading: crate::kafka::Loading,
}

impl JobIndex {
    /// The reader starts: the index is complete once it read up to these offsets.
    pub fn start(&self, end_offsets: HashMap<i32, i64>) {
        self.loading.start(end_offsets);
    }

    /// Whether every job known at start has been read (REST answers only then).
    pub fn is_loaded(&self) -> bool {
        self.loading.is_loaded()
    }

    /// The reader is at `position` (partition, offset).
    pub fn reached(&self, position: Option<(i32, i64)>) {
        self.loading.reached(position);
    }

    /// Apply an event read from (or just written to) `partition`.
    pub fn apply(&self, event: &JobEvent, partition: i32) {
        let mut jobs = self.jobs.write();
        if let JobEventBody::Created(spec) = &event.body {
            jobs.entry(event.job_id.clone())
                .or_insert_with(|| JobState::new((**spec).clone(), partition, event.at_ms));
            return;
        }
        match jobs.get_mut(&event.job_id) {
            Some(job) => job.apply(event),
            None => {
                tracing::warn!(job = %event.job_id, kind = event.body.kind(), "event of an unknown job skipped")
            }
        }
    }

    pub fn get(&self, job_id: &str) -> Option<JobState> {
        self.jobs.read().get(job_id).cloned()
    }

    /// Read access to every job.
    pub fn with_jobs<T>(&self, read: impl FnOnce(&HashMap<String, JobState>) -> T) -> T {
        read(&self.jobs.read())
    }

    pub fn saw_marker(&self, key: &str) {
        self.markers.lock().insert(key.to_owned());
    }

    /// Whether the marker `key` was met (and forget it).
    pub fn take_marker(&self, key: &str) -> bool {
        self.markers.lock().remove(key)
    }
}
