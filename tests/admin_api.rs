//! The `/admin/*` API: authentication, validation, changes that take effect at once, and the
//! persisted state (atomic, survives a restart).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::support::{GatewayBuilder, TestGateway, fs_source};
use bucketgate::config::{AuditDestination, Secret};
use bucketgate::reload::lists::{NetworkLists, STATE_FILE};

const TOKEN: &str = "test-admin-token-0123456789";

struct Setup {
    gw: TestGateway,
    _data: tempfile::TempDir,
    state: tempfile::TempDir,
}

/// A gateway with the admin token (or none), sources `local` and `other`, allowing loopback.
async fn setup(token: Option<&str>, state: Option<tempfile::TempDir>) -> Setup {
    let data = tempfile::tempdir().unwrap();
    support::write_file(data.path(), "hello.txt", b"hello\n");
    let state = state.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let state_dir = state.path().to_path_buf();
    let token = token.map(|t| Secret::new(t.to_owned()));
    let gw = GatewayBuilder::new()
        .sources(BTreeMap::from([
            ("local".to_string(), fs_source(data.path())),
            ("other".to_string(), fs_source(data.path())),
        ]))
        .tweak(move |c| {
            c.admin.token = token;
            c.admin.state_dir = state_dir;
        })
        .start()
        .await;
    Setup {
        gw,
        _data: data,
        state,
    }
}

