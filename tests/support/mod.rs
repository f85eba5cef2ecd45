//! Shared helpers for the integration tests: a gateway on `127.0.0.1:0` with a development
//! certificate in a tempdir, clients that trust it (reqwest for ordinary requests, raw hyper for
//! paths a URL parser would normalize, tokio-rustls for the listener's TLS edge cases), and small
//! polling helpers. The integration binary (tests/tests.rs) declares `mod support;`; each test file
//! does `use crate::support::...`.

pub mod browser;
pub mod logs;
pub mod origin;
pub mod process;
pub mod redis;
pub mod s3;
pub mod saml;
pub mod sts;
pub mod video;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bucketgate::Gateway;
use bucketgate::StartOptions;
use bucketgate::config::{
    AdminConfig, AuditConfig, AuditDestination, Config, CorsConfig, FsSource, IdentityConfig,
    KeyAlg, KeyConfig, KeyMaterial, Limits, ListenerConfig, NetworkConfig, RateLimits, Secret,
    SourceConfig, TlsConfig, default_roles,
};
use bucketgate::credentials::Clock as CredentialsClock;
use bucketgate::pipeline::admit::AdmitClock;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Which HTTP version a client offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

impl Proto {
    pub const BOTH: [Proto; 2] = [Proto::H1, Proto::H2];

    pub fn version(self) -> Version {
        match self {
            Proto::H1 => Version::HTTP_11,
            Proto::H2 => Version::HTTP_2,
        }
    }

    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Proto::H1 => vec![b"http/1.1".to_vec()],
            Proto::H2 => vec![b"h2".to_vec()],
        }
    }
}

/// Log to the test output when `RUST_LOG` is set (`RUST_LOG=bucketgate=debug cargo test ...`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// An fs source serving `dir`.
pub fn fs_source(dir: &Path) -> SourceConfig {
    SourceConfig::Fs(FsSource {
        root: dir.to_path_buf(),
    })
}

/// Limits for tests: the defaults, with short timeouts where a test might otherwise wait on them.
pub fn test_limits() -> Limits {
    Limits {
        tls_handshake_timeout: Duration::from_secs(5),
        header_read_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(20),
        upstream_connect_timeout: Duration::from_secs(2),
        upstream_first_byte_timeout: Duration::from_secs(5),
        upstream_idle_timeout: Duration::from_secs(5),
        ..Limits::default()
    }
}

/// The HS256 key every test gateway trusts (kid `test`), so tests mint tokens for it.
pub const TEST_KID: &str = "test";
pub const TEST_SECRET: &str = "bucketgate-test-hs256-secret-0123456789abcdef";
pub const TEST_AUDIENCE: &str = "bucketgate";

