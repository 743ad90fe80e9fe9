//! `iot.device-state`: the twins' changelog (compacted, key: device id). Every persisted
//! twin change is written here; a new owner of a partition rebuilds its twins from it,
//! and a passivated twin is read back from the offset of its last write.
//!
//! Reading a partition "to the end" is the shared [`PartitionReader`]'s job (it writes
//! a marker and reads until it meets it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetwatch_protocol::{DeviceId, DirectoryEntry};
use parking_lot::RwLock;

use super::twin::{Effects, Twin};
use crate::error::Result;
use crate::kafka::{Delivery, PartitionReader, Producer, ScanFrom};
use crate::metrics::Metrics;

/// The topics written with a twin: its directory entry, its alarm events, verdicts.
#[derive(Clone, Debug)]
pub struct SideTopics {
    pub directory: String,
    pub alarms: String,
    pub feedback: String,
}

impl SideTopics {
    pub fn of(topics: &fleetwatch_protocol::KafkaTopics) -> Self {
        Self {
            directory: topics.device_directory(),
            alarms: topics.alarms(),
            feedback: topics.feedback(),
        }
    }
}

/// Where a device's newest twin record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
    pub version: u64,
}

pub struct Changelog {
    producer: Producer,
    /// Scans run in the devices consumer's task, one after the other.
    reader: PartitionReader,
    /// Where a twin write's companions go.
    topics: SideTopics,
    index: RwLock<HashMap<DeviceId, Stored>>,
    metrics: Arc<Metrics>,
}

