//! Format sniffing from magic bytes (never the key's extension), header probes that check the
//! limits before any decode, and decoding of JPEG (DCT-scaled), PNG, WebP and GIF (first frame).
//!
//! Hostile input is refused before a decoder allocates anything sized by the file:
//!
//! - [`sniff`] knows five magic numbers; SVG, HTML and everything else is
//!   [`ImageError::Unsupported`] (415), whatever the key is called;
//! - [`probe`] parses the header with our own small readers (JPEG markers up to SOF, PNG chunks
//!   up to IDAT, the WebP RIFF header, the GIF screen) and checks the pixel count and the
//!   declared frame count ([`ImageError::TooLarge`], 413) before any decoder sees the file; it
//!   asks for more bytes ([`Probed::NeedBytes`]) when metadata pushes the header past `head`;
//! - [`render`] checks the whole file again before decoding: every JPEG frame header and the
//!   number of scans (at most [`MAX_JPEG_SCANS`]: each scan of a progressive JPEG walks all of
//!   its coefficients), every GIF frame and WebP animation frame counted, then decodes with
//!   each library's own limit set to what the header promised: jpeg-decoder's decoding buffer,
//!   png's `Limits` (its text chunks are not even decompressed: a zip bomb in zTXt costs
//!   nothing), gif's memory limit, image-webp's memory limit. A panic inside a library is the
//!   pool's to contain (422).
//!
//! EXIF orientation is read from JPEG (APP1) and PNG (`eXIf` before the image data). WebP keeps
//! its EXIF after the image data, out of the probe's reach, and is shown as stored (as most
//! browsers do); GIF has none.
//!
//! JPEG is decoded at the smallest DCT scale (1/8, 1/4, 1/2, 1) at which the region is still at
//! least the output size; the region is cropped at that scale, rounded outwards to whole scaled
//! pixels (exact for IIIF tiles, whose regions are multiples of the scale factor). PNG without
//! interlacing is decoded row by row and only the region's rows are kept (a tile near the top of
//! a tall PNG stops reading early). The ICC profile of a JPEG, PNG or WebP is handed to
//! [`render::finish_with_icc`], which embeds it when it fits the output.

use std::io::Cursor;

use super::iiif::{Rect, RenderOp};
use super::render::{self, Layout, Pixels};
use super::{ImageError, ImageLimits, Level, Rendered, SourceFormat, SourceImage};

/// Most scans a JPEG may have (progressive encoders write about 10; each scan costs a pass over
/// all coefficients, so a file with thousands is a CPU bomb).
pub const MAX_JPEG_SCANS: usize = 100;
/// Most header bytes a probe asks for (JPEG APP segments, PNG chunks before IDAT); beyond it the
/// file is refused rather than read further.
pub const MAX_HEADER_BYTES: usize = 4 * 1024 * 1024;
/// How far past the end of a cut segment the probe asks to read, to save round trips.
const NEED_AHEAD: usize = 64 * 1024;

/// The source format, from the first bytes (12 are enough). Anything else is 415.
pub fn sniff(head: &[u8]) -> Result<SourceFormat, ImageError> {
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Ok(SourceFormat::Jpeg)
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Ok(SourceFormat::Png)
    } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Ok(SourceFormat::Webp)
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Ok(SourceFormat::Gif)
    } else if head.starts_with(b"II*\0")
        || head.starts_with(b"MM\0*")
        || head.starts_with(b"II+\0")
        || head.starts_with(b"MM\0+")
    {
        Ok(SourceFormat::Tiff)
    } else {
        Err(ImageError::Unsupported)
    }
}

/// What [`probe`] found: the image, or that the header goes on past `head`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probed {
    Image(SourceImage),
    /// Call again with at least this many bytes from the start (never more than the object).
    NeedBytes(usize),
}

/// Read a JPEG, PNG, WebP or GIF header from `head` (the first bytes of an object of `total`
/// bytes) and check it against the limits, before any decode. TIFF is `tiff.rs`'s.
pub fn probe(
    format: SourceFormat,
    head: &[u8],
    total: u64,
    limits: &ImageLimits,
) -> Result<Probed, ImageError> {
    let header = match header(format, head, limits)? {
        Walk::Done(h) => h,
        Walk::Need(n) => return need(n, head, total),
    };
    Ok(Probed::Image(header.source_image(format)))
}

/// Render `op` from the whole file `data`, described by `image` (from [`probe`]). Synchronous:
/// runs on a pool thread.
pub fn render(
    data: &[u8],
    image: &SourceImage,
    op: &RenderOp,
    limits: &ImageLimits,
) -> Result<Rendered, ImageError> {
    if u64::from(op.width) * u64::from(op.height) > limits.max_output_pixels {
        return Err(ImageError::TooLarge(
            "the output is over the pixel limit".into(),
        ));
    }
    // The whole file now: the header again (the object may have changed since the probe), then
    // what only the whole file shows (JPEG scans and frames, GIF and WebP frame counts).
    let header = match header(image.format, data, limits)? {
        Walk::Done(h) => h,
        Walk::Need(_) => return Err(ImageError::Corrupt("the header is cut short".into())),
    };
    let (sw, sh) = (header.width, header.height);
    let (dw, dh) = if render::swaps_sides(image.orientation) {
        (sh, sw)
    } else {
        (sw, sh)
    };
    if (dw, dh) != (image.width, image.height) {
        return Err(ImageError::Corrupt(
            "the image changed while it was read".into(),
        ));
    }
    let region = render::stored_rect(op.region, image.orientation, image.width, image.height);
    // The output size in stored orientation.
    let (ow, oh) = if render::swaps_sides(image.orientation) {
        (op.height, op.width)
    } else {
        (op.width, op.height)
    };
    let (pixels, icc) = match image.format {
        SourceFormat::Jpeg => {
            check_jpeg_body(data, limits)?;
            decode_jpeg(data, &header, region, (ow, oh))?
        }
        SourceFormat::Png => decode_png(data, &header, region)?,
        SourceFormat::Webp => {
            check_frames(webp_frames(data)?, limits)?;
            decode_webp(data, &header, region)?
        }
        SourceFormat::Gif => {
            match gif_frames(data, limits.max_frames)? {
                Walk::Done(n) => check_frames(u32::try_from(n).unwrap_or(u32::MAX), limits)?,
                Walk::Need(_) => return Err(ImageError::Corrupt("the GIF is cut short".into())),
            }
            (decode_gif(data, &header, region)?, None)
        }
        SourceFormat::Tiff => return Err(ImageError::Unsupported),
    };
    render::finish_with_icc(pixels, op, image.orientation, icc.as_deref())
}

/// A header reader's answer: done, or the header goes on to this offset.
enum Walk<T> {
    Done(T),
    Need(usize),
}

