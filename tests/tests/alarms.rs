//! Alarms end to end: lifecycle, acknowledge and clear, resume on another instance with
//! a cursor, and a restart, against real Mosquitto and tansu.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fleetwatch_e2e::{eventually, Namespace, Rig, Service};
use fleetwatch_protocol::{AlarmEvent, AlarmEventKind};
use fleetwatch_sim::{run_fleet, AlertListener, FleetStats, SimConfig};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

const ENV: [(&str, &str); 1] = [("FLEETWATCH_SCORER__CLEAR_AFTER_EVENTS", "100")];

fn post(service: &Service, path: &str, body: Value) -> (u16, Value) {
    let (status, _, body) = service.request("POST", path, &[], Some(&body));
    (status, body)
}

/// Each alarm's events by kind, from what a client received.
fn by_alarm(events: &[AlarmEvent]) -> BTreeMap<String, Vec<AlarmEventKind>> {
    let mut alarms: BTreeMap<String, Vec<AlarmEventKind>> = BTreeMap::new();
    for event in events {
        alarms
            .entry(event.alarm.alarm_id.clone())
            .or_default()
            .push(event.kind);
    }
    alarms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alarms_follow_episodes_survive_restarts_and_resume_without_gap_or_duplicate() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("alarms");
    let prefix = namespace.device_prefix();
    let first = Service::start_async(&rig, &namespace, "all", "a", &ENV).await;
    // A second instance serving WebSockets only: where the interrupted client resumes.
    let other = Service::start_async(&rig, &namespace, "alerts", "b", &ENV).await;
    let steady = AlertListener::connect(&first.ws_url(), &prefix)
        .await
        .unwrap();
    let interrupted = AlertListener::connect(&first.ws_url(), &prefix)
        .await
        .unwrap();

    let mut sim = SimConfig::new(&rig.mqtt_host, rig.mqtt_port, 10);
    sim.id_prefix = prefix.clone();
    sim.interval_ms = 100;
    sim.warmup_secs = 40.0;
    sim.duration_secs = Some(85.0);
    sim.quiet_tail_secs = 20.0;
    sim.anomalies_per_minute = 50.0;
    sim.outages_per_minute = 0.0;
    sim.seed = 21;
    let fleet = tokio::spawn(run_fleet(
        sim,
        Arc::new(FleetStats::default()),
        CancellationToken::new(),
    ));

    // Mid-run: the client drops off for 20 s, while a user acts on alarms.
    tokio::time::sleep(Duration::from_secs(50)).await;
    interrupted.close();
    let before = interrupted.alarm_log();
    let cursor = before
        .cursor
        .clone()
        .expect("alarm events arrived before the drop");
    let acted = blocking(|| act_on_alarms(&first));
    tokio::time::sleep(Duration::from_secs(20)).await;
    let resumed = AlertListener::connect_resuming(&other.ws_url(), &prefix, Some(&cursor))
        .await
        .unwrap();
    let injected = fleet.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;

    let everything = steady.alarm_log().events;
    let after = resumed.alarm_log();
    assert!(after.resumed && after.lost == 0, "{after:?}");
    let mut seen: Vec<String> = before
        .events
        .iter()
        .chain(&after.events)
        .map(|e| e.event_id.clone())
        .collect();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "the resumed client got a duplicate"
    );
    let mut expected: Vec<String> = everything.iter().map(|e| e.event_id.clone()).collect();
    seen.sort();
    expected.sort();
    assert_eq!(
        seen, expected,
        "the resumed client's events differ from a steady client's"
    );

    // One alarm per episode: created once, updated while it lasts, cleared at its end.
    let alarms = by_alarm(&everything);
    println!(
        "{} anomalies injected, {} alarms, {} alarm events; acted on {acted:?}",
        injected.len(),
        alarms.len(),
        everything.len()
    );
    assert!(alarms.len() >= 5, "too few alarms to tell: {alarms:?}");
    for (alarm_id, kinds) in &alarms {
        assert_eq!(
            kinds.first(),
            Some(&AlarmEventKind::Created),
            "{alarm_id}: {kinds:?}"
        );
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == AlarmEventKind::Created)
                .count(),
            1
        );
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == AlarmEventKind::Cleared)
                .count(),
            1,
            "{alarm_id}: {kinds:?}"
        );
    }

    // A restart loses no alarm state: the index is rebuilt, the twins keep theirs.
    let (acked, cleared) = acted;
    let status = blocking(|| first.terminate(Duration::from_secs(30)));
    assert!(status.success());
    let restarted = Service::start_async(&rig, &namespace, "all", "c", &ENV).await;
    blocking(|| {
        let (status, alarm) = eventually(Duration::from_secs(20), "the acknowledged alarm", || {
            let answer = restarted.get(&format!("/alarms/{acked}"));
            (answer.0 == 200).then_some(answer)
        });
        assert_eq!(status, 200);
        assert_eq!(
            (alarm["acknowledged"].clone(), alarm["verdict"].clone()),
            (json!(true), json!("true_positive"))
        );
        let journal: Vec<&str> = alarm["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["kind"].as_str().unwrap())
            .collect();
        assert!(journal.contains(&"acknowledged"), "{journal:?}");
        let (_, cleared_alarm) = restarted.get(&format!("/alarms/{cleared}"));
        let last = cleared_alarm["history"]
            .as_array()
            .unwrap()
            .iter()
            .rfind(|c| c["kind"] == "cleared")
            .cloned()
            .unwrap();
        assert_eq!(last["by"], "anonymous", "{cleared_alarm}");
        let device = cleared.rsplit_once(':').unwrap().0;
        // The twin keeps the alarm it had (its partition may still be restoring when the
        // alerts role's index already answers).
        eventually(
            Duration::from_secs(20),
            "the cleared alarm in its twin",
            || {
                let (status, twin) = restarted.get(&format!("/devices/{device}"));
                let kept = (twin["alarms"].as_array().into_iter().flatten())
                    .any(|a| a["alarm_id"] == cleared.as_str());
                if !kept {
                    println!("twin of {device}: {status} {twin}");
                }
                kept.then_some(())
            },
        );
        let (status, page) = restarted.get(&format!(
            "/alarms?device_prefix={prefix}&state=cleared&limit=2"
        ));
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["alarms"].as_array().unwrap().len(), 2);
        assert!(page["next"].is_string());
        restarted.terminate(Duration::from_secs(30));
        other.terminate(Duration::from_secs(30));
    });
}

