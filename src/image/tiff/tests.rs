//! The TIFF reader against files written here, byte by byte (a small writer below: tiles or
//! strips, TIFF or BigTIFF, either byte order, SubIFDs or a page chain, none/LZW/Deflate/JPEG),
//! served by a real fs backend in a temp dir. Pyramids written by libvips are read in
//! `tests/pyramid.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may; src/ may not

use std::io::Write;
use std::sync::Arc;

use super::*;
use crate::backend::fs::FsBackend;
use crate::backend::{AnyBackend, Backend, Caller, OwnedCaller};
use crate::image::OutputFormat;
use crate::image::iiif::Quality;

// ---------------------------------------------------------------------------------------------
// A small TIFF writer

#[derive(Clone)]
struct Spec {
    width: u32,
    height: u32,
    /// Tile size, or None for strips of `rows` rows.
    tile: Option<(u32, u32)>,
    rows: u32,
    samples: u16,
    bits: u16,
    /// TIFF compression code: 1, 5, 7 (whole JPEGs, no tables), 8.
    compression: u16,
    predictor: u16,
    photometric: u16,
    big: bool,
    little: bool,
    /// Levels below the full size (each half the previous, rounded up).
    reduced: u32,
    subifds: bool,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec {
            width: 1000,
            height: 700,
            tile: Some((256, 256)),
            rows: 16,
            samples: 3,
            bits: 8,
            compression: 8,
            predictor: 1,
            photometric: 2,
            big: false,
            little: true,
            reduced: 2,
            subifds: false,
        }
    }
}

/// The sample `c` of pixel (x, y) of level `k`, 8-bit (16-bit files store it in the high byte
/// and `c` in the low one). Smooth enough for JPEG, varied enough to catch misplaced tiles.
fn sample(k: u32, x: u32, y: u32, c: u16) -> u8 {
    let (x, y) = (x << k, y << k);
    ((x / 3 + y / 5 + u32::from(c) * 70 + k * 40) % 256) as u8
}

fn level_size(spec: &Spec, k: u32) -> (u32, u32) {
    let mut size = (spec.width, spec.height);
    for _ in 0..k {
        size = (size.0.div_ceil(2), size.1.div_ceil(2));
    }
    size
}

struct Out {
    bytes: Vec<u8>,
    little: bool,
}

impl Out {
    fn u16(&mut self, v: u16) {
        let b = if self.little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        };
        self.bytes.extend_from_slice(&b);
    }
    fn u32(&mut self, v: u32) {
        let b = if self.little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        };
        self.bytes.extend_from_slice(&b);
    }
    fn u64(&mut self, v: u64) {
        let b = if self.little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        };
        self.bytes.extend_from_slice(&b);
    }
    fn value(&mut self, typ: u16, v: u64) {
        match typ {
            1 | 7 => self.bytes.push(v as u8),
            3 => self.u16(v as u16),
            4 | 13 => self.u32(v as u32),
            _ => self.u64(v),
        }
    }
    fn pos(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// One tag: number, type, values.
type Tag = (u16, u16, Vec<u64>);

/// Write one directory at the end of `out`, its out-of-line values after it; returns its offset
/// and the offset of its next-IFD field.
fn write_ifd(out: &mut Out, big: bool, mut tags: Vec<Tag>, next: u64) -> (u64, u64) {
    if out.bytes.len() % 2 == 1 {
        out.bytes.push(0);
    }
    tags.sort_by_key(|t| t.0);
    let start = out.pos();
    let (count_len, entry_len, room) = if big { (8, 20, 8) } else { (2, 12, 4) };
    let ifd_len = count_len + tags.len() as u64 * entry_len + if big { 8 } else { 4 };
    let mut extra = Out {
        bytes: Vec::new(),
        little: out.little,
    };
    if big {
        out.u64(tags.len() as u64);
    } else {
        out.u16(tags.len() as u16);
    }
    for (tag, typ, values) in &tags {
        out.u16(*tag);
        out.u16(*typ);
        if big {
            out.u64(values.len() as u64);
        } else {
            out.u32(values.len() as u32);
        }
        let size = type_size(*typ).unwrap();
        let len = size * values.len() as u64;
        if len <= room {
            let mark = out.pos();
            for &v in values {
                out.value(*typ, v);
            }
            while out.pos() < mark + room {
                out.bytes.push(0);
            }
        } else {
            if extra.bytes.len() % 2 == 1 {
                extra.bytes.push(0);
            }
            let at = start + ifd_len + extra.pos();
            if big {
                out.u64(at);
            } else {
                out.u32(at as u32);
            }
            for &v in values {
                extra.value(*typ, v);
            }
        }
    }
    let next_field = out.pos();
    if big {
        out.u64(next);
    } else {
        out.u32(next as u32);
    }
    out.bytes.extend_from_slice(&extra.bytes);
    (start, next_field)
}

fn patch_offset(out: &mut Out, at: u64, value: u64, big: bool) {
    let b: Vec<u8> = match (big, out.little) {
        (true, true) => value.to_le_bytes().to_vec(),
        (true, false) => value.to_be_bytes().to_vec(),
        (false, true) => (value as u32).to_le_bytes().to_vec(),
        (false, false) => (value as u32).to_be_bytes().to_vec(),
    };
    out.bytes[at as usize..at as usize + b.len()].copy_from_slice(&b);
}

fn compress(spec: &Spec, raw: &[u8], cw: u32, ch: u32) -> Vec<u8> {
    match spec.compression {
        1 => raw.to_vec(),
        5 => weezl::encode::Encoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8)
            .encode(raw)
            .unwrap(),
        8 => {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(raw).unwrap();
            z.finish().unwrap()
        }
        7 => {
            let mut jpeg = Vec::new();
            let color = if spec.samples == 1 {
                jpeg_encoder::ColorType::Luma
            } else {
                jpeg_encoder::ColorType::Rgb
            };
            jpeg_encoder::Encoder::new(&mut jpeg, 95)
                .encode(raw, cw as u16, ch as u16, color)
                .unwrap();
            jpeg
        }
        _ => unreachable!(),
    }
}

