//! A publish-only MQTT client for messages to devices (commands, desired state).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use tokio_util::sync::CancellationToken;

use super::MqttConfig;
use crate::error::Result;
use crate::metrics::Metrics;

const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Publishes QoS 1 messages without waiting. Its request queue is bounded: when it is
/// full (the broker is slow or unreachable) a publish is refused and counted, and the
/// caller's own retry rule applies (commands are resent until acknowledged).
#[derive(Clone)]
pub struct MqttPublisher {
    sink: Sink,
    metrics: Arc<Metrics>,
}

#[derive(Clone)]
enum Sink {
    Mqtt(AsyncClient),
    /// Unit tests of roles: messages are kept in memory, in order.
    Memory(Published),
}

/// One message handed to the publisher: (MQTT topic, payload).
pub type PublishedMessage = (String, Vec<u8>);

/// What an in-memory publisher was handed, oldest first.
#[derive(Clone, Default)]
pub struct Published(Arc<Mutex<Vec<PublishedMessage>>>);

impl Published {
    /// Every message published so far.
    pub fn all(&self) -> Vec<PublishedMessage> {
        self.0.lock().clone()
    }

    /// The messages published so far, forgetting them.
    pub fn take(&self) -> Vec<PublishedMessage> {
        std::mem::take(&mut *self.0.lock())
    }
}

impl MqttPublisher {
    /// Connect as `{prefix}-{role}-{instance}` and keep the connection up until
    /// `shutdown`.
    pub fn start(
        config: &MqttConfig,
        role: &str,
        queue: usize,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let mut options = config.v5_options(role)?;
        // Nothing is subscribed, so there is no session worth keeping.
        options
            .set_clean_start(true)
            .set_session_expiry_interval(None);
        let (client, mut eventloop) = AsyncClient::new(options, queue.max(1));
        let connected = metrics.downlink_connected.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    event = eventloop.poll() => match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            connected.set(1);
                            tracing::info!("downlink connected to MQTT");
                        }
                        Ok(_) => {}
                        Err(error) => {
                            connected.set(0);
                            tracing::warn!(%error, "downlink MQTT connection lost; reconnecting");
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                _ = tokio::time::sleep(RECONNECT_DELAY) => {}
                            }
                        }
                    }
                }
            }
            connected.set(0);
        });
        Ok(Self {
            sink: Sink::Mqtt(client),
            metrics,
        })
    }

    /// A publisher that keeps what it is handed in memory (never full, no broker), and
    /// the handle to read it back: for unit tests of roles.
    pub fn in_memory(metrics: Arc<Metrics>) -> (Self, Published) {
        let published = Published::default();
        let publisher = Self {
            sink: Sink::Memory(published.clone()),
            metrics,
        };
        (publisher, published)
    }

    /// Hand a message to the client; false (and counted) when its queue is full.
    pub fn publish(&self, topic: String, payload: Vec<u8>) -> bool {
        let client = match &self.sink {
            Sink::Mqtt(client) => client,
            Sink::Memory(published) => {
                published.0.lock().push((topic, payload));
                self.metrics.downlink_published.inc();
                return true;
            }
        };
        match client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
            Ok(()) => {
                self.metrics.downlink_published.inc();
                true
            }
            Err(error) => {
                self.metrics.downlink_dropped.inc();
                tracing::debug!(%error, "downlink queue full; message dropped");
                false
            }
        }
    }
}
