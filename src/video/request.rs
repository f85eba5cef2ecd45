//! The `/v/{source}/{key}/...` tail and its query, parsed and normalized: the canonical text
//! names the cache entry and the ETag, so two spellings of one request share both.
//!
//! The tails and the parameters each takes:
//!
//! | tail | parameters |
//! |---|---|
//! | `info.json` | none |
//! | `poster.jpg` | `t` (seconds, a decimal `>= 0` with at most 3 decimals; default 0), `w` |
//! | `frame/{n}.jpg`, `frame/{n}.png` | `w` |
//! | `web.mp4`, `hls/index.m3u8`, `hls/{n}.ts`, `sprite.jpg`, `sprite.vtt` | none |
//!
//! `n` is a plain decimal (digits only: no sign, at most 10 digits for a frame, 9 for a
//! segment); `w` is a plain decimal of at least [`MIN_WIDTH`] (the upper bound, `[video]
//! max_output_width`, is checked against the limits in force by the pipeline). Any other tail is
//! [`VideoError::NoSuchPart`] (the route's 404); any other parameter, or one a tail does not
//! take, is [`VideoError::BadParameter`] naming it (400). `token` is the pipeline's and never
//! reaches here.

use super::VideoError;

/// The narrowest `w`.
pub const MIN_WIDTH: u32 = crate::config::defaults::VIDEO_OUTPUT_SIDE_MIN as u32;

/// The image formats of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameFormat {
    Jpg,
    Png,
}

impl FrameFormat {
    pub fn extension(self) -> &'static str {
        match self {
            FrameFormat::Jpg => "jpg",
            FrameFormat::Png => "png",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            FrameFormat::Jpg => "image/jpeg",
            FrameFormat::Png => "image/png",
        }
    }
}

/// What a `/v/` request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VideoRequest {
    /// `info.json`
    Info,
    /// `poster.jpg?t=SECONDS[&w=WIDTH]`: the frame shown at `t` (milliseconds here), clamped to
    /// the last frame.
    Poster { t_ms: u64, width: Option<u32> },
    /// `frame/{n}.jpg|png[?w=WIDTH]`: exactly frame `n` (0-based, presentation order).
    Frame {
        n: u64,
        width: Option<u32>,
        format: FrameFormat,
    },
    /// `web.mp4`
    WebMp4,
    /// `hls/index.m3u8`
    HlsPlaylist,
    /// `hls/{n}.ts`
    HlsSegment { n: u32 },
    /// `sprite.jpg`
    Sprite,
    /// `sprite.vtt`
    SpriteVtt,
}

/// Longest integer part of `t` (seconds): far past any accepted duration.
const MAX_T_DIGITS: usize = 9;
/// Longest `n` of a frame and of a segment.
const MAX_FRAME_DIGITS: usize = 10;
const MAX_SEGMENT_DIGITS: usize = 9;
/// Longest `w`.
const MAX_WIDTH_DIGITS: usize = 5;

impl VideoRequest {
    /// Parse the path after the key (`info.json`, `frame/12.jpg`, ...) and the query's
    /// parameters other than `token` (each name at most once; unknown names are 400).
    pub fn parse(tail: &str, params: &[(&str, &str)]) -> Result<VideoRequest, VideoError> {
        let request = match tail {
            "info.json" => VideoRequest::Info,
            "poster.jpg" => VideoRequest::Poster {
                t_ms: 0,
                width: None,
            },
            "web.mp4" => VideoRequest::WebMp4,
            "hls/index.m3u8" => VideoRequest::HlsPlaylist,
            "sprite.jpg" => VideoRequest::Sprite,
            "sprite.vtt" => VideoRequest::SpriteVtt,
            _ => {
                if let Some(name) = tail.strip_prefix("frame/") {
                    let (n, format) = if let Some(n) = name.strip_suffix(".jpg") {
                        (n, FrameFormat::Jpg)
                    } else if let Some(n) = name.strip_suffix(".png") {
                        (n, FrameFormat::Png)
                    } else {
                        return Err(no_such_part());
                    };
                    VideoRequest::Frame {
                        n: number(n, "n", MAX_FRAME_DIGITS)?,
                        width: None,
                        format,
                    }
                } else if let Some(n) = tail
                    .strip_prefix("hls/")
                    .and_then(|n| n.strip_suffix(".ts"))
                {
                    let n = number(n, "n", MAX_SEGMENT_DIGITS)?;
                    VideoRequest::HlsSegment {
                        n: u32::try_from(n).map_err(|_| bad("n", "is too large"))?,
                    }
                } else {
                    return Err(no_such_part());
                }
            }
        };
        request.with_params(params)
    }