/// `[identity]` with the test HS256 key.
pub fn test_identity() -> IdentityConfig {
    IdentityConfig {
        audience: TEST_AUDIENCE.to_owned(),
        issuer: None,
        clock_skew: Duration::from_secs(30),
        cookie_name: "bucketgate_session".to_owned(),
        keys: vec![KeyConfig {
            kid: TEST_KID.to_owned(),
            alg: KeyAlg::Hs256,
            material: KeyMaterial::Hs256(Secret::new(TEST_SECRET.to_owned())),
            private_key: None,
            allow_non_expiring: false,
        }],
        jwks: None,
        use_window_max: Duration::from_secs(12 * 3600),
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    bucketgate::identity::unix_now()
}

/// Sign `claims` with the test key (HS256, kid `test`) using jsonwebtoken.
pub fn mint(claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(TEST_KID.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .expect("token signs")
}

/// A token for the test key: role owner, an hour of validity, whole-source scope for `sources`.
pub fn token_for_sources<'a>(sources: impl IntoIterator<Item = &'a String>) -> String {
    let scope: Vec<String> = sources.into_iter().map(|s| format!("{s}:")).collect();
    mint(&serde_json::json!({
        "sub": "test-user",
        "aud": TEST_AUDIENCE,
        "iat": now(),
        "exp": now() + 3600,
        "scope": scope,
        "role": "owner",
    }))
}

/// A running gateway plus everything it needs kept alive (its certificate directory).
pub struct TestGateway {
    gateway: Option<Gateway>,
    /// The development certificate's directory, removed on drop.
    _tls_dir: TempDir,
    cert: CertificateDer<'static>,
    cert_pem: Vec<u8>,
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    /// Added to requests by `client()`, `raw()` and friends: a token of the test key for every
    /// configured source (`None` if `customize` removed the test key).
    token: Option<String>,
}

/// A token of the test key for source `local` with `rep` (the representations it allows).
pub fn token_with_rep(rep: &[&str]) -> String {
    mint(&serde_json::json!({
        "sub": "rep-user",
        "aud": TEST_AUDIENCE,
        "iat": now(),
        "exp": now() + 600,
        "scope": ["local:"],
        "role": "owner",
        "rep": rep,
    }))
}

/// `bucketgate explain` dry runs against a config loaded from a file: an fs source `local`,
/// the test key, peers on 127.0.0.1.
pub struct DryRunConfig {
    _dir: TempDir,
    config: bucketgate::config::Config,
}

impl DryRunConfig {
    pub fn load() -> DryRunConfig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("k"), TEST_SECRET).unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            format!(
                "[listener]\naddr = \"127.0.0.1:0\"\ndev_certificate_dir = \"tls\"\n\
                 [network]\nallow = [\"127.0.0.1/32\"]\n\
                 [sources.local]\nkind = \"fs\"\nroot = \"data\"\n\
                 [identity]\naudience = \"{TEST_AUDIENCE}\"\n\
                 [[identity.keys]]\nkid = \"{TEST_KID}\"\nalg = \"HS256\"\nsecret = \"file:k\"\n",
            ),
        )
        .unwrap();
        let config = bucketgate::config::load(&path).unwrap();
        DryRunConfig { _dir: dir, config }
    }

    /// What `explain` prints for a request of `path_and_query` with `token` from 127.0.0.1.
    pub async fn explain(&self, path_and_query: &str, token: &str) -> String {
        let headers = HeaderMap::new();
        bucketgate::pipeline::explain::explain(
            &self.config,
            bucketgate::pipeline::explain::DryRun {
                peer: "127.0.0.1".parse().unwrap(),
                headers: &headers,
                path_and_query,
                token: Some(token),
                sessions: None,
            },
        )
        .await
        .unwrap()
        .to_string()
    }
}

/// Rate limits for tests: high enough that no test trips them unless it sets its own.
pub fn test_rate_limits() -> RateLimits {
    RateLimits {
        per_ip_rps: 1_000_000,
        per_ip_burst: 1_000_000,
        per_subject_rps: 1_000_000,
        per_subject_burst: 1_000_000,
        max_connections_per_ip: 100_000,
    }
}

/// How a test starts its gateway: the test config (loopback listeners on port 0, a development
/// certificate in a tempdir, [`test_limits`], [`test_rate_limits`], the test key, admin state in
/// `<tempdir>/state`, no sources) or a whole config of the test's own ([`GatewayBuilder::from_config`]),
/// changed step by step, then [`GatewayBuilder::start`]:
///
/// ```ignore
/// let gw = GatewayBuilder::new()
///     .source("local", fs_source(dir.path()))
///     .limits(limits)
///     .tweak(|c| c.network = net)
///     .clock(clock)
///     .start()
///     .await;
/// ```
///
/// Clients get a token of the test key for every configured source when the config trusts that
/// key.
pub struct GatewayBuilder {
    config: Config,
    /// Holds `cert.pem`, the certificate the clients trust.
    tls_dir: TempDir,
    options: StartOptions,
}

