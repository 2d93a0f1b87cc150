//! The HTTP APIs in process: each service's real router (the one it serves, with the same
//! layers) over a fresh database, and no bus. The HTTP contract needs nothing more, so these tests
//! need no LocalStack: requests go through `Router::oneshot`, or through a real socket where the
//! test is about the wire (raw bytes, slow bodies, connection handling).

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// An answer read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    /// The body as text (lossy UTF-8), for answers that are not JSON.
    pub text: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json answer with `status` and returns its body.
    pub fn problem(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.body
        );
        assert_eq!(self.body["status"], status, "{}", self.body);
        assert!(
            self.body["title"].is_string() && self.body["detail"].is_string(),
            "{}",
            self.body
        );
        &self.body
    }
}

/// Sends `request` to `router` in process.
pub async fn call(router: &Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.expect("routers are infallible");
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// The gateway's API over a fresh database.
#[cfg(feature = "services")]
pub struct GatewayApi {
    pub router: Router,
    pub pool: sqlx::AnyPool,
    pub config: gateway::Config,
    _db: crate::TestDb,
}

#[cfg(feature = "services")]
impl GatewayApi {
    /// With [`crate::gateway_config`].
    pub async fn start(backend: crate::Backend) -> Self {
        Self::with_config(backend, crate::gateway_config()).await
    }

    pub async fn with_config(backend: crate::Backend, config: gateway::Config) -> Self {
        crate::init_logs();
        let db = crate::TestDb::new(backend, "gateway").await;
        let pool = utility::storage::connect(&db.url, gateway::migrations())
            .await
            .expect("gateway database");
        let notify = std::sync::Arc::new(tokio::sync::Notify::new());
        let router = gateway::router(&config, pool.clone(), notify).expect("gateway router");
        Self {
            router,
            pool,
            config,
            _db: db,
        }
    }

    pub async fn call(&self, request: Request<Body>) -> Answer {
        call(&self.router, request).await
    }
}

/// `router` served on a loopback port of its own, for tests that need a real connection.
pub struct Served {
    pub port: u16,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Served {
    /// With the connection limits a service has by default.
    pub async fn start(router: Router) -> Self {
        let limits = utility::runtime::config::CommonConfig::new(([127, 0, 0, 1], 0).into(), "").connection_limits();
        Self::with_limits(router, limits).await
    }

    /// Served by the services' own server ([`utility::http::serve`]) with `limits`.
    pub async fn with_limits(router: Router, limits: utility::http::ConnectionLimits) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(utility::http::serve(listener, router, limits, stop.clone()));
        Self { port, stop, handle }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(15), self.handle).await;
    }
}
