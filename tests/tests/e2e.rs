//! End-to-end tests against real Mosquitto and tansu (started by scripts/test), through
//! the fleetwatch binary. Run one at a time: each drives the machine hard.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fleetwatch_e2e::{
    committed_vs_end, eventually, publish_raw, read_topic, Namespace, Rig, Service,
};
use fleetwatch_protocol::{AlertState, DeadLetter, DeviceEventBody};
use fleetwatch_sim::{evaluate, run_fleet, AlertListener, AnomalyKind, FleetStats, SimConfig};
use tokio_util::sync::CancellationToken;

async fn start(rig: &Rig, namespace: &Namespace, roles: &'static str) -> Service {
    Service::start_async(rig, namespace, roles, "a", &[]).await
}

fn telemetry_json(seq: u64) -> Vec<u8> {
    format!(
        r#"{{"ts":{},"seq":{seq},"metrics":{{"temperature":21.5,"power":100.0}}}}"#,
        fleetwatch_protocol::now_ms()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_spike_and_level_shift_raises_exactly_one_alert_within_five_seconds() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("fullpath");
    // Ten readings a second, as in the demo: episodes close after 15 s of calm.
    let env = [("FLEETWATCH_SCORER__CLEAR_AFTER_EVENTS", "150")];
    let service = Service::start_async(&rig, &namespace, "all", "a", &env).await;
    let prefix = namespace.device_prefix();
    let listener = AlertListener::connect(&service.ws_url(), &prefix)
        .await
        .unwrap();

    // The models learn 40 s (400 readings) before the first anomaly: enough for the
    // drift check and the relations between metrics. 50 devices: 500 messages a second
    // through a debug build (at 1,000 the simulator's timers jittered enough to blur gaps).
    let mut sim = SimConfig::new(&rig.mqtt_host, rig.mqtt_port, 50);
    sim.id_prefix = prefix.clone();
    sim.interval_ms = 100;
    sim.warmup_secs = 40.0;
    sim.duration_secs = Some(75.0);
    sim.anomalies_per_minute = 80.0;
    sim.seed = 11;
    let stats = Arc::new(FleetStats::default());
    let injected = run_fleet(sim, stats.clone(), CancellationToken::new())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;

    let alerts = listener.alerts();
    let evaluation = evaluate(&injected, &alerts, 5_000);
    println!(
        "evaluation: {}",
        serde_json::to_string(&evaluation).unwrap()
    );
    let mut checked = 0;
    for (anomaly, &matched) in injected.iter().zip(&evaluation.matches) {
        if !matches!(anomaly.kind, AnomalyKind::Spike | AnomalyKind::LevelShift) {
            continue;
        }
        checked += 1;
        let of_device: Vec<_> = alerts
            .iter()
            .filter(|a| a.alert.device_id.as_str() == anomaly.device)
            .map(|a| (a.alert.state, a.alert.event_ts, &a.alert.reason))
            .collect();
        let other_anomalies: Vec<_> = injected
            .iter()
            .filter(|a| a.device == anomaly.device)
            .map(|a| (a.kind, a.start_ms, a.end_ms))
            .collect();
        assert_eq!(
            matched, 1,
            "{anomaly:?} got {matched} alerts; the device's alerts: {of_device:?}; its anomalies: {other_anomalies:?}"
        );
        let first = alerts
            .iter()
            .find(|received| {
                received.alert.state == AlertState::Raised
                    && received.alert.device_id.as_str() == anomaly.device
                    && received.alert.event_ts >= anomaly.start_ms
            })
            .unwrap();
        let delay = first.received_ms - anomaly.start_ms;
        assert!(delay <= 5_000, "{anomaly:?} alerted after {delay} ms");
        assert!(!first.alert.reason.is_empty());
    }
    assert!(
        checked >= 5,
        "only {checked} spikes and level shifts injected: test too weak"
    );
    // Faults that show slowly or only between metrics: most of them are found.
    let (injected_slow, found_slow) = [AnomalyKind::Drift, AnomalyKind::Decorrelation]
        .iter()
        .filter_map(|kind| evaluation.by_kind.get(kind))
        .fold((0, 0), |(i, f), &(injected, found)| {
            (i + injected, f + found)
        });
    assert!(
        injected_slow >= 4 && found_slow * 10 >= injected_slow * 7,
        "drifts and decorrelations: {found_slow} of {injected_slow} found"
    );

    // Every device went through the devices role.
    let (status, body) = service.get(&format!("/devices?prefix={prefix}&limit=1000"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["devices"].as_array().map(Vec::len), Some(50), "{body}");

    // Every telemetry message was acknowledged by the broker and reached iot.telemetry.
    assert_eq!(stats.unacknowledged_at_exit.load(Ordering::Relaxed), 0);
    assert_eq!(stats.reconnects.load(Ordering::Relaxed), 0);
    let published = stats.published.load(Ordering::Relaxed);
    let stored: HashSet<(String, u64)> = read_topic(&rig.kafka, &namespace.topic("iot.telemetry"))
        .into_iter()
        .filter_map(|record| {
            let event = record.device_event().unwrap();
            match event.body {
                DeviceEventBody::Telemetry(t) => Some((event.device_id.to_string(), t.seq)),
                _ => None,
            }
        })
        .collect();
    assert_eq!(
        stored.len() as u64,
        published,
        "published and acknowledged vs stored in Kafka"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_goes_to_the_dead_letter_topic_with_a_reason() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("dlq");
    let mut service = start(&rig, &namespace, "all").await;
    let p = namespace.device_prefix();
    let ts = fleetwatch_protocol::now_ms();
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (
            format!("devices/{p}json/telemetry"),
            b"{not json".to_vec(),
            "key must be a string",
        ),
        (
            format!("devices/{p}types/telemetry"),
            format!(r#"{{"ts":{ts},"seq":1,"metrics":{{"t":"hot"}}}}"#).into_bytes(),
            "invalid type: string",
        ),
        (
            format!("devices/{p}nan/telemetry"),
            format!(r#"{{"ts":{ts},"seq":1,"metrics":{{"t":NaN}}}}"#).into_bytes(),
            "expected value",
        ),
        (
            format!("devices/{p}inf/telemetry"),
            format!(r#"{{"ts":{ts},"seq":1,"metrics":{{"t":1e999}}}}"#).into_bytes(),
            "number out of range",
        ),
        (
            format!("devices/{p}big/telemetry"),
            vec![b' '; 100 * 1024],
            "the limit is 65536",
        ),
        (
            format!("devices/{p}x/bogus"),
            telemetry_json(1),
            "unknown kind \"bogus\"",
        ),
        (
            format!("devices/{p}b@d/telemetry"),
            telemetry_json(1),
            "bad device id",
        ),
        (
            format!("devices/{p}missing/telemetry"),
            format!(r#"{{"ts":{ts},"metrics":{{"t":1}}}}"#).into_bytes(),
            "missing field `seq`",
        ),
    ];
    let mut messages: Vec<(String, Vec<u8>)> = cases
        .iter()
        .map(|(t, p, _)| (t.clone(), p.clone()))
        .collect();
    messages.push((format!("devices/{p}good/telemetry"), telemetry_json(1)));
    publish_raw(&rig, &format!("{p}publisher"), &messages).await;

    let dlq = namespace.topic("iot.dlq");
    let letters: Vec<DeadLetter> = eventually(Duration::from_secs(30), "dead letters", || {
        let letters: Vec<DeadLetter> = read_topic(&rig.kafka, &dlq)
            .into_iter()
            .map(|record| serde_json::from_str(&record.payload).unwrap())
            .collect();
        (letters.len() >= cases.len()).then_some(letters)
    });
    assert_eq!(letters.len(), cases.len(), "{letters:#?}");
    for (topic, _, expected) in &cases {
        let letter = letters
            .iter()
            .find(|letter| &letter.topic == topic)
            .unwrap_or_else(|| panic!("no dead letter for {topic}"));
        assert!(
            letter.reason.contains(expected),
            "{topic}: {:?} lacks {expected:?}",
            letter.reason
        );
    }

    // The valid message went through, and the service is still up.
    let good = format!("{p}good");
    eventually(Duration::from_secs(30), "the valid message", || {
        let (status, body) = service.get(&format!("/devices/{good}"));
        (status == 200 && body["events"] == 1).then_some(())
    });
    assert!(service.is_running());
    let (status, _) = service.get("/readyz");
    assert_eq!(status, 200);
    let (status, body) = service.get("/devices/b@d");
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_with_offsets_committed() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("sigterm");
    let service = start(&rig, &namespace, "all").await;
    let device = format!("{}dev", namespace.device_prefix());
    let messages: Vec<(String, Vec<u8>)> = (1..=40)
        .map(|seq| (format!("devices/{device}/telemetry"), telemetry_json(seq)))
        .collect();
    publish_raw(&rig, &format!("{device}-pub"), &messages).await;

    let consumed = |role: &str| -> u64 {
        let (_, metrics) = service.get("/metrics");
        let needle = format!("fleetwatch_consumed_records_total{{role=\"{role}\"}} ");
        metrics
            .as_str()
            .unwrap_or_default()
            .lines()
            .find_map(|line| {
                line.strip_prefix(&needle)
                    .map(|n| n.trim().parse().unwrap())
            })
            .unwrap_or(0)
    };
    eventually(
        Duration::from_secs(30),
        "every role consumed the messages",
        || {
            ["devices", "trainer", "scorer"]
                .iter()
                .all(|role| consumed(role) >= 40)
                .then_some(())
        },
    );

    let status = tokio::task::spawn_blocking(move || service.terminate(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");

    let topic = namespace.topic("iot.telemetry");
    for role in ["devices", "trainer", "scorer"] {
        let group = format!("{}-{role}", namespace.name);
        for (partition, committed, end) in committed_vs_end(&rig.kafka, &group, &topic) {
            if end > 0 {
                assert_eq!(
                    committed,
                    Some(end),
                    "{role} partition {partition}: committed vs end"
                );
            }
        }
    }
}
