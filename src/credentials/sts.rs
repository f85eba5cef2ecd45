//! The STS client: `AssumeRoleWithSAML` for signed-in users and `AssumeRole` for the delegated
//! role, over the process's one HTTP stack (hyper 1 + rustls with ring, see `crate::aws`).
//!
//! Every call is bounded by `[sts] timeout_secs` (connect to answer) and tried once: the callers
//! decide when to try again (a login is retried by the user, a delegated refresh by the next
//! request after a back-off). Errors are sorted into what the caller must tell apart: STS said no
//! ([`StsError::Refused`]), STS refused the gateway's own signing credentials or request
//! ([`StsError::ConfigFault`]), STS could not be reached or failed ([`StsError::Unavailable`]),
//! STS was too slow ([`StsError::Timeout`]), STS answered something unusable
//! ([`StsError::Protocol`]). No error text carries an STS message, an assertion or a credential;
//! an STS error code (a short identifier) may be logged.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials};
use aws_sdk_sts::config::retry::RetryConfig;
use aws_sdk_sts::config::timeout::TimeoutConfig;
use aws_sdk_sts::config::{BehaviorVersion, Region, SharedHttpClient};
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};

use crate::aws::{SdkFailure, sort_sdk_error};
use crate::config::StsConfig;

/// Provider name on the credentials STS hands out (shows in SDK debug output, never a secret).
const PROVIDER_NAME: &str = "bucketgate-sts";

/// Temporary credentials and who STS says they belong to.
#[derive(Clone)]
pub struct SessionCredentials {
    /// Access key, secret, session token and expiry, ready for the S3 client.
    pub credentials: Credentials,
    pub expires: SystemTime,
    /// `AssumedRoleUser.Arn` as STS returned it (`arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`).
    pub assumed_role_arn: String,
    /// `Subject` (AssumeRoleWithSAML) as STS returned it.
    pub subject: Option<String>,
}

impl SessionCredentials {
    /// The credentials and the assumed-role ARN, as one value for reads on the user's behalf.
    pub fn user(&self) -> super::UserCredentials<'_> {
        super::UserCredentials {
            credentials: &self.credentials,
            role_arn: &self.assumed_role_arn,
        }
    }
}

impl fmt::Debug for SessionCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The access key id is not a secret, but its first four characters (ASIA, AKIA) say all
        // a log reader needs; the secret and the session token never print.
        let id = self.credentials.access_key_id();
        let prefix: String = id.chars().take(4).collect();
        f.debug_struct("SessionCredentials")
            .field("access_key_id", &format_args!("{prefix}…"))
            .field("expires", &httpdate::fmt_http_date(self.expires))
            .field("assumed_role_arn", &self.assumed_role_arn)
            .finish_non_exhaustive()
    }
}

