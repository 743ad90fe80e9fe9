//! Twin writes on their way to the changelog, with the records that caused them.
//!
//! The devices role does not wait for each twin write before taking the next record: a
//! fleet connecting at once made one produce round trip per device in a row (300
//! devices, seconds of backlog), and an operator's command queued behind them waited as
//! long. Instead a record's offset becomes durable only once every write up to it has
//! landed, so a crash still replays whatever did not reach the changelog (at least once,
//! as before).

use std::collections::VecDeque;

use tokio::sync::oneshot;

use super::changelog::ChangelogWrite;
use crate::error::{Error, Result};
use crate::kafka::{DurableOffsets, Record};
use crate::metrics::Metrics;

/// How many records may wait for their twin writes. When full, the next record waits for
/// the oldest write: the producer's own queue bound is far larger, so this is the
/// role's memory bound for unconfirmed work, not a throttle in normal operation.
pub const MAX_PENDING_WRITES: usize = 4096;

/// What a record's effect waits for: its twin write, or the task that waits for a
/// command's journal write and then sends the command's reply (a command does not hold
/// up the records behind it for a produce round trip: 200 commands at once took 4.2 s
/// one after the other).
pub enum Landing {
    Write(ChangelogWrite),
    Task(oneshot::Receiver<Result<()>>),
}

impl From<ChangelogWrite> for Landing {
    fn from(write: ChangelogWrite) -> Self {
        Self::Write(write)
    }
}

impl Landing {
    /// `None` while on its way.
    fn try_landed(&mut self) -> Option<Result<()>> {
        match self {
            Self::Write(write) => write.try_confirmed(),
            Self::Task(task) => match task.try_recv() {
                Ok(outcome) => Some(outcome),
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => Some(Err(Self::task_gone())),
            },
        }
    }

    async fn landed(self) -> Result<()> {
        match self {
            Self::Write(write) => write.confirmed().await,
            Self::Task(task) => task.await.unwrap_or_else(|_| Err(Self::task_gone())),
        }
    }

    fn task_gone() -> Error {
        Error::Interrupted("a command's journal write was abandoned".into())
    }
}

struct Waiting {
    topic: String,
    partition: i32,
    offset: i64,
    write: Option<Landing>,
}

pub struct PendingWrites {
    queue: VecDeque<Waiting>,
    capacity: usize,
    durable: DurableOffsets,
    metrics: std::sync::Arc<Metrics>,
}

impl PendingWrites {
    pub fn new(capacity: usize, metrics: std::sync::Arc<Metrics>) -> Self {
        Self {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            durable: DurableOffsets::default(),
            metrics,
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.queue.len() >= self.capacity
    }

    /// `record` was handled; its effect is done once `write` (if any) has landed.
    pub fn push(&mut self, record: &Record<'_>, write: Option<Landing>) {
        if write.is_none() && self.queue.is_empty() {
            // Nothing ahead of it is on its way: durable now, nothing kept.
            self.durable.record(record);
            return;
        }
        self.queue.push_back(Waiting {
            topic: record.topic.to_owned(),
            partition: record.partition,
            offset: record.offset,
            write,
        });
        self.metrics
            .twin_writes_pending
            .set(self.queue.len() as i64);
    }

    /// Without waiting: every record from the oldest on whose write has landed becomes
    /// durable. An error is a write that failed for good.
    pub fn settle_ready(&mut self) -> Result<()> {
        while let Some(waiting) = self.queue.front_mut() {
            if let Some(write) = waiting.write.as_mut() {
                match write.try_landed() {
                    None => break,
                    Some(outcome) => outcome?,
                }
            }
            self.pop_durable();
        }
        self.metrics
            .twin_writes_pending
            .set(self.queue.len() as i64);
        Ok(())
    }

    /// Wait for the oldest write (when full), then settle what else has landed.
    pub async fn settle_oldest(&mut self) -> Result<()> {
        if let Some(write) = self.queue.front_mut().and_then(|w| w.write.take()) {
            write.landed().await?;
        }
        if !self.queue.is_empty() {
            self.pop_durable();
        }
        self.settle_ready()
    }

    /// Wait for every write (stopping).
    pub async fn settle_all(&mut self) -> Result<()> {
        while !self.queue.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    /// Offsets whose effects became durable since the last call.
    pub fn take_durable(&mut self) -> DurableOffsets {
        std::mem::take(&mut self.durable)
    }

    fn pop_durable(&mut self) {
        if let Some(done) = self.queue.pop_front() {
            self.durable.at(&done.topic, done.partition, done.offset);
        }
    }
}
