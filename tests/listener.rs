//! The listeners as a client meets them: ALPN and TLS versions, handshake and header-read limits,
//! header size limits, max connections, graceful shutdown, the admin endpoints, and bounded memory
//! for a slow reader. The gateway runs in this process on `127.0.0.1:0`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support;

use std::time::{Duration, Instant};

use crate::support::read_until_closed;
use crate::support::{GatewayBuilder, Proto, TestGateway, fs_source, test_limits};
use bytes::Bytes;
use http::{StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HELLO: &[u8] = b"hello from the listener tests\n";

/// A gateway with one fs source `local` holding `hello.txt`, started with `limits`.
async fn gateway(limits: bucketgate::config::Limits) -> (TestGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    support::write_file(dir.path(), "hello.txt", HELLO);
    let gw = GatewayBuilder::new()
        .source("local", fs_source(dir.path()))
        .limits(limits)
        .start()
        .await;
    (gw, dir)
}

/// One GET of hello.txt with a fresh client: the gateway still serves.
async fn assert_serves(gw: &TestGateway, what: &str) {
    let resp = gw
        .client()
        .get(gw.url("/o/local/hello.txt"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(resp.status(), StatusCode::OK, "{what}");
    assert_eq!(&resp.bytes().await.unwrap()[..], HELLO, "{what}");
}

/// Send a whole http/1.1 request over a fresh TLS connection and read the response until the
/// server closes (the request should say `Connection: close`).
async fn h1_exchange(gw: &TestGateway, request: &[u8]) -> Vec<u8> {
    let mut tls = gw
        .tls_connect(gw.tls_config(&[b"http/1.1"], rustls::ALL_VERSIONS))
        .await
        .expect("TLS connect");
    tls.write_all(request).await.unwrap();
    tls.flush().await.unwrap();
    let (bytes, closed) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
    assert!(closed, "server did not close after answering");
    bytes
}

fn status_line(response: &[u8]) -> String {
    String::from_utf8_lossy(response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// ALPN protocols a client offers, and the one the server should pick.
type Offer = (&'static [&'static [u8]], Option<&'static [u8]>);

#[tokio::test]
async fn alpn_negotiates_h2_and_http11() {
    let (gw, _dir) = gateway(test_limits()).await;
    for (client, want) in [
        (gw.client(), Version::HTTP_2),
        (gw.h1_client(), Version::HTTP_11),
        (gw.h2_client(), Version::HTTP_2),
    ] {
        let resp = client
            .get(gw.url("/o/local/hello.txt"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), want);
        assert_eq!(&resp.bytes().await.unwrap()[..], HELLO);
    }
    let offers: [Offer; 4] = [
        (&[b"h2", b"http/1.1"], Some(b"h2")),
        (&[b"http/1.1", b"h2"], Some(b"h2")),
        (&[b"http/1.1"], Some(b"http/1.1")),
        (&[], None),
    ];
    for (offer, want) in offers {
        let tls = gw
            .tls_connect(gw.tls_config(offer, rustls::ALL_VERSIONS))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), want, "offer {offer:?}");
    }
    // A client offering only protocols the server does not speak is refused.
    assert!(
        gw.tls_connect(gw.tls_config(&[b"spdy/3"], rustls::ALL_VERSIONS))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn tls12_and_tls13_both_serve_requests() {
    let (gw, _dir) = gateway(test_limits()).await;
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut tls = gw
            .tls_connect(gw.tls_config(&[b"http/1.1"], &[version]))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(want));
        tls.write_all(hello_request(&gw).as_bytes()).await.unwrap();
        let (resp, closed) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
        assert!(closed, "{want:?}: connection not closed");
        assert_eq!(status_line(&resp), "HTTP/1.1 200 OK", "{want:?}");
        assert!(resp.ends_with(HELLO), "{want:?}: body");
    }
}

#[tokio::test]
async fn plain_http_on_the_tls_port_fails_without_affecting_the_next_client() {
    let (gw, _dir) = gateway(test_limits()).await;
    let failures_before = gw.gateway().metrics().tls_handshake_failures.get();
    let mut tcp = TcpStream::connect(gw.data_addr()).await.unwrap();
    tcp.write_all(b"GET /o/local/hello.txt HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let (resp, closed) = read_until_closed(&mut tcp, Duration::from_secs(10)).await;
    assert!(closed, "plain HTTP connection left open");
    assert!(
        !resp.starts_with(b"HTTP/"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&resp)
    );
    assert_eq!(
        gw.gateway().metrics().tls_handshake_failures.get(),
        failures_before + 1
    );
    assert_serves(&gw, "after a plain-HTTP client").await;
}

#[tokio::test]
async fn silent_client_is_closed_after_the_handshake_timeout() {
    let limits = bucketgate::config::Limits {
        tls_handshake_timeout: Duration::from_secs(1),
        ..test_limits()
    };
    let (gw, _dir) = gateway(limits).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(gw.data_addr()).await.unwrap();
    // Served while the silent connection is still open.
    assert_serves(&gw, "while a silent client holds a connection").await;
    let (bytes, closed) = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    let waited = started.elapsed();
    assert!(closed, "silent connection still open after {waited:?}");
    assert!(
        bytes.is_empty(),
        "server sent {bytes:?} to a client that sent nothing"
    );
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the 1 s handshake timeout"
    );
    assert!(
        waited < Duration::from_secs(5),
        "closed only after {waited:?}"
    );
    assert_serves(&gw, "after a silent client").await;
}

#[tokio::test]
async fn too_many_headers_get_431() {
    let limits = test_limits();
    // One header over our default and under hyper's own limit of 100, so only ours refuses it.
    assert!(limits.max_headers < 100);
    let (gw, _dir) = gateway(limits.clone()).await;
    let mut req =
        String::from("GET /o/local/hello.txt HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n");
    for i in 0..limits.max_headers - 1 {
        req.push_str(&format!("x-header-{i}: v\r\n"));
    }
    assert_eq!(req.matches("\r\n").count() - 1, limits.max_headers + 1);
    req.push_str("\r\n");
    let resp = h1_exchange(&gw, req.as_bytes()).await;
    assert_eq!(
        status_line(&resp),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_serves(&gw, "after too many headers").await;
}

#[tokio::test]
async fn oversize_header_gets_431() {
    let (gw, _dir) = gateway(test_limits()).await;
    let big = "v".repeat(64 * 1024);
    let req = format!(
        "GET /o/local/hello.txt HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nx-big: {big}\r\n\r\n"
    );
    let resp = h1_exchange(&gw, req.as_bytes()).await;
    assert_eq!(
        status_line(&resp),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // Over h2 the header list limit refuses the request (431 or a refused stream), never serves it.
    // Our default list size equals hyper's, so this alone cannot tell them apart:
    // `h2_header_list_size_limit_below_hypers_default_is_enforced` does.
    let h2 = gw
        .h2_client()
        .get(gw.url("/o/local/hello.txt"))
        .header("x-big", &big)
        .send()
        .await;
    match h2 {
        Ok(resp) => assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(!e.is_timeout(), "h2 oversize header: {e}"),
    }
    assert_serves(&gw, "after an oversize header").await;
}

#[tokio::test]
async fn slowloris_partial_request_is_closed_after_the_header_read_timeout() {
    let limits = bucketgate::config::Limits {
        header_read_timeout: Duration::from_secs(1),
        ..test_limits()
    };
    let (gw, _dir) = gateway(limits).await;
    let mut tls = gw
        .tls_connect(gw.tls_config(&[b"http/1.1"], rustls::ALL_VERSIONS))
        .await
        .unwrap();
    let started = Instant::now();
    tls.write_all(b"GET /o/local/hel").await.unwrap();
    tls.flush().await.unwrap();
    let (resp, closed) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
    let waited = started.elapsed();
    assert!(closed, "slowloris connection still open after {waited:?}");
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the 1 s header timeout"
    );
    assert!(
        waited < Duration::from_secs(5),
        "closed only after {waited:?}"
    );
    // Either closed silently or with a 408; never served.
    assert!(
        resp.is_empty() || status_line(&resp).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
    assert_serves(&gw, "after a slowloris client").await;
}

#[tokio::test]
async fn third_connection_is_closed_while_two_are_held_at_max_connections_2() {
    let limits = bucketgate::config::Limits {
        max_connections: 2,
        ..test_limits()
    };
    let (gw, _dir) = gateway(limits).await;
    let config = gw.tls_config(&[b"http/1.1"], rustls::ALL_VERSIONS);
    let first = gw
        .tls_connect(config.clone())
        .await
        .expect("first connection");
    let mut second = gw
        .tls_connect(config.clone())
        .await
        .expect("second connection");
    let third = tokio::time::timeout(Duration::from_secs(10), gw.tls_connect(config.clone())).await;
    assert!(
        matches!(third, Ok(Err(_))),
        "third connection was not closed: {:?}",
        third.map(|r| r.is_ok())
    );
    assert!(gw.gateway().metrics().rejected_connections.get() >= 1);
    // The held connections still work.
    second
        .write_all(hello_request(&gw).as_bytes())
        .await
        .unwrap();
    let (resp, _) = read_until_closed(&mut second, Duration::from_secs(10)).await;
    assert_eq!(status_line(&resp), "HTTP/1.1 200 OK");
    drop(second);
    drop(first);
    // Once they are gone, a new client gets in (the slots free as the server sees the closes).
    support::eventually(
        "a slot frees up",
        100,
        Duration::from_millis(50),
        || async {
            let mut tls = gw.tls_connect(config.clone()).await.ok()?;
            tls.write_all(hello_request(&gw).as_bytes()).await.ok()?;
            let (resp, _) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
            (status_line(&resp) == "HTTP/1.1 200 OK").then_some(())
        },
    )
    .await;
}

/// `GET /o/local/hello.txt` over HTTP/1.1 with the test token, closing the connection after.
fn hello_request(gw: &TestGateway) -> String {
    format!(
        "GET /o/local/hello.txt HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{}\r\n",
        gw.auth_line()
    )
}

/// Cheap deterministic bytes for large objects.
fn big_pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8 ^ (i >> 20) as u8)
        .collect()
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_in_flight_download_and_refuses_new_connections() {
    const SIZE: usize = 24 << 20;
    let data = big_pattern(SIZE);
    // Generous: the only way this test was seen to fail was a CPU-starved run outliving a 20 s
    // grace period, which is the gateway doing its job, not a cut-off.
    let grace = Duration::from_secs(60);
    for proto in Proto::BOTH {
        let (mut gw, dir) = gateway(bucketgate::config::Limits {
            shutdown_grace: grace,
            ..test_limits()
        })
        .await;
        support::write_file(dir.path(), "big.bin", &data);
        let addr = gw.data_addr();
        let mut resp = gw
            .client_for(proto)
            .get(gw.url("/o/local/big.bin"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{proto:?}");
        assert_eq!(resp.version(), proto.version());
        let mut got = Vec::with_capacity(SIZE);
        got.extend_from_slice(&resp.chunk().await.unwrap().expect("a first chunk"));
        assert!(
            got.len() < SIZE,
            "{proto:?}: whole object arrived before the shutdown"
        );

        let shutdown_began = Instant::now();
        let shutdown = tokio::spawn(gw.take_gateway().shutdown());
        support::eventually(
            "new connections are refused",
            100,
            Duration::from_millis(20),
            || async { TcpStream::connect(addr).await.is_err().then_some(()) },
        )
        .await;
        assert!(
            !shutdown.is_finished(),
            "{proto:?}: shutdown returned with a download in flight"
        );

        while let Some(chunk) = resp.chunk().await.unwrap_or_else(|e| {
            panic!(
                "{proto:?}: download cut off after {} of {SIZE} bytes, {:?} into the shutdown \
                 (grace {:?}): {e:?}",
                got.len(),
                shutdown_began.elapsed(),
                grace
            )
        }) {
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got.len(), SIZE, "{proto:?}: length");
        assert!(got == data, "{proto:?}: bytes differ");
        tokio::time::timeout(Duration::from_secs(10), shutdown)
            .await
            .unwrap_or_else(|_| panic!("{proto:?}: shutdown did not return after the download"))
            .unwrap();
    }
}

#[tokio::test]
async fn admin_health_ready_and_metrics_on_their_own_port() {
    let (gw, _dir) = gateway(test_limits()).await;
    assert_ne!(gw.admin_addr().port(), gw.data_addr().port());
    let admin = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |path: &str| admin.get(gw.admin_url(path)).send();

    let r = get("/healthz").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = get("/readyz").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let line = "bucketgate_http_requests_total{route=\"object\",status=\"200\"}";
    let before = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(!before.contains(line), "counted before any request");
    assert_serves(&gw, "object request for the metrics").await;
    let after = get("/metrics").await.unwrap();
    assert_eq!(after.status(), StatusCode::OK);
    let after = after.text().await.unwrap();
    assert!(
        after
            .lines()
            .any(|l| l.starts_with(line) && l.ends_with(" 1")),
        "{after}"
    );

    // The admin routes are not on the data port.
    let r = gw.client().get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = gw.client().get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn readyz_is_503_when_an_fs_source_directory_is_gone() {
    let (gw, dir) = gateway(test_limits()).await;
    let admin = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = admin.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    std::fs::remove_dir_all(dir.path()).unwrap();
    let r = admin.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.text().await.unwrap().contains("local"),
        "names the failing source"
    );
    let r = admin.get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "liveness does not depend on sources"
    );
}

#[tokio::test]
async fn slow_reader_of_a_large_object_keeps_gateway_memory_bounded() {
    // It measures this process's RSS: alone, in a child process, with no other test's gateway.
    if !support::alone_in_child_process(
        "listener::slow_reader_of_a_large_object_keeps_gateway_memory_bounded",
    ) {
        return;
    }
    const SIZE: u64 = 256 << 20;
    const LIMIT: u64 = 32 << 20;
    let (gw, dir) = gateway(test_limits()).await;
    // Sparse: 256 MiB that costs no disk and reads as fast as memory.
    std::fs::File::create(dir.path().join("huge.bin"))
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    // Over http/1.1 and h2: each has its own flow control between the body and the socket.
    for proto in Proto::BOTH {
        let client = gw.client_for(proto);
        let baseline = support::vm_rss_bytes();
        let mut resp = client
            .get(gw.url("/o/local/huge.bin"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), proto.version());
        assert_eq!(resp.content_length(), Some(SIZE));
        let mut read = 0u64;
        let mut peak = baseline;
        // About 2 s of a slow reader: long enough for a gateway that ignored backpressure to pull
        // far more than LIMIT from the sparse file.
        for _ in 0..80 {
            let chunk = resp.chunk().await.unwrap().expect("more body");
            read += chunk.len() as u64;
            peak = peak.max(support::vm_rss_bytes());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(
            read < SIZE / 4,
            "{proto:?}: the reader was not slow: read {read} bytes"
        );
        let grown = peak.saturating_sub(baseline);
        assert!(
            grown < LIMIT,
            "{proto:?}: RSS grew by {} MiB while a slow client read {} KiB",
            grown >> 20,
            read >> 10
        );
        drop(resp);
    }
}

// ---------------------------------------------------------------------------------------------
// Keep-alive idle timeout
// ---------------------------------------------------------------------------------------------

/// The idle timeout of the idle-timeout tests.
const IDLE: Duration = Duration::from_secs(1);

fn idle_limits() -> bucketgate::config::Limits {
    bucketgate::config::Limits {
        idle_timeout: IDLE,
        ..test_limits()
    }
}

/// An idle connection closes at the idle timeout after its last byte, not before, not much after.
fn assert_closed_at_the_idle_timeout(waited: Duration, what: &str) {
    // The client starts its clock after reading the last response, a little after the gateway
    // wrote it; a loaded machine can stretch that gap, so the lower bound is loose.
    assert!(
        waited >= IDLE / 2,
        "{what}: closed {waited:?} after the last response, before the {IDLE:?} idle timeout"
    );
    assert!(
        waited < IDLE + Duration::from_secs(4),
        "{what}: closed only {waited:?} after the last response"
    );
}

/// Read one HTTP/1.1 response with a `Content-Length` from `r`, leaving the connection open.
async fn read_h1_response<R: AsyncReadExt + Unpin>(r: &mut R) -> Vec<u8> {
    read_h1_response_after(r, Vec::new()).await
}

/// [`read_h1_response`] when `out` already holds its first bytes.
async fn read_h1_response_after<R: AsyncReadExt + Unpin>(r: &mut R, mut out: Vec<u8>) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .expect("a Content-Length");
                if out.len() >= end + 4 + len {
                    return;
                }
            }
            let n = r.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "connection closed mid-response");
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a whole response within 10 s");
    out
}

/// An h2 connection made with the `h2` crate: the request handle and the connection task, which
/// ends when the connection does. The crate answers the server's PINGs, as any live client does.
async fn h2_connect(
    gw: &TestGateway,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tls = gw
        .tls_connect(gw.tls_config(&[b"h2"], rustls::ALL_VERSIONS))
        .await
        .expect("TLS connect");
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    (send, tokio::spawn(conn))
}

/// `GET path` for the `h2` crate, with the test token and `extra` headers.
fn h2_get(gw: &TestGateway, path: &str, extra: &[(&str, &str)]) -> http::Request<()> {
    let mut req = http::Request::get(gw.url(path)).header(
        http::header::AUTHORIZATION,
        format!("Bearer {}", gw.token().expect("test token")),
    );
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    req.body(()).unwrap()
}

/// Send `req` on `send` and read the whole response.
async fn h2_fetch(
    send: &h2::client::SendRequest<Bytes>,
    req: http::Request<()>,
) -> Result<(StatusCode, Vec<u8>), h2::Error> {
    let mut send = send.clone().ready().await?;
    let (resp, _) = send.send_request(req, true)?;
    let resp = resp.await?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
        out.extend_from_slice(&chunk);
    }
    Ok((status, out))
}

#[tokio::test]
async fn idle_h1_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (gw, _dir) = gateway(idle_limits()).await;
    let mut tls = gw
        .tls_connect(gw.tls_config(&[b"http/1.1"], rustls::ALL_VERSIONS))
        .await
        .unwrap();
    let req = format!(
        "GET /o/local/hello.txt HTTP/1.1\r\nHost: gw\r\n{}\r\n",
        gw.auth_line()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let resp = read_h1_response(&mut tls).await;
    assert_eq!(status_line(&resp), "HTTP/1.1 200 OK");
    assert!(
        resp.ends_with(HELLO),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
    let idle_since = Instant::now();
    let (bytes, closed) = read_until_closed(&mut tls, IDLE + Duration::from_secs(9)).await;
    let waited = idle_since.elapsed();
    assert!(closed, "idle h1 connection still open after {waited:?}");
    assert!(
        bytes.is_empty(),
        "server sent {bytes:?} on an idle connection"
    );
    assert_closed_at_the_idle_timeout(waited, "h1");
}

#[tokio::test]
async fn idle_h2_connection_of_a_live_client_is_closed_after_the_idle_timeout() {
    let (gw, _dir) = gateway(idle_limits()).await;
    let (send, conn) = h2_connect(&gw).await;
    let (status, body) = h2_fetch(&send, h2_get(&gw, "/o/local/hello.txt", &[]))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, HELLO);
    let idle_since = Instant::now();
    // `send` stays alive meanwhile: once every handle is dropped the h2 client closes the
    // connection itself. The connection task answers any PING, so a gateway that kept the
    // connection alive with pings would hold it open (and a max_connections slot) forever.
    let ended = tokio::time::timeout(IDLE + Duration::from_secs(9), conn).await;
    let waited = idle_since.elapsed();
    assert!(
        ended.is_ok(),
        "idle h2 connection still open after {waited:?}"
    );
    assert_closed_at_the_idle_timeout(waited, "h2");
    // Closed with a GOAWAY (NO_ERROR), not dropped: the client knows no request was lost.
    let err = send
        .clone()
        .ready()
        .await
        .expect_err("the connection is closed");
    assert!(
        err.is_go_away() && err.reason() == Some(h2::Reason::NO_ERROR),
        "closed without a GOAWAY: {err:?}"
    );
    drop(send);
}

/// How fast the slow downloads read, and for how long: several idle timeouts, at a pace that
/// keeps the gateway blocked on the client nearly all the time.
const SLOW_RATE: u64 = 512 << 10;
const SLOW_FOR: Duration = Duration::from_secs(3);

/// Sleep until `total` bytes are due at [`SLOW_RATE`] since `started`.
async fn pace(started: Instant, total: u64) {
    let due = Duration::from_micros(total * 1_000_000 / SLOW_RATE);
    tokio::time::sleep_until((started + due).into()).await;
}

/// A TLS connection whose socket has a small receive buffer: with the kernel's autotuned one
/// (up to 32 MiB), a client could keep reading long after the gateway closed the connection.
async fn small_buffer_tls_connect(
    gw: &TestGateway,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let tcp = socket.connect(gw.data_addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(gw.data_addr().ip().into());
    tokio_rustls::TlsConnector::from(gw.tls_config(&[alpn], rustls::ALL_VERSIONS))
        .connect(name, tcp)
        .await
        .expect("TLS connect")
}

/// Read `/o/local/huge.bin` over HTTP/1.1 at [`SLOW_RATE`] for [`SLOW_FOR`]; the bytes read,
/// and the connection, still open.
async fn slow_h1_download(gw: &TestGateway) -> (u64, tokio_rustls::client::TlsStream<TcpStream>) {
    let mut tls = small_buffer_tls_connect(gw, b"http/1.1").await;
    let req = format!(
        "GET /o/local/huge.bin HTTP/1.1\r\nHost: gw\r\n{}\r\n",
        gw.auth_line()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    let mut first = true;
    while started.elapsed() < SLOW_FOR {
        let n = match tls.read(&mut buf).await {
            Ok(0) => panic!(
                "h1 download cut {:?} in, after {total} bytes",
                started.elapsed()
            ),
            Err(e) => panic!(
                "h1 download cut {:?} in, after {total} bytes: {e}",
                started.elapsed()
            ),
            Ok(n) => n,
        };
        if first {
            assert_eq!(status_line(&buf[..n]), "HTTP/1.1 200 OK");
            first = false;
        }
        total += n as u64;
        pace(started, total).await;
    }
    (total, tls)
}

/// Read `/o/local/huge.bin` over h2 at [`SLOW_RATE`] for [`SLOW_FOR`]; the bytes read, and the
/// response body, still open.
async fn slow_h2_download(
    gw: &TestGateway,
) -> (u64, (h2::client::SendRequest<Bytes>, h2::RecvStream)) {
    let tls = small_buffer_tls_connect(gw, b"h2").await;
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let (resp, _) = send
        .send_request(h2_get(gw, "/o/local/huge.bin", &[]), true)
        .unwrap();
    let started = Instant::now();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut total = 0u64;
    while started.elapsed() < SLOW_FOR {
        let chunk = match body.data().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => panic!(
                "h2 download cut {:?} in, after {total} bytes: {e}",
                started.elapsed()
            ),
            None => panic!(
                "h2 download ended {:?} in, after {total} bytes",
                started.elapsed()
            ),
        };
        body.flow_control().release_capacity(chunk.len()).unwrap();
        total += chunk.len() as u64;
        pace(started, total).await;
    }
    (total, (send, body))
}

#[tokio::test]
async fn steady_slow_download_outlasting_the_idle_timeout_is_not_cut() {
    const SIZE: u64 = 256 << 20;
    let (gw, dir) = gateway(idle_limits()).await;
    // Sparse: far more than the downloads read, at no disk cost.
    std::fs::File::create(dir.path().join("huge.bin"))
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let ((h1, _h1_conn), (h2, _h2_conn)) =
        tokio::join!(slow_h1_download(&gw), slow_h2_download(&gw));
    // Whether the gateway still holds both connections: bytes already in socket buffers could
    // hide a cut from the client for a while.
    assert_eq!(
        gw.gateway().metrics().open_connections.get(),
        2,
        "a download outlasting the idle timeout was cut"
    );
    for (proto, read) in [("h1", h1), ("h2", h2)] {
        // Still mid-object when the reader stopped: slow all along, and steady.
        let expected = SLOW_RATE * SLOW_FOR.as_secs();
        assert!(
            read >= expected / 2 && read <= expected * 2 && read < SIZE,
            "{proto}: read {read} bytes in {SLOW_FOR:?}"
        );
    }
}

/// Regression (issue 11 review): a connection that reached its maximum age was dropped
/// `shutdown_grace` later however busy, cutting a download in flight. The age stops new
/// requests; a response still moving finishes.
#[tokio::test]
async fn download_in_flight_at_the_maximum_age_is_not_cut() {
    const SIZE: u64 = 256 << 20;
    let (gw, dir) = gateway(bucketgate::config::Limits {
        max_connection_age: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(1),
        ..idle_limits()
    })
    .await;
    std::fs::File::create(dir.path().join("huge.bin"))
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    // Both read for SLOW_FOR (3 s): past the age and past the age plus the grace.
    let ((h1, _h1_conn), (h2, _h2_conn)) =
        tokio::join!(slow_h1_download(&gw), slow_h2_download(&gw));
    assert_eq!(
        gw.gateway().metrics().open_connections.get(),
        2,
        "a download in flight at the connection's maximum age was cut"
    );
    for (proto, read) in [("h1", h1), ("h2", h2)] {
        assert!(read < SIZE, "{proto}: read the whole object ({read} bytes)");
    }
}

#[tokio::test]
async fn client_that_stops_reading_mid_download_is_closed_after_the_idle_timeout() {
    let (gw, dir) = gateway(idle_limits()).await;
    std::fs::File::create(dir.path().join("huge.bin"))
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    // h1: the response starts, then the client reads no more.
    let mut h1 = small_buffer_tls_connect(&gw, b"http/1.1").await;
    let req = format!(
        "GET /o/local/huge.bin HTTP/1.1\r\nHost: gw\r\n{}\r\n",
        gw.auth_line()
    );
    h1.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = h1.read(&mut buf).await.unwrap();
    assert_eq!(status_line(&buf[..n]), "HTTP/1.1 200 OK");
    // h2: the same; the connection task keeps running and would answer any PING.
    let tls = small_buffer_tls_connect(&gw, b"h2").await;
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let (resp, _) = send
        .send_request(h2_get(&gw, "/o/local/huge.bin", &[]), true)
        .unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    assert!(!body.data().await.unwrap().unwrap().is_empty());
    let stalled_since = Instant::now();
    let metrics = gw.gateway().metrics();
    assert_eq!(metrics.open_connections.get(), 2);
    support::eventually(
        "both stalled connections closed",
        100,
        Duration::from_millis(50),
        || async { (metrics.open_connections.get() == 0).then_some(()) },
    )
    .await;
    assert_closed_at_the_idle_timeout(stalled_since.elapsed(), "stalled readers");
    drop((h1, send, body));
}

// ---------------------------------------------------------------------------------------------
// Header and h2 limits set below hyper's defaults, so only our settings can refuse
// ---------------------------------------------------------------------------------------------

/// An HTTP/1.1 GET of hello.txt with the test token, `Connection: close`, and `extra` header
/// lines (each ending in CRLF).
fn h1_hello_with(gw: &TestGateway, extra: &str) -> String {
    format!(
        "GET /o/local/hello.txt HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{}{extra}\r\n",
        gw.auth_line()
    )
}

#[tokio::test]
async fn h1_header_count_and_size_limits_below_hypers_defaults_are_enforced() {
    // hyper's own limits are 100 headers and a ~400 KiB buffer. 8 KiB is the smallest head
    // limit hyper takes (`max_buf_size` refuses less; a smaller `max_header_bytes` acts as 8 KiB).
    const MAX_HEADERS: usize = 20;
    const MAX_HEAD: usize = 8192;
    let (gw, _dir) = gateway(bucketgate::config::Limits {
        max_headers: MAX_HEADERS,
        max_header_bytes: MAX_HEAD,
        ..test_limits()
    })
    .await;
    // Host, Connection and Authorization, plus padding headers up to the count.
    let padding = |n: usize| -> String { (0..n).map(|i| format!("x-pad-{i}: v\r\n")).collect() };
    let at_limit = h1_hello_with(&gw, &padding(MAX_HEADERS - 3));
    assert_eq!(at_limit.matches("\r\n").count() - 2, MAX_HEADERS);
    let resp = h1_exchange(&gw, at_limit.as_bytes()).await;
    assert_eq!(
        status_line(&resp),
        "HTTP/1.1 200 OK",
        "{MAX_HEADERS} headers"
    );
    assert!(resp.ends_with(HELLO));
    let resp = h1_exchange(
        &gw,
        h1_hello_with(&gw, &padding(MAX_HEADERS - 2)).as_bytes(),
    )
    .await;
    assert_eq!(
        status_line(&resp),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "{} headers",
        MAX_HEADERS + 1
    );

    // The head (request line, headers, blank line) of exactly `len` bytes.
    let head_of = |len: usize| -> String {
        let base = h1_hello_with(&gw, "x-big: \r\n").len();
        h1_hello_with(&gw, &format!("x-big: {}\r\n", "v".repeat(len - base)))
    };
    let resp = h1_exchange(&gw, head_of(MAX_HEAD).as_bytes()).await;
    assert_eq!(
        status_line(&resp),
        "HTTP/1.1 200 OK",
        "{MAX_HEAD}-byte head"
    );
    let resp = h1_exchange(&gw, head_of(MAX_HEAD + 1).as_bytes()).await;
    assert_eq!(
        status_line(&resp),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "{}-byte head",
        MAX_HEAD + 1
    );
    assert_serves(&gw, "after refused heads").await;
}

#[tokio::test]
async fn h2_header_list_size_limit_below_hypers_default_is_enforced() {
    // hyper's default is 16 KiB.
    const MAX: u32 = 4096;
    let (gw, _dir) = gateway(bucketgate::config::Limits {
        h2_max_header_list_bytes: MAX,
        ..test_limits()
    })
    .await;
    // h2 sizes a header list as name + value + 32 bytes per field, pseudo-headers included, and
    // refuses a list that reaches the limit. `x-pad` fills the list up to `size` bytes.
    let path = "/o/local/hello.txt";
    let field = |name: &str, value: &str| name.len() + value.len() + 32;
    let authorization = format!("Bearer {}", gw.token().unwrap());
    let base = field(":method", "GET")
        + field(":scheme", "https")
        + field(":authority", &gw.data_addr().to_string())
        + field(":path", path)
        + field("authorization", &authorization)
        + field("x-pad", "");
    let pad_to = |size: u32| "p".repeat(size as usize - base);
    let (send, _conn) = h2_connect(&gw).await;

    let under = pad_to(MAX - 1);
    let (status, body) = h2_fetch(&send, h2_get(&gw, path, &[("x-pad", &under)]))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{} bytes of header list", MAX - 1);
    assert_eq!(body, HELLO);
    // At the limit, h2 itself answers 431 (the handler never sees the request).
    let at = pad_to(MAX);
    let (status, body) = h2_fetch(&send, h2_get(&gw, path, &[("x-pad", &at)]))
        .await
        .unwrap();
    assert_eq!(
        status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{MAX} bytes of header list"
    );
    assert!(body.is_empty());
    // Only that stream was refused: the connection still serves.
    let (status, _) = h2_fetch(&send, h2_get(&gw, path, &[])).await.unwrap();
    assert_eq!(status, StatusCode::OK, "after the 431");
}

/// A hand-written h2 client, for what a well-behaved client (such as the `h2` crate, which obeys
/// the server's SETTINGS) never sends. Header blocks use only the static table and literals that
/// are not indexed, so there is no HPACK state to keep.
mod raw_h2 {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const ACK: u8 = 0x1;
    pub const NO_ERROR: u32 = 0x0;
    pub const END_STREAM_END_HEADERS: u8 = 0x1 | 0x4;
    pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
    /// The HPACK byte for `:status: 200` (static table entry 8), first in a 200 response.
    pub const STATUS_200: u8 = 0x88;

    #[derive(Debug)]
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// The error code of a RST_STREAM or GOAWAY frame.
        pub fn error_code(&self) -> u32 {
            let at = if self.kind == GOAWAY { 4 } else { 0 };
            u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
        }

        /// The debug data of a GOAWAY frame.
        pub fn debug_data(&self) -> String {
            String::from_utf8_lossy(&self.payload[8..]).into_owned()
        }
    }

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap();
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    pub fn settings(params: &[(u16, u32)]) -> Vec<u8> {
        let payload: Vec<u8> = params
            .iter()
            .flat_map(|(id, value)| [id.to_be_bytes().to_vec(), value.to_be_bytes().to_vec()])
            .flatten()
            .collect();
        frame(SETTINGS, 0, 0, &payload)
    }

    pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &code.to_be_bytes())
    }

    /// An HPACK integer with a `prefix_bits` prefix after the bits of `first` (RFC 7541 5.1).
    fn integer(out: &mut Vec<u8>, first: u8, prefix_bits: u32, value: usize) {
        let max = (1usize << prefix_bits) - 1;
        if value < max {
            out.push(first | value as u8);
            return;
        }
        out.push(first | max as u8);
        let mut rest = value - max;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
    }

    /// An HPACK string literal without Huffman coding.
    fn string(out: &mut Vec<u8>, s: &str) {
        integer(out, 0, 7, s.len());
        out.extend_from_slice(s.as_bytes());
    }

    /// HEADERS (END_STREAM, END_HEADERS) for `GET https://{authority}{path}` with `headers`.
    pub fn get(stream: u32, authority: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        // :method GET and :scheme https are static entries 2 and 7.
        let mut block = vec![0x82, 0x87];
        // :authority and :path: literals without indexing, names from static entries 1 and 4.
        integer(&mut block, 0, 4, 1);
        string(&mut block, authority);
        integer(&mut block, 0, 4, 4);
        string(&mut block, path);
        for (name, value) in headers {
            block.push(0);
            string(&mut block, name);
            string(&mut block, value);
        }
        frame(HEADERS, END_STREAM_END_HEADERS, stream, &block)
    }
}

