//! The devices role: one actor per device holding its twin (reported, desired, delta,
//! connectivity, command journal). It consumes its partitions of `iot.telemetry` (what
//! devices say) and `iot.commands` (requests from the REST API) in group `devices`;
//! every change is written to `iot.device-state` before the record's offset is stored
//! (`pending.rs`: without waiting for each write before the next record), so a restart
//! or a new owner continues from exactly the state the effects left.

mod actor;
mod alarms;
mod changelog;
mod config;
mod pending;
mod registry;
mod role;
mod timers;
mod twin;

use std::sync::Arc;

use fleetwatch_protocol::{
    DeviceEvent, DeviceEventBody, DeviceId, DeviceReply, DeviceRequest, ReplyStatus,
};

pub use actor::{
    Answered, Applied, ApplyAlert, ApplyEvent, DeviceActor, GetTwin, HandleRequest, Stop, TwinView,
};
pub use alarms::{severity, AlarmError, KEPT_ALARMS};
pub use changelog::{Changelog, Lane, SideTopics};
pub use config::{DevicesConfig, TwinRules};
pub use pending::{Landing, PendingWrites, MAX_PENDING_WRITES};
pub use registry::{DeviceRegistry, LiveActors};
pub use role::ROLE;
pub use twin::{
    ConnectivityCause, ConnectivityChange, ConnectivityHistory, Downlink, Effects, LastTelemetry,
    SourcePosition, Twin, TwinError, TwinExtras,
};

use crate::kafka::{
    decode_event, decode_record, DurableOffsets, HandleError, Producer, Record, RecordHandler,
};
use crate::metrics::Metrics;
use crate::mqtt::MqttPublisher;
use crate::tenancy::Directory;

/// What every device actor of an instance shares.
pub struct Shared {
    pub config: DevicesConfig,
    pub changelog: Arc<Changelog>,
    pub downlink: MqttPublisher,
    pub metrics: Arc<Metrics>,
    pub live: LiveActors,
    /// Every actor's timer (`timers.rs`).
    pub timers: Arc<timers::ActorTimers>,
    /// Tenants of devices not yet seen here (provisioning rules, or an assignment made
    /// before the twin existed).
    pub directory: Arc<Directory>,
}

/// Create the registry. Must be called inside an actix `System`.
pub fn registry(
    config: DevicesConfig,
    changelog: Arc<Changelog>,
    downlink: MqttPublisher,
    directory: Arc<Directory>,
    metrics: Arc<Metrics>,
) -> DeviceRegistry {
    DeviceRegistry::new(Arc::new(Shared {
        config,
        changelog,
        downlink,
        metrics,
        live: LiveActors::default(),
        timers: Arc::default(),
        directory,
    }))
}

pub struct DevicesHandler {
    pub registry: Arc<DeviceRegistry>,
    /// Names of `iot.commands`, `iot.alerts` and `iot.replies` (kept, not rebuilt per
    /// record).
    pub commands_topic: String,
    pub alerts_topic: String,
    pub replies_topic: String,
    /// Replies to REST requests: a producer of their own lingering
    /// `kafka.urgent_linger_ms`, as a person waits on each (the twins' producer lingers
    /// `kafka.linger_ms`).
    pub replies: Producer,
    /// Where a command's answer waits for its journal write: the process's runtime, not
    /// the arbiter this consumer runs on, whose thread a burst of records keeps busy
    /// (there the demo's first command waited 10–30 ms longer for its reply).
    pub answers: tokio::runtime::Handle,
    pub metrics: Arc<Metrics>,
    /// Twin writes on their way, with the records that caused them.
    pub pending: PendingWrites,
}

impl DevicesHandler {
    fn retry(error: impl std::fmt::Display) -> HandleError {
        HandleError::Retry(error.to_string())
    }

    /// A twin write that failed for good (the producer retried for
    /// `kafka.delivery_timeout_ms`) stops the role. Retrying the record would apply it to
    /// the twin a second time; a restart instead restores the twin from the changelog
    /// and applies the record (whose offset was not stored) once.
    fn write_failed(error: impl std::fmt::Display) -> HandleError {
        HandleError::Fatal(format!("twin write failed: {error}"))
    }

