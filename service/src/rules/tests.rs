//! Alarm rules deterministically: condition matching, the per-device limit (and its
//! rebuild from the journal, as after a restart), dry run, tenants, and the owner
//! recording each decision once before acting.

use std::sync::Arc;

use fleetwatch_protocol::{
    Alarm, AlarmEvent, AlarmEventKind, DeviceId, DeviceRequest, DeviceRequestBody, Severity,
    TenantId,
};
use serde_json::json;

use super::limit::DeviceLimit;
use super::owner::RulesOwner;
use super::perform::{Performer, PerformerSetup};
use super::rule::{
    ActionOutcome, ActionRecord, Compiled, Condition, RuleAction, RuleEvent, RuleEventBody,
    RuleSpec,
};
use super::state::{ActiveAlarms, RulesIndex};
use super::RulesConfig;
use crate::jobs::fleet::FleetView;
use crate::jobs::owner::Ownership;
use crate::kafka::memory::MemoryLog;
use crate::kafka::{PartitionListener, Producer, RecordHandler};
use crate::metrics::Metrics;
use crate::tenancy::{Directory, DirectoryHandler};

fn alarm(
    id: &str,
    device: &str,
    tenant: Option<&str>,
    severity: Severity,
    created_ms: i64,
) -> Alarm {
    Alarm {
        alarm_id: id.into(),
        device_id: DeviceId::parse(device).unwrap(),
        tenant: tenant.map(|t| TenantId::parse(t).unwrap()),
        severity,
        active: true,
        acknowledged: false,
        verdict: None,
        created_ms,
        updated_ms: created_ms,
        cleared_ms: None,
        peak_score: 2.0,
        threshold: 1.0,
        reason: "test".into(),
        cause: Some("temperature".into()),
        count: 1,
        last_alert_seq: 1,
        changes: 0,
        history: Vec::new(),
    }
}

fn condition(value: serde_json::Value) -> Compiled {
    Compiled::new(&serde_json::from_value::<Condition>(value).unwrap()).unwrap()
}

#[test]
fn conditions_match_severity_duration_prefix_metric_and_selector() {
    let critical = alarm("pump-1:1", "pump-1", None, Severity::Critical, 1_000);
    let lasting = condition(json!({"severity": "critical", "active_for_ms": 10_000}));
    assert!(
        !lasting.holds(&critical, 10_999, None),
        "9.999 s is not 10 s"
    );
    assert!(lasting.holds(&critical, 11_000, None));
    let major = alarm("pump-1:2", "pump-1", None, Severity::Major, 1_000);
    assert!(
        !lasting.holds(&major, 60_000, None),
        "major is below critical"
    );
    assert!(condition(json!({"severity": "minor"})).holds(&major, 1_000, None));
    let mut cleared = critical.clone();
    cleared.active = false;
    assert!(
        !condition(json!({})).holds(&cleared, 60_000, None),
        "only active alarms"
    );
    let prefix = condition(json!({"device_prefix": "pump-"}));
    assert!(prefix.holds(&critical, 1_000, None));
    let other = alarm("fan-1:1", "fan-1", None, Severity::Critical, 1_000);
    assert!(!prefix.holds(&other, 1_000, None));
    assert!(condition(json!({"metric": "temperature"})).holds(&critical, 1_000, None));
    assert!(!condition(json!({"metric": "pressure"})).holds(&critical, 1_000, None));
    let selector =
        condition(json!({"selector": "reported.site == \"north\" AND reported.mode != \"safe\""}));
    let north = json!({"site": "north", "mode": "normal"})
        .as_object()
        .unwrap()
        .clone();
    let safe = json!({"site": "north", "mode": "safe"})
        .as_object()
        .unwrap()
        .clone();
    assert!(selector.holds(&critical, 1_000, Some(&north)));
    assert!(!selector.holds(&critical, 1_000, Some(&safe)));
    assert!(
        !selector.holds(&critical, 1_000, None),
        "an unknown twin matches no selector"
    );
    assert!(Compiled::new(&Condition {
        selector: Some("mode = 1".into()),
        ..Condition::default()
    })
    .is_err());
}

