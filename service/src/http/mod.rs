//! The HTTP server (actix-web): the devices' REST API, Prometheus metrics, health and the
//! live page. Every error is JSON: `{"error": "..."}` with a 4xx or 5xx status.

mod alarms;
mod config;
mod credentials;
mod guard;
mod jobs;
mod models;
mod requests;
mod rules;
mod schedules;

use std::net::TcpListener;
use std::sync::{Arc, OnceLock};

use actix_web::dev::ServerHandle;
use actix_web::http::{header, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use fleetwatch_protocol::{
    DeviceId, DeviceReply, DeviceRequestBody, JsonObject, NewCommand, ReplyStatus,
};
use serde::Deserialize;
use serde_json::json;

pub use config::HttpConfig;
pub use requests::{RepliesHandler, RequestClient, RequestError};

use crate::app::Roles;
use crate::auth::{Authenticator, Caller};
use crate::devices::{DeviceRegistry, HandleRequest, Lane};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::scorer::SharedParams;
use crate::settings::Settings;
use crate::tenancy::Directory;

/// What the handlers can reach. The server starts before the roles (so health answers
/// while Kafka is slow); what the roles provide is connected once they have started.
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub roles: Roles,
    pub max_page_size: usize,
    pub default_command_ttl_ms: u64,
    pub max_command_ttl_ms: u64,
    /// How long the async runtime may miss its heartbeat before liveness fails.
    pub wedged_after_secs: i64,
    pub auth: Arc<Authenticator>,
    /// Paths served without a token.
    pub open_paths: Vec<String>,
    /// Devices' MQTT credentials on the broker.
    pub credentials: Arc<crate::credentials::Provisioner>,
    started: OnceLock<Started>,
}

/// What the roles provide once started.
pub struct Started {
    pub registry: Option<Arc<DeviceRegistry>>,
    /// Reaches the instance owning a device.
    pub requests: Arc<RequestClient>,
    /// Port of the alerts WebSocket server, for the live page.
    pub ws_port: Option<u16>,
    /// The scorer's parameters, when this process scores.
    pub model_params: Option<SharedParams>,
    /// Which tenant each device belongs to.
    pub directory: Arc<Directory>,
    /// Every alarm, when this process runs the alerts role.
    pub alarms: Option<Arc<crate::alerts::AlarmIndex>>,
    /// Every alarm's webhook deliveries, when this process runs the alerts role.
    pub deliveries: Option<Arc<crate::webhooks::DeliveryLog>>,
    /// Every job, when this process runs the jobs role.
    pub jobs: Option<Arc<crate::jobs::JobsApi>>,
    /// Every schedule, when this process runs the schedules role.
    pub schedules: Option<Arc<crate::schedules::SchedulesApi>>,
    /// Every rule and action, when this process runs the rules role.
    pub rules: Option<Arc<crate::rules::RulesApi>>,
    /// Every rule action, when this process runs the alerts or the rules role.
    pub rule_actions: Option<Arc<crate::rules::state::RulesIndex>>,
    /// The model registry, when this process runs the trainer or the scorer role.
    pub models: Option<Arc<crate::shadow::ModelsApi>>,
}

impl HttpState {
    pub fn new(
        settings: &Settings,
        roles: Roles,
        metrics: Arc<Metrics>,
        auth: Arc<Authenticator>,
    ) -> Self {
        Self {
            metrics,
            roles,
            auth,
            open_paths: settings.auth.open_paths.clone(),
            credentials: Arc::new(crate::credentials::Provisioner::new(
                &settings.credentials,
                &settings.mqtt,
            )),
            max_page_size: settings.http.max_page_size,
            default_command_ttl_ms: settings.http.default_command_ttl_ms,
            max_command_ttl_ms: settings.http.max_command_ttl_ms,
            wedged_after_secs: settings.http.wedged_after_secs as i64,
            started: OnceLock::new(),
        }
    }

    /// Hand the server what the started roles provide.
    pub fn connect(&self, started: Started) {
        let _ = self.started.set(started);
    }

