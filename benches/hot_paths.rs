#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Criterion benches for the per-request hot paths: key decoding, range and conditional
//! evaluation, and one whole pipeline pass (plan -> metadata -> response head) on an fs object,
//! without sockets or TLS. The load script (`benches/load.sh`) measures the gateway end to end.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use bucketgate::backend::AnyBackend;
use bucketgate::backend::fs::FsBackend;
use bucketgate::config::{Limits, NetworkConfig};
use bucketgate::pipeline::network::NetworkPolicy;
use bucketgate::pipeline::{Pipeline, Snapshot, plan, range};
use bucketgate::telemetry::Metrics;
use bucketgate::web::ConnInfo;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Request};

fn key_decoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan");
    g.bench_function("decode_key/ascii", |b| {
        b.iter(|| plan::decode_key(black_box("projects/42/images/frame_000123.jpg")))
    });
    g.bench_function("decode_key/encoded_unicode", |b| {
        b.iter(|| {
            plan::decode_key(black_box(
                "projets/%C3%A9t%C3%A9%202024/%E7%8C%AB%20(1).png",
            ))
        })
    });
    g.bench_function("plan_object", |b| {
        b.iter(|| {
            plan::plan_object(
                black_box("/o/local/projects/42/images/frame_000123.jpg"),
                None,
                |s| s == "local",
            )
        })
    });
    g.finish();
}

fn ranges(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::RANGE,
        HeaderValue::from_static("bytes=1048576-2097151"),
    );
    headers.insert(
        http::header::IF_NONE_MATCH,
        HeaderValue::from_static("\"other\", W/\"x\""),
    );
    let meta = bucketgate::backend::ObjectMeta {
        size: 10 << 20,
        etag: Some("\"a0000-65f1c2d3\"".into()),
        last_modified: None,
        content_type: Some("image/jpeg".into()),
    };
    c.bench_function("range/parse_select_preconditions", |b| {
        b.iter(|| {
            let p = range::preconditions(black_box(&headers), &meta);
            let s = range::select(range::parse_range(black_box(&headers)), meta.size);
            (p, s)
        })
    });
}

fn pipeline_head(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("obj.bin"), vec![7u8; 64 * 1024]).expect("write object");
    let mut sources = HashMap::new();
    sources.insert(
        "local".to_string(),
        AnyBackend::Fs(FsBackend::new(dir.path()).expect("fs backend")),
    );
    // A token for the whole source, verified like any request's (HS256).
    let secret = "bench-hs256-secret-0123456789abcdef0123";
    let identity = bucketgate::config::IdentityConfig {
        audience: "bucketgate".into(),
        issuer: None,
        clock_skew: std::time::Duration::from_secs(30),
        cookie_name: "bucketgate_session".into(),
        keys: vec![bucketgate::config::KeyConfig {
            kid: "hs".into(),
            alg: bucketgate::config::KeyAlg::Hs256,
            material: bucketgate::config::KeyMaterial::Hs256(bucketgate::config::Secret::new(
                secret.into(),
            )),
            private_key: None,
            allow_non_expiring: false,
        }],
        jwks: None,
        use_window_max: std::time::Duration::from_secs(12 * 3600),
    };
    let revocations = Arc::new(
        bucketgate::identity::revocation::Revocations::load(dir.path()).expect("revocations"),
    );
    let identity = bucketgate::identity::Identity::new(&identity, revocations).expect("identity");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("hs".into());
    let now = bucketgate::identity::unix_now();
    let token = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"sub": "bench", "aud": "bucketgate", "exp": now + 3600,
            "scope": ["local:"], "role": "owner"}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token");
    let bearer = format!("Bearer {token}");
    let pipeline = Pipeline::new(
        Snapshot::new(
            sources,
            Limits::default(),
            NetworkPolicy::compile(&NetworkConfig::loopback_only()),
        )
        .with_access(
            Some(Arc::new(identity)),
            bucketgate::pipeline::authorize::Policy::new(
                bucketgate::config::default_roles(),
                Default::default(),
            ),
        ),
        Arc::new(Metrics::new()),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let conn = ConnInfo::direct("127.0.0.1:40000".parse().expect("addr"));
    c.bench_function("pipeline/head_64k_fs", |b| {
        b.to_async(&rt).iter(|| async {
            // An HTTP/1.1 request names its Host (stage 0 refuses one without).
            let req = Request::head("/o/local/obj.bin")
                .header(http::header::HOST, "127.0.0.1:8443")
                .header(http::header::AUTHORIZATION, bearer.as_str())
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request");
            let resp = pipeline.handle(req, conn).await;
            assert_eq!(resp.status(), 200);
        })
    });
}

criterion_group!(benches, key_decoding, ranges, pipeline_head);
criterion_main!(benches);
