//! History: the last events of each key, for live sessions that reconnect and ask for what they
//! missed (`timestamp`/`since` in ms, or `Last-Event-ID`).
//!
//! Each key keeps at most `live.history.max_events` events, none older than `max_age`; all keys
//! together keep at most `max_bytes` (the oldest go first). `live` owns the per-key histories
//! under the same lock as the key's sessions, so that a session opening sees every event exactly
//! once: in its replay or on its channel. Persistence is a log of group commits: new events
//! collect per shard and a writer task appends them to the store every `commit_interval`, so a
//! crash loses at most one interval and no event costs a write of its own. Evictions are not
//! written: loading replays the log through the same limits. When the log outgrows twice what
//! history holds, it is rewritten from history (compaction).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::config::HistoryConfig;
use crate::event::Event;

/// Where a replay starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Replay {
    /// Nothing: only events from now on.
    None,
    /// Events with `time_ms >= since` (notifier `timestamp`, `/v1/stream?since=`).
    Since(i64),
    /// Events after this one (`Last-Event-ID`): those that followed it in the key's history, or,
    /// once it has left history, those with a later id (ids are time-ordered).
    After(Uuid),
    /// The key's latest event only (monit: is the inbox already closed?).
    Latest,
}

/// How much history is kept.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub max_events: usize,
    pub max_age_ms: i64,
}

impl From<&HistoryConfig> for HistoryLimits {
    fn from(config: &HistoryConfig) -> Self {
        HistoryLimits {
            max_events: config.max_events,
            max_age_ms: config.max_age.as_millis().min(i64::MAX as u128) as i64,
        }
    }
}

/// The bytes an event holds in memory, roughly: what the memory bound counts.
pub fn event_size(event: &Event) -> usize {
    // The struct, the Arc and the deque slot, plus what the strings and payload own.
    const FIXED: usize = 224;
    let wrp = event.wrp.as_ref().map_or(0, |wrp| {
        wrp.source.len() + wrp.dest.len() + wrp.headers.iter().map(String::len).sum::<usize>() + 64
    });
    FIXED
        + event.key.len()
        + event.kind.len()
        + event.content_type.len()
        + event.payload.len()
        + wrp
}

/// One key's recent events, oldest first.
#[derive(Default)]
pub struct KeyHistory {
    events: VecDeque<Arc<Event>>,
}

impl KeyHistory {
    /// Appends `event` and evicts what the limits no longer allow, handing each evicted event to
    /// `evicted`.
    pub fn push(
        &mut self,
        event: Arc<Event>,
        limits: HistoryLimits,
        now_ms: i64,
        evicted: &mut impl FnMut(Arc<Event>),
    ) {
        if limits.max_events == 0 {
            return;
        }
        self.events.push_back(event);
        while self.events.len() > limits.max_events {
            evicted(self.events.pop_front().expect("longer than max_events"));
        }
        self.trim(limits, now_ms, evicted);
    }

    /// Evicts events that arrived more than `max_age` ago (by their id: a notifier's `created_at`
    /// is the producer's to choose).
    pub fn trim(
        &mut self,
        limits: HistoryLimits,
        now_ms: i64,
        evicted: &mut impl FnMut(Arc<Event>),
    ) {
        let oldest_kept = now_ms.saturating_sub(limits.max_age_ms);
        while self
            .events
            .front()
            .is_some_and(|event| event.id_ms() < oldest_kept)
        {
            evicted(self.events.pop_front().expect("checked"));
        }
    }

    pub fn oldest(&self) -> Option<&Arc<Event>> {
        self.events.front()
    }

    pub fn newest(&self) -> Option<&Arc<Event>> {
        self.events.back()
    }

