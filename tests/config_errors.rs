//! Config validation, one test per class of mistake: each asserts the line, the dotted key and
//! that the message says how to fix it. Files are written to a temp directory and loaded with
//! `config::load`, so relative paths resolve the way they do for a real config file.

// Tests may unwrap and panic; the lints guard src/.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};

use bucketgate::config::{self, Config, ConfigError, S3Credentials, SourceConfig, TlsConfig};

/// A temp directory holding `data/` (a valid fs root) and the config file under test.
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        Dir { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn load(&self, text: &str) -> Result<Config, Vec<ConfigError>> {
        let path = self.config_path();
        std::fs::write(&path, text).unwrap();
        config::load(&path).map_err(|e| e.0)
    }

    fn config_path(&self) -> PathBuf {
        self.path().join("config.toml")
    }
}

/// A listener and one fs source `local`: eight lines, the last blank, that load on their own.
const BASE: &str = r#"[listener]
addr = "127.0.0.1:0"
dev_certificate_dir = ".bucketgate"

[sources.local]
kind = "fs"
root = "data"

"#;

/// [`BASE`] followed by `extra`, whose first line is line 9. A test that asserts a position in
/// the base's own lines writes its whole file out instead.
fn with_base(extra: &str) -> String {
    format!("{BASE}{extra}")
}

/// A listener and an s3 source `photos` (bucket `photos`, no credentials yet): seven lines.
const S3_BASE: &str = r#"[listener]
addr = "127.0.0.1:8443"
dev_certificate_dir = ".bucketgate"

[sources.photos]
kind = "s3"
bucket = "photos"
"#;

/// [`S3_BASE`] followed by `extra`, more keys of `[sources.photos]` from line 8 on.
fn with_s3_base(extra: &str) -> String {
    format!("{S3_BASE}{extra}")
}

fn errors(text: &str) -> Vec<ConfigError> {
    match Dir::new().load(text) {
        Ok(config) => panic!("expected errors, got {config:?}"),
        Err(errors) => errors,
    }
}

fn one_error(text: &str) -> ConfigError {
    let errors = errors(text);
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one error, got {errors:#?}"
    );
    errors.into_iter().next().unwrap()
}

#[track_caller]
fn assert_at(error: &ConfigError, line: usize, key: &str, needle: &str) {
    assert_eq!((error.line, error.key.as_str()), (line, key), "{error}");
    assert!(
        error.message.contains(needle),
        "message lacks {needle:?}: {error}"
    );
}

#[test]
fn config_example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml.example");
    let config = config::load(&path).unwrap_or_else(|e| panic!("config.toml.example:\n{e}"));
    assert_eq!(config.listener.addr.to_string(), "127.0.0.1:8443");
    assert!(matches!(config.listener.tls, TlsConfig::Development { .. }));
    assert_eq!(config.admin.addr, config::defaults::DEFAULT_ADMIN_ADDR);
    assert_eq!(config.network, config::NetworkConfig::loopback_only());
    match &config.sources["local"] {
        SourceConfig::Fs(fs) => assert!(fs.root.join("hello.txt").is_file(), "{fs:?}"),
        other => panic!("local should be fs: {other:?}"),
    }
    match &config.sources["photos"] {
        SourceConfig::S3(s3) => {
            assert_eq!(s3.prefix, "photos/");
            assert!(matches!(s3.credentials, S3Credentials::DefaultChain));
        }
        other => panic!("photos should be s3: {other:?}"),
    }
}

/// Every key the config file accepts (each `pub` field of the file structs in
/// `src/config/file.rs`) is named in config.toml.example, as a key, a table or in its comments.
#[test]
fn config_example_names_every_key_the_file_accepts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(root.join("src/config/file.rs")).unwrap();
    let example = std::fs::read_to_string(root.join("config.toml.example")).unwrap();
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let words: std::collections::BTreeSet<&str> = example.split(|c: char| !is_word(c)).collect();
    let mut keys = Vec::new();
    for line in src.lines() {
        let Some(rest) = line.trim_start().strip_prefix("pub ") else {
            continue;
        };
        let Some((name, _)) = rest.split_once(':') else {
            continue;
        };
        if !name.is_empty() && name.chars().all(is_word) {
            keys.push(name.to_string());
        }
    }
    assert!(keys.len() > 50, "found only {} keys in file.rs", keys.len());
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !words.contains(k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "config.toml.example does not mention {missing:?}"
    );
}

