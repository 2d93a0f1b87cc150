//! What an operator sees of a running service, below everything that produces it: the trace
//! context carried across the bus ([`context`]) and the Prometheus metrics ([`metrics`]).

pub mod context;
pub mod metrics;