/// A raw h2 connection past the SETTINGS exchange: our preface and `settings` sent, the
/// server's SETTINGS read and acknowledged.
async fn raw_h2_connect(
    gw: &TestGateway,
    settings: &[(u16, u32)],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tls = gw
        .tls_connect(gw.tls_config(&[b"h2"], rustls::ALL_VERSIONS))
        .await
        .expect("TLS connect");
    let mut hello = raw_h2::PREFACE.to_vec();
    hello.extend(raw_h2::settings(settings));
    tls.write_all(&hello).await.unwrap();
    let (_, closed) = read_frames_until(&mut tls, |f| {
        f.kind == raw_h2::SETTINGS && f.flags & raw_h2::ACK == 0
    })
    .await;
    assert!(!closed, "closed before the server's SETTINGS");
    tls.write_all(&raw_h2::frame(raw_h2::SETTINGS, raw_h2::ACK, 0, &[]))
        .await
        .unwrap();
    tls
}

/// Read frames until `done` holds for one (the last returned) or the server closes the
/// connection (then `true`). Panics after 10 s.
async fn read_frames_until<R: AsyncReadExt + Unpin>(
    r: &mut R,
    mut done: impl FnMut(&raw_h2::Frame) -> bool,
) -> (Vec<raw_h2::Frame>, bool) {
    let mut frames = Vec::new();
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if r.read_exact(&mut head).await.is_err() {
                return true;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if r.read_exact(&mut payload).await.is_err() {
                return true;
            }
            let frame = raw_h2::Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
                payload,
            };
            let stop = done(&frame);
            frames.push(frame);
            if stop {
                return false;
            }
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("no end of frames within 10 s; read {frames:?}"));
    (frames, closed)
}

