//! Server-side SAML sessions: an opaque random id (the `__Host-bucketgate-session` cookie) ->
//! the session's [`Principal`] and the user's STS credentials.
//!
//! This module owns the store and its bounds. It knows nothing of HTTP: the cookie is parsed and
//! written by `pipeline/auth.rs` and `pipeline/identity.rs`.
//!
//! The store is the async trait [`SessionStore`]; [`AnySessionStore`] dispatches to an
//! implementation: [`MemorySessions`], the in-process map, or a shared store this module cannot
//! name (Redis, `state::redis::sessions`, which depends on this module) behind the object-safe
//! [`SharedSessionStore`], so the pipeline does not change.
//!
//! - Ids are 32 bytes from `ring::rand::SystemRandom`, sent as 64 lowercase hex digits. The map
//!   is keyed by the SHA-256 of the id, so the store (or a dump of it) holds no usable cookie.
//! - A session ends when its credentials end (or earlier, at the IdP's SessionNotOnOrAfter);
//!   an expired session is removed when it is next looked up, and by [`SessionStore::sweep`].
//! - The store is bounded: when full, expired sessions are swept first, and if it is still full
//!   the new login is refused (503) rather than evicting someone else's session.
//! - The store outlives config snapshots (it lives beside the pipeline), so a reload keeps
//!   everyone signed in.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

use crate::credentials::sts::SessionCredentials;
use crate::identity::Principal;

/// Bytes of randomness in a session id.
const ID_BYTES: usize = 32;
/// Hex digits of a session id as sent in the cookie.
pub const ID_HEX_LEN: usize = ID_BYTES * 2;

/// Why a session could not be created or used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Not a session id we could have issued, or one that was logged out or swept.
    #[error("unknown session")]
    Unknown,
    #[error("session has expired")]
    Expired,
    #[error("the session store is full")]
    Full,
    #[error("the system random number generator failed")]
    Random,
    /// The shared store cannot answer (Redis down, or an unusable answer) and no local copy
    /// of the session could stand in (fail closed: 503).
    #[error("the shared session store is unavailable")]
    Unavailable,
}

/// One signed-in user.
pub struct Session {
    principal: Principal,
    credentials: SessionCredentials,
    expires: SystemTime,
}

impl Session {
    /// A session ending at `expires` (never later than the credentials).
    pub fn new(principal: Principal, credentials: SessionCredentials, expires: SystemTime) -> Self {
        let expires = expires.min(credentials.expires);
        Session {
            principal,
            credentials,
            expires,
        }
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The user's own STS credentials, for sources with `credentials = "saml"`.
    pub fn credentials(&self) -> &aws_credential_types::Credentials {
        &self.credentials.credentials
    }

    /// The user's credentials with the assumed-role ARN they carry, for reads on their behalf.
    pub fn user_credentials(&self) -> crate::credentials::UserCredentials<'_> {
        self.credentials.user()
    }

    pub fn expires(&self) -> SystemTime {
        self.expires
    }

