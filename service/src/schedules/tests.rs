//! The schedules' policies, deterministically: daylight-saving transitions in a real
//! zone, grace and time to live, the fold's idempotence, and the owner recording before
//! sending, once per occurrence, a new owner's resend being the same command.

use std::sync::Arc;

use chrono::{NaiveDateTime, TimeZone, Utc};
use fleetwatch_protocol::{
    DeviceId, DeviceRequest, DeviceRequestBody, OccurrenceOutcome, ScheduleAction, ScheduleEvent,
    ScheduleEventBody, ScheduleSpec, ScheduleWhen,
};

use super::owner::SchedulesOwner;
use super::plan::{due_occurrences, parse_local, PlanRules, Recurrence};
use super::state::ScheduleIndex;
use super::{ScheduleClock, SchedulesConfig};
use crate::jobs::owner::Ownership;
use crate::kafka::memory::MemoryLog;
use crate::kafka::{PartitionListener, Producer, RecordHandler};
use crate::metrics::Metrics;
use crate::tenancy::Directory;

const MINUTE: i64 = 60_000;

fn spec(when: ScheduleWhen, grace_ms: u64) -> ScheduleSpec {
    ScheduleSpec {
        schedule_id: "s1".into(),
        tenant: None,
        device_id: DeviceId::parse("heater-1").unwrap(),
        action: ScheduleAction::Command {
            name: "heat".into(),
            args: serde_json::json!({"target": 21}),
        },
        when,
        grace_ms,
        ttl_ms: None,
        revision: 0,
    }
}

fn cron(expression: &str, zone: &str) -> ScheduleWhen {
    ScheduleWhen::Cron {
        cron: expression.into(),
        time_zone: zone.into(),
    }
}

fn utc_ms(text: &str) -> i64 {
    let at = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M").unwrap();
    Utc.from_utc_datetime(&at).timestamp_millis()
}

fn rules(now: &str) -> PlanRules {
    PlanRules {
        now_ms: utc_ms(now),
        max_occurrences: 1000,
        default_ttl_ms: 24 * 60 * MINUTE as u64,
    }
}

#[test]
fn spring_forward_skips_the_missing_local_time_and_records_it() {
    // Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
    let spec = spec(
        cron("30 2 * * *", "Europe/Berlin"),
        10 * 24 * 60 * MINUTE as u64,
    );
    let recurrence = Recurrence::new(&spec.when).unwrap();
    let cursor = parse_local("2026-03-28T03:00").unwrap();
    // Before the jump, nothing is due yet.
    assert!(due_occurrences(&spec, &recurrence, cursor, rules("2026-03-29T00:59")).is_empty());
    let handled = due_occurrences(&spec, &recurrence, cursor, rules("2026-03-30T00:31"));
    let seen: Vec<(&str, Option<i64>, OccurrenceOutcome)> = handled
        .iter()
        .map(|o| (o.local.as_str(), o.due_ms, o.outcome))
        .collect();
    assert_eq!(
        seen,
        [
            (
                "2026-03-29T02:30",
                None,
                OccurrenceOutcome::NonexistentLocalTime
            ),
            // 02:30 CEST is 00:30 UTC.
            (
                "2026-03-30T02:30",
                Some(utc_ms("2026-03-30T00:30")),
                OccurrenceOutcome::Fired
            ),
        ]
    );
    assert_eq!(handled[0].command_id, None);
    assert_eq!(
        handled[1].command_id.as_deref(),
        Some(&*spec.command_id(utc_ms("2026-03-30T00:30")))
    );
}

