//! `iot.device-state`: the twins' changelog (compacted, key: device id). Every persisted
//! twin change is written here; a new owner of a partition rebuilds its twins from it,
//! and a passivated twin is read back from the offset of its last write.
//!
//! Reading "to the end" of a partition does not trust high watermarks (tansu reports
//! them wrong, docs/architecture.md): the reader first writes a marker record of its own
//! to the partition and reads until it meets it. Everything written before the marker
//! was confirmed is then known to have been read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetwatch_protocol::DeviceId;
use parking_lot::{Mutex, RwLock};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::twin::Twin;
use crate::error::{Error, Result};
use crate::kafka::{Delivery, KafkaConfig, Producer};
use crate::metrics::Metrics;

/// Keys of marker records start with this; device ids cannot contain `/`.
const MARKER_PREFIX: &str = "marker/";
/// A scan that has not met its marker by then fails (and is retried by the caller).
const SCAN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a device's newest twin record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
    pub version: u64,
}

pub struct Changelog {
    topic: String,
    producer: Producer,
    /// One reader, used by one scan at a time (scans run in the devices consumer's
    /// task, one after the other).
    reader: Arc<Mutex<BaseConsumer>>,
    index: RwLock<HashMap<DeviceId, Stored>>,
    marker_name: String,
    markers: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Changelog {
    pub fn new(
        config: &KafkaConfig,
        topic: String,
        producer: Producer,
        instance: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let reader: BaseConsumer = config
            .client_config()
            .set("group.id", config.group_id("devices-changelog"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", "50")
            .create()
            .map_err(|e| Error::kafka("creating changelog reader", e))?;
        Ok(Self {
            topic,
            producer,
            reader: Arc::new(Mutex::new(reader)),
            index: RwLock::new(HashMap::new()),
            marker_name: format!("{MARKER_PREFIX}{instance}/"),
            markers: AtomicU64::new(0),
            metrics,
        })
    }

    /// Queue the twin's record now (so records keep the order of the changes) and
    /// return its pending write.
    pub fn write(self: &Arc<Self>, twin: &Twin) -> ChangelogWrite {
        let payload = serde_json::to_vec(twin).expect("twins serialize");
        self.metrics.twin_writes.inc();
        ChangelogWrite {
            changelog: self.clone(),
            device_id: twin.device_id.clone(),
            version: twin.version,
            delivery: self
                .producer
                .enqueue_now(&self.topic, twin.device_id.as_str(), &payload),
        }
    }

    /// Where the device's newest record is, if it has one in an owned partition.
    pub fn stored(&self, device_id: &DeviceId) -> Option<Stored> {
        self.index.read().get(device_id).copied()
    }

    /// Devices of the owned partitions, live or not.
    pub fn known_devices(&self) -> usize {
        self.index.read().len()
    }

    /// Forget the devices of partitions this instance no longer owns.
    pub fn forget_partitions(&self, keep: impl Fn(i32) -> bool) {
        self.index
            .write()
            .retain(|_, stored| keep(stored.partition));
    }

    /// Wait until every queued write is delivered (before giving partitions away).
    pub fn flush(&self, timeout: Duration) {
        self.producer.flush_blocking(timeout);
    }

    /// Read a whole partition: the newest twin of every device in it, also indexed.
    pub async fn restore_partition(&self, partition: i32) -> Result<Vec<Twin>> {
        let started = Instant::now();
        let mut newest: HashMap<DeviceId, (Twin, i64)> = HashMap::new();
        let metrics = self.metrics.clone();
        self.scan(partition, Offset::Beginning, |offset, key, payload| {
            match serde_json::from_slice::<Twin>(payload) {
                Ok(twin) if twin.device_id.as_str() == key => {
                    newest.insert(twin.device_id.clone(), (twin, offset));
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(partition, offset, key, "unreadable twin record skipped");
                    metrics
                        .skipped
                        .with_label_values(&["devices", "unreadable_twin"])
                        .inc();
                }
            }
            false
        })
        .await?;
        let mut index = self.index.write();
        let twins = newest
            .into_values()
            .map(|(twin, offset)| {
                index.insert(
                    twin.device_id.clone(),
                    Stored {
                        partition,
                        offset,
                        version: twin.version,
                    },
                );
                twin
            })
            .collect::<Vec<_>>();
        tracing::info!(
            partition,
            devices = twins.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "twins restored from the changelog"
        );
        Ok(twins)
    }

    /// Read back one device's newest twin, `None` if it never had one here.
    pub async fn read(&self, device_id: &DeviceId) -> Result<Option<Twin>> {
        let Some(stored) = self.stored(device_id) else {
            return Ok(None);
        };
        let mut found: Option<Twin> = None;
        self.scan(
            stored.partition,
            Offset::Offset(stored.offset),
            |_, key, payload| {
                if key != device_id.as_str() {
                    return false;
                }
                match serde_json::from_slice::<Twin>(payload) {
                    Ok(twin) => {
                        let done = twin.version >= stored.version;
                        found = Some(twin);
                        done
                    }
                    Err(_) => false,
                }
            },
        )
        .await?;
        if found.is_some() {
            self.metrics.twin_revivals.inc();
        }
        Ok(found)
    }

    /// Read `partition` from `from` until `visit` returns true or this instance's new
    /// marker record comes by. `visit` gets (offset, key, payload) of every twin record.
    async fn scan(
        &self,
        partition: i32,
        from: Offset,
        mut visit: impl FnMut(i64, &str, &[u8]) -> bool + Send,
    ) -> Result<()> {
        let marker = format!(
            "{}{}",
            self.marker_name,
            self.markers.fetch_add(1, Ordering::Relaxed)
        );
        let marker_write: Delivery = self.producer.enqueue_empty(&self.topic, partition, &marker);
        marker_write.confirmed().await?;
        let reader = self.reader.clone();
        let topic = self.topic.clone();
        // Polling librdkafka blocks, so it runs off the async threads and hands records
        // back in batches; the visitor runs here.
        let (batches, mut receive) = tokio::sync::mpsc::channel::<Vec<(i64, String, Vec<u8>)>>(4);
        let scanning = tokio::task::spawn_blocking(move || -> Result<()> {
            let reader = reader.lock();
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(&topic, partition, from)
                .map_err(|e| Error::kafka("building changelog assignment", e))?;
            reader
                .assign(&assignment)
                .map_err(|e| Error::kafka("assigning changelog partition", e))?;
            let deadline = Instant::now() + SCAN_TIMEOUT;
            let mut batch = Vec::new();
            let outcome = loop {
                if batches.is_closed() {
                    break Ok(());
                }
                if Instant::now() > deadline {
                    break Err(Error::Config(format!(
                        "changelog partition {partition}: marker not reached within {SCAN_TIMEOUT:?}"
                    )));
                }
                let Some(message) = reader.poll(Duration::from_millis(100)) else {
                    if !batch.is_empty()
                        && batches.blocking_send(std::mem::take(&mut batch)).is_err()
                    {
                        break Ok(());
                    }
                    continue;
                };
                let message = message.map_err(|e| Error::kafka("reading changelog", e))?;
                let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                if key == marker {
                    break Ok(());
                }
                if key.starts_with(MARKER_PREFIX) {
                    continue;
                }
                let payload = message.payload().unwrap_or_default().to_vec();
                batch.push((message.offset(), key, payload));
                if batch.len() >= 256 && batches.blocking_send(std::mem::take(&mut batch)).is_err()
                {
                    break Ok(());
                }
            };
            if !batch.is_empty() {
                let _ = batches.blocking_send(batch);
            }
            let _ = reader.unassign();
            outcome
        });
        let mut stopped = false;
        while let Some(batch) = receive.recv().await {
            if stopped {
                continue;
            }
            for (offset, key, payload) in batch {
                if visit(offset, &key, &payload) {
                    stopped = true;
                    break;
                }
            }
            if stopped {
                // Dropping the receiver ends the blocking scan at its next batch.
                receive.close();
            }
        }
        scanning
            .await
            .map_err(|e| Error::Config(format!("changelog scan task failed: {e}")))?
    }
}

/// A twin record on its way to the changelog.
pub struct ChangelogWrite {
    changelog: Arc<Changelog>,
    device_id: DeviceId,
    version: u64,
    delivery: Delivery,
}

impl ChangelogWrite {
    /// Wait until Kafka confirmed the record, then remember where it is.
    pub async fn confirmed(self) -> Result<()> {
        let (partition, offset) = self.delivery.confirmed_at().await?;
        let mut index = self.changelog.index.write();
        let stored = index.entry(self.device_id).or_insert(Stored {
            partition,
            offset,
            version: self.version,
        });
        if self.version >= stored.version {
            *stored = Stored {
                partition,
                offset,
                version: self.version,
            };
        }
        Ok(())
    }
}
