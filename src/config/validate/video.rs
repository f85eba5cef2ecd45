//! `[video]` — a child of `validate/mod.rs`, so it shares the [`Checker`] and its range check.
//!
//! Decisions the messages below explain to the operator:
//! - The table is optional: absent, video is on with the defaults (`enabled = false` turns the
//!   `/v/` routes off). A missing ffmpeg is not a config error: the routes answer 503 saying so
//!   and `/readyz` names it, so `cargo run -- serve` works on a machine without ffmpeg.
//! - `ffmpeg` and `ffprobe` are a bare name (looked up in PATH at start) or an absolute path;
//!   a relative path would depend on the directory the gateway was started from.
//! - `containers`, `video_codecs` and `audio_codecs` may only narrow the built-in lists (the
//!   formats the gateway was tested with): an unknown name is an error listing the allowed ones.
//! - `work_dir` is relative to the config file's directory; absent, a private directory under
//!   the system temp dir is made at start.

use std::time::Duration;

use toml::Spanned;

use super::super::VideoConfig;
use super::super::defaults as d;
use super::super::file::RawVideo;
use super::Checker;

impl Checker<'_> {
    /// `[video]`: the defaults when absent; `None` after an error.
    pub(super) fn video(&mut self, raw: Option<&Spanned<RawVideo>>) -> Option<VideoConfig> {
        let empty = RawVideo::default();
        let r = raw.map_or(&empty, Spanned::get_ref);
        let before = self.errors.len();
        macro_rules! key {
            ($key:ident, $default:expr, $min:expr, $max:expr) => {
                self.bounded(
                    &r.$key,
                    concat!("video.", stringify!($key)),
                    $default,
                    $min,
                    $max,
                )
            };
        }
        let secs = |s: u64| Duration::from_secs(s);
        let ffmpeg = self.tool(r.ffmpeg.as_ref(), "video.ffmpeg", d::VIDEO_FFMPEG);
        let ffprobe = self.tool(r.ffprobe.as_ref(), "video.ffprobe", d::VIDEO_FFPROBE);
        let containers = self.names(
            r.containers.as_ref(),
            "video.containers",
            d::VIDEO_CONTAINERS,
        );
        let video_codecs = self.names(
            r.video_codecs.as_ref(),
            "video.video_codecs",
            d::VIDEO_CODECS,
        );
        let audio_codecs = self.names(
            r.audio_codecs.as_ref(),
            "video.audio_codecs",
            d::AUDIO_CODECS,
        );
        let preset = match &r.preset {
            None => d::VIDEO_PRESET.to_owned(),
            Some(p) if d::VIDEO_PRESETS.contains(&p.get_ref().as_str()) => p.get_ref().clone(),
            Some(p) => {
                self.push(
                    p.span(),
                    "video.preset",
                    format!(
                        "`{}` is not an x264 preset; use one of {} (default {})",
                        p.get_ref(),
                        d::VIDEO_PRESETS.join(", "),
                        d::VIDEO_PRESET
                    ),
                );
                String::new()
            }
        };
        let work_dir = match &r.work_dir {
            None => None,
            Some(dir) if dir.get_ref().trim().is_empty() => {
                self.push(
                    dir.span(),
                    "video.work_dir",
                    "is empty; write a directory for the web.mp4 renditions, or remove the key \
                     to use a private directory under the system temp dir",
                );
                None
            }
            Some(dir) => Some(self.base_dir.join(dir.get_ref())),
        };
        let config = VideoConfig {
            enabled: r.enabled.as_ref().is_none_or(|e| *e.get_ref()),
            ffmpeg,
            ffprobe,
            jobs: match &r.jobs {
                // 0 is allowed here: one child per core.
                Some(j) if *j.get_ref() == 0 => 0,
                _ => key!(jobs, d::VIDEO_JOBS, 1, d::VIDEO_JOBS_MAX),
            },
            queue: key!(queue, d::VIDEO_QUEUE, 0, d::VIDEO_QUEUE_MAX),
            job_timeout: secs(key!(
                job_timeout_secs,
                d::VIDEO_JOB_TIMEOUT_SECS,
                1,
                d::VIDEO_JOB_TIMEOUT_SECS_MAX
            )),
            transcode_timeout: secs(key!(
                transcode_timeout_secs,
                d::VIDEO_TRANSCODE_TIMEOUT_SECS,
                1,
                d::VIDEO_TRANSCODE_TIMEOUT_SECS_MAX
            )),
            max_duration: secs(key!(
                max_duration_secs,
                d::VIDEO_MAX_DURATION_SECS,
                1,
                d::VIDEO_MAX_DURATION_SECS_MAX
            )),
            max_width: key!(max_width, d::VIDEO_MAX_WIDTH, 1, d::VIDEO_MAX_SIDE_MAX),
            max_height: key!(max_height, d::VIDEO_MAX_HEIGHT, 1, d::VIDEO_MAX_SIDE_MAX),
            max_pixels: key!(max_pixels, d::VIDEO_MAX_PIXELS, 1, d::VIDEO_MAX_PIXELS_MAX),
            max_streams: key!(
                max_streams,
                d::VIDEO_MAX_STREAMS,
                1,
                d::VIDEO_MAX_STREAMS_MAX
            ),
            max_bit_rate: key!(
                max_bit_rate,
                d::VIDEO_MAX_BIT_RATE,
                1,
                d::VIDEO_MAX_BIT_RATE_MAX
            ),
            max_source_bytes: key!(
                max_source_bytes,
                d::VIDEO_MAX_SOURCE_BYTES,
                1,
                d::VIDEO_MAX_SOURCE_BYTES_MAX
            ),
            containers,
            video_codecs,
            audio_codecs,
            preset,
            crf: key!(crf, d::VIDEO_CRF, 0, d::VIDEO_CRF_MAX),
            max_output_side: key!(
                max_output_side,
                d::VIDEO_MAX_OUTPUT_SIDE,
                d::VIDEO_OUTPUT_SIDE_MIN,
                d::VIDEO_OUTPUT_SIDE_MAX
            ),
            segment_secs: key!(
                segment_secs,
                d::VIDEO_SEGMENT_SECS,
                d::VIDEO_SEGMENT_SECS_MIN,
                d::VIDEO_SEGMENT_SECS_MAX
            ),
            max_output_width: key!(
                max_output_width,
                d::VIDEO_MAX_OUTPUT_WIDTH,
                d::VIDEO_OUTPUT_SIDE_MIN,
                d::VIDEO_OUTPUT_SIDE_MAX
            ),
            work_dir,
            store_bytes: key!(
                store_bytes,
                d::VIDEO_STORE_BYTES,
                d::VIDEO_STORE_BYTES_MIN,
                d::VIDEO_STORE_BYTES_MAX
            ),
        };
        (self.errors.len() == before).then_some(config)
    }

    /// A tool: a bare name (looked up in PATH at start) or an absolute path.
    fn tool(&mut self, raw: Option<&Spanned<String>>, key: &str, default: &str) -> String {
        let Some(raw) = raw else {
            return default.to_owned();
        };
        let text = raw.get_ref();
        let problem = if text.is_empty() {
            Some("is empty")
        } else if text.chars().any(char::is_control) {
            Some("contains a control character")
        } else if text.starts_with('-') {
            Some("begins with '-'")
        } else if text.contains('/') && !text.starts_with('/') {
            Some("is a relative path")
        } else {
            None
        };
        if let Some(problem) = problem {
            self.push(
                raw.span(),
                key,
                format!(
                    "`{text}` {problem}; write a program name looked up in PATH (default \
                     \"{default}\") or an absolute path such as \"/usr/bin/{default}\""
                ),
            );
        }
        text.clone()
    }

    /// A list that may only narrow `allowed` (the default: all of it); each name once.
    fn names(
        &mut self,
        raw: Option<&Spanned<Vec<Spanned<String>>>>,
        key: &str,
        allowed: &[&str],
    ) -> Vec<String> {
        let Some(raw) = raw else {
            return allowed.iter().map(|s| (*s).to_owned()).collect();
        };
        let mut names: Vec<String> = Vec::new();
        for name in raw.get_ref() {
            let text = name.get_ref();
            if !allowed.contains(&text.as_str()) {
                self.push(
                    name.span(),
                    key,
                    format!(
                        "`{text}` is not one of the allowed names: {}; remove it",
                        allowed.join(", ")
                    ),
                );
            } else if names.contains(text) {
                self.push(
                    name.span(),
                    key,
                    format!("`{text}` is listed twice; remove one"),
                );
            } else {
                names.push(text.clone());
            }
        }
        if raw.get_ref().is_empty() && key == "video.containers" {
            self.push(
                raw.span(),
                key,
                format!(
                    "is empty: no video could be read; list some of {}, or set enabled = false",
                    allowed.join(", ")
                ),
            );
        }
        names
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)] // tests may unwrap and panic; src/ may not
mod tests {
    use std::path::Path;