#[test]
fn fall_back_fires_a_repeated_local_time_once_at_its_first_instant() {
    // Europe/Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET (01:00 UTC), so 02:30
    // happens at 00:30 UTC and again at 01:30 UTC.
    let spec = spec(cron("30 2 * * *", "Europe/Berlin"), 60 * MINUTE as u64);
    let recurrence = Recurrence::new(&spec.when).unwrap();
    let cursor = parse_local("2026-10-24T03:00").unwrap();
    let first = due_occurrences(&spec, &recurrence, cursor, rules("2026-10-25T00:30"));
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].local, "2026-10-25T02:30");
    assert_eq!(first[0].due_ms, Some(utc_ms("2026-10-25T00:30")));
    assert_eq!(first[0].outcome, OccurrenceOutcome::Fired);
    // The next occurrence is a day and an hour later: its time to live runs until then.
    assert_eq!(first[0].expires_ms, Some(utc_ms("2026-10-26T01:30")));
    // After the second 02:30 (01:30 UTC), from the cursor the first one left, nothing.
    let cursor = parse_local(&first[0].local).unwrap();
    assert!(due_occurrences(&spec, &recurrence, cursor, rules("2026-10-25T01:45")).is_empty());
    // Every minute across the repeated hour: each local minute once.
    let every = spec_every_minute("Europe/Berlin");
    let recurrence = Recurrence::new(&every.when).unwrap();
    let cursor = parse_local("2026-10-25T01:59").unwrap();
    let handled = due_occurrences(&every, &recurrence, cursor, rules("2026-10-25T01:05"));
    let locals: Vec<&str> = handled.iter().map(|o| o.local.as_str()).collect();
    // 02:00..02:59 CEST (00:00–00:59 UTC), then 03:00 CET is 02:00 UTC: not yet.
    assert_eq!(locals.len(), 60, "{locals:?}");
    assert_eq!(locals.first(), Some(&"2026-10-25T02:00"));
    assert_eq!(locals.last(), Some(&"2026-10-25T02:59"));
    // The last one's time to live runs to 03:00 CET, an hour and a minute later.
    assert_eq!(handled[59].expires_ms, Some(utc_ms("2026-10-25T02:00")));
}

fn spec_every_minute(zone: &str) -> ScheduleSpec {
    spec(cron("* * * * *", zone), u64::MAX / 4)
}

#[test]
fn downtime_beyond_grace_is_missed_earlier_ones_expired_the_last_fired() {
    let spec = spec(cron("* * * * *", "America/New_York"), 2 * MINUTE as u64);
    let recurrence = Recurrence::new(&spec.when).unwrap();
    let cursor = recurrence.local_of(utc_ms("2026-11-26T06:00"));
    let handled = due_occurrences(&spec, &recurrence, cursor, rules("2026-11-26T06:10"));
    let outcomes: Vec<OccurrenceOutcome> = handled.iter().map(|o| o.outcome).collect();
    use OccurrenceOutcome::*;
    assert_eq!(
        outcomes,
        [Missed, Missed, Missed, Missed, Missed, Missed, Missed, Expired, Expired, Fired]
    );
    // Fired on time, living until the next occurrence.
    assert_eq!(handled[9].due_ms, Some(utc_ms("2026-11-26T06:10")));
    assert_eq!(handled[9].expires_ms, Some(utc_ms("2026-11-26T06:11")));
    // An explicit time to live wins over "until the next occurrence".
    let mut long = spec.clone();
    long.ttl_ms = Some(5 * MINUTE as u64);
    let handled = due_occurrences(&long, &recurrence, cursor, rules("2026-11-26T06:03"));
    assert!(handled.iter().all(|o| o.outcome == Fired), "{handled:?}");
    assert_eq!(handled[0].expires_ms, Some(utc_ms("2026-11-26T06:06")));
}

#[test]
fn a_one_time_schedule_fires_once_and_catch_up_is_bounded_per_step() {
    let at = utc_ms("2026-11-26T07:00");
    let spec = spec(ScheduleWhen::At { at_ms: at }, MINUTE as u64);
    let recurrence = Recurrence::new(&spec.when).unwrap();
    let cursor = recurrence.local_of(at - MINUTE);
    let handled = due_occurrences(&spec, &recurrence, cursor, rules("2026-11-26T07:00"));
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].expires_ms, Some(at + 24 * 60 * MINUTE));
    assert_eq!(handled[0].local, "2026-11-26T07:00");
    let after = parse_local(&handled[0].local).unwrap();
    // Off the minute, the local time keeps its seconds and ms (it orders occurrences).
    let mut odd = spec.clone();
    odd.when = ScheduleWhen::At { at_ms: at + 1_234 };
    let odd_recurrence = Recurrence::new(&odd.when).unwrap();
    let handled = due_occurrences(&odd, &odd_recurrence, after, rules("2026-11-26T07:01"));
    assert_eq!(handled[0].local, "2026-11-26T07:00:01.234");
    assert_eq!(
        parse_local(&handled[0].local),
        Some(odd_recurrence.local_of(at + 1_234))
    );
    assert!(due_occurrences(&spec, &recurrence, after, rules("2026-11-27T07:00")).is_empty());
    let every = spec_every_minute("UTC");
    let recurrence = Recurrence::new(&every.when).unwrap();
    let mut limited = rules("2026-11-27T07:00");
    limited.max_occurrences = 7;
    assert_eq!(
        due_occurrences(&every, &recurrence, cursor, limited).len(),
        7
    );
    assert!(Recurrence::new(&cron("* * * * *", "Mars/Olympus")).is_err());
}

