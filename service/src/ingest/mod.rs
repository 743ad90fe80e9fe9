//! The ingest role: reads device messages from MQTT through a shared subscription,
//! validates them and produces them to `iot.telemetry` (or `iot.dlq` with the reason).
//! A message is acknowledged to the broker only after Kafka confirmed it, so a crash at
//! any point leaves it in the broker's persistent session to be delivered again.

mod classify;
mod config;
mod role;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fleetwatch_protocol::{now_ms, KafkaTopics};
use futures::stream::{FuturesOrdered, StreamExt};
use prometheus::IntCounter;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use tokio_util::sync::CancellationToken;

pub use classify::{classify, Limits, Verdict};
pub use config::IngestConfig;
pub use role::ROLE;

use crate::error::{Error, Result};
use crate::kafka::Producer;
use crate::metrics::Metrics;
use crate::mqtt::MqttConfig;
use crate::tenancy::Directory;

pub struct Ingest {
    pub config: IngestConfig,
    pub mqtt: MqttConfig,
    pub topics: KafkaTopics,
    pub producer: Producer,
    /// Each event is stamped with its device's tenant from here.
    pub directory: Arc<Directory>,
    pub metrics: Arc<Metrics>,
}

/// What `forward` needs for every message, resolved once per run rather than per message
/// (a topic name is formatted, a labelled counter looked up in a locked map).
struct Outputs {
    telemetry_topic: String,
    dlq_topic: String,
    forwarded: IntCounter,
    dead_lettered: IntCounter,
    ignored: IntCounter,
}

impl Outputs {
    fn new(topics: &KafkaTopics, metrics: &Metrics) -> Self {
        let outcome = |label| metrics.ingest_messages.with_label_values(&[label]);
        Self {
            telemetry_topic: topics.telemetry(),
            dlq_topic: topics.dlq(),
            forwarded: outcome("forwarded"),
            dead_lettered: outcome("dead_lettered"),
            ignored: outcome("ignored"),
        }
    }
}

/// A message on its way to Kafka: resolves to the confirmation and the message to ack.
type InFlight = Pin<Box<dyn Future<Output = (Result<()>, Publish)> + Send>>;

/// How long shutdown waits for in-flight messages to be confirmed and acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

