//! The alerts role: every instance reads all of `iot.alerts` (its own consumer group,
//! starting at the newest alert: it pushes what happens, it does not replay history) and
//! pushes each alert to its WebSocket clients.
//!
//! Frames to clients: `{"type":"alert","alert":{...}}` as alerts happen; on connecting (and
//! on each subscribe) the last [`RECENT_ALERTS`] alerts as `{"type":"recent","alert":{...}}`,
//! so a page opened mid-incident shows what just happened; `{"type":"lagged","missed":N}`,
//! `{"type":"subscribed","device_prefix":"..."}`, `{"type":"error","message":"..."}`.
//! Frames from clients: `{"type":"subscribe","device_prefix":"..."}` narrows the stream to
//! devices whose id starts with the prefix.

mod config;
mod role;
mod ws;

use std::collections::VecDeque;
use std::sync::Arc;

use fleetwatch_protocol::{Alert, DeviceId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use config::AlertsConfig;
pub use role::ROLE;
pub use ws::serve;

use crate::kafka::{decode_record, HandleError, Record, RecordHandler};
use crate::metrics::Metrics;

/// Alerts kept for clients that connect later.
pub const RECENT_ALERTS: usize = 50;

/// An alert ready to send: its device (for filtering) and its frames, serialized once.
#[derive(Clone, Debug)]
pub struct AlertFrame {
    pub device_id: DeviceId,
    /// `{"type":"alert",...}`, for clients connected when it happened.
    pub text: Arc<str>,
    /// `{"type":"recent",...}`, for clients that connect later.
    pub recent_text: Arc<str>,
}

/// The last [`RECENT_ALERTS`] alerts, oldest first.
pub type RecentAlerts = Arc<Mutex<VecDeque<AlertFrame>>>;

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Alert { alert: &'a Alert },
    Recent { alert: &'a Alert },
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
    pub recent: RecentAlerts,
    pub metrics: Arc<Metrics>,
}

impl RecordHandler for AlertsHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        let Some(alert) = decode_record::<Alert>(record, "alerts", &self.metrics) else {
            return Ok(());
        };
        let serialize = |frame| serde_json::to_string(&frame).expect("wire types serialize");
        let frame = AlertFrame {
            text: serialize(ServerFrame::Alert { alert: &alert }).into(),
            recent_text: serialize(ServerFrame::Recent { alert: &alert }).into(),
            device_id: alert.device_id,
        };
        {
            let mut recent = self.recent.lock();
            if recent.len() == RECENT_ALERTS {
                recent.pop_front();
            }
            recent.push_back(frame.clone());
        }
        // No receivers (no client connected) is fine: alerts are pushed, not stored here.
        let _ = self.frames.send(frame);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
