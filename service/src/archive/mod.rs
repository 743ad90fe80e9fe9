//! The archive role: telemetry, scores and alerts as Parquet files in a local directory
//! or an S3 bucket, partitioned by ingest date and hour (docs/archive.md).
//!
//! Each topic partition fills one open file at a time; a file closes when its rows reach
//! `archive.max_file_bytes`, when it is `archive.max_file_age_ms` old, or when a record of
//! another ingest hour comes. A closed file is uploaded whole; only then do its records'
//! offsets become durable ([`RecordHandler::defers_commit`]), and the consume loop commits
//! them at once ([`RecordHandler::commits_each_effect`]) before the role uploads another
//! file. So at any time each partition has at most one uploaded file past its committed
//! offset, and it starts exactly there: after a crash the consumer starts again at that
//! offset, and the file it writes first has the same name (topic, partition, first
//! offset) and replaces it. No row is archived twice, none is lost.

mod config;
pub mod file;
mod role;
pub mod sink;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use config::{ArchiveConfig, S3Config};
pub use file::{OpenFile, Row};
pub use role::ROLE;
pub use sink::{Sink, SinkError};

use crate::kafka::{DurableOffsets, HandleError, PartitionListener, Record, RecordHandler};
use crate::metrics::Metrics;

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Counts the consumer's revocations. With the eager rebalance protocol every assignment
/// starts again at the committed offsets, so after any revocation the open files (not
/// committed by construction) are dropped: their records come again, to this member or
/// to the partition's new owner.
#[derive(Default)]
pub struct Revocations(AtomicU64);

impl PartitionListener for Revocations {
    fn revoked(&self, _partitions: &[i32], _lost: bool) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn assigned(&self, _partitions: &[i32]) {}
}

/// The handler's limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_file_bytes: usize,
    pub max_file_age: Duration,
}

