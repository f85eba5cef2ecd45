//! STS and IAM-enforced S3 for tests: `moto_server` with its IAM enforcement switched on, and a
//! counting proxy in front of its STS.
//!
//! [`MotoIam::start`] starts moto, creates two IAM users while moto still accepts anything
//! (`admin`, allowed `*`; `gateway`, allowed `sts:AssumeRole`), then switches enforcement on
//! (`POST /moto-api/reset-auth` with `0`). From then on moto checks every call's SigV4 signature
//! against its IAM users and assumed roles and evaluates their policies, so an assumed role's S3
//! read outside its inline policy is refused (checked by `moto_iam_denies_reads_outside_the_role_policy`
//! in `tests/delegated.rs`). All further setup (roles, SAML providers, buckets, objects) goes
//! through the admin user's keys.
//!
//! What moto checks and what it does not (moto 5.2.5):
//! - AssumeRole: the caller's policy must allow `sts:AssumeRole`, and the role's trust policy must
//!   name the caller; a trust `StringEquals` on `sts:ExternalId` refuses a WRONG ExternalId, but a
//!   MISSING one passes (moto only compares values that were sent).
//! - AssumeRoleWithSAML: nothing is validated (no signature, audience, trust or provider check);
//!   the role is read from the assertion's Role attribute. The gateway must do all SAML checks.
//!   moto also needs the assertion to carry at least two `<Attribute>`s (e.g. Role and
//!   RoleSessionName), or it fails with a 500.
//! - AWS does not sign AssumeRoleWithSAML; moto with enforcement on crashes on any unsigned call.
//!   The [`CountingProxy`] therefore signs unsigned requests with the admin's keys before it
//!   forwards them (and records that it did: [`StsRequest::signed_by_caller`]).
//!
//! The counting proxy is a small hyper server on `127.0.0.1:0`: every request is recorded (action
//! and form parameters) and counted before it is forwarded to moto over a fresh connection. It
//! can be stopped (connection refused), restarted on the same port, made to stall (answer only
//! once resumed) or to answer a fixed error status.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use aws_credential_types::Credentials;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::s3::{self, Moto};
use bucketgate::config::{S3Credentials, S3Source};

/// moto's default account id: every ARN below lives in it.
pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";
pub const ADMIN_USER: &str = "admin";
/// The IAM user the gateway signs AssumeRole calls as.
pub const GATEWAY_USER: &str = "gateway";

/// Static keys of an IAM user.
#[derive(Clone, Debug)]
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl Keys {
    pub fn credentials(&self) -> Credentials {
        Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            None,
            None,
            "tests",
        )
    }
}

/// Who a role trusts.
pub enum Trust<'a> {
    /// `sts:AssumeRoleWithSAML` for principals federated through this SAML provider ARN.
    Saml { provider_arn: &'a str },
    /// `sts:AssumeRole` for this principal ARN (an IAM user), with an optional ExternalId
    /// condition (`StringEquals sts:ExternalId`).
    Principal {
        arn: &'a str,
        external_id: Option<&'a str>,
    },
}

/// moto with IAM enforcement on, its admin and gateway users, and a counting proxy before STS.
pub struct MotoIam {
    pub moto: Moto,
    /// Allowed `*`; signs setup calls and the unsigned STS calls the proxy forwards.
    pub admin: Keys,
    /// Allowed `sts:AssumeRole` on every role (trust policies decide which).
    pub gateway: Keys,
    /// An S3 client with the admin's keys, for buckets, objects and bucket policies.
    pub s3: aws_sdk_s3::Client,
    pub proxy: CountingProxy,
    http: reqwest::Client,
}