#[tokio::test]
async fn h2_advertises_max_concurrent_streams_and_refuses_one_more() {
    // hyper's default is 200.
    const MAX: u32 = 3;
    let (gw, dir) = gateway(bucketgate::config::Limits {
        h2_max_concurrent_streams: MAX,
        ..test_limits()
    })
    .await;
    std::fs::File::create(dir.path().join("big.bin"))
        .unwrap()
        .set_len(16 << 20)
        .unwrap();

    // A well-behaved client learns the limit from the server's SETTINGS, which precede the first
    // response.
    let (send, _conn) = h2_connect(&gw).await;
    let (status, _) = h2_fetch(&send, h2_get(&gw, "/o/local/hello.txt", &[]))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(send.current_max_send_streams(), MAX as usize);

    // A client that ignores it opens one stream more. With an initial window of 0 the server can
    // send response headers but no body, so the first streams stay open whatever the timing.
    let mut tls = raw_h2_connect(&gw, &[(raw_h2::SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    let authority = gw.data_addr().to_string();
    let authorization = format!("Bearer {}", gw.token().unwrap());
    let streams: Vec<u32> = (0..=MAX).map(|i| 1 + 2 * i).collect();
    let batch: Vec<u8> = streams
        .iter()
        .flat_map(|&id| {
            raw_h2::get(
                id,
                &authority,
                "/o/local/big.bin",
                &[("authorization", &authorization)],
            )
        })
        .collect();
    tls.write_all(&batch).await.unwrap();
    let (held, extra) = streams.split_at(MAX as usize);
    let extra = extra[0];
    let mut answered = 0;
    let mut refused = false;
    let (frames, closed) = read_frames_until(&mut tls, |f| {
        answered += usize::from(f.kind == raw_h2::HEADERS && held.contains(&f.stream));
        refused |= f.kind == raw_h2::RST_STREAM && f.stream == extra;
        answered == held.len() && refused
    })
    .await;
    assert!(!closed, "connection closed: {frames:?}");
    for f in &frames {
        match f.kind {
            raw_h2::HEADERS => {
                assert!(held.contains(&f.stream), "{f:?}");
                assert_eq!(f.payload.first(), Some(&raw_h2::STATUS_200), "{f:?}");
            }
            raw_h2::RST_STREAM => {
                assert_eq!(f.stream, extra, "reset of a stream within the limit: {f:?}");
                assert_eq!(f.error_code(), raw_h2::REFUSED_STREAM, "{f:?}");
            }
            raw_h2::GOAWAY => panic!("GOAWAY: {f:?}"),
            _ => {}
        }
    }
}

/// HEADERS then RST_STREAM(CANCEL) for `n` streams from `first` on: a rapid-reset burst.
fn rapid_resets(first: u32, n: u32, authority: &str) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            let id = first + 2 * i;
            let mut pair = raw_h2::get(id, authority, "/o/local/hello.txt", &[]);
            pair.extend(raw_h2::rst_stream(id, raw_h2::CANCEL));
            pair
        })
        .collect()
}

