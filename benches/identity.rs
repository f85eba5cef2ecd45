#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Criterion benches for stages 2 and 3: verify a token (HS256, EdDSA, ES256) with the keys in
//! memory, then decide on a key. Targets (issue 4): HS256 + decision < 5 µs, EdDSA < 60 µs.
//! `identity_refusal/*` compares refused tokens (issue 11): an expired token with a good
//! signature, with a bad one, and under an unknown kid should cost the same per algorithm.
//! `use_window/*` (issue 16): the use-window check of a warm window (target < 2 µs): the store
//! step alone, with the token's SHA-256, and a whole HS256 `verify` of a window token past its
//! `exp` beside a plain token's.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bucketgate::config::{
    IdentityConfig, KeyAlg, KeyConfig, KeyMaterial, ProjectConfig, Secret, default_roles,
};
use bucketgate::identity::revocation::Revocations;
use bucketgate::identity::{Identity, Scope, unix_now};
use bucketgate::pipeline::authorize::{Policy, authorize};
use bucketgate::pipeline::network::client_ip;
use bucketgate::pipeline::plan;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const SECRET: &str = "bench-hs256-secret-0123456789abcdef0123";

fn bench(c: &mut Criterion) {
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let key = |kid: &str, alg, material| KeyConfig {
        kid: kid.into(),
        alg,
        material,
        private_key: None,
        allow_non_expiring: false,
    };
    let config = IdentityConfig {
        audience: "bucketgate".into(),
        issuer: Some("https://app.example.com".into()),
        clock_skew: Duration::from_secs(30),
        cookie_name: "bucketgate_session".into(),
        keys: vec![
            key(
                "hs",
                KeyAlg::Hs256,
                KeyMaterial::Hs256(Secret::new(SECRET.into())),
            ),
            key(
                "ed",
                KeyAlg::EdDsa,
                KeyMaterial::PublicPem(ed.public_key_pem()),
            ),
            key(
                "es",
                KeyAlg::Es256,
                KeyMaterial::PublicPem(es.public_key_pem()),
            ),
        ],
        jwks: None,
        use_window_max: Duration::from_secs(12 * 3600),
    };
    let state = tempfile::tempdir().unwrap();
    let identity =
        Identity::new(&config, Arc::new(Revocations::load(state.path()).unwrap())).unwrap();
    let mut projects = std::collections::BTreeMap::new();
    projects.insert(
        "p1".to_owned(),
        ProjectConfig {
            sources: vec![Scope::parse("photos:team-a/").unwrap()],
        },
    );
    let policy = Policy::new(default_roles(), projects);
    let claims = serde_json::json!({
        "sub": "labeler-17", "aud": "bucketgate", "iss": "https://app.example.com",
        "iat": unix_now(), "exp": unix_now() + 3600, "jti": "9f1c2d3e-bench",
        "scope": ["photos:team-a/batch-7/", "photos:exact/team-a/cover.jpg"],
        "role": "annotator", "project": "p1",
    });
    let sign = |alg, kid: &str, key: &EncodingKey| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &claims, key).unwrap()
    };
    let tokens = [
        (
            "hs256",
            sign(
                Algorithm::HS256,
                "hs",
                &EncodingKey::from_secret(SECRET.as_bytes()),
            ),
        ),
        (
            "eddsa",
            sign(
                Algorithm::EdDSA,
                "ed",
                &EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
            ),
        ),
        (
            "es256",
            sign(
                Algorithm::ES256,
                "es",
                &EncodingKey::from_ec_pem(es.serialize_pem().as_bytes()).unwrap(),
            ),
        ),
    ];
    let net_policy = bucketgate::pipeline::network::NetworkPolicy::compile(
        &bucketgate::config::NetworkConfig::loopback_only(),
    );
    let client = client_ip(
        "127.0.0.1:40000".parse().unwrap(),
        &http::HeaderMap::new(),
        &net_policy,
    )
    .unwrap();
    let now = unix_now();
    let mut g = c.benchmark_group("identity");
    let target = plan::parse_object("/o/photos/team-a/batch-7/frame_000123.jpg", None).unwrap();
    for (name, token) in &tokens {
        g.bench_function(format!("verify_and_authorize/{name}"), |b| {
            b.iter(|| {
                let p = identity.verify_cached(black_box(token), now).unwrap();
                authorize(&p, client, black_box(target.clone()), &policy)
                    .unwrap()
                    .rule()
                    .len()
            })
        });
    }
    g.finish();

    // Refusals: the same work whatever refuses the token. An expired token with a good
    // signature, the same claims under a bad signature (made by another key of the same
    // algorithm), and the same under a kid nobody configured: the three should cost about the
    // same per algorithm (a bad signature used to skip the claims).
    let expired = serde_json::json!({
        "sub": "labeler-17", "aud": "bucketgate", "iss": "https://app.example.com",
        "iat": unix_now() - 7200, "exp": unix_now() - 3600, "jti": "9f1c2d3e-bench",
        "scope": ["photos:team-a/batch-7/", "photos:exact/team-a/cover.jpg"],
        "role": "annotator", "project": "p1",
    });
    let sign_expired = |alg, kid: &str, key: &EncodingKey| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &expired, key).unwrap()
    };
    let other_ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let other_es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let keys = [
        (
            "hs256",
            Algorithm::HS256,
            "hs",
            EncodingKey::from_secret(SECRET.as_bytes()),
            EncodingKey::from_secret(b"another-hs256-secret-0123456789abcdef"),
        ),
        (
            "eddsa",
            Algorithm::EdDSA,
            "ed",
            EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
            EncodingKey::from_ed_pem(other_ed.serialize_pem().as_bytes()).unwrap(),
        ),
        (
            "es256",
            Algorithm::ES256,
            "es",
            EncodingKey::from_ec_pem(es.serialize_pem().as_bytes()).unwrap(),
            EncodingKey::from_ec_pem(other_es.serialize_pem().as_bytes()).unwrap(),
        ),
    ];
    let mut g = c.benchmark_group("identity_refusal");
    for (name, alg, kid, good, other) in &keys {
        let cases = [
            ("expired_good_signature", sign_expired(*alg, kid, good)),
            ("expired_bad_signature", sign_expired(*alg, kid, other)),
            ("expired_unknown_kid", sign_expired(*alg, "nobody", other)),
        ];
        for (case, token) in &cases {
            assert!(identity.verify_cached(token, now).is_err(), "{name}/{case}");
            g.bench_function(format!("{name}/{case}"), |b| {
                b.iter(|| identity.verify_cached(black_box(token), now).is_err())
            });
        }
    }
    g.finish();
}

