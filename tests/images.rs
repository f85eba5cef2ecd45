//! Images (issue 13) at the codec level: what the pipeline does with an object (sniff and probe
//! its first 64 KiB, more when the probe asks, then render from the whole file), run on files
//! made in the test.
//!
//! - The hostile set: each file alone in a child process of this binary (the process-wide peak
//!   RSS is then the file's), refused with the error whose status the issue asks for, within
//!   2 s and under 50 MiB above the RSS before the call (`VmHWM` reset through
//!   `/proc/self/clear_refs`, then read after).
//! - A mutation run: random byte flips of valid files never panic and never end in anything but
//!   an image or a client error.
//! - Pixels: thumbnails and a region compared with `vipsthumbnail` / `vips` (libvips-tools, as
//!   tests/run installs it) on the same source: same dimensions, PSNR at least 35 dB.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bucketgate::image::decode::{self, Probed};
use bucketgate::image::iiif::{Quality, Rect, RenderOp};
use bucketgate::image::{ImageError, ImageLimits, OutputFormat, Rendered, SourceImage};

use crate::support::alone_in_child_process;

/// What the pipeline reads first from an object.
const HEAD: usize = 64 * 1024;
/// The issue's bounds for a hostile file.
const QUICKLY: Duration = Duration::from_secs(2);
const EXTRA_PEAK: u64 = 50 << 20;

// ---- the codec path, as the pipeline runs it ----

fn describe(data: &[u8], limits: &ImageLimits) -> Result<SourceImage, ImageError> {
    let mut n = HEAD.min(data.len());
    loop {
        let format = decode::sniff(&data[..n])?;
        match decode::probe(format, &data[..n], data.len() as u64, limits)? {
            Probed::Image(image) => return Ok(image),
            Probed::NeedBytes(more) => {
                assert!(
                    more > n && more <= data.len(),
                    "asked for {more} of {}",
                    data.len()
                );
                n = more;
            }
        }
    }
}

/// `region` of `data` (all of it when `None`) scaled to `width` wide; `height` when given, else
/// the region's aspect rounded.
fn render(
    data: &[u8],
    region: Option<Rect>,
    width: u32,
    height: Option<u32>,
    format: OutputFormat,
) -> Result<Rendered, ImageError> {
    let limits = ImageLimits::default();
    let image = describe(data, &limits)?;
    let region = region.unwrap_or(Rect {
        x: 0,
        y: 0,
        w: image.width,
        h: image.height,
    });
    let height = height.unwrap_or_else(|| {
        ((u64::from(region.h) * u64::from(width) + u64::from(region.w) / 2) / u64::from(region.w))
            .max(1) as u32
    });
    let op = RenderOp {
        region,
        width,
        height,
        mirror: false,
        rotation: 0,
        quality: Quality::Default,
        format,
    };
    decode::render(data, &image, &op, &limits)
}

/// The status the pipeline gives each error (pipeline/error.rs), for the assertions' messages.
fn status(e: &ImageError) -> u16 {
    match e {
        ImageError::BadParameter { .. } => 400,
        ImageError::TooLarge(_) => 413,
        ImageError::Unsupported => 415,
        ImageError::Corrupt(_) => 422,
        ImageError::Busy | ImageError::TimedOut => 503,
        ImageError::Source(_) => 502,
    }
}

// ---- the hostile set ----

fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Runs in a child process alone: renders `data` as a 256-pixel JPEG thumbnail and asserts the
/// status, the time and the extra peak memory.
fn refused_cheaply(name: &str, make: impl FnOnce() -> Vec<u8>, want_status: u16) {
    if !alone_in_child_process(name) {
        return;
    }
    let data = make();
    // Reset the peak RSS to the current RSS (Linux >= 4.0), so VmHWM is this call's peak.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let before = proc_status_kib("VmRSS:") * 1024;
    let started = Instant::now();
    let result = std::panic::catch_unwind(|| render(&data, None, 256, None, OutputFormat::Jpg));
    let took = started.elapsed();
    let peak = proc_status_kib("VmHWM:") * 1024;
    let got = match &result {
        Ok(Ok(_)) => 200,
        Ok(Err(e)) => status(e),
        Err(_) => 422, // the pool contains a panic as 422; none is expected here
    };
    assert!(result.is_ok(), "{name}: a codec panicked");
    assert_eq!(got, want_status, "{name}: {:?}", result.ok());
    assert!(took < QUICKLY, "{name}: took {took:?}");
    let extra = peak.saturating_sub(before);
    assert!(
        extra < EXTRA_PEAK,
        "{name}: {} MiB above the RSS before",
        extra >> 20
    );
    println!("{name}: {got} in {took:?}, {} KiB extra peak", extra >> 10);
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    // CRC over type and body (the decoders check it).
    let mut crc = !0u32;
    for &b in kind.iter().chain(body) {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    out.extend_from_slice(&(!crc).to_be_bytes());
}

fn png_ihdr(w: u32, h: u32) -> Vec<u8> {
    let mut d = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut d, b"IHDR", &ihdr);
    d
}

