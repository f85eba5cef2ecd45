//! The video's description: ffprobe's format and streams (JSON), checked against the limits
//! (413 for size, duration, resolution, streams, bit rate; 415 for container or codec; 422 for
//! zero-size streams or a broken file), with the frame index attached (`mp4.rs` for MP4/MOV,
//! ffprobe's packet list for the other containers).
//!
//! ffprobe runs on the input opened as every child opens it (the sniffed demuxer forced, the
//! whitelists), within the job time limit, its JSON bounded. The checks, in order: object size,
//! streams count, duration (missing, zero or NaN is 422: a file whose length is unknown cannot
//! be indexed or cut), bit rate, then per stream the codec (415 naming it), the picture size
//! (zero is 422, past the limits 413). Cover art (`attached_pic`) and data streams (timecode,
//! subtitles) are neither checked nor counted as video. The frame index comes last, only when
//! everything else passed, since it may read much of a non-MP4 file.

use std::ffi::OsString;
use std::sync::Arc;

use serde::Deserialize;

use super::fence::{Fence, Tool};
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

/// Bound of ffprobe's JSON (a few KiB for a normal file; tags and many streams grow it).
const MAX_PROBE_JSON_BYTES: usize = 4 << 20;

/// Describe `input`: sniff, ffprobe, the limits, the frame index.
pub async fn probe(
    input: &Input,
    fence: &Fence,
    limits: &VideoLimits,
) -> Result<VideoProbe, VideoError> {
    if input.size() > limits.max_source_bytes {
        return Err(VideoError::TooLarge(format!(
            "the video is larger than the limit of {} bytes",
            limits.max_source_bytes
        )));
    }
    let container = input.sniff(&limits.containers).await?;
    let opened = input.open(container).await?;
    let mut args = opened.args.clone();
    args.extend(["-of", "json", "-show_format", "-show_streams"].map(OsString::from));
    let json = fence
        .run(
            Tool::Ffprobe,
            args,
            limits.job_timeout,
            MAX_PROBE_JSON_BYTES,
        )
        .await?;
    drop(opened);
    let mut probe = describe(container, input.size(), &json, limits)?;
    if probe.video.is_some() {
        let index =
            super::mp4::frame_index(input, fence, container, probe.start_time, limits).await?;
        if index.pts.is_empty() {
            return Err(VideoError::Corrupt("the video stream has no frames".into()));
        }
        probe.frames = Some(Arc::new(index));
    }
    Ok(probe)
}