#[test]
fn the_limit_counts_each_action_once_within_a_sliding_window() {
    let device = DeviceId::parse("pump-1").unwrap();
    let other = DeviceId::parse("pump-2").unwrap();
    let mut limit = DeviceLimit::new(2, 60_000);
    assert!(limit.admits(&device, 0));
    limit.note(&device, "a", 1_000);
    limit.note(&device, "a", 1_000);
    assert_eq!(
        limit.count(&device, 1_000),
        1,
        "a record read twice counts once"
    );
    limit.note(&device, "b", 30_000);
    assert!(!limit.admits(&device, 30_000));
    assert!(limit.admits(&other, 30_000), "per device");
    assert!(!limit.admits(&device, 60_999), "a and b within the window");
    assert!(
        limit.admits(&device, 61_000),
        "a left the window; b alone is within"
    );
    limit.prune(61_000);
    assert_eq!(limit.count(&device, 61_000), 1);
    limit.note(&device, "a", 1_000);
    assert_eq!(
        limit.count(&device, 61_000),
        1,
        "a pruned id still counted once"
    );
    assert!(
        !DeviceLimit::new(0, 60_000).admits(&device, 0),
        "0: no action at all"
    );
}

fn config() -> RulesConfig {
    RulesConfig {
        max_actions_per_device: 2,
        ..RulesConfig::default()
    }
}

/// A rule's saved event.
fn saved(id: &str, tenant: Option<&str>, condition: serde_json::Value, dry_run: bool) -> RuleEvent {
    RuleEvent {
        rule_id: id.into(),
        at_ms: 0,
        body: RuleEventBody::Saved(Box::new(RuleSpec {
            rule_id: id.into(),
            tenant: tenant.map(|t| TenantId::parse(t).unwrap()),
            name: id.into(),
            condition: serde_json::from_value(condition).unwrap(),
            action: RuleAction::Command {
                name: "safe_mode".into(),
                args: serde_json::Value::Null,
            },
            dry_run,
            revision: 0,
        })),
    }
}

async fn directory_with(devices: &[(&str, &str)], metrics: &Arc<Metrics>) -> Arc<Directory> {
    let directory = Arc::new(Directory::new(Vec::new(), metrics.clone()));
    let mut handler = DirectoryHandler::new(directory.clone(), Default::default());
    for (device, tenant) in devices {
        let entry = fleetwatch_protocol::DirectoryEntry {
            device_id: DeviceId::parse(device).unwrap(),
            tenant: Some(TenantId::parse(tenant).unwrap()),
        };
        let payload = serde_json::to_vec(&entry).unwrap();
        let record = crate::kafka::Record::new("dir", device, &payload);
        handler.handle(&record).await.unwrap();
    }
    directory
}

/// One process of the role over an in-memory Kafka: its index rebuilt from the log.
struct Process {
    owner: RulesOwner,
    alarms: Arc<ActiveAlarms>,
}

async fn process(log: &MemoryLog, rules: &[RuleEvent]) -> Process {
    let metrics = Arc::new(Metrics::new());
    let config = config();
    let index = Arc::new(RulesIndex::new(&config));
    index.rules_loading.start(Default::default());
    index.actions_loading.start(Default::default());
    // The journal read whole, as at start (before the rules' log here: the readers run
    // side by side): the limit's counts come back.
    for record in log.records("act") {
        if record.payload.is_empty() {
            continue;
        }
        let action: ActionRecord = serde_json::from_slice(&record.payload).unwrap();
        index.apply_action(&action, record.partition);
    }
    for rule in rules {
        index.apply_rule(rule);
    }
    let producer = Producer::in_memory(log, metrics.clone());
    let ownership = Arc::new(Ownership::new(producer.clone(), "act".into(), "m/".into()));
    ownership.assigned(&[0]);
    for record in log.records("act") {
        if record.payload.is_empty() {
            index.saw_marker(&record.key);
        }
    }
    let alarms = Arc::new(ActiveAlarms::default());
    alarms.loading.start(Default::default());
    let fleet = Arc::new(FleetView::new(1));
    fleet.start(Default::default());
    let directory = directory_with(
        &[
            ("acme-1", "acme"),
            ("acme-2", "acme"),
            ("globex-1", "globex"),
        ],
        &metrics,
    )
    .await;
    let performer = Performer::new(PerformerSetup {
        producer: producer.clone(),
        commands_topic: "cmd".into(),
        jobs_topic: "jobs".into(),
        jobs: &Default::default(),
        ttl_ms: config.command_ttl_ms,
        metrics: metrics.clone(),
    });
    let owner = RulesOwner {
        ownership,
        index,
        alarms: alarms.clone(),
        fleet,
        directory,
        producer,
        actions_topic: "act".into(),
        performer,
        config,
        metrics,
        taken: Default::default(),
    };
    Process { owner, alarms }
}

