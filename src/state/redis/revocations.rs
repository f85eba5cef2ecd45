//! Revocations shared by every node through Redis (`[redis]`).
//!
//! Redis holds the record: a set of revoked `jti`s, a hash subject -> `issued_before`, a change
//! counter and an epoch (a random id written when the record is first created). Every node keeps
//! a copy in a [`FileRevocations`] (memory, persisted to its own `revocations.json`), and checks
//! tokens against that copy only: a request never waits on Redis for revocation.
//!
//! - Revoke: one Lua script adds the entry and bumps the counter (atomically); then the node's
//!   own copy takes it. If Redis does not answer, the admin API answers 503: not in force here.
//!   A command that timed out may still reach a hung Redis once it resumes, and then the
//!   revocation takes effect everywhere at the next sync; retrying is safe (adding is
//!   idempotent).
//! - Sync: every `sync_interval_ms` a node asks for `epoch:counter`; when it differs from the one
//!   it applied, the whole record comes in the same script call and is merged into the copy. A
//!   revocation on any node is in force on every node within `sync_interval_ms` plus a command.
//! - Revocations are only ever added, so copies merge by union (a subject keeps the later time)
//!   and converge whatever the order. At start, and whenever the record is missing from Redis
//!   (a fresh Redis, or one restarted without persistence), a node pushes its copy into Redis:
//!   a single-node `revocations.json` migrates into the shared record, and the record survives a
//!   restart of every node (each has its copy) and a Redis that lost it (the first node that
//!   sees that puts it back).
//! - Redis down, slow, or answering garbage (wrong type, not a number, not UTF-8): the sync
//!   fails, the last synced copy stays in force, and `/readyz` says `degraded`. With
//!   `refuse_tokens_issued_during_outage`, a token whose `iat` is at or after the last
//!   successful sync (or the start, if none) is refused meanwhile, and one without `iat` too: a
//!   revocation made elsewhere since then cannot be seen. The next sync that succeeds ends it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use redis::{Script, Value};

use super::{Redis, RedisFault, StoreHealth, reply};
use crate::credentials::Clock;
use crate::identity::revocation::{
    FileRevocations, Revocation, RevocationError, RevocationList, SharedRevocationStore,
};

/// `{epoch, "epoch:counter"}`, plus the record when the tag differs from `ARGV[1]`; `{false}`
/// when there is no record.
static SYNC: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local e = redis.call('GET', KEYS[1])
if not e then return {false} end
local v = redis.call('GET', KEYS[2]) or '0'
local tag = e .. ':' .. v
if tag == ARGV[1] then return {tag} end
return {tag, redis.call('SMEMBERS', KEYS[3]), redis.call('HGETALL', KEYS[4])}
",
    )
});

/// Add `ARGV[2]` jtis (`ARGV[3..]`), then subject/time pairs; create the epoch (`ARGV[1]`) if
/// missing; bump the counter if anything was added. Answers the counter.
static MERGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local n = tonumber(ARGV[2])
local changed = 0
for i = 3, 2 + n do
  changed = changed + redis.call('SADD', KEYS[3], ARGV[i])
end
local i = 3 + n
while i < #ARGV do
  local cur = tonumber(redis.call('HGET', KEYS[4], ARGV[i]))
  local want = tonumber(ARGV[i + 1])
  if cur == nil or want > cur then
    redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
    changed = changed + 1
  end
  i = i + 2
end
if changed > 0 then return redis.call('INCR', KEYS[2]) end
return redis.call('GET', KEYS[2]) or '0'
",
    )
});

/// The shared revocation list (see the module doc).
pub struct RedisRevocations {
    redis: Arc<Redis>,
    copy: FileRevocations,
    /// The `epoch:counter` last merged in; `None` before the first sync.
    synced: Mutex<Option<String>>,
    /// Whether this node has pushed its copy since start.
    pushed: AtomicBool,
    /// Unix secs of the last successful sync (the start before the first one).
    last_ok: AtomicU64,
    /// Unix secs the current outage counts from (the last successful sync); 0: none.
    outage_since: AtomicU64,
    refuse_during_outage: bool,
    clock: Arc<dyn Clock>,
}

