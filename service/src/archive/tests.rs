//! The archive handler against an in-memory store: files per partition, closed on age,
//! size and ingest hour; offsets durable only once a file is stored; one uploaded file
//! per partition past the committed offset; open files dropped on revocation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleetwatch_protocol::{DeviceEvent, DeviceEventBody, TelemetryPayload};

use super::file::{civil_from_days, file_name, read_rows};
use super::*;

const HOUR: i64 = 3_600_000;
/// 2026-11-24 06:00 UTC.
const T0: i64 = 1_795_500_000_000 - 1_795_500_000_000 % HOUR;

/// A reading as ingest writes it by default.
fn reading(device: &str, seq: u64) -> Vec<u8> {
    reading_in(device, seq, fleetwatch_protocol::RecordEncoding::default())
}

fn reading_in(device: &str, seq: u64, encoding: fleetwatch_protocol::RecordEncoding) -> Vec<u8> {
    let event = DeviceEvent {
        tenant: None,
        device_id: fleetwatch_protocol::DeviceId::parse(device).unwrap(),
        received_ms: 5,
        body: DeviceEventBody::Telemetry(TelemetryPayload {
            ts: 1_000 + seq as i64,
            seq,
            metrics: [("temperature".into(), 20.0)].into_iter().collect(),
        }),
    };
    event.to_record(encoding)
}

struct Rig {
    handler: ArchiveHandler,
    sink: Sink,
    down: Arc<AtomicBool>,
    revocations: Arc<Revocations>,
    metrics: Arc<Metrics>,
}

impl Rig {
    fn new(max_file_bytes: usize, max_file_age: Duration) -> Self {
        let (sink, down) = Sink::in_memory();
        let metrics = Arc::new(Metrics::new());
        let revocations = Arc::new(Revocations::default());
        let limits = Limits {
            max_file_bytes,
            max_file_age,
        };
        let handler =
            ArchiveHandler::new(sink.clone(), limits, metrics.clone(), revocations.clone());
        Self {
            handler,
            sink,
            down,
            revocations,
            metrics,
        }
    }

    async fn take(
        &mut self,
        partition: i32,
        offset: i64,
        ingest_ms: i64,
    ) -> Result<(), HandleError> {
        let payload = reading("d1", offset as u64);
        let mut record = Record::new("iot.telemetry", "d1", &payload).at(partition, offset);
        record.timestamp_ms = Some(ingest_ms);
        self.handler.handle(&record).await
    }

    fn durable(&mut self) -> Vec<(String, i32, i64)> {
        self.handler.take_durable().sorted()
    }

    async fn files(&self) -> Vec<String> {
        self.sink.list("iot.telemetry").await.unwrap()
    }
}

#[test]
fn dates_and_names_follow_the_calendar_and_sort_by_offset() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
    // The last day a device timestamp may have (2286-11-20).
    assert_eq!(
        civil_from_days(9_999_999_999_999 / 86_400_000),
        (2286, 11, 20)
    );
    assert_eq!(
        file_name("iot.telemetry", 3, 42, T0 / HOUR),
        "iot.telemetry/date=2026-11-24/hour=06/iot.telemetry-00003-00000000000000000042.parquet"
    );
}

#[tokio::test]
async fn a_file_is_stored_on_age_and_only_then_are_its_offsets_durable() {
    let mut rig = Rig::new(1 << 20, Duration::from_millis(30));
    for offset in 10..15 {
        rig.take(0, offset, T0 + offset).await.unwrap();
    }
    rig.take(1, 7, T0).await.unwrap();
    rig.handler.on_tick().await.unwrap();
    assert!(
        rig.durable().is_empty(),
        "nothing is durable before a file is stored"
    );
    assert!(rig.files().await.is_empty());
    tokio::time::sleep(Duration::from_millis(40)).await;
    rig.handler.on_tick().await.unwrap();
    assert_eq!(
        rig.durable(),
        [
            ("iot.telemetry".into(), 0, 14),
            ("iot.telemetry".into(), 1, 7)
        ]
    );
    let files = rig.files().await;
    assert_eq!(files.len(), 2);
    assert!(files[0].ends_with("iot.telemetry-00000-00000000000000000010.parquet"));
    let rows = read_rows(rig.sink.get(&files[0]).await.unwrap()).unwrap();
    let offsets: Vec<i64> = rows.iter().map(|(_, _, row)| row.offset).collect();
    assert_eq!(offsets, [10, 11, 12, 13, 14]);
    let (topic, partition, row) = &rows[2];
    assert_eq!((topic.as_str(), *partition), ("iot.telemetry", 0));
    assert_eq!(row.device.as_deref(), Some("d1"));
    assert_eq!(row.kind.as_deref(), Some("telemetry"));
    assert_eq!(
        (row.seq, row.event_ts_ms, row.ingest_ms),
        (Some(12), Some(1_012), Some(T0 + 12))
    );
    assert_eq!(row.payload, reading("d1", 12));
    assert_eq!(rig.metrics.archive_rows.get(), 6);
    assert_eq!(rig.metrics.archive_files.get(), 2);
}

