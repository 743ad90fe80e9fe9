use serde::{Deserialize, Serialize};

/// The storage role: writes telemetry, scores, alerts, connectivity changes and command
/// outcomes to a time-series store through the InfluxDB v2 write API. Section
/// `[storage]`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Base URL of a server that speaks the InfluxDB v2 write API (`POST
    /// /api/v2/write`): InfluxDB 2 (`http://influxdb:8086`) or VictoriaMetrics
    /// (`http://victoria-metrics:8428`, what the bundled dashboards query).
    pub url: String,
    /// InfluxDB organization (VictoriaMetrics ignores it).
    pub org: String,
    /// InfluxDB bucket (VictoriaMetrics ignores it).
    pub bucket: String,
    /// API token, sent as `Authorization: Token ...`; unset sends none. Never logged
    /// (printed as `***`); `FLEETWATCH_STORAGE__TOKEN` keeps it out of files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<crate::secret::Secret>,
    /// Points per write, at most. The batch is also the role's buffer: once it holds
    /// this many points and the store does not take them, the role stops consuming
    /// (its lag grows) until the store answers again.
    pub batch_points: usize,
    /// A batch that is not full is written after this long (ms).
    pub flush_interval_ms: u64,
    /// A write not answered within this long (ms) counts as failed and is retried.
    pub write_timeout_ms: u64,
    /// Compress writes with gzip.
    pub gzip: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8428".to_owned(),
            org: "fleetwatch".to_owned(),
            bucket: "fleetwatch".to_owned(),
            token: None,
            batch_points: 5_000,
            flush_interval_ms: 1_000,
            write_timeout_ms: 10_000,
            gzip: true,
        }
    }
}

impl StorageConfig {
    /// Refuse settings the role cannot work with (the client would panic on a bad URL).
    pub fn check(&self) -> Result<(), String> {
        let rest = (self.url.strip_prefix("http://"))
            .or_else(|| self.url.strip_prefix("https://"))
            .ok_or_else(|| {
                format!(
                    "storage.url {:?} must start with http:// or https://",
                    self.url
                )
            })?;
        if rest.trim_matches('/').is_empty() {
            return Err(format!("storage.url {:?} names no host", self.url));
        }
        if self.batch_points == 0 || self.flush_interval_ms == 0 || self.write_timeout_ms == 0 {
            return Err(
                "storage.batch_points, storage.flush_interval_ms and storage.write_timeout_ms must be positive"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// Without the token.
impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("url", &self.url)
            .field("org", &self.org)
            .field("bucket", &self.bucket)
            .field("token", &self.token)
            .field("batch_points", &self.batch_points)
            .field("flush_interval_ms", &self.flush_interval_ms)
            .field("write_timeout_ms", &self.write_timeout_ms)
            .field("gzip", &self.gzip)
            .finish()
    }
}
