#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The cost of per-request credentials on an S3 source (`credentials = "saml"` and
//! `assume_role` sign each request with credentials set on that request through the SDK's
//! per-operation config override) against a static-keys source, on 64 KiB objects:
//!
//! - `s3_open_64k/stub/*`: a minimal in-process S3 stub that answers at once (no signature check,
//!   no disk), so the SDK's own per-request work is most of what is measured: the upper bound on
//!   the overhead;
//! - `s3_open_64k/s3s_fs/*`: s3s-fs in-process with SigV4 really checked, as the load script's
//!   s3 section uses.
//!
//! Each iteration is one `Backend::open` (HEAD + GET) and reading the whole body.
//!
//! `sdk_get_object/*` isolates the SDK's per-request work with a canned HTTP client (no socket):
//! one GetObject with the client's own credentials, with credentials set through the
//! per-operation config override (what the gateway does), and the alternative it was measured
//! against: a client per credential set, cached (its per-request cost is a map lookup plus the
//! plain call; `build_client` is what each new set costs once).

#[path = "../tests/support/process.rs"]
#[allow(dead_code)] // s3.rs uses ChildGuard::spawn only
mod process;
#[path = "../tests/support/s3.rs"]
#[allow(dead_code)] // the integration tests use the rest of it
mod s3;

use std::convert::Infallible;
use std::hint::black_box;

use aws_credential_types::Credentials;
use bucketgate::backend::s3::S3Backend;
use bucketgate::backend::{Ask, Backend, Caller, Opened, Want};
use bucketgate::config::{Limits, S3Credentials, S3Source};
use bucketgate::credentials::UserCredentials;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

const SIZE: usize = 64 * 1024;
const KEY: &str = "obj-64k";
const BUCKET: &str = "bench";

/// A SAML user's credentials as the pipeline passes them.
fn user_creds(credentials: &Credentials) -> UserCredentials<'_> {
    UserCredentials {
        credentials,
        role_arn: "arn:aws:sts::123456789012:assumed-role/bench/user",
    }
}

async fn read(backend: &S3Backend, caller: Caller<'_>) -> usize {
    match backend
        .open(
            KEY,
            &Ask::default(),
            |_| Want::Body(None),
            caller,
            tokio::time::Instant::now() + std::time::Duration::from_secs(30),
        )
        .await
        .expect("open")
    {
        Opened::Object { mut object, .. } => {
            let mut n = 0;
            while let Some(frame) = object.body.next().await {
                n += frame.expect("frame").len();
            }
            n
        }
        Opened::Meta(_) => panic!("asked for the body"),
    }
}

/// An S3 stub on 127.0.0.1:0: HEAD and GET of any key answer a fixed 64 KiB object.
async fn stub() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Bytes::from(vec![7u8; SIZE]);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let body = body.clone();
                        async move {
                            let mut resp = Response::new(if req.method() == http::Method::HEAD {
                                Full::new(Bytes::new())
                            } else {
                                Full::new(body)
                            });
                            *resp.status_mut() = StatusCode::OK;
                            let h = resp.headers_mut();
                            h.insert("content-length", SIZE.into());
                            h.insert("etag", "\"stub-etag\"".parse().unwrap());
                            h.insert("content-type", "application/octet-stream".parse().unwrap());
                            h.insert(
                                "last-modified",
                                "Mon, 01 Jan 2024 00:00:00 GMT".parse().unwrap(),
                            );
                            Ok::<_, Infallible>(resp)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn source(endpoint: &str, credentials: S3Credentials) -> S3Source {
    S3Source {
        bucket: BUCKET.to_owned(),
        prefix: String::new(),
        region: s3::REGION.to_owned(),
        endpoint: Some(endpoint.to_owned()),
        path_style: true,
        credentials,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (ak, sk) = ("benchkey", "benchsecret-0123456789");
    let user = Credentials::new(ak, sk, None, None, "bench");
    let limits = Limits::default();

    let (stub_static, stub_user, fs_static, fs_user, _fs) = rt.block_on(async {
        let stub = stub().await;
        let fs = s3::S3sFs::start(ak, sk).await;
        fs.create_bucket(BUCKET).await;
        fs.put(BUCKET, KEY, &vec![7u8; SIZE], None).await;
        let static_creds = s3::source(&fs.endpoint, BUCKET, "", ak, sk).credentials;
        (
            S3Backend::new(&source(&stub, static_creds.clone()), &limits)
                .await
                .unwrap(),
            S3Backend::new(&source(&stub, S3Credentials::Saml), &limits)
                .await
                .unwrap(),
            S3Backend::new(&source(&fs.endpoint, static_creds), &limits)
                .await
                .unwrap(),
            S3Backend::new(&source(&fs.endpoint, S3Credentials::Saml), &limits)
                .await
                .unwrap(),
            fs,
        )
    });

    let mut g = c.benchmark_group("s3_open_64k");
    g.bench_function("stub/static", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(read(&stub_static, Caller::Gateway).await) })
    });
    g.bench_function("stub/per_request_credentials", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(read(&stub_user, Caller::User(user_creds(&user))).await) })
    });
    g.bench_function("s3s_fs/static", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(read(&fs_static, Caller::Gateway).await) })
    });
    g.bench_function("s3s_fs/per_request_credentials", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(read(&fs_user, Caller::User(user_creds(&user))).await) })
    });
    g.finish();
}

