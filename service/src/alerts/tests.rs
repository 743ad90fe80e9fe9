//! Unit tests of the alerts role's handler on in-memory records: no broker needed.
//! The WebSocket tests use a real local socket (port 0) and a tokio-tungstenite client.

use std::time::Duration;

use fleetwatch_protocol::{AlertState, Contributor};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::TryRecvError;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::*;

const TOPIC: &str = "iot.alerts";

fn alert(device: &str, episode: u64) -> Alert {
    Alert {
        alert_id: format!("{device}:{episode}"),
        device_id: DeviceId::parse(device).unwrap(),
        tenant: None,
        cause: Some("temperature:deviation".into()),
        state: AlertState::Raised,
        score: 0.97,
        threshold: 0.9,
        reason: "temperature far above its usual range".into(),
        contributors: vec![Contributor {
            metric: "temperature".into(),
            value: 80.0,
            expected: 21.0,
            score: 0.97,
        }],
        event_ts: 1_700_000_000_000 + episode as i64,
        event_seq: episode,
        emitted_ms: 1_700_000_000_100,
        model_version: 3,
        model_id: None,
    }
}

fn handler(queue: usize) -> AlertsHandler {
    AlertsHandler {
        routes: Arc::new(Routes::new(queue)),
        recent: RecentAlerts::default(),
        metrics: Arc::new(Metrics::new()),
        seen: SeenAlerts::default(),
    }
}

async fn feed(handler: &mut AlertsHandler, alert: &Alert) {
    let payload = serde_json::to_vec(alert).unwrap();
    let record = Record::new(TOPIC, alert.device_id.as_str(), &payload).at(0, 0);
    handler.handle(&record).await.expect("handled");
}

/// The frame a client gets for `alert`, as JSON.
fn frame(kind: &str, alert: &Alert) -> Value {
    json!({"type": kind, "alert": alert})
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test]
async fn an_alert_becomes_a_frame_for_every_subscriber() {
    let mut handler = handler(16);
    let operator = Caller::anonymous_operator();
    let (mut first, mut second) = (
        handler.routes.subscribe(&operator),
        handler.routes.subscribe(&operator),
    );
    let (a1, b1) = (alert("a1", 1), alert("b1", 1));
    feed(&mut handler, &a1).await;
    feed(&mut handler, &b1).await;

    // No tenants yet: every subscriber gets every device's alerts, in order.
    for receiver in [&mut first, &mut second] {
        for expected in [&a1, &b1] {
            let got = receiver.try_recv().unwrap();
            assert_eq!(got.device_id, Some(expected.device_id.clone()));
            assert_eq!(parse(&got.text), frame("alert", expected));
            assert_eq!(parse(&got.recent_text), frame("recent", expected));
        }
        assert!(matches!(receiver.try_recv(), Err(TryRecvError::Empty)));
    }
    let recent: Vec<Value> = handler
        .recent
        .lock()
        .iter()
        .map(|frame| parse(&frame.recent_text))
        .collect();
    assert_eq!(recent, [frame("recent", &a1), frame("recent", &b1)]);
}

fn tenant_user(tenant: &str) -> Caller {
    Caller {
        tenant: Some(TenantId::parse(tenant).unwrap()),
        ..Caller::anonymous_operator()
    }
}

