//! The enrollment page: one HTML document, its stylesheet and its script, compiled into the
//! binary so the gateway serves a usable front end with no build step and nothing fetched from
//! elsewhere. The Content-Security-Policy allows this origin only, so an injected script or a
//! stray third-party resource cannot run, and `nosniff` keeps each file the type we say it is.

use crate::saga::Status;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use std::sync::LazyLock;
use utility::domain::{CustomerName, Email};
use utility::http::{Problem, ProblemPath};

const INDEX_HTML: &str = include_str!("../../assets/index.html");

/// The page as served: the statuses (label, terminal) and the fields' limits are written in from
/// their declarations, so the page cannot drift from the saga or the validation.
static INDEX: LazyLock<String> = LazyLock::new(|| {
    let statuses: serde_json::Map<String, serde_json::Value> = Status::all()
        .iter()
        .map(|s| {
            let entry = serde_json::json!({"label": s.label(), "terminal": s.is_terminal()});
            (s.name().to_owned(), entry)
        })
        .collect();
    // JSON inside a <script> element: no `<` may appear, or `</script>` could end it early.
    let statuses = serde_json::Value::Object(statuses).to_string().replace('<', "\\u003c");
    INDEX_HTML
        .replace("{{statuses}}", &statuses)
        .replace("{{name_max_chars}}", &CustomerName::MAX_CHARS.to_string())
        .replace("{{email_max_chars}}", &Email::MAX_CHARS.to_string())
});
const APP_CSS: &str = include_str!("../../assets/app.css");
const APP_JS: &str = include_str!("../../assets/app.js");
const CONFIRM_JS: &str = include_str!("../../assets/confirm.js");

/// Same origin for everything; no inline script or style; the page may not be framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; \
     frame-ancestors 'none'";

/// A document of this origin (the page, its assets, `/docs`) with the headers that keep it ours.
pub(super) fn asset(content_type: &'static str, body: impl IntoResponse) -> Response {
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

/// The enrollment page.
///
/// A form that submits an enrollment and shows its saga live.
#[utoipa::path(
    get,
    path = "/",
    tag = "page",
    operation_id = "page",
    responses((status = 200, description = "The page.", body = String, content_type = "text/html")),
)]
pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX.as_str())
}

/// The files under `/assets/`, as the API document names them.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) enum Asset {
    #[serde(rename = "app.css")]
    Stylesheet,
    #[serde(rename = "app.js")]
    Script,
    #[serde(rename = "confirm.js")]
    ConfirmationScript,
}

/// The pages' stylesheet (`app.css`) and scripts (`app.js`, and `confirm.js` of `/confirm`).
#[utoipa::path(
    get,
    path = "/assets/{file}",
    tag = "page",
    operation_id = "pageAsset",
    params(("file" = Asset, Path, description = "`app.css`, `app.js` or `confirm.js`.")),
    responses(
        (status = 200, description = "The file.", content(
            (String = "text/css"),
            (String = "text/javascript"),
        )),
        (status = 404, description = "No such file.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(super) async fn assets(ProblemPath(file): ProblemPath<String>) -> Response {
    match file.as_str() {
        "app.css" => asset("text/css; charset=utf-8", APP_CSS),
        "app.js" => asset("text/javascript; charset=utf-8", APP_JS),
        "confirm.js" => asset("text/javascript; charset=utf-8", CONFIRM_JS),
        _ => utility::http::problem::not_found_route().await.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_carries_every_status_and_no_placeholder() {
        assert!(!INDEX.contains("{{"), "a placeholder was left in the page");
        let start = INDEX
            .find(r#"<script id="statuses" type="application/json">"#)
            .expect("statuses block");
        let json = &INDEX[start..];
        let json = &json[json.find('>').unwrap() + 1..json.find("</script>").unwrap()];
        let statuses: serde_json::Value = serde_json::from_str(json).expect("the block is JSON");
        for status in Status::all() {
            assert_eq!(statuses[status.name()]["label"], status.label());
            assert_eq!(statuses[status.name()]["terminal"], status.is_terminal());
        }
        assert!(INDEX.contains(&format!(r#"maxlength="{}""#, CustomerName::MAX_CHARS)));
    }
}
