//! SAML state and use windows shared by several nodes through Redis (issue 15): two gateways on
//! one real `redis-server` (support/redis.rs), one test IdP (signxml) and one moto STS. A session
//! made on one node works on the other, a logout on either ends it everywhere, an assertion is
//! accepted once across nodes, a login started on one node completes on the other, a use
//! window started on one node is bound on the other. Redis stopped by PID: new logins 503,
//! existing sessions keep working from each node's local copy, recovery without a restart.
//! Redis holds nothing usable (looked at raw), and hostile values in it are "down", never an
//! allow or a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bucketgate::config::{
    Config, ProjectConfig, RedisConfig, RoleChoice, S3Credentials, SamlConfig, SamlIdpConfig,
    SamlRoleRule, SealKey, SourceConfig, StsConfig,
};
use bucketgate::credentials::ManualClock;
use bucketgate::identity::Scope;
use bucketgate::pipeline::auth::{LOGIN_COOKIE, SESSION_COOKIE};
use http::StatusCode;
use http::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::support::redis::RedisServer;
use crate::support::saml::{TestIdp, authn_request_id, form_encode};
use crate::support::sts::MotoIam;
use crate::support::{self, TestGateway};

const BUCKET: &str = "assets";
const SP_ENTITY_ID: &str = "https://gateway.test/saml";
const PROJECT: &str = "labeling";
const PREFIX: &str = "bgtest";
const SEAL: [u8; 32] = [0x5e; 32];

fn redis_config(redis: &RedisServer) -> RedisConfig {
    RedisConfig {
        url: redis.plain_url(),
        ca_file: None,
        username: None,
        password: None,
        prefix: PREFIX.to_owned(),
        connect_timeout: Duration::from_millis(500),
        command_timeout: Duration::from_millis(500),
        connections: 2,
        node_name: "node".to_owned(),
        sync_interval: Duration::from_millis(200),
        refuse_tokens_issued_during_outage: false,
        seal_key: Some(SealKey(SEAL)),
        expected_nodes: 2,
    }
}

