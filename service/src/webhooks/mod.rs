//! The webhooks role: each alarm event of `iot.alarms`, and each notification an alarm
//! rule performed (its decision on `iot.rule-actions`, docs/rules.md), is POSTed to the
//! webhooks of its alarm's tenant (never another tenant's), signed, retried with
//! exponential backoff, and its outcome recorded on `iot.webhook-deliveries` for `GET
//! /alarms/{id}/deliveries`.
//!
//! One deliverer per event: the role is one consumer group on `iot.alarms` and
//! `iot.rule-actions` (both keyed by device), so each partition, hence each device's
//! events, has one owner at a time.
//! An event's offset is committed only once every delivery of it succeeded or was given
//! up and that outcome is on Kafka ([`RecordHandler::defers_commit`]), and every earlier
//! event of its partition too: at least once. After a crash or a rebalance the new
//! owner delivers again what was not committed, with the same event id
//! (`X-Fleetwatch-Event-Id`, `{alarm_id}/{n}`) so receivers deduplicate.
//!
//! The request: `POST <url>` with the [`fleetwatch_protocol::AlarmEvent`] as JSON (a
//! rule's notification: `{"type":"rule_action","message","action"}`, event id the
//! action's id), the same bytes on every attempt; `X-Fleetwatch-Signature: sha256=<hex>` is the
//! HMAC-SHA256 of those bytes with the webhook's secret; `X-Fleetwatch-Attempt: n`
//! (unsigned). A 2xx answer delivers; anything else, or no answer within
//! `webhooks.request_timeout_ms`, is retried after `backoff_start_ms`, twice that, …
//! up to `backoff_max_ms`, until `max_attempts`: then the delivery is given up.
//!
//! The outbox ([`Outbox`]) holds at most `webhooks.outbox_capacity` deliveries, one
//! queue per webhook in event order. When full the role stops taking events (lag grows,
//! `fleetwatch_webhook_outbox_full_total` counts it) until room is made: nothing is
//! dropped, and a webhook that never answers holds the others up at most until its
//! deliveries are given up.

mod config;
mod deliveries;
mod outbox;
mod role;
mod sender;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetwatch_protocol::{
    now_ms, AlarmEvent, DeliveryOutcome, KafkaTopics, TenantId, WebhookDelivery,
};
use tokio_util::sync::CancellationToken;

pub use config::{WebhookEndpoint, WebhooksConfig, MIN_SECRET_BYTES};
pub use deliveries::{DeliveriesHandler, DeliveryLog};
pub use outbox::{AfterFailure, Backoff, Full, Outbox, Pending, Source};
pub use role::ROLE;
pub use sender::{Failure, Sender, SigningKey, ATTEMPT_HEADER, EVENT_ID_HEADER, SIGNATURE_HEADER};

use crate::kafka::{decode_record, DurableOffsets, HandleError, Producer, Record, RecordHandler};
use crate::metrics::Metrics;
use crate::rules::rule::{ActionOutcome, ActionRecord, RuleAction};

/// How often due deliveries are made.
const TICK: Duration = Duration::from_millis(20);
/// Longest a round of deliveries keeps the consumer from its records.
const WORK_BUDGET: Duration = Duration::from_millis(250);
/// Longest wait between looks at a full outbox.
const FULL_WAIT: Duration = Duration::from_millis(200);

/// Something to deliver to the webhooks of a tenant (alarms of no tenant have none).
struct Notice {
    tenant: TenantId,
    event_id: String,
    alarm_id: String,
    device_id: fleetwatch_protocol::DeviceId,
    /// When it happened: what `webhooks.max_event_age_ms` is counted from.
    at_ms: i64,
    /// The request's body.
    body: Vec<u8>,
}

/// A configured webhook, ready to sign and send.
struct Endpoint {
    name: String,
    tenant: TenantId,
    url: String,
    key: SigningKey,
}

