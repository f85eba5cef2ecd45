//! Synthetic videos for the video tests, made with ffmpeg's lavfi (testsrc2 with the frame
//! number burned in, a sine tone), and ffmpeg-made references to compare the gateway with.
//!
//! Every sample is made once per test process (into one temp dir) however many tests ask.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The kinds of sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sample {
    /// H.264/AAC MP4, index in front, 640x360, 25 fps, keyframe every 2 s.
    H264Faststart,
    /// The same, index at the end.
    MoovAtEnd,
    /// HEVC (libx265) with AAC in MP4.
    Hevc,
    /// VP9 with Opus in WebM.
    Vp9Webm,
    /// H.264 with variable frame rate (timestamps from a setpts expression).
    Vfr,
    /// H.264 640x360 with a 90 degree display rotation (a phone held upright).
    Rotated,
    /// H.264/AAC in MPEG-TS.
    Mpegts,
}

impl Sample {
    /// Every kind of sample.
    pub const ALL: [Sample; 7] = [
        Sample::H264Faststart,
        Sample::MoovAtEnd,
        Sample::Hevc,
        Sample::Vp9Webm,
        Sample::Vfr,
        Sample::Rotated,
        Sample::Mpegts,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            Sample::H264Faststart => "faststart.mp4",
            Sample::MoovAtEnd => "moov-at-end.mp4",
            Sample::Hevc => "hevc.mp4",
            Sample::Vp9Webm => "vp9.webm",
            Sample::Vfr => "vfr.mp4",
            Sample::Rotated => "rotated.mp4",
            Sample::Mpegts => "h264.ts",
        }
    }
}

/// Seconds of every sample.
pub const SAMPLE_SECS: u32 = 12;
/// Frames per second of the constant-rate samples.
pub const SAMPLE_FPS: u32 = 25;

fn dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// The path of `sample`, made on first use.
pub fn sample(sample: Sample) -> PathBuf {
    static MADE: OnceLock<Mutex<HashMap<Sample, PathBuf>>> = OnceLock::new();
    let made = MADE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut made = made.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = made.get(&sample) {
        return p.clone();
    }
    let out = dir().join(sample.file_name());
    make(sample, &out);
    made.insert(sample, out.clone());
    out
}

/// testsrc2 with the frame number drawn large in the corner (so a wrong frame is visible in a
/// failure's saved image), and a tone.
fn lavfi_inputs(secs: u32, size: &str) -> Vec<String> {
    vec![
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("testsrc2=size={size}:rate={SAMPLE_FPS}:duration={secs}"),
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("sine=frequency=440:sample_rate=48000:duration={secs}"),
    ]
}

const COUNTER: &str =
    "drawtext=text='%{frame_num}':fontsize=64:fontcolor=white:box=1:boxcolor=black:x=16:y=16";

fn make(sample: Sample, out: &Path) {
    let secs = SAMPLE_SECS;
    let gop = (SAMPLE_FPS * 2).to_string();
    let mut args: Vec<String> = vec!["-y".into()];
    let h264 = |args: &mut Vec<String>| {
        args.extend(
            [
                "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", &gop,
                "-c:a", "aac", "-b:a", "96k",
            ]
            .map(String::from),
        )
    };
    match sample {
        Sample::H264Faststart | Sample::MoovAtEnd => {
            args.extend(lavfi_inputs(secs, "640x360"));
            args.extend(["-vf", COUNTER].map(String::from));
            h264(&mut args);
            if sample == Sample::H264Faststart {
                args.extend(["-movflags", "+faststart"].map(String::from));
            }
        }
        Sample::Hevc => {
            args.extend(lavfi_inputs(secs, "640x360"));
            args.extend(["-vf", COUNTER].map(String::from));
            args.extend(
                [
                    "-c:v",
                    "libx265",
                    "-preset",
                    "ultrafast",
                    "-pix_fmt",
                    "yuv420p",
                    "-tag:v",
                    "hvc1",
                    "-x265-params",
                    "log-level=error",
                    "-c:a",
                    "aac",
                ]
                .map(String::from),
            );
            args.extend(["-g", &gop].map(String::from));
        }
        Sample::Vp9Webm => {
            args.extend(lavfi_inputs(secs, "640x360"));
            args.extend(["-vf", COUNTER].map(String::from));
            args.extend(
                [
                    "-c:v",
                    "libvpx-vp9",
                    "-deadline",
                    "realtime",
                    "-cpu-used",
                    "8",
                    "-b:v",
                    "1M",
                    "-c:a",
                    "libopus",
                ]
                .map(String::from),
            );
            args.extend(["-g", &gop].map(String::from));
        }
        Sample::Vfr => {
            // Frame i at i/25 s for the first half, then every other frame twice as long:
            // timestamps that no constant rate describes.
            args.extend(lavfi_inputs(secs, "640x360"));
            args.extend(
                [
                    "-vf",
                    &format!(
                        "{COUNTER},setpts='if(lt(N,{h}),N,{h}+(N-{h})*2)/{SAMPLE_FPS}/TB'",
                        h = SAMPLE_FPS * secs / 2
                    ),
                    "-fps_mode",
                    "vfr",
                ]
                .map(String::from),
            );
            h264(&mut args);
            args.extend(["-t", &secs.to_string()].map(String::from));
        }
        Sample::Rotated => {
            // ffmpeg 5.1 writes the display matrix from the `rotate` tag only when it copies
            // the stream: encode, then remux with the tag.
            let plain = out.with_extension("plain.mp4");
            make(Sample::H264Faststart, &plain);
            args.extend(
                [
                    "-i",
                    &plain.display().to_string(),
                    "-c",
                    "copy",
                    "-metadata:s:v:0",
                    "rotate=90",
                    "-movflags",
                    "+faststart",
                ]
                .map(String::from),
            );
        }
        Sample::Mpegts => {
            args.extend(lavfi_inputs(secs, "640x360"));
            args.extend(["-vf", COUNTER].map(String::from));
            h264(&mut args);
            args.extend(["-f", "mpegts"].map(String::from));
        }
    }
    args.push(out.display().to_string());
    ffmpeg(&args);
}

