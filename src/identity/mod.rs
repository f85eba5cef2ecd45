//! Tokens: JWT verification against configured keys (and optionally a JWKS), claims -> a
//! [`Principal`], scopes, and revocation.
//!
//! This module owns what a token means. It knows nothing of HTTP requests (where a token was
//! found is `pipeline/identity.rs`), and never decides access to an object (that is
//! `pipeline/authorize.rs`). The only network I/O is the JWKS refresh in `jwks.rs`, started at
//! most once per interval for an unknown `kid`.
//!
//! Rules kept here (DESIGN.md "Identity"):
//! - a token must name its key with `kid`; the header `alg` must equal the key's pinned
//!   algorithm; `jku`, `x5u`, `jwk` and `x5c` headers are never looked at, and `crit` is refused;
//! - `aud` must contain the configured audience; `iss`, when an issuer is set, must be it (or
//!   an array that contains it, as jsonwebtoken accepted);
//! - `exp` is required unless the key allows non-expiring tokens; `exp`, `nbf` and `iat` are
//!   checked against an injected clock with the configured skew;
//! - `scope` (non-empty), `role` and `sub` are required; malformed claims refuse the token;
//! - a refused token costs the same work whatever refused it: once its header parses, the
//!   signature is verified (against a stand-in key when the `kid` is unknown), the claims are
//!   parsed and every claim is checked, and only then is one refusal picked
//!   ([`Checks::decide`]). A bad signature is therefore not answered faster than an expired
//!   token with a good one (which alone is answered `token_expired`, below);
//! - a token past `exp` is [`IdentityError::Expired`] only when everything else about it holds
//!   (key, signature, `aud`, `iss`, `nbf`/`iat`, well-formed claims): the one refusal a client
//!   may tell apart (`token_expired`, so a labeling app re-signs), and one that says nothing the
//!   token's own `exp` does not;
//! - revocation is checked last, by [`Identity::verify`], on a token whose signature and claims
//!   verified: an async call to the revocation store ([`revocation::RevocationStore`]), which
//!   may do I/O. [`Identity::verify_cached`] does no I/O and so does not check it;
//! - a token with a use window (`idle`, [`use_window`]) is then judged by the window store,
//!   which may accept it past `exp`. Its answer never depends on revocation: a revoked window
//!   token gets the answer its window gives (expired or not), only never accepted, and no use
//!   of it is recorded. [`Identity::verify_cached`] refuses a window token past `exp` (it
//!   cannot ask the store).

pub mod jwks;
pub mod keys;
pub mod revocation;
pub mod use_window;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ipnet::IpNet;
use jsonwebtoken::errors::ErrorKind;
use serde::Deserialize;

use crate::config::IdentityConfig;
use crate::config::defaults::MAX_TOKEN_BYTES;
pub use crate::scope::{Scope, ScopeError};
use keys::{StandIns, VerifyKey};
use revocation::{RevocationStore, Revocations};
use use_window::{
    Lapse, Outcome, Use, UseWindow, UseWindowError, UseWindowStore, UseWindows, WindowKey,
};

/// Why a token was not accepted. `pipeline/error.rs` decides each variant's answer: two tokens
/// are a 400, an expired token (or a lapsed use window) a 401 that says `token_expired`, a
/// window store that cannot answer a 503, and every other cause one identical 401; the variant
/// is for logs, the audit rule ([`IdentityError::rule`]) and `explain`.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("identity is not configured: no [identity] table")]
    NotConfigured,
    #[error("no token in the request")]
    Missing,
    #[error("a token in more than one place (Authorization, cookie, token=)")]
    AmbiguousToken,
    #[error("the Authorization header is not a Bearer token")]
    NotBearer,
    #[error("token longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("malformed token")]
    Malformed(#[source] jsonwebtoken::errors::Error),
    #[error("token header has no kid")]
    MissingKid,
    #[error("token header has a crit parameter")]
    CriticalHeader,
    #[error("unknown kid")]
    UnknownKid,
    #[error("token alg does not match the key's pinned algorithm")]
    AlgorithmMismatch,
    #[error("token rejected by verification")]
    Rejected(#[source] jsonwebtoken::errors::Error),
    #[error("token has expired")]
    Expired,
    #[error("token has no exp and its key does not allow non-expiring tokens")]
    NoExpiry,
    #[error("token is not valid yet (nbf or iat in the future)")]
    NotYetValid,
    #[error("token claims are invalid: {0}")]
    BadClaims(&'static str),
    #[error("token has been revoked")]
    Revoked,
    /// Past `exp` with a use window that was used, but not recently enough (`idle`) or not
    /// for that long (`max`).
    #[error("token's use window has lapsed ({})", .0.as_str())]
    WindowLapsed(Lapse),
    /// A use window bound to the client address of its first use, used from another.
    #[error("token's use window is bound to another client address")]
    WindowElsewhere,
    /// The use-window store could not record the first use (fail closed).
    #[error("use-window store")]
    WindowStore(#[source] UseWindowError),
    /// A SAML session cookie that names no live session (expired, logged out, or never ours).
    /// Still a 401, but its body tells the UI to sign in again.
    #[error("SAML session expired or unknown")]
    SessionExpired,
    /// The shared session store (Redis) cannot answer and no local copy of the session could
    /// stand in: 503 (fail closed; signing in again would not help).
    #[error("SAML session store unavailable")]
    SessionStoreUnavailable,
}

impl IdentityError {
    /// The audit record's rule for this refusal: `token_expired` (with the window's reason when
    /// one lapsed) and `use_window ...` are told apart so an admin can see them; every other
    /// cause is `identity` (the log has the cause).
    pub fn rule(&self) -> &'static str {
        match self {
            IdentityError::Expired => "token_expired",
            IdentityError::WindowLapsed(Lapse::Idle) => "token_expired: use_window idle",
            IdentityError::WindowLapsed(Lapse::Max) => "token_expired: use_window max",
            IdentityError::WindowElsewhere => "use_window: other client address",
            IdentityError::WindowStore(_) => "use_window: store",
            IdentityError::SessionStoreUnavailable => "session: store",
            IdentityError::NotConfigured
            | IdentityError::Missing
            | IdentityError::AmbiguousToken
            | IdentityError::NotBearer
            | IdentityError::TooLong
            | IdentityError::Malformed(_)
            | IdentityError::MissingKid
            | IdentityError::CriticalHeader
            | IdentityError::UnknownKid
            | IdentityError::AlgorithmMismatch
            | IdentityError::Rejected(_)
            | IdentityError::NoExpiry
            | IdentityError::NotYetValid
            | IdentityError::BadClaims(_)
            | IdentityError::Revoked
            | IdentityError::SessionExpired => "identity",
        }
    }
}

/// A representation of an object a token may be allowed to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// The object as stored (`/o/`).
    Original,
    /// Thumbnails, tiles, video renditions.
    Derived,
}

impl Representation {
    pub fn as_str(self) -> &'static str {
        match self {
            Representation::Original => "original",
            Representation::Derived => "derived",
        }
    }
}