    /// Send `message()` to the device's actor (started or read back if needed; `None`
    /// when there is none and `create` is false). An actor may passivate between lookup
    /// and send: then it is looked up once more.
    async fn ask_actor<M>(
        &self,
        device_id: &DeviceId,
        partition: i32,
        create: bool,
        message: impl Fn() -> M,
    ) -> Result<Option<M::Result>, HandleError>
    where
        M: actix::Message + Send + 'static,
        M::Result: Send,
        DeviceActor: actix::Handler<M>,
    {
        for _ in 0..2 {
            let Some(actor) = self
                .registry
                .actor_for(device_id, partition, create)
                .await
                .map_err(Self::retry)?
            else {
                return Ok(None);
            };
            // Counted while queued in the actor's mailbox or being handled.
            let depth = self.metrics.mailbox_depth.with_label_values(&["device"]);
            depth.inc();
            let answered = actor.send(message()).await;
            depth.dec();
            match answered {
                Ok(answer) => return Ok(Some(answer)),
                Err(_) => self.registry.forget(device_id, &actor),
            }
        }
        Err(HandleError::Retry(format!(
            "actor of {device_id} kept stopping"
        )))
    }

    /// Remove every trace of the device here: its actor, its twin (with its commands)
    /// and its directory entry, tombstoned so they stay gone. The trainer and the scorer
    /// see the same record and forget their part.
    async fn decommission(&self, device_id: &DeviceId, partition: i32) -> Result<(), HandleError> {
        if let Some(actor) = self.registry.get(device_id) {
            let _ = actor.send(Stop).await;
            self.registry.forget(device_id, &actor);
        }
        self.registry
            .changelog()
            .remove(device_id, partition)
            .await
            .map_err(Self::retry)?;
        self.metrics.devices_decommissioned.inc();
        tracing::info!(device = %device_id, "device decommissioned");
        Ok(())
    }

    /// Apply a device's event to its twin; the twin write it caused, if any.
    async fn apply_event(&self, event: DeviceEvent, source: SourcePosition) -> Handled {
        let partition = source.partition;
        let device_id = event.device_id.clone();
        if event.body == DeviceEventBody::Decommissioned {
            return self
                .decommission(&device_id, partition)
                .await
                .map(|()| None);
        }
        // Shared, not cloned: a second attempt (the actor stopped with the first in its
        // mailbox) sends the same event again.
        let event = Arc::new(event);
        let applied = self
            .ask_actor(&device_id, partition, true, || {
                ApplyEvent(Arc::clone(&event), Some(source))
            })
            .await?;
        match applied {
            Some(Applied {
                duplicate: true, ..
            }) => {
                self.metrics
                    .skipped
                    .with_label_values(&["devices", "duplicate"])
                    .inc();
                Ok(None)
            }
            Some(Applied { write, .. }) => Ok(write.map(Landing::from)),
            None => Ok(None),
        }
    }

    /// Fold a scorer alert into the device's alarms. An alert for a device with no twin
    /// here (decommissioned since) is dropped.
    async fn apply_alert(&self, alert: fleetwatch_protocol::Alert, partition: i32) -> Handled {
        let device_id = alert.device_id.clone();
        let write = self
            .ask_actor(&device_id, partition, false, || ApplyAlert(alert.clone()))
            .await?;
        Ok(write.flatten().map(Landing::from))
    }

    /// Ask the device's actor; the answer goes back once the command's journal write
    /// (if any) has landed, from a task of its own, so the next record is not held up
    /// for a produce round trip. The record's offset waits for that task.
    async fn handle_request(
        &self,
        request: DeviceRequest,
        partition: i32,
    ) -> Result<Option<Landing>, HandleError> {
        let create = request.body.creates_twin();
        // A fleet job's commands (nobody waits on each) go with the telemetry.
        let lane = match request.reply_to {
            Some(_) => Lane::Urgent,
            None => Lane::Bulk,
        };
        let answered = self
            .ask_actor(&request.device_id, partition, create, || HandleRequest {
                body: request.body.clone(),
                at_ms: fleetwatch_protocol::now_ms(),
                lane,
            })
            .await?;
        let Answered {
            status,
            body,
            write,
        } = answered.unwrap_or_else(|| Answered {
            status: ReplyStatus::NotFound,
            body: serde_json::json!({
                "error": format!("no device {} is known", request.device_id)
            }),
            write: None,
        });
        let answer = Answer {
            kind: request.body.kind(),
            reply: request.reply_to.map(|reply_to| DeviceReply {
                request_id: request.request_id,
                reply_to,
                status,
                body,
            }),
            status,
            replies: self.replies.clone(),
            replies_topic: self.replies_topic.clone(),
            metrics: self.metrics.clone(),
        };
        let Some(write) = write else {
            answer.send().await;
            return Ok(None);
        };
        let (landed, landing) = tokio::sync::oneshot::channel();
        self.answers.spawn(async move {
            let outcome = write.confirmed().await;
            if outcome.is_ok() {
                answer.send().await;
            }
            let _ = landed.send(outcome);
        });
        Ok(Some(Landing::Task(landing)))
    }
}

