//! Kafka topic names. Every topic is keyed by device id; the co-partitioned ones
//! (telemetry, commands, device-state, model-params) share one partition count so that one
//! consumer instance owns all of a device's streams.

/// The topic names, with an optional prefix so that several deployments (or tests) can share
/// one Kafka cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaTopics {
    prefix: String,
}

impl Default for KafkaTopics {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

impl KafkaTopics {
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    fn name(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }

    /// Device events (telemetry, state, status, acks), as ingested. Key: device id.
    pub fn telemetry(&self) -> String {
        self.name("iot.telemetry")
    }
    /// Input that could not be accepted, with the reason ([`crate::DeadLetter`]).
    pub fn dlq(&self) -> String {
        self.name("iot.dlq")
    }
    /// Latest model parameters per device. Compacted.
    pub fn model_params(&self) -> String {
        self.name("iot.model-params")
    }
    /// Alerts raised and cleared ([`crate::Alert`]).
    pub fn alerts(&self) -> String {
        self.name("iot.alerts")
    }
    /// The device twins' changelog. Compacted.
    pub fn device_state(&self) -> String {
        self.name("iot.device-state")
    }
    /// Requests for device actors ([`crate::DeviceRequest`]): commands, desired-state
    /// writes and reads of a twin owned by another instance. Key: device id.
    pub fn commands(&self) -> String {
        self.name("iot.commands")
    }
    /// Answers to [`crate::DeviceRequest`]s, for the instance that asked
    /// ([`crate::DeviceReply`]). Key: the asking instance.
    pub fn replies(&self) -> String {
        self.name("iot.replies")
    }

    /// Every topic with whether it is compacted and whether it is co-partitioned with
    /// telemetry.
    pub fn all(&self) -> Vec<TopicSpec> {
        vec![
            TopicSpec::new(self.telemetry(), false, true),
            TopicSpec::new(self.commands(), false, true),
            TopicSpec::new(self.device_state(), true, true),
            TopicSpec::new(self.model_params(), true, true),
            TopicSpec::new(self.alerts(), false, false),
            TopicSpec::new(self.replies(), false, false),
            TopicSpec::new(self.dlq(), false, false),
        ]
    }
}

/// How one topic is to be created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub compacted: bool,
    pub co_partitioned: bool,
}

impl TopicSpec {
    fn new(name: String, compacted: bool, co_partitioned: bool) -> Self {
        Self {
            name,
            compacted,
            co_partitioned,
        }
    }
}
