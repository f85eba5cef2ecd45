//! Object storage backends: a local directory (`fs`) and S3 or an S3-compatible store (`s3`).
//!
//! A backend answers two questions about a key: what is it ([`ObjectMeta`]) and what are its bytes
//! (a stream of frames, optionally for one byte range). It knows nothing of HTTP requests, tokens,
//! caching or status codes; it reports what went wrong as a [`BackendError`] and `error.rs` picks
//! the status. A store that evaluates ranges and conditions itself (S3) gets what the client asked
//! for as an [`Ask`], so that one request to it can answer one client request; the pipeline's
//! decider ([`Want`]) still has the last word on what is sent.

pub mod fs;
pub mod s3;

use std::fmt;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::Stream;

use crate::credentials::UserCredentials;

/// What the gateway needs to know about a stored object before sending it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Total size in bytes.
    pub size: u64,
    /// Strong entity tag, with its quotes (`"abc"`), as HTTP sends it.
    pub etag: Option<String>,
    /// Last modification time, whole seconds (HTTP dates have no finer resolution).
    pub last_modified: Option<SystemTime>,
    /// The stored content type, unfiltered; the response stage decides what is safe to send.
    pub content_type: Option<String>,
}

/// An inclusive byte range `start..=end`, already validated against the object size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range (never zero: `start <= end`).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }
}

/// The body of an object: frames of bytes. An `Err` item means the body is incomplete and the
/// response must be aborted, never finished as if complete.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, BackendError>> + Send + 'static>>;

/// An object opened for reading: the metadata it was opened under and its (possibly ranged) body.
pub struct ObjectBody {
    pub meta: ObjectMeta,
    pub body: BodyStream,
}

impl fmt::Debug for ObjectBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBody")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// On whose behalf a read is made: a parameter of every [`Backend`] read. Sources with
/// `credentials = "saml"` sign with the user's session credentials and refuse
/// [`Caller::Gateway`]; every other source signs with its own and ignores the caller.
///
/// [`Caller::partition`] is the authority a read was made under: a cache of reads (a
/// `Cached<B: Backend>`) keys on the source and the partition, so what one user's credentials
/// could read is never served to a caller with other authority.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// No user credentials (a token-authenticated request, a readiness check).
    Gateway,
    /// A SAML session's STS credentials and the assumed-role ARN they carry.
    User(UserCredentials<'a>),
}

impl<'a> Caller<'a> {
    /// The authority partition: `None` for the gateway's own authority (the source's
    /// credentials, the same for every caller), else the user's assumed-role ARN as STS
    /// returned it.
    pub fn partition(&self) -> Option<&'a str> {
        match self {
            Caller::Gateway => None,
            Caller::User(user) => Some(user.role_arn),
        }
    }
}

/// An owned [`Caller`], for work that outlives the request that asked for it (a cache fill
/// other requests wait on, whose leader may leave). Never printed with its secret.
#[derive(Clone)]
pub enum OwnedCaller {
    Gateway,
    User {
        credentials: aws_credential_types::Credentials,
        role_arn: std::sync::Arc<str>,
    },
}

impl OwnedCaller {
    pub fn of(caller: &Caller<'_>) -> OwnedCaller {
        match caller {
            Caller::Gateway => OwnedCaller::Gateway,
            Caller::User(user) => OwnedCaller::User {
                credentials: user.credentials.clone(),
                role_arn: user.role_arn.into(),
            },
        }
    }

    pub fn as_caller(&self) -> Caller<'_> {
        match self {
            OwnedCaller::Gateway => Caller::Gateway,
            OwnedCaller::User {
                credentials,
                role_arn,
            } => Caller::User(UserCredentials {
                credentials,
                role_arn,
            }),
        }
    }
}

impl fmt::Debug for OwnedCaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_caller().fmt(f)
    }
}

/// What to read once the metadata is known: the pipeline's decision (RFC 9110 preconditions,
/// `If-Range`, `Range`) for an object with that metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Only the metadata (HEAD, 412, 416).
    Meta,
    /// Only the validators: the client's copy is current (304). Decided from `etag` and
    /// `last_modified` alone, so a store's not-modified answer, which carries no size, can be
    /// checked against it.
    NotModified,
    /// The body, whole or one range of it.
    Body(Option<ByteRange>),
}

