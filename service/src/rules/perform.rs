//! Taking a recorded action: a command on the device's command path or a fleet job on
//! `iot.jobs`. Each is identified by the action id, so taking it again is transport (see
//! [`super::owner`]). A notification needs nothing here: its record on
//! `iot.rule-actions` is what the webhooks role delivers, with its retries.

use std::sync::Arc;

use fleetwatch_protocol::{DeviceRequest, DeviceRequestBody, NewCommand};

use super::rule::{ActionRecord, RuleAction};
use crate::jobs::JobsConfig;
use crate::kafka::Producer;
use crate::metrics::Metrics;

/// Takes recorded actions.
pub struct Performer {
    producer: Producer,
    commands_topic: String,
    jobs_topic: String,
    jobs: JobsConfig,
    ttl_ms: u64,
    metrics: Arc<Metrics>,
}

/// Where a [`Performer`] writes, and what it knows.
pub struct PerformerSetup<'a> {
    pub producer: Producer,
    pub commands_topic: String,
    pub jobs_topic: String,
    pub jobs: &'a JobsConfig,
    pub ttl_ms: u64,
    pub metrics: Arc<Metrics>,
}

impl Performer {
    pub fn new(setup: PerformerSetup<'_>) -> Self {
        Self {
            producer: setup.producer,
            commands_topic: setup.commands_topic,
            jobs_topic: setup.jobs_topic,
            jobs: setup.jobs.clone(),
            ttl_ms: setup.ttl_ms,
            metrics: setup.metrics,
        }
    }

    /// Take `record`'s action (recorded as performed) at `now_ms`.
    pub async fn perform(&self, record: &ActionRecord, now_ms: i64) -> crate::error::Result<()> {
        let remaining_ms = (record.at_ms + self.ttl_ms as i64 - now_ms).max(1) as u64;
        let kind = record.action.kind();
        match &record.action {
            RuleAction::Command { name, args } => {
                self.command(record, name, args, remaining_ms).await?
            }
            RuleAction::Job { command } => {
                let job = crate::jobs::device_job(
                    &self.jobs,
                    record.action_id.clone(),
                    record.tenant.clone(),
                    format!("rule {}", record.rule_id),
                    command.clone(),
                    record.device_id.clone(),
                    remaining_ms,
                );
                crate::jobs::record_created(&self.producer, &self.jobs_topic, job, now_ms).await?
            }
            RuleAction::Notify { .. } => {}
        }
        (self.metrics.rule_sends)
            .with_label_values(&[kind, "taken"])
            .inc();
        Ok(())
    }

    async fn command(
        &self,
        record: &ActionRecord,
        name: &str,
        args: &serde_json::Value,
        ttl_ms: u64,
    ) -> crate::error::Result<()> {
        let now = fleetwatch_protocol::now_ms();
        let request = DeviceRequest {
            request_id: format!("{}@{now}", record.action_id),
            reply_to: None,
            device_id: record.device_id.clone(),
            sent_ms: now,
            body: DeviceRequestBody::SendCommand(NewCommand {
                command_id: record.action_id.clone(),
                name: name.to_owned(),
                args: args.clone(),
                idempotency_key: Some(record.action_id.clone()),
                ttl_ms,
            }),
        };
        let payload = serde_json::to_vec(&request).expect("requests serialize");
        (self.producer)
            .enqueue(&self.commands_topic, record.device_id.as_str(), &payload)
            .await
            .confirmed()
            .await
    }
}