/// A verified token's subject and what it claims. Built only by [`Identity`].
#[derive(Debug, Clone)]
pub struct Principal {
    subject: String,
    role: String,
    project: Option<String>,
    scopes: Vec<Scope>,
    cip: Option<IpNet>,
    original: bool,
    derived: bool,
    jti: Option<String>,
    /// `iat`, for the revocation check of a subject's tokens issued before a time.
    issued_at: Option<u64>,
    kid: String,
    expires_at: Option<u64>,
    /// The token's use window (`idle`, `max`, `bind`), if it has one.
    window: Option<UseWindow>,
}

/// The `kid` a SAML session's principal reports (it was not made from a token).
pub const SAML_SESSION_KID: &str = "saml-session";

impl Principal {
    /// The principal of a SAML session (built by `saml/sp.rs` after STS answered): `subject` is
    /// the identity STS returned (the assumed-role ARN), `role` the gateway role the assumed AWS
    /// role maps to, and `scopes` the sources and prefixes of `project`. Not bound to a client
    /// address; may see every representation its role allows; ends at `expires_at` (unix s).
    pub(crate) fn saml_session(
        subject: String,
        role: String,
        project: String,
        scopes: Vec<Scope>,
        expires_at: u64,
    ) -> Principal {
        Principal {
            subject,
            role,
            project: Some(project),
            scopes,
            cip: None,
            original: true,
            derived: true,
            jti: None,
            issued_at: None,
            kid: SAML_SESSION_KID.to_owned(),
            expires_at: Some(expires_at),
            window: None,
        }
    }

    /// [`Principal::saml_session`] for benches (feature `bench`); the gateway builds session
    /// principals only in `saml/`.
    #[cfg(feature = "bench")]
    #[doc(hidden)]
    pub fn saml_session_for_bench(
        subject: String,
        role: String,
        project: String,
        scopes: Vec<Scope>,
        expires_at: u64,
    ) -> Principal {
        Principal::saml_session(subject, role, project, scopes, expires_at)
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }
    pub fn role(&self) -> &str {
        &self.role
    }
    pub fn project(&self) -> Option<&str> {
        self.project.as_deref()
    }
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }
    /// The client network the token is bound to, if any.
    pub fn client_binding(&self) -> Option<IpNet> {
        self.cip
    }
    pub fn allows_representation(&self, rep: Representation) -> bool {
        match rep {
            Representation::Original => self.original,
            Representation::Derived => self.derived,
        }
    }
    pub fn jti(&self) -> Option<&str> {
        self.jti.as_deref()
    }
    pub fn kid(&self) -> &str {
        &self.kid
    }
    pub fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }
    /// The use window the token carries: then `expires_at` is the deadline of its first use.
    pub fn use_window(&self) -> Option<UseWindow> {
        self.window
    }
}

/// The claims we read; unknown claims are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    aud: Option<OneOrMany>,
    iss: Option<OneOrMany>,
    exp: Option<u64>,
    nbf: Option<u64>,
    iat: Option<u64>,
    jti: Option<String>,
    scope: Vec<String>,
    role: String,
    project: Option<String>,
    cip: Option<String>,
    rep: Option<Vec<String>>,
    /// Use window ([`use_window`]).
    idle: Option<u64>,
    max: Option<u64>,
    bind: Option<bool>,
}

/// `aud` (and, leniently, `iss`): one string or an array of them (RFC 7519 4.1.3).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn contains(&self, want: &str) -> bool {
        match self {
            OneOrMany::One(s) => s == want,
            OneOrMany::Many(list) => list.iter().any(|s| s == want),
        }
    }
}

