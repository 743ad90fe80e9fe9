//! Harness for the end-to-end tests: the brokers `scripts/test` started, fleetwatch
//! processes, and small clients for HTTP, MQTT and Kafka.
//!
//! Tests share one Mosquitto and one tansu; each test isolates itself with its own Kafka
//! topic prefix, consumer-group prefix, MQTT share group and device-id prefix.

pub mod brokers;
pub mod device;
pub mod load;
pub mod proxy;
pub mod tsdb;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// Where the brokers are, from the variables `scripts/test` exports.
#[derive(Clone, Debug)]
pub struct Rig {
    pub kafka: String,
    pub mqtt_host: String,
    pub mqtt_port: u16,
    pub fleetwatch_bin: String,
}

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: the end-to-end tests run through scripts/test, which starts the brokers")
    })
}

impl Rig {
    pub fn from_env() -> Self {
        Self {
            kafka: required("FLEETWATCH_TEST_KAFKA"),
            mqtt_host: "127.0.0.1".into(),
            mqtt_port: required("FLEETWATCH_TEST_MQTT_PORT")
                .parse()
                .expect("a port"),
            fleetwatch_bin: required("FLEETWATCH_BIN"),
        }
    }
}

/// A name unique to this test run, for prefixes.
/// Partitions of every topic a test's service creates, unless the test sets its own:
/// more than one, so that the tests run the paths that split work by partition.
pub const RIG_PARTITIONS: u32 = 4;

pub fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{test}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// One fleetwatch process.
pub struct Service {
    child: Child,
    pub http: SocketAddr,
    pub ws: Option<SocketAddr>,
    pub topic_prefix: String,
}

/// How a test's service is set up; processes with the same namespace form one deployment.
#[derive(Clone, Debug)]
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    pub fn new(test: &str) -> Self {
        Self { name: unique(test) }
    }

    pub fn topic_prefix(&self) -> String {
        format!("{}.", self.name)
    }

    pub fn topic(&self, base: &str) -> String {
        format!("{}{base}", self.topic_prefix())
    }

    /// Device ids of this test start with this.
    pub fn device_prefix(&self) -> String {
        format!("{}-", self.name.replace('.', "-"))
    }
}

impl Service {
    /// Start `fleetwatch run --roles <roles>` in `namespace`, with extra environment
    /// (settings) for the process, and wait until it is ready.
    pub fn start_with(
        rig: &Rig,
        namespace: &Namespace,
        roles: &str,
        instance: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let service = Self::spawn(rig, namespace, roles, instance, env);
        service.wait_ready(Duration::from_secs(60));
        service
    }

