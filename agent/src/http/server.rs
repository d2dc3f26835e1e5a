//! Serving the HTTP API so that no client can hurt the agent: at most `MAX_CONNECTIONS` at
//! once, request headers within `HEADER_TIMEOUT` and `MAX_HEADER_BYTES`, each request answered
//! or abandoned within `REQUEST_TIMEOUT` (a slow body included). Every connection is a task,
//! not a thread, so a slow client holds no worker.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::Semaphore,
};
use tower::ServiceExt;

use super::web::TlsServer;

/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send a request's headers (also the keep-alive idle limit).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a request may take from its headers to the end of the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of request headers read (hyper answers 431 beyond).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most request headers (hyper answers 431 beyond).
pub const MAX_HEADERS: usize = 64;

/// Serves `app` on `listener` until `shutdown` completes, then lets open requests finish.
/// With `tls`, each connection is a TLS one (its handshake within `HEADER_TIMEOUT`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<TlsServer>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let warned_full = Arc::new(AtomicBool::new(false));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, most likely: wait instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if !warned_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max = MAX_CONNECTIONS,
                    "too many HTTP connections; closing new ones"
                );
            }
            drop(stream);
            continue;
        };
        warned_full.store(false, Ordering::Relaxed);
        let app = app.clone();
        let tls = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, peer, app).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_connection(s, peer, app).await,
                        // A scanner, a client that does not trust us, or plain HTTP: its own
                        // side reports it.
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    Ok(())
}

/// Serves the requests of one connection, from `peer`, with the limits above; returns when
/// the client is gone or broke the protocol. The fuzz target `http` drives it with raw bytes.
pub async fn serve_connection<IO>(stream: IO, peer: SocketAddr, app: Router)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            let answer =
                tokio::time::timeout(REQUEST_TIMEOUT, app.oneshot(req.map(axum::body::Body::new)))
                    .await;
            Ok::<_, std::convert::Infallible>(match answer {
                Ok(Ok(resp)) => resp,
                Ok(Err(never)) => match never {},
                Err(_) => axum::response::IntoResponse::into_response((
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    "request took too long\n",
                )),
            })
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .max_headers(MAX_HEADERS);
    let _ = builder
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
