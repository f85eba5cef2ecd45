//! Derived video (stage 8 of DESIGN.md for video): `info.json`, posters, exact frames, a
//! browser-ready MP4, HLS on demand, and a thumbnail sprite with its WebVTT track, made by
//! Debian's `ffmpeg` and `ffprobe` run as fenced child processes.
//!
//! This module sits below the pipeline (it imports `backend`, `cache`, `config` and `image`'s
//! ranged reader, never `pipeline`): the pipeline parses and authorizes a `/v/` request, then asks
//! this module to describe the video or make one rendition. The parts:
//!
//! | file | what |
//! |---|---|
//! | `request.rs` | the `/v/{source}/{key}/...` tail and its query (`t`, `w`): parse, normalize ([`VideoRequest`]) |
//! | `info.rs` | `info.json` from the probe: container, streams, frame count, keyframe times, browser readiness, the renditions' links |
//! | `fence.rs` | the child processes: resolved tool paths, `-nostdin`, a time limit, `kill_on_drop`, stderr captured and never sent, a concurrency limit with a queue bound, temp dirs removed on every path, children counted |
//! | `input.rs` | what ffmpeg may open: an fs source's resolved file, or for S3 a loopback-only feed of exactly that object's bytes (per-job random credential, ranged reads through the cache); the container sniffed from magic bytes and forced (`-f`), `-format_whitelist`, `-protocol_whitelist` |
//! | `probe.rs` | ffprobe's streams and format, checked against the limits (413/415/422); the frame index attached |
//! | `mp4.rs` | the MP4/MOV index read with ranged reads (moov at the start or the end): every frame's presentation time (stts, ctts, edit list) and the keyframes (stss), never the media data |
//! | `frame.rs` | posters (`t`) and exact frames (`n`): `-ss` halfway between frame n-1 and n |
//! | `hls.rs` | the HLS VOD playlist from the keyframes (segments of about `segment_secs`), each segment cut when first asked |
//! | `web.rs` | `web.mp4`: remux (H.264/AAC, index in front) or transcode to H.264/AAC, written whole to the rendition store and served from there with Range |
//! | `sprite.rs` | `sprite.jpg` (a grid of thumbnails) and `sprite.vtt` (the WebVTT track naming each cell) |
//!
//! Flow of one request: the pipeline builds an [`input::Input`] for the object version,
//! [`probe::probe`] describes it once (remembered per version in [`Work`]), then the request's
//! function makes its [`Output`]; identical concurrent requests share one job.

pub mod fence;
pub mod frame;
pub mod hls;
pub mod info;
pub mod input;
pub mod mp4;
pub mod probe;
pub mod request;
pub mod sprite;
#[cfg(test)]
mod testutil;
pub mod web;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use request::VideoRequest;

/// The containers ffmpeg may demux (the `-f` it is given, chosen by sniffing the first bytes,
/// never from the key's name). Anything else is 415.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Container {
    /// ISO BMFF: MP4, MOV, M4V, 3GP (`-f mov`).
    Mov,
    /// Matroska and WebM (`-f matroska`).
    Matroska,
    /// AVI (`-f avi`).
    Avi,
    /// MPEG transport stream (`-f mpegts`).
    Mpegts,
}

impl Container {
    /// ffmpeg's demuxer name.
    pub fn demuxer(self) -> &'static str {
        match self {
            Container::Mov => "mov",
            Container::Matroska => "matroska",
            Container::Avi => "avi",
            Container::Mpegts => "mpegts",
        }
    }

    /// The name used in `[video] containers` and `info.json`.
    pub fn name(self) -> &'static str {
        match self {
            Container::Mov => "mov",
            Container::Matroska => "matroska",
            Container::Avi => "avi",
            Container::Mpegts => "mpegts",
        }
    }

    pub fn from_name(name: &str) -> Option<Container> {
        [
            Container::Mov,
            Container::Matroska,
            Container::Avi,
            Container::Mpegts,
        ]
        .into_iter()
        .find(|c| c.name() == name)
    }
}

