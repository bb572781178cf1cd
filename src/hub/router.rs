//! The index from key to subscriptions.
//!
//! Routing an event costs one hash lookup and then O(subscriptions of that key), never a scan of
//! all norns. Norns are also indexed by id (the API) and by expiry time (the sweeper).

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, RwLock};

use uuid::Uuid;

use super::subscription::Subscription;

#[derive(Default)]
struct Index {
    /// By a hash of the key, so the key is not stored twice; a lookup compares the norns' keys,
    /// so two keys with the same hash never see each other's events. Boxed slices: most keys have
    /// one norn, and a `Vec` would reserve room for four.
    by_key: HashMap<u64, Box<[Arc<Subscription>]>, BuildHasherDefault<PrehashedKey>>,
    /// A set keyed by the norn's own id, so the id is not stored a second time.
    by_id: HashSet<ById>,
    by_expiry: BTreeSet<(i64, Uuid)>,
}

/// `by_key`'s keys are already hashes: hashing them again would only cost time.
#[derive(Default)]
struct PrehashedKey(u64);

impl Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in all the same.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// A subscription hashed and compared by its norn's id.
struct ById(Arc<Subscription>);

impl Borrow<Uuid> for ById {
    fn borrow(&self) -> &Uuid {
        &self.0.norn.id
    }
}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.norn.id.hash(state)
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.norn.id == other.0.norn.id
    }
}

impl Eq for ById {}

/// Subscriptions by key.
#[derive(Default)]
pub struct Router {
    index: RwLock<Index>,
}

impl Router {
    /// The subscriptions of `key` (cheap clones of `Arc`s, so no lock is held while delivering).
    pub fn subscriptions(&self, key: &str) -> Vec<Arc<Subscription>> {
        let mut found = Vec::new();
        self.for_each(key, |subscription| found.push(subscription.clone()));
        found
    }

    /// Calls `f` on each subscription of `key` under the read lock; `f` must not block.
    pub fn for_each(&self, key: &str, mut f: impl FnMut(&Arc<Subscription>)) -> usize {
        let index = self.index.read().expect("router lock");
        let Some(subscriptions) = index.by_key.get(&key_hash(key)) else {
            return 0;
        };
        let mut count = 0;
        for subscription in subscriptions.iter().filter(|s| s.norn.key == key) {
            f(subscription);
            count += 1;
        }
        count
    }

    pub fn get(&self, id: Uuid) -> Option<Arc<Subscription>> {
        let index = self.index.read().expect("router lock");
        index.by_id.get(&id).map(|found| found.0.clone())
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
        index
            .by_id
            .iter()
            .filter(|found| keep(&found.0))
            .map(|found| found.0.clone())
            .collect()
    }

    /// Adds `subscription`, replacing (and returning) the one with the same id.
    pub fn insert(&self, subscription: Arc<Subscription>) -> Option<Arc<Subscription>> {
        let mut index = self.index.write().expect("router lock");
        let replaced = remove_locked(&mut index, subscription.norn.id);
        index
            .by_expiry
            .insert((subscription.norn.expires_at_ms, subscription.norn.id));
        let list = index
            .by_key
            .entry(key_hash(&subscription.norn.key))
            .or_default();
        *list = list.iter().cloned().chain([subscription.clone()]).collect();
        index.by_id.insert(ById(subscription));
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
    let removed = index.by_id.take(&id)?.0;
    index.by_expiry.remove(&(removed.norn.expires_at_ms, id));
    let hash = key_hash(&removed.norn.key);
    if let Some(list) = index.by_key.get_mut(&hash) {
        *list = list.iter().filter(|s| s.norn.id != id).cloned().collect();
        if list.is_empty() {
            index.by_key.remove(&hash);
        }
    }
    Some(removed)
}

fn key_hash(key: &str) -> u64 {
    use std::hash::BuildHasher;
    static HASHER: std::sync::LazyLock<std::collections::hash_map::RandomState> =
        std::sync::LazyLock::new(Default::default);
    HASHER.hash_one(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::norn::{Destination, HttpDestination, HttpFormat, Norn};

    fn subscription(key: &str, expires_at_ms: i64) -> Arc<Subscription> {
        Arc::new(Subscription::new(
            Norn {
                id: Uuid::now_v7(),
                key: key.into(),
                destination: Destination::Http(HttpDestination {
                    url: "https://example.com/".into(),
                    secret: None,
                    failure_url: None,
                    format: HttpFormat::Wrp,
                }),
                duration_ms: None,
                filter: None,
                expires_at_ms,
                owner: "alice".into(),
                created_at_ms: 0,
                updated_at_ms: 0,
            },
            None,
        ))
    }

    #[test]
    fn routes_by_key_and_expires() {
        let router = Router::default();
        let (a1, a2, b) = (
            subscription("a", 10),
            subscription("a", 30),
            subscription("b", 20),
        );
        for s in [&a1, &a2, &b] {
            router.insert(s.clone());
        }
        assert_eq!(router.for_each("a", |_| {}), 2);
        assert_eq!(router.for_each("b", |_| {}), 1);
        assert_eq!(router.for_each("c", |_| {}), 0);
        let expired = router.take_expired(20);
        let mut ids: Vec<Uuid> = expired.iter().map(|s| s.norn.id).collect();
        ids.sort();
        let mut want = vec![a1.norn.id, b.norn.id];
        want.sort();
        assert_eq!(ids, want);
        assert_eq!(router.subscriptions("a").len(), 1);
        assert_eq!(router.for_each("b", |_| {}), 0);
        assert!(router.remove(a2.norn.id).is_some());
        assert!(router.is_empty());
    }
}
