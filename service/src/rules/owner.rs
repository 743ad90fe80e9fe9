//! Who decides and acts, and how. Actions are journaled on `iot.rule-actions`, keyed by
//! device and co-partitioned with `iot.alarms`: the role's consumer group hands each
//! partition to one instance, which decides for the alarms of that partition's devices,
//! so one instance at a time counts a device's actions against its limit. Every
//! instance reads the journal whole; a new owner writes a marker to each partition it
//! is given and decides only once its reader met the marker (the jobs role's
//! [`Ownership`]), so it never decides on a journal older than what the previous owner
//! recorded.
//!
//! Each tick the owner looks at the active alarms of its devices; for each live rule of
//! the alarm's tenant whose condition holds and which has not decided on that alarm
//! yet, it records one decision (confirmed by Kafka) before acting: `dry_run`,
//! `limited`, `other_tenant` or `performed`. Then it takes each performed action it has
//! not taken yet, in this process, within `rules.command_ttl_ms` of its record: a crash
//! between record and act, or a new owner, takes it again with the same id (the twin
//! keeps one command per id, the jobs' fold one job per id; a notification carries the
//! id as its event id): transport, not a second action.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fleetwatch_protocol::{Alarm, AlarmEvent};

use super::perform::Performer;
use super::rule::{ActionOutcome, ActionRecord, RuleEvent};
use super::state::{ActiveAlarms, RuleState, RulesIndex};
use super::RulesConfig;
use crate::jobs::fleet::FleetView;
use crate::jobs::owner::Ownership;
use crate::kafka::{decode_record, HandleError, Producer, Record, RecordHandler};
use crate::metrics::Metrics;
use crate::tenancy::Directory;

/// The rules group member: decides and acts for the devices of its partitions.
pub struct RulesOwner {
    pub ownership: Arc<Ownership>,
    pub index: Arc<RulesIndex>,
    pub alarms: Arc<ActiveAlarms>,
    pub fleet: Arc<FleetView>,
    pub directory: Arc<Directory>,
    pub producer: Producer,
    /// `iot.rule-actions`.
    pub actions_topic: String,
    pub performer: Performer,
    pub config: RulesConfig,
    pub metrics: Arc<Metrics>,
    /// Action ids this process took.
    pub taken: HashSet<String>,
}

impl RecordHandler for RulesOwner {
    /// The group's records are the journal, which the index reads; membership is what
    /// this consumer is for.
    async fn handle(&mut self, _record: &Record<'_>) -> Result<(), HandleError> {
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(self.config.tick_ms.max(10)))
    }

    async fn on_tick(&mut self) -> Result<(), HandleError> {
        if !self.ready() {
            return Ok(());
        }
        (self.ownership).newly_restored(|marker| self.index.take_marker(marker));
        let restored = self.ownership.restored();
        let now_ms = fleetwatch_protocol::now_ms();
        let taken_since = now_ms.saturating_sub(self.config.command_ttl_ms as i64);
        self.index.prune(now_ms, taken_since);
        let alarms = self.alarms.in_partitions(&restored);
        self.metrics.rules_alarms_watched.set(alarms.len() as i64);
        let rules: Vec<RuleState> = self.index.with_rules(|all| {
            (all.values())
                .filter(|r| r.deleted.is_none())
                .cloned()
                .collect()
        });
        for alarm in &alarms {
            for rule in &rules {
                if let Err(error) = self.decide(rule, alarm, now_ms).await {
                    tracing::warn!(rule = %rule.spec.rule_id, alarm = %alarm.alarm_id, %error, "rule decision not recorded; retried next tick");
                }
            }
        }
        self.act(&restored, now_ms).await;
        Ok(())
    }
}

impl RulesOwner {
    /// Every log read, and the twins (selectors) too.
    fn ready(&self) -> bool {
        self.index.is_loaded() && self.alarms.loading.is_loaded() && self.fleet.is_loaded()
    }