/// A small valid PNG (RGB gradient), through the png crate.
fn small_png(w: u32, h: u32, extra: impl FnOnce(&mut png::Encoder<&mut Vec<u8>>)) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    extra(&mut enc);
    let mut writer = enc.write_header().unwrap();
    let data: Vec<u8> = (0..w * h)
        .flat_map(|i| [(i % w) as u8, (i / w) as u8, 7])
        .collect();
    writer.write_image_data(&data).unwrap();
    writer.finish().unwrap();
    out
}

fn small_jpeg(w: u16, h: u16, progressive: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
    enc.set_progressive(progressive);
    let data: Vec<u8> = (0..u32::from(w) * u32::from(h))
        .flat_map(|i| [(i % u32::from(w)) as u8, (i / u32::from(w)) as u8, 99])
        .collect();
    enc.encode(&data, w, h, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out
}

/// A PNG of 41 bytes whose IHDR claims 50,000 x 50,000.
fn png_41_bytes_claiming_50000_square() -> Vec<u8> {
    let mut d = png_ihdr(50_000, 50_000);
    // The start of an IDAT chunk header: 41 bytes in all.
    d.extend_from_slice(&[0, 0, 0, 0]);
    d.extend_from_slice(b"IDAT");
    assert_eq!(d.len(), 41);
    d
}

/// A 512x512 PNG with three zTXt chunks of 64 MiB each (about 64 KiB compressed each).
fn png_zip_bomb_text() -> Vec<u8> {
    let png = small_png(512, 512, |_| {});
    let bomb = small_png(1, 1, |e| {
        e.add_ztxt_chunk("c".into(), "x".repeat(64 << 20)).unwrap();
    });
    // Lift the zTXt chunk out of the 1x1 file and put it thrice before IDAT of the 512x512.
    let at = bomb.windows(4).position(|w| w == b"zTXt").unwrap() - 4;
    let len = u32::from_be_bytes(bomb[at..at + 4].try_into().unwrap()) as usize;
    let chunk = &bomb[at..at + 12 + len];
    let mut d = png[..33].to_vec();
    for _ in 0..3 {
        d.extend_from_slice(chunk);
    }
    d.extend_from_slice(&png[33..]);
    assert!(d.len() < 1 << 20);
    d
}

/// An APNG declaring 5000 frames (acTL).
fn png_animation_of_5000_frames() -> Vec<u8> {
    let png = small_png(8, 8, |_| {});
    let mut d = png[..33].to_vec();
    let mut actl = 5000u32.to_be_bytes().to_vec();
    actl.extend_from_slice(&0u32.to_be_bytes());
    png_chunk(&mut d, b"acTL", &actl);
    d.extend_from_slice(&png[33..]);
    d
}

/// A real small JPEG whose frame header is rewritten to 65,500 x 65,500.
fn jpeg_sof_65500_square() -> Vec<u8> {
    let mut d = small_jpeg(64, 64, false);
    let sof = d.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    d[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xDC, 0xFF, 0xDC]);
    d
}

/// A 2000x2000 progressive JPEG followed by 5000 more (empty) refinement scans: without a scan
/// limit each walks every block of the image.
fn progressive_jpeg_with_5000_scans() -> Vec<u8> {
    let mut d = small_jpeg(2000, 2000, true);
    d.truncate(d.len() - 2);
    for _ in 0..5000 {
        d.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0, 1, 63, 0x10, 0x00]);
    }
    d.extend_from_slice(&[0xFF, 0xD9]);
    d
}

/// A VP8X WebP header of a `w` x `h` canvas, animated, with `frames` ANMF chunks.
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

