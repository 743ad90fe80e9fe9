//! The storage role: readings, the score of each judged reading, alerts, connectivity
//! changes and command steps go to a time-series store through the InfluxDB v2 write
//! API (the influxdb2 crate), in batches by size and time, gzip-compressed.
//!
//! Delivery: a record's offset becomes durable only once the store confirmed the write
//! that carried its points ([`RecordHandler::defers_commit`]): at least once. A replayed
//! record gives the same series and timestamps, which the store overwrites.
//!
//! When the store is down, the batch (bounded by `storage.batch_points`) fills, then the
//! role holds the record in hand and retries with backoff: it consumes nothing more, its
//! lag grows, `fleetwatch_storage_up` is 0 and `/readyz` says `store_up: false`. It
//! catches up when the store answers again.

mod config;
mod points;
mod role;
mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetwatch_protocol::KafkaTopics;

pub use config::StorageConfig;
pub use points::{Point, StoredTopics};
pub use role::ROLE;
pub use store::{Store, WriteError};

use crate::kafka::{DurableOffsets, HandleError, Record, RecordHandler};
use crate::metrics::Metrics;

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct StorageHandler {
    store: Store,
    topics: StoredTopics,
    batch_points: usize,
    flush_interval: Duration,
    metrics: Arc<Metrics>,
    batch: Vec<Point>,
    /// The records whose points are in `batch` (or that had none).
    in_batch: DurableOffsets,
    /// The records whose points the store confirmed, for the consume loop.
    durable: DurableOffsets,
    /// When the oldest record of the batch was taken.
    batch_started: Option<Instant>,
    /// After a failed write: not before then, and how long to wait after the next one.
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl StorageHandler {
    pub fn new(
        store: Store,
        topics: &KafkaTopics,
        batch_points: usize,
        flush_interval: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            topics: StoredTopics::new(topics),
            batch_points: batch_points.max(1),
            flush_interval,
            metrics,
            batch: Vec::new(),
            in_batch: DurableOffsets::default(),
            durable: DurableOffsets::default(),
            batch_started: None,
            retry_at: None,
            backoff: BACKOFF_START,
        }
    }

    /// Write the batch. On success its records become durable; on failure it stays.
    async fn flush(&mut self) -> Result<(), WriteError> {
        let started = Instant::now();
        match self.store.write(&self.batch).await {
            Ok(()) => {
                self.written(started.elapsed());
                Ok(())
            }
            Err(error) => {
                self.failed(&error);
                Err(error)
            }
        }
    }

    fn written(&mut self, took: Duration) {
        if self.metrics.storage_up.get() != 1 && self.retry_at.is_some() {
            tracing::info!("time-series store answers again");
        }
        self.metrics.storage_up.set(1);
        if !self.batch.is_empty() {
            self.metrics
                .storage_write_seconds
                .observe(took.as_secs_f64());
        }
        for point in self.batch.drain(..) {
            self.metrics
                .storage_points
                .with_label_values(&[point.measurement])
                .inc();
        }
        self.durable.merge(std::mem::take(&mut self.in_batch));
        self.metrics.storage_buffered.set(0);
        (self.batch_started, self.retry_at) = (None, None);
        self.backoff = BACKOFF_START;
    }

    fn failed(&mut self, error: &WriteError) {
        if self.metrics.storage_up.get() == 1 || self.retry_at.is_none() {
            tracing::warn!(%error, points = self.batch.len(), "time-series store write failed; retrying with backoff");
        } else {
            tracing::debug!(%error, "time-series store write failed again");
        }
        self.metrics.storage_up.set(0);
        self.metrics.storage_write_errors.inc();
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Whether the timer should write now: a batch that is due, or a probe while the
    /// store is (or may be) down; never before the backoff allows.
    fn due(&self) -> bool {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        let batch_due = self
            .batch_started
            .is_some_and(|started| started.elapsed() >= self.flush_interval)
            || self.batch.len() >= self.batch_points;
        let offsets_only = self.batch.is_empty() && !self.in_batch.is_empty();
        batch_due || offsets_only || self.metrics.storage_up.get() != 1
    }
}

impl RecordHandler for StorageHandler {
    /// Add the record's points to the batch; a full batch is written first, and while
    /// the store refuses it the record is not taken (the loop retries it with backoff).
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        if self.batch.len() >= self.batch_points {
            self.flush()
                .await
                .map_err(|error| HandleError::Retry(error.to_string()))?;
        }
        let before = self.batch.len();
        self.topics.points(record, &self.metrics, &mut self.batch);
        let mut index = before;
        while index < self.batch.len() {
            if self.batch[index].fields.iter().any(|(_, v)| v.is_finite()) {
                index += 1;
                continue;
            }
            // Line protocol has no NaN or infinity: a point with nothing else is dropped.
            self.batch.swap_remove(index);
            self.metrics
                .skipped
                .with_label_values(&["storage", "no_finite_value"])
                .inc();
        }
        if self.batch.len() > before && self.batch_started.is_none() {
            self.batch_started = Some(Instant::now());
        }
        self.in_batch.record(record);
        self.metrics.storage_buffered.set(self.batch.len() as i64);
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some((self.flush_interval / 4).clamp(Duration::from_millis(10), Duration::from_millis(250)))
    }

    /// Write the batch when due; a failure is counted and retried after the backoff.
    async fn on_tick(&mut self) -> Result<(), HandleError> {
        if self.due() {
            let _ = self.flush().await;
        }
        Ok(())
    }

    async fn on_shutdown(&mut self) {
        if !self.batch.is_empty() || !self.in_batch.is_empty() {
            let _ = self.flush().await;
        }
    }

    fn defers_commit(&self) -> bool {
        true
    }

    fn take_durable(&mut self) -> DurableOffsets {
        std::mem::take(&mut self.durable)
    }
}

#[cfg(test)]
mod tests;
