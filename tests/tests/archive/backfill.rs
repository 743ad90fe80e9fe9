//! `fleetwatch backfill` over a compressed day of simulated history (one reading a
//! simulated minute per device, Kafka timestamps spread over a day, produced in seconds):
//! - the baseline's alerts are the alerts (device, opening and closing sequence numbers)
//!   that the models crate's replay (the replay CLI's pairing and episode machine)
//!   decides on the same readings;
//! - a range read half from the archive (S3, moto) and half from Kafka gives the same
//!   report as one read from Kafka alone;
//! - the verdict figures are those computed from the verdicts this test gave (acknowledged
//!   alarms of the live pipeline, over REST).

use fleetwatch_protocol::MetricValues;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fleetwatch_e2e::{committed_vs_end, eventually, Namespace, Rig, Service};
use fleetwatch_models::production;
use fleetwatch_models::replay::{episodes, replay};
use serde_json::{json, Value};

use super::{archive_env, Setup, BUCKET, PREFIX};

const DEVICES: usize = 6;
/// One reading a simulated minute: a day.
const READINGS: u64 = 1_440;
const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
const WARMUP_MS: i64 = 2 * 3_600_000;
const METRICS: [&str; 8] = [
    "temp",
    "pressure",
    "vibration",
    "current",
    "voltage",
    "humidity",
    "flow",
    "rpm",
];
/// Injected faults: (device, first reading, readings, metric, size in noise units).
const FAULTS: [(usize, u64, u64, usize, f64); 4] = [
    (1, 400, 4, 0, 25.0),
    (2, 900, 60, 3, 14.0),
    (3, 1_100, 3, 5, 30.0),
    (4, 600, 40, 1, 12.0),
];

/// xorshift64*, for the test's own seeded noise.
struct Noise(u64);

