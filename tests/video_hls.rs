//! HLS (`/v/{source}/{key}/hls/index.m3u8` and `hls/{n}.ts`): the plan against ffmpeg's own HLS
//! muxer, and the segments cut on demand.

use std::path::{Path, PathBuf};
use std::process::Command;

use bucketgate::config::Config;
use bucketgate::video::hls::{self, Segment};
use bucketgate::video::probe::FrameIndex;

use crate::support::video::{self, Sample};
use crate::support::{GatewayBuilder, TestGateway};

/// The frame index of `path` as ffprobe reads it (every packet of the first video stream):
/// presentation times ascending, keyframes by their number in that order; and the format's
/// duration.
fn ffprobe_index(path: &Path) -> (FrameIndex, f64) {
    let out = video::ffprobe(
        path,
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time,flags",
            "-of",
            "csv=p=0",
        ],
    );
    let mut packets: Vec<(f64, bool)> = String::from_utf8_lossy(&out)
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
    let out = video::ffprobe(
        path,
        &["-show_entries", "format=duration", "-of", "csv=p=0"],
    );
    let duration = String::from_utf8_lossy(&out)
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

// --- Through the gateway -------------------------------------------------------------------

/// A gateway over an fs source `vids` holding the samples, whose `[video] ffmpeg` is a wrapper
/// that appends its arguments to a log, one line per child, then runs the real ffmpeg: the
/// children a request ran are counted exactly.
pub(crate) struct HlsGateway {
    pub(crate) gw: TestGateway,
    _dir: tempfile::TempDir,
    runs: PathBuf,
}

impl HlsGateway {
    pub(crate) async fn start(samples: &[Sample], tweak: impl FnOnce(&mut Config)) -> HlsGateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        for s in samples {
            std::fs::copy(video::sample(*s), data.join(s.file_name())).expect("copy sample");
        }
        let runs = dir.path().join("ffmpeg-runs.log");
        let wrapper = dir.path().join("ffmpeg-counted");
        let real = which("ffmpeg");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
                runs.display(),
                real.display()
            ),
        )
        .expect("write wrapper");
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod wrapper");
        let gw = GatewayBuilder::new()
            .source("vids", crate::support::fs_source(&data))
            .tweak(|c| {
                c.video.ffmpeg = wrapper.display().to_string();
                tweak(c);
            })
            .start()
            .await;
        HlsGateway {
            gw,
            _dir: dir,
            runs,
        }
    }

    /// The ffmpeg children run so far, one line of arguments each.
    pub(crate) fn runs(&self) -> Vec<String> {
        std::fs::read_to_string(&self.runs)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub(crate) fn token(&self) -> String {
        self.gw.token().expect("test token").to_owned()
    }

    /// `/v/vids/{sample}/{tail}` with `?token=`, as a player asks (no header of its own).
    pub(crate) fn url(&self, s: Sample, tail: &str) -> String {
        self.gw.url(&format!(
            "/v/vids/{}/{tail}?token={}",
            s.file_name(),
            self.token()
        ))
    }

    /// GET `url` with no header (the token in the query only): status and body.
    pub(crate) async fn get(&self, url: &str) -> (u16, Vec<u8>) {
        let client = self.gw.anon_client_builder().build().expect("client");
        let r = client.get(url).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.bytes().await.expect("body").to_vec())
    }
}

fn which(tool: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .expect("sh");
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(p.is_absolute(), "{tool} not found (tests/run installs it)");
    p
}

/// The playlist's (EXTINF, link) pairs; panics unless it is a whole VOD playlist.
pub(crate) fn parse_playlist(text: &str) -> Vec<(f64, String)> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"#EXTM3U"), "{text}");
    assert_eq!(lines.last(), Some(&"#EXT-X-ENDLIST"), "{text}");
    for tag in [
        "#EXT-X-VERSION:3",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ] {
        assert!(lines.contains(&tag), "{tag} missing:\n{text}");
    }
    let target: f64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no TARGETDURATION:\n{text}"));
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(v) = l.strip_prefix("#EXTINF:") {
            let d: f64 = v.trim_end_matches(',').parse().expect("EXTINF number");
            assert!(
                d.round() <= target,
                "EXTINF {d} over TARGETDURATION {target}"
            );
            out.push((d, lines[i + 1].to_owned()));
        }
    }
    assert!(!out.is_empty(), "{text}");
    out
}

/// ffprobe's view of one segment: video frames decoded, first and last video pts, audio
/// packets.
struct SegmentProbe {
    frames: usize,
    first_pts: f64,
    last_pts: f64,
    audio_packets: usize,
}

