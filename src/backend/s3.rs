//! S3 and S3-compatible stores through aws-sdk-s3.
//!
//! This module owns the SDK client of one source: its HTTP stack (our hyper 1 + rustls + ring,
//! never a second TLS stack), its timeouts and retries, the mapping from a gateway key to a bucket
//! key (`prefix + key`, verbatim bytes) and the mapping from SDK errors to [`BackendError`].
//! It must not pick HTTP statuses, log credentials or pass S3 error bodies on.
//!
//! Time limits, and who enforces them:
//! - connect: the SDK connector (`upstream_connect_timeout`);
//! - response headers: `upstream_first_byte_timeout` is ONE budget for the whole wait, retries
//!   included (up to `upstream_max_retries`, safe because nothing has reached the client yet),
//!   not one timeout per attempt: the SDK's operation timeout bounds each call with its retries
//!   and back-off, and [`S3Backend`]'s [`Backend::open`] bounds every call of one request
//!   together (its GET or HEAD, a second call where the store's answer was not the one decided,
//!   a refusal probe), by a deadline the pipeline sets once per request (so starting over after
//!   the object changed shares it too). The operation timeout ends when the SDK hands back
//!   the response head: it never covers reading a GetObject body. Loading a delegated role's
//!   credentials (STS, with its own timeout) happens before the deadline applies;
//! - body: our own per-frame idle timeout (`upstream_idle_timeout`) in [`body_stream`]. The SDK's
//!   stalled-stream protection is turned off so that a stall is reported once, as
//!   [`BackendError::Stalled`], and never retried behind the client's back.
//!
//! An answer whose header block is larger than `UPSTREAM_MAX_HEADER_BYTES` is refused by an
//! interceptor ([`HeaderBlockLimit`]) before the SDK reads it, on every S3 and STS call.
//!
//! Refusals: a store error that says the gateway's own credentials or settings are wrong
//! (`SignatureDoesNotMatch`, `InvalidAccessKeyId`, a wrong region, a skewed clock, ...) is a
//! [`BackendError::ConfigFault`], whoever's credentials signed; `AccessDenied` is a refusal
//! ([`BackendError::AccessDenied`]). An expired token is the gateway's fault for its own
//! credentials and a refusal of the user for a SAML user's. A HEAD answer has no body and so no
//! error code: a refused HEAD is explained by a one-byte ranged GET with the same credentials.
//!
//! Whose credentials sign a request:
//! - `default` / static keys: the client's own provider, for every request;
//! - `assume_role`: the delegated role's cached credentials ([`DelegatedCredentials`]), looked up
//!   per request and set on that request;
//! - `saml`: the requesting user's session credentials ([`Caller::User`]), set on that request; a
//!   request without them is refused with [`BackendError::AccessDenied`], never signed with
//!   anything else.
//!
//! One request to the store per client request ([`Backend::open`]): a GET is one GetObject
//! carrying the client's `Range` and conditions ([`Ask`]), a HEAD one HeadObject. The store's
//! answer is checked against the pipeline's decision for the metadata it came with, and a second
//! call is made only where it cannot answer in one:
//! - 200 or 206 whose part is the one decided: sent. Decided otherwise (`If-Range` named another
//!   version, which GetObject cannot evaluate; a store that clipped a range differently): a second
//!   GET for the decided part, pinned to the first answer's ETag. Decided 304, 412 or 416 (a
//!   condition the store ignored or was not given: a list, a weak tag, `*`): that, from the
//!   answer's metadata, and the body is dropped unread;
//! - 304 with both validators (ETag, Last-Modified), which the pipeline also finds current: sent
//!   as is (a 304 has no size);
//! - a ranged GET answered without `Content-Range` (a store that ignores that form of `Range`;
//!   a 206 without it would look the same, so the answer's length may be the part's): the
//!   decided range by a second GET, kept only if its `Content-Range` names the size the decision
//!   was made with (else as below); decided 304: sent;
//! - 412 and 416 carry no metadata (416 needs the size for `Content-Range: bytes */N`); a 304
//!   the pipeline disagrees with or that lacks a validator (moto's has no Last-Modified): one
//!   HEAD, then as the pipeline decides for its metadata;
//! - `bytes=-0`, which no object satisfies: one HEAD (for the size), no GET.
//!
//! [`Backend::get`] (a cache's chunk fill) is one GetObject with `Range` and `If-Match`.
//!
//! Per-request credentials go through the SDK's per-operation config override, with the
//! identity cache off (the credentials are already in memory; a cache keyed per provider would
//! grow with every request).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::provider_config::ProviderConfig;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, IdentityCache, Region, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::{ByteStream, DateTime};

