//! The alerts role: every instance reads all of `iot.alerts` (its own consumer group,
//! starting at the newest alert: it pushes what happens, it does not replay history) and
//! pushes each alert to its WebSocket clients.
//!
//! Frames to clients: `{"type":"alert","alert":{...}}`, `{"type":"lagged","missed":N}`,
//! `{"type":"subscribed","device_prefix":"..."}`, `{"type":"error","message":"..."}`.
//! Frames from clients: `{"type":"subscribe","device_prefix":"..."}` narrows the stream to
//! devices whose id starts with the prefix.

mod config;
mod ws;

use std::sync::Arc;

use fleetwatch_protocol::{Alert, DeviceId};
use rdkafka::message::BorrowedMessage;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use config::AlertsConfig;
pub use ws::serve;

use crate::kafka::{decode_record, HandleError, RecordHandler};
use crate::metrics::Metrics;

/// An alert ready to send: its device (for filtering) and its frame, serialized once.
#[derive(Clone, Debug)]
pub struct AlertFrame {
    pub device_id: DeviceId,
    pub text: Arc<str>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Alert { alert: &'a Alert },
    Lagged { missed: u64 },
    Subscribed { device_prefix: &'a str },
    Error { message: String },
}

#[derive(Deserialize, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Subscribe {
        #[serde(default)]
        device_prefix: String,
    },
}

pub struct AlertsHandler {
    pub frames: broadcast::Sender<AlertFrame>,
    pub metrics: Arc<Metrics>,
}

impl RecordHandler for AlertsHandler {
    async fn handle(&mut self, record: &BorrowedMessage<'_>) -> Result<(), HandleError> {
        let Some(alert) = decode_record::<Alert>(record, "alerts", &self.metrics) else {
            return Ok(());
        };
        let text = serde_json::to_string(&ServerFrame::Alert { alert: &alert })
            .expect("wire types serialize");
        // No receivers (no client connected) is fine: alerts are pushed, not stored here.
        let _ = self.frames.send(AlertFrame {
            device_id: alert.device_id,
            text: text.into(),
        });
        Ok(())
    }
}
