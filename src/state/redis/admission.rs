//! Rate limits shared by every node through Redis ([`RedisAdmission`]), with a local fast path
//! so a request does not always wait on Redis.
//!
//! ## How
//!
//! Redis holds one GCRA state per key (`{prefix}:v1:rate-ip:{addr}`,
//! `{prefix}:v1:rate-subject:{sha256(subject)}`): its theoretical arrival time in microseconds,
//! with a TTL so idle keys vanish. One Lua script ([`GCRA`]) takes up to `k` tokens from a key
//! in one round trip and answers how many it granted, or how long until one is free. Time is
//! Redis's own `TIME` (one clock for every node, so the nodes' skew does not matter), or the
//! node's injected fake clock in tests ([`AdmitClock::shared_micros`]).
//!
//! Each node keeps, per key, a *lease*: the tokens it got and has not spent yet. A request
//! spends one from the lease without asking Redis; the request that brings a lease down to a
//! quarter of its size tops it up (one round trip, while the others keep spending what is
//! left). So on a busy key one request in about `3k/4` waits on Redis. One batch request per key
//! and node is in flight at a time: requests that find nothing leased meanwhile ask for their
//! own token alone (a cold key hit by many requests at once takes one batch, not one each). A
//! refusal is remembered locally until the time Redis said a token is free: no round trip can
//! change that answer sooner, since leases are only ever taken from Redis, never given back.
//!
//! The lease size is `k = max(1, min(rps, burst) / (10 * expected_nodes))`
//! ([`RATE_LIMIT_LEASE_DIVISOR`]). Every token a node spends was taken from the shared bucket
//! first, so the nodes together never spend more than the quota gave out; what leases change is
//! *when*: the tokens leased but unspent by all nodes are at most `expected_nodes * k`, a tenth
//! of the smaller of rps and burst. They are the error in both directions: tokens spent up to
//! [`RATE_LIMIT_LEASE_TTL_MS`] after they were leased, or stranded on a node whose clients went
//! quiet (dropped when the lease expires). A tight quota gets `k = 1`: every request asks Redis
//! and the shared limit is exact.
//!
//! ## When Redis is down, slow or broken
//!
//! A command that fails or passes `[redis] command_timeout_ms` turns on the fallback: each node
//! counts against per-node limits, the quotas divided by `expected_nodes` (rounded down, at least
//! 1), in memory ([`Admission`]). Tokens already leased are still spent. While the fallback is
//! on, one request per [`RATE_LIMIT_REDIS_RETRY_MS`] (on the admission clock) tries Redis again;
//! the others do not wait on it. Its first answer turns the shared limits back on, without a
//! restart ([`RedisAdmission::fallback_active`] says which for `/readyz`). A Redis restarted
//! empty starts every key over (a fresh burst), as a restarted single node does.
//!
//! A broken answer for one key (the key holds another type, a value that is not a number, a
//! reply that is not the script's) is a fault of that lookup only: that request is counted
//! against the per-node limits, never allowed beyond them, and nothing panics. The key is not
//! repaired; it expires or is overwritten by an operator.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::Clock;
use sha2::Digest;

use super::{Redis, RedisFault, StoreHealth};
use crate::config::RateLimits;
use crate::config::defaults::{
    RATE_LIMIT_LEASE_DIVISOR, RATE_LIMIT_LEASE_TTL_MS, RATE_LIMIT_REDIS_RETRY_MS,
};
use crate::state::admission::{
    Admission, AdmissionStore, AdmitClock, AdmitKey, LimitKind, RateLimited,
};

/// Shards of the local lease table (requests for different keys rarely share a lock).
const SHARDS: usize = 16;

/// GCRA with a cost: take up to `want` tokens from the bucket at `KEYS[1]`.
///
/// `ARGV`: emission interval (µs, may be fractional), burst, want, now (µs; negative: Redis's
/// `TIME`). Answers `{granted, 0}`, `{0, wait_us}` (nothing free for `wait_us`), or `{-1, 0}`
/// when the key holds something that is not a time (another type, not a number): an error for
/// this lookup, never an allow. A time beyond what the quota allows (a quota lowered by a
/// reload, an infinity) is clamped to a full bucket and written back, so the key drains.
const GCRA_LUA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local limit = now + burst * interval
local tat = now
local raw = redis.pcall('GET', KEYS[1])
if type(raw) == 'table' then return {-1, 0} end
local clamped = false
if raw then
  local v = tonumber(raw)
  if v == nil or v ~= v then return {-1, 0} end
  if v > limit then v = limit; clamped = true end
  if v > tat then tat = v end
