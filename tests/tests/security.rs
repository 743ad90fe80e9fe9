//! One device cannot speak for another (issue 16), end to end: a Mosquitto of the test's
//! own with TLS (certificates made here with rcgen) and the dynamic security plugin,
//! fleetwatch connecting to it over TLS with its own account and provisioning devices
//! through REST; Kafka over TLS and SASL; and secrets that never show.
//!
//! The broker is started by the test (not scripts/test) so the test is self-contained:
//! `mosquitto` and `mosquitto_ctrl` (Debian's mosquitto package) must be installed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetwatch_e2e::brokers::free_port;
use fleetwatch_e2e::{eventually, read_topic, unique, Namespace, Rig, Service};
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};

const ADMIN_PASSWORD: &str = "admin-pw-5f1c9e";
const SERVICE_PASSWORD: &str = "service-pw-83d0aa";

/// The test's certificates: a CA and the broker's certificate for 127.0.0.1.
struct Pki {
    ca_file: PathBuf,
    ca_pem: String,
    server_cert: PathBuf,
    server_key: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    /// TLS for a device with a client certificate for `common_name`, signed by the CA.
    fn client_tls(&self, common_name: &str) -> Arc<rustls::ClientConfig> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots(&self.ca_pem))
                .with_client_auth_cert(vec![cert.der().clone()], key.into())
                .unwrap(),
        )
    }
}

fn make_pki(dir: &Path) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fleetwatch test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let pki = Pki {
        ca_file: dir.join("ca.pem"),
        ca_pem: ca.pem(),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        ca,
        ca_key,
    };
    std::fs::write(&pki.ca_file, &pki.ca_pem).unwrap();
    std::fs::write(&pki.server_cert, server.pem()).unwrap();
    std::fs::write(&pki.server_key, server_key.serialize_pem()).unwrap();
    pki
}

fn dynsec_plugin() -> String {
    let listed = Command::new("dpkg").args(["-L", "mosquitto"]).output();
    listed
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find(|line| line.ends_with("mosquitto_dynamic_security.so"))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so".into())
}

/// A Mosquitto with one TLS listener, no anonymous access and the dynamic security
/// plugin, whose JSON file (in `dir`) persists clients and roles across restarts.
struct SecureBroker {
    child: Child,
    dir: PathBuf,
    port: u16,
    /// A second listener where devices present client certificates, whose CN is their
    /// user name.
    cert_port: u16,
    ca_file: PathBuf,
}

