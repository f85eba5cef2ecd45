//! Crop, resample (fast_image_resize, Lanczos3), EXIF orientation, mirror and rotation, quality
//! (gray, bitonal) and encoding (jpg, png, webp). Outputs carry none of the source's metadata.
//!
//! [`finish`] takes the pixels of the requested region in the source's *stored* orientation (a
//! decoder produces those; [`stored_rect`] says which rectangle that is) at any scale at least
//! the output's, and does the rest in this order:
//!
//! 1. resample to the output size (in stored orientation, so the transposing orientations swap
//!    width and height) with Lanczos3 on the 8-bit sRGB values as stored, *not* in linear light:
//!    the same as `vipsthumbnail` and most thumbnailers without `--linear`, and about twice as
//!    fast; alpha is premultiplied around the resampling so transparent pixels do not bleed;
//! 2. EXIF orientation, then the IIIF mirror, then the IIIF rotation: pixel permutations on the
//!    small, resampled image;
//! 3. quality: `gray` is Rec. 601 luma, `bitonal` that luma thresholded at 128;
//! 4. encode: jpg (jpeg-encoder, quality 85, 4:2:0; alpha flattened onto white since JPEG has
//!    none), png (alpha kept), webp (image-webp's lossless encoder, alpha kept).
//!
//! Colour: outputs carry no EXIF, XMP, comments or text of the source. An ICC profile is the one
//! thing passed on ([`finish_with_icc`]): embedded as is, not converted (no colour management
//! dependency), so a wide-gamut source keeps its colours; only when it describes the output's
//! colour space (RGB for colour outputs, gray for gray outputs of gray sources), is at most
//! [`MAX_ICC_BYTES`] and is not sRGB (its description says so; untagged means sRGB anyway). An
//! sRGB source, with or without a profile, is never changed in colour.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::iiif::{Quality, Rect, RenderOp};
use super::{ImageError, OutputFormat, Rendered};

/// JPEG output quality.
pub const JPEG_QUALITY: u8 = 85;
/// Largest ICC profile passed on to an output; a larger one is dropped (sRGB assumed).
pub const MAX_ICC_BYTES: usize = 256 * 1024;

/// How the bytes of [`Pixels`] are laid out: 8 bits per channel, channels interleaved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Gray8,
    GrayA8,
    Rgb8,
    Rgba8,
}

impl Layout {
    pub fn channels(self) -> usize {
        match self {
            Layout::Gray8 => 1,
            Layout::GrayA8 => 2,
            Layout::Rgb8 => 3,
            Layout::Rgba8 => 4,
        }
    }

    fn has_alpha(self) -> bool {
        matches!(self, Layout::GrayA8 | Layout::Rgba8)
    }

    fn is_gray(self) -> bool {
        matches!(self, Layout::Gray8 | Layout::GrayA8)
    }

    fn pixel_type(self) -> PixelType {
        match self {
            Layout::Gray8 => PixelType::U8,
            Layout::GrayA8 => PixelType::U8x2,
            Layout::Rgb8 => PixelType::U8x3,
            Layout::Rgba8 => PixelType::U8x4,
        }
    }
}

/// Decoded pixels, rows top to bottom, no padding: `data.len() == width * height * channels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
    pub data: Vec<u8>,
}

impl Pixels {
    /// A copy of the rectangle `r` (clamped to the image). No copy when `r` is the whole image.
    pub fn crop(self, r: Rect) -> Result<Pixels, ImageError> {
        self.check()?;
        let x0 = r.x.min(self.width);
        let y0 = r.y.min(self.height);
        let x1 = r.x.saturating_add(r.w).min(self.width);
        let y1 = r.y.saturating_add(r.h).min(self.height);
        if x1 <= x0 || y1 <= y0 {
            return Err(ImageError::Corrupt(
                "the region is outside the image".into(),
            ));
        }
        if x0 == 0 && y0 == 0 && x1 == self.width && y1 == self.height {
            return Ok(self);
        }
        let ch = self.layout.channels();
        let row = self.width as usize * ch;
        let (w, h) = (x1 - x0, y1 - y0);
        let mut data = Vec::with_capacity(w as usize * h as usize * ch);
        for y in y0..y1 {
            let start = y as usize * row + x0 as usize * ch;
            data.extend_from_slice(&self.data[start..start + w as usize * ch]);
        }
        Ok(Pixels {
            width: w,
            height: h,
            layout: self.layout,
            data,
        })
    }

