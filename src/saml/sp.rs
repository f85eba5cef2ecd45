//! The SAML service provider's core: start a login (the AuthnRequest redirect and the sealed
//! login cookie value), and finish one at the ACS (validate the IdP's response, replay check,
//! role choice, session length, STS AssumeRoleWithSAML, a new server-side session).
//!
//! Order in the ACS, cheapest refusal first; nothing reaches STS unless every check passed:
//! login cookie -> signature and conditions (`response.rs`, on a blocking thread) -> replay
//! cache -> role rules -> session length -> STS -> session.
//!
//! It takes parsed values and returns values: the routes, form and query parsing, cookies and
//! responses are the HTTP half, `pipeline/auth.rs`. This module must not log or answer anything
//! from a SAML response, an STS answer or a credential: errors carry fixed texts only, and the
//! error module picks every status. It knows nothing of HTTP or of the pipeline, and reports what
//! the audit record needs in [`AuthAudit`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::login_cookie::{LoginKey, LoginKeyRing, PendingLogin, SharedLoginKey};
use super::replay::{AnyReplayCache, ReplayCache as _};
use super::request;
use super::response::{self, Expect, IdpTrust, SamlError};
use super::session::{AnySessionStore, Session, SessionError, SessionId, SessionStore as _};
use crate::civil_time::unix_secs;
use crate::config::defaults as d;
use crate::config::{ProjectConfig, RoleChoice, RoleConfig, SamlConfig, SamlRoleRule};
use crate::credentials::Clock;
use crate::credentials::sts::{StsClient, StsError};
use crate::identity::{Principal, Scope};

/// The client text of every 401 that a new sign-in fixes.
pub const SIGN_IN_AGAIN: &str = "session expired or missing; sign in again at /auth/saml/login";

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
    /// The state shared by every node (Redis: the replay cache, the login-cookie key) cannot
    /// answer: a new login is refused (a replay cannot be ruled out), 503.
    #[error("shared SAML state (replay cache or login-cookie key) is unavailable")]
    SharedStateUnavailable,
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
            SpError::SharedStateUnavailable => "saml state",
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
    /// `[saml] login_cookie_key`; `None`: the key of [`SamlState`] (random per process, or
    /// shared through Redis).
    login_key: Option<Arc<LoginKeyRing>>,
    /// Each ranked gateway role's `rank` (from `[roles]`), for `role_choice = "highest"`.
    ranks: HashMap<String, u32>,
    /// Each mapped project's sources, as scopes of the session principal.
    project_scopes: HashMap<String, Vec<Scope>>,
    sts: StsClient,
}

