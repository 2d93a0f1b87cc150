//! The API document: OpenAPI 3.1 at `GET /openapi.json`, and the same document as a readable
//! page at `GET /docs`.
//!
//! Nothing here is written by hand about a route: every operation comes from its handler's
//! `#[utoipa::path]` and is registered with the route itself (`routes!` in [`super::routes`]), and
//! every schema from the type the handler serialises. What this module adds is what no handler
//! states: the responses that the outer layers give on every route ([`layer_responses`]), the
//! operator token's security scheme, and the rendering of `/docs`, which is plain HTML built
//! once from the document (no script, nothing fetched from elsewhere, same CSP as the page).

use axum::Extension;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::fmt::Write;
use std::sync::Arc;
use utility::http::Problem;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr, Response as ApiResponse};
use utoipa::{Modify, PartialSchema, ToSchema};

/// The document's frame: title, description, tags and the health routes, which every service
/// shares and which the gateway mounts beside its own.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Enrollment gateway",
        description = "Submit a customer enrollment and follow its saga: the customer is enrolled, \
the enrollment bonus is posted, and a failure rolls the enrollment back.\n\n\
Every error is an RFC 9457 problem document (`application/problem+json`). Submissions are safe to \
retry with an `Idempotency-Key`. `Prefer: wait=N` holds an answer until the saga is terminal; \
`/api/enrollments/{id}/events` streams it.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(utility::http::health::health, utility::http::health::ready),
    // Schemas that only a parameter names (utoipa collects those of bodies and responses).
    components(schemas(Problem, super::page::Asset)),
    tags(
        (name = "enrollments", description = "Submitting an enrollment and following it. The enrollment id is the \
client's capability: what it shows names nobody."),
        (name = "operator", description = "For operators, with `Authorization: Bearer <OPERATOR_TOKEN>`. \
Not mounted (404) when the gateway has no operator token."),
        (name = "page", description = "The enrollment page and this document."),
        (name = "health", description = "Liveness and readiness."),
    ),
    modifiers(&OperatorToken),
)]
pub(super) struct Frame;

/// The bearer scheme the operator routes name in their `security`.
struct OperatorToken;

impl Modify for OperatorToken {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "operator_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The gateway's `OPERATOR_TOKEN`."))
                    .build(),
            ),
        );
    }
}

/// The answers the outer layers can give on any route (`utility::http::finish`, the load
/// shedding in [`super::routes`], the operator token), added to every operation that does not
/// already document them: what a client must be ready for is in the document, not only what the
/// handler returns.
pub(super) fn layer_responses(openapi: &mut OpenApi) {
    let problem = |description: &str| -> RefOr<ApiResponse> {
        utoipa::openapi::ResponseBuilder::new()
            .description(description)
            .content(
                utility::http::PROBLEM_JSON,
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(RefOr::Ref(
                        utoipa::openapi::Ref::from_schema_name(Problem::name()),
                    )))
                    .build(),
            )
            .build()
            .into()
    };
    let retry_after = |response: RefOr<ApiResponse>| match response {
        RefOr::T(mut response) => {
            response.headers.insert(
                "Retry-After".into(),
                utoipa::openapi::HeaderBuilder::new()
                    .schema(u64::schema())
                    .description(Some("Seconds to wait before retrying."))
                    .build(),
            );
            RefOr::T(response)
        }
        other => other,
    };
    for item in openapi.paths.paths.values_mut() {
        for operation in operations(item) {
            let with_body = operation.request_body.is_some();
            let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
            let mut add = |status: &str, response: RefOr<ApiResponse>| {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert(response);
            };
            if with_body {
                add("408", problem("The body did not arrive in time."));
                add("413", problem("The body is larger than the limit."));
                add("415", problem("The body is not `application/json`."));
            }
            if secured {
                let mut unauthorized = problem("The operator token is missing or wrong.");
                if let RefOr::T(response) = &mut unauthorized {
                    response.headers.insert(
                        "WWW-Authenticate".into(),
                        utoipa::openapi::HeaderBuilder::new()
                            .schema(String::schema())
                            .description(Some("`Bearer`."))
                            .build(),
                    );
                }
                add("401", unauthorized);
            }
            add("405", problem("The route does not take this method."));
            add("431", problem("The request's headers are larger than the limit."));
            add(
                "503",
                retry_after(problem(
                    "Overloaded, or the database cannot serve: retry after `Retry-After` seconds.",
                )),
            );
        }
    }
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// The document, serialised once, and its readable rendering.
pub struct Reference {
    json: String,
    html: String,
}

