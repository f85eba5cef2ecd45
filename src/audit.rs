//! The audit log: exactly one JSON line per data request (denials and failures too), and one per
//! admin change.
//!
//! The request path never blocks on it: records go into a bounded channel and a dedicated writer
//! thread serializes them to stdout or to a file (append mode, rotated by size). When the channel
//! is full the record is dropped and counted (`bucketgate_audit_dropped_records`).
//!
//! A request's record is written when its response body is finished or dropped, because only then
//! is the number of body bytes actually sent known: [`AuditedBody`] wraps every response body and
//! writes the record from its `Drop`, once, with `"complete": false` for a body that was cut off.
//!
//! Each record also says what the request's `Origin` was, what `[cors]` made of it (`cors`:
//! `allowed`, `not_listed`, `none`) and the `Range` it asked for, so a missing `[cors]` entry or
//! a media player's seeks show in the log. Header values are attacker text: [`header_text`]
//! bounds and escapes them.
//!
//! Tokens never reach this module's output: the identity stage records [`token_hash`] (the first
//! 12 hex digits of the token's SHA-256), never the token.
//!
//! This module owns the record format and the writer. It must not decide access or choose status
//! codes; the pipeline fills [`Facts`] as its stages finish.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::config::defaults::{AUDIT_CHANNEL_CAPACITY, AUDIT_HEADER_VALUE_MAX_BYTES};
use crate::config::{AuditConfig, AuditDestination};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("opening the audit log {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting the audit writer thread")]
    Thread(#[source] io::Error),
}

/// The authorization outcome recorded for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
    /// A CORS preflight, answered without a token: whether it was allowed is in the record's
    /// `cors` (`allowed` or `not_listed`), the `[cors]` entry that allowed it in `rule`.
    Preflight,
}

/// What `[cors]` made of the request's `Origin` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CorsOutcome {
    /// Exactly one `Origin`, listed: the response lets the browser read it.
    Allowed,
    /// An `Origin` `[cors]` does not list (or more than one): the browser hides the response
    /// from the page, whatever its status. A missing `[cors]` entry looks like this.
    NotListed,
    /// No `Origin` header: not a CORS request (an `<img>` without `crossorigin`, curl).
    None,
}

impl CorsOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CorsOutcome::Allowed => "allowed",
            CorsOutcome::NotListed => "not_listed",
            CorsOutcome::None => "none",
        }
    }
}

/// What the pipeline learned about a request, filled in as stages finish. Every field a stage
/// has not reached stays `None` (`null` in the record).
#[derive(Debug, Clone)]
pub struct Facts {
    pub client: IpAddr,
    pub method: String,
    pub route: &'static str,
    pub source: Option<String>,
    /// The decoded key (after the plan stage's checks).
    pub key: Option<String>,
    /// `original` or `derived`.
    pub representation: Option<&'static str>,
    /// A derived representation's parameters: the IIIF path after the key
    /// (`full/max/0/default.jpg`, `info.json`).
    pub params: Option<String>,
    /// From the identity stage's `Principal`.
    pub subject: Option<String>,
    pub role: Option<String>,
    pub project: Option<String>,
    /// [`token_hash`] of the presented token, never the token.
    pub token_hash: Option<String>,
    /// `Allow` once the authorize stage has produced a grant; `Deny` until then.
    pub decision: Decision,
    /// The rule (clause) that allowed or refused the request, from the authorize stage.
    pub rule: Option<String>,
    /// Where the body came from (`hit-memory`, `hit-disk`, `miss`, `coalesced`, `bypass`);
    /// `None` for a request that never reached the fetch stage.
    pub cache: Option<&'static str>,
    /// The request's first `Origin` header, as [`header_text`] (attacker text: bounded, escaped).
    pub origin: Option<String>,
    /// What `[cors]` made of that origin.
    pub cors: CorsOutcome,
    /// The request's `Range` header as sent, as [`header_text`].
    pub range: Option<String>,
}

impl Facts {
    pub fn new(client: IpAddr, method: &http::Method, route: &'static str) -> Facts {
        Facts {
            client,
            method: method.as_str().to_owned(),
            route,
            source: None,
            key: None,
            representation: None,
            params: None,
            subject: None,
            role: None,
            project: None,
            token_hash: None,
            decision: Decision::Deny,
            rule: None,
            cache: None,
            origin: None,
            cors: CorsOutcome::None,
            range: None,
        }
    }
}