/// The use-window check on a warm window (one already started, used again within `idle`).
fn use_window(c: &mut Criterion) {
    use bucketgate::identity::TokenUse;
    use bucketgate::identity::use_window::{Use, UseWindowStore as _, UseWindows, WindowKey};
    use futures_util::FutureExt as _;

    let config = IdentityConfig {
        audience: "bucketgate".into(),
        issuer: None,
        clock_skew: Duration::from_secs(30),
        cookie_name: "bucketgate_session".into(),
        keys: vec![KeyConfig {
            kid: "hs".into(),
            alg: KeyAlg::Hs256,
            material: KeyMaterial::Hs256(Secret::new(SECRET.into())),
            private_key: None,
            allow_non_expiring: false,
        }],
        jwks: None,
        use_window_max: Duration::from_secs(12 * 3600),
    };
    let state = tempfile::tempdir().unwrap();
    let identity =
        Identity::new(&config, Arc::new(Revocations::load(state.path()).unwrap())).unwrap();
    let issued = unix_now();
    let claims = |window: bool| {
        let mut c = serde_json::json!({
            "sub": "labeler-17", "aud": "bucketgate", "iat": issued, "exp": issued + 300,
            "jti": "9f1c2d3e-bench", "scope": ["videos:exact/team-a/batch-7/clip_000123.mp4"],
            "role": "annotator", "project": "p1",
        });
        if window {
            c["idle"] = 600.into();
            c["max"] = 28_800.into();
        }
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("hs".into());
        jsonwebtoken::encode(&h, &c, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    };
    let (windowed, plain) = (claims(true), claims(false));
    let window = identity
        .verify_cached(&windowed, issued)
        .unwrap()
        .use_window()
        .unwrap();
    let client: std::net::IpAddr = "203.0.113.7".parse().unwrap();
    // Busy store: many other live windows besides the one measured.
    let windows = UseWindows::memory();
    for n in 0..50_000u32 {
        let other = Use {
            key: WindowKey::of(&format!("other-token-{n}")),
            window,
            first_use_by: issued + 330,
            client,
            now: issued,
        };
        windows
            .use_token(&other, true)
            .now_or_never()
            .unwrap()
            .unwrap();
    }
    let at = TokenUse {
        client,
        windows: &windows,
    };
    // Start the measured window, then judge it 170 s past exp + skew, within idle (a live window).
    identity
        .verify(&windowed, issued, at)
        .now_or_never()
        .unwrap()
        .unwrap();
    let later = issued + 500;
    identity
        .verify(&windowed, later, at)
        .now_or_never()
        .unwrap()
        .unwrap();
    let warm = Use {
        key: WindowKey::of(&windowed),
        window,
        first_use_by: issued + 330,
        client,
        now: later,
    };

    let mut g = c.benchmark_group("use_window");
    g.bench_function("store_check_warm", |b| {
        b.iter(|| {
            windows
                .use_token(black_box(&warm), true)
                .now_or_never()
                .unwrap()
                .unwrap()
        })
    });
    g.bench_function("hash_and_store_check_warm", |b| {
        b.iter(|| {
            let use_ = Use {
                key: WindowKey::of(black_box(&windowed)),
                ..warm
            };
            windows
                .use_token(&use_, true)
                .now_or_never()
                .unwrap()
                .unwrap()
        })
    });
    g.bench_function("verify/hs256_window_token_past_exp", |b| {
        b.iter(|| {
            identity
                .verify(black_box(&windowed), later, at)
                .now_or_never()
                .unwrap()
                .unwrap()
                .role()
                .len()
        })
    });
    g.bench_function("verify/hs256_plain_token", |b| {
        b.iter(|| {
            identity
                .verify(black_box(&plain), issued, at)
                .now_or_never()
                .unwrap()
                .unwrap()
                .role()
                .len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench, use_window);
criterion_main!(benches);
