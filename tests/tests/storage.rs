//! The storage role and the dashboards against real servers: Mosquitto, tansu,
//! VictoriaMetrics and Prometheus (started by scripts/test). Every panel query of every
//! dashboard is executed on the server its data source names, over the time of a real
//! run, and must answer with fleetwatch's series.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetwatch_e2e::brokers::OwnBrokers;
use fleetwatch_e2e::tsdb::{
    dashboard_queries, fill, force_flush, label_values, largest_sample, query, query_range,
    stored_readings, telemetry_readings, DashboardQuery, OwnTsdb, TsdbRig,
};
use fleetwatch_e2e::{eventually, publish_raw, Namespace, Rig, Service};
use fleetwatch_sim::{run_fleet, FleetStats, SimConfig};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

fn dashboards_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

fn now_secs() -> f64 {
    fleetwatch_protocol::now_ms() as f64 / 1000.0
}

/// A WebSocket client that reads one frame every 50 ms through a tiny receive buffer:
/// when alerts come faster, the service's queue for it (one alert) overflows, and the
/// alerts it missed are counted. Ends when dropped.
async fn slow_client(ws: std::net::SocketAddr) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let stream = socket.connect(ws).await.unwrap();
    let (mut client, _) = tokio_tungstenite::client_async(format!("ws://{ws}/"), stream)
        .await
        .expect("WebSocket handshake");
    tokio::spawn(async move {
        while let Some(Ok(_)) = client.next().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// A burst of alerts of one device on `iot.alerts`, as a scorer catching up after a
/// pause would send them: faster than a slow WebSocket client reads.
async fn alert_burst(rig: &Rig, namespace: &Namespace, device: &str, count: usize) {
    let now = fleetwatch_protocol::now_ms();
    let records: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| {
            let alert = json!({
                "alert_id": format!("{device}:{now}"), "device_id": device,
                "state": if i % 2 == 0 { "raised" } else { "cleared" },
                "score": 0.9, "threshold": 0.5, "reason": "burst", "contributors": [],
                "event_ts": now - (count - i) as i64, "event_seq": i, "emitted_ms": now,
                "model_version": 1
            });
            (device.to_owned(), alert.to_string().into_bytes())
        })
        .collect();
    fleetwatch_e2e::produce(&rig.kafka, &namespace.topic("iot.alerts"), &records).await;
}

/// The simulated fleet of the run: anomalies early and often, so alerts are many.
fn fleet(rig: &Rig, prefix: &str, devices: usize, secs: f64, warmup: f64) -> SimConfig {
    let mut sim = SimConfig::new(&rig.mqtt_host, rig.mqtt_port, devices);
    sim.id_prefix = prefix.to_owned();
    sim.interval_ms = 100;
    sim.warmup_secs = warmup;
    sim.duration_secs = Some(secs);
    sim.anomalies_per_minute = 120.0;
    sim.seed = 5;
    sim
}

/// Poll until what VictoriaMetrics stored for `prefix` equals what reached
/// `iot.telemetry`; returns both.
fn stored_equals_sent(
    kafka: &str,
    topic: &str,
    tsdb: std::net::SocketAddr,
    prefix: &str,
) -> BTreeMap<(String, String), u64> {
    let sent = telemetry_readings(kafka, topic, prefix);
    assert!(!sent.is_empty(), "no telemetry reached {topic}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = stored_readings(tsdb, prefix);
        if stored == sent {
            return sent;
        }
        if Instant::now() > deadline {
            let sent_total: u64 = sent.values().sum();
            let stored_total: u64 = stored.values().sum();
            let differing: Vec<_> = sent
                .iter()
                .filter(|(key, count)| stored.get(*key) != Some(count))
                .take(5)
                .map(|(key, count)| (key.clone(), *count, stored.get(key).copied()))
                .collect();
            panic!("stored {stored_total} readings, {sent_total} reached Kafka; first differences (key, sent, stored): {differing:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Resolve a `label_values(selector, label)` variable query, with its regex (one group).
fn resolve_variable(
    server: std::net::SocketAddr,
    variable: &Value,
    vars: &BTreeMap<String, String>,
) -> Vec<String> {
    let definition = variable["query"]["query"].as_str().unwrap();
    let inner = definition
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("variable query {definition:?} is not label_values(...)"));
    let (selector, label) = inner.rsplit_once(',').unwrap();
    let selector = fill(selector.trim(), vars, 0);
    let values = label_values(server, &selector, label.trim());
    let Some(regex) = variable["regex"].as_str() else {
        return values;
    };
    // The dashboards' regexes are `/^prefix(.+)$/`.
    let prefix = regex.trim_start_matches("/^").split("(.+)").next().unwrap();
    values
        .iter()
        .filter_map(|value| value.strip_prefix(prefix).map(str::to_owned))
        .collect()
}

/// Run one dashboard query with `vars`; the result must hold series.
fn run_query(
    query_def: &DashboardQuery,
    servers: &BTreeMap<&str, std::net::SocketAddr>,
    vars: &BTreeMap<String, String>,
    (start, end): (f64, f64),
) -> Vec<Value> {
    let server = *servers
        .get(query_def.datasource.as_str())
        .unwrap_or_else(|| panic!("{query_def:?}: unknown data source"));
    assert!(
        !query_def.expr.contains("vector("),
        "{query_def:?}: constant fallback"
    );
    let range_secs = (end - start).ceil() as u64;
    let expr = fill(&query_def.expr, vars, range_secs);
    assert!(
        !expr.contains('$'),
        "{query_def:?}: unresolved variable in {expr}"
    );
    let result = if query_def.instant {
        query(server, &expr, end)
    } else {
        query_range(server, &expr, start, end, 5)
    };
    assert!(
        !result.is_empty(),
        "{} / {}: `{expr}` returned no series",
        query_def.dashboard,
        query_def.title
    );
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_panel_answers_with_the_run_s_data() {
    let (rig, tsdb) = (Rig::from_env(), TsdbRig::from_env());
    let namespace = Namespace::new("dashboards");
    let url = format!("http://{}", tsdb.tsdb);
    let env = [
        ("FLEETWATCH_STORAGE__URL", url.as_str()),
        ("FLEETWATCH_STORAGE__FLUSH_INTERVAL_MS", "200"),
        ("FLEETWATCH_ALERTS__CLIENT_QUEUE", "1"),
        ("FLEETWATCH_SCORER__CLEAR_AFTER_EVENTS", "50"),
    ];
    let service = Service::start_async(&rig, &namespace, "all", "a", &env).await;
    let _scraped = tsdb.scrape(&namespace.name, service.http);
    let start = now_secs();
    let prefix = namespace.device_prefix();
    let slow = slow_client(service.ws.unwrap()).await;

    let sim = fleet(&rig, &prefix, 30, 55.0, 30.0);
    let fleet_run = tokio::spawn(run_fleet(
        sim,
        Arc::new(FleetStats::default()),
        CancellationToken::new(),
    ));
    // Dead letters: a payload that is not JSON, and one for a bad device id.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let bad = vec![
        (
            format!("devices/{prefix}bad/telemetry"),
            b"not json".to_vec(),
        ),
        ("devices/bad id!/telemetry".to_owned(), b"{}".to_vec()),
    ];
    // Twice: Prometheus' increase() needs a counter already seen before it grows.
    publish_raw(&rig, &format!("{}-bad", namespace.name), &bad).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    publish_raw(&rig, &format!("{}-bad2", namespace.name), &bad).await;
    fleet_run.await.unwrap().unwrap();
    alert_burst(&rig, &namespace, &format!("{prefix}burst"), 2_000).await;
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(30),
            "the slow client to miss alerts",
            || (service.metric("fleetwatch_ws_alerts_dropped_total") > 0.0).then_some(()),
        )
    });
    slow.abort();

    // The device with the most alerts, as the overview's panel finds it, gets a command
    // that expires: its fleet has stopped, so nobody answers.
    let (vm, service_ref) = (tsdb.tsdb, &service);
    let device = tokio::task::block_in_place(|| {
        force_flush(vm);
        let top = query(
            vm,
            &format!(
                r#"topk(1, sum by (device) (count_over_time(fleetwatch_alert_score{{device=~"{prefix}[0-9]+"}}[1h])))"#
            ),
            now_secs(),
        );
        let device = top.first().expect("some alerts were stored")["metric"]["device"]
            .as_str()
            .unwrap()
            .to_owned();
        // Two, a few scrapes apart: Prometheus' increase() needs the counter seen first.
        for _ in 0..2 {
            let (status, _, command) = service_ref.request(
                "POST",
                &format!("/devices/{device}/commands"),
                &[],
                Some(&json!({"name": "blink", "ttl_ms": 1000})),
            );
            assert_eq!(status, 201, "{command}");
            let id = command["command_id"].as_str().unwrap().to_owned();
            eventually(Duration::from_secs(20), "the command to expire", || {
                let (_, body) = service_ref.get(&format!("/devices/{device}/commands/{id}"));
                (body["state"] == "expired").then_some(())
            });
            std::thread::sleep(Duration::from_secs(3));
        }
        device
    });

    tokio::task::block_in_place(|| {
        let sent = stored_equals_sent(&rig.kafka, &namespace.topic("iot.telemetry"), vm, &prefix);
        println!(
            "stored every reading: {} (device, metric) series, {} samples",
            sent.len(),
            sent.values().sum::<u64>()
        );
        // Prometheus scrapes every second: let it see the last counts.
        eventually(
            Duration::from_secs(20),
            "the command's expiry in the store and Prometheus",
            || {
                force_flush(vm);
                let stored = query(
                    vm,
                    &format!(r#"fleetwatch_command_step{{device="{device}", state="expired"}}"#),
                    now_secs(),
                );
                let scraped = query(
                    tsdb.prometheus,
                    r#"fleetwatch_command_transitions_total{state="expired"}"#,
                    now_secs(),
                );
                (!stored.is_empty() && largest_sample(&scraped).unwrap_or(0.0) > 0.0).then_some(())
            },
        );
        std::thread::sleep(Duration::from_secs(3));
        check_every_panel(&tsdb, &device, (start, now_secs()));
    });
}

/// Every query of every dashboard, with `$device` set and each `$metric` value.
fn check_every_panel(tsdb: &TsdbRig, device: &str, range: (f64, f64)) {
    let servers: BTreeMap<&str, std::net::SocketAddr> = [
        ("fleetwatch-tsdb", tsdb.tsdb),
        ("fleetwatch-prometheus", tsdb.prometheus),
    ]
    .into();
    let device_json: Value = serde_json::from_str(
        &std::fs::read_to_string(dashboards_dir().join("device.json")).unwrap(),
    )
    .unwrap();
    let variables = device_json["templating"]["list"].as_array().unwrap();
    let mut vars = BTreeMap::new();
    let devices = resolve_variable(tsdb.tsdb, &variables[0], &vars);
    assert!(
        devices.iter().any(|d| d == device),
        "{device} not among {devices:?}"
    );
    vars.insert("device".to_owned(), device.to_owned());
    let metrics = resolve_variable(tsdb.tsdb, &variables[1], &vars);
    assert!(metrics.len() >= 2, "metrics of {device}: {metrics:?}");
    let mut executed = 0;
    let mut results: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for query_def in dashboard_queries(&dashboards_dir()) {
        let values: Vec<Option<&String>> = match &query_def.repeat {
            Some(_) => metrics.iter().map(Some).collect(),
            None => vec![None],
        };
        for metric in values {
            let mut vars = vars.clone();
            if let Some(metric) = metric {
                vars.insert("metric".to_owned(), metric.clone());
            }
            let result = run_query(&query_def, &servers, &vars, range);
            results
                .entry(query_def.title.clone())
                .or_default()
                .extend(result);
            executed += 1;
        }
    }
    println!("executed {executed} dashboard queries, every one answered with series");
    // The rare events have real data, not just a series at zero.
    for title in [
        "Dead letters by reason",
        "WebSocket frames dropped (slow clients)",
        "Commands by state entered",
    ] {
        let largest = largest_sample(&results[title]).unwrap_or(0.0);
        assert!(largest > 0.0, "{title}: nothing above zero");
    }
    let commands = &results["Commands and their outcomes"];
    assert!(
        commands.iter().any(|s| s["metric"]["state"] == "expired"),
        "no expired command in {commands:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_outage_holds_the_role_and_every_reading_is_stored_once() {
    // Brokers of its own, tansu on sqlite: the shared tansu's memory engine answers a
    // fetch from inside a record batch with the batches after it (tansu 0.6.0,
    // docs/reliability.md), and this test resumes paused partitions mid-batch.
    // Under the scratch folder, which scripts/test empties; dropped (killed) last.
    let tsdb_rig = TsdbRig::from_env();
    let dir = tsdb_rig
        .scratch
        .join(fleetwatch_e2e::unique("outage-brokers"));
    let brokers = tokio::task::block_in_place(|| OwnBrokers::start(dir));
    let rig = brokers.rig.clone();
    let namespace = Namespace::new("outage");
    let data = tsdb_rig.scratch.join(&namespace.name);
    let mut tsdb = OwnTsdb::start(&tsdb_rig.victoria_metrics_bin, data);
    let url = tsdb.url();
    let env = [
        ("FLEETWATCH_STORAGE__URL", url.as_str()),
        ("FLEETWATCH_STORAGE__FLUSH_INTERVAL_MS", "200"),
        ("FLEETWATCH_STORAGE__BATCH_POINTS", "500"),
    ];
    // Ingest apart, so the storage role can crash while readings keep arriving.
    let _ingest = Service::start_async(&rig, &namespace, "ingest", "ingest", &env).await;
    let service = Service::start_async(&rig, &namespace, "storage", "a", &env).await;
    let prefix = namespace.device_prefix();
    let sim = fleet(&rig, &prefix, 20, 50.0, 1_000.0);
    let fleet_run = tokio::spawn(run_fleet(
        sim,
        Arc::new(FleetStats::default()),
        CancellationToken::new(),
    ));
    tokio::time::sleep(Duration::from_secs(8)).await;

    tokio::task::block_in_place(|| {
        assert_eq!(service.metric("fleetwatch_storage_up"), 1.0);
        tsdb.stop();
        // The outage shows: the store is down, the role holds, its lag grows.
        eventually(Duration::from_secs(20), "the outage in the metrics", || {
            let lag = lag_of(&service, "storage");
            let (_, ready) = service.get("/readyz");
            let down = service.metric("fleetwatch_storage_up") == 0.0
                && ready["roles"]["storage"]["detail"]["store_up"] == false;
            (down && lag > 1_000.0).then_some(lag)
        });
        assert!(service.metric("fleetwatch_storage_write_errors_total") > 0.0);
    });
    // The held role keeps polling with its partitions paused, so a member joining the
    // group during the outage gets its share: the rebalance does not wait for the store.
    let joiner = Service::start_async(&rig, &namespace, "storage", "joiner", &env).await;
    tokio::task::block_in_place(|| {
        let assigned = r#"fleetwatch_assigned_partitions{role="storage"}"#;
        let shares = eventually(
            Duration::from_secs(30),
            "a rebalance during the outage",
            || {
                let shares = (service.metric(assigned), joiner.metric(assigned));
                (shares.0 > 0.0 && shares.1 > 0.0).then_some(shares)
            },
        );
        println!("during the outage, a joining member got its share: {shares:?} partitions");
        assert_eq!(
            service.metric("fleetwatch_storage_up"),
            0.0,
            "the store came back too soon"
        );
        tsdb.restart();
        eventually(Duration::from_secs(30), "the store to be up again", || {
            (service.metric("fleetwatch_storage_up") == 1.0).then_some(())
        });
        std::thread::sleep(Duration::from_secs(2));
    });
    // A crash without a final commit: the next instance replays what was written but
    // not committed, which the store must overwrite, not add again.
    service.kill();
    joiner.kill();
    // tansu keeps a member that timed out in the group until another joins: start the
    // replacement once the session timeout (10 s) has passed (docs/architecture.md).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let service = Service::start_async(&rig, &namespace, "storage", "b", &env).await;
    fleet_run.await.unwrap().unwrap();
    tokio::task::block_in_place(|| {
        let sent = stored_equals_sent(
            &rig.kafka,
            &namespace.topic("iot.telemetry"),
            tsdb.address,
            &prefix,
        );
        println!(
            "after the outage, every reading stored once: {} samples",
            sent.values().sum::<u64>()
        );
        eventually(Duration::from_secs(20), "the lag to be gone", || {
            (lag_of(&service, "storage") == 0.0).then_some(())
        });
    });
}

/// The storage role's lag over every partition, from `/metrics`.
fn lag_of(service: &Service, role: &str) -> f64 {
    let (_, text) = fleetwatch_e2e::http_get(service.http, "/metrics").unwrap();
    text.lines()
        .filter(|line| {
            line.starts_with("fleetwatch_consumer_lag{")
                && line.contains(&format!("role=\"{role}\""))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
