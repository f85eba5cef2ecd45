//! Composition root: a validated [`Config`] becomes live parts (backends, pipeline, listeners).
//! `main.rs` and the tests both start the gateway through [`Gateway::start`].
//!
//! Startup order: build every backend and the TLS config first (so a bad certificate or an
//! unbuildable source fails before any port is bound), then bind both listeners, then serve.
//! Shutdown: cancel the token; both listeners stop accepting and drain within the grace period.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::audit::{AuditError, AuditLog, WriterDone};
use crate::config::Config;
use crate::config::defaults::AUDIT_FLUSH_TIMEOUT_SECS;
use crate::credentials::Delegations;
use crate::identity::IdentitySetupError;
use crate::identity::revocation::{RevocationError, Revocations};
use crate::pipeline::Pipeline;
use crate::pipeline::snapshot::build_snapshot;
use crate::reload::{self, Control, FileWatcher, ReloadError, Trigger};
use crate::server::per_ip::PerIpConnections;
use crate::server::tls::{LiveTls, LoadedTls, TlsError};
use crate::server::{self, Role};
use crate::state::Shared;
use crate::state::admission::{Admission, AdmitClock, AnyAdmission};
use crate::state::redis::admission::RedisAdmission;
use crate::telemetry::Metrics;

/// The embedded default config ([`Config::embedded_default`]) for `workdir`, with its HS256
/// development key made first if it does not exist yet (`./.bucketgate/dev-hs256.key`, mode
/// 0600, see [`crate::identity::keys::ensure_dev_key`]). Making a key is a side effect of
/// starting, so it happens here, in the composition root; config only reads the file.
pub fn embedded_config(workdir: &std::path::Path) -> std::io::Result<Config> {
    let key = crate::identity::keys::ensure_dev_key(&workdir.join(".bucketgate"))?;
    Config::embedded_default(workdir, &key)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("setting up TLS")]
    Tls(#[from] TlsError),
    /// Building the live parts of the config (sources, identity).
    #[error(transparent)]
    Snapshot(#[from] crate::pipeline::snapshot::SnapshotError),
    #[error("loading the persisted admin state")]
    State(#[from] crate::reload::lists::StateError),
    #[error("starting the audit log")]
    Audit(#[from] AuditError),
    #[error("loading revocations")]
    Revocations(#[from] RevocationError),
    #[error("setting up token verification")]
    Identity(#[from] IdentitySetupError),
    /// The `[cache]` could not be built (its disk directory): the gateway does not start
    /// without the cache it was configured with.
    #[error("setting up the cache ([cache])")]
    Cache(#[from] crate::cache::CacheError),
    /// `[redis]` could not be set up (its `ca_file`, or a URL the client refuses). A Redis that
    /// is down at start is not an error: the stores fall back as documented until it answers.
    #[error("setting up Redis ([redis]): {0}")]
    Redis(String),
    #[error("setting up SAML sessions")]
    Saml(#[from] crate::saml::sp::SamlSetupError),
    /// No private work directory could be made for `[video]` (the system temp dir is not
    /// writable): set `[video] work_dir`.
    #[error(
        "making a private video work directory under the system temp dir; set [video] work_dir"
    )]
    VideoWorkDir(#[source] std::io::Error),
    /// The rendition store's directory could not be made 0700 or emptied of a previous run's
    /// files: fix its permissions or set another `[video] work_dir`.
    #[error("preparing the video rendition store {0}; fix its permissions or set [video] work_dir")]
    VideoStore(String, #[source] std::io::Error),
    #[error("binding {what} listener on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running gateway: both listeners bound and serving.
pub struct Gateway {
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    metrics: Arc<Metrics>,
    pipeline: Arc<Pipeline>,
    /// Reloads and admin changes (listener addresses and limits from the first config stay until
    /// restart; the TLS certificate follows reloads).
    control: Arc<Control>,
    audit_done: WriterDone,
}

/// How to start a gateway beyond its config.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// The file the config came from: SIGHUP, the file watcher and `POST /admin/reload` read it
    /// again. `None`: nothing to reload from (tests, the embedded default).
    pub config_path: Option<PathBuf>,
    /// Watch `config_path` for changes (every `[admin] reload_poll_secs`).
    pub watch_config_file: bool,
    /// The rate limiters' clock (tests inject a fake one).
    pub clock: AdmitClock,
    /// The clock of delegated-role credential expiry, SAML assertion checks and SAML session
    /// expiry; `None`: the system clock.
    pub credentials_clock: Option<Arc<dyn crate::credentials::Clock>>,
    /// The clock of token checks (`exp`, `nbf`, use windows); `None`: the system clock.
    pub token_clock: Option<Arc<dyn crate::credentials::Clock>>,
}

impl Gateway {
    /// Build everything from `config`, bind the listeners and start serving.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        Gateway::start_with(config, StartOptions::default()).await
    }

    /// [`Gateway::start`] for a config loaded from `path`, watching the file for changes.
    pub async fn start_with_path(
        config: Config,
        path: Option<PathBuf>,
    ) -> Result<Gateway, StartError> {
        let watch = path.is_some();
        let options = StartOptions {
            config_path: path,
            watch_config_file: watch,
            ..StartOptions::default()
        };
        Gateway::start_with(config, options).await
    }

    pub async fn start_with(config: Config, options: StartOptions) -> Result<Gateway, StartError> {
        let metrics = Arc::new(Metrics::new());
        // Replaced by every reload that succeeds (see `Control::install`).
        let tls = Arc::new(LiveTls::new(LoadedTls::load(&config.listener.tls)?));
        // A persisted admin change outranks the file's lists (see reload/lists.rs).
        let config = reload::with_persisted_lists(config)?;
        let admission =
            AnyAdmission::Memory(Admission::new(&config.rate_limits, options.clock.clone()));
        // Revocations outlive snapshots; identity is built with every snapshot (below), before
        // any port is bound, so a bad key or revocations file fails startup.
        let revocations = Arc::new(Revocations::load(&config.admin.state_dir)?);
        // Delegated-role caches outlive snapshots too: a reload makes no new STS call.
        let clock = options
            .credentials_clock
            .clone()
            .unwrap_or_else(crate::credentials::system_clock);
        let delegations = Arc::new(Delegations::new(Arc::clone(&clock)));
        // SAML sessions outlive snapshots too, whether or not `[saml]` is configured now.
        let saml = Arc::new(crate::saml::sp::SamlState::new(clock)?);
        // The one home of all of it (see `state.rs`), built once for the process.
        let mut shared = Shared::new(admission, revocations, delegations).with_saml(saml);
        // `[redis]`: the shared client, and the stores that keep their state there, swapped in
        // over the in-memory ones. Without `[redis]` nothing here runs (one node, as before).
        if let Some(redis_config) = &config.redis {
            let token_clock = options
                .token_clock
                .clone()
                .unwrap_or_else(crate::credentials::system_clock);
            shared = with_redis_stores(
                shared,
                redis_config,
                &config,
                token_clock,
                options.clock.clone(),
            )
            .await?;
        }
        // The cache is built once, before any port is bound: a reload cannot rebuild it.
        if let Some(cache) = &config.cache {
            let cache =
                crate::cache::Cache::new(cache, Arc::clone(&metrics))?.with_limits(&config.limits);
            shared = shared.with_cache(Arc::new(cache));
        }
        // The decode pool too: `[images] workers` and `queue` apply at the next start.
        shared = shared.with_images(Arc::new(crate::state::ImageWork::new(
            config.images.workers,
            config.images.queue,
            crate::config::defaults::IMAGE_PROBE_ENTRIES,
        )));
        // The video machinery too: the tools, `jobs`, `queue`, `work_dir` and `store_bytes`
        // apply at the next start; a missing tool is a warning, not a failed start.
        let (video, video_dir) = build_video(&config.video)?;
        shared = shared.with_video(video, video_dir);
        if let Some(clock) = &options.token_clock {
            shared = shared.with_token_clock(Arc::clone(clock));
        }
        let shared = Arc::new(shared);
        let (audit, audit_done) = AuditLog::start(&config.audit, Arc::clone(&metrics))?;
        let pipeline = Arc::new(
            Pipeline::with_shared(
                build_snapshot(&config, shared.revocations(), shared.delegations()).await?,
                Arc::clone(&metrics),
                Arc::clone(&shared),
            )
            .with_audit(audit),
        );
        let per_ip = Arc::new(PerIpConnections::new(
            config.rate_limits.max_connections_per_ip,
        ));
        let control = Arc::new(Control::new(
            Arc::clone(&pipeline),
            Arc::clone(&metrics),
            Arc::clone(&per_ip),
            Arc::clone(&tls),
            options.config_path.clone(),
            config.clone(),
        ));
        if let (Some(redis), Some(redis_config)) = (shared.redis(), &config.redis) {
            control.share_lists(crate::reload::SharedLists::new(
                Arc::clone(redis),
                redis_config.node_name.clone(),
            ));
            // Take up the lists other nodes agreed on before serving (Redis down: ours stay).
            let _ = control.sync_shared_lists().await;
        }
        let admin = Arc::new(Admin::new(
            Arc::clone(&pipeline),
            Arc::clone(&control),
            Arc::clone(shared.revocations()),
        ));

        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let data_listener = bind("data", config.listener.addr).await?;
        let admin_listener = bind("admin", config.admin.addr).await?;
        let local = |l: &TcpListener, what: &'static str, addr: SocketAddr| {
            l.local_addr()
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let data_addr = local(&data_listener, "data", config.listener.addr)?;
        let admin_addr = local(&admin_listener, "admin", config.admin.addr)?;

        let shutdown = CancellationToken::new();
        let data = tokio::spawn(server::serve(
            Role::Data,
            data_listener,
            Some(Arc::clone(&tls)),
            Arc::clone(&pipeline),
            config.limits.clone(),
            Arc::clone(&metrics),
            Some(per_ip),
            shutdown.clone(),
        ));
        let admin = tokio::spawn(server::serve(
            Role::Admin,
            admin_listener,
            None,
            admin,
            config.limits.clone(),
            Arc::clone(&metrics),
            None,
            shutdown.clone(),
        ));
        let mut tasks = vec![data, admin];
        tasks.push(tokio::spawn(evict_idle_rate_limit_keys(
            Arc::clone(&pipeline),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(sweep_saml_sessions(
            Arc::clone(&pipeline),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(sweep_use_windows(
            Arc::clone(&pipeline),
            shutdown.clone(),
        )));
        if let Some(redis_config) = &config.redis {
            tasks.push(tokio::spawn(sync_with_redis(
                Arc::clone(&pipeline),
                Arc::clone(&control),
                redis_config.clone(),
                (data_addr, admin_addr),
                shutdown.clone(),
            )));
        }
        if let (Some(path), true) = (&options.config_path, options.watch_config_file) {
            let watcher = FileWatcher::new(Arc::clone(&control), path.clone());
            tasks.push(tokio::spawn(watcher.run(shutdown.clone())));
        }
        tracing::info!(%data_addr, %admin_addr, sources = config.sources.len(), "bucketgate serving");
        Ok(Gateway {
            data_addr,
            admin_addr,
            shutdown,
            tasks,
            metrics,
            pipeline,
            control,
            audit_done,
        })
    }

    /// Where the TLS data listener is bound (the real port when configured with port 0).
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// Where the admin listener is bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Build a whole new snapshot from `config` and put it in force; on any error the old one
    /// keeps serving. The TLS certificate and key are read again and serve new connections.
    /// Listener addresses and connection limits apply only at start: a change to them is logged
    /// and ignored until restart. Persisted admin lists still override.
    pub async fn reload(&self, config: Config) -> Result<(), ReloadError> {
        self.control.install(config).await
    }

    /// Read the config file again and put it in force: what SIGHUP does.
    pub async fn reload_from_file(&self, trigger: Trigger) -> Result<(), ReloadError> {
        self.control.reload_from_file(trigger).await
    }

    /// Reloads and admin changes (signal handlers hold one).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// A token that stops the gateway when cancelled (signal handlers hold one).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stop accepting, let in-flight responses finish within the grace period, and return.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Wait until the gateway has stopped (after its shutdown token was cancelled) and every
    /// audit record is written.
    pub async fn wait(self) {
        let Gateway {
            tasks,
            pipeline,
            control,
            audit_done,
            ..
        } = self;
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "listener task failed");
            }
        }
        // The audit writer finishes once every holder of the log is gone: these are the last.
        drop(control);
        drop(pipeline);
        let flush = Duration::from_secs(AUDIT_FLUSH_TIMEOUT_SECS);
        if tokio::time::timeout(flush, audit_done.wait())
            .await
            .is_err()
        {
            tracing::warn!("audit writer still busy after shutdown; some records may be lost");
        }
    }
}

/// Connect to `[redis]` (lazily: a Redis that is down at start does not stop the gateway) and
/// swap in the stores that keep their state there. Each store's owner adds its line here.
async fn with_redis_stores(
    shared: Shared,
    redis_config: &crate::config::RedisConfig,
    config: &Config,
    token_clock: Arc<dyn crate::credentials::Clock>,
    admit_clock: AdmitClock,
) -> Result<Shared, StartError> {
    use crate::state::redis::revocations::RedisRevocations;
    use crate::state::redis::{Redis, RedisSettings};
    let settings =
        RedisSettings::from_config(redis_config).map_err(|e| StartError::Redis(e.to_string()))?;
    let redis = Arc::new(Redis::connect(&settings).map_err(|e| StartError::Redis(e.to_string()))?);
    let mut shared = shared.with_redis(Arc::clone(&redis));
    // ---- Redis-backed stores (one line each; see src/state/redis/mod.rs) ----
    // Revocations: the record in Redis, this node's copy in its state dir; synced once now so a
    // node starts with the shared list (a Redis that is down leaves the copy, degraded).
    let copy = crate::identity::revocation::FileRevocations::load(&config.admin.state_dir)?;
    let revocations = RedisRevocations::new(
        Arc::clone(&redis),
        copy,
        redis_config.refuse_tokens_issued_during_outage,
        token_clock,
    );
    let _ = revocations.sync().await;
    shared = shared.with_redis_revocations(Arc::new(revocations));
    // Use windows (redis-saml): decided and written by one script per use.
    let windows = crate::state::redis::use_windows::RedisUseWindows::new(Arc::clone(&redis));
    shared = shared
        .with_redis_flag(windows.health().clone())
        .with_use_windows(crate::identity::use_window::UseWindows::Shared(Box::new(
            windows,
        )));
    // SAML sessions (sealed), replay cache, login-cookie key (redis-saml). Without a seal_key
    // (no [saml] at start) sessions stay in this process.
    if let Some(seal_key) = &redis_config.seal_key {
        let seal = crate::state::redis::seal::SealKey::new(&seal_key.0)
            .map_err(|e| StartError::Redis(e.to_string()))?;
        let clock = shared
            .saml()
            .map(|s| s.clock())
            .unwrap_or_else(crate::credentials::system_clock);
        let (saml, health) = crate::state::redis::sessions::saml_state(
            &redis,
            &Arc::new(seal),
            crate::config::defaults::SAML_MAX_SESSIONS,
            clock,
        );
        shared = shared.with_saml(Arc::new(saml)).with_redis_flag(health);
    }
    // rate limits (redis-limits): shared quotas with local leases, per node while Redis is down.
    let shared = shared.with_admission(AnyAdmission::Redis(RedisAdmission::new(
        Arc::clone(&redis),
        &config.rate_limits,
        redis_config.expected_nodes,
        admit_clock,
    )));
    Ok(shared)
}

/// `[redis]`: every `sync_interval_ms`, bring the shared revocations and network lists up to
/// date; every `REDIS_HEARTBEAT_SECS`, write this node's heartbeat. Failures are logged by the
/// stores on the change of state (not every tick) and retried on the next tick.
async fn sync_with_redis(
    pipeline: Arc<Pipeline>,
    control: Arc<Control>,
    redis_config: crate::config::RedisConfig,
    addrs: (SocketAddr, SocketAddr),
    shutdown: CancellationToken,
) {
    use crate::state::redis::cluster::{NodeInfo, beat};
    let Some(redis) = pipeline.shared().redis().cloned() else {
        return;
    };
    let started = crate::civil_time::unix_secs(std::time::SystemTime::now());
    let mut tick = tokio::time::interval(redis_config.sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let beat_every = Duration::from_secs(crate::config::defaults::REDIS_HEARTBEAT_SECS);
    let mut last_beat: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(r) = pipeline.shared().redis_revocations() {
            let _ = r.sync().await;
        }
        let _ = control.sync_shared_lists().await;
        if last_beat.is_none_or(|t| t.elapsed() >= beat_every) {
            last_beat = Some(tokio::time::Instant::now());
            let info = NodeInfo {
                node: redis_config.node_name.clone(),
                data_addr: addrs.0.to_string(),
                admin_addr: addrs.1.to_string(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                config: control.config_fingerprint().await,
                started,
                last_seen: crate::civil_time::unix_secs(std::time::SystemTime::now()),
                redis_healthy: redis.healthy(),
            };
            if let Err(e) = beat(&redis, &info).await {
                tracing::debug!(error = %e, "heartbeat not written");
            }
        }
    }
}

/// Forget rate-limit keys that have been idle long enough to be indistinguishable from new ones,
/// so the limiters' memory follows the active clients, not every client ever seen.
async fn evict_idle_rate_limit_keys(pipeline: Arc<Pipeline>, shutdown: CancellationToken) {
    let every = std::time::Duration::from_secs(crate::config::defaults::RATE_LIMIT_EVICT_SECS);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => pipeline.admission().evict_idle(),
        }
    }
}

/// Drop expired SAML sessions (and with them the users' credentials) even if nobody presents
/// their cookie again.
/// Forget lapsed use windows, every `USE_WINDOW_SWEEP_SECS` (a full store also sweeps itself).
async fn sweep_use_windows(pipeline: Arc<Pipeline>, shutdown: CancellationToken) {
    use crate::identity::use_window::UseWindowStore as _;
    let every = Duration::from_secs(crate::config::defaults::USE_WINDOW_SWEEP_SECS);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {
                let shared = pipeline.shared();
                shared.use_windows().sweep(shared.token_now()).await;
            }
        }
    }
}

async fn sweep_saml_sessions(pipeline: Arc<Pipeline>, shutdown: CancellationToken) {
    let every = Duration::from_secs(crate::config::defaults::SAML_SESSION_SWEEP_SECS);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {
                if let Some(state) = pipeline.saml() {
                    crate::saml::session::SessionStore::sweep(state.sessions(), state.now()).await;
                }
            }
        }
    }
}

/// The video machinery of `[video]`: the tools looked up (a missing one is logged and makes the
/// `/v/` routes answer 503), the fence, the rendition store in `work_dir` or in a private
/// directory under the system temp dir (returned, so it is removed with the process's state).
fn build_video(
    config: &crate::config::VideoConfig,
) -> Result<(Arc<crate::video::Work>, Option<tempfile::TempDir>), StartError> {
    let tools = crate::video::Tools::find(&config.ffmpeg, &config.ffprobe);
    if let Some(reason) = tools.unavailable() {
        tracing::warn!(
            reason = %reason,
            "video processing is unavailable: the /v/ routes answer 503 until ffmpeg and \
             ffprobe are installed (or [video] ffmpeg and ffprobe are set) and the gateway is \
             restarted"
        );
    }
    let (dir, private) = match &config.work_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let private = tempfile::Builder::new()
                .prefix("bucketgate-video-")
                .tempdir()
                .map_err(StartError::VideoWorkDir)?;
            (private.path().to_path_buf(), Some(private))
        }
    };
    let fence = crate::video::fence::Fence::new(tools, config.jobs, config.queue);
    let store = crate::video::web::Store::new(dir.clone(), config.store_bytes)
        .map_err(|e| StartError::VideoStore(dir.display().to_string(), e))?;
    let work = crate::video::Work::new(fence, store, crate::config::defaults::VIDEO_PROBE_ENTRIES);
    Ok((Arc::new(work), private))
}
