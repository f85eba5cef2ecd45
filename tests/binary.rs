//! `bucketgate serve` and `bucketgate check` run as the built binary, the way an operator runs
//! them: bound addresses read from the startup log line, SIGTERM/SIGINT sent to the process,
//! exit codes, what it prints on stdout (audit, welcome) and stderr (logs, config errors).
//!
//! Every child process is owned by a [`Running`] guard that kills it on drop, so a failing test
//! never leaves a gateway behind. Waits are bounded: lines are read from the child's pipes by
//! reader threads and awaited with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bucketgate");
/// Upper bound for anything the binary should do promptly (start, refuse, exit). Generous for a
/// CPU-starved CI run; a passing run takes a fraction of it.
const PROMPTLY: Duration = Duration::from_secs(15);

// ---- a running child process ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pipe {
    Stdout,
    Stderr,
}

/// A `bucketgate` child process with its stdout and stderr read line by line. Killed on drop.
struct Running {
    child: Child,
    lines: mpsc::Receiver<(Pipe, String)>,
    stdout: Vec<String>,
    stderr: Vec<String>,
    /// Both pipes reached end of file.
    closed: bool,
}

impl Running {
    fn spawn(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut command = Command::new(BIN);
        command
            .current_dir(cwd)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start bucketgate");
        let (tx, lines) = mpsc::channel();
        read_lines(Pipe::Stdout, child.stdout.take().unwrap(), tx.clone());
        read_lines(Pipe::Stderr, child.stderr.take().unwrap(), tx);
        Running {
            child,
            lines,
            stdout: Vec::new(),
            stderr: Vec::new(),
            closed: false,
        }
    }

    /// Take one line from either pipe; false once the deadline passed or both pipes are closed.
    fn pump(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok((Pipe::Stdout, line)) => self.stdout.push(line),
            Ok((Pipe::Stderr, line)) => self.stderr.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => return false,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.closed = true;
                return false;
            }
        }
        true
    }

    /// The first line on `pipe` that satisfies `pred`, waiting for it at most [`PROMPTLY`].
    fn wait_line(&mut self, pipe: Pipe, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.try_wait_line(pipe, pred).unwrap_or_else(|why| {
            panic!(
                "waiting for {what} on {pipe:?}: {why}\n{}",
                self.transcript()
            )
        })
    }

    fn try_wait_line(
        &mut self,
        pipe: Pipe,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, &'static str> {
        let deadline = Instant::now() + PROMPTLY;
        loop {
            let seen = match pipe {
                Pipe::Stdout => &self.stdout,
                Pipe::Stderr => &self.stderr,
            };
            if let Some(line) = seen.iter().find(|l| pred(l)) {
                return Ok(line.clone());
            }
            if !self.pump(deadline) {
                return Err(if self.closed {
                    "the process closed its output"
                } else {
                    "timed out"
                });
            }
        }
    }

    fn signal(&self, signal: Signal) {
        kill_process(Pid::from_child(&self.child), signal).expect("signal bucketgate");
    }

    /// None while the process runs.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Read both pipes to the end and reap the process; fail if that takes longer than `within`.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        while !self.closed {
            if !self.pump(deadline) && !self.closed {
                panic!(
                    "bucketgate still running after {within:?}\n{}",
                    self.transcript()
                );
            }
        }
        // The pipes close when the process exits; reaping it follows within moments.
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "bucketgate closed its output but did not exit\n{}",
                self.transcript()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn transcript(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.join("\n"),
            self.stderr.join("\n")
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Forward `pipe` line by line (lossy UTF-8, newline removed) until end of file.
fn read_lines(pipe: Pipe, from: impl Read + Send + 'static, tx: mpsc::Sender<(Pipe, String)>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']).to_owned();
                    if tx.send((pipe, line)).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// Run a short command (`check`, `token`) to completion, bounded like everything else.
fn run_to_end(cwd: &Path, args: &[&str]) -> (ExitStatus, Vec<String>, Vec<String>) {
    let mut running = Running::spawn(cwd, args, &[]);
    let status = running.wait_exit(PROMPTLY);
    (
        status,
        std::mem::take(&mut running.stdout),
        std::mem::take(&mut running.stderr),
    )
}

// ---- fixtures ----