#[test]
fn readings_are_probed_in_either_encoding_and_kept_byte_for_byte() {
    use fleetwatch_protocol::RecordEncoding;
    for encoding in [RecordEncoding::Compact, RecordEncoding::Json] {
        let payload = reading_in("d1", 7, encoding);
        let row = Row::of(&Record::new("iot.telemetry", "d1", &payload));
        assert_eq!(
            (row.device.as_deref(), row.kind.as_deref()),
            (Some("d1"), Some("telemetry")),
            "{encoding:?}"
        );
        assert_eq!(
            (row.seq, row.event_ts_ms),
            (Some(7), Some(1_007)),
            "{encoding:?}"
        );
        assert_eq!(row.payload, payload);
    }
}

#[tokio::test]
async fn a_record_of_another_ingest_hour_or_past_the_size_closes_the_file() {
    let mut rig = Rig::new(
        3 * Row::of(&Record::new("t", "d1", &reading("d1", 0))).size(),
        Duration::from_secs(60),
    );
    rig.take(0, 0, T0 + HOUR - 1).await.unwrap();
    rig.take(0, 1, T0 + HOUR).await.unwrap();
    assert_eq!(rig.durable(), [("iot.telemetry".into(), 0, 0)]);
    rig.handler.committed(true);
    for offset in 2..6 {
        rig.take(0, offset, T0 + HOUR + offset).await.unwrap();
        rig.handler.committed(true);
    }
    let files = rig.files().await;
    assert_eq!(
        files,
        [
            "iot.telemetry/date=2026-11-24/hour=06/iot.telemetry-00000-00000000000000000000.parquet",
            "iot.telemetry/date=2026-11-24/hour=07/iot.telemetry-00000-00000000000000000001.parquet",
        ]
    );
    assert_eq!(
        read_rows(rig.sink.get(&files[1]).await.unwrap())
            .unwrap()
            .len(),
        3
    );
    assert_eq!(rig.handler.open_rows(), 2);
}

#[tokio::test]
async fn a_partition_uploads_no_second_file_before_the_first_one_is_committed() {
    let mut rig = Rig::new(1 << 20, Duration::from_millis(1));
    rig.take(0, 0, T0).await.unwrap();
    rig.take(1, 0, T0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    rig.handler.on_tick().await.unwrap();
    assert!(rig.handler.commits_each_effect());
    assert_eq!(rig.durable().len(), 2, "two partitions upload in one tick");
    rig.take(0, 1, T0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The commit failed: partition 0's next file waits.
    rig.handler.committed(false);
    rig.handler.on_tick().await.unwrap();
    assert!(rig.durable().is_empty());
    assert_eq!(rig.files().await.len(), 2);
    rig.handler.committed(true);
    assert!(!rig.handler.commits_each_effect());
    rig.handler.on_tick().await.unwrap();
    assert_eq!(rig.durable(), [("iot.telemetry".into(), 0, 1)]);
}

#[tokio::test]
async fn a_store_that_refuses_holds_the_record_and_loses_nothing() {
    let mut rig = Rig::new(1 << 20, Duration::from_secs(60));
    rig.take(0, 0, T0).await.unwrap();
    rig.down.store(true, Ordering::SeqCst);
    // A record of the next hour needs the open file stored first.
    assert!(matches!(
        rig.take(0, 1, T0 + HOUR).await,
        Err(HandleError::Retry(_))
    ));
    assert!(rig.durable().is_empty());
    assert_eq!(rig.metrics.archive_up.get(), 0);
    assert_eq!(rig.metrics.archive_upload_errors.get(), 1);
    rig.down.store(false, Ordering::SeqCst);
    // Still within the backoff.
    assert!(rig.take(0, 1, T0 + HOUR).await.is_err());
    tokio::time::sleep(BACKOFF_START + Duration::from_millis(20)).await;
    rig.take(0, 1, T0 + HOUR).await.unwrap();
    assert_eq!(rig.durable(), [("iot.telemetry".into(), 0, 0)]);
    assert_eq!(rig.metrics.archive_up.get(), 1);
    assert_eq!(rig.handler.open_rows(), 1);
}

#[tokio::test]
async fn a_revocation_drops_the_open_files_and_shutdown_stores_the_rest() {
    let mut rig = Rig::new(1 << 20, Duration::from_secs(60));
    rig.take(0, 0, T0).await.unwrap();
    rig.take(1, 0, T0).await.unwrap();
    rig.revocations.revoked(&[0, 1], false);
    rig.take(1, 0, T0).await.unwrap();
    assert_eq!(
        rig.handler.open_rows(),
        1,
        "only what came after the revocation"
    );
    rig.handler.on_shutdown().await;
    assert_eq!(rig.durable(), [("iot.telemetry".into(), 1, 0)]);
    assert_eq!(rig.files().await.len(), 1);
}

#[tokio::test]
async fn a_revocation_also_forgets_a_commit_that_failed() {
    let mut rig = Rig::new(1 << 20, Duration::from_millis(1));
    rig.take(0, 0, T0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    rig.handler.on_tick().await.unwrap();
    rig.handler.committed(false);
    assert!(rig.handler.commits_each_effect());
    rig.revocations.revoked(&[0], true);
    // Assigned again from the committed offset: the same file is written anew.
    rig.take(0, 0, T0).await.unwrap();
    assert!(!rig.handler.commits_each_effect());
    tokio::time::sleep(Duration::from_millis(5)).await;
    rig.handler.on_tick().await.unwrap();
    assert_eq!(rig.files().await.len(), 1, "the same name, replaced");
    assert_eq!(rig.metrics.archive_files.get(), 2);
}
