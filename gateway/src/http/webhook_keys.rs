//! `GET /.well-known/webhook-keys`: the public keys webhooks are signed with, so that a receiver
//! verifies them without sharing a secret with the gateway (Standard Webhooks, `v1a`).

use super::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

/// The public keys that verify the gateway's webhooks.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct WebhookKeys {
    /// `whpk_` + base64 of an Ed25519 public key; the one signing now first, others during a
    /// rotation. Empty when callbacks are off.
    #[schema(example = json!(["whpk_6Y8cyq5mZp2b0o2cPq6oI0Jv7k5P8cX0bq3cQm3p0Yw="]))]
    keys: Vec<String>,
}

/// Webhook verification keys.
///
/// Every webhook carries `webhook-id`, `webhook-timestamp` and `webhook-signature` (Standard
/// Webhooks): `v1a,` and the base64 Ed25519 signature of `{webhook-id}.{webhook-timestamp}.{body}`,
/// which one of these keys verifies.
#[utoipa::path(
    get,
    path = "/.well-known/webhook-keys",
    tag = "webhooks",
    operation_id = "webhookKeys",
    responses((status = 200, description = "The public keys.", body = WebhookKeys)),
)]
pub(super) async fn webhook_keys(State(state): State<AppState>) -> impl IntoResponse {
    let keys = state
        .callbacks
        .as_ref()
        .map(|c| c.keys.public_keys())
        .unwrap_or_default();
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(WebhookKeys { keys }),
    )
}
