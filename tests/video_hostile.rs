//! Hostile video input (issue 14): files that are not what their names say, keys shaped like
//! ffmpeg options or protocols, broken and lying MP4s, and job floods, against the real fence,
//! input and probe with real ffmpeg/ffprobe; an S3 source (s3s-fs) read only by ranges.
//!
//! Most call the library (`bucketgate::video`) directly, to see what a status cannot show (the
//! argument list, the exact error kind, the ranges read); the last two go through the running
//! gateway for the statuses (415, 422, 413, 200; 503 + Retry-After in a flood). Each checks that
//! nothing else was opened and that no child or temp dir is left.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bucketgate::backend::fs::FsBackend;
use bucketgate::backend::s3::S3Backend;
use bucketgate::backend::{AnyBackend, Backend, Caller, OwnedCaller};
use bucketgate::image::source::ObjectBytes;
use bucketgate::video::fence::Fence;
use bucketgate::video::input::{Input, Origin};
use bucketgate::video::probe::{self, VideoProbe};
use bucketgate::video::request::FrameFormat;
use bucketgate::video::{Container, Job, Links, Tools, VideoError, VideoLimits, Work, frame, web};

use crate::support;
use crate::support::origin::CountingProxy;
use crate::support::s3::S3sFs;
use crate::support::video::{self, Sample};

/// A hang guard, far above any job's real time: a test past it failed to bound a job.
const GUARD: Duration = Duration::from_secs(120);

fn fence(jobs: usize, queue: usize) -> Fence {
    Fence::new(Tools::find("ffmpeg", "ffprobe"), jobs, queue)
}

/// An fs source over a fresh dir holding `files`.
fn fs_source(files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, Arc<AnyBackend>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let backend = Arc::new(AnyBackend::Fs(FsBackend::new(dir.path()).unwrap()));
    (dir, backend)
}

async fn object(backend: &Arc<AnyBackend>, key: &str) -> ObjectBytes {
    let meta = backend.head(key, Caller::Gateway).await.unwrap();
    ObjectBytes::new(
        Arc::clone(backend),
        key.to_owned(),
        Arc::new(meta),
        OwnedCaller::Gateway,
        None,
        1 << 30,
    )
}

/// Probe `key` as the route does (its file for an fs source), within the guard.
async fn probe_fs(
    backend: &Arc<AnyBackend>,
    key: &str,
    fence: &Fence,
) -> Result<VideoProbe, VideoError> {
    let input = Input::of_object(backend, key, object(backend, key).await).await?;
    tokio::time::timeout(GUARD, probe::probe(&input, fence, &VideoLimits::default()))
        .await
        .expect("the probe was not bounded")
}

/// Probe `key`'s bytes through the loopback feed (as an S3 object is).
async fn probe_fed(
    backend: &Arc<AnyBackend>,
    key: &str,
    fence: &Fence,
) -> Result<VideoProbe, VideoError> {
    let bytes = object(backend, key).await;
    let size = bytes.size();
    let input = Input::new(Origin::Object(bytes), size);
    tokio::time::timeout(GUARD, probe::probe(&input, fence, &VideoLimits::default()))
        .await
        .expect("the probe was not bounded")
}

/// What a [`Job`] needs besides its input and probe: a work area over a fence with its store
/// in a fresh temp dir, the default limits, links under `base`.
struct JobParts {
    work: Work,
    limits: VideoLimits,
    links: Links,
    _store: tempfile::TempDir,
}

impl JobParts {
    fn new(fence: Fence, base: &str) -> JobParts {
        let store = tempfile::tempdir().unwrap();
        let work = Work::new(
            fence,
            web::Store::new(store.path().to_path_buf(), 1 << 30).unwrap(),
            4,
        );
        JobParts {
            work,
            limits: VideoLimits::default(),
            links: Links {
                base: base.into(),
                query: None,
            },
            _store: store,
        }
    }

    fn job<'a>(&'a self, input: &'a Input, probe: &'a VideoProbe) -> Job<'a> {
        Job {
            input,
            probe,
            limits: &self.limits,
            work: &self.work,
            links: &self.links,
        }
    }
}

fn read(sample: Sample) -> Vec<u8> {
    std::fs::read(video::sample(sample)).unwrap()
}

