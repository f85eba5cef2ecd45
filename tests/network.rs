#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Stage 1 against the running gateway: clients bound to distinct loopback addresses (127.0.0.x
//! and ::1), allow/deny boundaries, per-source narrowing, forwarded headers from trusted and
//! untrusted peers, PROXY protocol v1/v2, and `bucketgate explain`.

use crate::support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::support::{GatewayBuilder, TestGateway, fs_source, write_file};
use bucketgate::config::network::parse_cidr;
use bucketgate::config::{NetworkConfig, SourceLists};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use rustls::pki_types::ServerName;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| parse_cidr(s).unwrap()).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn network(allow: &[&str], deny: &[&str]) -> NetworkConfig {
    NetworkConfig {
        allow: nets(allow),
        deny: nets(deny),
        ..NetworkConfig::loopback_only()
    }
}

/// A gateway with sources `local`, `photos` and `closed` (one directory holding `hello.txt`) on
/// `listen`, with `net` as its network section.
async fn start(net: NetworkConfig, listen: &str) -> (TestGateway, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "hello.txt", b"hello");
    let sources = BTreeMap::from(
        ["local", "photos", "closed"].map(|n| (n.to_string(), fs_source(dir.path()))),
    );
    let listen: SocketAddr = listen.parse().unwrap();
    let gw = GatewayBuilder::new()
        .sources(sources)
        .tweak(move |c| {
            c.network = net;
            c.listener.addr = listen;
        })
        .start()
        .await;
    (gw, dir)
}

/// GET `path` from a client bound to `from`, on the data listener at `host` (an IP literal).
async fn get_from(gw: &TestGateway, from: &str, path: &str) -> (StatusCode, String) {
    get_with(gw, from, path, &[]).await
}

async fn get_with(
    gw: &TestGateway,
    from: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let from = ip(from);
    let host = match (from, gw.data_addr().ip()) {
        (_, IpAddr::V4(a)) => IpAddr::V4(a),
        (IpAddr::V6(_), IpAddr::V6(_)) => ip("::1"),
        (IpAddr::V4(_), IpAddr::V6(_)) => ip("127.0.0.1"),
    };
    let url = format!(
        "https://{}{path}",
        SocketAddr::new(host, gw.data_addr().port())
    );
    let mut req = gw.client_from(from).get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request reaches the gateway");
    let status = resp.status();
    (status, resp.text().await.unwrap())
}

#[tokio::test]
async fn network_cidr_boundaries_first_last_and_one_past() {
    let (gw, _dir) = start(network(&["127.0.0.8/30"], &[]), "127.0.0.1:0").await;
    for (from, want) in [
        ("127.0.0.7", StatusCode::FORBIDDEN),
        ("127.0.0.8", StatusCode::OK),
        ("127.0.0.11", StatusCode::OK),
        ("127.0.0.12", StatusCode::FORBIDDEN),
    ] {
        let (status, _) = get_from(&gw, from, "/o/local/hello.txt").await;
        assert_eq!(status, want, "from {from}");
    }
}