end
local room = math.floor((limit - tat) / interval + 1e-9)
if room < 1 then
  if clamped then
    redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
  return {0, math.ceil(tat + interval - limit)}
end
local grant = math.min(want, room)
local new = tat + grant * interval
redis.call('SET', KEYS[1], string.format('%.3f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
return {grant, 0}
";

static GCRA: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA_LUA));

/// One limit as this node applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quota {
    rps: u32,
    burst: u32,
    /// Tokens asked for per round trip (`k`, see the module doc).
    lease: u32,
}

impl Quota {
    fn new(rps: u32, burst: u32, expected_nodes: u32) -> Quota {
        let (rps, burst) = (rps.max(1), burst.max(1));
        let share = rps.min(burst) / RATE_LIMIT_LEASE_DIVISOR.saturating_mul(expected_nodes.max(1));
        Quota {
            rps,
            burst,
            lease: share.max(1),
        }
    }

    fn interval_micros(self) -> f64 {
        1e6 / f64::from(self.rps)
    }

    /// A lease this low is topped up by the request that brought it there.
    fn low_water(self) -> u32 {
        self.lease / 4
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quotas {
    ip: Quota,
    subject: Quota,
}

impl Quotas {
    fn new(limits: &RateLimits, expected_nodes: u32) -> Quotas {
        Quotas {
            ip: Quota::new(limits.per_ip_rps, limits.per_ip_burst, expected_nodes),
            subject: Quota::new(
                limits.per_subject_rps,
                limits.per_subject_burst,
                expected_nodes,
            ),
        }
    }
}

/// `limits` divided by the node count: the per-node quotas of the fallback.
fn per_node(limits: &RateLimits, expected_nodes: u32) -> RateLimits {
    let n = expected_nodes.max(1);
    let share = |q: u32| (q / n).max(1);
    RateLimits {
        per_ip_rps: share(limits.per_ip_rps),
        per_ip_burst: share(limits.per_ip_burst),
        per_subject_rps: share(limits.per_subject_rps),
        per_subject_burst: share(limits.per_subject_burst),
        ..limits.clone()
    }
}

/// This node's tokens for one key. Times are nanoseconds on the admission clock.
#[derive(Debug, Default)]
struct Lease {
    tokens: u32,
    expires: u64,
    /// Redis said nothing is free before this.
    refused_until: u64,
    /// A batch request for this key is in flight until this time at the latest (so no other
    /// request starts a second one). A time, not a flag: a request dropped while it waits on
    /// Redis (its client went away) leaves no flag behind that would stop batches for good.
    leasing_until: u64,
}

impl Lease {
    fn live_tokens(&self, now: u64) -> u32 {
        if now < self.expires { self.tokens } else { 0 }
    }

    fn idle(&self, now: u64) -> bool {
        self.live_tokens(now) == 0 && now >= self.refused_until && !self.leasing(now)
    }

    fn leasing(&self, now: u64) -> bool {
        now < self.leasing_until
    }
}

/// The lease table, sharded by key.
struct Leases {
    shards: Vec<Mutex<HashMap<AdmitKey, Lease>>>,
    hasher: RandomState,
}

impl Leases {
    fn new() -> Leases {
        Leases {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &AdmitKey) -> MutexGuard<'_, HashMap<AdmitKey, Lease>> {
        let i = (self.hasher.hash_one(key) as usize) % self.shards.len();
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn all(&self) -> impl Iterator<Item = MutexGuard<'_, HashMap<AdmitKey, Lease>>> {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// What Redis answered for one lease request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Granted {
    Tokens(u32),
    Wait(Duration),
}

/// Whether the fallback is on, and when Redis is tried next.
#[derive(Debug, Default)]
struct Outage {
    active: AtomicBool,
    /// Admission-clock nanoseconds.
    retry_at: AtomicU64,
}

impl Outage {
    /// Whether this request may ask Redis: always while it answers; during an outage, one
    /// request per retry interval (the one that moves `retry_at` on).
    fn may_try(&self, now: u64) -> bool {
        if !self.active.load(Ordering::Relaxed) {
            return true;
        }
        let at = self.retry_at.load(Ordering::Relaxed);
        now >= at
            && self
                .retry_at
                .compare_exchange(
                    at,
                    now + retry_nanos(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn failed(&self, now: u64, fault: &RedisFault) {
        self.retry_at.store(now + retry_nanos(), Ordering::Relaxed);
        if !self.active.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %fault, "rate limits: Redis unreachable, per-node quotas until it answers");
        }
    }

    fn answered(&self) {
        if self.active.swap(false, Ordering::Relaxed) {
            tracing::info!("rate limits: Redis answers again, quotas shared again");
        }
    }
}

fn retry_nanos() -> u64 {
    RATE_LIMIT_REDIS_RETRY_MS * 1_000_000
}

fn lease_ttl_nanos() -> u64 {
    RATE_LIMIT_LEASE_TTL_MS * 1_000_000
}

/// Counts of one limit for tests and benches: how often Redis was asked, and what went where.
#[derive(Debug, Default)]
struct Counters {
    round_trips: AtomicU64,
    local: AtomicU64,
    fallback: AtomicU64,
    bad_replies: AtomicU64,
}

/// A snapshot of [`RedisAdmission`]'s counters for one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdmissionStats {
    /// Lease requests sent to Redis.
    pub round_trips: u64,
    /// Requests admitted from a lease without a round trip.
    pub local: u64,
    /// Requests counted against the per-node fallback limits.
    pub fallback: u64,
    /// Answers that were not usable (garbage in a key, a wrong reply).
    pub bad_replies: u64,
}

/// The rate limits of stage 4, shared by every node through Redis (see the module doc).
pub struct RedisAdmission {
    redis: Arc<Redis>,
    clock: AdmitClock,
    expected_nodes: u32,
    quotas: ArcSwap<Quotas>,
    leases: Leases,
    /// The per-node limits while Redis is unreachable (and for a lookup it answered garbage).
    fallback: Admission,
    outage: Outage,
    /// Per limit: `[ip, subject]`.
    counters: [Counters; 2],
}

impl std::fmt::Debug for RedisAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAdmission")
            .field("expected_nodes", &self.expected_nodes)
            .field("quotas", &**self.quotas.load())
            .finish_non_exhaustive()
    }
}

impl AdmissionStore for RedisAdmission {
    async fn admit(&self, client: IpAddr, subject: Option<&str>) -> Result<(), RateLimited> {
        let quotas = **self.quotas.load();
        self.admit_key(AdmitKey::Ip(client), LimitKind::Ip, quotas.ip)
            .await?;
        if let Some(subject) = subject {
            self.admit_key(
                AdmitKey::Subject(subject.to_owned()),
                LimitKind::Subject,
                quotas.subject,
            )
            .await?;
        }
        Ok(())
    }
}

/// How a request is decided after a look at its key's lease.
enum Local {
    /// Spent a leased token; `top_up`: this request then refills the lease.
    Spent { top_up: bool },
    /// Redis said nothing is free yet.
    Refused(Duration),
    /// Nothing leased: ask Redis for `want` tokens; `leasing`: as this node's one batch request
    /// in flight for the key.
    Ask { want: u32, leasing: bool },
    /// Redis is unreachable and not due for a retry: the per-node quota.
    FallBack,
}

/// Why Redis is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// A batch, one token of it this request's.
    Lease,
    /// This request's token alone (a batch request is already in flight).
    One,
    /// A batch refilling a low lease (the request was admitted from it already).
    TopUp,
}

