//! Credentials from STS for S3 sources: delegated access (`credentials = { assume_role = ...,
//! external_id = ... }`: one gateway-wide role, cached and refreshed before expiry by one refresh
//! at a time) and the `saml` mode's refusal of requests without a user's credentials. Against
//! moto with IAM enforced (the role's policy decides) and a counting proxy in front of STS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use crate::support::TestGateway;
use crate::support::logs::CapturedLogs;
use crate::support::sts::{MotoIam, ProxyMode, Trust};
use aws_sdk_s3::error::ProvideErrorMetadata;
use bucketgate::config::{
    AssumeRoleConfig, S3Credentials, Secret, SourceConfig, StaticKeys, StsConfig,
};
use bucketgate::credentials::{DelegatedCredentials, ManualClock, StsClient, StsError};
use http::StatusCode;

const BUCKET: &str = "delegated";
const EXTERNAL_ID: &str = "ext-7f3a";
const SOURCE: &str = "del";
/// The requested lifetime, and how far ahead of its end the gateway refreshes (defaults.rs).
const DURATION: Duration = Duration::from_secs(3600);
const REFRESH_BEFORE: Duration = Duration::from_secs(300);
const RETRY_AFTER_SECS: u64 = 5;

/// moto with a bucket (`public/a.txt`, `secret/b.txt`) and a role `reader` that trusts the
/// gateway user with [`EXTERNAL_ID`] and may read `public/*` only.
async fn moto_with_reader() -> (MotoIam, String) {
    let iam = MotoIam::start().await;
    iam.create_bucket(BUCKET).await;
    iam.put(BUCKET, "public/a.txt", b"public", Some("text/plain"))
        .await;
    iam.put(BUCKET, "secret/b.txt", b"secret", Some("text/plain"))
        .await;
    let role = iam
        .create_role(
            "reader",
            Trust::Principal {
                arn: &iam.gateway_arn(),
                external_id: Some(EXTERNAL_ID),
            },
            &[&format!("arn:aws:s3:::{BUCKET}/public/*")],
        )
        .await;
    (iam, role)
}

/// `[sts]` through the counting proxy, signing AssumeRole as the gateway user.
fn sts_config(iam: &MotoIam) -> StsConfig {
    StsConfig {
        region: support::sts::REGION.to_owned(),
        endpoint: Some(iam.sts_endpoint()),
        timeout: Duration::from_secs(2),
        credentials: Some(StaticKeys {
            access_key_id: iam.gateway.access_key_id.clone(),
            secret_access_key: Secret::new(iam.gateway.secret_access_key.clone()),
        }),
    }
}

fn reader(role: &str, external_id: &str) -> AssumeRoleConfig {
    AssumeRoleConfig {
        role_arn: role.to_owned(),
        external_id: Some(external_id.to_owned()),
        session_name: "bucketgate".to_owned(),
        duration: DURATION,
    }
}

/// A gateway whose source `del` reads the bucket with `credentials`, its credential clock
/// injected.
async fn gateway(iam: &MotoIam, credentials: S3Credentials, clock: &ManualClock) -> TestGateway {
    let source = iam.source(BUCKET, "", credentials);
    let sts = sts_config(iam);
    support::GatewayBuilder::new()
        .source(SOURCE, SourceConfig::S3(source))
        .tweak(move |c| c.sts = sts)
        .credentials_clock(Arc::new(clock.clone()))
        .start()
        .await
}

/// What most tests here start with: moto with the `reader` role, and a gateway whose source
/// `del` reads the bucket with credentials for that role, its credential clock injected.
struct World {
    iam: MotoIam,
    /// The `reader` role's ARN.
    role: String,
    clock: ManualClock,
    gw: TestGateway,
}

impl World {
    /// The source assumes `reader` with [`EXTERNAL_ID`].
    async fn delegated() -> World {
        World::start(|role| S3Credentials::AssumeRole(reader(role, EXTERNAL_ID))).await
    }

