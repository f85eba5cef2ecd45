//! Operations and response hygiene, against the running gateway:
//!
//! - `/metrics` (scraped over the admin listener and parsed as Prometheus text): after a known
//!   sequence of requests the request counter, the body-bytes counter, the latency histogram and
//!   `upstream_errors` hold exactly what that sequence implies; a missing object and a client
//!   that goes away are not upstream errors, a body that breaks mid-stream is;
//! - `/readyz` with s3 sources (s3s-fs, SigV4 checked): 200 while the store answers, 503 naming
//!   the failing source (and nothing else about it) once it does not; `/healthz` stays 200;
//! - an origin that sends `Set-Cookie`, `x-amz-*`, `Server: AmazonS3` and S3 XML error bodies:
//!   none of it reaches a client;
//! - `Cargo.lock` holds one hyper / h2 / http / rustls and no OpenSSL or aws-lc.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::origin::{self, Mode, Origin};
use crate::support::s3::S3sFs;
use crate::support::{Proto, TestGateway};
use bucketgate::config::{Limits, SourceConfig};
use http::StatusCode;

// --- a small Prometheus / OpenMetrics text parser ----------------------------------------------

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Every sample of a text exposition. Fails the test on a line it cannot read, and on text that
/// does not end with OpenMetrics' `# EOF`.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut eof = false;
    for line in text.lines() {
        assert!(!eof, "text after # EOF: {line:?}");
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        samples.push(parse_sample(line));
    }
    assert!(eof, "exposition does not end with # EOF");
    samples
}

/// `name{a="x",b="y"} value` or `name value`; label values may escape `\\`, `\"` and `\n`.
fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line:?}"));
    let name = line[..name_end].to_string();
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name in {line:?}"
    );
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices();
        let close = loop {
            let (i, c) = chars
                .next()
                .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
            match c {
                '}' => break i,
                ',' | ' ' => continue,
                _ => {}
            }
            // A label: name="value".
            let mut key = String::from(c);
            loop {
                let (_, c) = chars.next().unwrap_or_else(|| panic!("label: {line:?}"));
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            assert_eq!(
                chars.next().map(|(_, c)| c),
                Some('"'),
                "label value not quoted: {line:?}"
            );
            let mut value = String::new();
            loop {
                let (_, c) = chars.next().unwrap_or_else(|| panic!("value: {line:?}"));
                match c {
                    '"' => break,
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(e @ ('\\' | '"')) => value.push(e),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    c => value.push(c),
                }
            }
            assert!(
                labels.insert(key.clone(), value).is_none(),
                "label {key} twice in {line:?}"
            );
        };
        rest = &after[close + 1..];
    }
    let mut fields = rest.split_whitespace();
    let value = fields
        .next()
        .unwrap_or_else(|| panic!("no value: {line:?}"));
    let value: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("bad value {value:?} in {line:?}"));
    Sample {
        name,
        labels,
        value,
    }
}

/// One scrape of `/metrics`.
struct Scrape(Vec<Sample>);

