//! The request as an HTTP message, as a strict client or an attacker sends it: the `Host` /
//! `:authority` rules (RFC 9112 section 3.2, RFC 9113 section 8.3.1), body framing and the
//! connection close after a refused one (RFC 9112 section 6), and the headers every response
//! carries (`Strict-Transport-Security`, no framing). Raw TLS sockets, so nothing normalizes the
//! bytes on the way.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support;

use std::time::Duration;

use crate::support::{GatewayBuilder, Proto, TestGateway, fs_source};
use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HELLO: &[u8] = b"hello from the request tests\n";
const HELLO_PATH: &str = "/o/local/hello.txt";

async fn gateway_with(
    tweak: impl FnOnce(&mut bucketgate::config::Config),
) -> (TestGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    support::write_file(dir.path(), "hello.txt", HELLO);
    let gw = GatewayBuilder::new()
        .source("local", fs_source(dir.path()))
        .tweak(tweak)
        .start()
        .await;
    (gw, dir)
}

async fn gateway() -> (TestGateway, tempfile::TempDir) {
    gateway_with(|_| {}).await
}

/// Write `bytes` in one go on a fresh http/1.1 TLS connection and read until the server closes
/// (panics if it does not within 10 s).
async fn h1_send(gw: &TestGateway, bytes: &[u8]) -> Vec<u8> {
    let mut tls = gw
        .tls_connect(gw.tls_config(&[b"http/1.1"], rustls::ALL_VERSIONS))
        .await
        .expect("TLS connect");
    tls.write_all(bytes).await.unwrap();
    tls.flush().await.unwrap();
    let (out, closed) = support::read_until_closed(&mut tls, Duration::from_secs(10)).await;
    assert!(
        closed,
        "server did not close the connection; read so far:\n{}",
        String::from_utf8_lossy(&out)
    );
    out
}

/// One parsed http/1.1 response.
#[derive(Debug)]
struct H1Response {
    status: u16,
    /// Lowercased names, values as sent.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl H1Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn error(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("JSON body: {:?}", String::from_utf8_lossy(&self.body)));
        v["error"].as_str().expect("an error text").to_owned()
    }
}

/// Every response in `bytes` (each framed by Content-Length, as all of ours are).
fn responses(bytes: &[u8]) -> Vec<H1Response> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("incomplete head: {:?}", String::from_utf8_lossy(rest)));
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1."), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let body = rest[end + 4..end + 4 + len].to_vec();
        rest = &rest[end + 4 + len..];
        out.push(H1Response {
            status,
            headers,
            body,
        });
    }
    out
}

/// The one response on a connection the server then closed.
async fn h1_one(gw: &TestGateway, bytes: &[u8]) -> H1Response {
    let mut all = responses(&h1_send(gw, bytes).await);
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

/// `GET hello.txt` with the test token, `Connection: close`, and `head_lines` (each ending in
/// `\r\n`) in place of a Host header.
fn get_with(gw: &TestGateway, target: &str, head_lines: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\n{head_lines}{}Connection: close\r\n\r\n",
        gw.auth_line()
    )
    .into_bytes()
}

fn host_line(gw: &TestGateway) -> String {
    format!("Host: {}\r\n", gw.data_addr())
}

// ---- Host and :authority ----

#[tokio::test]
async fn h1_host_missing_repeated_or_invalid_is_400_with_json() {
    let (gw, _dir) = gateway().await;
    let ok = h1_one(&gw, &get_with(&gw, HELLO_PATH, &host_line(&gw))).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, HELLO);

    let addr = gw.data_addr().to_string();
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "missing Host header"),
        (
            format!("Host: {addr}\r\nHost: {addr}\r\n"),
            "more than one Host header",
        ),
        (
            "Host: a.example\r\nHost: b.example\r\n".to_owned(),
            "more than one Host header",
        ),
        ("Host:\r\n".to_owned(), "invalid Host header"),
        (
            format!("Host: user@{addr}\r\n"),
            "userinfo is not allowed in the request authority",
        ),
        (
            format!("Host: user:secret@{addr}\r\n"),
            "userinfo is not allowed in the request authority",
        ),
        ("Host: a b.example\r\n".to_owned(), "invalid Host header"),
        (
            "Host: a.example:https\r\n".to_owned(),
            "invalid Host header",
        ),
        (
            "Host: a.example:70000\r\n".to_owned(),
            "invalid Host header",
        ),
        ("Host: a.example/o/x\r\n".to_owned(), "invalid Host header"),
        ("Host: [::1\r\n".to_owned(), "invalid Host header"),
        ("Host: <script>\r\n".to_owned(), "invalid Host header"),
    ];
    for (lines, want) in cases {
        let resp = h1_one(&gw, &get_with(&gw, HELLO_PATH, &lines)).await;
        assert_eq!(resp.status, 400, "{lines:?}");
        assert_eq!(resp.error(), want, "{lines:?}");
        assert_eq!(
            resp.header("content-type"),
            Some("application/json"),
            "{lines:?}"
        );
    }
}

