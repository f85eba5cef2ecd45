//! The request lifecycle. [`Pipeline::handle`] parses the [`route::Route`] once, then
//! `Pipeline::run` calls the stages in this order, one line each; each stage returns a value only
//! it can build (the next stage consumes it), and a refusal ends the request before any costlier
//! work:
//!
//! | # | stage | here |
//! |---|---|---|
//! | 0 | request: one valid `Host` / `:authority` without userinfo (400), a body framing we implement (501) | `request.rs` |
//! | 1 | network: peer (+ forwarded headers from trusted proxies) -> [`network::ClientIp`] -> allow/deny, the source's lists on the raw source segment | `network.rs` |
//! | 1a | `/auth/` routes (SAML login, ACS, session, logout), after the per-address rate limit | `auth` (core: `crate::saml::sp`) |
//! | 1b | CORS preflight, answered without a token | `cors.rs` |
//! | 5a | parse: query, key syntax, method -> [`plan::Target`] (400s, 405; nothing about what exists) | `route.rs`, `plan.rs` |
//! | 2 | identity: the one token or SAML session -> [`identity::Authenticated`] (401, `token_expired` told apart; two tokens: 400); a token's use window is judged, and its use recorded, in `state`'s store | `identity.rs` |
//! | 3 | authorize: principal x client x target -> [`authorize::Grant`] holding both (403) | `authorize.rs` |
//! | 4 | admit: rate limits per client address and subject -> [`admit::Admitted`]`<Grant>` (429) | `admit.rs` |
//! | 5b | plan: the admitted grant -> [`plan::Plan`]; an unknown source is 404 only now | `plan.rs` |
//! | 7 | fetch: metadata, preconditions, range, open the body | `fetch` below, `range.rs` |
//! | 7-8 | derive (IIIF): metadata, ETag and 304, the derived output from the cache or probed, resolved and rendered once | `derive.rs`, `crate::image` |
//! | 7-8 | video: metadata, ETag and 304, the probe (once per version), the part from the cache or made once (posters, frames, segments, sprite), made per request (info.json, playlist, VTT) or served with Range from the rendition store (web.mp4) | `video.rs`, `crate::video` |
//! | 9 | respond: head + streaming body, CORS headers; an error's status and headers | `respond` below, `respond.rs`, `cors.rs`, `error.rs` |
//! | 10 | audit: one record per request, written when the body ends or is dropped | `crate::audit` |
//!
//! What the stages learn about the request (client, decision, rule, principal, target; and,
//! before any stage, its `Origin`, what `[cors]` makes of it, and its `Range`) goes into
//! its [`ctx::RequestCtx`], which writes the span and the audit record's facts together.
//! `bucketgate explain` runs the same stages dry (`explain.rs`).
//!
//! The pipeline knows nothing about sockets or TLS (that is `server/`). It builds backend and STS
//! clients only in `snapshot.rs`, from a config, at start and on reload; `app.rs` wires the
//! long-lived parts.

pub mod admit;
pub mod auth;
pub mod authorize;
pub mod cors;
pub mod ctx;
pub mod derive;
pub mod error;
pub mod explain;
pub mod identity;
pub mod network;
pub mod plan;
pub mod range;
pub mod request;
pub mod respond;
pub mod route;
pub mod snapshot;
pub mod video;

/// The error-chain printer lives with the logging setup, so lower modules need not import
/// the pipeline for it.
pub use crate::telemetry::ErrorChain;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tracing::Instrument;

use crate::audit::{AuditLog, AuditedBody, CorsOutcome};
use crate::backend::{Backend, BackendError, Caller, ObjectMeta, Opened, RangeSpec, Want};
use crate::pipeline::error::Error;
use crate::telemetry::{Metrics, NetworkDecisionLabel, RouteLabel, RouteStatus};
use crate::web::{self, ConnInfo, ResponseBody, body};
use ctx::RequestCtx;
use plan::Plan;
use range::Answer;
use respond::StreamingBody;
use route::Route;
pub use snapshot::Snapshot;

