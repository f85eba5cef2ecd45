//! Derived images (stage 8 of DESIGN.md for images): IIIF Image API 3.0 requests, thumbnails and
//! tiles, from JPEG, PNG, WebP, GIF (first frame) and TIFF (strips, tiles, BigTIFF, pyramids).
//!
//! This module sits below the pipeline (it imports `backend`, `cache` and `config`, never
//! `pipeline`): the pipeline parses and authorizes a request, then asks this module to describe
//! (`info.json`) or render one image. The parts:
//!
//! | file | what |
//! |---|---|
//! | `iiif.rs` | the IIIF path parameters: parse, normalize, resolve against the image's size and the limits ([`ImageRequest`], [`RenderOp`]); `info.json` |
//! | `source.rs` | [`source::ObjectBytes`]: ranged reads of the one object (through the cache when there is one), bounded |
//! | `decode.rs` | format sniffing (magic bytes, never the name), header probes with the limits checked before any decode, decoding (JPEG at 1/2, 1/4, 1/8 in the DCT domain) |
//! | `tiff.rs` | TIFF / BigTIFF: directories, pyramid levels (SubIFDs or one page per level), strips and tiles read with ranged reads, never the whole file |
//! | `render.rs` | crop, resample (fast_image_resize, Lanczos3), EXIF orientation, rotation and mirroring, quality, encode (jpg, png, webp); nothing of the source's metadata is copied |
//! | `pool.rs` | the bounded decode pool: CPU work off the async threads, a queue bound (503 + Retry-After past it), a time limit per job, a codec panic contained (422) |
//!
//! Flow of one render: [`probe`] reads the header (a few KiB; for TIFF its directories) and
//! returns a [`SourceImage`] (format, size, levels); the pipeline resolves the IIIF request
//! against it ([`iiif`]), then [`render`] reads what the operation needs (the whole object for
//! untiled formats, bounded by `max_source_bytes`; only the needed tiles of a pyramid) and runs
//! the CPU part on the pool.

pub mod decode;
pub mod iiif;
pub mod pool;
pub mod render;
pub mod source;
pub mod tiff;

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use lru::LruCache;
use tokio::sync::OnceCell;

pub use iiif::{ImageRequest, RenderOp};

/// The source formats decoded; anything else is 415.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceFormat {
    Jpeg,
    Png,
    Webp,
    Gif,
    Tiff,
}

/// The output formats (`.jpg`, `.png`, `.webp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    Jpg,
    Png,
    Webp,
}

impl OutputFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Jpg => "image/jpeg",
            OutputFormat::Png => "image/png",
            OutputFormat::Webp => "image/webp",
        }
    }
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jpg => "jpg",
            OutputFormat::Png => "png",
            OutputFormat::Webp => "webp",
        }
    }
}

/// One resolution level of a source: level 0 is full size; a pyramid has smaller ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    pub width: u32,
    pub height: u32,
    /// Tile width and height when the level is stored in tiles.
    pub tile: Option<(u32, u32)>,
}

/// What [`probe`] learned from the header, before any pixel is decoded. `width` and `height`
/// are as displayed (after the EXIF orientation), which is what IIIF coordinates refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceImage {
    pub format: SourceFormat,
    pub width: u32,
    pub height: u32,
    /// Full size first, then the smaller levels a pyramid stores (largest to smallest). A JPEG
    /// lists the sizes its DCT scaling decodes at cheaply (1/2, 1/4, 1/8).
    pub levels: Vec<Level>,
    /// EXIF orientation (1-8; 1 when absent), applied when rendering.
    pub orientation: u8,
}

/// The limits of `[images]`, checked from the header before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLimits {
    /// Pixels of an untiled source (width x height of what would be decoded).
    pub max_source_pixels: u64,
    /// Pixels of a tiled pyramid's full level (only tiles are decoded, so it may be far larger).
    pub max_tiled_source_pixels: u64,
    /// Output pixels (IIIF `maxArea`), and its sides (`maxWidth`, `maxHeight`).
    pub max_output_pixels: u64,
    pub max_output_side: u32,
    /// Frames an animated source may declare (only the first is decoded).
    pub max_frames: u32,
    /// Bytes read from the object for one job (the whole file of an untiled source).
    pub max_source_bytes: u64,
    /// Decode threads, and jobs waiting for one beyond which requests get 503.
    pub workers: usize,
    pub queue: usize,
    /// Time limit of one job (read + decode + encode).
    pub job_timeout: Duration,
    /// Tile side advertised in `info.json`.
    pub tile_size: u32,
}