impl ServiceProvider {
    pub fn new(
        config: &SamlConfig,
        roles: &BTreeMap<String, RoleConfig>,
        projects: &BTreeMap<String, ProjectConfig>,
        sts: StsClient,
    ) -> ServiceProvider {
        let ranks = roles
            .iter()
            .filter_map(|(name, role)| role.rank.map(|rank| (name.clone(), rank)))
            .collect();
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
            login_key: config.login_cookie_key.as_ref().map(|key| {
                Arc::new(LoginKeyRing::new(
                    LoginKey::from_secret(key.expose().as_bytes()),
                    None,
                ))
            }),
            ranks,
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
/// used when `[saml] login_cookie_key` is not set (random per process, or shared by every node
/// through Redis) and the clock of every SAML time decision.
pub struct SamlState {
    sessions: AnySessionStore,
    replay: AnyReplayCache,
    login_key: StateLoginKey,
    clock: Arc<dyn Clock>,
}

/// Where [`SamlState`]'s login-cookie key comes from.
enum StateLoginKey {
    /// Random, this process only.
    Process(Arc<LoginKeyRing>),
    /// One key for every node (Redis).
    Shared(Box<dyn SharedLoginKey>),
}

impl SamlState {
    /// In-memory sessions and replay cache, and a random login cookie key.
    pub fn new(clock: Arc<dyn Clock>) -> Result<SamlState, SamlSetupError> {
        let key = LoginKey::random().map_err(|_| SamlSetupError)?;
        Ok(SamlState {
            sessions: AnySessionStore::memory(d::SAML_MAX_SESSIONS),
            replay: AnyReplayCache::memory(d::SAML_REPLAY_CAPACITY),
            login_key: StateLoginKey::Process(Arc::new(LoginKeyRing::new(key, None))),
            clock,
        })
    }

    /// Sessions, replay cache and login-cookie key shared by every node (built in
    /// `state::redis`).
    pub fn shared(
        sessions: AnySessionStore,
        replay: AnyReplayCache,
        login_key: Box<dyn SharedLoginKey>,
        clock: Arc<dyn Clock>,
    ) -> SamlState {
        SamlState {
            sessions,
            replay,
            login_key: StateLoginKey::Shared(login_key),
            clock,
        }
    }

    pub fn sessions(&self) -> &AnySessionStore {
        &self.sessions
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// The clock of every SAML time decision.
    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.clock)
    }
}

/// A login to start: where to send the browser, and the login cookie's value.
#[derive(Debug)]
pub struct LoginStart {
    /// The IdP's SSO URL with the AuthnRequest (HTTP-Redirect binding).
    pub redirect_url: String,
    /// The sealed request id and `return_to`, for the login cookie.
    pub login_cookie: String,
}

/// The ACS form's fields, decoded.
#[derive(Debug, Clone)]
pub struct AcsForm {
    /// `SAMLResponse`, base64 as posted (never empty).
    pub saml_response: String,
    /// `RelayState`, used as `return_to` when no login cookie came along (IdP-initiated).
    pub relay_state: Option<String>,
}

/// A login that succeeded: the new session and where the browser goes next.
#[derive(Debug)]
pub struct NewSession {
    pub id: SessionId,
    pub expires: SystemTime,
    /// A safe same-origin path.
    pub return_to: String,
}

impl ServiceProvider {
    /// Start a login: a new AuthnRequest to the IdP, and the sealed login cookie value that
    /// remembers its id and `return_to` (made safe here).
    pub async fn login(
        &self,
        state: &SamlState,
        return_to: Option<&str>,
        now: SystemTime,
    ) -> Result<LoginStart, SpError> {
        let return_to = safe_return_to(return_to);
        let request_id = request::new_request_id();
        // No RelayState: SAML caps it at 80 bytes, and the signed cookie already holds return_to.
        let redirect_url = request::redirect_url(
            &self.sso_url,
            &self.sp_entity_id,
            &self.acs_url,
            &request_id,
            None,
            now,
        )
        .map_err(SpError::Request)?;
        let login_cookie = self
            .login_keys(state)
            .await?
            .seal(&request_id, &return_to, now);
        Ok(LoginStart {
            redirect_url,
            login_cookie,
        })
    }

    /// The first of `cookie_values` (the login cookies a browser sent) that opens: sealed by this
    /// gateway's key and not expired. Fails only when the shared key cannot be had.
    pub async fn pending_login<'v>(
        &self,
        state: &SamlState,
        cookie_values: impl IntoIterator<Item = &'v str>,
        now: SystemTime,
    ) -> Result<Option<PendingLogin>, SpError> {
        let mut values = cookie_values.into_iter().peekable();
        if values.peek().is_none() {
            return Ok(None);
        }
        let keys = self.login_keys(state).await?;
        Ok(values.find_map(|value| keys.open(value, now)))
    }

    /// Finish a login: the IdP's response (`form`), answering `pending` (the login cookie's
    /// login, if one came along) -> a new session. `audit` gets the session's subject, role and
    /// project as soon as they are known.
    pub async fn acs(
        &self,
        state: &SamlState,
        form: AcsForm,
        pending: Option<PendingLogin>,
        now: SystemTime,
        audit: &mut AuthAudit,
    ) -> Result<NewSession, SpError> {
        let AcsForm {
            saml_response,
            relay_state,
        } = form;
        // Signature and conditions: XML parsing and RSA are CPU work, off the async threads.
        let trust = Arc::clone(&self.trust);
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
            .checked_add(self.trust.clock_skew)
            .unwrap_or(assertion.not_on_or_after);
        let unknown = |_| SpError::SharedStateUnavailable;
        if !state
            .replay
            .first_use(&assertion.id, until, now)
            .await
            .map_err(unknown)?
        {
            return Err(SpError::Replayed);
        }
        if let Some(p) = &pending
            && !state
                .replay
                .first_use(&format!("request {}", p.request_id), p.expires, now)
                .await
                .map_err(unknown)?
        {
            return Err(SpError::Replayed);
        }

        let rank = |role: &str| self.ranks.get(role).copied();
        let rule = choose_role(&assertion.roles, &self.rules, self.role_choice, rank)?;
        let (sts_duration, session_end) = session_length(
            self.max_session,
            assertion.session_duration,
            assertion.session_not_on_or_after,
            now,
        )?;
        let credentials = self
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
            self.project_scopes
                .get(&rule.project)
                .cloned()
                .unwrap_or_default(),
            unix_secs(expires),
        );
        audit.subject = Some(principal.subject().to_owned());
        audit.role = Some(principal.role().to_owned());
        audit.project = principal.project().map(str::to_owned);
        let id = state
            .sessions
            .create(Session::new(principal, credentials, expires), now)
            .await
            .map_err(SpError::Session)?;
        let return_to = match pending {
            Some(p) => p.return_to,
            None => safe_return_to(relay_state.as_deref()),
        };
        Ok(NewSession {
            id,
            expires,
            return_to,
        })
    }

    /// The login cookie keys: `[saml] login_cookie_key` if configured, else the state's (the
    /// process's own, or the one shared through Redis).
    async fn login_keys(&self, state: &SamlState) -> Result<Arc<LoginKeyRing>, SpError> {
        if let Some(ring) = &self.login_key {
            return Ok(Arc::clone(ring));
        }
        match &state.login_key {
            StateLoginKey::Process(ring) => Ok(Arc::clone(ring)),
            StateLoginKey::Shared(shared) => shared
                .keys()
                .await
                .map_err(|_| SpError::SharedStateUnavailable),
        }
    }
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
    // What a header value may carry (as `http::HeaderValue::from_str` checks it).
    let header_safe = encoded
        .bytes()
        .all(|b| (b >= 0x20 && b != 0x7f) || b == b'\t');
    if encoded.len() > d::SAML_RETURN_TO_MAX_BYTES || !header_safe {
        return ROOT.to_owned();
    }
    encoded
}