use super::{
    Ask, Backend, BackendError, BodyStream, ByteRange, Caller, Listing, ObjectBody, ObjectMeta,
    Opened, RangeSpec, Want,
};
use crate::aws::{HeaderBlockLimit, SdkFailure, sdk_http_client, sort_sdk_error};
use crate::config::defaults::{
    RETRY_INITIAL_BACKOFF_MS, RETRY_MAX_BACKOFF_MS, UPSTREAM_MAX_HEADER_BYTES,
};
use crate::config::{Limits, S3Credentials, S3Source};
use crate::credentials::DelegatedCredentials;

/// Who signs this source's requests (see the module doc).
enum Signer {
    /// The client's own credentials provider (default chain or static keys).
    Client,
    /// The delegated role's cached credentials.
    Delegated(Arc<DelegatedCredentials>),
    /// The requesting user's SAML session credentials.
    User,
}

/// Send a fluent request, with `creds` set on this one request when given.
macro_rules! send_as {
    ($request:expr, $creds:expr) => {
        match $creds {
            None => $request.send().await,
            Some(creds) => {
                $request
                    .customize()
                    .config_override(
                        aws_sdk_s3::config::Builder::default()
                            .identity_cache(IdentityCache::no_cache())
                            .credentials_provider(creds),
                    )
                    .send()
                    .await
            }
        }
    };
}

/// One configured S3 source: a client bound to one bucket and key prefix.
pub struct S3Backend {
    client: aws_sdk_s3::Client,
    signer: Signer,
    bucket: String,
    prefix: String,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
}