/// A directory holding `data/`, an HS256 key and `config.toml` (both listeners on port 0, dev
/// certificate in `tls/`, audit on stdout, loopback allowed).
fn gateway_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("data")).unwrap();
    std::fs::write(root.join("data/hello.txt"), "hello binary\n").unwrap();
    std::fs::write(
        root.join("hs256.key"),
        "binary-test-secret-0123456789abcdef",
    )
    .unwrap();
    std::fs::write(
        root.join("config.toml"),
        "[listener]\naddr = \"127.0.0.1:0\"\ndev_certificate_dir = \"tls\"\n\
         [admin]\naddr = \"127.0.0.1:0\"\n\
         [limits]\nshutdown_grace_secs = 60\n\
         [network]\nallow = [\"127.0.0.0/8\"]\n\
         [sources.local]\nkind = \"fs\"\nroot = \"data\"\n\
         [audit]\ndestination = \"stdout\"\n\
         [identity]\naudience = \"bucketgate\"\n\
         [[identity.keys]]\nkid = \"k\"\nalg = \"HS256\"\nsecret = \"file:hs256.key\"\n",
    )
    .unwrap();
    dir
}

/// A session token for every key of `local`, minted by the binary itself.
fn token(root: &Path) -> String {
    let (status, stdout, stderr) = run_to_end(
        root,
        &[
            "token",
            "--config",
            "config.toml",
            "--source",
            "local",
            "--prefix",
            "",
            "--ttl",
            "1h",
        ],
    );
    assert!(status.success(), "token: {stderr:?}");
    stdout.concat().trim().to_owned()
}

/// `serve --config config.toml` with JSON logs; returns the process and the bound data and
/// admin addresses, read from the startup log line.
fn serve_json(root: &Path, env: &[(&str, &str)]) -> (Running, SocketAddr, SocketAddr) {
    let mut gw = Running::spawn(
        root,
        &["--log-format", "json", "serve", "--config", "config.toml"],
        env,
    );
    let line = gw.wait_line(Pipe::Stderr, "the startup log line", |l| {
        l.contains("\"bucketgate serving\"")
    });
    let event: Value = serde_json::from_str(&line).unwrap();
    let addr = |field: &str| -> SocketAddr {
        event[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} in {line}"))
            .parse()
            .unwrap()
    };
    let (data, admin) = (addr("data_addr"), addr("admin_addr"));
    assert_ne!(data.port(), 0, "{line}");
    assert_ne!(admin.port(), 0, "{line}");
    (gw, data, admin)
}

fn client(cert_pem: &Path, h1_only: bool) -> reqwest::Client {
    let pem = std::fs::read(cert_pem).unwrap();
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .no_proxy()
        .timeout(Duration::from_secs(30));
    if h1_only {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

/// Cheap deterministic bytes for a large object (no period a shifted read could hide in).
fn big_pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8 ^ (i >> 20) as u8)
        .collect()
}

/// Connecting to `addr` is refused, checked with bounded attempts (the listener closes moments
/// after the shutdown log line).
fn assert_refused_soon(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            other => assert!(
                Instant::now() < deadline,
                "{what} {addr} still accepts connections after SIGTERM: {other:?}"
            ),
        }
        std::thread::yield_now();
    }
}

/// Every line of `lines` is a JSON object; returns them parsed.
fn all_json(lines: &[String], what: &str) -> Vec<Value> {
    lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{what} line is not JSON ({e}): {l:?}"));
            assert!(v.is_object(), "{what} line is not a JSON object: {l:?}");
            v
        })
        .collect()
}

/// The audit record (stdout) of the request with this id.
fn audit_record(stdout: &[String], request_id: &str) -> Value {
    all_json(stdout, "audit")
        .into_iter()
        .find(|r| r["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no audit record for {request_id}:\n{}", stdout.join("\n")))
}

/// Log events at WARN or above: a clean start and shutdown has none.
fn warnings(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["level"] == "WARN" || e["level"] == "ERROR")
        .collect()
}

