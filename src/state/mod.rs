//! The one home of long-lived state: what outlives config snapshots and is shared by every
//! request, every reload and the admin API. [`Shared`] is built once, in `app.rs`, and held
//! (as one `Arc<Shared>`) by the pipeline; reloads and the admin API reach it through the
//! pipeline.
//!
//! It holds:
//! - admission: the rate-limit counters ([`admission`]), so a reload does not give every client
//!   a fresh burst;
//! - revocations: the revocation list every rebuilt identity checks;
//! - delegations: the delegated roles' cached credentials, so a reload makes no new STS call;
//! - SAML state: sessions, the replay cache and the login-cookie key, so a reload keeps
//!   everyone signed in;
//! - the object cache ([`crate::cache::Cache`]), when `[cache]` was configured at start; later
//!   the image and video job tables too.
//!
//! Each part is a store behind its own type; where a part may later be kept outside the process
//! (Redis), its store is an async trait with an in-memory implementation (see each part).
//! This module builds nothing from config and decides nothing about requests.

pub mod admission;

use std::sync::Arc;

use crate::credentials::Delegations;
use crate::identity::revocation::Revocations;
use crate::saml::sp::SamlState;
use admission::{Admission, AnyAdmission};

/// Everything long-lived, built once per process (see the module doc).
pub struct Shared {
    admission: AnyAdmission,
    revocations: Arc<Revocations>,
    delegations: Arc<Delegations>,
    /// `None`: no SAML at all (benches that drive the pipeline directly); a gateway always has
    /// one, whether or not `[saml]` is configured now, so a reload can add it.
    saml: Option<Arc<SamlState>>,
    /// `None`: no `[cache]` at start (reads go to the origin).
    cache: Option<Arc<crate::cache::Cache>>,
}

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
            saml: None,
            cache: None,
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

    /// The object cache, if `[cache]` was configured at start.
    pub fn cache(&self) -> Option<&Arc<crate::cache::Cache>> {
        self.cache.as_ref()
    }

    /// Keep SAML sessions in `state`.
    pub fn with_saml(mut self, state: Arc<SamlState>) -> Shared {
        self.saml = Some(state);
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

    pub fn saml(&self) -> Option<&Arc<SamlState>> {
        self.saml.as_ref()
    }
}
