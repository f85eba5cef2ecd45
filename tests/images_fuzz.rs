//! A mutation run over the image decoders (issue 13): valid JPEG (baseline and progressive),
//! PNG (RGB and palette), WebP, GIF and TIFF (a tiled JPEG pyramid and a Deflate strip file)
//! made with `vips`, each mutated by a seeded generator (byte flips, most of them in the
//! headers; random bytes; truncation; a duplicated run) and requested through the gateway as
//! `info.json` and as a small PNG thumbnail. Every answer must be a 2xx with a complete image,
//! a 4xx, or 503 (busy or over the job's time limit): never another 5xx. Afterwards the gateway
//! still serves every original.
//!
//! The seed is fixed (reproducible; `BUCKETGATE_FUZZ_SEED` picks another, `BUCKETGATE_FUZZ_CASES`
//! another count); a failure names the case, its source file and its mutations.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{self, GatewayBuilder};

const DEFAULT_SEED: u64 = 0x1313_1313_5eed_0001;
const DEFAULT_CASES: usize = 300;
/// Requests in flight at once: enough to exercise the pool, few enough for a 2-core CI box.
const PARALLEL: usize = 4;

/// splitmix64: a tiny, well-mixed, seedable generator (no `rand` dependency for one test).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A 320x240 picture with gradients, edges and a little texture (so every codec has real work),
/// as a binary PPM for `vips`.
fn write_ppm(path: &Path) {
    let (w, h) = (320usize, 240usize);
    let mut ppm = format!("P6\n{w} {h}\n255\n").into_bytes();
    for y in 0..h {
        for x in 0..w {
            let checker = if (x / 16 + y / 16) % 2 == 0 { 40 } else { 0 };
            ppm.extend_from_slice(&[
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                (((x ^ y) & 0x3f) as u8).wrapping_add(checker),
            ]);
        }
    }
    std::fs::write(path, ppm).unwrap();
}

fn vips(args: &[&str]) {
    let out = Command::new("vips")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("vips: {e} (tests/run installs libvips-tools)"));
    assert!(
        out.status.success(),
        "vips {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The valid seeds of the run, by key: `(key, bytes)`.
fn make_originals(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let ppm = dir.join("src.ppm");
    write_ppm(&ppm);
    let ppm = ppm.to_str().unwrap();
    let out = |name: &str| -> PathBuf { dir.join(name) };
    let targets = [
        ("baseline.jpg", "[Q=85]"),
        ("progressive.jpg", "[Q=85,interlace]"),
        ("rgb.png", ""),
        ("palette.png", "[palette]"),
        ("lossy.webp", "[Q=80]"),
        ("frame.gif", ""),
    ];
    for (name, opts) in targets {
        vips(&["copy", ppm, &format!("{}{opts}", out(name).display())]);
    }
    let pyramid = out("pyramid.tif");
    vips(&[
        "tiffsave",
        ppm,
        pyramid.to_str().unwrap(),
        "--tile",
        "--pyramid",
        "--compression",
        "jpeg",
        "--tile-width",
        "64",
        "--tile-height",
        "64",
    ]);
    let strips = out("strips.tif");
    vips(&[
        "tiffsave",
        ppm,
        strips.to_str().unwrap(),
        "--compression",
        "deflate",
    ]);
    let mut names: Vec<&str> = targets.iter().map(|(n, _)| *n).collect();
    names.extend(["pyramid.tif", "strips.tif"]);
    let originals = names
        .into_iter()
        .map(|n| (n.to_owned(), std::fs::read(out(n)).unwrap()))
        .collect();
    std::fs::remove_file(dir.join("src.ppm")).unwrap();
    originals
}

/// Mutate `bytes` in place; returns what was done (for the failure message).
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) -> String {
    let len = bytes.len();
    let mut done = Vec::new();
    match rng.below(10) {
        // Flips, mostly in the first KiB, where headers, tables and directories live.
        0..=5 => {
            for _ in 0..1 + rng.below(8) {
                let span = if rng.below(4) < 3 { len.min(1024) } else { len };
                let at = rng.below(span);
                let bit = 1u8 << rng.below(8);
                bytes[at] ^= bit;
                done.push(format!("flip {at}^{bit:#04x}"));
            }
        }
        // Random bytes anywhere.
        6 | 7 => {
            for _ in 0..1 + rng.below(16) {
                let at = rng.below(len);
                let v = rng.next() as u8;
                bytes[at] = v;
                done.push(format!("set {at}={v:#04x}"));
            }
        }
        // Truncation.
        8 => {
            let to = rng.below(len);
            bytes.truncate(to);
            done.push(format!("truncate {to}"));
        }
        // A run copied over another place (duplicated markers, chunks, IFD entries).
        _ => {
            let from = rng.below(len);
            let n = 1 + rng.below(64).min(len - from);
            let to = rng.below(len.saturating_sub(n).max(1));
            let run = bytes[from..from + n].to_vec();
            let end = (to + n).min(len);
            bytes[to..end].copy_from_slice(&run[..end - to]);
            done.push(format!("copy {from}+{n}->{to}"));
        }
    }
    done.join(",")
}

/// Allowed: 2xx, 304, 4xx, 503. Anything else is a finding.
fn acceptable(status: u16) -> bool {
    (200..300).contains(&status) || (400..500).contains(&status) || status == 503
}