impl Reference {
    pub fn new(openapi: &OpenApi) -> Self {
        let value = serde_json::to_value(openapi).unwrap_or(Value::Null);
        Self {
            json: serde_json::to_string(&value).unwrap_or_default(),
            html: render(&value),
        }
    }
}

/// The gateway's API document (OpenAPI 3.1).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "page",
    operation_id = "openApiDocument",
    responses((status = 200, description = "This document.", body = Object, content_type = "application/json")),
)]
pub(super) async fn openapi_json(Extension(reference): Extension<Arc<Reference>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], reference.json.clone()).into_response()
}

/// This document as a page.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "page",
    operation_id = "apiReference",
    responses((status = 200, description = "The API reference.", body = String, content_type = "text/html")),
)]
pub(super) async fn docs(Extension(reference): Extension<Arc<Reference>>) -> Response {
    super::page::asset("text/html; charset=utf-8", reference.html.clone())
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A description: paragraphs, with `code` spans; everything else as text.
fn prose(text: &str) -> String {
    text.split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .map(|paragraph| {
            let mut html = String::from("<p>");
            for (i, part) in escape(paragraph).split('`').enumerate() {
                if i % 2 == 1 {
                    let _ = write!(html, "<code>{part}</code>");
                } else {
                    html.push_str(part);
                }
            }
            html.push_str("</p>");
            html
        })
        .collect()
}

/// A schema in a line: its `$ref` name (linked), its type, or its shape.
fn schema_summary(schema: &Value) -> String {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!("<a href=\"#schema-{0}\">{0}</a>", escape(name));
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(parts) = schema.get(key).and_then(Value::as_array) {
            let parts: Vec<String> = parts.iter().map(schema_summary).collect();
            return parts.join(" | ");
        }
    }
    if let Some(items) = schema.get("items") {
        return format!("array of {}", schema_summary(items));
    }
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" or "),
        _ => "any".to_owned(),
    };
    let mut text = escape(&kind);
    if let Some(format) = schema.get("format").and_then(Value::as_str) {
        let _ = write!(text, " ({})", escape(format));
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values
            .iter()
            .map(|v| format!("<code>{}</code>", escape(&v.to_string())))
            .collect();
        let _ = write!(text, ": {}", values.join(", "));
    }
    let bounds: Vec<String> = ["minLength", "maxLength", "minimum", "maximum", "pattern"]
        .iter()
        .filter_map(|key| Some(format!("{key} {}", schema.get(*key)?)))
        .collect();
    if !bounds.is_empty() {
        let _ = write!(text, "; {}", escape(&bounds.join(", ")));
    }
    text
}

