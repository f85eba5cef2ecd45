//! The service provider's routes on the data listener (after the network stage, like every
//! request):
//!
//! | route | what |
//! |---|---|
//! | `GET /auth/saml/login?return_to=/path` | 302 to the IdP (HTTP-Redirect AuthnRequest); a signed login cookie remembers the request id and `return_to` |
//! | `POST /auth/saml/acs` | the IdP's response (HTTP-POST binding): validate, replay check, role choice, STS AssumeRoleWithSAML, new session cookie, 303 to `return_to` |
//! | `GET /auth/session` | JSON: subject, role, project, expires (unix s); 401 "sign in again" without a live session |
//! | `POST /auth/logout` | ends the session server-side and clears the cookie (204) |
//!
//! Order in the ACS, cheapest refusal first; nothing reaches STS unless every check passed:
//! form -> login cookie -> signature and conditions (`response.rs`, on a blocking thread) ->
//! replay cache -> role rules -> session length -> STS -> session.
//!
//! This module must not log or answer anything from a SAML response, an STS answer or a
//! credential: errors carry fixed texts only, and `error.rs` picks every error status. It knows
//! nothing of the pipeline: it answers `http::Response<Bytes>` and reports what the audit record
//! needs in [`AuthAudit`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::Body;
use ring::hmac;
use ring::rand::SystemRandom;

use super::replay::ReplayCache;
use super::request;
use super::response::{self, Expect, IdpTrust, SamlError};
use super::session::{Session, SessionError, SessionStore};
use crate::config::defaults as d;
use crate::config::{ProjectConfig, RoleChoice, SamlConfig, SamlRoleRule};
use crate::credentials::Clock;
use crate::credentials::sts::{StsClient, StsError};
use crate::identity::{Principal, Scope};
use crate::web::body::{NotEmpty, ReadError};
use crate::web::parse::{self, DecodeError, cookies};

/// The session cookie: `__Host-` so it is Secure, host-only and `Path=/`.
pub const SESSION_COOKIE: &str = "__Host-bucketgate-session";
/// The short-lived login cookie (request id + return_to, HMAC-signed).
pub const LOGIN_COOKIE: &str = "__Host-bucketgate-login";
pub const LOGIN_PATH: &str = "/auth/saml/login";
pub const ACS_PATH: &str = "/auth/saml/acs";
pub const SESSION_PATH: &str = "/auth/session";
pub const LOGOUT_PATH: &str = "/auth/logout";
/// Every route of this module starts with it.
pub const AUTH_PREFIX: &str = "/auth/";

/// The client text of every 401 that a new sign-in fixes.
pub const SIGN_IN_AGAIN: &str = "session expired or missing; sign in again at /auth/saml/login";

/// Domain separation for the login cookie's MAC.
const LOGIN_MAC_CONTEXT: &[u8] = b"bucketgate-saml-login-v1\n";

