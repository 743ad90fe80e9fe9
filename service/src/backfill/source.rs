//! Reading a record-time range of `iot.telemetry`: from the archive's Parquet files for
//! the offsets Kafka no longer holds (or, with `archive_first`, for every offset the
//! archive has), and from Kafka for the rest. Per partition the two meet at one offset,
//! so every record is read once; both go through the same decoding (the archive keeps
//! each record's value byte for byte).

use fleetwatch_protocol::MetricValues;
use std::collections::{BTreeMap, HashMap};

use fleetwatch_protocol::{DeviceEvent, DeviceEventBody};
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::sync::mpsc;

use super::config::{BackfillConfig, SourceChoice};
use super::stream::Dispatch;
use super::BackfillError;
use crate::archive::file::{batch_records, civil_from_days, read_rows, record_batches};
use crate::archive::Sink;
use crate::kafka::{self, KafkaConfig, RangeRecord, Watermarks};

const DAY_MS: i64 = 86_400_000;
/// Records in flight from the Kafka reader; when full, the reader waits (nothing is
/// dropped).
const KAFKA_CHANNEL: usize = 8_192;

/// One reading of the range, where it was in Kafka and what it says.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub partition: i32,
    pub offset: i64,
    /// The record's Kafka timestamp: what the range is about.
    pub record_ms: i64,
    pub seq: u64,
    /// The device's clock.
    pub ts: i64,
    pub metrics: MetricValues,
}

/// What was read, from where.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SourceCounts {
    /// Archive files read.
    pub archive_files: u64,
    /// Records taken from the archive (before the range filter).
    pub archive_records: u64,
    /// Records taken from Kafka (before the range filter).
    pub kafka_records: u64,
    /// Readings in the range (of the selected devices), before duplicates are dropped.
    pub readings: u64,
    /// Records outside the range, of other devices, or without a timestamp.
    pub outside: u64,
    /// Device events that are not readings (state, status, acks).
    pub other_events: u64,
    /// Records that are not a device event at all.
    pub undecodable: u64,
    /// Times the reader waited for a replay thread to take readings (its bounded queue
    /// was full): the replay, not the reading, set the pace.
    pub reader_waits: u64,
    /// Partitions whose oldest offsets Kafka no longer holds and that no archive
    /// replaced (`source = kafka`, or no archive configured).
    pub kafka_trimmed_partitions: Vec<i32>,
}

/// The range's readings per device, in each device's Kafka order; or, when `stream` is
/// set, what was read, the readings having gone to the replay threads as they came.
#[derive(Debug, Default)]
pub struct History {
    pub devices: BTreeMap<String, Vec<Reading>>,
    pub counts: SourceCounts,
    /// Where readings go instead of `devices`: the replay threads (`stream`).
    pub stream: Option<Dispatch>,
}

impl History {
    /// Take one record if it is a reading of the range.
    fn take(
        &mut self,
        config: &BackfillConfig,
        (partition, offset): (i32, i64),
        record_ms: Option<i64>,
        payload: &[u8],
    ) {
        let Some(record_ms) = record_ms.filter(|ms| (config.from_ms..config.to_ms).contains(ms))
        else {
            self.counts.outside += 1;
            return;
        };
        let Ok(event) = DeviceEvent::from_record(payload) else {
            self.counts.undecodable += 1;
            return;
        };
        let DeviceEventBody::Telemetry(telemetry) = event.body else {
            self.counts.other_events += 1;
            return;
        };
        let device = event.device_id.as_str();
        if !device.starts_with(&config.device_prefix) {
            self.counts.outside += 1;
            return;
        }
        self.counts.readings += 1;
        let reading = Reading {
            partition,
            offset,
            record_ms,
            seq: telemetry.seq,
            ts: telemetry.ts,
            metrics: telemetry.metrics,
        };
        if let Some(stream) = &mut self.stream {
            return stream.push(String::from(event.device_id), reading);
        }
        match self.devices.get_mut(device) {
            Some(readings) => readings.push(reading),
            None => {
                self.devices.insert(device.to_owned(), vec![reading]);
            }
        }
    }