/// The raw chunk (samples interleaved, padded with zeros past the image) at (left, top).
fn raw_chunk(
    spec: &Spec,
    k: u32,
    size: (u32, u32),
    left: u32,
    top: u32,
    cw: u32,
    ch: u32,
) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in top..top + ch {
        let mut row = Vec::new();
        for x in left..left + cw {
            for c in 0..spec.samples {
                let inside = x < size.0 && y < size.1;
                let v = if inside { sample(k, x, y, c) } else { 0 };
                if spec.bits == 16 {
                    let v16 = u16::from(v) << 8 | (c + 1);
                    let b = if spec.little {
                        v16.to_le_bytes()
                    } else {
                        v16.to_be_bytes()
                    };
                    row.extend_from_slice(&b);
                } else {
                    row.push(v);
                }
            }
        }
        if spec.predictor == 2 {
            let stride = usize::from(spec.samples);
            if spec.bits == 8 {
                for i in (stride..row.len()).rev() {
                    row[i] = row[i].wrapping_sub(row[i - stride]);
                }
            } else {
                let get = |r: &[u8], i: usize| {
                    let b = [r[2 * i], r[2 * i + 1]];
                    if spec.little {
                        u16::from_le_bytes(b)
                    } else {
                        u16::from_be_bytes(b)
                    }
                };
                for i in (stride..row.len() / 2).rev() {
                    let v = get(&row, i).wrapping_sub(get(&row, i - stride));
                    let b = if spec.little {
                        v.to_le_bytes()
                    } else {
                        v.to_be_bytes()
                    };
                    row[2 * i..2 * i + 2].copy_from_slice(&b);
                }
            }
        }
        raw.extend_from_slice(&row);
    }
    raw
}

/// The tags of level `k` and its data appended to `out`.
fn write_level(out: &mut Out, spec: &Spec, k: u32) -> Vec<Tag> {
    let size = level_size(spec, k);
    let (cw, ch) = spec.tile.unwrap_or((size.0, spec.rows));
    let across = size.0.div_ceil(cw);
    let down = size.1.div_ceil(ch);
    let (mut offsets, mut counts) = (Vec::new(), Vec::new());
    for row in 0..down {
        for col in 0..across {
            let rows = if spec.tile.is_some() {
                ch
            } else {
                ch.min(size.1 - row * ch)
            };
            let raw = raw_chunk(spec, k, size, col * cw, row * ch, cw, rows);
            let data = compress(spec, &raw, cw, rows);
            offsets.push(out.pos());
            counts.push(data.len() as u64);
            out.bytes.extend_from_slice(&data);
        }
    }
    let array_type = if spec.big { 16 } else { 4 };
    let mut tags: Vec<Tag> = vec![
        (TAG_WIDTH, 4, vec![u64::from(size.0)]),
        (TAG_HEIGHT, 4, vec![u64::from(size.1)]),
        (
            TAG_BITS_PER_SAMPLE,
            3,
            vec![u64::from(spec.bits); usize::from(spec.samples)],
        ),
        (TAG_COMPRESSION, 3, vec![u64::from(spec.compression)]),
        (TAG_PHOTOMETRIC, 3, vec![u64::from(spec.photometric)]),
        (TAG_SAMPLES_PER_PIXEL, 3, vec![u64::from(spec.samples)]),
        (TAG_PLANAR, 3, vec![1]),
    ];
    if k > 0 {
        tags.push((TAG_NEW_SUBFILE_TYPE, 4, vec![1]));
    }
    if spec.predictor != 1 {
        tags.push((TAG_PREDICTOR, 3, vec![u64::from(spec.predictor)]));
    }
    if spec.samples == 4 || spec.samples == 2 {
        tags.push((338, 3, vec![2]));
    }
    match spec.tile {
        Some((tw, th)) => tags.extend([
            (TAG_TILE_WIDTH, 4, vec![u64::from(tw)]),
            (TAG_TILE_LENGTH, 4, vec![u64::from(th)]),
            (TAG_TILE_OFFSETS, array_type, offsets),
            (TAG_TILE_BYTE_COUNTS, array_type, counts),
        ]),
        None => tags.extend([
            (TAG_ROWS_PER_STRIP, 4, vec![u64::from(spec.rows)]),
            (TAG_STRIP_OFFSETS, array_type, offsets),
            (TAG_STRIP_BYTE_COUNTS, array_type, counts),
        ]),
    }
    tags
}