    /// The source's credentials from the role's ARN.
    async fn start(credentials: impl FnOnce(&str) -> S3Credentials) -> World {
        let (iam, role) = moto_with_reader().await;
        let clock = ManualClock::new();
        let gw = gateway(&iam, credentials(&role), &clock).await;
        World {
            iam,
            role,
            clock,
            gw,
        }
    }
}

async fn get(gw: &TestGateway, client: &reqwest::Client, key: &str) -> reqwest::Response {
    client
        .get(gw.url(&format!("/o/{SOURCE}/{key}")))
        .send()
        .await
        .expect("request reaches the gateway")
}

async fn get_ok(gw: &TestGateway, client: &reqwest::Client, key: &str) -> Vec<u8> {
    let resp = get(gw, client, key).await;
    assert_eq!(resp.status(), StatusCode::OK, "{key}");
    resp.bytes().await.expect("body").to_vec()
}

#[tokio::test]
async fn delegated_source_reads_with_the_role_and_sends_the_external_id() {
    let World { iam, role, gw, .. } = World::delegated().await;
    let client = gw.client();
    assert_eq!(iam.sts_calls(), 0, "no STS call before the first request");

    assert_eq!(get_ok(&gw, &client, "public/a.txt").await, b"public");
    // The role's policy decides: S3 refuses the key outside it, and that is a 403.
    let denied = get(&gw, &client, "secret/b.txt").await;
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    for _ in 0..5 {
        assert_eq!(get_ok(&gw, &client, "public/a.txt").await, b"public");
    }

    let sent = iam.sts_requests();
    assert_eq!(sent.len(), 1, "cached after the first call: {sent:?}");
    let call = &sent[0];
    assert_eq!(call.action, "AssumeRole");
    assert!(
        call.signed_by_caller,
        "AssumeRole is signed with [sts] credentials"
    );
    let param = |k: &str| call.params.get(k).map(String::as_str);
    assert_eq!(param("RoleArn"), Some(role.as_str()));
    assert_eq!(param("ExternalId"), Some(EXTERNAL_ID));
    assert_eq!(param("RoleSessionName"), Some("bucketgate"));
    assert_eq!(param("DurationSeconds"), Some("3600"));
}

/// A wrong ExternalId is the configuration of one side or the other, never a refusal of the
/// requesting user: 502 without a `Retry-After` (issue 11; it was a 503 with one).
#[tokio::test]
async fn delegated_role_refused_for_a_wrong_external_id_answers_502_never_another_identity() {
    let World { iam, gw, .. } =
        World::start(|role| S3Credentials::AssumeRole(reader(role, "not-the-external-id"))).await;
    let client = gw.client();
    let resp = get(&gw, &client, "public/a.txt").await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert!(resp.headers().get("retry-after").is_none());
    let body = resp.text().await.unwrap();
    assert!(
        !body.contains("AccessDenied") && !body.contains(EXTERNAL_ID),
        "{body}"
    );
    assert_eq!(iam.sts_calls(), 1);
    // Within the back-off, no new STS call: the next request fails fast.
    let again = get(&gw, &client, "public/a.txt").await;
    assert_eq!(again.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(iam.sts_calls(), 1, "no STS call during the back-off");
}

/// `bucketgate_upstream_errors_total{source, kind}`, 0 when absent.
fn upstream_errors(gw: &TestGateway, kind: &str) -> f64 {
    let text = gw.gateway().metrics().encode().unwrap();
    let labels = format!("{{source=\"{SOURCE}\",kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("bucketgate_upstream_errors_total")?
                .strip_prefix(&labels)
        })
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// A 502 "storage backend failed" in the usual JSON shape, without a `Retry-After` (a retry
/// will not help until the operator fixes something).
async fn assert_config_fault_answer(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY, "{what}");
    assert!(
        resp.headers().get("retry-after").is_none(),
        "{what}: no Retry-After for a configuration fault"
    );
    let id = resp
        .headers()
        .get("x-request-id")
        .expect("x-request-id")
        .to_str()
        .unwrap()
        .to_owned();
    let body = resp.text().await.unwrap();
    assert_eq!(
        body.trim_end(),
        format!("{{\"error\":\"storage backend failed\",\"request_id\":\"{id}\"}}"),
        "{what}"
    );
}

