//! `GET /api/enrollments/{id}/events`: the saga's history as server-sent events, then each new
//! entry as it happens, until the terminal status.
//!
//! Each `status` event carries its history entry's id as the SSE `id`, so a client that
//! reconnects with `Last-Event-ID` resumes after it, with no repeat and no gap (a client that
//! already has the terminal entry gets 204 No Content, which stops an EventSource). A comment line
//! every 15 s keeps proxies from closing a quiet stream. At most `MAX_EVENT_STREAMS` are open
//! (503 beyond), each ends after `MAX_STREAM_SECONDS` even if its saga has not (the client
//! resumes with `Last-Event-ID`), and all end when the service stops, so none holds up a graceful
//! shutdown or keeps its place for ever.

use super::AppState;
use super::enrollments::parse_id;
use crate::live::Subscription;
use crate::store::{self, HistoryEntry};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream};
use serde_json::json;
use sqlx::AnyPool;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use utility::http::{Problem, ProblemPath};
use uuid::Uuid;

const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How soon a stream reads the history again after a failed read.
const READ_RETRY: Duration = Duration::from_secs(1);

/// `Last-Event-ID`, sent by a reconnecting `EventSource`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(super) struct ResumeHeader {
    /// The `id` of the last event received: the stream resumes after it.
    #[param(rename = "Last-Event-ID")]
    last_event_id: Option<String>,
}

/// One event of the stream, by the fields of the SSE format.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct StatusEvent {
    /// Always `status`.
    #[schema(pattern = "^status$", example = "status")]
    event: String,
    /// The history entry's id: a reconnecting client sends it back as `Last-Event-ID`.
    #[schema(format = Uuid)]
    id: String,
    /// The history entry, as JSON (a `HistoryEntry`).
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// Follow an enrollment live.
///
/// A `text/event-stream` of `status` events, one per history entry, oldest first, then each
/// new one as it happens; each event's `data` is a history entry (JSON) and its `id` resumes
/// the stream. A comment line every 15 s keeps proxies from closing it; the stream ends after
/// the terminal status, or after `MAX_STREAM_SECONDS` (resume with `Last-Event-ID`).
#[utoipa::path(
    get,
    path = "/api/enrollments/{id}/events",
    tag = "enrollments",
    operation_id = "followEnrollment",
    params(super::enrollments::EnrollmentId, ResumeHeader),
    responses(
        (status = 200, description = "The stream of `status` events; each `data` is a `HistoryEntry`.",
            body = StatusEvent, content_type = "text/event-stream"),
        (status = 204, description = "`Last-Event-ID` names the terminal entry: nothing more will come."),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such enrollment.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(super) async fn events(
    State(state): State<AppState>,
    ProblemPath(id): ProblemPath<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = parse_id(&id, "enrollment")?;
    let permit = state
        .hub
        .stream_permit()
        .ok_or_else(|| Problem::unavailable("too many event streams are open; retry shortly"))?;
    // Subscribe before the first read, so no change falls between the two.
    let subscription = state.hub.subscribe(&id.to_string());
    let history = store::history(&state.pool, id).await?;
    if history.is_empty() {
        return Err(Problem::not_found(format!("no enrollment {id}")));
    }
    let resume_after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut feed = Feed {
        pool: state.pool.clone(),
        id,
        subscription,
        last_sent: resume_after,
        pending: VecDeque::new(),
        done: false,
        read_failed: false,
        hub: state.hub.clone(),
        ends_at: tokio::time::Instant::now() + state.max_stream,
        _permit: permit,
    };
    feed.take_new(history);
    if feed.done && feed.pending.is_empty() {
        // The client already has the outcome. 204 is what tells an EventSource to stop
        // reconnecting; an empty stream would have it come back every few seconds forever.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(Sse::new(feed.into_stream())
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// What one stream has sent and has yet to send.
struct Feed {
    pool: AnyPool,
    id: Uuid,
    subscription: Subscription,
    /// The id of the last entry the client has (sent here, or named by `Last-Event-ID`).
    last_sent: Option<String>,
    pending: VecDeque<HistoryEntry>,
    /// The terminal entry has been sent: nothing more will come.
    done: bool,
    /// The last read of the history failed; the next comes after [`READ_RETRY`].
    read_failed: bool,
    hub: crate::live::Hub,
    /// When the stream ends even if the saga has not: the client resumes with `Last-Event-ID`.
    ends_at: tokio::time::Instant,
    _permit: OwnedSemaphorePermit,
}

impl Feed {
    /// Queues the entries after `last_sent` (all of them when it is unknown: better a repeat the
    /// client can recognise by id than a gap). Marks the feed done when the client already has
    /// the terminal entry.
    fn take_new(&mut self, history: Vec<HistoryEntry>) {
        let start = match &self.last_sent {
            Some(last) => history.iter().position(|e| &e.id == last).map_or(0, |i| i + 1),
            None => 0,
        };
        if history[..start].iter().any(is_terminal) {
            self.done = true;
            return;
        }
        self.pending = history.into_iter().skip(start).collect();
    }

    /// Resolves when the service stops.
    async fn closed(&self) {
        self.hub.closed().await;
    }

    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        stream::unfold(self, |mut feed| async move {
            loop {
                if let Some(entry) = feed.pending.pop_front() {
                    feed.done = is_terminal(&entry);
                    if feed.done {
                        feed.pending.clear();
                    }
                    feed.last_sent = Some(entry.id.clone());
                    return Some((Ok(event(&entry)), feed));
                }
                if feed.done {
                    return None;
                }
                if !feed.read_failed {
                    tokio::select! {
                        changed = feed.subscription.changed() => if !changed { return None },
                        () = tokio::time::sleep_until(feed.ends_at) => return None,
                    }
                }
                match store::history(&feed.pool, feed.id).await {
                    Ok(history) => {
                        feed.read_failed = false;
                        feed.take_new(history);
                    }
                    Err(err) => {
                        // The change it missed may have been the last one: read again soon,
                        // rather than wait for a change that may never come.
                        tracing::warn!(error = %err, "event stream could not read the history; retrying");
                        feed.read_failed = true;
                        tokio::select! {
                            () = tokio::time::sleep(READ_RETRY) => {}
                            () = feed.closed() => return None,
                        }
                    }
                }
            }
        })
    }
}

fn is_terminal(entry: &HistoryEntry) -> bool {
    entry.status.is_terminal()
}

fn event(entry: &HistoryEntry) -> Event {
    Event::default()
        .event("status")
        .id(entry.id.clone())
        .data(json!({"status": entry.status, "at": entry.at, "event": entry.event}).to_string())
}