impl MotoIam {
    pub async fn start() -> MotoIam {
        let moto = Moto::start().await;
        let http = reqwest::Client::new();
        // Before enforcement moto takes any signature; these two calls create the real users.
        let bootstrap = Keys {
            access_key_id: s3::MOTO_ACCESS_KEY.to_owned(),
            secret_access_key: s3::MOTO_SECRET_KEY.to_owned(),
        };
        let admin = create_user(
            &http,
            &moto.endpoint,
            &bootstrap,
            ADMIN_USER,
            &serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]
            }),
        )
        .await;
        let gateway = create_user(
            &http,
            &moto.endpoint,
            &admin,
            GATEWAY_USER,
            &serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]
            }),
        )
        .await;
        let reset = http
            .post(format!("{}/moto-api/reset-auth", moto.endpoint))
            .body("0")
            .send()
            .await
            .expect("moto reset-auth");
        assert!(
            reset.status().is_success(),
            "reset-auth: {}",
            reset.status()
        );
        let s3 = s3::client(
            &moto.endpoint,
            &admin.access_key_id,
            &admin.secret_access_key,
        );
        let proxy = CountingProxy::start(&moto.endpoint, admin.clone()).await;
        MotoIam {
            moto,
            admin,
            gateway,
            s3,
            proxy,
            http,
        }
    }

    /// `http://127.0.0.1:PORT` of moto itself (S3 endpoint for sources).
    pub fn endpoint(&self) -> &str {
        &self.moto.endpoint
    }

    /// `http://127.0.0.1:PORT` of the counting proxy: the STS endpoint to give the gateway.
    pub fn sts_endpoint(&self) -> String {
        self.proxy.endpoint()
    }

    /// STS calls that reached the proxy so far.
    pub fn sts_calls(&self) -> usize {
        self.proxy.calls()
    }

    /// Every STS call the proxy saw, in arrival order.
    pub fn sts_requests(&self) -> Vec<StsRequest> {
        self.proxy.requests()
    }

    pub fn admin_arn(&self) -> String {
        format!("arn:aws:iam::{ACCOUNT}:user/{ADMIN_USER}")
    }

    pub fn gateway_arn(&self) -> String {
        format!("arn:aws:iam::{ACCOUNT}:user/{GATEWAY_USER}")
    }

    /// One IAM query call signed by the admin; returns the XML answer, panics on an error status.
    pub async fn iam(&self, params: &[(&str, &str)]) -> String {
        iam_call(&self.http, &self.moto.endpoint, &self.admin, params).await
    }

    /// `CreateSAMLProvider`; returns the provider ARN.
    pub async fn create_saml_provider(&self, name: &str, metadata_xml: &str) -> String {
        let xml = self
            .iam(&[
                ("Action", "CreateSAMLProvider"),
                ("Name", name),
                ("SAMLMetadataDocument", metadata_xml),
            ])
            .await;
        xml_text(&xml, "SAMLProviderArn").unwrap_or_else(|| panic!("no provider ARN in {xml}"))
    }

    /// `CreateRole` with `trust`, plus an inline policy allowing `s3:GetObject` on each of
    /// `get_object_arns` (e.g. `arn:aws:s3:::bucket/labels/*`); returns the role ARN.
    pub async fn create_role(
        &self,
        name: &str,
        trust: Trust<'_>,
        get_object_arns: &[&str],
    ) -> String {
        let trust_doc = match trust {
            Trust::Saml { provider_arn } => serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow",
                    "Principal": {"Federated": provider_arn},
                    "Action": "sts:AssumeRoleWithSAML",
                    "Condition": {"StringEquals": {"SAML:aud": "https://signin.aws.amazon.com/saml"}}
                }]
            }),
            Trust::Principal { arn, external_id } => {
                let mut statement = serde_json::json!({
                    "Effect": "Allow",
                    "Principal": {"AWS": arn},
                    "Action": "sts:AssumeRole"
                });
                if let Some(ext) = external_id {
                    statement["Condition"] =
                        serde_json::json!({"StringEquals": {"sts:ExternalId": ext}});
                }
                serde_json::json!({"Version": "2012-10-17", "Statement": [statement]})
            }
        };
        let xml = self
            .iam(&[
                ("Action", "CreateRole"),
                ("RoleName", name),
                ("AssumeRolePolicyDocument", &trust_doc.to_string()),
            ])
            .await;
        let arn = xml_text(&xml, "Arn").unwrap_or_else(|| panic!("no role ARN in {xml}"));
        if !get_object_arns.is_empty() {
            self.put_role_policy(
                name,
                "get-objects",
                &serde_json::json!({
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Effect": "Allow",
                        "Action": "s3:GetObject",
                        "Resource": get_object_arns
                    }]
                }),
            )
            .await;
        }
        arn
    }

    /// `PutRolePolicy` (inline policy `policy_name` on `role`).
    pub async fn put_role_policy(&self, role: &str, policy_name: &str, doc: &serde_json::Value) {
        self.iam(&[
            ("Action", "PutRolePolicy"),
            ("RoleName", role),
            ("PolicyName", policy_name),
            ("PolicyDocument", &doc.to_string()),
        ])
        .await;
    }

    pub async fn create_bucket(&self, bucket: &str) {
        s3::create_bucket(&self.s3, bucket).await;
    }

    pub async fn put(&self, bucket: &str, key: &str, body: &[u8], content_type: Option<&str>) {
        s3::put_object(&self.s3, bucket, key, body, content_type).await;
    }

    /// An S3 source on this moto for `bucket`/`prefix` with `credentials`.
    pub fn source(&self, bucket: &str, prefix: &str, credentials: S3Credentials) -> S3Source {
        S3Source {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            region: REGION.to_owned(),
            endpoint: Some(self.moto.endpoint.clone()),
            path_style: true,
            credentials,
        }
    }
}

