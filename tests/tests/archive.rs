//! The archive role against Mosquitto, tansu and an S3-compatible server (moto in server
//! mode): every record of `iot.telemetry` lands in the archive's Parquet files exactly
//! once — no two rows share (topic, partition, offset), and the distinct (device,
//! sequence) readings equal those that reached `iot.telemetry`, counted with DuckDB —
//! also after a SIGKILL in the middle of a file and after one between a file's upload and
//! its offset commit (tansu frozen, so the commit cannot happen, and killed while frozen).
//!
//! The brokers are the test's own (tansu is frozen). moto and DuckDB run from the Python
//! in `FLEETWATCH_TEST_ARCHIVE_PYTHON` (scripts/test installs them from
//! scripts/archive-requirements.txt); the test starts moto on a free loopback port.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fleetwatch_e2e::brokers::{OwnBrokers, Stop};
use fleetwatch_e2e::{committed_vs_end, eventually, read_topic, unique, Namespace, Rig, Service};
use fleetwatch_protocol::DeviceEventBody;
use fleetwatch_sim::{run_fleet, FleetStats, SimConfig};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const BUCKET: &str = "fleetwatch";
const PREFIX: &str = "archive";
const SESSION_TIMEOUT_MS: u64 = 6_000;

/// The archive check's Python (moto, boto3, DuckDB) and script.
struct Tools {
    python: String,
    script: PathBuf,
}

impl Tools {
    fn from_env() -> Self {
        let python = std::env::var("FLEETWATCH_TEST_ARCHIVE_PYTHON").unwrap_or_else(|_| {
            panic!("FLEETWATCH_TEST_ARCHIVE_PYTHON is not set: run through scripts/test, which installs moto and duckdb")
        });
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/archive_check.py");
        Self { python, script }
    }

    /// Run a command of scripts/archive_check.py; its JSON answer.
    fn check(&self, args: &[&str]) -> Value {
        let output = Command::new(&self.python)
            .arg(&self.script)
            .args(args)
            .output()
            .expect("python runs");
        assert!(
            output.status.success(),
            "archive_check.py {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON")
    }
}

/// moto's S3 server on a free loopback port; stopped when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start(tools: &Tools, log: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(&tools.python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("moto starts");
        let endpoint = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(30), "moto to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Self { child, endpoint }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Distinct (device, sequence) of the readings on `iot.telemetry`, and its record count.
fn readings_in_kafka(kafka: &str, topic: &str) -> (usize, usize) {
    let records = read_topic(kafka, topic);
    let mut readings = BTreeSet::new();
    for record in &records {
        let Some(event) = record.device_event() else {
            continue;
        };
        if let DeviceEventBody::Telemetry(telemetry) = event.body {
            readings.insert((event.device_id.as_str().to_owned(), telemetry.seq));
        }
    }
    (readings.len(), records.len())
}

/// (partition, first offset) of each archive file of `topic`, from its name.
fn files_of(tools: &Tools, moto: &Moto, topic: &str) -> Vec<(i32, i64)> {
    let names = tools.check(&[
        "list",
        &moto.endpoint,
        BUCKET,
        &format!("{PREFIX}/{topic}/"),
    ]);
    let mut files: Vec<(i32, i64)> = (names.as_array().unwrap().iter())
        .map(|name| {
            let name = name.as_str().unwrap();
            let stem = name
                .rsplit('/')
                .next()
                .unwrap()
                .trim_end_matches(".parquet");
            let mut parts = stem.rsplit('-');
            let offset = parts.next().unwrap().parse().unwrap();
            let partition = parts.next().unwrap().parse().unwrap();
            (partition, offset)
        })
        .collect();
    files.sort();
    files
}

fn archive_env(moto: &Moto, dir: &Path) -> Vec<(String, String)> {
    let (id_file, key_file) = (dir.join("access-key-id"), dir.join("secret-access-key"));
    std::fs::write(&id_file, "archive-test-id\n").unwrap();
    std::fs::write(&key_file, "archive-test-secret\n").unwrap();
    [
        ("FLEETWATCH_ARCHIVE__URL", format!("s3://{BUCKET}/{PREFIX}")),
        ("FLEETWATCH_ARCHIVE__S3__ENDPOINT", moto.endpoint.clone()),
        ("FLEETWATCH_ARCHIVE__S3__ALLOW_HTTP", "true".into()),
        (
            "FLEETWATCH_ARCHIVE__S3__ACCESS_KEY_ID_FILE",
            id_file.display().to_string(),
        ),
        (
            "FLEETWATCH_ARCHIVE__S3__SECRET_ACCESS_KEY_FILE",
            key_file.display().to_string(),
        ),
        ("FLEETWATCH_ARCHIVE__MAX_FILE_AGE_MS", "1000".into()),
        ("FLEETWATCH_ARCHIVE__MAX_FILE_BYTES", "200000".into()),
        (
            "FLEETWATCH_KAFKA__SESSION_TIMEOUT_MS",
            SESSION_TIMEOUT_MS.to_string(),
        ),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

/// The credentials read from files are secrets: `fleetwatch config` shows `***`.
fn credentials_never_print(rig: &Rig, env: &[(String, String)]) {
    let output = Command::new(&rig.fleetwatch_bin)
        .arg("config")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("secret_access_key = \"***\""), "{printed}");
    assert!(!printed.contains("archive-test-secret") && !printed.contains("archive-test-id"));
}

async fn archive(
    rig: &Rig,
    namespace: &Namespace,
    instance: &str,
    env: &[(String, String)],
) -> Service {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Service::start_async(rig, namespace, "archive", instance, &env).await
}

/// What the archive and backfill tests share: their own brokers (tansu is frozen and
/// restarted) and moto with the bucket.
struct Setup {
    tools: Tools,
    scratch: PathBuf,
    brokers: OwnBrokers,
    moto: Moto,
}

/// One set-up for both tests (starting brokers and moto is most of a test's time).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archive_and_backfill() {
    let tools = Tools::from_env();
    let scratch = std::env::temp_dir().join(unique("archive"));
    let brokers = OwnBrokers::start(scratch.join("brokers"));
    let moto = Moto::start(&tools, &scratch.join("moto.log"));
    tools.check(&["create-bucket", &moto.endpoint, BUCKET]);
    let mut setup = Setup {
        tools,
        scratch,
        brokers,
        moto,
    };
    let started = std::time::Instant::now();
    every_reading_is_archived_once_across_two_kinds_of_crash(&mut setup).await;
    println!("archive test: {:.1} s", started.elapsed().as_secs_f64());
    let started = std::time::Instant::now();
    backfill::agrees_with_the_replay_across_archive_and_kafka(&setup).await;
    println!("backfill test: {:.1} s", started.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&setup.scratch);
}

