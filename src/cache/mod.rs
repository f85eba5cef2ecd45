//! Stage 6, the cache: memory, then an encrypted disk tier, in front of the backends (originals,
//! in aligned chunks) and of the preprocessing jobs (derived outputs, one entry each).
//!
//! It never decides access: the pipeline calls it only with an admitted plan, and its keys hold
//! the authority partition, so a hit is served only where a miss would have been. It knows
//! nothing of HTTP requests or statuses.
//!
//! This file is the interface the pipeline and the admin API use ([`Cache::metadata`],
//! [`Cache::read`], [`Cache::get_derived`] / [`Cache::put_derived`] (whole derived outputs, one
//! entry each), [`Cache::purge`], [`Cache::stats`], [`Cache::prewarm_object`]) and the
//! metadata table; `key.rs`: what identifies an entry and its byte encoding; `mem.rs`: the
//! memory tier; `read.rs`: one read walking its chunks with a bounded read-ahead; `fill.rs`: one
//! origin fetch per missing chunk, waiters streaming as bytes arrive, and the chunk arithmetic;
//! `disk.rs`: the encrypted disk tier.
//!
//! A read, in order: the metadata (the table while it is younger than `metadata_ttl`, else one
//! coalesced origin request: a known one's is revalidated with a HEAD, and so is one the table
//! forgot (a restart) whose metadata the disk tier kept, so its chunks are served from disk; a
//! cold one's comes with the first chunk the request reads, in one ranged GET, and is then kept
//! on disk too); the pipeline answers 304/412/416
//! and HEAD from it; then each chunk of the part: memory, disk (promoted to memory), a fill in
//! flight (joined), or a new fill (led). The entry key holds the version, so a changed object
//! gets new entries and a response never mixes versions: a fill pinned to the version the
//! response started with fails with `Changed` instead.
//!
//! What it stores is [`ObjectMeta`] and bytes only: upstream headers (`Set-Cookie`, `x-amz-*`)
//! are not part of either, so they are never stored.

pub mod disk;
pub mod fill;
pub mod key;
pub mod mem;
mod read;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lru::LruCache;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::backend::{
    AnyBackend, Ask, Backend, BackendError, BodyStream, ByteRange, Caller, ObjectMeta, Opened,
    OwnedCaller, RangeSpec, Want,
};
use crate::config::CacheConfig;
use crate::telemetry::{CacheTierLabel, Metrics};
use disk::{DiskKey, DiskTier};
use fill::Fill;
use key::{CacheKey, ChunkId, ObjectId, Partition};
use mem::MemoryTier;
use read::{ChunkReader, FetchCtx};

/// Chunks read ahead of the one being sent, for a read spanning several: a long sequential read
/// over a distant origin keeps this many ranged GETs in flight instead of one round trip per
/// chunk. Bounds the memory one reader can pin to `(1 + READAHEAD_CHUNKS) * chunk_bytes`.
pub const READAHEAD_CHUNKS: u64 = 3;

/// The bytes all fills that reads lead may buffer at once (at least two chunks): with the
/// memory tier's budget, what bounds the cache's memory however many readers there are.
pub const FILL_BUDGET_BYTES: u64 = 32 << 20;
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
    /// Objects whose metadata the disk tier keeps (not counted in `disk_entries`).
    pub disk_metadata_entries: u64,
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

/// The cache, built once per process from `[cache]` and held in the long-lived state
/// (`state::Shared`).
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
    /// Bytes of the chunk fills reads lead now (each buffers its chunk until it is stored),
    /// at most [`Inner::fill_budget`]: past it a read streams its part of a chunk straight from
    /// the origin, uncached, so many slow readers cannot pin memory beyond the budget.
    fill_bytes: AtomicU64,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
}

type MetaFetch = OnceCell<Result<Arc<ObjectMeta>, Arc<BackendError>>>;

struct MetaEntry {
    meta: Arc<ObjectMeta>,
    fetched_at: Instant,
}

impl Inner {
    /// The most bytes fills that reads lead may buffer at once.
    fn fill_budget(&self) -> u64 {
        FILL_BUDGET_BYTES.max(self.config.chunk_bytes.saturating_mul(2))
    }

