//! IIIF Image API 3.0 through the running gateway (issue 13): `info.json`, every parameter form
//! on an fs source and an S3 one (s3s-fs), the 400s naming each bad parameter, the upscale
//! rules, 304 on `If-None-Match`, a second request served from the cache with no origin read
//! (CountingOrigin), a token with `rep = ["original"]` refused (403), the audit record naming the
//! representation `derived` with the IIIF path, CORS for token requests, and the official IIIF
//! validator (`iiif-validate.py --version=3.0 --level 2`, installed into .venv by `tests/run`)
//! run against the gateway through a loopback proxy that adds the token header.
//!
//! The test image is the validator's own: 1000 x 1000 pixels in 10 x 10 squares of 100 pixels,
//! each of the colour its tests expect (`COLORS[x][y]`, from the validator's source), written
//! here as a PNG.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bucketgate::config::{AuditDestination, CacheConfig, SourceConfig};
use http::StatusCode;

use crate::support::origin::CountingOrigin;
use crate::support::{self, GatewayBuilder, TestGateway};

/// The validator's test image colours, `COLORS[column][row]`.
const COLORS: [[(u8, u8, u8); 10]; 10] = [
    [
        (61, 170, 126),
        (61, 107, 178),
        (82, 85, 234),
        (164, 122, 110),
        (129, 226, 88),
        (91, 37, 121),
        (138, 128, 42),
        (6, 85, 234),
        (121, 109, 204),
        (65, 246, 84),
    ],
    [
        (195, 133, 120),
        (171, 43, 102),
        (118, 45, 130),
        (242, 105, 171),
        (5, 85, 105),
        (113, 58, 41),
        (223, 69, 3),
        (45, 79, 140),
        (35, 117, 248),
        (121, 156, 184),
    ],
    [
        (168, 92, 163),
        (28, 91, 143),
        (86, 41, 173),
        (111, 230, 29),
        (174, 189, 7),
        (18, 139, 88),
        (93, 168, 128),
        (35, 2, 14),
        (204, 105, 137),
        (18, 86, 128),
    ],
    [
        (107, 55, 178),
        (251, 40, 184),
        (47, 36, 139),
        (2, 127, 170),
        (224, 12, 114),
        (133, 67, 108),
        (239, 174, 209),
        (85, 29, 156),
        (8, 55, 188),
        (240, 125, 7),
    ],
    [
        (112, 167, 30),
        (166, 63, 161),
        (232, 227, 23),
        (74, 80, 135),
        (79, 97, 47),
        (145, 160, 80),
        (45, 160, 79),
        (12, 54, 215),
        (203, 83, 70),
        (78, 28, 46),
    ],
    [
        (102, 193, 63),
        (225, 55, 91),
        (107, 194, 147),
        (167, 24, 95),
        (249, 214, 96),
        (167, 34, 136),
        (53, 254, 209),
        (172, 222, 21),
        (153, 77, 51),
        (137, 39, 183),
    ],
    [
        (159, 182, 192),
        (128, 252, 173),
        (148, 162, 90),
        (192, 165, 115),
        (154, 102, 2),
        (107, 237, 62),
        (111, 236, 219),
        (129, 113, 172),
        (239, 204, 166),
        (60, 96, 37),
    ],
    [
        (72, 172, 227),
        (119, 51, 100),
        (209, 85, 165),
        (87, 172, 159),
        (188, 42, 162),
        (99, 3, 54),
        (7, 42, 37),
        (105, 155, 100),
        (38, 220, 240),
        (98, 46, 2),
    ],
    [
        (18, 223, 145),
        (189, 121, 17),
        (88, 3, 210),
        (181, 16, 43),
        (189, 39, 244),
        (123, 147, 116),
        (246, 148, 214),
        (223, 177, 199),
        (77, 18, 136),
        (235, 36, 21),
    ],
    [
        (146, 137, 176),
        (84, 248, 55),
        (61, 144, 79),
        (110, 251, 49),
        (43, 105, 132),
        (165, 131, 55),
        (60, 23, 225),
        (147, 197, 226),
        (80, 67, 104),
        (161, 119, 182),
    ],
];

