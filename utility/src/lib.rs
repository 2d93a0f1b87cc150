//! Shared building blocks of the enrollment saga.
//!
//! Every service is the same shape: an HTTP API, one SQS consumer and one outbox relay, all
//! sharing a database. This crate holds the parts that must behave identically everywhere, one
//! concern per module, layered so that no module imports one that imports it back:
//!
//! | module | concern | uses |
//! |---|---|---|
//! | [`domain`] | validated values (names, e-mails) and field errors | - |
//! | [`backoff`] | retry delays with full jitter | - |
//! | [`error`] | an error and its causes as one line of text | - |
//! | [`observe`] | trace context across the bus, Prometheus metrics | - |
//! | [`storage`] | the database pool, migrations, the stored time format, error classes, retention | - |
//! | [`messaging`] | the wire contract (envelope, messages, endpoints), the bus client, topology lookup, consumer loop, outbox | `storage`, `domain`, `backoff` |
//! | [`http`] | problem+json errors, strict extractors, request limits, `/health` and `/ready` | `storage`, `messaging` |
//! | [`runtime`] | configuration, logs, the task supervisor, the service core, and the `Service` trait and `Application` every binary runs | all of the above |

pub mod backoff;
pub mod domain;
pub mod error;
pub mod http;
pub mod messaging;
pub mod observe;
pub mod runtime;
pub mod storage;