fn ffmpeg_to(path: &Path, args: &[&str]) -> Vec<u8> {
    let mut all: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    all.push(path.to_str().unwrap().to_owned());
    video::ffmpeg(&all);
    std::fs::read(path).unwrap()
}

/// A listener that must never be connected to: disguised files point at it.
struct Bait(TcpListener);

impl Bait {
    fn new() -> Bait {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Bait(listener)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.0.local_addr().unwrap())
    }

    /// Nobody connected (every child has exited, so a connection would be queued by now).
    fn untouched(&self) -> bool {
        matches!(self.0.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

fn assert_kind(result: &Result<VideoProbe, VideoError>, want: &str, case: &str) {
    let got = match result {
        Err(VideoError::Unsupported(_)) => "415",
        Err(VideoError::Corrupt(_)) => "422",
        Err(VideoError::TooLarge(_)) => "413",
        Err(_) => "other error",
        Ok(_) => "ok",
    };
    assert_eq!(got, want, "{case}: {result:?}");
}

#[tokio::test]
async fn hostile_playlists_and_concat_lists_named_mp4_are_415_and_open_nothing() {
    let bait = Bait::new();
    let other = video::sample(Sample::H264Faststart);
    let other = other.to_str().unwrap();
    let files = [
        (
            "x.mp4",
            format!("#EXTM3U\n#EXT-X-TARGETDURATION:12\n#EXTINF:12,\n{other}\n#EXT-X-ENDLIST\n"),
        ),
        (
            "remote.mp4",
            format!(
                "#EXTM3U\n#EXT-X-TARGETDURATION:12\n#EXTINF:12,\n{}\n#EXT-X-ENDLIST\n",
                bait.url("seg.ts")
            ),
        ),
        (
            "list.mp4",
            format!(
                "ffconcat version 1.0\nfile '{other}'\nfile '{}'\n",
                bait.url("b.mp4")
            ),
        ),
        ("passwd.mp4", "file:/etc/passwd\n".to_owned()),
        ("sub.mp4", format!("subfile,,start,0,end,0,,:{other}")),
    ];
    let files: Vec<(&str, Vec<u8>)> = files
        .iter()
        .map(|(k, v)| (*k, v.clone().into_bytes()))
        .collect();
    let (_dir, backend) = fs_source(&files);
    let fence = fence(2, 8);
    for (key, _) in &files {
        assert_kind(&probe_fs(&backend, key, &fence).await, "415", key);
        assert_kind(&probe_fed(&backend, key, &fence).await, "415", key);
    }
    assert!(
        bait.untouched(),
        "a disguised file made a child connect elsewhere"
    );
    assert_eq!(fence.running(), 0);
}

#[tokio::test]
async fn hostile_keys_shaped_like_options_or_protocols_name_only_their_own_file() {
    // The keys hold a WebM; the files their words would name (`a`, `b`, `x.mp4`) hold an MP4:
    // reading anything but the key's own file shows as the wrong container.
    let webm = read(Sample::Vp9Webm);
    let mp4 = read(Sample::H264Faststart);
    let keys = [
        "-i",
        "-f",
        "a|b",
        "concat:a|b",
        "a:b",
        "file:x.mp4",
        "http:x.mp4",
        "-",
    ];
    let mut files: Vec<(&str, Vec<u8>)> = keys.iter().map(|k| (*k, webm.clone())).collect();
    files.extend([("a", mp4.clone()), ("b", mp4.clone()), ("x.mp4", mp4)]);
    let (_dir, backend) = fs_source(&files);
    let fence = fence(2, 8);
    for key in keys {
        let probe = probe_fs(&backend, key, &fence).await.unwrap();
        assert_eq!(probe.container, Container::Matroska, "{key}");
        assert_eq!(probe.format_name, "matroska,webm", "{key}");
        let v = &probe.streams[probe.video.unwrap()];
        assert_eq!(v.codec, "vp9", "{key}");
        // The arguments carry the canonical path behind `file:`, never the bare key.
        let input = Input::of_object(&backend, key, object(&backend, key).await)
            .await
            .unwrap();
        let opened = input.open(Container::Matroska).await.unwrap();
        let url = opened.args.last().unwrap().to_str().unwrap();
        assert!(
            url.starts_with("file:/") && url.ends_with(&format!("/{key}")),
            "{url}"
        );
        let mut want: Vec<std::ffi::OsString> = [
            "-protocol_whitelist",
            "file",
            "-format_whitelist",
            "matroska",
            "-f",
            "matroska",
            "-i",
        ]
        .map(std::ffi::OsString::from)
        .to_vec();
        want.push(url.into());
        assert_eq!(opened.args, want, "{key}");
    }
}

/// `bytes` with every `from` box type renamed `to` (a box hidden from the demuxer).
fn rename_box(bytes: &[u8], from: &[u8; 4], to: &[u8; 4]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut at = 0;
    while let Some(i) = out[at..].windows(4).position(|w| w == from) {
        out[at + i..at + i + 4].copy_from_slice(to);
        at += i + 4;
    }
    out
}

/// Offsets just past each occurrence of box type `kind`.
fn boxes(bytes: &[u8], kind: &[u8; 4]) -> Vec<usize> {
    bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| w == kind)
        .map(|(i, _)| i + 4)
        .collect()
}

#[tokio::test]
async fn hostile_truncated_and_indexless_mp4s_are_422_in_bounded_time() {
    let moov_at_end = read(Sample::MoovAtEnd);
    let faststart = read(Sample::H264Faststart);
    let files = vec![
        ("cut-end.mp4", moov_at_end[..moov_at_end.len() / 2].to_vec()),
        ("no-moov.mp4", rename_box(&moov_at_end, b"moov", b"free")),
        ("no-moov-fast.mp4", rename_box(&faststart, b"moov", b"free")),
        ("head-only.mp4", faststart[..64].to_vec()),
        ("empty-ish.mp4", b"\x00\x00\x00\x08ftyp".to_vec()),
    ];
    let (_dir, backend) = fs_source(&files);
    let fence = fence(2, 8);
    for (key, _) in &files {
        assert_kind(&probe_fs(&backend, key, &fence).await, "422", key);
        assert_kind(&probe_fed(&backend, key, &fence).await, "422", key);
    }
    assert_eq!(fence.running(), 0);
}

#[tokio::test]
async fn hostile_faststart_mp4_cut_in_half_probes_but_frames_past_the_cut_are_422() {
    let faststart = read(Sample::H264Faststart);
    let (_dir, backend) = fs_source(&[("cut.mp4", faststart[..faststart.len() / 2].to_vec())]);
    let fence = fence(2, 8);
    // The index is whole (it is in front), so the description stands.
    let probe = probe_fs(&backend, "cut.mp4", &fence).await.unwrap();
    let frames = probe.frames.clone().unwrap();
    let last = frames.pts.len() as u64 - 1;
    let parts = JobParts::new(fence, "/v/s/cut.mp4/");
    let input = Input::of_object(&backend, "cut.mp4", object(&backend, "cut.mp4").await)
        .await
        .unwrap();
    let job = parts.job(&input, &probe);
    let early = frame::frame(&job, 1, Some(64), FrameFormat::Jpg).await;
    assert!(early.is_ok(), "{early:?}");
    let late = tokio::time::timeout(GUARD, frame::frame(&job, last, Some(64), FrameFormat::Jpg))
        .await
        .unwrap();
    assert!(matches!(late, Err(VideoError::Corrupt(_))), "{late:?}");
}

#[tokio::test]
async fn hostile_declared_sizes_and_durations_are_413_and_zero_sizes_422() {
    let dir = tempfile::tempdir().unwrap();
    // MJPEG in MOV: the picture size is the container's (stsd) and each frame's (SOF0).
    let mjpeg = ffmpeg_to(
        &dir.path().join("mj.mov"),
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=1:size=64x48:rate=10",
            "-c:v",
            "mjpeg",
        ],
    );
    let sized = |w: u16, h: u16| {
        let mut b = mjpeg.clone();
        for at in boxes(&b, b"jpeg") {
            // VisualSampleEntry: reserved 6, data ref 2, version 2, revision 2, vendor 4,
            // temporal and spatial quality 8, then width and height.
            b[at + 24..at + 26].copy_from_slice(&w.to_be_bytes());
            b[at + 26..at + 28].copy_from_slice(&h.to_be_bytes());
        }
        let sofs: Vec<usize> = b
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w == &[0xFF, 0xC0])
            .map(|(i, _)| i)
            .collect();
        for i in sofs {
            b[i + 5..i + 7].copy_from_slice(&h.to_be_bytes());
            b[i + 7..i + 9].copy_from_slice(&w.to_be_bytes());
        }
        b
    };
    // mvhd, mdhd and tkhd durations (version 0) set to 0xF0000000 ticks: weeks.
    let mut long = read(Sample::H264Faststart);
    for (kind, skip) in [(b"mvhd", 16), (b"mdhd", 16), (b"tkhd", 20)] {
        for at in boxes(&long.clone(), kind) {
            assert_eq!(long[at], 0, "version 0 boxes");
            long[at + skip..at + skip + 4].copy_from_slice(&0xF000_0000u32.to_be_bytes());
        }
    }
    // An exotic codec (FFV1) in Matroska.
    let ffv1 = ffmpeg_to(
        &dir.path().join("ffv1.mkv"),
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=1:size=64x48:rate=10",
            "-c:v",
            "ffv1",
        ],
    );
    let files = vec![
        ("huge.mov", sized(16000, 16000)),
        ("wide.mov", sized(12000, 48)),
        ("zero.mov", sized(0, 0)),
        ("long.mp4", long),
        ("ffv1.mkv", ffv1),
    ];
    let (_dir, backend) = fs_source(&files);
    let fence = fence(2, 8);
    for (key, want) in [
        ("huge.mov", "413"),
        ("wide.mov", "413"),
        ("zero.mov", "422"),
        ("long.mp4", "413"),
        ("ffv1.mkv", "415"),
    ] {
        let result = probe_fs(&backend, key, &fence).await;
        assert_kind(&result, want, key);
        let message = result.unwrap_err().to_string();
        let names = match key {
            "huge.mov" => "16000x16000",
            "wide.mov" => "12000x48",
            "zero.mov" => "picture size",
            "long.mp4" => "longer than the limit",
            _ => "ffv1",
        };
        assert!(message.contains(names), "{key}: {message}");
    }
    assert_eq!(fence.running(), 0);
}

