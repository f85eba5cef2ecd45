//! The rate-limit store of stage 4 (`pipeline/admit.rs`): two keyed GCRA limiters (governor),
//! one with the per-IP quota, one with the per-subject quota, both keyed by [`AdmitKey`].
//!
//! Long-lived state (held by [`super::Shared`], not by a config snapshot), so a reload does not
//! give every client a fresh burst. A reload that changes a quota replaces that limiter (its
//! counters start over: governor's state is relative to the quota it was built with); a reload
//! that leaves the quotas alone keeps every counter.
//!
//! Time comes from an [`AdmitClock`] so tests can drive it (governor's `FakeRelativeClock`).
//! It decides nothing about requests beyond "room or not" and picks no status.
//!
//! The stage asks an [`AnyAdmission`]: the counting ([`AdmissionStore::admit`]) is async, so
//! a store kept outside the process is another variant the pipeline does not see. Two stores:
//! [`Admission`], governor in memory (one node, the default), and
//! [`crate::state::redis::admission::RedisAdmission`], the quotas shared by every node through
//! Redis with a local fast path (`[redis]`). Quota updates and idle eviction stay synchronous:
//! they are housekeeping of the process's own state.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use governor::clock::{Clock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::RateLimits;
use crate::state::redis::admission::RedisAdmission;
use crate::telemetry::{Metrics, RateLimitedLabel};

/// What a limit is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AdmitKey {
    Ip(IpAddr),
    /// The principal's subject, once the identity stage provides one.
    Subject(String),
}

/// Which limit refused a request (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Ip,
    Subject,
}

impl LimitKind {
    pub fn label(self) -> &'static str {
        match self {
            LimitKind::Ip => "ip",
            LimitKind::Subject => "subject",
        }
    }
}

/// Over a limit: the client may retry after `retry_after`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} rate limit exceeded; retry after {retry_after:?}", kind.label())]
pub struct RateLimited {
    pub kind: LimitKind,
    pub retry_after: Duration,
}

impl RateLimited {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        secs.max(1)
    }
}

/// The time source of the limiters: the monotonic clock, or a fake one a test advances.
#[derive(Debug, Clone)]
pub enum AdmitClock {
    Monotonic(Instant),
    Fake(FakeRelativeClock),
}

impl AdmitClock {
    pub fn monotonic() -> AdmitClock {
        AdmitClock::Monotonic(Instant::now())
    }

    /// Now on the clock all nodes share, in microseconds, for state kept in Redis: a fake
    /// clock's reading (the test gateways of one process share one fake clock), or `None` for
    /// the real clock, whose origin is this process's start: Redis's own `TIME` is then the one
    /// clock of every node, so their skew does not matter.
    pub fn shared_micros(&self) -> Option<u64> {
        match self {
            AdmitClock::Monotonic(_) => None,
            AdmitClock::Fake(fake) => Some(fake.now().as_u64() / 1_000),
        }
    }
}

impl Default for AdmitClock {
    fn default() -> Self {
        AdmitClock::monotonic()
    }
}

impl Clock for AdmitClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match self {
            AdmitClock::Monotonic(origin) => Nanos::from(origin.elapsed()),
            AdmitClock::Fake(fake) => fake.now(),
        }
    }
}

type Limiter =
    RateLimiter<AdmitKey, DefaultKeyedStateStore<AdmitKey>, AdmitClock, NoOpMiddleware<Nanos>>;

/// One keyed limiter and the quota it was built with.
struct Keyed {
    rps: u32,
    burst: u32,
    limiter: Limiter,
}

impl Keyed {
    fn new(rps: u32, burst: u32, clock: &AdmitClock) -> Keyed {
        // Validation guarantees both are at least 1; the fallback keeps this total anyway.
        let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(nz(rps)).allow_burst(nz(burst));
        Keyed {
            rps,
            burst,
            limiter: RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock.clone()),
        }
    }
}

/// What a rate-limit store answers for one request.
pub trait AdmissionStore: Send + Sync {
    /// Count a request against the client address and, when there is one, the subject. Both
    /// must have room.
    fn admit(
        &self,
        client: IpAddr,
        subject: Option<&str>,
    ) -> impl Future<Output = Result<(), RateLimited>> + Send;
}

/// The rate-limit store of a gateway, dispatched without dynamic allocation.
pub enum AnyAdmission {
    Memory(Admission),
    /// Shared through Redis (`[redis]`), per-node quotas while Redis is unreachable.
    Redis(RedisAdmission),
}

