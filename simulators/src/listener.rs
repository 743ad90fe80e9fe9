//! A WebSocket client of the alerts role that records every alert with the time it
//! arrived (what a customer sees, and when), every alarm event with its cursor, so that
//! it can resume where it left off, and the job events.

use std::sync::Arc;
use std::time::Duration;

use fleetwatch_protocol::{now_ms, AlarmEvent, Alert};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct ReceivedAlert {
    pub alert: Alert,
    /// Wall clock when the frame arrived, ms.
    pub received_ms: i64,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Frame {
    Alert {
        alert: Alert,
    },
    Alarm {
        event: AlarmEvent,
        cursor: String,
    },
    Resumed {
        cursor: String,
    },
    /// Alarm events older than the topic's retention, gone before a resume read them.
    Lost {
        missed: u64,
    },
    /// Alerts from before this client connected: not what it measures.
    Recent {},
    Subscribed {},
    Lagged {
        missed: u64,
    },
    Error {
        message: String,
    },
    /// A job event (the listener keeps which job and what happened).
    Job {
        job_id: String,
        event: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("connecting to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tokio_tungstenite::tungstenite::Error,
    },
    #[error("the server did not confirm the subscription: {0}")]
    Subscribe(String),
}

pub struct AlertListener {
    received: Arc<Mutex<Vec<ReceivedAlert>>>,
    missed: Arc<Mutex<u64>>,
    alarms: Arc<Mutex<AlarmLog>>,
    jobs: Arc<Mutex<Vec<JobNotice>>>,
    stop: CancellationToken,
}

/// A job event frame as received: which job, and what happened (`created`,
/// `wave_started`, `executions`, `aborted`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct JobNotice {
    pub job_id: String,
    pub event: String,
}

/// Where [`record`] puts what a frame says.
struct Logs<'a> {
    received: &'a Mutex<Vec<ReceivedAlert>>,
    alarms: &'a Mutex<AlarmLog>,
    missed: &'a Mutex<u64>,
    jobs: &'a Mutex<Vec<JobNotice>>,
}

/// A handle on the alarm events a listener receives, for following them as they come.
#[derive(Clone)]
pub struct AlarmFeed(Arc<Mutex<AlarmLog>>);

impl AlarmFeed {
    /// The events received after the first `read`.
    pub fn since(&self, read: usize) -> Vec<AlarmEvent> {
        let log = self.0.lock();
        log.events
            .get(read..)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }
}

/// The alarm events a listener received, and the cursor after the last one.
#[derive(Clone, Debug, Default)]
pub struct AlarmLog {
    pub events: Vec<AlarmEvent>,
    pub cursor: Option<String>,
    /// Events the server said were lost (older than retention) on a resume.
    pub lost: u64,
    /// Whether the server finished replaying after a resume.
    pub resumed: bool,
}

fn record(text: &str, logs: &Logs<'_>) {
    let received_ms = now_ms();
    let Logs {
        received,
        alarms,
        missed,
        jobs,
    } = logs;
    match serde_json::from_str::<Frame>(text) {
        Ok(Frame::Alert { alert }) => received.lock().push(ReceivedAlert { alert, received_ms }),
        Ok(Frame::Job { job_id, event }) => jobs.lock().push(JobNotice { job_id, event }),
        Ok(Frame::Alarm { event, cursor }) => {
            let mut log = alarms.lock();
            log.events.push(event);
            log.cursor = Some(cursor);
        }
        Ok(Frame::Resumed { cursor }) => {
            let mut log = alarms.lock();
            log.cursor = Some(cursor);
            log.resumed = true;
        }
        Ok(Frame::Lost { missed }) => alarms.lock().lost += missed,
        Ok(Frame::Lagged { missed: lagged }) => *missed.lock() += lagged,
        Ok(Frame::Error { message }) => tracing::warn!(%message, "alerts server error"),
        Ok(Frame::Subscribed {}) | Ok(Frame::Recent {}) => {}
        Err(error) => tracing::warn!(%error, "unreadable alert frame"),
    }
}

impl AlertListener {
    /// Connect to `url` and receive the alerts of devices whose id starts with
    /// `device_prefix` (all devices for an empty prefix). Returns once subscribed.
    pub async fn connect(url: &str, device_prefix: &str) -> Result<Self, ListenerError> {
        Self::connect_resuming(url, device_prefix, None).await
    }

    /// [`AlertListener::connect`], then ask for every alarm event after `cursor` (the
    /// last one a previous connection saw) before the live ones.
    pub async fn connect_resuming(
        url: &str,
        device_prefix: &str,
        cursor: Option<&str>,
    ) -> Result<Self, ListenerError> {
        let (mut socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|source| ListenerError::Connect {
                url: url.to_owned(),
                source,
            })?;
        let request = serde_json::json!({ "type": "subscribe", "device_prefix": device_prefix });
        socket
            .send(Message::text(request.to_string()))
            .await
            .map_err(|e| ListenerError::Subscribe(e.to_string()))?;
        // Recent alerts may come first (they are sent on connecting): skip to the answer.
        let confirmed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match socket.next().await {
                    Some(Ok(Message::Text(text))) if text.contains("\"subscribed\"") => {
                        return Ok(())
                    }
                    Some(Ok(Message::Text(text))) if text.contains("\"recent\"") => continue,
                    other => return Err(format!("{other:?}")),
                }
            }
        })
        .await
        .map_err(|_| ListenerError::Subscribe("no answer within 10 s".into()))?;
        confirmed.map_err(ListenerError::Subscribe)?;
        if let Some(cursor) = cursor {
            let resume = serde_json::json!({ "type": "resume", "cursor": cursor });
            socket
                .send(Message::text(resume.to_string()))
                .await
                .map_err(|e| ListenerError::Subscribe(e.to_string()))?;
        }
        let received = Arc::new(Mutex::new(Vec::new()));
        let missed = Arc::new(Mutex::new(0));
        let alarms = Arc::new(Mutex::new(AlarmLog::default()));
        let jobs = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (sink, stopped) = (received.clone(), stop.clone());
        let (missed_count, alarm_log, job_log) = (missed.clone(), alarms.clone(), jobs.clone());
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    _ = stopped.cancelled() => break,
                    frame = socket.next() => frame,
                };
                let Some(Ok(Message::Text(text))) = frame else {
                    if matches!(frame, None | Some(Err(_))) {
                        break;
                    }
                    continue;
                };
                let logs = Logs {
                    received: &sink,
                    alarms: &alarm_log,
                    missed: &missed_count,
                    jobs: &job_log,
                };
                record(&text, &logs);
            }
            let _ = socket.close(None).await;
        });
        Ok(Self {
            received,
            missed,
            alarms,
            jobs,
            stop,
        })
    }

    /// Every alert received so far.
    pub fn alerts(&self) -> Vec<ReceivedAlert> {
        self.received.lock().clone()
    }

    /// The alarm events received so far, and the cursor after them.
    pub fn alarm_log(&self) -> AlarmLog {
        self.alarms.lock().clone()
    }

    /// A handle that follows the alarm events as they come.
    pub fn alarm_feed(&self) -> AlarmFeed {
        AlarmFeed(self.alarms.clone())
    }

    /// The job events received so far.
    pub fn job_events(&self) -> Vec<JobNotice> {
        self.jobs.lock().clone()
    }

    /// Alerts the server said this client missed for being slow.
    pub fn missed(&self) -> u64 {
        *self.missed.lock()
    }

    pub fn close(&self) {
        self.stop.cancel();
    }
}

impl Drop for AlertListener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
