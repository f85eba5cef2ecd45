//! SAML sessions in Redis ([`RedisSessions`], a [`SharedSessionStore`]): a session created on
//! one node works on every node, and a logout on any node ends it everywhere at once.
//!
//! - Key: `{prefix}:v1:session:{hex SHA-256 of the session id}` (the id itself, the cookie, is
//!   never stored), with a TTL of the session's expiry (`SET ... PX ttl NX`).
//! - Value: the principal (subject, gateway role, project, scopes), the session's expiry and
//!   the user's STS credentials, as JSON sealed with AES-256-GCM under `[redis] seal_key`
//!   ([`super::seal`]: random nonce, key id and format version in the value, the Redis key as
//!   associated data). Redis never holds a usable credential, nor a session id.
//! - Every lookup asks Redis (one `GET`), so a logout on another node (a `DEL`) is seen by the
//!   very next request: there is no window in which a logged-out session still works while
//!   Redis answers. The answer is compared with the sealed bytes of this node's copy, and the
//!   copy reused when they are equal, so a lookup decrypts and parses only the first time.
//! - The local copy: each node keeps the sessions it created or looked up (at most `capacity`;
//!   past it an arbitrary copy is dropped, it is only a cache), each until its expiry, which
//!   is never later than its credentials. Only while Redis cannot answer does a copy stand in
//!   for Redis, so existing sessions keep working through an outage until their credentials
//!   expire; a session this node never saw gets [`SessionError::Unavailable`] (503).
//! - Redis down: a new login is refused ([`SessionError::Unavailable`], 503; the replay cache
//!   refuses it first anyway). A logout drops the local copy and leaves a tombstone: this node
//!   refuses the session from then on, and the `DEL` is retried at the first lookup that
//!   reaches Redis again and by every sweep, so other nodes see the logout as soon as Redis is
//!   back. Until then, other nodes' local copies still serve it (they cannot learn of it).
//! - A broken answer (wrong type, garbage, truncated, sealed for another Redis key) is handled
//!   as "Redis down" for that lookup: the local copy or 503, never an allow of something that
//!   was not a session this deployment sealed. A value sealed under another `seal_key` (what
//!   every session is after a change of it) is absent: the user signs in again (401), and the
//!   new session is sealed under the new key.
//! - A Redis that loses its data (restarted without persistence) ends every session: an absent
//!   key is the logout signal and cannot be told from a loss, so the local copies are not
//!   written back. Run Redis with persistence (`appendonly yes`) and `maxmemory-policy
//!   noeviction` (an eviction would end a live session; a full Redis refuses new logins, 503).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;
use ring::rand::SystemRandom;
use serde::{Deserialize, Serialize};

use super::saml_health::Degraded;
use super::seal::{OpenError, SealKey};
use super::{Redis, RedisFault};
use crate::credentials::sts::SessionCredentials;
use crate::identity::Principal;
use crate::saml::session::{
    BoxFuture, Session, SessionError, SessionId, SharedSessionStore, cookie_key,
};
use crate::scope::Scope;

/// The kind part of session keys.
const KIND: &str = "session";
/// This store in `/readyz`, and its fallback while Redis does not answer.
const STORE: &str = "saml sessions";
const FALLBACK: &str = "local copies; new logins refused";
/// The provider name the rebuilt credentials carry (as `credentials::sts` names its own).
const PROVIDER_NAME: &str = "bucketgate-sts";

type Key = [u8; 32];

/// Sessions in Redis, with a bounded local copy for outages (see the module doc).
pub struct RedisSessions {
    redis: Arc<Redis>,
    health: Degraded,
    seal: Arc<SealKey>,
    local: Mutex<Local>,
    capacity: usize,
    rng: SystemRandom,
}

#[derive(Default)]
struct Local {
    copies: HashMap<Key, Copy>,
    /// Sessions logged out here while Redis could not take the `DEL`: refused here, and
    /// deleted in Redis as soon as it answers.
    tombstones: HashSet<Key>,
}

struct Copy {
    /// The value as Redis holds it (to recognize an unchanged entry without opening it).
    sealed: Vec<u8>,
    session: Arc<Session>,
}