    /// Reserve `len` bytes of the fill budget; `false` when it is spent.
    fn reserve_fill(&self, len: u64) -> bool {
        let budget = self.fill_budget();
        self.fill_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used.saturating_add(len) <= budget).then_some(used + len)
            })
            .is_ok()
    }

    fn release_fill(&self, len: u64) {
        let _ = self
            .fill_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(len))
            });
    }
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
                fill_bytes: AtomicU64::new(0),
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
    /// origin request), else from one origin request however many requests ask at once (the
    /// others wait for it, each until its own `deadline`). The outcome says which: `HitMemory`
    /// (the table), `Miss` (this request's), `Coalesced` (another's).
    ///
    /// An object the table does not hold and the disk tier holds no metadata for is opened with
    /// one ranged GET of the chunk `first_chunk` names for its metadata (the chunk the request
    /// will read first; `None`: no body, HEAD or a conditional answer), and that body becomes
    /// the chunk's fill: a cold read costs one origin round trip, not a HEAD and then a GET. An
    /// entry past its window, or one only the disk tier still holds (after a restart), is
    /// revalidated with a HEAD: its chunks are likely still here, and they are keyed by the
    /// version the HEAD returns, so a changed object never gets the old chunks. Whatever the
    /// origin says is kept on disk (rewritten only when it changed).
    pub async fn metadata<F>(
        &self,
        object: &ObjectId,
        backend: &AnyBackend,
        caller: Caller<'_>,
        deadline: Instant,
        hint: Option<u64>,
        first_chunk: F,
    ) -> Result<(Arc<ObjectMeta>, Outcome), BackendError>
    where
        F: Fn(&ObjectMeta) -> Option<u64> + Send + Sync + 'static,
    {
        let inner = &self.inner;
        if let Some(meta) = inner.fresh_meta(object) {
            return Ok((meta, Outcome::HitMemory));
        }
        let cell = {
            let mut inflight = lock(&inner.meta_inflight);
            // Again under the in-flight lock: a leader stores the metadata before it takes this
            // lock to leave the table, so a request that missed above either finds the stored
            // metadata now or joins the leader's cell (never starts a second request).
            if let Some(meta) = inner.fresh_meta(object) {
                return Ok((meta, Outcome::HitMemory));
            }
            Arc::clone(
                inflight
                    .entry(object.clone())
                    .or_insert_with(|| Arc::new(OnceCell::new())),
            )
        };
        let known = lock(&inner.meta).peek(object).map(|e| Arc::clone(&e.meta));
        let generation = inner.generation.load(Ordering::SeqCst);
        let led = AtomicBool::new(false);
        let fetch = async {
            led.store(true, Ordering::Relaxed);
            let known = match known {
                Some(meta) => Some(meta),
                None => inner.stored_meta(object).await.map(Arc::new),
            };
            let result = match known {
                Some(known) => {
                    let fresh = backend.head(object.key(), caller).await;
                    if let Ok(fresh) = &fresh {
                        inner.persist_meta(object, fresh, Some(&known), generation);
                    }
                    fresh
                }
                None => {
                    open_cold(
                        inner,
                        object,
                        backend,
                        caller,
                        deadline,
                        FirstChunk {
                            hint,
                            decide: first_chunk,
                        },
                        generation,
                    )
                    .await
                }
            };
            let result = result.map(Arc::new).map_err(Arc::new);
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
        let fetch = Arc::new(FetchCtx {
            key,
            meta,
            backend,
            caller,
        });
        let mut reader = ChunkReader::new(Arc::clone(&self.inner), fetch, range);
        let outcome = reader.start().await?;
        let body = futures_util::stream::unfold(reader, |mut reader| async move {
            reader.next().await.map(|item| (item, reader))
        });
        Ok(CacheRead {
            body: Box::pin(body),
            outcome,
        })
    }

    /// A whole derived output (a rendered image) stored under `key` (its representation names
    /// the derivation): from the memory tier, else the disk tier (promoted to memory). `None`:
    /// not stored; the caller renders it and may [`Cache::put_derived`] the result.
    pub async fn get_derived(&self, key: &CacheKey) -> Option<(bytes::Bytes, Outcome)> {
        let inner = &*self.inner;
        let id = key.chunk(0);
        if let Some(body) = inner.memory.get(&id) {
            return Some((body, Outcome::HitMemory));
        }
        let disk = inner.disk.as_ref()?;
        let body = disk
            .get(&DiskKey {
                source: key.source(),
                key: key.key(),
                id: id.as_bytes(),
            })
            .await?;
        inner.memory.insert(id, body.clone());
        Some((body, Outcome::HitDisk))
    }

    /// Store a whole derived output under `key`, in memory and on disk (within their budgets;
    /// an entry larger than a memory shard is kept on disk only).
    pub fn put_derived(&self, key: &CacheKey, body: bytes::Bytes) {
        let inner = &*self.inner;
        let id = key.chunk(0);
        if let Some(disk) = &inner.disk {
            disk.put(
                &DiskKey {
                    source: key.source(),
                    key: key.key(),
                    id: id.as_bytes(),
                },
                body.clone(),
            );
        }
        inner.memory.insert(id, body);
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
            disk_metadata_entries: disk.metadata_entries,
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
            .metadata(&object, backend, Caller::Gateway, deadline, Some(0), |_| {
                Some(0)
            })
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

/// The chunk a cold open reads with the metadata: `decide` names it once the metadata is known;
/// `hint` is the guess a store that reads ranges itself is asked for in the same request.
struct FirstChunk<F> {
    hint: Option<u64>,
    decide: F,
}

/// Open a cold object: its metadata (kept on disk, queued before the chunk so a chunk on disk
/// has its metadata beside it), and the chunk `first_chunk` names as a fill other readers can
/// join (see [`Cache::metadata`]).
async fn open_cold<F>(
    inner: &Arc<Inner>,
    object: &ObjectId,
    backend: &AnyBackend,
    caller: Caller<'_>,
    deadline: Instant,
    first: FirstChunk<F>,
    generation: u64,
) -> Result<ObjectMeta, BackendError>
where
    F: Fn(&ObjectMeta) -> Option<u64> + Send + Sync + 'static,
{
    let chunk = inner.config.chunk_bytes;
    let FirstChunk { hint, decide } = first;
    let want = move |meta: &ObjectMeta| match decide(meta)
        .and_then(|i| fill::chunk_range(i, chunk, meta.size))
    {
        Some(range) => Want::Body(Some(range)),
        None => Want::Meta,
    };
    // One ranged GET of the hinted chunk where the store reads ranges itself (S3); the decider
    // above still decides, and the backend asks again where the hint was wrong.
    let ask = match hint {
        Some(i) => {
            let start = i.saturating_mul(chunk);
            Ask {
                range: Some(RangeSpec::FromTo(start, start.saturating_add(chunk - 1))),
                ..Ask::default()
            }
        }
        None => Ask {
            head_only: true,
            ..Ask::default()
        },
    };
    match backend
        .open(object.key(), &ask, want, caller, deadline)
        .await?
    {
        Opened::Meta(meta) => {
            inner.persist_meta(object, &meta, None, generation);
            Ok(meta)
        }
        Opened::Object {
            object: opened,
            part,
        } => {
            let meta = opened.meta.clone();
            inner.persist_meta(object, &meta, None, generation);
            if let Some(range) = part {
                let index = range.start / chunk;
                if fill::chunk_range(index, chunk, meta.size) == Some(range) {
                    adopt(inner, object, &meta, index, range, opened.body);
                }
            }
            Ok(meta)
        }
    }
}

/// Make an opened body of chunk `index` its fill, unless the chunk is stored or being filled
/// already (then the body is dropped, which cancels its read).
fn adopt(
    inner: &Arc<Inner>,
    object: &ObjectId,
    meta: &ObjectMeta,
    index: u64,
    range: ByteRange,
    body: BodyStream,
) {
    let entry = CacheKey::new(object.clone(), &version_of(meta), key::ORIGINAL);
    let id = entry.chunk(index);
    let mut fills = lock(&inner.fills);
    if fills.contains_key(&id) || inner.memory.contains(&id) {
        return;
    }
    let fill = Fill::new(range.len());
    fills.insert(id.clone(), Arc::clone(&fill));
    drop(fills);
    let idle = inner.idle_timeout;
    let filling = Arc::clone(&fill);
    read::spawn_fill(inner, entry, index, id, fill, async move {
        filling.stream(body, idle).await
    });
}

impl Inner {
    fn fresh_meta(&self, object: &ObjectId) -> Option<Arc<ObjectMeta>> {
        let mut table = lock(&self.meta);
        let entry = table.get(object)?;
        (entry.fetched_at.elapsed() < self.config.metadata_ttl).then(|| Arc::clone(&entry.meta))
    }

    /// The metadata of `object` the disk tier kept (before a restart, or before the table
    /// forgot it); `None` without a disk tier, or when it holds none that opens and decodes.
    async fn stored_meta(&self, object: &ObjectId) -> Option<ObjectMeta> {
        let disk = self.disk.as_ref()?;
        let id = object.meta_id();
        let bytes = disk
            .get(&DiskKey {
                source: object.source(),
                key: object.key().as_bytes(),
                id: &id,
            })
            .await?;
        key::decode_meta(&bytes)
    }

    /// Keep `meta` on disk as `object`'s metadata. `previous`: what the disk holds already, if
    /// known; an unchanged one is only written if the disk lost it, a changed one replaces it.
    /// Nothing is written if a purge ran since `generation`.
    fn persist_meta(
        &self,
        object: &ObjectId,
        meta: &ObjectMeta,
        previous: Option<&ObjectMeta>,
        generation: u64,
    ) {
        let Some(disk) = &self.disk else { return };
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        let id = object.meta_id();
        let entry = DiskKey {
            source: object.source(),
            key: object.key().as_bytes(),
            id: &id,
        };
        let body = bytes::Bytes::from(key::encode_meta(meta));
        if previous == Some(meta) {
            disk.put(&entry, body);
        } else {
            disk.put_replacing(&entry, body);
        }
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

#[cfg(test)]
mod tests;
