//! Live administration: reloads (SIGHUP, a change of the config file, `POST /admin/reload`) and
//! admin API changes of the network lists. Every path ends in [`Control`], which does the same
//! thing: build a whole new snapshot from a validated config, and only then swap it in. On any
//! error the old snapshot keeps serving, every error is logged (config errors with their line
//! and column) and `config_reloads_total{outcome="error"}` is counted.
//!
//! Changes are serialized by one async mutex, so a file reload and an API change never
//! interleave. Rate-limit quotas and the per-IP connection cap are updated in place (their state
//! outlives snapshots). The TLS certificate and key files are read again by every reload (a
//! renewal that rewrites them in place is picked up without any config change) and serve new
//! connections; open connections keep theirs. The file watcher watches the config file and the
//! certificate files named by the config read last, even a refused one, so fixing what was
//! refused is noticed. Listener addresses and `[limits]` apply only at start.
//!
//! This module must not parse HTTP: `admin/api.rs` turns requests into calls here.

pub mod lists;
mod shared;

pub use shared::SharedLists;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;

use crate::config::{self, Config, ConfigErrors};
use crate::pipeline::snapshot::{SnapshotError, build_snapshot};
use crate::pipeline::{ErrorChain, Pipeline};
use crate::server::per_ip::PerIpConnections;
use crate::server::tls::{self, LiveTls, LoadedTls, TlsError};
use crate::telemetry::{Metrics, ReloadLabel};
use lists::{ListsError, NetworkLists, StateError};

/// What asked for a reload (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    File,
    Api,
}

