//! `web.mp4` and the sprite (issue 14): H.264/AAC sources are remuxed (the video packets
//! unchanged, index in front, duration and rotation kept), others transcoded to H.264 yuv420p +
//! AAC; concurrent requests share one job and all get the whole file; the sprite's cells are
//! the nearest keyframes and its track names each cell.
//!
//! These call the library (`bucketgate::video`) with the real fence, probe and ffmpeg on the
//! synthetic samples.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bucketgate::cache::key::{CacheKey, ObjectId, Partition};
use bucketgate::video::fence::Fence;
use bucketgate::video::input::{Input, Origin};
use bucketgate::video::probe::{self, VideoProbe};
use bucketgate::video::web::{self, Rendition, Store};
use bucketgate::video::{Job, Links, Tools, VideoLimits, Work, sprite};
use sha2::{Digest, Sha256};

use crate::support::browser::Browser;
use crate::support::video::{self, Sample};

/// The real machinery over one sample, with a store in a temp dir.
struct Rig {
    work: Work,
    input: Input,
    probe: VideoProbe,
    limits: VideoLimits,
    links: Links,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new(sample: Sample) -> Rig {
        let path = video::sample(sample);
        let dir = tempfile::tempdir().unwrap();
        let work = Work::new(
            Fence::new(Tools::find("ffmpeg", "ffprobe"), 2, 16),
            Store::new(dir.path().join("renditions"), 1 << 30).unwrap(),
            16,
        );
        let size = std::fs::metadata(&path).unwrap().len();
        let input = Input::new(Origin::File(path.clone()), size);
        let limits = VideoLimits::default();
        let probe = probe::probe(&input, &work.fence, &limits).await.unwrap();
        Rig {
            work,
            input,
            probe,
            limits,
            links: Links {
                base: "/v/src/clip.mp4/".into(),
                query: Some("token=t0k".into()),
            },
            path,
            _dir: dir,
        }
    }

    fn job(&self) -> Job<'_> {
        Job {
            input: &self.input,
            probe: &self.probe,
            limits: &self.limits,
            work: &self.work,
            links: &self.links,
        }
    }

    async fn web_mp4(&self) -> Arc<Rendition> {
        web::web_mp4(&self.job(), &entry()).await.unwrap()
    }
}

fn entry() -> CacheKey {
    CacheKey::new(
        ObjectId::new("src", "clip", Partition::Gateway),
        "v1",
        "web.mp4",
    )
}

/// The rendition's bytes, written to a file for ffprobe.
fn save(r: &Rendition, dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut bytes = vec![0u8; r.len as usize];
    let mut at = 0;
    while at < bytes.len() {
        let n = r.read_at(&mut bytes[at..], at as u64).unwrap();
        assert!(n > 0, "short rendition");
        at += n;
    }
    let path = dir.join("web.mp4");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

/// The top-level box types, walked by their headers (independently of the gateway's walk).
fn top_boxes(bytes: &[u8]) -> Vec<String> {
    let mut kinds = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let size32 = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as u64;
        let size = match size32 {
            1 => u64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap()),
            0 => (bytes.len() - at) as u64,
            n => n,
        };
        kinds.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
        assert!(size >= 8, "bad box size");
        at += size as usize;
    }
    assert_eq!(at, bytes.len(), "boxes cover the file");
    kinds
}

fn assert_moov_first(bytes: &[u8]) {
    let kinds = top_boxes(bytes);
    assert_eq!(kinds.first().map(String::as_str), Some("ftyp"), "{kinds:?}");
    let moov = kinds.iter().position(|k| k == "moov").expect("moov");
    let mdat = kinds.iter().position(|k| k == "mdat").expect("mdat");
    assert!(moov < mdat, "moov before mdat: {kinds:?}");
}

/// ffprobe's `-show_entries` of `path` as `key=value` lines.
fn ffprobe(path: &Path, entries: &str, select: &str) -> String {
    let out = video::ffprobe(
        path,
        &[
            "-select_streams",
            select,
            "-show_entries",
            entries,
            "-of",
            "default=nw=1",
        ],
    );
    String::from_utf8(out).unwrap()
}

fn field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
}

fn duration(path: &Path) -> f64 {
    field(&ffprobe(path, "format=duration", "v:0"), "duration")
        .unwrap()
        .parse()
        .unwrap()
}

