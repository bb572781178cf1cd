//! The embedded store: a redb database (`norns.redb`) in the data directory, holding norns and
//! the live history.
//!
//! redb is pure Rust, ACID and crash-safe: every committed write transaction is fsynced, so a norn
//! is answered 201 only once it would survive `kill -9`. Norns are stored as JSON by id; history as
//! a log of group commits (msgpack). redb's API is blocking, so each call
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
/// The history log: entry number → a group commit's events.
const HISTORY_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("history_log");
/// Events per log entry when the log is rewritten by compaction.
const EVENTS_PER_ENTRY: usize = 4096;

/// Norns and the history log in a redb file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    background: std::sync::mpsc::Sender<Job>,
}

/// Work for the background thread; what it returns answers the caller.
type Job = Box<dyn FnOnce(&Database) -> Box<dyn FnOnce() + Send> + Send>;

/// History commits run on a thread of their own at a lower priority: they are background work
/// (encoding and writing thousands of events every commit interval), and on a busy machine they
/// should wait for the threads serving sessions, not delay them.
fn spawn_background_writer(db: std::sync::Weak<Database>) -> std::sync::mpsc::Sender<Job> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("brunnr-history".into())
        .spawn(move || {
            #[cfg(target_os = "linux")]
            // SAFETY: setpriority has no memory effects; on Linux, PRIO_PROCESS with 0 names the
            // calling thread. Failing to lower the priority is harmless, so the result is ignored.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            }
            // Ends when the last store handle is dropped. The database is only borrowed for
            // each job, so that it closes (and can be opened again) as soon as the store goes.
            while let Ok(job) = rx.recv() {
                let Some(reply) = db.upgrade().map(|db| job(&db)) else {
                    continue;
                };
                // The database is released before the caller hears back.
                reply();
            }
        })
        .expect("a thread can be started");
    tx
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
        write.open_table(HISTORY_LOG).map_err(backend)?;
        write.commit().map_err(backend)?;
        let db = Arc::new(db);
        Ok(EmbeddedStore {
            background: spawn_background_writer(Arc::downgrade(&db)),
            db,
        })
    }

    /// Runs `work` on the background writer thread.
    async fn background<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.background
            .send(Box::new(move |db| {
                let result = work(db);
                Box::new(move || {
                    let _ = tx.send(result);
                })
            }))
            .map_err(|_| StoreError::Backend("the history writer thread is gone".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the history writer thread failed".into()))?
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
    async fn append(&self, events: Vec<Arc<Event>>) -> Result<u64, StoreError> {
        self.background(move |db| {
            // Encoded here, on the blocking pool: an entry can hold thousands of events, and
            // encoding them on a runtime thread would stall the sessions sharing it.
            let bytes = super::encode_events(&events);
            let write = db.begin_write().map_err(backend)?;
            {
                let mut table = write.open_table(HISTORY_LOG).map_err(backend)?;
                let next = match table.last().map_err(backend)? {
                    Some((last, _)) => last.value() + 1,
                    None => 0,
                };
                table.insert(next, bytes.as_slice()).map_err(backend)?;
            }
            write.commit().map_err(backend)?;
            Ok(bytes.len() as u64)
        })
        .await
    }

    async fn replace(&self, events: Vec<Arc<Event>>) -> Result<u64, StoreError> {
        self.background(move |db| {
            let write = db.begin_write().map_err(backend)?;
            let mut written = 0;
            {
                let mut table = write.open_table(HISTORY_LOG).map_err(backend)?;
                table.retain(|_, _| false).map_err(backend)?;
                for (entry, chunk) in events.chunks(EVENTS_PER_ENTRY).enumerate() {
                    let bytes = super::encode_events(chunk);
                    written += bytes.len() as u64;
                    table
                        .insert(entry as u64, bytes.as_slice())
                        .map_err(backend)?;
                }
            }
            write.commit().map_err(backend)?;
            Ok(written)
        })
        .await
    }

    async fn load(&self) -> Result<(Vec<Event>, u64), StoreError> {
        self.background(|db| {
            let read = db.begin_read().map_err(backend)?;
            let table = read.open_table(HISTORY_LOG).map_err(backend)?;
            let (mut events, mut bytes) = (Vec::new(), 0);
            for entry in table.iter().map_err(backend)? {
                let (_, value) = entry.map_err(backend)?;
                bytes += value.value().len() as u64;
                match super::decode_events(value.value()) {
                    Ok(decoded) => events.extend(decoded),
                    // One bad entry must not cost the rest of the history.
                    Err(error) => tracing::warn!(%error, "Skipping a history log entry."),
                }
            }
            Ok((events, bytes))
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
