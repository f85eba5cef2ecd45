//! Whether the SAML stores and the use windows kept in Redis are served from Redis or from their
//! fallback, for `/readyz` ([`Degraded`]): set when a call finds Redis down or slow, cleared by
//! the next call it answers. A broken value in one key is that lookup's failure, not the store's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{RedisFault, StoreHealth};

/// A store's "Redis did not answer my last call" flag, shared with `/readyz`.
#[derive(Debug, Clone)]
pub struct Degraded {
    flag: Arc<AtomicBool>,
    store: &'static str,
    fallback: &'static str,
}

impl Degraded {
    /// `store` as `/readyz` names it; `fallback`: what it does while degraded.
    pub fn new(store: &'static str, fallback: &'static str) -> Degraded {
        Degraded {
            flag: Arc::new(AtomicBool::new(false)),
            store,
            fallback,
        }
    }

    /// Note the outcome of one call.
    pub fn note<T>(&self, outcome: &Result<T, RedisFault>) {
        let down = matches!(outcome, Err(RedisFault::Down(_) | RedisFault::Timeout));
        self.flag.store(down, Ordering::Relaxed);
    }

    pub fn health(&self) -> StoreHealth {
        if self.flag.load(Ordering::Relaxed) {
            StoreHealth::degraded(self.store, self.fallback)
        } else {
            StoreHealth::ok(self.store)
        }
    }
}