impl Setup {
    fn state_file(&self) -> PathBuf {
        self.state.path().join(STATE_FILE)
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Option<&str>,
        body: Option<String>,
    ) -> (u16, String) {
        let mut req = reqwest::Client::new().request(method, self.gw.admin_url(path));
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    async fn authed(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        self.admin(
            method,
            path,
            Some(&format!("Bearer {TOKEN}")),
            body.map(str::to_owned),
        )
        .await
    }

    /// Status of GET /o/{source}/hello.txt from `local_ip`.
    async fn fetch_from(&self, local_ip: &str, source: &str) -> u16 {
        self.gw
            .client_from(local_ip.parse().unwrap())
            .get(self.gw.url(&format!("/o/{source}/hello.txt")))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// The state file parses whole, and no temp file is left beside it.
fn assert_state_whole(dir: &Path) -> NetworkLists {
    let bytes = std::fs::read(dir.join(STATE_FILE)).unwrap();
    let lists = NetworkLists::from_json(&bytes).unwrap();
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec![STATE_FILE.to_string()],
        "only the state file remains"
    );
    lists
}

#[tokio::test]
async fn admin_routes_do_not_exist_without_a_token() {
    let s = setup(None, None).await;
    for (method, path) in [
        (reqwest::Method::GET, "/admin/network"),
        (reqwest::Method::PUT, "/admin/network"),
        (reqwest::Method::POST, "/admin/reload"),
    ] {
        let (status, _) = s.admin(method, path, Some("Bearer anything"), None).await;
        assert_eq!(status, 404, "{path}");
    }
    // The rest of the admin listener is unaffected.
    assert_eq!(
        s.admin(reqwest::Method::GET, "/healthz", None, None)
            .await
            .0,
        200
    );
    s.gw.shutdown().await;
}

#[tokio::test]
async fn missing_and_wrong_credentials_get_one_401() {
    let s = setup(Some(TOKEN), None).await;
    let mut bodies = Vec::new();
    for auth in [
        None,
        Some("Bearer wrong-token".to_owned()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_owned()),
        Some("Bearer ".to_owned()),
    ] {
        for path in ["/admin/network", "/admin/nonexistent"] {
            let (status, body) = s
                .admin(reqwest::Method::GET, path, auth.as_deref(), None)
                .await;
            assert_eq!(status, 401, "{auth:?} {path}");
            bodies.push(body);
        }
    }
    assert!(bodies.iter().all(|b| b == &bodies[0]), "{bodies:?}");
    assert!(!bodies[0].contains(TOKEN));
    let (status, _) = s.authed(reqwest::Method::GET, "/admin/network", None).await;
    assert_eq!(status, 200);
    let (status, _) = s
        .admin(
            reqwest::Method::GET,
            "/admin/network",
            Some(&format!("bearer {TOKEN}")),
            None,
        )
        .await;
    assert_eq!(status, 200, "the scheme is case-insensitive");
    s.gw.shutdown().await;
}

#[tokio::test]
async fn get_lists_the_rules_in_force() {
    let s = setup(Some(TOKEN), None).await;
    let (status, body) = s.authed(reqwest::Method::GET, "/admin/network", None).await;
    assert_eq!(status, 200);
    let lists = NetworkLists::from_json(body.as_bytes()).unwrap();
    assert_eq!(
        lists
            .allow
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["127.0.0.0/8", "::1/128"]
    );
    assert!(!s.state_file().exists(), "reading changes nothing");
    s.gw.shutdown().await;
}

#[tokio::test]
async fn invalid_cidr_is_refused_with_400_naming_the_entry_and_nothing_changes() {
    let s = setup(Some(TOKEN), None).await;
    let (_, before) = s.authed(reqwest::Method::GET, "/admin/network", None).await;
    let cases = [
        (
            reqwest::Method::PUT,
            r#"{"allow":["127.0.0.1/32","10.0.0.1/8"],"deny":[],"trusted_proxies":[]}"#,
            "allow[1]",
        ),
        (
            reqwest::Method::PUT,
            r#"{"allow":[],"deny":["fe80::1%eth0"],"trusted_proxies":[]}"#,
            "deny[0]",
        ),
        (
            reqwest::Method::PATCH,
            r#"{"add":{"deny":["010.0.0.0/8"]}}"#,
            "add.deny[0]",
        ),
        (
            reqwest::Method::PATCH,
            r#"{"add":{"allow":["10.0.0.0/8"]},"source":"nope"}"#,
            "nope",
        ),
        (
            reqwest::Method::PATCH,
            r#"{"remove":{"deny":["192.0.2.0/24"]}}"#,
            "remove.deny",
        ),
        (reqwest::Method::PUT, r#"{"allow":["#, "malformed JSON"),
        (
            reqwest::Method::PUT,
            r#"{"allow":[],"deny":[],"trusted_proxies":[],"extra":1}"#,
            "extra",
        ),
    ];
    for (method, body, needle) in cases {
        let (status, text) = s.authed(method.clone(), "/admin/network", Some(body)).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text} lacks {needle}");
    }
    let (_, after) = s.authed(reqwest::Method::GET, "/admin/network", None).await;
    assert_eq!(before, after);
    assert!(!s.state_file().exists(), "nothing was persisted");
    assert_eq!(s.fetch_from("127.0.0.2", "local").await, 200);
    s.gw.shutdown().await;
}

#[tokio::test]
async fn oversized_body_is_refused_with_413() {
    let s = setup(Some(TOKEN), None).await;
    let entries = vec!["\"10.0.0.0/8\""; 7000].join(",");
    let body = format!(r#"{{"allow":[{entries}],"deny":[],"trusted_proxies":[]}}"#);
    assert!(body.len() > 64 * 1024);
    let (status, _) = s
        .authed(reqwest::Method::PUT, "/admin/network", Some(&body))
        .await;
    assert_eq!(status, 413);
    s.gw.shutdown().await;
}

#[tokio::test]
async fn put_and_patch_take_effect_at_once_and_persist_whole() {
    let s = setup(Some(TOKEN), None).await;
    assert_eq!(s.fetch_from("127.0.0.2", "local").await, 200);

    let (status, body) = s
        .authed(
            reqwest::Method::PUT,
            "/admin/network",
            Some(r#"{"allow":["127.0.0.1/32","::1"],"deny":[],"trusted_proxies":[]}"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.fetch_from("127.0.0.2", "local").await, 403);
    assert_eq!(s.fetch_from("127.0.0.1", "local").await, 200);
    let persisted = assert_state_whole(s.state.path());
    assert_eq!(persisted, NetworkLists::from_json(body.as_bytes()).unwrap());

    let (status, _) = s
        .authed(
            reqwest::Method::PATCH,
            "/admin/network",
            Some(r#"{"add":{"allow":["127.0.0.0/8"],"deny":["127.0.0.3/32"]}}"#),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.fetch_from("127.0.0.2", "local").await, 200);
    assert_eq!(s.fetch_from("127.0.0.3", "local").await, 403);
    assert_state_whole(s.state.path());

    // Per source: deny 127.0.0.2 for `other` only.
    let (status, _) = s
        .authed(
            reqwest::Method::PATCH,
            "/admin/network",
            Some(r#"{"add":{"deny":["127.0.0.2"]},"source":"other"}"#),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.fetch_from("127.0.0.2", "other").await, 403);
    assert_eq!(s.fetch_from("127.0.0.2", "local").await, 200);
    let persisted = assert_state_whole(s.state.path());
    assert_eq!(persisted.sources["other"].deny.len(), 1);

    let (status, _) = s
        .authed(
            reqwest::Method::PATCH,
            "/admin/network",
            Some(r#"{"remove":{"deny":["127.0.0.2/32"]},"source":"other"}"#),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.fetch_from("127.0.0.2", "other").await, 200);
    assert_state_whole(s.state.path());
    s.gw.shutdown().await;
}

#[tokio::test]
async fn persisted_lists_survive_a_gateway_restart() {
    let s = setup(Some(TOKEN), None).await;
    let (status, _) = s
        .authed(
            reqwest::Method::PUT,
            "/admin/network",
            Some(
                r#"{"allow":["127.0.0.0/8"],"deny":["127.0.0.2"],"trusted_proxies":[],
                    "sources":{"other":{"allow":["127.0.0.1"]}}}"#,
            ),
        )
        .await;
    assert_eq!(status, 200);
    let Setup { gw, _data, state } = s;
    gw.shutdown().await;

    // Same state dir, the config file's lists unchanged (loopback allowed, no deny).
    let s = setup(Some(TOKEN), Some(state)).await;
    assert_eq!(s.fetch_from("127.0.0.2", "local").await, 403);
    assert_eq!(s.fetch_from("127.0.0.3", "local").await, 200);
    assert_eq!(s.fetch_from("127.0.0.3", "other").await, 403);
    let (_, body) = s.authed(reqwest::Method::GET, "/admin/network", None).await;
    let lists = NetworkLists::from_json(body.as_bytes()).unwrap();
    assert_eq!(lists.deny.len(), 1);
    assert_eq!(lists.sources["other"].allow.as_ref().map(Vec::len), Some(1));
    s.gw.shutdown().await;
}

#[tokio::test]
async fn a_corrupt_state_file_stops_the_start_instead_of_being_ignored() {
    let state = tempfile::tempdir().unwrap();
    std::fs::write(state.path().join(STATE_FILE), b"{\"allow\": [").unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut config = bucketgate::app::embedded_config(data.path()).unwrap();
    config.listener.addr = "127.0.0.1:0".parse().unwrap();
    config.admin.addr = "127.0.0.1:0".parse().unwrap();
    config.admin.state_dir = state.path().to_path_buf();
    std::fs::create_dir_all(data.path().join("data")).unwrap();
    let err = bucketgate::Gateway::start(config)
        .await
        .err()
        .expect("start fails");
    assert!(matches!(err, bucketgate::StartError::State(_)), "{err:?}");
}

/// Every admin change, whichever route made it, is one audit record in one format: kind
/// `admin`, who (a hash prefix of the token, never the token), the action and what changed.
#[tokio::test]
async fn every_admin_change_is_one_audit_record_in_one_format() {
    let data = tempfile::tempdir().unwrap();
    support::write_file(data.path(), "hello.txt", b"hello\n");
    let state = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("audit.log");
    let (state_dir, audit_path) = (state.path().to_path_buf(), log_path.clone());
    let gw = GatewayBuilder::new()
        .source("local", fs_source(data.path()))
        .tweak(move |c| {
            c.admin.token = Some(Secret::new(TOKEN.to_owned()));
            c.admin.state_dir = state_dir;
            c.audit.destination = AuditDestination::File {
                path: audit_path,
                max_bytes: 1024 * 1024,
                keep: 1,
            };
        })
        .start()
        .await;
    let client = reqwest::Client::new();
    let send = async |method: reqwest::Method, path: &str, body: &str| {
        let resp = client
            .request(method, gw.admin_url(path))
            .bearer_auth(TOKEN)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let allow = resp
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned());
        (resp.status().as_u16(), allow)
    };
    let lists = r#"{"allow":["127.0.0.0/8","::1"],"deny":[],"trusted_proxies":[]}"#;
    assert_eq!(
        send(reqwest::Method::PUT, "/admin/network", lists).await.0,
        200
    );
    let revoke = r#"{"jti":"jti-1"}"#;
    assert_eq!(
        send(reqwest::Method::POST, "/admin/revocations", revoke)
            .await
            .0,
        201
    );
    // Refusals change nothing and are not admin records; a 405 names what is allowed.
    assert_eq!(
        send(reqwest::Method::DELETE, "/admin/revocations", "").await,
        (405, Some("GET, POST".to_owned()))
    );
    assert_eq!(
        send(reqwest::Method::POST, "/admin/revocations", "{}")
            .await
            .0,
        400
    );

    // Shutdown waits for the audit writer to drain.
    gw.shutdown().await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(!text.contains(TOKEN), "the token is never written");
    let admin: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "admin")
        .collect();
    let actions: Vec<&str> = admin
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["replace", "revoke"], "{text}");
    for record in &admin {
        let who = record["who"].as_str().unwrap();
        let hex = who
            .strip_prefix("token:")
            .unwrap_or_else(|| panic!("{record}"));
        assert!(
            hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{record}"
        );
        assert_eq!(who, admin[0]["who"], "one admin, one name");
        assert!(record["time"].as_str().unwrap().ends_with('Z'), "{record}");
        assert!(record["what"].is_object(), "{record}");
    }
    assert_eq!(admin[1]["what"], serde_json::json!({ "jti": "jti-1" }));
}

// ---------------------------------------------------------------------------------------------
// The cache routes: purge, prewarm jobs, statistics.

/// A gateway with the admin token, `[cache]` as given (memory only), fs sources `local` (over
/// `data`), `nocache` (the same dir, `cache = false`) and `team` (an S3 source with per-user SAML
/// credentials, never contacted).
async fn cache_setup(cache: Option<bucketgate::config::CacheConfig>) -> (Setup, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    support::write_file(data.path(), "a.bin", &support::pattern_bytes(3000, 1));
    support::write_file(data.path(), "p/one.bin", &support::pattern_bytes(1000, 2));
    support::write_file(data.path(), "p/two.bin", &support::pattern_bytes(2000, 3));
    support::write_file(
        data.path(),
        "p/deeper/three.bin",
        &support::pattern_bytes(500, 4),
    );
    support::write_file(data.path(), "pq.bin", &support::pattern_bytes(10, 5));
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_path_buf();
    let saml = bucketgate::config::S3Source {
        credentials: bucketgate::config::S3Credentials::Saml,
        ..crate::support::s3::source("http://127.0.0.1:9", "b", "", "k", "s")
    };
    let gw = GatewayBuilder::new()
        .sources(BTreeMap::from([
            ("local".to_string(), fs_source(data.path())),
            ("nocache".to_string(), fs_source(data.path())),
            (
                "team".to_string(),
                bucketgate::config::SourceConfig::S3(saml),
            ),
        ]))
        .tweak(move |c| {
            c.admin.token = Some(Secret::new(TOKEN.to_owned()));
            c.admin.state_dir = state_dir;
            c.cache = cache.map(|mut cache| {
                cache.bypass.insert("nocache".to_owned());
                cache
            });
        })
        .start()
        .await;
    let setup = Setup {
        gw,
        _data: tempfile::tempdir().unwrap(),
        state,
    };
    (setup, data)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

impl Setup {
    /// POST a prewarm, expect 202, poll its job until done (deadline, no fixed sleep).
    async fn prewarm_until_done(&self, body: &str) -> serde_json::Value {
        let (status, answer) = self
            .authed(reqwest::Method::POST, "/admin/cache/prewarm", Some(body))
            .await;
        assert_eq!(status, 202, "{answer}");
        let id = json(&answer)["job"].as_str().unwrap().to_owned();
        assert!(!id.is_empty());
        support::eventually(
            "prewarm job done",
            1000,
            std::time::Duration::from_millis(20),
            || async {
                let (status, answer) = self
                    .authed(
                        reqwest::Method::GET,
                        &format!("/admin/cache/prewarm/{id}"),
                        None,
                    )
                    .await;
                assert_eq!(status, 200, "{answer}");
                let job = json(&answer);
                (job["state"] == "done").then_some(job)
            },
        )
        .await
    }

    async fn get_object(&self, key: &str) -> (u16, Vec<u8>) {
        let resp = self
            .gw
            .client()
            .get(self.gw.url(&format!("/o/local/{key}")))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.bytes().await.unwrap().to_vec())
    }
}

#[tokio::test]
async fn cache_routes_answer_409_without_a_cache_and_401_before_anything() {
    let (s, _data) = cache_setup(None).await;
    for (method, path, body) in [
        (reqwest::Method::GET, "/admin/cache", None),
        (
            reqwest::Method::POST,
            "/admin/cache/purge",
            Some(r#"{"source":"local"}"#),
        ),
        (
            reqwest::Method::POST,
            "/admin/cache/prewarm",
            Some(r#"{"source":"local","keys":["a.bin"]}"#),
        ),
        (reqwest::Method::GET, "/admin/cache/prewarm/1-00", None),
    ] {
        let (status, answer) = s
            .admin(method.clone(), path, None, body.map(str::to_owned))
            .await;
        assert_eq!(status, 401, "{method} {path} without the token: {answer}");
        let (status, answer) = s.authed(method.clone(), path, body).await;
        assert_eq!(status, 409, "{method} {path}: {answer}");
        assert!(
            json(&answer)["error"]
                .as_str()
                .unwrap()
                .contains("without [cache]"),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn cache_stats_report_the_budgets_and_wrong_methods_get_405() {
    let (s, _data) = cache_setup(Some(crate::cache::memory_cache(4 << 20))).await;
    let (status, answer) = s.authed(reqwest::Method::GET, "/admin/cache", None).await;
    assert_eq!(status, 200, "{answer}");
    let stats = json(&answer);
    assert_eq!(stats["memory_budget_bytes"], 4 << 20);
    assert_eq!(stats["disk_budget_bytes"], 0);
    assert_eq!(stats["disk_degraded"], false);
    for (method, path, allow) in [
        (reqwest::Method::POST, "/admin/cache", "GET"),
        (reqwest::Method::GET, "/admin/cache/purge", "POST"),
        (reqwest::Method::DELETE, "/admin/cache/prewarm", "POST"),
        (reqwest::Method::POST, "/admin/cache/prewarm/x", "GET"),
    ] {
        let resp = reqwest::Client::new()
            .request(method.clone(), s.gw.admin_url(path))
            .header("authorization", format!("Bearer {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 405, "{method} {path}");
        assert_eq!(resp.headers()["allow"], allow);
    }
    let (status, _) = s
        .authed(reqwest::Method::GET, "/admin/cache/nope", None)
        .await;
    assert_eq!(status, 404);
    let (status, answer) = s
        .authed(
            reqwest::Method::GET,
            "/admin/cache/prewarm/no-such-job",
            None,
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer.contains("no such prewarm job"), "{answer}");
}

#[tokio::test]
async fn purge_refuses_bad_bodies_with_400_saying_why() {
    let (s, _data) = cache_setup(Some(crate::cache::memory_cache(4 << 20))).await;
    for (body, says) in [
        (r#"{"source":"local","bogus":1}"#, "unknown field `bogus`"),
        (r#"{"prefix":"p/"}"#, "missing field `source`"),
        (r#"{"source":"nowhere"}"#, "no source named \"nowhere\""),
        (r#"{"source":"local","prefix":"p/","key":"a"}"#, "not both"),
        (r#"{"source":"local","key":"a/../b"}"#, ".. segment"),
        ("[1,2]", "expected {\"source\""),
    ] {
        let (status, answer) = s
            .authed(reqwest::Method::POST, "/admin/cache/purge", Some(body))
            .await;
        assert_eq!(status, 400, "{body}: {answer}");
        let error = json(&answer)["error"].as_str().unwrap().to_owned();
        assert!(error.contains(says), "{body}: {error}");
    }
}

/// Prewarm by keys fills the cache (the stats count the bytes), a missing key is one error named
/// with its kind, and purge by key, prefix and source removes entries and says how many.
#[tokio::test]
async fn prewarm_keys_fills_the_cache_and_purge_empties_it() {
    let (s, _data) = cache_setup(Some(crate::cache::memory_cache(4 << 20))).await;
    let job = s
        .prewarm_until_done(r#"{"source":"local","keys":["a.bin","p/one.bin","missing.bin"]}"#)
        .await;
    assert_eq!(job["total"], 3, "{job}");
    assert_eq!(job["done"], 3, "{job}");
    assert_eq!(job["errors"], 1, "{job}");
    assert_eq!(job["bytes"], 4000, "{job}");
    assert_eq!(job["source"], "local");
    assert_eq!(
        job["failed"],
        serde_json::json!([{ "key": "missing.bin", "error": "not_found" }])
    );
    let (_, answer) = s.authed(reqwest::Method::GET, "/admin/cache", None).await;
    let stats = json(&answer);
    assert!(
        stats["memory_bytes"].as_u64().unwrap() >= 4000,
        "prewarmed bytes are in memory: {stats}"
    );
    assert!(stats["memory_entries"].as_u64().unwrap() >= 2, "{stats}");

    // Reads of prewarmed objects are byte-exact.
    let (status, body) = s.get_object("p/one.bin").await;
    assert_eq!(status, 200);
    assert_eq!(body, support::pattern_bytes(1000, 2));

    let s = &s;
    let purge = |body: &'static str| async move {
        let (status, answer) = s
            .authed(reqwest::Method::POST, "/admin/cache/purge", Some(body))
            .await;
        assert_eq!(status, 200, "{body}: {answer}");
        json(&answer)["purged"].as_u64().unwrap()
    };
    assert_eq!(purge(r#"{"source":"local","key":"pq.bin"}"#).await, 0);
    assert!(purge(r#"{"source":"local","key":"a.bin"}"#).await >= 1);
    assert_eq!(
        purge(r#"{"source":"local","key":"a.bin"}"#).await,
        0,
        "gone"
    );
    assert!(purge(r#"{"source":"local","prefix":"p/"}"#).await >= 1);
    let (_, answer) = s.authed(reqwest::Method::GET, "/admin/cache", None).await;
    let stats = json(&answer);
    assert_eq!(stats["memory_entries"], 0, "{stats}");
    assert_eq!(stats["memory_bytes"], 0, "{stats}");
    assert_eq!(purge(r#"{"source":"local"}"#).await, 0);
}

/// A prefix is listed (only what is under it, at any depth), then read.
#[tokio::test]
async fn prewarm_prefix_lists_what_is_under_it() {
    let (s, _data) = cache_setup(Some(crate::cache::memory_cache(4 << 20))).await;
    let job = s
        .prewarm_until_done(r#"{"source":"local","prefix":"p/"}"#)
        .await;
    assert_eq!(job["total"], 3, "p/one, p/two, p/deeper/three: {job}");
    assert_eq!(job["errors"], 0, "{job}");
    assert_eq!(job["bytes"], 3500, "{job}");
    let job = s
        .prewarm_until_done(r#"{"source":"local","prefix":"p"}"#)
        .await;
    assert_eq!(
        job["total"], 4,
        "a partial segment matches pq.bin too: {job}"
    );
    let job = s
        .prewarm_until_done(r#"{"source":"local","prefix":"nothing/"}"#)
        .await;
    assert_eq!(job["total"], 0, "{job}");
    assert_eq!(job["done"], 0, "{job}");
}

#[tokio::test]
async fn prewarm_refuses_saml_and_uncached_sources_and_too_broad_prefixes() {
    let (s, data) = cache_setup(Some(crate::cache::memory_cache(4 << 20))).await;
    for (body, status_wanted, says) in [
        (
            r#"{"source":"team","keys":["a"]}"#,
            400,
            "SAML session credentials",
        ),
        (
            r#"{"source":"nocache","keys":["a.bin"]}"#,
            400,
            "not cached (cache = false)",
        ),
        (
            r#"{"source":"nowhere","prefix":""}"#,
            400,
            "no source named",
        ),
        (r#"{"source":"local"}"#, 400, "expected {\"source\""),
        (r#"{"source":"local","keys":[]}"#, 400, "keys is empty"),
        (
            r#"{"source":"local","keys":["ok","bad\u0000"]}"#,
            400,
            "keys[1]",
        ),
        (
            r#"{"source":"local","keys":["a"],"bogus":true}"#,
            400,
            "unknown field `bogus`",
        ),
    ] {
        let (status, answer) = s
            .authed(reqwest::Method::POST, "/admin/cache/prewarm", Some(body))
            .await;
        assert_eq!(status, status_wanted, "{body}: {answer}");
        let error = json(&answer)["error"].as_str().unwrap().to_owned();
        assert!(error.contains(says), "{body}: {error}");
    }
    // One more object than a job may read, under one prefix.
    let wide = data.path().join("wide");
    std::fs::create_dir(&wide).unwrap();
    for i in 0..=bucketgate::admin::cache::PREWARM_MAX_KEYS {
        std::fs::write(wide.join(format!("{i:05}")), b"x").unwrap();
    }
    let (status, answer) = s
        .authed(
            reqwest::Method::POST,
            "/admin/cache/prewarm",
            Some(r#"{"source":"local","prefix":"wide/"}"#),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("more than 10000 objects"), "{answer}");
}

/// An S3 source is listed with ListObjectsV2 page after page (s3s-fs, SigV4 checked): 1,001
/// objects take two pages.
#[tokio::test]
async fn prewarm_prefix_pages_through_an_s3_listing() {
    let store = crate::support::s3::S3sFs::start("cadmin-key", "cadmin-secret").await;
    store.create_bucket("bucket").await;
    let keys: Vec<String> = (0..1001).map(|i| format!("tiles/{i:04}.bin")).collect();
    futures_util::StreamExt::collect::<Vec<_>>(futures_util::StreamExt::buffer_unordered(
        futures_util::stream::iter(keys.iter().map(|k| store.put("bucket", k, b"tile", None))),
        8,
    ))
    .await;
    store.put("bucket", "other/x.bin", b"no", None).await;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_path_buf();
    let gw = GatewayBuilder::new()
        .source(
            "s3",
            bucketgate::config::SourceConfig::S3(store.source("bucket", "")),
        )
        .tweak(move |c| {
            c.admin.token = Some(Secret::new(TOKEN.to_owned()));
            c.admin.state_dir = state_dir;
            c.cache = Some(crate::cache::memory_cache(16 << 20));
        })
        .start()
        .await;
    let s = Setup {
        gw,
        _data: tempfile::tempdir().unwrap(),
        state,
    };
    let job = s
        .prewarm_until_done(r#"{"source":"s3","prefix":"tiles/"}"#)
        .await;
    assert_eq!(job["total"], 1001, "{job}");
    assert_eq!(job["done"], 1001, "{job}");
    assert_eq!(job["errors"], 0, "{job}");
    assert_eq!(job["bytes"], 4 * 1001, "{job}");
}

/// A store that cannot list (the counting origin answers ListObjectsV2 with 501) makes a prefix
/// prewarm a 502 naming the kind of failure, not a job.
#[tokio::test]
async fn prewarm_prefix_on_a_store_that_cannot_list_is_502() {
    let origin = crate::support::origin::CountingOrigin::start().await;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_path_buf();
    let gw = GatewayBuilder::new()
        .source(
            "s3",
            bucketgate::config::SourceConfig::S3(crate::support::s3::source(
                &origin.endpoint,
                "bucket",
                "",
                "k",
                "s",
            )),
        )
        .tweak(move |c| {
            c.admin.token = Some(Secret::new(TOKEN.to_owned()));
            c.admin.state_dir = state_dir;
            c.cache = Some(crate::cache::memory_cache(4 << 20));
        })
        .start()
        .await;
    let s = Setup {
        gw,
        _data: tempfile::tempdir().unwrap(),
        state,
    };
    let (status, answer) = s
        .authed(
            reqwest::Method::POST,
            "/admin/cache/prewarm",
            Some(r#"{"source":"s3","prefix":"a/"}"#),
        )
        .await;
    assert_eq!(status, 502, "{answer}");
    assert!(answer.contains("listing the source failed"), "{answer}");
    assert!(
        origin.log().iter().any(|l| l.key.contains("list-type=2")),
        "the store was asked to list"
    );
}