impl AdmissionStore for AnyAdmission {
    async fn admit(&self, client: IpAddr, subject: Option<&str>) -> Result<(), RateLimited> {
        match self {
            AnyAdmission::Memory(a) => AdmissionStore::admit(a, client, subject).await,
            AnyAdmission::Redis(a) => AdmissionStore::admit(a, client, subject).await,
        }
    }
}

impl AnyAdmission {
    /// [`AdmissionStore::admit`], counting a refusal in the metrics.
    pub async fn admit_counted(
        &self,
        client: IpAddr,
        subject: Option<&str>,
        metrics: &Metrics,
    ) -> Result<(), RateLimited> {
        AdmissionStore::admit(self, client, subject)
            .await
            .inspect_err(|refused| count_refusal(refused, metrics))
    }

    /// Apply the quotas of a new config (see [`Admission::update`]).
    pub fn update(&self, limits: &RateLimits) {
        match self {
            AnyAdmission::Memory(a) => a.update(limits),
            AnyAdmission::Redis(a) => a.update(limits),
        }
    }

    /// Forget idle keys (run periodically).
    pub fn evict_idle(&self) {
        match self {
            AnyAdmission::Memory(a) => a.evict_idle(),
            AnyAdmission::Redis(a) => a.evict_idle(),
        }
    }

    /// Keys currently tracked (IP, subject).
    pub fn tracked_keys(&self) -> (usize, usize) {
        match self {
            AnyAdmission::Memory(a) => a.tracked_keys(),
            AnyAdmission::Redis(a) => a.tracked_keys(),
        }
    }

    /// Whether the limits are per node now because the shared store is unreachable (for
    /// `/readyz`: "degraded: per-node rate limits"). Always `false` in memory.
    pub fn fallback_active(&self) -> bool {
        match self {
            AnyAdmission::Memory(_) => false,
            AnyAdmission::Redis(a) => a.fallback_active(),
        }
    }
}

fn count_refusal(refused: &RateLimited, metrics: &Metrics) {
    metrics
        .rate_limited
        .get_or_create(&RateLimitedLabel {
            key: refused.kind.label(),
        })
        .inc();
}

impl AdmissionStore for Admission {
    async fn admit(&self, client: IpAddr, subject: Option<&str>) -> Result<(), RateLimited> {
        Admission::admit(self, client, subject)
    }
}

/// The rate limits of stage 4, in memory. Outlives snapshots; [`Admission::update`] applies new quotas.
pub struct Admission {
    clock: AdmitClock,
    /// `None`: no rate limits (benches that drive the pipeline directly).
    limiters: Option<Limiters>,
}

struct Limiters {
    ip: ArcSwap<Keyed>,
    subject: ArcSwap<Keyed>,
}

impl Admission {
    pub fn new(limits: &RateLimits, clock: AdmitClock) -> Admission {
        let limiters = Limiters {
            ip: ArcSwap::from_pointee(Keyed::new(limits.per_ip_rps, limits.per_ip_burst, &clock)),
            subject: ArcSwap::from_pointee(Keyed::new(
                limits.per_subject_rps,
                limits.per_subject_burst,
                &clock,
            )),
        };
        Admission {
            clock,
            limiters: Some(limiters),
        }
    }

    /// Admit everything (no limits).
    pub fn unlimited() -> Admission {
        Admission {
            clock: AdmitClock::default(),
            limiters: None,
        }
    }

    /// Apply the quotas of a new config. A limiter whose quota is unchanged keeps its counters.
    pub fn update(&self, limits: &RateLimits) {
        let Some(l) = &self.limiters else { return };
        let swap = |slot: &ArcSwap<Keyed>, rps: u32, burst: u32| {
            let current = slot.load();
            if current.rps != rps || current.burst != burst {
                slot.store(Arc::new(Keyed::new(rps, burst, &self.clock)));
            }
        };
        swap(&l.ip, limits.per_ip_rps, limits.per_ip_burst);
        swap(&l.subject, limits.per_subject_rps, limits.per_subject_burst);
    }

