//! The one place REST calls are authenticated and authorized. Every request but the
//! open paths passes here: its token becomes a [`Caller`] (401 when it cannot), the
//! method and path say what the call needs (a scope, or an operator), and a path naming
//! a device is checked against the caller's tenant (404 for another tenant's device,
//! worded as for a device that does not exist). Handlers see only the `Caller`.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse};
use fleetwatch_protocol::DeviceId;
use serde_json::json;

use super::HttpState;
use crate::auth::{bearer, no_such_device, Caller, Scope};

/// What a call needs beyond a valid token.
#[derive(Debug, PartialEq, Eq)]
enum Needs {
    /// An open path: no token at all.
    Nothing,
    Scope(Scope),
    /// Assigning tenants, decommissioning, the model registry.
    Operator,
}

fn needs(method: &Method, path: &str, open_paths: &[String]) -> Needs {
    if open_paths.iter().any(|open| open == path) {
        return Needs::Nothing;
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::DELETE, ["devices", _]) | (&Method::PUT, ["devices", _, "tenant"]) => {
            Needs::Operator
        }
        (_, ["devices", _, "credentials"]) => Needs::Operator,
        // The model registry decides what every customer is alerted by.
        (_, ["models", ..]) => Needs::Operator,
        (&Method::GET | &Method::HEAD, _) => Needs::Scope(Scope::Read),
        _ => Needs::Scope(Scope::Command),
    }
}

/// The device a path is about, if any: `/devices/{id}/…`, or `/alarms/{device}:{seq}/…`.
fn device_in(path: &str) -> Option<DeviceId> {
    let mut segments = path.trim_matches('/').split('/');
    match (segments.next(), segments.next()) {
        (Some("devices"), Some(id)) => DeviceId::parse(id).ok(),
        (Some("alarms"), Some(id)) => fleetwatch_protocol::Alarm::device_of(id),
        _ => None,
    }
}

/// Why a call is refused: its status, the `reason` label and the message.
struct Refusal(StatusCode, &'static str, String);

fn refuse(status: StatusCode, reason: &'static str, message: String) -> Refusal {
    Refusal(status, reason, message)
}

fn respond(Refusal(status, reason, message): Refusal) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    if status == StatusCode::UNAUTHORIZED {
        response.insert_header((
            header::WWW_AUTHENTICATE,
            format!("Bearer error=\"invalid_token\", error_description=\"{reason}\""),
        ));
    }
    response.json(json!({ "error": message, "reason": reason }))
}

/// Decide on `request`: the caller, or the answer that refuses it.
fn admit(state: &HttpState, request: &ServiceRequest) -> Result<Option<Caller>, Refusal> {
    let needs = needs(request.method(), request.path(), &state.open_paths);
    if needs == Needs::Nothing {
        return Ok(None);
    }
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let caller = state
        .auth
        .check(bearer(header), &state.metrics)
        .map_err(|failure| {
            refuse(
                StatusCode::UNAUTHORIZED,
                failure.reason(),
                failure.to_string(),
            )
        })?;
    let forbidden = |what: String| {
        state
            .metrics
            .auth_failures
            .with_label_values(&["scope"])
            .inc();
        refuse(StatusCode::FORBIDDEN, "scope", what)
    };
    match needs {
        Needs::Operator if !caller.is_operator() || !caller.can_command => {
            return Err(forbidden(
                "only operators (with the command scope) may do this".into(),
            ))
        }
        Needs::Scope(scope) if !caller.has(scope) => {
            return Err(forbidden(format!(
                "the token lacks the `{}` scope",
                scope.as_str()
            )))
        }
        _ => {}
    }
    if let (Some(device_id), false) = (device_in(request.path()), caller.is_operator()) {
        let directory = state
            .directory()
            .map_err(|e| refuse(StatusCode::SERVICE_UNAVAILABLE, "starting", e.to_string()))?;
        if !directory.knows(&device_id) || !caller.sees(directory.tenant_of(&device_id).as_ref()) {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                no_such_device(&device_id),
            ));
        }
    }
    Ok(Some(caller))
}

/// The middleware: admit, then run the handler with the caller in the request.
pub async fn guard(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let state = request
        .app_data::<web::Data<HttpState>>()
        .expect("the state is registered")
        .clone();
    match admit(&state, &request) {
        Ok(caller) => {
            if let Some(caller) = caller {
                request.extensions_mut().insert(caller);
            }
            next.call(request)
                .await
                .map(ServiceResponse::map_into_left_body)
        }
        Err(refusal) => Ok(request
            .into_response(respond(refusal))
            .map_into_right_body()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_needs_what_it_does() {
        let open = vec!["/metrics".to_owned()];
        assert_eq!(needs(&Method::GET, "/metrics", &open), Needs::Nothing);
        assert_eq!(
            needs(&Method::GET, "/devices/d1", &open),
            Needs::Scope(Scope::Read)
        );
        assert_eq!(
            needs(&Method::POST, "/devices/d1/commands", &open),
            Needs::Scope(Scope::Command)
        );
        assert_eq!(
            needs(&Method::PATCH, "/devices/d1/desired", &open),
            Needs::Scope(Scope::Command)
        );
        assert_eq!(
            needs(&Method::DELETE, "/devices/d1", &open),
            Needs::Operator
        );
        assert_eq!(
            needs(&Method::PUT, "/devices/d1/tenant", &open),
            Needs::Operator
        );
        for method in [Method::POST, Method::DELETE, Method::GET] {
            assert_eq!(
                needs(&method, "/devices/d1/credentials", &open),
                Needs::Operator,
                "{method} credentials"
            );
        }
        assert_eq!(device_in("/devices/d1/commands/c1").unwrap().as_str(), "d1");
        assert_eq!(device_in("/devices"), None);
        assert_eq!(
            device_in("/alarms/pump:7:42/ack").unwrap().as_str(),
            "pump:7"
        );
        assert_eq!(device_in("/alarms"), None);
        assert_eq!(device_in("/metrics"), None);
    }
}
