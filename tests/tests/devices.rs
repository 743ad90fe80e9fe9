//! Device twins and commands end to end, against real Mosquitto and tansu through the
//! fleetwatch binary: every command state, version conflicts, delivery to a device that
//! was offline, and a rebalance between two instances with one killed.

use std::time::Duration;

use fleetwatch_e2e::device::TestDevice;
use fleetwatch_e2e::{eventually, Namespace, Rig, Service};
use serde_json::{json, Value};

async fn start(
    rig: &Rig,
    namespace: &Namespace,
    roles: &'static str,
    instance: &'static str,
) -> Service {
    let env = [("FLEETWATCH_DEVICES__TWIN__RESEND_AFTER_MS", "500")];
    Service::start_async(rig, namespace, roles, instance, &env).await
}

/// Run blocking HTTP and polling on this worker without stalling the devices' tasks.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

fn post_command(service: &Service, device: &str, body: Value) -> (u16, Value) {
    let (status, _, body) = service.request(
        "POST",
        &format!("/devices/{device}/commands"),
        &[],
        Some(&body),
    );
    (status, body)
}

fn put_desired(service: &Service, device: &str, if_match: &str, desired: Value) -> (u16, Value) {
    let (status, _, body) = service.request(
        "PUT",
        &format!("/devices/{device}/desired"),
        &[("If-Match", if_match)],
        Some(&desired),
    );
    (status, body)
}

/// Poll the command until `accept` likes it.
fn wait_command(
    service: &Service,
    device: &str,
    command: &Value,
    what: &str,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    let id = command["command_id"].as_str().expect("a command id");
    eventually(Duration::from_secs(30), what, || {
        let (status, body) = service.get(&format!("/devices/{device}/commands/{id}"));
        (status == 200 && accept(&body)).then_some(body)
    })
}

