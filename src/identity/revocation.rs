//! Revocation without rotating keys: deny one token by its `jti`, or every token of a subject
//! issued (`iat`) before a time. Checked on every token request, after the signature and the
//! claims verified ([`super::Identity::verify`]); changed through the admin API.
//!
//! [`Revocations`] is the store every caller uses: an async interface ([`RevocationStore`])
//! dispatched over the implementations, so identity, the pipeline and the admin API do not know
//! which one runs. [`FileRevocations`] (one node) keeps the list in memory (a hash lookup under a
//! read lock) and persists it atomically to `<state_dir>/revocations.json` (write a temp file,
//! fsync, rename, fsync the directory) before a change takes effect; it is loaded at start.
//! With `[redis]`, `state::redis::revocations::RedisRevocations` keeps the record in
//! Redis and a synced copy in a `FileRevocations` (see there).
//!
//! A token of a revoked subject that carries no `iat` is treated as revoked: its issue time
//! cannot prove it is newer.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::config::defaults::REVOCATIONS_FILE;

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a revocations file")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the persistence task failed")]
    Task(#[from] tokio::task::JoinError),
    /// The shared record (Redis) did not take the change.
    #[error("the shared revocation list is unavailable")]
    Shared(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One revocation, as the admin API takes it: `{"jti": "..."}` or
/// `{"sub": "...", "issued_before": <unix secs>}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    Token { jti: String },
    Subject { sub: String, issued_before: u64 },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevocation {
    jti: Option<String>,
    sub: Option<String>,
    issued_before: Option<u64>,
}

impl Revocation {
    /// Parse an admin API body; the error is a fixed message for the admin client.
    pub fn from_json(bytes: &[u8]) -> Result<Revocation, &'static str> {
        const FORM: &str =
            "expected {\"jti\": \"...\"} or {\"sub\": \"...\", \"issued_before\": <unix seconds>}";
        let raw: RawRevocation = serde_json::from_slice(bytes).map_err(|_| FORM)?;
        match raw {
            RawRevocation {
                jti: Some(jti),
                sub: None,
                issued_before: None,
            } if !jti.is_empty() => Ok(Revocation::Token { jti }),
            RawRevocation {
                jti: None,
                sub: Some(sub),
                issued_before: Some(issued_before),
            } if !sub.is_empty() => Ok(Revocation::Subject { sub, issued_before }),
            _ => Err(FORM),
        }
    }
}

/// The persisted state (also the admin API's `GET` answer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationList {
    /// Revoked token ids.
    pub jti: BTreeSet<String>,
    /// Subject -> tokens issued before this unix time are revoked.
    pub sub: BTreeMap<String, u64>,
}

impl RevocationList {
    /// Add everything in `other` (a subject keeps the later of the two times); whether anything
    /// changed. Revocations are only ever added, so merging copies in any order converges.
    pub fn merge(&mut self, other: &RevocationList) -> bool {
        let mut changed = false;
        for jti in &other.jti {
            changed |= self.jti.insert(jti.clone());
        }
        for (sub, before) in &other.sub {
            let entry = self.sub.entry(sub.clone()).or_insert(0);
            if *before > *entry {
                *entry = *before;
                changed = true;
            }
        }
        changed
    }

    fn add(&mut self, revocation: Revocation) {
        match revocation {
            Revocation::Token { jti } => {
                self.jti.insert(jti);
            }
            Revocation::Subject { sub, issued_before } => {
                let entry = self.sub.entry(sub).or_insert(issued_before);
                *entry = (*entry).max(issued_before);
            }
        }
    }
}

impl From<Revocation> for RevocationList {
    fn from(revocation: Revocation) -> RevocationList {
        let mut list = RevocationList::default();
        list.add(revocation);
        list
    }
}

/// What a revocation store answers. Every method may do I/O.
pub trait RevocationStore: Send + Sync {
    /// Whether a token with these claims is revoked.
    fn is_revoked(
        &self,
        jti: Option<&str>,
        sub: &str,
        iat: Option<u64>,
    ) -> impl Future<Output = Result<bool, RevocationError>> + Send;

