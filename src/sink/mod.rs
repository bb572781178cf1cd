//! Sinks: where a subscription's events leave brunnr.
//!
//! A sink delivers one batch for one subscription and says how it went; the hub's per-subscription
//! worker owns the loop, the retries and the metrics. Sinks never queue on their own.
//!
//! Live sessions are sinks of another shape: `websocket` and `sse` write a session's events to
//! its connection from the session's own task, as they come (no retries: a session that falls
//! behind is closed and replays when it comes back), in the wire formats of `frames`.

pub mod address_policy;
pub mod frames;
pub mod nats;
pub mod sqs;
pub mod sse;
pub mod webhook;
pub mod websocket;

use std::time::Duration;

use async_trait::async_trait;

use crate::event::Event;

/// Delivers events to one destination.
#[async_trait]
pub trait Sink: Send + Sync {
    /// The sink kind, as metrics label it (`webhook`, `sqs`, `nats`).
    fn name(&self) -> &'static str;

    /// How many events one `deliver` call takes at most.
    fn max_batch(&self) -> usize {
        1
    }

    /// Delivers `batch` (at most `max_batch` events), in order.
    async fn deliver(&self, batch: &[std::sync::Arc<Event>]) -> Result<(), DeliveryError>;
}

/// A delivery that did not succeed.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DeliveryError {
    /// Worth trying again: connection errors, timeouts, 408, 429, 5xx.
    #[error("{reason}")]
    Retryable {
        reason: String,
        /// What the destination asked for (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Not worth trying again: other 4xx, refused addresses, unencodable events.
    #[error("{reason}")]
    Permanent { reason: String },
    /// Some of a batch failed: the events at `retry` (indices into the batch) are worth trying
    /// again, those at `failed` are not; the rest were delivered.
    #[error("{reason}")]
    Partial {
        retry: Vec<usize>,
        failed: Vec<usize>,
        reason: String,
    },
}
