//! How many requests an S3 source makes of its store per client request (issue 12): a GET is one
//! GetObject carrying the client's `Range` and conditions, a HEAD one HeadObject. The store sits
//! behind a counting TCP proxy that records every request head it forwards (method, target and
//! the headers the conditions travel in), so the counts are what reached the store, retries
//! included. Against s3s-fs (which ignores conditions on GET: the gateway decides them from the
//! answer's metadata) and moto (which answers 304 and 412 itself).
//!
//! The cases S3 cannot answer in one request are pinned too: a stale `If-Range` (GetObject has no
//! If-Range: a second, whole GET), an unsatisfiable range and a failed `If-Match` answered 412
//! by the store (neither carries the size or validators: one HEAD), and moto's 304, which lacks
//! the Last-Modified a 304 of the gateway carries (one HEAD; S3's 304 has both validators).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use bucketgate::config::SourceConfig;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::{self, Proto, TestGateway, pattern_bytes};

const BUCKET: &str = "counted";
const KEY: &str = "dir/object.bin";
const SIZE: usize = 100_000;

/// One request head the proxy forwarded to the store.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    /// Lower-case names.
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A TCP proxy on `127.0.0.1:0` in front of `upstream`, recording every request head that
/// passes. The gateway's store requests (GET, HEAD, ListObjectsV2) have no body, so the client
/// side of a connection is a sequence of heads.
struct CountingProxy {
    endpoint: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl CountingProxy {
    async fn start(upstream: &str) -> CountingProxy {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("plain-HTTP store")
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let upstream = upstream.clone();
                let log = Arc::clone(&log);
                connections.spawn(async move {
                    if let Ok(store) = TcpStream::connect(&upstream).await {
                        pump(client, store, log).await;
                    }
                });
            }
        });
        CountingProxy {
            endpoint: format!("http://{addr}"),
            seen,
            task,
        }
    }

    /// The requests for the test object since the last call (a readiness listing is not one).
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
            .into_iter()
            .filter(|s| s.target.contains("object.bin"))
            .collect()
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copy both ways; record each request head going to the store.
async fn pump(client: TcpStream, store: TcpStream, log: Arc<Mutex<Vec<Seen>>>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut store_read, mut store_write) = store.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut store_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = pending.drain(..end + 4).collect();
            log.lock().unwrap().push(parse_head(&head));
        }
        if store_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = store_write.shutdown().await;
    let _ = back.await;
}

fn parse_head(head: &[u8]) -> Seen {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let target = first.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    assert!(
        headers
            .iter()
            .all(|(n, v)| n != "content-length" || v == "0"),
        "a store request with a body: {text}"
    );
    Seen {
        method,
        target,
        headers,
    }
}

/// The store under test.
enum Store {
    S3sFs(support::s3::S3sFs),
    Moto(support::s3::Moto),
}

impl std::ops::Deref for Store {
    type Target = support::s3::S3Api;
    fn deref(&self) -> &support::s3::S3Api {
        match self {
            Store::S3sFs(s) => s,
            Store::Moto(m) => m,
        }
    }
}

/// A gateway whose source `s3` reads the store through a counting proxy; the object stored.
struct Bed {
    gw: TestGateway,
    proxy: CountingProxy,
    store: Store,
    data: Vec<u8>,
}