/// A lossy WebP (VP8) frame header of 16383 x 16383.
fn lossy_webp_16383_square() -> Vec<u8> {
    let mut d = b"RIFF\x26\0\0\0WEBPVP8 \x1a\0\0\0".to_vec();
    d.extend_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0xff, 0x3f, 0xff, 0x3f]);
    d.extend_from_slice(&[0; 16]);
    d
}

/// A GIF of 5000 small frames.
fn gif_of_5000_frames() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = gif::Encoder::new(&mut out, 256, 256, &[0, 0, 0, 255, 255, 255]).unwrap();
        for i in 0..5000u32 {
            let frame = gif::Frame {
                width: 16,
                height: 16,
                buffer: std::borrow::Cow::Owned(vec![(i % 2) as u8; 256]),
                ..gif::Frame::default()
            };
            enc.write_frame(&frame).unwrap();
        }
    }
    out
}

fn svg() -> Vec<u8> {
    br#"<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="10" height="10"/></svg>"#.to_vec()
}

fn html_polyglot() -> Vec<u8> {
    b"<!DOCTYPE html><html><script>alert(1)</script>\xFF\xD8\xFF\xE0".to_vec()
}

fn gif_header_then_html() -> Vec<u8> {
    b"GIF89a\x10\0\x10\0\0\0\0<html><script>alert(1)</script></html>".to_vec()
}

/// The hostile set: name (stored as `{name}.jpg`), maker, status. The zip-bomb text is 200: its
/// text is never decompressed, and an image is not refused for its comments.
#[allow(clippy::type_complexity)]
const HOSTILE: &[(&str, fn() -> Vec<u8>, u16)] = &[
    (
        "png-41-bytes-50000-square",
        png_41_bytes_claiming_50000_square,
        413,
    ),
    ("png-zip-bomb-text", png_zip_bomb_text, 200),
    ("png-5000-frames", png_animation_of_5000_frames, 413),
    ("jpeg-sof-65500-square", jpeg_sof_65500_square, 413),
    ("jpeg-5000-scans", progressive_jpeg_with_5000_scans, 413),
    (
        "webp-canvas-16383-square",
        || webp_canvas(16383, 16383, 1),
        413,
    ),
    ("webp-lossy-16383-square", lossy_webp_16383_square, 413),
    ("webp-5000-frames", || webp_canvas(256, 256, 5000), 413),
    ("gif-5000-frames", gif_of_5000_frames, 413),
    ("svg", svg, 415),
    ("html-polyglot", html_polyglot, 415),
    ("gif-header-then-html", gif_header_then_html, 422),
];

#[test]
fn images_hostile_png_of_41_bytes_claiming_50000_square_is_413() {
    refused_cheaply(
        "images::images_hostile_png_of_41_bytes_claiming_50000_square_is_413",
        png_41_bytes_claiming_50000_square,
        413,
    );
}

#[test]
fn images_hostile_png_zip_bomb_text_chunks_are_ignored_not_inflated() {
    refused_cheaply(
        "images::images_hostile_png_zip_bomb_text_chunks_are_ignored_not_inflated",
        png_zip_bomb_text,
        200,
    );
}

#[test]
fn images_hostile_png_animation_of_5000_frames_is_413() {
    refused_cheaply(
        "images::images_hostile_png_animation_of_5000_frames_is_413",
        png_animation_of_5000_frames,
        413,
    );
}

#[test]
fn images_hostile_jpeg_sof_65500_square_is_413() {
    refused_cheaply(
        "images::images_hostile_jpeg_sof_65500_square_is_413",
        jpeg_sof_65500_square,
        413,
    );
}

#[test]
fn images_hostile_progressive_jpeg_with_5000_scans_is_413() {
    refused_cheaply(
        "images::images_hostile_progressive_jpeg_with_5000_scans_is_413",
        progressive_jpeg_with_5000_scans,
        413,
    );
}

#[test]
fn images_hostile_webp_canvas_16383_square_is_413() {
    refused_cheaply(
        "images::images_hostile_webp_canvas_16383_square_is_413",
        || webp_canvas(16383, 16383, 1),
        413,
    );
}

#[test]
fn images_hostile_lossy_webp_frame_16383_square_is_413() {
    refused_cheaply(
        "images::images_hostile_lossy_webp_frame_16383_square_is_413",
        lossy_webp_16383_square,
        413,
    );
}

