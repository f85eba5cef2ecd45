//! A local directory as a source. Keys map to files below `root`; a key can never name anything
//! outside it: dot segments are refused before we get here, and the kernel resolves every key
//! beneath the root's directory handle (`openat2` with `RESOLVE_BENEATH`). A symlink that leaves
//! that handle (any absolute symlink does) is checked by path instead: canonicalize, compare with
//! the root, open; one that leads outside the root is "no such object".
//!
//! Reads that the page cache can answer are done on the calling thread, without a thread hop:
//! the open asks the kernel to use only its lookup cache (`RESOLVE_CACHED`) and each read is a
//! `preadv2(RWF_NOWAIT)`. Anything that would wait for a disk goes to tokio's blocking pool, so
//! a slow disk never stalls the runtime. Kernels without `openat2` (before 5.6, or behind a
//! seccomp filter that refuses it) get the same checks by path: canonicalize, compare, open, all
//! on the blocking pool.

use std::fs::{File, Metadata};
use std::io::{self, IoSliceMut};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::{Errno, ReadWriteFlags};

use super::{
    Ask, Backend, BackendError, BodyStream, ByteRange, Caller, Listing, ObjectBody, ObjectMeta,
    Opened, Want,
};
use crate::config::defaults::BODY_CHUNK_BYTES;

pub struct FsBackend {
    /// Canonical root directory.
    root: Arc<PathBuf>,
    /// The root opened as a directory handle, when the kernel resolves paths beneath it
    /// (`openat2`); `None` means the path-based fallback.
    root_fd: Option<Arc<OwnedFd>>,
}

impl FsBackend {
    /// Open a root directory. Fails if it does not exist or is not a directory.
    pub fn new(root: &Path) -> Result<FsBackend, BackendError> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(BackendError::NotAnObject);
        }
        let dir = rustix::fs::open(
            &root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)?;
        // Probe once: the root itself, resolved beneath itself from the lookup cache (which
        // needs Linux 5.12; EAGAIN says the flag is known but the entry is not cached).
        let root_fd = match open_beneath(&dir, ".", ResolveFlags::CACHED) {
            Ok(_) | Err(Errno::AGAIN) => Some(Arc::new(dir)),
            Err(_) => None,
        };
        if root_fd.is_none() {
            tracing::info!(root = %root.display(), "openat2 unavailable; fs source resolves keys by path on the blocking pool");
        }
        Ok(FsBackend {
            root: Arc::new(root),
            root_fd,
        })
    }

    /// Open `key`, decide with `decide` once its metadata is known, and read a body that fits in
    /// one frame: on this thread when the kernel's caches can answer, else on the blocking pool.
    async fn open_with<F>(&self, key: &str, decide: F) -> Result<Decided, BackendError>
    where
        F: FnOnce(&ObjectMeta) -> Result<Want, BackendError> + Send + 'static,
    {
        if !is_file_key(key) {
            return Err(BackendError::NotFound);
        }
        let Some(root_fd) = &self.root_fd else {
            return open_blocking(None, Arc::clone(&self.root), key.to_owned(), decide).await;
        };
        match open_beneath(root_fd, key, ResolveFlags::CACHED) {
            Ok(fd) => {
                let file = File::from(fd);
                let md = file.metadata().map_err(map_io)?;
                let (meta, body) = finish_open(file, &md, key, decide, ReadMode::NoWait)?;
                match body {
                    // The page cache did not hold the whole frame: read it where waiting is fine.
                    Some((Part::Unread { file, start, len }, range))
                        if len <= BODY_CHUNK_BYTES as u64 =>
                    {
                        let bytes = blocking(move || read_frame(&file, start, len)).await?;
                        Ok((meta, Some((Part::Read(bytes), range))))
                    }
                    body => Ok((meta, body)),
                }
            }
            // Some path component is not in the lookup cache (resolving it may wait for a disk),
            // or a symlink leaves the root's handle: on the blocking pool.
            Err(Errno::AGAIN | Errno::XDEV) => {
                let root_fd = Some(Arc::clone(root_fd));
                open_blocking(root_fd, Arc::clone(&self.root), key.to_owned(), decide).await
            }
            Err(e) => Err(map_errno(e)),
        }
    }
}

