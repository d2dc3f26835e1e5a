//! A small HTTP/1.1 client over hyper for heartbeats and notifiers: one connection per
//! request, bounded in time (by the caller's timeout) and in response size.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The most of a response body that is read.
pub const MAX_BODY: usize = 1 << 20;

/// Why a request got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connection refused")]
    Refused,
    #[error("connect {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Protocol(String),
    #[error("body: {0}")]
    Body(String),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
}

/// An HTTP answer.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// Sends one request to an `http://` URI. The caller bounds it with a timeout; dropping the
/// future closes the connection.
pub async fn request(
    method: http::Method,
    uri: &http::Uri,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<Answer, HttpError> {
    request_limited(method, uri, headers, body, MAX_BODY).await
}

/// [`request`], reading at most `max_body` bytes of the response body.
pub async fn request_limited(
    method: http::Method,
    uri: &http::Uri,
    headers: &[(&str, String)],
    body: Bytes,
    max_body: usize,
) -> Result<Answer, HttpError> {
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(80);
    // A bracketed IPv6 literal connects without its brackets.
    let target = format!(
        "{}:{port}",
        host.trim_start_matches('[').trim_end_matches(']')
    );
    let stream = TcpStream::connect(&target)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => HttpError::Refused,
            _ => HttpError::Connect {
                addr: target.clone(),
                source: e,
            },
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| HttpError::Protocol(format!("HTTP handshake: {e}")))?;
    // The connection task ends with this request, whatever happens to it.
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, authority)
        .header(
            http::header::USER_AGENT,
            concat!("nodewatch/", env!("CARGO_PKG_VERSION")),
        )
        .header(http::header::CONNECTION, "close");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| HttpError::Protocol(format!("request: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| HttpError::Protocol(format!("HTTP: {e}")))?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                HttpError::TooLarge(max_body)
            } else {
                HttpError::Body(e.to_string())
            }
        })?
        .to_bytes();
    Ok(Answer { status, body })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
