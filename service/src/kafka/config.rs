use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::secret::Properties;

/// How fleetwatch reaches Kafka. Section `[kafka]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Prefix for every topic name (e.g. `staging.` gives `staging.iot.telemetry`), so
    /// several deployments can share a cluster.
    pub topic_prefix: String,
    /// Prefix of every consumer group id; the role name is appended.
    pub group_prefix: String,
    /// Partitions of topics created at start. The co-partitioned topics must keep equal
    /// counts: it bounds how many instances of a role share the work.
    pub partitions: i32,
    /// Replication factor of topics created at start.
    pub replication: i32,
    /// Create missing topics at start.
    pub create_topics: bool,
    /// How long a produced record may wait for delivery (ms) before the producer gives up.
    /// Ingest stops (and so leaves the MQTT message unacknowledged) when this runs out.
    pub delivery_timeout_ms: u64,
    /// How long the producer holds records to send them together (ms; librdkafka's
    /// `linger.ms`, whose own default is 5). Each time its thread wakes it serves every partition it
    /// writes to (a process writes about ten topics of `partitions` each), so fewer,
    /// larger requests cost much less: at 10,000 readings/s, 20 ms took the service from
    /// about 52 to 36 µs per reading and halved tansu's CPU, for up to that much more
    /// latency per topic a record crosses (docs/benchmarks.md, "Load").
    pub linger_ms: u64,
    /// The same for the records a person waits on (ms), each through a producer of its
    /// own: the scorer's alerts (the scorer waits for each to be confirmed before it
    /// reads on, so `linger_ms` would be added to every alert and hold back the readings
    /// behind it), REST requests to the devices role, their journal writes and their
    /// replies (the demo's commands: p50 69 → 30 → 11 ms; docs/benchmarks.md, "First
    /// command after start").
    pub urgent_linger_ms: u64,
    /// How long the broker may hold a fetch that finds nothing new (ms; librdkafka's
    /// `fetch.wait.max.ms`), for the consumers nobody waits on (the trainer, the indexes
    /// and logs, storage, archive). A broker that answers a fetch as soon as records
    /// arrive (Kafka) adds no latency by it; one that holds every fetch until it
    /// expires (tansu) adds up to this much per topic crossed. Shorter costs an idle
    /// consumer more requests.
    pub fetch_wait_ms: u64,
    /// The same for the consumers on the paths a person waits on: the scorer and the
    /// alerts role's reader of `iot.alerts` (a reading to its WebSocket alert), the
    /// devices role (a command to its device) and the reader of its replies (a REST
    /// request's answer). On tansu an alert crosses two of them:
    /// 50 ms each gave publish → alert 127 / 207 ms (p50 / p99) at 5,000 readings/s,
    /// 10 ms 61 / 71, and 5 ms (with the alerts' own producer) 27–33 / 40–42 for about
    /// 1 µs more CPU per reading (docs/benchmarks.md, "Load"). On Kafka a shorter wait
    /// only costs the idle consumers' requests.
    pub urgent_fetch_wait_ms: u64,
    /// How long a group member may go silent (ms) before the broker gives its partitions
    /// to the others: how long a crashed instance's share waits. Shorter recovers faster,
    /// longer tolerates longer pauses; the broker bounds it (Kafka: 6 s to 30 min).
    pub session_timeout_ms: u64,
    /// Records each consumer may hold fetched ahead of its handler, at most, in KB
    /// (librdkafka's `queued.max.messages.kbytes`, whose own default is 64 MB per
    /// consumer; a process runs a consumer per role plus its whole-topic readers). It
    /// bounds the memory Kafka buffers take whatever the fleet's rate, and is also the
    /// size of one fetch (`fetch.max.bytes`, at least 1 MB). At 10,000 records/s of
    /// ~400 bytes, 4 MB is a second of records ahead of each handler.
    pub consumer_queue_kbytes: u32,
    /// Bytes each partition returns per fetch at most, to start with (librdkafka's
    /// `max.partition.fetch.bytes`, default 1 MB); a larger record is still fetched.
    pub partition_fetch_bytes: u32,
    /// Extra librdkafka properties for every client, e.g. `"security.protocol" =
    /// "sasl_ssl"` (TLS and SASL PLAIN/SCRAM/OAUTHBEARER are compiled in; see the
    /// configuration reference). They win over fleetwatch's tuning (`linger.ms`,
    /// `fetch.wait.max.ms`, queue and fetch sizes), not over what it guarantees
    /// (idempotence, `acks`, offsets stored only after handling, range assignment).
    /// Secret ones (names with `password`, `secret`, `token`, `key.pem`) print as `***`.
    pub properties: Properties,
    /// Properties whose value is read from a file at start (trailing newline dropped), as
    /// Kubernetes mounts secrets: e.g. `"sasl.password" = "/run/secrets/kafka-password"`.
    /// A property may be set here or in `properties`, not both.
    pub property_files: BTreeMap<String, PathBuf>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            topic_prefix: String::new(),
            group_prefix: "fleetwatch-".to_owned(),
            partitions: 12,
            replication: 1,
            create_topics: true,
            delivery_timeout_ms: 120_000,
            linger_ms: 20,
            urgent_linger_ms: 1,
            fetch_wait_ms: 50,
            urgent_fetch_wait_ms: 5,
            session_timeout_ms: 10_000,
            consumer_queue_kbytes: 4_096,
            partition_fetch_bytes: 262_144,
            properties: Properties::default(),
            property_files: BTreeMap::new(),
        }
    }
}
