//! The claims fleetwatch reads from a token, and minting for development and tests.

use fleetwatch_protocol::TenantId;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use super::{AuthFailure, Caller};

/// Whose token it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees and commands every tenant's devices; assigns tenants, decommissions.
    Operator,
    /// A tenant's user: sees that tenant's devices only.
    User,
}

/// A token's claims. Standard ones (`iss`, `aud`, `exp`, `nbf`) are checked by the
/// validation; these are what fleetwatch adds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not valid before (s since the epoch), when the issuer sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// `operator` or `user` (the default).
    #[serde(default = "user")]
    pub role: Role,
    /// A user's tenant; operators have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Space-separated `read` and `command` (OAuth style); absent means both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

fn user() -> Role {
    Role::User
}

impl Claims {
    pub(super) fn into_caller(self) -> Result<Caller, AuthFailure> {
        let tenant = match (self.role, self.tenant) {
            (Role::Operator, None) => None,
            (Role::Operator, Some(_)) => {
                return Err(AuthFailure::BadClaims(
                    "an operator token names no tenant".into(),
                ))
            }
            (Role::User, None) => {
                return Err(AuthFailure::BadClaims(
                    "a user token must name its `tenant`".into(),
                ))
            }
            (Role::User, Some(tenant)) => {
                Some(TenantId::parse(&tenant).map_err(|e| AuthFailure::BadClaims(e.to_string()))?)
            }
        };
        let (can_read, can_command) = match &self.scope {
            None => (true, true),
            Some(scope) => {
                let mut granted = (false, false);
                for word in scope.split_whitespace() {
                    match word {
                        "read" => granted.0 = true,
                        "command" => granted.1 = true,
                        _ => {}
                    }
                }
                granted
            }
        };
        Ok(Caller {
            subject: self.sub,
            tenant,
            can_read,
            can_command,
            expires_at: Some(self.exp),
        })
    }
}

/// Claims for a token of `tenant` (an operator's for `None`), valid for the configured
/// `minted_ttl_secs`, with the configured issuer and audience.
pub fn claims_for(config: &super::AuthConfig, subject: &str, tenant: Option<&str>) -> Claims {
    let now = fleetwatch_protocol::now_ms() / 1000;
    Claims {
        sub: subject.to_owned(),
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
        exp: now + config.minted_ttl_secs as i64,
        iat: Some(now),
        nbf: None,
        role: if tenant.is_some() {
            Role::User
        } else {
            Role::Operator
        },
        tenant: tenant.map(str::to_owned),
        scope: None,
    }
}

/// Sign `claims` with the HS256 `secret` (`fleetwatch token`, the demo, tests).
pub fn mint(claims: &Claims, secret: &str) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}