#[tokio::test]
async fn h1_absolute_form_target_with_userinfo_is_400() {
    let (gw, _dir) = gateway().await;
    let addr = gw.data_addr();
    let host = host_line(&gw);
    let target = format!("https://{addr}{HELLO_PATH}");
    let ok = h1_one(&gw, &get_with(&gw, &target, &host)).await;
    assert_eq!(ok.status, 200, "absolute form without userinfo");
    let target = format!("https://user@{addr}{HELLO_PATH}");
    let resp = h1_one(&gw, &get_with(&gw, &target, &host)).await;
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.error(),
        "userinfo is not allowed in the request authority"
    );
    // An absolute form does not make Host optional.
    let target = format!("https://{addr}{HELLO_PATH}");
    let resp = h1_one(&gw, &get_with(&gw, &target, "")).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.error(), "missing Host header");
}

#[tokio::test]
async fn h1_0_without_host_is_served_but_two_hosts_are_not() {
    let (gw, _dir) = gateway().await;
    let req = format!("GET {HELLO_PATH} HTTP/1.0\r\n{}\r\n", gw.auth_line());
    let resp = h1_one(&gw, req.as_bytes()).await;
    assert_eq!(resp.status, 200);
    let req = format!(
        "GET {HELLO_PATH} HTTP/1.0\r\nHost: a.example\r\nHost: b.example\r\n{}\r\n",
        gw.auth_line()
    );
    let resp = h1_one(&gw, req.as_bytes()).await;
    assert_eq!(resp.status, 400);
}

/// An h2 connection made with the `h2` crate, which sends `:authority` exactly as the URI has it.
async fn h2_connect(gw: &TestGateway) -> h2::client::SendRequest<Bytes> {
    let tls = gw
        .tls_connect(gw.tls_config(&[b"h2"], rustls::ALL_VERSIONS))
        .await
        .expect("TLS connect");
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(conn);
    send
}

/// Send `req` and read the whole response: status, headers and body.
async fn h2_fetch(
    send: &h2::client::SendRequest<Bytes>,
    req: http::Request<()>,
) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let mut send = send.clone().ready().await.unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    let (parts, mut body) = resp.into_parts();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        out.extend_from_slice(&chunk);
    }
    (parts.status, parts.headers, out)
}

fn h2_get(gw: &TestGateway, uri: &str, extra: &[(&str, &str)]) -> http::Request<()> {
    let mut req = http::Request::get(uri).header(
        http::header::AUTHORIZATION,
        format!("Bearer {}", gw.token().unwrap()),
    );
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    req.body(()).unwrap()
}

