//! The AWS SDK plumbing every SDK client of the gateway shares (S3 in `backend/s3.rs`, STS in
//! `credentials/sts.rs`): the one HTTP stack (hyper 1 + rustls with ring, never a second TLS
//! stack), the header-block limit on every answer, and the sorting of SDK errors into
//! [`SdkFailure`], which each client then maps to its own error type.
//!
//! It must not pick HTTP statuses or build clients: it knows no source, bucket or role.

use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use crate::config::defaults::UPSTREAM_MAX_HEADER_BYTES;

/// The HTTP client of every AWS SDK client the gateway builds (S3 in
/// `backend/s3.rs`, STS in `credentials/sts.rs`): one stack for the whole process, hyper 1 + rustls with ring.
pub fn sdk_http_client() -> aws_sdk_s3::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Refuses an answer whose header block is larger than [`UPSTREAM_MAX_HEADER_BYTES`] (names and
/// values of every header, summed), before the SDK deserializes it. Installed on every SDK client
/// the gateway builds (S3 in `backend/s3.rs`, STS in
/// `credentials/sts.rs`).
#[derive(Debug, Clone, Copy)]
pub struct HeaderBlockLimit;

impl Intercept for HeaderBlockLimit {
    fn name(&self) -> &'static str {
        "bucketgate::HeaderBlockLimit"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let bytes = context
            .response()
            .headers()
            .iter()
            .fold(0usize, |sum, (name, value)| {
                sum.saturating_add(name.len()).saturating_add(value.len())
            });
        if bytes > UPSTREAM_MAX_HEADER_BYTES {
            return Err(Box::new(HeaderBlockTooLarge { bytes }));
        }
        Ok(())
    }
}

/// An answer's header block was over [`UPSTREAM_MAX_HEADER_BYTES`].
#[derive(Debug, thiserror::Error)]
#[error("answer with a {bytes}-byte header block (at most {UPSTREAM_MAX_HEADER_BYTES})")]
pub struct HeaderBlockTooLarge {
    bytes: usize,
}

/// How an AWS SDK call failed, sorted once for every client the gateway has (S3 and STS); each
/// caller maps the sorts to its own errors.
#[derive(Debug)]
pub enum SdkFailure {
    /// No answer within the timeout of the whole attempt.
    AnswerTimeout,
    /// No connection within the connect timeout.
    ConnectTimeout,
    /// The request could not be sent (the SDK says the fault is the request's).
    NotSent,
    /// io (refused, reset, DNS) and unclassified transport failures.
    Unreachable(Box<dyn std::error::Error + Send + Sync>),
    /// An error answer the SDK parsed: its status and error code.
    Answer {
        status: u16,
        code: Option<String>,
    },
    /// An answer that could not be parsed; the status still tells a server error apart.
    Unparseable {
        status: u16,
    },
    /// An answer refused by [`HeaderBlockLimit`] before it was read.
    HeaderBlockTooLarge,
    /// Request building, which includes loading credentials.
    NotBuilt,
    Unknown,
}

/// Sort an SDK error into an [`SdkFailure`].
pub fn sort_sdk_error<E>(err: SdkError<E>) -> SdkFailure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if caused_by::<HeaderBlockTooLarge>(&err) {
        return SdkFailure::HeaderBlockTooLarge;
    }
    match err {
        SdkError::TimeoutError(_) => SdkFailure::AnswerTimeout,
        SdkError::DispatchFailure(ref failure) => {
            if failure.is_timeout() {
                SdkFailure::ConnectTimeout
            } else if failure.is_user() {
                SdkFailure::NotSent
            } else {
                match err.into_source() {
                    Ok(source) => SdkFailure::Unreachable(source),
                    Err(_) => SdkFailure::Unreachable("dispatch failure".into()),
                }
            }
        }
        SdkError::ServiceError(service) => SdkFailure::Answer {
            status: service.raw().status().as_u16(),
            code: service.err().code().map(str::to_owned),
        },
        SdkError::ResponseError(response) => SdkFailure::Unparseable {
            status: response.raw().status().as_u16(),
        },
        SdkError::ConstructionFailure(_) => SdkFailure::NotBuilt,
        _ => SdkFailure::Unknown,
    }
}

/// Whether `err` or any error in its source chain is a `T`.
fn caused_by<T: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<T>() {
            return true;
        }
        cur = e.source();
    }
    false
}
