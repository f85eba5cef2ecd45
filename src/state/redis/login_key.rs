//! The SAML login-cookie key shared by every node ([`RedisLoginKey`], a [`SharedLoginKey`]), so a
//! login started on one node completes on another (when `[saml] login_cookie_key` is not set;
//! a configured key still wins).
//!
//! - One key for the deployment, `{prefix}:v1:saml-login-key:{seal key id}`: 32 random bytes,
//!   created once by whichever node needs it first (`SET NX`; every node then reads the
//!   winner), sealed with `[redis] seal_key` ([`super::seal`]) so Redis never holds a usable
//!   key. No TTL. The seal key's id in the name gives nodes with another `seal_key` (a change
//!   of it) a key of their own instead of one they cannot open.
//! - Each node caches it in memory and reads it again every [`REFRESH`]; while Redis cannot
//!   answer, the cached key keeps serving (the replay cache refuses the ACS anyway). A node
//!   that has no key yet and cannot read one refuses logins (503).
//! - Rotation: delete the key (the one `{prefix}:v1:saml-login-key:*`), or change `seal_key`. The next node to need a key
//!   creates a new one; every node picks it up within [`REFRESH`] and keeps the previous key for
//!   opening cookies, so logins in flight complete. A login whose cookie was sealed under the
//!   new key by one node and brought to a node that has not refreshed yet fails (the user
//!   starts again); login cookies live `SAML_LOGIN_COOKIE_SECS` at most.
//! - A value that does not open (garbage, truncated) is an error, never replaced (a node that
//!   misreads it must not take every other node's key away). It is logged with what to do
//!   (delete the key).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::Value;
use ring::rand::{SecureRandom, SystemRandom};

use super::Redis;
use super::seal::SealKey;
use super::sessions::is_ok;
use crate::saml::login_cookie::{LoginKey, LoginKeyRing, LoginKeyUnavailable, SharedLoginKey};
use crate::saml::session::BoxFuture;

/// How often a node reads the shared key again (a rotation reaches every node within this).
pub const REFRESH: Duration = Duration::from_secs(60);
const KIND: &str = "saml-login-key";
const KEY_BYTES: usize = 32;

/// The shared login-cookie key, cached (see the module doc).
pub struct RedisLoginKey {
    redis: Arc<Redis>,
    seal: Arc<SealKey>,
    cached: Mutex<Option<Cached>>,
    refresh: Duration,
    rng: SystemRandom,
}

struct Cached {
    raw: [u8; KEY_BYTES],
    ring: Arc<LoginKeyRing>,
    fetched: Instant,
}

impl RedisLoginKey {
    pub fn new(redis: Arc<Redis>, seal: Arc<SealKey>) -> RedisLoginKey {
        RedisLoginKey {
            redis,
            seal,
            cached: Mutex::new(None),
            refresh: REFRESH,
            rng: SystemRandom::new(),
        }
    }

    /// Read the key again every `refresh` instead of [`REFRESH`] (tests of rotation).
    pub fn with_refresh(mut self, refresh: Duration) -> RedisLoginKey {
        self.refresh = refresh;
        self
    }

    /// The Redis key of the shared login key.
    pub fn redis_key(&self) -> String {
        self.redis.key(KIND, &self.seal.id_hex())
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        self.cached.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn keys(&self) -> Result<Arc<LoginKeyRing>, LoginKeyUnavailable> {
        let stale = {
            let cached = self.cached();
            match &*cached {
                Some(c) if c.fetched.elapsed() < self.refresh => return Ok(Arc::clone(&c.ring)),
                Some(c) => Some(Arc::clone(&c.ring)),
                None => None,
            }
        };
        match self.fetch().await {
            Ok(raw) => Ok(self.install(raw)),
            Err(why) => {
                tracing::warn!(why, key = %self.redis_key(), "shared SAML login key unavailable");
                stale.ok_or(LoginKeyUnavailable)
            }
        }
    }

    /// The key in Redis, created if there is none.
    async fn fetch(&self) -> Result<[u8; KEY_BYTES], &'static str> {
        if let Some(raw) = self.read().await? {
            return Ok(raw);
        }
        let mut raw = [0u8; KEY_BYTES];
        self.rng
            .fill(&mut raw)
            .map_err(|_| "random number generator failed")?;
        let rkey = self.redis_key();
        let sealed = self.seal.seal(&rkey, &raw).map_err(|_| "sealing failed")?;
        let set = redis::cmd("SET").arg(&rkey).arg(sealed).arg("NX").clone();
        match self.redis.query::<Value>(&set).await {
            Ok(v) if is_ok(&v) => Ok(raw),
            // Another node created it first: use theirs.
            Ok(Value::Nil) => self.read().await?.ok_or("the key vanished while created"),
            Ok(_) => Err("redis answered SET with something unusable"),
            Err(_) => Err("redis unreachable"),
        }
    }

    async fn read(&self) -> Result<Option<[u8; KEY_BYTES]>, &'static str> {
        let rkey = self.redis_key();
        let sealed = match self
            .redis
            .query::<Value>(&redis::cmd("GET").arg(&rkey).clone())
            .await
        {
            Ok(Value::Nil) => return Ok(None),
            Ok(Value::BulkString(bytes)) => bytes,
            Ok(_) => return Err("the key in redis is not a string"),
            Err(_) => return Err("redis unreachable"),
        };
        let plain = self
            .seal
            .open(&rkey, &sealed)
            .map_err(|_| "the key in redis does not open (damaged): delete it to make a new one")?;
        <[u8; KEY_BYTES]>::try_from(plain.as_slice())
            .map(Some)
            .map_err(|_| "the key in redis has the wrong length")
    }

    /// Use `raw` from now on; the key it replaces still opens cookies.
    fn install(&self, raw: [u8; KEY_BYTES]) -> Arc<LoginKeyRing> {
        let mut cached = self.cached();
        let ring = match &*cached {
            Some(c) if c.raw == raw => Arc::clone(&c.ring),
            Some(c) => Arc::new(LoginKeyRing::new(
                LoginKey::from_secret(&raw),
                Some(LoginKey::from_secret(&c.raw)),
            )),
            None => Arc::new(LoginKeyRing::new(LoginKey::from_secret(&raw), None)),
        };
        *cached = Some(Cached {
            raw,
            ring: Arc::clone(&ring),
            fetched: Instant::now(),
        });
        ring
    }
}

impl SharedLoginKey for RedisLoginKey {
    fn keys(&self) -> BoxFuture<'_, Result<Arc<LoginKeyRing>, LoginKeyUnavailable>> {
        Box::pin(RedisLoginKey::keys(self))
    }
}