/// Write a whole file: data of every level, then the directories.
fn write_tiff(spec: &Spec) -> Vec<u8> {
    write_tiff_with(spec, |_, tags| tags)
}

/// As [`write_tiff`], with each level's tags passed through `edit` (level, tags) first.
fn write_tiff_with(spec: &Spec, edit: impl Fn(u32, Vec<Tag>) -> Vec<Tag>) -> Vec<u8> {
    let mut out = Out {
        bytes: Vec::new(),
        little: spec.little,
    };
    out.bytes
        .extend_from_slice(if spec.little { b"II" } else { b"MM" });
    if spec.big {
        out.u16(43);
        out.u16(8);
        out.u16(0);
        out.u64(0);
    } else {
        out.u16(42);
        out.u32(0);
    }
    let levels: Vec<Vec<Tag>> = (0..=spec.reduced)
        .map(|k| {
            let tags = write_level(&mut out, spec, k);
            edit(k, tags)
        })
        .collect();
    let mut levels = levels.into_iter();
    let first_tags = levels.next().unwrap();
    let first = if spec.subifds {
        let mut subs = Vec::new();
        for tags in levels {
            subs.push(write_ifd(&mut out, spec.big, tags, 0).0);
        }
        let mut tags = first_tags;
        if !subs.is_empty() {
            tags.push((TAG_SUBIFDS, if spec.big { 18 } else { 13 }, subs));
        }
        write_ifd(&mut out, spec.big, tags, 0).0
    } else {
        // The chain written last to first, so each knows its next.
        let mut next = 0;
        let rest: Vec<Vec<Tag>> = levels.collect();
        for tags in rest.into_iter().rev() {
            next = write_ifd(&mut out, spec.big, tags, next).0;
        }
        write_ifd(&mut out, spec.big, first_tags, next).0
    };
    let at = if spec.big { 8 } else { 4 };
    patch_offset(&mut out, at, first, spec.big);
    out.bytes
}

// ---------------------------------------------------------------------------------------------
// The rig: an fs source in a temp dir

struct Rig {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    backend: Arc<AnyBackend>,
    pool: Pool,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let backend = Arc::new(AnyBackend::Fs(FsBackend::new(&root).unwrap()));
    Rig {
        _dir: dir,
        root,
        backend,
        pool: Pool::new(2, 8),
    }
}

impl Rig {
    async fn object(&self, bytes: &[u8], budget: u64) -> ObjectBytes {
        std::fs::write(self.root.join("image.tif"), bytes).unwrap();
        let meta = self
            .backend
            .head("image.tif", Caller::Gateway)
            .await
            .unwrap();
        ObjectBytes::new(
            Arc::clone(&self.backend),
            "image.tif".into(),
            Arc::new(meta),
            OwnedCaller::Gateway,
            None,
            budget,
        )
    }
}

fn op(region: Rect, width: u32, height: u32) -> RenderOp {
    RenderOp {
        region,
        width,
        height,
        mirror: false,
        rotation: 0,
        quality: Quality::Default,
        format: OutputFormat::Png,
    }
}

/// The expected 8-bit pixels of `rect` of level `k` (channels as the reader gives them).
fn expected(k: u32, rect: Rect, channels: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for y in rect.y..rect.y + rect.h {
        for x in rect.x..rect.x + rect.w {
            for c in 0..u16::from(channels) {
                out.push(sample(k, x, y, c));
            }
        }
    }
    out
}

const MB: u64 = 1 << 20;

