//! The bus document: AsyncAPI 3.0 at `GET /asyncapi.json`, generated from the declarations of the
//! wire contract ([`utility::messaging::asyncapi`]), serialised once.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::LazyLock;

/// The document as served, built once from the code that it describes.
pub(super) static DOCUMENT: LazyLock<serde_json::Value> =
    LazyLock::new(|| utility::messaging::asyncapi::document(env!("CARGO_PKG_VERSION")));

static JSON: LazyLock<String> = LazyLock::new(|| DOCUMENT.to_string());

/// The bus's AsyncAPI document.
///
/// The queues and topics, every message with its envelope and payload schema, and which service
/// sends and receives each (AsyncAPI 3.0): what a service that joins the bus reads first.
#[utoipa::path(
    get,
    path = "/asyncapi.json",
    tag = "page",
    operation_id = "asyncApiDocument",
    responses((status = 200, description = "The AsyncAPI 3.0 document of the bus.", body = Object, content_type = "application/json")),
)]
pub(super) async fn asyncapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], JSON.as_str()).into_response()
}