    /// Send the readings taken so far to the replay threads (when streaming).
    async fn send_ready(&mut self) {
        if let Some(stream) = &mut self.stream {
            stream.send_ready().await;
        }
    }

    /// Each device's readings in Kafka order (partition, offset): the order the scorer
    /// role sees them in.
    fn sort(&mut self) {
        for readings in self.devices.values_mut() {
            readings.sort_by_key(|r| (r.partition, r.offset));
        }
    }
}

/// An archive file of the topic: its name, partition and first offset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ArchiveFile {
    partition: i32,
    first_offset: i64,
    name: String,
}

/// `…/hour=HH/<topic>-<partition>-<first offset>.parquet` → (hour, partition, offset).
fn parse_name(name: &str) -> Option<(i64, i32, i64)> {
    let mut parts = name.rsplit('/');
    let stem = parts.next()?.strip_suffix(".parquet")?;
    let hour = parts.next()?.strip_prefix("hour=")?.parse().ok()?;
    let mut fields = stem.rsplit('-');
    let offset = fields.next()?.parse().ok()?;
    let partition = fields.next()?.parse().ok()?;
    Some((hour, partition, offset))
}

/// The archive files of `topic` whose ingest hour overlaps the range, in (partition,
/// first offset) order. Lists one date directory per day of the range.
async fn archive_files(
    sink: &Sink,
    topic: &str,
    (from_ms, to_ms): (i64, i64),
) -> Result<Vec<ArchiveFile>, BackfillError> {
    let (first_hour, last_hour) = (
        from_ms.div_euclid(3_600_000),
        (to_ms - 1).div_euclid(3_600_000),
    );
    let mut files = Vec::new();
    for day in from_ms.div_euclid(DAY_MS)..=(to_ms - 1).div_euclid(DAY_MS) {
        let (year, month, date) = civil_from_days(day);
        let under = format!("{topic}/date={year:04}-{month:02}-{date:02}");
        for name in sink.list(&under).await.map_err(BackfillError::archive)? {
            let Some((hour, partition, first_offset)) = parse_name(&name) else {
                continue;
            };
            if (first_hour..=last_hour).contains(&(day * 24 + hour)) {
                files.push(ArchiveFile {
                    partition,
                    first_offset,
                    name,
                });
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Read the archive's records of the range, but only offsets `wanted` accepts; returns
/// the last offset taken per partition.
async fn read_archive(
    sink: &Sink,
    topic: &str,
    config: &BackfillConfig,
    wanted: impl Fn(i32, i64) -> bool,
    history: &mut History,
    progress: &ProgressBar,
) -> Result<HashMap<i32, i64>, BackfillError> {
    let mut last: HashMap<i32, i64> = HashMap::new();
    for file in archive_files(sink, topic, (config.from_ms, config.to_ms)).await? {
        if !wanted(file.partition, file.first_offset) {
            continue;
        }
        let bytes = sink.get(&file.name).await.map_err(BackfillError::archive)?;
        let failed = |e: String| BackfillError::Archive(format!("reading {}: {e}", file.name));
        history.counts.archive_files += 1;
        let batches = record_batches(bytes).map_err(|e| failed(e.to_string()))?;
        for batch in batches {
            let batch = batch.map_err(|e| failed(e.to_string()))?;
            progress.inc_length(batch.num_rows() as u64);
            progress.inc(batch.num_rows() as u64);
            for (partition, offset, ingest_ms, payload) in
                batch_records(&batch).map_err(|e| failed(e.to_string()))?
            {
                if !wanted(partition, offset) {
                    continue;
                }
                history.counts.archive_records += 1;
                let at = last.entry(partition).or_insert(offset);
                *at = (*at).max(offset);
                history.take(config, (partition, offset), ingest_ms, payload);
            }
            history.send_ready().await;
        }
    }
    Ok(last)
}

/// The payloads of the archived records of `topic` whose ingest time is in `range` and
/// that Kafka no longer holds (offsets below `marks`' low watermarks), in file order.
pub async fn archived_payloads(
    sink: &Sink,
    topic: &str,
    range: (i64, i64),
    marks: &[Watermarks],
) -> Result<Vec<Vec<u8>>, BackfillError> {
    let low: HashMap<i32, i64> = marks.iter().map(|m| (m.partition, m.low)).collect();
    let gone = |partition: i32, offset: i64| low.get(&partition).is_none_or(|&l| offset < l);
    let mut payloads = Vec::new();
    for file in archive_files(sink, topic, range).await? {
        if !gone(file.partition, file.first_offset) {
            continue;
        }
        let bytes = sink.get(&file.name).await.map_err(BackfillError::archive)?;
        let rows = read_rows(bytes)
            .map_err(|e| BackfillError::Archive(format!("reading {}: {e}", file.name)))?;
        payloads.extend(
            (rows.into_iter())
                .filter(|(_, partition, row)| gone(*partition, row.offset))
                .map(|(_, _, row)| row.payload),
        );
    }
    Ok(payloads)
}

/// Read `to_read` of the topic from Kafka, up to the ends captured in `marks`.
async fn read_kafka(
    kafka_config: &KafkaConfig,
    topic: &str,
    config: &BackfillConfig,
    (from, marks): (HashMap<i32, i64>, &[Watermarks]),
    history: &mut History,
    progress: &ProgressBar,
) -> Result<(), BackfillError> {
    let until: HashMap<i32, i64> = marks.iter().map(|m| (m.partition, m.high)).collect();
    let expected: i64 = marks
        .iter()
        .map(|m| (m.high - from.get(&m.partition).copied().unwrap_or(0)).max(0))
        .sum();
    progress.inc_length(expected as u64);
    let (sender, mut records) = mpsc::channel::<RangeRecord>(KAFKA_CHANNEL);
    let reading = kafka::read_range(kafka_config, topic, from, until, sender);
    let taking = async {
        while let Some(record) = records.recv().await {
            progress.inc(1);
            history.counts.kafka_records += 1;
            let at = (record.partition, record.offset);
            history.take(config, at, record.timestamp_ms, &record.payload);
            history.send_ready().await;
        }
    };
    let (read, ()) = tokio::join!(reading, taking);
    read.map_err(|e| BackfillError::Kafka(e.to_string()))
}

/// Read the range: see the module's doc.
pub async fn read(
    kafka_config: &KafkaConfig,
    archive: Option<&Sink>,
    config: &BackfillConfig,
    progress: &ProgressBar,
    stream: Option<Dispatch>,
) -> Result<History, BackfillError> {
    let topic = kafka_config.topics().telemetry();
    let marks = kafka::watermarks(kafka_config, &topic)
        .await
        .map_err(|e| BackfillError::Kafka(e.to_string()))?;
    let low: HashMap<i32, i64> = marks.iter().map(|m| (m.partition, m.low)).collect();
    let mut history = History {
        stream,
        ..History::default()
    };
    let mut from = low.clone();
    match (archive, config.source) {
        (Some(sink), SourceChoice::Auto) => {
            let below_low = |p: i32, offset: i64| low.get(&p).is_none_or(|&l| offset < l);
            read_archive(sink, &topic, config, below_low, &mut history, progress).await?;
        }
        (Some(sink), SourceChoice::ArchiveFirst) => {
            let all = |_: i32, _: i64| true;
            let last = read_archive(sink, &topic, config, all, &mut history, progress).await?;
            for (partition, last) in last {
                let start = from.entry(partition).or_insert(0);
                *start = (*start).max(last + 1);
            }
        }
        _ => {
            history.counts.kafka_trimmed_partitions = (marks.iter())
                .filter(|m| m.low > 0)
                .map(|m| m.partition)
                .collect();
        }
    }
    read_kafka(
        kafka_config,
        &topic,
        config,
        (from, &marks),
        &mut history,
        progress,
    )
    .await?;
    history.sort();
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::file::{hour_of, OpenFile, Row};
    use crate::kafka::Record;

    const HOUR_MS: i64 = 3_600_000;
    /// 2026-11-24T00:00:00Z.
    const DAY: i64 = 1_795_478_400_000;

    fn reading(device: &str, seq: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "device_id": device, "received_ms": 0,
            "body": {"kind": "telemetry", "ts": seq, "seq": seq, "metrics": {"t": 1.0}},
        }))
        .unwrap()
    }

    /// Archive `records` (offset, ingest ms, payload) of partition 0 as one file an hour.
    async fn archive(sink: &Sink, topic: &str, records: &[(i64, i64, Vec<u8>)]) {
        let mut files: BTreeMap<i64, OpenFile> = BTreeMap::new();
        for (offset, ingest, payload) in records {
            let mut record = Record::new(topic, "k", payload).at(0, *offset);
            record.timestamp_ms = Some(*ingest);
            let hour = hour_of(Some(*ingest));
            (files.entry(hour))
                .or_insert_with(|| OpenFile::new(topic, 0, hour))
                .push(Row::of(&record));
        }
        for file in files.values() {
            sink.put(&file.name(), file.to_parquet().unwrap())
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn the_archive_gives_only_what_kafka_no_longer_holds_in_the_range() {
        let (sink, _) = Sink::in_memory();
        let records: Vec<_> = (0..6)
            .map(|i| (i, DAY + i * HOUR_MS, reading("pump-1", i as u64)))
            .collect();
        archive(&sink, "t", &records).await;
        let marks = [Watermarks {
            partition: 0,
            low: 4,
            high: 6,
        }];
        // Hours 1 to 4 of the day, offsets below 4: offsets 1, 2 and 3.
        let range = (DAY + HOUR_MS, DAY + 5 * HOUR_MS);
        let payloads = archived_payloads(&sink, "t", range, &marks).await.unwrap();
        let expected: Vec<_> = (1..4).map(|i| reading("pump-1", i)).collect();
        assert_eq!(payloads, expected);
    }

    #[test]
    fn only_readings_of_the_range_and_the_devices_are_taken() {
        let config = BackfillConfig {
            from_ms: 100,
            to_ms: 200,
            warmup_ms: 0,
            source: SourceChoice::Auto,
            device_prefix: "pump-".into(),
            candidate: Default::default(),
            report: "r.json".into(),
        };
        let mut history = History::default();
        history.take(&config, (0, 1), Some(150), &reading("pump-1", 1));
        history.take(&config, (0, 2), Some(200), &reading("pump-1", 2));
        history.take(&config, (0, 3), None, &reading("pump-1", 3));
        history.take(&config, (0, 4), Some(150), &reading("fan-1", 4));
        history.take(&config, (0, 5), Some(150), b"not json");
        let status =
            br#"{"device_id": "pump-1", "received_ms": 0, "body": {"kind": "decommissioned"}}"#;
        history.take(&config, (0, 6), Some(150), status);
        let seqs: Vec<u64> = history.devices["pump-1"].iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1]);
        assert_eq!(history.devices.len(), 1);
        let counts = &history.counts;
        assert_eq!(
            (
                counts.readings,
                counts.outside,
                counts.undecodable,
                counts.other_events
            ),
            (1, 3, 1, 1)
        );
    }

    #[test]
    fn archive_names_give_hour_partition_and_offset() {
        assert_eq!(
            parse_name("iot.telemetry/date=2026-11-24/hour=06/iot.telemetry-00003-00000000000000004200.parquet"),
            Some((6, 3, 4200))
        );
        assert_eq!(
            parse_name("iot.telemetry/date=2026-11-24/hour=06/x.json"),
            None
        );
        assert_eq!(
            parse_name("iot.telemetry-00003-00000000000000004200.parquet"),
            None
        );
    }
}