/// Most scopes one token may carry.
const MAX_SCOPES: usize = 256;

/// Live token verification, built from one config snapshot.
pub struct Identity {
    keys: HashMap<String, Arc<VerifyKey>>,
    jwks: Option<jwks::Jwks>,
    /// Verified against when the kid names no key (the result is not used).
    stand_ins: StandIns,
    audience: String,
    issuer: Option<String>,
    skew_secs: u64,
    cookie_name: String,
    revocations: Arc<Revocations>,
    /// The default and largest `max` of a use window.
    use_window_max_secs: u64,
}

/// Where and through which store a token is used: the use-window check needs both.
#[derive(Clone, Copy)]
pub struct TokenUse<'a> {
    /// The client address (stage 1's, canonical).
    pub client: IpAddr,
    pub windows: &'a UseWindows,
}

/// A token whose key, signature and claims verified, maybe past `exp` (only a window token).
#[derive(Debug)]
struct Verified {
    principal: Principal,
    /// `now` is at or past `exp` + skew: only a live use window may accept it.
    past_exp: bool,
}

/// What the token's `kid` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KidCheck {
    Known,
    Missing,
    Unknown,
}

/// How `aud` or `iss` compared with the configured value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimMatch {
    Matches,
    /// Not required (no issuer configured).
    NotChecked,
    Absent,
    Different,
}

/// How `exp` compared with the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExpiryCheck {
    Valid,
    Expired,
    /// No `exp`, under a key that requires one.
    Missing,
}

/// The result of every check on one token, all evaluated before any refusal is picked: the
/// work done does not depend on which check fails. Built by [`Identity::checks`], turned into an
/// answer by [`Checks::decide`].
#[derive(Debug)]
struct Checks {
    kid: KidCheck,
    /// The header `alg` is the key's pinned algorithm.
    alg_matches: bool,
    /// The header has no `crit`.
    no_crit: bool,
    /// The signature verified under the key's pinned algorithm (under a stand-in for an unknown
    /// kid: then it is never trusted).
    signature: bool,
    /// The claims, when the payload parsed (otherwise why not).
    claims: Result<ClaimChecks, &'static str>,
}

#[derive(Debug)]
struct ClaimChecks {
    aud: ClaimMatch,
    iss: ClaimMatch,
    expiry: ExpiryCheck,
    /// Neither `nbf` nor `iat` is beyond now + skew.
    started: bool,
    /// The principal the claims make, or which claim is malformed.
    principal: Result<Principal, &'static str>,
}

impl Checks {
    /// One refusal, in a fixed order (the key, the signature, then the claims, `exp` last), or
    /// the principal when every check passed; a window token past `exp` passes, marked, for the
    /// window store to judge. `exp` comes last so that `Expired` (the one refusal a client is
    /// told apart, `token_expired`) means "this token was good until its exp".
    fn decide(self) -> Result<Verified, IdentityError> {
        match self.kid {
            KidCheck::Missing => return Err(IdentityError::MissingKid),
            KidCheck::Unknown => return Err(IdentityError::UnknownKid),
            KidCheck::Known => {}
        }
        if !self.no_crit {
            return Err(IdentityError::CriticalHeader);
        }
        if !self.alg_matches {
            return Err(IdentityError::AlgorithmMismatch);
        }
        if !self.signature {
            return Err(IdentityError::Rejected(ErrorKind::InvalidSignature.into()));
        }
        let claims = self.claims.map_err(IdentityError::BadClaims)?;
        let matched = |m: ClaimMatch, name: &str, wrong: ErrorKind| match m {
            ClaimMatch::Matches | ClaimMatch::NotChecked => Ok(()),
            ClaimMatch::Absent => Err(IdentityError::Rejected(
                ErrorKind::MissingRequiredClaim(name.to_owned()).into(),
            )),
            ClaimMatch::Different => Err(IdentityError::Rejected(wrong.into())),
        };
        matched(claims.aud, "aud", ErrorKind::InvalidAudience)?;
        matched(claims.iss, "iss", ErrorKind::InvalidIssuer)?;
        if claims.expiry == ExpiryCheck::Missing {
            return Err(IdentityError::NoExpiry);
        }
        if !claims.started {
            return Err(IdentityError::NotYetValid);
        }
        let principal = claims.principal.map_err(IdentityError::BadClaims)?;
        let past_exp = claims.expiry == ExpiryCheck::Expired;
        if past_exp && principal.window.is_none() {
            return Err(IdentityError::Expired);
        }
        Ok(Verified {
            principal,
            past_exp,
        })
    }
}

