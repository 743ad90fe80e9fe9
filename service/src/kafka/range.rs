//! Reading a topic's history, outside any consumer group, for the backfill: every
//! partition from given offsets to its end as it was when the read began.
//!
//! Ends are captured at the start (the high watermarks), and a partition is done only
//! once the consumer both reached that offset and was told it is at the end of the log
//! (librdkafka's partition EOF, from the broker's fetch answer): a lagging high watermark
//! (tansu's, docs/architecture.md) alone never ends a range early. Offsets are never
//! looked up by timestamp: tansu answers that lookup with the time a batch was stored,
//! and 0 when nothing is later, so the caller filters by record time while scanning.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::KafkaConfig;
use crate::error::{Error, Result};

/// One record of a range read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub timestamp_ms: Option<i64>,
    pub payload: Vec<u8>,
}

/// A partition's offsets as Kafka holds them: `low` is the oldest still kept, `high`
/// the next to be written (as far as the broker's answer knows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);
/// A read that makes no progress for this long fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The reader's client context: the end-of-partition events it asks for are how it
/// knows a partition is done, not errors to log.
struct RangeContext;

impl ClientContext for RangeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            let error = crate::secret::redact_kafka_error(error);
            tracing::warn!(%error, reason, "Kafka client error while reading a range");
        }
    }
}

impl ConsumerContext for RangeContext {}

fn reader(config: &KafkaConfig, topic: &str) -> Result<BaseConsumer<RangeContext>> {
    config
        .client_config()
        .set("group.id", config.group_id("backfill"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "50")
        .create_with_context(RangeContext)
        .map_err(|e| Error::kafka(format!("creating range reader of {topic}"), e))
}

/// Every partition of `topic` with its watermarks, by partition number.
pub async fn watermarks(config: &KafkaConfig, topic: &str) -> Result<Vec<Watermarks>> {
    let (config, topic) = (config.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer = reader(&config, &topic)?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), WATERMARK_TIMEOUT)
            .map_err(|e| Error::kafka(format!("metadata of {topic}"), e))?;
        let mut partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        partitions.sort_unstable();
        if partitions.is_empty() {
            return Err(Error::Config(format!("topic {topic} does not exist")));
        }
        partitions
            .into_iter()
            .map(|partition| {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, partition, WATERMARK_TIMEOUT)
                    .map_err(|e| Error::kafka(format!("watermarks of {topic}"), e))?;
                Ok(Watermarks {
                    partition,
                    low,
                    high,
                })
            })
            .collect()
    })
    .await
    .map_err(|e| Error::Config(format!("watermark task failed: {e}")))?
}

/// Read `topic` from `from[p]` to `until[p]` (the ends captured at the start) for each
/// partition in `until`, sending records in order per partition; a full channel holds
/// the reader back. Stops early, without error, when the receiver is dropped.
pub async fn read_range(
    config: &KafkaConfig,
    topic: &str,
    from: HashMap<i32, i64>,
    until: HashMap<i32, i64>,
    records: mpsc::Sender<RangeRecord>,
) -> Result<()> {
    let (config, topic) = (config.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_blocking(&config, &topic, &from, &until, &records))
        .await
        .map_err(|e| Error::Config(format!("range read task failed: {e}")))?
}

fn read_blocking(
    config: &KafkaConfig,
    topic: &str,
    from: &HashMap<i32, i64>,
    until: &HashMap<i32, i64>,
    records: &mpsc::Sender<RangeRecord>,
) -> Result<()> {
    let consumer = reader(config, topic)?;
    let mut assignment = TopicPartitionList::new();
    // Per partition: the captured end, and whether the reader reached it.
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for (&partition, &end) in until {
        let start = from.get(&partition).copied().unwrap_or(0);
        if start < end {
            remaining.insert(partition, end);
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .map_err(|e| Error::kafka("building range assignment", e))?;
        }
    }
    if remaining.is_empty() {
        return Ok(());
    }
    consumer
        .assign(&assignment)
        .map_err(|e| Error::kafka(format!("assigning {topic}"), e))?;
    let mut position: HashMap<i32, i64> = remaining
        .keys()
        .map(|&p| (p, from.get(&p).copied().unwrap_or(0)))
        .collect();
    let mut progressed = Instant::now();
    while !remaining.is_empty() {
        if records.is_closed() {
            return Ok(());
        }
        if progressed.elapsed() > STALL_TIMEOUT {
            return Err(Error::Config(format!(
                "{topic}: range read made no progress for {STALL_TIMEOUT:?} (positions {position:?}, ends {remaining:?})"
            )));
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = match message {
            Ok(message) => message,
            Err(KafkaError::PartitionEOF(partition)) => {
                let at = position.get(&partition).copied().unwrap_or(0);
                if remaining.get(&partition).is_some_and(|&end| at >= end) {
                    remaining.remove(&partition);
                }
                continue;
            }
            Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange)) => {
                return Err(Error::Config(format!(
                    "{topic}: the range's start is no longer in Kafka (retention); read it from the archive"
                )))
            }
            Err(error) => return Err(Error::kafka(format!("reading {topic}"), error)),
        };
        progressed = Instant::now();
        let (partition, offset) = (message.partition(), message.offset());
        position.insert(partition, offset + 1);
        let record = RangeRecord {
            partition,
            offset,
            key: message.key().map(<[u8]>::to_vec),
            timestamp_ms: message.timestamp().to_millis(),
            payload: message.payload().unwrap_or_default().to_vec(),
        };
        if records.blocking_send(record).is_err() {
            return Ok(());
        }
    }
    Ok(())
}