/// ffprobe's JSON as a [`VideoProbe`] (without frames), checked against `limits`.
pub fn describe(
    container: Container,
    size: u64,
    json: &[u8],
    limits: &VideoLimits,
) -> Result<VideoProbe, VideoError> {
    let raw: Raw = serde_json::from_slice(json)
        .map_err(|_| VideoError::Corrupt("ffprobe's description cannot be read".into()))?;
    let format = raw
        .format
        .ok_or_else(|| VideoError::Corrupt("no container format found".into()))?;
    let too_large = |what: String| Err(VideoError::TooLarge(what));

    if raw.streams.len() > limits.max_streams as usize {
        return too_large(format!(
            "the video has {} streams, more than the limit of {}",
            raw.streams.len(),
            limits.max_streams
        ));
    }
    let duration = number(&format.duration)
        .filter(|d| d.is_finite() && *d > 0.0)
        .ok_or_else(|| VideoError::Corrupt("the video has no duration".into()))?;
    if duration > limits.max_duration.as_secs_f64() {
        return too_large(format!(
            "the video lasts {duration:.0} s, longer than the limit of {} s",
            limits.max_duration.as_secs()
        ));
    }
    let bit_rate = number(&format.bit_rate)
        .filter(|b| b.is_finite() && *b >= 0.0)
        .map(|b| b as u64);
    if let Some(rate) = bit_rate.filter(|r| *r > limits.max_bit_rate) {
        return too_large(format!(
            "the video's bit rate {rate} b/s is over the limit of {} b/s",
            limits.max_bit_rate
        ));
    }

    let mut streams = Vec::with_capacity(raw.streams.len());
    for s in raw.streams {
        let attached_picture = s.disposition.as_ref().is_some_and(|d| d.attached_pic == 1);
        let kind = match s.codec_type.as_deref() {
            Some("video") if !attached_picture => StreamKind::Video,
            Some("audio") => StreamKind::Audio,
            _ => StreamKind::Other,
        };
        let codec = s.codec_name.clone().unwrap_or_default();
        let allowed = match kind {
            StreamKind::Video => &limits.video_codecs,
            StreamKind::Audio => &limits.audio_codecs,
            StreamKind::Other => &Vec::new(),
        };
        if kind != StreamKind::Other && !allowed.iter().any(|c| *c == codec) {
            let what = if kind == StreamKind::Video {
                "video"
            } else {
                "audio"
            };
            let name = if codec.is_empty() {
                "unknown"
            } else {
                codec.as_str()
            };
            return Err(VideoError::Unsupported(format!("{what} codec {name}")));
        }
        let (width, height) = (s.width.filter(|w| *w > 0), s.height.filter(|h| *h > 0));
        if kind == StreamKind::Video {
            let (Some(w), Some(h)) = (width, height) else {
                return Err(VideoError::Corrupt(
                    "a video stream has no picture size".into(),
                ));
            };
            if w > limits.max_width || h > limits.max_height {
                return too_large(format!(
                    "the picture is {w}x{h}, over the limit of {}x{}",
                    limits.max_width, limits.max_height
                ));
            }
            if u64::from(w) * u64::from(h) > limits.max_pixels {
                return too_large(format!(
                    "the picture is {w}x{h}, over the limit of {} pixels",
                    limits.max_pixels
                ));
            }
        }
        streams.push(StreamInfo {
            index: s.index,
            kind,
            codec,
            profile: s.profile.clone(),
            width,
            height,
            rotation: if kind == StreamKind::Video {
                rotation(&s)
            } else {
                0
            },
            frame_rate: rate(&s.avg_frame_rate).or_else(|| rate(&s.r_frame_rate)),
            pix_fmt: s.pix_fmt.clone(),
            bit_rate: number(&s.bit_rate).filter(|b| *b >= 0.0).map(|b| b as u64),
            channels: s.channels,
            sample_rate: number(&s.sample_rate).map(|r| r as u32),
        });
    }
    if !streams.iter().any(|s| s.kind != StreamKind::Other) {
        return Err(VideoError::Corrupt("no video or audio stream".into()));
    }
    let video = streams.iter().position(|s| s.kind == StreamKind::Video);
    let browser_ready = container == Container::Mov
        && video.is_some_and(|v| {
            let v = &streams[v];
            v.codec == "h264" && matches!(v.pix_fmt.as_deref(), Some("yuv420p" | "yuvj420p"))
        })
        && streams
            .iter()
            .filter(|s| s.kind == StreamKind::Audio)
            .all(|s| s.codec == "aac");
    Ok(VideoProbe {
        container,
        format_name: format.format_name.unwrap_or_default(),
        duration,
        start_time: number(&format.start_time)
            .filter(|t| t.is_finite())
            .unwrap_or(0.0),
        bit_rate,
        size,
        streams,
        video,
        frames: None,
        browser_ready,
    })
}

/// The display rotation, clockwise degrees (as the old `rotate` tag): from the display matrix
/// (whose `rotation` is counter-clockwise), else the tag; snapped to a quarter turn.
fn rotation(s: &RawStream) -> i32 {
    let from_matrix = s.side_data_list.iter().flatten().find_map(|d| {
        d.get("rotation")
            .and_then(|r| r.as_f64().or_else(|| r.as_str()?.parse().ok()))
            .map(|r| -r)
    });
    let from_tag = || {
        s.tags
            .as_ref()
            .and_then(|t| t.get("rotate"))
            .and_then(|r| r.as_str()?.trim().parse::<f64>().ok())
    };
    let degrees = from_matrix.or_else(from_tag).unwrap_or(0.0);
    if !degrees.is_finite() {
        return 0;
    }
    ((degrees / 90.0).round() as i64 * 90).rem_euclid(360) as i32
}

/// `num/den` frames per second, if both are positive.
fn rate(value: &Option<String>) -> Option<f64> {
    let (num, den) = value.as_deref()?.split_once('/')?;
    let (num, den): (f64, f64) = (num.parse().ok()?, den.parse().ok()?);
    (num > 0.0 && den > 0.0)
        .then(|| num / den)
        .filter(|r| r.is_finite())
}

/// ffprobe writes most numbers as strings (`"12.000000"`, `"N/A"`).
fn number(value: &Option<String>) -> Option<f64> {
    value
        .as_deref()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    streams: Vec<RawStream>,
    format: Option<RawFormat>,
}

#[derive(Deserialize)]
struct RawFormat {
    format_name: Option<String>,
    duration: Option<String>,
    start_time: Option<String>,
    bit_rate: Option<String>,
}

#[derive(Deserialize)]
struct RawStream {
    index: u32,
    codec_type: Option<String>,
    codec_name: Option<String>,
    profile: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    pix_fmt: Option<String>,
    avg_frame_rate: Option<String>,
    r_frame_rate: Option<String>,
    bit_rate: Option<String>,
    channels: Option<u32>,
    sample_rate: Option<String>,
    disposition: Option<RawDisposition>,
    tags: Option<serde_json::Map<String, serde_json::Value>>,
    side_data_list: Option<Vec<serde_json::Map<String, serde_json::Value>>>,
}

#[derive(Deserialize)]
struct RawDisposition {
    #[serde(default)]
    attached_pic: u8,
}

#[cfg(test)]
mod tests;
