//! TIFF and BigTIFF: directories, pyramid levels (SubIFDs, or one page per level), strips and
//! tiles read with ranged reads of [`ObjectBytes`](super::source::ObjectBytes), never the whole
//! file.
//!
//! Our own directory parser, async over ranged reads: [`probe`] reads the header and the
//! directories of the levels only (a window of [`DIRECTORY_READ_BYTES`] at a time, so a COG,
//! whose directories sit at the start, costs one read), never the tile offset arrays, whose size
//! grows with the image. [`render`] picks the smallest level that still has at least the output's
//! pixels in the region, reads the entries of the offset arrays for the chunks (tiles or strips)
//! covering the region, then the chunks themselves ([`ObjectBytes::read_ranges`]: neighbours in
//! one request, the rest concurrently), and decodes and assembles them on the pool: LZW (weezl),
//! Deflate (flate2), JPEG with the shared `JPEGTables` (jpeg-decoder), or none; the horizontal
//! predictor; 8-bit samples, 16-bit ones reduced to their high byte. A request that is exactly
//! one stored JPEG tile at its own size is answered with that tile's JPEG stream (tables spliced
//! in, metadata segments dropped), without a decode and re-encode, as iipsrv does.
//!
//! The levels of a pyramid: the SubIFDs of the first directory when it has any (`vips tiffsave
//! --pyramid --subifd`), else the following pages of the chain (`vips tiffsave --pyramid`, a COG
//! with overviews), skipping transparency masks and stopping at the first page that is not a
//! smaller copy of the image (a multi-page document). Hostile files fail fast with
//! [`ImageError::Corrupt`] or [`ImageError::TooLarge`], before large reads or allocations:
//! directory loops, too many directories or entries, offsets or counts past the end of the file,
//! chunk counts that do not match the image, tiles or strips past [`MAX_CHUNK_PIXELS`],
//! decompressed data is never larger than the chunk it fills.
//!
//! The TIFF `Orientation` tag is not applied (pyramids are written upright; `render::finish` is
//! called with orientation 1).

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::OnceCell;

use super::iiif::Rect;
use super::pool::Pool;
use super::source::ObjectBytes;
use super::{ImageError, ImageLimits, Level, RenderOp, Rendered, SourceFormat, SourceImage};

/// Directories visited at most (levels, masks, pages) before the walk stops.
pub const MAX_DIRECTORIES: usize = 64;
/// Entries one directory may have (real files have 15-40).
pub const MAX_IFD_ENTRIES: u64 = 1024;
/// SubIFDs the first directory may list (a pyramid of a 2^32-pixel side has 32 levels).
pub const MAX_SUBIFDS: u64 = 64;
/// Bytes of the shared JPEG tables (real ones are under 1 KiB).
pub const MAX_JPEG_TABLES_BYTES: u64 = 64 << 10;
/// Pixels of one tile or strip: what one chunk's decode may allocate (times samples and bytes).
pub const MAX_CHUNK_PIXELS: u64 = 4096 * 4096;
/// Chunks (tiles or strips) of one level.
pub const MAX_CHUNKS: u64 = 1 << 26;
/// Bytes read around a directory in one request (its entries, often its values and the next).
pub const DIRECTORY_READ_BYTES: u64 = 16 << 10;
/// Offset arrays with at most this many entries are read whole once and kept with the pyramid;
/// larger ones are read in the slices a region needs.
pub const WHOLE_ARRAY_ENTRIES: u64 = 16 << 10;

const TAG_NEW_SUBFILE_TYPE: u16 = 254;
const TAG_WIDTH: u16 = 256;
const TAG_HEIGHT: u16 = 257;
const TAG_BITS_PER_SAMPLE: u16 = 258;
const TAG_COMPRESSION: u16 = 259;
const TAG_PHOTOMETRIC: u16 = 262;
const TAG_STRIP_OFFSETS: u16 = 273;
const TAG_SAMPLES_PER_PIXEL: u16 = 277;
const TAG_ROWS_PER_STRIP: u16 = 278;
const TAG_STRIP_BYTE_COUNTS: u16 = 279;
const TAG_PLANAR: u16 = 284;
const TAG_PREDICTOR: u16 = 317;
const TAG_TILE_WIDTH: u16 = 322;
const TAG_TILE_LENGTH: u16 = 323;
const TAG_TILE_OFFSETS: u16 = 324;
const TAG_TILE_BYTE_COUNTS: u16 = 325;
const TAG_SUBIFDS: u16 = 330;
const TAG_SAMPLE_FORMAT: u16 = 339;
const TAG_JPEG_TABLES: u16 = 347;

/// A TIFF's usable levels, largest first, as [`probe`] found them.
#[derive(Debug)]
pub struct Pyramid {
    pub bigtiff: bool,
    pub little_endian: bool,
    pub levels: Vec<Dir>,
}

/// How a compressed chunk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lzw,
    Deflate,
    Jpeg,
}

/// What the samples mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Photometric {
    WhiteIsZero,
    BlackIsZero,
    Rgb,
    /// YCbCr, only inside JPEG chunks (the JPEG decoder converts it).
    YCbCr,
}

/// Tiles, or strips of whole rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    Tiles { width: u32, height: u32 },
    Strips { rows: u32 },
}

/// Where an offset or byte-count array is: its values in the directory entry, or at an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Array {
    Inline(Vec<u64>),
    At {
        offset: u64,
        count: u64,
        /// Bytes per element: 2, 4 or 8.
        elem: u8,
    },
}

/// One image directory usable as a level.
#[derive(Debug)]
pub struct Dir {
    pub width: u32,
    pub height: u32,
    pub chunking: Chunking,
    /// Chunks across and down.
    pub across: u64,
    pub down: u64,
    pub offsets: Array,
    pub byte_counts: Array,
    pub compression: Compression,
    pub photometric: Photometric,
    /// 8 or 16.
    pub bits: u16,
    pub samples: u16,
    pub predictor: u16,
    pub jpeg_tables: Option<Bytes>,
    /// Whole offset and byte-count arrays once read (small arrays only).
    whole: OnceCell<Arc<(Vec<u64>, Vec<u64>)>>,
}

