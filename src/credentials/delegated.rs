//! Delegated access: one gateway-wide role (`AssumeRole` with an ExternalId), its credentials
//! cached and refreshed ahead of expiry.
//!
//! The rules, in the order [`DelegatedCredentials::credentials`] applies them:
//! - fresh credentials (before `refresh_at`) are returned at once: a lock-free load;
//! - in the refresh window (`refresh_at..valid_until`) ONE caller refreshes (a `try_lock` on the
//!   refresh mutex); every other caller keeps using the still-valid credentials without waiting;
//!   if the refresh fails, the valid credentials keep serving and the failure is logged;
//! - without valid credentials, callers queue on the refresh mutex: the first one calls STS, the
//!   others take its result (new credentials, or the failure: they do not call STS again);
//! - after a failed attempt STS is not called again for `retry_after`, and a caller with nothing
//!   valid gets the failure: [`DelegatedError::Unavailable`] when STS was unreachable, failing,
//!   throttling or slow, [`DelegatedError::RoleConfigFault`] when STS refused the call (the
//!   backend turns them into its own errors, which the pipeline answers with 503 and
//!   `Retry-After`, and 502 without it).
//!
//! A refused `AssumeRole` is always a configuration fault, never a refusal of a user: no user
//! takes part in the call. Either the gateway's own base credentials are wrong (a wrong secret
//! or key id, an expired token) or the role's settings are, on either side (the role ARN, the
//! ExternalId, the role's trust policy, the session length). It is logged once per failing
//! request by the pipeline (source, STS code, role ARN), or here at warn when the still-valid
//! credentials keep serving. A configuration fault is retried after the same back-off, so a
//! fix on the role's side (no reload) is picked up.
//!
//! Never a fallback to other (broader) credentials: no credentials means no request.
//!
//! Time comes from the injected [`Clock`]. STS states an absolute expiry on the wall clock; it
//! is turned into a lifetime when the answer arrives (`Expiration - SystemTime::now()`, capped at
//! the requested duration) and that lifetime is counted on the injected clock from then on. In
//! production both clocks are the system clock; tests move the injected one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use aws_credential_types::Credentials;

use super::Clock;
use super::sts::{StsClient, StsError};
use crate::config::AssumeRoleConfig;
use crate::config::defaults::{DELEGATED_REFRESH_BEFORE_SECS, DELEGATED_RETRY_AFTER_SECS};

/// Why a delegated role has no credentials for a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegatedError {
    /// STS refused the gateway's `AssumeRole` of the role: the gateway's own base credentials
    /// or the role's settings are wrong (see the module doc). `code` is STS's error code reduced
    /// to a short identifier (`None` if it sent none); `role_arn` is the configured role.
    #[error("STS refused the gateway's AssumeRole of {role_arn} ({})", code.as_deref().unwrap_or("no error code"))]
    RoleConfigFault {
        role_arn: String,
        code: Option<String>,
    },
    /// STS failed and the cached credentials expired; STS is not asked again before
    /// `retry_after`.
    #[error("no valid credentials for the source; retry after {retry_after:?}")]
    Unavailable { retry_after: Duration },
}

/// Credentials in the cache, with their deadlines on the injected clock.
#[derive(Debug)]
struct Cached {
    credentials: Credentials,
    refresh_at: SystemTime,
    valid_until: SystemTime,
}

/// What the one refresher leaves for the callers that waited on it.
#[derive(Debug, Default)]
struct RefreshState {
    /// When the last attempt failed, on the injected clock.
    failed_at: Option<SystemTime>,
    /// STS refused the last attempt (a configuration fault): its error code, if it sent one.
    refused: Option<Option<String>>,
}

/// The delegated role's credentials: cached, refreshed by one caller at a time.
#[derive(Debug)]
pub struct DelegatedCredentials {
    sts: StsClient,
    role: AssumeRoleConfig,
    clock: Arc<dyn Clock>,
    refresh_before: Duration,
    retry_after: Duration,
    current: ArcSwapOption<Cached>,
    refresh: tokio::sync::Mutex<RefreshState>,
    /// Finished refresh attempts (successful or not), so a caller that waited can tell that one
    /// ran while it waited.
    attempts: AtomicU64,
}