/// A raw connection to the test Redis (what an operator, or an attacker with Redis access, sees).
async fn raw(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.plain_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Two gateway nodes on one Redis, behind one public ACS URL (node A's), one IdP, one moto.
struct Cluster {
    a: TestGateway,
    b: TestGateway,
    saml: SamlConfig,
    redis: RedisServer,
    idp: &'static TestIdp,
    _moto: MotoIam,
    clock: ManualClock,
    provider_arn: String,
    labeler: String,
}

impl Cluster {
    async fn start() -> Cluster {
        let redis = RedisServer::start().await;
        let idp = tokio::task::spawn_blocking(TestIdp::shared).await.unwrap();
        let moto = MotoIam::start().await;
        let metadata = format!("<EntityDescriptor>{}</EntityDescriptor>", idp.entity_id);
        let provider_arn = moto.create_saml_provider("Corp", &metadata).await;
        let labels = format!("arn:aws:s3:::{BUCKET}/labels/*");
        let labeler = moto
            .create_role(
                "Labeler",
                crate::support::sts::Trust::Saml {
                    provider_arn: &provider_arn,
                },
                &[&labels],
            )
            .await;
        moto.create_bucket(BUCKET).await;
        moto.put(BUCKET, "labels/a.txt", b"label a\n", Some("text/plain"))
            .await;
        let clock = ManualClock::new();
        let source = SourceConfig::S3(moto.source(BUCKET, "", S3Credentials::Saml));
        let sts = StsConfig {
            endpoint: Some(moto.sts_endpoint()),
            timeout: Duration::from_secs(5),
            ..StsConfig::default()
        };
        let node = || {
            let mut config: Option<Config> = None;
            let builder = support::GatewayBuilder::new()
                .source(BUCKET, source.clone())
                .tweak(|cfg| {
                    cfg.projects.insert(
                        PROJECT.to_owned(),
                        ProjectConfig {
                            sources: vec![Scope::parse("assets:").unwrap()],
                        },
                    );
                    cfg.sts = sts.clone();
                    cfg.redis = Some(redis_config(&redis));
                    config = Some(cfg.clone());
                })
                .credentials_clock(Arc::new(clock.clone()));
            (builder, config)
        };
        let (builder_a, config_a) = node();
        let a = builder_a.start().await;
        let (builder_b, config_b) = node();
        let b = builder_b.start().await;
        // [saml] names node A's port (the public URL both nodes sit behind): added by reload.
        let saml = SamlConfig {
            sp_entity_id: SP_ENTITY_ID.to_owned(),
            acs_url: a.url("/auth/saml/acs"),
            max_session: Duration::from_secs(8 * 3600),
            max_response_age: Duration::from_secs(300),
            login_cookie_key: None,
            idp: SamlIdpConfig {
                entity_id: idp.entity_id.clone(),
                sso_url: idp.sso_url.clone(),
                certificates: vec![idp.cert_der.clone()],
                allow_idp_initiated: false,
                clock_skew: Duration::from_secs(60),
                role_choice: RoleChoice::First,
                roles: vec![SamlRoleRule {
                    role_arn: labeler.clone(),
                    provider_arn: provider_arn.clone(),
                    gateway_role: "annotator".to_owned(),
                    project: PROJECT.to_owned(),
                }],
            },
        };
        for (gw, config) in [(&a, config_a), (&b, config_b)] {
            let mut config = config.unwrap();
            config.saml = Some(saml.clone());
            gw.gateway().reload(config).await.unwrap();
        }
        Cluster {
            a,
            b,
            saml,
            redis,
            idp,
            _moto: moto,
            clock,
            provider_arn,
            labeler,
        }
    }

    fn client(gw: &TestGateway) -> reqwest::Client {
        gw.anon_client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    /// `GET /auth/saml/login` on `gw`: (the AuthnRequest id, the login cookie), or the status.
    async fn start_login(&self, gw: &TestGateway) -> Result<(String, String), StatusCode> {
        self.clock.set(SystemTime::now());
        let resp = Self::client(gw)
            .get(gw.url("/auth/saml/login?return_to=/ui/"))
            .send()
            .await
            .unwrap();
        if resp.status() != StatusCode::FOUND {
            return Err(resp.status());
        }
        let location = resp.headers()[LOCATION].to_str().unwrap().to_owned();
        let cookie = set_cookies(&resp)[LOGIN_COOKIE].clone();
        Ok((authn_request_id(&location), cookie))
    }

    /// A signed response for alice answering `request_id`.
    async fn response(&self, request_id: &str) -> String {
        let spec = json!({
            "audience": SP_ENTITY_ID,
            "recipient": self.a.url("/auth/saml/acs"),
            "name_id": "alice@corp.example",
            "roles": [[self.labeler, self.provider_arn]],
            "role_session_name": "alice",
            "in_response_to": request_id,
        });
        self.idp.response(&spec).await
    }

    async fn post_acs(&self, gw: &TestGateway, response: &str, cookie: &str) -> reqwest::Response {
        let body = format!("SAMLResponse={}", form_encode(response));
        Self::client(gw)
            .post(gw.url("/auth/saml/acs"))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(COOKIE, format!("{LOGIN_COOKIE}={cookie}"))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// A login started on `start` and completed on `finish`: the ACS answer.
    async fn login(&self, start: &TestGateway, finish: &TestGateway) -> reqwest::Response {
        let (request_id, cookie) = self.start_login(start).await.unwrap();
        let response = self.response(&request_id).await;
        self.post_acs(finish, &response, &cookie).await
    }

    /// A login started on A and completed on B: the session cookie.
    async fn sign_in(&self) -> String {
        let resp = self.login(&self.a, &self.b).await;
        let status = resp.status();
        assert_eq!(
            status,
            StatusCode::SEE_OTHER,
            "{}",
            resp.text().await.unwrap()
        );
        set_cookies(&resp)[SESSION_COOKIE].clone()
    }

    /// An object read on `gw` with `session`: (status, body).
    async fn read(&self, gw: &TestGateway, session: &str) -> (StatusCode, String) {
        let resp = Self::client(gw)
            .get(gw.url(&format!("/o/{BUCKET}/labels/a.txt")))
            .header(COOKIE, format!("{SESSION_COOKIE}={session}"))
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    async fn logout(&self, gw: &TestGateway, session: &str) -> StatusCode {
        Self::client(gw)
            .post(gw.url("/auth/logout"))
            .header(COOKIE, format!("{SESSION_COOKIE}={session}"))
            .send()
            .await
            .unwrap()
            .status()
    }
}

async fn readyz(gw: &TestGateway) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `name -> value` of every Set-Cookie.
fn set_cookies(resp: &reqwest::Response) -> BTreeMap<String, String> {
    resp.headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| {
            let text = v.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// The Redis key of a session cookie: `{prefix}:v1:session:{hex SHA-256 of the id's bytes}`.
fn session_key(cookie: &str) -> String {
    let raw = hex::decode(cookie).unwrap();
    format!("{PREFIX}:v1:session:{}", hex::encode(Sha256::digest(&raw)))
}

#[tokio::test]
async fn a_session_made_on_one_node_works_on_the_other_and_a_logout_on_either_ends_it() {
    let c = Cluster::start().await;
    // Started on A, completed on B: the login cookie's key is shared.
    let session = c.sign_in().await;
    // B made it; A (which never saw it) reads with it.
    assert_eq!(
        c.read(&c.a, &session).await,
        (StatusCode::OK, "label a\n".to_owned())
    );
    assert_eq!(c.read(&c.b, &session).await.0, StatusCode::OK);
    // A second session, used on both, logged out on B: refused on A at once (no local copy
    // outlives a logout while Redis answers).
    let other = c.sign_in().await;
    assert_eq!(c.read(&c.a, &other).await.0, StatusCode::OK);
    assert_eq!(c.logout(&c.b, &other).await, StatusCode::NO_CONTENT);
    assert_eq!(c.read(&c.a, &other).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(c.read(&c.b, &other).await.0, StatusCode::UNAUTHORIZED);
    // The first one is untouched; logged out on A, it is refused on B.
    assert_eq!(c.read(&c.b, &session).await.0, StatusCode::OK);
    assert_eq!(c.logout(&c.a, &session).await, StatusCode::NO_CONTENT);
    assert_eq!(c.read(&c.b, &session).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_assertion_accepted_on_one_node_is_refused_on_the_other() {
    let c = Cluster::start().await;
    let (request_id, cookie) = c.start_login(&c.a).await.unwrap();
    let response = c.response(&request_id).await;
    assert_eq!(
        c.post_acs(&c.a, &response, &cookie).await.status(),
        StatusCode::SEE_OTHER
    );
    let replay = c.post_acs(&c.b, &response, &cookie).await;
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    assert!(
        !set_cookies(&replay).contains_key(SESSION_COOKIE),
        "no session from a replay"
    );
    // And the other way round, with a fresh login.
    let (request_id, cookie) = c.start_login(&c.b).await.unwrap();
    let response = c.response(&request_id).await;
    assert_eq!(
        c.post_acs(&c.b, &response, &cookie).await.status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        c.post_acs(&c.a, &response, &cookie).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn redis_holds_no_credential_token_or_session_id_in_the_clear() {
    let c = Cluster::start().await;
    let session = c.sign_in().await;
    assert_eq!(c.read(&c.a, &session).await.0, StatusCode::OK);
    let mut conn = raw(&c.redis).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let kinds: Vec<&str> = keys.iter().map(|k| k.split(':').nth(2).unwrap()).collect();
    for kind in ["session", "replay", "saml-login-key"] {
        assert!(kinds.contains(&kind), "{kind} in {keys:?}");
    }
    assert!(keys.contains(&session_key(&session)), "sessions by id hash");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(session_key(&session))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 8 * 3600 * 1000,
        "a session expires with its end: {ttl}"
    );
    let mut everything = keys.join("\n").into_bytes();
    for key in &keys {
        // Keys of other stores (revocations, the cluster table) may be of other types.
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let read = match kind.as_str() {
            "string" => redis::cmd("GET").arg(key).clone(),
            "hash" => redis::cmd("HGETALL").arg(key).clone(),
            "set" => redis::cmd("SMEMBERS").arg(key).clone(),
            "zset" => redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).clone(),
            "list" => redis::cmd("LRANGE").arg(key).arg(0).arg(-1).clone(),
            other => panic!("{key}: a {other}"),
        };
        let value: redis::Value = read.query_async(&mut conn).await.unwrap();
        everything.extend_from_slice(format!("{value:?}").as_bytes());
        if let redis::Value::BulkString(bytes) = value {
            everything.extend_from_slice(&bytes);
        }
    }
    // moto's STS keys start ASIA; the assumed-role ARN names the role and the session name.
    for secret in [
        session.as_str(),
        "ASIA",
        "alice",
        "Labeler",
        "assumed-role",
        "annotator",
    ] {
        assert!(
            !everything
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "{secret} found in redis"
        );
    }
}

#[tokio::test]
async fn hostile_values_in_redis_are_down_for_that_lookup_never_an_allow() {
    let c = Cluster::start().await;
    let session = c.sign_in().await;
    let other = c.sign_in().await;
    let mut conn = raw(&c.redis).await;
    let key = session_key(&session);
    let good: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let other_value: Vec<u8> = redis::cmd("GET")
        .arg(session_key(&other))
        .query_async(&mut conn)
        .await
        .unwrap();
    // Sealed under another seal key, for this very Redis key, with a plausible content.
    let foreign = bucketgate::state::redis::seal::SealKey::new(&[0x11; 32])
        .unwrap()
        .seal(&key, br#"{"subject":"x"}"#)
        .unwrap();
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let set = |value: Vec<u8>| redis::cmd("SET").arg(&key).arg(value).clone();
    let cases: Vec<(&str, redis::Cmd)> = vec![
        ("garbage", set(b"garbage \xff\x00".to_vec())),
        ("truncated", set(good[..good.len() / 2].to_vec())),
        ("one bit flipped", set(flipped)),
        ("another session's value", set(other_value)),
        ("empty", set(Vec::new())),
        (
            "a hash",
            redis::cmd("HSET").arg(&key).arg("f").arg("v").clone(),
        ),
        ("a list", redis::cmd("LPUSH").arg(&key).arg("v").clone()),
    ];
    // B completed the login (it holds a local copy); A never saw this session.
    for (what, cmd) in cases {
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: redis::Value = cmd.query_async(&mut conn).await.unwrap();
        let (status, _) = c.read(&c.a, &session).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what}: a node with no copy cannot tell (fail closed)"
        );
        let info = Cluster::client(&c.a)
            .get(c.a.url("/auth/session"))
            .header(COOKIE, format!("{SESSION_COOKIE}={session}"))
            .send()
            .await
            .unwrap();
        assert_eq!(info.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
        // B holds its own copy of the session, which stands in as it does while Redis is down.
        assert_eq!(c.read(&c.b, &session).await.0, StatusCode::OK, "{what}");
    }
    // Sealed under another seal_key (what every session is after a change of it): absent,
    // sign in again (401), on both nodes; B drops its copy.
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(foreign)
        .query_async(&mut conn)
        .await
        .unwrap();
    for gw in [&c.a, &c.b] {
        assert_eq!(c.read(gw, &session).await.0, StatusCode::UNAUTHORIZED);
    }
    // The real value back: both read again.
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(good)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(c.read(&c.a, &session).await.0, StatusCode::OK);
    assert_eq!(c.read(&c.b, &session).await.0, StatusCode::OK);

    // A login-cookie key that does not open: a node that has none yet refuses logins (503);
    // nothing is overwritten.
    let seal_id = bucketgate::state::redis::seal::SealKey::new(&SEAL)
        .unwrap()
        .id_hex();
    let login_key = format!("{PREFIX}:v1:saml-login-key:{seal_id}");
    let _: () = redis::cmd("SET")
        .arg(&login_key)
        .arg("garbage")
        .query_async(&mut conn)
        .await
        .unwrap();
    let fresh = c.third_node().await;
    assert_eq!(
        c.start_login(&fresh).await.err(),
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
    let still: Vec<u8> = redis::cmd("GET")
        .arg(&login_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(still, b"garbage");
    // A replay-cache key of the wrong type: that assertion's login is refused with a 503.
    let (request_id, cookie) = c.start_login(&c.a).await.unwrap();
    let response = c.response(&request_id).await;
    let request_key = format!(
        "{PREFIX}:v1:replay:{}",
        hex::encode(Sha256::digest(format!("request {request_id}").as_bytes()))
    );
    let _: () = redis::cmd("HSET")
        .arg(&request_key)
        .arg("f")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    // The assertion id is fresh (it passes); the login request's id meets the hash.
    let resp = c.post_acs(&c.a, &response, &cookie).await;
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "SET NX on a hash key is nil: replay"
    );
}

impl Cluster {
    /// A third node on the same Redis with the same [saml], never used before.
    async fn third_node(&self) -> TestGateway {
        let mut captured = None;
        let gw = support::GatewayBuilder::new()
            .tweak(|cfg| {
                cfg.redis = Some(redis_config(&self.redis));
                captured = Some(cfg.clone());
            })
            .credentials_clock(Arc::new(self.clock.clone()))
            .start()
            .await;
        let mut config = captured.unwrap();
        config.saml = Some(self.saml.clone());
        gw.gateway().reload(config).await.unwrap();
        gw
    }
}

#[tokio::test]
async fn redis_stopped_new_logins_503_sessions_work_from_local_copies_and_it_recovers() {
    let mut c = Cluster::start().await;
    let session = c.sign_in().await;
    // Both nodes have looked it up (B made it; A reads it once).
    assert_eq!(c.read(&c.a, &session).await.0, StatusCode::OK);
    let also = c.sign_in().await;
    assert_eq!(c.read(&c.a, &also).await.0, StatusCode::OK);
    let (request_id, cookie) = c.start_login(&c.a).await.unwrap();
    let pending = c.response(&request_id).await;

    c.redis.stop();
    // A new login: refused with a 503 (a replay cannot be ruled out), not a 401.
    let resp = c.post_acs(&c.b, &pending, &cookie).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!set_cookies(&resp).contains_key(SESSION_COOKIE));
    // Existing sessions: from each node's local copy.
    for gw in [&c.a, &c.b] {
        assert_eq!(
            c.read(gw, &session).await,
            (StatusCode::OK, "label a\n".to_owned())
        );
    }
    // `/readyz` says which fallback is in use (and stays ready).
    let ready = readyz(&c.b).await;
    assert!(
        ready.contains("saml sessions: degraded (local copies; new logins refused)"),
        "{ready}"
    );
    // A logout during the outage ends it on that node at once.
    assert_eq!(c.logout(&c.a, &also).await, StatusCode::NO_CONTENT);
    assert_eq!(c.read(&c.a, &also).await.0, StatusCode::UNAUTHORIZED);
    // A session neither node has seen: 503 (it cannot be checked), never an allow.
    let unknown = "ab".repeat(32);
    assert_eq!(
        c.read(&c.a, &unknown).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // The local copy lasts until the session's end (its credentials' at the latest), no longer.
    c.clock.advance(Duration::from_secs(8 * 3600 + 1));
    assert_eq!(c.read(&c.b, &session).await.0, StatusCode::UNAUTHORIZED);

    // Back (empty: this Redis keeps no data): logins work again without a restart.
    c.redis.restart().await;
    let session_after = support::eventually(
        "a login after redis returns",
        50,
        Duration::from_millis(100),
        || async {
            let resp = c.login(&c.a, &c.b).await;
            (resp.status() == StatusCode::SEE_OTHER)
                .then(|| set_cookies(&resp)[SESSION_COOKIE].clone())
        },
    )
    .await;
    // A's connections reconnect on their first command after the outage (B's already did).
    support::eventually(
        "the new session on A",
        50,
        Duration::from_millis(100),
        || async { (c.read(&c.a, &session_after).await.0 == StatusCode::OK).then_some(()) },
    )
    .await;
    assert!(readyz(&c.a).await.contains("saml sessions: ok"));
    // The sessions Redis lost are over (an absent key cannot be told from a logout).
    assert_eq!(c.read(&c.a, &session).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_use_window_started_on_one_node_is_bound_on_the_other() {
    let redis = RedisServer::start().await;
    let data = tempfile::tempdir().unwrap();
    support::write_file(data.path(), "clip.mp4", b"0123456789");
    let clock = ManualClock::new();
    let node = || {
        support::GatewayBuilder::new()
            .source("local", support::fs_source(data.path()))
            .tweak(|cfg| {
                cfg.redis = Some(RedisConfig {
                    seal_key: None,
                    ..redis_config(&redis)
                })
            })
            .token_clock(Arc::new(clock.clone()))
            .start()
    };
    let a = node().await;
    let b = node().await;
    let now = {
        use bucketgate::credentials::Clock as _;
        clock.now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    };
    let token = support::mint(&json!({
        "sub": "alice",
        "aud": support::TEST_AUDIENCE,
        "iat": now,
        "exp": now + 60,
        "scope": ["local:exact/clip.mp4"],
        "role": "annotator",
        "idle": 30,
        "max": 600,
    }));
    let get = |gw: &TestGateway, from: &str| {
        let client = gw
            .anon_client_builder()
            .local_address(from.parse::<IpAddr>().unwrap())
            .build()
            .unwrap();
        let url = gw.url(&format!("/o/local/clip.mp4?token={token}"));
        async move { client.get(url).send().await.unwrap().status() }
    };
    assert_eq!(get(&a, "127.0.0.1").await, StatusCode::OK, "first use on A");
    assert_eq!(
        get(&b, "127.0.0.2").await,
        StatusCode::UNAUTHORIZED,
        "bound to A's client on B"
    );
    clock.advance(Duration::from_secs(25));
    assert_eq!(get(&b, "127.0.0.1").await, StatusCode::OK, "continued on B");
    // Past exp: alive only because the window continued (on either node).
    clock.advance(Duration::from_secs(25));
    assert_eq!(get(&a, "127.0.0.1").await, StatusCode::OK, "past exp on A");
    clock.advance(Duration::from_secs(31));
    assert_eq!(
        get(&b, "127.0.0.1").await,
        StatusCode::UNAUTHORIZED,
        "idle lapsed"
    );

    // The entry in Redis: by the token's hash, never the token; a broken one is refused (503).
    let mut conn = raw(&redis).await;
    let key = format!(
        "{PREFIX}:v1:window:{}",
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    let entry: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        entry.starts_with("w1 ") && entry.ends_with(" 127.0.0.1"),
        "{entry}"
    );
    let fresh = support::mint(&json!({
        "sub": "bob",
        "aud": support::TEST_AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "scope": ["local:exact/clip.mp4"],
        "role": "annotator",
        "idle": 30,
    }));
    let fresh_key = format!(
        "{PREFIX}:v1:window:{}",
        hex::encode(Sha256::digest(fresh.as_bytes()))
    );
    for (what, cmd) in [
        (
            "garbage",
            redis::cmd("SET").arg(&fresh_key).arg("w1 x y").clone(),
        ),
        (
            "a hash",
            redis::cmd("HSET").arg(&fresh_key).arg("f").arg("v").clone(),
        ),
    ] {
        let _: () = redis::cmd("DEL")
            .arg(&fresh_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: redis::Value = cmd.query_async(&mut conn).await.unwrap();
        let client = a.anon_client_builder().build().unwrap();
        let status = client
            .get(a.url(&format!("/o/local/clip.mp4?token={fresh}")))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}");
    }
    assert!(readyz(&a).await.contains("use windows: ok"));
    // Redis down: window tokens are refused (503) on both nodes.
    let _: () = redis::cmd("DEL")
        .arg(&fresh_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut redis = redis;
    redis.stop();
    for gw in [&a, &b] {
        let client = gw.anon_client_builder().build().unwrap();
        let status = client
            .get(gw.url(&format!("/o/local/clip.mp4?token={fresh}")))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let ready = readyz(&b).await;
    assert!(
        ready.contains("use windows: degraded (window tokens refused)"),
        "{ready}"
    );
    redis.restart().await;
    support::eventually(
        "a window token after redis returns",
        50,
        Duration::from_millis(100),
        || {
            let client = a.anon_client_builder().build().unwrap();
            let url = a.url(&format!("/o/local/clip.mp4?token={fresh}"));
            async move {
                (client.get(url).send().await.unwrap().status() == StatusCode::OK).then_some(())
            }
        },
    )
    .await;
}

/// A client of the test Redis, as the gateway builds it.
fn client(redis: &RedisServer, prefix: &str) -> Arc<bucketgate::state::redis::Redis> {
    client_at(&redis.plain_url(), prefix)
}

fn client_at(url: &str, prefix: &str) -> Arc<bucketgate::state::redis::Redis> {
    use bucketgate::state::redis::{Redis, RedisSettings};
    Arc::new(
        Redis::connect(&RedisSettings {
            url: url.to_owned(),
            ca_pem: None,
            password: None,
            username: None,
            prefix: prefix.to_owned(),
            connect_timeout: Duration::from_millis(500),
            command_timeout: Duration::from_millis(500),
            connections: 2,
        })
        .unwrap(),
    )
}

#[tokio::test]
async fn concurrent_first_uses_of_one_assertion_on_many_nodes_admit_exactly_one() {
    use bucketgate::saml::replay::SharedReplayCache as _;
    use bucketgate::state::redis::replay::RedisReplayCache;
    let redis = RedisServer::start().await;
    let nodes: Vec<Arc<RedisReplayCache>> = (0..4)
        .map(|_| Arc::new(RedisReplayCache::new(client(&redis, PREFIX))))
        .collect();
    let now = SystemTime::now();
    let until = now + Duration::from_secs(300);
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let node = Arc::clone(&nodes[i % nodes.len()]);
            tokio::spawn(async move { node.first_use("_assertion", until, now).await })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 1);
    // Another deployment's prefix on the same Redis does not see it.
    let other = RedisReplayCache::new(client(&redis, "other"));
    assert_eq!(other.first_use("_assertion", until, now).await, Ok(true));
    // Kept until the assertion expires (PX), hashed.
    let mut conn = raw(&redis).await;
    let key = nodes[0].redis_key("_assertion");
    assert!(!key.contains("_assertion"), "{key}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 290_000 && ttl <= 300_000, "{ttl}");
    // Down: unknown, never a yes.
    let mut redis = redis;
    redis.stop();
    assert!(nodes[0].first_use("_new", until, now).await.is_err());
}

#[tokio::test]
async fn the_shared_login_key_is_made_once_and_rotates_by_deleting_it() {
    use bucketgate::saml::login_cookie::SharedLoginKey as _;
    use bucketgate::state::redis::login_key::RedisLoginKey;
    use bucketgate::state::redis::seal::SealKey as Seal;
    let redis = RedisServer::start().await;
    let seal = Arc::new(Seal::new(&SEAL).unwrap());
    let url = redis.plain_url();
    let node = || {
        RedisLoginKey::new(client_at(&url, PREFIX), Arc::clone(&seal)).with_refresh(Duration::ZERO)
    };
    let (a, b) = (node(), node());
    // Both ask at once: one creates it, both use the same.
    let (ka, kb) = tokio::join!(a.keys(), b.keys());
    let (ka, kb) = (ka.unwrap(), kb.unwrap());
    let now = SystemTime::now();
    let sealed_a = ka.seal("_r1", "/ui/", now);
    assert_eq!(kb.open(&sealed_a, now).unwrap().request_id, "_r1");
    // Sealed in Redis: the raw value is no HMAC key anyone can use.
    let mut conn = raw(&redis).await;
    let rkey = a.redis_key();
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(&rkey)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored[0], 1, "format version");
    assert!(
        stored.len() > 32 + 16,
        "nonce, tag and key id around 32 bytes"
    );
    // Rotation: delete it. B makes the next key; A takes it and still opens A's old cookies.
    let _: () = redis::cmd("DEL")
        .arg(&rkey)
        .query_async(&mut conn)
        .await
        .unwrap();
    let kb2 = b.keys().await.unwrap();
    let sealed_b2 = kb2.seal("_r2", "/", now);
    assert!(
        kb2.open(&sealed_b2, now).is_some() && kb2.open(&sealed_a, now).is_some(),
        "the previous key still opens"
    );
    let ka2 = a.keys().await.unwrap();
    assert_eq!(ka2.open(&sealed_b2, now).unwrap().request_id, "_r2");
    assert_eq!(ka2.open(&sealed_a, now).unwrap().request_id, "_r1");
    // A node with another seal key (a change of it) has a key of its own; ours is untouched.
    let stranger = RedisLoginKey::new(
        client(&redis, PREFIX),
        Arc::new(Seal::new(&[0x22; 32]).unwrap()),
    );
    assert_ne!(stranger.redis_key(), rkey);
    let ks = stranger.keys().await.unwrap();
    assert!(ks.open(&sealed_b2, now).is_none());
    assert_eq!(
        b.keys()
            .await
            .unwrap()
            .open(&sealed_b2, now)
            .unwrap()
            .request_id,
        "_r2"
    );
    // Garbage where the key should be: an error, and nothing is replaced.
    let _: () = redis::cmd("SET")
        .arg(&rkey)
        .arg("garbage")
        .query_async(&mut conn)
        .await
        .unwrap();
    let fresh = node();
    assert!(fresh.keys().await.is_err());
    let after: Vec<u8> = redis::cmd("GET")
        .arg(&rkey)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(after, b"garbage");
    // Down: a node that has a key keeps it; one that has none refuses.
    let mut redis = redis;
    redis.stop();
    assert!(a.keys().await.is_ok());
    assert!(node().keys().await.is_err());
}

/// The Lua script and `use_window::decide` (the memory store) agree on long sequences of uses:
/// several tokens, two client addresses, bound and unbound windows, recorded and unrecorded
/// uses, gaps around `idle` and `max`, first uses around the deadline.
#[cfg(feature = "bench")]
#[tokio::test]
async fn the_redis_window_script_decides_as_the_memory_store_does() {
    use bucketgate::identity::use_window::{
        MemoryUseWindows, SharedUseWindowStore as _, Use, UseWindow, WindowKey,
    };
    use bucketgate::state::redis::use_windows::RedisUseWindows;
    let redis = RedisServer::start().await;
    let shared = RedisUseWindows::new(client(&redis, PREFIX));
    let memory = MemoryUseWindows::new(1_000);
    let windows = [
        UseWindow::for_bench(10, 60, true),
        UseWindow::for_bench(10, 60, false),
        UseWindow::for_bench(5, 5, true),
        UseWindow::for_bench(30, 100, true),
    ];
    let clients: [IpAddr; 2] = ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    let mut now = 1_800_000_000u64;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut seen = std::collections::BTreeSet::new();
    for step in 0..600 {
        now += next(3);
        // Token 7's deadline passes almost at once: its uses are mostly too late.
        let t = next(8) as usize;
        let use_ = Use {
            key: WindowKey::of(&format!("token-{t}")),
            window: windows[t % windows.len()],
            first_use_by: 1_800_000_000 + if t == 7 { 2 } else { 100 + 100 * t as u64 },
            client: clients[(next(5) == 0) as usize],
            now,
        };
        let record = next(6) != 0;
        let expected = memory.use_token(&use_, record).unwrap();
        let got = shared.use_token(&use_, record).await.unwrap();
        assert_eq!(
            got,
            expected,
            "step {step}: token {t} at +{}",
            now - 1_800_000_000
        );
        seen.insert(format!("{expected:?}"));
    }
    // The sequence reached every outcome (else it proves little).
    assert_eq!(seen.len(), 6, "{seen:?}");
}
