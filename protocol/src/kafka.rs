//! Kafka topic names. Topics are keyed by device id (but for `iot.scores`, whose batches
//! of many devices' scores go to the partition of their telemetry); the co-partitioned ones
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
        self.of(Topic::Telemetry)
    }
    /// Input that could not be accepted, with the reason ([`crate::DeadLetter`]).
    pub fn dlq(&self) -> String {
        self.of(Topic::Dlq)
    }
    /// Latest model parameters per device. Compacted.
    pub fn model_params(&self) -> String {
        self.of(Topic::ModelParams)
    }
    /// Alerts raised and cleared ([`crate::Alert`]).
    pub fn alerts(&self) -> String {
        self.of(Topic::Alerts)
    }
    /// Alarm lifecycle events ([`crate::AlarmEvent`]), append-only.
    pub fn alarms(&self) -> String {
        self.of(Topic::Alarms)
    }
    /// Users' verdicts on alarms ([`crate::Feedback`]), for the trainer.
    pub fn feedback(&self) -> String {
        self.of(Topic::Feedback)
    }
    /// The outcome of each webhook delivery of an alarm event ([`crate::WebhookDelivery`]),
    /// append-only. Key: device id.
    pub fn webhook_deliveries(&self) -> String {
        self.of(Topic::WebhookDeliveries)
    }
    /// The score of every scored event, in batches ([`crate::ScoreBatch`]), for the
    /// storage role. No key: a batch goes to the partition of its telemetry's number.
    pub fn scores(&self) -> String {
        self.of(Topic::Scores)
    }
    /// The trainer's checkpoints of each device's model, so a restarted or new owner
    /// continues it. Compacted.
    pub fn trainer_state(&self) -> String {
        self.of(Topic::TrainerState)
    }
    /// The device twins' changelog. Compacted.
    pub fn device_state(&self) -> String {
        self.of(Topic::DeviceState)
    }
    /// Requests for device actors ([`crate::DeviceRequest`]): commands, desired-state
    /// writes and reads of a twin owned by another instance. Key: device id.
    pub fn commands(&self) -> String {
        self.of(Topic::Commands)
    }
    /// Which tenant each device belongs to ([`crate::DirectoryEntry`]). Compacted; read
    /// whole by every instance.
    pub fn device_directory(&self) -> String {
        self.of(Topic::DeviceDirectory)
    }
    /// Fleet jobs' event logs ([`crate::JobEvent`]). Key: job id.
    pub fn jobs(&self) -> String {
        self.of(Topic::Jobs)
    }
    /// Schedules' event logs ([`crate::ScheduleEvent`]). Key: schedule id.
    pub fn schedules(&self) -> String {
        self.of(Topic::Schedules)
    }
    /// Alarm rules' specs (saved, deleted). Key: rule id. Kept for ever.
    pub fn rules(&self) -> String {
        self.of(Topic::Rules)
    }
    /// The journal of alarm rules' actions, each with the alarm that caused it. Key:
    /// device id (co-partitioned: the owner of a device's alarms records its actions).
    pub fn rule_actions(&self) -> String {
        self.of(Topic::RuleActions)
    }
    /// The model registry's log ([`crate::ModelEvent`]): candidates, their shadows,
    /// promotions and rollbacks. Key: `registry`. Kept for ever.
    pub fn models(&self) -> String {
        self.of(Topic::Models)
    }
    /// Alerts of models in shadow ([`crate::Alert`] with its `model_id`): recorded and
    /// measured, never delivered to customers. Key: device id.
    pub fn shadow_alerts(&self) -> String {
        self.of(Topic::ShadowAlerts)
    }
    /// Answers to [`crate::DeviceRequest`]s, for the instance that asked
    /// ([`crate::DeviceReply`]). Key: the asking instance.
    pub fn replies(&self) -> String {
        self.of(Topic::Replies)
    }

    /// The full name of `topic`.
    pub fn of(&self, topic: Topic) -> String {
        self.name(topic.base_name())
    }

    /// Every topic with how it is to be created.
    pub fn all(&self) -> Vec<TopicSpec> {
        Topic::ALL
            .iter()
            .map(|&topic| TopicSpec {
                name: self.of(topic),
                topic,
                compacted: topic.compacted(),
                co_partitioned: topic.co_partitioned(),
                retention_ms: topic.retention_ms(),
            })
            .collect()
    }
}

/// Every topic fleetwatch uses, declared once: its name, compaction, retention and
/// whether it is co-partitioned with telemetry (same key, same partition count, so one
/// consumer instance owns all of a device's streams).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    Telemetry,
    Commands,
    DeviceState,
    ModelParams,
    TrainerState,
    DeviceDirectory,
    Alerts,
    Alarms,
    Feedback,
    WebhookDeliveries,
    Replies,
    Dlq,
    Scores,
    Jobs,
    Schedules,
    Rules,
    RuleActions,
    Models,
    ShadowAlerts,
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

