#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Stages 2 and 3 against the running gateway: tokens from PyJWT and jsonwebtoken, the attack
//! matrix (every 401 and every 403 byte-identical but for the request id, except the one
//! `token_expired` of a token that verifies and is only past its exp), token locations,
//! scope escapes, `cip` and `rep` bindings, revocation through the admin API (persisted across a
//! restart), a removed key, and JWKS rotation served by a real HTTPS server.

use crate::support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{TEST_AUDIENCE, TEST_SECRET, TestGateway, now};
use base64::Engine;
use bucketgate::config::{
    Config, IdentityConfig, JwksConfig, KeyAlg, KeyConfig, KeyMaterial, ProjectConfig, RoleConfig,
    Secret,
};
use bucketgate::identity::Scope;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tempfile::TempDir;

const ISSUER: &str = "https://app.example.com";
const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef0123";
const FOREVER_SECRET: &str = "forever-hs256-secret-0123456789abcdef0123";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The key pairs a bed trusts besides the support HS256 key.
struct Keys {
    ed: rcgen::KeyPair,
    es: rcgen::KeyPair,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            ed: rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
            es: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }
}

fn key(kid: &str, alg: KeyAlg, material: KeyMaterial, forever: bool) -> KeyConfig {
    KeyConfig {
        kid: kid.to_owned(),
        alg,
        material,
        private_key: None,
        allow_non_expiring: forever,
    }
}

/// Identity with the support key (`test`), `ed`, `es` and `forever` (HS256, non-expiring).
fn identity(keys: &Keys) -> IdentityConfig {
    let mut id = support::test_identity();
    id.issuer = Some(ISSUER.to_owned());
    id.keys.push(key(
        "ed",
        KeyAlg::EdDsa,
        KeyMaterial::PublicPem(keys.ed.public_key_pem()),
        false,
    ));
    id.keys.push(key(
        "es",
        KeyAlg::Es256,
        KeyMaterial::PublicPem(keys.es.public_key_pem()),
        false,
    ));
    id.keys.push(key(
        "forever",
        KeyAlg::Hs256,
        KeyMaterial::Hs256(Secret::new(FOREVER_SECRET.to_owned())),
        true,
    ));
    id
}

struct Bed {
    gw: TestGateway,
    _data: TempDir,
    state: TempDir,
    keys: Keys,
}

const OBJECTS: [&str; 6] = [
    "a/x.txt",
    "ab/x.txt",
    "A/x.txt",
    "a%2Fx.txt",
    "a/x.txt.bak",
    "b/y.txt",
];

fn policy(config: &mut Config) {
    config.projects.insert(
        "p1".to_owned(),
        ProjectConfig {
            sources: vec![Scope::parse("local:a/").unwrap()],
        },
    );
    config.roles.insert(
        "thumbs".to_owned(),
        RoleConfig {
            read_original: false,
            read_derived: true,
            rank: None,
        },
    );
}

async fn start(data: &Path, state: &Path, identity: Option<IdentityConfig>) -> TestGateway {
    let sources = BTreeMap::from([("local".to_string(), support::fs_source(data))]);
    let state = state.to_path_buf();
    support::GatewayBuilder::new()
        .sources(sources)
        .tweak(move |c| {
            c.identity = identity;
            c.admin.token = Some(Secret::new(ADMIN_TOKEN.to_owned()));
            c.admin.state_dir = state;
            policy(c);
        })
        .start()
        .await
}

async fn bed() -> Bed {
    let data = tempfile::tempdir().unwrap();
    for k in OBJECTS {
        support::write_file(data.path(), k, k.as_bytes());
    }
    let state = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let gw = start(data.path(), state.path(), Some(identity(&keys))).await;
    Bed {
        gw,
        _data: data,
        state,
        keys,
    }
}

/// Valid claims for `alice`, scope `local:a/`, role annotator; `extra` overrides (null removes).
fn claims(extra: Value) -> Value {
    let mut c = json!({
        "sub": "alice",
        "aud": TEST_AUDIENCE,
        "iss": ISSUER,
        "iat": now(),
        "exp": now() + 600,
        "jti": uuid::Uuid::new_v4().to_string(),
        "scope": ["local:a/"],
        "role": "annotator",
    });
    if let (Some(base), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                base.remove(k);
            } else {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    c
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        support::TEST_KID,
        &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
        claims,
    )
}

