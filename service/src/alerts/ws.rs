//! The WebSocket server (tokio-tungstenite), over TLS when configured.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, Semaphore};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{
    alarm_frame, AlertFrame, ClientFrame, Cursor, LivePosition, RecentAlerts, Routes, ServerFrame,
};
use crate::auth::{bearer, query_token, Authenticator, Caller, Scope};
use crate::kafka::KafkaConfig;
use crate::metrics::Metrics;

/// Read buffer of a client's connection.
const CLIENT_READ_BUFFER_BYTES: usize = 4096;
/// Largest frame accepted from a client: they only send small subscribe requests.
const MAX_CLIENT_FRAME_BYTES: usize = 4096;
/// A client must finish its TLS and WebSocket handshakes within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where resuming clients' missed alarm events are read from.
pub struct AlarmsFeed {
    pub kafka: KafkaConfig,
    pub topic: String,
    pub live: Arc<LivePosition>,
}

/// What the server needs besides its listener.
pub struct Server {
    pub alarms: Option<AlarmsFeed>,
    pub routes: Arc<Routes>,
    pub recent: RecentAlerts,
    pub auth: Arc<Authenticator>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub max_clients: usize,
    pub metrics: Arc<Metrics>,
}

/// Accept WebSocket clients on `listener` until shutdown.
pub async fn serve(listener: TcpListener, server: Server, shutdown: CancellationToken) {
    let server = Arc::new(server);
    let slots = Arc::new(Semaphore::new(server.max_clients));
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
            tracing::warn!(%peer, max_clients = server.max_clients, "WebSocket client refused: too many clients");
            continue;
        };
        let (server, shutdown) = (server.clone(), shutdown.clone());
        tokio::spawn(async move {
            let served = match &server.tls {
                Some(tls) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => server.serve_client(stream, shutdown).await,
                        Ok(Err(error)) => Err(error.into()),
                        Err(_) => Ok(()),
                    }
                }
                None => server.serve_client(stream, shutdown).await,
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "WebSocket client ended with an error");
            }
            drop(slot);
        });
    }
}

/// The recent alerts `caller` may see of devices matching `prefix`, oldest first.
fn recent_frames(recent: &RecentAlerts, caller: &Caller, prefix: &str) -> Vec<Arc<str>> {
    recent
        .lock()
        .iter()
        .filter(|frame| caller.sees(frame.tenant.as_ref()))
        .filter(|frame| matches_prefix(frame, prefix))
        .map(|frame| frame.recent_text.clone())
        .collect()
}

/// Whether a client subscribed to `prefix` receives `frame` (frames about no one device
/// always pass).
fn matches_prefix(frame: &AlertFrame, prefix: &str) -> bool {
    (frame.device_id.as_ref()).is_none_or(|device| device.as_str().starts_with(prefix))
}

