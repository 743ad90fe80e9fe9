//! What every instance running the rules role holds: every rule (the fold of
//! `iot.rules`), every action of the journal (`iot.rule-actions`, which also feeds the
//! per-device limit), and the active alarms (`iot.alarms`), each read whole from the
//! beginning. Applying a record twice (a reader meeting the owner's own writes) changes
//! nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use fleetwatch_protocol::{Alarm, AlarmEvent};
use parking_lot::{Mutex, RwLock};
use serde_json::{json, Value};

use super::limit::DeviceLimit;
use super::rule::{ActionOutcome, ActionRecord, Compiled, RuleEvent, RuleEventBody, RuleSpec};
use super::RulesConfig;
pub use crate::kafka::Loading;

/// Everything known about one rule.
#[derive(Clone, Debug)]
pub struct RuleState {
    pub spec: RuleSpec,
    pub compiled: Compiled,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Who deleted it, and when.
    pub deleted: Option<(String, i64)>,
}

/// A rule's decisions (kept apart from the rule: the journal may be read before the
/// rule's log).
#[derive(Debug, Default)]
struct Decisions {
    /// Per outcome.
    counts: BTreeMap<&'static str, u64>,
    /// The most recent action ids, oldest first.
    recent: VecDeque<String>,
}

impl RuleState {
    fn apply(&mut self, event: &RuleEvent) {
        match &event.body {
            RuleEventBody::Saved(spec) if spec.revision > self.spec.revision => {
                if let Ok(compiled) = Compiled::new(&spec.condition) {
                    self.spec = (**spec).clone();
                    self.compiled = compiled;
                    self.updated_ms = event.at_ms;
                }
            }
            RuleEventBody::Saved(_) => {}
            RuleEventBody::Deleted { by } => {
                self.deleted.get_or_insert((by.clone(), event.at_ms));
            }
        }
    }
}

/// The journal: every action by id, by alarm, and the per-device limit it feeds.
struct Journal {
    by_id: HashMap<String, (ActionRecord, i32)>,
    by_alarm: HashMap<String, Vec<String>>,
    by_rule: HashMap<String, Decisions>,
    /// Performed actions by (record time, id): the recent ones are what an owner takes.
    performed: BTreeSet<(i64, String)>,
    limit: DeviceLimit,
}

/// Every rule and every action of the deployment, as this instance read them.
pub struct RulesIndex {
    rules: RwLock<HashMap<String, RuleState>>,
    journal: RwLock<Journal>,
    markers: Mutex<HashSet<String>>,
    pub rules_loading: Loading,
    pub actions_loading: Loading,
    keep: usize,
}

impl RulesIndex {
    pub fn new(config: &RulesConfig) -> Self {
        Self {
            rules: RwLock::default(),
            journal: RwLock::new(Journal {
                by_id: HashMap::new(),
                by_alarm: HashMap::new(),
                by_rule: HashMap::new(),
                performed: BTreeSet::new(),
                limit: DeviceLimit::new(config.max_actions_per_device, config.limit_window_ms),
            }),
            markers: Mutex::default(),
            rules_loading: Loading::default(),
            actions_loading: Loading::default(),
            keep: config.recent_kept.max(1),
        }
    }

    /// Both logs read up to where they ended at start.
    pub fn is_loaded(&self) -> bool {
        self.rules_loading.is_loaded() && self.actions_loading.is_loaded()
    }

    /// Apply an event of a rule's log.
    pub fn apply_rule(&self, event: &RuleEvent) {
        let mut rules = self.rules.write();
        if let Some(rule) = rules.get_mut(&event.rule_id) {
            rule.apply(event);
            return;
        }
        let RuleEventBody::Saved(spec) = &event.body else {
            tracing::warn!(rule = %event.rule_id, "event of an unknown rule skipped");
            return;
        };
        let Ok(compiled) = Compiled::new(&spec.condition) else {
            tracing::warn!(rule = %event.rule_id, "rule with a bad condition skipped");
            return;
        };
        rules.insert(
            event.rule_id.clone(),
            RuleState {
                spec: (**spec).clone(),
                compiled,
                created_ms: event.at_ms,
                updated_ms: event.at_ms,
                deleted: None,
            },
        );
    }

    /// Apply an action record read from (or just written to) `partition`.
    pub fn apply_action(&self, record: &ActionRecord, partition: i32) {
        let mut journal = self.journal.write();
        if journal.by_id.contains_key(&record.action_id) {
            return;
        }
        if record.outcome == ActionOutcome::Performed {
            (journal.limit).note(&record.device_id, &record.action_id, record.at_ms);
            (journal.performed).insert((record.at_ms, record.action_id.clone()));
        }
        (journal.by_alarm.entry(record.alarm_id.clone()).or_default())
            .push(record.action_id.clone());
        let decisions = journal.by_rule.entry(record.rule_id.clone()).or_default();
        *decisions.counts.entry(record.outcome.as_str()).or_default() += 1;
        decisions.recent.push_back(record.action_id.clone());
        while decisions.recent.len() > self.keep {
            decisions.recent.pop_front();
        }
        (journal.by_id).insert(record.action_id.clone(), (record.clone(), partition));
    }

