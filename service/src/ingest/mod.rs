//! The ingest role: reads device messages from MQTT through a shared subscription,
//! validates them and produces them to `iot.telemetry` (or `iot.dlq` with the reason).
//! A message is acknowledged to the broker only after Kafka confirmed it, so a crash at
//! any point leaves it in the broker's persistent session to be delivered again.

mod classify;
mod config;

use std::sync::Arc;
use std::time::Duration;

use fleetwatch_protocol::{now_ms, DeviceTopic, KafkaTopics};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use classify::{classify, Verdict};
pub use config::IngestConfig;

use crate::error::{Error, Result};
use crate::kafka::Producer;
use crate::metrics::Metrics;
use crate::mqtt::MqttConfig;

pub struct Ingest {
    pub config: IngestConfig,
    pub mqtt: MqttConfig,
    pub topics: KafkaTopics,
    pub producer: Producer,
    pub metrics: Arc<Metrics>,
}

/// How long shutdown waits for in-flight messages to be confirmed and acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

impl Ingest {
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let mut options = self.mqtt.v5_options("ingest");
        options
            .set_manual_acks(true)
            .set_receive_maximum(Some(self.config.max_inflight));
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let filter = format!(
            "$share/{}/{}",
            self.config.share_group,
            DeviceTopic::filter_all_devices(None)
        );
        let inflight = Arc::new(Semaphore::new(self.config.max_inflight as usize));
        let mut deliveries: JoinSet<()> = JoinSet::new();
        let (failed_tx, mut failed_rx) = mpsc::channel::<Error>(1);

        let outcome = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                Some(error) = failed_rx.recv() => break Err(error),
                Some(_) = deliveries.join_next(), if !deliveries.is_empty() => {}
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        self.metrics.ingest_connections.inc();
                        tracing::info!(%filter, "ingest connected to MQTT");
                        if let Err(error) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                            break Err(Error::Mqtt(format!("subscribing {filter}: {error}")));
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        self.metrics.ingest_subscribed.set(1);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let permit = inflight.clone().acquire_owned().await.expect("never closed");
                        self.metrics.ingest_inflight.inc();
                        let delivery = self.forward(&publish).await;
                        let client = client.clone();
                        let metrics = self.metrics.clone();
                        let failed_tx = failed_tx.clone();
                        deliveries.spawn(async move {
                            match delivery {
                                Some(delivery) => match delivery.confirmed().await {
                                    Ok(()) => ack(&client, &publish).await,
                                    // Not acknowledged: the broker keeps it for our session.
                                    Err(error) => { let _ = failed_tx.try_send(error); }
                                },
                                None => ack(&client, &publish).await,
                            }
                            metrics.ingest_inflight.dec();
                            drop(permit);
                        });
                    }
                    Ok(_) => {}
                    Err(error) => {
                        self.metrics.ingest_subscribed.set(0);
                        tracing::warn!(%error, "MQTT connection lost; reconnecting");
                        tokio::select! {
                            _ = shutdown.cancelled() => break Ok(()),
                            _ = tokio::time::sleep(RECONNECT_DELAY) => {}
                        }
                    }
                },
            }
        };

        // Let confirmations still on their way finish and their acks go out; the event
        // loop must keep running for the acks to be sent.
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while !deliveries.is_empty() {
                tokio::select! {
                    _ = deliveries.join_next() => {}
                    _ = eventloop.poll() => {}
                }
            }
            let _ = client.try_disconnect();
            for _ in 0..10 {
                if eventloop.poll().await.is_err() {
                    break;
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("ingest shutdown: in-flight messages left unacknowledged; the broker will redeliver them");
        }
        outcome
    }

    /// Produce the message where it belongs; `None` when there is nothing to produce.
    async fn forward(&self, publish: &Publish) -> Option<crate::kafka::Delivery> {
        let topic = String::from_utf8_lossy(&publish.topic);
        match classify(&topic, &publish.payload, self.config.max_payload_bytes, now_ms()) {
            Verdict::Forward(event) => {
                self.metrics.ingest_messages.with_label_values(&["forwarded"]).inc();
                let payload = serde_json::to_vec(&event).expect("wire types serialize");
                Some(
                    self.producer
                        .enqueue(&self.topics.telemetry(), event.device_id.as_str(), &payload)
                        .await,
                )
            }
            Verdict::DeadLetter(letter, class) => {
                tracing::debug!(topic = %topic, reason = %letter.reason, "dead letter");
                self.metrics.ingest_messages.with_label_values(&["dead_lettered"]).inc();
                self.metrics.dead_letters.with_label_values(&[class]).inc();
                let key = letter
                    .device_id
                    .as_ref()
                    .map_or_else(|| letter.topic.clone(), |id| id.to_string());
                let payload = serde_json::to_vec(&letter).expect("wire types serialize");
                Some(self.producer.enqueue(&self.topics.dlq(), &key, &payload).await)
            }
            Verdict::Ignore => {
                self.metrics.ingest_messages.with_label_values(&["ignored"]).inc();
                None
            }
        }
    }
}

async fn ack(client: &AsyncClient, publish: &Publish) {
    if let Err(error) = client.ack(publish).await {
        tracing::warn!(%error, "could not acknowledge MQTT message; the broker will redeliver it");
    }
}
