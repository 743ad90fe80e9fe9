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
        let (_, twin) = restarted.get(&format!("/devices/{device}"));
        assert!(
            twin["alarms"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["alarm_id"] == cleared.as_str()),
            "{twin}"
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
