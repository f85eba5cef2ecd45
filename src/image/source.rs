//! [`ObjectBytes`]: the bytes of the one object an image job reads, by range, through the cache
//! when there is one, with a budget of bytes per job (`max_source_bytes`).
//!
//! Every read is pinned to one version of the object (the metadata the job started with): through
//! the cache its entries are keyed by that version, and a direct read is a ranged GET with
//! `If-Match` on it ([`Backend::get`]'s `expect`), so a changed object is an error
//! ([`BackendError::Changed`]), never bytes of two versions in one image. What it must not do: read
//! more than the budget (each read is counted before it is made, [`ImageError::TooLarge`] past
//! it), or read the whole object unless asked to ([`ObjectBytes::read_all`], itself bounded).
//!
//! [`ObjectBytes::read_ranges`] reads many small ranges (the tiles of one region) in a few
//! requests: ranges close to each other in the file are merged into one read, and the merged
//! reads run concurrently, so twenty tiles are not twenty serial round trips.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::ImageError;
use crate::backend::OwnedCaller;
use crate::backend::{AnyBackend, Backend, BackendError, BodyStream, ByteRange, ObjectMeta};
use crate::cache::Cache;
use crate::cache::key::CacheKey;

/// Two ranges at most this far apart are read in one request (the gap is read and dropped):
/// a round trip costs more than this many bytes on any link worth serving tiles over.
pub const MERGE_GAP_BYTES: u64 = 64 << 10;
/// A merged read grows no larger than this (several requests in flight beat one long one).
pub const MERGE_MAX_BYTES: u64 = 4 << 20;
/// Reads of one [`ObjectBytes::read_ranges`] in flight at once.
pub const READS_IN_FLIGHT: usize = 8;

/// The bytes of one version of one object, read by range, within a budget.
pub struct ObjectBytes {
    backend: Arc<AnyBackend>,
    key: String,
    meta: Arc<ObjectMeta>,
    caller: OwnedCaller,
    /// The cache and the ORIGINAL's entry key of this version: reads become cached chunks.
    cache: Option<(Arc<Cache>, CacheKey)>,
    budget: u64,
    /// Bytes counted against `budget` so far (reserved before each read).
    spent: AtomicU64,
    /// Reads made (one per request to the cache or the backend), for tests and the log.
    reads: AtomicU64,
    /// The bytes of the longest read from offset 0 so far (the format sniff's head): the TIFF
    /// header and a COG's directories, read again by the probe, come from here.
    head: Mutex<Bytes>,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
}