impl RedisAdmission {
    /// Quotas of `limits` shared by all nodes through `redis`; `expected_nodes` divides them
    /// while Redis is unreachable and sizes the leases.
    pub fn new(
        redis: Arc<Redis>,
        limits: &RateLimits,
        expected_nodes: u32,
        clock: AdmitClock,
    ) -> RedisAdmission {
        let expected_nodes = expected_nodes.max(1);
        RedisAdmission {
            redis,
            fallback: Admission::new(&per_node(limits, expected_nodes), clock.clone()),
            clock,
            expected_nodes,
            quotas: ArcSwap::from_pointee(Quotas::new(limits, expected_nodes)),
            leases: Leases::new(),
            outage: Outage::default(),
            counters: Default::default(),
        }
    }

    /// Apply the quotas of a new config. Redis's state is a time, meaningful under any quota,
    /// so counters carry over; the fallback limiters start over if their quota changed.
    pub fn update(&self, limits: &RateLimits) {
        let quotas = Quotas::new(limits, self.expected_nodes);
        if **self.quotas.load() != quotas {
            self.quotas.store(Arc::new(quotas));
        }
        self.fallback.update(&per_node(limits, self.expected_nodes));
    }

    /// Whether the per-node fallback is on (Redis did not answer the last time it was asked).
    pub fn fallback_active(&self) -> bool {
        self.outage.active.load(Ordering::Relaxed)
    }