impl Process {
    fn raise(&self, alarm: Alarm) {
        let event = AlarmEvent {
            event_id: format!("{}/0", alarm.alarm_id),
            kind: AlarmEventKind::Created,
            at_ms: alarm.created_ms,
            by: "scorer".into(),
            alarm,
        };
        self.alarms.apply(&event, 0);
    }

    fn clear(&self, mut alarm: Alarm) {
        alarm.active = false;
        alarm.changes += 1;
        let event = AlarmEvent {
            event_id: format!("{}/1", alarm.alarm_id),
            kind: AlarmEventKind::Cleared,
            at_ms: alarm.created_ms,
            by: "scorer".into(),
            alarm,
        };
        self.alarms.apply(&event, 0);
    }
}

fn journal(log: &MemoryLog) -> Vec<ActionRecord> {
    (log.records("act").into_iter())
        .filter(|r| !r.payload.is_empty())
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect()
}

/// Command ids sent to devices.
fn sent(log: &MemoryLog) -> Vec<(String, String)> {
    (log.json::<DeviceRequest>("cmd").into_iter())
        .map(|r| match r.body {
            DeviceRequestBody::SendCommand(c) => (r.device_id.to_string(), c.command_id),
            other => panic!("unexpected request {other:?}"),
        })
        .collect()
}

fn outcomes(records: &[ActionRecord], device: &str) -> Vec<ActionOutcome> {
    (records.iter())
        .filter(|r| r.device_id.as_str() == device)
        .map(|r| r.outcome)
        .collect()
}

fn three_rules() -> [RuleEvent; 3] {
    let rule = |id: &str, prefix: &str, dry_run| {
        saved(
            id,
            Some("acme"),
            json!({ "device_prefix": prefix }),
            dry_run,
        )
    };
    // The last: acme's rule whose prefix matches globex's device, which it never touches.
    [
        rule("flap", "acme-1", false),
        rule("dry", "acme-2", true),
        rule("wide", "globex", false),
    ]
}

/// An alarm of episode `n` of `device` (of `tenant`) raised, and two ticks.
async fn episode(p: &mut Process, device: &str, tenant: &str, n: u32, now: i64) -> Alarm {
    let raised = alarm(
        &format!("{device}:{n}"),
        device,
        Some(tenant),
        Severity::Warning,
        now,
    );
    p.raise(raised.clone());
    p.owner.on_tick().await.unwrap();
    p.owner.on_tick().await.unwrap();
    raised
}

