//! One archive file: the rows of one topic partition, from its first offset on, taken
//! while the file is open; written as Parquet (Snappy) in one go when it closes.
//!
//! Layout: `<topic>/date=YYYY-MM-DD/hour=HH/<topic>-<partition>-<first offset>.parquet`,
//! date and hour (UTC) of the file's first record's Kafka timestamp (the time ingest or
//! the producing role wrote it): ingest time, never the device's clock. The name depends
//! only on the first record, so a file rewritten after a crash (the consumer starts
//! again at the committed offset, that file's first) replaces the old one.

use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, Int64Builder, StringBuilder, UInt64Builder};
use arrow_array::{Array, ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::Deserialize;

use crate::kafka::Record;

const HOUR_MS: i64 = 3_600_000;

/// The columns of every archive file, whatever the topic.
pub fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("key", DataType::Utf8, true),
        Field::new("ingest_ms", DataType::Int64, true),
        Field::new("device", DataType::Utf8, true),
        Field::new("kind", DataType::Utf8, true),
        Field::new("seq", DataType::UInt64, true),
        Field::new("event_ts_ms", DataType::Int64, true),
        Field::new("payload", DataType::Binary, false),
    ]))
}

/// What the archive reads from a payload to make it queryable without JSON: device
/// events (`iot.telemetry`: `body.kind`, `body.seq`, `body.ts`), scores (`seq`, `ts`),
/// alerts (`state`, `event_seq`, `event_ts`) and alarm events (`kind`). Anything else
/// stays in `payload` only.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Probe {
    device_id: Option<String>,
    body: Option<BodyProbe>,
    seq: Option<u64>,
    ts: Option<i64>,
    event_seq: Option<u64>,
    event_ts: Option<i64>,
    state: Option<String>,
    kind: Option<String>,
}

impl Probe {
    /// A reading of `iot.telemetry` in the compact encoding (the first byte tells: JSON
    /// text never starts with it).
    fn compact_reading(payload: &[u8]) -> Option<Self> {
        use fleetwatch_protocol::RecordEncoding;
        if RecordEncoding::of_record(payload) != RecordEncoding::Compact {
            return None;
        }
        let event = fleetwatch_protocol::DeviceEvent::from_record(payload).ok()?;
        let fleetwatch_protocol::DeviceEventBody::Telemetry(reading) = event.body else {
            return None;
        };
        Some(Self {
            device_id: Some(event.device_id.into()),
            body: Some(BodyProbe {
                kind: Some("telemetry".to_owned()),
                seq: Some(reading.seq),
                ts: Some(reading.ts),
            }),
            ..Self::default()
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct BodyProbe {
    kind: Option<String>,
    seq: Option<u64>,
    ts: Option<i64>,
}

/// One archived record.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub offset: i64,
    pub key: Option<String>,
    pub ingest_ms: Option<i64>,
    pub device: Option<String>,
    pub kind: Option<String>,
    pub seq: Option<u64>,
    pub event_ts_ms: Option<i64>,
    pub payload: Vec<u8>,
}

impl Row {
    /// The record as a row; a payload that is neither JSON nor a compact reading is kept as
    /// it is, unprobed.
    pub fn of(record: &Record<'_>) -> Self {
        let probe = Probe::compact_reading(record.payload)
            .unwrap_or_else(|| serde_json::from_slice(record.payload).unwrap_or_default());
        let body = probe.body.unwrap_or_default();
        let key = record.key.map(|k| String::from_utf8_lossy(k).into_owned());
        Self {
            offset: record.offset,
            device: probe.device_id.or_else(|| key.clone()),
            key,
            ingest_ms: record.timestamp_ms,
            kind: body.kind.or(probe.state).or(probe.kind),
            seq: body.seq.or(probe.seq).or(probe.event_seq),
            event_ts_ms: body.ts.or(probe.ts).or(probe.event_ts),
            payload: record.payload.to_vec(),
        }
    }

    /// Bytes this row holds, roughly.
    pub fn size(&self) -> usize {
        64 + self.payload.len() + 2 * self.key.as_ref().map_or(0, String::len)
    }
}

/// The ingest hour (ms since the epoch / 1 h) of a record; no timestamp counts as 0.
pub fn hour_of(ingest_ms: Option<i64>) -> i64 {
    ingest_ms.unwrap_or(0).max(0).div_euclid(HOUR_MS)
}

/// A file being filled.
#[derive(Debug)]
pub struct OpenFile {
    pub topic: String,
    pub partition: i32,
    pub hour: i64,
    pub rows: Vec<Row>,
    pub bytes: usize,
    pub opened: std::time::Instant,
}

impl OpenFile {
    pub fn new(topic: &str, partition: i32, hour: i64) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
            hour,
            rows: Vec::new(),
            bytes: 0,
            opened: std::time::Instant::now(),
        }
    }

    pub fn push(&mut self, row: Row) {
        self.bytes += row.size();
        self.rows.push(row);
    }

    pub fn first_offset(&self) -> Option<i64> {
        self.rows.first().map(|row| row.offset)
    }

    pub fn last_offset(&self) -> Option<i64> {
        self.rows.last().map(|row| row.offset)
    }

    /// The file's name (relative to the archive's root): see the module's doc.
    pub fn name(&self) -> String {
        file_name(
            &self.topic,
            self.partition,
            self.first_offset().unwrap_or(0),
            self.hour,
        )
    }

    /// The rows as one Parquet file.
    pub fn to_parquet(&self) -> Result<Vec<u8>, parquet::errors::ParquetError> {
        let batch = self.batch()?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(properties))?;
        writer.write(&batch)?;
        writer.into_inner()
    }

