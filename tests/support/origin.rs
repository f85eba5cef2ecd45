//! A deliberately misbehaving S3-like origin: a real TCP server on `127.0.0.1:0` speaking
//! hand-written HTTP/1.1, so each failure is exactly the bytes (or silence, or RST) a broken store
//! or network would produce.
//!
//! Every mode except `Refuse` and `StallBeforeHeaders` answers HEAD (HeadObject) correctly, so a
//! client gets past `head` and meets the failure in `get`. Any path is the one object
//! ([`OBJECT_LEN`] bytes of [`object_bytes`]); `?list-type=2` (ListObjectsV2) gets an empty
//! listing in `Healthy` mode. `Endless` streams a [`ENDLESS_LEN`]-byte object for as long as the
//! peer reads and counts the GETs the peer cut off, for the client-disconnect tests.
//! `LeakyHeaders` and `ErrorXml` carry what a gateway must never pass on (upstream cookies,
//! `x-amz-*` headers, S3's XML error bodies), for the response-hygiene tests. `HugeHeaders` sends
//! a header block no store sends; `ErrorCode` answers as S3 refuses a request (HEAD without a
//! body, GET with the error code); `SlowHeadThenStall` and `Trickle` are slow, not broken.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Size of the one object every path names.
pub const OBJECT_LEN: usize = 64 * 1024;
/// How much of the body the broken modes send before failing.
pub const PARTIAL_LEN: usize = OBJECT_LEN / 4;
/// The object's ETag, quoted as S3 sends it.
pub const ETAG: &str = "\"0123456789abcdef0123456789abcdef\"";
/// The object's Last-Modified: 2025-01-01T00:00:00Z.
pub const LAST_MODIFIED_SECS: u64 = 1_735_689_600;
const LAST_MODIFIED_HTTP: &str = "Wed, 01 Jan 2025 00:00:00 GMT";
pub const CONTENT_TYPE: &str = "image/png";
/// Size `Endless` announces (HEAD and GET): far more than any test reads.
pub const ENDLESS_LEN: u64 = 1 << 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing listens on the port (bound, then released).
    Refuse,
    /// Accept and read each request, never answer.
    StallBeforeHeaders,
    /// GET: 200 with the full Content-Length and part of the body, then a TCP reset.
    ResetMidBody,
    /// GET: 200 with the full Content-Length, fewer bytes, then a normal close (FIN).
    ShortBody,
    /// GET: 200 with headers and part of the body, then silence with the connection open.
    StallMidBody,
    /// A correct answer to everything: `Range` as `bytes=a-b` (other forms get the whole
    /// object, as from a store that ignores them), `If-None-Match` with the ETag (304, with
    /// ETag and Last-Modified as from S3).
    Healthy,
    /// GET: 200 with Content-Length [`ENDLESS_LEN`], then the [`object_bytes`] pattern repeated
    /// for as long as the peer takes it. A write that fails (the peer closed) counts as a cut GET.
    Endless,
    /// As `Healthy`, with [`LEAKY_HEADERS`] on every answer (HEAD and GET).
    LeakyHeaders,
    /// GET: this status (403 or 500) with an S3 XML error body whose message names
    /// [`ERROR_SECRET`], plus [`LEAKY_HEADERS`]. HEAD answers correctly.
    ErrorXml(u16),
    /// HEAD: the correct answer, [`SLOW_HEAD`] late. GET: never answered.
    SlowHeadThenStall,
    /// GET: 200 with the full Content-Length, then the body in [`TRICKLE_PIECES`] pieces,
    /// [`TRICKLE_PAUSE`] apart: a slow download that never stalls for long.
    Trickle,
    /// As `Healthy`, with [`HUGE_HEADER_BYTES`] of `x-amz-meta-*` headers on every answer.
    HugeHeaders(HeaderShape),
    /// S3 refusing every request with this status and error code: HEAD gets the status without
    /// a body (so without the code, as from S3), GET the status and S3's XML error with `code`.
    ErrorCode(u16, &'static str),
}

