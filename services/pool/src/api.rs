//! The HTTP API (`schemas/openapi.yaml`): routes, JSON bodies and JSON errors.
//!
//! | route | auth | body → answer |
//! | --- | --- | --- |
//! | `POST /api/v1/proxy/request` | token | `ProxyRequest` → 200 `ProxyResponse`, 404 `no_proxy_available` |
//! | `POST /api/v1/proxy/feedback` | token | `ProxyFeedback` → 202 |
//! | `POST /api/v1/proxy/health` | token | `[HealthStats]` → 202 |
//! | `GET /api/v1/proxies?region=` | token | → 200 inventory with health, credentials redacted |
//! | `GET /metrics` | allowlist only | → Prometheus text |
//! | `GET /healthz` | none | → 200 |
//!
//! Every error is `{ code, error, message, request_id }` with the HTTP status in
//! `code`: `bad_request` (400, malformed JSON with the parser's message),
//! `unauthorized` (401), `forbidden` (403, IP not on the allowlist),
//! `no_proxy_available` (404), `timeout` (408), `payload_too_large` (413),
//! `internal` (500).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use proxybus_shared::http::{REQUEST_ID_HEADER, paths};
use proxybus_shared::{HealthStats, ProxyFeedback, ProxyRequest, Region};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tower_http::trace::TraceLayer;

use crate::auth::{self, Auth};
use crate::metrics::{self as m, HealthSource};
use crate::request_body;
use crate::selector::{SelectError, Selector};

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The selection core.
    pub selector: Arc<Selector>,
    /// Access rules.
    pub auth: Arc<Auth>,
    /// Request body limit in bytes.
    pub max_body_bytes: usize,
    /// Per-request timeout.
    pub request_timeout: Duration,
}

impl AppState {
    /// State over `selector` with `auth`, a 64 KiB body limit and a 10 s timeout.
    /// `GET /metrics` renders the process's one recorder (`proxybus_shared::telemetry::prometheus`).
    pub fn new(selector: Arc<Selector>, auth: Auth) -> Self {
        // Installed now, so the series recorded before the first scrape are kept.
        proxybus_shared::telemetry::prometheus();
        Self { selector, auth: Arc::new(auth), max_body_bytes: 64 * 1024, request_timeout: Duration::from_secs(10) }
    }

    /// Sets the body limit.
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Sets the per-request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
}

/// The API's router over `state`; serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so the allowlist sees client IPs.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(paths::REQUEST, post(request_proxy))
        .route(paths::FEEDBACK, post(report_feedback))
        .route(paths::HEALTH, post(push_health))
        .route(paths::PROXIES, get(list_proxies))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_credentials));
    let guarded = api
        .route(paths::METRICS, get(render_metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_allowed_ip));
    guarded
        .route(paths::HEALTHZ, get(healthz))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), time_out))
        .layer(middleware::from_fn(count_requests))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn(request_body::finish_reading_body))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// An error answer: `{ code, error, message, request_id }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub code: u16,
    /// Error class (`bad_request`, `unauthorized`, …).
    pub error: String,
    /// What went wrong; never a credential.
    pub message: String,
    /// The request's id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ApiError {
    /// An error of class `error` with status `status`.
    pub fn new(status: StatusCode, error: &str, message: impl Into<String>) -> Self {
        Self { code: status.as_u16(), error: error.to_owned(), message: message.into(), request_id: None }
    }

    /// 401, the same whatever was wrong.
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or invalid credentials")
    }

    /// 403, client IP not on the allowlist.
    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "client address not allowed")
    }

    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn with_request_id(mut self, request_id: Option<String>) -> Self {
        self.request_id = request_id;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(&self)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body over the size limit")
        } else {
            ApiError::bad_request(format!("cannot read the request body: {}", rejection.body_text()))
        }
    }
}

/// Parses a JSON body, naming the problem (serde's message, URLs redacted).
fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body?;
    serde_json::from_slice(&body).map_err(|err| {
        ApiError::bad_request(format!("malformed JSON: {}", proxybus_shared::redact_text(&err.to_string())))
    })
}

