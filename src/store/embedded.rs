//! The embedded store: a redb database (`norns.redb`) in the data directory, holding norns and
//! the live history.
//!
//! redb is pure Rust, ACID and crash-safe: every committed write transaction is fsynced, so a norn
//! is answered 201 only once it would survive `kill -9`. Norns are stored as JSON by id; history
//! events as msgpack by id (UUIDv7 as a u128 sorts by time). redb's API is blocking, so each call
//! runs on tokio's blocking pool.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use uuid::Uuid;

use super::{HistoryStore, NornStore, StoreError};
use crate::event::Event;
use crate::norn::Norn;

const NORNS: TableDefinition<u128, &[u8]> = TableDefinition::new("norns");
const HISTORY: TableDefinition<u128, &[u8]> = TableDefinition::new("history");

/// Norns in a redb file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

fn backend(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(error.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, creating the directory if needed.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|error| {
            StoreError::Backend(format!("cannot create {}: {error}", dir.display()))
        })?;
        let path = dir.join("norns.redb");
        let db = Database::create(&path).map_err(|error| {
            StoreError::Backend(format!("cannot open {}: {error}", path.display()))
        })?;
        let write = db.begin_write().map_err(backend)?;
        write.open_table(NORNS).map_err(backend)?;
        write.open_table(HISTORY).map_err(backend)?;
        write.commit().map_err(backend)?;
        Ok(EmbeddedStore { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(backend)?
    }
}

#[async_trait]
impl NornStore for EmbeddedStore {
    async fn put(&self, norn: &Norn) -> Result<(), StoreError> {
        let (id, bytes) = (
            norn.id.as_u128(),
            serde_json::to_vec(norn).map_err(backend)?,
        );
        self.blocking(move |db| {
            let write = db.begin_write().map_err(backend)?;
            write
                .open_table(NORNS)
                .map_err(backend)?
                .insert(id, bytes.as_slice())
                .map_err(backend)?;
            write.commit().map_err(backend)
        })
        .await
    }

    async fn delete(&self, id: Uuid) -> Result<bool, StoreError> {
        self.blocking(move |db| {
            let write = db.begin_write().map_err(backend)?;
            let existed = write
                .open_table(NORNS)
                .map_err(backend)?
                .remove(id.as_u128())
                .map_err(backend)?
                .is_some();
            write.commit().map_err(backend)?;
            Ok(existed)
        })
        .await
    }

    async fn delete_many(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        let ids: Vec<u128> = ids.iter().map(|id| id.as_u128()).collect();
        self.blocking(move |db| {
            let write = db.begin_write().map_err(backend)?;
            {
                let mut table = write.open_table(NORNS).map_err(backend)?;
                for id in ids {
                    table.remove(id).map_err(backend)?;
                }
            }
            write.commit().map_err(backend)
        })
        .await
    }

    async fn load_all(&self) -> Result<Vec<Norn>, StoreError> {
        self.blocking(|db| {
            let read = db.begin_read().map_err(backend)?;
            let table = read.open_table(NORNS).map_err(backend)?;
            let mut norns = Vec::new();
            for entry in table.iter().map_err(backend)? {
                let (_, value) = entry.map_err(backend)?;
                norns.push(
                    serde_json::from_slice(value.value())
                        .map_err(|error| StoreError::Corrupt(error.to_string()))?,
                );
            }
            Ok(norns)
        })
        .await
    }
}

#[async_trait]
impl HistoryStore for EmbeddedStore {
    async fn commit(
        &self,
        appended: Vec<Arc<Event>>,
        evicted: Vec<Uuid>,
    ) -> Result<(), StoreError> {
        self.blocking(move |db| {
            // Encoded here, on the blocking pool: a commit can hold thousands of events, and
            // encoding them on a runtime thread would stall the sessions sharing it.
            let rows: Vec<(u128, Vec<u8>)> = appended
                .iter()
                .map(|event| (event.id.as_u128(), super::encode_event(event)))
                .collect();
            let write = db.begin_write().map_err(backend)?;
            {
                let mut table = write.open_table(HISTORY).map_err(backend)?;
                for (id, bytes) in &rows {
                    table.insert(*id, bytes.as_slice()).map_err(backend)?;
                }
                for id in evicted {
                    table.remove(id.as_u128()).map_err(backend)?;
                }
            }
            write.commit().map_err(backend)
        })
        .await
    }

    async fn load(&self, since_ms: i64) -> Result<Vec<Event>, StoreError> {
        self.blocking(move |db| {
            // UUIDv7 keeps the milliseconds in its top 48 bits.
            let first_kept = (since_ms.max(0) as u128) << 80;
            let write = db.begin_write().map_err(backend)?;
            let mut events = Vec::new();
            {
                let mut table = write.open_table(HISTORY).map_err(backend)?;
                table
                    .retain_in(..first_kept, |_, _| false)
                    .map_err(backend)?;
                for entry in table.iter().map_err(backend)? {
                    let (id, value) = entry.map_err(backend)?;
                    let id = Uuid::from_u128(id.value());
                    match super::decode_event(id, value.value()) {
                        Ok(event) => events.push(event),
                        // One bad row must not cost the rest of the history.
                        Err(error) => tracing::warn!(%error, "Skipping a stored history event."),
                    }
                }
            }
            write.commit().map_err(backend)?;
            Ok(events)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::norn::{Destination, HttpDestination, HttpFormat};

    fn norn(key: &str) -> Norn {
        Norn {
            id: Uuid::now_v7(),
            key: key.into(),
            destination: Destination::Http(HttpDestination {
                url: "https://example.com/".into(),
                secret: Some("s".into()),
                failure_url: None,
                format: HttpFormat::Json,
            }),
            duration_ms: None,
            filter: Some("event.kind == 'x'".into()),
            expires_at_ms: 1,
            owner: "alice".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[tokio::test]
    async fn put_load_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (norn("mac:1"), norn("mac:2"));
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store.put(&a).await.unwrap();
            store.put(&b).await.unwrap();
            assert!(store.delete(b.id).await.unwrap());
            assert!(!store.delete(b.id).await.unwrap());
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.load_all().await.unwrap(), vec![a.clone()]);
        store.delete_many(&[a.id]).await.unwrap();
        assert!(store.load_all().await.unwrap().is_empty());
    }
}