fn need(n: usize, head: &[u8], total: u64) -> Result<Probed, ImageError> {
    if head.len() as u64 >= total {
        return Err(ImageError::Corrupt("the header is cut short".into()));
    }
    if n > MAX_HEADER_BYTES {
        return Err(ImageError::TooLarge("the image header is too large".into()));
    }
    let want = n.saturating_add(NEED_AHEAD).min(MAX_HEADER_BYTES);
    let want = u64::try_from(want).unwrap_or(u64::MAX).min(total);
    Ok(Probed::NeedBytes(
        usize::try_from(want).unwrap_or(usize::MAX),
    ))
}

/// What the header says, in stored orientation.
struct Header {
    width: u32,
    height: u32,
    orientation: u8,
    /// JPEG only: components, sample precision, and the lossless process (no DCT scaling).
    components: u8,
    /// JPEG only: how much smaller the most subsampled component is, across and down (2, 2
    /// for 4:2:0; 1, 1 for 4:4:4 and gray).
    subsampling: (u32, u32),
    precision: u8,
    lossless: bool,
}

impl Header {
    fn new(width: u32, height: u32) -> Header {
        Header {
            width,
            height,
            orientation: 1,
            components: 0,
            precision: 8,
            subsampling: (1, 1),
            lossless: false,
        }
    }

    fn source_image(&self, format: SourceFormat) -> SourceImage {
        let swap = render::swaps_sides(self.orientation);
        let level = |w: u32, h: u32| {
            let (width, height) = if swap { (h, w) } else { (w, h) };
            Level {
                width,
                height,
                tile: None,
            }
        };
        let mut levels = vec![level(self.width, self.height)];
        if format == SourceFormat::Jpeg && !self.lossless {
            for eighths in [4u32, 2, 1] {
                let (w, h) = (scaled(self.width, eighths), scaled(self.height, eighths));
                if levels.last().is_some_and(|l| l.width * l.height > w * h) {
                    levels.push(level(w, h));
                }
            }
        }
        let first = &levels[0];
        SourceImage {
            format,
            width: first.width,
            height: first.height,
            levels,
            orientation: self.orientation,
        }
    }
}

/// A side decoded at `eighths`/8 of its size (rounded up, as the DCT scaling does).
fn scaled(side: u32, eighths: u32) -> u32 {
    ((u64::from(side) * u64::from(eighths)).div_ceil(8)) as u32
}

fn check_pixels(width: u32, height: u32, limits: &ImageLimits) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt("the image has no pixels".into()));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_source_pixels {
        return Err(ImageError::TooLarge(format!(
            "the image is {width}x{height}, over the limit of {} pixels",
            limits.max_source_pixels
        )));
    }
    Ok(())
}

fn check_frames(frames: u32, limits: &ImageLimits) -> Result<(), ImageError> {
    if frames > limits.max_frames {
        return Err(ImageError::TooLarge(format!(
            "the image has more than {} frames",
            limits.max_frames
        )));
    }
    Ok(())
}

fn header(
    format: SourceFormat,
    head: &[u8],
    limits: &ImageLimits,
) -> Result<Walk<Header>, ImageError> {
    if sniff(head)? != format {
        return Err(ImageError::Corrupt("the format changed".into()));
    }
    let header = match format {
        SourceFormat::Jpeg => jpeg_header(head)?,
        SourceFormat::Png => png_header(head, limits)?,
        SourceFormat::Webp => webp_header(head, limits)?,
        SourceFormat::Gif => gif_header(head, limits)?,
        SourceFormat::Tiff => return Err(ImageError::Unsupported),
    };
    if let Walk::Done(h) = &header {
        check_pixels(h.width, h.height, limits)?;
    }
    Ok(header)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le24(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], 0])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The orientation tag (0x0112) of IFD0 of a TIFF-structured EXIF block; 1 when absent or odd.
pub fn exif_orientation(tiff: &[u8]) -> u8 {
    fn read(tiff: &[u8]) -> Option<u8> {
        let big = match tiff.get(..4)? {
            b"MM\0*" => true,
            b"II*\0" => false,
            _ => return None,
        };
        let u16_at = |at: usize| -> Option<u16> {
            let b = tiff.get(at..at + 2)?;
            Some(if big {
                u16::from_be_bytes([b[0], b[1]])
            } else {
                u16::from_le_bytes([b[0], b[1]])
            })
        };
        let u32_at = |at: usize| -> Option<u32> {
            let b = tiff.get(at..at + 4)?;
            let b = [b[0], b[1], b[2], b[3]];
            Some(if big {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            })
        };
        let ifd = usize::try_from(u32_at(4)?).ok()?;
        let count = usize::from(u16_at(ifd)?);
        for i in 0..count.min(512) {
            let entry = ifd + 2 + 12 * i;
            if u16_at(entry)? == 0x0112 && u16_at(entry + 2)? == 3 {
                let o = u16_at(entry + 8)?;
                return u8::try_from(o).ok().filter(|o| (1..=8).contains(o));
            }
        }
        None
    }
    read(tiff).unwrap_or(1)
}

