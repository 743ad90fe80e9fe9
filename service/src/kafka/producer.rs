use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde::Serialize;

use super::memory::MemoryLog;
use super::KafkaConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// An idempotent producer (acks=all) that never gives up on a full queue: it waits and
/// retries, counting each wait.
#[derive(Clone)]
pub struct Producer {
    inner: Sink,
    metrics: Arc<Metrics>,
}

#[derive(Clone)]
enum Sink {
    Kafka(FutureProducer),
    /// Unit tests of roles: records land in memory, confirmed at once.
    Memory(MemoryLog),
}

/// How long to wait before retrying when librdkafka's local queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);
/// How long [`Producer::prepare`] waits for a topic's metadata.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(10);
/// Lookups [`Producer::prepare`] makes at most waiting for a named broker's answer.
const PREPARE_LOOKUPS: usize = 5;
/// The broker id librdkafka gives a bootstrap address before it knows the cluster.
const BOOTSTRAP_BROKER_ID: i32 = -1;

impl Producer {
    /// A producer holding records `kafka.linger_ms` to send them together. It gets its
    /// producer id at once ([`Producer::prepare`], with the telemetry topic: any topic
    /// would do, and one is a smaller answer than the whole cluster's).
    pub fn new(config: &KafkaConfig, metrics: Arc<Metrics>) -> Result<Self> {
        let producer = Self::lingering(config, config.linger_ms, metrics)?;
        producer.prepare(vec![config.topics().telemetry()]);
        Ok(producer)
    }

    /// A producer for records a person waits on (a REST request, its reply, an alert):
    /// it lingers `kafka.urgent_linger_ms` and looks up `topics` at once
    /// ([`Producer::prepare`]), so the first record after start is as quick as the next.
    pub fn urgent(
        config: &KafkaConfig,
        topics: Vec<String>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let producer = Self::lingering(config, config.urgent_linger_ms, metrics)?;
        producer.prepare(topics);
        Ok(producer)
    }

    /// A producer holding records `linger_ms` to send them together.
    fn lingering(config: &KafkaConfig, linger_ms: u64, metrics: Arc<Metrics>) -> Result<Self> {
        let inner = config
            .producer_config(linger_ms)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", config.delivery_timeout_ms.to_string())
            .create()
            .map_err(|e| Error::kafka("creating producer", e))?;
        Ok(Self {
            inner: Sink::Kafka(inner),
            metrics,
        })
    }

    /// The Kafka client, unless this producer writes to memory.
    fn kafka(&self) -> Option<&FutureProducer> {
        match &self.inner {
            Sink::Kafka(producer) => Some(producer),
            Sink::Memory(_) => None,
        }
    }

