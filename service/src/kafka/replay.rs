//! Replaying a topic from given positions up to given ends: how a WebSocket client that
//! resumes with a cursor gets the events it missed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::KafkaConfig;
use crate::error::{Error, Result};

/// One replayed record: partition, offset, payload.
pub type Replayed = (i32, i64, Vec<u8>);

/// How long a replay may take before it gives up.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(60);

/// What a replay found besides its records.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// Records that were gone (older than the topic's retention) before the requested
    /// positions could be read.
    pub lost: i64,
}

/// Read `topic` from `from[p]` until each partition's position reaches `until[p]` (or its
/// end, if that is further: tansu's high watermark can lag), sending records in order
/// per partition to `records`; a full channel holds the reader back. Partitions missing
/// from `from` start at their beginning.
pub async fn replay(
    config: &KafkaConfig,
    topic: &str,
    from: HashMap<i32, i64>,
    until: HashMap<i32, i64>,
    records: mpsc::Sender<Replayed>,
) -> Result<ReplayOutcome> {
    let (config, topic) = (config.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || replay_blocking(&config, &topic, &from, &until, &records))
        .await
        .map_err(|e| Error::Config(format!("replay task failed: {e}")))?
}

fn replay_blocking(
    config: &KafkaConfig,
    topic: &str,
    from: &HashMap<i32, i64>,
    until: &HashMap<i32, i64>,
    records: &mpsc::Sender<Replayed>,
) -> Result<ReplayOutcome> {
    let consumer: BaseConsumer = config
        .consumer_config()
        .set("group.id", config.group_id("replay"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .map_err(|e| Error::kafka(format!("creating replay reader of {topic}"), e))?;
    let mut outcome = ReplayOutcome::default();
    let mut assignment = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for (&partition, &end) in until {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map_err(|e| Error::kafka(format!("watermarks of {topic}"), e))?;
        let start = from.get(&partition).copied().unwrap_or(0);
        outcome.lost += (low - start).max(0);
        let start = start.max(low);
        let end = end.max(high);
        if start < end {
            remaining.insert(partition, end);
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .map_err(|e| Error::kafka("building replay assignment", e))?;
        }
    }
    if remaining.is_empty() {
        return Ok(outcome);
    }
    consumer
        .assign(&assignment)
        .map_err(|e| Error::kafka(format!("assigning {topic}"), e))?;
    let deadline = Instant::now() + REPLAY_TIMEOUT;
    while !remaining.is_empty() {
        if Instant::now() > deadline || records.is_closed() {
            return Err(Error::Config(format!(
                "{topic}: replay did not reach its end within {REPLAY_TIMEOUT:?}"
            )));
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.map_err(|e| Error::kafka(format!("replaying {topic}"), e))?;
        let (partition, offset) = (message.partition(), message.offset());
        let Some(&end) = remaining.get(&partition) else {
            continue;
        };
        if offset < end {
            let payload = message.payload().unwrap_or_default().to_vec();
            if records.blocking_send((partition, offset, payload)).is_err() {
                return Ok(outcome);
            }
        }
        if offset + 1 >= end {
            remaining.remove(&partition);
        }
    }
    Ok(outcome)
}