fn json_error(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn h2_authority_with_userinfo_or_a_disagreeing_host_is_400() {
    let (gw, _dir) = gateway().await;
    let addr = gw.data_addr();
    let send = h2_connect(&gw).await;
    let url = gw.url(HELLO_PATH);
    let (status, _, body) = h2_fetch(&send, h2_get(&gw, &url, &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, HELLO);

    let with_user = format!("https://user:pw@{addr}{HELLO_PATH}");
    let (status, _, body) = h2_fetch(&send, h2_get(&gw, &with_user, &[])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        json_error(&body),
        "userinfo is not allowed in the request authority"
    );

    let same = addr.to_string();
    let (status, _, _) = h2_fetch(&send, h2_get(&gw, &url, &[("host", &same)])).await;
    assert_eq!(status, StatusCode::OK, "Host equal to :authority");
    let (status, _, body) = h2_fetch(&send, h2_get(&gw, &url, &[("host", "other.example")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json_error(&body), "Host header does not match :authority");
    let other_port = format!("{}:1", addr.ip());
    let (status, _, _) = h2_fetch(&send, h2_get(&gw, &url, &[("host", &other_port)])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "same host, other port");
    let with_user = format!("user@{addr}");
    let (status, _, body) = h2_fetch(&send, h2_get(&gw, &url, &[("host", &with_user)])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        json_error(&body),
        "userinfo is not allowed in the request authority"
    );
    // The connection still serves.
    let (status, _, _) = h2_fetch(&send, h2_get(&gw, &url, &[])).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn admin_listener_applies_the_same_host_check() {
    let (gw, _dir) = gateway().await;
    let admin = gw.admin_addr();
    let exchange = |req: String| async move {
        let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
            .await
            .expect("admin closes after Connection: close")
            .unwrap();
        let mut all = responses(&out);
        assert_eq!(all.len(), 1);
        all.remove(0)
    };
    let ok = exchange(format!(
        "GET /healthz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    ))
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("strict-transport-security"), None, "plain HTTP");
    assert_eq!(ok.header("x-frame-options"), Some("DENY"));
    for lines in [
        String::new(),
        format!("Host: {admin}\r\nHost: {admin}\r\n"),
        format!("Host: user@{admin}\r\n"),
    ] {
        let resp = exchange(format!(
            "GET /healthz HTTP/1.1\r\n{lines}Connection: close\r\n\r\n"
        ))
        .await;
        assert_eq!(resp.status, 400, "{lines:?}");
        assert!(!resp.error().is_empty());
        assert_eq!(resp.header("strict-transport-security"), None);
        assert_eq!(resp.header("x-frame-options"), Some("DENY"));
    }
    // The same framing rule, and the same close after it.
    let resp = exchange(format!(
        "POST /admin/reload HTTP/1.1\r\nHost: {admin}\r\n\
         Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    ))
    .await;
    assert_eq!(resp.status, 501);
    assert_eq!(resp.header("connection"), Some("close"));
}

// ---- Transfer-Encoding and the connection after a refused body ----

/// `first`, then a valid `GET hello.txt` (with `Connection: close`) in the same write. A server
/// that reads the second as a request answers it too; one that closes after `first` does not.
fn pipelined(gw: &TestGateway, first: &str) -> Vec<u8> {
    let mut bytes = first.as_bytes().to_vec();
    bytes.extend(get_with(gw, HELLO_PATH, &host_line(gw)));
    bytes
}

/// `GET hello.txt` with the token and `framing` header lines, then `body` as sent.
fn get_framed(gw: &TestGateway, framing: &str, body: &str) -> String {
    format!(
        "GET {HELLO_PATH} HTTP/1.1\r\n{}{}{framing}\r\n{body}",
        host_line(gw),
        gw.auth_line()
    )
}

#[tokio::test]
async fn h1_transfer_coding_other_than_chunked_is_501_and_closes_the_connection() {
    let (gw, _dir) = gateway().await;
    // Control: a chunked GET with an empty body is served and the pipelined request too.
    let both = responses(
        &h1_send(
            &gw,
            &pipelined(
                &gw,
                &get_framed(&gw, "Transfer-Encoding: chunked\r\n", "0\r\n\r\n"),
            ),
        )
        .await,
    );
    assert_eq!(
        both.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 200]
    );
    for (framing, status, error) in [
        (
            "Transfer-Encoding: gzip, chunked\r\n",
            501,
            "transfer coding not implemented",
        ),
        (
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            501,
            "transfer coding not implemented",
        ),
        (
            "Transfer-Encoding: identity, chunked\r\n",
            501,
            "transfer coding not implemented",
        ),
        (
            "Transfer-Encoding: chunked, chunked\r\n",
            400,
            "chunked transfer coding applied more than once",
        ),
    ] {
        let sent = pipelined(&gw, &get_framed(&gw, framing, "0\r\n\r\n"));
        let resp = h1_one(&gw, &sent).await;
        assert_eq!(resp.status, status, "{framing:?}");
        assert_eq!(resp.error(), error, "{framing:?}");
        assert_eq!(resp.header("connection"), Some("close"), "{framing:?}");
        assert!(
            resp.header("strict-transport-security").is_some(),
            "{framing:?}"
        );
    }
}

/// hyper refuses these before the gateway sees them (400, RFC 9112 section 6.3) and closes: the
/// request pipelined behind them is never read.
#[tokio::test]
async fn h1_transfer_encoding_hyper_refuses_closes_the_connection() {
    let (gw, _dir) = gateway().await;
    for framing in [
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: chunked, gzip\r\n",
        "Transfer-Encoding: chunked;x=1\r\n",
    ] {
        let resp = h1_one(&gw, &pipelined(&gw, &get_framed(&gw, framing, "0\r\n\r\n"))).await;
        assert_eq!(resp.status, 400, "{framing:?}");
    }
    // Transfer-Encoding on HTTP/1.0.
    let req = format!(
        "GET {HELLO_PATH} HTTP/1.0\r\nTransfer-Encoding: chunked\r\n{}\r\n0\r\n\r\n",
        gw.auth_line()
    );
    let resp = h1_one(&gw, &pipelined(&gw, &req)).await;
    assert_eq!(resp.status, 400);
}

/// Content-Length and Transfer-Encoding together: answered by Transfer-Encoding alone, then the
/// connection closes (RFC 9112 section 6.3), whichever comes first. `0\r\n\r\n` is also exactly
/// the five bytes Content-Length announces, so a server reading by either framing would find the
/// pipelined request next: only the close keeps it unread.
#[tokio::test]
async fn h1_content_length_with_transfer_encoding_closes_after_one_response() {
    let (gw, _dir) = gateway().await;
    for framing in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: 40\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let sent = pipelined(&gw, &get_framed(&gw, framing, "0\r\n\r\n"));
        let resp = h1_one(&gw, &sent).await;
        assert_eq!(resp.status, 200, "{framing:?}");
    }
}

#[tokio::test]
async fn h1_refused_get_body_is_answered_once_then_the_connection_closes() {
    let (gw, _dir) = gateway().await;
    for (framing, body) in [
        ("Content-Length: 5\r\n", "hello"),
        ("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
    ] {
        let resp = h1_one(&gw, &pipelined(&gw, &get_framed(&gw, framing, body))).await;
        assert_eq!(resp.status, 413, "{framing:?}");
        assert_eq!(resp.error(), "request bodies are not accepted");
        assert_eq!(resp.header("connection"), Some("close"), "{framing:?}");
    }
}

/// A chunked GET whose body never ends: 408 after the short wait, and the connection closes.
#[tokio::test]
async fn h1_open_get_body_times_out_with_408_and_closes() {
    let (gw, _dir) = gateway().await;
    let req = get_framed(&gw, "Transfer-Encoding: chunked\r\n", "");
    let resp = h1_one(&gw, req.as_bytes()).await;
    assert_eq!(resp.status, 408);
    assert_eq!(resp.header("connection"), Some("close"));
}

// ---- headers on every response ----

const DEFAULT_HSTS: &str = "max-age=31536000";

/// Requests that end in each kind of answer: object, 404, 401, 400, 405, preflight, HEAD, the
/// `/auth/` routes.
async fn assorted_responses(gw: &TestGateway, proto: Proto) -> Vec<(String, support::RawResponse)> {
    use http::Method;
    let mut out = Vec::new();
    let mut add = |what: &str, r| out.push((format!("{proto:?} {what}"), r));
    add("object", gw.raw(proto, Method::GET, HELLO_PATH, &[]).await);
    add("head", gw.raw(proto, Method::HEAD, HELLO_PATH, &[]).await);
    add(
        "missing key",
        gw.raw(proto, Method::GET, "/o/local/nope", &[]).await,
    );
    add("no route", gw.raw(proto, Method::GET, "/nope", &[]).await);
    add(
        "no token",
        gw.raw_exact(proto, Method::GET, HELLO_PATH, &[], Bytes::new())
            .await,
    );
    add(
        "bad key",
        gw.raw(proto, Method::GET, "/o/local/a/../b", &[]).await,
    );
    add("post", gw.raw(proto, Method::POST, HELLO_PATH, &[]).await);
    add(
        "preflight",
        gw.raw_exact(
            proto,
            Method::OPTIONS,
            HELLO_PATH,
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "GET"),
            ],
            Bytes::new(),
        )
        .await,
    );
    add(
        "saml login",
        gw.raw(proto, Method::GET, "/auth/saml/login", &[]).await,
    );
    out
}

#[tokio::test]
async fn every_data_listener_response_has_hsts_and_cannot_be_framed() {
    let (gw, _dir) = gateway().await;
    for proto in Proto::BOTH {
        for (what, r) in assorted_responses(&gw, proto).await {
            assert_eq!(
                r.header("strict-transport-security"),
                Some(DEFAULT_HSTS),
                "{what}: {r:?}"
            );
            assert_eq!(r.header("x-frame-options"), Some("DENY"), "{what}");
            let csp = r.header("content-security-policy").unwrap_or_default();
            assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
            assert_eq!(
                r.header("x-content-type-options"),
                Some("nosniff"),
                "{what}"
            );
        }
    }
    // A request refused at stage 0 too.
    let resp = h1_one(&gw, &get_with(&gw, HELLO_PATH, "")).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.header("strict-transport-security"), Some(DEFAULT_HSTS));
    assert_eq!(resp.header("x-frame-options"), Some("DENY"));
}

#[tokio::test]
async fn hsts_follows_the_listener_config() {
    use bucketgate::config::HstsConfig;
    for (hsts, want) in [
        (
            HstsConfig {
                max_age: Duration::ZERO,
                include_subdomains: false,
                preload: false,
            },
            "max-age=0",
        ),
        (
            HstsConfig {
                max_age: Duration::from_secs(63_072_000),
                include_subdomains: true,
                preload: true,
            },
            "max-age=63072000; includeSubDomains; preload",
        ),
    ] {
        let (gw, _dir) = gateway_with(|c| c.listener.hsts = hsts).await;
        let ok = gw.raw(Proto::H2, http::Method::GET, HELLO_PATH, &[]).await;
        assert_eq!(ok.status, StatusCode::OK);
        assert_eq!(ok.header("strict-transport-security"), Some(want));
        let missing = gw
            .raw(Proto::H1, http::Method::GET, "/o/local/nope", &[])
            .await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.header("strict-transport-security"), Some(want));
    }
}

/// The `hsts_*` keys: defaults, range, and the preload list's rules.
#[test]
fn hsts_config_keys_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let path = dir.path().join("config.toml");
    let load = |listener_keys: &str| {
        let text = format!(
            "[listener]\naddr = \"127.0.0.1:0\"\ndev_certificate_dir = \".bucketgate\"\n\
             {listener_keys}[sources.local]\nkind = \"fs\"\nroot = \"data\"\n"
        );
        std::fs::write(&path, text).unwrap();
        bucketgate::config::load(&path)
    };
    let hsts = load("").unwrap().listener.hsts;
    assert_eq!(hsts, bucketgate::config::HstsConfig::default());
    assert_eq!(hsts.max_age, Duration::from_secs(31_536_000));
    assert!(!hsts.include_subdomains && !hsts.preload);

    let hsts = load("hsts_max_age_secs = 0\n").unwrap().listener.hsts;
    assert_eq!(
        hsts.max_age,
        Duration::ZERO,
        "0 is how to make browsers forget"
    );
    let hsts =
        load("hsts_max_age_secs = 63072000\nhsts_include_subdomains = true\nhsts_preload = true\n")
            .unwrap()
            .listener
            .hsts;
    assert!(hsts.include_subdomains && hsts.preload);

    let err = |keys: &str| {
        load(keys)
            .expect_err(keys)
            .0
            .into_iter()
            .map(|e| (e.line, e.key, e.message))
            .collect::<Vec<_>>()
    };
    let e = err("hsts_max_age_secs = 630720000\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].0, e[0].1.as_str()), (4, "listener.hsts_max_age_secs"));
    assert!(e[0].2.contains("from 0 to 63072000"), "{e:?}");
    let e = err("hsts_max_age_secs = -1\n");
    assert_eq!(e[0].1, "listener.hsts_max_age_secs", "{e:?}");

    let e = err("hsts_preload = true\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].0, e[0].1.as_str()), (4, "listener.hsts_preload"));
    assert!(e[0].2.contains("hsts_include_subdomains = true"), "{e:?}");
    let e = err("hsts_max_age_secs = 86400\nhsts_include_subdomains = true\nhsts_preload = true\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].0, e[0].1.as_str()), (6, "listener.hsts_preload"));
    assert!(e[0].2.contains("at least one year"), "{e:?}");
    // preload = false needs nothing.
    assert!(load("hsts_max_age_secs = 60\nhsts_preload = false\n").is_ok());
}

// ---- h2 requests the `h2` crate will not send ----

/// Frames of a hand-written h2 client: HEADERS blocks use only static-table names and literals
/// without indexing, so there is no HPACK state to keep.
mod raw_h2 {
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    /// `:status: 400`, static table entry 12.
    pub const STATUS_400: u8 = 0x8c;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap();
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// An HPACK string literal without Huffman coding: its length as a 7-bit-prefix integer
    /// (RFC 7541 section 5.1), then the bytes.
    fn string(out: &mut Vec<u8>, s: &str) {
        let mut len = s.len();
        if len < 127 {
            out.push(len as u8);
        } else {
            out.push(127);
            len -= 127;
            while len >= 128 {
                out.push((len % 128) as u8 | 0x80);
                len /= 128;
            }
            out.push(len as u8);
        }
        out.extend_from_slice(s.as_bytes());
    }

    /// HEADERS (END_STREAM, END_HEADERS) for `GET https://{authority}{path}` (no `:authority`
    /// when `None`) with `headers` (lowercase names).
    pub fn get(
        stream: u32,
        authority: Option<&str>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Vec<u8> {
        // :method GET and :scheme https are static entries 2 and 7.
        let mut block = vec![0x82, 0x87];
        if let Some(authority) = authority {
            block.push(0x01); // literal without indexing, name :authority (entry 1)
            string(&mut block, authority);
        }
        block.push(0x04); // literal without indexing, name :path (entry 4)
        string(&mut block, path);
        for (name, value) in headers {
            block.push(0);
            string(&mut block, name);
            string(&mut block, value);
        }
        frame(HEADERS, 0x1 | 0x4, stream, &block)
    }
}

/// Send one raw h2 request on a fresh connection; the server's first HEADERS or RST_STREAM frame
/// on stream 1 (kind, payload).
async fn raw_h2_exchange(gw: &TestGateway, request: Vec<u8>) -> (u8, Vec<u8>) {
    let mut tls = gw
        .tls_connect(gw.tls_config(&[b"h2"], rustls::ALL_VERSIONS))
        .await
        .expect("TLS connect");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(raw_h2::frame(raw_h2::SETTINGS, 0, 0, &[]));
    hello.extend(raw_h2::frame(raw_h2::SETTINGS, 0x1, 0, &[]));
    hello.extend(request);
    tls.write_all(&hello).await.unwrap();
    let read = async {
        loop {
            let mut head = [0u8; 9];
            tls.read_exact(&mut head).await.expect("a frame");
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            tls.read_exact(&mut payload).await.expect("a frame payload");
            let stream = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
            let kind = head[3];
            assert_ne!(kind, raw_h2::GOAWAY, "connection refused: {payload:?}");
            if stream == 1 && (kind == raw_h2::HEADERS || kind == raw_h2::RST_STREAM) {
                return (kind, payload);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer on stream 1 within 10 s")
}

#[tokio::test]
async fn h2_without_an_authority_or_with_transfer_encoding_is_refused() {
    let (gw, _dir) = gateway().await;
    let auth = format!("Bearer {}", gw.token().unwrap());
    let addr = gw.data_addr().to_string();
    let auth_header = [("authorization", auth.as_str())];
    // Control: the hand-written request is served (`:status: 200` is static entry 8).
    let (kind, block) =
        raw_h2_exchange(&gw, raw_h2::get(1, Some(&addr), HELLO_PATH, &auth_header)).await;
    assert_eq!((kind, block[0]), (raw_h2::HEADERS, 0x88));
    // Neither :authority nor Host: the request names no origin server.
    let (kind, block) = raw_h2_exchange(&gw, raw_h2::get(1, None, HELLO_PATH, &auth_header)).await;
    assert_eq!((kind, block[0]), (raw_h2::HEADERS, raw_h2::STATUS_400));
    // Host alone (a request translated from HTTP/1.1) is enough.
    let with_host = [("authorization", auth.as_str()), ("host", addr.as_str())];
    let (kind, block) = raw_h2_exchange(&gw, raw_h2::get(1, None, HELLO_PATH, &with_host)).await;
    assert_eq!((kind, block[0]), (raw_h2::HEADERS, 0x88));
    // Transfer-Encoding is connection-specific, so malformed in h2 (RFC 9113 section 8.2.2):
    // the stream is reset before the gateway sees it.
    let with_te = [
        ("authorization", auth.as_str()),
        ("transfer-encoding", "chunked"),
    ];
    let (kind, payload) =
        raw_h2_exchange(&gw, raw_h2::get(1, Some(&addr), HELLO_PATH, &with_te)).await;
    assert_eq!(kind, raw_h2::RST_STREAM);
    assert_eq!(
        u32::from_be_bytes(payload[..4].try_into().unwrap()),
        raw_h2::PROTOCOL_ERROR
    );
}
