//! HLS VOD: the playlist is computed from the keyframes (see [`plan`]), so it is served before
//! any segment exists; each segment is cut when first asked for (stream copy for H.264/AAC, else
//! transcoded to H.264/AAC) and cached by the caller.
//!
//! What this module must keep true, whichever segment is asked first:
//! - segment `n` holds exactly the frames `[first, end)` of [`plan`] (the index's frames, so the
//!   segments together hold every frame once: no duplicates at the seams, the defect of cutting
//!   with `-ss S -to E -c copy` alone);
//! - timestamps are the source's own (`-copyts`, the same constant offset of the MPEG-TS muxer
//!   in every segment), so they rise monotonically across segments as hls.js needs;
//! - audio is cut by packet time: a packet belongs to the segment whose span holds its pts.
//!
//! The cut itself: ffmpeg seeks the input to a little before the segment (`-ss`, relative to
//! the format's start time), stops reading a little after it (`-to`), and drops what lies outside
//! the segment's span. For a stream copy the drop is the `noise` bitstream filter's `drop`
//! expression on the packets' pts (in the MPEG-TS muxer's 90 kHz time base); `-frames:v` is not
//! used because ffmpeg 5.1 closes every stream of the output when one reaches its frame count,
//! which cut the segment's last ~0.1 s of audio. For a transcode the drop is `select` on the
//! decoded frames' time and `trim=end_frame` with the index's frame count, `atrim` for audio.

use std::ffi::OsString;

use bytes::Bytes;

use super::fence::Tool;
use super::probe::{FrameIndex, StreamInfo, StreamKind, VideoProbe};
use super::{Job, VideoError, VideoLimits};

/// One segment: its frames `[first, end)` (presentation order) and its times in seconds:
/// `start` is frame `first`'s presentation time as the index has it (the container's start
/// time included), `duration` its EXTINF.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub first: usize,
    pub end: usize,
    pub start: f64,
    pub duration: f64,
}

/// Timestamps closer than this are the same instant (the index's times are decimal seconds).
const EPS: f64 = 1e-6;

/// How far before a segment ffmpeg seeks, and after it stops reading, in seconds: room for a
/// demuxer whose seek lands late (MPEG-TS) and for audio interleaved behind the video.
const MARGIN_SECS: f64 = 1.0;

/// The MPEG-TS muxer's time base: the `noise` filter sees the packets' pts in it.
const TS_HZ: f64 = 90_000.0;

/// The segments of a video with this index.
///
/// The rule is the one ffmpeg's own HLS muxer applies (so the EXTINF values are the ones
/// `ffmpeg -f hls -hls_time T` writes): segment k (1-based) ends at the first keyframe after its
/// start whose time, relative to the first frame, is at least `k * segment_secs`; the last ends
/// with the video. Where keyframes are at most `segment_secs` apart this is the nginx-vod rule
/// (the first keyframe at or after each multiple); after a longer gap the count, not the clock,
/// sets the next target, as ffmpeg does.
///
/// The video ends one frame after its last frame (the last interval repeated), or at
/// `first + duration` when that is sooner but still after the last frame (`duration` is the
/// format's, which may include longer audio).
pub fn plan(frames: &FrameIndex, duration: f64, segment_secs: u32) -> Vec<Segment> {
    let pts = &frames.pts;
    let Some((&t0, &last)) = pts.first().zip(pts.last()) else {
        return Vec::new();
    };
    let target = f64::from(segment_secs.max(1));
    let end_time = video_end(pts, duration);
    let mut segments = Vec::new();
    let mut first = 0usize;
    let mut k = 1.0f64;
    for &kf in &frames.keyframes {
        if kf <= first || kf >= pts.len() {
            continue;
        }
        if pts[kf] - t0 >= k * target - EPS {
            segments.push(Segment {
                first,
                end: kf,
                start: pts[first],
                duration: pts[kf] - pts[first],
            });
            first = kf;
            k += 1.0;
        }
    }
    segments.push(Segment {
        first,
        end: pts.len(),
        start: pts[first],
        duration: (end_time.max(last) - pts[first]).max(0.0),
    });
    segments
}

