//! Pyramidal TIFFs written by libvips (`vips tiffsave --tile --pyramid [--subifd] --bigtiff`),
//! stored in s3s-fs behind a counting proxy, read by `image::tiff` through a real `S3Backend`
//! (directly, and through the cache): every level's tiles match `vips crop` of the same level and
//! `vips resize` of the source (PSNR >= 35 dB), and the store saw only ranged GETs of a small
//! part of the file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bucketgate::backend::s3::S3Backend;
use bucketgate::backend::{AnyBackend, Backend, Caller, ObjectMeta, OwnedCaller};
use bucketgate::cache::Cache;
use bucketgate::cache::key::{CacheKey, ORIGINAL, ObjectId, Partition};
use bucketgate::config::CacheConfig;
use bucketgate::image::iiif::{Quality, Rect};
use bucketgate::image::pool::Pool;
use bucketgate::image::source::ObjectBytes;
use bucketgate::image::tiff::{self, Pyramid, Region};
use bucketgate::image::{ImageLimits, OutputFormat, RenderOp, SourceImage};

use crate::support;
use crate::support::origin::CountingProxy;
use crate::support::s3::S3sFs;

const BUCKET: &str = "slides";
const WIDTH: u32 = 3000;
const HEIGHT: u32 = 2000;

/// Run `vips` with `args`; a missing vips fails the test (tests/run installs libvips-tools).
fn vips(args: &[&str]) {
    let out = Command::new("vips")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("vips not runnable ({e}); tests/run installs libvips-tools"));
    assert!(
        out.status.success(),
        "vips {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A smooth but structured RGB image (JPEG keeps it well above 35 dB).
fn source_pixels() -> Vec<u8> {
    let mut px = Vec::with_capacity((WIDTH * HEIGHT * 3) as usize);
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            let (fx, fy) = (x as f32, y as f32);
            px.push((128.0 + 100.0 * (fx / 97.0).sin() * (fy / 131.0).cos()) as u8);
            px.push((128.0 + 100.0 * ((fx + fy) / 173.0).sin()) as u8);
            px.push(((x + y) * 200 / (WIDTH + HEIGHT) + 30) as u8);
        }
    }
    px
}

/// The source as a vips image file (`source.v`), and a pyramid of it saved with `flags`.
fn make_pyramid(dir: &Path, flags: &[&str]) -> Vec<u8> {
    let raw = dir.join("source.raw");
    if !raw.exists() {
        std::fs::write(&raw, source_pixels()).unwrap();
        let v = dir.join("source.v");
        vips(&[
            "rawload",
            raw.to_str().unwrap(),
            v.to_str().unwrap(),
            &WIDTH.to_string(),
            &HEIGHT.to_string(),
            "3",
        ]);
    }
    let out = dir.join("pyramid.tif");
    let mut args = vec![
        "tiffsave".to_owned(),
        dir.join("source.v").to_str().unwrap().to_owned(),
        out.to_str().unwrap().to_owned(),
    ];
    args.extend(flags.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    vips(&args);
    std::fs::read(&out).unwrap()
}

/// `vips` output of `image` (a file with options, as vips names it) cropped to `rect` and,
/// when `resize` is given, resized by it: its raw bytes.
fn vips_reference(dir: &Path, image: &str, rect: Rect, resize: Option<f64>) -> Vec<u8> {
    let crop = dir.join("crop.v");
    vips(&[
        "crop",
        image,
        crop.to_str().unwrap(),
        &rect.x.to_string(),
        &rect.y.to_string(),
        &rect.w.to_string(),
        &rect.h.to_string(),
    ]);
    let mut last = crop.clone();
    if let Some(scale) = resize {
        let resized = dir.join("resized.v");
        vips(&[
            "resize",
            crop.to_str().unwrap(),
            resized.to_str().unwrap(),
            &scale.to_string(),
        ]);
        last = resized;
    }
    let raw = dir.join("reference.raw");
    vips(&["rawsave", last.to_str().unwrap(), raw.to_str().unwrap()]);
    std::fs::read(&raw).unwrap()
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "same number of samples");
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

fn op(region: Rect, width: u32, height: u32) -> RenderOp {
    RenderOp {
        region,
        width,
        height,
        mirror: false,
        rotation: 0,
        quality: Quality::Default,
        format: OutputFormat::Jpg,
    }
}

struct Bed {
    store: S3sFs,
    proxy: CountingProxy,
    backend: Arc<AnyBackend>,
    key: String,
    meta: ObjectMeta,
    size: u64,
    dir: tempfile::TempDir,
}

async fn bed(flags: &[&str]) -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let file = make_pyramid(dir.path(), flags);
    let store = S3sFs::start("AKIDPYRAMID", "pyramid-secret").await;
    store.create_bucket(BUCKET).await;
    let key = "scan.tif".to_owned();
    store.put(BUCKET, &key, &file, Some("image/tiff")).await;
    let proxy = CountingProxy::start(&store.endpoint).await;
    let mut source = store.source(BUCKET, "");
    source.endpoint = Some(proxy.endpoint.clone());
    let backend = Arc::new(AnyBackend::S3(
        S3Backend::new(&source, &support::test_limits())
            .await
            .unwrap(),
    ));
    let meta = backend.head(&key, Caller::Gateway).await.unwrap();
    Bed {
        store,
        proxy,
        backend,
        key,
        meta,
        size: file.len() as u64,
        dir,
    }
}

