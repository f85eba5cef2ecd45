//! Video (`/v/{source}/{key}/...`): info.json, posters, exact frames, web.mp4, HLS, sprite.

use crate::support::video::{self, Sample};

/// The synthetic samples are what the other tests assume: every one decodes, with frames.
#[test]
fn video_samples_are_made_as_described() {
    for s in Sample::ALL {
        let path = video::sample(s);
        let times = video::frame_times(&path);
        assert!(times.len() > 100, "{s:?}: {} frames", times.len());
        let (w, h, _) = video::reference_frame(&path, 30, Some(320));
        assert_eq!(w, 320, "{s:?}");
        let expected_h = if s == Sample::Rotated { 568 } else { 180 };
        assert_eq!(h, expected_h, "{s:?}");
    }
    // Variable frame rate: the gaps between frames are not all equal.
    let t = video::frame_times(&video::sample(Sample::Vfr));
    let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
    let (lo, hi) = gaps
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), g| (lo.min(*g), hi.max(*g)));
    assert!(hi > lo * 1.5, "VFR gaps {lo}..{hi}");
}

// ---------------------------------------------------------------------------------------------
// Through the running gateway (fs source `local`): the route, its 400s and 404s, the 503
// without ffmpeg, authorization and the audit record, info.json, 304, posters and frames,
// HLS, and web.mp4 with Range.

use bucketgate::config::{AuditDestination, Config};
use http::StatusCode;

use crate::support::{self, GatewayBuilder, TestGateway};

/// The key of the H.264 sample in the fs source (one `/`: written %2F in `/v/` paths).
const CLIP: &str = "clips/h264.mp4";
const CLIP_PATH: &str = "/v/local/clips%2Fh264.mp4";

/// A gateway over an fs source `local` holding the H.264 and HEVC samples.
async fn video_gateway(
    tweak: impl FnOnce(&mut Config) + 'static,
) -> (TestGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let h264 = std::fs::read(video::sample(Sample::H264Faststart)).unwrap();
    let hevc = std::fs::read(video::sample(Sample::Hevc)).unwrap();
    support::write_file(dir.path(), CLIP, &h264);
    support::write_file(dir.path(), "hevc.mp4", &hevc);
    support::write_file(dir.path(), "notes.txt", b"not a video\n");
    let gw = GatewayBuilder::new()
        .source("local", support::fs_source(dir.path()))
        .tweak(tweak)
        .start()
        .await;
    (gw, dir)
}

async fn get(gw: &TestGateway, path: &str) -> reqwest::Response {
    gw.client().get(gw.url(path)).send().await.unwrap()
}

async fn status_and_text(gw: &TestGateway, path: &str) -> (StatusCode, String) {
    let r = get(gw, path).await;
    (r.status(), r.text().await.unwrap())
}

