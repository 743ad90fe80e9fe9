//! `iot.scores`: the scores of the consumed records, gathered per consumed partition and
//! written as one record per batch ([`fleetwatch_protocol::ScoreBatch`]). A Kafka record
//! costs the scorer more than scoring the reading (queueing, delivery tracking, the
//! broker's work): one per reading was a tenth of the service's CPU at 10,000 readings a
//! second (docs/benchmarks.md, "Load").
//!
//! A consumed record becomes durable only with the batch that covers it: every record of
//! a partition that has a batch open joins it, with a score or without, so offsets stay
//! in order.

use fleetwatch_protocol::ScoreRecord;

use crate::kafka::{DurableOffsets, Effect, HandleError, PendingDeliveries, Record};

/// The scores gathered for one consumed partition, already in the batch's JSON.
struct OpenBatch {
    consumed_topic: String,
    partition: i32,
    /// The newest consumed record the batch covers.
    last_offset: i64,
    /// `{"scores":[` and the scores so far, comma-separated.
    payload: Vec<u8>,
    scores: usize,
}

const BATCH_START: &[u8] = b"{\"scores\":[";
/// A batch is written once its JSON reaches this size, however few its scores: devices
/// with many metrics make large scores, and a record must stay well under the broker's
/// limit (Kafka's `message.max.bytes`, 1 MB by default).
const MAX_BATCH_BYTES: usize = 256 * 1024;
const BATCH_END: &[u8] = b"]}";

impl OpenBatch {
    fn new(consumed: &Record<'_>) -> Self {
        Self {
            consumed_topic: consumed.topic.to_owned(),
            partition: consumed.partition,
            last_offset: consumed.offset,
            payload: BATCH_START.to_vec(),
            scores: 0,
        }
    }

    fn add(&mut self, score: &ScoreRecord) {
        if self.scores > 0 {
            self.payload.push(b',');
        }
        serde_json::to_writer(&mut self.payload, score).expect("wire types serialize");
        self.scores += 1;
    }
}

pub(super) struct ScoreBatches {
    topic: String,
    /// Most scores in one record; fewer when the tick writes what is open.
    max_scores: usize,
    open: Vec<OpenBatch>,
    /// Written batches, and records without a score outside any batch, in order.
    pending: PendingDeliveries,
}

impl ScoreBatches {
    pub fn new(topic: String, pending: PendingDeliveries, max_scores: usize) -> Self {
        Self {
            topic,
            max_scores: max_scores.max(1),
            open: Vec::new(),
            pending,
        }
    }

    /// Whether the scores written and waiting for Kafka are as many as allowed.
    pub fn is_full(&self) -> bool {
        self.pending.is_full()
    }

    /// `consumed` was handled: its score, if any, joins its partition's batch (written
    /// once full). A record without a score joins the open batch too; with none open, it
    /// is done once the records before it are.
    pub async fn add(&mut self, consumed: &Record<'_>, score: Option<ScoreRecord>) {
        let open = (self.open.iter()).position(|batch| {
            batch.partition == consumed.partition && batch.consumed_topic == consumed.topic
        });
        let index = match (open, &score) {
            (Some(index), _) => index,
            (None, Some(_)) => {
                self.open.push(OpenBatch::new(consumed));
                self.open.len() - 1
            }
            (None, None) => return self.pending.push(consumed, None).await,
        };
        let batch = &mut self.open[index];
        batch.last_offset = batch.last_offset.max(consumed.offset);
        if let Some(score) = &score {
            batch.add(score);
        }
        if batch.scores >= self.max_scores || batch.payload.len() >= MAX_BATCH_BYTES {
            self.write(index).await;
        }
    }

    /// Write every open batch (at each tick, and before shutdown).
    pub async fn write_open(&mut self) {
        while !self.open.is_empty() {
            self.write(self.open.len() - 1).await;
        }
    }

    async fn write(&mut self, index: usize) {
        let OpenBatch {
            consumed_topic,
            partition,
            last_offset,
            mut payload,
            scores,
        } = self.open.swap_remove(index);
        payload.extend_from_slice(BATCH_END);
        // The telemetry's partition number (the topics are co-partitioned): each score is
        // where a record keyed by its device would be. No key: it is many devices'.
        let effect = Effect {
            topic: &self.topic,
            partition: Some(partition),
            key: None,
            payload,
            weight: scores,
        };
        let covered = (consumed_topic.as_str(), partition, last_offset);
        self.pending.push_at(covered, Some(effect)).await;
    }

    /// The consumed records whose batches Kafka confirmed, without waiting.
    pub fn settle_ready(&mut self, done: &mut DurableOffsets) -> Result<(), HandleError> {
        self.pending.settle_ready(done)
    }