    /// The whole list (the admin API's `GET`).
    fn list(&self) -> impl Future<Output = Result<RevocationList, RevocationError>> + Send;

    /// Add a revocation: stored first, then effective for the next request.
    fn revoke(
        &self,
        revocation: Revocation,
    ) -> impl Future<Output = Result<(), RevocationError>> + Send;
}

/// A revocation store shared by several nodes (`[redis]`), plugged in from `state` through this
/// object-safe trait so that identity names no module above it. A check is answered from the
/// node's synced copy, without I/O; only a new revocation waits on the shared record.
pub trait SharedRevocationStore: Send + Sync {
    fn is_revoked_now(
        &self,
        jti: Option<&str>,
        sub: &str,
        iat: Option<u64>,
    ) -> Result<bool, RevocationError>;

    fn list_now(&self) -> Result<RevocationList, RevocationError>;

    fn revoke(
        &self,
        revocation: Revocation,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), RevocationError>> + Send + '_>>;
}

/// The revocation store of a gateway.
pub enum Revocations {
    File(FileRevocations),
    /// `[redis]`: the record in Redis, a synced copy here (`state::redis::revocations`).
    Shared(std::sync::Arc<dyn SharedRevocationStore>),
}

impl Revocations {
    /// Load `<state_dir>/revocations.json`; a missing file is an empty list.
    pub fn load(state_dir: &Path) -> Result<Revocations, RevocationError> {
        FileRevocations::load(state_dir).map(Revocations::File)
    }

    /// An empty list that is never persisted (pipelines driven without a gateway).
    pub fn in_memory() -> Revocations {
        Revocations::File(FileRevocations::in_memory())
    }
}

impl RevocationStore for Revocations {
    async fn is_revoked(
        &self,
        jti: Option<&str>,
        sub: &str,
        iat: Option<u64>,
    ) -> Result<bool, RevocationError> {
        match self {
            Revocations::File(r) => r.is_revoked(jti, sub, iat).await,
            Revocations::Shared(r) => r.is_revoked_now(jti, sub, iat),
        }
    }

    async fn list(&self) -> Result<RevocationList, RevocationError> {
        match self {
            Revocations::File(r) => r.list().await,
            Revocations::Shared(r) => r.list_now(),
        }
    }

    async fn revoke(&self, revocation: Revocation) -> Result<(), RevocationError> {
        match self {
            Revocations::File(r) => r.revoke(revocation).await,
            Revocations::Shared(r) => r.revoke(revocation).await,
        }
    }
}

/// The list in memory, persisted to a JSON file (see the module doc).
pub struct FileRevocations {
    /// `None`: kept in memory only ([`FileRevocations::in_memory`]).
    path: Option<PathBuf>,
    state: RwLock<RevocationList>,
    /// Serializes writers so the file and memory change in the same order.
    write: tokio::sync::Mutex<()>,
}