/// Why an `/auth/` request was refused. Display texts are fixed: never XML, names, attribute
/// values, STS messages or credentials.
#[derive(Debug, thiserror::Error)]
pub enum SpError {
    #[error("SAML is not configured (no [saml] table)")]
    NotConfigured,
    #[error("no such /auth route")]
    NoRoute,
    #[error("method not allowed on this /auth route")]
    MethodNotAllowed { allow: &'static str },
    #[error("unknown query parameter on an /auth route")]
    UnknownParameter,
    #[error("repeated query parameter or form field")]
    Repeated,
    #[error("malformed percent-encoding or invalid UTF-8")]
    BadEncoding,
    #[error("request body on an /auth route that takes none")]
    BodyNotAllowed,
    #[error("ACS body is not application/x-www-form-urlencoded")]
    NotAForm,
    #[error("ACS body has no SAMLResponse field")]
    NoResponse,
    #[error("ACS body is larger than {} bytes", d::SAML_ACS_MAX_BODY_BYTES)]
    BodyTooLarge,
    #[error("ACS body could not be read")]
    BodyRead,
    /// The ACS form within `SAML_ACS_BODY_TIMEOUT_SECS`, or an open GET body within
    /// `EMPTY_BODY_WAIT_SECS`.
    #[error("request body was not sent in time")]
    BodyTimeout,
    #[error("SAML response refused")]
    Response(#[source] SamlError),
    #[error("SAML assertion or login request used a second time")]
    Replayed,
    #[error("the IdP session already ended (SessionNotOnOrAfter)")]
    SessionOver,
    #[error("the response offers no role pair the config maps")]
    NoUsableRole,
    #[error("the response offers several usable role pairs and role_choice is \"only\"")]
    SeveralRoles,
    #[error("STS refused the role")]
    StsRefused,
    /// STS refused the gateway's own request, not the user's assertion: the `[sts]` settings
    /// (endpoint, region) or the request the gateway built are wrong. `code` is one of the STS
    /// codes sorted as [`StsError::ConfigFault`]; `role_arn` is the configured role asked for.
    #[error("STS refused the gateway's own request for {role_arn} ({code})")]
    StsConfigFault {
        code: &'static str,
        role_arn: String,
    },
    #[error("STS is unreachable or failing")]
    StsUnavailable,
    #[error("STS did not answer in time")]
    StsTimeout,
    #[error("STS answered something unusable")]
    StsProtocol,
    #[error("session")]
    Session(#[source] SessionError),
    #[error("the SAML request could not be built")]
    Request(#[source] SamlError),
    #[error("SAML response validation did not finish")]
    ValidationAborted,
}

impl SpError {
    /// A short fixed label for the audit record's `rule`.
    pub fn label(&self) -> &'static str {
        match self {
            SpError::NotConfigured | SpError::NoRoute => "saml route",
            SpError::MethodNotAllowed { .. }
            | SpError::UnknownParameter
            | SpError::Repeated
            | SpError::BadEncoding
            | SpError::BodyNotAllowed
            | SpError::NotAForm
            | SpError::NoResponse
            | SpError::BodyTooLarge
            | SpError::BodyRead
            | SpError::BodyTimeout => "saml request",
            SpError::Response(_) | SpError::SessionOver | SpError::ValidationAborted => {
                "saml response"
            }
            SpError::Replayed => "saml replay",
            SpError::NoUsableRole | SpError::SeveralRoles => "saml role",
            SpError::StsRefused
            | SpError::StsConfigFault { .. }
            | SpError::StsUnavailable
            | SpError::StsTimeout
            | SpError::StsProtocol => "saml sts",
            SpError::Session(_) | SpError::Request(_) => "saml session",
        }
    }

    /// `role_arn`: the role the gateway asked STS for.
    fn from_sts(e: &StsError, role_arn: &str) -> SpError {
        match e {
            // The assertion, the role's trust in the provider, an IdP claim: the user's side.
            StsError::Refused { .. } => SpError::StsRefused,
            StsError::ConfigFault { code } => SpError::StsConfigFault {
                code,
                role_arn: role_arn.to_owned(),
            },
            StsError::Unavailable(_) => SpError::StsUnavailable,
            StsError::Timeout => SpError::StsTimeout,
            StsError::Protocol(_) => SpError::StsProtocol,
        }
    }
}

/// What the audit record of an `/auth/` request gets.
#[derive(Debug, Default, Clone)]
pub struct AuthAudit {
    pub subject: Option<String>,
    pub role: Option<String>,
    pub project: Option<String>,
    /// Set on success: what was done (`saml login`, `saml session`, ...).
    pub rule: Option<&'static str>,
}

/// The `[saml]` part of one config snapshot: what to trust and whom to ask.
pub struct ServiceProvider {
    sp_entity_id: String,
    acs_url: String,
    sso_url: String,
    max_session: Duration,
    trust: Arc<IdpTrust>,
    role_choice: RoleChoice,
    rules: Vec<SamlRoleRule>,
    /// Each mapped project's sources, as scopes of the session principal.
    project_scopes: HashMap<String, Vec<Scope>>,
    sts: StsClient,
}

impl ServiceProvider {
    pub fn new(
        config: &SamlConfig,
        projects: &std::collections::BTreeMap<String, ProjectConfig>,
        sts: StsClient,
    ) -> ServiceProvider {
        let project_scopes = config
            .idp
            .roles
            .iter()
            .filter_map(|r| {
                projects
                    .get(&r.project)
                    .map(|p| (r.project.clone(), p.sources.clone()))
            })
            .collect();
        ServiceProvider {
            sp_entity_id: config.sp_entity_id.clone(),
            acs_url: config.acs_url.clone(),
            sso_url: config.idp.sso_url.clone(),
            max_session: config.max_session,
            trust: Arc::new(IdpTrust {
                entity_id: config.idp.entity_id.clone(),
                certificates: config.idp.certificates.clone(),
                audience: config.sp_entity_id.clone(),
                recipient: config.acs_url.clone(),
                clock_skew: config.idp.clock_skew,
                max_response_age: config.max_response_age,
                allow_idp_initiated: config.idp.allow_idp_initiated,
            }),
            role_choice: config.idp.role_choice,
            rules: config.idp.roles.clone(),
            project_scopes,
            sts,
        }
    }
}

/// Why the SAML state could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed while making the login cookie key")]
pub struct SamlSetupError;

/// SAML state that outlives config snapshots: sessions, the replay cache, the login cookie key
/// (random per process) and the clock of every SAML time decision.
pub struct SamlState {
    sessions: SessionStore,
    replay: ReplayCache,
    login_key: hmac::Key,
    clock: Arc<dyn Clock>,
}

impl SamlState {
    pub fn new(clock: Arc<dyn Clock>) -> Result<SamlState, SamlSetupError> {
        let login_key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| SamlSetupError)?;
        Ok(SamlState {
            sessions: SessionStore::new(d::SAML_MAX_SESSIONS),
            replay: ReplayCache::new(d::SAML_REPLAY_CAPACITY),
            login_key,
            clock,
        })
    }

    pub fn sessions(&self) -> &SessionStore {
        &self.sessions
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// `request_id` and `return_to` (already made safe), valid until `now` + the login timeout.
    fn login_cookie(&self, request_id: &str, return_to: &str, now: SystemTime) -> String {
        let expires = unix(now).saturating_add(d::SAML_LOGIN_COOKIE_SECS);
        let payload = format!("{request_id}\n{expires}\n{return_to}");
        let tag = hmac::sign(&self.login_key, &mac_input(&payload));
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload.as_bytes()),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The pending login of a login cookie, if its MAC verifies and it has not expired.
    fn open_login_cookie(&self, value: &str, now: SystemTime) -> Option<PendingLogin> {
        let (payload, tag) = value.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let payload = String::from_utf8(payload).ok()?;
        hmac::verify(&self.login_key, &mac_input(&payload), &tag).ok()?;
        let mut parts = payload.splitn(3, '\n');
        let request_id = parts.next()?.to_owned();
        let expires: u64 = parts.next()?.parse().ok()?;
        let return_to = parts.next()?.to_owned();
        (unix(now) < expires).then_some(PendingLogin {
            request_id,
            return_to,
            expires: UNIX_EPOCH + Duration::from_secs(expires),
        })
    }
}

fn mac_input(payload: &str) -> Vec<u8> {
    let mut input = Vec::with_capacity(LOGIN_MAC_CONTEXT.len() + payload.len());
    input.extend_from_slice(LOGIN_MAC_CONTEXT);
    input.extend_from_slice(payload.as_bytes());
    input
}

/// A login this gateway started, read back from its cookie.
struct PendingLogin {
    request_id: String,
    return_to: String,
    expires: SystemTime,
}

/// Answer one `/auth/` request. `sp` is `None` without `[saml]` (every route is then 404).
pub async fn handle<B: Body>(
    sp: Option<&ServiceProvider>,
    state: &SamlState,
    req: &http::request::Parts,
    body: B,
    audit: &mut AuthAudit,
) -> Result<Response<Bytes>, SpError> {
    let sp = sp.ok_or(SpError::NotConfigured)?;
    let now = state.now();
    let (method, query, headers) = (&req.method, req.uri.query(), &req.headers);
    match req.uri.path() {
        LOGIN_PATH => {
            allow(method, &[Method::GET], "GET")?;
            no_body(body).await?;
            let return_to = login_query(query)?;
            audit.rule = Some("saml login redirect");
            login(sp, state, return_to.as_deref(), now)
        }
        ACS_PATH => {
            allow(method, &[Method::POST], "POST")?;
            no_query(query)?;
            acs(sp, state, headers, body, now, audit).await
        }
        SESSION_PATH => {
            allow(method, &[Method::GET, Method::HEAD], "GET, HEAD")?;
            no_query(query)?;
            no_body(body).await?;
            session_info(state, headers, now, audit)
        }
        LOGOUT_PATH => {
            allow(method, &[Method::POST], "POST")?;
            no_query(query)?;
            Ok(logout(state, headers, now, audit))
        }
        _ => Err(SpError::NoRoute),
    }
}

fn allow(method: &Method, allowed: &[Method], text: &'static str) -> Result<(), SpError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(SpError::MethodNotAllowed { allow: text })
    }
}

async fn no_body<B: Body>(body: B) -> Result<(), SpError> {
    let within = Duration::from_secs(d::EMPTY_BODY_WAIT_SECS);
    crate::web::body::expect_empty(body, within)
        .await
        .map_err(|e| match e {
            NotEmpty::Timeout => SpError::BodyTimeout,
            NotEmpty::Data | NotEmpty::Broken => SpError::BodyNotAllowed,
        })
}

fn no_query(query: Option<&str>) -> Result<(), SpError> {
    match query {
        None | Some("") => Ok(()),
        Some(_) => Err(SpError::UnknownParameter),
    }
}

/// `return_to` (decoded), the login route's only parameter.
fn login_query(query: Option<&str>) -> Result<Option<String>, SpError> {
    let mut return_to = None;
    for (name, value) in parse::query_pairs(query.unwrap_or_default()) {
        if name.is_empty() && value.is_none() {
            continue;
        }
        let value = value.unwrap_or("");
        if name != "return_to" {
            return Err(SpError::UnknownParameter);
        }
        if return_to.is_some() {
            return Err(SpError::Repeated);
        }
        return_to = Some(decode(value, false)?);
    }
    Ok(return_to)
}

/// Percent-decode (and in form bodies `+` -> space) into UTF-8.
fn decode(value: &str, form: bool) -> Result<String, SpError> {
    parse::percent_decode_utf8(value, form).map_err(|e| match e {
        DecodeError::BadPercent | DecodeError::NotUtf8 => SpError::BadEncoding,
    })
}

/// A same-origin relative path to send the browser to after login, or `/`.
///
/// Accepted: `/` followed by anything but a second `/` or `\`, with no `\` anywhere, no control
/// or whitespace characters (browsers strip tabs and newlines, so `/\t/evil` would become
/// `//evil`), at most `SAML_RETURN_TO_MAX_BYTES`. Characters a `Location` header cannot carry
/// (non-ASCII, `"`, `<`, ...) are percent-encoded. No scheme can appear: the value starts
/// with `/`.
pub fn safe_return_to(candidate: Option<&str>) -> String {
    const ROOT: &str = "/";
    let Some(path) = candidate else {
        return ROOT.to_owned();
    };
    let mut chars = path.chars();
    let safe = chars.next() == Some('/')
        && !matches!(chars.next(), Some('/' | '\\'))
        && path.len() <= d::SAML_RETURN_TO_MAX_BYTES
        && !path
            .chars()
            .any(|c| c == '\\' || c.is_control() || c.is_whitespace());
    if !safe {
        return ROOT.to_owned();
    }
    const ENCODE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'<')
        .add(b'>')
        .add(b'`')
        .add(b'{')
        .add(b'}')
        .add(b'|')
        .add(b'^');
    let encoded = percent_encoding::utf8_percent_encode(path, ENCODE).to_string();
    if encoded.len() > d::SAML_RETURN_TO_MAX_BYTES || HeaderValue::from_str(&encoded).is_err() {
        return ROOT.to_owned();
    }
    encoded
}

fn login(
    sp: &ServiceProvider,
    state: &SamlState,
    return_to: Option<&str>,
    now: SystemTime,
) -> Result<Response<Bytes>, SpError> {
    let return_to = safe_return_to(return_to);
    let request_id = request::new_request_id();
    // No RelayState: SAML caps it at 80 bytes, and the signed cookie already holds return_to.
    let url = request::redirect_url(
        &sp.sso_url,
        &sp.sp_entity_id,
        &sp.acs_url,
        &request_id,
        None,
        now,
    )
    .map_err(SpError::Request)?;
    let cookie = format!(
        "{LOGIN_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=None; Max-Age={}",
        state.login_cookie(&request_id, &return_to, now),
        d::SAML_LOGIN_COOKIE_SECS
    );
    // SameSite=None: the IdP posts the response cross-site, and a Lax cookie would not come
    // along; the MAC and the short lifetime make it useless to anyone else.
    let mut resp = reply(StatusCode::FOUND);
    let h = resp.headers_mut();
    h.insert(LOCATION, header(&url)?);
    h.append(SET_COOKIE, header(&cookie)?);
    Ok(resp)
}

async fn acs<B: Body>(
    sp: &ServiceProvider,
    state: &SamlState,
    headers: &HeaderMap,
    body: B,
    now: SystemTime,
    audit: &mut AuthAudit,
) -> Result<Response<Bytes>, SpError> {
    let is_form = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(SpError::NotAForm);
    }
    let form = read_body(body).await?;
    let (saml_response, relay_state) = acs_form(&form)?;
    let pending =
        cookies(headers, LOGIN_COOKIE).find_map(|value| state.open_login_cookie(value, now));