#[test]
fn minimal_config_gets_defaults() {
    let dir = Dir::new();
    let config = dir.load(BASE).unwrap();
    assert_eq!(config.admin.addr, config::defaults::DEFAULT_ADMIN_ADDR);
    assert_eq!(
        config.limits.idle_timeout.as_secs(),
        config::defaults::IDLE_TIMEOUT_SECS
    );
    match &config.listener.tls {
        TlsConfig::Development { dir: cert_dir } => {
            assert_eq!(cert_dir, &dir.path().join(".bucketgate"))
        }
        other => panic!("{other:?}"),
    }
    match &config.sources["local"] {
        SourceConfig::Fs(fs) => assert_eq!(fs.root, dir.path().join("data")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn config_syntax_error_points_at_the_bad_value() {
    let e = one_error(
        r#"[listener]
addr = 127.0.0.1:8443
dev_certificate_dir = ".bucketgate"
"#,
    );
    assert_at(&e, 2, "listener.addr", "fix the TOML syntax");
}

#[test]
fn config_syntax_error_outside_a_key_is_reported_with_position() {
    let e = one_error("[listener]\naddr = \"127.0.0.1:8443\"\n[sources\n");
    assert_at(&e, 3, "(syntax)", "expected `]`");
    assert_eq!(e.col, 9);
}

#[test]
fn config_unknown_key_is_named_with_the_valid_keys() {
    let e = one_error(
        r#"[listener]
addr = "127.0.0.1:8443"
dev_certificate_dir = ".bucketgate"
port = 8443
"#,
    );
    assert_at(&e, 4, "listener.port", "unknown field `port`");
    assert!(
        e.message.contains("`addr`") && e.message.contains("`tls_cert`"),
        "{e}"
    );
    assert_eq!(e.col, 1);
}

#[test]
fn config_unknown_table_is_named() {
    let e = one_error("[listner]\naddr = \"127.0.0.1:8443\"\n");
    assert_at(&e, 1, "listner", "expected one of `listener`");
}

#[test]
fn config_wrong_type_points_at_the_value() {
    let e = one_error(
        r#"[listener]
addr = "127.0.0.1:8443"
dev_certificate_dir = ".bucketgate"

[limits]
idle_timeout_secs = "60"
"#,
    );
    assert_at(&e, 6, "limits.idle_timeout_secs", "expected an integer");
    assert_eq!(e.col, 21);
}

#[test]
fn config_bad_socket_address() {
    let e = one_error(
        r#"[listener]
addr = "localhost:8443"
dev_certificate_dir = ".bucketgate"

[sources.local]
kind = "fs"
root = "data"
"#,
    );
    assert_at(&e, 2, "listener.addr", "write IP:PORT");
    assert_eq!(e.col, 8);
}

#[test]
fn config_missing_required_key_points_at_its_table() {
    let e = one_error(
        r#"[listener]
dev_certificate_dir = ".bucketgate"

[sources.local]
kind = "fs"
root = "data"
"#,
    );
    assert_at(&e, 1, "listener.addr", "add `addr = ");
}

#[test]
fn config_missing_listener_table() {
    let e = one_error("[sources.local]\nkind = \"fs\"\nroot = \"data\"\n");
    assert_at(&e, 1, "listener", "add it");
}

#[test]
fn config_tls_files_and_dev_dir_together_is_refused() {
    let e = one_error(
        r#"[listener]
addr = "127.0.0.1:8443"
tls_cert = "server.crt"
tls_key = "server.key"
dev_certificate_dir = ".bucketgate"

[sources.local]
kind = "fs"
root = "data"
"#,
    );
    assert_at(&e, 5, "listener.dev_certificate_dir", "remove the other");
}

#[test]
fn config_tls_cert_without_key_is_refused() {
    let e = one_error(
        r#"[listener]
addr = "127.0.0.1:8443"
tls_cert = "server.crt"

[sources.local]
kind = "fs"
root = "data"
"#,
    );
    assert_at(&e, 3, "listener.tls_cert", "add `tls_key`");
}

#[test]
fn config_tls_key_without_cert_is_refused() {
    let e = one_error(
        r#"[listener]
addr = "127.0.0.1:8443"
tls_key = "server.key"

[sources.local]
kind = "fs"
root = "data"
"#,
    );
    assert_at(&e, 3, "listener.tls_key", "add `tls_cert`");
}

#[test]
fn config_no_tls_at_all_is_refused() {
    let e = one_error(
        "[listener]\naddr = \"127.0.0.1:8443\"\n\n[sources.local]\nkind = \"fs\"\nroot = \"data\"\n",
    );
    assert_at(&e, 1, "listener", "dev_certificate_dir");
}

#[test]
fn config_tls_files_must_exist() {
    let dir = Dir::new();
    std::fs::write(
        dir.path().join("server.crt"),
        "-----BEGIN CERTIFICATE-----\n",
    )
    .unwrap();
    let errors = dir
        .load(
            r#"[listener]
addr = "127.0.0.1:8443"
tls_cert = "server.crt"
tls_key = "server.key"

[sources.local]
kind = "fs"
root = "data"
"#,
        )
        .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_at(&errors[0], 4, "listener.tls_key", "does not exist");
}

#[test]
fn config_admin_on_the_data_port_is_refused() {
    let e = one_error(
        r#"[listener]
addr = "127.0.0.1:8443"
dev_certificate_dir = ".bucketgate"

[admin]
addr = "127.0.0.1:8443"

[sources.local]
kind = "fs"
root = "data"
"#,
    );
    assert_at(&e, 6, "admin.addr", "its own port");
}

#[test]
fn config_zero_timeout_is_refused() {
    let e = one_error(
        r#"[listener]
addr = "127.0.0.1:8443"
dev_certificate_dir = ".bucketgate"

[limits]
upstream_max_retries = 0
idle_timeout_secs = 0

[sources.local]
kind = "fs"
root = "data"
"#,
    );
    assert_at(&e, 7, "limits.idle_timeout_secs", "0 is not allowed");
    assert!(e.message.contains("from 1 to 3600"), "{e}");
}

#[test]
fn config_limit_above_its_bound_is_refused() {
    let e = one_error(
        r#"[listener]
addr = "127.0.0.1:8443"
dev_certificate_dir = ".bucketgate"

[limits]
max_header_bytes = 2097152

[sources.local]
kind = "fs"
root = "data"
"#,
    );
    assert_at(&e, 6, "limits.max_header_bytes", "from 8192 to 1048576");
}

#[test]
fn config_max_header_bytes_below_hypers_floor_is_refused() {
    let e = one_error(
        r#"[listener]
addr = "127.0.0.1:8443"
dev_certificate_dir = ".bucketgate"

[limits]
max_header_bytes = 4096

[sources.local]
kind = "fs"
root = "data"
"#,
    );
    assert_at(&e, 6, "limits.max_header_bytes", "from 8192 to 1048576");
}

#[test]
fn config_bad_source_name() {
    let e = one_error(
        r#"[listener]
addr = "127.0.0.1:8443"
dev_certificate_dir = ".bucketgate"

[sources.Photos]
kind = "fs"
root = "data"
"#,
    );
    assert_at(&e, 5, "sources.Photos", "not a valid source name");
}

#[test]
fn config_no_sources() {
    let e =
        one_error("[listener]\naddr = \"127.0.0.1:8443\"\ndev_certificate_dir = \".bucketgate\"\n");
    assert_at(&e, 1, "sources", "add at least one");
}

#[test]
fn config_empty_sources_table() {
    let e = one_error(
        "[listener]\naddr = \"127.0.0.1:8443\"\ndev_certificate_dir = \".bucketgate\"\n\n[sources]\n",
    );
    assert_at(&e, 5, "sources", "add at least one");
}

#[test]
fn config_fs_root_missing() {
    let e = one_error(
        r#"[listener]
addr = "127.0.0.1:8443"
dev_certificate_dir = ".bucketgate"

[sources.local]
kind = "fs"
root = "no-such-dir"
"#,
    );
    assert_at(&e, 7, "sources.local.root", "does not exist; create it");
}

#[test]
fn config_fs_root_that_is_a_file() {
    let dir = Dir::new();
    std::fs::write(dir.path().join("file"), "x").unwrap();
    let errors = dir
        .load("[listener]\naddr = \"127.0.0.1:8443\"\ndev_certificate_dir = \".b\"\n[sources.local]\nkind = \"fs\"\nroot = \"file\"\n")
        .unwrap_err();
    assert_at(&errors[0], 6, "sources.local.root", "is not a directory");
}

#[test]
fn config_fs_source_with_s3_key() {
    let e = one_error(
        r#"[listener]
addr = "127.0.0.1:8443"
dev_certificate_dir = ".bucketgate"

[sources.local]
kind = "fs"
root = "data"
bucket = "photos"
"#,
    );
    assert_at(
        &e,
        8,
        "sources.local.bucket",
        "only valid for kind = \"s3\"",
    );
}

#[test]
fn config_s3_source_with_fs_key() {
    let e = one_error(&with_s3_base(
        r#"root = "data"
"#,
    ));
    assert_at(&e, 8, "sources.photos.root", "only valid for kind = \"fs\"");
}

#[test]
fn config_unknown_source_kind() {
    let e = one_error(
        "[listener]\naddr = \"127.0.0.1:8443\"\ndev_certificate_dir = \".b\"\n[sources.x]\nkind = \"gcs\"\n",
    );
    assert_at(&e, 5, "sources.x.kind", "use \"fs\" or \"s3\"");
}

#[test]
fn config_bad_bucket_name() {
    let e = one_error(
        r#"[listener]
addr = "127.0.0.1:8443"
dev_certificate_dir = ".bucketgate"

[sources.photos]
kind = "s3"
bucket = "My_Photos"
"#,
    );
    assert_at(&e, 7, "sources.photos.bucket", "not a valid S3 bucket name");
}

#[test]
fn config_bad_prefix() {
    let e = one_error(&with_s3_base(
        r#"prefix = "/photos"
"#,
    ));
    assert_at(&e, 8, "sources.photos.prefix", "write \"photos/\"");
}

#[test]
fn config_bad_endpoint_url() {
    let e = one_error(&with_s3_base(
        r#"endpoint = "http://127.0.0.1:9000/photos"
"#,
    ));
    assert_at(&e, 8, "sources.photos.endpoint", "must not have a path");
}

#[test]
fn config_endpoint_is_normalized() {
    let config = Dir::new()
        .load(&with_s3_base(
            r#"endpoint = "http://127.0.0.1:9000/"
path_style = true
"#,
        ))
        .unwrap();
    match &config.sources["photos"] {
        SourceConfig::S3(s3) => {
            assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
            assert_eq!(s3.region, "us-east-1");
            assert_eq!(s3.prefix, "");
            assert!(s3.path_style);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn config_literal_secret_is_refused_without_echoing_it() {
    let e = one_error(&with_s3_base(
        r#"credentials = { access_key_id = "AKIAEXAMPLE", secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY" }
"#,
    ));
    assert_at(
        &e,
        8,
        "sources.photos.credentials.secret_access_key",
        "\"env:NAME\"",
    );
    assert!(!e.to_string().contains("wJalrXUtnFEMI"), "{e}");
}

#[test]
fn config_unknown_credentials_string_is_refused_without_echoing_it() {
    let e = one_error(&with_s3_base(
        r#"credentials = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
"#,
    ));
    assert_at(&e, 8, "sources.photos.credentials", "\"default\"");
    assert!(!e.to_string().contains("wJalrXUtnFEMI"), "{e}");
}

#[test]
fn config_missing_env_secret_names_the_variable() {
    let e = one_error(&with_s3_base(
        r#"
[sources.photos.credentials]
access_key_id = "AKIAEXAMPLE"
secret_access_key = "env:BUCKETGATE_TEST_SURELY_UNSET_7D3F9A"
"#,
    ));
    assert_at(
        &e,
        11,
        "sources.photos.credentials.secret_access_key",
        "`BUCKETGATE_TEST_SURELY_UNSET_7D3F9A` is not set",
    );
}

#[test]
fn config_env_secret_is_resolved() {
    // PATH is set wherever the tests run; it stands in for a secret (tests cannot set variables:
    // `unsafe_code` is forbidden).
    let config = Dir::new()
        .load(&with_s3_base(
            r#"credentials = { access_key_id = "AKIAEXAMPLE", secret_access_key = "env:PATH" }
"#,
        ))
        .unwrap();
    let SourceConfig::S3(s3) = &config.sources["photos"] else {
        panic!("not s3")
    };
    let S3Credentials::Static {
        secret_access_key, ..
    } = &s3.credentials
    else {
        panic!("not static")
    };
    assert_eq!(secret_access_key.expose(), std::env::var("PATH").unwrap());
}

#[test]
fn config_file_secret_is_read_relative_to_the_config_and_trimmed() {
    let dir = Dir::new();
    std::fs::write(dir.path().join("s3-secret"), "s3cr3t-value\n").unwrap();
    let config = dir
        .load(&with_s3_base(
            r#"credentials = { access_key_id = "AKIAEXAMPLE", secret_access_key = "file:s3-secret" }
"#,
        ))
        .unwrap();
    let SourceConfig::S3(s3) = &config.sources["photos"] else {
        panic!("not s3")
    };
    let S3Credentials::Static {
        access_key_id,
        secret_access_key,
    } = &s3.credentials
    else {
        panic!("not static")
    };
    assert_eq!(access_key_id, "AKIAEXAMPLE");
    assert_eq!(secret_access_key.expose(), "s3cr3t-value");
    assert!(
        !format!("{config:?}").contains("s3cr3t"),
        "Debug must redact the secret"
    );
}

#[test]
fn config_unreadable_file_secret_names_the_file() {
    let e = one_error(&with_s3_base(
        r#"credentials = { access_key_id = "AKIAEXAMPLE", secret_access_key = "file:missing-secret" }
"#,
    ));
    assert_at(
        &e,
        8,
        "sources.photos.credentials.secret_access_key",
        "missing-secret",
    );
}

#[test]
fn config_several_errors_are_reported_together_in_file_order() {
    let dir = Dir::new();
    let text = r#"[listener]
addr = "127.0.0.1:99999"
dev_certificate_dir = ".bucketgate"

[limits]
header_read_timeout_secs = 0

[sources.local]
kind = "fs"
root = "nope"
endpoint = "http://127.0.0.1:9000"

[sources.photos]
kind = "s3"
bucket = "ab"
prefix = "photos"
"#;
    let errors = dir.load(text).unwrap_err();
    let found: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        found,
        [
            (2, "listener.addr"),
            (6, "limits.header_read_timeout_secs"),
            (10, "sources.local.root"),
            (11, "sources.local.endpoint"),
            (15, "sources.photos.bucket"),
            (16, "sources.photos.prefix"),
        ]
    );
    // Display: one `file:line:col: key: message` line per error.
    let shown = config::load(&dir.config_path()).unwrap_err().to_string();
    let origin = dir.config_path().display().to_string();
    assert_eq!(shown.lines().count(), 6, "{shown}");
    assert!(
        shown
            .lines()
            .next()
            .unwrap()
            .starts_with(&format!("{origin}:2:8: listener.addr: ")),
        "{shown}"
    );
}

#[test]
fn config_missing_file_is_one_error() {
    let dir = Dir::new();
    let errors = config::load(&dir.path().join("absent.toml")).unwrap_err().0;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].key, "(file)");
    assert!(
        errors[0].message.contains("cannot read the config file"),
        "{}",
        errors[0]
    );
}

// ---- [network] ----

#[test]
fn config_network_missing_table_denies_everything() {
    let config = Dir::new().load(BASE).unwrap();
    assert!(config.network.allow.is_empty());
    assert_eq!(
        config.network.proxy_protocol_timeout.as_millis(),
        u128::from(config::defaults::PROXY_PROTOCOL_TIMEOUT_MS)
    );
}

#[test]
fn config_network_lists_are_parsed() {
    let text = with_base(
        "[network]\nallow = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]\n\
         deny = [\"10.9.0.0/16\"]\ntrusted_proxies = [\"127.0.0.1\"]\nproxy_protocol_timeout_ms = 500\n\
         [network.sources.local]\nallow = []\n",
    );
    let config = Dir::new().load(&text).unwrap();
    let shown: Vec<String> = config
        .network
        .allow
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(shown, ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]);
    assert_eq!(config.network.proxy_protocol_timeout.as_millis(), 500);
    assert_eq!(config.network.sources["local"].allow, Some(vec![]));
}

#[test]
fn config_network_cidr_with_host_bits_suggests_the_network() {
    let text = with_base("[network]\nallow = [\"127.0.0.0/8\", \"10.0.0.1/8\"]\n");
    let e = one_error(&text);
    assert_at(&e, 10, "network.allow", "write \"10.0.0.0/8\"");
    assert_eq!(e.col, 25);
}

#[test]
fn config_network_odd_address_forms_are_refused() {
    for (bad, needle) in [
        ("010.0.0.0/8", "without leading zeros"),
        ("0x0a.0.0.0/8", "without leading zeros"),
        ("10.0.0.0/33", "prefix length"),
        ("fe80::1%eth0", "zone id"),
        ("::ffff:10.0.0.0/104", "write the IPv4 form \"10.0.0.0/8\""),
        ("", "is empty"),
    ] {
        let text = format!("{BASE}[network]\ndeny = [\"{bad}\"]\n");
        let e = one_error(&text);
        assert_at(&e, 10, "network.deny", needle);
    }
}

#[test]
fn config_network_every_bad_entry_is_reported() {
    let text = with_base(
        "[network]\nallow = [\"1.2.3.4/8\"]\ntrusted_proxies = [\"proxy.local\"]\n\
         proxy_protocol = [\"::1/129\"]\n",
    );
    let errors = errors(&text);
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "network.allow",
            "network.trusted_proxies",
            "network.proxy_protocol"
        ]
    );
}

