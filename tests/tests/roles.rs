//! How a process presents itself to an orchestrator: it refuses topics that would break
//! device ownership, and its readiness and liveness mean what they say.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleetwatch_e2e::proxy::TcpProxy;
use fleetwatch_e2e::{eventually, Namespace, Rig, Service};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_when_co_partitioned_topics_differ() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("copart");
    let params = namespace.topic("iot.model-params");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &rig.kafka)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(&params, 2, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    // Every other topic is created with 4 partitions (the harness's setting).
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(&rig.fleetwatch_bin)
            .args(["run", "--roles", "trainer"])
            .env("FLEETWATCH_KAFKA__BROKERS", &rig.kafka)
            .env("FLEETWATCH_KAFKA__TOPIC_PREFIX", namespace.topic_prefix())
            .env("FLEETWATCH_KAFKA__PARTITIONS", "4")
            .env("FLEETWATCH_HTTP__BIND", "127.0.0.1:0")
            .env("FLEETWATCH_AUTH__MODE", "none")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("fleetwatch kept running with mismatched partition counts");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let telemetry = format!(
        "{}iot.telemetry",
        params.trim_end_matches("iot.model-params")
    );
    assert!(
        stderr.contains(&format!("{params} has 2 partitions"))
            && stderr.contains(&format!("{telemetry} has 4")),
        "the refusal names both topics: {stderr}"
    );
}

fn readiness(service: &Service) -> (u16, serde_json::Value) {
    service.get("/readyz")
}

fn assert_live(service: &Service) {
    let (status, body) = service.get("/livez");
    assert_eq!(status, 200, "{body}");
}

/// Ingest reaches Mosquitto through a proxy the test cuts and restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_brokers_and_liveness_does_not() {
    let rig = Rig::from_env();
    let mosquitto: SocketAddr = format!("{}:{}", rig.mqtt_host, rig.mqtt_port)
        .parse()
        .unwrap();
    let proxy = TcpProxy::start(mosquitto, false).await;
    let port = proxy.addr.port().to_string();
    let namespace = Namespace::new("health");
    let service = tokio::task::spawn_blocking(move || {
        Service::spawn(
            &rig,
            &namespace,
            "ingest,trainer",
            "a",
            &[("FLEETWATCH_MQTT__PORT", &port)],
        )
    })
    .await
    .unwrap();

    // The trainer gets its partitions; ingest cannot reach its broker: not ready.
    let service = tokio::task::spawn_blocking(move || {
        let body = eventually(Duration::from_secs(60), "the trainer ready", || {
            let (status, body) = readiness(&service);
            (body["roles"]["trainer"]["ready"] == true).then_some((status, body))
        });
        assert_eq!(body.0, 503, "{}", body.1);
        assert_eq!(body.1["roles"]["ingest"]["ready"], false, "{}", body.1);
        assert_live(&service);
        service
    })
    .await
    .unwrap();

    proxy.restore();
    let service = wait_for_readiness(service, 200).await;

    // A broker outage: not ready, and still live all along.
    proxy.cut();
    let service = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let (_, body) = eventually(Duration::from_secs(30), "503 in the outage", || {
            assert_live(&service);
            let (status, body) = readiness(&service);
            (status == 503).then_some((status, body))
        });
        assert_eq!(body["roles"]["ingest"]["ready"], false, "{body}");
        while started.elapsed() < Duration::from_secs(5) {
            assert_live(&service);
            std::thread::sleep(Duration::from_millis(250));
        }
        service
    })
    .await
    .unwrap();

    proxy.restore();
    wait_for_readiness(service, 200).await;
}

async fn wait_for_readiness(service: Service, expected: u16) -> Service {
    tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(30), "readiness", || {
            assert_live(&service);
            (readiness(&service).0 == expected).then_some(())
        });
        service
    })
    .await
    .unwrap()
}
