//! Live reloads: SIGHUP (the same function the signal handler calls), a Kubernetes-style `..data`
//! symlink swap seen by the file watcher, and the admin API, while clients keep requesting.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::{Proto, TestGateway};
use bucketgate::reload::{FileWatcher, ReloadError, Trigger};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

const TOKEN: &str = "reload-test-admin-token";
const BOTH: &[&str] = &["127.0.0.1/32", "127.0.0.2/32"];
const ONLY_ONE: &[&str] = &["127.0.0.1/32"];

/// A config directory laid out like a mounted Kubernetes ConfigMap:
/// `config.toml -> ..data/config.toml`, `..data -> ..vN`.
struct Env {
    dir: tempfile::TempDir,
    version: usize,
    poll_secs: u64,
}

impl Env {
    fn new(poll_secs: u64) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/hello.txt"), b"hello\n").unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        std::fs::write(dir.path().join("hs256"), support::TEST_SECRET).unwrap();
        Env {
            dir,
            version: 0,
            poll_secs,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn text(&self, allow: &[&str]) -> String {
        let d = self.dir.path().display();
        let allow: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "[listener]\naddr = \"127.0.0.1:0\"\ndev_certificate_dir = \"{d}/tls\"\n\n\
             [admin]\naddr = \"127.0.0.1:0\"\ntoken = \"file:{d}/token\"\nstate_dir = \"{d}/state\"\n\
             reload_poll_secs = {poll}\n\n\
             [rate_limits]\nper_ip_rps = 1000000\nper_ip_burst = 1000000\n\
             per_subject_rps = 1000000\nper_subject_burst = 1000000\n\n\
             [sources.local]\nkind = \"fs\"\nroot = \"{d}/data\"\n\n\
             [identity]\naudience = \"{aud}\"\n\
             [[identity.keys]]\nkid = \"{kid}\"\nalg = \"HS256\"\nsecret = \"file:{d}/hs256\"\n\n\
             [network]\nallow = [{}]\n# version {}\n",
            allow.join(", "),
            self.version,
            poll = self.poll_secs,
            aud = support::TEST_AUDIENCE,
            kid = support::TEST_KID,
        )
    }

    /// Put `text` in force the way kubelet does: a new version directory, then one rename of
    /// the `..data` symlink.
    fn swap(&mut self, text: &str) {
        self.version += 1;
        let root = self.dir.path();
        let version = root.join(format!("..v{}", self.version));
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join("config.toml"), text).unwrap();
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
        if !root.join("config.toml").exists() {
            std::os::unix::fs::symlink(root.join("..data/config.toml"), root.join("config.toml"))
                .unwrap();
        }
    }

    fn swap_allow(&mut self, allow: &[&str]) {
        let text = self.text(allow);
        self.swap(&text);
    }

    async fn start(&mut self, allow: &[&str], watch: bool) -> TestGateway {
        self.swap_allow(allow);
        let config = bucketgate::config::load(&self.path()).unwrap_or_else(|e| panic!("{e}"));
        // The gateway serves the file's development certificate (`{dir}/tls`), at start and
        // after every reload (which reads it again); clients trust a copy of it.
        let (cert, _) =
            bucketgate::server::tls::ensure_dev_cert(&self.dir.path().join("tls")).unwrap();
        let trust = tempfile::tempdir().unwrap();
        std::fs::copy(cert, trust.path().join("cert.pem")).unwrap();
        support::GatewayBuilder::from_config(config, trust)
            .reload_from(self.path(), watch)
            .start()
            .await
    }
}

async fn status_from(gw: &TestGateway, client: &reqwest::Client) -> Result<u16, reqwest::Error> {
    let resp = client.get(gw.url("/o/local/hello.txt")).send().await?;
    let status = resp.status().as_u16();
    resp.bytes().await?;
    Ok(status)
}

