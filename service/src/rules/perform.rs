//! Taking a recorded action: a command on the device's command path, a fleet job on
//! `iot.jobs`, or a signed POST to the webhooks of the alarm's tenant. Each is
//! identified by the action id, so taking it again is transport (see [`super::owner`]).

use std::sync::Arc;
use std::time::Duration;

use fleetwatch_protocol::{DeviceRequest, DeviceRequestBody, NewCommand, TenantId};

use super::rule::{ActionRecord, RuleAction};
use crate::jobs::JobsConfig;
use crate::kafka::Producer;
use crate::metrics::Metrics;
use crate::webhooks::{Pending, Sender, SigningKey, Source, WebhooksConfig};

/// A webhook a rule's notification goes to.
struct Endpoint {
    name: String,
    tenant: TenantId,
    url: String,
    key: SigningKey,
}

/// Takes recorded actions.
pub struct Performer {
    producer: Producer,
    commands_topic: String,
    jobs_topic: String,
    jobs: JobsConfig,
    ttl_ms: u64,
    endpoints: Vec<Endpoint>,
    sender: Sender,
    metrics: Arc<Metrics>,
}

/// Where a [`Performer`] writes, and what it knows.
pub struct PerformerSetup<'a> {
    pub producer: Producer,
    pub commands_topic: String,
    pub jobs_topic: String,
    pub jobs: &'a JobsConfig,
    pub webhooks: &'a WebhooksConfig,
    pub ttl_ms: u64,
    pub notify_timeout_ms: u64,
    pub metrics: Arc<Metrics>,
}

impl Performer {
    pub fn new(setup: PerformerSetup<'_>) -> Result<Self, String> {
        let endpoints = (setup.webhooks.endpoints.iter())
            .map(|endpoint| Endpoint {
                name: endpoint.name.clone(),
                tenant: endpoint.tenant.clone(),
                url: endpoint.url.clone(),
                key: SigningKey::new(
                    (endpoint.secret.as_ref()).map_or(&b""[..], |s| s.expose().as_bytes()),
                ),
            })
            .collect();
        Ok(Self {
            producer: setup.producer,
            commands_topic: setup.commands_topic,
            jobs_topic: setup.jobs_topic,
            jobs: setup.jobs.clone(),
            ttl_ms: setup.ttl_ms,
            endpoints,
            sender: Sender::new(Duration::from_millis(setup.notify_timeout_ms.max(1)))?,
            metrics: setup.metrics,
        })
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
            RuleAction::Notify { message } => self.notify(record, message.as_deref()).await,
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

    /// One signed POST per webhook of the alarm's tenant (one attempt each: the outcome
    /// is counted, `fleetwatch_rule_sends_total{kind="notify",result}`).
    async fn notify(&self, record: &ActionRecord, message: Option<&str>) {
        let Some(tenant) = &record.tenant else {
            return;
        };
        let body: Arc<[u8]> = serde_json::to_vec(&serde_json::json!({
            "type": "rule_action",
            "message": message,
            "action": record,
        }))
        .expect("action records serialize")
        .into();
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            if &endpoint.tenant != tenant {
                continue;
            }
            let pending = Pending {
                endpoint: index,
                event_id: record.action_id.clone(),
                alarm_id: record.alarm_id.clone(),
                device_id: record.device_id.clone(),
                tenant: tenant.clone(),
                signature: endpoint.key.sign(&body).into(),
                body: body.clone(),
                attempts: 0,
                next_at_ms: 0,
                source: Source {
                    topic: String::new(),
                    partition: 0,
                    offset: 0,
                },
            };
            let (outcome, _) = self.sender.post(&endpoint.url, &pending).await;
            let result = match outcome {
                Ok(_) => "delivered",
                Err(failure) => {
                    tracing::warn!(webhook = %endpoint.name, action = %record.action_id, reason = %failure.reason, "rule notification not delivered");
                    "failed"
                }
            };
            (self.metrics.rule_sends)
                .with_label_values(&["notify", result])
                .inc();
        }
    }
}