impl fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Backend")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Backend {
    /// Build the client. Makes no network call: credentials of the default chain are loaded on
    /// first use, so a source whose store is down still starts (and `ready()` says so).
    /// A source with `assume_role` credentials needs [`S3Backend::with_delegated`].
    pub async fn new(cfg: &S3Source, limits: &Limits) -> Result<S3Backend, BackendError> {
        S3Backend::with_delegated(cfg, limits, None).await
    }

    /// [`S3Backend::new`], with the delegated role's credentials for an `assume_role` source.
    pub async fn with_delegated(
        cfg: &S3Source,
        limits: &Limits,
        delegated: Option<Arc<DelegatedCredentials>>,
    ) -> Result<S3Backend, BackendError> {
        let http_client = sdk_http_client();
        let region = Region::new(cfg.region.clone());

        // The first-byte timeout bounds the whole call, retries and back-off included: a store
        // that never answers costs one timeout, not one per attempt. No attempt timeout and no
        // connector read timeout: a second timer would only make the reported cause a race.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(limits.upstream_connect_timeout)
            .operation_timeout(limits.upstream_first_byte_timeout)
            .build();
        let retries = RetryConfig::standard()
            .with_max_attempts(limits.upstream_max_retries.saturating_add(1))
            .with_initial_backoff(Duration::from_millis(RETRY_INITIAL_BACKOFF_MS))
            .with_max_backoff(Duration::from_millis(RETRY_MAX_BACKOFF_MS));

        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(region.clone())
            .http_client(http_client.clone())
            .timeout_config(timeouts.clone())
            .retry_config(retries.clone())
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .interceptor(HeaderBlockLimit)
            .force_path_style(cfg.path_style);
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let mut signer = Signer::Client;
        builder = match &cfg.credentials {
            S3Credentials::Static {
                access_key_id,
                secret_access_key,
            } => builder.credentials_provider(Credentials::new(
                access_key_id,
                secret_access_key.expose(),
                None,
                None,
                "bucketgate-static",
            )),
            // No provider on the client: a request without per-request credentials cannot be
            // signed at all, so nothing broader can leak through.
            S3Credentials::Saml => {
                signer = Signer::User;
                builder.identity_cache(IdentityCache::no_cache())
            }
            S3Credentials::AssumeRole(_) => {
                let Some(delegated) = delegated else {
                    return Err(BackendError::Protocol(
                        "an assume_role source needs the delegated credentials".into(),
                    ));
                };
                signer = Signer::Delegated(delegated);
                builder.identity_cache(IdentityCache::no_cache())
            }
            S3Credentials::DefaultChain => {
                // The chain's own calls (STS, IMDS, ECS) go through the same HTTP client.
                let provider_config = ProviderConfig::default()
                    .with_http_client(http_client)
                    .with_region(Some(region.clone()))
                    .with_timeout_config(timeouts)
                    .with_retry_config(retries);
                let chain = DefaultCredentialsChain::builder()
                    .region(region)
                    .configure(provider_config)
                    .build()
                    .await;
                builder.credentials_provider(chain)
            }
        };

        Ok(S3Backend {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            signer,
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.clone(),
            connect_timeout: limits.upstream_connect_timeout,
            first_byte_timeout: limits.upstream_first_byte_timeout,
            idle_timeout: limits.upstream_idle_timeout,
        })
    }

    /// The key in the bucket: the prefix and the key, concatenated byte for byte. No slash is
    /// added, merged or trimmed; the SDK percent-encodes the result.
    fn object_key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(&self.prefix);
        full.push_str(key);
        full
    }

    fn classify<E>(&self, err: SdkError<E>) -> BackendError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.classify_failure(sort_sdk_error(err))
    }

    fn classify_failure(&self, failure: SdkFailure) -> BackendError {
        let signed_by = match self.signer {
            Signer::Client | Signer::Delegated(_) => SignedBy::Gateway,
            Signer::User => SignedBy::User,
        };
        classify_sdk_failure(
            failure,
            self.connect_timeout,
            self.first_byte_timeout,
            signed_by,
        )
    }

    /// The credentials to set on a request for `caller`; `None`: the client's own.
    async fn credentials_for(
        &self,
        caller: Caller<'_>,
    ) -> Result<Option<Credentials>, BackendError> {
        match (&self.signer, caller) {
            (Signer::Client, _) => Ok(None),
            (Signer::Delegated(d), _) => Ok(Some(d.credentials().await?)),
            (Signer::User, Caller::User(user)) => Ok(Some(user.credentials.clone())),
            // Never a fallback: a saml source reads only with a user's credentials.
            (Signer::User, Caller::Gateway) => Err(BackendError::AccessDenied),
        }
    }

    async fn head_with(
        &self,
        key: &str,
        creds: Option<Credentials>,
    ) -> Result<ObjectMeta, BackendError> {
        let request = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.object_key(key));
        let out = match send_as!(request, creds.clone()) {
            Ok(out) => out,
            Err(e) => {
                let failure = sort_sdk_error(e);
                // A refused HEAD carries no error code (no body): whether the store refused the
                // user or the gateway's own settings shows only in a GET's answer.
                if let SdkFailure::Answer {
                    status: 301 | 400 | 401 | 403,
                    code: None,
                } = failure
                    && let Some(explained) = self.explain_refusal(key, creds).await
                {
                    return Err(explained);
                }
                return Err(self.classify_failure(failure));
            }
        };
        Ok(ObjectMeta {
            size: content_length(out.content_length())?,
            etag: out.e_tag().map(str::to_owned),
            last_modified: out.last_modified().map(whole_seconds),
            content_type: out.content_type().map(str::to_owned),
        })
    }

    /// Ask for the first byte of `key` with the same credentials as a refused HEAD, to learn the
    /// store's error code. `None` when the answer has none (or the GET was allowed after all):
    /// the HEAD's own status decides then.
    async fn explain_refusal(&self, key: &str, creds: Option<Credentials>) -> Option<BackendError> {
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .range(range_header(ByteRange { start: 0, end: 0 }));
        match send_as!(request, creds) {
            // Dropping the one-byte body closes that connection; a refusal is rare.
            Ok(_) => None,
            Err(e) => match sort_sdk_error(e) {
                failure @ SdkFailure::Answer { code: Some(_), .. } => {
                    Some(self.classify_failure(failure))
                }
                _ => None,
            },
        }
    }

    async fn get_with(
        &self,
        key: &str,
        range: Option<ByteRange>,
        expect: &ObjectMeta,
        creds: Option<Credentials>,
    ) -> Result<ObjectBody, BackendError> {
        let mut request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object_key(key));
        if let Some(r) = range {
            request = request.range(range_header(r));
        }
        // A changed object must never be mixed with the version the caller decided on: S3 answers
        // 412 to a failed precondition. Without an ETag, the modification time is the next best.
        if let Some(etag) = &expect.etag {
            request = request.if_match(etag);
        } else if let Some(modified) = expect.last_modified {
            request = request.if_unmodified_since(DateTime::from(modified));
        }
        let out = send_as!(request, creds).map_err(|e| self.classify(e))?;

        // Not every S3-compatible store honours If-Match on GET; compare ourselves too.
        let etag = out.e_tag().map(str::to_owned);
        if let (Some(want), Some(got)) = (&expect.etag, &etag)
            && want != got
        {
            return Err(BackendError::Changed);
        }

        let length = content_length(out.content_length())?;
        let size = match range {
            Some(r) => {
                // A store that ignores Range would send the whole object as if it were the range.
                let total = match out.content_range() {
                    Some(value) => check_content_range(value, r)?,
                    None => {
                        return Err(BackendError::Protocol(
                            "ranged GET answered without Content-Range".into(),
                        ));
                    }
                };
                if length != r.len() {
                    return Err(BackendError::Protocol(format!(
                        "ranged GET: Content-Length {length}, expected {}",
                        r.len()
                    )));
                }
                total
            }
            None => length,
        };
        let meta = ObjectMeta {
            size,
            etag,
            last_modified: out.last_modified().map(whole_seconds),
            content_type: out.content_type().map(str::to_owned),
        };
        Ok(ObjectBody {
            meta,
            body: body_stream(out.body, length, self.idle_timeout),
        })
    }

    /// The one GetObject of [`Backend::open`]: the client's range and conditions as `ask` says.
    async fn get_asked(
        &self,
        key: &str,
        ask: &Ask,
        creds: Option<Credentials>,
    ) -> Result<Answered, BackendError> {
        let mut request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object_key(key));
        if let Some(spec) = ask.range {
            request = request.range(range_spec_header(spec));
        }
        if let Some(tag) = &ask.if_match {
            request = request.if_match(tag);
        }
        if let Some(t) = ask.if_unmodified_since {
            request = request.if_unmodified_since(DateTime::from(t));
        }
        if let Some(tag) = &ask.if_none_match {
            request = request.if_none_match(tag);
        }
        if let Some(t) = ask.if_modified_since {
            request = request.if_modified_since(DateTime::from(t));
        }
        let out = match send_as!(request, creds) {
            Ok(out) => out,
            Err(e) => return answered_without_body(&e).ok_or_else(|| self.classify(e)),
        };
        let length = content_length(out.content_length())?;
        let mut meta = ObjectMeta {
            size: length,
            etag: out.e_tag().map(str::to_owned),
            last_modified: out.last_modified().map(whole_seconds),
            content_type: out.content_type().map(str::to_owned),
        };
        let part = match (ask.range, out.content_range()) {
            (None, _) => None,
            (Some(_), Some(value)) => {
                let (part, total) = parse_content_range(value)?;
                if length != part.len() {
                    return Err(BackendError::Protocol(format!(
                        "ranged GET: Content-Length {length} for bytes {}-{}",
                        part.start, part.end
                    )));
                }
                meta.size = total;
                Some(part)
            }
            // A 200 to a range (a store that ignores Range) and a 206 without Content-Range look
            // the same here: the length may not be the object's size.
            (Some(_), None) => return Ok(Answered::RangeIgnored(meta)),
        };
        Ok(Answered::Body {
            object: ObjectBody {
                meta,
                body: body_stream(out.body, length, self.idle_timeout),
            },
            part,
        })
    }

    /// What the pipeline decides for `meta`, read with one more GET if it is a body.
    async fn settle<F>(
        &self,
        key: &str,
        meta: ObjectMeta,
        want: &F,
        creds: Option<Credentials>,
    ) -> Result<Opened, BackendError>
    where
        F: Fn(&ObjectMeta) -> Want,
    {
        match want(&meta) {
            Want::Meta | Want::NotModified => Ok(Opened::Meta(meta)),
            Want::Body(part) => {
                let object = self.get_with(key, part, &meta, creds).await?;
                Ok(Opened::Object { object, part })
            }
        }
    }

    /// One HEAD, then what the pipeline decides for its metadata.
    async fn head_then_settle<F>(
        &self,
        key: &str,
        want: &F,
        creds: Option<Credentials>,
    ) -> Result<Opened, BackendError>
    where
        F: Fn(&ObjectMeta) -> Want,
    {
        let meta = self.head_with(key, creds.clone()).await?;
        self.settle(key, meta, want, creds).await
    }
}