#[test]
fn config_network_lists_for_an_unknown_source_are_an_error() {
    let text = with_base("[network]\nallow = []\n[network.sources.photos]\nallow = []\n");
    let e = one_error(&text);
    assert_at(&e, 11, "network.sources.photos", "no source named `photos`");
}

#[test]
fn config_network_source_list_entries_are_checked() {
    let text = with_base("[network.sources.local]\ndeny = [\"10.0.0.1/8\"]\n");
    let e = one_error(&text);
    assert_at(&e, 10, "network.sources.local.deny", "\"10.0.0.0/8\"");
}

#[test]
fn config_network_proxy_protocol_timeout_is_bounded() {
    let text = with_base("[network]\nproxy_protocol_timeout_ms = 0\n");
    let e = one_error(&text);
    assert_at(
        &e,
        10,
        "network.proxy_protocol_timeout_ms",
        "set a value from 1 to 60000",
    );
}

#[test]
fn config_network_misspelt_key_is_named() {
    let text = with_base("[network]\nallowed = []\n");
    let e = one_error(&text);
    assert_at(&e, 10, "network.allowed", "correct its spelling");
}

// ---- [admin] API keys and [rate_limits] ----

#[test]
fn config_admin_and_rate_limit_defaults_apply() {
    let dir = Dir::new();
    let config = dir.load(BASE).unwrap();
    assert!(config.admin.token.is_none());
    assert_eq!(config.admin.state_dir, dir.path().join(".bucketgate/state"));
    assert_eq!(config.admin.reload_poll.as_secs(), 2);
    assert_eq!(
        config.rate_limits,
        bucketgate::config::RateLimits::default()
    );
    assert_eq!(config.rate_limits.per_ip_rps, 1_000);
}

#[test]
fn config_admin_token_must_be_a_secret_reference() {
    let text = with_base("[admin]\ntoken = \"hunter2-literal\"\n");
    let e = one_error(&text);
    assert_at(&e, 10, "admin.token", "env:NAME");
    assert!(!e.message.contains("hunter2"), "{e}");
}

#[test]
fn config_admin_token_env_variable_must_be_set() {
    let text = with_base("[admin]\ntoken = \"env:BUCKETGATE_TEST_UNSET_ADMIN_TOKEN\"\n");
    let e = one_error(&text);
    assert_at(&e, 10, "admin.token", "is not set");
}

#[test]
fn config_admin_token_file_is_read_relative_to_the_config() {
    let dir = Dir::new();
    std::fs::write(dir.path().join("admin-token"), "t0ken-long-enough-16\n").unwrap();
    let config = dir
        .load(&with_base("[admin]\ntoken = \"file:admin-token\"\n"))
        .unwrap();
    assert_eq!(config.admin.token.unwrap().expose(), "t0ken-long-enough-16");
}

