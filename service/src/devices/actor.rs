//! One actor per device: holds the twin, applies events and requests to it, carries out
//! the effects (changelog write, messages to the device), runs its timers, and stops
//! itself when idle (passivation).

use std::sync::Arc;

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, MessageResult,
    WrapFuture,
};
use fleetwatch_protocol::{
    now_ms, DeviceEvent, DeviceRequestBody, DeviceTopic, DeviceTopicKind, JsonObject, ReplyStatus,
};
use serde::Serialize;
use serde_json::json;

use super::changelog::{ChangelogWrite, Lane, LastWrite};
use super::timers::{TimerDue, TimerId};
use super::twin::{Downlink, Effects, SourcePosition, Twin, TwinError};
use super::Shared;

pub struct DeviceActor {
    twin: Twin,
    shared: Arc<Shared>,
    /// This actor's timer in the shared [`super::timers::ActorTimers`], and when it is
    /// armed for (service clock, ms).
    timer_id: TimerId,
    timer: Option<i64>,
    /// When the actor last handled an event or a request (service clock, ms).
    last_activity_ms: i64,
    /// Whether this device is counted in `fleetwatch_devices_online`.
    counted_online: bool,
    /// The twin's newest write: which lane the next one may take.
    last_write: Option<LastWrite>,
}

/// What `GET /devices/{id}` shows: the twin and its delta.
#[derive(Clone, Debug, Serialize)]
pub struct TwinView {
    #[serde(flatten)]
    pub twin: Twin,
    pub delta: JsonObject,
}

impl DeviceActor {
    pub(super) fn new(twin: Twin, shared: Arc<Shared>) -> Self {
        Self {
            twin,
            timer_id: shared.timers.new_id(),
            shared,
            timer: None,
            last_activity_ms: now_ms(),
            counted_online: false,
            last_write: None,
        }
    }

    /// Keep `fleetwatch_devices_online` in step with the twin.
    fn count_online(&mut self) {
        let online = self.twin.is_online();
        if online != self.counted_online {
            let gauge = &self.shared.metrics.devices_online;
            if online {
                gauge.inc()
            } else {
                gauge.dec()
            }
            self.counted_online = online;
        }
    }

    fn view(&self) -> TwinView {
        TwinView {
            delta: self.twin.delta(),
            twin: self.twin.clone(),
        }
    }

    /// Persist first (queued now, so records keep the order of the changes; through the
    /// `lane` asked for when the order allows it), then publish to the device. Returns
    /// the pending write.
    fn carry_out(&mut self, effects: Effects, lane: Lane) -> Option<ChangelogWrite> {
        self.count_online();
        let device = self.twin.device_id.clone();
        let metrics = &self.shared.metrics;
        for state in &effects.entered {
            metrics
                .command_transitions
                .with_label_values(&[state.as_str()])
                .inc();
        }
        if let Some(change) = &effects.connectivity {
            metrics
                .connectivity_changes
                .with_label_values(&[change.to.as_str(), change.cause.as_str()])
                .inc();
            // Per-device lines would flood the log when a whole fleet drops off (a broker
            // restart, the demo stopping): operators see connectivity in
            // `fleetwatch_device_connectivity_changes_total` and the twin's history.
            tracing::debug!(
                %device,
                to = change.to.as_str(),
                cause = change.cause.as_str(),
                "connectivity changed"
            );
        }
        let write = effects.persist.then(|| {
            self.shared
                .changelog
                .write(&mut self.twin, &effects, lane, &mut self.last_write)
        });
        for message in effects.downlink {
            let (kind, payload) = match &message {
                Downlink::Command(command) => {
                    (DeviceTopicKind::Commands, serde_json::to_vec(command))
                }
                Downlink::Desired(desired) => {
                    (DeviceTopicKind::Desired, serde_json::to_vec(desired))
                }
            };
            let topic = DeviceTopic::new(device.clone(), kind).to_string();
            self.shared
                .downlink
                .publish(topic, payload.expect("wire types serialize"));
        }
        write
    }

    /// Carry out effects that no consumer waits for (timers): the write is confirmed in
    /// the background and a failure is counted; the twin is rewritten by its next change.
    fn carry_out_detached(&mut self, effects: Effects, ctx: &mut Context<Self>) {
        if let Some(write) = self.carry_out(effects, Lane::Bulk) {
            let metrics = self.shared.metrics.clone();
            ctx.spawn(
                async move {
                    if let Err(error) = write.confirmed().await {
                        metrics.twin_write_failures.inc();
                        tracing::warn!(%error, "twin write failed");
                    }
                }
                .into_actor(self),
            );
        }
    }

