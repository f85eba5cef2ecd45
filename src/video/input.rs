//! What ffmpeg may open, and nothing else: an fs source's resolved file (`file:` + absolute
//! path), or for an S3 source a loopback-only HTTP feed of exactly that object version's bytes
//! (bound to 127.0.0.1:0 for one job, a random per-job credential in its path, ranged reads
//! through the cache, closed when the job ends). The container is sniffed from the first bytes
//! and forced with `-f`; `-format_whitelist` and `-protocol_whitelist` list only what the input
//! needs, so a playlist or concat list disguised as `.mp4` opens nothing else.
//!
//! Keys are never arguments. A file is named by its CANONICAL path (the file the fs source's
//! checks resolved, below the root), prefixed with `file:` so that no leading `-`, `|`, `:` or a
//! protocol-looking prefix (`concat:`, `http:`, `file:`) is parsed as anything but a path; a
//! path holding a control character (a newline ends an ffmpeg option line in some places) is
//! refused. An object is named by `http://127.0.0.1:PORT/<32 hex>`, the key appears nowhere.
//!
//! Sniffing (magic bytes only, never the name or the store's content type):
//! - ISO BMFF (MP4, MOV, 3GP): a box type `ftyp`, `moov`, `mdat`, `free`, `skip` or `wide` at
//!   bytes 4..8 -> [`Container::Mov`];
//! - EBML `1A 45 DF A3` -> [`Container::Matroska`] (WebM too);
//! - `RIFF....AVI ` -> [`Container::Avi`];
//! - MPEG-TS: the sync byte 0x47 at 0, 188 and 376, or M2TS (AVCHD cameras' `.MTS`: 192-byte
//!   packets with a 4-byte timestamp first) at 4, 196 and 388 -> [`Container::Mpegts`] (ffmpeg's
//!   `mpegts` demuxer reads both packet sizes).

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::{Container, VideoError};
use crate::image::source::ObjectBytes;

/// The loopback feed answers ranges in pieces (each one ranged read of the object), so it never
/// holds more than one piece per connection: the first piece of a response is
/// [`FEED_FIRST_CHUNK_BYTES`], each next one twice the last, up to [`FEED_CHUNK_BYTES`]. ffmpeg
/// often reads a little and then seeks (a new request): small first pieces keep the bytes read
/// and thrown away small, doubling keeps a long sequential read (a remux) at few requests.
pub const FEED_CHUNK_BYTES: u64 = 1 << 20;
pub const FEED_FIRST_CHUNK_BYTES: u64 = 64 << 10;
/// Bytes of one response sent before the feed reads ahead: FEED_READ_AHEAD_PIECES pieces of
/// FEED_READ_AHEAD_PIECE_BYTES in flight at once (at most 16 MiB held per connection).
pub const FEED_READ_AHEAD_AFTER_BYTES: u64 = 4 << 20;
pub const FEED_READ_AHEAD_PIECE_BYTES: u64 = 4 << 20;
pub const FEED_READ_AHEAD_PIECES: usize = 4;
/// The feed's socket send buffer (the kernel doubles it): how far ahead of the child it runs.
const FEED_SOCKET_BUFFER_BYTES: usize = 64 << 10;
/// Bytes read from the start for the sniff.
const SNIFF_BYTES: u64 = 4096;

/// Where the bytes come from.
#[allow(clippy::large_enum_variant)] // one per job, inside an Arc: boxing buys nothing
pub enum Origin {
    /// An fs source's file, resolved beneath its root.
    File(PathBuf),
    /// Ranged reads of one object version (through the cache when there is one).
    Object(ObjectBytes),
}