/// An HS256 token under the test kid, signed with a secret that is not the test key's.
fn hs_with_other_secret(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        support::TEST_KID,
        &EncodingKey::from_secret(b"not-the-test-secret-0123456789abcdef"),
        claims,
    )
}

fn ed(keys: &Keys, claims: &Value) -> String {
    let k = EncodingKey::from_ed_pem(keys.ed.serialize_pem().as_bytes()).unwrap();
    sign(Algorithm::EdDSA, "ed", &k, claims)
}

fn es(keys: &Keys, claims: &Value) -> String {
    let k = EncodingKey::from_ec_pem(keys.es.serialize_pem().as_bytes()).unwrap();
    sign(Algorithm::ES256, "es", &k, claims)
}

/// A token with a hand-made header and payload and the given signature part.
fn raw_token(header: &Value, payload: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    )
}

/// The 32-byte seed of a ring-made Ed25519 key, in hex. ring writes PKCS#8 v2 (with the public
/// key), which Python's `cryptography` refuses; PyJWT gets the seed instead.
fn ed25519_seed_hex(key: &rcgen::KeyPair) -> String {
    let der = key.serialize_der();
    // SEQUENCE { INTEGER 1, AlgorithmIdentifier { 1.3.101.112 }, OCTET STRING { OCTET STRING seed } ...
    assert_eq!(
        &der[2..16],
        &[
            0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20
        ]
    );
    der[16..48].iter().map(|b| format!("{b:02x}")).collect()
}

/// Mint with PyJWT (an independent implementation) from the test virtualenv.
fn pyjwt(claims: &Value, key: &str, alg: &str, kid: &str) -> String {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ./tests/run (it installs pyjwt[crypto] into .venv)",
        python.display()
    );
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import jwt, sys, json\n\
             from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\n\
             key = sys.argv[2]\n\
             if sys.argv[3] == 'EdDSA':\n    \
                 key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key))\n\
             print(jwt.encode(json.loads(sys.argv[1]), key, algorithm=sys.argv[3], \
             headers={'kid': sys.argv[4]}))",
            &claims.to_string(),
            key,
            alg,
            kid,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "PyJWT failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Reply {
    status: StatusCode,
    body: String,
    www_authenticate: Option<String>,
}

impl Reply {
    /// The body with its request id blanked, for byte comparison across causes.
    fn body_without_id(&self) -> String {
        let v: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON: {e}: {}", self.body));
        let id = v["request_id"].as_str().unwrap();
        assert_eq!(id.len(), 32, "{}", self.body);
        self.body.replace(id, "")
    }
}

async fn send(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let www_authenticate = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    Reply {
        status,
        body: resp.text().await.unwrap(),
        www_authenticate,
    }
}

impl Bed {
    fn anon(&self) -> reqwest::Client {
        self.gw.anon_client_builder().build().unwrap()
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        send(
            &self.anon(),
            &self.gw.url(path),
            &[("authorization", &auth)],
        )
        .await
    }
}

#[tokio::test]
async fn tokens_from_pyjwt_and_jsonwebtoken_are_accepted_in_each_location() {
    let bed = bed().await;
    let c = claims(json!({}));
    let tokens = [
        ("jsonwebtoken HS256", hs(&c)),
        ("jsonwebtoken EdDSA", ed(&bed.keys, &c)),
        ("jsonwebtoken ES256", es(&bed.keys, &c)),
        ("PyJWT HS256", pyjwt(&c, TEST_SECRET, "HS256", "test")),
        (
            "PyJWT EdDSA",
            pyjwt(&c, &ed25519_seed_hex(&bed.keys.ed), "EdDSA", "ed"),
        ),
        (
            "PyJWT ES256",
            pyjwt(&c, &bed.keys.es.serialize_pem(), "ES256", "es"),
        ),
    ];
    for (what, token) in &tokens {
        let r = bed.get("/o/local/a/x.txt", token).await;
        assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.body);
        assert_eq!(r.body, "a/x.txt", "{what}");
    }
    let token = &tokens[0].1;
    let client = bed.anon();
    let cookie = format!("other=1; bucketgate_session={token}");
    let r = send(
        &client,
        &bed.gw.url("/o/local/a/x.txt"),
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "cookie: {}", r.body);
    let url = bed.gw.url(&format!("/o/local/a/x.txt?token={token}"));
    let r = send(&client, &url, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "signed URL: {}", r.body);
}

