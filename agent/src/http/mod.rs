//! The HTTP surface: `/metrics`, `/healthz`, `/api/v1/alerts`, push heartbeats, maintenance
//! and status.

pub mod server;
mod view;
pub mod web;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};

use self::view::AlertView;
use crate::{
    alerts::{Published, State as AlertState},
    collectors::heartbeats::Heartbeats,
    health::{Health, Status},
    rules::reload::Reloads,
    store::Store,
};

/// A push heartbeat needs no body; anything larger than this is refused (413).
const MAX_HEARTBEAT_BODY: usize = 1024;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the handlers read.
pub struct AppState {
    pub store: Arc<Store>,
    pub heartbeats: Heartbeats,
    pub health: Arc<Health>,
    /// The token that lets non-loopback callers drain and undrain.
    pub token: Option<String>,
    /// `(probe, mode)` of every probe, for `/api/v1/status`.
    pub probes: Vec<(String, String)>,
    /// Pending and firing alerts, as of the last tick.
    pub alerts: Published,
    /// Rule reloads, served by the tick thread.
    pub reloads: Arc<Reloads>,
    /// How long `POST /api/v1/reload` waits for the tick thread.
    pub reload_wait: std::time::Duration,
}

/// The agent's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route(
            "/api/v1/heartbeat/{name}",
            post(heartbeat).layer(DefaultBodyLimit::max(MAX_HEARTBEAT_BODY)),
        )
        .route("/api/v1/status", get(status))
        .route("/api/v1/alerts", get(alerts))
        .merge(
            // What changes the node: loopback callers, or the token.
            Router::new()
                .route("/api/v1/drain", post(drain))
                .route("/api/v1/undrain", post(undrain))
                .route("/api/v1/reload", post(reload))
                .layer(DefaultBodyLimit::max(MAX_HEARTBEAT_BODY))
                .route_layer(middleware::from_fn_with_state(state.clone(), guard)),
        )
        .with_state(state)
}

/// Refuses (403) callers that [`allowed`] does not let through.
async fn guard(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    // A basic-auth user of the web config counts as the token does.
    let user = request.extensions().get::<web::Authenticated>().is_some();
    if !user && !allowed(&state, peer, request.headers()) {
        return forbidden();
    }
    next.run(request).await
}

/// OpenMetrics when the scraper asks for it (Prometheus does), Prometheus text otherwise.
async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let wants_om = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (body, ctype) = if wants_om {
        (state.store.encode_openmetrics(), OPENMETRICS)
    } else {
        (state.store.encode_prometheus(), PROMETHEUS_TEXT)
    };
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(ctype))],
        body,
    )
        .into_response()
}

/// Node health: 200 when healthy or degraded, 503 when draining or down, with the reasons.
/// Degraded also carries `x-envoy-degraded`, which Envoy's HTTP health checker reads as
/// "serving, but prefer others".
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let snap = state.health.snapshot();
    let degraded = snap.status == Status::Degraded;
    let code = if snap.status <= Status::Degraded {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (code, Json(snap)).into_response();
    if degraded {
        response
            .headers_mut()
            .insert("x-envoy-degraded", HeaderValue::from_static("true"));
    }
    response
}

/// The agent's state for `nodewatch status`: health, firing alerts and probe modes.
async fn status(State(state): State<Arc<AppState>>) -> Response {
    let probes: Vec<_> = state
        .probes
        .iter()
        .map(|(probe, mode)| serde_json::json!({ "probe": probe, "mode": mode }))
        .collect();
    let firing: Vec<_> = state
        .alerts
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|a| a.state == AlertState::Firing)
        .map(AlertView::new)
        .collect();
    Json(serde_json::json!({
        "health": state.health.snapshot(),
        "alerts": firing,
        "probes": probes,
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

/// Whether a caller may drain, undrain or reload: loopback, or the configured bearer token.
fn allowed(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> bool {
    let loopback = match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    if loopback {
        return true;
    }
    let Some(token) = &state.token else {
        return false;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn forbidden() -> Response {
    let body = serde_json::json!({
        "error": "drain, undrain and reload are allowed from loopback, or with the configured token"
    });
    (StatusCode::FORBIDDEN, Json(body)).into_response()
}

/// `POST /api/v1/drain` with `{"reason": "..."}`: manual maintenance.
async fn drain(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let reason = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("reason")?.as_str().map(str::to_string))
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    let Some(reason) = reason else {
        let body =
            serde_json::json!({ "error": "a JSON body with a non-empty \"reason\" is required" });
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    };
    match state.health.drain(&reason) {
        Ok(()) => Json(state.health.snapshot()).into_response(),
        Err(e) => persist_failed(e),
    }
}

/// `POST /api/v1/undrain`: ends manual maintenance.
async fn undrain(State(state): State<Arc<AppState>>) -> Response {
    match state.health.undrain() {
        Ok(()) => Json(state.health.snapshot()).into_response(),
        Err(e) => persist_failed(e),
    }
}

/// `POST /api/v1/reload`: re-reads the config's rule files as SIGHUP does, and answers
/// with the outcome: 200 and the number of rules, 422 and the errors (the running rules
/// stay), or 503 when the tick thread has not got to it in time (it still will).
async fn reload(State(state): State<Arc<AppState>>) -> Response {
    let number = state.reloads.request();
    match state.reloads.wait(number, state.reload_wait).await {
        Some(Ok(rules)) => {
            Json(serde_json::json!({ "status": "reloaded", "rules": rules })).into_response()
        }
        Some(Err(errors)) => {
            let body = serde_json::json!({ "status": "refused", "errors": errors });
            (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
        }
        None => {
            let body =
                serde_json::json!({ "error": "asked for; the reload happens at the next tick" });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

fn persist_failed(e: std::io::Error) -> Response {
    tracing::error!(error = %e, "cannot persist the maintenance state");
    let body = serde_json::json!({ "error": format!("cannot persist the maintenance state: {e}") });
    (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
}

/// `POST /api/v1/heartbeat/{name}`: a beat from a local service. The body is ignored (and
/// bounded); unknown names get 404.
async fn heartbeat(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    _body: Bytes,
) -> Response {
    if state.heartbeats.beat(&name) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        let body = serde_json::json!({ "error": format!("no push heartbeat named `{name}`") });
        (StatusCode::NOT_FOUND, Json(body)).into_response()
    }
}

/// Pending and firing alerts, in the shape of Prometheus's `GET /api/v1/alerts`.
async fn alerts(State(state): State<Arc<AppState>>) -> Response {
    let alerts: Vec<AlertView> = state
        .alerts
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(AlertView::new)
        .collect();
    Json(serde_json::json!({ "status": "success", "data": { "alerts": alerts } })).into_response()
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret!"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