async fn bed(moto: bool) -> Bed {
    let store = if moto {
        Store::Moto(support::s3::Moto::start().await)
    } else {
        Store::S3sFs(support::s3::S3sFs::start("AKIDCOUNTED", "counted-secret").await)
    };
    store.create_bucket(BUCKET).await;
    let data = pattern_bytes(SIZE, 12);
    store.put(BUCKET, KEY, &data, Some("image/png")).await;
    let proxy = CountingProxy::start(&store.endpoint).await;
    let mut source = store.source(BUCKET, "");
    source.endpoint = Some(proxy.endpoint.clone());
    let gw = support::GatewayBuilder::new()
        .source("s3", SourceConfig::S3(source))
        .start()
        .await;
    Bed {
        gw,
        proxy,
        store,
        data,
    }
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Bed {
    async fn send(&self, proto: Proto, method: http::Method, headers: &[(&str, &str)]) -> Reply {
        let mut req = self
            .gw
            .client_for(proto)
            .request(method, self.gw.url(&format!("/o/s3/{KEY}")));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap().to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Send one GET (or HEAD) and return what the store saw for it.
    async fn counted(
        &self,
        proto: Proto,
        method: http::Method,
        headers: &[(&str, &str)],
    ) -> (Reply, Vec<Seen>) {
        self.proxy.take();
        let reply = self.send(proto, method, headers).await;
        (reply, self.proxy.take())
    }
}

/// `seen` is exactly these methods, in order.
fn assert_methods(seen: &[Seen], want: &[&str], what: &str) {
    let got: Vec<&str> = seen.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(got, want, "{what}: store requests {seen:#?}");
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The one-request cases both stores must meet, over both protocols.
async fn one_request_per_client_request(moto: bool) {
    use http::Method;
    let bed = bed(moto).await;
    let n = SIZE;
    for proto in Proto::BOTH {
        let what = |case: &str| format!("{} {proto:?} {case}", if moto { "moto" } else { "s3s" });

        let (r, seen) = bed.counted(proto, Method::GET, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", what("GET"));
        assert!(r.body == bed.data, "{}", what("GET body"));
        assert_methods(&seen, &["GET"], &what("GET"));
        assert_eq!(seen[0].header("range"), None, "{}", what("GET"));
        let etag = header(&r, "etag").unwrap().to_owned();
        let last_modified = header(&r, "last-modified").unwrap().to_owned();

        for (range, start, end) in [
            ("bytes=10-19", 10, 19),
            ("bytes=-5", n - 5, n - 1),
            ("bytes=99000-", 99_000, n - 1),
            ("bytes=99990-999999999", 99_990, n - 1),
        ] {
            let (r, seen) = bed.counted(proto, Method::GET, &[("range", range)]).await;
            assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{}", what(range));
            assert_eq!(
                header(&r, "content-range"),
                Some(format!("bytes {start}-{end}/{n}").as_str()),
                "{}",
                what(range)
            );
            assert!(r.body == bed.data[start..=end], "{}", what(range));
            assert_methods(&seen, &["GET"], &what(range));
            // The client's range as written: the store resolves it against the size.
            assert_eq!(seen[0].header("range"), Some(range), "{}", what(range));
        }

        // s3s-fs ignores the condition and sends the object: the gateway decides 304 from its
        // metadata and drops the body. moto answers 304 itself, without Last-Modified: one HEAD.
        let store_304: &[&str] = if moto { &["GET", "HEAD"] } else { &["GET"] };
        let (r, seen) = bed
            .counted(proto, Method::GET, &[("if-none-match", &etag)])
            .await;
        assert_eq!(
            r.status,
            StatusCode::NOT_MODIFIED,
            "{}",
            what("If-None-Match")
        );
        assert_eq!(
            header(&r, "etag"),
            Some(etag.as_str()),
            "{}",
            what("304 ETag")
        );
        assert_eq!(
            header(&r, "last-modified"),
            Some(last_modified.as_str()),
            "{}",
            what("304 Last-Modified")
        );
        assert!(r.body.is_empty(), "{}", what("304 body"));
        assert_methods(&seen, store_304, &what("If-None-Match"));
        assert_eq!(
            seen[0].header("if-none-match"),
            Some(etag.as_str()),
            "{}",
            what("If-None-Match forwarded")
        );

        let (r, seen) = bed
            .counted(proto, Method::GET, &[("if-modified-since", &last_modified)])
            .await;
        assert_eq!(
            r.status,
            StatusCode::NOT_MODIFIED,
            "{}",
            what("If-Modified-Since")
        );
        assert_methods(&seen, store_304, &what("If-Modified-Since"));
        assert!(
            seen[0].header("if-modified-since").is_some(),
            "{}",
            what("If-Modified-Since forwarded")
        );

        // A weak tag is decided by the gateway (weak comparison: 304), never sent to the store.
        let weak = format!("W/{etag}");
        let (r, seen) = bed
            .counted(proto, Method::GET, &[("if-none-match", &weak)])
            .await;
        assert_eq!(
            r.status,
            StatusCode::NOT_MODIFIED,
            "{}",
            what("weak If-None-Match")
        );
        assert_methods(&seen, &["GET"], &what("weak If-None-Match"));
        assert_eq!(
            seen[0].header("if-none-match"),
            None,
            "{}",
            what("weak tag kept")
        );

        let (r, seen) = bed
            .counted(
                proto,
                Method::GET,
                &[("if-none-match", "\"other\""), ("range", "bytes=0-9")],
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::PARTIAL_CONTENT,
            "{}",
            what("INM other + range")
        );
        assert!(r.body == bed.data[..10], "{}", what("INM other + range"));
        assert_methods(&seen, &["GET"], &what("INM other + range"));

        let (r, seen) = bed
            .counted(
                proto,
                Method::GET,
                &[("range", "bytes=10-19"), ("if-range", &etag)],
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::PARTIAL_CONTENT,
            "{}",
            what("If-Range")
        );
        assert!(r.body == bed.data[10..20], "{}", what("If-Range"));
        assert_methods(&seen, &["GET"], &what("If-Range current"));

        let (r, seen) = bed
            .counted(proto, Method::GET, &[("if-match", &etag)])
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", what("If-Match"));
        assert!(r.body == bed.data, "{}", what("If-Match body"));
        assert_methods(&seen, &["GET"], &what("If-Match"));
        assert_eq!(
            seen[0].header("if-match"),
            Some(etag.as_str()),
            "{}",
            what("If-Match")
        );

        let (r, seen) = bed.counted(proto, Method::HEAD, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", what("HEAD"));
        assert_eq!(
            header(&r, "content-length"),
            Some(n.to_string().as_str()),
            "{}",
            what("HEAD")
        );
        assert_methods(&seen, &["HEAD"], &what("HEAD"));
        let (r, seen) = bed
            .counted(proto, Method::HEAD, &[("if-none-match", &etag)])
            .await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{}", what("HEAD 304"));
        assert_methods(&seen, &["HEAD"], &what("HEAD 304"));

        // What one GetObject cannot answer: a stale If-Range (no If-Range on GetObject) gets
        // the whole object by a second GET, pinned to the version the first one saw.
        let (r, seen) = bed
            .counted(
                proto,
                Method::GET,
                &[("range", "bytes=10-19"), ("if-range", "\"stale\"")],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", what("stale If-Range"));
        assert!(r.body == bed.data, "{}", what("stale If-Range body"));
        assert_methods(&seen, &["GET", "GET"], &what("stale If-Range"));
        assert_eq!(seen[1].header("range"), None, "{}", what("stale If-Range"));
        assert_eq!(
            seen[1].header("if-match"),
            Some(etag.as_str()),
            "{}",
            what("pinned")
        );

        // A 416 carries no size for `bytes */N`: one HEAD learns it.
        let past = format!("bytes={n}-");
        let (r, seen) = bed.counted(proto, Method::GET, &[("range", &past)]).await;
        assert_eq!(
            r.status,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{}",
            what(&past)
        );
        assert_eq!(
            header(&r, "content-range"),
            Some(format!("bytes */{n}").as_str()),
            "{}",
            what(&past)
        );
        assert_methods(&seen, &["GET", "HEAD"], &what(&past));
    }
}

#[tokio::test]
async fn s3s_get_is_one_store_request_ranged_and_conditional_and_head_is_one() {
    one_request_per_client_request(false).await;
}

#[tokio::test]
async fn moto_get_is_one_store_request_ranged_and_conditional_and_head_is_one() {
    one_request_per_client_request(true).await;
}

/// A failed If-Match: s3s-fs ignores it and sends the object, which the gateway answers 412
/// from its metadata (one request); moto answers 412 itself, which says nothing of the object,
/// so one HEAD follows. The client gets the same 412 either way.
#[tokio::test]
async fn failed_if_match_is_412_from_either_store() {
    for (moto, calls) in [(false, &["GET"][..]), (true, &["GET", "HEAD"][..])] {
        let bed = bed(moto).await;
        for proto in Proto::BOTH {
            let what = format!("moto={moto} {proto:?} If-Match other");
            let (r, seen) = bed
                .counted(proto, http::Method::GET, &[("if-match", "\"other\"")])
                .await;
            assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{what}");
            assert_methods(&seen, calls, &what);
            assert_eq!(seen[0].header("if-match"), Some("\"other\""), "{what}");
        }
    }
}

/// 200 concurrent cold GETs of one object make 200 store requests, all GETs (before issue 12:
/// 200 HEADs and 200 GETs).
#[tokio::test]
async fn concurrent_cold_gets_make_one_store_request_each() {
    let bed = bed(false).await;
    let client = bed.gw.client_for(Proto::H2);
    bed.proxy.take();
    let url = bed.gw.url(&format!("/o/s3/{KEY}"));
    let gets = (0..200).map(|_| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let resp = client.get(url).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.bytes().await.unwrap().len()
        }
    });
    let lens = futures_util::future::join_all(gets).await;
    assert!(lens.iter().all(|&len| len == SIZE), "short bodies");
    let seen = bed.proxy.take();
    let heads = seen.iter().filter(|s| s.method == "HEAD").count();
    let gets = seen.iter().filter(|s| s.method == "GET").count();
    assert_eq!((heads, gets), (0, 200), "HEADs and GETs at the store");
}

/// Against an origin that answers 304 as S3 does (ETag and Last-Modified, no body), the 304 is
/// passed on from the one GET; a range form the origin ignores (it answers 200 to `bytes=-n`)
/// is never served from that answer: the decided range comes from a second, ranged GET.
#[tokio::test]
async fn origin_304_is_one_request_and_an_ignored_range_is_asked_again() {
    use crate::support::origin::{self, Mode, Origin};
    let o = Origin::start(Mode::Healthy).await;
    let gw = support::GatewayBuilder::new()
        .source(
            "o",
            SourceConfig::S3(support::s3::source(
                &o.endpoint,
                "bucket",
                "",
                "AKIDTEST",
                "secret",
            )),
        )
        .start()
        .await;
    let data = origin::object_bytes();
    let last_modified = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(origin::LAST_MODIFIED_SECS),
    );
    for proto in Proto::BOTH {
        let client = gw.client_for(proto);
        let before = o.requests();
        let resp = client
            .get(gw.url("/o/o/photo.png"))
            .header("if-none-match", origin::ETAG)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED, "{proto:?}");
        assert_eq!(resp.headers()["etag"], origin::ETAG, "{proto:?}");
        assert_eq!(
            resp.headers()["last-modified"],
            last_modified.as_str(),
            "{proto:?}"
        );
        assert!(
            resp.bytes().await.unwrap().is_empty(),
            "{proto:?}: 304 body"
        );
        assert_eq!(o.requests() - before, 1, "{proto:?}: one GET for a 304");

        let before = o.requests();
        let resp = client
            .get(gw.url("/o/o/photo.png"))
            .header("range", "bytes=-100")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{proto:?}");
        let n = data.len();
        assert_eq!(
            resp.headers()["content-range"],
            format!("bytes {}-{}/{n}", n - 100, n - 1).as_str(),
            "{proto:?}"
        );
        assert!(
            resp.bytes().await.unwrap() == data[n - 100..],
            "{proto:?}: suffix body"
        );
        assert_eq!(
            o.requests() - before,
            2,
            "{proto:?}: GET (range ignored), ranged GET"
        );
    }
}

/// `Backend::get` (a cache's chunk fill) is one GetObject carrying the range and the version it
/// must read (If-Match on the expected ETag), never a HEAD first.
#[tokio::test]
async fn backend_get_is_one_ranged_get_pinned_by_if_match() {
    use bucketgate::backend::{Backend, ByteRange, Caller};
    use futures_util::StreamExt;
    let bed = bed(false).await;
    let source = bucketgate::config::S3Source {
        endpoint: Some(bed.proxy.endpoint.clone()),
        ..bed.store.source(BUCKET, "")
    };
    let backend = bucketgate::backend::s3::S3Backend::new(&source, &support::test_limits())
        .await
        .unwrap();
    let meta = backend.head(KEY, Caller::Gateway).await.unwrap();
    bed.proxy.take();
    let range = ByteRange {
        start: 1000,
        end: 1999,
    };
    let got = backend
        .get(KEY, Some(range), &meta, Caller::Gateway)
        .await
        .unwrap();
    let mut body = Vec::new();
    let mut stream = got.body;
    while let Some(frame) = stream.next().await {
        body.extend_from_slice(&frame.unwrap());
    }
    assert!(body == bed.data[1000..2000], "ranged body");
    let seen = bed.proxy.take();
    assert_methods(&seen, &["GET"], "Backend::get");
    assert_eq!(seen[0].header("range"), Some("bytes=1000-1999"));
    assert_eq!(seen[0].header("if-match"), meta.etag.as_deref());
}