impl Dir {
    /// Channels of the 8-bit output: gray, gray+alpha, RGB, RGBA.
    pub fn channels(&self) -> u8 {
        match self.photometric {
            Photometric::WhiteIsZero | Photometric::BlackIsZero => {
                if self.samples >= 2 {
                    2
                } else {
                    1
                }
            }
            Photometric::Rgb | Photometric::YCbCr => {
                if self.samples >= 4 {
                    4
                } else {
                    3
                }
            }
        }
    }

    fn chunk_size(&self) -> (u32, u32) {
        match self.chunking {
            Chunking::Tiles { width, height } => (width, height),
            Chunking::Strips { rows } => (self.width, rows),
        }
    }

    fn tiled(&self) -> bool {
        matches!(self.chunking, Chunking::Tiles { .. })
    }
}

/// Pixels of a region of one level, 8 bits per sample, rows top to bottom, interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// The level read (0: full size).
    pub level: usize,
    /// The rectangle of that level's pixels (the request's region scaled, rounded outwards).
    pub rect: Rect,
    /// 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA.
    pub channels: u8,
    pub data: Vec<u8>,
}

fn corrupt(why: &str) -> ImageError {
    ImageError::Corrupt(why.to_owned())
}

fn unsupported() -> ImageError {
    ImageError::Unsupported
}

// ---------------------------------------------------------------------------------------------
// Directories

/// Reads for the directory walk: windows of [`DIRECTORY_READ_BYTES`] kept for the walk, so
/// neighbouring directories and values cost no further request.
struct Walk<'a> {
    src: &'a ObjectBytes,
    little: bool,
    big: bool,
    windows: Vec<(u64, Bytes)>,
}

