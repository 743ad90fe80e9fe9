use serde::{Deserialize, Serialize};

/// The alerts role: WebSocket push of `iot.alerts`. Section `[alerts]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Address of the WebSocket server.
    pub bind: String,
    /// When the port is taken, listen on a free one instead of failing (the demo does).
    pub fallback_to_free_port: bool,
    /// Most WebSocket clients at once; further connections are refused.
    pub max_clients: usize,
    /// Alerts buffered per client. A client that falls further behind misses the oldest
    /// ones and is told how many with a `lagged` frame; the count is a metric.
    pub client_queue: usize,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            bind: "0.0.0.0:8081".to_owned(),
            fallback_to_free_port: false,
            max_clients: 10_000,
            client_queue: 1024,
        }
    }
}