fn event(body: ScheduleEventBody, at_ms: i64) -> ScheduleEvent {
    ScheduleEvent {
        schedule_id: "s1".into(),
        at_ms,
        body,
    }
}

#[test]
fn applying_a_log_again_gives_the_same_state() {
    let index = ScheduleIndex::new(10);
    let created = utc_ms("2026-11-26T06:00");
    let spec = spec_every_minute("UTC");
    index.apply(
        &event(ScheduleEventBody::Saved(Box::new(spec.clone())), created),
        0,
    );
    let state = index.get("s1").unwrap();
    let handled = due_occurrences(
        &spec,
        &state.recurrence,
        state.cursor,
        rules("2026-11-26T06:03"),
    );
    let occurrences = event(
        ScheduleEventBody::Occurrences {
            occurrences: handled,
        },
        created,
    );
    index.apply(&occurrences, 0);
    index.apply(&occurrences, 0);
    let state = index.get("s1").unwrap();
    assert_eq!(state.counts.get("fired"), Some(&1));
    assert_eq!(state.counts.get("expired"), Some(&2));
    assert_eq!(state.recent.len(), 3);
    assert_eq!(state.view(2)["next"][0]["local"], "2026-11-26T06:04");
    // An older revision read late changes nothing; an edit moves the cursor to its time.
    let mut edited = spec.clone();
    edited.revision = 1;
    edited.when = cron("0 * * * *", "UTC");
    index.apply(
        &event(
            ScheduleEventBody::Saved(Box::new(edited)),
            utc_ms("2026-11-26T06:30"),
        ),
        0,
    );
    index.apply(&event(ScheduleEventBody::Saved(Box::new(spec)), created), 0);
    let state = index.get("s1").unwrap();
    assert_eq!(state.spec.revision, 1);
    assert_eq!(state.view(1)["next"][0]["local"], "2026-11-26T07:00");
}

struct Harness {
    log: MemoryLog,
    index: Arc<ScheduleIndex>,
    metrics: Arc<Metrics>,
}

impl Harness {
    fn owner(&self) -> SchedulesOwner {
        let producer = Producer::in_memory(&self.log, self.metrics.clone());
        let ownership = Arc::new(Ownership::new(producer.clone(), "sch".into(), "m/".into()));
        ownership.assigned(&[0]);
        // The reader meets the new owner's marker.
        for record in self.log.records("sch") {
            if record.payload.is_empty() {
                self.index.saw_marker(&record.key);
            }
        }
        SchedulesOwner {
            ownership,
            index: self.index.clone(),
            producer,
            schedules_topic: "sch".into(),
            commands_topic: "cmd".into(),
            jobs_topic: "jobs".into(),
            jobs_config: crate::jobs::JobsConfig::default(),
            config: SchedulesConfig::default(),
            clock: ScheduleClock::new(&SchedulesConfig::default()),
            metrics: self.metrics.clone(),
            directory: Arc::new(Directory::loaded(Vec::new(), self.metrics.clone())),
            sent: Default::default(),
        }
    }

    fn sent(&self) -> Vec<String> {
        self.log
            .json::<DeviceRequest>("cmd")
            .into_iter()
            .map(|r| match r.body {
                DeviceRequestBody::SendCommand(c) => {
                    assert_eq!(c.idempotency_key.as_deref(), Some(c.command_id.as_str()));
                    c.command_id
                }
                other => panic!("unexpected request {other:?}"),
            })
            .collect()
    }
}