/// Answers every request at once with a 64 KiB object.
#[derive(Debug, Clone)]
struct Canned(Bytes);

impl aws_smithy_runtime_api::client::http::HttpConnector for Canned {
    fn call(
        &self,
        _request: aws_sdk_s3::config::http::HttpRequest,
    ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
        let mut resp = aws_sdk_s3::config::http::HttpResponse::new(
            200u16.try_into().unwrap(),
            aws_sdk_s3::primitives::SdkBody::from(self.0.clone()),
        );
        resp.headers_mut()
            .insert("content-length", SIZE.to_string());
        resp.headers_mut().insert("etag", "\"canned\"");
        aws_smithy_runtime_api::client::http::HttpConnectorFuture::ready(Ok(resp))
    }
}

impl aws_smithy_runtime_api::client::http::HttpClient for Canned {
    fn http_connector(
        &self,
        _settings: &aws_smithy_runtime_api::client::http::HttpConnectorSettings,
        _components: &aws_sdk_s3::config::RuntimeComponents,
    ) -> aws_smithy_runtime_api::client::http::SharedHttpConnector {
        aws_smithy_runtime_api::client::http::SharedHttpConnector::new(self.clone())
    }
}

fn canned_client(credentials: Option<Credentials>) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{
        BehaviorVersion, IdentityCache, Region, StalledStreamProtectionConfig,
    };
    let mut b = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url("http://127.0.0.1:9")
        .force_path_style(true)
        .http_client(Canned(Bytes::from(vec![7u8; SIZE])))
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled());
    b = match credentials {
        Some(c) => b.credentials_provider(c),
        None => b.identity_cache(IdentityCache::no_cache()),
    };
    aws_sdk_s3::Client::from_conf(b.build())
}

async fn drain(out: aws_sdk_s3::operation::get_object::GetObjectOutput) -> usize {
    out.body.collect().await.unwrap().into_bytes().len()
}

fn sdk(c: &mut Criterion) {
    use aws_sdk_s3::config::IdentityCache;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let creds = Credentials::new("AKIDEXAMPLE", "secret", Some("token".into()), None, "b");
    let own = canned_client(Some(creds.clone()));
    let bare = canned_client(None);
    let mut cached = std::collections::HashMap::new();
    cached.insert(
        creds.access_key_id().to_owned(),
        canned_client(Some(creds.clone())),
    );

    let mut g = c.benchmark_group("sdk_get_object");
    g.bench_function("client_credentials", |b| {
        b.to_async(&rt).iter(|| async {
            let out = own
                .get_object()
                .bucket(BUCKET)
                .key(KEY)
                .send()
                .await
                .unwrap();
            black_box(drain(out).await)
        })
    });
    g.bench_function("config_override", |b| {
        b.to_async(&rt).iter(|| async {
            let out = bare
                .get_object()
                .bucket(BUCKET)
                .key(KEY)
                .customize()
                .config_override(
                    aws_sdk_s3::config::Builder::default()
                        .identity_cache(IdentityCache::no_cache())
                        .credentials_provider(creds.clone()),
                )
                .send()
                .await
                .unwrap();
            black_box(drain(out).await)
        })
    });
    g.bench_function("cached_client_per_credentials", |b| {
        b.to_async(&rt).iter(|| async {
            let client = &cached[creds.access_key_id()];
            let out = client
                .get_object()
                .bucket(BUCKET)
                .key(KEY)
                .send()
                .await
                .unwrap();
            black_box(drain(out).await)
        })
    });
    g.bench_function("build_client", |b| {
        b.iter(|| black_box(canned_client(Some(creds.clone()))))
    });
    g.finish();
}

criterion_group!(benches, sdk, bench);
criterion_main!(benches);