impl Scrape {
    async fn take(gw: &TestGateway) -> Scrape {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(gw.admin_url("/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        Scrape(parse_exposition(&resp.text().await.unwrap()))
    }

    fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum over every series of `name` carrying `labels` (0 when there is none yet: a
    /// labelled series appears on its first increment).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels).map(|s| s.value).sum()
    }

    /// `upstream_errors` as (source, kind) -> count.
    fn upstream_errors(&self) -> BTreeMap<(String, String), f64> {
        self.samples(UPSTREAM_ERRORS, &[])
            .map(|s| {
                (
                    (s.labels["source"].clone(), s.labels["kind"].clone()),
                    s.value,
                )
            })
            .collect()
    }

    fn requests(&self, status: &str) -> f64 {
        self.sum(REQUESTS, &[("route", "object"), ("status", status)])
    }

    fn body_bytes(&self) -> f64 {
        self.sum(BODY_BYTES, &[("route", "object")])
    }

    fn aborted(&self) -> f64 {
        self.sum(ABORTED, &[("route", "object")])
    }

    /// The latency histogram of the object route: checks that its buckets are cumulative and
    /// end in `+Inf` equal to `_count`; returns (`_count`, `_sum`).
    fn latency(&self) -> (f64, f64) {
        let route = [("route", "object")];
        let mut buckets: Vec<(f64, f64)> = self
            .samples(LATENCY_BUCKET, &route)
            .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
            .collect();
        assert!(buckets.len() >= 2, "latency buckets: {buckets:?}");
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        for pair in buckets.windows(2) {
            assert!(
                pair[0].1 <= pair[1].1,
                "buckets not cumulative: {buckets:?}"
            );
        }
        let count = self.sum(LATENCY_COUNT, &route);
        let (le, inf) = buckets[buckets.len() - 1];
        assert!(le.is_infinite(), "last bucket is le={le}, not +Inf");
        assert_eq!(inf, count, "+Inf bucket and _count disagree");
        (count, self.sum(LATENCY_SUM, &route))
    }
}

const REQUESTS: &str = "bucketgate_http_requests_total";
const BODY_BYTES: &str = "bucketgate_http_response_body_bytes_total";
const ABORTED: &str = "bucketgate_http_aborted_responses_total";
const UPSTREAM_ERRORS: &str = "bucketgate_upstream_errors_total";
const LATENCY_BUCKET: &str = "bucketgate_http_request_duration_seconds_bucket";
const LATENCY_COUNT: &str = "bucketgate_http_request_duration_seconds_count";
const LATENCY_SUM: &str = "bucketgate_http_request_duration_seconds_sum";

/// Scrape until `ready` holds (a body's bytes and abort are counted when the server drops it,
/// which may be a moment after the client saw its end), at most 5 s.
async fn scrape_when(gw: &TestGateway, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    support::eventually(what, 200, Duration::from_millis(25), || async {
        let scrape = Scrape::take(gw).await;
        ready(&scrape).then_some(scrape)
    })
    .await
}

#[test]
fn parser_reads_labels_escapes_and_special_values() {
    let samples = parse_exposition(
        "# HELP x_total A counter.\n# TYPE x counter\nx_total{a=\"q\\\"uo\\\\te\",b=\"\"} 3\n\
         h_bucket{le=\"+Inf\"} 7\nplain 1.5\n# EOF\n",
    );
    assert_eq!(samples.len(), 3);
    assert_eq!(samples[0].name, "x_total");
    assert_eq!(samples[0].labels["a"], "q\"uo\\te");
    assert_eq!(samples[0].labels["b"], "");
    assert_eq!(samples[0].value, 3.0);
    assert!(
        samples[1].labels["le"]
            .parse::<f64>()
            .unwrap()
            .is_infinite()
    );
    assert_eq!(samples[2].value, 1.5);
}

// --- metrics --------------------------------------------------------------------------------

const OBJECT_LEN: usize = 1000;
const RANGE_LEN: usize = 10;

fn fault_limits() -> Limits {
    Limits {
        upstream_connect_timeout: Duration::from_secs(1),
        upstream_first_byte_timeout: Duration::from_secs(1),
        upstream_idle_timeout: Duration::from_secs(1),
        upstream_max_retries: 1,
        ..support::test_limits()
    }
}

fn origin_source(origin: &Origin, bucket: &str) -> SourceConfig {
    SourceConfig::S3(support::s3::source(
        &origin.endpoint,
        bucket,
        "",
        "AKIDOPERATIONS",
        "operations-secret",
    ))
}

/// Read a response body to its end or its failure: (bytes, whether it failed).
async fn read_to_end(mut resp: reqwest::Response, what: &str) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await {
            Err(_) => panic!("{what}: body neither ended nor failed within 10 s"),
            Ok(Ok(Some(chunk))) => got.extend_from_slice(&chunk),
            Ok(Ok(None)) => return (got, false),
            Ok(Err(_)) => return (got, true),
        }
    }
}

