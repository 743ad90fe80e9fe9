//! The alarm reviewer: plays the person who works the alarms, so load runs exercise the
//! feedback loop. It follows the alarm events an [`crate::AlertListener`] receives and,
//! once an alarm has cleared or is `review_after_ms` old (by then the anomaly that
//! raised it, if any, is in the ground truth), acknowledges it over REST with a verdict:
//! `true_positive` when it matches an injected anomaly of its device (created from the
//! anomaly's start to `grace_ms` after its end), `false_positive` otherwise.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleetwatch_protocol::{now_ms, AlarmEventKind, Verdict};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::listener::AlarmFeed;
use crate::{FleetStats, Injected};

/// How often new alarm events are looked at.
const POLL: Duration = Duration::from_millis(500);
/// Longest a REST call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct ReviewerConfig {
    /// The service's REST address, `http://host:port` (plain HTTP).
    pub http_url: String,
    /// Bearer token for the calls, when the service checks them.
    pub token: Option<String>,
    /// Review an alarm this long after it was created, if it has not cleared before (ms).
    pub review_after_ms: i64,
    /// How long after an injected anomaly ended an alarm still matches it (ms).
    pub grace_ms: i64,
}

/// One alarm reviewed.
#[derive(Clone, Debug, Serialize)]
pub struct Review {
    pub alarm_id: String,
    pub device: String,
    pub created_ms: i64,
    pub verdict: Verdict,
    /// The acknowledgement's HTTP status (0: no answer).
    pub status: u16,
    pub reviewed_ms: i64,
}

/// A running reviewer; [`AlarmReviewer::finish`] reviews what is left and stops it.
pub struct AlarmReviewer {
    reviews: Arc<Mutex<Vec<Review>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Alarms seen but not yet reviewed: device, created at, whether cleared.
type Waiting = BTreeMap<String, (String, i64, bool)>;

struct Work {
    config: ReviewerConfig,
    feed: AlarmFeed,
    stats: Arc<FleetStats>,
    reviews: Arc<Mutex<Vec<Review>>>,
    waiting: Waiting,
    read: usize,
}

impl AlarmReviewer {
    /// Review the alarms `feed` receives against the ground truth in `stats`.
    pub fn start(config: ReviewerConfig, feed: AlarmFeed, stats: Arc<FleetStats>) -> Self {
        let reviews = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let mut work = Work {
            config,
            feed,
            stats,
            reviews: reviews.clone(),
            waiting: Waiting::new(),
            read: 0,
        };
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let last = tokio::select! {
                    _ = stopped.cancelled() => true,
                    _ = tokio::time::sleep(POLL) => false,
                };
                work.follow();
                work.review(last).await;
                if last {
                    break;
                }
            }
        });
        Self {
            reviews,
            stop,
            task,
        }
    }

    /// Every review so far.
    pub fn reviews(&self) -> Vec<Review> {
        self.reviews.lock().clone()
    }

    /// Review every alarm still waiting, then stop; every review made.
    pub async fn finish(self) -> Vec<Review> {
        self.stop.cancel();
        let _ = self.task.await;
        self.reviews.lock().clone()
    }
}

impl Work {
    /// Take in the alarm events received since the last look.
    fn follow(&mut self) {
        let events = self.feed.since(self.read);
        self.read += events.len();
        for event in events {
            let alarm = &event.alarm;
            match event.kind {
                AlarmEventKind::Created => {
                    let device = alarm.device_id.as_str().to_owned();
                    self.waiting
                        .insert(alarm.alarm_id.clone(), (device, alarm.created_ms, false));
                }
                AlarmEventKind::Cleared => {
                    if let Some(waiting) = self.waiting.get_mut(&alarm.alarm_id) {
                        waiting.2 = true;
                    }
                }
                // Acknowledged by someone (or by this reviewer): nothing left to do.
                AlarmEventKind::Acknowledged => {
                    self.waiting.remove(&alarm.alarm_id);
                }
                AlarmEventKind::Updated => {}
            }
        }
    }

    /// Acknowledge the alarms due (all of them when `everything`).
    async fn review(&mut self, everything: bool) {
        let now = now_ms();
        let due: Vec<String> = (self.waiting.iter())
            .filter(|(_, (_, created, cleared))| {
                everything || *cleared || now - created >= self.config.review_after_ms
            })
            .map(|(id, _)| id.clone())
            .collect();
        for alarm_id in due {
            let Some((device, created_ms, _)) = self.waiting.remove(&alarm_id) else {
                continue;
            };
            let matched = matches(
                &self.stats.injected.lock(),
                &device,
                created_ms,
                self.config.grace_ms,
            );
            let verdict = if matched {
                Verdict::TruePositive
            } else {
                Verdict::FalsePositive
            };
            let status = acknowledge(&self.config, &alarm_id, verdict).await;
            self.reviews.lock().push(Review {
                alarm_id,
                device,
                created_ms,
                verdict,
                status,
                reviewed_ms: now_ms(),
            });
        }
    }
}

/// Whether an alarm of `device` created at `created_ms` matches an injected anomaly.
pub fn matches(injected: &[Injected], device: &str, created_ms: i64, grace_ms: i64) -> bool {
    injected.iter().any(|anomaly| {
        anomaly.device == device
            && anomaly.start_ms <= created_ms
            && created_ms <= anomaly.end_ms + grace_ms
    })
}

/// `POST /alarms/{id}/ack` with the verdict: the HTTP status, 0 without an answer.
async fn acknowledge(config: &ReviewerConfig, alarm_id: &str, verdict: Verdict) -> u16 {
    let body = serde_json::json!({ "verdict": verdict }).to_string();
    let path = format!("/alarms/{alarm_id}/ack");
    match tokio::time::timeout(CALL_TIMEOUT, post(config, &path, &body)).await {
        Ok(Ok(status)) => status,
        Ok(Err(error)) => {
            tracing::warn!(%error, alarm_id, "acknowledging failed");
            0
        }
        Err(_) => {
            tracing::warn!(alarm_id, "acknowledging got no answer in time");
            0
        }
    }
}

/// A plain HTTP/1.1 POST of a JSON body; the status.
async fn post(config: &ReviewerConfig, path: &str, body: &str) -> std::io::Result<u16> {
    let address = config
        .http_url
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let auth = config
        .token
        .as_ref()
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {text:.80}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AnomalyKind;

    #[test]
    fn an_alarm_matches_an_anomaly_of_its_device_from_its_start_to_the_grace_after_it() {
        let injected = vec![Injected {
            device: "sim-1".into(),
            kind: AnomalyKind::Spike,
            metric: Some("temperature".into()),
            magnitude_sigmas: 6.0,
            start_ms: 10_000,
            end_ms: 11_000,
            peak_ms: None,
        }];
        assert!(matches(&injected, "sim-1", 10_000, 5_000));
        assert!(matches(&injected, "sim-1", 16_000, 5_000));
        assert!(!matches(&injected, "sim-1", 16_001, 5_000));
        assert!(!matches(&injected, "sim-1", 9_999, 5_000));
        assert!(!matches(&injected, "sim-2", 10_500, 5_000));
    }
}
