//! Video frame index and exact frames (issue 14): the MP4 index read from the boxes agrees with
//! ffprobe's frame times on every sample; frames and posters equal ffmpeg's `select=eq(n,N)`
//! reference.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use bucketgate::video::VideoError;
use bucketgate::video::mp4::{self, ReadAt};
use bucketgate::video::probe::FrameIndex;

use crate::support::video::{self, Sample};

/// A local file read by ranges, counting the bytes read.
struct CountingFile {
    bytes: Vec<u8>,
    read: AtomicU64,
}

impl CountingFile {
    fn open(path: &Path) -> CountingFile {
        CountingFile {
            bytes: std::fs::read(path).unwrap(),
            read: AtomicU64::new(0),
        }
    }
}

impl ReadAt for CountingFile {
    async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, VideoError> {
        let s = (offset as usize).min(self.bytes.len());
        let e = (offset.saturating_add(len) as usize).min(self.bytes.len());
        self.read.fetch_add((e - s) as u64, Ordering::Relaxed);
        Ok(Bytes::copy_from_slice(&self.bytes[s..e]))
    }

    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

fn index_of(file: &CountingFile) -> FrameIndex {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(mp4::read_index(file))
        .unwrap()
        .expect("not fragmented")
}

/// ffprobe's keyframe packets, as frame numbers in presentation order.
fn ffprobe_keyframes(path: &Path) -> Vec<usize> {
    let out = video::ffprobe(
        path,
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time,flags",
            "-of",
            "csv=p=0:nk=0",
        ],
    );
    let idx = mp4::parse_packet_list(&out).unwrap();
    idx.keyframes
}

#[test]
fn mp4_index_matches_ffprobe_on_every_mp4_sample() {
    for s in [
        Sample::H264Faststart,
        Sample::MoovAtEnd,
        Sample::Vfr,
        Sample::Rotated,
        Sample::Hevc,
    ] {
        let path = video::sample(s);
        let file = CountingFile::open(&path);
        let idx = index_of(&file);
        let expected = video::frame_times(&path);
        assert_eq!(idx.pts.len(), expected.len(), "{s:?}: frame count");
        for (n, (a, b)) in idx.pts.iter().zip(&expected).enumerate() {
            assert!(
                (a - b).abs() < 0.001,
                "{s:?}: frame {n}: {a} vs ffprobe {b}"
            );
        }
        assert_eq!(idx.keyframes, ffprobe_keyframes(&path), "{s:?}: keyframes");
        if s != Sample::Vfr {
            // GOP 2 s at 25 fps.
            let every_50: Vec<usize> = (0..idx.pts.len()).step_by(50).collect();
            assert_eq!(idx.keyframes, every_50, "{s:?}");
        }
        // Only headers and the index were read, never the media data.
        let read = file.read.load(Ordering::Relaxed);
        assert!(
            read * 10 < file.size(),
            "{s:?}: read {read} of {} bytes",
            file.size()
        );
    }
}

// ---- exact frames and posters, through video::frame with a job built here ----

use bucketgate::video::fence::Fence;
use bucketgate::video::frame;
use bucketgate::video::input::{Input, Origin};
use bucketgate::video::probe::{StreamInfo, StreamKind, VideoProbe};
use bucketgate::video::request::FrameFormat;
use bucketgate::video::{Container, Job, Links, Tools, VideoLimits, Work, web};

/// What a test needs to build a [`Job`] for one local sample.
struct Local {
    path: std::path::PathBuf,
    input: Input,
    probe: VideoProbe,
    limits: VideoLimits,
    work: Work,
    links: Links,
    _store: tempfile::TempDir,
}

