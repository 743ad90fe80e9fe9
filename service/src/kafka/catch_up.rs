//! How far a reader of a whole topic still has to go before it holds everything that was
//! on the topic when it started: the end offset of each partition, and where the reader
//! is. No I/O: the reader reports its positions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// The partitions a whole-topic reader has not caught up with yet.
#[derive(Debug, Default)]
pub struct CatchUp {
    /// Partition → the offset after its last record when reading began.
    remaining: HashMap<i32, i64>,
}

impl CatchUp {
    pub fn new(end_offsets: HashMap<i32, i64>) -> Self {
        Self {
            remaining: end_offsets,
        }
    }

    /// Note the reader at `position` (partition, offset of the record just read; `None`
    /// when it only checks): true once every partition is caught up. Empty partitions
    /// count as caught up.
    pub fn reached(&mut self, position: Option<(i32, i64)>) -> bool {
        if let Some((partition, offset)) = position {
            if self
                .remaining
                .get(&partition)
                .is_some_and(|end| offset + 1 >= *end)
            {
                self.remaining.remove(&partition);
            }
        }
        self.remaining.retain(|_, end| *end > 0);
        self.remaining.is_empty()
    }
}

/// Whether a whole-topic reader has read what was on its topic when it started.
#[derive(Default)]
pub struct Loading {
    remaining: Mutex<Option<CatchUp>>,
    loaded: AtomicBool,
}

impl Loading {
    /// The reader starts: loaded once it read up to these offsets.
    pub fn start(&self, end_offsets: HashMap<i32, i64>) {
        *self.remaining.lock() = Some(CatchUp::new(end_offsets));
        self.reached(None);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// The reader is at `position` (partition, offset).
    pub fn reached(&self, position: Option<(i32, i64)>) {
        if self.is_loaded() {
            return;
        }
        if let Some(remaining) = self.remaining.lock().as_mut() {
            if remaining.reached(position) {
                self.loaded.store(true, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caught_up_once_every_non_empty_partition_reached_its_end() {
        let mut catch_up = CatchUp::new(HashMap::from([(0, 3), (1, 0), (2, 1)]));
        assert!(!catch_up.reached(None));
        assert!(!catch_up.reached(Some((0, 2))));
        assert!(catch_up.reached(Some((2, 0))));
    }
}