    /// This store's line in `/readyz`.
    pub fn health(&self) -> StoreHealth {
        if self.fallback_active() {
            StoreHealth::degraded("rate limits", "per-node quotas (quota / expected_nodes)")
        } else {
            StoreHealth::ok("rate limits")
        }
    }

    /// Forget leases that hold nothing (run periodically), and idle fallback keys.
    pub fn evict_idle(&self) {
        let now = self.now();
        for mut shard in self.leases.all() {
            shard.retain(|_, lease| !lease.idle(now));
            shard.shrink_to_fit();
        }
        self.fallback.evict_idle();
    }

    /// Keys with a lease or a remembered refusal (IP, subject).
    pub fn tracked_keys(&self) -> (usize, usize) {
        let (mut ip, mut subject) = (0, 0);
        for shard in self.leases.all() {
            for key in shard.keys() {
                match key {
                    AdmitKey::Ip(_) => ip += 1,
                    AdmitKey::Subject(_) => subject += 1,
                }
            }
        }
        (ip, subject)
    }

    /// The counters of one limit.
    pub fn stats(&self, kind: LimitKind) -> AdmissionStats {
        let c = self.counters(kind);
        AdmissionStats {
            round_trips: c.round_trips.load(Ordering::Relaxed),
            local: c.local.load(Ordering::Relaxed),
            fallback: c.fallback.load(Ordering::Relaxed),
            bad_replies: c.bad_replies.load(Ordering::Relaxed),
        }
    }

    fn counters(&self, kind: LimitKind) -> &Counters {
        match kind {
            LimitKind::Ip => &self.counters[0],
            LimitKind::Subject => &self.counters[1],
        }
    }

    fn now(&self) -> u64 {
        self.clock.now().as_u64()
    }

    async fn admit_key(
        &self,
        key: AdmitKey,
        kind: LimitKind,
        quota: Quota,
    ) -> Result<(), RateLimited> {
        let now = self.now();
        match self.look_locally(&key, quota, now) {
            Local::Spent { top_up } => {
                self.counters(kind).local.fetch_add(1, Ordering::Relaxed);
                if top_up {
                    // Admitted already: the answer only refills the lease.
                    let _ = self
                        .ask(key, kind, quota, quota.lease, now, Ask::TopUp)
                        .await;
                }
                Ok(())
            }
            Local::Refused(retry_after) => Err(RateLimited { kind, retry_after }),
            Local::FallBack => self.fall_back(&key, kind),
            Local::Ask { want, leasing } => {
                let ask = if leasing { Ask::Lease } else { Ask::One };
                self.ask(key, kind, quota, want, now, ask).await
            }
        }
    }

