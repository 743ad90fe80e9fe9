//! An in-memory stand-in for Kafka topics, for unit tests of roles: what the in-memory
//! producer writes, the partition reader reads back. Never used by the running service.

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
    topics: Arc<Mutex<HashMap<String, Vec<StoredRecord>>>>,
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
        let mut topics = self.topics.lock();
        let records = topics.entry(topic.to_owned()).or_default();
        let offset = records.iter().filter(|r| r.partition == partition).count() as i64;
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
        self.topics.lock().get(topic).cloned().unwrap_or_default()
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