/// Regression (issue 11): STS refusing the gateway's own base credentials on AssumeRole (moto
/// checks the SigV4 signature against its IAM users) answered 503 with a `Retry-After`, as if
/// trying again would help, and the log did not name STS's code. Now: 502, counted as
/// `config_fault`, one warning per failing request naming the source, the code and the role
/// ARN, never the secret or the ExternalId; STS is asked again only after the back-off.
#[tokio::test]
async fn wrong_gateway_base_credentials_for_assume_role_are_a_502_configuration_fault() {
    const WRONG_SECRET: &str = "not-the-gateway-secret-0123456789";
    let (iam, role) = moto_with_reader().await;
    let cases = [
        (
            iam.gateway.access_key_id.clone(),
            WRONG_SECRET,
            "SignatureDoesNotMatch",
        ),
        (
            "AKIANOBODYKNOWS00000".to_owned(),
            iam.gateway.secret_access_key.as_str(),
            "InvalidClientTokenId",
        ),
    ];
    for (key_id, secret, code) in cases {
        let (logs, _guard) = CapturedLogs::start();
        let clock = ManualClock::new();
        let source = iam.source(
            BUCKET,
            "",
            S3Credentials::AssumeRole(reader(&role, EXTERNAL_ID)),
        );
        let mut sts = sts_config(&iam);
        sts.credentials = Some(StaticKeys {
            access_key_id: key_id.clone(),
            secret_access_key: Secret::new(secret.to_owned()),
        });
        let gw = support::GatewayBuilder::new()
            .source(SOURCE, SourceConfig::S3(source))
            .tweak(move |c| c.sts = sts)
            .credentials_clock(Arc::new(clock.clone()))
            .start()
            .await;
        let calls_before = iam.sts_calls();
        for proto in support::Proto::BOTH {
            let what = format!("{code} {proto:?}");
            let resp = get(&gw, &gw.client_for(proto), "public/a.txt").await;
            assert_config_fault_answer(resp, &what).await;
        }
        // Both requests failed on the one attempt: the second came within the back-off.
        assert_eq!(iam.sts_calls(), calls_before + 1, "{code}");
        assert_eq!(upstream_errors(&gw, "config_fault"), 2.0, "{code}");
        assert_eq!(
            upstream_errors(&gw, "credentials_unavailable"),
            0.0,
            "{code}"
        );
        let faults = logs.config_faults();
        assert_eq!(faults.len(), 2, "one warning per request:\n{}", logs.text());
        for w in &faults {
            assert_eq!(w["source"], SOURCE, "{w}");
            assert_eq!(w["sts_error_code"], code, "{w}");
            assert_eq!(w["role_arn"], role.as_str(), "{w}");
        }
        let text = logs.text();
        assert!(!text.contains(secret), "a secret in the log:\n{text}");
        assert!(
            !text.contains(EXTERNAL_ID),
            "the ExternalId in the log:\n{text}"
        );

        // After the back-off STS is asked again (the fault may have been fixed meanwhile).
        clock.advance(Duration::from_secs(RETRY_AFTER_SECS));
        let resp = get(&gw, &gw.client(), "public/a.txt").await;
        assert_config_fault_answer(resp, code).await;
        assert_eq!(iam.sts_calls(), calls_before + 2, "{code}");
    }
}

