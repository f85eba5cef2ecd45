//! HLS in a real browser (issue 14): hls.js from npm (installed into `tests/node` by
//! `tests/run`) in Debian's headless chromium plays `hls/index.m3u8?token=...` through the
//! gateway, cross-origin: the page comes from a second loopback server, the gateway lists that
//! origin in `[cors]`, and the token rides in the query of the playlist and of every segment
//! link (hls.js sends no header of its own). The page seeks to a time; the test checks the
//! `seeked` event, `currentTime`, the decoded picture (the frame counter burned into the
//! sample: the canvas must match ffmpeg's decode of that frame), and the gateway's audit log
//! for the segment requests.
//!
//! chromium and chromedriver are [`Browser`] guards, the page server a task of the test's
//! runtime: nothing outlives the test. Every wait polls a condition up to a deadline.

use std::time::{Duration, Instant};

use bucketgate::config::{AuditDestination, CorsConfig};
use serde_json::{Value, json};

use crate::support::browser::{self, Browser};
use crate::support::video::{self, Sample};
use crate::video_hls::HlsGateway;

/// Where the page seeks, in seconds: inside the middle segment, 30 ms into frame 162 (6.48 s):
/// hls.js puts time 0 at the earliest pts of either stream, here the AAC priming packet's 21 ms
/// before the first frame (measured: at 6.49 s it showed frame 161), so any seek within
/// [6.501, 6.52) shows frame 162 whichever origin it takes.
const SEEK_TO: f64 = 6.51;
/// The box of the burned-in frame counter (top left, white on black), pixels.
const COUNTER_X: (u32, u32) = (16, 150);
const COUNTER_Y: (u32, u32) = (20, 84);
/// The canvas the page draws the video into (the sample's size).
const W: u32 = 640;
const H: u32 = 360;

/// The player page: hls.js on `playlist`, its events and the video's in `window.player`.
fn player_page(playlist: &str) -> String {
    let src = serde_json::to_string(playlist).expect("json string");
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>HLS player</title>
<script src="/hls.min.js"></script></head>
<body><video id="v" muted playsinline width="{W}" height="{H}"></video>
<canvas id="c" width="{W}" height="{H}"></canvas>
<script>
window.player = {{ supported: Hls.isSupported(), manifest: false, levels: 0, fragsLoaded: [],
                   errors: [], seeked: 0, loadeddata: false }};
const video = document.getElementById("v");
const hls = new Hls({{ enableWorker: false, maxBufferLength: 8 }});
hls.on(Hls.Events.MANIFEST_PARSED, (e, d) => {{ window.player.manifest = true; window.player.levels = d.levels.length; }});
hls.on(Hls.Events.FRAG_LOADED, (e, d) => {{ window.player.fragsLoaded.push(d.frag.sn); }});
hls.on(Hls.Events.ERROR, (e, d) => {{ window.player.errors.push(d.type + ":" + d.details + ":" + d.fatal); }});
video.addEventListener("loadeddata", () => {{ window.player.loadeddata = true; }});
video.addEventListener("seeked", () => {{ window.player.seeked += 1; }});
hls.loadSource({src});
hls.attachMedia(video);
window.grab = () => {{
  const c = document.getElementById("c");
  const g = c.getContext("2d", {{ willReadFrequently: true }});
  g.drawImage(video, 0, 0, {W}, {H});
  return Array.from(g.getImageData(0, 0, {W}, {H}).data);
}};
</script></body></html>"#
    )
}

