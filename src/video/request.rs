//! The `/v/{source}/{key}/...` tail and its query, parsed and normalized: the canonical text
//! names the cache entry and the ETag, so two spellings of one request share both.
//!
//! Skeleton: the pipeline helper fills this in.

use super::VideoError;

/// The image formats of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameFormat {
    Jpg,
    Png,
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

impl VideoRequest {
    /// Parse the path after the key (`info.json`, `frame/12.jpg`, ...) and the query's
    /// parameters other than `token` (each name at most once; unknown names are 400).
    pub fn parse(tail: &str, params: &[(&str, &str)]) -> Result<VideoRequest, VideoError> {
        let _ = (tail, params);
        Err(VideoError::BadParameter {
            param: "path",
            why: "not implemented yet".into(),
        })
    }

    /// The normalized request (cache label and ETag input), e.g. `frame/12.jpg?w=320`.
    pub fn canonical(&self) -> String {
        format!("{self:?}")
    }
}