async fn info(gw: &TestGateway, path: &str) -> serde_json::Value {
    let r = get(gw, path).await;
    let status = r.status();
    let body = r.bytes().await.unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "{path}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn video_bad_parameters_are_400_naming_them_and_other_tails_404() {
    let (gw, _dir) = video_gateway(|_| {}).await;
    for (query_or_tail, words) in [
        ("poster.jpg?t=-1", "invalid t"),
        ("poster.jpg?t=1.2345", "invalid t"),
        ("poster.jpg?t=abc", "invalid t"),
        ("poster.jpg?w=8", "invalid w"),
        ("poster.jpg?w=%2B320", "invalid w"),
        ("poster.jpg?x=1", "unknown parameter `x`"),
        ("poster.jpg?t=1&t=2", "repeated"),
        ("frame/%2B1.jpg", "invalid n"),
        ("frame/-1.jpg", "invalid n"),
        ("frame/12345678901.jpg", "invalid n"),
        ("frame/1.jpg?t=1", "unknown parameter `t`"),
        ("info.json?w=100", "unknown parameter `w`"),
        ("web.mp4?t=1", "unknown parameter `t`"),
        ("hls/index.m3u8?x", "unknown parameter `x`"),
        ("hls/%2B1.ts", "invalid n"),
        ("sprite.vtt?w=100", "unknown parameter `w`"),
        ("info.json?token=a&token=b", "repeated"),
    ] {
        let (status, body) = status_and_text(&gw, &format!("{CLIP_PATH}/{query_or_tail}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query_or_tail}: {body}");
        assert!(body.contains(words), "{query_or_tail}: {body}");
    }
    // Wider than max_output_width: 400 naming w (checked with the limits in force).
    let (status, body) = status_and_text(&gw, &format!("{CLIP_PATH}/poster.jpg?w=5000")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("max_output_width"), "{body}");
    for tail in [
        "",
        "info",
        "poster.png",
        "frame/1.gif",
        "hls/index.m3u",
        "sprite",
        "a/info.json",
    ] {
        let (status, body) = status_and_text(&gw, &format!("{CLIP_PATH}/{tail}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{tail}: {body}");
    }
    // The key is one segment: a raw slash makes a tail of another shape.
    let (status, _) = status_and_text(&gw, "/v/local/clips/h264.mp4/info.json").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = status_and_text(&gw, "/v/local/a%2F..%2Fb/info.json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A missing object: 404.
    let (status, _) = status_and_text(&gw, "/v/local/missing.mp4/info.json").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A source the token does not reach (an unknown one): refused before it is looked up.
    let (status, _) = status_and_text(&gw, "/v/nowhere/a.mp4/info.json").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Not a video: 415.
    let (status, body) = status_and_text(&gw, "/v/local/notes.txt/info.json").await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
}

#[tokio::test]
async fn video_without_ffmpeg_is_503_saying_so_and_readyz_names_it_still_ready() {
    let (gw, _dir) = video_gateway(|c| c.video.ffmpeg = "/nonexistent/ffmpeg".into()).await;
    for tail in [
        "info.json",
        "poster.jpg?t=1",
        "frame/3.jpg",
        "web.mp4",
        "hls/index.m3u8",
    ] {
        let (status, body) = status_and_text(&gw, &format!("{CLIP_PATH}/{tail}")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{tail}: {body}");
        assert!(body.contains("ffmpeg not found"), "{tail}: {body}");
        assert!(body.contains("[video] ffmpeg"), "{tail}: {body}");
        assert!(!body.contains("/nonexistent"), "{tail}: {body}");
    }
    let ready = reqwest::get(gw.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let text = ready.text().await.unwrap();
    assert!(text.contains("video: unavailable"), "{text}");
    assert!(text.contains("ffmpeg"), "{text}");
    // Objects are still served.
    let (status, _) = status_and_text(&gw, "/o/local/notes.txt").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn video_disabled_is_404_and_readyz_says_off() {
    let (gw, _dir) = video_gateway(|c| c.video.enabled = false).await;
    let (status, _) = status_and_text(&gw, &format!("{CLIP_PATH}/info.json")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = status_and_text(&gw, &format!("{CLIP_PATH}/poster.jpg?t=-1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let text = reqwest::get(gw.admin_url("/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("video: off"), "{text}");
}

#[tokio::test]
async fn video_a_token_for_originals_only_is_403_and_the_audit_names_derived() {
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("audit.log");
    let audit_path = log_path.clone();
    let (mut gw, _dir) = video_gateway(move |c| {
        c.audit.destination = AuditDestination::File {
            path: audit_path,
            max_bytes: 10 << 20,
            keep: 1,
        };
    })
    .await;
    let anon = gw.anon_client_builder().build().unwrap();
    let send = async |path: &str, token: &str| {
        anon.get(gw.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
    };
    let original = support::token_with_rep(&["original"]);
    assert_eq!(
        send(&format!("{CLIP_PATH}/info.json"), &original).await,
        StatusCode::FORBIDDEN
    );
    let derived = support::token_with_rep(&["derived"]);
    assert_eq!(
        send(&format!("{CLIP_PATH}/poster.jpg?t=5.000"), &derived).await,
        StatusCode::OK
    );
    assert_eq!(
        send(&format!("/o/local/{CLIP}"), &derived).await,
        StatusCode::FORBIDDEN
    );
    // Without any token: 401.
    let status = anon
        .get(gw.url(&format!("{CLIP_PATH}/info.json")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    gw.take_gateway().shutdown().await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["kind"] == "request" && r["route"] == "video")
        .collect();
    assert_eq!(records.len(), 3, "{text}");
    assert_eq!(records[0]["representation"], "derived", "{text}");
    assert_eq!(records[0]["key"], CLIP);
    assert_eq!(records[0]["decision"], "deny");
    assert_eq!(records[0]["rule"], "rep excludes derived");
    assert_eq!(records[0]["params"], "video:info.json");
    assert_eq!(records[1]["decision"], "allow");
    assert_eq!(records[1]["status"], 200);
    assert_eq!(records[1]["params"], "video:poster.jpg?t=5");
}

#[tokio::test]
async fn video_info_json_describes_the_h264_sample_and_carries_the_token() {
    let (gw, _dir) = video_gateway(|_| {}).await;
    let v = info(&gw, &format!("{CLIP_PATH}/info.json")).await;
    assert_eq!(v["container"], "mov", "{v}");
    let duration = v["duration"].as_f64().unwrap();
    assert!((duration - 12.0).abs() < 0.1, "{v}");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(640), Some(360)),
        "{v}"
    );
    assert_eq!(v["frame_count"], 300, "{v}");
    let keyframes: Vec<f64> = v["keyframes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_f64().unwrap())
        .collect();
    assert_eq!(keyframes.len(), 6, "{v}");
    for (i, k) in keyframes.iter().enumerate() {
        assert!((k - 2.0 * i as f64).abs() < 0.001, "{keyframes:?}");
    }
    assert_eq!(v["browser_ready"], true, "{v}");
    let streams = v["streams"].as_array().unwrap();
    let video_stream = streams.iter().find(|s| s["type"] == "video").unwrap();
    assert_eq!(video_stream["codec"], "h264");
    assert_eq!(video_stream["pix_fmt"], "yuv420p");
    assert!((video_stream["frame_rate"].as_f64().unwrap() - 25.0).abs() < 0.01);
    let audio = streams.iter().find(|s| s["type"] == "audio").unwrap();
    assert_eq!(audio["codec"], "aac");
    assert!(audio["channels"].as_u64().is_some(), "{audio}");
    assert_eq!(v["renditions"]["web_mp4"], format!("{CLIP_PATH}/web.mp4"));
    assert_eq!(
        v["renditions"]["frame"],
        format!("{CLIP_PATH}/frame/{{n}}.jpg")
    );
    let hevc = info(&gw, "/v/local/hevc.mp4/info.json").await;
    assert_eq!(hevc["browser_ready"], false, "{hevc}");
    assert_eq!(hevc["frame_count"], 300, "{hevc}");

    // A token in the query is carried into every link, and the answer is not stored.
    let token = gw.token().unwrap().to_owned();
    let anon = gw.anon_client_builder().build().unwrap();
    let r = anon
        .get(gw.url(&format!("{CLIP_PATH}/info.json?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "private, no-store");
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(
        v["renditions"]["hls"],
        format!("{CLIP_PATH}/hls/index.m3u8?token={token}")
    );
    // The playlist's segment links carry it too, and they work with it alone.
    let r = anon
        .get(gw.url(&format!("{CLIP_PATH}/hls/index.m3u8?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let playlist = r.text().await.unwrap();
    assert!(playlist.starts_with("#EXTM3U"), "{playlist}");
    let first = playlist
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .unwrap()
        .to_owned();
    assert!(first.contains(&format!("token={token}")), "{first}");
    let url = if first.starts_with('/') {
        gw.url(&first)
    } else {
        gw.url(&format!("{CLIP_PATH}/hls/{first}"))
    };
    let r = anon.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "video/mp2t");
    let ts = r.bytes().await.unwrap();
    assert!(!ts.is_empty() && ts[0] == 0x47, "not MPEG-TS");
}

#[tokio::test]
async fn video_if_none_match_is_304_and_the_etag_follows_the_request() {
    let (gw, dir) = video_gateway(|_| {}).await;
    let path = format!("{CLIP_PATH}/poster.jpg?t=5");
    let r = get(&gw, &path).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"'), "{etag}");
    // `t=5.000` is the same request: the same ETag, 304.
    let r = gw
        .client()
        .get(gw.url(&format!("{CLIP_PATH}/poster.jpg?t=5.000")))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    // Another time is another representation.
    let other = get(&gw, &format!("{CLIP_PATH}/poster.jpg?t=6")).await;
    assert_ne!(other.headers()["etag"].to_str().unwrap(), etag);
    // A new version of the object: another ETag, the old one is not 304.
    let hevc = std::fs::read(dir.path().join("hevc.mp4")).unwrap();
    std::fs::write(dir.path().join(CLIP), hevc).unwrap();
    let r = gw
        .client()
        .get(gw.url(&path))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_ne!(r.headers()["etag"].to_str().unwrap(), etag);
}

#[tokio::test]
async fn video_frames_through_the_gateway_match_ffmpeg_select() {
    let (gw, _dir) = video_gateway(|_| {}).await;
    let path = video::sample(Sample::H264Faststart);
    for n in [0u64, 1, 49, 50, 137, 299] {
        let r = get(&gw, &format!("{CLIP_PATH}/frame/{n}.png?w=320")).await;
        assert_eq!(r.status(), StatusCode::OK, "frame {n}");
        assert_eq!(r.headers()["content-type"], "image/png");
        let (w, h, rgb) = video::decode_to_rgb(&r.bytes().await.unwrap());
        let (rw, rh, reference) = video::reference_frame(&path, n, Some(320));
        assert_eq!((w, h), (rw, rh), "frame {n}");
        let psnr = video::psnr(&rgb, &reference);
        assert!(psnr >= 45.0, "frame {n}: PSNR {psnr}");
    }
    let (status, body) = status_and_text(&gw, &format!("{CLIP_PATH}/frame/300.jpg")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn video_web_mp4_is_served_with_range_if_range_and_head() {
    let (gw, _dir) = video_gateway(|_| {}).await;
    let path = format!("{CLIP_PATH}/web.mp4");
    let r = get(&gw, &path).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "video/mp4");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let whole = r.bytes().await.unwrap();
    assert!(whole.len() > 1000);
    // The index in front: `ftyp` then `moov` before `mdat`.
    assert_eq!(&whole[4..8], b"ftyp");
    let moov = whole.windows(4).position(|w| w == b"moov").unwrap();
    let mdat = whole.windows(4).position(|w| w == b"mdat").unwrap();
    assert!(moov < mdat, "moov at {moov}, mdat at {mdat}");
    let len = whole.len() as u64;
    let ranged = async |range: &str, if_range: Option<&str>| {
        let mut req = gw.client().get(gw.url(&path)).header("range", range);
        if let Some(v) = if_range {
            req = req.header("if-range", v);
        }
        req.send().await.unwrap()
    };
    let r = ranged("bytes=100-199", None).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 100-199/{len}").as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), whole.slice(100..200));
    let r = ranged("bytes=-10", None).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), whole.slice(whole.len() - 10..));
    let r = ranged(&format!("bytes={}-", len - 5), None).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), whole.slice(whole.len() - 5..));
    let r = ranged(&format!("bytes={len}-"), None).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{len}").as_str()
    );
    // If-Range with the ETag: the range; with another validator: the whole file.
    let r = ranged("bytes=0-9", Some(&etag)).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let r = ranged("bytes=0-9", Some("\"other\"")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len() as u64, len);
    // HEAD: the length, no body.
    let r = gw.client().head(gw.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], len.to_string().as_str());
    assert!(r.bytes().await.unwrap().is_empty());
    // 304 on the ETag.
    let r = gw
        .client()
        .get(gw.url(&path))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn video_explain_names_the_derived_representation_and_the_tail() {
    let dry = support::DryRunConfig::load();
    let both = support::token_with_rep(&["original", "derived"]);
    let out = dry
        .explain("/v/local/a%2Fb.mp4/poster.jpg?t=5.000&w=320", &both)
        .await;
    assert!(
        out.contains(
            "plan:      source local key a/b.mp4 representation derived \
             video:poster.jpg?t=5&w=320 (would be derived)"
        ),
        "{out}"
    );
    let original = support::token_with_rep(&["original"]);
    let out = dry
        .explain("/v/local/a.mp4/hls/index.m3u8", &original)
        .await;
    assert!(
        out.contains("authorize: refuse (403): rep excludes derived"),
        "{out}"
    );
}