/// A request header's value as the audit record (and the request span) carries it: the value
/// is attacker text, so it is bounded to [`AUDIT_HEADER_VALUE_MAX_BYTES`] and every byte outside
/// printable ASCII becomes `\xNN` (a backslash is doubled), so a record stays one line and
/// shows exactly what was sent. A value cut short ends in `\...`, which no escaped value can.
pub fn header_text(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len().min(AUDIT_HEADER_VALUE_MAX_BYTES) + 4);
    for &b in value {
        let escaped_len = match b {
            b'\\' => 2,
            0x20..=0x7e => 1,
            _ => 4,
        };
        if out.len() + escaped_len > AUDIT_HEADER_VALUE_MAX_BYTES {
            out.push_str("\\...");
            return out;
        }
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// First 12 hex digits of the SHA-256 of `token`: enough to correlate requests made with one
/// token, useless for replaying it.
pub fn token_hash(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..6])
}

/// One request, as written.
#[derive(Debug, Serialize)]
struct RequestRecord<'a> {
    time: String,
    kind: &'static str,
    request_id: &'a str,
    client: String,
    method: &'a str,
    route: &'a str,
    source: Option<&'a str>,
    key: Option<&'a str>,
    representation: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a str>,
    subject: Option<&'a str>,
    role: Option<&'a str>,
    project: Option<&'a str>,
    decision: Decision,
    rule: Option<&'a str>,
    cache: Option<&'a str>,
    origin: Option<&'a str>,
    cors: CorsOutcome,
    range: Option<&'a str>,
    status: u16,
    bytes: u64,
    complete: bool,
    duration_ms: f64,
    token_hash: Option<&'a str>,
}

/// One admin-API change, as written.
#[derive(Debug, Serialize)]
struct AdminRecord<'a> {
    time: String,
    kind: &'static str,
    who: &'a str,
    action: &'a str,
    what: &'a serde_json::Value,
}

/// A handle to the audit log. Cheap to clone; every clone feeds the same writer.
#[derive(Clone)]
pub struct AuditLog {
    tx: Option<mpsc::Sender<String>>,
    metrics: Arc<Metrics>,
}

/// Resolves when the writer thread has written every record and closed its output, which
/// happens once every [`AuditLog`] handle (and every in-flight [`AuditedBody`]) is gone.
pub struct WriterDone(Option<oneshot::Receiver<()>>);

impl WriterDone {
    pub async fn wait(self) {
        if let Some(rx) = self.0 {
            let _ = rx.await;
        }
    }
}

impl AuditLog {
    /// A log that writes nothing (`destination = "off"`).
    pub fn off(metrics: Arc<Metrics>) -> AuditLog {
        AuditLog { tx: None, metrics }
    }

    /// Open the destination (a file is created or appended to) and start the writer thread.
    pub fn start(
        config: &AuditConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(AuditLog, WriterDone), AuditError> {
        let sink = match &config.destination {
            AuditDestination::Off => return Ok((AuditLog::off(metrics), WriterDone(None))),
            AuditDestination::Stdout => Sink::Stdout(Vec::with_capacity(STDOUT_BATCH_BYTES)),
            AuditDestination::File {
                path,
                max_bytes,
                keep,
            } => Sink::File(RotatingFile::open(path.clone(), *max_bytes, *keep)?),
        };
        let (tx, rx) = mpsc::channel(AUDIT_CHANNEL_CAPACITY);
        let (done_tx, done_rx) = oneshot::channel();
        let writer_metrics = Arc::clone(&metrics);
        std::thread::Builder::new()
            .name("bucketgate-audit".to_owned())
            .spawn(move || {
                write_loop(rx, sink, &writer_metrics);
                let _ = done_tx.send(());
            })
            .map_err(AuditError::Thread)?;
        Ok((
            AuditLog {
                tx: Some(tx),
                metrics,
            },
            WriterDone(Some(done_rx)),
        ))
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Record a change made through the admin API: `who` made it (a token digest prefix), the
    /// `action`, and `what` it changed (no secrets). The one format of every admin record.
    pub fn admin_change(&self, who: &str, action: &str, what: &serde_json::Value) {
        let record = AdminRecord {
            time: rfc3339(SystemTime::now()),
            kind: "admin",
            who,
            action,
            what,
        };
        self.send(&record);
    }

    /// Start a request's record. The returned [`Pending`] is completed by an [`AuditedBody`]
    /// (or written as is when dropped without one).
    pub fn begin(&self, request_id: String, started: Instant) -> Option<Pending> {
        self.tx.as_ref()?;
        Some(Pending {
            log: self.clone(),
            request_id,
            started,
            facts: None,
            status: 0,
        })
    }

    fn send<T: Serialize>(&self, record: &T) {
        let Some(tx) = &self.tx else { return };
        let line = match serde_json::to_string(record) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "audit record not serializable");
                self.metrics.audit_dropped_records.inc();
                return;
            }
        };
        if tx.try_send(line).is_err() {
            self.metrics.audit_dropped_records.inc();
        }
    }
}