/// How `HugeHeaders` spreads its header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderShape {
    /// 25 headers of 4 KiB each (fewer than any client's header count limit).
    Many,
    /// One header line of [`HUGE_HEADER_BYTES`].
    One,
}

/// Size of the `HugeHeaders` header block: over the gateway's 64 KiB, under hyper's 400 KiB.
pub const HUGE_HEADER_BYTES: usize = 100 * 1024;
/// How late `SlowHeadThenStall` answers a HEAD.
pub const SLOW_HEAD: Duration = Duration::from_millis(1500);
/// `Trickle`: the object in this many pieces, this far apart.
pub const TRICKLE_PIECES: usize = 8;
pub const TRICKLE_PAUSE: Duration = Duration::from_millis(300);

fn huge_headers(shape: HeaderShape) -> String {
    match shape {
        HeaderShape::Many => (0..25)
            .map(|i| format!("x-amz-meta-huge-{i:02}: {}\r\n", "m".repeat(4 * 1024)))
            .collect(),
        HeaderShape::One => format!("x-amz-meta-huge: {}\r\n", "o".repeat(HUGE_HEADER_BYTES)),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        301 => "Moved Permanently",
        400 => "Bad Request",
        403 => "Forbidden",
        _ => "Error",
    }
}

/// S3's error document with `code`.
fn code_xml(code: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>\
         {ERROR_SECRET} refused</Message><RequestId>origin-test</RequestId>\
         <HostId>origin-host-id</HostId></Error>"
    )
}

/// Headers of a real S3 answer that a gateway must not pass on (besides the `x-amz-request-id`
/// every answer here carries).
pub const LEAKY_HEADERS: &str = "Set-Cookie: x=y\r\nx-amz-meta-secret: s\r\n\
                                 x-amz-id-2: origin-host-id\r\nServer: AmazonS3\r\n";
/// What the `ErrorXml` body says that no client may read.
pub const ERROR_SECRET: &str = "secret-bucket-name";

/// S3's error document for `status`: `AccessDenied` for 403, `InternalError` otherwise.
fn error_xml(status: u16) -> String {
    let code = if status == 403 {
        "AccessDenied"
    } else {
        "InternalError"
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>\
         {ERROR_SECRET} refused arn:aws:iam::123456789012:role/origin-test</Message>\
         <Resource>/{ERROR_SECRET}/photo.png</Resource><RequestId>origin-test</RequestId>\
         <HostId>origin-host-id</HostId></Error>"
    )
}

/// The object's bytes: a fixed pattern, so any slice of it can be checked.
pub fn object_bytes() -> Vec<u8> {
    (0..OBJECT_LEN).map(|i| (i % 251) as u8).collect()
}

pub struct Origin {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    requests: Arc<AtomicUsize>,
    stats: Arc<Stats>,
    server: Option<JoinHandle<()>>,
}

/// What `Endless` GETs did, shared with the connection tasks.
#[derive(Default)]
struct Stats {
    /// Body bytes written to peers (all GETs together).
    body_bytes: AtomicU64,
    /// GETs whose body was being written when the peer closed the connection.
    cut_gets: AtomicUsize,
}

impl Origin {
    pub async fn start(mode: Mode) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(Stats::default());
        let server = if mode == Mode::Refuse {
            drop(listener);
            None
        } else {
            let counter = requests.clone();
            let shared = stats.clone();
            Some(tokio::spawn(async move {
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    connections.spawn(serve(stream, mode, counter.clone(), shared.clone()));
                }
            }))
        };
        Origin {
            endpoint: format!("http://{addr}"),
            requests,
            stats,
            server,
        }
    }

    /// Body bytes written so far (`Endless`).
    pub fn body_bytes(&self) -> u64 {
        self.stats.body_bytes.load(Ordering::SeqCst)
    }

    /// GETs cut off by the peer closing the connection mid-body (`Endless`).
    pub fn cut_gets(&self) -> usize {
        self.stats.cut_gets.load(Ordering::SeqCst)
    }

    /// Requests received so far (complete request heads, HEAD and GET alike).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            // Aborting the accept task drops its JoinSet, which aborts every connection,
            // including the ones parked forever by the stall modes.
            server.abort();
        }
    }
}