/// The limits and settings of `[video]` that apply to one job (on reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoLimits {
    /// Longest source accepted (413 past it).
    pub max_duration: Duration,
    /// Largest coded picture accepted, each side, and in pixels (413 past them).
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
    /// Most streams a source may hold (413 past it).
    pub max_streams: u32,
    /// Highest overall bit rate, bits per second (413 past it).
    pub max_bit_rate: u64,
    /// Largest object size (413 past it).
    pub max_source_bytes: u64,
    /// Containers and codecs accepted (415 otherwise): ffprobe's `codec_name`s.
    pub containers: Vec<Container>,
    pub video_codecs: Vec<String>,
    pub audio_codecs: Vec<String>,
    /// Time limit of a short job (probe, poster, frame, segment, sprite).
    pub job_timeout: Duration,
    /// Time limit of a whole-file job (web.mp4 remux or transcode).
    pub transcode_timeout: Duration,
    /// x264 `-preset` and `-crf` of transcodes; longest output side of a transcode.
    pub preset: String,
    pub crf: u8,
    pub max_output_side: u32,
    /// Target HLS segment length (segments end on the first keyframe at or after each multiple).
    pub segment_secs: u32,
    /// Widest poster / frame / sprite cell asked with `w`.
    pub max_output_width: u32,
}

impl VideoLimits {
    /// The limits `[video]` sets (validated: every container name is known).
    pub fn from_config(c: &crate::config::VideoConfig) -> VideoLimits {
        VideoLimits {
            max_duration: c.max_duration,
            max_width: c.max_width,
            max_height: c.max_height,
            max_pixels: c.max_pixels,
            max_streams: c.max_streams,
            max_bit_rate: c.max_bit_rate,
            max_source_bytes: c.max_source_bytes,
            containers: c
                .containers
                .iter()
                .filter_map(|n| Container::from_name(n))
                .collect(),
            video_codecs: c.video_codecs.clone(),
            audio_codecs: c.audio_codecs.clone(),
            job_timeout: c.job_timeout,
            transcode_timeout: c.transcode_timeout,
            preset: c.preset.clone(),
            crf: c.crf,
            max_output_side: c.max_output_side,
            segment_secs: c.segment_secs,
            max_output_width: c.max_output_width,
        }
    }
}

impl Default for VideoLimits {
    /// The limits of an absent `[video]` table (one place holds the defaults: `VideoConfig`).
    fn default() -> VideoLimits {
        VideoLimits::from_config(&crate::config::VideoConfig::default())
    }
}

/// Why a video could not be described or rendered. The pipeline maps each to its status in
/// `pipeline/error.rs`; messages are short and never quote ffmpeg's stderr or the file.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VideoError {
    /// A path or query parameter is malformed (400), naming which.
    #[error("invalid {param}: {why}")]
    BadParameter { param: &'static str, why: String },
    /// The request asks for something the video does not have (404): a frame or segment past
    /// the end, a frame of a video without a video stream.
    #[error("{0}")]
    NoSuchPart(String),
    /// The source exceeds a limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// Not an allowed container or codec (415).
    #[error("unsupported video: {0}")]
    Unsupported(String),
    /// Broken input: truncated, no index, zero-size streams, ffmpeg failed on it (422).
    #[error("video cannot be processed: {0}")]
    Corrupt(String),
    /// The job queue is full (503 + Retry-After).
    #[error("video workers are busy")]
    Busy,
    /// The job ran past its time limit (503).
    #[error("video job timed out")]
    TimedOut,
    /// ffmpeg or ffprobe is not installed (or `[video]` is off): 503 saying so.
    #[error("{0}")]
    Unavailable(String),
    /// Reading the object failed (the backend's status: 404, 403, 502, 504).
    #[error(transparent)]
    Source(Arc<crate::backend::BackendError>),
}

impl crate::image::ShareError for VideoError {
    fn share(&self) -> VideoError {
        self.clone()
    }
}

impl From<crate::backend::BackendError> for VideoError {
    fn from(e: crate::backend::BackendError) -> VideoError {
        VideoError::Source(Arc::new(e))
    }
}

