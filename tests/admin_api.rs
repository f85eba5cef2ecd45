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
