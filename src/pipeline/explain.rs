//! `bucketgate explain`: one request's stages run dry, with the same stage functions a request
//! goes through, and a typed account of what each decided. `main.rs` only prints it.
//!
//! Runs, in the lifecycle's order: route (the same [`Route`] parse), network (client address and
//! lists), the object stage's key and query checks, identity (the token, or a SAML session when
//! the caller has the session store and a cookie), authorize, admit (the quotas that would apply,
//! through an unlimited admission: no quota is consumed) and plan (the source must exist). Never
//! fetches, and writes no audit record or metric of the gateway. A token's use window is judged
//! against an empty store of its own (the gateway's state is not read or changed): a window
//! token is explained as on its first use, and past `exp` as never used.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method};

use crate::config::{Config, RateLimits};
use crate::identity::revocation::{RevocationError, Revocations};
use crate::identity::use_window::{UseWindow, UseWindows};
use crate::identity::{Identity, IdentityError, IdentitySetupError, Principal, TokenUse};
use crate::telemetry::Metrics;

use super::admit::{self, Admission, AnyAdmission, RateLimited};
use super::authorize::{self, AuthzError, Policy};
use super::error::Error;
use super::identity::{self, Sessions};
use super::network::{self, NetworkPolicy};
use super::plan::{self, Plan, PlanError};
use super::route::Route;

/// The request to explain.
pub struct DryRun<'a> {
    /// The TCP peer (or the PROXY protocol source address).
    pub peer: IpAddr,
    /// The request's headers: forwarded headers, and any credential it carries (cookies).
    pub headers: &'a HeaderMap,
    /// The request's path and query, as sent (still percent-encoded).
    pub path_and_query: &'a str,
    /// A token to present as `Authorization: Bearer`.
    pub token: Option<&'a str>,
    /// SAML sessions to look a session cookie up in (a running gateway's; the CLI has none).
    pub sessions: Option<Sessions<'a>>,
}

/// Why `explain` could not judge the request (the config's identity could not be built).
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("reading the revocation list")]
    Revocations(#[source] RevocationError),
    #[error("building the token verifier")]
    Identity(#[source] IdentitySetupError),
    #[error("the token is not a valid header value")]
    TokenNotAHeader,
}

/// What the stages decided.
#[derive(Debug)]
pub struct Explanation {
    /// Stage 1.
    pub network: network::Explanation,
    /// The stages after the network, when it allowed the request and a credential was given.
    pub access: Option<Access>,
}

impl Explanation {
    /// Whether every stage that ran lets the request through.
    pub fn allowed(&self) -> bool {
        self.network.allowed() && self.access.as_ref().is_none_or(Access::allowed)
    }
}

/// Stages 5a, 2, 3, 4 and 5b: the first that refuses, or the plan a fetch would get.
#[derive(Debug)]
pub enum Access {
    /// The route, key or query checks refused the request.
    Request(Error),
    /// The identity stage refused it (an [`Error::Identity`]).
    Identity(Error),
    /// Authorization refused it.
    Refused { who: Who, refused: AuthzError },
    /// A rate limit refused it (never in a dry run, which consumes no quota).
    RateLimited {
        who: Who,
        rule: String,
        limited: RateLimited,
    },
    /// Allowed and admitted, but the source does not exist (404 only now).
    NoSource {
        who: Who,
        rule: String,
        quotas: Quotas,
        refused: PlanError,
    },
    /// Every stage lets it through: this plan would be fetched.
    Allowed {
        who: Who,
        rule: String,
        quotas: Quotas,
        plan: Plan,
    },
}

impl Access {
    pub fn allowed(&self) -> bool {
        matches!(self, Access::Allowed { .. })
    }
}

/// Who the identity stage found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub subject: String,
    pub role: String,
    pub project: Option<String>,
    /// The token's use window and its `exp` (the deadline of the first use).
    pub window: Option<(UseWindow, Option<u64>)>,
}

impl Who {
    fn of(principal: &Principal) -> Who {
        Who {
            subject: principal.subject().to_owned(),
            role: principal.role().to_owned(),
            project: principal.project().map(str::to_owned),
            window: principal.use_window().map(|w| (w, principal.expires_at())),
        }
    }
}

/// The rate limits stage 4 would count the request against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub per_ip_rps: u32,
    pub per_ip_burst: u32,
    pub per_subject_rps: u32,
    pub per_subject_burst: u32,
}

impl From<&RateLimits> for Quotas {
    fn from(l: &RateLimits) -> Quotas {
        Quotas {
            per_ip_rps: l.per_ip_rps,
            per_ip_burst: l.per_ip_burst,
            per_subject_rps: l.per_subject_rps,
            per_subject_burst: l.per_subject_burst,
        }
    }
}

/// Run `request`'s stages dry against `config`.
pub async fn explain(config: &Config, request: DryRun<'_>) -> Result<Explanation, ExplainError> {
    let (path, query) = match request.path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (request.path_and_query, None),
    };
    let route = Route::parse(&Method::GET, path, query);
    let policy = NetworkPolicy::compile(&config.network);
    let network = network::explain(
        request.peer,
        request.headers,
        route.network_source(),
        &policy,
    );
    let client = match (&network.client, network.allowed()) {
        (Ok(client), true) => *client,
        _ => {
            return Ok(Explanation {
                network,
                access: None,
            });
        }
    };
    if request.token.is_none() && request.sessions.is_none() {
        return Ok(Explanation {
            network,
            access: None,
        });
    }
    let access = access(config, route, client, request).await?;
    Ok(Explanation {
        network,
        access: Some(access),
    })
}