    /// Wait for every written batch.
    pub async fn settle(&mut self, done: &mut DurableOffsets) -> Result<(), HandleError> {
        self.pending.settle(done).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fleetwatch_protocol::{DeviceId, ScoresRecord};

    use super::*;
    use crate::kafka::memory::MemoryLog;
    use crate::kafka::Producer;
    use crate::metrics::Metrics;

    fn score(seq: u64) -> ScoreRecord {
        ScoreRecord {
            device_id: DeviceId::parse("d1").unwrap(),
            ts: seq as i64 * 1000,
            seq,
            score: 0.5,
            metrics: [("temperature".into(), 0.5)].into_iter().collect(),
        }
    }

    fn batches(max_scores: usize) -> (ScoreBatches, MemoryLog) {
        batches_in_flight(max_scores, 100)
    }

    fn batches_in_flight(max_scores: usize, max_pending: usize) -> (ScoreBatches, MemoryLog) {
        let log = MemoryLog::default();
        let producer = Producer::in_memory(&log, Arc::new(Metrics::new()));
        let pending = PendingDeliveries::new(producer, max_pending);
        (ScoreBatches::new("s".into(), pending, max_scores), log)
    }

    #[tokio::test]
    async fn a_partitions_records_become_durable_with_the_batch_that_covers_them() {
        let (mut batches, log) = batches(2);
        let mut done = DurableOffsets::default();
        // Partition 0: a record without a score and no batch open is done at once.
        batches
            .add(&Record::new("t", "d1", b"").at(0, 10), None)
            .await;
        batches
            .add(&Record::new("t", "d1", b"").at(0, 11), Some(score(1)))
            .await;
        // Without a score, it joins the open batch: not done before it.
        batches
            .add(&Record::new("t", "d1", b"").at(0, 12), None)
            .await;
        batches
            .add(&Record::new("t", "d2", b"").at(1, 5), Some(score(2)))
            .await;
        batches.settle_ready(&mut done).unwrap();
        assert_eq!(done.iter().collect::<Vec<_>>(), vec![("t", 0, 10)]);
        assert!(log.records("s").is_empty());

        // The second score of partition 0 fills its batch: written, and 10..=13 done.
        batches
            .add(&Record::new("t", "d1", b"").at(0, 13), Some(score(3)))
            .await;
        batches.settle_ready(&mut done).unwrap();
        assert_eq!(done.iter().collect::<Vec<_>>(), vec![("t", 0, 13)]);
        let written = log.records("s");
        assert_eq!(written.len(), 1);
        assert_eq!((written[0].partition, written[0].key.as_str()), (0, ""));
        let read: ScoresRecord = serde_json::from_slice(&written[0].payload).unwrap();
        assert_eq!(read.into_scores(), vec![score(1), score(3)]);

        // The tick writes what is open.
        batches.write_open().await;
        batches.settle_ready(&mut done).unwrap();
        let mut all: Vec<_> = done.iter().collect();
        all.sort();
        assert_eq!(all, vec![("t", 0, 13), ("t", 1, 5)]);
        assert_eq!(log.records("s").len(), 2);
    }

    /// `scorer.max_pending_scores` bounds scores in flight, not records: a stalled
    /// `iot.scores` holds at most that many scores' bytes.
    #[tokio::test]
    async fn the_bound_on_what_is_in_flight_counts_scores() {
        let (mut batches, _log) = batches_in_flight(2, 5);
        for offset in 0..4 {
            let record = Record::new("t", "d1", b"").at(0, offset);
            batches.add(&record, Some(score(offset as u64))).await;
        }
        // Two batches of two written: four scores.
        assert!(!batches.is_full());
        batches
            .add(&Record::new("t", "d2", b"").at(1, 0), None)
            .await;
        assert!(batches.is_full());
        let mut done = DurableOffsets::default();
        batches.settle_ready(&mut done).unwrap();
        assert!(!batches.is_full());
    }

    #[tokio::test]
    async fn a_batch_is_written_once_its_bytes_reach_the_bound_however_few_its_scores() {
        let (mut batches, log) = batches(usize::MAX);
        let mut large = score(1);
        large.metrics = (0..2_000)
            .map(|i| (format!("metric-{i:05}").into(), 0.0))
            .collect();
        assert!(serde_json::to_vec(&large).unwrap().len() > MAX_BATCH_BYTES / 8);
        for offset in 0..8 {
            let record = Record::new("t", "d1", b"").at(0, offset);
            batches.add(&record, Some(large.clone())).await;
        }
        let written = log.records("s");
        assert_eq!(written.len(), 1);
        assert!(written[0].payload.len() >= MAX_BATCH_BYTES);
        assert!(written[0].payload.len() < MAX_BATCH_BYTES + MAX_BATCH_BYTES / 4);
    }
}
