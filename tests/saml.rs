//! SAML single sign-on through the running gateway: the test IdP (`support/saml.rs`, signxml)
//! signs real responses, moto (`support/sts.rs`) answers AssumeRoleWithSAML behind a counting
//! proxy and enforces IAM on S3, so a user's reads are allowed or refused by their own role.
//!
//! moto accepts any assertion, so every refusal below also asserts that STS saw no call: the
//! gateway must decide before it asks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::support::TestGateway;
use crate::support::logs::CapturedLogs;
use crate::support::saml::{TestIdp, authn_request_id, form_encode};
use crate::support::sts::{MotoIam, ProxyMode, Trust};
use bucketgate::config::{
    AuditConfig, AuditDestination, Config, ProjectConfig, RoleChoice, S3Credentials, SamlConfig,
    SamlIdpConfig, SamlRoleRule, Secret, SourceConfig, StsConfig,
};
use bucketgate::credentials::ManualClock;
use bucketgate::identity::Scope;
use bucketgate::pipeline::auth::{LOGIN_COOKIE, SESSION_COOKIE};
use bucketgate::saml::sp::SIGN_IN_AGAIN;
use http::StatusCode;
use http::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

const BUCKET: &str = "assets";
const SP_ENTITY_ID: &str = "https://gateway.test/saml";
const PROJECT: &str = "labeling";

/// A signed-in (or signing-in) user of the test IdP.
#[derive(Clone, Copy)]
struct User {
    name_id: &'static str,
    session_name: &'static str,
    role: &'static str,
}

const ALICE: User = User {
    name_id: "alice@corp.example",
    session_name: "alice",
    role: "Labeler",
};
const BOB: User = User {
    name_id: "bob@corp.example",
    session_name: "bob",
    role: "Reviewer",
};

/// moto, the IdP, and a gateway whose `[saml]` trusts the IdP and maps Labeler -> annotator and
/// Reviewer -> reviewer, both in a project over the whole `assets` source (credentials = saml).
struct World {
    gw: TestGateway,
    idp: Idp,
    moto: MotoIam,
    clock: ManualClock,
    config: Config,
    provider_arn: String,
    roles: BTreeMap<&'static str, String>,
    audit_path: std::path::PathBuf,
    _audit_dir: tempfile::TempDir,
}

#[derive(Default)]
struct Options {
    idp_initiated: bool,
    /// An IdP of this test's own (its `/sso` defaults may then be changed); otherwise the
    /// binary's shared one, asked only through `/response`.
    own_idp: bool,
    /// A memory `[cache]` (tests/cache.rs's).
    cache: bool,
}

/// The test's own IdP or the shared one (starting an IdP generates three keys).
enum Idp {
    Own(Box<TestIdp>),
    Shared(&'static TestIdp),
}

impl std::ops::Deref for Idp {
    type Target = TestIdp;
    fn deref(&self) -> &TestIdp {
        match self {
            Idp::Own(idp) => idp,
            Idp::Shared(idp) => idp,
        }
    }
}

impl World {
    async fn start(options: Options) -> World {
        let idp = async {
            if options.own_idp {
                Idp::Own(Box::new(TestIdp::start().await))
            } else {
                Idp::Shared(tokio::task::spawn_blocking(TestIdp::shared).await.unwrap())
            }
        };
        let (moto, idp) = tokio::join!(MotoIam::start(), idp);
        // moto keeps the document without reading it; its SigV4 check re-encodes form bodies
        // with `+` for spaces, so the document here has none.
        let metadata = format!("<EntityDescriptor>{}</EntityDescriptor>", idp.entity_id);
        let provider_arn = moto.create_saml_provider("Corp", &metadata).await;
        let trust = || Trust::Saml {
            provider_arn: &provider_arn,
        };
        let labels = format!("arn:aws:s3:::{BUCKET}/labels/*");
        let secret = format!("arn:aws:s3:::{BUCKET}/secret/*");
        let labeler = moto.create_role("Labeler", trust(), &[&labels]).await;
        let reviewer = moto
            .create_role("Reviewer", trust(), &[&labels, &secret])
            .await;
        moto.create_bucket(BUCKET).await;
        moto.put(BUCKET, "labels/a.txt", b"label a\n", Some("text/plain"))
            .await;
        moto.put(BUCKET, "secret/b.txt", b"secret b\n", Some("text/plain"))
            .await;

        let audit_dir = tempfile::tempdir().unwrap();
        let audit_path = audit_dir.path().join("audit.log");
        let clock = ManualClock::new();
        let source = SourceConfig::S3(moto.source(BUCKET, "", S3Credentials::Saml));
        let sts_endpoint = moto.sts_endpoint();
        let with_cache = options.cache;
        let mut captured = None;
        let audit = AuditConfig {
            destination: AuditDestination::File {
                path: audit_path.clone(),
                max_bytes: 1 << 30,
                keep: 1,
            },
        };
        let gw = support::GatewayBuilder::new()
            .source(BUCKET, source)
            .tweak(|c| {
                c.projects.insert(
                    PROJECT.to_owned(),
                    ProjectConfig {
                        sources: vec![Scope::parse("assets:").unwrap()],
                    },
                );
                c.sts = StsConfig {
                    endpoint: Some(sts_endpoint),
                    timeout: Duration::from_secs(5),
                    ..StsConfig::default()
                };
                c.audit = audit;
                if with_cache {
                    c.cache = Some(crate::cache::memory_cache(16 << 20));
                }
                captured = Some(c.clone());
            })
            .credentials_clock(Arc::new(clock.clone()))
            .start()
            .await;
        // The ACS URL names the port, known only now: [saml] arrives by a reload (which is also
        // how an operator would add it).
        let mut config = captured.unwrap();
        config.saml = Some(SamlConfig {
            sp_entity_id: SP_ENTITY_ID.to_owned(),
            acs_url: gw.url("/auth/saml/acs"),
            max_session: Duration::from_secs(8 * 3600),
            max_response_age: Duration::from_secs(300),
            login_cookie_key: None,
            idp: SamlIdpConfig {
                entity_id: idp.entity_id.clone(),
                sso_url: idp.sso_url.clone(),
                certificates: vec![idp.cert_der.clone()],
                allow_idp_initiated: options.idp_initiated,
                clock_skew: Duration::from_secs(60),
                role_choice: RoleChoice::First,
                roles: vec![
                    rule(&labeler, &provider_arn, "annotator"),
                    rule(&reviewer, &provider_arn, "reviewer"),
                ],
            },
        });
        gw.gateway().reload(config.clone()).await.unwrap();
        World {
            gw,
            idp,
            moto,
            clock,
            config,
            roles: BTreeMap::from([("Labeler", labeler), ("Reviewer", reviewer)]),
            provider_arn,
            audit_path,
            _audit_dir: audit_dir,
        }
    }

