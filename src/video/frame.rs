//! Posters and exact frames. Frame n is decoded with an accurate input seek (`-ss`) to halfway
//! between the presentation times of frames n-1 and n, then `-frames:v 1`: the same pixels as
//! `select=eq(n\,N)` without decoding from the start. A poster at `t` is the frame shown at `t`
//! (the last frame whose time is at or before it), clamped to the last frame.
//!
//! Skeleton: the index helper fills this in.

use bytes::Bytes;

use super::request::FrameFormat;
use super::{Job, VideoError};

/// The frame shown at `t_ms`, as JPEG, `width` wide when asked (never upscaled).
pub async fn poster(job: &Job<'_>, t_ms: u64, width: Option<u32>) -> Result<Bytes, VideoError> {
    let _ = (job, t_ms, width);
    Err(VideoError::Unavailable("not implemented yet".into()))
}

/// Exactly frame `n` (0-based, presentation order); 404 past the last frame.
pub async fn frame(
    job: &Job<'_>,
    n: u64,
    width: Option<u32>,
    format: FrameFormat,
) -> Result<Bytes, VideoError> {
    let _ = (job, n, width, format);
    Err(VideoError::Unavailable("not implemented yet".into()))
}