impl SecureBroker {
    fn start(dir: &Path, pki: &Pki) -> Self {
        let dynsec = dir.join("dynsec.json");
        let status = Command::new("mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(&dynsec)
            .args(["admin", ADMIN_PASSWORD])
            .stdout(Stdio::null())
            .status()
            .expect("mosquitto_ctrl runs");
        assert!(status.success());
        let (port, cert_port) = (free_port(), free_port());
        let tls = format!(
            "cafile {}\ncertfile {}\nkeyfile {}\n",
            pki.ca_file.display(),
            pki.server_cert.display(),
            pki.server_key.display()
        );
        let user =
            String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
        let conf = format!(
            "per_listener_settings false\nallow_anonymous false\n\
             listener {port} 127.0.0.1\n{tls}\
             listener {cert_port} 127.0.0.1\n{tls}require_certificate true\nuse_identity_as_username true\n\
             plugin {}\nplugin_opt_config_file {}\npersistence false\nlog_dest file {}\nuser {}\n",
            dynsec_plugin(),
            dynsec.display(),
            dir.join("broker.log").display(),
            user.trim(),
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
        let mut broker = Self {
            child: Command::new("true").spawn().unwrap(),
            dir: dir.to_owned(),
            port,
            cert_port,
            ca_file: pki.ca_file.clone(),
        };
        broker.restart();
        broker
    }

    /// (Re)start the broker process on the same port and files.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mosquitto = which_mosquitto();
        self.child = Command::new(mosquitto)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Run `mosquitto_ctrl dynsec ARGS` as the administrator, over TLS.
    fn ctrl(&self, args: &[&str]) {
        let output = Command::new("mosquitto_ctrl")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--cafile"])
            .arg(&self.ca_file)
            .args(["-u", "admin", "-P", ADMIN_PASSWORD, "dynsec"])
            .args(args)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && !said.contains("rror"),
            "mosquitto_ctrl {args:?}: {said}"
        );
    }

    /// The service's own account, as docs/architecture.md sets it up.
    fn add_service_account(&self) {
        self.ctrl(&["createClient", "fleetwatch", "-p", SERVICE_PASSWORD]);
        self.ctrl(&["createRole", "fleetwatch-service"]);
        for (acl, topic) in [
            ("subscribePattern", "$share/+/devices/+/+"),
            ("subscribePattern", "devices/+/+"),
            ("publishClientSend", "devices/+/commands"),
            ("publishClientSend", "devices/+/desired"),
        ] {
            self.ctrl(&["addRoleACL", "fleetwatch-service", acl, topic, "allow"]);
        }
        self.ctrl(&["addClientRole", "fleetwatch", "fleetwatch-service"]);
    }
}

fn which_mosquitto() -> String {
    Command::new("sh")
        .args(["-c", "command -v mosquitto || echo /usr/sbin/mosquitto"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap()
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn roots(ca_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

fn tls_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let roots = roots(ca_pem);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A device's MQTT v5 connection over TLS; `Err` carries why the broker refused it.
async fn connect(
    port: u16,
    ca_pem: &str,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> Result<(AsyncClient, EventLoop), String> {
    connect_with(port, tls_config(ca_pem), client_id, login).await
}

async fn connect_with(
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> Result<(AsyncClient, EventLoop), String> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)))
        .set_keep_alive(Duration::from_secs(5));
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok((client, eventloop)),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => return Err("no answer".into()),
        }
    }
}

/// Poll until the next acknowledgement of a publish or subscribe.
async fn next_ack(eventloop: &mut EventLoop) -> Packet {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(packet @ (Packet::PubAck(_) | Packet::SubAck(_))))) => {
                return packet
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => panic!("connection lost: {error}"),
            Err(_) => panic!("no acknowledgement"),
        }
    }
}