    // Signature and conditions: XML parsing and RSA are CPU work, off the async threads.
    let trust = Arc::clone(&sp.trust);
    let in_response_to = pending.as_ref().map(|p| p.request_id.clone());
    let (assertion, saml_response) = tokio::task::spawn_blocking(move || {
        let expect = Expect {
            in_response_to: in_response_to.as_deref(),
            now,
        };
        let result = response::validate(&saml_response, &trust, &expect);
        (result, saml_response)
    })
    .await
    .map_err(|e| {
        // A bug in the XML library, triggered by this document: worth a look, never a 500.
        tracing::warn!(
            panicked = e.is_panic(),
            "SAML response validation did not finish"
        );
        SpError::ValidationAborted
    })?;
    let assertion = assertion.map_err(SpError::Response)?;

    // Each assertion once, until it could no longer be valid anyway; each login request once.
    let until = assertion
        .not_on_or_after
        .checked_add(sp.trust.clock_skew)
        .unwrap_or(assertion.not_on_or_after);
    if !state.replay.first_use(&assertion.id, until, now) {
        return Err(SpError::Replayed);
    }
    if let Some(p) = &pending
        && !state
            .replay
            .first_use(&format!("request {}", p.request_id), p.expires, now)
    {
        return Err(SpError::Replayed);
    }