/// The request pipeline: the current snapshot (swapped atomically on reload) and the state that
/// outlives snapshots (metrics).
pub struct Pipeline {
    current: ArcSwap<Snapshot>,
    metrics: Arc<Metrics>,
    /// Long-lived state (rate limits, revocations, delegated credentials, SAML sessions):
    /// outlives snapshots, so a reload resets no budget and signs nobody out.
    shared: Arc<crate::state::Shared>,
    audit: AuditLog,
}

impl Pipeline {
    /// A pipeline without rate limits or SAML (benches drive it directly); the gateway uses
    /// [`Pipeline::with_shared`].
    pub fn new(snapshot: Snapshot, metrics: Arc<Metrics>) -> Pipeline {
        Pipeline::with_shared(
            snapshot,
            metrics,
            Arc::new(crate::state::Shared::detached()),
        )
    }

    /// A pipeline over the process's long-lived state (built once, in `app.rs`).
    pub fn with_shared(
        snapshot: Snapshot,
        metrics: Arc<Metrics>,
        shared: Arc<crate::state::Shared>,
    ) -> Pipeline {
        Pipeline {
            current: ArcSwap::from_pointee(snapshot),
            audit: AuditLog::off(Arc::clone(&metrics)),
            metrics,
            shared,
        }
    }

    /// The long-lived state this pipeline serves with.
    pub fn shared(&self) -> &Arc<crate::state::Shared> {
        &self.shared
    }

    pub fn saml(&self) -> Option<&Arc<crate::saml::sp::SamlState>> {
        self.shared.saml()
    }