impl RedisSessions {
    /// Sessions in `redis`, sealed with `seal`, at most `capacity` local copies (and as many
    /// tombstones).
    pub fn new(redis: Arc<Redis>, seal: Arc<SealKey>, capacity: usize) -> RedisSessions {
        RedisSessions {
            redis,
            health: Degraded::new(STORE, FALLBACK),
            seal,
            local: Mutex::new(Local::default()),
            capacity: capacity.max(1),
            rng: SystemRandom::new(),
        }
    }

    /// This store's `/readyz` flag (shared with the replay cache).
    pub fn health(&self) -> &Degraded {
        &self.health
    }

    /// The Redis key of a session's store key.
    pub fn redis_key(&self, key: &Key) -> String {
        self.redis.key(KIND, &hex::encode(key))
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        // A poisoned lock still holds whole entries (each is one insert or remove).
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn keep(&self, key: Key, sealed: Vec<u8>, session: Arc<Session>, now: SystemTime) {
        let mut local = self.local();
        if local.copies.len() >= self.capacity && !local.copies.contains_key(&key) {
            local.copies.retain(|_, c| c.session.expires() > now);
            if local.copies.len() >= self.capacity
                && let Some(victim) = local.copies.keys().next().copied()
            {
                local.copies.remove(&victim);
            }
        }
        local.copies.insert(key, Copy { sealed, session });
    }

    async fn create(&self, session: Session, now: SystemTime) -> Result<SessionId, SessionError> {
        let (id, key) = SessionId::generate(&self.rng)?;
        let rkey = self.redis_key(&key);
        let ttl_ms = millis(session.expires().duration_since(now).unwrap_or_default()).max(1);
        let plain = serde_json::to_vec(&Stored::of(&session)).map_err(|_| SessionError::Random)?;
        let sealed = self
            .seal
            .seal(&rkey, &plain)
            .map_err(|_| SessionError::Random)?;
        let set = redis::cmd("SET")
            .arg(&rkey)
            .arg(&sealed)
            .arg("PX")
            .arg(ttl_ms)
            .arg("NX")
            .clone();
        let answer = self.redis.query::<Value>(&set).await;
        self.health.note(&answer);
        match answer {
            Ok(v) if is_ok(&v) => {
                self.keep(key, sealed, Arc::new(session), now);
                Ok(id)
            }
            // NX refused: 256 random bits collided, or something else wrote there. Either way
            // this id is not ours to hand out.
            Ok(_) => Err(SessionError::Unavailable),
            Err(fault) => {
                tracing::debug!(%fault, "session not stored in redis");
                Err(SessionError::Unavailable)
            }
        }
    }

    async fn get(&self, cookie: &str, now: SystemTime) -> Result<Arc<Session>, SessionError> {
        let key = cookie_key(cookie).ok_or(SessionError::Unknown)?;
        if self.local().tombstones.contains(&key) {
            self.flush_tombstones().await;
            return Err(SessionError::Unknown);
        }
        let rkey = self.redis_key(&key);
        let answer = self
            .redis
            .query::<Value>(&redis::cmd("GET").arg(&rkey).clone())
            .await;
        self.health.note(&answer);
        let answer = answer.and_then(|v| match v {
            Value::Nil => Ok(None),
            Value::BulkString(bytes) => Ok(Some(bytes)),
            _ => Err(RedisFault::BadReply("session is not a string")),
        });
        let sealed = match answer {
            Ok(Some(sealed)) => sealed,
            Ok(None) => {
                // Logged out (on any node), expired, or never ours.
                self.local().copies.remove(&key);
                return Err(SessionError::Unknown);
            }
            Err(fault) => return self.local_copy(&key, now, &fault),
        };
        if !self.local().tombstones.is_empty() {
            self.flush_tombstones().await;
        }
        let known = {
            let local = self.local();
            local
                .copies
                .get(&key)
                .filter(|c| c.sealed == sealed)
                .map(|c| Arc::clone(&c.session))
        };
        let session = match known {
            Some(session) => session,
            None => match self.seal.open(&rkey, &sealed).map(|p| Stored::decode(&p)) {
                Ok(Some(session)) => {
                    let session = Arc::new(session);
                    self.keep(key, sealed, Arc::clone(&session), now);
                    session
                }
                // Sealed under another seal_key (a change of it): the session is over, and
                // signing in again makes one this key opens.
                Err(OpenError::OtherKey) => {
                    self.local().copies.remove(&key);
                    return Err(SessionError::Unknown);
                }
                Err(OpenError::Broken) | Ok(None) => {
                    let fault = RedisFault::BadReply("session value does not open");
                    return self.local_copy(&key, now, &fault);
                }
            },
        };
        if session.expires() > now {
            return Ok(session);
        }
        self.local().copies.remove(&key);
        Err(SessionError::Expired)
    }

    /// Redis gave no usable answer: this node's copy, if it has a live one.
    fn local_copy(
        &self,
        key: &Key,
        now: SystemTime,
        fault: &RedisFault,
    ) -> Result<Arc<Session>, SessionError> {
        tracing::debug!(%fault, "session lookup fell back to the local copy");
        let mut local = self.local();
        match local.copies.get(key) {
            Some(c) if c.session.expires() > now => Ok(Arc::clone(&c.session)),
            Some(_) => {
                local.copies.remove(key);
                Err(SessionError::Expired)
            }
            None => Err(SessionError::Unavailable),
        }
    }

    async fn remove(&self, cookie: &str) -> bool {
        let Some(key) = cookie_key(cookie) else {
            return false;
        };
        let had = self.local().copies.remove(&key).is_some();
        let del = redis::cmd("DEL").arg(self.redis_key(&key)).clone();
        match self.redis.query::<i64>(&del).await {
            Ok(n) => had || n > 0,
            Err(fault) => {
                tracing::warn!(%fault, "logout could not reach redis; retried when it answers");
                let mut local = self.local();
                if local.tombstones.len() < self.capacity {
                    local.tombstones.insert(key);
                }
                had
            }
        }
    }

    /// Retry the `DEL`s of logouts Redis missed.
    async fn flush_tombstones(&self) {
        let pending: Vec<Key> = self.local().tombstones.iter().copied().collect();
        for key in pending {
            let del = redis::cmd("DEL").arg(self.redis_key(&key)).clone();
            if self.redis.query::<i64>(&del).await.is_err() {
                return;
            }
            self.local().tombstones.remove(&key);
        }
    }

    async fn sweep(&self, now: SystemTime) -> usize {
        self.flush_tombstones().await;
        let mut local = self.local();
        let before = local.copies.len();
        local.copies.retain(|_, c| c.session.expires() > now);
        before - local.copies.len()
    }

    /// Local copies held now (tests, metrics).
    pub fn local_copies(&self) -> usize {
        self.local().copies.len()
    }
}

impl SharedSessionStore for RedisSessions {
    fn create(
        &self,
        session: Session,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<SessionId, SessionError>> {
        Box::pin(RedisSessions::create(self, session, now))
    }

    fn get<'a>(
        &'a self,
        cookie: &'a str,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<Arc<Session>, SessionError>> {
        Box::pin(RedisSessions::get(self, cookie, now))
    }