/// `CreateUser` + `PutUserPolicy` + `CreateAccessKey`, signed with `signer`.
async fn create_user(
    http: &reqwest::Client,
    endpoint: &str,
    signer: &Keys,
    name: &str,
    policy: &serde_json::Value,
) -> Keys {
    iam_call(
        http,
        endpoint,
        signer,
        &[("Action", "CreateUser"), ("UserName", name)],
    )
    .await;
    iam_call(
        http,
        endpoint,
        signer,
        &[
            ("Action", "PutUserPolicy"),
            ("UserName", name),
            ("PolicyName", "all"),
            ("PolicyDocument", &policy.to_string()),
        ],
    )
    .await;
    let xml = iam_call(
        http,
        endpoint,
        signer,
        &[("Action", "CreateAccessKey"), ("UserName", name)],
    )
    .await;
    Keys {
        access_key_id: xml_text(&xml, "AccessKeyId").expect("AccessKeyId in CreateAccessKey"),
        secret_access_key: xml_text(&xml, "SecretAccessKey")
            .expect("SecretAccessKey in CreateAccessKey"),
    }
}

/// One IAM query-protocol call (form POST), SigV4-signed for `iam` with `keys`.
async fn iam_call(
    http: &reqwest::Client,
    endpoint: &str,
    keys: &Keys,
    params: &[(&str, &str)],
) -> String {
    let mut all: Vec<(&str, &str)> = params.to_vec();
    all.push(("Version", "2010-05-08"));
    let body = form_encode(&all);
    let host = endpoint
        .strip_prefix("http://")
        .expect("moto endpoint is http://");
    let mut request = Request::builder()
        .method("POST")
        .uri(format!("{endpoint}/"))
        .header(http::header::HOST, host)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(body.clone())
        .expect("IAM request builds");
    sign(&mut request, keys, "iam");
    let (parts, body) = request.into_parts();
    let mut builder = http.post(format!("{endpoint}/")).body(body);
    for (name, value) in &parts.headers {
        builder = builder.header(name, value);
    }
    let answer = builder.send().await.expect("IAM call reaches moto");
    let status = answer.status();
    let text = answer.text().await.expect("IAM answer body");
    assert!(status.is_success(), "IAM {params:?} -> {status}: {text}");
    text
}

/// SigV4-sign `request` (whose headers include `host`) in place.
fn sign(request: &mut Request<String>, keys: &Keys, service: &str) {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    let identity = keys.credentials().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .expect("signing params")
        .into();
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .expect("request has a Host header")
        .to_owned();
    let uri = format!(
        "http://{host}{}",
        request.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let signable = SignableRequest::new(
        request.method().as_str(),
        &uri,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Bytes(request.body().as_bytes()),
    )
    .expect("signable request");
    let (instructions, _) = aws_sigv4::http_request::sign(signable, &params)
        .expect("request signs")
        .into_parts();
    instructions.apply_to_request_http1x(request);
}

fn form_encode(params: &[(&str, &str)]) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    params
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, UNRESERVED),
                utf8_percent_encode(v, UNRESERVED)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `application/x-www-form-urlencoded` into a map (last value wins).
