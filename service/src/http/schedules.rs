//! `/schedules`: create, list, read, edit and delete schedules (the schedules role's
//! index of `iot.schedules`), always within the caller's tenant: another tenant's
//! schedule is 404, worded as a missing one.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::{bad_request, caller_of, role_api, ApiError, ApiResult, HttpState};
use crate::auth::Caller;
use crate::schedules::{NewSchedule, SchedulesApi, SchedulesError};

fn api(state: &HttpState) -> Result<&SchedulesApi, ApiError> {
    role_api(
        state.started()?.schedules.as_deref(),
        |api| api.index.is_loaded(),
        "the schedules role (which keeps the schedules) does not run in this process",
        "the schedules are still being read; retry shortly",
    )
}

fn failed(error: SchedulesError) -> ApiError {
    let status = match &error {
        SchedulesError::BadRequest(_) => StatusCode::BAD_REQUEST,
        SchedulesError::NotFound(_) | SchedulesError::NoDevice(_) => StatusCode::NOT_FOUND,
        SchedulesError::Conflict(_) => StatusCode::CONFLICT,
        SchedulesError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
        SchedulesError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, error.to_string())
}

fn body_of(
    body: Result<web::Json<NewSchedule>, actix_web::Error>,
) -> Result<NewSchedule, ApiError> {
    Ok(body
        .map_err(|e| bad_request(format!("bad schedule: {e}")))?
        .into_inner())
}

/// `/schedules` and `/schedules/{id}`.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/schedules")
                .route(web::get().to(list))
                .route(web::post().to(create)),
        )
        .service(
            web::resource("/schedules/{id}")
                .route(web::get().to(get))
                .route(web::put().to(edit))
                .route(web::delete().to(delete)),
        );
}

/// Create a schedule.
pub async fn create(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    body: Result<web::Json<NewSchedule>, actix_web::Error>,
) -> ApiResult {
    let new = body_of(body)?;
    let schedule = api(&state)?
        .create(&caller_of(caller), new)
        .await
        .map_err(failed)?;
    let id = schedule["schedule_id"].as_str().unwrap_or_default();
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/schedules/{id}")))
        .json(schedule))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    device_id: Option<String>,
    /// Include deleted schedules.
    #[serde(default)]
    deleted: bool,
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<String>,
}

/// The caller's schedules by id, a page at a time.
pub async fn list(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    query: Result<web::Query<ListQuery>, actix_web::Error>,
) -> ApiResult {
    let query = query
        .map_err(|e| {
            bad_request(format!(
                "bad query: {e}; use ?device_id=&deleted=&limit=&after="
            ))
        })?
        .into_inner();
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > state.max_page_size {
        return Err(bad_request(format!(
            "limit must be between 1 and {}",
            state.max_page_size
        )));
    }
    let page = api(&state)?.list(
        &caller_of(caller),
        query.device_id.as_deref(),
        query.deleted,
        query.after.as_deref(),
        limit,
    );
    Ok(HttpResponse::Ok().json(page))
}

/// One schedule: its spec, recent occurrences with their outcomes, next occurrences.
pub async fn get(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    path: web::Path<String>,
) -> ApiResult {
    let schedule = api(&state)?
        .get(&caller_of(caller), &path)
        .map_err(failed)?;
    Ok(HttpResponse::Ok().json(schedule))
}

/// Replace a schedule's spec; occurrences from now on follow it.
pub async fn edit(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    path: web::Path<String>,
    body: Result<web::Json<NewSchedule>, actix_web::Error>,
) -> ApiResult {
    let new = body_of(body)?;
    let schedule = api(&state)?
        .edit(&caller_of(caller), &path, new)
        .await
        .map_err(failed)?;
    Ok(HttpResponse::Ok().json(schedule))
}

/// Delete a schedule: no occurrence from now on; its history stays readable.
pub async fn delete(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    path: web::Path<String>,
) -> ApiResult {
    let schedule = api(&state)?
        .delete(&caller_of(caller), &path)
        .await
        .map_err(failed)?;
    Ok(HttpResponse::Ok().json(schedule))
}
