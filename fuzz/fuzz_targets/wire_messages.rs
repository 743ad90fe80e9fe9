//! The MQTT payloads devices send (protocol crate): telemetry, state, status, acks, and
//! the desired-state delta devices receive.
#![no_main]

use fleetwatch_fuzz::json_round_trip;
use fleetwatch_protocol::{
    AckPayload, DesiredPayload, StatePayload, StatusPayload, TelemetryPayload,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(telemetry) = TelemetryPayload::decode(data) {
        // What validation let through survives a trip through the wire format.
        let written = serde_json::to_vec(&telemetry).expect("telemetry serializes");
        assert_eq!(TelemetryPayload::decode(&written).as_ref(), Ok(&telemetry));
    }
    if let Ok(state) = StatePayload::decode(data) {
        let written = serde_json::to_vec(&state).expect("state serializes");
        assert!(StatePayload::decode(&written).is_ok());
    }
    let _ = StatusPayload::decode(data);
    let _ = AckPayload::decode(data);
    let _ = json_round_trip::<DesiredPayload>(data);
});