/// How the store answered the one GetObject of [`Backend::open`].
enum Answered {
    /// 200, or 206 with its part: the body and the object's metadata (`size` the whole object's).
    Body {
        object: ObjectBody,
        part: Option<ByteRange>,
    },
    /// A ranged GET answered without `Content-Range`: the metadata, except that `size` is the
    /// answer's length, which may be the part's. The body is not used.
    RangeIgnored(ObjectMeta),
    /// 304: the validators the store sent with it (`size` 0, no content type).
    NotModified(ObjectMeta),
    /// 412, 416, or a 304 without both validators: no usable metadata.
    NoMeta,
}

/// A GetObject answer without a body that is an answer to the client's conditions or range, not
/// a failure: 304 (with its validators), 412 and 416. `None` for anything else.
fn answered_without_body(err: &SdkError<GetObjectError, HttpResponse>) -> Option<Answered> {
    let SdkError::ServiceError(service) = err else {
        return None;
    };
    let raw = service.raw();
    match raw.status().as_u16() {
        // Both validators, or the 304 would lack a header a HEAD's metadata gives it (moto's
        // 304 has no Last-Modified; S3's has both).
        304 => {
            let headers = raw.headers();
            let etag = headers.get("etag");
            let last_modified = headers
                .get("last-modified")
                .and_then(|v| httpdate::parse_http_date(v.trim()).ok());
            Some(match (etag, last_modified) {
                (Some(etag), Some(last_modified)) => Answered::NotModified(ObjectMeta {
                    size: 0,
                    etag: Some(etag.to_owned()),
                    last_modified: Some(last_modified),
                    content_type: None,
                }),
                _ => Answered::NoMeta,
            })
        }
        412 | 416 => Some(Answered::NoMeta),
        _ => None,
    }
}

impl Backend for S3Backend {
    async fn head(&self, key: &str, caller: Caller<'_>) -> Result<ObjectMeta, BackendError> {
        let creds = self.credentials_for(caller).await?;
        self.head_with(key, creds).await
    }