#[test]
fn config_admin_state_dir_must_not_be_empty() {
    let text = with_base("[admin]\nstate_dir = \"\"\n");
    let e = one_error(&text);
    assert_at(&e, 10, "admin.state_dir", "write a path");
}

#[test]
fn config_admin_reload_poll_is_bounded() {
    let text = with_base("[admin]\nreload_poll_secs = 0\n");
    let e = one_error(&text);
    assert_at(
        &e,
        10,
        "admin.reload_poll_secs",
        "set a value from 1 to 3600",
    );
}

#[test]
fn config_rate_limits_zero_is_refused_for_every_key() {
    let text = with_base(
        "[rate_limits]\nper_ip_rps = 0\nper_ip_burst = 0\nper_subject_rps = 0\n\
         per_subject_burst = -1\nmax_connections_per_ip = 0\n",
    );
    let errors = errors(&text);
    let keys: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        keys,
        vec![
            (10, "rate_limits.per_ip_rps"),
            (11, "rate_limits.per_ip_burst"),
            (12, "rate_limits.per_subject_rps"),
            (13, "rate_limits.per_subject_burst"),
            (14, "rate_limits.max_connections_per_ip"),
        ]
    );
    assert!(
        errors[0].message.contains("0 is not allowed"),
        "{}",
        errors[0]
    );
    assert!(
        errors[3].message.contains("set a value from 1 to"),
        "{}",
        errors[3]
    );
}

#[test]
fn config_rate_limits_misspelt_key_is_named() {
    let text = with_base("[rate_limits]\nper_ip_rpm = 5\n");
    let e = one_error(&text);
    assert_at(&e, 10, "rate_limits.per_ip_rpm", "correct its spelling");
}

// ---- [audit] and [cors] ----

/// [`BASE`] without its blank lines: six lines that load on their own; the table under test
/// starts on line 7.
const SHORT_BASE: &str = "[listener]\naddr = \"127.0.0.1:0\"\ndev_certificate_dir = \".bucketgate\"\n\
                    [sources.local]\nkind = \"fs\"\nroot = \"data\"\n";

#[test]
fn config_audit_file_gets_rotation_defaults() {
    let dir = Dir::new();
    let config = dir
        .load(&format!(
            "{SHORT_BASE}[audit]\ndestination = \"file\"\npath = \"audit.log\"\n"
        ))
        .unwrap();
    assert_eq!(
        config.audit.destination,
        config::AuditDestination::File {
            path: dir.path().join("audit.log"),
            max_bytes: config::defaults::AUDIT_MAX_BYTES,
            keep: config::defaults::AUDIT_KEEP,
        }
    );
    assert!(config.cors.allowed_origins.is_empty());
}

#[test]
fn config_audit_unknown_destination() {
    let e = one_error(&format!("{SHORT_BASE}[audit]\ndestination = \"syslog\"\n"));
    assert_at(&e, 8, "audit.destination", "\"stdout\", \"file\"");
}

#[test]
fn config_audit_file_without_path() {
    let e = one_error(&format!("{SHORT_BASE}[audit]\ndestination = \"file\"\n"));
    assert_at(&e, 7, "audit.path", "add e.g.");
}

#[test]
fn config_audit_path_in_missing_directory() {
    let e = one_error(&format!(
        "{SHORT_BASE}[audit]\ndestination = \"file\"\npath = \"nope/audit.log\"\n"
    ));
    assert_at(&e, 9, "audit.path", "does not exist");
}

#[test]
fn config_audit_file_keys_without_file_destination() {
    let e = one_error(&format!(
        "{SHORT_BASE}[audit]\ndestination = \"stdout\"\nkeep = 3\n"
    ));
    assert_at(&e, 9, "audit.keep", "destination = \"file\"");
}

#[test]
fn config_audit_rotation_bounds() {
    let errors = errors(&format!(
        "{SHORT_BASE}[audit]\ndestination = \"file\"\npath = \"a.log\"\nmax_bytes = 10\nkeep = -1\n"
    ));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_at(&errors[0], 10, "audit.max_bytes", "from 4096");
    assert_at(&errors[1], 11, "audit.keep", "from 0 to 1000");
}

#[test]
fn config_cors_origin_must_be_exact() {
    let errors = errors(&format!(
        "{SHORT_BASE}[cors]\nallowed_origins = [\n  \"https://ok.example.com\",\n  \"*\",\n  \
         \"https://app.example.com/\",\n  \"https://ok.example.com\",\n]\n"
    ));
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert_at(&errors[0], 10, "cors.allowed_origins", "wildcard");
    assert_at(&errors[1], 11, "cors.allowed_origins", "trailing slash");
    assert_at(&errors[2], 12, "cors.allowed_origins", "listed twice");
}

#[test]
fn config_cors_max_age_bounds() {
    let e = one_error(&format!("{SHORT_BASE}[cors]\nmax_age_secs = 0\n"));
    assert_at(&e, 8, "cors.max_age_secs", "from 1 to 86400");
}

// ---- [identity], [roles], [projects], [admin] token/state_dir ----

// SHORT_BASE (six lines, from the [audit] tests above) loads on its own; tables start on line 7.

fn with_secret_file(dir: &Dir, name: &str, value: &str) {
    std::fs::write(dir.path().join(name), value).unwrap();
}

#[test]
fn config_identity_without_audience_or_keys_is_refused() {
    let errors = errors(&format!("{SHORT_BASE}[identity]\nclock_skew_secs = 30\n"));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_at(&errors[0], 7, "identity.audience", "add `audience");
    assert_at(&errors[1], 7, "identity", "[[identity.keys]]");
}

#[test]
fn config_identity_key_with_unknown_alg_is_refused() {
    let e = one_error(&format!(
        "{SHORT_BASE}[identity]\naudience = \"a\"\n[[identity.keys]]\nkid = \"k\"\nalg = \"RS256\"\n"
    ));
    assert_at(
        &e,
        11,
        "identity.keys[0].alg",
        "use \"HS256\", \"EdDSA\" or \"ES256\"",
    );
}

#[test]
fn config_identity_short_hs256_secret_is_refused_without_echoing_it() {
    let dir = Dir::new();
    with_secret_file(&dir, "short.txt", "tooshort-secret");
    let errors = dir
        .load(&format!(
            "{SHORT_BASE}[identity]\naudience = \"a\"\n[[identity.keys]]\nkid = \"k\"\nalg = \"HS256\"\n\
             secret = \"file:short.txt\"\n"
        ))
        .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_at(
        &errors[0],
        12,
        "identity.keys[0].secret",
        "shorter than 32 bytes",
    );
    assert!(!errors[0].message.contains("tooshort"), "{}", errors[0]);
}

#[test]
fn config_identity_bad_public_key_and_duplicate_kid_are_refused() {
    let dir = Dir::new();
    with_secret_file(&dir, "pub.txt", "not a pem");
    with_secret_file(&dir, "s.txt", "0123456789abcdef0123456789abcdef");
    let errors = dir
        .load(&format!(
            "{SHORT_BASE}[identity]\naudience = \"a\"\n\
             [[identity.keys]]\nkid = \"k\"\nalg = \"EdDSA\"\npublic_key = \"file:pub.txt\"\n\
             [[identity.keys]]\nkid = \"k\"\nalg = \"HS256\"\nsecret = \"file:s.txt\"\n"
        ))
        .unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_at(
        &errors[0],
        12,
        "identity.keys[0].public_key",
        "BEGIN PUBLIC KEY",
    );
    assert_at(&errors[1], 14, "identity.keys[1].kid", "its own kid");
}

#[test]
fn config_identity_skew_above_its_bound_and_http_jwks_are_refused() {
    let errors = errors(&format!(
        "{SHORT_BASE}[identity]\naudience = \"a\"\nclock_skew_secs = 301\n\
         [identity.jwks]\nurl = \"http://idp.example.com/jwks.json\"\n"
    ));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_at(&errors[0], 9, "identity.clock_skew_secs", "from 0 to 300");
    assert_at(&errors[1], 11, "identity.jwks.url", "https://");
}

