#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Criterion benches for the CPU half of a cold video request (issue 14), on one thread: the MP4
//! index of a 2-hour file (moov at the end: 180,000 video frames, 337,500 audio frames) read from
//! a local file and turned into every frame's time and the keyframes (`mp4::index`), the HLS plan
//! of that index (`hls::plan`, segments of 4 s on 2 s GOPs), and a `/v/` tail parsed
//! (`VideoRequest::parse` + `canonical`). The 2-hour file has a 64x36 picture and silent audio,
//! made here by looping a 2 s clip with `-c copy` (a few seconds with ffmpeg, which tests/run
//! installs): its index is as large as a 1080p camera file's of that length. benches/video.sh
//! measures whole requests through the gateway against the ffmpeg CLI.

use std::hint::black_box;
use std::path::Path;
use std::process::Command;

use bucketgate::video::input::{Input, Origin};
use bucketgate::video::probe::FrameIndex;
use bucketgate::video::{VideoRequest, hls, mp4};
use criterion::{Criterion, criterion_group, criterion_main};

const FPS: usize = 25;
const SECS: usize = 7200;

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg is needed to make the bench's MP4 (apt-get install ffmpeg)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 2-hour MP4 with its index at the end: a 2 s clip (one GOP) looped 3600 times, stream-copied.
fn two_hour_mp4(dir: &Path) -> std::path::PathBuf {
    let clip = dir.join("clip.mp4");
    let long = dir.join("long.mp4");
    let rate = FPS.to_string();
    let gop = (2 * FPS).to_string();
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size=64x36:rate={rate}"),
        "-f",
        "lavfi",
        "-i",
        "anullsrc=sample_rate=48000:channel_layout=mono",
        "-t",
        "2",
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "libx264",
        "-g",
        &gop,
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        clip.to_str().unwrap(),
    ]);
    ffmpeg(&[
        "-stream_loop",
        &(SECS / 2 - 1).to_string(),
        "-i",
        clip.to_str().unwrap(),
        "-map",
        "0",
        "-c",
        "copy",
        long.to_str().unwrap(),
    ]);
    long
}

/// The index of a 2-hour 25 fps video with a keyframe every 2 s, as `mp4::index` returns it.
fn synthetic_index() -> FrameIndex {
    let n = SECS * FPS;
    FrameIndex {
        pts: (0..n).map(|i| i as f64 / FPS as f64).collect(),
        keyframes: (0..n).step_by(2 * FPS).collect(),
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let long = two_hour_mp4(dir.path());
    let size = std::fs::metadata(&long).unwrap().len();
    let input = Input::new(Origin::File(long), size);
    match rt.block_on(mp4::index(&input, 0.0)) {
        Ok(index) => {
            assert_eq!(index.pts.len(), SECS * FPS, "frames in the 2-hour index");
            c.bench_function("mp4_index_2h_moov_at_end", |b| {
                b.iter(|| rt.block_on(mp4::index(black_box(&input), 0.0)).unwrap())
            });
        }
        // Until the index lands (the skeleton's stub), say so rather than measure an error.
        Err(e) => eprintln!("mp4_index_2h_moov_at_end: not measured, mp4::index failed: {e}"),
    }

    let index = synthetic_index();
    c.bench_function("hls_plan_2h", |b| {
        b.iter(|| hls::plan(black_box(&index), SECS as f64, 4))
    });

    c.bench_function("request_parse_poster", |b| {
        b.iter(|| {
            VideoRequest::parse(
                black_box("poster.jpg"),
                black_box(&[("t", "5.04"), ("w", "320")]),
            )
            .map(|r| r.canonical())
        })
    });
}

criterion_group!(video, benches);
criterion_main!(video);
