//! Stage 6, the cache: memory, then an encrypted disk tier, in front of the backends (originals,
//! in aligned chunks) and of the preprocessing jobs (derived outputs, one entry each).
//!
//! It never decides access: the pipeline calls it only with an admitted plan, and its keys hold
//! the authority partition, so a hit is served only where a miss would have been. It knows
//! nothing of HTTP requests or statuses.
//!
//! This file is the interface the pipeline and the admin API use; the issue-12 work fills it in
//! (`key.rs`: what identifies an entry; `mem.rs`: the memory tier; `fill.rs`: one origin fetch
//! per missing chunk, waiters streaming as bytes arrive; `disk.rs`: the encrypted disk tier).

pub mod disk;
pub mod fill;
pub mod key;
pub mod mem;

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use lru::LruCache;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::backend::{
    AnyBackend, Backend, BackendError, BodyStream, ByteRange, Caller, ObjectMeta, OwnedCaller,
};
use crate::config::CacheConfig;
use crate::telemetry::{CacheTierLabel, Metrics};
use disk::{DiskKey, DiskTier};
use fill::{Fill, FillReader};
use key::{CacheKey, ChunkId, ObjectId, Partition};
use mem::MemoryTier;

/// Chunks read ahead of the one being sent, for a read spanning several: a long sequential read
/// over a distant origin keeps this many ranged GETs in flight instead of one round trip per
/// chunk. Bounds the memory one reader can pin to `(1 + READAHEAD_CHUNKS) * chunk_bytes`.
pub const READAHEAD_CHUNKS: u64 = 3;
/// Objects whose metadata the table remembers (least recently used forgotten first).
pub const METADATA_ENTRIES: usize = 65_536;
/// How many chunks past the read-ahead window the audit label looks at (memory or in flight)
/// when the response starts; a chunk it cannot place counts as a miss.
const LABEL_SCAN_CHUNKS: u64 = 64;

/// How a response's bytes were obtained, for the audit record (`cache`) and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every byte from the memory tier.
    HitMemory,
    /// Some bytes from the disk tier, none from the origin.
    HitDisk,
    /// This request fetched from the origin (it led at least one fill).
    Miss,
    /// It waited on fills other requests led, and fetched nothing itself.
    Coalesced,
    /// Not cached: no `[cache]`, the source opted out, or a request the cache does not serve.
    Bypass,
}

impl Outcome {
    /// Of two chunks' outcomes, the one that says more about the request: a request that led a
    /// fill is a miss, one that only waited is coalesced, then disk, then memory.
    pub fn worse(self, other: Outcome) -> Outcome {
        let rank = |o: Outcome| match o {
            Outcome::HitMemory => 0,
            Outcome::HitDisk => 1,
            Outcome::Coalesced => 2,
            Outcome::Miss => 3,
            Outcome::Bypass => 4,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }

    /// The audit record's `cache` value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::HitMemory => "hit-memory",
            Outcome::HitDisk => "hit-disk",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Bypass => "bypass",
        }
    }
}

/// What an admin purge removes (every version, representation, partition and chunk of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    Source(String),
    Prefix { source: String, prefix: String },
    Key { source: String, key: String },
}

/// A point-in-time view for `GET /admin/cache`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub memory_bytes: u64,
    pub memory_budget_bytes: u64,
    pub memory_entries: u64,
    pub disk_bytes: u64,
    pub disk_budget_bytes: u64,
    pub disk_entries: u64,
    /// The disk tier stopped writing after an error (full disk, I/O error); memory still serves.
    pub disk_degraded: bool,
    pub inflight_fills: u64,
}

/// Why the cache could not be built at start (a disk directory it cannot use).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache disk directory {dir}: {source}")]
    Disk {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The cache, built once per process from `[cache]` and held in [`crate::state::Shared`].
///
/// What it stores is an object's [`ObjectMeta`] (size, ETag, Last-Modified, content type) and
/// its bytes: never a header of the store's answer (`Set-Cookie`, `x-amz-*` and the like are
/// not part of either, so they cannot be stored, let alone served).
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    config: CacheConfig,
    memory: MemoryTier,
    disk: Option<DiskTier>,
    /// (source, key, partition) -> metadata and when the store said so.
    meta: Mutex<LruCache<ObjectId, MetaEntry>>,
    /// Metadata requests in flight: one per object, however many requests wait.
    meta_inflight: Mutex<HashMap<ObjectId, Arc<MetaFetch>>>,
    /// Chunk fills in flight: one per chunk, however many requests wait.
    fills: Mutex<HashMap<ChunkId, Arc<Fill>>>,
    /// Bumped by every purge: a fill that started before a purge stores nothing.
    generation: AtomicU64,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
}

