//! Malformed input, end to end (docs/reliability.md): every kind of bad input a device, a
//! REST client or a WebSocket client can send, each refused with its reason (MQTT: a
//! dead letter on `iot.dlq` or a counted drop; REST: a 4xx with a JSON message;
//! WebSocket: an error frame on a connection that stays), while valid input around it is
//! all delivered and the service keeps serving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use fleetwatch_e2e::{eventually, publish_raw, read_topic, Namespace, Rig, Service};
use fleetwatch_protocol::{DeadLetter, DeviceEvent, DeviceEventBody};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// What must become of a bad MQTT message.
enum Fate {
    /// A dead letter whose reason contains this, counted under this reason class.
    Dlq(&'static str, &'static str),
    /// Ignored by ingest and counted (`fleetwatch_ingest_messages_total{outcome="ignored"}`).
    Ignored,
}

struct Case {
    what: &'static str,
    topic: String,
    payload: Vec<u8>,
    fate: Fate,
}

fn telemetry(ts: i64, seq: u64) -> Vec<u8> {
    format!(r#"{{"ts":{ts},"seq":{seq},"metrics":{{"temperature":21.5,"power":100.0}}}}"#)
        .into_bytes()
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// At least 30 distinct kinds of bad MQTT input. `p` is this test's device prefix.
fn bad_mqtt_inputs(p: &str, now: i64) -> Vec<Case> {
    let year_ms = 365 * 24 * 3_600_000_i64;
    let metrics_2000: String = (0..2000)
        .map(|i| format!(r#""m{i}":1"#))
        .collect::<Vec<_>>()
        .join(",");
    let huge_name = "x".repeat(50_000);
    let huge_status = "y".repeat(50_000);
    let utf16: Vec<u8> = String::from_utf8(telemetry(now, 1))
        .unwrap()
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let mut bom = "\u{feff}".as_bytes().to_vec();
    bom.extend(telemetry(now, 1));
    let mut not_utf8_name = format!(r#"{{"ts":{now},"seq":1,"metrics":{{"t"#).into_bytes();
    not_utf8_name.extend([0xff, 0xfe]);
    not_utf8_name.extend(br#"":1}}"#);
    let json =
        |what, body: String, reason, class| (what, body.into_bytes(), Fate::Dlq(reason, class));
    #[rustfmt::skip]
    let telemetry_cases: Vec<(&str, Vec<u8>, Fate)> = vec![
        ("not JSON", b"{not json".to_vec(), Fate::Dlq("key must be a string", "payload")),
        ("not UTF-8", vec![0xff, 0xfe, 0xfd, 0x00, 0x80], Fate::Dlq("expected value", "payload")),
        ("not UTF-8 inside a string", not_utf8_name, Fate::Dlq("invalid unicode", "payload")),
        ("UTF-16", utf16, Fate::Dlq("key must be a string", "payload")),
        ("byte order mark", bom, Fate::Dlq("expected value", "payload")),
        ("empty", Vec::new(), Fate::Dlq("EOF while parsing", "payload")),
        ("over the size limit", vec![b' '; 100 * 1024], Fate::Dlq("the limit is 65536", "size")),
        json("JSON null", "null".into(), "invalid type: null", "payload"),
        json("JSON array", "[]".into(), "invalid length 0", "payload"),
        json("trailing garbage", format!(r#"{{"ts":{now},"seq":1,"metrics":{{"t":1}}}} and more"#), "trailing characters", "payload"),
        json("metric of the wrong type", format!(r#"{{"ts":{now},"seq":1,"metrics":{{"t":"hot"}}}}"#), "invalid type: string", "payload"),
        json("metric a boolean", format!(r#"{{"ts":{now},"seq":1,"metrics":{{"t":true}}}}"#), "invalid type: boolean", "payload"),
        json("ts a string", format!(r#"{{"ts":"{now}","seq":1,"metrics":{{"t":1}}}}"#), "invalid type: string", "payload"),
        json("negative seq", format!(r#"{{"ts":{now},"seq":-1,"metrics":{{"t":1}}}}"#), "invalid value: integer `-1`", "payload"),
        json("fractional seq", format!(r#"{{"ts":{now},"seq":1.5,"metrics":{{"t":1}}}}"#), "invalid type: floating point", "payload"),
        json("seq beyond u64", format!(r#"{{"ts":{now},"seq":18446744073709551616,"metrics":{{"t":1}}}}"#), "invalid type: floating point", "payload"),
        json("metrics an array", format!(r#"{{"ts":{now},"seq":1,"metrics":[1,2]}}"#), "invalid type: sequence, expected a map", "payload"),
        json("missing seq", format!(r#"{{"ts":{now},"metrics":{{"t":1}}}}"#), "missing field `seq`", "payload"),
        json("duplicate field", format!(r#"{{"ts":{now},"ts":{now},"seq":1,"metrics":{{"t":1}}}}"#), "duplicate field `ts`", "payload"),
        json("NaN", format!(r#"{{"ts":{now},"seq":1,"metrics":{{"t":NaN}}}}"#), "expected value", "payload"),
        json("Infinity", format!(r#"{{"ts":{now},"seq":1,"metrics":{{"t":-Infinity}}}}"#), "invalid number", "payload"),
        json("out of range", format!(r#"{{"ts":{now},"seq":1,"metrics":{{"t":1e999}}}}"#), "number out of range", "payload"),
        json("deeply nested metric", format!(r#"{{"ts":{now},"seq":1,"metrics":{{"t":{}}}}}"#, nested(1000)), "invalid type: sequence, expected f64", "payload"),
        json("thousands of metrics", format!(r#"{{"ts":{now},"seq":1,"metrics":{{{metrics_2000}}}}}"#), "2000 metrics; the limit is 64", "payload"),
        json("no metrics", format!(r#"{{"ts":{now},"seq":1,"metrics":{{}}}}"#), "metrics is empty", "payload"),
        json("bad metric name", format!(r#"{{"ts":{now},"seq":1,"metrics":{{"a b":1}}}}"#), "metric name \"a b\" is invalid", "payload"),
        json("huge metric name", format!(r#"{{"ts":{now},"seq":1,"metrics":{{"{huge_name}":1}}}}"#), "metric name \"xxxx", "payload"),
        json("ts in seconds", format!(r#"{{"ts":{},"seq":1,"metrics":{{"t":1}}}}"#, now / 1000), "not a plausible time", "payload"),
        json("ts far in the past", r#"{"ts":1,"seq":1,"metrics":{"t":1}}"#.into(), "ts 1 is not a plausible time", "payload"),
        json("ts beyond 2286", r#"{"ts":99999999999999,"seq":1,"metrics":{"t":1}}"#.into(), "not a plausible time", "payload"),
        json("ts ten years ahead", format!(r#"{{"ts":{},"seq":1,"metrics":{{"t":1}}}}"#, now + 10 * year_ms), "ahead of the service clock", "clock"),
    ];
    #[rustfmt::skip]
    let other_kinds: Vec<(&str, &str, Vec<u8>, Fate)> = vec![
        ("state not an object", "state", br#"{"reported":[1,2]}"#.to_vec(), Fate::Dlq("invalid type: sequence, expected a map", "payload")),
        ("state deeply nested", "state", format!(r#"{{"reported":{{"a":{}}}}}"#, nested(1000)).into_bytes(), Fate::Dlq("recursion limit exceeded", "payload")),
        ("state from the future", "state", format!(r#"{{"ts":{},"reported":{{"a":1}}}}"#, now + year_ms).into_bytes(), Fate::Dlq("ahead of the service clock", "clock")),
        ("status unknown", "status", br#"{"status":"sleepy"}"#.to_vec(), Fate::Dlq("unknown variant `sleepy`", "payload")),
        ("status huge string", "status", format!(r#"{{"status":"{huge_status}"}}"#).into_bytes(), Fate::Dlq("unknown variant `yyyy", "payload")),
        ("ack without command", "acks", br#"{"outcome":"succeeded"}"#.to_vec(), Fate::Dlq("missing field `command_id`", "payload")),
        ("ack outcome unknown", "acks", br#"{"command_id":"c1","outcome":"maybe"}"#.to_vec(), Fate::Dlq("unknown variant `maybe`", "payload")),
        ("unknown topic kind", "bogus", telemetry(now, 1), Fate::Dlq("unknown kind \"bogus\"", "topic")),
        ("kind in upper case", "TELEMETRY", telemetry(now, 1), Fate::Dlq("unknown kind \"TELEMETRY\"", "topic")),
        ("a device publishing commands", "commands", br#"{"command_id":"c","name":"x","ts":1}"#.to_vec(), Fate::Ignored),
        ("a device publishing desired state", "desired", b"{}".to_vec(), Fate::Ignored),
    ];
    let bad_ids = [
        ("empty device id", String::new()),
        ("device id with @", format!("{p}b@d")),
        ("device id too long", format!("{p}{}", "l".repeat(80))),
        ("device id not ASCII", format!("{p}dévice")),
        ("device id with a space", format!("{p}two words")),
    ];
    let mut cases: Vec<Case> = Vec::new();
    for (i, (what, payload, fate)) in telemetry_cases.into_iter().enumerate() {
        let topic = format!("devices/{p}t{i}/telemetry");
        cases.push(Case {
            what,
            topic,
            payload,
            fate,
        });
    }
    for (i, (what, kind, payload, fate)) in other_kinds.into_iter().enumerate() {
        let topic = format!("devices/{p}k{i}/{kind}");
        cases.push(Case {
            what,
            topic,
            payload,
            fate,
        });
    }
    for (what, id) in bad_ids {
        let fate = Fate::Dlq("bad device id", "device_id");
        let topic = format!("devices/{id}/telemetry");
        cases.push(Case {
            what,
            topic,
            payload: telemetry(now, 1),
            fate,
        });
    }
    cases
}

fn counter(service: &Service, name: &str) -> f64 {
    service.metric(name)
}

async fn every_bad_mqtt_input_is_dead_lettered_or_counted(
    rig: &Rig,
    namespace: &Namespace,
    service: &Service,
) {
    let p = namespace.device_prefix();
    let now = fleetwatch_protocol::now_ms();
    let cases = bad_mqtt_inputs(&p, now);
    assert!(cases.len() >= 30, "{} cases", cases.len());
    // A valid reading before every bad message, and a replayed one (a duplicate the
    // twin drops and counts) at the end.
    let good = format!("{p}good");
    let good_topic = format!("devices/{good}/telemetry");
    let mut messages = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        messages.push((good_topic.clone(), telemetry(now + i as i64, i as u64 + 1)));
        messages.push((case.topic.clone(), case.payload.clone()));
    }
    messages.push((good_topic.clone(), telemetry(now + 2, 3)));
    publish_raw(rig, &format!("{p}publisher"), &messages).await;

    let expected: Vec<&Case> = cases
        .iter()
        .filter(|c| matches!(c.fate, Fate::Dlq(..)))
        .collect();
    let dlq = namespace.topic("iot.dlq");
    let letters: Vec<DeadLetter> = eventually(Duration::from_secs(60), "dead letters", || {
        let letters: Vec<DeadLetter> = read_topic(&rig.kafka, &dlq)
            .into_iter()
            .map(|record| serde_json::from_str(&record.payload).expect("dead letters decode"))
            .collect();
        (letters.len() >= expected.len()).then_some(letters)
    });
    assert_eq!(letters.len(), expected.len(), "one dead letter per case");
    let mut classes = std::collections::BTreeMap::<&str, usize>::new();
    for case in &expected {
        let Fate::Dlq(reason, class) = case.fate else {
            unreachable!()
        };
        let letter = letters
            .iter()
            .find(|letter| letter.topic == case.topic)
            .unwrap_or_else(|| panic!("{}: no dead letter for {:?}", case.what, case.topic));
        assert!(
            letter.reason.contains(reason),
            "{}: {:?} lacks {reason:?}",
            case.what,
            letter.reason
        );
        assert!(
            letter.reason.len() <= DeadLetter::KEPT_REASON_BYTES + 3,
            "{}: a reason of {} bytes",
            case.what,
            letter.reason.len()
        );
        assert_eq!(letter.payload_bytes, case.payload.len(), "{}", case.what);
        assert!(
            letter.payload.len() <= DeadLetter::KEPT_PAYLOAD_BYTES * 3,
            "{}",
            case.what
        );
        *classes.entry(class).or_default() += 1;
    }
    for (class, count) in &classes {
        let metric = format!("fleetwatch_dead_letters_total{{reason=\"{class}\"}}");
        assert_eq!(counter(service, &metric), *count as f64, "{metric}");
    }
    let ignored = cases
        .iter()
        .filter(|c| matches!(c.fate, Fate::Ignored))
        .count();
    assert_eq!(
        counter(
            service,
            "fleetwatch_ingest_messages_total{outcome=\"ignored\"}"
        ),
        ignored as f64
    );

    // Every valid reading arrived in iot.telemetry (the replayed one too: the twin drops it).
    let telemetry_topic = namespace.topic("iot.telemetry");
    let readings: Vec<DeviceEvent> =
        eventually(Duration::from_secs(60), "the valid readings", || {
            let events: Vec<DeviceEvent> = read_topic(&rig.kafka, &telemetry_topic)
                .into_iter()
                .map(|record| record.device_event().expect("events decode"))
                .collect();
            (events.len() > cases.len()).then_some(events)
        });
    let mut seqs: Vec<u64> = readings
        .iter()
        .map(|event| {
            assert_eq!(
                event.device_id.as_str(),
                good,
                "only valid readings reach iot.telemetry"
            );
            match &event.body {
                DeviceEventBody::Telemetry(telemetry) => telemetry.seq,
                other => panic!("not a reading: {other:?}"),
            }
        })
        .collect();
    seqs.sort_unstable();
    let mut wanted: Vec<u64> = (1..=cases.len() as u64).collect();
    wanted.push(3);
    wanted.sort_unstable();
    assert_eq!(seqs, wanted);
    // The replayed reading is dropped by the twin, and counted.
    eventually(
        Duration::from_secs(30),
        "the twin applied the readings",
        || {
            let (status, twin) = service.get(&format!("/devices/{good}"));
            (status == 200 && twin["events"] == cases.len() as u64 && twin["duplicates"] == 1)
                .then_some(())
        },
    );
    assert!(
        counter(
            service,
            "fleetwatch_skipped_records_total{reason=\"duplicate\",role=\"devices\"}"
        ) >= 1.0
    );
}

/// A raw HTTP/1.1 request with any body bytes and content type: (status, body).
fn raw_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer and close before reading a large body.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    (status, body)
}

fn every_bad_rest_body_gets_a_4xx_with_a_message(service: &Service, p: &str) {
    let device = format!("{p}rest");
    let json = Some("application/json");
    // The device exists, so refusals are about the body, not a missing twin.
    let (status, _, _) = service.request(
        "PUT",
        &format!("/devices/{device}/desired"),
        &[],
        Some(&serde_json::json!({"led": "blue"})),
    );
    assert_eq!(status, 200);
    let desired = format!("/devices/{device}/desired");
    let commands = format!("/devices/{device}/commands");
    let tenant = format!("/devices/{device}/tenant");
    let ack = format!("/alarms/{device}:1/ack");
    let long = "n".repeat(65);
    let big_args = format!(
        r#"{{"name":"x","args":{{"blob":"{}"}}}}"#,
        "a".repeat(20_000)
    );
    let too_big = format!(r#"{{"led":"{}"}}"#, "a".repeat(70_000));
    #[rustfmt::skip]
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, &str, String, Option<&str>, Vec<u8>)> = vec![
        ("desired: not JSON", "PUT", desired.clone(), json, b"{".to_vec()),
        ("desired: empty", "PUT", desired.clone(), json, Vec::new()),
        ("desired: an array", "PUT", desired.clone(), json, b"[1]".to_vec()),
        ("desired: a string", "PATCH", desired.clone(), json, br#""on""#.to_vec()),
        ("desired: null", "PUT", desired.clone(), json, b"null".to_vec()),
        ("desired: not UTF-8", "PUT", desired.clone(), json, vec![b'{', b'"', 0xff, b'"', b':', b'1', b'}']),
        ("desired: deeply nested", "PUT", desired.clone(), json, format!(r#"{{"a":{}}}"#, nested(1000)).into_bytes()),
        ("desired: over 64 KiB", "PUT", desired.clone(), json, too_big.into_bytes()),
        ("desired: not declared JSON", "PUT", desired.clone(), Some("text/plain"), br#"{"led":"red"}"#.to_vec()),
        ("desired: no content type", "PUT", desired.clone(), None, br#"{"led":"red"}"#.to_vec()),
        ("command: no name", "POST", commands.clone(), json, br#"{"args":{}}"#.to_vec()),
        ("command: bad name", "POST", commands.clone(), json, br#"{"name":"re boot"}"#.to_vec()),
        ("command: name too long", "POST", commands.clone(), json, format!(r#"{{"name":"{long}"}}"#).into_bytes()),
        ("command: args too big", "POST", commands.clone(), json, big_args.into_bytes()),
        ("command: negative ttl", "POST", commands.clone(), json, br#"{"name":"x","ttl_ms":-5}"#.to_vec()),
        ("command: ttl a string", "POST", commands.clone(), json, br#"{"name":"x","ttl_ms":"soon"}"#.to_vec()),
        ("command: unknown field", "POST", commands.clone(), json, br#"{"name":"x","priority":1}"#.to_vec()),
        ("command: idempotency key too long", "POST", commands.clone(), json, format!(r#"{{"name":"x","idempotency_key":"{}"}}"#, "k".repeat(200)).into_bytes()),
        ("tenant: a number", "PUT", tenant.clone(), json, br#"{"tenant":5}"#.to_vec()),
        ("tenant: bad id", "PUT", tenant.clone(), json, br#"{"tenant":"a/b"}"#.to_vec()),
        ("tenant: unknown field", "PUT", tenant.clone(), json, br#"{"tenant":"acme","owner":"x"}"#.to_vec()),
        ("ack: unknown verdict", "POST", ack.clone(), json, br#"{"verdict":"maybe"}"#.to_vec()),
        ("ack: not JSON", "POST", ack.clone(), json, b"yes".to_vec()),
        ("ack: not an alarm id", "POST", "/alarms/nothing/ack".into(), json, Vec::new()),
        ("bad device id in the path", "PUT", format!("/devices/{p}b%40d/desired"), json, br#"{"a":1}"#.to_vec()),
    ];
    assert!(cases.len() >= 20);
    for (what, method, path, content_type, body) in cases {
        let (status, text) = raw_request(service.http, method, &path, content_type, &body);
        assert!(
            (400..500).contains(&status),
            "{what}: status {status}: {text}"
        );
        let answer: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text:?}"));
        let message = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error message: {answer}"));
        assert!(!message.is_empty(), "{what}");
    }
    // An If-Match that is no version.
    let (status, _, answer) = service.request(
        "PUT",
        &desired,
        &[("If-Match", "\"three\"")],
        Some(&serde_json::json!({"led": "red"})),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("If-Match"),
        "{answer}"
    );
    // Nothing refused was applied: the desired state is as first written.
    let (status, desired) = service.get(&desired);
    assert_eq!(status, 200);
    assert_eq!(
        desired["desired"],
        serde_json::json!({"led": "blue"}),
        "{desired}"
    );
}

async fn every_bad_websocket_frame_gets_an_error_frame(service: &Service) {
    let (mut socket, _) = tokio_tungstenite::connect_async(service.ws_url())
        .await
        .unwrap();
    let frames: Vec<(&str, Message)> = vec![
        ("not JSON", Message::text("hello")),
        ("empty", Message::text("")),
        ("binary", Message::binary(vec![0xff, 0x00, 0x01])),
        ("JSON of another shape", Message::text("[1,2,3]")),
        ("unknown type", Message::text(r#"{"type":"unsubscribe"}"#)),
        ("no type", Message::text(r#"{"device_prefix":"x"}"#)),
        (
            "prefix not a string",
            Message::text(r#"{"type":"subscribe","device_prefix":5}"#),
        ),
        (
            "unknown field",
            Message::text(r#"{"type":"subscribe","device_prefix":"x","extra":1}"#),
        ),
        ("deeply nested", Message::text(nested(1000))),
        (
            "garbage cursor",
            Message::text(r#"{"type":"resume","cursor":"not a cursor"}"#),
        ),
        (
            "negative cursor",
            Message::text(r#"{"type":"resume","cursor":"0:-5"}"#),
        ),
        (
            "just under the frame limit",
            Message::text("z".repeat(4000)),
        ),
    ];
    let before = service.metric("fleetwatch_ws_bad_frames_total");
    for (what, frame) in &frames {
        socket.send(frame.clone()).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer"))
            .unwrap_or_else(|| panic!("{what}: connection closed"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let reply: serde_json::Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
        assert_eq!(reply["type"], "error", "{what}: {reply}");
        assert!(!reply["message"].as_str().unwrap().is_empty(), "{what}");
    }
    // The connection is still good: a valid subscription is answered.
    socket
        .send(Message::text(r#"{"type":"subscribe","device_prefix":"x"}"#))
        .await
        .unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert!(
        reply.to_text().unwrap().contains(r#""type":"subscribed""#),
        "{reply}"
    );
    assert!(service.metric("fleetwatch_ws_bad_frames_total") - before >= 9.0);
    // A frame above the limit cannot be skipped: the server closes with 1009 and why.
    socket.send(Message::text("z".repeat(5000))).await.unwrap();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a close frame")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("oversized frame: {other:?}"),
        }
    };
    let close = close.expect("a close frame with a code");
    assert_eq!(close.code, CloseCode::Size);
    assert!(close.reason.contains("4096"), "{}", close.reason);
    // Others are still served.
    let (mut other, _) = tokio_tungstenite::connect_async(service.ws_url())
        .await
        .unwrap();
    other
        .send(Message::text(r#"{"type":"subscribe","device_prefix":""}"#))
        .await
        .unwrap();
    let reply = other.next().await.unwrap().unwrap();
    assert!(reply.to_text().unwrap().contains("subscribed"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_refused_with_a_reason_and_valid_input_still_flows() {
    let rig = Rig::from_env();
    let namespace = Namespace::new("inputs");
    let mut service = Service::start_async(&rig, &namespace, "all", "a", &[]).await;
    every_bad_mqtt_input_is_dead_lettered_or_counted(&rig, &namespace, &service).await;
    let p = namespace.device_prefix();
    let blocking = tokio::task::spawn_blocking(move || {
        every_bad_rest_body_gets_a_4xx_with_a_message(&service, &p);
        service
    });
    service = blocking.await.unwrap();
    every_bad_websocket_frame_gets_an_error_frame(&service).await;
    assert!(service.is_running());
    let (status, _) = service.get("/readyz");
    assert_eq!(status, 200);
}
