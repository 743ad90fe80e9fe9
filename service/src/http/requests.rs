//! Asking the instance that owns a device: a [`DeviceRequest`] goes on `iot.commands`
//! (key: device id, so it lands in the owner's partition, in order with everything else
//! for that device) and the owner's [`DeviceReply`] comes back on `iot.replies`, which
//! every instance reads from its end and filters by its own name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleetwatch_protocol::{
    now_ms, DeviceId, DeviceReply, DeviceRequest, DeviceRequestBody, KafkaTopics,
};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::kafka::{decode_record, HandleError, Producer, Record, RecordHandler};
use crate::metrics::Metrics;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0} requests are already waiting for answers; retry shortly")]
    Busy(usize),
    #[error("could not queue the request: {0}")]
    Kafka(String),
    #[error("the instance owning the device did not answer within {0:?}; a write may still be applied (retry with the same idempotency key)")]
    Timeout(Duration),
}

pub struct RequestClient {
    /// This instance's name on `iot.replies`.
    instance: String,
    commands_topic: String,
    /// Decommissionings travel on the device's telemetry partition, in order with its
    /// events, so every role that reads them forgets the device at the same point.
    telemetry_topic: String,
    producer: Producer,
    pending: Mutex<HashMap<String, oneshot::Sender<DeviceReply>>>,
    max_pending: usize,
    timeout: Duration,
    counter: AtomicU64,
    metrics: Arc<Metrics>,
}

impl RequestClient {
    pub fn new(
        instance: String,
        topics: &KafkaTopics,
        producer: Producer,
        max_pending: usize,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            instance,
            commands_topic: topics.commands(),
            telemetry_topic: topics.telemetry(),
            producer,
            pending: Mutex::new(HashMap::new()),
            max_pending,
            timeout,
            counter: AtomicU64::new(0),
            metrics,
        }
    }

    /// Announce that the device is decommissioned; returns once Kafka has the record.
    pub async fn decommission(&self, device_id: &DeviceId) -> crate::error::Result<()> {
        let event = fleetwatch_protocol::DeviceEvent {
            device_id: device_id.clone(),
            received_ms: now_ms(),
            tenant: None,
            body: fleetwatch_protocol::DeviceEventBody::Decommissioned,
        };
        self.producer
            .send_json(&self.telemetry_topic, device_id.as_str(), &event)
            .await
    }

    /// A new id, unique across instances and restarts.
    pub fn new_id(&self, kind: &str) -> String {
        format!(
            "{kind}-{:x}-{}-{}",
            now_ms(),
            self.instance,
            self.counter.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Send `body` to the device's owner and wait for its answer.
    pub async fn ask(
        &self,
        device_id: &DeviceId,
        body: DeviceRequestBody,
    ) -> Result<DeviceReply, RequestError> {
        let request_id = self.new_id("req");
        let (sender, receiver) = oneshot::channel();
        {
            let mut pending = self.pending.lock();
            if pending.len() >= self.max_pending {
                return Err(RequestError::Busy(pending.len()));
            }
            pending.insert(request_id.clone(), sender);
        }
        // Whatever happens next, the slot is given back.
        let _slot = PendingSlot {
            client: self,
            request_id: &request_id,
        };
        let request = DeviceRequest {
            request_id: request_id.clone(),
            reply_to: Some(self.instance.clone()),
            device_id: device_id.clone(),
            sent_ms: now_ms(),
            body,
        };
        self.producer
            .send_json(&self.commands_topic, device_id.as_str(), &request)
            .await
            .map_err(|e| RequestError::Kafka(e.to_string()))?;
        match tokio::time::timeout(self.timeout, receiver).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) | Err(_) => {
                self.metrics.request_timeouts.inc();
                Err(RequestError::Timeout(self.timeout))
            }
        }
    }

    fn answer(&self, reply: DeviceReply) {
        if reply.reply_to != self.instance {
            return;
        }
        if let Some(sender) = self.pending.lock().remove(&reply.request_id) {
            let _ = sender.send(reply);
        }
    }
}

struct PendingSlot<'a> {
    client: &'a RequestClient,
    request_id: &'a str,
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.client.pending.lock().remove(self.request_id);
    }
}

/// Reads `iot.replies` and hands this instance's replies to the waiting requests.
pub struct RepliesHandler {
    pub client: Arc<RequestClient>,
    pub metrics: Arc<Metrics>,
}

impl RecordHandler for RepliesHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        if let Some(reply) = decode_record::<DeviceReply>(record, "replies", &self.metrics) {
            self.client.answer(reply);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use fleetwatch_protocol::ReplyStatus;
    use serde_json::json;

    use super::*;
    use crate::kafka::memory::MemoryLog;

    const INSTANCE: &str = "i1";

    struct Fixture {
        client: Arc<RequestClient>,
        replies: RepliesHandler,
        log: MemoryLog,
        topics: KafkaTopics,
        metrics: Arc<Metrics>,
    }

    fn fixture(max_pending: usize, timeout: Duration) -> Fixture {
        let metrics = Arc::new(Metrics::new());
        let log = MemoryLog::default();
        let topics = KafkaTopics::default();
        let producer = Producer::in_memory(&log, metrics.clone());
        let client = Arc::new(RequestClient::new(
            INSTANCE.into(),
            &topics,
            producer,
            max_pending,
            timeout,
            metrics.clone(),
        ));
        let replies = RepliesHandler {
            client: client.clone(),
            metrics: metrics.clone(),
        };
        Fixture {
            client,
            replies,
            log,
            topics,
            metrics,
        }
    }

    fn device() -> DeviceId {
        DeviceId::parse("d1").unwrap()
    }

