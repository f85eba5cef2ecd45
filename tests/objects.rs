//! `GET/HEAD /o/{source}/{key...}` end to end, one table of cases run against every backend kind:
//! a local directory (fs), s3s-fs (an in-process S3 server that checks SigV4) and moto_server.
//! Each case runs over http/1.1 and h2 and checks the response byte for byte against what was
//! stored, plus the headers every response must carry (and must never carry).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support;

use crate::support::{Proto, TestGateway, encode_key, pattern_bytes};
use bucketgate::config::SourceConfig;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

/// The source name every backend is configured under.
const SRC: &str = "data";

/// The backend kinds the table runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fs,
    S3sFs,
    Moto,
}

/// Where test objects are written: the fs source's directory, or a bucket on an S3 server
/// (filled through the S3 API). Owning the server keeps it running for as long as the test.
enum Store {
    Dir(tempfile::TempDir),
    S3sFs(support::s3::S3sFs),
    Moto(support::s3::Moto),
}

const BUCKET: &str = "objects";

impl Store {
    /// Store `bytes` under `key`. S3 objects get the content type an fs source derives from the
    /// name, so that every backend serves the same objects.
    async fn put(&self, key: &str, bytes: &[u8]) {
        let ctype = mime_guess::from_path(key).first_raw();
        match self {
            Store::Dir(dir) => {
                support::write_file(dir.path(), key, bytes);
            }
            Store::S3sFs(server) => {
                server.put(BUCKET, key, bytes, ctype).await;
            }
            Store::Moto(server) => {
                server.put(BUCKET, key, bytes, ctype).await;
            }
        }
    }
}

/// A gateway serving one store as the source `data`, and a client per protocol.
struct Bed {
    kind: Kind,
    gw: TestGateway,
    store: Store,
    h1: reqwest::Client,
    h2: reqwest::Client,
}

async fn bed(kind: Kind) -> Bed {
    let (store, source) = match kind {
        Kind::Fs => {
            let dir = tempfile::tempdir().unwrap();
            let source = support::fs_source(dir.path());
            (Store::Dir(dir), source)
        }
        Kind::S3sFs => {
            let server =
                support::s3::S3sFs::start("AKIDBUCKETGATETEST", "bucketgate-test-secret").await;
            server.create_bucket(BUCKET).await;
            let source = SourceConfig::S3(server.source(BUCKET, ""));
            (Store::S3sFs(server), source)
        }
        Kind::Moto => {
            let server = support::s3::Moto::start().await;
            server.create_bucket(BUCKET).await;
            let source = SourceConfig::S3(server.source(BUCKET, ""));
            (Store::Moto(server), source)
        }
    };
    let gw = support::GatewayBuilder::new()
        .source(SRC, source)
        .start()
        .await;
    let (h1, h2) = (gw.h1_client(), gw.h2_client());
    Bed {
        kind,
        gw,
        store,
        h1,
        h2,
    }
}

/// A whole response, read to the end.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header value"))
    }

    /// Headers every data-listener response carries, and nothing that leaks the upstream.
    fn assert_hygiene(&self, what: &str) {
        assert_eq!(
            self.header("x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
        let csp = self.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("default-src 'none'"), "{what}: CSP {csp:?}");
        assert!(
            csp.contains("frame-ancestors 'none'"),
            "{what}: CSP {csp:?}"
        );
        assert_eq!(self.header("x-frame-options"), Some("DENY"), "{what}");
        assert_eq!(
            self.header("strict-transport-security"),
            Some("max-age=31536000"),
            "{what}"
        );
        assert_eq!(
            self.header("referrer-policy"),
            Some("no-referrer"),
            "{what}"
        );
        let id = self.header("x-request-id").unwrap_or_default();
        assert!(id.len() >= 16, "{what}: x-request-id {id:?}");
        for (name, _) in &self.headers {
            let name = name.as_str();
            assert!(
                !name.starts_with("x-amz") && name != "server" && name != "set-cookie",
                "{what}: upstream header {name} leaked"
            );
        }
        if !self.status.is_success() && self.status != StatusCode::NOT_MODIFIED {
            let text = String::from_utf8_lossy(&self.body);
            assert!(
                !text.contains('<'),
                "{what}: error body looks like XML: {text}"
            );
        }
    }

    /// A small JSON error body naming the same request id as the header.
    fn assert_json_error(&self, what: &str, message: &str) {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        let id = self.header("x-request-id").unwrap_or_default();
        let text = std::str::from_utf8(&self.body).expect("UTF-8 error body");
        assert_eq!(
            text.trim_end(),
            format!("{{\"error\":\"{message}\",\"request_id\":\"{id}\"}}"),
            "{what}"
        );
    }
}