    /// [`Service::start_with`] from async tests: waits on a blocking thread.
    pub async fn start_async(
        rig: &Rig,
        namespace: &Namespace,
        roles: &str,
        instance: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let (rig, namespace) = (rig.clone(), namespace.clone());
        let (roles, instance) = (roles.to_owned(), instance.to_owned());
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Self::start_with(&rig, &namespace, &roles, &instance, &env)
        })
        .await
        .expect("the starting thread does not panic")
    }

    /// Start the process and wait only for its addresses, not for readiness.
    pub fn spawn(
        rig: &Rig,
        namespace: &Namespace,
        roles: &str,
        instance: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = Command::new(&rig.fleetwatch_bin)
            .args(["run", "--roles", roles])
            .env("FLEETWATCH_KAFKA__BROKERS", &rig.kafka)
            .env("FLEETWATCH_KAFKA__TOPIC_PREFIX", namespace.topic_prefix())
            .env(
                "FLEETWATCH_KAFKA__GROUP_PREFIX",
                format!("{}-", namespace.name),
            )
            .env("FLEETWATCH_KAFKA__PARTITIONS", RIG_PARTITIONS.to_string())
            .env("FLEETWATCH_MQTT__HOST", &rig.mqtt_host)
            .env("FLEETWATCH_MQTT__PORT", rig.mqtt_port.to_string())
            .env(
                "FLEETWATCH_MQTT__INSTANCE_ID",
                format!("{}-{instance}", namespace.name),
            )
            .env("FLEETWATCH_INGEST__SHARE_GROUP", &namespace.name)
            .env("FLEETWATCH_HTTP__BIND", "127.0.0.1:0")
            .env("FLEETWATCH_ALERTS__BIND", "127.0.0.1:0")
            // Tests choose no authentication unless they set auth themselves.
            .env("FLEETWATCH_AUTH__MODE", "none")
            // The storage role (part of `all`) writes to the test store when there is one,
            // rather than retrying against a store that is not there.
            .envs(
                std::env::var("FLEETWATCH_TEST_TSDB_URL")
                    .ok()
                    .map(|url| ("FLEETWATCH_STORAGE__URL", url)),
            )
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,fleetwatch=info".into()),
            )
            // Last, so a test's settings win over the defaults above.
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("fleetwatch binary starts");
        let mut first_line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first_line)
            .expect("fleetwatch prints its addresses");
        let started: serde_json::Value = serde_json::from_str(&first_line)
            .unwrap_or_else(|e| panic!("unexpected first line {first_line:?}: {e}"));
        Self {
            child,
            http: started["http"].as_str().unwrap().parse().unwrap(),
            ws: started["ws"].as_str().map(|ws| ws.parse().unwrap()),
            topic_prefix: namespace.topic_prefix(),
        }
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            // 503 with the per-role detail until every role is ready.
            if let Ok((status, body)) = http_get(self.http, "/readyz") {
                if status == 200 {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "not ready in {timeout:?}: {status} {body}"
                );
            }
            assert!(Instant::now() < deadline, "no health answer in {timeout:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = http_get(self.http, path).expect("HTTP answer");
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
        )
    }

    /// Any request with an optional JSON body: (status, headers lower-cased, JSON body
    /// or the text as a JSON string).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> (u16, Headers, serde_json::Value) {
        let body = body.map(|b| b.to_string());
        let (status, headers, text) =
            http_request(self.http, method, path, headers, body.as_deref()).expect("HTTP answer");
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, headers, json)
    }

    /// A sample from `/metrics`: `name` with its labels as exposed, e.g.
    /// `fleetwatch_alerts_total{state="raised"}`; 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, text) = http_get(self.http, "/metrics").expect("metrics answer");
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    /// The process id (for CPU figures).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill the process at once (SIGKILL): no goodbye, no final commit.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.ws.expect("alerts role runs"))
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn terminate(mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {timeout:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET, enough for JSON endpoints.
pub fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(address, "GET", path, &[], None).map(|(status, _, body)| (status, body))
}

/// Response headers, names lower-cased.
pub type Headers = Vec<(String, String)>;

/// A plain HTTP/1.1 request with an optional JSON body: (status, headers, body).
pub fn http_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<(u16, Headers, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let head = response.split_once("\r\n\r\n").map_or("", |(head, _)| head);
    let response_headers = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect::<Vec<_>>();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    // actix answers small bodies with a length, but decode chunked ones too.
    let body = if response
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, response_headers, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// One record as read back from Kafka.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub payload: String,
    /// The payload as it is (binary records).
    pub bytes: Vec<u8>,
}

impl Record {
    /// The record as a device event of `iot.telemetry`, in either encoding.
    pub fn device_event(&self) -> Option<fleetwatch_protocol::DeviceEvent> {
        fleetwatch_protocol::DeviceEvent::from_record(&self.bytes).ok()
    }
}

/// How long a topic must stay quiet, once read to its end, before [`read_topic`] returns.
const READ_IDLE: Duration = Duration::from_secs(2);
/// A topic still being written is read for this long at most, once read to its end.
const READ_BUSY_LIMIT: Duration = Duration::from_secs(60);
/// A read that has not reached the end a topic had when it started by then fails: a
/// count from a partial read would report readings as lost that were never read.
const READ_STALL_LIMIT: Duration = Duration::from_secs(300);

/// Every record of `topic` from the beginning: at least every record it held when the
/// read started, then whatever arrives until it stays quiet for a moment.
///
/// tansu 0.6.0 reports the high watermark as the last batch's base offset + 1, not the
/// last record's offset + 1 (docs/architecture.md), so the end is reached when the record
/// at the high watermark - 1 has come: the rest of its batch comes in the same fetch. That
/// holds for Kafka too (without transactions). Quiet alone is not enough: tansu's fetch
/// from the start of a long topic can stall for seconds on a slow day, and a read that
/// stopped there counted whole partitions as lost.
pub fn read_topic(kafka: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    // Per partition not yet read to its end: the offset whose record ends the read.
    let mut behind: std::collections::BTreeMap<i32, i64> = Default::default();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
            .unwrap();
        if high > low {
            behind.insert(partition.id(), high - 1);
        }
    }
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    let started = Instant::now();
    let mut last_news = Instant::now();
    loop {
        if behind.is_empty()
            && (last_news.elapsed() >= READ_IDLE || started.elapsed() >= READ_BUSY_LIMIT)
        {
            break;
        }
        assert!(
            started.elapsed() < READ_STALL_LIMIT,
            "reading {topic}: {} records in {READ_STALL_LIMIT:?}, partitions not read to \
             their end (partition: last offset wanted): {behind:?}",
            records.len()
        );
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            last_news = Instant::now();
            if behind
                .get(&message.partition())
                .is_some_and(|&last| message.offset() >= last)
            {
                behind.remove(&message.partition());
            }
            records.push(Record {
                partition: message.partition(),
                offset: message.offset(),
                key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                payload: String::from_utf8_lossy(message.payload().unwrap_or_default())
                    .into_owned(),
                bytes: message.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    records
}

/// For each partition of `topic` that holds records: (partition, the offset `group`
/// committed, the offset after the last record).
pub fn committed_vs_end(kafka: &str, group: &str, topic: &str) -> Vec<(i32, Option<i64>, i64)> {
    let mut ends: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
    for record in read_topic(kafka, topic) {
        let end = ends.entry(record.partition).or_default();
        *end = (*end).max(record.offset + 1);
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for partition in ends.keys() {
        partitions.add_partition(topic, *partition);
    }
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap();
    committed
        .elements()
        .iter()
        .map(|element| {
            let offset = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            (element.partition(), offset, ends[&element.partition()])
        })
        .collect()
}

/// Produce records `(key, payload)` to `topic` and wait until Kafka confirmed each.
pub async fn produce(kafka: &str, topic: &str, records: &[(String, Vec<u8>)]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let deliveries: Vec<_> = records
        .iter()
        .map(|(key, payload)| {
            producer
                .send_result(FutureRecord::to(topic).key(key).payload(payload))
                .map_err(|(error, _)| error)
                .expect("queued")
        })
        .collect();
    for delivery in deliveries {
        delivery.await.unwrap().expect("delivered");
    }
}

/// Publish raw payloads with QoS 1 over a v3.1.1 connection and wait for the broker's
/// acknowledgements.
pub async fn publish_raw(rig: &Rig, client_id: &str, messages: &[(String, Vec<u8>)]) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new(client_id, &rig.mqtt_host, rig.mqtt_port);
    options.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, messages.len() + 10);
    for (topic, payload) in messages {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
    }
    let mut acknowledged = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while acknowledged < messages.len() {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acknowledged += 1,
            Ok(Ok(_)) => {}
            Ok(Err(error)) => panic!("MQTT error: {error}"),
            Err(_) => panic!(
                "broker acknowledged {acknowledged} of {} messages",
                messages.len()
            ),
        }
    }
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
}

/// Poll `check` until it returns Some, or panic after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