async fn check_levels(spec: &Spec) {
    let rig = rig();
    let file = write_tiff(spec);
    let src = rig.object(&file, 64 * MB).await;
    let limits = ImageLimits::default();
    let (image, pyramid) = probe(&src, &limits).await.unwrap();
    assert_eq!((image.width, image.height), (spec.width, spec.height));
    assert_eq!(image.levels.len() as u32, spec.reduced + 1, "levels");
    for k in 0..=spec.reduced {
        let size = level_size(spec, k);
        assert_eq!(
            (
                image.levels[k as usize].width,
                image.levels[k as usize].height
            ),
            size
        );
        // A region in the middle, asked at exactly level k's scale.
        let region = Rect {
            x: spec.width / 5,
            y: spec.height / 3,
            w: spec.width / 2,
            h: spec.height / 2,
        };
        let want = op(region, region.w >> k, region.h >> k);
        let got = read_region(&src, &pyramid, &want, &limits, &rig.pool)
            .await
            .unwrap();
        assert_eq!(got.level, k as usize, "level chosen for scale 1/{}", 1 << k);
        let channels = if spec.samples >= 3 {
            spec.samples.min(4)
        } else {
            spec.samples
        } as u8;
        assert_eq!(got.channels, channels);
        let reference = expected(k, got.rect, channels);
        assert_eq!(got.data.len(), reference.len());
        if spec.compression == 7 {
            let worst = got
                .data
                .iter()
                .zip(&reference)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(worst <= 24, "JPEG level {k}: a sample off by {worst}");
        } else {
            assert!(got.data == reference, "level {k}: pixels differ");
        }
    }
}

#[tokio::test]
async fn tiff_tiled_deflate_page_chain_reads_every_level_exactly() {
    check_levels(&Spec::default()).await;
}

#[tokio::test]
async fn tiff_bigtiff_subifds_lzw_predictor_big_endian_16bit_gray() {
    check_levels(&Spec {
        big: true,
        subifds: true,
        little: false,
        compression: 5,
        predictor: 2,
        bits: 16,
        samples: 1,
        photometric: 1,
        ..Spec::default()
    })
    .await;
}

#[tokio::test]
async fn tiff_bigtiff_little_endian_16bit_rgba_predictor_deflate() {
    check_levels(&Spec {
        big: true,
        compression: 8,
        predictor: 2,
        bits: 16,
        samples: 4,
        ..Spec::default()
    })
    .await;
}

#[tokio::test]
async fn tiff_strips_uncompressed_with_a_short_last_strip() {
    check_levels(&Spec {
        tile: None,
        rows: 7,
        compression: 1,
        reduced: 0,
        width: 301,
        height: 200,
        ..Spec::default()
    })
    .await;
}

#[tokio::test]
async fn tiff_jpeg_tiles_ycbcr() {
    check_levels(&Spec {
        compression: 7,
        photometric: 6,
        ..Spec::default()
    })
    .await;
}

#[tokio::test]
async fn tiff_jpeg_gray_strips() {
    check_levels(&Spec {
        compression: 7,
        photometric: 1,
        samples: 1,
        tile: None,
        rows: 64,
        reduced: 1,
        ..Spec::default()
    })
    .await;
}

