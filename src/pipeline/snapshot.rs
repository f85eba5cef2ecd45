//! The snapshot: the live parts one config builds (backends, network and access policy, CORS,
//! HSTS, the SAML service provider), built whole by [`build_snapshot`] at start and by every
//! reload, and swapped in at once, so a request never sees two configurations.
//!
//! Builds backend and STS clients from the config; never binds a socket and never holds state
//! that must outlive a reload (that is the [`super::Pipeline`]'s).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::fs::FsBackend;
use crate::backend::s3::S3Backend;
use crate::backend::{AnyBackend, BackendError};
use crate::config::{Config, Limits, S3Credentials, SourceConfig};
use crate::credentials::Delegations;
use crate::identity::revocation::Revocations;
use crate::identity::{Identity, IdentitySetupError};

use super::authorize::{self, Policy};
use super::cors::{self, Cors};
use super::network::{self, NetworkPolicy};
use super::respond;

/// Why a config's snapshot could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("source {name}: cannot open {root}")]
    FsSource {
        name: String,
        root: PathBuf,
        #[source]
        source: BackendError,
    },
    #[error("source {name}: cannot build the S3 client")]
    S3Source {
        name: String,
        #[source]
        source: BackendError,
    },
    #[error("setting up token verification")]
    Identity(#[from] IdentitySetupError),
}

/// The live parts built from one config snapshot by [`build_snapshot`]. A request loads the current
/// snapshot once and uses it for every stage, so a reload never splits a request across two
/// configurations.
pub struct Snapshot {
    /// Shared with the cache's fills, which outlive the request (and may outlive the snapshot).
    pub(super) sources: HashMap<String, Arc<AnyBackend>>,
    /// Sources written `cache = false`: read from the origin even when `[cache]` is on.
    pub(super) cache_bypass: std::collections::BTreeSet<String>,
    pub(super) limits: Limits,
    pub(super) network: network::NetworkPolicy,
    pub(super) cors: cors::Cors,
    /// `None`: no `[identity]`, every object request is 401 (fail closed).
    pub(super) identity: Option<Arc<crate::identity::Identity>>,
    pub(super) policy: authorize::Policy,
    /// `None`: no `[saml]`; the `/auth/` routes are 404 and session cookies are not read.
    pub(super) saml: Option<Arc<crate::saml::sp::ServiceProvider>>,
    /// `Strict-Transport-Security` on every response (`[listener] hsts_*`).
    pub(super) hsts: http::HeaderValue,
    /// `[images]`: whether the IIIF routes answer, their public URL and the limits of a job.
    pub(super) images: Images,
    /// `[video]`: whether the video routes answer and the limits of a job.
    pub(super) video: Video,
}

/// What one snapshot says of derived images (`[images]`, applied on reload).
#[derive(Debug, Clone)]
pub struct Images {
    pub enabled: bool,
    pub base_url: Option<String>,
    pub limits: crate::image::ImageLimits,
}

impl Default for Images {
    fn default() -> Images {
        Images::from(&crate::config::ImagesConfig::default())
    }
}

impl From<&crate::config::ImagesConfig> for Images {
    fn from(c: &crate::config::ImagesConfig) -> Images {
        Images {
            enabled: c.enabled,
            base_url: c.base_url.clone(),
            limits: crate::image::ImageLimits::from_config(c),
        }
    }
}

/// What one snapshot says of derived video (`[video]` `enabled` and the limits, applied on
/// reload; the tools and the job slots are `state::Shared`'s, built at start).
#[derive(Debug, Clone)]
pub struct Video {
    pub enabled: bool,
    pub limits: crate::video::VideoLimits,
}

impl Default for Video {
    fn default() -> Video {
        Video::from(&crate::config::VideoConfig::default())
    }
}

impl From<&crate::config::VideoConfig> for Video {
    fn from(c: &crate::config::VideoConfig) -> Video {
        Video {
            enabled: c.enabled,
            limits: crate::video::VideoLimits::from_config(c),
        }
    }
}

impl Snapshot {
    pub fn new(
        sources: HashMap<String, AnyBackend>,
        limits: Limits,
        network: network::NetworkPolicy,
    ) -> Snapshot {
        Snapshot {
            sources: sources
                .into_iter()
                .map(|(name, backend)| (name, Arc::new(backend)))
                .collect(),
            cache_bypass: std::collections::BTreeSet::new(),
            limits,
            network,
            cors: cors::Cors::disabled(),
            identity: None,
            policy: authorize::Policy::default(),
            saml: None,
            hsts: respond::hsts_value(&crate::config::HstsConfig::default()),
            images: Images::default(),
            video: Video::default(),
        }
    }

    /// Serve derived images as `[images]` says (default: on, with the default limits).
    pub fn with_images(mut self, images: &crate::config::ImagesConfig) -> Snapshot {
        self.images = Images::from(images);
        self
    }

