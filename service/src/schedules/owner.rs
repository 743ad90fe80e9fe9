//! Who fires a schedule, and how. A schedule's log lives in one partition of
//! `iot.schedules`; the role's consumer group hands each partition to one instance, which
//! fires that partition's schedules. Every instance reads `iot.schedules` whole into its
//! [`ScheduleIndex`]; a new owner writes a marker to each partition it is given and fires
//! only once its index met the marker (the jobs role's [`Ownership`]), so it never acts
//! on a state older than what the previous owner recorded.
//!
//! Each tick the owner plans each schedule's due occurrences
//! ([`super::plan::due_occurrences`]), records them (confirmed), then sends the command
//! of the last one fired. The command id is (schedule, occurrence instant): a crash
//! between record and send, or a new owner sending the last fired command again, is
//! transport (the twin keeps one command per id), never a second run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleetwatch_protocol::{
    DeviceRequest, DeviceRequestBody, JobCommand, NewCommand, Occurrence, ScheduleAction,
    ScheduleEvent, ScheduleEventBody,
};

use super::plan::{due_occurrences, PlanRules};
use super::state::{ScheduleIndex, ScheduleState};
use super::{ScheduleClock, SchedulesConfig};
use crate::jobs::owner::Ownership;
use crate::kafka::{decode_record, HandleError, Producer, Record, RecordHandler};
use crate::metrics::Metrics;
use crate::tenancy::Directory;

/// The schedules group member: fires the schedules of its partitions on every tick.
pub struct SchedulesOwner {
    pub ownership: Arc<Ownership>,
    pub index: Arc<ScheduleIndex>,
    pub producer: Producer,
    pub schedules_topic: String,
    pub commands_topic: String,
    /// Where a job action's jobs are recorded (`iot.jobs`), and their defaults.
    pub jobs_topic: String,
    pub jobs_config: crate::jobs::JobsConfig,
    pub config: SchedulesConfig,
    pub clock: ScheduleClock,
    pub metrics: Arc<Metrics>,
    pub directory: Arc<Directory>,
    /// Schedule → the command id this process last sent for it (confirmed).
    pub sent: HashMap<String, String>,
}

impl RecordHandler for SchedulesOwner {
    /// The group's records are the schedules' logs, which the index reads; membership
    /// is what this consumer is for.
    async fn handle(&mut self, _record: &Record<'_>) -> Result<(), HandleError> {
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(self.config.tick_ms.max(10)))
    }

    async fn on_tick(&mut self) -> Result<(), HandleError> {
        if !self.index.is_loaded() {
            return Ok(());
        }
        (self.ownership).newly_restored(|marker| self.index.take_marker(marker));
        let restored = self.ownership.restored();
        let schedules: Vec<ScheduleState> = self.index.with_schedules(|all| {
            all.values()
                .filter(|s| restored.contains(&s.partition) && s.deleted.is_none())
                .cloned()
                .collect()
        });
        self.metrics.schedules_owned.set(schedules.len() as i64);
        let live: std::collections::HashSet<&str> = schedules
            .iter()
            .map(|s| s.spec.schedule_id.as_str())
            .collect();
        self.sent.retain(|id, _| live.contains(id.as_str()));
        for schedule in schedules {
            if let Err(error) = self.step(&schedule).await {
                tracing::warn!(schedule = %schedule.spec.schedule_id, %error, "schedule step not done; retried next tick");
            }
        }
        Ok(())
    }
}

impl SchedulesOwner {
    /// Record the schedule's due occurrences, then send its last fired command unless
    /// this process already did.
    async fn step(&mut self, schedule: &ScheduleState) -> crate::error::Result<()> {
        let now_ms = self.clock.now_ms();
        let rules = PlanRules {
            now_ms,
            max_occurrences: self.config.max_occurrences_per_tick.max(1),
            default_ttl_ms: self.config.default_ttl_ms,
        };
        let spec = &schedule.spec;
        let occurrences = due_occurrences(spec, &schedule.recurrence, schedule.cursor, rules);
        if !occurrences.is_empty() {
            self.record(schedule, occurrences, now_ms).await?;
        }
        let Some(state) = self.index.get(&spec.schedule_id) else {
            return Ok(());
        };
        let Some(last) = state.last_fired().cloned() else {
            return Ok(());
        };
        let (Some(command_id), Some(expires_ms)) = (&last.command_id, last.expires_ms) else {
            return Ok(());
        };
        if expires_ms <= now_ms || self.sent.get(&spec.schedule_id) == Some(command_id) {
            return Ok(());
        }
        // A rule acts only within its tenant: the device may have moved since.
        if spec.tenant.is_some() && self.directory.tenant_of(&spec.device_id) != spec.tenant {
            self.metrics
                .schedule_commands
                .with_label_values(&["other_tenant"])
                .inc();
            self.sent
                .insert(spec.schedule_id.clone(), command_id.clone());
            return Ok(());
        }
        let result = if let ScheduleAction::Job { command } = &spec.action {
            self.create_job(&state, command, command_id, expires_ms - now_ms)
                .await?;
            "job_created"
        } else {
            let request = self.request(&state, &last, command_id, expires_ms - now_ms);
            let payload = serde_json::to_vec(&request).expect("requests serialize");
            (self.producer)
                .enqueue(&self.commands_topic, spec.device_id.as_str(), &payload)
                .await
                .confirmed()
                .await?;
            "sent"
        };
        self.metrics
            .schedule_commands
            .with_label_values(&[result])
            .inc();
        self.sent
            .insert(spec.schedule_id.clone(), command_id.clone());
        Ok(())
    }