impl GatewayBuilder {
    /// The test config, with no source yet.
    pub fn new() -> GatewayBuilder {
        let tls_dir = tempfile::tempdir().expect("tempdir for the dev certificate");
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("loopback address");
        let config = Config {
            listener: ListenerConfig {
                addr: loopback,
                tls: TlsConfig::Development {
                    dir: tls_dir.path().to_path_buf(),
                },
                hsts: bucketgate::config::HstsConfig::default(),
            },
            admin: AdminConfig::new(loopback, tls_dir.path().join("state")),
            limits: test_limits(),
            sources: BTreeMap::new(),
            network: NetworkConfig::loopback_only(),
            rate_limits: test_rate_limits(),
            audit: AuditConfig {
                destination: AuditDestination::Off,
            },
            cors: CorsConfig::default(),
            identity: Some(test_identity()),
            roles: default_roles(),
            projects: BTreeMap::new(),
            saml: None,
            sts: bucketgate::config::StsConfig::default(),
            cache: None,
            redis: None,
            images: bucketgate::config::ImagesConfig::default(),
            video: bucketgate::config::VideoConfig::default(),
        };
        GatewayBuilder {
            config,
            tls_dir,
            options: StartOptions::default(),
        }
    }

    /// A whole config (e.g. loaded from a file) whose listener serves the certificate that
    /// `tls_dir` holds as `cert.pem`.
    pub fn from_config(config: Config, tls_dir: TempDir) -> GatewayBuilder {
        GatewayBuilder {
            config,
            tls_dir,
            options: StartOptions::default(),
        }
    }

    /// Adds (or replaces) the source `name`.
    pub fn source(mut self, name: &str, source: SourceConfig) -> GatewayBuilder {
        self.config.sources.insert(name.to_owned(), source);
        self
    }

    /// Adds (or replaces) every source of `sources`.
    pub fn sources(mut self, sources: BTreeMap<String, SourceConfig>) -> GatewayBuilder {
        self.config.sources.extend(sources);
        self
    }

    pub fn limits(mut self, limits: Limits) -> GatewayBuilder {
        self.config.limits = limits;
        self
    }

    /// Any other change to the config (network lists, listener address, identity, ...), applied
    /// now: a later `limits` or `source` call wins over it.
    pub fn tweak(mut self, tweak: impl FnOnce(&mut Config)) -> GatewayBuilder {
        tweak(&mut self.config);
        self
    }

    /// The file the config came from, to reload from (`POST /admin/reload`, SIGHUP), watched
    /// for changes when `watch`.
    pub fn reload_from(mut self, path: PathBuf, watch: bool) -> GatewayBuilder {
        self.options.config_path = Some(path);
        self.options.watch_config_file = watch;
        self
    }

    /// The rate limiters' clock.
    pub fn clock(mut self, clock: AdmitClock) -> GatewayBuilder {
        self.options.clock = clock;
        self
    }

    /// The clock of credential expiry and SAML checks.
    pub fn credentials_clock(mut self, clock: Arc<dyn CredentialsClock>) -> GatewayBuilder {
        self.options.credentials_clock = Some(clock);
        self
    }

    /// The clock tokens are judged by (`exp`, `nbf`, use windows).
    pub fn token_clock(mut self, clock: Arc<dyn CredentialsClock>) -> GatewayBuilder {
        self.options.token_clock = Some(clock);
        self
    }

    pub async fn start(self) -> TestGateway {
        init_tracing();
        let GatewayBuilder {
            config,
            tls_dir,
            options,
        } = self;
        let has_test_key = config
            .identity
            .as_ref()
            .is_some_and(|i| i.keys.iter().any(|k| k.kid == TEST_KID));
        let token = has_test_key.then(|| token_for_sources(config.sources.keys()));
        let gateway = Gateway::start_with(config, options)
            .await
            .expect("gateway starts");
        let cert_pem =
            std::fs::read(tls_dir.path().join("cert.pem")).expect("dev certificate written");
        let cert = CertificateDer::from_pem_slice(&cert_pem).expect("dev certificate parses");
        TestGateway {
            data_addr: gateway.data_addr(),
            admin_addr: gateway.admin_addr(),
            gateway: Some(gateway),
            _tls_dir: tls_dir,
            cert,
            cert_pem,
            token,
        }
    }

