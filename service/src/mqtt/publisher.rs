//! A publish-only MQTT client for messages to devices (commands, desired state).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use tokio_util::sync::CancellationToken;

use super::MqttConfig;
use crate::metrics::Metrics;

const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Publishes QoS 1 messages without waiting. Its request queue is bounded: when it is
/// full (the broker is slow or unreachable) a publish is refused and counted, and the
/// caller's own retry rule applies (commands are resent until acknowledged).
#[derive(Clone)]
pub struct MqttPublisher {
    client: AsyncClient,
    metrics: Arc<Metrics>,
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
    ) -> Self {
        let mut options = config.v5_options(role);
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
        Self { client, metrics }
    }

    /// Hand a message to the client; false (and counted) when its queue is full.
    pub fn publish(&self, topic: String, payload: Vec<u8>) -> bool {
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
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
