//! A local directory as a source. Keys map to files below `root`; a key can never name anything
//! outside it (dot segments are refused before we get here, and symlinks that resolve outside the
//! root are refused here).

use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom};

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::{Backend, BackendError, BodyStream, ByteRange, ObjectBody, ObjectMeta, Opened, Want};
use crate::config::defaults::BODY_CHUNK_BYTES;

pub struct FsBackend {
    /// Canonical root directory.
    root: Arc<PathBuf>,
}

impl FsBackend {
    /// Open a root directory. Fails if it does not exist or is not a directory.
    pub fn new(root: &Path) -> Result<FsBackend, BackendError> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(BackendError::NotAnObject);
        }
        Ok(FsBackend {
            root: Arc::new(root),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        key: &str,
        f: impl FnOnce(&Path, &Path) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let root = Arc::clone(&self.root);
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || f(&root, Path::new(&key)))
            .await
            .map_err(|e| BackendError::Io(std::io::Error::other(e)))?
    }
}

/// Resolve `key` below `root` and open it as a regular file.
fn open_below(root: &Path, key: &Path) -> Result<(File, Metadata), BackendError> {
    let key_str = key.to_str().unwrap_or_default();
    // A file system cannot hold `a//b`, `/a` or `a/` as distinct keys: they are not objects here.
    if key_str.is_empty()
        || key_str.starts_with('/')
        || key_str.ends_with('/')
        || key_str.contains("//")
    {
        return Err(BackendError::NotFound);
    }
    let joined = root.join(key);
    let real = joined.canonicalize().map_err(map_io)?;
    if !real.starts_with(root) {
        // A symlink pointing outside the root: as if it did not exist.
        return Err(BackendError::NotFound);
    }
    let file = File::open(&real).map_err(map_io)?;
    let md = file.metadata().map_err(map_io)?;
    if !md.is_file() {
        return Err(BackendError::NotAnObject);
    }
    Ok((file, md))
}

/// A body about to be sent: small ones already read, larger ones as a positioned file.
enum FileBody {
    Read(Bytes),
    File(File, u64),
}

impl FileBody {
    fn into_stream(self) -> BodyStream {
        match self {
            FileBody::Read(bytes) => Box::pin(futures_util::stream::once(async move { Ok(bytes) })),
            FileBody::File(file, len) => file_stream(file, len),
        }
    }
}

/// Read `len` bytes from `file`, one frame per blocking call. Each frame is a fresh buffer handed
/// straight to hyper (no second copy, no buffer kept per response), so a slow reader holds at most
/// the frame in flight. A file that shrinks under us ends the stream early, which the response
/// body turns into an aborted response.
fn file_stream(file: File, len: u64) -> BodyStream {
    Box::pin(futures_util::stream::unfold(
        Some((file, len)),
        |state| async move {
            let (mut file, remaining) = state?;
            if remaining == 0 {
                return None;
            }
            let want = remaining.min(BODY_CHUNK_BYTES as u64);
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = Vec::with_capacity(want as usize);
                (&mut file)
                    .take(want)
                    .read_to_end(&mut buf)
                    .map(|_| (file, buf))
            })
            .await;
            match read {
                Ok(Ok((_, buf))) if buf.is_empty() => None,
                Ok(Ok((file, buf))) => {
                    let left = remaining - buf.len() as u64;
                    Some((Ok(Bytes::from(buf)), Some((file, left))))
                }
                Ok(Err(e)) => Some((Err(BackendError::Io(e)), None)),
                Err(e) => Some((Err(BackendError::Io(std::io::Error::other(e))), None)),
            }
        },
    ))
}

/// Position `file` at the part to send; a body that fits in one frame is read right away.
fn read_part(
    mut file: File,
    meta: &ObjectMeta,
    part: Option<ByteRange>,
) -> Result<FileBody, BackendError> {
    if let Some(r) = part {
        file.seek(SeekFrom::Start(r.start))?;
    }
    let len = part.map_or(meta.size, |r| r.len());
    if len <= BODY_CHUNK_BYTES as u64 {
        let mut buf = Vec::with_capacity(len as usize);
        (&mut file).take(len).read_to_end(&mut buf)?;
        return Ok(FileBody::Read(Bytes::from(buf)));
    }
    Ok(FileBody::File(file, len))
}

fn map_io(e: std::io::Error) -> BackendError {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => BackendError::NotFound,
        std::io::ErrorKind::PermissionDenied => BackendError::AccessDenied,
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
    async fn head(&self, key: &str) -> Result<ObjectMeta, BackendError> {
        self.blocking(key, |root, key| {
            let (_file, md) = open_below(root, key)?;
            Ok(meta_of(key, &md))
        })
        .await
    }

    async fn get(
        &self,
        key: &str,
        range: Option<ByteRange>,
        expect: &ObjectMeta,
    ) -> Result<ObjectBody, BackendError> {
        let expect_etag = expect.etag.clone();
        let (body, meta) = self
            .blocking(key, move |root, key| {
                let (file, md) = open_below(root, key)?;
                let meta = meta_of(key, &md);
                if meta.etag != expect_etag {
                    return Err(BackendError::Changed);
                }
                Ok((read_part(file, &meta, range)?, meta))
            })
            .await?;
        Ok(ObjectBody {
            meta,
            body: body.into_stream(),
        })
    }

    /// Open, stat, decide and (for small bodies) read in one blocking call: one thread hop for
    /// most requests, and the body comes from the very file the metadata describes.
    async fn open<F>(&self, key: &str, want: F) -> Result<Opened, BackendError>
    where
        F: FnOnce(&ObjectMeta) -> Want + Send + 'static,
    {
        let (meta, body) = self
            .blocking(key, move |root, key| {
                let (file, md) = open_below(root, key)?;
                let meta = meta_of(key, &md);
                match want(&meta) {
                    Want::Meta => Ok((meta, None)),
                    Want::Body(part) => {
                        let body = read_part(file, &meta, part)?;
                        Ok((meta, Some((body, part))))
                    }
                }
            })
            .await?;
        Ok(match body {
            None => Opened::Meta(meta),
            Some((body, part)) => Opened::Object {
                object: ObjectBody {
                    meta,
                    body: body.into_stream(),
                },
                part,
            },
        })
    }

    async fn ready(&self) -> Result<(), BackendError> {
        let root = Arc::clone(&self.root);
        tokio::task::spawn_blocking(move || std::fs::read_dir(root.as_path()).map(|_| ()))
            .await
            .map_err(|e| BackendError::Io(std::io::Error::other(e)))?
            .map_err(BackendError::Io)
    }
}
