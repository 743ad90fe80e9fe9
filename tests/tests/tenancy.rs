//! Tenants and authentication end to end: two tenants' simulated fleets through one
//! service with auth on, against real Mosquitto and tansu.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use fleetwatch_e2e::{eventually, read_topic, Namespace, Rig, Service};
use fleetwatch_sim::{run_fleet, AlertListener, FleetStats, SimConfig};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "e2e-secret-for-tenancy-tests-32-bytes-long";

fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// A token from `fleetwatch token`, signed with `secret`.
fn token(rig: &Rig, secret: &str, tenant: Option<&str>, ttl_secs: u64) -> String {
    let mut command = Command::new(&rig.fleetwatch_bin);
    command
        .args(["token", "--ttl-secs", &ttl_secs.to_string()])
        .env("FLEETWATCH_AUTH__HS256_SECRET", secret);
    if let Some(tenant) = tenant {
        command.args(["--tenant", tenant]);
    }
    let output = command.output().expect("fleetwatch token runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn auth_env(prefix: &str) -> Vec<(String, String)> {
    vec![
        ("FLEETWATCH_AUTH__MODE".into(), "jwt".into()),
        ("FLEETWATCH_AUTH__HS256_SECRET".into(), SECRET.into()),
        ("FLEETWATCH_AUTH__LEEWAY_SECS".into(), "0".into()),
        (
            "FLEETWATCH_TENANCY__PROVISIONING".into(),
            format!(
                r#"[{{prefix = "{prefix}acme-", tenant = "acme"}}, {{prefix = "{prefix}globex-", tenant = "globex"}}]"#
            ),
        ),
        ("FLEETWATCH_SCORER__CLEAR_AFTER_EVENTS".into(), "150".into()),
    ]
}

async fn start(
    rig: &Rig,
    namespace: &Namespace,
    instance: &str,
    env: &[(String, String)],
) -> Service {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Service::start_async(rig, namespace, "all", instance, &env).await
}

fn call(
    service: &Service,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("Authorization", b.as_str()))
        .collect();
    let (status, _, body) = service.request(method, path, &headers, body.as_ref());
    (status, body)
}

