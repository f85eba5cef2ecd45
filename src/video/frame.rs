//! Posters and exact frames. Frame n is decoded with an accurate input seek (`-ss`) to halfway
//! between the presentation times of frames n-1 and n, then `-frames:v 1`: the same pixels as
//! `select=eq(n\,N)` without decoding from the start. A poster at `t` is the frame shown at `t`
//! (the last frame whose time is at or before it), clamped to the last frame.
//!
//! The seek time is the index's time minus the format's start time: ffmpeg adds the start time
//! to an input `-ss` itself. Frame 0 needs no seek.
//!
//! MPEG-TS is different: ffmpeg's accurate seek in a transport stream lands by timestamp on
//! any packet, not on a keyframe, and the decoder then shows nothing until the next keyframe,
//! so the frame comes out up to a GOP late (measured here: frames 49, 137, 224 of the 12 s
//! sample). For TS the seek goes to a second before the keyframe at or before n (a fast seek:
//! `-noaccurate_seek`), the timestamps are kept (`-copyts`), and `select=gte(t\,T)` with T the
//! same midpoint picks the frame by its own time: exact, at the cost of decoding at most one
//! GOP and a second, with no remux of the whole file.
//!
//! JPEG is `-qmin 1 -q:v 1` (the mjpeg encoder's floor is 2 unless `-qmin` lowers it): measured
//! on the 640x360 sample against the `select` reference decoded to RGB, `-q:v 2` gave
//! 44.3-45.3 dB, `-q:v 1` 48 dB for 28% more bytes (34 KB); full-chroma `yuvj444p` was worse
//! (30 dB: a different chroma path than the reference's). A scaled JPEG is scaled to RGB first,
//! as the reference's scale is (then encoded 4:4:4): scaled as 4:2:0 it measured 30 dB, as RGB
//! 48.5 dB (21 KB at 320x180). PNG is pixel-equal.
//!
//! Rotation: ffmpeg rotates by the display matrix before our filters (as the reference does);
//! `w` is the displayed width. A `w` at or above it is the frame unscaled (never upscaled); a
//! `w` above `max_output_width` is 400.

use std::ffi::OsString;

use bytes::Bytes;

use super::fence::Tool;
use super::probe::FrameIndex;
use super::request::FrameFormat;
use super::{Container, Job, VideoError};

/// How far before the keyframe a TS seek goes (more than any decode delay: dts is what the
/// demuxer seeks by, and it trails pts by the reorder depth).
const TS_SEEK_MARGIN_SECS: f64 = 1.0;

/// The frame shown at `t_ms`, as JPEG, `width` wide when asked (never upscaled).
pub async fn poster(job: &Job<'_>, t_ms: u64, width: Option<u32>) -> Result<Bytes, VideoError> {
    let index = frames(job)?;
    let n = shown_at(index, t_ms as f64 / 1000.0 + job.probe.start_time);
    frame(job, n as u64, width, FrameFormat::Jpg).await
}

/// The frame number shown at `t` seconds (the index's clock): the last frame whose time is at
/// or before it, frame 0 before the first, the last frame after the end.
pub fn shown_at(index: &FrameIndex, t: f64) -> usize {
    index.pts.partition_point(|p| *p <= t).saturating_sub(1)
}

