//! The cache routes of the admin API: purge, prewarm jobs, statistics.
//!
//! Purge removes entries at once and says how many went. Prewarm reads objects whole through the
//! cache with the gateway's own authority, in a background job: the keys are known when the job
//! is created (a prefix is listed first, at most [`PREWARM_MAX_KEYS`] objects), then read
//! [`PREWARM_CONCURRENCY`] at a time. Jobs live in a table of at most [`PREWARM_JOBS_KEPT`]
//! entries (the oldest finished job makes room for a new one), of which at most
//! [`PREWARM_JOBS_RUNNING`] run at once. Sources with `credentials = "saml"` have no authority
//! of their own (each user's session signs), so they cannot be prewarmed; sources written with
//! `cache = false` are never cached, so prewarming them is refused too.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;

use crate::backend::{AnyBackend, Backend, BackendError};
use crate::cache::{Cache, Purge};
use crate::config::defaults::MAX_KEY_BYTES;
use crate::config::{Config, S3Credentials, SourceConfig};
use crate::pipeline::snapshot::Snapshot;

use super::error::AdminError;

/// Most objects one prewarm job reads (a listed prefix or a list of keys).
pub const PREWARM_MAX_KEYS: usize = 10_000;
/// Objects one job reads at once.
pub const PREWARM_CONCURRENCY: usize = 4;
/// Jobs kept for `GET /admin/cache/prewarm/<id>`, running or finished.
pub const PREWARM_JOBS_KEPT: usize = 32;
/// Jobs running at once; a new one beyond that is refused (429).
pub const PREWARM_JOBS_RUNNING: usize = 4;
/// Failed keys a job's status names (the count of errors is always whole).
pub const PREWARM_FAILED_SHOWN: usize = 10;
/// How long listing a prefix may take before the request is refused.
pub const PREWARM_LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// `POST /admin/cache/purge`: `{"source"}`, `{"source", "prefix"}` or `{"source", "key"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurge {
    source: String,
    prefix: Option<String>,
    key: Option<String>,
}

const PURGE_FORM: &str = "expected {\"source\": \"name\"}, {\"source\": \"name\", \"prefix\": \"p/\"} \
     or {\"source\": \"name\", \"key\": \"k\"}";

/// Parse a purge body (the source is checked against the configuration by the caller).
pub fn parse_purge(body: &[u8]) -> Result<Purge, AdminError> {
    let raw: RawPurge = serde_json::from_slice(body).map_err(|e| form_error(PURGE_FORM, &e))?;
    match raw {
        RawPurge {
            source,
            prefix: None,
            key: None,
        } => Ok(Purge::Source(source)),
        // An empty prefix is every key of the source.
        RawPurge {
            source,
            prefix: Some(prefix),
            key: None,
        } if prefix.is_empty() => Ok(Purge::Source(source)),
        RawPurge {
            source,
            prefix: Some(prefix),
            key: None,
        } => {
            check_prefix(&prefix)?;
            Ok(Purge::Prefix { source, prefix })
        }
        RawPurge {
            source,
            prefix: None,
            key: Some(key),
        } => {
            check_key(&key).map_err(|why| AdminError::InvalidCache(format!("key: {why}")))?;
            Ok(Purge::Key { source, key })
        }
        RawPurge {
            prefix: Some(_),
            key: Some(_),
            ..
        } => Err(AdminError::InvalidCache(format!(
            "give prefix or key, not both; {PURGE_FORM}"
        ))),
    }
}

/// The source a purge names.
pub fn purge_source(purge: &Purge) -> &str {
    match purge {
        Purge::Source(source) | Purge::Prefix { source, .. } | Purge::Key { source, .. } => source,
    }
}

/// The audit record's `what` of a purge.
pub fn purge_record(purge: &Purge, purged: u64) -> serde_json::Value {
    match purge {
        Purge::Source(source) => serde_json::json!({ "source": source, "purged": purged }),
        Purge::Prefix { source, prefix } => {
            serde_json::json!({ "source": source, "prefix": prefix, "purged": purged })
        }
        Purge::Key { source, key } => {
            serde_json::json!({ "source": source, "key": key, "purged": purged })
        }
    }
}

/// `POST /admin/cache/prewarm`: `{"source", "keys": [...]}` or `{"source", "prefix"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrewarm {
    source: String,
    keys: Option<Vec<String>>,
    prefix: Option<String>,
}

const PREWARM_FORM: &str = "expected {\"source\": \"name\", \"keys\": [\"a\", \"b\"]} or \
     {\"source\": \"name\", \"prefix\": \"p/\"}";