fn fleet(rig: &Rig, prefix: String, seed: u64) -> SimConfig {
    let mut sim = SimConfig::new(&rig.mqtt_host, rig.mqtt_port, 10);
    sim.id_prefix = prefix;
    sim.interval_ms = 100;
    sim.warmup_secs = 40.0;
    sim.duration_secs = Some(70.0);
    sim.anomalies_per_minute = 60.0;
    sim.outages_per_minute = 0.0;
    sim.seed = seed;
    sim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_tenant_sees_its_own_devices_and_alerts_only() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("tenancy");
    let prefix = namespace.device_prefix();
    let env = auth_env(&prefix);
    let service = start(&rig, &namespace, "a", &env).await;
    let (acme, globex, operator) = (
        token(&rig, SECRET, Some("acme"), 3600),
        token(&rig, SECRET, Some("globex"), 3600),
        token(&rig, SECRET, None, 3600),
    );

    // Without a token the upgrade is refused.
    let refused = tokio_tungstenite::connect_async(service.ws_url()).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401),
        "{refused:?}"
    );
    let listen = |token: &str| {
        let url = format!("{}?access_token={token}", service.ws_url());
        async move { AlertListener::connect(&url, "").await.unwrap() }
    };
    let (acme_ws, globex_ws, operator_ws) = (
        listen(&acme).await,
        listen(&globex).await,
        listen(&operator).await,
    );
    // A short-lived token's connection is closed when it expires.
    let short = token(&rig, SECRET, Some("acme"), 3);
    let (mut expiring, _) =
        tokio_tungstenite::connect_async(format!("{}?access_token={short}", service.ws_url()))
            .await
            .unwrap();

    let stats = Arc::new(FleetStats::default());
    let fleets = futures::future::join(
        run_fleet(
            fleet(&rig, format!("{prefix}acme-"), 3),
            stats.clone(),
            CancellationToken::new(),
        ),
        run_fleet(
            fleet(&rig, format!("{prefix}globex-"), 4),
            stats.clone(),
            CancellationToken::new(),
        ),
    );
    let closed = async {
        loop {
            match expiring.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    };
    let (_, close) = futures::future::join(fleets, closed).await;
    let close = close.expect("a close frame with a reason");
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "token expired");
    tokio::time::sleep(Duration::from_secs(5)).await;

    let devices = |alerts: &[fleetwatch_sim::ReceivedAlert], of: &str| {
        alerts
            .iter()
            .filter(|a| {
                a.alert
                    .device_id
                    .as_str()
                    .starts_with(&format!("{prefix}{of}-"))
            })
            .count()
    };
    let (for_acme, for_globex, for_operator) =
        (acme_ws.alerts(), globex_ws.alerts(), operator_ws.alerts());
    println!(
        "alerts: acme client {}, globex client {}, operator client {}",
        for_acme.len(),
        for_globex.len(),
        for_operator.len()
    );
    assert!(
        for_operator.len() >= 24,
        "too few alerts to tell: {}",
        for_operator.len()
    );
    assert!(devices(&for_acme, "acme") > 0 && devices(&for_globex, "globex") > 0);
    assert_eq!(
        devices(&for_acme, "globex"),
        0,
        "acme received a globex alert"
    );
    assert_eq!(
        devices(&for_globex, "acme"),
        0,
        "globex received an acme alert"
    );
    assert_eq!(for_acme.len() + for_globex.len(), for_operator.len());
    assert!(for_acme
        .iter()
        .all(|a| a.alert.tenant.as_ref().map(|t| t.as_str()) == Some("acme")));

    let acme_device = format!("{prefix}acme-00001");
    let globex_device = format!("{prefix}globex-00001");
    blocking(|| {
        credentials_and_tenants_are_enforced(
            &rig,
            &service,
            &acme_device,
            &globex_device,
            [&acme, &globex, &operator],
        )
    });

    // An operator moves a device to the other tenant: its next events carry the new one.
    let (status, moved) = call(
        &service,
        "PUT",
        &format!("/devices/{acme_device}/tenant"),
        Some(&operator),
        Some(json!({"tenant": "globex"})),
    );
    assert_eq!(status, 200, "{moved}");
    blocking(|| {
        eventually(
            Duration::from_secs(10),
            "the move to reach the directory",
            || {
                (call(
                    &service,
                    "GET",
                    &format!("/devices/{acme_device}"),
                    Some(&globex),
                    None,
                )
                .0 == 200)
                    .then_some(())
            },
        )
    });
    let (status, _) = call(
        &service,
        "GET",
        &format!("/devices/{acme_device}"),
        Some(&acme),
        None,
    );
    assert_eq!(status, 404);
    let moved_fleet = {
        let mut sim = fleet(&rig, format!("{prefix}acme-"), 3);
        sim.devices = 2;
        sim.warmup_secs = 100.0;
        sim.duration_secs = Some(3.0);
        sim
    };
    run_fleet(moved_fleet, stats.clone(), CancellationToken::new())
        .await
        .unwrap();
    let topic = namespace.topic("iot.telemetry");
    let last = blocking(|| {
        eventually(
            Duration::from_secs(10),
            "a stamped event after the move",
            || {
                read_topic(&rig.kafka, &topic)
                    .into_iter()
                    .filter_map(|record| record.device_event())
                    .rfind(|event| event.device_id.as_str() == acme_device)
                    .filter(|event| event.tenant.as_ref().map(|t| t.as_str()) == Some("globex"))
            },
        )
    });
    assert_eq!(last.tenant.unwrap().as_str(), "globex");

    // A decommissioned device is gone, and stays gone across a restart and a rebalance.
    let gone = format!("{prefix}globex-00002");
    let (status, body) = call(
        &service,
        "DELETE",
        &format!("/devices/{gone}"),
        Some(&operator),
        None,
    );
    assert_eq!(status, 202, "{body}");
    blocking(|| {
        eventually(Duration::from_secs(15), "the device to be gone", || {
            let (status, _) = call(
                &service,
                "GET",
                &format!("/devices/{gone}"),
                Some(&operator),
                None,
            );
            let listed = call(
                &service,
                "GET",
                &format!("/devices?prefix={gone}"),
                Some(&operator),
                None,
            )
            .1;
            (status == 404 && listed["devices"] == json!([])).then_some(())
        })
    });
    let status = blocking(|| service.terminate(Duration::from_secs(30)));
    assert!(status.success(), "{status}");

    // After a restart, and with a second instance sharing the partitions.
    let first = start(&rig, &namespace, "b", &env).await;
    let second = start(&rig, &namespace, "c", &env).await;
    blocking(|| {
        for service in [&first, &second] {
            eventually(Duration::from_secs(30), "the assignment to survive", || {
                let (status, twin) = call(
                    service,
                    "GET",
                    &format!("/devices/{acme_device}"),
                    Some(&operator),
                    None,
                );
                (status == 200 && twin["tenant"] == "globex").then_some(())
            });
            let (status, _) = call(
                service,
                "GET",
                &format!("/devices/{acme_device}"),
                Some(&globex),
                None,
            );
            assert_eq!(status, 200);
            let (status, body) = call(
                service,
                "GET",
                &format!("/devices/{gone}"),
                Some(&operator),
                None,
            );
            assert_eq!(status, 404, "decommissioned device came back: {body}");
        }
    });
    let params = read_topic(&rig.kafka, &namespace.topic("iot.model-params"));
    let last_params = params
        .iter()
        .rfind(|r| r.key == gone)
        .expect("params were published");
    assert!(
        last_params.bytes.is_empty(),
        "the parameters end with a tombstone"
    );
    let checkpoints = read_topic(&rig.kafka, &namespace.topic("iot.trainer-state"));
    assert!(checkpoints
        .iter()
        .rfind(|r| r.key == gone)
        .is_none_or(|r| r.bytes.is_empty()));
    blocking(|| {
        first.terminate(Duration::from_secs(30));
        second.terminate(Duration::from_secs(30));
    });
}