/// A tile's worth of output reads the directories and a few tiles, in a few requests, not the
/// file.
#[tokio::test]
async fn tiff_one_tile_reads_a_small_part_of_the_file_in_few_requests() {
    let spec = Spec {
        width: 4000,
        height: 3000,
        compression: 1,
        reduced: 3,
        ..Spec::default()
    };
    let rig = rig();
    let file = write_tiff(&spec);
    let src = rig.object(&file, 256 * MB).await;
    let limits = ImageLimits::default();
    let (_, pyramid) = probe(&src, &limits).await.unwrap();
    let probe_reads = src.reads();
    assert!(probe_reads <= 5, "{probe_reads} reads to probe 4 levels");
    let region = Rect {
        x: 1024,
        y: 1024,
        w: 1024,
        h: 1024,
    };
    let got = read_region(&src, &pyramid, &op(region, 256, 256), &limits, &rig.pool)
        .await
        .unwrap();
    assert_eq!(got.level, 2);
    assert!(got.data == expected(2, got.rect, 3));
    let size = file.len() as u64;
    assert!(
        src.bytes_read() * 20 < size,
        "read {} of {size} bytes",
        src.bytes_read()
    );
    // 256 x 256 at level 2 of 256-pixel tiles: one tile, plus the arrays.
    assert!(
        src.reads() - probe_reads <= 3,
        "{} reads",
        src.reads() - probe_reads
    );

    // 20 tiles of level 0 (5 x 4, rows of adjacent tiles): merged, not 20 requests.
    let before = src.reads();
    let region = Rect {
        x: 0,
        y: 0,
        w: 5 * 256,
        h: 4 * 256,
    };
    let got = read_region(
        &src,
        &pyramid,
        &op(region, region.w, region.h),
        &limits,
        &rig.pool,
    )
    .await
    .unwrap();
    assert!(got.data == expected(0, region, 3));
    assert!(
        src.reads() - before <= 8,
        "{} reads for 20 tiles",
        src.reads() - before
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile files

async fn probe_bytes(bytes: &[u8]) -> Result<(SourceImage, Arc<Pyramid>), ImageError> {
    let rig = rig();
    let src = rig.object(bytes, 64 * MB).await;
    probe(&src, &ImageLimits::default()).await
}

fn set_tag(tags: &mut Vec<Tag>, tag: Tag) {
    tags.retain(|t| t.0 != tag.0);
    tags.push(tag);
}

/// The offset of the next-IFD field of the directory at `ifd` (classic little-endian).
fn next_field(file: &[u8], ifd: usize) -> usize {
    let n = u16::from_le_bytes(file[ifd..ifd + 2].try_into().unwrap());
    ifd + 2 + usize::from(n) * 12
}

fn first_ifd(file: &[u8]) -> usize {
    u32::from_le_bytes(file[4..8].try_into().unwrap()) as usize
}

#[tokio::test]
async fn tiff_directory_loop_is_corrupt() {
    // The chain's second directory names the first as its next.
    let mut file = write_tiff(&Spec {
        reduced: 1,
        ..Spec::default()
    });
    let first = first_ifd(&file);
    let at = next_field(&file, first);
    let second = u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) as usize;
    let at = next_field(&file, second);
    file[at..at + 4].copy_from_slice(&(first as u32).to_le_bytes());
    let err = probe_bytes(&file).await.unwrap_err();
    assert!(matches!(err, ImageError::Corrupt(_)), "{err:?}");

    // A directory naming itself as its next.
    let mut file = write_tiff(&Spec {
        reduced: 0,
        ..Spec::default()
    });
    let first = first_ifd(&file);
    let at = next_field(&file, first);
    file[at..at + 4].copy_from_slice(&(first as u32).to_le_bytes());
    let err = probe_bytes(&file).await.unwrap_err();
    assert!(matches!(err, ImageError::Corrupt(_)), "{err:?}");
}

#[tokio::test]
async fn tiff_tile_count_mismatch_is_corrupt() {
    let file = write_tiff_with(&Spec::default(), |k, mut tags| {
        if k == 0 {
            set_tag(&mut tags, (TAG_TILE_WIDTH, 4, vec![128]));
        }
        tags
    });
    let err = probe_bytes(&file).await.unwrap_err();
    assert!(matches!(err, ImageError::Corrupt(_)), "{err:?}");
}

#[tokio::test]
async fn tiff_tile_offsets_past_the_end_are_corrupt_before_reading() {
    let spec = Spec {
        reduced: 0,
        ..Spec::default()
    };
    let file = write_tiff_with(&spec, |_, mut tags| {
        let tiles = 4 * 3;
        set_tag(
            &mut tags,
            (TAG_TILE_OFFSETS, 4, vec![u64::from(u32::MAX - 10); tiles]),
        );
        tags
    });
    let rig = rig();
    let src = rig.object(&file, 64 * MB).await;
    let limits = ImageLimits::default();
    let (_, pyramid) = probe(&src, &limits).await.unwrap();
    let region = Rect {
        x: 0,
        y: 0,
        w: 1000,
        h: 700,
    };
    let err = read_region(&src, &pyramid, &op(region, 1000, 700), &limits, &rig.pool)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Corrupt(_)), "{err:?}");

    // Byte counts far beyond a tile's pixels.
    let file = write_tiff_with(&spec, |_, mut tags| {
        set_tag(&mut tags, (TAG_TILE_BYTE_COUNTS, 4, vec![1 << 30; 12]));
        tags
    });
    let src = rig.object(&file, 64 * MB).await;
    let (_, pyramid) = probe(&src, &limits).await.unwrap();
    let err = read_region(&src, &pyramid, &op(region, 1000, 700), &limits, &rig.pool)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Corrupt(_)), "{err:?}");
}