impl RedisRevocations {
    /// `copy` is this node's own list (loaded from its state dir); `clock` the token clock. Until
    /// the first sync succeeds the node counts as in an outage that began now.
    pub fn new(
        redis: Arc<Redis>,
        copy: FileRevocations,
        refuse_during_outage: bool,
        clock: Arc<dyn Clock>,
    ) -> RedisRevocations {
        let now = crate::civil_time::unix_secs(clock.now());
        RedisRevocations {
            redis,
            copy,
            synced: Mutex::new(None),
            pushed: AtomicBool::new(false),
            last_ok: AtomicU64::new(now),
            outage_since: AtomicU64::new(now.max(1)),
            refuse_during_outage,
            clock,
        }
    }

    fn keys(&self) -> [String; 4] {
        ["epoch", "counter", "jti", "sub"].map(|k| self.redis.key("revocations", k))
    }

    fn now(&self) -> u64 {
        crate::civil_time::unix_secs(self.clock.now())
    }

    /// Bring the copy up to date with Redis (the sync task calls this every
    /// `sync_interval_ms`). An error leaves the copy as it was and starts (or continues) the
    /// outage.
    pub async fn sync(&self) -> Result<(), RedisFault> {
        let outcome = self.sync_once().await;
        match &outcome {
            Ok(()) => {
                self.last_ok.store(self.now(), Ordering::Relaxed);
                if self.outage_since.swap(0, Ordering::Relaxed) != 0
                    && self.pushed.load(Ordering::Relaxed)
                {
                    tracing::info!("revocations: synced with Redis again");
                }
            }
            Err(e) => {
                let since = self.last_ok.load(Ordering::Relaxed).max(1);
                if self.outage_since.swap(since, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        error = %e,
                        "revocations: Redis does not answer; the last synced list stays in force"
                    );
                }
            }
        }
        outcome
    }

    async fn sync_once(&self) -> Result<(), RedisFault> {
        if !self.pushed.load(Ordering::Relaxed) {
            // First contact since start: our copy joins the record (a single-node file
            // migrates; entries Redis lost come back), then the whole record comes in.
            self.push().await?;
        }
        let answer = self.fetch().await?;
        let items = reply::array(&answer)?;
        let Some(first) = items.first() else {
            return Err(RedisFault::BadReply("empty sync reply"));
        };
        if reply::opt_text(first)?.is_none() {
            // No record in Redis (a fresh one, or one that lost it): put ours back, read it.
            self.push().await?;
            let answer = self.fetch().await?;
            return self.apply(reply::array(&answer)?).await;
        }
        self.apply(items).await
    }

    /// The SYNC script's answer for the tag we hold.
    async fn fetch(&self) -> Result<Value, RedisFault> {
        let keys = self.keys();
        let known = self
            .synced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut call = SYNC.prepare_invoke();
        for k in &keys {
            call.key(k);
        }
        call.arg(known.as_deref().unwrap_or(""));
        self.redis.invoke(&call).await
    }

    /// Merge a SYNC answer into the copy (nothing to do when the tag is the one we hold).
    async fn apply(&self, items: &[Value]) -> Result<(), RedisFault> {
        let tag = match items.first() {
            Some(first) => reply::opt_text(first)?,
            None => None,
        };
        let Some(tag) = tag else {
            return Err(RedisFault::BadReply(
                "no revocation record after writing it",
            ));
        };
        if items.len() == 1 {
            return Ok(());
        }
        let record = parse_record(items)?;
        if let Err(e) = self.copy.merge(&record).await {
            // In force in memory already; only this node's file is behind.
            tracing::warn!(
                error = %crate::telemetry::ErrorChain(&e),
                "revocations: writing the local copy failed"
            );
        }
        *self.synced.lock().unwrap_or_else(|e| e.into_inner()) = Some(tag.to_owned());
        Ok(())
    }

    /// Merge this node's copy into Redis.
    async fn push(&self) -> Result<(), RedisFault> {
        self.merge_into_redis(&self.copy.list_now()).await?;
        self.pushed.store(true, Ordering::Relaxed);
        // Read the whole record on the next tick.
        *self.synced.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    async fn merge_into_redis(&self, list: &RevocationList) -> Result<(), RedisFault> {
        let keys = self.keys();
        let mut call = MERGE.prepare_invoke();
        for k in &keys {
            call.key(k);
        }
        call.arg(uuid::Uuid::new_v4().simple().to_string())
            .arg(list.jti.len());
        for jti in &list.jti {
            call.arg(jti);
        }
        for (sub, before) in &list.sub {
            call.arg(sub).arg(*before);
        }
        let answer: Value = self.redis.invoke(&call).await?;
        reply::int(&answer)?;
        Ok(())
    }

    /// `ok`, or `degraded` while the last sync failed.
    pub fn health(&self) -> StoreHealth {
        if self.outage_since.load(Ordering::Relaxed) == 0 {
            StoreHealth::ok("revocations")
        } else if self.refuse_during_outage {
            StoreHealth::degraded(
                "revocations",
                "last synced list; tokens issued since the outage began are refused",
            )
        } else {
            StoreHealth::degraded("revocations", "last synced list")
        }
    }
}

