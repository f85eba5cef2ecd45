//! The `keygen`, `sign` and `token` commands, run as the built binary; what they print is fed to a
//! running gateway configured with those keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use bucketgate::Gateway;
use bucketgate::config;

fn bucketgate(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bucketgate"))
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("run bucketgate")
}

/// Run and return stdout, trimmed; fail with stderr if the command failed.
fn ok(cwd: &Path, args: &[&str]) -> String {
    let out = bucketgate(cwd, args);
    assert!(
        out.status.success(),
        "bucketgate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn client(cert_pem: &Path) -> reqwest::Client {
    let pem = std::fs::read(cert_pem).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn cli_keygen_sign_and_token_for_every_alg_are_accepted_by_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("data")).unwrap();
    std::fs::write(root.join("data/hello.txt"), "hello cli\n").unwrap();
    let mut config_text = String::from(
        "[listener]\naddr = \"127.0.0.1:0\"\ndev_certificate_dir = \"tls\"\n\
         [admin]\naddr = \"127.0.0.1:0\"\n\
         [network]\nallow = [\"127.0.0.0/8\"]\n\
         [sources.local]\nkind = \"fs\"\nroot = \"data\"\n\
         [audit]\ndestination = \"off\"\n\
         [identity]\naudience = \"bucketgate\"\n",
    );
    let algs = ["HS256", "EdDSA", "ES256"];
    for alg in algs {
        let kid = format!("k-{alg}");
        let snippet = ok(
            root,
            &["keygen", "--alg", alg, "--out", "keys", "--kid", &kid],
        );
        assert!(snippet.starts_with("[[identity.keys]]"), "{snippet}");
        assert!(snippet.contains(&format!("alg = \"{alg}\"")), "{snippet}");
        config_text.push_str(&snippet);
        config_text.push('\n');
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for private in ["keys/k-HS256.hs256.key", "keys/k-EdDSA.private.pem"] {
            let mode = std::fs::metadata(root.join(private))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{private}");
        }
    }
    let config_path = root.join("config.toml");
    std::fs::write(&config_path, &config_text).unwrap();
    let config = config::load(&config_path).unwrap_or_else(|e| panic!("{e}\n{config_text}"));
    let gateway = Gateway::start(config).await.unwrap();
    let base = format!("https://{}", gateway.data_addr());
    let client = client(&root.join("tls/cert.pem"));
    let cfg = config_path.to_str().unwrap();
    for alg in algs {
        let kid = format!("k-{alg}");
        let url = ok(
            root,
            &[
                "sign",
                "--config",
                cfg,
                "--kid",
                &kid,
                "--source",
                "local",
                "--key",
                "hello.txt",
                "--base-url",
                &base,
            ],
        );
        assert!(
            url.starts_with(&format!("{base}/o/local/hello.txt?token=")),
            "{url}"
        );
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "signed URL of {kid}");
        assert_eq!(resp.text().await.unwrap(), "hello cli\n");

        let token = ok(
            root,
            &[
                "token", "--config", cfg, "--kid", &kid, "--source", "local", "--prefix", "",
                "--ttl", "1h",
            ],
        );
        assert_eq!(token.split('.').count(), 3, "{token}");
        let resp = client
            .get(format!("{base}/o/local/hello.txt"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "session token of {kid}");
        // The scope is what was asked for: a token for one key does not open another.
        let one_key = ok(
            root,
            &[
                "token", "--config", cfg, "--kid", &kid, "--source", "local", "--key", "other",
            ],
        );
        let resp = client
            .get(format!("{base}/o/local/hello.txt"))
            .bearer_auth(&one_key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "out-of-scope token of {kid}");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn cli_sign_without_config_mints_urls_the_embedded_default_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("data/dir")).unwrap();
    std::fs::write(root.join("data/dir/a b+ü.txt"), "spaced\n").unwrap();
    // `sign` first: it creates the development key the gateway then loads.
    let url = ok(
        root,
        &["sign", "--source", "local", "--key", "dir/a b+ü.txt"],
    );
    let prefix = "https://127.0.0.1:8443/o/local/dir/a%20b%2B%C3%BC.txt?token=";
    assert!(url.starts_with(prefix), "{url}");
    let mut config = bucketgate::app::embedded_config(root).unwrap();
    config.listener.addr = "127.0.0.1:0".parse().unwrap();
    config.admin.addr = "127.0.0.1:0".parse().unwrap();
    config.audit.destination = config::AuditDestination::Off;
    let gateway = Gateway::start(config).await.unwrap();
    let url = url.replace("127.0.0.1:8443", &gateway.data_addr().to_string());
    let client = client(&root.join(".bucketgate/cert.pem"));
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "spaced\n");
    // A second `sign` reuses the same key.
    let again = ok(
        root,
        &["sign", "--source", "local", "--key", "dir/a b+ü.txt"],
    );
    let again = again.replace("127.0.0.1:8443", &gateway.data_addr().to_string());
    assert_eq!(client.get(&again).send().await.unwrap().status(), 200);
    gateway.shutdown().await;
}

