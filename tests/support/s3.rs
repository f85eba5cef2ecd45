//! Real S3 servers for tests, each on its own `127.0.0.1:0` port and torn down on drop:
//!
//! - [`S3sFs`]: s3s-fs in this process, with SigV4 really checked (`SimpleAuth`), storing objects
//!   in a temporary directory. Fast; stores keys as file paths, so keys that are not valid
//!   relative paths (`a//b`, trailing `/`, segments over 255 bytes, keys over ~160 bytes, whose
//!   metadata file name is the key in base64) are out of its reach.
//! - [`Moto`]: `moto_server` as a child process. Accepts any credentials; keeps keys as opaque
//!   strings, so it takes the whole key corpus.
//!
//! Both are filled through the S3 API with [`client`], so keys travel the same encoding path as
//! the gateway's reads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, StalledStreamProtectionConfig,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use bucketgate::config::{S3Credentials, S3Source, Secret};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tempfile::TempDir;
use tokio::task::JoinHandle;

use super::process::ChildGuard;

pub const REGION: &str = "us-east-1";
pub const MOTO_ACCESS_KEY: &str = "test";
pub const MOTO_SECRET_KEY: &str = "test";

/// An S3 client for filling and inspecting a test server: path style, `us-east-1`, our
/// rustls+ring HTTP client, no retries (a test server that fails should fail the test).
pub fn client(endpoint: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .http_client(http_client)
        .credentials_provider(Credentials::new(
            access_key, secret_key, None, None, "tests",
        ))
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
        // Plain PUTs with Content-MD5-free bodies; no aws-chunked trailers for the fakes to parse.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A source config pointing at a test server with static credentials.
pub fn source(
    endpoint: &str,
    bucket: &str,
    prefix: &str,
    access_key: &str,
    secret_key: &str,
) -> S3Source {
    S3Source {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        region: REGION.to_string(),
        endpoint: Some(endpoint.to_string()),
        path_style: true,
        credentials: S3Credentials::Static {
            access_key_id: access_key.to_string(),
            secret_access_key: Secret::new(secret_key.to_string()),
        },
    }
}

/// Create `bucket`; panics (with the S3 error) on failure.
pub async fn create_bucket(client: &aws_sdk_s3::Client, bucket: &str) {
    if let Err(e) = client.create_bucket().bucket(bucket).send().await {
        panic!(
            "create bucket {bucket:?}: {}",
            aws_sdk_s3::error::DisplayErrorContext(&e)
        );
    }
}

/// Put one object; returns its ETag (quoted, as the store sent it).
pub async fn put_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    body: &[u8],
    content_type: Option<&str>,
) -> String {
    let mut put = client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.to_vec()));
    if let Some(ct) = content_type {
        put = put.content_type(ct);
    }
    match put.send().await {
        Ok(out) => out.e_tag().unwrap_or_default().to_string(),
        Err(e) => panic!(
            "put {key:?}: {}",
            aws_sdk_s3::error::DisplayErrorContext(&e)
        ),
    }
}

/// Every key in `bucket` (ListObjectsV2, all pages), as the store holds them.
pub async fn list_keys(client: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = match page {
            Ok(p) => p,
            Err(e) => panic!(
                "list {bucket:?}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            ),
        };
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
    }
    keys.sort();
    keys
}

/// SigV4 checked against one key pair; an unknown key id is refused with `InvalidAccessKeyId`,
/// as AWS does (s3s's `SimpleAuth` says `NotSignedUp`).
struct OneKey {
    access_key: String,
    secret_key: String,
}

impl s3s::auth::S3Auth for OneKey {
    // What `#[async_trait]` expands to, written out (async-trait is not a dev-dependency).
    fn get_secret_key<'s, 'k, 'f>(
        &'s self,
        access_key: &'k str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = s3s::S3Result<s3s::auth::SecretKey>> + Send + 'f>,
    >
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            if access_key == self.access_key {
                Ok(s3s::auth::SecretKey::from(self.secret_key.as_str()))
            } else {
                Err(s3s::s3_error!(InvalidAccessKeyId))
            }
        })
    }
}

/// What a test does with either server: its endpoint, a client with working credentials, and
/// the bucket helpers. [`S3sFs`] and [`Moto`] deref to it.
pub struct S3Api {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    /// A client with the right credentials, for filling buckets.
    pub client: aws_sdk_s3::Client,
}

impl S3Api {
    fn new(endpoint: String, access_key: &str, secret_key: &str) -> S3Api {
        S3Api {
            client: client(&endpoint, access_key, secret_key),
            endpoint,
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
        }
    }

    pub async fn create_bucket(&self, bucket: &str) {
        create_bucket(&self.client, bucket).await;
    }