fn metric(gw: &TestGateway, series: &str) -> u64 {
    let text = gw.gateway().metrics().encode().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

fn reloads(gw: &TestGateway, outcome: &str, trigger: &str) -> u64 {
    metric(
        gw,
        &format!("bucketgate_config_reloads_total{{outcome=\"{outcome}\",trigger=\"{trigger}\"}}"),
    )
}

async fn put_allow(gw: &TestGateway, allow: &[&str]) -> u16 {
    let allow: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    let body = format!(
        r#"{{"allow":[{}],"deny":[],"trusted_proxies":[]}}"#,
        allow.join(",")
    );
    reqwest::Client::new()
        .put(gw.admin_url("/admin/network"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

const REQUESTS_PER_CLIENT: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_never_fails_a_request_both_rule_sets_allow() {
    let mut env = Env::new(2);
    let gw = Arc::new(env.start(BOTH, false).await);
    let mut watcher = FileWatcher::new(Arc::clone(gw.gateway().control()), env.path());
    let progress = Arc::new(AtomicUsize::new(0));

    // 127.0.0.1 is allowed by both rule sets; 127.0.0.2 only by BOTH.
    let spawn_client = |local: &str, progress: Option<Arc<AtomicUsize>>| {
        let gw = Arc::clone(&gw);
        let client = gw.client_from(local.parse().unwrap());
        tokio::spawn(async move {
            let mut results = Vec::with_capacity(REQUESTS_PER_CLIENT);
            for _ in 0..REQUESTS_PER_CLIENT {
                results.push(status_from(&gw, &client).await.map_err(|e| e.to_string()));
                if let Some(p) = &progress {
                    p.fetch_add(1, Ordering::SeqCst);
                }
            }
            results
        })
    };
    let one = spawn_client("127.0.0.1", None);
    let two = spawn_client("127.0.0.2", Some(Arc::clone(&progress)));

    // Flip the allowlist through all three paths while the clients run. Signal and file flips
    // first: once the API has persisted lists, they outrank the file (by design).
    let mut flips = 0;
    for i in 0..30 {
        if progress.load(Ordering::SeqCst) >= REQUESTS_PER_CLIENT - 10 {
            break;
        }
        let allow = if i % 2 == 0 { ONLY_ONE } else { BOTH };
        match i {
            0..20 if i % 4 < 2 => {
                env.swap_allow(allow);
                gw.gateway()
                    .reload_from_file(Trigger::Signal)
                    .await
                    .unwrap();
            }
            0..20 => {
                env.swap_allow(allow);
                assert!(watcher.poll_once().await, "the watcher sees the swap");
            }
            _ => assert_eq!(put_allow(&gw, allow).await, 200),
        }
        flips += 1;
        // Let the second client make a few requests under these rules.
        let seen = progress.load(Ordering::SeqCst);
        support::eventually("client progress", 500, Duration::from_millis(5), || {
            let done = progress.load(Ordering::SeqCst) >= (seen + 3).min(REQUESTS_PER_CLIENT);
            async move { done.then_some(()) }
        })
        .await;
    }

    let one = one.await.unwrap();
    let two = two.await.unwrap();
    assert!(flips >= 10, "only {flips} flips happened during the run");
    assert!(
        one.iter().all(|r| r == &Ok(200)),
        "127.0.0.1 is allowed by both rule sets: {:?}",
        one.iter().filter(|r| *r != &Ok(200)).collect::<Vec<_>>()
    );
    assert!(
        two.iter().all(|r| r == &Ok(200) || r == &Ok(403)),
        "127.0.0.2 is judged by one rule set or the other: {:?}",
        two.iter()
            .filter(|r| *r != &Ok(200) && *r != &Ok(403))
            .collect::<Vec<_>>()
    );
    assert!(
        two.contains(&Ok(200)) && two.contains(&Ok(403)),
        "both rule sets were seen"
    );
    assert!(reloads(&gw, "ok", "signal") >= 5);
    assert!(reloads(&gw, "ok", "file") >= 5);
    assert_eq!(
        reloads(&gw, "error", "signal") + reloads(&gw, "error", "file"),
        0
    );
    Arc::into_inner(gw).unwrap().shutdown().await;
}

#[tokio::test]
async fn invalid_configs_leave_the_old_rules_in_force_and_count_errors() {
    let mut env = Env::new(2);
    let gw = env.start(BOTH, false).await;
    let client = gw.client_from("127.0.0.2".parse().unwrap());
    let mut watcher = FileWatcher::new(Arc::clone(gw.gateway().control()), env.path());
    assert_eq!(status_from(&gw, &client).await.unwrap(), 200);

    // A TOML syntax error, through SIGHUP.
    let broken = env.text(ONLY_ONE).replace("[network]", "[network");
    let line = broken.lines().position(|l| l == "[network").unwrap() + 1;
    env.swap(&broken);
    match gw.gateway().reload_from_file(Trigger::Signal).await {
        Err(ReloadError::Config(errors)) => assert_eq!(errors.0[0].line, line, "{errors}"),
        other => panic!("expected config errors, got {other:?}"),
    }
    assert_eq!(reloads(&gw, "error", "signal"), 1);
    assert_eq!(
        status_from(&gw, &client).await.unwrap(),
        200,
        "old rules still in force"
    );

    // A bad CIDR, through the file watcher.
    env.swap_allow(&["127.0.0.1/32", "127.0.0.2/8"]);
    assert!(watcher.poll_once().await);
    assert_eq!(reloads(&gw, "error", "file"), 1);
    assert_eq!(status_from(&gw, &client).await.unwrap(), 200);
    // The same file again is not retried until it changes.
    assert!(!watcher.poll_once().await);

    // Through the API: 422 with the error's position.
    let resp = reqwest::Client::new()
        .post(gw.admin_url("/admin/reload"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body = resp.text().await.unwrap();
    assert!(body.contains("network.allow"), "{body}");
    assert_eq!(reloads(&gw, "error", "api"), 1);
    assert_eq!(status_from(&gw, &client).await.unwrap(), 200);

    // A valid file is taken.
    env.swap_allow(ONLY_ONE);
    let resp = reqwest::Client::new()
        .post(gw.admin_url("/admin/reload"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(reloads(&gw, "ok", "api"), 1);
    assert_eq!(status_from(&gw, &client).await.unwrap(), 403);
    gw.shutdown().await;
}

/// One raw connection from `local` that stays open across requests.
async fn keep_alive_status(
    gw: &TestGateway,
    proto: Proto,
    local: &str,
) -> (
    impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = u16> + Send>>,
    Arc<AtomicUsize>,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(local.parse().unwrap(), 0))
        .unwrap();
    let tcp = socket.connect(gw.data_addr()).await.unwrap();
    let alpn: &[u8] = match proto {
        Proto::H1 => b"http/1.1",
        Proto::H2 => b"h2",
    };
    let tls = gw.tls_config(&[alpn], rustls::ALL_VERSIONS);
    let name = rustls::pki_types::ServerName::IpAddress(gw.data_addr().ip().into());
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let io = TokioIo::new(stream);
    let url = gw.url("/o/local/hello.txt");
    let host = gw.data_addr().to_string();
    let bearer = format!("Bearer {}", gw.token().expect("test token"));
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&sent);
    enum Sender {
        H1(hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>),
        H2(hyper::client::conn::http2::SendRequest<Empty<bytes::Bytes>>),
    }
    let sender = match proto {
        Proto::H1 => {
            let (s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Sender::H1(s)
        }
        Proto::H2 => {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Sender::H2(s)
        }
    };
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let send = move || {
        let sender = Arc::clone(&sender);
        let url = url.clone();
        let host = host.clone();
        let bearer = bearer.clone();
        let counter = Arc::clone(&counter);
        Box::pin(async move {
            let mut sender = sender.lock().await;
            let resp = match &mut *sender {
                Sender::H1(s) => {
                    let req = http::Request::get("/o/local/hello.txt")
                        .header("host", host)
                        .header("authorization", bearer)
                        .body(Empty::new())
                        .unwrap();
                    s.send_request(req).await.expect("same connection answers")
                }
                Sender::H2(s) => {
                    let req = http::Request::get(url)
                        .header("authorization", bearer)
                        .body(Empty::new())
                        .unwrap();
                    s.send_request(req).await.expect("same connection answers")
                }
            };
            let status = resp.status().as_u16();
            resp.into_body().collect().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            status
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = u16> + Send>>
    };
    (send, sent)
}

#[tokio::test]
async fn an_open_keep_alive_connection_is_judged_by_the_new_rules_on_its_next_request() {
    let mut env = Env::new(2);
    let gw = env.start(BOTH, false).await;
    for proto in Proto::BOTH {
        env.swap_allow(BOTH);
        gw.gateway()
            .reload_from_file(Trigger::Signal)
            .await
            .unwrap();
        let (mut send, sent) = keep_alive_status(&gw, proto, "127.0.0.2").await;
        assert_eq!(send().await, 200, "{proto:?}");
        env.swap_allow(ONLY_ONE);
        gw.gateway()
            .reload_from_file(Trigger::Signal)
            .await
            .unwrap();
        assert_eq!(send().await, 403, "{proto:?}: same connection, new rules");
        env.swap_allow(BOTH);
        gw.gateway()
            .reload_from_file(Trigger::Signal)
            .await
            .unwrap();
        assert_eq!(send().await, 200, "{proto:?}: and back");
        assert_eq!(sent.load(Ordering::SeqCst), 3);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn the_file_watcher_reloads_a_symlink_swap_on_its_own() {
    let mut env = Env::new(1);
    let gw = env.start(BOTH, true).await;
    let client = gw.client_from("127.0.0.2".parse().unwrap());
    assert_eq!(status_from(&gw, &client).await.unwrap(), 200);
    env.swap_allow(ONLY_ONE);
    support::eventually(
        "the watcher applies the new file",
        100,
        Duration::from_millis(50),
        || {
            let client = client.clone();
            let gw = &gw;
            async move { (status_from(gw, &client).await.ok() == Some(403)).then_some(()) }
        },
    )
    .await;
    assert_eq!(reloads(&gw, "ok", "file"), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn persisted_admin_lists_outrank_the_file_on_reload() {
    let mut env = Env::new(2);
    let gw = env.start(BOTH, false).await;
    let client = gw.client_from("127.0.0.2".parse().unwrap());
    assert_eq!(put_allow(&gw, ONLY_ONE).await, 200);
    assert_eq!(status_from(&gw, &client).await.unwrap(), 403);
    env.swap_allow(BOTH);
    gw.gateway()
        .reload_from_file(Trigger::Signal)
        .await
        .unwrap();
    assert_eq!(
        status_from(&gw, &client).await.unwrap(),
        403,
        "the admin's list stays in force until changed through the API"
    );
    assert!(Path::new(&env.dir.path().join("state/network.json")).is_file());
    gw.shutdown().await;
}

#[tokio::test]
async fn a_key_removed_from_the_config_stops_its_tokens_at_the_next_reload() {
    let mut env = Env::new(2);
    let gw = env.start(BOTH, false).await;
    let client = gw.client_from("127.0.0.1".parse().unwrap());
    assert_eq!(status_from(&gw, &client).await.unwrap(), 200);

    // The same config, but the test key has a new kid: the old kid is gone.
    let rotated = env.text(BOTH).replace(
        &format!("kid = \"{}\"", support::TEST_KID),
        "kid = \"rotated\"",
    );
    env.swap(&rotated);
    gw.gateway()
        .reload_from_file(Trigger::Signal)
        .await
        .unwrap_or_else(|e| panic!("reload: {e:?}"));
    assert_eq!(
        status_from(&gw, &client).await.unwrap(),
        401,
        "a token of the removed kid is refused on the very next request"
    );
}

/// Every `/admin/` route, each with a request that the token in force answers without changing
/// anything: (method, path, body).
const ADMIN_ROUTES: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/admin/network", None),
    ("GET", "/admin/revocations", None),
    ("POST", "/admin/revocations", Some("{}")),
    ("PATCH", "/admin/network", Some("{}")),
    ("POST", "/admin/reload", None),
    // 409 without [redis].
    ("GET", "/admin/cluster", None),
];

async fn admin_status(
    gw: &TestGateway,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: &str,
) -> u16 {
    let mut req = reqwest::Client::new()
        .request(method.parse().unwrap(), gw.admin_url(path))
        .header("authorization", format!("Bearer {token}"));
    if let Some(body) = body {
        req = req.body(body.to_owned());
    }
    req.send().await.unwrap().status().as_u16()
}

/// Regression: `/admin/revocations` kept the token the gateway started with, so after a reload
/// rotated or removed `[admin] token` the old one still worked there.
#[tokio::test]
async fn a_rotated_or_removed_admin_token_is_refused_on_every_admin_route() {
    let mut env = Env::new(2);
    let gw = env.start(BOTH, false).await;
    for (method, path, body) in ADMIN_ROUTES {
        let status = admin_status(&gw, method, path, *body, TOKEN).await;
        assert!(
            status != 401 && status != 404,
            "{method} {path}: {status} before the rotation"
        );
    }

    // Rotate: the token file changes, the config is read again.
    let new_token = "reload-test-admin-token-rotated";
    std::fs::write(env.dir.path().join("token"), new_token).unwrap();
    env.swap_allow(BOTH);
    gw.gateway()
        .reload_from_file(Trigger::Signal)
        .await
        .unwrap_or_else(|e| panic!("reload: {e:?}"));
    for (method, path, body) in ADMIN_ROUTES {
        assert_eq!(
            admin_status(&gw, method, path, *body, TOKEN).await,
            401,
            "{method} {path}: the rotated-out token is refused"
        );
        let status = admin_status(&gw, method, path, *body, new_token).await;
        assert!(
            status != 401 && status != 404,
            "{method} {path}: {status} with the new token"
        );
    }

    // Remove: without `[admin] token` no `/admin/` route exists, whatever is presented.
    let d = env.dir.path().display().to_string();
    let without = env
        .text(BOTH)
        .replace(&format!("token = \"file:{d}/token\"\n"), "");
    assert!(!without.contains("token ="), "{without}");
    env.swap(&without);
    gw.gateway()
        .reload_from_file(Trigger::Signal)
        .await
        .unwrap_or_else(|e| panic!("reload: {e:?}"));
    for (method, path, body) in ADMIN_ROUTES {
        for token in [TOKEN, new_token] {
            assert_eq!(
                admin_status(&gw, method, path, *body, token).await,
                404,
                "{method} {path}: no admin API once the token is removed"
            );
        }
    }
    // The rest of the admin listener is unaffected.
    let health = reqwest::get(gw.admin_url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// TLS certificate reload
// ---------------------------------------------------------------------------------------------

/// A self-signed certificate for 127.0.0.1: (certificate PEM, key PEM, certificate DER).
fn cert_pair() -> (String, String, Vec<u8>) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    (
        generated.cert.pem(),
        generated.key_pair.serialize_pem(),
        generated.cert.der().to_vec(),
    )
}

impl Env {
    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("tls/cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("tls/key.pem")
    }

    /// Rewrite the certificate and key files in place, as a renewal does.
    fn write_cert(&self, cert_pem: &str, key_pem: &str) {
        std::fs::create_dir_all(self.dir.path().join("tls")).unwrap();
        std::fs::write(self.cert_path(), cert_pem).unwrap();
        std::fs::write(self.key_path(), key_pem).unwrap();
    }

    /// The config of [`Env::text`] with `tls_cert`/`tls_key` naming these files.
    fn text_naming_cert(&self, cert: &Path, key: &Path) -> String {
        let d = self.dir.path().display();
        let text = self.text(BOTH).replace(
            &format!("dev_certificate_dir = \"{d}/tls\""),
            &format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"",
                cert.display(),
                key.display()
            ),
        );
        assert!(text.contains("tls_cert"), "{text}");
        text
    }

    /// Files beside the ones [`Env::write_cert`] writes, for a config that moves to new ones.
    fn other_cert_files(&self) -> (PathBuf, PathBuf) {
        let dir = self.dir.path().join("tls-next");
        std::fs::create_dir_all(&dir).unwrap();
        (dir.join("cert.pem"), dir.join("key.pem"))
    }

    /// Start with `tls_cert`/`tls_key` naming the files [`Env::write_cert`] writes, holding
    /// `cert`.
    async fn start_with_cert(&mut self, cert: &(String, String, Vec<u8>)) -> TestGateway {
        self.write_cert(&cert.0, &cert.1);
        let text = self.text_naming_cert(&self.cert_path(), &self.key_path());
        self.swap(&text);
        let config = bucketgate::config::load(&self.path()).unwrap_or_else(|e| panic!("{e}"));
        // The test support trusts `cert.pem` of this directory.
        let trust = tempfile::tempdir().unwrap();
        std::fs::write(trust.path().join("cert.pem"), &cert.0).unwrap();
        support::GatewayBuilder::from_config(config, trust)
            .reload_from(self.path(), false)
            .start()
            .await
    }
}

/// A new http/1.1 connection to the data listener trusting every certificate in `roots`: the
/// request sender, and the leaf certificate the server presented.
async fn connect_trusting(
    gw: &TestGateway,
    roots: &[&[u8]],
) -> (
    hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>,
    Vec<u8>,
) {
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
            .unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gw.data_addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(gw.data_addr().ip().into());
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with a trusted certificate");
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    (sender, leaf)
}

/// GET hello.txt on an open connection.
async fn get_on(
    gw: &TestGateway,
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>,
) -> u16 {
    let req = http::Request::get("/o/local/hello.txt")
        .header("host", gw.data_addr().to_string())
        .header("authorization", format!("Bearer {}", gw.token().unwrap()))
        .body(Empty::new())
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .expect("the connection answers");
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    status
}

#[tokio::test]
async fn a_reload_serves_the_rewritten_certificate_to_new_connections_only() {
    let mut env = Env::new(2);
    let (a, b, c) = (cert_pair(), cert_pair(), cert_pair());
    let roots: [&[u8]; 3] = [&a.2, &b.2, &c.2];
    let gw = env.start_with_cert(&a).await;
    let (mut old, leaf) = connect_trusting(&gw, &roots).await;
    assert!(leaf == a.2, "served a certificate other than A at start");
    assert_eq!(get_on(&gw, &mut old).await, 200);

    // A renewal rewrites both files in place; the config does not change.
    env.write_cert(&b.0, &b.1);
    gw.gateway()
        .reload_from_file(Trigger::Signal)
        .await
        .unwrap_or_else(|e| panic!("reload: {e:?}"));
    let (mut new, leaf) = connect_trusting(&gw, &roots).await;
    assert!(
        leaf == b.2,
        "a new connection after the reload was not served B"
    );
    assert_eq!(get_on(&gw, &mut new).await, 200);
    assert_eq!(
        get_on(&gw, &mut old).await,
        200,
        "the connection opened with A still serves"
    );

    // Unusable files are refused, and B stays in force.
    let key_of_b_for_c = (c.0.clone(), b.1.clone());
    let broken: [(&str, (String, String)); 3] = [
        (
            "garbage certificate",
            ("not a certificate\n".into(), b.1.clone()),
        ),
        (
            "garbage key",
            (
                b.0.clone(),
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            ),
        ),
        ("key of another certificate", key_of_b_for_c),
    ];
    for (n, (what, (cert, key))) in broken.iter().enumerate() {
        env.write_cert(cert, key);
        match gw.gateway().reload_from_file(Trigger::Signal).await {
            Err(ReloadError::Tls(e)) => {
                let why = bucketgate::pipeline::ErrorChain(&e).to_string();
                assert!(!why.contains("BEGIN PRIVATE KEY"), "{what}: {why}");
            }
            other => panic!("{what}: expected a TLS error, got {other:?}"),
        }
        assert_eq!(reloads(&gw, "error", "signal"), n as u64 + 1, "{what}");
        let (mut probe, leaf) = connect_trusting(&gw, &roots).await;
        assert!(leaf == b.2, "{what}: B is no longer served");
        assert_eq!(get_on(&gw, &mut probe).await, 200, "{what}");
    }

    // A missing key file: refused too (the config names a file that is not there).
    env.write_cert(&b.0, &b.1);
    std::fs::remove_file(env.key_path()).unwrap();
    assert!(
        gw.gateway()
            .reload_from_file(Trigger::Signal)
            .await
            .is_err()
    );
    let (_, leaf) = connect_trusting(&gw, &roots).await;
    assert!(leaf == b.2, "missing key: B is no longer served");

    // Through the admin API: 422, and why.
    env.write_cert("not a certificate\n", &b.1);
    let resp = reqwest::Client::new()
        .post(gw.admin_url("/admin/reload"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body = resp.text().await.unwrap();
    assert!(body.contains("cert.pem"), "{body}");
    assert_eq!(reloads(&gw, "error", "api"), 1);
    let (_, leaf) = connect_trusting(&gw, &roots).await;
    assert!(leaf == b.2, "admin reload: B is no longer served");

    // And a good one again through the API.
    env.write_cert(&c.0, &c.1);
    let resp = reqwest::Client::new()
        .post(gw.admin_url("/admin/reload"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, leaf) = connect_trusting(&gw, &roots).await;
    assert!(leaf == c.2, "admin reload: C is not served");
    assert_eq!(
        get_on(&gw, &mut old).await,
        200,
        "the A connection still serves"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_file_watcher_reloads_a_certificate_rewritten_in_place() {
    let mut env = Env::new(1);
    let (a, b) = (cert_pair(), cert_pair());
    let roots: [&[u8]; 2] = [&a.2, &b.2];
    let gw = env.start_with_cert(&a).await;
    let mut watcher = FileWatcher::new(Arc::clone(gw.gateway().control()), env.path());
    assert!(!watcher.poll_once().await, "nothing changed yet");
    env.write_cert(&b.0, &b.1);
    assert!(
        watcher.poll_once().await,
        "the watcher sees the rewritten certificate"
    );
    assert_eq!(reloads(&gw, "ok", "file"), 1);
    let (mut sender, leaf) = connect_trusting(&gw, &roots).await;
    assert!(
        leaf == b.2,
        "a new connection after the watcher's reload was not served B"
    );
    assert_eq!(get_on(&gw, &mut sender).await, 200);
    assert!(!watcher.poll_once().await, "no change since");
    gw.shutdown().await;
}

/// Regression: the watcher watched the certificate files in force and gave up on a poll when
/// one of them could not be read, so a config moved to new files, with the old ones removed
/// before the next poll, was never reloaded.
#[tokio::test]
async fn the_file_watcher_reloads_a_config_moved_to_new_certificate_files_after_the_old_ones_are_removed()
 {
    let mut env = Env::new(1);
    let (a, b) = (cert_pair(), cert_pair());
    let roots: [&[u8]; 2] = [&a.2, &b.2];
    let gw = env.start_with_cert(&a).await;
    let mut watcher = FileWatcher::new(Arc::clone(gw.gateway().control()), env.path());

    let (cert, key) = env.other_cert_files();
    std::fs::write(&cert, &b.0).unwrap();
    std::fs::write(&key, &b.1).unwrap();
    let moved = env.text_naming_cert(&cert, &key);
    env.swap(&moved);
    std::fs::remove_file(env.cert_path()).unwrap();
    std::fs::remove_file(env.key_path()).unwrap();

    assert!(
        watcher.poll_once().await,
        "the watcher sees the config change although the old certificate files are gone"
    );
    assert_eq!(reloads(&gw, "ok", "file"), 1);
    let (mut sender, leaf) = connect_trusting(&gw, &roots).await;
    assert!(leaf == b.2, "the new files' certificate is not served");
    assert_eq!(get_on(&gw, &mut sender).await, 200);
    assert!(!watcher.poll_once().await, "no change since");

    // The new files are the ones watched now: a renewal of them is seen.
    std::fs::write(&cert, &a.0).unwrap();
    std::fs::write(&key, &a.1).unwrap();
    assert!(watcher.poll_once().await, "the renewed new files are seen");
    assert_eq!(reloads(&gw, "ok", "file"), 2);
    let (_, leaf) = connect_trusting(&gw, &roots).await;
    assert!(leaf == a.2, "the renewed certificate is not served");
    gw.shutdown().await;
}

/// Regression: after a config moved to new certificate files was refused because the new
/// certificate was broken, the watcher kept watching the old files, so fixing the new one was
/// never noticed.
#[tokio::test]
async fn the_file_watcher_notices_the_fix_of_a_refused_new_certificate() {
    let mut env = Env::new(1);
    let (a, b) = (cert_pair(), cert_pair());
    let roots: [&[u8]; 2] = [&a.2, &b.2];
    let gw = env.start_with_cert(&a).await;
    let mut watcher = FileWatcher::new(Arc::clone(gw.gateway().control()), env.path());

    let (cert, key) = env.other_cert_files();
    std::fs::write(&cert, "not a certificate\n").unwrap();
    std::fs::write(&key, &b.1).unwrap();
    let moved = env.text_naming_cert(&cert, &key);
    env.swap(&moved);
    assert!(
        watcher.poll_once().await,
        "the watcher sees the config change"
    );
    assert_eq!(
        reloads(&gw, "error", "file"),
        1,
        "the broken certificate is refused"
    );
    let (_, leaf) = connect_trusting(&gw, &roots).await;
    assert!(
        leaf == a.2,
        "A is no longer served after the refused reload"
    );
    assert!(
        !watcher.poll_once().await,
        "no change since the refused reload"
    );

    // Fix the new certificate; the config does not change.
    std::fs::write(&cert, &b.0).unwrap();
    assert!(
        watcher.poll_once().await,
        "the watcher sees the fixed certificate the config names"
    );
    assert_eq!(reloads(&gw, "ok", "file"), 1);
    let (mut sender, leaf) = connect_trusting(&gw, &roots).await;
    assert!(leaf == b.2, "the fixed certificate is not served");
    assert_eq!(get_on(&gw, &mut sender).await, 200);
    gw.shutdown().await;
}

/// A config refused because the certificate files it names do not exist yet: creating them is
/// a change the watcher sees, though the config refused names them only in its text.
#[tokio::test]
async fn the_file_watcher_notices_the_creation_of_certificate_files_a_refused_config_names() {
    let mut env = Env::new(1);
    let (a, b) = (cert_pair(), cert_pair());
    let roots: [&[u8]; 2] = [&a.2, &b.2];
    let gw = env.start_with_cert(&a).await;
    let mut watcher = FileWatcher::new(Arc::clone(gw.gateway().control()), env.path());

    let (cert, key) = env.other_cert_files();
    let moved = env.text_naming_cert(&cert, &key);
    env.swap(&moved);
    assert!(
        watcher.poll_once().await,
        "the watcher sees the config change"
    );
    assert_eq!(
        reloads(&gw, "error", "file"),
        1,
        "missing files are refused"
    );
    assert!(
        !watcher.poll_once().await,
        "no change since the refused reload"
    );

    std::fs::write(&cert, &b.0).unwrap();
    std::fs::write(&key, &b.1).unwrap();
    assert!(
        watcher.poll_once().await,
        "the watcher sees the certificate files appear"
    );
    assert_eq!(reloads(&gw, "ok", "file"), 1);
    let (_, leaf) = connect_trusting(&gw, &roots).await;
    assert!(leaf == b.2, "the new certificate is not served");
    gw.shutdown().await;
}