    /// A producer whose records go to `log`, for unit tests of roles.
    pub fn in_memory(log: &MemoryLog, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Sink::Memory(log.clone()),
            metrics,
        }
    }

    /// Queue a record and return its pending delivery. Records queued one after the other
    /// keep their order within a partition (the idempotent producer guarantees it).
    pub async fn enqueue(&self, topic: &str, key: &str, payload: &[u8]) -> Delivery {
        self.enqueue_at(topic, None, Some(key), payload).await
    }

    /// Queue a record without awaiting: for actors, whose handlers are synchronous and
    /// whose records must keep the order they were made in. A full local queue blocks
    /// the calling thread briefly (backpressure on the actor), counted like a wait.
    pub fn enqueue_now(&self, topic: &str, key: &str, payload: &[u8]) -> Delivery {
        self.enqueue_at_now(topic, None, Some(key), payload)
    }

    /// Queue a record for an explicit `partition` (a key that does not hash to the
    /// partition it belongs on, such as a device's parameters of a candidate model, which
    /// go to the device's telemetry partition).
    pub async fn enqueue_to(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        payload: &[u8],
    ) -> Delivery {
        self.enqueue_at(topic, Some(partition), Some(key), payload)
            .await
    }

    /// Like [`Producer::enqueue_to`], without awaiting (for rebalance callbacks).
    pub fn enqueue_to_now(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        payload: &[u8],
    ) -> Delivery {
        self.enqueue_at_now(topic, Some(partition), Some(key), payload)
    }

    /// Queue a record to `partition` (or where its key hashes), with or without a key
    /// (a record about many devices has none); a full local queue is waited out.
    pub(super) async fn enqueue_at(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&str>,
        payload: &[u8],
    ) -> Delivery {
        loop {
            match self.try_enqueue_at(topic, partition, key, payload) {
                Some(delivery) => return delivery,
                None => tokio::time::sleep(QUEUE_FULL_BACKOFF).await,
            }
        }
    }

    /// [`Producer::enqueue_at`] blocking the calling thread while the queue is full.
    pub(super) fn enqueue_at_now(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&str>,
        payload: &[u8],
    ) -> Delivery {
        loop {
            match self.try_enqueue_at(topic, partition, key, payload) {
                Some(delivery) => return delivery,
                None => std::thread::sleep(QUEUE_FULL_BACKOFF),
            }
        }
    }

    /// One attempt: `None` (counted) when librdkafka's local queue is full.
    fn try_enqueue_at(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&str>,
        payload: &[u8],
    ) -> Option<Delivery> {
        let producer = match &self.inner {
            Sink::Kafka(producer) => producer,
            Sink::Memory(log) => {
                return Some(log.append(topic, partition, key.unwrap_or_default(), payload))
            }
        };
        let mut record = FutureRecord::<str, [u8]>::to(topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        match producer.send_result(record) {
            Ok(delivery) => Some(Delivery::kafka(Ok(delivery), &self.metrics)),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                self.metrics.kafka_queue_full.inc();
                None
            }
            // Only QueueFull is transient at enqueue time; anything else (an oversized
            // record, say) would fail again, so it becomes a failed delivery.
            Err((error, _)) => Some(Delivery::kafka(Err(error), &self.metrics)),
        }
    }

    /// Queue a record with no payload (a tombstone, or a marker whose key says it all)
    /// for one partition.
    pub fn enqueue_empty(&self, topic: &str, partition: i32, key: &str) -> Delivery {
        let producer = match &self.inner {
            Sink::Kafka(producer) => producer,
            Sink::Memory(log) => return log.append(topic, Some(partition), key, &[]),
        };
        let record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(topic).partition(partition).key(key);
        Delivery::kafka(
            producer.send_result(record).map_err(|(error, _)| error),
            &self.metrics,
        )
    }

    /// Queue a JSON record and wait until Kafka confirmed it.
    pub async fn send_json<T: Serialize>(&self, topic: &str, key: &str, value: &T) -> Result<()> {
        let payload = serde_json::to_vec(value).expect("wire types serialize");
        self.enqueue(topic, key, &payload).await.confirmed().await
    }

    /// Look up `topics` (partitions, leaders) now, in the background, so that the first
    /// record to each does not wait for it: a fresh producer's first record to a topic
    /// waited up to ~50 ms for that lookup, which a person sending the first command after
    /// start paid on each producer the command crosses. A lookup that fails only leaves
    /// it to the first record, as before.
    ///
    /// The lookups go on until a broker the cluster names answers one. An idempotent
    /// producer asks for its producer id when a lookup is answered while a broker is up,
    /// or else every 500 ms; the first answers come over the bootstrap connection, which
    /// librdkafka drops once it knows the brokers. Without the later answer the first
    /// record of a fresh producer waited up to 500 ms for its id.
    pub fn prepare(&self, topics: Vec<String>) {
        use rdkafka::producer::Producer as _;
        let (Some(producer), Some(first)) = (self.kafka(), topics.first().cloned()) else {
            return;
        };
        let producer = producer.clone();
        let preparing = self.metrics.kafka_producers_preparing.clone();
        preparing.inc();
        tokio::task::spawn_blocking(move || {
            let look_up = |topic: &str| match producer
                .client()
                .fetch_metadata(Some(topic), PREPARE_TIMEOUT)
            {
                Ok(metadata) => Some(metadata.orig_broker_id()),
                Err(error) => {
                    tracing::debug!(topic, %error, "looking up a topic before its first record failed");
                    None
                }
            };
            let mut answered_by = None;
            for topic in &topics {
                answered_by = look_up(topic);
            }
            for _ in 0..PREPARE_LOOKUPS {
                if answered_by != Some(BOOTSTRAP_BROKER_ID) {
                    break;
                }
                answered_by = look_up(&first);
            }
            preparing.dec();
        });
    }

    /// Block the calling thread until everything queued so far is delivered, up to
    /// `timeout`: for callbacks that must not return before (a rebalance, say).
    pub fn flush_blocking(&self, timeout: Duration) {
        use rdkafka::producer::Producer as _;
        let Some(producer) = self.kafka() else {
            return;
        };
        if let Err(error) = producer.flush(timeout) {
            tracing::warn!(%error, "producer flush did not finish");
        }
    }

    /// Send what this producer holds now rather than after its linger, for a record a
    /// person waits on that had to join them: librdkafka ignores `linger.ms` while a
    /// flush runs. The flush runs on a blocking thread for at most `within`; running out
    /// of it only means others kept writing meanwhile (their records went out at once).
    pub fn expedite(&self, within: Duration) {
        use rdkafka::producer::Producer as _;
        let Some(producer) = self.kafka() else {
            return;
        };
        let producer = producer.clone();
        tokio::task::spawn_blocking(move || {
            let _ = producer.flush(within);
        });
    }

    /// Wait until everything queued so far is delivered, up to `timeout` (an error
    /// when it runs out).
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        use rdkafka::producer::Producer as _;
        let Some(producer) = self.kafka() else {
            return Ok(());
        };
        let producer = producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| Error::Config(format!("flush task failed: {e}")))?
            .map_err(|e| Error::kafka("flushing producer", e))
    }
}