impl Walk<'_> {
    /// Exactly `len` bytes at `offset`, or Corrupt when they are not all in the file.
    async fn bytes(&mut self, offset: u64, len: u64) -> Result<Bytes, ImageError> {
        let size = self.src.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(corrupt("a directory points past the end of the file"));
        }
        if let Some(held) = self.held(offset, len) {
            return Ok(held);
        }
        let want = len.max(DIRECTORY_READ_BYTES).min(size - offset);
        let window = self.src.read_at(offset, want).await?;
        if (window.len() as u64) < len {
            return Err(corrupt("the file is shorter than its directories say"));
        }
        let out = window.slice(..len as usize);
        self.windows.push((offset, window));
        Ok(out)
    }

    /// `len` bytes at `offset` if a window read already holds them (no request).
    fn held(&self, offset: u64, len: u64) -> Option<Bytes> {
        let end = offset.checked_add(len)?;
        self.windows.iter().find_map(|(start, window)| {
            let window_end = start + window.len() as u64;
            (offset >= *start && end <= window_end).then(|| {
                let from = (offset - start) as usize;
                window.slice(from..from + len as usize)
            })
        })
    }

    /// The values of a small `array` when they are inline or in a window already read (libtiff
    /// writes a directory's arrays right after it): the level then needs no array read later.
    fn held_array(&self, array: &Array) -> Option<Vec<u64>> {
        match array {
            Array::Inline(values) => Some(values.clone()),
            Array::At {
                offset,
                count,
                elem,
            } => {
                if *count > WHOLE_ARRAY_ENTRIES {
                    return None;
                }
                let bytes = self.held(*offset, count * u64::from(*elem))?;
                Some(self.decode_ints(&bytes, u64::from(*elem)))
            }
        }
    }

    fn u16(&self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.little {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        }
    }

    fn u32(&self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    }

    fn u64(&self, b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        if self.little {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        }
    }

    /// An offset field (4 bytes in TIFF, 8 in BigTIFF).
    fn offset(&self, b: &[u8]) -> u64 {
        if self.big {
            self.u64(b)
        } else {
            u64::from(self.u32(b))
        }
    }

    /// One directory at `offset`: its entries and the offset of the next (0: none).
    async fn ifd(&mut self, offset: u64) -> Result<Ifd, ImageError> {
        let (count_len, entry_len) = if self.big { (8, 20) } else { (2, 12) };
        let head = self.bytes(offset, count_len).await?;
        let count = if self.big {
            self.u64(&head)
        } else {
            u64::from(self.u16(&head))
        };
        if count == 0 {
            return Err(corrupt("an empty directory"));
        }
        if count > MAX_IFD_ENTRIES {
            return Err(corrupt("a directory with too many entries"));
        }
        let body = self
            .bytes(offset + count_len, count * entry_len + count_len.max(4))
            .await?;
        let mut entries = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let e = &body[i * entry_len as usize..(i + 1) * entry_len as usize];
            let (n, value) = if self.big {
                (self.u64(&e[4..12]), &e[12..20])
            } else {
                (u64::from(self.u32(&e[4..8])), &e[8..12])
            };
            let mut inline = [0u8; 8];
            inline[..value.len()].copy_from_slice(value);
            entries.push(Entry {
                tag: self.u16(&e[0..2]),
                typ: self.u16(&e[2..4]),
                count: n,
                inline,
            });
        }
        let next_at = (count * entry_len) as usize;
        let next = self.offset(&body[next_at..]);
        Ok(Ifd { entries, next })
    }

    /// The values of `entry` as unsigned integers, at most `max` of them (Corrupt past it).
    async fn values(&mut self, entry: &Entry, max: u64) -> Result<Vec<u64>, ImageError> {
        if entry.count > max {
            return Err(corrupt("a directory entry with too many values"));
        }
        let size = type_size(entry.typ).ok_or_else(|| corrupt("a value of an unknown type"))?;
        if !matches!(entry.typ, 1 | 3 | 4 | 7 | 13 | 16 | 18) {
            return Err(corrupt("an integer tag of a non-integer type"));
        }
        let bytes = self.entry_bytes(entry, size).await?;
        Ok(self.decode_ints(&bytes, size))
    }

    fn decode_ints(&self, bytes: &[u8], size: u64) -> Vec<u64> {
        bytes
            .chunks_exact(size as usize)
            .map(|b| match size {
                1 => u64::from(b[0]),
                2 => u64::from(self.u16(b)),
                4 => u64::from(self.u32(b)),
                _ => self.u64(b),
            })
            .collect()
    }

    /// The raw bytes of `entry`'s values: inline, or read from its offset.
    async fn entry_bytes(&mut self, entry: &Entry, size: u64) -> Result<Bytes, ImageError> {
        let len = entry
            .count
            .checked_mul(size)
            .ok_or_else(|| corrupt("a directory entry too large"))?;
        let room = if self.big { 8 } else { 4 };
        if len <= room {
            return Ok(Bytes::copy_from_slice(&entry.inline[..len as usize]));
        }
        let at = self.offset(&entry.inline);
        self.bytes(at, len).await
    }

    /// The first value of `tag`, if present.
    async fn scalar(&mut self, ifd: &Ifd, tag: u16) -> Result<Option<u64>, ImageError> {
        match ifd.get(tag) {
            Some(e) => Ok(self.values(e, 256).await?.first().copied()),
            None => Ok(None),
        }
    }

    /// An offset or byte-count array: where it is, never read here.
    fn array(&self, entry: &Entry) -> Result<Array, ImageError> {
        let elem = match entry.typ {
            3 => 2u8,
            4 | 13 => 4,
            16 | 18 => 8,
            _ => return Err(corrupt("an offset array of a non-integer type")),
        };
        let len = entry
            .count
            .checked_mul(u64::from(elem))
            .ok_or_else(|| corrupt("an offset array too large"))?;
        let room = if self.big { 8 } else { 4 };
        if len <= room {
            return Ok(Array::Inline(
                self.decode_ints(&entry.inline[..len as usize], u64::from(elem)),
            ));
        }
        Ok(Array::At {
            offset: self.offset(&entry.inline),
            count: entry.count,
            elem,
        })
    }

    /// The directory at `ifd` as a level, or why it cannot be one.
    async fn dir(&mut self, ifd: &Ifd, limits: &ImageLimits) -> Result<Dir, ImageError> {
        let width = self.scalar(ifd, TAG_WIDTH).await?.unwrap_or(0);
        let height = self.scalar(ifd, TAG_HEIGHT).await?.unwrap_or(0);
        if width == 0 || height == 0 || width > u64::from(u32::MAX) || height > u64::from(u32::MAX)
        {
            return Err(corrupt("an image without a valid size"));
        }
        let (width, height) = (width as u32, height as u32);
        let samples = self.scalar(ifd, TAG_SAMPLES_PER_PIXEL).await?.unwrap_or(1);
        if samples == 0 || samples > 16 {
            return Err(corrupt("an invalid number of samples per pixel"));
        }
        let bits = match ifd.get(TAG_BITS_PER_SAMPLE) {
            Some(e) => self.values(e, 16).await?,
            None => vec![1],
        };
        let first_bits = bits.first().copied().unwrap_or(1);
        if bits.iter().any(|&b| b != first_bits) || !matches!(first_bits, 8 | 16) {
            return Err(unsupported());
        }
        if self.scalar(ifd, TAG_SAMPLE_FORMAT).await?.unwrap_or(1) != 1 {
            return Err(unsupported());
        }
        let compression = match self.scalar(ifd, TAG_COMPRESSION).await?.unwrap_or(1) {
            1 => Compression::None,
            5 => Compression::Lzw,
            7 => Compression::Jpeg,
            8 | 32946 => Compression::Deflate,
            _ => return Err(unsupported()),
        };
        let photometric = match self.scalar(ifd, TAG_PHOTOMETRIC).await? {
            Some(0) => Photometric::WhiteIsZero,
            Some(1) => Photometric::BlackIsZero,
            None if samples < 3 => Photometric::BlackIsZero,
            Some(2) | None => Photometric::Rgb,
            Some(6) if compression == Compression::Jpeg => Photometric::YCbCr,
            _ => return Err(unsupported()),
        };
        let needs = match photometric {
            Photometric::Rgb | Photometric::YCbCr => 3,
            _ => 1,
        };
        if samples < needs {
            return Err(corrupt("fewer samples than the colour model needs"));
        }
        if compression == Compression::Jpeg && first_bits != 8 {
            return Err(unsupported());
        }
        if samples > 1 && self.scalar(ifd, TAG_PLANAR).await?.unwrap_or(1) != 1 {
            return Err(unsupported());
        }
        let predictor = self.scalar(ifd, TAG_PREDICTOR).await?.unwrap_or(1);
        if !matches!(predictor, 1 | 2) {
            return Err(unsupported());
        }
        let (chunking, offsets_tag, counts_tag) = match (
            self.scalar(ifd, TAG_TILE_WIDTH).await?,
            self.scalar(ifd, TAG_TILE_LENGTH).await?,
        ) {
            (Some(tw), Some(th)) => {
                if tw == 0 || th == 0 || tw > 65_535 || th > 65_535 {
                    return Err(corrupt("an invalid tile size"));
                }
                (
                    Chunking::Tiles {
                        width: tw as u32,
                        height: th as u32,
                    },
                    TAG_TILE_OFFSETS,
                    TAG_TILE_BYTE_COUNTS,
                )
            }
            (None, None) => {
                let rows = self
                    .scalar(ifd, TAG_ROWS_PER_STRIP)
                    .await?
                    .unwrap_or(u64::from(u32::MAX))
                    .clamp(1, u64::from(height)) as u32;
                (
                    Chunking::Strips { rows },
                    TAG_STRIP_OFFSETS,
                    TAG_STRIP_BYTE_COUNTS,
                )
            }
            _ => return Err(corrupt("a tile width without a tile height")),
        };
        // Only tiles are decoded, so a tiled image may be far larger than an untiled one.
        let pixels = u64::from(width) * u64::from(height);
        let max = match chunking {
            Chunking::Tiles { .. } => limits.max_tiled_source_pixels,
            Chunking::Strips { .. } => limits.max_source_pixels,
        };
        if pixels > max {
            return Err(ImageError::TooLarge(format!(
                "the image has {pixels} pixels, more than the limit of {max}"
            )));
        }
        let (cw, ch) = match chunking {
            Chunking::Tiles { width, height } => (width, height),
            Chunking::Strips { rows } => (width, rows),
        };
        let chunk_pixels = u64::from(cw) * u64::from(ch);
        let chunk_limit = match chunking {
            Chunking::Tiles { .. } => MAX_CHUNK_PIXELS,
            Chunking::Strips { .. } => MAX_CHUNK_PIXELS.max(limits.max_source_pixels),
        };
        if chunk_pixels > chunk_limit {
            return Err(ImageError::TooLarge(
                "a tile or strip of the image is too large".into(),
            ));
        }
        let across = u64::from(width).div_ceil(u64::from(cw));
        let down = u64::from(height).div_ceil(u64::from(ch));
        let chunks = across * down;
        if chunks > MAX_CHUNKS {
            return Err(ImageError::TooLarge("the image has too many tiles".into()));
        }
        let offsets = ifd
            .get(offsets_tag)
            .ok_or_else(|| corrupt("an image without data offsets"))?;
        let counts = ifd
            .get(counts_tag)
            .ok_or_else(|| corrupt("an image without data byte counts"))?;
        if offsets.count != chunks || counts.count != chunks {
            return Err(corrupt(
                "the number of tiles or strips does not match the image",
            ));
        }
        let offsets = self.array(offsets)?;
        let byte_counts = self.array(counts)?;
        for array in [&offsets, &byte_counts] {
            if let Array::At {
                offset,
                count,
                elem,
            } = array
            {
                let end = offset.checked_add(count * u64::from(*elem));
                if end.is_none_or(|end| end > self.src.size()) {
                    return Err(corrupt("an offset array reaches past the end of the file"));
                }
            }
        }
        let jpeg_tables = match (compression, ifd.get(TAG_JPEG_TABLES)) {
            (Compression::Jpeg, Some(e)) => {
                if e.count > MAX_JPEG_TABLES_BYTES {
                    return Err(corrupt("JPEG tables too large"));
                }
                let size = type_size(e.typ).ok_or_else(|| corrupt("a value of an unknown type"))?;
                if size != 1 {
                    return Err(corrupt("JPEG tables of a wrong type"));
                }
                Some(self.entry_bytes(e, 1).await?)
            }
            _ => None,
        };
        let whole = match (self.held_array(&offsets), self.held_array(&byte_counts)) {
            (Some(o), Some(c)) => OnceCell::new_with(Some(Arc::new((o, c)))),
            _ => OnceCell::new(),
        };
        Ok(Dir {
            width,
            height,
            chunking,
            across,
            down,
            offsets,
            byte_counts,
            compression,
            photometric,
            bits: first_bits as u16,
            samples: samples as u16,
            predictor: predictor as u16,
            jpeg_tables,
            whole,
        })
    }
}

