//! The IIIF Image API 3.0 parameters (`{region}/{size}/{rotation}/{quality}.{format}`): parsed
//! and normalized into an [`ImageRequest`] (the cache keys derived outputs by its canonical
//! form), then resolved against a [`SourceImage`](super::SourceImage) and the limits into a
//! [`RenderOp`]; and the `info.json` document.
//!
//! Parsing knows nothing of the image: it refuses what is malformed (each parameter's own
//! [`ImageError::BadParameter`], 400) and writes the request in one canonical text (numbers
//! without leading zeros or trailing fractional zeros), so two spellings of one request share a
//! cache entry and an ETag, and a 304 needs no probe. [`resolve`] then applies the image's size
//! and the limits: the region clipped to the image (one entirely outside it is 400), an upscale
//! without `^` is 400, and an output over `maxWidth` / `maxHeight` / `maxArea` is 400 (the
//! request's size; a source over the limits is the decoder's 413).
//!
//! Two readings the specification leaves open, chosen as the official validator expects:
//! `!w,h` without `^` whose box is larger than the region is an upscale (400), and `^max` is the
//! region at full size, within the limits (not grown to `maxWidth`, which would make every
//! `^max` a 16-megapixel render).

use serde_json::{Value, json};

use super::{ImageError, ImageLimits, OutputFormat, SourceImage};

/// `{quality}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quality {
    Default,
    Color,
    Gray,
    Bitonal,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Default => "default",
            Quality::Color => "color",
            Quality::Gray => "gray",
            Quality::Bitonal => "bitonal",
        }
    }
}

/// `{region}`, parsed. Percentages are kept in millionths of a percent (exact, hashable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Region {
    Full,
    Square,
    Pixels { x: u32, y: u32, w: u32, h: u32 },
    Percent { x: u64, y: u64, w: u64, h: u64 },
}

/// `{size}` without its `^`, parsed. `Percent` in millionths of a percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SizeKind {
    Max,
    Width(u32),
    Height(u32),
    Percent(u64),
    Exact(u32, u32),
    Fit(u32, u32),
}

/// A parsed, normalized IIIF image request (before the image's size is known).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRequest {
    pub region: Region,
    pub size: SizeKind,
    /// The size had `^`: the output may be larger than the region.
    pub upscale: bool,
    pub mirror: bool,
    /// Clockwise degrees: 0, 90, 180 or 270.
    pub rotation: u16,
    pub quality: Quality,
    pub format: OutputFormat,
    /// The canonical text of the request (`region/size/rotation/quality.format`), the cache's
    /// representation label (`iiif:` + this) and part of the ETag.
    canonical: String,
}

impl ImageRequest {
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Parse the four path segments after the key (still percent-encoded: IIIF parameters are
    /// plain ASCII, so an encoded one is refused as malformed).
    pub fn parse(
        region: &str,
        size: &str,
        rotation: &str,
        quality_format: &str,
    ) -> Result<ImageRequest, ImageError> {
        let region = parse_region(region)?;
        let (upscale, size) = parse_size(size)?;
        let (mirror, rotation) = parse_rotation(rotation)?;
        let (quality, format) = quality_format
            .rsplit_once('.')
            .ok_or_else(|| bad("format", "missing: end the path with .jpg, .png or .webp"))?;
        let quality = parse_quality(quality)?;
        let format = parse_format(format)?;
        let mut canonical = String::with_capacity(48);
        write_region(&mut canonical, region);
        canonical.push('/');
        if upscale {
            canonical.push('^');
        }
        write_size(&mut canonical, size);
        canonical.push('/');
        if mirror {
            canonical.push('!');
        }
        canonical.push_str(&rotation.to_string());
        canonical.push('/');
        canonical.push_str(quality.as_str());
        canonical.push('.');
        canonical.push_str(format.extension());
        Ok(ImageRequest {
            region,
            size,
            upscale,
            mirror,
            rotation,
            quality,
            format,
            canonical,
        })
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

impl RenderOp {
    /// The output's size once rotated.
    pub fn output_size(&self) -> (u32, u32) {
        if self.rotation % 180 == 90 {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }
}

fn bad(param: &'static str, why: impl Into<String>) -> ImageError {
    ImageError::BadParameter {
        param,
        why: why.into(),
    }
}

/// Millionths in one unit of a percentage (`pct:12.5` is 12_500_000).
const MICRO: u64 = 1_000_000;

/// A non-negative integer of plain digits (no sign, no spaces, no fraction), at most `u32`.
fn int(s: &str, param: &'static str) -> Result<u32, ImageError> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(param, format!("{s:?} is not a whole number")));
    }
    s.parse()
        .map_err(|_| bad(param, format!("{s:?} is too large")))
}

/// A non-negative decimal (`12`, `12.5`, `.5`, `0.25`) in millionths, at most six fractional
/// digits and 1e9; no sign, exponent, `inf` or `nan`.
fn decimal(s: &str, param: &'static str) -> Result<u64, ImageError> {
    let malformed = || bad(param, format!("{s:?} is not a number"));
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
        return Err(malformed());
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > 6 {
        return Err(bad(param, "at most six decimal places"));
    }
    let whole = whole.trim_start_matches('0');
    if whole.len() > 9 {
        return Err(bad(param, format!("{s:?} is too large")));
    }
    let w: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| malformed())?
    };
    let mut f: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| malformed())?
    };
    for _ in frac.len()..6 {
        f *= 10;
    }
    Ok(w * MICRO + f)
}