    /// Whether the `/v/` routes answer (`[video] enabled`).
    pub fn video_enabled(&self) -> bool {
        self.video.enabled
    }

    /// Serve derived video as `[video]` says (default: on, with the default limits).
    pub fn with_video(mut self, video: &crate::config::VideoConfig) -> Snapshot {
        self.video = Video::from(video);
        self
    }

    /// Send `Strict-Transport-Security` as `config` says (default: one year, no
    /// `includeSubDomains`, no `preload`).
    pub fn with_hsts(mut self, config: &crate::config::HstsConfig) -> Snapshot {
        self.hsts = respond::hsts_value(config);
        self
    }

    /// Serve the SAML service provider of `[saml]` (default: none). Sessions outlive snapshots
    /// (they are the pipeline's); what a new session may become is this snapshot's.
    pub fn with_saml(mut self, saml: Option<Arc<crate::saml::sp::ServiceProvider>>) -> Snapshot {
        self.saml = saml;
        self
    }

    /// Verify tokens with `identity` and decide with `policy` (default: no identity, so every
    /// object request is refused with 401). Part of the snapshot, so a reload that drops a key
    /// revokes its tokens at once.
    pub fn with_access(
        mut self,
        identity: Option<Arc<crate::identity::Identity>>,
        policy: authorize::Policy,
    ) -> Snapshot {
        self.identity = identity;
        self.policy = policy;
        self
    }

    /// Read the sources in `bypass` from the origin, never through the cache (`cache = false`).
    pub fn with_cache_bypass(mut self, bypass: std::collections::BTreeSet<String>) -> Snapshot {
        self.cache_bypass = bypass;
        self
    }

    /// Whether reads of `source` may go through the cache (it is not written `cache = false`).
    pub fn caches(&self, source: &str) -> bool {
        !self.cache_bypass.contains(source)
    }

    /// Answer CORS for the configured origins (default: none).
    pub fn with_cors(mut self, cors: cors::Cors) -> Snapshot {
        self.cors = cors;
        self
    }

    /// The compiled network policy (stage 1, and the PROXY protocol peers for the listener).
    pub fn network(&self) -> &network::NetworkPolicy {
        &self.network
    }

    pub fn sources(&self) -> impl Iterator<Item = (&String, &Arc<AnyBackend>)> {
        self.sources.iter()
    }

    /// The backend of the source `name` (the admin API's prewarm reads through it).
    pub fn source(&self, name: &str) -> Option<&Arc<AnyBackend>> {
        self.sources.get(name)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// Build every live part a request needs from a config. Used at start and by every reload, so a
/// reload validates exactly what a start would.
pub async fn build_snapshot(
    config: &Config,
    revocations: &Arc<Revocations>,
    delegations: &Arc<Delegations>,
) -> Result<Snapshot, SnapshotError> {
    let mut sources = HashMap::new();
    for (name, source) in &config.sources {
        let backend = match source {
            SourceConfig::Fs(fs) => AnyBackend::Fs(FsBackend::new(&fs.root).map_err(|source| {
                SnapshotError::FsSource {
                    name: name.clone(),
                    root: fs.root.clone(),
                    source,
                }
            })?),
            SourceConfig::S3(s3) => {
                // A delegated role's cache outlives the snapshot (see `Delegations`).
                let delegated = match &s3.credentials {
                    S3Credentials::AssumeRole(role) => Some(delegations.get(&config.sts, role)),
                    _ => None,
                };
                AnyBackend::S3(
                    S3Backend::with_delegated(s3, &config.limits, delegated)
                        .await
                        .map_err(|source| SnapshotError::S3Source {
                            name: name.clone(),
                            source,
                        })?,
                )
            }
        };
        sources.insert(name.clone(), backend);
    }
    // The JWKS is fetched once here; a failure is logged and retried on an unknown kid.
    let identity = match &config.identity {
        Some(ic) => {
            let identity = Identity::new(ic, Arc::clone(revocations))?;
            identity.load_jwks().await;
            Some(Arc::new(identity))
        }
        None => {
            tracing::warn!("no [identity] in the config: every object request is refused (401)");
            None
        }
    };
    Ok(Snapshot::new(
        sources,
        config.limits.clone(),
        NetworkPolicy::compile(&config.network),
    )
    .with_access(
        identity,
        Policy::new(config.roles.clone(), config.projects.clone()),
    )
    .with_cache_bypass(
        config
            .cache
            .as_ref()
            .map(|c| c.bypass.clone())
            .unwrap_or_default(),
    )
    .with_cors(Cors::new(&config.cors))
    .with_images(&config.images)
    .with_video(&config.video)
    .with_hsts(&config.listener.hsts)
    .with_saml(config.saml.as_ref().map(|saml| {
        Arc::new(crate::saml::sp::ServiceProvider::new(
            saml,
            &config.roles,
            &config.projects,
            crate::credentials::sts::StsClient::new(&config.sts),
        ))
    })))
}
