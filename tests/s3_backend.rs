//! `S3Backend` on its own (no gateway) against real S3 servers: s3s-fs in-process with SigV4
//! checked, moto_server as a child process, and a misbehaving origin for each failure mode.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant, SystemTime};

use crate::support::origin::{self, Mode, Origin};
use crate::support::s3::{Moto, S3sFs};
use bucketgate::backend::s3::S3Backend;
use bucketgate::backend::{Backend, BackendError, ByteRange, Caller, ObjectMeta};
use bucketgate::config::Limits;
use futures_util::StreamExt;

const ACCESS_KEY: &str = "AKIDBUCKETGATETEST";
const SECRET_KEY: &str = "bucketgate-test-secret-0123456789";
const BUCKET: &str = "media";

/// Short limits so the failure modes show within a second or two.
fn short_limits() -> Limits {
    Limits {
        upstream_connect_timeout: Duration::from_millis(500),
        upstream_first_byte_timeout: Duration::from_millis(400),
        upstream_idle_timeout: Duration::from_millis(300),
        upstream_max_retries: 2,
        ..Limits::default()
    }
}

async fn backend(source: &bucketgate::config::S3Source) -> S3Backend {
    S3Backend::new(source, &short_limits())
        .await
        .expect("build S3Backend")
}

/// Read a body to the end; the error, if any, ends it.
async fn collect(backend_body: bucketgate::backend::ObjectBody) -> (Vec<u8>, Option<BackendError>) {
    let mut body = backend_body.body;
    let mut bytes = Vec::new();
    while let Some(frame) = body.next().await {
        match frame {
            Ok(b) => bytes.extend_from_slice(&b),
            Err(e) => {
                assert!(
                    body.next().await.is_none(),
                    "a body stream ends after its error"
                );
                return (bytes, Some(e));
            }
        }
    }
    (bytes, None)
}

async fn read_whole(b: &S3Backend, key: &str) -> (ObjectMeta, Vec<u8>) {
    let meta = b
        .head(key, Caller::Gateway)
        .await
        .unwrap_or_else(|e| panic!("head {key:?}: {e}"));
    let got = b
        .get(key, None, &meta, Caller::Gateway)
        .await
        .unwrap_or_else(|e| panic!("get {key:?}: {e}"));
    let (bytes, err) = collect(got).await;
    assert!(err.is_none(), "body of {key:?} broke: {err:?}");
    (meta, bytes)
}

/// Keys that every store must round-trip byte for byte (all fit s3s-fs's file layout).
fn common_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "plain.jpg",
        "with space.png",
        "plus+sign.png",
        "equals=sign",
        "at@sign",
        "photo '(1)'.jpg",
        "percent%20literal%2F.png",
        "100%",
        "colon:name",
        "tilde~name",
        "star*name",
        "semi;comma,amp&dollar$",
        "hash#not-a-fragment",
        "question?not-a-query",
        "брат/кот.jpg",
        "猫の写真/画像.png",
        "emoji 🐈‍⬛ cat.webp",
        "caf\u{e9}.png",   // NFC
        "cafe\u{301}.png", // NFD twin: a different key
        "dir/sub dir/deep/file.bin",
        "UPPER/lower.PNG",
        "upper/lower.png",
    ]
    .iter()
    .map(|k| k.to_string())
    .collect();
    // Long but within s3s-fs's layout: it names a metadata file after the key in base64.
    keys.push(format!("long/{}", "k".repeat(120)));
    keys
}

/// Keys that only a store with opaque keys (moto, S3) can hold.
fn opaque_store_keys() -> Vec<String> {
    let mut keys: Vec<String> = ["a//b", "trailing/", "x//", "/leading-slash"]
        .iter()
        .map(|k| k.to_string())
        .collect();
    keys.push(format!("seg/{}/end", "s".repeat(300)));
    // Exactly 1024 bytes, the gateway's longest key, in multi-byte characters.
    let mut long = "長".repeat(340); // 1020 bytes
    long.push_str("abcd");
    assert_eq!(long.len(), 1024);
    keys.push(long);
    keys
}

/// Each key holds its own bytes, so a key mixed up with another shows as a wrong body.
async fn check_corpus(b: &S3Backend, prefix: &str, keys: &[String], stored: Vec<String>) {
    let mut expected: Vec<String> = keys.iter().map(|k| format!("{prefix}{k}")).collect();
    expected.sort();
    assert_eq!(
        stored, expected,
        "the store holds exactly the keys as written"
    );
    for key in keys {
        let (meta, bytes) = read_whole(b, key).await;
        assert_eq!(meta.size, key.len() as u64, "{key:?}");
        assert_eq!(bytes, key.as_bytes(), "{key:?}");
    }
}

