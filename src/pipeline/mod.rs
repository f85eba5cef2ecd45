//! The request lifecycle. [`Pipeline::handle`] calls the stages in this order; each stage returns a
//! value only it can build, and a refusal ends the request before any costlier work:
//!
//! | # | stage | here |
//! |---|---|---|
//! | 0 | request: one valid `Host` / `:authority` without userinfo (400), a body framing we implement (501) | `request.rs` |
//! | 1 | network: peer (+ forwarded headers from trusted proxies) -> [`network::ClientIp`] -> allow/deny | `network.rs` |
//! | 1a | `/auth/` routes (SAML login, ACS, session, logout), after the per-address rate limit | `auth` (core: `crate::saml::sp`) |
//! | 1b | CORS preflight, answered without a token | `cors.rs` |
//! | 5a | parse: route, query, key syntax -> [`plan::Target`] (400s; nothing about what exists) | `plan.rs` |
//! | 2 | identity: the one token or SAML session -> [`crate::identity::Principal`] (401; two tokens: 400) | `identity.rs` |
//! | 3 | authorize: principal x client x source/key x representation -> [`authorize::Grant`] (403) | `authorize.rs` |
//! | 4 | admit: rate limits per client address and subject -> [`admit::Admitted`] (429) | `admit.rs` |
//! | 5b | plan: target + grant -> [`plan::Plan`]; an unknown source is 404 only now | `plan.rs` |
//! | 7 | fetch: metadata, preconditions, range, open the body | `fetch` below, `range.rs` |
//! | 9 | respond: head + streaming body, CORS headers | `respond.rs`, `cors.rs` |
//! | 10 | audit: one record per request, written when the body ends or is dropped | `audit.rs` |
//!
//! The pipeline knows nothing about sockets or TLS (that is `server/`) and never builds backend
//! clients (that is `app.rs`).

pub mod admit;
pub mod auth;
pub mod authorize;
pub mod body;
pub mod cors;
pub mod identity;
pub mod network;
pub mod plan;
pub mod range;
pub mod request;
pub mod respond;

/// The error-chain printer lives with the logging setup, so lower modules need not import
/// the pipeline for it.
pub use crate::telemetry::ErrorChain;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tracing::Instrument;

use crate::audit::{AuditLog, AuditedBody, Decision, Facts};
use crate::backend::{AnyBackend, BackendError, Caller, ObjectMeta, Opened, Want};
use crate::config::Limits;
use crate::error::Error;
use crate::telemetry::{Metrics, NetworkDecisionLabel, RouteLabel, RouteStatus};
use plan::Plan;
use range::Answer;
use respond::{ResponseBody, StreamingBody};

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client as the data listener sees it: the TCP peer, or the source address of a PROXY
    /// protocol header sent by a configured peer.
    pub peer: SocketAddr,
    /// The TCP peer that sent a PROXY protocol header, if one did.
    pub proxied_by: Option<SocketAddr>,
}

impl ConnInfo {
    /// A direct connection (no PROXY protocol header).
    pub fn direct(peer: SocketAddr) -> ConnInfo {
        ConnInfo {
            peer,
            proxied_by: None,
        }
    }
}

/// The live parts built from one config snapshot by `app.rs`. A request loads the current
/// snapshot once and uses it for every stage, so a reload never splits a request across two
/// configurations.
pub struct Snapshot {
    sources: HashMap<String, AnyBackend>,
    limits: Limits,
    network: network::NetworkPolicy,
    cors: cors::Cors,
    /// `None`: no `[identity]`, every object request is 401 (fail closed).
    identity: Option<Arc<crate::identity::Identity>>,
    policy: authorize::Policy,
    /// `None`: no `[saml]`; the `/auth/` routes are 404 and session cookies are not read.
    saml: Option<Arc<crate::saml::sp::ServiceProvider>>,
    /// `Strict-Transport-Security` on every response (`[listener] hsts_*`).
    hsts: http::HeaderValue,
}

