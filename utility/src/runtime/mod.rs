//! Running a service: typed configuration ([`config`]), logs ([`telemetry`]), the task
//! supervisor with the one shutdown path ([`supervisor`]), and [`service::ServiceCore`], which
//! every binary builds and runs.

pub mod config;
pub mod service;
pub mod supervisor;
pub mod telemetry;

pub use service::ServiceCore;
pub use supervisor::{Task, shutdown_on_signal};
