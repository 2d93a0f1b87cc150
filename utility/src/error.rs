//! An error and its causes as one line of text, for logs and for error types that carry a
//! `detail` string.

use std::error::Error;

/// `err`'s `Display`, then each of its sources in order, joined by `": "`. A source whose text is
/// already contained in a part before it is left out: many wrappers (the AWS SDK's among them)
/// repeat their source's message, and the line would say it twice. Nothing else is changed:
/// line breaks inside a message are kept.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    fn layers(texts: &[&'static str]) -> Layer {
        texts
            .iter()
            .rev()
            .fold(None, |source, &text| {
                Some(Layer {
                    text,
                    source: source.map(Box::new),
                })
            })
            .expect("at least one layer")
    }

    #[test]
    fn each_source_follows_its_wrapper() {
        assert_eq!(
            chain(&layers(&["dispatch failure", "io error", "connection refused"])),
            "dispatch failure: io error: connection refused"
        );
        assert_eq!(chain(&layers(&["alone"])), "alone");
    }

    #[test]
    fn a_source_a_wrapper_already_quotes_is_said_once() {
        assert_eq!(
            chain(&layers(&["send failed: timed out", "timed out", "deadline"])),
            "send failed: timed out: deadline"
        );
    }
}
