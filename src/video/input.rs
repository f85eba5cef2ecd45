//! What ffmpeg may open, and nothing else: an fs source's resolved file (`file:` + absolute
//! path), or for an S3 source a loopback-only HTTP feed of exactly that object version's bytes
//! (bound to 127.0.0.1:0 for one job, a random per-job credential in its path, ranged reads
//! through the cache, closed when the job ends). The container is sniffed from the first bytes
//! and forced with `-f`; `-format_whitelist` and `-protocol_whitelist` list only what the input
//! needs, so a playlist or concat list disguised as `.mp4` opens nothing else.
//!
//! Skeleton: the fence helper fills this in.

use std::ffi::OsString;
use std::path::PathBuf;

use bytes::Bytes;

use super::{Container, VideoError};
use crate::image::source::ObjectBytes;

/// Where the bytes come from.
pub enum Origin {
    /// An fs source's file, resolved beneath its root.
    File(PathBuf),
    /// Ranged reads of one object version (through the cache when there is one).
    Object(ObjectBytes),
}

/// One version of one object, as ffmpeg's input.
pub struct Input {
    origin: Origin,
    size: u64,
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
        Input { origin, size }
    }

    /// The input for one object version: an fs source's file resolved beneath its root (its
    /// size checked against `bytes`' metadata), else `bytes` itself (ranged reads).
    pub async fn of_object(
        backend: &crate::backend::AnyBackend,
        key: &str,
        bytes: ObjectBytes,
    ) -> Result<Input, VideoError> {
        let _ = backend;
        let _ = key;
        let size = bytes.size();
        Ok(Input::new(Origin::Object(bytes), size))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// `len` bytes at `offset` (clipped at the end), for sniffing and the MP4 index.
    pub async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, VideoError> {
        let _ = (offset, len);
        Err(VideoError::Unavailable("not implemented yet".into()))
    }

    /// The container, from the first bytes (never the name); 415 for anything not allowed.
    pub async fn sniff(&self, allowed: &[Container]) -> Result<Container, VideoError> {
        let _ = allowed;
        Err(VideoError::Unavailable("not implemented yet".into()))
    }

    /// Open for one child: the arguments that name the input (`-protocol_whitelist ...
    /// -format_whitelist ... -f DEMUXER -i URL`), and the feed kept alive while the child runs.
    pub async fn open(&self, container: Container) -> Result<Opened, VideoError> {
        let _ = container;
        Err(VideoError::Unavailable("not implemented yet".into()))
    }
}

/// An input opened for one child; dropping it closes the feed (if any).
pub struct Opened {
    /// `-protocol_whitelist P -format_whitelist F -f D -i URL`: put after any input option
    /// such as `-ss`, before the outputs.
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
