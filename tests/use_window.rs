//! Signed URLs with a use window (issue 16), against the running gateway with an injected token
//! clock: the first use must come before `exp`; once used, the URL keeps working past `exp` while
//! it is used at least every `idle` seconds, up to `max` after the first use, from the first use's
//! client address (unless `bind: false`), and revocation ends it at once. A token that verified
//! but is past `exp` (or whose window lapsed) is answered `token_expired`; every other refusal
//! keeps the one generic 401. The `sign --idle/--max/--no-bind` flags and `explain`.
//!
//! Every window here lives in one gateway's memory; across nodes (the Redis store, issue 15) see
//! tests/cluster_saml.rs.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::support::{self, TEST_AUDIENCE, TEST_SECRET, TestGateway};
use bucketgate::config::{AuditDestination, Secret};
use bucketgate::credentials::ManualClock;
use bucketgate::tokens::{Grant, Signer, Target, Ttl, Window};
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tempfile::TempDir;

const ADMIN_TOKEN: &str = "admin-token-use-window-0123456789";
const KEY: &str = "videos/clip.mp4";
const BODY: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A gateway serving `videos/clip.mp4` whose token checks read `clock`.
struct Bed {
    gw: TestGateway,
    _data: TempDir,
    clock: ManualClock,
}

async fn bed_with(tweak: impl FnOnce(&mut bucketgate::config::Config)) -> Bed {
    let data = tempfile::tempdir().unwrap();
    support::write_file(data.path(), KEY, BODY);
    let clock = ManualClock::new();
    let gw = support::GatewayBuilder::new()
        .source("local", support::fs_source(data.path()))
        .tweak(|c| {
            c.admin.token = Some(Secret::new(ADMIN_TOKEN.to_owned()));
            tweak(c);
        })
        .token_clock(Arc::new(clock.clone()))
        .start()
        .await;
    Bed {
        gw,
        _data: data,
        clock,
    }
}

async fn bed() -> Bed {
    bed_with(|_| {}).await
}

