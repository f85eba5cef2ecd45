//! CORS for configured labeling-UI origins: preflights answered without a token, credentials only
//! for listed origins, the headers a media viewer needs exposed, on errors too. Raw requests over
//! h1 and h2 (a browser is not needed to check headers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support;

use std::time::{Duration, SystemTime};

use crate::support::{Proto, RawResponse, TestGateway};
use bucketgate::config::{Config, CorsConfig, Secret};
use bucketgate::tokens::{Grant, Signer, Target, Ttl};
use bytes::Bytes;
use http::{Method, StatusCode};

const ORIGIN: &str = "https://label.example.com";

fn identity(config: &mut Config) {
    config.identity = Some(support::test_identity());
}

fn token() -> String {
    Signer::hs256(
        support::TEST_KID,
        &Secret::new(support::TEST_SECRET.into()),
        support::TEST_AUDIENCE,
        None,
    )
    .mint(
        &Grant {
            source: "local".into(),
            target: Target::prefix("").unwrap(),
            ttl: Ttl::For(Duration::from_secs(600)),
            subject: "alice".into(),
            role: "annotator".into(),
            project: None,
            cip: None,
            rep: Vec::new(),
        },
        SystemTime::now(),
    )
    .unwrap()
}

async fn gateway(origins: &[&str]) -> (TestGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    support::write_file(dir.path(), "hello.txt", b"hello cors\n");
    let origins: Vec<String> = origins.iter().map(|o| o.to_string()).collect();
    let gw = support::GatewayBuilder::new()
        .source("local", support::fs_source(dir.path()))
        .tweak(|config| {
            identity(config);
            config.cors = CorsConfig {
                allowed_origins: origins,
                max_age: Duration::from_secs(600),
                any_origin_for_token_requests: false,
            };
        })
        .start()
        .await;
    (gw, dir)
}

async fn preflight(gw: &TestGateway, proto: Proto, origin: &str) -> RawResponse {
    gw.raw_exact(
        proto,
        Method::OPTIONS,
        "/o/local/hello.txt",
        &[
            ("origin", origin),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "range, authorization"),
        ],
        Bytes::new(),
    )
    .await
}

#[tokio::test]
async fn cors_preflight_from_listed_origin_is_answered_without_a_token() {
    let (gw, _dir) = gateway(&[ORIGIN, "http://127.0.0.1:3000"]).await;
    for proto in Proto::BOTH {
        let r = preflight(&gw, proto, ORIGIN).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{proto:?}");
        assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(r.header("access-control-allow-methods"), Some("GET, HEAD"));
        let allowed = r.header("access-control-allow-headers").unwrap();
        for h in [
            "Range",
            "Authorization",
            "If-None-Match",
            "If-Modified-Since",
            "If-Range",
        ] {
            assert!(allowed.contains(h), "{h} not in {allowed}");
        }
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert_eq!(r.header("vary"), Some("Origin"));
        assert!(r.body.is_empty());
    }
}

#[tokio::test]
async fn cors_preflight_from_unlisted_origin_is_refused_without_allow_origin() {
    let (gw, _dir) = gateway(&[ORIGIN]).await;
    for origin in [
        "https://evil.example.com",
        "https://label.example.com.evil.com",
        "http://label.example.com",
        "null",
    ] {
        let r = preflight(&gw, Proto::H2, origin).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin}");
        assert_eq!(r.header("access-control-allow-credentials"), None);
    }
}