fn write_decimal(out: &mut String, micro: u64) {
    out.push_str(&(micro / MICRO).to_string());
    let frac = micro % MICRO;
    if frac != 0 {
        let digits = format!("{frac:06}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
}

fn four<'a>(s: &'a str, param: &'static str) -> Result<[&'a str; 4], ImageError> {
    let mut parts = s.split(',');
    let mut out = [""; 4];
    for slot in &mut out {
        *slot = parts
            .next()
            .ok_or_else(|| bad(param, "expected four comma-separated numbers"))?;
    }
    if parts.next().is_some() {
        return Err(bad(param, "expected four comma-separated numbers"));
    }
    Ok(out)
}

fn parse_region(s: &str) -> Result<Region, ImageError> {
    const P: &str = "region";
    match s {
        "full" => return Ok(Region::Full),
        "square" => return Ok(Region::Square),
        _ => {}
    }
    if let Some(pct) = s.strip_prefix("pct:") {
        let [x, y, w, h] = four(pct, P)?;
        let (x, y, w, h) = (
            decimal(x, P)?,
            decimal(y, P)?,
            decimal(w, P)?,
            decimal(h, P)?,
        );
        if w == 0 || h == 0 {
            return Err(bad(P, "width and height must be greater than 0"));
        }
        if x >= 100 * MICRO || y >= 100 * MICRO {
            return Err(bad(P, "the region is outside the image"));
        }
        return Ok(Region::Percent { x, y, w, h });
    }
    if !s.contains(',') {
        return Err(bad(P, "expected full, square, x,y,w,h or pct:x,y,w,h"));
    }
    let [x, y, w, h] = four(s, P)?;
    let (x, y, w, h) = (int(x, P)?, int(y, P)?, int(w, P)?, int(h, P)?);
    if w == 0 || h == 0 {
        return Err(bad(P, "width and height must be greater than 0"));
    }
    Ok(Region::Pixels { x, y, w, h })
}

fn write_region(out: &mut String, region: Region) {
    match region {
        Region::Full => out.push_str("full"),
        Region::Square => out.push_str("square"),
        Region::Pixels { x, y, w, h } => out.push_str(&format!("{x},{y},{w},{h}")),
        Region::Percent { x, y, w, h } => {
            out.push_str("pct:");
            for (i, v) in [x, y, w, h].into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_decimal(out, v);
            }
        }
    }
}