impl From<crate::image::ImageError> for VideoError {
    /// The ranged reader's errors (it is shared with images).
    fn from(e: crate::image::ImageError) -> VideoError {
        use crate::image::ImageError as I;
        match e {
            I::Source(b) => VideoError::Source(Arc::new(b)),
            I::TooLarge(s) => VideoError::TooLarge(s),
            I::TimedOut => VideoError::TimedOut,
            I::Busy => VideoError::Busy,
            other => VideoError::Corrupt(other.to_string()),
        }
    }
}

/// What one request's function made.
#[derive(Debug, Clone)]
pub enum Output {
    /// A small body (a poster, a frame, a segment, the sprite): stored whole in the cache.
    Bytes {
        body: Bytes,
        content_type: &'static str,
    },
    /// A text made for this request (`info.json`, a playlist, the VTT track: they carry the
    /// request's own links), never stored.
    Text {
        body: String,
        content_type: &'static str,
    },
    /// A whole-file rendition (`web.mp4`) in the rendition store, served with Range.
    File(Arc<web::Rendition>),
}

/// How a body links to the other renditions of the same video: the route's path prefix
/// (`/v/{source}/{key-encoded}/`, the key's `/` as `%2F`) and the request's `token=...` query,
/// if it had one, appended to each link (a browser's `<video>`, hls.js and a VTT track send no
/// header of their own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    pub base: String,
    pub query: Option<String>,
}

impl Links {
    /// The link to `tail` (e.g. `hls/3.ts`), with the token query when there is one.
    pub fn to(&self, tail: &str) -> String {
        match &self.query {
            Some(q) => format!("{}{tail}?{q}", self.base),
            None => format!("{}{tail}", self.base),
        }
    }
}

/// What a rendition function works with.
pub struct Job<'a> {
    pub input: &'a input::Input,
    pub probe: &'a probe::VideoProbe,
    pub limits: &'a VideoLimits,
    pub work: &'a Work,
    pub links: &'a Links,
}

/// The tools found at start (`[video] ffmpeg`, `ffprobe`: a path, or a name looked up in PATH).
#[derive(Debug, Clone)]
pub struct Tools {
    pub ffmpeg: Result<PathBuf, String>,
    pub ffprobe: Result<PathBuf, String>,
}

impl Tools {
    /// Resolve both names now (a missing tool is a reason, not a failed start).
    pub fn find(ffmpeg: &str, ffprobe: &str) -> Tools {
        Tools {
            ffmpeg: fence::resolve_tool(ffmpeg),
            ffprobe: fence::resolve_tool(ffprobe),
        }
    }

    /// Why the video routes cannot work, if they cannot (for the 503 and `/readyz`).
    pub fn unavailable(&self) -> Option<String> {
        match (&self.ffmpeg, &self.ffprobe) {
            (Ok(_), Ok(_)) => None,
            (Err(e), _) | (_, Err(e)) => Some(e.clone()),
        }
    }
}

/// The process's video machinery, built once at start from `[video]` and held in
/// `state::Shared`: the fence (tools, children, queue), the probes of recent object versions,
/// the jobs in flight (each run once), and the rendition store.
pub struct Work {
    pub fence: fence::Fence,
    pub store: web::Store,
    probes: std::sync::Mutex<lru::LruCache<crate::cache::key::CacheKey, Arc<probe::VideoProbe>>>,
    pub probing:
        crate::image::Flights<crate::cache::key::CacheKey, Arc<probe::VideoProbe>, VideoError>,
    pub making: crate::image::Flights<crate::cache::key::CacheKey, Output, VideoError>,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work").finish_non_exhaustive()
    }
}

impl Work {
    pub fn new(fence: fence::Fence, store: web::Store, probes: usize) -> Work {
        Work {
            fence,
            store,
            probes: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(probes).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            probing: crate::image::Flights::default(),
            making: crate::image::Flights::default(),
        }
    }

    /// The remembered probe of `key` (an object version), if any.
    pub fn probe_of(&self, key: &crate::cache::key::CacheKey) -> Option<Arc<probe::VideoProbe>> {
        self.probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    pub fn remember_probe(&self, key: crate::cache::key::CacheKey, probe: Arc<probe::VideoProbe>) {
        self.probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(key, probe);
    }
}
