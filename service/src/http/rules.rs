//! `/rules`: create, list, read, edit and delete alarm rules (the rules role's index of
//! `iot.rules`), and `/alarms/{id}/actions`: what rules did about an alarm (the journal
//! on `iot.rule-actions`). Always within the caller's tenant: another tenant's rule is
//! 404, worded as a missing one, and its actions are not listed.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::{bad_request, caller_of, role_api, ApiError, ApiResult, HttpState};
use crate::auth::Caller;
use crate::rules::{NewRule, RulesApi, RulesError};

fn api(state: &HttpState) -> Result<&RulesApi, ApiError> {
    role_api(
        state.started()?.rules.as_deref(),
        |api| api.index.is_loaded(),
        "the rules role (which keeps the rules) does not run in this process",
        "the rules are still being read; retry shortly",
    )
}

fn failed(error: RulesError) -> ApiError {
    let status = match &error {
        RulesError::BadRequest(_) => StatusCode::BAD_REQUEST,
        RulesError::NotFound(_) => StatusCode::NOT_FOUND,
        RulesError::Conflict(_) => StatusCode::CONFLICT,
        RulesError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
        RulesError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, error.to_string())
}

fn body_of(body: Result<web::Json<NewRule>, actix_web::Error>) -> Result<NewRule, ApiError> {
    Ok(body
        .map_err(|e| bad_request(format!("bad rule: {e}")))?
        .into_inner())
}

/// `/rules`, `/rules/{id}` and `/alarms/{id}/actions`.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/rules")
                .route(web::get().to(list))
                .route(web::post().to(create)),
        )
        .service(
            web::resource("/rules/{id}")
                .route(web::get().to(get))
                .route(web::put().to(edit))
                .route(web::delete().to(delete)),
        )
        .service(web::resource("/alarms/{id}/actions").route(web::get().to(actions)));
}

/// Create a rule.
pub async fn create(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    body: Result<web::Json<NewRule>, actix_web::Error>,
) -> ApiResult {
    let new = body_of(body)?;
    let rule = api(&state)?
        .create(&caller_of(caller), new)
        .await
        .map_err(failed)?;
    let id = rule["rule_id"].as_str().unwrap_or_default();
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/rules/{id}")))
        .json(rule))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Include deleted rules.
    #[serde(default)]
    deleted: bool,
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<String>,
}

/// The caller's rules by id, a page at a time.
pub async fn list(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    query: Result<web::Query<ListQuery>, actix_web::Error>,
) -> ApiResult {
    let query = query
        .map_err(|e| bad_request(format!("bad query: {e}; use ?deleted=&limit=&after=")))?
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
        query.deleted,
        query.after.as_deref(),
        limit,
    );
    Ok(HttpResponse::Ok().json(page))
}

/// One rule: its spec, counts of decisions per outcome, recent actions.
pub async fn get(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    path: web::Path<String>,
) -> ApiResult {
    let rule = api(&state)?
        .get(&caller_of(caller), &path)
        .map_err(failed)?;
    Ok(HttpResponse::Ok().json(rule))
}

/// Replace a rule's name, condition, action and dry-run flag.
pub async fn edit(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    path: web::Path<String>,
    body: Result<web::Json<NewRule>, actix_web::Error>,
) -> ApiResult {
    let new = body_of(body)?;
    let rule = api(&state)?
        .edit(&caller_of(caller), &path, new)
        .await
        .map_err(failed)?;
    Ok(HttpResponse::Ok().json(rule))
}

/// Delete a rule: it decides nothing more; its actions stay readable.
pub async fn delete(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    path: web::Path<String>,
) -> ApiResult {
    let rule = api(&state)?
        .delete(&caller_of(caller), &path)
        .await
        .map_err(failed)?;
    Ok(HttpResponse::Ok().json(rule))
}

/// The actions rules took (or would have, or were refused) about an alarm.
pub async fn actions(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    path: web::Path<String>,
) -> ApiResult {
    let index = state.started()?.rule_actions.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "neither the alerts nor the rules role (which keep rule actions) runs in this process",
        )
    })?;
    if !index.is_loaded() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the rule actions are still being read; retry shortly",
        ));
    }
    let caller = caller_of(caller);
    let actions: Vec<_> = (index.actions_of(&path).into_iter())
        .filter(|a| caller.sees(a.tenant.as_ref()))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({"alarm_id": *path, "actions": actions})))
}