fn parse_size(s: &str) -> Result<(bool, SizeKind), ImageError> {
    const P: &str = "size";
    let (upscale, s) = match s.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if s == "max" {
        return Ok((upscale, SizeKind::Max));
    }
    if let Some(n) = s.strip_prefix("pct:") {
        let n = decimal(n, P)?;
        if n == 0 {
            return Err(bad(P, "pct:n must be greater than 0"));
        }
        if n > 100 * MICRO && !upscale {
            return Err(bad(P, "pct:n over 100 is an upscale: write ^pct:n"));
        }
        return Ok((upscale, SizeKind::Percent(n)));
    }
    let (fit, s) = match s.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let Some((w, h)) = s.split_once(',') else {
        return Err(bad(
            P,
            "expected max, w,, ,h, pct:n, w,h or !w,h (with ^ to upscale)",
        ));
    };
    let nonzero = |v: u32| {
        if v == 0 {
            Err(bad(P, "width and height must be greater than 0"))
        } else {
            Ok(v)
        }
    };
    let kind = match (w.is_empty(), h.is_empty()) {
        (true, true) => return Err(bad(P, "give a width, a height or both")),
        (false, true) if !fit => SizeKind::Width(nonzero(int(w, P)?)?),
        (true, false) if !fit => SizeKind::Height(nonzero(int(h, P)?)?),
        (false, false) => {
            let (w, h) = (nonzero(int(w, P)?)?, nonzero(int(h, P)?)?);
            if fit {
                SizeKind::Fit(w, h)
            } else {
                SizeKind::Exact(w, h)
            }
        }
        _ => return Err(bad(P, "!w,h needs both a width and a height")),
    };
    Ok((upscale, kind))
}

fn write_size(out: &mut String, size: SizeKind) {
    match size {
        SizeKind::Max => out.push_str("max"),
        SizeKind::Width(w) => out.push_str(&format!("{w},")),
        SizeKind::Height(h) => out.push_str(&format!(",{h}")),
        SizeKind::Percent(n) => {
            out.push_str("pct:");
            write_decimal(out, n);
        }
        SizeKind::Exact(w, h) => out.push_str(&format!("{w},{h}")),
        SizeKind::Fit(w, h) => out.push_str(&format!("!{w},{h}")),
    }
}

fn parse_rotation(s: &str) -> Result<(bool, u16), ImageError> {
    const P: &str = "rotation";
    let (mirror, s) = match s.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let degrees = decimal(s, P)?;
    let rotation = match degrees {
        0 => 0,
        d if d == 90 * MICRO => 90,
        d if d == 180 * MICRO => 180,
        d if d == 270 * MICRO => 270,
        d if d == 360 * MICRO => 0,
        d if d > 360 * MICRO => return Err(bad(P, "must be between 0 and 360")),
        _ => {
            return Err(bad(
                P,
                "only multiples of 90 are supported (0, 90, 180, 270, with ! to mirror)",
            ));
        }
    };
    Ok((mirror, rotation))
}

fn parse_quality(s: &str) -> Result<Quality, ImageError> {
    match s {
        "default" => Ok(Quality::Default),
        "color" => Ok(Quality::Color),
        "gray" => Ok(Quality::Gray),
        "bitonal" => Ok(Quality::Bitonal),
        _ => Err(bad("quality", "expected default, color, gray or bitonal")),
    }
}

fn parse_format(s: &str) -> Result<OutputFormat, ImageError> {
    match s {
        "jpg" => Ok(OutputFormat::Jpg),
        "png" => Ok(OutputFormat::Png),
        "webp" => Ok(OutputFormat::Webp),
        _ => Err(bad("format", "expected jpg, png or webp")),
    }
}

/// `micro` millionths of a percent of `whole`, rounded to the nearest pixel.
fn of_percent(whole: u32, micro: u64) -> u64 {
    let num = u128::from(whole) * u128::from(micro);
    let den = 100 * u128::from(MICRO);
    u64::try_from((num + den / 2) / den).unwrap_or(u64::MAX)
}

/// The same, rounded down (a region's origin stays inside the pixel it falls in).
fn of_percent_floor(whole: u32, micro: u64) -> u64 {
    let num = u128::from(whole) * u128::from(micro);
    u64::try_from(num / (100 * u128::from(MICRO))).unwrap_or(u64::MAX)
}