impl Default for ImageLimits {
    fn default() -> ImageLimits {
        use crate::config::defaults as d;
        ImageLimits {
            max_source_pixels: d::IMAGE_MAX_SOURCE_PIXELS,
            max_tiled_source_pixels: d::IMAGE_MAX_TILED_SOURCE_PIXELS,
            max_output_pixels: d::IMAGE_MAX_OUTPUT_PIXELS,
            max_output_side: d::IMAGE_MAX_OUTPUT_SIDE,
            max_frames: d::IMAGE_MAX_FRAMES,
            max_source_bytes: d::IMAGE_MAX_SOURCE_BYTES,
            workers: d::IMAGE_WORKERS,
            queue: d::IMAGE_QUEUE,
            job_timeout: Duration::from_secs(d::IMAGE_JOB_TIMEOUT_SECS),
            tile_size: d::IMAGE_TILE_SIZE,
        }
    }
}

impl ImageLimits {
    /// The limits `[images]` sets (its `enabled` and `base_url` are the pipeline's).
    pub fn from_config(c: &crate::config::ImagesConfig) -> ImageLimits {
        ImageLimits {
            max_source_pixels: c.max_source_pixels,
            max_tiled_source_pixels: c.max_tiled_source_pixels,
            max_output_pixels: c.max_output_pixels,
            max_output_side: c.max_output_side,
            max_frames: c.max_frames,
            max_source_bytes: c.max_source_bytes,
            workers: c.workers,
            queue: c.queue,
            job_timeout: c.job_timeout,
            tile_size: c.tile_size,
        }
    }
}

/// Why an image could not be described or rendered. The pipeline maps each to its status in
/// `pipeline/error.rs`; the messages are short and say nothing of the file's content.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A IIIF parameter is malformed or not supported (400), naming which.
    #[error("invalid {param}: {why}")]
    BadParameter { param: &'static str, why: String },
    /// The request or the source exceeds a limit (400 for the request's size, 413 for the source).
    #[error("{0}")]
    TooLarge(String),
    /// Not one of the formats decoded (415).
    #[error("unsupported image format")]
    Unsupported,
    /// The file is broken, hostile, or a codec panicked (422).
    #[error("image cannot be decoded: {0}")]
    Corrupt(String),
    /// The decode pool's queue is full (503 + Retry-After).
    #[error("image workers are busy")]
    Busy,
    /// The job ran past its time limit (503).
    #[error("image job timed out")]
    TimedOut,
    /// Reading the object failed (the backend's status: 404, 403, 502, 504).
    #[error(transparent)]
    Source(#[from] crate::backend::BackendError),
}

/// A rendered image, ready to send.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub bytes: Bytes,
    pub format: OutputFormat,
    pub width: u32,
    pub height: u32,
}

/// What [`probe`] learned of one version of one object: the image, and for a TIFF its parsed
/// directories (so a tile does not read them again).
#[derive(Debug)]
pub struct Probe {
    pub image: SourceImage,
    pub tiff: Option<Arc<tiff::Pyramid>>,
}

/// The bytes [`probe`] reads first (most headers fit; a format that needs more says so).
pub const PROBE_HEAD_BYTES: u64 = 64 * 1024;
/// Rounds of "read more" a header probe may ask for before the file is refused.
const PROBE_ROUNDS: usize = 8;

/// Describe the object: sniff its format from the first bytes (never the key's name), then read
/// the header (a TIFF's directories) and check it against `limits`, before any pixel is decoded.
pub async fn probe(src: &source::ObjectBytes, limits: &ImageLimits) -> Result<Probe, ImageError> {
    let mut head = src.read_at(0, PROBE_HEAD_BYTES.min(src.size())).await?;
    let format = decode::sniff(&head)?;
    if format == SourceFormat::Tiff {
        let (image, pyramid) = tiff::probe(src, limits).await?;
        return Ok(Probe {
            image,
            tiff: Some(pyramid),
        });
    }
    for _ in 0..PROBE_ROUNDS {
        match decode::probe(format, &head, src.size(), limits)? {
            decode::Probed::Image(image) => return Ok(Probe { image, tiff: None }),
            decode::Probed::NeedBytes(n) => {
                let have = head.len() as u64;
                let want = (n as u64).min(src.size());
                if want <= have || want > decode::MAX_HEADER_BYTES as u64 {
                    return Err(ImageError::Corrupt("the header is cut short".into()));
                }
                let more = src.read_at(have, want - have).await?;
                let mut joined = bytes::BytesMut::with_capacity(head.len() + more.len());
                joined.extend_from_slice(&head);
                joined.extend_from_slice(&more);
                head = joined.freeze();
            }
        }
    }
    Err(ImageError::Corrupt("the header does not end".into()))
}