pub struct ArchiveHandler {
    sink: Sink,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// The open file of each (topic, partition).
    files: HashMap<(String, i32), OpenFile>,
    /// Uploaded files' last offsets, for the consume loop.
    durable: DurableOffsets,
    /// The partitions of files uploaded whose offsets are not yet confirmed committed: no
    /// other file of these is uploaded before they are.
    awaiting_commit: HashSet<(String, i32)>,
    revocations: Arc<Revocations>,
    revocations_seen: u64,
    /// After a failed upload: not before then, and how long to wait after the next one.
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl ArchiveHandler {
    pub fn new(
        sink: Sink,
        limits: Limits,
        metrics: Arc<Metrics>,
        revocations: Arc<Revocations>,
    ) -> Self {
        metrics.archive_up.set(1);
        Self {
            sink,
            limits,
            metrics,
            files: HashMap::new(),
            durable: DurableOffsets::default(),
            awaiting_commit: HashSet::new(),
            revocations,
            revocations_seen: 0,
            retry_at: None,
            backoff: BACKOFF_START,
        }
    }

    /// Rows held in open files.
    pub fn open_rows(&self) -> usize {
        self.files.values().map(|file| file.rows.len()).sum()
    }

    /// After a revocation: drop every open file (see [`Revocations`]).
    fn forget_revoked(&mut self) {
        let seen = self.revocations.0.load(Ordering::SeqCst);
        if seen == self.revocations_seen {
            return;
        }
        self.revocations_seen = seen;
        let dropped = self.open_rows();
        if dropped > 0 {
            tracing::info!(
                rows = dropped,
                "partitions revoked: open archive files dropped, their records come again"
            );
        }
        self.files.clear();
        // Their uploaded files are rewritten, under the same names, by whoever reads
        // those partitions next.
        self.awaiting_commit.clear();
        self.update_buffered();
    }

    fn update_buffered(&self) {
        let bytes: usize = self.files.values().map(|file| file.bytes).sum();
        self.metrics.archive_buffered_bytes.set(bytes as i64);
    }

    /// Upload the open file of `key` and make its offsets durable. Refused while an
    /// upload's offsets wait for their commit, and during the backoff after a failure.
    async fn upload(&mut self, key: &(String, i32)) -> Result<(), String> {
        if self.awaiting_commit.contains(key) {
            return Err("the partition's last file's offsets are not committed yet".to_owned());
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err("backing off after a failed upload".to_owned());
        }
        let Some(file) = self.files.get(key) else {
            return Ok(());
        };
        let (Some(last), rows, name) = (file.last_offset(), file.rows.len(), file.name()) else {
            self.files.remove(key);
            return Ok(());
        };
        let started = Instant::now();
        let stored = match file.to_parquet() {
            Ok(bytes) => {
                let size = bytes.len();
                self.sink.put(&name, bytes).await.map(|()| size)
            }
            // Cannot happen for rows the handler made; kept as a failure, not a panic.
            Err(error) => return Err(format!("encoding {name}: {error}")),
        };
        match stored {
            Ok(size) => {
                self.uploaded(key, last, rows, size, started.elapsed());
                Ok(())
            }
            Err(error) => {
                self.failed(&name, &error);
                Err(error.to_string())
            }
        }
    }

    fn uploaded(
        &mut self,
        key: &(String, i32),
        last: i64,
        rows: usize,
        size: usize,
        took: Duration,
    ) {
        self.files.remove(key);
        self.durable.at(&key.0, key.1, last);
        self.awaiting_commit.insert(key.clone());
        if self.retry_at.take().is_some() {
            tracing::info!("archive store answers again");
        }
        self.backoff = BACKOFF_START;
        let metrics = &self.metrics;
        metrics.archive_up.set(1);
        metrics.archive_files.inc();
        metrics.archive_rows.inc_by(rows as u64);
        metrics.archive_bytes.inc_by(size as u64);
        metrics.archive_upload_seconds.observe(took.as_secs_f64());
        self.update_buffered();
    }

    fn failed(&mut self, name: &str, error: &SinkError) {
        if self.retry_at.is_none() {
            tracing::warn!(file = name, %error, "archive upload failed; retrying with backoff");
        } else {
            tracing::debug!(file = name, %error, "archive upload failed again");
        }
        self.metrics.archive_up.set(0);
        self.metrics.archive_upload_errors.inc();
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// The open files due for closing by age.
    fn due_by_age(&self) -> Vec<(String, i32)> {
        let mut due: Vec<_> = self
            .files
            .iter()
            .filter(|(_, file)| file.opened.elapsed() >= self.limits.max_file_age)
            .map(|(key, _)| key.clone())
            .collect();
        due.sort();
        due
    }
}

impl RecordHandler for ArchiveHandler {
    /// Add the record to its partition's open file. The open file is closed and uploaded
    /// first when it is full or of another ingest hour; while that upload fails, the
    /// record is not taken (the loop retries it with backoff).
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        self.forget_revoked();
        let row = Row::of(record);
        let hour = file::hour_of(row.ingest_ms);
        let key = (record.topic.to_owned(), record.partition);
        let close = self.files.get(&key).is_some_and(|file| {
            file.hour != hour || file.bytes + row.size() > self.limits.max_file_bytes
        });
        if close {
            self.upload(&key).await.map_err(HandleError::Retry)?;
        }
        let file = self
            .files
            .entry(key)
            .or_insert_with(|| OpenFile::new(record.topic, record.partition, hour));
        file.push(row);
        self.update_buffered();
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(
            (self.limits.max_file_age / 4)
                .clamp(Duration::from_millis(10), Duration::from_millis(250)),
        )
    }

    /// Close and upload the files that are old enough; one whose upload fails stays open
    /// and is tried again after the backoff.
    async fn on_tick(&mut self) -> Result<(), HandleError> {
        self.forget_revoked();
        for key in self.due_by_age() {
            // A failure is counted; the backoff then holds the other uploads too.
            let _ = self.upload(&key).await;
        }
        Ok(())
    }

    /// Upload every open file (but one whose partition's last upload still waits for its
    /// commit: its records are read again by the next owner).
    async fn on_shutdown(&mut self) {
        self.forget_revoked();
        let mut keys: Vec<_> = self.files.keys().cloned().collect();
        keys.sort();
        for key in keys {
            let _ = self.upload(&key).await;
        }
    }

    fn defers_commit(&self) -> bool {
        true
    }

    fn take_durable(&mut self) -> DurableOffsets {
        std::mem::take(&mut self.durable)
    }

    fn commits_each_effect(&self) -> bool {
        !self.awaiting_commit.is_empty()
    }

    fn committed(&mut self, ok: bool) {
        if ok {
            self.awaiting_commit.clear();
        }
    }
}

#[cfg(test)]
mod tests;