struct Entry {
    tag: u16,
    typ: u16,
    count: u64,
    /// The value field: the values when they fit, else their offset.
    inline: [u8; 8],
}

struct Ifd {
    entries: Vec<Entry>,
    next: u64,
}

impl Ifd {
    fn get(&self, tag: u16) -> Option<&Entry> {
        self.entries.iter().find(|e| e.tag == tag)
    }
}

fn type_size(typ: u16) -> Option<u64> {
    Some(match typ {
        1 | 2 | 6 | 7 => 1,
        3 | 8 => 2,
        4 | 9 | 11 | 13 => 4,
        5 | 10 | 12 | 16 | 17 | 18 => 8,
        _ => return None,
    })
}

/// Whether `c` is a reduced copy of `full` that fits after `prev` in a pyramid: smaller than
/// `prev`, the same aspect ratio within rounding, the same channels.
fn is_level(full: &Dir, prev: &Dir, c: &Dir) -> bool {
    let smaller = c.width <= prev.width
        && c.height <= prev.height
        && (c.width < prev.width || c.height < prev.height);
    let cross = |a: u32, b: u32| i128::from(a) * i128::from(b);
    let skew = (cross(c.width, full.height) - cross(c.height, full.width)).abs();
    let tolerance = 2 * (i128::from(full.width) + i128::from(full.height));
    smaller && skew <= tolerance && c.channels() == full.channels()
}

/// Read the header and the directories of the levels; check the limits on the full size.
pub async fn probe(
    src: &ObjectBytes,
    limits: &ImageLimits,
) -> Result<(SourceImage, Arc<Pyramid>), ImageError> {
    let mut walk = Walk {
        src,
        little: true,
        big: false,
        windows: Vec::new(),
    };
    if src.size() < 8 {
        return Err(unsupported());
    }
    let head = walk.bytes(0, 8).await?;
    walk.little = match &head[0..2] {
        b"II" => true,
        b"MM" => false,
        _ => return Err(unsupported()),
    };
    let first = match walk.u16(&head[2..4]) {
        42 => u64::from(walk.u32(&head[4..8])),
        43 => {
            let big = walk.bytes(0, 16).await?;
            if walk.u16(&big[4..6]) != 8 || walk.u16(&big[6..8]) != 0 {
                return Err(corrupt("a BigTIFF header with an unknown offset size"));
            }
            walk.big = true;
            walk.u64(&big[8..16])
        }
        _ => return Err(unsupported()),
    };
    let mut visited = HashSet::new();
    visited.insert(first);
    let ifd0 = walk.ifd(first).await?;
    let full = walk.dir(&ifd0, limits).await?;
    let mut levels = vec![full];
    let subifds = match ifd0.get(TAG_SUBIFDS) {
        Some(e) => walk.values(e, MAX_SUBIFDS).await?,
        None => Vec::new(),
    };
    // Candidates in file order: the SubIFDs, or else the rest of the page chain.
    let mut candidates: Vec<Dir> = Vec::new();
    if !subifds.is_empty() {
        for offset in subifds {
            if !visited.insert(offset) {
                return Err(corrupt("a directory loop"));
            }
            let ifd = walk.ifd(offset).await?;
            if is_mask(&mut walk, &ifd).await? {
                continue;
            }
            match walk.dir(&ifd, limits).await {
                Ok(dir) => candidates.push(dir),
                Err(ImageError::Unsupported) => continue,
                Err(e) => return Err(e),
            }
        }
        candidates.sort_by_key(|d| std::cmp::Reverse(d.width));
    } else {
        let mut next = ifd0.next;
        while next != 0 && visited.len() < MAX_DIRECTORIES {
            if !visited.insert(next) {
                return Err(corrupt("a directory loop"));
            }
            let ifd = walk.ifd(next).await?;
            next = ifd.next;
            if is_mask(&mut walk, &ifd).await? {
                continue;
            }
            match walk.dir(&ifd, limits).await {
                Ok(dir) => {
                    let fits = is_level(&levels[0], candidates.last().unwrap_or(&levels[0]), &dir);
                    if !fits {
                        break;
                    }
                    candidates.push(dir);
                }
                // Another page of a multi-page document, in a form we do not read: not a level.
                Err(ImageError::Unsupported) => break,
                Err(e) => return Err(e),
            }
        }
    }
    for dir in candidates {
        let prev = levels.last().unwrap_or(&levels[0]);
        if is_level(&levels[0], prev, &dir) {
            levels.push(dir);
        }
    }
    let full = &levels[0];
    let image = SourceImage {
        format: SourceFormat::Tiff,
        width: full.width,
        height: full.height,
        levels: levels
            .iter()
            .map(|d| Level {
                width: d.width,
                height: d.height,
                tile: match d.chunking {
                    Chunking::Tiles { width, height } => Some((width, height)),
                    Chunking::Strips { .. } => None,
                },
            })
            .collect(),
        orientation: 1,
    };
    let pyramid = Pyramid {
        bigtiff: walk.big,
        little_endian: walk.little,
        levels,
    };
    Ok((image, Arc::new(pyramid)))
}