/// A `Range` the client sent, before it meets an object size (RFC 9110, 14.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=a-b`
    FromTo(u64, u64),
    /// `bytes=a-`
    From(u64),
    /// `bytes=-n`
    Suffix(u64),
}

/// What the client asked for, in a store's terms: what a backend whose store evaluates ranges and
/// conditions itself puts into its one request (S3: one GetObject with `Range` and the
/// conditions). A hint, never the decision: the backend checks the store's answer against the
/// [`Want`] decider given with it, and asks again where they differ. The pipeline builds it
/// (`range::ask`) in RFC 9110's order: a condition that the order ignores (If-Unmodified-Since
/// beside If-Match, If-Modified-Since beside If-None-Match) is left out, and an entity-tag
/// condition is kept only as one strong tag, the one form every S3-compatible store reads alike.
/// The default asks for the whole object, unconditionally.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ask {
    /// Only the metadata (HEAD): no body, whatever the conditions say.
    pub head_only: bool,
    /// The one range asked for; `None` for no `Range`, several ranges or an unreadable one.
    pub range: Option<RangeSpec>,
    /// `If-Match` as one strong entity tag, with its quotes.
    pub if_match: Option<String>,
    pub if_unmodified_since: Option<SystemTime>,
    /// `If-None-Match` as one strong entity tag, with its quotes.
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<SystemTime>,
}

/// The result of [`Backend::open`].
#[derive(Debug)]
pub enum Opened {
    /// No body: HEAD, 412, 416, or 304. After [`Want::NotModified`] only the validators (`etag`,
    /// `last_modified`) are known: a store's not-modified answer has no size or type, so `size`
    /// may be 0 and `content_type` `None`.
    Meta(ObjectMeta),
    Object {
        object: ObjectBody,
        part: Option<ByteRange>,
    },
}

