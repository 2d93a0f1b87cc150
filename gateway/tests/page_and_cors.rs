//! The enrollment page's delivery and the API's cross-origin policy, in process: the page and its
//! assets come with a same-origin Content-Security-Policy and `nosniff`; an origin listed in
//! `CORS_ALLOWED_ORIGINS` gets CORS headers on a preflight and on a POST, any other origin none.

use axum::body::Body;
use axum::http::Request;
use serde_json::json;
use testkit::Backend;
use testkit::api::GatewayApi;
use tower::ServiceExt;

const ALLOWED: &str = "https://app.example.com";
const OTHER: &str = "https://evil.example.net";

async fn body_text(api: &GatewayApi, uri: &str) -> (u16, axum::http::HeaderMap, String) {
    let response = api
        .router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_served_same_origin_only() {
    let api = GatewayApi::with_config(Backend::Sqlite, testkit::gateway_config()).await;
    for (uri, content_type, needle) in [
        ("/", "text/html", "<form id=\"enroll\""),
        ("/assets/app.css", "text/css", "--error"),
        ("/assets/app.js", "text/javascript", "Idempotency-Key"),
    ] {
        let (status, headers, body) = body_text(&api, uri).await;
        assert_eq!(status, 200, "{uri}");
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(
            header("content-type").starts_with(content_type),
            "{uri}: {}",
            header("content-type")
        );
        let csp = header("content-security-policy");
        assert!(
            csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
            "{uri}: {csp}"
        );
        assert!(!csp.contains("unsafe") && !csp.contains("http"), "{uri}: {csp}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{uri}");
        assert!(body.contains(needle), "{uri}");
    }
    let (status, _, _) = body_text(&api, "/assets/nothing.js").await;
    assert_eq!(status, 404);
    // The page loads nothing from elsewhere.
    let (_, _, html) = body_text(&api, "/").await;
    assert!(!html.contains("://"), "the page must not reference another origin");
}

fn preflight(origin: &str) -> Request<Body> {
    Request::options("/api/enrollments")
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,idempotency-key,prefer")
        .body(Body::empty())
        .unwrap()
}

fn post(origin: &str) -> Request<Body> {
    let email = format!("cors-{}@example.com", uuid::Uuid::new_v4());
    Request::post("/api/enrollments")
        .header("origin", origin)
        .header("content-type", "application/json")
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .body(Body::from(json!({"name": "Cora", "email": email}).to_string()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_origin_gets_cors_headers_and_another_does_not() {
    let config = gateway::Config {
        cors_allowed_origins: format!("{ALLOWED}, https://second.example.org").parse().unwrap(),
        ..testkit::gateway_config()
    };
    let api = GatewayApi::with_config(Backend::Sqlite, config).await;

    let allowed = api.call(preflight(ALLOWED)).await;
    assert!(allowed.status.is_success(), "{}", allowed.status);
    assert_eq!(allowed.header("access-control-allow-origin"), Some(ALLOWED));
    let methods = allowed
        .header("access-control-allow-methods")
        .unwrap_or_default()
        .to_lowercase();
    assert!(methods.contains("post") && methods.contains("get"), "{methods}");
    let headers = allowed
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_lowercase();
    for name in ["content-type", "idempotency-key", "prefer", "last-event-id"] {
        assert!(headers.contains(name), "{name} not allowed: {headers}");
    }
    assert_eq!(allowed.header("access-control-allow-credentials"), None);

    let accepted = api.call(post(ALLOWED)).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert_eq!(accepted.header("access-control-allow-origin"), Some(ALLOWED));
    let exposed = accepted
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        exposed.contains("location") && exposed.contains("preference-applied"),
        "{exposed}"
    );

    let refused = api.call(preflight(OTHER)).await;
    // Without Access-Control-Allow-Origin naming it, a browser refuses the other origin's request
    // (the layer's other preflight headers are the same for everyone and grant nothing alone).
    assert_eq!(refused.header("access-control-allow-origin"), None);
    let other = api.call(post(OTHER)).await;
    assert_eq!(other.header("access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_configured_origins_no_cors_headers_are_sent() {
    let api = GatewayApi::with_config(Backend::Sqlite, testkit::gateway_config()).await;
    let answer = api.call(preflight(ALLOWED)).await;
    assert_eq!(answer.header("access-control-allow-origin"), None);
    let accepted = api.call(post(ALLOWED)).await;
    assert_eq!(accepted.status, 202);
    assert_eq!(accepted.header("access-control-allow-origin"), None);
}

#[test]
fn a_malformed_origin_is_refused() {
    // Refused when the configuration is loaded, naming CORS_ALLOWED_ORIGINS (utility's config
    // tests cover the naming).
    for bad in ["*", "app.example.com", "https://app.example.com/"] {
        let err = bad.parse::<gateway::Origin>().expect_err(bad);
        assert!(err.contains("is not an origin"), "{bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_is_sent_only_when_configured() {
    let plain = GatewayApi::with_config(Backend::Sqlite, testkit::gateway_config()).await;
    let (_, headers, _) = body_text(&plain, "/").await;
    assert_eq!(headers.get("strict-transport-security"), None);
    let https = GatewayApi::with_config(
        Backend::Sqlite,
        gateway::Config {
            hsts_max_age_seconds: 31_536_000,
            ..testkit::gateway_config()
        },
    )
    .await;
    let unknown = format!("/api/enrollments/{}", "A".repeat(22));
    for uri in ["/", "/assets/app.js", "/openapi.json", unknown.as_str()] {
        let (_, headers, _) = body_text(&https, uri).await;
        assert_eq!(
            headers.get("strict-transport-security").map(|v| v.to_str().unwrap()),
            Some("max-age=31536000"),
            "{uri}"
        );
    }
    let accepted = https.call(post(ALLOWED)).await;
    assert_eq!(accepted.status, 202);
    assert_eq!(accepted.header("strict-transport-security"), Some("max-age=31536000"));
}
