//! `/alarms`: list and read alarms (from the alerts role's index of `iot.alarms`), and
//! acknowledge or clear one (through the device's twin owner, the alarms' one writer).

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use fleetwatch_protocol::{Alarm, AlarmAction, DeviceRequestBody, Severity, Verdict};
use serde::Deserialize;

use super::{ask, bad_request, caller_of, relay, ApiError, ApiResult, HttpState};
use crate::alerts::{AlarmFilter, AlarmIndex};
use crate::auth::Caller;

fn index(state: &HttpState) -> Result<&AlarmIndex, ApiError> {
    state.started()?.alarms.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the alerts role (which keeps the alarms) does not run in this process",
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmQuery {
    /// `active` or `cleared`.
    state: Option<String>,
    severity: Option<Severity>,
    device_prefix: Option<String>,
    /// Created at or after this (ms since the epoch) …
    from_ms: Option<i64>,
    /// … and before this.
    to_ms: Option<i64>,
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<String>,
}

/// The caller's alarms, newest first, a page at a time.
pub async fn list(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    query: Result<web::Query<AlarmQuery>, actix_web::Error>,
) -> ApiResult {
    let query = query
        .map_err(|e| bad_request(format!("bad query: {e}; use ?state=active|cleared&severity=&device_prefix=&from_ms=&to_ms=&limit=&after=")))?
        .into_inner();
    let active = match query.state.as_deref() {
        None => None,
        Some("active") => Some(true),
        Some("cleared") => Some(false),
        Some(other) => {
            return Err(bad_request(format!(
                "state {other:?}: use active or cleared"
            )))
        }
    };
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > state.max_page_size {
        return Err(bad_request(format!(
            "limit must be between 1 and {}",
            state.max_page_size
        )));
    }
    let filter = AlarmFilter {
        active,
        severity: query.severity,
        device_prefix: query.device_prefix.unwrap_or_default(),
        from_ms: query.from_ms,
        to_ms: query.to_ms,
    };
    let page = index(&state)?
        .page(&filter, &caller_of(caller), query.after.as_deref(), limit)
        .map_err(bad_request)?;
    Ok(HttpResponse::Ok().json(page))
}

/// One alarm with its history. (The guard has checked the device's tenant.)
pub async fn get(state: web::Data<HttpState>, path: web::Path<String>) -> ApiResult {
    let alarm_id = path.into_inner();
    match index(&state)?.get(&alarm_id) {
        Some(alarm) => Ok(HttpResponse::Ok().json(alarm)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no alarm {alarm_id} is known"),
        )),
    }
}

/// The webhook deliveries of one alarm: per event and webhook, the latest outcome.
/// (The guard has checked the device's tenant.)
pub async fn deliveries(state: web::Data<HttpState>, path: web::Path<String>) -> ApiResult {
    let alarm_id = path.into_inner();
    if index(&state)?.get(&alarm_id).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no alarm {alarm_id} is known"),
        ));
    }
    let log = state.started()?.deliveries.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the alerts role (which keeps the deliveries) does not run in this process",
        )
    })?;
    let deliveries = log.of(&alarm_id);
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({ "alarm_id": alarm_id, "deliveries": deliveries })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// `true_positive` or `false_positive`: teaches the device's model.
    verdict: Option<Verdict>,
}

/// Acknowledge an alarm, optionally with a verdict: an empty body, or
/// `{"verdict": ...}`. A body that is neither is refused (400), not ignored: a verdict
/// the caller meant to give must not be dropped silently.
pub async fn acknowledge(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    path: web::Path<String>,
    body: web::Bytes,
) -> ApiResult {
    let verdict = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<AckBody>(&body)
            .map_err(|e| {
                bad_request(format!(
                    "body: {e}; expected nothing or {{\"verdict\": \"true_positive\" | \"false_positive\"}}"
                ))
            })?
            .verdict
    };
    act(&state, caller, &path, AlarmAction::Acknowledge { verdict }).await
}

/// Clear an alarm by hand.
pub async fn clear(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    path: web::Path<String>,
) -> ApiResult {
    act(&state, caller, &path, AlarmAction::Clear).await
}

async fn act(
    state: &HttpState,
    caller: Option<web::ReqData<Caller>>,
    alarm_id: &str,
    action: AlarmAction,
) -> ApiResult {
    let device_id = Alarm::device_of(alarm_id)
        .ok_or_else(|| bad_request(format!("{alarm_id:?} is not an alarm id (device:seq)")))?;
    let body = DeviceRequestBody::AlarmAction {
        alarm_id: alarm_id.to_owned(),
        action,
        by: caller_of(caller).subject,
    };
    Ok(relay(ask(state, &device_id, body).await?))
}
