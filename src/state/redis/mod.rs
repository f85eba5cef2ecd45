//! Shared state of several nodes through Redis (`[redis]`). Without `[redis]` every store is the
//! in-memory one of its module and nothing here runs.
//!
//! [`Redis`] is the one client: a few multiplexed, reconnecting connections, a key prefix and
//! format version on every key, a time limit on every command, and a health flag `/readyz`
//! reports. One Redis primary (or a proxy in front of several): Redis Cluster and Sentinel are
//! not supported (the scripts here touch several keys of one store, which Cluster would need
//! hash tags for, and the crate's Sentinel client has no multiplexed reconnecting manager).
//! `rediss://` verifies Redis's certificate against `ca_file`, or the system's roots. Every store that keeps its state in Redis implements its module's store trait in a
//! file of its own here, and says in its doc (and in `config.toml.example`) what it does when
//! Redis is down or answers garbage: a broken answer is an error for that lookup, handled as
//! "Redis down" for it, never a panic and never an allow.
//!
//! | file | store | trait |
//! |---|---|---|
//! | `revocations.rs` | revocations, admin changes, the cluster table | `identity::revocation::RevocationStore` |
//! | `sessions.rs`, `replay.rs`, `login_key.rs` (+ `seal.rs`) | SAML sessions (credentials sealed with AES-256-GCM), the assertion replay cache, the login-cookie key | `saml::session::SessionStore`, `saml::replay::ReplayCache` |
//! | `use_windows.rs` | use windows of signed URLs | `identity::use_window::UseWindowStore` |
//! | `admission.rs` | rate limits, with a local fast path | `state::admission::AdmissionStore` |
//! | `doc.rs` | a versioned document every node polls (the admin's network lists) | - |
//! | `cluster.rs` | heartbeats of the nodes (`GET /admin/cluster`) | - |
//!
//! Every store says its state for `/readyz` as a [`StoreHealth`].

pub mod cluster;
pub mod doc;
pub mod revocations;

pub mod admission;
pub mod login_key;
pub mod replay;
pub mod saml_health;
pub mod seal;
pub mod sessions;
pub mod use_windows;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue};

/// The format version in every key: a change of any store's value format bumps it, so old
/// entries are never misread (they simply stop being found).
pub const KEY_VERSION: &str = "v1";

/// What `[redis]` resolves to (secrets already read).
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://host:port/db` or `rediss://` (TLS).
    pub url: String,
    /// PEM roots for `rediss://` (the system roots when `None`).
    pub ca_pem: Option<Vec<u8>>,
    /// `AUTH` password (from a secret reference), if any.
    pub password: Option<String>,
    pub username: Option<String>,
    /// Prefix of every key (several deployments may share one Redis).
    pub prefix: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// Multiplexed connections commands are spread over.
    pub connections: usize,
}

impl RedisSettings {
    /// The settings of a validated `[redis]`: reads `ca_file` (the only I/O).
    pub fn from_config(config: &crate::config::RedisConfig) -> std::io::Result<RedisSettings> {
        let ca_pem = match &config.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))
            })?),
            None => None,
        };
        Ok(RedisSettings {
            url: config.url.clone(),
            ca_pem,
            password: config.password.as_ref().map(|p| p.expose().to_owned()),
            username: config.username.clone(),
            prefix: config.prefix.clone(),
            connect_timeout: config.connect_timeout,
            command_timeout: config.command_timeout,
            connections: config.connections,
        })
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("prefix", &self.prefix)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

/// Why a Redis call gave no usable answer. Every store treats each one as "Redis down" for that
/// lookup (its documented fallback), never as an allow.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisFault {
    #[error("redis unreachable: {0}")]
    Down(String),
    #[error("redis command timed out")]
    Timeout,
    /// An answer of the wrong type, garbage bytes, a truncated value.
    #[error("redis answered something unusable ({0})")]
    BadReply(&'static str),
}