    /// The parameters this request's tail takes, applied.
    fn with_params(mut self, params: &[(&str, &str)]) -> Result<VideoRequest, VideoError> {
        let takes: &[&str] = match self {
            VideoRequest::Poster { .. } => &["t", "w"],
            VideoRequest::Frame { .. } => &["w"],
            _ => &[],
        };
        for (i, (name, value)) in params.iter().enumerate() {
            if params[..i].iter().any(|(seen, _)| seen == name) {
                return Err(bad("query", format!("{} is repeated", shown(name))));
            }
            if !takes.contains(name) {
                let why = if takes.is_empty() {
                    format!(
                        "unknown parameter {}: this part takes only `token`",
                        shown(name)
                    )
                } else {
                    format!(
                        "unknown parameter {}: this part takes {} and `token`",
                        shown(name),
                        takes
                            .iter()
                            .map(|t| format!("`{t}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                return Err(bad("query", why));
            }
            match (&mut self, *name) {
                (VideoRequest::Poster { t_ms, .. }, "t") => *t_ms = seconds_ms(value)?,
                (VideoRequest::Poster { width, .. } | VideoRequest::Frame { width, .. }, "w") => {
                    *width = Some(width_of(value)?)
                }
                _ => {}
            }
        }
        Ok(self)
    }

    /// The normalized request (cache label and ETag input), e.g. `frame/12.jpg?w=320`.
    pub fn canonical(&self) -> String {
        let w = |width: &Option<u32>| width.map(|w| format!("w={w}"));
        match self {
            VideoRequest::Info => "info.json".to_owned(),
            VideoRequest::Poster { t_ms, width } => {
                let mut s = format!("poster.jpg?t={}", format_ms(*t_ms));
                if let Some(w) = w(width) {
                    s.push('&');
                    s.push_str(&w);
                }
                s
            }
            VideoRequest::Frame { n, width, format } => {
                let mut s = format!("frame/{n}.{}", format.extension());
                if let Some(w) = w(width) {
                    s.push('?');
                    s.push_str(&w);
                }
                s
            }
            VideoRequest::WebMp4 => "web.mp4".to_owned(),
            VideoRequest::HlsPlaylist => "hls/index.m3u8".to_owned(),
            VideoRequest::HlsSegment { n } => format!("hls/{n}.ts"),
            VideoRequest::Sprite => "sprite.jpg".to_owned(),
            VideoRequest::SpriteVtt => "sprite.vtt".to_owned(),
        }
    }

    /// The path after the key, without the query (for the audit record and links).
    pub fn tail(&self) -> String {
        let canonical = self.canonical();
        match canonical.split_once('?') {
            Some((tail, _)) => tail.to_owned(),
            None => canonical,
        }
    }

    /// The width asked with `w`, if any (checked against `[video] max_output_width` by the
    /// pipeline, with the limits in force).
    pub fn width(&self) -> Option<u32> {
        match self {
            VideoRequest::Poster { width, .. } | VideoRequest::Frame { width, .. } => *width,
            _ => None,
        }
    }
}

fn bad(param: &'static str, why: impl Into<String>) -> VideoError {
    VideoError::BadParameter {
        param,
        why: why.into(),
    }
}

/// A parameter name as the client's message may show it: short, plain ASCII, else unnamed.
fn shown(name: &str) -> String {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if plain && !name.is_empty() && name.len() <= 32 {
        format!("`{name}`")
    } else {
        "(a parameter name that is not plain ASCII)".to_owned()
    }
}

fn no_such_part() -> VideoError {
    VideoError::NoSuchPart("no such video part".to_owned())
}

/// A plain decimal: digits only, at most `max_digits`.
fn number(text: &str, param: &'static str, max_digits: usize) -> Result<u64, VideoError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(param, "must be a plain decimal number (digits only)"));
    }
    if text.len() > max_digits {
        return Err(bad(param, format!("has more than {max_digits} digits")));
    }
    text.parse()
        .map_err(|_| bad(param, "must be a plain decimal number (digits only)"))
}

/// `t`: seconds as a decimal `>= 0` with at most 3 decimals, in milliseconds.
fn seconds_ms(text: &str) -> Result<u64, VideoError> {
    let why = "must be seconds as a decimal number >= 0 with at most 3 decimals, e.g. 5 or 12.345";
    let (int, frac) = match text.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f) || f.len() > 3) {
        return Err(bad("t", why));
    }
    if int.len() > MAX_T_DIGITS {
        return Err(bad("t", "is too large"));
    }
    let secs: u64 = int.parse().map_err(|_| bad("t", why))?;
    let ms = match frac {
        Some(f) => {
            let padded = format!("{f:0<3}");
            padded.parse::<u64>().map_err(|_| bad("t", why))?
        }
        None => 0,
    };
    Ok(secs * 1000 + ms)
}

/// `t` back as text: `5`, `5.25`, `0.001`.
fn format_ms(ms: u64) -> String {
    let (secs, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        secs.to_string()
    } else {
        let frac = format!("{frac:03}");
        format!("{secs}.{}", frac.trim_end_matches('0'))
    }
}

/// `w`: a plain decimal of at least [`MIN_WIDTH`].
fn width_of(text: &str) -> Result<u32, VideoError> {
    let w = number(text, "w", MAX_WIDTH_DIGITS)?;
    let w = u32::try_from(w).map_err(|_| bad("w", "is too large"))?;
    if w < MIN_WIDTH {
        return Err(bad("w", format!("must be at least {MIN_WIDTH}")));
    }
    Ok(w)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)] // tests may unwrap and panic; src/ may not