/// Remove ANSI escape sequences (`ESC [ ... final byte`) from a pretty log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---- serve: signals ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sigterm_refuses_new_connections_finishes_in_flight_downloads_and_exits_0() {
    const SIZE: usize = 24 << 20;
    let dir = gateway_dir();
    let root = dir.path();
    let data = big_pattern(SIZE);
    std::fs::write(root.join("data/big.bin"), &data).unwrap();
    let token = token(root);
    let (mut gw, data_addr, admin_addr) = serve_json(root, &[]);
    let url = format!("https://{data_addr}/o/local/big.bin");

    // Two downloads, one per protocol, each stopped after its first chunk: the gateway is
    // blocked mid-body (24 MiB is far more than the socket and TLS buffers hold).
    let mut downloads = Vec::new();
    for (proto, h1_only) in [("http/1.1", true), ("h2", false)] {
        let mut resp = client(&root.join("tls/cert.pem"), h1_only)
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{proto}");
        let expected = if h1_only {
            reqwest::Version::HTTP_11
        } else {
            reqwest::Version::HTTP_2
        };
        assert_eq!(resp.version(), expected, "{proto}");
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let first = resp.chunk().await.unwrap().expect("a first chunk");
        assert!(first.len() < SIZE, "{proto}: whole object in one chunk");
        downloads.push((proto, resp, first.to_vec(), id));
    }

    gw.signal(Signal::TERM);
    gw.wait_line(Pipe::Stderr, "the shutdown log line", |l| {
        l.contains("shutting down")
    });
    assert_refused_soon(data_addr, "the data listener");
    assert_refused_soon(admin_addr, "the admin listener");
    assert!(
        gw.exited().is_none(),
        "bucketgate exited with downloads in flight\n{}",
        gw.transcript()
    );

    let ids: Vec<String> = downloads.iter().map(|d| d.3.clone()).collect();
    for (proto, mut resp, mut got, _) in downloads {
        while let Some(chunk) = resp.chunk().await.unwrap_or_else(|e| {
            panic!(
                "{proto}: download cut off after {} of {SIZE} bytes: {e:?}",
                got.len()
            )
        }) {
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got.len(), SIZE, "{proto}: length");
        assert!(got == data, "{proto}: bytes differ");
    }

    let status = gw.wait_exit(PROMPTLY);
    assert_eq!(status.code(), Some(0), "{status}\n{}", gw.transcript());
    let events = all_json(&gw.stderr, "log");
    assert!(
        warnings(&events).is_empty(),
        "shutdown warned (grace exceeded or audit records lost?)\n{}",
        gw.transcript()
    );
    assert!(
        events.iter().any(|e| e["message"] == "stopped"),
        "{}",
        gw.transcript()
    );
    // Both downloads were audited as complete before the process exited.
    for id in &ids {
        let record = audit_record(&gw.stdout, id);
        assert_eq!(record["status"], 200, "{record}");
        assert_eq!(record["bytes"], SIZE as u64, "{record}");
        assert_eq!(record["complete"], true, "{record}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_second_sigterm_during_the_drain_exits_130_at_once() {
    const SIZE: usize = 24 << 20;
    let dir = gateway_dir();
    let root = dir.path();
    std::fs::write(root.join("data/big.bin"), big_pattern(SIZE)).unwrap();
    let token = token(root);
    let (mut gw, data_addr, _) = serve_json(root, &[]);
    let mut resp = client(&root.join("tls/cert.pem"), true)
        .get(format!("https://{data_addr}/o/local/big.bin"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = resp.chunk().await.unwrap().expect("a first chunk").len();

    gw.signal(Signal::TERM);
    gw.wait_line(Pipe::Stderr, "the shutdown log line", |l| {
        l.contains("shutting down")
    });
    assert!(gw.exited().is_none(), "exited with a download in flight");
    gw.signal(Signal::TERM);
    let status = gw.wait_exit(PROMPTLY);
    assert_eq!(status.code(), Some(130), "{status}\n{}", gw.transcript());
    // The download was cut, and the client can tell.
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => got += chunk.len(),
            Ok(None) => panic!("the download ended as if complete after {got} bytes"),
            Err(_) => break,
        }
    }
    assert!(got < SIZE);
}

#[test]
fn serve_sigint_on_an_idle_gateway_exits_0_without_warnings() {
    let dir = gateway_dir();
    let (mut gw, _, _) = serve_json(dir.path(), &[]);
    // Sent right after the startup line. Regression: the handlers were installed only after
    // that line, so a signal at this moment killed the process (no exit code) instead.
    gw.signal(Signal::INT);
    let status = gw.wait_exit(PROMPTLY);
    assert_eq!(status.code(), Some(0), "{status}\n{}", gw.transcript());
    // Regression: the SIGHUP reload task (only with --config) kept the audit log open, so every
    // shutdown waited out the audit flush timeout and warned that records may be lost.
    let events = all_json(&gw.stderr, "log");
    assert!(warnings(&events).is_empty(), "{}", gw.transcript());
    assert!(
        events.iter().any(|e| e["message"] == "stopped"),
        "{}",
        gw.transcript()
    );
}

// ---- check and invalid configs ----

/// A config with three mistakes on three lines (and a valid listener on `data_port` and admin
/// listener on `admin_port`).
fn bad_config(data_port: u16, admin_port: u16) -> String {
    format!(
        "[listener]\naddr = \"127.0.0.1:{data_port}\"\ndev_certificate_dir = \"tls\"\n\
         [admin]\naddr = \"127.0.0.1:{admin_port}\"\n\n\
         [network]\nallow = [\"127.0.0.0/8\", \"10.0.0.1/8\"]\n\n\
         [sources.local]\nkind = \"fs\"\nroot = \"no-such-dir\"\n\n\
         [limits]\nidle_timeout_secs = 0\n"
    )
}

/// `file:line:col: key: ` of each mistake in [`bad_config`], in file order, found in the text
/// (1-based line, and the column where the value starts).
fn expected_prefixes(file: &str, text: &str) -> Vec<String> {
    [
        ("allow =", "\"10.0.0.1/8\"", "network.allow"),
        ("root =", "\"no-such-dir\"", "sources.local.root"),
        ("idle_timeout_secs =", "0", "limits.idle_timeout_secs"),
    ]
    .iter()
    .map(|(line_has, value, key)| {
        let (n, line) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.starts_with(line_has))
            .unwrap();
        let after_eq = line.find(" = ").unwrap() + 3;
        let col = after_eq + line[after_eq..].find(value).unwrap() + 1;
        format!("{file}:{}:{col}: {key}: ", n + 1)
    })
    .collect()
}

