//! How a [`DeviceEvent`] is written as an `iot.telemetry` record: readings in a compact
//! binary form or as JSON, every other kind (state, status, acks, decommissionings) as
//! JSON. Readers take both, so records written before the compact form, or by an ingest
//! set to JSON, stay readable.
//!
//! Why: three roles of one process decode every reading, and JSON cost them over a quarter
//! of their instructions (floats parsed from text, the body's tag looked up by name).
//! docs/benchmarks.md, "A compact record for readings", has the figures.
//!
//! The compact form, version 1, integers little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | `0x01`: the version; JSON text never starts with it |
//! | 1 + n | device id: its length, then its UTF-8 bytes |
//! | 8 | `received_ms`, i64 |
//! | 1 + n | tenant: its length (0: none), then its bytes |
//! | 8 | the reading's `ts`, i64 |
//! | 8 | the reading's `seq`, u64 |
//! | 1 | how many metrics |
//! | per metric: 1 + n + 8 | the name's length, its bytes, the value as f64 bits |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    DeviceEvent, DeviceEventBody, DeviceId, MetricName, TelemetryPayload, TenantId, MAX_METRICS,
    MAX_METRIC_NAME_LEN,
};

/// The first byte of a version 1 compact record.
const COMPACT_V1: u8 = 0x01;

/// How ingest writes readings on `iot.telemetry`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordEncoding {
    /// Binary ([`DeviceEvent::to_record`]): about half the bytes, and cheaper for every
    /// role that reads them.
    #[default]
    Compact,
    /// JSON, readable by any Kafka tool and by fleetwatch releases before the compact
    /// form (for a rolling upgrade from one: JSON until every reader is upgraded).
    Json,
}

impl RecordEncoding {
    /// Which encoding a record payload is in, from its first byte: JSON text never starts
    /// below a tab, so anything that does is a compact record (of some version).
    pub fn of_record(payload: &[u8]) -> Self {
        match payload.first() {
            Some(&first) if first < b'\t' => Self::Compact,
            _ => Self::Json,
        }
    }
}

/// Why a record of `iot.telemetry` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EventRecordError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("compact record: {0}")]
    Compact(&'static str),
    #[error("compact record of version {0}; this release reads version 1")]
    UnknownVersion(u8),
}

impl DeviceEvent {
    /// The event as a record payload: a reading in `encoding`, anything else as JSON. A
    /// reading outside what ingest accepts (more than [`MAX_METRICS`] metrics, a name
    /// empty or too long, a value not finite) does not fit the compact form: JSON too.
    pub fn to_record(&self, encoding: RecordEncoding) -> Vec<u8> {
        match (&self.body, encoding) {
            (DeviceEventBody::Telemetry(reading), RecordEncoding::Compact)
                if fits_compact(reading) =>
            {
                self.compact(reading)
            }
            _ => serde_json::to_vec(self).expect("device events serialize"),
        }
    }

    /// Read a record payload written by [`DeviceEvent::to_record`] in either encoding.
    pub fn from_record(payload: &[u8]) -> Result<Self, EventRecordError> {
        match payload {
            [COMPACT_V1, rest @ ..] => Compact(rest).event(),
            [version, ..] if RecordEncoding::of_record(payload) == RecordEncoding::Compact => {
                Err(EventRecordError::UnknownVersion(*version))
            }
            _ => Ok(serde_json::from_slice(payload)?),
        }
    }

    fn compact(&self, reading: &TelemetryPayload) -> Vec<u8> {
        let tenant = self.tenant.as_ref().map_or("", TenantId::as_str);
        let metrics: usize = reading.metrics.keys().map(|name| 1 + name.len() + 8).sum();
        let fixed = 1 + 1 + 8 + 1 + 8 + 8 + 1;
        let mut out =
            Vec::with_capacity(fixed + self.device_id.as_str().len() + tenant.len() + metrics);
        out.push(COMPACT_V1);
        put_text(&mut out, self.device_id.as_str());
        out.extend_from_slice(&self.received_ms.to_le_bytes());
        put_text(&mut out, tenant);
        out.extend_from_slice(&reading.ts.to_le_bytes());
        out.extend_from_slice(&reading.seq.to_le_bytes());
        out.push(reading.metrics.len() as u8); // at most MAX_METRICS: `fits_compact`
        for (name, value) in &reading.metrics {
            put_text(&mut out, name);
            out.extend_from_slice(&value.to_bits().to_le_bytes());
        }
        out
    }
}

fn fits_compact(reading: &TelemetryPayload) -> bool {
    reading.metrics.len() <= MAX_METRICS
        && reading.metrics.iter().all(|(name, value)| {
            (1..=MAX_METRIC_NAME_LEN).contains(&name.len()) && value.is_finite()
        })
}

/// Device ids and tenants are at most 64 bytes by their types, metric names by
/// `fits_compact`.
fn put_text(out: &mut Vec<u8>, text: &str) {
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

/// The unread rest of a compact record.
struct Compact<'a>(&'a [u8]);