/// Why STS gave no credentials.
#[derive(Debug, thiserror::Error)]
pub enum StsError {
    /// STS refused the request (4xx: access denied, a rejected assertion, an untrusted role).
    /// `code` is STS's error code when it sent a plausible one (see [`short_code`]).
    #[error("STS refused the request{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Refused { code: Option<String> },
    /// STS refused the gateway's own signing credentials or the request the gateway built (a
    /// wrong secret or key id, an expired token of the gateway's own credentials, STS disabled
    /// in the configured region, ...): the operator must fix the gateway's settings; the user
    /// can do nothing about it. `code` is one of [`CONFIG_FAULT_CODES`].
    #[error("STS refused the gateway's own credentials or request ({code})")]
    ConfigFault { code: &'static str },
    /// STS could not be reached, failed (5xx), throttled us, or the gateway's own credentials
    /// for signing could not be loaded.
    #[error("STS unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No answer within `[sts] timeout_secs`.
    #[error("STS did not answer in time")]
    Timeout,
    /// An answer without credentials, an expiry or a role ARN, or one that could not be parsed.
    #[error("unusable answer from STS: {0}")]
    Protocol(&'static str),
}

impl StsError {
    /// Whether trying again later may succeed (the delegated cache backs off and retries).
    pub fn is_transient(&self) -> bool {
        matches!(self, StsError::Unavailable(_) | StsError::Timeout)
    }
}

/// An STS answer's status and error code (never its message), for the log.
#[derive(Debug, thiserror::Error)]
#[error("STS answered {status}{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
struct StsStatus {
    status: u16,
    code: Option<String>,
}

/// STS on our HTTP stack. Cheap to clone (the SDK client is an `Arc` inside).
#[derive(Clone)]
pub struct StsClient {
    client: aws_sdk_sts::Client,
    timeout: Duration,
}

impl fmt::Debug for StsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StsClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl StsClient {
    /// Build the client. Makes no network call; the gateway's own credentials (for AssumeRole)
    /// come from `[sts] credentials`, or the AWS default chain, loaded on first use.
    pub fn new(settings: &StsConfig) -> StsClient {
        let http_client = crate::aws::sdk_http_client();
        let region = Region::new(settings.region.clone());
        // One bound for the whole call: connect, send, answer.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(settings.timeout)
            .operation_timeout(settings.timeout)
            .build();
        let retries = RetryConfig::disabled();
        let mut builder = aws_sdk_sts::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(region.clone())
            .http_client(http_client.clone())
            .timeout_config(timeouts.clone())
            .retry_config(retries.clone())
            .interceptor(crate::aws::HeaderBlockLimit);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        builder = match &settings.credentials {
            Some(keys) => builder.credentials_provider(Credentials::new(
                &keys.access_key_id,
                keys.secret_access_key.expose(),
                None,
                None,
                "bucketgate-sts-static",
            )),
            None => builder.credentials_provider(LazyDefaultChain {
                chain: Arc::new(tokio::sync::OnceCell::new()),
                region,
                http_client,
                timeouts,
            }),
        };
        StsClient {
            client: aws_sdk_sts::Client::from_conf(builder.build()),
            timeout: settings.timeout,
        }
    }

    /// `AssumeRoleWithSAML` (unsigned, as AWS expects): the user's credentials for `role_arn`.
    pub async fn assume_role_with_saml(
        &self,
        role_arn: &str,
        principal_arn: &str,
        saml_response_b64: &str,
        duration: Duration,
    ) -> Result<SessionCredentials, StsError> {
        let out = self
            .client
            .assume_role_with_saml()
            .role_arn(role_arn)
            .principal_arn(principal_arn)
            .saml_assertion(saml_response_b64)
            .duration_seconds(duration_secs(duration))
            .send()
            .await
            .map_err(|e| classify(e, Signed::No))?;
        session(
            out.credentials(),
            out.assumed_role_user().map(|u| u.arn()),
            out.subject().map(str::to_owned),
        )
    }

    /// `AssumeRole`, signed with the gateway's own credentials.
    pub async fn assume_role(
        &self,
        role_arn: &str,
        external_id: Option<&str>,
        session_name: &str,
        duration: Duration,
    ) -> Result<SessionCredentials, StsError> {
        let out = self
            .client
            .assume_role()
            .role_arn(role_arn)
            .set_external_id(external_id.map(str::to_owned))
            .role_session_name(session_name)
            .duration_seconds(duration_secs(duration))
            .send()
            .await
            .map_err(|e| classify(e, Signed::ByGateway))?;
        session(
            out.credentials(),
            out.assumed_role_user().map(|u| u.arn()),
            None,
        )
    }
}

/// STS takes whole seconds as an i32 (900 to 43200); config validation keeps us in range.
fn duration_secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

fn session(
    creds: Option<&aws_sdk_sts::types::Credentials>,
    role_arn: Option<&str>,
    subject: Option<String>,
) -> Result<SessionCredentials, StsError> {
    let c = creds.ok_or(StsError::Protocol("answer without credentials"))?;
    let expires = SystemTime::try_from(*c.expiration())
        .map_err(|_| StsError::Protocol("credentials expiry out of range"))?;
    let assumed_role_arn = role_arn
        .filter(|a| !a.is_empty())
        .ok_or(StsError::Protocol("answer without an assumed-role ARN"))?
        .to_owned();
    if c.access_key_id().is_empty() || c.secret_access_key().is_empty() {
        return Err(StsError::Protocol("answer with empty credentials"));
    }
    Ok(SessionCredentials {
        credentials: Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_owned()).filter(|t| !t.is_empty()),
            Some(expires),
            PROVIDER_NAME,
        ),
        expires,
        assumed_role_arn,
        subject,
    })
}

/// Sort an SDK error. The error code is read where the SDK could parse one; some STS-compatible
/// servers send bodies it cannot (moto wraps its signature errors in `<Errors>`, as EC2 does), so
/// the code is then looked up in the body ([`code_in_body`]), and failing that the status decides.
fn classify<E>(err: SdkError<E>, signed: Signed) -> StsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let body_code = match &err {
        SdkError::ServiceError(service) if service.err().code().is_none() => {
            service.raw().body().bytes().and_then(code_in_body)
        }
        _ => None,
    };
    match sort_sdk_error(err) {
        SdkFailure::AnswerTimeout | SdkFailure::ConnectTimeout => StsError::Timeout,
        SdkFailure::NotSent => StsError::Protocol("request could not be sent"),
        SdkFailure::Unreachable(source) => StsError::Unavailable(source),
        SdkFailure::Answer { status, code } => {
            classify_status(status, code.as_deref().or(body_code.as_deref()), signed)
        }
        SdkFailure::Unparseable { status } if status >= 500 => {
            StsError::Unavailable(Box::new(StsStatus { status, code: None }))
        }
        SdkFailure::Unparseable { .. } => StsError::Protocol("unparseable answer"),
        SdkFailure::HeaderBlockTooLarge => {
            StsError::Protocol("answer with an oversized header block")
        }
        // Building the request, which includes loading the gateway's own credentials.
        SdkFailure::NotBuilt => StsError::Unavailable(
            "request could not be built (the gateway's own credentials did not load)".into(),
        ),
        SdkFailure::Unknown => StsError::Protocol("unknown SDK error"),
    }
}