fn refusal(status: StatusCode, reason: &str, message: &str) -> ErrorResponse {
    let body = serde_json::json!({ "error": message, "reason": reason }).to_string();
    let mut response = ErrorResponse::new(Some(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Time until `caller`'s token expires; a long wait when it never does.
fn until_expiry(caller: &Caller) -> Duration {
    let now = fleetwatch_protocol::now_ms() / 1000;
    caller
        .expires_at
        .map_or(Duration::from_secs(u32::MAX as u64), |at| {
            Duration::from_secs(at.saturating_sub(now).max(0) as u64)
        })
}

type WsError = tokio_tungstenite::tungstenite::Error;

impl Server {
    /// Authenticate the upgrade request: the caller, or the refusal (401/403).
    #[allow(clippy::result_large_err)]
    fn admit(&self, request: &Request) -> Result<Caller, ErrorResponse> {
        let header = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        let from_query = query_token(request.uri().query());
        let token = bearer(header).or(from_query.as_deref());
        let caller = self.auth.check(token, &self.metrics).map_err(|failure| {
            refusal(
                StatusCode::UNAUTHORIZED,
                failure.reason(),
                &failure.to_string(),
            )
        })?;
        if !caller.has(Scope::Read) {
            self.metrics
                .auth_failures
                .with_label_values(&["scope"])
                .inc();
            return Err(refusal(
                StatusCode::FORBIDDEN,
                "scope",
                "the token lacks the `read` scope",
            ));
        }
        Ok(caller)
    }

    // The handshake callback's error type is tungstenite's (a whole HTTP response).
    #[allow(clippy::result_large_err)]
    async fn serve_client<S>(&self, stream: S, shutdown: CancellationToken) -> Result<(), WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // Clients send small frames (subscribe, resume): a 4 KiB read buffer instead of
        // the default 128 KiB keeps a connected client at a few KB
        // (docs/benchmarks.md, the ws_fanout bench).
        let config = WebSocketConfig::default()
            .read_buffer_size(CLIENT_READ_BUFFER_BYTES)
            .max_message_size(Some(MAX_CLIENT_FRAME_BYTES))
            .max_frame_size(Some(MAX_CLIENT_FRAME_BYTES));
        let mut caller = None;
        let check = |request: &Request, response: Response| {
            caller = Some(self.admit(request)?);
            Ok(response)
        };
        let handshake =
            tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config));
        let Ok(socket) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await else {
            return Ok(());
        };
        let (socket, Some(caller)) = (socket?, caller) else {
            return Ok(());
        };
        self.metrics.ws_clients.inc();
        let served = self.push(socket, &caller, shutdown).await;
        self.metrics.ws_clients.dec();
        served
    }

    /// Push alerts to an admitted client until it leaves, its token expires or the
    /// server stops.
    async fn push<S>(
        &self,
        mut socket: tokio_tungstenite::WebSocketStream<S>,
        caller: &Caller,
        shutdown: CancellationToken,
    ) -> Result<(), WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut alerts = self.routes.subscribe(caller);
        let expiry = tokio::time::sleep(until_expiry(caller));
        tokio::pin!(expiry);
        let mut device_prefix = String::new();
        // After a resume: the positions the replay covered (live events before them
        // were replayed already).
        let mut replayed = Cursor::default();
        for text in recent_frames(&self.recent, caller, &device_prefix) {
            socket.send(Message::text(text.to_string())).await?;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = socket.close(None).await;
                    return Ok(());
                }
                _ = &mut expiry => {
                    let frame = CloseFrame { code: CloseCode::Policy, reason: "token expired".into() };
                    let _ = socket.close(Some(frame)).await;
                    return Ok(());
                }
                alert = alerts.recv() => match alert {
                    Ok(frame) => {
                        let seen = frame.position.is_some_and(|(p, o)| replayed.covers(p, o));
                        if !seen && matches_prefix(&frame, &device_prefix) {
                            socket.send(Message::text(frame.text.to_string())).await?;
                            self.metrics.ws_alerts_sent.inc();
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        self.metrics.ws_alerts_dropped.inc_by(missed);
                        let text = serde_json::to_string(&ServerFrame::Lagged { missed }).expect("serializes");
                        socket.send(Message::text(text)).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                incoming = socket.next() => {
                    if !self.incoming(&mut socket, caller, incoming, &mut device_prefix, &mut replayed).await? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Handle what the client sent; false when the connection is over. Every frame
    /// that is not understood is answered with an error frame and the connection stays;
    /// a frame above [`MAX_CLIENT_FRAME_BYTES`] cannot be skipped (the rest of it would
    /// be read as frames), so it is answered with a close frame "message too big" (1009).
    async fn incoming<S>(
        &self,
        socket: &mut tokio_tungstenite::WebSocketStream<S>,
        caller: &Caller,
        incoming: Option<Result<Message, WsError>>,
        device_prefix: &mut String,
        replayed: &mut Cursor,
    ) -> Result<bool, WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match incoming {
            None | Some(Ok(Message::Close(_))) => return Ok(false),
            Some(Ok(Message::Text(text))) => {
                if let Ok(ClientFrame::Resume { cursor }) = serde_json::from_str(&text) {
                    *replayed = self.resume(socket, caller, device_prefix, &cursor).await?;
                    return Ok(true);
                }
                let reply = self.answer(&text, device_prefix);
                let subscribed = matches!(reply, ServerFrame::Subscribed { .. });
                let text = serde_json::to_string(&reply).expect("serializes");
                socket.send(Message::text(text)).await?;
                if subscribed {
                    for text in recent_frames(&self.recent, caller, device_prefix) {
                        socket.send(Message::text(text.to_string())).await?;
                    }
                }
            }
            Some(Ok(Message::Binary(_))) => {
                self.metrics.ws_bad_frames.inc();
                let text = serde_json::to_string(&ServerFrame::Error {
                    message: "binary frames are not understood; send JSON text".to_owned(),
                })
                .expect("serializes");
                socket.send(Message::text(text)).await?;
            }
            // Pings are answered by tungstenite; pongs and raw frames need nothing.
            Some(Ok(_)) => {}
            Some(Err(WsError::Capacity(error))) => {
                self.metrics.ws_bad_frames.inc();
                let reason = format!("{error}; frames are at most {MAX_CLIENT_FRAME_BYTES} bytes");
                let frame = CloseFrame {
                    code: CloseCode::Size,
                    reason: reason.into(),
                };
                let _ = socket.close(Some(frame)).await;
                return Ok(false);
            }
            Some(Err(error)) => return Err(error),
        }
        Ok(true)
    }

    /// Send the alarm events after `cursor` that `caller` may see, from `iot.alarms`, up
    /// to where the live stream is; returns the position reached (live events before it
    /// are not sent again).
    async fn resume<S>(
        &self,
        socket: &mut tokio_tungstenite::WebSocketStream<S>,
        caller: &Caller,
        device_prefix: &str,
        cursor: &str,
    ) -> Result<Cursor, WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let error = |message: String| {
            Message::text(
                serde_json::to_string(&ServerFrame::Error { message }).expect("serializes"),
            )
        };
        let Some(feed) = &self.alarms else {
            socket
                .send(error("this server does not serve alarms".into()))
                .await?;
            return Ok(Cursor::default());
        };
        let from = match Cursor::parse(cursor) {
            Ok(from) => from,
            Err(message) => {
                socket.send(error(message)).await?;
                return Ok(Cursor::default());
            }
        };
        let until = feed.live.cursor.lock().clone();
        let (records, mut replayed) = tokio::sync::mpsc::channel(256);
        let (kafka, topic) = (feed.kafka.clone(), feed.topic.clone());
        let (from_positions, until_positions) = (from.positions(), until.positions());
        let reading = tokio::spawn(async move {
            crate::kafka::replay(&kafka, &topic, from_positions, until_positions, records).await
        });
        let mut position = from;
        while let Some((partition, offset, payload)) = replayed.recv().await {
            position.advance(partition, offset);
            let Ok(event) = serde_json::from_slice::<fleetwatch_protocol::AlarmEvent>(&payload)
            else {
                continue;
            };
            if caller.sees(event.alarm.tenant.as_ref())
                && event.alarm.device_id.as_str().starts_with(device_prefix)
            {
                socket
                    .send(Message::text(alarm_frame(&event, &position)))
                    .await?;
            }
        }
        match reading.await {
            Ok(Ok(outcome)) if outcome.lost > 0 => {
                let lost = serde_json::json!({ "type": "lost", "missed": outcome.lost });
                socket.send(Message::text(lost.to_string())).await?;
            }
            Ok(Ok(_)) => {}
            Ok(Err(failure)) => {
                socket
                    .send(error(format!("resuming failed: {failure}; retry")))
                    .await?
            }
            Err(failure) => {
                socket
                    .send(error(format!("resuming failed: {failure}; retry")))
                    .await?
            }
        }
        position.merge(&until);
        let resumed = serde_json::json!({ "type": "resumed", "cursor": position.encode() });
        socket.send(Message::text(resumed.to_string())).await?;
        Ok(position)
    }

    /// The reply to a client's frame (a subscription narrows `device_prefix`).
    fn answer<'a>(&self, text: &str, device_prefix: &'a mut String) -> ServerFrame<'a> {
        match serde_json::from_str::<ClientFrame>(text) {
            Ok(ClientFrame::Subscribe {
                device_prefix: prefix,
            }) => {
                *device_prefix = prefix;
                ServerFrame::Subscribed { device_prefix }
            }
            Ok(ClientFrame::Resume { .. }) => ServerFrame::Error {
                message: "resume is handled before answering".into(),
            },
            Err(error) => {
                self.metrics.ws_bad_frames.inc();
                ServerFrame::Error {
                    message: format!(
                        "unusable frame ({error}); send {{\"type\":\"subscribe\",\"device_prefix\":\"...\"}}"
                    ),
                }
            }
        }
    }
}