    async fn record(
        &self,
        schedule: &ScheduleState,
        occurrences: Vec<Occurrence>,
        now_ms: i64,
    ) -> crate::error::Result<()> {
        let event = ScheduleEvent {
            schedule_id: schedule.spec.schedule_id.clone(),
            at_ms: now_ms,
            body: ScheduleEventBody::Occurrences { occurrences },
        };
        let payload = serde_json::to_vec(&event).expect("schedule events serialize");
        (self.producer)
            .enqueue(&self.schedules_topic, &schedule.spec.schedule_id, &payload)
            .await
            .confirmed()
            .await?;
        self.index.apply(&event, schedule.partition);
        if let ScheduleEventBody::Occurrences { occurrences } = &event.body {
            for occurrence in occurrences {
                (self.metrics.schedule_occurrences)
                    .with_label_values(&[occurrence.outcome.as_str()])
                    .inc();
            }
        }
        Ok(())
    }

    /// The fleet job of a fired occurrence, on the schedule's device: its id is the
    /// occurrence's command id, so recording it again (a retry, a new owner) is the same
    /// job. It may wait for the device `remaining_ms` (schedule time) more.
    async fn create_job(
        &self,
        schedule: &ScheduleState,
        command: &JobCommand,
        job_id: &str,
        remaining_ms: i64,
    ) -> crate::error::Result<()> {
        let spec = &schedule.spec;
        let job = crate::jobs::device_job(
            &self.jobs_config,
            job_id.to_owned(),
            spec.tenant.clone(),
            format!("schedule {}", spec.schedule_id),
            command.clone(),
            spec.device_id.clone(),
            self.clock.wall_ms(remaining_ms),
        );
        let now = fleetwatch_protocol::now_ms();
        crate::jobs::record_created(&self.producer, &self.jobs_topic, job, now).await
    }

    /// The request for a fired occurrence, its command living `remaining_ms` (schedule
    /// time) more.
    fn request(
        &self,
        schedule: &ScheduleState,
        occurrence: &Occurrence,
        command_id: &str,
        remaining_ms: i64,
    ) -> DeviceRequest {
        let wall_now = fleetwatch_protocol::now_ms();
        let body = match &schedule.spec.action {
            ScheduleAction::Command { name, args } => DeviceRequestBody::SendCommand(NewCommand {
                command_id: command_id.to_owned(),
                name: name.clone(),
                args: args.clone(),
                idempotency_key: Some(command_id.to_owned()),
                ttl_ms: self.clock.wall_ms(remaining_ms),
            }),
            ScheduleAction::Desired { desired } => DeviceRequestBody::SetDesired {
                desired: desired.clone(),
                merge: true,
                if_match: None,
            },
            // Jobs are created, not requested (`create_job`); a job action never
            // reaches here, and would be no request of the device's.
            ScheduleAction::Job { command } => command.request(command_id, 1),
        };
        DeviceRequest {
            request_id: format!("{command_id}@{wall_now}/{}", occurrence.local),
            reply_to: None,
            device_id: schedule.spec.device_id.clone(),
            sent_ms: wall_now,
            body,
        }
    }
}

/// Reads `iot.schedules` whole into the [`ScheduleIndex`] (every instance running the
/// role).
pub struct ScheduleLogHandler {
    pub index: Arc<ScheduleIndex>,
    /// This instance's markers (others' are skipped).
    pub marker_prefix: String,
    pub metrics: Arc<Metrics>,
}

impl RecordHandler for ScheduleLogHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        if record.payload.is_empty() {
            let key = record.key_str();
            if key.starts_with(&self.marker_prefix) {
                self.index.saw_marker(&key);
            }
        } else if let Some(event) =
            decode_record::<ScheduleEvent>(record, "schedules", &self.metrics)
        {
            self.index.apply(&event, record.partition);
        }
        self.index.reached(Some((record.partition, record.offset)));
        Ok(())
    }
}