#[test]
fn config_project_with_bad_scope_or_unknown_source_is_refused() {
    let errors = errors(&format!(
        "{SHORT_BASE}[projects.p]\nsources = [\"local:a\", \"photos:team/\"]\n"
    ));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_at(&errors[0], 8, "projects.p.sources", "ends with `/`");
    assert_at(
        &errors[1],
        8,
        "projects.p.sources",
        "source `photos` is not configured",
    );
}

#[test]
fn config_bad_role_name_is_refused_and_roles_merge_over_the_seeds() {
    let e = one_error(&format!(
        "{SHORT_BASE}[roles.Admin]\nread_original = false\n"
    ));
    assert_at(&e, 7, "roles.Admin", "lowercase");
    let config = Dir::new()
        .load(&format!(
            "{SHORT_BASE}[roles.annotator]\nread_original = false\n"
        ))
        .unwrap();
    assert!(!config.roles["annotator"].read_original);
    assert!(
        !config.roles["labeler"].read_original,
        "labeler follows annotator"
    );
    assert!(config.roles["owner"].read_original);
    assert!(
        config.identity.is_none(),
        "no [identity]: fail closed at runtime"
    );
}

#[test]
fn config_short_admin_token_is_refused() {
    let dir = Dir::new();
    with_secret_file(&dir, "admin.txt", "short");
    let errors = dir
        .load(&format!(
            "[admin]\naddr = \"127.0.0.1:0\"\ntoken = \"file:admin.txt\"\n{SHORT_BASE}"
        ))
        .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_at(&errors[0], 3, "admin.token", "shorter than 16 bytes");
}

// ---- [saml] ----

/// A valid `[saml]` config: line numbers below refer to this text.
const SAML_BASE: &str = r#"[listener]
addr = "127.0.0.1:0"
dev_certificate_dir = ".bucketgate"

[sources.local]
kind = "fs"
root = "data"

[projects.cats]
sources = ["local:cats/"]

[saml]
sp_entity_id = "https://gw.example.com/saml"
acs_url = "https://gw.example.com/auth/saml/acs"

[saml.idp]
entity_id = "https://idp.example.com/metadata"
sso_url = "https://idp.example.com/sso"
certificates = ["file:idp.pem"]

[[saml.idp.roles]]
role_arn = "arn:aws:iam::123456789012:role/Annotators"
provider_arn = "arn:aws:iam::123456789012:saml-provider/Corp"
gateway_role = "annotator"
project = "cats"
"#;

/// A temp directory with `idp.pem` (a real certificate) next to the config.
fn saml_dir() -> Dir {
    let dir = Dir::new();
    let pem = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/saml-idp-example.crt");
    std::fs::copy(pem, dir.path().join("idp.pem")).unwrap();
    dir
}

/// `SAML_BASE` with `from` replaced by `to` (which must occur exactly once).
fn saml_text(from: &str, to: &str) -> String {
    assert_eq!(SAML_BASE.matches(from).count(), 1, "{from:?}");
    SAML_BASE.replace(from, to)
}

fn one_saml_error(text: &str) -> ConfigError {
    let errors = saml_dir().load(text).unwrap_err();
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one error, got {errors:#?}"
    );
    errors.into_iter().next().unwrap()
}

#[test]
fn config_saml_table_loads_with_its_defaults() {
    let config = saml_dir().load(SAML_BASE).unwrap();
    let saml = config.saml.unwrap();
    assert_eq!(saml.acs_url, "https://gw.example.com/auth/saml/acs");
    assert_eq!(
        saml.max_session.as_secs(),
        config::defaults::SAML_MAX_SESSION_SECS
    );
    assert_eq!(
        saml.idp.clock_skew.as_secs(),
        config::defaults::SAML_CLOCK_SKEW_SECS
    );
    assert_eq!(saml.idp.role_choice, config::RoleChoice::First);
    assert!(!saml.idp.allow_idp_initiated);
    assert_eq!(saml.idp.certificates.len(), 1);
    assert_eq!(saml.idp.certificates[0][0], 0x30, "DER SEQUENCE");
    assert_eq!(saml.idp.roles[0].gateway_role, "annotator");
    assert!(
        Dir::new()
            .load(&SAML_BASE[..SAML_BASE.find("[saml]").unwrap()])
            .unwrap()
            .saml
            .is_none()
    );
}

#[test]
fn config_saml_missing_required_key_points_at_its_table() {
    let e = one_saml_error(&saml_text(
        "sp_entity_id = \"https://gw.example.com/saml\"\n",
        "",
    ));
    assert_at(&e, 12, "saml.sp_entity_id", "required key is missing");
    let e = one_saml_error(&saml_text(
        "sso_url = \"https://idp.example.com/sso\"\n",
        "",
    ));
    assert_at(&e, 16, "saml.idp.sso_url", "required key is missing");
    let e = one_saml_error(&saml_text("project = \"cats\"\n", ""));
    assert_at(&e, 21, "saml.idp.roles[0].project", "add `project = ");
}

#[test]
fn config_saml_without_idp_table_or_role_rules_is_refused() {
    let text = &SAML_BASE[..SAML_BASE.find("[saml.idp]").unwrap()];
    let e = one_saml_error(text);
    assert_at(&e, 12, "saml.idp", "add [saml.idp]");
    let text = &SAML_BASE[..SAML_BASE.find("[[saml.idp.roles]]").unwrap()];
    let e = one_saml_error(text);
    assert_at(&e, 16, "saml.idp.roles", "add a [[saml.idp.roles]] table");
}

#[test]
fn config_saml_acs_url_must_be_https_on_the_acs_path() {
    for bad in [
        "http://gw.example.com/auth/saml/acs",
        "https://gw.example.com/acs",
        "https://user@gw.example.com/auth/saml/acs",
        "https://gw.example.com/auth/saml/acs?x=1",
        "/auth/saml/acs",
    ] {
        let e = one_saml_error(&saml_text("https://gw.example.com/auth/saml/acs", bad));
        assert_at(&e, 14, "saml.acs_url", "ending in `/auth/saml/acs`");
    }
}

#[test]
fn config_saml_sso_url_is_https_or_plain_http_on_loopback() {
    let e = one_saml_error(&saml_text(
        "https://idp.example.com/sso",
        "http://idp.example.com/sso",
    ));
    assert_at(&e, 18, "saml.idp.sso_url", "loopback");
    let config = saml_dir()
        .load(&saml_text(
            "https://idp.example.com/sso",
            "http://127.0.0.1:7000/sso",
        ))
        .unwrap();
    assert_eq!(
        config.saml.unwrap().idp.sso_url,
        "http://127.0.0.1:7000/sso"
    );
}

