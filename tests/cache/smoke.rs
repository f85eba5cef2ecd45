//! The cache through the running gateway (issue 12). The core's smoke tests; the big matrix
//! (1000 concurrent cold requests, ranges, access, faults, revalidation) lives beside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bucketgate::config::{AuditDestination, CacheConfig, Config, SourceConfig};
use http::StatusCode;
use serde_json::Value;

use crate::support::origin::{Mode, Origin, object_bytes};
use crate::support::{self, GatewayBuilder};

fn cache_config(bypass: &[&str]) -> CacheConfig {
    CacheConfig {
        memory_bytes: 16 * 1024 * 1024,
        chunk_bytes: 1024 * 1024,
        metadata_ttl: Duration::from_secs(600),
        disk: None,
        bypass: bypass
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>(),
    }
}

/// A gateway with the S3 source `origin` in front of a counting origin, `[cache]` on, audit to a
/// file; returns the gateway, the origin and the audit file.
async fn cached_gateway(bypass: &[&str]) -> (support::TestGateway, Origin, tempfile::TempDir) {
    cached_gateway_with(Mode::Healthy, bypass).await
}

async fn cached_gateway_with(
    mode: Mode,
    bypass: &[&str],
) -> (support::TestGateway, Origin, tempfile::TempDir) {
    let origin = Origin::start(mode).await;
    let logs = tempfile::tempdir().unwrap();
    let audit_path = logs.path().join("audit.log");
    let cache = cache_config(bypass);
    let sources = BTreeMap::from([(
        "origin".to_owned(),
        SourceConfig::S3(support::s3::source(
            &origin.endpoint,
            "bucket",
            "",
            "AKIDTEST",
            "secret",
        )),
    )]);
    let gw = GatewayBuilder::new()
        .sources(sources)
        .tweak(move |config: &mut Config| {
            config.cache = Some(cache);
            config.audit.destination = AuditDestination::File {
                path: audit_path,
                max_bytes: 10 * 1024 * 1024,
                keep: 1,
            };
        })
        .start()
        .await;
    (gw, origin, logs)
}

/// Shut the gateway down (the audit writer drains) and return its records by request id.
async fn audit_records(
    mut gw: support::TestGateway,
    logs: &tempfile::TempDir,
) -> BTreeMap<String, Value> {
    gw.take_gateway().shutdown().await;
    let text = std::fs::read_to_string(logs.path().join("audit.log")).unwrap();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["request_id"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

async fn get(
    gw: &support::TestGateway,
    client: &reqwest::Client,
    range: Option<&str>,
) -> (StatusCode, Vec<u8>, String) {
    let mut req = client.get(gw.url("/o/origin/photo.png"));
    if let Some(range) = range {
        req = req.header("range", range);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    (status, resp.bytes().await.unwrap().to_vec(), id)
}

#[tokio::test]
async fn cache_warm_hit_makes_no_origin_request_and_is_audited_hit_memory() {
    let (gw, origin, logs) = cached_gateway(&[]).await;
    let object = object_bytes();
    let mut ids = Vec::new();
    for client in [gw.h1_client(), gw.h2_client()] {
        let (status, body, id) = get(&gw, &client, None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body == object, "byte-exact");
        ids.push(id);
    }
    let after_cold = origin.requests();
    assert!(after_cold >= 1, "the cold request reached the origin");
    let (status, body, id) = get(&gw, &gw.h2_client(), Some("bytes=100-199")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, object[100..200]);
    ids.push(id);
    let (status, body, id) = get(&gw, &gw.h1_client(), Some("bytes=-10")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, object[object.len() - 10..]);
    ids.push(id);
    assert_eq!(
        origin.requests(),
        after_cold,
        "warm hits made no origin request"
    );

    let records = audit_records(gw, &logs).await;
    let labels: Vec<&str> = ids
        .iter()
        .map(|id| records[id]["cache"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["miss", "hit-memory", "hit-memory", "hit-memory"]);
}

#[tokio::test]
async fn cache_bypassed_source_reads_the_origin_every_time_and_is_audited_bypass() {
    let (gw, origin, logs) = cached_gateway(&["origin"]).await;
    let client = gw.client();
    let (status, body, first) = get(&gw, &client, None).await;
    assert_eq!((status, body), (StatusCode::OK, object_bytes()));
    let after_first = origin.requests();
    let (status, _, second) = get(&gw, &client, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        origin.requests() > after_first,
        "no cache for a `cache = false` source"
    );
    let records = audit_records(gw, &logs).await;
    assert_eq!(records[&first]["cache"], "bypass");
    assert_eq!(records[&second]["cache"], "bypass");
}

#[tokio::test]
async fn cache_origin_dying_mid_body_fails_every_waiter_cleanly_and_stores_nothing() {
    let (gw, origin, _logs) = cached_gateway_with(Mode::ResetMidBody, &[]).await;
    let clients = [gw.h1_client(), gw.h2_client()];
    let url = gw.url("/o/origin/photo.png");
    let requests = (0..20).map(|i| {
        let client = clients[i % 2].clone();
        let url = url.clone();
        async move {
            match client.get(url).send().await {
                // A clean error answer (the failure came before the head) is fine too.
                Ok(resp) if !resp.status().is_success() => Err(resp.status().to_string()),
                Ok(resp) => resp
                    .bytes()
                    .await
                    .map(|b| b.len())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    });
    for result in futures_util::future::join_all(requests).await {
        assert!(
            result.is_err(),
            "a body the origin cut off was finished as complete: {result:?}"
        );
    }
    let cache = gw.gateway().pipeline().shared().cache().unwrap();
    let stats = cache.stats();
    assert_eq!(
        (stats.memory_entries, stats.inflight_fills),
        (0, 0),
        "{stats:?}"
    );
    // The next request goes to the origin again (nothing was stored).
    let before = origin.requests();
    let again = clients[0].get(gw.url("/o/origin/photo.png")).send().await;
    if let Ok(resp) = again
        && resp.status().is_success()
    {
        assert!(resp.bytes().await.is_err());
    }
    assert!(
        origin.requests() > before,
        "a failed fill left nothing to serve"
    );
}