impl From<support::RawResponse> for Reply {
    fn from(r: support::RawResponse) -> Reply {
        Reply {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }
}

impl Bed {
    fn path(&self, key: &str) -> String {
        format!("/o/{SRC}/{}", encode_key(key))
    }

    fn client(&self, proto: Proto) -> &reqwest::Client {
        match proto {
            Proto::H1 => &self.h1,
            Proto::H2 => &self.h2,
        }
    }

    /// Send through reqwest (paths that survive URL parsing unchanged), check the protocol used
    /// and the headers every response carries, and read the body whole.
    async fn send(
        &self,
        proto: Proto,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&'static [u8]>,
    ) -> Reply {
        let what = format!("{:?} {proto:?} {method} {path} {headers:?}", self.kind);
        let mut req = self.client(proto).request(method, self.gw.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            resp.version(),
            proto.version(),
            "{what}: negotiated protocol"
        );
        let (status, headers) = (resp.status(), resp.headers().clone());
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{what}: body: {e}"));
        let reply = Reply {
            status,
            headers,
            body,
        };
        reply.assert_hygiene(&what);
        reply
    }

    async fn get(&self, proto: Proto, key: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(proto, Method::GET, &self.path(key), headers, None)
            .await
    }

    /// Send a path exactly as written (no URL normalization).
    async fn raw(&self, proto: Proto, method: Method, path: &str) -> Reply {
        let what = format!("{:?} {proto:?} raw {method} {path}", self.kind);
        let r = self.gw.raw(proto, method, path, &[]).await;
        assert_eq!(r.version, proto.version(), "{what}: negotiated protocol");
        let reply = Reply::from(r);
        reply.assert_hygiene(&what);
        reply
    }
}

// ---------------------------------------------------------------------------------------------
// The table. Each case takes a backend kind; the macro at the bottom instantiates every case
// once per kind, so a failure names both (`moto::range_past_end_is_clipped`).

/// Keys every backend must store and serve byte-exact (DESIGN.md "Paths and keys").
fn key_corpus(kind: Kind) -> Vec<String> {
    let mut keys: Vec<String> = [
        "plain.txt",
        "with space.txt",
        "plus+sign.bin",
        "equals=sign",
        "at@sign",
        "quote'(1).jpg",
        "100%.txt",
        "co:lon",
        "tilde~x",
        "star*.bin",
        "dir/sub/deep.txt",
        "кириллица/файл.txt",
        "漢字/日本語のファイル.png",
        "emoji 😀🎉.bin",
        "caf\u{e9}.txt",   // NFC
        "cafe\u{301}.txt", // NFD twin: a different key
        "%2e%2e",          // a literal percent sign and letters, not a dot segment
    ]
    .iter()
    .map(|k| (*k).to_string())
    .collect();
    // The longest key allowed, exactly 1024 bytes, in segments a file system can hold. s3s-fs
    // names a metadata file after the base64 of the key, so it cannot store keys much over 160
    // bytes: it gets the longest key it can hold instead.
    let long = if kind == Kind::S3sFs {
        format!("{}/{}", "a".repeat(100), "b".repeat(49))
    } else {
        format!(
            "{}/{}/{}/{}/{}",
            "a".repeat(200),
            "b".repeat(200),
            "c".repeat(200),
            "d".repeat(200),
            "e".repeat(220)
        )
    };
    assert_eq!(long.len(), if kind == Kind::S3sFs { 150 } else { 1024 });
    keys.push(long);
    if kind == Kind::Moto {
        // Keys a directory cannot hold as distinct objects; S3 can.
        keys.push("a//b".into());
        keys.push("trailing/".into());
        keys.push(format!("seg/{}", "x".repeat(300)));
    }
    keys
}

async fn key_corpus_round_trips_byte_exact(kind: Kind) {
    let bed = bed(kind).await;
    let keys = key_corpus(kind);
    for (i, key) in keys.iter().enumerate() {
        let mut content = format!("object {i}: {key}\n").into_bytes();
        content.extend(pattern_bytes(100 + i, i as u64));
        bed.store.put(key, &content).await;
    }
    for proto in Proto::BOTH {
        for (i, key) in keys.iter().enumerate() {
            let r = bed.get(proto, key, &[]).await;
            assert_eq!(r.status, StatusCode::OK, "{kind:?} {proto:?} {key:?}");
            let mut want = format!("object {i}: {key}\n").into_bytes();
            want.extend(pattern_bytes(100 + i, i as u64));
            assert!(
                r.body == want,
                "{kind:?} {proto:?} {key:?}: body differs ({} bytes)",
                r.body.len()
            );
            assert_eq!(
                r.header("content-length"),
                Some(want.len().to_string().as_str()),
                "{kind:?} {key:?}"
            );
        }
    }
}

async fn nfc_and_nfd_twins_are_different_objects(kind: Kind) {
    let bed = bed(kind).await;
    let (nfc, nfd) = ("caf\u{e9}", "cafe\u{301}");
    bed.store.put(nfc, b"composed").await;
    for proto in Proto::BOTH {
        assert_eq!(
            bed.get(proto, nfd, &[]).await.status,
            StatusCode::NOT_FOUND,
            "{kind:?} {proto:?}"
        );
    }
    bed.store.put(nfd, b"decomposed").await;
    for proto in Proto::BOTH {
        assert_eq!(&bed.get(proto, nfc, &[]).await.body[..], b"composed");
        assert_eq!(&bed.get(proto, nfd, &[]).await.body[..], b"decomposed");
    }
}

async fn double_encoded_dots_are_a_literal_key(kind: Kind) {
    let bed = bed(kind).await;
    let path = format!("/o/{SRC}/%252e%252e");
    for proto in Proto::BOTH {
        let r = bed.raw(proto, Method::GET, &path).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{kind:?} {proto:?}: absent literal key"
        );
        r.assert_json_error("absent %2e%2e", "not found");
    }
    bed.store.put("%2e%2e", b"literal").await;
    for proto in Proto::BOTH {
        let r = bed.raw(proto, Method::GET, &path).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{kind:?} {proto:?}: stored literal key"
        );
        assert_eq!(&r.body[..], b"literal");
    }
}

