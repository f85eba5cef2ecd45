//! One origin fetch per missing chunk, its bytes streamed to every reader as they arrive.
//!
//! A [`Fill`] is led by the first reader that misses a chunk and runs as a detached task: one
//! ranged GET (`If-Match` the version the readers decided on), whose frames are appended to the
//! fill's log and announced to its readers. Readers join by holding the fill and an index into
//! the log, so a reader that is slow or gone never holds the fill back, and the log never grows
//! beyond the one chunk it is filling (the bytes it must keep anyway to store the chunk). On
//! success (exact length) the chunk is stored in memory and on disk *before* the fill leaves the
//! in-flight table, so a later reader finds it in one or the other; on any failure every reader
//! gets the same error, nothing is stored, and the fill leaves the table.
//!
//! Also here: the chunk arithmetic (which chunks a byte range touches, and which part of each).

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::backend::{Backend, BackendError, ByteRange};

/// The chunks `range` touches: first and last index (inclusive).
pub fn chunk_span(range: ByteRange, chunk_bytes: u64) -> (u64, u64) {
    (range.start / chunk_bytes, range.end / chunk_bytes)
}

/// The bytes of chunk `index` of an object of `size` bytes (the last chunk may be short).
/// `None` past the end.
pub fn chunk_range(index: u64, chunk_bytes: u64, size: u64) -> Option<ByteRange> {
    let start = index.checked_mul(chunk_bytes)?;
    if start >= size {
        return None;
    }
    let end = start.saturating_add(chunk_bytes).min(size) - 1;
    Some(ByteRange { start, end })
}

/// The part of chunk `index` that `range` wants, relative to the chunk's first byte
/// (half-open: `lo..hi`).
pub fn wanted_in_chunk(range: ByteRange, index: u64, chunk_bytes: u64) -> (u64, u64) {
    let chunk_start = index * chunk_bytes;
    let lo = range.start.max(chunk_start) - chunk_start;
    let hi = (range.end + 1).min(chunk_start + chunk_bytes) - chunk_start;
    (lo, hi.max(lo))
}

/// What a fill has published so far.
#[derive(Default)]
struct Log {
    frames: Vec<Bytes>,
    /// `None` while running; then `Ok` (every byte is in `frames`) or the failure.
    end: Option<Result<(), Arc<BackendError>>>,
}

/// One chunk being fetched from the origin (see the module doc).
pub struct Fill {
    log: Mutex<Log>,
    /// Bumped on every publish; readers wait on it for frames past their index.
    changed: watch::Sender<u64>,
    /// The chunk's exact length.
    len: u64,
}