#[tokio::test]
async fn h2_rapid_reset_past_the_pending_reset_limit_gets_goaway_while_another_client_is_served() {
    // hyper's (h2's) default is 20.
    const LIMIT: u32 = 5;
    let (gw, _dir) = gateway(bucketgate::config::Limits {
        h2_max_pending_reset_streams: LIMIT as usize,
        ..test_limits()
    })
    .await;
    let authority = gw.data_addr().to_string();
    let authorization = format!("Bearer {}", gw.token().unwrap());
    let hello = || h2_get(&gw, "/o/local/hello.txt", &[]);
    // A well-behaved client on a connection of its own, served before and after the attack.
    let (good, good_conn) = h2_connect(&gw).await;
    assert_eq!(h2_fetch(&good, hello()).await.unwrap().0, StatusCode::OK);

    // Why the counts below are exact: h2 counts a stream the client resets while it still waits
    // in the accept queue (its HEADERS and RST_STREAM both read before hyper accepted it;
    // `Recv::recv_reset`), and uncounts it when hyper accepts it. h2 reads every frame available
    // before hyper takes the next stream from the queue (`server::Connection::poll_accept` polls
    // the connection first), and each burst below is one write of under 16 KiB, so one TLS
    // record that the server decrypts and reads whole. So the whole burst is counted before any
    // accept: LIMIT resets are tolerated, LIMIT + 1 are not.
    let mut tls = raw_h2_connect(&gw, &[]).await;
    let mut burst = rapid_resets(1, LIMIT, &authority);
    let next = 1 + 2 * LIMIT;
    burst.extend(raw_h2::get(
        next,
        &authority,
        "/o/local/hello.txt",
        &[("authorization", &authorization)],
    ));
    assert!(burst.len() < 16 * 1024);
    tls.write_all(&burst).await.unwrap();
    let (frames, closed) =
        read_frames_until(&mut tls, |f| f.kind == raw_h2::HEADERS && f.stream == next).await;
    assert!(!closed, "{LIMIT} resets closed the connection: {frames:?}");
    assert!(
        frames.iter().all(|f| f.kind != raw_h2::GOAWAY),
        "{LIMIT} resets: {frames:?}"
    );
    assert_eq!(
        frames.last().unwrap().payload.first(),
        Some(&raw_h2::STATUS_200),
        "the request after {LIMIT} resets"
    );

    let mut tls = raw_h2_connect(&gw, &[]).await;
    tls.write_all(&rapid_resets(1, LIMIT + 1, &authority))
        .await
        .unwrap();
    let (frames, closed) = read_frames_until(&mut tls, |f| f.kind == raw_h2::GOAWAY).await;
    assert!(!closed, "closed without a GOAWAY: {frames:?}");
    let goaway = frames.last().unwrap();
    assert_eq!(goaway.error_code(), raw_h2::ENHANCE_YOUR_CALM, "{goaway:?}");
    assert_eq!(goaway.debug_data(), "too_many_resets");
    let (frames, closed) = read_frames_until(&mut tls, |_| false).await;
    assert!(closed, "still open after the GOAWAY: {frames:?}");

    // The well-behaved client's connection was never touched.
    assert_eq!(h2_fetch(&good, hello()).await.unwrap().0, StatusCode::OK);
    assert!(!good_conn.is_finished());
}

