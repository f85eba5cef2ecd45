//! `info.json`: what a labeling app needs to know of a video before it asks for anything else:
//! the container, duration, streams (codec, profile, coded size, rotation, frame rate, pixel
//! format, bit rate, audio channels and rate), the frame count, the presentation time of every
//! keyframe, whether browsers play the source as is, and the links of the renditions (made with
//! the request's [`Links`], so a `token` query is carried into each).
//!
//! Built per request from the remembered probe: it is never stored (its links carry the
//! request's token).

use serde_json::{Map, Value, json};

use super::Links;
use super::probe::{StreamKind, VideoProbe};

/// The `{n}` placeholder of the frame link template (frame numbers are 0-based).
pub const FRAME_TEMPLATE: &str = "frame/{n}.jpg";

/// Times in `info.json` are rounded to microseconds (the containers' finest common unit).
fn time(t: f64) -> Value {
    let rounded = (t * 1e6).round() / 1e6;
    serde_json::Number::from_f64(rounded).map_or(Value::Null, Value::Number)
}

/// The description of `probe`, its links made with `links`.
pub fn info_json(probe: &VideoProbe, links: &Links) -> Value {
    let streams: Vec<Value> = probe.streams.iter().map(stream).collect();
    let video = probe.video.and_then(|i| probe.streams.get(i));
    let mut info = Map::new();
    info.insert("container".into(), json!(probe.container.name()));
    info.insert("format_name".into(), json!(probe.format_name));
    info.insert("duration".into(), time(probe.duration));
    info.insert("start_time".into(), time(probe.start_time));
    info.insert("size".into(), json!(probe.size));
    if let Some(rate) = probe.bit_rate {
        info.insert("bit_rate".into(), json!(rate));
    }
    if let Some(v) = video {
        // The size a player shows: the coded size turned by the display rotation.
        if let (Some(w), Some(h)) = (v.width, v.height) {
            let (dw, dh) = if v.rotation.rem_euclid(180) == 90 {
                (h, w)
            } else {
                (w, h)
            };
            info.insert("width".into(), json!(dw));
            info.insert("height".into(), json!(dh));
        }
        if let Some(rate) = v.frame_rate {
            info.insert("frame_rate".into(), json!(rate));
        }
    }
    info.insert("streams".into(), Value::Array(streams));
    if let Some(frames) = &probe.frames {
        info.insert("frame_count".into(), json!(frames.pts.len()));
        let keyframes: Vec<Value> = frames
            .keyframes
            .iter()
            .filter_map(|&k| frames.pts.get(k))
            .map(|&t| time(t))
            .collect();
        info.insert("keyframes".into(), Value::Array(keyframes));
    }
    info.insert("browser_ready".into(), json!(probe.browser_ready));
    let mut renditions = Map::new();
    if video.is_some() {
        renditions.insert("poster".into(), json!(links.to("poster.jpg")));
        renditions.insert("frame".into(), json!(links.to(FRAME_TEMPLATE)));
        renditions.insert("frame_png".into(), json!(links.to("frame/{n}.png")));
    }
    renditions.insert("web_mp4".into(), json!(links.to("web.mp4")));
    if video.is_some() {
        renditions.insert("hls".into(), json!(links.to("hls/index.m3u8")));
        renditions.insert("sprite".into(), json!(links.to("sprite.jpg")));
        renditions.insert("sprite_vtt".into(), json!(links.to("sprite.vtt")));
    }
    info.insert("renditions".into(), Value::Object(renditions));
    Value::Object(info)
}