    fn check(&self) -> Result<(), ImageError> {
        let want = (self.width as usize)
            .checked_mul(self.height as usize)
            .and_then(|n| n.checked_mul(self.layout.channels()));
        if self.width == 0 || self.height == 0 || want != Some(self.data.len()) {
            return Err(ImageError::Corrupt("inconsistent pixel buffer".into()));
        }
        Ok(())
    }
}

/// Whether EXIF `orientation` swaps width and height (5-8: a transpose is involved).
pub fn swaps_sides(orientation: u8) -> bool {
    matches!(orientation, 5..=8)
}

/// The displayed `region` of an image displayed as `width` x `height` after EXIF `orientation`,
/// in the stored (un-oriented) coordinates the decoder works in.
pub fn stored_rect(region: Rect, orientation: u8, width: u32, height: u32) -> Rect {
    let Rect { x, y, w, h } = region;
    // Far edges measured from the other side, saturating so a bad region cannot wrap.
    let right = width.saturating_sub(x.saturating_add(w));
    let bottom = height.saturating_sub(y.saturating_add(h));
    let (x, y, w, h) = match orientation {
        2 => (right, y, w, h),
        3 => (right, bottom, w, h),
        4 => (x, bottom, w, h),
        5 => (y, x, h, w),
        6 => (y, right, h, w),
        7 => (bottom, right, h, w),
        8 => (bottom, x, h, w),
        _ => (x, y, w, h),
    };
    Rect { x, y, w, h }
}

/// Finish a render: see the module doc. `pixels` is the stored-orientation crop of `op.region`.
pub fn finish(pixels: Pixels, op: &RenderOp, orientation: u8) -> Result<Rendered, ImageError> {
    finish_with_icc(pixels, op, orientation, None)
}

/// [`finish`], passing on the source's ICC profile when it fits the output (see the module doc).
pub fn finish_with_icc(
    pixels: Pixels,
    op: &RenderOp,
    orientation: u8,
    icc: Option<&[u8]>,
) -> Result<Rendered, ImageError> {
    pixels.check()?;
    if op.width == 0 || op.height == 0 {
        return Err(ImageError::BadParameter {
            param: "size",
            why: "the output would be empty".into(),
        });
    }
    let source_gray = pixels.layout.is_gray();
    let (w, h) = if swaps_sides(orientation) {
        (op.height, op.width)
    } else {
        (op.width, op.height)
    };
    let mut img = resize(pixels, w, h)?;
    img = orient(img, orientation);
    if op.mirror {
        img = orient(img, 2);
    }
    img = match op.rotation {
        90 => orient(img, 6),
        180 => orient(img, 3),
        270 => orient(img, 8),
        _ => img,
    };
    img = apply_quality(img, op.quality);
    let icc = icc.filter(|p| icc_fits(p, img.layout, source_gray));
    encode(&img, op.format, icc)
}

/// Resample to `w` x `h` (Lanczos3; alpha premultiplied around it). No-op at the same size.
fn resize(src: Pixels, w: u32, h: u32) -> Result<Pixels, ImageError> {
    if src.width == w && src.height == h {
        return Ok(src);
    }
    let kind = src.layout.pixel_type();
    let from = ImageRef::new(src.width, src.height, &src.data, kind)
        .map_err(|_| ImageError::Corrupt("inconsistent pixel buffer".into()))?;
    let mut to = Image::new(w, h, kind);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .use_alpha(src.layout.has_alpha());
    Resizer::new()
        .resize(&from, &mut to, &options)
        .map_err(|_| ImageError::Corrupt("resampling failed".into()))?;
    Ok(Pixels {
        width: w,
        height: h,
        layout: src.layout,
        data: to.into_vec(),
    })
}

/// Apply EXIF orientation `o` (1-8) to stored pixels, giving the displayed ones. Also used for
/// the IIIF mirror (2) and rotations (6: 90, 3: 180, 8: 270 clockwise).
pub fn orient(src: Pixels, o: u8) -> Pixels {
    if !(2..=8).contains(&o) {
        return src;
    }
    let (sw, sh) = (src.width as usize, src.height as usize);
    let (dw, dh) = if swaps_sides(o) { (sh, sw) } else { (sw, sh) };
    let ch = src.layout.channels();
    let mut data = vec![0u8; src.data.len()];
    for y in 0..dh {
        for x in 0..dw {
            // The stored pixel shown at displayed (x, y).
            let (sx, sy) = match o {
                2 => (sw - 1 - x, y),
                3 => (sw - 1 - x, sh - 1 - y),
                4 => (x, sh - 1 - y),
                5 => (y, x),
                6 => (y, sh - 1 - x),
                7 => (sw - 1 - y, sh - 1 - x),
                _ => (sw - 1 - y, x), // 8
            };
            let s = (sy * sw + sx) * ch;
            let d = (y * dw + x) * ch;
            data[d..d + ch].copy_from_slice(&src.data[s..s + ch]);
        }
    }
    Pixels {
        width: dw as u32,
        height: dh as u32,
        layout: src.layout,
        data,
    }
}