impl FsBackend {
    /// The canonical absolute path of `key`'s file and its metadata, for a child process that
    /// must open the file itself (video: ffmpeg gets `file:` + this path, never the key). The
    /// same checks as a read: the key resolved beneath the root (a symlink that leaves it is "no
    /// such object"), a regular file only. The path is the canonicalized `root/key`, accepted
    /// only when it lies below the root and names the very file (device and inode) the checked
    /// open found. What this cannot stop: the operator's own directory being changed between
    /// this check and the child's open (the root is trusted; clients cannot create symlinks).
    pub async fn local_path(&self, key: &str) -> Result<(PathBuf, ObjectMeta), BackendError> {
        use std::os::unix::fs::MetadataExt;
        if !is_file_key(key) {
            return Err(BackendError::NotFound);
        }
        let root_fd = self.root_fd.clone();
        let root = Arc::clone(&self.root);
        let key = key.to_owned();
        blocking(move || {
            let (_file, md) = match &root_fd {
                Some(root_fd) => match open_beneath(root_fd, &key, ResolveFlags::empty()) {
                    Ok(fd) => {
                        let file = File::from(fd);
                        let md = file.metadata().map_err(map_io)?;
                        (file, md)
                    }
                    Err(Errno::XDEV) => open_by_path(&root, Path::new(&key))?,
                    Err(e) => return Err(map_errno(e)),
                },
                None => open_by_path(&root, Path::new(&key))?,
            };
            if !md.is_file() {
                return Err(BackendError::NotAnObject);
            }
            let real = root.join(&key).canonicalize().map_err(map_io)?;
            if !real.starts_with(root.as_path()) {
                return Err(BackendError::NotFound);
            }
            let named = std::fs::metadata(&real).map_err(map_io)?;
            if (named.dev(), named.ino()) != (md.dev(), md.ino()) {
                // Renamed or swapped between the open and the canonicalize.
                return Err(BackendError::Changed);
            }
            Ok((real, meta_of(Path::new(&key), &md)))
        })
        .await
    }
}

/// [`FsBackend::open_with`] on the blocking pool, where waiting for a disk is fine.
async fn open_blocking<F>(
    root_fd: Option<Arc<OwnedFd>>,
    root: Arc<PathBuf>,
    key: String,
    decide: F,
) -> Result<Decided, BackendError>
where
    F: FnOnce(&ObjectMeta) -> Result<Want, BackendError> + Send + 'static,
{
    blocking(move || {
        let (file, md) = match root_fd {
            Some(root_fd) => match open_beneath(&root_fd, &key, ResolveFlags::empty()) {
                Ok(fd) => {
                    let file = File::from(fd);
                    let md = file.metadata().map_err(map_io)?;
                    (file, md)
                }
                // An absolute symlink leaves the handle even when it names a file inside the
                // root: see where it leads by path, as without openat2.
                Err(Errno::XDEV) => open_by_path(&root, Path::new(&key))?,
                Err(e) => return Err(map_errno(e)),
            },
            None => open_by_path(&root, Path::new(&key))?,
        };
        finish_open(file, &md, &key, decide, ReadMode::Blocking)
    })
    .await
}

/// Run `f` on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackendError::Io(io::Error::other(e)))?
}

/// A file system cannot hold `a//b`, `/a` or `a/` as distinct keys: they are not objects here.
fn is_file_key(key: &str) -> bool {
    !(key.is_empty() || key.starts_with('/') || key.ends_with('/') || key.contains("//"))
}

/// How every object is opened. `O_NONBLOCK` keeps a FIFO planted in the root from blocking the
/// open (it is then refused as not a regular file); it changes nothing for regular files.
const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY)
    .union(OFlags::NONBLOCK);

/// `openat2(root, key)` for reading, resolved beneath `root`: a symlink that leaves the root and
/// an absolute symlink fail with `EXDEV`, `/proc` magic links with `ELOOP`.
fn open_beneath(root: &OwnedFd, key: &str, extra: ResolveFlags) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        root,
        key,
        READ_FLAGS,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | extra,
    )
}

/// The fallback without `openat2`: resolve `key` below `root` by path and open it.
fn open_by_path(root: &Path, key: &Path) -> Result<(File, Metadata), BackendError> {
    let real = root.join(key).canonicalize().map_err(map_io)?;
    if !real.starts_with(root) {
        // A symlink pointing outside the root: as if it did not exist.
        return Err(BackendError::NotFound);
    }
    let file = File::from(rustix::fs::open(&real, READ_FLAGS, Mode::empty()).map_err(map_errno)?);
    let md = file.metadata().map_err(map_io)?;
    Ok((file, md))
}

/// The metadata of an opened object, and the body asked for (with its range), if any.
type Decided = (ObjectMeta, Option<(Part, Option<ByteRange>)>);

