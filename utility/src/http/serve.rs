//! The HTTP server under every service: hyper's HTTP/1 connection with a timer, in an accept loop
//! with a cap on open connections.
//!
//! `axum::serve` builds its connections without a timer, and hyper then silently drops its own
//! header-read timeout: a client trickling header bytes, or a keep-alive connection left idle,
//! held a task, a parse buffer and a file descriptor for ever, outside the request limits (which
//! count requests, and only once their headers are in). Here:
//!
//! - the header-read timeout ([`ConnectionLimits::header_read`]) runs from the moment a
//!   connection is ready for a request until that request's headers are complete. hyper starts it
//!   as soon as the connection waits for a request, so it is also how long a keep-alive
//!   connection may stay idle; past it the connection is closed (a request whose headers were
//!   half sent gets a bare 408 first);
//! - the read buffer stops at [`MAX_BUF_BYTES`] (hyper's default is about 400 KiB), so a header
//!   section above it is refused with 431 before it grows;
//! - at most [`ConnectionLimits::max_connections`] connections are open at once: the next one is
//!   accepted when one closes, and meanwhile waits in the kernel's backlog, costing this process
//!   nothing.
//!
//! Stopping: each connection finishes the request in flight and closes; idle ones close at once.

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Largest read buffer of a connection: more than the 16 KiB of headers
/// [`super::RequestLimits`] accepts, far less than hyper's default.
pub const MAX_BUF_BYTES: usize = 32 * 1024;

/// The connection-level bounds of a listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// From a connection being ready for a request to that request's headers being in; also the
    /// longest a keep-alive connection stays idle.
    pub header_read: Duration,
    /// Connections open at once, at most.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` is cancelled and every connection has closed.
/// Handlers see the peer address as [`ConnectInfo`]`<SocketAddr>`.
pub async fn serve(listener: TcpListener, router: Router, limits: ConnectionLimits, shutdown: CancellationToken) {
    let places = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(MAX_BUF_BYTES);
    loop {
        let place = tokio::select! {
            () = shutdown.cancelled() => break,
            place = places.clone().acquire_owned() => place.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, typically: wait rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Reap the finished connections so the set does not grow with the listener's age.
        while connections.try_join_next().is_some() {}
        let service = router.clone().map_request(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        });
        let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let stop = shutdown.clone();
        connections.spawn(async move {
            let _place = place;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => return log_end(result),
                () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            log_end(connection.await);
        });
    }
    while connections.join_next().await.is_some() {}
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended");
    }
}
