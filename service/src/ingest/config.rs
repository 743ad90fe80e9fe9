use serde::{Deserialize, Serialize};

/// The ingest role: MQTT → Kafka. Section `[ingest]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Shared-subscription group: every ingest instance with the same group splits the
    /// device traffic (`$share/<group>/devices/+/+`). Empty: a plain subscription
    /// (`devices/+/+`), for one ingest instance per broker — Mosquitto (2.0.11 measured)
    /// does not keep shared subscriptions across its own restart, so what devices publish
    /// between a broker restart and ingest's re-subscription is dropped; a plain
    /// subscription stays in ingest's persistent session and nothing is (docs/reliability.md).
    pub share_group: String,
    /// Largest accepted payload in bytes; larger ones are dead-lettered.
    pub max_payload_bytes: usize,
    /// Most MQTT messages received but not yet confirmed by Kafka. Announced to the broker
    /// as MQTT v5 Receive Maximum, so when it is reached the broker holds further messages
    /// back (in the persistent session) until ingest acknowledges some. Ingest's
    /// throughput is at most this divided by Kafka's confirmation time: 1,000 capped it
    /// near 4,000 readings/s when tansu confirmed in 0.25 s, and the broker then dropped
    /// what overflowed its queue (docs/benchmarks.md, "Load"). Memory bound: this many
    /// payloads of at most `max_payload_bytes`.
    pub max_inflight: u16,
    /// How far ahead of the service clock a device timestamp (`ts` of telemetry and
    /// state) may be, in milliseconds; further ahead is dead-lettered with the reason. A
    /// clock in the future would put the device's readings after everything it sends
    /// once its clock is right. (Timestamps before 2001 are refused by the protocol.)
    pub max_ahead_ms: i64,
    /// How readings are written on `iot.telemetry`: `compact` (binary, about half the
    /// bytes and cheaper for each role that reads them) or `json` (readable by any Kafka
    /// tool and by releases before the compact form: set it while upgrading from one,
    /// until every reader runs this release). Other events are JSON either way, and every
    /// role reads both (docs/protocol.md, "Records on iot.telemetry").
    pub record_encoding: fleetwatch_protocol::RecordEncoding,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            share_group: "fleetwatch-ingest".to_owned(),
            max_payload_bytes: 64 * 1024,
            max_inflight: 5000,
            max_ahead_ms: 24 * 60 * 60 * 1000,
            record_encoding: fleetwatch_protocol::RecordEncoding::Compact,
        }
    }
}

impl IngestConfig {
    /// The topic filter ingest subscribes to.
    pub fn subscription(&self) -> String {
        let devices = fleetwatch_protocol::DeviceTopic::filter_all_devices(None);
        if self.share_group.is_empty() {
            devices
        } else {
            format!("$share/{}/{devices}", self.share_group)
        }
    }
}
