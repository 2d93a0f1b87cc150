//! Everything that crosses the bus.
//!
//! - The wire contract, declared once: [`envelope`] (the one versioned envelope), [`message`] (the
//!   typed commands and events; a message type is one enum variant, declared with its route) and
//!   [`endpoint`] (every queue and topic, with the messaging stack's output names for each, and
//!   the services that consume and publish them).
//! - [`bus`]: the SNS/SQS client, batch APIs only.
//! - [`topology`]: how a service finds and verifies its queues and topics at start-up.
//! - At-least-once handling: [`consumer`] (receive, handle in a transaction, delete) and
//!   [`outbox`] (write with the state change, publish afterwards).

pub mod asyncapi;
pub mod bus;
pub mod consumer;
pub mod endpoint;
pub mod envelope;
pub mod lookup;
pub mod message;
pub mod outbox;
pub mod topology;

pub use endpoint::{Endpoint, Participant};
pub use envelope::Envelope;
pub use message::{Message, MessageType};
