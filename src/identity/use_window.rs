//! Use windows: a signed URL that, once used, keeps working past its `exp` while it is in use.
//!
//! A token carries a use window when it has the `idle` claim (seconds, > 0); `max` (seconds,
//! `idle <= max <=` `[identity] use_window_max_secs`, which is also its default) and `bind`
//! (default true) are optional and mean nothing without `idle` (such a token is refused). A window
//! needs `exp`: the URL must be FIRST used before `exp` (+ the clock skew). From its first use on,
//! the window alone decides: the token is accepted while it is used at least every `idle` seconds
//! (a gap of exactly `idle` is still accepted) and for less than `max` seconds after the first
//! use, and, with `bind`, only from the client address of the first use. Before `exp` and before
//! any use it is an ordinary token. Revocation ends it at once, like any token
//! ([`super::Identity::verify`] asks the revocation store first and records no use of a revoked
//! token). The window's times are the gateway's own clock: no skew applies to them.
//!
//! This module owns the claims' meaning ([`UseWindow`]), the decision ([`decide`]) and the state
//! behind it: first use, last use and the bound address per token, keyed by the SHA-256 of the
//! compact token ([`WindowKey`]: always present and unique to the exact token, where a `jti` is
//! optional and chosen by the minting app; a re-signed URL gets a fresh window). The state goes
//! through [`UseWindowStore`], dispatched by [`UseWindows`], so a store kept outside the process
//! (Redis, issue 15) is one more variant; the one implementation today is [`MemoryUseWindows`].
//!
//! Bounds: an entry is kept until `max(first use + max, first-use deadline)` (after that its token
//! is refused by `exp` alone, so forgetting it changes no answer) and swept then; at most
//! [`USE_WINDOW_MAX_ENTRIES`] entries. A store that is full after a sweep refuses the first use
//! of a new window token ([`UseWindowError::Full`], 503) rather than evicting a live window:
//! evicting one would let its token start over (with a new binding) before its `exp`, or cut off
//! a labeler mid-session, and only holders of valid tokens the app signed can fill it.
//!
//! It knows nothing of HTTP: the client address and the clock are given.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};

use crate::config::defaults::USE_WINDOW_MAX_ENTRIES;

/// A token's use window, from its claims (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UseWindow {
    idle_secs: u64,
    max_secs: u64,
    bind: bool,
}

impl UseWindow {
    /// The window the claims `idle`, `max`, `bind` describe, or which claim is malformed. `exp`
    /// is the token's; `max_cap` the configured `use_window_max_secs` (the default `max` and its
    /// upper bound).
    pub(crate) fn from_claims(
        idle: Option<u64>,
        max: Option<u64>,
        bind: Option<bool>,
        exp: Option<u64>,
        max_cap: u64,
    ) -> Result<Option<UseWindow>, &'static str> {
        let Some(idle) = idle else {
            return match (max, bind) {
                (None, None) => Ok(None),
                _ => Err("max or bind without idle"),
            };
        };
        if exp.is_none() {
            return Err("idle without exp");
        }
        if idle == 0 {
            return Err("idle");
        }
        let max = max.unwrap_or(max_cap);
        if max == 0 || max > max_cap {
            return Err("max");
        }
        if idle > max {
            return Err("idle above max");
        }
        Ok(Some(UseWindow {
            idle_secs: idle,
            max_secs: max,
            bind: bind.unwrap_or(true),
        }))
    }

    /// A window for benches and tests (feature `bench`); tokens make theirs from claims.
    #[cfg(feature = "bench")]
    #[doc(hidden)]
    pub fn for_bench(idle_secs: u64, max_secs: u64, bind: bool) -> UseWindow {
        UseWindow {
            idle_secs,
            max_secs,
            bind,
        }
    }

    pub fn idle_secs(&self) -> u64 {
        self.idle_secs
    }
    pub fn max_secs(&self) -> u64 {
        self.max_secs
    }
    /// Bound to the client address of the first use.
    pub fn binds(&self) -> bool {
        self.bind
    }
}

impl fmt::Display for UseWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "then while used at least every {} s, for at most {} s after the first use",
            self.idle_secs, self.max_secs
        )?;
        if self.bind {
            write!(f, ", from the first use's client address only")
        } else {
            write!(f, ", from any client address")
        }
    }
}

/// The state's key: the SHA-256 of the compact token. Never the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowKey([u8; 32]);

impl WindowKey {
    pub fn of(token: &str) -> WindowKey {
        WindowKey(Sha256::digest(token.as_bytes()).into())
    }