#[tokio::test]
async fn tiff_huge_declared_sizes_are_refused_from_the_header() {
    // Strips of a 200,000 x 200,000 image: over the untiled limit.
    let file = write_tiff_with(
        &Spec {
            tile: None,
            reduced: 0,
            width: 64,
            height: 64,
            ..Spec::default()
        },
        |_, mut tags| {
            set_tag(&mut tags, (TAG_WIDTH, 4, vec![200_000]));
            set_tag(&mut tags, (TAG_HEIGHT, 4, vec![200_000]));
            tags
        },
    );
    let err = probe_bytes(&file).await.unwrap_err();
    assert!(matches!(err, ImageError::TooLarge(_)), "{err:?}");

    // A tile of 60,000 x 60,000.
    let file = write_tiff_with(&Spec::default(), |k, mut tags| {
        if k == 0 {
            set_tag(&mut tags, (TAG_TILE_WIDTH, 4, vec![60_000]));
            set_tag(&mut tags, (TAG_TILE_LENGTH, 4, vec![60_000]));
        }
        tags
    });
    let err = probe_bytes(&file).await.unwrap_err();
    assert!(matches!(err, ImageError::TooLarge(_)), "{err:?}");
}

#[tokio::test]
async fn tiff_truncated_and_foreign_files_fail_cleanly() {
    let file = write_tiff(&Spec::default());
    // Cut before the directories (they are at the end).
    let err = probe_bytes(&file[..file.len() / 2]).await.unwrap_err();
    assert!(matches!(err, ImageError::Corrupt(_)), "{err:?}");
    let err = probe_bytes(b"II*\0").await.unwrap_err();
    assert!(matches!(err, ImageError::Unsupported), "{err:?}");
    let err = probe_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unsupported), "{err:?}");
    // A directory claiming 60,000 entries.
    let mut file = file.clone();
    let first = u32::from_le_bytes(file[4..8].try_into().unwrap()) as usize;
    file[first..first + 2].copy_from_slice(&60_000u16.to_le_bytes());
    let err = probe_bytes(&file).await.unwrap_err();
    assert!(matches!(err, ImageError::Corrupt(_)), "{err:?}");
}

#[tokio::test]
async fn tiff_thousands_of_pages_stop_the_walk_early() {
    // 3,000 tiny directories in a chain, each a full-size copy (not a level): the walk stops at
    // the first, and reads a few windows, not 3,000 directories.
    let spec = Spec {
        reduced: 0,
        ..Spec::default()
    };
    let mut out = Out {
        bytes: write_tiff(&spec),
        little: true,
    };
    let first = u32::from_le_bytes(out.bytes[4..8].try_into().unwrap());
    let n = u16::from_le_bytes(
        out.bytes[first as usize..first as usize + 2]
            .try_into()
            .unwrap(),
    );
    let first_next = u64::from(first) + 2 + u64::from(n) * 12;
    let tags: Vec<Tag> = vec![(TAG_WIDTH, 4, vec![5]), (TAG_HEIGHT, 4, vec![5])];
    let mut next = 0;
    for _ in 0..3000 {
        next = write_ifd(&mut out, false, tags.clone(), next).0;
    }
    patch_offset(&mut out, first_next, next, false);
    let rig = rig();
    let src = rig.object(&out.bytes, 64 * MB).await;
    let (image, _) = probe(&src, &ImageLimits::default()).await.unwrap();
    assert_eq!(image.levels.len(), 1);
    assert!(src.reads() <= 4, "{} reads", src.reads());
}

#[tokio::test]
async fn tiff_reads_stay_within_the_byte_budget() {
    let spec = Spec {
        width: 2000,
        height: 2000,
        compression: 1,
        reduced: 0,
        ..Spec::default()
    };
    let rig = rig();
    let file = write_tiff(&spec);
    let src = rig.object(&file, 2 * MB).await;
    let limits = ImageLimits::default();
    let (_, pyramid) = probe(&src, &limits).await.unwrap();
    let all = Rect {
        x: 0,
        y: 0,
        w: 2000,
        h: 2000,
    };
    let err = read_region(&src, &pyramid, &op(all, 2000, 2000), &limits, &rig.pool)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::TooLarge(_)), "{err:?}");
    assert!(src.bytes_read() <= 2 * MB);
}

/// Random byte flips of a valid pyramid: every outcome is Ok or a clean error, never a panic
/// (a panic inside the pool would come back as Corrupt too, so the decode runs here directly).
#[tokio::test]
async fn tiff_byte_flips_never_panic() {
    let spec = Spec {
        width: 300,
        height: 200,
        tile: Some((64, 64)),
        reduced: 2,
        ..Spec::default()
    };
    let rig = rig();
    let limits = ImageLimits::default();
    for (i, compression) in [1u16, 5, 8, 7].into_iter().enumerate() {
        let photometric = if compression == 7 { 6 } else { 2 };
        let clean = write_tiff(&Spec {
            compression,
            photometric,
            ..spec.clone()
        });
        let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ i as u64;
        for _ in 0..60 {
            let mut file = clean.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed % file.len() as u64) as usize;
                file[at] ^= (seed >> 32) as u8 | 1;
            }
            let src = rig.object(&file, 64 * MB).await;
            let Ok((image, pyramid)) = probe(&src, &limits).await else {
                continue;
            };
            let region = Rect {
                x: 0,
                y: 0,
                w: image.width,
                h: image.height,
            };
            for (w, h) in [(image.width, image.height), (40, 30)] {
                let Ok(job) = fetch(&src, &pyramid, &op(region, w, h), &limits).await else {
                    continue;
                };
                let _ = job.assemble();
            }
        }
    }
}