/// Acknowledge one active alarm with a verdict and clear another by hand; their ids.
fn act_on_alarms(service: &Service) -> (String, String) {
    let active: Vec<String> = eventually(Duration::from_secs(30), "two active alarms", || {
        let (_, page) = service.get("/alarms?state=active");
        let ids: Vec<String> = page["alarms"]
            .as_array()?
            .iter()
            .map(|a| a["alarm_id"].as_str().unwrap().to_owned())
            .collect();
        (ids.len() >= 2).then_some(ids)
    });
    let (acked, cleared) = (active[0].clone(), active[1].clone());
    let (status, alarm) = post(
        service,
        &format!("/alarms/{acked}/ack"),
        json!({"verdict": "true_positive"}),
    );
    assert_eq!(status, 200, "{alarm}");
    assert_eq!(alarm["acknowledged"], true);
    let (status, alarm) = post(service, &format!("/alarms/{cleared}/clear"), json!({}));
    assert_eq!(status, 200, "{alarm}");
    assert_eq!(alarm["active"], false);
    let (status, missing) = post(service, "/alarms/nobody:1/ack", json!({}));
    assert_eq!(status, 404, "{missing}");
    (acked, cleared)
}

/// One request a test webhook receiver got, and what it answered.
#[derive(Clone, Debug)]
struct Received {
    event_id: String,
    signature: String,
    attempt: u32,
    body: Vec<u8>,
    answered: u16,
}