/// A request's record waiting for its body to finish.
pub struct Pending {
    log: AuditLog,
    request_id: String,
    started: Instant,
    facts: Option<Facts>,
    status: u16,
}

impl Pending {
    /// Set what the pipeline learned and the response status.
    pub fn set(&mut self, facts: Facts, status: u16) {
        self.facts = Some(facts);
        self.status = status;
    }

    fn write(&self, bytes: u64, complete: bool) {
        let Some(f) = &self.facts else {
            return;
        };
        let record = RequestRecord {
            time: rfc3339(SystemTime::now()),
            kind: "request",
            request_id: &self.request_id,
            client: f.client.to_string(),
            method: &f.method,
            route: f.route,
            source: f.source.as_deref(),
            key: f.key.as_deref(),
            representation: f.representation,
            params: f.params.as_deref(),
            subject: f.subject.as_deref(),
            role: f.role.as_deref(),
            project: f.project.as_deref(),
            decision: f.decision,
            rule: f.rule.as_deref(),
            cache: f.cache,
            origin: f.origin.as_deref(),
            cors: f.cors,
            range: f.range.as_deref(),
            status: self.status,
            bytes,
            complete,
            duration_ms: (self.started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            token_hash: f.token_hash.as_deref(),
        };
        self.log.send(&record);
    }
}

/// Wraps a response body, counts the data bytes handed to the connection, and writes the
/// request's audit record exactly once, when the body is dropped (finished or not).
pub struct AuditedBody<B: Body + Unpin> {
    inner: B,
    pending: Pending,
    sent: u64,
    ended: bool,
    failed: bool,
}

impl<B: Body + Unpin> AuditedBody<B> {
    pub fn new(inner: B, pending: Pending) -> AuditedBody<B> {
        AuditedBody {
            inner,
            pending,
            sent: 0,
            ended: false,
            failed: false,
        }
    }
}

impl<B: Body + Unpin> Drop for AuditedBody<B> {
    fn drop(&mut self) {
        // An empty body (HEAD, 304, errors) may never be polled: it is complete if the inner
        // body says it has nothing left.
        let complete = !self.failed && (self.ended || self.inner.is_end_stream());
        self.pending.write(self.sent, complete);
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for AuditedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.failed = true,
            Poll::Ready(None) => self.ended = true,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---- the writer ----

enum Sink {
    /// Records of the current batch, written to stdout in one call under its lock: one syscall
    /// per batch instead of one per line (Rust's stdout is line-buffered), and never a partial
    /// line interleaved with log output from other threads.
    Stdout(Vec<u8>),
    File(RotatingFile),
}

/// Write a stdout batch early once it holds this much.
const STDOUT_BATCH_BYTES: usize = 64 * 1024;

fn write_loop(mut rx: mpsc::Receiver<String>, mut sink: Sink, metrics: &Metrics) {
    while let Some(first) = rx.blocking_recv() {
        // Write everything already queued, then flush once.
        let mut next = Some(first);
        let mut result = Ok(());
        while let Some(line) = next.take() {
            result = result.and(sink.write_line(&line));
            next = rx.try_recv().ok();
        }
        if let Err(e) = result.and(sink.flush()) {
            metrics.audit_write_errors.inc();
            tracing::error!(error = %e, "writing the audit log failed");
        }
        // Let the next batch gather: under load this turns one wake-up and one write per record
        // into one per batch. `benches/load.sh` (auth section): the audit log on stdout cost about
        // 47 us of CPU per 64 KiB request before, about 14 us after. A record waits at most this
        // long; the channel holds far more than arrives meanwhile.
        std::thread::sleep(AUDIT_BATCH_LINGER);
    }
}

/// How long the writer lets records gather after writing a batch.
const AUDIT_BATCH_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

impl Sink {
    fn write_line(&mut self, line: &str) -> io::Result<()> {
        match self {
            Sink::Stdout(batch) => {
                batch.extend_from_slice(line.as_bytes());
                batch.push(b'\n');
                if batch.len() >= STDOUT_BATCH_BYTES {
                    return Sink::write_stdout(batch);
                }
                Ok(())
            }
            Sink::File(file) => file.write_line(line),
        }
    }

    fn write_stdout(batch: &mut Vec<u8>) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut out = io::stdout().lock();
        let result = out.write_all(batch).and_then(|()| out.flush());
        batch.clear();
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(batch) => Sink::write_stdout(batch),
            Sink::File(file) => file.file.flush(),
        }
    }
}

/// An append-mode file rotated by size: `path` -> `path.1` -> ... -> `path.keep` (dropped).
struct RotatingFile {
    path: PathBuf,
    file: io::BufWriter<File>,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

impl RotatingFile {
    fn open(path: PathBuf, max_bytes: u64, keep: u32) -> Result<RotatingFile, AuditError> {
        let file = open_append(&path).map_err(|source| AuditError::Open {
            path: path.clone(),
            source,
        })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(RotatingFile {
            path,
            file: io::BufWriter::new(file),
            size,
            max_bytes,
            keep,
        })
    }

