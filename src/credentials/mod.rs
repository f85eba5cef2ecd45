//! Temporary AWS credentials the gateway obtains from STS: a SAML user's session credentials
//! (`AssumeRoleWithSAML`, one set per signed-in user) and the gateway-wide delegated role
//! (`AssumeRole` with an ExternalId, cached and refreshed ahead of expiry).
//!
//! This module owns the STS client ([`sts`]), the delegated cache ([`delegated`]) and the clock
//! they read. It must not pick HTTP statuses (it reports [`sts::StsError`] or
//! [`DelegatedError`]; the backend maps the latter into its own error) nor import the backend,
//! and nothing it handles (a secret key, a
//! session token, an assertion, an STS message) may reach a log line or an error text.

pub mod delegated;
pub mod sts;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

pub use delegated::{DelegatedCredentials, DelegatedError, Delegations};
pub use sts::{SessionCredentials, StsClient, StsError};

/// A SAML user's session credentials together with the authority they carry: the one value a
/// read on the user's behalf needs (the backend signs with `credentials`; a cache of reads keys
/// on `role_arn`, so two users never share an entry unless STS made them the same principal).
/// Borrowed from the session that holds them; never printed (see its `Debug`).
#[derive(Clone, Copy)]
pub struct UserCredentials<'a> {
    /// Access key, secret, session token and expiry, as STS returned them.
    pub credentials: &'a aws_credential_types::Credentials,
    /// The assumed-role ARN STS returned with them
    /// (`arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`): the authority partition.
    pub role_arn: &'a str,
}

impl fmt::Debug for UserCredentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret or the token; the key id's first characters say enough.
        let prefix: String = self.credentials.access_key_id().chars().take(4).collect();
        f.debug_struct("UserCredentials")
            .field("access_key_id", &format_args!("{prefix}…"))
            .field("role_arn", &self.role_arn)
            .finish()
    }
}

/// Wall-clock time for credential expiry decisions. Injected so tests can move time forward.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<SystemTime>>);

impl ManualClock {
    /// A clock stopped at the current system time.
    pub fn new() -> ManualClock {
        ManualClock(Arc::new(Mutex::new(SystemTime::now())))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }

    pub fn set(&self, to: SystemTime) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The clock every credential cache of a gateway reads (the system clock unless a test injects
/// one through `StartOptions`).
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}
