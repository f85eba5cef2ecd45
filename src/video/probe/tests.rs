//! The description: ffprobe's JSON read and checked (crafted JSON for each limit), and real
//! probes of small lavfi files through a file and through the loopback feed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may; src/ may not

use std::sync::{Arc, OnceLock};

use serde_json::json;

use super::*;
use crate::backend::AnyBackend;
use crate::backend::fs::FsBackend;
use crate::video::Tools;
use crate::video::input::Origin;
use crate::video::testutil::{ffmpeg, object};

fn limits() -> VideoLimits {
    VideoLimits::default()
}

fn h264(width: u32, height: u32) -> serde_json::Value {
    json!({
        "index": 0, "codec_type": "video", "codec_name": "h264", "profile": "High",
        "width": width, "height": height, "pix_fmt": "yuv420p",
        "avg_frame_rate": "25/1", "r_frame_rate": "25/1", "bit_rate": "1000000"
    })
}

fn aac() -> serde_json::Value {
    json!({
        "index": 1, "codec_type": "audio", "codec_name": "aac", "channels": 2,
        "sample_rate": "48000", "bit_rate": "128000"
    })
}

fn doc(streams: Vec<serde_json::Value>, duration: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "streams": streams,
        "format": {
            "format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": duration,
            "start_time": "0.000000", "bit_rate": "1128000"
        }
    }))
    .unwrap()
}

fn describe_mov(json: &[u8]) -> Result<VideoProbe, VideoError> {
    describe(Container::Mov, 1000, json, &limits())
}

#[test]
fn a_plain_h264_aac_mp4_is_described_and_browser_ready() {
    let p = describe_mov(&doc(vec![h264(640, 360), aac()], "12.000000")).unwrap();
    assert_eq!(p.duration, 12.0);
    assert_eq!(p.bit_rate, Some(1_128_000));
    assert_eq!(p.video, Some(0));
    assert!(p.browser_ready);
    let v = &p.streams[0];
    assert_eq!((v.width, v.height, v.rotation), (Some(640), Some(360), 0));
    assert_eq!(v.frame_rate, Some(25.0));
    assert_eq!(v.profile.as_deref(), Some("High"));
    let a = &p.streams[1];
    assert_eq!(
        (a.kind, a.channels, a.sample_rate),
        (StreamKind::Audio, Some(2), Some(48000))
    );
}

#[test]
fn browser_ready_needs_mov_h264_8bit_420_and_aac_or_no_audio() {
    assert!(
        describe_mov(&doc(vec![h264(64, 64)], "1"))
            .unwrap()
            .browser_ready
    );
    let mut ten_bit = h264(64, 64);
    ten_bit["pix_fmt"] = json!("yuv420p10le");
    assert!(
        !describe_mov(&doc(vec![ten_bit], "1"))
            .unwrap()
            .browser_ready
    );
    let mut mp3 = aac();
    mp3["codec_name"] = json!("mp3");
    assert!(
        !describe_mov(&doc(vec![h264(64, 64), mp3], "1"))
            .unwrap()
            .browser_ready
    );
    let mut hevc = h264(64, 64);
    hevc["codec_name"] = json!("hevc");
    assert!(!describe_mov(&doc(vec![hevc], "1")).unwrap().browser_ready);
    let mkv = describe(
        Container::Matroska,
        1,
        &doc(vec![h264(64, 64)], "1"),
        &limits(),
    );
    assert!(!mkv.unwrap().browser_ready);
}

#[test]
fn rotation_comes_from_the_display_matrix_or_the_rotate_tag_clockwise() {
    let mut matrix = h264(64, 32);
    matrix["side_data_list"] = json!([{ "side_data_type": "Display Matrix", "rotation": -90 }]);
    assert_eq!(
        describe_mov(&doc(vec![matrix], "1")).unwrap().streams[0].rotation,
        90
    );
    let mut matrix = h264(64, 32);
    matrix["side_data_list"] = json!([{ "side_data_type": "Display Matrix", "rotation": 90.0 }]);
    assert_eq!(
        describe_mov(&doc(vec![matrix], "1")).unwrap().streams[0].rotation,
        270
    );
    let mut tag = h264(64, 32);
    tag["tags"] = json!({ "rotate": "180" });
    assert_eq!(
        describe_mov(&doc(vec![tag], "1")).unwrap().streams[0].rotation,
        180
    );
}