pub struct WebhookHandler {
    endpoints: Vec<Endpoint>,
    sender: Sender,
    producer: Producer,
    status_topic: String,
    rule_actions_topic: String,
    outbox: Outbox,
    /// Final outcomes not yet on Kafka, oldest first, with the delivery they finish
    /// (none for events too old to deliver, which were finished at once).
    unrecorded: VecDeque<(Option<Source>, WebhookDelivery)>,
    max_event_age_ms: i64,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl WebhookHandler {
    pub fn new(
        config: &WebhooksConfig,
        producer: Producer,
        topics: &KafkaTopics,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Self, String> {
        config.check()?;
        let endpoints = config
            .endpoints
            .iter()
            .map(|endpoint| Endpoint {
                name: endpoint.name.clone(),
                tenant: endpoint.tenant.clone(),
                url: endpoint.url.clone(),
                key: SigningKey::new(
                    endpoint
                        .secret
                        .as_ref()
                        .map_or(&b""[..], |s| s.expose().as_bytes()),
                ),
            })
            .collect();
        let backoff = Backoff {
            start_ms: config.backoff_start_ms,
            max_ms: config.backoff_max_ms,
            max_attempts: config.max_attempts,
        };
        Ok(Self {
            endpoints,
            sender: Sender::new(Duration::from_millis(config.request_timeout_ms))?,
            producer,
            status_topic: topics.webhook_deliveries(),
            rule_actions_topic: topics.rule_actions(),
            outbox: Outbox::new(config.outbox_capacity, backoff),
            unrecorded: VecDeque::new(),
            max_event_age_ms: config.max_event_age_ms.min(i64::MAX as u64) as i64,
            metrics,
            shutdown,
        })
    }

    /// What `record` asks to deliver: an alarm event, or a notification a rule performed
    /// (its other decisions, markers, and records that do not decode, deliver nothing).
    fn notice_of(&self, record: &Record<'_>) -> Option<Notice> {
        // Value-less records: the rules owners' markers on `iot.rule-actions`.
        if record.payload.is_empty() {
            return None;
        }
        if record.topic != self.rule_actions_topic {
            let event = decode_record::<AlarmEvent>(record, "webhooks", &self.metrics)?;
            return Some(Notice {
                tenant: event.alarm.tenant.clone()?,
                event_id: event.event_id.clone(),
                alarm_id: event.alarm.alarm_id.clone(),
                device_id: event.alarm.device_id.clone(),
                at_ms: event.at_ms,
                body: serde_json::to_vec(&event).expect("wire types serialize"),
            });
        }
        let action = decode_record::<ActionRecord>(record, "webhooks", &self.metrics)?;
        let RuleAction::Notify { message } = &action.action else {
            return None;
        };
        if action.outcome != ActionOutcome::Performed {
            return None;
        }
        let body =
            serde_json::json!({"type": "rule_action", "message": message, "action": &action});
        Some(Notice {
            tenant: action.tenant.clone()?,
            event_id: action.action_id.clone(),
            alarm_id: action.alarm_id.clone(),
            device_id: action.device_id.clone(),
            at_ms: action.at_ms,
            body: serde_json::to_vec(&body).expect("action records serialize"),
        })
    }

    /// The deliveries of `notice`: one per webhook of its tenant. A notice too old is
    /// recorded as given up instead.
    fn deliveries_of(&mut self, notice: Notice, source: &Source, now: i64) -> Vec<Pending> {
        let body: Arc<[u8]> = notice.body.into();
        let deliveries: Vec<Pending> = (self.endpoints.iter().enumerate())
            .filter(|(_, endpoint)| endpoint.tenant == notice.tenant)
            .map(|(index, endpoint)| Pending {
                endpoint: index,
                event_id: notice.event_id.clone(),
                alarm_id: notice.alarm_id.clone(),
                device_id: notice.device_id.clone(),
                tenant: notice.tenant.clone(),
                signature: endpoint.key.sign(&body).into(),
                body: body.clone(),
                attempts: 0,
                next_at_ms: now,
                source: source.clone(),
            })
            .collect();
        if deliveries.is_empty() || now - notice.at_ms <= self.max_event_age_ms {
            return deliveries;
        }
        for pending in deliveries {
            self.metrics
                .skipped
                .with_label_values(&["webhooks", "too_old"])
                .inc();
            let failure = Failure {
                status: None,
                reason: "older than webhooks.max_event_age_ms when read".into(),
            };
            let status = self.status(&pending, DeliveryOutcome::GivenUp, Err(&failure), now);
            self.unrecorded.push_back((None, status));
        }
        Vec::new()
    }

    /// The outcome record of an attempt at `pending` (attempts counted already).
    fn status(
        &self,
        pending: &Pending,
        outcome: DeliveryOutcome,
        answer: Result<u16, &Failure>,
        now: i64,
    ) -> WebhookDelivery {
        let (status, error) = match answer {
            Ok(status) => (Some(status), None),
            Err(failure) => (failure.status, Some(failure.reason.clone())),
        };
        WebhookDelivery {
            event_id: pending.event_id.clone(),
            alarm_id: pending.alarm_id.clone(),
            device_id: pending.device_id.clone(),
            tenant: pending.tenant.clone(),
            webhook: self.endpoints[pending.endpoint].name.clone(),
            outcome,
            attempts: pending.attempts,
            status,
            error,
            at_ms: now,
            next_attempt_ms: (outcome == DeliveryOutcome::Retrying).then_some(pending.next_at_ms),
        }
    }

    /// Make the due deliveries (each webhook's head, all webhooks at once), round after
    /// round, for at most [`WORK_BUDGET`].
    async fn work(&mut self) {
        let started = Instant::now();
        while started.elapsed() < WORK_BUDGET {
            if !self.record_outcomes().await {
                return;
            }
            let due = self.outbox.due(now_ms());
            if due.is_empty() {
                return;
            }
            let attempts = due.iter().filter_map(|&endpoint| {
                let pending = self.outbox.head(endpoint)?.clone();
                let (sender, url) = (self.sender.clone(), self.endpoints[endpoint].url.clone());
                Some(async move {
                    let (answer, took) = sender.post(&url, &pending).await;
                    (endpoint, answer, took)
                })
            });
            for (endpoint, answer, took) in futures::future::join_all(attempts).await {
                self.metrics
                    .webhook_request_seconds
                    .observe(took.as_secs_f64());
                self.settle(endpoint, answer).await;
            }
        }
    }

    /// What an attempt at the head of `endpoint` leads to.
    async fn settle(&mut self, endpoint: usize, answer: Result<u16, Failure>) {
        let now = now_ms();
        match answer {
            Ok(code) => {
                if let Some(pending) = self.outbox.succeeded(endpoint) {
                    let status = self.status(&pending, DeliveryOutcome::Delivered, Ok(code), now);
                    self.unrecorded.push_back((Some(pending.source), status));
                }
            }
            Err(failure) => match self.outbox.failed(endpoint, now) {
                Some(AfterFailure::RetryAt(_)) => {
                    let Some(head) = self.outbox.head(endpoint) else {
                        return;
                    };
                    let status = self.status(head, DeliveryOutcome::Retrying, Err(&failure), now);
                    self.metrics
                        .webhook_deliveries
                        .with_label_values(&["retrying"])
                        .inc();
                    tracing::debug!(webhook = %status.webhook, event = %status.event_id, attempts = status.attempts, reason = %failure.reason, "webhook delivery failed; retrying");
                    // Informational: a lost retry record changes nothing but the status shown.
                    let key = status.device_id.as_str().to_owned();
                    if let Err(error) = self
                        .producer
                        .send_json(&self.status_topic, &key, &status)
                        .await
                    {
                        tracing::debug!(%error, "recording a webhook retry failed");
                    }
                }
                Some(AfterFailure::GivenUp(pending)) => {
                    let status =
                        self.status(&pending, DeliveryOutcome::GivenUp, Err(&failure), now);
                    tracing::warn!(webhook = %status.webhook, event = %status.event_id, attempts = status.attempts, reason = %failure.reason, "webhook delivery given up");
                    self.unrecorded.push_back((Some(pending.source), status));
                }
                None => {}
            },
        }
        self.metrics.webhook_outbox.set(self.outbox.len() as i64);
    }

    /// Write the final outcomes to Kafka, oldest first; each one written finishes its
    /// delivery (its record's offset may become durable). False when Kafka refused: the
    /// rest waits for the next round, and no new delivery is made meanwhile.
    async fn record_outcomes(&mut self) -> bool {
        while let Some((_, status)) = self.unrecorded.front() {
            let key = status.device_id.as_str();
            if let Err(error) = self
                .producer
                .send_json(&self.status_topic, key, status)
                .await
            {
                tracing::warn!(%error, "recording a webhook delivery failed; trying again");
                return false;
            }
            let (source, status) = self.unrecorded.pop_front().expect("a front");
            let outcome = match status.outcome {
                DeliveryOutcome::Delivered => "delivered",
                _ => "given_up",
            };
            self.metrics
                .webhook_deliveries
                .with_label_values(&[outcome])
                .inc();
            if let Some(source) = source {
                self.outbox.finish(&source);
            }
        }
        true
    }

    /// Wait until `count` deliveries fit, delivering meanwhile. False at shutdown.
    async fn make_room(&mut self, count: usize) -> bool {
        self.metrics.webhook_outbox_full.inc();
        while !self.outbox.fits(count) {
            self.work().await;
            if self.outbox.fits(count) {
                break;
            }
            let until_due = self
                .outbox
                .next_due_ms()
                .map_or(FULL_WAIT.as_millis() as i64, |due| due - now_ms());
            let wait =
                Duration::from_millis(until_due.clamp(10, FULL_WAIT.as_millis() as i64) as u64);
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        true
    }
}

impl RecordHandler for WebhookHandler {
    /// Queue the event's deliveries; a full outbox is worked down first.
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        let source = Source {
            topic: record.topic.to_owned(),
            partition: record.partition,
            offset: record.offset,
        };
        let now = now_ms();
        let deliveries = match self.notice_of(record) {
            Some(notice) => self.deliveries_of(notice, &source, now),
            None => Vec::new(),
        };
        if !self.outbox.fits(deliveries.len()) && !self.make_room(deliveries.len()).await {
            return Err(HandleError::Retry(
                "stopping with the webhook outbox full".into(),
            ));
        }
        self.outbox
            .admit(source, deliveries)
            .map_err(|Full| HandleError::Retry("webhook outbox full".into()))?;
        self.metrics.webhook_outbox.set(self.outbox.len() as i64);
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(TICK)
    }

    async fn on_tick(&mut self) -> Result<(), HandleError> {
        self.work().await;
        Ok(())
    }

    /// Record what was delivered, so its offsets are committed; the rest is delivered
    /// again by the partition's next owner.
    async fn on_shutdown(&mut self) {
        self.record_outcomes().await;
    }

    fn defers_commit(&self) -> bool {
        true
    }

    fn take_durable(&mut self) -> DurableOffsets {
        self.outbox.take_durable()
    }
}