    async fn get(
        &self,
        key: &str,
        range: Option<ByteRange>,
        expect: &ObjectMeta,
        caller: Caller<'_>,
    ) -> Result<ObjectBody, BackendError> {
        let creds = self.credentials_for(caller).await?;
        self.get_with(key, range, expect, creds).await
    }

    async fn ready(&self) -> Result<(), BackendError> {
        // A saml source has no credentials of its own to check the store with; its readiness
        // shows in each user's reads.
        if matches!(self.signer, Signer::User) {
            return Ok(());
        }
        let creds = self.credentials_for(Caller::Gateway).await?;
        // A listing under the prefix needs the same permission as a prefix-scoped read policy
        // grants, where HeadBucket would need rights on the whole bucket.
        let request = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .max_keys(1);
        send_as!(request, creds)
            .map(|_| ())
            .map_err(|e| self.classify(e))
    }

    /// One GetObject carrying `ask` (a HEAD: one HeadObject), checked against `want`; a second
    /// call only where the module doc says. The credentials are chosen once for every call, and
    /// loaded first, outside the deadline: a delegated refresh (STS, with its own timeout) is
    /// never cut half-way. Every store call then answers by `deadline`, else
    /// [`BackendError::Timeout`].
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
        let creds = self.credentials_for(caller).await?;
        let calls = async {
            if ask.head_only || ask.range == Some(RangeSpec::Suffix(0)) {
                return self.head_then_settle(key, &want, creds).await;
            }
            match self.get_asked(key, ask, creds.clone()).await? {
                Answered::Body { object, part } => match want(&object.meta) {
                    Want::Body(decided) if decided == part => Ok(Opened::Object { object, part }),
                    Want::Body(decided) => {
                        let meta = object.meta.clone();
                        // Unread: the store's connection closes rather than draining the body.
                        drop(object);
                        let object = self.get_with(key, decided, &meta, creds).await?;
                        Ok(Opened::Object {
                            object,
                            part: decided,
                        })
                    }
                    Want::Meta | Want::NotModified => Ok(Opened::Meta(object.meta)),
                },
                Answered::NotModified(validators) if want(&validators) == Want::NotModified => {
                    Ok(Opened::Meta(validators))
                }
                Answered::RangeIgnored(meta) => match want(&meta) {
                    Want::NotModified => Ok(Opened::Meta(meta)),
                    // Decided on a size that may be the part's: kept only if the ranged answer
                    // names the same total.
                    Want::Body(Some(part)) => {
                        let object = self.get_with(key, Some(part), &meta, creds.clone()).await?;
                        if object.meta.size == meta.size {
                            return Ok(Opened::Object {
                                object,
                                part: Some(part),
                            });
                        }
                        drop(object);
                        self.head_then_settle(key, &want, creds).await
                    }
                    Want::Meta | Want::Body(None) => self.head_then_settle(key, &want, creds).await,
                },
                Answered::NotModified(_) | Answered::NoMeta => {
                    self.head_then_settle(key, &want, creds).await
                }
            }
        };
        tokio::time::timeout_at(deadline, calls)
            .await
            .unwrap_or(Err(BackendError::Timeout(self.first_byte_timeout)))
    }

    /// ListObjectsV2 under the source's prefix + `prefix`, page after page, with the source's
    /// own credentials (a saml source has none: [`BackendError::AccessDenied`]). Keys come back
    /// without the source's prefix. A page that brings no key yet claims more is refused, so a
    /// store cannot keep us paging forever.
    async fn list(&self, prefix: &str, limit: usize) -> Result<Listing, BackendError> {
        const PAGE_MAX_KEYS: usize = 1000;
        let creds = self.credentials_for(Caller::Gateway).await?;
        let full = self.object_key(prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let want = (limit + 1 - keys.len()).min(PAGE_MAX_KEYS);
            let mut request = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full)
                .max_keys(i32::try_from(want).unwrap_or(1000));
            if let Some(t) = token.take() {
                request = request.continuation_token(t);
            }
            let out = send_as!(request, creds.clone()).map_err(|e| self.classify(e))?;
            let before = keys.len();
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key()?.strip_prefix(self.prefix.as_str()))
                    .map(str::to_owned),
            );
            if keys.len() > limit {
                keys.sort();
                keys.truncate(limit);
                return Ok(Listing {
                    keys,
                    truncated: true,
                });
            }
            match out.next_continuation_token() {
                Some(next) if out.is_truncated() == Some(true) => {
                    if keys.len() == before {
                        return Err(BackendError::Protocol(
                            "ListObjectsV2 page without keys claims more".to_owned(),
                        ));
                    }
                    token = Some(next.to_owned());
                }
                _ => break,
            }
        }
        keys.sort();
        Ok(Listing {
            keys,
            truncated: false,
        })
    }
}

/// `Range` header value for one inclusive range.
fn range_header(range: ByteRange) -> String {
    format!("bytes={}-{}", range.start, range.end)
}