#[tokio::test]
async fn network_deny_inside_allow_wins_with_the_uniform_403_body() {
    let (gw, _dir) = start(network(&["127.0.0.0/8"], &["127.0.0.3/32"]), "127.0.0.1:0").await;
    let (status, body) = get_from(&gw, "127.0.0.3", "/o/local/hello.txt").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "forbidden", "{body}");
    assert!(
        !body.contains("127.0.0.3"),
        "the body must not reveal the rule: {body}"
    );
    // A denied request never reaches the plan: an unknown source is 403, not 404.
    let (status, _) = get_from(&gw, "127.0.0.3", "/o/nope/hello.txt").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = get_from(&gw, "127.0.0.4", "/o/local/hello.txt").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));

    let metrics = reqwest::get(gw.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("bucketgate_network_decisions_total{outcome=\"deny\",list=\"global\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bucketgate_network_decisions_total{outcome=\"allow\",list=\"global\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn network_source_lists_narrow_the_global_allow_list() {
    let mut net = network(&["127.0.0.0/29"], &[]);
    net.sources.insert(
        "photos".into(),
        SourceLists {
            // 127.0.0.9 is outside the global list: a source list never widens it.
            allow: Some(nets(&["127.0.0.2/32", "127.0.0.9/32"])),
            deny: vec![],
        },
    );
    net.sources.insert(
        "closed".into(),
        SourceLists {
            allow: Some(vec![]),
            deny: vec![],
        },
    );
    net.sources.insert(
        "local".into(),
        SourceLists {
            allow: None,
            deny: nets(&["127.0.0.4/32"]),
        },
    );
    let (gw, _dir) = start(net, "127.0.0.1:0").await;
    for (from, path, want) in [
        ("127.0.0.2", "/o/photos/hello.txt", StatusCode::OK),
        ("127.0.0.3", "/o/photos/hello.txt", StatusCode::FORBIDDEN),
        ("127.0.0.9", "/o/photos/hello.txt", StatusCode::FORBIDDEN),
        ("127.0.0.3", "/o/local/hello.txt", StatusCode::OK),
        ("127.0.0.4", "/o/local/hello.txt", StatusCode::FORBIDDEN),
        ("127.0.0.4", "/o/photos/hello.txt", StatusCode::FORBIDDEN),
        ("127.0.0.2", "/o/closed/hello.txt", StatusCode::FORBIDDEN),
    ] {
        let (status, _) = get_from(&gw, from, path).await;
        assert_eq!(status, want, "{from} {path}");
    }
    // An encoded source name names no configured source: global lists, then 404 (to a token
    // whose scope names it; any other token is refused before the source is looked up).
    let wide = format!(
        "Bearer {}",
        support::token_for_sources(&["ph%6ftos".to_string()])
    );
    let path = "/o/ph%6ftos/hello.txt";
    let (status, _) = get_with(&gw, "127.0.0.3", path, &[("authorization", &wide)]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "127.0.0.3 {path}");
}

#[tokio::test]
async fn network_empty_allow_list_denies_everything() {
    let (gw, _dir) = start(network(&[], &[]), "127.0.0.1:0").await;
    for from in ["127.0.0.1", "127.0.0.2"] {
        let (status, _) = get_from(&gw, from, "/o/local/hello.txt").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{from}");
    }
}

#[tokio::test]
async fn network_ipv6_loopback_and_ipv4_mapped_peers_on_a_dual_stack_listener() {
    // `[::]` is dual-stack on Linux (bindv6only = 0): IPv4 clients arrive as ::ffff:a.b.c.d and
    // must be matched as IPv4.
    let (gw, _dir) = start(network(&["::1/128"], &[]), "[::]:0").await;
    let (status, _) = get_from(&gw, "::1", "/o/local/hello.txt").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get_from(&gw, "127.0.0.1", "/o/local/hello.txt").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    gw.shutdown().await;

    let (gw, _dir) = start(network(&["127.0.0.2/32"], &[]), "[::]:0").await;
    let (status, _) = get_from(&gw, "127.0.0.2", "/o/local/hello.txt").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "mapped 127.0.0.2 matches the IPv4 rule"
    );
    let (status, _) = get_from(&gw, "127.0.0.3", "/o/local/hello.txt").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = get_from(&gw, "::1", "/o/local/hello.txt").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// Trusted proxy 127.0.0.5; allowed: the proxy itself and 203.0.113.0/24.
fn forwarding_network() -> NetworkConfig {
    NetworkConfig {
        trusted_proxies: nets(&["127.0.0.5/32", "10.0.0.0/8"]),
        ..network(&["127.0.0.5/32", "203.0.113.0/24"], &[])
    }
}

#[tokio::test]
async fn network_spoofed_forwarded_headers_from_an_untrusted_peer_are_ignored() {
    let (gw, _dir) = start(forwarding_network(), "127.0.0.1:0").await;
    let allowed = "203.0.113.7";
    for headers in [
        vec![("X-Forwarded-For", allowed)],
        vec![("x-forwarded-for", allowed)],
        vec![("X-FORWARDED-FOR", allowed), ("x-forwarded-for", allowed)],
        vec![("Forwarded", "for=203.0.113.7")],
        vec![("X-Real-IP", allowed)],
        vec![("True-Client-IP", allowed)],
        // Conflicting or malformed headers are not even looked at: the peer decides.
        vec![("X-Forwarded-For", "junk"), ("Forwarded", "for=unknown")],
    ] {
        let (status, _) = get_with(&gw, "127.0.0.9", "/o/local/hello.txt", &headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    // X-Real-IP is ignored from a trusted proxy too: the proxy's own address decides.
    let (status, _) = get_with(
        &gw,
        "127.0.0.5",
        "/o/local/hello.txt",
        &[("X-Real-IP", "198.51.100.1")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn network_forwarded_chain_through_a_trusted_proxy_picks_the_rightmost_untrusted_hop() {
    let (gw, _dir) = start(forwarding_network(), "127.0.0.1:0").await;
    for (name, value, want) in [
        ("X-Forwarded-For", "203.0.113.7", StatusCode::OK),
        ("X-Forwarded-For", "198.51.100.1", StatusCode::FORBIDDEN),
        (
            "X-Forwarded-For",
            "198.51.100.1, 203.0.113.7",
            StatusCode::OK,
        ),
        (
            "X-Forwarded-For",
            "203.0.113.7, 198.51.100.1",
            StatusCode::FORBIDDEN,
        ),
        (
            "X-Forwarded-For",
            "203.0.113.7, 10.1.1.1, 127.0.0.5",
            StatusCode::OK,
        ),
        (
            "Forwarded",
            "for=198.51.100.1, for=\"203.0.113.9\";proto=https",
            StatusCode::OK,
        ),
        ("Forwarded", "for=\"[2001:db8::1]\"", StatusCode::FORBIDDEN),
    ] {
        let (status, _) = get_with(&gw, "127.0.0.5", "/o/local/hello.txt", &[(name, value)]).await;
        assert_eq!(status, want, "{name}: {value}");
    }
    // Several header instances form one list, in order.
    let (status, _) = get_with(
        &gw,
        "127.0.0.5",
        "/o/local/hello.txt",
        &[
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-For", "10.0.0.2"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn network_malformed_forwarded_hops_are_refused_never_skipped() {
    let (gw, _dir) = start(forwarding_network(), "127.0.0.1:0").await;
    let long = vec!["203.0.113.7"; 200].join(",");
    for (name, value) in [
        ("X-Forwarded-For", "010.0.0.1"),
        ("X-Forwarded-For", "0x7f.0.0.1"),
        ("X-Forwarded-For", "203.0.113.7:443"),
        ("X-Forwarded-For", "unknown"),
        ("X-Forwarded-For", "203.0.113.7,,203.0.113.8"),
        // The bad hop is left of a good one: still refused, not skipped.
        ("X-Forwarded-For", "bogus, 203.0.113.7"),
        ("X-Forwarded-For", long.as_str()),
        ("Forwarded", "for=_hidden"),
        ("Forwarded", "for=\"[2001:db8::1]:4711\""),
        ("Forwarded", "proto=https"),
    ] {
        let (status, body) =
            get_with(&gw, "127.0.0.5", "/o/local/hello.txt", &[(name, value)]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {value}: {body}");
    }
    let (status, _) = get_with(
        &gw,
        "127.0.0.5",
        "/o/local/hello.txt",
        &[
            ("X-Forwarded-For", "203.0.113.7"),
            ("Forwarded", "for=203.0.113.7"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "both headers at once");
}

#[tokio::test]
async fn network_open_connection_is_judged_by_the_new_rules_on_its_next_request() {
    let (gw, dir) = start(network(&["127.0.0.0/8"], &[]), "127.0.0.1:0").await;
    let config = gw.tls_config(&[b"http/1.1"], rustls::ALL_VERSIONS);
    let tls = gw.tls_connect(config).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let bearer = format!("Bearer {}", gw.token().expect("test token"));
    let get = |host: String| {
        http::Request::get("/o/local/hello.txt")
            .header(http::header::HOST, host)
            .header(http::header::AUTHORIZATION, &bearer)
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let host = gw.data_addr().to_string();
    let resp = sender.send_request(get(host.clone())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();

    let mut config = bucketgate::app::embedded_config(dir.path()).unwrap();
    config.sources = BTreeMap::from([("local".to_string(), fs_source(dir.path()))]);
    config.network = network(&["127.0.0.0/8"], &["127.0.0.1/32"]);
    gw.gateway().reload(config).await.unwrap();

    // Same connection (the sender is still ready on it), new rules.
    sender.ready().await.expect("connection still open");
    let resp = sender.send_request(get(host)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

// ---- PROXY protocol ----

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Proxy peer 127.0.0.7; allowed: the proxy itself and 192.0.2.0/24.
async fn start_proxied() -> (TestGateway, TempDir) {
    let net = NetworkConfig {
        proxy_protocol: nets(&["127.0.0.7/32"]),
        proxy_protocol_timeout: Duration::from_millis(300),
        ..network(&["127.0.0.7/32", "192.0.2.0/24"], &[])
    };
    start(net, "127.0.0.1:0").await
}

async fn tcp_from(gw: &TestGateway, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip(from), 0)).unwrap();
    socket.connect(gw.data_addr()).await.unwrap()
}

/// TLS + one http/1.1 GET on an open TCP stream.
async fn get_over(gw: &TestGateway, tcp: TcpStream) -> std::io::Result<StatusCode> {
    let config = gw.tls_config(&[b"http/1.1"], rustls::ALL_VERSIONS);
    let name = ServerName::IpAddress(gw.data_addr().ip().into());
    let tls = TlsConnector::from(config).connect(name, tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let req = http::Request::get("/o/local/hello.txt")
        .header(http::header::HOST, gw.data_addr().to_string())
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", gw.token().expect("test token")),
        )
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    Ok(resp.status())
}

fn v1(source: &str) -> Vec<u8> {
    format!("PROXY TCP4 {source} 127.0.0.1 40000 443\r\n").into_bytes()
}

fn v2(command: u8, source: [u8; 4]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x20 | command, 0x11, 0, 12]);
    h.extend_from_slice(&source);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_headers_give_the_client_address() {
    let (gw, _dir) = start_proxied().await;
    for (header, want) in [
        (v1("192.0.2.1"), StatusCode::OK),
        (v1("198.51.100.1"), StatusCode::FORBIDDEN),
        (v2(1, [192, 0, 2, 1]), StatusCode::OK),
        (v2(1, [198, 51, 100, 1]), StatusCode::FORBIDDEN),
        // LOCAL: the socket address (127.0.0.7, allowed) is used, whatever the block says.
        (v2(0, [198, 51, 100, 1]), StatusCode::OK),
    ] {
        let mut tcp = tcp_from(&gw, "127.0.0.7").await;
        tcp.write_all(&header).await.unwrap();
        let status = get_over(&gw, tcp).await.expect("proxied request served");
        assert_eq!(status, want, "{:?}", String::from_utf8_lossy(&header));
    }
}

#[tokio::test]
async fn proxy_protocol_header_from_an_unlisted_peer_fails_the_handshake() {
    let (gw, _dir) = start_proxied().await;
    let mut tcp = tcp_from(&gw, "127.0.0.8").await;
    tcp.write_all(&v1("192.0.2.1")).await.unwrap();
    assert!(
        get_over(&gw, tcp).await.is_err(),
        "header must not be parsed"
    );
    // Without a header the same peer is served as itself (127.0.0.8: not allowed).
    let tcp = tcp_from(&gw, "127.0.0.8").await;
    assert_eq!(get_over(&gw, tcp).await.unwrap(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn proxy_protocol_listed_peer_without_a_header_is_closed() {
    let (gw, _dir) = start_proxied().await;
    let tcp = tcp_from(&gw, "127.0.0.7").await;
    assert!(get_over(&gw, tcp).await.is_err());
}

/// Read until EOF (the server closed), bounded; returns how long it took.
async fn closed_within(mut tcp: TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(limit, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "connection still open after {limit:?}");
    started.elapsed()
}

#[tokio::test]
async fn proxy_protocol_malformed_and_stalled_headers_are_closed() {
    let (gw, _dir) = start_proxied().await;
    for bad in [
        b"PROXY TCP4 192.0.2.1 nonsense\r\n".to_vec(),
        b"PROXY TCP4 192.0.2.01 127.0.0.1 1 443\r\n".to_vec(),
        [V2_SIGNATURE.as_slice(), &[0x23, 0x11, 0, 12], &[0; 12]].concat(),
    ] {
        let mut tcp = tcp_from(&gw, "127.0.0.7").await;
        tcp.write_all(&bad).await.unwrap();
        let took = closed_within(tcp, Duration::from_secs(5)).await;
        assert!(took < Duration::from_millis(300), "{took:?}");
    }
    // Stalled: half a header, then nothing. Closed once the 300 ms timeout passes.
    let mut tcp = tcp_from(&gw, "127.0.0.7").await;
    tcp.write_all(b"PROXY TCP4 192.0").await.unwrap();
    let took = closed_within(tcp, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

/// The admin listener's metrics text.
async fn metrics(gw: &TestGateway) -> String {
    reqwest::get(gw.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn proxy_protocol_v2_lengths_overrunning_their_container_close_without_serving() {
    let (gw, _dir) = start_proxied().await;
    // The client address is allowed, so only the header's lengths can refuse these.
    let with_tlvs = |tlvs: &[u8]| {
        let mut h = v2(1, [192, 0, 2, 1]);
        h[15] = 12 + u8::try_from(tlvs.len()).unwrap();
        h.extend_from_slice(tlvs);
        h
    };
    for (what, header) in [
        ("TLV longer than the header", with_tlvs(&[0x04, 0, 10])),
        ("TLV cut inside its length", with_tlvs(&[0x04, 0])),
        (
            "SSL TLV whose sub-TLV overruns it",
            with_tlvs(&[0x20, 0, 8, 1, 0, 0, 0, 0, 0x21, 0, 40]),
        ),
        ("IPv6 family with an IPv4-sized block", {
            let mut h = v2(1, [192, 0, 2, 1]);
            h[13] = 0x21;
            h
        }),
    ] {
        let mut tcp = tcp_from(&gw, "127.0.0.7").await;
        tcp.write_all(&header).await.unwrap();
        assert!(
            get_over(&gw, tcp).await.is_err(),
            "{what}: a request was served"
        );
    }
    // The declared length overruns what the peer sends: 40 bytes of TLVs announced, none sent,
    // then the peer closes its side.
    let mut short = v2(1, [192, 0, 2, 1]);
    short[15] = 12 + 40;
    let mut tcp = tcp_from(&gw, "127.0.0.7").await;
    tcp.write_all(&short).await.unwrap();
    tcp.shutdown().await.unwrap();
    let took = closed_within(tcp, Duration::from_secs(5)).await;
    assert!(took < Duration::from_millis(300), "{took:?}");

    let text = metrics(&gw).await;
    assert!(
        text.contains("bucketgate_proxy_protocol_failures_total 5"),
        "{text}"
    );
    assert!(
        !text.contains("bucketgate_network_decisions_total{"),
        "a refused header reached the request pipeline: {text}"
    );
    // The listener still serves a well-formed header.
    let mut tcp = tcp_from(&gw, "127.0.0.7").await;
    tcp.write_all(&v2(1, [192, 0, 2, 1])).await.unwrap();
    assert_eq!(get_over(&gw, tcp).await.unwrap(), StatusCode::OK);
}

// ---- explain ----

fn explain(dir: &TempDir, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bucketgate"))
        .arg("explain")
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn explain_config() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        r#"
[listener]
addr = "127.0.0.1:0"
dev_certificate_dir = "tls"

[sources.photos]
kind = "fs"
root = "data"

[network]
allow = ["203.0.113.0/24", "198.51.100.0/24"]
deny = ["203.0.113.66/32"]
trusted_proxies = ["10.0.0.0/8"]

[network.sources.photos]
allow = ["198.51.100.0/25"]
"#,
    )
    .unwrap();
    dir
}

#[test]
fn explain_prints_client_decision_and_rule_with_exit_codes() {
    let dir = explain_config();
    let (code, out) = explain(&dir, &["--peer", "203.0.113.7", "/healthz"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("client:   203.0.113.7"), "{out}");
    assert!(out.contains("decision: allow"), "{out}");
    assert!(out.contains("rule:     allow 203.0.113.0/24"), "{out}");

    let (code, out) = explain(&dir, &["--peer", "203.0.113.66", "/o/photos/a.jpg"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("rule:     deny 203.0.113.66/32"), "{out}");

    let (code, out) = explain(&dir, &["--peer", "198.51.100.200", "/o/photos/a.jpg"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("rule:     source photos: no allow rule matched"),
        "{out}"
    );

    let args = [
        "--peer",
        "10.0.0.1",
        "--forwarded-for",
        "198.51.100.9, 10.2.2.2",
        "/o/photos/a",
    ];
    let (code, out) = explain(&dir, &args);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("client:   198.51.100.9 (from forwarded headers"),
        "{out}"
    );
    assert!(
        out.contains("source photos: allow 198.51.100.0/25"),
        "{out}"
    );

    // Spoofed from an untrusted peer: ignored.
    let args = [
        "--peer",
        "192.0.2.1",
        "--forwarded",
        "for=203.0.113.7",
        "/o/photos/a",
    ];
    let (code, out) = explain(&dir, &args);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("client:   192.0.2.1 (the peer)"), "{out}");

    let args = [
        "--peer",
        "10.0.0.1",
        "--forwarded-for",
        "010.0.0.1",
        "/o/photos/a",
    ];
    let (code, out) = explain(&dir, &args);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("refuse (400)"), "{out}");
}

#[test]
fn explain_bad_input_exits_2() {
    let dir = explain_config();
    for args in [
        vec!["--peer", "not-an-ip", "/o/photos/a"],
        vec!["--peer", "fe80::1%eth0", "/o/photos/a"],
        vec!["--peer", "203.0.113.7", "o/photos/a"],
    ] {
        let (code, out) = explain(&dir, &args);
        assert_eq!(code, 2, "{args:?}: {out}");
    }
    std::fs::write(
        dir.path().join("config.toml"),
        "[network]\nallow = [\"10.0.0.1/8\"]\n",
    )
    .unwrap();
    let (code, out) = explain(&dir, &["--peer", "203.0.113.7", "/o/photos/a"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("10.0.0.0/8"), "{out}");
}