    const BASE: &str = r#"
[listener]
addr = "127.0.0.1:0"
dev_certificate_dir = ".bucketgate"
[sources.a]
kind = "fs"
root = "/"
"#;

    fn parse(table: &str) -> Result<crate::config::VideoConfig, String> {
        crate::config::parse(&format!("{BASE}{table}\n"), "/etc/bucketgate/config.toml")
            .map(|c| c.video)
            .map_err(|e| {
                e.0.iter()
                    .map(|e| format!("{}: {}", e.key, e.message))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
    }

    #[test]
    fn absent_table_is_the_defaults() {
        assert_eq!(parse("").unwrap(), crate::config::VideoConfig::default());
    }

    #[test]
    fn keys_are_read_and_bounded() {
        let v = parse(
            "[video]\nenabled = false\nffmpeg = \"/opt/ff/ffmpeg\"\njobs = 0\ncrf = 0\n\
             segment_secs = 6\ncontainers = [\"mov\"]\nvideo_codecs = [\"h264\"]\n\
             preset = \"slow\"\nwork_dir = \"video\"",
        )
        .unwrap();
        assert!(!v.enabled);
        assert_eq!(v.ffmpeg, "/opt/ff/ffmpeg");
        assert_eq!((v.jobs, v.crf, v.segment_secs), (0, 0, 6));
        assert_eq!(v.containers, ["mov"]);
        assert_eq!(v.video_codecs, ["h264"]);
        assert_eq!(v.preset, "slow");
        assert_eq!(
            v.work_dir.as_deref(),
            Some(Path::new("/etc/bucketgate/video"))
        );
        for (bad, words) in [
            ("crf = 52", "video.crf"),
            ("segment_secs = 1", "from 2 to 30"),
            ("segment_secs = 31", "video.segment_secs"),
            ("containers = [\"mp4\"]", "mov, matroska, avi, mpegts"),
            ("containers = []", "is empty"),
            ("video_codecs = [\"h265\"]", "hevc"),
            ("audio_codecs = [\"aac\", \"aac\"]", "listed twice"),
            ("preset = \"turbo\"", "veryfast"),
            ("ffmpeg = \"bin/ffmpeg\"", "relative path"),
            ("ffprobe = \"-i\"", "begins with '-'"),
            ("max_output_width = 8", "video.max_output_width"),
            ("bogus = 1", "bogus"),
        ] {
            let e = parse(&format!("[video]\n{bad}")).unwrap_err();
            assert!(e.contains(words), "{bad}: {e}");
        }
    }
}