/// The client shared by every Redis store (one per process, in `state::Shared`).
pub struct Redis {
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
    prefix: String,
    command_timeout: Duration,
    healthy: Arc<AtomicBool>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Connect (lazily: a Redis that is down at start does not stop the gateway; the stores fall
    /// back as documented until it answers).
    pub fn connect(settings: &RedisSettings) -> Result<Redis, RedisFault> {
        use redis::IntoConnectionInfo;
        let mut info = settings
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| RedisFault::Down(e.to_string()))?;
        let mut redis_info = info.redis_settings().clone();
        if let Some(password) = &settings.password {
            redis_info = redis_info.set_password(password.clone());
        }
        if let Some(username) = &settings.username {
            redis_info = redis_info.set_username(username.clone());
        }
        info = info.set_redis_settings(redis_info);
        let client = match &settings.ca_pem {
            Some(ca) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(|e| RedisFault::Down(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conns = (0..settings.connections.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RedisFault::Down(e.to_string()))?;
        Ok(Redis {
            conns,
            next: AtomicUsize::new(0),
            prefix: settings.prefix.clone(),
            command_timeout: settings.command_timeout,
            healthy: Arc::new(AtomicBool::new(true)),
        })
    }

    /// `{prefix}:v1:{kind}:{id}`.
    pub fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{KEY_VERSION}:{kind}:{id}", self.prefix)
    }

    /// One of the connections (round robin).
    pub fn conn(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    /// Whether the last command got an answer (for `/readyz`).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Run one command within the command timeout. A type mismatch is
    /// [`RedisFault::BadReply`].
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisFault> {
        let mut conn = self.conn();
        let result =
            tokio::time::timeout(self.command_timeout, cmd.query_async::<T>(&mut conn)).await;
        self.settle(result)
    }

    /// Run one Lua script within the command timeout.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisFault> {
        let mut conn = self.conn();
        let result = tokio::time::timeout(
            self.command_timeout,
            invocation.invoke_async::<T>(&mut conn),
        )
        .await;
        self.settle(result)
    }

    fn settle<T>(
        &self,
        result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, RedisFault> {
        let outcome = match result {
            Err(_) => Err(RedisFault::Timeout),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    redis::ErrorKind::UnexpectedReturnType | redis::ErrorKind::Parse
                ) =>
            {
                Err(RedisFault::BadReply("unexpected reply type"))
            }
            // An error reply from a Redis that answered: a key of the wrong type (WRONGTYPE), a
            // script that failed on a garbage value (ERR). Redis is up; this lookup failed.
            Ok(Err(e)) if e.code().is_some_and(|c| c == "WRONGTYPE" || c == "ERR") => {
                Err(RedisFault::BadReply("error reply"))
            }
            Ok(Err(e)) => Err(RedisFault::Down(e.category().to_owned())),
        };
        let answered = !matches!(outcome, Err(RedisFault::Down(_) | RedisFault::Timeout));
        self.healthy.store(answered, Ordering::Relaxed);
        outcome
    }
}

/// What a Redis-backed store reports to `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoreHealth {
    /// The store, e.g. `revocations`.
    pub store: &'static str,
    /// `ok`, or `degraded` while Redis does not answer it.
    pub state: &'static str,
    /// While degraded: the fallback in use, e.g. `last synced list`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<&'static str>,
}

impl StoreHealth {
    pub fn ok(store: &'static str) -> StoreHealth {
        StoreHealth {
            store,
            state: "ok",
            fallback: None,
        }
    }

    pub fn degraded(store: &'static str, fallback: &'static str) -> StoreHealth {
        StoreHealth {
            store,
            state: "degraded",
            fallback: Some(fallback),
        }
    }
}

/// Strict readers of reply values: anything but the expected shape is
/// [`RedisFault::BadReply`], never a default.
pub mod reply {
    use redis::Value;

    use super::RedisFault;

    /// A bulk or simple string's bytes; `None` for nil.
    pub fn opt_bytes(v: &Value) -> Result<Option<&[u8]>, RedisFault> {
        match v {
            Value::Nil => Ok(None),
            Value::BulkString(b) => Ok(Some(b)),
            Value::SimpleString(s) => Ok(Some(s.as_bytes())),
            _ => Err(RedisFault::BadReply("expected a string")),
        }
    }

    /// A UTF-8 string; `None` for nil.
    pub fn opt_text(v: &Value) -> Result<Option<&str>, RedisFault> {
        opt_bytes(v)?
            .map(|b| std::str::from_utf8(b).map_err(|_| RedisFault::BadReply("not UTF-8")))
            .transpose()
    }

    pub fn text(v: &Value) -> Result<&str, RedisFault> {
        opt_text(v)?.ok_or(RedisFault::BadReply("unexpected nil"))
    }

    /// An integer reply, or a string holding one (what Lua numbers and `GET` give).
    pub fn int(v: &Value) -> Result<i64, RedisFault> {
        match v {
            Value::Int(i) => Ok(*i),
            other => text(other)?
                .parse()
                .map_err(|_| RedisFault::BadReply("expected an integer")),
        }
    }

    /// An array reply.
    pub fn array(v: &Value) -> Result<&[Value], RedisFault> {
        match v {
            Value::Array(items) => Ok(items),
            _ => Err(RedisFault::BadReply("expected an array")),
        }
    }
}
