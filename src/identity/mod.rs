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
//! - `aud` must contain the configured audience, `iss` must equal the issuer when one is set;
//! - `exp` is required unless the key allows non-expiring tokens; `exp`, `nbf` and `iat` are
//!   checked against an injected clock with the configured skew, after the signature;
//! - `scope` (non-empty), `role` and `sub` are required; malformed claims refuse the token.

pub mod jwks;
pub mod keys;
pub mod revocation;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde::Deserialize;

use crate::config::IdentityConfig;
use crate::config::defaults::MAX_TOKEN_BYTES;
use keys::VerifyKey;
use revocation::Revocations;

/// Why a token was not accepted. Every variant but [`IdentityError::AmbiguousToken`] is a 401
/// with one identical body; the variant is for logs and `explain` only.
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
    /// A SAML session cookie that names no live session (expired, logged out, or never ours).
    /// Still a 401, but its body tells the UI to sign in again.
    #[error("SAML session expired or unknown")]
    SessionExpired,
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

/// What a scope admits within its source.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ScopeRule {
    /// `source:`: every key.
    Source,
    /// `source:prefix/`: keys starting with the prefix, which ends with `/` (a segment boundary).
    Prefix(String),
    /// `source:exact/key`: that one key.
    Exact(String),
}

/// `source:`, `source:prefix/` or `source:exact/key`, matched on the decoded key, byte for byte
/// (no case folding, no normalization). Used by token scopes and `[projects]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    source: String,
    rule: ScopeRule,
}

/// Why a scope string is malformed (phrased to follow the scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("has no `:` after the source name")]
    NoSource,
    #[error("has an empty source name")]
    EmptySource,
    #[error("names no key after `exact/`")]
    EmptyExact,
    #[error("is a prefix that does not end with `/`")]
    NotAFolder,
}