/// Live ffmpeg/ffprobe children of this process whose command line holds `marker`.
fn children_marked(marker: &str) -> usize {
    let me = std::process::id().to_string();
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if !(comm == "ffmpeg" || comm == "ffprobe") || ppid != Some(me.as_str()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_flood_of_frame_jobs_never_runs_more_than_the_limit() {
    let (dir, backend) = fs_source(&[("flood.mp4", read(Sample::MoovAtEnd))]);
    let marker = dir
        .path()
        .canonicalize()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let temp_root = tempfile::tempdir().unwrap();
    let fence = fence(2, 2).with_temp_root(temp_root.path().to_path_buf());
    let probe = Arc::new(probe_fs(&backend, "flood.mp4", &fence).await.unwrap());
    let store_dir = tempfile::tempdir().unwrap();
    let work = Arc::new(Work::new(
        fence,
        web::Store::new(store_dir.path().to_path_buf(), 1 << 30).unwrap(),
        4,
    ));
    let input = Arc::new(
        Input::of_object(&backend, "flood.mp4", object(&backend, "flood.mp4").await)
            .await
            .unwrap(),
    );

    // Count the children from another thread while the flood runs.
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (stop, most, marker) = (Arc::clone(&stop), Arc::clone(&most), marker.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                most.fetch_max(children_marked(&marker), Ordering::SeqCst);
                std::thread::yield_now();
            }
        })
    };

    let mut jobs = Vec::new();
    for n in 0..16u64 {
        let (input, probe, work) = (Arc::clone(&input), Arc::clone(&probe), Arc::clone(&work));
        jobs.push(tokio::spawn(async move {
            let limits = VideoLimits::default();
            let links = Links {
                base: "/v/s/flood.mp4/".into(),
                query: None,
            };
            let job = Job {
                input: &input,
                probe: &probe,
                limits: &limits,
                work: &work,
                links: &links,
            };
            frame::frame(&job, n * 17, Some(64), FrameFormat::Jpg).await
        }));
    }
    let (mut made, mut busy) = (0, 0);
    for job in jobs {
        match tokio::time::timeout(GUARD, job).await.unwrap().unwrap() {
            Ok(jpeg) => {
                assert!(jpeg.starts_with(&[0xFF, 0xD8]));
                made += 1;
            }
            Err(VideoError::Busy) => busy += 1,
            Err(e) => panic!("a flooded job failed otherwise: {e:?}"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    assert!(made >= 2, "made {made}");
    assert!(
        busy >= 1,
        "16 jobs against 2 slots and 2 queued: some must be refused"
    );
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} children at once, the limit is 2");
    assert!(most >= 1, "the watcher saw no child at all");
    assert_eq!(work.fence.running(), 0);
    assert_eq!(children_marked(&marker), 0, "children left after the flood");
    let left: Vec<PathBuf> = std::fs::read_dir(temp_root.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "temp dirs left: {left:?}");
}

#[tokio::test]
async fn hostile_s3_source_is_read_by_ranges_never_whole_for_a_poster() {
    // 40 s of noisy 640x360 (a few MB): big enough that a poster's ranges are a fraction of it.
    let dir = tempfile::tempdir().unwrap();
    let bytes = ffmpeg_to(
        &dir.path().join("big.mp4"),
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=25:duration=40,noise=alls=40:allf=t",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "50",
            "-b:v",
            "2M",
            "-movflags",
            "+faststart",
        ],
    );
    let size = bytes.len() as u64;
    assert!(size > 6 << 20, "sample only {size} bytes");
    let store = S3sFs::start("AKIDVIDEOHOSTILE", "video-hostile-secret").await;
    store.create_bucket("videos").await;
    store
        .put("videos", "cam/big.mp4", &bytes, Some("video/mp4"))
        .await;
    let proxy = CountingProxy::start(&store.endpoint).await;
    let mut source = store.source("videos", "");
    source.endpoint = Some(proxy.endpoint.clone());
    let backend = Arc::new(AnyBackend::S3(
        S3Backend::new(&source, &support::test_limits())
            .await
            .unwrap(),
    ));
    let key = "cam/big.mp4";
    let input = Input::of_object(&backend, key, object(&backend, key).await)
        .await
        .unwrap();
    assert!(matches!(input.origin(), Origin::Object(_)));
    let fence = fence(2, 8);
    let probe = probe::probe(&input, &fence, &VideoLimits::default())
        .await
        .unwrap();
    assert_eq!(probe.frames.as_ref().unwrap().pts.len(), 1000);
    let parts = JobParts::new(fence, "/v/s/cam%2Fbig.mp4/");
    let job = parts.job(&input, &probe);
    let poster = frame::poster(&job, 2_000, Some(160)).await.unwrap();
    assert!(poster.starts_with(&[0xFF, 0xD8]));

    let gets = proxy.gets_of(key);
    assert!(!gets.is_empty());
    let mut fetched = 0;
    for get in &gets {
        let (start, end) = get
            .span(size)
            .unwrap_or_else(|| panic!("a GET without a Range: {get:?}"));
        assert!(
            end - start + 1 < size,
            "the whole object was asked for: {get:?}"
        );
        fetched += end - start + 1;
    }
    eprintln!(
        "s3 poster: {} ranged GETs, {fetched} of {size} bytes read: {:?}",
        gets.len(),
        gets.iter().map(|g| g.range.clone()).collect::<Vec<_>>()
    );
    assert!(
        fetched < size / 2,
        "read {fetched} of {size} bytes for a probe and a poster at 2 s: {:?}",
        gets.iter().map(|g| g.range.clone()).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// Through the running gateway (fs source `local`): the statuses the pipeline gives these
// errors, and the gateway still serving afterwards.

use crate::support::{GatewayBuilder, TestGateway};

async fn status_of(gw: &TestGateway, path: &str) -> (http::StatusCode, http::HeaderMap, String) {
    let r = gw.client().get(gw.url(path)).send().await.unwrap();
    let (status, headers) = (r.status(), r.headers().clone());
    (status, headers, r.text().await.unwrap_or_default())
}

fn v_path(key: &str, tail: &str) -> String {
    let key = percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC);
    format!("/v/local/{key}/{tail}")
}

#[tokio::test]
async fn hostile_inputs_through_the_gateway_get_4xx_and_it_keeps_serving() {
    let bait = Bait::new();
    let dir = tempfile::tempdir().unwrap();
    let mp4 = read(Sample::H264Faststart);
    let moov_at_end = read(Sample::MoovAtEnd);
    let mut long = mp4.clone();
    for (kind, skip) in [(b"mvhd", 16), (b"mdhd", 16), (b"tkhd", 20)] {
        for at in boxes(&long.clone(), kind) {
            long[at + skip..at + skip + 4].copy_from_slice(&0xF000_0000u32.to_be_bytes());
        }
    }
    let playlist = format!(
        "#EXTM3U\n#EXT-X-TARGETDURATION:12\n#EXTINF:12,\n{}\n#EXTINF:12,\nclip.mp4\n#EXT-X-ENDLIST\n",
        bait.url("seg.ts")
    );
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("clip.mp4", mp4.clone()),
        ("x.mp4", playlist.into_bytes()),
        (
            "list.mp4",
            b"ffconcat version 1.0\nfile 'clip.mp4'\n".to_vec(),
        ),
        ("-i", mp4.clone()),
        ("concat:a|b", mp4.clone()),
        ("a:b", mp4),
        ("cut.mp4", moov_at_end[..moov_at_end.len() / 2].to_vec()),
        ("long.mp4", long),
    ];
    for (key, bytes) in &files {
        std::fs::write(dir.path().join(key), bytes).unwrap();
    }
    let gw = GatewayBuilder::new()
        .source("local", support::fs_source(dir.path()))
        .start()
        .await;
    for (key, want) in [
        ("x.mp4", 415),
        ("list.mp4", 415),
        ("cut.mp4", 422),
        ("long.mp4", 413),
        ("-i", 200),
        ("concat:a|b", 200),
        ("a:b", 200),
        ("clip.mp4", 200),
    ] {
        let (status, _, body) = status_of(&gw, &v_path(key, "info.json")).await;
        assert_eq!(status.as_u16(), want, "{key}: {body}");
        assert!(
            !body.contains(dir.path().to_str().unwrap()),
            "{key}: a path in {body}"
        );
    }
    let (status, _, _) = status_of(&gw, &v_path("clip.mp4", "frame/30.jpg?w=64")).await;
    assert_eq!(status, 200);
    assert!(bait.untouched());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_flood_through_the_gateway_gets_503_with_retry_after_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flood.mp4"), read(Sample::MoovAtEnd)).unwrap();
    let marker = dir
        .path()
        .canonicalize()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let gw = GatewayBuilder::new()
        .source("local", support::fs_source(dir.path()))
        .tweak(|c| {
            c.video.jobs = 2;
            c.video.queue = 2;
        })
        .start()
        .await;
    let (status, _, body) = status_of(&gw, &v_path("flood.mp4", "info.json")).await;
    assert_eq!(status, 200, "{body}");

    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (stop, most, marker) = (Arc::clone(&stop), Arc::clone(&most), marker.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                most.fetch_max(children_marked(&marker), Ordering::SeqCst);
                std::thread::yield_now();
            }
        })
    };
    let gw = Arc::new(gw);
    let mut requests = Vec::new();
    for n in 0..16u64 {
        let gw = Arc::clone(&gw);
        requests.push(tokio::spawn(async move {
            status_of(
                &gw,
                &v_path("flood.mp4", &format!("frame/{}.jpg?w=64", n * 17)),
            )
            .await
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for r in requests {
        let (status, headers, body) = tokio::time::timeout(GUARD, r).await.unwrap().unwrap();
        match status.as_u16() {
            200 => ok += 1,
            503 => {
                assert!(
                    headers.contains_key("retry-after"),
                    "503 without Retry-After: {body}"
                );
                busy += 1;
            }
            other => panic!("a flooded request got {other}: {body}"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    assert!(ok >= 2 && busy >= 1, "{ok} made, {busy} refused");
    let most = most.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&most),
        "{most} children at once, the limit is 2"
    );
    assert_eq!(children_marked(&marker), 0, "children left after the flood");
    // Still serving.
    let (status, _, _) = status_of(&gw, &v_path("flood.mp4", "frame/1.jpg")).await;
    assert_eq!(status, 200);
}