// ----------------------------------------------------------------------------------------------
// s3s-fs: SigV4 checked

#[tokio::test]
async fn s3s_head_and_get_return_meta_and_bytes() {
    let s3 = S3sFs::start(ACCESS_KEY, SECRET_KEY).await;
    s3.create_bucket(BUCKET).await;
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    let etag = s3.put(BUCKET, "pics/a.png", &body, Some("image/png")).await;
    let b = backend(&s3.source(BUCKET, "pics/")).await;

    let meta = b.head("a.png", Caller::Gateway).await.expect("head");
    assert_eq!(meta.size, 10_000);
    assert_eq!(meta.etag.as_deref(), Some(etag.as_str()));
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong etag, quoted: {etag}"
    );
    assert_eq!(meta.content_type.as_deref(), Some("image/png"));
    let modified = meta.last_modified.expect("last modified");
    let age = SystemTime::now()
        .duration_since(modified)
        .expect("in the past");
    assert!(age < Duration::from_secs(60));
    assert_eq!(
        modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after epoch")
            .subsec_nanos(),
        0
    );

    let got = b
        .get("a.png", None, &meta, Caller::Gateway)
        .await
        .expect("get");
    assert_eq!(got.meta, meta);
    let (bytes, err) = collect(got).await;
    assert!(err.is_none());
    assert_eq!(bytes, body);
}

#[tokio::test]
async fn s3s_get_range_returns_the_slice_and_total_size() {
    let s3 = S3sFs::start(ACCESS_KEY, SECRET_KEY).await;
    s3.create_bucket(BUCKET).await;
    let body: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
    s3.put(BUCKET, "v.mp4", &body, None).await;
    let b = backend(&s3.source(BUCKET, "")).await;
    let meta = b.head("v.mp4", Caller::Gateway).await.expect("head");

    for (start, end) in [(0, 0), (3, 9), (500, 999), (0, 999)] {
        let got = b
            .get(
                "v.mp4",
                Some(ByteRange { start, end }),
                &meta,
                Caller::Gateway,
            )
            .await
            .expect("get range");
        assert_eq!(got.meta.size, 1000, "meta.size is the whole object's");
        let (bytes, err) = collect(got).await;
        assert!(err.is_none());
        assert_eq!(bytes, &body[start as usize..=end as usize]);
    }
}

#[tokio::test]
async fn s3s_get_after_the_object_changed_is_changed() {
    let s3 = S3sFs::start(ACCESS_KEY, SECRET_KEY).await;
    s3.create_bucket(BUCKET).await;
    s3.put(BUCKET, "k", b"version one", None).await;
    let b = backend(&s3.source(BUCKET, "")).await;
    let old = b.head("k", Caller::Gateway).await.expect("head");
    s3.put(BUCKET, "k", b"version two!", None).await;

    let err = b
        .get("k", None, &old, Caller::Gateway)
        .await
        .expect_err("changed object");
    assert!(matches!(err, BackendError::Changed), "{err:?}");
    let err = b
        .get(
            "k",
            Some(ByteRange { start: 0, end: 3 }),
            &old,
            Caller::Gateway,
        )
        .await
        .expect_err("changed");
    assert!(matches!(err, BackendError::Changed), "{err:?}");
}

#[tokio::test]
async fn s3s_key_corpus_round_trips_byte_exact() {
    let s3 = S3sFs::start(ACCESS_KEY, SECRET_KEY).await;
    s3.create_bucket(BUCKET).await;
    let prefix = "team a+b/";
    let keys = common_keys();
    for key in &keys {
        s3.put(BUCKET, &format!("{prefix}{key}"), key.as_bytes(), None)
            .await;
    }
    let b = backend(&s3.source(BUCKET, prefix)).await;
    check_corpus(&b, prefix, &keys, s3.list(BUCKET).await).await;
}

#[tokio::test]
async fn s3s_missing_key_is_not_found() {
    let s3 = S3sFs::start(ACCESS_KEY, SECRET_KEY).await;
    s3.create_bucket(BUCKET).await;
    let b = backend(&s3.source(BUCKET, "")).await;
    let err = b
        .head("nope.png", Caller::Gateway)
        .await
        .expect_err("missing");
    assert!(matches!(err, BackendError::NotFound), "{err:?}");
    let meta = ObjectMeta {
        size: 1,
        etag: None,
        last_modified: None,
        content_type: None,
    };
    let err = b
        .get("nope.png", None, &meta, Caller::Gateway)
        .await
        .expect_err("missing");
    assert!(matches!(err, BackendError::NotFound), "{err:?}");
}