    fn started(&self) -> std::result::Result<&Started, ApiError> {
        self.started.get().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "fleetwatch is starting; retry shortly",
            )
        })
    }

    fn local_registry(&self) -> Option<&Arc<DeviceRegistry>> {
        self.started.get().and_then(|s| s.registry.as_ref())
    }

    fn requests(&self) -> std::result::Result<&Arc<RequestClient>, ApiError> {
        Ok(&self.started()?.requests)
    }

    fn directory(&self) -> std::result::Result<&Arc<Directory>, ApiError> {
        Ok(&self.started()?.directory)
    }
}

const PAGE: &str = include_str!("page.html");
/// The REST API's OpenAPI 3 document, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

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

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// Who the auth guard admitted (an anonymous operator when auth is off).
fn caller_of(caller: Option<web::ReqData<Caller>>) -> Caller {
    caller.map_or_else(Caller::anonymous_operator, |c| c.into_inner())
}

/// A role's API, if its role runs in this process (else 503 `missing`) and has read its
/// log (else 503 `loading`: retry shortly).
fn role_api<'a, A>(
    api: Option<&'a A>,
    loaded: impl FnOnce(&A) -> bool,
    missing: &str,
    loading: &str,
) -> Result<&'a A, ApiError> {
    let api = api.ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, missing))?;
    if !loaded(api) {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, loading));
    }
    Ok(api)
}