    fn remove<'a>(&'a self, cookie: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(RedisSessions::remove(self, cookie))
    }

    fn sweep(&self, now: SystemTime) -> BoxFuture<'_, usize> {
        Box::pin(RedisSessions::sweep(self, now))
    }
}

/// SAML state shared through `redis`: sessions sealed with `seal` (at most `local_capacity`
/// local copies), the replay cache, the login-cookie key; and their `/readyz` flag.
pub fn saml_state(
    redis: &Arc<Redis>,
    seal: &Arc<SealKey>,
    local_capacity: usize,
    clock: Arc<dyn crate::credentials::Clock>,
) -> (crate::saml::sp::SamlState, Degraded) {
    use crate::saml::replay::AnyReplayCache;
    use crate::saml::session::AnySessionStore;
    let sessions = RedisSessions::new(Arc::clone(redis), Arc::clone(seal), local_capacity);
    let health = sessions.health().clone();
    let replay =
        super::replay::RedisReplayCache::new(Arc::clone(redis)).with_health(health.clone());
    let state = crate::saml::sp::SamlState::shared(
        AnySessionStore::Shared(Box::new(sessions)),
        AnyReplayCache::Shared(Box::new(replay)),
        Box::new(super::login_key::RedisLoginKey::new(
            Arc::clone(redis),
            Arc::clone(seal),
        )),
        clock,
    );
    (state, health)
}