/// Rec. 601 luma of one RGB pixel, in integer arithmetic.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b) + 500) / 1000) as u8
}

fn apply_quality(img: Pixels, quality: Quality) -> Pixels {
    match quality {
        Quality::Default | Quality::Color => img,
        Quality::Gray => to_gray(img),
        Quality::Bitonal => {
            let mut gray = to_gray(img);
            let ch = gray.layout.channels();
            for px in gray.data.chunks_exact_mut(ch) {
                px[0] = if px[0] >= 128 { 255 } else { 0 };
            }
            gray
        }
    }
}

fn to_gray(img: Pixels) -> Pixels {
    let data = match img.layout {
        Layout::Gray8 | Layout::GrayA8 => return img,
        Layout::Rgb8 => img
            .data
            .chunks_exact(3)
            .map(|p| luma(p[0], p[1], p[2]))
            .collect(),
        Layout::Rgba8 => img
            .data
            .chunks_exact(4)
            .flat_map(|p| [luma(p[0], p[1], p[2]), p[3]])
            .collect(),
    };
    let layout = if img.layout.has_alpha() {
        Layout::GrayA8
    } else {
        Layout::Gray8
    };
    Pixels {
        width: img.width,
        height: img.height,
        layout,
        data,
    }
}

/// Flatten alpha onto white (for JPEG).
fn flatten(img: Pixels) -> Pixels {
    fn over_white(c: u8, a: u8) -> u8 {
        let (c, a) = (u32::from(c), u32::from(a));
        ((c * a + 255 * (255 - a) + 127) / 255) as u8
    }
    let (layout, data) = match img.layout {
        Layout::Gray8 | Layout::Rgb8 => return img,
        Layout::GrayA8 => (
            Layout::Gray8,
            img.data
                .chunks_exact(2)
                .map(|p| over_white(p[0], p[1]))
                .collect(),
        ),
        Layout::Rgba8 => (
            Layout::Rgb8,
            img.data
                .chunks_exact(4)
                .flat_map(|p| {
                    [
                        over_white(p[0], p[3]),
                        over_white(p[1], p[3]),
                        over_white(p[2], p[3]),
                    ]
                })
                .collect(),
        ),
    };
    Pixels {
        width: img.width,
        height: img.height,
        layout,
        data,
    }
}

/// Whether an ICC profile is worth embedding: it describes the output's colour space (RGB
/// profiles for colour outputs, gray profiles for gray outputs of gray sources: a colour source
/// made gray has no profile) and is not sRGB (what an untagged image is taken to be anyway:
/// cameras tag most photos with a 3 KB sRGB profile that every tile would repeat).
fn icc_fits(profile: &[u8], layout: Layout, source_gray: bool) -> bool {
    if profile.len() < 128 || profile.len() > MAX_ICC_BYTES || icc_is_srgb(profile) {
        return false;
    }
    match &profile[16..20] {
        b"RGB " => !layout.is_gray(),
        b"GRAY" => layout.is_gray() && source_gray,
        _ => false,
    }
}

