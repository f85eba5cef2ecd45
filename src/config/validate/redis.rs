//! `[redis]` — a child of `validate/mod.rs`, so it shares the [`Checker`].
//!
//! Decisions the messages below explain to the operator:
//! - `url` is `redis://` or `rediss://` (TLS) with a host; a user name or password inside the URL
//!   is refused (a secret in the config file): they go in `username` and `password`, the latter a
//!   secret reference. `ca_file` needs `rediss://` (it would silently do nothing otherwise).
//!   Redis Cluster and Sentinel are not supported (one primary, or a proxy in front of several).
//! - `prefix` and `node_name` are short names (letters, digits, `.`, `_`, `-`), so a key or the
//!   cluster table never holds something odd; `node_name` defaults to the host name (`HOSTNAME`,
//!   which Kubernetes sets to the pod name, else the kernel's).
//! - `seal_key` is required when `[saml]` is configured too: SAML sessions then live in Redis and
//!   their credentials are sealed with it first, so Redis never holds usable AWS credentials.
//!   Without `[saml]` a `seal_key` is refused (it would mean nothing).
//! - `sync_interval_ms` is at most 500: a revocation made on one node must be in force on every
//!   node within a second.

use std::time::Duration;

use toml::Spanned;

use super::super::defaults as d;
use super::super::file::RawRedis;
use super::super::{RedisConfig, SealKey};
use super::Checker;
use super::cache::parse_key;