/// One version of one object, as ffmpeg's input.
pub struct Input {
    /// Shared with the loopback feed's task while a child reads it.
    origin: Arc<Origin>,
    size: u64,
    /// The file, opened on the first [`Input::read_at`].
    file: OnceLock<Arc<std::fs::File>>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Input {
    pub fn new(origin: Origin, size: u64) -> Input {
        Input {
            origin: Arc::new(origin),
            size,
            file: OnceLock::new(),
        }
    }

    /// The input for one object version: an fs source's file resolved beneath its root (its
    /// size checked against `bytes`' metadata), else `bytes` itself (ranged reads).
    pub async fn of_object(
        backend: &crate::backend::AnyBackend,
        key: &str,
        bytes: ObjectBytes,
    ) -> Result<Input, VideoError> {
        let Some(fs) = backend.as_fs() else {
            let size = bytes.size();
            return Ok(Input::new(Origin::Object(bytes), size));
        };
        let (path, meta) = fs.local_path(key).await?;
        let expected = bytes.meta();
        // The version the request was planned on must be the file ffmpeg will read.
        let same_version = match (&meta.etag, &expected.etag) {
            (Some(now), Some(then)) => now == then,
            _ => true,
        };
        if meta.size != expected.size || !same_version {
            return Err(crate::backend::BackendError::Changed.into());
        }
        check_path(&path)?;
        Ok(Input::new(Origin::File(path), meta.size))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// `len` bytes at `offset` (clipped at the end), for sniffing and the MP4 index.
    pub async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, VideoError> {
        if offset >= self.size || len == 0 {
            return Ok(Bytes::new());
        }
        let len = len.min(self.size - offset);
        match &*self.origin {
            Origin::Object(bytes) => Ok(bytes.read_at(offset, len).await?),
            Origin::File(path) => {
                let file = match self.file.get() {
                    Some(file) => Arc::clone(file),
                    None => {
                        let path = path.clone();
                        let opened = blocking(move || std::fs::File::open(path)).await?;
                        Arc::clone(self.file.get_or_init(|| Arc::new(opened)))
                    }
                };
                blocking(move || pread(&file, offset, len)).await
            }
        }
    }

    /// The container, from the first bytes (never the name); 415 for anything not allowed.
    pub async fn sniff(&self, allowed: &[Container]) -> Result<Container, VideoError> {
        let head = self.read_at(0, SNIFF_BYTES).await?;
        let container = sniff_bytes(&head)
            .ok_or_else(|| VideoError::Unsupported("not a video container we accept".into()))?;
        if !allowed.contains(&container) {
            return Err(VideoError::Unsupported(format!(
                "container {} is not accepted here",
                container.name()
            )));
        }
        Ok(container)
    }

    /// Open for one child: the arguments that name the input (`-protocol_whitelist ...
    /// -format_whitelist ... -f DEMUXER -i URL`), and the feed kept alive while the child runs.
    pub async fn open(&self, container: Container) -> Result<Opened, VideoError> {
        let demuxer = container.demuxer();
        match &*self.origin {
            Origin::File(path) => {
                check_path(path)?;
                let mut url = OsString::from("file:");
                url.push(path.as_os_str());
                Ok(Opened {
                    args: input_args("file", demuxer, url),
                    feed: None,
                })
            }
            Origin::Object(_) => {
                let (url, feed) = feed::start(Arc::clone(&self.origin)).await?;
                // The child's receive buffer fixed small (no autotuning to megabytes): with the
                // feed's small send buffer, the object is read about as far as ffmpeg reads it.
                let mut args: Vec<OsString> = vec![
                    "-recv_buffer_size".into(),
                    FEED_SOCKET_BUFFER_BYTES.to_string().into(),
                ];
                args.extend(input_args("http,tcp", demuxer, url.into()));
                Ok(Opened {
                    args,
                    feed: Some(feed),
                })
            }
        }
    }
}

fn input_args(protocols: &str, demuxer: &str, url: OsString) -> Vec<OsString> {
    vec![
        "-protocol_whitelist".into(),
        protocols.into(),
        "-format_whitelist".into(),
        demuxer.into(),
        "-f".into(),
        demuxer.into(),
        "-i".into(),
        url,
    ]
}

/// A path ffmpeg can be given: absolute, valid UTF-8 (ffmpeg's own strings), no control
/// characters.
fn check_path(path: &std::path::Path) -> Result<(), VideoError> {
    let ok = path.is_absolute()
        && path
            .to_str()
            .is_some_and(|s| !s.chars().any(char::is_control));
    if ok {
        Ok(())
    } else {
        Err(VideoError::BadParameter {
            param: "key",
            why: "names a file that cannot be handed to the video tools".into(),
        })
    }
}

/// The container named by `head`'s magic bytes, if it is one we know.
pub fn sniff_bytes(head: &[u8]) -> Option<Container> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if head.len() >= 8 {
        let kind = &head[4..8];
        if [b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide"]
            .iter()
            .any(|k| kind == *k)
        {
            return Some(Container::Mov);
        }
    }
    if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
        return Some(Container::Matroska);
    }
    if at(0, b"RIFF") && at(8, b"AVI ") {
        return Some(Container::Avi);
    }
    let synced =
        |first: usize, step: usize| (0..3).all(|i| head.get(first + i * step) == Some(&0x47));
    if synced(0, 188) || synced(4, 192) {
        return Some(Container::Mpegts);
    }
    None
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, VideoError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VideoError::Unavailable(format!("blocking read failed: {e}")))?
        .map_err(|e| crate::backend::BackendError::Io(e).into())
}