#[test]
fn images_hostile_animated_webp_of_5000_frames_is_413() {
    refused_cheaply(
        "images::images_hostile_animated_webp_of_5000_frames_is_413",
        || webp_canvas(256, 256, 5000),
        413,
    );
}

#[test]
fn images_hostile_gif_of_5000_frames_is_413() {
    refused_cheaply(
        "images::images_hostile_gif_of_5000_frames_is_413",
        gif_of_5000_frames,
        413,
    );
}

#[test]
fn images_hostile_svg_named_jpg_is_415() {
    refused_cheaply("images::images_hostile_svg_named_jpg_is_415", svg, 415);
}

#[test]
fn images_hostile_html_polyglot_named_jpg_is_415() {
    refused_cheaply(
        "images::images_hostile_html_polyglot_named_jpg_is_415",
        html_polyglot,
        415,
    );
}

#[test]
fn images_hostile_gif_header_followed_by_html_is_422() {
    refused_cheaply(
        "images::images_hostile_gif_header_followed_by_html_is_422",
        gif_header_then_html,
        422,
    );
}

/// `bucketgate serve` over an fs source `local` at `root/data`, with JSON logs; the guard and
/// the data address from the startup line.
fn serve_binary(root: &Path) -> (crate::support::process::ChildGuard, std::net::SocketAddr) {
    use std::io::BufRead;
    std::fs::write(root.join("hs256.key"), crate::support::TEST_SECRET).unwrap();
    std::fs::write(
        root.join("config.toml"),
        format!(
            "[listener]\naddr = \"127.0.0.1:0\"\ndev_certificate_dir = \"tls\"\n\
             [network]\nallow = [\"127.0.0.0/8\"]\n\
             [sources.local]\nkind = \"fs\"\nroot = \"data\"\n\
             [identity]\naudience = \"{}\"\n\
             [[identity.keys]]\nkid = \"{}\"\nalg = \"HS256\"\nsecret = \"file:hs256.key\"\n",
            crate::support::TEST_AUDIENCE,
            crate::support::TEST_KID,
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_bucketgate"));
    command
        .current_dir(root)
        .args(["--log-format", "json", "serve", "--config", "config.toml"])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut guard = crate::support::process::ChildGuard::spawn("bucketgate serve", &mut command);
    let stderr = guard.child().stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("\"bucketgate serving\"") => break line,
            Ok(line) => seen.push(line),
            Err(e) => panic!("no startup line ({e}):\n{}", seen.join("\n")),
        }
    };
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    let data = event["data_addr"].as_str().unwrap().parse().unwrap();
    (guard, data)
}

fn child_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The hostile set through the real binary, one file after another on one gateway: each IIIF
/// thumbnail request gets its status within 2 s and raises the gateway's peak RSS (VmHWM, reset
/// before each request through /proc/PID/clear_refs) less than 50 MiB above its RSS before; a
/// real photo renders before and after (the gateway keeps serving).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_hostile_files_through_the_gateway_binary_are_refused_quickly_and_cheaply() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("data/photo.jpg"), small_jpeg(1600, 1200, false)).unwrap();
    for (name, make, _) in HOSTILE {
        std::fs::write(root.join(format!("data/{name}.jpg")), make()).unwrap();
    }
    let (mut gw, addr) = serve_binary(root);
    let pid = gw.child().id();
    let pem = std::fs::read(root.join("tls/cert.pem")).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let token = crate::support::token_for_sources([&"local".to_owned()]);
    let get = async |key: &str| {
        let url = format!("https://{addr}/iiif/3/local/{key}/full/256,/0/default.jpg");
        let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        (status, body)
    };
    let (status, body) = get("photo.jpg").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    for (name, _, want) in HOSTILE {
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the gateway's VmHWM");
        let before = child_status_kib(pid, "VmRSS:") << 10;
        let started = Instant::now();
        let (status, body) = get(&format!("{name}.jpg")).await;
        let took = started.elapsed();
        let extra = (child_status_kib(pid, "VmHWM:") << 10).saturating_sub(before);
        println!(
            "{name}: {status} in {took:?}, {} KiB extra peak",
            extra >> 10
        );
        assert_eq!(status, *want, "{name}: {}", String::from_utf8_lossy(&body));
        if status != 200 {
            assert!(
                body.len() < 200,
                "{name}: a short message, got {} bytes",
                body.len()
            );
        }
        assert!(took < QUICKLY, "{name}: took {took:?}");
        assert!(
            extra < EXTRA_PEAK,
            "{name}: {} MiB above the RSS before",
            extra >> 20
        );
    }
    let (status, _) = get("photo.jpg").await;
    assert_eq!(status, 200, "the gateway keeps serving");
}