/// Why identity could not be set up (a key that validation accepted but the JWT library did
/// not, a JWKS client that cannot be built, or no randomness for the unknown-kid stand-ins).
#[derive(Debug, thiserror::Error)]
pub enum IdentitySetupError {
    #[error("key {kid}")]
    Key {
        kid: String,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    #[error("JWKS client")]
    Jwks(#[from] jwks::JwksError),
    #[error("unknown-kid stand-in keys")]
    StandIns(#[from] keys::StandInError),
}

impl Identity {
    pub fn new(
        config: &IdentityConfig,
        revocations: Arc<Revocations>,
    ) -> Result<Identity, IdentitySetupError> {
        let mut map = HashMap::new();
        for key in &config.keys {
            let vk = VerifyKey::from_config(key).map_err(|source| IdentitySetupError::Key {
                kid: key.kid.clone(),
                source,
            })?;
            map.insert(key.kid.clone(), Arc::new(vk));
        }
        let jwks = match &config.jwks {
            Some(j) => Some(jwks::Jwks::new(j)?),
            None => None,
        };
        Ok(Identity {
            keys: map,
            jwks,
            stand_ins: StandIns::generate()?,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            skew_secs: config.clock_skew.as_secs(),
            cookie_name: config.cookie_name.clone(),
            revocations,
            use_window_max_secs: config.use_window_max.as_secs(),
        })
    }

    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// Fetch the JWKS once at startup (not counted against the refresh interval). Failures are
    /// logged: configured keys keep working, and an unknown kid retries later.
    pub async fn load_jwks(&self) {
        if let Some(jwks) = &self.jwks {
            jwks.initial_load().await;
        }
    }

    /// Verify `token` at `now` (unix seconds), refreshing the JWKS (rate-limited) when its kid
    /// is unknown and a JWKS is configured; then, for a token that verified, ask the revocation
    /// store, and for a token with a use window the window store (which records the use when
    /// it is accepted). A revocation store that cannot answer refuses the token (fail closed),
    /// as a revoked one; a window store that cannot, with [`IdentityError::WindowStore`].
    pub async fn verify(
        &self,
        token: &str,
        now: u64,
        at: TokenUse<'_>,
    ) -> Result<Principal, IdentityError> {
        // Past exp or not, a window token is judged by its window (the store knows exp too).
        let Verified { principal, .. } = self.verify_keys_and_claims(token, now).await?;
        let revoked = self
            .revocations
            .is_revoked(principal.jti(), principal.subject(), principal.issued_at)
            .await
            .unwrap_or_else(|e| {
                tracing::error!(
                    error = %crate::telemetry::ErrorChain(&e),
                    "revocation store unavailable: refusing the token"
                );
                true
            });
        let Some(window) = principal.window else {
            return if revoked {
                Err(IdentityError::Revoked)
            } else {
                Ok(principal)
            };
        };
        // A window requires exp (claim validation); the fallback only keeps this total.
        let first_use_by = principal
            .expires_at
            .map_or(0, |exp| exp.saturating_add(self.skew_secs));
        let use_ = Use {
            key: WindowKey::of(token),
            window,
            first_use_by,
            client: at.client.to_canonical(),
            now,
        };
        // A revoked token's use is judged (so its answer does not tell it was revoked) but
        // never recorded.
        let outcome = at
            .windows
            .use_token(&use_, !revoked)
            .await
            .map_err(IdentityError::WindowStore)?;
        match outcome {
            Outcome::Started | Outcome::Continued if revoked => Err(IdentityError::Revoked),
            Outcome::Started | Outcome::Continued => Ok(principal),
            Outcome::NotStarted => Err(IdentityError::Expired),
            Outcome::Lapsed(lapse) => Err(IdentityError::WindowLapsed(lapse)),
            Outcome::Elsewhere => Err(IdentityError::WindowElsewhere),
        }
    }

    /// Signature and claims, with a JWKS refresh for an unknown kid; no revocation check.
    async fn verify_keys_and_claims(
        &self,
        token: &str,
        now: u64,
    ) -> Result<Verified, IdentityError> {
        match self.verify_offline(token, now) {
            Err(IdentityError::UnknownKid) => match &self.jwks {
                Some(jwks) if jwks.refresh_for_unknown_kid().await => {
                    self.verify_offline(token, now)
                }
                _ => Err(IdentityError::UnknownKid),
            },
            other => other,
        }
    }

    /// Verify the signature and the claims with the keys known now: no I/O, and therefore no
    /// revocation or use-window check ([`Identity::verify`] does those): a window token past
    /// `exp` is refused as expired.
    pub fn verify_cached(&self, token: &str, now: u64) -> Result<Principal, IdentityError> {
        match self.verify_offline(token, now)? {
            Verified { past_exp: true, .. } => Err(IdentityError::Expired),
            Verified { principal, .. } => Ok(principal),
        }
    }

    fn verify_offline(&self, token: &str, now: u64) -> Result<Verified, IdentityError> {
        self.checks(token, now)?.decide()
    }

    /// Every check on `token` at `now`. Only a token too long to look at, or one whose
    /// structure or header does not parse, is refused here: that depends on nothing but the
    /// bytes the client sent, never on a key, a signature or a claim.
    fn checks(&self, token: &str, now: u64) -> Result<Checks, IdentityError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(IdentityError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(IdentityError::Malformed)?;
        // decode_header split the same way: header.payload.signature, on the last two dots.
        let (message, signature) = token
            .rsplit_once('.')
            .ok_or(IdentityError::Malformed(ErrorKind::InvalidToken.into()))?;
        let (_, payload) = message
            .rsplit_once('.')
            .ok_or(IdentityError::Malformed(ErrorKind::InvalidToken.into()))?;

        // jku / x5u / jwk / x5c are deliberately never read: keys come from the config only.
        let found = header.kid.as_deref().and_then(|kid| {
            self.keys
                .get(kid)
                .cloned()
                .or_else(|| self.jwks.as_ref().and_then(|j| j.get(kid)))
        });
        let kid = match (&header.kid, &found) {
            (None, _) => KidCheck::Missing,
            (Some(_), None) => KidCheck::Unknown,
            (Some(_), Some(_)) => KidCheck::Known,
        };
        // No key: the same verification against a stand-in of the header's algorithm.
        let key: &VerifyKey = match &found {
            Some(key) => key.as_ref(),
            None => self.stand_ins.for_alg(header.alg),
        };
        // Always under the key's pinned algorithm, never the header's.
        let signature = key.signature_matches(message, signature);
        let claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|json| serde_json::from_slice::<Claims>(&json).ok())
            .ok_or("shape")
            .map(|claims| {
                let kid = header.kid.as_deref().unwrap_or_default();
                self.claim_checks(claims, key.allows_non_expiring(), kid, now)
            });
        Ok(Checks {
            kid,
            alg_matches: header.alg == key.algorithm(),
            no_crit: header.crit.is_none(),
            signature,
            claims,
        })
    }

    fn claim_checks(
        &self,
        claims: Claims,
        allows_non_expiring: bool,
        kid: &str,
        now: u64,
    ) -> ClaimChecks {
        let aud = match &claims.aud {
            None => ClaimMatch::Absent,
            Some(aud) if aud.contains(&self.audience) => ClaimMatch::Matches,
            Some(_) => ClaimMatch::Different,
        };
        let iss = match (&self.issuer, &claims.iss) {
            (None, _) => ClaimMatch::NotChecked,
            (Some(_), None) => ClaimMatch::Absent,
            (Some(want), Some(iss)) if iss.contains(want) => ClaimMatch::Matches,
            (Some(_), Some(_)) => ClaimMatch::Different,
        };
        // A token is valid while now < exp + skew.
        let expiry = match claims.exp {
            Some(exp) if now >= exp.saturating_add(self.skew_secs) => ExpiryCheck::Expired,
            Some(_) => ExpiryCheck::Valid,
            None if allows_non_expiring => ExpiryCheck::Valid,
            None => ExpiryCheck::Missing,
        };
        let future = |t: Option<u64>| t.is_some_and(|t| t > now.saturating_add(self.skew_secs));
        let started = !future(claims.nbf) && !future(claims.iat);
        ClaimChecks {
            aud,
            iss,
            expiry,
            started,
            principal: principal(claims, kid, self.use_window_max_secs),
        }
    }
}

/// The principal `claims` make, or which claim is malformed. `use_window_max_secs`: the default
/// and largest `max` of a use window.
fn principal(
    claims: Claims,
    kid: &str,
    use_window_max_secs: u64,
) -> Result<Principal, &'static str> {
    if claims.sub.is_empty() {
        return Err("empty sub");
    }
    if claims.role.is_empty() {
        return Err("empty role");
    }
    if claims.scope.is_empty() || claims.scope.len() > MAX_SCOPES {
        return Err("scope count");
    }
    let scopes = claims
        .scope
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "scope")?;
    let cip = match &claims.cip {
        None => None,
        Some(text) => Some(parse_cidr(text).ok_or("cip")?),
    };
    let (original, derived) = match &claims.rep {
        None => (true, true),
        Some(list) => {
            let mut o = false;
            let mut d = false;
            for r in list {
                match r.as_str() {
                    "original" => o = true,
                    "derived" => d = true,
                    _ => return Err("rep"),
                }
            }
            (o, d)
        }
    };
    let window = UseWindow::from_claims(
        claims.idle,
        claims.max,
        claims.bind,
        claims.exp,
        use_window_max_secs,
    )?;
    Ok(Principal {
        subject: claims.sub,
        role: claims.role,
        project: claims.project,
        scopes,
        cip,
        original,
        derived,
        jti: claims.jti,
        issued_at: claims.iat,
        kid: kid.to_owned(),
        expires_at: claims.exp,
        window,
    })
}

