//! Decoding a [`DeviceEventBody`] without buffering it.
//!
//! The body is internally tagged (`"kind"`). serde's derived decoder for such an enum
//! first copies the whole body into its own buffer to find the tag, then decodes the
//! variant from that copy: every reading's metrics were parsed twice and allocated three
//! times, in every role that reads `iot.telemetry` (about a third of a reading's
//! instructions in `benches/hot_path.rs`). Every writer of this type (serde's derived
//! encoder) puts the tag first, so this decoder reads the tag and decodes the variant
//! straight from the rest of the map. A body whose first field is not the tag (or a
//! sequence) is handed to the derived decoder, as before.

use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::{AckPayload, DeviceEventBody, StatePayload, StatusPayload, TelemetryPayload};

const TAG: &str = "kind";

/// The derived decoder, for bodies whose tag is not first.
#[derive(serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Derived {
    Telemetry(TelemetryPayload),
    State(StatePayload),
    Status(StatusPayload),
    Ack(AckPayload),
    Decommissioned,
}

impl From<Derived> for DeviceEventBody {
    fn from(derived: Derived) -> Self {
        match derived {
            Derived::Telemetry(payload) => Self::Telemetry(payload),
            Derived::State(payload) => Self::State(payload),
            Derived::Status(payload) => Self::Status(payload),
            Derived::Ack(payload) => Self::Ack(payload),
            Derived::Decommissioned => Self::Decommissioned,
        }
    }
}

/// The tag's values (the same names and error as the derived decoder's).
#[derive(serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Telemetry,
    State,
    Status,
    Ack,
    Decommissioned,
}

/// A body's first key: the tag, or another (kept for the derived decoder).
enum FirstKey {
    Tag,
    Other(String),
}

impl<'de> Deserialize<'de> for FirstKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = FirstKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<FirstKey, E> {
                Ok(match key {
                    TAG => FirstKey::Tag,
                    other => FirstKey::Other(other.to_owned()),
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = DeviceEventBody;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("internally tagged enum DeviceEventBody")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let first = match map.next_key::<FirstKey>()? {
            Some(FirstKey::Tag) => return variant(map.next_value()?, map),
            Some(FirstKey::Other(key)) => key,
            None => return derived_from(serde_json::Map::new()),
        };
        // The tag is not first: collect the body and let the derived decoder find it.
        let mut body = serde_json::Map::new();
        body.insert(first, map.next_value()?);
        while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
            body.insert(key, value);
        }
        derived_from(body)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Derived::deserialize(SeqAccessDeserializer::new(seq)).map(Into::into)
    }
}

/// The variant `kind` names, decoded from the rest of the body (a unit variant ignores
/// the other fields, as the derived decoder does).
fn variant<'de, A: MapAccess<'de>>(kind: Kind, mut map: A) -> Result<DeviceEventBody, A::Error> {
    let rest = MapAccessDeserializer::new;
    match kind {
        Kind::Telemetry => TelemetryPayload::deserialize(rest(map)).map(DeviceEventBody::Telemetry),
        Kind::State => StatePayload::deserialize(rest(map)).map(DeviceEventBody::State),
        Kind::Status => StatusPayload::deserialize(rest(map)).map(DeviceEventBody::Status),
        Kind::Ack => AckPayload::deserialize(rest(map)).map(DeviceEventBody::Ack),
        Kind::Decommissioned => {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(DeviceEventBody::Decommissioned)
        }
    }
}

/// The derived decoder over a collected body.
fn derived_from<E: de::Error>(
    body: serde_json::Map<String, serde_json::Value>,
) -> Result<DeviceEventBody, E> {
    Derived::deserialize(serde_json::Value::Object(body))
        .map(Into::into)
        .map_err(E::custom)
}

