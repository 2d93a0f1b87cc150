//! Running a service: typed configuration ([`config`]), logs ([`telemetry`]), the task
//! supervisor with the one shutdown path ([`supervisor`]), [`service::ServiceCore`], what every
//! service is built from, and [`application`]: the [`Service`] trait a service implements to say
//! what else it is made of, the [`Application`] that builds and runs it, and the [`main`] of
//! every binary.

pub mod application;
pub mod config;
pub mod service;
pub mod supervisor;
pub mod telemetry;

pub use application::{Application, Service, main};
pub use service::ServiceCore;
pub use supervisor::{Task, shutdown_on_signal};
