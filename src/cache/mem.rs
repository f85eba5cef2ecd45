//! The memory tier: hot chunks by bytes, least recently used evicted first, never over budget.
//!
//! Why shards of `lru` behind mutexes and not moka: a hit must cost a lookup and a `Bytes` clone
//! (the 64 KiB memory-hit benchmark is against nginx), and the budget must hold at all times.
//! moka weighs entries with a `u32`, applies its eviction policy in deferred maintenance (its
//! size can run over the budget until the pending work is done), and brings a sizeable
//! dependency tree; our needs are a recency list weighed in bytes, which the small `lru` crate
//! plus a byte counter per shard give exactly: every insert evicts first, under the shard's lock,
//! until the new entry fits. Sharding (up to 16 shards, each a fixed slice of the budget) keeps
//! lock hold times short (a hash lookup and a list splice) under many concurrent hits.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use lru::LruCache;

use super::key::ChunkId;
use crate::telemetry::{CacheTierLabel, Metrics};

/// Bookkeeping cost counted per entry on top of its id and data (list node, map slot, `Bytes`).
const ENTRY_OVERHEAD_BYTES: u64 = 96;
const MAX_SHARDS: u64 = 16;
/// A shard holds at least this many chunks' worth of budget (else fewer shards).
const MIN_CHUNKS_PER_SHARD: u64 = 8;

pub struct MemoryTier {
    shards: Box<[Mutex<Shard>]>,
    shard_budget: u64,
    hasher: std::collections::hash_map::RandomState,
    metrics: Arc<Metrics>,
}

struct Shard {
    lru: LruCache<ChunkId, Bytes>,
    bytes: u64,
}

fn weight(id: &ChunkId, data: &Bytes) -> u64 {
    (id.as_bytes().len() + data.len()) as u64 + ENTRY_OVERHEAD_BYTES
}

impl MemoryTier {
    /// A tier of at most `budget` bytes for chunks of up to `chunk_bytes`.
    pub fn new(budget: u64, chunk_bytes: u64, metrics: Arc<Metrics>) -> MemoryTier {
        let per_shard = chunk_bytes.max(1).saturating_mul(MIN_CHUNKS_PER_SHARD);
        let count = (budget / per_shard).clamp(1, MAX_SHARDS);
        let shards = (0..count)
            .map(|_| {
                Mutex::new(Shard {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                })
            })
            .collect();
        MemoryTier {
            shards,
            shard_budget: budget / count,
            hasher: std::collections::hash_map::RandomState::new(),
            metrics,
        }
    }

    fn shard(&self, id: &ChunkId) -> MutexGuard<'_, Shard> {
        let n = self.shards.len() as u64;
        let i = usize::try_from(self.hasher.hash_one(id) % n).unwrap_or(0);
        let shard = self.shards.get(i).unwrap_or(&self.shards[0]);
        // A panic while holding the lock leaves the map consistent (no user code runs under it).
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The chunk, marked most recently used: a lookup and a reference-count increment.
    pub fn get(&self, id: &ChunkId) -> Option<Bytes> {
        let hit = self.shard(id).lru.get(id).cloned();
        let label = CacheTierLabel { tier: "memory" };
        match hit {
            Some(_) => self.metrics.cache_hits.get_or_create(&label).inc(),
            None => self.metrics.cache_misses.get_or_create(&label).inc(),
        };
        hit
    }

    /// The chunk if held, counting only a hit (for a second look after a counted miss).
    pub fn get_counting_hits(&self, id: &ChunkId) -> Option<Bytes> {
        let hit = self.shard(id).lru.get(id).cloned();
        if hit.is_some() {
            self.metrics
                .cache_hits
                .get_or_create(&CacheTierLabel { tier: "memory" })
                .inc();
        }
        hit
    }