    /// Put one object; returns its ETag.
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: &[u8],
        content_type: Option<&str>,
    ) -> String {
        put_object(&self.client, bucket, key, body, content_type).await
    }

    pub async fn list(&self, bucket: &str) -> Vec<String> {
        list_keys(&self.client, bucket).await
    }

    /// A source for `bucket` under `prefix` with this server's credentials.
    pub fn source(&self, bucket: &str, prefix: &str) -> S3Source {
        source(
            &self.endpoint,
            bucket,
            prefix,
            &self.access_key,
            &self.secret_key,
        )
    }
}

/// s3s-fs served in-process over hyper on `127.0.0.1:0`, SigV4 checked against one key pair.
pub struct S3sFs {
    api: S3Api,
    /// Where s3s-fs keeps buckets (one directory each) and objects (files); removed on drop.
    _root: TempDir,
    server: JoinHandle<()>,
}

impl std::ops::Deref for S3sFs {
    type Target = S3Api;
    fn deref(&self) -> &S3Api {
        &self.api
    }
}

impl S3sFs {
    pub async fn start(access_key: &str, secret_key: &str) -> S3sFs {
        let root = tempfile::tempdir().expect("tempdir for s3s-fs");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs root");
        let service = {
            let mut b = s3s::service::S3ServiceBuilder::new(fs);
            b.set_auth(OneKey {
                access_key: access_key.to_owned(),
                secret_key: secret_key.to_owned(),
            });
            b.build()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind s3s-fs");
        let addr = listener.local_addr().expect("s3s-fs addr");
        let server = tokio::spawn(async move {
            let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                let conn = http
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                connections.spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        S3sFs {
            api: S3Api::new(format!("http://{addr}"), access_key, secret_key),
            _root: root,
            server,
        }
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection task.
        self.server.abort();
    }
}

/// `moto_server` as a child process on a free loopback port; stopped and reaped on drop.
pub struct Moto {
    /// moto's (arbitrary) credentials.
    api: S3Api,
    /// Stopped and reaped on drop.
    process: ChildGuard,
    /// moto's stdout and stderr, shown when it fails to start.
    log: tempfile::NamedTempFile,
}

/// How many times to probe moto for readiness, and the pause between probes (~30 s in all:
/// a cold Python start on a loaded CI machine takes several seconds).
const MOTO_READY_ATTEMPTS: u32 = 300;
const MOTO_READY_INTERVAL: Duration = Duration::from_millis(100);

impl std::ops::Deref for Moto {
    type Target = S3Api;
    fn deref(&self) -> &S3Api {
        &self.api
    }
}

impl Moto {
    pub async fn start() -> Moto {
        let bin = moto_binary();
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("moto log file");
        let out = log.reopen().expect("moto log");
        let err = log.reopen().expect("moto log");
        let process = ChildGuard::spawn(
            &bin.display().to_string(),
            Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err)),
        );
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut moto = Moto {
            api: S3Api::new(endpoint, MOTO_ACCESS_KEY, MOTO_SECRET_KEY),
            process,
            log,
        };
        moto.wait_ready(SocketAddr::from(([127, 0, 0, 1], port)))
            .await;
        moto
    }

    /// Poll until moto answers an HTTP request, failing fast if the process died.
    async fn wait_ready(&mut self, addr: SocketAddr) {
        for _ in 0..MOTO_READY_ATTEMPTS {
            if let Ok(Some(status)) = self.process.child().try_wait() {
                panic!(
                    "moto_server exited early ({status}); its output:\n{}",
                    self.output()
                );
            }
            let probe = tokio::task::spawn_blocking(move || http_answers(addr)).await;
            if matches!(probe, Ok(true)) {
                return;
            }
            tokio::time::sleep(MOTO_READY_INTERVAL).await;
        }
        panic!(
            "moto_server on {addr} did not answer in time; its output:\n{}",
            self.output()
        );
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

/// `$CARGO_MANIFEST_DIR/.venv/bin/moto_server` (what `tests/run` installs), else `moto_server` on
/// PATH. Never a silent skip: without moto the S3-compatibility tests cannot say anything.
fn moto_binary() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    if venv.is_file() {
        return venv;
    }
    if let Some(found) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("moto_server"))
        .find(|p| p.is_file())
    {
        return found;
    }
    let how = "install it with `./tests/run` (creates .venv with moto[server]), or \
               `python3 -m venv .venv && .venv/bin/pip install 'moto[server]'` at the repo root";
    if std::env::var_os("CI").is_some() {
        panic!(
            "moto_server not found in {} nor on PATH (CI): {how}",
            venv.display()
        );
    }
    panic!(
        "moto_server not found in {} nor on PATH; these tests need it: {how}",
        venv.display()
    );
}

/// A port that was free a moment ago (bind port 0, read it, release it).
fn free_port() -> u16 {
    let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Whether something on `addr` answers a plain HTTP request with an HTTP status line.
fn http_answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 8];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}