impl Noise {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn gaussian(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// One reading: (device, seq, Kafka timestamp = device clock, metrics).
type Reading = (String, u64, i64, MetricValues);

/// The day: every device's readings, in production order (by minute).
fn simulate(prefix: &str, day_start: i64) -> Vec<Reading> {
    let mut noise = Noise(0x5EED_0019);
    let mut readings = Vec::new();
    for i in 0..READINGS {
        for device in 0..DEVICES {
            let daily = (std::f64::consts::TAU * i as f64 / READINGS as f64).sin();
            let metrics = METRICS
                .iter()
                .enumerate()
                .map(|(k, name)| {
                    let base = 20.0 + 10.0 * k as f64 + 2.0 * daily * (k % 3) as f64;
                    let fault: f64 = FAULTS
                        .iter()
                        .filter(|f| f.0 == device && f.3 == k && (f.1..f.1 + f.2).contains(&i))
                        .map(|f| f.4)
                        .sum();
                    ((*name).into(), base + noise.gaussian() + fault)
                })
                .collect();
            let ts = day_start + i as i64 * MINUTE_MS + device as i64 * 1_000;
            readings.push((format!("{prefix}d{device:02}"), i + 1, ts, metrics));
        }
    }
    readings
}

/// Produce readings to `topic` as ingest would, with their Kafka timestamps.
async fn produce(kafka: &str, topic: &str, readings: &[Reading]) {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .create()
        .unwrap();
    for chunk in readings.chunks(2_000) {
        let deliveries: Vec<_> = chunk
            .iter()
            .map(|(device, seq, ts, metrics)| {
                let event = json!({
                    "device_id": device, "received_ms": ts,
                    "body": {"kind": "telemetry", "ts": ts, "seq": seq, "metrics": metrics},
                });
                let payload = event.to_string();
                producer
                    .send_result(
                        FutureRecord::to(topic)
                            .key(device)
                            .payload(&payload)
                            .timestamp(*ts),
                    )
                    .map_err(|(error, _)| error)
                    .expect("queued")
            })
            .collect();
        for delivery in deliveries {
            delivery.await.unwrap().expect("delivered");
        }
    }
}

/// An alert as compared: (opening seq, closing seq).
type Span = (u64, Option<u64>);

/// Each device's alerts.
type Alerts = BTreeMap<String, Vec<Span>>;

/// The alerts the models crate's replay decides for each device with `model`, opened
/// after the warm-up.
fn expected_alerts(
    readings: &[Reading],
    model: &production::Config,
    counted_from: i64,
) -> BTreeMap<String, Vec<Span>> {
    let mut by_device: BTreeMap<&str, Vec<&Reading>> = BTreeMap::new();
    for reading in readings {
        by_device.entry(&reading.0).or_default().push(reading);
    }
    let rules = production::episode_rules(model).check().unwrap();
    let mut alerts = BTreeMap::new();
    for (device, rows) in by_device {
        let scores = replay(
            production::trainer(model),
            production::scorer(),
            production::DEFAULT_PUBLISH_EVERY,
            rows.iter().map(|r| (r.2, r.3.clone())),
        );
        let spans: Vec<Span> = episodes(&scores, &rules)
            .into_iter()
            .filter(|e| rows[e.opened].2 >= counted_from)
            .map(|e| (rows[e.opened].1, e.closed.map(|c| rows[c].1)))
            .collect();
        if !spans.is_empty() {
            alerts.insert(device.to_owned(), spans);
        }
    }
    alerts
}

/// The alerts of one configuration in a report.
fn reported_alerts(report: &Value, which: &str) -> BTreeMap<String, Vec<Span>> {
    let mut alerts = BTreeMap::new();
    for (device, comparison) in report["per_device"].as_object().unwrap() {
        let spans: Vec<Span> = (comparison[which].as_array().unwrap().iter())
            .map(|a| (a["opened_seq"].as_u64().unwrap(), a["closed_seq"].as_u64()))
            .collect();
        if !spans.is_empty() {
            alerts.insert(device.clone(), spans);
        }
    }
    alerts
}

/// Run `fleetwatch backfill`; its JSON report.
fn backfill(rig: &Rig, env: &[(String, String)], args: &[&str], report: &Path) -> Value {
    let output = Command::new(&rig.fleetwatch_bin)
        .arg("backfill")
        .args(args)
        .arg("--report")
        .arg(report)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "backfill {args:?}: {table}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("backfill {args:?}:\n{table}");
    serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap()
}

/// The report without what depends on where it was read from and how fast.
fn comparable(report: &Value) -> Value {
    let mut report = report.clone();
    for volatile in ["source", "seconds", "events_per_second"] {
        report.as_object_mut().unwrap().remove(volatile);
    }
    report
}

/// Whether the reading `seq` of `device` was in a fault.
fn in_fault(device: &str, first: u64, last: u64) -> bool {
    FAULTS.iter().any(|&(d, start, len, _, _)| {
        device.ends_with(&format!("d{d:02}")) && first <= start + len && start < last
    })
}

/// The namespace's alarms, once their number stopped changing.
fn settled_alarms(service: &Service, prefix: &str) -> Vec<Value> {
    let list = || {
        let (status, page) = service.get(&format!("/alarms?device_prefix={prefix}&limit=500"));
        assert_eq!(status, 200, "{page}");
        page["alarms"].as_array().unwrap().clone()
    };
    // What changes while the alerts role catches up; `updated_ms` also moves on an
    // acknowledgement.
    let state = |alarms: &[Value]| -> Vec<(Value, Value, Value, Value)> {
        (alarms.iter())
            .map(|a| {
                let fields = ["alarm_id", "last_alert_seq", "active", "verdict"];
                let [id, last, active, verdict] = fields.map(|f| a[f].clone());
                (id, last, active, verdict)
            })
            .collect()
    };
    let mut seen = list();
    eventually(Duration::from_secs(60), "the alarms to settle", || {
        std::thread::sleep(Duration::from_secs(2));
        let now = list();
        let settled = !now.is_empty() && state(&now) == state(&seen);
        seen = now;
        settled.then(|| seen.clone())
    })
}

/// Acknowledge every alarm of the namespace's devices with a verdict from the injected
/// faults (alarms that come later too); (alarm id, device, first seq, last seq, true
/// positive), the last seq as the alarm ends. Returns once every verdict is on
/// `iot.alarms` (the alerts role's index shows it).
fn give_verdicts(service: &Service, prefix: &str) -> Vec<(String, String, u64, u64, bool)> {
    let mut given: BTreeMap<String, (String, u64, bool)> = BTreeMap::new();
    let alarms = eventually(Duration::from_secs(90), "every alarm judged", || {
        let alarms = settled_alarms(service, prefix);
        let mut judged = true;
        for alarm in &alarms {
            let id = alarm["alarm_id"].as_str().unwrap().to_owned();
            if alarm["verdict"].is_string() {
                continue;
            }
            judged = false;
            if given.contains_key(&id) {
                continue;
            }
            let device = alarm["device_id"].as_str().unwrap().to_owned();
            let first: u64 = id.rsplit_once(':').unwrap().1.parse().unwrap();
            let last = alarm["last_alert_seq"].as_u64().unwrap().max(first);
            let real = in_fault(&device, first, last);
            let verdict = if real {
                "true_positive"
            } else {
                "false_positive"
            };
            let (status, _, body) = service.request(
                "POST",
                &format!("/alarms/{id}/ack"),
                &[],
                Some(&json!({ "verdict": verdict })),
            );
            assert_eq!(status, 200, "{body}");
            given.insert(id, (device, first, real));
        }
        judged.then_some(alarms)
    });
    (alarms.iter())
        .map(|alarm| {
            let id = alarm["alarm_id"].as_str().unwrap();
            let (device, first, real) = given[id].clone();
            let last = alarm["last_alert_seq"].as_u64().unwrap().max(first);
            println!(
                "alarm {id}: readings {first}..={last}, verdict {}",
                alarm["verdict"]
            );
            (id.to_owned(), device, first, last, real)
        })
        .collect()
}

fn overlaps(span: Span, first: u64, last: u64) -> bool {
    span.0 <= last && first <= span.1.unwrap_or(u64::MAX)
}

/// The verdict figures expected from the verdicts given: per kind, (alarms, baseline
/// alerted, candidate alerted), for alarms opened after the warm-up.
fn expected_verdicts(
    given: &[(String, String, u64, u64, bool)],
    readings: &[Reading],
    alerts: (&Alerts, &Alerts),
    counted_from: i64,
) -> Value {
    let mut figures = [[0u64; 3]; 2];
    for (_, device, first, last, real) in given {
        let opened = readings.iter().find(|r| &r.0 == device && r.1 == *first);
        if opened.is_none_or(|r| r.2 < counted_from) {
            continue;
        }
        let hit = |alerts: &BTreeMap<String, Vec<Span>>| {
            alerts
                .get(device)
                .is_some_and(|spans| spans.iter().any(|s| overlaps(*s, *first, *last)))
        };
        let row = &mut figures[usize::from(!*real)];
        row[0] += 1;
        row[1] += u64::from(hit(alerts.0));
        row[2] += u64::from(hit(alerts.1));
    }
    let as_json = |row: [u64; 3]| json!({"alarms": row[0], "baseline_alerted": row[1], "candidate_alerted": row[2]});
    json!({"true_positive": as_json(figures[0]), "false_positive": as_json(figures[1])})
}

pub(super) async fn agrees_with_the_replay_across_archive_and_kafka(setup: &Setup) {
    let rig = setup.brokers.rig.clone();
    let namespace = Namespace::new("backfill");
    let telemetry = namespace.topic("iot.telemetry");
    let prefix = namespace.device_prefix();
    let mut env = archive_env(&setup.moto, &setup.scratch);
    env.push(("FLEETWATCH_SCORER__PUBLISH_SCORES".into(), "false".into()));
    let plain: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let live = Service::start_async(
        &rig,
        &namespace,
        "trainer,scorer,devices,alerts",
        "live",
        &plain,
    )
    .await;
    let archive = Service::start_async(&rig, &namespace, "archive", "archive", &plain).await;
    let now = fleetwatch_protocol::now_ms();
    let day_start = now.div_euclid(DAY_MS) * DAY_MS - DAY_MS;
    let readings = simulate(&prefix, day_start);
    let half = readings.len() / 2;

    // The first half goes to Kafka and the archive; the second to Kafka only.
    produce(&rig.kafka, &telemetry, &readings[..half]).await;
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(60), "the first half archived", || {
            let counted = setup.tools.check(&[
                "count",
                &setup.moto.endpoint,
                BUCKET,
                &format!("{PREFIX}/{telemetry}/"),
                &prefix,
            ]);
            (counted["readings"] == half as u64).then_some(())
        });
        archive.terminate(Duration::from_secs(30));
    });
    produce(&rig.kafka, &telemetry, &readings[half..]).await;

    // The live pipeline scores the day; the test judges its alarms.
    let given = tokio::task::block_in_place(|| {
        let group = format!("{}-scorer", namespace.name);
        eventually(Duration::from_secs(90), "the scorer at the end", || {
            let offsets = committed_vs_end(&rig.kafka, &group, &telemetry);
            offsets
                .iter()
                .all(|(_, committed, end)| *committed == Some(*end))
                .then_some(())
        });
        give_verdicts(&live, &prefix)
    });
    println!(
        "verdicts given: {} ({} true)",
        given.len(),
        given.iter().filter(|g| g.4).count()
    );
    assert!(!given.is_empty(), "the live pipeline raised no alarm");

    let candidate_file = setup.scratch.join("candidate.toml");
    std::fs::write(&candidate_file, "[trainer.model]\nthreshold = 0.55\n").unwrap();
    let mut candidate_model = production::Config {
        threshold: 0.55,
        ..production::Config::default()
    };
    candidate_model = candidate_model.validate().unwrap();
    let (from, to) = (day_start.to_string(), (day_start + DAY_MS).to_string());
    let args = |source: &'static str| {
        let candidate = candidate_file.display().to_string();
        [
            "--from",
            &from,
            "--to",
            &to,
            "--warmup",
            "2h",
            "--device-prefix",
            &prefix,
            "--candidate",
            &candidate,
            "--source",
            source,
        ]
        .map(str::to_owned)
    };
    env.extend([
        ("FLEETWATCH_KAFKA__BROKERS".to_owned(), rig.kafka.clone()),
        (
            "FLEETWATCH_KAFKA__TOPIC_PREFIX".to_owned(),
            namespace.topic_prefix(),
        ),
        (
            "FLEETWATCH_KAFKA__GROUP_PREFIX".to_owned(),
            format!("{}-", namespace.name),
        ),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ]);
    let run = |source: &'static str| {
        let args = args(source);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let report = setup.scratch.join(format!("report-{source}.json"));
        tokio::task::block_in_place(|| backfill(&rig, &env, &args, &report))
    };
    let kafka_only = run("kafka");
    let split = run("archive-first");

    // Half from the archive, half from Kafka.
    assert_eq!(kafka_only["source"]["kafka_records"], readings.len() as u64);
    assert_eq!(split["source"]["archive_records"], half as u64);
    assert_eq!(
        split["source"]["kafka_records"],
        (readings.len() - half) as u64
    );
    assert_eq!(comparable(&split), comparable(&kafka_only));
    assert_eq!(kafka_only["events"], readings.len() as u64);

    // The baseline is the replay's decision; the candidate too, with its threshold.
    let counted_from = day_start + WARMUP_MS;
    let baseline = expected_alerts(&readings, &production::Config::default(), counted_from);
    let candidate = expected_alerts(&readings, &candidate_model, counted_from);
    assert!(!baseline.is_empty(), "no alert in the day");
    assert_eq!(reported_alerts(&kafka_only, "baseline"), baseline);
    assert_eq!(reported_alerts(&kafka_only, "candidate"), candidate);

    // The verdict figures are those of the verdicts given.
    let verdicts = &kafka_only["verdicts"];
    let expected = expected_verdicts(&given, &readings, (&baseline, &candidate), counted_from);
    assert_eq!(verdicts["true_positive"], expected["true_positive"]);
    assert_eq!(verdicts["false_positive"], expected["false_positive"]);
    println!("verdicts: {expected}");
    drop(live);
}
