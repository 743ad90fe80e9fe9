//! Unit tests of jobs: the plan stepped on in-memory state and a made-up fleet, with an
//! injected clock.

use fleetwatch_protocol::{
    AbortCriteria, Canary, DeviceId, ExecutionState, JobCommand, JobEvent, JobEventBody, JobSpec,
    Rollout,
};
use serde_json::json;

use super::fleet::FleetView;
use super::plan::{step, Step, StepRules};
use super::state::JobState;
use crate::devices::Twin;

fn id(i: usize) -> DeviceId {
    DeviceId::parse(&format!("d{i:02}")).unwrap()
}

fn spec(devices: usize, canary: Option<Canary>) -> JobSpec {
    JobSpec {
        job_id: "j1".into(),
        tenant: None,
        tenants: Vec::new(),
        created_by: "test".into(),
        command: JobCommand::SoftwareUpdate {
            url: "http://x/fw".into(),
            version: "2.1".into(),
            checksum: "abc".into(),
        },
        target: json!({"prefix": "d"}),
        devices: (0..devices).map(id).collect(),
        rollout: Rollout {
            waves_percent: vec![10.0, 50.0, 100.0],
            soak_ms: 1000,
            max_per_minute: 6000,
        },
        abort: AbortCriteria {
            failure_ratio: 0.5,
            min_finished: 4,
            canary,
        },
        device_timeout_ms: 60_000,
        ttl_ms: 600_000,
        continuous: false,
    }
}

/// A fleet where every device is online at firmware 1.0.
fn fleet(devices: usize) -> FleetView {
    let fleet = FleetView::new(8);
    fleet.start(Default::default());
    for i in 0..devices {
        fleet.apply(id(i), Some(twin(i, "1.0", &[])));
    }
    fleet
}

fn twin(i: usize, firmware: &str, alarms_at: &[i64]) -> Twin {
    let mut twin = Twin::new(id(i));
    twin.connectivity = Some(fleetwatch_protocol::Connectivity::Online);
    twin.reported.insert("firmware".into(), firmware.into());
    let alarms: Vec<serde_json::Value> = alarms_at
        .iter()
        .enumerate()
        .map(|(n, at)| alarm(i, n, *at))
        .collect();
    twin.extras_mut().alarms = serde_json::from_value(json!(alarms)).unwrap();
    twin
}

fn alarm(i: usize, n: usize, at: i64) -> serde_json::Value {
    json!({"alarm_id": format!("{}:{n}", id(i)), "device_id": id(i), "severity": "major",
        "active": false, "acknowledged": false, "created_ms": at, "updated_ms": at,
        "peak_score": 0.9, "threshold": 0.6, "reason": "r", "count": 1, "last_alert_seq": n,
        "changes": 1, "history": []})
}

fn rules(now_ms: i64) -> StepRules {
    StepRules {
        now_ms,
        tick_ms: 250,
        resend_after_ms: 30_000,
        resend_all: false,
    }
}

/// Step and apply what was decided, as the owner does.
fn run(job: &mut JobState, fleet: &FleetView, now_ms: i64) -> Step {
    let planned = step(job, fleet, rules(now_ms));
    for body in &planned.events {
        job.apply(&JobEvent {
            job_id: "j1".into(),
            at_ms: now_ms,
            body: body.clone(),
        });
    }
    planned
}

/// Devices that were sent the command report the new version (or `bad` of them fail).
fn install(job: &JobState, fleet: &FleetView, firmware: &str, alarms_at: &[i64]) {
    for (device, execution) in &job.executions {
        if execution.state == ExecutionState::Sent {
            let i: usize = device.as_str()[1..].parse().unwrap();
            fleet.apply(device.clone(), Some(twin(i, firmware, alarms_at)));
        }
    }
}

#[test]
fn waves_grow_after_each_soak_and_the_job_completes() {
    let (fleet, mut job) = (fleet(20), JobState::new(spec(20, None), 0, 0));
    let first = run(&mut job, &fleet, 0);
    assert_eq!(
        first.send,
        vec![id(0), id(1)],
        "10% of 20, recorded before sending"
    );
    assert!(matches!(
        first.events[0],
        JobEventBody::WaveStarted {
            wave: 0,
            reach: 2,
            ..
        }
    ));
    let mut now = 0;
    let mut sent = first.send.len();
    while job.finished_ms.is_none() && now < 60_000 {
        install(&job, &fleet, "2.1", &[]);
        now += 250;
        let planned = run(&mut job, &fleet, now);
        sent += planned.send.len();
    }
    assert_eq!(job.status(), "completed");
    assert_eq!(sent, 20, "each device was sent the command once");
    assert_eq!(job.counts()["succeeded"], 20);
    let reach: Vec<u32> = job.waves.iter().map(|w| w.reach).collect();
    assert_eq!(reach, [2, 10, 20]);
    for pair in job.waves.windows(2) {
        assert!(
            pair[1].started_ms >= pair[0].finished_ms.unwrap() + 1000,
            "soak kept"
        );
    }
}