impl Local {
    fn job(&self) -> Job<'_> {
        Job {
            input: &self.input,
            probe: &self.probe,
            limits: &self.limits,
            work: &self.work,
            links: &self.links,
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// ffprobe's format start time and the video stream's size and rotation.
fn describe(path: &Path) -> (f64, u32, u32, i32) {
    let out = video::ffprobe(
        path,
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "format=start_time:stream=width,height:stream_side_data=rotation",
            "-of",
            "default=nw=1",
        ],
    );
    let text = String::from_utf8_lossy(&out);
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_owned)
    };
    (
        field("start_time").unwrap().parse().unwrap(),
        field("width").unwrap().parse().unwrap(),
        field("height").unwrap().parse().unwrap(),
        field("rotation").map_or(0, |r| r.parse().unwrap()),
    )
}

fn container_of(s: Sample) -> Container {
    match s {
        Sample::Vp9Webm => Container::Matroska,
        Sample::Mpegts => Container::Mpegts,
        _ => Container::Mov,
    }
}

/// A job on `sample` read as an fs source's file; the frame index made by `mp4::frame_index`
/// (the boxes for MP4, ffprobe's packets for WebM and TS).
fn local(rt: &tokio::runtime::Runtime, sample: Sample) -> Local {
    let path = video::sample(sample);
    let (start_time, width, height, rotation) = describe(&path);
    let size = std::fs::metadata(&path).unwrap().len();
    let input = Input::new(Origin::File(path.clone()), size);
    let limits = VideoLimits::default();
    let store = tempfile::tempdir().unwrap();
    let work = Work::new(
        Fence::new(Tools::find("ffmpeg", "ffprobe"), 2, 64),
        web::Store::new(store.path().to_owned(), 1 << 30).unwrap(),
        16,
    );
    let container = container_of(sample);
    let frames = rt
        .block_on(mp4::frame_index(
            &input,
            &work.fence,
            container,
            start_time,
            &limits,
        ))
        .unwrap();
    let probe = VideoProbe {
        container,
        format_name: container.name().to_owned(),
        duration: f64::from(video::SAMPLE_SECS),
        start_time,
        bit_rate: None,
        size,
        streams: vec![StreamInfo {
            index: 0,
            kind: StreamKind::Video,
            codec: "h264".into(),
            profile: None,
            width: Some(width),
            height: Some(height),
            rotation,
            frame_rate: None,
            pix_fmt: None,
            bit_rate: None,
            channels: None,
            sample_rate: None,
        }],
        video: Some(0),
        frames: Some(std::sync::Arc::new(frames)),
        browser_ready: false,
    };
    Local {
        path,
        input,
        probe,
        limits,
        work,
        links: Links {
            base: "/v/src/key/".into(),
            query: None,
        },
        _store: store,
    }
}

/// JPEG at `-q:v 1` against the reference decoded to RGB: at least this (measured 48 dB).
const JPEG_MIN_PSNR: f64 = 45.0;