/// GET an object whose upstream body breaks: the client sees an aborted response. Returns the
/// bytes that reached it.
async fn get_broken(gw: &TestGateway, client: &reqwest::Client, path: &str) -> usize {
    let resp = match client.get(gw.url(path)).send().await {
        Ok(resp) => resp,
        // The first body frame failed before hyper flushed the head: aborted all the same.
        Err(e) => {
            assert!(!e.is_timeout(), "{path}: client timed out: {e}");
            return 0;
        }
    };
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    let (got, failed) = read_to_end(resp, path).await;
    assert!(failed, "{path}: a broken body ended as if complete");
    assert!(got.len() <= origin::PARTIAL_LEN, "{path}: {}", got.len());
    got.len()
}

#[tokio::test]
async fn metrics_count_body_bytes_latency_and_upstream_errors_exactly() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let object = support::pattern_bytes(OBJECT_LEN, 7);
    support::write_file(dir.path(), "obj.bin", &object);
    let refused = Origin::start(Mode::Refuse).await;
    let reset = Origin::start(Mode::ResetMidBody).await;
    let short = Origin::start(Mode::ShortBody).await;
    let stall = Origin::start(Mode::StallMidBody).await;
    let endless = Origin::start(Mode::Endless).await;
    let sources = BTreeMap::from([
        ("local".to_string(), support::fs_source(dir.path())),
        ("refused".to_string(), origin_source(&refused, "bucket")),
        ("reset".to_string(), origin_source(&reset, "bucket")),
        ("short".to_string(), origin_source(&short, "bucket")),
        ("stall".to_string(), origin_source(&stall, "bucket")),
        ("endless".to_string(), origin_source(&endless, "bucket")),
    ]);
    let gw = support::GatewayBuilder::new()
        .sources(sources)
        .limits(fault_limits())
        .start()
        .await;
    let h1 = gw.client_for(Proto::H1);
    let h2 = gw.client_for(Proto::H2);

    let idle = Scrape::take(&gw).await;
    assert_eq!(idle.body_bytes(), 0.0);
    assert!(idle.upstream_errors().is_empty());

    // 1. Two whole GETs (h1, h2), one 10-byte range, one missing key.
    for client in [&h1, &h2] {
        let resp = client.get(gw.url("/o/local/obj.bin")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.bytes().await.unwrap() == object, "whole object");
    }
    let resp = h1
        .get(gw.url("/o/local/obj.bin"))
        .header("range", "bytes=100-109")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert!(resp.bytes().await.unwrap() == object[100..110], "range");
    let resp = h1.get(gw.url("/o/local/missing.bin")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let expected_bytes = (2 * OBJECT_LEN + RANGE_LEN) as f64;
    let m = scrape_when(&gw, "the three bodies counted", |m| {
        m.body_bytes() >= expected_bytes
    })
    .await;
    assert_eq!(
        m.body_bytes(),
        expected_bytes,
        "bytes sent: exactly the bodies"
    );
    assert_eq!(m.requests("200"), 2.0);
    assert_eq!(m.requests("206"), 1.0);
    assert_eq!(m.requests("404"), 1.0);
    assert_eq!(m.aborted(), 0.0);
    let (count, sum) = m.latency();
    assert_eq!(count, 4.0, "one latency observation per request");
    assert!(sum > 0.0 && sum < started.elapsed().as_secs_f64(), "{sum}");
    assert!(
        m.upstream_errors().is_empty(),
        "a missing object is not an upstream error: {:?}",
        m.upstream_errors()
    );

    // 2. A refused store: 502, one upstream error before the head, whatever the retries.
    let resp = h1.get(gw.url("/o/refused/photo.png")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let m = Scrape::take(&gw).await;
    assert_eq!(
        m.upstream_errors(),
        BTreeMap::from([(("refused".into(), "unreachable".into()), 1.0)])
    );
    assert_eq!(m.requests("502"), 1.0);

    // 3. Bodies that break after the head: reset, short, stalled past the idle timeout.
    let before = m.body_bytes();
    let mut received = 0;
    for path in [
        "/o/reset/photo.png",
        "/o/short/photo.png",
        "/o/stall/photo.png",
    ] {
        received += get_broken(&gw, &h1, path).await;
    }
    let m = scrape_when(&gw, "three aborted responses", |m| m.aborted() >= 3.0).await;
    assert_eq!(m.aborted(), 3.0);
    assert_eq!(
        m.upstream_errors(),
        BTreeMap::from([
            (("refused".into(), "unreachable".into()), 1.0),
            (("reset".into(), "body_broken".into()), 1.0),
            (("short".into(), "body_broken".into()), 1.0),
            (("stall".into(), "stalled".into()), 1.0),
        ]),
        "each mid-body failure counted once, with its kind"
    );
    let sent = m.body_bytes() - before;
    assert!(
        sent >= received as f64 && sent <= (3 * origin::PARTIAL_LEN) as f64,
        "bytes sent for the broken bodies: {sent} (clients got {received})"
    );

    // 4. A client that goes away mid-body: an aborted response, not an upstream error.
    let before = m.body_bytes();
    let mut resp = h1.get(gw.url("/o/endless/big.bin")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut read = 0;
    while read < 64 * 1024 {
        read += resp.chunk().await.unwrap().expect("endless body").len();
    }
    drop(resp);
    drop(h1);
    let m = scrape_when(&gw, "the disconnect counted as aborted", |m| {
        m.aborted() >= 4.0
    })
    .await;
    assert_eq!(m.aborted(), 4.0);
    assert!(
        m.body_bytes() - before >= read as f64,
        "bytes sent before the disconnect"
    );
    assert_eq!(
        m.upstream_errors().len(),
        4,
        "a client disconnect is not an upstream error: {:?}",
        m.upstream_errors()
    );
    assert!(
        !m.upstream_errors()
            .keys()
            .any(|(source, _)| source == "endless"),
        "{:?}",
        m.upstream_errors()
    );

    // Every object request was answered with a head and timed once.
    assert_eq!(m.requests("200"), 2.0 + 3.0 + 1.0);
    let total = m.sum(REQUESTS, &[("route", "object")]);
    assert_eq!(total, 9.0);
    let (count, _) = m.latency();
    assert_eq!(count, total, "latency _count equals the object requests");
}

// --- readiness ------------------------------------------------------------------------------

const READY_ACCESS_KEY: &str = "AKIAREADYZOPERATIONS";
const READY_SECRET_KEY: &str = "readyz-secret-key-do-not-print";

async fn admin_get(gw: &TestGateway, path: &str) -> (StatusCode, String) {
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(gw.admin_url(path))
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// The readiness body names sources only: no key, secret, endpoint or bucket.
fn assert_no_source_details(body: &str, endpoints: &[&str], buckets: &[&str]) {
    for secret in [READY_ACCESS_KEY, READY_SECRET_KEY, "http://", "127.0.0.1"] {
        assert!(!body.contains(secret), "{secret:?} in {body:?}");
    }
    for endpoint in endpoints {
        let port = endpoint.rsplit(':').next().unwrap();
        assert!(!body.contains(port), "endpoint port {port} in {body:?}");
    }
    for bucket in buckets {
        assert!(!body.contains(bucket), "bucket {bucket} in {body:?}");
    }
}

#[tokio::test]
async fn readyz_follows_an_s3_source_and_names_it_without_details_once_its_store_is_gone() {
    let s3 = S3sFs::start(READY_ACCESS_KEY, READY_SECRET_KEY).await;
    s3.create_bucket("ready-bucket").await;
    let endpoint = s3.endpoint.clone();
    let sources = BTreeMap::from([(
        "store".to_string(),
        SourceConfig::S3(s3.source("ready-bucket", "")),
    )]);
    let gw = support::GatewayBuilder::new()
        .sources(sources)
        .limits(fault_limits())
        .start()
        .await;

    assert_eq!(
        admin_get(&gw, "/readyz").await,
        (StatusCode::OK, "ready\n".to_string())
    );
    assert_eq!(admin_get(&gw, "/healthz").await.0, StatusCode::OK);

    drop(s3); // the server stops; its port closes
    let body = support::eventually(
        "readyz turns 503",
        50,
        Duration::from_millis(100),
        || async {
            let (status, body) = admin_get(&gw, "/readyz").await;
            (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
        },
    )
    .await;
    assert_eq!(body, "not ready: store\n");
    assert_no_source_details(&body, &[&endpoint], &["ready-bucket"]);
    assert_eq!(
        admin_get(&gw, "/healthz").await,
        (StatusCode::OK, "ok\n".to_string()),
        "liveness does not depend on the stores"
    );
}

#[tokio::test]
async fn readyz_is_503_naming_only_the_s3_source_whose_store_refuses_connections() {
    let s3 = S3sFs::start(READY_ACCESS_KEY, READY_SECRET_KEY).await;
    s3.create_bucket("up-bucket").await;
    let closed = Origin::start(Mode::Refuse).await;
    let down = support::s3::source(
        &closed.endpoint,
        "down-bucket",
        "",
        READY_ACCESS_KEY,
        READY_SECRET_KEY,
    );
    let sources = BTreeMap::from([
        (
            "up".to_string(),
            SourceConfig::S3(s3.source("up-bucket", "")),
        ),
        ("down".to_string(), SourceConfig::S3(down)),
    ]);
    let gw = support::GatewayBuilder::new()
        .sources(sources)
        .limits(fault_limits())
        .start()
        .await;

    let (status, body) = admin_get(&gw, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "not ready: down\n");
    assert_no_source_details(&body, &[&s3.endpoint, &closed.endpoint], &["down-bucket"]);
    assert_eq!(admin_get(&gw, "/healthz").await.0, StatusCode::OK);
    // The reachable source still serves (a 404 from the store itself, not a 502).
    let resp = gw
        .client()
        .get(gw.url("/o/up/none.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

// --- response hygiene -----------------------------------------------------------------------

/// No upstream cookie, `x-amz-*` header or S3 server banner in a gateway response.
fn assert_no_upstream_headers(headers: &http::HeaderMap, what: &str) {
    assert!(headers.get("set-cookie").is_none(), "{what}: Set-Cookie");
    for (name, value) in headers {
        assert!(
            !name.as_str().starts_with("x-amz"),
            "{what}: upstream header {name}"
        );
        assert!(
            !value.to_str().unwrap_or_default().contains("AmazonS3"),
            "{what}: {name}: {value:?}"
        );
    }
}

/// GET `path` from the origin directly (plain HTTP): what the gateway receives.
async fn origin_get(origin: &Origin, path: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}{path}", origin.endpoint))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn origin_cookies_amz_headers_and_server_banner_never_reach_the_client() {
    let origin = Origin::start(Mode::LeakyHeaders).await;
    // The origin really sends them.
    let direct = origin_get(&origin, "/bucket/photo.png").await;
    assert_eq!(direct.headers()["set-cookie"], "x=y");
    assert_eq!(direct.headers()["x-amz-meta-secret"], "s");
    assert_eq!(direct.headers()["server"], "AmazonS3");
    assert!(direct.headers().contains_key("x-amz-request-id"));

    let sources = BTreeMap::from([("leaky".to_string(), origin_source(&origin, "bucket"))]);
    let gw = support::GatewayBuilder::new()
        .sources(sources)
        .limits(fault_limits())
        .start()
        .await;
    let data = origin::object_bytes();
    for proto in Proto::BOTH {
        let client = gw.client_for(proto);
        let what = format!("{proto:?} GET");
        let resp = client
            .get(gw.url("/o/leaky/photo.png"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{what}");
        assert_no_upstream_headers(resp.headers(), &what);
        assert!(resp.bytes().await.unwrap() == data, "{what}: body");

        let what = format!("{proto:?} range GET");
        let resp = client
            .get(gw.url("/o/leaky/photo.png"))
            .header("range", "bytes=10-19")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{what}");
        assert_no_upstream_headers(resp.headers(), &what);
        assert!(resp.bytes().await.unwrap() == data[10..20], "{what}: body");

        let what = format!("{proto:?} HEAD");
        let resp = client
            .head(gw.url("/o/leaky/photo.png"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{what}");
        assert_no_upstream_headers(resp.headers(), &what);
    }
}

#[tokio::test]
async fn s3_xml_error_answers_become_the_gateways_own_json() {
    // (origin status, gateway status, gateway message, upstream_errors kind)
    let cases = [
        (403, StatusCode::FORBIDDEN, "forbidden", "access_denied"),
        (
            500,
            StatusCode::BAD_GATEWAY,
            "storage backend failed",
            "unreachable",
        ),
    ];
    for (origin_status, status, message, kind) in cases {
        let origin = Origin::start(Mode::ErrorXml(origin_status)).await;
        let path = format!("/{}/photo.png", origin::ERROR_SECRET);
        // The origin really sends an XML error naming the bucket, with cookies and x-amz-*.
        let direct = origin_get(&origin, &path).await;
        assert_eq!(direct.status().as_u16(), origin_status);
        assert!(direct.headers().contains_key("set-cookie"));
        let xml = direct.text().await.unwrap();
        assert!(
            xml.contains("<Error>") && xml.contains(origin::ERROR_SECRET),
            "{xml}"
        );

        let sources = BTreeMap::from([(
            "store".to_string(),
            origin_source(&origin, origin::ERROR_SECRET),
        )]);
        let gw = support::GatewayBuilder::new()
            .sources(sources)
            .limits(fault_limits())
            .start()
            .await;
        for proto in Proto::BOTH {
            let what = format!("{proto:?} origin {origin_status}");
            let resp = gw
                .client_for(proto)
                .get(gw.url("/o/store/photo.png"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), status, "{what}");
            assert_no_upstream_headers(resp.headers(), &what);
            assert_eq!(resp.headers()["content-type"], "application/json", "{what}");
            let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
            let body = resp.text().await.unwrap();
            assert_eq!(
                body,
                format!("{{\"error\":\"{message}\",\"request_id\":\"{id}\"}}\n"),
                "{what}"
            );
            for leak in [
                "<Error",
                "<?xml",
                origin::ERROR_SECRET,
                "AccessDenied",
                "InternalError",
                "origin-test",
                "arn:aws",
            ] {
                assert!(!body.contains(leak), "{what}: {leak:?} in {body}");
            }
        }
        let m = Scrape::take(&gw).await;
        assert_eq!(
            m.upstream_errors(),
            BTreeMap::from([(("store".into(), kind.into()), 2.0)]),
            "origin {origin_status}"
        );
    }
}

// --- dependency tree ------------------------------------------------------------------------

#[derive(serde::Deserialize)]
struct Lockfile {
    package: Vec<LockedPackage>,
}

#[derive(serde::Deserialize)]
struct LockedPackage {
    name: String,
    version: String,
}

#[test]
fn lockfile_has_one_hyper_h2_http_rustls_and_no_openssl_or_aws_lc() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock");
    let text = std::fs::read_to_string(&path).unwrap();
    let lock: Lockfile = toml::from_str(&text).unwrap();
    assert!(lock.package.len() > 100, "a real lockfile");
    let versions = |name: &str| -> Vec<&str> {
        lock.package
            .iter()
            .filter(|p| p.name == name)
            .map(|p| p.version.as_str())
            .collect()
    };
    for (name, major) in [
        ("hyper", "1."),
        ("h2", "0.4."),
        ("http", "1."),
        ("rustls", "0.23."),
    ] {
        let found = versions(name);
        assert!(
            found.len() == 1 && found[0].starts_with(major),
            "{name}: expected one {major}x, Cargo.lock has {found:?}"
        );
    }
    for name in [
        "openssl",
        "openssl-sys",
        "native-tls",
        "aws-lc-sys",
        "aws-lc-rs",
    ] {
        assert!(
            versions(name).is_empty(),
            "{name} in Cargo.lock: {:?}",
            versions(name)
        );
    }
}