impl std::fmt::Debug for Fill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fill")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Fill {
    pub fn new(len: u64) -> Arc<Fill> {
        Arc::new(Fill {
            log: Mutex::new(Log::default()),
            changed: watch::Sender::new(0),
            len,
        })
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, frame: Bytes) {
        self.log().frames.push(frame);
        self.changed.send_modify(|n| *n += 1);
    }

    fn end(&self, end: Result<(), Arc<BackendError>>) {
        self.log().end = Some(end);
        self.changed.send_modify(|n| *n += 1);
    }

    /// The published frames as one exactly sized buffer (what the tiers store: a frame may be a
    /// slice of a larger buffer the store's client holds, which must not be kept alive).
    fn assemble(&self) -> Bytes {
        let log = self.log();
        let mut whole = BytesMut::with_capacity(usize::try_from(self.len).unwrap_or(0));
        for frame in &log.frames {
            whole.extend_from_slice(frame);
        }
        whole.freeze()
    }

    /// A reader of a fill that already failed with `error`.
    pub fn failed(error: BackendError) -> FillReader {
        let fill = Fill::new(0);
        fill.end(Err(Arc::new(error)));
        fill.reader()
    }

    /// A reader from the first byte.
    pub fn reader(self: &Arc<Fill>) -> FillReader {
        FillReader {
            fill: Arc::clone(self),
            rx: self.changed.subscribe(),
            next: 0,
        }
    }

    /// Tell every reader the fill is over: after the leader stored the chunk (or decided not to)
    /// and took the fill out of the in-flight table, so a reader that sees the end and asks
    /// again finds the chunk stored or a fresh fill, never this one.
    pub fn finish(&self, result: &Result<Bytes, Arc<BackendError>>) {
        self.end(result.as_ref().map(|_| ()).map_err(Arc::clone));
    }

    /// Fetch `range` of `key` into this fill: one ranged GET, frames published as they arrive,
    /// the total checked against the chunk's length. Returns the whole chunk on success; the
    /// caller then calls [`Fill::finish`]. `first_byte` and `idle` bound the waits on the store.
    #[allow(clippy::too_many_arguments)]
    pub async fn run<B: Backend>(
        &self,
        backend: &B,
        key: &str,
        range: ByteRange,
        expect: &crate::backend::ObjectMeta,
        caller: crate::backend::Caller<'_>,
        first_byte: std::time::Duration,
        idle: std::time::Duration,
    ) -> Result<Bytes, Arc<BackendError>> {
        let opened =
            tokio::time::timeout(first_byte, backend.get(key, Some(range), expect, caller))
                .await
                .map_err(|_| BackendError::Timeout(first_byte))??;
        self.stream(opened.body, idle).await
    }

    /// Read an already opened body of exactly this chunk into the fill (see [`Fill::run`]).
    pub async fn stream(
        &self,
        mut body: crate::backend::BodyStream,
        idle: std::time::Duration,
    ) -> Result<Bytes, Arc<BackendError>> {
        let mut got = 0u64;
        loop {
            let next = tokio::time::timeout(idle, body.next())
                .await
                .map_err(|_| BackendError::Stalled(idle))?;
            match next {
                Some(Ok(frame)) => {
                    got += frame.len() as u64;
                    if got > self.len {
                        return Err(Arc::new(BackendError::Protocol(format!(
                            "ranged read returned more than the {} bytes asked for",
                            self.len
                        ))));
                    }
                    if frame.is_empty() {
                        continue;
                    }
                    self.publish(frame);
                }
                Some(Err(e)) => return Err(Arc::new(e)),
                None if got == self.len => return Ok(self.assemble()),
                None => {
                    return Err(Arc::new(BackendError::BodyBroken(
                        format!("ranged read ended after {got} of {} bytes", self.len).into(),
                    )));
                }
            }
        }
    }
}

/// A reader of a [`Fill`]: every frame in order, then the end, or the fill's error.
pub struct FillReader {
    fill: Arc<Fill>,
    rx: watch::Receiver<u64>,
    next: usize,
}

impl FillReader {
    /// The next frame; `None` once the whole chunk was read; an error (the same for every reader
    /// of the fill) if it failed.
    pub async fn next(&mut self) -> Option<Result<Bytes, BackendError>> {
        loop {
            self.rx.borrow_and_update();
            {
                let log = self.fill.log();
                if let Some(frame) = log.frames.get(self.next) {
                    self.next += 1;
                    return Some(Ok(frame.clone()));
                }
                match &log.end {
                    Some(Ok(())) => return None,
                    Some(Err(e)) => return Some(Err(share(e))),
                    None => {}
                }
            }
            if self.rx.changed().await.is_err() {
                // The fill was dropped without ending: only a panic in its task does that.
                let log = self.fill.log();
                if let Some(frame) = log.frames.get(self.next) {
                    self.next += 1;
                    return Some(Ok(frame.clone()));
                }
                return Some(Err(match &log.end {
                    Some(Err(e)) => share(e),
                    Some(Ok(())) => return None,
                    None => BackendError::BodyBroken("the cache fill stopped".into()),
                }));
            }
        }
    }
}