mod tests {
    use super::*;

    fn parse(tail: &str, params: &[(&str, &str)]) -> Result<VideoRequest, VideoError> {
        VideoRequest::parse(tail, params)
    }

    fn param_of(e: VideoError) -> &'static str {
        match e {
            VideoError::BadParameter { param, .. } => param,
            other => panic!("not a bad parameter: {other:?}"),
        }
    }

    #[test]
    fn every_tail_parses() {
        assert_eq!(parse("info.json", &[]).unwrap(), VideoRequest::Info);
        assert_eq!(
            parse("poster.jpg", &[]).unwrap(),
            VideoRequest::Poster {
                t_ms: 0,
                width: None
            }
        );
        assert_eq!(
            parse("poster.jpg", &[("t", "5.25"), ("w", "320")]).unwrap(),
            VideoRequest::Poster {
                t_ms: 5250,
                width: Some(320)
            }
        );
        assert_eq!(
            parse("frame/12.png", &[("w", "16")]).unwrap(),
            VideoRequest::Frame {
                n: 12,
                width: Some(16),
                format: FrameFormat::Png
            }
        );
        assert_eq!(
            parse("frame/0.jpg", &[]).unwrap(),
            VideoRequest::Frame {
                n: 0,
                width: None,
                format: FrameFormat::Jpg
            }
        );
        assert_eq!(parse("web.mp4", &[]).unwrap(), VideoRequest::WebMp4);
        assert_eq!(
            parse("hls/index.m3u8", &[]).unwrap(),
            VideoRequest::HlsPlaylist
        );
        assert_eq!(
            parse("hls/7.ts", &[]).unwrap(),
            VideoRequest::HlsSegment { n: 7 }
        );
        assert_eq!(parse("sprite.jpg", &[]).unwrap(), VideoRequest::Sprite);
        assert_eq!(parse("sprite.vtt", &[]).unwrap(), VideoRequest::SpriteVtt);
    }

    #[test]
    fn other_tails_are_no_such_part() {
        for tail in [
            "",
            "info",
            "INFO.JSON",
            "poster.png",
            "frame/1.gif",
            "frame/1",
            "frame/",
            "hls/index.m3u",
            "hls/1.mp4",
            "web.mp4/",
            "sprite",
            "a/info.json",
        ] {
            assert!(
                matches!(parse(tail, &[]), Err(VideoError::NoSuchPart(_))),
                "{tail}"
            );
        }
    }

    #[test]
    fn numbers_are_plain_decimals() {
        for n in ["+1", "-1", "1.0", "1e3", " 1", "0x1", "12345678901", "١"] {
            assert_eq!(
                param_of(parse(&format!("frame/{n}.jpg"), &[]).unwrap_err()),
                "n",
                "{n}"
            );
        }
        assert!(parse("frame/9999999999.jpg", &[]).is_ok());
        assert_eq!(
            parse("frame/007.jpg", &[]).unwrap().canonical(),
            "frame/7.jpg"
        );
        assert_eq!(param_of(parse("hls/1234567890.ts", &[]).unwrap_err()), "n");
        assert_eq!(param_of(parse("hls/-1.ts", &[]).unwrap_err()), "n");
        assert_eq!(param_of(parse("frame/.jpg", &[]).unwrap_err()), "n");
    }

    #[test]
    fn t_and_w_are_checked() {
        for t in [
            "-1",
            "+1",
            "1.2345",
            "1.",
            ".5",
            "",
            "1e3",
            "nan",
            "1,5",
            "1234567890",
        ] {
            assert_eq!(
                param_of(parse("poster.jpg", &[("t", t)]).unwrap_err()),
                "t",
                "{t}"
            );
        }
        for w in ["0", "15", "-16", "+16", "16.0", "", "100000", "abc"] {
            assert_eq!(
                param_of(parse("poster.jpg", &[("w", w)]).unwrap_err()),
                "w",
                "{w}"
            );
        }
        assert_eq!(
            param_of(parse("frame/1.jpg", &[("w", "8")]).unwrap_err()),
            "w"
        );
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        let e = parse("poster.jpg", &[("x", "1")]).unwrap_err();
        assert!(e.to_string().contains("`x`"), "{e}");
        assert_eq!(param_of(e), "query");
        assert_eq!(
            param_of(parse("frame/1.jpg", &[("t", "1")]).unwrap_err()),
            "query"
        );
        for tail in [
            "info.json",
            "web.mp4",
            "hls/index.m3u8",
            "hls/0.ts",
            "sprite.jpg",
            "sprite.vtt",
        ] {
            assert_eq!(
                param_of(parse(tail, &[("w", "100")]).unwrap_err()),
                "query",
                "{tail}"
            );
        }
        let e = parse("poster.jpg", &[("t", "1"), ("t", "2")]).unwrap_err();
        assert!(e.to_string().contains("repeated"), "{e}");
    }

    #[test]
    fn canonical_forms_normalize() {
        let c = |tail: &str, params: &[(&str, &str)]| parse(tail, params).unwrap().canonical();
        assert_eq!(c("poster.jpg", &[("t", "5")]), "poster.jpg?t=5");
        assert_eq!(c("poster.jpg", &[("t", "5.000")]), "poster.jpg?t=5");
        assert_eq!(c("poster.jpg", &[("t", "05.50")]), "poster.jpg?t=5.5");
        assert_eq!(c("poster.jpg", &[]), "poster.jpg?t=0");
        assert_eq!(c("poster.jpg", &[("t", "0.001")]), "poster.jpg?t=0.001");
        assert_eq!(
            c("poster.jpg", &[("w", "0320"), ("t", "1")]),
            c("poster.jpg", &[("t", "1.0"), ("w", "320")])
        );
        assert_eq!(c("frame/3.png", &[("w", "64")]), "frame/3.png?w=64");
        assert_eq!(c("hls/003.ts", &[]), "hls/3.ts");
        assert_eq!(
            parse("frame/3.png", &[("w", "64")]).unwrap().tail(),
            "frame/3.png"
        );
        // Every canonical form parses back to itself.
        for (tail, params) in [
            ("info.json", vec![]),
            ("poster.jpg", vec![("t", "12.345"), ("w", "640")]),
            ("frame/299.jpg", vec![("w", "320")]),
            ("web.mp4", vec![]),
            ("hls/index.m3u8", vec![]),
            ("hls/2.ts", vec![]),
            ("sprite.jpg", vec![]),
            ("sprite.vtt", vec![]),
        ] {
            let r = parse(tail, &params).unwrap();
            let canonical = r.canonical();
            let (t, q) = canonical.split_once('?').unwrap_or((&canonical, ""));
            let pairs: Vec<(&str, &str)> = q
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap())
                .collect();
            assert_eq!(parse(t, &pairs).unwrap(), r, "{canonical}");
        }
    }
}
