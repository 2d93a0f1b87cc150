//! `Prefer: wait=N` (RFC 7240) on the public enrollment routes: the answer is held until the saga
//! is terminal or N seconds pass. A server may ignore a preference, so when every place to wait
//! is taken ([`crate::live::Hub::wait_place`]) the answer comes at once, as without the header,
//! and `Preference-Applied` says whether the wait was applied. A client that already holds
//! `MAX_WAITING_REQUESTS_PER_CLIENT` waits is refused with 429 instead ([`hold`]): answering it at
//! once would only have it ask again at once.
//!
//! Also the submission's answer itself ([`answer`]), since what it is depends on the wait: the
//! short acknowledgement, or the whole enrollment as it stood when the wait ended.

use super::AppState;
use super::edge::Client;
use crate::live::{Place, Refused};
use crate::saga::Status;
use crate::store;
use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::time::Duration;
use utility::http::Problem;
use utoipa::openapi::Required;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use uuid::Uuid;

/// The longest a client may ask to be held.
pub(super) const MAX_WAIT_SECONDS: u64 = 30;

/// How long a client refused a place to wait is asked to wait before asking again.
pub(super) const RETRY_AFTER_SECONDS: u64 = 5;

/// The answer to a submission without `Prefer: wait` (or with a wait that could not be applied).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Accepted {
    /// The enrollment's id, for correlation (support, logs); it does not address the enrollment.
    #[schema(format = Uuid)]
    id: String,
    /// The key of the enrollment's public view: `GET /api/enrollments/{view_key}` and its
    /// `/events` (the `Location`). Whoever holds it can follow the enrollment.
    #[schema(pattern = "^[A-Za-z0-9_-]{22}$")]
    view_key: String,
    status: Status,
}

/// The answer to a submission that waited: the enrollment as it stood when the wait ended (as
/// `GET` shows it), with the key of its view, as the short acknowledgement has it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Waited {
    /// The key of the enrollment's public view (the `Location`), as in the acknowledgement.
    #[schema(pattern = "^[A-Za-z0-9_-]{22}$")]
    view_key: String,
    #[serde(flatten)]
    enrollment: store::PublicView,
}

/// A place for the request to be held, when it asks to be (`wait`): `Ok(None)` when it does not
/// ask or every place is taken (the preference is then not applied), a 429 when the client holds
/// as many as one client may.
pub(super) fn hold(state: &AppState, client: Client, wait: Option<u64>) -> Result<Option<(u64, Place)>, TooManyHeld> {
    let Some(seconds) = wait else { return Ok(None) };
    match state.hub.wait_place(client.0) {
        Ok(place) => Ok(Some((seconds, place))),
        Err(Refused::Full) => Ok(None),
        Err(Refused::ClientFull) => {
            tracing::info!(client = %client.0, "held requests per client reached");
            Err(TooManyHeld)
        }
    }
}

/// The client holds as many requests as one client may: 429 with `Retry-After`.
pub(super) struct TooManyHeld;

impl IntoResponse for TooManyHeld {
    fn into_response(self) -> Response {
        super::edge::too_many(
            "this address already has as many requests held by `Prefer: wait` as one client may; \
             retry after the time in Retry-After",
            RETRY_AFTER_SECONDS,
        )
    }
}

/// The `Prefer` request header, as the API document shows it.
pub(super) fn parameter() -> Parameter {
    ParameterBuilder::new()
        .name("Prefer")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(format!(
            "RFC 7240 `wait=N`: hold the answer until the saga is terminal or N seconds pass \
             (N is capped at {MAX_WAIT_SECONDS}); on a submission, also until the saga waits \
             on a person (`awaiting_confirmation`). Other preferences are ignored."
        )))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .example(Some("wait=10".into()))
        .build()
}

/// `Prefer: wait=N` (other preferences beside it are ignored), capped at [`MAX_WAIT_SECONDS`].
pub(super) fn preferred_wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|preference| {
            let (name, value) = preference.split(';').next()?.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("wait")
                .then(|| value.trim().trim_matches('"').parse::<u64>().ok())
                .flatten()
        })
        .next()
        .map(|seconds| seconds.min(MAX_WAIT_SECONDS))
}

