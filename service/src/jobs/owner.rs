//! Who runs a job, and how. A job's log lives in one partition of `iot.jobs`; the jobs
//! role's consumer group hands each partition to one instance, which runs the jobs of
//! that partition. Every instance reads `iot.jobs` whole into its [`JobIndex`] (for REST,
//! and as the owner's state); a new owner writes a marker to each partition it is given
//! and runs its jobs only once its index met the marker, so it never acts on a state
//! older than what the previous owner recorded.
//!
//! Each tick the owner steps each running job ([`super::plan::step`]): the events are
//! written and confirmed first, then the commands are sent. A crash in between leaves
//! executions `sent` whose commands may not have left; the next owner sends every `sent`
//! one again with the same command id (the twin keeps one command per id), so a device
//! never runs a job twice.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleetwatch_protocol::{DeviceId, DeviceRequest, JobEvent, JobEventBody};
use parking_lot::Mutex;

use super::fleet::FleetView;
use super::plan::{step, StepRules};
use super::state::{JobIndex, JobState};
use super::JobsConfig;
use crate::kafka::{
    decode_record, HandleError, PartitionListener, Producer, Record, RecordHandler,
};
use crate::metrics::Metrics;
use crate::tenancy::Directory;

/// A partition of `iot.jobs` this instance owns.
struct Owned {
    marker: String,
    restored: bool,
}

/// The partitions this instance owns, kept current by the group's rebalances.
pub struct Ownership {
    owned: Mutex<HashMap<i32, Owned>>,
    producer: Producer,
    topic: String,
    marker_prefix: String,
    markers: AtomicU64,
}

impl Ownership {
    pub fn new(producer: Producer, topic: String, marker_prefix: String) -> Self {
        Self {
            owned: Mutex::default(),
            producer,
            topic,
            marker_prefix,
            markers: AtomicU64::new(0),
        }
    }

    /// Partitions whose marker the reader met (`met` takes it) since the last call:
    /// restored now. (Shared with the schedules role, which owns `iot.schedules` the
    /// same way.)
    pub fn newly_restored(&self, met: impl Fn(&str) -> bool) -> HashSet<i32> {
        let mut owned = self.owned.lock();
        let mut restored = HashSet::new();
        for (partition, state) in owned.iter_mut() {
            if !state.restored && met(&state.marker) {
                state.restored = true;
                restored.insert(*partition);
                tracing::info!(topic = %self.topic, partition, "owned partition restored");
            }
        }
        restored
    }

    /// The partitions owned and restored.
    pub fn restored(&self) -> HashSet<i32> {
        let owned = self.owned.lock();
        owned
            .iter()
            .filter(|(_, s)| s.restored)
            .map(|(p, _)| *p)
            .collect()
    }
}

impl PartitionListener for Ownership {
    fn revoked(&self, partitions: &[i32], _lost: bool) {
        let mut owned = self.owned.lock();
        for partition in partitions {
            owned.remove(partition);
        }
    }

    fn assigned(&self, partitions: &[i32]) {
        let mut owned = self.owned.lock();
        owned.retain(|p, _| partitions.contains(p));
        for &partition in partitions {
            if owned.contains_key(&partition) {
                continue;
            }
            let n = self.markers.fetch_add(1, Ordering::Relaxed);
            let marker = format!("{}{partition}/{n}", self.marker_prefix);
            // Not awaited (this runs inside the rebalance): a lost marker leaves the
            // partition unrestored until the next rebalance, never acted on too early.
            drop(self.producer.enqueue_empty(&self.topic, partition, &marker));
            owned.insert(
                partition,
                Owned {
                    marker,
                    restored: false,
                },
            );
        }
    }
}

/// The jobs group member: runs the jobs of its partitions on every tick.
pub struct JobsOwner {
    pub ownership: Arc<Ownership>,
    pub index: Arc<JobIndex>,
    pub fleet: Arc<FleetView>,
    pub producer: Producer,
    pub jobs_topic: String,
    pub commands_topic: String,
    pub config: JobsConfig,
    pub metrics: Arc<Metrics>,
    /// Where continuous jobs find devices that match later.
    pub directory: Arc<Directory>,
    /// When each continuous job's target was last resolved again.
    pub resolved_ms: HashMap<String, i64>,
}

impl RecordHandler for JobsOwner {
    /// The group's records are the jobs' logs, which the index reads; membership is
    /// what this consumer is for.
    async fn handle(&mut self, _record: &Record<'_>) -> Result<(), HandleError> {
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(self.config.tick_ms.max(10)))
    }

    async fn on_tick(&mut self) -> Result<(), HandleError> {
        if !self.fleet.is_loaded() {
            return Ok(());
        }
        let fresh = (self.ownership).newly_restored(|marker| self.index.take_marker(marker));
        let restored = self.ownership.restored();
        let jobs: Vec<JobState> = self.index.with_jobs(|jobs| {
            jobs.values()
                .filter(|j| restored.contains(&j.partition) && j.finished_ms.is_none())
                .cloned()
                .collect()
        });
        self.metrics.jobs_running.set(jobs.len() as i64);
        for job in jobs {
            let Some(job) = self.pick_up_new_targets(job).await else {
                continue;
            };
            let rules = StepRules {
                now_ms: fleetwatch_protocol::now_ms(),
                tick_ms: self.config.tick_ms,
                resend_after_ms: self.config.resend_after_ms,
                resend_all: fresh.contains(&job.partition),
            };
            let planned = step(&job, &self.fleet, rules);
            if let Err(error) = self.run(&job, planned, rules.now_ms).await {
                tracing::warn!(job = %job.spec.job_id, %error, "job step not recorded; retried next tick");
            }
        }
        Ok(())
    }
}