pub fn form_decode(body: &str) -> BTreeMap<String, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// The text of the first `<tag>...</tag>` in `xml` (enough for IAM's answers).
pub fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(
        xml[start..end]
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// One STS call as the proxy received it.
#[derive(Clone, Debug)]
pub struct StsRequest {
    /// The `Action` form parameter (`AssumeRole`, `AssumeRoleWithSAML`, ...).
    pub action: String,
    /// Every form parameter (RoleArn, ExternalId, RoleSessionName, DurationSeconds, ...).
    pub params: BTreeMap<String, String>,
    /// Whether the caller signed it (AssumeRole) or the proxy did (AssumeRoleWithSAML).
    pub signed_by_caller: bool,
}

/// What the proxy does with the next requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward to moto.
    Forward,
    /// Hold every request until the mode changes (then handle it under the new mode).
    Stall,
    /// Answer this status with an STS-style error body, without forwarding.
    Fail(u16),
    /// Answer this status with AWS STS's error body for this code (`<ErrorResponse><Error>`,
    /// as the SDK parses it), without forwarding.
    FailWith(u16, &'static str),
}

struct ProxyState {
    upstream: SocketAddr,
    signer: Keys,
    calls: AtomicUsize,
    requests: Mutex<Vec<StsRequest>>,
    mode: watch::Sender<ProxyMode>,
}

/// A counting, recording HTTP/1.1 proxy on `127.0.0.1:0` in front of moto's STS.
pub struct CountingProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl CountingProxy {
    pub async fn start(upstream_endpoint: &str, signer: Keys) -> CountingProxy {
        let upstream: SocketAddr = upstream_endpoint
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .expect("upstream is http://IP:PORT");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind counting proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(ProxyState {
            upstream,
            signer,
            calls: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            mode: watch::channel(ProxyMode::Forward).0,
        });
        let server = tokio::spawn(serve(listener, state.clone()));
        CountingProxy {
            addr,
            state,
            server: Mutex::new(Some(server)),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<StsRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn set_mode(&self, mode: ProxyMode) {
        self.state.mode.send_replace(mode);
    }

    /// Stop listening and drop every open connection: new connections are refused.
    pub fn stop(&self) {
        if let Some(server) = self.server.lock().unwrap().take() {
            server.abort();
        }
    }

    /// Listen again on the same port after [`stop`](Self::stop).
    pub async fn restart(&self) {
        self.stop();
        // The aborted task drops its listener when it is next polled; retry the bind until then.
        let mut listener = None;
        for _ in 0..200 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::task::yield_now().await,
            }
        }
        let listener = listener.expect("re-bind the proxy's port");
        *self.server.lock().unwrap() = Some(tokio::spawn(serve(listener, self.state.clone())));
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(listener: TcpListener, state: Arc<ProxyState>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(req, &state).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, state: &ProxyState) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return plain(StatusCode::BAD_REQUEST, "unreadable body"),
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    let params = form_decode(&text);
    let signed_by_caller = parts.headers.contains_key(http::header::AUTHORIZATION);
    state.calls.fetch_add(1, Ordering::SeqCst);
    state.requests.lock().unwrap().push(StsRequest {
        action: params.get("Action").cloned().unwrap_or_default(),
        params,
        signed_by_caller,
    });

    let mut mode_rx = state.mode.subscribe();
    let mode = loop {
        let mode = *mode_rx.borrow_and_update();
        if mode != ProxyMode::Stall {
            break mode;
        }
        if mode_rx.changed().await.is_err() {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "proxy shut down");
        }
    };
    let failure = match mode {
        ProxyMode::Fail(status) => Some((status, "Receiver", "ServiceUnavailable")),
        ProxyMode::FailWith(status, code) => Some((status, "Sender", code)),
        ProxyMode::Forward | ProxyMode::Stall => None,
    };
    if let Some((status, kind, code)) = failure {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let xml = format!(
            "<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code>\
             <Message>injected by the test proxy</Message></Error></ErrorResponse>"
        );
        let mut resp = Response::new(Full::new(Bytes::from(xml)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/xml"),
        );
        return resp;
    }

    let mut upstream_req = Request::from_parts(parts, text);
    if !signed_by_caller {
        if !upstream_req.headers().contains_key(http::header::HOST) {
            let host = HeaderValue::from_str(&state.upstream.to_string()).expect("host value");
            upstream_req.headers_mut().insert(http::header::HOST, host);
        }
        sign(&mut upstream_req, &state.signer, "sts");
    }
    match forward(state.upstream, upstream_req).await {
        Ok(resp) => resp,
        Err(e) => plain(StatusCode::BAD_GATEWAY, &format!("proxy: {e}")),
    }
}

async fn forward(
    upstream: SocketAddr,
    req: Request<String>,
) -> Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(upstream).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = req.map(|b| Full::new(Bytes::from(b)));
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(text.to_owned())));
    *resp.status_mut() = status;
    resp
}