/// A request's answer, sent once its effect is durable.
struct Answer {
    kind: &'static str,
    status: ReplyStatus,
    /// `None` when nobody waits for it (a job's command).
    reply: Option<DeviceReply>,
    replies: Producer,
    replies_topic: String,
    metrics: Arc<Metrics>,
}

impl Answer {
    async fn send(self) {
        self.metrics
            .device_requests
            .with_label_values(&[self.kind, self.status.as_str()])
            .inc();
        let Some(reply) = self.reply else {
            return;
        };
        let payload = serde_json::to_vec(&reply).expect("replies serialize");
        let delivery = (self.replies)
            .enqueue(&self.replies_topic, &reply.reply_to, &payload)
            .await;
        // Not awaited: the effect is done; a lost reply makes the asker time out and
        // retry, which idempotency keys make safe.
        tokio::spawn(async move {
            if let Err(error) = delivery.confirmed().await {
                tracing::warn!(%error, "reply not delivered");
            }
        });
    }
}

/// How often owned partitions that saw no record yet are restored anyway, so their
/// twins' timers (expiries, silence) run.
const RESTORE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl RecordHandler for DevicesHandler {
    fn tick_interval(&self) -> Option<std::time::Duration> {
        Some(RESTORE_CHECK)
    }

    async fn on_tick(&mut self) -> Result<(), HandleError> {
        self.pending.settle_ready().map_err(Self::write_failed)?;
        for partition in self.registry.unrestored() {
            if let Err(error) = self.registry.ensure_restored(partition).await {
                tracing::warn!(partition, %error, "restoring partition failed; will retry");
            }
        }
        Ok(())
    }

    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        self.pending.settle_ready().map_err(Self::write_failed)?;
        let write = self.dispatch(record).await?;
        self.pending.push(record, write);
        if self.pending.is_full() {
            self.pending
                .settle_oldest()
                .await
                .map_err(Self::write_failed)?;
        }
        Ok(())
    }

    async fn on_shutdown(&mut self) {
        if let Err(error) = self.pending.settle_all().await {
            tracing::warn!(%error, "twin writes not confirmed at shutdown; their records are read again");
        }
    }

    fn defers_commit(&self) -> bool {
        true
    }

    fn take_durable(&mut self) -> DurableOffsets {
        self.pending.take_durable()
    }
}

impl DevicesHandler {
    /// Handle one record; the twin write it caused, if any (its offset waits for it).
    async fn dispatch(&self, record: &Record<'_>) -> Handled {
        let partition = record.partition;
        // A new owner reads the partition's twins before handling anything of it.
        self.registry
            .ensure_restored(partition)
            .await
            .map_err(Self::retry)?;
        if record.topic == self.alerts_topic {
            match decode_record::<fleetwatch_protocol::Alert>(record, "devices", &self.metrics) {
                Some(alert) => self.apply_alert(alert, partition).await,
                None => Ok(None),
            }
        } else if record.topic == self.commands_topic {
            match decode_record::<DeviceRequest>(record, "devices", &self.metrics) {
                Some(request) => self.handle_request(request, partition).await,
                None => Ok(None),
            }
        } else {
            match decode_event(record, "devices", &self.metrics) {
                Some(event) => {
                    let source = SourcePosition {
                        partition,
                        offset: record.offset,
                    };
                    self.apply_event(event, source).await
                }
                None => Ok(None),
            }
        }
    }
}

/// What handling a record left on its way: the twin write it caused, if any.
type Handled = Result<Option<Landing>, HandleError>;

#[cfg(test)]
mod tests;