type MetaFetch = OnceCell<Result<Arc<ObjectMeta>, Arc<BackendError>>>;

struct MetaEntry {
    meta: Arc<ObjectMeta>,
    fetched_at: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code that can panic runs under these locks; a poisoned one still holds a valid map.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

/// A read through the cache: the body (frames as they come from memory, disk or a fill) and
/// what the request's bytes come from, decided when the response starts.
pub struct CacheRead {
    pub body: BodyStream,
    pub outcome: Outcome,
}

impl std::fmt::Debug for CacheRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheRead")
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

/// The version an entry is keyed by: the ETag, else what the store says of size and time.
pub fn version_of(meta: &ObjectMeta) -> String {
    match &meta.etag {
        Some(etag) => etag.clone(),
        None => {
            let secs = meta
                .last_modified
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            format!("size={};mtime={secs}", meta.size)
        }
    }
}

/// Whether two `[cache]` tables differ in what is built at start (everything but `bypass`, which
/// each config snapshot carries): a reload that changes them applies at the next start.
pub fn differs_at_start(a: Option<&CacheConfig>, b: Option<&CacheConfig>) -> bool {
    match (a, b) {
        (None, None) => false,
        (Some(a), Some(b)) => {
            let disk = |c: &CacheConfig| {
                c.disk.as_ref().map(|d| {
                    let key_id = match &d.encryption {
                        crate::config::DiskEncryption::Aes256Gcm { key_id, key } => {
                            Some((key_id.clone(), *key))
                        }
                        crate::config::DiskEncryption::Off => None,
                    };
                    (d.dir.clone(), d.max_bytes, key_id)
                })
            };
            a.memory_bytes != b.memory_bytes
                || a.chunk_bytes != b.chunk_bytes
                || a.metadata_ttl != b.metadata_ttl
                || disk(a) != disk(b)
        }
        _ => true,
    }
}

impl Cache {
    pub fn new(config: &CacheConfig, metrics: Arc<Metrics>) -> Result<Cache, CacheError> {
        let disk = match &config.disk {
            Some(disk) => Some(DiskTier::open(disk, Arc::clone(&metrics))?),
            None => None,
        };
        // A chunk size of 0 would never advance; validation keeps it within 256 KiB-16 MiB.
        let mut config = config.clone();
        config.chunk_bytes = config.chunk_bytes.max(1);
        let defaults = crate::config::Limits::default();
        Ok(Cache {
            inner: Arc::new(Inner {
                memory: MemoryTier::new(
                    config.memory_bytes,
                    config.chunk_bytes,
                    Arc::clone(&metrics),
                ),
                disk,
                meta: Mutex::new(LruCache::new(
                    NonZeroUsize::new(METADATA_ENTRIES).unwrap_or(NonZeroUsize::MIN),
                )),
                meta_inflight: Mutex::new(HashMap::new()),
                fills: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
                first_byte_timeout: defaults.upstream_first_byte_timeout,
                idle_timeout: defaults.upstream_idle_timeout,
                config,
                metrics,
            }),
        })
    }

    /// Bound every fill's waits on the store as `limits` bounds a request's
    /// (`upstream_first_byte_timeout`, `upstream_idle_timeout`). Call before sharing the cache.
    pub fn with_limits(mut self, limits: &crate::config::Limits) -> Cache {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.first_byte_timeout = limits.upstream_first_byte_timeout;
            inner.idle_timeout = limits.upstream_idle_timeout;
        }
        self
    }

    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The metadata of `object`: from the table while it is younger than `metadata_ttl` (no
    /// origin request), else from one HEAD however many requests ask at once (the others wait
    /// for it, each until its own `deadline`). The outcome says which: `HitMemory` (the table),
    /// `Miss` (this request's HEAD), `Coalesced` (another's).
    pub async fn metadata(
        &self,
        object: &ObjectId,
        backend: &AnyBackend,
        caller: Caller<'_>,
        deadline: Instant,
    ) -> Result<(Arc<ObjectMeta>, Outcome), BackendError> {
        let inner = &*self.inner;
        if let Some(meta) = inner.fresh_meta(object) {
            return Ok((meta, Outcome::HitMemory));
        }
        let cell = Arc::clone(
            lock(&inner.meta_inflight)
                .entry(object.clone())
                .or_insert_with(|| Arc::new(OnceCell::new())),
        );
        let led = AtomicBool::new(false);
        let fetch = async {
            led.store(true, Ordering::Relaxed);
            let result = backend
                .head(object.key(), caller)
                .await
                .map(Arc::new)
                .map_err(Arc::new);
            if let Ok(meta) = &result {
                lock(&inner.meta).put(
                    object.clone(),
                    MetaEntry {
                        meta: Arc::clone(meta),
                        fetched_at: Instant::now(),
                    },
                );
            }
            // Stored first, then out of the table: a request arriving now finds one or the other.
            let mut inflight = lock(&inner.meta_inflight);
            if inflight.get(object).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                inflight.remove(object);
            }
            result
        };
        let budget = deadline.saturating_duration_since(Instant::now());
        let result = tokio::time::timeout_at(deadline, cell.get_or_init(|| fetch))
            .await
            .map_err(|_| BackendError::Timeout(budget))?;
        let outcome = if led.load(Ordering::Relaxed) {
            Outcome::Miss
        } else {
            Outcome::Coalesced
        };
        match result {
            Ok(meta) => Ok((Arc::clone(meta), outcome)),
            Err(e) => Err(fill::share(e)),
        }
    }