/// The region as a rectangle of the image, clipped to it.
fn resolve_region(region: Region, width: u32, height: u32) -> Result<Rect, ImageError> {
    let (x, y, w, h) = match region {
        Region::Full => {
            return Ok(Rect {
                x: 0,
                y: 0,
                w: width,
                h: height,
            });
        }
        Region::Square => {
            let side = width.min(height);
            return Ok(Rect {
                x: (width - side) / 2,
                y: (height - side) / 2,
                w: side,
                h: side,
            });
        }
        Region::Pixels { x, y, w, h } => (u64::from(x), u64::from(y), u64::from(w), u64::from(h)),
        Region::Percent { x, y, w, h } => (
            of_percent_floor(width, x),
            of_percent_floor(height, y),
            of_percent(width, w).max(1),
            of_percent(height, h).max(1),
        ),
    };
    if x >= u64::from(width) || y >= u64::from(height) {
        return Err(bad("region", "the region is outside the image"));
    }
    let w = w.min(u64::from(width) - x);
    let h = h.min(u64::from(height) - y);
    // All four are within the image's u32 sides now.
    let c = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok(Rect {
        x: c(x),
        y: c(y),
        w: c(w),
        h: c(h),
    })
}

/// `v * num / den` rounded to the nearest integer, at least 1.
fn scale(v: u32, num: u64, den: u64) -> u64 {
    let den = den.max(1);
    ((u128::from(v) * u128::from(num) + u128::from(den) / 2) / u128::from(den))
        .max(1)
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Resolve a parsed request against the image's size (as displayed) and the limits.
pub fn resolve(
    request: &ImageRequest,
    image: &SourceImage,
    limits: &ImageLimits,
) -> Result<RenderOp, ImageError> {
    let region = resolve_region(request.region, image.width, image.height)?;
    let (rw, rh) = (region.w, region.h);
    let max_side = u64::from(limits.max_output_side.max(1));
    let max_area = limits.max_output_pixels.max(1);
    let upscale_refused = || bad("size", "larger than the region: write ^ to upscale");
    let (w, h): (u64, u64) = match request.size {
        SizeKind::Max => {
            // The region at full size, shrunk to the limits (never grown; see the module doc).
            let (rw64, rh64) = (u64::from(rw), u64::from(rh));
            let mut num = 1f64;
            num = num.min(max_side as f64 / rw64 as f64);
            num = num.min(max_side as f64 / rh64 as f64);
            num = num.min((max_area as f64 / (rw64 as f64 * rh64 as f64)).sqrt());
            if num >= 1.0 {
                (rw64, rh64)
            } else {
                let w = ((rw64 as f64 * num).floor() as u64).max(1);
                let h = ((rh64 as f64 * num).floor() as u64).max(1);
                (w, h)
            }
        }
        SizeKind::Width(w) => (u64::from(w), scale(rh, u64::from(w), u64::from(rw))),
        SizeKind::Height(h) => (scale(rw, u64::from(h), u64::from(rh)), u64::from(h)),
        SizeKind::Percent(n) => (of_percent(rw, n).max(1), of_percent(rh, n).max(1)),
        SizeKind::Exact(w, h) => (u64::from(w), u64::from(h)),
        SizeKind::Fit(bw, bh) => {
            // The scale is the smaller of bw/rw and bh/rh; compare by cross-multiplying.
            if u64::from(bw) * u64::from(rh) <= u64::from(bh) * u64::from(rw) {
                let h = scale(rh, u64::from(bw), u64::from(rw)).min(u64::from(bh));
                (u64::from(bw), h)
            } else {
                let w = scale(rw, u64::from(bh), u64::from(rh)).min(u64::from(bw));
                (w, u64::from(bh))
            }
        }
    };
    if !request.upscale && (w > u64::from(rw) || h > u64::from(rh)) {
        return Err(upscale_refused());
    }
    if w > max_side || h > max_side {
        return Err(bad(
            "size",
            format!("wider or taller than maxWidth / maxHeight ({max_side})"),
        ));
    }
    if w.saturating_mul(h) > max_area {
        return Err(bad(
            "size",
            format!("more pixels than maxArea ({max_area})"),
        ));
    }
    let c = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok(RenderOp {
        region,
        width: c(w),
        height: c(h),
        mirror: request.mirror,
        rotation: request.rotation,
        quality: request.quality,
        format: request.format,
    })
}

/// The characters left as they are in the key's path segment (RFC 3986 unreserved).
fn encode_segment(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The public URL of the image service (info.json's `id`, without `/info.json`):
/// `{base}/iiif/3/{source}/{key}`, the key one segment (`/` as `%2F`). `base` is `[images]
/// base_url` when configured, else `https://{Host}`.
pub fn service_id(base: &str, source: &str, key: &str) -> String {
    let mut id = String::with_capacity(base.len() + source.len() + key.len() + 16);
    id.push_str(base.trim_end_matches('/'));
    id.push_str("/iiif/3/");
    encode_segment(&mut id, source);
    id.push('/');
    encode_segment(&mut id, key);
    id
}

/// The scale factors of `info.json`'s `tiles`: those of the source's levels (powers of two,
/// each level's width against the full width), then, while the smallest level is small enough
/// to decode whole, further powers of two until the image fits one tile.
pub fn scale_factors(image: &SourceImage, limits: &ImageLimits) -> Vec<u32> {
    let mut factors: Vec<u32> = image
        .levels
        .iter()
        .filter(|l| l.width > 0)
        .map(|l| {
            let f = (f64::from(image.width) / f64::from(l.width))
                .round()
                .max(1.0);
            // The nearest power of two.
            let p = f.log2().round().clamp(0.0, 30.0) as u32;
            1u32 << p
        })
        .collect();
    factors.push(1);
    factors.sort_unstable();
    factors.dedup();
    let smallest_decodable = image
        .levels
        .last()
        .is_none_or(|l| u64::from(l.width) * u64::from(l.height) <= limits.max_source_pixels);
    if smallest_decodable {
        let tile = limits.tile_size.max(1);
        let longest = image.width.max(image.height);
        let mut f = factors.last().copied().unwrap_or(1);
        while longest.div_ceil(f) > tile && f < (1 << 30) {
            f *= 2;
            factors.push(f);
        }
    }
    factors
}

/// The `info.json` document of one image. `id` from [`service_id`].
pub fn info_json(id: &str, image: &SourceImage, limits: &ImageLimits) -> Value {
    let max_side = limits.max_output_side;
    let sizes: Vec<Value> = {
        let mut sizes: Vec<(u32, u32)> = image
            .levels
            .iter()
            .map(|l| (l.width, l.height))
            .filter(|&(w, h)| {
                w > 0
                    && h > 0
                    && w <= max_side
                    && h <= max_side
                    && u64::from(w) * u64::from(h) <= limits.max_output_pixels
            })
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
            .into_iter()
            .map(|(w, h)| json!({"width": w, "height": h}))
            .collect()
    };
    let tile = limits.tile_size;
    json!({
        "@context": "http://iiif.io/api/image/3/context.json",
        "id": id,
        "type": "ImageService3",
        "protocol": "http://iiif.io/api/image",
        "profile": "level2",
        "width": image.width,
        "height": image.height,
        "maxWidth": max_side,
        "maxHeight": max_side,
        "maxArea": limits.max_output_pixels,
        "sizes": sizes,
        "tiles": [{"width": tile, "height": tile, "scaleFactors": scale_factors(image, limits)}],
        "extraFormats": ["png", "webp"],
        "extraQualities": ["color", "gray", "bitonal"],
        // Beyond level 2 (which has square regions, the base URI redirect, CORS and JSON-LD).
        "extraFeatures": ["mirroring", "sizeUpscaling"],
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)] // tests may unwrap; src/ may not
mod tests {
    use super::*;
    use crate::image::{Level, SourceFormat};

    fn req(path: &str) -> Result<ImageRequest, ImageError> {
        let parts: Vec<&str> = path.split('/').collect();
        assert_eq!(parts.len(), 4, "{path}");
        ImageRequest::parse(parts[0], parts[1], parts[2], parts[3])
    }

    fn canon(path: &str) -> String {
        req(path).unwrap().canonical().to_owned()
    }

    fn param(path: &str) -> &'static str {
        match req(path) {
            Err(ImageError::BadParameter { param, .. }) => param,
            other => panic!("{path}: {other:?}"),
        }
    }

    fn image(w: u32, h: u32) -> SourceImage {
        SourceImage {
            format: SourceFormat::Png,
            width: w,
            height: h,
            levels: vec![Level {
                width: w,
                height: h,
                tile: None,
            }],
            orientation: 1,
        }
    }

    fn op(path: &str, w: u32, h: u32) -> Result<RenderOp, ImageError> {
        resolve(&req(path)?, &image(w, h), &ImageLimits::default())
    }

    fn dims(path: &str) -> (u32, u32) {
        let o = op(path, 1000, 1000).unwrap();
        (o.width, o.height)
    }

    fn refused(path: &str, w: u32, h: u32) -> &'static str {
        match op(path, w, h) {
            Err(ImageError::BadParameter { param, .. }) => param,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn every_parameter_form_parses_and_is_canonical() {
        assert_eq!(canon("full/max/0/default.jpg"), "full/max/0/default.jpg");
        assert_eq!(
            canon("square/^max/90/color.png"),
            "square/^max/90/color.png"
        );
        assert_eq!(
            canon("0010,02,30,40/100,/180/gray.webp"),
            "10,2,30,40/100,/180/gray.webp"
        );
        assert_eq!(
            canon("pct:10.50,0,50.000,25/,200/!270/bitonal.jpg"),
            "pct:10.5,0,50,25/,200/!270/bitonal.jpg"
        );
        assert_eq!(
            canon("full/pct:50/0/default.jpg"),
            "full/pct:50/0/default.jpg"
        );
        assert_eq!(
            canon("full/^pct:200.0/0/default.jpg"),
            "full/^pct:200/0/default.jpg"
        );
        assert_eq!(
            canon("full/100,200/0/default.jpg"),
            "full/100,200/0/default.jpg"
        );
        assert_eq!(
            canon("full/!100,200/0/default.jpg"),
            "full/!100,200/0/default.jpg"
        );
        assert_eq!(
            canon("full/^!100,200/!0/default.jpg"),
            "full/^!100,200/!0/default.jpg"
        );
        assert_eq!(
            canon("full/^,200/90.0/default.jpg"),
            "full/^,200/90/default.jpg"
        );
        assert_eq!(
            canon("full/^300,/360/default.jpg"),
            "full/^300,/0/default.jpg"
        );
        assert_eq!(
            canon("pct:.5,0,1,1/max/0/default.jpg"),
            "pct:0.5,0,1,1/max/0/default.jpg"
        );
        let r = req("full/!100,200/!90/gray.png").unwrap();
        assert_eq!(r.size, SizeKind::Fit(100, 200));
        assert!(r.mirror && !r.upscale);
        assert_eq!(
            (r.rotation, r.quality, r.format),
            (90, Quality::Gray, OutputFormat::Png)
        );
    }

    #[test]
    fn each_bad_parameter_is_named() {
        for region in [
            "",
            "fu11",
            "Full",
            "1,2,3",
            "1,2,3,4,5",
            "-1,0,10,10",
            "0,0,0,10",
            "0,0,10,0",
            "+1,0,1,1",
            "1.5,0,1,1",
            "pct:1,2,3",
            "pct:0,0,0,5",
            "pct:x,0,1,1",
            "pct:1e2,0,1,1",
            "pct:nan,0,1,1",
            "pct:100,0,1,1",
            "pct:-1,0,1,1",
            "0x1,0,1,1",
            "99999999999,0,1,1",
            "full%20",
        ] {
            assert_eq!(
                param(&format!("{region}/max/0/default.jpg")),
                "region",
                "{region}"
            );
        }
        for size in [
            "", "full", "Max", "^", "^^max", "0,", ",0", ",", "!100,", "!,100", "pct:0", "pct:",
            "pct:101", "pct:-5", "1,2,3", "abc", "!0,5", "w,h", "^pct:inf",
        ] {
            assert_eq!(
                param(&format!("full/{size}/0/default.jpg")),
                "size",
                "{size}"
            );
        }
        for rotation in [
            "", "45", "-90", "!", "!!90", "90deg", "361", "1e2", "22.5", "nan",
        ] {
            assert_eq!(
                param(&format!("full/max/{rotation}/default.jpg")),
                "rotation",
                "{rotation}"
            );
        }
        for quality in ["native", "grey", "Default", ""] {
            assert_eq!(
                param(&format!("full/max/0/{quality}.jpg")),
                "quality",
                "{quality}"
            );
        }
        for last in [
            "default",
            "default.gif",
            "default.tif",
            "default.JPG",
            "default.",
            "default.jp2",
        ] {
            assert_eq!(param(&format!("full/max/0/{last}")), "format", "{last}");
        }
    }

    #[test]
    fn regions_are_clipped_to_the_image() {
        let r = |path: &str, w, h| op(path, w, h).unwrap().region;
        assert_eq!(
            r("full/max/0/default.jpg", 640, 480),
            Rect {
                x: 0,
                y: 0,
                w: 640,
                h: 480
            }
        );
        assert_eq!(
            r("square/max/0/default.jpg", 640, 480),
            Rect {
                x: 80,
                y: 0,
                w: 480,
                h: 480
            }
        );
        assert_eq!(
            r("square/max/0/default.jpg", 300, 500),
            Rect {
                x: 0,
                y: 100,
                w: 300,
                h: 300
            }
        );
        assert_eq!(
            r("600,400,100,100/max/0/default.jpg", 640, 480),
            Rect {
                x: 600,
                y: 400,
                w: 40,
                h: 80
            }
        );
        assert_eq!(
            r("pct:10,20,50,50/max/0/default.jpg", 1000, 500),
            Rect {
                x: 100,
                y: 100,
                w: 500,
                h: 250
            }
        );
        assert_eq!(
            r("pct:90,90,50,50/max/0/default.jpg", 1000, 1000),
            Rect {
                x: 900,
                y: 900,
                w: 100,
                h: 100
            }
        );
        assert_eq!(
            r("pct:0,0,0.01,0.01/max/0/default.jpg", 1000, 1000),
            Rect {
                x: 0,
                y: 0,
                w: 1,
                h: 1
            }
        );
        // Entirely outside: 400, naming the region.
        assert_eq!(refused("640,0,10,10/max/0/default.jpg", 640, 480), "region");
        assert_eq!(refused("0,480,10,10/max/0/default.jpg", 640, 480), "region");
        assert_eq!(
            r("pct:99.99,0,1,1/max/0/default.jpg", 1000, 1000),
            Rect {
                x: 999,
                y: 0,
                w: 1,
                h: 10
            }
        );
    }

    #[test]
    fn sizes_scale_the_region() {
        assert_eq!(dims("full/max/0/default.jpg"), (1000, 1000));
        assert_eq!(dims("full/^max/0/default.jpg"), (1000, 1000));
        assert_eq!(dims("full/500,/0/default.jpg"), (500, 500));
        assert_eq!(dims("full/,250/0/default.jpg"), (250, 250));
        assert_eq!(dims("full/pct:25/0/default.jpg"), (250, 250));
        assert_eq!(dims("full/300,200/0/default.jpg"), (300, 200));
        assert_eq!(dims("full/!400,700/0/default.jpg"), (400, 400));
        assert_eq!(dims("full/!2000,500/0/default.jpg"), (500, 500));
        assert_eq!(dims("0,0,500,250/200,/0/default.jpg"), (200, 100));
        assert_eq!(dims("0,0,500,250/!100,100/0/default.jpg"), (100, 50));
        let o = op("0,0,400,300/!90,90/90/default.jpg", 1000, 1000).unwrap();
        assert_eq!((o.width, o.height, o.output_size()), (90, 68, (68, 90)));
        assert_eq!(op("full/max/0/default.jpg", 3000, 1).unwrap().height, 1);
        assert_eq!(op("full/10,/0/default.jpg", 3000, 1).unwrap().height, 1);
    }

    #[test]
    fn an_upscale_needs_the_caret() {
        for size in ["1001,", ",1500", "1100,1100", "1000,1001", "!2000,3000"] {
            assert_eq!(
                refused(&format!("full/{size}/0/default.jpg"), 1000, 1000),
                "size",
                "{size}"
            );
        }
        assert_eq!(param("full/pct:200/0/default.jpg"), "size");
        assert_eq!(dims("full/^1500,/0/default.jpg"), (1500, 1500));
        assert_eq!(dims("full/^,1500/0/default.jpg"), (1500, 1500));
        assert_eq!(dims("full/^1500,1500/0/default.jpg"), (1500, 1500));
        assert_eq!(dims("full/^pct:200/0/default.jpg"), (2000, 2000));
        assert_eq!(dims("full/^!2000,3000/0/default.jpg"), (2000, 2000));
        assert_eq!(dims("full/^!2000,500/0/default.jpg"), (500, 500));
        // A caret on a smaller size changes nothing.
        assert_eq!(dims("full/^500,/0/default.jpg"), (500, 500));
    }

    #[test]
    fn outputs_over_the_limits_are_refused_and_max_shrinks_to_them() {
        let limits = ImageLimits {
            max_output_side: 2000,
            max_output_pixels: 1_000_000,
            ..ImageLimits::default()
        };
        let at = |path: &str, w, h| resolve(&req(path).unwrap(), &image(w, h), &limits);
        let max = at("full/max/0/default.jpg", 4000, 1000).unwrap();
        assert_eq!((max.width, max.height), (2000, 500));
        let max = at("full/max/0/default.jpg", 3000, 3000).unwrap();
        assert_eq!((max.width, max.height), (1000, 1000));
        let max = at("full/^max/0/default.jpg", 3000, 3000).unwrap();
        assert_eq!((max.width, max.height), (1000, 1000));
        for path in [
            "full/2001,/0/default.jpg",
            "full/1001,1000/0/default.jpg",
            "full/^pct:300/0/default.jpg",
        ] {
            match at(path, 3000, 3000) {
                Err(ImageError::BadParameter { param: "size", why }) => {
                    assert!(why.contains("max"), "{why}")
                }
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    #[test]
    fn info_json_describes_the_image_and_the_limits() {
        let mut img = image(6000, 4000);
        img.levels = vec![
            Level {
                width: 6000,
                height: 4000,
                tile: None,
            },
            Level {
                width: 3000,
                height: 2000,
                tile: None,
            },
            Level {
                width: 1500,
                height: 1000,
                tile: None,
            },
            Level {
                width: 750,
                height: 500,
                tile: None,
            },
        ];
        let limits = ImageLimits::default();
        let id = service_id("https://gw.example.com/", "photos", "a/b c.jpg");
        assert_eq!(id, "https://gw.example.com/iiif/3/photos/a%2Fb%20c.jpg");
        let info = info_json(&id, &img, &limits);
        assert_eq!(info["@context"], "http://iiif.io/api/image/3/context.json");
        assert_eq!(info["id"], id.as_str());
        assert_eq!(info["type"], "ImageService3");
        assert_eq!(info["protocol"], "http://iiif.io/api/image");
        assert_eq!(info["profile"], "level2");
        assert_eq!(
            (info["width"].as_u64(), info["height"].as_u64()),
            (Some(6000), Some(4000))
        );
        assert_eq!(info["maxWidth"], limits.max_output_side);
        assert_eq!(info["maxHeight"], limits.max_output_side);
        assert_eq!(info["maxArea"], limits.max_output_pixels);
        let sizes: Vec<(u64, u64)> = info["sizes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["width"].as_u64().unwrap(), s["height"].as_u64().unwrap()))
            .collect();
        // 6000x4000 is over maxArea (16 MP): not listed.
        assert_eq!(sizes, vec![(750, 500), (1500, 1000), (3000, 2000)]);
        assert_eq!(info["tiles"][0]["width"], 512);
        assert_eq!(info["tiles"][0]["scaleFactors"], json!([1, 2, 4, 8, 16]));
        assert_eq!(info["extraFormats"], json!(["png", "webp"]));
        assert_eq!(info["extraQualities"], json!(["color", "gray", "bitonal"]));
        assert_eq!(info["extraFeatures"], json!(["mirroring", "sizeUpscaling"]));
    }

    #[test]
    fn scale_factors_follow_the_levels_of_a_huge_pyramid() {
        let mut img = image(100_000, 100_000);
        img.format = SourceFormat::Tiff;
        img.levels = (0..4)
            .map(|i| Level {
                width: 100_000 >> i,
                height: 100_000 >> i,
                tile: Some((512, 512)),
            })
            .collect();
        // The smallest level (12500^2 = 156 MP) is over the untiled limit: no extra factors.
        assert_eq!(
            scale_factors(&img, &ImageLimits::default()),
            vec![1, 2, 4, 8]
        );
        assert_eq!(
            scale_factors(&image(300, 200), &ImageLimits::default()),
            vec![1]
        );
        assert_eq!(
            scale_factors(&image(1000, 1000), &ImageLimits::default()),
            vec![1, 2]
        );
    }
}