impl Bed {
    fn object(&self, cache: Option<(Arc<Cache>, CacheKey)>) -> ObjectBytes {
        ObjectBytes::new(
            Arc::clone(&self.backend),
            self.key.clone(),
            Arc::new(self.meta.clone()),
            OwnedCaller::Gateway,
            cache,
            256 << 20,
        )
    }

    fn pyramid_path(&self) -> String {
        self.dir
            .path()
            .join("pyramid.tif")
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// Every GET the store saw for the object was ranged and pinned to its version.
    fn assert_only_ranged_gets(&self) -> u64 {
        let gets = self.proxy.gets_of(&self.key);
        assert!(!gets.is_empty(), "the store saw the reads");
        let mut bytes = 0;
        eprintln!("{} ranged GETs", gets.len());
        for get in &gets {
            assert!(get.range.is_some(), "an unranged GET: {get:?}");
            assert_eq!(get.if_match, self.meta.etag, "a GET not pinned: {get:?}");
            let (a, b) = get.span(self.size).unwrap();
            bytes += b - a + 1;
        }
        eprintln!("{bytes} of {} bytes read", self.size);
        bytes
    }
}

/// Read one output tile of every level (a 256-pixel output of a region 256 << k wide at level k)
/// and compare with vips: exact level crops (`page=k` or `subifd=k-1`) and a resize of the
/// full-size source.
async fn check_every_level(
    bed: &Bed,
    src: &ObjectBytes,
    image: &SourceImage,
    pyramid: &Pyramid,
    level_name: impl Fn(usize) -> String,
) {
    let limits = ImageLimits::default();
    let pool = Pool::new(2, 8);
    assert_eq!((image.width, image.height), (WIDTH, HEIGHT));
    assert!(image.levels.len() >= 4, "levels: {:?}", image.levels);
    for (k, level) in image.levels.iter().enumerate() {
        let scale = 1u32 << k;
        assert!(
            level.width.abs_diff(WIDTH / scale) <= 1,
            "level {k}: {level:?}"
        );
        // The second tile of the output grid, where the level has one; else the whole level.
        let side = 256 * scale;
        let (x, y) = if WIDTH > 2 * side { (side, 0) } else { (0, 0) };
        let region = Rect {
            x,
            y,
            w: side.min(WIDTH - x),
            h: side.min(HEIGHT - y),
        };
        let want = op(region, region.w / scale, region.h / scale);
        let got: Region = tiff::read_region(src, pyramid, &want, &limits, &pool)
            .await
            .unwrap();
        assert_eq!(got.level, k, "the level nearest above scale 1/{scale}");
        assert_eq!(got.channels, 3);
        let exact = vips_reference(bed.dir.path(), &level_name(k), got.rect, None);
        let db = psnr(&got.data, &exact);
        eprintln!("level {k}: {db:.1} dB against vips' crop of the level");
        assert!(
            db >= 50.0,
            "level {k}: {db:.1} dB against vips' decode of the same tiles"
        );
        // Against the whole source resized by vips to this level's scale, the same rectangle
        // (clipped to what both have).
        let resized = bed.dir.path().join("resized-source.v");
        vips(&[
            "resize",
            bed.dir.path().join("source.v").to_str().unwrap(),
            resized.to_str().unwrap(),
            &(1.0 / f64::from(scale)).to_string(),
        ]);
        let (rw, rh) = (WIDTH / scale, HEIGHT / scale);
        let common = Rect {
            x: got.rect.x,
            y: got.rect.y,
            w: got.rect.w.min(rw - got.rect.x),
            h: got.rect.h.min(rh - got.rect.y),
        };
        let reference = vips_reference(bed.dir.path(), resized.to_str().unwrap(), common, None);
        let ours = sub_rect(&got, common);
        let db = psnr(&ours, &reference);
        eprintln!("level {k}: {db:.1} dB against vips resize of the source");
        assert!(
            db >= 35.0,
            "level {k}: {db:.1} dB against vips resize of the source"
        );
    }
}

/// The samples of `rect` (level coordinates, inside `region.rect`) of a region.
fn sub_rect(region: &Region, rect: Rect) -> Vec<u8> {
    let c = usize::from(region.channels);
    let mut out = Vec::new();
    for y in rect.y..rect.y + rect.h {
        let row = (y - region.rect.y) as usize * region.rect.w as usize;
        let from = (row + (rect.x - region.rect.x) as usize) * c;
        out.extend_from_slice(&region.data[from..from + rect.w as usize * c]);
    }
    out
}

#[tokio::test]
async fn pyramid_bigtiff_page_per_level_jpeg_reads_only_ranges() {
    let bed = bed(&[
        "--tile",
        "--pyramid",
        "--bigtiff",
        "--compression",
        "jpeg",
        "--Q",
        "92",
        "--tile-width",
        "256",
        "--tile-height",
        "256",
    ])
    .await;
    let src = bed.object(None);
    let (image, pyramid) = tiff::probe(&src, &ImageLimits::default()).await.unwrap();
    assert!(pyramid.bigtiff);
    assert!(
        pyramid.levels[0].jpeg_tables.is_some(),
        "libtiff's shared JPEG tables"
    );
    let path = bed.pyramid_path();
    check_every_level(&bed, &src, &image, &pyramid, |k| {
        format!("{path}[page={k}]")
    })
    .await;
    let bytes = bed.assert_only_ranged_gets();
    assert!(
        bytes * 4 < bed.size,
        "the store sent {bytes} of {} bytes for one tile per level",
        bed.size
    );
}

#[tokio::test]
async fn pyramid_bigtiff_subifds_deflate_through_the_cache() {
    let bed = bed(&[
        "--tile",
        "--pyramid",
        "--subifd",
        "--bigtiff",
        "--compression",
        "deflate",
        "--predictor",
        "horizontal",
        "--tile-width",
        "256",
        "--tile-height",
        "256",
    ])
    .await;
    let config = CacheConfig {
        memory_bytes: 64 << 20,
        chunk_bytes: 256 << 10,
        metadata_ttl: Duration::from_secs(60),
        disk: None,
        bypass: BTreeSet::new(),
    };
    let metrics = Arc::new(bucketgate::telemetry::Metrics::new());
    let cache = Arc::new(Cache::new(&config, metrics).unwrap());
    let entry = CacheKey::new(
        ObjectId::new("slides", &bed.key, Partition::Gateway),
        &bucketgate::cache::version_of(&bed.meta),
        ORIGINAL,
    );
    let src = bed.object(Some((Arc::clone(&cache), entry.clone())));
    let (image, pyramid) = tiff::probe(&src, &ImageLimits::default()).await.unwrap();
    let path = bed.pyramid_path();
    check_every_level(&bed, &src, &image, &pyramid, |k| {
        if k == 0 {
            format!("{path}[page=0]")
        } else {
            format!("{path}[subifd={}]", k - 1)
        }
    })
    .await;
    let bytes = bed.assert_only_ranged_gets();
    assert!(
        bytes * 2 < bed.size,
        "the store sent {bytes} of {} bytes",
        bed.size
    );

    // Again through the same cache: every chunk is there, the store sees nothing.
    let before = bed.proxy.gets_of(&bed.key).len();
    let again = bed.object(Some((cache, entry)));
    let (image, pyramid) = tiff::probe(&again, &ImageLimits::default()).await.unwrap();
    check_every_level(&bed, &again, &image, &pyramid, |k| {
        if k == 0 {
            format!("{path}[page=0]")
        } else {
            format!("{path}[subifd={}]", k - 1)
        }
    })
    .await;
    assert_eq!(
        bed.proxy.gets_of(&bed.key).len(),
        before,
        "all from the cache"
    );
}

/// PNG bytes -> (width, height, RGB samples).
fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    assert_eq!(frame.color_type, png::ColorType::Rgb, "an RGB output");
    buf.truncate(frame.buffer_size());
    (frame.width, frame.height, buf)
}