#[test]
fn cli_refuses_lifetimes_over_seven_days_and_non_expiring_tokens_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let out = bucketgate(
        dir.path(),
        &["sign", "--source", "local", "--key", "k", "--ttl", "8d"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("7 days"));
    let out = bucketgate(
        dir.path(),
        &["token", "--source", "local", "--key", "k", "--ttl", "none"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("allow_non_expiring"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn cli_keygen_never_overwrites_a_key() {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["keygen", "--alg", "EdDSA", "--kid", "k1"]);
    let before = std::fs::read(dir.path().join("k1.private.pem")).unwrap();
    let out = bucketgate(dir.path(), &["keygen", "--alg", "EdDSA", "--kid", "k1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read(dir.path().join("k1.private.pem")).unwrap(),
        before
    );
}

#[test]
fn cli_explain_with_a_token_names_the_clause_that_allows_or_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("data")).unwrap();
    std::fs::write(
        root.join("hs256.key"),
        "explain-test-secret-0123456789abcdef",
    )
    .unwrap();
    std::fs::write(
        root.join("config.toml"),
        "[listener]\naddr = \"127.0.0.1:0\"\ndev_certificate_dir = \"tls\"\n\
         [network]\nallow = [\"203.0.113.0/24\"]\n\
         [sources.local]\nkind = \"fs\"\nroot = \"data\"\n\
         [identity]\naudience = \"bucketgate\"\n\
         [[identity.keys]]\nkid = \"k\"\nalg = \"HS256\"\nsecret = \"file:hs256.key\"\n",
    )
    .unwrap();
    let token = ok(
        root,
        &[
            "token",
            "--config",
            "config.toml",
            "--source",
            "local",
            "--prefix",
            "cats/",
            "--sub",
            "ana",
        ],
    );
    let explain = |path: &str, token: &str| {
        let out = bucketgate(
            root,
            &[
                "explain",
                "--config",
                "config.toml",
                "--peer",
                "203.0.113.7",
                "--token",
                token,
                path,
            ],
        );
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
        )
    };
    let (code, out) = explain("/o/local/cats/1.jpg", &token);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("identity:  subject ana role annotator"),
        "{out}"
    );
    assert!(out.contains("authorize: allow: scope local:cats/"), "{out}");

    // A sibling prefix is outside the scope: refused, and the clause is named.
    let (code, out) = explain("/o/local/catsup/1.jpg", &token);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("authorize: refuse (403): scope"), "{out}");

    // A tampered token never gets past identity.
    let mut bad = token.clone();
    bad.push('x');
    let (code, out) = explain("/o/local/cats/1.jpg", &bad);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("identity:  refuse (401)"), "{out}");
    assert!(!out.contains(&token), "the token is never printed: {out}");

    // The same stages as a request: allowed and admitted (no quota consumed), then the plan
    // stage finds no such source (404 only now).
    let (code, out) = explain("/o/local/cats/1.jpg", &token);
    assert!(out.contains("admit:     per address"), "{out}");
    assert!(
        out.contains("plan:      source local key cats/1.jpg"),
        "{out}"
    );
    assert_eq!(code, 0, "{out}");
    let elsewhere = ok(
        root,
        &[
            "token",
            "--config",
            "config.toml",
            "--source",
            "gone",
            "--prefix",
            "cats/",
            "--sub",
            "ana",
        ],
    );
    let (code, out) = explain("/o/gone/cats/1.jpg", &elsewhere);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("authorize: allow: scope gone:cats/"), "{out}");
    assert!(
        out.contains("plan:      refuse (404): unknown source"),
        "{out}"
    );
}