    /// The rate limits (stage 4); reloads update their quotas.
    pub fn admission(&self) -> &admit::AnyAdmission {
        self.shared.admission()
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
        let route = Route::parse(req.method(), req.uri().path(), req.uri().query());
        let mut ctx = RequestCtx::new(req.method(), route.label(), conn.peer);
        let span = ctx.span().clone();
        let audit = self.audit.begin(ctx.request_id().to_owned(), started);
        async move {
            let snapshot = self.snapshot();
            let (req, body) = req.into_parts();
            // What the request says of itself, for the audit record, before any stage can refuse.
            let cors = snapshot.cors.outcome(&req.headers);
            ctx.origin(req.headers.get(http::header::ORIGIN), cors);
            ctx.range(req.headers.get(http::header::RANGE));
            let mut close = false;
            let mut resp = match self.run(&snapshot, &req, body, conn, route, &mut ctx).await {
                Ok(resp) => resp,
                Err(err) => {
                    error::log(&err);
                    // Once per request; a missing object is an answer, not an upstream error.
                    if let Error::Backend { source_name, error } = &err
                        && let Some(kind) = respond::upstream_error_kind(error)
                    {
                        self.metrics.upstream_error(source_name, kind);
                    }
                    close = err.closes_connection();
                    respond::error_response(&err, ctx.request_id())
                }
            };
            // A HEAD response never has a body. hyper drops it for http/1.1 but sends it as DATA
            // frames on h2, which clients reject as a protocol error (regression: h2 HEAD of a
            // missing key was reset instead of answered 404).
            if req.method == Method::HEAD {
                *resp.body_mut() = web::empty();
            }
            respond::security_headers(resp.headers_mut(), ctx.request_id());
            respond::strict_transport_security(resp.headers_mut(), &snapshot.hsts);
            if close {
                respond::close_after(resp.headers_mut(), req.version);
            }
            cors::apply(&snapshot.cors, &req.headers, resp.headers_mut());
            let status = resp.status().as_u16();
            self.count_response(ctx.route(), status, started, cors);
            let facts = ctx.finish(status);
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

    /// The metrics of one answered request.
    fn count_response(
        &self,
        route: &'static str,
        status: u16,
        started: Instant,
        cors: CorsOutcome,
    ) {
        self.metrics
            .requests
            .get_or_create(&RouteStatus { route, status })
            .inc();
        self.metrics
            .request_duration
            .get_or_create(&RouteLabel { route })
            .observe(started.elapsed().as_secs_f64());
        if cors == CorsOutcome::NotListed {
            // The browser hides this response from the page: a missing [cors] entry.
            self.metrics
                .cors_unlisted_origin_responses
                .get_or_create(&RouteLabel { route })
                .inc();
        }
    }

    /// The stages, in the order of the table at the top of this file.
    async fn run<B: Body>(
        &self,
        snapshot: &Snapshot,
        req: &http::request::Parts,
        body: B,
        conn: ConnInfo,
        route: Route,
        ctx: &mut RequestCtx,
    ) -> Result<Response<ResponseBody>, Error> {
        request::check(req).inspect_err(|_| ctx.malformed(Some("request")))?;
        let client = self.network_stage(snapshot, req, &route, conn, ctx)?;
        let object = match route {
            Route::Auth(route) => return self.auth(snapshot, route, req, body, client, ctx).await,
            Route::Iiif(_) | Route::IiifBase { .. } if !snapshot.images.enabled => {
                return Err(Error::Plan(plan::PlanError::NoRoute));
            }
            Route::Video(_) if !snapshot.video.enabled => {
                return Err(Error::Plan(plan::PlanError::NoRoute));
            }
            Route::Object(_) | Route::Iiif(_) | Route::IiifBase { .. } | Route::Video(_)
                if cors::is_preflight(&req.method, &req.headers) =>
            {
                let rule = snapshot.cors.rule(&req.headers);
                ctx.preflight(rule.as_ref());
                return cors::preflight(&snapshot.cors, &req.headers, rule);
            }
            // The base URI of an image: a redirect to its info.json, nothing read or granted.
            Route::IiifBase { info, .. } => {
                let info = info.inspect_err(|_| ctx.malformed(Some("iiif")))?;
                ctx.allow("iiif base uri");
                return derive::redirect(snapshot, req, &info);
            }
            Route::Object(object) | Route::Iiif(object) | Route::Video(object) => object,
            Route::NotFound => return Err(Error::Plan(plan::PlanError::NoRoute)),
        };
        let (target, head_only) = object.into_target()?;
        let open_body = body::framing(body).map_err(|_| Error::BodyNotAllowed)?;
        ctx.target(&target);
        let authenticated = self
            .identify(snapshot, &req.headers, &target, client, ctx)
            .await?;
        let grant =
            authorize::authorize(authenticated.principal(), client, target, &snapshot.policy)
                .inspect_err(|e| ctx.deny(e.rule()))
                .map_err(Error::Forbidden)?;
        ctx.allow(grant.rule());
        let admitted = admit::admit_grant(self.admission(), client, grant, &self.metrics).await?;
        wait_for_empty_body(open_body).await?;
        let plan = plan::resolve(admitted, |s| snapshot.sources.contains_key(s))?;
        let user = authenticated.user_credentials();
        if let plan::Representation::Video(request) = plan.representation() {
            let serve = video::Serve {
                snapshot,
                shared: &self.shared,
                request: req,
                plan: &plan,
                video: request,
                head_only,
                caller: user.map_or(Caller::Gateway, Caller::User),
            };
            // Boxed, as derive's: the video future is large.
            return Box::pin(video::serve(serve, ctx)).await;
        }
        if plan.representation() != &plan::Representation::Original {
            let derive = derive::Derive {
                snapshot,
                shared: &self.shared,
                request: req,
                plan: &plan,
                caller: user.map_or(Caller::Gateway, Caller::User),
            };
            // Boxed: the derive future is large and would grow every request's future with it.
            return Box::pin(derive::serve(derive, ctx)).await;
        }
        self.fetch(snapshot, &req.headers, &plan, head_only, user, ctx)
            .await
    }

    /// Stage 2: a token, or a SAML session (its principal and the user's credentials). A token
    /// with a use window is judged by the window store, from `client`.
    async fn identify(
        &self,
        snapshot: &Snapshot,
        headers: &http::HeaderMap,
        target: &plan::Target,
        client: network::ClientIp,
        ctx: &mut RequestCtx,
    ) -> Result<identity::Authenticated, Error> {
        let sessions = match (self.saml(), &snapshot.saml) {
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
            headers,
            target.token(),
            self.shared.token_now(),
            crate::identity::TokenUse {
                client: client.addr(),
                windows: self.shared.use_windows(),
            },
        )
        .await
        .inspect_err(|e| ctx.deny(e.rule()))
        .map_err(Error::Identity)?;
        ctx.authenticated(&authenticated);
        Ok(authenticated)
    }

    /// Stage 1a: the SAML service provider's routes, after their own rate limit (per address;
    /// there is no subject yet). Fills the audit facts it can.
    async fn auth<B: Body>(
        &self,
        snapshot: &Snapshot,
        route: auth::AuthRoute,
        req: &http::request::Parts,
        body: B,
        client: network::ClientIp,
        ctx: &mut RequestCtx,
    ) -> Result<Response<ResponseBody>, Error> {
        use crate::saml::sp::{AuthAudit, SpError};
        let _admitted = admit::admit(self.admission(), client.addr(), None, &self.metrics).await?;
        let state = self
            .saml()
            .map(Arc::as_ref)
            .ok_or(Error::Saml(SpError::NotConfigured))?;
        let mut audit = AuthAudit::default();
        let result = auth::handle(
            snapshot.saml.as_deref(),
            state,
            route,
            req,
            body,
            &mut audit,
        )
        .await;
        ctx.who(
            audit.subject.as_deref(),
            audit.role.as_deref(),
            audit.project.as_deref(),
        );
        match result {
            Ok(resp) => {
                ctx.allow(audit.rule.unwrap_or("saml"));
                Ok(resp.map(web::full))
            }
            Err(e) => {
                ctx.deny(e.label());
                Err(Error::Saml(e))
            }
        }
    }

    /// Stage 1: the client address, then the global and per-source lists (the source segment as
    /// written: no key work before this stage). Records the decision in the request context and
    /// the metrics.
    fn network_stage(
        &self,
        snapshot: &Snapshot,
        req: &http::request::Parts,
        route: &Route,
        conn: ConnInfo,
        ctx: &mut RequestCtx,
    ) -> Result<network::ClientIp, Error> {
        let client = match network::client_ip(conn.peer, &req.headers, &snapshot.network) {
            Ok(client) => client,
            Err(e) => {
                ctx.malformed(None);
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
        ctx.client(client);
        let decision = snapshot
            .network
            .decide(client.addr(), route.network_source());
        self.metrics
            .network_decisions
            .get_or_create(&NetworkDecisionLabel {
                outcome: if decision.allowed { "allow" } else { "deny" },
                list: decision.rule.scope.label(),
            })
            .inc();
        if decision.allowed {
            ctx.passed_network(&decision.rule);
            Ok(client)
        } else {
            ctx.deny(&decision.rule);
            Err(Error::NetworkDenied {
                rule: decision.rule,
            })
        }
    }

    /// Metadata, preconditions, range, then the body. If the object changes between metadata and
    /// body, start over (bounded): a response never mixes two versions. Through the cache when
    /// there is one and the source does not opt out (stage 6), else straight from the store.
    async fn fetch(
        &self,
        snapshot: &Snapshot,
        headers: &http::HeaderMap,
        plan: &Plan,
        head_only: bool,
        user: Option<crate::credentials::UserCredentials<'_>>,
        ctx: &mut RequestCtx,
    ) -> Result<Response<ResponseBody>, Error> {
        let backend = snapshot
            .sources
            .get(plan.source())
            .ok_or(Error::Plan(plan::PlanError::UnknownSource))?;
        let conditions = Arc::new(range::conditional_headers(headers));
        // One first-byte budget for the whole wait on the store, however many calls it takes
        // (the GET or HEAD, their retries, a second call where the store's answer is not the
        // one decided, starting over after a change).
        let deadline = tokio::time::Instant::now() + snapshot.limits.upstream_first_byte_timeout;
        // A SAML session's reads are signed with the user's own credentials; `saml` sources
        // refuse a request without them (never a fallback to broader ones).
        let caller = user.map_or(Caller::Gateway, Caller::User);
        let route = ctx.route();
        match self.shared.cache() {
            Some(cache) if snapshot.caches(plan.source()) => {
                let fetched = Fetch {
                    snapshot,
                    conditions: &conditions,
                    plan,
                    head_only,
                    route,
                    backend,
                    caller,
                    deadline,
                };
                self.fetch_cached(cache, fetched, ctx).await
            }
            _ => {
                ctx.cache(crate::cache::Outcome::Bypass);
                self.fetch_origin(
                    snapshot,
                    &conditions,
                    plan,
                    head_only,
                    route,
                    backend,
                    caller,
                    deadline,
                )
                .await
            }
        }
    }

    /// Stage 6 then 7 through the cache: metadata from its table (or one coalesced HEAD),
    /// 304/412/416/HEAD answered from it, then the part read chunk by chunk. Authorization ran
    /// before (a [`Plan`] exists only after admission); the cache key holds the partition.
    async fn fetch_cached(
        &self,
        cache: &crate::cache::Cache,
        f: Fetch<'_>,
        ctx: &mut RequestCtx,
    ) -> Result<Response<ResponseBody>, Error> {
        let backend_err = |error| Error::Backend {
            source_name: f.plan.source().to_owned(),
            error,
        };
        let partition = plan::Partition::of(&f.caller);
        let object = f.plan.object_id(partition.clone());
        let mut attempts = 0;
        let chunk_bytes = cache.config().chunk_bytes;
        loop {
            attempts += 1;
            // On a cold object, the chunk this request reads first comes with the metadata.
            let decide = Arc::clone(f.conditions);
            let head_only = f.head_only;
            let first_chunk = move |meta: &ObjectMeta| match range::answer(&decide, meta, head_only)
            {
                Answer::Send(part) if !head_only => Some(part.map_or(0, |r| r.start / chunk_bytes)),
                _ => None,
            };
            // The chunk a store that reads ranges itself (S3) is asked for with the metadata, so a
            // cold read is one request; `None` (a suffix range, HEAD): the metadata first.
            let hint = match range::ask(f.conditions, f.head_only) {
                a if a.head_only => None,
                a => match a.range {
                    None => Some(0),
                    Some(RangeSpec::FromTo(start, _) | RangeSpec::From(start)) => {
                        Some(start / chunk_bytes)
                    }
                    Some(RangeSpec::Suffix(_)) => None,
                },
            };
            let (meta, meta_outcome) = cache
                .metadata(&object, f.backend, f.caller, f.deadline, hint, first_chunk)
                .await
                .map_err(backend_err)?;
            let part = match range::answer(f.conditions, &meta, f.head_only) {
                Answer::Send(part) if !f.head_only => part,
                // 304, 412, 416 and HEAD from the metadata alone.
                _ => {
                    ctx.cache(meta_outcome);
                    return self.respond(
                        f.conditions,
                        &meta,
                        None,
                        f.head_only,
                        f.route,
                        f.plan.source(),
                    );
                }
            };
            let key = f
                .plan
                .cache_key(&crate::cache::version_of(&meta), partition.clone());
            let read = cache
                .read(
                    key,
                    Arc::clone(&meta),
                    part,
                    Arc::clone(f.backend),
                    crate::backend::OwnedCaller::of(&f.caller),
                )
                .await;
            match read {
                Ok(read) => {
                    // This request's own origin request (a cold open that brought the first
                    // chunk, or a revalidation) makes it a miss whatever the chunks were.
                    ctx.cache(if meta_outcome == crate::cache::Outcome::Miss {
                        meta_outcome
                    } else {
                        read.outcome
                    });
                    let object = crate::backend::ObjectBody {
                        meta: (*meta).clone(),
                        body: read.body,
                    };
                    return self.respond(
                        f.conditions,
                        &meta,
                        Some((object, part)),
                        f.head_only,
                        f.route,
                        f.plan.source(),
                    );
                }
                // The cache forgot the metadata it had: the next attempt asks the store.
                Err(BackendError::Changed)
                    if attempts <= f.snapshot.limits.upstream_max_retries =>
                {
                    tracing::debug!(attempts, "object changed under the cache; starting over");
                }
                Err(e) => return Err(backend_err(e)),
            }
        }
    }

    /// Stage 7 without the cache: one `open` of the store per attempt.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_origin(
        &self,
        snapshot: &Snapshot,
        conditions: &Arc<http::HeaderMap>,
        plan: &Plan,
        head_only: bool,
        route: &'static str,
        backend: &crate::backend::AnyBackend,
        caller: Caller<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<ResponseBody>, Error> {
        let backend_err = |error| Error::Backend {
            source_name: plan.source().to_owned(),
            error,
        };
        // What a store that decides ranges and conditions itself (S3) puts in its one request;
        // `want` below still decides.
        let ask = range::ask(conditions, head_only);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let decide = Arc::clone(conditions);
            let want = move |meta: &ObjectMeta| match range::answer(&decide, meta, head_only) {
                Answer::Send(part) if !head_only => Want::Body(part),
                Answer::NotModified => Want::NotModified,
                _ => Want::Meta,
            };
            let opened = backend.open(plan.key(), &ask, want, caller, deadline).await;
            let (meta, object) = match opened {
                Ok(Opened::Meta(meta)) => (meta, None),
                Ok(Opened::Object { object, part }) => (object.meta.clone(), Some((object, part))),
                Err(BackendError::Changed) if attempts <= snapshot.limits.upstream_max_retries => {
                    tracing::debug!(attempts, "object changed while being opened; starting over");
                    continue;
                }
                Err(e) => return Err(backend_err(e)),
            };
            return self.respond(conditions, &meta, object, head_only, route, plan.source());
        }
    }

    /// Stage 9 for an opened object: the preconditions and range decide between 304, 412, 416,
    /// a head without a body (HEAD) and the streamed body (200 or 206).
    fn respond(
        &self,
        conditions: &http::HeaderMap,
        meta: &ObjectMeta,
        object: Option<(
            crate::backend::ObjectBody,
            Option<crate::backend::ByteRange>,
        )>,
        head_only: bool,
        route: &'static str,
        source: &str,
    ) -> Result<Response<ResponseBody>, Error> {
        let head = |status, part| {
            respond::object_head(status, meta, part)
                .body(web::empty())
                .map_err(Error::Internal)
        };
        let (object, part) = match (range::answer(conditions, meta, head_only), object) {
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
            source.to_owned(),
            Arc::clone(&self.metrics),
        );
        respond::object_head(status, meta, part)
            .body(web::boxed(body))
            .map_err(Error::Internal)
    }
}

/// What the fetch stage works with, for the cached path.
struct Fetch<'a> {
    snapshot: &'a Snapshot,
    conditions: &'a Arc<http::HeaderMap>,
    plan: &'a Plan,
    head_only: bool,
    route: &'static str,
    backend: &'a Arc<crate::backend::AnyBackend>,
    caller: Caller<'a>,
    deadline: tokio::time::Instant,
}

/// A body the framing left open (an h2 stream, a chunked body) must end, empty, in time: read
/// only after the rate limits, so that only an admitted request waits for it.
async fn wait_for_empty_body<B: Body>(open_body: Option<B>) -> Result<(), Error> {
    let Some(open_body) = open_body else {
        return Ok(());
    };
    let within = Duration::from_secs(crate::config::defaults::EMPTY_BODY_WAIT_SECS);
    body::read_to_end_empty(open_body, within)
        .await
        .map_err(|e| match e {
            body::NotEmpty::Timeout => Error::BodyTimeout,
            body::NotEmpty::Data | body::NotEmpty::Broken => Error::BodyNotAllowed,
        })
}
