//! HLS (`/v/{source}/{key}/hls/index.m3u8` and `hls/{n}.ts`): the plan against ffmpeg's own HLS
//! muxer, and the segments cut on demand.

use std::path::Path;
use std::process::Command;

use bucketgate::video::hls::{self, Segment};
use bucketgate::video::probe::FrameIndex;

use crate::support::video::{self, Sample};

/// The frame index of `path` as ffprobe reads it (every packet of the first video stream):
/// presentation times ascending, keyframes by their number in that order; and the format's
/// duration.
fn ffprobe_index(path: &Path) -> (FrameIndex, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time,flags",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    let mut packets: Vec<(f64, bool)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split(',');
            let t: f64 = it.next()?.trim().parse().ok()?;
            let key = it.next().is_some_and(|f| f.starts_with('K'));
            Some((t, key))
        })
        .collect();
    packets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let index = FrameIndex {
        pts: packets.iter().map(|p| p.0).collect(),
        keyframes: packets
            .iter()
            .enumerate()
            .filter(|(_, p)| p.1)
            .map(|(i, _)| i)
            .collect(),
    };
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    let duration = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("format duration");
    (index, duration)
}

/// The EXTINF values ffmpeg's own HLS muxer writes for `path` (stream copy, `-hls_time`).
fn ffmpeg_extinf(path: &Path, hls_time: u32) -> Vec<f64> {
    let dir = tempfile::tempdir().expect("temp dir");
    let playlist = dir.path().join("index.m3u8");
    video::ffmpeg(&[
        "-i".into(),
        path.display().to_string(),
        "-map".into(),
        "0".into(),
        "-c".into(),
        "copy".into(),
        "-f".into(),
        "hls".into(),
        "-hls_time".into(),
        hls_time.to_string(),
        "-hls_playlist_type".into(),
        "vod".into(),
        "-hls_segment_filename".into(),
        dir.path().join("s%d.ts").display().to_string(),
        playlist.display().to_string(),
    ]);
    std::fs::read_to_string(&playlist)
        .expect("playlist written")
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .map(|v| v.trim_end_matches(',').parse().expect("EXTINF number"))
        .collect()
}

/// A 12 s H.264 sample whose keyframes are irregular (0, 1, 5, 5.52, 9, 10.2, 11 s): gaps both
/// shorter and longer than the segment target.
fn irregular_keyframes() -> std::path::PathBuf {
    static MADE: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf)> =
        std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("irregular.mp4");
        video::ffmpeg(&[
            "-f".into(),
            "lavfi".into(),
            "-i".into(),
            "testsrc2=size=320x180:rate=25:duration=12".into(),
            "-f".into(),
            "lavfi".into(),
            "-i".into(),
            "sine=frequency=440:sample_rate=48000:duration=12".into(),
            "-c:v".into(),
            "libx264".into(),
            "-preset".into(),
            "veryfast".into(),
            "-pix_fmt".into(),
            "yuv420p".into(),
            "-g".into(),
            "1000".into(),
            "-sc_threshold".into(),
            "0".into(),
            "-force_key_frames".into(),
            "0,1,5,5.52,9,10.2,11".into(),
            "-c:a".into(),
            "aac".into(),
            out.display().to_string(),
        ]);
        (dir, out)
    })
    .1
    .clone()
}

fn extinf(segments: &[Segment]) -> Vec<f64> {
    segments.iter().map(|s| s.duration).collect()
}

/// The playlist can be served before any segment exists because its EXTINF values are the ones
/// ffmpeg's muxer writes when it cuts the same file (within 1 ms).
#[test]
fn hls_plan_extinf_equals_ffmpeg_hls_muxer() {
    let mut cases: Vec<(String, std::path::PathBuf)> = [
        Sample::H264Faststart,
        Sample::MoovAtEnd,
        Sample::Mpegts,
        Sample::Vfr,
    ]
    .into_iter()
    .map(|s| (format!("{s:?}"), video::sample(s)))
    .collect();
    cases.push(("irregular keyframes".into(), irregular_keyframes()));
    for (name, path) in &cases {
        let (index, duration) = ffprobe_index(path);
        assert!(index.keyframes.len() >= 5, "{name}: {:?}", index.keyframes);
        for hls_time in [2, 3, 4, 6] {
            let ours = extinf(&hls::plan(&index, duration, hls_time));
            let theirs = ffmpeg_extinf(path, hls_time);
            assert_eq!(
                ours.len(),
                theirs.len(),
                "{name}, hls_time {hls_time}: ours {ours:?}, ffmpeg's {theirs:?}"
            );
            // ffmpeg writes the last EXTINF from the packets' durations, not their times: on
            // the VFR sample (whose MP4 sample durations say 40 ms where frames are 80 ms
            // apart) it wrote 1.0 for the last 2 s of video. There ours is the frames' span.
            let compared = if name == "Vfr" {
                let pts = &index.pts;
                let n = pts.len();
                let end = pts[n - 1] + (pts[n - 1] - pts[n - 2]);
                let plan = hls::plan(&index, duration, hls_time);
                let last = plan.last().expect("a segment");
                assert!(
                    (last.duration - (end - last.start)).abs() <= 0.001,
                    "{name}, hls_time {hls_time}: {last:?} should end at {end}"
                );
                ours.len() - 1
            } else {
                ours.len()
            };
            for (a, b) in ours.iter().zip(&theirs).take(compared) {
                assert!(
                    (a - b).abs() <= 0.001,
                    "{name}, hls_time {hls_time}: ours {ours:?}, ffmpeg's {theirs:?}"
                );
            }
        }
    }
}