    fn acs_url(&self) -> String {
        self.gw.url("/auth/saml/acs")
    }

    /// A client that follows no redirect and adds no token.
    fn client(&self) -> reqwest::Client {
        self.gw
            .anon_client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    /// What the IdP puts in a response for `user` (answering `request_id`, if any).
    fn spec(&self, user: User, request_id: Option<&str>) -> Value {
        let mut spec = json!({
            "audience": SP_ENTITY_ID,
            "recipient": self.acs_url(),
            "name_id": user.name_id,
            "roles": [[self.roles[user.role], self.provider_arn]],
            "role_session_name": user.session_name,
        });
        if let Some(id) = request_id {
            spec["in_response_to"] = json!(id);
        }
        spec
    }

    /// `GET /auth/saml/login?return_to=...`: the IdP redirect and the login cookie.
    async fn start_login(&self, return_to: Option<&str>) -> Login {
        // The gateway's clock is a manual one; bring it to the IdP's time.
        self.clock.set(std::time::SystemTime::now());
        let path = match return_to {
            Some(r) => format!("/auth/saml/login?return_to={}", support::encode_key(r)),
            None => "/auth/saml/login".to_owned(),
        };
        let resp = self.client().get(self.gw.url(&path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FOUND, "{path}");
        let location = resp.headers()[LOCATION].to_str().unwrap().to_owned();
        assert!(location.starts_with(&self.idp.sso_url), "{location}");
        let cookies = set_cookies(&resp);
        let (cookie, attrs) = cookies[LOGIN_COOKIE].clone();
        for attr in ["Secure", "HttpOnly", "SameSite=None", "Path=/"] {
            assert!(attrs.contains(attr), "login cookie lacks {attr}: {attrs}");
        }
        Login {
            request_id: authn_request_id(&location),
            location,
            cookie,
        }
    }

    /// POST a SAMLResponse (and RelayState) to the ACS with the login cookie, if any.
    async fn post_acs(
        &self,
        saml_response: &str,
        relay_state: Option<&str>,
        login_cookie: Option<&str>,
    ) -> reqwest::Response {
        self.post_acs_at(&self.gw, saml_response, relay_state, login_cookie)
            .await
    }

    /// [`World::post_acs`] to the ACS of gateway `gw` (another node behind the same public URL).
    async fn post_acs_at(
        &self,
        gw: &TestGateway,
        saml_response: &str,
        relay_state: Option<&str>,
        login_cookie: Option<&str>,
    ) -> reqwest::Response {
        let mut body = format!("SAMLResponse={}", form_encode(saml_response));
        if let Some(r) = relay_state {
            body.push_str(&format!("&RelayState={}", form_encode(r)));
        }
        let client = gw
            .anon_client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut req = client
            .post(gw.url("/auth/saml/acs"))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        if let Some(c) = login_cookie {
            req = req.header(COOKIE, format!("{LOGIN_COOKIE}={c}"));
        }
        req.send().await.unwrap()
    }

    /// The whole browser flow for `user`: login redirect -> IdP /sso -> its auto-POST to the ACS.
    /// Returns the ACS answer. Needs the test's own IdP (it changes what `/sso` signs).
    async fn browser_login(&self, user: User, return_to: Option<&str>) -> reqwest::Response {
        assert!(
            matches!(self.idp, Idp::Own(_)),
            "browser_login needs own_idp"
        );
        self.idp
            .set_defaults(&json!({
                "name_id": user.name_id,
                "roles": [[self.roles[user.role], self.provider_arn]],
                "role_session_name": user.session_name,
            }))
            .await;
        let login = self.start_login(return_to).await;
        let post = self.idp.follow_redirect(&login.location).await;
        assert_eq!(post.action, self.acs_url());
        self.post_acs(
            &post.saml_response,
            post.relay_state.as_deref(),
            Some(&login.cookie),
        )
        .await
    }

    /// The login redirect, then a valid response for `user` answering it, posted to the ACS
    /// (what the IdP's page would post). Returns the ACS answer.
    async fn direct_login(&self, user: User, return_to: Option<&str>) -> reqwest::Response {
        let login = self.start_login(return_to).await;
        let response = self
            .idp
            .response(&self.spec(user, Some(&login.request_id)))
            .await;
        self.post_acs(&response, None, Some(&login.cookie)).await
    }

    /// Sign `user` in and return the session cookie's value.
    async fn sign_in(&self, user: User) -> String {
        let resp = match self.idp {
            Idp::Own(_) => self.browser_login(user, Some("/ui/")).await,
            Idp::Shared(_) => self.direct_login(user, Some("/ui/")).await,
        };
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{}", body(resp).await);
        assert_eq!(resp.headers()[LOCATION], "/ui/");
        session_cookie(&resp)
    }

    async fn get_with_session(&self, path: &str, session: &str) -> reqwest::Response {
        self.client()
            .get(self.gw.url(path))
            .header(COOKIE, format!("{SESSION_COOKIE}={session}"))
            .send()
            .await
            .unwrap()
    }

    fn sts_calls(&self) -> usize {
        self.moto.sts_calls()
    }

    /// Another node behind the same load balancer: the same sources, projects, STS and clock,
    /// and `saml` (so the same public ACS URL), on listeners of its own.
    async fn second_node(&self, saml: Option<SamlConfig>) -> TestGateway {
        let first = self.config.clone();
        let mut captured = None;
        let gw = support::GatewayBuilder::new()
            .sources(first.sources.clone())
            .tweak(|c| {
                c.projects = first.projects.clone();
                c.sts = first.sts.clone();
                captured = Some(c.clone());
            })
            .credentials_clock(Arc::new(self.clock.clone()))
            .start()
            .await;
        let mut config = captured.unwrap();
        config.saml = saml;
        gw.gateway().reload(config).await.unwrap();
        gw
    }

    /// A login started on this world's gateway, answered by the IdP, its response posted to the
    /// ACS of `node`. Returns the ACS answer.
    async fn login_across(&self, node: &TestGateway) -> reqwest::Response {
        let login = self.start_login(Some("/ui/")).await;
        let response = self
            .idp
            .response(&self.spec(ALICE, Some(&login.request_id)))
            .await;
        self.post_acs_at(node, &response, None, Some(&login.cookie))
            .await
    }
}

fn rule(role_arn: &str, provider_arn: &str, gateway_role: &str) -> SamlRoleRule {
    SamlRoleRule {
        role_arn: role_arn.to_owned(),
        provider_arn: provider_arn.to_owned(),
        gateway_role: gateway_role.to_owned(),
        project: PROJECT.to_owned(),
    }
}

struct Login {
    location: String,
    request_id: String,
    cookie: String,
}

/// `name -> (value, attributes)` of every Set-Cookie.
fn set_cookies(resp: &reqwest::Response) -> BTreeMap<String, (String, String)> {
    resp.headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| {
            let text = v.to_str().unwrap();
            let (pair, attrs) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            (name.to_owned(), (value.to_owned(), attrs.to_owned()))
        })
        .collect()
}

/// The new session cookie of an ACS answer, after checking its attributes.
fn session_cookie(resp: &reqwest::Response) -> String {
    let cookies = set_cookies(resp);
    let (value, attrs) = cookies[SESSION_COOKIE].clone();
    for attr in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/", "Max-Age="] {
        assert!(attrs.contains(attr), "session cookie lacks {attr}: {attrs}");
    }
    assert_eq!(value.len(), 64, "32 random bytes, hex");
    assert!(
        cookies[LOGIN_COOKIE].1.contains("Max-Age=0"),
        "the login cookie is cleared"
    );
    value
}

async fn body(resp: reqwest::Response) -> String {
    resp.text().await.unwrap()
}

async fn error_text(resp: reqwest::Response) -> String {
    let v: Value = serde_json::from_str(&body(resp).await).unwrap();
    v["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn saml_login_reads_with_each_users_own_role_and_makes_no_further_sts_call() {
    let w = World::start(Options {
        own_idp: true,
        ..Options::default()
    })
    .await;
    let alice = w.sign_in(ALICE).await;
    let bob = w.sign_in(BOB).await;
    assert_eq!(w.sts_calls(), 2, "one AssumeRoleWithSAML per login");
    let calls = w.moto.sts_requests();
    assert!(calls.iter().all(|c| c.action == "AssumeRoleWithSAML"));
    assert_eq!(calls[0].params["RoleArn"], w.roles["Labeler"]);
    assert_eq!(calls[1].params["PrincipalArn"], w.provider_arn);
    let duration: u64 = calls[0].params["DurationSeconds"].parse().unwrap();
    assert!(
        (3590..=3600).contains(&duration),
        "min(max_session 8 h, SessionNotOnOrAfter in 1 h): {duration}"
    );

    // First and repeated requests: each user sees exactly what their role allows.
    for _ in 0..2 {
        let resp = w.get_with_session("/o/assets/labels/a.txt", &alice).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body(resp).await, "label a\n");
        let resp = w.get_with_session("/o/assets/secret/b.txt", &alice).await;
        assert_eq!(
            resp.status(),
            StatusCode::FORBIDDEN,
            "the Labeler role's policy refuses secret/"
        );
        assert_eq!(error_text(resp).await, "forbidden");
        for key in ["labels/a.txt", "secret/b.txt"] {
            let resp = w.get_with_session(&format!("/o/assets/{key}"), &bob).await;
            assert_eq!(resp.status(), StatusCode::OK, "Reviewer reads {key}");
        }
    }
    assert_eq!(w.sts_calls(), 2, "reads after login cost no STS call");

    // Who the session is: what STS returned, not the NameID.
    let resp = w.get_with_session("/auth/session", &alice).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let who: Value = serde_json::from_str(&body(resp).await).unwrap();
    assert_eq!(
        who["subject"],
        "arn:aws:sts::123456789012:assumed-role/Labeler/alice"
    );
    assert_eq!(
        (who["role"].as_str(), who["project"].as_str()),
        (Some("annotator"), Some(PROJECT))
    );
    let expires = who["expires"].as_u64().unwrap();
    let now = bucketgate::identity::unix_now();
    assert!(
        (now + 3500..=now + 3700).contains(&expires),
        "{expires} vs {now}"
    );

    // A token-authenticated request to a `saml` source has no user credentials: 403, never a
    // fallback to broader ones.
    let resp =
        w.gw.client()
            .get(w.gw.url("/o/assets/labels/a.txt"))
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn saml_login_started_on_one_node_completes_on_another_with_a_shared_login_cookie_key() {
    let w = World::start(Options::default()).await;

    // Default: a random key per process; the other node cannot open the login cookie, so the
    // response answers no login of its own (401), before STS.
    let other = w.second_node(w.config.saml.clone()).await;
    let resp = w.login_across(&other).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get(SET_COOKIE).is_none());
    assert_eq!(w.sts_calls(), 0);
    other.shutdown().await;

    // The same configured key on both nodes: the login completes on the other one.
    let mut saml = w.config.saml.clone().unwrap();
    saml.login_cookie_key = Some(Secret::new(
        "k3y-shared-by-both-nodes-0123456789".to_owned(),
    ));
    let mut config = w.config.clone();
    config.saml = Some(saml.clone());
    w.gw.gateway().reload(config).await.unwrap();
    let other = w.second_node(Some(saml)).await;
    let resp = w.login_across(&other).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{}", body(resp).await);
    assert_eq!(resp.headers()[LOCATION], "/ui/");
    let session = session_cookie(&resp);
    assert_eq!(w.sts_calls(), 1);
    // The session lives on the node that completed the login (sessions are per process).
    let client = other
        .anon_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .get(other.url("/auth/session"))
        .header(COOKIE, format!("{SESSION_COOKIE}={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    other.shutdown().await;
}

#[tokio::test]
async fn saml_attack_matrix_is_refused_before_sts() {
    let w = World::start(Options::default()).await;
    let format_errors = [
        json!({"case": "oversized"}),
        json!({"case": "doctype"}),
        json!({"case": "entity"}),
        json!({"case": "xxe"}),
    ];
    let refusals = [
        json!({"case": "unsigned"}),
        json!({"case": "tampered"}),
        json!({"case": "xsw_extensions"}),
        json!({"case": "xsw_object"}),
        json!({"case": "xsw_sibling"}),
        json!({"case": "xsw_wrapped_response"}),
        json!({"case": "xsw_wrapped_response_only"}),
        json!({"case": "signed_fragment", "sign": "none"}),
        json!({"case": "two_assertions"}),
        json!({"case": "comment_name_id"}),
        json!({"case": "sha1"}),
        json!({"case": "status_error"}),
        json!({"case": "encrypted"}),
        json!({"key": "secondary"}),
        json!({"audience": "https://evil.example/saml"}),
        json!({"recipient": "https://evil.example/auth/saml/acs"}),
        json!({"destination": "https://evil.example/auth/saml/acs"}),
        json!({"issuer": "https://evil.example/idp"}),
        json!({"not_on_or_after_offset": -120}),
        json!({"not_before_offset": 300}),
        json!({"session_not_on_or_after_offset": -120}),
        json!({"in_response_to": "_0123456789abcdef0123456789abcdef"}),
        // Issue 11: exactly one bearer SubjectConfirmation; IssueInstant within the age and skew.
        json!({"extra_confirmation_offset": 300}),
        json!({"no_confirmation": true}),
        json!({"issue_instant_offset": -1000}),
        json!({"assertion_issue_instant": 600}),
        json!({"response_issue_instant": null}),
    ];
    let mut refused_texts = std::collections::BTreeSet::new();
    for (cases, status) in [
        (&format_errors[..], StatusCode::BAD_REQUEST),
        (&refusals[..], StatusCode::UNAUTHORIZED),
    ] {
        for case in cases {
            let login = w.start_login(Some("/ui/")).await;
            let mut spec = w.spec(ALICE, Some(&login.request_id));
            for (k, v) in case.as_object().unwrap() {
                spec[k] = v.clone();
            }
            let saml_response = w.idp.response(&spec).await;
            let resp = w.post_acs(&saml_response, None, Some(&login.cookie)).await;
            assert_eq!(resp.status(), status, "{case}");
            assert!(
                resp.headers().get(SET_COOKIE).is_none(),
                "{case}: no session"
            );
            let text = error_text(resp).await;
            if status == StatusCode::UNAUTHORIZED {
                refused_texts.insert(text);
            }
            assert_eq!(w.sts_calls(), 0, "{case}: STS was called");
        }
    }
    assert_eq!(
        refused_texts.len(),
        1,
        "every validation failure has one body: {refused_texts:?}"
    );

    // A body past the ACS read limit is not read to the end: 413.
    let login = w.start_login(None).await;
    let huge = "A".repeat(900 * 1024);
    let resp = w.post_acs(&huge, None, Some(&login.cookie)).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Not base64, no SAMLResponse, not a form: 400.
    let login = w.start_login(None).await;
    let resp = w
        .post_acs("!!not base64!!", None, Some(&login.cookie))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = w
        .client()
        .post(w.acs_url())
        .header(CONTENT_TYPE, "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Unsolicited: a valid response that answers no login of ours (no login cookie).
    let unsolicited = w.idp.response(&w.spec(ALICE, None)).await;
    let resp = w.post_acs(&unsolicited, Some("/ui/"), None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // A valid response for another browser's login: our cookie's request id does not match.
    let theirs = w.start_login(None).await;
    let ours = w.start_login(None).await;
    let response = w
        .idp
        .response(&w.spec(ALICE, Some(&theirs.request_id)))
        .await;
    let resp = w.post_acs(&response, None, Some(&ours.cookie)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(w.sts_calls(), 0);

    // Replayed: the first use signs in (one STS call), the same response again is refused.
    let login = w.start_login(None).await;
    let response = w
        .idp
        .response(&w.spec(ALICE, Some(&login.request_id)))
        .await;
    let first = w.post_acs(&response, None, Some(&login.cookie)).await;
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    assert_eq!(w.sts_calls(), 1);
    let again = w.post_acs(&response, None, Some(&login.cookie)).await;
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
    // Even re-signed with a fresh assertion id, the login request it answers was used up.
    let mut spec = w.spec(ALICE, Some(&login.request_id));
    spec["assertion_id"] = json!("_fresh0000000000000000000000000001");
    let resigned = w.idp.response(&spec).await;
    let resp = w.post_acs(&resigned, None, Some(&login.cookie)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(w.sts_calls(), 1, "replays never reach STS");
}

#[tokio::test]
async fn saml_return_to_and_relay_state_open_redirects_land_on_root() {
    let w = World::start(Options {
        idp_initiated: true,
        ..Options::default()
    })
    .await;
    let cases = [
        ("/o/assets/labels/a.txt", "/o/assets/labels/a.txt"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("/\t/evil.example", "/"),
        ("evil.example", "/"),
    ];
    for (return_to, expected) in cases {
        let resp = w.direct_login(ALICE, Some(return_to)).await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{return_to:?}");
        assert_eq!(resp.headers()[LOCATION], expected, "{return_to:?}");
    }
    // A RelayState posted beside an SP-initiated login does not override the signed return_to.
    let login = w.start_login(Some("/ui/")).await;
    let response = w
        .idp
        .response(&w.spec(ALICE, Some(&login.request_id)))
        .await;
    let resp = w
        .post_acs(
            &response,
            Some("https://evil.example/"),
            Some(&login.cookie),
        )
        .await;
    assert_eq!(resp.headers()[LOCATION], "/ui/");
    // IdP-initiated (allowed here): the RelayState is the target, made safe the same way.
    for (relay, expected) in [("//evil.example", "/"), ("/ui/task/7", "/ui/task/7")] {
        let response = w.idp.response(&w.spec(BOB, None)).await;
        let resp = w.post_acs(&response, Some(relay), None).await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{relay}");
        assert_eq!(resp.headers()[LOCATION], expected, "{relay}");
    }
    // An unknown login parameter is refused outright.
    let resp = w
        .client()
        .get(w.gw.url("/auth/saml/login?next=/ui/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn saml_logout_ends_the_session_server_side() {
    let w = World::start(Options::default()).await;
    let session = w.sign_in(ALICE).await;
    let resp = w
        .client()
        .post(w.gw.url("/auth/logout"))
        .header(COOKIE, format!("{SESSION_COOKIE}={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let cleared = &set_cookies(&resp)[SESSION_COOKIE];
    assert_eq!(cleared.0, "");
    assert!(cleared.1.contains("Max-Age=0"), "{cleared:?}");
    // The old cookie value is worth nothing now, on every route.
    let resp = w.get_with_session("/auth/session", &session).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_text(resp).await, SIGN_IN_AGAIN);
    let resp = w.get_with_session("/o/assets/labels/a.txt", &session).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_text(resp).await, SIGN_IN_AGAIN);
}

#[tokio::test]
async fn saml_expired_session_is_401_telling_the_ui_to_sign_in_again() {
    let w = World::start(Options::default()).await;
    let session = w.sign_in(ALICE).await;
    let resp = w.get_with_session("/o/assets/labels/a.txt", &session).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // The IdP's SessionNotOnOrAfter (1 h) ends the session, with its credentials.
    w.clock.advance(Duration::from_secs(3601));
    for path in ["/o/assets/labels/a.txt", "/auth/session"] {
        let resp = w.get_with_session(path, &session).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(error_text(resp).await, SIGN_IN_AGAIN, "{path}");
    }
    // Without any session at all, the same answer.
    let resp = w
        .client()
        .get(w.gw.url("/auth/session"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_text(resp).await, SIGN_IN_AGAIN);
}

#[tokio::test]
async fn saml_sts_refusing_failing_or_slow_maps_to_403_503_504() {
    let w = World::start(Options::default()).await;
    let proxy = &w.moto.proxy;
    proxy.set_mode(ProxyMode::Fail(403));
    let resp = w.direct_login(ALICE, None).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_text(resp).await, "forbidden");
    proxy.set_mode(ProxyMode::Fail(500));
    let resp = w.direct_login(ALICE, None).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    proxy.set_mode(ProxyMode::Forward);
    proxy.stop();
    let resp = w.direct_login(ALICE, None).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    proxy.restart().await;
    // Slow: within the configured STS timeout (shortened by a reload) the login gives up.
    let mut config = w.config.clone();
    config.sts.timeout = Duration::from_millis(300);
    w.gw.gateway().reload(config).await.unwrap();
    proxy.set_mode(ProxyMode::Stall);
    let resp = w.direct_login(ALICE, None).await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(resp.headers().get(SET_COOKIE).is_none());
    proxy.set_mode(ProxyMode::Forward);
    // And once STS answers again (with the usual timeout back), the same user signs in.
    w.gw.gateway().reload(w.config.clone()).await.unwrap();
    let resp = w.direct_login(ALICE, None).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
}

/// Regression (issue 11): STS refusing the gateway's own AssumeRoleWithSAML request (STS off in
/// the configured region, an `[sts] endpoint` that wants a signature, a request STS cannot read)
/// answered 403 "forbidden", as if the user were refused. Now: 502 "sign-in service failed",
/// no session, one warning naming STS's code and the role. What is about the user's assertion
/// or the role's trust in the IdP stays a 403.
#[tokio::test]
async fn saml_sts_refusing_the_gateways_own_request_is_a_502_configuration_fault() {
    let w = World::start(Options::default()).await;
    let proxy = &w.moto.proxy;
    let role = w.roles["Labeler"].clone();
    for (status, code) in [
        (403, "RegionDisabledException"),
        (403, "MissingAuthenticationToken"),
        (403, "SignatureDoesNotMatch"),
        (400, "InvalidAction"),
    ] {
        let (logs, _guard) = CapturedLogs::start();
        proxy.set_mode(ProxyMode::FailWith(status, code));
        let resp = w.direct_login(ALICE, None).await;
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY, "{code}");
        assert!(
            resp.headers()
                .get(SET_COOKIE)
                .is_none_or(|c| { !c.to_str().unwrap().starts_with(SESSION_COOKIE) })
        );
        assert_eq!(error_text(resp).await, "sign-in service failed", "{code}");
        let faults = logs.config_faults();
        assert_eq!(faults.len(), 1, "{code}:\n{}", logs.text());
        assert_eq!(faults[0]["sts_error_code"], code, "{}", faults[0]);
        assert_eq!(faults[0]["role_arn"], role.as_str(), "{}", faults[0]);
        assert!(
            !logs.text().contains("injected"),
            "no STS message in the log"
        );
    }
    // The assertion, an IdP claim, the role's trust in the provider: refusals, 403 as before.
    for (status, code) in [
        (400, "InvalidIdentityToken"),
        (403, "IDPRejectedClaim"),
        (403, "AccessDenied"),
        (400, "ExpiredTokenException"),
    ] {
        let (logs, _guard) = CapturedLogs::start();
        proxy.set_mode(ProxyMode::FailWith(status, code));
        let resp = w.direct_login(ALICE, None).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{code}");
        assert_eq!(error_text(resp).await, "forbidden", "{code}");
        assert!(logs.config_faults().is_empty(), "{code}:\n{}", logs.text());
    }
    proxy.set_mode(ProxyMode::Forward);
    let resp = w.direct_login(ALICE, None).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn saml_session_cookie_counts_as_a_token_place_and_survives_reloads() {
    let w = World::start(Options::default()).await;
    let session = w.sign_in(BOB).await;
    // A session cookie and a Bearer token at once: 400.
    let resp =
        w.gw.client()
            .get(w.gw.url("/o/assets/labels/a.txt"))
            .header(COOKIE, format!("{SESSION_COOKIE}={session}"))
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // A reload keeps everyone signed in.
    w.gw.gateway().reload(w.config.clone()).await.unwrap();
    let resp = w.get_with_session("/o/assets/secret/b.txt", &session).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(w.sts_calls(), 1);
    // A reload that removes [saml] stops reading session cookies (fail closed).
    let mut without = w.config.clone();
    without.saml = None;
    w.gw.gateway().reload(without).await.unwrap();
    let resp = w.get_with_session("/o/assets/secret/b.txt", &session).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = w
        .client()
        .get(w.gw.url("/auth/session"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn saml_audit_records_logins_without_any_secret() {
    let w = World::start(Options::default()).await;
    let session = w.sign_in(ALICE).await;
    let resp = w.get_with_session("/o/assets/labels/a.txt", &session).await;
    assert_eq!(body(resp).await, "label a\n");
    let login = w.start_login(None).await;
    let mut spec = w.spec(ALICE, Some(&login.request_id));
    spec["case"] = json!("tampered");
    let tampered = w.idp.response(&spec).await;
    let resp = w.post_acs(&tampered, None, Some(&login.cookie)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let records: Vec<Value> =
        support::eventually("audit records", 200, Duration::from_millis(20), || async {
            let text = std::fs::read_to_string(&w.audit_path).unwrap_or_default();
            let records: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let done = records.iter().any(|r| r["rule"] == "saml response");
            done.then_some(records)
        })
        .await;
    let text = std::fs::read_to_string(&w.audit_path).unwrap();
    let login_record = records
        .iter()
        .find(|r| r["rule"] == "saml login")
        .expect("a record of the login");
    assert_eq!(login_record["route"], "auth");
    assert_eq!(login_record["status"], 303);
    assert_eq!(login_record["decision"], "allow");
    assert_eq!(
        login_record["subject"],
        "arn:aws:sts::123456789012:assumed-role/Labeler/alice"
    );
    let read = records
        .iter()
        .find(|r| r["route"] == "object")
        .expect("a record of the read");
    assert_eq!(read["role"], "annotator");
    assert_ne!(read["token_hash"], Value::Null);
    let refused = records
        .iter()
        .find(|r| r["rule"] == "saml response")
        .unwrap();
    assert_eq!(
        (refused["status"].as_u64(), refused["decision"].as_str()),
        (Some(401), Some("deny"))
    );
    // Nothing from the response, the NameID or the credentials, and not the session id.
    for secret in [ALICE.name_id, &session, "ASIA", "PHNhbWxw", "SAMLResponse"] {
        assert!(!text.contains(secret), "audit log contains {secret:?}");
    }
}

/// With `[cache]`, an entry filled with one role's credentials is served only to sessions of
/// that role: the Reviewer's cached `secret/` object stays refused to the Labeler, and an object
/// both roles may read is fetched once per role (the audit record's `cache` says which).
#[tokio::test]
async fn saml_cache_entries_are_served_only_to_sessions_of_the_role_that_filled_them() {
    let w = World::start(Options {
        cache: true,
        ..Options::default()
    })
    .await;
    let alice = w.sign_in(ALICE).await;
    let bob = w.sign_in(BOB).await;
    for _ in 0..2 {
        let resp = w.get_with_session("/o/assets/secret/b.txt", &bob).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body(resp).await, "secret b\n");
    }
    for _ in 0..2 {
        let resp = w.get_with_session("/o/assets/secret/b.txt", &alice).await;
        assert_eq!(
            resp.status(),
            StatusCode::FORBIDDEN,
            "the Reviewer's cached entry is not the Labeler's"
        );
    }
    for session in [&alice, &alice, &bob, &bob] {
        let resp = w.get_with_session("/o/assets/labels/a.txt", session).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body(resp).await, "label a\n");
    }
    let records: Vec<Value> =
        support::eventually("audit records", 200, Duration::from_millis(20), || async {
            let text = std::fs::read_to_string(&w.audit_path).unwrap_or_default();
            let records: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .filter(|r| r["route"] == "object")
                .collect();
            (records.len() >= 8).then_some(records)
        })
        .await;
    let cache_of = |key: &str| -> Vec<(String, String)> {
        records
            .iter()
            .filter(|r| r["key"] == key)
            .map(|r| {
                (
                    r["role"].as_str().unwrap_or("").to_owned(),
                    r["cache"].as_str().unwrap_or("none").to_owned(),
                )
            })
            .collect()
    };
    let pair = |role: &str, cache: &str| (role.to_owned(), cache.to_owned());
    assert_eq!(
        cache_of("labels/a.txt"),
        vec![
            pair("annotator", "miss"),
            pair("annotator", "hit-memory"),
            pair("reviewer", "miss"),
            pair("reviewer", "hit-memory"),
        ],
        "one entry per role: {records:#?}"
    );
    let secret = cache_of("secret/b.txt");
    assert_eq!(
        &secret[..2],
        &[pair("reviewer", "miss"), pair("reviewer", "hit-memory")]
    );
    for (role, cache) in &secret[2..] {
        assert_eq!(role, "annotator");
        assert_ne!(cache, "hit-memory", "{records:#?}");
    }
}

#[tokio::test]
async fn saml_routes_are_404_without_saml_and_metadata_prints_the_sp() {
    let (gw, _dir) = support::GatewayBuilder::new().start_fs("local").await;
    for (method, path) in [
        (http::Method::GET, "/auth/saml/login"),
        (http::Method::POST, "/auth/saml/acs"),
        (http::Method::GET, "/auth/session"),
        (http::Method::POST, "/auth/logout"),
    ] {
        let resp = gw
            .raw_exact(support::Proto::H1, method, path, &[], bytes::Bytes::new())
            .await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{path}");
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/saml-idp-example.crt"),
        dir.path().join("idp.pem"),
    )
    .unwrap();
    let config = format!(
        "[listener]\naddr = \"127.0.0.1:0\"\ndev_certificate_dir = \"tls\"\n\
         [sources.local]\nkind = \"fs\"\nroot = \"data\"\n\
         [projects.p]\nsources = [\"local:\"]\n\
         [saml]\nsp_entity_id = \"{SP_ENTITY_ID}\"\n\
         acs_url = \"https://gw.example.com/auth/saml/acs\"\n\
         [saml.idp]\nentity_id = \"https://idp.example.com/metadata\"\n\
         sso_url = \"https://idp.example.com/sso\"\ncertificates = [\"file:idp.pem\"]\n\
         [[saml.idp.roles]]\nrole_arn = \"arn:aws:iam::123456789012:role/R\"\n\
         provider_arn = \"arn:aws:iam::123456789012:saml-provider/Corp\"\n\
         gateway_role = \"annotator\"\nproject = \"p\"\n"
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bucketgate"))
        .args(["saml-metadata", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let xml = String::from_utf8(out.stdout).unwrap();
    assert!(
        xml.contains(&format!("entityID=\"{SP_ENTITY_ID}\"")),
        "{xml}"
    );
    assert!(
        xml.contains("Location=\"https://gw.example.com/auth/saml/acs\""),
        "{xml}"
    );
    assert!(
        xml.contains("urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"),
        "{xml}"
    );
}

/// The same sign-in in a real browser (headless chromium): the gateway's redirect, the IdP's
/// auto-submitting page, the cross-site POST back to the ACS (which must carry the login
/// cookie), the session cookie as the browser stores it, and object reads from the page.
#[tokio::test]
async fn saml_sign_in_works_in_a_real_browser_and_the_page_reads_with_the_session() {
    let w = World::start(Options {
        own_idp: true,
        ..Options::default()
    })
    .await;
    w.idp
        .set_defaults(&json!({
            "name_id": ALICE.name_id,
            "roles": [[w.roles[ALICE.role], w.provider_arn]],
            "role_session_name": ALICE.session_name,
        }))
        .await;
    w.clock.set(std::time::SystemTime::now());
    let browser = support::browser::Browser::start().await;
    browser
        .goto(&w.gw.url("/auth/saml/login?return_to=/auth/session"))
        .await;
    let landed = browser.wait_for_url(|u| u.ends_with("/auth/session")).await;
    assert!(landed.starts_with(&w.gw.base()), "{landed}");
    let who: Value = serde_json::from_str(&browser.body_text().await).unwrap();
    assert!(
        who["subject"].as_str().unwrap().contains("Labeler"),
        "the session is the assumed role: {who}"
    );
    assert_eq!(who["role"], "annotator");
    assert_eq!(w.sts_calls(), 1);

    let cookies = browser.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == SESSION_COOKIE)
        .unwrap_or_else(|| panic!("no session cookie in the browser: {cookies:?}"));
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["secure"], true);
    assert_eq!(session["sameSite"], "Lax");
    assert!(
        !cookies.iter().any(|c| c["name"] == LOGIN_COOKIE),
        "the login cookie was cleared"
    );
    // Objects open in the browser with the cookie alone: allowed by Alice's role, and refused
    // where her IAM role is refused, with no further STS call.
    browser
        .goto(&w.gw.url(&format!("/o/{BUCKET}/labels/a.txt")))
        .await;
    assert_eq!(browser.body_text().await.trim_end(), "label a");
    browser
        .goto(&w.gw.url(&format!("/o/{BUCKET}/secret/b.txt")))
        .await;
    assert!(
        browser.body_text().await.contains("forbidden"),
        "{}",
        browser.body_text().await
    );
    assert_eq!(w.sts_calls(), 1, "reads after login make no STS call");
}

/// Every `/auth/` answer a browser may render (the login redirect, the ACS's redirect and its
/// refusals, the session answer) can be neither framed nor sniffed, and comes with HSTS; an ACS
/// body refused as too large also closes the http/1.1 connection, since the rest of it was never
/// read.
#[tokio::test]
async fn saml_answers_cannot_be_framed_and_carry_hsts() {
    let w = World::start(Options::default()).await;
    let check = |what: &str, resp: &reqwest::Response| {
        let h = resp.headers();
        assert_eq!(h["x-frame-options"], "DENY", "{what}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(h["strict-transport-security"], "max-age=31536000", "{what}");
    };
    let login = w
        .client()
        .get(w.gw.url("/auth/saml/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::FOUND);
    check("login redirect", &login);

    let signed_in = w.direct_login(ALICE, Some("/ui/")).await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    check("ACS redirect", &signed_in);
    let session = session_cookie(&signed_in);

    let info = w.get_with_session("/auth/session", &session).await;
    assert_eq!(info.status(), StatusCode::OK);
    check("session", &info);

    let refused = w
        .client()
        .post(w.acs_url())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("RelayState=x")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    check("ACS refusal", &refused);

    // Only the head: the declared length alone refuses it, and nothing unread is left behind.
    let mut tls =
        w.gw.tls_connect(w.gw.tls_config(&[b"http/1.1"], rustls::ALL_VERSIONS))
            .await
            .unwrap();
    let head = format!(
        "POST /auth/saml/acs HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 900000\r\n\r\n",
        w.gw.data_addr()
    );
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // Read until the server closes (a reset after the response counts as closed too).
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the connection closes after the 413");
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 413 "), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(text.contains("\r\nx-frame-options: deny\r\n"), "{text}");
}