async fn unsafe_keys_are_refused_with_400(kind: Kind) {
    let bed = bed(kind).await;
    // Objects a traversal would reach if it were not refused.
    bed.store.put("secret.txt", b"secret").await;
    bed.store.put("a/b", b"ab").await;
    let long = "k".repeat(1025);
    let cases: Vec<(String, &str)> = vec![
        ("..".into(), "object key contains a '.' or '..' segment"),
        (".".into(), "object key contains a '.' or '..' segment"),
        ("%2e%2e".into(), "object key contains a '.' or '..' segment"),
        (
            "%2E%2E/secret.txt".into(),
            "object key contains a '.' or '..' segment",
        ),
        ("%2E.".into(), "object key contains a '.' or '..' segment"),
        (
            ".%2e/secret.txt".into(),
            "object key contains a '.' or '..' segment",
        ),
        ("..%2F".into(), "object key contains a '.' or '..' segment"),
        (
            "..%2fsecret.txt".into(),
            "object key contains a '.' or '..' segment",
        ),
        (
            "a/%2e/b".into(),
            "object key contains a '.' or '..' segment",
        ),
        (
            "a/../secret.txt".into(),
            "object key contains a '.' or '..' segment",
        ),
        (
            "a%2F..%2Fsecret.txt".into(),
            "object key contains a '.' or '..' segment",
        ),
        ("a%00b".into(), "object key contains a control character"),
        ("a%0Ab".into(), "object key contains a control character"),
        (
            "a%0d%0aSet-Cookie:x".into(),
            "object key contains a control character",
        ),
        ("a%7Fb".into(), "object key contains a control character"),
        ("a%FFb".into(), "object key is not valid UTF-8"),
        ("%C0%AE%C0%AE".into(), "object key is not valid UTF-8"),
        ("a%zz".into(), "malformed percent-encoding in the path"),
        (long, "object key is longer than 1024 bytes"),
    ];
    for proto in Proto::BOTH {
        for (raw_key, message) in &cases {
            for method in [Method::GET, Method::HEAD] {
                let path = format!("/o/{SRC}/{raw_key}");
                let r = bed.raw(proto, method.clone(), &path).await;
                assert_eq!(
                    r.status,
                    StatusCode::BAD_REQUEST,
                    "{kind:?} {proto:?} {method} {path}"
                );
                if method == Method::GET {
                    r.assert_json_error(&path, message);
                } else {
                    assert!(r.body.is_empty(), "{kind:?} {proto:?} HEAD {path}: body");
                }
            }
        }
    }
}

