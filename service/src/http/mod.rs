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

/// A 4xx/5xx answer: `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl actix_web::ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({ "error": self.message }))
    }
}

type ApiResult = std::result::Result<HttpResponse, ApiError>;

fn registry(state: &HttpState) -> std::result::Result<&Arc<DeviceRegistry>, ApiError> {
    state.registry.as_ref().ok_or_else(|| {
        ApiError::new(
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
    query: std::result::Result<web::Query<ListQuery>, actix_web::Error>,
) -> ApiResult {
    let query = query
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("bad query: {e}; use ?prefix=&limit="),
            )
        })?
        .into_inner();
    let registry = registry(&state)?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > state.max_page_size {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {}", state.max_page_size),
        ));
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
    Ok(HttpResponse::Ok().json(json!({ "total": total, "devices": devices })))
}

async fn get_device(state: web::Data<HttpState>, path: web::Path<String>) -> ApiResult {
    let device_id = DeviceId::parse(&path)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let actor = registry(&state)?.get(&device_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no device {device_id} seen here"),
        )
    })?;
    let snapshot = actor.send(GetSnapshot).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("device actor unavailable: {e}"),
        )
    })?;
    Ok(HttpResponse::Ok().json(snapshot))
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
    let mut ready = true;
    let mut roles = serde_json::Map::new();
    for &role in &state.roles {
        let (role_ready, detail) = metrics.role_readiness(role);
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

async fn not_found() -> ApiResult {
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; see GET /devices, /devices/{id}, /metrics, /healthz",
    ))
}

/// Start the server on `listener`; returns the handle that stops it.
pub fn start(listener: TcpListener, state: HttpState) -> Result<ServerHandle> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
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