#[tokio::test]
async fn attack_matrix_is_401_with_one_identical_body() {
    let bed = bed().await;
    // A listener the token headers point at: it must never see a connection.
    let bait = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    bait.set_nonblocking(true).unwrap();
    let bait_url = format!("https://{}/jwks.json", bait.local_addr().unwrap());

    let good = claims(json!({}));
    let valid = hs(&good);
    let parts: Vec<&str> = valid.split('.').collect();
    let header_none = json!({"alg": "none", "kid": "test", "typ": "JWT"});
    let other_ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let attacker_key = EncodingKey::from_ed_pem(other_ed.serialize_pem().as_bytes()).unwrap();
    let with_header = |mut header: Header, key: &EncodingKey, c: &Value| {
        header.kid = header.kid.or(Some("test".to_owned()));
        jsonwebtoken::encode(&header, c, key).unwrap()
    };
    let attacker_hs = EncodingKey::from_secret(b"attacker-secret-0123456789abcdef0123");
    let mut jku = Header::new(Algorithm::EdDSA);
    jku.kid = Some("attacker".to_owned());
    jku.jku = Some(bait_url.clone());
    let mut x5u = Header::new(Algorithm::HS256);
    x5u.x5u = Some(bait_url.clone());
    let mut embedded = Header::new(Algorithm::EdDSA);
    embedded.kid = Some("ed".to_owned());
    embedded.jwk = Some(
        serde_json::from_value(json!({
            "kty": "OKP", "crv": "Ed25519", "x": b64(other_ed.public_key_raw()), "kid": "ed"
        }))
        .unwrap(),
    );
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims(json!({"scope": ["local:"], "role": "owner"}))
            .to_string()
            .as_bytes()),
        parts[2]
    );
    let zero_sig = format!("{}.{}.{}", parts[0], parts[1], "A".repeat(parts[2].len()));
    let truncated = valid[..valid.len() - 4].to_owned();
    let cases: Vec<(&str, String)> = vec![
        ("no token", String::new()),
        ("garbage", "not-a-jwt".to_owned()),
        (
            "alg none with trailing dot",
            raw_token(&header_none, &good, ""),
        ),
        ("alg none without trailing dot", {
            let t = raw_token(&header_none, &good, "");
            t.trim_end_matches('.').to_owned()
        }),
        (
            "alg none with the valid signature",
            raw_token(&header_none, &good, parts[2]),
        ),
        (
            "HS256 signed with the EdDSA public key PEM",
            sign(
                Algorithm::HS256,
                "ed",
                &EncodingKey::from_secret(bed.keys.ed.public_key_pem().as_bytes()),
                &good,
            ),
        ),
        (
            "HS256 signed with the ES256 public key PEM",
            sign(
                Algorithm::HS256,
                "es",
                &EncodingKey::from_secret(bed.keys.es.public_key_pem().as_bytes()),
                &good,
            ),
        ),
        (
            "EdDSA token under the HS256 kid",
            sign(
                Algorithm::EdDSA,
                "test",
                &EncodingKey::from_ed_pem(bed.keys.ed.serialize_pem().as_bytes()).unwrap(),
                &good,
            ),
        ),
        ("tampered payload", tampered),
        ("zero signature", zero_sig),
        ("truncated signature", truncated),
        ("signature removed", format!("{}.{}.", parts[0], parts[1])),
        (
            "expired beyond the skew, with a bad signature",
            hs_with_other_secret(&claims(json!({"exp": now() - 40, "iat": now() - 100}))),
        ),
        (
            "nbf beyond the skew",
            hs(&claims(json!({"nbf": now() + 120}))),
        ),
        (
            "iat in the future",
            hs(&claims(json!({"iat": now() + 120}))),
        ),
        (
            "no exp under a key that requires one",
            hs(&claims(json!({"exp": null}))),
        ),
        ("wrong aud", hs(&claims(json!({"aud": "someone-else"})))),
        ("no aud", hs(&claims(json!({"aud": null})))),
        (
            "wrong iss",
            hs(&claims(json!({"iss": "https://evil.example.com"}))),
        ),
        ("no iss", hs(&claims(json!({"iss": null})))),
        ("no sub", hs(&claims(json!({"sub": null})))),
        ("no scope", hs(&claims(json!({"scope": null})))),
        ("empty scope", hs(&claims(json!({"scope": []})))),
        ("malformed scope", hs(&claims(json!({"scope": ["local"]})))),
        ("no role", hs(&claims(json!({"role": null})))),
        ("bad cip", hs(&claims(json!({"cip": "somewhere"})))),
        ("bad rep", hs(&claims(json!({"rep": ["everything"]})))),
        (
            "unknown kid",
            sign(
                Algorithm::HS256,
                "nope",
                &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
                &good,
            ),
        ),
        (
            "path kid",
            sign(
                Algorithm::HS256,
                "../../etc/passwd",
                &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
                &good,
            ),
        ),
        (
            "SQL kid",
            sign(
                Algorithm::HS256,
                "x' OR '1'='1' --",
                &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
                &good,
            ),
        ),
        (
            "long kid",
            sign(
                Algorithm::HS256,
                &"k".repeat(4000),
                &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
                &good,
            ),
        ),
        ("no kid", {
            let h = Header::new(Algorithm::HS256);
            jsonwebtoken::encode(&h, &good, &EncodingKey::from_secret(TEST_SECRET.as_bytes()))
                .unwrap()
        }),
        (
            "jku to a local listener",
            with_header(jku, &attacker_key, &good),
        ),
        (
            "x5u to a local listener",
            with_header(x5u, &attacker_hs, &good),
        ),
        ("embedded jwk", with_header(embedded, &attacker_key, &good)),
        (
            "oversized token",
            hs(&claims(json!({"pad": "p".repeat(9000)}))),
        ),
    ];
    let mut bodies = Vec::new();
    for (what, token) in &cases {
        let r = if token.is_empty() {
            send(&bed.anon(), &bed.gw.url("/o/local/a/x.txt"), &[]).await
        } else {
            bed.get("/o/local/a/x.txt", token).await
        };
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.body);
        assert_eq!(r.www_authenticate.as_deref(), Some("Bearer"), "{what}");
        bodies.push((what, r.body_without_id()));
    }
    // An unknown key and a missing object are the same 401 too: nothing is learned.
    let r = send(&bed.anon(), &bed.gw.url("/o/nosuchsource/zzz"), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    bodies.push((&"unknown source, no token", r.body_without_id()));
    for (what, body) in &bodies {
        assert_eq!(body, &bodies[0].1, "{what}: body differs");
    }
    assert!(
        matches!(bait.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the gateway connected to a URL named in a token header"
    );
    // The one cause told apart (issue 16): a token that verifies and is only past its exp.
    let r = bed
        .get(
            "/o/local/a/x.txt",
            &hs(&claims(json!({"exp": now() - 40, "iat": now() - 100}))),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(
        r.www_authenticate.as_deref(),
        Some(r#"Bearer error="invalid_token", error_description="expired""#)
    );
    assert_ne!(r.body_without_id(), bodies[0].1);
    assert!(r.body.contains(r#""error":"token_expired""#), "{}", r.body);
    // Boundaries inside the skew (30 s) are accepted.
    for (what, extra) in [
        (
            "expired within the skew",
            json!({"exp": now() - 20, "iat": now() - 100}),
        ),
        ("nbf within the skew", json!({"nbf": now() + 15})),
    ] {
        let r = bed.get("/o/local/a/x.txt", &hs(&claims(extra))).await;
        assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.body);
    }
    let forever = sign(
        Algorithm::HS256,
        "forever",
        &EncodingKey::from_secret(FOREVER_SECRET.as_bytes()),
        &claims(json!({"exp": null})),
    );
    let r = bed.get("/o/local/a/x.txt", &forever).await;
    assert_eq!(r.status, StatusCode::OK, "non-expiring key: {}", r.body);
}

#[tokio::test]
async fn token_in_two_places_or_twice_is_400() {
    let bed = bed().await;
    let t = hs(&claims(json!({})));
    let client = bed.anon();
    let bearer = format!("Bearer {t}");
    let cookie = format!("bucketgate_session={t}");
    let with_query = bed.gw.url(&format!("/o/local/a/x.txt?token={t}"));
    let plain = bed.gw.url("/o/local/a/x.txt");
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            "bearer and cookie",
            plain.clone(),
            vec![("authorization", &bearer), ("cookie", &cookie)],
        ),
        (
            "bearer and query",
            with_query.clone(),
            vec![("authorization", &bearer)],
        ),
        (
            "cookie and query",
            with_query.clone(),
            vec![("cookie", &cookie)],
        ),
        (
            "two bearer headers",
            plain.clone(),
            vec![("authorization", &bearer), ("authorization", &bearer)],
        ),
        (
            "token= twice",
            bed.gw.url(&format!("/o/local/a/x.txt?token={t}&token={t}")),
            vec![],
        ),
        (
            "token= and another parameter",
            bed.gw
                .url(&format!("/o/local/a/x.txt?token={t}&versionId=1")),
            vec![],
        ),
    ];
    for (what, url, headers) in cases {
        let r = send(&client, &url, &headers).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", r.body);
    }
}

#[tokio::test]
async fn scope_escapes_are_403_with_one_identical_body() {
    let bed = bed().await;
    let a = hs(&claims(json!({})));
    let exact = hs(&claims(json!({"scope": ["local:exact/a/x.txt"]})));
    let whole = hs(&claims(json!({"scope": ["local:"]})));
    let p1 = hs(&claims(json!({"scope": ["local:"], "project": "p1"})));
    let allowed = [
        ("inside the prefix", &a, "/o/local/a/x.txt", "a/x.txt"),
        (
            "%2F decodes to the same key",
            &a,
            "/o/local/a%2Fx.txt",
            "a/x.txt",
        ),
        ("exact key", &exact, "/o/local/a/x.txt", "a/x.txt"),
        (
            "project narrows a whole-source scope",
            &p1,
            "/o/local/a/x.txt",
            "a/x.txt",
        ),
    ];
    for (what, token, path, body) in allowed {
        let r = bed.get(path, token).await;
        assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.body);
        assert_eq!(r.body, body, "{what}");
    }
    let r = bed.get("/o/local/a/missing.txt", &a).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "404 only once authorized");
    let refused = [
        ("sibling prefix", &a, "/o/local/ab/x.txt"),
        ("encoded sibling", &a, "/o/local/ab%2Fx.txt"),
        ("case", &a, "/o/local/A/x.txt"),
        ("double encoding", &a, "/o/local/a%252Fx.txt"),
        ("other folder", &a, "/o/local/b/y.txt"),
        ("exact plus trailing slash", &exact, "/o/local/a/x.txt/"),
        ("exact plus suffix", &exact, "/o/local/a/x.txt.bak"),
        ("unknown source", &whole, "/o/nosuchsource/a/x.txt"),
        ("project excludes the folder", &p1, "/o/local/b/y.txt"),
        (
            "unknown project",
            &hs(&claims(json!({"project": "nope"}))),
            "/o/local/a/x.txt",
        ),
        (
            "unknown role",
            &hs(&claims(json!({"role": "janitor"}))),
            "/o/local/a/x.txt",
        ),
        (
            "role without originals",
            &hs(&claims(json!({"role": "thumbs"}))),
            "/o/local/a/x.txt",
        ),
        (
            "rep derived only",
            &hs(&claims(json!({"rep": ["derived"]}))),
            "/o/local/a/x.txt",
        ),
        (
            "cip elsewhere",
            &hs(&claims(json!({"cip": "127.0.0.2/32"}))),
            "/o/local/a/x.txt",
        ),
    ];
    let mut bodies = Vec::new();
    for (what, token, path) in refused {
        let r = bed.get(path, token).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}: {}", r.body);
        bodies.push((what, r.body_without_id()));
    }
    for (what, body) in &bodies {
        assert_eq!(body, &bodies[0].1, "{what}: body differs");
    }
}

