//! What the storage role costs and sustains against VictoriaMetrics: `COUNT` readings
//! (three metrics each, 1,000 devices) are put on `iot.telemetry` first, then `fleetwatch
//! run --roles storage` starts and drains them; reported: readings per second from its
//! first to its last confirmed point, and the process's CPU time per reading (user +
//! system, from /proc), start-up included.
//!
//! `-- scores SECS`: what publishing every score costs. The pipeline up to the scorer
//! (`ingest,devices,trainer,scorer`) runs twice on 300 simulated devices reading every
//! 100 ms for SECS seconds, with `scorer.publish_scores` on and off; reported: the
//! process's CPU time per reading and the score records published. docs/benchmarks.md
//! has the figures.
//!
//! Needs the variables of scripts/test (FLEETWATCH_TEST_KAFKA, FLEETWATCH_TEST_TSDB_URL,
//! FLEETWATCH_BIN): `cargo run --release -p fleetwatch-e2e --example storage_bench -- [COUNT]`

use std::time::{Duration, Instant};

use fleetwatch_e2e::load::cpu_seconds;
use fleetwatch_e2e::{produce, Namespace, Rig, Service};

fn reading(device: usize, seq: u64, ts: i64) -> Vec<u8> {
    format!(
        r#"{{"device_id":"bench-{device:05}","received_ms":{ts},"body":{{"kind":"telemetry","ts":{ts},"seq":{seq},"metrics":{{"temperature":{t:.2},"humidity":{h:.2},"power":{p:.1}}}}}}}"#,
        t = 20.0 + (seq % 17) as f64 * 0.1,
        h = 40.0 + (seq % 13) as f64 * 0.2,
        p = 100.0 + (seq % 7) as f64,
    )
    .into_bytes()
}

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("scores") {
        let secs: f64 = std::env::args().nth(2).map_or(60.0, |a| a.parse().unwrap());
        for publish in ["true", "false"] {
            score_cost(publish, secs).await;
        }
        return;
    }
    let count: usize = std::env::args()
        .nth(1)
        .map_or(200_000, |a| a.parse().unwrap());
    let rig = Rig::from_env();
    let tsdb = std::env::var("FLEETWATCH_TEST_TSDB_URL").expect("FLEETWATCH_TEST_TSDB_URL");
    let namespace = Namespace::new("storage-bench");
    let start_ms = fleetwatch_protocol::now_ms() - count as i64;
    let records: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| {
            let device = i % 1_000;
            let key = format!("bench-{device:05}");
            (
                key,
                reading(device, (i / 1_000) as u64, start_ms + i as i64),
            )
        })
        .collect();
    // Topics are created by a first start of the role.
    let env = [("FLEETWATCH_STORAGE__URL", tsdb.as_str())];
    let first = Service::start_async(&rig, &namespace, "storage", "warm", &env).await;
    first.kill();
    let produced = Instant::now();
    for chunk in records.chunks(50_000) {
        produce(&rig.kafka, &namespace.topic("iot.telemetry"), chunk).await;
    }
    println!(
        "produced {count} readings in {:.1} s",
        produced.elapsed().as_secs_f64()
    );
    // A group of its own, apart from the first start's (a fresh group reads from the start).
    let group_prefix = format!("bench-{}-", namespace.name);
    let env = [
        ("FLEETWATCH_STORAGE__URL", tsdb.as_str()),
        ("FLEETWATCH_KAFKA__GROUP_PREFIX", &group_prefix),
    ];
    let service = Service::spawn(&rig, &namespace, "storage", "bench", &env);
    let pid = service.pid();
    let (cpu_before, started) = (cpu_seconds(pid), Instant::now());
    let metric = r#"fleetwatch_storage_points_total{measurement="fleetwatch_telemetry"}"#;
    let (mut first_point, mut last) = (None, 0.0);
    while last < count as f64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = service.metric(metric);
        if last > 0.0 && first_point.is_none() {
            first_point = Some((Instant::now(), last, cpu_seconds(pid)));
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "stored only {last}"
        );
    }
    let (cpu_after, done) = (cpu_seconds(pid), Instant::now());
    let (first_at, first_count, _) = first_point.unwrap();
    let rate = (count as f64 - first_count) / (done - first_at).as_secs_f64();
    let cpu_per_reading = (cpu_after - cpu_before) / count as f64;
    println!(
        "storage role: {count} readings stored in {:.1} s from start; sustained {rate:.0} readings/s; CPU {:.1} s in total, {:.1} µs per reading",
        (done - started).as_secs_f64(),
        cpu_after - cpu_before,
        cpu_per_reading * 1e6
    );
}

/// One run of the pipeline up to the scorer with `publish_scores` set as given.
async fn score_cost(publish: &str, secs: f64) {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    let rig = Rig::from_env();
    let namespace = Namespace::new("score-cost");
    let env = [("FLEETWATCH_SCORER__PUBLISH_SCORES", publish)];
    let roles = "ingest,devices,trainer,scorer";
    let service = Service::start_async(&rig, &namespace, roles, "a", &env).await;
    let pid = service.pid();
    let mut sim = fleetwatch_sim::SimConfig::new(&rig.mqtt_host, rig.mqtt_port, 300);
    sim.id_prefix = namespace.device_prefix();
    sim.interval_ms = 100;
    sim.duration_secs = Some(secs);
    sim.anomalies_per_minute = 0.0;
    let stats = Arc::new(fleetwatch_sim::FleetStats::default());
    let cpu_before = cpu_seconds(pid);
    fleetwatch_sim::run_fleet(
        sim,
        stats.clone(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu = cpu_seconds(pid) - cpu_before;
    let readings = stats.published.load(Ordering::Relaxed) as f64;
    println!(
        "publish_scores={publish}: {readings} readings, {} scored, {} scores published; CPU {cpu:.1} s, {:.1} µs per reading",
        service.metric("fleetwatch_events_scored_total"),
        service.metric("fleetwatch_scores_published_total"),
        cpu / readings * 1e6
    );
}