/// Exactly frame `n` (0-based, presentation order); 404 past the last frame.
pub async fn frame(
    job: &Job<'_>,
    n: u64,
    width: Option<u32>,
    format: FrameFormat,
) -> Result<Bytes, VideoError> {
    let index = frames(job)?;
    let count = index.pts.len();
    let n = usize::try_from(n)
        .ok()
        .filter(|n| *n < count)
        .ok_or_else(|| {
            VideoError::NoSuchPart(format!(
                "no frame {n}: the video has {count} frames (0 to {})",
                count.saturating_sub(1)
            ))
        })?;
    let (display_w, display_h) = display_size(job)?;
    let scale_to = output_width(width, display_w, job.limits.max_output_width)?;
    let (out_w, out_h) = match scale_to {
        Some(w) => (
            u64::from(w),
            (u64::from(display_h) * u64::from(w) / u64::from(display_w.max(1))).max(2) + 2,
        ),
        None => (u64::from(display_w), u64::from(display_h)),
    };
    // Raw RGB plus room: a PNG of noise is at most a little larger than its pixels.
    let bound = usize::try_from(out_w * out_h * 4 + (1 << 20)).unwrap_or(usize::MAX);

    let plan = seek_plan(index, n, job.probe.start_time, job.probe.container);
    let opened = job.input.open(job.probe.container).await?;
    let mut args: Vec<OsString> = Vec::new();
    if plan.fast_seek {
        args.push("-noaccurate_seek".into());
    }
    if let Some(ss) = plan.seek {
        args.push("-ss".into());
        args.push(format!("{ss:.6}").into());
    }
    args.extend(opened.args.iter().cloned());
    args.extend(["-map", "0:v:0", "-an", "-sn", "-dn"].map(OsString::from));
    let mut filters: Vec<String> = Vec::new();
    if let Some(t) = plan.select_from {
        args.push("-copyts".into());
        filters.push(format!("select=gte(t\\,{t:.6})"));
    }
    if let Some(w) = scale_to {
        filters.push(format!("scale={w}:-2:flags=bicubic"));
        if format == FrameFormat::Jpg {
            // Scale straight to RGB as the reference does (the encoder then keeps full chroma):
            // scaling the 4:2:0 planes halves the chroma again (30 dB against 48 measured).
            filters.push("format=rgb24".into());
        }
    }
    if !filters.is_empty() {
        args.push("-vf".into());
        args.push(filters.join(",").into());
    }
    args.extend(
        [
            "-fps_mode",
            "passthrough",
            "-frames:v",
            "1",
            "-f",
            "image2pipe",
        ]
        .map(OsString::from),
    );
    match format {
        FrameFormat::Jpg => {
            args.extend(["-c:v", "mjpeg", "-qmin", "1", "-q:v", "1"].map(OsString::from))
        }
        FrameFormat::Png => args.extend(["-c:v", "png"].map(OsString::from)),
    }
    args.push("-".into());
    let out = job
        .work
        .fence
        .run(Tool::Ffmpeg, args, job.limits.job_timeout, bound)
        .await?;
    drop(opened);
    if out.is_empty() {
        return Err(VideoError::Corrupt(format!(
            "frame {n} could not be decoded"
        )));
    }
    Ok(Bytes::from(out))
}

/// How one frame is reached.
#[derive(Debug, Clone, PartialEq)]
pub struct SeekPlan {
    /// The input `-ss` (seconds after the format's start), if any.
    pub seek: Option<f64>,
    /// `-noaccurate_seek` (the TS path: seek to before a keyframe, decode from there).
    pub fast_seek: bool,
    /// Keep timestamps and select the first frame at or after this time (the index's clock).
    pub select_from: Option<f64>,
}

/// The seek for frame `n` (< the frame count) of `index`.
pub fn seek_plan(index: &FrameIndex, n: usize, start_time: f64, container: Container) -> SeekPlan {
    let pts = &index.pts;
    if n == 0 {
        return SeekPlan {
            seek: None,
            fast_seek: false,
            select_from: None,
        };
    }
    let mid = (pts[n - 1] + pts[n]) / 2.0;
    if container == Container::Mpegts {
        let key = index
            .keyframes
            .partition_point(|k| *k <= n)
            .checked_sub(1)
            .map(|i| index.keyframes[i])
            .unwrap_or(0);
        let to = pts[key] - start_time - TS_SEEK_MARGIN_SECS;
        return SeekPlan {
            seek: (to > 0.0).then_some(to),
            fast_seek: true,
            select_from: Some(mid),
        };
    }
    SeekPlan {
        seek: Some((mid - start_time).max(0.0)),
        fast_seek: false,
        select_from: None,
    }
}

