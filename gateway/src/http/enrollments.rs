//! The public surface: submitting an enrollment and following it. The client's capability is the
//! enrollment's view key ([`new_view_key`]: 128 random bits, base64url), made at acceptance and
//! answered in `Location`; the enrollment id (a UUIDv7, which shows its creation time and has few
//! random bits) is only for correlation and no public route takes it (decision 0040). What
//! `GET /api/enrollments/{view_key}` shows is what its submitter may see, and nothing personal (no
//! name, no e-mail, no operator detail in the reason), since such a URL leaks through referrers
//! and browser history; every answer carries `Cache-Control: no-store`, and the access log names
//! the route, never the path.

use super::edge::Client;
use super::{AppState, prefer};
use crate::saga::Status;
use crate::store::{self, NewEnrollment};
use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};
use sqlx::AnyPool;
use utility::domain::{CustomerName, Email, FieldError};
use utility::http::{Problem, ProblemJson, ProblemPath};
use utoipa::IntoParams;
use utoipa::openapi::Required;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, Object, ObjectBuilder, SchemaFormat, Type};
use uuid::Uuid;

/// Longest accepted `Idempotency-Key`.
const MAX_KEY_LEN: usize = 255;
/// The `Idempotency-Key`s [`idempotency_key`] accepts, as the document states them: visible
/// ASCII, spaces only between other characters (HTTP drops a field value's surrounding
/// whitespace before the gateway sees it). The length is [`MAX_KEY_LEN`].
const KEY_PATTERN: &str = "^[!-~](?:[ -~]*[!-~])?$";

/// The body of `POST /api/enrollments`, as the API document shows it. The handler reads the
/// body as JSON and checks the fields itself ([`EnrollmentRequest::parse`]), so that every bad
/// field is named in one 422, which serde's first-error-wins would not do.
#[derive(utoipa::ToSchema)]
#[schema(description = "An enrollment to submit. Every invalid field is named in one 422.")]
#[allow(dead_code)]
pub(super) struct EnrollmentInput {
    #[schema(schema_with = name_schema)]
    name: String,
    #[schema(schema_with = email_schema)]
    email: String,
    /// Where to POST each status change of the enrollment, as a signed webhook (Standard
    /// Webhooks; keys at `/.well-known/webhook-keys`). `https`, no credentials, at most 2048
    /// characters, a host whose addresses are all public, and where the deployment restricts
    /// ports (`CALLBACK_ALLOWED_PORTS`; 443 on EC2) one of those.
    #[schema(format = "uri", max_length = 2048)]
    callback_url: Option<String>,
}

// The limits the document states are the domain's own constants, set here because utoipa's
// attributes take only literals for them.

/// `name`, as [`CustomerName::parse`] takes it.
fn name_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(format!(
            "The customer's name: 1 to {} characters once trimmed, no control characters.",
            CustomerName::MAX_CHARS
        )))
        .min_length(Some(1))
        .max_length(Some(CustomerName::MAX_CHARS))
        .pattern(Some(
            r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
        ))
        .examples(["Ada Lovelace"])
        .build()
}

/// `email`, as [`Email::parse`] takes it.
fn email_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
        .description(Some(format!(
            "An e-mail address, at most {} characters: one `@`, no spaces, a dotted domain of \
             letters, digits and hyphens (any script). Stored in one form: NFC, the local part \
             lower-cased, the domain in its ASCII (IDNA) form.",
            Email::MAX_CHARS
        )))
        .min_length(Some(3))
        .max_length(Some(Email::MAX_CHARS))
        .examples(["ada@example.com"])
        .build()
}

/// A 202: the short acknowledgement, or, with `Prefer: wait`, the enrollment as it stood when
/// the wait ended.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(super) enum Submitted {
    Accepted(super::prefer::Accepted),
    Enrollment(super::prefer::Waited),
}

/// The request headers of `POST /api/enrollments`, as the API document shows them.
pub(super) struct SubmitHeaders;

impl IntoParams for SubmitHeaders {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let idempotency_key = ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(format!(
                "Makes the submission safe to retry: the same key and body answer the first \
                 submission's enrollment; the same key with another body answers 409. 1 to \
                 {MAX_KEY_LEN} visible ASCII characters, spaces allowed between them."
            )))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(MAX_KEY_LEN))
                    .pattern(Some(KEY_PATTERN)),
            ));
        let traceparent = ParameterBuilder::new()
            .name("traceparent")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "W3C trace context: the saga starts a trace of its own, whose first span links \
                 to a well-formed one (the caller chooses neither the saga's trace id nor its \
                 sampling). Any other value is ignored, never refused.",
            ))
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)));
        vec![idempotency_key.build(), traceparent.build(), prefer::parameter()]
    }
}