    fn write_line(&mut self, line: &str) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let numbered = |n: u32| {
                let mut p = self.path.clone().into_os_string();
                p.push(format!(".{n}"));
                PathBuf::from(p)
            };
            match std::fs::remove_file(numbered(self.keep)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            for n in (1..self.keep).rev() {
                match std::fs::rename(numbered(n), numbered(n + 1)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = io::BufWriter::new(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Client addresses and subjects: readable by the owner only.
        options.mode(0o600);
    }
    options.open(path)
}

/// `2024-05-06T07:08:09.123Z` (RFC 3339, UTC, milliseconds).
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = crate::civil_time::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap; src/ may not
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_utc_with_millis() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123); // leap year, Feb 29
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_868_800); // 2000-03-01
        assert_eq!(rfc3339(t), "2000-03-01T00:00:00.000Z");
    }

    #[test]
    fn token_hash_is_twelve_hex_digits_of_sha256() {
        // sha256("abc") = ba7816bf8f01cfea...
        assert_eq!(token_hash("abc"), "ba7816bf8f01");
    }

    #[test]
    fn header_text_escapes_control_bytes_and_backslashes() {
        assert_eq!(
            header_text(b"https://label.example.com"),
            "https://label.example.com"
        );
        assert_eq!(header_text(b"bytes=0-99"), "bytes=0-99");
        assert_eq!(
            header_text(b"a\r\n{\"x\":1}\\\x1b[31m\xc3\xa9"),
            "a\\x0d\\x0a{\"x\":1}\\\\\\x1b[31m\\xc3\\xa9"
        );
    }

    #[test]
    fn header_text_is_bounded_and_marks_the_cut() {
        let long = vec![b'a'; AUDIT_HEADER_VALUE_MAX_BYTES + 1];
        let text = header_text(&long);
        assert!(text.ends_with("\\..."), "{text}");
        assert!(text.len() <= AUDIT_HEADER_VALUE_MAX_BYTES + 4);
        let exact = vec![b'a'; AUDIT_HEADER_VALUE_MAX_BYTES];
        assert_eq!(header_text(&exact).len(), AUDIT_HEADER_VALUE_MAX_BYTES);
        // An escape is never split by the cut.
        let escapes = vec![0u8; AUDIT_HEADER_VALUE_MAX_BYTES];
        let text = header_text(&escapes);
        let kept = text.strip_suffix("\\...").unwrap();
        assert_eq!(kept.len() % 4, 0);
        assert!(kept.len() + 4 > AUDIT_HEADER_VALUE_MAX_BYTES);
    }

    #[test]
    fn rotation_keeps_at_most_keep_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut f = RotatingFile::open(path.clone(), 20, 2).unwrap();
        for i in 0..5 {
            // 15 bytes + newline: every line after the first rotates.
            f.write_line(&format!("line-{i}-........")).unwrap();
        }
        f.file.flush().unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path), "line-4-........\n");
        assert_eq!(read(&dir.path().join("audit.log.1")), "line-3-........\n");
        assert_eq!(read(&dir.path().join("audit.log.2")), "line-2-........\n");
        assert!(!dir.path().join("audit.log.3").exists());
    }

    #[test]
    fn rotation_with_keep_zero_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut f = RotatingFile::open(path.clone(), 20, 0).unwrap();
        f.write_line("first-line-xxxxx").unwrap();
        f.write_line("second-line-xxxx").unwrap();
        f.file.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "second-line-xxxx\n"
        );
        assert!(!dir.path().join("audit.log.1").exists());
    }
}