async fn query_parameters_are_refused(kind: Kind) {
    let bed = bed(kind).await;
    bed.store.put("page.html", b"<p>hi</p>").await;
    let key = bed.path("page.html");
    let cases = [
        ("?versionId=1", "unknown query parameter"),
        (
            "?response-content-type=text/html",
            "unknown query parameter",
        ),
        (
            "?response-content-disposition=inline",
            "unknown query parameter",
        ),
        ("?x-id=GetObject", "unknown query parameter"),
        ("?a=1&a=2", "repeated query parameter"),
        ("?versionId&versionId", "repeated query parameter"),
    ];
    for proto in Proto::BOTH {
        for (query, message) in cases {
            let r = bed
                .send(proto, Method::GET, &format!("{key}{query}"), &[], None)
                .await;
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "{kind:?} {proto:?} {query}"
            );
            r.assert_json_error(query, message);
        }
    }
}

async fn write_methods_are_405_with_allow(kind: Kind) {
    let bed = bed(kind).await;
    bed.store.put("a.txt", b"a").await;
    let path = bed.path("a.txt");
    for proto in Proto::BOTH {
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            let r = bed.send(proto, method.clone(), &path, &[], None).await;
            assert_eq!(
                r.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{kind:?} {proto:?} {method}"
            );
            assert_eq!(
                r.header("allow"),
                Some("GET, HEAD"),
                "{kind:?} {proto:?} {method}"
            );
            r.assert_json_error(method.as_str(), "method not allowed");
        }
        // The object is still there, unchanged.
        assert_eq!(&bed.get(proto, "a.txt", &[]).await.body[..], b"a");
    }
}

async fn get_with_a_body_is_refused(kind: Kind) {
    let bed = bed(kind).await;
    bed.store.put("a.txt", b"a").await;
    let path = bed.path("a.txt");
    for proto in Proto::BOTH {
        let r = bed
            .send(proto, Method::GET, &path, &[], Some(b"unexpected body"))
            .await;
        assert!(
            r.status == StatusCode::PAYLOAD_TOO_LARGE || r.status == StatusCode::BAD_REQUEST,
            "{kind:?} {proto:?}: {}",
            r.status
        );
        assert!(
            r.header("content-range").is_none() && r.header("etag").is_none(),
            "{kind:?} {proto:?}: served the object"
        );
    }
}

/// A body whose length is not declared (h2: HEADERS without END_STREAM; http/1.1: chunked) is
/// judged by what arrives: empty frames then the end are no body, one byte is a body.
async fn undeclared_body_is_judged_by_its_bytes(kind: Kind) {
    let bed = bed(kind).await;
    bed.store.put("a.txt", b"a").await;
    let url = bed.gw.url(&bed.path("a.txt"));
    for proto in Proto::BOTH {
        let chunks = |items: &'static [&'static [u8]]| {
            let items: Vec<Result<Bytes, std::io::Error>> =
                items.iter().map(|b| Ok(Bytes::from_static(b))).collect();
            reqwest::Body::wrap_stream(futures_util::stream::iter(items))
        };
        // hyper's http/1.1 client frames a GET stream as Content-Length: 0 unless told to chunk.
        let get = || match proto {
            Proto::H1 => bed
                .client(proto)
                .get(&url)
                .header("transfer-encoding", "chunked"),
            Proto::H2 => bed.client(proto).get(&url),
        };
        let empty = get().body(chunks(&[b"", b""])).send().await.unwrap();
        assert_eq!(empty.version(), proto.version());
        assert_eq!(
            empty.status(),
            StatusCode::OK,
            "{kind:?} {proto:?}: empty stream"
        );
        assert_eq!(&empty.bytes().await.unwrap()[..], b"a");

        let one_byte = get().body(chunks(&[b"", b"x"])).send().await.unwrap();
        assert_eq!(
            one_byte.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "{kind:?} {proto:?}: one streamed byte"
        );
        assert!(one_byte.headers().get("etag").is_none());
    }
    // An open body is waited for only after authorization: a request without a token whose
    // stream never ends is a 401 at once, not a 408 after the wait.
    let anon = bed.gw.anon_client_builder().build().unwrap();
    let never_ends = reqwest::Body::wrap_stream(futures_util::stream::pending::<
        Result<Bytes, std::io::Error>,
    >());
    let resp = anon.get(&url).body(never_ends).send().await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{kind:?}");
}