#[test]
fn config_saml_certificate_must_be_a_readable_pem_certificate() {
    let dir = saml_dir();
    std::fs::write(dir.path().join("junk.pem"), "not a certificate\n").unwrap();
    std::fs::write(
        dir.path().join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let text = saml_text(
        "certificates = [\"file:idp.pem\"]",
        "certificates = [\"file:junk.pem\", \"file:key.pem\", \"file:missing.pem\", \"MIIB\"]",
    );
    let errors = dir.load(&text).unwrap_err();
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert_at(
        &errors[0],
        19,
        "saml.idp.certificates",
        "no readable PEM certificate",
    );
    assert_at(&errors[1], 19, "saml.idp.certificates", "private key");
    assert_at(&errors[2], 19, "saml.idp.certificates", "missing.pem");
    assert_at(&errors[3], 19, "saml.idp.certificates", "\"file:");
    let e = one_saml_error(&saml_text("[\"file:idp.pem\"]", "[]"));
    assert_at(&e, 19, "saml.idp.certificates", "is empty");
}

#[test]
fn config_saml_certificates_accept_two_during_rotation() {
    let dir = saml_dir();
    std::fs::copy(dir.path().join("idp.pem"), dir.path().join("next.pem")).unwrap();
    let config = dir
        .load(&saml_text(
            "[\"file:idp.pem\"]",
            "[\"file:idp.pem\", \"file:next.pem\"]",
        ))
        .unwrap();
    assert_eq!(config.saml.unwrap().idp.certificates.len(), 2);
}

#[test]
fn config_saml_unknown_role_choice_lists_the_choices() {
    let e = one_saml_error(&saml_text(
        "certificates = [\"file:idp.pem\"]\n",
        "certificates = [\"file:idp.pem\"]\nrole_choice = \"best\"\n",
    ));
    assert_at(&e, 20, "saml.idp.role_choice", "\"first\"");
}

/// `SAML_BASE` with `[roles.curator]` (`rank`: that line, if any) and role_choice = "highest",
/// the rule mapping to curator.
fn saml_highest(rank: &str) -> String {
    saml_text(
        "[saml]\n",
        &format!("[roles.curator]\nread_original = true\n{rank}\n[saml]\n"),
    )
    .replace(
        "certificates = [\"file:idp.pem\"]\n",
        "certificates = [\"file:idp.pem\"]\nrole_choice = \"highest\"\n",
    )
    .replace("gateway_role = \"annotator\"", "gateway_role = \"curator\"")
}

#[test]
fn config_saml_highest_needs_a_rank_for_each_mapped_role() {
    let config = saml_dir().load(&saml_highest("rank = 25\n")).unwrap();
    assert_eq!(config.roles["curator"].rank, Some(25));
    assert_eq!(
        config.roles["owner"].rank,
        Some(50),
        "the seeds keep theirs"
    );
    assert_eq!(
        config.saml.unwrap().idp.role_choice,
        config::RoleChoice::Highest
    );
    let e = one_saml_error(&saml_highest(""));
    assert_eq!(e.key, "saml.idp.roles[0].gateway_role", "{e}");
    assert!(e.message.contains("has no rank"), "{e}");
    // Without "highest" an unranked role is fine.
    let first = saml_highest("").replace("role_choice = \"highest\"\n", "");
    assert_eq!(saml_dir().load(&first).unwrap().roles["curator"].rank, None);
    let e = one_saml_error(&saml_highest("rank = 1001\n"));
    assert_eq!(e.key, "roles.curator.rank", "{e}");
    assert!(e.message.contains("from 0 to 1000"), "{e}");
}

#[test]
fn config_saml_login_cookie_key_is_a_secret_of_at_least_32_bytes() {
    let with_key = |reference: &str| {
        saml_text(
            "[saml.idp]\n",
            &format!("login_cookie_key = \"{reference}\"\n\n[saml.idp]\n"),
        )
    };
    let dir = saml_dir();
    let key = "0123456789abcdef0123456789abcdef";
    std::fs::write(dir.path().join("login.key"), format!("{key}\n")).unwrap();
    let config = dir.load(&with_key("file:login.key")).unwrap();
    let saml = config.saml.unwrap();
    assert_eq!(saml.login_cookie_key.unwrap().expose(), key);
    assert!(
        saml_dir()
            .load(SAML_BASE)
            .unwrap()
            .saml
            .unwrap()
            .login_cookie_key
            .is_none()
    );

    let dir = saml_dir();
    std::fs::write(dir.path().join("login.key"), "short-s3cret\n").unwrap();
    let errors = dir.load(&with_key("file:login.key")).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].key, "saml.login_cookie_key");
    assert!(errors[0].message.contains("at least 32"), "{}", errors[0]);
    assert!(!errors[0].message.contains("short-s3cret"), "never echoed");
    let e = one_saml_error(&with_key("a-literal-key-is-refused-0123456789"));
    assert_eq!(e.key, "saml.login_cookie_key");
    assert!(e.message.contains("env:NAME"), "{e}");
    assert!(!e.message.contains("a-literal-key"), "never echoed");
}

#[test]
fn config_saml_role_and_provider_arns_are_checked() {
    let e = one_saml_error(&saml_text(
        "role_arn = \"arn:aws:iam::123456789012:role/Annotators\"",
        "role_arn = \"arn:aws:iam::123456789012:saml-provider/Corp\"",
    ));
    assert_at(&e, 22, "saml.idp.roles[0].role_arn", "not an IAM role ARN");
    let e = one_saml_error(&saml_text(
        "provider_arn = \"arn:aws:iam::123456789012:saml-provider/Corp\"",
        "provider_arn = \"Corp\"",
    ));
    assert_at(
        &e,
        23,
        "saml.idp.roles[0].provider_arn",
        "SAML provider ARN",
    );
}

#[test]
fn config_saml_role_rule_must_name_a_configured_role_and_project() {
    let dir = saml_dir();
    let text = saml_text("gateway_role = \"annotator\"", "gateway_role = \"wizard\"")
        .replace("project = \"cats\"", "project = \"dogs\"");
    let errors = dir.load(&text).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_at(
        &errors[0],
        24,
        "saml.idp.roles[0].gateway_role",
        "add [roles.wizard]",
    );
    assert_at(
        &errors[1],
        25,
        "saml.idp.roles[0].project",
        "add [projects.dogs]",
    );
}

#[test]
fn config_saml_same_role_pair_twice_is_refused() {
    let rule = &SAML_BASE[SAML_BASE.find("[[saml.idp.roles]]").unwrap()..];
    let text = format!("{SAML_BASE}\n{}", rule.replace("annotator", "reviewer"));
    let e = one_saml_error(&text);
    assert_at(&e, 27, "saml.idp.roles[1]", "listed twice");
}

#[test]
fn config_saml_session_and_skew_limits_are_bounded() {
    let e = one_saml_error(&saml_text(
        "acs_url = \"https://gw.example.com/auth/saml/acs\"\n",
        "acs_url = \"https://gw.example.com/auth/saml/acs\"\nmax_session_secs = 600\n",
    ));
    assert_at(&e, 15, "saml.max_session_secs", "from 900 to 43200");
    let e = one_saml_error(&saml_text(
        "certificates = [\"file:idp.pem\"]\n",
        "certificates = [\"file:idp.pem\"]\nclock_skew_secs = 301\n",
    ));
    assert_at(&e, 20, "saml.idp.clock_skew_secs", "from 0 to 300");
}

#[test]
fn config_saml_max_response_age_has_a_default_and_bounds() {
    let saml = saml_dir().load(SAML_BASE).unwrap().saml.unwrap();
    assert_eq!(
        saml.max_response_age.as_secs(),
        config::defaults::SAML_MAX_RESPONSE_AGE_SECS
    );
    let set = |value: &str| {
        saml_text(
            "acs_url = \"https://gw.example.com/auth/saml/acs\"\n",
            &format!(
                "acs_url = \"https://gw.example.com/auth/saml/acs\"\nmax_response_age_secs = {value}\n"
            ),
        )
    };
    let saml = saml_dir().load(&set("120")).unwrap().saml.unwrap();
    assert_eq!(saml.max_response_age.as_secs(), 120);
    for bad in ["0", "5", "3601", "-1"] {
        let e = one_saml_error(&set(bad));
        assert_at(&e, 15, "saml.max_response_age_secs", "from 10 to 3600");
    }
}

#[test]
fn config_saml_misspelt_key_is_named() {
    let e = one_saml_error(&saml_text(
        "certificates = [\"file:idp.pem\"]\n",
        "certificates = [\"file:idp.pem\"]\nallow_idp_initated = true\n",
    ));
    assert_at(&e, 20, "saml.idp.allow_idp_initated", "unknown field");
}

// ---- [sts] and STS-backed source credentials ----

/// A valid s3 source `photos` (line 5) whose `credentials` is line 8, then `extra` from line 9.
fn sts_text(credentials: &str, extra: &str) -> String {
    with_s3_base(&format!("credentials = {credentials}\n{extra}"))
}

const ROLE: &str = "arn:aws:iam::123456789012:role/Reader";