impl<'a> Compact<'a> {
    fn event(mut self) -> Result<DeviceEvent, EventRecordError> {
        let device_id = DeviceId::parse(self.text()?).map_err(|_| bad("device id"))?;
        let received_ms = i64::from_le_bytes(self.array()?);
        let tenant = match self.text()? {
            "" => None,
            tenant => Some(TenantId::parse(tenant).map_err(|_| bad("tenant"))?),
        };
        let ts = i64::from_le_bytes(self.array()?);
        let seq = u64::from_le_bytes(self.array()?);
        let [count] = self.array()?;
        if usize::from(count) > MAX_METRICS {
            return Err(bad("metric count"));
        }
        let mut metrics = Vec::with_capacity(count.into());
        for _ in 0..count {
            let name = self.text()?;
            if name.is_empty() || name.len() > MAX_METRIC_NAME_LEN {
                return Err(bad("metric name"));
            }
            let value = f64::from_bits(u64::from_le_bytes(self.array()?));
            if !value.is_finite() {
                return Err(bad("metric value"));
            }
            metrics.push((MetricName::from(name), value));
        }
        if !self.0.is_empty() {
            return Err(bad("bytes after the last metric"));
        }
        Ok(DeviceEvent {
            device_id,
            received_ms,
            tenant,
            body: DeviceEventBody::Telemetry(TelemetryPayload {
                ts,
                seq,
                metrics: BTreeMap::from_iter(metrics),
            }),
        })
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EventRecordError> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(bad("cut short"))?;
        self.0 = rest;
        Ok(*head)
    }

    fn text(&mut self) -> Result<&'a str, EventRecordError> {
        let [len] = self.array()?;
        let (text, rest) = self
            .0
            .split_at_checked(len.into())
            .ok_or(bad("cut short"))?;
        self.0 = rest;
        std::str::from_utf8(text).map_err(|_| bad("text is not UTF-8"))
    }
}

fn bad(what: &'static str) -> EventRecordError {
    EventRecordError::Compact(what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Connectivity, StatusPayload};

    fn reading(tenant: Option<&str>) -> DeviceEvent {
        DeviceEvent {
            device_id: DeviceId::parse("pump-7").unwrap(),
            received_ms: 1_764_000_000_123,
            tenant: tenant.map(|t| TenantId::parse(t).unwrap()),
            body: DeviceEventBody::Telemetry(TelemetryPayload {
                ts: 1_764_000_000_000,
                seq: 42,
                metrics: BTreeMap::from([
                    ("temp".into(), 21.375),
                    ("vibration.rms".into(), -0.1),
                    ("x".into(), 1e300),
                ]),
            }),
        }
    }

    #[test]
    fn readings_round_trip_in_both_encodings() {
        for event in [reading(Some("acme")), reading(None)] {
            for encoding in [RecordEncoding::Compact, RecordEncoding::Json] {
                let record = event.to_record(encoding);
                assert_eq!(DeviceEvent::from_record(&record).unwrap(), event);
            }
        }
    }

    #[test]
    fn the_compact_record_is_smaller_and_only_for_readings() {
        let event = reading(Some("acme"));
        let compact = event.to_record(RecordEncoding::Compact);
        let json = event.to_record(RecordEncoding::Json);
        assert_eq!(compact[0], COMPACT_V1);
        assert_eq!(compact.len(), compact.capacity(), "sized exactly");
        assert!(
            compact.len() * 2 < json.len(),
            "{} vs {}",
            compact.len(),
            json.len()
        );
        let status = DeviceEvent {
            body: DeviceEventBody::Status(StatusPayload {
                status: Connectivity::Online,
                ts: None,
            }),
            ..event
        };
        let record = status.to_record(RecordEncoding::Compact);
        assert_eq!(record[0], b'{');
        assert_eq!(DeviceEvent::from_record(&record).unwrap(), status);
    }

    #[test]
    fn a_reading_ingest_would_refuse_is_written_as_json() {
        let mut event = reading(None);
        let DeviceEventBody::Telemetry(payload) = &mut event.body else {
            unreachable!()
        };
        payload
            .metrics
            .insert("n".repeat(MAX_METRIC_NAME_LEN + 1).into(), 1.0);
        let record = event.to_record(RecordEncoding::Compact);
        assert_eq!(record[0], b'{');
        assert_eq!(DeviceEvent::from_record(&record).unwrap(), event);
    }

    #[test]
    fn damaged_compact_records_are_refused() {
        let record = reading(Some("acme")).to_record(RecordEncoding::Compact);
        for cut in 0..record.len() {
            assert!(
                DeviceEvent::from_record(&record[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = record.clone();
        longer.push(0);
        assert!(DeviceEvent::from_record(&longer).is_err());
        let mut bad_id = record.clone();
        bad_id[2] = b'/';
        assert!(DeviceEvent::from_record(&bad_id).is_err());
        let mut not_finite = record.clone();
        let last = not_finite.len() - 8;
        not_finite[last..].copy_from_slice(&f64::NAN.to_bits().to_le_bytes());
        assert!(DeviceEvent::from_record(&not_finite).is_err());
        let error = DeviceEvent::from_record(&[2, 0]).unwrap_err().to_string();
        assert!(error.contains("version 2"), "{error}");
    }
}
