//! A real tile viewer in a real browser (issue 13): OpenSeadragon 4.1.1 from npm (installed into
//! `tests/node` by `tests/run`) in Debian's headless chromium opens a pyramidal BigTIFF through
//! the gateway's IIIF Image API, cross-origin: the page comes from a second loopback server (a
//! different port is a different origin), the gateway lists that origin in `[cors]`, and
//! OpenSeadragon sends the token as `Authorization: Bearer` on `info.json` and every tile
//! (`loadTilesWithAjax` + `ajaxHeaders`, so each request is preflighted). The image is four
//! flat-coloured quadrants; a screenshot of the viewer must show each colour where it belongs.
//!
//! chromium and chromedriver are [`Browser`] guards, the page server a task of the test's
//! runtime: nothing outlives the test. Every wait polls a condition up to a deadline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bucketgate::config::CorsConfig;
use serde_json::{Value, json};

use crate::support::GatewayBuilder;
use crate::support::browser::{self, Browser};

/// The test image: WIDTH x HEIGHT, four quadrants of these colours (top-left, top-right,
/// bottom-left, bottom-right), saturated and far apart so JPEG tiles keep them recognisable.
const WIDTH: usize = 2048;
const HEIGHT: usize = 1536;
const QUADRANTS: [[u8; 3]; 4] = [[230, 20, 20], [20, 200, 40], [30, 40, 220], [240, 220, 30]];
/// The viewer's size in CSS pixels: the image's aspect ratio, so the home view fills it.
const VIEW_W: u32 = 800;
const VIEW_H: u32 = 600;
/// Per-channel tolerance of the pixel check (JPEG tiles, resampling, colour management).
const TOLERANCE: i32 = 40;

/// The quadrant image as a binary PPM, then a tiled JPEG pyramid in a BigTIFF, as a slide
/// scanner or `vips` would write it.
fn make_pyramid(dir: &Path) -> PathBuf {
    let mut ppm = format!("P6\n{WIDTH} {HEIGHT}\n255\n").into_bytes();
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            let q = usize::from(x >= WIDTH / 2) + 2 * usize::from(y >= HEIGHT / 2);
            ppm.extend_from_slice(&QUADRANTS[q]);
        }
    }
    let src = dir.join("quadrants.ppm");
    std::fs::write(&src, ppm).unwrap();
    let out = dir.join("slide.tif");
    let status = Command::new("vips")
        .arg("tiffsave")
        .arg(&src)
        .arg(&out)
        .args([
            "--tile",
            "--pyramid",
            "--bigtiff",
            "--compression",
            "jpeg",
            "--Q",
            "90",
        ])
        .args(["--tile-width", "256", "--tile-height", "256"])
        .status()
        .unwrap_or_else(|e| panic!("vips: {e} (tests/run installs libvips-tools)"));
    assert!(status.success(), "vips tiffsave failed");
    std::fs::remove_file(&src).unwrap();
    out
}