    /// Everything STS returned (for a store that must write the session out, sealed).
    pub fn sts(&self) -> &SessionCredentials {
        &self.credentials
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("subject", &self.principal.subject())
            .field("role", &self.principal.role())
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// A session id as sent in the cookie. Never printed.
pub struct SessionId(String);

impl SessionId {
    /// A fresh random id and its store key (the SHA-256 of its bytes).
    pub fn generate(rng: &SystemRandom) -> Result<(SessionId, [u8; 32]), SessionError> {
        let mut raw = [0u8; ID_BYTES];
        rng.fill(&mut raw).map_err(|_| SessionError::Random)?;
        Ok((SessionId(hex::encode(raw)), key_of(&raw)))
    }

    /// The cookie value: 64 lowercase hex digits.
    pub fn cookie_value(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

type Key = [u8; 32];

/// Where sessions live. Every method is async so that a shared store can do I/O.
///
/// What a shared implementation must store, per session, keyed by the SHA-256 of the id (never
/// the id itself): the [`Principal`] (it is not serializable today: store its parts, subject,
/// gateway role, project, the project's scopes and the expiry, and rebuild it with
/// `Principal::saml_session`), the user's STS credentials (access key id, secret key, session
/// token, expiry, assumed-role ARN) and the session's own expiry (an entry TTL). The
/// credentials are the user's AWS access: they must be encrypted before they leave the process
/// (with a key from the config, never stored beside them); how, is the Redis issue's decision.
/// Bounds: an implementation refuses a login with [`SessionError::Full`] rather than evicting
/// a live session, and never answers an expired one.
pub trait SessionStore: Send + Sync {
    /// Store `session` under a fresh random id.
    fn create(
        &self,
        session: Session,
        now: SystemTime,
    ) -> impl Future<Output = Result<SessionId, SessionError>> + Send;

    /// The live session for a cookie value. An expired one is removed.
    fn get(
        &self,
        cookie: &str,
        now: SystemTime,
    ) -> impl Future<Output = Result<Arc<Session>, SessionError>> + Send;

    /// End the session of a cookie value (logout, or rotation at login). True if there was one.
    fn remove(&self, cookie: &str) -> impl Future<Output = bool> + Send;

    /// Drop every expired session; returns how many were dropped (a store that expires entries
    /// by itself returns 0).
    fn sweep(&self, now: SystemTime) -> impl Future<Output = usize> + Send;
}

/// A boxed future, for stores behind `dyn`.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`SessionStore`] for a store kept outside the process, which this module cannot name (it
/// lives in `state::redis` and depends on this module): object-safe, one boxed future per call.
/// The same contract as [`SessionStore`]; in addition, [`SessionError::Unavailable`] when the
/// store cannot answer (never a guess).
pub trait SharedSessionStore: Send + Sync {
    fn create(
        &self,
        session: Session,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<SessionId, SessionError>>;
    fn get<'a>(
        &'a self,
        cookie: &'a str,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<Arc<Session>, SessionError>>;
    fn remove<'a>(&'a self, cookie: &'a str) -> BoxFuture<'a, bool>;
    fn sweep(&self, now: SystemTime) -> BoxFuture<'_, usize>;
}

/// The configured session store.
pub enum AnySessionStore {
    Memory(MemorySessions),
    /// Shared by every node (Redis).
    Shared(Box<dyn SharedSessionStore>),
}

impl AnySessionStore {
    /// The in-process store of at most `capacity` sessions.
    pub fn memory(capacity: usize) -> AnySessionStore {
        AnySessionStore::Memory(MemorySessions::new(capacity))
    }
}

impl SessionStore for AnySessionStore {
    async fn create(&self, session: Session, now: SystemTime) -> Result<SessionId, SessionError> {
        match self {
            AnySessionStore::Memory(m) => m.create(session, now),
            AnySessionStore::Shared(s) => s.create(session, now).await,
        }
    }

    async fn get(&self, cookie: &str, now: SystemTime) -> Result<Arc<Session>, SessionError> {
        match self {
            AnySessionStore::Memory(m) => m.get(cookie, now),
            AnySessionStore::Shared(s) => s.get(cookie, now).await,
        }
    }

    async fn remove(&self, cookie: &str) -> bool {
        match self {
            AnySessionStore::Memory(m) => m.remove(cookie),
            AnySessionStore::Shared(s) => s.remove(cookie).await,
        }
    }

    async fn sweep(&self, now: SystemTime) -> usize {
        match self {
            AnySessionStore::Memory(m) => m.sweep(now),
            AnySessionStore::Shared(s) => s.sweep(now).await,
        }
    }
}

/// Every live session, bounded, in this process (lost at restart, not shared between nodes).
pub struct MemorySessions {
    sessions: RwLock<HashMap<Key, Arc<Session>>>,
    capacity: usize,
    rng: SystemRandom,
}

impl MemorySessions {
    pub fn new(capacity: usize) -> MemorySessions {
        MemorySessions {
            sessions: RwLock::new(HashMap::new()),
            capacity: capacity.max(1),
            rng: SystemRandom::new(),
        }
    }

    /// Store `session` under a fresh random id.
    pub fn create(&self, session: Session, now: SystemTime) -> Result<SessionId, SessionError> {
        let (id, key) = SessionId::generate(&self.rng)?;
        let mut sessions = self
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if sessions.len() >= self.capacity {
            sessions.retain(|_, s| s.expires > now);
            if sessions.len() >= self.capacity {
                return Err(SessionError::Full);
            }
        }
        sessions.insert(key, Arc::new(session));
        Ok(id)
    }

    /// The live session for a cookie value. An expired one is removed.
    pub fn get(&self, cookie: &str, now: SystemTime) -> Result<Arc<Session>, SessionError> {
        let key = parse(cookie).ok_or(SessionError::Unknown)?;
        let session = self
            .sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned()
            .ok_or(SessionError::Unknown)?;
        if session.expires > now {
            return Ok(session);
        }
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        Err(SessionError::Expired)
    }

    /// End the session of a cookie value (logout, or rotation at login). True if there was one.
    pub fn remove(&self, cookie: &str) -> bool {
        let Some(key) = parse(cookie) else {
            return false;
        };
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key)
            .is_some()
    }

    /// Drop every expired session; returns how many were dropped.
    pub fn sweep(&self, now: SystemTime) -> usize {
        let mut sessions = self
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let before = sessions.len();
        sessions.retain(|_, s| s.expires > now);
        before - sessions.len()
    }

    pub fn len(&self) -> usize {
        self.sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The map key of a raw id: its SHA-256.
fn key_of(raw: &[u8; ID_BYTES]) -> Key {
    let d = digest(&SHA256, raw);
    let mut key = [0u8; 32];
    key.copy_from_slice(d.as_ref());
    key
}

/// A cookie value -> store key (the SHA-256 of the id), if it has the shape of an id we issue
/// (64 lowercase hex digits).
pub fn cookie_key(cookie: &str) -> Option<Key> {
    parse(cookie)
}

/// A cookie value -> map key, if it has the shape of an id we issue (64 lowercase hex digits).
fn parse(cookie: &str) -> Option<Key> {
    let bytes = cookie.as_bytes();
    if bytes.len() != ID_HEX_LEN {
        return None;
    }
    let mut raw = [0u8; ID_BYTES];
    for (out, pair) in raw.iter_mut().zip(bytes.chunks_exact(2)) {
        *out = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(key_of(&raw))
}

fn nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_lowercase_hex_and_parse_back_to_their_key() {
        let raw = [0xabu8; ID_BYTES];
        let id = hex::encode(raw);
        assert_eq!(id.len(), ID_HEX_LEN);
        assert_eq!(parse(&id), Some(key_of(&raw)));
        assert_eq!(parse(&id.to_uppercase()), None);
        assert_eq!(parse(&id[1..]), None);
        assert_eq!(parse(&format!("{}g", &id[1..])), None);
    }

    fn session(expires: SystemTime) -> Session {
        let credentials = SessionCredentials {
            credentials: aws_credential_types::Credentials::new("ASIA1", "s", None, None, "t"),
            expires,
            assumed_role_arn: "arn:aws:sts::123456789012:assumed-role/R/u".into(),
            subject: None,
        };
        let principal = Principal::saml_session(
            credentials.assumed_role_arn.clone(),
            "annotator".into(),
            "p".into(),
            Vec::new(),
            0,
        );
        Session::new(principal, credentials, expires)
    }

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_expires() {
        let now = SystemTime::now();
        let hour = std::time::Duration::from_secs(3600);
        let store = MemorySessions::new(10);
        let id = store.create(session(now + hour), now).unwrap();
        assert_eq!(id.cookie_value().len(), ID_HEX_LEN);
        let found = store.get(id.cookie_value(), now).unwrap();
        assert_eq!(found.principal().role(), "annotator");
        assert_eq!(found.credentials().access_key_id(), "ASIA1");
        assert_eq!(
            store.get(&"0".repeat(ID_HEX_LEN), now).err(),
            Some(SessionError::Unknown)
        );
        assert_eq!(
            store.get(id.cookie_value(), now + hour).err(),
            Some(SessionError::Expired)
        );
        assert_eq!(
            store.get(id.cookie_value(), now).err(),
            Some(SessionError::Unknown)
        );
        assert!(
            store.is_empty(),
            "an expired session is dropped when looked up"
        );
    }

    #[test]
    fn a_session_never_outlives_its_credentials_and_ends_at_logout() {
        let now = SystemTime::now();
        let s = session(now + std::time::Duration::from_secs(60));
        let later = Session::new(
            s.principal.clone(),
            s.credentials.clone(),
            now + std::time::Duration::from_secs(3600),
        );
        assert_eq!(later.expires(), s.expires());
        let store = MemorySessions::new(10);
        let id = store.create(later, now).unwrap();
        assert!(store.remove(id.cookie_value()));
        assert!(!store.remove(id.cookie_value()));
        assert!(store.get(id.cookie_value(), now).is_err());
    }

    #[test]
    fn a_full_store_drops_expired_sessions_then_refuses() {
        let now = SystemTime::now();
        let minute = std::time::Duration::from_secs(60);
        let store = MemorySessions::new(2);
        store.create(session(now + minute), now).unwrap();
        let live = store.create(session(now + minute * 10), now).unwrap();
        // The first has expired by now + 2 min: it makes room.
        let later = now + minute * 2;
        store.create(session(later + minute), later).unwrap();
        assert_eq!(
            store.create(session(later + minute), later).err(),
            Some(SessionError::Full)
        );
        assert!(
            store.get(live.cookie_value(), later).is_ok(),
            "nobody was evicted"
        );
        assert_eq!(store.sweep(now + minute * 20), 2);
    }
}