    /// Read `part` (`None`: all) of the entry `key` whose metadata is `meta`, chunk by chunk
    /// (see [`fill`]). Fails before any byte if the first chunk cannot be had (then nothing was
    /// sent: `Changed` may start over with fresh metadata); a later failure ends the body with
    /// an error, never early as if complete.
    pub async fn read(
        &self,
        key: CacheKey,
        meta: Arc<ObjectMeta>,
        part: Option<ByteRange>,
        backend: Arc<AnyBackend>,
        caller: OwnedCaller,
    ) -> Result<CacheRead, BackendError> {
        let whole = (meta.size > 0).then(|| ByteRange {
            start: 0,
            end: meta.size - 1,
        });
        let Some(range) = part.or(whole) else {
            let body: BodyStream = Box::pin(futures_util::stream::empty());
            return Ok(CacheRead {
                body,
                outcome: Outcome::HitMemory,
            });
        };
        let chunk = self.inner.config.chunk_bytes;
        let (first, last) = fill::chunk_span(range, chunk);
        let mut reader = ChunkReader {
            inner: Arc::clone(&self.inner),
            fetch: Arc::new(FetchCtx {
                key,
                meta,
                backend,
                caller,
            }),
            range,
            next_index: first,
            last_index: last,
            window: VecDeque::new(),
            front_pos: 0,
            peeked: None,
            done: false,
        };
        let outcome = reader.start().await?;
        let body = futures_util::stream::unfold(reader, |mut reader| async move {
            reader.next().await.map(|item| (item, reader))
        });
        Ok(CacheRead {
            body: Box::pin(body),
            outcome,
        })
    }

    /// Remove every entry `what` names, from both tiers and the metadata table; returns how many
    /// chunk entries went. A fill in flight when the purge runs stores nothing.
    pub fn purge(&self, what: &Purge) -> u64 {
        let inner = &*self.inner;
        inner.generation.fetch_add(1, Ordering::SeqCst);
        let names = |source: &[u8], key: &[u8]| match what {
            Purge::Source(s) => source == s.as_bytes(),
            Purge::Prefix { source: s, prefix } => {
                source == s.as_bytes() && key.starts_with(prefix.as_bytes())
            }
            Purge::Key { source: s, key: k } => source == s.as_bytes() && key == k.as_bytes(),
        };
        {
            let mut meta = lock(&inner.meta);
            let doomed: Vec<ObjectId> = meta
                .iter()
                .filter(|(o, _)| names(o.source().as_bytes(), o.key().as_bytes()))
                .map(|(o, _)| o.clone())
                .collect();
            for o in doomed {
                meta.pop(&o);
            }
        }
        let memory = inner.memory.purge(|id| {
            id.source_and_key()
                .is_some_and(|(source, key)| names(source, key))
        });
        let disk = inner.disk.as_ref().map_or(0, |d| d.purge(what));
        memory + disk
    }

    pub fn stats(&self) -> Stats {
        let inner = &*self.inner;
        let (memory_bytes, memory_entries) = inner.memory.usage();
        let disk = inner.disk.as_ref().map(DiskTier::stats).unwrap_or_default();
        Stats {
            memory_bytes,
            memory_budget_bytes: inner.config.memory_bytes,
            memory_entries,
            disk_bytes: disk.bytes,
            disk_budget_bytes: inner.config.disk.as_ref().map_or(0, |d| d.max_bytes),
            disk_entries: disk.entries,
            disk_degraded: disk.degraded,
            inflight_fills: lock(&inner.fills).len() as u64,
        }
    }