#[tokio::test]
async fn h2_malformed_streams_past_the_local_error_reset_limit_get_goaway() {
    // hyper's default is 1024.
    const LIMIT: u32 = 3;
    let (gw, _dir) = gateway(bucketgate::config::Limits {
        h2_max_local_error_reset_streams: LIMIT as usize,
        ..test_limits()
    })
    .await;
    let authority = gw.data_addr().to_string();
    let authorization = format!("Bearer {}", gw.token().unwrap());
    // A connection-specific header makes a request malformed in h2 (RFC 9113 8.2.2); h2 resets
    // such a stream with PROTOCOL_ERROR itself, and each such reset counts toward the limit.
    let malformed = |id: u32| {
        raw_h2::get(
            id,
            &authority,
            "/o/local/hello.txt",
            &[("connection", "close")],
        )
    };
    let mut tls = raw_h2_connect(&gw, &[]).await;
    let bad: Vec<u32> = (0..LIMIT).map(|i| 1 + 2 * i).collect();
    let mut burst: Vec<u8> = bad.iter().flat_map(|&id| malformed(id)).collect();
    let next = 1 + 2 * LIMIT;
    burst.extend(raw_h2::get(
        next,
        &authority,
        "/o/local/hello.txt",
        &[("authorization", &authorization)],
    ));
    tls.write_all(&burst).await.unwrap();
    let (frames, closed) =
        read_frames_until(&mut tls, |f| f.kind == raw_h2::HEADERS && f.stream == next).await;
    assert!(
        !closed,
        "{LIMIT} malformed streams closed the connection: {frames:?}"
    );
    let reset: Vec<u32> = frames
        .iter()
        .filter(|f| f.kind == raw_h2::RST_STREAM && f.error_code() == raw_h2::PROTOCOL_ERROR)
        .map(|f| f.stream)
        .collect();
    assert_eq!(reset, bad, "{frames:?}");
    assert!(
        frames.iter().all(|f| f.kind != raw_h2::GOAWAY),
        "{frames:?}"
    );
    assert_eq!(
        frames.last().unwrap().payload.first(),
        Some(&raw_h2::STATUS_200),
        "the request after {LIMIT} malformed ones"
    );

    tls.write_all(&malformed(next + 2)).await.unwrap();
    let (frames, closed) = read_frames_until(&mut tls, |f| f.kind == raw_h2::GOAWAY).await;
    assert!(!closed, "closed without a GOAWAY: {frames:?}");
    let goaway = frames.last().unwrap();
    assert_eq!(goaway.error_code(), raw_h2::ENHANCE_YOUR_CALM, "{goaway:?}");
    assert_eq!(goaway.debug_data(), "too_many_internal_resets");
    let (frames, closed) = read_frames_until(&mut tls, |_| false).await;
    assert!(closed, "still open after the GOAWAY: {frames:?}");
    assert_serves(&gw, "after a connection went away for malformed streams").await;
}