#[tokio::test]
async fn the_owner_records_before_sending_once_and_a_new_owner_resends_the_same_command() {
    let metrics = Arc::new(Metrics::new());
    let harness = Harness {
        log: MemoryLog::default(),
        index: Arc::new(ScheduleIndex::new(10)),
        metrics,
    };
    harness.index.start(Default::default());
    let now = fleetwatch_protocol::now_ms();
    let spec = spec(ScheduleWhen::At { at_ms: now - 1000 }, MINUTE as u64);
    harness.index.apply(
        &event(ScheduleEventBody::Saved(Box::new(spec.clone())), now - 5000),
        0,
    );
    let mut first = harness.owner();
    first.on_tick().await.unwrap();
    first.on_tick().await.unwrap();
    let recorded: Vec<ScheduleEvent> = harness.log.json("sch");
    assert_eq!(
        recorded.len(),
        1,
        "one occurrence recorded once: {recorded:?}"
    );
    let expected = spec.command_id(now - 1000);
    assert_eq!(harness.sent(), std::slice::from_ref(&expected));
    // Another owner takes over (a restart): it records nothing new and sends the
    // same command id again, which the twin keeps as one command.
    let mut second = harness.owner();
    second.on_tick().await.unwrap();
    second.on_tick().await.unwrap();
    assert_eq!(harness.log.json::<ScheduleEvent>("sch").len(), 1);
    assert_eq!(harness.sent(), [expected.clone(), expected]);
}

#[tokio::test]
async fn a_job_action_creates_one_job_per_occurrence_whatever_the_owners() {
    let metrics = Arc::new(Metrics::new());
    let harness = Harness {
        log: MemoryLog::default(),
        index: Arc::new(ScheduleIndex::new(10)),
        metrics,
    };
    harness.index.start(Default::default());
    let now = fleetwatch_protocol::now_ms();
    let mut spec = spec(ScheduleWhen::At { at_ms: now - 1000 }, MINUTE as u64);
    spec.action = ScheduleAction::Job {
        command: fleetwatch_protocol::JobCommand::Command {
            name: "reboot".into(),
            args: serde_json::Value::Null,
        },
    };
    harness.index.apply(
        &event(ScheduleEventBody::Saved(Box::new(spec.clone())), now - 5000),
        0,
    );
    // Two owners in turn (a restart, or a rebalance): the same job id both times.
    for _ in 0..2 {
        let mut owner = harness.owner();
        owner.on_tick().await.unwrap();
        owner.on_tick().await.unwrap();
    }
    assert!(harness.log.records("cmd").is_empty(), "no command is sent");
    let created: Vec<fleetwatch_protocol::JobEvent> = harness.log.json("jobs");
    let expected = spec.command_id(now - 1000);
    assert_eq!(created.len(), 2);
    assert!(created.iter().all(|e| e.job_id == expected), "{created:?}");
    // The jobs' fold keeps one job of that id.
    let jobs = crate::jobs::state::JobIndex::default();
    for event in &created {
        jobs.apply(event, 0);
    }
    let job = jobs.get(&expected).expect("the job");
    assert_eq!(job.spec.devices, [spec.device_id.clone()]);
    assert_eq!(jobs.with_jobs(|all| all.len()), 1);
}

fn caller(tenant: Option<&str>) -> crate::auth::Caller {
    crate::auth::Caller {
        subject: tenant.unwrap_or("operator").into(),
        tenant: tenant.map(|t| fleetwatch_protocol::TenantId::parse(t).unwrap()),
        can_read: true,
        can_command: true,
        expires_at: None,
    }
}

/// Directory entries for `devices` (device, tenant).
async fn directory_with(devices: &[(&str, &str)], metrics: &Arc<Metrics>) -> Arc<Directory> {
    use crate::tenancy::DirectoryHandler;
    let directory = Arc::new(Directory::new(Vec::new(), metrics.clone()));
    let mut handler = DirectoryHandler::new(directory.clone(), Default::default());
    for (device, tenant) in devices {
        let entry = fleetwatch_protocol::DirectoryEntry {
            device_id: DeviceId::parse(device).unwrap(),
            tenant: Some(fleetwatch_protocol::TenantId::parse(tenant).unwrap()),
        };
        let payload = serde_json::to_vec(&entry).unwrap();
        let record = crate::kafka::Record::new("dir", device, &payload);
        handler.handle(&record).await.unwrap();
    }
    directory
}