/// The role rule to assume: offered pairs (in the response's order) that a rule maps, chosen
/// per `role_choice`. `rank` is a gateway role's configured rank; for "highest" an unranked role
/// (`None`, which validation refuses in a config file) loses to every ranked one.
fn choose_role<'a>(
    offered: &[response::RolePair],
    rules: &'a [SamlRoleRule],
    choice: RoleChoice,
    rank: impl Fn(&str) -> Option<u32>,
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
            let mut best: Option<(&SamlRoleRule, Option<u32>)> = None;
            for rule in usable {
                let r = rank(&rule.gateway_role);
                if best.is_none_or(|(_, b)| r > b) {
                    best = Some((rule, r));
                }
            }
            best.map(|(rule, _)| rule).ok_or(SpError::NoUsableRole)
        }
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

/// The SP metadata XML for the IdP admin (`bucketgate saml-metadata`).
pub fn metadata(config: &SamlConfig) -> String {
    request::sp_metadata(&config.sp_entity_id, &config.acs_url)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

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

    /// The seed roles' ranks.
    fn seed_rank(role: &str) -> Option<u32> {
        crate::config::default_roles()
            .get(role)
            .and_then(|r| r.rank)
    }

    #[test]
    fn role_choice_first_only_and_highest() {
        let choose_role = |offered: &[response::RolePair], rules, choice| {
            choose_role(offered, rules, choice, seed_rank)
        };
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
    fn highest_ranks_a_configured_role_by_its_configured_rank() {
        // The seeds keep their order; "curator" (rank 25) sits between reviewer and manager.
        let mut ranks = crate::config::default_roles();
        let curator = RoleConfig {
            read_original: true,
            read_derived: true,
            rank: Some(25),
        };
        ranks.insert("curator".into(), curator);
        ranks.insert(
            "guest".into(),
            RoleConfig {
                rank: None,
                ..curator
            },
        );
        let rank = |role: &str| ranks.get(role).and_then(|r| r.rank);
        let highest = |rules: &[SamlRoleRule]| {
            let offered: Vec<_> = rules.iter().map(pair).collect();
            choose_role(&offered, rules, RoleChoice::Highest, rank)
                .unwrap()
                .gateway_role
                .clone()
        };
        let (reviewer, curator, manager) = (
            rule("R", "reviewer"),
            rule("C", "curator"),
            rule("M", "manager"),
        );
        assert_eq!(highest(&[reviewer.clone(), curator.clone()]), "curator");
        assert_eq!(highest(&[curator.clone(), reviewer.clone()]), "curator");
        assert_eq!(highest(&[curator.clone(), manager.clone()]), "manager");
        assert_eq!(highest(&[manager, curator.clone()]), "manager");
        // An unranked role (only possible in a config built in code) loses to any ranked one.
        let guest = rule("G", "guest");
        assert_eq!(
            highest(&[guest.clone(), rule("A", "annotator")]),
            "annotator"
        );
        // Ties go to the first listed.
        let other = rule("C2", "curator");
        let offered = [pair(&other), pair(&curator)];
        let rules = [curator.clone(), other.clone()];
        let chosen = choose_role(&offered, &rules, RoleChoice::Highest, rank).unwrap();
        assert_eq!(chosen, &other);
    }
}