impl Topic {
    pub const ALL: [Topic; 19] = [
        Topic::Telemetry,
        Topic::Commands,
        Topic::DeviceState,
        Topic::ModelParams,
        Topic::TrainerState,
        Topic::DeviceDirectory,
        Topic::Alerts,
        Topic::Alarms,
        Topic::Feedback,
        Topic::WebhookDeliveries,
        Topic::Replies,
        Topic::Dlq,
        Topic::Scores,
        Topic::Jobs,
        Topic::Schedules,
        Topic::Rules,
        Topic::RuleActions,
        Topic::Models,
        Topic::ShadowAlerts,
    ];

    /// The name without the deployment's prefix.
    pub fn base_name(self) -> &'static str {
        match self {
            Topic::Telemetry => "iot.telemetry",
            Topic::Commands => "iot.commands",
            Topic::DeviceState => "iot.device-state",
            Topic::ModelParams => "iot.model-params",
            Topic::TrainerState => "iot.trainer-state",
            Topic::DeviceDirectory => "iot.device-directory",
            Topic::Alerts => "iot.alerts",
            Topic::Alarms => "iot.alarms",
            Topic::Feedback => "iot.feedback",
            Topic::WebhookDeliveries => "iot.webhook-deliveries",
            Topic::Replies => "iot.replies",
            Topic::Dlq => "iot.dlq",
            Topic::Scores => "iot.scores",
            Topic::Jobs => "iot.jobs",
            Topic::Schedules => "iot.schedules",
            Topic::Rules => "iot.rules",
            Topic::RuleActions => "iot.rule-actions",
            Topic::Models => "iot.models",
            Topic::ShadowAlerts => "iot.shadow-alerts",
        }
    }

    /// Compacted topics keep the newest record per key (state, not history).
    pub fn compacted(self) -> bool {
        matches!(
            self,
            Topic::DeviceState | Topic::ModelParams | Topic::TrainerState | Topic::DeviceDirectory
        )
    }

    /// Keyed by device id and partitioned like telemetry, so the owner of a device's
    /// partition writes (and mostly reads) the same partition number everywhere. (The
    /// directory is read whole by every instance; sharing the partitioning lets the twin
    /// owner tombstone it in the partition it owns.)
    pub fn co_partitioned(self) -> bool {
        matches!(
            self,
            Topic::Telemetry
                | Topic::Commands
                | Topic::DeviceState
                | Topic::ModelParams
                | Topic::TrainerState
                | Topic::DeviceDirectory
                | Topic::Alerts
                | Topic::Alarms
                | Topic::Feedback
                | Topic::WebhookDeliveries
                | Topic::Scores
                | Topic::RuleActions
                | Topic::ShadowAlerts
        )
    }

    /// How long records are kept (`retention.ms`); `None` keeps the broker's default,
    /// and compacted topics keep their newest record per key for ever.
    pub fn retention_ms(self) -> Option<i64> {
        match self {
            Topic::Telemetry
            | Topic::Alerts
            | Topic::Dlq
            | Topic::Feedback
            | Topic::Scores
            | Topic::ShadowAlerts => Some(7 * DAY_MS),
            // The registry is its log: kept for ever (docs/shadow.md).
            Topic::Models => Some(-1),
            // A resuming client reads the alarm events it missed: a month of them.
            // Delivery status is answered per alarm as long as the alarm is.
            Topic::Alarms | Topic::WebhookDeliveries => Some(30 * DAY_MS),
            // A job's whole log is its state: kept as long as alarms (docs/jobs.md).
            Topic::Jobs => Some(30 * DAY_MS),
            // A schedule's whole log is its state, for as long as it exists: kept for
            // ever (docs/schedules.md).
            Topic::Schedules => Some(-1),
            // Rules are their log, kept for ever; their actions are shown on alarms as
            // long as alarms are kept (docs/rules.md).
            Topic::Rules => Some(-1),
            Topic::RuleActions => Some(30 * DAY_MS),
            Topic::Commands => Some(DAY_MS),
            // Replies matter for seconds (a REST request's wait).
            Topic::Replies => Some(60 * 60 * 1000),
            Topic::DeviceState
            | Topic::ModelParams
            | Topic::TrainerState
            | Topic::DeviceDirectory => None,
        }
    }
}

/// How one topic is to be created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub topic: Topic,
    pub compacted: bool,
    pub co_partitioned: bool,
    pub retention_ms: Option<i64>,
}