#[track_caller]
fn assert_errors(lines: &[String], prefixes: &[String]) {
    assert_eq!(lines.len(), prefixes.len(), "{lines:#?}");
    for (line, prefix) in lines.iter().zip(prefixes) {
        assert!(
            line.starts_with(prefix.as_str()),
            "{line:?} lacks {prefix:?}"
        );
        assert!(
            line.len() > prefix.len() + 10,
            "{line:?}: the message is missing"
        );
    }
}

#[test]
fn check_prints_every_config_error_as_file_line_col_key_message_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let text = bad_config(8443, 9090);
    std::fs::write(root.join("bad.toml"), &text).unwrap();
    let (status, stdout, stderr) = run_to_end(root, &["check", "--config", "bad.toml"]);
    assert_eq!(status.code(), Some(2), "{stderr:#?}");
    assert!(stdout.is_empty(), "{stdout:?}");
    let lines: Vec<String> = stderr.into_iter().filter(|l| !l.is_empty()).collect();
    assert_errors(&lines, &expected_prefixes("bad.toml", &text));

    // The same file fixed: exit 0 and a one-line summary.
    let good = gateway_dir();
    let (status, stdout, stderr) = run_to_end(good.path(), &["check", "--config", "config.toml"]);
    assert_eq!(status.code(), Some(0), "{stderr:#?}");
    assert_eq!(stdout, ["config.toml: ok (1 source(s))"]);
    assert!(stderr.is_empty(), "{stderr:?}");
}