// ---- mutations ----

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn images_mutated_files_never_panic_and_never_fail_with_a_server_error() {
    let webp = {
        let mut out = Vec::new();
        let rgba: Vec<u8> = (0..48 * 32)
            .flat_map(|i| [i as u8, 9, 200, (i * 7) as u8])
            .collect();
        image_webp::WebPEncoder::new(&mut out)
            .encode(&rgba, 48, 32, image_webp::ColorType::Rgba8)
            .unwrap();
        out
    };
    let gif = {
        let mut out = Vec::new();
        {
            let mut enc =
                gif::Encoder::new(&mut out, 40, 30, &[0, 0, 0, 255, 0, 0, 0, 255, 0]).unwrap();
            for i in 0..3u8 {
                let frame = gif::Frame {
                    width: 40,
                    height: 30,
                    buffer: std::borrow::Cow::Owned(
                        (0..1200).map(|p| (p as u8).wrapping_add(i) % 3).collect(),
                    ),
                    ..gif::Frame::default()
                };
                enc.write_frame(&frame).unwrap();
            }
        }
        out
    };
    let sources = [
        ("jpeg", small_jpeg(96, 64, false)),
        ("progressive jpeg", small_jpeg(96, 64, true)),
        ("png", small_png(48, 32, |_| {})),
        ("webp", webp),
        ("gif", gif),
    ];
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut outcomes = std::collections::BTreeMap::<u16, usize>::new();
    for (name, source) in &sources {
        for round in 0..300 {
            let mut data = source.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(data.len());
                data[at] ^= 1 << rng.below(8);
            }
            let started = Instant::now();
            let result =
                std::panic::catch_unwind(|| render(&data, None, 24, None, OutputFormat::Jpg));
            let code = match &result {
                Ok(Ok(_)) => 200,
                Ok(Err(e)) => status(e),
                Err(_) => panic!("{name} mutation {round}: a codec panicked"),
            };
            assert!(
                matches!(code, 200 | 413 | 415 | 422),
                "{name} mutation {round}: {code} {result:?}"
            );
            assert!(started.elapsed() < QUICKLY, "{name} mutation {round}: slow");
            *outcomes.entry(code).or_default() += 1;
        }
    }
    println!("mutation outcomes by status: {outcomes:?}");
    assert!(
        outcomes.get(&200).is_some_and(|&n| n > 0),
        "some flips leave a valid image"
    );
    assert!(
        outcomes.get(&422).is_some_and(|&n| n > 0),
        "some flips break the file"
    );
}

// ---- pixels against libvips ----

fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e} (tests/run installs it)"));
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn vips(dir: &Path, args: &[&str]) {
    run(Command::new("vips").current_dir(dir).args(args));
}

/// A camera-like test picture: ffmpeg's testsrc2 with a little noise, as a JPEG.
fn test_picture(dir: &Path, w: u32, h: u32) -> std::path::PathBuf {
    let path = dir.join("source.jpg");
    run(Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={w}x{h}:rate=1,noise=alls=6:allf=t"))
        .args(["-frames:v", "1", "-q:v", "2"])
        .arg(&path));
    path
}

/// RGB or gray 8-bit pixels of a PNG, with its size and channel count.
fn png_pixels(bytes: &[u8]) -> (u32, u32, usize, Vec<u8>) {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        _ => 4,
    };
    (info.width, info.height, channels, buf)
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-9)).log10()
}

