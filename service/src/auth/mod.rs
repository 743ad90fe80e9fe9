//! Who is calling: bearer tokens (JWTs) checked once, at the edge. The HTTP layer
//! (`http::guard`) and the alerts WebSocket upgrade both turn a request into a [`Caller`]
//! here; handlers never look at tokens. docs/architecture.md has the trust model.

mod config;
mod token;

pub use config::{AuthConfig, AuthMode, Secret};
pub use token::{claims_for, mint, Claims, Role};

use std::collections::HashMap;

use fleetwatch_protocol::{DeviceId, TenantId};
use jsonwebtoken::{errors::ErrorKind, jwk::JwkSet, Algorithm, DecodingKey, Validation};

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// What a caller may do besides reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Read twins, commands, models; receive alerts.
    Read,
    /// Send commands and write desired state.
    Command,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Command => "command",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Caller {
    /// The token's `sub` (`anonymous` without authentication).
    pub subject: String,
    /// `None`: an operator, who sees every tenant. `Some`: a tenant's user.
    pub tenant: Option<TenantId>,
    pub can_read: bool,
    pub can_command: bool,
    /// When the token expires (s since the epoch); `None` without authentication.
    pub expires_at: Option<i64>,
}

impl Caller {
    /// Everyone, when authentication is off.
    pub fn anonymous_operator() -> Self {
        Self {
            subject: "anonymous".to_owned(),
            tenant: None,
            can_read: true,
            can_command: true,
            expires_at: None,
        }
    }

    pub fn is_operator(&self) -> bool {
        self.tenant.is_none()
    }

    pub fn has(&self, scope: Scope) -> bool {
        match scope {
            Scope::Read => self.can_read,
            Scope::Command => self.can_command,
        }
    }

    /// Whether this caller may see a device of `tenant` (`None`: a device of no tenant).
    pub fn sees(&self, tenant: Option<&TenantId>) -> bool {
        match &self.tenant {
            None => true,
            Some(mine) => tenant == Some(mine),
        }
    }
}

/// Why credentials were refused: the 401's `error` text and the metric's `reason` label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("no bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token is from another issuer")]
    WrongIssuer,
    #[error("the token's algorithm is not accepted here")]
    WrongAlgorithm,
    #[error("the token's key id is unknown")]
    UnknownKey,
    #[error("the token's claims are unusable: {0}")]
    BadClaims(String),
}

impl AuthFailure {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::WrongAudience => "wrong_audience",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAlgorithm => "wrong_algorithm",
            Self::UnknownKey => "unknown_key",
            Self::BadClaims(_) => "bad_claims",
        }
    }

    fn from_jwt(error: jsonwebtoken::errors::Error) -> Self {
        match error.kind() {
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidSignature => Self::BadSignature,
            ErrorKind::InvalidAudience => Self::WrongAudience,
            ErrorKind::InvalidIssuer => Self::WrongIssuer,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Self::WrongAlgorithm,
            ErrorKind::MissingRequiredClaim(claim) => {
                Self::BadClaims(format!("`{claim}` is missing"))
            }
            ErrorKind::Json(error) => Self::BadClaims(error.to_string()),
            _ => Self::Malformed(error.to_string()),
        }
    }
}

/// The keys tokens may be signed with.
enum Keys {
    /// HS256 with the configured secret.
    Shared(DecodingKey),
    /// RS256/ES256 public keys by `kid`, from a JWKS file.
    Published(HashMap<String, (Algorithm, DecodingKey)>),
}

/// Checks bearer tokens. Built once from the configuration; cheap to share.
pub struct Authenticator {
    /// `None`: authentication is off and every caller is an operator.
    keys: Option<Keys>,
    validation: Validation,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Result<Self> {
        let mode = config.mode.ok_or_else(|| {
            Error::Config(
                "auth.mode must be chosen: \"jwt\" (with auth.hs256_secret, auth.hs256_secret_file or auth.jwks_file) or \"none\" (every caller is an operator)".into(),
            )
        })?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = config.leeway_secs;
        validation.validate_nbf = true;
        let keys = match mode {
            AuthMode::None => None,
            AuthMode::Jwt => Some(load_keys(config)?),
        };
        Ok(Self { keys, validation })
    }

