use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::durable::DurableOffsets;
use super::record::{from_message, Record};
use super::KafkaConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Which role a consumer serves; names its group and its metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerRole {
    Devices,
    Trainer,
    Scorer,
    /// The scorer's reader of `iot.model-params`.
    ScorerParams,
    Alerts,
    /// Each instance's reader of `iot.replies`.
    Replies,
    /// Each instance's reader of `iot.device-directory`.
    Directory,
    /// Each alerts instance's reader of `iot.alarms`.
    Alarms,
    Storage,
    Webhooks,
    /// Each alerts instance's reader of `iot.webhook-deliveries`.
    WebhookDeliveries,
    /// The jobs role's group member (owns partitions of `iot.jobs`).
    Jobs,
    /// Each jobs instance's reader of `iot.jobs`.
    JobLog,
    /// Each jobs instance's reader of `iot.device-state`.
    JobsFleet,
    /// Each alerts instance's reader of `iot.jobs` (job events for WebSocket clients).
    JobEvents,
    /// The schedules role's group member (owns partitions of `iot.schedules`).
    Schedules,
    /// Each schedules instance's reader of `iot.schedules`.
    ScheduleLog,
    /// The rules role's group member (owns partitions of `iot.rule-actions`).
    Rules,
    /// Each rules instance's readers of `iot.rules`, `iot.rule-actions`, `iot.alarms`
    /// and `iot.device-state`.
    RuleLog,
    RuleActionLog,
    RuleAlarms,
    RulesFleet,
    /// Each alerts instance's reader of `iot.rule-actions` (`/alarms/{id}/actions`).
    AlertsRuleActions,
    Archive,
    /// Each trainer and scorer instance's reader of `iot.models` (the model registry).
    ModelLog,
}

impl ConsumerRole {
    pub fn name(self) -> &'static str {
        match self {
            Self::Devices => "devices",
            Self::Trainer => "trainer",
            Self::Scorer => "scorer",
            Self::ModelLog => "models-log",
            Self::ScorerParams => "scorer-params",
            Self::Alerts => "alerts",
            Self::Replies => "replies",
            Self::Directory => "directory",
            Self::Alarms => "alarms",
            Self::Storage => "storage",
            Self::Webhooks => "webhooks",
            Self::WebhookDeliveries => "webhook-deliveries",
            Self::Jobs => "jobs",
            Self::JobLog => "job-log",
            Self::JobEvents => "job-events",
            Self::JobsFleet => "jobs-fleet",
            Self::Schedules => "schedules",
            Self::ScheduleLog => "schedule-log",
            Self::Rules => "rules",
            Self::RuleLog => "rule-log",
            Self::RuleActionLog => "rule-action-log",
            Self::RuleAlarms => "rule-alarms",
            Self::RulesFleet => "rules-fleet",
            Self::AlertsRuleActions => "alerts-rule-actions",
            Self::Archive => "archive",
        }
    }

    /// Whether a person waits on what this consumer reads: a reading on its way to its
    /// alert (the scorer, then the alerts role's reader), a command on its way to a
    /// device (the devices role), the devices role's reply to a REST request (the
    /// replies reader: 50 ms gave the demo's commands a p50 of 103 ms, 5 ms 69). These
    /// fetch with `kafka.urgent_fetch_wait_ms`. The others wait longer when idle: each
    /// short wait is another request a second.
    pub fn is_urgent(self) -> bool {
        matches!(
            self,
            Self::Scorer | Self::Alerts | Self::Devices | Self::Replies
        )
    }
}

/// Told when a group member's partitions change; runs inside the rebalance, so the
/// rebalance completes only once it returns.
pub trait PartitionListener: Send + Sync {
    /// Partitions are being taken away; `lost` when another member may already own
    /// them (this one was thrown out of the group).
    fn revoked(&self, partitions: &[i32], lost: bool);
    /// The full new assignment (the eager protocol always hands out everything).
    fn assigned(&self, partitions: &[i32]);
}

/// Partition numbers of a list, without duplicates (co-partitioned topics repeat them).
fn partition_numbers(list: &TopicPartitionList) -> Vec<i32> {
    let mut numbers: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
    numbers.sort_unstable();
    numbers.dedup();
    numbers
}