/// `{tag, jtis, sub/time pairs}` into a list; any odd element is a bad reply.
fn parse_record(items: &[Value]) -> Result<RevocationList, RedisFault> {
    let [_, jtis, subs] = items else {
        return Err(RedisFault::BadReply("sync reply of the wrong length"));
    };
    let mut list = RevocationList::default();
    for jti in reply::array(jtis)? {
        let jti = reply::text(jti)?;
        if jti.is_empty() {
            return Err(RedisFault::BadReply("empty jti"));
        }
        list.jti.insert(jti.to_owned());
    }
    let subs = reply::array(subs)?;
    if subs.len() % 2 != 0 {
        return Err(RedisFault::BadReply("odd subject hash"));
    }
    for pair in subs.chunks_exact(2) {
        let sub = reply::text(&pair[0])?;
        let before = u64::try_from(reply::int(&pair[1])?)
            .map_err(|_| RedisFault::BadReply("negative time"))?;
        list.sub.insert(sub.to_owned(), before);
    }
    Ok(list)
}

impl From<RedisFault> for RevocationError {
    fn from(fault: RedisFault) -> RevocationError {
        RevocationError::Shared(Box::new(fault))
    }
}

impl SharedRevocationStore for RedisRevocations {
    /// From this node's synced copy: no request waits on Redis.
    fn is_revoked_now(
        &self,
        jti: Option<&str>,
        sub: &str,
        iat: Option<u64>,
    ) -> Result<bool, RevocationError> {
        if self.copy.is_revoked_now(jti, sub, iat) {
            return Ok(true);
        }
        let since = self.outage_since.load(Ordering::Relaxed);
        Ok(self.refuse_during_outage && since != 0 && iat.is_none_or(|iat| iat >= since))
    }

    fn list_now(&self) -> Result<RevocationList, RevocationError> {
        Ok(self.copy.list_now())
    }

    /// Stored in Redis first (503 from the admin API if it cannot be), then in this node's copy.
    fn revoke(
        &self,
        revocation: Revocation,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), RevocationError>> + Send + '_>> {
        Box::pin(async move {
            let list = RevocationList::from(revocation);
            self.merge_into_redis(&list).await?;
            if let Err(e) = self.copy.merge(&list).await {
                tracing::warn!(error = %crate::telemetry::ErrorChain(&e), "revocations: writing the local copy failed");
            }
            Ok(())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn a_record_of_the_right_shape_parses() {
        let items = [
            s("e:1"),
            Value::Array(vec![s("j1")]),
            Value::Array(vec![s("bob"), s("100")]),
        ];
        let list = parse_record(&items).unwrap();
        assert!(list.jti.contains("j1"));
        assert_eq!(list.sub["bob"], 100);
    }

    #[test]
    fn a_broken_record_is_a_bad_reply_never_a_partial_list() {
        let cases: Vec<Vec<Value>> = vec![
            // Truncated: the subject hash is missing.
            vec![s("e:1"), Value::Array(vec![s("j1")])],
            // A subject without its time.
            vec![s("e:1"), Value::Array(vec![]), Value::Array(vec![s("bob")])],
            // A time that is not a number, or negative.
            vec![
                s("e:1"),
                Value::Array(vec![]),
                Value::Array(vec![s("bob"), s("soon")]),
            ],
            vec![
                s("e:1"),
                Value::Array(vec![]),
                Value::Array(vec![s("bob"), Value::Int(-1)]),
            ],
            // Bytes that are not UTF-8, an empty jti, a number where the set belongs.
            vec![
                s("e:1"),
                Value::Array(vec![Value::BulkString(vec![0xff, 0xfe])]),
                Value::Array(vec![]),
            ],
            vec![s("e:1"), Value::Array(vec![s("")]), Value::Array(vec![])],
            vec![s("e:1"), Value::Int(3), Value::Array(vec![])],
            vec![
                s("e:1"),
                Value::Array(vec![Value::Nil]),
                Value::Array(vec![]),
            ],
        ];
        for items in cases {
            assert!(
                matches!(parse_record(&items), Err(RedisFault::BadReply(_))),
                "{items:?}"
            );
        }
    }
}