    pub fn pop_oldest(&mut self) -> Option<Arc<Event>> {
        self.events.pop_front()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Event>> {
        self.events.iter()
    }

    /// What a session asking for `replay` missed, oldest first, leaving out events that arrived
    /// before `oldest_kept_ms` (aged out, not yet swept).
    pub fn replay(&self, replay: &Replay, oldest_kept_ms: i64, out: &mut Vec<Arc<Event>>) {
        let before = out.len();
        match replay {
            Replay::None => {}
            Replay::Since(since) => out.extend(
                self.events
                    .iter()
                    .filter(|event| event.time_ms >= *since)
                    .cloned(),
            ),
            // By position when the event is still here: two publishes to one key can reach
            // history in the opposite order of their ids, and the client saw history's order.
            Replay::After(id) => match self.events.iter().rposition(|event| event.id == *id) {
                Some(position) => out.extend(self.events.iter().skip(position + 1).cloned()),
                None => out.extend(self.events.iter().filter(|event| event.id > *id).cloned()),
            },
            Replay::Latest => out.extend(self.events.back().cloned()),
        }
        let mut index = 0;
        out.retain(|event| {
            index += 1;
            index <= before || event.id_ms() >= oldest_kept_ms
        });
    }
}

/// More unsaved events than this means the store is not keeping up: further ones stay in memory
/// only (and are counted), rather than growing without bound.
pub const MAX_UNSAVED: usize = 200_000;

/// How often aged-out events are swept from keys that receive nothing new.
pub const AGE_SWEEP: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn event(time_ms: i64) -> Arc<Event> {
        Arc::new(Event {
            id: Event::new_id(),
            key: "k".into(),
            kind: "x".into(),
            source: "notifier",
            time_ms,
            content_type: "text/plain".into(),
            payload: bytes::Bytes::from_static(b"p"),
            wrp: None,
        })
    }

    #[test]
    fn keeps_the_last_max_events_and_replays_by_time_and_id() {
        let limits = HistoryLimits {
            max_events: 3,
            max_age_ms: i64::MAX,
        };
        let mut history = KeyHistory::default();
        let mut evicted = Vec::new();
        let events: Vec<_> = (1..=5).map(|t| event(t * 10)).collect();
        for event in &events {
            history.push(event.clone(), limits, 100, &mut |e| evicted.push(e.time_ms));
        }
        assert_eq!(evicted, [10, 20]);
        let mut out = Vec::new();
        history.replay(&Replay::Since(40), 0, &mut out);
        assert_eq!(out.iter().map(|e| e.time_ms).collect::<Vec<_>>(), [40, 50]);
        out.clear();
        history.replay(&Replay::After(events[2].id), 0, &mut out);
        assert_eq!(out.iter().map(|e| e.time_ms).collect::<Vec<_>>(), [40, 50]);
        out.clear();
        history.replay(&Replay::Latest, 0, &mut out);
        assert_eq!(out[0].time_ms, 50);
    }

    #[test]
    fn replay_after_an_id_follows_history_order() {
        let limits = HistoryLimits {
            max_events: 10,
            max_age_ms: i64::MAX,
        };
        let (older, newer) = (event(1), event(2));
        let mut history = KeyHistory::default();
        // The newer id reached history first.
        history.push(newer.clone(), limits, 0, &mut |_| {});
        history.push(older.clone(), limits, 0, &mut |_| {});
        let mut out = Vec::new();
        history.replay(&Replay::After(newer.id), 0, &mut out);
        assert_eq!(out.iter().map(|e| e.id).collect::<Vec<_>>(), [older.id]);
    }

    #[test]
    fn old_events_are_trimmed_and_zero_keeps_nothing() {
        let limits = HistoryLimits {
            max_events: 10,
            max_age_ms: 1000,
        };
        let mut history = KeyHistory::default();
        let mut evicted = 0;
        let now = crate::event::now_ms();
        // An event that arrived long ago (by its id) goes; a fresh one stays.
        let mut old = (*event(now - 5000)).clone();
        old.id = Uuid::from_u128(1);
        history.push(Arc::new(old), limits, now, &mut |_| evicted += 1);
        assert_eq!(evicted, 1);
        history.push(event(now), limits, now, &mut |_| evicted += 1);
        assert_eq!(history.len(), 1);

        let mut none = KeyHistory::default();
        none.push(
            event(now),
            HistoryLimits {
                max_events: 0,
                max_age_ms: 1000,
            },
            now,
            &mut |_| {},
        );
        assert!(none.is_empty());
    }
}
