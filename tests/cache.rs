//! The cache through the real gateway, against real origins on loopback: a counting S3-like
//! origin (`support::origin::CountingOrigin`, which logs every request's Range and can hold or
//! break a GET part-way) and s3s-fs behind a counting proxy (SigV4 checked).
//!
//! What is asserted is what the issue promises: one origin fetch per chunk however many clients
//! ask at once (h1 and h2), only the missing chunks fetched for a Range, byte-exact answers cold
//! and warm, a hit never served where a miss would be refused, a broken fill never stored nor
//! passed off as complete, a damaged disk entry never served, the old version served whole
//! during the metadata window and the new one after it. No fixed sleeps: waits poll with a
//! deadline or wait for the origin to say it has sent something.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bucketgate::config::{
    CacheConfig, DiskCacheConfig, DiskEncryption, Limits, ProjectConfig, RoleConfig, Secret,
    SourceConfig, SourceLists,
};
use bucketgate::scope::Scope;

use crate::support::origin::{CountingOrigin, CountingProxy, Logged, Then};

/// The cache core's own smoke tests (audit labels, bypass, a dying origin), kept verbatim.
mod smoke;
use crate::support::{self, GatewayBuilder, Proto, TestGateway, pattern_bytes};

/// The chunk size every test uses (the smallest allowed).
pub const CHUNK: u64 = 256 * 1024;
const ADMIN_TOKEN: &str = "cache-admin-token-0123456789";

/// `[cache]` with a memory tier of `bytes`, [`CHUNK`]-sized chunks, a 60 s metadata window.
pub fn memory_cache(bytes: u64) -> CacheConfig {
    CacheConfig {
        memory_bytes: bytes,
        chunk_bytes: CHUNK,
        metadata_ttl: Duration::from_secs(60),
        disk: None,
        bypass: BTreeSet::new(),
    }
}

/// `[cache]` with a small memory tier and an encrypted disk tier in `dir`.
fn disk_cache(dir: &Path, key_id: &str, key: [u8; 32], disk_bytes: u64) -> CacheConfig {
    CacheConfig {
        disk: Some(DiskCacheConfig {
            dir: dir.to_path_buf(),
            max_bytes: disk_bytes,
            encryption: DiskEncryption::Aes256Gcm {
                key_id: key_id.to_owned(),
                key,
            },
        }),
        ..memory_cache(1 << 20)
    }
}

/// An S3 source on the counting origin (it takes any credentials).
fn origin_source(endpoint: &str) -> SourceConfig {
    SourceConfig::S3(support::s3::source(endpoint, "bucket", "", "test", "test"))
}

/// A gateway with source `o` on `endpoint`, `cache`, the admin token, and room for 1,000
/// concurrent requests (h2: 256 streams per connection).
fn builder(endpoint: &str, cache: CacheConfig) -> GatewayBuilder {
    GatewayBuilder::new()
        .source("o", origin_source(endpoint))
        .limits(Limits {
            h2_max_concurrent_streams: 256,
            // A test may hold an origin GET part-way for as long as its clients take to arrive.
            upstream_first_byte_timeout: Duration::from_secs(60),
            upstream_idle_timeout: Duration::from_secs(60),
            // 1,000 TLS handshakes at once on a busy CI machine take longer than the usual 5 s.
            tls_handshake_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(60),
            ..support::test_limits()
        })
        .tweak(move |c| {
            c.cache = Some(cache);
            c.admin.token = Some(Secret::new(ADMIN_TOKEN.to_owned()));
        })
}

/// The chunks an inclusive span covers.
fn chunks_of(start: u64, end: u64) -> BTreeSet<u64> {
    (start / CHUNK..=end / CHUNK).collect()
}

/// Every GET in `gets` asked for whole, aligned chunks of an object of `size` bytes, no chunk
/// twice; returns the chunks fetched.
fn fetched_chunks(gets: &[Logged], size: u64) -> BTreeSet<u64> {
    let mut seen = BTreeSet::new();
    for get in gets {
        let (start, end) = get
            .span(size)
            .unwrap_or_else(|| panic!("origin GET with an unusable range: {get:?}"));
        assert_eq!(start % CHUNK, 0, "GET not chunk-aligned: {get:?}");
        assert!(
            (end + 1) % CHUNK == 0 || end == size - 1,
            "GET does not end on a chunk boundary or the object's end: {get:?}"
        );
        for chunk in chunks_of(start, end) {
            assert!(seen.insert(chunk), "chunk {chunk} fetched twice: {gets:#?}");
        }
    }
    seen
}

/// GETs that transferred bytes (200/206), not 304/412 revalidations.
fn fetches(origin: &CountingOrigin, key: &str) -> Vec<Logged> {
    origin
        .gets_of(key)
        .into_iter()
        .filter(|l| l.status == 200 || l.status == 206)
        .collect()
}