async fn every_reading_is_archived_once_across_two_kinds_of_crash(setup: &mut Setup) {
    let Setup {
        tools,
        scratch,
        brokers,
        moto,
    } = setup;
    let (tools, scratch, moto) = (&*tools, &*scratch, &*moto);
    let rig = brokers.rig.clone();
    let env = archive_env(moto, scratch);
    credentials_never_print(&rig, &env);
    let namespace = Namespace::new("archive");
    let telemetry = namespace.topic("iot.telemetry");
    let group = format!("{}-archive", namespace.name);
    let plain: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let _ingest = Service::start_async(&rig, &namespace, "ingest", "ingest", &plain).await;
    let first = archive(&rig, &namespace, "a", &env).await;
    let mut sim = SimConfig::new(&rig.mqtt_host, rig.mqtt_port, 20);
    (sim.id_prefix, sim.interval_ms, sim.seed) = (namespace.device_prefix(), 100, 19);
    sim.duration_secs = Some(30.0);
    let fleet = tokio::spawn(run_fleet(
        sim,
        Arc::new(FleetStats::default()),
        CancellationToken::new(),
    ));
    tokio::time::sleep(Duration::from_secs(6)).await;

    // 1. SIGKILL in the middle of a file: rows taken, not uploaded.
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(20),
            "files uploaded and rows in an open one",
            || {
                let (files, open) = (
                    first.metric("fleetwatch_archive_files_total"),
                    first.metric("fleetwatch_archive_buffered_bytes"),
                );
                (files > 0.0 && open > 0.0).then_some(())
            },
        );
        first.kill();
    });
    println!("killed in the middle of a file");
    tokio::time::sleep(Duration::from_millis(SESSION_TIMEOUT_MS + 1_000)).await;
    let second = archive(&rig, &namespace, "b", &env).await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // 2. SIGKILL between a file's upload and its offset commit: tansu frozen, a file
    // uploaded (the commit that follows cannot happen), then the kill.
    tokio::task::block_in_place(|| {
        let before = second.metric("fleetwatch_archive_files_total");
        brokers.stop_tansu_answering();
        eventually(
            Duration::from_secs(20),
            "an upload while tansu is frozen",
            || (second.metric("fleetwatch_archive_files_total") > before).then_some(()),
        );
        second.kill();
        // The commit request may sit in the frozen broker's socket buffer: a thawed tansu
        // would still apply it. Killed while frozen, it never reads it (what it had
        // stored is in its sqlite file).
        brokers.restart_tansu(Stop::Kill, Duration::from_secs(1));
        // The case happened: a file starts at (or past) its partition's committed offset.
        let committed: BTreeMap<i32, i64> = committed_vs_end(&rig.kafka, &group, &telemetry)
            .into_iter()
            .filter_map(|(partition, committed, _)| Some((partition, committed?)))
            .collect();
        let uncommitted: Vec<_> = (files_of(tools, moto, &telemetry).into_iter())
            .filter(|(partition, first)| committed.get(partition).is_none_or(|c| first >= c))
            .collect();
        println!("killed between upload and commit; uploaded, not committed: {uncommitted:?} (committed {committed:?})");
        assert!(
            !uncommitted.is_empty(),
            "no file was uploaded without its commit"
        );
    });
    tokio::time::sleep(Duration::from_millis(SESSION_TIMEOUT_MS + 1_000)).await;
    let third = archive(&rig, &namespace, "c", &env).await;
    fleet.await.unwrap().unwrap();

    tokio::task::block_in_place(|| {
        let (readings, records) = readings_in_kafka(&rig.kafka, &telemetry);
        assert!(
            readings > 1_000,
            "only {readings} readings reached {telemetry}"
        );
        let counted = eventually(
            Duration::from_secs(60),
            "the archive to hold every record",
            || {
                let counted = tools.check(&[
                    "count",
                    &moto.endpoint,
                    BUCKET,
                    &format!("{PREFIX}/{telemetry}/"),
                    &namespace.device_prefix(),
                ]);
                (counted["distinct_offsets"] == records as u64).then_some(counted)
            },
        );
        println!("archive: {counted} for {readings} readings in {records} records of {telemetry}");
        assert_eq!(
            counted["rows"], counted["distinct_offsets"],
            "a (topic, partition, offset) archived twice"
        );
        assert_eq!(counted["readings"], readings as u64);
        assert_eq!(third.metric("fleetwatch_archive_upload_errors_total"), 0.0);
    });
    drop(third);
}

#[path = "archive/backfill.rs"]
mod backfill;
