//! The deliveries waiting to be made, pure (time is handed in): one queue per webhook,
//! in event order (a webhook's head blocks the rest of its queue, so a receiver sees one
//! alarm's events in order), bounded in total, with each consumed record's deliveries
//! counted so its offset becomes durable only once all of them, and every earlier record
//! of its partition, are done.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use fleetwatch_protocol::{DeviceId, TenantId};

use crate::kafka::DurableOffsets;

/// Exponential backoff between attempts, and when to give up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub start_ms: u64,
    pub max_ms: u64,
    pub max_attempts: u32,
}

impl Backoff {
    /// The wait after the `attempts`-th failed attempt: start, twice that, … up to max.
    pub fn after(&self, attempts: u32) -> u64 {
        let doublings = attempts.saturating_sub(1).min(40);
        self.start_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_ms)
    }
}

/// Where a delivery comes from: a record of `iot.alarms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One alarm event for one webhook.
#[derive(Clone, Debug)]
pub struct Pending {
    /// Index of the webhook in the configuration.
    pub endpoint: usize,
    pub event_id: String,
    pub alarm_id: String,
    pub device_id: DeviceId,
    pub tenant: TenantId,
    /// The JSON body, the same on every attempt.
    pub body: Arc<[u8]>,
    /// `sha256=<hex HMAC of body>` with the webhook's key.
    pub signature: Arc<str>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Not before this (ms since the epoch).
    pub next_at_ms: i64,
    pub source: Source,
}

/// The outbox has no room for a record's deliveries.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

/// What a failed attempt leads to.
#[derive(Debug)]
pub enum AfterFailure {
    /// Tried again at this time (ms).
    RetryAt(i64),
    /// Attempts are used up: the delivery left the queue, to be recorded and finished.
    GivenUp(Box<Pending>),
}

pub struct Outbox {
    capacity: usize,
    backoff: Backoff,
    queues: HashMap<usize, VecDeque<Pending>>,
    len: usize,
    /// Per (topic, partition): deliveries not yet finished, by record offset.
    unfinished: HashMap<(String, i32), BTreeMap<i64, usize>>,
    durable: DurableOffsets,
}

impl Outbox {
    pub fn new(capacity: usize, backoff: Backoff) -> Self {
        Self {
            capacity: capacity.max(1),
            backoff,
            queues: HashMap::new(),
            len: 0,
            unfinished: HashMap::new(),
            durable: DurableOffsets::default(),
        }
    }

    /// Deliveries waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `count` more deliveries fit. An empty outbox takes any number (a record
    /// with more deliveries than the capacity must not wait for ever).
    pub fn fits(&self, count: usize) -> bool {
        self.len == 0 || self.len + count <= self.capacity
    }

    /// Take a record's deliveries (none: it is finished at once).
    pub fn admit(&mut self, source: Source, deliveries: Vec<Pending>) -> Result<(), Full> {
        if !self.fits(deliveries.len()) {
            return Err(Full);
        }
        let key = (source.topic.clone(), source.partition);
        let count = deliveries.len();
        self.unfinished
            .entry(key.clone())
            .or_default()
            .insert(source.offset, count);
        for delivery in deliveries {
            self.queues
                .entry(delivery.endpoint)
                .or_default()
                .push_back(delivery);
        }
        self.len += count;
        if count == 0 {
            self.advance(&key);
        }
        Ok(())
    }

    /// Webhooks whose next delivery is due at `now_ms`.
    pub fn due(&self, now_ms: i64) -> Vec<usize> {
        let mut due: Vec<usize> = self
            .queues
            .iter()
            .filter(|(_, queue)| queue.front().is_some_and(|p| p.next_at_ms <= now_ms))
            .map(|(&endpoint, _)| endpoint)
            .collect();
        due.sort_unstable();
        due
    }

