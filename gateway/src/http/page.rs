//! The enrollment page: one HTML document, its stylesheet and its script, compiled into the
//! binary so the gateway serves a usable front end with no build step and nothing fetched from
//! elsewhere. The Content-Security-Policy allows this origin only, so an injected script or a
//! stray third-party resource cannot run, and `nosniff` keeps each file the type we say it is.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utility::http::ProblemPath;

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const APP_CSS: &str = include_str!("../../assets/app.css");
const APP_JS: &str = include_str!("../../assets/app.js");

/// Same origin for everything; no inline script or style; the page may not be framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; \
     frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // The assets change with the binary, not between requests: revalidate rather than cache blind.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /`.
pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /assets/{file}`: the stylesheet and the script; anything else is a problem+json 404.
pub(super) async fn assets(ProblemPath(file): ProblemPath<String>) -> Response {
    match file.as_str() {
        "app.css" => asset("text/css; charset=utf-8", APP_CSS),
        "app.js" => asset("text/javascript; charset=utf-8", APP_JS),
        _ => utility::http::problem::not_found_route().await.into_response(),
    }
}
