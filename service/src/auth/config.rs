use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::secret::Secret;

/// Who may call the REST API and the alerts WebSocket. Section `[auth]`.
///
/// `fleetwatch run` refuses to start until `mode` is chosen: running without
/// authentication is a decision, not a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `"jwt"`: every call but the open paths carries a bearer token (a JWT) that names
    /// its tenant or says it is an operator's. `"none"`: every caller is an operator (for
    /// the demo and local runs; the service warns when it listens beyond loopback so).
    pub mode: Option<AuthMode>,
    /// Shared secret for HS256 tokens (also what `fleetwatch token` signs with). Never
    /// logged; prefer `hs256_secret_file` or the environment
    /// (`FLEETWATCH_AUTH__HS256_SECRET`) to a config file.
    pub hs256_secret: Option<Secret>,
    /// A file holding the HS256 secret (trailing newline ignored).
    pub hs256_secret_file: Option<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`) with the identity provider's public keys, for
    /// RS256 and ES256 tokens; a token's `kid` picks the key.
    pub jwks_file: Option<PathBuf>,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf` (s).
    pub leeway_secs: u64,
    /// Paths served without a token: probes, scrapers, the API description and the live
    /// page (which then asks for a token).
    pub open_paths: Vec<String>,
    /// Lifetime of tokens minted by `fleetwatch token` (s).
    pub minted_ttl_secs: u64,
}

impl AuthConfig {
    /// The HS256 secret, from `hs256_secret` or `hs256_secret_file` (not both); the one
    /// place both the token check and `fleetwatch token` read it.
    pub fn hs256_secret(&self) -> crate::error::Result<Option<Secret>> {
        Secret::either(
            self.hs256_secret.as_ref(),
            self.hs256_secret_file.as_deref(),
            "auth.hs256_secret",
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    None,
    Jwt,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: None,
            hs256_secret: None,
            hs256_secret_file: None,
            jwks_file: None,
            issuer: "fleetwatch".to_owned(),
            audience: "fleetwatch".to_owned(),
            leeway_secs: 30,
            open_paths: ["/", "/openapi.json", "/metrics", "/readyz", "/livez"]
                .map(str::to_owned)
                .to_vec(),
            minted_ttl_secs: 3600,
        }
    }
}
