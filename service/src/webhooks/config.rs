use std::path::PathBuf;

use fleetwatch_protocol::TenantId;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Shortest webhook signing key accepted (bytes): HMAC-SHA256 keys shorter than this are
/// guessable offline from one signed body.
pub const MIN_SECRET_BYTES: usize = 16;

/// The webhooks role: delivers each alarm event to the webhooks of the alarm's tenant.
/// Section `[webhooks]`; endpoints as `[[webhooks.endpoints]]`, or through the
/// environment as a TOML array:
/// `FLEETWATCH_WEBHOOKS__ENDPOINTS='[{name = "pager", tenant = "acme", url = "https://…", secret = "…"}]'`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Where each tenant's alarm events go. Configuration rather than a REST resource:
    /// the signing keys stay with the other secrets (files, environment, `***` when
    /// printed) instead of in plain text on a Kafka topic every instance reads.
    pub endpoints: Vec<WebhookEndpoint>,
    /// Deliveries waiting (all webhooks together), at most. When full, the role takes no
    /// more alarm events (its consumer lag grows, counted in
    /// `fleetwatch_webhook_outbox_full_total`) until a delivery succeeds or is given up:
    /// nothing is dropped.
    pub outbox_capacity: usize,
    /// Attempts per delivery, the first included; then it is given up (and recorded so).
    pub max_attempts: u32,
    /// Wait after the first failed attempt (ms); doubled after each further one …
    pub backoff_start_ms: u64,
    /// … up to this (ms).
    pub backoff_max_ms: u64,
    /// A receiver that has not answered within this long (ms) failed the attempt.
    pub request_timeout_ms: u64,
    /// Alarm events older than this (ms) when read are not delivered (counted, and
    /// recorded as given up): a role started on a topic with a month of history, or
    /// back after a long outage, does not page anyone about the past.
    pub max_event_age_ms: u64,
}

/// One webhook of one tenant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    /// Unique among the endpoints; names the webhook in delivery status and metrics.
    pub name: String,
    /// Whose alarm events it receives: this tenant's only.
    pub tenant: TenantId,
    /// `http://` or `https://` URL the events are POSTed to. Put no credentials in it
    /// (it is shown in logs and `fleetwatch config`): the signature authenticates.
    pub url: String,
    /// Key of the `X-Fleetwatch-Signature` HMAC-SHA256 (at least 16 bytes). Never logged;
    /// printed as `***`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// The key read from a file instead (not both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            outbox_capacity: 10_000,
            max_attempts: 12,
            backoff_start_ms: 1_000,
            backoff_max_ms: 300_000,
            request_timeout_ms: 10_000,
            max_event_age_ms: 3_600_000,
        }
    }
}

impl WebhooksConfig {
    /// Read the `secret_file`s into `secret`.
    pub fn read_secret_files(&mut self) -> crate::error::Result<()> {
        for endpoint in &mut self.endpoints {
            let name = format!("webhooks.endpoints[{}].secret", endpoint.name);
            endpoint.secret = Secret::either(
                endpoint.secret.as_ref(),
                endpoint.secret_file.as_deref(),
                &name,
            )?;
        }
        Ok(())
    }

    /// Refuse settings the role cannot work with; errors never quote a secret.
    pub fn check(&self) -> Result<(), String> {
        if self.outbox_capacity == 0
            || self.max_attempts == 0
            || self.backoff_start_ms == 0
            || self.request_timeout_ms == 0
        {
            return Err("webhooks.outbox_capacity, webhooks.max_attempts, webhooks.backoff_start_ms and webhooks.request_timeout_ms must be positive".into());
        }
        if self.backoff_max_ms < self.backoff_start_ms {
            return Err(
                "webhooks.backoff_max_ms must be at least webhooks.backoff_start_ms".into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        for endpoint in &self.endpoints {
            let name = &endpoint.name;
            if name.is_empty() || !names.insert(name.as_str()) {
                return Err(format!(
                    "webhook endpoint names must be unique and not empty ({name:?})"
                ));
            }
            if !(endpoint.url.starts_with("http://") || endpoint.url.starts_with("https://")) {
                return Err(format!(
                    "webhooks.endpoints[{name}].url must start with http:// or https://"
                ));
            }
            match &endpoint.secret {
                Some(secret) if secret.expose().len() >= MIN_SECRET_BYTES => {}
                Some(_) => {
                    return Err(format!(
                    "webhooks.endpoints[{name}].secret must be at least {MIN_SECRET_BYTES} bytes"
                ))
                }
                None => {
                    return Err(format!(
                        "webhooks.endpoints[{name}] needs a secret (or secret_file)"
                    ))
                }
            }
        }
        Ok(())
    }
}