/// What a prewarm asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrewarmWhat {
    Keys(Vec<String>),
    Prefix(String),
}

/// A parsed prewarm body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrewarmRequest {
    pub source: String,
    pub what: PrewarmWhat,
}

pub fn parse_prewarm(body: &[u8]) -> Result<PrewarmRequest, AdminError> {
    let raw: RawPrewarm = serde_json::from_slice(body).map_err(|e| form_error(PREWARM_FORM, &e))?;
    let what = match (raw.keys, raw.prefix) {
        (Some(keys), None) => {
            if keys.is_empty() {
                return Err(AdminError::InvalidCache(
                    "keys is empty: name at least one key".to_owned(),
                ));
            }
            if keys.len() > PREWARM_MAX_KEYS {
                return Err(AdminError::InvalidCache(format!(
                    "{} keys: at most {PREWARM_MAX_KEYS} per job",
                    keys.len()
                )));
            }
            for (i, key) in keys.iter().enumerate() {
                check_key(key)
                    .map_err(|why| AdminError::InvalidCache(format!("keys[{i}]: {why}")))?;
            }
            PrewarmWhat::Keys(keys)
        }
        (None, Some(prefix)) => {
            if !prefix.is_empty() {
                check_prefix(&prefix)?;
            }
            PrewarmWhat::Prefix(prefix)
        }
        (Some(_), Some(_)) => {
            return Err(AdminError::InvalidCache(format!(
                "give keys or prefix, not both; {PREWARM_FORM}"
            )));
        }
        (None, None) => return Err(AdminError::InvalidCache(PREWARM_FORM.to_owned())),
    };
    Ok(PrewarmRequest {
        source: raw.source,
        what,
    })
}

/// serde's message says which field is unknown or missing; the form says what is taken.
fn form_error(form: &str, e: &serde_json::Error) -> AdminError {
    // serde_json's message ends with " at line L column C": the admin's body is one line.
    let message = e.to_string();
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(message.as_str());
    AdminError::InvalidCache(format!("{message}; {form}"))
}

/// The same rules the data listener applies to a decoded key.
fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return Err("longer than 1024 bytes");
    }
    if key.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    if key.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("contains a . or .. segment");
    }
    Ok(())
}

/// A prefix is a key's beginning: its whole segments follow the key rules; the last, partial
/// one may be anything a key segment may start with.
fn check_prefix(prefix: &str) -> Result<(), AdminError> {
    let bad = |why: &str| AdminError::InvalidCache(format!("prefix: {why}"));
    if prefix.len() > MAX_KEY_BYTES {
        return Err(bad("longer than 1024 bytes"));
    }
    if prefix.chars().any(char::is_control) {
        return Err(bad("contains a control character"));
    }
    let mut segments: Vec<&str> = prefix.split('/').collect();
    segments.pop();
    if segments.iter().any(|seg| *seg == "." || *seg == "..") {
        return Err(bad("contains a . or .. segment"));
    }
    Ok(())
}

/// The source named by an admin request, in the configuration and snapshot in force.
pub fn check_source(config: &Config, snapshot: &Snapshot, source: &str) -> Result<(), AdminError> {
    if config.sources.contains_key(source) && snapshot.sources().any(|(name, _)| name == source) {
        Ok(())
    } else {
        Err(AdminError::UnknownSource(source.to_owned()))
    }
}

/// A source prewarm can read: cached, and with an authority of its own.
pub fn check_prewarmable(config: &Config, source: &str) -> Result<(), AdminError> {
    if let Some(SourceConfig::S3(s3)) = config.sources.get(source)
        && matches!(s3.credentials, S3Credentials::Saml)
    {
        return Err(AdminError::PrewarmSaml(source.to_owned()));
    }
    if config
        .cache
        .as_ref()
        .is_some_and(|c| c.bypass.contains(source))
    {
        return Err(AdminError::SourceNotCached(source.to_owned()));
    }
    Ok(())
}

/// The keys a prewarm reads: the list given, or the prefix listed (bounded).
pub async fn keys_to_prewarm(
    backend: &AnyBackend,
    what: PrewarmWhat,
) -> Result<Vec<String>, AdminError> {
    match what {
        PrewarmWhat::Keys(keys) => Ok(keys),
        PrewarmWhat::Prefix(prefix) => {
            let listed = tokio::time::timeout(
                PREWARM_LIST_TIMEOUT,
                backend.list(&prefix, PREWARM_MAX_KEYS),
            )
            .await
            .unwrap_or(Err(BackendError::Timeout(PREWARM_LIST_TIMEOUT)))
            .map_err(AdminError::ListFailed)?;
            if listed.truncated {
                return Err(AdminError::PrefixTooBroad {
                    limit: PREWARM_MAX_KEYS,
                });
            }
            Ok(listed.keys)
        }
    }
}