/// Render `op` (resolved against `probe.image`): a TIFF reads the tiles or strips it needs; any
/// other format reads the whole object (bounded by `max_source_bytes`) and decodes on the pool.
pub async fn render(
    src: &source::ObjectBytes,
    probe: &Probe,
    op: &RenderOp,
    limits: &ImageLimits,
    pool: &pool::Pool,
) -> Result<Rendered, ImageError> {
    match &probe.tiff {
        Some(pyramid) => tiff::render(src, pyramid, op, limits, pool).await,
        None => {
            let data = src.read_all().await?;
            let image = probe.image.clone();
            let op = op.clone();
            let job_limits = limits.clone();
            pool.run(limits.job_timeout, move || {
                decode::render(&data, &image, &op, &job_limits)
            })
            .await
        }
    }
}

/// A copy of `e` for every request that waited on the same probe or render.
pub fn share(e: &ImageError) -> ImageError {
    match e {
        ImageError::BadParameter { param, why } => ImageError::BadParameter {
            param,
            why: why.clone(),
        },
        ImageError::TooLarge(s) => ImageError::TooLarge(s.clone()),
        ImageError::Unsupported => ImageError::Unsupported,
        ImageError::Corrupt(s) => ImageError::Corrupt(s.clone()),
        ImageError::Busy => ImageError::Busy,
        ImageError::TimedOut => ImageError::TimedOut,
        ImageError::Source(b) => ImageError::Source(b.share()),
    }
}

/// An error every waiter of a shared computation gets a copy of.
pub trait ShareError {
    fn share(&self) -> Self;
}

impl ShareError for ImageError {
    fn share(&self) -> ImageError {
        share(self)
    }
}

type Flight<V, E> = Arc<OnceCell<Result<V, Arc<E>>>>;

/// One computation per key however many requests ask at once: the first runs it, the others
/// wait for its result (if the first goes away, the next waiter runs it).
pub struct Flights<K, V, E = ImageError> {
    inflight: Mutex<HashMap<K, Flight<V, E>>>,
}

impl<K: Hash + Eq + Clone, V: Clone, E: ShareError> Default for Flights<K, V, E> {
    fn default() -> Self {
        Flights {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone, E: ShareError> Flights<K, V, E> {
    /// `work`'s result for `key`, and whether this call ran it (`false`: it waited on another).
    pub async fn run<F>(&self, key: &K, work: F) -> (Result<V, E>, bool)
    where
        F: std::future::Future<Output = Result<V, E>>,
    {
        let cell = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(inflight.entry(key.clone()).or_default())
        };
        let led = std::sync::atomic::AtomicBool::new(false);
        let result = cell
            .get_or_init(|| async {
                led.store(true, std::sync::atomic::Ordering::Relaxed);
                work.await.map_err(Arc::new)
            })
            .await;
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            if inflight.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                inflight.remove(key);
            }
        }
        let led = led.load(std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(v) => (Ok(v.clone()), led),
            Err(e) => (Err(e.share()), led),
        }
    }

    /// Computations in flight now.
    pub fn len(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The process's image machinery, built once at start from `[images]` and held in
/// `state::Shared`: the decode pool, the probes of recent object versions (bounded, least
/// recently used forgotten first) and the probes and renders in flight, each run once.
pub struct Work<K: Hash + Eq + Clone> {
    pool: pool::Pool,
    probes: Mutex<LruCache<K, Arc<Probe>>>,
    pub probing: Flights<K, Arc<Probe>>,
    pub rendering: Flights<K, Rendered>,
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for Work<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work").finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> Work<K> {
    /// `workers` decode threads (0: one per core), `queue` jobs waiting, `probes` remembered.
    pub fn new(workers: usize, queue: usize, probes: usize) -> Work<K> {
        Work {
            pool: pool::Pool::new(workers, queue),
            probes: Mutex::new(LruCache::new(
                NonZeroUsize::new(probes).unwrap_or(NonZeroUsize::MIN),
            )),
            probing: Flights::default(),
            rendering: Flights::default(),
        }
    }

    pub fn pool(&self) -> &pool::Pool {
        &self.pool
    }

    /// The remembered probe of `key` (an object version), if any.
    pub fn probe_of(&self, key: &K) -> Option<Arc<Probe>> {
        self.probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    pub fn remember_probe(&self, key: K, probe: Arc<Probe>) {
        self.probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(key, probe);
    }
}
