//! Scrubbing previews: `sprite.jpg`, a grid of small thumbnails taken at even times (each from
//! the keyframe nearest its time, so the whole video is not decoded), and `sprite.vtt`, a WebVTT
//! thumbnail track whose cues name each cell (`sprite.jpg#xywh=x,y,w,h`).
//!
//! Skeleton: the web helper fills this in.

use bytes::Bytes;

use super::{Job, VideoError};

/// The grid.
pub async fn sprite(job: &Job<'_>) -> Result<Bytes, VideoError> {
    let _ = job;
    Err(VideoError::Unavailable("not implemented yet".into()))
}

/// The WebVTT track (links made with `job.links`).
pub fn vtt(job: &Job<'_>) -> Result<String, VideoError> {
    let _ = job;
    Err(VideoError::Unavailable("not implemented yet".into()))
}
