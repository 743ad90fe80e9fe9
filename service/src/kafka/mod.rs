//! Kafka plumbing shared by every role: client configuration, topic creation, the
//! confirmed producer and the commit-after-effect consumer loop.

mod catch_up;
mod config;
mod consumer;
mod durable;
mod lag;
pub mod memory;
mod partition_reader;
mod producer;
mod range;
mod record;
mod replay;

use std::time::Duration;

use std::collections::HashMap;
use std::sync::Arc;

use fleetwatch_protocol::{KafkaTopics, TopicSpec};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

pub use catch_up::{CatchUp, Loading};
pub use config::KafkaConfig;
pub use consumer::{
    consume, decode_event, decode_model_input, decode_record, ConsumerRole, Follower, HandleError,
    ModelInput, PartitionListener, RecordHandler, RoleConsumer, StartAt,
};
pub use durable::{DurableOffsets, Effect, PendingDeliveries};
pub use partition_reader::{PartitionReader, ScanFrom, MARKER_PREFIX};
pub use producer::{Delivery, Producer};
pub use range::{read_range, watermarks, RangeRecord, Watermarks};
pub use record::Record;
pub use replay::{replay, ReplayOutcome, Replayed};

use crate::error::{Error, Result};
use crate::metrics::Metrics;

impl KafkaConfig {
    /// A librdkafka configuration with the brokers and the extra properties.
    pub fn client_config(&self) -> ClientConfig {
        self.tuned(&[])
    }

