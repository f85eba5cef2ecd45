//! One read through the cache: the chunks of a byte range, each from memory, from disk, from a
//! fill in flight, or from a new fill this read leads, with a bounded read-ahead.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::disk::DiskKey;
use super::fill::{self, Fill, FillReader};
use super::key::{CacheKey, ChunkId};
use super::{Inner, LABEL_SCAN_CHUNKS, Outcome, READAHEAD_CHUNKS, lock};
use crate::backend::{AnyBackend, Backend, BackendError, ByteRange, ObjectMeta, OwnedCaller};
use crate::telemetry::CacheTierLabel;

/// What a fill of one entry's chunks needs, owned (the fill outlives the request).
pub(super) struct FetchCtx {
    pub(super) key: CacheKey,
    pub(super) meta: Arc<ObjectMeta>,
    pub(super) backend: Arc<AnyBackend>,
    pub(super) caller: OwnedCaller,
}

/// One chunk of a read, as the reader will get it.
enum Slot {
    /// Every byte of the chunk, from `tier` (`memory` or `disk`).
    Ready(Bytes, &'static str),
    /// A fill in flight: led by this read (`Miss`) or joined (`Coalesced`).
    Fill(FillReader, Outcome),
    /// Being looked up on disk (and filled if absent) by a read-ahead task.
    Resolving(tokio::task::JoinHandle<Slot>),
    /// The fill budget is spent: this read's part of the chunk streams straight from the origin
    /// (one ranged GET, started when the chunk is reached), uncached.
    Direct(Option<crate::backend::BodyStream>),
}

impl Slot {
    fn outcome(&self) -> Outcome {
        match self {
            Slot::Ready(_, "disk") => Outcome::HitDisk,
            Slot::Ready(..) => Outcome::HitMemory,
            Slot::Fill(_, outcome) => *outcome,
            Slot::Resolving(_) | Slot::Direct(_) => Outcome::Miss,
        }
    }
}

/// Walks the chunks of one read: the current chunk plus up to [`READAHEAD_CHUNKS`] started.
pub(super) struct ChunkReader {
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
    pub(super) fn new(inner: Arc<Inner>, fetch: Arc<FetchCtx>, range: ByteRange) -> ChunkReader {
        let (first, last) = fill::chunk_span(range, inner.config.chunk_bytes);
        ChunkReader {
            inner,
            fetch,
            range,
            next_index: first,
            last_index: last,
            window: VecDeque::new(),
            front_pos: 0,
            peeked: None,
            done: false,
        }
    }

    /// Start the window, then decide the outcome and wait for the first chunk's first bytes (or
    /// its failure, which fails the read before any byte is sent).
    pub(super) async fn start(&mut self) -> Result<Outcome, BackendError> {
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
            if matches!(slot, Slot::Direct(_)) && !self.window.is_empty() {
                // No read-ahead past the fill budget: this chunk is started when reached.
                self.next_index -= 1;
                break;
            }
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

    pub(super) async fn next(&mut self) -> Option<Result<Bytes, BackendError>> {
        let chunk = self.inner.config.chunk_bytes;
        loop {
            if self.done {
                return None;
            }
            self.top_up().await;
            let (index, slot) = self.window.front_mut()?;
            let (lo, hi) = fill::wanted_in_chunk(self.range, *index, chunk);
            let chunk_len =
                fill::chunk_range(*index, chunk, self.fetch.meta.size).map_or(0, |r| r.len());
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
                Slot::Direct(stream) => {
                    let stream = match stream {
                        Some(stream) => stream,
                        None => {
                            let base = *index * chunk;
                            let part = ByteRange {
                                start: base + lo,
                                end: base + hi - 1,
                            };
                            let opened = tokio::time::timeout(
                                self.inner.first_byte_timeout,
                                self.fetch.backend.get(
                                    self.fetch.key.object().key(),
                                    Some(part),
                                    &self.fetch.meta,
                                    self.fetch.caller.as_caller(),
                                ),
                            )
                            .await;
                            match opened {
                                Ok(Ok(object)) => stream.insert(object.body),
                                Ok(Err(e)) => return self.fail(e),
                                Err(_) => {
                                    return self.fail(BackendError::Timeout(
                                        self.inner.first_byte_timeout,
                                    ));
                                }
                            }
                        }
                    };
                    match futures_util::StreamExt::next(stream).await {
                        Some(Ok(frame)) => {
                            self.front_pos += frame.len() as u64;
                            self.served("origin", frame.len());
                            return Some(Ok(frame));
                        }
                        Some(Err(e)) => return self.fail(e),
                        None if self.front_pos == hi - lo => {
                            self.window.pop_front();
                            self.front_pos = 0;
                        }
                        None => {
                            return self.fail(BackendError::BodyBroken(
                                "an uncached chunk read ended early".into(),
                            ));
                        }
                    }
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
                            if end >= hi && hi < chunk_len {
                                // Everything wanted from this chunk has arrived and the rest is
                                // not wanted: the fill goes on for the others without this
                                // reader. (A read to the chunk's end waits for the fill's end,
                                // so that once it is complete the chunk is stored.)
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
                        None if self.front_pos >= hi => {
                            self.window.pop_front();
                            self.front_pos = 0;
                        }
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
        let found = found.filter(|bytes| bytes.len() as u64 == expected);
        inner.count(found.is_some(), "disk");
        if let Some(bytes) = found {
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
    if let Some(bytes) = inner.memory.get_counting_hits(&id) {
        return Slot::Ready(bytes, "memory");
    }
    if !inner.reserve_fill(range.len()) {
        return Slot::Direct(None);
    }
    let fill = Fill::new(range.len());
    fills.insert(id.clone(), Arc::clone(&fill));
    drop(fills);
    let reserved = range.len();
    let release = Arc::clone(inner);
    spawn_fill(inner, fetch.key.clone(), index, id, Arc::clone(&fill), {
        let fill = Arc::clone(&fill);
        let inner = Arc::clone(inner);
        let fetch = Arc::clone(fetch);
        async move {
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
            // The chunk is stored (or dropped) right after; its buffer is the memory tier's now.
            release.release_fill(reserved);
            result
        }
    });
    let reader = fill.reader();
    Slot::Fill(reader, Outcome::Miss)
}

/// Run a fill registered in the in-flight table as a detached task (the fill goes on if every
/// reader leaves): `run` fetches; then the chunk is stored (unless a purge ran meanwhile), the
/// fill leaves the table, and only then do its readers see the end.
pub(super) fn spawn_fill<F>(
    inner: &Arc<Inner>,
    key: CacheKey,
    index: u64,
    id: ChunkId,
    fill: Arc<Fill>,
    run: F,
) where
    F: Future<Output = Result<Bytes, Arc<BackendError>>> + Send + 'static,
{
    inner.metrics.cache_fills.inc();
    let generation = inner.generation.load(Ordering::SeqCst);
    let inner = Arc::clone(inner);
    tokio::spawn(async move {
        let result = run.await;
        match &result {
            Ok(bytes) => {
                inner.metrics.cache_origin_bytes.inc_by(bytes.len() as u64);
                if inner.generation.load(Ordering::SeqCst) == generation {
                    if let Some(disk) = &inner.disk {
                        disk.put(
                            &DiskKey {
                                source: key.source(),
                                key: key.key(),
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
                    inner.forget_meta(key.object(), key.version());
                }
                tracing::warn!(
                    source = key.source(),
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
}