/// One failed object of a job: its key and the error's kind (never the store's text).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failed {
    pub key: String,
    pub error: &'static str,
}

/// One prewarm job: counters the background task updates and `GET` reads.
#[derive(Debug)]
pub struct Job {
    id: String,
    source: String,
    total: u64,
    done: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    finished: AtomicBool,
    failed: Mutex<Vec<Failed>>,
}

impl Job {
    pub fn id(&self) -> &str {
        &self.id
    }

    fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// `GET /admin/cache/prewarm/<id>`: `done` counts keys finished, read or failed; `errors`
    /// the failed ones; `bytes` what the read ones hold.
    pub fn status(&self) -> serde_json::Value {
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // Read `finished` first: a job seen done has its final counters.
        let state = if self.is_finished() {
            "done"
        } else {
            "running"
        };
        serde_json::json!({
            "job": self.id,
            "source": self.source,
            "state": state,
            "done": self.done.load(Ordering::Acquire),
            "total": self.total,
            "bytes": self.bytes.load(Ordering::Acquire),
            "errors": self.errors.load(Ordering::Acquire),
            "failed": failed,
        })
    }

    fn record(&self, key: &str, outcome: Result<u64, &'static str>) {
        match outcome {
            Ok(bytes) => {
                self.bytes.fetch_add(bytes, Ordering::AcqRel);
            }
            Err(kind) => {
                self.errors.fetch_add(1, Ordering::AcqRel);
                let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
                if failed.len() < PREWARM_FAILED_SHOWN {
                    failed.push(Failed {
                        key: key.to_owned(),
                        error: kind,
                    });
                }
            }
        }
        self.done.fetch_add(1, Ordering::AcqRel);
    }
}

/// The bounded table of prewarm jobs.
#[derive(Debug, Default)]
pub struct Jobs {
    /// Oldest first.
    jobs: Mutex<VecDeque<Arc<Job>>>,
    next: AtomicU64,
}

impl Jobs {
    pub fn new() -> Jobs {
        Jobs::default()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        jobs.iter().find(|j| j.id == id).cloned()
    }

    /// Make room for and insert a new job, or refuse when too many run.
    fn insert(&self, source: &str, total: u64) -> Result<Arc<Job>, AdminError> {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let running = jobs.iter().filter(|j| !j.is_finished()).count();
        if running >= PREWARM_JOBS_RUNNING {
            return Err(AdminError::PrewarmBusy {
                running: PREWARM_JOBS_RUNNING,
            });
        }
        while jobs.len() >= PREWARM_JOBS_KEPT {
            match jobs.iter().position(|j| j.is_finished()) {
                Some(oldest) => {
                    jobs.remove(oldest);
                }
                // Cannot happen while RUNNING < KEPT; refuse rather than grow.
                None => {
                    return Err(AdminError::PrewarmBusy {
                        running: PREWARM_JOBS_RUNNING,
                    });
                }
            }
        }
        let job = Arc::new(Job {
            id: self.new_id(),
            source: source.to_owned(),
            total,
            done: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            failed: Mutex::new(Vec::new()),
        });
        jobs.push_back(Arc::clone(&job));
        Ok(job)
    }

    /// Unguessable where the system's random source answers; a sequence number makes it unique
    /// within the process either way.
    fn new_id(&self) -> String {
        use ring::rand::SecureRandom;
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let mut random = [0u8; 8];
        match ring::rand::SystemRandom::new().fill(&mut random) {
            Ok(()) => format!("{seq:x}-{:016x}", u64::from_be_bytes(random)),
            Err(_) => format!("{seq:x}"),
        }
    }

