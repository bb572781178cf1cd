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

/// History kept across restarts. Ids are UUIDv7, so id order is time order.
#[async_trait]
pub trait HistoryStore: Send + Sync {
    /// Writes `appended` and removes `evicted`, in one durable write.
    async fn commit(&self, appended: Vec<Arc<Event>>, evicted: Vec<Uuid>)
    -> Result<(), StoreError>;
    /// Every stored event, oldest first; events older than `since_ms` are removed instead.
    async fn load(&self, since_ms: i64) -> Result<Vec<Event>, StoreError>;
}

/// An event as the history store writes it (msgpack).
#[derive(Serialize, Deserialize)]
struct StoredEvent<'a> {
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

/// The stored form of `event`.
pub fn encode_event(event: &Event) -> Vec<u8> {
    let stored = StoredEvent {
        key: event.key.as_str().into(),
        kind: event.kind.as_str().into(),
        source: event.source.into(),
        time_ms: event.time_ms,
        content_type: event.content_type.as_str().into(),
        payload: event.payload.as_ref().into(),
        wrp: event.wrp.as_ref().map(WrpMessage::to_msgpack),
    };
    rmp_serde::to_vec_named(&stored).expect("an event always encodes")
}

/// Reads an event written by [`encode_event`].
pub fn decode_event(id: Uuid, bytes: &[u8]) -> Result<Event, StoreError> {
    let corrupt = |error: String| StoreError::Corrupt(format!("history event {id}: {error}"));
    let stored: StoredEvent = rmp_serde::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let wrp = match stored.wrp {
        Some(bytes) => {
            Some(WrpMessage::from_msgpack(&bytes).map_err(|error| corrupt(error.to_string()))?)
        }
        None => None,
    };
    Ok(Event {
        id,
        key: stored.key.into_owned(),
        kind: stored.kind.into_owned(),
        source: crate::event::source_name(&stored.source),
        time_ms: stored.time_ms,
        content_type: stored.content_type.into_owned(),
        payload: Bytes::from(stored.payload.into_owned()),
        wrp,
    })
}