/// Sibling: the role's side refuses the gateway (its trust policy no longer names the gateway's
/// principal). While the cached credentials are valid they keep serving and the refused refresh
/// is logged at warn with the role and STS's code; once they expire, 502 configuration fault;
/// when trust is restored, the next attempt after the back-off recovers without a reload.
#[tokio::test]
async fn role_trust_revoked_serves_cached_credentials_then_502_then_recovers() {
    let (logs, _guard) = CapturedLogs::start();
    let World {
        iam,
        role,
        clock,
        gw,
    } = World::delegated().await;
    let client = gw.client();
    get_ok(&gw, &client, "public/a.txt").await;
    assert_eq!(iam.sts_calls(), 1);

    let trust = |principal: String| {
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"AWS": principal},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": EXTERNAL_ID}}
            }]
        })
        .to_string()
    };
    iam.iam(&[
        ("Action", "UpdateAssumeRolePolicy"),
        ("RoleName", "reader"),
        ("PolicyDocument", &trust(iam.admin_arn())),
    ])
    .await;

    // In the refresh window: the refresh is refused, the cached credentials keep serving.
    clock.advance(DURATION - REFRESH_BEFORE + Duration::from_secs(1));
    assert_eq!(get_ok(&gw, &client, "public/a.txt").await, b"public");
    assert_eq!(iam.sts_calls(), 2);
    let faults = logs.config_faults();
    assert_eq!(faults.len(), 1, "{}", logs.text());
    assert_eq!(faults[0]["sts_error_code"], "AccessDenied", "{}", faults[0]);
    assert_eq!(faults[0]["role_arn"], role.as_str(), "{}", faults[0]);
    logs.clear();

    // Expired, still refused: 502, no Retry-After, counted and logged as a configuration fault.
    clock.advance(REFRESH_BEFORE);
    let resp = get(&gw, &client, "public/a.txt").await;
    assert_config_fault_answer(resp, "expired, trust revoked").await;
    assert_eq!(iam.sts_calls(), 3);
    assert_eq!(upstream_errors(&gw, "config_fault"), 1.0);
    let faults = logs.config_faults();
    assert_eq!(faults.len(), 1, "{}", logs.text());
    assert_eq!(faults[0]["source"], SOURCE, "{}", faults[0]);
    assert_eq!(faults[0]["sts_error_code"], "AccessDenied", "{}", faults[0]);
    assert_eq!(faults[0]["role_arn"], role.as_str(), "{}", faults[0]);
    assert!(!logs.text().contains(EXTERNAL_ID), "{}", logs.text());

    // Trust restored on the role's side: after the back-off, new credentials, no reload.
    iam.iam(&[
        ("Action", "UpdateAssumeRolePolicy"),
        ("RoleName", "reader"),
        ("PolicyDocument", &trust(iam.gateway_arn())),
    ])
    .await;
    clock.advance(Duration::from_secs(RETRY_AFTER_SECS));
    assert_eq!(get_ok(&gw, &client, "public/a.txt").await, b"public");
    assert_eq!(iam.sts_calls(), 4);
}

#[tokio::test]
async fn delegated_credentials_are_refreshed_once_shortly_before_expiry() {
    let World { iam, clock, gw, .. } = World::delegated().await;
    let client = gw.client();
    get_ok(&gw, &client, "public/a.txt").await;
    assert_eq!(iam.sts_calls(), 1);

    // Just before the refresh window: still the first credentials.
    clock.advance(DURATION - REFRESH_BEFORE - Duration::from_secs(1));
    get_ok(&gw, &client, "public/a.txt").await;
    assert_eq!(iam.sts_calls(), 1, "no refresh before the window");

    // Inside the window (credentials still valid): one refresh, then cached again.
    clock.advance(Duration::from_secs(2));
    for _ in 0..5 {
        get_ok(&gw, &client, "public/a.txt").await;
    }
    assert_eq!(iam.sts_calls(), 2, "{:?}", iam.sts_requests());

    // The new credentials count their lifetime from the refresh.
    clock.advance(DURATION - REFRESH_BEFORE - Duration::from_secs(1));
    get_ok(&gw, &client, "public/a.txt").await;
    assert_eq!(iam.sts_calls(), 2);
}

