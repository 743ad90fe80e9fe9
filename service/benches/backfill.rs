//! The backfill's throughput: RECORDS 8-metric telemetry readings (500 devices, one a
//! simulated second each) produced to a Kafka-protocol broker, copied into a local
//! archive directory by the archive's own handler (from the records read back, so both
//! sources hold the same offsets), then `backfill::run` over the whole range twice: from
//! the archive (`archive_first`) and from the broker (`kafka`). Each run replays the
//! candidate and the baseline over every reading; the figure is readings per second of
//! wall time, reading included.
//!
//! `FLEETWATCH_TEST_KAFKA=HOST:PORT cargo bench -p fleetwatch --bench backfill [-- RECORDS]`
//! (default 300000; the brokers of /work/rig/start.sh or scripts/test).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleetwatch::archive::{ArchiveHandler, Limits, Revocations, Sink};
use fleetwatch::backfill::{self, BackfillConfig, ModelRun, SourceChoice};
use fleetwatch::kafka::{self, Record, RecordHandler};
use fleetwatch::metrics::Metrics;
use fleetwatch::settings::Settings;
use fleetwatch_protocol::{DeviceEvent, DeviceEventBody, DeviceId, TelemetryPayload};
use rdkafka::producer::{FutureProducer, FutureRecord};

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
const DEVICES: usize = 500;
const START_MS: i64 = 1_795_500_000_000;

fn event(device: usize, seq: u64) -> (String, i64, Vec<u8>) {
    let id = format!("bench-{device:05}");
    let ts = START_MS + seq as i64 * 1_000 + device as i64;
    let metrics = (METRICS.iter().enumerate())
        .map(|(i, name)| {
            let wave = ((seq as f64 + device as f64) * 0.05 * (i + 1) as f64).sin();
            ((*name).into(), 20.0 + i as f64 + wave)
        })
        .collect();
    let payload = serde_json::to_vec(&DeviceEvent {
        device_id: DeviceId::parse(&id).unwrap(),
        received_ms: ts,
        tenant: None,
        body: DeviceEventBody::Telemetry(TelemetryPayload { ts, seq, metrics }),
    })
    .unwrap();
    (id, ts, payload)
}

async fn produce(settings: &Settings, topic: &str, records: usize) {
    let producer: FutureProducer = settings
        .kafka
        .client_config()
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .create()
        .unwrap();
    let all: Vec<usize> = (0..records).collect();
    for chunk in all.chunks(20_000) {
        let events: Vec<_> = chunk
            .iter()
            .map(|&i| event(i % DEVICES, (i / DEVICES) as u64 + 1))
            .collect();
        let deliveries: Vec<_> = (events.iter())
            .map(|(key, ts, payload)| {
                let record = FutureRecord::to(topic)
                    .key(key)
                    .payload(payload)
                    .timestamp(*ts);
                producer.send_result(record).map_err(|(e, _)| e).unwrap()
            })
            .collect();
        for delivery in deliveries {
            delivery.await.unwrap().unwrap();
        }
    }
}

/// Copy the topic into the archive directory with the archive's handler.
async fn archive(settings: &Settings, topic: &str) -> usize {
    let marks = kafka::watermarks(&settings.kafka, topic).await.unwrap();
    let from: HashMap<i32, i64> = marks.iter().map(|m| (m.partition, m.low)).collect();
    let until: HashMap<i32, i64> = marks.iter().map(|m| (m.partition, m.high)).collect();
    let (sender, mut records) = tokio::sync::mpsc::channel(8_192);
    let reading = kafka::read_range(&settings.kafka, topic, from, until, sender);
    let limits = Limits {
        max_file_bytes: 64 * 1024 * 1024,
        max_file_age: Duration::from_secs(3_600),
    };
    let sink = Sink::open(&settings.archive).unwrap();
    let metrics = Arc::new(Metrics::new());
    let revocations = Arc::new(Revocations::default());
    let mut handler = ArchiveHandler::new(sink, limits, metrics, revocations);
    let writing = async {
        let mut count = 0;
        while let Some(record) = records.recv().await {
            let record: kafka::RangeRecord = record;
            let mut row =
                Record::new(topic, "", &record.payload).at(record.partition, record.offset);
            row.key = record.key.as_deref();
            row.timestamp_ms = record.timestamp_ms;
            handler.handle(&row).await.unwrap();
            if handler.commits_each_effect() {
                handler.take_durable();
                handler.committed(true);
            }
            count += 1;
        }
        handler.on_shutdown().await;
        count
    };
    let (read, count) = tokio::join!(reading, writing);
    read.unwrap();
    count
}

/// CPU seconds (user and system) the process used so far: a load-independent figure
/// next to the wall time, on a machine shared with other work.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let records: usize = (std::env::args().skip(1))
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(300_000);
    let mut settings = Settings::default();
    settings.kafka.brokers =
        std::env::var("FLEETWATCH_TEST_KAFKA").expect("FLEETWATCH_TEST_KAFKA=HOST:PORT");
    let name = format!("bench-backfill-{}", std::process::id());
    settings.kafka.topic_prefix = format!("{name}.");
    settings.kafka.group_prefix = format!("{name}-");
    let dir = std::env::temp_dir().join(&name);
    settings.archive.url = format!("file://{}", dir.display());
    kafka::ensure_topics(&settings.kafka).await.unwrap();
    let topic = settings.kafka.topics().telemetry();
    produce(&settings, &topic, records).await;
    let archived = archive(&settings, &topic).await;
    assert_eq!(archived, records, "every record read back and archived");

    let last_ms = START_MS + (records / DEVICES) as i64 * 1_000 + 1_000;
    let candidate = ModelRun::parse("[trainer.model]\nthreshold = 0.6\n").unwrap();
    let mut reports = Vec::new();
    for source in [SourceChoice::ArchiveFirst, SourceChoice::Kafka] {
        let config = BackfillConfig {
            from_ms: START_MS,
            to_ms: last_ms,
            warmup_ms: 60_000,
            source,
            device_prefix: String::new(),
            candidate: candidate.clone(),
            report: dir.join("report.json"),
        };
        let cpu = cpu_seconds();
        let report = backfill::run(&settings, &config, &indicatif::ProgressBar::hidden())
            .await
            .unwrap();
        let cpu = cpu_seconds() - cpu;
        assert_eq!(report.events, records as u64);
        println!(
            "{source:?}: {} readings of {} devices (8 metrics) in {:.2} s: {:.0} events/s \
             (archive {} records, Kafka {}); baseline {} alerts, candidate {}; \
             CPU {cpu:.2} s of this process ({:.0} events per CPU-second)",
            report.events,
            report.devices,
            report.seconds,
            report.events_per_second,
            report.source.archive_records,
            report.source.kafka_records,
            report.baseline.alerts,
            report.candidate.alerts,
            report.events as f64 / cpu,
        );
        reports.push(report);
    }
    assert_eq!(
        serde_json::to_value(&reports[0].per_device).unwrap(),
        serde_json::to_value(&reports[1].per_device).unwrap(),
        "both sources give the same alerts"
    );
    let _ = std::fs::remove_dir_all(dir);
}
