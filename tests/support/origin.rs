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