#[tokio::test]
async fn requests_in_the_refresh_window_keep_serving_while_one_refresh_runs() {
    let World { iam, clock, gw, .. } = World::delegated().await;
    let client = gw.h2_client();
    get_ok(&gw, &client, "public/a.txt").await;
    assert_eq!(iam.sts_calls(), 1);

    // STS now holds every call until released; time moves into the refresh window.
    iam.proxy.set_mode(ProxyMode::Stall);
    clock.advance(DURATION - REFRESH_BEFORE + Duration::from_secs(1));
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let client = client.clone();
        let url = gw.url(&format!("/o/{SOURCE}/public/a.txt"));
        requests.spawn(async move {
            let resp = client.get(url).send().await.expect("request");
            (resp.status(), resp.bytes().await.expect("body"))
        });
    }
    // 199 requests finish on the still-valid credentials while the one refresh is held.
    for _ in 0..199 {
        let (status, body) = requests.join_next().await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.as_ref(), b"public");
    }
    assert_eq!(
        iam.sts_calls(),
        2,
        "exactly one refresh: {:?}",
        iam.sts_requests()
    );
    iam.proxy.set_mode(ProxyMode::Forward);
    let (status, _) = requests.join_next().await.unwrap().unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "the refreshing request is served too"
    );
    assert_eq!(iam.sts_calls(), 2);
}

#[tokio::test]
async fn two_hundred_requests_after_expiry_wait_for_one_sts_call() {
    let World { iam, clock, gw, .. } = World::delegated().await;
    let client = gw.h2_client();
    get_ok(&gw, &client, "public/a.txt").await;
    assert_eq!(iam.sts_calls(), 1);

    // Past expiry, nothing valid is cached: everyone waits for the one call in flight.
    iam.proxy.set_mode(ProxyMode::Stall);
    clock.advance(DURATION + Duration::from_secs(1));
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let client = client.clone();
        let url = gw.url(&format!("/o/{SOURCE}/public/a.txt"));
        requests.spawn(async move { client.get(url).send().await.expect("request").status() });
    }
    support::eventually(
        "the refresh reaches STS",
        200,
        Duration::from_millis(10),
        || async { (iam.sts_calls() == 2).then_some(()) },
    )
    .await;
    iam.proxy.set_mode(ProxyMode::Forward);
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert_eq!(iam.sts_calls(), 2, "{:?}", iam.sts_requests());
}

#[tokio::test]
async fn sts_down_unexpired_credentials_keep_serving_then_503_with_retry_after() {
    let World { iam, clock, gw, .. } = World::delegated().await;
    let client = gw.client();
    get_ok(&gw, &client, "public/a.txt").await;
    assert_eq!(iam.sts_calls(), 1);

    // STS goes away (connections refused). In the refresh window the refresh fails, and the
    // still-valid credentials keep serving.
    iam.proxy.stop();
    clock.advance(DURATION - REFRESH_BEFORE + Duration::from_secs(1));
    assert_eq!(get_ok(&gw, &client, "public/a.txt").await, b"public");
    clock.advance(Duration::from_secs(RETRY_AFTER_SECS + 1));
    assert_eq!(get_ok(&gw, &client, "public/a.txt").await, b"public");

    // Expired, STS still down: 503 with Retry-After, and never a read with other credentials.
    clock.advance(REFRESH_BEFORE);
    let resp = get(&gw, &client, "public/a.txt").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let resp = get(&gw, &client, "secret/b.txt").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);

    // STS back: after the back-off the next request gets new credentials.
    iam.proxy.restart().await;
    clock.advance(Duration::from_secs(RETRY_AFTER_SECS));
    assert_eq!(get_ok(&gw, &client, "public/a.txt").await, b"public");
    assert_eq!(
        iam.sts_calls(),
        2,
        "the proxy counts only calls it accepted: the first and the recovery"
    );
}

#[tokio::test]
async fn saml_source_without_a_session_is_forbidden_and_never_signed() {
    let World { iam, gw, .. } = World::start(|_| S3Credentials::Saml).await;
    // A token-authenticated request has no user credentials: 403, no STS call.
    let resp = get(&gw, &gw.client(), "public/a.txt").await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(iam.sts_calls(), 0);
}