/// Poll `window.player` until `done` accepts it; panics with the last state after `within`.
async fn wait_player(
    browser: &Browser,
    what: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let state = browser
            .execute(
                "const p = window.player || null; if (p) { const v = document.getElementById('v');\
                 p.currentTime = v.currentTime; p.readyState = v.readyState;\
                 p.videoWidth = v.videoWidth; p.videoHeight = v.videoHeight;\
                 p.decoded = v.getVideoPlaybackQuality().totalVideoFrames; } return p;",
                json!([]),
            )
            .await;
        if done(&state) {
            return state;
        }
        let fatal = state["errors"].as_array().is_some_and(|e| {
            e.iter()
                .any(|e| e.as_str().is_some_and(|e| e.ends_with(":true")))
        });
        assert!(!fatal, "hls.js failed while waiting for {what}: {state}");
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; last state {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hls_js_plays_and_seeks_cross_origin_with_a_token() {
    let js = browser::node_module("hls.js/dist/hls.min.js", "hls.js");
    let s = Sample::H264Faststart;
    let logs = tempfile::tempdir().expect("temp dir");
    let audit = logs.path().join("audit.log");
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let page_origin = format!("http://{}", page_listener.local_addr().expect("addr"));
    let (origin, audit_path) = (page_origin.clone(), audit.clone());
    let mut h = HlsGateway::start(&[s], move |c| {
        c.cors = CorsConfig {
            allowed_origins: vec![origin],
            ..CorsConfig::default()
        };
        c.audit.destination = AuditDestination::File {
            path: audit_path,
            max_bytes: 100 * 1024 * 1024,
            keep: 2,
        };
    })
    .await;
    let playlist = h.url(s, "hls/index.m3u8");
    browser::serve_page(
        page_listener,
        vec![
            (
                "/",
                "text/html; charset=utf-8",
                player_page(&playlist).into_bytes(),
            ),
            ("/hls.min.js", "text/javascript", js),
        ],
    );

    let browser = Browser::start().await;
    browser.goto(&format!("{page_origin}/")).await;
    let state = wait_player(&browser, "the first frame", Duration::from_secs(60), |p| {
        p["loadeddata"] == true
    })
    .await;
    assert_eq!(state["supported"], true, "{state}");
    assert_eq!(state["levels"], 1, "{state}");
    assert_eq!(state["videoWidth"], W, "{state}");
    assert_eq!(state["videoHeight"], H, "{state}");

    browser
        .execute(
            "document.getElementById('v').currentTime = arguments[0];",
            json!([SEEK_TO]),
        )
        .await;
    let state = wait_player(&browser, "seeked", Duration::from_secs(60), |p| {
        p["seeked"].as_u64().unwrap_or(0) >= 1 && p["readyState"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    let now = state["currentTime"].as_f64().expect("currentTime");
    assert!(
        (now - SEEK_TO).abs() < 0.05,
        "currentTime {now} after seeking to {SEEK_TO}: {state}"
    );

    // The picture shown is the source's frame at that time: frame n is shown from its time
    // until the next, so at 6.51 s of a 25 fps video frame 162 (6.48 s). Compared on the
    // burned-in counter (white digits on black: chromium's and ffmpeg's YUV->RGB conversions
    // differ on colours, not on those), against the frames either side too.
    let shown = (SEEK_TO * f64::from(video::SAMPLE_FPS)).floor() as u64;
    let pixels = browser.execute("return window.grab();", json!([])).await;
    let rgba: Vec<u8> = pixels
        .as_array()
        .expect("pixel array")
        .iter()
        .map(|v| v.as_u64().unwrap_or(0) as u8)
        .collect();
    assert_eq!(rgba.len(), (W * H * 4) as usize);
    let rgb: Vec<u8> = rgba.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    let counter = |img: &[u8]| -> Vec<u8> {
        (COUNTER_Y.0..COUNTER_Y.1)
            .flat_map(|y| {
                let row = (y * W) as usize * 3;
                img[row + COUNTER_X.0 as usize * 3..row + COUNTER_X.1 as usize * 3].to_vec()
            })
            .collect()
    };
    let score = |n: u64| {
        let (_, _, want) = video::reference_frame(&video::sample(s), n, None);
        video::psnr(&counter(&rgb), &counter(&want))
    };
    let (before, db, after) = (score(shown - 1), score(shown), score(shown + 1));
    if !(db >= 25.0 && db > before + 3.0 && db > after + 3.0) {
        let keep = std::env::temp_dir().join("video_hls_browser_canvas.ppm");
        let mut ppm = format!("P6\n{W} {H}\n255\n").into_bytes();
        ppm.extend_from_slice(&rgb);
        std::fs::write(&keep, ppm).expect("keep the canvas");
        panic!(
            "the canvas is not frame {shown}: its counter matches frame {} at {before:.1} dB, \
             {shown} at {db:.1} dB, {} at {after:.1} dB; kept as {}",
            shown - 1,
            shown + 1,
            keep.display()
        );
    }

    // The gateway's audit log names the segment requests, from the page's origin, allowed.
    h.gw.take_gateway().shutdown().await;
    let text = std::fs::read_to_string(&audit).expect("audit log");
    let segments: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r.to_string().contains("hls/") && r.to_string().contains(".ts"))
        .collect();
    assert!(
        !segments.is_empty(),
        "no segment request in the audit log:\n{text}"
    );
    for r in &segments {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["decision"], "allow", "{r}");
        assert_eq!(r["origin"], page_origin.as_str(), "{r}");
    }
    let runs = h.runs();
    assert!(!runs.is_empty());
}