/// A webhook receiver on a free port: answers 500 to its first `refuse` requests, then
/// 200, and keeps every request.
async fn receiver(refuse: usize) -> (String, Arc<parking_lot::Mutex<Vec<Received>>>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let log = Arc::new(parking_lot::Mutex::new(Vec::<Received>::new()));
    let kept = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let log = kept.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                // Requests until the client closes the (kept-alive) connection.
                loop {
                    let Some(request) = read_request(&mut stream, &mut buffer, &mut chunk).await
                    else {
                        return;
                    };
                    let header = |name: &str| {
                        request
                            .0
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, v)| v.clone())
                    };
                    let answered = {
                        let mut log = log.lock();
                        let answered = if log.len() < refuse { 500 } else { 200 };
                        log.push(Received {
                            event_id: header("x-fleetwatch-event-id").unwrap_or_default(),
                            signature: header("x-fleetwatch-signature").unwrap_or_default(),
                            attempt: header("x-fleetwatch-attempt")
                                .and_then(|a| a.parse().ok())
                                .unwrap_or(0),
                            body: request.1.clone(),
                            answered,
                        });
                        answered
                    };
                    let reply = format!("HTTP/1.1 {answered} X\r\ncontent-length: 0\r\n\r\n");
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, log)
}

/// One HTTP/1.1 request from `stream`: lower-cased headers and the body.
async fn read_request(
    stream: &mut tokio::net::TcpStream,
    buffer: &mut Vec<u8>,
    chunk: &mut [u8],
) -> Option<(Vec<(String, String)>, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let read = stream.read(chunk).await.ok().filter(|n| *n > 0)?;
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + 4 + length {
        let read = stream.read(chunk).await.ok().filter(|n| *n > 0)?;
        buffer.extend_from_slice(&chunk[..read]);
    }
    let body = buffer[head_end + 4..head_end + 4 + length].to_vec();
    buffer.drain(..head_end + 4 + length);
    Some((headers, body))
}

/// Alarm event `n` of `device` (tenant `tenant`), as the devices role writes them.
fn alarm_event(device: &str, tenant: Option<&str>, n: u32) -> AlarmEvent {
    let kind = match n {
        1 => AlarmEventKind::Created,
        4 => AlarmEventKind::Cleared,
        _ => AlarmEventKind::Updated,
    };
    let alarm = json!({
        "alarm_id": format!("{device}:100"), "device_id": device, "tenant": tenant,
        "severity": "minor", "active": n < 4, "acknowledged": false,
        "created_ms": fleetwatch_protocol::now_ms(), "updated_ms": fleetwatch_protocol::now_ms(),
        "peak_score": 0.8, "threshold": 0.65, "reason": "test", "count": n,
        "last_alert_seq": 100 + n, "changes": n, "history": [],
    });
    AlarmEvent {
        event_id: format!("{device}:100/{n}"),
        kind,
        at_ms: fleetwatch_protocol::now_ms(),
        by: "scorer".into(),
        alarm: serde_json::from_value(alarm).unwrap(),
    }
}

