//! Signing and sending one delivery over HTTP.

use std::time::{Duration, Instant};

use ring::hmac;

use super::outbox::Pending;

/// Header carrying `sha256=<lower-case hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Fleetwatch-Signature";
/// Header carrying the alarm event's id, the same on every attempt.
pub const EVENT_ID_HEADER: &str = "X-Fleetwatch-Event-Id";
/// Header carrying the attempt's number (1 for the first); not signed.
pub const ATTEMPT_HEADER: &str = "X-Fleetwatch-Attempt";

/// A webhook's signing key. Holds the secret: no `Debug`.
pub struct SigningKey(hmac::Key);

impl SigningKey {
    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// `sha256=<hex>` over `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        let tag = hmac::sign(&self.0, body);
        let mut text = String::with_capacity(7 + 64);
        text.push_str("sha256=");
        for byte in tag.as_ref() {
            text.push_str(&format!("{byte:02x}"));
        }
        text
    }
}

/// Why an attempt failed: the status when the receiver answered, and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub status: Option<u16>,
    pub reason: String,
}

/// POSTs deliveries; one HTTP client (connection pool) for every webhook.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
}

impl Sender {
    pub fn new(timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("fleetwatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("building the webhook HTTP client: {e}"))?;
        Ok(Self { client })
    }

    /// One attempt at `pending` to `url`: the status on 2xx, else why not; and how long
    /// it took.
    pub async fn post(&self, url: &str, pending: &Pending) -> (Result<u16, Failure>, Duration) {
        let started = Instant::now();
        let answer = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, &*pending.signature)
            .header(EVENT_ID_HEADER, &pending.event_id)
            .header(ATTEMPT_HEADER, (pending.attempts + 1).to_string())
            .body(pending.body.to_vec())
            .send()
            .await;
        let outcome = match answer {
            Ok(response) if response.status().is_success() => Ok(response.status().as_u16()),
            Ok(response) => Err(Failure {
                status: Some(response.status().as_u16()),
                reason: format!("the receiver answered {}", response.status()),
            }),
            Err(error) if error.is_timeout() => Err(Failure {
                status: None,
                reason: "no answer within webhooks.request_timeout_ms".into(),
            }),
            // Without the URL: the configuration may have put more in it than it should.
            Err(error) => Err(Failure {
                status: None,
                reason: format!("no answer: {}", error.without_url()),
            }),
        };
        (outcome, started.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_rfc_4231_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        let key = SigningKey::new(b"Jefe");
        assert_eq!(
            key.sign(b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
