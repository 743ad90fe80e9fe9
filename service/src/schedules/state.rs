//! A schedule's state: the fold of its events on `iot.schedules`. Occurrences apply only
//! past the cursor (the local time of the last one handled), so applying a log again (a
//! reader meeting the owner's own writes, two owners for a moment) gives the same state.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use chrono::NaiveDateTime;
use fleetwatch_protocol::{Occurrence, ScheduleEvent, ScheduleEventBody, ScheduleSpec};
use parking_lot::{Mutex, RwLock};

use super::plan::{format_local, parse_local, Recurrence};

/// Everything known about one schedule.
#[derive(Clone, Debug)]
pub struct ScheduleState {
    pub spec: ScheduleSpec,
    pub recurrence: Recurrence,
    /// The `iot.schedules` partition its log is in (its owner is that partition's).
    pub partition: i32,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Local time of the last occurrence handled (or of the last save).
    pub cursor: NaiveDateTime,
    /// Who deleted it, and when.
    pub deleted: Option<(String, i64)>,
    /// The most recent occurrences, oldest first.
    pub recent: VecDeque<Occurrence>,
    /// Occurrences per outcome since creation.
    pub counts: BTreeMap<&'static str, u64>,
}

impl ScheduleState {
    /// A schedule saved at `at_ms` (`None` when its `when` does not compile).
    pub fn new(spec: ScheduleSpec, partition: i32, at_ms: i64) -> Option<Self> {
        let recurrence = Recurrence::new(&spec.when).ok()?;
        let cursor = recurrence.local_of(at_ms);
        Some(Self {
            spec,
            recurrence,
            partition,
            created_ms: at_ms,
            updated_ms: at_ms,
            cursor,
            deleted: None,
            recent: VecDeque::new(),
            counts: BTreeMap::new(),
        })
    }

    /// The most recent fired occurrence (its command may still be due to a device).
    pub fn last_fired(&self) -> Option<&Occurrence> {
        self.recent.iter().rev().find(|o| o.command_id.is_some())
    }

    fn apply(&mut self, event: &ScheduleEvent, keep: usize) {
        match &event.body {
            ScheduleEventBody::Saved(spec) => {
                if spec.revision <= self.spec.revision {
                    return;
                }
                let Ok(recurrence) = Recurrence::new(&spec.when) else {
                    return;
                };
                // Occurrences after the edit follow the new spec; none handled before
                // is handled again.
                let saved = recurrence.local_of(event.at_ms);
                self.cursor = if spec.when == self.spec.when {
                    self.cursor.max(saved)
                } else {
                    saved
                };
                self.spec = (**spec).clone();
                self.recurrence = recurrence;
                self.updated_ms = event.at_ms;
            }
            ScheduleEventBody::Occurrences { occurrences } => {
                for occurrence in occurrences {
                    let Some(local) = parse_local(&occurrence.local) else {
                        continue;
                    };
                    if local <= self.cursor {
                        continue;
                    }
                    self.cursor = local;
                    *self.counts.entry(occurrence.outcome.as_str()).or_default() += 1;
                    self.recent.push_back(occurrence.clone());
                    while self.recent.len() > keep {
                        self.recent.pop_front();
                    }
                }
            }
            ScheduleEventBody::Deleted { by } => {
                self.deleted.get_or_insert((by.clone(), event.at_ms));
            }
        }
    }

    /// The schedule as the REST API shows it, with its next `upcoming` occurrences.
    pub fn view(&self, upcoming: usize) -> serde_json::Value {
        let next: Vec<serde_json::Value> = if self.deleted.is_some() {
            Vec::new()
        } else {
            (self.recurrence.upcoming(self.cursor, upcoming).into_iter())
                .map(|due| serde_json::json!({"local": format_local(due.local), "due_ms": due.instant_ms}))
                .collect()
        };
        serde_json::json!({
            "schedule_id": self.spec.schedule_id,
            "tenant": self.spec.tenant,
            "device_id": self.spec.device_id,
            "action": self.spec.action,
            "when": self.spec.when,
            "grace_ms": self.spec.grace_ms,
            "ttl_ms": self.spec.ttl_ms,
            "revision": self.spec.revision,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
            "deleted": self.deleted.as_ref().map(|(by, at)| serde_json::json!({"by": by, "at_ms": at})),
            "cursor": format_local(self.cursor),
            "counts": self.counts,
            "next": next,
            "recent": self.recent,
        })
    }
}

/// Every schedule of the deployment, as this instance read them from `iot.schedules`,
/// and the markers it met there (how a new owner knows it read a partition to the end).
pub struct ScheduleIndex {
    schedules: RwLock<HashMap<String, ScheduleState>>,
    markers: Mutex<HashSet<String>>,
    loading: crate::kafka::Loading,
    /// Recent occurrences kept per schedule.
    keep: usize,
}

impl ScheduleIndex {
    pub fn new(keep: usize) -> Self {
        Self {
            schedules: RwLock::default(),
            markers: Mutex::default(),
            loading: Default::default(),
            keep: keep.max(1),
        }
    }

    /// The reader starts: the index is complete once it read up to these offsets.
    pub fn start(&self, end_offsets: HashMap<i32, i64>) {
        self.loading.start(end_offsets);
    }

    pub fn is_loaded(&self) -> bool {
        self.loading.is_loaded()
    }

    /// The reader is at `position` (partition, offset).
    pub fn reached(&self, position: Option<(i32, i64)>) {
        self.loading.reached(position);
    }

    /// Apply an event read from (or just written to) `partition`.
    pub fn apply(&self, event: &ScheduleEvent, partition: i32) {
        let mut schedules = self.schedules.write();
        if let Some(schedule) = schedules.get_mut(&event.schedule_id) {
            schedule.apply(event, self.keep);
            return;
        }
        match &event.body {
            ScheduleEventBody::Saved(spec) => {
                match ScheduleState::new((**spec).clone(), partition, event.at_ms) {
                    Some(state) => {
                        schedules.insert(event.schedule_id.clone(), state);
                    }
                    None => {
                        tracing::warn!(schedule = %event.schedule_id, "schedule with a bad `when` skipped")
                    }
                }
            }
            body => {
                tracing::warn!(schedule = %event.schedule_id, kind = body.kind(), "event of an unknown schedule skipped")
            }
        }
    }

    pub fn get(&self, schedule_id: &str) -> Option<ScheduleState> {
        self.schedules.read().get(schedule_id).cloned()
    }

    /// Read access to every schedule.
    pub fn with_schedules<T>(&self, read: impl FnOnce(&HashMap<String, ScheduleState>) -> T) -> T {
        read(&self.schedules.read())
    }

    pub fn saw_marker(&self, key: &str) {
        self.markers.lock().insert(key.to_owned());
    }

    /// Whether the marker `key` was met (and forget it).
    pub fn take_marker(&self, key: &str) -> bool {
        self.markers.lock().remove(key)
    }
}