#[test]
fn the_frame_rate_falls_back_to_r_frame_rate() {
    let mut v = h264(64, 64);
    v["avg_frame_rate"] = json!("0/0");
    v["r_frame_rate"] = json!("30000/1001");
    let rate = describe_mov(&doc(vec![v], "1")).unwrap().streams[0]
        .frame_rate
        .unwrap();
    assert!((rate - 29.97).abs() < 0.01);
}

#[test]
fn cover_art_and_data_streams_are_not_video() {
    let mut cover = h264(600, 600);
    cover["codec_name"] = json!("png");
    cover["index"] = json!(2);
    cover["disposition"] = json!({ "attached_pic": 1 });
    let tmcd = json!({ "index": 3, "codec_type": "data", "codec_tag_string": "tmcd" });
    let p = describe_mov(&doc(vec![h264(64, 64), aac(), cover, tmcd], "1")).unwrap();
    assert_eq!(p.video, Some(0));
    assert_eq!(p.streams[2].kind, StreamKind::Other);
    assert_eq!(p.streams[3].kind, StreamKind::Other);
}

#[test]
fn each_limit_is_too_large_naming_it() {
    let too_large = |json: Vec<u8>, limits: &VideoLimits, words: &str| match describe(
        Container::Mov,
        1,
        &json,
        limits,
    ) {
        Err(VideoError::TooLarge(m)) => assert!(m.contains(words), "{m}"),
        other => panic!("{words}: {other:?}"),
    };
    let l = limits();
    too_large(
        doc(vec![h264(64, 64)], "100000"),
        &l,
        "longer than the limit",
    );
    too_large(
        doc(vec![h264(9000, 64)], "1"),
        &l,
        "over the limit of 8192x8192",
    );
    too_large(
        doc(vec![h264(64, 9000)], "1"),
        &l,
        "over the limit of 8192x8192",
    );
    too_large(doc(vec![h264(8000, 8000)], "1"), &l, "pixels");
    let many: Vec<_> = (0..17).map(|_| aac()).collect();
    too_large(doc(many, "1"), &l, "17 streams");
    let mut slow = limits();
    slow.max_bit_rate = 1000;
    too_large(doc(vec![h264(64, 64)], "1"), &slow, "bit rate");
}

#[test]
fn a_missing_zero_or_nan_duration_is_corrupt() {
    for duration in ["N/A", "0.000000", "nan", "inf", "-5"] {
        let err = describe_mov(&doc(vec![h264(64, 64)], duration)).unwrap_err();
        assert!(
            matches!(&err, VideoError::Corrupt(m) if m.contains("duration")),
            "{duration}: {err:?}"
        );
    }
    let json = serde_json::to_vec(&json!({ "streams": [h264(64, 64)], "format": {} })).unwrap();
    assert!(matches!(describe_mov(&json), Err(VideoError::Corrupt(_))));
}

#[test]
fn a_zero_size_video_stream_is_corrupt() {
    for (w, h) in [(0, 360), (640, 0)] {
        let err = describe_mov(&doc(vec![h264(w, h)], "1")).unwrap_err();
        assert!(
            matches!(&err, VideoError::Corrupt(m) if m.contains("picture size")),
            "{err:?}"
        );
    }
    let mut no_size = h264(1, 1);
    no_size.as_object_mut().unwrap().remove("width");
    assert!(matches!(
        describe_mov(&doc(vec![no_size], "1")),
        Err(VideoError::Corrupt(_))
    ));
}