impl Snapshot {
    pub fn new(
        sources: HashMap<String, AnyBackend>,
        limits: Limits,
        network: network::NetworkPolicy,
    ) -> Snapshot {
        Snapshot {
            sources,
            limits,
            network,
            cors: cors::Cors::disabled(),
            identity: None,
            policy: authorize::Policy::default(),
            saml: None,
            hsts: respond::hsts_value(&crate::config::HstsConfig::default()),
        }
    }

    /// Send `Strict-Transport-Security` as `config` says (default: one year, no
    /// `includeSubDomains`, no `preload`).
    pub fn with_hsts(mut self, config: &crate::config::HstsConfig) -> Snapshot {
        self.hsts = respond::hsts_value(config);
        self
    }

    /// Serve the SAML service provider of `[saml]` (default: none). Sessions outlive snapshots
    /// (they are the pipeline's); what a new session may become is this snapshot's.
    pub fn with_saml(mut self, saml: Option<Arc<crate::saml::sp::ServiceProvider>>) -> Snapshot {
        self.saml = saml;
        self
    }

    /// Verify tokens with `identity` and decide with `policy` (default: no identity, so every
    /// object request is refused with 401). Part of the snapshot, so a reload that drops a key
    /// revokes its tokens at once.
    pub fn with_access(
        mut self,
        identity: Option<Arc<crate::identity::Identity>>,
        policy: authorize::Policy,
    ) -> Snapshot {
        self.identity = identity;
        self.policy = policy;
        self
    }

    /// Answer CORS for the configured origins (default: none).
    pub fn with_cors(mut self, cors: cors::Cors) -> Snapshot {
        self.cors = cors;
        self
    }

    /// The compiled network policy (stage 1, and the PROXY protocol peers for the listener).
    pub fn network(&self) -> &network::NetworkPolicy {
        &self.network
    }

