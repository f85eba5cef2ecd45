//! The one home of long-lived state: what outlives config snapshots and is shared by every
//! request, every reload and the admin API. [`Shared`] is built once, in `app.rs`, and held
//! (as one `Arc<Shared>`) by the pipeline; reloads and the admin API reach it through the
//! pipeline.
//!
//! It holds:
//! - admission: the rate-limit counters ([`admission`]), so a reload does not give every client
//!   a fresh burst;
//! - revocations: the revocation list every rebuilt identity checks;
//! - use windows: first use, last use and bound address of signed URLs with a use window
//!   (`identity::use_window`), with the clock tokens are judged by (injected by tests);
//! - delegations: the delegated roles' cached credentials, so a reload makes no new STS call;
//! - SAML state: sessions, the replay cache and the login-cookie key, so a reload keeps
//!   everyone signed in;
//! - the object cache ([`crate::cache::Cache`]), when `[cache]` was configured at start;
//! - the image work ([`ImageWork`]): the decode pool, recent probes, probes and renders in
//!   flight (built from `[images]` at start).
//!
//! - the video work ([`crate::video::Work`]): the fence (tools, children, queue), the
//!   rendition store, recent probes, jobs in flight (built from `[video]` at start).
//! - the Redis client ([`redis::Redis`]), when `[redis]` was configured at start: the stores
//!   that keep their state there hold it too, and `/readyz` and `/admin/cluster` read it.
//!
//! Each part is a store behind its own type; where a part may later be kept outside the process
//! (Redis), its store is an async trait with an in-memory implementation (see each part).
//! This module builds nothing from config and decides nothing about requests.

pub mod admission;
pub mod redis;

use std::sync::Arc;

use crate::credentials::{Clock, Delegations};
use crate::identity::revocation::Revocations;
use crate::identity::use_window::UseWindows;
use crate::saml::sp::SamlState;
use admission::{Admission, AnyAdmission};

/// Everything long-lived, built once per process (see the module doc).
pub struct Shared {
    admission: AnyAdmission,
    revocations: Arc<Revocations>,
    delegations: Arc<Delegations>,
    use_windows: UseWindows,
    /// The clock of token checks (`exp`, `nbf`, use windows): the system clock unless a test
    /// injects one.
    token_clock: Arc<dyn Clock>,
    /// `None`: no SAML at all (benches that drive the pipeline directly); a gateway always has
    /// one, whether or not `[saml]` is configured now, so a reload can add it.
    saml: Option<Arc<SamlState>>,
    /// `None`: no `[cache]` at start (reads go to the origin).
    cache: Option<Arc<crate::cache::Cache>>,
    /// `None`: no `[redis]` at start (one node, every store in this process).
    redis: Option<Arc<redis::Redis>>,
    /// The Redis revocation store (also `revocations`), for `/readyz` and the sync task.
    redis_revocations: Option<Arc<redis::revocations::RedisRevocations>>,
    /// `/readyz` flags of Redis-backed stores that keep one (SAML sessions, use windows).
    redis_flags: Vec<redis::saml_health::Degraded>,
    images: Arc<ImageWork>,
    /// `None`: no video machinery (benches); a gateway always has one, built from `[video]` at
    /// start (its tools may be missing: the routes then answer 503).
    video: Option<Arc<crate::video::Work>>,
    /// The private work directory made at start when `[video] work_dir` is not set, removed
    /// when the process's state is dropped.
    _video_dir: Option<tempfile::TempDir>,
}