fn device_id(raw: &str) -> std::result::Result<DeviceId, ApiError> {
    DeviceId::parse(raw).map_err(|e| bad_request(e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    prefix: Option<String>,
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<String>,
}

/// The caller's devices across the whole fleet (the directory every instance holds), in
/// id order, a page at a time: `?after=` the previous page's `next`.
async fn list_devices(
    state: web::Data<HttpState>,
    caller: Option<web::ReqData<Caller>>,
    query: std::result::Result<web::Query<ListQuery>, actix_web::Error>,
) -> ApiResult {
    let query = query
        .map_err(|e| bad_request(format!("bad query: {e}; use ?prefix=&limit=&after=")))?
        .into_inner();
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > state.max_page_size {
        return Err(bad_request(format!(
            "limit must be between 1 and {}",
            state.max_page_size
        )));
    }
    let after = query.after.as_deref().map(device_id).transpose()?;
    let caller = caller.map_or_else(Caller::anonymous_operator, |c| c.into_inner());
    let page = state.directory()?.page(
        caller.tenant.as_ref(),
        query.prefix.as_deref().unwrap_or_default(),
        after.as_ref(),
        limit,
    );
    let devices: Vec<_> = page
        .devices
        .into_iter()
        .map(|(device_id, tenant)| json!({ "device_id": device_id, "tenant": tenant }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "devices": devices, "next": page.next })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantBody {
    /// `null` takes the device out of every tenant (operators only).
    tenant: Option<fleetwatch_protocol::TenantId>,
}

/// Assign the device to a tenant (operators; the guard checks). Durable: the twin owner
/// writes it to the twin and the directory.
async fn set_tenant(
    state: web::Data<HttpState>,
    path: web::Path<String>,
    body: std::result::Result<web::Json<TenantBody>, actix_web::Error>,
) -> ApiResult {
    let device_id = device_id(&path)?;
    let TenantBody { tenant } = body
        .map_err(|e| {
            bad_request(format!(
                "tenant: {e}; expected {{\"tenant\": \"acme\"}} or {{\"tenant\": null}}"
            ))
        })?
        .into_inner();
    let reply = ask(&state, &device_id, DeviceRequestBody::SetTenant { tenant }).await?;
    Ok(relay(reply))
}

/// Decommission the device (operators; the guard checks): its twin, commands, model and
/// directory entry are removed by the roles as they meet the announcement, in order with
/// the device's events. 202: accepted, done within moments.
async fn decommission(state: web::Data<HttpState>, path: web::Path<String>) -> ApiResult {
    let device_id = device_id(&path)?;
    state
        .requests()?
        .decommission(&device_id)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(HttpResponse::Accepted().json(json!({ "device_id": device_id, "decommissioned": true })))
}

/// Answer with the owner's reply, mapped to HTTP.
fn relay(reply: DeviceReply) -> HttpResponse {
    respond(reply.status, reply.body)
}

fn respond(status: ReplyStatus, body: serde_json::Value) -> HttpResponse {
    let status = match status {
        ReplyStatus::Ok => StatusCode::OK,
        ReplyStatus::Created => StatusCode::CREATED,
        ReplyStatus::NotFound => StatusCode::NOT_FOUND,
        ReplyStatus::Conflict => StatusCode::CONFLICT,
        ReplyStatus::TooManyPending => StatusCode::TOO_MANY_REQUESTS,
    };
    HttpResponse::build(status).json(body)
}

async fn ask(
    state: &HttpState,
    device_id: &DeviceId,
    body: DeviceRequestBody,
) -> std::result::Result<DeviceReply, ApiError> {
    state
        .requests()?
        .ask(device_id, body)
        .await
        .map_err(|error| match error {
            RequestError::Timeout(_) => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, error.to_string())
            }
            RequestError::Busy(_) | RequestError::Kafka(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
            }
        })
}

/// A read, answered by the device's actor here when this instance has it live (no Kafka
/// round trip), else by the owner through Kafka.
async fn read(
    state: &HttpState,
    device_id: &DeviceId,
    body: DeviceRequestBody,
) -> std::result::Result<(ReplyStatus, serde_json::Value), ApiError> {
    debug_assert!(body.is_read());
    if let Some(actor) = state.local_registry().and_then(|r| r.get(device_id)) {
        let request = HandleRequest {
            body: body.clone(),
            at_ms: fleetwatch_protocol::now_ms(),
            // A read writes nothing.
            lane: Lane::Urgent,
        };
        if let Ok(answer) = actor.send(request).await {
            return Ok((answer.status, answer.body));
        }
    }
    let reply = ask(state, device_id, body).await?;
    Ok((reply.status, reply.body))
}

/// The parameters this instance's scorer holds for the device: their version and age.
/// Answered only where the device is scored (its partition's scorer instance).
async fn get_model(state: web::Data<HttpState>, path: web::Path<String>) -> ApiResult {
    let device_id = device_id(&path)?;
    let Some(params) = state.started()?.model_params.as_ref() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the scorer role does not run in this process",
        ));
    };
    let started = state.started()?;
    let Some(models) = params.read().get(&device_id).cloned() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("this instance's scorer holds no parameters for {device_id} (not its partition, or no model yet)"),
        ));
    };
    let Some(device) = models.get(fleetwatch_protocol::PRODUCTION_MODEL).cloned() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("this instance's scorer holds no production parameters for {device_id} yet"),
        ));
    };
    let tenant = started.directory.tenant_of(&device_id);
    let promoted = (started.models.as_ref()).map(|api| {
        api.registry
            .read(|r| r.promoted_for(tenant.as_ref()).to_owned())
    });
    let per_model: serde_json::Map<String, serde_json::Value> = (models.iter())
        .map(|(id, p)| (id.to_owned(), json!({"version": p.version, "trained_events": p.trained_events, "published_ms": p.published_ms})))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "device_id": device_id,
        "version": device.version,
        "trained_events": device.trained_events,
        "published_ms": device.published_ms,
        "partition": device.partition,
        "models": per_model,
        "promoted": promoted,
        // The promoted model has no parameters here yet: the previous one still decides.
        "awaiting_promoted_params": promoted.as_ref().is_some_and(|p| !models.contains_key(p)),
    })))
}

async fn get_device(state: web::Data<HttpState>, path: web::Path<String>) -> ApiResult {
    let device_id = device_id(&path)?;
    let (status, body) = read(&state, &device_id, DeviceRequestBody::GetTwin).await?;
    Ok(respond(status, body))
}

