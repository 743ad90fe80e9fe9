//! The archive's throughput: 8-metric telemetry records through the archive handler into
//! Parquet files (an in-memory object store), then those files read back and each row's
//! payload decoded as a device event, as a reader of the archive (a backfill) would.
//!
//! `cargo bench -p fleetwatch --bench archive [-- RECORDS]` (default 1000000), 4
//! partitions, 64 MiB files (the default `archive.max_file_bytes`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetwatch::archive::file::read_rows;
use fleetwatch::archive::{ArchiveHandler, Limits, Revocations, Sink};
use fleetwatch::kafka::{Record, RecordHandler};
use fleetwatch::metrics::Metrics;
use fleetwatch_protocol::{DeviceEvent, DeviceEventBody, DeviceId, TelemetryPayload};

const METRICS: [&str; 8] = [
    "temperature",
    "vibration",
    "power",
    "pressure",
    "humidity",
    "current",
    "voltage",
    "rpm",
];

fn event(device: usize, seq: u64) -> Vec<u8> {
    let metrics = (METRICS.iter().enumerate())
        .map(|(i, name)| ((*name).into(), 20.0 + i as f64 + (seq % 97) as f64 * 0.01))
        .collect();
    serde_json::to_vec(&DeviceEvent {
        device_id: DeviceId::parse(&format!("bench-{device:05}")).unwrap(),
        received_ms: 1_795_500_000_000 + seq as i64,
        tenant: None,
        body: DeviceEventBody::Telemetry(TelemetryPayload {
            ts: 1_795_500_000_000 + seq as i64 * 100,
            seq,
            metrics,
        }),
    })
    .unwrap()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let records: usize = (std::env::args().skip(1))
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(1_000_000);
    let (devices, partitions) = (1_000usize, 4i32);
    let payloads: Vec<(String, Vec<u8>)> = (0..records)
        .map(|i| {
            let device = i % devices;
            (
                format!("bench-{device:05}"),
                event(device, (i / devices) as u64),
            )
        })
        .collect();
    let (sink, _) = Sink::in_memory();
    let limits = Limits {
        max_file_bytes: 64 * 1024 * 1024,
        max_file_age: Duration::from_secs(3_600),
    };
    let metrics = Arc::new(Metrics::new());
    let revocations = Arc::new(Revocations::default());
    let mut handler = ArchiveHandler::new(sink.clone(), limits, metrics.clone(), revocations);

    let started = Instant::now();
    for (i, (key, payload)) in payloads.iter().enumerate() {
        let partition = (i % partitions as usize) as i32;
        let mut record = Record::new("iot.telemetry", key, payload).at(partition, i as i64);
        record.timestamp_ms = Some(1_795_500_000_000 + (i / 100) as i64);
        handler.handle(&record).await.expect("in-memory store");
        if handler.commits_each_effect() {
            handler.take_durable();
            handler.committed(true);
        }
    }
    handler.on_shutdown().await;
    let write = started.elapsed();
    let bytes = metrics.archive_bytes.get();
    let files = sink.list("iot.telemetry").await.unwrap();

    let started = Instant::now();
    let mut decoded = 0usize;
    for name in &files {
        for (_, _, row) in read_rows(sink.get(name).await.unwrap()).unwrap() {
            let event: DeviceEvent = serde_json::from_slice(&row.payload).unwrap();
            decoded += usize::from(matches!(event.body, DeviceEventBody::Telemetry(_)));
        }
    }
    let read = started.elapsed();
    assert_eq!(decoded, records, "every record archived once");
    let payload_bytes: usize = payloads.iter().map(|(_, p)| p.len()).sum();
    println!(
        "{records} records of 8-metric telemetry ({:.0} B of JSON each), {} files, {:.1} MB of Parquet ({:.1}% of the JSON)",
        payload_bytes as f64 / records as f64,
        files.len(),
        bytes as f64 / 1e6,
        100.0 * bytes as f64 / payload_bytes as f64
    );
    println!(
        "write (handler, Parquet, upload): {:.2} s, {:.0} records/s",
        write.as_secs_f64(),
        records as f64 / write.as_secs_f64()
    );
    println!(
        "read (files, rows, payload decoded as a device event): {:.2} s, {:.0} events/s",
        read.as_secs_f64(),
        records as f64 / read.as_secs_f64()
    );
}