    let rule = choose_role(&assertion.roles, &sp.rules, sp.role_choice)?;
    let (sts_duration, session_end) = session_length(
        sp.max_session,
        assertion.session_duration,
        assertion.session_not_on_or_after,
        now,
    )?;
    let credentials = sp
        .sts
        .assume_role_with_saml(
            &rule.role_arn,
            &rule.provider_arn,
            &saml_response,
            sts_duration,
        )
        .await
        .map_err(|e| SpError::from_sts(&e, &rule.role_arn))?;

    // The session's identity is what STS returned, not what we parsed.
    let expires = session_end.min(credentials.expires);
    let principal = Principal::saml_session(
        credentials.assumed_role_arn.clone(),
        rule.gateway_role.clone(),
        rule.project.clone(),
        sp.project_scopes
            .get(&rule.project)
            .cloned()
            .unwrap_or_default(),
        unix(expires),
    );
    audit.subject = Some(principal.subject().to_owned());
    audit.role = Some(principal.role().to_owned());
    audit.project = principal.project().map(str::to_owned);
    let id = state
        .sessions
        .create(Session::new(principal, credentials, expires), now)
        .map_err(SpError::Session)?;
    // Rotation: whatever session the browser had before ends now.
    for old in cookies(headers, SESSION_COOKIE) {
        state.sessions.remove(old);
    }
    audit.rule = Some("saml login");

