//! The handler against a real HTTP listener and the in-memory Kafka log.

use std::sync::Arc;

use fleetwatch_protocol::{DeviceId, KafkaTopics, Severity, TenantId, WebhookDelivery};
use tokio_util::sync::CancellationToken;

use super::{WebhookEndpoint, WebhookHandler, WebhooksConfig};
use crate::kafka::memory::MemoryLog;
use crate::kafka::{Producer, Record, RecordHandler};
use crate::metrics::Metrics;
use crate::rules::rule::{ActionOutcome, ActionRecord, RuleAction};
use crate::secret::Secret;

const SECRET: &str = "a-secret-of-at-least-16-bytes";

/// Read one HTTP request from `listener` (headers and body), answer 200.
async fn one_request(listener: tokio::net::TcpListener) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut stream, _) = listener.accept().await.unwrap();
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = stream.read(&mut buffer).await.unwrap();
        request.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&request).to_lowercase();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length: usize = (text.lines())
            .find_map(|l| l.strip_prefix("content-length: ")?.trim().parse().ok())
            .unwrap_or(0);
        if n == 0 || request.len() >= end + 4 + length {
            break;
        }
    }
    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    stream.write_all(ok.as_bytes()).await.unwrap();
    String::from_utf8(request).unwrap()
}

fn endpoint(name: &str, tenant: &str, url: &str) -> WebhookEndpoint {
    WebhookEndpoint {
        name: name.into(),
        tenant: TenantId::parse(tenant).unwrap(),
        url: url.into(),
        secret: Some(Secret::new(SECRET)),
        secret_file: None,
    }
}

fn action(id: &str, action: RuleAction, outcome: ActionOutcome) -> ActionRecord {
    ActionRecord {
        action_id: id.into(),
        rule_id: "r1".into(),
        rule_revision: 0,
        tenant: Some(TenantId::parse("acme").unwrap()),
        alarm_id: "acme-1:1".into(),
        severity: Severity::Critical,
        alarm_created_ms: 1,
        device_id: DeviceId::parse("acme-1").unwrap(),
        action,
        outcome,
        detail: None,
        at_ms: fleetwatch_protocol::now_ms(),
    }
}

/// A handler with an acme webhook at `url` and a globex one that points nowhere (a
/// request there would be a failed delivery).
fn handler_for(url: &str) -> (WebhookHandler, MemoryLog, KafkaTopics, Arc<Metrics>) {
    let config = WebhooksConfig {
        endpoints: vec![
            endpoint("globex-hook", "globex", "http://127.0.0.1:9/none"),
            endpoint("acme-hook", "acme", url),
        ],
        ..Default::default()
    };
    let (log, metrics, topics) = (
        MemoryLog::default(),
        Arc::new(Metrics::new()),
        KafkaTopics::default(),
    );
    let producer = Producer::in_memory(&log, metrics.clone());
    let handler = WebhookHandler::new(
        &config,
        producer,
        &topics,
        metrics.clone(),
        CancellationToken::new(),
    )
    .unwrap();
    (handler, log, topics, metrics)
}

#[tokio::test]
async fn a_rules_notification_is_delivered_signed_to_its_tenants_webhooks_only() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (mut handler, log, topics, metrics) = handler_for(&url);
    let notify = |message: &str| RuleAction::Notify {
        message: Some(message.into()),
    };
    let records = [
        action(
            "rule-r1-acme-1:1",
            notify("pump hot"),
            ActionOutcome::Performed,
        ),
        // Neither a dry run's notification nor another kind of action is sent.
        action("rule-r2-acme-1:1", notify("dry"), ActionOutcome::DryRun),
        action(
            "rule-r3-acme-1:1",
            RuleAction::Command {
                name: "safe_mode".into(),
                args: serde_json::json!({}),
            },
            ActionOutcome::Performed,
        ),
    ];
    let topic = topics.rule_actions();
    // After them, a rules owner's marker (no value): nothing to deliver, nothing skipped.
    let payloads = (records.iter().map(|r| serde_json::to_vec(r).unwrap())).chain([Vec::new()]);
    for (offset, payload) in payloads.enumerate() {
        let record = Record {
            topic: &topic,
            partition: 0,
            offset: offset as i64,
            key: Some(b"acme-1"),
            payload: &payload,
            timestamp_ms: None,
        };
        handler.handle(&record).await.unwrap();
    }
    let received = tokio::spawn(one_request(listener));
    handler.on_tick().await.unwrap();
    let request = tokio::time::timeout(std::time::Duration::from_secs(10), received)
        .await
        .expect("the notification reached the webhook")
        .unwrap();

    let (head, body) = request.split_once("\r\n\r\n").unwrap();
    let head = head.to_lowercase();
    let signature = super::SigningKey::new(SECRET.as_bytes()).sign(body.as_bytes());
    assert!(
        head.contains(&format!("x-fleetwatch-signature: {signature}")),
        "{head}"
    );
    assert!(
        head.contains("x-fleetwatch-event-id: rule-r1-acme-1:1"),
        "{head}"
    );
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["type"], "rule_action");
    assert_eq!(body["message"], "pump hot");
    assert_eq!(body["action"]["alarm_id"], "acme-1:1");
    // The outcome is recorded with the alarm, and every record's offset is durable.
    let outcomes: Vec<WebhookDelivery> = log.json(&topics.webhook_deliveries());
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(
        (outcomes[0].webhook.as_str(), outcomes[0].alarm_id.as_str()),
        ("acme-hook", "acme-1:1")
    );
    let durable = handler.take_durable();
    let durable: Vec<(&str, i32, i64)> = durable.iter().collect();
    assert_eq!(durable, [(topic.as_str(), 0, 3)]);
    let skipped = metrics
        .skipped
        .with_label_values(&["webhooks", "undecodable"]);
    assert_eq!(skipped.get(), 0, "a marker is no undecodable record");
}