/// A transparency mask (NewSubfileType bit 2): a COG's masks sit between its levels.
async fn is_mask(walk: &mut Walk<'_>, ifd: &Ifd) -> Result<bool, ImageError> {
    Ok(walk.scalar(ifd, TAG_NEW_SUBFILE_TYPE).await?.unwrap_or(0) & 4 != 0)
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// The smallest level whose share of `op.region` has at least the output's width and height.
pub fn choose_level(pyramid: &Pyramid, op: &RenderOp) -> usize {
    let Some(full) = pyramid.levels.first() else {
        return 0;
    };
    let mut best = 0;
    for (i, level) in pyramid.levels.iter().enumerate() {
        let wide = u64::from(op.region.w) * u64::from(level.width)
            >= u64::from(op.width) * u64::from(full.width);
        let tall = u64::from(op.region.h) * u64::from(level.height)
            >= u64::from(op.height) * u64::from(full.height);
        if wide && tall {
            best = i;
        }
    }
    best
}

/// `region` of the full image scaled to a level of `lw` x `lh`, rounded outwards, non-empty.
fn scale_rect(region: Rect, full: (u32, u32), level: (u32, u32)) -> Rect {
    let axis = |pos: u32, len: u32, full: u32, level: u32| {
        let (pos, len, full, level) = (
            u64::from(pos),
            u64::from(len),
            u64::from(full.max(1)),
            u64::from(level),
        );
        let start = (pos * level / full).min(level.saturating_sub(1));
        let end = ((pos + len) * level)
            .div_ceil(full)
            .clamp(start + 1, level.max(1));
        (start as u32, (end - start) as u32)
    };
    let (x, w) = axis(region.x, region.w, full.0, level.0);
    let (y, h) = axis(region.y, region.h, full.1, level.1);
    Rect { x, y, w, h }
}

/// Render `op` from the pyramid: read the chunks of the chosen level covering the region,
/// decode and assemble them, and finish (resample, rotate, encode) on the pool.
pub async fn render(
    src: &ObjectBytes,
    pyramid: &Pyramid,
    op: &RenderOp,
    limits: &ImageLimits,
    pool: &Pool,
) -> Result<Rendered, ImageError> {
    let deadline = tokio::time::Instant::now() + limits.job_timeout;
    let job = fetch_by(deadline, src, pyramid, op, limits).await?;
    if let Some(rendered) = job.passthrough(op) {
        return Ok(rendered);
    }
    let op = RenderOp {
        region: Rect {
            x: 0,
            y: 0,
            w: job.rect.w,
            h: job.rect.h,
        },
        ..op.clone()
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    pool.run(left, move || {
        let region = job.assemble()?;
        super::render::finish(region.into_pixels(), &op, 1)
    })
    .await
}

/// The region of `op` at the level [`render`] would read, decoded (no resampling): what the
/// pixels given to `render::finish` are.
pub async fn read_region(
    src: &ObjectBytes,
    pyramid: &Pyramid,
    op: &RenderOp,
    limits: &ImageLimits,
    pool: &Pool,
) -> Result<Region, ImageError> {
    let deadline = tokio::time::Instant::now() + limits.job_timeout;
    let job = fetch_by(deadline, src, pyramid, op, limits).await?;
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    pool.run(left, move || job.assemble()).await
}

/// [`fetch`] within the job's time limit (its reads are the first part of the job).
async fn fetch_by(
    deadline: tokio::time::Instant,
    src: &ObjectBytes,
    pyramid: &Pyramid,
    op: &RenderOp,
    limits: &ImageLimits,
) -> Result<Job, ImageError> {
    tokio::time::timeout_at(deadline, fetch(src, pyramid, op, limits))
        .await
        .unwrap_or(Err(ImageError::TimedOut))
}

/// The decode parameters of one level, owned for the pool.
#[derive(Debug, Clone)]
struct Codec {
    compression: Compression,
    photometric: Photometric,
    bits: u16,
    samples: u16,
    predictor: u16,
    little: bool,
    jpeg_tables: Option<Bytes>,
    channels: u8,
}

/// A region's chunks, read, waiting to be decoded on the pool.
struct Job {
    level: usize,
    rect: Rect,
    codec: Codec,
    /// (chunk's left, top in the level, its decoded width and height, its bytes; empty: absent).
    chunks: Vec<(u32, u32, u32, u32, Bytes)>,
}

async fn fetch(
    src: &ObjectBytes,
    pyramid: &Pyramid,
    op: &RenderOp,
    limits: &ImageLimits,
) -> Result<Job, ImageError> {
    let level = choose_level(pyramid, op);
    let full = pyramid.levels.first().ok_or_else(|| corrupt("no image"))?;
    let dir = &pyramid.levels[level];
    if op.region.w == 0
        || op.region.h == 0
        || u64::from(op.region.x) + u64::from(op.region.w) > u64::from(full.width)
        || u64::from(op.region.y) + u64::from(op.region.h) > u64::from(full.height)
    {
        return Err(ImageError::BadParameter {
            param: "region",
            why: "outside the image".into(),
        });
    }
    let rect = scale_rect(
        op.region,
        (full.width, full.height),
        (dir.width, dir.height),
    );
    let pixels = u64::from(rect.w) * u64::from(rect.h);
    if pixels > limits.max_source_pixels {
        return Err(ImageError::TooLarge(format!(
            "the region needs {pixels} source pixels decoded, more than the limit of {}",
            limits.max_source_pixels
        )));
    }
    let (cw, ch) = dir.chunk_size();
    let (c0, c1) = (rect.x / cw, (rect.x + rect.w - 1) / cw);
    let (r0, r1) = (rect.y / ch, (rect.y + rect.h - 1) / ch);
    let mut indices = Vec::new();
    for row in r0..=r1 {
        for col in c0..=c1 {
            indices.push(u64::from(row) * dir.across + u64::from(col));
        }
    }
    let places = locate(src, pyramid, dir, &indices).await?;
    let raw_limit = u64::from(cw) * u64::from(ch) * u64::from(dir.samples) * 2 + (1 << 20);
    let mut ranges = Vec::with_capacity(places.len());
    for &(offset, count) in &places {
        if count > raw_limit {
            return Err(corrupt("a tile or strip larger than its pixels"));
        }
        ranges.push(if offset == 0 { (0, 0) } else { (offset, count) });
    }
    let datas = src.read_ranges(&ranges).await?;
    let mut chunks = Vec::with_capacity(datas.len());
    let mut datas = datas.into_iter();
    for row in r0..=r1 {
        for col in c0..=c1 {
            let data = datas.next().unwrap_or_default();
            let left = col * cw;
            let top = row * ch;
            // A strip's last one is short; a tile is always whole (padded).
            let height = if dir.tiled() {
                ch
            } else {
                ch.min(dir.height - top)
            };
            chunks.push((left, top, cw, height, data));
        }
    }
    Ok(Job {
        level,
        rect,
        codec: Codec {
            compression: dir.compression,
            photometric: dir.photometric,
            bits: dir.bits,
            samples: dir.samples,
            predictor: dir.predictor,
            little: pyramid.little_endian,
            jpeg_tables: dir.jpeg_tables.clone(),
            channels: dir.channels(),
        },
        chunks,
    })
}

/// (offset, byte count) of each chunk in `indices` (row-major, sorted), from the level's arrays.
async fn locate(
    src: &ObjectBytes,
    pyramid: &Pyramid,
    dir: &Dir,
    indices: &[u64],
) -> Result<Vec<(u64, u64)>, ImageError> {
    let little = pyramid.little_endian;
    let (offsets, counts) = (&dir.offsets, &dir.byte_counts);
    let whole_count = |a: &Array| match a {
        Array::Inline(v) => v.len() as u64,
        Array::At { count, .. } => *count,
    };
    if whole_count(offsets) <= WHOLE_ARRAY_ENTRIES {
        let whole = dir
            .whole
            .get_or_try_init(|| async {
                let all = [(0, whole_count(offsets))];
                let (o, c) = futures_util::future::try_join(
                    read_array(src, offsets, &all, little),
                    read_array(src, counts, &all, little),
                )
                .await?;
                Ok::<_, ImageError>(Arc::new((o, c)))
            })
            .await?;
        return indices
            .iter()
            .map(|&i| {
                let i = i as usize;
                match (whole.0.get(i), whole.1.get(i)) {
                    (Some(&o), Some(&c)) => Ok((o, c)),
                    _ => Err(corrupt("a tile index past its array")),
                }
            })
            .collect();
    }
    // Runs of consecutive indices: one slice of each array per run.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &i in indices {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == i => *len += 1,
            _ => runs.push((i, 1)),
        }
    }
    let (o, c) = futures_util::future::try_join(
        read_array(src, offsets, &runs, little),
        read_array(src, counts, &runs, little),
    )
    .await?;
    Ok(o.into_iter().zip(c).collect())
}

