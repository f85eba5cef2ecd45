//! HLS VOD: the playlist is computed from the keyframes (a segment ends at the first keyframe at
//! or after each multiple of `segment_secs`, the rule of nginx-vod-module, which matches the
//! EXTINF values ffmpeg's own muxer writes), so it is served before any segment exists; each
//! segment is cut when first asked for (stream copy for H.264/AAC, else transcoded) and cached.
//!
//! Skeleton: the HLS helper fills this in.

use bytes::Bytes;

use super::probe::FrameIndex;
use super::{Job, VideoError};

/// One segment: its frames `[first, end)` and its times.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub first: usize,
    pub end: usize,
    pub start: f64,
    pub duration: f64,
}

/// The segments of a video with this index.
pub fn plan(frames: &FrameIndex, duration: f64, segment_secs: u32) -> Vec<Segment> {
    let _ = (frames, duration, segment_secs);
    Vec::new()
}

/// `index.m3u8`, its segment links made with `job.links`.
pub fn playlist(job: &Job<'_>) -> Result<String, VideoError> {
    let _ = job;
    Err(VideoError::Unavailable("not implemented yet".into()))
}

/// Segment `n` (MPEG-TS); 404 past the last.
pub async fn segment(job: &Job<'_>, n: u32) -> Result<Bytes, VideoError> {
    let _ = (job, n);
    Err(VideoError::Unavailable("not implemented yet".into()))
}