#[test]
fn config_sts_and_assume_role_are_read_with_their_defaults() {
    let config = Dir::new()
        .load(&sts_text(
            &format!(r#"{{ assume_role = "{ROLE}", external_id = "ext-123" }}"#),
            "[sts]\nendpoint = \"http://127.0.0.1:5000\"\n",
        ))
        .unwrap();
    assert_eq!(config.sts.region, "us-east-1");
    assert_eq!(
        config.sts.endpoint.as_deref(),
        Some("http://127.0.0.1:5000")
    );
    assert_eq!(config.sts.timeout, std::time::Duration::from_secs(5));
    assert!(config.sts.credentials.is_none());
    let SourceConfig::S3(s3) = &config.sources["photos"] else {
        panic!("photos is s3");
    };
    let S3Credentials::AssumeRole(role) = &s3.credentials else {
        panic!("assume_role credentials: {:?}", s3.credentials);
    };
    assert_eq!(role.role_arn, ROLE);
    assert_eq!(role.external_id.as_deref(), Some("ext-123"));
    assert_eq!(role.session_name, "bucketgate");
    assert_eq!(role.duration, std::time::Duration::from_secs(3600));
}

#[test]
fn config_sts_region_endpoint_and_timeout_are_checked() {
    let errors = errors(&sts_text(
        "\"default\"",
        "[sts]\nregion = \"US East\"\nendpoint = \"https://sts.example.com/path\"\ntimeout_secs = 0\n",
    ));
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert_at(&errors[0], 10, "sts.region", "\"us-east-1\"");
    assert_at(&errors[1], 11, "sts.endpoint", "must not have a path");
    assert_at(&errors[2], 12, "sts.timeout_secs", "from 1 to 60");
}

#[test]
fn config_sts_misspelt_key_is_named() {
    let e = one_error(&sts_text("\"default\"", "[sts]\ntimeout = \"5s\"\n"));
    assert_at(&e, 10, "sts.timeout", "unknown field");
}

#[test]
fn config_sts_credentials_cannot_be_saml_or_a_role() {
    let e = one_error(&sts_text("\"default\"", "[sts]\ncredentials = \"saml\"\n"));
    assert_at(&e, 10, "sts.credentials", "belong on a source");
}

#[test]
fn config_sts_static_credentials_need_a_secret_reference() {
    let e = one_error(&sts_text(
        "\"default\"",
        "[sts]\ncredentials = { access_key_id = \"AKIAEXAMPLE\", secret_access_key = \"wJalrXUtnFEMIEXAMPLEKEY\" }\n",
    ));
    assert_at(&e, 10, "sts.credentials.secret_access_key", "\"env:NAME\"");
    assert!(!e.to_string().contains("wJalrXUtnFEMI"), "{e}");
}

#[test]
fn config_assume_role_must_be_an_iam_role_arn() {
    let e = one_error(&sts_text(
        r#"{ assume_role = "arn:aws:iam::123456789012:user/Reader" }"#,
        "",
    ));
    assert_at(
        &e,
        8,
        "sources.photos.credentials.assume_role",
        "arn:aws:iam::ACCOUNT_ID:role/NAME",
    );
}

#[test]
fn config_role_keys_without_assume_role_are_refused() {
    let e = one_error(&sts_text(r#"{ external_id = "ext-123" }"#, ""));
    assert_at(
        &e,
        8,
        "sources.photos.credentials.assume_role",
        "add `assume_role = ",
    );
}

#[test]
fn config_static_keys_and_assume_role_together_are_refused() {
    let e = one_error(&sts_text(
        &format!(r#"{{ assume_role = "{ROLE}", access_key_id = "AKIAEXAMPLE" }}"#),
        "",
    ));
    assert_at(
        &e,
        8,
        "sources.photos.credentials.access_key_id",
        "keep either",
    );
}

#[test]
fn config_assume_role_duration_is_bounded_by_sts_limits() {
    let e = one_error(&sts_text(
        &format!(r#"{{ assume_role = "{ROLE}", duration_secs = 600 }}"#),
        "",
    ));
    assert_at(
        &e,
        8,
        "sources.photos.credentials.duration_secs",
        "from 900 to 43200",
    );
}

#[test]
fn config_assume_role_session_name_follows_the_sts_alphabet() {
    let e = one_error(&sts_text(
        &format!(r#"{{ assume_role = "{ROLE}", session_name = "has spaces" }}"#),
        "",
    ));
    assert_at(
        &e,
        8,
        "sources.photos.credentials.session_name",
        "2 to 64 characters",
    );
}

#[test]
fn config_bad_external_id_is_refused_without_echoing_it() {
    let e = one_error(&sts_text(
        &format!(r#"{{ assume_role = "{ROLE}", external_id = "secret external id" }}"#),
        "",
    ));
    assert_at(
        &e,
        8,
        "sources.photos.credentials.external_id",
        "copy it exactly",
    );
    assert!(!e.to_string().contains("secret external id"), "{e}");
}

#[test]
fn config_saml_credentials_need_a_saml_section() {
    let e = one_error(&sts_text("\"saml\"", ""));
    assert_at(&e, 8, "sources.photos.credentials", "add [saml]");
}

// ---- [cache] ----

/// 32 bytes as 64 hex characters, the form `openssl rand -hex 32` prints.
const CACHE_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// `dir` with `cache.key` holding `value`, then loads [`BASE`] + `extra`.
fn load_with_cache_key(value: &str, extra: &str) -> (Dir, Result<Config, Vec<ConfigError>>) {
    let dir = Dir::new();
    std::fs::write(dir.path().join("cache.key"), value).unwrap();
    let result = dir.load(&with_base(extra));
    (dir, result)
}

#[test]
fn config_without_cache_table_caches_nothing() {
    let config = Dir::new().load(BASE).unwrap();
    assert!(config.cache.is_none());
}

#[test]
fn config_cache_table_alone_gets_a_memory_tier_with_defaults() {
    let config = Dir::new().load(&with_base("[cache]\n")).unwrap();
    let cache = config.cache.unwrap();
    assert_eq!(cache.memory_bytes, config::defaults::CACHE_MEMORY_BYTES);
    assert_eq!(cache.chunk_bytes, 1024 * 1024);
    assert_eq!(
        cache.metadata_ttl.as_secs(),
        config::defaults::CACHE_METADATA_TTL_SECS
    );
    assert!(cache.disk.is_none() && cache.bypass.is_empty());
}

#[test]
fn config_embedded_default_runs_a_small_memory_cache() {
    let dir = Dir::new();
    let config = bucketgate::app::embedded_config(dir.path()).unwrap();
    let cache = config.cache.expect("the embedded default caches");
    assert_eq!(cache.memory_bytes, 64 * 1024 * 1024);
    assert!(cache.disk.is_none());
}

#[test]
fn config_cache_chunk_must_be_a_power_of_two() {
    let e = one_error(&with_base("[cache]\nchunk_bytes = 1000000\n"));
    assert_at(&e, 10, "cache.chunk_bytes", "not a power of two");
    assert!(e.message.contains("1048576"), "{e}");
}

#[test]
fn config_cache_chunk_outside_256k_to_16m_is_refused() {
    let e = one_error(&with_base("[cache]\nchunk_bytes = 131072\n"));
    assert_at(&e, 10, "cache.chunk_bytes", "from 262144 to 16777216");
    let e = one_error(&with_base("[cache]\nchunk_bytes = 33554432\n"));
    assert_at(&e, 10, "cache.chunk_bytes", "from 262144 to 16777216");
}

#[test]
fn config_cache_memory_must_hold_one_chunk() {
    let e = one_error(&with_base(
        "[cache]\nmemory_bytes = 2097152\nchunk_bytes = 4194304\n",
    ));
    assert_at(&e, 10, "cache.memory_bytes", "cannot hold one chunk");
}

#[test]
fn config_cache_metadata_ttl_zero_means_always_revalidate() {
    let config = Dir::new()
        .load(&with_base("[cache]\nmetadata_ttl_secs = 0\n"))
        .unwrap();
    assert!(config.cache.unwrap().metadata_ttl.is_zero());
    let e = one_error(&with_base("[cache]\nmetadata_ttl_secs = 100000\n"));
    assert_at(&e, 10, "cache.metadata_ttl_secs", "from 0 to 86400");
}

#[test]
fn config_cache_unknown_key_is_refused() {
    let e = one_error(&with_base("[cache]\ndisk_size = 5\n"));
    assert_at(&e, 10, "cache.disk_size", "unknown field `disk_size`");
    assert!(e.message.contains("`disk_bytes`"), "{e}");
}

#[test]
fn config_cache_disk_dir_needs_disk_bytes_and_back() {
    let e = one_error(&with_base(
        "[cache]\ndisk_dir = \"cache\"\nencrypt = false\n",
    ));
    assert_at(&e, 10, "cache.disk_bytes", "required with disk_dir");
    let e = one_error(&with_base(
        "[cache]\ndisk_bytes = 104857600\nencrypt = false\n",
    ));
    assert_at(&e, 10, "cache.disk_dir", "required with disk_bytes");
}

#[test]
fn config_cache_disk_without_key_names_both_ways_out() {
    let e = one_error(&with_base(
        "[cache]\ndisk_dir = \"cache\"\ndisk_bytes = 104857600\n",
    ));
    assert_at(&e, 10, "cache.key", "has no key");
    assert!(
        e.message.contains("key_id") && e.message.contains("encrypt = false"),
        "{e}"
    );
}

#[test]
fn config_cache_disk_with_encrypt_false_stores_in_the_clear() {
    let dir = Dir::new();
    let config = dir
        .load(&with_base(
            "[cache]\ndisk_dir = \"cache\"\ndisk_bytes = 104857600\nencrypt = false\n",
        ))
        .unwrap();
    let disk = config.cache.unwrap().disk.unwrap();
    assert_eq!(disk.dir, dir.path().join("cache"));
    assert_eq!(disk.max_bytes, 104_857_600);
    assert!(matches!(disk.encryption, config::DiskEncryption::Off));
}

#[test]
fn config_cache_key_is_read_from_its_reference_as_hex() {
    let (_dir, result) = load_with_cache_key(
        &format!("{CACHE_KEY_HEX}\n"),
        "[cache]\ndisk_dir = \"cache\"\ndisk_bytes = 104857600\nkey = \"file:cache.key\"\n\
         key_id = \"2026-01\"\n",
    );
    let disk = result.unwrap().cache.unwrap().disk.unwrap();
    match &disk.encryption {
        config::DiskEncryption::Aes256Gcm { key_id, key } => {
            assert_eq!(key_id, "2026-01");
            assert_eq!(key[0..3], [0, 1, 2]);
            assert_eq!(key[31], 31);
        }
        other => panic!("{other:?}"),
    }
    // The key never prints.
    assert!(!format!("{disk:?}").contains("[0, 1, 2"), "{disk:?}");
}

#[test]
fn config_cache_key_of_the_wrong_form_is_refused_without_echoing_it() {
    let extra = "[cache]\ndisk_dir = \"cache\"\ndisk_bytes = 104857600\nkey = \"file:cache.key\"\n\
                 key_id = \"k1\"\n";
    for (value, problem) in [
        ("0011223344556677", "has 16 characters"),
        (
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            "has 44 characters",
        ),
        (&*"zz".repeat(32), "not a hex digit"),
    ] {
        let (_dir, result) = load_with_cache_key(value, extra);
        let errors = result.unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_at(&errors[0], 12, "cache.key", "64 hex characters");
        assert!(errors[0].message.contains(problem), "{}", errors[0]);
        assert!(!errors[0].to_string().contains(value), "{}", errors[0]);
    }
}

#[test]
fn config_cache_key_reference_must_be_env_or_file() {
    let e = one_error(&with_base(&format!(
        "[cache]\ndisk_dir = \"cache\"\ndisk_bytes = 104857600\nkey = \"{CACHE_KEY_HEX}\"\n\
         key_id = \"k1\"\n"
    )));
    assert_at(&e, 12, "cache.key", "a literal secret is not allowed");
    assert!(!e.to_string().contains(CACHE_KEY_HEX), "{e}");
}

#[test]
fn config_cache_key_needs_a_key_id() {
    let (_dir, result) = load_with_cache_key(
        CACHE_KEY_HEX,
        "[cache]\ndisk_dir = \"cache\"\ndisk_bytes = 104857600\nkey = \"file:cache.key\"\n",
    );
    let errors = result.unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_at(&errors[0], 12, "cache.key_id", "required with key");
}

#[test]
fn config_cache_key_id_is_short_and_printable() {
    let (_dir, result) = load_with_cache_key(
        CACHE_KEY_HEX,
        "[cache]\ndisk_dir = \"cache\"\ndisk_bytes = 104857600\nkey = \"file:cache.key\"\n\
         key_id = \"key one\"\n",
    );
    let errors = result.unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_at(&errors[0], 13, "cache.key_id", "1 to 32 letters");
}

#[test]
fn config_cache_encrypt_false_with_a_key_is_a_contradiction() {
    let (_dir, result) = load_with_cache_key(
        CACHE_KEY_HEX,
        "[cache]\ndisk_dir = \"cache\"\ndisk_bytes = 104857600\nkey = \"file:cache.key\"\n\
         key_id = \"k1\"\nencrypt = false\n",
    );
    let errors = result.unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_at(&errors[0], 14, "cache.encrypt", "contradict each other");
}

#[test]
fn config_cache_encrypt_true_needs_a_key() {
    let e = one_error(&with_base(
        "[cache]\ndisk_dir = \"cache\"\ndisk_bytes = 104857600\nencrypt = true\n",
    ));
    assert_at(&e, 12, "cache.key", "`encrypt = true` needs a key");
}

#[test]
fn config_cache_key_without_a_disk_tier_is_refused() {
    let (_dir, result) = load_with_cache_key(
        CACHE_KEY_HEX,
        "[cache]\nkey = \"file:cache.key\"\nkey_id = \"k1\"\n",
    );
    let errors = result.unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_at(&errors[0], 10, "cache.key", "only used by the disk tier");
    assert_at(&errors[1], 11, "cache.key_id", "only used by the disk tier");
}

#[test]
fn config_cache_disk_budget_must_hold_two_chunks() {
    let e = one_error(&with_base(
        "[cache]\nchunk_bytes = 1048576\ndisk_dir = \"cache\"\ndisk_bytes = 1048576\n\
         encrypt = false\n",
    ));
    assert_at(&e, 12, "cache.disk_bytes", "cannot hold two chunks");
    let e = one_error(&with_base(
        "[cache]\ndisk_dir = \"cache\"\ndisk_bytes = 0\nencrypt = false\n",
    ));
    assert_at(&e, 11, "cache.disk_bytes", "from 1048576 (1 MiB)");
}

#[test]
fn config_cache_disk_dir_that_is_a_file_is_refused() {
    let dir = Dir::new();
    std::fs::write(dir.path().join("cache"), "").unwrap();
    let errors = dir
        .load(&with_base(
            "[cache]\ndisk_dir = \"cache\"\ndisk_bytes = 104857600\nencrypt = false\n",
        ))
        .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_at(&errors[0], 10, "cache.disk_dir", "is not a directory");
}

#[test]
fn config_source_cache_false_bypasses_the_cache() {
    let text = format!(
        "{}\ncache = false\n\n[sources.other]\nkind = \"fs\"\nroot = \"data\"\ncache = true\n\n\
         [cache]\n",
        BASE.trim_end()
    );
    let config = Dir::new().load(&format!("{text}\n")).unwrap();
    let bypass = config.cache.unwrap().bypass;
    assert_eq!(bypass.into_iter().collect::<Vec<_>>(), ["local"]);
}

#[test]
fn config_source_cache_flag_without_cache_table_is_refused() {
    let text = format!("{}\ncache = false\n", BASE.trim_end());
    let e = one_error(&format!("{text}\n"));
    assert_at(&e, 8, "sources.local.cache", "there is no [cache] table");
}

#[test]
fn config_images_absent_means_images_on_with_the_defaults() {
    let config = Dir::new().load(BASE).unwrap();
    assert_eq!(config.images, config::ImagesConfig::default());
    assert!(config.images.enabled && config.images.base_url.is_none());
    let config = Dir::new()
        .load(&with_base(
            "[images]\nenabled = false\nbase_url = \"https://assets.example.com/gw\"\n\
             max_output_side = 4096\nworkers = 0\nqueue = 0\ntile_size = 256\n",
        ))
        .unwrap();
    assert!(!config.images.enabled);
    assert_eq!(
        config.images.base_url.as_deref(),
        Some("https://assets.example.com/gw")
    );
    assert_eq!(
        (
            config.images.max_output_side,
            config.images.queue,
            config.images.tile_size
        ),
        (4096, 0, 256)
    );
}

#[test]
fn config_images_errors_point_at_the_key() {
    let e = one_error(&with_base("[images]\nmax_output_side = 0\n"));
    assert_at(&e, 10, "images.max_output_side", "0 is not allowed");
    let e = one_error(&with_base(
        "[images]\nbase_url = \"http://assets.example.com\"\n",
    ));
    assert_at(&e, 10, "images.base_url", "loopback");
    let e = one_error(&with_base(
        "[images]\nbase_url = \"https://a.example.com/\"\n",
    ));
    assert_at(&e, 10, "images.base_url", "ends with a slash");
    let e = one_error(&with_base(
        "[images]\nmax_output_side = 300\ntile_size = 512\n",
    ));
    assert_at(&e, 11, "images.tile_size", "max_output_side");
    let e = one_error(&with_base("[images]\njob_timeout_secs = 601\n"));
    assert_at(&e, 10, "images.job_timeout_secs", "out of range");
}