/// When the video's last frame stops showing.
fn video_end(pts: &[f64], duration: f64) -> f64 {
    let last = pts.last().copied().unwrap_or(0.0);
    let t0 = pts.first().copied().unwrap_or(0.0);
    let by_format = t0 + duration;
    let by_frames = match pts.len() {
        n if n >= 2 => Some(last + (last - pts[n - 2]).max(0.0)),
        _ => None,
    };
    match by_frames {
        Some(f) if duration.is_finite() && by_format > last + EPS => f.min(by_format),
        Some(f) => f,
        None if duration.is_finite() && by_format > last => by_format,
        None => last,
    }
}

/// The video stream and its frame index, or 404 for a video without one.
fn video_of(probe: &VideoProbe) -> Result<(&StreamInfo, &FrameIndex), VideoError> {
    let no_video = || VideoError::NoSuchPart("the file has no video stream".into());
    let stream = probe
        .video
        .and_then(|i| probe.streams.get(i))
        .ok_or_else(no_video)?;
    let frames = probe.frames.as_deref().ok_or_else(no_video)?;
    if frames.pts.is_empty() {
        return Err(VideoError::Corrupt("the video stream has no frames".into()));
    }
    Ok((stream, frames))
}

fn segments_of(job: &Job<'_>) -> Result<Vec<Segment>, VideoError> {
    let (_, frames) = video_of(job.probe)?;
    Ok(plan(frames, job.probe.duration, job.limits.segment_secs))
}

/// `index.m3u8`, its segment links made with `job.links`.
pub fn playlist(job: &Job<'_>) -> Result<String, VideoError> {
    let segments = segments_of(job)?;
    Ok(render_playlist(&segments, |n| {
        job.links.to(&format!("hls/{n}.ts"))
    }))
}

/// The playlist text for `segments`, each linked by `link(n)`.
fn render_playlist(segments: &[Segment], link: impl Fn(usize) -> String) -> String {
    use std::fmt::Write as _;
    // TARGETDURATION: an integer no EXTINF exceeds (RFC 8216 4.3.3.1), so the ceiling of the
    // longest, read at the precision the EXTINF values are written with.
    let longest = segments.iter().map(|s| s.duration).fold(0.0f64, f64::max);
    let target = ((longest * 1e6).round() / 1e6).ceil().max(1.0) as u64;
    let mut out = String::with_capacity(128 + segments.len() * 64);
    out.push_str("#EXTM3U\n#EXT-X-VERSION:3\n");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
    out.push_str(
        "#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n",
    );
    for (n, s) in segments.iter().enumerate() {
        let _ = writeln!(out, "#EXTINF:{:.6},\n{}", s.duration, link(n));
    }
    out.push_str("#EXT-X-ENDLIST\n");
    out
}

/// Segment `n` (MPEG-TS); 404 past the last.
pub async fn segment(job: &Job<'_>, n: u32) -> Result<Bytes, VideoError> {
    let segments = segments_of(job)?;
    let count = segments.len();
    let seg = usize::try_from(n)
        .ok()
        .and_then(|i| segments.get(i))
        .ok_or_else(|| {
            VideoError::NoSuchPart(format!("no segment {n}: the video has {count} segments"))
        })?;
    let last = n as usize + 1 == count;
    let (video, frames) = video_of(job.probe)?;
    let audio = job
        .probe
        .streams
        .iter()
        .find(|s| s.kind == StreamKind::Audio);
    let cut = Cut {
        seg,
        first_segment: n == 0,
        last_segment: last,
        start_time: job.probe.start_time,
        // The time the segment ends: the next segment's first frame, or past every frame.
        end: if last {
            f64::INFINITY
        } else {
            frames.pts.get(seg.end).copied().unwrap_or(f64::INFINITY)
        },
    };
    let opened = job.input.open(job.probe.container).await?;
    let args = segment_args(&cut, video, audio, job.limits, opened.args.clone());
    let max = max_segment_bytes(job.limits, job.probe.bit_rate, seg.duration);
    let body = job
        .work
        .fence
        .run(Tool::Ffmpeg, args, job.limits.job_timeout, max)
        .await?;
    drop(opened);
    if body.is_empty() {
        return Err(VideoError::Corrupt(format!("segment {n} came out empty")));
    }
    Ok(Bytes::from(body))
}