/// Through the running gateway: info.json lists the pyramid's scale factors, and IIIF tiles at
/// every scale (exact levels and one between them) match vips, with only ranged reads of the
/// pyramid at the store.
#[test]
fn pyramid_iiif_tiles_through_the_gateway() {
    // In debug builds the pipeline's per-request future (with the IIIF route) is some 400 KB and
    // is moved across three frames when a request starts: more than a test thread's 2 MiB stack
    // (gdb: 397 + 663 + 445 KB frames under `Pipeline::handle`). Until that future is boxed, the
    // test runs on a thread with a larger stack.
    std::thread::Builder::new()
        .stack_size(32 << 20)
        .spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(iiif_tiles_through_the_gateway())
        })
        .unwrap()
        .join()
        .unwrap();
}

async fn iiif_tiles_through_the_gateway() {
    use bucketgate::config::SourceConfig;
    let bed = bed(&[
        "--tile",
        "--pyramid",
        "--bigtiff",
        "--compression",
        "jpeg",
        "--Q",
        "92",
        "--tile-width",
        "256",
        "--tile-height",
        "256",
    ])
    .await;
    let mut source = bed.store.source(BUCKET, "");
    source.endpoint = Some(bed.proxy.endpoint.clone());
    let start = support::GatewayBuilder::new()
        .source("slides", SourceConfig::S3(source))
        .start();
    let gw = start.await;
    let client = gw.client();
    let base = format!("/iiif/3/slides/{}", bed.key);
    let info = client
        .get(gw.url(&format!("{base}/info.json")))
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200);
    let info: serde_json::Value = serde_json::from_slice(&info.bytes().await.unwrap()).unwrap();
    assert_eq!(info["width"], WIDTH);
    assert_eq!(info["height"], HEIGHT);
    let factors = info["tiles"][0]["scaleFactors"].clone();
    for f in [1, 2, 4, 8] {
        assert!(
            factors.as_array().unwrap().contains(&serde_json::json!(f)),
            "scale factor {f} in {factors}"
        );
    }
    let before = bed.proxy.gets_of(&bed.key).len();
    // (region, width, height, vips resize scale of the source crop)
    let cases = [
        (
            Rect {
                x: 512,
                y: 512,
                w: 512,
                h: 512,
            },
            512,
            512,
            None,
        ),
        (
            Rect {
                x: 1024,
                y: 0,
                w: 1024,
                h: 1024,
            },
            512,
            512,
            Some(0.5),
        ),
        (
            Rect {
                x: 0,
                y: 1024,
                w: 2048,
                h: 976,
            },
            512,
            244,
            Some(0.25),
        ),
        (
            Rect {
                x: 0,
                y: 0,
                w: 1500,
                h: 1000,
            },
            500,
            333,
            Some(1.0 / 3.0),
        ),
    ];
    for (region, w, h, scale) in cases {
        let path = format!(
            "{base}/{},{},{},{}/{w},{h}/0/default.png",
            region.x, region.y, region.w, region.h
        );
        let resp = client.get(gw.url(&path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let (got_w, got_h, got) = decode_png(&resp.bytes().await.unwrap());
        assert_eq!((got_w, got_h), (w, h), "{path}");
        let source = bed.dir.path().join("source.v");
        let reference = vips_reference(bed.dir.path(), source.to_str().unwrap(), region, scale);
        if reference.len() != got.len() {
            panic!(
                "{path}: vips made {} samples, we {}",
                reference.len(),
                got.len()
            );
        }
        let db = psnr(&got, &reference);
        eprintln!("{path}: {db:.1} dB against vips crop + resize of the source");
        assert!(db >= 35.0, "{path}: {db:.1} dB");
    }
    // A stored tile exactly (256 x 256 at its size, jpg): its JPEG stream with the shared
    // tables, not re-encoded (libtiff codes it RGB at Q 92: an Adobe marker says so); a decoder
    // reads it as vips does.
    let tile = Rect {
        x: 512,
        y: 256,
        w: 256,
        h: 256,
    };
    let path = format!("{base}/512,256,256,256/256,256/0/default.jpg");
    let resp = client.get(gw.url(&path)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    let body = resp.bytes().await.unwrap();
    assert!(
        !body.windows(4).any(|w| w == b"JFIF" || w == b"Exif"),
        "not re-encoded, no metadata"
    );
    assert!(body.windows(5).any(|w| w == b"Adobe"), "RGB coding marked");
    let mut decoder = jpeg_decoder::Decoder::new(&body[..]);
    let got = decoder.decode().unwrap();
    let exact = vips_reference(
        bed.dir.path(),
        &format!("{}[page=0]", bed.pyramid_path()),
        tile,
        None,
    );
    let db = psnr(&got, &exact);
    eprintln!("{path}: {db:.1} dB against vips' decode of the stored tile");
    assert!(db >= 50.0, "{path}: {db:.1} dB");

    let gets = bed.proxy.gets_of(&bed.key);
    assert!(gets.len() > before, "the tiles were read from the store");
    let bytes = bed.assert_only_ranged_gets();
    assert!(
        bytes * 2 < bed.size,
        "the store sent {bytes} of {} bytes",
        bed.size
    );
}

/// A short mutation run on a vips pyramid (JPEG tiles with shared tables, and Deflate): bytes
/// flipped at random, half of them in the directories and arrays at the end of each level;
/// every probe and read ends with a value or a 4xx-class error (never a panic, a Source or a
/// TimedOut error), each within the time limit.
#[tokio::test]
async fn pyramid_byte_flips_of_vips_files_fail_cleanly() {
    use bucketgate::backend::fs::FsBackend;
    use bucketgate::image::ImageError;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let backend = Arc::new(AnyBackend::Fs(FsBackend::new(&root).unwrap()));
    let limits = ImageLimits {
        job_timeout: Duration::from_secs(2),
        ..ImageLimits::default()
    };
    let pool = Pool::new(2, 8);
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for compression in ["jpeg", "deflate"] {
        let clean = make_pyramid(
            dir.path(),
            &[
                "--tile",
                "--pyramid",
                "--bigtiff",
                "--compression",
                compression,
                "--tile-width",
                "128",
                "--tile-height",
                "128",
            ],
        );
        for round in 0..30 {
            let mut file = clean.clone();
            for _ in 0..6 {
                // Half the flips in the last 40% (libtiff's directories follow each level's
                // tiles, the smallest levels' last), half anywhere.
                let at = if round % 2 == 0 {
                    file.len() * 6 / 10 + (next() % (file.len() as u64 * 4 / 10)) as usize
                } else {
                    (next() % file.len() as u64) as usize
                };
                file[at] ^= (next() >> 56) as u8 | 1;
            }
            std::fs::write(root.join("m.tif"), &file).unwrap();
            let meta = backend.head("m.tif", Caller::Gateway).await.unwrap();
            let src = ObjectBytes::new(
                Arc::clone(&backend),
                "m.tif".into(),
                Arc::new(meta),
                OwnedCaller::Gateway,
                None,
                64 << 20,
            );
            let started = std::time::Instant::now();
            let result = match tiff::probe(&src, &limits).await {
                Ok((image, pyramid)) => {
                    let all = Rect {
                        x: 0,
                        y: 0,
                        w: image.width,
                        h: image.height,
                    };
                    // The pixels of the 1/8 level, and a finished (resized, encoded) image.
                    let small = op(all, image.width / 8, image.height / 8);
                    let region = tiff::read_region(&src, &pyramid, &small, &limits, &pool).await;
                    let finished =
                        tiff::render(&src, &pyramid, &op(all, 300, 200), &limits, &pool).await;
                    region.map(|_| ()).and(finished.map(|_| ()))
                }
                Err(e) => Err(e),
            };
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "round {round} took too long"
            );
            let label = match &result {
                Ok(()) => "ok".to_owned(),
                Err(ImageError::Corrupt(_)) => "corrupt".to_owned(),
                Err(ImageError::TooLarge(_)) => "too large".to_owned(),
                Err(ImageError::Unsupported) => "unsupported".to_owned(),
                Err(e) => panic!("round {round} ({compression}): {e:?}"),
            };
            *outcomes
                .entry(format!("{compression} {label}"))
                .or_default() += 1;
        }
    }
    eprintln!("outcomes: {outcomes:?}");
}
