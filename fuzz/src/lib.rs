//! What the fuzz targets share: the service's pure decoders, compiled from the service's
//! own source files (the service crate itself needs rdkafka and actix, far too much to
//! build for every fuzz run), and the checks every decoded record must pass.

/// `service/src/ingest/classify.rs`: what ingest does with an MQTT message.
#[path = "../../service/src/ingest/classify.rs"]
pub mod classify;

/// `service/src/devices/config.rs`: the twin's rules (`twin.rs` reads them as
/// `super::config`).
#[path = "../../service/src/devices/config.rs"]
pub mod config;

/// `service/src/devices/twin.rs`: the twin, the record of `iot.device-state`.
#[path = "../../service/src/devices/twin.rs"]
pub mod twin;

use fleetwatch_protocol::{DeviceEvent, RecordEncoding};
use serde::{de::DeserializeOwned, Serialize};

/// Decode `bytes` as a JSON record of type `T`; when it decodes, writing it again and
/// reading that back must give the same text (nothing lost or invented on the way).
pub fn json_round_trip<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(bytes).ok()?;
    let once = serde_json::to_vec(&value).expect("a decoded record serializes");
    let again: T = serde_json::from_slice(&once).expect("a written record decodes");
    let twice = serde_json::to_vec(&again).expect("a decoded record serializes");
    assert_eq!(once, twice, "a record changed on its way through JSON");
    Some(value)
}

/// A record of `iot.telemetry` in either encoding, refused without a panic or read, and
/// then unchanged through both encodings.
pub fn event_record_round_trip(bytes: &[u8]) -> Option<DeviceEvent> {
    let event = DeviceEvent::from_record(bytes).ok()?;
    for encoding in [RecordEncoding::Compact, RecordEncoding::Json] {
        let again = DeviceEvent::from_record(&event.to_record(encoding))
            .expect("a written record decodes");
        assert_eq!(again, event, "a record changed on its way through {encoding:?}");
    }
    Some(event)
}