/// Why a backend could not answer. Each variant is a different thing for the client to learn,
/// so `error.rs` can map them exhaustively.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("object not found")]
    NotFound,
    /// The key names something that is not a regular object (a directory in an fs source).
    #[error("not a regular object")]
    NotAnObject,
    /// The store refused our credentials for this key, or a `saml` source was asked to read
    /// without a user's credentials.
    #[error("access denied by the store")]
    AccessDenied,
    /// The store refused the gateway's own credentials or configuration: a wrong secret or key
    /// id, a wrong region, a malformed or expired token the gateway sent, a skewed clock, an
    /// account or bucket the source cannot use. The requesting user can do nothing about it;
    /// the operator must fix the source. `code` is the store's error code, one of a fixed list
    /// (never text the store chose).
    #[error("the store refused the gateway's own credentials or configuration ({code})")]
    ConfigFault { code: &'static str },
    /// STS refused the gateway's `AssumeRole` of a delegated-role source's role: the gateway's
    /// own base credentials (`[sts] credentials` or the default chain), or the role's settings on
    /// either side (its ARN, the ExternalId, the role's trust policy, the session length), are
    /// wrong. No user takes part in that call, so it is never a refusal of the requesting user;
    /// the operator must fix it, and a retry soon will not help. `code` is STS's error code
    /// reduced to a short identifier (`None` if it sent none); `role_arn` is the configured role.
    #[error("STS refused the gateway's AssumeRole of {role_arn} ({})", code.as_deref().unwrap_or("no error code"))]
    RoleConfigFault {
        role_arn: String,
        code: Option<String>,
    },
    /// A delegated-role source has no valid credentials (STS failed and the cached ones
    /// expired). Never answered by falling back to other credentials.
    #[error("no valid credentials for the source; retry after {retry_after:?}")]
    CredentialsUnavailable { retry_after: Duration },
    /// The object changed between `head` and `get` (ETag no longer matches).
    #[error("object changed while being read")]
    Changed,
    /// Could not connect to the store, or the store answered with a server error.
    #[error("store unreachable")]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store sent no response headers within the first-byte timeout.
    #[error("store did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The body stream stalled past the idle timeout.
    #[error("store body stalled for {0:?}")]
    Stalled(std::time::Duration),
    /// The body ended early, or the connection broke mid-body.
    #[error("store body broke off")]
    BodyBroken(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Local I/O failure (fs sources).
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    /// The store answered something we cannot use (bad header, unexpected status).
    #[error("unusable answer from the store: {0}")]
    Protocol(String),
}

impl From<crate::credentials::DelegatedError> for BackendError {
    fn from(e: crate::credentials::DelegatedError) -> Self {
        use crate::credentials::DelegatedError;
        match e {
            DelegatedError::RoleConfigFault { role_arn, code } => {
                BackendError::RoleConfigFault { role_arn, code }
            }
            DelegatedError::Unavailable { retry_after } => {
                BackendError::CredentialsUnavailable { retry_after }
            }
        }
    }
}

impl BackendError {
    /// Whether an identical call may succeed if tried again (nothing was sent to the client yet).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BackendError::Unreachable(_) | BackendError::Timeout(_) | BackendError::Changed
        )
    }

    /// A copy of this error for every request that waited on the same shared read (its sources
    /// as text: they are not `Clone`).
    pub fn share(&self) -> BackendError {
        use BackendError as B;
        match self {
            B::NotFound => B::NotFound,
            B::NotAnObject => B::NotAnObject,
            B::AccessDenied => B::AccessDenied,
            B::ConfigFault { code } => B::ConfigFault { code },
            B::RoleConfigFault { role_arn, code } => B::RoleConfigFault {
                role_arn: role_arn.clone(),
                code: code.clone(),
            },
            B::CredentialsUnavailable { retry_after } => B::CredentialsUnavailable {
                retry_after: *retry_after,
            },
            B::Changed => B::Changed,
            B::Unreachable(e) => B::Unreachable(e.to_string().into()),
            B::Timeout(d) => B::Timeout(*d),
            B::Stalled(d) => B::Stalled(*d),
            B::BodyBroken(e) => B::BodyBroken(e.to_string().into()),
            B::Io(io) => B::Io(std::io::Error::new(io.kind(), io.to_string())),
            B::Protocol(s) => B::Protocol(s.clone()),
        }
    }

    /// Short machine label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::NotFound => "not_found",
            BackendError::NotAnObject => "not_an_object",
            BackendError::AccessDenied => "access_denied",
            BackendError::ConfigFault { .. } | BackendError::RoleConfigFault { .. } => {
                "config_fault"
            }
            BackendError::CredentialsUnavailable { .. } => "credentials_unavailable",
            BackendError::Changed => "changed",
            BackendError::Unreachable(_) => "unreachable",
            BackendError::Timeout(_) => "timeout",
            BackendError::Stalled(_) => "stalled",
            BackendError::BodyBroken(_) => "body_broken",
            BackendError::Io(_) => "io",
            BackendError::Protocol(_) => "protocol",
        }
    }
}

/// A storage backend. `key` is the decoded, validated object key (never contains `.`/`..`
/// segments or control characters); the backend maps it to its own namespace. Every read is
/// made on behalf of a [`Caller`], whose credentials it signs with where the source asks for them.
pub trait Backend: Send + Sync {
    /// Metadata of `key`.
    fn head(
        &self,
        key: &str,
        caller: Caller<'_>,
    ) -> impl Future<Output = Result<ObjectMeta, BackendError>> + Send;

    /// Open `key` for reading, the whole object or one range of it. `expect` is the metadata the
    /// caller decided on; if the object no longer matches it, return [`BackendError::Changed`]
    /// so that ranges from two versions are never mixed.
    fn get(
        &self,
        key: &str,
        range: Option<ByteRange>,
        expect: &ObjectMeta,
        caller: Caller<'_>,
    ) -> impl Future<Output = Result<ObjectBody, BackendError>> + Send;