/// The values of `array` in each of `runs` (first index, length), concatenated.
async fn read_array(
    src: &ObjectBytes,
    array: &Array,
    runs: &[(u64, u64)],
    little: bool,
) -> Result<Vec<u64>, ImageError> {
    match array {
        Array::Inline(values) => runs
            .iter()
            .flat_map(|&(start, len)| start..start + len)
            .map(|i| {
                values
                    .get(i as usize)
                    .copied()
                    .ok_or_else(|| corrupt("a tile index past its array"))
            })
            .collect(),
        Array::At {
            offset,
            count,
            elem,
        } => {
            let elem = u64::from(*elem);
            let mut ranges = Vec::with_capacity(runs.len());
            for &(start, len) in runs {
                if start + len > *count {
                    return Err(corrupt("a tile index past its array"));
                }
                ranges.push((offset + start * elem, len * elem));
            }
            let slices = src.read_ranges(&ranges).await?;
            let mut out = Vec::new();
            for slice in slices {
                out.extend(
                    slice
                        .chunks_exact(elem as usize)
                        .map(|b| read_uint(b, little)),
                );
            }
            Ok(out)
        }
    }
}

fn read_uint(b: &[u8], little: bool) -> u64 {
    let mut v = 0u64;
    if little {
        for &byte in b.iter().rev() {
            v = (v << 8) | u64::from(byte);
        }
    } else {
        for &byte in b {
            v = (v << 8) | u64::from(byte);
        }
    }
    v
}