fn signature_of(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let mut text = "sha256=".to_owned();
    for byte in tag.as_ref() {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_get_every_event_of_their_tenant_signed_after_failures_and_no_other() {
    const ACME_SECRET: &str = "acme-webhook-secret-0123456789";
    const GLOBEX_SECRET: &str = "globex-webhook-secret-987654321";
    let rig = Rig::from_env();
    let namespace = Namespace::new("webhooks");
    let prefix = namespace.device_prefix();
    // acme's receiver fails its first 6 requests (the first event's first attempts).
    let (acme_url, acme) = receiver(6).await;
    let (globex_url, globex) = receiver(0).await;
    let endpoints = format!(
        "[{{name = \"acme-pager\", tenant = \"acme\", url = \"{acme_url}\", secret = \"{ACME_SECRET}\"}}, \
          {{name = \"globex-tickets\", tenant = \"globex\", url = \"{globex_url}\", secret = \"{GLOBEX_SECRET}\"}}]"
    );
    let env = [
        ("FLEETWATCH_WEBHOOKS__ENDPOINTS", endpoints.as_str()),
        ("FLEETWATCH_WEBHOOKS__BACKOFF_START_MS", "200"),
        ("FLEETWATCH_WEBHOOKS__BACKOFF_MAX_MS", "800"),
    ];
    let service = Service::start_async(&rig, &namespace, "webhooks,alerts", "a", &env).await;

    let mut events = Vec::new();
    for (index, tenant) in [Some("acme"), Some("acme"), Some("globex"), None]
        .iter()
        .enumerate()
    {
        let device = format!("{prefix}{index}");
        events.extend((1..=4).map(|n| alarm_event(&device, *tenant, n)));
    }
    let records: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|e| {
            (
                e.alarm.device_id.to_string(),
                serde_json::to_vec(e).unwrap(),
            )
        })
        .collect();
    fleetwatch_e2e::produce(&rig.kafka, &namespace.topic("iot.alarms"), &records).await;
    // Rules' notifications, as the rules role records them: delivered like alarm events;
    // a dry run's never.
    let notifications = [
        rule_notification(&format!("{prefix}0"), Some("acme"), "performed"),
        rule_notification(&format!("{prefix}1"), Some("acme"), "dry_run"),
        rule_notification(&format!("{prefix}2"), Some("globex"), "performed"),
        rule_notification(&format!("{prefix}3"), None, "performed"),
    ];
    let topic = namespace.topic("iot.rule-actions");
    fleetwatch_e2e::produce(&rig.kafka, &topic, &notifications).await;
    let ids_of = |tenant: &str, notified: &str| -> HashSet<String> {
        (events.iter())
            .filter(|e| (e.alarm.tenant.as_ref()).is_some_and(|t| t.as_str() == tenant))
            .map(|e| e.event_id.clone())
            .chain([format!("rule-notify-{prefix}{notified}:100")])
            .collect()
    };
    let (acme_ids, globex_ids) = (ids_of("acme", "0"), ids_of("globex", "2"));

    let accepted = |log: &parking_lot::Mutex<Vec<Received>>| -> HashSet<String> {
        let log = log.lock();
        log.iter()
            .filter(|r| r.answered == 200)
            .map(|r| r.event_id.clone())
            .collect()
    };
    blocking(|| {
        eventually(
            Duration::from_secs(30),
            "every event at its webhook",
            || (accepted(&acme) == acme_ids && accepted(&globex) == globex_ids).then_some(()),
        )
    });
    let acme_log = acme.lock().clone();
    let globex_log = globex.lock().clone();
    println!(
        "acme's receiver: {} requests ({} refused) for {} events; globex's: {} for {}",
        acme_log.len(),
        acme_log.iter().filter(|r| r.answered == 500).count(),
        acme_ids.len(),
        globex_log.len(),
        globex_ids.len()
    );
    check_requests(&acme_log, ACME_SECRET, &acme_ids);
    check_requests(&globex_log, GLOBEX_SECRET, &globex_ids);
    // The first event was refused, then retried with the same id and body.
    let first = &acme_log[0];
    let tries: Vec<&Received> = acme_log
        .iter()
        .filter(|r| r.event_id == first.event_id)
        .collect();
    assert!(
        tries.len() > 1 && tries.iter().all(|r| r.body == first.body),
        "{tries:?}"
    );
    let attempts: Vec<u32> = tries.iter().map(|r| r.attempt).collect();
    assert_eq!(attempts, (1..=tries.len() as u32).collect::<Vec<_>>());

    blocking(|| {
        check_status(
            &service,
            &namespace,
            (&first.event_id, tries.len()),
            &acme_ids,
        )
    });
    service.terminate(Duration::from_secs(30));
}

/// Every request carries a valid signature over its body, the event id of its body, and
/// one of `expected`'s events (its tenant's).
fn check_requests(log: &[Received], secret: &str, expected: &HashSet<String>) {
    for request in log {
        assert_eq!(request.signature, signature_of(secret, &request.body));
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let event_id = match body["type"].as_str() {
            Some("rule_action") => body["action"]["action_id"].clone(),
            _ => body["event_id"].clone(),
        };
        assert_eq!(event_id, request.event_id.as_str());
        assert!(
            expected.contains(&request.event_id),
            "another tenant's event: {body}"
        );
    }
}

/// A rule's notification on `device`'s alarm, as the rules role records its decision.
fn rule_notification(device: &str, tenant: Option<&str>, outcome: &str) -> (String, Vec<u8>) {
    let record = json!({
        "action_id": format!("rule-notify-{device}:100"), "rule_id": "notify",
        "rule_revision": 0, "tenant": tenant, "alarm_id": format!("{device}:100"),
        "severity": "minor", "alarm_created_ms": fleetwatch_protocol::now_ms(),
        "device_id": device, "action": {"kind": "notify", "message": "pump hot"},
        "outcome": outcome, "at_ms": fleetwatch_protocol::now_ms(),
    });
    (device.to_owned(), serde_json::to_vec(&record).unwrap())
}

/// The delivery status answers from the alerts role, and the group commits only once
/// everything is delivered.
fn check_status(
    service: &Service,
    namespace: &Namespace,
    (event_id, attempts): (&str, usize),
    expected: &HashSet<String>,
) {
    let alarm_id = event_id.split_once('/').unwrap().0;
    // Its events, and a rule's notification if one was about it.
    let count = (expected.iter())
        .filter(|id| {
            id.split_once('/')
                .map_or(id.ends_with(alarm_id), |(a, _)| a == alarm_id)
        })
        .count();
    let deliveries = eventually(Duration::from_secs(10), "the delivery status", || {
        let (status, body) = service.get(&format!("/alarms/{alarm_id}/deliveries"));
        let list = body["deliveries"].as_array()?.clone();
        (status == 200 && list.len() == count && list.iter().all(|d| d["outcome"] == "delivered"))
            .then_some(list)
    });
    let first = deliveries
        .iter()
        .find(|d| d["event_id"] == event_id)
        .unwrap();
    assert_eq!(first["attempts"], attempts as u64, "{first}");
    assert_eq!(first["webhook"], "acme-pager");
    assert!(service.metric("fleetwatch_webhook_deliveries_total{outcome=\"retrying\"}") > 0.0);
    let rig = Rig::from_env();
    eventually(Duration::from_secs(10), "offsets committed", || {
        let group = format!("{}-webhooks", namespace.name);
        ["iot.alarms", "iot.rule-actions"]
            .iter()
            .flat_map(|topic| {
                fleetwatch_e2e::committed_vs_end(&rig.kafka, &group, &namespace.topic(topic))
            })
            .all(|(_, committed, end)| committed == Some(end))
            .then_some(())
    });
}

// Alarm rules (docs/rules.md): alarms made by injecting the scorer's alerts on
// `iot.alerts`, folded into alarms by the twins of simulated devices.

/// An alert of episode `n` of `device` (critical at a score 2× the threshold, minor at
/// 1.1×), raised or cleared.
fn alert_record(device: &str, n: u32, seq: u64, score: f64, cleared: bool) -> (String, Vec<u8>) {
    use fleetwatch_protocol::{Alert, AlertState, DeviceId};
    let now = fleetwatch_protocol::now_ms();
    let alert = Alert {
        alert_id: format!("{device}:{n}"),
        device_id: DeviceId::parse(device).unwrap(),
        tenant: None,
        state: if cleared {
            AlertState::Cleared
        } else {
            AlertState::Raised
        },
        score,
        threshold: 1.0,
        reason: "injected by the rules test".into(),
        contributors: Vec::new(),
        cause: Some("temperature:level".into()),
        event_ts: now,
        event_seq: seq,
        emitted_ms: now,
        model_version: 1,
        model_id: None,
    };
    (device.to_owned(), serde_json::to_vec(&alert).unwrap())
}

fn rule(service: &Service, body: Value) -> String {
    let (status, rule) = post(service, "/rules", body);
    assert_eq!(status, 201, "{rule}");
    rule["rule_id"].as_str().unwrap().to_owned()
}

/// The actions rules recorded about an alarm: (rule, outcome).
fn actions_of(service: &Service, alarm_id: &str) -> Vec<Value> {
    let (status, body) = service.get(&format!("/alarms/{alarm_id}/actions"));
    assert_eq!(status, 200, "{body}");
    body["actions"].as_array().unwrap().clone()
}

fn outcomes_of(service: &Service, alarm_id: &str) -> Vec<String> {
    (actions_of(service, alarm_id).iter())
        .map(|a| a["outcome"].as_str().unwrap().to_owned())
        .collect()
}

/// The device's commands sent by rules (command ids starting `rule-`).
fn rule_commands(service: &Service, device: &str) -> Vec<String> {
    let (status, twin) = service.get(&format!("/devices/{device}/commands"));
    assert_eq!(status, 200, "{twin}");
    (twin["commands"]
        .as_array()
        .unwrap_or_else(|| panic!("{twin}"))
        .iter())
    .filter_map(|c| c["command_id"].as_str())
    .filter(|id| id.starts_with("rule-"))
    .map(str::to_owned)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rules_put_a_device_in_safe_mode_hold_their_limit_across_a_restart_dry_run_and_tenants() {
    let started = std::time::Instant::now();
    let rig = Rig::from_env();
    let namespace = Namespace::new("rules");
    let prefix = namespace.device_prefix();
    let provisioning = format!(
        r#"[{{prefix = "{prefix}acme-", tenant = "acme"}}, {{prefix = "{prefix}globex-", tenant = "globex"}}]"#
    );
    let env = [
        ("FLEETWATCH_TENANCY__PROVISIONING", provisioning.as_str()),
        ("FLEETWATCH_RULES__MAX_ACTIONS_PER_DEVICE", "2"),
        ("FLEETWATCH_RULES__TICK_MS", "100"),
    ];
    let roles = "ingest,devices,rules";
    let service = Service::start_async(&rig, &namespace, roles, "a", &env).await;
    let stop = CancellationToken::new();
    let mut fleets = Vec::new();
    for (tenant, count) in [("acme", 3), ("globex", 1)] {
        let mut sim = SimConfig::new(&rig.mqtt_host, rig.mqtt_port, count);
        sim.id_prefix = format!("{prefix}{tenant}-");
        sim.interval_ms = 500;
        sim.anomalies_per_minute = 0.0;
        sim.outages_per_minute = 0.0;
        sim.command_failure_rate = 0.0;
        sim.slow_command_rate = 0.0;
        sim.seed = 18;
        let stop = stop.clone();
        fleets.push(tokio::spawn(async move {
            run_fleet(sim, Arc::new(FleetStats::default()), stop).await
        }));
    }
    let device = |tenant: &str, n: u32| format!("{prefix}{tenant}-{n:05}");
    let (safe, flapping, dry, other) = (
        device("acme", 0),
        device("acme", 1),
        device("acme", 2),
        device("globex", 0),
    );
    blocking(|| {
        eventually(
            Duration::from_secs(30),
            "the devices known, with tenants",
            || {
                [&safe, &flapping, &dry, &other]
                    .iter()
                    .all(|d| {
                        let (status, twin) = service.get(&format!("/devices/{d}"));
                        status == 200 && twin["tenant"].is_string()
                    })
                    .then_some(())
            },
        )
    });
    // acme's rules; the first one's prefix also matches globex's device.
    blocking(|| {
        rule(
            &service,
            json!({"name": "safe mode", "tenant": "acme",
            "condition": {"severity": "critical", "active_for_ms": 10_000, "device_prefix": prefix},
            "action": {"kind": "command", "name": "safe_mode"}}),
        );
        rule(
            &service,
            json!({"name": "flap", "tenant": "acme",
            "condition": {"severity": "minor", "device_prefix": flapping, "metric": "temperature:level"},
            "action": {"kind": "command", "name": "recalibrate", "args": {"simulate": "ok"}}}),
        );
        rule(
            &service,
            json!({"name": "dry", "tenant": "acme", "dry_run": true,
            "condition": {"device_prefix": dry},
            "action": {"kind": "command", "name": "safe_mode"}}),
        );
    });
    let alerts = namespace.topic("iot.alerts");
    let critical = [
        alert_record(&safe, 1, 1, 2.0, false),
        alert_record(&other, 1, 1, 2.0, false),
        alert_record(&dry, 1, 1, 1.1, false),
    ];
    fleetwatch_e2e::produce(&rig.kafka, &alerts, &critical).await;
    // The flapping alarm: episodes raised and cleared, each a new alarm.
    let flap = |from: u32, to: u32| {
        let (rig, alerts, flapping) = (rig.clone(), alerts.clone(), flapping.clone());
        async move {
            for n in from..=to {
                let seq = u64::from(n) * 2;
                let raise = alert_record(&flapping, n, seq, 1.1, false);
                fleetwatch_e2e::produce(&rig.kafka, &alerts, &[raise]).await;
                tokio::time::sleep(Duration::from_millis(800)).await;
                let clear = alert_record(&flapping, n, seq + 1, 1.1, true);
                fleetwatch_e2e::produce(&rig.kafka, &alerts, &[clear]).await;
            }
        }
    };
    flap(1, 3).await;
    blocking(|| {
        eventually(
            Duration::from_secs(10),
            "the flapping episodes decided",
            || {
                let decided: Vec<Vec<String>> = (1..=3)
                    .map(|n| outcomes_of(&service, &format!("{flapping}:{n}")))
                    .collect();
                (decided.iter().all(|d| d.len() == 1)).then_some(decided)
            },
        );
        let performed = (1..=3)
            .filter(|n| outcomes_of(&service, &format!("{flapping}:{n}")) == ["performed"])
            .count();
        assert_eq!(performed, 2, "the limit: two actions per device per hour");
    });

    // A restart: the limit is counted from the journal, so it still holds.
    let status = blocking(|| service.terminate(Duration::from_secs(30)));
    assert!(status.success(), "{status:?}");
    let service = Service::start_async(&rig, &namespace, roles, "a", &env).await;
    flap(4, 5).await;
    blocking(|| {
        let later = eventually(
            Duration::from_secs(20),
            "the later episodes decided",
            || {
                let decided: Vec<Vec<String>> = (4..=5)
                    .map(|n| outcomes_of(&service, &format!("{flapping}:{n}")))
                    .collect();
                (decided.iter().all(|d| d.len() == 1)).then_some(decided)
            },
        );
        assert_eq!(
            later,
            [["limited"], ["limited"]],
            "the limit survives a restart"
        );
        let commands = rule_commands(&service, &flapping);
        assert_eq!(commands.len(), 2, "{commands:?}");

        // The critical alarm that lasted 10 s: safe mode, which the device reports.
        let twin = eventually(Duration::from_secs(30), "the device in safe mode", || {
            let (_, twin) = service.get(&format!("/devices/{safe}"));
            (twin["reported"]["mode"] == "safe").then_some(twin)
        });
        let actions = actions_of(&service, &format!("{safe}:1"));
        assert_eq!(actions.len(), 1, "{actions:?}");
        assert_eq!(actions[0]["outcome"], "performed");
        let lasted = actions[0]["at_ms"].as_i64().unwrap()
            - actions[0]["alarm_created_ms"].as_i64().unwrap();
        assert!(lasted >= 10_000, "acted after {lasted} ms: {actions:?}");
        assert_eq!(rule_commands(&service, &safe).len(), 1, "{twin}");

        // Dry run: recorded, nothing sent. Another tenant's device: nothing at all.
        assert_eq!(outcomes_of(&service, &format!("{dry}:1")), ["dry_run"]);
        assert!(rule_commands(&service, &dry).is_empty());
        assert!(actions_of(&service, &format!("{other}:1")).is_empty());
        assert!(rule_commands(&service, &other).is_empty());
        let (_, twin) = service.get(&format!("/devices/{other}"));
        assert_ne!(twin["reported"]["mode"], "safe", "{twin}");
        let (_, twin) = service.get(&format!("/devices/{dry}"));
        assert_ne!(twin["reported"]["mode"], "safe", "{twin}");
    });
    stop.cancel();
    for fleet in fleets {
        let _ = fleet.await;
    }
    println!("rules e2e: {:.1} s", started.elapsed().as_secs_f64());
}
