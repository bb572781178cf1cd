//! Live sessions (WebSocket, SSE) by key, and each key's history.
//!
//! ```text
//! publish ──► shard(key) lock ──► history.push ──► try_send to each session's bounded channel
//!                                                       └─ full: the session is closed as a slow consumer
//! open    ──► shard(key) lock ──► register the session ──► snapshot the replay
//! ```
//! Publishing and opening take the same per-key lock, so an event is either in a new session's
//! replay or on its channel, never both and never neither. Nothing under the lock waits: sessions
//! write to their sockets from their own tasks. Keys are spread over shards so that publishers of
//! different keys rarely meet on a lock.

use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::history::{AGE_SWEEP, HistoryLimits, KeyHistory, MAX_UNSAVED, Replay, event_size};
use crate::config::LiveConfig;
use crate::event::{Event, now_ms};
use crate::metrics as m;
use crate::sink::frames::Batch;
use crate::store::{HistoryStore, StoreError};

const SHARDS: usize = 32;
/// A history log smaller than this is never compacted.
const MIN_COMPACT_BYTES: u64 = 16 * 1024 * 1024;

/// What a session receives: the events of one publish for one key (a notifier push of several
/// events for one user is one batch, and one WebSocket frame), encoded once per wire format.
pub type LiveBatch = Arc<Batch>;

/// Why a session was closed by brunnr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// `POST /drop_user`.
    Dropped = 1,
    /// Its buffer filled: it reads slower than events arrive.
    SlowConsumer = 2,
    /// brunnr is shutting down.
    Shutdown = 3,
}

impl CloseReason {
    fn from_u8(value: u8) -> Option<CloseReason> {
        match value {
            1 => Some(CloseReason::Dropped),
            2 => Some(CloseReason::SlowConsumer),
            3 => Some(CloseReason::Shutdown),
            _ => None,
        }
    }
}

/// A session's close signal: set once, by whoever closes it first.
#[derive(Default)]
pub struct SessionControl {
    reason: AtomicU8,
    notify: Notify,
}

impl SessionControl {
    pub fn close(&self, reason: CloseReason) {
        if self
            .reason
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.notify.notify_one();
        }
    }

    pub fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.reason.load(Ordering::Acquire))
    }

    /// Waits until the session is closed.
    pub async fn closed(&self) -> CloseReason {
        loop {
            if let Some(reason) = self.reason() {
                return reason;
            }
            // `notify_one` leaves a permit when nobody waits, so a close between the check and
            // this wait is not missed.
            self.notify.notified().await;
        }
    }
}

struct SessionTx {
    id: u64,
    tx: mpsc::Sender<LiveBatch>,
    control: Arc<SessionControl>,
}

#[derive(Default)]
struct KeyState {
    history: KeyHistory,
    sessions: Vec<SessionTx>,
}

impl KeyState {
    /// Nothing kept and nobody listening: the key can go.
    fn is_idle(&self) -> bool {
        self.history.is_empty() && self.sessions.is_empty()
    }
}

#[derive(Default)]
struct Shard {
    keys: HashMap<String, KeyState>,
    /// What this shard's history holds, by [`event_size`].
    bytes: usize,
    /// Events not yet in the store's log (per shard: publishers of different keys do not meet
    /// on one lock).
    pending: Vec<Arc<Event>>,
}

