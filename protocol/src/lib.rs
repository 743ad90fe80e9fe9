//! The wire contract of fleetwatch: MQTT topics, Kafka topics and the JSON messages that
//! travel on them. Shared by the service, the simulator and the tests; deliberately free of
//! rdkafka and actix so that anything can speak the protocol. docs/protocol.md is the prose
//! version of this crate.

mod alarm;
mod body_de;
mod device_id;
mod event_record;
mod job;
mod kafka;
mod messages;
mod model;
mod mqtt;
mod schedule;
mod sequence;
mod tenant;
mod twin;

pub use alarm::{
    Alarm, AlarmChange, AlarmEvent, AlarmEventKind, DeliveryOutcome, Feedback, Severity, Verdict,
    WebhookDelivery,
};
pub use device_id::{DeviceId, DeviceIdError};
pub use event_record::{EventRecordError, RecordEncoding};
pub use job::*;
pub use kafka::{KafkaTopics, Topic, TopicSpec};
pub use messages::*;
pub use model::*;
pub use mqtt::{DeviceTopic, DeviceTopicKind, TopicError, MQTT_TOPIC_ROOT};
pub use schedule::*;
pub use sequence::SequenceTracker;
pub use tenant::{DirectoryEntry, TenantId, TenantIdError, MAX_TENANT_ID_LEN};
pub use twin::*;

/// Milliseconds since the Unix epoch, the one time unit on the wire.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}