/// The failure of a fill, shared by its readers.
#[derive(Debug, Clone)]
pub struct SharedError(pub Arc<BackendError>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cache fill failed: {}", self.0)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}

/// One reader's copy of a shared failure, of the same kind (so the pipeline maps it alike:
/// `Changed` may start over, a missing object is a 404).
pub fn share(e: &Arc<BackendError>) -> BackendError {
    let boxed =
        || -> Box<dyn std::error::Error + Send + Sync> { Box::new(SharedError(Arc::clone(e))) };
    match &**e {
        BackendError::NotFound => BackendError::NotFound,
        BackendError::NotAnObject => BackendError::NotAnObject,
        BackendError::AccessDenied => BackendError::AccessDenied,
        BackendError::ConfigFault { code } => BackendError::ConfigFault { code },
        BackendError::RoleConfigFault { role_arn, code } => BackendError::RoleConfigFault {
            role_arn: role_arn.clone(),
            code: code.clone(),
        },
        BackendError::CredentialsUnavailable { retry_after } => {
            BackendError::CredentialsUnavailable {
                retry_after: *retry_after,
            }
        }
        BackendError::Changed => BackendError::Changed,
        BackendError::Unreachable(_) => BackendError::Unreachable(boxed()),
        BackendError::Timeout(d) => BackendError::Timeout(*d),
        BackendError::Stalled(d) => BackendError::Stalled(*d),
        BackendError::BodyBroken(_) => BackendError::BodyBroken(boxed()),
        BackendError::Io(io) => BackendError::Io(std::io::Error::new(io.kind(), boxed())),
        BackendError::Protocol(s) => BackendError::Protocol(s.clone()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap; src/ may not
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    /// Reassemble `range` of an object of `size` bytes from its chunks, as the reader does.
    fn walk(range: ByteRange, chunk: u64, size: u64) -> Vec<(u64, u64, u64)> {
        let (first, last) = chunk_span(range, chunk);
        (first..=last)
            .map(|i| {
                let c = chunk_range(i, chunk, size).unwrap();
                let (lo, hi) = wanted_in_chunk(range, i, chunk);
                assert!(hi <= c.len(), "chunk {i}: {hi} > {}", c.len());
                (i, c.start + lo, c.start + hi)
            })
            .collect()
    }

    #[test]
    fn chunk_arithmetic_covers_every_range_shape_exactly() {
        let chunk = 10;
        let size = 35; // chunks 0..=3, the last one 5 bytes
        assert_eq!(chunk_range(3, chunk, size), Some(r(30, 34)));
        assert_eq!(chunk_range(4, chunk, size), None);
        assert_eq!(chunk_range(0, chunk, 0), None);
        for (range, expect) in [
            // whole object
            (
                r(0, 34),
                vec![(0, 0, 10), (1, 10, 20), (2, 20, 30), (3, 30, 35)],
            ),
            // first chunk, exactly
            (r(0, 9), vec![(0, 0, 10)]),
            // inside the middle chunk
            (r(12, 15), vec![(1, 12, 16)]),
            // spanning two chunks
            (r(8, 11), vec![(0, 8, 10), (1, 10, 12)]),
            // the last, partial chunk (suffix `-3`)
            (r(32, 34), vec![(3, 32, 35)]),
            // open-ended from a chunk boundary
            (r(20, 34), vec![(2, 20, 30), (3, 30, 35)]),
            // one byte, the very last
            (r(34, 34), vec![(3, 34, 35)]),
        ] {
            assert_eq!(walk(range, chunk, size), expect, "{range:?}");
        }
        // An object under one chunk is one entry.
        assert_eq!(walk(r(0, 4), 10, 5), vec![(0, 0, 5)]);
        // Every range of a small object is covered byte for byte, once.
        for a in 0..size {
            for b in a..size {
                let parts = walk(r(a, b), chunk, size);
                let mut at = a;
                for (_, lo, hi) in parts {
                    assert_eq!(lo, at);
                    at = hi;
                }
                assert_eq!(at, b + 1);
            }
        }
    }

    #[tokio::test]
    async fn fill_readers_joining_late_see_every_frame_and_the_same_error() {
        let fill = Fill::new(6);
        let mut early = fill.reader();
        fill.publish(Bytes::from_static(b"abc"));
        let mut late = fill.reader();
        assert_eq!(early.next().await.unwrap().unwrap(), "abc");
        fill.end(Err(Arc::new(BackendError::Changed)));
        assert_eq!(late.next().await.unwrap().unwrap(), "abc");
        assert!(matches!(
            late.next().await,
            Some(Err(BackendError::Changed))
        ));
        assert!(matches!(
            early.next().await,
            Some(Err(BackendError::Changed))
        ));
    }
}
