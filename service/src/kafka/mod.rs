//! Kafka plumbing shared by every role: client configuration, topic creation, the
//! confirmed producer and the commit-after-effect consumer loop.

mod config;
mod consumer;
mod producer;

use std::time::Duration;

use fleetwatch_protocol::KafkaTopics;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

pub use config::KafkaConfig;
pub use consumer::{
    consume, decode_record, decode_telemetry, ConsumerRole, HandleError, PartitionListener,
    RecordHandler, RoleConsumer, StartAt,
};
pub use producer::{Delivery, Producer};

use crate::error::{Error, Result};

impl KafkaConfig {
    /// A librdkafka configuration with the brokers and the extra properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    pub fn topics(&self) -> KafkaTopics {
        KafkaTopics::with_prefix(&self.topic_prefix)
    }

    pub fn group_id(&self, role: &str) -> String {
        format!("{}{role}", self.group_prefix)
    }
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Create the topics that do not exist yet. Existing topics are left as they are.
pub async fn ensure_topics(config: &KafkaConfig) -> Result<()> {
    let topics = config.topics().all();
    let probe: BaseConsumer = config
        .client_config()
        .create()
        .map_err(|e| Error::kafka("creating metadata client", e))?;
    let existing: Vec<String> = tokio::task::spawn_blocking(move || {
        probe
            .fetch_metadata(None, METADATA_TIMEOUT)
            .map(|metadata| {
                metadata
                    .topics()
                    .iter()
                    .map(|topic| topic.name().to_owned())
                    .collect()
            })
    })
    .await
    .map_err(|e| Error::Config(format!("metadata task failed: {e}")))?
    .map_err(|e| Error::kafka("fetching metadata", e))?;

    let missing: Vec<_> = topics
        .iter()
        .filter(|spec| !existing.contains(&spec.name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
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
    let new_topics: Vec<NewTopic> = missing
        .iter()
        .map(|spec| {
            let topic = NewTopic::new(
                &spec.name,
                config.partitions,
                TopicReplication::Fixed(config.replication),
            );
            if spec.compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
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