impl std::fmt::Debug for ObjectBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBytes")
            .field("key", &self.key)
            .field("size", &self.meta.size)
            .field("budget", &self.budget)
            .field("spent", &self.spent.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ObjectBytes {
    /// `meta` is the version every read is pinned to; `cache` the cache and the ORIGINAL's
    /// entry key for that version (reads go through [`Cache::read`]); `budget` the bytes this
    /// job may read in all (`max_source_bytes`).
    pub fn new(
        backend: Arc<AnyBackend>,
        key: String,
        meta: Arc<ObjectMeta>,
        caller: OwnedCaller,
        cache: Option<(Arc<Cache>, CacheKey)>,
        budget: u64,
    ) -> ObjectBytes {
        let limits = crate::config::Limits::default();
        ObjectBytes {
            backend,
            key,
            meta,
            caller,
            cache,
            budget,
            spent: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            head: Mutex::new(Bytes::new()),
            first_byte_timeout: limits.upstream_first_byte_timeout,
            idle_timeout: limits.upstream_idle_timeout,
        }
    }

    /// Bound a direct read's waits on the store (without a cache; the cache has its own).
    pub fn with_timeouts(mut self, first_byte: Duration, idle: Duration) -> ObjectBytes {
        self.first_byte_timeout = first_byte;
        self.idle_timeout = idle;
        self
    }

    /// The object's size in bytes.
    pub fn size(&self) -> u64 {
        self.meta.size
    }

    /// The metadata every read is pinned to.
    pub fn meta(&self) -> &Arc<ObjectMeta> {
        &self.meta
    }

    /// Bytes read so far (counted against the budget).
    pub fn bytes_read(&self) -> u64 {
        self.spent.load(Ordering::Relaxed)
    }

    /// Requests made so far (to the cache or the backend).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// `len` bytes at `offset`, clipped to the object's size (empty at or past the end).
    pub async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, ImageError> {
        let size = self.meta.size;
        if offset >= size || len == 0 {
            return Ok(Bytes::new());
        }
        let len = len.min(size - offset);
        if let Some(held) = self.held(offset, len) {
            return Ok(held);
        }
        self.spend(len)?;
        let range = ByteRange {
            start: offset,
            end: offset + len - 1,
        };
        self.reads.fetch_add(1, Ordering::Relaxed);
        let body = match &self.cache {
            Some((cache, entry)) => {
                cache
                    .read(
                        entry.clone(),
                        Arc::clone(&self.meta),
                        Some(range),
                        Arc::clone(&self.backend),
                        self.caller.clone(),
                    )
                    .await?
                    .body
            }
            None => {
                let first_byte = self.first_byte_timeout;
                tokio::time::timeout(
                    first_byte,
                    self.backend
                        .get(&self.key, Some(range), &self.meta, self.caller.as_caller()),
                )
                .await
                .map_err(|_| BackendError::Timeout(first_byte))??
                .body
            }
        };
        let bytes = collect(body, len, self.idle_timeout).await?;
        if offset == 0 {
            let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
            if bytes.len() > head.len() {
                *head = bytes.clone();
            }
        }
        Ok(bytes)
    }

    /// `len` bytes at `offset` from the head already read, if it holds them.
    fn held(&self, offset: u64, len: u64) -> Option<Bytes> {
        let head = self.head.lock().unwrap_or_else(|e| e.into_inner());
        let end = usize::try_from(offset.checked_add(len)?).ok()?;
        (end <= head.len()).then(|| head.slice(offset as usize..end))
    }

    /// The whole object; [`ImageError::TooLarge`] before any read when it is over the budget.
    pub async fn read_all(&self) -> Result<Bytes, ImageError> {
        let size = self.meta.size;
        if size > self.budget.saturating_sub(self.bytes_read()) {
            return Err(too_large(self.budget));
        }
        self.read_at(0, size).await
    }

    /// Each of `ranges` (`(offset, len)`, any order, each within the object), in the order given,
    /// read with as few requests as is sensible: ranges at most [`MERGE_GAP_BYTES`] apart are
    /// merged into one read of at most [`MERGE_MAX_BYTES`], and up to [`READS_IN_FLIGHT`] reads
    /// run at once. A range reaching past the end is [`ImageError::Corrupt`] (a file's offsets
    /// said so), checked before anything is read.
    pub async fn read_ranges(&self, ranges: &[(u64, u64)]) -> Result<Vec<Bytes>, ImageError> {
        let size = self.meta.size;
        for &(offset, len) in ranges {
            if offset.checked_add(len).is_none_or(|end| end > size) {
                return Err(ImageError::Corrupt(
                    "a data offset points past the end of the file".into(),
                ));
            }
        }
        let mut order: Vec<usize> = (0..ranges.len()).filter(|&i| ranges[i].1 > 0).collect();
        order.sort_by_key(|&i| ranges[i].0);
        // Merged reads: (start, end exclusive, members).
        let mut merged: Vec<(u64, u64, Vec<usize>)> = Vec::new();
        for i in order {
            let (offset, len) = ranges[i];
            let end = offset + len;
            if let Some(last) = merged.last_mut() {
                let joined_end = last.1.max(end);
                if offset <= last.1.saturating_add(MERGE_GAP_BYTES)
                    && joined_end - last.0 <= MERGE_MAX_BYTES
                {
                    last.1 = joined_end;
                    last.2.push(i);
                    continue;
                }
            }
            merged.push((offset, end, vec![i]));
        }
        let mut reads = futures_util::stream::iter(merged.into_iter().map(
            |(start, end, members)| async move {
                let bytes = self.read_at(start, end - start).await?;
                Ok::<_, ImageError>((start, bytes, members))
            },
        ))
        .buffer_unordered(READS_IN_FLIGHT);
        let mut out = vec![Bytes::new(); ranges.len()];
        while let Some(read) = reads.next().await {
            let (start, bytes, members) = read?;
            for i in members {
                let (offset, len) = ranges[i];
                let from = usize::try_from(offset - start).unwrap_or(usize::MAX);
                let to = from.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
                out[i] = bytes
                    .get(from..to)
                    .map(|_| bytes.slice(from..to))
                    .ok_or_else(|| {
                        ImageError::Source(BackendError::BodyBroken("short ranged read".into()))
                    })?;
            }
        }
        Ok(out)
    }

    /// Count `len` bytes against the budget, or refuse them.
    fn spend(&self, len: u64) -> Result<(), ImageError> {
        let budget = self.budget;
        self.spent
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |spent| {
                spent.checked_add(len).filter(|&total| total <= budget)
            })
            .map(|_| ())
            .map_err(|_| too_large(budget))
    }
}

fn too_large(budget: u64) -> ImageError {
    ImageError::TooLarge(format!(
        "the image needs more than max_source_bytes ({budget}) of its source"
    ))
}

/// Read `body` to its end: exactly `len` bytes, each frame within `idle` of the last.
async fn collect(mut body: BodyStream, len: u64, idle: Duration) -> Result<Bytes, ImageError> {
    let mut buf = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
    loop {
        let next = tokio::time::timeout(idle, body.next())
            .await
            .map_err(|_| BackendError::Stalled(idle))?;
        match next {
            Some(frame) => {
                let frame = frame?;
                if buf.len() as u64 + frame.len() as u64 > len {
                    return Err(BackendError::Protocol(format!(
                        "ranged read returned more than the {len} bytes asked for"
                    ))
                    .into());
                }
                buf.extend_from_slice(&frame);
            }
            None => break,
        }
    }
    if buf.len() as u64 != len {
        return Err(BackendError::BodyBroken(
            format!("ranged read returned {} of {len} bytes", buf.len()).into(),
        )
        .into());
    }
    Ok(buf.freeze())
}