    /// Make sure the timer fires by the next thing to do: a twin rule or passivation.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        let rules = &self.shared.config.twin;
        let passivate_at = (self.twin.pending_commands() == 0)
            .then(|| self.last_activity_ms + self.shared.config.passivate_after_ms as i64);
        let next = [self.twin.next_deadline(rules), passivate_at]
            .into_iter()
            .flatten()
            .min();
        // An armed timer due no later than needed stays: when it fires, the rules look at
        // the real deadlines and the timer is armed again. So a device's every message
        // (which moves its silence deadline) does not cancel and re-create a timer.
        let Some(at) = next else { return };
        if self.timer.is_some_and(|armed| armed <= at) {
            return;
        }
        let replaced = self.timer.replace(at);
        let me = ctx.address().downgrade();
        self.shared.timers.arm(self.timer_id, replaced, at, me);
    }

    fn on_timer(&mut self, ctx: &mut Context<Self>) {
        let now = now_ms();
        let effects = self.twin.on_timer(now, &self.shared.config.twin);
        self.carry_out_detached(effects, ctx);
        let idle_for = now - self.last_activity_ms;
        if self.twin.pending_commands() == 0
            && idle_for >= self.shared.config.passivate_after_ms as i64
        {
            self.passivate(ctx);
        } else {
            self.schedule(ctx);
        }
    }

    /// Stop, leaving the twin in the changelog: write it once more (telemetry is not
    /// persisted on its own), wait for the confirmation, leave the registry, stop.
    fn passivate(&mut self, ctx: &mut Context<Self>) {
        if self.twin.version == 0 {
            // Nothing ever changed (a refused write for an unknown device, say): there is
            // nothing to keep.
            self.shared
                .live
                .remove_if(&self.twin.device_id, &ctx.address());
            self.shared.metrics.device_passivations.inc();
            ctx.stop();
            return;
        }
        let write = self.shared.changelog.write(
            &mut self.twin,
            &Effects::default(),
            Lane::Bulk,
            &mut self.last_write,
        );
        let (shared, device, me) = (
            self.shared.clone(),
            self.twin.device_id.clone(),
            ctx.address(),
        );
        ctx.wait(
            async move {
                let written = write.confirmed().await;
                (written, shared, device, me)
            }
            .into_actor(self)
            .map(|(written, shared, device, me), actor, ctx| match written {
                Ok(()) => {
                    shared.live.remove_if(&device, &me);
                    shared.metrics.device_passivations.inc();
                    tracing::debug!(%device, "device actor passivated");
                    ctx.stop();
                }
                Err(error) => {
                    // Stay alive: stopping now would lose the unwritten state.
                    tracing::warn!(%device, %error, "passivation write failed; staying live");
                    actor.last_activity_ms = now_ms();
                    actor.schedule(ctx);
                }
            }),
        );
    }

    fn handle_request(
        &mut self,
        body: DeviceRequestBody,
        at_ms: i64,
    ) -> (ReplyStatus, serde_json::Value, Effects) {
        let rules = &self.shared.config.twin;
        let error = |message: String| json!({ "error": message });
        match body {
            DeviceRequestBody::GetTwin => (
                ReplyStatus::Ok,
                serde_json::to_value(self.view()).expect("twins serialize"),
                Effects::default(),
            ),
            DeviceRequestBody::GetCommand { command_id } => match self.twin.command(&command_id) {
                Some(command) => (ReplyStatus::Ok, json!(command), Effects::default()),
                None => (
                    ReplyStatus::NotFound,
                    error(format!(
                        "device {} has no command {command_id} (finished commands are kept up to devices.twin.kept_finished_commands)",
                        self.twin.device_id
                    )),
                    Effects::default(),
                ),
            },
            DeviceRequestBody::ListCommands => (
                ReplyStatus::Ok,
                json!({ "commands": self.twin.commands() }),
                Effects::default(),
            ),
            DeviceRequestBody::SendCommand(new) => match self.twin.submit(new, at_ms, rules) {
                Ok(submitted) => (
                    if submitted.created {
                        ReplyStatus::Created
                    } else {
                        ReplyStatus::Ok
                    },
                    json!(submitted.command),
                    submitted.effects,
                ),
                Err(refused) => (status_of(&refused), error(refused.to_string()), Effects::default()),
            },
            DeviceRequestBody::AlarmAction {
                alarm_id,
                action,
                by,
            } => match self.twin.alarm_action(&alarm_id, action, &by, at_ms) {
                Ok((alarm, effects)) => (ReplyStatus::Ok, json!(alarm), effects),
                Err(refused) => (
                    ReplyStatus::NotFound,
                    error(refused.to_string()),
                    Effects::default(),
                ),
            },
            DeviceRequestBody::SetTenant { tenant } => {
                let effects = self.twin.set_tenant(tenant);
                (
                    ReplyStatus::Ok,
                    json!({ "device_id": self.twin.device_id, "tenant": self.twin.tenant }),
                    effects,
                )
            }
            DeviceRequestBody::SetDesired {
                desired,
                merge,
                if_match,
            } => match self.twin.set_desired(desired, merge, if_match, at_ms) {
                Ok(effects) => (
                    ReplyStatus::Ok,
                    json!({
                        "desired": self.twin.desired(),
                        "version": self.twin.desired_version(),
                        "delta": self.twin.delta(),
                    }),
                    effects,
                ),
                Err(refused) => (status_of(&refused), error(refused.to_string()), Effects::default()),
            },
        }
    }
}