#[test]
fn tiff_level_choice_is_the_smallest_level_with_enough_pixels() {
    let dir = |w: u32, h: u32| Dir {
        width: w,
        height: h,
        chunking: Chunking::Tiles {
            width: 256,
            height: 256,
        },
        across: 1,
        down: 1,
        offsets: Array::Inline(vec![0]),
        byte_counts: Array::Inline(vec![0]),
        compression: Compression::None,
        photometric: Photometric::Rgb,
        bits: 8,
        samples: 3,
        predictor: 1,
        jpeg_tables: None,
        whole: OnceCell::new(),
    };
    let pyramid = Pyramid {
        bigtiff: false,
        little_endian: true,
        levels: vec![
            dir(8000, 6000),
            dir(4000, 3000),
            dir(2000, 1500),
            dir(1000, 750),
        ],
    };
    let full = Rect {
        x: 0,
        y: 0,
        w: 8000,
        h: 6000,
    };
    assert_eq!(choose_level(&pyramid, &op(full, 8000, 6000)), 0);
    assert_eq!(choose_level(&pyramid, &op(full, 4001, 3000)), 0);
    assert_eq!(choose_level(&pyramid, &op(full, 4000, 3000)), 1);
    assert_eq!(choose_level(&pyramid, &op(full, 1500, 1125)), 2);
    assert_eq!(choose_level(&pyramid, &op(full, 100, 75)), 3);
    let tile = Rect {
        x: 4096,
        y: 2048,
        w: 2048,
        h: 2048,
    };
    assert_eq!(choose_level(&pyramid, &op(tile, 512, 512)), 2);
    assert_eq!(
        scale_rect(tile, (8000, 6000), (2000, 1500)),
        Rect {
            x: 1024,
            y: 512,
            w: 512,
            h: 512
        }
    );
    // Rounded outwards and never empty.
    assert_eq!(
        scale_rect(
            Rect {
                x: 1,
                y: 1,
                w: 1,
                h: 1
            },
            (8000, 6000),
            (1000, 750)
        ),
        Rect {
            x: 0,
            y: 0,
            w: 1,
            h: 1
        }
    );
}

/// A level with more tiles than [`WHOLE_ARRAY_ENTRIES`]: its arrays are read in the slices a
/// region needs, not whole.
#[tokio::test]
async fn tiff_large_offset_arrays_are_read_in_slices() {
    let spec = Spec {
        width: 2400,
        height: 1800,
        tile: Some((16, 16)),
        compression: 1,
        reduced: 0,
        ..Spec::default()
    };
    let rig = rig();
    let file = write_tiff(&spec);
    let src = rig.object(&file, 64 * MB).await;
    let limits = ImageLimits::default();
    let (_, pyramid) = probe(&src, &limits).await.unwrap();
    assert!(pyramid.levels[0].across * pyramid.levels[0].down > WHOLE_ARRAY_ENTRIES);
    let before = src.bytes_read();
    let region = Rect {
        x: 1000,
        y: 1000,
        w: 40,
        h: 40,
    };
    let got = read_region(&src, &pyramid, &op(region, 40, 40), &limits, &rig.pool)
        .await
        .unwrap();
    assert!(got.data == expected(0, region, 3));
    // 3 x 3 tiles of 768 bytes, and 3 rows of 3 entries of each array.
    let read = src.bytes_read() - before;
    assert!(read < 16 << 10, "read {read} bytes");
}

/// A transparency mask between the levels (as a COG writes them) is skipped, and the level
/// after it is still found.
#[tokio::test]
async fn tiff_masks_in_the_chain_are_skipped() {
    let spec = Spec {
        reduced: 2,
        ..Spec::default()
    };
    let file = write_tiff_with(&spec, |k, mut tags| {
        if k == 1 {
            set_tag(&mut tags, (TAG_NEW_SUBFILE_TYPE, 4, vec![1 | 4]));
        }
        tags
    });
    let rig = rig();
    let src = rig.object(&file, 64 * MB).await;
    let limits = ImageLimits::default();
    let (image, pyramid) = probe(&src, &limits).await.unwrap();
    let widths: Vec<u32> = image.levels.iter().map(|l| l.width).collect();
    assert_eq!(widths, vec![1000, 250]);
    let region = Rect {
        x: 0,
        y: 0,
        w: 1000,
        h: 700,
    };
    let got = read_region(&src, &pyramid, &op(region, 250, 175), &limits, &rig.pool)
        .await
        .unwrap();
    assert_eq!(got.level, 1);
    assert!(
        got.data == expected(2, got.rect, 3),
        "the 1/4 level's pixels"
    );
}

