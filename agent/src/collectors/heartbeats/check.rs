//! One HTTP or TCP check: its latency on success, or why it failed.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpStream;

use super::config::Check;
use crate::httpc::{self, HttpError};

/// Why a check failed; `reason()` is the `reason` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the timeout.
    Timeout,
    /// The connection was refused: nothing listens.
    Refused,
    /// The TLS handshake failed (unknown CA, expired certificate, hostname mismatch).
    Tls(String),
    /// An unexpected HTTP status.
    Status(u16),
    /// The body did not match, or was too large.
    Body(String),
    /// Any other error (name resolution, reset, malformed response).
    Error(String),
    /// A push heartbeat's TTL passed without a beat.
    Expired,
}

impl Failure {
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Refused => "refused",
            Failure::Tls(_) => "tls",
            Failure::Status(_) => "status",
            Failure::Body(_) => "body",
            Failure::Error(_) => "error",
            Failure::Expired => "expired",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("no answer within the timeout"),
            Failure::Refused => f.write_str("connection refused"),
            Failure::Tls(m) => write!(f, "TLS: {m}"),
            Failure::Status(s) => write!(f, "unexpected status {s}"),
            Failure::Body(m) => write!(f, "body: {m}"),
            Failure::Error(m) => f.write_str(m),
            Failure::Expired => f.write_str("no beat within the TTL"),
        }
    }
}

/// Runs one check of an HTTP or TCP target, bounded by `timeout` as a whole.
pub async fn run(check: &Check, timeout: Duration) -> Result<Duration, Failure> {
    let started = Instant::now();
    let attempt = async {
        match check {
            Check::Http {
                uri,
                client,
                expect_status,
                body_contains,
                body_regex,
            } => {
                http(
                    client,
                    uri,
                    expect_status,
                    body_contains.as_deref(),
                    body_regex.as_ref(),
                )
                .await
            }
            Check::Tcp { addr } => connect(addr).await.map(drop),
            Check::Push { .. } => Ok(()),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(f)) => Err(f),
        Err(_) => Err(Failure::Timeout),
    }
}

async fn connect(addr: &str) -> Result<TcpStream, Failure> {
    TcpStream::connect(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Failure::Refused,
        _ => Failure::Error(format!("connect {addr}: {e}")),
    })
}

async fn http(
    client: &httpc::Client,
    uri: &http::Uri,
    expect_status: &[u16],
    body_contains: Option<&str>,
    body_regex: Option<&regex::Regex>,
) -> Result<(), Failure> {
    let answer = client
        .request(http::Method::GET, uri, &[], Bytes::new())
        .await
        .map_err(|e| match e {
            HttpError::Refused => Failure::Refused,
            HttpError::Tls(m) => Failure::Tls(m),
            HttpError::Body(m) => Failure::Body(format!("reading the body: {m}")),
            HttpError::TooLarge(n) => Failure::Body(format!("larger than {n} bytes")),
            other => Failure::Error(other.to_string()),
        })?;
    let status = answer.status;
    let status_ok = if expect_status.is_empty() {
        (200..300).contains(&status)
    } else {
        expect_status.contains(&status)
    };
    if !status_ok {
        return Err(Failure::Status(status));
    }
    let text = String::from_utf8_lossy(&answer.body);
    if let Some(needle) = body_contains
        && !text.contains(needle)
    {
        return Err(Failure::Body(format!("does not contain {needle:?}")));
    }
    if let Some(re) = body_regex
        && !re.is_match(&text)
    {
        return Err(Failure::Body(format!("does not match /{re}/")));
    }
    Ok(())
}