/// `Prefer` on `GET /api/enrollments/{id}`.
pub(super) struct WaitHeader;

impl IntoParams for WaitHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![prefer::parameter()]
    }
}

/// The view key in the path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(super) struct ViewKey {
    /// The enrollment's view key, as the submission answered it (`view_key`, and in
    /// `Location`): 22 base64url characters. The enrollment id does not address it.
    #[param(pattern = "^[A-Za-z0-9_-]{22}$")]
    view_key: String,
}

/// Random bytes in a view key: 128 bits, beyond guessing.
const VIEW_KEY_BYTES: usize = 16;
/// Characters in a view key: base64url of [`VIEW_KEY_BYTES`], without padding.
const VIEW_KEY_CHARS: usize = (VIEW_KEY_BYTES * 8).div_ceil(6);

/// A new view key: 128 bits from the operating system's CSPRNG (seeding `rand`'s thread-local
/// ChaCha generator), base64url without padding.
pub(super) fn new_view_key() -> String {
    let bytes: [u8; VIEW_KEY_BYTES] = rand::random();
    crate::confirmation::base64url(&bytes)
}

pub(super) fn parse_id(id: &str, what: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(id).map_err(|_| Problem::bad_request(format!("{what} id must be a UUID")))
}

/// The enrollment a view key addresses: 400 when `view_key` cannot be one (an enrollment id
/// included), 404 when none has it.
pub(super) async fn resolve(pool: &AnyPool, view_key: &str) -> Result<Uuid, Problem> {
    let well_formed = view_key.len() == VIEW_KEY_CHARS
        && view_key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return Err(Problem::bad_request(format!(
            "an enrollment is addressed by its view key ({VIEW_KEY_CHARS} base64url characters, as \
             in the submission's Location), not by its id"
        )));
    }
    store::enrollment_by_view_key(pool, view_key)
        .await?
        .ok_or_else(|| Problem::not_found("no enrollment at this address"))
}

/// A validated enrollment request.
struct EnrollmentRequest {
    name: CustomerName,
    email: Email,
    /// As given; its form and addresses are checked by [`check_callback`].
    callback_url: Option<String>,
}

impl EnrollmentRequest {
    /// Collects every field error at once so the client can fix them in one go.
    fn parse(body: &Value) -> Result<Self, Problem> {
        let Some(object) = body.as_object() else {
            return Err(Problem::invalid(vec![FieldError {
                field: "body",
                message: "must be a JSON object with `name` and `email`".into(),
            }]));
        };
        let text = |field: &'static str| match object.get(field) {
            Some(Value::String(s)) => Ok(s.as_str()),
            None | Some(Value::Null) => Err(FieldError {
                field,
                message: "is required".into(),
            }),
            Some(_) => Err(FieldError {
                field,
                message: "must be a string".into(),
            }),
        };
        let name = text("name").and_then(CustomerName::parse);
        let email = text("email").and_then(Email::parse);
        let callback_url = match object.get("callback_url") {
            None | Some(Value::Null) => Ok(None),
            Some(_) => text("callback_url").map(|url| Some(url.to_owned())),
        };
        match (name, email, callback_url) {
            (Ok(name), Ok(email), Ok(callback_url)) => Ok(Self {
                name,
                email,
                callback_url,
            }),
            (name, email, callback_url) => Err(Problem::invalid(
                name.err()
                    .into_iter()
                    .chain(email.err())
                    .chain(callback_url.err())
                    .collect(),
            )),
        }
    }

    /// What makes two requests "the same" for idempotency: the normalised fields. Only its
    /// [`store::fingerprint_hash`] under the request's key is stored, never the fields.
    fn fingerprint(&self) -> String {
        match &self.callback_url {
            None => json!({"name": self.name.as_str(), "email": self.email.as_str()}).to_string(),
            Some(url) => {
                json!({"name": self.name.as_str(), "email": self.email.as_str(), "callback_url": url}).to_string()
            }
        }
    }
}

