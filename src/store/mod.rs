//! Where norns are kept: the [`NornStore`] seam.
//!
//! The hub keeps every live norn in memory (it must route without I/O); the store is what makes a
//! norn that was answered 201 survive a restart or a crash. `embedded` (redb, a file in the data
//! directory) is the default; a JetStream KV store for cluster mode can sit behind the same trait.
//!
//! [`HistoryStore`] keeps the live history (the last events of each key) across restarts; it is
//! written in group commits by `hub::history`, never once per event.

pub mod embedded;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::Event;
use crate::norn::Norn;
use crate::wrp::WrpMessage;

/// A store that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store failed: {0}")]
    Backend(String),
    #[error("a stored norn could not be read: {0}")]
    Corrupt(String),
}

/// Durable norns. A write that returned `Ok` is on disk (or replicated, for a clustered store).
#[async_trait]
pub trait NornStore: Send + Sync {
    /// Inserts or replaces the norn with `norn.id`.
    async fn put(&self, norn: &Norn) -> Result<(), StoreError>;
    /// Removes a norn; `false` if it was not there.
    async fn delete(&self, id: Uuid) -> Result<bool, StoreError>;
    /// Removes several norns in one write (expiry).
    async fn delete_many(&self, ids: &[Uuid]) -> Result<(), StoreError>;
    /// Every stored norn, for loading at start-up.
    async fn load_all(&self) -> Result<Vec<Norn>, StoreError>;
}

/// History kept across restarts, as a log: each group commit appends one entry, and compaction
/// replaces the whole log with what history holds now. Loading replays the log through the
/// history's limits, so events that were evicted are evicted again and need no record of their
/// own.
#[async_trait]
pub trait HistoryStore: Send + Sync {
    /// Appends `events` as one entry, durably; returns the bytes written.
    async fn append(&self, events: Vec<Arc<Event>>) -> Result<u64, StoreError>;
    /// Replaces the whole log with `events`, in one durable write; returns the bytes written.
    async fn replace(&self, events: Vec<Arc<Event>>) -> Result<u64, StoreError>;
    /// Every logged event, in the order appended, and the log's size in bytes.
    async fn load(&self) -> Result<(Vec<Event>, u64), StoreError>;
}

/// An event as the history log writes it (msgpack).
#[derive(Serialize, Deserialize)]
struct StoredEvent<'a> {
    id: u128,
    key: std::borrow::Cow<'a, str>,
    kind: std::borrow::Cow<'a, str>,
    source: std::borrow::Cow<'a, str>,
    time_ms: i64,
    content_type: std::borrow::Cow<'a, str>,
    #[serde(with = "serde_bytes", borrow)]
    payload: std::borrow::Cow<'a, [u8]>,
    /// The WRP message in its own msgpack encoding.
    #[serde(with = "serde_bytes", default)]
    wrp: Option<Vec<u8>>,
}

/// One log entry: `events` as a msgpack array.
pub fn encode_events(events: &[Arc<Event>]) -> Vec<u8> {
    let stored: Vec<StoredEvent> = events
        .iter()
        .map(|event| StoredEvent {
            id: event.id.as_u128(),
            key: event.key.as_str().into(),
            kind: event.kind.as_str().into(),
            source: event.source.into(),
            time_ms: event.time_ms,
            content_type: event.content_type.as_str().into(),
            payload: event.payload.as_ref().into(),
            wrp: event.wrp.as_ref().map(WrpMessage::to_msgpack),
        })
        .collect();
    // Positional (fields by order, not by name): smaller and quicker, and only brunnr reads it.
    rmp_serde::to_vec(&stored).expect("events always encode")
}

/// Reads a log entry written by [`encode_events`].
pub fn decode_events(bytes: &[u8]) -> Result<Vec<Event>, StoreError> {
    let corrupt = |error: String| StoreError::Corrupt(format!("history log entry: {error}"));
    let stored: Vec<StoredEvent> =
        rmp_serde::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    stored
        .into_iter()
        .map(|stored| {
            let wrp = match stored.wrp {
                Some(bytes) => Some(
                    WrpMessage::from_msgpack(&bytes).map_err(|error| corrupt(error.to_string()))?,
                ),
                None => None,
            };
            Ok(Event {
                id: Uuid::from_u128(stored.id),
                key: stored.key.into_owned(),
                kind: stored.kind.into_owned(),
                source: crate::event::source_name(&stored.source),
                time_ms: stored.time_ms,
                content_type: stored.content_type.into_owned(),
                payload: Bytes::from(stored.payload.into_owned()),
                wrp,
            })
        })
        .collect()
}
