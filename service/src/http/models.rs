//! `/models`: the model registry (docs/shadow.md), operators only (`guard.rs`): create a
//! candidate from a model configuration, start and stop its shadow, list with state,
//! promote (fleet-wide or per tenant), roll back. Every change is journaled on
//! `iot.models` with who made it.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use fleetwatch_protocol::ShadowScope;

use super::{bad_request, caller_of, role_api, ApiError, ApiResult, HttpState};
use crate::auth::Caller;
use crate::shadow::api::{NewCandidate, Scope};
use crate::shadow::{ModelsApi, ModelsError, RegistryError};

fn api(state: &HttpState) -> Result<&ModelsApi, ApiError> {
    role_api(
        state.started()?.models.as_deref(),
        |api| api.registry.loading.is_loaded(),
        "neither the trainer nor the scorer role (which read the model registry) runs in this process",
        "the model registry is still being read; retry shortly",
    )
}

fn by(caller: Option<web::ReqData<Caller>>) -> String {
    caller_of(caller).subject
}

fn failed(error: ModelsError) -> ApiError {
    let status = match &error {
        ModelsError::Refused(RegistryError::BadRequest(_)) => StatusCode::BAD_REQUEST,
        ModelsError::Refused(RegistryError::NotFound(_)) => StatusCode::NOT_FOUND,
        ModelsError::Refused(RegistryError::Conflict(_)) => StatusCode::CONFLICT,
        ModelsError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, error.to_string())
}

fn body<T>(body: Result<web::Json<T>, actix_web::Error>) -> Result<T, ApiError> {
    Ok(body
        .map_err(|e| bad_request(format!("bad body: {e}")))?
        .into_inner())
}

/// An optional JSON body: none is the default (the fleet, every device); a body that
/// does not read is refused (never taken as the fleet).
fn optional<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| bad_request(format!("bad body: {e}")))
}

/// `/models`, `/models/{id}`, `/models/{id}/shadow`, `/models/{id}/promote`,
/// `/models/rollback`.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/models")
                .route(web::get().to(list))
                .route(web::post().to(create)),
        )
        .service(web::resource("/models/rollback").route(web::post().to(rollback)))
        .service(web::resource("/models/{id}").route(web::get().to(get)))
        .service(
            web::resource("/models/{id}/shadow")
                .route(web::put().to(start_shadow))
                .route(web::delete().to(stop_shadow)),
        )
        .service(web::resource("/models/{id}/promote").route(web::post().to(promote)));
}

/// Every candidate with its state, the promotions and the recent journal.
pub async fn list(state: web::Data<HttpState>) -> ApiResult {
    Ok(HttpResponse::Ok().json(api(&state)?.list()))
}

pub async fn get(state: web::Data<HttpState>, path: web::Path<String>) -> ApiResult {
    let model = api(&state)?.get(&path).map_err(failed)?;
    Ok(HttpResponse::Ok().json(model))
}

/// Create a candidate from a model configuration.
pub async fn create(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    new: Result<web::Json<NewCandidate>, actix_web::Error>,
) -> ApiResult {
    let new = body(new)?;
    let model = api(&state)?
        .create(&by(caller), new)
        .await
        .map_err(failed)?;
    let id = model["model_id"].as_str().unwrap_or_default();
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/models/{id}")))
        .json(model))
}

/// Start (or re-scope) a candidate's shadow: the fleet, a tenant, a sample.
pub async fn start_shadow(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    path: web::Path<String>,
    scope: web::Bytes,
) -> ApiResult {
    let model = api(&state)?
        .start_shadow(&by(caller), &path, optional::<ShadowScope>(&scope)?)
        .await
        .map_err(failed)?;
    Ok(HttpResponse::Ok().json(model))
}

pub async fn stop_shadow(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    path: web::Path<String>,
) -> ApiResult {
    let model = api(&state)?
        .stop_shadow(&by(caller), &path)
        .await
        .map_err(failed)?;
    Ok(HttpResponse::Ok().json(model))
}

/// Make a model the one whose alerts reach customers, fleet-wide or for one tenant.
pub async fn promote(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    path: web::Path<String>,
    scope: web::Bytes,
) -> ApiResult {
    let registry = api(&state)?
        .promote(&by(caller), &path, optional::<Scope>(&scope)?)
        .await
        .map_err(failed)?;
    Ok(HttpResponse::Ok().json(registry))
}

/// Restore the model promoted before the current one, fleet-wide or for one tenant.
pub async fn rollback(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    scope: web::Bytes,
) -> ApiResult {
    let registry = api(&state)?
        .rollback(&by(caller), optional::<Scope>(&scope)?)
        .await
        .map_err(failed)?;
    Ok(HttpResponse::Ok().json(registry))
}
