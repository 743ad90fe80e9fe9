//! Candidate models in shadow, promotion and rollback end to end (docs/shadow.md), against
//! real Mosquitto and tansu, in one process that never restarts: a candidate (threshold
//! 0.5, production's 0.65, so its alerts and alarms are told apart by their threshold)
//! runs in shadow while the simulator injects anomalies; its alerts are recorded on
//! `iot.shadow-alerts` and none reaches the customer WebSocket or `iot.alarms` (whence
//! webhooks, alarm rules and the jobs' canary take every alarm); promoted, its alerts
//! reach customers within one parameter publish interval and the old model's open
//! alarms close with `model_promoted`; rolled back, production decides again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetwatch_e2e::{eventually, read_topic, Namespace, Rig, Service};
use fleetwatch_protocol::{AlarmEvent, AlarmEventKind, Alert, AlertState};
use fleetwatch_sim::{run_fleet, AlertListener, FleetStats, SimConfig};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// Parameters are published at least this often (the "parameter publish interval").
const PUBLISH_EVERY_MS: u64 = 2_000;
const PRODUCTION_THRESHOLD: f64 = 0.65;
const CANDIDATE_THRESHOLD: f64 = 0.5;

fn call(service: &Service, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (status, _, body) = service.request(method, path, &[], body.as_ref());
    (status, body)
}

/// The alarm events on `iot.alarms` of this test's devices.
fn alarm_events(rig: &Rig, namespace: &Namespace) -> Vec<AlarmEvent> {
    (read_topic(&rig.kafka, &namespace.topic("iot.alarms")).iter())
        .filter_map(|record| serde_json::from_str(&record.payload).ok())
        .collect()
}

fn alerts_on(rig: &Rig, namespace: &Namespace, topic: &str) -> Vec<Alert> {
    (read_topic(&rig.kafka, &namespace.topic(topic)).iter())
        .filter_map(|record| serde_json::from_str(&record.payload).ok())
        .collect()
}

