//! A real labeling tool in a real browser (issue 16): Label Studio 1.23.2 from PyPI (its own
//! venv, `.venv-labelstudio`, installed by `tests/run`) with an image task and a video task whose
//! URLs are bucketgate signed URLs with a short `exp` and a use window (`idle`, `max`), opened in
//! headless chromium. The image renders at its natural size, the video plays, and after `exp`
//! has passed it still seeks (a new Range request the use window lets through); the audit log
//! shows those Range requests with Label Studio's Origin and `"cors":"allowed"`.
//!
//! Label Studio, chromedriver and chromium are [`ChildGuard`]s: they die with the test, passed
//! or panicked. Every wait polls a condition up to a deadline.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bucketgate::config::{AuditDestination, CorsConfig};
use serde_json::{Value, json};

use crate::support::browser::Browser;
use crate::support::process::ChildGuard;
use crate::support::{self, GatewayBuilder};

/// How long a minted URL may wait for its first use. Short: the test waits it out before the
/// seek, which must then be let through by the use window alone.
const EXP_SECS: u64 = 30;
/// The use window: a URL in use stays valid while used at least every `IDLE_SECS`, up to
/// `MAX_SECS` after its first use.
const IDLE_SECS: u64 = 300;
const MAX_SECS: u64 = 900;
/// Label Studio starts on a copy of the template database `tests/run` migrated (a fresh one
/// costs 30-150 s of migrations): about 20 s on 2 busy cores.
const LABEL_STUDIO_START: Duration = Duration::from_secs(120);
/// Frame rate of the test video, and what the labeling config tells Label Studio.
const FRAME_RATE: u32 = 25;
const VIDEO_SECS: u32 = 40;
/// Where the test seeks after `exp`: far beyond what chromium buffered while playing the start,
/// so the seek needs a new Range request.
const SEEK_TO: f64 = 33.0;
const USERNAME: &str = "labeler@example.com";
const PASSWORD: &str = "bucketgate-test-pw-1";
/// A legacy API token (`--user-token`, `--enable-legacy-api-token`) for the REST calls.
const API_TOKEN: &str = "0123456789abcdef0123456789abcdef01234567";

fn label_studio_venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-labelstudio")
}

/// A free port on 127.0.0.1 for Label Studio (Django's runserver cannot bind port 0 and tell).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ffmpeg: {e} (tests/run installs it)"));
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PNG's width and height, from its IHDR chunk.
fn png_size(path: &Path) -> (u64, u64) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let be = |b: &[u8]| u64::from(u32::from_be_bytes(b.try_into().unwrap()));
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signed URL for one object with the use-window claims, minted as a labeling app's backend
/// would (HS256 under the test key).
fn signed_url(base: &str, key: &str, exp: u64) -> String {
    let now = unix_now();
    let token = support::mint(&json!({
        "sub": "labeler",
        "aud": support::TEST_AUDIENCE,
        "iat": now,
        "exp": exp,
        "jti": uuid::Uuid::new_v4().simple().to_string(),
        "scope": [format!("local:exact/{key}")],
        "role": "annotator",
        "idle": IDLE_SECS,
        "max": MAX_SECS,
    }));
    format!("{base}/o/local/{key}?token={token}")
}

