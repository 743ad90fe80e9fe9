//! A WebSocket client of the alerts role that records every alert with the time it
//! arrived: what a customer sees, and when.

use std::sync::Arc;
use std::time::Duration;

use fleetwatch_protocol::{now_ms, Alert};
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
    /// Alerts from before this client connected: not what it measures.
    Recent {},
    Subscribed {},
    Lagged {
        missed: u64,
    },
    Error {
        message: String,
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
    stop: CancellationToken,
}

impl AlertListener {
    /// Connect to `url` and receive the alerts of devices whose id starts with
    /// `device_prefix` (all devices for an empty prefix). Returns once subscribed.
    pub async fn connect(url: &str, device_prefix: &str) -> Result<Self, ListenerError> {
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
        let confirmation = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .map_err(|_| ListenerError::Subscribe("no answer within 10 s".into()))?;
        match confirmation {
            Some(Ok(Message::Text(text))) if text.contains("\"subscribed\"") => {}
            other => return Err(ListenerError::Subscribe(format!("{other:?}"))),
        }

        let received = Arc::new(Mutex::new(Vec::new()));
        let missed = Arc::new(Mutex::new(0));
        let stop = CancellationToken::new();
        let (sink, stopped) = (received.clone(), stop.clone());
        let missed_count = missed.clone();
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
                let received_ms = now_ms();
                match serde_json::from_str::<Frame>(&text) {
                    Ok(Frame::Alert { alert }) => {
                        sink.lock().push(ReceivedAlert { alert, received_ms })
                    }
                    Ok(Frame::Lagged { missed }) => *missed_count.lock() += missed,
                    Ok(Frame::Error { message }) => tracing::warn!(%message, "alerts server error"),
                    Ok(Frame::Subscribed {}) | Ok(Frame::Recent {}) => {}
                    Err(error) => tracing::warn!(%error, "unreadable alert frame"),
                }
            }
            let _ = socket.close(None).await;
        });
        Ok(Self {
            received,
            missed,
            stop,
        })
    }

    /// Every alert received so far.
    pub fn alerts(&self) -> Vec<ReceivedAlert> {
        self.received.lock().clone()
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