    /// Hex, for a store that keys by text.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

/// One use of a window token, to judge (and record when accepted).
#[derive(Debug, Clone, Copy)]
pub struct Use {
    pub key: WindowKey,
    pub window: UseWindow,
    /// The first use must come before this (unix s): `exp` + the clock skew.
    pub first_use_by: u64,
    pub client: IpAddr,
    /// Unix seconds.
    pub now: u64,
}

/// Why a window token was refused by its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lapse {
    /// Not used for more than `idle` seconds.
    Idle,
    /// `max` seconds have passed since the first use.
    Max,
}

impl Lapse {
    pub fn as_str(self) -> &'static str {
        match self {
            Lapse::Idle => "idle",
            Lapse::Max => "max",
        }
    }
}

/// What the window says about one use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The first use, before the deadline: the window starts now.
    Started,
    /// A use inside a live window.
    Continued,
    /// Never used, and the first-use deadline (`exp`) has passed.
    NotStarted,
    /// Used before, but the window has lapsed.
    Lapsed(Lapse),
    /// The window is bound to another client address.
    Elsewhere,
}

impl Outcome {
    pub fn accepted(self) -> bool {
        matches!(self, Outcome::Started | Outcome::Continued)
    }
}

/// What a store keeps per window token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// First and last accepted use (unix s).
    pub first: u64,
    pub last: u64,
    /// The first use's client address.
    pub client: IpAddr,
    /// Kept until then (unix s); forgotten after, with no change to any answer.
    pub until: u64,
}

/// The one decision, for every store: what `use_` gets given the token's entry, and the entry to
/// keep if the use is recorded. The address is checked first, so a client at another address
/// learns nothing about the window (live or lapsed) while it is kept.
pub fn decide(entry: Option<&Entry>, use_: &Use) -> (Outcome, Option<Entry>) {
    let w = use_.window;
    let now = use_.now;
    let Some(e) = entry else {
        if now >= use_.first_use_by {
            return (Outcome::NotStarted, None);
        }
        let started = Entry {
            first: now,
            last: now,
            client: use_.client,
            until: now.saturating_add(w.max_secs).max(use_.first_use_by),
        };
        return (Outcome::Started, Some(started));
    };
    if w.bind && e.client != use_.client {
        return (Outcome::Elsewhere, None);
    }
    if now >= e.first.saturating_add(w.max_secs) {
        return (Outcome::Lapsed(Lapse::Max), None);
    }
    if now > e.last.saturating_add(w.idle_secs) {
        return (Outcome::Lapsed(Lapse::Idle), None);
    }
    let continued = Entry {
        last: e.last.max(now),
        ..*e
    };
    (Outcome::Continued, Some(continued))
}

#[derive(Debug, thiserror::Error)]
pub enum UseWindowError {
    /// Every slot holds a live window: a new window cannot start (fail closed).
    #[error("the use-window store is full ({0} live windows)")]
    Full(usize),
    /// The shared store (Redis) cannot answer, or answered something unusable (fail closed).
    #[error("the use-window store is unavailable")]
    Unavailable,
}

/// Where window state lives. Every method may do I/O.
///
/// A shared implementation (Redis) must run [`decide`] and the write as one atomic step per key
/// (a script), store [`Entry`] with a TTL of `until`, and answer an error rather than a guess
/// when it cannot reach its store: the caller refuses the request (fail closed).
pub trait UseWindowStore: Send + Sync {
    /// Judge one use of a window token; when `record` and accepted, record it (the first use
    /// starts the window and binds it; later ones move the last use).
    fn use_token(
        &self,
        use_: &Use,
        record: bool,
    ) -> impl Future<Output = Result<Outcome, UseWindowError>> + Send;

    /// Forget every entry past its `until`; how many were dropped.
    fn sweep(&self, now: u64) -> impl Future<Output = usize> + Send;
}

/// A boxed future, for stores behind `dyn`.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`UseWindowStore`] for a store kept outside the process (Redis, `state::redis::use_windows`,
/// which depends on this module and so cannot be named here): object-safe, one boxed future
/// per call.
pub trait SharedUseWindowStore: Send + Sync {
    fn use_token<'a>(
        &'a self,
        use_: &'a Use,
        record: bool,
    ) -> BoxFuture<'a, Result<Outcome, UseWindowError>>;
}

/// The window store of a gateway.
pub enum UseWindows {
    Memory(MemoryUseWindows),
    /// Shared by every node (Redis); entries expire there by themselves.
    Shared(Box<dyn SharedUseWindowStore>),
}

impl UseWindows {
    /// In this process, at most [`USE_WINDOW_MAX_ENTRIES`] windows.
    pub fn memory() -> UseWindows {
        UseWindows::Memory(MemoryUseWindows::new(USE_WINDOW_MAX_ENTRIES))
    }
}

impl UseWindowStore for UseWindows {
    async fn use_token(&self, use_: &Use, record: bool) -> Result<Outcome, UseWindowError> {
        match self {
            UseWindows::Memory(m) => m.use_token(use_, record),
            UseWindows::Shared(s) => s.use_token(use_, record).await,
        }
    }

