//! The one place a scrape calls the HTTP client: a GET that asks for OpenMetrics first, as
//! Prometheus asks, and gives back the body of a 200 or why there was none.

use std::time::Duration;

use bytes::Bytes;

use super::Failure;
use crate::httpc::{Client, HttpError};

/// What Prometheus 3 sends as `Accept`: OpenMetrics first, then the text format, names
/// unescaped. Without `escaping=allow-utf-8`, Python's prometheus_client (vLLM's, 0.22 and
/// later) writes vLLM's `vllm:` sample names as `vllm_` in OpenMetrics while its `# TYPE` lines
/// keep the colon.
const ACCEPT: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";

/// GETs `url` with the target's client (its `http_config`), reading at most `max_body`
/// bytes; the caller bounds it in time (`timeout` is told to the target, as Prometheus tells
/// it).
pub async fn fetch(
    client: &Client,
    url: &http::Uri,
    timeout: Duration,
    max_body: usize,
) -> Result<Bytes, Failure> {
    let headers = [
        ("accept", ACCEPT.to_string()),
        (
            "x-prometheus-scrape-timeout-seconds",
            format!("{}", timeout.as_secs_f64()),
        ),
    ];
    let answer = client
        .request_limited(http::Method::GET, url, &headers, Bytes::new(), max_body)
        .await
        .map_err(|e| match e {
            HttpError::Refused => Failure::Refused,
            HttpError::TooLarge(n) => Failure::BodySize(n),
            HttpError::Tls(cause) => Failure::Tls(cause),
            e => Failure::Error(e.to_string()),
        })?;
    if answer.status != 200 {
        return Err(Failure::Status(answer.status));
    }
    Ok(answer.body)
}