#[test]
fn serve_with_an_invalid_config_prints_every_error_and_binds_nothing() {
    // The config names two ports this test holds: a gateway that got as far as binding would
    // fail with "address in use" instead of printing the config errors.
    let held_data = TcpListener::bind("127.0.0.1:0").unwrap();
    let held_admin = TcpListener::bind("127.0.0.1:0").unwrap();
    let text = bad_config(
        held_data.local_addr().unwrap().port(),
        held_admin.local_addr().unwrap().port(),
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("bad.toml"), &text).unwrap();

    let mut gw = Running::spawn(root, &["serve", "--config", "bad.toml"], &[]);
    let status = gw.wait_exit(PROMPTLY);
    assert_eq!(status.code(), Some(1), "{status}\n{}", gw.transcript());
    assert!(gw.stdout.is_empty(), "{}", gw.transcript());
    let lines: Vec<String> = gw
        .stderr
        .iter()
        .filter(|l| !l.is_empty())
        .cloned()
        .collect();
    assert_eq!(
        lines.first().map(String::as_str),
        Some("bucketgate: invalid config:"),
        "{}",
        gw.transcript()
    );
    assert_errors(&lines[1..], &expected_prefixes("bad.toml", &text));
    // Nothing was started: no development certificate generated either.
    assert!(!root.join("tls").exists(), "serve generated a certificate");
}

// ---- the embedded default ----