    let target = match pending {
        Some(p) => p.return_to,
        None => safe_return_to(relay_state.as_deref()),
    };
    let max_age = expires.duration_since(now).map_or(0, |d| d.as_secs());
    let mut resp = reply(StatusCode::SEE_OTHER);
    let h = resp.headers_mut();
    h.insert(LOCATION, header(&target)?);
    h.append(
        SET_COOKIE,
        header(&format!(
            "{SESSION_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}",
            id.cookie_value()
        ))?,
    );
    h.append(
        SET_COOKIE,
        HeaderValue::from_static(
            "__Host-bucketgate-login=; Path=/; Secure; HttpOnly; SameSite=None; Max-Age=0",
        ),
    );
    Ok(resp)
}

/// Read the form body, at most `SAML_ACS_MAX_BODY_BYTES`, within `SAML_ACS_BODY_TIMEOUT_SECS`.
async fn read_body<B: Body>(body: B) -> Result<Bytes, SpError> {
    let within = Duration::from_secs(d::SAML_ACS_BODY_TIMEOUT_SECS);
    crate::web::body::read_bounded(body, d::SAML_ACS_MAX_BODY_BYTES, Some(within))
        .await
        .map_err(|e| match e {
            ReadError::TooLarge => SpError::BodyTooLarge,
            ReadError::Broken => SpError::BodyRead,
            ReadError::Timeout => SpError::BodyTimeout,
        })
}