// ---------------------------------------------------------------------------------------------
// ALPN alone decides the protocol
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn http11_by_alpn_is_not_turned_into_h2_by_the_h2_preface() {
    let (gw, _dir) = gateway(test_limits()).await;
    // ALPN http/1.1, and no ALPN at all (h2 over TLS needs ALPN): both are http/1.1 only.
    let offers: [&[&[u8]]; 2] = [&[b"http/1.1"], &[]];
    for offer in offers {
        let mut tls = gw
            .tls_connect(gw.tls_config(offer, rustls::ALL_VERSIONS))
            .await
            .expect("TLS connect");
        let mut hello = raw_h2::PREFACE.to_vec();
        hello.extend(raw_h2::settings(&[]));
        tls.write_all(&hello).await.unwrap();
        let (bytes, closed) = read_until_closed(&mut tls, Duration::from_secs(5)).await;
        let line = status_line(&bytes);
        assert!(
            line == "HTTP/1.1 400 Bad Request" || line.starts_with("HTTP/1.1 505 "),
            "offer {offer:?}: answered {:?}",
            String::from_utf8_lossy(&bytes)
        );
        assert!(closed, "offer {offer:?}: still open after the refusal");
    }
    // An ordinary http/1.1 request on such a connection is still served, whole.
    let resp = h1_exchange(&gw, h1_hello_with(&gw, "").as_bytes()).await;
    assert_eq!(status_line(&resp), "HTTP/1.1 200 OK");
    assert!(resp.ends_with(HELLO));
    assert_serves(&gw, "after refused prefaces").await;
}