/// The identifier the validator is run with (its `-` is escaped as `%2D` by one of its tests).
const VALIDATOR_ID: &str = "67352ccc-d1b0-11e1-89ae-279075081939";

/// The 1000 x 1000 grid as an RGB PNG.
fn grid_png() -> Vec<u8> {
    let mut data = Vec::with_capacity(1000 * 1000 * 3);
    for y in 0..1000 {
        for x in 0..1000 {
            let (r, g, b) = COLORS[x / 100][y / 100];
            data.extend_from_slice(&[r, g, b]);
        }
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, 1000, 1000);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(&data).unwrap();
    writer.finish().unwrap();
    out
}

/// A decoded output: size and RGB (or gray) samples.
struct Decoded {
    width: u32,
    height: u32,
    channels: usize,
    data: Vec<u8>,
}

impl Decoded {
    fn rgb(&self, x: u32, y: u32) -> (u8, u8, u8) {
        let i = (y as usize * self.width as usize + x as usize) * self.channels;
        match self.channels {
            1 | 2 => (self.data[i], self.data[i], self.data[i]),
            _ => (self.data[i], self.data[i + 1], self.data[i + 2]),
        }
    }
}

fn decode(bytes: &[u8]) -> Decoded {
    if bytes.starts_with(b"\x89PNG") {
        let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
        dec.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        let channels = info.color_type.samples();
        Decoded {
            width: info.width,
            height: info.height,
            channels,
            data: buf,
        }
    } else {
        assert!(bytes.starts_with(&[0xFF, 0xD8]), "neither PNG nor JPEG");
        let mut dec = jpeg_decoder::Decoder::new(bytes);
        let data = dec.decode().unwrap();
        let info = dec.info().unwrap();
        let channels = match info.pixel_format {
            jpeg_decoder::PixelFormat::L8 => 1,
            _ => 3,
        };
        Decoded {
            width: u32::from(info.width),
            height: u32::from(info.height),
            channels,
            data,
        }
    }
}

fn near(a: (u8, u8, u8), b: (u8, u8, u8), tolerance: i32) -> bool {
    (i32::from(a.0) - i32::from(b.0)).abs() <= tolerance
        && (i32::from(a.1) - i32::from(b.1)).abs() <= tolerance
        && (i32::from(a.2) - i32::from(b.2)).abs() <= tolerance
}

/// A gateway over an fs source `local` holding the grid as `dir/grid.png` and `grid.png`.
async fn fs_gateway(
    tweak: impl FnOnce(&mut bucketgate::config::Config) + 'static,
) -> (TestGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let png = grid_png();
    support::write_file(dir.path(), "dir/grid.png", &png);
    support::write_file(dir.path(), "grid.png", &png);
    support::write_file(dir.path(), "notes.txt", b"not an image at all\n");
    let gw = GatewayBuilder::new()
        .source("local", support::fs_source(dir.path()))
        .tweak(tweak)
        .start()
        .await;
    (gw, dir)
}

async fn get(gw: &TestGateway, path: &str) -> reqwest::Response {
    gw.client().get(gw.url(path)).send().await.unwrap()
}