/// A CIDR (`127.0.0.2/32`) or a bare address (a host network). IPv4-mapped IPv6 is matched as
/// IPv4, like the client address it is compared with.
fn parse_cidr(text: &str) -> Option<IpNet> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    text.parse::<IpAddr>()
        .ok()
        .map(|ip| IpNet::from(ip.to_canonical()))
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prefix_scope_matches_on_a_segment_boundary_only() {
        let s = Scope::parse("local:a/").unwrap();
        assert!(s.admits("local", "a/x.jpg"));
        assert!(s.admits("local", "a/b/c"));
        assert!(!s.admits("local", "ab/x.jpg"));
        assert!(!s.admits("local", "a"));
        assert!(!s.admits("local", "A/x.jpg"));
        assert!(!s.admits("other", "a/x.jpg"));
    }

    #[test]
    fn exact_scope_matches_one_key_byte_for_byte() {
        let s = Scope::parse("local:exact/a/b.jpg").unwrap();
        assert!(s.admits("local", "a/b.jpg"));
        assert!(!s.admits("local", "a/b.jpg/"));
        assert!(!s.admits("local", "a/b.jpgx"));
        assert!(!s.admits("local", "a/B.jpg"));
    }

    #[test]
    fn source_scope_admits_the_whole_source() {
        let s = Scope::parse("local:").unwrap();
        assert!(s.admits("local", "anything/at/all"));
        assert!(!s.admits("locals", "x"));
    }

    #[test]
    fn malformed_scopes_are_refused() {
        assert_eq!(Scope::parse("local"), Err(ScopeError::NoSource));
        assert_eq!(Scope::parse(":a/"), Err(ScopeError::EmptySource));
        assert_eq!(Scope::parse("local:a"), Err(ScopeError::NotAFolder));
        assert_eq!(Scope::parse("local:exact/"), Err(ScopeError::EmptyExact));
        assert_eq!(
            Scope::parse("local:exact/a").unwrap().to_string(),
            "local:exact/a"
        );
    }

    #[test]
    fn cip_accepts_cidrs_and_bare_addresses() {
        assert_eq!(
            parse_cidr("127.0.0.2/32"),
            Some("127.0.0.2/32".parse().unwrap())
        );
        assert_eq!(
            parse_cidr("10.1.2.3/8"),
            Some("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(parse_cidr("::1"), Some("::1/128".parse().unwrap()));
        assert_eq!(parse_cidr("nope"), None);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod clock_tests {
    use super::*;
    use crate::config::{KeyAlg, KeyConfig, KeyMaterial, Secret};
    use std::time::Duration;

    const SECRET: &str = "unit-test-hs256-secret-0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn identity(dir: &std::path::Path) -> Identity {
        identity_with(dir, false)
    }

    /// The test identity, its one key allowing tokens without `exp` or not.
    fn identity_with(dir: &std::path::Path, allow_non_expiring: bool) -> Identity {
        let config = IdentityConfig {
            audience: "bucketgate".into(),
            issuer: None,
            clock_skew: Duration::from_secs(30),
            cookie_name: "s".into(),
            keys: vec![KeyConfig {
                kid: "k".into(),
                alg: KeyAlg::Hs256,
                material: KeyMaterial::Hs256(Secret::new(SECRET.into())),
                private_key: None,
                allow_non_expiring,
            }],
            jwks: None,
            use_window_max: Duration::from_secs(3600),
        };
        Identity::new(&config, Arc::new(Revocations::load(dir).unwrap())).unwrap()
    }

    /// A use from 127.0.0.1 through `windows`.
    fn from_1(windows: &UseWindows) -> TokenUse<'_> {
        TokenUse {
            client: "127.0.0.1".parse().unwrap(),
            windows,
        }
    }

    fn token(claims: serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("k".into());
        let mut base =
            serde_json::json!({"sub": "a", "aud": "bucketgate", "scope": ["l:"], "role": "owner"});
        for (k, v) in claims.as_object().unwrap() {
            base[k] = v.clone();
        }
        jsonwebtoken::encode(
            &header,
            &base,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn exp_is_valid_until_exp_plus_skew_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        let t = token(serde_json::json!({"exp": NOW}));
        assert!(id.verify_cached(&t, NOW + 29).is_ok());
        assert!(matches!(
            id.verify_cached(&t, NOW + 30),
            Err(IdentityError::Expired)
        ));
    }

    /// Revocation is the store's answer after verification: `verify` asks it (a revoked jti, a
    /// subject's tokens issued before a time, one without `iat`), `verify_cached` (no I/O) does
    /// not.
    #[tokio::test]
    async fn verify_asks_the_revocation_store_after_the_signature_and_claims() {
        use revocation::Revocation;
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        let w = UseWindows::memory();
        let t = token(serde_json::json!({"exp": NOW + 60, "jti": "j1", "iat": NOW}));
        assert!(id.verify(&t, NOW, from_1(&w)).await.is_ok());
        id.revocations()
            .revoke(Revocation::Token { jti: "j1".into() })
            .await
            .unwrap();
        assert!(matches!(
            id.verify(&t, NOW, from_1(&w)).await,
            Err(IdentityError::Revoked)
        ));
        assert!(
            id.verify_cached(&t, NOW).is_ok(),
            "no store call without I/O"
        );
        id.revocations()
            .revoke(Revocation::Subject {
                sub: "a".into(),
                issued_before: NOW + 1,
            })
            .await
            .unwrap();
        let newer = token(serde_json::json!({"exp": NOW + 60, "iat": NOW + 1}));
        let older = token(serde_json::json!({"exp": NOW + 60, "iat": NOW}));
        let no_iat = token(serde_json::json!({"exp": NOW + 60}));
        assert!(id.verify(&newer, NOW + 1, from_1(&w)).await.is_ok());
        for t in [older, no_iat] {
            assert!(matches!(
                id.verify(&t, NOW + 1, from_1(&w)).await,
                Err(IdentityError::Revoked)
            ));
        }
    }

    /// `token` with its signature replaced by one made with another secret.
    fn forged(claims: serde_json::Value, kid: &str) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(kid.into());
        let good = token(claims);
        let payload = good.split('.').nth(1).unwrap();
        let other = jsonwebtoken::encode(
            &header,
            &serde_json::json!({}),
            &jsonwebtoken::EncodingKey::from_secret(b"not-the-configured-secret-0123456789"),
        )
        .unwrap();
        let mut parts = other.split('.');
        let (h, _, sig) = (parts.next().unwrap(), parts.next(), parts.next().unwrap());
        format!("{h}.{payload}.{sig}")
    }

    #[test]
    fn bad_signature_on_an_expired_token_still_has_every_claim_checked() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        let claims = serde_json::json!({"exp": NOW, "jti": "j1"});
        let later = NOW + 100;

        // A good signature on an expired token.
        let signed = id.checks(&token(claims.clone()), later).unwrap();
        assert!(signed.signature);
        assert_eq!(signed.claims.as_ref().unwrap().expiry, ExpiryCheck::Expired);
        let expired = signed.decide().unwrap_err();
        assert!(matches!(expired, IdentityError::Expired), "{expired:?}");

        // A bad signature on the same claims: the claims were parsed and checked all the same.
        let bad = forged(claims, "k");
        let checks = id.checks(&bad, later).unwrap();
        assert_eq!(checks.kid, KidCheck::Known);
        assert!(checks.alg_matches && checks.no_crit);
        assert!(!checks.signature, "the forged signature verified");
        // The claims were parsed despite the signature.
        let claim_checks = checks.claims.as_ref().unwrap();
        assert_eq!(claim_checks.expiry, ExpiryCheck::Expired);
        assert_eq!(claim_checks.aud, ClaimMatch::Matches);
        assert!(claim_checks.started);
        assert!(claim_checks.principal.is_ok());
        // The signature is what is reported: the generic 401, never `token_expired` (the
        // status map's own test, in `pipeline::error`).
        let rejected = checks.decide().unwrap_err();
        assert!(
            matches!(rejected, IdentityError::Rejected(_)),
            "{rejected:?}"
        );
    }

    #[test]
    fn every_claim_is_checked_even_when_an_earlier_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        let bad = forged(
            serde_json::json!({
                "aud": "someone-else", "exp": NOW, "nbf": NOW + 500, "scope": ["local"],
            }),
            "k",
        );
        let checks = id.checks(&bad, NOW + 100).unwrap();
        assert!(!checks.signature);
        let c = checks.claims.as_ref().unwrap();
        assert_eq!(c.aud, ClaimMatch::Different);
        assert_eq!(c.iss, ClaimMatch::NotChecked);
        assert_eq!(c.expiry, ExpiryCheck::Expired);
        assert!(!c.started);
        assert!(matches!(c.principal, Err("scope")));
        assert!(matches!(checks.decide(), Err(IdentityError::Rejected(_))));
        // With a good signature the first claim refusal in the order is reported.
        let signed = token(serde_json::json!({"aud": "someone-else", "exp": NOW}));
        assert!(matches!(
            id.verify_cached(&signed, NOW + 100),
            Err(IdentityError::Rejected(_))
        ));
    }

    #[test]
    fn unknown_or_missing_kid_is_still_verified_and_its_claims_checked() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("nope".into());
        let claims = serde_json::json!({
            "sub": "a", "aud": "bucketgate", "scope": ["l:"], "role": "owner", "exp": NOW,
        });
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let unknown = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        let checks = id.checks(&unknown, NOW + 100).unwrap();
        assert_eq!(checks.kid, KidCheck::Unknown);
        assert!(
            !checks.signature,
            "a stand-in key verified a real signature"
        );
        assert_eq!(checks.claims.as_ref().unwrap().expiry, ExpiryCheck::Expired);
        assert!(matches!(checks.decide(), Err(IdentityError::UnknownKid)));

        header.kid = None;
        let no_kid = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        let checks = id.checks(&no_kid, NOW).unwrap();
        assert_eq!(checks.kid, KidCheck::Missing);
        assert!(checks.claims.is_ok());
        assert!(matches!(checks.decide(), Err(IdentityError::MissingKid)));
    }

    #[test]
    fn algorithm_mismatch_is_verified_under_the_pinned_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        // An ES256 header under the HS256 key, with an HS256 MAC over it: still refused.
        let b64 = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let message = format!(
            "{}.{}",
            b64(serde_json::json!({"alg": "ES256", "kid": "k"})),
            b64(
                serde_json::json!({"sub": "a", "aud": "bucketgate", "scope": ["l:"],
                "role": "owner", "exp": NOW + 600})
            )
        );
        let mac = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            jsonwebtoken::Algorithm::HS256,
        )
        .unwrap();
        let checks = id.checks(&format!("{message}.{mac}"), NOW).unwrap();
        assert!(!checks.alg_matches);
        assert!(checks.signature, "verified under the key's own algorithm");
        assert!(checks.claims.is_ok());
        assert!(matches!(
            checks.decide(),
            Err(IdentityError::AlgorithmMismatch)
        ));
    }

    #[test]
    fn nbf_is_valid_from_nbf_minus_skew() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        let t = token(serde_json::json!({"exp": NOW + 600, "nbf": NOW + 100}));
        assert!(id.verify_cached(&t, NOW + 70).is_ok());
        assert!(matches!(
            id.verify_cached(&t, NOW + 69),
            Err(IdentityError::NotYetValid)
        ));
    }

    #[test]
    fn window_claims_are_checked_with_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        let ok = token(serde_json::json!({"exp": NOW + 60, "idle": 600, "max": 3600}));
        let p = id.verify_cached(&ok, NOW).unwrap();
        let w = p.use_window().unwrap();
        assert_eq!((w.idle_secs(), w.max_secs(), w.binds()), (600, 3600, true));
        // max defaults to use_window_max_secs (3600 here); bind may be turned off.
        let d = token(serde_json::json!({"exp": NOW + 60, "idle": 60, "bind": false}));
        let w = id.verify_cached(&d, NOW).unwrap().use_window().unwrap();
        assert_eq!((w.max_secs(), w.binds()), (3600, false));
        assert!(
            id.verify_cached(&token(serde_json::json!({"exp": NOW + 60})), NOW)
                .unwrap()
                .use_window()
                .is_none()
        );
        for (what, claims) in [
            ("idle 0", serde_json::json!({"exp": NOW + 60, "idle": 0})),
            (
                "negative idle",
                serde_json::json!({"exp": NOW + 60, "idle": -5}),
            ),
            (
                "fractional idle",
                serde_json::json!({"exp": NOW + 60, "idle": 1.5}),
            ),
            (
                "idle as text",
                serde_json::json!({"exp": NOW + 60, "idle": "600"}),
            ),
            (
                "idle above max",
                serde_json::json!({"exp": NOW + 60, "idle": 601, "max": 600}),
            ),
            (
                "max above the cap",
                serde_json::json!({"exp": NOW + 60, "idle": 60, "max": 3601}),
            ),
            (
                "max without idle",
                serde_json::json!({"exp": NOW + 60, "max": 600}),
            ),
            (
                "bind without idle",
                serde_json::json!({"exp": NOW + 60, "bind": true}),
            ),
            (
                "bind not a boolean",
                serde_json::json!({"exp": NOW + 60, "idle": 60, "bind": 1}),
            ),
        ] {
            let r = id.verify_cached(&token(claims), NOW);
            assert!(
                matches!(r, Err(IdentityError::BadClaims(_))),
                "{what}: {r:?}"
            );
        }
        // Even past exp: a malformed window is a bad token, never `token_expired`.
        let r = id.verify_cached(
            &token(serde_json::json!({"exp": NOW, "idle": 0})),
            NOW + 100,
        );
        assert!(matches!(r, Err(IdentityError::BadClaims(_))), "{r:?}");
    }

    #[test]
    fn idle_without_exp_is_refused_even_under_a_non_expiring_key() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity_with(dir.path(), true);
        assert!(id.verify_cached(&token(serde_json::json!({})), NOW).is_ok());
        let r = id.verify_cached(&token(serde_json::json!({"idle": 60})), NOW);
        assert!(
            matches!(r, Err(IdentityError::BadClaims("idle without exp"))),
            "{r:?}"
        );
    }

    /// `token_expired` is reported only for a token whose every other check holds: an expired
    /// token that is also malformed or not yet valid is the generic refusal.
    #[test]
    fn expired_is_reported_only_after_every_other_check() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        let later = NOW + 100;
        let expired = token(serde_json::json!({"exp": NOW}));
        assert!(matches!(
            id.verify_cached(&expired, later),
            Err(IdentityError::Expired)
        ));
        for (what, claims) in [
            (
                "bad scope",
                serde_json::json!({"exp": NOW, "scope": ["local"]}),
            ),
            ("bad cip", serde_json::json!({"exp": NOW, "cip": "x"})),
            (
                "nbf after now",
                serde_json::json!({"exp": NOW, "nbf": later + 100}),
            ),
        ] {
            let r = id.verify_cached(&token(claims), later);
            assert!(
                !matches!(r, Err(IdentityError::Expired)) && r.is_err(),
                "{what}: {r:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_window_token_is_accepted_past_exp_only_while_its_window_is_live() {
        use revocation::Revocation;
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        let w = UseWindows::memory();
        let t = token(serde_json::json!({"exp": NOW + 60, "idle": 100, "max": 1000, "jti": "w1"}));
        // Before exp, first use: started. Past exp + skew, within idle: accepted by the window,
        // while verify_cached (no store) refuses it.
        assert!(id.verify(&t, NOW, from_1(&w)).await.is_ok());
        assert!(id.verify(&t, NOW + 95, from_1(&w)).await.is_ok());
        assert!(id.verify(&t, NOW + 195, from_1(&w)).await.is_ok());
        assert!(matches!(
            id.verify_cached(&t, NOW + 195),
            Err(IdentityError::Expired)
        ));
        let elsewhere = TokenUse {
            client: "127.0.0.2".parse().unwrap(),
            windows: &w,
        };
        assert!(matches!(
            id.verify(&t, NOW + 196, elsewhere).await,
            Err(IdentityError::WindowElsewhere)
        ));
        // An idle gap longer than idle ends it.
        assert!(matches!(
            id.verify(&t, NOW + 296, from_1(&w)).await,
            Err(IdentityError::WindowLapsed(Lapse::Idle))
        ));
        // Never used before exp: expired, like any token.
        let unused = token(serde_json::json!({"exp": NOW + 60, "idle": 100}));
        assert!(matches!(
            id.verify(&unused, NOW + 90, from_1(&w)).await,
            Err(IdentityError::Expired)
        ));
        // Revocation ends a live window at once; a lapsed one still answers expired.
        let r = token(serde_json::json!({"exp": NOW + 60, "idle": 100, "jti": "w2"}));
        assert!(id.verify(&r, NOW, from_1(&w)).await.is_ok());
        id.revocations()
            .revoke(Revocation::Token { jti: "w2".into() })
            .await
            .unwrap();
        assert!(matches!(
            id.verify(&r, NOW + 90, from_1(&w)).await,
            Err(IdentityError::Revoked)
        ));
        assert!(
            matches!(
                id.verify(&r, NOW + 150, from_1(&w)).await,
                Err(IdentityError::WindowLapsed(Lapse::Idle))
            ),
            "the refused use at +90 was not recorded"
        );
    }
}
