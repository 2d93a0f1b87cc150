//! The mail the customer-api sent, read back from the emulator's SES: LocalStack keeps every mail
//! SES accepted and lists them at `GET /_aws/ses` (`{"messages": [{"Id", "Source",
//! "Destination": {"ToAddresses"}, "Subject", "Body": {"text_part", "html_part"}, "Timestamp"}]}`).
//! Tests use a fresh address each, so the mails of one address are the test's own.

use crate::poll::{Patience, Poll, Shown, eventually};
use serde_json::Value;
use std::time::Duration;

/// One mail as the emulator holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMail {
    pub id: String,
    pub source: String,
    pub to: Vec<String>,
    pub subject: String,
    /// The text part of the body (empty when the mail has none).
    pub text: String,
    /// As the emulator stamps it (`2026-12-06T21:49:04`, UTC), in the order mails were sent.
    pub timestamp: String,
}

impl SentMail {
    fn from_json(message: &Value) -> Self {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Self {
            id: text(&message["Id"]),
            source: text(&message["Source"]),
            to: message["Destination"]["ToAddresses"]
                .as_array()
                .map(|to| to.iter().map(text).collect())
                .unwrap_or_default(),
            subject: text(&message["Subject"]),
            text: text(&message["Body"]["text_part"]),
            timestamp: text(&message["Timestamp"]),
        }
    }

    /// The first `http://` or `https://` link in the text, as written.
    pub fn link(&self) -> Option<&str> {
        let start = ["https://", "http://"]
            .iter()
            .filter_map(|scheme| self.text.find(scheme))
            .min()?;
        let rest = &self.text[start..];
        let end = rest
            .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"'))
            .unwrap_or(rest.len());
        Some(&rest[..end])
    }

    /// The link's fragment: the confirmation token of a confirmation mail (`<origin>/confirm#<token>`).
    pub fn token(&self) -> Option<&str> {
        self.link()?
            .split_once('#')
            .map(|(_, token)| token)
            .filter(|t| !t.is_empty())
    }
}

/// LocalStack's list of sent mail.
pub fn endpoint() -> String {
    format!("{}/_aws/ses", crate::emulator_endpoint().trim_end_matches('/'))
}

/// How often the list is read: it holds every mail the emulator ever sent, so not too often.
const EVERY: Duration = Duration::from_millis(250);

/// Every mail sent to `address` (compared case-insensitively), oldest first.
pub async fn sent_to(address: &str) -> Result<Vec<SentMail>, String> {
    let mut mails = all_sent(&crate::emulator_endpoint()).await?;
    mails.retain(|mail| mail.to.iter().any(|to| to.eq_ignore_ascii_case(address)));
    Ok(mails)
}

/// Every mail the emulator at `emulator` (its base address) ever sent, oldest first: one read
/// for a caller that follows many addresses at once.
pub async fn all_sent(emulator: &str) -> Result<Vec<SentMail>, String> {
    let url = format!("{}/_aws/ses", emulator.trim_end_matches('/'));
    let response = reqwest::get(&url).await.map_err(|e| format!("GET {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {url} answered {}", response.status()));
    }
    let body: Value = response.json().await.map_err(|e| format!("not JSON: {e}"))?;
    let mut mails: Vec<SentMail> = body["messages"]
        .as_array()
        .ok_or_else(|| format!("no `messages` in {body}"))?
        .iter()
        .map(SentMail::from_json)
        .collect();
    mails.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
    Ok(mails)
}

/// Waits until at least `count` mails were sent to `address` and returns them all, oldest
/// first; fails after `within`, showing what arrived.
pub async fn wait_for(address: &str, count: usize, within: Duration) -> Vec<SentMail> {
    let what = format!("{count} mail(s) to {address}");
    eventually(&what, Patience::within(within).every(EVERY), async || {
        match sent_to(address).await {
            Ok(mails) => {
                let shown = Shown(format!("{} mail(s): {mails:?}", mails.len()));
                Poll::ready_if(mails.len() >= count, mails, shown)
            }
            Err(err) => Poll::ready_if(false, Vec::new(), Shown(err)),
        }
    })
    .await
    .unwrap()
}

/// The one mail sent to `address` within [`crate::DEADLINE`].
pub async fn wait_for_one(address: &str) -> SentMail {
    wait_for(address, 1, crate::DEADLINE).await.remove(0)
}

/// Waits until a mail to `address` holds a confirmation link, and returns its token.
pub async fn wait_for_token(address: &str) -> String {
    let what = format!("a confirmation link mailed to {address}");
    eventually(&what, Patience::within(crate::DEADLINE).every(EVERY), async || {
        let mails = sent_to(address).await.unwrap_or_default();
        let token = mails.iter().rev().find_map(|m| m.token().map(str::to_owned));
        let shown = Shown(format!("{mails:?}"));
        Poll::ready_if(token.is_some(), token.unwrap_or_default(), shown)
    })
    .await
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_and_its_token_are_read_from_the_text() {
        let mail = SentMail::from_json(&serde_json::json!({
            "Id": "m1",
            "Source": "no-reply@enrollment.local",
            "Destination": {"ToAddresses": ["ada@example.com"]},
            "Subject": "Confirm your enrollment",
            "Body": {"text_part": "Open\n\nhttp://127.0.0.1:8080/confirm#abc-_1\n\nThe link works once.", "html_part": null},
            "Timestamp": "2026-12-06T21:49:04"
        }));
        assert_eq!(mail.to, ["ada@example.com"]);
        assert_eq!(mail.link(), Some("http://127.0.0.1:8080/confirm#abc-_1"));
        assert_eq!(mail.token(), Some("abc-_1"));
        let note = SentMail {
            text: "It is already enrolled.".to_owned(),
            ..mail
        };
        assert_eq!(note.link(), None);
        assert_eq!(note.token(), None);
    }
}
