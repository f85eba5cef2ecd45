//! The IIIF Image API 3.0 parameters (`{region}/{size}/{rotation}/{quality}.{format}`): parsed
//! and normalized into an [`ImageRequest`] (the cache keys derived outputs by its canonical
//! form), then resolved against a [`SourceImage`](super::SourceImage) and the limits into a
//! [`RenderOp`]; and the `info.json` document.
//!
//! Skeleton: the helper that owns the IIIF API fills this in.

use super::OutputFormat;

/// `{quality}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quality {
    Default,
    Color,
    Gray,
    Bitonal,
}

/// A parsed, normalized IIIF image request (before the image's size is known).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRequest {
    /// The canonical text of the request (`region/size/rotation/quality.format`), the cache's
    /// representation label (`iiif:` + this) and part of the ETag.
    canonical: String,
}

impl ImageRequest {
    pub fn canonical(&self) -> &str {
        &self.canonical
    }
}

/// A pixel rectangle of the full-size image as displayed (after EXIF orientation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

/// What to render, resolved against the image's size and the limits: crop `region`, scale it to
/// `width` x `height`, mirror, then rotate clockwise by `rotation` (0, 90, 180, 270), apply
/// `quality`, encode as `format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOp {
    pub region: Rect,
    pub width: u32,
    pub height: u32,
    pub mirror: bool,
    pub rotation: u16,
    pub quality: Quality,
    pub format: OutputFormat,
}
