//! The HTTP server: `/metrics`, `/health` and `/ready` on HTTP/1.1
//! (hyper), one task per connection.
//!
//! A slow or stuck client holds only its own task: a client that sends no
//! complete request head within [`HEADER_TIMEOUT`] is dropped, no
//! connection lives longer than [`CONNECTION_LIFETIME`] (a reader that
//! never drains its response), and past [`MAX_CONNECTIONS`] new connections
//! are closed at once rather than queued. The metrics are rendered into a
//! string before any byte is written, so no lock is held while a client
//! reads.

use super::metrics;
use crate::service::monitor::Monitor;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Time a client has to send a whole request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection is kept, whatever it does.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

const TEXT: &str = "text/plain; charset=utf-8";

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The address is in use, not ours, or malformed for this host.
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A bound, not yet serving, metrics and health server. Binding comes
/// first so a busy port is an error at start, before anything else runs.
#[derive(Debug)]
pub struct OpsServer {
    listener: TcpListener,
    addr: SocketAddr,
}

impl OpsServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> Result<Self, OpsError> {
        let bind_error = |source| OpsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self { listener, addr })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `monitor`'s metrics and health until `cancel`.
    pub fn spawn(self, monitor: Monitor, cancel: CancellationToken) -> JoinHandle<()> {
        tracing::info!(addr = %self.addr, "serving /metrics, /health and /ready");
        let state = Arc::new(State {
            registry: metrics::registry(&monitor),
            monitor,
        });
        tokio::spawn(accept(self.listener, state, cancel))
    }
}

struct State {
    registry: Registry,
    monitor: Monitor,
}

async fn accept(listener: TcpListener, state: Arc<State>, cancel: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little
                    // instead of spinning.
                    tracing::warn!(%error, "metrics server: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics server: too many connections; closing one");
            continue;
        };
        let state = state.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &req).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = cancel.cancelled() => {}
                served = tokio::time::timeout(CONNECTION_LIFETIME, connection) => {
                    if let Ok(Err(error)) = served {
                        tracing::debug!(%peer, %error, "metrics connection ended");
                    }
                }
            }
        });
    }
}

async fn respond(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            metrics::render(&state.registry),
        ),
        "/health" => status(state.monitor.live()),
        "/ready" => status(state.monitor.ready().await),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics, /health or /ready\n".into(),
        ),
    }
}

/// 200 `ok`, or 503 with the reason on one line.
fn status(result: Result<(), String>) -> Response<Full<Bytes>> {
    match result {
        Ok(()) => reply(StatusCode::OK, TEXT, "ok\n".into()),
        Err(reason) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{reason}\n")),
    }
}

fn reply(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