/// A schedules API over an in-memory log and a directory of `devices`.
async fn api_of(devices: &[(&str, &str)]) -> (super::SchedulesApi, MemoryLog) {
    use super::SchedulesApi;
    let metrics = Arc::new(Metrics::new());
    let log = MemoryLog::default();
    let directory = directory_with(devices, &metrics).await;
    let api = SchedulesApi {
        index: Arc::new(ScheduleIndex::new(10)),
        directory,
        producer: Producer::in_memory(&log, metrics.clone()),
        topic: "sch".into(),
        config: SchedulesConfig::default(),
        clock: ScheduleClock::new(&SchedulesConfig::default()),
    };
    api.index.start(Default::default());
    (api, log)
}

#[tokio::test]
async fn the_api_stays_within_the_callers_tenant_and_refuses_bad_schedules() {
    use super::{NewSchedule, SchedulesError};
    let (api, log) = api_of(&[("a-1", "acme"), ("g-1", "globex")]).await;
    let new = |device: &str, expression: &str, zone: &str| -> NewSchedule {
        serde_json::from_value(serde_json::json!({
            "device_id": device,
            "action": {"kind": "command", "name": "heat"},
            "when": {"kind": "cron", "cron": expression, "time_zone": zone},
        }))
        .unwrap()
    };
    let (acme, globex) = (caller(Some("acme")), caller(Some("globex")));
    let made = api
        .create(&acme, new("a-1", "0 6 * * *", "Europe/Berlin"))
        .await
        .unwrap();
    let id = made["schedule_id"].as_str().unwrap().to_owned();
    assert_eq!(made["tenant"], "acme");
    assert_eq!(made["next"].as_array().unwrap().len(), 5);
    // Another tenant's device is unknown to acme; acme's schedule unknown to globex.
    let other = api.create(&acme, new("g-1", "0 6 * * *", "UTC")).await;
    assert!(
        matches!(other, Err(SchedulesError::NoDevice(_))),
        "{other:?}"
    );
    assert!(matches!(
        api.get(&globex, &id),
        Err(SchedulesError::NotFound(_))
    ));
    let edit = api.edit(&globex, &id, new("g-1", "0 7 * * *", "UTC")).await;
    assert!(matches!(edit, Err(SchedulesError::NotFound(_))), "{edit:?}");
    assert!(matches!(
        api.delete(&globex, &id).await,
        Err(SchedulesError::NotFound(_))
    ));
    assert_eq!(
        api.list(&globex, None, true, None, 10)["schedules"],
        serde_json::json!([])
    );
    assert_eq!(
        api.list(&caller(None), None, false, None, 10)["schedules"][0]["schedule_id"],
        id
    );
    // Bad recurrences are clear 400s.
    for (expression, zone) in [
        ("61 * * * *", "UTC"),
        ("* * * *", "UTC"),
        ("0 6 * * *", "Nowhere/City"),
    ] {
        let bad = api.create(&acme, new("a-1", expression, zone)).await;
        assert!(
            matches!(bad, Err(SchedulesError::BadRequest(_))),
            "{expression} {zone}: {bad:?}"
        );
    }
    // An edit is a new revision; a deleted schedule cannot be edited again.
    let edited = api
        .edit(&acme, &id, new("a-1", "30 6 * * *", "Europe/Berlin"))
        .await
        .unwrap();
    assert_eq!(edited["revision"], 1);
    api.delete(&acme, &id).await.unwrap();
    let again = api.delete(&acme, &id).await;
    assert!(
        matches!(again, Err(SchedulesError::Conflict(_))),
        "{again:?}"
    );
    assert_eq!(api.get(&acme, &id).unwrap()["next"], serde_json::json!([]));
    assert_eq!(
        log.json::<ScheduleEvent>("sch").len(),
        3,
        "saved, edited, deleted"
    );
}