/// `serve` with no config in `root`, once its welcome has printed the curl line. The embedded
/// default binds the fixed 127.0.0.1:8443 and 127.0.0.1:9090 and has no override; this is the only
/// test that binds them (`grep -rn 8443 tests/`), but two test runs at once on one machine would
/// meet there, so a start that fails with "address in use" is retried for a bounded time. Any
/// other failure, or ports still busy after that, fails the test with the gateway's output.
fn serve_embedded_default(root: &Path) -> (Running, String) {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let mut gw = Running::spawn(root, &["serve"], &[]);
        match gw.try_wait_line(Pipe::Stdout, |l| l.trim_start().starts_with("curl ")) {
            Ok(curl) => return (gw, curl),
            Err(why) => {
                let busy = gw.closed && gw.stderr.iter().any(|l| l.contains("in use"));
                assert!(
                    busy && Instant::now() < deadline,
                    "waiting for the curl line: {why}\n{}",
                    gw.transcript()
                );
                drop(gw);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_config_serves_the_embedded_default_and_its_printed_curl_line_works() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let (mut gw, curl) = serve_embedded_default(&root);
    // curl --cacert PATH 'URL'
    let rest = curl.trim_start().strip_prefix("curl --cacert ").unwrap();
    let (cert, url) = rest.split_once(" '").unwrap();
    let url = url.strip_suffix('\'').unwrap();
    assert_eq!(Path::new(cert), root.join(".bucketgate/cert.pem"), "{curl}");
    assert!(
        url.starts_with("https://127.0.0.1:8443/o/local/hello.txt?token="),
        "{curl}"
    );
    let resp = client(Path::new(cert), false)
        .get(url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", gw.transcript());
    assert_eq!(resp.text().await.unwrap(), "hello from bucketgate\n");
    assert_eq!(
        std::fs::read_to_string(root.join("data/hello.txt")).unwrap(),
        "hello from bucketgate\n"
    );

    // The printed metrics line works too, and counts the request above.
    let metrics = gw.wait_line(Pipe::Stdout, "the metrics line", |l| {
        l.contains("curl http://")
    });
    let metrics_url = metrics.split("curl ").nth(1).unwrap().trim();
    assert_eq!(metrics_url, "http://127.0.0.1:9090/metrics");
    let text = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("bucketgate_http_requests_total{route=\"object\",status=\"200\"} 1"),
        "{text}"
    );

    gw.signal(Signal::TERM);
    let status = gw.wait_exit(PROMPTLY);
    assert_eq!(status.code(), Some(0), "{status}\n{}", gw.transcript());
}

// ---- log formats ----

/// At the default `info` level a request writes nothing to stderr (its record goes to the audit
/// log on stdout); `RUST_LOG=bucketgate=debug` adds the "request refused" event a 401 logs.
const DEBUG: (&str, &str) = ("RUST_LOG", "bucketgate=debug");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_only_json_lines_and_request_events_carry_the_x_request_id() {
    let dir = gateway_dir();
    let root = dir.path();
    let token = token(root);
    let (mut gw, data_addr, _) = serve_json(root, &[DEBUG]);
    let client = client(&root.join("tls/cert.pem"), false);
    let url = format!("https://{data_addr}/o/local/hello.txt");

    let ok = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let ok_id = ok.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(ok.text().await.unwrap(), "hello binary\n");
    let denied = client.get(&url).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    let denied_id = denied.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(ok_id, denied_id);
    assert_eq!(denied.version(), reqwest::Version::HTTP_2);
    let denied_h1 = self::client(&root.join("tls/cert.pem"), true)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(denied_h1.status(), 401);
    assert_eq!(denied_h1.version(), reqwest::Version::HTTP_11);
    let denied_h1_id = denied_h1.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();

    for id in [&denied_id, &denied_h1_id] {
        gw.wait_line(Pipe::Stderr, "the refused request's log event", |l| {
            l.contains("request refused") && l.contains(id.as_str())
        });
    }
    for id in [&ok_id, &denied_id] {
        gw.wait_line(Pipe::Stdout, "the audit record", |l| {
            l.contains(id.as_str())
        });
    }
    gw.signal(Signal::TERM);
    let status = gw.wait_exit(PROMPTLY);
    assert_eq!(status.code(), Some(0), "{status}\n{}", gw.transcript());

    // Every log line, from start to exit, is one JSON object with a level and a timestamp.
    let events = all_json(&gw.stderr, "log");
    assert!(events.len() >= 4, "{}", gw.transcript());
    for event in &events {
        assert!(event["level"].is_string(), "{event}");
        assert!(event["timestamp"].is_string(), "{event}");
    }
    let refused = events
        .iter()
        .find(|e| e["message"] == "request refused")
        .unwrap_or_else(|| panic!("no request refused event\n{}", gw.transcript()));
    assert_eq!(refused["span"]["name"], "request", "{refused}");
    assert_eq!(
        refused["span"]["request_id"],
        denied_id.as_str(),
        "{refused}"
    );
    // Over h2 and http/1.1 alike, the request span sits inside its connection's span.
    for id in [&denied_id, &denied_h1_id] {
        let event = events
            .iter()
            .find(|e| e["message"] == "request refused" && e["span"]["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no event for {id}\n{}", gw.transcript()));
        let spans = event["spans"]
            .as_array()
            .unwrap_or_else(|| panic!("{event}"));
        let names: Vec<&str> = spans.iter().filter_map(|s| s["name"].as_str()).collect();
        assert_eq!(names, ["conn", "request"], "{event}");
        assert!(
            spans[0]["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{event}"
        );
    }

    // The audit log (stdout) is JSON whatever the log format, one record per request.
    let record = audit_record(&gw.stdout, &ok_id);
    assert_eq!(record["status"], 200, "{record}");
    assert_eq!(record["decision"], "allow", "{record}");
    let record = audit_record(&gw.stdout, &denied_id);
    assert_eq!(record["status"], 401, "{record}");
    assert_eq!(record["decision"], "deny", "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_pretty_writes_human_readable_lines_not_json() {
    let dir = gateway_dir();
    let root = dir.path();
    let mut gw = Running::spawn(
        root,
        &["--log-format", "pretty", "serve", "--config", "config.toml"],
        &[DEBUG],
    );
    let serving = strip_ansi(&gw.wait_line(Pipe::Stderr, "the startup log line", |l| {
        l.contains("bucketgate serving")
    }));
    let data_addr: SocketAddr = serving
        .split_once("data_addr=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no data_addr in {serving:?}"))
        .parse()
        .unwrap();

    let denied = client(&root.join("tls/cert.pem"), false)
        .get(format!("https://{data_addr}/o/local/hello.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    let id = denied.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let refused = strip_ansi(
        &gw.wait_line(Pipe::Stderr, "the refused request's log line", |l| {
            l.contains("request refused") && l.contains(&id)
        }),
    );
    assert!(refused.contains(&format!("request_id={id}")), "{refused:?}");
    gw.signal(Signal::TERM);
    let status = gw.wait_exit(PROMPTLY);
    assert_eq!(status.code(), Some(0), "{status}\n{}", gw.transcript());

    assert!(gw.stderr.len() >= 4, "{}", gw.transcript());
    for line in &gw.stderr {
        let plain = strip_ansi(line);
        assert!(
            serde_json::from_str::<Value>(&plain).is_err(),
            "a pretty log line is JSON: {plain:?}"
        );
        assert!(
            plain.contains(" INFO ") || plain.contains(" DEBUG ") || plain.contains(" WARN "),
            "no level in {plain:?}"
        );
    }
}