    /// The brokers, then fleetwatch's `tuning`, then `properties` over it: an operator's
    /// property wins over a choice made here. What a client guarantees (idempotence,
    /// `acks`, offset storage) its creator sets over all of them.
    fn tuned(&self, tuning: &[(&str, String)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in tuning {
            config.set(*key, value);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// [`Self::client_config`] for a producer: `linger_ms`, no compression.
    /// `properties` still win; what the producer guarantees (idempotence, `acks`) is
    /// set over them by [`super::Producer`]'s constructors.
    pub fn producer_config(&self, linger_ms: u64) -> ClientConfig {
        self.tuned(&[
            ("linger.ms", linger_ms.to_string()),
            ("compression.type", "none".to_owned()),
        ])
    }

    /// [`Self::consumer_config_waiting`] with `fetch_wait_ms`.
    pub fn consumer_config(&self) -> ClientConfig {
        self.consumer_config_waiting(self.fetch_wait_ms)
    }

    /// [`Self::client_config`] for a consumer: its prefetch buffers bounded by
    /// `consumer_queue_kbytes` and `partition_fetch_bytes`, an empty fetch held at most
    /// `fetch_wait_ms`. `properties` still win.
    pub fn consumer_config_waiting(&self, fetch_wait_ms: u64) -> ClientConfig {
        self.tuned(&[
            (
                "queued.max.messages.kbytes",
                self.consumer_queue_kbytes.to_string(),
            ),
            (
                "max.partition.fetch.bytes",
                self.partition_fetch_bytes.to_string(),
            ),
            // A full queue postpones the partition's next fetch this long (librdkafka's
            // default, 1 s, would cap a small queue's catch-up at a queue per second).
            ("fetch.queue.backoff.ms", "20".to_owned()),
            ("fetch.wait.max.ms", fetch_wait_ms.to_string()),
        ])
    }

    pub fn topics(&self) -> KafkaTopics {
        KafkaTopics::with_prefix(&self.topic_prefix)
    }

    pub fn group_id(&self, role: &str) -> String {
        format!("{}{role}", self.group_prefix)
    }
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Partition counts of the cluster's topics, by name. Blocks: call off the async threads.
fn partition_counts(probe: &BaseConsumer, timeout: Duration) -> Result<HashMap<String, usize>> {
    let metadata = probe
        .fetch_metadata(None, timeout)
        .map_err(|e| Error::kafka("fetching metadata", e))?;
    Ok(metadata
        .topics()
        .iter()
        .map(|topic| (topic.name().to_owned(), topic.partitions().len()))
        .collect())
}

async fn fetch_partition_counts(config: &KafkaConfig) -> Result<HashMap<String, usize>> {
    let probe: BaseConsumer = config
        .client_config()
        .create()
        .map_err(|e| Error::kafka("creating metadata client", e))?;
    tokio::task::spawn_blocking(move || partition_counts(&probe, METADATA_TIMEOUT))
        .await
        .map_err(|e| Error::Config(format!("metadata task failed: {e}")))?
}

/// Create the topics that do not exist yet (existing ones are left as they are), then
/// check that the co-partitioned topics have equal partition counts: a device's streams
/// must land on the same partition number of each, or two instances would own it.
pub async fn ensure_topics(config: &KafkaConfig) -> Result<()> {
    let topics = config.topics().all();
    let existing = fetch_partition_counts(config).await?;
    let missing: Vec<&TopicSpec> = topics
        .iter()
        .filter(|spec| !existing.contains_key(&spec.name))
        .collect();
    if !missing.is_empty() {
        create_topics(config, &missing).await?;
    }
    let counts = if missing.is_empty() {
        existing
    } else {
        fetch_partition_counts(config).await?
    };
    check_co_partitioned(&topics, &counts)
}

/// Refuse co-partitioned topics whose partition counts differ, naming both.
pub fn check_co_partitioned(topics: &[TopicSpec], counts: &HashMap<String, usize>) -> Result<()> {
    let mut co_partitioned = topics
        .iter()
        .filter(|spec| spec.co_partitioned)
        .filter_map(|spec| Some((spec.name.as_str(), *counts.get(&spec.name)?)));
    let Some((first, expected)) = co_partitioned.next() else {
        return Ok(());
    };
    for (name, count) in co_partitioned {
        if count != expected {
            return Err(Error::Config(format!(
                "topic {name} has {count} partitions but {first} has {expected}: co-partitioned \
                 topics (keyed by device id) must have the same partition count; recreate \
                 {name} with {expected} partitions or add partitions to match"
            )));
        }
    }
    Ok(())
}

async fn create_topics(config: &KafkaConfig, missing: &[&TopicSpec]) -> Result<()> {
    if !config.create_topics {
        let names: Vec<_> = missing.iter().map(|spec| spec.name.as_str()).collect();
        return Err(Error::Config(format!(
            "topics missing and kafka.create_topics is false: {}",
            names.join(", ")
        )));
    }
    let admin: AdminClient<DefaultClientContext> = config
        .client_config()
        .create()
        .map_err(|e| Error::kafka("creating admin client", e))?;
    let retention: Vec<Option<String>> = missing
        .iter()
        .map(|spec| spec.retention_ms.map(|ms| ms.to_string()))
        .collect();
    let new_topics: Vec<NewTopic> = missing
        .iter()
        .zip(&retention)
        .map(|(spec, retention)| {
            let mut topic = NewTopic::new(
                &spec.name,
                config.partitions,
                TopicReplication::Fixed(config.replication),
            );
            if spec.compacted {
                topic = topic.set("cleanup.policy", "compact");
            }
            if let Some(retention) = retention {
                topic = topic.set("retention.ms", retention);
            }
            topic
        })
        .collect();
    let results = admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await
        .map_err(|e| Error::kafka("creating topics", e))?;
    for result in results {
        match result {
            Ok(name) => {
                tracing::info!(topic = %name, partitions = config.partitions, "created topic")
            }
            // Another instance may have created it at the same moment.
            Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "topic already exists")
            }
            Err((name, code)) => {
                return Err(Error::Config(format!(
                    "could not create topic {name}: {code}"
                )))
            }
        }
    }
    Ok(())
}

/// How often the process checks that it can reach Kafka, for readiness.
const REACHABILITY_CHECK: Duration = Duration::from_secs(2);

/// Keep `fleetwatch_kafka_reachable` current until shutdown: 1 while a metadata request
/// is answered within a few seconds, 0 otherwise. Readiness of every Kafka role uses it.
pub async fn watch_reachability(
    config: KafkaConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let probe: Arc<BaseConsumer> = match config.client_config().create() {
        Ok(probe) => Arc::new(probe),
        Err(error) => {
            let error = crate::secret::redact_kafka_error(error);
            tracing::warn!(%error, "cannot create the Kafka reachability probe");
            return;
        }
    };
    loop {
        let client = probe.clone();
        let check = tokio::task::spawn_blocking(move || {
            client.fetch_metadata(None, REACHABILITY_CHECK).is_ok()
        });
        let reachable = tokio::select! {
            _ = shutdown.cancelled() => return,
            reachable = check => reachable.unwrap_or(false),
        };
        metrics.kafka_reachable.set(i64::from(reachable));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(REACHABILITY_CHECK) => {}
        }
    }
}
