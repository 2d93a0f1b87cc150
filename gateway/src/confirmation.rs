//! Confirmation by e-mail (decision 0035): the token the gateway mints when it accepts an
//! enrollment (and again on a resend), the masked address the public view shows, and the expiry
//! scan that ends an enrollment nobody confirmed in time.
//!
//! The token is 256 random bits in base64url. Only its SHA-256 is stored; the token itself
//! travels once, in the fragment of the link inside the `Enroll` (or `ResendConfirmation`)
//! command, which a browser never sends to a server.

use crate::metrics::SagaMetrics;
use crate::saga::Status;
use crate::store;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::AnyPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utility::domain::Email;

/// Whether an enrollment waits for its address's owner to confirm it (`EMAIL_CONFIRMATION`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EmailConfirmation {
    /// Nothing is enrolled until the owner of the address follows the mailed link.
    #[default]
    Required,
    /// Enrolled at once: for a deployment whose callers verified the addresses themselves.
    Off,
}

/// The public words of an enrollment that ended unconfirmed.
pub const EXPIRED_REASON: &str = "the e-mail address was not confirmed in time";

/// A new token: what goes into the link, and what is stored.
pub struct Token {
    pub text: String,
    pub hash: String,
}

impl Token {
    pub fn new() -> Self {
        let bytes: [u8; 32] = rand::random();
        let text = base64url(&bytes);
        Self {
            hash: hash(&text),
            text,
        }
    }

    /// The link the mail offers: the confirmation page, the token in the fragment.
    pub fn url(&self, origin: &crate::Origin) -> String {
        format!("{origin}/confirm#{}", self.text)
    }
}

/// SHA-256 of a presented token, hex: what the database holds and is searched by.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Base64url without padding (RFC 4648 §5): tokens and view keys.
pub(crate) fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `text` could be a token this gateway minted (43 base64url characters): anything else
/// is refused before the database is asked.
pub fn looks_like_token(text: &str) -> bool {
    text.len() == 43
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The address as the public view shows it: the first character of the local part, an
/// ellipsis, the domain (`a…@example.com`).
pub fn mask(email: &Email) -> String {
    let (local, domain) = email.as_str().rsplit_once('@').unwrap_or(("", email.as_str()));
    let first: String = local.chars().take(1).collect();
    format!("{first}…@{domain}")
}

/// Ends the enrollments nobody confirmed by their deadline: `expired`, with `ForgetEnrollment`
/// through the outbox in the same transaction. The deadline is a column, so the scan picks up
/// after a restart; the update is conditional, so several instances scanning at once expire each
/// enrollment once, and a confirmation that won the race stands.
pub struct ExpiryWatch {
    pub pool: AnyPool,
    pub every: Duration,
    pub outbox_signal: Arc<Notify>,
    pub metrics: SagaMetrics,
}

/// Enrollments expired per pass, at most.
const BATCH: i64 = 500;

impl ExpiryWatch {
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.every) => {}
            }
            if let Err(err) = self.sweep().await {
                tracing::warn!(error = %err, "expiry scan failed; will try again");
            }
        }
    }

    /// One pass; returns how many enrollments it expired.
    pub async fn sweep(&self) -> Result<usize, sqlx::Error> {
        let due = store::past_deadline(&self.pool, &utility::storage::now(), BATCH).await?;
        let mut expired = 0;
        for saga in due {
            if !store::expire(&self.pool, &saga, EXPIRED_REASON).await? {
                continue;
            }
            expired += 1;
            let duration = chrono::DateTime::parse_from_rfc3339(&saga.created_at)
                .ok()
                .and_then(|at| (chrono::Utc::now() - at.with_timezone(&chrono::Utc)).to_std().ok())
                .unwrap_or_default();
            self.metrics.finished(Status::Expired, duration);
            tracing::info!(
                outcome = %Status::Expired,
                duration_ms = duration.as_millis() as u64,
                enrollment_id = %saga.id,
                "saga finished"
            );
        }
        if expired > 0 {
            self.outbox_signal.notify_one();
        }
        Ok(expired)
    }
}

/// How often the expiry scan looks: a tenth of the deadline, between 1 s and 60 s.
pub fn scan_every(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bits_of_base64url_and_stored_as_their_hash() {
        let token = Token::new();
        assert_eq!(token.text.len(), 43);
        assert!(looks_like_token(&token.text), "{}", token.text);
        assert_eq!(token.hash, hash(&token.text));
        assert_eq!(token.hash.len(), 64);
        assert_ne!(token.text, Token::new().text);
        // RFC 4648's test vectors, without padding, and the URL-safe alphabet.
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(b"fooba"), "Zm9vYmE");
        assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert!(!looks_like_token("short"));
        assert!(!looks_like_token(&format!("{}=", &token.text[..42])));
    }

    #[test]
    fn the_link_carries_the_token_in_its_fragment() {
        let token = Token::new();
        let origin: crate::Origin = "https://enroll.example.com".parse().unwrap();
        assert_eq!(
            token.url(&origin),
            format!("https://enroll.example.com/confirm#{}", token.text)
        );
    }

    #[test]
    fn addresses_are_masked_to_their_first_character_and_domain() {
        let email = |text: &str| Email::parse(text).unwrap();
        assert_eq!(mask(&email("ada@example.com")), "a…@example.com");
        assert_eq!(mask(&email("é.x@bücher.example")), "é…@xn--bcher-kva.example");
    }
}
