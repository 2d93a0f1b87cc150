//! `GET /api/enrollments/{view_key}/events`: the saga's history as server-sent events, then each new
//! entry as it happens, until the terminal status.
//!
//! Each `status` event carries its history entry's id as the SSE `id`, so a client that
//! reconnects with `Last-Event-ID` resumes after it, with no repeat and no gap (a client that
//! already has the terminal entry gets 204 No Content, which stops an EventSource). A comment line
//! every 15 s keeps proxies from closing a quiet stream. At most `MAX_EVENT_STREAMS` are open
//! (503 beyond), at most `MAX_EVENT_STREAMS_PER_CLIENT` of one client (429 beyond), each ends after `MAX_STREAM_SECONDS` even if its saga has not (the client
//! resumes with `Last-Event-ID`), and all end when the service stops, so none holds up a graceful
//! shutdown or keeps its place for ever. After the first read, a stream reads nothing itself: the
//! live-updates poller reads the history once per change and hands it to every stream of the
//! saga ([`crate::live`]).

use super::AppState;
use super::edge::Client;
use crate::live::{Place, Refused, Subscription};
use crate::store::{self, HistoryEntry};
use axum::Extension;
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
use utility::http::{Problem, ProblemPath};
use uuid::Uuid;

const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How soon a stream reads the history again after a failed read.
const READ_RETRY: Duration = Duration::from_secs(1);
/// How long a client refused a stream for holding too many is asked to wait.
const RETRY_AFTER_SECONDS: u64 = 10;

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
    path = "/api/enrollments/{view_key}/events",
    tag = "enrollments",
    operation_id = "followEnrollment",
    params(super::enrollments::ViewKey, ResumeHeader),
    responses(
        (status = 200, description = "The stream of `status` events; each `data` is a `HistoryEntry`.",
            body = StatusEvent, content_type = "text/event-stream"),
        (status = 204, description = "`Last-Event-ID` names the terminal entry: nothing more will come."),
        (status = 400, description = "This is not a view key (an enrollment id is not one).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No enrollment has this view key.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "This client already has as many streams open as one client may; retry after `Retry-After` seconds.",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub(super) async fn events(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    ProblemPath(view_key): ProblemPath<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = super::enrollments::resolve(&state.pool, &view_key).await?;
    let place = match state.hub.stream_place(client.0) {
        Ok(place) => place,
        Err(Refused::Full) => return Err(Problem::unavailable("too many event streams are open; retry shortly")),
        Err(Refused::ClientFull) => {
            tracing::info!(client = %client.0, "event streams per client reached");
            return Ok(super::edge::too_many(
                "this address already has as many event streams open as one client may; retry after \
                 the time in Retry-After",
                RETRY_AFTER_SECONDS,
            ));
        }
    };
    // Subscribe before the first read, so no change falls between the two.
    let subscription = state.hub.follow(&id.to_string());
    state.hub.count_read();
    let history = store::history(&state.pool, id).await?;
    if history.is_empty() {
        return Err(Problem::not_found("no enrollment at this address"));
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
        _place: place,
    };
    feed.take_new(&history);
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
    _place: Place,
}

impl Feed {
    /// Queues the entries after `last_sent` (all of them when the client named one that is
    /// unknown: better a repeat the client can recognise by id than a gap). Marks the feed done
    /// when the client already has the terminal entry.
    fn take_new(&mut self, history: &[HistoryEntry]) {
        let start = match &self.last_sent {
            Some(last) => history.iter().position(|e| &e.id == last).map_or(0, |i| i + 1),
            None => 0,
        };
        if history[..start].iter().any(is_terminal) {
            self.done = true;
            return;
        }
        self.pending = history[start..].iter().cloned().collect();
    }

    /// Takes a history the poller read after a change. One read before this stream's own first
    /// read may come late and lack what was sent already; it is skipped.
    fn take_shared(&mut self, history: &[HistoryEntry]) {
        let stale = self
            .last_sent
            .as_ref()
            .is_some_and(|last| !history.iter().any(|e| &e.id == last));
        if !stale {
            self.take_new(history);
        }
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
                    // The poller read the history for every stream of this saga at once.
                    if let Some(history) = feed.subscription.history() {
                        feed.take_shared(&history);
                        continue;
                    }
                }
                // The poller read none (this stream opened just as it looked), or this
                // stream's own read failed: read it here.
                feed.hub.count_read();
                match store::history(&feed.pool, feed.id).await {
                    Ok(history) => {
                        feed.read_failed = false;
                        feed.take_new(&history);
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