/// Whether the profile's description (`desc` tag, ASCII in v2 profiles, UTF-16 in v4 `mluc`)
/// names sRGB.
fn icc_is_srgb(profile: &[u8]) -> bool {
    let be32 = |at: usize| -> Option<usize> {
        let b = profile.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(count) = be32(128) else {
        return false;
    };
    for i in 0..count.min(256) {
        let entry = 132 + 12 * i;
        if profile.get(entry..entry + 4) != Some(b"desc") {
            continue;
        }
        let (Some(offset), Some(size)) = (be32(entry + 4), be32(entry + 8)) else {
            return false;
        };
        let Some(text) = profile.get(offset..offset.saturating_add(size.min(512))) else {
            return false;
        };
        let ascii: Vec<u8> = text.iter().copied().filter(|&b| b != 0).collect();
        return ascii.windows(4).any(|w| w == b"sRGB");
    }
    false
}

fn encode_error(what: &str) -> ImageError {
    ImageError::Corrupt(format!("{what} encoding failed"))
}

/// Encode with nothing of the source but (optionally) its ICC profile.
fn encode(img: &Pixels, format: OutputFormat, icc: Option<&[u8]>) -> Result<Rendered, ImageError> {
    let mut out = Vec::new();
    let (width, height) = (img.width, img.height);
    match format {
        OutputFormat::Jpg => {
            let flat;
            let img = if img.layout.has_alpha() {
                flat = flatten(img.clone());
                &flat
            } else {
                img
            };
            let (w, h) = match (u16::try_from(width), u16::try_from(height)) {
                (Ok(w), Ok(h)) => (w, h),
                _ => return Err(ImageError::TooLarge("a JPEG side is at most 65535".into())),
            };
            let mut enc = jpeg_encoder::Encoder::new(&mut out, JPEG_QUALITY);
            enc.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
            if let Some(p) = icc {
                enc.add_icc_profile(p).map_err(|_| encode_error("JPEG"))?;
            }
            let kind = if img.layout.is_gray() {
                jpeg_encoder::ColorType::Luma
            } else {
                jpeg_encoder::ColorType::Rgb
            };
            enc.encode(&img.data, w, h, kind)
                .map_err(|_| encode_error("JPEG"))?;
        }
        OutputFormat::Png => {
            let mut info = png::Info::with_size(width, height);
            info.color_type = match img.layout {
                Layout::Gray8 => png::ColorType::Grayscale,
                Layout::GrayA8 => png::ColorType::GrayscaleAlpha,
                Layout::Rgb8 => png::ColorType::Rgb,
                Layout::Rgba8 => png::ColorType::Rgba,
            };
            info.bit_depth = png::BitDepth::Eight;
            info.icc_profile = icc.map(|p| p.to_vec().into());
            let mut enc =
                png::Encoder::with_info(&mut out, info).map_err(|_| encode_error("PNG"))?;
            enc.set_compression(png::Compression::Fast);
            let mut writer = enc.write_header().map_err(|_| encode_error("PNG"))?;
            writer
                .write_image_data(&img.data)
                .map_err(|_| encode_error("PNG"))?;
            writer.finish().map_err(|_| encode_error("PNG"))?;
        }
        OutputFormat::Webp => {
            let mut enc = image_webp::WebPEncoder::new(&mut out);
            if let Some(p) = icc {
                enc.set_icc_profile(p.to_vec());
            }
            let kind = match img.layout {
                Layout::Gray8 => image_webp::ColorType::L8,
                Layout::GrayA8 => image_webp::ColorType::La8,
                Layout::Rgb8 => image_webp::ColorType::Rgb8,
                Layout::Rgba8 => image_webp::ColorType::Rgba8,
            };
            enc.encode(&img.data, width, height, kind)
                .map_err(|_| encode_error("WebP"))?;
        }
    }
    Ok(Rendered {
        bytes: out.into(),
        format,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn op(width: u32, height: u32, format: OutputFormat) -> RenderOp {
        RenderOp {
            region: Rect {
                x: 0,
                y: 0,
                w: width,
                h: height,
            },
            width,
            height,
            mirror: false,
            rotation: 0,
            quality: Quality::Default,
            format,
        }
    }

    /// A `w` x `h` image whose pixel (x, y) is (x, y, x ^ y, 255 - x) in RGBA.
    fn numbered(w: u32, h: u32, layout: Layout) -> Pixels {
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let px = [x as u8, y as u8, (x ^ y) as u8, 255 - x as u8];
                data.extend_from_slice(&px[..layout.channels()]);
            }
        }
        Pixels {
            width: w,
            height: h,
            layout,
            data,
        }
    }

    fn decode_png(bytes: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info, buf)
    }

    #[test]
    fn render_orient_maps_each_displayed_pixel_to_its_stored_pixel() {
        // A 2x1 image [A B] rotated 90 degrees clockwise (6) is A above B.
        let stored = numbered(2, 1, Layout::Gray8);
        let shown = orient(stored.clone(), 6);
        assert_eq!((shown.width, shown.height), (1, 2));
        assert_eq!(shown.data, vec![0, 1]);
        // 8 (90 counter-clockwise): B above A; 3: B A; 2: B A; 4: unchanged for one row.
        assert_eq!(orient(stored.clone(), 8).data, vec![1, 0]);
        assert_eq!(orient(stored.clone(), 3).data, vec![1, 0]);
        assert_eq!(orient(stored.clone(), 2).data, vec![1, 0]);
        assert_eq!(orient(stored.clone(), 4).data, vec![0, 1]);
        // Each orientation undone by its inverse.
        for (o, inverse) in [(2, 2), (3, 3), (4, 4), (5, 5), (6, 8), (7, 7), (8, 6)] {
            let img = numbered(5, 3, Layout::Rgb8);
            assert_eq!(
                orient(orient(img.clone(), o), inverse),
                img,
                "orientation {o}"
            );
        }
    }

    #[test]
    fn render_stored_rect_crops_the_same_pixels_as_cropping_the_displayed_image() {
        let stored = numbered(7, 4, Layout::Rgb8);
        for o in 1..=8u8 {
            let shown = orient(stored.clone(), o);
            let (w, h) = (shown.width, shown.height);
            for region in [
                Rect { x: 0, y: 0, w, h },
                Rect {
                    x: 1,
                    y: 0,
                    w: 2,
                    h: 3,
                },
                Rect {
                    x: w - 2,
                    y: h - 1,
                    w: 2,
                    h: 1,
                },
                Rect {
                    x: 2,
                    y: 1,
                    w: 1,
                    h: 2,
                },
            ] {
                let want = shown.clone().crop(region).unwrap();
                let from_stored = stored.clone().crop(stored_rect(region, o, w, h)).unwrap();
                assert_eq!(orient(from_stored, o), want, "orientation {o}, {region:?}");
            }
        }
    }

    #[test]
    fn render_finish_resizes_mirrors_and_rotates() {
        let mut o = op(8, 4, OutputFormat::Png);
        o.region = Rect {
            x: 0,
            y: 0,
            w: 16,
            h: 8,
        };
        o.rotation = 90;
        let out = finish(numbered(16, 8, Layout::Rgb8), &o, 1).unwrap();
        assert_eq!((out.width, out.height), (4, 8));
        let (info, _) = decode_png(&out.bytes);
        assert_eq!((info.width, info.height), (4, 8));

        // Same size: a mirror is an exact permutation.
        let mut o = op(3, 2, OutputFormat::Png);
        o.mirror = true;
        let out = finish(numbered(3, 2, Layout::Rgb8), &o, 1).unwrap();
        let (_, data) = decode_png(&out.bytes);
        assert_eq!(data, orient(numbered(3, 2, Layout::Rgb8), 2).data);

        // EXIF orientation 6 stored 3x2 is shown 2x3; the op is in displayed sizes.
        let o = op(2, 3, OutputFormat::Png);
        let out = finish(numbered(3, 2, Layout::Rgb8), &o, 6).unwrap();
        let (_, data) = decode_png(&out.bytes);
        assert_eq!(data, orient(numbered(3, 2, Layout::Rgb8), 6).data);
    }

    #[test]
    fn render_lanczos_keeps_a_flat_colour_flat() {
        let img = Pixels {
            width: 100,
            height: 60,
            layout: Layout::Rgb8,
            data: [10u8, 200, 90].repeat(6000),
        };
        let out = finish(img, &op(17, 11, OutputFormat::Png), 1).unwrap();
        let (_, data) = decode_png(&out.bytes);
        assert_eq!(data.len(), 17 * 11 * 3);
        assert!(
            data.chunks(3).all(|p| p == [10, 200, 90]),
            "{:?}",
            &data[..9]
        );
    }

    #[test]
    fn render_gray_and_bitonal_qualities() {
        let mut o = op(16, 8, OutputFormat::Png);
        o.quality = Quality::Gray;
        let out = finish(numbered(16, 8, Layout::Rgb8), &o, 1).unwrap();
        let (info, data) = decode_png(&out.bytes);
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        assert_eq!(data[1], luma(1, 0, 1));
        o.quality = Quality::Bitonal;
        let out = finish(numbered(16, 8, Layout::Rgba8), &o, 1).unwrap();
        let (info, data) = decode_png(&out.bytes);
        assert_eq!(info.color_type, png::ColorType::GrayscaleAlpha);
        assert!(data.chunks(2).all(|p| p[0] == 0 || p[0] == 255));
    }

    #[test]
    fn render_alpha_is_kept_in_png_and_webp_and_flattened_onto_white_in_jpeg() {
        let transparent = Pixels {
            width: 16,
            height: 16,
            layout: Layout::Rgba8,
            data: [0u8, 0, 0, 0].repeat(256),
        };
        let out = finish(transparent.clone(), &op(16, 16, OutputFormat::Png), 1).unwrap();
        let (info, data) = decode_png(&out.bytes);
        assert_eq!(info.color_type, png::ColorType::Rgba);
        assert!(data.chunks(4).all(|p| p[3] == 0));

        let out = finish(transparent.clone(), &op(16, 16, OutputFormat::Webp), 1).unwrap();
        let mut dec = image_webp::WebPDecoder::new(std::io::Cursor::new(&out.bytes[..])).unwrap();
        assert!(dec.has_alpha());
        let mut buf = vec![0; dec.output_buffer_size().unwrap()];
        dec.read_image(&mut buf).unwrap();
        assert!(buf.chunks(4).all(|p| p[3] == 0));

        let out = finish(transparent, &op(16, 16, OutputFormat::Jpg), 1).unwrap();
        let mut dec = jpeg_decoder::Decoder::new(&out.bytes[..]);
        let data = dec.decode().unwrap();
        assert_eq!(
            dec.info().unwrap().pixel_format,
            jpeg_decoder::PixelFormat::RGB24
        );
        assert!(
            data.iter().all(|&v| v >= 250),
            "white, got {:?}",
            &data[..6]
        );
    }

    #[test]
    fn render_webp_lossless_output_is_exact() {
        let img = numbered(9, 5, Layout::Rgb8);
        let out = finish(img.clone(), &op(9, 5, OutputFormat::Webp), 1).unwrap();
        let mut dec = image_webp::WebPDecoder::new(std::io::Cursor::new(&out.bytes[..])).unwrap();
        let mut buf = vec![0; dec.output_buffer_size().unwrap()];
        dec.read_image(&mut buf).unwrap();
        assert_eq!(buf, img.data);
    }

    /// A minimal ICC profile of colour space `space` with a `desc` tag (v2 text type).
    fn icc_named(space: &[u8; 4], name: &str) -> Vec<u8> {
        let mut p = vec![0u8; 132];
        p[16..20].copy_from_slice(space);
        p[36..40].copy_from_slice(b"acsp");
        p[128..132].copy_from_slice(&1u32.to_be_bytes());
        let mut desc = b"desc\0\0\0\0".to_vec();
        desc.extend_from_slice(&(name.len() as u32 + 1).to_be_bytes());
        desc.extend_from_slice(name.as_bytes());
        desc.push(0);
        p.extend_from_slice(b"desc");
        p.extend_from_slice(&144u32.to_be_bytes());
        p.extend_from_slice(&(desc.len() as u32).to_be_bytes());
        p.extend_from_slice(&desc);
        p
    }

    fn icc(space: &[u8; 4]) -> Vec<u8> {
        icc_named(space, "Wide Gamut RGB")
    }

    #[test]
    fn render_jpeg_output_carries_no_exif_and_only_a_fitting_icc_profile() {
        let img = numbered(16, 16, Layout::Rgb8);
        let o = op(16, 16, OutputFormat::Jpg);
        let segments = |bytes: &[u8]| -> Vec<u8> {
            let mut markers = Vec::new();
            let mut pos = 2;
            while bytes[pos] == 0xFF && bytes[pos + 1] != 0xDA {
                markers.push(bytes[pos + 1]);
                pos += 2 + usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
            }
            markers
        };
        let plain = finish(img.clone(), &o, 1).unwrap();
        let markers = segments(&plain.bytes);
        assert!(!markers.contains(&0xE1) && !markers.contains(&0xE2) && !markers.contains(&0xFE));

        let rgb = finish_with_icc(img.clone(), &o, 1, Some(&icc(b"RGB "))).unwrap();
        assert!(
            segments(&rgb.bytes).contains(&0xE2),
            "an RGB profile is embedded"
        );
        let cmyk = finish_with_icc(img.clone(), &o, 1, Some(&icc(b"CMYK"))).unwrap();
        assert!(
            !segments(&cmyk.bytes).contains(&0xE2),
            "a CMYK profile does not fit RGB"
        );
        let mut gray = o.clone();
        gray.quality = Quality::Gray;
        let made_gray = finish_with_icc(img, &gray, 1, Some(&icc(b"RGB "))).unwrap();
        assert!(!segments(&made_gray.bytes).contains(&0xE2));
    }

    #[test]
    fn render_crop_refuses_a_region_outside_the_image() {
        let img = numbered(4, 4, Layout::Gray8);
        assert!(matches!(
            img.crop(Rect {
                x: 4,
                y: 0,
                w: 2,
                h: 2
            }),
            Err(ImageError::Corrupt(_))
        ));
    }
}