fn probe_segment(path: &Path) -> SegmentProbe {
    let out = video::ffprobe(
        path,
        &[
            "-show_entries",
            "frame=media_type,pts_time",
            "-of",
            "csv=p=0",
        ],
    );
    let mut pts = Vec::new();
    for l in String::from_utf8_lossy(&out).lines() {
        let mut it = l.split(',');
        if it.next() == Some("video")
            && let Some(t) = it.next().and_then(|t| t.trim().parse::<f64>().ok())
        {
            pts.push(t);
        }
    }
    pts.sort_by(f64::total_cmp);
    let out = video::ffprobe(
        path,
        &[
            "-select_streams",
            "a",
            "-show_entries",
            "packet=pts_time",
            "-of",
            "csv=p=0",
        ],
    );
    let audio_packets = String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    SegmentProbe {
        frames: pts.len(),
        first_pts: pts.first().copied().unwrap_or(f64::NAN),
        last_pts: pts.last().copied().unwrap_or(f64::NAN),
        audio_packets,
    }
}

/// Frame `n` (0-based, presentation order) of `path`, 320 wide, as RGB.
fn frame_rgb(path: &Path, n: usize) -> Vec<u8> {
    video::reference_frame(path, n as u64, Some(320)).2
}

/// Fetch every segment of `s` through the gateway and check it against the plan: each decodes
/// to the planned frame count, the first and last frames are the source's frames at those
/// numbers (the burned-in counter: pixel-equal for a copy, close for a transcode), timestamps
/// rise across the seams by one frame, and together they hold every frame once.
async fn check_all_segments(h: &HlsGateway, s: Sample, min_psnr: f64) {
    let source = video::sample(s);
    let (index, duration) = ffprobe_index(&source);
    let plan = hls::plan(&index, duration, 4);
    let (status, body) = h.get(&h.url(s, "hls/index.m3u8")).await;
    assert_eq!(status, 200, "{s:?}: {}", String::from_utf8_lossy(&body));
    let listed = parse_playlist(&String::from_utf8_lossy(&body));
    assert_eq!(listed.len(), plan.len(), "{s:?}");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut total = 0;
    let mut prev_last: Option<f64> = None;
    for (n, ((extinf, link), seg)) in listed.iter().zip(&plan).enumerate() {
        assert!(
            (extinf - seg.duration).abs() < 0.001,
            "{s:?} {n}: {extinf} vs {seg:?}"
        );
        let (status, ts) = h.get(&h.gw.url(link)).await;
        assert_eq!(
            status,
            200,
            "{s:?} segment {n}: {}",
            String::from_utf8_lossy(&ts)
        );
        assert_eq!(ts.first(), Some(&0x47), "{s:?} segment {n}: not MPEG-TS");
        let path = dir.path().join(format!("{n}.ts"));
        std::fs::write(&path, &ts).expect("write segment");
        let p = probe_segment(&path);
        assert_eq!(p.frames, seg.end - seg.first, "{s:?} segment {n}: frames");
        if let Some(prev) = prev_last {
            let step = p.first_pts - prev;
            let want = index.pts[seg.first] - index.pts[seg.first - 1];
            assert!(
                (step - want).abs() < 0.002,
                "{s:?} segment {n}: starts {step} s after the previous one's last frame, not {want}"
            );
        }
        prev_last = Some(p.last_pts);
        for (in_segment, in_source) in [(0, seg.first), (p.frames - 1, seg.end - 1)] {
            let got = frame_rgb(&path, in_segment);
            let want = frame_rgb(&source, in_source);
            let db = video::psnr(&got, &want);
            assert!(
                db >= min_psnr,
                "{s:?} segment {n}: its frame {in_segment} is not source frame {in_source} ({db:.1} dB)"
            );
        }
        total += p.frames;
    }
    assert_eq!(total, index.pts.len(), "{s:?}: every frame once");
}

