//! Raw HTTP/1.1 over a plain `TcpStream`, for requests no HTTP client would send as they are
//! (bytes that are not a URI, contradictory framing, a body that stops half-way), and answers
//! that may be a bare status from hyper or a closed connection.

use serde_json::Value;
use std::io::{Read, Write};
use std::time::Duration;

/// Raw connections may wait for the gateway's own body timeout (10 s) first.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(25);

/// What came back on a raw connection.
#[derive(Debug)]
pub enum Raw {
    Answer {
        status: u16,
        content_type: Option<String>,
        body: Vec<u8>,
    },
    /// The server closed (or reset) the connection without answering.
    Closed,
}

/// Sends `request` bytes as they are (no client to tidy them up) and reads the answer; the
/// request should say `Connection: close`. `write_shut` half-closes after writing, as a client
/// that gives up mid-body would. Panics when the server neither answers nor closes in time.
pub async fn raw(port: u16, request: Vec<u8>, write_shut: bool) -> Raw {
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(RAW_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(RAW_TIMEOUT)).expect("timeout");
        // The server may answer and close before it has read everything: a failed write is fine,
        // what counts is what comes back.
        let _ = stream.write_all(&request);
        if write_shut {
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        let mut answer = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    panic!("no answer and no close within {RAW_TIMEOUT:?} (a hang)")
                }
                // Reset: the server dropped the connection.
                Err(_) => break,
            }
        }
        parse_answer(&answer)
    })
    .await
    .expect("raw exchange")
}

fn parse_answer(answer: &[u8]) -> Raw {
    let Some(split) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Raw::Closed;
    };
    let head = String::from_utf8_lossy(&answer[..split]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_owned());
    Raw::Answer {
        status,
        content_type,
        body: answer[split + 4..].to_vec(),
    }
}

/// An application-level refusal: problem+json with `status`.
pub fn assert_problem(raw: &Raw, status: u16, what: &str) {
    let Raw::Answer {
        status: got,
        content_type,
        body,
    } = raw
    else {
        panic!("{what}: the connection closed without an answer")
    };
    assert_eq!(*got, status, "{what}: {}", String::from_utf8_lossy(body));
    assert_eq!(content_type.as_deref(), Some("application/problem+json"), "{what}");
    let body: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
    assert_eq!(body["status"], status, "{what}");
}

/// A protocol-level refusal by hyper: one of `statuses`, or a clean close. Never a 5xx.
pub fn assert_refused(raw: &Raw, statuses: &[u16], what: &str) {
    match raw {
        Raw::Answer { status, .. } => eprintln!("protocol level, {what}: hyper answered {status}"),
        Raw::Closed => eprintln!("protocol level, {what}: hyper closed the connection"),
    }
    if let Raw::Answer { status, body, .. } = raw {
        assert!(
            statuses.contains(status),
            "{what}: expected one of {statuses:?} or a close, got {status}: {}",
            String::from_utf8_lossy(body)
        );
    }
}

pub fn request(method: &str, target: &[u8], headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}
