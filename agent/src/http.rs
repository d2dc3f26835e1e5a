//! The HTTP surface: `/metrics` and `/healthz`.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};

use crate::{heartbeats::Heartbeats, store::Store};

/// A push heartbeat needs no body; anything larger than this is refused (413).
const MAX_HEARTBEAT_BODY: usize = 1024;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the handlers read.
pub struct AppState {
    pub store: Arc<Store>,
    pub heartbeats: Heartbeats,
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
        .with_state(state)
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

/// Node health. Until alert rules drive it (issue 7/8), a running agent reports healthy.
async fn healthz() -> Response {
    let body = serde_json::json!({ "status": "healthy", "reasons": [] });
    (StatusCode::OK, Json(body)).into_response()
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