fn is_sof(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// JPEG markers from SOI up to the frame header (SOF): size, components, EXIF orientation.
fn jpeg_header(head: &[u8]) -> Result<Walk<Header>, ImageError> {
    let mut orientation = 1;
    let mut seen_exif = false;
    let mut pos = 2;
    loop {
        // Fill bytes (0xFF) may precede a marker.
        while pos + 1 < head.len() && head[pos] == 0xFF && head[pos + 1] == 0xFF {
            pos += 1;
        }
        if pos + 4 > head.len() {
            return Ok(Walk::Need(pos + 4));
        }
        if head[pos] != 0xFF {
            return Err(ImageError::Corrupt("a JPEG marker is missing".into()));
        }
        let marker = head[pos + 1];
        if matches!(marker, 0x01 | 0xD0..=0xD8) {
            pos += 2;
            continue;
        }
        if matches!(marker, 0xD9 | 0xDA) {
            return Err(ImageError::Corrupt("the JPEG has no frame header".into()));
        }
        let end = pos + 2 + usize::from(be16(head, pos + 2));
        if end < pos + 4 {
            return Err(ImageError::Corrupt("a JPEG segment is malformed".into()));
        }
        if end > head.len() {
            return Ok(Walk::Need(end));
        }
        let seg = &head[pos + 4..end];
        // The first EXIF block counts (as in libexif and exiftool); later ones are ignored.
        if marker == 0xE1 && seg.starts_with(b"Exif\0\0") && !seen_exif {
            seen_exif = true;
            orientation = exif_orientation(&seg[6..]);
        }
        if is_sof(marker) {
            if seg.len() < 6 {
                return Err(ImageError::Corrupt("the JPEG frame header is short".into()));
            }
            let (height, width) = (u32::from(be16(seg, 1)), u32::from(be16(seg, 3)));
            if height == 0 {
                // The height comes later (DNL): not supported, and not decodable with limits.
                return Err(ImageError::Corrupt("the JPEG frame has no height".into()));
            }
            let mut h = Header::new(width, height);
            h.orientation = orientation;
            h.precision = seg[0];
            h.components = seg[5];
            let factors: Vec<(u32, u32)> = seg[6..]
                .chunks_exact(3)
                .take(usize::from(h.components))
                .map(|c| (u32::from(c[1] >> 4).max(1), u32::from(c[1] & 15).max(1)))
                .collect();
            if factors.len() == usize::from(h.components) {
                let ratio = |f: fn(&(u32, u32)) -> u32| {
                    let max = factors.iter().map(f).max().unwrap_or(1);
                    let min = factors.iter().map(f).min().unwrap_or(1);
                    (max / min).clamp(1, 4)
                };
                h.subsampling = (ratio(|f| f.0), ratio(|f| f.1));
            }
            h.lossless = matches!(marker, 0xC3 | 0xC7 | 0xCB | 0xCF);
            if !matches!(h.components, 1 | 3 | 4) {
                return Err(ImageError::Corrupt(
                    "the JPEG has an odd number of components".into(),
                ));
            }
            return Ok(Walk::Done(h));
        }
        pos = end;
    }
}

/// The whole JPEG: every frame header within the limits, at most one frame, at most
/// [`MAX_JPEG_SCANS`] scans. A linear pass over the bytes, no decoding.
fn check_jpeg_body(data: &[u8], limits: &ImageLimits) -> Result<(), ImageError> {
    let mut frames = 0;
    let mut scans = 0;
    let mut pos = 2;
    while pos + 4 <= data.len() {
        if data[pos] != 0xFF {
            return Err(ImageError::Corrupt("a JPEG marker is missing".into()));
        }
        let marker = data[pos + 1];
        match marker {
            0xFF => pos += 1,
            0x01 | 0xD0..=0xD8 => pos += 2,
            0xD9 => return Ok(()),
            _ => {
                let end = pos + 2 + usize::from(be16(data, pos + 2));
                if end < pos + 4 || end > data.len() {
                    return Err(ImageError::Corrupt("a JPEG segment is cut short".into()));
                }
                if is_sof(marker) {
                    frames += 1;
                    if frames > 1 || end < pos + 4 + 6 {
                        return Err(ImageError::Corrupt(
                            "the JPEG has more than one frame".into(),
                        ));
                    }
                    let (h, w) = (be16(data, pos + 5), be16(data, pos + 7));
                    check_pixels(u32::from(w), u32::from(h), limits)?;
                }
                pos = end;
                if marker == 0xDA {
                    scans += 1;
                    if scans > MAX_JPEG_SCANS {
                        return Err(ImageError::TooLarge(format!(
                            "the JPEG has more than {MAX_JPEG_SCANS} scans"
                        )));
                    }
                    // Entropy-coded data runs to the next marker that is not a stuffed zero
                    // or a restart marker.
                    loop {
                        match data[pos..].iter().position(|&b| b == 0xFF) {
                            None => return Ok(()),
                            Some(i) => pos += i,
                        }
                        match data.get(pos + 1) {
                            None => return Ok(()),
                            Some(0x00 | 0xD0..=0xD7 | 0xFF) => pos += 1,
                            Some(_) => break,
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// jpeg-decoder's errors say nothing of the content; still, keep messages ours.
fn jpeg_error(_: jpeg_decoder::Error) -> ImageError {
    ImageError::Corrupt("the JPEG data is invalid".into())
}

fn decode_jpeg(
    data: &[u8],
    header: &Header,
    region: Rect,
    out: (u32, u32),
) -> Result<(Pixels, Option<Vec<u8>>), ImageError> {
    let (w, h) = (header.width, header.height);
    let eighths = if header.lossless {
        8
    } else {
        dct_eighths(region, out, header.subsampling)
    };
    let mut dec = jpeg_decoder::Decoder::new(data);
    dec.read_info().map_err(jpeg_error)?;
    let (sw, sh) = if eighths < 8 {
        let (rw, rh) = (scaled(w, eighths), scaled(h, eighths));
        let (rw, rh) = (u16::try_from(rw), u16::try_from(rh));
        let (Ok(rw), Ok(rh)) = (rw, rh) else {
            return Err(ImageError::Corrupt("the JPEG is too large".into()));
        };
        let (a, b) = dec.scale(rw, rh).map_err(jpeg_error)?;
        (u32::from(a), u32::from(b))
    } else {
        (w, h)
    };
    let components = usize::from(header.components.max(1));
    dec.set_max_decoding_buffer_size(sw as usize * sh as usize * components);
    let icc = dec.icc_profile();
    let raw = dec.decode().map_err(jpeg_error)?;
    let info = dec
        .info()
        .ok_or_else(|| ImageError::Corrupt("the JPEG has no frame".into()))?;
    let (layout, data) = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => (Layout::Gray8, raw),
        jpeg_decoder::PixelFormat::RGB24 => (Layout::Rgb8, raw),
        jpeg_decoder::PixelFormat::L16 => {
            let shift = u32::from(header.precision.clamp(8, 16)) - 8;
            let gray = raw
                .chunks_exact(2)
                .map(|b| (u16::from_ne_bytes([b[0], b[1]]) >> shift).min(255) as u8)
                .collect();
            (Layout::Gray8, gray)
        }
        jpeg_decoder::PixelFormat::CMYK32 => {
            // jpeg-decoder undoes Adobe's inversion (and YCCK): these are ink amounts.
            let rgb = raw
                .chunks_exact(4)
                .flat_map(|p| {
                    let k = 255 - u32::from(p[3]);
                    let ink = |c: u8| ((255 - u32::from(c)) * k / 255) as u8;
                    [ink(p[0]), ink(p[1]), ink(p[2])]
                })
                .collect();
            (Layout::Rgb8, rgb)
        }
    };
    let pixels = Pixels {
        width: sw,
        height: sh,
        layout,
        data,
    };
    // The region at the decoded scale, rounded outwards to whole pixels.
    let sx = |v: u32| u64::from(v) * u64::from(sw);
    let sy = |v: u32| u64::from(v) * u64::from(sh);
    let x0 = sx(region.x) / u64::from(w);
    let y0 = sy(region.y) / u64::from(h);
    let x1 = sx(region.x.saturating_add(region.w)).div_ceil(u64::from(w));
    let y1 = sy(region.y.saturating_add(region.h)).div_ceil(u64::from(h));
    let rect = Rect {
        x: x0 as u32,
        y: y0 as u32,
        w: (x1 - x0) as u32,
        h: (y1 - y0) as u32,
    };
    // An sRGB profile changes nothing; a CMYK one no longer fits the RGB pixels (render drops it).
    Ok((pixels.crop(rect)?, icc))
}

/// The smallest DCT scale (in eighths) at which `region` still covers the output size `out`,
/// counting the subsampled chroma: at 1/k the chroma of a 4:2:0 file is decoded at 1/2k and
/// upsampled, so it must cover the output too, or colour edges blur (against vipsthumbnail,
/// whose libjpeg scales chroma less than luma, a 4:2:0 test chart fell from 41 to 28 dB). A
/// thumbnail of a large photo is still decoded at 1/8.
fn dct_eighths(region: Rect, out: (u32, u32), subsampling: (u32, u32)) -> u32 {
    let want_w = u64::from(out.0) * u64::from(subsampling.0);
    let want_h = u64::from(out.1) * u64::from(subsampling.1);
    [1u32, 2, 4]
        .into_iter()
        .find(|&e| {
            u64::from(region.w) * u64::from(e) / 8 >= want_w
                && u64::from(region.h) * u64::from(e) / 8 >= want_h
        })
        .unwrap_or(8)
}

/// PNG chunks up to the image data: size (IHDR), frames (acTL), orientation (eXIf).
fn png_header(head: &[u8], limits: &ImageLimits) -> Result<Walk<Header>, ImageError> {
    if head.len() < 33 {
        return Ok(Walk::Need(33));
    }
    if &head[12..16] != b"IHDR" || be32(head, 8) != 13 {
        return Err(ImageError::Corrupt("the PNG has no IHDR".into()));
    }
    let mut h = Header::new(be32(head, 16), be32(head, 20));
    if h.width > i32::MAX as u32 || h.height > i32::MAX as u32 {
        return Err(ImageError::Corrupt("the PNG size is invalid".into()));
    }
    // The size alone may refuse the file, whatever follows.
    check_pixels(h.width, h.height, limits)?;
    let mut pos = 33;
    loop {
        if pos + 8 > head.len() {
            return Ok(Walk::Need(pos + 8));
        }
        let len = be32(head, pos) as usize;
        let kind = &head[pos + 4..pos + 8];
        if kind == b"IDAT" || kind == b"IEND" {
            return Ok(Walk::Done(h));
        }
        let end = pos.saturating_add(12).saturating_add(len);
        if end > head.len() {
            return Ok(Walk::Need(end));
        }
        let body = &head[pos + 8..pos + 8 + len];
        if kind == b"acTL" && len >= 8 {
            check_frames(be32(body, 0), limits)?;
        }
        if kind == b"eXIf" {
            h.orientation = exif_orientation(body);
        }
        pos = end;
    }
}

fn png_error(e: png::DecodingError) -> ImageError {
    match e {
        png::DecodingError::LimitsExceeded => {
            ImageError::TooLarge("the PNG needs more memory than allowed".into())
        }
        _ => ImageError::Corrupt("the PNG data is invalid".into()),
    }
}

fn decode_png(
    data: &[u8],
    header: &Header,
    region: Rect,
) -> Result<(Pixels, Option<Vec<u8>>), ImageError> {
    // Everything the decoder allocates is bounded by the image the header promised (16-bit RGBA)
    // plus room for an ICC profile: a deflate bomb in iCCP stops there (and is then ignored).
    let full = header.width as usize * header.height as usize * 8;
    let mut dec = png::Decoder::new_with_limits(
        Cursor::new(data),
        png::Limits {
            bytes: full + (4 << 20),
        },
    );
    dec.set_ignore_text_chunk(true);
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec.read_info().map_err(png_error)?;
    let icc = reader.info().icc_profile.as_ref().map(|p| p.to_vec());
    let interlaced = reader.info().interlaced;
    let layout = match reader.output_color_type().0 {
        png::ColorType::Grayscale => Layout::Gray8,
        png::ColorType::GrayscaleAlpha => Layout::GrayA8,
        png::ColorType::Rgb => Layout::Rgb8,
        png::ColorType::Rgba => Layout::Rgba8,
        png::ColorType::Indexed => {
            return Err(ImageError::Corrupt("the PNG palette is missing".into()));
        }
    };
    let (w, h) = (header.width, header.height);
    if interlaced {
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| ImageError::TooLarge("the PNG is too large".into()))?;
        let mut buf = vec![0u8; size];
        let frame = reader.next_frame(&mut buf).map_err(png_error)?;
        buf.truncate(frame.buffer_size());
        let pixels = Pixels {
            width: w,
            height: h,
            layout,
            data: buf,
        };
        return Ok((pixels.crop(region)?, icc));
    }
    // Row by row, keeping only the region.
    let ch = layout.channels();
    let x0 = region.x.min(w) as usize * ch;
    let x1 = region.x.saturating_add(region.w).min(w) as usize * ch;
    let y1 = region.y.saturating_add(region.h).min(h);
    let mut out = Vec::with_capacity((x1 - x0) * (y1.saturating_sub(region.y)) as usize);
    for y in 0..y1 {
        let row = reader
            .next_row()
            .map_err(png_error)?
            .ok_or_else(|| ImageError::Corrupt("the PNG is cut short".into()))?;
        if y >= region.y {
            let row = row.data();
            if row.len() < x1 {
                return Err(ImageError::Corrupt("the PNG row is short".into()));
            }
            out.extend_from_slice(&row[x0..x1]);
        }
    }
    let pixels = Pixels {
        width: ((x1 - x0) / ch) as u32,
        height: y1.saturating_sub(region.y),
        layout,
        data: out,
    };
    Ok((pixels, icc))
}

/// The WebP RIFF header: canvas size (VP8, VP8L or VP8X), animation frames seen in `head`.
fn webp_header(head: &[u8], limits: &ImageLimits) -> Result<Walk<Header>, ImageError> {
    if head.len() < 30 {
        return Ok(Walk::Need(30));
    }
    let (w, h) = match &head[12..16] {
        b"VP8 " => {
            if head[23..26] != [0x9d, 0x01, 0x2a] {
                return Err(ImageError::Corrupt("the WebP frame is invalid".into()));
            }
            (
                u32::from(le16(head, 26) & 0x3fff),
                u32::from(le16(head, 28) & 0x3fff),
            )
        }
        b"VP8L" => {
            if head[20] != 0x2f {
                return Err(ImageError::Corrupt("the WebP frame is invalid".into()));
            }
            let bits = le32(head, 21);
            ((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1)
        }
        b"VP8X" => (le24(head, 24) + 1, le24(head, 27) + 1),
        _ => return Err(ImageError::Corrupt("the WebP header is invalid".into())),
    };
    check_pixels(w, h, limits)?;
    if &head[12..16] == b"VP8X" && head[20] & 0x02 != 0 {
        // Animated: count the frames the head shows; render counts them all.
        let frames = webp_frames(head)?;
        check_frames(frames, limits)?;
    }
    Ok(Walk::Done(Header::new(w, h)))
}

/// ANMF chunks in the RIFF chunks of `data` (as far as it goes).
fn webp_frames(data: &[u8]) -> Result<u32, ImageError> {
    let mut frames = 0u32;
    let mut pos = 12usize;
    while pos + 8 <= data.len() {
        if &data[pos..pos + 4] == b"ANMF" {
            frames = frames.saturating_add(1);
        }
        let len = le32(data, pos + 4) as usize;
        pos = pos.saturating_add(8).saturating_add(len + (len & 1));
    }
    Ok(frames)
}

fn webp_error(e: image_webp::DecodingError) -> ImageError {
    match e {
        image_webp::DecodingError::MemoryLimitExceeded => {
            ImageError::TooLarge("the WebP needs more memory than allowed".into())
        }
        _ => ImageError::Corrupt("the WebP data is invalid".into()),
    }
}

fn decode_webp(
    data: &[u8],
    header: &Header,
    region: Rect,
) -> Result<(Pixels, Option<Vec<u8>>), ImageError> {
    let mut dec = image_webp::WebPDecoder::new(Cursor::new(data)).map_err(webp_error)?;
    let (w, h) = dec.dimensions();
    if (w, h) != (header.width, header.height) {
        return Err(ImageError::Corrupt("the WebP sizes disagree".into()));
    }
    let layout = if dec.has_alpha() {
        Layout::Rgba8
    } else {
        Layout::Rgb8
    };
    let size = w as usize * h as usize * layout.channels();
    dec.set_memory_limit(size + (4 << 20));
    let icc = dec.icc_profile().ok().flatten();
    let mut buf = vec![0u8; size];
    dec.read_image(&mut buf).map_err(webp_error)?;
    let pixels = Pixels {
        width: w,
        height: h,
        layout,
        data: buf,
    };
    Ok((pixels.crop(region)?, icc))
}

/// The GIF logical screen and the frames seen in `head`.
fn gif_header(head: &[u8], limits: &ImageLimits) -> Result<Walk<Header>, ImageError> {
    if head.len() < 13 {
        return Ok(Walk::Need(13));
    }
    let (w, h) = (u32::from(le16(head, 6)), u32::from(le16(head, 8)));
    check_pixels(w, h, limits)?;
    // Only what `head` shows: the rest is counted when rendering.
    let (Walk::Done(frames) | Walk::Need(frames)) = gif_frames(head, limits.max_frames)?;
    check_frames(u32::try_from(frames).unwrap_or(u32::MAX), limits)?;
    Ok(Walk::Done(Header::new(w, h)))
}

/// Image descriptors in a GIF, walking its blocks without decompressing: `Done(n)` at the
/// trailer, `Need(n)` when `data` ends first (n frames so far). Stops counting past `max`.
fn gif_frames(data: &[u8], max: u32) -> Result<Walk<usize>, ImageError> {
    let table = |flags: u8| {
        if flags & 0x80 != 0 {
            3usize << ((flags & 7) + 1)
        } else {
            0
        }
    };
    let mut frames = 0usize;
    if data.len() < 13 {
        return Ok(Walk::Need(0));
    }
    let mut pos = 13 + table(data[10]);
    loop {
        if frames > max as usize {
            return Ok(Walk::Done(frames));
        }
        let Some(&block) = data.get(pos) else {
            return Ok(Walk::Need(frames));
        };
        match block {
            0x3B => return Ok(Walk::Done(frames)),
            0x21 => pos += 2,
            0x2C => {
                frames += 1;
                let Some(&flags) = data.get(pos + 9) else {
                    return Ok(Walk::Need(frames));
                };
                pos += 10 + table(flags) + 1;
            }
            _ => return Err(ImageError::Corrupt("the GIF has an unknown block".into())),
        }
        // Sub-blocks up to the empty one.
        loop {
            let Some(&n) = data.get(pos) else {
                return Ok(Walk::Need(frames));
            };
            pos += 1 + usize::from(n);
            if n == 0 {
                break;
            }
        }
    }
}

fn decode_gif(data: &[u8], header: &Header, region: Rect) -> Result<Pixels, ImageError> {
    let (w, h) = (header.width, header.height);
    let canvas_bytes = w as usize * h as usize * 4;
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::RGBA);
    // The first frame is at most the screen (frames outside it are clipped anyway).
    let limit = std::num::NonZeroU64::new(canvas_bytes as u64 + (1 << 20))
        .map_or(gif::MemoryLimit::Unlimited, gif::MemoryLimit::Bytes);
    options.set_memory_limit(limit);
    let corrupt = |_| ImageError::Corrupt("the GIF data is invalid".into());
    let mut dec = options.read_info(Cursor::new(data)).map_err(corrupt)?;
    let frame = dec
        .read_next_frame()
        .map_err(|e| match e {
            gif::DecodingError::Io(_) | gif::DecodingError::Format(_) => {
                ImageError::Corrupt("the GIF data is invalid".into())
            }
            _ => ImageError::TooLarge("the GIF frame is too large".into()),
        })?
        .ok_or_else(|| ImageError::Corrupt("the GIF has no frame".into()))?;
    // The first frame on a transparent screen.
    let mut canvas = vec![0u8; canvas_bytes];
    let (fl, ft) = (u32::from(frame.left), u32::from(frame.top));
    let (fw, fh) = (u32::from(frame.width), u32::from(frame.height));
    if frame.buffer.len() < fw as usize * fh as usize * 4 {
        return Err(ImageError::Corrupt("the GIF frame is short".into()));
    }
    let mut opaque = fl == 0 && ft == 0 && fw >= w && fh >= h;
    // The part of the frame on the screen (a frame may lie partly or wholly outside it).
    let rows = if fl < w {
        fh.min(h.saturating_sub(ft))
    } else {
        0
    };
    for y in 0..rows {
        let cols = fw.min(w - fl) as usize;
        let src = (y * fw) as usize * 4;
        let dst = ((ft + y) * w + fl) as usize * 4;
        let row = &frame.buffer[src..src + cols * 4];
        opaque &= row.chunks_exact(4).all(|p| p[3] == 255);
        canvas[dst..dst + cols * 4].copy_from_slice(row);
    }
    let pixels = if opaque {
        Pixels {
            width: w,
            height: h,
            layout: Layout::Rgb8,
            data: canvas
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        }
    } else {
        Pixels {
            width: w,
            height: h,
            layout: Layout::Rgba8,
            data: canvas,
        }
    };
    pixels.crop(region)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::image::OutputFormat;
    use crate::image::iiif::Quality;

    fn limits() -> ImageLimits {
        ImageLimits::default()
    }

    /// RGB gradient: red grows to the right, green downwards, blue constant.
    fn gradient(w: u32, h: u32) -> Vec<u8> {
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                data.extend_from_slice(&[(x * 255 / w) as u8, (y * 255 / h) as u8, 128]);
            }
        }
        data
    }

    fn jpeg_with(
        w: u16,
        h: u16,
        setup: impl FnOnce(&mut jpeg_encoder::Encoder<&mut Vec<u8>>),
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
        setup(&mut enc);
        enc.encode(
            &gradient(u32::from(w), u32::from(h)),
            w,
            h,
            jpeg_encoder::ColorType::Rgb,
        )
        .unwrap();
        out
    }

    /// A TIFF-structured EXIF block with only the orientation tag.
    fn exif(orientation: u16) -> Vec<u8> {
        let mut t = b"II*\0\x08\0\0\0\x01\0".to_vec();
        t.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0]);
        t.extend_from_slice(&orientation.to_le_bytes());
        t.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        t
    }

    fn probed(data: &[u8]) -> SourceImage {
        let format = sniff(data).unwrap();
        match probe(format, data, data.len() as u64, &limits()).unwrap() {
            Probed::Image(i) => i,
            Probed::NeedBytes(n) => panic!("needs {n} bytes"),
        }
    }

    fn full_op(image: &SourceImage, width: u32, height: u32, format: OutputFormat) -> RenderOp {
        RenderOp {
            region: Rect {
                x: 0,
                y: 0,
                w: image.width,
                h: image.height,
            },
            width,
            height,
            mirror: false,
            rotation: 0,
            quality: Quality::Default,
            format,
        }
    }

    /// Decode a PNG output to RGB(A) bytes.
    fn png_pixels(bytes: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        let mut reader = png::Decoder::new(Cursor::new(bytes)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info, buf)
    }

    fn render_png(data: &[u8], width: u32, height: u32) -> (png::OutputInfo, Vec<u8>) {
        let image = probed(data);
        let op = full_op(&image, width, height, OutputFormat::Png);
        let out = render(data, &image, &op, &limits()).unwrap();
        assert_eq!((out.width, out.height), (width, height));
        png_pixels(&out.bytes)
    }

    fn png_file(
        w: u32,
        h: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        data: &[u8],
        extra: impl FnOnce(&mut png::Encoder<&mut Vec<u8>>),
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        extra(&mut enc);
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(data).unwrap();
        writer.finish().unwrap();
        out
    }

    #[test]
    fn decode_sniff_knows_five_magic_numbers_and_refuses_the_rest() {
        assert_eq!(
            sniff(&[0xFF, 0xD8, 0xFF, 0xE0]).unwrap(),
            SourceFormat::Jpeg
        );
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n....").unwrap(), SourceFormat::Png);
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 ").unwrap(), SourceFormat::Webp);
        assert_eq!(sniff(b"GIF89a..").unwrap(), SourceFormat::Gif);
        assert_eq!(sniff(b"II*\0....").unwrap(), SourceFormat::Tiff);
        assert_eq!(sniff(b"MM\0+....").unwrap(), SourceFormat::Tiff);
        for other in [
            &b"<svg xmlns=\"http://www.w3.org/2000/svg\">"[..],
            b"<!DOCTYPE html><html>",
            b"<?xml version=\"1.0\"?><svg>",
            b"",
            b"\xFF\xD8",
            b"RIFF\0\0\0\0AVI ",
            b"BM6\0\0\0",
        ] {
            assert!(
                matches!(sniff(other), Err(ImageError::Unsupported)),
                "{other:?}"
            );
        }
    }

    #[test]
    fn decode_jpeg_probe_gives_size_dct_levels_and_orientation() {
        let data = jpeg_with(640, 480, |_| {});
        let image = probed(&data);
        assert_eq!(
            (image.width, image.height, image.orientation),
            (640, 480, 1)
        );
        let sizes: Vec<_> = image.levels.iter().map(|l| (l.width, l.height)).collect();
        assert_eq!(sizes, [(640, 480), (320, 240), (160, 120), (80, 60)]);

        let data = jpeg_with(641, 479, |e| e.add_exif_metadata(&exif(6)).unwrap());
        let image = probed(&data);
        assert_eq!(
            (image.width, image.height, image.orientation),
            (479, 641, 6)
        );
        assert_eq!((image.levels[3].width, image.levels[3].height), (60, 81));
    }

    #[test]
    fn decode_jpeg_probe_asks_for_more_when_metadata_pushes_the_frame_header_out() {
        let data = jpeg_with(64, 64, |e| {
            for _ in 0..3 {
                e.add_app_segment(13, vec![0; 60_000]).unwrap();
            }
        });
        let head = &data[..1000];
        let Probed::NeedBytes(n) =
            probe(SourceFormat::Jpeg, head, data.len() as u64, &limits()).unwrap()
        else {
            panic!("a cut header is not an image");
        };
        assert!(n > 1000 && n <= data.len());
        // The whole object, cut: corrupt, not a loop of requests.
        assert!(matches!(
            probe(SourceFormat::Jpeg, head, head.len() as u64, &limits()),
            Err(ImageError::Corrupt(_))
        ));
        assert_eq!(probed(&data).width, 64);
    }

    /// A JPEG header claiming `w` x `h` (SOF0), then nothing.
    fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
        let mut d = vec![0xFF, 0xD8, 0xFF, 0xC0, 0, 17, 8];
        d.extend_from_slice(&h.to_be_bytes());
        d.extend_from_slice(&w.to_be_bytes());
        d.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xFF, 0xD9]);
        d
    }

    #[test]
    fn decode_jpeg_sof_65500_square_is_too_large_from_the_header() {
        let data = jpeg_claiming(65500, 65500);
        assert!(matches!(
            probe(SourceFormat::Jpeg, &data, 1 << 20, &limits()),
            Err(ImageError::TooLarge(_))
        ));
    }

    #[test]
    fn decode_jpeg_baseline_progressive_gray_render_the_same_picture() {
        let base = jpeg_with(256, 128, |_| {});
        let prog = jpeg_with(256, 128, |e| e.set_progressive(true));
        let (_, a) = render_png(&base, 64, 32);
        let (_, b) = render_png(&prog, 64, 32);
        let diff = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        assert!(diff <= 8, "baseline and progressive differ by {diff}");
        // Left column dark red, right column bright red.
        assert!(a[0] < 30 && a[63 * 3] > 220, "{} {}", a[0], a[63 * 3]);

        let mut gray = Vec::new();
        let luma: Vec<u8> = (0..64 * 64).map(|i| (i % 64 * 4) as u8).collect();
        jpeg_encoder::Encoder::new(&mut gray, 90)
            .encode(&luma, 64, 64, jpeg_encoder::ColorType::Luma)
            .unwrap();
        let (info, px) = render_png(&gray, 16, 16);
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        assert!(px[0] < 20 && px[15] > 230);
    }

    #[test]
    fn decode_jpeg_cmyk_and_ycck_become_rgb() {
        // Cyan ink only: no red, full green and blue.
        let cyan = [255u8, 0, 0, 0].repeat(32 * 32);
        for kind in [
            jpeg_encoder::ColorType::Cmyk,
            jpeg_encoder::ColorType::CmykAsYcck,
        ] {
            let mut data = Vec::new();
            jpeg_encoder::Encoder::new(&mut data, 95)
                .encode(&cyan, 32, 32, kind)
                .unwrap();
            let (info, px) = render_png(&data, 8, 8);
            assert_eq!(info.color_type, png::ColorType::Rgb);
            assert!(
                px[0] < 16 && px[1] > 240 && px[2] > 240,
                "{kind:?}: {:?}",
                &px[..3]
            );
        }
    }

    #[test]
    fn decode_jpeg_exif_orientation_is_applied() {
        // Stored 64x32, red grows to the right; orientation 6 shows it 32x64, red growing down.
        let data = jpeg_with(64, 32, |e| e.add_exif_metadata(&exif(6)).unwrap());
        let (info, px) = render_png(&data, 32, 64);
        assert_eq!((info.width, info.height), (32, 64));
        let red = |x: usize, y: usize| px[(y * 32 + x) * 3];
        assert!(
            red(16, 2) < 30 && red(16, 61) > 220,
            "{} {}",
            red(16, 2),
            red(16, 61)
        );
    }

    #[test]
    fn decode_jpeg_region_at_a_dct_scale_matches_the_full_decode() {
        let data = jpeg_with(1024, 512, |_| {});
        let image = probed(&data);
        let mut op = full_op(&image, 64, 64, OutputFormat::Png);
        // The right half's top-left 512x512 square, 8x smaller: decoded at 1/8.
        op.region = Rect {
            x: 512,
            y: 0,
            w: 512,
            h: 512,
        };
        assert_eq!(dct_eighths(op.region, (64, 64), (1, 1)), 1);
        // 4:2:0 chroma must cover the output too: one step larger.
        assert_eq!(dct_eighths(op.region, (64, 64), (2, 2)), 2);
        assert_eq!(dct_eighths(op.region, (64, 64), (2, 1)), 2);
        let (_, px) = png_pixels(&render(&data, &image, &op, &limits()).unwrap().bytes);
        // Red runs from 127 to 255 across the region.
        assert!((120..=140).contains(&px[0]), "{}", px[0]);
        assert!(px[63 * 3] > 240, "{}", px[63 * 3]);
        // A region the output size is decoded in full.
        let square = |side| Rect {
            x: 0,
            y: 0,
            w: side,
            h: side,
        };
        assert_eq!(dct_eighths(square(100), (100, 100), (1, 1)), 8);
        assert_eq!(dct_eighths(square(400), (100, 99), (1, 1)), 2);
        // A 6000-pixel side to 256: 1/8 whatever the chroma.
        assert_eq!(dct_eighths(square(6000), (256, 256), (2, 2)), 1);
    }

    #[test]
    fn decode_jpeg_with_thousands_of_scans_is_refused_before_decoding() {
        let mut data = jpeg_with(32, 32, |e| e.set_progressive(true));
        data.truncate(data.len() - 2);
        // An empty refinement scan of component 1, many times over.
        for _ in 0..3000 {
            data.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0, 1, 63, 0x10, 0x00]);
        }
        data.extend_from_slice(&[0xFF, 0xD9]);
        let image = probed(&data);
        let op = full_op(&image, 8, 8, OutputFormat::Jpg);
        let started = std::time::Instant::now();
        assert!(matches!(
            render(&data, &image, &op, &limits()),
            Err(ImageError::TooLarge(_))
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn decode_png_8_and_16_bit_palette_and_alpha() {
        let rgb = gradient(40, 20);
        let (info, px) = render_png(
            &png_file(
                40,
                20,
                png::ColorType::Rgb,
                png::BitDepth::Eight,
                &rgb,
                |_| {},
            ),
            40,
            20,
        );
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(px, rgb, "same size: exact");

        let rgb16: Vec<u8> = rgb.iter().flat_map(|&v| [v, 0x7F]).collect();
        let (_, px) = render_png(
            &png_file(
                40,
                20,
                png::ColorType::Rgb,
                png::BitDepth::Sixteen,
                &rgb16,
                |_| {},
            ),
            40,
            20,
        );
        assert_eq!(px, rgb, "16 bits: the high byte");

        let idx: Vec<u8> = (0..16 * 16).map(|i| (i % 2) as u8).collect();
        let pal = png_file(
            16,
            16,
            png::ColorType::Indexed,
            png::BitDepth::Eight,
            &idx,
            |e| {
                e.set_palette(vec![255, 0, 0, 0, 0, 255]);
                e.set_trns(vec![255, 0]);
            },
        );
        let (info, px) = render_png(&pal, 16, 16);
        assert_eq!(info.color_type, png::ColorType::Rgba);
        assert_eq!(&px[..8], &[255, 0, 0, 255, 0, 0, 255, 0]);

        let ga: Vec<u8> = [200u8, 100].repeat(8 * 8);
        let (info, px) = render_png(
            &png_file(
                8,
                8,
                png::ColorType::GrayscaleAlpha,
                png::BitDepth::Eight,
                &ga,
                |_| {},
            ),
            8,
            8,
        );
        assert_eq!(info.color_type, png::ColorType::GrayscaleAlpha);
        assert_eq!(px, ga);
    }

    #[test]
    fn decode_png_region_keeps_only_its_rows() {
        let rgb = gradient(40, 20);
        let data = png_file(
            40,
            20,
            png::ColorType::Rgb,
            png::BitDepth::Eight,
            &rgb,
            |_| {},
        );
        let image = probed(&data);
        let mut op = full_op(&image, 3, 2, OutputFormat::Png);
        op.region = Rect {
            x: 5,
            y: 7,
            w: 3,
            h: 2,
        };
        let (_, px) = png_pixels(&render(&data, &image, &op, &limits()).unwrap().bytes);
        let want: Vec<u8> = (7..9)
            .flat_map(|y| {
                (5..8).flat_map(move |x| [(x * 255 / 40) as u8, (y * 255 / 20) as u8, 128])
            })
            .collect();
        assert_eq!(px, want);
    }

    /// A PNG of IHDR `w` x `h` and nothing more: 8 + 25 bytes, plus IEND.
    fn png_claiming(w: u32, h: u32) -> Vec<u8> {
        let mut d = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        d.extend_from_slice(&w.to_be_bytes());
        d.extend_from_slice(&h.to_be_bytes());
        d.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        d
    }

    #[test]
    fn decode_png_claiming_50000_square_is_too_large_from_the_header() {
        let data = png_claiming(50_000, 50_000);
        assert_eq!(data.len(), 33);
        assert!(matches!(
            probe(SourceFormat::Png, &data, data.len() as u64, &limits()),
            Err(ImageError::TooLarge(_))
        ));
    }

    #[test]
    fn decode_png_zip_bomb_text_is_never_decompressed() {
        let rgb = gradient(8, 8);
        let data = png_file(8, 8, png::ColorType::Rgb, png::BitDepth::Eight, &rgb, |e| {
            // 16 MiB of text, compressed to about 16 KiB.
            e.add_ztxt_chunk("bomb".into(), "a".repeat(16 << 20))
                .unwrap();
        });
        assert!(data.len() < 1 << 20, "{}", data.len());
        let started = std::time::Instant::now();
        let (_, px) = render_png(&data, 8, 8);
        assert_eq!(px, rgb);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn decode_png_exif_orientation_and_apng_frame_count_come_from_the_header() {
        let rgb = gradient(4, 2);
        let data = png_file(
            4,
            2,
            png::ColorType::Rgb,
            png::BitDepth::Eight,
            &rgb,
            |_| {},
        );
        // eXIf inserted before IDAT (after IHDR: 8 + 25 bytes).
        let mut with_exif = data[..33].to_vec();
        let body = exif(8);
        with_exif.extend_from_slice(&(body.len() as u32).to_be_bytes());
        with_exif.extend_from_slice(b"eXIf");
        with_exif.extend_from_slice(&body);
        with_exif.extend_from_slice(&[0; 4]);
        with_exif.extend_from_slice(&data[33..]);
        let image = probed(&with_exif);
        assert_eq!((image.width, image.height, image.orientation), (2, 4, 8));

        let mut apng = data[..33].to_vec();
        apng.extend_from_slice(&[0, 0, 0, 8]);
        apng.extend_from_slice(b"acTL");
        apng.extend_from_slice(&5000u32.to_be_bytes());
        apng.extend_from_slice(&[0; 8]);
        apng.extend_from_slice(&data[33..]);
        assert!(matches!(
            probe(SourceFormat::Png, &apng, apng.len() as u64, &limits()),
            Err(ImageError::TooLarge(_))
        ));
    }

    fn webp_lossless(w: u32, h: u32, rgba: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        image_webp::WebPEncoder::new(&mut out)
            .encode(rgba, w, h, image_webp::ColorType::Rgba8)
            .unwrap();
        out
    }

    #[test]
    fn decode_webp_lossless_with_alpha() {
        let rgba: Vec<u8> = (0..12 * 6)
            .flat_map(|i| [i as u8, 50, 60, (i * 3) as u8])
            .collect();
        let data = webp_lossless(12, 6, &rgba);
        let image = probed(&data);
        assert_eq!((image.width, image.height), (12, 6));
        let (info, px) = render_png(&data, 12, 6);
        assert_eq!(info.color_type, png::ColorType::Rgba);
        assert_eq!(px, rgba);
    }

    /// A VP8X header of a `w` x `h` canvas, animated, with `frames` empty ANMF chunks.
    fn webp_canvas(w: u32, h: u32, frames: usize) -> Vec<u8> {
        let mut body = b"WEBPVP8X\x0a\0\0\0\x02\0\0\0".to_vec();
        body.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
        body.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
        body.extend_from_slice(b"ANIM\x06\0\0\0\0\0\0\0\0\0");
        for _ in 0..frames {
            body.extend_from_slice(b"ANMF\x10\0\0\0");
            body.extend_from_slice(&[0; 16]);
        }
        let mut d = b"RIFF".to_vec();
        d.extend_from_slice(&(body.len() as u32).to_le_bytes());
        d.extend_from_slice(&body);
        d
    }

    #[test]
    fn decode_webp_canvas_16383_square_and_thousands_of_frames_are_too_large() {
        let huge = webp_canvas(16383, 16383, 1);
        assert!(matches!(
            probe(SourceFormat::Webp, &huge, huge.len() as u64, &limits()),
            Err(ImageError::TooLarge(_))
        ));
        let many = webp_canvas(64, 64, 5000);
        assert!(matches!(
            probe(SourceFormat::Webp, &many, many.len() as u64, &limits()),
            Err(ImageError::TooLarge(_))
        ));
        // The head shows a few frames; render counts them all.
        let image = probed(&many[..4096]);
        let op = full_op(&image, 64, 64, OutputFormat::Png);
        assert!(matches!(
            render(&many, &image, &op, &limits()),
            Err(ImageError::TooLarge(_))
        ));
    }

    fn gif_file(w: u16, h: u16, frames: usize) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc =
                gif::Encoder::new(&mut out, w, h, &[0, 0, 0, 255, 0, 0, 0, 0, 255]).unwrap();
            for i in 0..frames {
                let index = if i == 0 { 1 } else { 2 };
                let frame = gif::Frame {
                    width: w,
                    height: h,
                    buffer: std::borrow::Cow::Owned(vec![index; usize::from(w) * usize::from(h)]),
                    ..gif::Frame::default()
                };
                enc.write_frame(&frame).unwrap();
            }
        }
        out
    }

    #[test]
    fn decode_gif_first_frame() {
        let data = gif_file(10, 6, 3);
        let image = probed(&data);
        assert_eq!((image.width, image.height), (10, 6));
        let (info, px) = render_png(&data, 10, 6);
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert!(
            px.chunks(3).all(|p| p == [255, 0, 0]),
            "the first frame is red"
        );
    }

    #[test]
    fn decode_gif_frame_right_of_the_screen_regression_panicked_slicing_the_canvas() {
        // Found by the mutation test: a frame whose left edge is past the screen's width.
        let mut out = Vec::new();
        {
            let mut enc = gif::Encoder::new(&mut out, 40, 30, &[0, 0, 0, 255, 0, 0]).unwrap();
            let frame = gif::Frame {
                left: 50,
                width: 4,
                height: 4,
                buffer: std::borrow::Cow::Owned(vec![1; 16]),
                ..gif::Frame::default()
            };
            enc.write_frame(&frame).unwrap();
        }
        let (info, px) = render_png(&out, 40, 30);
        assert_eq!(info.color_type, png::ColorType::Rgba);
        assert!(
            px.chunks(4).all(|p| p[3] == 0),
            "nothing of the frame is on the screen"
        );
    }

    #[test]
    fn decode_gif_with_thousands_of_frames_is_too_large() {
        let data = gif_file(2, 2, 5000);
        let image = probed(&data[..2048]);
        let op = full_op(&image, 2, 2, OutputFormat::Png);
        assert!(matches!(
            render(&data, &image, &op, &limits()),
            Err(ImageError::TooLarge(_))
        ));
        assert!(matches!(
            probe(SourceFormat::Gif, &data, data.len() as u64, &limits()),
            Err(ImageError::TooLarge(_))
        ));
    }

    #[test]
    fn decode_truncated_and_garbage_files_are_corrupt_not_panics() {
        let jpeg = jpeg_with(64, 64, |_| {});
        let png = png_file(
            8,
            8,
            png::ColorType::Rgb,
            png::BitDepth::Eight,
            &gradient(8, 8),
            |_| {},
        );
        let webp = webp_lossless(8, 8, &[9u8; 256]);
        let gif = gif_file(8, 8, 1);
        for data in [&jpeg, &png, &webp, &gif] {
            let image = probed(data);
            let op = full_op(&image, 4, 4, OutputFormat::Jpg);
            for cut in [data.len() / 2, data.len() - 3] {
                let cut = &data[..cut];
                let result = std::panic::catch_unwind(|| render(cut, &image, &op, &limits()));
                match result {
                    Ok(Ok(_)) | Ok(Err(ImageError::Corrupt(_))) => {}
                    other => panic!("{:?} cut at {}: {other:?}", image.format, cut.len()),
                }
            }
        }
    }
}
