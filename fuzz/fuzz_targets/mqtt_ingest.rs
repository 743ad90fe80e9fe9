//! An MQTT message as ingest sees it: topic parsing, device id, size limit and payload
//! decoding together (the service's `ingest::classify`). The first byte is the topic's
//! length, the topic follows, the rest is the payload.
#![no_main]

use fleetwatch_fuzz::classify::{classify, Limits, Verdict};
use fleetwatch_protocol::{DeviceEvent, DeviceTopic};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let (topic, payload) = rest.split_at((len as usize).min(rest.len()));
    // Topics arrive as bytes; ingest reads them lossily, as here.
    let topic = String::from_utf8_lossy(topic);
    if let Ok(parsed) = DeviceTopic::parse(&topic) {
        // A parsed topic prints back to one that parses the same.
        assert_eq!(DeviceTopic::parse(&parsed.to_string()), Ok(parsed));
    }
    let limits = Limits {
        max_payload_bytes: 2048,
        max_ahead_ms: 86_400_000,
    };
    match classify(&topic, payload, limits, 1_700_000_000_000) {
        Verdict::Forward(event) => {
            let written = serde_json::to_vec(&event).expect("events serialize");
            let read: DeviceEvent = serde_json::from_slice(&written).expect("events decode");
            assert_eq!(read, event);
        }
        Verdict::DeadLetter(letter, class) => {
            assert!(!letter.reason.is_empty() && !class.is_empty());
            assert!(letter.payload_bytes == payload.len());
            serde_json::to_vec(&letter).expect("dead letters serialize");
        }
        Verdict::Ignore => {}
    }
});
