//! The SAML assertion replay cache in Redis ([`RedisReplayCache`], a [`SharedReplayCache`]): an
//! assertion (or login request) accepted on one node is refused on every other.
//!
//! One `SET {prefix}:v1:replay:{hex SHA-256 of the id} 1 NX PX {ms until the id expires}` per
//! id: Redis admits exactly one of any number of nodes asking at once, and forgets the id when
//! its assertion could no longer be valid anyway. Only the hash of the id is stored.
//!
//! Redis down, slow, or answering anything but `OK`/nil: [`ReplayUnknown`], and the login is
//! refused with a 503 (fail closed: a replay cannot be ruled out). Redis must not evict these
//! keys (`maxmemory-policy noeviction`): an evicted id could be replayed.

use std::sync::Arc;
use std::time::SystemTime;

use redis::Value;
use sha2::{Digest, Sha256};

use super::Redis;
use super::saml_health::Degraded;
use super::sessions::is_ok;
use crate::saml::replay::{ReplayUnknown, SharedReplayCache};
use crate::saml::session::BoxFuture;

/// The kind part of replay keys.
const KIND: &str = "replay";
/// The shortest time an id is remembered (an id past its own expiry is refused by the
/// assertion's conditions anyway; this only keeps `PX` positive).
const MIN_TTL_MS: u64 = 1_000;

/// Assertion and login-request ids, remembered in Redis until they expire.
pub struct RedisReplayCache {
    redis: Arc<Redis>,
    health: Option<Degraded>,
}

impl RedisReplayCache {
    pub fn new(redis: Arc<Redis>) -> RedisReplayCache {
        RedisReplayCache {
            redis,
            health: None,
        }
    }

    /// Report to `health` (the sessions' `/readyz` flag) whether Redis answered.
    pub fn with_health(mut self, health: Degraded) -> RedisReplayCache {
        self.health = Some(health);
        self
    }

    /// The Redis key of an id.
    pub fn redis_key(&self, id: &str) -> String {
        self.redis
            .key(KIND, &hex::encode(Sha256::digest(id.as_bytes())))
    }

    async fn first_use(
        &self,
        id: &str,
        until: SystemTime,
        now: SystemTime,
    ) -> Result<bool, ReplayUnknown> {
        let ttl_ms = until
            .duration_since(now)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .max(MIN_TTL_MS);
        let set = redis::cmd("SET")
            .arg(self.redis_key(id))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .clone();
        let answer = self.redis.query::<Value>(&set).await;
        if let Some(h) = &self.health {
            h.note(&answer);
        }
        match answer {
            Ok(Value::Nil) => Ok(false),
            Ok(v) if is_ok(&v) => Ok(true),
            Ok(_) => Err(ReplayUnknown),
            Err(fault) => {
                tracing::warn!(%fault, "replay cache unavailable: SAML login refused");
                Err(ReplayUnknown)
            }
        }
    }
}

impl SharedReplayCache for RedisReplayCache {
    fn first_use<'a>(
        &'a self,
        id: &'a str,
        until: SystemTime,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<bool, ReplayUnknown>> {
        Box::pin(RedisReplayCache::first_use(self, id, until, now))
    }
}
