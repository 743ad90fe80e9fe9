//! MQTT topic layout: `devices/{id}/{kind}`.

use crate::{DeviceId, DeviceIdError};

/// First level of every device topic.
pub const MQTT_TOPIC_ROOT: &str = "devices";

/// The last level of a device topic, and so what the message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceTopicKind {
    /// Device → service: metrics ([`crate::TelemetryPayload`]).
    Telemetry,
    /// Device → service: reported state ([`crate::StatePayload`]).
    State,
    /// Device → service: online/offline, also the device's Last Will ([`crate::StatusPayload`]).
    Status,
    /// Service → device: commands ([`crate::CommandPayload`]).
    Commands,
    /// Service → device: the desired state that differs from the reported one
    /// ([`crate::DesiredPayload`]).
    Desired,
    /// Device → service: command acknowledgements ([`crate::AckPayload`]).
    Acks,
}

impl DeviceTopicKind {
    pub const ALL: [DeviceTopicKind; 6] = [
        Self::Telemetry,
        Self::State,
        Self::Status,
        Self::Commands,
        Self::Desired,
        Self::Acks,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Telemetry => "telemetry",
            Self::State => "state",
            Self::Status => "status",
            Self::Commands => "commands",
            Self::Desired => "desired",
            Self::Acks => "acks",
        }
    }

    /// Whether devices publish on this topic (as opposed to the service).
    pub fn is_upstream(self) -> bool {
        !matches!(self, Self::Commands | Self::Desired)
    }
}

/// A parsed device topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceTopic {
    pub device_id: DeviceId,
    pub kind: DeviceTopicKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {0:?} is not of the form devices/{{id}}/{{kind}}")]
    Shape(String),
    #[error("topic {topic:?} has an unknown kind {kind:?}")]
    UnknownKind { topic: String, kind: String },
    #[error("topic {topic:?} has a bad device id: {source}")]
    BadDeviceId {
        topic: String,
        #[source]
        source: DeviceIdError,
    },
}

impl DeviceTopic {
    pub fn new(device_id: DeviceId, kind: DeviceTopicKind) -> Self {
        Self { device_id, kind }
    }

    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let mut levels = topic.split('/');
        let (Some(root), Some(id), Some(kind), None) =
            (levels.next(), levels.next(), levels.next(), levels.next())
        else {
            return Err(TopicError::Shape(topic.to_owned()));
        };
        if root != MQTT_TOPIC_ROOT {
            return Err(TopicError::Shape(topic.to_owned()));
        }
        let kind = DeviceTopicKind::ALL
            .into_iter()
            .find(|candidate| candidate.as_str() == kind)
            .ok_or_else(|| TopicError::UnknownKind {
                topic: topic.to_owned(),
                kind: kind.to_owned(),
            })?;
        let device_id = DeviceId::parse(id).map_err(|source| TopicError::BadDeviceId {
            topic: topic.to_owned(),
            source,
        })?;
        Ok(Self { device_id, kind })
    }

    /// Subscription filter for one kind over all devices, e.g. `devices/+/telemetry`.
    pub fn filter_all_devices(kind: Option<DeviceTopicKind>) -> String {
        match kind {
            Some(kind) => format!("{MQTT_TOPIC_ROOT}/+/{}", kind.as_str()),
            None => format!("{MQTT_TOPIC_ROOT}/+/+"),
        }
    }
}

impl std::fmt::Display for DeviceTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{MQTT_TOPIC_ROOT}/{}/{}",
            self.device_id,
            self.kind.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        for kind in DeviceTopicKind::ALL {
            let topic = DeviceTopic::new(DeviceId::parse("d-1").unwrap(), kind);
            assert_eq!(DeviceTopic::parse(&topic.to_string()).unwrap(), topic);
        }
    }

    #[test]
    fn names_what_is_wrong() {
        assert!(matches!(
            DeviceTopic::parse("devices/d1/bogus"),
            Err(TopicError::UnknownKind { .. })
        ));
        assert!(matches!(
            DeviceTopic::parse("devices/d1/telemetry/extra"),
            Err(TopicError::Shape(_))
        ));
        assert!(matches!(
            DeviceTopic::parse("things/d1/telemetry"),
            Err(TopicError::Shape(_))
        ));
        assert!(matches!(
            DeviceTopic::parse("devices/d%1/telemetry"),
            Err(TopicError::BadDeviceId { .. })
        ));
    }
}
