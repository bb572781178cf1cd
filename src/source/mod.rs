//! Sources: each takes events in over one protocol, validates and decodes them into [`Event`]s,
//! and hands them to the hub. A source never waits on a destination; when the hub's ingest queue
//! is full it refuses (HTTP 429) and the sender retries.
//!
//! [`Event`]: crate::event::Event

pub mod caduceus;
pub mod kaa;
pub mod monit;
pub mod nats;
pub mod notifier;
pub mod wrp;