/// Observes rebalances: keeps the assigned-partitions gauge current and tells the
/// role's listener, if any.
pub struct RoleContext {
    role: ConsumerRole,
    metrics: Arc<Metrics>,
    listener: Option<Arc<dyn PartitionListener>>,
    /// Woken after each assignment: the loop then ticks at once (see [`consume`]).
    assigned: Arc<tokio::sync::Notify>,
}

impl ClientContext for RoleContext {}

impl ConsumerContext for RoleContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Some(listener), Rebalance::Revoke(partitions)) = (&self.listener, rebalance) {
            listener.revoked(&partition_numbers(partitions), consumer.assignment_lost());
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Some(listener), Rebalance::Assign(partitions)) = (&self.listener, rebalance) {
            listener.assigned(&partition_numbers(partitions));
        }
        if let Rebalance::Assign(_) = rebalance {
            self.assigned.notify_one();
        }
        let gauge = self
            .metrics
            .assigned_partitions
            .with_label_values(&[self.role.name()]);
        match rebalance {
            Rebalance::Assign(partitions) => {
                gauge.set(partitions.count() as i64);
                tracing::info!(
                    role = self.role.name(),
                    partitions = partitions.count(),
                    "partitions assigned"
                );
            }
            Rebalance::Revoke(partitions) => {
                gauge.set(0);
                tracing::info!(
                    role = self.role.name(),
                    partitions = partitions.count(),
                    "partitions revoked"
                );
            }
            Rebalance::Error(error) => {
                tracing::warn!(role = self.role.name(), %error, "rebalance error")
            }
        }
    }
}

/// A consumer of one role, configured for commit-after-effect: offsets are stored only
/// once a record's effect is done, and stored offsets are committed every second and at
/// shutdown.
pub struct RoleConsumer {
    pub role: ConsumerRole,
    inner: Arc<StreamConsumer<RoleContext>>,
    metrics: Arc<Metrics>,
    /// Whether this consumer commits offsets (group members) or not (whole-topic readers).
    commits: bool,
    /// Partitions whose records were put back while paused, and the offset each was
    /// rewound to (the first record put back): later records of the partition, already
    /// fetched before the rewind took effect, must not move it forward past that one.
    put_back_at: parking_lot::Mutex<std::collections::HashMap<(String, i32), i64>>,
}

/// Where a consumer starts when its group has no committed offset.
#[derive(Clone, Copy, Debug)]
pub enum StartAt {
    Earliest,
    Latest,
}

