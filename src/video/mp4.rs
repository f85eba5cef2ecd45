//! The MP4/MOV index, read with ranged reads and never the media data: the top-level boxes are
//! walked by their headers (`mdat` skipped, `moov` at the start or the end), `moov` is read
//! whole (bounded), and the video track's `mdhd`, `stts`, `ctts`, `stss` and edit list give
//! every frame's presentation time and the keyframes, as nginx-vod-module does.
//!
//! Skeleton: the index helper fills this in.

use super::VideoError;
use super::input::Input;
use super::probe::FrameIndex;

/// The frame index of the first video track of an MP4/MOV `input`; `start_time` is the
/// format's (ffprobe's) start time, which the returned times include.
pub async fn index(input: &Input, start_time: f64) -> Result<FrameIndex, VideoError> {
    let _ = (input, start_time);
    Err(VideoError::Unavailable("not implemented yet".into()))
}

/// The frame index of `input`'s first video stream, for any allowed container: [`index`] for
/// MP4/MOV (the index boxes, by ranged reads), else ffprobe's packet list (which reads the
/// whole file, bounded by the limits and the job's time).
pub async fn frame_index(
    input: &Input,
    fence: &super::fence::Fence,
    container: super::Container,
    start_time: f64,
    limits: &super::VideoLimits,
) -> Result<FrameIndex, VideoError> {
    let _ = (fence, container, limits);
    index(input, start_time).await
}
