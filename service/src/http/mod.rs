//! The HTTP server (actix-web): the devices' REST API, Prometheus metrics, health and the
//! live page. Every error is JSON: `{"error": "..."}` with a 4xx or 5xx status.

mod config;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer};
use fleetwatch_protocol::DeviceId;
use serde::Deserialize;
use serde_json::json;

pub use config::HttpConfig;

use crate::devices::{DeviceRegistry, GetSnapshot};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// What the handlers can reach.
pub struct HttpState {
    pub registry: Option<Arc<DeviceRegistry>>,
    pub metrics: Arc<Metrics>,
    pub roles: Vec<&'static str>,
    /// Port of the alerts WebSocket server, for the live page.
    pub ws_port: Option<u16>,
    pub max_page_size: usize,
}

const PAGE: &str = include_str!("page.html");

fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message.into() }))
}

fn registry(state: &HttpState) -> std::result::Result<&Arc<DeviceRegistry>, HttpResponse> {
    state.registry.as_ref().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the devices role does not run in this process",
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    prefix: Option<String>,
    limit: Option<usize>,
}

async fn list_devices(
    state: web::Data<HttpState>,
    query: Result<web::Query<ListQuery>, actix_web::Error>,
) -> HttpResponse {
    let query = match query {
        Ok(query) => query.into_inner(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad query: {e}; use ?prefix=&limit="),
            )
        }
    };
    let registry = match registry(&state) {
        Ok(registry) => registry,
        Err(response) => return response,
    };
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > state.max_page_size {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {}", state.max_page_size),
        );
    }
    let prefix = query.prefix.unwrap_or_default();
    let matching: Vec<_> = registry
        .all()
        .into_iter()
        .filter(|(id, _)| id.as_str().starts_with(&prefix))
        .collect();
    let total = matching.len();
    let mut devices = Vec::with_capacity(limit.min(total));
    for (_, actor) in matching.into_iter().take(limit) {
        if let Ok(snapshot) = actor.send(GetSnapshot).await {
            devices.push(snapshot);
        }
    }
    HttpResponse::Ok().json(json!({ "total": total, "devices": devices }))
}

async fn get_device(state: web::Data<HttpState>, path: web::Path<String>) -> HttpResponse {
    let device_id = match DeviceId::parse(&path) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let registry = match registry(&state) {
        Ok(registry) => registry,
        Err(response) => return response,
    };
    let Some(actor) = registry.get(&device_id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no device {device_id} seen here"),
        );
    };
    match actor.send(GetSnapshot).await {
        Ok(snapshot) => HttpResponse::Ok().json(snapshot),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("device actor unavailable: {e}"),
        ),
    }
}

async fn metrics(state: web::Data<HttpState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// Liveness and readiness in one: `ready` is true once every role this process runs is
/// connected and has its partitions.
async fn health(state: web::Data<HttpState>) -> HttpResponse {
    let metrics = &state.metrics;
    let assigned = |role: &str| metrics.assigned_partitions.with_label_values(&[role]).get();
    let mut ready = true;
    let mut roles = serde_json::Map::new();
    for &role in &state.roles {
        let (role_ready, detail) = match role {
            "ingest" => {
                let subscribed = metrics.ingest_subscribed.get() == 1;
                (subscribed, json!({ "subscribed": subscribed }))
            }
            "scorer" => {
                let telemetry = assigned("scorer");
                let params = assigned("scorer-params");
                (
                    telemetry > 0 && params > 0,
                    json!({ "assigned_partitions": telemetry, "params_partitions": params }),
                )
            }
            other => {
                let partitions = assigned(other);
                (partitions > 0, json!({ "assigned_partitions": partitions }))
            }
        };
        ready &= role_ready;
        roles.insert(
            role.to_owned(),
            json!({ "ready": role_ready, "detail": detail }),
        );
    }
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "ready": ready,
        "roles": roles,
        "device_actors": metrics.device_actors.get(),
    }))
}

async fn page(state: web::Data<HttpState>) -> HttpResponse {
    let ws_port = state
        .ws_port
        .map_or_else(|| "null".to_owned(), |p| p.to_string());
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE.replace("__WS_PORT__", &ws_port))
}

async fn not_found() -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; see GET /devices, /devices/{id}, /metrics, /healthz",
    )
}

/// Start the server on `listener`; returns the handle that stops it.
pub fn start(listener: TcpListener, state: HttpState) -> Result<ServerHandle> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PathConfig::default().error_handler(|e, _| {
                actix_web::error::InternalError::from_response(
                    e.to_string(),
                    error(StatusCode::BAD_REQUEST, e.to_string()),
                )
                .into()
            }))
            .route("/", web::get().to(page))
            .route("/devices", web::get().to(list_devices))
            .route("/devices/{id}", web::get().to(get_device))
            .route("/metrics", web::get().to(metrics))
            .route("/healthz", web::get().to(health))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)
    .map_err(|e| Error::io("starting HTTP server", e))?
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok(handle)
}