/// Our PNG thumbnail (or region) of `file`, `width` wide, against libvips' PNG `reference`: the
/// height ours computes from the aspect must be libvips' (within the one pixel IIIF and libvips
/// may round differently; then libvips' is used, to compare pixels).
fn compare(what: &str, file: &Path, region: Option<Rect>, width: u32, reference: &Path) -> f64 {
    let data = std::fs::read(file).unwrap();
    let (vw, vh, vch, vips_px) = png_pixels(&std::fs::read(reference).unwrap());
    let ours = render(&data, region, width, None, OutputFormat::Png).unwrap();
    assert_eq!(ours.width, vw, "{what}: width");
    assert!(
        ours.height.abs_diff(vh) <= 1,
        "{what}: height {} vs libvips' {vh}",
        ours.height
    );
    let ours = render(&data, region, width, Some(vh), OutputFormat::Png).unwrap();
    let (w, h, ch, ours_px) = png_pixels(&ours.bytes);
    assert_eq!((w, h), (vw, vh), "{what}: our size vs libvips'");
    assert_eq!(ch, vch, "{what}: channels");
    let db = psnr(&ours_px, &vips_px);
    println!("{what}: {w}x{h}, PSNR {db:.1} dB against libvips");
    assert!(db >= 35.0, "{what}: PSNR {db:.1} dB");
    db
}

#[test]
fn images_thumbnails_match_vipsthumbnail_within_35_db() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    test_picture(d, 1200, 800);
    // The same picture in every source format libvips writes.
    vips(
        d,
        &["copy", "source.jpg", "progressive.jpg[interlace,Q=92]"],
    );
    vips(d, &["colourspace", "source.jpg", "gray.jpg", "b-w"]);
    vips(d, &["copy", "source.jpg", "source.png"]);
    vips(d, &["colourspace", "source.jpg", "deep.png", "rgb16"]);
    vips(d, &["copy", "source.jpg", "lossy.webp[Q=90]"]);
    vips(d, &["copy", "source.jpg", "lossless.webp[lossless]"]);
    vips(d, &["copy", "source.jpg", "interlaced.png[interlace]"]);
    vips(d, &["copy", "source.jpg", "palette.gif"]);
    // An alpha channel: libvips and we both keep it in PNG.
    vips(d, &["bandjoin_const", "source.png", "alpha.png", "200"]);
    for name in [
        "source.jpg",
        "progressive.jpg",
        "gray.jpg",
        "source.png",
        "deep.png",
        "lossy.webp",
        "lossless.webp",
        "alpha.png",
        "interlaced.png",
        "palette.gif",
    ] {
        let reference = format!("vips-{name}.png");
        run(Command::new("vipsthumbnail")
            .current_dir(d)
            .args([name, "--size", "256", "-o"])
            .arg(&reference));
        compare(name, &d.join(name), None, 256, &d.join(&reference));
    }
}

#[test]
fn images_exif_orientation_matches_vipsthumbnail_autorotate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    test_picture(d, 900, 600);
    // Stored 900x600 (ffmpeg writes no EXIF) with EXIF orientation 6 added: shown 600x900.
    let mut data = std::fs::read(d.join("source.jpg")).unwrap();
    // Insert an APP1 EXIF segment with orientation 6 after SOI.
    let mut tiff = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0\0\0\0\0".to_vec();
    let mut app1 = b"Exif\0\0".to_vec();
    app1.append(&mut tiff);
    let mut seg = vec![0xFF, 0xE1];
    seg.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    seg.extend_from_slice(&app1);
    data.splice(2..2, seg);
    std::fs::write(d.join("oriented.jpg"), &data).unwrap();
    run(Command::new("vipsthumbnail").current_dir(d).args([
        "oriented.jpg",
        "--size",
        "256",
        "-o",
        "vips-oriented.png",
    ]));
    compare(
        "orientation 6",
        &d.join("oriented.jpg"),
        None,
        171,
        &d.join("vips-oriented.png"),
    );
}

#[test]
fn images_region_of_a_jpeg_matches_vips_crop_then_thumbnail() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    test_picture(d, 2048, 1536);
    // The IIIF tile 1024,512,1024,1024 at 1/4: 256x256, decoded by us at the 1/4 DCT scale.
    vips(
        d,
        &[
            "extract_area",
            "source.jpg",
            "crop.png",
            "1024",
            "512",
            "1024",
            "1024",
        ],
    );
    run(Command::new("vipsthumbnail").current_dir(d).args([
        "crop.png",
        "--size",
        "256",
        "-o",
        "vips-tile.png",
    ]));
    let tile = Rect {
        x: 1024,
        y: 512,
        w: 1024,
        h: 1024,
    };
    compare(
        "tile",
        &d.join("source.jpg"),
        Some(tile),
        256,
        &d.join("vips-tile.png"),
    );
}