impl DelegatedCredentials {
    /// Makes no STS call: the first request does.
    pub fn new(sts: StsClient, role: &AssumeRoleConfig, clock: Arc<dyn Clock>) -> Self {
        DelegatedCredentials {
            sts,
            // Half the duration at most, so a short session is not refreshed on every request.
            refresh_before: Duration::from_secs(DELEGATED_REFRESH_BEFORE_SECS)
                .min(role.duration / 2),
            retry_after: Duration::from_secs(DELEGATED_RETRY_AFTER_SECS),
            role: role.clone(),
            clock,
            current: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            attempts: AtomicU64::new(0),
        }
    }

    /// The role's credentials for one request.
    pub async fn credentials(&self) -> Result<Credentials, DelegatedError> {
        let now = self.clock.now();
        let current = self.current.load_full();
        if let Some(c) = &current {
            if now < c.refresh_at {
                return Ok(c.credentials.clone());
            }
            if now < c.valid_until {
                // The refresh window: one caller refreshes, nobody waits for it.
                let Ok(mut state) = self.refresh.try_lock() else {
                    return Ok(c.credentials.clone());
                };
                if self.backing_off(&state, now).is_some() {
                    return Ok(c.credentials.clone());
                }
                // Another caller may have refreshed between our load and our lock.
                if let Some(newer) = self.valid(now)
                    && now < newer.refresh_at
                {
                    return Ok(newer.credentials.clone());
                }
                return match self.refresh_locked(&mut state, now).await {
                    Ok(fresh) => Ok(fresh),
                    Err(e) => {
                        if let Some(code) = &state.refused {
                            // No request fails yet, so the pipeline says nothing: say it here.
                            tracing::warn!(
                                sts_error_code = code.as_deref().unwrap_or("none"),
                                role_arn = %self.role.role_arn,
                                error = %crate::telemetry::ErrorChain(&e),
                                "configuration fault: STS refused the gateway's AssumeRole of a \
                                 delegated role (the gateway's own credentials or the role's \
                                 settings); the cached credentials serve until they expire"
                            );
                        }
                        Ok(c.credentials.clone())
                    }
                };
            }
        }

        // Nothing valid: wait for the refresh in progress, or run it.
        let seen = self.attempts.load(Ordering::Acquire);
        let mut state = self.refresh.lock().await;
        let now = self.clock.now();
        if let Some(c) = self.valid(now) {
            return Ok(c.credentials.clone());
        }
        if self.attempts.load(Ordering::Acquire) != seen {
            // The attempt we waited for failed: share its result instead of calling STS again.
            return Err(self.unavailable(&state, now));
        }
        if self.backing_off(&state, now).is_some() {
            return Err(self.unavailable(&state, now));
        }
        self.refresh_locked(&mut state, now)
            .await
            .map_err(|_| self.unavailable(&state, now))
    }

    /// The cached credentials if still valid at `now`.
    fn valid(&self, now: SystemTime) -> Option<Arc<Cached>> {
        self.current.load_full().filter(|c| now < c.valid_until)
    }

    /// Time left in the back-off after a failed attempt, if any.
    fn backing_off(&self, state: &RefreshState, now: SystemTime) -> Option<Duration> {
        let failed_at = state.failed_at?;
        let until = failed_at + self.retry_after;
        until.duration_since(now).ok().filter(|d| !d.is_zero())
    }

    /// What a caller with nothing valid gets after a failed attempt.
    fn unavailable(&self, state: &RefreshState, now: SystemTime) -> DelegatedError {
        if let Some(code) = &state.refused {
            return DelegatedError::RoleConfigFault {
                role_arn: self.role.role_arn.clone(),
                code: code.clone(),
            };
        }
        let wait = self.backing_off(state, now).unwrap_or(self.retry_after);
        DelegatedError::Unavailable {
            retry_after: wait.max(Duration::from_secs(1)),
        }
    }