/// One stream: the fields ffprobe gave, absent ones left out.
fn stream(s: &super::probe::StreamInfo) -> Value {
    let mut m = Map::new();
    m.insert("index".into(), json!(s.index));
    m.insert(
        "type".into(),
        json!(match s.kind {
            StreamKind::Video => "video",
            StreamKind::Audio => "audio",
            StreamKind::Other => "other",
        }),
    );
    m.insert("codec".into(), json!(s.codec));
    let mut opt = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    };
    opt("profile", s.profile.as_ref().map(|p| json!(p)));
    opt("width", s.width.map(|v| json!(v)));
    opt("height", s.height.map(|v| json!(v)));
    opt(
        "rotation",
        (s.kind == StreamKind::Video).then(|| json!(s.rotation)),
    );
    opt("frame_rate", s.frame_rate.map(|v| json!(v)));
    opt("pix_fmt", s.pix_fmt.as_ref().map(|v| json!(v)));
    opt("bit_rate", s.bit_rate.map(|v| json!(v)));
    opt("channels", s.channels.map(|v| json!(v)));
    opt("sample_rate", s.sample_rate.map(|v| json!(v)));
    Value::Object(m)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap; src/ may not
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::video::Container;
    use crate::video::probe::{FrameIndex, StreamInfo};

    fn sample() -> VideoProbe {
        VideoProbe {
            container: Container::Mov,
            format_name: "mov,mp4,m4a,3gp,3g2,mj2".into(),
            duration: 12.0,
            start_time: 0.0,
            bit_rate: Some(500_000),
            size: 750_000,
            streams: vec![
                StreamInfo {
                    index: 0,
                    kind: StreamKind::Video,
                    codec: "h264".into(),
                    profile: Some("High".into()),
                    width: Some(640),
                    height: Some(360),
                    rotation: 90,
                    frame_rate: Some(25.0),
                    pix_fmt: Some("yuv420p".into()),
                    bit_rate: Some(400_000),
                    channels: None,
                    sample_rate: None,
                },
                StreamInfo {
                    index: 1,
                    kind: StreamKind::Audio,
                    codec: "aac".into(),
                    profile: Some("LC".into()),
                    width: None,
                    height: None,
                    rotation: 0,
                    frame_rate: None,
                    pix_fmt: None,
                    bit_rate: Some(96_000),
                    channels: Some(2),
                    sample_rate: Some(48_000),
                },
            ],
            video: Some(0),
            frames: Some(Arc::new(FrameIndex {
                pts: (0..300).map(|i| f64::from(i) / 25.0).collect(),
                keyframes: (0..300).step_by(50).collect(),
            })),
            browser_ready: true,
        }
    }

    #[test]
    fn describes_streams_frames_and_links() {
        let links = Links {
            base: "/v/clips/a%2Fb.mp4/".into(),
            query: Some("token=abc".into()),
        };
        let v = info_json(&sample(), &links);
        assert_eq!(v["container"], "mov");
        assert_eq!(v["duration"], 12.0);
        assert_eq!(v["frame_count"], 300);
        assert_eq!(v["keyframes"], json!([0.0, 2.0, 4.0, 6.0, 8.0, 10.0]));
        // Rotated by 90: the display size is the coded size turned.
        assert_eq!(
            (v["width"].clone(), v["height"].clone()),
            (json!(360), json!(640))
        );
        assert_eq!(v["streams"][0]["codec"], "h264");
        assert_eq!(v["streams"][0]["rotation"], 90);
        assert_eq!(v["streams"][1]["channels"], 2);
        assert!(v["streams"][1].get("width").is_none());
        assert!(v["streams"][1].get("rotation").is_none());
        assert_eq!(v["browser_ready"], true);
        assert_eq!(
            v["renditions"]["frame"],
            "/v/clips/a%2Fb.mp4/frame/{n}.jpg?token=abc"
        );
        assert_eq!(
            v["renditions"]["hls"],
            "/v/clips/a%2Fb.mp4/hls/index.m3u8?token=abc"
        );
    }

    #[test]
    fn audio_only_has_no_picture_links() {
        let mut p = sample();
        p.streams.remove(0);
        p.video = None;
        p.frames = None;
        let v = info_json(
            &p,
            &Links {
                base: "/v/s/k/".into(),
                query: None,
            },
        );
        assert!(v.get("frame_count").is_none());
        assert!(v["renditions"].get("poster").is_none());
        assert_eq!(v["renditions"]["web_mp4"], "/v/s/k/web.mp4");
    }
}