impl FileRevocations {
    /// Load `<state_dir>/revocations.json`; a missing file is an empty list.
    pub fn load(state_dir: &Path) -> Result<FileRevocations, RevocationError> {
        let path = state_dir.join(REVOCATIONS_FILE);
        let list = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| RevocationError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RevocationList::default(),
            Err(source) => return Err(RevocationError::Read { path, source }),
        };
        Ok(FileRevocations {
            path: Some(path),
            state: RwLock::new(list),
            write: tokio::sync::Mutex::new(()),
        })
    }

    /// An empty list that is never persisted (pipelines driven without a gateway).
    pub fn in_memory() -> FileRevocations {
        FileRevocations {
            path: None,
            state: RwLock::new(RevocationList::default()),
            write: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether a token with these claims is revoked: a lookup in memory.
    pub(crate) fn is_revoked_now(&self, jti: Option<&str>, sub: &str, iat: Option<u64>) -> bool {
        // A poisoned lock still holds the last list written whole; keep using it.
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        if state.jti.is_empty() && state.sub.is_empty() {
            return false;
        }
        if jti.is_some_and(|j| state.jti.contains(j)) {
            return true;
        }
        match state.sub.get(sub) {
            Some(before) => iat.is_none_or(|iat| iat < *before),
            None => false,
        }
    }

    pub(crate) fn list_now(&self) -> RevocationList {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Add everything in `incoming` (a copy of the shared record): in force in memory first, so
    /// a disk that fails cannot keep a revocation out, then written to the file if anything
    /// changed. Whether anything changed.
    pub(crate) async fn merge(&self, incoming: &RevocationList) -> Result<bool, RevocationError> {
        let _writer = self.write.lock().await;
        let next = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            if !state.merge(incoming) {
                return Ok(false);
            }
            state.clone()
        };
        self.persist(&next).await?;
        Ok(true)
    }

    async fn persist(&self, list: &RevocationList) -> Result<(), RevocationError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(list).map_err(|source| RevocationError::Parse {
            path: path.clone(),
            source,
        })?;
        let target = path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&target, &bytes))
            .await?
            .map_err(|source| RevocationError::Write {
                path: path.clone(),
                source,
            })
    }
}

impl RevocationStore for FileRevocations {
    async fn is_revoked(
        &self,
        jti: Option<&str>,
        sub: &str,
        iat: Option<u64>,
    ) -> Result<bool, RevocationError> {
        Ok(self.is_revoked_now(jti, sub, iat))
    }

    async fn list(&self) -> Result<RevocationList, RevocationError> {
        Ok(self.list_now())
    }

    /// Persisted first, then effective for the next request.
    async fn revoke(&self, revocation: Revocation) -> Result<(), RevocationError> {
        let _writer = self.write.lock().await;
        let mut next = self.list_now();
        next.add(revocation);
        self.persist(&next).await?;
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }
}

/// Temp file in the same directory, fsync, rename over the target, fsync the directory: a reader
/// (or a crash) sees the old file or the new one, never a mix.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        REVOCATIONS_FILE,
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn revocations_persist_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let r = Revocations::load(dir.path()).unwrap();
        let revoked = |r: &Revocations, jti: Option<&str>, sub: &str, iat: Option<u64>| {
            futures_util::FutureExt::now_or_never(r.is_revoked(jti, sub, iat))
                .unwrap()
                .unwrap()
        };
        assert!(!revoked(&r, Some("j1"), "alice", Some(100)));
        r.revoke(Revocation::Token { jti: "j1".into() })
            .await
            .unwrap();
        r.revoke(Revocation::Subject {
            sub: "bob".into(),
            issued_before: 1_000,
        })
        .await
        .unwrap();
        let again = Revocations::load(dir.path()).unwrap();
        for r in [&r, &again] {
            assert!(revoked(r, Some("j1"), "alice", Some(100)));
            assert!(!revoked(r, Some("j2"), "alice", Some(100)));
            assert!(revoked(r, None, "bob", Some(999)));
            assert!(!revoked(r, None, "bob", Some(1_000)));
            assert!(revoked(r, None, "bob", None));
        }
    }

    #[test]
    fn admin_bodies_parse_to_one_revocation_kind() {
        let t = Revocation::from_json(br#"{"jti":"x"}"#).unwrap();
        assert_eq!(t, Revocation::Token { jti: "x".into() });
        let s = Revocation::from_json(br#"{"sub":"a","issued_before":5}"#).unwrap();
        assert_eq!(
            s,
            Revocation::Subject {
                sub: "a".into(),
                issued_before: 5
            }
        );
        assert!(Revocation::from_json(br#"{"sub":"a"}"#).is_err());
        assert!(Revocation::from_json(br#"{"jti":"x","sub":"a"}"#).is_err());
        assert!(Revocation::from_json(br#"{"jti":"x","extra":1}"#).is_err());
    }
}
