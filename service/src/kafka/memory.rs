//! An in-memory stand-in for Kafka topics, for unit tests of roles: what the in-memory
//! producer writes, the partition reader reads back. Never used by the running service
//! (the memory benchmark, `benches/memory.rs`, drives the roles' handlers on it too).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::producer::Delivery;

/// One stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub payload: Vec<u8>,
}

/// Topics in memory. Records without an explicit partition go to partition 0.
#[derive(Clone, Default)]
pub struct MemoryLog {
    inner: Arc<Mutex<Topics>>,
}

#[derive(Default)]
struct Topics {
    records: HashMap<String, Vec<StoredRecord>>,
    /// The next offset of each (topic, partition): offsets keep counting after [`MemoryLog::take`].
    next_offsets: HashMap<(String, i32), i64>,
}

impl MemoryLog {
    pub(super) fn append(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        payload: &[u8],
    ) -> Delivery {
        let partition = partition.unwrap_or(0);
        let mut topics = self.inner.lock();
        let next = (topics.next_offsets)
            .entry((topic.to_owned(), partition))
            .or_default();
        let offset = *next;
        *next += 1;
        let records = topics.records.entry(topic.to_owned()).or_default();
        records.push(StoredRecord {
            partition,
            offset,
            key: key.to_owned(),
            payload: payload.to_vec(),
        });
        Delivery::landed(partition, offset)
    }

    /// Every record of `topic`, in the order written.
    pub fn records(&self, topic: &str) -> Vec<StoredRecord> {
        (self.inner.lock().records.get(topic))
            .cloned()
            .unwrap_or_default()
    }

    /// Remove and return every record of `topic`, in the order written (as a consumer
    /// that has read them; offsets of later records keep counting).
    pub fn take(&self, topic: &str) -> Vec<StoredRecord> {
        (self.inner.lock().records.get_mut(topic))
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Records of one partition from `offset` on.
    pub fn read(&self, topic: &str, partition: i32, offset: i64) -> Vec<StoredRecord> {
        self.records(topic)
            .into_iter()
            .filter(|r| r.partition == partition && r.offset >= offset)
            .collect()
    }

    /// Decode every record of `topic` as JSON (records that are not are left out).
    pub fn json<T: serde::de::DeserializeOwned>(&self, topic: &str) -> Vec<T> {
        self.records(topic)
            .iter()
            .filter_map(|r| serde_json::from_slice(&r.payload).ok())
            .collect()
    }
}
