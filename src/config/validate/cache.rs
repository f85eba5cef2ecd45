//! `[cache]` and the per-source `cache = false` — a child of `validate/mod.rs`, so it shares the
//! [`Checker`].
//!
//! Decisions the messages below explain to the operator:
//! - `chunk_bytes` is a power of two (256 KiB-16 MiB), so chunk boundaries are aligned the same
//!   way for every object and a chunk index is a shift.
//! - The disk tier needs `disk_dir` and `disk_bytes` together, and either `key` + `key_id` or
//!   `encrypt = false` written out: a disk tier without a key is never started by omission.
//! - The key is 32 bytes written as 64 hex characters (what `openssl rand -hex 32` prints); any
//!   other length or a non-hex character is refused, and the value is never echoed.
//! - `cache = true`/`false` on a source without a `[cache]` table is an error: the file says
//!   something about caching that the running gateway would not do.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use toml::Spanned;

use super::super::defaults as d;
use super::super::file::{RawCache, RawSource};
use super::super::{CacheConfig, DiskCacheConfig, DiskEncryption};
use super::{Checker, dotted};

impl Checker<'_> {
    /// `[cache]`: `None` when absent (no cache); `Some(None)` after an error.
    pub(super) fn cache(
        &mut self,
        raw: Option<&Spanned<RawCache>>,
        sources: Option<&Spanned<BTreeMap<Spanned<String>, Spanned<RawSource>>>>,
    ) -> Option<Option<CacheConfig>> {
        let Some(raw) = raw else {
            self.cache_flags_need_cache(sources);
            return Some(None);
        };
        let span = raw.span();
        let raw = raw.get_ref();
        let before = self.errors.len();
        let chunk_bytes = self.chunk_bytes(raw);
        let memory_bytes = self.bounded(
            &raw.memory_bytes,
            "cache.memory_bytes",
            d::CACHE_MEMORY_BYTES,
            d::CACHE_MEMORY_BYTES_MIN,
            d::CACHE_MEMORY_BYTES_MAX,
        );
        if memory_bytes < chunk_bytes {
            let at = raw
                .memory_bytes
                .as_ref()
                .map_or(span.clone(), Spanned::span);
            self.push(
                at,
                "cache.memory_bytes",
                format!(
                    "{memory_bytes} bytes cannot hold one chunk (chunk_bytes = {chunk_bytes}); \
                     raise memory_bytes or lower chunk_bytes"
                ),
            );
        }
        let metadata_ttl = self.bounded(
            &raw.metadata_ttl_secs,
            "cache.metadata_ttl_secs",
            d::CACHE_METADATA_TTL_SECS,
            0,
            d::CACHE_METADATA_TTL_SECS_MAX,
        );
        let disk = self.disk_cache(raw, chunk_bytes);
        let bypass = self.cache_bypass(sources);
        if self.errors.len() != before {
            return None;
        }
        Some(Some(CacheConfig {
            memory_bytes,
            chunk_bytes,
            metadata_ttl: Duration::from_secs(metadata_ttl),
            disk: disk?,
            bypass,
        }))
    }

    /// `chunk_bytes`: in range and a power of two; the default after an error.
    fn chunk_bytes(&mut self, raw: &RawCache) -> u64 {
        let key = "cache.chunk_bytes";
        let chunk = self.bounded(
            &raw.chunk_bytes,
            key,
            d::CACHE_CHUNK_BYTES,
            d::CACHE_CHUNK_BYTES_MIN,
            d::CACHE_CHUNK_BYTES_MAX,
        );
        if let Some(at) = &raw.chunk_bytes
            && !chunk.is_power_of_two()
        {
            self.push(
                at.span(),
                key,
                format!(
                    "{chunk} is not a power of two; chunks are aligned, use one of 262144 \
                     (256 KiB), 524288, 1048576 (1 MiB, the default), 2097152, 4194304, \
                     8388608 or 16777216 (16 MiB)"
                ),
            );
            return d::CACHE_CHUNK_BYTES;
        }
        chunk
    }

    /// The disk tier: `Some(None)` = memory only; `None` after an error.
    fn disk_cache(&mut self, raw: &RawCache, chunk_bytes: u64) -> Option<Option<DiskCacheConfig>> {
        let before = self.errors.len();
        let (dir, budget) = match (&raw.disk_dir, &raw.disk_bytes) {
            (None, None) => {
                for (name, span) in [
                    ("key", raw.key.as_ref().map(Spanned::span)),
                    ("key_id", raw.key_id.as_ref().map(Spanned::span)),
                    ("encrypt", raw.encrypt.as_ref().map(Spanned::span)),
                ] {
                    if let Some(span) = span {
                        self.push(
                            span,
                            format!("cache.{name}"),
                            format!(
                                "`{name}` is only used by the disk tier, and there is none; add \
                                 `disk_dir` and `disk_bytes`, or remove `{name}`"
                            ),
                        );
                    }
                }
                return (self.errors.len() == before).then_some(None);
            }
            (Some(dir), None) => {
                self.push(
                    dir.span(),
                    "cache.disk_bytes",
                    "required with disk_dir: add `disk_bytes = 10737418240` (the disk tier's \
                     byte budget, here 10 GiB), or remove disk_dir to cache in memory only",
                );
                return None;
            }
            (None, Some(bytes)) => {
                self.push(
                    bytes.span(),
                    "cache.disk_dir",
                    "required with disk_bytes: add `disk_dir = \"/var/cache/bucketgate\"` (a \
                     directory the cache owns; created if missing), or remove disk_bytes to \
                     cache in memory only",
                );
                return None;
            }
            (Some(dir), Some(bytes)) => (dir, bytes),
        };
        let dir_span = dir.span();
        let dir = self.cache_dir(dir);
        // No default to fall back on: the budget is the operator's to state.
        let value = *budget.get_ref();
        let max_bytes = u64::try_from(value)
            .ok()
            .filter(|v| (d::CACHE_DISK_BYTES_MIN..=d::CACHE_DISK_BYTES_MAX).contains(v));
        let Some(max_bytes) = max_bytes else {
            self.push(
                budget.span(),
                "cache.disk_bytes",
                format!(
                    "{value} is out of range; set the disk tier's byte budget, from {} (1 MiB) \
                     to {} (1 PiB)",
                    d::CACHE_DISK_BYTES_MIN,
                    d::CACHE_DISK_BYTES_MAX
                ),
            );
            return None;
        };
        if max_bytes < 2 * chunk_bytes {
            self.push(
                budget.span(),
                "cache.disk_bytes",
                format!(
                    "{max_bytes} bytes cannot hold two chunks (chunk_bytes = {chunk_bytes}); \
                     raise disk_bytes or lower chunk_bytes"
                ),
            );
        }
        let encryption = self.disk_encryption(raw, dir_span);
        if self.errors.len() != before {
            return None;
        }
        Some(Some(DiskCacheConfig {
            dir: dir?,
            max_bytes,
            encryption: encryption?,
        }))
    }

    /// `disk_dir`: a path that is a directory or does not exist yet (the cache creates it).
    fn cache_dir(&mut self, raw: &Spanned<String>) -> Option<std::path::PathBuf> {
        let key = "cache.disk_dir";
        let path = self.path(raw, key)?;
        match std::fs::metadata(&path) {
            Ok(meta) if !meta.is_dir() => {
                self.push(
                    raw.span(),
                    key,
                    format!(
                        "`{}` exists and is not a directory; point disk_dir at a directory the \
                         cache owns (created if missing; relative paths are resolved from the \
                         config file's directory)",
                        path.display()
                    ),
                );
                None
            }
            _ => Some(path),
        }
    }

    /// `key` + `key_id`, or `encrypt = false`; every other combination is refused.
    fn disk_encryption(
        &mut self,
        raw: &RawCache,
        dir_span: std::ops::Range<usize>,
    ) -> Option<DiskEncryption> {
        let encrypt = raw.encrypt.as_ref().map(|e| (*e.get_ref(), e.span()));
        match (&raw.key, encrypt) {
            (Some(key), Some((false, at))) => {
                let _ = key;
                self.push(
                    at,
                    "cache.encrypt",
                    "`encrypt = false` and `key` contradict each other; remove `encrypt = false` \
                     to encrypt the disk tier with the key, or remove `key` and `key_id` to \
                     store entries in the clear",
                );
                None
            }
            (None, Some((false, _))) => {
                if let Some(key_id) = &raw.key_id {
                    self.push(
                        key_id.span(),
                        "cache.key_id",
                        "`key_id` names the encryption key, and `encrypt = false` turns \
                         encryption off; remove key_id, or add `key` and remove `encrypt = false`",
                    );
                    return None;
                }
                Some(DiskEncryption::Off)
            }
            (None, Some((true, at))) => {
                self.push(
                    at,
                    "cache.key",
                    "`encrypt = true` needs a key: add `key = \"env:NAME\"` (or \"file:PATH\"; \
                     32 bytes as 64 hex characters, e.g. from `openssl rand -hex 32`) and \
                     `key_id = \"k1\"`",
                );
                None
            }
            (None, None) => {
                self.push(
                    dir_span,
                    "cache.key",
                    "the disk tier encrypts its entries and has no key; add `key = \"env:NAME\"` \
                     (or \"file:PATH\"; 32 bytes as 64 hex characters, e.g. from `openssl rand \
                     -hex 32`) and `key_id = \"k1\"`, or write `encrypt = false` to store \
                     entries on disk in the clear",
                );
                None
            }
            (Some(key), None | Some((true, _))) => {
                let bytes = self.cache_key(key);
                let key_id = self.key_id(raw, key.span());
                Some(DiskEncryption::Aes256Gcm {
                    key_id: key_id?,
                    key: bytes?,
                })
            }
        }
    }

    /// `key`: a secret reference to 64 hex characters. The value is never echoed.
    fn cache_key(&mut self, raw: &Spanned<String>) -> Option<[u8; 32]> {
        let name = "cache.key";
        let secret = self.secret(raw, name)?;
        match parse_key(secret.expose()) {
            Ok(key) => Some(key),
            Err(problem) => {
                self.push(
                    raw.span(),
                    name,
                    format!(
                        "the key must be 32 bytes written as 64 hex characters (e.g. the output \
                         of `openssl rand -hex 32`); {problem}"
                    ),
                );
                None
            }
        }
    }

    /// `key_id`: required with `key`; 1 to 32 of letters, digits, `.`, `_`, `-`.
    fn key_id(&mut self, raw: &RawCache, key_span: std::ops::Range<usize>) -> Option<String> {
        let name = "cache.key_id";
        let Some(key_id) = &raw.key_id else {
            self.push(
                key_span,
                name,
                "required with key: add `key_id = \"k1\"`, a short name for this key; give each \
                 new key a new id, so entries sealed under an old key are recognised and dropped",
            );
            return None;
        };
        let id = key_id.get_ref();
        let valid = !id.is_empty()
            && id.len() <= d::CACHE_KEY_ID_MAX_CHARS
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            self.push(
                key_id.span(),
                name,
                format!(
                    "must be 1 to {} letters, digits, `.`, `_` or `-`, e.g. \"2026-01\"",
                    d::CACHE_KEY_ID_MAX_CHARS
                ),
            );
            return None;
        }
        Some(id.clone())
    }

    /// The sources written with `cache = false`.
    fn cache_bypass(
        &mut self,
        sources: Option<&Spanned<BTreeMap<Spanned<String>, Spanned<RawSource>>>>,
    ) -> BTreeSet<String> {
        let Some(sources) = sources else {
            return BTreeSet::new();
        };
        sources
            .get_ref()
            .iter()
            .filter(|(_, s)| s.get_ref().cache.as_ref().is_some_and(|c| !*c.get_ref()))
            .map(|(name, _)| name.get_ref().clone())
            .collect()
    }

    /// Without `[cache]`, a source's `cache = ...` would say something the gateway does not do.
    fn cache_flags_need_cache(
        &mut self,
        sources: Option<&Spanned<BTreeMap<Spanned<String>, Spanned<RawSource>>>>,
    ) {
        let Some(sources) = sources else { return };
        for (name, source) in sources.get_ref() {
            if let Some(flag) = &source.get_ref().cache {
                self.push(
                    flag.span(),
                    format!("{}.cache", dotted(&["sources", name.get_ref().as_str()])),
                    format!(
                        "there is no [cache] table, so nothing is cached; remove `cache = {}`, \
                         or add a [cache] table (see config.toml.example)",
                        flag.get_ref()
                    ),
                );
            }
        }
    }
}