impl Shard {
    /// Queues `events` for the store. Past the bound, the oldest unsaved go first (and are
    /// counted): the newest are what replay needs.
    fn log(&mut self, events: &[Arc<Event>]) {
        self.pending.extend_from_slice(events);
        let bound = MAX_UNSAVED / SHARDS;
        if self.pending.len() > bound {
            let excess = self.pending.len() - bound;
            self.pending.drain(..excess);
            metrics::counter!(m::HISTORY_UNSAVED).increment(excess as u64);
        }
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{key} already has {limit} live sessions (live.max_sessions_per_key)")]
    TooManySessions { key: String, limit: usize },
}

/// The whole server has `live.max_connections` live connections.
#[derive(Debug, thiserror::Error)]
#[error("too many live connections (live.max_connections)")]
pub struct TooManyConnections;

/// Live sessions and history for every key.
pub struct Live {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    config: LiveConfig,
    limits: HistoryLimits,
    connections: Arc<Semaphore>,
    next_session: AtomicU64,
    bytes: AtomicUsize,
    /// Bytes in the store's history log (what compaction weighs against `bytes`).
    log_bytes: AtomicU64,
    /// A log smaller than this is never compacted.
    min_compact_bytes: u64,
    /// The last write failed: the next one rewrites the whole log.
    rewrite_log: std::sync::atomic::AtomicBool,
    /// Set once shutdown began: sessions opening after it are closed at once.
    shutting_down: std::sync::atomic::AtomicBool,
    /// Cancelled when shutdown begins, for connections that are not sessions yet (a notifier
    /// waiting for its announcement); sessions have their own signal.
    shutdown: CancellationToken,
    /// Session tasks, so shutdown can wait for their close frames.
    tracker: TaskTracker,
}

impl Live {
    pub fn new(config: &LiveConfig) -> Live {
        Live {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            limits: HistoryLimits::from(&config.history),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            config: config.clone(),
            next_session: AtomicU64::new(1),
            bytes: AtomicUsize::new(0),
            log_bytes: AtomicU64::new(0),
            min_compact_bytes: MIN_COMPACT_BYTES,
            rewrite_log: std::sync::atomic::AtomicBool::new(false),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    pub fn config(&self) -> &LiveConfig {
        &self.config
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    fn shard_budget(&self) -> usize {
        (self.config.history.max_bytes as usize / SHARDS).max(1)
    }

    /// Keeps `events` (all of one key) in history and hands them, as one batch, to the key's
    /// sessions; returns how many sessions took them. Never waits: a session whose channel is
    /// full is closed as a slow consumer.
    pub fn publish(&self, key: &str, events: &[Arc<Event>]) -> usize {
        let mut shard = self
            .shard(key)
            .lock()
            .expect("a live shard lock is never poisoned");
        let shard = &mut *shard;
        if !shard.keys.contains_key(key) {
            if self.limits.max_events == 0 {
                return 0; // No history and nobody listening.
            }
            shard.keys.insert(key.to_owned(), KeyState::default());
        }
        self.hold(shard, key, events, true);
        // Holding may have evicted the key's last events (and the key) to stay in budget.
        let Some(state) = shard.keys.get_mut(key) else {
            return 0;
        };
        if !state.sessions.is_empty() {
            let batch: LiveBatch = Arc::new(Batch::new(events));
            state
                .sessions
                .retain(|session| match session.tx.try_send(batch.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        session.control.close(CloseReason::SlowConsumer);
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                });
        }
        let sessions = state.sessions.len();
        if state.is_idle() {
            shard.keys.remove(key);
        }
        sessions
    }

    /// Puts `events` in `key`'s history (the key must be in the shard), within the limits and
    /// the shard's budget, and queues what is still held for the store when `log`.
    fn hold(&self, shard: &mut Shard, key: &str, events: &[Arc<Event>], log: bool) {
        if self.limits.max_events == 0 {
            return;
        }
        let now = now_ms();
        let state = shard
            .keys
            .get_mut(key)
            .expect("the caller inserted the key");
        let (mut added, mut freed) = (0, 0);
        for event in events {
            added += event_size(event);
            state
                .history
                .push(event.clone(), self.limits, now, &mut |old| {
                    freed += event_size(&old)
                });
        }
        if log {
            // A push of more events than the history keeps logs only those it keeps.
            let kept = events.len().min(state.history.len());
            shard.log(&events[events.len() - kept..]);
        }
        shard.bytes = (shard.bytes + added).saturating_sub(freed);
        // Added first: only bytes added before are ever taken away, so this never wraps.
        self.bytes.fetch_add(added, Ordering::Relaxed);
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        if shard.bytes > self.shard_budget() {
            let freed = self.evict_oldest(shard);
            self.bytes.fetch_sub(freed, Ordering::Relaxed);
        }
    }

    /// Evicts the shard's oldest events until it holds 90 % of its budget; returns the bytes
    /// freed.
    fn evict_oldest(&self, shard: &mut Shard) -> usize {
        let target = self.shard_budget() / 10 * 9;
        let mut oldest: BinaryHeap<std::cmp::Reverse<(Uuid, String)>> = shard
            .keys
            .iter()
            .filter_map(|(key, state)| {
                Some(std::cmp::Reverse((state.history.oldest()?.id, key.clone())))
            })
            .collect();
        let mut freed = 0;
        while shard.bytes.saturating_sub(freed) > target {
            let Some(std::cmp::Reverse((_, key))) = oldest.pop() else {
                break;
            };
            let state = shard.keys.get_mut(&key).expect("collected from the map");
            if let Some(event) = state.history.pop_oldest() {
                freed += event_size(&event);
            }
            match state.history.oldest() {
                Some(next) => oldest.push(std::cmp::Reverse((next.id, key))),
                None if state.is_idle() => {
                    shard.keys.remove(&key);
                }
                None => {}
            }
        }
        shard.bytes = shard.bytes.saturating_sub(freed);
        freed
    }

    /// Resolves once shutdown has begun.
    pub fn shutdown_started(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.shutdown.cancelled()
    }

    /// The bytes history holds now, by [`event_size`].
    pub fn held_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The latest event kept for `key`.
    pub fn latest(&self, key: &str) -> Option<Arc<Event>> {
        let shard = self.shard(key).lock().expect("never poisoned");
        shard.keys.get(key)?.history.newest().cloned()
    }

    /// Reserves one of `live.max_connections`; hold it for the connection's life.
    pub fn reserve_connection(&self) -> Result<OwnedSemaphorePermit, TooManyConnections> {
        self.connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| TooManyConnections)
    }

    /// Opens a session on `keys`, with what it missed since `replay` (oldest first).
    pub fn open(
        self: &Arc<Self>,
        keys: Vec<String>,
        replay: &Replay,
        transport: &'static str,
        connection: OwnedSemaphorePermit,
    ) -> Result<LiveSession, OpenError> {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.config.session_buffer);
        let control = Arc::new(SessionControl::default());
        let mut missed = Vec::new();
        let now = now_ms();
        for (index, key) in keys.iter().enumerate() {
            let mut shard = self.shard(key).lock().expect("never poisoned");
            let state = shard.keys.entry(key.clone()).or_default();
            if state.sessions.len() >= self.config.max_sessions_per_key {
                if state.is_idle() {
                    shard.keys.remove(key);
                }
                drop(shard);
                self.unregister(id, &keys[..index]);
                return Err(OpenError::TooManySessions {
                    key: key.clone(),
                    limit: self.config.max_sessions_per_key,
                });
            }
            state.sessions.push(SessionTx {
                id,
                tx: tx.clone(),
                control: control.clone(),
            });
            // Events past max_age that no new event has swept out yet are not replayed.
            let oldest_kept = now.saturating_sub(self.limits.max_age_ms);
            state.history.replay(replay, oldest_kept, &mut missed);
        }
        if keys.len() > 1 {
            missed.sort_by_key(|event| event.id);
        }
        if self.shutting_down.load(Ordering::SeqCst) {
            control.close(CloseReason::Shutdown);
        }
        metrics::gauge!(m::LIVE_SESSIONS, "transport" => transport).increment(1.0);
        Ok(LiveSession {
            id,
            keys,
            missed,
            rx,
            control,
            transport,
            live: self.clone(),
            _connection: connection,
        })
    }

    fn unregister(&self, id: u64, keys: &[String]) {
        for key in keys {
            let mut shard = self.shard(key).lock().expect("never poisoned");
            if let Some(state) = shard.keys.get_mut(key) {
                state.sessions.retain(|session| session.id != id);
                if state.is_idle() {
                    shard.keys.remove(key);
                }
            }
        }
    }

    /// Closes every session of `key` (`POST /drop_user`); returns how many there were.
    pub fn drop_key(&self, key: &str) -> usize {
        let mut shard = self.shard(key).lock().expect("never poisoned");
        let Some(state) = shard.keys.get_mut(key) else {
            return 0;
        };
        let sessions = std::mem::take(&mut state.sessions);
        for session in &sessions {
            session.control.close(CloseReason::Dropped);
        }
        if state.history.is_empty() {
            shard.keys.remove(key);
        }
        sessions.len()
    }

    /// Keys with live sessions and how many each has, sorted by key.
    pub fn clients(&self) -> Vec<(String, usize)> {
        let mut clients: Vec<(String, usize)> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.lock().expect("never poisoned");
                shard
                    .keys
                    .iter()
                    .filter(|(_, state)| !state.sessions.is_empty())
                    .map(|(key, state)| (key.clone(), state.sessions.len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        clients.sort();
        clients
    }

    /// `session`, tracked so that shutdown waits for it to say goodbye.
    pub fn track<F: Future<Output = ()>>(&self, session: F) -> impl Future<Output = ()> + use<F> {
        self.tracker.track_future(session)
    }

    /// Tells every session to close (WebSocket 1001, SSE responses end); new ones close at once.
    pub fn begin_shutdown(&self) {
        // Each session is told through its own signal, so that waiting for the next batch never
        // touches a lock shared by every session.
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown.cancel();
        for shard in self.shards.iter() {
            let shard = shard.lock().expect("never poisoned");
            for state in shard.keys.values() {
                for session in &state.sessions {
                    session.control.close(CloseReason::Shutdown);
                }
            }
        }
    }

    /// Closes every session and waits, at most `deadline`, for their tasks to finish.
    pub async fn close_all(&self, deadline: std::time::Duration) {
        self.begin_shutdown();
        self.tracker.close();
        let _ = tokio::time::timeout(deadline, self.tracker.wait()).await;
    }

    /// Loads the stored history log (at start-up, before anything is published), replaying it
    /// through the limits.
    pub async fn load(&self, store: &dyn HistoryStore) -> Result<usize, StoreError> {
        let (events, log_bytes) = store.load().await?;
        self.log_bytes.store(log_bytes, Ordering::Relaxed);
        let oldest_kept = now_ms().saturating_sub(self.limits.max_age_ms);
        let mut loaded = 0;
        for event in events {
            if event.id_ms() < oldest_kept || self.limits.max_events == 0 {
                continue;
            }
            loaded += 1;
            let key = event.key.clone();
            self.keep(&key, Arc::new(event));
        }
        Ok(loaded)
    }

    /// Keeps a loaded event in history (no sessions exist yet; it is in the log already).
    fn keep(&self, key: &str, event: Arc<Event>) {
        let mut shard = self.shard(key).lock().expect("never poisoned");
        let shard = &mut *shard;
        if !shard.keys.contains_key(key) {
            shard.keys.insert(key.to_owned(), KeyState::default());
        }
        self.hold(shard, key, &[event], false);
        if shard.keys.get(key).is_some_and(KeyState::is_idle) {
            shard.keys.remove(key);
        }
    }

    /// Commits history changes every `commit_interval` until `stop`, then once more.
    pub async fn run_writer(
        self: Arc<Self>,
        store: Arc<dyn HistoryStore>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.config.history.commit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = tokio::time::Instant::now();
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.cancelled() => true,
            };
            if last_sweep.elapsed() >= AGE_SWEEP {
                self.sweep_aged();
                last_sweep = tokio::time::Instant::now();
            }
            self.flush(store.as_ref()).await;
            if stopping {
                break;
            }
        }
    }

    /// Appends what is pending to the store's log in one commit; when the log has grown to
    /// more than twice what history holds, rewrites it from history instead (compaction).
    pub async fn flush(&self, store: &dyn HistoryStore) {
        let held = self.bytes.load(Ordering::Relaxed) as u64;
        metrics::gauge!(m::HISTORY_BYTES).set(held as f64);
        // After a failed write the log lacks events that are no longer pending: rewrite it whole.
        let compact = self.rewrite_log.swap(false, Ordering::Relaxed)
            || self.log_bytes.load(Ordering::Relaxed)
                > held.saturating_mul(2).max(self.min_compact_bytes);
        let mut events = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().expect("never poisoned");
            if compact {
                // Everything history holds, pending events included: the log becomes this.
                shard.pending.clear();
                for state in shard.keys.values() {
                    events.extend(state.history.iter().cloned());
                }
            } else {
                events.append(&mut shard.pending);
            }
        }
        if events.is_empty() && !compact {
            return;
        }
        let count = events.len() as u64;
        let written = if compact {
            // Time order, so that replaying the log evicts what the limits evicted.
            events.sort_by_key(|event| event.id);
            store.replace(events).await
        } else {
            store.append(events).await
        };
        match written {
            Ok(bytes) => {
                if compact {
                    self.log_bytes.store(bytes, Ordering::Relaxed);
                } else {
                    self.log_bytes.fetch_add(bytes, Ordering::Relaxed);
                }
                metrics::counter!(m::HISTORY_COMMITS, "outcome" => "ok").increment(1);
            }
            Err(error) => {
                metrics::counter!(m::HISTORY_COMMITS, "outcome" => "error").increment(1);
                self.rewrite_log.store(true, Ordering::Relaxed);
                tracing::error!(%error, events = count, compact, "History could not be saved; the next commit rewrites the log from memory.");
            }
        }
    }

