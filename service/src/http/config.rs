use serde::{Deserialize, Serialize};

/// The HTTP server: REST API, `/metrics`, `/healthz` and the live page. Section `[http]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on.
    pub bind: String,
    /// When the port is taken, listen on a free one instead of failing (the demo does).
    pub fallback_to_free_port: bool,
    /// Most devices one `GET /devices` returns.
    pub max_page_size: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: "0.0.0.0:8080".to_owned(),
            fallback_to_free_port: false,
            max_page_size: 1000,
        }
    }
}