async fn json(r: reqwest::Response) -> serde_json::Value {
    assert_eq!(r.status(), StatusCode::OK);
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

async fn image(gw: &TestGateway, path: &str) -> Decoded {
    let r = get(gw, path).await;
    assert_eq!(r.status(), StatusCode::OK, "{path}: {:?}", r.text().await);
    let ctype = r.headers()["content-type"].to_str().unwrap().to_owned();
    let expected = if path.ends_with(".png") {
        "image/png"
    } else if path.ends_with(".webp") {
        "image/webp"
    } else {
        "image/jpeg"
    };
    assert_eq!(ctype, expected, "{path}");
    let body = r.bytes().await.unwrap();
    decode(&body)
}

#[tokio::test]
async fn iiif_info_json_describes_the_image() {
    let (gw, _dir) = fs_gateway(|_| {}).await;
    let r = get(&gw, "/iiif/3/local/dir%2Fgrid.png/info.json").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["cache-control"], "private");
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && !etag.starts_with("W/"), "{etag}");
    let info = json(r).await;
    assert_eq!(info["@context"], "http://iiif.io/api/image/3/context.json");
    assert_eq!(
        info["id"],
        format!("{}/iiif/3/local/dir%2Fgrid.png", gw.base())
    );
    assert_eq!(info["type"], "ImageService3");
    assert_eq!(info["protocol"], "http://iiif.io/api/image");
    assert_eq!(info["profile"], "level2");
    assert_eq!(
        (info["width"].as_u64(), info["height"].as_u64()),
        (Some(1000), Some(1000))
    );
    assert_eq!(info["maxWidth"], 8192);
    assert_eq!(info["maxHeight"], 8192);
    assert_eq!(info["maxArea"], 16_777_216);
    assert_eq!(info["sizes"][0]["width"], 1000);
    assert_eq!(info["tiles"][0]["width"], 512);
    assert_eq!(info["tiles"][0]["scaleFactors"], serde_json::json!([1, 2]));
    assert_eq!(info["extraFormats"], serde_json::json!(["png", "webp"]));
    assert_eq!(
        info["extraQualities"],
        serde_json::json!(["color", "gray", "bitonal"])
    );
    // JSON-LD when asked for.
    let r = gw
        .client()
        .get(gw.url("/iiif/3/local/grid.png/info.json"))
        .header("accept", "application/ld+json")
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/ld+json;profile=\"http://iiif.io/api/image/3/context.json\""),
    );
    // The base URI redirects to info.json (303), keeping the query.
    let client = gw
        .anon_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client
        .get(gw.url("/iiif/3/local/dir%2Fgrid.png?token=abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers()["location"],
        format!(
            "{}/iiif/3/local/dir%2Fgrid.png/info.json?token=abc",
            gw.base()
        )
        .as_str()
    );
    // A configured base_url names the public URL instead of the request's host.
    let (gw2, _dir2) = fs_gateway(|c| {
        c.images.base_url = Some("https://assets.example.com/gw".into());
    })
    .await;
    let info = json(get(&gw2, "/iiif/3/local/grid.png/info.json").await).await;
    assert_eq!(
        info["id"],
        "https://assets.example.com/gw/iiif/3/local/grid.png"
    );
}

#[tokio::test]
async fn iiif_every_parameter_form_renders_the_right_pixels() {
    let (gw, _dir) = fs_gateway(|_| {}).await;
    let base = "/iiif/3/local/grid.png";
    // Full, max: the whole grid.
    let img = image(&gw, &format!("{base}/full/max/0/default.png")).await;
    assert_eq!((img.width, img.height), (1000, 1000));
    assert_eq!(img.rgb(150, 350), COLORS[1][3]);
    // A pixel region: square (3,2).
    let img = image(&gw, &format!("{base}/300,200,100,100/max/0/default.png")).await;
    assert_eq!((img.width, img.height), (100, 100));
    assert!(near(img.rgb(50, 50), COLORS[3][2], 2));
    // A percent region: square (5,7).
    let img = image(&gw, &format!("{base}/pct:50,70,10,10/max/0/color.png")).await;
    assert_eq!((img.width, img.height), (100, 100));
    assert!(near(img.rgb(50, 50), COLORS[5][7], 2));
    // Clipped at the edge.
    let img = image(&gw, &format!("{base}/950,950,200,200/max/0/default.png")).await;
    assert_eq!((img.width, img.height), (50, 50));
    // square of a non-square region is square.
    let img = image(&gw, &format!("{base}/0,0,1000,400/max/0/default.jpg")).await;
    assert_eq!((img.width, img.height), (1000, 400));
    let img = image(&gw, &format!("{base}/square/max/0/default.jpg")).await;
    assert_eq!((img.width, img.height), (1000, 1000));
    // Sizes: w, ,h pct:n w,h !w,h.
    for (size, dims) in [
        ("500,", (500, 500)),
        (",250", (250, 250)),
        ("pct:20", (200, 200)),
        ("300,150", (300, 150)),
        ("!400,700", (400, 400)),
        ("^1500,", (1500, 1500)),
        ("^!2000,3000", (2000, 2000)),
        ("^pct:150", (1500, 1500)),
    ] {
        let img = image(&gw, &format!("{base}/full/{size}/0/default.jpg")).await;
        assert_eq!((img.width, img.height), dims, "{size}");
    }
    let img = image(&gw, &format!("{base}/full/500,/0/default.jpg")).await;
    assert!(near(img.rgb(75, 175), COLORS[1][3], 8));
    // Rotation 90: the top-left square comes from the bottom-left of the source.
    let img = image(&gw, &format!("{base}/0,0,1000,500/max/90/default.png")).await;
    assert_eq!((img.width, img.height), (500, 1000));
    assert!(near(img.rgb(50, 50), COLORS[0][4], 2));
    // Mirrored: the top-left square comes from the top-right.
    let img = image(&gw, &format!("{base}/full/max/!0/default.png")).await;
    assert!(near(img.rgb(50, 50), COLORS[9][0], 2));
    let img = image(&gw, &format!("{base}/full/max/180/default.png")).await;
    assert!(near(img.rgb(50, 50), COLORS[9][9], 2));
    // Qualities.
    let img = image(&gw, &format!("{base}/full/max/0/gray.png")).await;
    let (r, g, b) = img.rgb(500, 500);
    assert!(r == g && g == b);
    let img = image(&gw, &format!("{base}/full/200,/0/bitonal.png")).await;
    for (x, y) in [(10, 10), (55, 125), (199, 199)] {
        let (r, _, _) = img.rgb(x, y);
        assert!(r == 0 || r == 255, "bitonal pixel {r}");
    }
    // WebP.
    let r = get(&gw, &format!("{base}/full/100,/0/default.webp")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "image/webp");
    assert!(r.bytes().await.unwrap().starts_with(b"RIFF"));
}