/// The viewer page: OpenSeadragon on `info_url`, the token on every request it makes, and
/// its events recorded in `window.osd` for the test to poll.
fn viewer_page(info_url: &str, token: &str) -> String {
    let headers = json!({ "Authorization": format!("Bearer {token}") });
    // The headers go on the tile source as well as the viewer: OpenSeadragon 4.1.1 fetches a
    // tile source given as a bare URL string without the viewer's `ajaxHeaders` (an empty
    // per-image object wins over them), so `info.json` went out without the token (401).
    let config = json!({
        "id": "viewer",
        "tileSources": [{ "tileSource": info_url, "ajaxHeaders": headers }],
        "loadTilesWithAjax": true,
        "ajaxHeaders": headers,
        "showNavigationControl": false,
        "animationTime": 0,
        "blendTime": 0,
        "immediateRender": true,
        "preserveImageSizeOnResize": true,
    });
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>IIIF viewer</title>
<style>html, body {{ margin: 0; padding: 0; background: #000; overflow: hidden; }}
#viewer {{ position: absolute; left: 0; top: 0; width: {VIEW_W}px; height: {VIEW_H}px; background: #000; }}</style>
<script src="/openseadragon.min.js"></script></head>
<body><div id="viewer"></div>
<script>
window.osd = {{ opened: false, openFailed: null, fullyLoaded: false, tilesLoaded: 0, tilesFailed: [] }};
const viewer = OpenSeadragon({config});
viewer.addHandler("open", () => {{
  window.osd.opened = true;
  const item = viewer.world.getItemAt(0);
  item.addHandler("fully-loaded-change", (e) => {{ window.osd.fullyLoaded = e.fullyLoaded; }});
  window.osd.fullyLoaded = item.getFullyLoaded();
}});
viewer.addHandler("open-failed", (e) => {{ window.osd.openFailed = String(e.message); }});
viewer.addHandler("tile-loaded", () => {{ window.osd.tilesLoaded += 1; }});
viewer.addHandler("tile-load-failed", (e) => {{ window.osd.tilesFailed.push(String(e.message)); }});
</script></body></html>"#
    )
}

/// Poll `window.osd` until `done` accepts it; panics with the last state after `within`.
async fn wait_osd(
    browser: &Browser,
    what: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let state = browser
            .execute("return window.osd || null;", json!([]))
            .await;
        if done(&state) {
            return state;
        }
        assert!(
            state["openFailed"].is_null()
                && state["tilesFailed"].as_array().is_none_or(Vec::is_empty),
            "OpenSeadragon failed while waiting for {what}: {state}"
        );
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; last state {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The RGB of the screenshot pixel at (`x`, `y`) in device pixels.
fn pixel(png_bytes: &[u8], x: u32, y: u32) -> [u8; 3] {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().expect("screenshot is a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("screenshot buffer size")];
    let info = reader.next_frame(&mut buf).expect("screenshot decodes");
    assert!(
        x < info.width && y < info.height,
        "({x}, {y}) outside the {}x{} screenshot",
        info.width,
        info.height
    );
    let channels = info.color_type.samples();
    let at = (y as usize * info.width as usize + x as usize) * channels;
    match channels {
        1 | 2 => [buf[at]; 3],
        _ => [buf[at], buf[at + 1], buf[at + 2]],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openseadragon_shows_a_pyramid_cross_origin_with_a_token() {
    let js = browser::node_module(
        "openseadragon/build/openseadragon/openseadragon.min.js",
        "OpenSeadragon",
    );
    let dir = tempfile::tempdir().unwrap();
    make_pyramid(dir.path());

    // The page's origin goes into [cors] before the gateway starts; the page needs the
    // gateway's address. So the page server's socket is bound first and served afterwards.
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", page_listener.local_addr().unwrap());
    let gw = GatewayBuilder::new()
        .source("slides", crate::support::fs_source(dir.path()))
        .tweak(|c| {
            c.cors = CorsConfig {
                allowed_origins: vec![page_origin.clone()],
                ..CorsConfig::default()
            }
        })
        .start()
        .await;
    let token = gw.token().expect("test token").to_owned();
    let info_url = gw.url("/iiif/3/slides/slide.tif/info.json");

    // Before the browser: info.json answers and describes the pyramid.
    let info = gw
        .client()
        .get(&info_url)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let info: Value = serde_json::from_slice(&info).expect("info.json is JSON");
    assert_eq!(info["width"], WIDTH, "{info}");
    assert_eq!(info["height"], HEIGHT, "{info}");

    browser::serve_page(
        page_listener,
        vec![
            (
                "/",
                "text/html; charset=utf-8",
                viewer_page(&info_url, &token).into_bytes(),
            ),
            ("/openseadragon.min.js", "text/javascript", js),
        ],
    );
    let page = page_origin;

    let browser = Browser::start().await;
    browser.set_window_size(VIEW_W + 200, VIEW_H + 200).await;
    browser.goto(&format!("{page}/")).await;
    let state = wait_osd(
        &browser,
        "OpenSeadragon to open info.json",
        Duration::from_secs(30),
        |s| s["opened"] == true,
    )
    .await;
    assert!(state["openFailed"].is_null(), "{state}");
    let state = wait_osd(
        &browser,
        "every tile of the view",
        Duration::from_secs(60),
        |s| s["fullyLoaded"] == true,
    )
    .await;
    assert!(state["tilesLoaded"].as_u64().unwrap_or(0) >= 1, "{state}");

    // The tiles came from the gateway's origin, through its IIIF route.
    let gateway_tiles = browser
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)\
                 .filter(n => n.startsWith(arguments[0]) && !n.endsWith('/info.json'));",
            json!([gw.url("/iiif/3/slides/slide.tif/")]),
        )
        .await;
    let gateway_tiles = gateway_tiles.as_array().cloned().unwrap_or_default();
    assert!(
        !gateway_tiles.is_empty(),
        "no tile request to the gateway seen by the page"
    );

    // The viewer's box in device pixels, then one sample in the middle of each quadrant.
    let rect = browser
        .execute(
            "const r = document.getElementById('viewer').getBoundingClientRect();\
             return [r.left, r.top, r.width, r.height, window.devicePixelRatio];",
            json!([]),
        )
        .await;
    let f = |i: usize| rect[i].as_f64().unwrap();
    let (left, top, width, height, dpr) = (f(0), f(1), f(2), f(3), f(4));
    let shot = browser.screenshot_png().await;
    let mut report = Vec::new();
    let mut wrong = 0;
    for (q, want) in QUADRANTS.iter().enumerate() {
        let fx = if q % 2 == 0 { 0.25 } else { 0.75 };
        let fy = if q < 2 { 0.25 } else { 0.75 };
        let x = ((left + width * fx) * dpr) as u32;
        let y = ((top + height * fy) * dpr) as u32;
        let got = pixel(&shot, x, y);
        let off = (0..3)
            .map(|c| (i32::from(got[c]) - i32::from(want[c])).abs())
            .max()
            .unwrap();
        if off > TOLERANCE {
            wrong += 1;
        }
        report.push(format!(
            "quadrant {q} at ({x},{y}): want {want:?}, got {got:?}"
        ));
    }
    if wrong > 0 {
        let keep = std::env::temp_dir().join("iiif_browser_screenshot.png");
        std::fs::write(&keep, &shot).unwrap();
        panic!(
            "the screenshot does not show the image ({}); kept as {}",
            report.join("; "),
            keep.display()
        );
    }
}
