//! Why an admin-listener request was refused, and the one place the admin listener chooses status
//! codes: [`AdminError`] for the `/admin/*` API (JSON bodies), [`ProbeError`] for `/healthz`,
//! `/readyz` and `/metrics` (text bodies). Both matches are exhaustive; a new variant must pick
//! its status here.
//!
//! Clients get fixed texts (a 401 is one body whatever the cause); the typed cause of a 5xx is
//! logged once, with its chain, by the router.

use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

use crate::config::ConfigErrors;
use crate::config::defaults::ADMIN_BODY_MAX_BYTES;
use crate::identity::revocation::RevocationError;
use crate::reload::lists::ListsError;
use crate::reload::{ChangeError, ReloadError};
use crate::server::tls::TlsError;
use crate::telemetry::ErrorChain;
use crate::web::{ResponseBody, full_response};

use super::text;

/// Why an `/admin/*` request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No such route, or no `[admin] token` configured (then no `/admin/` route exists).
    #[error("not found")]
    NotFound,
    #[error("unauthorized")]
    Unauthorized,
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("request body larger than {} KiB", ADMIN_BODY_MAX_BYTES / 1024)]
    BodyTooLarge,
    #[error("reading the request body")]
    BodyRead,
    #[error("{0}")]
    Invalid(#[from] ListsError),
    /// A revocation body of the wrong form; the text says which forms are taken.
    #[error("{0}")]
    InvalidRevocation(&'static str),
    #[error("the gateway was started without --config; there is no file to reload")]
    NoConfigFile,
    #[error("the config file is invalid; the previous configuration stays in force")]
    ConfigInvalid(ConfigErrors),
    /// The certificate or key files cannot be used; the body says why (paths and parse errors,
    /// never key bytes).
    #[error("the TLS certificate or key cannot be used; the previous one stays in force")]
    TlsInvalid(#[source] TlsError),
    #[error("the change could not be applied; the previous configuration stays in force")]
    ChangeFailed(#[source] ChangeError),
    #[error("the change could not be applied; the previous configuration stays in force")]
    ReloadFailed(#[source] ReloadError),
    #[error("the revocation could not be persisted")]
    NotPersisted(#[source] RevocationError),
    #[error("the revocation store is unavailable")]
    StoreUnavailable(#[source] RevocationError),
    #[error("the answer could not be encoded")]
    Encoding(#[source] serde_json::Error),
    /// A cache route while the gateway runs without a cache.
    #[error("the cache is off: the gateway was started without [cache] in its config")]
    CacheOff,
    /// A cache request body of the wrong form; the text says what is wrong and what is taken.
    #[error("{0}")]
    InvalidCache(String),
    #[error("no source named {0:?}")]
    UnknownSource(String),
    #[error(
        "source {0:?} signs with each user's SAML session credentials; the gateway has no \
         authority of its own to prewarm it"
    )]
    PrewarmSaml(String),
    #[error("source {0:?} is not cached (cache = false)")]
    SourceNotCached(String),
    #[error(
        "more than {limit} objects under the prefix; prewarm a narrower prefix or a list of keys"
    )]
    PrefixTooBroad { limit: usize },
    /// Listing a prefix failed at the store; the body names the kind only.
    #[error("listing the source failed ({})", .0.kind())]
    ListFailed(#[source] crate::backend::BackendError),
    #[error("{running} prewarm jobs are running already; retry when one has finished")]
    PrewarmBusy { running: usize },
    #[error("no such prewarm job (only the most recent jobs are kept)")]
    NoSuchJob,
    /// `GET /admin/cluster` while the gateway runs without `[redis]`.
    #[error("no cluster: the gateway was started without [redis] in its config")]
    ClusterOff,
    #[error("the cluster table is unavailable (Redis does not answer)")]
    ClusterUnavailable(#[source] crate::state::redis::RedisFault),
}

impl AdminError {
    /// Status codes of the `/admin/*` API.
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::NotFound => StatusCode::NOT_FOUND,
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::BodyRead | AdminError::Invalid(_) | AdminError::InvalidRevocation(_) => {
                StatusCode::BAD_REQUEST
            }
            AdminError::InvalidCache(_)
            | AdminError::UnknownSource(_)
            | AdminError::PrewarmSaml(_)
            | AdminError::SourceNotCached(_)
            | AdminError::PrefixTooBroad { .. } => StatusCode::BAD_REQUEST,
            AdminError::NoSuchJob => StatusCode::NOT_FOUND,
            AdminError::NoConfigFile | AdminError::CacheOff => StatusCode::CONFLICT,
            AdminError::PrewarmBusy { .. } => StatusCode::TOO_MANY_REQUESTS,
            AdminError::ListFailed(_) => StatusCode::BAD_GATEWAY,
            AdminError::ConfigInvalid(_) | AdminError::TlsInvalid(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            // `[redis]`: the shared record did not answer; nothing changed, retry later.
            AdminError::ChangeFailed(ChangeError::Shared(_))
            | AdminError::NotPersisted(RevocationError::Shared(_))
            | AdminError::ClusterUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::ChangeFailed(ChangeError::Conflict) => StatusCode::CONFLICT,
            AdminError::ClusterOff => StatusCode::CONFLICT,
            AdminError::ChangeFailed(_)
            | AdminError::ReloadFailed(_)
            | AdminError::NotPersisted(_)
            | AdminError::StoreUnavailable(_)
            | AdminError::Encoding(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body the admin sees. 401 is one fixed body whatever the cause.
    pub fn body(&self) -> String {
        let value = match self {
            AdminError::ConfigInvalid(errors) => serde_json::json!({
                "error": self.to_string(),
                "details": errors.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
            AdminError::TlsInvalid(why) => serde_json::json!({
                "error": self.to_string(),
                "details": [ErrorChain(why).to_string()],
            }),
            other => serde_json::json!({ "error": other.to_string() }),
        };
        format!("{value}\n")
    }

    /// The whole response: status, JSON body, and the headers a status requires.
    pub fn response(&self) -> Response<ResponseBody> {
        let mut resp = api_json(self.status(), self.body());
        let headers = resp.headers_mut();
        match self {
            AdminError::Unauthorized => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            AdminError::MethodNotAllowed { allow } => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            // Spelled out so a new variant must decide its headers here.
            AdminError::NotFound
            | AdminError::BodyTooLarge
            | AdminError::BodyRead
            | AdminError::Invalid(_)
            | AdminError::InvalidRevocation(_)
            | AdminError::NoConfigFile
            | AdminError::ConfigInvalid(_)
            | AdminError::TlsInvalid(_)
            | AdminError::ChangeFailed(_)
            | AdminError::ReloadFailed(_)
            | AdminError::NotPersisted(_)
            | AdminError::StoreUnavailable(_)
            | AdminError::Encoding(_)
            | AdminError::CacheOff
            | AdminError::InvalidCache(_)
            | AdminError::UnknownSource(_)
            | AdminError::PrewarmSaml(_)
            | AdminError::SourceNotCached(_)
            | AdminError::PrefixTooBroad { .. }
            | AdminError::ListFailed(_)
            | AdminError::PrewarmBusy { .. }
            | AdminError::NoSuchJob
            | AdminError::ClusterOff
            | AdminError::ClusterUnavailable(_) => {}
        }
        resp
    }
}

/// Why `/healthz`, `/readyz` or `/metrics` (or an unknown path beside them) did not answer 200.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The sources that did not answer (names only).
    #[error("not ready: {}", .0.join(", "))]
    NotReady(Vec<String>),
    #[error("metrics encoding failed")]
    Metrics(#[source] std::fmt::Error),
}

impl ProbeError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProbeError::NotFound => StatusCode::NOT_FOUND,
            ProbeError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProbeError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProbeError::Metrics(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The text response: the message on one line.
    pub fn response(&self) -> Response<ResponseBody> {
        let mut resp = text(self.status(), format!("{self}\n"));
        match self {
            ProbeError::MethodNotAllowed => {
                resp.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            ProbeError::NotFound | ProbeError::NotReady(_) | ProbeError::Metrics(_) => {}
        }
        resp
    }
}

/// A JSON response of the admin API: never cached.
pub fn api_json(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ResponseBody> {
    let mut resp = full_response(status, body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The refusal keeps its typed cause for the log's chain; the body renders it for the admin.
    #[test]
    fn a_refused_certificate_keeps_its_typed_cause_and_the_body_says_why() {
        let path = std::path::PathBuf::from("/etc/bucketgate/tls/cert.pem");
        let err = AdminError::TlsInvalid(TlsError::NoCert { path: path.clone() });
        let cause = std::error::Error::source(&err).unwrap();
        assert!(matches!(
            cause.downcast_ref::<TlsError>(),
            Some(TlsError::NoCert { path: p }) if *p == path
        ));
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body: serde_json::Value = serde_json::from_str(&err.body()).unwrap();
        assert_eq!(body["error"], err.to_string());
        assert_eq!(
            body["details"][0],
            "/etc/bucketgate/tls/cert.pem holds no certificate"
        );
    }

    #[test]
    fn a_refusal_carries_the_headers_its_status_requires() {
        let resp = AdminError::Unauthorized.response();
        assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Bearer");
        let resp = AdminError::MethodNotAllowed { allow: "GET, POST" }.response();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[ALLOW], "GET, POST");
        assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
    }

    #[test]
    fn probe_bodies_are_one_text_line() {
        let err = ProbeError::NotReady(vec!["a".into(), "b".into()]);
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(format!("{err}\n"), "not ready: a, b\n");
    }
}