/// How far into an error body [`code_in_body`] looks.
const CODE_SCAN_BYTES: usize = 4096;

/// The text of the first `<Code>` element in the start of an error body, if it is a plausible
/// error code ([`short_code`]); nothing else of the body is read.
fn code_in_body(body: &[u8]) -> Option<String> {
    let head = &body[..body.len().min(CODE_SCAN_BYTES)];
    let text = std::str::from_utf8(head).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    short_code(text[start..start + len].trim())
}

/// Whether the gateway signed the call with its own credentials (`AssumeRole`) or sent it
/// unsigned (`AssumeRoleWithSAML`, where the assertion is the credential).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signed {
    ByGateway,
    No,
}

/// STS error codes that say the gateway's own signing credentials, its host's clock or the request
/// it built are wrong, whatever the call: nobody but the operator can fix them, and trying again
/// does not help. (`ValidationError` is not here: on `AssumeRoleWithSAML` it can come from the
/// role pair or session length the IdP's assertion asked for.)
const CONFIG_FAULT_CODES: &[&str] = &[
    // The signing key id or secret.
    "SignatureDoesNotMatch",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "InvalidAccessKeyId",
    "AuthorizationHeaderMalformed",
    // The host's clock when signing.
    "RequestExpired",
    "RequestTimeTooSkewed",
    // STS is not enabled for the account in the configured region, or the account cannot use it.
    "RegionDisabledException",
    "OptInRequired",
    // A request the gateway built that STS cannot read.
    "InvalidAction",
    "MissingAction",
    "InvalidQueryParameter",
    "MalformedQueryString",
    "MissingParameter",
    "InvalidParameterCombination",
];

/// An expired session token: of the gateway's own (temporary) credentials when the gateway
/// signed, of the SAML assertion (the user's to renew) when it did not.
const EXPIRED_TOKEN_CODES: &[&str] = &["ExpiredToken", "ExpiredTokenException"];

fn classify_status(status: u16, code: Option<&str>, signed: Signed) -> StsError {
    let throttled = matches!(
        code,
        Some("Throttling" | "ThrottlingException" | "RequestLimitExceeded")
    );
    if !throttled && (400..=499).contains(&status) && status != 429 {
        if let Some(known) = code.and_then(|c| CONFIG_FAULT_CODES.iter().find(|k| **k == c)) {
            return StsError::ConfigFault { code: known };
        }
        if signed == Signed::ByGateway
            && let Some(known) = code.and_then(|c| EXPIRED_TOKEN_CODES.iter().find(|k| **k == c))
        {
            return StsError::ConfigFault { code: known };
        }
    }
    match status {
        _ if throttled || status == 429 => StsError::Unavailable(Box::new(StsStatus {
            status,
            code: code.and_then(short_code),
        })),
        400..=499 => StsError::Refused {
            code: code.and_then(short_code),
        },
        500..=599 => StsError::Unavailable(Box::new(StsStatus {
            status,
            code: code.and_then(short_code),
        })),
        _ => StsError::Protocol("unexpected status"),
    }
}

/// An STS error code is a short identifier (`Throttling`, `InternalFailure`); anything else a
/// misbehaving server sends there is dropped, not trimmed into something readable.
fn short_code(code: &str) -> Option<String> {
    let plausible = !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
    plausible.then(|| code.to_owned())
}

/// The AWS default chain, built on first use so that [`StsClient::new`] stays synchronous and
/// makes no network call.
#[derive(Debug)]
struct LazyDefaultChain {
    chain: Arc<tokio::sync::OnceCell<DefaultCredentialsChain>>,
    region: Region,
    http_client: SharedHttpClient,
    timeouts: TimeoutConfig,
}

impl ProvideCredentials for LazyDefaultChain {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            let chain = self
                .chain
                .get_or_init(|| async {
                    // The chain's own calls (IMDS, ECS, web identity) use our HTTP client.
                    let provider_config = ProviderConfig::default()
                        .with_http_client(self.http_client.clone())
                        .with_region(Some(self.region.clone()))
                        .with_timeout_config(self.timeouts.clone());
                    DefaultCredentialsChain::builder()
                        .region(self.region.clone())
                        .configure(provider_config)
                        .build()
                        .await
                })
                .await;
            chain.provide_credentials().await
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// [`classify_status`] for a call the gateway signed.
    fn classify_signed(status: u16, code: Option<&str>) -> StsError {
        classify_status(status, code, Signed::ByGateway)
    }