    /// Call STS (the caller holds the refresh lock) and store the answer.
    async fn refresh_locked(
        &self,
        state: &mut RefreshState,
        now: SystemTime,
    ) -> Result<Credentials, StsError> {
        let result = self
            .sts
            .assume_role(
                &self.role.role_arn,
                self.role.external_id.as_deref(),
                &self.role.session_name,
                self.role.duration,
            )
            .await;
        // The clock may have moved during the call; deadlines count from the answer.
        let answered = self.clock.now().max(now);
        let outcome = match result {
            Ok(session) => {
                let lifetime = session
                    .expires
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
                    .min(self.role.duration);
                let ahead = self.refresh_before.min(lifetime / 2);
                let valid_until = answered + lifetime;
                let cached = Cached {
                    credentials: session.credentials.clone(),
                    refresh_at: valid_until - ahead,
                    valid_until,
                };
                tracing::debug!(role = %self.role.role_arn, lifetime_secs = lifetime.as_secs(), "delegated credentials refreshed");
                self.current.store(Some(Arc::new(cached)));
                state.failed_at = None;
                state.refused = None;
                Ok(session.credentials)
            }
            Err(e) => {
                state.refused = match &e {
                    StsError::Refused { code } => Some(code.clone()),
                    StsError::ConfigFault { code } => Some(Some((*code).to_owned())),
                    StsError::Unavailable(_) | StsError::Timeout | StsError::Protocol(_) => None,
                };
                // STS errors carry no secrets (see `sts.rs`): the whole chain is logged. A
                // refusal is logged once by whoever reports it (see the module doc).
                if state.refused.is_none() {
                    tracing::warn!(
                        role = %self.role.role_arn,
                        error = %crate::telemetry::ErrorChain(&e),
                        "delegated credentials: STS refresh failed"
                    );
                } else {
                    tracing::debug!(
                        role = %self.role.role_arn,
                        error = %crate::telemetry::ErrorChain(&e),
                        "delegated credentials: STS refused the refresh"
                    );
                }
                state.failed_at = Some(answered);
                Err(e)
            }
        };
        self.attempts.fetch_add(1, Ordering::Release);
        outcome
    }
}

/// The delegated caches of a gateway, shared by its snapshots: a reload that keeps a source's
/// role and `[sts]` settings keeps its cached credentials (no new STS call), and every source
/// with the same role shares one cache. Entries die with the last snapshot that uses them.
pub struct Delegations {
    clock: Arc<dyn Clock>,
    caches: std::sync::Mutex<Vec<(DelegationKey, std::sync::Weak<DelegatedCredentials>)>>,
}

impl std::fmt::Debug for Delegations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delegations").finish_non_exhaustive()
    }
}

/// What makes two delegated caches interchangeable. No `Debug`: it holds a secret.
struct DelegationKey {
    role: AssumeRoleConfig,
    region: String,
    endpoint: Option<String>,
    timeout: Duration,
    /// The gateway's own access key id and secret (compared, never printed).
    keys: Option<(String, crate::config::Secret)>,
}

impl PartialEq for DelegationKey {
    fn eq(&self, other: &Self) -> bool {
        let same_keys = match (&self.keys, &other.keys) {
            (None, None) => true,
            (Some((a, sa)), Some((b, sb))) => a == b && sa.expose() == sb.expose(),
            _ => false,
        };
        same_keys
            && self.role == other.role
            && self.region == other.region
            && self.endpoint == other.endpoint
            && self.timeout == other.timeout
    }
}

impl Delegations {
    pub fn new(clock: Arc<dyn Clock>) -> Delegations {
        Delegations {
            clock,
            caches: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The cache for `role` through STS as configured by `sts`: an existing one if still in use,
    /// else a new one (which makes no STS call until its first request).
    pub fn get(
        &self,
        sts: &crate::config::StsConfig,
        role: &AssumeRoleConfig,
    ) -> Arc<DelegatedCredentials> {
        let key = DelegationKey {
            role: role.clone(),
            region: sts.region.clone(),
            endpoint: sts.endpoint.clone(),
            timeout: sts.timeout,
            keys: sts
                .credentials
                .as_ref()
                .map(|k| (k.access_key_id.clone(), k.secret_access_key.clone())),
        };
        let mut caches = self
            .caches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        caches.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(existing) = caches
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, weak)| weak.upgrade())
        {
            return existing;
        }
        let fresh = Arc::new(DelegatedCredentials::new(
            StsClient::new(sts),
            role,
            Arc::clone(&self.clock),
        ));
        caches.push((key, Arc::downgrade(&fresh)));
        fresh
    }
}