#[test]
fn a_bad_build_is_aborted_by_the_canary_and_queued_executions_end_cancelled() {
    let canary = Canary {
        min_updated: 2,
        ratio: 3.0,
        p_value: 0.01,
    };
    let mut spec = spec(40, Some(canary));
    spec.rollout.waves_percent = vec![5.0, 25.0, 100.0];
    spec.rollout.max_per_minute = 240; // one per 250 ms tick
    let (fleet, mut job) = (fleet(40), JobState::new(spec, 0, 0));
    let mut now = 0;
    while !job.is_stopped() && now < 120_000 {
        // Updated devices alarm every second from their update on (8 kept per device).
        let storm: Vec<i64> = (1..=8).map(|s| now + s * 1000).collect();
        install(&job, &fleet, "2.1", &storm);
        now += 250;
        run(&mut job, &fleet, now);
    }
    assert_eq!(job.status(), "aborted");
    let (decision, _) = job.abort.clone().unwrap();
    let fleetwatch_protocol::AbortDecision::Canary { wave, figures } = decision else {
        panic!("{decision:?}")
    };
    assert_eq!(wave, 0);
    assert!(figures.abort && figures.p_value < 0.01 && figures.rate_ratio.unwrap() >= 3.0);
    let counts = job.counts();
    assert!(counts["sent"] + counts["succeeded"] <= 2, "{counts:?}");
    // Nothing more is sent; a queued execution (had there been one) would be cancelled.
    let after = run(&mut job, &fleet, now + 10_000);
    assert!(after.send.is_empty() && job.waves.len() == 1, "{after:?}");
}

#[test]
fn cancelling_stops_first_sends_and_cancels_queued_executions() {
    let mut spec = spec(20, None);
    spec.rollout.max_per_minute = 4; // one send per tick at most, four a minute
    let (fleet, mut job) = (fleet(20), JobState::new(spec, 0, 0));
    run(&mut job, &fleet, 0);
    assert_eq!(job.counts()["queued"], 1, "{:?}", job.counts());
    job.apply(&JobEvent {
        job_id: "j1".into(),
        at_ms: 1,
        body: JobEventBody::CancelRequested { by: "op".into() },
    });
    let planned = run(&mut job, &fleet, 250);
    assert!(planned.send.is_empty());
    assert_eq!(job.counts()["cancelled"], 1);
    assert_eq!(job.counts()["sent"], 1);
    install(&job, &fleet, "2.1", &[]);
    run(&mut job, &fleet, 500);
    assert_eq!(job.status(), "cancelled");
    assert!(job.finished_ms.is_some(), "finished once nothing is open");
}

#[test]
fn a_restored_owner_sends_again_only_what_is_sent_and_never_creates_twice() {
    let (fleet, mut job) = (fleet(20), JobState::new(spec(20, None), 0, 0));
    let first = run(&mut job, &fleet, 0);
    // The log is applied again (a new owner reads it from the beginning).
    let replay: Vec<JobEventBody> = first.events.clone();
    for body in replay {
        job.apply(&JobEvent {
            job_id: "j1".into(),
            at_ms: 5,
            body,
        });
    }
    assert_eq!(job.executions.len(), 2);
    let restored = step(
        &job,
        &fleet,
        StepRules {
            resend_all: true,
            ..rules(250)
        },
    );
    assert_eq!(restored.send, first.send, "the same executions, sent again");
    assert!(restored.events.is_empty(), "{restored:?}");
}

fn object(value: serde_json::Value) -> fleetwatch_protocol::JsonObject {
    value.as_object().unwrap().clone()
}