#[tokio::test]
async fn s3s_wrong_secret_is_a_configuration_fault() {
    let s3 = S3sFs::start(ACCESS_KEY, SECRET_KEY).await;
    s3.create_bucket(BUCKET).await;
    s3.put(BUCKET, "k", b"data", None).await;
    let mut source = s3.source(BUCKET, "");
    source.credentials = bucketgate::config::S3Credentials::Static {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: bucketgate::config::Secret::new("not-the-secret".into()),
    };
    let b = backend(&source).await;

    // The gateway's own secret is wrong: a configuration fault (502), not a refusal of the
    // user (issue 11).
    let bad_signature = |err: &BackendError| {
        matches!(
            err,
            BackendError::ConfigFault {
                code: "SignatureDoesNotMatch"
            }
        )
    };
    let err = b
        .head("k", Caller::Gateway)
        .await
        .expect_err("bad signature");
    assert!(bad_signature(&err), "{err:?}");
    let meta = ObjectMeta {
        size: 4,
        etag: None,
        last_modified: None,
        content_type: None,
    };
    let err = b
        .get("k", None, &meta, Caller::Gateway)
        .await
        .expect_err("bad signature");
    assert!(bad_signature(&err), "{err:?}");
    let err = b.ready().await.expect_err("bad signature");
    assert!(bad_signature(&err), "{err:?}");
    assert!(!format!("{err:?} {err}").contains("not-the-secret"));
}

#[tokio::test]
async fn s3s_ready_is_ok_for_a_bucket_and_not_found_without_one() {
    let s3 = S3sFs::start(ACCESS_KEY, SECRET_KEY).await;
    s3.create_bucket(BUCKET).await;
    backend(&s3.source(BUCKET, "some/prefix/"))
        .await
        .ready()
        .await
        .expect("ready");
    let err = backend(&s3.source("no-such-bucket", ""))
        .await
        .ready()
        .await
        .expect_err("no bucket");
    assert!(matches!(err, BackendError::NotFound), "{err:?}");
}

// ----------------------------------------------------------------------------------------------
// moto

#[tokio::test]
async fn moto_head_get_range_and_changed() {
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 241) as u8).collect();
    let etag = moto
        .put(BUCKET, "x/clip.mp4", &body, Some("video/mp4"))
        .await;
    let b = backend(&moto.source(BUCKET, "x/")).await;
    b.ready().await.expect("ready");

    let meta = b.head("clip.mp4", Caller::Gateway).await.expect("head");
    assert_eq!(meta.size, 5000);
    assert_eq!(meta.etag.as_deref(), Some(etag.as_str()));
    assert_eq!(meta.content_type.as_deref(), Some("video/mp4"));
    assert!(meta.last_modified.is_some());

    let (bytes, err) = collect(
        b.get("clip.mp4", None, &meta, Caller::Gateway)
            .await
            .expect("get"),
    )
    .await;
    assert!(err.is_none());
    assert_eq!(bytes, body);
    let got = b
        .get(
            "clip.mp4",
            Some(ByteRange {
                start: 4000,
                end: 4999,
            }),
            &meta,
            Caller::Gateway,
        )
        .await
        .expect("range");
    assert_eq!(got.meta.size, 5000);
    let (bytes, _) = collect(got).await;
    assert_eq!(bytes, &body[4000..]);

    // moto answers If-Match with a real 412.
    moto.put(BUCKET, "x/clip.mp4", b"replaced", None).await;
    let err = b
        .get("clip.mp4", None, &meta, Caller::Gateway)
        .await
        .expect_err("changed");
    assert!(matches!(err, BackendError::Changed), "{err:?}");

    let err = b
        .head("missing.mp4", Caller::Gateway)
        .await
        .expect_err("missing");
    assert!(matches!(err, BackendError::NotFound), "{err:?}");
}

#[tokio::test]
async fn moto_key_corpus_round_trips_byte_exact() {
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let mut keys = common_keys();
    keys.extend(opaque_store_keys());
    for key in &keys {
        moto.put(BUCKET, key, key.as_bytes(), None).await;
    }
    let b = backend(&moto.source(BUCKET, "")).await;
    check_corpus(&b, "", &keys, moto.list(BUCKET).await).await;
}

// ----------------------------------------------------------------------------------------------
// misbehaving origin

fn origin_backend_source(o: &Origin) -> bucketgate::config::S3Source {
    crate::support::s3::source(&o.endpoint, "bucket", "", ACCESS_KEY, SECRET_KEY)
}