    /// Drops events past `max_age` from keys that received nothing new.
    fn sweep_aged(&self) {
        let now = now_ms();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().expect("never poisoned");
            let mut freed = 0;
            shard.keys.retain(|_, state| {
                state
                    .history
                    .trim(self.limits, now, &mut |old| freed += event_size(&old));
                !state.is_idle()
            });
            shard.bytes = shard.bytes.saturating_sub(freed);
            self.bytes.fetch_sub(freed, Ordering::Relaxed);
        }
    }
}

/// What a session's transport reads: the replay, then batches, until it is closed.
pub struct LiveSession {
    id: u64,
    keys: Vec<String>,
    /// What the session missed, oldest first; the transport sends it before anything else.
    pub missed: Vec<Arc<Event>>,
    rx: mpsc::Receiver<LiveBatch>,
    control: Arc<SessionControl>,
    transport: &'static str,
    live: Arc<Live>,
    _connection: OwnedSemaphorePermit,
}

/// What happened next to a session.
pub enum SessionEvent {
    Batch(LiveBatch),
    Closed(CloseReason),
}

impl LiveSession {
    /// The next batch, or why the session was closed. Closing wins over queued batches.
    pub async fn next(&mut self) -> SessionEvent {
        tokio::select! {
            biased;
            reason = self.control.closed() => SessionEvent::Closed(reason),
            batch = self.rx.recv() => match batch {
                Some(batch) => SessionEvent::Batch(batch),
                // Every sender is gone only when the session was taken off its keys.
                None => SessionEvent::Closed(CloseReason::Dropped),
            },
        }
    }