fn status_of(error: &TwinError) -> ReplyStatus {
    match error {
        TwinError::VersionMismatch { .. } | TwinError::KeyReused { .. } => ReplyStatus::Conflict,
        TwinError::TooManyPending { .. } => ReplyStatus::TooManyPending,
    }
}

impl Actor for DeviceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.shared.config.mailbox_capacity);
        self.shared.metrics.device_actors.inc();
        self.count_online();
        // A restored twin may have commands to expire or resend, or be due for a
        // silence check.
        self.on_timer(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(at) = self.timer.take() {
            self.shared.timers.disarm(self.timer_id, at);
        }
        self.shared.metrics.device_actors.dec();
        if self.counted_online {
            self.shared.metrics.devices_online.dec();
        }
    }
}

/// What applying an event did.
pub struct Applied {
    pub duplicate: bool,
    /// The twin's changelog write, to be confirmed before the event's offset is stored.
    pub write: Option<ChangelogWrite>,
}

/// Apply one event from `iot.telemetry`, read at the position given (`None`: not read
/// from Kafka, never taken for a replay).
#[derive(Message)]
#[rtype(result = "Applied")]
pub struct ApplyEvent(pub Arc<DeviceEvent>, pub Option<SourcePosition>);

impl Handler<ApplyEvent> for DeviceActor {
    type Result = MessageResult<ApplyEvent>;

    fn handle(
        &mut self,
        ApplyEvent(event, source): ApplyEvent,
        ctx: &mut Context<Self>,
    ) -> Self::Result {
        self.last_activity_ms = now_ms();
        if source.is_some_and(|source| self.twin.already_applied(source)) {
            return MessageResult(Applied {
                duplicate: true,
                write: None,
            });
        }
        let device_ts = match &event.body {
            fleetwatch_protocol::DeviceEventBody::Telemetry(reading) => Some(reading.ts),
            _ => None,
        };
        let applied =
            match self
                .twin
                .apply_event(&event.body, event.received_ms, &self.shared.config.twin)
            {
                None => Applied {
                    duplicate: true,
                    write: None,
                },
                Some(effects) => {
                    if let Some(ts) = device_ts {
                        let delay_ms = now_ms().saturating_sub(ts).max(0);
                        self.shared
                            .metrics
                            .twin_update_delay_seconds
                            .observe(delay_ms as f64 / 1000.0);
                    }
                    Applied {
                        duplicate: false,
                        write: self.carry_out(effects, Lane::Bulk),
                    }
                }
            };
        self.schedule(ctx);
        MessageResult(applied)
    }
}

/// A scorer alert for the device's alarms; the write to confirm, if any.
#[derive(Message)]
#[rtype(result = "Option<ChangelogWrite>")]
pub struct ApplyAlert(pub fleetwatch_protocol::Alert);

impl Handler<ApplyAlert> for DeviceActor {
    type Result = MessageResult<ApplyAlert>;

    fn handle(&mut self, ApplyAlert(alert): ApplyAlert, ctx: &mut Context<Self>) -> Self::Result {
        let effects = self.twin.apply_alert(&alert, now_ms());
        let write = self.carry_out(effects, Lane::Bulk);
        self.schedule(ctx);
        MessageResult(write)
    }
}

/// The answer to a request, and the write to confirm before answering.
pub struct Answered {
    pub status: ReplyStatus,
    pub body: serde_json::Value,
    pub write: Option<ChangelogWrite>,
}

/// Handle one request from `iot.commands`.
#[derive(Message)]
#[rtype(result = "Answered")]
pub struct HandleRequest {
    pub body: DeviceRequestBody,
    pub at_ms: i64,
    /// [`Lane::Urgent`] when a person waits for the answer.
    pub lane: Lane,
}

impl Handler<HandleRequest> for DeviceActor {
    type Result = MessageResult<HandleRequest>;

    fn handle(&mut self, request: HandleRequest, ctx: &mut Context<Self>) -> Self::Result {
        self.last_activity_ms = now_ms();
        let (status, body, effects) = self.handle_request(request.body, request.at_ms);
        let write = self.carry_out(effects, request.lane);
        self.schedule(ctx);
        MessageResult(Answered {
            status,
            body,
            write,
        })
    }
}

/// Read the twin (a local read; does not count as activity).
#[derive(Message)]
#[rtype(result = "TwinView")]
pub struct GetTwin;

impl Handler<GetTwin> for DeviceActor {
    type Result = MessageResult<GetTwin>;

    fn handle(&mut self, _: GetTwin, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.view())
    }
}

impl Handler<TimerDue> for DeviceActor {
    type Result = ();

    fn handle(&mut self, TimerDue(at): TimerDue, ctx: &mut Context<Self>) {
        // Re-armed for another time meanwhile: that one comes on its own.
        if self.timer != Some(at) {
            return;
        }
        self.timer = None;
        self.on_timer(ctx);
    }
}

/// Stop now (the partition moved to another instance).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for DeviceActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
