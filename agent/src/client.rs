//! `nodewatch drain`, `undrain` and `status`: requests to a running agent's HTTP API.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    path::Path,
    time::Duration,
};

/// Why a request to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {addr}: {source} (is it running? --addr)")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent at {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("reading {path}: {source}")]
    Token {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected answer: {0}")]
    Malformed(String),
}

/// One request; returns the JSON body of a 2xx answer (503 too, for `/healthz`).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    token_file: Option<&Path>,
) -> Result<serde_json::Value, ClientError> {
    let io = |source| ClientError::Io {
        addr: addr.to_string(),
        source,
    };
    let target: SocketAddr = addr
        .to_socket_addrs()
        .and_then(|mut a| a.next().ok_or_else(|| std::io::Error::other("no address")))
        .map_err(|source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).map_err(|source| {
        ClientError::Connect {
            addr: addr.to_string(),
            source,
        }
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(file) = token_file {
        let token = std::fs::read_to_string(file).map_err(|source| ClientError::Token {
            path: file.display().to_string(),
            source,
        })?;
        head.push_str(&format!("Authorization: Bearer {}\r\n", token.trim()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).map_err(io)?;
    s.write_all(body.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Malformed(raw.to_string()))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Malformed(head.to_string()))?;
    // axum answers with Content-Length, never chunked, for these small JSON bodies.
    let json = serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null);
    if !(200..300).contains(&status) {
        let message = json
            .get("error")
            .and_then(|e| e.as_str())
            .map_or_else(|| body.trim().to_string(), str::to_string);
        return Err(ClientError::Refused {
            status,
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