/// A record on its way to Kafka.
pub struct Delivery(Pending);

enum Pending {
    /// Queued (or refused) at `Instant`; the latency and failures go to the metrics.
    Kafka(
        std::result::Result<DeliveryFuture, KafkaError>,
        std::time::Instant,
        Arc<Metrics>,
    ),
    /// Already confirmed at (partition, offset): the in-memory log of unit tests.
    Landed(i32, i64),
}

impl Delivery {
    fn kafka(
        queued: std::result::Result<DeliveryFuture, KafkaError>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        Self(Pending::Kafka(
            queued,
            std::time::Instant::now(),
            metrics.clone(),
        ))
    }

    pub(super) fn landed(partition: i32, offset: i64) -> Self {
        Self(Pending::Landed(partition, offset))
    }

    /// Wait until Kafka confirmed the record (acks=all) or the delivery failed for good.
    pub async fn confirmed(self) -> Result<()> {
        self.confirmed_at().await.map(|_| ())
    }

    /// The outcome if Kafka has answered already, without waiting: `None` while the
    /// record is still on its way.
    pub fn try_confirmed(&mut self) -> Option<Result<()>> {
        self.try_confirmed_at().map(|outcome| outcome.map(|_| ()))
    }

    /// Like [`Delivery::try_confirmed`], with where the record landed: (partition,
    /// offset). Once answered, later calls give the same place (or, after a failure,
    /// `Ok((0, 0))`: a failed delivery is the caller's to queue again).
    pub fn try_confirmed_at(&mut self) -> Option<Result<(i32, i64)>> {
        use std::future::Future;
        let (future, started, metrics) = match &mut self.0 {
            Pending::Landed(partition, offset) => return Some(Ok((*partition, *offset))),
            Pending::Kafka(Err(error), _, metrics) => {
                metrics.kafka_produce_errors.inc();
                let error = Error::kafka("queueing record", error.clone());
                self.0 = Pending::Landed(0, 0);
                return Some(Err(error));
            }
            Pending::Kafka(Ok(future), started, metrics) => (future, *started, metrics),
        };
        let mut context = std::task::Context::from_waker(futures::task::noop_waker_ref());
        let outcome = match std::pin::Pin::new(future).poll(&mut context) {
            std::task::Poll::Pending => return None,
            std::task::Poll::Ready(Ok(Ok(delivery))) => Ok((delivery.partition, delivery.offset)),
            std::task::Poll::Ready(Ok(Err((error, _)))) => {
                Err(Error::kafka("delivering record", error))
            }
            std::task::Poll::Ready(Err(_)) => {
                Err(Error::kafka("delivering record", KafkaError::Canceled))
            }
        };
        match &outcome {
            Ok(_) => metrics
                .kafka_produce_seconds
                .observe(started.elapsed().as_secs_f64()),
            Err(_) => metrics.kafka_produce_errors.inc(),
        }
        let (partition, offset) = *outcome.as_ref().unwrap_or(&(0, 0));
        self.0 = Pending::Landed(partition, offset);
        Some(outcome)
    }

    /// Like [`Delivery::confirmed`], with where the record landed: (partition, offset).
    pub async fn confirmed_at(self) -> Result<(i32, i64)> {
        let (queued, started, metrics) = match self.0 {
            Pending::Kafka(queued, started, metrics) => (queued, started, metrics),
            Pending::Landed(partition, offset) => return Ok((partition, offset)),
        };
        let outcome = match queued {
            Err(error) => Err(Error::kafka("queueing record", error)),
            Ok(future) => match future.await {
                Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
                Ok(Err((error, _))) => Err(Error::kafka("delivering record", error)),
                Err(_canceled) => Err(Error::kafka("delivering record", KafkaError::Canceled)),
            },
        };
        match outcome {
            Ok(_) => metrics
                .kafka_produce_seconds
                .observe(started.elapsed().as_secs_f64()),
            Err(_) => metrics.kafka_produce_errors.inc(),
        }
        outcome
    }
}
