//! Stage 4, admit: rate limits keyed by client address and subject -> [`Admitted`].
//!
//! The limiters and their counters are long-lived state: they live in
//! [`crate::state::admission`] (held by [`crate::state::Shared`], so a reload does not give every
//! client a fresh burst); this stage only asks that store and turns its yes into [`Admitted`].

use std::net::IpAddr;

pub use crate::state::admission::{
    Admission, AdmitClock, AdmitKey, AnyAdmission, LimitKind, RateLimited,
};
use crate::telemetry::Metrics;

use crate::pipeline::authorize::Grant;
use crate::pipeline::network::ClientIp;

/// Proof that a request passed stage 4, holding what was admitted (a [`Grant`] for object
/// requests, nothing for the `/auth/` routes). Built only by [`admit`] and [`admit_grant`].
#[derive(Debug)]
pub struct Admitted<T = ()>(T);

impl<T> Admitted<T> {
    pub fn get(&self) -> &T {
        &self.0
    }
    pub fn into_inner(self) -> T {
        self.0
    }
}

/// Stage 4 for an object request: count it against the client address and the grant's subject
/// (refusals counted in the metrics), and hand the grant on admitted.
pub async fn admit_grant<'p, T>(
    admission: &AnyAdmission,
    client: ClientIp,
    grant: Grant<'p, T>,
    metrics: &Metrics,
) -> Result<Admitted<Grant<'p, T>>, RateLimited> {
    let Admitted(()) = admit(
        admission,
        client.addr(),
        Some(grant.principal().subject()),
        metrics,
    )
    .await?;
    Ok(Admitted(grant))
}

/// Stage 4: count this request against the client address and, when there is one, the subject
/// (both must have room), counting a refusal in the metrics. An async call to the store.
pub async fn admit(
    admission: &AnyAdmission,
    client: IpAddr,
    subject: Option<&str>,
    metrics: &Metrics,
) -> Result<Admitted, RateLimited> {
    admission
        .admit_counted(client, subject, metrics)
        .await
        .map(|()| Admitted(()))
}
