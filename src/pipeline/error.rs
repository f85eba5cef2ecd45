//! The request path's error type and the one place that chooses its HTTP status codes and the
//! headers that depend on the error (`Allow`, `WWW-Authenticate`, `Retry-After`, ...).
//!
//! Each variant carries its typed cause; the client gets a short fixed message (never the cause
//! chain, an upstream body or a secret), the log gets the whole chain, once ([`log`]). Lower
//! modules (identity, saml, backend) define their own error types and never name this one.

use http::header::{ALLOW, CONTENT_RANGE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::backend::BackendError;
use crate::identity::IdentityError;
use crate::image::ImageError;
use crate::pipeline::admit::RateLimited;
use crate::pipeline::authorize::AuthzError;
use crate::pipeline::network::{NetworkError, RuleRef};
use crate::pipeline::plan::PlanError;
use crate::pipeline::request::RequestError;
use crate::saml::session::SessionError;
use crate::saml::sp::{SIGN_IN_AGAIN, SpError};
use crate::telemetry::ErrorChain;
use crate::video::VideoError;

/// The one body text of every 403, whatever refused the request.
pub const FORBIDDEN: &str = "forbidden";
/// The body text of a 401 for a token that was good until its `exp` (or whose use window
/// lapsed): the one identity refusal a client is told apart, so a labeling app can re-sign.
pub const TOKEN_EXPIRED: &str = "token_expired";
/// The body text of every other 401 for a token.
pub const UNAUTHORIZED: &str = "unauthorized";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Stage 0: not a valid HTTP request (its authority or body framing).
    #[error("invalid request")]
    Request(#[from] RequestError),
    /// Stage 1 could not tell who the client is (a malformed forwarded header).
    #[error("bad request")]
    Network(#[from] NetworkError),
    /// The network policy refused the client address.
    #[error("network policy refused the client: {rule}")]
    NetworkDenied { rule: RuleRef },
    #[error("bad request")]
    Plan(#[from] PlanError),
    /// Stage 2. Every cause is one 401 with one body, except a token in two places (400), an
    /// expired token (401 `token_expired`) and a use-window store that cannot answer (503):
    /// see [`IdentityAnswer`].
    #[error("unauthorized")]
    Identity(#[source] IdentityError),
    /// Stage 3. Every cause is one 403 with one body.
    #[error("forbidden")]
    Forbidden(#[source] AuthzError),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("CORS preflight from an origin that is not in cors.allowed_origins")]
    CorsOriginNotAllowed,
    #[error("request body on a read-only route")]
    BodyNotAllowed,
    /// An h2 stream or chunked body left open on a read-only route, not ended in time.
    #[error("request body on a read-only route did not end in time")]
    BodyTimeout,
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("range not satisfiable for an object of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("too many requests")]
    RateLimited(#[from] RateLimited),
    /// The `/auth/` routes (SAML login, ACS, session, logout).
    #[error("saml")]
    Saml(#[source] SpError),
    #[error("source {source_name}")]
    Backend {
        source_name: String,
        #[source]
        error: BackendError,
    },
    /// A derived image could not be described or rendered (a failed read of the object is
    /// [`Error::Backend`], see [`Error::image`]).
    #[error("image from source {source_name}")]
    Image {
        source_name: String,
        #[source]
        error: ImageError,
    },
    /// A video could not be described or rendered (a failed read of the object is
    /// [`Error::Backend`], see [`Error::video`]).
    #[error("video from source {source_name}")]
    Video {
        source_name: String,
        #[source]
        error: VideoError,
    },
    /// Building our own response failed (a header value we made is invalid): our fault, never
    /// counted as an upstream one.
    #[error("building the response")]
    Internal(#[source] http::Error),
}

impl Error {
    /// An image job's error: a failed read of the object is the backend's (its own statuses and
    /// upstream metrics), anything else [`Error::Image`].
    pub fn image(source_name: &str, error: ImageError) -> Error {
        match error {
            ImageError::Source(error) => Error::Backend {
                source_name: source_name.to_owned(),
                error,
            },
            error => Error::Image {
                source_name: source_name.to_owned(),
                error,
            },
        }
    }

    /// A video job's error: a failed read of the object is the backend's (its own statuses and
    /// upstream metrics), anything else [`Error::Video`].
    pub fn video(source_name: &str, error: VideoError) -> Error {
        match error {
            VideoError::Source(error) => Error::Backend {
                source_name: source_name.to_owned(),
                // Shared between the requests of one job: the one that led may hold the only
                // reference, the others see a copy of its kind.
                error: std::sync::Arc::try_unwrap(error).unwrap_or_else(|e| e.share()),
            },
            error => Error::Video {
                source_name: source_name.to_owned(),
                error,
            },
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::Request(e) => e.status(),
            Error::Network(e) => match e {
                NetworkError::MalformedForwarded(_) | NetworkError::AmbiguousForwarded => {
                    StatusCode::BAD_REQUEST
                }
            },
            Error::NetworkDenied { .. } => StatusCode::FORBIDDEN,
            Error::Plan(e) => match e {
                PlanError::NoRoute | PlanError::UnknownSource => StatusCode::NOT_FOUND,
                PlanError::EmptyKey
                | PlanError::BadPercentEncoding
                | PlanError::InvalidUtf8
                | PlanError::ControlCharacter
                | PlanError::DotSegment
                | PlanError::KeyTooLong
                | PlanError::UnknownParameter
                | PlanError::RepeatedParameter
                | PlanError::IiifParameter { .. }
                | PlanError::VideoParameter { .. } => StatusCode::BAD_REQUEST,
            },
            // Every identity failure but these is the same 401, by design (fail closed).
            Error::Identity(e) => match identity_answer(e) {
                IdentityAnswer::Ambiguous => StatusCode::BAD_REQUEST,
                IdentityAnswer::Expired | IdentityAnswer::Refused => StatusCode::UNAUTHORIZED,
                IdentityAnswer::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            },
            Error::Saml(e) => saml_status(e),
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::CorsOriginNotAllowed => StatusCode::FORBIDDEN,
            Error::BodyNotAllowed => StatusCode::PAYLOAD_TOO_LARGE,
            Error::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Error::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Error::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Backend { error, .. } => match error {
                BackendError::NotFound | BackendError::NotAnObject => StatusCode::NOT_FOUND,
                BackendError::AccessDenied => StatusCode::FORBIDDEN,
                BackendError::CredentialsUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
                // Still changing after every retry: the client may try again.
                BackendError::Changed => StatusCode::SERVICE_UNAVAILABLE,
                // The gateway's own credentials or settings are wrong: a fault upstream of the
                // client, never a refusal of the requesting user.
                BackendError::ConfigFault { .. }
                | BackendError::RoleConfigFault { .. }
                | BackendError::Unreachable(_)
                | BackendError::BodyBroken(_)
                | BackendError::Protocol(_) => StatusCode::BAD_GATEWAY,
                BackendError::Timeout(_) | BackendError::Stalled(_) => StatusCode::GATEWAY_TIMEOUT,
                BackendError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Error::Image { error, .. } => match error {
                ImageError::BadParameter { .. } => StatusCode::BAD_REQUEST,
                ImageError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                ImageError::Unsupported => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ImageError::Corrupt(_) => StatusCode::UNPROCESSABLE_ENTITY,
                ImageError::Busy | ImageError::TimedOut => StatusCode::SERVICE_UNAVAILABLE,
                // Built as `Error::Backend` by `Error::image`; a read that failed regardless.
                ImageError::Source(_) => StatusCode::BAD_GATEWAY,
            },
            Error::Video { error, .. } => match error {
                VideoError::BadParameter { .. } => StatusCode::BAD_REQUEST,
                VideoError::NoSuchPart(_) => StatusCode::NOT_FOUND,
                VideoError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                VideoError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                VideoError::Corrupt(_) => StatusCode::UNPROCESSABLE_ENTITY,
                VideoError::Busy | VideoError::TimedOut | VideoError::Unavailable(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                // Built as `Error::Backend` by `Error::video`; a read that failed regardless.
                VideoError::Source(_) => StatusCode::BAD_GATEWAY,
            },
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The headers this error's answer carries besides the body's own, chosen beside
    /// [`Error::status`] and as exhaustively.
    pub fn headers(&self, h: &mut HeaderMap) {
        match self {
            Error::MethodNotAllowed => {
                h.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            Error::Saml(e) => match e {
                SpError::MethodNotAllowed { allow } => {
                    h.insert(ALLOW, HeaderValue::from_static(allow));
                }
                SpError::NotConfigured
                | SpError::NoRoute
                | SpError::UnknownParameter
                | SpError::Repeated
                | SpError::BadEncoding
                | SpError::BodyNotAllowed
                | SpError::NotAForm
                | SpError::NoResponse
                | SpError::BodyTooLarge
                | SpError::BodyRead
                | SpError::BodyTimeout
                | SpError::Response(_)
                | SpError::Replayed
                | SpError::SharedStateUnavailable
                | SpError::SessionOver
                | SpError::NoUsableRole
                | SpError::SeveralRoles
                | SpError::StsRefused
                | SpError::StsConfigFault { .. }
                | SpError::StsUnavailable
                | SpError::StsTimeout
                | SpError::StsProtocol
                | SpError::Session(_)
                | SpError::Request(_)
                | SpError::ValidationAborted => {}
            },
            Error::Identity(e) => match identity_answer(e) {
                IdentityAnswer::Ambiguous | IdentityAnswer::Unavailable => {}
                // RFC 6750 section 3.1: an expired token is `invalid_token`.
                IdentityAnswer::Expired => {
                    h.insert(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_static(
                            "Bearer error=\"invalid_token\", error_description=\"expired\"",
                        ),
                    );
                }
                IdentityAnswer::Refused => {
                    h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
            },
            Error::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    h.insert(CONTENT_RANGE, v);
                }
            }
            Error::RateLimited(limited) => {
                h.insert(RETRY_AFTER, HeaderValue::from(limited.retry_after_secs()));
            }
            Error::Image { error, .. } => match error {
                // The queue drains in about a job's time; a second is a fair first retry.
                ImageError::Busy => {
                    h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
                }
                ImageError::BadParameter { .. }
                | ImageError::TooLarge(_)
                | ImageError::Unsupported
                | ImageError::Corrupt(_)
                | ImageError::TimedOut
                | ImageError::Source(_) => {}
            },
            Error::Video { error, .. } => match error {
                // As for images: the queue drains in about a job's time.
                VideoError::Busy => {
                    h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
                }
                VideoError::BadParameter { .. }
                | VideoError::NoSuchPart(_)
                | VideoError::TooLarge(_)
                | VideoError::Unsupported(_)
                | VideoError::Corrupt(_)
                | VideoError::TimedOut
                | VideoError::Unavailable(_)
                | VideoError::Source(_) => {}
            },
            Error::Backend { error, .. } => match error {
                BackendError::CredentialsUnavailable { retry_after } => {
                    // Whole seconds, rounded up, at least 1 (as for rate limits).
                    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                    h.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
                }
                BackendError::NotFound
                | BackendError::NotAnObject
                | BackendError::AccessDenied
                | BackendError::Changed
                | BackendError::ConfigFault { .. }
                | BackendError::RoleConfigFault { .. }
                | BackendError::Unreachable(_)
                | BackendError::BodyBroken(_)
                | BackendError::Protocol(_)
                | BackendError::Timeout(_)
                | BackendError::Stalled(_)
                | BackendError::Io(_) => {}
            },
            Error::Request(_)
            | Error::Network(_)
            | Error::NetworkDenied { .. }
            | Error::Plan(_)
            | Error::Forbidden(_)
            | Error::CorsOriginNotAllowed
            | Error::BodyNotAllowed
            | Error::BodyTimeout
            | Error::PreconditionFailed
            | Error::Internal(_) => {}
        }
    }

    /// The short text the client sees: fixed strings, and for a video the gateway's own short
    /// texts (a parameter's problem, a limit exceeded, the missing tool), never a cause chain,
    /// ffmpeg's output or a path.
    pub fn client_message(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Error::Plan(PlanError::VideoParameter { param, why }) => {
                format!("invalid {param}: {why}").into()
            }
            Error::Video { error, .. } => match error {
                VideoError::BadParameter { .. }
                | VideoError::NoSuchPart(_)
                | VideoError::TooLarge(_)
                | VideoError::Unsupported(_)
                | VideoError::Unavailable(_) => error.to_string().into(),
                VideoError::Corrupt(_) => "video cannot be processed".into(),
                VideoError::Busy => "video workers are busy, try again".into(),
                VideoError::TimedOut => "video job took too long, try again".into(),
                VideoError::Source(_) => "storage backend failed".into(),
            },
            other => other.fixed_message().into(),
        }
    }

    /// The fixed text of every error but a video's.
    fn fixed_message(&self) -> &'static str {
        match self {
            Error::Request(e) => e.client_message(),
            Error::Network(e) => match e {
                NetworkError::MalformedForwarded(_) | NetworkError::AmbiguousForwarded => {
                    "malformed forwarded header"
                }
            },
            // The same text as every other 403: a client learns nothing about the rules.
            Error::NetworkDenied { .. } => FORBIDDEN,
            Error::Plan(e) => match e {
                PlanError::NoRoute | PlanError::UnknownSource => "not found",
                PlanError::EmptyKey => "missing object key",
                PlanError::BadPercentEncoding => "malformed percent-encoding in the path",
                PlanError::InvalidUtf8 => "object key is not valid UTF-8",
                PlanError::ControlCharacter => "object key contains a control character",
                PlanError::DotSegment => "object key contains a '.' or '..' segment",
                PlanError::KeyTooLong => "object key is longer than 1024 bytes",
                PlanError::UnknownParameter => "unknown query parameter",
                PlanError::RepeatedParameter => "repeated query parameter",
                PlanError::IiifParameter { param, .. } => iiif_parameter_message(param),
                PlanError::VideoParameter { .. } => "invalid video request",
            },
            Error::Identity(IdentityError::AmbiguousToken) => {
                "token given in more than one place (Authorization, cookie, token=)"
            }
            Error::Identity(IdentityError::SessionExpired) => SIGN_IN_AGAIN,
            Error::Identity(IdentityError::SessionStoreUnavailable) => {
                "sessions unavailable, try again later"
            }
            Error::Identity(IdentityError::WindowStore(
                crate::identity::use_window::UseWindowError::Unavailable,
            )) => "signed URL state unavailable, try again later",
            Error::Saml(e) => saml_message(e),
            Error::Identity(e) => match identity_answer(e) {
                IdentityAnswer::Expired => TOKEN_EXPIRED,
                IdentityAnswer::Unavailable => "too many active signed URLs, try again later",
                IdentityAnswer::Ambiguous | IdentityAnswer::Refused => UNAUTHORIZED,
            },
            Error::Forbidden(_) => "forbidden",
            Error::MethodNotAllowed => "method not allowed",
            Error::CorsOriginNotAllowed => "forbidden",
            Error::BodyNotAllowed => "request bodies are not accepted",
            Error::BodyTimeout => "request body did not end",
            Error::PreconditionFailed => "precondition failed",
            Error::RangeNotSatisfiable { .. } => "range not satisfiable",
            Error::RateLimited(_) => "too many requests",
            Error::Backend { error, .. } => match error {
                BackendError::NotFound | BackendError::NotAnObject => "not found",
                BackendError::AccessDenied => FORBIDDEN,
                BackendError::CredentialsUnavailable { .. } => {
                    "storage credentials unavailable, try again later"
                }
                BackendError::Changed => "object is changing, try again",
                BackendError::ConfigFault { .. }
                | BackendError::RoleConfigFault { .. }
                | BackendError::Unreachable(_)
                | BackendError::BodyBroken(_)
                | BackendError::Protocol(_) => "storage backend failed",
                BackendError::Timeout(_) | BackendError::Stalled(_) => "storage backend timed out",
                BackendError::Io(_) => "internal error",
            },
            Error::Image { error, .. } => match error {
                ImageError::BadParameter { param, .. } => iiif_parameter_message(param),
                ImageError::TooLarge(_) => "image is over the size limits",
                ImageError::Unsupported => "unsupported image format",
                ImageError::Corrupt(_) => "image cannot be decoded",
                ImageError::Busy => "image workers are busy, try again",
                ImageError::TimedOut => "image took too long, try again",
                ImageError::Source(_) => "storage backend failed",
            },
            Error::Video { .. } => "video cannot be processed",
            Error::Internal(_) => "internal error",
        }
    }

    /// Whether the connection must close after this answer (HTTP/1.1 `Connection: close`): the
    /// request's body was refused unread or half read, so the bytes after its head cannot be
    /// trusted to start the next request (RFC 9112 section 6.1, 9.6).
    pub fn closes_connection(&self) -> bool {
        match self {
            Error::Request(e) => e.closes_connection(),
            Error::BodyNotAllowed | Error::BodyTimeout => true,
            Error::Saml(e) => matches!(
                e,
                SpError::BodyNotAllowed
                    | SpError::BodyTooLarge
                    | SpError::BodyTimeout
                    | SpError::BodyRead
            ),
            Error::Network(_)
            | Error::NetworkDenied { .. }
            | Error::Plan(_)
            | Error::Identity(_)
            | Error::Forbidden(_)
            | Error::MethodNotAllowed
            | Error::CorsOriginNotAllowed
            | Error::PreconditionFailed
            | Error::RangeNotSatisfiable { .. }
            | Error::RateLimited(_)
            | Error::Backend { .. }
            | Error::Image { .. }
            | Error::Video { .. }
            | Error::Internal(_) => false,
        }
    }

    /// Whether this is worth a warning in the log (a fault on our side or upstream), rather than
    /// an ordinary client mistake.
    pub fn is_server_fault(&self) -> bool {
        self.status().is_server_error()
    }
}

/// Log a request's error once, as what it is: a configuration fault the operator must fix (the
/// source or role it concerns and the store's or STS's code, never a credential), a server or
/// upstream fault (a warning with the whole chain), or an ordinary refusal (debug).
pub fn log(err: &Error) {
    match err {
        Error::Backend {
            source_name,
            error: BackendError::ConfigFault { code },
        } => {
            tracing::warn!(
                source = %source_name,
                s3_error_code = code,
                "configuration fault: the store refused the gateway's own \
                 credentials or settings for this source"
            );
        }
        Error::Backend {
            source_name,
            error: BackendError::RoleConfigFault { role_arn, code },
        } => {
            // Never the ExternalId or a credential: the role ARN and STS's code.
            tracing::warn!(
                source = %source_name,
                sts_error_code = code.as_deref().unwrap_or("none"),
                role_arn = %role_arn,
                "configuration fault: STS refused the gateway's AssumeRole of this \
                 source's role (the gateway's own credentials or the role's settings)"
            );
        }
        Error::Saml(SpError::StsConfigFault { code, role_arn }) => {
            tracing::warn!(
                sts_error_code = code,
                role_arn = %role_arn,
                "configuration fault: STS refused the gateway's own \
                 AssumeRoleWithSAML request (the [sts] settings), not the user"
            );
        }
        _ if err.is_server_fault() => {
            tracing::warn!(error = %ErrorChain(err), "request failed");
        }
        _ => {
            tracing::debug!(error = %ErrorChain(err), "request refused");
        }
    }
}

/// The 400 text for a bad IIIF parameter: which one, and its accepted forms (fixed text: the
/// parser's own explanation, which may quote the request, goes to the log only).
fn iiif_parameter_message(param: &str) -> &'static str {
    match param {
        "region" => "invalid region: use full, square, x,y,w,h or pct:x,y,w,h within the image",
        "size" => {
            "invalid size: use max, w,, ,h, pct:n, w,h or !w,h within the region and \
             maxWidth/maxArea (^ to upscale)"
        }
        "rotation" => "invalid rotation: use 0, 90, 180 or 270, ! to mirror",
        "quality" => "invalid quality: use default, color, gray or bitonal",
        "format" => "invalid format: use jpg, png or webp",
        _ => "invalid IIIF request",
    }
}

/// Statuses of the `/auth/` routes: SAML format errors 400, every validation failure 401, STS
/// refusing the user 403, STS down 503, slow 504, STS refusing the gateway's own request 502.
fn saml_status(e: &SpError) -> StatusCode {
    match e {
        SpError::NotConfigured | SpError::NoRoute => StatusCode::NOT_FOUND,
        SpError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        SpError::UnknownParameter
        | SpError::Repeated
        | SpError::BadEncoding
        | SpError::NotAForm
        | SpError::NoResponse
        | SpError::BodyRead => StatusCode::BAD_REQUEST,
        SpError::Response(e) if e.is_client_format_error() => StatusCode::BAD_REQUEST,
        SpError::BodyNotAllowed | SpError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        SpError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        SpError::Response(_) | SpError::Replayed | SpError::SessionOver => StatusCode::UNAUTHORIZED,
        SpError::NoUsableRole | SpError::SeveralRoles | SpError::StsRefused => {
            StatusCode::FORBIDDEN
        }
        SpError::StsUnavailable | SpError::SharedStateUnavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        SpError::StsTimeout => StatusCode::GATEWAY_TIMEOUT,
        // The gateway's own STS settings are wrong: not a refusal of the user (issue 11).
        SpError::StsProtocol | SpError::StsConfigFault { .. } => StatusCode::BAD_GATEWAY,
        SpError::Session(e) => match e {
            SessionError::Unknown | SessionError::Expired => StatusCode::UNAUTHORIZED,
            SessionError::Full | SessionError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            SessionError::Random => StatusCode::INTERNAL_SERVER_ERROR,
        },
        // A panic inside the XML library can only come from the client's document: refused as
        // malformed input, never a 500.
        SpError::ValidationAborted => StatusCode::BAD_REQUEST,
        SpError::Request(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// One text per status class, so a client learns nothing about which check refused it.
fn saml_message(e: &SpError) -> &'static str {
    match e {
        SpError::NotConfigured | SpError::NoRoute => "not found",
        SpError::MethodNotAllowed { .. } => "method not allowed",
        SpError::UnknownParameter => "unknown query parameter",
        SpError::Repeated => "repeated query parameter or form field",
        SpError::BadEncoding => "malformed percent-encoding",
        SpError::NotAForm | SpError::NoResponse | SpError::BodyRead => {
            "expected a form with a SAMLResponse field"
        }
        SpError::Response(e) if e.is_client_format_error() => "malformed SAML response",
        SpError::ValidationAborted => "malformed SAML response",
        SpError::BodyNotAllowed => "request bodies are not accepted",
        SpError::BodyTooLarge => "SAML response too large",
        SpError::BodyTimeout => "request body not sent in time",
        SpError::Response(_) | SpError::Replayed | SpError::SessionOver => {
            "SAML login refused; sign in again at /auth/saml/login"
        }
        SpError::NoUsableRole | SpError::SeveralRoles | SpError::StsRefused => FORBIDDEN,
        SpError::StsUnavailable => "sign-in service unavailable, try again",
        SpError::SharedStateUnavailable => "sign-in unavailable, try again later",
        SpError::StsTimeout => "sign-in service timed out, try again",
        SpError::StsProtocol | SpError::StsConfigFault { .. } => "sign-in service failed",
        SpError::Session(e) => match e {
            SessionError::Unknown | SessionError::Expired => SIGN_IN_AGAIN,
            SessionError::Full => "too many sessions, try again later",
            SessionError::Unavailable => "sessions unavailable, try again later",
            SessionError::Random => "internal error",
        },
        SpError::Request(_) => "internal error",
    }
}

impl RequestError {
    /// Statuses of stage 0, on the data and admin listeners alike.
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::MissingHost
            | RequestError::RepeatedHost
            | RequestError::InvalidHost
            | RequestError::InvalidAuthority
            | RequestError::UserInfo
            | RequestError::MissingAuthority
            | RequestError::AuthorityMismatch
            | RequestError::RepeatedChunked => StatusCode::BAD_REQUEST,
            // RFC 9112 section 6.1: a transfer coding the server does not understand.
            RequestError::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
        }
    }

    pub fn client_message(&self) -> &'static str {
        match self {
            RequestError::MissingHost => "missing Host header",
            RequestError::RepeatedHost => "more than one Host header",
            RequestError::InvalidHost => "invalid Host header",
            RequestError::InvalidAuthority => "invalid request authority",
            RequestError::UserInfo => "userinfo is not allowed in the request authority",
            RequestError::MissingAuthority => "missing :authority",
            RequestError::AuthorityMismatch => "Host header does not match :authority",
            RequestError::RepeatedChunked => "chunked transfer coding applied more than once",
            RequestError::UnsupportedTransferCoding => "transfer coding not implemented",
        }
    }

    /// A refused body framing leaves the connection's next bytes unknowable; a bad authority
    /// does not.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            RequestError::UnsupportedTransferCoding | RequestError::RepeatedChunked
        )
    }
}

/// The answers an identity refusal may get; everything else about it is for the log and audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdentityAnswer {
    /// Two tokens: the client's malformed request (400, no challenge).
    Ambiguous,
    /// 401 `token_expired` with `error="invalid_token"`: the token verified (known key, good
    /// signature, right `aud`/`iss`, well-formed claims, started) and only its `exp` (or its use
    /// window) is over. Telling this apart lets an app re-sign and retry, and tells a holder
    /// nothing the token's own `exp` does not; it is decided only after the signature verifies,
    /// so a forger cannot use it as an oracle.
    Expired,
    /// The use-window store cannot record a first use (full, or later unreachable): 503.
    Unavailable,
    /// The one generic 401 of every other cause. A bad signature, an unknown `kid` or a wrong
    /// `aud` would each tell a forger which part to change; `Revoked` would tell a thief the
    /// token was noticed; a use window bound to another address would tell a thief that the
    /// window is live (and bound) somewhere; `nbf` in the future is rare enough to need no name.
    Refused,
}

/// The answer of each identity refusal. Exhaustive, so a new identity error decides here which
/// answer it gets (and with it, its status, body and `WWW-Authenticate`).
fn identity_answer(e: &IdentityError) -> IdentityAnswer {
    match e {
        IdentityError::AmbiguousToken => IdentityAnswer::Ambiguous,
        IdentityError::Expired | IdentityError::WindowLapsed(_) => IdentityAnswer::Expired,
        IdentityError::WindowStore(_) | IdentityError::SessionStoreUnavailable => {
            IdentityAnswer::Unavailable
        }
        IdentityError::NotConfigured
        | IdentityError::Missing
        | IdentityError::NotBearer
        | IdentityError::TooLong
        | IdentityError::Malformed(_)
        | IdentityError::MissingKid
        | IdentityError::CriticalHeader
        | IdentityError::UnknownKid
        | IdentityError::AlgorithmMismatch
        | IdentityError::Rejected(_)
        | IdentityError::NoExpiry
        | IdentityError::NotYetValid
        | IdentityError::BadClaims(_)
        | IdentityError::Revoked
        | IdentityError::WindowElsewhere
        | IdentityError::SessionExpired => IdentityAnswer::Refused,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap; src/ may not
mod tests {
    use super::*;
    use crate::saml::response::SamlError;

    /// The status and client text a refusal gets.
    fn answer(e: &Error) -> (StatusCode, &'static str) {
        (e.status(), e.fixed_message())
    }

    #[test]
    fn video_errors_get_their_statuses_and_short_messages() {
        let v = |error| Error::video("s", error);
        let cases = [
            (
                VideoError::BadParameter {
                    param: "t",
                    why: "bad".into(),
                },
                400,
            ),
            (
                VideoError::NoSuchPart("frame 400 is past the end".into()),
                404,
            ),
            (VideoError::TooLarge("too long".into()), 413),
            (VideoError::Unsupported("codec".into()), 415),
            (VideoError::Corrupt("ffmpeg said: /secret/path".into()), 422),
            (VideoError::Busy, 503),
            (VideoError::TimedOut, 503),
            (VideoError::Unavailable("ffmpeg not found".into()), 503),
        ];
        for (error, status) in cases {
            let e = v(error);
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            assert!(!e.client_message().contains("/secret"), "{e:?}");
            let mut h = HeaderMap::new();
            e.headers(&mut h);
            assert_eq!(
                h.contains_key(RETRY_AFTER),
                matches!(
                    e,
                    Error::Video {
                        error: VideoError::Busy,
                        ..
                    }
                )
            );
        }
        let e = v(VideoError::Source(std::sync::Arc::new(
            BackendError::NotFound,
        )));
        assert!(matches!(e, Error::Backend { .. }));
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            v(VideoError::Unavailable(
                "video processing is unavailable: ffmpeg not found".into()
            ))
            .client_message(),
            "video processing is unavailable: ffmpeg not found"
        );
    }

    /// Issue 16: an expired token says `token_expired` (so an app re-signs); a bad signature,
    /// an unknown kid, a revoked token and a window bound elsewhere get the one generic 401.
    #[test]
    fn only_an_expiry_is_told_apart_from_the_generic_401() {
        use crate::identity::use_window::Lapse;
        let rejected = Error::Identity(IdentityError::Rejected(
            jsonwebtoken::errors::ErrorKind::InvalidSignature.into(),
        ));
        let generic = answer(&rejected);
        assert_eq!(generic, (StatusCode::UNAUTHORIZED, UNAUTHORIZED));
        for e in [
            IdentityError::UnknownKid,
            IdentityError::Revoked,
            IdentityError::WindowElsewhere,
            IdentityError::NotYetValid,
            IdentityError::BadClaims("scope"),
        ] {
            assert_eq!(answer(&Error::Identity(e)), generic);
        }
        for e in [
            IdentityError::Expired,
            IdentityError::WindowLapsed(Lapse::Idle),
            IdentityError::WindowLapsed(Lapse::Max),
        ] {
            let e = Error::Identity(e);
            assert_eq!(answer(&e), (StatusCode::UNAUTHORIZED, TOKEN_EXPIRED));
            let mut h = HeaderMap::new();
            e.headers(&mut h);
            assert_eq!(
                h[WWW_AUTHENTICATE],
                "Bearer error=\"invalid_token\", error_description=\"expired\""
            );
        }
        let full = Error::Identity(IdentityError::WindowStore(
            crate::identity::use_window::UseWindowError::Full(1),
        ));
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn issue_11_response_refusals_are_audited_and_answered_like_the_others() {
        let answer = |e: SamlError| {
            let sp = SpError::Response(e);
            let label = sp.label();
            let e = Error::Saml(sp);
            (label, e.status(), e.client_message())
        };
        let expired = answer(SamlError::Expired);
        assert_eq!(expired.0, "saml response");
        assert_eq!(expired.1, StatusCode::UNAUTHORIZED);
        for e in [
            SamlError::NotOneConfirmation,
            SamlError::IssuedInFuture,
            SamlError::TooOld,
        ] {
            assert_eq!(answer(e), expired);
        }
    }

    #[test]
    fn a_response_we_fail_to_build_is_500_and_no_upstream_fault() {
        let bad = http::Response::builder()
            .header("x", "a\nb")
            .body(())
            .unwrap_err();
        let e = Error::Internal(bad);
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.client_message(), "internal error");
        assert!(!e.closes_connection());
        let mut h = HeaderMap::new();
        e.headers(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn error_headers_are_chosen_with_the_status() {
        let headers = |e: Error| {
            let mut h = HeaderMap::new();
            e.headers(&mut h);
            h
        };
        assert_eq!(headers(Error::MethodNotAllowed)[ALLOW], "GET, HEAD");
        assert_eq!(
            headers(Error::Identity(IdentityError::Missing))[WWW_AUTHENTICATE],
            "Bearer"
        );
        assert!(headers(Error::Identity(IdentityError::AmbiguousToken)).is_empty());
        assert_eq!(
            headers(Error::RangeNotSatisfiable { size: 7 })[CONTENT_RANGE],
            "bytes */7"
        );
        assert!(headers(Error::Forbidden(AuthzError::Scope)).is_empty());
    }
}
