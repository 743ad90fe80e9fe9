//! The storage handler against an in-memory store: batching, holding consumption while
//! the store is down, and offsets made durable only once the store confirmed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fleetwatch_protocol::{
    DeviceEvent, DeviceEventBody, KafkaTopics, ScoreBatch, ScoreRecord, TelemetryPayload,
};

use super::*;
use crate::kafka::{HandleError, Record, RecordHandler};

fn reading(device: &str, seq: u64) -> Vec<u8> {
    let event = DeviceEvent {
        tenant: None,
        device_id: fleetwatch_protocol::DeviceId::parse(device).unwrap(),
        received_ms: 5,
        body: DeviceEventBody::Telemetry(TelemetryPayload {
            ts: 1_000 + seq as i64,
            seq,
            metrics: [("temperature".into(), 20.0), ("power".into(), 100.0)]
                .into_iter()
                .collect(),
        }),
    };
    serde_json::to_vec(&event).unwrap()
}

struct Rig {
    handler: StorageHandler,
    points: Arc<parking_lot::Mutex<Vec<Point>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    metrics: Arc<Metrics>,
    topics: KafkaTopics,
}

impl Rig {
    fn new(batch_points: usize) -> Self {
        let store = Store::memory();
        let Store::Memory { points, down } = store.clone() else {
            unreachable!()
        };
        let (metrics, topics) = (Arc::new(Metrics::new()), KafkaTopics::default());
        let handler = StorageHandler::new(
            store,
            &topics,
            batch_points,
            Duration::from_millis(1),
            metrics.clone(),
        );
        Self {
            handler,
            points,
            down,
            metrics,
            topics,
        }
    }

    async fn feed(&mut self, offset: i64, payload: &[u8]) -> Result<(), HandleError> {
        let topic = self.topics.telemetry();
        let record = Record::new(&topic, "d1", payload).at(0, offset);
        self.handler.handle(&record).await
    }

    fn durable(&mut self) -> Vec<(String, i32, i64)> {
        self.handler.take_durable().sorted()
    }
}

#[tokio::test]
async fn offsets_become_durable_only_once_the_store_confirmed() {
    let mut rig = Rig::new(2);
    rig.feed(0, &reading("d1", 1)).await.unwrap();
    rig.feed(1, &reading("d1", 2)).await.unwrap();
    assert!(rig.durable().is_empty(), "nothing written yet");
    // The third record finds the batch full: it is written first.
    rig.feed(2, &reading("d1", 3)).await.unwrap();
    assert_eq!(rig.durable(), vec![("iot.telemetry".to_owned(), 0, 1)]);
    let stored = rig.points.lock().clone();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].measurement, "fleetwatch_telemetry");
    assert_eq!(stored[0].ts_ms, 1_001);
    assert_eq!(stored[0].tags, vec![("device", "d1".to_owned())]);
    assert_eq!(stored[0].fields.len(), 2, "one field per metric");
    assert!(stored[0].to_data_point().is_ok());
    // The timer writes the rest.
    tokio::time::sleep(Duration::from_millis(5)).await;
    rig.handler.on_tick().await.unwrap();
    assert_eq!(rig.durable(), vec![("iot.telemetry".to_owned(), 0, 2)]);
    assert_eq!(rig.metrics.storage_up.get(), 1);
}

#[tokio::test]
async fn a_down_store_holds_consumption_and_loses_nothing() {
    let mut rig = Rig::new(2);
    rig.down.store(true, Ordering::Relaxed);
    rig.feed(0, &reading("d1", 1)).await.unwrap();
    rig.feed(1, &reading("d1", 2)).await.unwrap();
    rig.handler.on_tick().await.unwrap();
    assert_eq!(rig.metrics.storage_up.get(), 0);
    assert!(rig.metrics.storage_write_errors.get() >= 1);
    // Full and refused: the next record is not taken.
    for _ in 0..3 {
        let refused = rig.feed(2, &reading("d1", 3)).await;
        assert!(matches!(refused, Err(HandleError::Retry(_))), "{refused:?}");
    }
    assert!(rig.durable().is_empty());
    assert_eq!(rig.metrics.storage_buffered.get(), 2);
    // The store returns: the batch lands, then the held record is taken.
    rig.down.store(false, Ordering::Relaxed);
    rig.feed(2, &reading("d1", 3)).await.unwrap();
    rig.handler.on_shutdown().await;
    assert_eq!(rig.durable(), vec![("iot.telemetry".to_owned(), 0, 2)]);
    let seqs: Vec<i64> = rig.points.lock().iter().map(|p| p.ts_ms).collect();
    assert_eq!(
        seqs,
        vec![1_001, 1_002, 1_003],
        "each reading once, in order"
    );
    assert_eq!(rig.metrics.storage_up.get(), 1);
}

/// What the scorer writes (batches) and what it wrote before (one score a record).
#[tokio::test]
async fn score_batches_and_lone_scores_both_become_points() {
    let mut rig = Rig::new(100);
    let score = |seq: u64| ScoreRecord {
        device_id: fleetwatch_protocol::DeviceId::parse("d1").unwrap(),
        ts: seq as i64,
        seq,
        score: 0.0,
        metrics: [("temperature".into(), 0.0)].into_iter().collect(),
    };
    let topic = rig.topics.scores();
    let batch = ScoreBatch {
        scores: vec![score(1), score(2)],
    };
    let payload = serde_json::to_vec(&batch).unwrap();
    rig.handler
        .handle(&Record::new(&topic, "0", &payload))
        .await
        .unwrap();
    let payload = serde_json::to_vec(&score(3)).unwrap();
    rig.handler
        .handle(&Record::new(&topic, "d1", &payload).at(0, 1))
        .await
        .unwrap();
    rig.handler.on_shutdown().await;
    let stored = rig.points.lock().clone();
    let anomaly: Vec<i64> = (stored.iter())
        .filter(|p| p.measurement == "fleetwatch_anomaly")
        .map(|p| p.ts_ms)
        .collect();
    assert_eq!(anomaly, vec![1, 2, 3]);
}

#[tokio::test]
async fn scores_alerts_and_twin_events_become_their_own_measurements() {
    let mut rig = Rig::new(100);
    let score = ScoreRecord {
        device_id: fleetwatch_protocol::DeviceId::parse("d1").unwrap(),
        ts: 7,
        seq: 1,
        score: 0.4,
        metrics: [("temperature".into(), 0.4)].into_iter().collect(),
    };
    let payload = serde_json::to_vec(&score).unwrap();
    let topic = rig.topics.scores();
    let record = Record::new(&topic, "d1", &payload);
    rig.handler.handle(&record).await.unwrap();
    let mut twin = crate::devices::Twin::new(score.device_id.clone());
    twin.connectivity_history
        .push(crate::devices::ConnectivityChange {
            to: fleetwatch_protocol::Connectivity::Offline,
            at_ms: 9,
            cause: crate::devices::ConnectivityCause::Silence,
        });
    let payload = serde_json::to_vec(&twin).unwrap();
    let topic = rig.topics.device_state();
    let record = Record::new(&topic, "d1", &payload);
    rig.handler.handle(&record).await.unwrap();
    rig.handler.on_shutdown().await;
    let stored = rig.points.lock().clone();
    let names: Vec<_> = stored.iter().map(|p| p.measurement).collect();
    assert_eq!(
        names,
        vec![
            "fleetwatch_anomaly",
            "fleetwatch_metric_score",
            "fleetwatch_connectivity"
        ]
    );
    assert_eq!(stored[2].ts_ms, 9);
    assert!(stored[2].tags.contains(&("to", "offline".to_owned())));
}