    #[test]
    fn statuses_sort_into_refused_unavailable_and_protocol() {
        let classify_status = classify_signed;
        assert!(matches!(
            classify_status(403, Some("AccessDenied")),
            StsError::Refused { .. }
        ));
        assert!(matches!(
            classify_status(403, None),
            StsError::Refused { .. }
        ));
        assert!(matches!(
            classify_status(400, Some("IDPRejectedClaim")),
            StsError::Refused { .. }
        ));
        assert!(matches!(
            classify_status(400, Some("Throttling")),
            StsError::Unavailable(_)
        ));
        assert!(matches!(
            classify_status(503, None),
            StsError::Unavailable(_)
        ));
        assert!(matches!(classify_status(302, None), StsError::Protocol(_)));
    }

    #[test]
    fn refusals_of_the_gateways_own_credentials_or_request_are_config_faults() {
        for signed in [Signed::ByGateway, Signed::No] {
            for (status, code) in [
                (403, "SignatureDoesNotMatch"),
                (403, "InvalidClientTokenId"),
                (400, "IncompleteSignature"),
                (403, "MissingAuthenticationToken"),
                (400, "RequestExpired"),
                (403, "RegionDisabledException"),
                (400, "InvalidAction"),
            ] {
                let err = classify_status(status, Some(code), signed);
                assert!(
                    matches!(err, StsError::ConfigFault { code: c } if c == code),
                    "{signed:?} {status} {code}: {err:?}"
                );
            }
        }
        // An expired token is the gateway's own when it signed; on AssumeRoleWithSAML it is the
        // assertion's, the user's to renew.
        assert!(matches!(
            classify_status(400, Some("ExpiredToken"), Signed::ByGateway),
            StsError::ConfigFault {
                code: "ExpiredToken"
            }
        ));
        assert!(matches!(
            classify_status(400, Some("ExpiredTokenException"), Signed::No),
            StsError::Refused { .. }
        ));
        // A refusal stays a refusal, with its code for the log; throttling and 5xx stay
        // transient whatever code they carry.
        assert!(matches!(
            classify_status(403, Some("AccessDenied"), Signed::ByGateway),
            StsError::Refused { code: Some(c) } if c == "AccessDenied"
        ));
        assert!(matches!(
            classify_status(400, Some("InvalidIdentityToken"), Signed::No),
            StsError::Refused { .. }
        ));
        assert!(matches!(
            classify_status(400, Some("ValidationError"), Signed::No),
            StsError::Refused { .. }
        ));
        assert!(matches!(
            classify_status(429, Some("SignatureDoesNotMatch"), Signed::ByGateway),
            StsError::Unavailable(_)
        ));
        assert!(matches!(
            classify_status(500, Some("InvalidClientTokenId"), Signed::ByGateway),
            StsError::Unavailable(_)
        ));
        assert!(matches!(
            classify_status(400, Some("<b>x</b>"), Signed::ByGateway),
            StsError::Refused { code: None }
        ));
    }

    #[test]
    fn error_code_is_read_from_bodies_the_sdk_cannot_parse() {
        let moto =
            b"<?xml version=\"1.0\"?>\n<ErrorResponse><Errors><Error><Code>SignatureDoesNotMatch\
                     </Code><Message>secret</Message></Error></Errors></ErrorResponse>";
        assert_eq!(code_in_body(moto).as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(code_in_body(b"<Code><b>x</b></Code>"), None);
        assert_eq!(code_in_body(b"<Code>unterminated"), None);
        assert_eq!(code_in_body(b"no code"), None);
        let mut late = vec![b' '; CODE_SCAN_BYTES];
        late.extend_from_slice(b"<Code>AccessDenied</Code>");
        assert_eq!(code_in_body(&late), None);
    }

    #[test]
    fn debug_of_session_credentials_shows_no_secret() {
        let s = SessionCredentials {
            credentials: Credentials::new(
                "ASIAEXAMPLEKEYID0000",
                "very-secret-key",
                Some("very-secret-token".to_owned()),
                None,
                "t",
            ),
            expires: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            assumed_role_arn: "arn:aws:sts::1:assumed-role/r/s".to_owned(),
            subject: Some("alice".to_owned()),
        };
        let text = format!("{s:?}");
        assert!(!text.contains("very-secret"), "{text}");
        assert!(!text.contains("EXAMPLEKEYID"), "{text}");
        assert!(text.contains("ASIA"), "{text}");
    }

    #[test]
    fn errors_say_nothing_from_sts() {
        let e = classify_signed(500, Some("<Message>secret</Message>"));
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(!chain.contains('<'), "{chain}");
        assert!(!chain.contains("secret"), "{chain}");
    }
}