/// The most bytes a segment may have: its duration (plus the margins) at the source's bit rate
/// (the highest allowed when unknown), doubled for a transcode's overshoot, never under 16 MiB.
fn max_segment_bytes(limits: &VideoLimits, bit_rate: Option<u64>, duration: f64) -> usize {
    let rate = bit_rate.unwrap_or(limits.max_bit_rate).min(limits.max_bit_rate);
    let secs = duration.max(0.0).ceil() + 2.0 * MARGIN_SECS;
    let bytes = (rate as f64 / 8.0) * secs * 2.0;
    (bytes.min(usize::MAX as f64) as usize).max(16 << 20)
}

/// What one segment's cut needs to know.
struct Cut<'a> {
    seg: &'a Segment,
    first_segment: bool,
    last_segment: bool,
    /// The format's start time (`-ss`/`-to` are relative to it; the index's times are not).
    start_time: f64,
    /// The index time the segment ends at (infinite for the last).
    end: f64,
}

/// Whether browsers decode the stream as it is inside MPEG-TS: H.264 in 4:2:0 (8 bit), not
/// rotated (MPEG-TS has no display matrix: a rotated picture is turned by the transcode).
fn copy_video(video: &StreamInfo) -> bool {
    video.codec == "h264"
        && matches!(video.pix_fmt.as_deref(), Some("yuv420p" | "yuvj420p"))
        && video.rotation.rem_euclid(360) == 0
}

/// The size of a transcode: the displayed size (rotation applied) scaled down, never up, so its
/// longer side is at most `max_side`; both sides even.
fn output_size(video: &StreamInfo, max_side: u32) -> Option<(u32, u32)> {
    let (w, h) = (video.width?, video.height?);
    let (w, h) = if video.rotation.rem_euclid(180) == 90 {
        (h, w)
    } else {
        (w, h)
    };
    let longest = w.max(h).max(1);
    let scale = (f64::from(max_side.max(2)) / f64::from(longest)).min(1.0);
    let even = |v: u32| ((f64::from(v) * scale / 2.0).round() as u32 * 2).max(2);
    Some((even(w), even(h)))
}

fn seconds(t: f64) -> String {
    format!("{:.6}", t.max(0.0))
}