impl Ingest {
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let max_inflight = self.config.max_inflight as usize;
        let mut options = self.mqtt.v5_options("ingest")?;
        options
            .set_manual_acks(true)
            .set_receive_maximum(Some(self.config.max_inflight));
        // Room for one ack per in-flight message, so queueing an ack never waits.
        let (client, mut eventloop) = AsyncClient::new(options, max_inflight + 16);
        let filter = self.config.subscription();
        // Messages on their way to Kafka, in arrival order. MQTT requires acknowledgements
        // in the order messages arrived (MQTT 5 §4.6), so a message is acknowledged only
        // once it and everything before it is confirmed: head-of-line order.
        let mut pending: FuturesOrdered<InFlight> = FuturesOrdered::new();
        let mut acks = AckQueue::default();
        let outputs = Outputs::new(&self.topics, &self.metrics);
        // Events are stamped with their tenant: not before the directory is whole.
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = self.directory.wait_loaded() => {}
        }

        let outcome = loop {
            acks.flush(&client);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                Some((confirmed, publish)) = pending.next(), if !pending.is_empty() => {
                    if let Err(error) = self.settle(&mut acks, confirmed, publish) {
                        break Err(error);
                    }
                }
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
                        if let Err(error) = self.accept(&mut acks, &mut pending, &outputs, max_inflight, publish).await {
                            break Err(error);
                        }
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

        self.drain(&client, &mut eventloop, &mut pending, &mut acks)
            .await;
        outcome
    }

    /// Start forwarding one message. Full: wait for the oldest confirmation before taking
    /// more; the broker holds further messages back meanwhile (Receive Maximum).
    async fn accept(
        &self,
        acks: &mut AckQueue,
        pending: &mut FuturesOrdered<InFlight>,
        outputs: &Outputs,
        max_inflight: usize,
        publish: Publish,
    ) -> Result<()> {
        if pending.len() >= max_inflight {
            let (confirmed, oldest) = pending.next().await.expect("not empty");
            self.settle(acks, confirmed, oldest)?;
        }
        self.metrics.ingest_inflight.inc();
        let delivery = self.forward(outputs, &publish).await;
        pending.push_back(Box::pin(async move {
            let confirmed = match delivery {
                Some(delivery) => delivery.confirmed().await,
                None => Ok(()),
            };
            (confirmed, publish)
        }));
        Ok(())
    }

    /// At shutdown: let confirmations still on their way finish and their acks go out
    /// (the event loop must keep running for the acks to be sent), then disconnect.
    async fn drain(
        &self,
        client: &AsyncClient,
        eventloop: &mut EventLoop,
        pending: &mut FuturesOrdered<InFlight>,
        acks: &mut AckQueue,
    ) {
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while !pending.is_empty() || !acks.is_empty() {
                acks.flush(client);
                tokio::select! {
                    Some((confirmed, publish)) = pending.next(), if !pending.is_empty() => {
                        if self.settle(acks, confirmed, publish).is_err() {
                            break;
                        }
                    }
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
        if drained.is_err() || !pending.is_empty() {
            tracing::warn!("ingest shutdown: in-flight messages left unacknowledged; the broker will redeliver them");
        }
    }

    /// Acknowledge a confirmed message (queued: see [`AckQueue`]). A failed confirmation
    /// stops ingest without acknowledging: the broker keeps the message in our session and
    /// redelivers it.
    fn settle(&self, acks: &mut AckQueue, confirmed: Result<()>, publish: Publish) -> Result<()> {
        self.metrics.ingest_inflight.dec();
        confirmed?;
        acks.push(publish);
        Ok(())
    }

    /// Produce the message where it belongs; `None` when there is nothing to produce.
    async fn forward(
        &self,
        outputs: &Outputs,
        publish: &Publish,
    ) -> Option<crate::kafka::Delivery> {
        let topic = String::from_utf8_lossy(&publish.topic);
        let limits = Limits {
            max_payload_bytes: self.config.max_payload_bytes,
            max_ahead_ms: self.config.max_ahead_ms,
        };
        match classify(&topic, &publish.payload, limits, now_ms()) {
            Verdict::Forward(mut event) => {
                event.tenant = self.directory.tenant_of(&event.device_id);
                outputs.forwarded.inc();
                let payload = event.to_record(self.config.record_encoding);
                Some(
                    self.producer
                        .enqueue(&outputs.telemetry_topic, event.device_id.as_str(), &payload)
                        .await,
                )
            }
            Verdict::DeadLetter(letter, class) => {
                tracing::debug!(topic = %topic, reason = %letter.reason, "dead letter");
                outputs.dead_lettered.inc();
                self.metrics.dead_letters.with_label_values(&[class]).inc();
                let key = letter
                    .device_id
                    .as_ref()
                    .map_or_else(|| letter.topic.clone(), |id| id.to_string());
                let payload = serde_json::to_vec(&letter).expect("wire types serialize");
                Some(
                    self.producer
                        .enqueue(&outputs.dlq_topic, &key, &payload)
                        .await,
                )
            }
            Verdict::Ignore => {
                outputs.ignored.inc();
                None
            }
        }
    }
}

/// Acknowledgements waiting for room in the MQTT client's request channel, in arrival
/// order. After a Kafka stall, confirmations arrive in a burst faster than the event
/// loop sends acks; an ack dropped then would keep its message counted against the
/// broker's Receive Maximum for the rest of the connection, and ingest would get no
/// more messages. Bounded by `ingest.max_inflight`: each is a message the broker counts
/// as in flight.
#[derive(Default)]
struct AckQueue {
    unsent: std::collections::VecDeque<Publish>,
}

impl AckQueue {
    fn push(&mut self, publish: Publish) {
        self.unsent.push_back(publish);
    }

    fn is_empty(&self) -> bool {
        self.unsent.is_empty()
    }

    /// Hand acks to the client until its channel is full.
    fn flush(&mut self, client: &AsyncClient) {
        while let Some(publish) = self.unsent.front() {
            if client.try_ack(publish).is_err() {
                break;
            }
            self.unsent.pop_front();
        }
    }
}