impl RoleConsumer {
    fn create(
        config: &KafkaConfig,
        role: ConsumerRole,
        group_id: &str,
        start_at: StartAt,
        commit: bool,
        metrics: Arc<Metrics>,
        listener: Option<Arc<dyn PartitionListener>>,
    ) -> Result<Self> {
        let context = RoleContext {
            role,
            metrics: metrics.clone(),
            listener,
            assigned: Arc::new(tokio::sync::Notify::new()),
        };
        let fetch_wait_ms = if role.is_urgent() {
            config.urgent_fetch_wait_ms
        } else {
            config.fetch_wait_ms
        };
        let inner: StreamConsumer<RoleContext> = config
            .consumer_config_waiting(fetch_wait_ms)
            .set("group.id", group_id)
            .set("enable.auto.commit", commit.to_string())
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match start_at {
                    StartAt::Earliest => "earliest",
                    StartAt::Latest => "latest",
                },
            )
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", "1000")
            // Range assignment gives one member the same partition numbers of every
            // subscribed topic: what co-partitioning relies on.
            .set("partition.assignment.strategy", "range")
            .create_with_context(context)
            .map_err(|e| Error::kafka(format!("creating {} consumer", role.name()), e))?;
        Ok(Self {
            role,
            inner: Arc::new(inner),
            metrics,
            commits: commit,
            put_back_at: Default::default(),
        })
    }

    /// Join the role's consumer group on `topics`, telling `listener` (if any) about
    /// partition changes.
    pub fn subscribe(
        config: &KafkaConfig,
        role: ConsumerRole,
        group_id: &str,
        topics: &[&str],
        start_at: StartAt,
        metrics: Arc<Metrics>,
        listener: Option<Arc<dyn PartitionListener>>,
    ) -> Result<Self> {
        let consumer = Self::create(config, role, group_id, start_at, true, metrics, listener)?;
        consumer
            .inner
            .subscribe(topics)
            .map_err(|e| Error::kafka(format!("subscribing {}", role.name()), e))?;
        Ok(consumer)
    }

    /// Read every partition of `topic` from `start_at`, outside any group and without
    /// committing: for a compacted topic that each instance needs in full (from the
    /// beginning), or for messages addressed to every instance (from the end).
    /// Metadata and watermarks are fetched off the async threads (they block).
    pub async fn read_whole_topic(
        config: &KafkaConfig,
        role: ConsumerRole,
        topic: &str,
        start_at: StartAt,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let (config, topic) = (config.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            let group_id = config.group_id(role.name());
            let consumer = Self::create(&config, role, &group_id, start_at, false, metrics, None)?;
            let assignment = consumer.whole_topic(&topic, start_at)?;
            consumer
                .metrics
                .assigned_partitions
                .with_label_values(&[role.name()])
                .set(assignment.count() as i64);
            consumer
                .inner
                .assign(&assignment)
                .map_err(|e| Error::kafka(format!("assigning {topic}"), e))?;
            Ok(consumer)
        })
        .await
        .map_err(|e| Error::Config(format!("assignment task failed: {e}")))?
    }

    /// Each partition's end (high watermark) of `topic` now: where a reader from the
    /// beginning has caught up.
    pub async fn end_offsets(&self, topic: &str) -> Result<std::collections::HashMap<i32, i64>> {
        let (consumer, topic) = (self.inner.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .map_err(|e| Error::kafka(format!("metadata of {topic}"), e))?;
            let mut ends = std::collections::HashMap::new();
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, partition.id(), Duration::from_secs(10))
                    .map_err(|e| Error::kafka(format!("watermarks of {topic}"), e))?;
                ends.insert(partition.id(), high);
            }
            Ok(ends)
        })
        .await
        .map_err(|e| Error::Config(format!("watermark task failed: {e}")))?
    }

    /// Every partition of `topic`, starting at `start_at`. Blocks.
    fn whole_topic(&self, topic: &str, start_at: StartAt) -> Result<TopicPartitionList> {
        let metadata = self
            .inner
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| Error::kafka(format!("metadata of {topic}"), e))?;
        let mut assignment = TopicPartitionList::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let offset = match start_at {
                StartAt::Earliest => Offset::Beginning,
                // Resolved now rather than at the first fetch, so nothing produced after
                // this call returns is skipped (a request's reply, say). tansu's high
                // watermark can be short of the end: a few older records may be read
                // again, which readers from the end tolerate.
                StartAt::Latest => self
                    .inner
                    .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
                    .map(|(_, high)| Offset::Offset(high))
                    .unwrap_or(Offset::End),
            };
            assignment
                .add_partition_offset(topic, partition.id(), offset)
                .map_err(|e| Error::kafka("building assignment", e))?;
        }
        Ok(assignment)
    }

    /// A consumer outside any group with nothing assigned yet: a [`Follower`] assigns it
    /// the partitions another consumer's group hands out.
    pub fn follower(
        config: &KafkaConfig,
        role: ConsumerRole,
        topic: &str,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Follower)> {
        let group_id = config.group_id(role.name());
        let consumer = Self::create(
            config,
            role,
            &group_id,
            StartAt::Earliest,
            false,
            metrics,
            None,
        )?;
        let follower = Follower {
            consumer: consumer.inner.clone(),
            topic: topic.to_owned(),
            role,
            metrics: consumer.metrics.clone(),
        };
        Ok((consumer, follower))
    }

    /// Pause or resume fetching from every partition assigned now.
    fn set_paused(&self, paused: bool) {
        if !paused {
            // Resumed partitions are read from where they were rewound to.
            self.put_back_at.lock().clear();
        }
        let Ok(assignment) = self.inner.assignment() else {
            return;
        };
        let done = if paused {
            self.inner.pause(&assignment)
        } else {
            self.inner.resume(&assignment)
        };
        if let Err(error) = done {
            tracing::warn!(role = self.role.name(), %error, paused, "pausing or resuming failed");
        }
    }

    /// Whether `partition` of `topic` is still assigned to this consumer.
    fn owns(&self, topic: &str, partition: i32) -> bool {
        self.inner
            .assignment()
            .is_ok_and(|list| list.find_partition(topic, partition).is_some())
    }

    /// Poll for `period` without handing anything out: `false` when shutdown came first.
    /// A record can only come from a partition assigned since the pause (a rebalance
    /// hands partitions out unpaused): it is put back, its partition paused and rewound
    /// to it, so it is read again once the loop resumes.
    async fn poll_paused(&self, period: Duration, shutdown: &CancellationToken) -> bool {
        let wait = tokio::time::sleep(period);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return false,
                _ = &mut wait => return true,
                message = self.inner.recv() => {
                    if let Ok(message) = message {
                        self.put_back(&message);
                    }
                }
            }
        }
    }

    fn put_back(&self, message: &rdkafka::message::BorrowedMessage<'_>) {
        use rdkafka::Message;
        let (topic, partition) = (message.topic(), message.partition());
        // The seek below is asynchronous: records of the partition fetched before it takes
        // effect still arrive. Rewinding to each of them in turn would leave the position
        // after the first one, which would never be read again (a record lost): rewind to
        // the earliest put back.
        let offset = *self
            .put_back_at
            .lock()
            .entry((topic.to_owned(), partition))
            .and_modify(|at| *at = (*at).min(message.offset()))
            .or_insert(message.offset());
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, partition);
        let rewound = self.inner.pause(&list).and_then(|()| {
            // A zero timeout makes the seek asynchronous: nothing blocks here.
            self.inner
                .seek(topic, partition, Offset::Offset(offset), Duration::ZERO)
        });
        if let Err(error) = rewound {
            tracing::warn!(role = self.role.name(), %error, topic, partition, "putting a record back failed");
        }
    }

    fn commit_stored(&self) {
        if !self.commits {
            return;
        }
        match self.inner.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!(role = self.role.name(), "offsets committed"),
            // Nothing consumed since the last commit.
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(role = self.role.name(), %error, "final commit failed"),
        }
    }
}

