//! Fleet jobs end to end, against real Mosquitto and tansu: a software update rolled out
//! to 200 simulated devices in growing waves across a SIGKILL of the service, devices
//! offline at the start updated when they come back, another tenant's devices left
//! alone; a bad build stopped by the canary criterion, a good one finishing, and a
//! cancelled job's queued executions ending `cancelled`; a continuous configuration change
//! of an operator naming two tenants, picking up devices that join later.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fleetwatch_e2e::{eventually, Namespace, Rig, Service};
use fleetwatch_sim::{run_fleet, AlertListener, FleetStats, SimConfig};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "e2e-secret-for-the-jobs-tests-32-bytes-long";

fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

fn token(rig: &Rig, tenant: Option<&str>) -> String {
    let mut command = Command::new(&rig.fleetwatch_bin);
    command
        .args(["token", "--ttl-secs", "3600"])
        .env("FLEETWATCH_AUTH__HS256_SECRET", SECRET);
    if let Some(tenant) = tenant {
        command.args(["--tenant", tenant]);
    }
    let output = command.output().expect("fleetwatch token runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn call(
    service: &Service,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let bearer = format!("Bearer {token}");
    let (status, _, body) =
        service.request(method, path, &[("Authorization", &bearer)], body.as_ref());
    (status, body)
}

fn fleet(rig: &Rig, prefix: String, devices: usize, seed: u64) -> SimConfig {
    let mut sim = SimConfig::new(&rig.mqtt_host, rig.mqtt_port, devices);
    sim.id_prefix = prefix;
    sim.interval_ms = 1000;
    sim.anomalies_per_minute = 0.0;
    sim.outages_per_minute = 0.0;
    sim.command_failure_rate = 0.0;
    sim.slow_command_rate = 0.0;
    sim.update_failure_rate = 0.05;
    sim.update_stage_ms = 200;
    sim.seed = seed;
    sim
}

fn spawn_fleet(
    sim: SimConfig,
    stats: &Arc<FleetStats>,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (stats, stop) = (stats.clone(), stop.clone());
    tokio::spawn(async move {
        run_fleet(sim, stats, stop).await.expect("the fleet runs");
    })
}

/// The job with its executions (waiting while a restarted instance reads the jobs: 503).
fn job_of(service: &Service, token: &str, job_id: &str) -> Value {
    let path = format!("/jobs/{job_id}?executions=true");
    eventually(Duration::from_secs(30), "the job readable", || {
        let (status, job) = call(service, "GET", &path, token, None);
        assert!(status == 200 || status == 503, "{status} {job}");
        (status == 200).then_some(job)
    })
}

fn count(job: &Value, state: &str) -> u64 {
    job["counts"][state].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_updates_200_devices_in_waves_across_a_kill_and_stays_in_its_tenant() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("jobs");
    let prefix = namespace.device_prefix();
    let env = [
        ("FLEETWATCH_AUTH__MODE".to_owned(), "jwt".to_owned()),
        ("FLEETWATCH_AUTH__HS256_SECRET".into(), SECRET.into()),
        (
            "FLEETWATCH_TENANCY__PROVISIONING".into(),
            format!(
                r#"[{{prefix = "{prefix}g", tenant = "globex"}}, {{prefix = "{prefix}", tenant = "acme"}}]"#
            ),
        ),
        ("FLEETWATCH_JOBS__TICK_MS".into(), "200".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let first = Service::start_async(&rig, &namespace, "all", "a", &env).await;
    let (acme, globex, operator) = (
        token(&rig, Some("acme")),
        token(&rig, Some("globex")),
        token(&rig, None),
    );

    // 180 devices stay online; 20 show up, leave, and come back mid-job; 5 belong to
    // another tenant although the job's prefix matches them.
    let (stats, stop) = (Arc::new(FleetStats::default()), CancellationToken::new());
    let online = spawn_fleet(fleet(&rig, format!("{prefix}a"), 180, 1), &stats, &stop);
    let others = spawn_fleet(fleet(&rig, format!("{prefix}g"), 5, 2), &stats, &stop);
    let late_stats = Arc::new(FleetStats::default());
    let mut brief = fleet(&rig, format!("{prefix}b"), 20, 3);
    brief.duration_secs = Some(4.0);
    spawn_fleet(brief, &late_stats, &stop).await.unwrap();
    blocking(|| {
        eventually(
            Duration::from_secs(60),
            "205 devices in the directory",
            || {
                let (_, page) = call(
                    &first,
                    "GET",
                    &format!("/devices?prefix={prefix}&limit=1000"),
                    &operator,
                    None,
                );
                (page["devices"].as_array().map_or(0, Vec::len) == 205).then_some(())
            },
        )
    });

    let new_job = json!({
        "command": {"kind": "software_update", "url": "https://fw.example/2.1.bin", "version": "2.1", "checksum": "sha256:00"},
        "target": {"prefix": prefix},
        "rollout": {"waves_percent": [1, 5, 25, 100], "soak_ms": 1000, "max_per_minute": 1200},
        "abort": {"failure_ratio": 0.5, "min_finished": 20},
        "device_timeout_ms": 30000,
        "ttl_ms": 180000
    });
    let (status, job) = blocking(|| call(&first, "POST", "/jobs", &acme, Some(new_job)));
    assert_eq!(status, 201, "{job}");
    assert_eq!(
        job["targets"], 200,
        "acme's 200 devices, not globex's 5: {job}"
    );
    let job_id = job["job_id"].as_str().unwrap().to_owned();
    let (status, _) = blocking(|| call(&first, "GET", &format!("/jobs/{job_id}"), &globex, None));
    assert_eq!(status, 404, "another tenant's job is not found");

    // SIGKILL in the middle of the rollout, then a replacement after the session timeout.
    blocking(|| {
        eventually(Duration::from_secs(60), "the job well under way", || {
            let job = job_of(&first, &acme, &job_id);
            let under_way = job["waves"].as_array().unwrap().len() >= 4
                && count(&job, "queued") + count(&job, "pending") > 60;
            under_way.then_some(())
        })
    });
    first.kill();
    // The replacement comes back under the same name, as a restarted pod does: its MQTT
    // session holds what devices reported meanwhile. (After the group's session
    // timeout: tansu keeps a dead member until another joins, docs/architecture.md.)
    tokio::time::sleep(Duration::from_secs(12)).await;
    let second = Service::start_async(&rig, &namespace, "all", "a", &env).await;
    let late = spawn_fleet(fleet(&rig, format!("{prefix}b"), 20, 3), &late_stats, &stop);

    let job = blocking(|| {
        eventually(Duration::from_secs(120), "the job finished", || {
            let job = job_of(&second, &acme, &job_id);
            (job["status"] == "completed").then_some(job)
        })
    });
    check_rollout(&job);
    check_against_twins(&second, &operator, &job, &prefix);
    let started = stats.updates_started.load(Ordering::Relaxed)
        + late_stats.updates_started.load(Ordering::Relaxed);
    assert_eq!(started, 200, "every device ran the update exactly once");
    stop.cancel();
    for fleet in [online, others, late] {
        let _ = fleet.await;
    }
}

/// Growing waves, each after the previous one finished and soaked; every execution over.
fn check_rollout(job: &Value) {
    let waves = job["waves"].as_array().unwrap();
    let reach: Vec<u64> = waves.iter().map(|w| w["reach"].as_u64().unwrap()).collect();
    assert_eq!(reach, [2, 10, 50, 200], "{job}");
    for pair in waves.windows(2) {
        let soaked = pair[0]["finished_ms"].as_i64().unwrap() + 1000;
        assert!(
            pair[1]["started_ms"].as_i64().unwrap() >= soaked,
            "{pair:?}"
        );
    }
    let finished = count(job, "succeeded") + count(job, "failed") + count(job, "timed_out");
    assert_eq!(finished, 200, "{}", job["counts"]);
    assert!(
        count(job, "failed") < 40 && count(job, "succeeded") > 150,
        "{}",
        job["counts"]
    );
}

/// The counts equal what the twins report; other tenants' devices got nothing.
fn check_against_twins(service: &Service, operator: &str, job: &Value, prefix: &str) {
    let mut firmware: BTreeMap<String, u64> = BTreeMap::new();
    for (device, execution) in job["executions"].as_object().unwrap() {
        let (_, twin) = call(
            service,
            "GET",
            &format!("/devices/{device}"),
            operator,
            None,
        );
        let reported = twin["reported"]["firmware"]
            .as_str()
            .unwrap_or("none")
            .to_owned();
        let state = execution["state"].as_str().unwrap();
        assert_eq!(
            state == "succeeded",
            reported == "2.1",
            "{device}: {state} but reports {reported}"
        );
        *firmware.entry(reported).or_default() += 1;
        let (_, commands) = call(
            service,
            "GET",
            &format!("/devices/{device}/commands"),
            operator,
            None,
        );
        let jobs = commands["commands"].as_array().map_or(0, |c| {
            c.iter()
                .filter(|c| c["command_id"].as_str().unwrap_or("").starts_with("job-"))
                .count()
        });
        assert_eq!(jobs, 1, "{device}: one command for the job: {commands}");
    }
    assert_eq!(
        firmware.get("2.1").copied().unwrap_or(0),
        count(job, "succeeded")
    );
    for i in 0..5 {
        let device = format!("{prefix}g{i:05}");
        let (_, twin) = call(
            service,
            "GET",
            &format!("/devices/{device}"),
            operator,
            None,
        );
        assert_eq!(
            twin["reported"]["firmware"], "1.4.2",
            "{device} was left alone"
        );
    }
}

fn post_job(service: &Service, body: Value) -> String {
    let (status, job) = service
        .request("POST", "/jobs", &[], Some(&body))
        .map_status();
    assert_eq!(status, 201, "{job}");
    job["job_id"].as_str().unwrap().to_owned()
}

trait MapStatus {
    fn map_status(self) -> (u16, Value);
}

impl MapStatus for (u16, fleetwatch_e2e::Headers, Value) {
    fn map_status(self) -> (u16, Value) {
        (self.0, self.2)
    }
}

fn update_job(devices: &[String], version: &str, waves: Value, soak_ms: u64) -> Value {
    json!({
        "command": {"kind": "software_update", "url": format!("https://fw.example/{version}"), "version": version, "checksum": "sha256:00"},
        "target": {"device_ids": devices},
        "rollout": {"waves_percent": waves, "soak_ms": soak_ms, "max_per_minute": 6000},
        "abort": {"failure_ratio": 0.5, "min_finished": 10, "canary": {"min_updated": 2, "ratio": 3.0, "p_value": 0.01}},
        "device_timeout_ms": 60000,
        "ttl_ms": 120000
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_canary_stops_a_bad_build_a_good_build_finishes_and_cancel_cancels_queued() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("canary");
    let prefix = namespace.device_prefix();
    let env = [
        ("FLEETWATCH_SCORER__CLEAR_AFTER_EVENTS", "10"),
        ("FLEETWATCH_JOBS__TICK_MS", "200"),
    ];
    let service = Service::start_async(&rig, &namespace, "all", "a", &env).await;
    // Background anomalies from second 30, as the demo has them (fewer devices, so a
    // lower rate); a device running the bad build spikes every 3 s.
    let mut sim = fleet(&rig, prefix.clone(), 40, 11);
    sim.interval_ms = 250;
    sim.warmup_secs = 30.0;
    sim.anomalies_per_minute = 6.0;
    sim.update_failure_rate = 0.0;
    sim.bad_builds = vec!["2.0-bad".into()];
    sim.bad_build_gap_ms = 3000;
    let (stats, stop) = (Arc::new(FleetStats::default()), CancellationToken::new());
    let running = spawn_fleet(sim, &stats, &stop);
    let devices: Vec<String> = (0..40).map(|i| format!("{prefix}{i:05}")).collect();
    let listener = AlertListener::connect(&service.ws_url(), &prefix)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(32)).await;

    // The bad build: 1 device, then 2, then the canary's verdict.
    let bad = blocking(|| {
        post_job(
            &service,
            update_job(&devices, "2.0-bad", json!([2.5, 5, 25, 100]), 6000),
        )
    });
    let job = blocking(|| {
        eventually(Duration::from_secs(60), "the bad build aborted", || {
            let job = job_of(&service, "", &bad);
            (job["status"] != "running").then_some(job)
        })
    });
    assert_eq!(job["status"], "aborted", "{job}");
    assert_eq!(
        job["abort"]["decision"]["criterion"], "canary",
        "{}",
        job["abort"]
    );
    let figures = &job["abort"]["decision"]["figures"];
    println!("bad build aborted: {figures}");
    let sent = |job: &Value| -> u64 {
        ["sent", "in_progress", "succeeded", "failed", "timed_out"]
            .iter()
            .map(|s| count(job, s))
            .sum()
    };
    assert!(
        sent(&job) < 10,
        "fewer than 25% of 40 were sent: {}",
        job["counts"]
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = blocking(|| job_of(&service, "", &bad));
    assert_eq!(
        later["executions"].as_object().unwrap().len(),
        job["executions"].as_object().unwrap().len(),
        "no execution after the abort"
    );
    assert_eq!(later["waves"], job["waves"]);
    // A WebSocket client saw the job happen.
    let seen: Vec<String> = (listener.job_events().into_iter())
        .filter(|notice| notice.job_id == bad)
        .map(|notice| notice.event)
        .collect();
    for event in ["created", "wave_started", "executions", "aborted"] {
        assert!(
            seen.iter().any(|e| e == event),
            "{event} not pushed: {seen:?}"
        );
    }

    // A good build on devices the bad one never reached finishes.
    let good = blocking(|| {
        post_job(
            &service,
            update_job(&devices[10..20], "2.1", json!([20, 100]), 2000),
        )
    });
    let job = blocking(|| {
        eventually(Duration::from_secs(90), "the good build finished", || {
            let job = job_of(&service, "", &good);
            (job["status"] != "running").then_some(job)
        })
    });
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(count(&job, "succeeded"), 10, "{}", job["counts"]);
    println!("good build: waves {}", job["waves"]);

    // Cancel: one device a minute, so the others wait queued and end cancelled.
    let mut slow = update_job(&devices[..5], "2.2", json!([100]), 0);
    slow["rollout"]["max_per_minute"] = json!(1);
    let slow = blocking(|| post_job(&service, slow));
    blocking(|| {
        eventually(Duration::from_secs(20), "one sent", || {
            (count(&job_of(&service, "", &slow), "queued") == 4).then_some(())
        })
    });
    let (status, _) = blocking(|| {
        service
            .request("POST", &format!("/jobs/{slow}/cancel"), &[], None)
            .map_status()
    });
    assert_eq!(status, 202);
    let job = blocking(|| {
        eventually(Duration::from_secs(20), "the queued ones cancelled", || {
            let job = job_of(&service, "", &slow);
            (count(&job, "cancelled") == 4).then_some(job)
        })
    });
    assert_eq!(job["status"], "cancelled", "{job}");
    stop.cancel();
    let _ = running.await;
}

/// Device → the state of its execution, for every execution of `job`.
fn executions(job: &Value) -> BTreeMap<String, String> {
    (job["executions"].as_object().unwrap().iter())
        .map(|(id, e)| (id.clone(), e["state"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_continuous_configuration_change_reaches_the_named_tenants_and_devices_that_join() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("jobconf");
    let prefix = namespace.device_prefix();
    let env = [
        ("FLEETWATCH_AUTH__MODE".to_owned(), "jwt".to_owned()),
        ("FLEETWATCH_AUTH__HS256_SECRET".into(), SECRET.into()),
        (
            "FLEETWATCH_TENANCY__PROVISIONING".into(),
            format!(
                r#"[{{prefix = "{prefix}g", tenant = "globex"}}, {{prefix = "{prefix}i", tenant = "initech"}}, {{prefix = "{prefix}", tenant = "acme"}}]"#
            ),
        ),
        ("FLEETWATCH_JOBS__TICK_MS".into(), "200".into()),
        ("FLEETWATCH_JOBS__CONTINUOUS_EVERY_MS".into(), "1000".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let service = Service::start_async(&rig, &namespace, "all", "a", &env).await;
    let (operator, initech) = (token(&rig, None), token(&rig, Some("initech")));
    let (stats, stop) = (Arc::new(FleetStats::default()), CancellationToken::new());
    let fleets = [("a", 6), ("g", 4), ("i", 4)].map(|(group, devices)| {
        let sim = fleet(&rig, format!("{prefix}{group}"), devices, devices as u64);
        spawn_fleet(sim, &stats, &stop)
    });
    let known = |count: usize| {
        blocking(|| {
            eventually(Duration::from_secs(60), "devices in the directory", || {
                let path = format!("/devices?prefix={prefix}&limit=1000");
                let (_, page) = call(&service, "GET", &path, &operator, None);
                (page["devices"].as_array().map_or(0, Vec::len) == count).then_some(())
            })
        })
    };
    known(14);

    // A tenant may not name another tenant.
    let job = |tenants: Value| {
        json!({
            "command": {"kind": "configuration", "desired": {"sampling_ms": 750, "mode": "eco"}},
            "target": {"prefix": prefix, "tenants": tenants},
            "rollout": {"waves_percent": [50, 100], "soak_ms": 500, "max_per_minute": 6000},
            "abort": {"failure_ratio": 0.5, "min_finished": 10},
            "device_timeout_ms": 30000,
            "ttl_ms": 60000,
            "continuous": true
        })
    };
    let (status, refused) = blocking(|| {
        call(
            &service,
            "POST",
            "/jobs",
            &initech,
            Some(job(json!(["acme"]))),
        )
    });
    assert_eq!(status, 400, "{refused}");
    let (status, created) = blocking(|| {
        call(
            &service,
            "POST",
            "/jobs",
            &operator,
            Some(job(json!(["acme", "globex"]))),
        )
    });
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["targets"], 10,
        "acme's 6 and globex's 4, not initech's"
    );
    let job_id = created["job_id"].as_str().unwrap().to_owned();
    let succeeded = |count: usize| {
        blocking(|| {
            eventually(Duration::from_secs(60), "executions succeeded", || {
                let job = job_of(&service, &operator, &job_id);
                let states = executions(&job);
                let done = states.values().filter(|s| *s == "succeeded").count();
                (done == count).then_some(job)
            })
        })
    };
    let job = succeeded(10);
    assert_eq!(job["status"], "running", "a continuous job keeps running");
    assert!(executions(&job)
        .keys()
        .all(|id| !id.starts_with(&format!("{prefix}i"))));

    // Three acme devices join: the job picks them up.
    let late = spawn_fleet(fleet(&rig, format!("{prefix}late"), 3, 9), &stats, &stop);
    known(17);
    let job = succeeded(13);
    assert_eq!(job["targets"], 13, "{}", job["targets"]);
    for (id, state) in executions(&job) {
        let (_, twin) =
            blocking(|| call(&service, "GET", &format!("/devices/{id}"), &operator, None));
        assert_eq!(state, "succeeded");
        assert_eq!(twin["reported"]["mode"], "eco", "{id}: {twin}");
    }
    let initech_device = format!("{prefix}i00000");
    let (_, twin) = blocking(|| {
        call(
            &service,
            "GET",
            &format!("/devices/{initech_device}"),
            &operator,
            None,
        )
    });
    assert!(
        twin["desired"].get("mode").is_none(),
        "initech untouched: {twin}"
    );

    let path = format!("/jobs/{job_id}/cancel");
    let (status, _) = blocking(|| call(&service, "POST", &path, &operator, None));
    assert_eq!(status, 202);
    let job = blocking(|| {
        eventually(Duration::from_secs(20), "the job cancelled", || {
            let job = job_of(&service, &operator, &job_id);
            job["finished_ms"].is_i64().then_some(job)
        })
    });
    assert_eq!(job["status"], "cancelled");
    stop.cancel();
    for running in fleets.into_iter().chain([late]) {
        let _ = running.await;
    }
}
