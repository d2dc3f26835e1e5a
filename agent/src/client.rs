//! `nodewatch drain`, `undrain`, `status` and `reload`: requests to a running agent's HTTP
//! API, through the agent's one HTTP client ([`crate::httpc`]), so an agent behind TLS and
//! basic auth is reached as amtool reaches Alertmanager (`--addr https://...`,
//! `--http.config.file`).

use std::{path::Path, time::Duration};

use bytes::Bytes;

use crate::httpc::{self, HttpConfig};

/// How long one request to the agent may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {addr}: {source} (is it running? --addr)")]
    Connect {
        addr: String,
        #[source]
        source: httpc::HttpError,
    },
    #[error("talking to the agent at {addr}: {message}")]
    Io { addr: String, message: String },
    #[error("the agent answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("reading {path}: {source}")]
    Token {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

/// The agent's base URL: `host:port` means `http://host:port`.
pub fn base_url(addr: &str) -> Result<http::Uri, ClientError> {
    let text = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let uri: http::Uri = text
        .parse()
        .map_err(|e| ClientError::Usage(format!("--addr {addr}: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(uri),
        _ => Err(ClientError::Usage(format!(
            "--addr {addr}: use host:port, http://host:port or https://host:port"
        ))),
    }
}

/// One request; returns the JSON body of a 2xx answer. `http_config` is the
/// `--http.config.file` (TLS, basic auth); `token_file` the agent's drain token.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    token_file: Option<&Path>,
    http_config: Option<&HttpConfig>,
) -> Result<serde_json::Value, ClientError> {
    let base = base_url(addr)?;
    let uri: http::Uri = format!("{}{path}", base.to_string().trim_end_matches('/'))
        .parse()
        .map_err(|e| ClientError::Usage(format!("--addr {addr}: {e}")))?;
    let config = http_config.cloned().unwrap_or_default();
    let mut headers = vec![("content-type", "application/json".to_string())];
    if let Some(file) = token_file {
        if config.basic_auth.is_some() || config.authorization.is_some() {
            return Err(ClientError::Usage(
                "--token-file and the credentials of --http.config.file both set the Authorization header: use one".into(),
            ));
        }
        let token = std::fs::read_to_string(file).map_err(|source| ClientError::Token {
            path: file.display().to_string(),
            source,
        })?;
        headers.push(("authorization", format!("Bearer {}", token.trim())));
    }
    let client = httpc::Client::new(&config).map_err(|e| ClientError::Usage(e.to_string()))?;
    let body = Bytes::from(body.map(|b| b.to_string()).unwrap_or_default());
    let method: http::Method = method.parse().expect("the CLI's own methods");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Io {
            addr: addr.to_string(),
            message: e.to_string(),
        })?;
    let answer = runtime
        .block_on(async {
            tokio::time::timeout(TIMEOUT, client.request(method, &uri, &headers, body)).await
        })
        .map_err(|_| ClientError::Io {
            addr: addr.to_string(),
            message: format!("no answer within {TIMEOUT:?}"),
        })?
        .map_err(|e| match e {
            httpc::HttpError::Body(m) | httpc::HttpError::Protocol(m) => ClientError::Io {
                addr: addr.to_string(),
                message: m,
            },
            source => ClientError::Connect {
                addr: addr.to_string(),
                source,
            },
        })?;
    let text = String::from_utf8_lossy(&answer.body);
    let json = serde_json::from_str(text.trim()).unwrap_or(serde_json::Value::Null);
    if !(200..300).contains(&answer.status) {
        let message = json
            .get("error")
            .and_then(|e| e.as_str())
            .map_or_else(|| text.trim().to_string(), str::to_string);
        return Err(ClientError::Refused {
            status: answer.status,
            body: message,
        });
    }
    Ok(json)
}

/// Human-readable text of an agent's `/api/v1/status` answer.
pub fn describe_status(v: &serde_json::Value) -> String {
    let health = &v["health"];
    let status = health["status"].as_str().unwrap_or("unknown");
    let mut out = match health["weight"].as_u64() {
        Some(w) if status == "degraded" => format!("node: degraded (load-balancer weight {w}%)\n"),
        _ => format!("node: {status}\n"),
    };
    for r in health["reasons"].as_array().into_iter().flatten() {
        out.push_str(&format!("  reason: {}\n", r.as_str().unwrap_or_default()));
    }
    if let Some(m) = health["maintenance"].as_object() {
        out.push_str(&format!(
            "maintenance: {}\n",
            m.get("reason").and_then(|r| r.as_str()).unwrap_or_default()
        ));
    }
    let alerts = v["alerts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    out.push_str(&format!("firing alerts: {}\n", alerts.len()));
    for a in alerts {
        let labels = &a["labels"];
        out.push_str("  ");
        out.push_str(labels["alertname"].as_str().unwrap_or("?"));
        // Which container (and pod) it is about, up front; host alerts have neither.
        for key in ["container", "pod"] {
            if let Some(v) = labels[key].as_str() {
                out.push_str(&format!(" {key}={v}"));
            }
        }
        out.push_str(&format!(" {labels}\n"));
    }
    out.push_str("probes:\n");
    for p in v["probes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<18} {}\n",
            p["probe"].as_str().unwrap_or("?"),
            p["mode"].as_str().unwrap_or("?")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::describe_status;

    fn status(alerts: serde_json::Value) -> serde_json::Value {
        json!({
            "health": { "status": "draining", "reasons": ["NodewatchListenOverflow"] },
            "alerts": alerts,
            "probes": [{ "probe": "accept_queue", "mode": "ebpf" }],
        })
    }

    #[test]
    fn a_degraded_node_shows_its_weight() {
        let v = json!({
            "health": { "status": "degraded", "weight": 50, "reasons": ["alert GpuHot (degraded)"] },
            "alerts": [],
            "probes": [],
        });
        assert_eq!(
            describe_status(&v),
            "node: degraded (load-balancer weight 50%)\n  reason: alert GpuHot (degraded)\nfiring alerts: 0\nprobes:\n"
        );
    }

    #[test]
    fn an_alert_of_a_host_process_reads_as_its_labels() {
        let v = status(json!([{
            "labels": { "alertname": "NodewatchListenOverflow", "port": "8000", "severity": "critical" },
        }]));
        assert_eq!(
            describe_status(&v),
            "node: draining\n  reason: NodewatchListenOverflow\nfiring alerts: 1\n  NodewatchListenOverflow {\"alertname\":\"NodewatchListenOverflow\",\"port\":\"8000\",\"severity\":\"critical\"}\nprobes:\n  accept_queue       ebpf\n"
        );
    }

    #[test]
    fn an_alert_of_a_container_names_it_and_its_pod() {
        let v = status(json!([
            {
                "labels": {
                    "alertname": "NodewatchListenOverflow",
                    "container": "abc123def456",
                    "pod": "prod/web-0",
                    "port": "8000",
                },
            },
            {
                "labels": {
                    "alertname": "NodewatchGpuIoctlHung",
                    "container": "0123456789ab",
                    "device": "/dev/nvidia0",
                },
            },
        ]));
        let text = describe_status(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], "firing alerts: 2");
        assert_eq!(
            lines[3],
            "  NodewatchListenOverflow container=abc123def456 pod=prod/web-0 {\"alertname\":\"NodewatchListenOverflow\",\"container\":\"abc123def456\",\"pod\":\"prod/web-0\",\"port\":\"8000\"}"
        );
        assert!(
            lines[4].starts_with("  NodewatchGpuIoctlHung container=0123456789ab {"),
            "no pod outside Kubernetes: {}",
            lines[4]
        );
    }
}