async fn missing_key_is_404_with_json_error(kind: Kind) {
    let bed = bed(kind).await;
    bed.store.put("dir/present.txt", b"x").await;
    for proto in Proto::BOTH {
        for key in [
            "absent.txt",
            "dir/absent.txt",
            "absent-dir/x",
            "dir/present.txt/more",
        ] {
            for method in [Method::GET, Method::HEAD] {
                let r = bed
                    .send(proto, method.clone(), &bed.path(key), &[], None)
                    .await;
                assert_eq!(
                    r.status,
                    StatusCode::NOT_FOUND,
                    "{kind:?} {proto:?} {method} {key}"
                );
                if method == Method::GET {
                    r.assert_json_error(key, "not found");
                }
            }
        }
        // An unknown source looks the same as an unknown key (to a token whose scope names it;
        // any other token is refused before the source is looked up).
        let wide = support::token_for_sources(&[SRC.to_string(), "nosuchsource".to_string()]);
        let auth = format!("Bearer {wide}");
        let r = bed
            .send(
                proto,
                Method::GET,
                "/o/nosuchsource/absent.txt",
                &[("authorization", &auth)],
                None,
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{kind:?} {proto:?} unknown source"
        );
        r.assert_json_error("unknown source", "not found");
    }
}

/// The object the range and conditional matrix runs against.
const RANGE_KEY: &str = "ranges/object.bin";
const RANGE_SIZE: usize = 1000;

/// A 206 for `range` with exactly `want` as the body, and a matching Content-Range.
fn assert_partial(r: &Reply, what: &str, data: &[u8], start: usize, end: usize) {
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{what}");
    let want_range = format!("bytes {start}-{end}/{}", data.len());
    assert_eq!(
        r.header("content-range"),
        Some(want_range.as_str()),
        "{what}"
    );
    assert_eq!(
        r.header("content-length"),
        Some((end - start + 1).to_string().as_str()),
        "{what}"
    );
    assert!(
        r.body == data[start..=end],
        "{what}: body differs ({} bytes)",
        r.body.len()
    );
}

fn assert_whole(r: &Reply, what: &str, data: &[u8]) {
    assert_eq!(r.status, StatusCode::OK, "{what}");
    assert!(
        r.header("content-range").is_none(),
        "{what}: content-range on a 200"
    );
    assert_eq!(
        r.header("content-length"),
        Some(data.len().to_string().as_str()),
        "{what}"
    );
    assert!(
        r.body == data,
        "{what}: body differs ({} bytes)",
        r.body.len()
    );
}