    /// Record `rule`'s decision on `alarm` if its condition holds and it has none yet.
    async fn decide(
        &self,
        rule: &RuleState,
        alarm: &Alarm,
        now_ms: i64,
    ) -> crate::error::Result<()> {
        let spec = &rule.spec;
        // A rule acts only within its tenant: another tenant's alarm is not its to see.
        if spec.tenant.is_some() && alarm.tenant != spec.tenant {
            return Ok(());
        }
        let action_id = spec.action_id(&alarm.alarm_id);
        if self.index.decided(&action_id) {
            return Ok(());
        }
        let holds = if rule.compiled.needs_twin() {
            (self.fleet).with(&alarm.device_id, |view| {
                rule.compiled
                    .holds(alarm, now_ms, view.map(|v| &v.reported))
            })
        } else {
            rule.compiled.holds(alarm, now_ms, None)
        };
        if !holds {
            return Ok(());
        }
        let (outcome, detail) = self.outcome(rule, alarm, now_ms);
        let record = ActionRecord {
            action_id,
            rule_id: spec.rule_id.clone(),
            rule_revision: spec.revision,
            tenant: alarm.tenant.clone(),
            alarm_id: alarm.alarm_id.clone(),
            severity: alarm.severity,
            alarm_created_ms: alarm.created_ms,
            device_id: alarm.device_id.clone(),
            action: spec.action.clone(),
            outcome,
            detail,
            at_ms: now_ms,
        };
        let payload = serde_json::to_vec(&record).expect("action records serialize");
        let (partition, _) = (self.producer)
            .enqueue(&self.actions_topic, record.device_id.as_str(), &payload)
            .await
            .confirmed_at()
            .await?;
        self.index.apply_action(&record, partition);
        (self.metrics.rule_actions)
            .with_label_values(&[outcome.as_str()])
            .inc();
        tracing::debug!(rule = %spec.rule_id, alarm = %alarm.alarm_id, outcome = outcome.as_str(), "rule decided");
        Ok(())
    }

    /// What a rule whose condition holds does about `alarm`, and why.
    fn outcome(
        &self,
        rule: &RuleState,
        alarm: &Alarm,
        now_ms: i64,
    ) -> (ActionOutcome, Option<String>) {
        let (taken, admits) = self.index.limit_admits(&alarm.device_id, now_ms);
        let limit = format!(
            "{taken} actions on this device within the last {} ms; the limit is {} (rules.max_actions_per_device)",
            self.config.limit_window_ms, self.config.max_actions_per_device
        );
        if rule.spec.dry_run {
            let would = if admits {
                "would be performed"
            } else {
                "would be limited"
            };
            return (ActionOutcome::DryRun, Some(format!("{would}: {limit}")));
        }
        if !admits {
            return (ActionOutcome::Limited, Some(limit));
        }
        let tenant = self.directory.tenant_of(&alarm.device_id);
        if rule.spec.tenant.is_some() && tenant != rule.spec.tenant {
            let detail = "the device is no longer in the rule's tenant".to_owned();
            return (ActionOutcome::OtherTenant, Some(detail));
        }
        (ActionOutcome::Performed, None)
    }

    /// Take each performed action of `partitions` recorded within the time to live that
    /// this process has not taken yet.
    async fn act(&mut self, partitions: &HashSet<i32>, now_ms: i64) {
        let since = now_ms.saturating_sub(self.config.command_ttl_ms as i64);
        let due = self.index.performed_since(partitions, since);
        let live: HashSet<&str> = due.iter().map(|r| r.action_id.as_str()).collect();
        self.taken.retain(|id| live.contains(id.as_str()));
        for record in &due {
            if self.taken.contains(&record.action_id) {
                continue;
            }
            match self.performer.perform(record, now_ms).await {
                Ok(()) => {
                    self.taken.insert(record.action_id.clone());
                }
                Err(error) => {
                    tracing::warn!(action = %record.action_id, %error, "rule action not taken; retried next tick")
                }
            }
        }
    }
}

/// Reads `iot.rules` whole into the [`RulesIndex`].
pub struct RuleLogHandler {
    pub index: Arc<RulesIndex>,
    pub metrics: Arc<Metrics>,
}

impl RecordHandler for RuleLogHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        if let Some(event) = decode_record::<RuleEvent>(record, "rules", &self.metrics) {
            self.index.apply_rule(&event);
        }
        (self.index.rules_loading).reached(Some((record.partition, record.offset)));
        Ok(())
    }
}

/// Reads `iot.rule-actions` whole into the [`RulesIndex`] (and meets this instance's
/// ownership markers there).
pub struct ActionLogHandler {
    pub index: Arc<RulesIndex>,
    /// This instance's markers (others' are skipped).
    pub marker_prefix: String,
    pub metrics: Arc<Metrics>,
}

impl RecordHandler for ActionLogHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        let position = Some((record.partition, record.offset));
        if record.payload.is_empty() {
            let key = record.key_str();
            if key.starts_with(&self.marker_prefix) {
                self.index.saw_marker(&key);
            }
        } else if let Some(action) = decode_record::<ActionRecord>(record, "rules", &self.metrics) {
            self.index.apply_action(&action, record.partition);
        }
        self.index.actions_loading.reached(position);
        Ok(())
    }
}

/// Reads `iot.alarms` whole into the [`ActiveAlarms`].
pub struct RuleAlarmsHandler {
    pub alarms: Arc<ActiveAlarms>,
    pub metrics: Arc<Metrics>,
}

impl RecordHandler for RuleAlarmsHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        if let Some(event) = decode_record::<AlarmEvent>(record, "rules", &self.metrics) {
            self.alarms.apply(&event, record.partition);
        }
        (self.alarms.loading).reached(Some((record.partition, record.offset)));
        Ok(())
    }
}