impl Checker<'_> {
    /// `[redis]`: `Some(None)` when absent (one node); `None` after an error.
    pub(super) fn redis(
        &mut self,
        raw: Option<&Spanned<RawRedis>>,
        saml_configured: bool,
    ) -> Option<Option<RedisConfig>> {
        let Some(raw) = raw else {
            return Some(None);
        };
        let span = raw.span();
        let raw = raw.get_ref();
        let before = self.errors.len();
        let url = match &raw.url {
            Some(url) => self.redis_url(url),
            None => {
                self.push(
                    span.clone(),
                    "redis.url",
                    "required: add `url = \"redis://redis.internal:6379/0\"` (or rediss:// for \
                     TLS), or remove [redis] to keep every store in this process (one node)",
                );
                None
            }
        };
        let tls = url.as_deref().is_some_and(|u| u.starts_with("rediss://"));
        let ca_file = match &raw.ca_file {
            Some(ca) if url.is_some() && !tls => {
                self.push(
                    ca.span(),
                    "redis.ca_file",
                    "only used with TLS: write the url as rediss://..., or remove ca_file",
                );
                None
            }
            Some(ca) => self.existing_file(ca, "redis.ca_file").map(Some),
            None => Some(None),
        };
        let username = match &raw.username {
            Some(u) if u.get_ref().is_empty() || u.get_ref().chars().any(char::is_whitespace) => {
                self.push(
                    u.span(),
                    "redis.username",
                    "must be a non-empty ACL user name without spaces, or remove the key to use \
                     the default user",
                );
                None
            }
            Some(u) => Some(Some(u.get_ref().clone())),
            None => Some(None),
        };
        let password = match &raw.password {
            Some(p) => self.secret(p, "redis.password").map(Some),
            None => Some(None),
        };
        let prefix = match &raw.prefix {
            Some(p) => self.redis_name(p, "redis.prefix"),
            None => Some(d::REDIS_PREFIX.to_owned()),
        };
        let node_name = match &raw.node_name {
            Some(n) => self.redis_name(n, "redis.node_name"),
            None => match default_node_name() {
                Some(name) => Some(name),
                None => {
                    self.push(
                        span.clone(),
                        "redis.node_name",
                        "the host name cannot be read (or is not a short name); add \
                         `node_name = \"gw-1\"` (letters, digits, `.`, `_`, `-`)",
                    );
                    None
                }
            },
        };
        let connect_timeout_ms = self.bounded(
            &raw.connect_timeout_ms,
            "redis.connect_timeout_ms",
            d::REDIS_CONNECT_TIMEOUT_MS,
            d::REDIS_CONNECT_TIMEOUT_MS_MIN,
            d::REDIS_CONNECT_TIMEOUT_MS_MAX,
        );
        let command_timeout_ms = self.bounded(
            &raw.command_timeout_ms,
            "redis.command_timeout_ms",
            d::REDIS_COMMAND_TIMEOUT_MS,
            d::REDIS_COMMAND_TIMEOUT_MS_MIN,
            d::REDIS_COMMAND_TIMEOUT_MS_MAX,
        );
        let connections: u64 = self.bounded(
            &raw.connections,
            "redis.connections",
            d::REDIS_CONNECTIONS,
            1,
            d::REDIS_CONNECTIONS_MAX,
        );
        let sync_interval_ms = self.bounded(
            &raw.sync_interval_ms,
            "redis.sync_interval_ms",
            d::REDIS_SYNC_INTERVAL_MS,
            d::REDIS_SYNC_INTERVAL_MS_MIN,
            d::REDIS_SYNC_INTERVAL_MS_MAX,
        );
        let expected_nodes: u32 = self.bounded(
            &raw.expected_nodes,
            "redis.expected_nodes",
            d::REDIS_EXPECTED_NODES as u32,
            1,
            d::REDIS_EXPECTED_NODES_MAX,
        );
        let seal_key = self.seal_key(raw, span, saml_configured);
        if self.errors.len() != before {
            return None;
        }
        Some(Some(RedisConfig {
            url: url?,
            ca_file: ca_file?,
            username: username?,
            password: password?,
            prefix: prefix?,
            connect_timeout: Duration::from_millis(connect_timeout_ms),
            command_timeout: Duration::from_millis(command_timeout_ms),
            connections: usize::try_from(connections).unwrap_or(1),
            node_name: node_name?,
            sync_interval: Duration::from_millis(sync_interval_ms),
            refuse_tokens_issued_during_outage: raw
                .refuse_tokens_issued_during_outage
                .as_ref()
                .is_some_and(|b| *b.get_ref()),
            seal_key: seal_key?,
            expected_nodes,
        }))
    }

    /// `url`: `redis://` or `rediss://`, a host, no credentials.
    fn redis_url(&mut self, raw: &Spanned<String>) -> Option<String> {
        let key = "redis.url";
        let url = raw.get_ref().trim();
        let Some(rest) = url
            .strip_prefix("redis://")
            .or_else(|| url.strip_prefix("rediss://"))
        else {
            self.push(
                raw.span(),
                key,
                "must start with redis:// or rediss:// (TLS), e.g. \
                 \"redis://redis.internal:6379/0\"; Redis Cluster, Sentinel and unix sockets \
                 are not supported",
            );
            return None;
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if authority.contains('@') {
            self.push(
                raw.span(),
                key,
                "has a user name or password in it; remove them from the url and write \
                 `username = \"...\"` and `password = \"env:NAME\"` (or \"file:PATH\")",
            );
            return None;
        }
        if authority.is_empty() || authority.starts_with(':') {
            self.push(
                raw.span(),
                key,
                "has no host; write e.g. \"redis://redis.internal:6379/0\"",
            );
            return None;
        }
        if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url) {
            self.push(
                raw.span(),
                key,
                format!(
                    "is not a usable Redis url ({}); write e.g. \
                     \"redis://redis.internal:6379/0\"",
                    e.detail().unwrap_or("malformed")
                ),
            );
            return None;
        }
        Some(url.to_owned())
    }

    /// A short name: 1 to 64 of letters, digits, `.`, `_`, `-`.
    fn redis_name(&mut self, raw: &Spanned<String>, key: &str) -> Option<String> {
        let name = raw.get_ref();
        if is_short_name(name) {
            return Some(name.clone());
        }
        self.push(
            raw.span(),
            key,
            format!(
                "must be 1 to {} letters, digits, `.`, `_` or `-`, e.g. \"bucketgate-prod\"",
                d::REDIS_NAME_MAX_CHARS
            ),
        );
        None
    }

    /// `seal_key`: required with `[saml]`, refused without it; 64 hex characters by reference.
    fn seal_key(
        &mut self,
        raw: &RawRedis,
        span: std::ops::Range<usize>,
        saml_configured: bool,
    ) -> Option<Option<SealKey>> {
        let key = "redis.seal_key";
        match (&raw.seal_key, saml_configured) {
            (None, false) => Some(None),
            (None, true) => {
                self.push(
                    span,
                    key,
                    "required with [saml]: SAML sessions live in Redis, their credentials sealed \
                     with this key first; add `seal_key = \"env:NAME\"` (or \"file:PATH\"; 32 \
                     bytes as 64 hex characters, e.g. from `openssl rand -hex 32`), the same on \
                     every node",
                );
                None
            }
            (Some(raw), false) => {
                self.push(
                    raw.span(),
                    key,
                    "seals SAML session credentials, and there is no [saml]; remove seal_key",
                );
                None
            }
            (Some(raw), true) => {
                let secret = self.secret(raw, key)?;
                match parse_key(secret.expose()) {
                    Ok(bytes) => Some(Some(SealKey(bytes))),
                    Err(problem) => {
                        self.push(
                            raw.span(),
                            key,
                            format!(
                                "the key must be 32 bytes written as 64 hex characters (e.g. \
                                 the output of `openssl rand -hex 32`); {problem}"
                            ),
                        );
                        None
                    }
                }
            }
        }
    }
}

