//! A real browser for tests: Debian's chromium driven through chromedriver's WebDriver HTTP API.
//!
//! The browser runs headless with a fresh profile, accepts the gateway's self-signed test
//! certificate, and never reaches beyond loopback (background networking is off). Missing
//! chromium or chromedriver fails the test: `tests/run` installs both.
//!
//! Nothing outlives the [`Browser`], whether the test passes or panics: on drop it ends the
//! WebDriver session (chromedriver quits chromium), then stops chromedriver (SIGTERM, SIGKILL
//! only after a bounded wait) and any chromium process left of it ([`ChildGuard`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use super::process::ChildGuard;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One headless chromium session.
pub struct Browser {
    /// chromedriver, leading its own process group (chromium runs in it). Dropped before the
    /// profile directory, so chromium is gone before its profile is removed.
    driver: ChildGuard,
    _profile: TempDir,
    /// chromedriver's port on 127.0.0.1.
    port: u16,
    session: String,
    /// `http://127.0.0.1:PORT/session/ID`
    endpoint: String,
    http: reqwest::Client,
}

impl Browser {
    pub async fn start() -> Browser {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: run ./tests/run, which installs chromium and chromium-driver"
            );
        }
        // Guarded from here on: a panic below still stops chromedriver and any chromium.
        let mut driver = ChildGuard::spawn_group(
            "chromedriver",
            Command::new(CHROMEDRIVER)
                .arg("--port=0")
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        let stdout = driver.child().stdout.take().expect("chromedriver stdout");
        // A thread reads the port line, then keeps draining stdout so chromedriver never blocks
        // on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("started successfully on port ").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.trim_end_matches('.').trim().parse::<u16>().ok());
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("chromedriver did not report its port in 20 s")
            .expect("chromedriver printed an unreadable port");
        let endpoint = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().expect("profile dir");
        let http = reqwest::Client::new();
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": true,
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-quic",
                            "--no-first-run",
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                            "--disable-dev-shm-usage",
                            format!("--user-data-dir={}", profile.path().display()),
                        ]
                    }
                }
            }
        });
        let resp = http
            .post(format!("{endpoint}/session"))
            .header("content-type", "application/json")
            .body(caps.to_string())
            .send()
            .await
            .expect("create webdriver session")
            .bytes()
            .await
            .expect("webdriver session answer");
        let resp: Value = serde_json::from_slice(&resp).expect("webdriver session json");
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no webdriver session: {resp}"))
            .to_owned();
        Browser {
            driver,
            _profile: profile,
            port,
            endpoint: format!("{endpoint}/session/{session}"),
            session,
            http,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.endpoint));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req
            .send()
            .await
            .expect("webdriver call")
            .bytes()
            .await
            .expect("webdriver answer");
        let resp: Value = serde_json::from_slice(&resp).expect("webdriver json");
        if let Some(err) = resp["value"].get("error") {
            panic!("webdriver {path}: {err}: {}", resp["value"]["message"]);
        }
        resp["value"].clone()
    }

    /// Navigate and wait for the page load (WebDriver's default page-load strategy).
    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn current_url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Poll the current URL until `done` accepts it (bounded: 200 polls of 50 ms).
    pub async fn wait_for_url(&self, done: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        for _ in 0..200 {
            last = self.current_url().await;
            if done(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("browser never reached the expected page; last URL {last}");
    }

    /// The text content of the page's body.
    pub async fn body_text(&self) -> String {
        self.execute(
            "return document.body ? document.body.innerText : '';",
            json!([]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// The window's outer size in CSS pixels (`POST /window/rect`).
    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await;
    }

    /// A screenshot of the viewport, as PNG bytes (`GET /screenshot`).
    pub async fn screenshot_png(&self) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("screenshot is a base64 string"))
            .expect("screenshot base64 decodes")
    }

    /// Names of the cookies the browser holds for the current page's origin (HttpOnly included).
    pub async fn cookies(&self) -> Vec<Value> {
        self.call(reqwest::Method::GET, "/cookie", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session first: chromedriver quits its chromium cleanly. Then the `driver`
        // field's drop stops chromedriver and kills whatever chromium is left.
        if let Err(e) = delete_session(self.port, &self.session) {
            eprintln!("browser: DELETE /session/{}: {e}", self.session);
        }
        self.driver.stop();
    }
}

/// `DELETE /session/{id}` over a plain blocking connection (drop cannot await), bounded in time.
fn delete_session(port: u16, session: &str) -> std::io::Result<()> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    if answer.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        let head = String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned();
        Err(std::io::Error::other(head))
    }
}

/// A page's origin for cross-origin browser tests: a plain HTTP/1.1 server on `listener`
/// (another loopback port is another origin) answering each `(path, content type, body)` of
/// `files` and 404 to anything else. Every connection is one request (`Connection: close`).
/// The server is a task of the test's runtime: it ends with the test.
pub fn serve_page(
    listener: tokio::net::TcpListener,
    files: Vec<(&'static str, &'static str, Vec<u8>)>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let files = std::sync::Arc::new(files);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let files = files.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head);
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let (status, ctype, body) = match files.iter().find(|(p, _, _)| *p == path) {
                    Some((_, ctype, body)) => ("200 OK", *ctype, &body[..]),
                    None => ("404 Not Found", "text/plain", &b"not found"[..]),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
                     Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body).await;
                let _ = conn.shutdown().await;
            });
        }
    });
}

/// The bytes of `tests/node/node_modules/<path>` (a JS build `tests/run` installs from npm as
/// `package`); a missing file fails the test, naming the command that installs it.
pub fn node_module(path: &str, package: &str) -> Vec<u8> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/node/node_modules")
        .join(path);
    std::fs::read(&full).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run ./tests/run, which installs {package} from npm into tests/node",
            full.display()
        )
    })
}
