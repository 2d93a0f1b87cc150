//! Shared building blocks of the enrollment saga.
//!
//! Every service is the same shape: an HTTP API, one SQS consumer and one outbox relay, all
//! sharing a database. This crate holds the parts that must behave identically everywhere:
//! the wire format ([`envelope`], [`message`]), the bus client ([`bus`]), how a service finds
//! its queues and topics ([`topology`]), at-least-once handling ([`consumer`], [`outbox`]),
//! storage ([`db`]), configuration ([`config`]), logging ([`telemetry`]), HTTP errors
//! ([`problem`]) and the task supervisor with graceful shutdown ([`service`]).

pub mod bus;
pub mod config;
pub mod consumer;
pub mod db;
pub mod domain;
pub mod envelope;
pub mod message;
pub mod outbox;
pub mod problem;
pub mod retention;
pub mod service;
pub mod telemetry;
pub mod topology;

/// Timestamps are stored as RFC 3339 text with millisecond precision in UTC, which sorts
/// lexically in both SQLite and PostgreSQL.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The current time in the stored format.
pub fn now() -> String {
    timestamp(chrono::Utc::now())
}