/// The playlist of each sample kind lists the planned segments, each linked with the request's
/// token (a player sends nothing else), and the links answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_playlist_lists_the_planned_segments_with_token_links() {
    let samples = [
        Sample::H264Faststart,
        Sample::MoovAtEnd,
        Sample::Hevc,
        Sample::Vp9Webm,
    ];
    let h = HlsGateway::start(&samples, |_| {}).await;
    for s in samples {
        let (index, duration) = ffprobe_index(&video::sample(s));
        let plan = hls::plan(&index, duration, 4);
        let (status, body) = h.get(&h.url(s, "hls/index.m3u8")).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(status, 200, "{s:?}: {text}");
        let listed = parse_playlist(&text);
        assert_eq!(
            listed.iter().map(|l| l.0).collect::<Vec<_>>(),
            plan.iter()
                .map(|p| (p.duration * 1e6).round() / 1e6)
                .collect::<Vec<_>>(),
            "{s:?}"
        );
        for (n, (_, link)) in listed.iter().enumerate() {
            assert_eq!(
                link,
                &format!("/v/vids/{}/hls/{n}.ts?token={}", s.file_name(), h.token()),
                "{s:?}"
            );
        }
        // Without the token the playlist is refused.
        let anon = h.gw.anon_client_builder().build().expect("client");
        let r = anon
            .get(h.gw.url(&format!("/v/vids/{}/hls/index.m3u8", s.file_name())))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 401, "{s:?}");
    }
    // Serving the playlists ran no ffmpeg: it comes from the index alone.
    assert_eq!(h.runs(), Vec::<String>::new());
}

/// Stream-copied segments (H.264/AAC, index in front or at the end): the planned frames, the
/// source's own pixels, continuous timestamps, no frame twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_copied_segments_hold_every_frame_once() {
    let h = HlsGateway::start(&[Sample::H264Faststart, Sample::MoovAtEnd], |_| {}).await;
    check_all_segments(&h, Sample::H264Faststart, f64::INFINITY).await;
    check_all_segments(&h, Sample::MoovAtEnd, f64::INFINITY).await;
    // Copies: no encoder ran.
    let runs = h.runs();
    assert!(!runs.is_empty());
    assert!(runs.iter().all(|r| r.contains("-c:v copy")), "{runs:#?}");
}

/// MPEG-TS (whose seeks land late: the cut seeks a second early and drops by pts) and variable
/// frame rate (segments of unequal frame counts) are copied just as exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_mpegts_and_vfr_segments_hold_every_frame_once() {
    let h = HlsGateway::start(&[Sample::Mpegts, Sample::Vfr], |_| {}).await;
    check_all_segments(&h, Sample::Mpegts, f64::INFINITY).await;
    check_all_segments(&h, Sample::Vfr, f64::INFINITY).await;
}

/// HEVC and VP9 are transcoded to H.264 per segment, with the same frames and timestamps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_transcoded_segments_hold_every_frame_once() {
    let h = HlsGateway::start(&[Sample::Hevc, Sample::Vp9Webm], |_| {}).await;
    check_all_segments(&h, Sample::Hevc, 30.0).await;
    check_all_segments(&h, Sample::Vp9Webm, 30.0).await;
    let runs = h.runs();
    assert!(runs.iter().all(|r| r.contains("-c:v libx264")), "{runs:#?}");
    // The segments are H.264, as browsers want.
}

/// Asking for the last segment first (a seek before anything played) runs one ffmpeg, which
/// seeks rather than reading from the start, and the segment is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_last_segment_first_runs_one_child_and_is_right() {
    let s = Sample::H264Faststart;
    let h = HlsGateway::start(&[s], |_| {}).await;
    let source = video::sample(s);
    let (index, duration) = ffprobe_index(&source);
    let plan = hls::plan(&index, duration, 4);
    let last = plan.len() - 1;
    let seg = &plan[last];
    let (status, ts) = h.get(&h.url(s, &format!("hls/{last}.ts"))).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&ts));
    let runs = h.runs();
    assert_eq!(runs.len(), 1, "one child for one segment: {runs:#?}");
    assert!(runs[0].contains(" -ss "), "the child seeks: {}", runs[0]);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("last.ts");
    std::fs::write(&path, &ts).expect("write");
    let p = probe_segment(&path);
    assert_eq!(p.frames, seg.end - seg.first);
    assert!(p.audio_packets > 0, "the segment has its audio");
    let got = frame_rgb(&path, 0);
    let want = frame_rgb(&source, seg.first);
    assert_eq!(
        video::psnr(&got, &want),
        f64::INFINITY,
        "first frame of the last segment"
    );
}

/// Past the last segment: 404, and no ffmpeg ran for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_segment_past_the_end_is_404() {
    let s = Sample::H264Faststart;
    let h = HlsGateway::start(&[s], |_| {}).await;
    let (index, duration) = ffprobe_index(&video::sample(s));
    let count = hls::plan(&index, duration, 4).len();
    for n in [count, count + 1, 9999] {
        let (status, body) = h.get(&h.url(s, &format!("hls/{n}.ts"))).await;
        assert_eq!(status, 404, "{n}: {}", String::from_utf8_lossy(&body));
        assert!(body.len() < 200, "a short message");
    }
    assert_eq!(h.runs(), Vec::<String>::new());
}
