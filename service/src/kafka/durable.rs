//! Commit-after-effect for handlers whose effects complete after `handle` returns: a
//! batch written later (the storage role), or Kafka records queued without awaiting each
//! one (the scorer's scores). Such a handler says so ([`RecordHandler::defers_commit`])
//! and reports, through [`RecordHandler::take_durable`], the offsets whose effects are
//! done; the consume loop stores only those, so a crash replays everything not yet
//! durable (at least once).
//!
//! [`RecordHandler::defers_commit`]: super::RecordHandler::defers_commit
//! [`RecordHandler::take_durable`]: super::RecordHandler::take_durable

use std::collections::{HashMap, VecDeque};

use super::{Delivery, HandleError, Producer, Record};

/// The highest offset per topic and partition whose record's effect is done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableOffsets {
    highest: HashMap<String, HashMap<i32, i64>>,
}

impl DurableOffsets {
    /// `record`'s effect is done (and so, by order within a partition, every earlier one).
    pub fn record(&mut self, record: &Record<'_>) {
        self.at(record.topic, record.partition, record.offset);
    }

    pub fn at(&mut self, topic: &str, partition: i32, offset: i64) {
        let partitions = match self.highest.get_mut(topic) {
            Some(partitions) => partitions,
            None => self.highest.entry(topic.to_owned()).or_default(),
        };
        let highest = partitions.entry(partition).or_insert(offset);
        *highest = (*highest).max(offset);
    }

    /// Add `other`'s offsets, keeping the higher of each.
    pub fn merge(&mut self, other: DurableOffsets) {
        for (topic, partitions) in other.highest {
            for (partition, offset) in partitions {
                self.at(&topic, partition, offset);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.highest.is_empty()
    }

    /// (topic, partition, highest durable offset), sorted: for tests' assertions.
    #[cfg(test)]
    pub fn sorted(&self) -> Vec<(String, i32, i64)> {
        let mut all: Vec<_> = self.iter().map(|(t, p, o)| (t.to_owned(), p, o)).collect();
        all.sort();
        all
    }

    /// (topic, partition, highest durable offset).
    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.highest.iter().flat_map(|(topic, partitions)| {
            partitions
                .iter()
                .map(move |(&partition, &offset)| (topic.as_str(), partition, offset))
        })
    }
}

/// A record to queue to Kafka as the effect of consumed ones: to `partition` or where
/// its key hashes, with or without a key (a batch about many devices has none).
pub struct Effect<'a> {
    pub topic: &'a str,
    pub partition: Option<i32>,
    pub key: Option<&'a str>,
    pub payload: Vec<u8>,
    /// How much of [`PendingDeliveries`]' capacity it takes while on its way (a batch:
    /// the items it holds, so the capacity bounds items, not records).
    pub weight: usize,
}

/// An [`Effect`] queued, kept so it can be queued again if its delivery fails.
struct Outgoing {
    topic: String,
    partition: Option<i32>,
    key: Option<String>,
    payload: Vec<u8>,
    delivery: Delivery,
}

impl Outgoing {
    fn enqueue_again_now(&mut self, producer: &Producer) {
        let (topic, key) = (&self.topic, self.key.as_deref());
        self.delivery = producer.enqueue_at_now(topic, self.partition, key, &self.payload);
    }

    async fn enqueue_again(&mut self, producer: &Producer) {
        let (topic, key) = (&self.topic, self.key.as_deref());
        self.delivery = (producer.enqueue_at(topic, self.partition, key, &self.payload)).await;
    }
}

/// A consumed record, its effect if any, and what it takes of the capacity.
struct Entry {
    topic: String,
    partition: i32,
    offset: i64,
    outgoing: Option<Outgoing>,
    weight: usize,
}

/// Consumed records whose effect is a Kafka record still on its way (or none), in
/// order; bounded by `capacity`, in the effects' weights (a record without an effect
/// weighs 1): when full, the handler settles before taking more.
pub struct PendingDeliveries {
    producer: Producer,
    capacity: usize,
    queue: VecDeque<Entry>,
    /// The weights of the queue's entries, summed.
    load: usize,
}