    /// Read `key` of `source` whole through the cache with the gateway's own authority (admin
    /// prewarm), discarding the bytes; returns the object's size.
    pub async fn prewarm_object(
        &self,
        backend: &Arc<AnyBackend>,
        source: &str,
        key: &str,
    ) -> Result<u64, BackendError> {
        use futures_util::StreamExt;
        let object = ObjectId::new(source, key, Partition::Gateway);
        let deadline = Instant::now() + self.inner.first_byte_timeout;
        let (meta, _) = self
            .metadata(&object, backend, Caller::Gateway, deadline)
            .await?;
        let version = version_of(&meta);
        let entry = CacheKey::new(object, &version, key::ORIGINAL);
        let size = meta.size;
        let mut read = self
            .read(entry, meta, None, Arc::clone(backend), OwnedCaller::Gateway)
            .await?;
        let mut got = 0u64;
        while let Some(frame) = read.body.next().await {
            got += frame?.len() as u64;
        }
        if got != size {
            return Err(BackendError::BodyBroken(
                format!("prewarm read {got} of {size} bytes").into(),
            ));
        }
        Ok(size)
    }
}

impl Inner {
    fn fresh_meta(&self, object: &ObjectId) -> Option<Arc<ObjectMeta>> {
        let mut table = lock(&self.meta);
        let entry = table.get(object)?;
        (entry.fetched_at.elapsed() < self.config.metadata_ttl).then(|| Arc::clone(&entry.meta))
    }

    /// Forget `object`'s metadata if it is still `version` (a fill found it changed or gone).
    fn forget_meta(&self, object: &ObjectId, version: &str) {
        let mut table = lock(&self.meta);
        if table
            .peek(object)
            .is_some_and(|e| version_of(&e.meta) == version)
        {
            table.pop(object);
        }
    }

    fn count(&self, hit: bool, tier: &'static str) {
        let label = CacheTierLabel { tier };
        if hit {
            self.metrics.cache_hits.get_or_create(&label).inc();
        } else {
            self.metrics.cache_misses.get_or_create(&label).inc();
        }
    }
}

/// What a fill of one entry's chunks needs, owned (the fill outlives the request).
struct FetchCtx {
    key: CacheKey,
    meta: Arc<ObjectMeta>,
    backend: Arc<AnyBackend>,
    caller: OwnedCaller,
}

