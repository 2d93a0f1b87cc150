//! The one way to wait for a condition: poll a probe until it is ready or a deadline passes. When
//! the deadline passes, the error says what was awaited, for how long, and what the probe saw last,
//! so a failed wait explains itself instead of only saying "timed out".

use std::fmt;
use std::time::Duration;
use tokio::time::Instant;

/// What a probe saw: the awaited value, or what stands instead (kept for the error message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll<T, S = ()> {
    Ready(T),
    Pending(S),
}

impl<T, S> Poll<T, S> {
    /// `Ready(value)` when `condition` holds, else `Pending(seen)`.
    pub fn ready_if(condition: bool, value: T, seen: S) -> Self {
        if condition {
            Self::Ready(value)
        } else {
            Self::Pending(seen)
        }
    }
}

/// What a probe saw, shown by its `Display` in [`TimedOut::last_seen`]: a JSON body reads better
/// so than by its `Debug`.
pub struct Shown<T>(pub T);

impl<T: fmt::Display> fmt::Debug for Shown<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// How long to wait, and how often to look. A bare [`Duration`] looks every 100 ms.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    pub within: Duration,
    pub every: Duration,
}

impl Patience {
    /// The pause between two looks unless said otherwise: short enough not to slow a test
    /// noticeably, long enough not to load the emulator or the database.
    pub const EVERY: Duration = Duration::from_millis(100);

    pub fn within(within: Duration) -> Self {
        Self {
            within,
            every: Self::EVERY,
        }
    }

    /// Looks every `every` instead (a benchmark timing a phase wants a finer grain).
    pub fn every(self, every: Duration) -> Self {
        Self { every, ..self }
    }
}

impl From<Duration> for Patience {
    fn from(within: Duration) -> Self {
        Self::within(within)
    }
}

/// A wait that ran out.
#[derive(Clone)]
pub struct TimedOut {
    pub what: String,
    pub waited: Duration,
    /// The probe's last `Pending`, `{:?}`-formatted.
    pub last_seen: String,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gave up waiting for {} after {:.1} s; last seen: {}",
            self.what,
            self.waited.as_secs_f64(),
            self.last_seen
        )
    }
}

/// The same text as `Display`, so that `.unwrap()` and `.expect()` in a test print it readably.
impl fmt::Debug for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for TimedOut {}

/// Calls `probe` until it returns [`Poll::Ready`], pausing `patience.every` between calls, and
/// returns the value; after `patience.within` (checked after each call, so the probe always runs at
/// least once), the error names `what` and the last thing the probe saw.
///
/// ```text
/// let body = eventually("the saga to complete", DEADLINE, || async {
///     let body = get(&url).await;
///     Poll::ready_if(body["status"] == "completed", body.clone(), body["status"].clone())
/// })
/// .await?;
/// ```
pub async fn eventually<T, S: fmt::Debug>(
    what: &str,
    patience: impl Into<Patience>,
    mut probe: impl AsyncFnMut() -> Poll<T, S>,
) -> Result<T, TimedOut> {
    let patience = patience.into();
    let started = Instant::now();
    loop {
        match probe().await {
            Poll::Ready(value) => return Ok(value),
            Poll::Pending(seen) if started.elapsed() >= patience.within => {
                return Err(TimedOut {
                    what: what.to_owned(),
                    waited: started.elapsed(),
                    last_seen: format!("{seen:?}"),
                });
            }
            Poll::Pending(_) => tokio::time::sleep(patience.every).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_ready() {
        let mut calls = 0;
        let patience = Patience::within(Duration::from_secs(5)).every(Duration::from_millis(1));
        let value = eventually("three calls", patience, async || {
            calls += 1;
            Poll::ready_if(calls == 3, calls * 10, calls)
        })
        .await
        .unwrap();
        assert_eq!((value, calls), (30, 3));
    }

    #[tokio::test]
    async fn the_error_says_what_was_awaited_and_what_was_seen_last() {
        let mut calls = 0;
        let patience = Patience::within(Duration::from_millis(200)).every(Duration::from_millis(20));
        let err = eventually("the impossible", patience, async || {
            calls += 1;
            Poll::<(), _>::Pending(format!("call {calls}"))
        })
        .await
        .unwrap_err();
        assert_eq!(err.what, "the impossible");
        assert_eq!(err.last_seen, format!("\"call {calls}\""));
        assert!(err.waited >= Duration::from_millis(200));
        // 20 ms apart for 200 ms: about ten calls, fewer on a busy machine, never one.
        assert!((2..=12).contains(&calls), "{calls} calls");
        let text = format!("{err:?}");
        assert!(text.starts_with("gave up waiting for the impossible after "), "{text}");
        assert!(text.ends_with(&format!(" s; last seen: \"call {calls}\"")), "{text}");
    }

    #[tokio::test]
    async fn the_probe_runs_at_least_once() {
        let mut calls = 0;
        let value = eventually("at once", Duration::ZERO, async || {
            calls += 1;
            Poll::<_, ()>::Ready(calls)
        })
        .await
        .unwrap();
        assert_eq!(value, 1);
    }
}
