//! The API document: OpenAPI 3.1 at `GET /openapi.json`, and the same document as a readable
//! page at `GET /docs`.
//!
//! Nothing here is written by hand about a route: every operation comes from its handler's
//! `#[utoipa::path]` and is registered with the route itself (`routes!` in [`super::routes`]), and
//! every schema from the type the handler serialises. What this module adds is what no handler
//! states: the responses that the outer layers give on every route ([`layer_responses`]), the
//! operator token's security scheme, and the rendering of `/docs` ([`html`]), which is plain HTML
//! built once from the document (no script, nothing fetched from elsewhere, same CSP as the page).

mod html;

use axum::Extension;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
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
retry with an `Idempotency-Key`. The submission answers the enrollment's address in `Location` \
(`/api/enrollments/{view_key}`); `Prefer: wait=N` holds an answer until the saga is terminal; \
`/api/enrollments/{view_key}/events` streams it. One client may hold only so many streams and held \
requests (429 with `Retry-After` beyond them).",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(utility::http::health::health, utility::http::health::ready),
    // Schemas that only a parameter names (utoipa collects those of bodies and responses).
    components(schemas(Problem, super::page::Asset)),
    tags(
        (name = "enrollments", description = "Submitting an enrollment and following it. The view key, not the \
enrollment id, is the client's capability: what it shows names nobody, and no cache keeps it \
(`Cache-Control: no-store`)."),
        (name = "operator", description = "For operators, with `Authorization: Bearer <OPERATOR_TOKEN>`. \
Not mounted (404) when the gateway has no operator token."),
        (name = "webhooks", description = "Callbacks: an enrollment submitted with a `callback_url` gets each status \
change there as a Standard Webhooks POST (`webhook-id`, `webhook-timestamp`, `webhook-signature`), signed with \
Ed25519 (`v1a,`) by a key published here."),
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

/// Where the document is served ([`openapi_json`]); `/docs` links to it.
const OPENAPI_JSON: &str = "/openapi.json";

/// The document, serialised once, and its readable rendering; in two editions: the whole one for
/// operators (the request carries the operator token), and the public one without the operator
/// routes, for everyone else. The operator surface is nobody else's business.
pub struct Reference {
    public: Rendered,
    full: Rendered,
    operator: Option<super::edge::OperatorToken>,
}

struct Rendered {
    json: String,
    html: String,
}

impl Rendered {
    fn new(value: &Value) -> Self {
        let heading = html::Heading {
            title: value["info"]["title"].as_str().unwrap_or("API"),
            version: value["info"]["version"].as_str().unwrap_or(""),
        };
        Self {
            json: serde_json::to_string(value).unwrap_or_default(),
            html: html::page(
                &heading,
                &[
                    html::openapi(value, OPENAPI_JSON),
                    html::asyncapi(&super::bus::DOCUMENT, "/asyncapi.json"),
                ],
            ),
        }
    }
}

/// The tag of the operator routes' operations.
const OPERATOR_TAG: &str = "operator";

/// `document` less the operations tagged [`OPERATOR_TAG`], paths left empty and the tag itself.
fn public_edition(document: &Value) -> Value {
    let mut public = document.clone();
    if let Some(paths) = public["paths"].as_object_mut() {
        for item in paths.values_mut() {
            if let Some(item) = item.as_object_mut() {
                item.retain(|_, operation| {
                    let tags = operation["tags"].as_array();
                    !tags.is_some_and(|tags| tags.iter().any(|t| t == OPERATOR_TAG))
                });
            }
        }
        paths.retain(|_, item| item.as_object().is_none_or(|item| !item.is_empty()));
    }
    if let Some(tags) = public["tags"].as_array_mut() {
        tags.retain(|tag| tag["name"] != OPERATOR_TAG);
    }
    if let Some(schemes) = public["components"]["securitySchemes"].as_object_mut() {
        schemes.remove("operator_token");
    }
    public
}

impl Reference {
    pub fn new(openapi: &OpenApi, operator: Option<super::edge::OperatorToken>) -> Self {
        let value = serde_json::to_value(openapi).unwrap_or(Value::Null);
        Self {
            public: Rendered::new(&public_edition(&value)),
            full: Rendered::new(&value),
            operator,
        }
    }

    /// The edition for the sender of `headers`.
    fn edition(&self, headers: &axum::http::HeaderMap) -> &Rendered {
        match &self.operator {
            Some(token) if token.admits_request(headers) => &self.full,
            _ => &self.public,
        }
    }
}

/// The answer differs with the token, so no shared cache may serve one sender's to another.
fn vary(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::VARY, axum::http::HeaderValue::from_static("authorization"));
    response
}

/// The gateway's API document (OpenAPI 3.1).
#[utoipa::path(
    get,
    path = OPENAPI_JSON,
    tag = "page",
    operation_id = "openApiDocument",
    responses((status = 200, description = "This document. Without the operator token, its public part: the operator routes are left out.", body = Object, content_type = "application/json")),
)]
pub(super) async fn openapi_json(
    Extension(reference): Extension<Arc<Reference>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let json = reference.edition(&headers).json.clone();
    vary(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// This document as a page.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "page",
    operation_id = "apiReference",
    responses((status = 200, description = "The API reference.", body = String, content_type = "text/html")),
)]
pub(super) async fn docs(Extension(reference): Extension<Arc<Reference>>, headers: axum::http::HeaderMap) -> Response {
    vary(super::page::asset(
        "text/html; charset=utf-8",
        reference.edition(&headers).html.clone(),
    ))
}