    /// Adds the fs source `name` over a fresh tempdir and starts; returns that directory too.
    pub async fn start_fs(self, name: &str) -> (TestGateway, TempDir) {
        let dir = tempfile::tempdir().expect("tempdir for an fs source");
        let gw = self.source(name, fs_source(dir.path())).start().await;
        (gw, dir)
    }
}

impl TestGateway {
    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("gateway not shut down yet")
    }

    /// Take the gateway out, for tests that shut it down themselves.
    pub fn take_gateway(&mut self) -> Gateway {
        self.gateway.take().expect("gateway not taken twice")
    }

    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// `https://127.0.0.1:PORT` (the dev certificate names 127.0.0.1).
    pub fn base(&self) -> String {
        format!("https://{}", self.data_addr)
    }

    /// `base` + `path_and_query` (which must start with `/` and be encoded already).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base(), path_and_query)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    /// The token the clients add (whole-source scope, role owner).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `Authorization: Bearer ...\r\n` for hand-written HTTP/1.1 requests (empty without a token).
    pub fn auth_line(&self) -> String {
        self.token
            .as_ref()
            .map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"))
    }

    fn client_builder(&self) -> reqwest::ClientBuilder {
        let mut headers = HeaderMap::new();
        if let Some(t) = &self.token {
            headers.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {t}").parse().expect("token header value"),
            );
        }
        self.anon_client_builder().default_headers(headers)
    }

    /// A client builder that adds no token.
    pub fn anon_client_builder(&self) -> reqwest::ClientBuilder {
        let root =
            reqwest::Certificate::from_pem(&self.cert_pem).expect("dev certificate for reqwest");
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .no_proxy()
            .timeout(Duration::from_secs(30))
    }

    /// A client that offers both h2 and http/1.1 by ALPN (the server picks).
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().expect("reqwest client")
    }

    /// A client whose connections come from `local` (any 127.0.0.x works on Linux loopback).
    pub fn client_from(&self, local: std::net::IpAddr) -> reqwest::Client {
        self.client_builder()
            .local_address(local)
            .build()
            .expect("reqwest client with a local address")
    }

    /// A client that offers only http/1.1.
    pub fn h1_client(&self) -> reqwest::Client {
        self.client_builder()
            .http1_only()
            .build()
            .expect("reqwest http/1.1 client")
    }

    /// A client that speaks only h2 (ALPN `h2`).
    pub fn h2_client(&self) -> reqwest::Client {
        self.client_builder()
            .http2_prior_knowledge()
            .build()
            .expect("reqwest h2 client")
    }

    pub fn client_for(&self, proto: Proto) -> reqwest::Client {
        match proto {
            Proto::H1 => self.h1_client(),
            Proto::H2 => self.h2_client(),
        }
    }

    /// A rustls client config trusting the dev certificate, with the given ALPN list and versions.
    pub fn tls_config(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert.clone())
            .expect("dev certificate as a root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// Open a TLS connection to the data listener with `config`.
    pub async fn tls_connect(
        &self,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.data_addr).await?;
        let name = ServerName::IpAddress(self.data_addr.ip().into());
        TlsConnector::from(config).connect(name, tcp).await
    }

    /// Send one request with a path exactly as given (no URL normalization), over a fresh
    /// connection with the given protocol, and read the whole response.
    pub async fn raw(
        &self,
        proto: Proto,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> RawResponse {
        self.raw_with_body(proto, method, path_and_query, headers, Bytes::new())
            .await
    }

    pub async fn raw_with_body(
        &self,
        proto: Proto,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> RawResponse {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(auth) = &auth {
            all.push(("authorization", auth.as_str()));
        }
        self.raw_exact(proto, method, path_and_query, &all, body)
            .await
    }

    /// Like [`TestGateway::raw_with_body`], but sends exactly the given headers (no token).
    pub async fn raw_exact(
        &self,
        proto: Proto,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> RawResponse {
        let alpn = proto.alpn();
        let alpn: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
        let config = self.tls_config(&alpn, rustls::ALL_VERSIONS);
        let stream = self
            .tls_connect(config)
            .await
            .expect("TLS connection to the gateway");
        let io = TokioIo::new(stream);
        // h1 takes origin-form plus Host; h2 takes the authority in the URI.
        let uri = match proto {
            Proto::H1 => path_and_query.to_string(),
            Proto::H2 => self.url(path_and_query),
        };
        let mut builder = http::Request::builder().method(method).uri(uri.as_str());
        if proto == Proto::H1 {
            builder = builder.header(http::header::HOST, self.data_addr.to_string());
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder.body(Full::new(body)).expect("raw request builds");
        let resp = match proto {
            Proto::H1 => {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .expect("h1 handshake");
                tokio::spawn(conn);
                sender.send_request(req).await.expect("h1 response")
            }
            Proto::H2 => {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .expect("h2 handshake");
                tokio::spawn(conn);
                sender.send_request(req).await.expect("h2 response")
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("raw response body").to_bytes();
        RawResponse {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        }
    }

    /// Stop the gateway and wait for it.
    pub async fn shutdown(mut self) {
        if let Some(gw) = self.gateway.take() {
            gw.shutdown().await;
        }
    }
}

/// A response read whole by [`TestGateway::raw`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Write `bytes` to `root/key`, creating parent directories.
pub fn write_file(root: &Path, key: &str, bytes: &[u8]) -> PathBuf {
    let path = root.join(key);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create parent directories");
    }
    std::fs::write(&path, bytes).expect("write test object");
    path
}

/// Deterministic, non-repeating-looking bytes (so an offset mistake shows as a mismatch).
pub fn pattern_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Poll `check` until it returns `Some`, at most `attempts` times, `interval` apart. Panics with
/// `what` if it never does. For waiting on a result without a fixed sleep.
pub async fn eventually<T, F, Fut>(what: &str, attempts: u32, interval: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..attempts {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(interval).await;
    }
    panic!("{what}: not reached after {attempts} attempts {interval:?} apart");
}

/// Resident set size of this process (the gateway runs in-process), from /proc/self/status.
pub fn vm_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value in kB");
    kib * 1024
}

/// Percent-encode every byte of a key except unreserved characters and `/`.
pub fn encode_key(key: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b'/');
    percent_encoding::utf8_percent_encode(key, KEEP).to_string()
}

/// Read until the peer closes (EOF or an error, such as a TLS stream cut without close_notify).
/// Returns what was read and whether it ended within `limit`.
pub async fn read_until_closed<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    limit: Duration,
) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match tokio::io::AsyncReadExt::read(r, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (out, closed)
}

/// Names the one test a child process of [`alone_in_child_process`] runs.
const ALONE_ENV: &str = "BUCKETGATE_TEST_ALONE";

/// For a test that changes or measures process-wide state (RLIMIT_NOFILE, RSS): the tests of
/// this binary run in parallel threads of one process, so such a test runs alone in a child
/// process of the same binary. `name` is the test's path as the harness lists it
/// (`file::test_name`).
///
/// In the child (which the env var marks) this returns `true`: the test goes on. In the parent it
/// runs the binary again with `name --exact`, panics with the child's output unless exactly that
/// one test passed there, and returns `false`: the test returns at once.
pub fn alone_in_child_process(name: &str) -> bool {
    if std::env::var_os(ALONE_ENV).is_some_and(|v| v == name) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(ALONE_ENV, name)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{name} in a child process: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    false
}