/// 64 hex characters -> 32 bytes; the problem (never the value) otherwise.
pub(super) fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    if text.len() != 64 {
        return Err(format!("the value has {} characters", text.chars().count()));
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(text, &mut key)
        .map_err(|_| "the value has a character that is not a hex digit".to_owned())?;
    Ok(key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_is_64_hex_characters() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let key = parse_key(hex).unwrap();
        assert_eq!(key[1], 0x11);
        assert_eq!(key[31], 0xff);
        assert_eq!(parse_key(&format!("{hex}\n")).unwrap(), key);
    }

    #[test]
    fn cache_key_of_another_length_or_alphabet_is_refused_without_echo() {
        let short = parse_key("abcd").unwrap_err();
        assert!(
            short.contains("4 characters") && !short.contains("abcd"),
            "{short}"
        );
        // 32 bytes as base64 (44 characters) is not accepted: one encoding, one rule.
        let b64 = parse_key("ABEiM0RVZneImaq7zN3u/wARIjNEVWZ3iJmqu8zd7v8=").unwrap_err();
        assert!(b64.contains("44 characters"), "{b64}");
        let not_hex = parse_key(&"g".repeat(64)).unwrap_err();
        assert!(not_hex.contains("not a hex digit") && !not_hex.contains("ggg"));
    }
}