/// Why a record could not be handled.
#[derive(Debug)]
pub enum HandleError {
    /// A transient failure (Kafka unavailable, say): the same record is tried again.
    Retry(String),
    /// The role cannot go on.
    Fatal(String),
}

/// What a role does with each record.
pub trait RecordHandler: Send {
    /// Apply the record's effect. Return only once the effect is done: the offset is
    /// stored right after. Undecodable records are the handler's to count and skip.
    fn handle(
        &mut self,
        record: &Record<'_>,
    ) -> impl Future<Output = Result<(), HandleError>> + Send;

    /// How often [`RecordHandler::on_tick`] runs, if at all.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Periodic work between records (time-based publishing, say).
    fn on_tick(&mut self) -> impl Future<Output = Result<(), HandleError>> + Send {
        async { Ok(()) }
    }

    /// Last work before the consumer commits and stops (a final checkpoint, say).
    fn on_shutdown(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Whether a record's effect may still be under way when `handle` returns (a batch
    /// written later, say): then the loop stores no offset on its own and only stores
    /// those [`RecordHandler::take_durable`] reports.
    fn defers_commit(&self) -> bool {
        false
    }

    /// The offsets whose effects became durable since the last call; the loop asks
    /// after every record, tick and at shutdown.
    fn take_durable(&mut self) -> DurableOffsets {
        DurableOffsets::default()
    }

    /// Whether the offsets just reported durable must be committed now, before the next
    /// record (the archive: one uploaded file per partition past the committed offset).
    /// The loop then commits synchronously and tells [`RecordHandler::committed`].
    fn commits_each_effect(&self) -> bool {
        false
    }

    /// Whether the commit asked for by [`RecordHandler::commits_each_effect`] succeeded.
    fn committed(&mut self, _ok: bool) {}
}

/// Store the offsets `handler` reports durable, for the next commit.
fn store_durable<H: RecordHandler>(consumer: &RoleConsumer, handler: &mut H) {
    let durable = handler.take_durable();
    for (topic, partition, offset) in durable.iter() {
        // Fails for a partition revoked meanwhile: its new owner reads it again.
        if let Err(error) = consumer.inner.store_offset(topic, partition, offset) {
            tracing::debug!(role = consumer.role.name(), %error, topic, partition, "storing offset failed");
        }
    }
}

/// Store what `handler` reports durable and, when it asks, commit it now (off the async
/// threads: a synchronous commit blocks), telling it whether that worked.
async fn settle_durable<H: RecordHandler>(consumer: &RoleConsumer, handler: &mut H) {
    store_durable(consumer, handler);
    if !consumer.commits || !handler.commits_each_effect() {
        return;
    }
    let (inner, role) = (consumer.inner.clone(), consumer.role.name());
    let ok = tokio::task::spawn_blocking(move || {
        match inner.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => true,
            // Nothing stored since the last commit (a revoked partition's offset).
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => true,
            Err(error) => {
                tracing::warn!(role, %error, "commit failed; retried after the next record");
                false
            }
        }
    })
    .await
    .unwrap_or(false);
    handler.committed(ok);
}