#[tokio::test]
async fn h2_by_alpn_never_answers_an_http11_request() {
    let (gw, _dir) = gateway(test_limits()).await;
    let mut tls = gw
        .tls_connect(gw.tls_config(&[b"h2"], rustls::ALL_VERSIONS))
        .await
        .expect("TLS connect");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(h1_hello_with(&gw, "").as_bytes())
        .await
        .unwrap();
    let (bytes, closed) = read_until_closed(&mut tls, Duration::from_secs(5)).await;
    assert!(
        !bytes.starts_with(b"HTTP/"),
        "an h2 connection answered in HTTP/1.x: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(closed, "an h2 connection without the preface is still open");
    assert_serves(&gw, "after the refused request").await;
}

#[tokio::test]
async fn admin_listener_speaks_http11() {
    let (gw, _dir) = gateway(test_limits()).await;
    let mut tcp = TcpStream::connect(gw.admin_addr()).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (bytes, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(status_line(&bytes), "HTTP/1.1 200 OK");
    // The h2 preface is not taken as h2 (cleartext h2 "prior knowledge") there either.
    let mut tcp = TcpStream::connect(gw.admin_addr()).await.unwrap();
    tcp.write_all(raw_h2::PREFACE).await.unwrap();
    let (bytes, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(status_line(&bytes), "HTTP/1.1 400 Bad Request");
}

// ---------------------------------------------------------------------------------------------
// Idle means no request, not no bytes; and a maximum connection age
// ---------------------------------------------------------------------------------------------

/// Frames read from `r` by a task of their own (reads are not cancel-safe); the channel closes
/// when the server closes the connection.
fn spawn_frame_reader<R: AsyncReadExt + Unpin + Send + 'static>(
    mut r: R,
) -> tokio::sync::mpsc::UnboundedReceiver<raw_h2::Frame> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let mut head = [0u8; 9];
            if r.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if r.read_exact(&mut payload).await.is_err() {
                return;
            }
            let frame = raw_h2::Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
                payload,
            };
            if tx.send(frame).is_err() {
                return;
            }
        }
    });
    rx
}