fn pread(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(Bytes::from(buf))
}

/// An input opened for one child; dropping it closes the feed (if any).
pub struct Opened {
    /// `-protocol_whitelist P -format_whitelist F -f D -i URL` (the feed's prefixed with
    /// `-recv_buffer_size N`): put after any input option such as `-ss`, before the outputs.
    pub args: Vec<OsString>,
    /// The loopback feed's task, aborted on drop (None for a file).
    pub feed: Option<tokio::task::AbortHandle>,
}

impl Drop for Opened {
    fn drop(&mut self) {
        if let Some(feed) = &self.feed {
            feed.abort();
        }
    }
}

/// The loopback feed: one HTTP/1.1 server per opened input, on 127.0.0.1:0, answering only
/// `GET /<credential>` (with or without a Range) from the object's ranged reads.
mod feed {
    use std::convert::Infallible;
    use std::sync::Arc;

    use bytes::Bytes;
    use http::{Request, Response, StatusCode, header};
    use http_body_util::{BodyExt, Empty, StreamBody, combinators::UnsyncBoxBody};
    use hyper::body::{Frame, Incoming};
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;
    use tokio::task::JoinSet;

    use futures_util::StreamExt;

    use super::{
        FEED_CHUNK_BYTES, FEED_FIRST_CHUNK_BYTES, FEED_READ_AHEAD_AFTER_BYTES,
        FEED_READ_AHEAD_PIECE_BYTES, FEED_READ_AHEAD_PIECES, FEED_SOCKET_BUFFER_BYTES, Origin,
    };
    use crate::video::VideoError;

    type Body = UnsyncBoxBody<Bytes, std::io::Error>;

    /// Bind, spawn the server; its URL and the handle that stops it (and every connection).
    pub(super) async fn start(
        origin: Arc<Origin>,
    ) -> Result<(String, tokio::task::AbortHandle), VideoError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| VideoError::Unavailable(format!("cannot open the video feed: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| VideoError::Unavailable(format!("cannot open the video feed: {e}")))?
            .port();
        let credential = credential()?;
        let url = format!("http://127.0.0.1:{port}/{credential}");
        let path: Arc<str> = format!("/{credential}").into();
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the server drops them all.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _peer)) = accepted else { continue };
                        // A small send buffer: the feed reads the object only as fast as the
                        // child consumes it, not megabytes ahead into the kernel's buffers.
                        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(FEED_SOCKET_BUFFER_BYTES);
                        let origin = Arc::clone(&origin);
                        let path = Arc::clone(&path);
                        let service = hyper::service::service_fn(move |req| {
                            let origin = Arc::clone(&origin);
                            let path = Arc::clone(&path);
                            async move { Ok::<_, Infallible>(answer(&req, &path, origin)) }
                        });
                        connections.spawn(async move {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .keep_alive(true)
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok((url, task.abort_handle()))
    }

    fn credential() -> Result<String, VideoError> {
        let mut bytes = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| VideoError::Unavailable("no randomness for the video feed".into()))?;
        Ok(hex::encode(bytes))
    }

