//! One actor per device: the device's mirror as last seen.

use actix::{Actor, Context, Handler, Message, MessageResult};
use fleetwatch_protocol::{
    AckPayload, Connectivity, DeviceEvent, DeviceEventBody, DeviceId, SequenceTracker,
    TelemetryPayload,
};
use serde::Serialize;

/// What the service knows about a device, as served by `GET /devices/{id}`.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceSnapshot {
    pub device_id: DeviceId,
    /// `null` until the device said or showed anything about it.
    pub connectivity: Option<Connectivity>,
    /// When connectivity last changed (service clock, ms).
    pub connectivity_since_ms: Option<i64>,
    /// When the last event arrived (service clock, ms).
    pub last_seen_ms: Option<i64>,
    pub last_telemetry: Option<TelemetryPayload>,
    /// The device's reported state, merged key by key.
    pub reported: serde_json::Map<String, serde_json::Value>,
    pub last_ack: Option<AckPayload>,
    /// Events applied, and duplicates dropped.
    pub events: u64,
    pub duplicates: u64,
}

pub struct DeviceActor {
    mailbox_capacity: usize,
    sequence: SequenceTracker,
    mirror: DeviceSnapshot,
}

impl DeviceActor {
    pub fn new(device_id: DeviceId, mailbox_capacity: usize) -> Self {
        Self {
            mailbox_capacity,
            sequence: SequenceTracker::default(),
            mirror: DeviceSnapshot {
                device_id,
                connectivity: None,
                connectivity_since_ms: None,
                last_seen_ms: None,
                last_telemetry: None,
                reported: serde_json::Map::new(),
                last_ack: None,
                events: 0,
                duplicates: 0,
            },
        }
    }

    fn set_connectivity(&mut self, connectivity: Connectivity, at_ms: i64) {
        if self.mirror.connectivity != Some(connectivity) {
            self.mirror.connectivity = Some(connectivity);
            self.mirror.connectivity_since_ms = Some(at_ms);
            tracing::debug!(device = %self.mirror.device_id, ?connectivity, "connectivity changed");
        }
    }
}

impl Actor for DeviceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
    }
}

/// Apply one event from `iot.telemetry`. Answers false for a duplicate.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct ApplyEvent(pub DeviceEvent);

impl Handler<ApplyEvent> for DeviceActor {
    type Result = bool;

    fn handle(&mut self, ApplyEvent(event): ApplyEvent, _: &mut Context<Self>) -> bool {
        let at = event.received_ms;
        match event.body {
            DeviceEventBody::Telemetry(telemetry) => {
                if !self.sequence.accept(telemetry.seq) {
                    self.mirror.duplicates += 1;
                    return false;
                }
                // Sending is being online, whatever the last status message said.
                self.set_connectivity(Connectivity::Online, at);
                self.mirror.last_telemetry = Some(telemetry);
            }
            DeviceEventBody::State(state) => {
                self.mirror.reported.extend(state.reported);
            }
            DeviceEventBody::Status(status) => self.set_connectivity(status.status, at),
            DeviceEventBody::Ack(ack) => self.mirror.last_ack = Some(ack),
        }
        self.mirror.events += 1;
        self.mirror.last_seen_ms = Some(at);
        true
    }
}

/// Read the device's snapshot.
#[derive(Message)]
#[rtype(result = "DeviceSnapshot")]
pub struct GetSnapshot;

impl Handler<GetSnapshot> for DeviceActor {
    type Result = MessageResult<GetSnapshot>;

    fn handle(&mut self, _: GetSnapshot, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.mirror.clone())
    }
}