/// `Range` header value for a range as the client wrote it: the store resolves it against the
/// size (clipping an end past it, 416 for a start past it).
fn range_spec_header(spec: RangeSpec) -> String {
    match spec {
        RangeSpec::FromTo(a, b) => format!("bytes={a}-{b}"),
        RangeSpec::From(a) => format!("bytes={a}-"),
        RangeSpec::Suffix(n) => format!("bytes=-{n}"),
    }
}

/// Read a `Content-Range: bytes start-end/total` (`start <= end < total`): the part and the
/// object's total size.
fn parse_content_range(value: &str) -> Result<(ByteRange, u64), BackendError> {
    let bad =
        || BackendError::Protocol("ranged GET answered with an unusable Content-Range".into());
    let rest = value.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (span, total) = rest.split_once('/').ok_or_else(bad)?;
    let (start, end) = span.split_once('-').ok_or_else(bad)?;
    let start: u64 = start.parse().map_err(|_| bad())?;
    let end: u64 = end.parse().map_err(|_| bad())?;
    let total: u64 = total.parse().map_err(|_| bad())?;
    if start > end || end >= total {
        return Err(bad());
    }
    Ok((ByteRange { start, end }, total))
}

/// Check a `Content-Range: bytes start-end/total` against the range we asked for; return the
/// object's total size.
fn check_content_range(value: &str, asked: ByteRange) -> Result<u64, BackendError> {
    let (got, total) = parse_content_range(value)?;
    if got != asked {
        return Err(BackendError::Protocol(format!(
            "ranged GET: store sent bytes {}-{}/{total}, asked {}-{}",
            got.start, got.end, asked.start, asked.end
        )));
    }
    Ok(total)
}

fn content_length(value: Option<i64>) -> Result<u64, BackendError> {
    value
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| BackendError::Protocol("answer without a valid Content-Length".into()))
}

/// HTTP dates carry whole seconds; S3's are already whole, other stores' may not be.
fn whole_seconds(t: &DateTime) -> SystemTime {
    let secs = t.secs();
    match u64::try_from(secs) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

/// The body as `Bytes` frames, one at a time (constant memory). Each frame must arrive within
/// `idle`; a stall, a transport error or a body that ends short of `expected` bytes yields one
/// `Err` item and ends the stream, so the response is aborted and never finished as complete.
fn body_stream(body: ByteStream, expected: u64, idle: Duration) -> BodyStream {
    struct State {
        body: ByteStream,
        received: u64,
    }
    let start = Some(State { body, received: 0 });
    Box::pin(futures_util::stream::unfold(
        start,
        move |state| async move {
            let mut st = state?;
            match tokio::time::timeout(idle, st.body.next()).await {
                Err(_) => Some((Err(BackendError::Stalled(idle)), None)),
                Ok(Some(Ok(frame))) => {
                    st.received = st.received.saturating_add(frame.len() as u64);
                    if st.received > expected {
                        let err = LengthMismatch {
                            received: st.received,
                            expected,
                        };
                        return Some((Err(BackendError::BodyBroken(Box::new(err))), None));
                    }
                    Some((Ok(frame), Some(st)))
                }
                Ok(Some(Err(e))) => Some((Err(BackendError::BodyBroken(Box::new(e))), None)),
                Ok(None) if st.received == expected => None,
                Ok(None) => {
                    let err = LengthMismatch {
                        received: st.received,
                        expected,
                    };
                    Some((Err(BackendError::BodyBroken(Box::new(err))), None))
                }
            }
        },
    ))
}

/// The body's length disagreed with its Content-Length (hyper checks this too; this is the
/// backstop for transports that do not).
#[derive(Debug, thiserror::Error)]
#[error("body had {received} bytes, Content-Length said {expected}")]
struct LengthMismatch {
    received: u64,
    expected: u64,
}

/// A store's error answer, reduced to what is safe to log: the status and S3's error code, never
/// the message or the XML body.
#[derive(Debug, thiserror::Error)]
#[error("store answered {status}{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
struct StoreStatus {
    status: u16,
    code: Option<String>,
}

/// The store did not take the connection within the connect timeout.
#[derive(Debug, thiserror::Error)]
#[error("no connection within {0:?}")]
struct ConnectTimedOut(Duration);

/// Whose credentials signed a refused request: an expired token is the gateway's fault for its
/// own credentials and the user's for a SAML session's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignedBy {
    Gateway,
    User,
}