fn is_candidates(threshold: f64) -> bool {
    (threshold - CANDIDATE_THRESHOLD).abs() < 1e-9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_candidate_in_shadow_reaches_no_customer_until_promoted_and_rolls_back_without_restart() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("shadow");
    let prefix = namespace.device_prefix();
    let publish_every = PUBLISH_EVERY_MS.to_string();
    let env = [
        ("FLEETWATCH_SCORER__CLEAR_AFTER_EVENTS", "60"),
        (
            "FLEETWATCH_TRAINER__PUBLISH_EVERY_MS",
            publish_every.as_str(),
        ),
    ];
    let service = Service::start_async(&rig, &namespace, "all", "a", &env).await;
    let pid = service.pid();
    let customer = AlertListener::connect(&service.ws_url(), &prefix)
        .await
        .unwrap();
    blocking(|| create_and_shadow(&service));
    // An alarm rule on every alarm of the test's devices, recording what it would do.
    blocking(|| {
        let rule = json!({
            "name": "every alarm",
            "condition": {"device_prefix": prefix},
            "action": {"kind": "notify"},
            "dry_run": true,
        });
        let (status, body) = call(&service, "POST", "/rules", Some(rule));
        assert_eq!(status, 201, "{body}");
    });

    let mut sim = SimConfig::new(&rig.mqtt_host, rig.mqtt_port, 8);
    sim.id_prefix = prefix.clone();
    sim.interval_ms = 100;
    sim.warmup_secs = 35.0;
    sim.duration_secs = Some(100.0);
    sim.quiet_tail_secs = 0.0;
    sim.anomalies_per_minute = 40.0;
    sim.outages_per_minute = 0.0;
    sim.seed = 20;
    let stop_fleet = CancellationToken::new();
    let fleet = tokio::spawn(run_fleet(
        sim,
        Arc::new(FleetStats::default()),
        stop_fleet.clone(),
    ));

    // In shadow: the candidate's alerts are recorded, none reaches a customer. Checked
    // once the candidate has raised alerts and the rule has decided on production alarms.
    let candidate_raised = blocking(|| {
        eventually(
            Duration::from_secs(100),
            "the candidate's alerts in shadow and a rule decision",
            || {
                let raised = (alerts_on(&rig, &namespace, "iot.shadow-alerts").iter())
                    .filter(|a| {
                        a.model_id.as_deref() == Some("cand-1") && a.state == AlertState::Raised
                    })
                    .count();
                let decided = rule_actions(&rig, &namespace).next().is_some();
                (raised > 1 && decided).then_some(raised)
            },
        )
    });
    println!("the candidate raised {candidate_raised} alerts in shadow");
    assert_no_candidate_for_customers(&rig, &namespace, &customer, "in shadow");
    blocking(|| rules_acted_on_production_alarms_only(&rig, &namespace));

    // Promoted once production has an open alarm: it closes with `model_promoted`, the
    // candidate decides from the device's next reading on.
    let open = blocking(|| open_alarms(&service));
    let promoted_at = Instant::now();
    blocking(|| {
        let (status, registry) = call(&service, "POST", "/models/cand-1/promote", None);
        assert_eq!(status, 200, "{registry}");
        assert_eq!(registry["fleet_promoted"], "cand-1");
    });
    let closed = blocking(|| closed_by_promotion(&rig, &namespace, &open, promoted_at));
    println!(
        "open production alarms at promotion: {open:?}; closed with model_promoted: {closed:?}"
    );
    let first = eventually(
        Duration::from_secs(40),
        "a customer alert of the candidate",
        || {
            (customer.alerts().iter())
                .find(|a| a.alert.model_id.as_deref() == Some("cand-1"))
                .map(|a| a.alert.clone())
        },
    );
    assert!(is_candidates(first.threshold), "{first:?}");
    let switched = blocking(|| switch_delay(&rig, &namespace, &open));
    println!("the first model_promoted clear was written {switched:?} after the promotion");
    assert!(
        switched <= Duration::from_millis(PUBLISH_EVERY_MS),
        "the candidate decided {switched:?} after promotion"
    );

    // Rolled back: production decides again, the candidate's open alarms close the same way.
    blocking(|| {
        let (status, registry) = call(&service, "POST", "/models/rollback", None);
        assert_eq!(status, 200, "{registry}");
        assert_eq!(registry["fleet_promoted"], "production");
        let journal: Vec<&str> = (registry["journal"].as_array().unwrap().iter())
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            journal,
            ["created", "shadow_started", "promoted", "rolled_back"]
        );
    });
    let rolled_back_at = now_ms();
    // Production's own alarms again: at least one created after the rollback, none of the
    // candidate's (the devices keep injecting anomalies meanwhile).
    blocking(|| {
        let late = eventually(
            Duration::from_secs(40),
            "an alarm created after the rollback",
            || {
                let late: Vec<(String, f64)> = (alarm_events(&rig, &namespace).into_iter())
                    .filter(|e| {
                        e.kind == AlarmEventKind::Created && e.at_ms > rolled_back_at + 1_000
                    })
                    .map(|e| (e.alarm.alarm_id, e.alarm.threshold))
                    .collect();
                (!late.is_empty()).then_some(late)
            },
        );
        println!("alarms created after the rollback: {late:?}");
        assert!(late.iter().all(|(_, t)| !is_candidates(*t)), "{late:?}");
        let (_, model) = call(&service, "GET", "/models/cand-1", None);
        assert_eq!(model["state"], "shadow", "{model}");
        assert_eq!(service.pid(), pid, "no restart");
        let metrics = service.metric("fleetwatch_scorer_devices_awaiting_promoted_params");
        assert_eq!(metrics, 0.0);
        service.terminate(Duration::from_secs(30));
    });
    stop_fleet.cancel();
    fleet.await.unwrap().unwrap();
}

fn now_ms() -> i64 {
    fleetwatch_protocol::now_ms()
}

/// Create candidate `cand-1` (threshold 0.5) and start its shadow for the fleet.
fn create_and_shadow(service: &Service) {
    let config = json!({
        "trainer": {"model": {"threshold": CANDIDATE_THRESHOLD}},
        "scorer": {"clear_after_events": 60},
    });
    let (status, created) = call(
        service,
        "POST",
        "/models",
        Some(json!({"model_id": "cand-1", "config": config})),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["state"], "idle");
    let (status, bad) = call(
        service,
        "PUT",
        "/models/cand-1/shadow",
        Some(json!({"tenant": "acme", "sample": 5})),
    );
    assert_eq!(
        status, 400,
        "a misspelt scope is refused, not taken as the fleet: {bad}"
    );
    let (status, shadow) = call(service, "PUT", "/models/cand-1/shadow", None);
    assert_eq!(status, 200, "{shadow}");
    assert_eq!(shadow["state"], "shadow");
    let (status, refused) = call(service, "POST", "/models/rollback", None);
    assert_eq!(status, 409, "nothing promoted yet: {refused}");
}