#[tokio::test]
async fn cors_preflight_is_refused_when_no_origin_is_configured() {
    let (gw, _dir) = gateway(&[]).await;
    let r = preflight(&gw, Proto::H1, ORIGIN).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn cors_options_that_is_not_a_preflight_is_method_not_allowed() {
    let (gw, _dir) = gateway(&[ORIGIN]).await;
    let r = gw
        .raw_exact(
            Proto::H1,
            Method::OPTIONS,
            "/o/local/hello.txt",
            &[("origin", ORIGIN)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn cors_response_to_listed_origin_exposes_media_headers() {
    let (gw, _dir) = gateway(&[ORIGIN]).await;
    let bearer = format!("Bearer {}", token());
    for proto in Proto::BOTH {
        let r = gw
            .raw_exact(
                proto,
                Method::GET,
                "/o/local/hello.txt",
                &[
                    ("origin", ORIGIN),
                    ("authorization", &bearer),
                    ("range", "bytes=0-4"),
                ],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{proto:?}");
        assert_eq!(&r.body[..], b"hello");
        assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        let exposed = r.header("access-control-expose-headers").unwrap();
        for h in [
            "Content-Range",
            "Accept-Ranges",
            "ETag",
            "Content-Length",
            "Content-Type",
            "X-Request-Id",
        ] {
            assert!(exposed.contains(h), "{h} not in {exposed}");
        }
        assert_eq!(r.header("vary"), Some("Origin"));
    }
}

#[tokio::test]
async fn cors_error_responses_to_listed_origin_are_readable_by_the_app() {
    let (gw, _dir) = gateway(&[ORIGIN]).await;
    // No token: 401, and the labeling app must be able to read that it was a 401.
    let r = gw
        .raw_exact(
            Proto::H2,
            Method::GET,
            "/o/local/hello.txt",
            &[("origin", ORIGIN)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    // Authorized but missing: 404 with the same headers.
    let bearer = format!("Bearer {}", token());
    let r = gw
        .raw_exact(
            Proto::H1,
            Method::GET,
            "/o/local/missing.txt",
            &[("origin", ORIGIN), ("authorization", &bearer)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
}

#[tokio::test]
async fn cors_unlisted_origin_gets_no_cors_headers_but_vary() {
    let (gw, _dir) = gateway(&[ORIGIN]).await;
    let bearer = format!("Bearer {}", token());
    let r = gw
        .raw_exact(
            Proto::H2,
            Method::GET,
            "/o/local/hello.txt",
            &[
                ("origin", "https://evil.example.com"),
                ("authorization", &bearer),
            ],
            Bytes::new(),
        )
        .await;
    // CORS is the browser's read permission, not access control: the request itself is served.
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("access-control-allow-credentials"), None);
    assert_eq!(r.header("access-control-expose-headers"), None);
    assert_eq!(r.header("vary"), Some("Origin"));
}

/// Issue 16: with no `[cors]` entry for the labeling app nothing displays, yet every request
/// succeeded as far as the gateway could tell. The unlisted-origin counter shows it, by route
/// only (never the origin: attacker text, unbounded).
#[tokio::test]
async fn cors_missing_entry_shows_in_the_unlisted_origin_metric() {
    let (gw, _dir) = gateway(&[]).await;
    let bearer = format!("Bearer {}", token());
    let series = "bucketgate_cors_unlisted_origin_responses_total{route=\"object\"} ";
    let count = async || -> u64 {
        let text = reqwest::get(gw.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    // No Origin (curl, an <img> without crossorigin): not a CORS request, not counted.
    let r = gw
        .raw_exact(
            Proto::H2,
            Method::GET,
            "/o/local/hello.txt",
            &[("authorization", &bearer)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(count().await, 0);
    for proto in Proto::BOTH {
        let r = gw
            .raw_exact(
                proto,
                Method::GET,
                "/o/local/hello.txt",
                &[("authorization", &bearer), ("origin", ORIGIN)],
                Bytes::new(),
            )
            .await;
        // The gateway answers 200; the browser hides it without Access-Control-Allow-Origin.
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("access-control-allow-origin"), None);
    }
    assert_eq!(count().await, 2);
    let text = gw.gateway().metrics().encode().unwrap();
    assert!(
        !text.contains("label.example.com"),
        "origin used as a label"
    );
}