    fn look_locally(&self, key: &AdmitKey, quota: Quota, now: u64) -> Local {
        let mut shard = self.leases.shard(key);
        let lease = match shard.get_mut(key) {
            Some(lease) => lease,
            None => {
                if !self.outage.may_try(now) {
                    return Local::FallBack;
                }
                let lease = Lease {
                    leasing_until: now + lease_ttl_nanos(),
                    ..Lease::default()
                };
                shard.insert(key.clone(), lease);
                return Local::Ask {
                    want: quota.lease,
                    leasing: true,
                };
            }
        };
        if lease.live_tokens(now) > 0 {
            lease.tokens -= 1;
            let top_up = quota.lease > 1
                && lease.tokens <= quota.low_water()
                && !lease.leasing(now)
                && self.outage.may_try(now);
            if top_up {
                lease.leasing_until = now + lease_ttl_nanos();
            }
            Local::Spent { top_up }
        } else if now < lease.refused_until {
            Local::Refused(Duration::from_nanos(lease.refused_until - now))
        } else if !self.outage.may_try(now) {
            Local::FallBack
        } else if lease.leasing(now) {
            // This node's lease request for the key is in flight: ask for this request's token
            // alone, so concurrent requests on a cold key do not each lease a batch.
            Local::Ask {
                want: 1,
                leasing: false,
            }
        } else {
            lease.leasing_until = now + lease_ttl_nanos();
            Local::Ask {
                want: quota.lease,
                leasing: true,
            }
        }
    }

    /// Ask Redis for `want` tokens of `key` and settle the answer in its lease; for
    /// [`Ask::Lease`] and [`Ask::One`] one of them is this request's.
    async fn ask(
        &self,
        key: AdmitKey,
        kind: LimitKind,
        quota: Quota,
        want: u32,
        now: u64,
        ask: Ask,
    ) -> Result<(), RateLimited> {
        let answer = self.lease(&key, kind, quota, want).await;
        let leasing = matches!(ask, Ask::Lease | Ask::TopUp);
        let mut shard = self.leases.shard(&key);
        let Ok(answer) = answer else {
            if leasing && let Some(lease) = shard.get_mut(&key) {
                lease.leasing_until = 0;
            }
            drop(shard);
            return match ask {
                // The tokens left are still spent; then the fallback counts.
                Ask::TopUp => Ok(()),
                Ask::Lease | Ask::One => self.fall_back(&key, kind),
            };
        };
        let lease = shard.entry(key).or_default();
        if leasing {
            lease.leasing_until = 0;
        }
        let mine = u32::from(!matches!(ask, Ask::TopUp));
        match answer {
            Granted::Tokens(n) => {
                lease.tokens = lease.live_tokens(now) + n - mine;
                lease.expires = now + lease_ttl_nanos();
                Ok(())
            }
            Granted::Wait(retry_after) => {
                lease.refused_until = now + nanos(retry_after);
                if mine == 0 {
                    Ok(())
                } else if lease.live_tokens(now) > 0 {
                    // A lease that landed meanwhile has room for this request.
                    lease.tokens -= 1;
                    Ok(())
                } else {
                    Err(RateLimited { kind, retry_after })
                }
            }
        }
    }

    fn fall_back(&self, key: &AdmitKey, kind: LimitKind) -> Result<(), RateLimited> {
        self.counters(kind).fallback.fetch_add(1, Ordering::Relaxed);
        self.fallback.admit_key(key)
    }

    /// Ask Redis for up to `want` tokens of `key`. A fault turns the fallback on (down, slow)
    /// or is this lookup's alone (a broken answer).
    async fn lease(
        &self,
        key: &AdmitKey,
        kind: LimitKind,
        quota: Quota,
        want: u32,
    ) -> Result<Granted, RedisFault> {
        let counters = self.counters(kind);
        counters.round_trips.fetch_add(1, Ordering::Relaxed);
        let now_arg = self
            .clock
            .shared_micros()
            .and_then(|m| i64::try_from(m).ok())
            .unwrap_or(-1);
        let mut call = GCRA.key(self.redis_key(key));
        call.arg(quota.interval_micros())
            .arg(quota.burst)
            .arg(want)
            .arg(now_arg);
        let answer = self
            .redis
            .invoke::<Vec<i64>>(&call)
            .await
            .and_then(|reply| read_reply(&reply, quota, want));
        match &answer {
            Ok(_) => self.outage.answered(),
            Err(fault @ (RedisFault::Down(_) | RedisFault::Timeout)) => {
                self.outage.failed(self.now(), fault);
            }
            Err(fault @ RedisFault::BadReply(_)) => {
                let n = counters.bad_replies.fetch_add(1, Ordering::Relaxed) + 1;
                // Logged at 1, 2, 4, 8, ...: a broken key on a busy path does not flood the log.
                if n.is_power_of_two() {
                    tracing::warn!(error = %fault, count = n, "rate limits: unusable answer from Redis, per-node quota for that request");
                }
            }
        }
        answer
    }