struct Answer {
    status: u16,
    /// `Err`: the body broke off.
    body: Result<Vec<u8>, String>,
}

async fn get(client: &reqwest::Client, url: &str, range: Option<&str>) -> Answer {
    let mut req = client.get(url);
    if let Some(range) = range {
        req = req.header("range", range);
    }
    let resp = req.send().await.expect("response head");
    let status = resp.status().as_u16();
    let body = resp
        .bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| format!("{e:?}"));
    Answer { status, body }
}

/// GET whole, expecting 200 and exactly `want`.
async fn get_exact(client: &reqwest::Client, url: &str, want: &[u8], what: &str) {
    let a = get(client, url, None).await;
    assert_eq!(a.status, 200, "{what}");
    let body = a
        .body
        .unwrap_or_else(|e| panic!("{what}: body broke off: {e}"));
    assert!(
        body == want,
        "{what}: {} bytes, not the object's {}",
        body.len(),
        want.len()
    );
}

async fn admin_stats(gw: &TestGateway) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .get(gw.admin_url("/admin/cache"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    serde_json::from_str(&resp.text().await.unwrap()).unwrap()
}

// ---- one origin fetch per chunk ----

/// 1,000 concurrent cold requests for one two-chunk object (most of them a range across the
/// chunk boundary, every 100th the whole object): the first origin GET is held part-way until
/// the whole-object requests stream, so the others arrive while it is in flight; then every
/// chunk was fetched exactly once and every answer is byte-exact.
async fn thousand_cold_requests(proto: Proto) {
    let origin = CountingOrigin::start().await;
    let size = CHUNK + 4096;
    let object = Arc::new(pattern_bytes(size as usize, 11));
    origin.put("big.bin", &object);
    let gw = builder(&origin.endpoint, memory_cache(64 << 20))
        .start()
        .await;
    let held = origin.hold_next_get(1024, Then::Continue);
    // h1: one connection per request; h2: many streams over 8 connections.
    let clients: Vec<reqwest::Client> = match proto {
        Proto::H1 => vec![gw.h1_client()],
        Proto::H2 => (0..8).map(|_| gw.h2_client()).collect(),
    };
    let url = gw.url("/o/o/big.bin");
    let whole_heads = Arc::new(AtomicUsize::new(0));
    let (lo, hi) = (CHUNK - 2048, CHUNK + 2047);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000usize {
        let client = clients[i % clients.len()].clone();
        let (url, object, whole_heads) =
            (url.clone(), Arc::clone(&object), Arc::clone(&whole_heads));
        tasks.spawn(async move {
            let whole = i % 100 == 0;
            let mut req = client.get(&url);
            if !whole {
                req = req.header("range", format!("bytes={lo}-{hi}"));
            }
            let resp = req.send().await.expect("response head");
            let status = resp.status().as_u16();
            if whole {
                whole_heads.fetch_add(1, Ordering::SeqCst);
            }
            let version = resp.version();
            let body = resp.bytes().await.expect("whole body");
            if whole {
                assert_eq!(status, 200, "request {i}");
                assert!(body[..] == object[..], "request {i}: whole object differs");
            } else {
                assert_eq!(status, 206, "request {i}");
                assert!(
                    body[..] == object[lo as usize..=hi as usize],
                    "request {i}: range differs"
                );
            }
            version
        });
    }
    // Release the held GET once the whole-object requests stream (or after a deadline: a cache
    // that sends nothing before its fill completes must still finish the test).
    let deadline = Instant::now() + Duration::from_secs(20);
    tokio::time::timeout(Duration::from_secs(20), held.sent())
        .await
        .expect("the origin got a GET");
    while whole_heads.load(Ordering::SeqCst) < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    held.release();
    let want = match proto {
        Proto::H1 => http::Version::HTTP_11,
        Proto::H2 => http::Version::HTTP_2,
    };
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.expect("request task"), want);
    }
    let gets = origin.gets_of("big.bin");
    assert_eq!(
        fetched_chunks(&gets, size),
        BTreeSet::from([0, 1]),
        "each chunk exactly once: {gets:#?}"
    );
    assert!(gets.len() <= 2, "{gets:#?}");
    let heads = origin.log().iter().filter(|l| l.method == "HEAD").count();
    assert!(heads <= 1, "{heads} HEADs for one cold object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_cold_h1_requests_make_one_origin_get_per_chunk() {
    thousand_cold_requests(Proto::H1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_cold_h2_requests_make_one_origin_get_per_chunk() {
    thousand_cold_requests(Proto::H2).await;
}

/// The same against s3s-fs (SigV4 checked) through a proxy that logs each GET's Range: 1,000
/// concurrent cold h2 requests (4 connections) for a three-chunk object, byte-exact, each chunk
/// fetched once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cold_requests_to_s3s_fs_fetch_each_chunk_once() {
    let store = support::s3::S3sFs::start("cache-key", "cache-secret-0123456789").await;
    store.create_bucket("bucket").await;
    let size = 2 * CHUNK + 777;
    let object = Arc::new(pattern_bytes(size as usize, 12));
    store.put("bucket", "media/clip.bin", &object, None).await;
    let proxy = CountingProxy::start(&store.endpoint).await;
    let mut source = store.source("bucket", "media/");
    source.endpoint = Some(proxy.endpoint.clone());
    let gw = GatewayBuilder::new()
        .source("s3", SourceConfig::S3(source))
        .tweak(|c| c.cache = Some(memory_cache(64 << 20)))
        .start()
        .await;
    let clients: Vec<reqwest::Client> = (0..4).map(|_| gw.h2_client()).collect();
    let url = gw.url("/o/s3/clip.bin");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000usize {
        let (client, url, object) = (clients[i % 4].clone(), url.clone(), Arc::clone(&object));
        tasks.spawn(async move {
            // Every 100th the whole object, the others a range across one chunk boundary.
            let span = match i {
                _ if i % 100 == 0 => None,
                _ if i % 2 == 0 => Some((CHUNK - 1000, CHUNK + 999)),
                _ => Some((2 * CHUNK - 500, 2 * CHUNK + 499)),
            };
            let range = span.map(|(a, b)| format!("bytes={a}-{b}"));
            let a = get(&client, &url, range.as_deref()).await;
            let body = a.body.unwrap();
            match span {
                None => {
                    assert_eq!(a.status, 200, "request {i}");
                    assert!(body == object[..], "request {i}: bytes differ");
                }
                Some((start, end)) => {
                    assert_eq!(a.status, 206, "request {i}");
                    assert!(
                        body[..] == object[start as usize..=end as usize],
                        "request {i}: bytes differ"
                    );
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let gets = proxy.gets_of("media/clip.bin");
    assert_eq!(
        fetched_chunks(&gets, size),
        BTreeSet::from([0, 1, 2]),
        "{gets:#?}"
    );
}

// ---- ranges ----

/// Every kind of Range, cold then warm, byte-exact; each cold one fetches only the chunks not
/// yet cached (from the origin's log), each warm one fetches nothing.
#[tokio::test]
async fn range_matrix_fetches_only_missing_chunks_and_is_byte_exact() {
    let origin = CountingOrigin::start().await;
    let size = 6 * CHUNK + 1000;
    let object = pattern_bytes(size as usize, 13);
    origin.put("video.bin", &object);
    let gw = builder(&origin.endpoint, memory_cache(64 << 20))
        .start()
        .await;
    let client = gw.h1_client();
    let url = gw.url("/o/o/video.bin");
    let c = CHUNK;
    // (what, Range, the span answered: None = 416)
    type Case = (&'static str, String, Option<(u64, u64)>);
    let cases: Vec<Case> = vec![
        ("first chunk", "bytes=0-99".into(), Some((0, 99))),
        (
            "middle chunk",
            format!("bytes={}-{}", 3 * c + 10, 3 * c + 5000),
            Some((3 * c + 10, 3 * c + 5000)),
        ),
        (
            "last chunk",
            format!("bytes={}-{}", 6 * c + 10, 6 * c + 500),
            Some((6 * c + 10, 6 * c + 500)),
        ),
        (
            "spanning chunks",
            format!("bytes={}-{}", c - 100, 3 * c + 100),
            Some((c - 100, 3 * c + 100)),
        ),
        (
            "suffix",
            "bytes=-1300".into(),
            Some((size - 1300, size - 1)),
        ),
        (
            "open-ended",
            format!("bytes={}-", 4 * c + 7),
            Some((4 * c + 7, size - 1)),
        ),
        (
            "past the end",
            format!("bytes={}-{}", 2 * c + 5, size + 5000),
            Some((2 * c + 5, size - 1)),
        ),
        ("unsatisfiable", format!("bytes={size}-"), None),
    ];
    let mut cached = BTreeSet::new();
    for warm in [false, true] {
        for (what, range, span) in &cases {
            let before = origin.gets_of("video.bin").len();
            let a = get(&client, &url, Some(range)).await;
            let what = format!("{what} ({}; {range})", if warm { "warm" } else { "cold" });
            match span {
                Some((start, end)) => {
                    assert_eq!(a.status, 206, "{what}");
                    let body = a.body.unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert!(
                        body[..] == object[*start as usize..=*end as usize],
                        "{what}: bytes differ"
                    );
                }
                None => assert_eq!(a.status, 416, "{what}"),
            }
            let gets = origin.gets_of("video.bin");
            let new = fetched_chunks(&gets[before..], size);
            let wanted: BTreeSet<u64> = match span {
                Some((start, end)) if !warm => chunks_of(*start, *end)
                    .difference(&cached)
                    .copied()
                    .collect(),
                _ => BTreeSet::new(),
            };
            assert_eq!(new, wanted, "{what}: chunks fetched; log {gets:#?}");
            cached.extend(new);
        }
    }
    let before = origin.gets_of("video.bin").len();
    get_exact(&client, &url, &object, "whole, warm").await;
    assert_eq!(origin.gets_of("video.bin").len(), before, "warm: no GET");
}

// ---- access ----

/// An entry cached by the owner is refused to every principal a miss would refuse (scope, role,
/// project, `cip`, the source's network rule), none of which reaches the origin; revoking the
/// owner's token stops its hits at once.
#[tokio::test]
async fn a_hit_is_refused_wherever_a_miss_would_be() {
    let origin = CountingOrigin::start().await;
    let object = pattern_bytes(5000, 14);
    origin.put("private/x.bin", &object);
    let gw = builder(&origin.endpoint, memory_cache(16 << 20))
        .tweak(|c| {
            c.projects.insert(
                "p1".to_owned(),
                ProjectConfig {
                    sources: vec![Scope::parse("o:public/").unwrap()],
                },
            );
            c.roles.insert(
                "thumbs".to_owned(),
                RoleConfig {
                    read_original: false,
                    read_derived: true,
                    rank: None,
                },
            );
            c.network.sources.insert(
                "o".to_owned(),
                SourceLists {
                    allow: None,
                    deny: vec!["127.0.0.3/32".parse().unwrap()],
                },
            );
        })
        .start()
        .await;
    let claims = |extra: serde_json::Value| {
        let mut c = serde_json::json!({
            "sub": "alice",
            "aud": support::TEST_AUDIENCE,
            "iat": support::now(),
            "exp": support::now() + 3600,
            "scope": ["o:"],
            "role": "owner",
            "jti": "owner-token-1",
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        support::mint(&c)
    };
    let url = gw.url("/o/o/private/x.bin");
    let send = |token: String, from: &'static str| {
        let client = gw
            .anon_client_builder()
            .local_address(from.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap();
        let url = url.clone();
        async move {
            client
                .get(&url)
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap()
        }
    };
    let owner = claims(serde_json::json!({}));
    for round in ["miss", "hit"] {
        let resp = send(owner.clone(), "127.0.0.1").await;
        assert_eq!(resp.status(), 200, "{round}");
        assert!(resp.bytes().await.unwrap()[..] == object[..], "{round}");
    }
    assert_eq!(
        fetches(&origin, "private/x.bin").len(),
        1,
        "the second was a hit"
    );
    let requests_before = origin.log().len();
    let refused = [
        (
            "scope elsewhere",
            claims(serde_json::json!({"scope": ["o:public/"]})),
            "127.0.0.1",
        ),
        (
            "role without originals",
            claims(serde_json::json!({"role": "thumbs"})),
            "127.0.0.1",
        ),
        (
            "project elsewhere",
            claims(serde_json::json!({"project": "p1"})),
            "127.0.0.1",
        ),
        (
            "cip elsewhere",
            claims(serde_json::json!({"cip": "127.0.0.2/32"})),
            "127.0.0.1",
        ),
        ("source network rule", owner.clone(), "127.0.0.3"),
    ];
    for (what, token, from) in refused {
        let resp = send(token, from).await;
        assert_eq!(resp.status(), 403, "{what}");
        let body = resp.bytes().await.unwrap();
        assert!(body.len() < 1000, "{what}: an error body, not the object");
    }
    assert_eq!(
        origin.log().len(),
        requests_before,
        "refusals never reach the origin"
    );

    let resp = reqwest::Client::new()
        .post(gw.admin_url("/admin/revocations"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "application/json")
        .body(r#"{"jti":"owner-token-1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = send(owner, "127.0.0.1").await;
    assert_eq!(resp.status(), 401, "a revoked token gets no hit");
}

// ---- faults ----

/// The origin breaks off mid-chunk while 20 requests wait on that fill: none of them gets a
/// complete answer, nothing is stored, and the next request fetches again, byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_origin_that_dies_mid_chunk_fails_every_waiter_and_stores_nothing() {
    let origin = CountingOrigin::start().await;
    let size = 2 * CHUNK;
    let object = Arc::new(pattern_bytes(size as usize, 15));
    origin.put("clip.bin", &object);
    let gw = builder(&origin.endpoint, memory_cache(16 << 20))
        .start()
        .await;
    let held = origin.hold_next_get(10_000, Then::Reset);
    let client = gw.h2_client();
    let url = gw.url("/o/o/clip.bin");
    let heads = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (client, url, object, heads) = (
            client.clone(),
            url.clone(),
            Arc::clone(&object),
            Arc::clone(&heads),
        );
        tasks.spawn(async move {
            let resp = client.get(&url).send().await.expect("response head");
            heads.fetch_add(1, Ordering::SeqCst);
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Ok(body) if status == 200 && body[..] == object[..] => "complete",
                Ok(_) if status == 200 => "short but finished",
                Ok(_) => "error status",
                Err(_) => "aborted",
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(20), held.sent())
        .await
        .expect("the origin got a GET");
    let deadline = Instant::now() + Duration::from_secs(20);
    while heads.load(Ordering::SeqCst) < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let attached = heads.load(Ordering::SeqCst);
    held.release();
    let mut outcomes = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        *outcomes.entry(done.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        attached, 20,
        "every waiter had its answer's head while the fill ran"
    );
    assert_eq!(outcomes.get("complete"), None, "{outcomes:?}");
    assert_eq!(outcomes.get("short but finished"), None, "{outcomes:?}");
    assert_eq!(outcomes.get("aborted"), Some(&20), "{outcomes:?}");
    let broken = origin.gets_of("clip.bin").len();
    get_exact(&client, &url, &object, "after the failed fill").await;
    assert!(
        origin.gets_of("clip.bin").len() > broken,
        "the failed chunk was fetched again"
    );
}

/// A disk budget smaller than one entry, and a disk directory replaced by a regular file while
/// running: every answer is still 200 and byte-exact.
#[tokio::test]
async fn a_disk_that_cannot_take_entries_never_fails_a_request() {
    let origin = CountingOrigin::start().await;
    let a = pattern_bytes((CHUNK + 100) as usize, 16);
    let b = pattern_bytes(7000, 17);
    origin.put("a.bin", &a);
    origin.put("b.bin", &b);

    let small = tempfile::tempdir().unwrap();
    let gw = builder(
        &origin.endpoint,
        disk_cache(small.path(), "k1", [1; 32], 1000),
    )
    .start()
    .await;
    let client = gw.h1_client();
    for round in 0..3 {
        get_exact(
            &client,
            &gw.url("/o/o/a.bin"),
            &a,
            &format!("tiny budget, round {round}"),
        )
        .await;
    }
    let stats = admin_stats(&gw).await;
    assert!(stats["disk_bytes"].as_u64().unwrap() <= 1000, "{stats}");
    gw.shutdown().await;

    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cache");
    std::fs::create_dir(&dir).unwrap();
    let gw = builder(&origin.endpoint, disk_cache(&dir, "k1", [1; 32], 64 << 20))
        .start()
        .await;
    let client = gw.h1_client();
    get_exact(&client, &gw.url("/o/o/a.bin"), &a, "disk working").await;
    std::fs::rename(&dir, root.path().join("moved")).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    for round in 0..3 {
        get_exact(
            &client,
            &gw.url("/o/o/b.bin"),
            &b,
            &format!("disk gone, round {round}"),
        )
        .await;
        get_exact(
            &client,
            &gw.url("/o/o/a.bin"),
            &a,
            &format!("disk gone, round {round}"),
        )
        .await;
    }
    // The failed writes put the disk tier in degraded mode, which the stats say.
    support::eventually("disk degraded", 500, Duration::from_millis(20), || async {
        admin_stats(&gw).await["disk_degraded"]
            .as_bool()
            .unwrap()
            .then_some(())
    })
    .await;
}

// ---- revalidation ----

/// With a 1 s metadata window: the object overwritten at the origin is served old and whole
/// while the window lasts (checked only while it measurably does), then new and whole; never a
/// mix, and never the old one again once the new one was served. A three-chunk object of which
/// only the first chunk was cached, read whole after the overwrite, is one version whole too.
#[tokio::test]
async fn after_the_metadata_window_the_new_version_is_served_never_a_mix() {
    let origin = CountingOrigin::start().await;
    let old = pattern_bytes((3 * CHUNK) as usize, 18);
    let new = pattern_bytes((3 * CHUNK) as usize, 19);
    origin.put("doc.bin", &old);
    origin.put("part.bin", &old);
    let cache = CacheConfig {
        metadata_ttl: Duration::from_secs(1),
        ..memory_cache(64 << 20)
    };
    let gw = builder(&origin.endpoint, cache).start().await;
    let client = gw.h1_client();
    let url = gw.url("/o/o/doc.bin");
    let filled = Instant::now();
    get_exact(&client, &url, &old, "first read").await;
    let a = get(&client, &gw.url("/o/o/part.bin"), Some("bytes=0-99")).await;
    assert_eq!(a.status, 206);
    origin.put("doc.bin", &new);
    origin.put("part.bin", &new);

    let sent = Instant::now();
    let a = get(&client, &url, None).await;
    let body = a.body.unwrap();
    assert_eq!(a.status, 200);
    if sent.duration_since(filled) < Duration::from_millis(900) {
        assert!(body == old, "within the window: the old version whole");
    } else {
        assert!(body == old || body == new, "one version whole");
    }

    // The old version cannot be served whole any more (the origin no longer has its other
    // chunks): the answer is one version whole or a response cut off, never a mix finished as
    // if complete; and the change it met is not met again: the retry is the new version whole.
    let a = get(&client, &gw.url("/o/o/part.bin"), None).await;
    assert_eq!(
        a.status, 200,
        "a partly cached old version read after the overwrite"
    );
    if let Ok(body) = a.body {
        assert!(body == old || body == new, "one version whole, never a mix");
    }
    get_exact(&client, &gw.url("/o/o/part.bin"), &new, "the retry").await;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = get(&client, &url, None).await;
        assert_eq!(a.status, 200);
        let body = a.body.unwrap();
        if body == new {
            break;
        }
        assert!(body == old, "never a mix of versions");
        assert!(Instant::now() < deadline, "the new version never came");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        get_exact(&client, &url, &new, "after the new version").await;
    }
    let ranged = get(&client, &url, Some("bytes=100-200")).await;
    assert!(ranged.body.unwrap()[..] == new[100..=200]);
}

// ---- integrity of the disk tier ----

/// Every regular file below `dir`, sorted.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let kind = e.file_type().unwrap();
            if kind.is_dir() {
                dirs.push(e.path());
            } else if kind.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Wait until the disk tier holds at least `entries` entries (it may write after answering).
async fn disk_holds(gw: &TestGateway, entries: u64) {
    support::eventually(
        "disk entries written",
        500,
        Duration::from_millis(20),
        || async {
            let stats = admin_stats(gw).await;
            (stats["disk_entries"].as_u64().unwrap_or(0) >= entries).then_some(())
        },
    )
    .await;
}

/// How a test damages the disk entries of a stopped gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    /// None: the control, whose entry must be served from disk.
    Intact,
    FlipByte,
    Truncate,
    /// Copy another entry's file over the entry's name.
    SwapNames,
    /// Restart with another key (and key id).
    RotateKey,
}

/// GETs of `key` that transferred the chunk starting at `start`.
fn chunk_fetches(origin: &CountingOrigin, key: &str, size: u64, start: u64) -> usize {
    fetches(origin, key)
        .iter()
        .filter(|g| g.span(size).is_some_and(|s| s.0 == start))
        .count()
}

/// Fill the disk with a one-chunk object and the two chunks of another, one at a time, so the
/// files of the second chunk are known; stop the gateway; damage those files as `damage` says;
/// restart on the same directory. The object reads byte-exact, and its second chunk was
/// fetched from the origin again exactly when it was damaged (a cold restart may refetch the
/// first chunk to learn the object's version, so the second is the one that tells).
async fn damaged_disk_entry_is_refetched(damage: Damage) {
    let origin = CountingOrigin::start().await;
    let first = pattern_bytes(9000, 20);
    let size = CHUNK + 9000;
    let second = pattern_bytes(size as usize, 21);
    origin.put("first.bin", &first);
    origin.put("second.bin", &second);
    let dir = tempfile::tempdir().unwrap();
    let config = |key_id: &str, key: [u8; 32]| disk_cache(dir.path(), key_id, key, 64 << 20);

    let gw = builder(&origin.endpoint, config("k1", [1; 32]))
        .start()
        .await;
    let client = gw.h1_client();
    let url = gw.url("/o/o/second.bin");
    get_exact(&client, &gw.url("/o/o/first.bin"), &first, "fill first").await;
    disk_holds(&gw, 1).await;
    let first_files = files_below(dir.path());
    let a = get(&client, &url, Some("bytes=0-99")).await;
    assert_eq!(a.status, 206);
    disk_holds(&gw, 2).await;
    let before_chunk1 = files_below(dir.path());
    let a = get(
        &client,
        &url,
        Some(&format!("bytes={CHUNK}-{}", CHUNK + 99)),
    )
    .await;
    assert_eq!(a.status, 206);
    assert!(a.body.unwrap()[..] == second[CHUNK as usize..CHUNK as usize + 100]);
    disk_holds(&gw, 3).await;
    gw.shutdown().await;
    let chunk1_files: Vec<PathBuf> = files_below(dir.path())
        .into_iter()
        .filter(|f| !before_chunk1.contains(f))
        .collect();
    assert!(!chunk1_files.is_empty(), "the chunk has a file of its own");
    for p in &chunk1_files {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.contains("second") && !name.contains("bin"),
            "entry file names are hashes: {name}"
        );
    }
    let entry_files: Vec<&PathBuf> = first_files
        .iter()
        .filter(|f| std::fs::metadata(f).unwrap().len() > 1000)
        .collect();

    let mut key = ("k1", [1u8; 32]);
    match damage {
        Damage::Intact => {}
        Damage::FlipByte => {
            for f in &chunk1_files {
                let mut bytes = std::fs::read(f).unwrap();
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x01;
                std::fs::write(f, bytes).unwrap();
            }
        }
        Damage::Truncate => {
            for f in &chunk1_files {
                let len = std::fs::metadata(f).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(f)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            }
        }
        Damage::SwapNames => {
            assert!(!entry_files.is_empty(), "the first object's entry file");
            for f in &chunk1_files {
                std::fs::copy(entry_files[0], f).unwrap();
            }
        }
        Damage::RotateKey => key = ("k2", [2u8; 32]),
    }

    let before = chunk_fetches(&origin, "second.bin", size, CHUNK);
    let gw = builder(&origin.endpoint, config(key.0, key.1))
        .start()
        .await;
    let client = gw.h1_client();
    let url = gw.url("/o/o/second.bin");
    for round in 0..2 {
        get_exact(
            &client,
            &url,
            &second,
            &format!("{damage:?}, round {round}"),
        )
        .await;
    }
    let refetched = chunk_fetches(&origin, "second.bin", size, CHUNK) - before;
    if damage == Damage::Intact {
        assert_eq!(refetched, 0, "an intact entry is served from disk");
    } else {
        assert_eq!(
            refetched, 1,
            "{damage:?}: the damaged entry was a miss that refetched, once"
        );
    }
}

#[tokio::test]
async fn an_intact_disk_chunk_is_served_from_disk_after_a_restart() {
    damaged_disk_entry_is_refetched(Damage::Intact).await;
}

#[tokio::test]
async fn a_flipped_byte_on_disk_is_a_miss_that_refetches() {
    damaged_disk_entry_is_refetched(Damage::FlipByte).await;
}

#[tokio::test]
async fn a_truncated_disk_file_is_a_miss_that_refetches() {
    damaged_disk_entry_is_refetched(Damage::Truncate).await;
}

#[tokio::test]
async fn a_disk_file_copied_over_another_entry_is_a_miss_that_refetches() {
    damaged_disk_entry_is_refetched(Damage::SwapNames).await;
}

#[tokio::test]
async fn a_rotated_key_makes_old_disk_entries_misses_that_refetch() {
    damaged_disk_entry_is_refetched(Damage::RotateKey).await;
}

/// An intact one-chunk entry survives a restart: served from disk without fetching its bytes
/// from the origin again (a revalidation may ask for the version, not for the body), and its
/// file never holds the object's bytes in the clear.
#[tokio::test]
async fn a_restart_serves_a_small_disk_entry_without_refetching_its_bytes() {
    let origin = CountingOrigin::start().await;
    let object = pattern_bytes(9000, 22);
    origin.put("keep.bin", &object);
    let dir = tempfile::tempdir().unwrap();
    let gw = builder(
        &origin.endpoint,
        disk_cache(dir.path(), "k1", [1; 32], 64 << 20),
    )
    .start()
    .await;
    get_exact(&gw.h1_client(), &gw.url("/o/o/keep.bin"), &object, "fill").await;
    disk_holds(&gw, 1).await;
    gw.shutdown().await;
    for f in files_below(dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(64).any(|w| w == &object[1000..1064]),
            "{}: the object's bytes in the clear",
            f.display()
        );
    }
    let gw = builder(
        &origin.endpoint,
        disk_cache(dir.path(), "k1", [1; 32], 64 << 20),
    )
    .start()
    .await;
    get_exact(
        &gw.h1_client(),
        &gw.url("/o/o/keep.bin"),
        &object,
        "after restart",
    )
    .await;
    assert_eq!(fetches(&origin, "keep.bin").len(), 1, "served from disk");
}

// ---- kill -9 mid-fill ----

const BIN: &str = env!("CARGO_BIN_EXE_bucketgate");
const CACHE_KEY_HEX: &str = "0101010101010101010101010101010101010101010101010101010101010101";

/// `bucketgate serve` in `root` (config.toml there), with JSON logs; returns the guard and its
/// data and admin addresses from the startup line.
fn serve_child(
    root: &Path,
) -> (
    support::process::ChildGuard,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let mut command = std::process::Command::new(BIN);
    command
        .current_dir(root)
        .args(["--log-format", "json", "serve", "--config", "config.toml"])
        .env_remove("RUST_LOG")
        .env("CADMIN_CACHE_KEY", CACHE_KEY_HEX)
        .env("CADMIN_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut guard = support::process::ChildGuard::spawn("bucketgate serve", &mut command);
    let stderr = guard.child().stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("\"bucketgate serving\"") => break line,
            Ok(line) => seen.push(line),
            Err(e) => panic!("no startup line ({e}):\n{}", seen.join("\n")),
        }
    };
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr = |field: &str| event[field].as_str().unwrap().parse().unwrap();
    (guard, addr("data_addr"), addr("admin_addr"))
}

/// The gateway binary is killed with SIGKILL while a chunk fill is half-way (its first chunk
/// already on disk); restarted on the same disk directory, it answers the object byte-exact,
/// fetching the half-filled chunk again: nothing partial was kept or served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_fill_leaves_no_entry_a_restart_serves() {
    let origin = CountingOrigin::start().await;
    let size = CHUNK + 50_000;
    let object = pattern_bytes(size as usize, 23);
    origin.put("clip.bin", &object);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("hs256.key"), support::TEST_SECRET).unwrap();
    std::fs::write(
        root.join("config.toml"),
        format!(
            "[listener]\naddr = \"127.0.0.1:0\"\ndev_certificate_dir = \"tls\"\n\
             [admin]\naddr = \"127.0.0.1:0\"\ntoken = \"env:CADMIN_ADMIN_TOKEN\"\n\
             [network]\nallow = [\"127.0.0.0/8\"]\n\
             [sources.o]\nkind = \"s3\"\nbucket = \"bucket\"\nendpoint = \"{}\"\n\
             path_style = true\n\
             credentials = {{ access_key_id = \"test\", secret_access_key = \"env:CADMIN_ADMIN_TOKEN\" }}\n\
             [identity]\naudience = \"{}\"\n\
             [[identity.keys]]\nkid = \"{}\"\nalg = \"HS256\"\nsecret = \"file:hs256.key\"\n\
             [cache]\nmemory_bytes = 4194304\nchunk_bytes = {CHUNK}\nmetadata_ttl_secs = 60\n\
             disk_dir = \"cache\"\ndisk_bytes = 67108864\nkey = \"env:CADMIN_CACHE_KEY\"\n\
             key_id = \"k1\"\n",
            origin.endpoint,
            support::TEST_AUDIENCE,
            support::TEST_KID,
        ),
    )
    .unwrap();
    let token = support::token_for_sources([&"o".to_owned()]);
    let held = origin.hold_get_at(CHUNK, 10_000, Then::Hang);

    let (mut gw, data, admin) = serve_child(root);
    let pem = std::fs::read(root.join("tls/cert.pem")).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = format!("https://{data}/o/o/clip.bin");
    let pending = {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        tokio::spawn(async move {
            let resp = client.get(&url).bearer_auth(&token).send().await?;
            resp.bytes().await
        })
    };
    tokio::time::timeout(Duration::from_secs(30), held.sent())
        .await
        .expect("the second chunk's GET reached the origin");
    // The first chunk is on disk before the kill.
    support::eventually(
        "chunk 0 on disk",
        500,
        Duration::from_millis(20),
        || async {
            let stats: serde_json::Value = reqwest::Client::new()
                .get(format!("http://{admin}/admin/cache"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .ok()?
                .json_value()
                .await;
            (stats["disk_entries"].as_u64()? >= 1).then_some(())
        },
    )
    .await;
    gw.child().kill().unwrap();
    gw.child().wait().unwrap();
    let cut = pending.await.unwrap();
    assert!(
        cut.as_ref().map_or(true, |b| b.len() < object.len()),
        "the request in flight did not complete"
    );

    let before_chunk1 = fetches(&origin, "clip.bin")
        .iter()
        .filter(|g| g.span(size).unwrap().0 == CHUNK)
        .count();
    let (_gw, data, _) = serve_child(root);
    let url = format!("https://{data}/o/o/clip.bin");
    for round in 0..2 {
        let resp = client.get(&url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 200, "round {round}");
        let body = resp.bytes().await.unwrap();
        assert!(body[..] == object[..], "round {round}: bytes differ");
    }
    let after_chunk1 = fetches(&origin, "clip.bin")
        .iter()
        .filter(|g| g.span(size).unwrap().0 == CHUNK)
        .count();
    assert_eq!(
        after_chunk1,
        before_chunk1 + 1,
        "the half-filled chunk was fetched again, once"
    );
}

/// A reqwest response body as JSON (reqwest's `json` feature is off).
trait JsonValue {
    async fn json_value(self) -> serde_json::Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> serde_json::Value {
        serde_json::from_str(&self.text().await.unwrap_or_default()).unwrap_or_default()
    }
}