impl Changelog {
    /// The changelog written by `producer` and read back by `reader` (same topic).
    pub fn new(
        producer: Producer,
        reader: PartitionReader,
        topics: SideTopics,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            producer,
            reader,
            topics,
            index: RwLock::new(HashMap::new()),
            metrics,
        }
    }

    /// Queue the twin's record now (so records keep the order of the changes) and
    /// return its pending write. Its companions are queued first, so a twin never records
    /// a change whose events were not written: alarm events, a verdict for the trainer,
    /// and, for a twin not yet `listed`, its directory entry (marked before the twin is
    /// serialized).
    pub fn write(self: &Arc<Self>, twin: &mut Twin, effects: &Effects) -> ChangelogWrite {
        let key = twin.device_id.to_string();
        let mut companions = Vec::new();
        let mut send = |topic: &str, payload: Vec<u8>| {
            companions.push(self.producer.enqueue_now(topic, &key, &payload));
        };
        for event in &effects.alarm_events {
            send(
                &self.topics.alarms,
                serde_json::to_vec(event).expect("events serialize"),
            );
        }
        if let Some(feedback) = &effects.feedback {
            send(
                &self.topics.feedback,
                serde_json::to_vec(feedback).expect("verdicts serialize"),
            );
        }
        if !twin.listed {
            twin.listed = true;
            let entry = DirectoryEntry {
                device_id: twin.device_id.clone(),
                tenant: twin.tenant.clone(),
            };
            send(
                &self.topics.directory,
                serde_json::to_vec(&entry).expect("entries serialize"),
            );
        }
        let payload = serde_json::to_vec(twin).expect("twins serialize");
        self.metrics.twin_writes.inc();
        ChangelogWrite {
            changelog: self.clone(),
            device_id: twin.device_id.clone(),
            version: twin.version,
            delivery: self
                .producer
                .enqueue_now(self.reader.topic(), &key, &payload),
            companions,
        }
    }

    /// Tombstone the device's twin and directory entry (decommissioning): compaction
    /// then removes them, and no restart or new owner brings them back.
    pub async fn remove(&self, device_id: &DeviceId, partition: i32) -> Result<()> {
        let key = device_id.as_str();
        let twin = self
            .producer
            .enqueue_empty(self.reader.topic(), partition, key);
        let listing = self
            .producer
            .enqueue_empty(&self.topics.directory, partition, key);
        twin.confirmed().await?;
        listing.confirmed().await?;
        self.index.write().remove(device_id);
        Ok(())
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

    /// Read a whole partition: the newest twin of every device in it, with its offset.
    /// Not indexed yet: the caller indexes them if the partition is still its own.
    pub async fn restore_partition(&self, partition: i32) -> Result<Vec<(Twin, i64)>> {
        let started = Instant::now();
        let mut newest: HashMap<DeviceId, (Twin, i64)> = HashMap::new();
        let metrics = self.metrics.clone();
        self.reader
            .scan(partition, ScanFrom::Beginning, |offset, key, payload| {
                if payload.is_empty() {
                    // A decommissioned device's tombstone: forget its earlier records.
                    newest.retain(|device_id, _| device_id.as_str() != key);
                    return false;
                }
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
        let twins = newest.into_values().collect::<Vec<_>>();
        tracing::info!(
            partition,
            devices = twins.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "twins restored from the changelog"
        );
        Ok(twins)
    }

    /// Index where a restored partition's twins are, so `read` finds them.
    pub fn index_restored(&self, partition: i32, twins: &[(Twin, i64)]) {
        let mut index = self.index.write();
        for (twin, offset) in twins {
            index.insert(
                twin.device_id.clone(),
                Stored {
                    partition,
                    offset: *offset,
                    version: twin.version,
                },
            );
        }
    }

    /// Read back one device's newest twin, `None` if it never had one here.
    pub async fn read(&self, device_id: &DeviceId) -> Result<Option<Twin>> {
        let Some(stored) = self.stored(device_id) else {
            return Ok(None);
        };
        let mut found = self
            .read_from(device_id, stored, ScanFrom::Offset(stored.offset))
            .await?;
        if found.is_none() {
            // A broker that answers a fetch from inside a record batch with the next
            // batch (tansu 0.6.0 does) skips the twin: read its partition from the start.
            tracing::debug!(%device_id, offset = stored.offset, "twin not at its offset; partition read again");
            found = self
                .read_from(device_id, stored, ScanFrom::Beginning)
                .await?;
        }
        if found.is_some() {
            self.metrics.twin_revivals.inc();
        }
        Ok(found)
    }

    /// The device's first twin from `from` at least as new as `stored` (else its last).
    async fn read_from(
        &self,
        device_id: &DeviceId,
        stored: Stored,
        from: ScanFrom,
    ) -> Result<Option<Twin>> {
        let mut found: Option<Twin> = None;
        self.reader
            .scan(stored.partition, from, |_, key, payload| {
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
            })
            .await?;
        Ok(found)
    }
}

/// A twin record on its way to the changelog.
pub struct ChangelogWrite {
    changelog: Arc<Changelog>,
    device_id: DeviceId,
    version: u64,
    delivery: Delivery,
    /// The records written with it (alarm events, a verdict, a directory entry).
    companions: Vec<Delivery>,
}

impl ChangelogWrite {
    /// Wait until Kafka confirmed the record (and its directory entry), then remember
    /// where it is.
    pub async fn confirmed(self) -> Result<()> {
        for companion in self.companions {
            companion.confirmed().await?;
        }
        let (partition, offset) = self.delivery.confirmed_at().await?;
        remember(
            &self.changelog,
            self.device_id,
            self.version,
            partition,
            offset,
        );
        Ok(())
    }

    /// Like [`ChangelogWrite::confirmed`] without waiting: `None` while a record is
    /// still on its way. Call again after `Some(Ok(()))` and it stays `Some(Ok(()))`.
    pub fn try_confirmed(&mut self) -> Option<Result<()>> {
        for companion in &mut self.companions {
            if let Err(error) = companion.try_confirmed()? {
                return Some(Err(error));
            }
        }
        let (partition, offset) = match self.delivery.try_confirmed_at()? {
            Ok(at) => at,
            Err(error) => return Some(Err(error)),
        };
        let device_id = self.device_id.clone();
        remember(&self.changelog, device_id, self.version, partition, offset);
        Some(Ok(()))
    }
}

/// Index where the twin's `version` landed, unless a newer version is indexed already.
fn remember(changelog: &Changelog, device_id: DeviceId, version: u64, partition: i32, offset: i64) {
    let mut index = changelog.index.write();
    let stored = index.entry(device_id).or_insert(Stored {
        partition,
        offset,
        version,
    });
    if version >= stored.version {
        *stored = Stored {
            partition,
            offset,
            version,
        };
    }
}