    /// A batch that is already waiting, if any.
    pub fn try_next(&mut self) -> Option<LiveBatch> {
        self.rx.try_recv().ok()
    }

    /// Resolves when the session is closed (to abandon a write to a consumer that stopped
    /// reading).
    pub async fn closed(&self) -> CloseReason {
        self.control.closed().await
    }

    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    pub fn transport(&self) -> &'static str {
        self.transport
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        self.live.unregister(self.id, &self.keys);
        metrics::gauge!(m::LIVE_SESSIONS, "transport" => self.transport).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LiveConfig;
    use crate::store::embedded::EmbeddedStore;

    fn event(key: &str, n: i64) -> Arc<Event> {
        Arc::new(Event {
            id: Event::new_id(),
            key: key.into(),
            kind: "notifier".into(),
            source: "notifier",
            time_ms: n,
            content_type: "text/plain".into(),
            payload: bytes::Bytes::from(format!("event {n}")),
            wrp: None,
        })
    }

    fn live(min_compact_bytes: u64) -> Arc<Live> {
        live_with(min_compact_bytes, LiveConfig::default().history.max_bytes)
    }

    fn live_with(min_compact_bytes: u64, max_bytes: u64) -> Arc<Live> {
        let mut config = LiveConfig::default();
        config.history.max_events = 3;
        config.history.max_bytes = max_bytes;
        let mut live = Live::new(&config);
        live.min_compact_bytes = min_compact_bytes;
        Arc::new(live)
    }