/// The callback URL checked against the policy, its host resolved: a 422 naming `callback_url`
/// when it may not be called, or when callbacks are off.
async fn check_callback(state: &AppState, url: Option<&str>) -> Result<Option<String>, Problem> {
    let Some(url) = url else { return Ok(None) };
    let refuse = |message: String| {
        Problem::invalid(vec![FieldError {
            field: "callback_url",
            message,
        }])
    };
    let Some(callbacks) = state.callbacks.as_ref() else {
        return Err(refuse("is not accepted: this gateway sends no callbacks".to_owned()));
    };
    match callbacks.policy.check(url).await {
        Ok(url) => Ok(Some(url.to_string())),
        Err(message) => Err(refuse(message)),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN && !k.bytes().any(|b| b.is_ascii_control()))
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            ))
        })?;
    Ok(Some(key.to_owned()))
}

/// The trace this request is part of: the request's span, a trace of its own linked to the
/// caller's `traceparent` (`utility::http::access`); a new trace when no tracing layer is
/// installed.
pub(super) fn traceparent() -> String {
    utility::observe::context::traceparent(&tracing::Span::current())
        .unwrap_or_else(utility::messaging::envelope::new_traceparent)
}

/// Submit an enrollment.
///
/// Stores it and starts its saga. With e-mail confirmation (the default), the owner of the
/// address is mailed a link first, and the saga waits in `awaiting_confirmation` until they
/// follow it (`POST /api/confirmations`) or the deadline passes (`expired`). Then the customer is
/// enrolled, then the enrollment bonus is posted; if posting fails, the enrollment is rolled
/// back. Follow it with `GET /api/enrollments/{id}`, its `/events` stream, or `Prefer: wait`
/// (which, on a submission, also returns once the saga waits on a person).
#[utoipa::path(
    post,
    path = "/api/enrollments",
    tag = "enrollments",
    operation_id = "submitEnrollment",
    params(SubmitHeaders),
    request_body(content = EnrollmentInput, content_type = "application/json"),
    responses(
        (status = 201, description = "With `Prefer: wait`: the saga finished within the wait.",
            body = super::prefer::Waited, headers(
                ("Location" = String, description = "The enrollment's address."),
                ("Preference-Applied" = String, description = "The wait applied, `wait=N`."))),
        (status = 202, description = "Accepted; the saga runs. With `Prefer: wait`, the enrollment as it stood when the wait ended, or once it waits for the e-mail confirmation.",
            body = Submitted, headers(
                ("Location" = String, description = "The enrollment's address."),
                ("Preference-Applied" = String, description = "With `Prefer: wait`: the wait applied."))),
        (status = 400, description = "Malformed JSON or `Idempotency-Key`.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The `Idempotency-Key` was used with another body.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json` (UTF-8).", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid; `invalid-params` names each one.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many submissions from this client, or (with `Prefer: wait`) too many of its requests held; nothing was stored. Retry after `Retry-After` seconds.",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
#[tracing::instrument(skip_all, fields(enrollment_id = tracing::field::Empty))]
pub(super) async fn create(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    ProblemJson(body): ProblemJson<Value>,
) -> Result<Response, Problem> {
    let key = idempotency_key(&headers)?;
    let request = EnrollmentRequest::parse(&body)?;
    let fingerprint = key
        .as_deref()
        .map(|key| store::fingerprint_hash(key, &request.fingerprint()));
    // The place to wait is taken before anything is stored: a refusal leaves nothing behind.
    let held = match prefer::hold(&state, client, prefer::preferred_wait(&headers)) {
        Ok(held) => held,
        Err(refused) => return Ok(axum::response::IntoResponse::into_response(refused)),
    };
    if let Some(key) = key.as_deref()
        && let Some(existing) = replay(&state.pool, key, &request).await?
    {
        return answer_replay(&state, existing, held).await;
    }
    let callback_url = check_callback(&state, request.callback_url.as_deref()).await?;
    let id = Uuid::now_v7();
    tracing::Span::current().record("enrollment_id", tracing::field::display(id));
    let confirmation = state.confirmation.as_ref().map(|settings| {
        let token = crate::confirmation::Token::new();
        // To the millisecond, as stored: the link's deadline and the enrollment's are one.
        let expires_at = chrono::SubsecRound::trunc_subsecs(
            chrono::Utc::now() + chrono::Duration::from_std(settings.ttl).unwrap_or(chrono::Duration::MAX),
            3,
        );
        store::NewConfirmation {
            url: token.url(&settings.origin),
            token_hash: token.hash,
            expires_at,
            mailed_to: crate::confirmation::mask(&request.email),
        }
    });
    let view_key = new_view_key();
    let new = NewEnrollment {
        callback_url: callback_url.as_deref(),
        id,
        view_key: &view_key,
        name: &request.name,
        email: &request.email,
        idempotency_key: key.as_deref(),
        fingerprint: fingerprint.as_deref().unwrap_or_default(),
        traceparent: traceparent(),
        confirmation,
    };
    match store::accept(&state.pool, &new).await {
        Ok(()) => {}
        // Another request with the same key won the race: answer as a replay of it.
        Err(err) if utility::storage::is_unique_violation(&err) && key.is_some() => {
            let key = key.as_deref().unwrap_or_default();
            let existing = replay(&state.pool, key, &request).await?.ok_or_else(|| {
                Problem::internal(anyhow::anyhow!("idempotency key {key} conflicted but is not stored"))
            })?;
            return answer_replay(&state, existing, held).await;
        }
        Err(err) => return Err(err.into()),
    }
    state.outbox_signal.notify_one();
    tracing::debug!("enrollment accepted");
    prefer::answer(&state, &id.to_string(), &view_key, Status::Pending, held).await
}

/// The answer to a replayed submission: the first one's enrollment, under its view key (given
/// one now if it was accepted before view keys existed).
async fn answer_replay(
    state: &AppState,
    existing: store::PriorSubmission,
    held: Option<(u64, crate::live::Place)>,
) -> Result<Response, Problem> {
    let view_key = match existing.view_key {
        Some(view_key) => view_key,
        None => store::give_view_key(&state.pool, &existing.id, &new_view_key()).await?,
    };
    prefer::answer(state, &existing.id, &view_key, existing.status, held).await
}

/// The enrollment a repeated `Idempotency-Key` names, or 409 if the body differs (or its
/// personal data was erased, which leaves nothing to compare with).
async fn replay(
    pool: &AnyPool,
    key: &str,
    request: &EnrollmentRequest,
) -> Result<Option<store::PriorSubmission>, Problem> {
    let Some(existing) = store::find_by_key(pool, key).await? else {
        return Ok(None);
    };
    let fingerprint = request.fingerprint();
    // A row written before fingerprints were hashed (or by an instance of that release during a
    // roll-out) holds the fields themselves until the stall sweeper hashes it.
    let same =
        existing.fingerprint == store::fingerprint_hash(key, &fingerprint) || existing.fingerprint == fingerprint;
    if !same {
        // Naming the enrollment would hand someone else's capability to whoever guessed the key.
        return Err(Problem::conflict(
            "Idempotency-Key was already used with a different body; use a new key for a new enrollment",
        ));
    }
    Ok(Some(existing))
}

/// Read an enrollment: its status, outcome and history.
///
/// With `Prefer: wait=N`, the answer is held until the saga is terminal or N seconds pass.
#[utoipa::path(
    get,
    path = "/api/enrollments/{view_key}",
    tag = "enrollments",
    operation_id = "getEnrollment",
    params(ViewKey, WaitHeader),
    responses(
        (status = 200, description = "The enrollment as it stands.", body = store::PublicView, headers(
            ("Preference-Applied" = String, description = "With `Prefer: wait`: the wait applied."))),
        (status = 400, description = "This is not a view key (an enrollment id is not one).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No enrollment has this view key.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "With `Prefer: wait`: this client already has as many requests held as one client may; retry after `Retry-After` seconds.",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub(super) async fn show(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    ProblemPath(view_key): ProblemPath<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = resolve(&state.pool, &view_key).await?;
    prefer::read(&state, id, client, &headers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_errors_name_every_bad_field() {
        let problem = EnrollmentRequest::parse(&json!({"name": 5})).err().unwrap();
        assert_eq!(problem.status, axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        let fields: Vec<_> = problem.invalid_params.iter().map(|p| p.name).collect();
        assert_eq!(fields, ["name", "email"]);
        assert!(EnrollmentRequest::parse(&json!([1])).is_err());
        let ok = EnrollmentRequest::parse(&json!({"name": " Ada ", "email": "ADA@x.io"})).unwrap();
        assert_eq!(ok.fingerprint(), r#"{"email":"ada@x.io","name":"Ada"}"#);
    }

    #[test]
    fn view_keys_are_128_random_bits_in_base64url() {
        use crate::confirmation::base64url;
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff, 0xbf]), "-_-_");
        let keys: std::collections::HashSet<String> = (0..1000).map(|_| new_view_key()).collect();
        assert_eq!(keys.len(), 1000);
        assert!(keys.iter().all(|k| k.len() == VIEW_KEY_CHARS && VIEW_KEY_CHARS == 22));
    }
}