/// `SET` answered `OK`.
pub(super) fn is_ok(v: &Value) -> bool {
    match v {
        Value::Okay => true,
        Value::SimpleString(s) => s == "OK",
        _ => false,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_millis(t: SystemTime) -> u64 {
    millis(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// What is sealed per session (format `v1` of the keys; a change bumps `KEY_VERSION`).
#[derive(Serialize, Deserialize)]
struct Stored {
    subject: String,
    role: String,
    project: String,
    scopes: Vec<String>,
    /// The principal's `expires_at` (unix s).
    principal_expires: u64,
    /// The session's end (unix ms).
    expires_ms: u64,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    /// The credentials' end (unix ms).
    credentials_expire_ms: u64,
    assumed_role_arn: String,
    sts_subject: Option<String>,
}

impl Stored {
    fn of(session: &Session) -> Stored {
        let p = session.principal();
        let sts = session.sts();
        let c = &sts.credentials;
        Stored {
            subject: p.subject().to_owned(),
            role: p.role().to_owned(),
            project: p.project().unwrap_or_default().to_owned(),
            scopes: p.scopes().iter().map(ToString::to_string).collect(),
            principal_expires: p
                .expires_at()
                .unwrap_or_else(|| unix_millis(session.expires()) / 1000),
            expires_ms: unix_millis(session.expires()),
            access_key_id: c.access_key_id().to_owned(),
            secret_access_key: c.secret_access_key().to_owned(),
            session_token: c.session_token().map(str::to_owned),
            credentials_expire_ms: unix_millis(sts.expires),
            assumed_role_arn: sts.assumed_role_arn.clone(),
            sts_subject: sts.subject.clone(),
        }
    }

    /// The session a sealed value held, or `None` if it is not one (then: garbage).
    fn decode(plain: &[u8]) -> Option<Session> {
        let s: Stored = serde_json::from_slice(plain).ok()?;
        let scopes = s
            .scopes
            .iter()
            .map(|t| Scope::parse(t).ok())
            .collect::<Option<Vec<_>>>()?;
        let credentials_expire = UNIX_EPOCH + Duration::from_millis(s.credentials_expire_ms);
        let credentials = SessionCredentials {
            credentials: aws_credential_types::Credentials::new(
                s.access_key_id,
                s.secret_access_key,
                s.session_token,
                Some(credentials_expire),
                PROVIDER_NAME,
            ),
            expires: credentials_expire,
            assumed_role_arn: s.assumed_role_arn,
            subject: s.sts_subject,
        };
        let principal =
            Principal::saml_session(s.subject, s.role, s.project, scopes, s.principal_expires);
        Some(Session::new(
            principal,
            credentials,
            UNIX_EPOCH + Duration::from_millis(s.expires_ms),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_session_survives_the_round_trip_through_its_stored_form() {
        let expires = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let credentials = SessionCredentials {
            credentials: aws_credential_types::Credentials::new(
                "ASIA1",
                "secret",
                Some("token".into()),
                Some(expires),
                "t",
            ),
            expires,
            assumed_role_arn: "arn:aws:sts::123456789012:assumed-role/R/u".into(),
            subject: Some("u".into()),
        };
        let principal = Principal::saml_session(
            credentials.assumed_role_arn.clone(),
            "annotator".into(),
            "p".into(),
            vec![
                Scope::parse("assets:").unwrap(),
                Scope::parse("a:x/").unwrap(),
            ],
            1_800_000_000,
        );
        let session = Session::new(principal, credentials, expires);
        let plain = serde_json::to_vec(&Stored::of(&session)).unwrap();
        let back = Stored::decode(&plain).unwrap();
        assert_eq!(back.expires(), session.expires());
        let (p, q) = (back.principal(), session.principal());
        assert_eq!(
            (p.subject(), p.role(), p.project(), p.expires_at()),
            (q.subject(), q.role(), q.project(), q.expires_at())
        );
        let scopes: Vec<String> = p.scopes().iter().map(ToString::to_string).collect();
        assert_eq!(scopes, ["assets:", "a:x/"]);
        let c = back.credentials();
        assert_eq!(
            (c.access_key_id(), c.secret_access_key(), c.session_token()),
            ("ASIA1", "secret", Some("token"))
        );
        assert_eq!(back.sts().subject.as_deref(), Some("u"));
        assert!(Stored::decode(b"{}").is_none());
        assert!(Stored::decode(b"\xff").is_none());
    }
}
