//! Several gateway nodes sharing one real Redis (`[redis]`, issue 15): revocations and network
//! lists made on one node in force on the others, `/admin/cluster`, `/readyz`, Redis stopped by
//! PID and restarted mid-test, password auth, TLS to Redis, and garbage written into the keys.
//! Every node runs in this process on 127.0.0.1:0 with its own state directory; nothing is timed
//! by a sleep: changes are polled for with a deadline.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bucketgate::config::{RedisConfig, Secret};
use bucketgate::identity::revocation::{
    FileRevocations, Revocation, RevocationStore, Revocations, SharedRevocationStore,
};
use bucketgate::state::redis::revocations::RedisRevocations;
use bucketgate::state::redis::{Redis, RedisFault, RedisSettings};
use http::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::redis::{RedisOptions, RedisServer};
use crate::support::{self, GatewayBuilder, TEST_AUDIENCE, TestGateway, mint, now};

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef0123";
/// The promise: a change on one node is in force on every node within this.
const WITHIN: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(20);

/// One object every node serves from the same directory.
fn data() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    support::write_file(dir.path(), "a/x.txt", b"hello");
    dir
}

async fn node(data: &Path, redis: RedisConfig) -> TestGateway {
    GatewayBuilder::new()
        .source("local", support::fs_source(data))
        .tweak(move |c| {
            c.admin.token = Some(Secret::new(ADMIN_TOKEN.to_owned()));
            c.redis = Some(redis);
        })
        .start()
        .await
}

fn token(claims: Value) -> String {
    let mut all = json!({
        "sub": "alice",
        "aud": TEST_AUDIENCE,
        "iat": now() - 60,
        "exp": now() + 3600,
        "scope": ["local:"],
        "role": "owner",
    });
    for (k, v) in claims.as_object().unwrap() {
        all[k] = v.clone();
    }
    mint(&all)
}