/// How reads in [`finish_open`] may behave.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadMode {
    /// Only from the page cache; anything else is left unread.
    NoWait,
    /// Wait for the disk if need be (we are on the blocking pool).
    Blocking,
}

/// A body about to be sent: read already, or a file and the span of it still to read.
enum Part {
    Read(Bytes),
    Unread {
        file: Arc<File>,
        start: u64,
        len: u64,
    },
}

impl Part {
    fn into_stream(self) -> BodyStream {
        match self {
            Part::Read(bytes) => Box::pin(futures_util::stream::once(async move { Ok(bytes) })),
            Part::Unread { file, start, len } => file_stream(file, start, len),
        }
    }
}

/// Check the opened file, decide, and read a body that fits in one frame (if `mode` allows).
fn finish_open<F>(
    file: File,
    md: &Metadata,
    key: &str,
    decide: F,
    mode: ReadMode,
) -> Result<Decided, BackendError>
where
    F: FnOnce(&ObjectMeta) -> Result<Want, BackendError>,
{
    if !md.is_file() {
        return Err(BackendError::NotAnObject);
    }
    let meta = meta_of(Path::new(key), md);
    let range = match decide(&meta)? {
        Want::Meta | Want::NotModified => return Ok((meta, None)),
        Want::Body(range) => range,
    };
    let (start, len) = range.map_or((0, meta.size), |r| (r.start, r.len()));
    let file = Arc::new(file);
    if len <= BODY_CHUNK_BYTES as u64 {
        let read = match mode {
            ReadMode::NoWait => read_frame_cached(&file, start, len),
            ReadMode::Blocking => Some(read_frame(&file, start, len)?),
        };
        if let Some(bytes) = read {
            return Ok((meta, Some((Part::Read(bytes), range))));
        }
    }
    Ok((meta, Some((Part::Unread { file, start, len }, range))))
}

/// Read up to `len` bytes at `offset`, waiting for the disk if need be. Short only at the end of
/// the file (a file that shrank under us).
fn read_frame(file: &File, offset: u64, len: u64) -> Result<Bytes, BackendError> {
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(BODY_CHUNK_BYTES)];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BackendError::Io(e)),
        }
    }
    buf.truncate(filled);
    Ok(Bytes::from(buf))
}

/// Read exactly `len` bytes at `offset` if the page cache holds them all; `None` if reading them
/// would wait for a disk, or anything else went wrong: the blocking read then waits, or reports
/// the error.
fn read_frame_cached(file: &File, offset: u64, len: u64) -> Option<Bytes> {
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(BODY_CHUNK_BYTES)];
    match rustix::io::preadv2(
        file,
        &mut [IoSliceMut::new(&mut buf)],
        offset,
        ReadWriteFlags::NOWAIT,
    ) {
        Ok(n) if n == buf.len() => Some(Bytes::from(buf)),
        // Partly cached, at the end of a file that shrank, not cached (EAGAIN), or a file system
        // or seccomp filter without RWF_NOWAIT.
        Ok(_) | Err(_) => None,
    }
}

/// Read `len` bytes of `file` from `start`, one frame at a time: from the page cache on this
/// thread when it can, else on the blocking pool. Each frame is a fresh buffer handed straight to
/// hyper (no second copy, no buffer kept per response), so a slow reader holds at most the frame
/// in flight. A file that shrinks under us ends the stream early, which the response body turns
/// into an aborted response.
fn file_stream(file: Arc<File>, start: u64, len: u64) -> BodyStream {
    Box::pin(futures_util::stream::unfold(
        Some((file, start, len)),
        |state| async move {
            let (file, offset, remaining) = state?;
            if remaining == 0 {
                return None;
            }
            let want = remaining.min(BODY_CHUNK_BYTES as u64);
            let read = match read_frame_cached(&file, offset, want) {
                Some(bytes) => Ok(bytes),
                None => {
                    let file = Arc::clone(&file);
                    blocking(move || read_frame(&file, offset, want)).await
                }
            };
            match read {
                Ok(bytes) if bytes.is_empty() => None,
                Ok(bytes) => {
                    let n = bytes.len() as u64;
                    Some((Ok(bytes), Some((file, offset + n, remaining - n))))
                }
                Err(e) => Some((Err(e), None)),
            }
        },
    ))
}

fn map_errno(e: Errno) -> BackendError {
    map_io(e.into())
}