/// `SAMLResponse` (required) and `RelayState` (optional), each at most once; other fields are
/// ignored (IdPs add their own).
fn acs_form(form: &[u8]) -> Result<(String, Option<String>), SpError> {
    let form = std::str::from_utf8(form).map_err(|_| SpError::BadEncoding)?;
    let mut saml_response = None;
    let mut relay_state = None;
    for (name, value) in parse::query_pairs(form) {
        let value = value.unwrap_or("");
        let slot = match name {
            "SAMLResponse" => &mut saml_response,
            "RelayState" => &mut relay_state,
            _ => continue,
        };
        if slot.is_some() {
            return Err(SpError::Repeated);
        }
        *slot = Some(decode(value, true)?);
    }
    let saml_response = saml_response
        .filter(|r| !r.is_empty())
        .ok_or(SpError::NoResponse)?;
    Ok((saml_response, relay_state))
}

/// The role rule to assume: offered pairs (in the response's order) that a rule maps, chosen
/// per `role_choice`.
fn choose_role<'a>(
    offered: &[response::RolePair],
    rules: &'a [SamlRoleRule],
    choice: RoleChoice,
) -> Result<&'a SamlRoleRule, SpError> {
    let mut usable = offered.iter().filter_map(|pair| {
        rules
            .iter()
            .find(|r| r.role_arn == pair.role_arn && r.provider_arn == pair.provider_arn)
    });
    match choice {
        RoleChoice::First => usable.next().ok_or(SpError::NoUsableRole),
        RoleChoice::Only => {
            let first = usable.next().ok_or(SpError::NoUsableRole)?;
            // The same pair listed twice is still one role.
            if usable.any(|r| r != first) {
                return Err(SpError::SeveralRoles);
            }
            Ok(first)
        }
        RoleChoice::Highest => {
            let mut best: Option<&SamlRoleRule> = None;
            for rule in usable {
                if best.is_none_or(|b| rank(&rule.gateway_role) > rank(&b.gateway_role)) {
                    best = Some(rule);
                }
            }
            best.ok_or(SpError::NoUsableRole)
        }
    }
}

/// How powerful a gateway role is, for `role_choice = "highest"`.
fn rank(role: &str) -> u8 {
    match role {
        "owner" => 5,
        "admin" => 4,
        "manager" => 3,
        "reviewer" => 2,
        "annotator" | "labeler" => 1,
        _ => 0,
    }
}

/// (DurationSeconds for STS, end of the session): min(max_session, SessionDuration,
/// SessionNotOnOrAfter). STS grants at least 15 minutes, so a shorter limit ends the session
/// before its credentials.
fn session_length(
    max_session: Duration,
    session_duration: Option<Duration>,
    session_not_on_or_after: Option<SystemTime>,
    now: SystemTime,
) -> Result<(Duration, SystemTime), SpError> {
    let mut limit = max_session;
    if let Some(d) = session_duration {
        limit = limit.min(d);
    }
    if let Some(end) = session_not_on_or_after {
        let left = end.duration_since(now).map_err(|_| SpError::SessionOver)?;
        limit = limit.min(left);
    }
    if limit.is_zero() {
        return Err(SpError::SessionOver);
    }
    let sts = limit.max(Duration::from_secs(d::STS_MIN_DURATION_SECS));
    let end = now.checked_add(limit).ok_or(SpError::SessionOver)?;
    Ok((sts, end))
}

