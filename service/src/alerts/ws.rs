//! The WebSocket server (tokio-tungstenite).

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{AlertFrame, ClientFrame, RecentAlerts, ServerFrame};
use crate::metrics::Metrics;

/// Largest frame accepted from a client: they only send small subscribe requests.
const MAX_CLIENT_FRAME_BYTES: usize = 4096;

/// Accept WebSocket clients on `listener` until shutdown.
pub async fn serve(
    listener: TcpListener,
    frames: broadcast::Sender<AlertFrame>,
    recent: RecentAlerts,
    max_clients: usize,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(max_clients));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting WebSocket client failed");
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max_clients, "WebSocket client refused: too many clients");
            continue;
        };
        let receiver = frames.subscribe();
        let (metrics, shutdown, recent) = (metrics.clone(), shutdown.clone(), recent.clone());
        tokio::spawn(async move {
            metrics.ws_clients.inc();
            if let Err(error) = serve_client(stream, receiver, recent, &metrics, shutdown).await {
                tracing::debug!(%peer, %error, "WebSocket client ended with an error");
            }
            metrics.ws_clients.dec();
            drop(slot);
        });
    }
}

/// The recent alerts of devices matching `prefix`, oldest first.
fn recent_frames(recent: &RecentAlerts, prefix: &str) -> Vec<Arc<str>> {
    recent
        .lock()
        .iter()
        .filter(|frame| frame.device_id.as_str().starts_with(prefix))
        .map(|frame| frame.recent_text.clone())
        .collect()
}

async fn serve_client(
    stream: TcpStream,
    mut alerts: broadcast::Receiver<AlertFrame>,
    recent: RecentAlerts,
    metrics: &Metrics,
    shutdown: CancellationToken,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_CLIENT_FRAME_BYTES))
        .max_frame_size(Some(MAX_CLIENT_FRAME_BYTES));
    let mut socket = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    let mut device_prefix = String::new();
    for text in recent_frames(&recent, &device_prefix) {
        socket.send(Message::text(text.to_string())).await?;
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = socket.close(None).await;
                return Ok(());
            }
            alert = alerts.recv() => match alert {
                Ok(frame) => {
                    if frame.device_id.as_str().starts_with(&device_prefix) {
                        socket.send(Message::text(frame.text.to_string())).await?;
                        metrics.ws_alerts_sent.inc();
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    metrics.ws_alerts_dropped.inc_by(missed);
                    let text = serde_json::to_string(&ServerFrame::Lagged { missed }).expect("serializes");
                    socket.send(Message::text(text)).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            incoming = socket.next() => match incoming {
                None | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(Message::Text(text))) => {
                    let reply = match serde_json::from_str::<ClientFrame>(&text) {
                        Ok(ClientFrame::Subscribe { device_prefix: prefix }) => {
                            device_prefix = prefix;
                            ServerFrame::Subscribed { device_prefix: &device_prefix }
                        }
                        Err(error) => {
                            metrics.ws_bad_frames.inc();
                            ServerFrame::Error {
                                message: format!(
                                    "unusable frame ({error}); send {{\"type\":\"subscribe\",\"device_prefix\":\"...\"}}"
                                ),
                            }
                        }
                    };
                    let text = serde_json::to_string(&reply).expect("serializes");
                    socket.send(Message::text(text)).await?;
                    if matches!(reply, ServerFrame::Subscribed { .. }) {
                        for text in recent_frames(&recent, &device_prefix) {
                            socket.send(Message::text(text.to_string())).await?;
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    metrics.ws_bad_frames.inc();
                    let text = serde_json::to_string(&ServerFrame::Error {
                        message: "binary frames are not understood; send JSON text".to_owned(),
                    })
                    .expect("serializes");
                    socket.send(Message::text(text)).await?;
                }
                // Pings are answered by tungstenite; pongs and raw frames need nothing.
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
            },
        }
    }
}