fn classify_sdk_failure(
    failure: SdkFailure,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
    signed_by: SignedBy,
) -> BackendError {
    match failure {
        SdkFailure::AnswerTimeout => BackendError::Timeout(first_byte_timeout),
        // No connection at all is an unreachable store (502); 504 is kept for a store that
        // took the request and did not answer.
        SdkFailure::ConnectTimeout => {
            BackendError::Unreachable(Box::new(ConnectTimedOut(connect_timeout)))
        }
        SdkFailure::NotSent => BackendError::Protocol("request could not be sent".into()),
        SdkFailure::Unreachable(source) => BackendError::Unreachable(source),
        SdkFailure::Answer { status, code } => classify_answer(status, code.as_deref(), signed_by),
        SdkFailure::Unparseable { status } if status >= 500 => {
            BackendError::Unreachable(Box::new(StoreStatus { status, code: None }))
        }
        SdkFailure::Unparseable { status } => {
            BackendError::Protocol(format!("unparseable answer with status {status}"))
        }
        SdkFailure::HeaderBlockTooLarge => BackendError::Protocol(format!(
            "answer with a header block over {UPSTREAM_MAX_HEADER_BYTES} bytes"
        )),
        SdkFailure::NotBuilt => {
            BackendError::Protocol("request could not be built (credentials or parameters)".into())
        }
        SdkFailure::Unknown => BackendError::Protocol("unknown SDK error".into()),
    }
}

/// S3 error codes that say the gateway's own credentials or settings are wrong, whoever's
/// credentials signed: the signing secret or key id, the region, the session token the gateway
/// sent, the host's clock, the account or the bucket name in the config.
const CONFIG_FAULT_CODES: &[&str] = &[
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "IncompleteSignature",
    "AuthorizationHeaderMalformed",
    "InvalidToken",
    "InvalidSecurity",
    "MissingSecurityHeader",
    "RequestTimeTooSkewed",
    "NotSignedUp",
    "AccountProblem",
    "AllAccessDisabled",
    "InvalidBucketName",
    "PermanentRedirect",
];

/// An expired or stale session token: the gateway's fault for its own credentials (it refreshes
/// them ahead of expiry), a refusal of the user for a SAML session's.
const EXPIRED_TOKEN_CODES: &[&str] = &["ExpiredToken", "TokenRefreshRequired"];

/// Map an error answer by status and S3 error code. The code wins where S3 is specific; the
/// status covers HEAD answers, which have no body and so no code.
fn classify_answer(status: u16, code: Option<&str>, signed_by: SignedBy) -> BackendError {
    if let Some(code) = code {
        if let Some(known) = CONFIG_FAULT_CODES.iter().find(|c| **c == code) {
            return BackendError::ConfigFault { code: known };
        }
        if let Some(known) = EXPIRED_TOKEN_CODES.iter().find(|c| **c == code) {
            return match signed_by {
                SignedBy::Gateway => BackendError::ConfigFault { code: known },
                SignedBy::User => BackendError::AccessDenied,
            };
        }
    }
    match code {
        Some("NoSuchKey" | "NoSuchBucket" | "NotFound") => return BackendError::NotFound,
        Some("AccessDenied" | "InvalidObjectState") => return BackendError::AccessDenied,
        Some("PreconditionFailed") => return BackendError::Changed,
        _ => {}
    }
    match status {
        404 => BackendError::NotFound,
        401 | 403 => BackendError::AccessDenied,
        412 => BackendError::Changed,
        500..=599 => BackendError::Unreachable(Box::new(StoreStatus {
            status,
            code: code.map(short_code),
        })),
        _ => BackendError::Protocol(match code {
            Some(c) => format!("store answered {status} ({})", short_code(c)),
            None => format!("store answered {status}"),
        }),
    }
}