/// The answer to a submission: without `Prefer: wait`, 202 with the id, view key and status;
/// with it (`held`, a place taken by [`hold`]), the whole enrollment once it is terminal (201
/// Created) or the wait is over (202 Accepted). Either way `Location` is the enrollment's public
/// view.
pub(super) async fn answer(
    state: &AppState,
    id: &str,
    view_key: &str,
    status: Status,
    held: Option<(u64, Place)>,
) -> Result<Response, Problem> {
    let body = Accepted {
        id: id.to_owned(),
        view_key: view_key.to_owned(),
        status,
    };
    let acknowledgement = || with_location((StatusCode::ACCEPTED, Json(&body)).into_response(), view_key);
    // Without a free place to wait, the preference is not applied (RFC 7240 lets a server ignore it).
    let Some((seconds, _place)) = held else {
        return Ok(acknowledgement());
    };
    let uuid = Uuid::parse_str(id).map_err(Problem::internal)?;
    // The enrollment is stored: whatever goes wrong while waiting, the answer is still that it
    // was accepted (an error here would make a client without a key submit it again).
    // A submission's wait also ends where the next step is a person's (the e-mail confirmation).
    let until = |status: Status| status.is_terminal() || status.waits_on_person();
    let view = match wait_for(state, uuid, Duration::from_secs(seconds), until).await {
        Ok(Some(view)) => view,
        Ok(None) | Err(_) => {
            tracing::warn!(enrollment_id = %id, "waiting for the outcome failed; answering 202");
            return Ok(acknowledgement());
        }
    };
    let code = if view.status.is_terminal() {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    let waited = Waited {
        view_key: view_key.to_owned(),
        enrollment: view,
    };
    let mut response = with_location((code, Json(waited)).into_response(), view_key);
    applied(&mut response, seconds);
    Ok(response)
}

/// The answer to a read (`GET /api/enrollments/{view_key}`, resolved to the enrollment `id`):
/// the enrollment as it stands, or, with `Prefer: wait` and a free place to wait, once it is
/// terminal or the wait is over.
pub(super) async fn read(state: &AppState, id: Uuid, client: Client, headers: &HeaderMap) -> Result<Response, Problem> {
    let not_found = || Problem::not_found("no enrollment at this address");
    let wait = match hold(state, client, preferred_wait(headers)) {
        Ok(wait) => wait,
        Err(refused) => return Ok(refused.into_response()),
    };
    let Some((seconds, _place)) = wait else {
        let cutoff = utility::storage::cutoff(state.stall_after);
        let view = store::view(&state.pool, id, &cutoff).await?.ok_or_else(not_found)?;
        let mut response = Json(view).into_response();
        // The answer depends on Prefer, whether or not it was applied.
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("prefer"));
        return Ok(response);
    };
    let view = wait_for(state, id, Duration::from_secs(seconds), Status::is_terminal)
        .await?
        .ok_or_else(not_found)?;
    let mut response = Json(view).into_response();
    applied(&mut response, seconds);
    Ok(response)
}

/// `response` with `Location: /api/enrollments/{view_key}`.
fn with_location(mut response: Response, view_key: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("/api/enrollments/{view_key}")) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Says which wait was applied; the answer depends on `Prefer`.
fn applied(response: &mut Response, seconds: u64) {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::try_from(format!("wait={seconds}")) {
        headers.insert("preference-applied", value);
    }
    headers.insert(header::VARY, HeaderValue::from_static("prefer"));
}

/// The enrollment once its status is one `until` accepts, or as it stands when `wait` is over
/// (or the service stops). Waiting costs no query of its own: the live-updates poller says when
/// to look again.
async fn wait_for(
    state: &AppState,
    id: Uuid,
    wait: Duration,
    until: impl Fn(Status) -> bool,
) -> Result<Option<store::PublicView>, Problem> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut subscription = state.hub.subscribe(&id.to_string());
    loop {
        let cutoff = utility::storage::cutoff(state.stall_after);
        let Some(view) = store::view(&state.pool, id, &cutoff).await? else {
            return Ok(None);
        };
        if until(view.status) || state.hub.is_closed() {
            return Ok(Some(view));
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                let cutoff = utility::storage::cutoff(state.stall_after);
                return Ok(store::view(&state.pool, id, &cutoff).await?);
            }
            changed = subscription.changed() => if !changed {
                return Ok(Some(view));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_wait_is_read_as_rfc_7240_says_and_capped() {
        let prefer = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("prefer", value.parse().unwrap());
            preferred_wait(&headers)
        };
        assert_eq!(prefer("wait=10"), Some(10));
        assert_eq!(prefer("respond-async, wait=5"), Some(5));
        assert_eq!(prefer("WAIT = \"7\""), Some(7));
        assert_eq!(prefer("wait=3600"), Some(MAX_WAIT_SECONDS));
        assert_eq!(prefer("wait=soon"), None);
        assert_eq!(prefer("return=minimal"), None);
        assert_eq!(preferred_wait(&HeaderMap::new()), None);
    }
}