async fn range_and_conditional_matrix(kind: Kind) {
    let bed = bed(kind).await;
    let data = pattern_bytes(RANGE_SIZE, 7);
    bed.store.put(RANGE_KEY, &data).await;
    let n = data.len();
    for proto in Proto::BOTH {
        let what = |case: &str| format!("{kind:?} {proto:?} {case}");
        let full = bed.get(proto, RANGE_KEY, &[]).await;
        assert_whole(&full, &what("plain GET"), &data);
        assert_eq!(
            full.header("accept-ranges"),
            Some("bytes"),
            "{}",
            what("accept-ranges")
        );
        let etag = full.header("etag").expect("ETag").to_string();
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
            "{}: {etag}",
            what("strong ETag")
        );
        let last_modified = full
            .header("last-modified")
            .expect("Last-Modified")
            .to_string();
        httpdate::parse_http_date(&last_modified).expect("Last-Modified is an HTTP date");

        let r = bed.get(proto, RANGE_KEY, &[("range", "bytes=0-0")]).await;
        assert_partial(&r, &what("bytes=0-0"), &data, 0, 0);
        assert_eq!(
            r.header("etag"),
            Some(etag.as_str()),
            "{}",
            what("ETag on 206")
        );
        let r = bed.get(proto, RANGE_KEY, &[("range", "bytes=10-19")]).await;
        assert_partial(&r, &what("bytes=10-19"), &data, 10, 19);
        let r = bed.get(proto, RANGE_KEY, &[("range", "bytes=-5")]).await;
        assert_partial(&r, &what("suffix bytes=-5"), &data, n - 5, n - 1);
        let r = bed.get(proto, RANGE_KEY, &[("range", "bytes=100-")]).await;
        assert_partial(&r, &what("open bytes=100-"), &data, 100, n - 1);
        let r = bed
            .get(proto, RANGE_KEY, &[("range", "bytes=10-999999999")])
            .await;
        assert_partial(&r, &what("past the end is clipped"), &data, 10, n - 1);
        let r = bed
            .get(proto, RANGE_KEY, &[("range", &format!("bytes={}-", n - 1))])
            .await;
        assert_partial(&r, &what("last byte"), &data, n - 1, n - 1);

        for unsatisfiable in [format!("bytes={n}-"), format!("bytes={}-{}", n + 5, n + 10)] {
            let r = bed
                .get(proto, RANGE_KEY, &[("range", &unsatisfiable)])
                .await;
            assert_eq!(
                r.status,
                StatusCode::RANGE_NOT_SATISFIABLE,
                "{}",
                what(&unsatisfiable)
            );
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes */{n}").as_str()),
                "{}",
                what(&unsatisfiable)
            );
            r.assert_json_error(&unsatisfiable, "range not satisfiable");
        }

        let r = bed
            .get(proto, RANGE_KEY, &[("range", "bytes=0-1,5-6")])
            .await;
        assert_whole(&r, &what("multiple ranges -> whole object"), &data);

        let r = bed.get(proto, RANGE_KEY, &[("if-none-match", &etag)]).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_MODIFIED,
            "{}",
            what("If-None-Match")
        );
        assert!(r.body.is_empty(), "{}", what("304 body"));
        assert_eq!(
            r.header("etag"),
            Some(etag.as_str()),
            "{}",
            what("ETag on 304")
        );
        let r = bed
            .get(proto, RANGE_KEY, &[("if-none-match", "\"something-else\"")])
            .await;
        assert_whole(&r, &what("If-None-Match other tag"), &data);

        let r = bed
            .get(proto, RANGE_KEY, &[("if-modified-since", &last_modified)])
            .await;
        assert_eq!(
            r.status,
            StatusCode::NOT_MODIFIED,
            "{}",
            what("If-Modified-Since = Last-Modified")
        );
        assert!(r.body.is_empty(), "{}", what("304 body"));
        let r = bed
            .get(
                proto,
                RANGE_KEY,
                &[("if-modified-since", "Thu, 01 Jan 1998 00:00:00 GMT")],
            )
            .await;
        assert_whole(&r, &what("If-Modified-Since long ago"), &data);

        let r = bed
            .get(
                proto,
                RANGE_KEY,
                &[("range", "bytes=10-19"), ("if-range", &etag)],
            )
            .await;
        assert_partial(&r, &what("If-Range current ETag"), &data, 10, 19);
        let r = bed
            .get(
                proto,
                RANGE_KEY,
                &[("range", "bytes=10-19"), ("if-range", "\"stale\"")],
            )
            .await;
        assert_whole(&r, &what("If-Range stale ETag"), &data);

        let r = bed
            .send(proto, Method::HEAD, &bed.path(RANGE_KEY), &[], None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", what("HEAD"));
        assert!(r.body.is_empty(), "{}", what("HEAD body"));
        for h in [
            "etag",
            "last-modified",
            "accept-ranges",
            "content-length",
            "content-type",
            "cache-control",
        ] {
            assert_eq!(
                r.header(h),
                full.header(h),
                "{}",
                what(&format!("HEAD {h}"))
            );
        }
    }
}