impl Job {
    /// A JPEG tile that is the whole answer as it is: the region is exactly one stored tile,
    /// asked at its own size, upright, in its own colours, as JPEG. Its stream is sent without a
    /// decode and re-encode (as iipsrv does): the shared tables and the tile's own segments
    /// rebuilt into one stream of quantization and Huffman tables, frame and scan, every APPn
    /// and comment segment dropped (nothing of the source's metadata), the header checked by
    /// the JPEG decoder. An RGB-coded tile (libtiff writes them so at high quality) gets the
    /// Adobe marker that says so (transform 0), which decoders need to not convert it as YCbCr.
    fn passthrough(&self, op: &RenderOp) -> Option<Rendered> {
        use super::iiif::Quality;
        let codec = &self.codec;
        let colours = match codec.photometric {
            Photometric::YCbCr | Photometric::Rgb => 3,
            Photometric::BlackIsZero => 1,
            Photometric::WhiteIsZero => return None,
        };
        let quality = match op.quality {
            Quality::Default => true,
            Quality::Color => colours == 3,
            Quality::Gray => colours == 1,
            Quality::Bitonal => false,
        };
        let [(left, top, cw, ch, bytes)] = self.chunks.as_slice() else {
            return None;
        };
        let exact = (*left, *top, *cw, *ch) == (self.rect.x, self.rect.y, self.rect.w, self.rect.h)
            && (op.width, op.height) == (self.rect.w, self.rect.h);
        if codec.compression != Compression::Jpeg
            || op.format != super::OutputFormat::Jpg
            || op.mirror
            || op.rotation != 0
            || !quality
            || !exact
            || codec.channels != colours
        {
            return None;
        }
        let rgb = codec.photometric == Photometric::Rgb;
        let stream = splice_jpeg(codec.jpeg_tables.as_deref(), bytes, rgb)?;
        let mut decoder = jpeg_decoder::Decoder::new(stream.as_slice());
        decoder.read_info().ok()?;
        let info = decoder.info()?;
        let format_ok = match info.pixel_format {
            jpeg_decoder::PixelFormat::L8 => colours == 1,
            jpeg_decoder::PixelFormat::RGB24 => colours == 3,
            _ => false,
        };
        if !format_ok || (u32::from(info.width), u32::from(info.height)) != (*cw, *ch) {
            return None;
        }
        Some(Rendered {
            bytes: Bytes::from(stream),
            format: super::OutputFormat::Jpg,
            width: *cw,
            height: *ch,
        })
    }

    /// Decode every chunk and copy its part of the region into one buffer.
    fn assemble(self) -> Result<Region, ImageError> {
        let Job {
            level,
            rect,
            codec,
            chunks,
        } = self;
        let channels = usize::from(codec.channels);
        let row_len = rect.w as usize * channels;
        let mut data = vec![0u8; row_len * rect.h as usize];
        for (left, top, cw, ch, bytes) in chunks {
            if bytes.is_empty() {
                continue; // a sparse file's absent chunk: left black
            }
            let pixels = codec.decode(&bytes, cw, ch)?;
            // The chunk's part of the region, in level coordinates.
            let x0 = left.max(rect.x);
            let x1 = (left + cw).min(rect.x + rect.w);
            let y0 = top.max(rect.y);
            let y1 = (top + ch).min(rect.y + rect.h);
            if x0 >= x1 || y0 >= y1 {
                continue;
            }
            let n = (x1 - x0) as usize * channels;
            for y in y0..y1 {
                let from = ((y - top) as usize * cw as usize + (x0 - left) as usize) * channels;
                let to = (y - rect.y) as usize * row_len + (x0 - rect.x) as usize * channels;
                data[to..to + n].copy_from_slice(&pixels[from..from + n]);
            }
        }
        Ok(Region {
            level,
            rect,
            channels: codec.channels,
            data,
        })
    }
}

impl Region {
    /// As the pixels `render::finish` takes.
    fn into_pixels(self) -> super::render::Pixels {
        use super::render::{Layout, Pixels};
        let layout = match self.channels {
            1 => Layout::Gray8,
            2 => Layout::GrayA8,
            3 => Layout::Rgb8,
            _ => Layout::Rgba8,
        };
        Pixels {
            width: self.rect.w,
            height: self.rect.h,
            layout,
            data: self.data,
        }
    }
}

impl Codec {
    /// One chunk of `cw` x `ch` pixels as `channels` 8-bit samples per pixel.
    fn decode(&self, bytes: &[u8], cw: u32, ch: u32) -> Result<Vec<u8>, ImageError> {
        let pixels = cw as usize * ch as usize;
        if self.compression == Compression::Jpeg {
            return self.decode_jpeg(bytes, cw, ch);
        }
        let sample_bytes = usize::from(self.bits / 8);
        let row = cw as usize * usize::from(self.samples) * sample_bytes;
        let mut raw = vec![0u8; row * ch as usize];
        match self.compression {
            Compression::None => {
                let n = raw.len().min(bytes.len());
                raw[..n].copy_from_slice(&bytes[..n]);
            }
            Compression::Lzw => inflate_lzw(bytes, &mut raw)?,
            Compression::Deflate => inflate_zlib(bytes, &mut raw)?,
            Compression::Jpeg => {}
        }
        if self.predictor == 2 {
            let stride = usize::from(self.samples);
            for line in raw.chunks_exact_mut(row) {
                if sample_bytes == 1 {
                    for i in stride..line.len() {
                        line[i] = line[i].wrapping_add(line[i - stride]);
                    }
                } else {
                    let get = |l: &[u8], i: usize| {
                        let b = [l[2 * i], l[2 * i + 1]];
                        if self.little {
                            u16::from_le_bytes(b)
                        } else {
                            u16::from_be_bytes(b)
                        }
                    };
                    for i in stride..line.len() / 2 {
                        let v = get(line, i).wrapping_add(get(line, i - stride));
                        let b = if self.little {
                            v.to_le_bytes()
                        } else {
                            v.to_be_bytes()
                        };
                        line[2 * i..2 * i + 2].copy_from_slice(&b);
                    }
                }
            }
        }
        let channels = usize::from(self.channels);
        let samples = usize::from(self.samples);
        // 16-bit samples keep their high byte (first in big-endian files, second in little).
        let high = if sample_bytes == 2 && self.little {
            1
        } else {
            0
        };
        let mut out = Vec::with_capacity(pixels * channels);
        for px in raw.chunks_exact(samples * sample_bytes) {
            for c in 0..channels {
                out.push(px[c * sample_bytes + high]);
            }
        }
        if self.photometric == Photometric::WhiteIsZero {
            for px in out.chunks_exact_mut(channels) {
                px[0] = 255 - px[0];
            }
        }
        Ok(out)
    }