struct Request {
    method: String,
    target: String,
    range: Option<String>,
    if_none_match: Option<String>,
}

/// Read one request head; `None` when the peer closed or sent garbage.
async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut range = None;
    let mut if_none_match = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await.ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let name = name.trim();
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            } else if name.eq_ignore_ascii_case("if-none-match") {
                if_none_match = Some(value.trim().to_string());
            }
        }
    }
    Some(Request {
        method,
        target,
        range,
        if_none_match,
    })
}

fn object_head(status: &str, length: usize, extra: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Length: {length}\r\nETag: {ETAG}\r\n\
         Last-Modified: {LAST_MODIFIED_HTTP}\r\nContent-Type: {CONTENT_TYPE}\r\n\
         Accept-Ranges: bytes\r\nx-amz-request-id: origin-test\r\n{extra}\r\n"
    )
}

/// `bytes=a-b` -> (a, b) clipped to the object; anything else -> whole object.
fn parse_range(value: &str) -> Option<(usize, usize)> {
    let (a, b) = value.strip_prefix("bytes=")?.split_once('-')?;
    let start: usize = a.parse().ok()?;
    let end: usize = b.parse::<usize>().ok()?.min(OBJECT_LEN - 1);
    (start <= end).then_some((start, end))
}

async fn serve(stream: TcpStream, mode: Mode, requests: Arc<AtomicUsize>, stats: Arc<Stats>) {
    let mut reader = BufReader::new(stream);
    let body = object_bytes();
    while let Some(req) = read_request(&mut reader).await {
        requests.fetch_add(1, Ordering::SeqCst);
        if mode == Mode::StallBeforeHeaders {
            std::future::pending::<()>().await;
        }
        let stream = reader.get_mut();
        if let Mode::ErrorCode(status, code) = mode {
            // A refused HEAD has no body, so no code; a refused GET says which refusal it is.
            let xml = if req.method == "HEAD" {
                String::new()
            } else {
                code_xml(code)
            };
            let head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\nx-amz-request-id: origin-test\r\n\r\n",
                reason(status),
                xml.len()
            );
            if !write_all(stream, &[head.as_bytes(), xml.as_bytes()]).await {
                return;
            }
            continue;
        }
        if req.method == "HEAD" {
            let len = if mode == Mode::Endless {
                ENDLESS_LEN as usize
            } else {
                OBJECT_LEN
            };
            if mode == Mode::SlowHeadThenStall {
                tokio::time::sleep(SLOW_HEAD).await;
            }
            let huge;
            let extra = match mode {
                Mode::LeakyHeaders => LEAKY_HEADERS,
                Mode::HugeHeaders(shape) => {
                    huge = huge_headers(shape);
                    &huge
                }
                _ => "",
            };
            if stream
                .write_all(object_head("200 OK", len, extra).as_bytes())
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let huge;
        let leaky = match mode {
            Mode::LeakyHeaders => LEAKY_HEADERS,
            Mode::HugeHeaders(shape) => {
                huge = huge_headers(shape);
                &huge
            }
            _ => "",
        };
        match mode {
            Mode::Healthy | Mode::LeakyHeaders | Mode::HugeHeaders(_) => {
                let ok = if req.target.contains("list-type=2") {
                    let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult \
                               xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>b</Name>\
                               <Prefix></Prefix><KeyCount>0</KeyCount><MaxKeys>1</MaxKeys>\
                               <IsTruncated>false</IsTruncated></ListBucketResult>";
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n",
                        xml.len()
                    );
                    write_all(stream, &[head.as_bytes(), xml.as_bytes()]).await
                } else if req.if_none_match.as_deref() == Some(ETAG) {
                    // As S3 answers: both validators, no body.
                    let head = format!(
                        "HTTP/1.1 304 Not Modified\r\nETag: {ETAG}\r\n\
                         Last-Modified: {LAST_MODIFIED_HTTP}\r\nx-amz-request-id: origin-test\r\n\
                         {leaky}\r\n"
                    );
                    write_all(stream, &[head.as_bytes()]).await
                } else if let Some((start, end)) = req.range.as_deref().and_then(parse_range) {
                    let extra =
                        format!("Content-Range: bytes {start}-{end}/{OBJECT_LEN}\r\n{leaky}");
                    let head = object_head("206 Partial Content", end - start + 1, &extra);
                    write_all(stream, &[head.as_bytes(), &body[start..=end]]).await
                } else {
                    let head = object_head("200 OK", OBJECT_LEN, leaky);
                    write_all(stream, &[head.as_bytes(), &body]).await
                };
                if !ok {
                    return;
                }
            }
            Mode::ErrorXml(status) => {
                let xml = error_xml(status);
                let reason = if status == 403 {
                    "Forbidden"
                } else {
                    "Internal Server Error"
                };
                let head = format!(
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n\
                     Content-Length: {}\r\nx-amz-request-id: origin-test\r\n{LEAKY_HEADERS}\r\n",
                    xml.len()
                );
                if !write_all(stream, &[head.as_bytes(), xml.as_bytes()]).await {
                    return;
                }
            }
            Mode::ResetMidBody => {
                let head = object_head("200 OK", OBJECT_LEN, "");
                let _ = write_all(stream, &[head.as_bytes(), &body[..PARTIAL_LEN]]).await;
                // On Linux the peer still reads the queued headers and partial body before the
                // reset is reported, so the failure lands in the body, as it would in production.
                // SO_LINGER 0: close() sends RST instead of FIN.
                let _ = socket2::SockRef::from(&*stream).set_linger(Some(Duration::ZERO));
                return;
            }
            Mode::ShortBody => {
                let head = object_head("200 OK", OBJECT_LEN, "");
                let _ = write_all(stream, &[head.as_bytes(), &body[..PARTIAL_LEN]]).await;
                let _ = stream.shutdown().await;
                return;
            }
            Mode::StallMidBody => {
                let head = object_head("200 OK", OBJECT_LEN, "");
                let _ = write_all(stream, &[head.as_bytes(), &body[..PARTIAL_LEN]]).await;
                std::future::pending::<()>().await;
            }
            Mode::Endless => {
                let head = object_head("200 OK", ENDLESS_LEN as usize, "");
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                // 256 whole periods of the pattern, so consecutive chunks continue it.
                let chunk: Vec<u8> = (0..251 * 256).map(|i| (i % 251) as u8).collect();
                loop {
                    if stream.write_all(&chunk).await.is_err() {
                        stats.cut_gets.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    stats
                        .body_bytes
                        .fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
            }
            Mode::Trickle => {
                let head = object_head("200 OK", OBJECT_LEN, "");
                if !write_all(stream, &[head.as_bytes()]).await {
                    return;
                }
                for piece in body.chunks(OBJECT_LEN.div_ceil(TRICKLE_PIECES)) {
                    tokio::time::sleep(TRICKLE_PAUSE).await;
                    if !write_all(stream, &[piece]).await {
                        return;
                    }
                }
            }
            Mode::SlowHeadThenStall => std::future::pending::<()>().await,
            Mode::Refuse | Mode::StallBeforeHeaders | Mode::ErrorCode(..) => return,
        }
    }
}

async fn write_all(stream: &mut TcpStream, parts: &[&[u8]]) -> bool {
    for part in parts {
        if stream.write_all(part).await.is_err() {
            return false;
        }
    }
    stream.flush().await.is_ok()
}

// ---------------------------------------------------------------------------------------------
// A counting S3-like origin for the cache tests.

/// One request a [`CountingOrigin`] or [`CountingProxy`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    /// The object key (path after `/<bucket>/`, query removed), or the raw target.
    pub key: String,
    pub range: Option<String>,
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
    /// The status answered (`CountingOrigin` only; 0 through a proxy).
    pub status: u16,
}

