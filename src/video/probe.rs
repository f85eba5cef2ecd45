//! The video's description: ffprobe's format and streams (JSON), checked against the limits
//! (413 for size, duration, resolution, streams, bit rate; 415 for container or codec; 422 for
//! zero-size streams or a broken file), with the frame index attached (`mp4.rs` for MP4/MOV,
//! ffprobe's packet list for the other containers).
//!
//! Skeleton: the fence helper fills this in (the frame index: the index helper).

use std::sync::Arc;

use super::fence::Fence;
use super::input::Input;
use super::{Container, VideoError, VideoLimits};

/// What kind of stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Video,
    Audio,
    Other,
}

/// One stream, as ffprobe describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    pub index: u32,
    pub kind: StreamKind,
    pub codec: String,
    pub profile: Option<String>,
    /// Coded size (before rotation).
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Display rotation in degrees (0, 90, 180, 270), from the display matrix.
    pub rotation: i32,
    /// Average frame rate, frames per second.
    pub frame_rate: Option<f64>,
    pub pix_fmt: Option<String>,
    pub bit_rate: Option<u64>,
    pub channels: Option<u32>,
    pub sample_rate: Option<u32>,
}

/// Every frame's presentation time and which frames are keyframes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FrameIndex {
    /// Presentation times in seconds, in presentation order (frame n is `pts[n]`), as ffprobe
    /// reports them (the container's start time included).
    pub pts: Vec<f64>,
    /// The frame numbers of the keyframes, ascending.
    pub keyframes: Vec<usize>,
}

/// What [`probe`] learned of one version of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoProbe {
    pub container: Container,
    /// ffprobe's `format_name` (e.g. `mov,mp4,m4a,3gp,3g2,mj2`).
    pub format_name: String,
    pub duration: f64,
    pub start_time: f64,
    pub bit_rate: Option<u64>,
    pub size: u64,
    pub streams: Vec<StreamInfo>,
    /// The position in `streams` of the first video stream, if any.
    pub video: Option<usize>,
    /// The frame index of the video stream (None without one).
    pub frames: Option<Arc<FrameIndex>>,
    /// Whether browsers play the source as is (MP4 with H.264 and AAC or no audio, yuv420p).
    pub browser_ready: bool,
}

/// Describe `input`: sniff, ffprobe, the limits, the frame index.
pub async fn probe(
    input: &Input,
    fence: &Fence,
    limits: &VideoLimits,
) -> Result<VideoProbe, VideoError> {
    let _ = (input, fence, limits);
    Err(VideoError::Unavailable("not implemented yet".into()))
}
