//! `POST /devices/{id}/credentials` and `DELETE /devices/{id}/credentials`: an operator
//! provisions and revokes a device's MQTT credentials (the guard admits operators only).
//! Any instance can serve them: the broker holds the state (see [`crate::credentials`]).

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{device_id, ApiError, ApiResult, HttpState};
use crate::credentials::{CredentialKind, CredentialsError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvisionBody {
    kind: CredentialKind,
}

fn failed(error: CredentialsError) -> ApiError {
    let status = match error {
        // Off in this deployment: the endpoints are not there (a 5xx would say the
        // server failed).
        CredentialsError::Disabled => StatusCode::NOT_FOUND,
        CredentialsError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        CredentialsError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        CredentialsError::Connection(_) | CredentialsError::Refused(_) => StatusCode::BAD_GATEWAY,
        CredentialsError::Exists => StatusCode::CONFLICT,
        CredentialsError::NotFound => StatusCode::NOT_FOUND,
    };
    ApiError::new(status, error.to_string())
}

/// Provision: an empty body or `{"kind": "password"}` for a generated password (in this
/// answer only), `{"kind": "certificate"}` for a client certificate naming the device.
pub(super) async fn provision(
    state: web::Data<HttpState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> ApiResult {
    let device = device_id(&path)?;
    let kind = if body.iter().all(u8::is_ascii_whitespace) {
        CredentialKind::Password
    } else {
        serde_json::from_slice::<ProvisionBody>(&body)
            .map_err(|e| super::bad_request(format!("body: {e}")))?
            .kind
    };
    let issued = state
        .credentials
        .provision(&device, kind)
        .await
        .map_err(failed)?;
    tracing::info!(device = %device, ?kind, "device credentials provisioned");
    let mut answer = json!({ "device_id": device, "kind": kind, "username": issued.username });
    match &issued.password {
        Some(password) => answer["password"] = json!(password.expose()),
        None => answer["certificate_subject"] = json!(format!("CN={device}")),
    }
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(answer))
}

/// Revoke: the broker disconnects the device and refuses it from then on.
pub(super) async fn revoke(state: web::Data<HttpState>, path: web::Path<String>) -> ApiResult {
    let device = device_id(&path)?;
    state.credentials.revoke(&device).await.map_err(failed)?;
    tracing::info!(device = %device, "device credentials revoked");
    Ok(HttpResponse::NoContent().finish())
}