    pub fn sources(&self) -> impl Iterator<Item = (&String, &AnyBackend)> {
        self.sources.iter()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// The request pipeline: the current snapshot (swapped atomically on reload) and the state that
/// outlives snapshots (metrics).
pub struct Pipeline {
    current: ArcSwap<Snapshot>,
    metrics: Arc<Metrics>,
    /// Rate-limit state: outlives snapshots so a reload does not reset every client's budget.
    admission: admit::Admission,
    audit: AuditLog,
    /// SAML sessions, replay cache and login-cookie key: outlive snapshots, so a reload keeps
    /// everyone signed in. `None`: no SAML at all (benches).
    saml: Option<Arc<crate::saml::sp::SamlState>>,
}

const ROUTE_OBJECT: &str = "object";
const ROUTE_AUTH: &str = "auth";
const ROUTE_OTHER: &str = "other";

impl Pipeline {
    /// A pipeline without rate limits (benches drive it directly); the gateway uses
    /// [`Pipeline::with_admission`].
    pub fn new(snapshot: Snapshot, metrics: Arc<Metrics>) -> Pipeline {
        Pipeline::with_admission(snapshot, metrics, admit::Admission::unlimited())
    }

    pub fn with_admission(
        snapshot: Snapshot,
        metrics: Arc<Metrics>,
        admission: admit::Admission,
    ) -> Pipeline {
        Pipeline {
            current: ArcSwap::from_pointee(snapshot),
            audit: AuditLog::off(Arc::clone(&metrics)),
            metrics,
            admission,
            saml: None,
        }
    }

    /// Keep SAML sessions in `state` (the gateway always has one, whether or not `[saml]` is
    /// configured now, so a reload can add it).
    pub fn with_saml(mut self, state: Arc<crate::saml::sp::SamlState>) -> Pipeline {
        self.saml = Some(state);
        self
    }

    pub fn saml(&self) -> Option<&Arc<crate::saml::sp::SamlState>> {
        self.saml.as_ref()
    }

    /// The rate limits (stage 4); reloads update their quotas.
    pub fn admission(&self) -> &admit::Admission {
        &self.admission
    }

    /// Write one audit record per request to `audit` (default: none).
    pub fn with_audit(mut self, audit: AuditLog) -> Pipeline {
        self.audit = audit;
        self
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The snapshot in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Put a new, fully built snapshot in force. Requests already running keep the old one.
    pub fn replace(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }

    /// Answer one request. Never fails: every error becomes a response here.
    pub async fn handle<B>(&self, req: Request<B>, conn: ConnInfo) -> Response<ResponseBody>
    where
        B: Body,
    {
        let started = Instant::now();
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let route = if req.uri().path().starts_with("/o/") {
            ROUTE_OBJECT
        } else if req.uri().path().starts_with(auth::AUTH_PREFIX) {
            ROUTE_AUTH
        } else {
            ROUTE_OTHER
        };
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %req.method(),
            route,
            peer = %conn.peer,
            client = tracing::field::Empty,
            decision = tracing::field::Empty,
            rule = tracing::field::Empty,
            source = tracing::field::Empty,
            subject = tracing::field::Empty,
            role = tracing::field::Empty,
            project = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        let audit = self.audit.begin(request_id.clone(), started);
        let mut facts = Facts::new(conn.peer.ip().to_canonical(), req.method(), route);
        async move {
            let snapshot = self.snapshot();
            let (req, body) = req.into_parts();
            let mut close = false;
            let mut resp = match self
                .run(&snapshot, &req, body, conn, route, &mut facts)
                .await
            {
                Ok(resp) => resp,
                Err(err) => {
                    if let Error::Backend {
                        source_name,
                        error: BackendError::ConfigFault { code },
                    } = &err
                    {
                        // Said once, as what it is: the operator must fix the source's settings.
                        tracing::warn!(
                            source = %source_name,
                            s3_error_code = code,
                            "configuration fault: the store refused the gateway's own \
                             credentials or settings for this source"
                        );
                    } else if let Error::Backend {
                        source_name,
                        error: BackendError::RoleConfigFault { role_arn, code },
                    } = &err
                    {
                        // Never the ExternalId or a credential: the role ARN and STS's code.
                        tracing::warn!(
                            source = %source_name,
                            sts_error_code = code.as_deref().unwrap_or("none"),
                            role_arn = %role_arn,
                            "configuration fault: STS refused the gateway's AssumeRole of this \
                             source's role (the gateway's own credentials or the role's settings)"
                        );
                    } else if let Error::Saml(crate::saml::sp::SpError::StsConfigFault {
                        code,
                        role_arn,
                    }) = &err
                    {
                        tracing::warn!(
                            sts_error_code = code,
                            role_arn = %role_arn,
                            "configuration fault: STS refused the gateway's own \
                             AssumeRoleWithSAML request (the [sts] settings), not the user"
                        );
                    } else if err.is_server_fault() {
                        tracing::warn!(error = %ErrorChain(&err), "request failed");
                    } else {
                        tracing::debug!(error = %ErrorChain(&err), "request refused");
                    }
                    // Once per request; a missing object is an answer, not an upstream error.
                    if let Error::Backend { source_name, error } = &err
                        && let Some(kind) = respond::upstream_error_kind(error)
                    {
                        self.metrics.upstream_error(source_name, kind);
                    }
                    close = err.closes_connection();
                    respond::error_response(&err, &request_id)
                }
            };
            // A HEAD response never has a body. hyper drops it for http/1.1 but sends it as DATA
            // frames on h2, which clients reject as a protocol error (regression: h2 HEAD of a
            // missing key was reset instead of answered 404).
            if req.method == Method::HEAD {
                *resp.body_mut() = respond::empty();
            }
            respond::security_headers(resp.headers_mut(), &request_id);
            respond::strict_transport_security(resp.headers_mut(), &snapshot.hsts);
            if close {
                respond::close_after(resp.headers_mut(), req.version);
            }
            cors::apply(&snapshot.cors, &req.headers, resp.headers_mut());
            let status = resp.status().as_u16();
            tracing::Span::current().record("status", status);
            self.metrics
                .requests
                .get_or_create(&RouteStatus { route, status })
                .inc();
            self.metrics
                .request_duration
                .get_or_create(&RouteLabel { route })
                .observe(started.elapsed().as_secs_f64());
            // 10. audit: the record is written when the body is done (or dropped), once.
            match audit {
                Some(mut pending) => {
                    pending.set(facts, status);
                    resp.map(|body| AuditedBody::new(body, pending).boxed_unsync())
                }
                None => resp,
            }
        }
        .instrument(span)
        .await
    }

    async fn run<B: Body>(
        &self,
        snapshot: &Snapshot,
        req: &http::request::Parts,
        body: B,
        conn: ConnInfo,
        route: &'static str,
        facts: &mut Facts,
    ) -> Result<Response<ResponseBody>, Error> {
        // 0. request: a message the protocol calls invalid reaches no other stage.
        request::check(req).inspect_err(|_| {
            let span = tracing::Span::current();
            span.record("decision", "malformed");
            span.record("rule", "request");
            facts.rule = Some("request".to_owned());
        })?;
        // 1. network: before any identity, key or backend work. The source's own lists apply
        // here already, read from the raw path without decoding the key.
        let client = self.network_stage(snapshot, req, conn)?;
        facts.client = client.addr();
        // 1a. SAML routes: their own rate limit (per address; there is no subject yet) and
        // their own statuses.
        if route == ROUTE_AUTH {
            return self.auth(snapshot, req, body, client, facts).await;
        }
        // 1b. A CORS preflight carries no credentials: answered here, before identity.
        if cors::is_preflight(&req.method, &req.headers) && route == ROUTE_OBJECT {
            return cors::preflight(&snapshot.cors, &req.headers);
        }
        // 5a. parse: route, query and key syntax. 400s here reveal nothing about what exists;
        // the source name is checked only after authorization.
        let target = plan::parse_object(req.uri.path(), req.uri.query())?;
        let head_only = match req.method {
            Method::GET => false,
            Method::HEAD => true,
            _ => return Err(Error::MethodNotAllowed),
        };
        // A body the framing declares is refused now; one it leaves open is read after the
        // rate limits (stage 4), so that only an admitted request waits for it.
        let open_body = body::framing(body).map_err(|_| Error::BodyNotAllowed)?;
        let span = tracing::Span::current();
        span.record("source", target.source());
        facts.source = Some(target.source().to_owned());
        facts.key = Some(target.key().to_owned());
        let representation = crate::identity::Representation::Original;
        facts.representation = Some(representation.as_str());
        // 2. identity: a token, or a SAML session (its principal and the user's credentials).
        let sessions = match (&self.saml, &snapshot.saml) {
            (Some(state), Some(_)) => Some(identity::Sessions {
                store: state.sessions(),
                cookie_name: auth::SESSION_COOKIE,
                now: state.now(),
            }),
            _ => None,
        };
        let authenticated = identity::authenticate_request(
            snapshot.identity.as_deref(),
            sessions,
            &req.headers,
            target.token(),
            crate::identity::unix_now(),
        )
        .await
        .map_err(|e| {
            span.record("decision", "deny");
            span.record("rule", "identity");
            facts.rule = Some("identity".to_owned());
            Error::Identity(e)
        })?;
        let principal = authenticated.principal();
        facts.token_hash = Some(authenticated.token_hash().to_owned());
        facts.subject = Some(principal.subject().to_owned());
        facts.role = Some(principal.role().to_owned());
        facts.project = principal.project().map(str::to_owned);
        span.record("subject", principal.subject());
        span.record("role", principal.role());
        if let Some(p) = principal.project() {
            span.record("project", p);
        }
        // 3. authorize, on the decoded key
        let grant = authorize::authorize(
            principal,
            client,
            target.source(),
            target.key(),
            representation,
            &snapshot.policy,
        )
        .map_err(|e| {
            let rule = e.rule();
            span.record("decision", "deny");
            span.record("rule", rule.as_str());
            facts.rule = Some(rule);
            Error::Forbidden(e)
        })?;
        span.record("decision", "allow");
        span.record("rule", grant.rule());
        facts.rule = Some(grant.rule().to_owned());
        facts.decision = Decision::Allow;
        // 4. admit: rate limits by client address and by subject.
        let _admitted = self.admission.admit_counted(
            client.addr(),
            Some(principal.subject()),
            &self.metrics,
        )?;
        if let Some(open_body) = open_body {
            let within = Duration::from_secs(crate::config::defaults::EMPTY_BODY_WAIT_SECS);
            body::read_to_end_empty(open_body, within)
                .await
                .map_err(|e| match e {
                    body::NotEmpty::Timeout => Error::BodyTimeout,
                    body::NotEmpty::Data | body::NotEmpty::Broken => Error::BodyNotAllowed,
                })?;
        }
        // 5b. plan: only an authorized request learns whether the source exists.
        let plan = target.plan(&grant, |s| snapshot.sources.contains_key(s))?;
        // 7 + 9. fetch and respond
        self.fetch(
            snapshot,
            &req.headers,
            &plan,
            head_only,
            route,
            authenticated.user_credentials(),
        )
        .await
    }

    /// Stage 1a: the SAML service provider's routes. Fills the audit facts it can.
    async fn auth<B: Body>(
        &self,
        snapshot: &Snapshot,
        req: &http::request::Parts,
        body: B,
        client: network::ClientIp,
        facts: &mut Facts,
    ) -> Result<Response<ResponseBody>, Error> {
        use crate::saml::sp::{AuthAudit, SpError};
        let _admitted = self
            .admission
            .admit_counted(client.addr(), None, &self.metrics)?;
        let state = self
            .saml
            .as_deref()
            .ok_or(Error::Saml(SpError::NotConfigured))?;
        let mut audit = AuthAudit::default();
        let result = auth::handle(snapshot.saml.as_deref(), state, req, body, &mut audit).await;
        let span = tracing::Span::current();
        if let Some(subject) = &audit.subject {
            span.record("subject", subject.as_str());
        }
        if let Some(role) = &audit.role {
            span.record("role", role.as_str());
        }
        if let Some(project) = &audit.project {
            span.record("project", project.as_str());
        }
        facts.subject = audit.subject;
        facts.role = audit.role;
        facts.project = audit.project;
        match result {
            Ok(resp) => {
                let rule = audit.rule.unwrap_or("saml");
                span.record("decision", "allow");
                span.record("rule", rule);
                facts.decision = Decision::Allow;
                facts.rule = Some(rule.to_owned());
                Ok(resp.map(|b| {
                    http_body_util::Full::new(b)
                        .map_err(|never| match never {})
                        .boxed_unsync()
                }))
            }
            Err(e) => {
                span.record("decision", "deny");
                span.record("rule", e.label());
                facts.rule = Some(e.label().to_owned());
                Err(Error::Saml(e))
            }
        }
    }

    /// Stage 1: the client address, then the global and per-source lists. Records the decision
    /// in the request span and the metrics.
    fn network_stage(
        &self,
        snapshot: &Snapshot,
        req: &http::request::Parts,
        conn: ConnInfo,
    ) -> Result<network::ClientIp, Error> {
        let span = tracing::Span::current();
        let client = match network::client_ip(conn.peer, &req.headers, &snapshot.network) {
            Ok(client) => client,
            Err(e) => {
                span.record("decision", "malformed");
                self.metrics
                    .network_decisions
                    .get_or_create(&NetworkDecisionLabel {
                        outcome: "malformed",
                        list: "forwarded",
                    })
                    .inc();
                return Err(e.into());
            }
        };
        let decision = snapshot
            .network
            .decide(client.addr(), network::route_source(req.uri.path()));
        span.record("client", tracing::field::display(client));
        span.record("decision", if decision.allowed { "allow" } else { "deny" });
        span.record("rule", tracing::field::display(&decision.rule));
        self.metrics
            .network_decisions
            .get_or_create(&NetworkDecisionLabel {
                outcome: if decision.allowed { "allow" } else { "deny" },
                list: decision.rule.scope.label(),
            })
            .inc();
        if decision.allowed {
            Ok(client)
        } else {
            Err(Error::NetworkDenied {
                rule: decision.rule,
            })
        }
    }

    /// Metadata, preconditions, range, then the body. If the object changes between metadata and
    /// body, start over (bounded): a response never mixes two versions.
    async fn fetch(
        &self,
        snapshot: &Snapshot,
        headers: &http::HeaderMap,
        plan: &Plan,
        head_only: bool,
        route: &'static str,
        user: Option<&aws_credential_types::Credentials>,
    ) -> Result<Response<ResponseBody>, Error> {
        let backend_err = |error| Error::Backend {
            source_name: plan.source().to_owned(),
            error,
        };
        let backend = snapshot
            .sources
            .get(plan.source())
            .ok_or(Error::Plan(plan::PlanError::UnknownSource))?;
        let conditions = Arc::new(range::conditional_headers(headers));
        // One first-byte budget for the whole wait on the store, however many calls it takes
        // (HEAD, GET, their retries, starting over after a change).
        let deadline = tokio::time::Instant::now() + snapshot.limits.upstream_first_byte_timeout;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let decide = Arc::clone(&conditions);
            let want = move |meta: &ObjectMeta| match range::answer(&decide, meta, head_only) {
                Answer::Send(part) if !head_only => Want::Body(part),
                _ => Want::Meta,
            };
            // A SAML session's reads are signed with the user's own credentials; `saml`
            // sources refuse a request without them (never a fallback to broader ones).
            let caller = user.map_or(Caller::Gateway, Caller::User);
            let opened = backend.open_until(plan.key(), want, caller, deadline).await;
            let (meta, object) = match opened {
                Ok(Opened::Meta(meta)) => (meta, None),
                Ok(Opened::Object { object, part }) => (object.meta.clone(), Some((object, part))),
                Err(BackendError::Changed) if attempts <= snapshot.limits.upstream_max_retries => {
                    tracing::debug!(attempts, "object changed while being opened; starting over");
                    continue;
                }
                Err(e) => return Err(backend_err(e)),
            };
            let head = |status, part| {
                respond::object_head(status, &meta, part)
                    .body(respond::empty())
                    .map_err(|e| backend_err(BackendError::Protocol(e.to_string())))
            };
            let (object, part) = match (range::answer(&conditions, &meta, head_only), object) {
                (Answer::NotModified, _) => return head(StatusCode::NOT_MODIFIED, None),
                (Answer::PreconditionFailed, _) => return Err(Error::PreconditionFailed),
                (Answer::Unsatisfiable, _) => {
                    return Err(Error::RangeNotSatisfiable { size: meta.size });
                }
                // HEAD: the headers a GET of the whole object would get, without a body.
                (Answer::Send(_), None) => return head(StatusCode::OK, None),
                (Answer::Send(_), Some(opened)) => opened,
            };
            let status = if part.is_some() {
                StatusCode::PARTIAL_CONTENT
            } else {
                StatusCode::OK
            };
            let len = part.map_or(meta.size, |r| r.len());
            let body = StreamingBody::new(
                object.body,
                len,
                route,
                plan.source().to_owned(),
                Arc::clone(&self.metrics),
            );
            return respond::object_head(status, &meta, part)
                .body(body.boxed_unsync())
                .map_err(|e| backend_err(BackendError::Protocol(e.to_string())));
        }
    }
}
