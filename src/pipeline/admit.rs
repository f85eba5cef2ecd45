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

/// Proof that a request passed stage 4. Built only by [`admit`].
#[derive(Debug)]
pub struct Admitted(());

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