/// Label Studio, running, with its log file for failure messages.
struct LabelStudio {
    guard: ChildGuard,
    base: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl LabelStudio {
    fn spawn(dir: &Path) -> LabelStudio {
        let venv = label_studio_venv();
        let bin = venv.join("bin/label-studio");
        let template = venv.join("bucketgate-db/label_studio.sqlite3");
        for needed in [&bin, &template] {
            assert!(
                needed.exists(),
                "{} is missing: run ./tests/run, which installs Label Studio 1.23.2 and \
                 migrates its template database",
                needed.display()
            );
        }
        let data = dir.join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::copy(&template, data.join("label_studio.sqlite3")).unwrap();
        let port = free_port();
        let log = dir.join("label-studio.log");
        let out = std::fs::File::create(&log).unwrap();
        let guard = ChildGuard::spawn_group(
            "label-studio",
            Command::new(&bin)
                .args(["start", "--no-browser", "--data-dir"])
                .arg(&data)
                .args(["--internal-host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--username", USERNAME, "--password", PASSWORD])
                .args(["--user-token", API_TOKEN, "--enable-legacy-api-token"])
                // Everything under the test's directory, nothing in ~/.local/share; no calls
                // home (PyPI version check, analytics).
                .env("LABEL_STUDIO_BASE_DATA_DIR", &data)
                .env("LATEST_VERSION_CHECK", "false")
                .env("COLLECT_ANALYTICS", "false")
                .env("SENTRY_DSN", "")
                .env("FRONTEND_SENTRY_DSN", "")
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out),
        );
        LabelStudio {
            guard,
            base: format!("http://127.0.0.1:{port}"),
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    fn log_tail(&self) -> String {
        let mut bytes = Vec::new();
        let _ = std::fs::File::open(&self.log).map(|mut f| f.read_to_end(&mut bytes));
        let start = bytes.len().saturating_sub(4000);
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Poll `/health` until it answers 200, Label Studio exits, or the deadline passes.
    async fn wait_ready(&mut self) -> Duration {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.guard.child().try_wait() {
                panic!("label-studio exited ({status}):\n{}", self.log_tail());
            }
            let health = self.http.get(format!("{}/health", self.base)).send().await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < LABEL_STUDIO_START,
                "label-studio not ready in {LABEL_STUDIO_START:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", format!("Token {API_TOKEN}"));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status}: {text}");
        serde_json::from_str(&text).unwrap()
    }
}

/// Evaluate `script` in the page until it returns something other than `null`, or panic after
/// `within` with `what` and the last page text.
async fn wait_for(browser: &Browser, what: &str, within: Duration, script: &str) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let value = browser.execute(script, json!([])).await;
        if !value.is_null() {
            return value;
        }
        if Instant::now() > deadline {
            let text = browser.body_text().await;
            panic!("{what}: not within {within:?}; page text:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_studio_shows_signed_image_and_video_and_seeks_after_exp() {
    let test_started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Label Studio first: its start-up (migrations) is the long pole; the rest happens meanwhile.
    let mut studio = LabelStudio::spawn(dir.path());
    let origin = studio.base.clone();

    let data = dir.path().join("objects");
    std::fs::create_dir(&data).unwrap();
    let image = data.join("pic.png");
    let video = data.join("clip.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=96x64:rate=1",
        "-frames:v",
        "1",
        image.to_str().unwrap(),
    ]);
    // Noise keeps the bitrate up (3 Mbit/s, ~15 MB): chromium buffers only the seconds ahead
    // of the playhead, so the seek below needs a new Range request.
    let source = format!("testsrc2=size=320x240:rate={FRAME_RATE}:duration={VIDEO_SECS}");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &source,
        "-vf",
        "noise=alls=60:allf=t",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-b:v",
        "3M",
        "-maxrate",
        "3M",
        "-bufsize",
        "1M",
        "-pix_fmt",
        "yuv420p",
        "-g",
        &FRAME_RATE.to_string(),
        "-movflags",
        "+faststart",
        video.to_str().unwrap(),
    ]);
    let (width, height) = png_size(&image);
    let video_bytes = std::fs::metadata(&video).unwrap().len();

    let audit_path = dir.path().join("audit.log");
    let audit = audit_path.clone();
    let cors_origin = origin.clone();
    let mut gw = GatewayBuilder::new()
        .source("local", support::fs_source(&data))
        .tweak(move |config| {
            let mut identity = support::test_identity();
            // `exp` means `exp`: the seek below happens after it, with no skew to lean on.
            identity.clock_skew = Duration::ZERO;
            config.identity = Some(identity);
            config.cors = CorsConfig {
                allowed_origins: vec![cors_origin],
                max_age: Duration::from_secs(600),
                any_origin_for_token_requests: false,
            };
            config.audit.destination = AuditDestination::File {
                path: audit,
                max_bytes: 64 * 1024 * 1024,
                keep: 1,
            };
        })
        .start()
        .await;

    let ready_after = studio.wait_ready().await;
    let label_config = format!(
        r#"<View>
  <Image name="image" value="$image"/>
  <Video name="video" value="$video" frameRate="{FRAME_RATE}"/>
  <Choices name="ok" toName="image"><Choice value="ok"/></Choices>
</View>"#
    );
    let project = studio
        .api(
            reqwest::Method::POST,
            "/api/projects",
            Some(json!({ "title": "bucketgate signed URLs", "label_config": label_config })),
        )
        .await;
    let project = project["id"].as_u64().unwrap();

    // Signed in before the URLs are minted, so `exp` need only cover import and page load.
    let browser = Browser::start().await;
    browser.goto(&format!("{origin}/user/login/")).await;
    browser
        .execute(
            "document.getElementById('email').value = arguments[0];
             document.getElementById('password').value = arguments[1];
             document.getElementById('login-form').submit();",
            json!([USERNAME, PASSWORD]),
        )
        .await;
    browser.wait_for_url(|u| !u.contains("/user/login")).await;

    // One task holds both: a labeling config with <Image> and <Video> needs both fields in
    // every task. Each URL is minted for its own object.
    let minted = Instant::now();
    let exp = unix_now() + EXP_SECS;
    let task = json!({
        "image": signed_url(&gw.base(), "pic.png", exp),
        "video": signed_url(&gw.base(), "clip.mp4", exp),
    });
    let imported = studio
        .api(
            reqwest::Method::POST,
            &format!("/api/projects/{project}/import"),
            Some(json!([task])),
        )
        .await;
    assert_eq!(imported["task_count"], 1, "{imported}");
    let tasks = studio
        .api(
            reqwest::Method::GET,
            &format!("/api/tasks?project={project}"),
            None,
        )
        .await;
    let task_id = tasks["tasks"][0]["id"].as_u64().unwrap();
    browser
        .goto(&format!("{origin}/projects/{project}/data?task={task_id}"))
        .await;

    // The image, loaded from the gateway by Label Studio's <img>, at its natural size.
    let natural = wait_for(
        &browser,
        "the image renders",
        Duration::from_secs(60),
        "const i = document.querySelector('img[src*=\"/o/local/pic.png\"]');
         return i && i.complete && i.naturalWidth > 0 ? [i.naturalWidth, i.naturalHeight] : null;",
    )
    .await;
    assert_eq!(natural, json!([width, height]));

    // The video: metadata and a first frame, then it plays (muted: autoplay policy).
    let duration = wait_for(
        &browser,
        "the video loads",
        Duration::from_secs(60),
        "const v = document.querySelector('video');
         return v && v.readyState >= 2 ? v.duration : null;",
    )
    .await;
    assert!(
        (duration.as_f64().unwrap() - f64::from(VIDEO_SECS)).abs() < 0.5,
        "duration {duration}"
    );
    // Label Studio took the frame rate from the labeling config: 40 s at 25 fps is 1000 frames.
    let frames = format!("of {}", VIDEO_SECS * FRAME_RATE);
    wait_for(
        &browser,
        "the frame counter",
        Duration::from_secs(30),
        &format!("return document.body.innerText.includes('{frames}') ? true : null;"),
    )
    .await;
    let played = browser
        .execute(
            "const v = document.querySelector('video'); v.muted = true;
             return v.play().then(() => 'playing', e => String(e));",
            json!([]),
        )
        .await;
    assert_eq!(played, "playing");
    wait_for(
        &browser,
        "the video plays",
        Duration::from_secs(30),
        "const v = document.querySelector('video');
         return v.currentTime > 1.0 && !v.error ? v.currentTime : null;",
    )
    .await;
    browser
        .execute("document.querySelector('video').pause();", json!([]))
        .await;
    let played_after = minted.elapsed();
    assert!(
        unix_now() < exp,
        "page load took past exp ({EXP_SECS} s after minting): raise EXP_SECS"
    );

    // Wait until `exp` has passed (the gateway has no clock skew here), then seek: a new Range
    // request with an expired token, which only the use window lets through.
    let deadline = Instant::now() + Duration::from_secs(EXP_SECS + 30);
    while unix_now() <= exp {
        assert!(Instant::now() < deadline, "the clock did not pass exp");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seek_started = unix_now();
    let seeked = browser
        .execute(
            "const v = document.querySelector('video');
             return new Promise(done => {
               v.addEventListener('seeked', () => done({ seeked: v.currentTime }), { once: true });
               v.addEventListener('error', () => done({ media_error: v.error && v.error.code }), { once: true });
               v.currentTime = arguments[0];
             });",
            json!([SEEK_TO]),
        )
        .await;
    assert!(
        seeked["seeked"]
            .as_f64()
            .is_some_and(|t| (t - SEEK_TO).abs() < 0.01),
        "after exp the seek must land at {SEEK_TO} s (the use window lets a URL in use live past \
         exp): {seeked}"
    );
    wait_for(
        &browser,
        "a frame at the new position",
        Duration::from_secs(30),
        "const v = document.querySelector('video');
         return v.readyState >= 2 && !v.error ? v.currentTime : null;",
    )
    .await;

    // Everything stops before the audit log is read: the browser's connections close, so every
    // record is written; the gateway's shutdown drains the writer.
    drop(browser);
    drop(studio);
    gw.take_gateway().shutdown().await;
    let text = std::fs::read_to_string(&audit_path).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |key: &str| -> Vec<&Value> { records.iter().filter(|r| r["key"] == key).collect() };
    let images = of("pic.png");
    assert!(
        images
            .iter()
            .any(|r| r["status"] == 200 && r["origin"] == origin && r["cors"] == "allowed"),
        "an image GET from Label Studio's origin, CORS allowed:\n{text}"
    );
    let videos = of("clip.mp4");
    assert!(!videos.is_empty(), "{text}");
    for r in &videos {
        assert_eq!(r["origin"], origin, "{r}");
        assert_eq!(r["cors"], "allowed", "{r}");
        assert_eq!(
            r["status"], 206,
            "every video request is a Range request, none refused: {r}"
        );
        assert!(
            r["range"].as_str().is_some_and(|r| r.starts_with("bytes=")),
            "{r}"
        );
    }
    // The seek's request: from far into the file, after exp.
    let offset = |r: &Value| -> Option<u64> {
        r["range"]
            .as_str()?
            .strip_prefix("bytes=")?
            .split('-')
            .next()?
            .parse()
            .ok()
    };
    assert!(
        videos.iter().any(|r| offset(r) == Some(0)),
        "the first Range request from 0:\n{text}"
    );
    assert!(
        videos
            .iter()
            .any(|r| offset(r).is_some_and(|o| o > video_bytes / 2)),
        "the seek to {SEEK_TO} s fetched from past the middle of the file:\n{text}"
    );
    eprintln!(
        "label_studio: ready after {ready_after:?}; loaded and played {played_after:?} after \
         minting (exp {EXP_SECS} s); seek {} s after exp; test wall time {:?}",
        seek_started.saturating_sub(exp),
        test_started.elapsed()
    );
}
