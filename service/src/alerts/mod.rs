//! The alerts role: every instance reads all of `iot.alerts` (its own consumer group,
//! starting at the newest alert: it pushes what happens, it does not replay history) and
//! pushes each alert to its WebSocket clients.
//!
//! Frames to clients: `{"type":"alert","alert":{...}}` as alerts happen; on connecting (and
//! on each subscribe) the last [`RECENT_ALERTS`] alerts as `{"type":"recent","alert":{...}}`,
//! so a page opened mid-incident shows what just happened; `{"type":"lagged","missed":N}`,
//! `{"type":"subscribed","device_prefix":"..."}`, `{"type":"error","message":"..."}`.
//! Alarm events: `{"type":"alarm","event":{...},"cursor":"..."}`; after a client's
//! `{"type":"resume","cursor":"..."}`, every event it missed since that cursor (read
//! back from `iot.alarms`), `{"type":"lost","missed":N}` when some are older than the
//! topic's retention, `{"type":"resumed","cursor":"..."}`, then live ones, with no gap
//! and no duplicate.
//! Job events: `{"type":"job","job_id":"...","event":"...",...}` (see [`JobNotice`]) for the
//! jobs the client may see, as they happen.
//! Frames from clients: `{"type":"subscribe","device_prefix":"..."}` narrows the stream to
//! devices whose id starts with the prefix.
//!
//! Clients authenticate at the upgrade (`Authorization: Bearer <token>`, or
//! `?access_token=<token>` for browsers, which cannot set headers on a WebSocket); a
//! tenant's client receives its tenant's alerts only, an operator's every alert. Each
//! tenant has its own broadcast channel, so an alert costs the same whatever the number
//! of other tenants' clients. A connection is closed (1008, "token expired") when its
//! token expires.

mod alarms;
mod config;
mod jobs;
mod role;
mod ws;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use fleetwatch_protocol::{Alert, AlertState, DeviceId, TenantId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use alarms::{
    alarm_frame, AlarmFilter, AlarmIndex, AlarmPage, AlarmsHandler, Cursor, LivePosition,
};
pub use config::AlertsConfig;
pub use jobs::{JobEventsHandler, JobNotice};
pub use role::ROLE;
pub use ws::{serve, AlarmsFeed, Server};

use crate::auth::Caller;
use crate::kafka::{decode_record, HandleError, Record, RecordHandler};
use crate::metrics::Metrics;

/// Alerts kept for clients that connect later.
pub const RECENT_ALERTS: usize = 50;

/// An alert ready to send: its device (for filtering) and its frames, serialized once.
#[derive(Clone, Debug)]
pub struct AlertFrame {
    /// `None` for frames about no one device (job events): every prefix passes them.
    pub device_id: Option<DeviceId>,
    /// Who besides operators receives it.
    pub tenant: Option<TenantId>,
    /// `{"type":"alert",...}`, for clients connected when it happened.
    pub text: Arc<str>,
    /// `{"type":"recent",...}`, for clients that connect later.
    pub recent_text: Arc<str>,
    /// Where an alarm event is on `iot.alarms` (a resumed client skips what it replayed).
    pub position: Option<(i32, i64)>,
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
    /// Send every alarm event after `cursor` (the last one this client saw), then the
    /// live ones.
    Resume { cursor: String },
}

/// Where alerts go: every operator client, and the clients of the alert's tenant.
pub struct Routes {
    /// Alerts buffered per client (`alerts.client_queue`).
    capacity: usize,
    operators: broadcast::Sender<AlertFrame>,
    tenants: Mutex<HashMap<TenantId, broadcast::Sender<AlertFrame>>>,
}

impl Routes {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            operators: broadcast::channel(capacity).0,
            tenants: Mutex::default(),
        }
    }

    /// A new client's stream: what `caller` may see.
    pub fn subscribe(&self, caller: &Caller) -> broadcast::Receiver<AlertFrame> {
        match &caller.tenant {
            None => self.operators.subscribe(),
            Some(tenant) => self
                .tenants
                .lock()
                .entry(tenant.clone())
                .or_insert_with(|| broadcast::channel(self.capacity).0)
                .subscribe(),
        }
    }

    /// Push `frame` to operators and to its tenant's clients. A tenant whose clients have
    /// all gone loses its channel.
    pub fn publish(&self, frame: AlertFrame) {
        if let Some(tenant) = &frame.tenant {
            let mut tenants = self.tenants.lock();
            if let Some(channel) = tenants.get(tenant) {
                if channel.send(frame.clone()).is_err() {
                    tenants.remove(tenant);
                }
            }
        }
        // No receivers (no client connected) is fine: alerts are pushed, not stored here.
        let _ = self.operators.send(frame);
    }
}

pub struct AlertsHandler {
    pub routes: Arc<Routes>,
    pub recent: RecentAlerts,
    pub metrics: Arc<Metrics>,
    pub seen: SeenAlerts,
}

/// Alert transitions pushed lately, so one sent again is not pushed twice: a scorer that
/// crashed scores again from its last committed offset and re-sends the transitions it
/// had sent since (same alert id, state and event). Kafka gives at least once; the
/// customer gets each transition once.
#[derive(Default)]
pub struct SeenAlerts {
    order: VecDeque<(String, AlertState, u64)>,
    set: std::collections::HashSet<(String, AlertState, u64)>,
}

/// Transitions remembered (about 1 MB). A repeat comes within the scorer's restart and
/// replay, seconds to minutes; older ones are forgotten first.
pub const SEEN_ALERTS: usize = 10_000;

impl SeenAlerts {
    /// Whether `alert`'s transition was pushed already; remembers it if not.
    pub fn repeated(&mut self, alert: &Alert) -> bool {
        let key = (alert.alert_id.clone(), alert.state, alert.event_seq);
        if self.set.contains(&key) {
            return true;
        }
        if self.order.len() == SEEN_ALERTS {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        self.order.push_back(key.clone());
        self.set.insert(key);
        false
    }
}

impl RecordHandler for AlertsHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        let Some(alert) = decode_record::<Alert>(record, "alerts", &self.metrics) else {
            return Ok(());
        };
        if self.seen.repeated(&alert) {
            self.metrics
                .skipped
                .with_label_values(&["alerts", "repeated"])
                .inc();
            return Ok(());
        }
        let serialize = |frame| serde_json::to_string(&frame).expect("wire types serialize");
        let frame = AlertFrame {
            text: serialize(ServerFrame::Alert { alert: &alert }).into(),
            recent_text: serialize(ServerFrame::Recent { alert: &alert }).into(),
            device_id: Some(alert.device_id),
            tenant: alert.tenant,
            position: None,
        };
        {
            let mut recent = self.recent.lock();
            if recent.len() == RECENT_ALERTS {
                recent.pop_front();
            }
            recent.push_back(frame.clone());
        }
        self.routes.publish(frame);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