/// No alert or alarm event of the candidate reached a customer: the WebSocket's alerts
/// and alarm events, and `iot.alerts` and `iot.alarms` (which webhooks, rules and the
/// jobs' canary read) are all production's.
fn assert_no_candidate_for_customers(
    rig: &Rig,
    namespace: &Namespace,
    customer: &AlertListener,
    when: &str,
) {
    let ws = customer.alerts();
    assert!(!ws.is_empty(), "{when}: production raised nothing");
    for received in &ws {
        let alert = &received.alert;
        assert!(alert.model_id.is_none(), "{when}: {alert:?}");
        assert_eq!(alert.threshold, PRODUCTION_THRESHOLD, "{when}: {alert:?}");
    }
    for event in customer.alarm_log().events {
        assert!(!is_candidates(event.alarm.threshold), "{when}: {event:?}");
    }
    let alerts = alerts_on(rig, namespace, "iot.alerts");
    assert!(alerts.iter().all(|a| a.model_id.is_none()), "{when}");
    let alarms = alarm_events(rig, namespace);
    assert!(!alarms.is_empty(), "{when}: no alarm at all");
    assert!(
        alarms.iter().all(|e| !is_candidates(e.alarm.threshold)),
        "{when}: a candidate's alarm reached iot.alarms"
    );
}

/// The ids of the active alarms, once there is one.
fn open_alarms(service: &Service) -> Vec<String> {
    eventually(Duration::from_secs(40), "an active alarm", || {
        let (_, page) = call(service, "GET", "/alarms?state=active", None);
        let ids: Vec<String> = (page["alarms"].as_array()?.iter())
            .map(|a| a["alarm_id"].as_str().unwrap().to_owned())
            .collect();
        (!ids.is_empty()).then_some(ids)
    })
}

/// The alarms among `open` cleared with `model_promoted`, once there is one.
fn closed_by_promotion(
    rig: &Rig,
    namespace: &Namespace,
    open: &[String],
    since: Instant,
) -> Vec<String> {
    let closed = eventually(Duration::from_secs(30), "model_promoted clears", || {
        let cleared: Vec<String> = (alarm_events(rig, namespace).into_iter())
            .filter(|e| e.kind == AlarmEventKind::Cleared && open.contains(&e.alarm.alarm_id))
            .filter(|e| {
                let last = e.alarm.history.last();
                last.and_then(|c| c.detail.as_deref()) == Some("model_promoted")
            })
            .map(|e| e.alarm.alarm_id)
            .collect();
        // An alarm may also have ended by itself between the listing and the promotion.
        (!cleared.is_empty()).then_some(cleared)
    });
    println!(
        "model_promoted clears seen {:?} after promotion",
        since.elapsed()
    );
    closed
}

/// How long after the promotion event the first `model_promoted` clear was written.
fn switch_delay(rig: &Rig, namespace: &Namespace, open: &[String]) -> Duration {
    let promoted_ms = (read_topic(&rig.kafka, &namespace.topic("iot.models")).iter())
        .filter_map(|r| serde_json::from_str::<Value>(&r.payload).ok())
        .find(|e| e["kind"] == "promoted")
        .and_then(|e| e["at_ms"].as_i64())
        .expect("the promotion is journaled");
    let cleared_ms = (alarm_events(rig, namespace).into_iter())
        .filter(|e| e.kind == AlarmEventKind::Cleared && open.contains(&e.alarm.alarm_id))
        .map(|e| e.at_ms)
        .min()
        .expect("cleared");
    Duration::from_millis((cleared_ms - promoted_ms).max(0) as u64)
}

/// The decisions on `iot.rule-actions` about an alarm.
fn rule_actions(rig: &Rig, namespace: &Namespace) -> impl Iterator<Item = Value> {
    (read_topic(&rig.kafka, &namespace.topic("iot.rule-actions")).into_iter())
        .filter_map(|r| serde_json::from_str::<Value>(&r.payload).ok())
        .filter(|a| a["alarm_id"].is_string())
}

/// The alarm rule decided on alarms, and only on alarms of `iot.alarms` (all
/// production's while the candidate is in shadow).
fn rules_acted_on_production_alarms_only(rig: &Rig, namespace: &Namespace) {
    // Actions first: an alarm is on `iot.alarms` before any rule acts on it, so alarms read
    // after the actions include every alarm they name.
    let actions: Vec<Value> = rule_actions(rig, namespace).collect();
    let alarms: std::collections::HashSet<String> = (alarm_events(rig, namespace).into_iter())
        .filter(|e| !is_candidates(e.alarm.threshold))
        .map(|e| e.alarm.alarm_id)
        .collect();
    assert!(!actions.is_empty(), "the rule decided nothing");
    for action in &actions {
        let alarm_id = action["alarm_id"].as_str().unwrap();
        assert!(
            alarms.contains(alarm_id),
            "a rule acted on {alarm_id}, not a production alarm"
        );
    }
    println!("{} rule decisions, all on production alarms", actions.len());
}