/// frame/{n} for a spread of n equals the `select` reference: PNG scaled to 320 pixel-equal,
/// JPEG unscaled at least 45 dB; past the last frame 404; posters at 5 s and past the end.
fn frames_are_exact(sample: Sample) {
    let rt = runtime();
    let l = local(&rt, sample);
    let job = l.job();
    let count = l.probe.frames.as_ref().unwrap().pts.len();
    assert_eq!(
        count,
        video::frame_times(&l.path).len(),
        "{sample:?}: count"
    );
    let last = count - 1;
    for n in [0, 1, 49, 50, 51, 137, last] {
        let png = rt
            .block_on(frame::frame(&job, n as u64, Some(320), FrameFormat::Png))
            .unwrap();
        assert_eq!(&png[1..4], b"PNG", "{sample:?} {n}");
        let got = video::decode_to_rgb(&png);
        let want = video::reference_frame(&l.path, n as u64, Some(320));
        assert_eq!(
            (got.0, got.1),
            (want.0, want.1),
            "{sample:?} frame {n}: size"
        );
        assert!(
            got.2 == want.2,
            "{sample:?} frame {n}: png differs from the reference (psnr {:.1})",
            video::psnr(&got.2, &want.2)
        );
    }
    for n in [0, 137, last] {
        let jpg = rt
            .block_on(frame::frame(&job, n as u64, None, FrameFormat::Jpg))
            .unwrap();
        assert_eq!(&jpg[..2], [0xff, 0xd8], "{sample:?} {n}");
        let got = video::decode_to_rgb(&jpg);
        let want = video::reference_frame(&l.path, n as u64, None);
        assert_eq!(
            (got.0, got.1),
            (want.0, want.1),
            "{sample:?} frame {n}: size"
        );
        let db = video::psnr(&got.2, &want.2);
        assert!(db >= JPEG_MIN_PSNR, "{sample:?} frame {n}: jpg {db:.2} dB");
    }
    // Past the last frame.
    let err = rt
        .block_on(frame::frame(&job, count as u64, None, FrameFormat::Jpg))
        .unwrap_err();
    assert!(
        matches!(err, VideoError::NoSuchPart(_)),
        "{sample:?}: {err:?}"
    );
    // A poster past the end is the last frame; at 5 s, the frame shown then (t counts from
    // the format's start time, as ffmpeg's -ss does: 1.459 s on the TS sample, whose video
    // starts at 1.48 s; -0.007 s on the WebM).
    let times = video::frame_times(&l.path);
    let at_5 = times.partition_point(|t| *t <= l.probe.start_time + 5.0) - 1;
    for (t_ms, n) in [(3_600_000, last), (5_000, at_5)] {
        let jpg = rt.block_on(frame::poster(&job, t_ms, Some(320))).unwrap();
        let got = video::decode_to_rgb(&jpg);
        let want = video::reference_frame(&l.path, n as u64, Some(320));
        let db = video::psnr(&got.2, &want.2);
        assert!(
            db >= JPEG_MIN_PSNR,
            "{sample:?} poster {t_ms} ms (frame {n}): {db:.2} dB"
        );
    }
    assert_eq!(l.work.fence.running(), 0);
}

#[test]
fn frames_are_exact_faststart() {
    frames_are_exact(Sample::H264Faststart);
}

#[test]
fn frames_are_exact_moov_at_end() {
    frames_are_exact(Sample::MoovAtEnd);
}

#[test]
fn frames_are_exact_hevc() {
    frames_are_exact(Sample::Hevc);
}

#[test]
fn frames_are_exact_vp9_webm() {
    frames_are_exact(Sample::Vp9Webm);
}

#[test]
fn frames_are_exact_vfr() {
    frames_are_exact(Sample::Vfr);
}

#[test]
fn frames_are_exact_rotated() {
    frames_are_exact(Sample::Rotated);
}

#[test]
fn frames_are_exact_mpegts() {
    frames_are_exact(Sample::Mpegts);
}

#[test]
fn frame_width_over_the_limit_is_400() {
    let rt = runtime();
    let l = local(&rt, Sample::H264Faststart);
    let job = l.job();
    let err = rt
        .block_on(frame::frame(
            &job,
            3,
            Some(l.limits.max_output_width + 1),
            FrameFormat::Png,
        ))
        .unwrap_err();
    assert!(
        matches!(err, VideoError::BadParameter { param: "w", .. }),
        "{err:?}"
    );
    // Wider than the video: the frame unscaled, never upscaled.
    let png = rt
        .block_on(frame::frame(&job, 3, Some(2000), FrameFormat::Png))
        .unwrap();
    assert_eq!(video::decode_to_rgb(&png).0, 640);
}

// ---- through the running gateway ----

use bucketgate::config::SourceConfig;
use http::StatusCode;

use crate::support::origin::CountingProxy;
use crate::support::{self, GatewayBuilder};

