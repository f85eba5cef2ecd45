//! The encrypted disk tier. STUB in the core branch (issue 12): the disk helper's branch brings
//! the real store with this same interface; until then it stores nothing and finds nothing.

use std::sync::Arc;

use bytes::Bytes;

use super::{CacheError, Purge};
use crate::config::DiskCacheConfig;
use crate::telemetry::Metrics;

/// One chunk's identity for the disk tier: `id` is [`super::key::ChunkId`]'s encoding (hashed
/// for the file name, bound as associated data); `source` and `key` are kept (sealed) for purges.
#[derive(Debug, Clone, Copy)]
pub struct DiskKey<'a> {
    pub source: &'a str,
    pub key: &'a [u8],
    pub id: &'a [u8],
}

#[derive(Debug, Clone, Copy, Default)]
pub struct DiskStats {
    pub bytes: u64,
    pub entries: u64,
    pub degraded: bool,
}

#[derive(Debug)]
pub struct DiskTier;

impl DiskTier {
    pub fn open(config: &DiskCacheConfig, metrics: Arc<Metrics>) -> Result<DiskTier, CacheError> {
        let _ = (config, metrics);
        Ok(DiskTier)
    }

    pub async fn get(&self, id: &DiskKey<'_>) -> Option<Bytes> {
        let _ = id;
        None
    }

    pub fn put(&self, id: &DiskKey<'_>, data: Bytes) {
        let _ = (id, data);
    }

    pub fn purge(&self, what: &Purge) -> u64 {
        let _ = what;
        0
    }

    pub fn stats(&self) -> DiskStats {
        DiskStats::default()
    }
}