impl PendingDeliveries {
    pub fn new(producer: Producer, capacity: usize) -> Self {
        Self {
            producer,
            capacity: capacity.max(1),
            queue: VecDeque::new(),
            load: 0,
        }
    }

    pub fn is_full(&self) -> bool {
        self.load >= self.capacity
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// `consumed`'s effect is `effect` (queued now), or nothing.
    pub async fn push(&mut self, consumed: &Record<'_>, effect: Option<Effect<'_>>) {
        let position = (consumed.topic, consumed.partition, consumed.offset);
        self.push_at(position, effect).await;
    }

    /// Like [`PendingDeliveries::push`] for the consumed record at (topic, partition,
    /// offset): an effect that covers a partition's records up to that one (a batch).
    pub async fn push_at(
        &mut self,
        (consumed_topic, partition, offset): (&str, i32, i64),
        effect: Option<Effect<'_>>,
    ) {
        let weight = effect.as_ref().map_or(1, |effect| effect.weight.max(1));
        let outgoing = match effect {
            Some(effect) => Some(Outgoing {
                delivery: (self.producer)
                    .enqueue_at(effect.topic, effect.partition, effect.key, &effect.payload)
                    .await,
                topic: effect.topic.to_owned(),
                partition: effect.partition,
                key: effect.key.map(str::to_owned),
                payload: effect.payload,
            }),
            None => None,
        };
        self.queue.push_back(Entry {
            topic: consumed_topic.to_owned(),
            partition,
            offset,
            outgoing,
            weight,
        });
        self.load += weight;
    }

    /// Like [`PendingDeliveries::settle`] without waiting: stops at the first record
    /// whose delivery is still on its way, so the consume loop never blocks on Kafka
    /// between records.
    pub fn settle_ready(&mut self, done: &mut DurableOffsets) -> Result<(), HandleError> {
        while let Some(entry) = self.queue.front_mut() {
            if let Some(outgoing) = &mut entry.outgoing {
                match outgoing.delivery.try_confirmed() {
                    None => return Ok(()),
                    Some(Ok(())) => {}
                    Some(Err(error)) => {
                        // Queued again; it stays first until it lands.
                        outgoing.enqueue_again_now(&self.producer);
                        return Err(HandleError::Retry(error.to_string()));
                    }
                }
            }
            done.at(&entry.topic, entry.partition, entry.offset);
            self.load -= entry.weight;
            self.queue.pop_front();
        }
        Ok(())
    }

    /// Await every queued delivery in order, adding the consumed records whose effect
    /// landed to `done`. A failed delivery is queued again and stops the settling with
    /// [`HandleError::Retry`]: it stays first, the next call waits for it anew.
    pub async fn settle(&mut self, done: &mut DurableOffsets) -> Result<(), HandleError> {
        while let Some(mut entry) = self.queue.pop_front() {
            if let Some(outgoing) = &mut entry.outgoing {
                let delivery = std::mem::replace(&mut outgoing.delivery, Delivery::landed(0, 0));
                if let Err(error) = delivery.confirmed().await {
                    outgoing.enqueue_again(&self.producer).await;
                    self.queue.push_front(entry);
                    return Err(HandleError::Retry(error.to_string()));
                }
            }
            done.at(&entry.topic, entry.partition, entry.offset);
            self.load -= entry.weight;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_offsets_keep_the_highest_per_partition() {
        let mut first = DurableOffsets::default();
        first.record(&Record::new("t", "k", b"").at(0, 5));
        first.record(&Record::new("t", "k", b"").at(0, 3));
        first.record(&Record::new("t", "k", b"").at(1, 1));
        let mut second = DurableOffsets::default();
        second.at("u", 0, 7);
        second.at("t", 0, 9);
        first.merge(second);
        let mut all: Vec<_> = first.iter().map(|(t, p, o)| (t.to_owned(), p, o)).collect();
        all.sort();
        assert_eq!(
            all,
            vec![("t".into(), 0, 9), ("t".into(), 1, 1), ("u".into(), 0, 7)]
        );
    }
}