fn origin_meta() -> ObjectMeta {
    ObjectMeta {
        size: origin::OBJECT_LEN as u64,
        etag: Some(origin::ETAG.to_string()),
        last_modified: Some(
            SystemTime::UNIX_EPOCH + Duration::from_secs(origin::LAST_MODIFIED_SECS),
        ),
        content_type: Some(origin::CONTENT_TYPE.to_string()),
    }
}

#[tokio::test]
async fn origin_healthy_answers_head_get_range_and_ready() {
    let o = Origin::start(Mode::Healthy).await;
    let b = backend(&origin_backend_source(&o)).await;
    b.ready().await.expect("ready");
    let meta = b.head("any/key", Caller::Gateway).await.expect("head");
    assert_eq!(meta, origin_meta());
    let (bytes, err) = collect(
        b.get("any/key", None, &meta, Caller::Gateway)
            .await
            .expect("get"),
    )
    .await;
    assert!(err.is_none());
    assert_eq!(bytes, origin::object_bytes());
    let got = b
        .get(
            "any/key",
            Some(ByteRange { start: 10, end: 20 }),
            &meta,
            Caller::Gateway,
        )
        .await
        .expect("range");
    let (bytes, _) = collect(got).await;
    assert_eq!(bytes, &origin::object_bytes()[10..=20]);
}

#[tokio::test]
async fn origin_refusing_connections_is_unreachable_after_bounded_retries() {
    let o = Origin::start(Mode::Refuse).await;
    let b = backend(&origin_backend_source(&o)).await;
    let started = Instant::now();
    let err = b.head("k", Caller::Gateway).await.expect_err("refused");
    assert!(matches!(err, BackendError::Unreachable(_)), "{err:?}");
    // 3 attempts with backoff of at most 1 s each: bounded, not endless.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let err = b.ready().await.expect_err("refused");
    assert!(matches!(err, BackendError::Unreachable(_)), "{err:?}");
}

#[tokio::test]
async fn origin_stalling_before_headers_times_out_once_retries_sharing_the_first_byte_budget() {
    let o = Origin::start(Mode::StallBeforeHeaders).await;
    let limits = short_limits();
    let b = S3Backend::new(&origin_backend_source(&o), &limits)
        .await
        .expect("backend");
    let started = Instant::now();
    let err = b.head("k", Caller::Gateway).await.expect_err("stalled");
    assert!(
        matches!(err, BackendError::Timeout(d) if d == limits.upstream_first_byte_timeout),
        "{err:?}"
    );
    // Retries share the first-byte budget (issue 11): a stalled attempt spends all of it, so
    // there is no time left for a second one.
    assert_eq!(o.requests(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn origin_reset_mid_body_is_body_broken_without_retry() {
    let o = Origin::start(Mode::ResetMidBody).await;
    let b = backend(&origin_backend_source(&o)).await;
    let meta = b.head("k", Caller::Gateway).await.expect("head answers");
    let got = b
        .get("k", None, &meta, Caller::Gateway)
        .await
        .expect("headers arrive");
    let (bytes, err) = collect(got).await;
    assert!(matches!(err, Some(BackendError::BodyBroken(_))), "{err:?}");
    assert!(bytes.len() < origin::OBJECT_LEN);
    assert_eq!(
        o.requests(),
        2,
        "HEAD + one GET; a started body is never retried"
    );
}

#[tokio::test]
async fn origin_short_body_is_body_broken() {
    let o = Origin::start(Mode::ShortBody).await;
    let b = backend(&origin_backend_source(&o)).await;
    let meta = b.head("k", Caller::Gateway).await.expect("head answers");
    let got = b
        .get("k", None, &meta, Caller::Gateway)
        .await
        .expect("headers arrive");
    let (bytes, err) = collect(got).await;
    assert!(matches!(err, Some(BackendError::BodyBroken(_))), "{err:?}");
    assert_eq!(bytes, &origin::object_bytes()[..origin::PARTIAL_LEN]);
    assert_eq!(o.requests(), 2);
}

#[tokio::test]
async fn origin_stalling_mid_body_is_stalled_after_the_idle_timeout() {
    let o = Origin::start(Mode::StallMidBody).await;
    let limits = short_limits();
    let b = S3Backend::new(&origin_backend_source(&o), &limits)
        .await
        .expect("backend");
    let meta = b.head("k", Caller::Gateway).await.expect("head answers");
    let got = b
        .get("k", None, &meta, Caller::Gateway)
        .await
        .expect("headers arrive");
    let (bytes, err) = collect(got).await;
    assert!(
        matches!(err, Some(BackendError::Stalled(d)) if d == limits.upstream_idle_timeout),
        "{err:?}"
    );
    assert_eq!(bytes, &origin::object_bytes()[..origin::PARTIAL_LEN]);
    assert_eq!(o.requests(), 2);
}