async fn access(
    config: &Config,
    route: Route,
    client: network::ClientIp,
    request: DryRun<'_>,
) -> Result<Access, ExplainError> {
    // Only object, IIIF and video requests are explained; the `/auth/` routes answer for
    // themselves, and an image's base URI is a redirect that reads and grants nothing.
    let object = match route {
        Route::Video(_) if !config.video.enabled => {
            return Ok(Access::Request(Error::Plan(PlanError::NoRoute)));
        }
        Route::Object(object) | Route::Iiif(object) | Route::Video(object) => object,
        Route::Auth(_) | Route::NotFound | Route::IiifBase { .. } => {
            return Ok(Access::Request(Error::Plan(PlanError::NoRoute)));
        }
    };
    let (target, _head_only) = match object.into_target() {
        Ok(target) => target,
        Err(e) => return Ok(Access::Request(e)),
    };
    let identity = match &config.identity {
        Some(ic) => {
            let revocations =
                Revocations::load(&config.admin.state_dir).map_err(ExplainError::Revocations)?;
            let identity =
                Identity::new(ic, Arc::new(revocations)).map_err(ExplainError::Identity)?;
            identity.load_jwks().await;
            Some(identity)
        }
        None => None,
    };
    let mut headers = request.headers.clone();
    if let Some(token) = request.token {
        let bearer = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| ExplainError::TokenNotAHeader)?;
        headers.append(AUTHORIZATION, bearer);
    }
    // A store of its own: a dry run neither reads nor records the gateway's use windows.
    let windows = UseWindows::memory();
    let authenticated = match identity::authenticate_request(
        identity.as_ref(),
        request.sessions,
        &headers,
        target.token(),
        crate::identity::unix_now(),
        TokenUse {
            client: client.addr(),
            windows: &windows,
        },
    )
    .await
    {
        Ok(authenticated) => authenticated,
        Err(e) => return Ok(Access::Identity(Error::Identity(e))),
    };
    let principal = authenticated.principal();
    let who = Who::of(principal);
    let policy = Policy::new(config.roles.clone(), config.projects.clone());
    let grant = match authorize::authorize(principal, client, target, &policy) {
        Ok(grant) => grant,
        Err(refused) => return Ok(Access::Refused { who, refused }),
    };
    let rule = grant.rule().to_owned();
    // The same admission function, with no limiter behind it: nothing is consumed.
    let unlimited = AnyAdmission::Memory(Admission::unlimited());
    let admitted = match admit::admit_grant(&unlimited, client, grant, &Metrics::new()).await {
        Ok(admitted) => admitted,
        Err(limited) => return Ok(Access::RateLimited { who, rule, limited }),
    };
    let quotas = Quotas::from(&config.rate_limits);
    Ok(
        match plan::resolve(admitted, |s| config.sources.contains_key(s)) {
            Ok(plan) => Access::Allowed {
                who,
                rule,
                quotas,
                plan,
            },
            Err(refused) => Access::NoSource {
                who,
                rule,
                quotas,
                refused,
            },
        },
    )
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.network)?;
        match &self.access {
            Some(access) => write!(f, "{access}"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subject {} role {}", self.subject, self.role)?;
        if let Some(p) = &self.project {
            write!(f, " project {p}")?;
        }
        if let Some((window, exp)) = &self.window {
            let exp = exp.map_or_else(|| "?".to_owned(), |e| e.to_string());
            write!(
                f,
                "\n           use window: first use needed before exp ({exp}, unix s), {window}"
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let admit = |f: &mut fmt::Formatter<'_>, q: &Quotas| {
            writeln!(
                f,
                "admit:     per address {}/s burst {}, per subject {}/s burst {} (none consumed)",
                q.per_ip_rps, q.per_ip_burst, q.per_subject_rps, q.per_subject_burst
            )
        };
        match self {
            Access::Request(e) => {
                let status = e.status().as_u16();
                match e {
                    Error::Plan(p) => writeln!(f, "request:   refuse ({status}): {p}"),
                    other => writeln!(f, "request:   refuse ({status}): {other}"),
                }
            }
            Access::Identity(Error::Identity(IdentityError::NotConfigured)) => {
                writeln!(f, "identity:  refuse (401): the config has no [identity]")
            }
            Access::Identity(e) => {
                let status = e.status().as_u16();
                match e {
                    Error::Identity(cause) => writeln!(f, "identity:  refuse ({status}): {cause}"),
                    other => writeln!(f, "identity:  refuse ({status}): {other}"),
                }
            }
            Access::Refused { who, refused } => {
                writeln!(f, "identity:  {who}")?;
                writeln!(f, "authorize: refuse (403): {}", refused.rule())
            }
            Access::RateLimited { who, rule, limited } => {
                writeln!(f, "identity:  {who}")?;
                writeln!(f, "authorize: allow: {rule}")?;
                writeln!(f, "admit:     refuse (429): {limited}")
            }
            Access::NoSource {
                who,
                rule,
                quotas,
                refused,
            } => {
                writeln!(f, "identity:  {who}")?;
                writeln!(f, "authorize: allow: {rule}")?;
                admit(f, quotas)?;
                writeln!(f, "plan:      refuse (404): {refused}")
            }
            Access::Allowed {
                who,
                rule,
                quotas,
                plan,
            } => {
                writeln!(f, "identity:  {who}")?;
                writeln!(f, "authorize: allow: {rule}")?;
                admit(f, quotas)?;
                match plan.representation().params() {
                    None => writeln!(
                        f,
                        "plan:      source {} key {} (would be fetched)",
                        plan.source(),
                        plan.key()
                    ),
                    Some(params) => writeln!(
                        f,
                        "plan:      source {} key {} representation {} {params} (would be derived)",
                        plan.source(),
                        plan.key(),
                        plan.representation().class().as_str(),
                    ),
                }
            }
        }
    }
}