#[tokio::test]
async fn a_flapping_alarm_is_limited_also_across_a_restart_dry_run_sends_nothing_and_tenants_hold()
{
    let (log, rules) = (MemoryLog::default(), three_rules());
    let now = fleetwatch_protocol::now_ms();
    let mut first = process(&log, &rules).await;
    // The flapping alarm: three episodes, each a new alarm.
    for n in 1..=3 {
        let raised = episode(&mut first, "acme-1", "acme", n, now).await;
        first.clear(raised);
    }
    episode(&mut first, "acme-2", "acme", 1, now).await;
    episode(&mut first, "globex-1", "globex", 1, now).await;
    let records = journal(&log);
    use ActionOutcome::*;
    assert_eq!(
        outcomes(&records, "acme-1"),
        [Performed, Performed, Limited]
    );
    assert_eq!(outcomes(&records, "acme-2"), [DryRun]);
    assert!(outcomes(&records, "globex-1").is_empty(), "{records:?}");
    assert_eq!(
        sent(&log),
        [
            ("acme-1".to_owned(), "rule-flap-acme-1:1".to_owned()),
            ("acme-1".to_owned(), "rule-flap-acme-1:2".to_owned()),
        ],
        "each performed action sent once; nothing for dry run or another tenant"
    );
    let detail = records[2].detail.as_deref().unwrap();
    assert!(detail.contains("2 actions"), "{detail}");

    // A restart: a new process rebuilds the limit from the journal and sends the
    // recorded actions again with the same ids (transport), deciding nothing twice.
    let mut second = process(&log, &rules).await;
    episode(&mut second, "acme-1", "acme", 4, now).await;
    let records = journal(&log);
    let expected = [Performed, Performed, Limited, Limited];
    assert_eq!(outcomes(&records, "acme-1"), expected);
    let ids: std::collections::BTreeSet<String> =
        sent(&log).into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), 2, "still two commands: {ids:?}");
    let index = &second.owner.index;
    let view = index.view(&index.get("flap").unwrap());
    assert_eq!(
        view["counts"],
        json!({"performed": 2, "limited": 2}),
        "{view}"
    );
    assert_eq!(view["recent"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn a_job_action_is_a_job_on_the_device_whose_id_is_the_actions() {
    let (log, metrics) = (MemoryLog::default(), Arc::new(Metrics::new()));
    let performer = Performer::new(PerformerSetup {
        producer: Producer::in_memory(&log, metrics.clone()),
        commands_topic: "cmd".into(),
        jobs_topic: "jobs".into(),
        jobs: &Default::default(),
        ttl_ms: 60_000,
        metrics,
    });
    let command = fleetwatch_protocol::JobCommand::Configuration {
        desired: json!({"mode": "safe"}).as_object().unwrap().clone(),
    };
    let record = ActionRecord {
        action_id: "rule-r2-acme-1:1".into(),
        rule_id: "r2".into(),
        rule_revision: 0,
        tenant: Some(TenantId::parse("acme").unwrap()),
        alarm_id: "acme-1:1".into(),
        severity: Severity::Major,
        alarm_created_ms: 1,
        device_id: DeviceId::parse("acme-1").unwrap(),
        action: RuleAction::Job { command },
        outcome: ActionOutcome::Performed,
        detail: None,
        at_ms: 10_000,
    };
    // Taken twice (a new owner): the same job id, which the jobs' fold keeps once.
    performer.perform(&record, 20_000).await.unwrap();
    performer.perform(&record, 20_000).await.unwrap();
    let events: Vec<fleetwatch_protocol::JobEvent> = log.json("jobs");
    assert_eq!(events.len(), 2);
    let jobs = crate::jobs::state::JobIndex::default();
    for event in &events {
        jobs.apply(event, 0);
    }
    let job = jobs.get("rule-r2-acme-1:1").expect("the job");
    assert_eq!(job.spec.devices, std::slice::from_ref(&record.device_id));
    assert_eq!(job.spec.tenant, record.tenant);
    assert_eq!(
        job.spec.ttl_ms, 50_000,
        "what remains of the action's time to live"
    );
    assert!(log.records("cmd").is_empty());
}

fn performed(id: &str, outcome: ActionOutcome, at_ms: i64) -> ActionRecord {
    ActionRecord {
        action_id: id.into(),
        rule_id: "r".into(),
        rule_revision: 0,
        tenant: None,
        alarm_id: format!("d-{id}:1"),
        severity: Severity::Major,
        alarm_created_ms: 0,
        device_id: DeviceId::parse(&format!("d-{id}")).unwrap(),
        action: RuleAction::Notify { message: None },
        outcome,
        detail: None,
        at_ms,
    }
}

#[test]
fn owners_take_again_only_recent_performed_actions_of_their_partitions() {
    let index = RulesIndex::new(&config());
    index.apply_action(&performed("a", ActionOutcome::Performed, 1_000), 0);
    index.apply_action(&performed("b", ActionOutcome::Performed, 5_000), 1);
    index.apply_action(&performed("c", ActionOutcome::Limited, 6_000), 0);
    let ids = |partitions: &[i32], since| -> Vec<String> {
        let partitions = partitions.iter().copied().collect();
        (index.performed_since(&partitions, since).into_iter())
            .map(|r| r.action_id)
            .collect()
    };
    assert_eq!(ids(&[0, 1], 2_000), ["b"]);
    assert_eq!(ids(&[0], 0), ["a"], "limited is never taken");
    index.prune(10_000, 5_001);
    assert!(ids(&[0, 1], 0).is_empty());
    // A record read again after the pruning is not taken again.
    index.apply_action(&performed("b", ActionOutcome::Performed, 5_000), 1);
    assert!(ids(&[0, 1], 0).is_empty());
}