impl Logged {
    /// A `GET` of an object (not a listing).
    pub fn is_object_get(&self) -> bool {
        self.method == "GET" && !self.key.contains("list-type=2")
    }

    /// The inclusive byte span this GET asked for, on an object of `size` bytes (`None`: a
    /// Range this helper does not resolve).
    pub fn span(&self, size: u64) -> Option<(u64, u64)> {
        match &self.range {
            None => Some((0, size.checked_sub(1)?)),
            Some(r) => resolve_range(r, size),
        }
    }
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` on an object of `size` bytes -> inclusive span; `None`
/// when unsatisfiable or not one of those forms.
pub fn resolve_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let (a, b) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || size == 0 {
            return None;
        }
        return Some((size.saturating_sub(n), size - 1));
    }
    let start: u64 = a.parse().ok()?;
    if start >= size {
        return None;
    }
    let end = if b.is_empty() {
        size - 1
    } else {
        b.parse::<u64>().ok()?.min(size - 1)
    };
    (start <= end).then_some((start, end))
}

/// What the next object GET does after sending its head and `after` body bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Wait for [`Held::release`], then send the rest.
    Continue,
    /// Wait for [`Held::release`], then reset the connection (the body breaks off).
    Reset,
    /// Never go on (the connection stays open, silent), for a `kill -9` mid-fill.
    Hang,
}

/// A GET held part-way by [`CountingOrigin::hold_next_get`].
#[derive(Clone)]
pub struct Held {
    sent: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

impl Held {
    /// Wait until the origin has sent the head and the first bytes.
    pub async fn sent(&self) {
        self.sent.notified().await;
    }

    pub fn release(&self) {
        self.release.notify_one();
    }
}

struct Hold {
    after: usize,
    then: Then,
    held: Held,
    /// Hold only a GET whose answer starts at this offset (`None`: the next GET).
    at: Option<u64>,
}

struct Object {
    bytes: bytes::Bytes,
    etag: String,
}

#[derive(Default)]
struct CountingState {
    objects: std::sync::Mutex<std::collections::HashMap<String, Object>>,
    log: std::sync::Mutex<Vec<Logged>>,
    hold: std::sync::Mutex<Option<Hold>>,
    versions: AtomicU64,
}

/// An S3-like origin (path style, any bucket name, any credentials) serving objects set by the
/// test, with Range (`a-b`, `a-`, `-n`; 416 past the end), ETag, `If-Match` (412) and
/// `If-None-Match` (304) on HEAD and GET, logging every request; one GET can be held part-way
/// and then finished, broken off or left hanging.
pub struct CountingOrigin {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    state: Arc<CountingState>,
    server: JoinHandle<()>,
}

impl Drop for CountingOrigin {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl CountingOrigin {
    pub async fn start() -> CountingOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let state = Arc::new(CountingState::default());
        let shared = Arc::clone(&state);
        let server = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(serve_counting(stream, Arc::clone(&shared)));
            }
        });
        CountingOrigin {
            endpoint: format!("http://{addr}"),
            state,
            server,
        }
    }

    /// Store (or replace) `key` with a new ETag; returns the ETag, quoted.
    pub fn put(&self, key: &str, bytes: &[u8]) -> String {
        let n = self.state.versions.fetch_add(1, Ordering::SeqCst) + 1;
        let etag = format!("\"{n:08x}{:024x}\"", bytes.len());
        self.state.objects.lock().unwrap().insert(
            key.to_owned(),
            Object {
                bytes: bytes::Bytes::copy_from_slice(bytes),
                etag: etag.clone(),
            },
        );
        etag
    }

    /// Every request so far, in arrival order.
    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    /// The object GETs so far.
    pub fn gets(&self) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(Logged::is_object_get)
            .collect()
    }

    /// The object GETs of `key` so far.
    pub fn gets_of(&self, key: &str) -> Vec<Logged> {
        self.gets().into_iter().filter(|l| l.key == key).collect()
    }

    /// The next object GET that answers 200/206 sends its head and `after` body bytes, then
    /// does what `then` says.
    pub fn hold_next_get(&self, after: usize, then: Then) -> Held {
        let held = Held {
            sent: Arc::new(tokio::sync::Notify::new()),
            release: Arc::new(tokio::sync::Notify::new()),
        };
        *self.state.hold.lock().unwrap() = Some(Hold {
            after,
            then,
            held: held.clone(),
            at: None,
        });
        held
    }

    /// As [`CountingOrigin::hold_next_get`], for the next GET whose answer starts at `start`.
    pub fn hold_get_at(&self, start: u64, after: usize, then: Then) -> Held {
        let held = self.hold_next_get(after, then);
        if let Some(hold) = self.state.hold.lock().unwrap().as_mut() {
            hold.at = Some(start);
        }
        held
    }
}

struct CountingRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl CountingRequest {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

/// Read one request head (and skip a body of Content-Length bytes).
async fn read_counting_request(reader: &mut BufReader<TcpStream>) -> Option<CountingRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await.ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let req = CountingRequest {
        method,
        target,
        headers,
    };
    if let Some(len) = req
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
    {
        let mut body = tokio::io::AsyncReadExt::take(&mut *reader, len);
        tokio::io::copy(&mut body, &mut tokio::io::sink())
            .await
            .ok()?;
    }
    Some(req)
}

/// `/bucket/some/key?x-id=GetObject` -> `some/key` (percent-decoded).
fn key_of(target: &str) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if query.contains("list-type=2") {
        return target.to_owned();
    }
    let path = path.trim_start_matches('/');
    let key = path.split_once('/').map_or("", |(_, k)| k);
    percent_encoding::percent_decode_str(key)
        .decode_utf8_lossy()
        .into_owned()
}

fn s3_error(status: u16, reason: &str, code: &str, head_only: bool) -> String {
    let xml = if head_only {
        String::new()
    } else {
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code></Error>")
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         x-amz-request-id: counting\r\n\r\n{xml}",
        xml.len()
    )
}

async fn serve_counting(stream: TcpStream, state: Arc<CountingState>) {
    let mut reader = BufReader::new(stream);
    while let Some(req) = read_counting_request(&mut reader).await {
        let key = key_of(&req.target);
        let mut logged = Logged {
            method: req.method.clone(),
            key: key.clone(),
            range: req.header("range"),
            if_match: req.header("if-match"),
            if_none_match: req.header("if-none-match"),
            status: 0,
        };
        let head_only = req.method == "HEAD";
        let object = state
            .objects
            .lock()
            .unwrap()
            .get(&key)
            .map(|o| (o.bytes.clone(), o.etag.clone()));
        let stream = reader.get_mut();
        let answer = if key.contains("list-type=2") {
            logged.status = 501;
            s3_error(501, "Not Implemented", "NotImplemented", false)
        } else if let Some((bytes, etag)) = object {
            let size = bytes.len() as u64;
            if logged
                .if_match
                .as_ref()
                .is_some_and(|m| *m != etag && m != "*")
            {
                logged.status = 412;
                s3_error(412, "Precondition Failed", "PreconditionFailed", head_only)
            } else if logged
                .if_none_match
                .as_ref()
                .is_some_and(|m| *m == etag || m == "*")
            {
                logged.status = 304;
                format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\n\r\n")
            } else {
                let span = match &logged.range {
                    None => Ok(None),
                    Some(r) => resolve_range(r, size).map(Some).ok_or(()),
                };
                match span {
                    Err(()) => {
                        logged.status = 416;
                        s3_error(
                            416,
                            "Requested Range Not Satisfiable",
                            "InvalidRange",
                            head_only,
                        )
                    }
                    Ok(span) => {
                        let (status, (start, end)) = match span {
                            Some(s) => (206, s),
                            None => (200, (0, size.saturating_sub(1))),
                        };
                        logged.status = status;
                        let len = if size == 0 { 0 } else { end - start + 1 };
                        let range_line = if status == 206 {
                            format!("Content-Range: bytes {start}-{end}/{size}\r\n")
                        } else {
                            String::new()
                        };
                        let reason = if status == 206 {
                            "Partial Content"
                        } else {
                            "OK"
                        };
                        let head = format!(
                            "HTTP/1.1 {status} {reason}\r\nContent-Length: {len}\r\nETag: {etag}\r\n\
                             Last-Modified: {LAST_MODIFIED_HTTP}\r\nContent-Type: application/octet-stream\r\n\
                             Accept-Ranges: bytes\r\n{range_line}x-amz-request-id: counting\r\n\r\n"
                        );
                        state.log.lock().unwrap().push(logged);
                        let body = if head_only || len == 0 {
                            bytes::Bytes::new()
                        } else {
                            bytes.slice(start as usize..=end as usize)
                        };
                        let hold = if head_only {
                            None
                        } else {
                            let mut hold = state.hold.lock().unwrap();
                            if hold
                                .as_ref()
                                .is_some_and(|h| h.at.is_none_or(|at| at == start))
                            {
                                hold.take()
                            } else {
                                None
                            }
                        };
                        if !send_object(stream, head.as_bytes(), &body, hold).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        } else {
            logged.status = 404;
            s3_error(404, "Not Found", "NoSuchKey", head_only)
        };
        state.log.lock().unwrap().push(logged);
        if !write_all(stream, &[answer.as_bytes()]).await {
            return;
        }
    }
}

/// Send an object answer, held part-way when `hold` says so; `false`: the connection is done.
async fn send_object(stream: &mut TcpStream, head: &[u8], body: &[u8], hold: Option<Hold>) -> bool {
    let Some(hold) = hold else {
        return write_all(stream, &[head, body]).await;
    };
    let first = hold.after.min(body.len());
    if !write_all(stream, &[head, &body[..first]]).await {
        return false;
    }
    hold.held.sent.notify_one();
    match hold.then {
        Then::Hang => {
            std::future::pending::<()>().await;
            false
        }
        Then::Continue => {
            hold.held.release.notified().await;
            write_all(stream, &[&body[first..]]).await
        }
        Then::Reset => {
            hold.held.release.notified().await;
            let _ = socket2::SockRef::from(&*stream).set_linger(Some(Duration::ZERO));
            false
        }
    }
}

/// A TCP proxy in front of a real store (s3s-fs) that logs each request head it forwards
/// (method, target, Range) and passes every byte through unchanged, so SigV4 still checks.
pub struct CountingProxy {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    log: Arc<std::sync::Mutex<Vec<Logged>>>,
    server: JoinHandle<()>,
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl CountingProxy {
    /// Proxy to `upstream` (`http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> CountingProxy {
        let upstream: std::net::SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("upstream is http://IP:PORT");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let shared = Arc::clone(&log);
        let server = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let log = Arc::clone(&shared);
                connections.spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut server_r, mut server_w) = server.into_split();
                    let (client_r, mut client_w) = client.into_split();
                    let back = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_r, &mut client_w).await;
                    });
                    let mut reader = BufReader::new(client_r);
                    // Requests from the gateway carry no body (HEAD, GET, ListObjectsV2).
                    loop {
                        let mut head = Vec::new();
                        let mut lines = Vec::new();
                        loop {
                            let mut line = String::new();
                            match reader.read_line(&mut line).await {
                                Ok(0) | Err(_) => {
                                    back.abort();
                                    return;
                                }
                                Ok(_) => {}
                            }
                            head.extend_from_slice(line.as_bytes());
                            let done = line == "\r\n";
                            lines.push(line);
                            if done {
                                break;
                            }
                        }
                        let mut first = lines[0].split_whitespace();
                        let method = first.next().unwrap_or("").to_owned();
                        let target = first.next().unwrap_or("").to_owned();
                        let header = |name: &str| {
                            lines.iter().skip(1).find_map(|l| {
                                let (n, v) = l.split_once(':')?;
                                n.trim()
                                    .eq_ignore_ascii_case(name)
                                    .then(|| v.trim().to_owned())
                            })
                        };
                        log.lock().unwrap().push(Logged {
                            method,
                            key: key_of(&target),
                            range: header("range"),
                            if_match: header("if-match"),
                            if_none_match: header("if-none-match"),
                            status: 0,
                        });
                        if server_w.write_all(&head).await.is_err() {
                            back.abort();
                            return;
                        }
                    }
                });
            }
        });
        CountingProxy {
            endpoint: format!("http://{addr}"),
            log,
            server,
        }
    }

    pub fn log(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }

    pub fn gets_of(&self, key: &str) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| l.is_object_get() && l.key == key)
            .collect()
    }
}