    fn batch(&self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let n = self.rows.len();
        let (mut key, mut device, mut kind) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let (mut offset, mut ingest, mut event_ts) = (
            Int64Builder::with_capacity(n),
            Int64Builder::with_capacity(n),
            Int64Builder::with_capacity(n),
        );
        let mut seq = UInt64Builder::with_capacity(n);
        let mut payload = BinaryBuilder::new();
        for row in &self.rows {
            offset.append_value(row.offset);
            key.append_option(row.key.as_deref());
            ingest.append_option(row.ingest_ms);
            device.append_option(row.device.as_deref());
            kind.append_option(row.kind.as_deref());
            seq.append_option(row.seq);
            event_ts.append_option(row.event_ts_ms);
            payload.append_value(&row.payload);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![self.topic.as_str(); n])),
            Arc::new(Int32Array::from(vec![self.partition; n])),
            Arc::new(offset.finish()),
            Arc::new(key.finish()),
            Arc::new(ingest.finish()),
            Arc::new(device.finish()),
            Arc::new(kind.finish()),
            Arc::new(seq.finish()),
            Arc::new(event_ts.finish()),
            Arc::new(payload.finish()),
        ];
        RecordBatch::try_new(schema(), columns)
    }
}

/// `<topic>/date=YYYY-MM-DD/hour=HH/<topic>-<partition>-<first offset>.parquet`, the
/// numbers zero-padded so names sort by partition and offset.
pub fn file_name(topic: &str, partition: i32, first_offset: i64, hour: i64) -> String {
    let (year, month, day) = civil_from_days(hour.div_euclid(24));
    format!(
        "{topic}/date={year:04}-{month:02}-{day:02}/hour={:02}/{topic}-{partition:05}-{first_offset:020}.parquet",
        hour.rem_euclid(24)
    )
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One record of an archive file as a reader of records needs it (the backfill): partition,
/// offset, ingest ms and the value, borrowed from the file's batch.
pub type RecordRef<'a> = (i32, i64, Option<i64>, &'a [u8]);

/// The batches of an archive file with only the columns of a [`RecordRef`] (the others
/// are not decoded); see [`batch_records`].
pub fn record_batches(
    bytes: bytes::Bytes,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, parquet::errors::ParquetError> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ProjectionMask;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let columns = ["partition", "offset", "ingest_ms", "payload"];
    let schema = builder.parquet_schema();
    let indices: Vec<usize> = (0..schema.num_columns())
        .filter(|&i| columns.contains(&schema.column(i).name()))
        .collect();
    if indices.len() != columns.len() {
        return Err(parquet::errors::ParquetError::General(format!(
            "not an archive file: it lacks one of the columns {columns:?}"
        )));
    }
    let mask = ProjectionMask::leaves(schema, indices);
    builder.with_projection(mask).build()
}

/// The records of one batch of [`record_batches`].
pub fn batch_records(
    batch: &RecordBatch,
) -> Result<impl Iterator<Item = RecordRef<'_>>, parquet::errors::ParquetError> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type};
    let column = |name: &str| {
        batch.column_by_name(name).ok_or_else(|| {
            parquet::errors::ParquetError::General(format!("no column {name:?} in the batch"))
        })
    };
    let wrong = |name: &str| {
        parquet::errors::ParquetError::General(format!("column {name:?} has the wrong type"))
    };
    let partition =
        (column("partition")?.as_primitive_opt::<Int32Type>()).ok_or_else(|| wrong("partition"))?;
    let offset =
        (column("offset")?.as_primitive_opt::<Int64Type>()).ok_or_else(|| wrong("offset"))?;
    let ingest =
        (column("ingest_ms")?.as_primitive_opt::<Int64Type>()).ok_or_else(|| wrong("ingest_ms"))?;
    let payload = (column("payload")?.as_binary_opt::<i32>()).ok_or_else(|| wrong("payload"))?;
    Ok((0..batch.num_rows()).map(move |i| {
        let ingest_ms = (!ingest.is_null(i)).then(|| ingest.value(i));
        (
            partition.value(i),
            offset.value(i),
            ingest_ms,
            payload.value(i),
        )
    }))
}

/// The rows of a Parquet archive file, for readers (backfill, tests).
pub fn read_rows(
    bytes: bytes::Bytes,
) -> Result<Vec<(String, i32, Row)>, parquet::errors::ParquetError> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type, UInt64Type};
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch?;
        let text = |i: usize| batch.column(i).as_string::<i32>().clone();
        let (topic, key, device, kind) = (text(0), text(3), text(5), text(6));
        let partition = batch.column(1).as_primitive::<Int32Type>();
        let offset = batch.column(2).as_primitive::<Int64Type>();
        let ingest = batch.column(4).as_primitive::<Int64Type>();
        let seq = batch.column(7).as_primitive::<UInt64Type>();
        let event_ts = batch.column(8).as_primitive::<Int64Type>();
        let payload = batch.column(9).as_binary::<i32>();
        let opt_i64 = |a: &arrow_array::Int64Array, i| (!a.is_null(i)).then(|| a.value(i));
        let opt_str = |a: &StringArray, i| (!a.is_null(i)).then(|| a.value(i).to_owned());
        for i in 0..batch.num_rows() {
            let row = Row {
                offset: offset.value(i),
                key: opt_str(&key, i),
                ingest_ms: opt_i64(ingest, i),
                device: opt_str(&device, i),
                kind: opt_str(&kind, i),
                seq: (!seq.is_null(i)).then(|| seq.value(i)),
                event_ts_ms: opt_i64(event_ts, i),
                payload: payload.value(i).to_vec(),
            };
            rows.push((topic.value(i).to_owned(), partition.value(i), row));
        }
    }
    Ok(rows)
}