    /// Whether a decision was recorded for this action id.
    pub fn decided(&self, action_id: &str) -> bool {
        self.journal.read().by_id.contains_key(action_id)
    }

    /// Actions taken on `device` within the limit's window, and whether one more fits.
    pub fn limit_admits(
        &self,
        device: &fleetwatch_protocol::DeviceId,
        now_ms: i64,
    ) -> (usize, bool) {
        let journal = self.journal.read();
        (
            journal.limit.count(device, now_ms),
            journal.limit.admits(device, now_ms),
        )
    }

    /// Forget limit entries older than the window, and performed actions recorded
    /// before `taken_since_ms` (no owner takes them again).
    pub fn prune(&self, now_ms: i64, taken_since_ms: i64) {
        let mut journal = self.journal.write();
        journal.limit.prune(now_ms);
        let recent = (journal.performed).split_off(&(taken_since_ms, String::new()));
        journal.performed = recent;
    }

    /// Performed actions recorded at or after `since_ms` in `partitions`.
    pub fn performed_since(&self, partitions: &HashSet<i32>, since_ms: i64) -> Vec<ActionRecord> {
        let journal = self.journal.read();
        (journal.performed.range((since_ms, String::new())..))
            .filter_map(|(_, id)| journal.by_id.get(id))
            .filter(|(_, p)| partitions.contains(p))
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// The actions an alarm caused, oldest first.
    pub fn actions_of(&self, alarm_id: &str) -> Vec<ActionRecord> {
        let journal = self.journal.read();
        let ids = journal
            .by_alarm
            .get(alarm_id)
            .map_or(&[][..], Vec::as_slice);
        ids.iter()
            .filter_map(|id| journal.by_id.get(id).map(|(r, _)| r.clone()))
            .collect()
    }

    pub fn get(&self, rule_id: &str) -> Option<RuleState> {
        self.rules.read().get(rule_id).cloned()
    }

    /// Read access to every rule.
    pub fn with_rules<T>(&self, read: impl FnOnce(&HashMap<String, RuleState>) -> T) -> T {
        read(&self.rules.read())
    }

    /// The rule as the REST API shows it, with its recent actions.
    pub fn view(&self, rule: &RuleState) -> Value {
        let journal = self.journal.read();
        let decisions = journal.by_rule.get(&rule.spec.rule_id);
        let recent: Vec<&ActionRecord> = (decisions.iter().flat_map(|d| d.recent.iter()))
            .filter_map(|id| journal.by_id.get(id).map(|(r, _)| r))
            .collect();
        let counts = decisions.map(|d| d.counts.clone()).unwrap_or_default();
        let spec = &rule.spec;
        json!({
            "rule_id": spec.rule_id,
            "tenant": spec.tenant,
            "name": spec.name,
            "condition": spec.condition,
            "action": spec.action,
            "dry_run": spec.dry_run,
            "revision": spec.revision,
            "created_ms": rule.created_ms,
            "updated_ms": rule.updated_ms,
            "deleted": rule.deleted.as_ref().map(|(by, at)| json!({"by": by, "at_ms": at})),
            "counts": counts,
            "recent": recent,
        })
    }

    pub fn saw_marker(&self, key: &str) {
        self.markers.lock().insert(key.to_owned());
    }

    /// Whether the marker `key` was met (and forget it).
    pub fn take_marker(&self, key: &str) -> bool {
        self.markers.lock().remove(key)
    }
}

/// The active alarms of the deployment, with the `iot.alarms` partition each is in
/// (its device's: the topic is co-partitioned).
#[derive(Default)]
pub struct ActiveAlarms {
    alarms: RwLock<HashMap<String, (Alarm, i32)>>,
    pub loading: Loading,
}

impl ActiveAlarms {
    /// Apply an alarm event read from `partition`: an older change than the one held is
    /// ignored; a cleared alarm is forgotten.
    pub fn apply(&self, event: &AlarmEvent, partition: i32) {
        let alarm = &event.alarm;
        let mut alarms = self.alarms.write();
        if let Some((held, _)) = alarms.get(&alarm.alarm_id) {
            if held.changes > alarm.changes {
                return;
            }
        }
        if alarm.active {
            alarms.insert(alarm.alarm_id.clone(), (alarm.clone(), partition));
        } else {
            alarms.remove(&alarm.alarm_id);
        }
    }

    /// The active alarms in `partitions`.
    pub fn in_partitions(&self, partitions: &HashSet<i32>) -> Vec<Alarm> {
        (self.alarms.read().values())
            .filter(|(_, p)| partitions.contains(p))
            .map(|(a, _)| a.clone())
            .collect()
    }

    pub fn get(&self, alarm_id: &str) -> Option<Alarm> {
        self.alarms.read().get(alarm_id).map(|(a, _)| a.clone())
    }
}
