//! The demo's fleet job: once the fleet is up, a software update of a few of the first
//! tenant's devices, rolled out in growing waves through the REST API as that tenant
//! would, so the live page shows a job's progress and the summary its counts.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Devices the demo job targets: ids starting with this (ten of them in a fleet of ten
/// or more).
const TARGET_PREFIX: &str = "sim-0000";
const VERSION: &str = "2.0.0";

/// How the demo reaches its REST API.
#[derive(Clone)]
pub struct DemoApi {
    base: String,
    /// A bearer token (the first demo tenant's) when auth is on.
    token: Option<String>,
    client: reqwest::Client,
}

/// The job's figures for the summary.
#[derive(Debug, Serialize, PartialEq)]
pub struct JobFigures {
    pub job_id: String,
    pub status: String,
    pub targets: u64,
    /// Executions per state (and `pending`: targets without one yet).
    pub counts: Value,
    pub waves_started: usize,
}

impl DemoApi {
    pub fn new(http: SocketAddr, token: Option<String>) -> Self {
        Self {
            base: format!("http://{http}"),
            token,
            client: reqwest::Client::new(),
        }
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response.json().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    /// After `delay`, create the job (retrying while the jobs role loads); its id, or
    /// `None` if the demo stopped first or the service refused it.
    pub async fn start_job(&self, delay: Duration, stop: CancellationToken) -> Option<String> {
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        let body = json!({
            "command": {
                "kind": "software_update",
                "url": format!("https://updates.example.com/firmware/{VERSION}.bin"),
                "version": VERSION,
                "checksum": "sha256:5f1d0c3ad2a1b9e0f4c8d7e6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6",
            },
            "target": {"prefix": TARGET_PREFIX},
            "rollout": {"waves_percent": [20, 50, 100], "soak_ms": 3_000, "max_per_minute": 600},
            "abort": {"failure_ratio": 0.5, "min_finished": 5,
                      "canary": {"min_updated": 5, "ratio": 3.0, "p_value": 0.01}},
            "device_timeout_ms": 30_000,
            "ttl_ms": 60_000,
        });
        for _ in 0..20 {
            let request = self.client.post(format!("{}/jobs", self.base)).json(&body);
            match self.call(request).await {
                Ok((201, job)) => {
                    let id = job["job_id"].as_str().unwrap_or_default().to_owned();
                    println!(
                        "  job            {id}: software update to {VERSION} of {} devices ({TARGET_PREFIX}x), waves of 20%, 50%, 100%",
                        job["targets"]
                    );
                    return Some(id);
                }
                Ok((503, _)) => {}
                Ok((status, answer)) => {
                    tracing::warn!(status, %answer, "the demo job was refused");
                    return None;
                }
                Err(error) => tracing::debug!(%error, "creating the demo job; retrying"),
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        None
    }

    /// The job's figures now.
    pub async fn figures(&self, job_id: &str) -> Option<JobFigures> {
        let request = self.client.get(format!("{}/jobs/{job_id}", self.base));
        let (status, job) = self.call(request).await.ok()?;
        (status == 200).then(|| JobFigures {
            job_id: job_id.to_owned(),
            status: job["status"].as_str().unwrap_or_default().to_owned(),
            targets: job["targets"].as_u64().unwrap_or_default(),
            counts: job["counts"].clone(),
            waves_started: job["waves"].as_array().map_or(0, Vec::len),
        })
    }
}