/// An S3 error code is a short identifier; anything else from a misbehaving store is cut down.
fn short_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn range_header_is_inclusive_bytes_range() {
        assert_eq!(range_header(ByteRange { start: 0, end: 0 }), "bytes=0-0");
        assert_eq!(
            range_header(ByteRange { start: 10, end: 19 }),
            "bytes=10-19"
        );
    }

    #[test]
    fn range_spec_header_keeps_the_clients_form() {
        assert_eq!(range_spec_header(RangeSpec::FromTo(0, 9)), "bytes=0-9");
        assert_eq!(range_spec_header(RangeSpec::From(100)), "bytes=100-");
        assert_eq!(range_spec_header(RangeSpec::Suffix(5)), "bytes=-5");
    }

    #[test]
    fn content_range_gives_the_part_and_total() {
        assert_eq!(
            parse_content_range("bytes 995-999/1000").ok(),
            Some((
                ByteRange {
                    start: 995,
                    end: 999
                },
                1000
            ))
        );
        for bad in [
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes */10",
            "bytes 0-1/*",
            "0-1/2",
        ] {
            assert!(parse_content_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_range_matching_the_request_gives_total_size() {
        let r = ByteRange { start: 10, end: 19 };
        assert_eq!(check_content_range("bytes 10-19/100", r).ok(), Some(100));
    }

    #[test]
    fn content_range_for_another_span_is_a_protocol_error() {
        let r = ByteRange { start: 10, end: 19 };
        for bad in [
            "bytes 0-99/100",
            "bytes 10-19/15",
            "bytes */100",
            "items 10-19/100",
            "bytes 10-19/*",
        ] {
            assert!(
                matches!(check_content_range(bad, r), Err(BackendError::Protocol(_))),
                "{bad}"
            );
        }
    }

    /// [`classify_answer`] for a request the gateway's own credentials signed.
    fn classify_status(status: u16, code: Option<&str>) -> BackendError {
        classify_answer(status, code, SignedBy::Gateway)
    }

    #[test]
    fn status_and_code_map_to_backend_errors() {
        assert!(matches!(
            classify_status(404, Some("NoSuchKey")),
            BackendError::NotFound
        ));
        assert!(matches!(classify_status(404, None), BackendError::NotFound));
        assert!(matches!(
            classify_status(403, None),
            BackendError::AccessDenied
        ));
        // The gateway's own signature is wrong: its configuration, not the user (issue 11).
        assert!(matches!(
            classify_status(403, Some("SignatureDoesNotMatch")),
            BackendError::ConfigFault {
                code: "SignatureDoesNotMatch"
            }
        ));
        assert!(matches!(classify_status(412, None), BackendError::Changed));
        assert!(matches!(
            classify_status(412, Some("PreconditionFailed")),
            BackendError::Changed
        ));
        assert!(matches!(
            classify_status(503, Some("SlowDown")),
            BackendError::Unreachable(_)
        ));
        assert!(matches!(
            classify_status(500, None),
            BackendError::Unreachable(_)
        ));
        assert!(matches!(
            classify_status(400, Some("InvalidArgument")),
            BackendError::Protocol(_)
        ));
    }

    #[test]
    fn refusals_of_the_gateways_own_credentials_or_settings_are_config_faults() {
        for signed_by in [SignedBy::Gateway, SignedBy::User] {
            for (status, code) in [
                (403, "SignatureDoesNotMatch"),
                (403, "InvalidAccessKeyId"),
                (400, "AuthorizationHeaderMalformed"),
                (400, "InvalidToken"),
                (403, "RequestTimeTooSkewed"),
                (403, "NotSignedUp"),
                (400, "InvalidBucketName"),
                (301, "PermanentRedirect"),
            ] {
                let err = classify_answer(status, Some(code), signed_by);
                assert!(
                    matches!(err, BackendError::ConfigFault { code: c } if c == code),
                    "{signed_by:?} {status} {code}: {err:?}"
                );
            }
        }
        // An expired token: the gateway's own credentials are its fault; a SAML user's session
        // credentials are the user's to renew.
        for code in ["ExpiredToken", "TokenRefreshRequired"] {
            assert!(matches!(
                classify_answer(400, Some(code), SignedBy::Gateway),
                BackendError::ConfigFault { .. }
            ));
            assert!(matches!(
                classify_answer(400, Some(code), SignedBy::User),
                BackendError::AccessDenied
            ));
        }
        // A refusal is a refusal, whoever signed.
        for signed_by in [SignedBy::Gateway, SignedBy::User] {
            assert!(matches!(
                classify_answer(403, Some("AccessDenied"), signed_by),
                BackendError::AccessDenied
            ));
            assert!(matches!(
                classify_answer(403, None, signed_by),
                BackendError::AccessDenied
            ));
        }
        // A code the store made up never becomes a config fault label.
        assert!(matches!(
            classify_answer(403, Some("SignatureDoesNotMatchX"), SignedBy::Gateway),
            BackendError::AccessDenied
        ));
    }

    #[test]
    fn error_text_never_carries_more_than_the_code() {
        let long = format!("<Error><Message>{}</Message></Error>", "x".repeat(500));
        let err = classify_status(418, Some(&long));
        let text = err.to_string();
        assert!(!text.contains('<'), "{text}");
        assert!(text.len() < 150, "{text}");
        let err = classify_status(502, Some("InternalError"));
        assert_eq!(
            std::error::Error::source(&err)
                .map(|s| s.to_string())
                .as_deref(),
            Some("store answered 502 (InternalError)")
        );
    }

    #[test]
    fn whole_seconds_drops_subseconds() {
        let t = DateTime::from_fractional_secs(1_700_000_000, 0.75);
        assert_eq!(
            whole_seconds(&t),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
    }

    #[tokio::test]
    async fn body_shorter_than_its_length_ends_with_body_broken() {
        use futures_util::StreamExt;
        let mut s = body_stream(ByteStream::from_static(b"abc"), 5, Duration::from_secs(5));
        assert_eq!(
            s.next().await.and_then(|r| r.ok()),
            Some(Bytes::from_static(b"abc"))
        );
        assert!(matches!(
            s.next().await,
            Some(Err(BackendError::BodyBroken(_)))
        ));
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn body_of_exact_length_ends_cleanly() {
        use futures_util::StreamExt;
        let mut s = body_stream(ByteStream::from_static(b"abcde"), 5, Duration::from_secs(5));
        assert!(matches!(s.next().await, Some(Ok(_))));
        assert!(s.next().await.is_none());
    }
}
