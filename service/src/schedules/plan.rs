//! When a schedule's occurrences are, and what becomes of each: pure (the clock is an
//! argument), so the policies of docs/schedules.md are tested deterministically:
//!
//! - an occurrence is handled once its instant has passed, in local-time order (the
//!   schedule's cursor is the local time of the last one handled);
//! - a local time the zone skips (spring forward) is recorded `nonexistent_local_time`;
//!   one it repeats (fall back) is one occurrence, at its first instant;
//! - noticed more than the grace period after its instant: `missed`; its time to live
//!   (by default until the next occurrence) already over: `expired`; else `fired`, its
//!   command expiring at the end of its time to live.

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use fleetwatch_protocol::{Occurrence, OccurrenceOutcome, ScheduleSpec, ScheduleWhen};

use super::cron::Cron;

/// The local-time format of occurrences and cursors: whole minutes (every cron
/// occurrence); a one-time schedule's instant off the minute keeps its seconds and ms.
pub const LOCAL_FORMAT: &str = "%Y-%m-%dT%H:%M";
const PRECISE_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3f";

pub fn format_local(local: NaiveDateTime) -> String {
    if local.second() == 0 && local.nanosecond() == 0 {
        local.format(LOCAL_FORMAT).to_string()
    } else {
        local.format(PRECISE_FORMAT).to_string()
    }
}

pub fn parse_local(text: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(text, LOCAL_FORMAT)
        .or_else(|_| NaiveDateTime::parse_from_str(text, PRECISE_FORMAT))
        .ok()
}

/// A schedule's `when`, compiled.
#[derive(Clone, Debug)]
pub struct Recurrence {
    rule: Rule,
    zone: Tz,
}

#[derive(Clone, Debug)]
enum Rule {
    At(NaiveDateTime),
    Cron(Box<Cron>),
}

/// One occurrence time: its local time and its instant (`None`: the local time does not
/// exist in the zone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    pub local: NaiveDateTime,
    pub instant_ms: Option<i64>,
}

impl Recurrence {
    pub fn new(when: &ScheduleWhen) -> Result<Self, String> {
        match when {
            ScheduleWhen::At { at_ms } => {
                let at = DateTime::<Utc>::from_timestamp_millis(*at_ms)
                    .ok_or_else(|| format!("at_ms {at_ms} is out of range"))?;
                Ok(Self {
                    rule: Rule::At(at.naive_utc()),
                    zone: Tz::UTC,
                })
            }
            ScheduleWhen::Cron { cron, time_zone } => Ok(Self {
                rule: Rule::Cron(Box::new(Cron::parse(cron)?)),
                zone: time_zone
                    .parse::<Tz>()
                    .map_err(|_| format!("time_zone {time_zone:?} is no IANA zone name"))?,
            }),
        }
    }

    /// The local time of instant `ms` in the schedule's zone.
    pub fn local_of(&self, ms: i64) -> NaiveDateTime {
        let at = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
        at.with_timezone(&self.zone).naive_local()
    }

    /// The instant of `local`: its first when it occurs twice, `None` when it does not
    /// exist.
    fn instant(&self, local: NaiveDateTime) -> Option<i64> {
        match self.zone.from_local_datetime(&local) {
            LocalResult::Single(at) => Some(at.timestamp_millis()),
            LocalResult::Ambiguous(first, _) => Some(first.timestamp_millis()),
            LocalResult::None => None,
        }
    }

    /// When a local time is noticed: its instant, or for one that does not exist, the
    /// instant the zone's clock jumps over it (the next existing minute).
    fn noticed_at(&self, due: Due) -> i64 {
        if let Some(ms) = due.instant_ms {
            return ms;
        }
        (1..=24 * 60)
            .find_map(|m| self.instant(due.local + chrono::Duration::minutes(m)))
            .unwrap_or(i64::MAX)
    }

    /// The first occurrence after local time `cursor`.
    pub fn next_after(&self, cursor: NaiveDateTime) -> Option<Due> {
        let local = match &self.rule {
            Rule::At(at) => (*at > cursor).then_some(*at)?,
            Rule::Cron(cron) => cron.next_after(cursor)?,
        };
        Some(Due {
            local,
            instant_ms: self.instant(local),
        })
    }

    /// The next `count` occurrences after `cursor`.
    pub fn upcoming(&self, cursor: NaiveDateTime, count: usize) -> Vec<Due> {
        let mut out = Vec::with_capacity(count);
        let mut at = cursor;
        while out.len() < count {
            let Some(due) = self.next_after(at) else {
                break;
            };
            at = due.local;
            out.push(due);
        }
        out
    }
}

/// What the planner may do in one step.
#[derive(Clone, Copy, Debug)]
pub struct PlanRules {
    /// Schedule clock.
    pub now_ms: i64,
    /// Most occurrences handled in one step (a long downtime is caught up over steps).
    pub max_occurrences: usize,
    /// Time to live of a one-time schedule's command without `ttl_ms`, ms.
    pub default_ttl_ms: u64,
}

/// The occurrences after `cursor` whose time has come, and what becomes of each.
pub fn due_occurrences(
    spec: &ScheduleSpec,
    recurrence: &Recurrence,
    cursor: NaiveDateTime,
    rules: PlanRules,
) -> Vec<Occurrence> {
    let mut out = Vec::new();
    let mut at = cursor;
    while out.len() < rules.max_occurrences {
        let Some(due) = recurrence.next_after(at) else {
            break;
        };
        if recurrence.noticed_at(due) > rules.now_ms {
            break;
        }
        at = due.local;
        out.push(outcome(spec, recurrence, due, rules));
    }
    out
}

fn outcome(spec: &ScheduleSpec, recurrence: &Recurrence, due: Due, rules: PlanRules) -> Occurrence {
    let mut occurrence = Occurrence {
        local: format_local(due.local),
        due_ms: due.instant_ms,
        outcome: OccurrenceOutcome::NonexistentLocalTime,
        command_id: None,
        expires_ms: None,
    };
    let Some(due_ms) = due.instant_ms else {
        return occurrence;
    };
    let ttl_ms = match spec.ttl_ms {
        Some(ttl) => ttl as i64,
        None => recurrence
            .upcoming(due.local, 1)
            .first()
            .map(|next| recurrence.noticed_at(*next) - due_ms)
            .unwrap_or(rules.default_ttl_ms as i64),
    };
    let expires_ms = due_ms.saturating_add(ttl_ms);
    occurrence.outcome = if rules.now_ms - due_ms > spec.grace_ms as i64 {
        OccurrenceOutcome::Missed
    } else if expires_ms <= rules.now_ms {
        OccurrenceOutcome::Expired
    } else {
        occurrence.command_id = Some(spec.command_id(due_ms));
        occurrence.expires_ms = Some(expires_ms);
        OccurrenceOutcome::Fired
    };
    occurrence
}