    fn replay(live: &Arc<Live>, key: &str) -> Vec<i64> {
        let permit = live.reserve_connection().unwrap();
        let session = live
            .open(vec![key.into()], &Replay::Since(0), "test", permit)
            .unwrap();
        session.missed.iter().map(|e| e.time_ms).collect()
    }

    #[tokio::test]
    async fn the_log_replays_through_the_limits_and_compacts_to_what_history_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let first = live(u64::MAX);
        for n in 1..=10 {
            first.publish("a", &[event("a", n)]);
            if n % 4 == 0 {
                first.flush(&store).await; // several log entries
            }
        }
        first.publish("b", &[event("b", 1), event("b", 2)]);
        first.flush(&store).await;
        assert_eq!(
            store.load().await.unwrap().0.len(),
            12,
            "every event is logged"
        );

        // A restart replays the log: the same limits keep the same events.
        let second = live(u64::MAX);
        assert_eq!(second.load(&store).await.unwrap(), 12);
        assert_eq!(replay(&second, "a"), [8, 9, 10]);
        assert_eq!(replay(&second, "b"), [1, 2]);

        // Compaction rewrites the log as what history holds, pending events included.
        let third = live(u64::MAX);
        third.load(&store).await.unwrap();
        third.rewrite_log.store(true, Ordering::Relaxed);
        third.publish("b", &[event("b", 3)]);
        third.flush(&store).await;
        let (logged, _) = store.load().await.unwrap();
        let mut times: Vec<(String, i64)> =
            logged.iter().map(|e| (e.key.clone(), e.time_ms)).collect();
        times.sort();
        assert_eq!(
            times,
            [("a", 8), ("a", 9), ("a", 10), ("b", 1), ("b", 2), ("b", 3)]
                .map(|(k, n)| (k.to_string(), n))
        );
        let fourth = live(u64::MAX);
        fourth.load(&store).await.unwrap();
        assert_eq!(replay(&fourth, "b"), [1, 2, 3]);
    }

    /// What the shards hold, counted the slow way.
    fn counted(live: &Live) -> usize {
        live.shards
            .iter()
            .map(|shard| {
                let shard = shard.lock().unwrap();
                let sum: usize = shard
                    .keys
                    .values()
                    .flat_map(|state| state.history.iter())
                    .map(|event| event_size(event))
                    .sum();
                assert_eq!(sum, shard.bytes, "a shard's count matches its events");
                sum
            })
            .sum()
    }

    #[tokio::test]
    async fn memory_is_counted_through_evictions_restarts_and_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let first = live(u64::MAX);
        // One push of more events than a key keeps: only the last three are held and logged.
        let batch: Vec<_> = (1..=10).map(|n| event("a", n)).collect();
        first.publish("a", &batch);
        first.publish("b", &[event("b", 1)]);
        assert_eq!(first.held_bytes(), counted(&first));
        first.flush(&store).await;
        assert_eq!(
            store.load().await.unwrap().0.len(),
            4,
            "only what is held is logged"
        );

        let second = live(u64::MAX);
        second.load(&store).await.unwrap();
        assert_eq!(replay(&second, "a"), [8, 9, 10]);
        assert!(second.held_bytes() > 0);
        assert_eq!(second.held_bytes(), counted(&second));
        second.publish("a", &[event("a", 11)]);
        assert_eq!(second.held_bytes(), counted(&second));

        // A budget of a few events per shard: the oldest go, and the count follows.
        let budget = 32 * 4 * event_size(&event("k", 0)) as u64;
        let small = live_with(u64::MAX, budget);
        for n in 0..500 {
            small.publish(&format!("k{}", n % 50), &[event("x", n)]);
        }
        assert_eq!(small.held_bytes(), counted(&small));
        assert!(
            small.held_bytes() as u64 <= budget,
            "{} > {budget}",
            small.held_bytes()
        );
    }
}
