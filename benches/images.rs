#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Criterion benches for the CPU half of a derived image (issue 13), on one thread, no I/O: the
//! header probe, the IIIF request parsed and resolved, then decode + resize + encode
//! (`decode::render`) of a 256 px JPEG thumbnail (`full/!256,256/0/default.jpg`) from a
//! 6000x4000 JPEG, noisy (every block busy, as the 12 MB ffmpeg file) and smooth (a
//! camera-like gradient with mild noise); and a 256 px thumbnail of a 2000x1500 PNG (no
//! reduced-size decode there). The inputs are encoded here (jpeg-encoder, png), so the bench
//! needs no tool. benches/images.sh measures the same through the gateway against
//! vipsthumbnail.

use std::hint::black_box;

use bucketgate::image::decode::{self, Probed};
use bucketgate::image::iiif::{self, ImageRequest};
use bucketgate::image::{ImageLimits, SourceFormat, SourceImage};
use criterion::{Criterion, criterion_group, criterion_main};

/// splitmix64, for reproducible noise.
fn noise(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// RGB pixels: a diagonal gradient with edges, plus noise of amplitude `amp` (0-255).
fn picture(w: usize, h: usize, amp: u8) -> Vec<u8> {
    let mut seed = 0x13;
    let mut px = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let band = if (x / 500 + y / 400) % 2 == 0 { 30 } else { 0 };
            let base = [
                (x * 200 / w) as u8 + band,
                (y * 200 / h) as u8 + band,
                ((x + y) * 120 / (w + h)) as u8 + 60,
            ];
            let n = noise(&mut seed);
            for (c, b) in base.into_iter().enumerate() {
                let d = if amp == 0 {
                    0
                } else {
                    ((n >> (c * 8)) & 0xff) as i32 % i32::from(amp) - i32::from(amp) / 2
                };
                px.push((i32::from(b) + d).clamp(0, 255) as u8);
            }
        }
    }
    px
}

fn jpeg(w: usize, h: usize, amp: u8) -> Vec<u8> {
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(
            &picture(w, h, amp),
            w as u16,
            h as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .unwrap();
    out
}

fn png_file(w: usize, h: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(&picture(w, h, 8)).unwrap();
    }
    out
}

fn probe(data: &[u8], limits: &ImageLimits) -> SourceImage {
    let format = decode::sniff(data).unwrap();
    assert_ne!(format, SourceFormat::Tiff);
    match decode::probe(format, data, data.len() as u64, limits).unwrap() {
        Probed::Image(image) => image,
        Probed::NeedBytes(n) => panic!("the whole file is short of the header ({n} bytes)"),
    }
}

fn bench(c: &mut Criterion) {
    let limits = ImageLimits::default();
    let thumb = ImageRequest::parse("full", "!256,256", "0", "default.jpg").unwrap();
    let inputs = [
        ("jpeg_6000x4000_noisy", jpeg(6000, 4000, 120)),
        ("jpeg_6000x4000_smooth", jpeg(6000, 4000, 10)),
        ("png_2000x1500", png_file(2000, 1500)),
    ];
    let mut group = c.benchmark_group("thumbnail_256");
    group.sample_size(10);
    for (name, data) in &inputs {
        group.bench_function(*name, |b| {
            b.iter(|| {
                let image = probe(black_box(data), &limits);
                let op = iiif::resolve(&thumb, &image, &limits).unwrap();
                let out = decode::render(data, &image, &op, &limits).unwrap();
                assert!(out.width <= 256 && out.height <= 256);
                black_box(out.bytes.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