    fn empty(status: StatusCode) -> Response<Body> {
        let mut response = Response::new(Empty::new().map_err(|e| match e {}).boxed_unsync());
        *response.status_mut() = status;
        response
    }

    fn answer(req: &Request<Incoming>, path: &str, origin: Arc<Origin>) -> Response<Body> {
        if req.method() != http::Method::GET || req.uri().path() != path {
            return empty(StatusCode::NOT_FOUND);
        }
        let Origin::Object(bytes) = &*origin else {
            return empty(StatusCode::NOT_FOUND);
        };
        let size = bytes.size();
        let range = req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(|v| parse_range(v, size));
        let (status, start, end) = match range {
            None => (StatusCode::OK, 0, size),
            Some(Some((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end),
            Some(None) => {
                let mut response = empty(StatusCode::RANGE_NOT_SATISFIABLE);
                if let Ok(v) = http::HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return response;
            }
        };
        // One piece at a time, read when hyper asks for it (the socket has room), growing;
        // past FEED_READ_AHEAD_AFTER_BYTES the child is plainly reading on (a remux, a long
        // segment) and the rest goes in larger pieces, several read ahead at once, so the store's
        // per-request latency does not add up over a whole file.
        let ramp_end = end.min(start.saturating_add(FEED_READ_AHEAD_AFTER_BYTES));
        let read = move |origin: Arc<Origin>, offset: u64, len: u64| async move {
            let Origin::Object(bytes) = &*origin else {
                return Err(std::io::Error::other("not an object"));
            };
            match bytes.read_at(offset, len).await {
                Ok(data) if data.len() as u64 == len => Ok(Frame::data(data)),
                Ok(_) => Err(std::io::Error::other("short read")),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            }
        };
        let ramp_origin = Arc::clone(&origin);
        let ramp = futures_util::stream::unfold(
            (start, FEED_FIRST_CHUNK_BYTES),
            move |(offset, piece)| {
                let origin = Arc::clone(&ramp_origin);
                async move {
                    if offset >= ramp_end {
                        return None;
                    }
                    let len = (ramp_end - offset).min(piece);
                    let next = (piece * 2).min(FEED_CHUNK_BYTES);
                    match read(origin, offset, len).await {
                        Ok(frame) => Some((Ok(frame), (offset + len, next))),
                        Err(e) => Some((Err(e), (ramp_end, next))),
                    }
                }
            },
        );
        let ahead = futures_util::stream::iter(
            (ramp_end..end)
                .step_by(FEED_READ_AHEAD_PIECE_BYTES as usize)
                .map(move |offset| (offset, (end - offset).min(FEED_READ_AHEAD_PIECE_BYTES))),
        )
        .map(move |(offset, len)| read(Arc::clone(&origin), offset, len))
        .buffered(FEED_READ_AHEAD_PIECES);
        // The first error ends the body: nothing after it is sent.
        let pieces = ramp.chain(ahead).scan(false, |failed, item| {
            let out = if *failed {
                None
            } else {
                *failed = item.is_err();
                Some(item)
            };
            std::future::ready(out)
        });
        // An error ends the stream (the next state is the end): hyper aborts the connection
        // short of Content-Length, so ffmpeg sees a truncated body, never a complete one.
        let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(pieces)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::ACCEPT_RANGES,
            http::HeaderValue::from_static("bytes"),
        );
        headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from(end - start));
        if status == StatusCode::PARTIAL_CONTENT {
            let value = format!("bytes {start}-{}/{size}", end - 1);
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                headers.insert(header::CONTENT_RANGE, v);
            }
        }
        response
    }

    /// `bytes=N-` or `bytes=N-M` as a half-open span within `size`; None when unsatisfiable or
    /// not one of those forms.
    pub(super) fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
        let spec = value.trim().strip_prefix("bytes=")?;
        let (first, last) = spec.split_once('-')?;
        let start: u64 = first.trim().parse().ok()?;
        if start >= size {
            return None;
        }
        let end = match last.trim() {
            "" => size,
            last => last.parse::<u64>().ok()?.checked_add(1)?.min(size),
        };
        (end > start).then_some((start, end))
    }
}

#[cfg(test)]
mod tests;