    /// Whether the chunk is held, without touching its recency or the metrics.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.shard(id).lru.contains(id)
    }

    /// Store a chunk, evicting the least recently used until it fits. A chunk larger than a
    /// shard's budget is not stored.
    pub fn insert(&self, id: ChunkId, data: Bytes) {
        let w = weight(&id, &data);
        if w > self.shard_budget {
            return;
        }
        let mut evicted = 0u64;
        let delta;
        {
            let mut shard = self.shard(&id);
            let before = shard.bytes;
            if let Some(old) = shard.lru.pop(&id) {
                shard.bytes -= weight(&id, &old);
            }
            while shard.bytes + w > self.shard_budget {
                let Some((old_id, old)) = shard.lru.pop_lru() else {
                    break;
                };
                shard.bytes -= weight(&old_id, &old);
                evicted += 1;
            }
            shard.bytes += w;
            shard.lru.put(id, data);
            delta = shard.bytes as i64 - before as i64;
        }
        self.metrics.cache_memory_bytes.inc_by(delta);
        if evicted > 0 {
            self.metrics
                .cache_evictions
                .get_or_create(&CacheTierLabel { tier: "memory" })
                .inc_by(evicted);
        }
    }

    /// Remove every chunk `doomed` names; returns how many went.
    pub fn purge(&self, doomed: impl Fn(&ChunkId) -> bool) -> u64 {
        let mut removed = 0;
        for shard in &*self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<ChunkId> = shard
                .lru
                .iter()
                .filter(|(id, _)| doomed(id))
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                if let Some(old) = shard.lru.pop(&id) {
                    let w = weight(&id, &old);
                    shard.bytes -= w;
                    self.metrics.cache_memory_bytes.dec_by(w as i64);
                    removed += 1;
                }
            }
        }
        removed
    }

    /// (bytes, entries) held now.
    pub fn usage(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(b, n), shard| {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            (b + shard.bytes, n + shard.lru.len() as u64)
        })
    }

    pub fn budget(&self) -> u64 {
        self.shard_budget * self.shards.len() as u64
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap; src/ may not
mod tests {
    use super::*;
    use crate::cache::key::{CacheKey, ORIGINAL, ObjectId, Partition};

    fn id(i: u64) -> ChunkId {
        CacheKey::new(
            ObjectId::new("s", "k", Partition::Gateway),
            "\"v\"",
            ORIGINAL,
        )
        .chunk(i)
    }

    #[test]
    fn memory_eviction_keeps_the_budget_and_drops_the_least_recently_used() {
        let metrics = Arc::new(Metrics::new());
        let tier = MemoryTier::new(10_000, 1_000, Arc::clone(&metrics));
        for i in 0..50 {
            tier.insert(id(i), Bytes::from(vec![i as u8; 1_000]));
            if i == 3 {
                // Touch 0 so that it outlives 1..3.
                assert!(tier.get(&id(0)).is_some());
            }
            let (bytes, _) = tier.usage();
            assert!(bytes <= tier.budget(), "{bytes} > {}", tier.budget());
        }
        let (_, entries) = tier.usage();
        assert!(entries >= 5, "{entries}");
        assert!(tier.get(&id(1)).is_none());
        assert_eq!(tier.get(&id(49)).unwrap()[..], [49u8; 1_000][..]);
        let evicted = metrics
            .cache_evictions
            .get_or_create(&CacheTierLabel { tier: "memory" })
            .get();
        assert_eq!(evicted, 50 - entries);
        assert_eq!(metrics.cache_memory_bytes.get() as u64, tier.usage().0);
    }

    #[test]
    fn memory_entry_over_the_shard_budget_is_not_stored() {
        let tier = MemoryTier::new(1_000, 1_000, Arc::new(Metrics::new()));
        tier.insert(id(0), Bytes::from(vec![0; 2_000]));
        assert!(!tier.contains(&id(0)));
        assert_eq!(tier.usage(), (0, 0));
    }

    #[test]
    fn memory_purge_removes_what_it_names_and_its_bytes() {
        let tier = MemoryTier::new(100_000, 1_000, Arc::new(Metrics::new()));
        for i in 0..10 {
            tier.insert(id(i), Bytes::from_static(b"abc"));
        }
        assert_eq!(tier.purge(|c| c == &id(3) || c == &id(4)), 2);
        assert_eq!(tier.usage().1, 8);
        assert_eq!(tier.purge(|_| true), 8);
        assert_eq!(tier.usage(), (0, 0));
    }
}