    pub fn enabled(&self) -> bool {
        self.keys.is_some()
    }

    /// The caller behind `token` (`None`: no token was sent).
    pub fn verify(&self, token: Option<&str>) -> std::result::Result<Caller, AuthFailure> {
        let Some(keys) = &self.keys else {
            return Ok(Caller::anonymous_operator());
        };
        let token = token.ok_or(AuthFailure::Missing)?;
        let header = jsonwebtoken::decode_header(token).map_err(|error| match error.kind() {
            // `alg: none` and other algorithms jsonwebtoken does not know.
            ErrorKind::Json(json) if json.to_string().contains("unknown variant") => {
                AuthFailure::WrongAlgorithm
            }
            ErrorKind::Json(_) => AuthFailure::Malformed(error.to_string()),
            _ => AuthFailure::from_jwt(error),
        })?;
        let (algorithm, key) = match keys {
            Keys::Shared(key) => (Algorithm::HS256, key),
            Keys::Published(keys) => {
                let kid = header.kid.as_deref().ok_or(AuthFailure::UnknownKey)?;
                let (algorithm, key) = keys.get(kid).ok_or(AuthFailure::UnknownKey)?;
                (*algorithm, key)
            }
        };
        if header.alg != algorithm {
            return Err(AuthFailure::WrongAlgorithm);
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![algorithm];
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(AuthFailure::from_jwt)?;
        data.claims.into_caller()
    }

    /// Verify and count a refusal by its reason.
    pub fn check(
        &self,
        token: Option<&str>,
        metrics: &Metrics,
    ) -> std::result::Result<Caller, AuthFailure> {
        self.verify(token).inspect_err(|failure| {
            metrics
                .auth_failures
                .with_label_values(&[failure.reason()])
                .inc()
        })
    }
}

fn load_keys(config: &AuthConfig) -> Result<Keys> {
    let secret = config.hs256_secret()?;
    match (secret, &config.jwks_file) {
        (Some(secret), None) if secret.expose().len() >= 32 => Ok(Keys::Shared(
            DecodingKey::from_secret(secret.expose().as_bytes()),
        )),
        (Some(_), None) => Err(Error::Config(
            "auth: the HS256 secret must be at least 32 bytes".into(),
        )),
        (None, Some(path)) => load_jwks(path).map(Keys::Published),
        (Some(_), Some(_)) => Err(Error::Config(
            "auth: choose an HS256 secret or a JWKS file, not both".into(),
        )),
        (None, None) => Err(Error::Config(
            "auth.mode = \"jwt\" needs auth.hs256_secret, auth.hs256_secret_file or auth.jwks_file"
                .into(),
        )),
    }
}

fn load_jwks(path: &std::path::Path) -> Result<HashMap<String, (Algorithm, DecodingKey)>> {
    let bad = |what: String| Error::Config(format!("auth.jwks_file {}: {what}", path.display()));
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| bad("a key has no `kid`".into()))?;
        let algorithm = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            _ => return Err(bad(format!("key {kid} is neither RSA nor EC"))),
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("key {kid}: {e}")))?;
        keys.insert(kid, (algorithm, key));
    }
    if keys.is_empty() {
        return Err(bad("no keys".into()));
    }
    Ok(keys)
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// The `access_token` of a URL query (browsers cannot set headers on a WebSocket).
pub fn query_token(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == "access_token" && !value.is_empty()).then(|| value.to_owned())
    })
}

/// Not found, in the words a missing device gets, so a tenant cannot tell another
/// tenant's device from none.
pub fn no_such_device(device_id: &DeviceId) -> String {
    format!("no device {device_id} is known")
}

#[cfg(test)]
mod tests;