/// The whole page: each operation with its parameters, body and responses, then each schema.
fn render(doc: &Value) -> String {
    let info = &doc["info"];
    let title = escape(info["title"].as_str().unwrap_or("API"));
    let mut html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} API reference</title><link rel=\"stylesheet\" href=\"/assets/app.css\"></head>\
<body class=\"reference\"><main><h1>{title} <small>{}</small></h1>{}\
<p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI {}).</p>",
        escape(info["version"].as_str().unwrap_or("")),
        prose(info["description"].as_str().unwrap_or("")),
        escape(doc["openapi"].as_str().unwrap_or("")),
    );
    let empty = serde_json::Map::new();
    let tags: Vec<&Value> = doc["tags"].as_array().map(|t| t.iter().collect()).unwrap_or_default();
    let paths = doc["paths"].as_object().unwrap_or(&empty);
    for tag in &tags {
        let name = tag["name"].as_str().unwrap_or("");
        let _ = write!(
            html,
            "<section><h2 id=\"tag-{0}\">{0}</h2>{1}",
            escape(name),
            prose(tag["description"].as_str().unwrap_or(""))
        );
        for (path, item) in paths {
            for (method, operation) in item.as_object().unwrap_or(&empty) {
                let tagged = operation["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == name));
                if tagged {
                    render_operation(&mut html, method, path, operation);
                }
            }
        }
        html.push_str("</section>");
    }
    html.push_str("<section><h2 id=\"schemas\">Schemas</h2>");
    let schemas = doc["components"]["schemas"].as_object().unwrap_or(&empty);
    for (name, schema) in schemas {
        let _ = write!(html, "<h3 id=\"schema-{0}\">{0}</h3>", escape(name));
        html.push_str(&prose(schema["description"].as_str().unwrap_or("")));
        if let Some(properties) = schema["properties"].as_object() {
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            html.push_str("<table><tr><th>field</th><th>type</th><th>description</th></tr>");
            for (field, property) in properties {
                let _ = write!(
                    html,
                    "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(field),
                    if required.contains(&field.as_str()) {
                        " (required)"
                    } else {
                        ""
                    },
                    schema_summary(property),
                    prose(property["description"].as_str().unwrap_or("")),
                );
            }
            html.push_str("</table>");
        } else {
            let _ = write!(html, "<p>{}</p>", schema_summary(schema));
        }
    }
    html.push_str("</section></main></body></html>\n");
    html
}

fn render_operation(html: &mut String, method: &str, path: &str, operation: &Value) {
    let id = escape(operation["operationId"].as_str().unwrap_or(""));
    let _ = write!(
        html,
        "<article id=\"{id}\"><h3><code>{} {}</code> {}</h3>{}",
        escape(&method.to_uppercase()),
        escape(path),
        escape(operation["summary"].as_str().unwrap_or("")),
        prose(operation["description"].as_str().unwrap_or("")),
    );
    if operation.get("security").is_some() {
        html.push_str("<p>Requires <code>Authorization: Bearer &lt;OPERATOR_TOKEN&gt;</code>.</p>");
    }
    if let Some(parameters) = operation["parameters"].as_array().filter(|p| !p.is_empty()) {
        html.push_str("<table><tr><th>parameter</th><th>in</th><th>type</th><th>description</th></tr>");
        for parameter in parameters {
            let _ = write!(
                html,
                "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(parameter["name"].as_str().unwrap_or("")),
                if parameter["required"] == Value::Bool(true) {
                    " (required)"
                } else {
                    ""
                },
                escape(parameter["in"].as_str().unwrap_or("")),
                schema_summary(&parameter["schema"]),
                prose(parameter["description"].as_str().unwrap_or("")),
            );
        }
        html.push_str("</table>");
    }
    if let Some(content) = operation["requestBody"]["content"].as_object() {
        for (media, body) in content {
            let _ = write!(
                html,
                "<p>Body (<code>{}</code>): {}</p>",
                escape(media),
                schema_summary(&body["schema"])
            );
        }
    }
    html.push_str("<table><tr><th>status</th><th>meaning</th><th>body</th></tr>");
    for (status, response) in operation["responses"].as_object().into_iter().flatten() {
        let bodies: Vec<String> = response["content"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(media, body)| format!("<code>{}</code> {}", escape(media), schema_summary(&body["schema"])))
            .collect();
        let headers: Vec<String> = response["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, _)| format!("<code>{}</code>", escape(name)))
            .collect();
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}{}</td><td>{}</td></tr>",
            escape(status),
            prose(response["description"].as_str().unwrap_or("")),
            if headers.is_empty() {
                String::new()
            } else {
                format!("<p>Headers: {}</p>", headers.join(", "))
            },
            bodies.join("<br>"),
        );
    }
    html.push_str("</table></article>");
}