/// Every sample in an fs source: `frame/{n}.png?w=320` equals the reference for a spread of n,
/// the frame after the last is 404, a poster past the end is the last frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_frames_of_every_sample_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    for s in Sample::ALL {
        let bytes = std::fs::read(video::sample(s)).unwrap();
        support::write_file(dir.path(), s.file_name(), &bytes);
    }
    let gw = GatewayBuilder::new()
        .source("local", support::fs_source(dir.path()))
        .start()
        .await;
    for s in Sample::ALL {
        let path = video::sample(s);
        let count = video::frame_times(&path).len() as u64;
        let base = format!("/v/local/{}", s.file_name());
        for n in [0, 50, 137, count - 1] {
            let r = gw
                .client()
                .get(gw.url(&format!("{base}/frame/{n}.png?w=320")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{s:?} frame {n}");
            assert_eq!(r.headers()["content-type"], "image/png");
            let got = video::decode_to_rgb(&r.bytes().await.unwrap());
            let want = video::reference_frame(&path, n, Some(320));
            assert_eq!((got.0, got.1), (want.0, want.1), "{s:?} frame {n}");
            assert!(got.2 == want.2, "{s:?} frame {n}: pixels differ");
        }
        let r = gw
            .client()
            .get(gw.url(&format!("{base}/frame/{count}.jpg")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{s:?}");
        let r = gw
            .client()
            .get(gw.url(&format!("{base}/poster.jpg?t=3600&w=320")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{s:?} poster");
        assert_eq!(r.headers()["content-type"], "image/jpeg");
        let got = video::decode_to_rgb(&r.bytes().await.unwrap());
        let want = video::reference_frame(&path, count - 1, Some(320));
        let db = video::psnr(&got.2, &want.2);
        assert!(db >= JPEG_MIN_PSNR, "{s:?} poster past the end: {db:.2} dB");
    }
}

/// A poster of a faststart MP4 in S3 (s3s-fs, SigV4 checked) through a proxy that logs every
/// GET: every read is ranged and together they are a small part of the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_poster_from_s3_reads_only_ranges() {
    // 120 s of 640x360 (about 27 MB with ultrafast): a poster at 5 s needs the index and the
    // data of 4-5 s (about 1 MB in); each child's reads run ahead in 1 MiB ranges, so what is
    // read is a few MiB whatever the object's size (measured 5.2 MB here of a 9 MB 40 s file).
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("long.mp4");
    video::ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=25:duration=120",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "50",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
        ]
        .map(String::from)
        .into_iter()
        .chain([file.display().to_string()])
        .collect::<Vec<_>>(),
    );
    let object = std::fs::read(&file).unwrap();
    let size = object.len() as u64;
    assert!(size > 20 << 20, "sample of {size} bytes");
    let store = support::s3::S3sFs::start("AKIDVIDEO", "video-secret-0123456789").await;
    store.create_bucket("bucket").await;
    store
        .put("bucket", "clips/long.mp4", &object, Some("video/mp4"))
        .await;
    let proxy = CountingProxy::start(&store.endpoint).await;
    let mut source = store.source("bucket", "clips/");
    source.endpoint = Some(proxy.endpoint.clone());
    let gw = GatewayBuilder::new()
        .source("s3", SourceConfig::S3(source))
        .start()
        .await;
    let r = gw
        .client()
        .get(gw.url("/v/s3/long.mp4/poster.jpg?t=5&w=320"))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.bytes().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let got = video::decode_to_rgb(&body);
    let want = video::reference_frame(&file, 125, Some(320));
    let db = video::psnr(&got.2, &want.2);
    assert!(db >= JPEG_MIN_PSNR, "poster at 5 s: {db:.2} dB");

    let gets = proxy.gets_of("clips/long.mp4");
    assert!(!gets.is_empty());
    let mut read = 0;
    for g in &gets {
        assert!(g.range.is_some(), "a GET without Range: {g:?}");
        let (a, b) = g.span(size).unwrap();
        read += b - a + 1;
    }
    assert!(
        read * 4 < size,
        "{} GETs read {read} of {size} bytes: {:?}",
        gets.len(),
        gets.iter().map(|g| g.range.clone()).collect::<Vec<_>>()
    );
}