async fn get_desired(state: web::Data<HttpState>, path: web::Path<String>) -> ApiResult {
    let device_id = device_id(&path)?;
    Ok(
        match read(&state, &device_id, DeviceRequestBody::GetTwin).await? {
            (ReplyStatus::Ok, view) => {
                let version = view["desired_version"].as_u64().unwrap_or(0);
                HttpResponse::Ok()
                    .insert_header((header::ETAG, format!("\"{version}\"")))
                    .json(json!({
                        "desired": view["desired"],
                        "version": version,
                        "delta": view["delta"],
                    }))
            }
            (status, body) => respond(status, body),
        },
    )
}

/// `If-Match: "3"` (or `3`) → Some(3); `*` or absent → None.
fn expected_version(request: &HttpRequest) -> std::result::Result<Option<u64>, ApiError> {
    let Some(value) = request.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| bad_request("If-Match must be text"))?
        .trim();
    if text == "*" {
        return Ok(None);
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| {
            bad_request(format!(
                "If-Match {text:?} is not a desired-state version (an ETag like \"3\")"
            ))
        })
}

fn json_object(
    body: std::result::Result<web::Json<serde_json::Value>, actix_web::Error>,
    what: &str,
) -> std::result::Result<JsonObject, ApiError> {
    match body
        .map_err(|e| bad_request(format!("{what}: {e}")))?
        .into_inner()
    {
        serde_json::Value::Object(object) => Ok(object),
        other => Err(bad_request(format!(
            "{what} must be a JSON object, not {}",
            json_kind(&other)
        ))),
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `PUT` replaces the desired state; `PATCH` merges into it (null deletes a key).
async fn write_desired(
    state: web::Data<HttpState>,
    request: HttpRequest,
    path: web::Path<String>,
    body: std::result::Result<web::Json<serde_json::Value>, actix_web::Error>,
) -> ApiResult {
    let device_id = device_id(&path)?;
    let if_match = expected_version(&request)?;
    let desired = json_object(body, "the desired state")?;
    let merge = request.method() == actix_web::http::Method::PATCH;
    let reply = ask(
        &state,
        &device_id,
        DeviceRequestBody::SetDesired {
            desired,
            merge,
            if_match,
        },
    )
    .await?;
    let version = reply.body["version"].as_u64();
    let mut response = relay(reply);
    if let Some(version) = version {
        response.headers_mut().insert(
            header::ETAG,
            header::HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are valid"),
        );
    }
    Ok(response)
}

/// Body of `POST /devices/{id}/commands`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandRequest {
    name: String,
    #[serde(default)]
    args: serde_json::Value,
    idempotency_key: Option<String>,
    ttl_ms: Option<u64>,
}

const MAX_COMMAND_NAME: usize = 64;
const MAX_IDEMPOTENCY_KEY: usize = 128;
const MAX_ARGS_BYTES: usize = 16 * 1024;

async fn send_command(
    state: web::Data<HttpState>,
    request: HttpRequest,
    path: web::Path<String>,
    body: std::result::Result<web::Json<CommandRequest>, actix_web::Error>,
) -> ApiResult {
    let device_id = device_id(&path)?;
    let command = body
        .map_err(|e| bad_request(format!("command: {e}; expected {{\"name\": ..., \"args\": {{...}}, \"idempotency_key\": ..., \"ttl_ms\": ...}}")))?
        .into_inner();
    let name_ok = !command.name.is_empty()
        && command.name.len() <= MAX_COMMAND_NAME
        && command
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !name_ok {
        return Err(bad_request(format!(
            "command name {:?} is invalid: 1 to {MAX_COMMAND_NAME} characters from letters, digits and _ . -",
            command.name
        )));
    }
    if serde_json::to_vec(&command.args).map_or(0, |b| b.len()) > MAX_ARGS_BYTES {
        return Err(bad_request(format!(
            "args are larger than {MAX_ARGS_BYTES} bytes"
        )));
    }
    let header_key = request
        .headers()
        .get("Idempotency-Key")
        .map(|value| {
            value
                .to_str()
                .map(str::to_owned)
                .map_err(|_| bad_request("Idempotency-Key must be text"))
        })
        .transpose()?;
    let idempotency_key = match (command.idempotency_key, header_key) {
        (Some(body), Some(header)) if body != header => {
            return Err(bad_request(
                "idempotency_key and the Idempotency-Key header differ",
            ))
        }
        (body, header) => body.or(header),
    };
    if idempotency_key
        .as_ref()
        .is_some_and(|key| key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY)
    {
        return Err(bad_request(format!(
            "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
        )));
    }
    let ttl_ms = command.ttl_ms.unwrap_or(state.default_command_ttl_ms);
    if ttl_ms == 0 || ttl_ms > state.max_command_ttl_ms {
        return Err(bad_request(format!(
            "ttl_ms must be between 1 and {}",
            state.max_command_ttl_ms
        )));
    }
    let new = NewCommand {
        command_id: state.requests()?.new_id("cmd"),
        name: command.name,
        args: command.args,
        idempotency_key,
        ttl_ms,
    };
    let reply = ask(&state, &device_id, DeviceRequestBody::SendCommand(new)).await?;
    let location = reply.body["command_id"]
        .as_str()
        .map(|id| format!("/devices/{device_id}/commands/{id}"));
    let mut response = relay(reply);
    if let Some(location) = location {
        if let Ok(value) = header::HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
    }
    Ok(response)
}

async fn list_commands(state: web::Data<HttpState>, path: web::Path<String>) -> ApiResult {
    let device_id = device_id(&path)?;
    let (status, body) = read(&state, &device_id, DeviceRequestBody::ListCommands).await?;
    Ok(respond(status, body))
}

async fn get_command(state: web::Data<HttpState>, path: web::Path<(String, String)>) -> ApiResult {
    let (device, command_id) = path.into_inner();
    let device_id = device_id(&device)?;
    if command_id.is_empty() || command_id.len() > 256 {
        return Err(bad_request("command ids are 1 to 256 characters"));
    }
    let (status, body) = read(
        &state,
        &device_id,
        DeviceRequestBody::GetCommand { command_id },
    )
    .await?;
    Ok(respond(status, body))
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

async fn metrics(state: web::Data<HttpState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// 200, or 503 when `unavailable`: what probes read.
fn ok_unless(unavailable: bool) -> StatusCode {
    if unavailable {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

/// Readiness: 200 once every role of this process is ready (connected, holding its
/// partitions, Kafka reachable), 503 before and whenever one is not; per-role detail in
/// the body. For an orchestrator's readiness probe (traffic, rollouts).
async fn ready(state: web::Data<HttpState>) -> HttpResponse {
    let metrics = &state.metrics;
    let (ready, roles) = state.roles.readiness(metrics);
    HttpResponse::build(ok_unless(!ready)).json(json!({
        "ready": ready,
        "roles": roles,
        "device_actors": metrics.device_actors.get(),
        "devices_online": metrics.devices_online.get(),
    }))
}

/// Liveness: 503 only when the process is wedged (its async runtime stopped running the
/// heartbeat), never for a broker outage, so a probe restarts a stuck pod and leaves a
/// waiting one alone.
async fn live(state: web::Data<HttpState>) -> HttpResponse {
    let beat = state.metrics.runtime_heartbeat.get();
    let silent_secs = fleetwatch_protocol::now_ms() / 1000 - beat;
    let live = beat == 0 || silent_secs <= state.wedged_after_secs;
    HttpResponse::build(ok_unless(!live))
        .json(json!({ "live": live, "runtime_silent_secs": silent_secs.max(0) }))
}

async fn page(state: web::Data<HttpState>) -> HttpResponse {
    let ws_port = state
        .started
        .get()
        .and_then(|started| started.ws_port)
        .map_or_else(|| "null".to_owned(), |p| p.to_string());
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE.replace("__WS_PORT__", &ws_port))
}

async fn not_found() -> ApiResult {
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; the API is described at GET /openapi.json",
    ))
}

async fn wrong_method(request: HttpRequest) -> ApiResult {
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}; the API is described at GET /openapi.json",
            request.method(),
            request.path()
        ),
    ))
}