/// One chunk of a read, as the reader will get it.
enum Slot {
    /// Every byte of the chunk, from `tier` (`memory` or `disk`).
    Ready(Bytes, &'static str),
    /// A fill in flight: led by this read (`Miss`) or joined (`Coalesced`).
    Fill(FillReader, Outcome),
    /// Being looked up on disk (and filled if absent) by a read-ahead task.
    Resolving(tokio::task::JoinHandle<Slot>),
}

impl Slot {
    fn outcome(&self) -> Outcome {
        match self {
            Slot::Ready(_, "disk") => Outcome::HitDisk,
            Slot::Ready(..) => Outcome::HitMemory,
            Slot::Fill(_, outcome) => *outcome,
            Slot::Resolving(_) => Outcome::Miss,
        }
    }
}

/// Walks the chunks of one read: the current chunk plus up to [`READAHEAD_CHUNKS`] started.
struct ChunkReader {
    inner: Arc<Inner>,
    fetch: Arc<FetchCtx>,
    range: ByteRange,
    next_index: u64,
    last_index: u64,
    /// Started chunks in order (index, slot); the front is being sent.
    window: VecDeque<(u64, Slot)>,
    /// Bytes of the front fill already passed (relative to the chunk's first byte).
    front_pos: u64,
    /// The front fill's first item, awaited before the response head.
    peeked: Option<Option<Result<Bytes, BackendError>>>,
    done: bool,
}

impl ChunkReader {
    /// Start the window, then decide the outcome and wait for the first chunk's first bytes (or
    /// its failure, which fails the read before any byte is sent).
    async fn start(&mut self) -> Result<Outcome, BackendError> {
        self.top_up().await;
        let mut outcome = Outcome::HitMemory;
        for (_, slot) in self.window.iter_mut() {
            if let Slot::Resolving(task) = slot {
                *slot = resolved(task).await;
            }
            outcome = outcome.worse(slot.outcome());
        }
        let scan_end = self
            .last_index
            .min(self.next_index.saturating_add(LABEL_SCAN_CHUNKS));
        let mut index = self.next_index;
        while index <= self.last_index && outcome != Outcome::Miss {
            if index > scan_end {
                outcome = Outcome::Miss;
                break;
            }
            let id = self.fetch.key.chunk(index);
            outcome = outcome.worse(if self.inner.memory.contains(&id) {
                Outcome::HitMemory
            } else if lock(&self.inner.fills).contains_key(&id) {
                Outcome::Coalesced
            } else {
                Outcome::Miss
            });
            index += 1;
        }
        if let Some((_, Slot::Fill(reader, _))) = self.window.front_mut() {
            match reader.next().await {
                Some(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                first => self.peeked = Some(first),
            }
        }
        Ok(outcome)
    }

    /// Start chunks until the window is full: the first inline (memory, fill, or disk), the
    /// read-ahead ones without waiting on the disk.
    async fn top_up(&mut self) {
        while self.window.len() as u64 <= READAHEAD_CHUNKS && self.next_index <= self.last_index {
            let index = self.next_index;
            self.next_index += 1;
            let slot = match quick(&self.inner, &self.fetch, index) {
                Some(slot) => slot,
                None if self.window.is_empty() => {
                    from_disk_or_fill(Arc::clone(&self.inner), Arc::clone(&self.fetch), index).await
                }
                None => Slot::Resolving(tokio::spawn(from_disk_or_fill(
                    Arc::clone(&self.inner),
                    Arc::clone(&self.fetch),
                    index,
                ))),
            };
            self.window.push_back((index, slot));
        }
    }

    fn served(&self, tier: &'static str, n: usize) {
        self.inner
            .metrics
            .cache_served_bytes
            .get_or_create(&CacheTierLabel { tier })
            .inc_by(n as u64);
    }

    fn fail(&mut self, e: BackendError) -> Option<Result<Bytes, BackendError>> {
        self.done = true;
        self.window.clear();
        Some(Err(e))
    }

    async fn next(&mut self) -> Option<Result<Bytes, BackendError>> {
        let chunk = self.inner.config.chunk_bytes;
        loop {
            if self.done {
                return None;
            }
            self.top_up().await;
            let (index, slot) = self.window.front_mut()?;
            let (lo, hi) = fill::wanted_in_chunk(self.range, *index, chunk);
            match slot {
                Slot::Resolving(task) => {
                    *slot = resolved(task).await;
                }
                Slot::Ready(bytes, tier) => {
                    let tier = *tier;
                    let (lo, hi) = (lo as usize, hi as usize);
                    if hi > bytes.len() {
                        return self.fail(BackendError::Protocol(
                            "a cached chunk is shorter than the object says".to_owned(),
                        ));
                    }
                    let part = bytes.slice(lo..hi);
                    self.window.pop_front();
                    self.served(tier, part.len());
                    return Some(Ok(part));
                }
                Slot::Fill(reader, _) => {
                    let item = match self.peeked.take() {
                        Some(item) => item,
                        None => reader.next().await,
                    };
                    match item {
                        Some(Ok(frame)) => {
                            let at = self.front_pos;
                            let end = at + frame.len() as u64;
                            self.front_pos = end;
                            let (from, to) = (lo.max(at), hi.min(end));
                            if end >= hi {
                                // Everything wanted from this chunk has arrived; the fill goes
                                // on for the others without this reader.
                                self.window.pop_front();
                                self.front_pos = 0;
                            }
                            if from < to {
                                let part = frame.slice((from - at) as usize..(to - at) as usize);
                                self.served("origin", part.len());
                                return Some(Ok(part));
                            }
                        }
                        Some(Err(e)) => return self.fail(e),
                        None => {
                            // The fill ended before the wanted part: it checks lengths, so only
                            // a chunk shorter than the metadata says gets here.
                            return self
                                .fail(BackendError::BodyBroken("a cache fill ended early".into()));
                        }
                    }
                }
            }
        }
    }
}

async fn resolved(task: &mut tokio::task::JoinHandle<Slot>) -> Slot {
    match task.await {
        Ok(slot) => slot,
        // Only a panic in the look-up ends it otherwise; a failed fill, never served.
        Err(_) => Slot::Fill(
            Fill::failed(BackendError::BodyBroken(
                "a cache read-ahead task stopped".into(),
            )),
            Outcome::Miss,
        ),
    }
}

/// A slot without waiting on the disk: memory, a fill in flight to join, or (without a disk
/// tier) a new fill. `None`: the disk must be asked first.
fn quick(inner: &Arc<Inner>, fetch: &Arc<FetchCtx>, index: u64) -> Option<Slot> {
    let id = fetch.key.chunk(index);
    if let Some(bytes) = inner.memory.get(&id) {
        return Some(Slot::Ready(bytes, "memory"));
    }
    if let Some(fill) = lock(&inner.fills).get(&id) {
        inner.metrics.cache_coalesced_waiters.inc();
        return Some(Slot::Fill(fill.reader(), Outcome::Coalesced));
    }
    if inner.disk.is_none() {
        return Some(join_or_lead(inner, fetch, index, id));
    }
    None
}

async fn from_disk_or_fill(inner: Arc<Inner>, fetch: Arc<FetchCtx>, index: u64) -> Slot {
    let id = fetch.key.chunk(index);
    if let Some(disk) = &inner.disk {
        let found = disk
            .get(&DiskKey {
                source: fetch.key.source(),
                key: fetch.key.key(),
                id: id.as_bytes(),
            })
            .await;
        let expected = fill::chunk_range(index, inner.config.chunk_bytes, fetch.meta.size)
            .map_or(0, |r| r.len());
        inner.count(found.is_some(), "disk");
        if let Some(bytes) = found
            && bytes.len() as u64 == expected
        {
            inner.memory.insert(id, bytes.clone());
            return Slot::Ready(bytes, "disk");
        }
    }
    join_or_lead(&inner, &fetch, index, id)
}

/// Join the fill of chunk `index` if one is in flight, take it from memory if one just ended,
/// else lead a new one (a detached task: the fill goes on if this reader leaves).
fn join_or_lead(inner: &Arc<Inner>, fetch: &Arc<FetchCtx>, index: u64, id: ChunkId) -> Slot {
    let Some(range) = fill::chunk_range(index, inner.config.chunk_bytes, fetch.meta.size) else {
        return Slot::Ready(Bytes::new(), "memory");
    };
    let mut fills = lock(&inner.fills);
    if let Some(fill) = fills.get(&id) {
        inner.metrics.cache_coalesced_waiters.inc();
        return Slot::Fill(fill.reader(), Outcome::Coalesced);
    }
    // A fill stores its chunk before it leaves the table: if it is gone, look again.
    if let Some(bytes) = inner.memory.get(&id) {
        return Slot::Ready(bytes, "memory");
    }
    let fill = Fill::new(range.len());
    fills.insert(id.clone(), Arc::clone(&fill));
    drop(fills);
    let reader = fill.reader();
    inner.metrics.cache_fills.inc();
    let generation = inner.generation.load(Ordering::SeqCst);
    let inner = Arc::clone(inner);
    let fetch = Arc::clone(fetch);
    tokio::spawn(async move {
        let result = fill
            .run(
                &*fetch.backend,
                fetch.key.object().key(),
                range,
                &fetch.meta,
                fetch.caller.as_caller(),
                inner.first_byte_timeout,
                inner.idle_timeout,
            )
            .await;
        match &result {
            Ok(bytes) => {
                inner.metrics.cache_origin_bytes.inc_by(bytes.len() as u64);
                if inner.generation.load(Ordering::SeqCst) == generation {
                    if let Some(disk) = &inner.disk {
                        disk.put(
                            &DiskKey {
                                source: fetch.key.source(),
                                key: fetch.key.key(),
                                id: id.as_bytes(),
                            },
                            bytes.clone(),
                        );
                    }
                    inner.memory.insert(id.clone(), bytes.clone());
                }
            }
            Err(e) => {
                inner.metrics.cache_fill_failures.inc();
                if matches!(
                    **e,
                    BackendError::Changed | BackendError::NotFound | BackendError::NotAnObject
                ) {
                    inner.forget_meta(fetch.key.object(), fetch.key.version());
                }
                tracing::warn!(
                    source = fetch.key.source(),
                    chunk = index,
                    error = %crate::telemetry::ErrorChain(&**e),
                    "cache fill failed; its readers' responses are aborted, nothing stored"
                );
            }
        }
        {
            let mut fills = lock(&inner.fills);
            if fills.get(&id).is_some_and(|f| Arc::ptr_eq(f, &fill)) {
                fills.remove(&id);
            }
        }
        fill.finish(&result);
    });
    Slot::Fill(reader, Outcome::Miss)
}

#[cfg(test)]
mod tests;
