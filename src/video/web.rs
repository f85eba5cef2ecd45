//! `web.mp4`: a progressive MP4 browsers play and seek: an H.264/AAC source is remuxed with its
//! index in front (`-c copy -movflags +faststart`, no re-encode); anything else is transcoded to
//! H.264 (yuv420p) and AAC. The output is written whole into the rendition store (a directory
//! with a byte budget, least recently used removed first, files renamed into place only when
//! complete), and served from there with Range; a request during the job waits for it.
//!
//! Skeleton: the web helper fills this in.

use std::path::PathBuf;
use std::sync::Arc;

use super::{Job, VideoError};

/// A finished rendition in the store, open (so eviction while it is served is harmless).
#[derive(Debug)]
pub struct Rendition {
    pub file: std::fs::File,
    pub len: u64,
    pub content_type: &'static str,
}

/// The rendition store (one per process, in `video::Work`).
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    budget: u64,
}

impl Store {
    /// A store in `dir` (made, emptied of old entries) holding at most `budget` bytes.
    pub fn new(dir: PathBuf, budget: u64) -> Store {
        Store { dir, budget }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }
}

/// The browser-ready MP4 of `job`'s video, from the store or made now.
/// `entry` names the rendition (object version and `web.mp4`).
pub async fn web_mp4(
    job: &Job<'_>,
    entry: &crate::cache::key::CacheKey,
) -> Result<Arc<Rendition>, VideoError> {
    let _ = (job, entry);
    Err(VideoError::Unavailable("not implemented yet".into()))
}