fn map_io(e: io::Error) -> BackendError {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => BackendError::NotFound,
        io::ErrorKind::PermissionDenied => BackendError::AccessDenied,
        _ => match e.raw_os_error() {
            // ENAMETOOLONG, ELOOP: no such object for the client.
            Some(36) | Some(40) => BackendError::NotFound,
            _ => BackendError::Io(e),
        },
    }
}

fn meta_of(key: &Path, md: &Metadata) -> ObjectMeta {
    let mtime = md.modified().ok();
    let (secs, nanos) = mtime
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| (d.as_secs(), d.subsec_nanos()))
        .unwrap_or((0, 0));
    let content_type = mime_guess::from_path(key).first_raw().map(str::to_owned);
    ObjectMeta {
        size: md.len(),
        // Size and nanosecond mtime: changes whenever the file is rewritten.
        etag: Some(format!("\"{:x}-{:x}{:08x}\"", md.len(), secs, nanos)),
        last_modified: mtime.map(|_| UNIX_EPOCH + Duration::from_secs(secs)),
        content_type,
    }
}

impl Backend for FsBackend {
    // A local directory has one authority: the caller changes nothing.
    async fn head(&self, key: &str, _caller: Caller<'_>) -> Result<ObjectMeta, BackendError> {
        let (meta, _) = self.open_with(key, |_| Ok(Want::Meta)).await?;
        Ok(meta)
    }

    async fn get(
        &self,
        key: &str,
        range: Option<ByteRange>,
        expect: &ObjectMeta,
        _caller: Caller<'_>,
    ) -> Result<ObjectBody, BackendError> {
        let expect_etag = expect.etag.clone();
        let (meta, body) = self
            .open_with(key, move |meta| {
                if meta.etag != expect_etag {
                    return Err(BackendError::Changed);
                }
                Ok(Want::Body(range))
            })
            .await?;
        let body = match body {
            Some((part, _)) => part.into_stream(),
            None => Part::Read(Bytes::new()).into_stream(),
        };
        Ok(ObjectBody { meta, body })
    }

    /// Open, stat, decide and (for small bodies) read in one go: usually on this thread from the
    /// kernel's caches, else in one blocking call; the body comes from the very file the metadata
    /// describes. No store to wait on: `deadline` does not apply; `want` decides locally, so
    /// `ask` is not needed.
    async fn open<F>(
        &self,
        key: &str,
        _ask: &Ask,
        want: F,
        _caller: Caller<'_>,
        _deadline: tokio::time::Instant,
    ) -> Result<Opened, BackendError>
    where
        F: Fn(&ObjectMeta) -> Want + Send + Sync + 'static,
    {
        let (meta, body) = self.open_with(key, move |meta| Ok(want(meta))).await?;
        Ok(match body {
            None => Opened::Meta(meta),
            Some((part, range)) => Opened::Object {
                object: ObjectBody {
                    meta,
                    body: part.into_stream(),
                },
                part: range,
            },
        })
    }

    async fn ready(&self) -> Result<(), BackendError> {
        let root = Arc::clone(&self.root);
        blocking(move || {
            std::fs::read_dir(root.as_path())
                .map(|_| ())
                .map_err(BackendError::Io)
        })
        .await
    }

    /// Walk the root on the blocking pool, descending only into directories that can hold keys
    /// under `prefix`. Regular files only: a symlink is neither followed nor listed, so a listing
    /// never leaves the root; names that are not UTF-8 are skipped.
    async fn list(&self, prefix: &str, limit: usize) -> Result<Listing, BackendError> {
        let root = Arc::clone(&self.root);
        let prefix = prefix.to_owned();
        blocking(move || list_below(&root, &prefix, limit)).await
    }
}

/// [`FsBackend::list`]'s walk.
fn list_below(root: &Path, prefix: &str, limit: usize) -> Result<Listing, BackendError> {
    let mut keys = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, base)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(map_io(e)),
        };
        for entry in entries {
            let entry = entry.map_err(map_io)?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let key = format!("{base}{name}");
            let kind = entry.file_type().map_err(map_io)?;
            if kind.is_dir() {
                let folder = format!("{key}/");
                if folder.starts_with(prefix) || prefix.starts_with(&folder) {
                    dirs.push((entry.path(), folder));
                }
            } else if kind.is_file() && key.starts_with(prefix) {
                keys.push(key);
                if keys.len() > limit {
                    keys.sort();
                    keys.truncate(limit);
                    return Ok(Listing {
                        keys,
                        truncated: true,
                    });
                }
            }
        }
    }
    keys.sort();
    Ok(Listing {
        keys,
        truncated: false,
    })
}
