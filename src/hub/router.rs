//! The index from key to subscriptions.
//!
//! Routing an event costs one hash lookup and then O(subscriptions of that key), never a scan of
//! all norns. Norns are also indexed by id (the API) and by expiry time (the sweeper).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use uuid::Uuid;

use super::subscription::Subscription;

#[derive(Default)]
struct Index {
    by_key: HashMap<Box<str>, Vec<Arc<Subscription>>>,
    by_id: HashMap<Uuid, Arc<Subscription>>,
    by_expiry: BTreeSet<(i64, Uuid)>,
}

/// Subscriptions by key.
#[derive(Default)]
pub struct Router {
    index: RwLock<Index>,
}

impl Router {
    /// The subscriptions of `key` (cheap clones of `Arc`s, so no lock is held while delivering).
    pub fn subscriptions(&self, key: &str) -> Vec<Arc<Subscription>> {
        let index = self.index.read().expect("router lock");
        index.by_key.get(key).cloned().unwrap_or_default()
    }

    /// Calls `f` on each subscription of `key` under the read lock; `f` must not block.
    pub fn for_each(&self, key: &str, mut f: impl FnMut(&Arc<Subscription>)) -> usize {
        let index = self.index.read().expect("router lock");
        let Some(subscriptions) = index.by_key.get(key) else {
            return 0;
        };
        subscriptions.iter().for_each(&mut f);
        subscriptions.len()
    }

    pub fn get(&self, id: Uuid) -> Option<Arc<Subscription>> {
        self.index
            .read()
            .expect("router lock")
            .by_id
            .get(&id)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.index.read().expect("router lock").by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every subscription accepted by `keep` (listing; not on the event path).
    pub fn all(&self, mut keep: impl FnMut(&Subscription) -> bool) -> Vec<Arc<Subscription>> {
        let index = self.index.read().expect("router lock");
        index.by_id.values().filter(|s| keep(s)).cloned().collect()
    }

    /// Adds `subscription`, replacing (and returning) the one with the same id.
    pub fn insert(&self, subscription: Arc<Subscription>) -> Option<Arc<Subscription>> {
        let mut index = self.index.write().expect("router lock");
        let replaced = remove_locked(&mut index, subscription.norn.id);
        index
            .by_expiry
            .insert((subscription.norn.expires_at_ms, subscription.norn.id));
        index
            .by_key
            .entry(subscription.norn.key.as_str().into())
            .or_default()
            .push(subscription.clone());
        index.by_id.insert(subscription.norn.id, subscription);
        replaced
    }

    pub fn remove(&self, id: Uuid) -> Option<Arc<Subscription>> {
        remove_locked(&mut self.index.write().expect("router lock"), id)
    }

    /// Takes every subscription that expired at or before `now_ms` out of the index.
    pub fn take_expired(&self, now_ms: i64) -> Vec<Arc<Subscription>> {
        let mut index = self.index.write().expect("router lock");
        let expired: Vec<Uuid> = index
            .by_expiry
            .range(..=(now_ms, Uuid::max()))
            .map(|(_, id)| *id)
            .collect();
        expired
            .into_iter()
            .filter_map(|id| remove_locked(&mut index, id))
            .collect()
    }
}

fn remove_locked(index: &mut Index, id: Uuid) -> Option<Arc<Subscription>> {
    let removed = index.by_id.remove(&id)?;
    index.by_expiry.remove(&(removed.norn.expires_at_ms, id));
    if let Some(list) = index.by_key.get_mut(removed.norn.key.as_str()) {
        list.retain(|s| s.norn.id != id);
        if list.is_empty() {
            index.by_key.remove(removed.norn.key.as_str());
        }
    }
    Some(removed)
}