/// ffmpeg's arguments for one segment, written to stdout as MPEG-TS. `input` names the input
/// (`Input::open`), after the input options.
fn segment_args(
    cut: &Cut<'_>,
    video: &StreamInfo,
    audio: Option<&StreamInfo>,
    limits: &VideoLimits,
    input: Vec<OsString>,
) -> Vec<OsString> {
    let seg = cut.seg;
    let mut a: Vec<String> = vec!["-copyts".into()];
    // Input options: read from a little before the segment to a little after it. Relative to
    // the format's start time (ffmpeg adds it back), so for the index's absolute times subtract.
    let from = seg.start - cut.start_time - MARGIN_SECS;
    if !cut.first_segment && from > 0.0 {
        a.extend(["-ss".into(), seconds(from)]);
    }
    if !cut.last_segment {
        a.extend([
            "-to".into(),
            seconds(cut.end - cut.start_time + MARGIN_SECS),
        ]);
    }
    let mut args: Vec<OsString> = a.into_iter().map(OsString::from).collect();
    args.extend(input);

    // The span kept, in index time, with half a millisecond of slack for rounding: a frame or
    // packet at `start` is in, one at `end` is out. The first segment keeps everything before
    // it (audio priming), the last everything after.
    let lo = (!cut.first_segment).then(|| seg.start - 0.0005);
    let hi = (!cut.last_segment).then(|| cut.end - 0.0005);
    let frames = seg.end - seg.first;

    let mut o: Vec<String> = vec!["-map".into(), format!("0:{}", video.index)];
    if let Some(au) = audio {
        o.extend(["-map".into(), format!("0:{}", au.index)]);
    }
    o.extend([
        "-map_metadata".into(),
        "-1".into(),
        "-sn".into(),
        "-dn".into(),
    ]);

    let drop_expr = |lo: Option<f64>, hi: Option<f64>| -> Option<String> {
        let mut parts = Vec::new();
        if let Some(lo) = lo {
            parts.push(format!("lt(pts\\,{})", (lo * TS_HZ).round() as i64));
        }
        if let Some(hi) = hi {
            parts.push(format!("gte(pts\\,{})", (hi * TS_HZ).round() as i64));
        }
        (!parts.is_empty()).then(|| format!("noise=drop={}", parts.join("+")))
    };
    let time_filter = |name: &str, lo: Option<f64>, hi: Option<f64>| -> Option<String> {
        let mut opts = Vec::new();
        if let Some(lo) = lo {
            opts.push(format!("start={lo:.6}"));
        }
        if let Some(hi) = hi {
            opts.push(format!("end={hi:.6}"));
        }
        (!opts.is_empty()).then(|| format!("{name}={}", opts.join(":")))
    };

    let copy = copy_video(video);
    if copy {
        o.extend(["-c:v".into(), "copy".into()]);
        if let Some(f) = drop_expr(lo, hi) {
            o.extend(["-bsf:v".into(), f]);
        }
    } else {
        let mut vf = Vec::new();
        if let Some(lo) = lo {
            vf.push(format!("select=gte(t\\,{lo:.6})"));
        }
        vf.push(format!("trim=end_frame={frames}"));
        if let Some((w, h)) = output_size(video, limits.max_output_side) {
            vf.push(format!("scale={w}:{h}"));
        }
        vf.push("format=yuv420p".into());
        o.extend([
            "-vf".into(),
            vf.join(","),
            "-fps_mode".into(),
            "passthrough".into(),
            "-c:v".into(),
            "libx264".into(),
            "-preset".into(),
            limits.preset.clone(),
            "-crf".into(),
            limits.crf.to_string(),
            "-profile:v".into(),
            "high".into(),
        ]);
    }
    if let Some(au) = audio {
        // AAC is copied only beside copied video: the `noise` filter's pts were in the 90 kHz
        // time base there (measured), but not when the video is encoded (the HEVC sample's
        // first segment kept audio up to the read limit). Decoded audio is cut by `atrim`.
        if copy && au.codec == "aac" {
            o.extend(["-c:a".into(), "copy".into()]);
            if let Some(f) = drop_expr(lo, hi) {
                o.extend(["-bsf:a".into(), f]);
            }
        } else {
            if let Some(f) = time_filter("atrim", lo, hi) {
                o.extend(["-af".into(), f]);
            }
            o.extend([
                "-c:a".into(),
                "aac".into(),
                "-b:a".into(),
                "128k".into(),
                "-ac".into(),
                "2".into(),
            ]);
        }
    }
    // Keep the source's timestamps as they are (no shift of a negative first dts): the MPEG-TS
    // muxer's own delay keeps them positive, the same in every segment.
    o.extend([
        "-avoid_negative_ts".into(),
        "disabled".into(),
        "-f".into(),
        "mpegts".into(),
        "pipe:1".into(),
    ]);
    args.extend(o.into_iter().map(OsString::from));
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` frames at `fps` from `t0`, a keyframe wherever `key(i)`.
    fn index(n: usize, fps: f64, t0: f64, key: impl Fn(usize) -> bool) -> FrameIndex {
        FrameIndex {
            pts: (0..n).map(|i| t0 + i as f64 / fps).collect(),
            keyframes: (0..n).filter(|&i| key(i)).collect(),
        }
    }

    fn durations(s: &[Segment]) -> Vec<f64> {
        s.iter().map(|s| (s.duration * 1e6).round() / 1e6).collect()
    }

    #[test]
    fn plan_cuts_on_the_first_keyframe_at_or_after_each_multiple() {
        // 12 s at 25 fps, a keyframe every 2 s, target 4 s: three segments of 100 frames.
        let f = index(300, 25.0, 0.0, |i| i % 50 == 0);
        let s = plan(&f, 12.0, 4);
        assert_eq!(durations(&s), vec![4.0, 4.0, 4.0]);
        assert_eq!(
            s.iter().map(|s| (s.first, s.end)).collect::<Vec<_>>(),
            vec![(0, 100), (100, 200), (200, 300)]
        );
        // Target 3 s: keyframes at 4, 6, 10 (relative).
        let s = plan(&f, 12.0, 3);
        assert_eq!(durations(&s), vec![4.0, 2.0, 4.0, 2.0]);
    }

    #[test]
    fn plan_is_relative_to_the_first_frame_and_ends_with_the_video() {
        // An MPEG-TS-like start of 1.48 s and a format duration that includes longer audio.
        let f = index(300, 25.0, 1.48, |i| i % 50 == 0);
        let s = plan(&f, 13.3, 4);
        assert_eq!(durations(&s), vec![4.0, 4.0, 4.0]);
        assert!((s[0].start - 1.48).abs() < 1e-9);
        assert_eq!(s[2].end, 300);
    }

    #[test]
    fn plan_after_a_long_gap_counts_segments_as_ffmpeg_does() {
        // Keyframes at 0, 1, 5, 5.52, 9, 10.2, 11 (measured: ffmpeg -hls_time 2 writes
        // 5, 0.52, 3.48, 1.2, 0.8, 1.0 and -hls_time 4 writes 5, 4, 3).
        let keys = [0.0, 1.0, 5.0, 5.52, 9.0, 10.2, 11.0];
        let f = index(300, 25.0, 0.0, |i| {
            keys.iter().any(|k| ((i as f64) / 25.0 - k).abs() < 1e-9)
        });
        assert_eq!(f.keyframes.len(), keys.len());
        assert_eq!(
            durations(&plan(&f, 12.0, 2)),
            vec![5.0, 0.52, 3.48, 1.2, 0.8, 1.0]
        );
        assert_eq!(durations(&plan(&f, 12.0, 4)), vec![5.0, 4.0, 3.0]);
    }

    #[test]
    fn plan_of_a_short_or_keyframeless_video_is_one_segment() {
        let f = index(30, 25.0, 0.0, |i| i == 0);
        let s = plan(&f, 1.2, 4);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].first, s[0].end), (0, 30));
        assert_eq!(durations(&s), vec![1.2]);
        let one = index(1, 25.0, 0.0, |_| true);
        assert_eq!(durations(&plan(&one, 0.04, 4)), vec![0.04]);
        assert!(plan(&FrameIndex::default(), 1.0, 4).is_empty());
    }

    #[test]
    fn plan_segments_cover_every_frame_once() {
        let f = index(1000, 30.0, 0.5, |i| i % 37 == 0 || i % 101 == 0);
        for target in [1, 2, 4, 6, 10] {
            let s = plan(&f, 40.0, target);
            assert_eq!(s[0].first, 0);
            assert_eq!(s.last().map(|s| s.end), Some(1000));
            for w in s.windows(2) {
                assert_eq!(w[0].end, w[1].first);
                assert!(f.keyframes.contains(&w[1].first));
            }
            let total: f64 = s.iter().map(|s| s.duration).sum();
            assert!((total - 1000.0 / 30.0).abs() < 1e-6, "{target}: {total}");
        }
    }

    #[test]
    fn playlist_has_the_vod_tags_and_one_link_per_segment() {
        let f = index(300, 25.0, 0.0, |i| i % 50 == 0);
        let s = plan(&f, 12.0, 3);
        let text = render_playlist(&s, |n| format!("/v/s/k/hls/{n}.ts?token=t"));
        assert_eq!(
            text,
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:0\n\
             #EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXTINF:4.000000,\n/v/s/k/hls/0.ts?token=t\n#EXTINF:2.000000,\n/v/s/k/hls/1.ts?token=t\n\
             #EXTINF:4.000000,\n/v/s/k/hls/2.ts?token=t\n#EXTINF:2.000000,\n/v/s/k/hls/3.ts?token=t\n\
             #EXT-X-ENDLIST\n"
        );
        // A longest segment just over a whole second rounds the target up.
        let f = index(300, 25.0, 0.0, |i| i == 0 || i == 101);
        assert!(
            render_playlist(&plan(&f, 12.0, 4), |n| n.to_string())
                .contains("#EXT-X-TARGETDURATION:8\n")
        );
    }

    fn stream(codec: &str, rotation: i32, w: u32, h: u32) -> StreamInfo {
        StreamInfo {
            index: 0,
            kind: StreamKind::Video,
            codec: codec.into(),
            profile: None,
            width: Some(w),
            height: Some(h),
            rotation,
            frame_rate: Some(25.0),
            pix_fmt: Some("yuv420p".into()),
            bit_rate: None,
            channels: None,
            sample_rate: None,
        }
    }

    #[test]
    fn only_unrotated_h264_420_is_copied() {
        assert!(copy_video(&stream("h264", 0, 640, 360)));
        assert!(!copy_video(&stream("h264", 90, 640, 360)));
        assert!(!copy_video(&stream("hevc", 0, 640, 360)));
        let mut s = stream("h264", 0, 640, 360);
        s.pix_fmt = Some("yuv422p".into());
        assert!(!copy_video(&s));
    }

    #[test]
    fn transcode_size_turns_and_shrinks_never_grows() {
        assert_eq!(
            output_size(&stream("hevc", 0, 3840, 2160), 1920),
            Some((1920, 1080))
        );
        assert_eq!(
            output_size(&stream("hevc", 90, 640, 360), 1920),
            Some((360, 640))
        );
        assert_eq!(
            output_size(&stream("hevc", 0, 641, 361), 1920),
            Some((642, 362))
        );
    }

    #[test]
    fn segment_args_seek_before_and_drop_outside_the_span() {
        let f = index(300, 25.0, 0.0, |i| i % 50 == 0);
        let s = plan(&f, 12.0, 4);
        let cut = Cut {
            seg: &s[1],
            first_segment: false,
            last_segment: false,
            start_time: 0.0,
            end: 8.0,
        };
        let mut audio = stream("aac", 0, 0, 0);
        audio.index = 1;
        audio.kind = StreamKind::Audio;
        let args = segment_args(
            &cut,
            &stream("h264", 0, 640, 360),
            Some(&audio),
            &VideoLimits::default(),
            vec!["-i".into(), "file:/x".into()],
        );
        let args: Vec<String> = args
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = args.join(" ");
        assert!(
            line.starts_with("-copyts -ss 3.000000 -to 9.000000 -i file:/x "),
            "{line}"
        );
        assert!(line.contains("-c:v copy -bsf:v noise=drop=lt(pts\\,359955)+gte(pts\\,719955)"));
        assert!(line.contains("-map 0:0 -map 0:1"));
        assert!(line.ends_with("-f mpegts pipe:1"));
    }
}