fn is_short_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= d::REDIS_NAME_MAX_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `HOSTNAME` (Kubernetes sets it to the pod name), else the kernel's host name.
fn default_node_name() -> Option<String> {
    let from_env = std::env::var("HOSTNAME").ok();
    let from_kernel = || {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .ok()
    };
    let name = from_env
        .filter(|n| !n.trim().is_empty())
        .or_else(from_kernel)?;
    let name = name.trim();
    is_short_name(name).then(|| name.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::parse;

    const BASE: &str = r#"
[listener]
addr = "127.0.0.1:0"
dev_certificate_dir = ".bucketgate"
[sources.a]
kind = "fs"
root = "/"
"#;

    fn errors(extra: &str) -> Vec<String> {
        match parse(&format!("{BASE}{extra}"), "t.toml") {
            Ok(_) => vec![],
            Err(e) => {
                e.0.iter()
                    .map(|e| format!("{}: {}", e.key, e.message))
                    .collect()
            }
        }
    }

    #[test]
    fn a_minimal_redis_table_takes_the_defaults() {
        let c = parse(
            &format!("{BASE}[redis]\nurl = \"redis://127.0.0.1:6379/0\"\nnode_name = \"n1\"\n"),
            "t.toml",
        )
        .unwrap();
        let r = c.redis.unwrap();
        assert_eq!(r.prefix, "bucketgate");
        assert_eq!(r.connections, 4);
        assert_eq!(r.command_timeout.as_millis(), 250);
        assert_eq!(r.sync_interval.as_millis(), 200);
        assert_eq!(r.expected_nodes, 1);
        assert!(!r.refuse_tokens_issued_during_outage);
        assert!(r.seal_key.is_none() && r.password.is_none());
        assert!(parse(BASE, "t.toml").unwrap().redis.is_none());
    }

    #[test]
    fn bad_redis_keys_are_named_with_a_fix() {
        let cases = [
            ("url = \"http://x\"", "redis.url: must start with redis://"),
            (
                "url = \"redis://:pw@x:6379\"",
                "redis.url: has a user name or password",
            ),
            ("url = \"redis:///0\"", "redis.url: has no host"),
            (
                "url = \"redis://x\"\nca_file = \"/etc/hostname\"",
                "redis.ca_file: only used with TLS",
            ),
            (
                "url = \"redis://x\"\nprefix = \"a b\"",
                "redis.prefix: must be 1 to 64",
            ),
            (
                "url = \"redis://x\"\nsync_interval_ms = 2000",
                "redis.sync_interval_ms: 2000 is out",
            ),
            (
                "url = \"redis://x\"\nconnections = 0",
                "redis.connections: 0 is not allowed",
            ),
            (
                "url = \"redis://x\"\nseal_key = \"env:X\"",
                "redis.seal_key: seals SAML session credentials, and there is no [saml]",
            ),
            (
                "url = \"redis://x\"\npassword = \"hunter2\"",
                "redis.password: ",
            ),
            ("port = 1", ""),
        ];
        for (body, want) in cases {
            let errs = errors(&format!("[redis]\nnode_name = \"n\"\n{body}\n"));
            assert!(errs.iter().any(|e| e.contains(want)), "{body}: {errs:?}");
            assert!(!errs.iter().any(|e| e.contains("hunter2")), "{errs:?}");
        }
    }
}
