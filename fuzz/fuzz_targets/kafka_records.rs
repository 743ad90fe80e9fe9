//! Every record read back from a Kafka topic: telemetry events (JSON and compact), dead letters,
//! alerts, scores (batched and alone), alarm events, feedback, device requests (`iot.commands`) and replies,
//! directory entries, command records, and twins (`iot.device-state`). Each must decode
//! or be refused without a panic, and survive a trip through JSON unchanged.
#![no_main]

use fleetwatch_fuzz::{event_record_round_trip, json_round_trip};
use fleetwatch_fuzz::twin::Twin;
use fleetwatch_protocol::{
    AlarmEvent, Alert, CommandRecord, DeadLetter, DeviceEvent, DeviceReply, DeviceRequest,
    DirectoryEntry, Feedback, ScoreBatch, ScoreRecord, ScoresRecord,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = json_round_trip::<DeviceEvent>(data);
    let _ = event_record_round_trip(data);
    let _ = json_round_trip::<DeadLetter>(data);
    let _ = json_round_trip::<Alert>(data);
    let _ = json_round_trip::<ScoreRecord>(data);
    let _ = json_round_trip::<ScoreBatch>(data);
    // What storage reads: either shape, refused without a panic otherwise.
    let _ = serde_json::from_slice::<ScoresRecord>(data);
    let _ = json_round_trip::<AlarmEvent>(data);
    let _ = json_round_trip::<Feedback>(data);
    let _ = json_round_trip::<DeviceRequest>(data);
    let _ = json_round_trip::<DeviceReply>(data);
    let _ = json_round_trip::<DirectoryEntry>(data);
    let _ = json_round_trip::<CommandRecord>(data);
    let _ = json_round_trip::<Twin>(data);
});
