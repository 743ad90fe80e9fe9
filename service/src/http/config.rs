use serde::{Deserialize, Serialize};

/// The HTTP server: REST API, `/metrics`, health (`/readyz`, `/livez`) and the live page. Section `[http]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on.
    pub bind: String,
    /// When the port is taken, listen on a free one instead of failing (the demo does).
    pub fallback_to_free_port: bool,
    /// Most devices one `GET /devices` returns.
    pub max_page_size: usize,
    /// How long a device request waits for the owning instance's answer (ms). On
    /// timeout the client gets 504; a command may still have been accepted, which an
    /// idempotency key makes safe to retry.
    pub request_timeout_ms: u64,
    /// Device requests that may wait for an answer at once; more get 503.
    pub max_pending_requests: usize,
    /// Default time to live of a command whose request names none (ms).
    pub default_command_ttl_ms: u64,
    /// Longest time to live a command may ask for (ms).
    pub max_command_ttl_ms: u64,
    /// `/livez` fails when the async runtime has not run its once-a-second heartbeat for
    /// this long (s): the process is wedged and a restart is the cure. Broker outages
    /// never fail liveness.
    pub wedged_after_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: "0.0.0.0:8080".to_owned(),
            fallback_to_free_port: false,
            max_page_size: 1000,
            request_timeout_ms: 10_000,
            max_pending_requests: 1024,
            default_command_ttl_ms: 60 * 60 * 1000,
            max_command_ttl_ms: 7 * 24 * 60 * 60 * 1000,
            wedged_after_secs: 30,
        }
    }
}
