//! The HTTP surface: `/metrics`, `/healthz` and `/api/v1/alerts`.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{rules::live::AlertsView, store::Store};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the handlers read.
pub struct AppState {
    pub store: Arc<Store>,
    /// Pending and firing alerts, as of the last tick.
    pub alerts: AlertsView,
}

/// The agent's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/v1/alerts", get(alerts))
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

/// Pending and firing alerts, in the shape of Prometheus's `GET /api/v1/alerts`.
async fn alerts(State(state): State<Arc<AppState>>) -> Response {
    let alerts = match state.alerts.read() {
        Ok(a) => a.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    Json(serde_json::json!({ "status": "success", "data": { "alerts": alerts } })).into_response()
}