/// Run ffmpeg with `args` (after `-nostdin -hide_banner -loglevel error`); panics with its
/// stderr on failure.
pub fn ffmpeg(args: &[String]) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error"])
        .args(args)
        .output()
        .expect("ffmpeg runs (tests/run installs it)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Run ffprobe with `-v error`, `args`, then `path`; its stdout. Panics with its stderr on
/// failure.
pub fn ffprobe(path: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .arg(path)
        .output()
        .expect("ffprobe runs (tests/run installs it)");
    assert!(
        out.status.success(),
        "ffprobe {args:?} {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Frame `n` of `path` as ffmpeg's `select=eq(n\,N)` decodes it, scaled to `width` when given
/// (bicubic, height even), as raw RGB24: (width, height, pixels).
pub fn reference_frame(path: &Path, n: u64, width: Option<u32>) -> (u32, u32, Vec<u8>) {
    let mut vf = format!("select=eq(n\\,{n})");
    if let Some(w) = width {
        vf.push_str(&format!(",scale={w}:-2"));
    }
    let png = ffmpeg(&[
        "-i".into(),
        path.display().to_string(),
        "-vf".into(),
        vf,
        "-frames:v".into(),
        "1".into(),
        "-f".into(),
        "image2pipe".into(),
        "-c:v".into(),
        "png".into(),
        "-".into(),
    ]);
    decode_to_rgb(&png)
}

/// Any image ffmpeg reads (JPEG, PNG) as raw RGB24: (width, height, pixels).
pub fn decode_to_rgb(image: &[u8]) -> (u32, u32, Vec<u8>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("in");
    std::fs::write(&src, image).expect("write");
    let probe = ffprobe(
        &src,
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height",
            "-of",
            "csv=p=0",
        ],
    );
    let text = String::from_utf8_lossy(&probe);
    let mut it = text.trim().split(',');
    let w: u32 = it.next().and_then(|v| v.parse().ok()).expect("width");
    let h: u32 = it.next().and_then(|v| v.parse().ok()).expect("height");
    let rgb = ffmpeg(&[
        "-i".into(),
        src.display().to_string(),
        "-f".into(),
        "rawvideo".into(),
        "-pix_fmt".into(),
        "rgb24".into(),
        "-".into(),
    ]);
    assert_eq!(rgb.len(), (w * h * 3) as usize, "raw frame size");
    (w, h, rgb)
}

/// PSNR in dB of two RGB24 images of one size (infinity when equal).
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "images of different sizes");
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            let d = f64::from(*x) - f64::from(*y);
            d * d
        })
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0 * 255.0 / mse).log10()
    }
}

/// Presentation times (seconds) of every video frame of `path`, in presentation order, as
/// ffprobe reads them (the whole file).
pub fn frame_times(path: &Path) -> Vec<f64> {
    let out = ffprobe(
        path,
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=pts_time",
            "-of",
            "csv=p=0",
        ],
    );
    let mut t: Vec<f64> = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect();
    t.sort_by(f64::total_cmp);
    t
}