async fn publish(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    topic: &str,
    body: Value,
) -> PubAckReason {
    client
        .publish(topic, QoS::AtLeastOnce, false, body.to_string())
        .await
        .unwrap();
    match next_ack(eventloop).await {
        Packet::PubAck(ack) => ack.reason,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

async fn subscribe(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    topic: &str,
) -> SubscribeReasonCode {
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    match next_ack(eventloop).await {
        Packet::SubAck(ack) => ack.return_codes[0],
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn telemetry(seq: u64, metric: &str) -> Value {
    json!({ "ts": fleetwatch_protocol::now_ms(), "seq": seq, "metrics": { metric: 21.5 } })
}

/// Telemetry records of iot.telemetry: (device, payload text).
fn stored(rig: &Rig, namespace: &Namespace) -> Vec<(String, String)> {
    read_topic(&rig.kafka, &namespace.topic("iot.telemetry"))
        .into_iter()
        .map(|record| (record.key, record.payload))
        .collect()
}

fn service_env(broker: &SecureBroker, dir: &Path) -> Vec<(String, String)> {
    let secret_file = |name: &str, value: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        path.display().to_string()
    };
    [
        ("FLEETWATCH_MQTT__PORT", broker.port.to_string()),
        ("FLEETWATCH_MQTT__TLS", "true".into()),
        (
            "FLEETWATCH_MQTT__CA_FILE",
            broker.ca_file.display().to_string(),
        ),
        ("FLEETWATCH_MQTT__USERNAME", "fleetwatch".into()),
        (
            "FLEETWATCH_MQTT__PASSWORD_FILE",
            secret_file("service-password", SERVICE_PASSWORD),
        ),
        ("FLEETWATCH_CREDENTIALS__ENABLED", "true".into()),
        ("FLEETWATCH_CREDENTIALS__ADMIN_USERNAME", "admin".into()),
        (
            "FLEETWATCH_CREDENTIALS__ADMIN_PASSWORD_FILE",
            secret_file("admin-password", ADMIN_PASSWORD),
        ),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

async fn start_service(
    rig: &Rig,
    namespace: &Namespace,
    env: &[(String, String)],
    instance: &str,
) -> Service {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Service::start_async(rig, namespace, "ingest,devices", instance, &env).await
}

fn provision(service: &Service, device: &str) -> String {
    let (status, headers, body) =
        service.request("POST", &format!("/devices/{device}/credentials"), &[], None);
    assert_eq!(status, 201, "{body}");
    assert!(headers
        .iter()
        .any(|(name, value)| name == "cache-control" && value == "no-store"));
    assert_eq!(body["username"], device);
    body["password"].as_str().expect("a password").to_owned()
}

/// The test's world: its broker, certificates and namespace.
struct World {
    rig: Rig,
    namespace: Namespace,
    pki: Pki,
    broker: SecureBroker,
    env: Vec<(String, String)>,
}

impl World {
    async fn device(&self, id: &str, password: &str) -> Result<(AsyncClient, EventLoop), String> {
        connect(self.broker.port, &self.pki.ca_pem, id, Some((id, password))).await
    }

    /// Publish telemetry on `device`'s own topic and return the broker's answer.
    async fn telemetry(
        &self,
        device: (&AsyncClient, &mut EventLoop),
        on: &str,
        seq: u64,
        metric: &str,
    ) -> PubAckReason {
        let topic = format!("devices/{on}/telemetry");
        publish(device.0, device.1, &topic, telemetry(seq, metric)).await
    }

    fn stored(&self) -> Vec<(String, String)> {
        stored(&self.rig, &self.namespace)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_cannot_speak_for_another() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("security");
    let dir = std::env::temp_dir().join(unique("fw-secure-broker"));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = make_pki(&dir);
    let broker = SecureBroker::start(&dir, &pki);
    broker.add_service_account();
    let env = service_env(&broker, &dir);
    let mut world = World {
        rig,
        namespace,
        pki,
        broker,
        env,
    };
    // Ready means ingest subscribed over TLS with the service's account.
    let service = start_service(&world.rig, &world.namespace, &world.env, "a").await;

    let prefix = world.namespace.device_prefix();
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    let password_a = provision(&service, &a);
    let password_b = provision(&service, &b);
    let (status, _, again) =
        service.request("POST", &format!("/devices/{a}/credentials"), &[], None);
    assert_eq!(status, 409, "{again}");
    refuse_strangers(&world, &a).await;
    each_device_its_own_topics(&world, (&a, &password_a), (&b, &password_b)).await;
    let service = survive_restarts(&mut world, service, (&b, &password_b)).await;
    revoke_a(&world, &service, (&a, &password_a), (&b, &password_b)).await;
    certificate_devices(&service, &world.broker, &world.pki, &prefix, &b).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Unprovisioned clients, with or without a login, and wrong passwords are refused.
async fn refuse_strangers(world: &World, a: &str) {
    let (port, ca) = (world.broker.port, &world.pki.ca_pem);
    let stranger = connect(port, ca, "stranger", Some(("stranger", "guess"))).await;
    assert!(stranger.is_err(), "an unknown user connected");
    assert!(
        connect(port, ca, "anonymous", None).await.is_err(),
        "anonymous connected"
    );
    assert!(
        world.device(a, "not-the-password").await.is_err(),
        "a wrong password connected"
    );
}

/// A device publishing under the other's id is refused and nothing of it is stored; it
/// may not read the other's commands or desired state; both devices' own telemetry
/// reaches iot.telemetry.
async fn each_device_its_own_topics(
    world: &World,
    (a, password_a): (&str, &str),
    (b, password_b): (&str, &str),
) {
    let (client_a, mut loop_a) = world.device(a, password_a).await.unwrap();
    let (client_b, mut loop_b) = world.device(b, password_b).await.unwrap();
    let spoofed = world
        .telemetry((&client_a, &mut loop_a), b, 900, "spoofed_by_a")
        .await;
    assert_eq!(spoofed, PubAckReason::NotAuthorized);
    for topic in [
        format!("devices/{b}/commands"),
        format!("devices/{b}/desired"),
        "devices/+/commands".into(),
    ] {
        let refused = subscribe(&client_a, &mut loop_a, &topic).await;
        assert_eq!(refused, SubscribeReasonCode::NotAuthorized, "{topic}");
    }
    let own = subscribe(&client_a, &mut loop_a, &format!("devices/{a}/commands")).await;
    assert!(matches!(own, SubscribeReasonCode::Success(_)), "{own:?}");

    let ok_a = world
        .telemetry((&client_a, &mut loop_a), a, 1, "temp")
        .await;
    let ok_b = world
        .telemetry((&client_b, &mut loop_b), b, 1, "temp")
        .await;
    assert_eq!((ok_a, ok_b), (PubAckReason::Success, PubAckReason::Success));
    let records = eventually(
        Duration::from_secs(30),
        "both devices' telemetry in Kafka",
        || {
            let records = world.stored();
            let has = |device: &str| records.iter().any(|(key, _)| key == device);
            (has(a) && has(b)).then_some(records)
        },
    );
    assert!(
        records
            .iter()
            .all(|(_, payload)| !payload.contains("spoofed_by_a")),
        "a spoofed message reached iot.telemetry: {records:?}"
    );
}

/// Provisioning survives a restart of the broker (the plugin's file) and of the service
/// (which keeps nothing): b reconnects and its telemetry flows; the new service process is
/// returned (it revokes next what the old one provisioned).
async fn survive_restarts(
    world: &mut World,
    service: Service,
    (b, password_b): (&str, &str),
) -> Service {
    world.broker.restart();
    // A graceful stop, so the new process gets the Kafka partitions at once.
    assert!(service.terminate(Duration::from_secs(30)).success());
    let service = start_service(&world.rig, &world.namespace, &world.env, "b").await;
    let (client_b, mut loop_b) = world
        .device(b, password_b)
        .await
        .expect("b's credentials survive the broker's restart");
    let sent = world
        .telemetry((&client_b, &mut loop_b), b, 2, "after_restart")
        .await;
    assert_eq!(sent, PubAckReason::Success);
    eventually(
        Duration::from_secs(30),
        "b's telemetry after the restarts",
        || {
            world
                .stored()
                .iter()
                .any(|(key, payload)| key == b && payload.contains("after_restart"))
                .then_some(())
        },
    );
    service
}

/// Revocation disconnects a and refuses it from then on; b is untouched.
async fn revoke_a(
    world: &World,
    service: &Service,
    (a, password_a): (&str, &str),
    (b, password_b): (&str, &str),
) {
    let (client_b, mut loop_b) = world.device(b, password_b).await.unwrap();
    let (_client_a, mut loop_a) = world.device(a, password_a).await.unwrap();
    let watcher = tokio::spawn(async move {
        loop {
            if let Some(reason) = eventloop_step(&mut loop_a).await {
                return reason;
            }
        }
    });
    let path = format!("/devices/{a}/credentials");
    let (status, _, body) = service.request("DELETE", &path, &[], None);
    assert_eq!(status, 204, "{body}");
    let reason = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("a is disconnected within 10 s of the revocation")
        .unwrap();
    eprintln!("a after revocation: {reason}");
    assert!(
        world.device(a, password_a).await.is_err(),
        "a reconnected after revocation"
    );
    let (status, _, body) = service.request("DELETE", &path, &[], None);
    assert_eq!(status, 404, "{body}");
    let sent = world
        .telemetry((&client_b, &mut loop_b), b, 3, "temp")
        .await;
    assert_eq!(sent, PubAckReason::Success);
}

/// A device provisioned for a client certificate (its CN is its id) on the broker's
/// certificate listener: its own topics only; after revocation, no rights at all.
async fn certificate_devices(
    service: &Service,
    broker: &SecureBroker,
    pki: &Pki,
    prefix: &str,
    other: &str,
) {
    let c = format!("{prefix}c");
    let path = format!("/devices/{c}/credentials");
    let kind = json!({ "kind": "certificate" });
    let headers = [("content-type", "application/json")];
    let (status, _, body) = service.request("POST", &path, &headers, Some(&kind));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["certificate_subject"], format!("CN={c}"));
    assert!(body.get("password").is_none(), "{body}");
    let telemetry_of = |device: &str| format!("devices/{device}/telemetry");
    let (client, mut eventloop) = connect_with(broker.cert_port, pki.client_tls(&c), &c, None)
        .await
        .expect("c connects with its certificate");
    assert_eq!(
        publish(
            &client,
            &mut eventloop,
            &telemetry_of(&c),
            telemetry(1, "temp")
        )
        .await,
        PubAckReason::Success
    );
    assert_eq!(
        publish(
            &client,
            &mut eventloop,
            &telemetry_of(other),
            telemetry(901, "spoofed_by_c")
        )
        .await,
        PubAckReason::NotAuthorized
    );
    // Without a certificate the listener refuses the TLS handshake.
    assert!(connect(broker.cert_port, &pki.ca_pem, "no-cert", None)
        .await
        .is_err());
    // A certificate for an id that was never provisioned carries no rights.
    let (stranger, mut stranger_loop) =
        connect_with(broker.cert_port, pki.client_tls("nobody"), "nobody", None)
            .await
            .unwrap();
    assert_eq!(
        publish(
            &stranger,
            &mut stranger_loop,
            &telemetry_of("nobody"),
            telemetry(1, "temp")
        )
        .await,
        PubAckReason::NotAuthorized
    );
    let (status, _, body) = service.request("DELETE", &path, &[], None);
    assert_eq!(status, 204, "{body}");
    assert!(
        eventloop_step_until_closed(&mut eventloop).await,
        "c is disconnected"
    );
    // The certificate still completes a TLS handshake (revoking it is the CA's business,
    // a CRL), but c has no rights left.
    let (client, mut eventloop) = connect_with(broker.cert_port, pki.client_tls(&c), &c, None)
        .await
        .unwrap();
    assert_eq!(
        publish(
            &client,
            &mut eventloop,
            &telemetry_of(&c),
            telemetry(2, "temp")
        )
        .await,
        PubAckReason::NotAuthorized
    );
}

/// Poll until the broker ends the connection (true) or 10 s pass (false).
async fn eventloop_step_until_closed(eventloop: &mut EventLoop) -> bool {
    tokio::time::timeout(Duration::from_secs(10), async {
        while eventloop_step(eventloop).await.is_none() {}
    })
    .await
    .is_ok()
}

/// One poll of a connection: Some(why) once the broker ended it.
async fn eventloop_step(eventloop: &mut EventLoop) -> Option<String> {
    match eventloop.poll().await {
        Ok(Event::Incoming(Packet::Disconnect(disconnect))) => Some(format!("{disconnect:?}")),
        Ok(_) => None,
        Err(ConnectionError::MqttState(state)) => Some(state.to_string()),
        Err(error) => Some(error.to_string()),
    }
}

// --- Kafka over TLS and SASL -------------------------------------------------------------

/// A TLS-terminating proxy in front of the test's plain Kafka-protocol broker (tansu has
/// no TLS listener): clients speak TLS to it, it speaks plain Kafka to tansu.
async fn tls_proxy(target: String, pki: &Pki) -> u16 {
    use rustls::pki_types::PrivateKeyDer;
    let certs: Vec<_> = CertificateDer::pem_file_iter(&pki.server_cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.server_key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (acceptor, target) = (acceptor.clone(), target.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

fn kafka_client(
    bootstrap: &str,
    pki: &Pki,
    extra: &[(&str, &str)],
) -> rdkafka::consumer::BaseConsumer {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("ssl.ca.location", pki.ca_file.display().to_string())
        .set("ssl.endpoint.identification.algorithm", "https");
    for (key, value) in extra {
        config.set(*key, *value);
    }
    config
        .create()
        .expect("the TLS and SASL configuration is accepted")
}

/// librdkafka was built with TLS and SASL PLAIN, SCRAM and OAUTHBEARER (what `cargo tree
/// -e features` shows as rdkafka's `ssl` feature).
#[test]
fn librdkafka_has_tls_and_sasl_built_in() {
    let native = rdkafka::ClientConfig::new().create_native_config().unwrap();
    let features = native.get("builtin.features").unwrap();
    for feature in ["ssl", "sasl_plain", "sasl_scram", "sasl_oauthbearer"] {
        assert!(
            features.split(',').any(|f| f == feature),
            "{feature} missing from {features}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_speaks_tls_and_sasl() {
    use rdkafka::consumer::Consumer;
    let dir = std::env::temp_dir().join(unique("fw-kafka-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = make_pki(&dir);

    // TLS: metadata through a TLS listener, the broker verified against the test's CA. A
    // tansu of the test's own advertises the TLS proxy's address, so every connection the
    // client makes (bootstrap and the advertised broker) is TLS.
    let tansu_port = free_port();
    let port = tls_proxy(format!("127.0.0.1:{tansu_port}"), &pki).await;
    let _tansu = Tansu::start(tansu_port, port);
    let bootstrap = format!("127.0.0.1:{port}");
    let tls = kafka_client(&bootstrap, &pki, &[("security.protocol", "ssl")]);
    let metadata = tokio::task::spawn_blocking(move || {
        tls.fetch_metadata(None, Duration::from_secs(15))
            .map(|metadata| {
                metadata
                    .brokers()
                    .iter()
                    .map(|b| b.port())
                    .collect::<Vec<_>>()
            })
    })
    .await
    .unwrap();
    assert_eq!(
        metadata.ok(),
        Some(vec![i32::from(port)]),
        "metadata over TLS"
    );

    // A CA that did not sign the broker's certificate: the handshake fails.
    let other = make_pki(
        &std::env::temp_dir()
            .join(unique("fw-kafka-other-ca"))
            .tap_create(),
    );
    let untrusted = kafka_client(&bootstrap, &other, &[("security.protocol", "ssl")]);
    let refused =
        tokio::task::spawn_blocking(move || untrusted.fetch_metadata(None, Duration::from_secs(5)))
            .await
            .unwrap();
    assert!(refused.is_err(), "a broker the CA did not sign was trusted");

    // TLS + SASL (PLAIN and SCRAM): accepted by the client; the test broker does not do
    // SASL, so the connection fails with an authentication or transport error, never an
    // "unsupported" configuration.
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let client = kafka_client(
            &bootstrap,
            &pki,
            &[
                ("security.protocol", "sasl_ssl"),
                ("sasl.mechanisms", mechanism),
                ("sasl.username", "fleetwatch"),
                ("sasl.password", "sasl-pw-0c11"),
            ],
        );
        let outcome = tokio::task::spawn_blocking(move || {
            client.fetch_metadata(None, Duration::from_secs(5))
        })
        .await
        .unwrap();
        let error = format!("{outcome:?}");
        eprintln!("sasl_ssl with {mechanism}: {error}");
        assert!(
            !error.to_lowercase().contains("unsupported") && !error.contains("not supported"),
            "{error}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tansu broker (Kafka protocol, in memory) listening on `port` and advertising
/// `advertised` on loopback.
struct Tansu(Child);

impl Tansu {
    fn start(port: u16, advertised: u16) -> Self {
        let binary = Command::new("sh")
            .args(["-c", "command -v tansu || echo $HOME/.cargo/bin/tansu"])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap();
        let child = Command::new(binary)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
            ])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts (scripts/test installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

trait TapCreate {
    fn tap_create(self) -> Self;
}

impl TapCreate for PathBuf {
    fn tap_create(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

// --- Secrets ----------------------------------------------------------------------------

/// Every secret setting, each with a value found nowhere else.
struct Secrets {
    dir: PathBuf,
    config: PathBuf,
    env: Vec<(String, String)>,
    values: Vec<String>,
}

fn secrets(rig: &Rig) -> Secrets {
    let dir = std::env::temp_dir().join(unique("fw-secrets")).tap_create();
    let value = |name: &str| format!("{name}-{}", unique("s").replace(['-', '.'], ""));
    let values: Vec<String> = [
        "mqttpw",
        "saslpw",
        "sslkeypw",
        "keystorepw",
        "adminpw",
        "hs256-0123456789abcdef0123456789abcdef",
        "oauthsecret",
    ]
    .iter()
    .map(|name| value(name))
    .collect();
    let keystore_file = dir.join("keystore-password");
    std::fs::write(&keystore_file, format!("{}\n", values[3])).unwrap();
    let admin_file = dir.join("admin-password");
    std::fs::write(&admin_file, &values[4]).unwrap();
    let config = dir.join("fleetwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nusername = \"fleetwatch\"\npassword = \"{}\"\n\n[kafka.properties]\n\"ssl.key.password\" = \"{}\"\n\n\
             [kafka.property_files]\n\"ssl.keystore.password\" = \"{}\"\n\n\
             [credentials]\nadmin_password_file = \"{}\"\n",
            values[0], values[2], keystore_file.display(), admin_file.display()
        ),
    )
    .unwrap();
    let env = vec![
        ("FLEETWATCH_KAFKA__BROKERS".to_owned(), rig.kafka.clone()),
        (
            "FLEETWATCH_KAFKA__PROPERTIES__SASL.PASSWORD".to_owned(),
            values[1].clone(),
        ),
        ("FLEETWATCH_AUTH__MODE".to_owned(), "jwt".to_owned()),
        (
            "FLEETWATCH_AUTH__HS256_SECRET".to_owned(),
            values[5].clone(),
        ),
        ("FLEETWATCH_MQTT__HOST".to_owned(), rig.mqtt_host.clone()),
        (
            "FLEETWATCH_MQTT__PORT".to_owned(),
            rig.mqtt_port.to_string(),
        ),
    ];
    Secrets {
        dir,
        config,
        env,
        values,
    }
}

impl Secrets {
    fn assert_hidden(&self, what: &str, text: &str) {
        for value in &self.values {
            assert!(
                !text.contains(value.as_str()),
                "{what} shows a secret: {text}"
            );
        }
    }

    fn command(&self, rig: &Rig, args: &[&str]) -> Command {
        let mut command = Command::new(&rig.fleetwatch_bin);
        command
            .args(args)
            .env("FLEETWATCH_CONFIG", &self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "debug");
        command
    }
}

fn said(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr)
}

#[test]
fn secrets_never_show() {
    let rig = Rig::from_env();
    let secrets = secrets(&rig);

    // The effective configuration redacts every secret, from the file, a *_file and the
    // environment.
    let printed = secrets.command(&rig, &["config"]).output().unwrap();
    assert!(printed.status.success(), "{}", said(&printed));
    let text = said(&printed);
    secrets.assert_hidden("fleetwatch config", &text);
    // mqtt.password, credentials.admin_password, auth.hs256_secret, three Kafka properties.
    assert_eq!(text.matches("\"***\"").count(), 6, "{text}");

    let (logs, answers) = short_run(&rig, &secrets);
    assert!(logs.lines().count() > 20, "a debug run logs: {logs}");
    secrets.assert_hidden("the run's logs", &logs);
    secrets.assert_hidden("the HTTP answers", &answers);
    errors_hide_secrets(&rig, &secrets);
    let _ = std::fs::remove_dir_all(&secrets.dir);
}

/// A short run at debug level: its logs, and the answers to health, metrics and a
/// refused call.
fn short_run(rig: &Rig, secrets: &Secrets) -> (String, String) {
    let namespace = Namespace::new("secrets");
    let log = secrets.dir.join("run.log");
    let group = format!("{}-", namespace.name);
    let mut child = secrets
        .command(rig, &["run", "--roles", "ingest,devices"])
        .env("FLEETWATCH_KAFKA__TOPIC_PREFIX", namespace.topic_prefix())
        .env("FLEETWATCH_KAFKA__GROUP_PREFIX", group)
        .env("FLEETWATCH_KAFKA__PARTITIONS", "2")
        .env("FLEETWATCH_INGEST__SHARE_GROUP", &namespace.name)
        .env("FLEETWATCH_MQTT__INSTANCE_ID", &namespace.name)
        .env("FLEETWATCH_HTTP__BIND", "127.0.0.1:0")
        .env("FLEETWATCH_ALERTS__BIND", "127.0.0.1:0")
        // Logs and the started line both go to stdout; errors to stderr: one file.
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    let http: std::net::SocketAddr =
        eventually(Duration::from_secs(60), "the started line", || {
            let logs = std::fs::read_to_string(&log).ok()?;
            let line = logs
                .lines()
                .find(|line| line.starts_with("{\"event\":\"started\""))?;
            let started: Value = serde_json::from_str(line).ok()?;
            started["http"].as_str()?.parse().ok()
        });
    let mut answers = String::new();
    eventually(Duration::from_secs(60), "the service ready", || {
        let (status, body) = fleetwatch_e2e::http_get(http, "/readyz").ok()?;
        answers.push_str(&body);
        (status == 200).then_some(())
    });
    for path in ["/livez", "/metrics", "/devices"] {
        answers.push_str(&fleetwatch_e2e::http_get(http, path).unwrap().1);
    }
    let forged = [("authorization", "Bearer a.b.c")];
    answers.push_str(
        &fleetwatch_e2e::http_request(http, "GET", "/devices", &forged, None)
            .unwrap()
            .2,
    );
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(child.wait().unwrap().success());
    (std::fs::read_to_string(&log).unwrap(), answers)
}

/// Error output: a file that does not parse on a secret's line, a secret of the wrong
/// type, a run that fails to start, and a Kafka property librdkafka refuses.
fn errors_hide_secrets(rig: &Rig, secrets: &Secrets) {
    let broken = secrets.dir.join("broken.toml");
    std::fs::write(
        &broken,
        format!("[mqtt]\npassword = \"{}\n", secrets.values[0]),
    )
    .unwrap();
    let failed = |extra: &[(&str, &std::ffi::OsStr)], args: &[&str]| {
        let output = secrets
            .command(rig, args)
            .env("FLEETWATCH_HTTP__BIND", "127.0.0.1:0")
            .env("FLEETWATCH_ALERTS__BIND", "127.0.0.1:0")
            .envs(extra.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{}", said(&output));
        said(&output)
    };
    let syntax = failed(&[("FLEETWATCH_CONFIG", broken.as_os_str())], &["config"]);
    secrets.assert_hidden("a syntax error", &syntax);
    let listed = format!("[\"{}\"]", secrets.values[1]);
    let typed = failed(
        &[("FLEETWATCH_MQTT__PASSWORD", listed.as_ref())],
        &["config"],
    );
    secrets.assert_hidden("a type error", &typed);
    let missing = secrets.dir.join("missing-ca.pem");
    let tls = [
        ("FLEETWATCH_MQTT__TLS", "true".as_ref()),
        ("FLEETWATCH_MQTT__CA_FILE", missing.as_os_str()),
    ];
    let start = failed(&tls, &["run", "--roles", "ingest"]);
    assert!(start.contains("missing-ca.pem"), "{start}");
    secrets.assert_hidden("a failed start", &start);
    // librdkafka quotes a property it refuses: an OIDC client secret (no libcurl here).
    let oidc = [(
        "FLEETWATCH_KAFKA__PROPERTIES__SASL.OAUTHBEARER.CLIENT.SECRET",
        secrets.values[6].as_ref(),
    )];
    let refused = failed(&oidc, &["run", "--roles", "ingest"]);
    assert!(
        refused.contains("sasl.oauthbearer.client.secret"),
        "{refused}"
    );
    secrets.assert_hidden("a refused Kafka property", &refused);
}