#[tokio::test]
async fn delegated_cache_unit_shares_one_call_and_reports_unavailable() {
    let (iam, role) = moto_with_reader().await;
    let clock = ManualClock::new();
    let sts = StsClient::new(&sts_config(&iam));
    let cache = Arc::new(DelegatedCredentials::new(
        sts,
        &reader(&role, EXTERNAL_ID),
        Arc::new(clock.clone()),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let cache = Arc::clone(&cache);
        tasks.spawn(async move {
            cache
                .credentials()
                .await
                .map(|c| c.access_key_id().to_owned())
        });
    }
    let mut ids = std::collections::BTreeSet::new();
    while let Some(r) = tasks.join_next().await {
        ids.insert(r.unwrap().expect("credentials"));
    }
    assert_eq!(ids.len(), 1, "everyone got the same credentials");
    assert_eq!(iam.sts_calls(), 1);

    iam.proxy.set_mode(ProxyMode::Fail(503));
    clock.advance(DURATION + Duration::from_secs(1));
    let err = cache
        .credentials()
        .await
        .expect_err("expired and STS failing");
    assert!(
        matches!(
            err,
            bucketgate::credentials::DelegatedError::Unavailable { retry_after }
                if retry_after == Duration::from_secs(RETRY_AFTER_SECS)
        ),
        "{err:?}"
    );
    assert_eq!(iam.sts_calls(), 2);
}

#[tokio::test]
async fn sts_client_sorts_refused_unavailable_and_timeout() {
    let (iam, role) = moto_with_reader().await;
    let mut settings = sts_config(&iam);
    settings.timeout = Duration::from_secs(1);
    let sts = StsClient::new(&settings);
    let call = || sts.assume_role(&role, Some(EXTERNAL_ID), "bucketgate", DURATION);

    let ok = call().await.expect("assumed");
    assert_eq!(
        ok.assumed_role_arn,
        "arn:aws:sts::123456789012:assumed-role/reader/bucketgate"
    );
    assert!(ok.credentials.session_token().is_some());
    let shown = format!("{ok:?}");
    assert!(
        !shown.contains(ok.credentials.secret_access_key()),
        "{shown}"
    );

    let refused = sts
        .assume_role(&role, Some("wrong-external-id"), "bucketgate", DURATION)
        .await;
    assert!(
        matches!(refused, Err(StsError::Refused { .. })),
        "{refused:?}"
    );

    iam.proxy.set_mode(ProxyMode::Fail(503));
    assert!(matches!(call().await, Err(StsError::Unavailable(_))));

    iam.proxy.set_mode(ProxyMode::Stall);
    let started = std::time::Instant::now();
    assert!(matches!(call().await, Err(StsError::Timeout)));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the timeout"
    );

    iam.proxy.set_mode(ProxyMode::Forward);
    iam.proxy.stop();
    assert!(matches!(call().await, Err(StsError::Unavailable(_))));
}

/// An aws-sdk-sts client signing as `keys`, through `endpoint`.
fn sdk_sts(endpoint: &str, keys: &support::sts::Keys) -> aws_sdk_sts::Client {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new(support::sts::REGION))
        .endpoint_url(endpoint)
        .http_client(http_client)
        .credentials_provider(keys.credentials())
        .retry_config(aws_sdk_sts::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_sts::Client::from_conf(config)
}