const RETRY_BACKOFF_START: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Run a role's consumer until shutdown: each record is handled, then its offset stored;
/// transient failures retry the same record with backoff. At shutdown the stored offsets
/// are committed synchronously. A handler with a tick also ticks right after each
/// assignment: what it does for new partitions (a restore, say) need not wait for the
/// next tick, nor hold readiness that long.
pub async fn consume<H: RecordHandler>(
    consumer: RoleConsumer,
    mut handler: H,
    shutdown: CancellationToken,
) -> Result<()> {
    let role = consumer.role.name();
    let consumed = consumer.metrics.consumed.with_label_values(&[role]);
    let mut ticker = handler.tick_interval().map(|every| {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });

    let defers_commit = handler.defers_commit();
    let lag_stop = shutdown.child_token();
    if consumer.commits {
        watch_lag(&consumer, lag_stop.clone());
    }
    let assigned = consumer.inner.context().assigned.clone();
    let outcome = loop {
        let tick = async {
            match ticker.as_mut() {
                Some(ticker) => {
                    tokio::select! {
                        _ = ticker.tick() => {}
                        _ = assigned.notified() => {}
                    }
                }
                None => std::future::pending().await,
            }
        };
        let record = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            _ = tick => {
                if let Err(HandleError::Fatal(reason)) = handler.on_tick().await {
                    break Err(Error::RoleFailed { role, reason });
                }
                settle_durable(&consumer, &mut handler).await;
                continue;
            }
            record = consumer.inner.recv() => record,
        };
        let message = match record {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(role, %error, "consumer error");
                tokio::time::sleep(RETRY_BACKOFF_START).await;
                continue;
            }
        };

        let record = from_message(&message);
        match handle_until_done(&mut handler, &record, &consumer, &shutdown).await {
            Ok(Handled::Yes) => {
                consumed.inc();
                if defers_commit {
                    settle_durable(&consumer, &mut handler).await;
                } else if let Err(error) = consumer.inner.store_offset_from_message(&message) {
                    tracing::warn!(role, %error, "storing offset failed");
                }
            }
            // Its new owner reads it again.
            Ok(Handled::Revoked) => {}
            Ok(Handled::Stopped) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    lag_stop.cancel();
    handler.on_shutdown().await;
    settle_durable(&consumer, &mut handler).await;
    // A synchronous commit blocks: off the async threads.
    let _ = tokio::task::spawn_blocking(move || consumer.commit_stored()).await;
    outcome
}

/// Keep `fleetwatch_consumer_lag` of a group member current until `stop`.
fn watch_lag(consumer: &RoleConsumer, stop: CancellationToken) {
    let metrics = consumer.metrics.clone();
    let lag = super::lag::watch(consumer.inner.clone(), consumer.role, metrics, stop);
    tokio::spawn(lag);
}

/// What became of a record handed to [`handle_until_done`].
enum Handled {
    Yes,
    /// Its partition went to another member while the handler was retrying.
    Revoked,
    /// Shutdown came first.
    Stopped,
}

/// Handle `record`, retrying transient failures with backoff. Between attempts the
/// consumer keeps polling with its partitions paused, so heartbeats and the group's
/// rebalances go on while a role waits for a store or a broker (a role that stopped
/// polling would hold every rebalance of its group).
async fn handle_until_done<H: RecordHandler>(
    handler: &mut H,
    record: &Record<'_>,
    consumer: &RoleConsumer,
    shutdown: &CancellationToken,
) -> Result<Handled> {
    let role = consumer.role.name();
    let mut backoff = RETRY_BACKOFF_START;
    let mut paused = false;
    let outcome = loop {
        match handler.handle(record).await {
            Ok(()) => break Ok(Handled::Yes),
            Err(HandleError::Fatal(reason)) => break Err(Error::RoleFailed { role, reason }),
            Err(HandleError::Retry(reason)) => {
                tracing::warn!(role, %reason, ?backoff, "retrying record");
                if handler.commits_each_effect() {
                    // What it waits for may be the commit of its last effect.
                    settle_durable(consumer, handler).await;
                }
                if !paused {
                    consumer.set_paused(true);
                    paused = true;
                }
                if !consumer.poll_paused(backoff, shutdown).await {
                    break Ok(Handled::Stopped);
                }
                if !consumer.owns(record.topic, record.partition) {
                    break Ok(Handled::Revoked);
                }
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            }
        }
    };
    if paused {
        consumer.set_paused(false);
    }
    outcome
}