/// A hash of the video stream's packets (data only), as `-c copy` reads them.
fn video_packets_hash(path: &Path) -> String {
    let out = video::ffmpeg(&[
        "-i".into(),
        path.display().to_string(),
        "-map".into(),
        "0:v:0".into(),
        "-c".into(),
        "copy".into(),
        "-f".into(),
        "streamhash".into(),
        "-hash".into(),
        "sha256".into(),
        "-".into(),
    ]);
    String::from_utf8(out).unwrap()
}

async fn remux_case(sample: Sample) {
    let rig = Rig::new(sample).await;
    let r = rig.web_mp4().await;
    assert_eq!(r.content_type, "video/mp4");
    let tmp = tempfile::tempdir().unwrap();
    let (out, bytes) = save(&r, tmp.path());
    assert_moov_first(&bytes);
    assert_eq!(
        video_packets_hash(&out),
        video_packets_hash(&rig.path),
        "the H.264 packets are copied, not re-encoded"
    );
    let streams = ffprobe(&out, "stream=codec_name", "a:0");
    assert_eq!(field(&streams, "codec_name").as_deref(), Some("aac"));
    let (a, b) = (duration(&out), duration(&rig.path));
    assert!((a - b).abs() < 0.05, "duration kept: {a} vs {b}");
    assert_eq!(rig.work.store.made(), 1);
}

#[tokio::test]
async fn web_mp4_of_faststart_h264_is_a_copy_with_moov_first() {
    remux_case(Sample::H264Faststart).await;
}

#[tokio::test]
async fn web_mp4_of_moov_at_end_h264_is_a_copy_with_moov_first() {
    remux_case(Sample::MoovAtEnd).await;
}

#[tokio::test]
async fn web_mp4_of_a_rotated_phone_video_keeps_its_rotation() {
    let rig = Rig::new(Sample::Rotated).await;
    let r = rig.web_mp4().await;
    let tmp = tempfile::tempdir().unwrap();
    let (out, _) = save(&r, tmp.path());
    let rotation = |p: &Path| field(&ffprobe(p, "stream_side_data=rotation", "v:0"), "rotation");
    assert!(rotation(&rig.path).is_some(), "the sample is rotated");
    assert_eq!(rotation(&out), rotation(&rig.path));
    assert_eq!(video_packets_hash(&out), video_packets_hash(&rig.path));
}

async fn transcode_case(sample: Sample) {
    let rig = Rig::new(sample).await;
    let r = rig.web_mp4().await;
    let tmp = tempfile::tempdir().unwrap();
    let (out, bytes) = save(&r, tmp.path());
    assert_moov_first(&bytes);
    let v = ffprobe(&out, "stream=codec_name,pix_fmt,width,height", "v:0");
    assert_eq!(field(&v, "codec_name").as_deref(), Some("h264"), "{v}");
    assert_eq!(field(&v, "pix_fmt").as_deref(), Some("yuv420p"), "{v}");
    assert_eq!(field(&v, "width").as_deref(), Some("640"), "{v}");
    assert_eq!(field(&v, "height").as_deref(), Some("360"), "{v}");
    let a = ffprobe(&out, "stream=codec_name", "a:0");
    assert_eq!(field(&a, "codec_name").as_deref(), Some("aac"), "{a}");
    // Every frame kept at its time.
    let (src, made) = (video::frame_times(&rig.path), video::frame_times(&out));
    assert_eq!(src.len(), made.len(), "frame count");
    let (a, b) = (duration(&out), duration(&rig.path));
    assert!((a - b).abs() < 0.1, "duration kept: {a} vs {b}");
    // And they are the same pictures (frame 100, loosely: an encode of an encode).
    let (_, _, want) = video::reference_frame(&rig.path, 100, None);
    let (_, _, got) = video::reference_frame(&out, 100, None);
    let db = video::psnr(&want, &got);
    assert!(db > 30.0, "frame 100 PSNR {db}");
}

#[tokio::test]
async fn web_mp4_of_hevc_is_transcoded_to_h264_yuv420p_and_aac() {
    transcode_case(Sample::Hevc).await;
}

#[tokio::test]
async fn web_mp4_of_vp9_webm_is_transcoded_to_h264_yuv420p_and_aac() {
    transcode_case(Sample::Vp9Webm).await;
}