async fn get(gw: &TestGateway, token: &str) -> StatusCode {
    gw.anon_client_builder()
        .build()
        .unwrap()
        .get(gw.url("/o/local/a/x.txt"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

async fn admin(
    gw: &TestGateway,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = client
        .request(method, gw.admin_url(path))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
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

/// Poll until every node answers `want` for `token`, within `deadline` of `since`.
async fn all_answer(
    nodes: &[&TestGateway],
    token: &str,
    want: StatusCode,
    since: Instant,
    deadline: Duration,
) {
    for gw in nodes {
        loop {
            if get(gw, token).await == want {
                break;
            }
            assert!(
                since.elapsed() < deadline,
                "node {} still does not answer {want} after {:?}",
                gw.admin_addr(),
                since.elapsed()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// `POST /admin/revocations` with `body` on `gw`: the status and the answer.
async fn revoke(gw: &TestGateway, body: Value) -> (StatusCode, String) {
    admin(gw, reqwest::Method::POST, "/admin/revocations", Some(body)).await
}

/// Poll `/readyz` until it contains every one of `want`.
async fn ready_says(gw: &TestGateway, want: &[&str]) -> String {
    let mut last = String::new();
    for _ in 0..250 {
        last = readyz(gw).await;
        if want.iter().all(|w| last.contains(w)) {
            return last;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("/readyz never said {want:?}; last: {last}");
}

#[tokio::test]
async fn a_revocation_on_one_node_is_refused_on_every_node_within_a_second_and_survives_restarts() {
    let redis = RedisServer::start().await;
    let data = data();
    let a = node(data.path(), redis.config("a")).await;
    let b = node(data.path(), redis.config("b")).await;
    let c = node(data.path(), redis.config("c")).await;
    let by_jti = token(json!({"jti": "jti-1"}));
    let bobs = token(json!({"sub": "bob", "iat": now() - 100}));
    let bobs_new = token(json!({"sub": "bob", "iat": now() + 10}));
    for gw in [&a, &b, &c] {
        assert_eq!(get(gw, &by_jti).await, StatusCode::OK);
        assert_eq!(get(gw, &bobs).await, StatusCode::OK);
    }

    let (status, body) = revoke(&a, json!({"jti": "jti-1"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let revoked_at = Instant::now();
    all_answer(
        &[&b, &c],
        &by_jti,
        StatusCode::UNAUTHORIZED,
        revoked_at,
        WITHIN,
    )
    .await;
    eprintln!(
        "revocation in force on B and C {:?} after A answered",
        revoked_at.elapsed()
    );

    let (status, _) = revoke(&c, json!({"sub": "bob", "issued_before": now()})).await;
    assert_eq!(status, StatusCode::CREATED);
    let revoked_at = Instant::now();
    all_answer(
        &[&a, &b],
        &bobs,
        StatusCode::UNAUTHORIZED,
        revoked_at,
        WITHIN,
    )
    .await;
    assert_eq!(
        get(&a, &bobs_new).await,
        StatusCode::OK,
        "a newer token of bob is not revoked"
    );
    assert_eq!(get(&a, &by_jti).await, StatusCode::UNAUTHORIZED);

    // Every node restarts, on fresh state directories: Redis is the record.
    for gw in [a, b, c] {
        gw.shutdown().await;
    }
    let d = node(data.path(), redis.config("d")).await;
    let e = node(data.path(), redis.config("e")).await;
    for gw in [&d, &e] {
        assert_eq!(
            get(gw, &by_jti).await,
            StatusCode::UNAUTHORIZED,
            "revoked at start"
        );
        assert_eq!(get(gw, &bobs).await, StatusCode::UNAUTHORIZED);
        assert_eq!(get(gw, &bobs_new).await, StatusCode::OK);
    }
    let (status, list) = admin(&e, reqwest::Method::GET, "/admin/revocations", None).await;
    assert_eq!(status, StatusCode::OK);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["jti"], json!(["jti-1"]));
    assert!(list["sub"]["bob"].as_u64().is_some());
}

#[tokio::test]
async fn a_network_list_change_on_one_node_applies_on_the_others_and_cluster_lists_them_all() {
    let redis = RedisServer::start().await;
    let data = data();
    let a = node(data.path(), redis.config("node-a")).await;
    let b = node(data.path(), redis.config("node-b")).await;
    let c = node(data.path(), redis.config("node-c")).await;
    let ok = token(json!({}));
    assert_eq!(get(&b, &ok).await, StatusCode::OK);

    let deny = json!({"add": {"deny": ["127.0.0.1"]}});
    let (status, body) = admin(&a, reqwest::Method::PATCH, "/admin/network", Some(deny)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let changed_at = Instant::now();
    all_answer(
        &[&a, &b, &c],
        &ok,
        StatusCode::FORBIDDEN,
        changed_at,
        WITHIN,
    )
    .await;
    let (_, lists) = admin(&b, reqwest::Method::GET, "/admin/network", None).await;
    let lists: Value = serde_json::from_str(&lists).unwrap();
    assert_eq!(lists["deny"], json!(["127.0.0.1/32"]));

    // A change on B builds on A's: removing A's entry works there.
    let undo = json!({"remove": {"deny": ["127.0.0.1"]}});
    let (status, body) = admin(&b, reqwest::Method::PATCH, "/admin/network", Some(undo)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    all_answer(&[&a, &b, &c], &ok, StatusCode::OK, Instant::now(), WITHIN).await;
    // An invalid change is refused as on one node, and changes nothing anywhere.
    let bad = json!({"add": {"deny": ["10.0.0.1/8"]}});
    let (status, _) = admin(&c, reqwest::Method::PATCH, "/admin/network", Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Every node's heartbeat is listed, each with the fields a platform team reads.
    let table = support::eventually("all three nodes in /admin/cluster", 100, POLL, || async {
        let (status, body) = admin(&a, reqwest::Method::GET, "/admin/cluster", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let table: Value = serde_json::from_str(&body).unwrap();
        (table["nodes"].as_array().unwrap().len() == 3).then_some(table)
    })
    .await;
    assert_eq!(table["node"], "node-a");
    let mut names: Vec<&str> = table["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["node-a", "node-b", "node-c"]);
    for n in table["nodes"].as_array().unwrap() {
        assert_eq!(n["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(n["config"].as_str().unwrap().len(), 16, "{n}");
        assert!(n["admin_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(n["last_seen"].as_u64().unwrap() >= n["started"].as_u64().unwrap());
        assert_eq!(n["redis_healthy"], true);
    }
    let ready = readyz(&b).await;
    assert!(ready.starts_with("ready\n"), "{ready}");
    assert!(
        ready.contains("redis: ok\n")
            && ready.contains("revocations: ok\n")
            && ready.contains("network_lists: ok\n"),
        "{ready}"
    );
}

#[tokio::test]
async fn redis_stopped_by_pid_mid_test_then_restarted_empty_degrades_as_documented_and_recovers() {
    let mut redis = RedisServer::start().await;
    let data = data();
    let a = node(data.path(), redis.config("a")).await;
    let mut strict = redis.config("b");
    strict.refuse_tokens_issued_during_outage = true;
    let b = node(data.path(), strict).await;
    let revoked = token(json!({"jti": "before-outage"}));
    let (status, _) = revoke(&a, json!({"jti": "before-outage"})).await;
    assert_eq!(status, StatusCode::CREATED);
    all_answer(
        &[&b],
        &revoked,
        StatusCode::UNAUTHORIZED,
        Instant::now(),
        WITHIN,
    )
    .await;

    assert!(redis.pid().is_some());
    redis.stop();
    ready_says(
        &a,
        &[
            "ready\n",
            "redis: down",
            "revocations: degraded (last synced list)",
        ],
    )
    .await;
    ready_says(&b, &["revocations: degraded (last synced list; tokens issued since the outage began are refused)"]).await;
    // The last synced list stays in force; B refuses tokens issued after the outage began.
    let old = token(json!({"iat": now() - 120}));
    let fresh = token(json!({"iat": now() + 5}));
    for gw in [&a, &b] {
        assert_eq!(get(gw, &revoked).await, StatusCode::UNAUTHORIZED);
        assert_eq!(get(gw, &old).await, StatusCode::OK);
    }
    assert_eq!(get(&a, &fresh).await, StatusCode::OK);
    assert_eq!(get(&b, &fresh).await, StatusCode::UNAUTHORIZED);
    // Changes cannot be shared, so none is taken: 503, nothing changed.
    let (status, _) = revoke(&a, json!({"jti": "during"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = admin(
        &a,
        reqwest::Method::PATCH,
        "/admin/network",
        Some(json!({"add": {"deny": ["10.9.0.0/16"]}})),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = admin(&a, reqwest::Method::GET, "/admin/cluster", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // Redis comes back empty (no persistence): the nodes put their copies back, no restart.
    redis.restart().await;
    for gw in [&a, &b] {
        ready_says(gw, &["redis: ok", "revocations: ok", "network_lists: ok"]).await;
    }
    assert_eq!(get(&b, &fresh).await, StatusCode::OK);
    let (status, _) = revoke(&b, json!({"jti": "after"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let after = token(json!({"jti": "after"}));
    all_answer(
        &[&a],
        &after,
        StatusCode::UNAUTHORIZED,
        Instant::now(),
        WITHIN,
    )
    .await;
    // A node started now learns the revocation made before the outage from Redis.
    let c = node(data.path(), redis.config("c")).await;
    assert_eq!(get(&c, &revoked).await, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&c, &after).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn nodes_authenticate_to_a_redis_with_a_password_and_a_wrong_one_is_down() {
    let redis = RedisServer::start_with(RedisOptions {
        password: Some("s3cret-redis-pass".to_owned()),
        ..RedisOptions::default()
    })
    .await;
    let data = data();
    let a = node(data.path(), redis.config("a")).await;
    let b = node(data.path(), redis.config("b")).await;
    let (status, _) = revoke(&a, json!({"jti": "pw"})).await;
    assert_eq!(status, StatusCode::CREATED);
    all_answer(
        &[&b],
        &token(json!({"jti": "pw"})),
        StatusCode::UNAUTHORIZED,
        Instant::now(),
        WITHIN,
    )
    .await;

    let mut wrong = redis.config("w");
    wrong.password = Some(Secret::new("not-the-password".to_owned()));
    let w = node(data.path(), wrong).await;
    let ready = ready_says(&w, &["revocations: degraded"]).await;
    assert!(ready.starts_with("ready\n"), "{ready}");
    let (status, _) = revoke(&w, json!({"jti": "x"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn nodes_reach_redis_over_tls_with_the_configured_ca() {
    let redis = RedisServer::start_with(RedisOptions {
        tls: true,
        ..RedisOptions::default()
    })
    .await;
    assert!(redis.plain_url().starts_with("rediss://"));
    let data = data();
    let a = node(data.path(), redis.config("a")).await;
    let b = node(data.path(), redis.config("b")).await;
    let (status, body) = revoke(&a, json!({"jti": "tls"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    all_answer(
        &[&b],
        &token(json!({"jti": "tls"})),
        StatusCode::UNAUTHORIZED,
        Instant::now(),
        WITHIN,
    )
    .await;
    ready_says(&b, &["redis: ok", "revocations: ok"]).await;

    // Without the CA the server's certificate is not trusted: Redis is down for that node.
    let mut untrusting = redis.config("u");
    untrusting.ca_file = Some(a_foreign_ca(data.path()));
    let u = node(data.path(), untrusting).await;
    ready_says(&u, &["redis: down", "revocations: degraded"]).await;
}

/// A CA file (in `dir`) that did not sign the test server's certificate.
fn a_foreign_ca(dir: &Path) -> std::path::PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).unwrap();
    let path = dir.join("foreign-ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    path
}

// ---- garbage in the keys: an error for that lookup, handled as down, never a panic or an allow

fn client(redis: &RedisServer) -> Arc<Redis> {
    let settings = RedisSettings::from_config(&redis.config("garbage")).unwrap();
    Arc::new(Redis::connect(&settings).unwrap())
}

async fn set_raw(r: &Redis, args: &[&str]) {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = r.query(&cmd).await.unwrap();
}

#[tokio::test]
async fn garbage_in_the_revocation_keys_keeps_the_last_synced_list_and_never_allows() {
    let server = RedisServer::start().await;
    let r = client(&server);
    let store = RedisRevocations::new(
        Arc::clone(&r),
        FileRevocations::in_memory(),
        true,
        bucketgate::credentials::system_clock(),
    );
    store
        .revoke(Revocation::Token { jti: "j1".into() })
        .await
        .unwrap();
    store.sync().await.unwrap();
    assert!(
        store
            .is_revoked_now(Some("j1"), "s", Some(now() - 10))
            .unwrap()
    );
    assert!(
        !store
            .is_revoked_now(Some("j2"), "s", Some(now() - 10))
            .unwrap()
    );

    let jti = r.key("revocations", "jti");
    let sub = r.key("revocations", "sub");
    let counter = r.key("revocations", "counter");
    let cases: Vec<Vec<String>> = vec![
        // A string where the set belongs (WRONGTYPE), with a new version to make nodes read it.
        vec!["DEL".into(), jti.clone()],
        vec!["SET".into(), jti.clone(), "garbage".into()],
        vec!["INCR".into(), counter.clone()],
    ];
    for c in &cases {
        set_raw(&r, &c.iter().map(String::as_str).collect::<Vec<_>>()).await;
    }
    let fault = store.sync().await.unwrap_err();
    assert!(matches!(fault, RedisFault::BadReply(_)), "{fault:?}");
    assert!(
        store
            .is_revoked_now(Some("j1"), "s", Some(now() - 10))
            .unwrap(),
        "the last synced list stays"
    );
    assert!(
        store
            .is_revoked_now(Some("j2"), "s", Some(now() + 10))
            .unwrap(),
        "a token issued in the outage is refused"
    );
    assert_eq!(store.health().state, "degraded");

    // A time that is not a number, bytes that are not UTF-8, a wrong-type counter.
    set_raw(&r, &["DEL", &jti]).await;
    set_raw(&r, &["HSET", &sub, "bob", "yesterday"]).await;
    set_raw(&r, &["INCR", &counter]).await;
    assert!(matches!(store.sync().await, Err(RedisFault::BadReply(_))));
    set_raw(&r, &["DEL", &sub]).await;
    let mut bad_utf8 = redis::cmd("SADD");
    bad_utf8.arg(&jti).arg(&b"\xff\xfe"[..]);
    let _: redis::Value = r.query(&bad_utf8).await.unwrap();
    set_raw(&r, &["INCR", &counter]).await;
    assert!(matches!(store.sync().await, Err(RedisFault::BadReply(_))));
    set_raw(&r, &["DEL", &jti]).await;
    set_raw(&r, &["SET", &counter, "not-a-number"]).await;
    assert!(
        store
            .revoke(Revocation::Token { jti: "j3".into() })
            .await
            .is_err(),
        "a revoke that Redis cannot count is refused"
    );

    // Cleaned up: the next sync recovers without a restart.
    set_raw(&r, &["DEL", &counter]).await;
    store.sync().await.unwrap();
    assert_eq!(store.health().state, "ok");
    assert!(
        store
            .is_revoked_now(Some("j1"), "s", Some(now() - 10))
            .unwrap()
    );
    let list = Revocations::Shared(Arc::new(store)).list().await.unwrap();
    assert!(list.jti.contains("j1"));
}

#[tokio::test]
async fn garbage_in_the_shared_lists_and_heartbeats_is_refused_and_named() {
    let redis = RedisServer::start().await;
    let data = data();
    let a = node(data.path(), redis.config("a")).await;
    let ok = token(json!({}));
    let r = client(&redis);
    // A network document that is not lists: refused, the lists in force stay.
    let doc = r.key("doc", "network");
    set_raw(
        &r,
        &[
            "HSET",
            &doc,
            "epoch",
            "e",
            "counter",
            "7",
            "body",
            "{\"allow\":[\"garbage\"]}",
            "from",
            "evil",
        ],
    )
    .await;
    // Garbage where a heartbeat belongs, and a heartbeat of the wrong type.
    let seen = r.key("nodes", "seen");
    let far = (now() + 3600).to_string();
    set_raw(&r, &["ZADD", &seen, &far, "ghost"]).await;
    set_raw(&r, &["SET", &r.key("node", "ghost"), "\u{1}garbage"]).await;
    set_raw(&r, &["ZADD", &seen, &far, "listy"]).await;
    set_raw(&r, &["LPUSH", &r.key("node", "listy"), "x"]).await;
    let table = support::eventually(
        "the table lists a and names the garbage",
        100,
        POLL,
        || async {
            let (status, body) = admin(&a, reqwest::Method::GET, "/admin/cluster", None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let t: Value = serde_json::from_str(&body).unwrap();
            (t["nodes"].as_array().unwrap().len() >= 2).then_some(t)
        },
    )
    .await;
    let nodes = table["nodes"].as_array().unwrap();
    assert!(
        nodes
            .iter()
            .any(|n| n["node"] == "a" && n["version"].is_string()),
        "{table}"
    );
    assert!(
        nodes
            .iter()
            .any(|n| n["node"] == "ghost" && n["error"] == "unreadable heartbeat"),
        "{table}"
    );
    // Still serving with its own lists, and saying why, after syncs saw the garbage document.
    ready_says(
        &a,
        &[
            "ready\n",
            "network_lists: degraded (lists in force here; the shared version does not validate)",
        ],
    )
    .await;
    assert_eq!(get(&a, &ok).await, StatusCode::OK);
    // A truncated document (a new version) is refused the same way.
    set_raw(
        &r,
        &[
            "HSET",
            &doc,
            "counter",
            "8",
            "body",
            "{\"allow\":[\"127.0.0.0/8\"],\"de",
        ],
    )
    .await;
    for _ in 0..10 {
        assert_eq!(get(&a, &ok).await, StatusCode::OK);
        tokio::time::sleep(POLL).await;
    }
    let (_, lists) = admin(&a, reqwest::Method::GET, "/admin/network", None).await;
    assert!(!lists.contains("garbage"), "{lists}");
    // An admin change on the node replaces the broken document, and the node is whole again.
    let (status, body) = admin(
        &a,
        reqwest::Method::PATCH,
        "/admin/network",
        Some(json!({"add": {"deny": ["10.9.0.0/16"]}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    ready_says(&a, &["network_lists: ok"]).await;
    let b = node(data.path(), redis.config("b")).await;
    let (_, lists) = admin(&b, reqwest::Method::GET, "/admin/network", None).await;
    assert!(lists.contains("10.9.0.0/16"), "{lists}");
    assert_eq!(get(&b, &ok).await, StatusCode::OK);
}

#[tokio::test]
async fn without_redis_there_is_no_cluster_and_readyz_is_as_before() {
    let data = data();
    let gw = GatewayBuilder::new()
        .source("local", support::fs_source(data.path()))
        .tweak(|c| c.admin.token = Some(Secret::new(ADMIN_TOKEN.to_owned())))
        .start()
        .await;
    let (status, body) = admin(&gw, reqwest::Method::GET, "/admin/cluster", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body.contains("without [redis]"), "{body}");
    assert_eq!(readyz(&gw).await, "ready\n");
    let (status, _) = revoke(&gw, json!({"jti": "j"})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        get(&gw, &token(json!({"jti": "j"}))).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_frozen_redis_costs_requests_nothing_and_admin_changes_wait_at_most_the_command_timeout()
{
    let mut redis = RedisServer::start().await;
    let data = data();
    let a = node(data.path(), redis.config("a")).await;
    let b = node(data.path(), redis.config("b")).await;
    let (status, _) = revoke(&a, json!({"jti": "j"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let revoked = token(json!({"jti": "j"}));
    all_answer(
        &[&b],
        &revoked,
        StatusCode::UNAUTHORIZED,
        Instant::now(),
        WITHIN,
    )
    .await;

    // Hung, not gone: connections open, no answer.
    redis.freeze();
    ready_says(
        &b,
        &["redis: down", "revocations: degraded (last synced list)"],
    )
    .await;
    let ok = token(json!({}));
    for gw in [&a, &b] {
        assert_eq!(get(gw, &ok).await, StatusCode::OK);
        assert_eq!(get(gw, &revoked).await, StatusCode::UNAUTHORIZED);
    }
    let asked = Instant::now();
    let (status, _) = revoke(&a, json!({"jti": "k"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The command timeout (250 ms) bounds it; a generous margin for a loaded machine.
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );

    redis.thaw();
    for gw in [&a, &b] {
        ready_says(gw, &["redis: ok", "revocations: ok", "network_lists: ok"]).await;
    }
    let (status, _) = revoke(&b, json!({"jti": "k"})).await;
    assert_eq!(status, StatusCode::CREATED);
    all_answer(
        &[&a],
        &token(json!({"jti": "k"})),
        StatusCode::UNAUTHORIZED,
        Instant::now(),
        WITHIN,
    )
    .await;
}

#[tokio::test]
async fn a_list_change_applied_from_another_node_is_audited_there_with_its_origin() {
    let redis = RedisServer::start().await;
    let data = data();
    let a = node(data.path(), redis.config("node-a")).await;
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("audit.log");
    let (audit_path, redis_b) = (log_path.clone(), redis.config("node-b"));
    let b = GatewayBuilder::new()
        .source("local", support::fs_source(data.path()))
        .tweak(move |c| {
            c.admin.token = Some(Secret::new(ADMIN_TOKEN.to_owned()));
            c.redis = Some(redis_b);
            c.audit.destination = bucketgate::config::AuditDestination::File {
                path: audit_path,
                max_bytes: 1024 * 1024,
                keep: 1,
            };
        })
        .start()
        .await;
    let patch = json!({"add": {"deny": ["10.7.0.0/16"]}});
    let (status, _) = admin(&a, reqwest::Method::PATCH, "/admin/network", Some(patch)).await;
    assert_eq!(status, StatusCode::OK);
    support::eventually("B has A's change", 100, POLL, || async {
        let (_, lists) = admin(&b, reqwest::Method::GET, "/admin/network", None).await;
        lists.contains("10.7.0.0/16").then_some(())
    })
    .await;
    b.shutdown().await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    let synced: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == "admin")
        .collect();
    assert_eq!(synced.len(), 1, "{text}");
    assert_eq!(synced[0]["action"], "network-sync");
    assert_eq!(synced[0]["who"], "cluster:node-a");
    assert_eq!(synced[0]["what"]["deny"]["added"], json!(["10.7.0.0/16"]));
}