/// The harness itself: moto's enforcement refuses a wrong ExternalId and an assumed role's read
/// outside its inline policy, so the role's policy (not the gateway) decides in the tests below.
#[tokio::test]
async fn moto_iam_denies_reads_outside_the_role_policy() {
    let iam = MotoIam::start().await;
    iam.create_bucket(BUCKET).await;
    iam.put(BUCKET, "public/a.txt", b"public", None).await;
    iam.put(BUCKET, "secret/b.txt", b"secret", None).await;
    let role = iam
        .create_role(
            "reader",
            Trust::Principal {
                arn: &iam.gateway_arn(),
                external_id: Some(EXTERNAL_ID),
            },
            &[&format!("arn:aws:s3:::{BUCKET}/public/*")],
        )
        .await;
    let sts = sdk_sts(&iam.sts_endpoint(), &iam.gateway);

    let wrong = sts
        .assume_role()
        .role_arn(&role)
        .role_session_name("bucketgate")
        .external_id("not-the-one")
        .send()
        .await;
    let err = wrong.expect_err("a wrong ExternalId is refused");
    // moto nests <Errors><Error>, which the SDK's parser does not read: the status tells.
    assert_eq!(
        err.raw_response().map(|r| r.status().as_u16()),
        Some(403),
        "{err:?}"
    );

    let ok = sts
        .assume_role()
        .role_arn(&role)
        .role_session_name("bucketgate")
        .external_id(EXTERNAL_ID)
        .send()
        .await
        .expect("the right ExternalId is accepted");
    let c = ok.credentials().expect("credentials");
    let role_s3 = {
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(support::sts::REGION))
            .endpoint_url(iam.endpoint())
            .force_path_style(true)
            .http_client(http_client)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                c.access_key_id(),
                c.secret_access_key(),
                Some(c.session_token().to_owned()),
                None,
                "test",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(config)
    };
    let got = role_s3
        .get_object()
        .bucket(BUCKET)
        .key("public/a.txt")
        .send()
        .await
        .expect("in-policy read");
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().as_ref(),
        b"public"
    );
    let denied = role_s3
        .get_object()
        .bucket(BUCKET)
        .key("secret/b.txt")
        .send()
        .await
        .expect_err("out-of-policy read is refused");
    assert_eq!(denied.code(), Some("AccessDenied"), "{denied:?}");

    assert_eq!(iam.sts_calls(), 2, "{:?}", iam.sts_requests());
    let sent = iam.sts_requests();
    assert_eq!(sent[1].action, "AssumeRole");
    assert_eq!(
        sent[1].params.get("ExternalId").map(String::as_str),
        Some(EXTERNAL_ID)
    );
    assert!(sent[1].signed_by_caller);
}

/// The harness for SAML sessions: AWS takes AssumeRoleWithSAML unsigned, moto with enforcement
/// only signed, so the proxy signs it; the assumed role's reads are then decided by its policy.
#[tokio::test]
async fn proxy_forwards_unsigned_assume_role_with_saml() {
    use base64::Engine as _;
    let iam = MotoIam::start().await;
    iam.create_bucket(BUCKET).await;
    iam.put(BUCKET, "labels/a.json", b"{}", None).await;
    let provider = iam
        .create_saml_provider("corp", "<EntityDescriptor/>")
        .await;
    let role = iam
        .create_role(
            "labeler",
            Trust::Saml {
                provider_arn: &provider,
            },
            &[&format!("arn:aws:s3:::{BUCKET}/labels/*")],
        )
        .await;
    let xml = format!(
        r#"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion"><saml:Assertion><saml:AttributeStatement><saml:Attribute Name="https://aws.amazon.com/SAML/Attributes/Role"><saml:AttributeValue>{role},{provider}</saml:AttributeValue></saml:Attribute><saml:Attribute Name="https://aws.amazon.com/SAML/Attributes/RoleSessionName"><saml:AttributeValue>alice</saml:AttributeValue></saml:Attribute></saml:AttributeStatement></saml:Assertion></samlp:Response>"#
    );
    let assertion = base64::engine::general_purpose::STANDARD.encode(xml);
    // No credentials at all: the SDK sends AssumeRoleWithSAML unsigned, as to AWS.
    let sts = aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new(support::sts::REGION))
            .endpoint_url(iam.sts_endpoint())
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https(),
            )
            .build(),
    );
    let out = sts
        .assume_role_with_saml()
        .role_arn(&role)
        .principal_arn(&provider)
        .saml_assertion(assertion)
        .send()
        .await
        .expect("AssumeRoleWithSAML through the proxy");
    assert_eq!(
        out.assumed_role_user().map(|u| u.arn()),
        Some("arn:aws:sts::123456789012:assumed-role/labeler/alice")
    );
    let sent = iam.sts_requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].action, "AssumeRoleWithSAML");
    assert!(!sent[0].signed_by_caller);
}