fn session_info(
    state: &SamlState,
    headers: &HeaderMap,
    now: SystemTime,
    audit: &mut AuthAudit,
) -> Result<Response<Bytes>, SpError> {
    let mut found = cookies(headers, SESSION_COOKIE);
    let cookie = found
        .next()
        .ok_or(SpError::Session(SessionError::Unknown))?;
    if found.next().is_some() {
        return Err(SpError::Repeated);
    }
    let session = state.sessions.get(cookie, now).map_err(SpError::Session)?;
    let p = session.principal();
    audit.subject = Some(p.subject().to_owned());
    audit.role = Some(p.role().to_owned());
    audit.project = p.project().map(str::to_owned);
    audit.rule = Some("saml session");
    let body = serde_json::json!({
        "subject": p.subject(),
        "role": p.role(),
        "project": p.project(),
        "expires": unix(session.expires()),
    });
    let mut resp = reply(StatusCode::OK);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    *resp.body_mut() = Bytes::from(format!("{body}\n"));
    Ok(resp)
}

fn logout(
    state: &SamlState,
    headers: &HeaderMap,
    now: SystemTime,
    audit: &mut AuthAudit,
) -> Response<Bytes> {
    for cookie in cookies(headers, SESSION_COOKIE) {
        if let Ok(session) = state.sessions.get(cookie, now) {
            let p = session.principal();
            audit.subject = Some(p.subject().to_owned());
            audit.role = Some(p.role().to_owned());
            audit.project = p.project().map(str::to_owned);
        }
        state.sessions.remove(cookie);
    }
    audit.rule = Some("saml logout");
    let mut resp = reply(StatusCode::NO_CONTENT);
    resp.headers_mut().append(
        SET_COOKIE,
        HeaderValue::from_static(
            "__Host-bucketgate-session=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
        ),
    );
    resp
}