impl JobsOwner {
    /// For a continuous job due for it, record the devices its target matches since;
    /// the job as it is then (`None`: not recorded, retried next tick).
    async fn pick_up_new_targets(&mut self, job: JobState) -> Option<JobState> {
        let now_ms = fleetwatch_protocol::now_ms();
        let last = self.resolved_ms.get(&job.spec.job_id).copied();
        let due = last.is_none_or(|at| now_ms - at >= self.config.continuous_every_ms as i64);
        if job.is_stopped() {
            self.resolved_ms.remove(&job.spec.job_id);
        }
        if !job.spec.continuous || job.is_stopped() || !due {
            return Some(job);
        }
        self.resolved_ms.insert(job.spec.job_id.clone(), now_ms);
        let room = self
            .config
            .max_targets
            .saturating_sub(job.spec.devices.len());
        let added = super::target::matched_since(&job.spec, &self.directory, &self.fleet, room);
        if added.is_empty() {
            return Some(job);
        }
        let step = super::plan::Step {
            events: vec![JobEventBody::TargetsAdded { devices: added }],
            send: Vec::new(),
        };
        match self.run(&job, step, now_ms).await {
            Ok(()) => self.index.get(&job.spec.job_id),
            Err(error) => {
                tracing::warn!(job = %job.spec.job_id, %error, "new targets not recorded; retried next tick");
                None
            }
        }
    }

    /// Record the step's events (confirmed, in order), then send its commands.
    async fn run(
        &self,
        job: &JobState,
        planned: super::plan::Step,
        now_ms: i64,
    ) -> crate::error::Result<()> {
        for body in planned.events {
            let event = JobEvent {
                job_id: job.spec.job_id.clone(),
                at_ms: now_ms,
                body,
            };
            let payload = serde_json::to_vec(&event).expect("job events serialize");
            self.producer
                .enqueue(&self.jobs_topic, &job.spec.job_id, &payload)
                .await
                .confirmed()
                .await?;
            self.index.apply(&event, job.partition);
            self.count(job, &event.body);
        }
        let mut deliveries = Vec::with_capacity(planned.send.len());
        for device in &planned.send {
            let request = command_request(job, device, now_ms);
            let payload = serde_json::to_vec(&request).expect("requests serialize");
            deliveries.push(
                self.producer
                    .enqueue(&self.commands_topic, device.as_str(), &payload)
                    .await,
            );
        }
        for delivery in deliveries {
            delivery.confirmed().await?;
            self.metrics.job_commands_sent.inc();
        }
        if !planned.send.is_empty() {
            tracing::debug!(job = %job.spec.job_id, sent = planned.send.len(), "job commands sent");
        }
        Ok(())
    }
}

impl JobsOwner {
    /// Count a recorded event in the job metrics.
    fn count(&self, job: &JobState, body: &JobEventBody) {
        match body {
            JobEventBody::Executions { changes } => {
                for change in changes {
                    (self.metrics.job_executions)
                        .with_label_values(&[change.state.as_str()])
                        .inc();
                }
            }
            JobEventBody::Finished => {
                let status = self
                    .index
                    .get(&job.spec.job_id)
                    .map_or("completed", |job| job.status());
                self.metrics
                    .jobs_finished
                    .with_label_values(&[status])
                    .inc();
            }
            _ => {}
        }
    }
}

/// The job's request for `device`, its command id also its idempotency key.
pub fn command_request(job: &JobState, device: &DeviceId, now_ms: i64) -> DeviceRequest {
    let spec = &job.spec;
    let command_id = spec.command_id(device);
    DeviceRequest {
        request_id: format!("{command_id}@{now_ms}"),
        reply_to: None,
        device_id: device.clone(),
        sent_ms: now_ms,
        body: (spec.command).request(&command_id, spec.ttl_ms + spec.device_timeout_ms),
    }
}

/// Reads `iot.jobs` whole into the [`JobIndex`] (every instance running the role).
pub struct JobLogHandler {
    pub index: Arc<JobIndex>,
    /// This instance's markers (others' are skipped).
    pub marker_prefix: String,
    pub metrics: Arc<Metrics>,
}

impl RecordHandler for JobLogHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        if record.payload.is_empty() {
            let key = record.key_str();
            if key.starts_with(&self.marker_prefix) {
                self.index.saw_marker(&key);
            }
        } else if let Some(event) = decode_record::<JobEvent>(record, "jobs", &self.metrics) {
            self.index.apply(&event, record.partition);
        }
        self.index.reached(Some((record.partition, record.offset)));
        Ok(())
    }
}