impl Scope {
    pub fn parse(text: &str) -> Result<Scope, ScopeError> {
        let (source, rest) = text.split_once(':').ok_or(ScopeError::NoSource)?;
        if source.is_empty() || source.contains('/') {
            return Err(ScopeError::EmptySource);
        }
        let rule = if rest.is_empty() {
            ScopeRule::Source
        } else if let Some(key) = rest.strip_prefix("exact/") {
            if key.is_empty() {
                return Err(ScopeError::EmptyExact);
            }
            ScopeRule::Exact(key.to_owned())
        } else if rest.ends_with('/') {
            ScopeRule::Prefix(rest.to_owned())
        } else {
            return Err(ScopeError::NotAFolder);
        };
        Ok(Scope {
            source: source.to_owned(),
            rule,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether this scope admits `key` (already decoded) in `source`.
    pub fn admits(&self, source: &str, key: &str) -> bool {
        self.source == source
            && match &self.rule {
                ScopeRule::Source => true,
                // The prefix ends with `/`, so `a/` never admits `ab/...`.
                ScopeRule::Prefix(prefix) => key.starts_with(prefix.as_str()),
                ScopeRule::Exact(exact) => key == exact,
            }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            ScopeRule::Source => write!(f, "{}:", self.source),
            ScopeRule::Prefix(p) => write!(f, "{}:{p}", self.source),
            ScopeRule::Exact(k) => write!(f, "{}:exact/{k}", self.source),
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
    kid: String,
    expires_at: Option<u64>,
}

/// The `kid` a SAML session's principal reports (it was not made from a token).
pub const SAML_SESSION_KID: &str = "saml-session";

impl Principal {
    /// The principal of a SAML session (built by `saml/sp.rs` after STS answered): `subject` is
    /// the identity STS returned (the assumed-role ARN), `role` the gateway role the assumed AWS
    /// role maps to, and `scopes` the sources and prefixes of `project`. Not bound to a client
    /// address; may see every representation its role allows; ends at `expires_at` (unix s).
    pub fn saml_session(
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
            kid: SAML_SESSION_KID.to_owned(),
            expires_at: Some(expires_at),
        }
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
}

/// The claims we read; unknown claims are ignored. `aud` and `iss` are checked by jsonwebtoken.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: Option<u64>,
    nbf: Option<u64>,
    iat: Option<u64>,
    jti: Option<String>,
    scope: Vec<String>,
    role: String,
    project: Option<String>,
    cip: Option<String>,
    rep: Option<Vec<String>>,
}

/// Most scopes one token may carry.
const MAX_SCOPES: usize = 256;

/// Live token verification, built from one config snapshot.
pub struct Identity {
    keys: HashMap<String, Arc<VerifyKey>>,
    jwks: Option<jwks::Jwks>,
    skew_secs: u64,
    cookie_name: String,
    revocations: Arc<Revocations>,
}

/// Why identity could not be set up (a key that validation accepted but the JWT library did
/// not, or a JWKS client that cannot be built).
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
}

impl Identity {
    pub fn new(
        config: &IdentityConfig,
        revocations: Arc<Revocations>,
    ) -> Result<Identity, IdentitySetupError> {
        let mut map = HashMap::new();
        for key in &config.keys {
            let vk =
                VerifyKey::from_config(key, config).map_err(|source| IdentitySetupError::Key {
                    kid: key.kid.clone(),
                    source,
                })?;
            map.insert(key.kid.clone(), Arc::new(vk));
        }
        let jwks = match &config.jwks {
            Some(j) => Some(jwks::Jwks::new(j, config)?),
            None => None,
        };
        Ok(Identity {
            keys: map,
            jwks,
            skew_secs: config.clock_skew.as_secs(),
            cookie_name: config.cookie_name.clone(),
            revocations,
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
    /// is unknown and a JWKS is configured.
    pub async fn verify(&self, token: &str, now: u64) -> Result<Principal, IdentityError> {
        match self.verify_cached(token, now) {
            Err(IdentityError::UnknownKid) => match &self.jwks {
                Some(jwks) if jwks.refresh_for_unknown_kid().await => {
                    self.verify_cached(token, now)
                }
                _ => Err(IdentityError::UnknownKid),
            },
            other => other,
        }
    }

    /// Verify with the keys known now: no I/O.
    pub fn verify_cached(&self, token: &str, now: u64) -> Result<Principal, IdentityError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(IdentityError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(IdentityError::Malformed)?;
        if header.crit.is_some() {
            return Err(IdentityError::CriticalHeader);
        }
        // jku / x5u / jwk / x5c are deliberately never read: keys come from the config only.
        let kid = header.kid.as_deref().ok_or(IdentityError::MissingKid)?;
        let key = match self.keys.get(kid) {
            Some(key) => Arc::clone(key),
            None => self
                .jwks
                .as_ref()
                .and_then(|j| j.get(kid))
                .ok_or(IdentityError::UnknownKid)?,
        };
        if header.alg != key.algorithm() {
            return Err(IdentityError::AlgorithmMismatch);
        }
        let claims: Claims = key.decode(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::Json(_) => IdentityError::BadClaims("shape"),
            _ => IdentityError::Rejected(e),
        })?;
        // Time checks come after the signature, on every path, so their timing says nothing
        // about the MAC. A token is valid while now < exp + skew.
        match claims.exp {
            Some(exp) if now >= exp.saturating_add(self.skew_secs) => {
                return Err(IdentityError::Expired);
            }
            Some(_) => {}
            None if key.allows_non_expiring() => {}
            None => return Err(IdentityError::NoExpiry),
        }
        let future = |t: Option<u64>| t.is_some_and(|t| t > now.saturating_add(self.skew_secs));
        if future(claims.nbf) || future(claims.iat) {
            return Err(IdentityError::NotYetValid);
        }
        if self
            .revocations
            .is_revoked(claims.jti.as_deref(), &claims.sub, claims.iat)
        {
            return Err(IdentityError::Revoked);
        }
        principal(claims, kid)
    }
}

fn principal(claims: Claims, kid: &str) -> Result<Principal, IdentityError> {
    if claims.sub.is_empty() {
        return Err(IdentityError::BadClaims("empty sub"));
    }
    if claims.role.is_empty() {
        return Err(IdentityError::BadClaims("empty role"));
    }
    if claims.scope.is_empty() || claims.scope.len() > MAX_SCOPES {
        return Err(IdentityError::BadClaims("scope count"));
    }
    let scopes = claims
        .scope
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| IdentityError::BadClaims("scope"))?;
    let cip = match &claims.cip {
        None => None,
        Some(text) => Some(parse_cidr(text).ok_or(IdentityError::BadClaims("cip"))?),
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
                    _ => return Err(IdentityError::BadClaims("rep")),
                }
            }
            (o, d)
        }
    };
    Ok(Principal {
        subject: claims.sub,
        role: claims.role,
        project: claims.project,
        scopes,
        cip,
        original,
        derived,
        jti: claims.jti,
        kid: kid.to_owned(),
        expires_at: claims.exp,
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
                allow_non_expiring: false,
            }],
            jwks: None,
        };
        Identity::new(&config, Arc::new(Revocations::load(dir).unwrap())).unwrap()
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
}