#[test]
fn a_codec_not_allowed_is_unsupported_naming_it() {
    let mut v = h264(64, 64);
    v["codec_name"] = json!("cinepak");
    let err = describe_mov(&doc(vec![v], "1")).unwrap_err();
    assert!(
        matches!(&err, VideoError::Unsupported(m) if m == "video codec cinepak"),
        "{err:?}"
    );
    let mut a = aac();
    a["codec_name"] = json!("wmav2");
    let err = describe_mov(&doc(vec![h264(64, 64), a], "1")).unwrap_err();
    assert!(
        matches!(&err, VideoError::Unsupported(m) if m == "audio codec wmav2"),
        "{err:?}"
    );
    let mut unknown = h264(64, 64);
    unknown.as_object_mut().unwrap().remove("codec_name");
    let err = describe_mov(&doc(vec![unknown], "1")).unwrap_err();
    assert!(
        matches!(&err, VideoError::Unsupported(m) if m == "video codec unknown"),
        "{err:?}"
    );
}

#[test]
fn garbage_json_and_no_streams_are_corrupt() {
    assert!(matches!(
        describe_mov(b"{not json"),
        Err(VideoError::Corrupt(_))
    ));
    assert!(matches!(
        describe_mov(&doc(vec![], "1")),
        Err(VideoError::Corrupt(_))
    ));
}

/// 1 s, 64x48, 10 fps H.264 + AAC: an MP4 (faststart) and the same streams in MKV.
fn samples() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mp4 = dir.path().join("a.mp4");
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=1:size=64x48:rate=10",
            "-f",
            "lavfi",
            "-i",
            "sine=duration=1",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-movflags",
            "+faststart",
            mp4.to_str().unwrap(),
        ]);
        ffmpeg(&[
            "-i",
            mp4.to_str().unwrap(),
            "-c",
            "copy",
            dir.path().join("a.mkv").to_str().unwrap(),
        ]);
        dir
    })
    .path()
}

#[tokio::test]
async fn real_files_are_probed_through_a_file_and_through_the_feed() {
    let backend = Arc::new(AnyBackend::Fs(FsBackend::new(samples()).unwrap()));
    let fence = Fence::new(Tools::find("ffmpeg", "ffprobe"), 2, 4);
    for (key, container, ready) in [
        ("a.mp4", Container::Mov, true),
        ("a.mkv", Container::Matroska, false),
    ] {
        let file = Input::of_object(&backend, key, object(&backend, key).await)
            .await
            .unwrap();
        let bytes = object(&backend, key).await;
        let size = bytes.size();
        let fed = Input::new(Origin::Object(bytes), size);
        for input in [&file, &fed] {
            let p = probe(input, &fence, &limits()).await.unwrap();
            assert_eq!(p.container, container);
            assert_eq!(p.browser_ready, ready, "{key}");
            assert_eq!(p.size, size);
            let v = &p.streams[p.video.unwrap()];
            assert_eq!(
                (v.codec.as_str(), v.width, v.height),
                ("h264", Some(64), Some(48))
            );
            assert!((p.duration - 1.0).abs() < 0.1, "{key}: {}", p.duration);
            let frames = p.frames.as_ref().unwrap();
            assert_eq!(frames.pts.len(), 10, "{key}");
            assert_eq!(frames.keyframes.first(), Some(&0));
        }
    }
    assert_eq!(fence.running(), 0);
}

#[tokio::test]
async fn an_object_over_the_size_limit_is_refused_before_ffprobe_runs() {
    let backend = Arc::new(AnyBackend::Fs(FsBackend::new(samples()).unwrap()));
    // No tools at all: a refusal that needed ffprobe would be Unavailable instead.
    let fence = Fence::new(
        Tools {
            ffmpeg: Err("none".into()),
            ffprobe: Err("none".into()),
        },
        1,
        0,
    );
    let input = Input::of_object(&backend, "a.mp4", object(&backend, "a.mp4").await)
        .await
        .unwrap();
    let mut small = limits();
    small.max_source_bytes = 100;
    let err = probe(&input, &fence, &small).await.unwrap_err();
    assert!(
        matches!(&err, VideoError::TooLarge(m) if m.contains("100 bytes")),
        "{err:?}"
    );
    let mut no_mkv = limits();
    no_mkv.containers = vec![Container::Matroska];
    let err = probe(&input, &fence, &no_mkv).await.unwrap_err();
    assert!(matches!(err, VideoError::Unsupported(_)), "{err:?}");
}
