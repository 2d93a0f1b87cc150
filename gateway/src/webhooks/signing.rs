//! Standard Webhooks signatures, asymmetric scheme: `v1a,` + base64 of the Ed25519 signature of
//! `{webhook-id}.{webhook-timestamp}.{body}`. Anonymous callers share no secret with the gateway,
//! so it signs with a private key and publishes the public keys ([`SigningKeys::public_keys`]).
//!
//! Keys are written as the specification does: `whsk_` + base64 of the 32-byte seed (private),
//! `whpk_` + base64 of the 32-byte public key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use std::fmt;
use std::str::FromStr;

/// The private keys of `WEBHOOK_SIGNING_KEYS`: the first signs; every one's public key is
/// published, so a rotation adds the next key after the current one, then (once receivers have
/// fetched it) puts it first, then drops the old one.
#[derive(Clone)]
pub struct SigningKeys(Vec<SigningKey>);

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKeys({} keys)", self.0.len())
    }
}

impl FromStr for SigningKeys {
    type Err = String;

    /// Comma-separated `whsk_...` keys.
    fn from_str(text: &str) -> Result<Self, String> {
        let keys = text
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .enumerate()
            .map(|(n, key)| {
                let seed = key
                    .strip_prefix("whsk_")
                    .and_then(|b64| STANDARD.decode(b64).ok())
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                    .ok_or_else(|| format!("key {} is not `whsk_` and the base64 of 32 bytes", n + 1))?;
                Ok(SigningKey::from_bytes(&seed))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if keys.is_empty() {
            return Err("names no key".to_owned());
        }
        Ok(Self(keys))
    }
}

impl SigningKeys {
    /// `webhook-signature` for one attempt.
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        let signature = self.0[0].sign(format!("{id}.{timestamp}.{body}").as_bytes());
        format!("v1a,{}", STANDARD.encode(signature.to_bytes()))
    }

    /// Every key's public half, `whpk_...`, the signing one first.
    pub fn public_keys(&self) -> Vec<String> {
        self.0.iter().map(|k| public_key_text(&k.verifying_key())).collect()
    }
}

fn public_key_text(key: &VerifyingKey) -> String {
    format!("whpk_{}", STANDARD.encode(key.to_bytes()))
}

/// What a receiver does: whether one of the `v1a,` signatures in `header` (space-separated) is
/// `key`'s over the message. For the tests, and the README's example in Rust.
pub fn verify(public_key: &str, id: &str, timestamp: &str, body: &str, header: &str) -> bool {
    let Some(key) = public_key
        .strip_prefix("whpk_")
        .and_then(|b64| STANDARD.decode(b64).ok())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
    else {
        return false;
    };
    let message = format!("{id}.{timestamp}.{body}");
    header.split(' ').filter_map(|s| s.strip_prefix("v1a,")).any(|b64| {
        STANDARD
            .decode(b64)
            .ok()
            .and_then(|bytes| ed25519_dalek::Signature::from_slice(&bytes).ok())
            .is_some_and(|signature| key.verify(message.as_bytes(), &signature).is_ok())
    })
}

/// What a receiver reads of a delivery's headers: its `webhook-id`, and whether its
/// `webhook-signature` verifies with `public_key` over that id, `webhook-timestamp` and `body`.
/// For receivers written in Rust (the tests', the fault suite's); a header that is missing or not
/// text reads as empty, and does not verify.
pub fn verify_headers(public_key: &str, headers: &axum::http::HeaderMap, body: &str) -> (String, bool) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let id = header("webhook-id");
    let verified = verify(
        public_key,
        id,
        header("webhook-timestamp"),
        body,
        header("webhook-signature"),
    );
    (id.to_owned(), verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn a_signature_verifies_with_the_published_key_and_nothing_else() {
        let keys: SigningKeys = KEY.parse().unwrap();
        let public = keys.public_keys();
        assert_eq!(public.len(), 1);
        let signature = keys.sign("msg_1", 1_700_000_000, r#"{"a":1}"#);
        assert!(signature.starts_with("v1a,"));
        assert!(verify(&public[0], "msg_1", "1700000000", r#"{"a":1}"#, &signature));
        assert!(!verify(&public[0], "msg_1", "1700000001", r#"{"a":1}"#, &signature));
        assert!(!verify(&public[0], "msg_2", "1700000000", r#"{"a":1}"#, &signature));
        assert!(!verify(&public[0], "msg_1", "1700000000", r#"{"a":2}"#, &signature));
        assert!(!verify("whpk_AAAA", "msg_1", "1700000000", r#"{"a":1}"#, &signature));
    }

    #[test]
    fn keys_are_whsk_and_32_bytes() {
        assert!("".parse::<SigningKeys>().is_err());
        assert!("whsk_AAAA".parse::<SigningKeys>().is_err());
        assert!(
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
                .parse::<SigningKeys>()
                .is_err()
        );
        let two: SigningKeys = format!("{KEY}, whsk_{}", STANDARD.encode([7u8; 32])).parse().unwrap();
        assert_eq!(two.public_keys().len(), 2);
        assert_eq!(format!("{two:?}"), "SigningKeys(2 keys)");
    }
}
