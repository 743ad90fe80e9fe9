//! Schedules end to end, against real Mosquitto and tansu, on a compressed clock (a
//! schedule minute is a wall-clock second: `schedules.clock_speed = 60`,
//! docs/schedules.md): every-minute schedules produce one command per occurrence with
//! two instances and across a SIGKILL of both and a restart; the occurrences that fell
//! in a downtime longer than a schedule's grace period are recorded `missed`; a device
//! offline past its occurrences' time to live never runs them; a one-time schedule puts a
//! device in safe mode, which its twin then reports.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fleetwatch_e2e::{eventually, Namespace, Rig, Service};
use fleetwatch_sim::{run_fleet, FleetStats, SimConfig};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// A schedule minute, in schedule-clock ms (a wall-clock second at 60×).
const MINUTE: u64 = 60_000;

fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

fn device(rig: &Rig, prefix: &str, seed: u64) -> SimConfig {
    let mut sim = SimConfig::new(&rig.mqtt_host, rig.mqtt_port, 1);
    sim.id_prefix = prefix.to_owned();
    sim.interval_ms = 500;
    sim.anomalies_per_minute = 0.0;
    sim.outages_per_minute = 0.0;
    sim.command_failure_rate = 0.0;
    sim.slow_command_rate = 0.0;
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

fn call(service: &Service, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (status, _, body) = service.request(method, path, &[], body.as_ref());
    (status, body)
}

/// The schedule (waiting while a restarted instance reads the schedules: 503).
fn schedule_of(service: &Service, id: &str) -> Value {
    eventually(Duration::from_secs(30), "the schedule readable", || {
        let (status, schedule) = call(service, "GET", &format!("/schedules/{id}"), None);
        assert!(status == 200 || status == 503, "{status} {schedule}");
        (status == 200).then_some(schedule)
    })
}

fn every_minute(service: &Service, device_id: &str, grace_ms: u64) -> String {
    let (status, schedule) = call(
        service,
        "POST",
        "/schedules",
        Some(json!({
            "device_id": device_id,
            "action": {"kind": "command", "name": "heat", "args": {"simulate": "ok"}},
            "when": {"kind": "cron", "cron": "* * * * *", "time_zone": "Europe/Berlin"},
            "grace_ms": grace_ms,
        })),
    );
    assert_eq!(status, 201, "{schedule}");
    assert_eq!(schedule["next"].as_array().unwrap().len(), 5, "{schedule}");
    schedule["schedule_id"].as_str().unwrap().to_owned()
}

/// The device's commands of schedule `id`: command id → state.
fn commands_of(service: &Service, device_id: &str, id: &str) -> Vec<(String, String)> {
    let (status, twin) = call(service, "GET", &format!("/devices/{device_id}"), None);
    assert_eq!(status, 200, "{twin}");
    twin["commands"]
        .as_array()
        .expect("the twin's commands")
        .iter()
        .filter(|c| {
            c["command_id"]
                .as_str()
                .is_some_and(|c| c.starts_with(&format!("sched-{id}-")))
        })
        .map(|c| {
            (
                c["command_id"].as_str().unwrap().to_owned(),
                c["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Every local minute from the first occurrence to the last recorded exactly once, in
/// order; the fired ones' command ids.
fn check_occurrences(schedule: &Value) -> BTreeSet<String> {
    let recent = schedule["recent"].as_array().unwrap();
    let minutes: Vec<&str> = recent
        .iter()
        .map(|o| o["local"].as_str().unwrap())
        .collect();
    for pair in minutes.windows(2) {
        let [a, b] = pair else { unreachable!() };
        let parse = |t: &str| chrono_minutes(t);
        assert_eq!(
            parse(b) - parse(a),
            1,
            "a gap or a repeat: {pair:?} in {schedule}"
        );
    }
    recent
        .iter()
        .filter(|o| o["outcome"] == "fired")
        .map(|o| o["command_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Minutes since the epoch of a `YYYY-MM-DDTHH:MM` local time (no zone: differences
/// only, within a day without a transition).
fn chrono_minutes(local: &str) -> i64 {
    let number = |range: std::ops::Range<usize>| local[range].parse::<i64>().unwrap();
    ((number(8..10) * 24 + number(11..13)) * 60) + number(14..16)
}

fn outcomes(schedule: &Value, outcome: &str) -> u64 {
    schedule["counts"][outcome].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_minute_schedules_fire_once_per_occurrence_across_two_instances_and_a_kill() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("schedules");
    let prefix = namespace.device_prefix();
    let anchor = fleetwatch_protocol::now_ms().to_string();
    let env = [
        ("FLEETWATCH_SCHEDULES__CLOCK_SPEED", "60"),
        ("FLEETWATCH_SCHEDULES__CLOCK_ANCHOR_MS", anchor.as_str()),
        ("FLEETWATCH_SCHEDULES__TICK_MS", "100"),
        ("FLEETWATCH_SCHEDULES__RECENT_KEPT", "1000"),
        ("FLEETWATCH_DEVICES__TWIN__KEPT_FINISHED_COMMANDS", "500"),
        ("FLEETWATCH_KAFKA__SESSION_TIMEOUT_MS", "4000"),
    ];
    let a = Service::start_async(&rig, &namespace, "all", "a", &env).await;
    let (stats, stop) = (Arc::new(FleetStats::default()), CancellationToken::new());
    let online = spawn_fleet(device(&rig, &format!("{prefix}on"), 1), &stats, &stop);
    // A device that registers, leaves, and comes back only at the end.
    let mut brief = device(&rig, &format!("{prefix}off"), 2);
    brief.duration_secs = Some(1.5);
    spawn_fleet(brief, &Arc::new(FleetStats::default()), &stop)
        .await
        .unwrap();
    let (on, off) = (format!("{prefix}on00000"), format!("{prefix}off00000"));
    blocking(|| {
        eventually(
            Duration::from_secs(30),
            "both devices known, one offline",
            || {
                let (status, twin) = call(&a, "GET", &format!("/devices/{off}"), None);
                let (online, _) = call(&a, "GET", &format!("/devices/{on}"), None);
                (status == 200 && online == 200 && twin["connectivity"] == "offline").then_some(())
            },
        )
    });

    // Generous grace (30 min) vs one minute; and one on the offline device.
    let kept = every_minute(&a, &on, 30 * MINUTE);
    let strict = every_minute(&a, &on, MINUTE);
    let offline = every_minute(&a, &off, 30 * MINUTE);
    // Once, three schedule minutes from now: safe mode, which the device reports.
    let now_ms = blocking(|| schedule_of(&a, &kept))["now_ms"]
        .as_i64()
        .unwrap();
    let (status, safe) = blocking(|| {
        call(
            &a,
            "POST",
            "/schedules",
            Some(json!({
                "device_id": on,
                "action": {"kind": "command", "name": "safe_mode"},
                "when": {"kind": "at", "at_ms": now_ms + 3 * MINUTE as i64},
            })),
        )
    });
    assert_eq!(status, 201, "{safe}");
    let safe = safe["schedule_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let b = Service::start_async(&rig, &namespace, "schedules", "b", &env).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let partitions = |s: &Service| s.metric("fleetwatch_assigned_partitions{role=\"schedules\"}");
    let (held_a, held_b) = blocking(|| (partitions(&a), partitions(&b)));
    assert!(
        held_a > 0.0 && held_b > 0.0,
        "two instances share the schedules: {held_a} {held_b}"
    );

    // The offline device's occurrences expire unseen; then the schedule ends.
    let (status, _) = blocking(|| call(&a, "DELETE", &format!("/schedules/{offline}"), None));
    assert_eq!(status, 200);

    // The whole service SIGKILLed; down for five schedule minutes and more.
    a.kill();
    b.kill();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let a = Service::start_async(&rig, &namespace, "all", "a", &env).await;
    let b = Service::start_async(&rig, &namespace, "schedules", "b", &env).await;
    let returning = Arc::new(FleetStats::default());
    let back = spawn_fleet(device(&rig, &format!("{prefix}off"), 3), &returning, &stop);
    tokio::time::sleep(Duration::from_secs(5)).await;

    blocking(|| {
        let fired = check_kept(&a, &b, &on, &kept, false) + check_kept(&a, &b, &on, &strict, true);
        let strict = schedule_of(&a, &strict);
        assert!(
            outcomes(&strict, "missed") >= 4,
            "the downtime's occurrences missed: {strict}"
        );
        // The device ran each command once (resends are not runs), but for the newest
        // ones, which may still be on their way.
        let safe = schedule_of(&a, &safe);
        assert_eq!(safe["counts"], json!({"fired": 1}), "{safe}");
        let fired = fired + 1;
        let (_, twin) = call(&a, "GET", &format!("/devices/{on}"), None);
        assert_eq!(twin["reported"]["mode"], "safe", "{twin}");
        let started = stats.commands_started.load(Ordering::Relaxed) as usize;
        eprintln!(
            "schedules: {fired} occurrences fired, {started} run by the device, {} missed in the downtime",
            outcomes(&strict, "missed")
        );
        assert!(
            started <= fired && started + 4 >= fired,
            "device ran {started} of {fired}"
        );
        check_offline(&a, &off, &offline, &returning);
    });
    stop.cancel();
    for fleet in [online, back] {
        let _ = fleet.await;
    }
}

/// Each fired occurrence is one command on the twin (but one recorded just before the
/// kill, whose command may not have left before its time to live ended), and the twin has
/// no other. Returns how many fired.
fn check_kept(a: &Service, b: &Service, on: &str, id: &str, missed: bool) -> usize {
    let schedule = schedule_of(b, id);
    let fired = check_occurrences(&schedule);
    assert!(fired.len() >= 8, "{schedule}");
    assert_eq!(outcomes(&schedule, "missed") > 0, missed, "{schedule}");
    let commands = commands_of(a, on, id);
    let ids: BTreeSet<String> = commands.iter().map(|(c, _)| c.clone()).collect();
    assert_eq!(ids.len(), commands.len(), "one command per id");
    assert!(
        ids.is_subset(&fired) && ids.len() + 1 >= fired.len(),
        "twin {ids:?} vs fired {fired:?}"
    );
    // Both instances read the same log.
    let other = schedule_of(a, id);
    assert!(
        other["counts"]["fired"].as_u64() >= Some(fired.len() as u64 - 3),
        "{other}"
    );
    let succeeded = commands.iter().filter(|(_, s)| s == "succeeded").count();
    assert!(succeeded + 3 >= fired.len(), "{commands:?}");
    fired.len()
}

/// The offline device's commands expired on the twin without ever being sent, and the
/// device, back, received none.
fn check_offline(a: &Service, off: &str, id: &str, returning: &FleetStats) {
    let schedule = schedule_of(a, id);
    assert!(schedule["deleted"].is_object(), "{schedule}");
    let fired = check_occurrences(&schedule);
    assert!(fired.len() >= 3, "{schedule}");
    let commands = commands_of(a, off, id);
    let ids: BTreeSet<String> = commands.iter().map(|(c, _)| c.clone()).collect();
    assert!(
        ids.is_subset(&fired) && ids.len() + 1 >= fired.len(),
        "{commands:?}"
    );
    assert!(
        commands.iter().all(|(_, state)| state == "expired"),
        "{commands:?}"
    );
    eventually(Duration::from_secs(10), "the device back online", || {
        let (_, twin) = call(a, "GET", &format!("/devices/{off}"), None);
        (twin["connectivity"] == "online").then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        returning.commands_received.load(Ordering::Relaxed),
        0,
        "a stale command ran"
    );
}