impl<'de> Deserialize<'de> for DeviceEventBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(BodyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This decoder and the derived one give the same body, or both refuse.
    #[test]
    fn decodes_as_the_derived_decoder_does() {
        let bodies = [
            r#"{"kind":"telemetry","ts":1800000000000,"seq":3,"metrics":{"a":1.5,"b":2}}"#,
            r#"{"ts":1800000000000,"seq":3,"metrics":{"a":1.5,"b":2},"kind":"telemetry"}"#,
            r#"{"ts":1800000000000,"kind":"telemetry","seq":3,"metrics":{"a":1.5}}"#,
            r#"{"kind":"telemetry","ts":1800000000000,"seq":18446744073709551615,
                "metrics":{"a":-0.0,"b":1e308,"c":5e-324,"d":-12,"e":0.1}}"#,
            r#"{"kind":"telemetry","ts":1,"seq":1,"metrics":{},"unknown":[true,{"x":null}]}"#,
            r#"{"kind":"state","reported":{"x":{"y":[1,2.5,"z"]}},"ts":1800000000000}"#,
            r#"{"reported":{"fw":"1.2"},"kind":"state"}"#,
            r#"{"kind":"status","status":"offline"}"#,
            r#"{"kind":"ack","command_id":"c1","outcome":"succeeded","message":"ok"}"#,
            r#"{"kind":"decommissioned"}"#,
            r#"{"kind":"decommissioned","extra":{"a":[1]}}"#,
            r#"{"extra":1,"kind":"decommissioned"}"#,
            r#"["decommissioned"]"#,
            // Refused by both.
            r#"{"kind":"nope","ts":1}"#,
            r#"{}"#,
            r#"{"ts":1}"#,
            r#"{"kind":1}"#,
            r#"{"kind":null}"#,
            r#"{"kind":"telemetry","ts":"x","seq":1,"metrics":{}}"#,
            r#"{"kind":"telemetry","seq":1,"metrics":{"a":1}}"#,
            r#"{"kind":"telemetry","ts":1,"seq":-1,"metrics":{"a":1}}"#,
            r#"{"kind":"telemetry","ts":1,"seq":1,"metrics":{"a":"1"}}"#,
            r#"{"kind":"status","status":"asleep"}"#,
            r#"{"kind":"ack","outcome":"failed"}"#,
            r#""telemetry""#,
            r#"17"#,
            r#"null"#,
        ];
        for body in bodies {
            let fast = serde_json::from_str::<DeviceEventBody>(body);
            let derived = serde_json::from_str::<Derived>(body).map(DeviceEventBody::from);
            match (&fast, &derived) {
                (Ok(fast), Ok(derived)) => assert_eq!(fast, derived, "{body}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{body}: this decoder {fast:?}, the derived one {derived:?}"),
            }
        }
    }

    /// The one difference, on input no writer produces: the tag twice. The derived
    /// decoder refuses it; this one takes the first and leaves the second to the
    /// variant, which ignores unknown fields.
    #[test]
    fn a_repeated_tag_is_read_once() {
        let body = r#"{"kind":"status","status":"online","kind":"ack"}"#;
        assert!(serde_json::from_str::<Derived>(body).is_err());
        let fast = serde_json::from_str::<DeviceEventBody>(body).expect("decoded");
        assert!(matches!(fast, DeviceEventBody::Status(_)));
    }

    /// Refusals with the tag first name the same cause as the derived decoder's.
    #[test]
    fn unknown_kinds_are_refused_with_the_derived_message() {
        let body = r#"{"kind":"nope","ts":1}"#;
        let fast = serde_json::from_str::<DeviceEventBody>(body).unwrap_err();
        let derived = serde_json::from_str::<Derived>(body)
            .err()
            .expect("refused");
        let cause = "unknown variant `nope`, expected one of `telemetry`, `state`, `status`, `ack`, `decommissioned`";
        assert!(fast.to_string().starts_with(cause), "{fast}");
        assert!(derived.to_string().starts_with(cause), "{derived}");
    }
}
