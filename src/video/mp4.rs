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
