//! The one outbound HTTP client: notifiers, heartbeats, fleet queries, the local scrape and the
//! CLI all send through [`Client`] (reqwest on rustls, no OpenSSL). A client is made from an
//! [`HttpConfig`] (Prometheus's `http_config`: basic auth, authorization, TLS, proxy,
//! redirects); [`request`] uses a shared client without one.
//!
//! What every request keeps: the response body is read up to [`MAX_BODY`]; the caller bounds
//! the time (`tokio::time::timeout`; dropping the future closes the connection); each request
//! opens its own connection, so a heartbeat measures the connect and tells "connection refused"
//! ([`HttpError::Refused`]) apart; a TLS failure ([`HttpError::Tls`]) names its cause (unknown
//! CA, expired certificate, hostname mismatch, a certificate the server refused).
//!
//! Credentials files (`password_file`, `credentials_file`) are read at each request, and TLS
//! files (CA, client certificate and key) again whenever one of them changes, so rotated
//! secrets are picked up without a restart.

pub mod config;
pub mod tls;

use std::{
    sync::{Mutex, OnceLock},
    time::SystemTime,
};

use bytes::Bytes;

pub use self::config::HttpConfig;

/// The most of a response body that is read.
pub const MAX_BODY: usize = 1 << 20;

/// Why a request got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connection refused")]
    Refused,
    /// The TLS handshake failed; the text names the cause.
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connect {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("{0}")]
    Protocol(String),
    #[error("body: {0}")]
    Body(String),
    /// The response body was longer than the caller's limit.
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// A file of the client's configuration (a password, a certificate) could not be used.
    #[error("{0}")]
    Config(String),
}

/// An HTTP answer.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// The stamps of the TLS files a built client was made from: rebuilt when one changes.
type Stamps = Vec<Option<SystemTime>>;

/// An HTTP client with one `http_config`.
pub struct Client {
    config: HttpConfig,
    built: Mutex<(Stamps, reqwest::Client)>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .finish()
    }
}

impl Client {
    /// A client for `config`, reading its TLS files now.
    pub fn new(config: &HttpConfig) -> Result<Self, HttpError> {
        let stamps = config.tls_config.stamps();
        let client = build(config)?;
        Ok(Self {
            config: config.clone(),
            built: Mutex::new((stamps, client)),
        })
    }

    /// The shared client of requests without an `http_config`.
    pub fn plain() -> &'static Client {
        static PLAIN: OnceLock<Client> = OnceLock::new();
        PLAIN.get_or_init(|| {
            Client::new(&HttpConfig::default()).expect("the default client has no files to read")
        })
    }

    /// The reqwest client, rebuilt first when a TLS file changed since it was built.
    fn current(&self) -> Result<reqwest::Client, HttpError> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        let stamps = self.config.tls_config.stamps();
        if stamps != built.0 {
            let client = build(&self.config)?;
            tracing::info!(files = ?self.config.tls_config.files(), "TLS files changed; client reloaded");
            *built = (stamps, client);
        }
        Ok(built.1.clone())
    }

    /// Sends one request to an `http://` or `https://` URI, with this client's credentials.
    /// The caller bounds it with a timeout; dropping the future closes the connection.
    pub async fn request(
        &self,
        method: http::Method,
        uri: &http::Uri,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Answer, HttpError> {
        self.request_limited(method, uri, headers, body, MAX_BODY)
            .await
    }

    /// [`Client::request`], reading at most `max_body` bytes of the response body (more is
    /// [`HttpError::TooLarge`]).
    pub async fn request_limited(
        &self,
        method: http::Method,
        uri: &http::Uri,
        headers: &[(&str, String)],
        body: Bytes,
        max_body: usize,
    ) -> Result<Answer, HttpError> {
        let client = self.current()?;
        let mut req = client.request(method, uri.to_string()).body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(value) = self
            .config
            .authorization_header()
            .map_err(HttpError::Config)?
        {
            req = req.header(http::header::AUTHORIZATION, value);
        }
        let resp = req.send().await.map_err(|e| classify(&e, uri))?;
        let status = resp.status().as_u16();
        let body = read_limited(resp, max_body).await?;
        Ok(Answer { status, body })
    }
}

