//! Deciding what an incoming MQTT message is: a device event to forward, input to
//! dead-letter (with the reason), or the service's own downstream traffic to ignore.

use fleetwatch_protocol::{
    AckPayload, DeadLetter, DeviceEvent, DeviceEventBody, DeviceTopic, DeviceTopicKind,
    StatePayload, StatusPayload, TelemetryPayload, TopicError,
};

#[derive(Debug, PartialEq)]
pub enum Verdict {
    Forward(DeviceEvent),
    /// The dead letter and a short reason class for the metric label.
    DeadLetter(DeadLetter, &'static str),
    /// Messages the service itself publishes to devices (commands).
    Ignore,
}

/// What ingest refuses beyond the payload's own rules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Largest payload in bytes.
    pub max_payload_bytes: usize,
    /// How far ahead of the service clock a device timestamp may be, in ms.
    pub max_ahead_ms: i64,
}

pub fn classify(topic: &str, payload: &[u8], limits: Limits, received_ms: i64) -> Verdict {
    let max_payload_bytes = limits.max_payload_bytes;
    let dead_letter = |reason: String, class, device_id| {
        Verdict::DeadLetter(
            DeadLetter::new(reason, topic, device_id, payload, received_ms),
            class,
        )
    };
    let parsed = match DeviceTopic::parse(topic) {
        Ok(parsed) => parsed,
        Err(error @ TopicError::BadDeviceId { .. }) => {
            return dead_letter(error.to_string(), "device_id", None)
        }
        Err(error) => return dead_letter(error.to_string(), "topic", None),
    };
    let device_id = parsed.device_id;
    if !parsed.kind.is_upstream() {
        return Verdict::Ignore;
    }
    if payload.len() > max_payload_bytes {
        return dead_letter(
            format!(
                "payload is {} bytes, the limit is {max_payload_bytes}",
                payload.len()
            ),
            "size",
            Some(device_id),
        );
    }
    let body = match parsed.kind {
        DeviceTopicKind::Telemetry => {
            TelemetryPayload::decode(payload).map(DeviceEventBody::Telemetry)
        }
        DeviceTopicKind::State => StatePayload::decode(payload).map(DeviceEventBody::State),
        DeviceTopicKind::Status => StatusPayload::decode(payload).map(DeviceEventBody::Status),
        DeviceTopicKind::Acks => AckPayload::decode(payload).map(DeviceEventBody::Ack),
        DeviceTopicKind::Commands | DeviceTopicKind::Desired => {
            unreachable!("downstream kinds are ignored above")
        }
    };
    let body = match body {
        Ok(body) => body,
        Err(error) => return dead_letter(error.to_string(), "payload", Some(device_id)),
    };
    match not_ahead(&body, received_ms, limits.max_ahead_ms) {
        Ok(()) => Verdict::Forward(DeviceEvent {
            device_id,
            received_ms,
            // Stamped by ingest from the directory.
            tenant: None,
            body,
        }),
        Err(reason) => dead_letter(reason, "clock", Some(device_id)),
    }
}

/// A device timestamp too far ahead of the service clock: a wrong clock whose readings
/// would sort after everything the device sends once its clock is right.
fn not_ahead(body: &DeviceEventBody, received_ms: i64, max_ahead_ms: i64) -> Result<(), String> {
    let ts = match body {
        DeviceEventBody::Telemetry(telemetry) => Some(telemetry.ts),
        DeviceEventBody::State(state) => state.ts,
        _ => None,
    };
    match ts {
        Some(ts) if ts.saturating_sub(received_ms) > max_ahead_ms => Err(format!(
            "ts {ts} is {} ms ahead of the service clock; the limit is {max_ahead_ms} ms",
            ts - received_ms
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = br#"{"ts":1700000000000,"seq":1,"metrics":{"temp":20.5}}"#;
    const NOW: i64 = 1_700_000_000_000;

    fn limits(max_payload_bytes: usize) -> Limits {
        Limits {
            max_payload_bytes,
            max_ahead_ms: 60_000,
        }
    }

    fn reason(verdict: Verdict) -> (String, &'static str) {
        match verdict {
            Verdict::DeadLetter(letter, class) => (letter.reason, class),
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn forwards_valid_telemetry() {
        let Verdict::Forward(event) = classify("devices/d1/telemetry", GOOD, limits(1024), NOW)
        else {
            panic!("not forwarded");
        };
        assert_eq!(event.device_id.as_str(), "d1");
        assert_eq!(event.received_ms, NOW);
    }

    #[test]
    fn ignores_commands_it_publishes_itself() {
        assert_eq!(
            classify("devices/d1/commands", b"{}", limits(1024), NOW),
            Verdict::Ignore
        );
    }

    #[test]
    fn dead_letters_with_reasons() {
        assert_eq!(
            reason(classify("devices/d1/telemetry", GOOD, limits(10), NOW)).1,
            "size"
        );
        assert_eq!(
            reason(classify("devices/d1/bogus", GOOD, limits(1024), NOW)).1,
            "topic"
        );
        assert_eq!(
            reason(classify("devices/b@d/telemetry", GOOD, limits(1024), NOW)).1,
            "device_id"
        );
        let (text, class) = reason(classify("devices/d1/telemetry", b"{", limits(1024), NOW));
        assert_eq!(class, "payload");
        assert!(text.contains("JSON"), "{text}");
        let (text, _) = reason(classify(
            "devices/d1/status",
            br#"{"status":"sleepy"}"#,
            limits(1024),
            NOW,
        ));
        assert!(text.contains("unknown variant"), "{text}");
    }

    #[test]
    fn dead_letters_device_times_too_far_ahead() {
        let ahead = format!(r#"{{"ts":{},"seq":1,"metrics":{{"t":1}}}}"#, NOW + 60_001);
        let (text, class) = reason(classify(
            "devices/d1/telemetry",
            ahead.as_bytes(),
            limits(1024),
            NOW,
        ));
        assert_eq!(class, "clock");
        assert!(text.contains("60001 ms ahead"), "{text}");
        let state = format!(r#"{{"ts":{},"reported":{{}}}}"#, NOW + 120_000);
        assert_eq!(
            reason(classify(
                "devices/d1/state",
                state.as_bytes(),
                limits(1024),
                NOW
            ))
            .1,
            "clock"
        );
        let within = format!(r#"{{"ts":{},"seq":1,"metrics":{{"t":1}}}}"#, NOW + 60_000);
        let verdict = classify("devices/d1/telemetry", within.as_bytes(), limits(1024), NOW);
        assert!(matches!(verdict, Verdict::Forward(_)), "{verdict:?}");
    }
}
