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

pub fn classify(
    topic: &str,
    payload: &[u8],
    max_payload_bytes: usize,
    received_ms: i64,
) -> Verdict {
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
    match body {
        Ok(body) => Verdict::Forward(DeviceEvent {
            device_id,
            received_ms,
            // Stamped by ingest from the directory.
            tenant: None,
            body,
        }),
        Err(error) => dead_letter(error.to_string(), "payload", Some(device_id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = br#"{"ts":1700000000000,"seq":1,"metrics":{"temp":20.5}}"#;

    fn reason(verdict: Verdict) -> (String, &'static str) {
        match verdict {
            Verdict::DeadLetter(letter, class) => (letter.reason, class),
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn forwards_valid_telemetry() {
        let Verdict::Forward(event) = classify("devices/d1/telemetry", GOOD, 1024, 7) else {
            panic!("not forwarded");
        };
        assert_eq!(event.device_id.as_str(), "d1");
        assert_eq!(event.received_ms, 7);
    }

    #[test]
    fn ignores_commands_it_publishes_itself() {
        assert_eq!(
            classify("devices/d1/commands", b"{}", 1024, 0),
            Verdict::Ignore
        );
    }

    #[test]
    fn dead_letters_with_reasons() {
        assert_eq!(
            reason(classify("devices/d1/telemetry", GOOD, 10, 0)).1,
            "size"
        );
        assert_eq!(
            reason(classify("devices/d1/bogus", GOOD, 1024, 0)).1,
            "topic"
        );
        assert_eq!(
            reason(classify("devices/b@d/telemetry", GOOD, 1024, 0)).1,
            "device_id"
        );
        let (text, class) = reason(classify("devices/d1/telemetry", b"{", 1024, 0));
        assert_eq!(class, "payload");
        assert!(text.contains("JSON"), "{text}");
        let (text, _) = reason(classify(
            "devices/d1/status",
            br#"{"status":"sleepy"}"#,
            1024,
            0,
        ));
        assert!(text.contains("unknown variant"), "{text}");
    }
}