    fn redis_key(&self, key: &AdmitKey) -> String {
        match key {
            AdmitKey::Ip(ip) => self.redis.key("rate-ip", &ip.to_string()),
            // Hashed: subjects are often e-mail addresses, and may be long.
            AdmitKey::Subject(subject) => {
                let digest = sha2::Sha256::digest(subject.as_bytes());
                self.redis.key("rate-subject", &hex::encode(digest))
            }
        }
    }
}

/// The script's answer, checked: a grant beyond what was asked, a wait longer than one
/// emission interval (the longest a well-formed state can make anyone wait), or any other shape
/// is a broken answer.
fn read_reply(reply: &[i64], quota: Quota, want: u32) -> Result<Granted, RedisFault> {
    // One emission interval, plus a millisecond of rounding.
    let longest_wait = quota.interval_micros().ceil() as i64 + 1_000;
    match *reply {
        [granted, 0] if granted >= 1 && granted <= i64::from(want) => {
            Ok(Granted::Tokens(granted as u32))
        }
        [0, wait] if (0..=longest_wait).contains(&wait) => {
            Ok(Granted::Wait(Duration::from_micros(wait.max(1) as u64)))
        }
        [-1, _] => Err(RedisFault::BadReply("rate-limit state is not a time")),
        _ => Err(RedisFault::BadReply("rate-limit reply out of range")),
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits(rps: u32, burst: u32) -> RateLimits {
        RateLimits {
            per_ip_rps: rps,
            per_ip_burst: burst,
            per_subject_rps: rps,
            per_subject_burst: burst,
            ..RateLimits::default()
        }
    }

    #[test]
    fn lease_is_a_tenth_of_the_node_share_of_the_smaller_of_rate_and_burst() {
        assert_eq!(Quota::new(100, 100, 3).lease, 3);
        assert_eq!(Quota::new(1000, 50, 1).lease, 5);
        assert_eq!(Quota::new(1_000_000, 1_000_000, 3).lease, 33_333);
        // Tight quotas ask Redis for every request: exact.
        assert_eq!(Quota::new(5, 10, 3).lease, 1);
        assert_eq!(Quota::new(0, 0, 0).lease, 1);
    }

    #[test]
    fn per_node_fallback_divides_rounding_down_but_never_to_zero() {
        let l = per_node(&limits(100, 10), 3);
        assert_eq!((l.per_ip_rps, l.per_ip_burst), (33, 3));
        let l = per_node(&limits(2, 1), 3);
        assert_eq!((l.per_ip_rps, l.per_ip_burst), (1, 1));
    }

    #[test]
    fn replies_outside_what_was_asked_are_broken_answers() {
        let q = Quota::new(100, 100, 1); // interval 10 ms
        assert_eq!(read_reply(&[3, 0], q, 10).unwrap(), Granted::Tokens(3));
        assert_eq!(
            read_reply(&[0, 2_500], q, 10).unwrap(),
            Granted::Wait(Duration::from_micros(2_500))
        );
        for bad in [
            &[11, 0][..],
            &[-1, 0],
            &[0, 60_000_000],
            &[0, -5],
            &[1],
            &[],
            &[1, 0, 0],
            &[2, 7],
        ] {
            assert!(
                matches!(read_reply(bad, q, 10), Err(RedisFault::BadReply(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_idle_lease_holds_nothing() {
        let l = Lease {
            tokens: 3,
            expires: 10,
            refused_until: 0,
            leasing_until: 0,
        };
        assert!(!l.idle(5));
        assert!(l.idle(10), "expired tokens do not count");
        let l = Lease {
            refused_until: 20,
            ..Lease::default()
        };
        assert!(!l.idle(10));
        assert!(l.idle(20));
        let l = Lease {
            leasing_until: 30,
            ..Lease::default()
        };
        assert!(!l.idle(25), "a batch request in flight");
        assert!(l.idle(30), "one dropped long ago is not");
    }
}
