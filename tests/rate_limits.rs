//! Stage 4 (admit): per-IP and per-subject rate limits with an injected clock, and the cap on
//! open connections per client address.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::support::{GatewayBuilder, TestGateway, fs_source, test_rate_limits};
use bucketgate::config::RateLimits;
use bucketgate::pipeline::admit::{Admission, AdmitClock, LimitKind};
use governor::clock::FakeRelativeClock;
use tokio::net::{TcpSocket, TcpStream};

fn metric(gw: &TestGateway, series: &str) -> u64 {
    let text = gw.gateway().metrics().encode().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

async fn gateway_with(limits: RateLimits, clock: AdmitClock) -> (TestGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    support::write_file(dir.path(), "hello.txt", b"hello\n");
    let gw = GatewayBuilder::new()
        .source("local", fs_source(dir.path()))
        .tweak(|c| c.rate_limits = limits)
        .clock(clock)
        .start()
        .await;
    (gw, dir)
}

#[tokio::test]
async fn burst_is_admitted_then_429_with_retry_after_until_the_clock_advances() {
    let clock = FakeRelativeClock::default();
    let limits = RateLimits {
        per_ip_rps: 1,
        per_ip_burst: 3,
        ..test_rate_limits()
    };
    let (gw, _dir) = gateway_with(limits, AdmitClock::Fake(clock.clone())).await;
    let client = gw.client();
    let url = gw.url("/o/local/hello.txt");
    for n in 0..3 {
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {n} is within the burst");
    }
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"], "too many requests");
    assert!(body["request_id"].is_string());
    // A missing key is refused the same way: admit runs before plan and fetch.
    let resp = client.get(gw.url("/o/local/missing")).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(metric(&gw, "bucketgate_rate_limited_total{key=\"ip\"}"), 2);

    clock.advance(Duration::from_secs(1));
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "one cell has been replenished");
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 429, "and only one");
    gw.shutdown().await;
}

#[test]
fn retry_after_is_the_wait_for_the_next_request_rounded_up() {
    let clock = FakeRelativeClock::default();
    let limits = RateLimits {
        per_ip_rps: 1,
        per_ip_burst: 1,
        ..test_rate_limits()
    };
    let a = Admission::new(&limits, AdmitClock::Fake(clock.clone()));
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    a.admit(ip, None).unwrap();
    clock.advance(Duration::from_millis(300));
    let refused = a.admit(ip, None).unwrap_err();
    assert_eq!(refused.retry_after, Duration::from_millis(700));
    assert_eq!(refused.retry_after_secs(), 1);
    clock.advance(Duration::from_millis(700));
    a.admit(ip, None).unwrap();
}

#[tokio::test]
async fn another_address_keeps_its_own_budget() {
    let clock = FakeRelativeClock::default();
    let limits = RateLimits {
        per_ip_rps: 1,
        per_ip_burst: 1,
        ..test_rate_limits()
    };
    let (gw, _dir) = gateway_with(limits, AdmitClock::Fake(clock)).await;
    let url = gw.url("/o/local/hello.txt");
    let one = gw.client_from("127.0.0.1".parse().unwrap());
    let two = gw.client_from("127.0.0.2".parse().unwrap());
    assert_eq!(one.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(one.get(&url).send().await.unwrap().status(), 429);
    assert_eq!(two.get(&url).send().await.unwrap().status(), 200);
    gw.shutdown().await;
}

#[test]
fn per_subject_limit_is_independent_of_the_ip_limit() {
    let clock = FakeRelativeClock::default();
    let limits = RateLimits {
        per_ip_rps: 1,
        per_ip_burst: 100,
        per_subject_rps: 1,
        per_subject_burst: 2,
        ..test_rate_limits()
    };
    let a = Admission::new(&limits, AdmitClock::Fake(clock.clone()));
    let ip1: IpAddr = "192.0.2.1".parse().unwrap();
    let ip2: IpAddr = "192.0.2.2".parse().unwrap();
    // One subject from two addresses shares one budget.
    a.admit(ip1, Some("alice")).unwrap();
    a.admit(ip2, Some("alice")).unwrap();
    let refused = a.admit(ip1, Some("alice")).unwrap_err();
    assert_eq!(refused.kind, LimitKind::Subject);
    // Another subject, and anonymous requests, from the same address are not affected.
    a.admit(ip1, Some("bob")).unwrap();
    a.admit(ip1, None).unwrap();
    clock.advance(Duration::from_secs(1));
    a.admit(ip1, Some("alice")).unwrap();

    // And an IP over its limit is refused whatever the subject.
    let tight = RateLimits {
        per_ip_rps: 1,
        per_ip_burst: 1,
        ..limits
    };
    let b = Admission::new(&tight, AdmitClock::Fake(clock));
    b.admit(ip1, Some("carol")).unwrap();
    assert_eq!(b.admit(ip1, Some("dave")).unwrap_err().kind, LimitKind::Ip);
}

async fn tcp_from(local: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(local.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn max_connections_per_ip_closes_the_extra_connection_while_another_ip_connects() {
    let limits = RateLimits {
        max_connections_per_ip: 2,
        ..test_rate_limits()
    };
    let (gw, _dir) = gateway_with(limits, AdmitClock::default()).await;
    let tls = gw.tls_config(&[b"http/1.1"], rustls::ALL_VERSIONS);
    let name = rustls::pki_types::ServerName::IpAddress(gw.data_addr().ip().into());
    let connector = tokio_rustls::TlsConnector::from(tls);
    let handshake = |local: &'static str| {
        let connector = connector.clone();
        let name = name.clone();
        let addr = gw.data_addr();
        async move {
            let tcp = tcp_from(local, addr).await;
            connector.connect(name, tcp).await
        }
    };
    let first = handshake("127.0.0.1").await.expect("first connection");
    let _second = handshake("127.0.0.1").await.expect("second connection");
    assert!(
        handshake("127.0.0.1").await.is_err(),
        "the third connection from the same address is closed at accept"
    );
    assert_eq!(
        metric(&gw, "bucketgate_rejected_connections_per_ip_total"),
        1
    );
    let _other = handshake("127.0.0.2")
        .await
        .expect("another address still connects");

    // Closing one connection gives its slot back (the server notices the close first).
    drop(first);
    support::eventually(
        "a slot is free again",
        50,
        Duration::from_millis(20),
        || {
            let h = handshake("127.0.0.1");
            async move { h.await.ok() }
        },
    )
    .await;
    gw.shutdown().await;
}
