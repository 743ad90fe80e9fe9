/// Errors that stop a role or the process. Bad *input* is never one of these: it is
/// dead-lettered or answered with a 4xx and counted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("kafka: {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("mqtt: {0}")]
    Mqtt(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Work that was cut short by a change it must not race (retry it).
    #[error("interrupted: {0}")]
    Interrupted(String),
    #[error("role {role} stopped: {reason}")]
    RoleFailed { role: &'static str, reason: String },
}

impl Error {
    /// A Kafka error; a configuration error about a secret property has its value
    /// redacted (librdkafka quotes the value).
    pub fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        Self::Kafka {
            context: context.into(),
            source: crate::secret::redact_kafka_error(source),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