#[test]
fn a_configuration_change_succeeds_when_the_reported_state_closes_its_delta() {
    let mut spec = spec(3, None);
    spec.rollout.waves_percent = vec![100.0];
    spec.command = JobCommand::Configuration {
        desired: object(json!({"sampling_ms": 500, "led": null, "net": {"apn": "iot"}})),
    };
    let request = spec.command.request("job-j1-d00", 1_000);
    assert!(matches!(
        request,
        fleetwatch_protocol::DeviceRequestBody::SetDesired { merge: true, .. }
    ));
    let (fleet, mut job) = (fleet(3), JobState::new(spec, 0, 0));
    assert_eq!(run(&mut job, &fleet, 0).send.len(), 3);
    let with = |i: usize, desired: serde_json::Value, reported: serde_json::Value, online: bool| {
        let mut twin = twin(i, "1.0", &[]);
        twin.extras_mut().desired = object(desired);
        twin.reported.extend(object(reported));
        if !online {
            twin.connectivity = Some(fleetwatch_protocol::Connectivity::Offline);
        }
        fleet.apply(id(i), Some(twin));
    };
    let patched = json!({"sampling_ms": 500, "net": {"apn": "iot"}});
    // d00 applied it (its other keys stay); d01 has it but not yet applied; d02 is
    // offline with it waiting.
    with(
        0,
        patched.clone(),
        json!({"sampling_ms": 500, "net": {"apn": "iot", "mtu": 1400}}),
        true,
    );
    with(
        1,
        patched.clone(),
        json!({"sampling_ms": 100, "led": "on"}),
        true,
    );
    with(2, patched.clone(), json!({}), false);
    run(&mut job, &fleet, 250);
    let state = |job: &JobState, i| job.executions[&id(i)].state;
    assert_eq!(
        [state(&job, 0), state(&job, 1), state(&job, 2)],
        [
            ExecutionState::Succeeded,
            ExecutionState::InProgress,
            ExecutionState::Sent
        ]
    );
    // A key the patch deletes must be gone from the reported state too.
    with(
        1,
        patched.clone(),
        json!({"sampling_ms": 500, "net": {"apn": "iot"}, "led": "on"}),
        true,
    );
    run(&mut job, &fleet, 500);
    assert_eq!(
        state(&job, 1),
        ExecutionState::InProgress,
        "led still reported"
    );
    let mut twin1 = twin(1, "1.0", &[]);
    twin1.extras_mut().desired = object(patched);
    twin1.reported = object(json!({"sampling_ms": 500, "net": {"apn": "iot"}}));
    fleet.apply(id(1), Some(twin1));
    run(&mut job, &fleet, 750);
    assert_eq!(state(&job, 1), ExecutionState::Succeeded);
}

#[test]
fn a_continuous_job_takes_devices_that_match_later_and_runs_until_cancelled() {
    let mut spec = spec(4, None);
    spec.rollout.waves_percent = vec![50.0, 100.0];
    spec.rollout.soak_ms = 0;
    spec.continuous = true;
    let (fleet, mut job) = (fleet(8), JobState::new(spec, 0, 0));
    let mut now = 0;
    for _ in 0..40 {
        install(&job, &fleet, "2.1", &[]);
        now += 250;
        run(&mut job, &fleet, now);
    }
    assert_eq!(job.counts()["succeeded"], 4);
    assert_eq!(
        job.status(),
        "running",
        "a continuous job does not finish by itself"
    );
    // Two devices match later (one of them twice: added once).
    let added = JobEventBody::TargetsAdded {
        devices: vec![id(4), id(5), id(4)],
    };
    job.apply(&JobEvent {
        job_id: "j1".into(),
        at_ms: now,
        body: added,
    });
    assert_eq!(job.spec.devices.len(), 6);
    assert_eq!(
        job.counts()["queued"],
        2,
        "queued at once: the last wave runs"
    );
    now += 250;
    let planned = run(&mut job, &fleet, now);
    assert_eq!(planned.send, [id(4), id(5)]);
    install(&job, &fleet, "2.1", &[]);
    run(&mut job, &fleet, now + 250);
    assert_eq!(job.counts()["succeeded"], 6);
    job.apply(&JobEvent {
        job_id: "j1".into(),
        at_ms: now + 300,
        body: JobEventBody::CancelRequested { by: "op".into() },
    });
    run(&mut job, &fleet, now + 500);
    assert!(job.finished_ms.is_some() && job.status() == "cancelled");
}

#[test]
fn a_device_that_left_the_jobs_tenant_is_never_sent_the_command() {
    let acme = fleetwatch_protocol::TenantId::parse("acme").unwrap();
    let mut spec = spec(3, None);
    spec.rollout.waves_percent = vec![100.0];
    spec.tenant = Some(acme.clone());
    let fleet = FleetView::new(8);
    fleet.start(Default::default());
    for i in 0..3 {
        let mut twin = twin(i, "1.0", &[]);
        // d01 moved to another tenant after the job was created.
        twin.tenant = Some(
            fleetwatch_protocol::TenantId::parse(if i == 1 { "globex" } else { "acme" }).unwrap(),
        );
        fleet.apply(id(i), Some(twin));
    }
    let mut job = JobState::new(spec, 0, 0);
    let planned = run(&mut job, &fleet, 0);
    assert_eq!(planned.send, [id(0), id(2)]);
    assert_eq!(job.executions[&id(1)].state, ExecutionState::Cancelled);
    assert!(job.spec.reaches(Some(&acme)) && !job.spec.reaches(None));
}