    async fn sweep(&self, now: u64) -> usize {
        match self {
            UseWindows::Memory(m) => m.sweep(now),
            UseWindows::Shared(_) => 0,
        }
    }
}

/// Window state in this process: lost at restart, not shared between nodes.
pub struct MemoryUseWindows {
    entries: Mutex<HashMap<WindowKey, Entry>>,
    capacity: usize,
}

impl MemoryUseWindows {
    pub fn new(capacity: usize) -> MemoryUseWindows {
        MemoryUseWindows {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// [`UseWindowStore::use_token`], without I/O.
    pub fn use_token(&self, use_: &Use, record: bool) -> Result<Outcome, UseWindowError> {
        // A poisoned lock still holds whole entries (each is replaced by one insert).
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let current = entries.get(&use_.key);
        let is_new = current.is_none();
        let (outcome, next) = decide(current, use_);
        let Some(next) = next.filter(|_| record) else {
            return Ok(outcome);
        };
        if is_new && entries.len() >= self.capacity {
            entries.retain(|_, e| e.until > use_.now);
            if entries.len() >= self.capacity {
                return Err(UseWindowError::Full(entries.len()));
            }
        }
        entries.insert(use_.key, next);
        Ok(outcome)
    }

    /// Forget every entry past its `until`; how many were dropped.
    pub fn sweep(&self, now: u64) -> usize {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let before = entries.len();
        entries.retain(|_, e| e.until > now);
        before - entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const CAP: u64 = 43_200;

    fn window(idle: u64, max: u64, bind: bool) -> UseWindow {
        UseWindow::from_claims(Some(idle), Some(max), Some(bind), Some(NOW), CAP)
            .unwrap()
            .unwrap()
    }

    fn at(key: &str, w: UseWindow, client: &str, now: u64) -> Use {
        Use {
            key: WindowKey::of(key),
            window: w,
            first_use_by: NOW + 30,
            client: client.parse().unwrap(),
            now,
        }
    }

    #[test]
    fn claims_without_idle_are_no_window_and_nonsense_is_refused() {
        let w = |idle, max, bind, exp| UseWindow::from_claims(idle, max, bind, exp, CAP);
        assert_eq!(w(None, None, None, Some(NOW)), Ok(None));
        assert_eq!(w(None, None, None, None), Ok(None));
        assert!(w(None, Some(60), None, Some(NOW)).is_err(), "max alone");
        assert!(w(None, None, Some(false), Some(NOW)).is_err(), "bind alone");
        assert_eq!(w(Some(60), None, None, None), Err("idle without exp"));
        assert_eq!(w(Some(0), None, None, Some(NOW)), Err("idle"));
        assert_eq!(w(Some(60), Some(0), None, Some(NOW)), Err("max"));
        assert_eq!(w(Some(60), Some(CAP + 1), None, Some(NOW)), Err("max"));
        assert_eq!(
            w(Some(61), Some(60), None, Some(NOW)),
            Err("idle above max")
        );
        assert_eq!(
            w(Some(CAP + 1), None, None, Some(NOW)),
            Err("idle above max")
        );
        // Defaults: max is the configured cap, bind is true.
        let d = w(Some(600), None, None, Some(NOW)).unwrap().unwrap();
        assert_eq!((d.idle_secs(), d.max_secs(), d.binds()), (600, CAP, true));
        let e = w(Some(60), Some(60), Some(false), Some(NOW))
            .unwrap()
            .unwrap();
        assert_eq!((e.idle_secs(), e.max_secs(), e.binds()), (60, 60, false));
    }

    #[test]
    fn first_use_must_come_before_the_deadline() {
        let w = window(60, 600, true);
        assert_eq!(
            decide(None, &at("t", w, "127.0.0.1", NOW + 30)).0,
            Outcome::NotStarted
        );
        let (o, e) = decide(None, &at("t", w, "127.0.0.1", NOW + 29));
        assert_eq!(o, Outcome::Started);
        let e = e.unwrap();
        assert_eq!((e.first, e.last), (NOW + 29, NOW + 29));
        assert_eq!(e.until, NOW + 29 + 600);
    }

    #[test]
    fn a_live_window_outlives_exp_until_an_idle_gap_or_max() {
        let m = MemoryUseWindows::new(10);
        let w = window(60, 200, true);
        let ok = |now| m.use_token(&at("t", w, "127.0.0.1", now), true).unwrap();
        assert_eq!(ok(NOW), Outcome::Started);
        assert_eq!(ok(NOW + 60), Outcome::Continued, "a gap of exactly idle");
        assert_eq!(ok(NOW + 120), Outcome::Continued, "past exp + skew");
        assert_eq!(ok(NOW + 181), Outcome::Lapsed(Lapse::Idle));
        // A refused use does not move the last use: the window stays lapsed.
        assert_eq!(ok(NOW + 182), Outcome::Lapsed(Lapse::Idle));

        let m = MemoryUseWindows::new(10);
        let ok = |now| m.use_token(&at("t", w, "127.0.0.1", now), true).unwrap();
        for t in (0..200).step_by(50) {
            assert_ne!(ok(NOW + t), Outcome::Lapsed(Lapse::Max), "{t}");
        }
        assert_eq!(ok(NOW + 199), Outcome::Continued);
        assert_eq!(ok(NOW + 200), Outcome::Lapsed(Lapse::Max));
    }

    #[test]
    fn a_bound_window_refuses_other_addresses_first() {
        let m = MemoryUseWindows::new(10);
        let w = window(60, 600, true);
        assert_eq!(
            m.use_token(&at("t", w, "127.0.0.1", NOW), true).unwrap(),
            Outcome::Started
        );
        for now in [NOW + 1, NOW + 500] {
            assert_eq!(
                m.use_token(&at("t", w, "127.0.0.2", now), true).unwrap(),
                Outcome::Elsewhere,
                "live or lapsed, the other address learns nothing"
            );
        }
        let free = window(60, 600, false);
        assert_eq!(
            m.use_token(&at("u", free, "127.0.0.1", NOW), true).unwrap(),
            Outcome::Started
        );
        assert_eq!(
            m.use_token(&at("u", free, "127.0.0.2", NOW + 1), true)
                .unwrap(),
            Outcome::Continued
        );
    }

    #[test]
    fn unrecorded_uses_change_nothing() {
        let m = MemoryUseWindows::new(10);
        let w = window(60, 600, true);
        assert_eq!(
            m.use_token(&at("t", w, "127.0.0.1", NOW), false).unwrap(),
            Outcome::Started
        );
        assert!(m.is_empty());
        assert_eq!(
            m.use_token(&at("t", w, "127.0.0.2", NOW), true).unwrap(),
            Outcome::Started
        );
        assert_eq!(
            m.use_token(&at("t", w, "127.0.0.2", NOW + 50), false)
                .unwrap(),
            Outcome::Continued
        );
        assert_eq!(
            m.use_token(&at("t", w, "127.0.0.2", NOW + 61), true)
                .unwrap(),
            Outcome::Lapsed(Lapse::Idle),
            "the unrecorded use at +50 did not extend the window"
        );
    }

    #[test]
    fn a_full_store_sweeps_then_refuses_new_windows_but_serves_live_ones() {
        let m = MemoryUseWindows::new(2);
        let w = window(60, 100, true);
        let first_use_by = |u: Use| Use {
            first_use_by: NOW + 10,
            ..u
        };
        let use_ = |k, now| m.use_token(&first_use_by(at(k, w, "127.0.0.1", now)), true);
        assert_eq!(use_("a", NOW).unwrap(), Outcome::Started);
        assert_eq!(use_("b", NOW).unwrap(), Outcome::Started);
        assert!(matches!(use_("c", NOW + 1), Err(UseWindowError::Full(2))));
        assert_eq!(
            use_("a", NOW + 2).unwrap(),
            Outcome::Continued,
            "live ones still served"
        );
        // Past `until` (first use + max, after the deadline) entries are swept to make room.
        let late = Use {
            first_use_by: NOW + 1_000,
            ..at("d", w, "127.0.0.1", NOW + 100)
        };
        assert_eq!(m.use_token(&late, true).unwrap(), Outcome::Started);
        assert_eq!(m.len(), 1);
        assert_eq!(m.sweep(NOW + 1_000), 1);
        assert!(m.is_empty());
    }

    #[test]
    fn an_entry_is_kept_until_the_first_use_deadline_so_a_window_cannot_restart() {
        // max shorter than the time left before exp: the lapsed entry outlives max.
        let w = window(60, 60, true);
        let u = Use {
            first_use_by: NOW + 1_000,
            ..at("t", w, "127.0.0.1", NOW)
        };
        let m = MemoryUseWindows::new(10);
        assert_eq!(m.use_token(&u, true).unwrap(), Outcome::Started);
        assert_eq!(m.sweep(NOW + 500), 0);
        let later = Use {
            now: NOW + 500,
            ..u
        };
        assert_eq!(
            m.use_token(&later, true).unwrap(),
            Outcome::Lapsed(Lapse::Max)
        );
        assert_eq!(m.sweep(NOW + 1_000), 1);
        let after = Use {
            now: NOW + 1_000,
            ..u
        };
        assert_eq!(m.use_token(&after, true).unwrap(), Outcome::NotStarted);
    }
}