fn reply(status: StatusCode) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::new());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn header(value: &str) -> Result<HeaderValue, SpError> {
    HeaderValue::from_str(value).map_err(|_| SpError::Request(SamlError::Request))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The SP metadata XML for the IdP admin (`bucketgate saml-metadata`).
pub fn metadata(config: &SamlConfig) -> String {
    request::sp_metadata(&config.sp_entity_id, &config.acs_url)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn return_to_accepts_only_same_origin_relative_paths() {
        for good in [
            "/",
            "/o/src/a.jpg",
            "/ui/#/task?id=1",
            "/a//b",
            "/%2F%2Fevil.com",
        ] {
            assert_eq!(safe_return_to(Some(good)), good, "{good}");
        }
        for bad in [
            "//evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "https://evil.com",
            "javascript:alert(1)",
            "evil.com",
            "",
            "/\t/evil.com",
            "/\n/evil.com",
            "/a\\b",
            "/\u{0}x",
            " /x",
        ] {
            assert_eq!(safe_return_to(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_return_to(None), "/");
        assert_eq!(safe_return_to(Some("/caf\u{e9}")), "/caf%C3%A9");
        let long = format!("/{}", "a".repeat(d::SAML_RETURN_TO_MAX_BYTES));
        assert_eq!(safe_return_to(Some(&long)), "/");
    }

    fn rule(role: &str, gateway_role: &str) -> SamlRoleRule {
        SamlRoleRule {
            role_arn: format!("arn:aws:iam::123456789012:role/{role}"),
            provider_arn: "arn:aws:iam::123456789012:saml-provider/Corp".into(),
            gateway_role: gateway_role.into(),
            project: "p".into(),
        }
    }

    fn pair(r: &SamlRoleRule) -> response::RolePair {
        response::RolePair {
            role_arn: r.role_arn.clone(),
            provider_arn: r.provider_arn.clone(),
        }
    }

    #[test]
    fn role_choice_first_only_and_highest() {
        let rules = [rule("A", "annotator"), rule("R", "reviewer")];
        let stranger = response::RolePair {
            role_arn: "arn:aws:iam::123456789012:role/X".into(),
            provider_arn: rules[0].provider_arn.clone(),
        };
        let offered = [stranger.clone(), pair(&rules[0]), pair(&rules[1])];
        let first = choose_role(&offered, &rules, RoleChoice::First).unwrap();
        assert_eq!(first.gateway_role, "annotator");
        let highest = choose_role(&offered, &rules, RoleChoice::Highest).unwrap();
        assert_eq!(highest.gateway_role, "reviewer");
        assert!(matches!(
            choose_role(&offered, &rules, RoleChoice::Only),
            Err(SpError::SeveralRoles)
        ));
        let one = [stranger.clone(), pair(&rules[1]), pair(&rules[1])];
        assert_eq!(
            choose_role(&one, &rules, RoleChoice::Only)
                .unwrap()
                .gateway_role,
            "reviewer"
        );
        for choice in [RoleChoice::First, RoleChoice::Only, RoleChoice::Highest] {
            assert!(matches!(
                choose_role(std::slice::from_ref(&stranger), &rules, choice),
                Err(SpError::NoUsableRole)
            ));
        }
    }

    #[test]
    fn session_length_is_the_smallest_limit_and_sts_gets_at_least_15_minutes() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let h = |n: u64| Duration::from_secs(n * 3600);
        let (sts, end) = session_length(h(8), None, None, now).unwrap();
        assert_eq!((sts, end), (h(8), now + h(8)));
        let (sts, end) = session_length(h(8), Some(h(2)), Some(now + h(4)), now).unwrap();
        assert_eq!((sts, end), (h(2), now + h(2)));
        let (sts, end) = session_length(h(8), None, Some(now + h(3)), now).unwrap();
        assert_eq!((sts, end), (h(3), now + h(3)));
        let five = Duration::from_secs(300);
        let (sts, end) = session_length(h(8), None, Some(now + five), now).unwrap();
        assert_eq!((sts, end), (Duration::from_secs(900), now + five));
        assert!(matches!(
            session_length(h(8), None, Some(now - five), now),
            Err(SpError::SessionOver)
        ));
    }

    #[test]
    fn login_cookie_round_trips_and_refuses_tampering_and_expiry() {
        let state = SamlState::new(crate::credentials::system_clock()).unwrap();
        let now = SystemTime::now();
        let value = state.login_cookie("_abc", "/o/x", now);
        let pending = state.open_login_cookie(&value, now).unwrap();
        assert_eq!(
            (pending.request_id.as_str(), pending.return_to.as_str()),
            ("_abc", "/o/x")
        );
        let later = now + Duration::from_secs(d::SAML_LOGIN_COOKIE_SECS + 1);
        assert!(state.open_login_cookie(&value, later).is_none());
        let (payload, tag) = value.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(b"_abc\n99999999999\n//evil.com");
        assert!(
            state
                .open_login_cookie(&format!("{forged}.{tag}"), now)
                .is_none()
        );
        assert!(state.open_login_cookie(payload, now).is_none());
        let other = SamlState::new(crate::credentials::system_clock()).unwrap();
        assert!(other.open_login_cookie(&value, now).is_none());
    }

    #[test]
    fn acs_form_reads_each_field_once() {
        let (r, s) = acs_form(b"SAMLResponse=PHg%2BYQ%3D%3D&RelayState=%2Fo%2Fx&extra=1").unwrap();
        assert_eq!((r.as_str(), s.as_deref()), ("PHg+YQ==", Some("/o/x")));
        assert!(matches!(
            acs_form(b"SAMLResponse=a&SAMLResponse=b"),
            Err(SpError::Repeated)
        ));
        assert!(matches!(
            acs_form(b"RelayState=x"),
            Err(SpError::NoResponse)
        ));
        assert!(matches!(
            acs_form(b"SAMLResponse=%zz"),
            Err(SpError::BadEncoding)
        ));
    }

    #[test]
    fn login_query_takes_only_return_to() {
        assert_eq!(
            login_query(Some("return_to=%2Fo%2Fa")).unwrap().as_deref(),
            Some("/o/a")
        );
        assert_eq!(login_query(None).unwrap(), None);
        assert!(matches!(
            login_query(Some("return_to=/a&x=1")),
            Err(SpError::UnknownParameter)
        ));
        assert!(matches!(
            login_query(Some("return_to=/a&return_to=/b")),
            Err(SpError::Repeated)
        ));
    }
}