impl Trigger {
    pub fn label(self) -> &'static str {
        match self {
            Trigger::Signal => "signal",
            Trigger::File => "file",
            Trigger::Api => "api",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the gateway was started without --config; there is no file to reload")]
    NoConfigFile,
    #[error("the config file is invalid")]
    Config(#[source] ConfigErrors),
    #[error("the persisted admin state cannot be used")]
    State(#[from] StateError),
    #[error("building the new snapshot")]
    Build(#[from] SnapshotError),
    #[error("the TLS certificate or key cannot be used; the previous one stays in force")]
    Tls(#[source] TlsError),
}

/// Why an admin change of the lists was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("invalid change")]
    Invalid(#[from] ListsError),
    #[error("building the new snapshot")]
    Build(#[from] SnapshotError),
    #[error("persisting the change")]
    Persist(#[from] StateError),
    /// `[redis]`: the lists shared by every node could not be read or written.
    #[error("the shared network lists are unavailable")]
    Shared(#[source] crate::state::redis::RedisFault),
    /// `[redis]`: another node changed the lists between our read and our write.
    #[error("the network lists were changed on another node meanwhile")]
    Conflict,
}

/// SHA-256 of the admin token: compared in constant time, and its prefix names the admin in
/// audit records without revealing the token.
#[derive(Clone, Copy)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(token: &str) -> TokenDigest {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        TokenDigest(out)
    }

    /// Constant time: equal-length digests, compared with `subtle`.
    pub fn matches(&self, presented: &str) -> bool {
        TokenDigest::of(presented).0.ct_eq(&self.0).into()
    }

    /// `token:` + the first 6 bytes of the digest, in hex.
    pub fn who(&self) -> String {
        format!("token:{}", hex::encode(&self.0[..6]))
    }
}

/// The one place that changes what the gateway serves after start.
pub struct Control {
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    per_ip: Arc<PerIpConnections>,
    /// The data listener's TLS config, replaced by every reload.
    tls: Arc<LiveTls>,
    config_path: Option<PathBuf>,
    /// The certificate and key files named by the config read last, even if that config or
    /// its certificate was refused: the file watcher watches them, so that fixing a refused
    /// certificate is noticed.
    named_tls: ArcSwap<[PathBuf; 2]>,
    /// What the snapshot in force was built from (file config + persisted lists). The lock
    /// serializes every change.
    current: Mutex<Config>,
    admin_token: ArcSwapOption<TokenDigest>,
    /// `[redis]`: the network lists every node follows (set once at start).
    shared_lists: std::sync::OnceLock<SharedLists>,
}

/// `config` with the lists persisted under its state dir in force, if any.
pub fn with_persisted_lists(mut config: Config) -> Result<Config, StateError> {
    if let Some(lists) = lists::load_state(&config.admin.state_dir)? {
        let unknown = lists.apply_to(&mut config);
        tracing::info!(
            state = %config.admin.state_dir.join(lists::STATE_FILE).display(),
            "network lists from the admin state file override the config file's [network] lists"
        );
        if !unknown.is_empty() {
            tracing::warn!(
                sources = ?unknown,
                "the admin state file names sources the config no longer has; their lists are ignored"
            );
        }
    }
    Ok(config)
}

impl Control {
    /// `effective` is what the running snapshot was built from ([`with_persisted_lists`]
    /// applied).
    #[allow(clippy::too_many_arguments)] // the live parts a reload replaces, passed once at start
    pub fn new(
        pipeline: Arc<Pipeline>,
        metrics: Arc<Metrics>,
        per_ip: Arc<PerIpConnections>,
        tls: Arc<LiveTls>,
        config_path: Option<PathBuf>,
        effective: Config,
    ) -> Control {
        let admin_token = ArcSwapOption::from(
            effective
                .admin
                .token
                .as_ref()
                .map(|t| Arc::new(TokenDigest::of(t.expose()))),
        );
        Control {
            pipeline,
            metrics,
            per_ip,
            tls,
            config_path,
            named_tls: ArcSwap::from_pointee(tls::files_of(&effective.listener.tls)),
            current: Mutex::new(effective),
            admin_token,
            shared_lists: std::sync::OnceLock::new(),
        }
    }

    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// The certificate chain and key files the config read last names (those in force, unless
    /// that config or its certificate was refused): the file watcher watches them with the
    /// config file.
    pub fn tls_files(&self) -> [PathBuf; 2] {
        (**self.named_tls.load()).clone()
    }

    /// The admin token's digest, or `None` when the admin API is off.
    pub fn admin_token(&self) -> Option<Arc<TokenDigest>> {
        self.admin_token.load_full()
    }

    /// The config the running snapshot was built from.
    pub async fn effective_config(&self) -> Config {
        self.current.lock().await.clone()
    }

    /// How often the file watcher looks at the config file now.
    pub async fn reload_poll(&self) -> std::time::Duration {
        self.current.lock().await.admin.reload_poll
    }

    /// Read the config file again and put it in force (SIGHUP, the file watcher and
    /// `POST /admin/reload` all call this). On error the old snapshot keeps serving.
    pub async fn reload_from_file(&self, trigger: Trigger) -> Result<(), ReloadError> {
        let result = match &self.config_path {
            None => Err(ReloadError::NoConfigFile),
            Some(path) => {
                let path = path.clone();
                let loaded = tokio::task::spawn_blocking(move || match config::load(&path) {
                    Ok(config) => Ok(config),
                    Err(errors) => Err((errors, config::tls_named(&path))),
                })
                .await;
                match loaded {
                    Ok(Ok(config)) => self.install(config).await,
                    Ok(Err((errors, named))) => {
                        // A config refused because its certificate file is missing names the
                        // file to watch for all the same.
                        if let Some(named) = named {
                            self.named_tls.store(Arc::new(tls::files_of(&named)));
                        }
                        Err(ReloadError::Config(errors))
                    }
                    // The blocking task cannot panic short of a bug; report it as unreadable.
                    Err(_) => Err(ReloadError::NoConfigFile),
                }
            }
        };
        self.count(trigger, &result);
        result
    }

    /// Put `config` in force as if it had been loaded from the file (the persisted lists still
    /// override its lists). `Gateway::reload` and the file reload share this.
    pub async fn install(&self, config: Config) -> Result<(), ReloadError> {
        let mut current = self.current.lock().await;
        self.named_tls
            .store(Arc::new(tls::files_of(&config.listener.tls)));
        let effective = with_persisted_lists(config)?;
        // Read every time, whether or not the config changed: renewals rewrite the files. Two
        // small PEM files, read inline like the key files `build_snapshot` reads.
        let tls = LoadedTls::load(&effective.listener.tls).map_err(ReloadError::Tls)?;
        let snapshot = build_snapshot(
            &effective,
            self.pipeline.shared().revocations(),
            self.pipeline.shared().delegations(),
        )
        .await?;
        let old = &*current;
        if old.listener.addr != effective.listener.addr || old.admin.addr != effective.admin.addr {
            tracing::warn!("listener addresses changed in the config; they apply after a restart");
        }
        if crate::cache::differs_at_start(old.cache.as_ref(), effective.cache.as_ref()) {
            tracing::warn!(
                "[cache] changed in the config; it applies at the next start (per-source \
                 `cache = false` applies now)"
            );
        }
        if old.redis != effective.redis {
            tracing::warn!("[redis] changed in the config; it applies at the next start");
        }
        if old.video.differs_at_start(&effective.video) {
            tracing::warn!(
                "[video] ffmpeg, ffprobe, jobs, queue, work_dir or store_bytes changed in the \
                 config; they apply at the next start (the limits and `enabled` apply now)"
            );
        }
        self.pipeline.replace(snapshot);
        if tls.leaf() != &self.tls.leaf() {
            tracing::info!("TLS certificate changed; new connections are served the new one");
        }
        self.tls.replace(tls);
        self.apply_live_settings(&effective);
        *current = effective;
        Ok(())
    }

    fn apply_live_settings(&self, effective: &Config) {
        self.pipeline.admission().update(&effective.rate_limits);
        self.per_ip
            .set_cap(effective.rate_limits.max_connections_per_ip);
        self.admin_token.store(
            effective
                .admin
                .token
                .as_ref()
                .map(|t| Arc::new(TokenDigest::of(t.expose()))),
        );
    }

    fn count(&self, trigger: Trigger, result: &Result<(), ReloadError>) {
        let outcome = match result {
            Ok(()) => {
                tracing::info!(trigger = trigger.label(), "config reloaded");
                "ok"
            }
            Err(err) => {
                log_reload_error(trigger, err);
                "error"
            }
        };
        self.metrics
            .config_reloads
            .get_or_create(&ReloadLabel {
                outcome,
                trigger: trigger.label(),
            })
            .inc();
    }

    /// The lists in force.
    pub async fn network_lists(&self) -> NetworkLists {
        NetworkLists::from_config(&*self.current.lock().await)
    }

    /// Apply an admin change to the lists: compute the new lists from the current ones, build
    /// the snapshot, persist atomically, then swap. Returns (before, after).
    pub async fn change_lists<F>(
        &self,
        change: F,
    ) -> Result<(NetworkLists, NetworkLists), ChangeError>
    where
        F: FnOnce(&NetworkLists, &Config) -> Result<NetworkLists, ListsError>,
    {
        let mut current = self.current.lock().await;
        if let Some(shared) = self.shared_lists.get() {
            // Change the latest lists, not a stale copy.
            self.pull_shared(&mut current, shared).await?;
        }
        let before = NetworkLists::from_config(&current);
        let mut after = change(&before, &current)?;
        after.normalize();
        after.check_sources(&current)?;
        // Record every configured source, so that the file says what each source had when it
        // was written (see lists.rs: precedence).
        for name in current.sources.keys() {
            after.sources.entry(name.clone()).or_default();
        }
        let publish = self
            .shared_lists
            .get()
            .map(|shared| (shared, after.clone()));
        self.put_lists(&mut current, after.clone(), publish).await?;
        Ok((before, after))
    }

    /// Build a snapshot with `lists` in force, publish them to every node (`[redis]`), persist
    /// them to the state file, then swap the snapshot in. Any error leaves everything as it was
    /// (a publish that succeeded before a later local error is taken up by every node, this
    /// one included, at its next sync).
    async fn put_lists(
        &self,
        current: &mut Config,
        next: NetworkLists,
        publish: Option<(&SharedLists, NetworkLists)>,
    ) -> Result<(), ChangeError> {
        let mut effective = current.clone();
        next.apply_to(&mut effective);
        let snapshot = build_snapshot(
            &effective,
            self.pipeline.shared().revocations(),
            self.pipeline.shared().delegations(),
        )
        .await?;
        if let Some((shared, published)) = publish {
            shared.publish(&published).await?;
        }
        let state_dir = effective.admin.state_dir.clone();
        let to_store = next;
        tokio::task::spawn_blocking(move || lists::store_state(&state_dir, &to_store))
            .await
            .map_err(|_| {
                ChangeError::Persist(StateError::Write {
                    path: effective.admin.state_dir.join(lists::STATE_FILE),
                    source: std::io::Error::other("the write task did not finish"),
                })
            })??;
        self.pipeline.replace(snapshot);
        *current = effective;
        Ok(())
    }
}

/// Log a failed reload: config errors one line each with `file:line:col`, anything else with
/// its whole chain.
fn log_reload_error(trigger: Trigger, err: &ReloadError) {
    match err {
        ReloadError::Config(errors) => {
            for e in &errors.0 {
                tracing::error!(trigger = trigger.label(), "config reload refused: {e}");
            }
            tracing::error!(
                trigger = trigger.label(),
                errors = errors.0.len(),
                "config reload failed; the previous configuration stays in force"
            );
        }
        other => tracing::error!(
            trigger = trigger.label(),
            error = %ErrorChain(other),
            "config reload failed; the previous configuration stays in force"
        ),
    }
}

/// What identifies one version of the config file: the file a symlink chain ends at (a
/// Kubernetes ConfigMap swaps `..data`), its mtime and size, and a hash of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    target: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
    sha256: [u8; 32],
}

impl Fingerprint {
    /// `None` when the file cannot be read (removed, mid-swap, not permitted): for the watcher
    /// that is one more state of the file, so a file that goes missing or comes back is a change.
    pub fn of(path: &Path) -> Option<Fingerprint> {
        let target = std::fs::canonicalize(path).ok()?;
        let meta = std::fs::metadata(&target).ok()?;
        let content = std::fs::read(&target).ok()?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &content);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.as_ref());
        Some(Fingerprint {
            target,
            modified: meta.modified().ok(),
            len: meta.len(),
            sha256,
        })
    }
}

/// Each watched file and its fingerprint (`None`: it could not be read).
type Watched = Vec<(PathBuf, Option<Fingerprint>)>;

/// Polls the config file, and the TLS certificate and key files it names, and reloads when one
/// of them changes, appears or disappears: a certificate renewal (cert-manager, certbot)
/// rewrites those files without touching the config, and an operator may fix a refused
/// certificate or point the config at new files and remove the old ones.
pub struct FileWatcher {
    control: Arc<Control>,
    path: PathBuf,
    /// The watched files at the last poll.
    last: Watched,
}

/// The fingerprint of each of `paths`, reusing those of `known` (taken earlier) where given.
fn fingerprints(paths: Vec<PathBuf>, known: &Watched) -> Watched {
    paths
        .into_iter()
        .map(|path| {
            let print = match known.iter().find(|(p, _)| *p == path) {
                Some((_, print)) => print.clone(),
                None => Fingerprint::of(&path),
            };
            (path, print)
        })
        .collect()
}

impl FileWatcher {
    /// Takes the fingerprints of the files as they are now (the versions in force).
    pub fn new(control: Arc<Control>, path: PathBuf) -> FileWatcher {
        let mut watcher = FileWatcher {
            control,
            path,
            last: Vec::new(),
        };
        watcher.last = fingerprints(watcher.watched(), &Vec::new());
        watcher
    }

    /// The config file, then the certificate and key files the config read last names.
    fn watched(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.path.clone()];
        paths.extend(self.control.tls_files());
        paths
    }

    /// One poll: reload if a file changed since the last poll. Returns whether it reloaded
    /// (successfully or not). A failed reload is not retried until a file changes again.
    pub async fn poll_once(&mut self) -> bool {
        let paths = self.watched();
        let Ok(now) = tokio::task::spawn_blocking(move || fingerprints(paths, &Vec::new())).await
        else {
            return false;
        };
        if now == self.last {
            return false;
        }
        self.last = now;
        let _ = self.control.reload_from_file(Trigger::File).await;
        // The config read named other certificate files (whether or not it was put in force):
        // watch those from now on. Files watched before keep the fingerprint taken before the
        // reload read them, so a change during the reload is seen at the next poll.
        let after = self.watched();
        if self.last.iter().map(|(p, _)| p).ne(after.iter()) {
            let known = std::mem::take(&mut self.last);
            let fallback = known.clone();
            self.last = tokio::task::spawn_blocking(move || fingerprints(after, &known))
                .await
                .unwrap_or(fallback);
        }
        true
    }

    /// Poll every `[admin] reload_poll_secs` until `shutdown` fires.
    pub async fn run(mut self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            let interval = self.control.reload_poll().await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            self.poll_once().await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn token_digest_matches_only_the_same_token() {
        let d = TokenDigest::of("s3cret-token");
        assert!(d.matches("s3cret-token"));
        assert!(!d.matches("s3cret-tokeN"));
        assert!(!d.matches(""));
        assert!(!d.who().contains("s3cret"));
        assert_eq!(d.who().len(), "token:".len() + 12);
    }

    #[test]
    fn fingerprint_follows_a_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        std::fs::write(&a, "x = 1\n").unwrap();
        std::fs::write(&b, "x = 1\n").unwrap();
        let link = dir.path().join("config.toml");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let before = Fingerprint::of(&link).unwrap();
        let tmp = dir.path().join("tmp-link");
        std::os::unix::fs::symlink(&b, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        let after = Fingerprint::of(&link).unwrap();
        assert_ne!(before, after, "same content, different target");
    }
}
