//! `iot.device-state`: the twins' changelog (compacted, key: device id). Every persisted
//! twin change is written here; a new owner of a partition rebuilds its twins from it,
//! and a passivated twin is read back from the offset of its last write.
//!
//! Reading a partition "to the end" is the shared [`PartitionReader`]'s job (it writes
//! a marker and reads until it meets it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Which producer a twin write goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// The twins' producer, lingering `kafka.linger_ms` to send many writes together:
    /// telemetry, timers, passivation, fleet jobs' commands.
    Bulk,
    /// A producer lingering `kafka.urgent_linger_ms`: the journal write of a command a
    /// person waits on (on the bulk lane it waited the whole linger, 20 of a command's
    /// 30 ms in the demo).
    Urgent,
}

/// A device's newest twin write: its lane, and whether it has landed. Two producers
/// keep no order between them, and a device's records must land in the order they were
/// made (compaction keeps the last one, a restore reads the last one): so a device's
/// writes change lane only once its newest write has landed; until then they stay in
/// its lane.
#[derive(Debug)]
pub struct LastWrite {
    lane: Lane,
    /// Set once the write is confirmed; seen as soon as whoever waits for the write
    /// (the devices consumer, a command's answer, a timer's task) has noticed.
    landed: Arc<AtomicBool>,
}

impl LastWrite {
    /// The lane a device's next write takes when it asks for `wanted`.
    fn lane_for(last: Option<&LastWrite>, wanted: Lane) -> Lane {
        match last {
            Some(last) if last.lane != wanted && !last.landed.load(Ordering::Acquire) => last.lane,
            _ => wanted,
        }
    }
}

/// How long a decommissioning waits for the urgent lane's writes in flight.
const REMOVE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the bulk lane sends at once when an urgent write had to join it: enough for
/// the broker to confirm what it held (about 2 ms on loopback).
const EXPEDITE_WITHIN: Duration = Duration::from_millis(5);

pub struct Changelog {
    producer: Producer,
    /// The [`Lane::Urgent`] producer.
    urgent: Producer,
    /// Scans run in the devices consumer's task, one after the other.
    reader: PartitionReader,
    /// Where a twin write's companions go.
    topics: SideTopics,
    index: RwLock<HashMap<DeviceId, Stored>>,
    metrics: Arc<Metrics>,
}

impl Changelog {
    /// The changelog written by `producer` (and `urgent`, [`Lane`]) and read back by
    /// `reader` (same topic).
    pub fn new(
        producer: Producer,
        urgent: Producer,
        reader: PartitionReader,
        topics: SideTopics,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            producer,
            urgent,
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
    ///
    /// It goes through the `wanted` lane unless the device's `last` write, in the other
    /// lane, has not landed yet; `last` becomes this write. An urgent write held in the
    /// bulk lane has the bulk lane send what it holds at once.
    pub fn write(
        self: &Arc<Self>,
        twin: &mut Twin,
        effects: &Effects,
        wanted: Lane,
        last: &mut Option<LastWrite>,
    ) -> ChangelogWrite {
        let lane = LastWrite::lane_for(last.as_ref(), wanted);
        // Someone waits behind the device's write still lingering in the bulk lane.
        let held = wanted == Lane::Urgent && lane == Lane::Bulk;
        if lane == Lane::Urgent {
            self.metrics.twin_urgent_writes.inc();
        } else if held {
            self.metrics.twin_urgent_writes_held.inc();
        }
        let producer = match lane {
            Lane::Bulk => &self.producer,
            Lane::Urgent => &self.urgent,
        };
        let landed = Arc::new(AtomicBool::new(false));
        *last = Some(LastWrite {
            lane,
            landed: landed.clone(),
        });
        let key = twin.device_id.to_string();
        let mut companions = Vec::new();
        let mut send = |topic: &str, payload: Vec<u8>| {
            companions.push(producer.enqueue_now(topic, &key, &payload));
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
        let delivery = producer.enqueue_now(self.reader.topic(), &key, &payload);
        if held {
            self.producer.expedite(EXPEDITE_WITHIN);
        }
        ChangelogWrite {
            changelog: self.clone(),
            device_id: twin.device_id.clone(),
            version: twin.version,
            delivery,
            companions,
            landed,
        }
    }

    /// Tombstone the device's twin and directory entry (decommissioning): compaction
    /// then removes them, and no restart or new owner brings them back. The device's
    /// actor is stopped; its newest write may still be on its way in the urgent lane,
    /// and must land before the tombstone.
    pub async fn remove(&self, device_id: &DeviceId, partition: i32) -> Result<()> {
        self.urgent.flush(REMOVE_FLUSH_TIMEOUT).await?;
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

    /// Wait until every queued write of both lanes is delivered (before giving
    /// partitions away), up to `timeout` for each lane.
    pub fn flush(&self, timeout: Duration) {
        self.urgent.flush_blocking(timeout);
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
    /// The device's [`LastWrite`] flag, set once all of them are confirmed.
    landed: Arc<AtomicBool>,
}

impl ChangelogWrite {
    /// Wait until Kafka confirmed the record (and its directory entry), then remember
    /// where it is.
    pub async fn confirmed(self) -> Result<()> {
        for companion in self.companions {
            companion.confirmed().await?;
        }
        let (partition, offset) = self.delivery.confirmed_at().await?;
        self.landed.store(true, Ordering::Release);
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
        self.landed.store(true, Ordering::Release);
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