    fn decode_jpeg(&self, bytes: &[u8], cw: u32, ch: u32) -> Result<Vec<u8>, ImageError> {
        use jpeg_decoder::{ColorTransform, Decoder, PixelFormat};
        // The shared tables (SOI .. EOI) and the chunk's stream (SOI ..): one stream, the
        // tables' EOI and the chunk's SOI dropped.
        let stream: Vec<u8> = match &self.jpeg_tables {
            Some(tables) if tables.len() >= 4 && bytes.starts_with(&[0xFF, 0xD8]) => {
                let tables = tables.strip_suffix(&[0xFF, 0xD9]).unwrap_or(tables);
                let mut s = Vec::with_capacity(tables.len() + bytes.len());
                s.extend_from_slice(tables);
                s.extend_from_slice(&bytes[2..]);
                s
            }
            _ => bytes.to_vec(),
        };
        let mut decoder = Decoder::new(stream.as_slice());
        decoder.set_max_decoding_buffer_size(cw as usize * ch as usize * 4 + (1 << 16));
        decoder.set_color_transform(match self.photometric {
            Photometric::YCbCr => ColorTransform::YCbCr,
            Photometric::Rgb => ColorTransform::RGB,
            Photometric::BlackIsZero | Photometric::WhiteIsZero => ColorTransform::Grayscale,
        });
        decoder
            .read_info()
            .map_err(|_| corrupt("a JPEG tile cannot be decoded"))?;
        let info = decoder
            .info()
            .ok_or_else(|| corrupt("a JPEG tile cannot be decoded"))?;
        if u32::from(info.width) > cw || u32::from(info.height) > ch {
            return Err(corrupt("a JPEG tile larger than the tile size"));
        }
        let got = match info.pixel_format {
            PixelFormat::L8 => 1,
            PixelFormat::RGB24 => 3,
            _ => return Err(corrupt("a JPEG tile of an unexpected colour model")),
        };
        if got != self.channels {
            return Err(corrupt("a JPEG tile of an unexpected colour model"));
        }
        let decoded = decoder
            .decode()
            .map_err(|_| corrupt("a JPEG tile cannot be decoded"))?;
        let channels = usize::from(got);
        let (w, h) = (usize::from(info.width), usize::from(info.height));
        if w == cw as usize && h == ch as usize {
            return Ok(decoded);
        }
        // A short JPEG (the last strip, a cropped tile): placed top-left, the rest black.
        let mut out = vec![0u8; cw as usize * ch as usize * channels];
        for y in 0..h {
            let from = y * w * channels;
            let to = y * cw as usize * channels;
            out[to..to + w * channels].copy_from_slice(&decoded[from..from + w * channels]);
        }
        Ok(out)
    }
}

/// One JPEG stream from the shared tables (`SOI`, tables, `EOI`) and a tile (`SOI` .. `EOI`):
/// `SOI`, the tables' and the tile's DQT, DHT, DRI and SOF segments, then the tile's scan to its
/// end. APPn and COM segments are dropped; any other marker, or a malformed stream: `None`.
/// `rgb`: the components are R, G, B (not YCbCr): an Adobe segment with transform 0 follows
/// `SOI`.
fn splice_jpeg(tables: Option<&[u8]>, tile: &[u8], rgb: bool) -> Option<Vec<u8>> {
    if !tile.ends_with(&[0xFF, 0xD9]) {
        return None;
    }
    let mut out = Vec::with_capacity(tile.len() + tables.map_or(0, <[u8]>::len) + 18);
    out.extend_from_slice(&[0xFF, 0xD8]);
    if rgb {
        // APP14 "Adobe", version 100, flags 0 and 0, transform 0 (no colour transform).
        out.extend_from_slice(&[
            0xFF, 0xEE, 0x00, 0x0E, b'A', b'd', b'o', b'b', b'e', 0x00, 0x64, 0x00, 0x00, 0x00,
            0x00, 0x00,
        ]);
    }
    if let Some(tables) = tables {
        copy_segments(tables, &mut out, false)?;
    }
    copy_segments(tile, &mut out, true)?;
    Some(out)
}

/// Copy the table and frame segments of `s` (from its `SOI`) into `out`: up to its `EOI`
/// (tables), or its `SOS` and everything after it (`scan`).
fn copy_segments(s: &[u8], out: &mut Vec<u8>, scan: bool) -> Option<()> {
    if !s.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    loop {
        if *s.get(i)? != 0xFF {
            return None;
        }
        while *s.get(i + 1)? == 0xFF {
            i += 1; // fill bytes
        }
        let marker = *s.get(i + 1)?;
        match marker {
            0xD9 if !scan => return Some(()),
            0xDA if scan => {
                out.extend_from_slice(s.get(i..)?);
                return Some(());
            }
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([*s.get(i + 2)?, *s.get(i + 3)?]));
        if len < 2 {
            return None;
        }
        let segment = s.get(i..i + 2 + len)?;
        match marker {
            // DQT, DHT, DRI, SOF0 (baseline), SOF1 (extended), SOF2 (progressive)
            0xDB | 0xC4 | 0xDD | 0xC0 | 0xC1 | 0xC2 => out.extend_from_slice(segment),
            0xE0..=0xEF | 0xFE => {}
            _ => return None,
        }
        i += 2 + len;
    }
}

/// TIFF LZW (MSB first, the early code-size switch) into `out`, at most its length.
fn inflate_lzw(input: &[u8], out: &mut [u8]) -> Result<(), ImageError> {
    use weezl::{BitOrder, LzwStatus, decode::Decoder};
    let mut decoder = Decoder::with_tiff_size_switch(BitOrder::Msb, 8);
    let (mut read, mut written) = (0, 0);
    while written < out.len() {
        let r = decoder.decode_bytes(&input[read..], &mut out[written..]);
        read += r.consumed_in;
        written += r.consumed_out;
        match r.status {
            Ok(LzwStatus::Done) => break,
            Ok(LzwStatus::NoProgress) => break,
            Ok(LzwStatus::Ok) => {}
            Err(_) => return Err(corrupt("an LZW tile cannot be decoded")),
        }
    }
    Ok(())
}

/// zlib (Deflate) into `out`, at most its length.
fn inflate_zlib(input: &[u8], out: &mut [u8]) -> Result<(), ImageError> {
    use flate2::{Decompress, FlushDecompress, Status};
    let mut z = Decompress::new(true);
    loop {
        let (read, written) = (z.total_in() as usize, z.total_out() as usize);
        if written >= out.len() {
            break;
        }
        let status = z
            .decompress(&input[read..], &mut out[written..], FlushDecompress::Finish)
            .map_err(|_| corrupt("a Deflate tile cannot be decoded"))?;
        let progressed = z.total_in() as usize != read || z.total_out() as usize != written;
        if status == Status::StreamEnd || !progressed {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