fn states(command: &Value) -> Vec<String> {
    command["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["state"].as_str().unwrap().to_owned())
        .collect()
}

fn in_state(state: &'static str) -> impl Fn(&Value) -> bool {
    move |command| command["state"] == state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_reach_every_state_and_stale_writes_conflict() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("twins");
    let service = start(&rig, &namespace, "ingest,devices", "a").await;
    let device = format!("{}d1", namespace.device_prefix());

    let reboot = blocking(|| {
        // Nobody has seen the device: reads say so, bad requests say what is wrong.
        let (status, body) = service.get(&format!("/devices/{device}"));
        assert_eq!(status, 404, "{body}");
        for (body, expected) in [
            (json!("not an object"), "command"),
            (json!({"name": "bad name!"}), "invalid"),
            (json!({"name": "reboot", "ttl_ms": 0}), "ttl_ms"),
            (json!({"name": "reboot", "colour": "red"}), "unknown field"),
        ] {
            let (status, answer) = post_command(&service, &device, body.clone());
            assert_eq!(status, 400, "{body} → {answer}");
            assert!(
                answer["error"].as_str().unwrap().contains(expected),
                "{body} → {answer}"
            );
        }
        let (status, answer) = put_desired(&service, &device, "\"0\"", json!([1, 2]));
        assert_eq!(status, 400, "{answer}");
        let (status, answer) = put_desired(&service, &device, "yesterday", json!({}));
        assert_eq!(status, 400, "{answer}");
        let (status, _) = service.get("/devices/bad%20id");
        assert_eq!(status, 400);
        let (status, _, answer) =
            service.request("PATCH", &format!("/devices/{device}"), &[], None);
        assert_eq!(status, 405, "{answer}");

        // Commands for a device that is offline wait; the same key gives the same command.
        let (status, reboot) = post_command(
            &service,
            &device,
            json!({"name": "reboot", "idempotency_key": "boot-1"}),
        );
        assert_eq!(status, 201, "{reboot}");
        assert_eq!(reboot["state"], "queued");
        let (status, again) = post_command(
            &service,
            &device,
            json!({"name": "reboot", "idempotency_key": "boot-1"}),
        );
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["command_id"], reboot["command_id"]);
        let (status, reused) = post_command(
            &service,
            &device,
            json!({"name": "shutdown", "idempotency_key": "boot-1"}),
        );
        assert_eq!(status, 409, "{reused}");
        let (status, blink) =
            post_command(&service, &device, json!({"name": "blink", "ttl_ms": 1500}));
        assert_eq!(status, 201, "{blink}");

        // Optimistic concurrency on the desired state.
        let (status, desired) = put_desired(&service, &device, "\"0\"", json!({"fan": "on"}));
        assert_eq!(status, 200, "{desired}");
        assert_eq!(desired["version"], 1);
        assert_eq!(desired["delta"], json!({"fan": "on"}));
        let (status, stale) = put_desired(&service, &device, "\"0\"", json!({"fan": "off"}));
        assert_eq!(status, 409, "{stale}");
        assert!(
            stale["error"].as_str().unwrap().contains("version 1"),
            "{stale}"
        );

        // Nobody connects in time: the short-lived command expires without being sent.
        let expired = wait_command(
            &service,
            &device,
            &blink,
            "blink to expire",
            in_state("expired"),
        );
        assert_eq!(states(&expired), ["queued", "expired"]);
        reboot
    });

    // The device comes online: the waiting command and the desired state reach it.
    let online = TestDevice::connect(&rig, &device, false).await;
    blocking(|| {
        let done = wait_command(
            &service,
            &device,
            &reboot,
            "reboot to succeed",
            in_state("succeeded"),
        );
        assert_eq!(states(&done), ["queued", "sent", "acked", "succeeded"]);
        let twin = eventually(Duration::from_secs(20), "the delta to close", || {
            let (_, twin) = service.get(&format!("/devices/{device}"));
            (twin["delta"] == json!({}) && twin["reported"]["fan"] == "on").then_some(twin)
        });
        assert_eq!(twin["connectivity"], "online");
        assert_eq!(twin["desired_version"], 1);
        assert_eq!(service.metric("fleetwatch_devices_online"), 1.0);

        let (_, update) = post_command(
            &service,
            &device,
            json!({"name": "update", "args": {"simulate": "fail"}}),
        );
        let failed = wait_command(
            &service,
            &device,
            &update,
            "update to fail",
            in_state("failed"),
        );
        assert_eq!(states(&failed), ["queued", "sent", "acked", "failed"]);
        let reason = failed["history"][3]["detail"].as_str().unwrap_or_default();
        assert!(reason.contains("simulated failure"), "{failed}");

        // A slow command is seen acknowledged before it succeeds.
        let (_, slow) = post_command(
            &service,
            &device,
            json!({"name": "calibrate", "args": {"delay_ms": 3000}}),
        );
        wait_command(
            &service,
            &device,
            &slow,
            "calibrate to be acked",
            in_state("acked"),
        );
        wait_command(
            &service,
            &device,
            &slow,
            "calibrate to succeed",
            in_state("succeeded"),
        );
    });

    // The connection drops: the broker's Last Will marks the device offline.
    online.cut();
    blocking(|| {
        let change = eventually(Duration::from_secs(30), "the device to go offline", || {
            let (_, twin) = service.get(&format!("/devices/{device}"));
            let last = twin["connectivity_history"].as_array()?.last()?.clone();
            (twin["connectivity"] == "offline").then_some(last)
        });
        assert_eq!(change["cause"], "status_message", "{change}");
        assert!(change["at_ms"].as_i64().is_some(), "{change}");
        assert_eq!(service.metric("fleetwatch_devices_online"), 0.0);
    });

    // A device that receives but never answers gets the command again, with backoff.
    let mute = TestDevice::connect(&rig, &device, true).await;
    blocking(|| {
        eventually(
            Duration::from_secs(20),
            "the device to be online again",
            || {
                (service.get(&format!("/devices/{device}")).1["connectivity"] == "online")
                    .then_some(())
            },
        );
        let (_, ping) = post_command(&service, &device, json!({"name": "ping"}));
        let resent = wait_command(&service, &device, &ping, "ping to be resent", |c| {
            c["state"] == "sent" && c["attempts"].as_u64() >= Some(3)
        });
        assert_eq!(states(&resent), ["queued", "sent"]);
    });
    // The service counts an attempt when it publishes; the device sees it a moment later.
    let received = mute.commands_received.clone();
    blocking(move || {
        eventually(
            Duration::from_secs(10),
            "the mute device to receive the command three times",
            || (received.load(std::sync::atomic::Ordering::Relaxed) >= 3).then_some(()),
        )
    });
    mute.leave().await;

    blocking(|| {
        let (status, missing) = service.get(&format!("/devices/{device}/commands/nope"));
        assert_eq!(status, 404, "{missing}");
        let (status, api) = service.get("/openapi.json");
        assert_eq!(status, 200);
        assert!(api["paths"]["/devices/{id}/commands/{command_id}"].is_object());
        let (_, _, metrics) = service.request("GET", "/metrics", &[], None);
        let metrics = metrics.as_str().unwrap().to_owned();
        for state in ["queued", "sent", "acked", "succeeded", "failed", "expired"] {
            assert!(
                metrics.contains(&format!(
                    "fleetwatch_command_transitions_total{{state=\"{state}\"}}"
                )),
                "no transitions to {state} counted"
            );
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instance_hands_its_twins_and_commands_to_new_owners() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("rebalance");
    let _ingest = start(&rig, &namespace, "ingest", "i").await;
    let first = start(&rig, &namespace, "devices", "a").await;
    let devices: Vec<String> = (0..8)
        .map(|n| format!("{}d{n}", namespace.device_prefix()))
        .collect();

    // Twins and waiting commands, all owned by the first instance.
    let commands: Vec<Value> = blocking(|| {
        devices
            .iter()
            .map(|device| {
                let (status, body) = put_desired(&first, device, "\"0\"", json!({"mode": "eco"}));
                assert_eq!(status, 200, "{body}");
                let key = format!("sync-{device}");
                let (status, command) = post_command(
                    &first,
                    device,
                    json!({"name": "sync", "idempotency_key": key}),
                );
                assert_eq!(status, 201, "{command}");
                command
            })
            .collect()
    });

    // A second instance joins: partitions are split, and every twin is still whole,
    // whichever instance is asked.
    let second = start(&rig, &namespace, "devices", "b").await;
    blocking(|| {
        for service in [&first, &second] {
            let (_, health) = service.get("/readyz");
            assert!(
                health["roles"]["devices"]["detail"]["devices_partitions"].as_i64() > Some(0),
                "{health}"
            );
        }
        for device in &devices {
            let twin = eventually(
                Duration::from_secs(30),
                "the twin after the rebalance",
                || {
                    let (status, twin) = second.get(&format!("/devices/{device}"));
                    (status == 200).then_some(twin)
                },
            );
            assert_eq!(twin["desired_version"], 1, "{twin}");
            assert_eq!(twin["commands"][0]["state"], "queued", "{twin}");
        }
    });

    // The second instance dies without a goodbye, and (as Kubernetes does) a
    // replacement starts. The killed instance's partitions go to new owners, which
    // rebuild the twins from the changelog. (tansu 0.6.0 keeps a group whose member timed
    // out in its old assignment until a member joins, so the survivor alone would not
    // take over on tansu: docs/architecture.md.)
    second.kill();
    // After the group's session timeout (10 s) the broker has dropped the dead member.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let third = start(&rig, &namespace, "devices", "c").await;
    let mut connected = Vec::new();
    for device in &devices {
        connected.push(TestDevice::connect(&rig, device, false).await);
    }
    blocking(|| {
        for (device, command) in devices.iter().zip(&commands) {
            let id = command["command_id"].as_str().unwrap();
            let done = eventually(
                Duration::from_secs(60),
                "the command after the kill",
                || {
                    let (status, body) = first.get(&format!("/devices/{device}/commands/{id}"));
                    (status == 200 && body["state"] == "succeeded").then_some(body)
                },
            );
            assert_eq!(states(&done), ["queued", "sent", "acked", "succeeded"]);
            // The journal kept the idempotency key and the desired version.
            let key = format!("sync-{device}");
            let (status, again) = post_command(
                &first,
                device,
                json!({"name": "sync", "idempotency_key": key}),
            );
            assert_eq!(
                (status, &again["command_id"]),
                (200, &command["command_id"])
            );
            let (status, body) = put_desired(&first, device, "\"1\"", json!({"mode": "boost"}));
            assert_eq!(status, 200, "{body}");
        }
        let assigned: i64 = [&first, &third]
            .iter()
            .map(|service| {
                let (_, health) = service.get("/readyz");
                health["roles"]["devices"]["detail"]["devices_partitions"]
                    .as_i64()
                    .unwrap_or(0)
            })
            .sum();
        assert_eq!(
            assigned, 12,
            "4 partitions of telemetry, of commands and of alerts"
        );
    });
    for device in connected {
        device.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_twin_is_passivated_and_comes_back_from_the_changelog() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("passivate");
    let env = [("FLEETWATCH_DEVICES__PASSIVATE_AFTER_MS", "1500")];
    let service = Service::start_async(&rig, &namespace, "devices", "a", &env).await;
    let device = format!("{}idle", namespace.device_prefix());
    blocking(|| {
        let (status, body) = put_desired(&service, &device, "\"0\"", json!({"led": "green"}));
        assert_eq!(status, 200, "{body}");
        let metric = |name: &str| service.metric(name);
        eventually(Duration::from_secs(20), "the idle actor to stop", || {
            (metric("fleetwatch_device_passivations_total") >= 1.0
                && metric("fleetwatch_device_actors") == 0.0)
                .then_some(())
        });
        // The next request brings it back with everything it had.
        let (status, twin) = service.get(&format!("/devices/{device}"));
        assert_eq!(status, 200, "{twin}");
        assert_eq!(twin["desired"], json!({"led": "green"}));
        assert_eq!(twin["desired_version"], 1);
        assert!(metric("fleetwatch_twin_revivals_total") >= 1.0);
        let (status, body) = put_desired(&service, &device, "\"1\"", json!({"led": "red"}));
        assert_eq!(status, 200, "{body}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loses_no_twin_and_no_command() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("restart");
    let device = format!("{}d1", namespace.device_prefix());
    let before = start(&rig, &namespace, "ingest,devices", "a").await;
    let command = blocking(|| {
        let (status, body) = put_desired(&before, &device, "\"0\"", json!({"mode": "eco"}));
        assert_eq!(status, 200, "{body}");
        let (status, command) = post_command(
            &before,
            &device,
            json!({"name": "sync", "idempotency_key": "k"}),
        );
        assert_eq!(
            (status, command["state"].as_str()),
            (201, Some("queued")),
            "{command}"
        );
        command
    });
    let status = blocking(|| before.terminate(Duration::from_secs(30)));
    assert!(status.success(), "{status}");

    let after = start(&rig, &namespace, "ingest,devices", "a").await;
    blocking(|| {
        let (status, twin) = after.get(&format!("/devices/{device}"));
        assert_eq!(status, 200, "{twin}");
        assert_eq!(twin["desired"], json!({"mode": "eco"}));
        assert_eq!(twin["commands"][0]["command_id"], command["command_id"]);
        assert_eq!(twin["commands"][0]["state"], "queued");
    });
    let online = TestDevice::connect(&rig, &device, false).await;
    blocking(|| {
        let done = wait_command(
            &after,
            &device,
            &command,
            "the command after the restart",
            in_state("succeeded"),
        );
        assert_eq!(states(&done), ["queued", "sent", "acked", "succeeded"]);
    });
    online.leave().await;
}