/// The image work, keyed by object version (probes) and derived entry (renders).
pub type ImageWork = crate::image::Work<crate::cache::key::CacheKey>;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(
        admission: AnyAdmission,
        revocations: Arc<Revocations>,
        delegations: Arc<Delegations>,
    ) -> Shared {
        Shared {
            admission,
            revocations,
            delegations,
            use_windows: UseWindows::memory(),
            token_clock: crate::credentials::system_clock(),
            saml: None,
            cache: None,
            redis: None,
            redis_revocations: None,
            redis_flags: Vec::new(),
            images: Arc::new(ImageWork::new(
                crate::config::defaults::IMAGE_WORKERS,
                crate::config::defaults::IMAGE_QUEUE,
                crate::config::defaults::IMAGE_PROBE_ENTRIES,
            )),
            video: None,
            _video_dir: None,
        }
    }

    /// State for a pipeline driven without a gateway (benches): no rate limits, an empty
    /// revocation list kept only in memory, no SAML.
    pub fn detached() -> Shared {
        Shared::new(
            AnyAdmission::Memory(Admission::unlimited()),
            Arc::new(Revocations::in_memory()),
            Arc::new(Delegations::new(crate::credentials::system_clock())),
        )
    }

    /// Serve reads through `cache`.
    pub fn with_cache(mut self, cache: Arc<crate::cache::Cache>) -> Shared {
        self.cache = Some(cache);
        self
    }

    /// Run image jobs with `images` (built from `[images]` at start).
    pub fn with_images(mut self, images: Arc<ImageWork>) -> Shared {
        self.images = images;
        self
    }

    pub fn images(&self) -> &Arc<ImageWork> {
        &self.images
    }

    /// Run video jobs with `video` (built from `[video]` at start); `private_dir` is its work
    /// directory when the gateway made one (removed with this state).
    pub fn with_video(
        mut self,
        video: Arc<crate::video::Work>,
        private_dir: Option<tempfile::TempDir>,
    ) -> Shared {
        self.video = Some(video);
        self._video_dir = private_dir;
        self
    }

    /// The video machinery, if built (a gateway always builds it).
    pub fn video(&self) -> Option<&Arc<crate::video::Work>> {
        self.video.as_ref()
    }

    /// The object cache, if `[cache]` was configured at start.
    pub fn cache(&self) -> Option<&Arc<crate::cache::Cache>> {
        self.cache.as_ref()
    }

    /// Judge tokens by `clock` (tests move it).
    pub fn with_token_clock(mut self, clock: Arc<dyn Clock>) -> Shared {
        self.token_clock = clock;
        self
    }

    /// Keep SAML sessions in `state`.
    pub fn with_saml(mut self, state: Arc<SamlState>) -> Shared {
        self.saml = Some(state);
        self
    }

    /// Keep shared state in `redis` (the stores that use it are swapped in with the `with_*`
    /// methods; this only makes the client reachable for health, the cluster table and sync).
    pub fn with_redis(mut self, redis: Arc<redis::Redis>) -> Shared {
        self.redis = Some(redis);
        self
    }

    /// The Redis client, if `[redis]` was configured at start.
    pub fn redis(&self) -> Option<&Arc<redis::Redis>> {
        self.redis.as_ref()
    }

    /// The state of each store kept in Redis, for `/readyz` (empty without `[redis]`). Each
    /// Redis-backed store adds its line here.
    pub fn redis_health(&self) -> Vec<redis::StoreHealth> {
        let mut out = Vec::new();
        if let Some(r) = &self.redis_revocations {
            out.push(r.health());
        }
        out.extend(
            self.redis_flags
                .iter()
                .map(redis::saml_health::Degraded::health),
        );
        if let AnyAdmission::Redis(a) = &self.admission {
            out.push(a.health());
        }
        out
    }

    /// Report `flag` in `/readyz` (SAML sessions, use windows).
    pub fn with_redis_flag(mut self, flag: redis::saml_health::Degraded) -> Shared {
        self.redis_flags.push(flag);
        self
    }

    /// Replace the rate-limit store (a Redis-backed one, built in `app.rs`).
    pub fn with_admission(mut self, admission: AnyAdmission) -> Shared {
        self.admission = admission;
        self
    }

    /// Replace the revocation store (a Redis-backed one, built in `app.rs`).
    pub fn with_revocations(mut self, revocations: Arc<Revocations>) -> Shared {
        self.revocations = revocations;
        self
    }

    /// Keep revocations in Redis (`[redis]`): `revocations` becomes the shared store, and its
    /// handle stays here for `/readyz` and the sync task.
    pub fn with_redis_revocations(
        mut self,
        revocations: Arc<redis::revocations::RedisRevocations>,
    ) -> Shared {
        self.revocations = Arc::new(Revocations::Shared(Arc::clone(&revocations) as _));
        self.redis_revocations = Some(revocations);
        self
    }

    /// The Redis revocation store, when `[redis]` keeps them.
    pub fn redis_revocations(&self) -> Option<&Arc<redis::revocations::RedisRevocations>> {
        self.redis_revocations.as_ref()
    }

    /// Replace the use-window store (a Redis-backed one, built in `app.rs`).
    pub fn with_use_windows(mut self, use_windows: UseWindows) -> Shared {
        self.use_windows = use_windows;
        self
    }

    /// The rate limits (stage 4); reloads update their quotas.
    pub fn admission(&self) -> &AnyAdmission {
        &self.admission
    }

    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    pub fn delegations(&self) -> &Arc<Delegations> {
        &self.delegations
    }

    /// The use-window store (stage 2, for tokens with `idle`).
    pub fn use_windows(&self) -> &UseWindows {
        &self.use_windows
    }

    /// Now, in Unix seconds, on the clock tokens are judged by.
    pub fn token_now(&self) -> u64 {
        crate::civil_time::unix_secs(self.token_clock.now())
    }

    pub fn saml(&self) -> Option<&Arc<SamlState>> {
        self.saml.as_ref()
    }
}