#[tokio::test]
async fn web_mp4_concurrent_requests_share_one_job_and_get_the_whole_file() {
    let rig = Rig::new(Sample::Hevc).await;
    let job = rig.job();
    let key = entry();
    let calls = (0..4).map(|_| web::web_mp4(&job, &key));
    let made = futures_util::future::join_all(calls).await;
    let mut digests = Vec::new();
    for r in made {
        let r = r.unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let (_, bytes) = save(&r, tmp.path());
        assert_eq!(bytes.len() as u64, r.len);
        assert_moov_first(&bytes);
        digests.push(hex::encode(Sha256::digest(&bytes)));
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    assert_eq!(rig.work.store.made(), 1, "one child made it");
    // A later request is served from the store.
    let again = rig.web_mp4().await;
    let tmp = tempfile::tempdir().unwrap();
    let (_, bytes) = save(&again, tmp.path());
    assert_eq!(hex::encode(Sha256::digest(&bytes)), digests[0]);
    assert_eq!(rig.work.store.made(), 1);
    assert_eq!(rig.work.fence.running(), 0, "no child left");
}

#[tokio::test]
async fn sprite_cells_are_the_nearest_keyframes_in_a_grid_its_track_names() {
    let rig = Rig::new(Sample::H264Faststart).await;
    let jpeg = sprite::sprite(&rig.job()).await.unwrap();
    let (w, h, rgb) = video::decode_to_rgb(&jpeg);
    // 12 s: a cell a second, 10 to a row, 160x90.
    assert_eq!((w, h), (1600, 180));
    let (cw, ch) = (160usize, 90usize);
    // The sample's keyframes (every 50 frames), as ffmpeg decodes and scales them.
    let keyframes: Vec<Vec<u8>> = (0..6u64)
        .map(|k| {
            let (rw, rh, rgb) = video::reference_frame(&rig.path, k * 50, Some(160));
            assert_eq!((rw as usize, rh as usize), (cw, ch));
            rgb
        })
        .collect();
    for cell in [0usize, 1, 2, 3, 7, 11] {
        // Keyframes every 2 s (50 frames); at an odd second both neighbours are 1 s away
        // and the earlier is taken.
        let keyframe = cell / 2;
        let (x0, y0) = ((cell % 10) * cw, (cell / 10) * ch);
        let mut got = Vec::with_capacity(cw * ch * 3);
        for y in y0..y0 + ch {
            let at = (y * w as usize + x0) * 3;
            got.extend_from_slice(&rgb[at..at + cw * 3]);
        }
        // Loosely (a 160 px JPEG cell of a busy test pattern): clearly this keyframe, and
        // clearly not any other.
        let db = video::psnr(&keyframes[keyframe], &got);
        assert!(db > 20.0, "cell {cell} vs keyframe {keyframe}: PSNR {db}");
        for (other, rgb) in keyframes.iter().enumerate().filter(|(k, _)| *k != keyframe) {
            let not = video::psnr(rgb, &got);
            assert!(
                not < db - 5.0,
                "cell {cell}: keyframe {other} ({not} dB) about as near as {keyframe} ({db} dB)"
            );
        }
    }
    let vtt = sprite::vtt(&rig.job()).unwrap();
    assert!(vtt.starts_with("WEBVTT\n"));
    assert_eq!(vtt.matches(" --> ").count(), 12);
    assert!(vtt.contains(
        "00:00:11.000 --> 00:00:12.000\n/v/src/clip.mp4/sprite.jpg?token=t0k#xywh=160,90,160,90\n"
    ));
}

// Through the gateway: `/v/{source}/{key}/web.mp4`.

/// An fs source holding `samples` under their file names, and an `ffmpeg` that logs each run's
/// arguments (one line per run) before running the real one.
struct GatewayRig {
    data: tempfile::TempDir,
    runs: PathBuf,
}

impl GatewayRig {
    fn new(samples: &[Sample]) -> GatewayRig {
        let data = tempfile::tempdir().unwrap();
        for s in samples {
            std::fs::copy(video::sample(*s), data.path().join(s.file_name())).unwrap();
        }
        let real = Command::new("sh")
            .args(["-c", "command -v ffmpeg"])
            .output()
            .unwrap();
        let real = String::from_utf8(real.stdout).unwrap().trim().to_owned();
        assert!(real.starts_with('/'), "ffmpeg is installed (tests/run)");
        let runs = data.path().join("ffmpeg-runs.log");
        let wrapper = data.path().join("ffmpeg-logged");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{real}' \"$@\"\n",
                runs.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        GatewayRig { data, runs }
    }

    fn builder(&self) -> crate::support::GatewayBuilder {
        let wrapper = self.data.path().join("ffmpeg-logged");
        crate::support::GatewayBuilder::new()
            .source("local", crate::support::fs_source(self.data.path()))
            .tweak(move |c| {
                c.video.ffmpeg = wrapper.display().to_string();
            })
    }

    /// The ffmpeg runs that made a web.mp4.
    fn web_runs(&self) -> usize {
        std::fs::read_to_string(&self.runs)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("+faststart"))
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn web_mp4_concurrent_gets_share_one_transcode_and_ranges_come_from_the_store() {
    let rig = GatewayRig::new(&[Sample::Hevc]);
    let gw = rig.builder().start().await;
    let url = gw.url("/v/local/hevc.mp4/web.mp4");
    let client = gw.client();
    let gets = (0..4).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let r = client.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["content-type"], "video/mp4");
            let len: u64 = r.headers()["content-length"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let body = r.bytes().await.unwrap();
            assert_eq!(body.len() as u64, len, "the whole file, as announced");
            body
        })
    });
    let bodies: Vec<bytes::Bytes> = futures_util::future::join_all(gets)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let digests: Vec<String> = bodies
        .iter()
        .map(|b| hex::encode(Sha256::digest(b)))
        .collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    assert_moov_first(&bodies[0]);
    assert_eq!(
        rig.web_runs(),
        1,
        "one ffmpeg made web.mp4 for four requests"
    );

    // A range of the stored file.
    let r = client
        .get(&url)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1000-1999/{}", bodies[0].len()).as_str()
    );
    let part = r.bytes().await.unwrap();
    assert_eq!(&part[..], &bodies[0][1000..2000]);
    assert_eq!(rig.web_runs(), 1, "served from the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn browser_plays_web_mp4_cross_origin_with_a_token_and_seeks_by_ranges() {
    use serde_json::{Value, json};
    use std::time::{Duration, Instant};

    const SEEK_TO: f64 = 7.3;
    let rig = GatewayRig::new(&[Sample::MoovAtEnd]);
    let logs = tempfile::tempdir().unwrap();
    let audit_path = logs.path().join("audit.log");
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", page_listener.local_addr().unwrap());
    let (origin, audit) = (page_origin.clone(), audit_path.clone());
    let gw = rig
        .builder()
        .tweak(move |c| {
            c.cors = bucketgate::config::CorsConfig {
                allowed_origins: vec![origin.clone()],
                ..bucketgate::config::CorsConfig::default()
            };
            c.audit.destination = bucketgate::config::AuditDestination::File {
                path: audit.clone(),
                max_bytes: 16 * 1024 * 1024,
                keep: 1,
            };
        })
        .start()
        .await;
    let token = gw.token().expect("test token").to_owned();
    let src = gw.url(&format!("/v/local/moov-at-end.mp4/web.mp4?token={token}"));
    let page = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"></head><body>
<video id="v" crossorigin="anonymous" muted preload="auto" src="{src}"></video>
<script>
window.st = {{ meta: false, seeked: false, time: null, failure: null, duration: null }};
const v = document.getElementById("v");
v.addEventListener("loadedmetadata", () => {{
  window.st.meta = true;
  window.st.duration = v.duration;
  v.currentTime = {SEEK_TO};
}});
v.addEventListener("seeked", () => {{ window.st.seeked = true; window.st.time = v.currentTime; }});
v.addEventListener("error", () => {{ window.st.failure = String(v.error && v.error.code) + " " + String(v.error && v.error.message); }});
</script></body></html>"#
    );
    crate::support::browser::serve_page(
        page_listener,
        vec![("/", "text/html; charset=utf-8", page.into_bytes())],
    );

    let browser = Browser::start().await;
    browser.goto(&format!("{page_origin}/")).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let state: Value = loop {
        let state = browser
            .execute("return window.st || null;", json!([]))
            .await;
        // (Not named `error`: the WebDriver helper takes a value with that key for its own.)
        assert!(state["failure"].is_null(), "the video failed: {state}");
        if state["seeked"] == true {
            break state;
        }
        assert!(Instant::now() < deadline, "no seeked event: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let time = state["time"].as_f64().unwrap();
    assert!((time - SEEK_TO).abs() <= 0.1, "currentTime {time}: {state}");
    let duration = state["duration"].as_f64().unwrap();
    assert!((duration - 12.0).abs() < 0.1, "duration {duration}");
    drop(browser);

    // The browser read it by ranges (206), with the token from the query.
    let text = std::fs::read_to_string(&audit_path).unwrap();
    let ranged: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["key"] == "moov-at-end.mp4" && r["status"] == 206)
        .collect();
    assert!(
        !ranged.is_empty(),
        "no 206 for web.mp4 in the audit log:\n{text}"
    );
    assert!(ranged.iter().all(|r| r["range"].is_string()), "{ranged:?}");
    assert!(!text.contains(&token), "the token itself is never logged");
}