/// Start the server on `listener` (TLS when `tls` is given); returns the handle that
/// stops it.
pub fn start(
    listener: TcpListener,
    state: Arc<HttpState>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<ServerHandle> {
    let state = web::Data::from(state);
    let server = HttpServer::new(move || {
        // Each path is one resource, so a wrong method gets 405 rather than 404.
        let resource = |path: &str| web::resource(path).default_service(web::to(wrong_method));
        App::new()
            .wrap(actix_web::middleware::from_fn(guard::guard))
            .app_data(state.clone())
            .app_data(web::JsonConfig::default().limit(64 * 1024))
            .service(resource("/").route(web::get().to(page)))
            .service(resource("/devices").route(web::get().to(list_devices)))
            .service(
                resource("/devices/{id}")
                    .route(web::get().to(get_device))
                    .route(web::delete().to(decommission)),
            )
            .service(resource("/devices/{id}/tenant").route(web::put().to(set_tenant)))
            .service(resource("/devices/{id}/model").route(web::get().to(get_model)))
            .service(
                resource("/devices/{id}/credentials")
                    .route(web::post().to(credentials::provision))
                    .route(web::delete().to(credentials::revoke)),
            )
            .service(
                resource("/devices/{id}/desired")
                    .route(web::get().to(get_desired))
                    .route(web::put().to(write_desired))
                    .route(web::patch().to(write_desired)),
            )
            .service(
                resource("/devices/{id}/commands")
                    .route(web::post().to(send_command))
                    .route(web::get().to(list_commands)),
            )
            .service(
                resource("/devices/{id}/commands/{command_id}").route(web::get().to(get_command)),
            )
            .service(resource("/alarms").route(web::get().to(alarms::list)))
            .service(resource("/alarms/{id}").route(web::get().to(alarms::get)))
            .service(resource("/alarms/{id}/ack").route(web::post().to(alarms::acknowledge)))
            .service(resource("/alarms/{id}/clear").route(web::post().to(alarms::clear)))
            .service(resource("/alarms/{id}/deliveries").route(web::get().to(alarms::deliveries)))
            .service(
                resource("/jobs")
                    .route(web::get().to(jobs::list))
                    .route(web::post().to(jobs::create)),
            )
            .service(resource("/jobs/{id}").route(web::get().to(jobs::get)))
            .service(resource("/jobs/{id}/cancel").route(web::post().to(jobs::cancel)))
            .configure(schedules::routes)
            .configure(rules::routes)
            .configure(models::routes)
            .service(resource("/openapi.json").route(web::get().to(openapi)))
            .service(resource("/metrics").route(web::get().to(metrics)))
            .service(resource("/readyz").route(web::get().to(ready)))
            .service(resource("/livez").route(web::get().to(live)))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(5);
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, (*tls).clone()),
        None => server.listen(listener),
    }
    .map_err(|e| Error::io("starting HTTP server", e))?
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::OPENAPI;

    #[test]
    fn the_openapi_document_describes_every_route() {
        let document: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert_eq!(document["openapi"], "3.0.3");
        let mut paths: Vec<&str> = document["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        paths.sort_unstable();
        let source = include_str!("mod.rs");
        // Routes registered by a module's own `routes` (`.configure`) count too.
        let code = [
            &source[..source.find("#[cfg(test)]").unwrap()],
            include_str!("schedules.rs"),
            include_str!("rules.rs"),
            include_str!("models.rs"),
        ]
        .concat();
        let mut served: Vec<&str> = code
            .split("resource(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .filter(|path| *path != "/")
            .collect();
        served.sort_unstable();
        assert_eq!(
            served, paths,
            "served routes (left) and documented ones (right) differ"
        );
    }
}