    /// Start a job that reads `keys` of `source` through `cache` in the background.
    pub fn start(
        &self,
        cache: Arc<Cache>,
        snapshot: Arc<Snapshot>,
        source: &str,
        keys: Vec<String>,
    ) -> Result<Arc<Job>, AdminError> {
        let job = self.insert(source, keys.len() as u64)?;
        let task_job = Arc::clone(&job);
        tokio::spawn(async move {
            let job = task_job;
            let backend = snapshot
                .sources()
                .find(|(name, _)| **name == job.source)
                .map(|(_, backend)| backend);
            futures_util::stream::iter(keys)
                .for_each_concurrent(PREWARM_CONCURRENCY, |key| {
                    let job = &job;
                    let cache = &cache;
                    async move {
                        let outcome = match backend {
                            // Listed keys are not checked when listed: check them here.
                            Some(backend) => match check_key(&key) {
                                Ok(()) => cache
                                    .prewarm_object(backend, &job.source, &key)
                                    .await
                                    .map_err(|e| e.kind()),
                                Err(_) => Err("invalid_key"),
                            },
                            // Removed by a reload after the job started.
                            None => Err("no_such_source"),
                        };
                        job.record(&key, outcome);
                    }
                })
                .await;
            job.finished.store(true, Ordering::Release);
            tracing::info!(
                job = %job.id,
                source = %job.source,
                total = job.total,
                errors = job.errors.load(Ordering::Acquire),
                "cache prewarm finished"
            );
        });
        Ok(job)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn purge_forms_and_their_refusals() {
        assert_eq!(
            parse_purge(br#"{"source":"s"}"#).unwrap(),
            Purge::Source("s".into())
        );
        assert_eq!(
            parse_purge(br#"{"source":"s","prefix":"p/"}"#).unwrap(),
            Purge::Prefix {
                source: "s".into(),
                prefix: "p/".into()
            }
        );
        assert_eq!(
            parse_purge(br#"{"source":"s","prefix":""}"#).unwrap(),
            Purge::Source("s".into())
        );
        assert_eq!(
            parse_purge(br#"{"source":"s","key":"a/b"}"#).unwrap(),
            Purge::Key {
                source: "s".into(),
                key: "a/b".into()
            }
        );
        let refused = |body: &[u8]| match parse_purge(body) {
            Err(AdminError::InvalidCache(why)) => why,
            other => panic!("{other:?}"),
        };
        assert!(refused(br#"{"source":"s","bogus":1}"#).contains("unknown field `bogus`"));
        assert!(refused(br#"{"prefix":"p/"}"#).contains("missing field `source`"));
        assert!(refused(br#"{"source":"s","prefix":"p/","key":"k"}"#).contains("not both"));
        assert!(refused(br#"{"source":"s","key":"a/../b"}"#).contains(".. segment"));
        assert!(refused(br#"{"source":"s","key":""}"#).contains("empty"));
        assert!(refused(b"not json").contains("expected"));
    }

    #[test]
    fn prewarm_forms_and_their_refusals() {
        assert_eq!(
            parse_prewarm(br#"{"source":"s","keys":["a","b/c"]}"#).unwrap(),
            PrewarmRequest {
                source: "s".into(),
                what: PrewarmWhat::Keys(vec!["a".into(), "b/c".into()])
            }
        );
        assert_eq!(
            parse_prewarm(br#"{"source":"s","prefix":"p/.."}"#)
                .unwrap()
                .what,
            PrewarmWhat::Prefix("p/..".into()),
            "a partial last segment may begin with dots"
        );
        let refused = |body: &[u8]| match parse_prewarm(body) {
            Err(AdminError::InvalidCache(why)) => why,
            other => panic!("{other:?}"),
        };
        assert!(refused(br#"{"source":"s"}"#).contains("expected"));
        assert!(refused(br#"{"source":"s","keys":[]}"#).contains("empty"));
        assert!(refused(br#"{"source":"s","keys":["ok","a\u0001"]}"#).starts_with("keys[1]"));
        assert!(refused(br#"{"source":"s","prefix":"../x"}"#).contains(".. segment"));
        assert!(refused(br#"{"source":"s","keys":["a"],"prefix":"p"}"#).contains("not both"));
    }

    #[test]
    fn the_table_keeps_few_jobs_and_drops_the_oldest_finished() {
        let jobs = Jobs::new();
        let mut first = Vec::new();
        for _ in 0..PREWARM_JOBS_RUNNING {
            first.push(jobs.insert("s", 1).unwrap());
        }
        assert!(matches!(
            jobs.insert("s", 1),
            Err(AdminError::PrewarmBusy { .. })
        ));
        for job in &first {
            job.record("k", Err("io"));
            job.finished.store(true, Ordering::Release);
        }
        let mut later = Vec::new();
        for _ in 0..PREWARM_JOBS_KEPT {
            let job = jobs.insert("s", 0).unwrap();
            job.finished.store(true, Ordering::Release);
            later.push(job);
        }
        assert!(
            jobs.get(first[0].id()).is_none(),
            "the oldest finished went"
        );
        assert!(jobs.get(later[0].id()).is_some());
        assert_eq!(jobs.jobs.lock().unwrap().len(), PREWARM_JOBS_KEPT);
        let status = first[0].status();
        assert_eq!(status["state"], "done");
        assert_eq!(status["errors"], 1);
        assert_eq!(status["failed"][0]["error"], "io");
    }
}
