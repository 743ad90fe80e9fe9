//! Reading one partition of a topic up to "now", outside any consumer group: what a new
//! owner of a partition does to rebuild state from a changelog.
//!
//! "Up to now" does not trust high watermarks (tansu reports them wrong,
//! docs/architecture.md): the reader first writes a value-less marker record of its own
//! to the partition and reads until it meets it. Everything confirmed before the marker
//! was written is then known to have been read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::memory::MemoryLog;
use super::{KafkaConfig, Producer};
use crate::error::{Error, Result};

/// Keys of marker records start with this; device ids cannot contain `/`.
pub const MARKER_PREFIX: &str = "marker/";
/// A scan that has not met its marker by then fails (and is retried by the caller).
const SCAN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the first scan waits for the topic's partitions and leaders before it
/// assigns anyway (and librdkafka looks them up on its own, within a second).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a scan starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanFrom {
    Beginning,
    Offset(i64),
}

/// (offset, key, payload) of the records a blocking scan hands back.
type Batch = Vec<(i64, String, Vec<u8>)>;

pub struct PartitionReader {
    topic: String,
    producer: Producer,
    source: Source,
    marker_name: String,
    markers: AtomicU64,
}

enum Source {
    /// One client, used by one scan at a time.
    Kafka(Arc<Mutex<Client>>),
    Memory(MemoryLog),
}

struct Client {
    consumer: BaseConsumer,
    /// Whether the client knows the topic's partitions and leaders yet.
    topic_known: bool,
}

impl PartitionReader {
    /// A reader of `topic` whose markers carry `instance` (unique per process).
    pub fn new(
        config: &KafkaConfig,
        topic: String,
        group: &str,
        producer: Producer,
        instance: &str,
    ) -> Result<Self> {
        let consumer: BaseConsumer = config
            .consumer_config()
            .set("group.id", config.group_id(group))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
            .map_err(|e| Error::kafka(format!("creating reader of {topic}"), e))?;
        Ok(Self::with_source(
            topic,
            producer,
            Source::Kafka(Arc::new(Mutex::new(Client {
                consumer,
                topic_known: false,
            }))),
            instance,
        ))
    }

    /// A reader of the in-memory `log` that `producer` writes to, for unit tests.
    pub fn in_memory(log: &MemoryLog, topic: String, producer: Producer) -> Self {
        // Unique per reader, as instance names are per process: a second reader on the
        // same log must not stop at the first one's markers.
        static READERS: AtomicU64 = AtomicU64::new(0);
        let name = format!("memory-{}", READERS.fetch_add(1, Ordering::Relaxed));
        Self::with_source(topic, producer, Source::Memory(log.clone()), &name)
    }

    fn with_source(topic: String, producer: Producer, source: Source, instance: &str) -> Self {
        Self {
            topic,
            producer,
            source,
            marker_name: format!("{MARKER_PREFIX}{instance}/"),
            markers: AtomicU64::new(0),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Read `partition` from `from` until `visit` returns true or this reader's new
    /// marker comes by. `visit` gets (offset, key, payload) of every non-marker record.
    pub async fn scan(
        &self,
        partition: i32,
        from: ScanFrom,
        mut visit: impl FnMut(i64, &str, &[u8]) -> bool + Send,
    ) -> Result<()> {
        let marker = format!(
            "{}{}",
            self.marker_name,
            self.markers.fetch_add(1, Ordering::Relaxed)
        );
        self.producer
            .enqueue_empty(&self.topic, partition, &marker)
            .confirmed()
            .await?;
        let client = match &self.source {
            Source::Kafka(client) => client.clone(),
            Source::Memory(log) => {
                let from = match from {
                    ScanFrom::Beginning => 0,
                    ScanFrom::Offset(offset) => offset,
                };
                for record in log.read(&self.topic, partition, from) {
                    if record.key == marker {
                        break;
                    }
                    if !record.key.starts_with(MARKER_PREFIX)
                        && visit(record.offset, &record.key, &record.payload)
                    {
                        break;
                    }
                }
                return Ok(());
            }
        };
        // Polling librdkafka blocks, so it runs off the async threads and hands records
        // back in batches; the visitor runs here.
        let (batches, mut receive) = tokio::sync::mpsc::channel::<Batch>(4);
        let (topic, from) = (
            self.topic.clone(),
            match from {
                ScanFrom::Beginning => Offset::Beginning,
                ScanFrom::Offset(offset) => Offset::Offset(offset),
            },
        );
        let scanning = tokio::task::spawn_blocking(move || {
            let mut client = client.lock();
            if !client.topic_known {
                client.topic_known = look_up(&client.consumer, &topic);
            }
            read_blocking(&client.consumer, &topic, partition, from, &marker, &batches)
        });
        let mut stopped = false;
        while let Some(batch) = receive.recv().await {
            if stopped {
                continue;
            }
            stopped = batch
                .iter()
                .any(|(offset, key, payload)| visit(*offset, key, payload));
            if stopped {
                // Closing the channel ends the blocking scan at its next batch.
                receive.close();
            }
        }
        scanning
            .await
            .map_err(|e| Error::Config(format!("partition scan task failed: {e}")))?
    }
}

/// Look `topic` up before the client's first assignment. A client assigned a partition
/// of a topic it has not seen waits for its next periodic refresh (about 1 s) to learn
/// the leader: a restore of the first partition took 1.02 s, the next ones 50 ms.
fn look_up(consumer: &BaseConsumer, topic: &str) -> bool {
    match consumer.fetch_metadata(Some(topic), LOOKUP_TIMEOUT) {
        Ok(_) => true,
        Err(error) => {
            tracing::debug!(topic, %error, "looking up a topic before reading it failed");
            false
        }
    }
}

/// The blocking half of a scan: poll from `from` until `marker`, sending batches.
fn read_blocking(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: Offset,
    marker: &str,
    batches: &tokio::sync::mpsc::Sender<Batch>,
) -> Result<()> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, from)
        .map_err(|e| Error::kafka("building scan assignment", e))?;
    consumer
        .assign(&assignment)
        .map_err(|e| Error::kafka(format!("assigning {topic} partition {partition}"), e))?;
    let deadline = Instant::now() + SCAN_TIMEOUT;
    let mut batch = Vec::new();
    let outcome = loop {
        if batches.is_closed() {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(Error::Config(format!(
                "{topic} partition {partition}: marker not reached within {SCAN_TIMEOUT:?}"
            )));
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            if !batch.is_empty() && batches.blocking_send(std::mem::take(&mut batch)).is_err() {
                break Ok(());
            }
            continue;
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => break Err(Error::kafka(format!("reading {topic}"), error)),
        };
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        if key == marker {
            break Ok(());
        }
        if key.starts_with(MARKER_PREFIX) {
            continue;
        }
        let payload = message.payload().unwrap_or_default().to_vec();
        batch.push((message.offset(), key, payload));
        if batch.len() >= 256 && batches.blocking_send(std::mem::take(&mut batch)).is_err() {
            break Ok(());
        }
    };
    if !batch.is_empty() {
        let _ = batches.blocking_send(batch);
    }
    let _ = consumer.unassign();
    outcome
}
