//! A device the tests control: connects over MQTT with a Last Will, says it is online,
//! answers commands and desired state like the simulator's devices do (args decide:
//! `{"simulate": "fail"}`, `{"delay_ms": n}`), and can go away politely or abruptly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleetwatch_protocol::{
    now_ms, CommandPayload, Connectivity, DesiredPayload, DeviceId, DeviceTopic, DeviceTopicKind,
    StatusPayload,
};
use fleetwatch_sim::device::{Answer, CommandBehaviour, DeviceBrain};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::Rig;

/// Commands succeed at once unless their args say otherwise.
const OBEDIENT: CommandBehaviour = CommandBehaviour {
    failure_rate: 0.0,
    slow_rate: 0.0,
    slow_ms: 0,
};

pub struct TestDevice {
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
    /// Command messages received (resends included).
    pub commands_received: Arc<AtomicU64>,
    status_topic: String,
}

fn status(to: Connectivity) -> Vec<u8> {
    serde_json::to_vec(&StatusPayload {
        status: to,
        ts: Some(now_ms()),
    })
    .unwrap()
}

impl TestDevice {
    /// Connect `id`. A `mute` device receives commands but never answers.
    pub async fn connect(rig: &Rig, id: &str, mute: bool) -> Self {
        let device_id = DeviceId::parse(id).unwrap();
        let topic = |kind| DeviceTopic::new(device_id.clone(), kind).to_string();
        let status_topic = topic(DeviceTopicKind::Status);
        let mut options = MqttOptions::new(id, &rig.mqtt_host, rig.mqtt_port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(true)
            .set_last_will(LastWill::new(
                &status_topic,
                status(Connectivity::Offline),
                QoS::AtLeastOnce,
                false,
            ));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let commands_received = Arc::new(AtomicU64::new(0));
        let (commands_topic, desired_topic, acks_topic, state_topic) = (
            topic(DeviceTopicKind::Commands),
            topic(DeviceTopicKind::Desired),
            topic(DeviceTopicKind::Acks),
            topic(DeviceTopicKind::State),
        );
        let (connected_tx, mut connected_rx) = mpsc::channel(1);
        let task = {
            let (client, received, status_topic) = (
                client.clone(),
                commands_received.clone(),
                status_topic.clone(),
            );
            tokio::spawn(async move {
                let mut brain = DeviceBrain::default();
                let mut rng = StdRng::seed_from_u64(1);
                let (later_tx, mut later) = mpsc::channel(64);
                loop {
                    tokio::select! {
                        Some(ack) = later.recv() => {
                            let ack = brain.finish(ack);
                            let _ = client.publish(&acks_topic, QoS::AtLeastOnce, false, serde_json::to_vec(&ack).unwrap()).await;
                        }
                        event = eventloop.poll() => match event {
                            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                                for filter in [&commands_topic, &desired_topic] {
                                    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
                                }
                                client.publish(&status_topic, QoS::AtLeastOnce, false, status(Connectivity::Online)).await.unwrap();
                            }
                            Ok(Event::Incoming(Packet::SubAck(_))) => {
                                let _ = connected_tx.try_send(());
                            }
                            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == commands_topic => {
                                received.fetch_add(1, Ordering::Relaxed);
                                if mute {
                                    continue;
                                }
                                let command: CommandPayload = serde_json::from_slice(&publish.payload).unwrap();
                                for answer in brain.on_command(&command, OBEDIENT, &mut rng, now_ms()) {
                                    match answer {
                                        Answer::Now(ack) => {
                                            let _ = client.publish(&acks_topic, QoS::AtLeastOnce, false, serde_json::to_vec(&ack).unwrap()).await;
                                        }
                                        Answer::Later { delay_ms, ack } => {
                                            let later_tx = later_tx.clone();
                                            tokio::spawn(async move {
                                                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                                                let _ = later_tx.send(ack).await;
                                            });
                                        }
                                    }
                                }
                            }
                            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == desired_topic => {
                                let desired: DesiredPayload = serde_json::from_slice(&publish.payload).unwrap();
                                let state = brain.on_desired(desired, now_ms());
                                let _ = client.publish(&state_topic, QoS::AtLeastOnce, false, serde_json::to_vec(&state).unwrap()).await;
                            }
                            Ok(_) => {}
                            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                    }
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(10), connected_rx.recv())
            .await
            .expect("test device connects and subscribes");
        Self {
            client,
            task,
            commands_received,
            status_topic,
        }
    }

    /// Drop the connection without a goodbye: the broker publishes the Last Will.
    pub fn cut(self) {
        self.task.abort();
    }

    /// Say offline and disconnect.
    pub async fn leave(self) {
        let _ = self
            .client
            .publish(
                &self.status_topic,
                QoS::AtLeastOnce,
                false,
                status(Connectivity::Offline),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.task.abort();
    }
}