async fn content_type_passes_only_from_the_safe_list(kind: Kind) {
    let bed = bed(kind).await;
    let png = b"\x89PNG\r\n\x1a\nnot really".to_vec();
    bed.store
        .put("page.html", b"<script>alert(1)</script>")
        .await;
    bed.store.put("logo.svg", b"<svg onload=alert(1)/>").await;
    bed.store.put("pic.png", &png).await;
    bed.store.put("notes.txt", b"plain").await;
    for proto in Proto::BOTH {
        for key in ["page.html", "logo.svg"] {
            for method in [Method::GET, Method::HEAD] {
                let r = bed
                    .send(proto, method.clone(), &bed.path(key), &[], None)
                    .await;
                assert_eq!(
                    r.status,
                    StatusCode::OK,
                    "{kind:?} {proto:?} {method} {key}"
                );
                assert_eq!(
                    r.header("content-type"),
                    Some("application/octet-stream"),
                    "{kind:?} {proto:?} {key}"
                );
                assert_eq!(
                    r.header("content-disposition"),
                    Some("attachment"),
                    "{kind:?} {proto:?} {key}"
                );
            }
        }
        let r = bed.get(proto, "pic.png", &[]).await;
        assert_eq!(
            r.header("content-type"),
            Some("image/png"),
            "{kind:?} {proto:?}"
        );
        assert!(
            r.header("content-disposition").is_none(),
            "{kind:?} {proto:?}: png as attachment"
        );
        assert_eq!(
            r.header("cache-control"),
            Some("private"),
            "{kind:?} {proto:?}"
        );
        assert!(r.body == png, "{kind:?} {proto:?}: png body");
        let r = bed.get(proto, "notes.txt", &[]).await;
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("text/plain")),
            "{kind:?} {proto:?}"
        );
    }
}

async fn empty_object_is_served_and_any_range_is_416(kind: Kind) {
    let bed = bed(kind).await;
    bed.store.put("empty.bin", b"").await;
    for proto in Proto::BOTH {
        let r = bed.get(proto, "empty.bin", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{kind:?} {proto:?}");
        assert_eq!(r.header("content-length"), Some("0"), "{kind:?} {proto:?}");
        assert!(r.body.is_empty());
        let r = bed.get(proto, "empty.bin", &[("range", "bytes=0-")]).await;
        assert_eq!(
            r.status,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{kind:?} {proto:?}"
        );
        assert_eq!(
            r.header("content-range"),
            Some("bytes */0"),
            "{kind:?} {proto:?}"
        );
    }
}

macro_rules! table {
    ($($module:ident => $kind:expr;)+) => {$(
        mod $module {
            use super::*;

            #[tokio::test]
            async fn key_corpus_round_trips_byte_exact() {
                super::key_corpus_round_trips_byte_exact($kind).await;
            }
            #[tokio::test]
            async fn nfc_and_nfd_twins_are_different_objects() {
                super::nfc_and_nfd_twins_are_different_objects($kind).await;
            }
            #[tokio::test]
            async fn double_encoded_dots_are_a_literal_key() {
                super::double_encoded_dots_are_a_literal_key($kind).await;
            }
            #[tokio::test]
            async fn unsafe_keys_are_refused_with_400() {
                super::unsafe_keys_are_refused_with_400($kind).await;
            }
            #[tokio::test]
            async fn query_parameters_are_refused() {
                super::query_parameters_are_refused($kind).await;
            }
            #[tokio::test]
            async fn write_methods_are_405_with_allow() {
                super::write_methods_are_405_with_allow($kind).await;
            }
            #[tokio::test]
            async fn get_with_a_body_is_refused() {
                super::get_with_a_body_is_refused($kind).await;
            }
            #[tokio::test]
            async fn undeclared_body_is_judged_by_its_bytes() {
                super::undeclared_body_is_judged_by_its_bytes($kind).await;
            }
            #[tokio::test]
            async fn missing_key_is_404_with_json_error() {
                super::missing_key_is_404_with_json_error($kind).await;
            }
            #[tokio::test]
            async fn range_and_conditional_matrix() {
                super::range_and_conditional_matrix($kind).await;
            }
            #[tokio::test]
            async fn content_type_passes_only_from_the_safe_list() {
                super::content_type_passes_only_from_the_safe_list($kind).await;
            }
            #[tokio::test]
            async fn empty_object_is_served_and_any_range_is_416() {
                super::empty_object_is_served_and_any_range_is_416($kind).await;
            }
        }
    )+};
}

table! {
    fs => Kind::Fs;
    s3s_fs => Kind::S3sFs;
    moto => Kind::Moto;
}