/// 401 for missing, expired and forged tokens; 404 for another tenant's device on read,
/// command and desired-state write; operators reach both; listings are per tenant.
fn credentials_and_tenants_are_enforced(
    rig: &Rig,
    service: &Service,
    acme_device: &str,
    globex_device: &str,
    [acme, globex, operator]: [&String; 3],
) {
    let expired = token(rig, SECRET, Some("acme"), 0);
    let forged = token(rig, "another-secret-that-is-also-32-bytes-long", None, 3600);
    std::thread::sleep(Duration::from_millis(1100));
    let path = format!("/devices/{acme_device}");
    for (credential, reason) in [
        (None, "missing"),
        (Some(expired.as_str()), "expired"),
        (Some(forged.as_str()), "bad_signature"),
    ] {
        let (status, body) = call(service, "GET", &path, credential, None);
        assert_eq!(
            (status, body["reason"].as_str()),
            (401, Some(reason)),
            "{body}"
        );
        assert!(!body.to_string().contains(SECRET));
    }
    assert!(service.metric("fleetwatch_auth_failures_total{reason=\"expired\"}") >= 1.0);
    for (token, mine, theirs) in [
        (acme, acme_device, globex_device),
        (globex, globex_device, acme_device),
    ] {
        assert_eq!(
            call(
                service,
                "GET",
                &format!("/devices/{mine}"),
                Some(token),
                None
            )
            .0,
            200
        );
        let (status, body) = call(
            service,
            "GET",
            &format!("/devices/{theirs}"),
            Some(token),
            None,
        );
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"], format!("no device {theirs} is known"));
        let command = json!({"name": "reboot"});
        assert_eq!(
            call(
                service,
                "POST",
                &format!("/devices/{theirs}/commands"),
                Some(token),
                Some(command)
            )
            .0,
            404
        );
        assert_eq!(
            call(
                service,
                "PUT",
                &format!("/devices/{theirs}/desired"),
                Some(token),
                Some(json!({"led": "red"}))
            )
            .0,
            404
        );
        assert_eq!(
            call(
                service,
                "PUT",
                &format!("/devices/{mine}/tenant"),
                Some(token),
                Some(json!({"tenant": null}))
            )
            .0,
            403
        );
    }
    for device in [acme_device, globex_device] {
        assert_eq!(
            call(
                service,
                "GET",
                &format!("/devices/{device}"),
                Some(operator),
                None
            )
            .0,
            200
        );
        let (status, body) = call(
            service,
            "POST",
            &format!("/devices/{device}/commands"),
            Some(operator),
            Some(json!({"name": "ping"})),
        );
        assert_eq!(status, 201, "{body}");
    }
    // Listings: a tenant's fleet, a page at a time, nothing of the other tenant.
    let mut listed = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = call(
            service,
            "GET",
            &format!("/devices?limit=3{after}"),
            Some(acme),
            None,
        );
        assert_eq!(status, 200, "{page}");
        listed.extend(
            page["devices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["device_id"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(listed.len(), 10, "{listed:?}");
    assert!(listed.iter().all(|id| id.contains("-acme-")), "{listed:?}");
}

/// A TLS client trusting only `cert` (the test's own certificate).
fn tls_connector(cert: &rcgen::CertifiedKey) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_stream(
    connector: &tokio_rustls::TlsConnector,
    address: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// `GET path` over TLS: the status and the body.
async fn get_tls(
    connector: &tokio_rustls::TlsConnector,
    address: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tls_stream(connector, address).await;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_websocket_answer_over_tls() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("fw-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let env = [
        ("FLEETWATCH_AUTH__MODE", "jwt"),
        ("FLEETWATCH_AUTH__HS256_SECRET", SECRET),
        ("FLEETWATCH_TLS__CERT_FILE", cert_file.to_str().unwrap()),
        ("FLEETWATCH_TLS__KEY_FILE", key_file.to_str().unwrap()),
    ];
    let service = blocking(|| Service::spawn(&rig, &namespace, "alerts", "a", &env));
    let connector = tls_connector(&cert);
    let http = service.http;
    let mut ready = (0, String::new());
    for _ in 0..150 {
        ready = get_tls(&connector, http, "/readyz", None).await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    let operator = token(&rig, SECRET, None, 3600);
    let (status, body) = get_tls(&connector, http, "/devices", Some(&operator)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get_tls(&connector, http, "/devices", None).await.0, 401);

    let ws = service.ws.expect("the alerts role runs");
    let upgrade = |token: Option<String>| {
        let connector = connector.clone();
        async move {
            let stream = tls_stream(&connector, ws).await;
            let query = token.map_or(String::new(), |t| format!("?access_token={t}"));
            tokio_tungstenite::client_async(
                format!("wss://localhost:{}/{query}", ws.port()),
                stream,
            )
            .await
        }
    };
    let refused = upgrade(None).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401),
        "{refused:?}"
    );
    let (mut socket, _) = upgrade(Some(operator))
        .await
        .expect("upgrade over TLS with a token");
    socket.close(None).await.unwrap();
    blocking(|| service.terminate(Duration::from_secs(30)));
}