    /// Count a request against the client address and, when there is one, the subject. Both
    /// must have room.
    pub fn admit(&self, client: IpAddr, subject: Option<&str>) -> Result<(), RateLimited> {
        let Some(l) = &self.limiters else {
            return Ok(());
        };
        self.check(&l.ip.load().limiter, &AdmitKey::Ip(client), LimitKind::Ip)?;
        if let Some(subject) = subject {
            self.check(
                &l.subject.load().limiter,
                &AdmitKey::Subject(subject.to_owned()),
                LimitKind::Subject,
            )?;
        }
        Ok(())
    }

    /// [`Admission::admit`], counting a refusal in the metrics.
    pub fn admit_counted(
        &self,
        client: IpAddr,
        subject: Option<&str>,
        metrics: &Metrics,
    ) -> Result<(), RateLimited> {
        self.admit(client, subject)
            .inspect_err(|refused| count_refusal(refused, metrics))
    }

    /// Count a request against one key only (the limit its kind names).
    pub fn admit_key(&self, key: &AdmitKey) -> Result<(), RateLimited> {
        let Some(l) = &self.limiters else {
            return Ok(());
        };
        match key {
            AdmitKey::Ip(_) => self.check(&l.ip.load().limiter, key, LimitKind::Ip),
            AdmitKey::Subject(_) => self.check(&l.subject.load().limiter, key, LimitKind::Subject),
        }
    }

    fn check(&self, limiter: &Limiter, key: &AdmitKey, kind: LimitKind) -> Result<(), RateLimited> {
        limiter.check_key(key).map_err(|not_until| RateLimited {
            kind,
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// Forget keys whose state is indistinguishable from a fresh one (run periodically).
    pub fn evict_idle(&self) {
        if let Some(l) = &self.limiters {
            for slot in [&l.ip, &l.subject] {
                let keyed = slot.load();
                keyed.limiter.retain_recent();
                keyed.limiter.shrink_to_fit();
            }
        }
    }

    /// Keys currently tracked (IP, subject).
    pub fn tracked_keys(&self) -> (usize, usize) {
        match &self.limiters {
            Some(l) => (l.ip.load().limiter.len(), l.subject.load().limiter.len()),
            None => (0, 0),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits(per_ip: (u32, u32), per_subject: (u32, u32)) -> RateLimits {
        RateLimits {
            per_ip_rps: per_ip.0,
            per_ip_burst: per_ip.1,
            per_subject_rps: per_subject.0,
            per_subject_burst: per_subject.1,
            ..RateLimits::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let r = |ms| RateLimited {
            kind: LimitKind::Ip,
            retry_after: Duration::from_millis(ms),
        };
        assert_eq!(r(0).retry_after_secs(), 1);
        assert_eq!(r(1).retry_after_secs(), 1);
        assert_eq!(r(1000).retry_after_secs(), 1);
        assert_eq!(r(1001).retry_after_secs(), 2);
    }

    #[test]
    fn quota_update_keeps_counters_when_unchanged_and_resets_them_when_changed() {
        let fake = FakeRelativeClock::default();
        let a = Admission::new(&limits((1, 2), (1, 1)), AdmitClock::Fake(fake));
        let client = ip("192.0.2.1");
        assert!(a.admit(client, None).is_ok());
        assert!(a.admit(client, None).is_ok());
        assert!(a.admit(client, None).is_err());
        a.update(&limits((1, 2), (1, 1)));
        assert!(a.admit(client, None).is_err(), "same quota keeps the state");
        a.update(&limits((1, 3), (1, 1)));
        assert!(a.admit(client, None).is_ok(), "a new quota starts over");
    }

    #[test]
    fn idle_keys_are_evicted_once_their_bucket_is_full_again() {
        let fake = FakeRelativeClock::default();
        let a = Admission::new(
            &limits((10, 10), (100, 100)),
            AdmitClock::Fake(fake.clone()),
        );
        for n in 0..50u8 {
            assert!(a.admit(IpAddr::from([10, 0, 0, n]), Some("s")).is_ok());
        }
        assert_eq!(a.tracked_keys(), (50, 1));
        a.evict_idle();
        assert_eq!(a.tracked_keys(), (50, 1), "recent keys stay");
        fake.advance(Duration::from_secs(5));
        a.evict_idle();
        assert_eq!(a.tracked_keys(), (0, 0));
    }

    #[test]
    fn unlimited_admits_everything() {
        let a = Admission::unlimited();
        for _ in 0..10_000 {
            assert!(a.admit(ip("127.0.0.1"), Some("s")).is_ok());
        }
    }
}
