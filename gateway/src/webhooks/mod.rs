//! Callbacks: signed webhooks for every status change of an enrollment that names a
//! `callback_url` (decision 0044).
//!
//! The saga writes each history entry with an `EnrollmentStatusChanged` in its outbox
//! ([`crate::store::insert_history`]), with a `callback` attribute saying whether the enrollment
//! has one; the relay publishes it to the gateway's topic, whose subscription brings those with
//! `callback` = `yes` to the `webhook-deliveries` queue; [`delivery::ScheduleHandler`] turns it
//! into a delivery row and [`delivery::Dispatcher`] posts it, signed ([`signing`]), through a
//! client that reaches public addresses only ([`client`], [`address`]). Operators see each
//! delivery and its attempts ([`view`]).

pub mod address;
pub mod client;
pub mod delivery;
pub mod signing;
pub mod view;

use std::sync::Arc;

/// What the HTTP routes need of callbacks: the URL policy and the keys to publish. `None` in
/// [`crate::http::AppState`] when no signing key is configured: callbacks are off.
#[derive(Clone, Debug)]
pub struct Callbacks {
    pub policy: Arc<address::Policy>,
    pub keys: signing::SigningKeys,
}