#[tokio::test]
async fn cip_bound_token_is_served_only_to_that_address() {
    let bed = bed().await;
    let bound = hs(&claims(json!({"cip": "127.0.0.2/32"})));
    let auth = format!("Bearer {bound}");
    let url = bed.gw.url("/o/local/a/x.txt");
    let from_1 = send(&bed.anon(), &url, &[("authorization", &auth)]).await;
    assert_eq!(from_1.status, StatusCode::FORBIDDEN, "{}", from_1.body);
    let from_2 = bed
        .gw
        .anon_client_builder()
        .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = send(&from_2, &url, &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

async fn admin(
    gw: &TestGateway,
    method: reqwest::Method,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = client.request(method, gw.admin_url("/admin/revocations"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

#[tokio::test]
async fn revoked_jti_and_subject_are_refused_and_stay_revoked_after_restart() {
    let mut bed = bed().await;
    let revoked = hs(&claims(json!({"jti": "jti-1"})));
    let kept = hs(&claims(json!({"jti": "jti-2", "sub": "carol"})));
    let bob_old = hs(&claims(json!({"sub": "bob", "iat": now() - 100})));
    assert_eq!(
        bed.get("/o/local/a/x.txt", &revoked).await.status,
        StatusCode::OK
    );

    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    assert_eq!(
        admin(&bed.gw, get.clone(), None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        admin(
            &bed.gw,
            get.clone(),
            Some("wrong-token-0123456789abcdef"),
            None
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    let (s, body) = admin(
        &bed.gw,
        post.clone(),
        Some(ADMIN_TOKEN),
        Some(json!({"nope": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (s, body) = admin(
        &bed.gw,
        post.clone(),
        Some(ADMIN_TOKEN),
        Some(json!({"jti": "jti-1"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let issued_before = now() - 10;
    let (s, body) = admin(
        &bed.gw,
        post.clone(),
        Some(ADMIN_TOKEN),
        Some(json!({"sub": "bob", "issued_before": issued_before})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, list) = admin(&bed.gw, get.clone(), Some(ADMIN_TOKEN), None).await;
    assert_eq!(s, StatusCode::OK);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["jti"], json!(["jti-1"]));
    assert_eq!(list["sub"]["bob"], json!(issued_before));

    let bob_new = hs(&claims(json!({"sub": "bob", "iat": now()})));
    let check = async |gw: &TestGateway| {
        let get = |t: &String| {
            let auth = format!("Bearer {t}");
            let url = gw.url("/o/local/a/x.txt");
            let client = gw.anon_client_builder().build().unwrap();
            async move {
                send(&client, &url, &[("authorization", &auth)])
                    .await
                    .status
            }
        };
        assert_eq!(get(&revoked).await, StatusCode::UNAUTHORIZED, "revoked jti");
        assert_eq!(
            get(&bob_old).await,
            StatusCode::UNAUTHORIZED,
            "revoked subject"
        );
        assert_eq!(get(&kept).await, StatusCode::OK, "other jti");
        assert_eq!(get(&bob_new).await, StatusCode::OK, "subject's newer token");
    };
    check(&bed.gw).await;
    // A new gateway on the same state directory loads the revocations.
    bed.gw.take_gateway().shutdown().await;
    let restarted = start(
        bed._data.path(),
        bed.state.path(),
        Some(identity(&bed.keys)),
    )
    .await;
    check(&restarted).await;
}

#[tokio::test]
async fn admin_api_is_404_without_an_admin_token() {
    let (gw, _dir) = support::GatewayBuilder::new().start_fs("local").await;
    let (s, _) = admin(&gw, reqwest::Method::GET, Some(ADMIN_TOKEN), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn removed_key_refuses_its_tokens_in_the_new_gateway() {
    let bed = bed().await;
    let token = ed(&bed.keys, &claims(json!({})));
    assert_eq!(
        bed.get("/o/local/a/x.txt", &token).await.status,
        StatusCode::OK
    );
    let mut without = identity(&bed.keys);
    without.keys.retain(|k| k.kid != "ed");
    let gw = start(bed._data.path(), bed.state.path(), Some(without)).await;
    let auth = format!("Bearer {token}");
    let client = gw.anon_client_builder().build().unwrap();
    let r = send(
        &client,
        &gw.url("/o/local/a/x.txt"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn config_without_identity_refuses_every_object_request() {
    let data = tempfile::tempdir().unwrap();
    support::write_file(data.path(), "a/x.txt", b"x");
    let state = tempfile::tempdir().unwrap();
    let gw = start(data.path(), state.path(), None).await;
    let token = hs(&claims(json!({})));
    let auth = format!("Bearer {token}");
    let client = gw.anon_client_builder().build().unwrap();
    let r = send(
        &client,
        &gw.url("/o/local/a/x.txt"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

// ---- JWKS ----

/// A small real HTTPS server answering every request with the current JWKS document.
struct JwksServer {
    addr: SocketAddr,
    doc: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    ca_file: PathBuf,
    _dir: TempDir,
}

async fn jwks_server(doc: String) -> JwksServer {
    jwks_server_with_headers(doc, String::new()).await
}

/// [`jwks_server`], with `extra` (whole header lines) in every answer's head.
async fn jwks_server_with_headers(doc: String, extra: String) -> JwksServer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let ca_file = dir.path().join("idp-ca.pem");
    std::fs::write(&ca_file, cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let doc = Arc::new(Mutex::new(doc));
    let hits = Arc::new(AtomicUsize::new(0));
    let (d, h) = (Arc::clone(&doc), Arc::clone(&hits));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, d, h) = (acceptor.clone(), Arc::clone(&d), Arc::clone(&h));
            let extra = extra.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let body = d.lock().unwrap().clone();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    JwksServer {
        addr,
        doc,
        hits,
        ca_file,
        _dir: dir,
    }
}

fn jwk(kid: &str, key: &rcgen::KeyPair) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid, "x": b64(key.public_key_raw())})
}

/// Regression (issue 11): a JWKS answer with a 100 KiB header block (within hyper's default
/// 400 KiB) was read; over 64 KiB it is a broken fetch and none of its keys is trusted.
#[tokio::test]
async fn jwks_answer_with_an_oversized_header_block_is_refused() {
    let k1 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let doc = json!({"keys": [jwk("k1", &k1)]}).to_string();
    let base = json!({"sub": "u", "aud": TEST_AUDIENCE, "exp": now() + 600, "scope": ["local:"], "role": "reviewer"});
    let k = EncodingKey::from_ed_pem(k1.serialize_pem().as_bytes()).unwrap();
    let auth = format!("Bearer {}", sign(Algorithm::EdDSA, "k1", &k, &base));
    let data = tempfile::tempdir().unwrap();
    support::write_file(data.path(), "a/x.txt", b"a/x.txt");
    for (padding, want) in [(0, StatusCode::OK), (100 * 1024, StatusCode::UNAUTHORIZED)] {
        let extra = if padding == 0 {
            String::new()
        } else {
            format!("x-padding: {}\r\n", "p".repeat(padding))
        };
        let server = jwks_server_with_headers(doc.clone(), extra).await;
        let state = tempfile::tempdir().unwrap();
        let mut id = support::test_identity();
        id.jwks = Some(JwksConfig {
            url: format!("https://{}/jwks.json", server.addr)
                .parse()
                .unwrap(),
            ca_file: Some(server.ca_file.clone()),
            refresh_min_interval: Duration::from_secs(3600),
        });
        let gw = start(data.path(), state.path(), Some(id)).await;
        assert!(server.hits.load(Ordering::SeqCst) >= 1, "fetched at start");
        let client = gw.anon_client_builder().build().unwrap();
        let got = send(
            &client,
            &gw.url("/o/local/a/x.txt"),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(got.status, want, "{padding} bytes of padding");
    }
}

#[tokio::test]
async fn jwks_rotation_is_picked_up_on_an_unknown_kid_and_refresh_is_rate_limited() {
    let k1 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let k2 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let k3 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    // A symmetric key in a JWKS is never trusted.
    let oct = json!({"kty": "oct", "kid": "oct", "alg": "HS256", "k": b64(b"jwks-hmac-secret-0123456789abcdef")});
    let server = jwks_server(json!({"keys": [jwk("k1", &k1), oct]}).to_string()).await;
    let data = tempfile::tempdir().unwrap();
    support::write_file(data.path(), "a/x.txt", b"a/x.txt");
    let state = tempfile::tempdir().unwrap();
    let mut id = support::test_identity();
    id.jwks = Some(JwksConfig {
        url: format!("https://{}/jwks.json", server.addr)
            .parse()
            .unwrap(),
        ca_file: Some(server.ca_file.clone()),
        refresh_min_interval: Duration::from_secs(3600),
    });
    let gw = start(data.path(), state.path(), Some(id)).await;
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        1,
        "fetched once at start"
    );

    let base = json!({"sub": "u", "aud": TEST_AUDIENCE, "exp": now() + 600, "scope": ["local:"], "role": "reviewer"});
    let token = |kid: &str, kp: &rcgen::KeyPair| {
        let k = EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap();
        sign(Algorithm::EdDSA, kid, &k, &base)
    };
    let client = gw.anon_client_builder().build().unwrap();
    let url = gw.url("/o/local/a/x.txt");
    let status = async |t: String| {
        let auth = format!("Bearer {t}");
        send(&client, &url, &[("authorization", &auth)])
            .await
            .status
    };
    assert_eq!(status(token("k1", &k1)).await, StatusCode::OK);
    let oct_token = sign(
        Algorithm::HS256,
        "oct",
        &EncodingKey::from_secret(b"jwks-hmac-secret-0123456789abcdef"),
        &base,
    );

    // Rotation: k2 appears; the first token naming it triggers one refresh.
    *server.doc.lock().unwrap() = json!({"keys": [jwk("k1", &k1), jwk("k2", &k2)]}).to_string();
    assert_eq!(
        status(token("k2", &k2)).await,
        StatusCode::OK,
        "new kid after refresh"
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);

    // Within the interval no further fetch happens, whatever the tokens name.
    *server.doc.lock().unwrap() =
        json!({"keys": [jwk("k1", &k1), jwk("k2", &k2), jwk("k3", &k3)]}).to_string();
    assert_eq!(status(token("k3", &k3)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(token("zz", &k3)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(oct_token).await,
        StatusCode::UNAUTHORIZED,
        "oct key from JWKS"
    );
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        2,
        "refresh is rate-limited"
    );
    assert_eq!(status(token("k2", &k2)).await, StatusCode::OK);
}

#[tokio::test]
async fn cip_is_checked_against_the_client_a_trusted_proxy_forwarded() {
    let data = tempfile::tempdir().unwrap();
    for k in OBJECTS {
        support::write_file(data.path(), k, k.as_bytes());
    }
    let state = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let sources = BTreeMap::from([("local".to_string(), support::fs_source(data.path()))]);
    let ident = identity(&keys);
    let state_dir = state.path().to_path_buf();
    let gw = support::GatewayBuilder::new()
        .sources(sources)
        .tweak(move |c| {
            c.identity = Some(ident);
            c.admin.state_dir = state_dir;
            c.network.allow = vec![
                "127.0.0.0/8".parse().unwrap(),
                "203.0.113.0/24".parse().unwrap(),
            ];
            c.network.trusted_proxies = vec!["127.0.0.5/32".parse().unwrap()];
            policy(c);
        })
        .start()
        .await;
    let bound = hs(&claims(json!({"cip": "203.0.113.7/32"})));
    let auth = format!("Bearer {bound}");
    let url = gw.url("/o/local/a/x.txt");
    let from = |ip: &str| {
        gw.anon_client_builder()
            .local_address(ip.parse::<IpAddr>().unwrap())
            .build()
            .unwrap()
    };
    let proxy = from("127.0.0.5");
    let ok = send(
        &proxy,
        &url,
        &[("authorization", &auth), ("x-forwarded-for", "203.0.113.7")],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let other = send(
        &proxy,
        &url,
        &[("authorization", &auth), ("x-forwarded-for", "203.0.113.8")],
    )
    .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN, "{}", other.body);
    // The same header from a peer that is not a trusted proxy is ignored: the client is the peer.
    let spoofer = from("127.0.0.6");
    let spoofed = send(
        &spoofer,
        &url,
        &[("authorization", &auth), ("x-forwarded-for", "203.0.113.7")],
    )
    .await;
    assert_eq!(spoofed.status, StatusCode::FORBIDDEN, "{}", spoofed.body);
}