#[tokio::test]
async fn a_tenant_receives_its_own_alerts_and_operators_receive_all() {
    let mut handler = handler(16);
    let mut acme = handler.routes.subscribe(&tenant_user("acme"));
    let mut globex = handler.routes.subscribe(&tenant_user("globex"));
    let mut operator = handler.routes.subscribe(&Caller::anonymous_operator());
    let owned = |device: &str, tenant: Option<&str>| Alert {
        tenant: tenant.map(|t| TenantId::parse(t).unwrap()),
        ..alert(device, 1)
    };
    for sent in [
        owned("a1", Some("acme")),
        owned("g1", Some("globex")),
        owned("n1", None),
        owned("a2", Some("acme")),
    ] {
        feed(&mut handler, &sent).await;
    }
    let drain = |receiver: &mut broadcast::Receiver<AlertFrame>| {
        std::iter::from_fn(|| receiver.try_recv().ok())
            .map(|frame| frame.device_id.expect("an alert").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(drain(&mut acme), ["a1", "a2"]);
    assert_eq!(drain(&mut globex), ["g1"]);
    assert_eq!(drain(&mut operator), ["a1", "g1", "n1", "a2"]);
    drop(globex);
    feed(&mut handler, &owned("g2", Some("globex"))).await;
    assert!(
        !handler
            .routes
            .tenants
            .lock()
            .contains_key(&TenantId::parse("globex").unwrap()),
        "a tenant without clients loses its channel"
    );
}

#[tokio::test]
async fn alerts_are_kept_without_subscribers_up_to_the_recent_limit() {
    let mut handler = handler(4);
    let extra = 5;
    for episode in 0..(RECENT_ALERTS + extra) as u64 {
        feed(&mut handler, &alert("d1", episode)).await;
    }
    let recent = handler.recent.lock();
    assert_eq!(recent.len(), RECENT_ALERTS);
    let kept: Vec<Value> = recent.iter().map(|f| parse(&f.text)).collect();
    let expected: Vec<Value> = (extra..RECENT_ALERTS + extra)
        .map(|episode| frame("alert", &alert("d1", episode as u64)))
        .collect();
    assert_eq!(kept, expected, "the oldest are dropped, order is kept");
    assert_eq!(
        handler
            .metrics
            .skipped
            .with_label_values(&["alerts", "undecodable"])
            .get(),
        0
    );
}

#[tokio::test]
async fn undecodable_records_are_skipped() {
    let mut handler = handler(16);
    let mut receiver = handler.routes.subscribe(&Caller::anonymous_operator());
    for payload in [&b"not json"[..], br#"{"alert_id":"x"}"#, b""] {
        let record = Record::new(TOPIC, "d1", payload).at(0, 7);
        handler
            .handle(&record)
            .await
            .expect("skipping is not an error");
    }
    let skipped = handler
        .metrics
        .skipped
        .with_label_values(&["alerts", "undecodable"]);
    assert_eq!(skipped.get(), 3);
    assert!(handler.recent.lock().is_empty());
    assert!(matches!(receiver.try_recv(), Err(TryRecvError::Empty)));
}

/// A WebSocket server on a free local port, fed by `handler`'s channel.
async fn serve_on_free_port(handler: &AlertsHandler, shutdown: &CancellationToken) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let auth = crate::auth::AuthConfig {
        mode: Some(crate::auth::AuthMode::None),
        ..Default::default()
    };
    let server = Server {
        alarms: None,
        routes: handler.routes.clone(),
        recent: handler.recent.clone(),
        auth: Arc::new(crate::auth::Authenticator::new(&auth).unwrap()),
        tls: None,
        max_clients: 8,
        metrics: handler.metrics.clone(),
    };
    tokio::spawn(serve(listener, server, shutdown.clone()));
    format!("ws://{address}")
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Client {
    let (client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    client
}

/// The next text frame, as JSON (fails the test after two seconds).
async fn next_frame(client: &mut Client) -> Value {
    let message = tokio::time::timeout(Duration::from_secs(2), client.next())
        .await
        .expect("a frame within 2 s")
        .expect("connection open")
        .expect("a good frame");
    match message {
        Message::Text(text) => parse(&text),
        other => panic!("unexpected frame {other:?}"),
    }
}

/// Ask the server to subscribe `client` to `prefix` and wait for the confirmation:
/// everything the server sent before is then sent (and counted).
async fn subscribe(client: &mut Client, prefix: &str) {
    let request = json!({"type": "subscribe", "device_prefix": prefix}).to_string();
    client.send(Message::text(request)).await.unwrap();
    let confirmed = json!({"type": "subscribed", "device_prefix": prefix});
    assert_eq!(next_frame(client).await, confirmed);
}

#[tokio::test]
async fn websocket_clients_get_the_recent_alerts_then_every_alert() {
    let mut handler = handler(16);
    let shutdown = CancellationToken::new();
    let url = serve_on_free_port(&handler, &shutdown).await;
    let earlier = alert("a1", 0);
    feed(&mut handler, &earlier).await;

    let mut clients = [connect(&url).await, connect(&url).await];
    let (a1, b1) = (alert("a1", 1), alert("b1", 1));
    feed(&mut handler, &a1).await;
    feed(&mut handler, &b1).await;
    for client in &mut clients {
        assert_eq!(next_frame(client).await, frame("recent", &earlier));
        assert_eq!(next_frame(client).await, frame("alert", &a1));
        assert_eq!(next_frame(client).await, frame("alert", &b1));
        subscribe(client, "").await;
        // Subscribing sends the recent alerts again, for the new prefix.
        for sent in [&earlier, &a1, &b1] {
            assert_eq!(next_frame(client).await, frame("recent", sent));
        }
    }
    let metrics = &handler.metrics;
    assert_eq!(metrics.ws_clients.get(), 2);
    assert_eq!(metrics.ws_alerts_sent.get(), 4);
    assert_eq!(metrics.ws_alerts_dropped.get(), 0);
    shutdown.cancel();
}

#[tokio::test]
async fn a_subscribed_prefix_narrows_the_stream_and_bad_frames_get_an_error() {
    let mut handler = handler(16);
    let shutdown = CancellationToken::new();
    let url = serve_on_free_port(&handler, &shutdown).await;
    feed(&mut handler, &alert("a1", 0)).await;
    let b0 = alert("b1", 0);
    feed(&mut handler, &b0).await;
    let mut client = connect(&url).await;
    next_frame(&mut client).await;
    next_frame(&mut client).await;

    subscribe(&mut client, "b").await;
    assert_eq!(next_frame(&mut client).await, frame("recent", &b0));
    let b2 = alert("b1", 2);
    feed(&mut handler, &alert("a1", 2)).await;
    feed(&mut handler, &b2).await;
    assert_eq!(next_frame(&mut client).await, frame("alert", &b2));

    client.send(Message::text("hello")).await.unwrap();
    let error = next_frame(&mut client).await;
    assert_eq!(error["type"], json!("error"));
    let message = error["message"].as_str().unwrap();
    assert!(message.starts_with("unusable frame ("), "{message}");
    assert_eq!(handler.metrics.ws_bad_frames.get(), 1);
    assert_eq!(handler.metrics.ws_alerts_sent.get(), 1);
    shutdown.cancel();
}

#[tokio::test]
async fn a_client_that_falls_behind_is_told_how_many_alerts_it_missed() {
    // Room for two alerts per client. The test's runtime has one thread and feeding
    // never waits, so the server's client task cannot run until all five are queued:
    // it is behind by three.
    let mut handler = handler(2);
    let shutdown = CancellationToken::new();
    let url = serve_on_free_port(&handler, &shutdown).await;
    let mut client = connect(&url).await;
    let alerts: Vec<Alert> = (0..5).map(|episode| alert("d1", episode)).collect();
    for alert in &alerts {
        feed(&mut handler, alert).await;
    }

    assert_eq!(
        next_frame(&mut client).await,
        json!({"type": "lagged", "missed": 3})
    );
    assert_eq!(next_frame(&mut client).await, frame("alert", &alerts[3]));
    assert_eq!(next_frame(&mut client).await, frame("alert", &alerts[4]));
    subscribe(&mut client, "").await;
    let metrics = &handler.metrics;
    assert_eq!(metrics.ws_alerts_dropped.get(), 3);
    assert_eq!(metrics.ws_alerts_sent.get(), 2);
    // Recent alerts are kept whatever the clients' queues.
    assert_eq!(handler.recent.lock().len(), 5);
    shutdown.cancel();
}

fn job_event(job_id: &str, at_ms: i64, body: fleetwatch_protocol::JobEventBody) -> Vec<u8> {
    serde_json::to_vec(&fleetwatch_protocol::JobEvent {
        job_id: job_id.into(),
        at_ms,
        body,
    })
    .unwrap()
}

fn job_created(job_id: &str, tenant: Option<&str>) -> Vec<u8> {
    use fleetwatch_protocol::{AbortCriteria, JobCommand, JobEventBody, JobSpec, Rollout};
    let spec = JobSpec {
        job_id: job_id.into(),
        tenant: tenant.map(|t| TenantId::parse(t).unwrap()),
        tenants: Vec::new(),
        created_by: "someone".into(),
        command: JobCommand::Command {
            name: "reboot".into(),
            args: Value::Null,
        },
        target: json!({"prefix": "d"}),
        devices: vec![
            DeviceId::parse("d1").unwrap(),
            DeviceId::parse("d2").unwrap(),
        ],
        rollout: Rollout {
            waves_percent: vec![50.0, 100.0],
            soak_ms: 0,
            max_per_minute: 60,
        },
        abort: AbortCriteria {
            failure_ratio: 0.5,
            min_finished: 2,
            canary: None,
        },
        device_timeout_ms: 1_000,
        ttl_ms: 1_000,
        continuous: false,
    };
    job_event(job_id, 1, JobEventBody::Created(Box::new(spec)))
}

#[tokio::test]
async fn job_events_from_now_on_reach_the_jobs_tenant_and_operators_only() {
    use fleetwatch_protocol::{ExecutionChange, ExecutionState, JobEventBody};
    let routes = Arc::new(Routes::new(16));
    let mut handler = JobEventsHandler::new(routes.clone(), Arc::new(Metrics::new()));
    let mut acme = routes.subscribe(&tenant_user("acme"));
    let mut globex = routes.subscribe(&tenant_user("globex"));
    let mut operator = routes.subscribe(&Caller::anonymous_operator());
    // History: offsets 0 and 1 of partition 0 were there at start (acme's job created
    // and started); only what follows is pushed, and the job's tenant is known from it.
    handler.live.start([(0, 2)].into_iter().collect());
    let sent = JobEventBody::Executions {
        changes: vec![
            ExecutionChange {
                device_id: DeviceId::parse("d1").unwrap(),
                state: ExecutionState::Sent,
                detail: None,
            },
            ExecutionChange {
                device_id: DeviceId::parse("d2").unwrap(),
                state: ExecutionState::Sent,
                detail: None,
            },
        ],
    };
    let records = [
        job_created("j-acme", Some("acme")),
        job_event(
            "j-acme",
            2,
            JobEventBody::WaveStarted {
                wave: 0,
                reach: 1,
                canary: None,
            },
        ),
        job_event("j-acme", 3, sent),
        Vec::new(), // an owner's marker
        job_created("j-ops", None),
        b"not json".to_vec(),
        job_event("j-acme", 4, JobEventBody::Finished),
    ];
    for (offset, payload) in records.iter().enumerate() {
        let record = Record::new("iot.jobs", "k", payload).at(0, offset as i64);
        handler.handle(&record).await.expect("handled");
    }
    let drain = |receiver: &mut broadcast::Receiver<AlertFrame>| {
        std::iter::from_fn(|| receiver.try_recv().ok())
            .map(|frame| parse(&frame.text))
            .collect::<Vec<_>>()
    };
    let executions = json!({"type": "job", "job_id": "j-acme", "event": "executions", "at_ms": 3, "executions": {"sent": 2}});
    let finished = json!({"type": "job", "job_id": "j-acme", "event": "finished", "at_ms": 4});
    let ops_created =
        json!({"type": "job", "job_id": "j-ops", "event": "created", "at_ms": 1, "targets": 2});
    assert_eq!(drain(&mut acme), [executions.clone(), finished.clone()]);
    assert!(drain(&mut globex).is_empty());
    assert_eq!(drain(&mut operator), [executions, ops_created, finished]);
    assert_eq!(handler.metrics.ws_job_events.get(), 3);
}

#[tokio::test]
async fn a_transition_sent_again_is_pushed_once() {
    let mut handler = handler(16);
    let mut client = handler.routes.subscribe(&Caller::anonymous_operator());
    let raised = alert("a1", 1);
    let mut updated = raised.clone();
    updated.state = AlertState::Updated;
    updated.event_seq = 5;
    // A scorer that crashed after the update sends both again.
    for alert in [&raised, &updated, &raised, &updated] {
        feed(&mut handler, alert).await;
    }
    for expected in [&raised, &updated] {
        assert_eq!(
            parse(&client.try_recv().unwrap().text),
            frame("alert", expected)
        );
    }
    assert!(matches!(client.try_recv(), Err(TryRecvError::Empty)));
    let repeated = handler
        .metrics
        .skipped
        .with_label_values(&["alerts", "repeated"]);
    assert_eq!(repeated.get(), 2);
    assert_eq!(handler.recent.lock().len(), 2);

    // A new episode of the same device is new.
    feed(&mut handler, &alert("a1", 9)).await;
    assert!(client.try_recv().is_ok());
}