    /// When the next delivery is due (ms), if any waits.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.queues
            .values()
            .filter_map(|queue| queue.front().map(|p| p.next_at_ms))
            .min()
    }

    pub fn head(&self, endpoint: usize) -> Option<&Pending> {
        self.queues.get(&endpoint).and_then(VecDeque::front)
    }

    fn pop(&mut self, endpoint: usize) -> Option<Pending> {
        let queue = self.queues.get_mut(&endpoint)?;
        let pending = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(&endpoint);
        }
        self.len -= 1;
        Some(pending)
    }

    /// The head of `endpoint` was delivered: it leaves the queue, to be recorded and
    /// finished.
    pub fn succeeded(&mut self, endpoint: usize) -> Option<Pending> {
        let mut pending = self.pop(endpoint)?;
        pending.attempts += 1;
        Some(pending)
    }

    /// An attempt at the head of `endpoint` failed at `now_ms`.
    pub fn failed(&mut self, endpoint: usize, now_ms: i64) -> Option<AfterFailure> {
        let backoff = self.backoff;
        let head = self.queues.get_mut(&endpoint)?.front_mut()?;
        head.attempts += 1;
        if head.attempts < backoff.max_attempts {
            head.next_at_ms = now_ms + backoff.after(head.attempts) as i64;
            return Some(AfterFailure::RetryAt(head.next_at_ms));
        }
        self.pop(endpoint)
            .map(|pending| AfterFailure::GivenUp(Box::new(pending)))
    }

    /// A delivery that left the queue is recorded: one less for its record, whose
    /// offset (with every earlier finished one) may now become durable.
    pub fn finish(&mut self, source: &Source) {
        let key = (source.topic.clone(), source.partition);
        if let Some(remaining) = self
            .unfinished
            .get_mut(&key)
            .and_then(|offsets| offsets.get_mut(&source.offset))
        {
            *remaining = remaining.saturating_sub(1);
        }
        self.advance(&key);
    }

    /// Make durable the finished records at the front of a partition.
    fn advance(&mut self, key: &(String, i32)) {
        let Some(offsets) = self.unfinished.get_mut(key) else {
            return;
        };
        while let Some(entry) = offsets.first_entry() {
            if *entry.get() > 0 {
                break;
            }
            let offset = *entry.key();
            entry.remove();
            self.durable.at(&key.0, key.1, offset);
        }
        if offsets.is_empty() {
            self.unfinished.remove(key);
        }
    }

    /// Offsets that became durable since the last call.
    pub fn take_durable(&mut self) -> DurableOffsets {
        std::mem::take(&mut self.durable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        start_ms: 100,
        max_ms: 1_000,
        max_attempts: 4,
    };

    fn source(partition: i32, offset: i64) -> Source {
        Source {
            topic: "iot.alarms".into(),
            partition,
            offset,
        }
    }

    fn pending(endpoint: usize, partition: i32, offset: i64) -> Pending {
        Pending {
            endpoint,
            event_id: format!("dev-1:1/{offset}"),
            alarm_id: "dev-1:1".into(),
            device_id: DeviceId::parse("dev-1").unwrap(),
            tenant: TenantId::parse("acme").unwrap(),
            body: Arc::from(&b"{}"[..]),
            signature: Arc::from("sha256=00"),
            attempts: 0,
            next_at_ms: 0,
            source: source(partition, offset),
        }
    }

    fn durable(outbox: &mut Outbox) -> Vec<(i32, i64)> {
        let mut offsets: Vec<(i32, i64)> = outbox
            .take_durable()
            .iter()
            .map(|(_, partition, offset)| (partition, offset))
            .collect();
        offsets.sort_unstable();
        offsets
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let waits: Vec<u64> = (1..=6).map(|n| BACKOFF.after(n)).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(BACKOFF.after(u32::MAX), 1_000);
    }

    #[test]
    fn an_offset_is_durable_only_once_it_and_every_earlier_record_are_done() {
        let mut outbox = Outbox::new(10, BACKOFF);
        outbox.admit(source(0, 5), vec![pending(0, 0, 5)]).unwrap();
        outbox.admit(source(0, 6), vec![pending(1, 0, 6)]).unwrap();
        // A record of no tenant's webhook is done at once, but waits for offset 5.
        outbox.admit(source(0, 7), Vec::new()).unwrap();
        outbox.admit(source(1, 3), Vec::new()).unwrap();
        assert_eq!(durable(&mut outbox), [(1, 3)]);
        assert_eq!(outbox.due(0), [0, 1]);
        // Webhook 1 answers first: offset 6 is done, yet 5 is not.
        let delivered = outbox.succeeded(1).unwrap();
        assert_eq!(delivered.attempts, 1);
        outbox.finish(&delivered.source);
        assert!(durable(&mut outbox).is_empty());
        let delivered = outbox.succeeded(0).unwrap();
        outbox.finish(&delivered.source);
        assert_eq!(durable(&mut outbox), [(0, 7)]);
        assert!(outbox.is_empty());
    }

    #[test]
    fn failures_back_off_then_give_up_and_the_head_holds_its_queue() {
        let mut outbox = Outbox::new(10, BACKOFF);
        outbox.admit(source(0, 1), vec![pending(0, 0, 1)]).unwrap();
        outbox.admit(source(0, 2), vec![pending(0, 0, 2)]).unwrap();
        let mut now = 1_000;
        let mut retries = Vec::new();
        loop {
            assert_eq!(outbox.due(now), [0]);
            assert_eq!(outbox.head(0).unwrap().source.offset, 1, "in order");
            match outbox.failed(0, now).unwrap() {
                AfterFailure::RetryAt(at) => {
                    assert!(outbox.due(at - 1).is_empty());
                    retries.push(at - now);
                    now = at;
                }
                AfterFailure::GivenUp(given_up) => {
                    assert_eq!(given_up.attempts, BACKOFF.max_attempts);
                    outbox.finish(&given_up.source);
                    break;
                }
            }
        }
        assert_eq!(retries, [100, 200, 400]);
        assert_eq!(durable(&mut outbox), [(0, 1)]);
        assert_eq!(outbox.head(0).unwrap().source.offset, 2);
        assert_eq!(outbox.next_due_ms(), Some(0));
    }

    #[test]
    fn a_full_outbox_refuses_until_room_is_made() {
        let mut outbox = Outbox::new(2, BACKOFF);
        outbox
            .admit(source(0, 1), vec![pending(0, 0, 1), pending(1, 0, 1)])
            .unwrap();
        assert!(!outbox.fits(1));
        assert_eq!(
            outbox.admit(source(0, 2), vec![pending(0, 0, 2)]),
            Err(Full)
        );
        let delivered = outbox.succeeded(0).unwrap();
        outbox.finish(&delivered.source);
        assert!(outbox.fits(1));
        // An empty outbox takes a record with more deliveries than its capacity.
        let mut empty = Outbox::new(1, BACKOFF);
        assert!(empty
            .admit(source(0, 1), vec![pending(0, 0, 1), pending(1, 0, 1)])
            .is_ok());
    }
}