/// A request that is exactly one stored JPEG tile at its size is that tile's stream, rebuilt
/// without its APP segments: decoded, the same pixels as the decode-and-encode path reads.
#[tokio::test]
async fn tiff_an_aligned_jpeg_tile_is_sent_without_reencoding() {
    let spec = Spec {
        compression: 7,
        photometric: 6,
        reduced: 1,
        ..Spec::default()
    };
    let rig = rig();
    let file = write_tiff(&spec);
    let src = rig.object(&file, 64 * MB).await;
    let limits = ImageLimits::default();
    let (_, pyramid) = probe(&src, &limits).await.unwrap();
    let tile = Rect {
        x: 256,
        y: 256,
        w: 256,
        h: 256,
    };
    let mut want = op(tile, 256, 256);
    want.format = OutputFormat::Jpg;
    let got = render(&src, &pyramid, &want, &limits, &rig.pool)
        .await
        .unwrap();
    assert_eq!((got.width, got.height), (256, 256));
    // The tile's own entropy-coded data, and no JFIF (APP0) segment.
    assert!(!got.bytes.windows(4).any(|w| w == b"JFIF"), "APP0 dropped");
    let mut decoder = jpeg_decoder::Decoder::new(&got.bytes[..]);
    let pixels = decoder.decode().unwrap();
    let region = read_region(&src, &pyramid, &want, &limits, &rig.pool)
        .await
        .unwrap();
    assert!(pixels == region.data, "the same pixels as the decode path");
    // The stored tile's scan is the answer's tail, byte for byte (no re-encode).
    let dir = &pyramid.levels[0];
    let places = locate(&src, &pyramid, dir, &[dir.across + 1])
        .await
        .unwrap();
    let (offset, count) = places[0];
    let stored = &file[offset as usize..(offset + count) as usize];
    let sos = stored.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    assert!(
        got.bytes.ends_with(&stored[sos..]),
        "the stored scan, unchanged"
    );

    // Mirrored, rotated, resized or PNG: decoded and encoded.
    for changed in [
        RenderOp {
            mirror: true,
            ..want.clone()
        },
        RenderOp {
            rotation: 90,
            ..want.clone()
        },
        RenderOp {
            width: 200,
            height: 200,
            ..want.clone()
        },
    ] {
        let other = render(&src, &pyramid, &changed, &limits, &rig.pool)
            .await
            .unwrap();
        assert!(other.bytes != got.bytes);
    }
    // Not a whole tile (an edge tile's padding would show): decoded.
    let edge = Rect {
        x: 768,
        y: 512,
        w: 232,
        h: 188,
    };
    let mut want = op(edge, 232, 188);
    want.format = OutputFormat::Jpg;
    let got = render(&src, &pyramid, &want, &limits, &rig.pool)
        .await
        .unwrap();
    assert_eq!((got.width, got.height), (232, 188));
}

#[test]
fn tiff_jpeg_splice_keeps_tables_and_scan_and_drops_metadata() {
    let tables = [
        0xFF, 0xD8, 0xFF, 0xDB, 0x00, 0x04, 0xAA, 0xBB, 0xFF, 0xC4, 0x00, 0x03, 0xCC, 0xFF, 0xD9,
    ];
    let tile = [
        0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x04, b'E', b'x', 0xFF, 0xFE, 0x00, 0x03, b'c', 0xFF, 0xC0,
        0x00, 0x03, 0x08, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0x34, 0xFF, 0xD9,
    ];
    let out = splice_jpeg(Some(&tables), &tile, false).unwrap();
    assert_eq!(
        out,
        vec![
            0xFF, 0xD8, 0xFF, 0xDB, 0x00, 0x04, 0xAA, 0xBB, 0xFF, 0xC4, 0x00, 0x03, 0xCC, 0xFF,
            0xC0, 0x00, 0x03, 0x08, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0x34, 0xFF, 0xD9
        ]
    );
    // An unknown marker before the scan, a cut segment, a missing EOI: no splice.
    let mut odd = tile;
    odd[3] = 0xC8;
    assert!(splice_jpeg(Some(&tables), &odd, false).is_none());
    assert!(splice_jpeg(Some(&tables), &tile[..12], false).is_none());
    assert!(splice_jpeg(None, &tile[..tile.len() - 1], false).is_none());
}