    impl Fixture {
        /// Ask in a task of its own and return it once the request is on
        /// `iot.commands`, with the request.
        async fn ask_in_background(
            &self,
        ) -> (
            tokio::task::JoinHandle<Result<DeviceReply, RequestError>>,
            DeviceRequest,
        ) {
            let before = self.requests().len();
            let client = self.client.clone();
            let asking =
                tokio::spawn(
                    async move { client.ask(&device(), DeviceRequestBody::GetTwin).await },
                );
            for _ in 0..100 {
                if let Some(request) = self.requests().get(before) {
                    return (asking, request.clone());
                }
                tokio::task::yield_now().await;
            }
            panic!("the request never reached iot.commands");
        }

        fn requests(&self) -> Vec<DeviceRequest> {
            self.log.json(&self.topics.commands())
        }

        async fn reply(&mut self, reply: &DeviceReply) {
            let payload = serde_json::to_vec(reply).unwrap();
            let topic = self.topics.replies();
            let record = Record::new(&topic, &reply.reply_to, &payload).at(0, 0);
            self.replies.handle(&record).await.expect("handled");
        }

        fn pending(&self) -> usize {
            self.client.pending.lock().len()
        }
    }

    fn answer(request: &DeviceRequest, reply_to: &str) -> DeviceReply {
        DeviceReply {
            request_id: request.request_id.clone(),
            reply_to: reply_to.into(),
            status: ReplyStatus::Ok,
            body: json!({"device_id": "d1"}),
        }
    }

    /// Long enough never to fire in the tests that expect a reply.
    const PATIENT: Duration = Duration::from_secs(10);

    async fn finished(
        asking: tokio::task::JoinHandle<Result<DeviceReply, RequestError>>,
    ) -> Result<DeviceReply, RequestError> {
        tokio::time::timeout(Duration::from_secs(2), asking)
            .await
            .expect("answered within 2 s")
            .expect("the asking task did not panic")
    }

    #[tokio::test]
    async fn a_reply_completes_its_request() {
        let mut fx = fixture(4, PATIENT);
        let (asking, request) = fx.ask_in_background().await;
        assert_eq!(request.reply_to.as_deref(), Some(INSTANCE));
        assert_eq!(request.device_id, device());
        assert_eq!(request.body, DeviceRequestBody::GetTwin);
        assert!(
            request.request_id.starts_with("req-"),
            "{}",
            request.request_id
        );
        assert!(
            request.request_id.ends_with("-i1-0"),
            "{}",
            request.request_id
        );
        assert_eq!(fx.log.records(&fx.topics.commands())[0].key, "d1");
        assert_eq!(fx.pending(), 1);

        let reply = answer(&request, INSTANCE);
        fx.reply(&reply).await;
        assert_eq!(finished(asking).await.unwrap(), reply);
        assert_eq!(fx.pending(), 0);
        assert_eq!(fx.metrics.request_timeouts.get(), 0);
    }

    #[tokio::test]
    async fn replies_for_unknown_requests_or_other_instances_are_ignored() {
        let mut fx = fixture(4, PATIENT);
        let (asking, request) = fx.ask_in_background().await;
        let mut unknown = answer(&request, INSTANCE);
        unknown.request_id = "req-unknown".into();
        fx.reply(&unknown).await;
        fx.reply(&answer(&request, "i2")).await;
        let topic = fx.topics.replies();
        let garbage = Record::new(&topic, INSTANCE, b"not json");
        fx.replies.handle(&garbage).await.expect("skipped");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!asking.is_finished());
        assert_eq!(fx.pending(), 1);
        let undecodable = fx
            .metrics
            .skipped
            .with_label_values(&["replies", "undecodable"]);
        assert_eq!(undecodable.get(), 1);

        let reply = answer(&request, INSTANCE);
        fx.reply(&reply).await;
        assert_eq!(finished(asking).await.unwrap(), reply);
    }

    #[tokio::test]
    async fn no_reply_in_time_is_a_timeout_and_frees_the_slot() {
        let timeout = Duration::from_millis(20);
        let mut fx = fixture(4, timeout);
        let outcome = fx.client.ask(&device(), DeviceRequestBody::GetTwin).await;
        assert!(
            matches!(outcome, Err(RequestError::Timeout(waited)) if waited == timeout),
            "{outcome:?}"
        );
        assert_eq!(fx.metrics.request_timeouts.get(), 1);
        assert_eq!(fx.pending(), 0);
        // The owner answers late: nobody waits any more, nothing happens.
        let request = fx.requests().pop().unwrap();
        fx.reply(&answer(&request, INSTANCE)).await;
        assert_eq!(fx.pending(), 0);
    }

    #[tokio::test]
    async fn more_than_max_pending_requests_are_refused_as_busy() {
        let mut fx = fixture(1, PATIENT);
        let (asking, request) = fx.ask_in_background().await;
        let refused = fx.client.ask(&device(), DeviceRequestBody::GetTwin).await;
        assert!(matches!(refused, Err(RequestError::Busy(1))), "{refused:?}");
        assert_eq!(fx.requests().len(), 1, "a refused request is not sent");
        assert_eq!(fx.pending(), 1);

        fx.reply(&answer(&request, INSTANCE)).await;
        finished(asking).await.unwrap();
        // The slot is free again.
        let (asking, request) = fx.ask_in_background().await;
        fx.reply(&answer(&request, INSTANCE)).await;
        assert_eq!(
            finished(asking).await.unwrap().request_id,
            request.request_id
        );
        assert_eq!(fx.metrics.request_timeouts.get(), 0);
    }
}