#[tokio::test]
async fn h2_control_frames_alone_do_not_keep_a_connection_open_past_the_idle_timeout() {
    let (gw, _dir) = gateway(idle_limits()).await;
    let tls = raw_h2_connect(&gw, &[]).await;
    let opened = Instant::now();
    let (r, mut w) = tokio::io::split(tls);
    let mut frames = spawn_frame_reader(r);
    // Every 100 ms one of PING, SETTINGS, WINDOW_UPDATE and PRIORITY, and an ACK for every
    // PING of the server's: a live client with nothing to ask.
    let chatter = [
        raw_h2::frame(raw_h2::PING, 0, 0, b"12345678"),
        raw_h2::settings(&[]),
        raw_h2::frame(raw_h2::WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes()),
        // Stream 3 depends on stream 0 with weight 16.
        raw_h2::frame(raw_h2::PRIORITY, 0, 3, &[0, 0, 0, 0, 15]),
    ];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut goaway = None;
    let mut sent = 0usize;
    let closed = tokio::time::timeout(IDLE + Duration::from_secs(9), async {
        loop {
            tokio::select! {
                frame = frames.recv() => match frame {
                    None => return,
                    Some(f) if f.kind == raw_h2::GOAWAY => goaway = Some((f, opened.elapsed())),
                    Some(f) if f.kind == raw_h2::PING && f.flags & raw_h2::ACK == 0 => {
                        let ack = raw_h2::frame(raw_h2::PING, raw_h2::ACK, 0, &f.payload);
                        let _ = w.write_all(&ack).await;
                    }
                    Some(_) => {}
                },
                _ = tick.tick() => {
                    // Writes after the server closed may fail; the reader sees the close.
                    let _ = w.write_all(&chatter[sent % chatter.len()]).await;
                    sent += 1;
                }
            }
        }
    })
    .await
    .is_ok();
    let waited = opened.elapsed();
    let (goaway, at) = goaway.unwrap_or_else(|| {
        panic!("no GOAWAY in {waited:?} of control frames ({sent} sent); closed: {closed}")
    });
    assert_eq!(goaway.error_code(), raw_h2::NO_ERROR, "{goaway:?}");
    assert!(closed, "still open {waited:?} in, after a GOAWAY at {at:?}");
    assert_closed_at_the_idle_timeout(at, "h2 with control frames only");
    assert!(sent >= 5, "only {sent} control frames sent");
}

/// Regression (issue 11 review): with a request in flight, any byte counted as progress, so an
/// h2 client that let its stream's window run dry and kept pinging held the stream, and the
/// backend read behind it, until the connection's maximum age. Only response data moving
/// counts now.
#[tokio::test]
async fn h2_stream_stalled_by_flow_control_is_not_kept_open_by_pings() {
    let (gw, dir) = gateway(idle_limits()).await;
    std::fs::File::create(dir.path().join("huge.bin"))
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let tls = small_buffer_tls_connect(&gw, b"h2").await;
    let (send, mut conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    let mut pings = conn.ping_pong().expect("ping_pong");
    let mut conn = tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let (resp, _) = send
        .send_request(h2_get(&gw, "/o/local/huge.bin", &[]), true)
        .unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Never read, never released: the stream's window stays shut after the first 64 KiB.
    let _body = resp.into_body();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut answered = 0u32;
    let ended = tokio::time::timeout(IDLE + Duration::from_secs(9), async {
        loop {
            tokio::select! {
                _ = &mut conn => return,
                _ = tick.tick() => {
                    if pings.ping(h2::Ping::opaque()).await.is_ok() {
                        answered += 1;
                    }
                }
            }
        }
    })
    .await;
    let waited = started.elapsed();
    assert!(
        ended.is_ok(),
        "a stalled stream kept open {waited:?} by {answered} answered PINGs"
    );
    assert!(answered >= 3, "only {answered} PINGs answered");
    assert_closed_at_the_idle_timeout(waited, "h2 stream stalled by flow control");
}

#[tokio::test]
async fn h2_connection_gets_goaway_at_its_maximum_age_while_it_keeps_making_requests() {
    const AGE: Duration = Duration::from_secs(2);
    let (gw, _dir) = gateway(bucketgate::config::Limits {
        max_connection_age: AGE,
        ..test_limits()
    })
    .await;
    let (send, conn) = h2_connect(&gw).await;
    let opened = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut served = 0u32;
    let err = tokio::time::timeout(AGE + Duration::from_secs(8), async {
        loop {
            tick.tick().await;
            match h2_fetch(&send, h2_get(&gw, "/o/local/hello.txt", &[])).await {
                Ok((status, body)) => {
                    assert_eq!(status, StatusCode::OK);
                    assert_eq!(body, HELLO);
                    served += 1;
                }
                Err(e) => return e,
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "still serving {:?} in ({served} requests)",
            opened.elapsed()
        )
    });
    let at = opened.elapsed();
    assert!(
        err.is_go_away() && err.reason() == Some(h2::Reason::NO_ERROR),
        "ended without a graceful GOAWAY: {err:?}"
    );
    assert!(at >= AGE / 2, "closed after only {at:?}");
    assert!(
        at < AGE + Duration::from_secs(4),
        "closed only after {at:?}"
    );
    assert!(
        served >= 5,
        "only {served} requests served before the GOAWAY"
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        ended.is_ok(),
        "the connection did not close after its GOAWAY"
    );
}

#[tokio::test]
async fn h1_connection_closes_after_the_response_in_flight_at_its_maximum_age() {
    const AGE: Duration = Duration::from_secs(2);
    let (gw, _dir) = gateway(bucketgate::config::Limits {
        max_connection_age: AGE,
        ..test_limits()
    })
    .await;
    let mut tls = gw
        .tls_connect(gw.tls_config(&[b"http/1.1"], rustls::ALL_VERSIONS))
        .await
        .unwrap();
    let opened = Instant::now();
    let req = format!(
        "GET /o/local/hello.txt HTTP/1.1\r\nHost: gw\r\n{}\r\n",
        gw.auth_line()
    );
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut served = 0u32;
    // Ends with the last response, which says `Connection: close`; or, when the age came
    // between two requests, with the close instead of a response.
    loop {
        tick.tick().await;
        assert!(
            opened.elapsed() < AGE + Duration::from_secs(8),
            "still serving after {served} requests"
        );
        if tls.write_all(req.as_bytes()).await.is_err() {
            break;
        }
        let Some(resp) = read_h1_response_or_close(&mut tls).await else {
            break;
        };
        assert_eq!(status_line(&resp), "HTTP/1.1 200 OK");
        assert!(resp.ends_with(HELLO));
        served += 1;
        let head = String::from_utf8_lossy(&resp).to_ascii_lowercase();
        if head.contains("\r\nconnection: close\r\n") {
            let (bytes, closed) = read_until_closed(&mut tls, Duration::from_secs(5)).await;
            assert!(
                closed && bytes.is_empty(),
                "after `Connection: close`: {bytes:?}"
            );
            break;
        }
    }
    let at = opened.elapsed();
    assert!(at >= AGE / 2, "closed after only {at:?}");
    assert!(
        at < AGE + Duration::from_secs(4),
        "closed only after {at:?}"
    );
    assert!(served >= 5, "only {served} requests served");
}

/// Like [`read_h1_response`], but `None` if the server closes before a byte of the response.
async fn read_h1_response_or_close<R: AsyncReadExt + Unpin>(r: &mut R) -> Option<Vec<u8>> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), r.read(&mut first)).await {
        Ok(Ok(0) | Err(_)) => return None,
        Ok(Ok(_)) => {}
        Err(_) => panic!("neither a response nor a close within 10 s"),
    }
    Some(read_h1_response_after(r, first.to_vec()).await)
}