impl Bed {
    /// Now on the injected clock, in unix seconds.
    fn now(&self) -> u64 {
        use bucketgate::credentials::Clock as _;
        self.clock
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    /// A client whose connections come from `addr` (127.0.0.x).
    fn from(&self, addr: &str) -> reqwest::Client {
        self.gw
            .anon_client_builder()
            .local_address(addr.parse::<IpAddr>().unwrap())
            .build()
            .unwrap()
    }

    /// GET the clip with `token` in the URL, as a video player's Range request, from `addr`.
    async fn get(&self, token: &str, addr: &str) -> Reply {
        let url = self.gw.url(&format!("/o/local/{KEY}?token={token}"));
        let resp = self
            .from(addr)
            .get(url)
            .header("range", "bytes=10-")
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let www_authenticate = header("www-authenticate");
        let request_id = header("x-request-id").unwrap_or_default();
        Reply {
            status,
            www_authenticate,
            request_id,
            body: resp.text().await.unwrap(),
        }
    }

    /// Claims for alice on the clip, issued now (on the injected clock), `exp` in `ttl` s;
    /// `extra` adds or overrides (null removes).
    fn claims(&self, ttl: u64, extra: Value) -> Value {
        let mut c = json!({
            "sub": "alice",
            "aud": TEST_AUDIENCE,
            "iat": self.now(),
            "exp": self.now() + ttl,
            "jti": uuid::Uuid::new_v4().simple().to_string(),
            "scope": [format!("local:exact/{KEY}")],
            "role": "annotator",
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    fn token(&self, ttl: u64, extra: Value) -> String {
        support::mint(&self.claims(ttl, extra))
    }
}

struct Reply {
    status: StatusCode,
    www_authenticate: Option<String>,
    request_id: String,
    body: String,
}

impl Reply {
    fn assert_served(&self, what: &str) {
        assert_eq!(
            self.status,
            StatusCode::PARTIAL_CONTENT,
            "{what}: {}",
            self.body
        );
        assert_eq!(self.body.as_bytes(), &BODY[10..], "{what}");
    }

    /// The error body without its request id.
    fn error(&self) -> Value {
        let mut v: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON: {e}: {}", self.body));
        assert_eq!(v["request_id"].as_str().unwrap().len(), 32, "{}", self.body);
        v.as_object_mut().unwrap().remove("request_id");
        v
    }

    fn assert_token_expired(&self, what: &str) {
        assert_eq!(
            self.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            self.body
        );
        assert_eq!(self.error(), json!({"error": "token_expired"}), "{what}");
        assert_eq!(
            self.www_authenticate.as_deref(),
            Some(r#"Bearer error="invalid_token", error_description="expired""#),
            "{what}"
        );
    }

    fn assert_generic_401(&self, what: &str) {
        assert_eq!(
            self.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            self.body
        );
        assert_eq!(self.error(), json!({"error": "unauthorized"}), "{what}");
        assert_eq!(self.www_authenticate.as_deref(), Some("Bearer"), "{what}");
    }
}

const ONE: &str = "127.0.0.1";
const TWO: &str = "127.0.0.2";

#[tokio::test]
async fn use_window_first_use_after_exp_is_token_expired() {
    let bed = bed().await;
    let window = bed.token(60, json!({"idle": 600, "max": 3600}));
    let plain = bed.token(60, json!({}));
    // exp (60 s) + the skew (30 s) has passed; neither was ever used.
    bed.advance(90);
    bed.get(&window, ONE)
        .await
        .assert_token_expired("window token never used before exp");
    bed.get(&plain, ONE)
        .await
        .assert_token_expired("plain token past exp");
    // Used once at the last moment, it would have started its window.
    let late = bed.token(0, json!({"idle": 600}));
    bed.advance(29);
    bed.get(&late, ONE)
        .await
        .assert_served("first use inside the skew");
    bed.advance(500);
    bed.get(&late, ONE)
        .await
        .assert_served("within idle, past exp");
}

#[tokio::test]
async fn use_window_continued_use_within_idle_is_accepted_past_exp_and_a_longer_gap_is_refused() {
    let bed = bed().await;
    let token = bed.token(60, json!({"idle": 60, "max": 3600}));
    bed.get(&token, ONE).await.assert_served("first use");
    // A labeler seeking every minute, long after exp (60 s + 30 s skew).
    for step in 1..=10 {
        bed.advance(60);
        bed.get(&token, ONE)
            .await
            .assert_served(&format!("seek {step}, a gap of exactly idle"));
    }
    bed.advance(61);
    bed.get(&token, ONE)
        .await
        .assert_token_expired("a gap longer than idle");
    // Refusals do not revive it.
    bed.advance(1);
    bed.get(&token, ONE)
        .await
        .assert_token_expired("still lapsed");
}

#[tokio::test]
async fn use_window_max_is_honoured_however_often_it_is_used() {
    let bed = bed().await;
    let token = bed.token(60, json!({"idle": 100, "max": 300}));
    bed.get(&token, ONE).await.assert_served("first use");
    for _ in 0..5 {
        bed.advance(50);
        bed.get(&token, ONE).await.assert_served("inside max");
    }
    bed.advance(49);
    bed.get(&token, ONE)
        .await
        .assert_served("299 s after the first use");
    bed.advance(1);
    bed.get(&token, ONE)
        .await
        .assert_token_expired("max seconds after the first use");
}

#[tokio::test]
async fn use_window_another_client_address_is_refused_unless_bind_is_false() {
    let bed = bed().await;
    let bound = bed.token(60, json!({"idle": 600}));
    bed.get(&bound, ONE)
        .await
        .assert_served("first use binds 127.0.0.1");
    bed.get(&bound, TWO)
        .await
        .assert_generic_401("another address, before exp");
    bed.advance(120);
    bed.get(&bound, TWO)
        .await
        .assert_generic_401("another address, past exp");
    bed.get(&bound, ONE)
        .await
        .assert_served("the bound address, past exp");
    // After a lapse the other address still gets the generic answer: it learns nothing.
    bed.advance(601);
    bed.get(&bound, TWO)
        .await
        .assert_generic_401("another address, lapsed window");
    bed.get(&bound, ONE)
        .await
        .assert_token_expired("the bound address, lapsed window");

    let free = bed.token(60, json!({"idle": 600, "bind": false}));
    bed.get(&free, ONE).await.assert_served("first use");
    bed.advance(120);
    bed.get(&free, TWO)
        .await
        .assert_served("bind: false, another address");
    bed.get(&free, ONE).await.assert_served("and the first one");
}

#[tokio::test]
async fn use_window_revocation_ends_it_at_once() {
    let bed = bed().await;
    let by_jti = bed.token(60, json!({"idle": 600, "jti": "window-jti-1"}));
    let by_sub = bed.token(60, json!({"idle": 600, "sub": "bob"}));
    for t in [&by_jti, &by_sub] {
        bed.get(t, ONE).await.assert_served("first use");
    }
    bed.advance(120);
    for t in [&by_jti, &by_sub] {
        bed.get(t, ONE).await.assert_served("live window past exp");
    }
    let admin = reqwest::Client::builder().no_proxy().build().unwrap();
    let issued_before = bed.now() + 1;
    for body in [
        json!({"jti": "window-jti-1"}),
        json!({"sub": "bob", "issued_before": issued_before}),
    ] {
        let resp = admin
            .post(bed.gw.admin_url("/admin/revocations"))
            .bearer_auth(ADMIN_TOKEN)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "{body}");
    }
    // No clock movement: the very next use is refused, with the generic answer.
    for (what, t) in [("revoked jti", &by_jti), ("revoked subject", &by_sub)] {
        bed.get(t, ONE).await.assert_generic_401(what);
    }
}

/// A token whose signature verifies and whose only fault is `exp` says so; a forged, unknown-kid
/// or wrong-audience token past the same `exp` gets the generic body, so `token_expired` is no
/// oracle for a forger.
#[tokio::test]
async fn token_expired_body_only_for_a_token_that_verifies() {
    let bed = bed().await;
    let expired = bed.claims(10, json!({"idle": 600}));
    let good = support::mint(&expired);
    let sign_with = |kid: &str, secret: &[u8], claims: &Value| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
    };
    let forged = sign_with(
        support::TEST_KID,
        b"not-the-test-secret-0123456789abcdef",
        &expired,
    );
    let unknown_kid = sign_with("nope", TEST_SECRET.as_bytes(), &expired);
    let mut other_aud = expired.clone();
    other_aud["aud"] = json!("someone-else");
    let wrong_aud = support::mint(&other_aud);
    let mut bad_scope = expired.clone();
    bad_scope["scope"] = json!(["local"]);
    let malformed_claims = support::mint(&bad_scope);
    bed.advance(60);
    bed.get(&good, ONE)
        .await
        .assert_token_expired("good signature");
    for (what, t) in [
        ("bad signature", forged),
        ("unknown kid", unknown_kid),
        ("wrong aud", wrong_aud),
        ("malformed claims", malformed_claims),
        ("garbage", "not-a-jwt".to_owned()),
    ] {
        bed.get(&t, ONE).await.assert_generic_401(what);
    }
}

/// An admin can tell, from the audit log, why a token was refused: `token_expired` (with the
/// window's reason when one lapsed) or `use_window` (another address), apart from `identity`.
#[tokio::test]
async fn use_window_refusals_are_audited_by_reason() {
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("audit.log");
    let path = log_path.clone();
    let mut bed = bed_with(move |c| {
        c.audit.destination = AuditDestination::File {
            path,
            max_bytes: 10 * 1024 * 1024,
            keep: 1,
        };
    })
    .await;
    let plain = bed.token(10, json!({}));
    let window = bed.token(10, json!({"idle": 60, "max": 600}));
    let mut expected = Vec::new();
    let first = bed.get(&window, ONE).await;
    first.assert_served("first use");
    expected.push((first.request_id, 206, "allow", None));
    bed.advance(50);
    let elsewhere = bed.get(&window, TWO).await;
    elsewhere.assert_generic_401("another address");
    expected.push((
        elsewhere.request_id,
        401,
        "deny",
        Some("use_window: other client address"),
    ));
    let expired = bed.get(&plain, ONE).await;
    expired.assert_token_expired("plain token past exp");
    expected.push((expired.request_id, 401, "deny", Some("token_expired")));
    bed.advance(61);
    let lapsed = bed.get(&window, ONE).await;
    lapsed.assert_token_expired("idle gap");
    expected.push((
        lapsed.request_id,
        401,
        "deny",
        Some("token_expired: use_window idle"),
    ));
    let bad = bed.get("not-a-jwt", ONE).await;
    expected.push((bad.request_id, 401, "deny", Some("identity")));

    bed.gw.take_gateway().shutdown().await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    for (id, status, decision, rule) in expected {
        let rec: Value = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|v| v["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no record for {id}:\n{text}"));
        assert_eq!(rec["status"], status, "{rec}");
        assert_eq!(rec["decision"], decision, "{rec}");
        if let Some(rule) = rule {
            assert_eq!(rec["rule"], rule, "{rec}");
        }
        assert!(!text.contains(&window), "the token itself is never logged");
    }
}

/// The gateway's own minting (what `sign --idle` calls) makes URLs the gateway honours.
#[tokio::test]
async fn use_window_minted_by_the_gateways_signer_is_honoured() {
    let bed = bed().await;
    let signer = Signer::hs256(
        support::TEST_KID,
        &Secret::new(TEST_SECRET.to_owned()),
        TEST_AUDIENCE,
        None,
    );
    let grant = Grant {
        source: "local".into(),
        target: Target::key(KEY).unwrap(),
        ttl: Ttl::For(Duration::from_secs(60)),
        subject: "alice".into(),
        role: "annotator".into(),
        project: None,
        cip: None,
        rep: Vec::new(),
    };
    let window = Window {
        idle: Duration::from_secs(600),
        max: Some(Duration::from_secs(8 * 3600)),
        bind: true,
    };
    use bucketgate::credentials::Clock as _;
    let token = signer
        .mint_with_window(&grant, Some(window), bed.clock.now())
        .unwrap();
    bed.get(&token, ONE).await.assert_served("first use");
    bed.advance(3600);
    // Idle is 10 minutes: an hour of silence ends it; steady use would not have.
    bed.get(&token, ONE)
        .await
        .assert_token_expired("an hour idle");
}

fn bucketgate(cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bucketgate"))
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("run bucketgate")
}

/// `sign --idle 10m --max 8h --no-bind` writes the claims; nonsense is refused; `explain` says the
/// window.
#[test]
fn cli_sign_with_a_use_window_writes_idle_max_bind_and_explain_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let args = [
        "sign",
        "--source",
        "local",
        "--key",
        "v.mp4",
        "--ttl",
        "5m",
        "--idle",
        "10m",
        "--max",
        "8h",
        "--no-bind",
    ];
    let out = bucketgate(root, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap();
    let token = url.trim().split_once("?token=").unwrap().1.to_owned();
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["idle"], 600, "{claims}");
    assert_eq!(claims["max"], 28_800, "{claims}");
    assert_eq!(claims["bind"], false, "{claims}");
    let exp = claims["exp"].as_u64().unwrap();
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(exp - iat, 300);

    for (bad, says) in [
        (vec!["--idle", "2h", "--max", "1h"], "longer than --max"),
        (vec!["--idle", "10m", "--max", "13h"], "use_window_max_secs"),
        (vec!["--max", "1h"], "--idle"),
        (vec!["--no-bind"], "--idle"),
        (vec!["--idle", "0s"], "positive"),
    ] {
        let mut args = vec!["sign", "--source", "local", "--key", "v.mp4"];
        args.extend(bad.iter().copied());
        let out = bucketgate(root, &args);
        assert!(!out.status.success(), "{bad:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{bad:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{bad:?}");
    }

    // `explain` (the embedded default's key, in the same directory) names the window.
    std::fs::create_dir_all(root.join("data")).unwrap();
    let bound = bucketgate(
        root,
        &[
            "token", "--source", "local", "--key", "v.mp4", "--idle", "10m",
        ],
    );
    assert!(bound.status.success());
    let bound = String::from_utf8(bound.stdout).unwrap();
    let config = bucketgate::app::embedded_config(root).unwrap();
    let mut file = String::new();
    file.push_str(&format!(
        "[listener]\naddr = \"127.0.0.1:0\"\ndev_certificate_dir = \".bucketgate\"\n\
         [network]\nallow = [\"127.0.0.0/8\"]\n\
         [sources.local]\nkind = \"fs\"\nroot = \"data\"\n\
         [identity]\naudience = \"bucketgate\"\n\
         [[identity.keys]]\nkid = \"{}\"\nalg = \"HS256\"\nsecret = \"file:.bucketgate/dev-hs256.key\"\n",
        config.identity.as_ref().unwrap().keys[0].kid
    ));
    std::fs::write(root.join("config.toml"), file).unwrap();
    let out = bucketgate(
        root,
        &[
            "explain",
            "--config",
            "config.toml",
            "--peer",
            "127.0.0.1",
            "--token",
            bound.trim(),
            "/o/local/v.mp4",
        ],
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("use window: first use needed before exp"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("at least every 600 s, for at most 43200 s after the first use"),
        "{stdout}"
    );
    assert!(
        stdout.contains("from the first use's client address only"),
        "{stdout}"
    );
}