fn header_request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(128).collect::<String>())
        .filter(|v| !v.is_empty())
}

#[tracing::instrument(skip_all, fields(request_id))]
async fn request_proxy(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let header_id = header_request_id(&headers);
    let mut request: ProxyRequest = parse_json(body).map_err(|e| e.with_request_id(header_id.clone()))?;
    let request_id = request.request_id.clone().or(header_id).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    tracing::Span::current().record("request_id", request_id.as_str());
    if request.client_id.chars().any(char::is_control) {
        return Err(ApiError::bad_request("client_id must be printable characters").with_request_id(Some(request_id)));
    }
    if let Some(problem) = request.session_key_problem() {
        return Err(ApiError::bad_request(problem).with_request_id(Some(request_id)));
    }
    if request.exclude_proxy_ids.len() > ProxyRequest::MAX_EXCLUDED {
        return Err(ApiError::bad_request(format!(
            "exclude_proxy_ids lists more than {} proxies",
            ProxyRequest::MAX_EXCLUDED
        ))
        .with_request_id(Some(request_id)));
    }
    request.request_id = Some(request_id.clone());
    match state.selector.respond(&request) {
        Ok(response) => {
            tracing::debug!(
                exchange = %request.exchange_id,
                client_id = %request.client_id,
                proxy_id = ?response.proxy_id,
                strategy = %response.strategy,
                region = ?response.region,
                "proxy chosen"
            );
            let mut answer = Json(response).into_response();
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                answer.headers_mut().insert(REQUEST_ID_HEADER, value);
            }
            Ok(answer)
        }
        Err(err @ SelectError::NoProxyAvailable { .. }) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "no_proxy_available", err.to_string())
                .with_request_id(Some(request_id)))
        }
    }
}

#[derive(Serialize)]
struct FeedbackAccepted {
    accepted: bool,
    known_proxy: bool,
}

async fn report_feedback(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<FeedbackAccepted>), ApiError> {
    let feedback: ProxyFeedback = parse_json(body)?;
    if let Some(problem) = feedback.problem() {
        return Err(ApiError::bad_request(problem));
    }
    let known_proxy = state.selector.feedback(&feedback);
    Ok((StatusCode::ACCEPTED, Json(FeedbackAccepted { accepted: true, known_proxy })))
}

#[derive(Serialize)]
struct HealthAccepted {
    applied: usize,
    stale: usize,
}

async fn push_health(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<HealthAccepted>), ApiError> {
    let batch: Vec<HealthStats> = parse_json(body)?;
    let total = batch.len();
    let applied =
        batch.into_iter().filter(|stats| state.selector.apply_health(stats.clone(), HealthSource::Http)).count();
    Ok((StatusCode::ACCEPTED, Json(HealthAccepted { applied, stale: total - applied })))
}

#[derive(Deserialize)]
struct ProxiesQuery {
    region: Option<String>,
}

async fn list_proxies(
    State(state): State<AppState>,
    query: Result<Query<ProxiesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|err| ApiError::bad_request(err.body_text()))?;
    let region = match query.region {
        Some(text) => Some(text.parse::<Region>().map_err(|err| ApiError::bad_request(err.to_string()))?),
        None => None,
    };
    Ok(Json(state.selector.proxies(region.as_ref())).into_response())
}

async fn healthz(State(state): State<AppState>) -> Response {
    let proxies = state.selector.inventory().len();
    Json(serde_json::json!({ "status": "ok", "proxies": proxies })).into_response()
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    if proxybus_shared::telemetry::prometheus().is_none() {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "metrics are not recorded in this process")
            .into_response();
    }
    m::refresh_gauges(&state.selector);
    let text = proxybus_shared::telemetry::render_metrics();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn time_out(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(StatusCode::REQUEST_TIMEOUT, "timeout", "the request took too long").into_response(),
    }
}

async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    metrics::counter!(m::HTTP_REQUESTS, "route" => route, "status" => response.status().as_u16().to_string())
        .increment(1);
    response
}
