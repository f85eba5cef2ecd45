//! The audit log: exactly one JSON line per request, for successes, denials, failures and cut-off
//! bodies, with the bytes actually sent, and never the token itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::support::{Proto, TestGateway};
use bucketgate::audit::token_hash;
use bucketgate::config::{AuditDestination, Config, Secret};
use bucketgate::tokens::{Grant, Signer, Target, Ttl};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

const BIG_BYTES: usize = 32 * 1024 * 1024;

fn identity(config: &mut Config) {
    config.identity = Some(support::test_identity());
}

fn token(target: Target) -> String {
    Signer::hs256(
        support::TEST_KID,
        &Secret::new(support::TEST_SECRET.into()),
        support::TEST_AUDIENCE,
        None,
    )
    .mint(
        &Grant {
            source: "local".into(),
            target,
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

/// GET over h2, read the head, then drop the body after the first frame: the client goes away.
async fn get_and_abandon(gw: &TestGateway, path: &str, bearer: &str) -> String {
    let config = gw.tls_config(&[b"h2"], rustls::ALL_VERSIONS);
    let stream = gw.tls_connect(config).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(gw.url(path))
        .header("authorization", bearer)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    drop(resp);
    drop(sender);
    let _ = conn.await;
    id
}

#[tokio::test]
async fn audit_writes_one_line_per_request_with_decision_status_and_bytes() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("audit.log");
    support::write_file(data.path(), "hello.txt", b"hello audit\n");
    support::write_file(
        data.path(),
        "big.bin",
        &support::pattern_bytes(BIG_BYTES, 7),
    );
    let audit_path = log_path.clone();
    let mut gw = support::GatewayBuilder::new()
        .source("local", support::fs_source(data.path()))
        .tweak(move |config| {
            identity(config);
            config.audit.destination = AuditDestination::File {
                path: audit_path,
                max_bytes: 100 * 1024 * 1024,
                keep: 2,
            };
        })
        .start()
        .await;
    let all = token(Target::prefix("").unwrap());
    let cats_only = token(Target::prefix("cats/").unwrap());
    let bearer = format!("Bearer {all}");
    let cats_bearer = format!("Bearer {cats_only}");

    // (request id, expected status, decision, body bytes received, complete)
    let mut expected: Vec<(String, u16, &str, Option<u64>, bool)> = Vec::new();
    let send = async |proto, path: &str, headers: &[(&str, &str)]| {
        let r = gw
            .raw_exact(proto, Method::GET, path, headers, Bytes::new())
            .await;
        let id = r.header("x-request-id").unwrap().to_owned();
        (r, id)
    };

    let (r, id) = send(
        Proto::H2,
        "/o/local/hello.txt",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let etag = r.header("etag").unwrap().to_owned();
    expected.push((id, 200, "allow", Some(r.body.len() as u64), true));

    let (r, id) = send(
        Proto::H1,
        "/o/local/hello.txt",
        &[("authorization", &bearer), ("range", "bytes=0-4")],
    )
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    expected.push((id, 206, "allow", Some(5), true));

    let (r, id) = send(
        Proto::H2,
        "/o/local/hello.txt",
        &[("authorization", &bearer), ("if-none-match", &etag)],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    expected.push((id, 304, "allow", Some(0), true));

    let (r, id) = send(
        Proto::H1,
        "/o/local/a/%2e%2e/b",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    expected.push((id, 400, "deny", Some(r.body.len() as u64), true));

    let (r, id) = send(Proto::H2, "/o/local/hello.txt", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    expected.push((id, 401, "deny", Some(r.body.len() as u64), true));

    let (r, id) = send(
        Proto::H1,
        "/o/local/hello.txt",
        &[("authorization", &cats_bearer)],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    expected.push((id, 403, "deny", Some(r.body.len() as u64), true));

    let (r, id) = send(
        Proto::H2,
        "/o/local/missing.txt",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    expected.push((id, 404, "allow", Some(r.body.len() as u64), true));

    let id = get_and_abandon(&gw, "/o/local/big.bin", &bearer).await;
    expected.push((id, 200, "allow", None, false));

    // Shutdown waits for the writer to drain, so every record is on disk afterwards.
    gw.take_gateway().shutdown().await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), expected.len(), "one line per request:\n{text}");
    let records: HashMap<String, Value> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["request_id"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    for (id, status, decision, bytes, complete) in &expected {
        let rec = records
            .get(id)
            .unwrap_or_else(|| panic!("no record for {id}:\n{text}"));
        assert_eq!(rec["status"], *status, "{rec}");
        assert_eq!(rec["decision"], *decision, "{rec}");
        assert_eq!(rec["complete"], *complete, "{rec}");
        assert_eq!(rec["method"], "GET");
        assert_eq!(rec["client"], "127.0.0.1");
        assert!(rec["duration_ms"].as_f64().unwrap() >= 0.0);
        assert!(rec["time"].as_str().unwrap().ends_with('Z'), "{rec}");
        match bytes {
            Some(b) => assert_eq!(rec["bytes"], *b, "{rec}"),
            None => {
                let sent = rec["bytes"].as_u64().unwrap();
                assert!(sent < BIG_BYTES as u64, "a cut-off body sent {sent} bytes");
            }
        }
    }
    // The allowed requests name who, what and which token (as a hash).
    let ok = &records[&expected[0].0];
    assert_eq!(ok["source"], "local");
    assert_eq!(ok["key"], "hello.txt");
    assert_eq!(ok["representation"], "original");
    assert_eq!(ok["subject"], "alice");
    assert_eq!(ok["role"], "annotator");
    assert_eq!(ok["token_hash"], token_hash(&all));
    assert!(ok["rule"].is_string(), "{ok}");
    let denied = &records[&expected[5].0];
    assert_eq!(denied["token_hash"], token_hash(&cats_only));
    assert_eq!(records[&expected[4].0]["token_hash"], Value::Null);
    // No token text, not even its signature.
    for t in [&all, &cats_only] {
        let signature = t.rsplit('.').next().unwrap();
        assert!(!text.contains(t.as_str()));
        assert!(!text.contains(signature), "signature in the audit log");
    }
}

#[tokio::test]
async fn audit_goes_to_stdout_in_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = bucketgate::app::embedded_config(dir.path()).unwrap();
    assert_eq!(cfg.audit.destination, AuditDestination::Stdout);
}

/// Regression: a request the network stage refused was audited with `"rule": null`; its record
/// names the rule that denied it, as the log line does.
#[tokio::test]
async fn audit_names_the_rule_of_a_network_denial() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("audit.log");
    support::write_file(data.path(), "hello.txt", b"hello audit\n");
    let audit_path = log_path.clone();
    let mut gw = support::GatewayBuilder::new()
        .source("local", support::fs_source(data.path()))
        .tweak(move |config| {
            identity(config);
            config.network = bucketgate::config::NetworkConfig {
                allow: vec![bucketgate::config::network::parse_cidr("127.0.0.0/8").unwrap()],
                deny: vec![bucketgate::config::network::parse_cidr("127.0.0.1/32").unwrap()],
                ..bucketgate::config::NetworkConfig::loopback_only()
            };
            config.audit.destination = AuditDestination::File {
                path: audit_path,
                max_bytes: 1024 * 1024,
                keep: 2,
            };
        })
        .start()
        .await;
    let bearer = format!("Bearer {}", token(Target::prefix("").unwrap()));
    let r = gw
        .raw_exact(
            Proto::H1,
            Method::GET,
            "/o/local/hello.txt",
            &[("authorization", &bearer)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    gw.take_gateway().shutdown().await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    let rec: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(rec["status"], 403, "{rec}");
    assert_eq!(rec["decision"], "deny", "{rec}");
    assert_eq!(rec["rule"], "deny 127.0.0.1/32", "{rec}");
    assert_eq!(rec["client"], "127.0.0.1", "{rec}");
}

/// Issue 16: a missing `[cors]` entry was invisible (every hidden response audited as
/// `200 allow complete`) and an answered preflight was audited as `"decision":"deny"`. Each
/// record names the request's Origin, what `[cors]` made of it and the Range it asked for; a
/// preflight is audited as one, with the entry that allowed it; a counter sums the responses to
/// unlisted origins.
#[tokio::test]
async fn audit_records_origin_cors_outcome_range_and_preflights() {
    const LISTED: &str = "https://label.example.com";
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("audit.log");
    support::write_file(data.path(), "hello.txt", b"hello audit\n");
    let audit_path = log_path.clone();
    let mut gw = support::GatewayBuilder::new()
        .source("local", support::fs_source(data.path()))
        .tweak(move |config| {
            identity(config);
            config.cors = bucketgate::config::CorsConfig {
                allowed_origins: vec![LISTED.to_owned()],
                max_age: Duration::from_secs(600),
                any_origin_for_token_requests: false,
            };
            config.audit.destination = AuditDestination::File {
                path: audit_path,
                max_bytes: 1024 * 1024,
                keep: 2,
            };
        })
        .start()
        .await;
    let unlisted_metric = async |gw: &TestGateway| -> u64 {
        let text = reqwest::get(gw.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix("bucketgate_cors_unlisted_origin_responses_total{route=\"object\"} ")
            })
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    assert_eq!(unlisted_metric(&gw).await, 0);
    let bearer = format!("Bearer {}", token(Target::prefix("").unwrap()));
    let send = async |method: Method, headers: &[(&str, &str)]| {
        let r = gw
            .raw_exact(
                Proto::H1,
                method,
                "/o/local/hello.txt",
                headers,
                Bytes::new(),
            )
            .await;
        (r.status, r.header("x-request-id").unwrap().to_owned())
    };
    let (status, listed_range) = send(
        Method::GET,
        &[
            ("authorization", &bearer),
            ("origin", LISTED),
            ("range", "bytes=2-6"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    let (status, unlisted) = send(
        Method::GET,
        &[
            ("authorization", &bearer),
            ("origin", "https://other.example.com"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, absent) = send(Method::GET, &[("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::OK);
    // Attacker text: a tab and non-ASCII bytes are escaped, never written raw.
    let (status, hostile) = send(
        Method::GET,
        &[
            ("authorization", &bearer),
            ("origin", "https://x.example\t\u{e9}\\"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let preflight = |origin: &'static str| {
        [
            ("origin", origin),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "range"),
        ]
    };
    let (status, allowed_preflight) = send(Method::OPTIONS, &preflight(LISTED)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, refused_preflight) =
        send(Method::OPTIONS, &preflight("https://evil.example.com")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The unlisted GET, the hostile GET and the refused preflight; never the others.
    assert_eq!(unlisted_metric(&gw).await, 3);
    let metrics = reqwest::get(gw.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("other.example.com"), "origin as a label");

    gw.take_gateway().shutdown().await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    let records: HashMap<String, Value> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["request_id"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    assert_eq!(records.len(), 6, "{text}");
    let rec = |id: &str| records[id].clone();

    let r = rec(&listed_range);
    assert_eq!(r["origin"], LISTED, "{r}");
    assert_eq!(r["cors"], "allowed", "{r}");
    assert_eq!(r["range"], "bytes=2-6", "{r}");
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(r["status"], 206, "{r}");

    let r = rec(&unlisted);
    assert_eq!(r["origin"], "https://other.example.com", "{r}");
    assert_eq!(r["cors"], "not_listed", "{r}");
    assert_eq!(r["range"], Value::Null, "{r}");
    assert_eq!(r["decision"], "allow", "{r}");

    let r = rec(&absent);
    assert_eq!(r["origin"], Value::Null, "{r}");
    assert_eq!(r["cors"], "none", "{r}");

    let r = rec(&hostile);
    assert_eq!(r["origin"], "https://x.example\\x09\\xc3\\xa9\\\\", "{r}");
    assert_eq!(r["cors"], "not_listed", "{r}");

    let r = rec(&allowed_preflight);
    assert_eq!(r["method"], "OPTIONS", "{r}");
    assert_eq!(r["decision"], "preflight", "{r}");
    assert_eq!(r["cors"], "allowed", "{r}");
    assert_eq!(r["rule"], format!("allow {LISTED}"), "{r}");
    assert_eq!(r["status"], 204, "{r}");
    assert_eq!(r["token_hash"], Value::Null, "{r}");

    let r = rec(&refused_preflight);
    assert_eq!(r["decision"], "preflight", "{r}");
    assert_eq!(r["cors"], "not_listed", "{r}");
    assert_eq!(r["origin"], "https://evil.example.com", "{r}");
    assert_eq!(r["rule"], Value::Null, "{r}");
    assert_eq!(r["status"], 403, "{r}");
}