    /// Whether the backend is reachable and usable with the gateway's own authority (for
    /// `/readyz`).
    fn ready(&self) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// The keys of the objects under `prefix` (a plain string prefix of the key, not
    /// necessarily a whole folder), with the gateway's own authority (admin prewarm): at most
    /// `limit` of them, and whether more exist. A store that cannot list answers
    /// [`BackendError::Protocol`].
    fn list(
        &self,
        prefix: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Listing, BackendError>> + Send {
        let _ = (prefix, limit);
        async { Err(BackendError::Protocol("this source cannot list".to_owned())) }
    }

    /// Metadata, then whatever `want` asks for once it has seen the metadata, in as few round
    /// trips as the store allows (the fs backend does it in one blocking call; S3 in one request,
    /// carrying `ask`), on behalf of `caller`. What is sent is always what `want` decides for the
    /// metadata the answer was read under; `ask` only lets a store do the deciding in the same
    /// request, and may be ignored. `want` may be called more than once (a backend that checks a
    /// store's answer against it, then asks again). Every wait on a store ends by `deadline`
    /// (else [`BackendError::Timeout`]): one first-byte budget the pipeline sets once per
    /// request, however many calls it takes. A backend that does not wait on a store (fs) may
    /// ignore it.
    fn open<F>(
        &self,
        key: &str,
        _ask: &Ask,
        want: F,
        caller: Caller<'_>,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<Opened, BackendError>> + Send
    where
        F: Fn(&ObjectMeta) -> Want + Send + Sync + 'static,
    {
        async move {
            let budget = deadline.saturating_duration_since(tokio::time::Instant::now());
            let calls = async {
                let meta = self.head(key, caller).await?;
                match want(&meta) {
                    Want::Meta | Want::NotModified => Ok(Opened::Meta(meta)),
                    Want::Body(part) => {
                        let object = self.get(key, part, &meta, caller).await?;
                        Ok(Opened::Object { object, part })
                    }
                }
            };
            tokio::time::timeout_at(deadline, calls)
                .await
                .unwrap_or(Err(BackendError::Timeout(budget)))
        }
    }
}

/// What [`Backend::list`] found: the keys under a prefix, sorted, at most the limit asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub keys: Vec<String>,
    /// More keys exist under the prefix than the limit allowed: `keys` is not all of them.
    pub truncated: bool,
}

/// A configured source: one of the backend kinds, dispatched without dynamic allocation.
pub enum AnyBackend {
    Fs(fs::FsBackend),
    S3(s3::S3Backend),
}

impl AnyBackend {
    /// The fs source, when this is one (video hands its files to ffmpeg by path).
    pub fn as_fs(&self) -> Option<&fs::FsBackend> {
        match self {
            AnyBackend::Fs(b) => Some(b),
            AnyBackend::S3(_) => None,
        }
    }
}

impl Backend for AnyBackend {
    async fn head(&self, key: &str, caller: Caller<'_>) -> Result<ObjectMeta, BackendError> {
        match self {
            AnyBackend::Fs(b) => b.head(key, caller).await,
            AnyBackend::S3(b) => b.head(key, caller).await,
        }
    }

    async fn get(
        &self,
        key: &str,
        range: Option<ByteRange>,
        expect: &ObjectMeta,
        caller: Caller<'_>,
    ) -> Result<ObjectBody, BackendError> {
        match self {
            AnyBackend::Fs(b) => b.get(key, range, expect, caller).await,
            AnyBackend::S3(b) => b.get(key, range, expect, caller).await,
        }
    }

    async fn ready(&self) -> Result<(), BackendError> {
        match self {
            AnyBackend::Fs(b) => b.ready().await,
            AnyBackend::S3(b) => b.ready().await,
        }
    }

    async fn open<F>(
        &self,
        key: &str,
        ask: &Ask,
        want: F,
        caller: Caller<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<Opened, BackendError>
    where
        F: Fn(&ObjectMeta) -> Want + Send + Sync + 'static,
    {
        match self {
            AnyBackend::Fs(b) => b.open(key, ask, want, caller, deadline).await,
            AnyBackend::S3(b) => b.open(key, ask, want, caller, deadline).await,
        }
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Listing, BackendError> {
        match self {
            AnyBackend::Fs(b) => b.list(prefix, limit).await,
            AnyBackend::S3(b) => b.list(prefix, limit).await,
        }
    }
}