fn frames<'a>(job: &'a Job<'_>) -> Result<&'a FrameIndex, VideoError> {
    job.probe
        .frames
        .as_deref()
        .filter(|f| !f.pts.is_empty())
        .ok_or_else(|| VideoError::NoSuchPart("the video has no video frames".into()))
}

/// The displayed size of the video stream (coded size, sides swapped for 90 and 270 degrees).
fn display_size(job: &Job<'_>) -> Result<(u32, u32), VideoError> {
    let stream = job
        .probe
        .video
        .and_then(|i| job.probe.streams.get(i))
        .ok_or_else(|| VideoError::NoSuchPart("the video has no video stream".into()))?;
    let (w, h) = match (stream.width, stream.height) {
        (Some(w), Some(h)) if w > 0 && h > 0 => (w, h),
        _ => return Err(VideoError::Corrupt("the video stream has no size".into())),
    };
    Ok(if stream.rotation.rem_euclid(180) == 90 {
        (h, w)
    } else {
        (w, h)
    })
}

/// The width to scale to, if any: `None` when not asked or at least the displayed width
/// (never upscaled); 400 for 0 or more than `max`.
pub fn output_width(asked: Option<u32>, display: u32, max: u32) -> Result<Option<u32>, VideoError> {
    let Some(w) = asked else { return Ok(None) };
    if w == 0 || w > max {
        return Err(VideoError::BadParameter {
            param: "w",
            why: format!("must be 1 to {max}"),
        });
    }
    Ok((w < display).then_some(w))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn idx() -> FrameIndex {
        FrameIndex {
            pts: (0..300).map(|i| 1.48 + f64::from(i) * 0.04).collect(),
            keyframes: (0..300).step_by(50).collect(),
        }
    }

    #[test]
    fn midpoint_minus_start_time() {
        let p = seek_plan(&idx(), 51, 1.48, Container::Mov);
        let ss = p.seek.unwrap();
        assert!((ss - 2.02).abs() < 1e-9, "{ss}");
        assert_eq!(seek_plan(&idx(), 0, 1.48, Container::Mov).seek, None);
    }

    #[test]
    fn ts_seeks_before_the_keyframe_and_selects_by_time() {
        let p = seek_plan(&idx(), 137, 1.48, Container::Mpegts);
        assert!(p.fast_seek);
        // Keyframe 100 at 5.48 - 1.48 - 1 s.
        assert!((p.seek.unwrap() - 3.0).abs() < 1e-9, "{p:?}");
        assert!((p.select_from.unwrap() - (1.48 + 136.5 * 0.04)).abs() < 1e-9);
        // Within the first second: no seek at all.
        assert_eq!(seek_plan(&idx(), 20, 1.48, Container::Mpegts).seek, None);
    }

    #[test]
    fn shown_at_clamps() {
        let i = idx();
        assert_eq!(shown_at(&i, 0.0), 0);
        assert_eq!(shown_at(&i, 1.48), 0);
        assert_eq!(shown_at(&i, 1.48 + 0.05), 1);
        assert_eq!(shown_at(&i, 1000.0), 299);
    }

    #[test]
    fn widths() {
        assert_eq!(output_width(None, 640, 3840).unwrap(), None);
        assert_eq!(output_width(Some(320), 640, 3840).unwrap(), Some(320));
        assert_eq!(output_width(Some(640), 640, 3840).unwrap(), None);
        assert_eq!(output_width(Some(1000), 640, 3840).unwrap(), None);
        assert!(matches!(
            output_width(Some(4000), 640, 3840),
            Err(VideoError::BadParameter { param: "w", .. })
        ));
        assert!(output_width(Some(0), 640, 3840).is_err());
    }
}
