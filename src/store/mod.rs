//! Where norns are kept: the [`NornStore`] seam.
//!
//! The hub keeps every live norn in memory (it must route without I/O); the store is what makes a
//! norn that was answered 201 survive a restart or a crash. `embedded` (redb, a file in the data
//! directory) is the default; a JetStream KV store for cluster mode can sit behind the same trait.

pub mod embedded;

use async_trait::async_trait;
use uuid::Uuid;

use crate::norn::Norn;

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
