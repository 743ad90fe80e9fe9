//! One MQTT connection of a simulated device: from connect until the run stops or an
//! outage cuts it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetwatch_protocol::{
    now_ms, AckOutcome, AckPayload, CommandPayload, Connectivity, DesiredPayload, DeviceId,
    DeviceTopic, DeviceTopicKind, MetricName, StatePayload, StatusPayload, TelemetryPayload,
};
use rumqttc::QoS;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Publish};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{FleetStats, GroundTruth, RunClock, Schedule, SimDevice};
use crate::device::{Answer, CommandBehaviour, UpdatePlan, UpdateStage};
use crate::SimConfig;

/// How a connected session ended.
pub(super) enum SessionEnd {
    Stopped,
    Outage,
}

/// Run one session of `device`: readings on its ticker, commands, desired state and
/// update stages answered, until the run stops or its next outage.
#[allow(clippy::too_many_arguments)]
pub(super) async fn session(
    device: &mut SimDevice,
    config: &SimConfig,
    clock: RunClock,
    schedule: &Schedule,
    truth: &GroundTruth,
    stats: &Arc<FleetStats>,
    ticker: &mut tokio::time::Interval,
    stop: &CancellationToken,
) -> SessionEnd {
    let mut link = Link::connect(device, config, stats, stop);
    link.greet(device).await;
    let end = loop {
        let outage_in = device
            .next_outage
            .map(|at| Duration::from_millis((at - now_ms()).max(0) as u64));
        let tick = tokio::select! {
            _ = stop.cancelled() => break SessionEnd::Stopped,
            _ = sleep_or_forever(outage_in) => break SessionEnd::Outage,
            Some(message) = link.incoming.recv() => {
                link.on_message(device, config, message).await;
                continue;
            }
            Some((plan, stage)) = device.update_rx.recv() => {
                let (state, outcome) = device.on_update_stage(&plan, stage, config, stats);
                link.publish(DeviceTopicKind::State, to_json(&state)).await;
                if let Some(ack) = outcome {
                    link.answer(ack).await;
                }
                continue;
            }
            Some(ack) = device.finished_rx.recv() => {
                let ack = device.brain.finish(ack);
                link.answer(ack).await;
                continue;
            }
            tick = ticker.tick() => tick,
        };
        let t_ms = clock.ms(tick.into_std());
        let Some(values) = device.reading(t_ms, config, schedule, truth, stats) else {
            continue;
        };
        if !link.send_reading(device, t_ms, values).await {
            break SessionEnd::Stopped;
        }
    };
    link.close(end).await
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

/// A device's connection and what was sent on it.
struct Link {
    device_id: DeviceId,
    client: AsyncClient,
    /// The task driving the connection (reconnects, acknowledgements, incoming).
    connection: JoinHandle<()>,
    incoming: mpsc::Receiver<Publish>,
    /// The commands topic, then the desired-state topic.
    downstream: [String; 2],
    /// Every QoS 1 message handed to the client, and every one the broker acknowledged
    /// (counted by the connection task).
    handed: u64,
    acknowledged: Arc<AtomicU64>,
    behaviour: CommandBehaviour,
    stats: Arc<FleetStats>,
}

impl Link {
    fn connect(
        device: &SimDevice,
        config: &SimConfig,
        stats: &Arc<FleetStats>,
        stop: &CancellationToken,
    ) -> Self {
        // Its own copy of the id, so that the device stays free to change.
        let device_id = device.device_id.clone();
        let topic = |kind| DeviceTopic::new(device_id.clone(), kind).to_string();
        let mut options = MqttOptions::new(device.id.clone(), &config.mqtt_host, config.mqtt_port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(false)
            .set_max_packet_size(1024 * 1024, 1024 * 1024)
            .set_last_will(LastWill::new(
                topic(DeviceTopicKind::Status),
                status(Connectivity::Offline),
                QoS::AtLeastOnce,
                false,
            ));
        let (client, eventloop) = AsyncClient::new(options, 64);
        let acknowledged = Arc::new(AtomicU64::new(0));
        let (incoming_tx, incoming) = mpsc::channel::<Publish>(64);
        let downstream = [
            topic(DeviceTopicKind::Commands),
            topic(DeviceTopicKind::Desired),
        ];
        let connection = tokio::spawn(drive_connection(
            eventloop,
            client.clone(),
            downstream.clone(),
            incoming_tx,
            (stats.clone(), acknowledged.clone()),
            stop.clone(),
        ));
        Self {
            device_id,
            client,
            connection,
            incoming,
            downstream,
            handed: 0,
            acknowledged,
            behaviour: CommandBehaviour {
                failure_rate: config.command_failure_rate,
                slow_rate: config.slow_command_rate,
                slow_ms: config.slow_command_ms,
            },
            stats: stats.clone(),
        }
    }

    /// Say online; on the device's first connection, report its state too.
    async fn greet(&mut self, device: &mut SimDevice) {
        self.publish(DeviceTopicKind::Status, status(Connectivity::Online))
            .await;
        if device.first_session {
            device.first_session = false;
            let state = StatePayload {
                ts: Some(now_ms()),
                reported: device.brain.reported.clone(),
            };
            self.publish(DeviceTopicKind::State, to_json(&state)).await;
        }
    }

    /// Hand a QoS 1 message to the client; false when the client is gone.
    async fn publish(&mut self, kind: DeviceTopicKind, payload: Vec<u8>) -> bool {
        let topic = DeviceTopic::new(self.device_id.clone(), kind).to_string();
        let handed = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .is_ok();
        self.handed += u64::from(handed);
        handed
    }

    /// Report a command's outcome.
    async fn answer(&mut self, ack: AckPayload) {
        count_outcome(&self.stats, &ack);
        self.publish(DeviceTopicKind::Acks, to_json(&ack)).await;
    }

    async fn send_reading(&mut self, device: &mut SimDevice, t_ms: i64, values: Vec<f64>) -> bool {
        let payload = TelemetryPayload {
            ts: t_ms,
            seq: device.seq,
            metrics: device
                .metric_names
                .iter()
                .map(|&n| MetricName::from(n))
                .zip(values.iter().copied())
                .collect(),
        };
        device.previous = values;
        if !self
            .publish(DeviceTopicKind::Telemetry, to_json(&payload))
            .await
        {
            return false;
        }
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// A command or a desired-state change from the service.
    async fn on_message(&mut self, device: &mut SimDevice, config: &SimConfig, message: Publish) {
        if message.topic == self.downstream[0] {
            match serde_json::from_slice::<CommandPayload>(&message.payload) {
                Ok(command) => self.on_command(device, config, command).await,
                Err(error) => tracing::warn!(%error, "unreadable command"),
            }
            return;
        }
        match serde_json::from_slice::<DesiredPayload>(&message.payload) {
            Ok(desired) => {
                self.stats.desired_applied.fetch_add(1, Ordering::Relaxed);
                let state = device.brain.on_desired(desired, now_ms());
                self.publish(DeviceTopicKind::State, to_json(&state)).await;
            }
            Err(error) => tracing::warn!(%error, "unreadable desired state"),
        }
    }

    async fn on_command(
        &mut self,
        device: &mut SimDevice,
        config: &SimConfig,
        command: CommandPayload,
    ) {
        let now = now_ms();
        let stats = self.stats.clone();
        stats.commands_received.fetch_add(1, Ordering::Relaxed);
        let started = device.brain.started;
        let answers = if command.name == "software_update" {
            let (answers, plan) =
                device
                    .brain
                    .on_update(&command, config.update_failure_rate, &mut device.rng, now);
            if let Some(plan) = plan {
                stats.updates_started.fetch_add(1, Ordering::Relaxed);
                run_update(plan, config.update_stage_ms, device.update_tx.clone());
            }
            answers
        } else {
            device
                .brain
                .on_command(&command, self.behaviour, &mut device.rng, now)
        };
        let newly_started = device.brain.started - started;
        stats
            .commands_started
            .fetch_add(newly_started, Ordering::Relaxed);
        // A new (not resent) mode command changes what the device reports.
        if newly_started > 0 {
            if let Some(state) = device.brain.on_mode_command(&command, now) {
                self.publish(DeviceTopicKind::State, to_json(&state)).await;
            }
        }
        for answer in answers {
            match answer {
                Answer::Now(ack) => self.answer(ack).await,
                Answer::Later { delay_ms, ack } => {
                    let finished = device.finished_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                        let _ = finished.send(ack).await;
                    });
                }
            }
        }
    }

    fn outstanding(&self) -> u64 {
        self.handed
            .saturating_sub(self.acknowledged.load(Ordering::Relaxed))
    }

    /// An outage drops the connection without goodbye (the broker publishes the Last
    /// Will; what was not acknowledged is lost with the device's memory). A stop waits
    /// briefly for the broker to acknowledge what was sent, says offline, disconnects.
    async fn close(mut self, end: SessionEnd) -> SessionEnd {
        if let SessionEnd::Outage = end {
            self.connection.abort();
            self.stats
                .lost_in_outages
                .fetch_add(self.outstanding(), Ordering::Relaxed);
            return end;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.outstanding() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stats
            .unacknowledged_at_exit
            .fetch_add(self.outstanding(), Ordering::Relaxed);
        self.publish(DeviceTopicKind::Status, status(Connectivity::Offline))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.connection).await;
        end
    }
}

/// Drive the connection: count connections and acknowledgements, subscribe on every
/// connect, pass incoming messages on, reconnect after a second when it drops.
async fn drive_connection(
    mut eventloop: EventLoop,
    client: AsyncClient,
    downstream: [String; 2],
    incoming: mpsc::Sender<Publish>,
    (stats, acknowledged): (Arc<FleetStats>, Arc<AtomicU64>),
    stop: CancellationToken,
) {
    let mut connected = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if !connected {
                    stats.connected.fetch_add(1, Ordering::Relaxed);
                    connected = true;
                }
                for filter in &downstream {
                    let _ = client.try_subscribe(filter, QoS::AtLeastOnce);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                stats.acknowledged.fetch_add(1, Ordering::Relaxed);
                acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if incoming.send(publish).await.is_err() {
                    break;
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(error) => {
                if stop.is_cancelled() {
                    break;
                }
                if connected {
                    stats.connected.fetch_sub(1, Ordering::Relaxed);
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    connected = false;
                }
                tracing::debug!(%error, "device connection lost; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    if connected {
        stats.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

fn status(status: Connectivity) -> Vec<u8> {
    to_json(&StatusPayload {
        status,
        ts: Some(now_ms()),
    })
}

/// Walk an update through its stages, `stage_ms` apart (the first after a simulated
/// download of that long).
fn run_update(plan: UpdatePlan, stage_ms: u64, stages: mpsc::Sender<(UpdatePlan, UpdateStage)>) {
    tokio::spawn(async move {
        for stage in plan.stages() {
            if stages.send((plan.clone(), stage)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(stage_ms)).await;
        }
    });
}

fn count_outcome(stats: &FleetStats, ack: &AckPayload) {
    let counter = match ack.outcome {
        AckOutcome::Received => return,
        AckOutcome::Succeeded => &stats.commands_succeeded,
        AckOutcome::Failed => &stats.commands_failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A wire type as JSON bytes (they always serialize).
fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("wire types serialize")
}
