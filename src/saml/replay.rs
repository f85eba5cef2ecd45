//! Replay cache for SAML assertion ids: each id is accepted once until its assertion expires.
//!
//! Bounded: when full of unexpired ids it refuses new ones (fail closed) rather than forgetting
//! ids that could then be replayed. Expired entries are swept when the cache is full and the
//! earliest expiry has passed, so the sweep is amortized and never runs for nothing.
//!
//! The cache is the async trait [`ReplayCache`]; [`AnyReplayCache`] dispatches to an
//! implementation: [`MemoryReplayCache`], this process's map, or a cache shared by every node
//! that this module cannot name (Redis, `state::redis::replay`) behind the object-safe
//! [`SharedReplayCache`], so its callers do not change.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

/// Remembers ids (assertion ids, and login request ids) until they expire.
///
/// A shared implementation must make `first_use` one atomic step across every node (e.g. Redis
/// `SET key NX PX ttl`): two nodes asked about the same id at once admit exactly one. It stores
/// only the id (or its hash) and its expiry, no secret. When it is full it returns false; when it
/// cannot answer at all (unreachable, an unusable answer) it returns [`ReplayUnknown`]: either
/// way a login is refused rather than a replay let through (the second one with a 503: the
/// user did nothing wrong).
pub trait ReplayCache: Send + Sync {
    /// True if `id` was not seen (and is now remembered until `until`); false for a replay, or
    /// when the cache cannot remember it.
    fn first_use(
        &self,
        id: &str,
        until: SystemTime,
        now: SystemTime,
    ) -> impl Future<Output = Result<bool, ReplayUnknown>> + Send;
}

/// The shared cache could not say whether an id was seen (Redis down or answering garbage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the replay cache cannot answer")]
pub struct ReplayUnknown;

/// [`ReplayCache`] for a cache kept outside the process, which this module cannot name:
/// object-safe, one boxed future per call.
pub trait SharedReplayCache: Send + Sync {
    fn first_use<'a>(
        &'a self,
        id: &'a str,
        until: SystemTime,
        now: SystemTime,
    ) -> super::session::BoxFuture<'a, Result<bool, ReplayUnknown>>;
}

/// The configured replay cache.
pub enum AnyReplayCache {
    Memory(MemoryReplayCache),
    /// Shared by every node (Redis).
    Shared(Box<dyn SharedReplayCache>),
}

impl AnyReplayCache {
    /// The in-process cache of at most `capacity` ids.
    pub fn memory(capacity: usize) -> AnyReplayCache {
        AnyReplayCache::Memory(MemoryReplayCache::new(capacity))
    }
}

impl ReplayCache for AnyReplayCache {
    async fn first_use(
        &self,
        id: &str,
        until: SystemTime,
        now: SystemTime,
    ) -> Result<bool, ReplayUnknown> {
        match self {
            AnyReplayCache::Memory(m) => Ok(m.first_use(id, until, now)),
            AnyReplayCache::Shared(s) => s.first_use(id, until, now).await,
        }
    }
}

/// Remembers ids until they expire, in this process (not shared between nodes).
pub struct MemoryReplayCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    seen: HashMap<String, SystemTime>,
    /// No entry expires before this; a sweep before it would free nothing.
    earliest: Option<SystemTime>,
}

impl MemoryReplayCache {
    pub fn new(capacity: usize) -> MemoryReplayCache {
        MemoryReplayCache {
            capacity,
            inner: Mutex::new(Inner {
                seen: HashMap::new(),
                earliest: None,
            }),
        }
    }

    /// True if `id` was not seen (and is now remembered until `until`); false for a replay or
    /// when full.
    pub fn first_use(&self, id: &str, until: SystemTime, now: SystemTime) -> bool {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&remembered) = inner.seen.get(id) {
            if remembered > now {
                return false;
            }
            // Expired: the assertion itself is refused by its own NotOnOrAfter anyway.
            inner.seen.remove(id);
        }
        if inner.seen.len() >= self.capacity {
            if inner.earliest.is_some_and(|e| e <= now) {
                inner.seen.retain(|_, until| *until > now);
                inner.earliest = inner.seen.values().min().copied();
            }
            if inner.seen.len() >= self.capacity {
                return false;
            }
        }
        inner.seen.insert(id.to_owned(), until);
        inner.earliest = Some(inner.earliest.map_or(until, |e| e.min(until)));
        true
    }

    /// Ids currently remembered (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seen
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn second_use_of_an_id_is_refused() {
        let cache = MemoryReplayCache::new(10);
        assert!(cache.first_use("_a", at(100), at(0)));
        assert!(!cache.first_use("_a", at(100), at(1)));
        assert!(cache.first_use("_b", at(100), at(1)));
    }

    #[test]
    fn an_id_is_forgotten_after_it_expires() {
        let cache = MemoryReplayCache::new(10);
        assert!(cache.first_use("_a", at(100), at(0)));
        assert!(!cache.first_use("_a", at(100), at(99)));
        assert!(cache.first_use("_a", at(200), at(100)));
    }

    #[test]
    fn a_full_cache_refuses_new_ids_until_entries_expire() {
        let cache = MemoryReplayCache::new(2);
        assert!(cache.first_use("_a", at(50), at(0)));
        assert!(cache.first_use("_b", at(100), at(0)));
        assert!(!cache.first_use("_c", at(100), at(10)));
        assert_eq!(cache.len(), 2);
        // _a expired at 50: the sweep frees its slot, _b stays remembered.
        assert!(cache.first_use("_c", at(100), at(50)));
        assert!(!cache.first_use("_b", at(100), at(51)));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn concurrent_first_uses_of_one_id_admit_exactly_one() {
        let cache = std::sync::Arc::new(MemoryReplayCache::new(100));
        let admitted: usize = (0..8)
            .map(|_| {
                let cache = cache.clone();
                std::thread::spawn(move || cache.first_use("_same", at(100), at(0)))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum();
        assert_eq!(admitted, 1);
    }
}
