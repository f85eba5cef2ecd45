//! Stage 6, the cache: memory, then an encrypted disk tier, in front of the backends (originals,
//! in aligned chunks) and of the preprocessing jobs (derived outputs, one entry each).
//!
//! It never decides access: the pipeline calls it only with an admitted plan, and its keys hold
//! the authority partition, so a hit is served only where a miss would have been. It knows
//! nothing of HTTP requests or statuses.
//!
//! This file is the interface the pipeline and the admin API use; the issue-12 work fills it in
//! (`key.rs`: what identifies an entry; `mem.rs`: the memory tier; `fill.rs`: one origin fetch
//! per missing chunk, waiters streaming as bytes arrive; `disk.rs`: the encrypted disk tier).

pub mod disk;

use std::sync::Arc;

use crate::backend::{AnyBackend, BackendError};
use crate::config::CacheConfig;
use crate::telemetry::Metrics;

/// How a response's bytes were obtained, for the audit record (`cache`) and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every byte from the memory tier.
    HitMemory,
    /// Some bytes from the disk tier, none from the origin.
    HitDisk,
    /// This request fetched from the origin (it led at least one fill).
    Miss,
    /// It waited on fills other requests led, and fetched nothing itself.
    Coalesced,
    /// Not cached: no `[cache]`, the source opted out, or a request the cache does not serve.
    Bypass,
}

impl Outcome {
    /// The audit record's `cache` value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::HitMemory => "hit-memory",
            Outcome::HitDisk => "hit-disk",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Bypass => "bypass",
        }
    }
}

/// What an admin purge removes (every version, representation, partition and chunk of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    Source(String),
    Prefix { source: String, prefix: String },
    Key { source: String, key: String },
}

/// A point-in-time view for `GET /admin/cache`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub memory_bytes: u64,
    pub memory_budget_bytes: u64,
    pub memory_entries: u64,
    pub disk_bytes: u64,
    pub disk_budget_bytes: u64,
    pub disk_entries: u64,
    /// The disk tier stopped writing after an error (full disk, I/O error); memory still serves.
    pub disk_degraded: bool,
    pub inflight_fills: u64,
}

/// Why the cache could not be built at start (a disk directory it cannot use).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache disk directory {dir}: {source}")]
    Disk {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The cache, built once per process from `[cache]` and held in [`crate::state::Shared`].
pub struct Cache {
    config: CacheConfig,
    #[allow(dead_code)]
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

impl Cache {
    pub fn new(config: &CacheConfig, metrics: Arc<Metrics>) -> Result<Cache, CacheError> {
        Ok(Cache {
            config: config.clone(),
            metrics,
        })
    }

    /// Remove every entry `what` names, from both tiers; returns how many entries went.
    pub fn purge(&self, what: &Purge) -> u64 {
        let _ = what;
        0
    }

    pub fn stats(&self) -> Stats {
        Stats {
            memory_budget_bytes: self.config.memory_bytes,
            disk_budget_bytes: self.config.disk.as_ref().map_or(0, |d| d.max_bytes),
            ..Stats::default()
        }
    }

    /// Read `key` of `source` whole through the cache with the gateway's own authority (admin
    /// prewarm), discarding the bytes; returns the object's size.
    pub async fn prewarm_object(
        &self,
        backend: &AnyBackend,
        source: &str,
        key: &str,
    ) -> Result<u64, BackendError> {
        let _ = (backend, source, key);
        Err(BackendError::Protocol(
            "the cache does not fill yet".to_owned(),
        ))
    }
}
