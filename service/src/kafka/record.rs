//! The record a role's handler receives: the project's own view of a Kafka record, so
//! that no role depends on the Kafka client library and every role can be tested on
//! records made in memory.

/// One consumed record, borrowed from the consumer's buffer (no copy per record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The record's key (a device id for every co-partitioned topic), if any.
    pub key: Option<&'a [u8]>,
    /// Empty for records without a value (markers, tombstones).
    pub payload: &'a [u8],
    /// The record's timestamp (ms since the epoch), when the broker or producer set one.
    pub timestamp_ms: Option<i64>,
}

impl<'a> Record<'a> {
    /// A record of `topic` partition 0 at offset 0 with `payload`: for tests and tools.
    pub fn new(topic: &'a str, key: &'a str, payload: &'a [u8]) -> Self {
        Self {
            topic,
            partition: 0,
            offset: 0,
            key: Some(key.as_bytes()),
            payload,
            timestamp_ms: None,
        }
    }

    pub fn at(self, partition: i32, offset: i64) -> Self {
        Self {
            partition,
            offset,
            ..self
        }
    }

    /// The key as text (keys are device ids or instance names), lossy.
    pub fn key_str(&self) -> std::borrow::Cow<'a, str> {
        String::from_utf8_lossy(self.key.unwrap_or_default())
    }
}

/// Made only by the consumer loop: the single place a client message becomes a
/// [`Record`].
pub(super) fn from_message<'a>(message: &'a rdkafka::message::BorrowedMessage<'_>) -> Record<'a> {
    use rdkafka::Message;
    Record {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key(),
        payload: message.payload().unwrap_or_default(),
        timestamp_ms: message.timestamp().to_millis(),
    }
}