/// Sends one request with the shared client (no credentials, no TLS settings beyond the
/// system's roots).
pub async fn request(
    method: http::Method,
    uri: &http::Uri,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<Answer, HttpError> {
    Client::plain().request(method, uri, headers, body).await
}

/// [`request`], reading at most `max_body` bytes of the response body.
pub async fn request_limited(
    method: http::Method,
    uri: &http::Uri,
    headers: &[(&str, String)],
    body: Bytes,
    max_body: usize,
) -> Result<Answer, HttpError> {
    Client::plain()
        .request_limited(method, uri, headers, body, max_body)
        .await
}

/// Reads a body up to `max_body` bytes; more is an error, not a truncation.
async fn read_limited(mut resp: reqwest::Response, max_body: usize) -> Result<Bytes, HttpError> {
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| HttpError::Body(chain(&e)))? {
        if out.len() + chunk.len() > max_body {
            return Err(HttpError::TooLarge(max_body));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

fn build(config: &HttpConfig) -> Result<reqwest::Client, HttpError> {
    let tls = tls::client_config(&config.tls_config).map_err(HttpError::Config)?;
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .user_agent(concat!("nodewatch/", env!("CARGO_PKG_VERSION")))
        // One connection per request, as a check must see each connect.
        .pool_max_idle_per_host(0)
        .redirect(if config.follow_redirects {
            reqwest::redirect::Policy::limited(10)
        } else {
            reqwest::redirect::Policy::none()
        });
    if let Some(url) = &config.proxy_url {
        let mut proxy = reqwest::Proxy::all(url.as_str())
            .map_err(|e| HttpError::Config(format!("proxy_url {url}: {e}")))?;
        if let Some(list) = &config.no_proxy {
            proxy = proxy.no_proxy(reqwest::NoProxy::from_string(list));
        }
        b = b.proxy(proxy);
    } else if !config.proxy_from_environment {
        b = b.no_proxy();
    }
    b.build()
        .map_err(|e| HttpError::Config(format!("HTTP client: {}", chain(&e))))
}

/// The error's text with its causes, as one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

/// The rustls error or the I/O error an error is, looking through the boxes that hide a
/// cause's type (a `Box<dyn Error>`'s own `source()` skips the boxed error itself).
fn cause_of(err: &(dyn std::error::Error + 'static)) -> Option<HttpError> {
    if let Some(t) = err.downcast_ref::<rustls::Error>() {
        return Some(HttpError::Tls(tls::describe(t)));
    }
    if let Some(io) = err.downcast_ref::<std::io::Error>() {
        if io.kind() == std::io::ErrorKind::ConnectionRefused {
            return Some(HttpError::Refused);
        }
        if let Some(inner) = io.get_ref() {
            return cause_of(inner);
        }
    }
    None
}

/// Sorts a failed request into refused, TLS, connect or protocol.
fn classify(e: &reqwest::Error, uri: &http::Uri) -> HttpError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(found) = cause_of(err) {
            return found;
        }
        cur = err.source();
    }
    let text = chain(e);
    if e.is_connect() {
        HttpError::Connect {
            addr: uri.authority().map_or_else(String::new, |a| a.to_string()),
            message: text,
        }
    } else if e.is_body() || e.is_decode() {
        HttpError::Body(text)
    } else {
        HttpError::Protocol(text)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn uri(addr: std::net::SocketAddr) -> http::Uri {
        format!("http://{addr}/x").parse().unwrap()
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = request(http::Method::GET, &uri(addr), &[], Bytes::new())
            .await
            .err()
            .unwrap();
        assert!(matches!(e, HttpError::Refused), "{e:?}");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_an_error() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let n = MAX_BODY + 1;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n");
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&vec![b'x'; n]).await;
        });
        let e = request(http::Method::GET, &uri(addr), &[], Bytes::new())
            .await
            .err()
            .unwrap();
        assert!(matches!(e, HttpError::TooLarge(MAX_BODY)), "{e:?}");
    }
}