/// A 2xx thumbnail must be a whole PNG of the size asked for (`64,` wide).
fn check_png(body: &[u8]) -> Result<(), String> {
    let decoder = png::Decoder::new(std::io::Cursor::new(body));
    let mut reader = decoder.read_info().map_err(|e| format!("not a PNG: {e}"))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| "no buffer size".to_owned())?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("a partial PNG: {e}"))?;
    if info.width != 64 {
        return Err(format!("{}x{} (want 64 wide)", info.width, info.height));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutated_images_get_4xx_or_an_image_never_5xx() {
    let seed = env_or("BUCKETGATE_FUZZ_SEED", DEFAULT_SEED);
    let cases = env_or("BUCKETGATE_FUZZ_CASES", DEFAULT_CASES);
    let dir = tempfile::tempdir().unwrap();
    let originals = make_originals(dir.path());
    let (gw, root) = GatewayBuilder::new().start_fs("imgs").await;
    for (key, bytes) in &originals {
        support::write_file(root.path(), key, bytes);
    }
    let client = gw.client();

    // Every original renders before the run: the mutations start from valid files.
    for (key, _) in &originals {
        let url = gw.url(&format!("/iiif/3/imgs/{key}/full/64,/0/default.png"));
        let resp = client.get(&url).send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap();
        assert_eq!(
            status,
            200,
            "original {key}: {}",
            String::from_utf8_lossy(&body)
        );
        check_png(&body).unwrap_or_else(|e| panic!("original {key}: {e}"));
    }

    // The cases, written first (deterministic from the seed), then requested PARALLEL at once.
    let mut rng = Rng(seed);
    let mut jobs = Vec::with_capacity(cases);
    for i in 0..cases {
        let (name, bytes) = &originals[rng.below(originals.len())];
        let mut bytes = bytes.clone();
        let what = mutate(&mut rng, &mut bytes);
        let key = format!("m{i:04}-{name}");
        support::write_file(root.path(), &key, &bytes);
        jobs.push((i, key, format!("{name}: {what}")));
    }
    let gate = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut tasks = Vec::new();
    for (i, key, what) in jobs {
        let permit = Arc::clone(&gate).acquire_owned().await.unwrap();
        let client = client.clone();
        let info = gw.url(&format!("/iiif/3/imgs/{key}/info.json"));
        let thumb = gw.url(&format!("/iiif/3/imgs/{key}/full/64,/0/default.png"));
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let mut findings = Vec::new();
            let mut statuses = Vec::new();
            for (kind, url) in [("info.json", info), ("thumbnail", thumb)] {
                let resp = match client
                    .get(&url)
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                {
                    Ok(resp) => resp,
                    Err(e) => {
                        findings.push(format!("case {i} ({what}) {kind}: no answer: {e}"));
                        continue;
                    }
                };
                let status = resp.status().as_u16();
                statuses.push(status);
                let body = match resp.bytes().await {
                    Ok(body) => body,
                    Err(e) => {
                        findings.push(format!(
                            "case {i} ({what}) {kind}: {status} with a broken body: {e}"
                        ));
                        continue;
                    }
                };
                if !acceptable(status) {
                    findings.push(format!(
                        "case {i} ({what}) {kind}: {status} {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    ));
                } else if status == 200 && kind == "thumbnail" {
                    if let Err(e) = check_png(&body) {
                        findings.push(format!("case {i} ({what}) thumbnail: 200 but {e}"));
                    }
                } else if status == 200 {
                    let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&body);
                    if parsed.map_or(true, |v| v["width"].as_u64().is_none()) {
                        findings.push(format!(
                            "case {i} ({what}) info.json: 200 but not an info.json"
                        ));
                    }
                }
            }
            (findings, statuses)
        }));
    }
    let mut findings = Vec::new();
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for task in tasks {
        let (found, statuses) = task.await.expect("a case task panicked");
        findings.extend(found);
        for s in statuses {
            *by_status.entry(s).or_default() += 1;
        }
    }
    eprintln!("images_fuzz: seed {seed:#x}, {cases} cases, statuses {by_status:?}");
    assert!(
        findings.is_empty(),
        "seed {seed:#x}, {cases} cases: {} findings:\n{}",
        findings.len(),
        findings.join("\n")
    );

    // The run exercised both outcomes: some mutants still render, some are refused.
    let ok = by_status.range(200..300).map(|(_, n)| n).sum::<usize>();
    let refused = by_status.range(400..500).map(|(_, n)| n).sum::<usize>();
    assert!(
        ok > 0 && refused > 0,
        "a mutation run where nothing rendered or nothing was refused: {by_status:?}"
    );

    // The gateway keeps serving: every original still renders, and a plain object is served.
    for (key, bytes) in &originals {
        let url = gw.url(&format!("/iiif/3/imgs/{key}/full/64,/0/default.png"));
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "after the run: {key}");
        check_png(&resp.bytes().await.unwrap())
            .unwrap_or_else(|e| panic!("after the run: {key}: {e}"));
        let raw = client
            .get(gw.url(&format!("/o/imgs/{key}")))
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status().as_u16(), 200, "after the run: /o/imgs/{key}");
        assert_eq!(raw.bytes().await.unwrap().as_ref(), bytes.as_slice());
    }
}
