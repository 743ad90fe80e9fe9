//! `/jobs`: create, list, read and cancel fleet jobs (the jobs role's index of
//! `iot.jobs`), always within the caller's tenant: another tenant's job is 404, worded
//! as a missing one.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::{bad_request, caller_of, role_api, ApiError, ApiResult, HttpState};
use crate::auth::Caller;
use crate::jobs::{JobsApi, JobsError, NewJob};

fn api(state: &HttpState) -> Result<&JobsApi, ApiError> {
    role_api(
        state.started()?.jobs.as_deref(),
        |api| api.index.is_loaded(),
        "the jobs role (which keeps the jobs) does not run in this process",
        "the jobs are still being read; retry shortly",
    )
}

fn failed(error: JobsError) -> ApiError {
    let status = match &error {
        JobsError::BadRequest(_) => StatusCode::BAD_REQUEST,
        JobsError::NotFound(_) => StatusCode::NOT_FOUND,
        JobsError::Conflict(_) => StatusCode::CONFLICT,
        JobsError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
        JobsError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, error.to_string())
}

/// Create a job.
pub async fn create(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    body: Result<web::Json<NewJob>, actix_web::Error>,
) -> ApiResult {
    let new = body
        .map_err(|e| bad_request(format!("bad job: {e}")))?
        .into_inner();
    let job = api(&state)?
        .create(&caller_of(caller), new)
        .await
        .map_err(failed)?;
    let location = format!("/jobs/{}", job["job_id"].as_str().unwrap_or_default());
    Ok(HttpResponse::Created()
        .insert_header(("Location", location))
        .json(job))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// `running`, `completed`, `aborted` or `cancelled`.
    status: Option<String>,
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<String>,
}

const STATUSES: [&str; 4] = ["running", "completed", "aborted", "cancelled"];

/// The caller's jobs, newest first, a page at a time.
pub async fn list(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    query: Result<web::Query<JobQuery>, actix_web::Error>,
) -> ApiResult {
    let query = query
        .map_err(|e| bad_request(format!("bad query: {e}; use ?status=&limit=&after=")))?
        .into_inner();
    if let Some(status) = query.status.as_deref() {
        if !STATUSES.contains(&status) {
            return Err(bad_request(format!(
                "status {status:?}: use one of {STATUSES:?}"
            )));
        }
    }
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > state.max_page_size {
        return Err(bad_request(format!(
            "limit must be between 1 and {}",
            state.max_page_size
        )));
    }
    let page = api(&state)?.list(
        &caller_of(caller),
        query.status.as_deref(),
        query.after.as_deref(),
        limit,
    );
    Ok(HttpResponse::Ok().json(page))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    /// Include every execution (device → state and times).
    #[serde(default)]
    executions: bool,
}

/// One job: counts per state, waves, the abort decision with its figures.
pub async fn get(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    path: web::Path<String>,
    query: Result<web::Query<GetQuery>, actix_web::Error>,
) -> ApiResult {
    let executions = query
        .map_err(|e| bad_request(format!("bad query: {e}; use ?executions=true")))?
        .executions;
    let job = api(&state)?
        .get(&caller_of(caller), &path, executions)
        .map_err(failed)?;
    Ok(HttpResponse::Ok().json(job))
}

/// Cancel a job: nothing more is created or first sent; queued executions end
/// `cancelled`.
pub async fn cancel(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    path: web::Path<String>,
) -> ApiResult {
    let job = api(&state)?
        .cancel(&caller_of(caller), &path)
        .await
        .map_err(failed)?;
    Ok(HttpResponse::Accepted().json(job))
}