/// Decode a record's JSON payload. Undecodable records are logged, counted and skipped:
/// the role's own producers only write valid records, so they can only come from
/// elsewhere, and stopping on them would stall the partition.
pub fn decode_record<T: serde::de::DeserializeOwned>(
    record: &Record<'_>,
    role: &str,
    metrics: &Metrics,
) -> Option<T> {
    skip_undecodable(
        serde_json::from_slice(record.payload),
        record,
        role,
        metrics,
    )
}

/// Decode a record of `iot.telemetry`, in either of its encodings
/// ([`fleetwatch_protocol::RecordEncoding`]); skipped as [`decode_record`] skips.
pub fn decode_event(
    record: &Record<'_>,
    role: &str,
    metrics: &Metrics,
) -> Option<fleetwatch_protocol::DeviceEvent> {
    let event = fleetwatch_protocol::DeviceEvent::from_record(record.payload);
    skip_undecodable(event, record, role, metrics)
}

fn skip_undecodable<T, E: std::fmt::Display>(
    decoded: Result<T, E>,
    record: &Record<'_>,
    role: &str,
    metrics: &Metrics,
) -> Option<T> {
    match decoded {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::warn!(role, %error, partition = record.partition, offset = record.offset, "undecodable record skipped");
            metrics
                .skipped
                .with_label_values(&[role, "undecodable"])
                .inc();
            None
        }
    }
}

/// What the modelling roles (trainer, scorer) take from `iot.telemetry`.
pub enum ModelInput {
    /// A reading, with the device's tenant as ingest stamped it.
    Reading {
        device_id: fleetwatch_protocol::DeviceId,
        tenant: Option<fleetwatch_protocol::TenantId>,
        telemetry: fleetwatch_protocol::TelemetryPayload,
    },
    /// The device was decommissioned: forget it.
    Forget(fleetwatch_protocol::DeviceId),
}

/// Decode a record of `iot.telemetry` for a modelling role: readings and
/// decommissionings; state, status and acknowledgements are not theirs.
pub fn decode_model_input(
    record: &Record<'_>,
    role: &str,
    metrics: &Metrics,
) -> Option<ModelInput> {
    use fleetwatch_protocol::{DeviceEvent, DeviceEventBody};
    let DeviceEvent {
        device_id,
        tenant,
        body,
        ..
    } = decode_event(record, role, metrics)?;
    match body {
        DeviceEventBody::Telemetry(telemetry) => Some(ModelInput::Reading {
            device_id,
            tenant,
            telemetry,
        }),
        DeviceEventBody::Decommissioned => Some(ModelInput::Forget(device_id)),
        _ => None,
    }
}

/// Reads the same partition numbers of its topic, from the beginning, as a group member
/// owns of a co-partitioned one: for state keyed by device (a compacted topic) that the
/// owner of a device's partition needs whole.
#[derive(Clone)]
pub struct Follower {
    consumer: Arc<StreamConsumer<RoleContext>>,
    topic: String,
    role: ConsumerRole,
    metrics: Arc<Metrics>,
}

impl Follower {
    /// Read exactly `partitions`, each from its beginning. Assignment is local to the
    /// client (no broker round trip), so this may run inside a rebalance callback.
    pub fn follow(&self, partitions: &[i32]) {
        let mut assignment = TopicPartitionList::new();
        for &partition in partitions {
            if let Err(error) =
                assignment.add_partition_offset(&self.topic, partition, Offset::Beginning)
            {
                tracing::warn!(%error, partition, "cannot follow partition");
            }
        }
        match self.consumer.assign(&assignment) {
            Ok(()) => self
                .metrics
                .assigned_partitions
                .with_label_values(&[self.role.name()])
                .set(partitions.len() as i64),
            Err(error) => {
                tracing::warn!(role = self.role.name(), %error, "follower assignment failed")
            }
        }
    }
}