#[tokio::test]
async fn iiif_bad_parameters_are_400_naming_them() {
    let (gw, _dir) = fs_gateway(|_| {}).await;
    let base = "/iiif/3/local/grid.png";
    for (path, names) in [
        ("junk/max/0/default.jpg", "invalid region"),
        ("0,0,0,10/max/0/default.jpg", "invalid region"),
        ("1000,0,10,10/max/0/default.jpg", "invalid region"),
        ("full/full/0/default.jpg", "invalid size"),
        ("full/0,/0/default.jpg", "invalid size"),
        ("full/1001,/0/default.jpg", "invalid size"),
        ("full/pct:101/0/default.jpg", "invalid size"),
        ("full/!2000,3000/0/default.jpg", "invalid size"),
        ("full/^9000,/0/default.jpg", "invalid size"),
        ("full/max/45/default.jpg", "invalid rotation"),
        ("full/max/abc/default.jpg", "invalid rotation"),
        ("full/max/0/native.jpg", "invalid quality"),
        ("full/max/0/default.gif", "invalid format"),
        ("full/max/0/default", "invalid format"),
    ] {
        let r = get(&gw, &format!("{base}/{path}")).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        let body = r.text().await.unwrap();
        assert!(body.contains(names), "{path}: {body}");
    }
    // Sent exactly as written (no client URL parser in between): a backslash is no separator.
    for (path, names) in [
        ("full/max/0/KO\\P0J.jpg", "invalid quality"),
        ("full/max/0/default.P\\d", "invalid format"),
    ] {
        let r = gw
            .raw_exact(
                support::Proto::H1,
                http::Method::GET,
                &format!("{base}/{path}"),
                &[("authorization", &format!("Bearer {}", gw.token().unwrap()))],
                bytes::Bytes::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(String::from_utf8_lossy(&r.body).contains(names), "{path}");
    }
    // Not an image: 415; a missing object: 404; a key with a raw slash: another route, 404.
    let r = get(&gw, "/iiif/3/local/notes.txt/info.json").await;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = get(&gw, "/iiif/3/local/nothing.png/info.json").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = get(&gw, "/iiif/3/local/dir/grid.png/full/max/0/default.jpg").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = get(&gw, "/iiif/3/local/a%00b/info.json").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = gw
        .client()
        .post(gw.url("/iiif/3/local/grid.png/info.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    // Images off: the routes are 404.
    let (off, _d) = fs_gateway(|c| c.images.enabled = false).await;
    let r = get(&off, "/iiif/3/local/grid.png/info.json").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn iiif_if_none_match_is_304_and_the_etag_follows_the_request_and_the_version() {
    let (gw, dir) = fs_gateway(|_| {}).await;
    let url = gw.url("/iiif/3/local/grid.png/full/100,/0/default.jpg");
    let r = gw.client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let r = gw
        .client()
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert_eq!(r.headers()["cache-control"], "private");
    // Another request, another ETag.
    let other = gw
        .client()
        .get(gw.url("/iiif/3/local/grid.png/full/101,/0/default.jpg"))
        .send()
        .await
        .unwrap();
    assert_ne!(other.headers()["etag"], etag.as_str());
    // A new version of the object, a new ETag: no 304.
    std::thread::sleep(Duration::from_millis(1100));
    let mut png = grid_png();
    png.extend_from_slice(&[0; 16]);
    support::write_file(dir.path(), "grid.png", &png);
    let r = gw
        .client()
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_ne!(r.headers()["etag"], etag.as_str());
}

fn memory_cache() -> CacheConfig {
    CacheConfig {
        memory_bytes: 64 << 20,
        chunk_bytes: 256 * 1024,
        metadata_ttl: Duration::from_secs(60),
        disk: None,
        bypass: Default::default(),
    }
}

#[tokio::test]
async fn iiif_a_second_request_is_served_from_the_cache_without_an_origin_read() {
    let origin = CountingOrigin::start().await;
    origin.put("grid.png", &grid_png());
    let gw = GatewayBuilder::new()
        .source(
            "o",
            SourceConfig::S3(support::s3::source(
                &origin.endpoint,
                "bucket",
                "",
                "test",
                "test",
            )),
        )
        .tweak(|c| c.cache = Some(memory_cache()))
        .start()
        .await;
    let path = "/iiif/3/o/grid.png/100,100,300,300/150,/0/default.png";
    let first = image(&gw, path).await;
    assert_eq!((first.width, first.height), (150, 150));
    let requests = origin.log().len();
    assert!(requests > 0 && !origin.gets_of("grid.png").is_empty());
    // The same request again, and info.json (its probe is remembered): no origin request.
    let second = image(&gw, path).await;
    assert_eq!(second.data, first.data);
    let r = get(&gw, "/iiif/3/o/grid.png/info.json").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(origin.log().len(), requests, "{:#?}", origin.log());
    // Another tile of the same version reads the object's bytes from the cache's chunks.
    let other = image(&gw, "/iiif/3/o/grid.png/0,0,100,100/max/0/default.png").await;
    assert!(near(other.rgb(10, 10), COLORS[0][0], 2));
    assert_eq!(origin.log().len(), requests);
}

#[tokio::test]
async fn iiif_identical_concurrent_requests_render_once() {
    let origin = CountingOrigin::start().await;
    origin.put("grid.png", &grid_png());
    let gw = GatewayBuilder::new()
        .source(
            "o",
            SourceConfig::S3(support::s3::source(
                &origin.endpoint,
                "bucket",
                "",
                "test",
                "test",
            )),
        )
        .start()
        .await;
    let gw = Arc::new(gw);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let gw = Arc::clone(&gw);
        tasks.spawn(async move {
            let r = get(&gw, "/iiif/3/o/grid.png/full/300,/90/gray.jpg").await;
            (r.status(), r.bytes().await.unwrap())
        });
    }
    let mut bodies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (status, body) = done.unwrap();
        assert_eq!(status, StatusCode::OK);
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    // Without a cache each render reads the whole file once: 16 requests, far fewer reads.
    let gets = origin.gets_of("grid.png").len();
    assert!(
        gets < 16,
        "{gets} GETs for 16 identical concurrent requests"
    );
}

#[tokio::test]
async fn iiif_on_s3s_fs_serves_info_and_tiles() {
    let s3 = support::s3::S3sFs::start("AKIDIIIF", "iiif-secret").await;
    s3.create_bucket("images").await;
    s3.put("images", "scans/grid.png", &grid_png(), Some("image/png"))
        .await;
    let gw = GatewayBuilder::new()
        .source("s3", SourceConfig::S3(s3.source("images", "")))
        .start()
        .await;
    let info = json(get(&gw, "/iiif/3/s3/scans%2Fgrid.png/info.json").await).await;
    assert_eq!(info["width"], 1000);
    let tile = image(
        &gw,
        "/iiif/3/s3/scans%2Fgrid.png/512,512,488,488/244,/0/default.png",
    )
    .await;
    assert_eq!((tile.width, tile.height), (244, 244));
    assert!(near(tile.rgb(100, 100), COLORS[7][7], 2));
}

#[tokio::test]
async fn iiif_a_token_for_originals_only_is_403_and_the_audit_names_derived() {
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("audit.log");
    let audit_path = log_path.clone();
    let (mut gw, _dir) = fs_gateway(move |c| {
        c.audit.destination = AuditDestination::File {
            path: audit_path,
            max_bytes: 10 << 20,
            keep: 1,
        };
    })
    .await;
    let anon = gw.anon_client_builder().build().unwrap();
    let send = async |path: &str, token: &str| {
        anon.get(gw.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
    };
    let original = support::token_with_rep(&["original"]);
    assert_eq!(send("/o/local/grid.png", &original).await, StatusCode::OK);
    assert_eq!(
        send("/iiif/3/local/grid.png/full/100,/0/default.jpg", &original).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send("/iiif/3/local/grid.png/info.json", &original).await,
        StatusCode::FORBIDDEN
    );
    let derived = support::token_with_rep(&["derived"]);
    assert_eq!(
        send("/iiif/3/local/grid.png/full/100,/0/default.jpg", &derived).await,
        StatusCode::OK
    );
    assert_eq!(
        send("/o/local/grid.png", &derived).await,
        StatusCode::FORBIDDEN
    );
    gw.take_gateway().shutdown().await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["kind"] == "request")
        .collect();
    let iiif: Vec<&serde_json::Value> = records.iter().filter(|r| r["route"] == "iiif").collect();
    assert_eq!(iiif.len(), 3, "{text}");
    for r in &iiif {
        assert_eq!(r["representation"], "derived", "{r}");
        assert_eq!(r["key"], "grid.png");
    }
    assert_eq!(iiif[0]["decision"], "deny");
    assert_eq!(iiif[0]["rule"], "rep excludes derived");
    assert_eq!(iiif[0]["params"], "full/100,/0/default.jpg");
    assert_eq!(iiif[1]["params"], "info.json");
    assert_eq!(iiif[2]["decision"], "allow");
    assert_eq!(iiif[2]["status"], 200);
}

#[tokio::test]
async fn iiif_cors_any_origin_only_for_cookieless_requests() {
    let (gw, _dir) = fs_gateway(|c| {
        c.cors.allowed_origins = vec!["https://label.example.com".into()];
        c.cors.any_origin_for_token_requests = true;
    })
    .await;
    let url = gw.url("/iiif/3/local/grid.png/info.json");
    let r = gw
        .client()
        .get(&url)
        .header("origin", "https://viewer.example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert!(
        r.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    // With a cookie: an unlisted origin gets nothing, a listed one itself with credentials.
    let r = gw
        .client()
        .get(&url)
        .header("origin", "https://viewer.example.org")
        .header("cookie", "other=1")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = gw
        .client()
        .get(&url)
        .header("origin", "https://label.example.com")
        .header("cookie", "other=1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://label.example.com"
    );
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    // A preflight for an Authorization header from any origin.
    let r = gw
        .anon_client_builder()
        .build()
        .unwrap()
        .request(http::Method::OPTIONS, &url)
        .header("origin", "https://viewer.example.org")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
}

/// A plain-HTTP loopback proxy in front of the gateway that adds the test token as an
/// `Authorization` header (the validator sends none) and passes everything else through,
/// redirects included. Answers on `addr` until dropped.
struct TokenProxy {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenProxy {
    async fn start(
        listener: tokio::net::TcpListener,
        gw_base: String,
        client: reqwest::Client,
    ) -> TokenProxy {
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (gw_base, client) = (gw_base.clone(), client.clone());
                conns.spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (gw_base, client) = (gw_base.clone(), client.clone());
                        async move {
                            // reqwest's URL parser reads `\\` as `/` in an https URL (the
                            // validator's random parameters contain some): sent escaped, so
                            // the gateway sees one segment as the validator wrote it.
                            let path = req
                                .uri()
                                .path_and_query()
                                .map_or("/", |p| p.as_str())
                                .replace('\\', "%5C");
                            let mut out =
                                client.request(req.method().clone(), format!("{gw_base}{path}"));
                            for (name, value) in req.headers() {
                                if name != http::header::HOST && name != http::header::CONNECTION {
                                    out = out.header(name, value);
                                }
                            }
                            let resp = out.send().await.unwrap();
                            let mut b = http::Response::builder().status(resp.status());
                            for (name, value) in resp.headers() {
                                if name != http::header::TRANSFER_ENCODING
                                    && name != http::header::CONNECTION
                                {
                                    b = b.header(name, value);
                                }
                            }
                            let body = resp.bytes().await.unwrap();
                            Ok::<_, std::convert::Infallible>(
                                b.body(http_body_util::Full::new(body)).unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TokenProxy { addr, task }
    }
}

/// `.venv/bin/iiif-validate.py` (what `tests/run` installs), else one on `PATH`.
fn validator() -> std::path::PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/iiif-validate.py");
    if venv.is_file() {
        return venv;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("iiif-validate.py"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "iiif-validate.py not found: run ./tests/run (installs iiif-validator into .venv)"
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn iiif_the_official_validator_passes_every_level_2_test() {
    let validate = validator();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_base = format!("http://{}", listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    support::write_file(dir.path(), VALIDATOR_ID, &grid_png());
    let base_url = proxy_base.clone();
    let gw = GatewayBuilder::new()
        .source("v", support::fs_source(dir.path()))
        .tweak(move |c| {
            c.images.base_url = Some(base_url);
            c.cors.any_origin_for_token_requests = true;
        })
        .start()
        .await;
    let token = gw.token().unwrap().to_owned();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    let client = gw
        .anon_client_builder()
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let proxy = TokenProxy::start(listener, gw.base(), client).await;
    let proxy_addr = proxy.addr.to_string();
    // The validator blocks; the proxy and the gateway keep serving on this runtime's workers.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&validate)
            .args([
                "-s",
                &proxy_addr,
                "-p",
                "iiif/3/v",
                "-i",
                VALIDATOR_ID,
                "--version=3.0",
                "--level",
                "2",
            ])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "validator failed:\n{report}");
    assert!(
        report.contains("failures)") && report.contains(", 0 failures)"),
        "{report}"
    );
    let passed = report.lines().filter(|l| l.ends_with(" PASS")).count();
    assert!(passed >= 30, "only {passed} tests ran:\n{report}");
}

#[tokio::test]
async fn iiif_explain_names_the_derived_representation_and_its_parameters() {
    let dry = support::DryRunConfig::load();
    let both = support::token_with_rep(&["original", "derived"]);
    let out = dry
        .explain(
            "/iiif/3/local/a%2Fb.png/0,0,10,10/^pct:150/!90/gray.png",
            &both,
        )
        .await;
    assert!(
        out.contains(
            "plan:      source local key a/b.png representation derived \
             0,0,10,10/^pct:150/!90/gray.png (would be derived)"
        ),
        "{out}"
    );
    let out = dry.explain("/iiif/3/local/a.png/info.json", &both).await;
    assert!(out.contains("representation derived info.json"), "{out}");
    let original = support::token_with_rep(&["original"]);
    let out = dry
        .explain("/iiif/3/local/a.png/info.json", &original)
        .await;
    assert!(
        out.contains("authorize: refuse (403): rep excludes derived"),
        "{out}"
    );
    let out = dry
        .explain("/iiif/3/local/a.png/full/max/45/default.jpg", &both)
        .await;
    assert!(
        out.contains("request:   refuse (400): invalid rotation"),
        "{out}"
    );
}
