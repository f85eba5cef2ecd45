//! SAML 2.0 Response validation (HTTP-POST binding): the one place that decides whether a
//! SAMLResponse from the configured IdP is genuine and addressed to us.
//!
//! Order matters and is security relevant:
//! 1. size limit on the base64 text, before decoding;
//! 2. base64, UTF-8, then a textual refusal of `<!DOCTYPE` / `<!ENTITY` before any parsing (and
//!    the parser forbids DTDs as well);
//! 3. structure: a `samlp:Response` root with exactly one `saml:Assertion` in the whole document,
//!    as its direct child (a second assertion anywhere, or an `EncryptedAssertion`, is refused:
//!    this alone defeats the signature-wrapping variants that keep the signed original around);
//! 4. at most two `ds:Signature`s, each with allowed algorithms (RSA-SHA256+ or ECDSA with
//!    SHA-256+, SHA-256+ digests, C14N/enveloped transforms only) and exactly one `#id`
//!    Reference to the element that envelops it (the SAML profile), then
//!    bergshamra-dsig verifies them all against the configured certificates only (KeyInfo keys
//!    are never trusted; strict reference positions); one invalid signature refuses the response;
//! 5. the assertion read below must be the very DOM node a valid Reference resolved to, or the
//!    document element (the Response) must be that node;
//! 6. only then are Issuer, Destination, IssueInstant (of the Response and of the Assertion:
//!    not later than now + skew, not older than the maximum age + skew), Conditions, Audience,
//!    SubjectConfirmation (exactly one, bearer), InResponseTo, NameID and attributes read, from
//!    that node. Texts are read strictly: an element whose content is anything but text (a
//!    comment, an element) is refused, so a comment injected after signing cannot truncate a
//!    NameID.
//!
//! Errors are fixed strings: nothing from the XML (names, values, the verifier's reasons, which
//! may quote URIs) ever reaches them. This module does no I/O, no logging and no replay checks
//! (the caller owns the replay cache).

use std::time::{Duration, SystemTime};

use base64::Engine;
use bergshamra_core::algorithm as alg;
use bergshamra_dsig::{DsigContext, VerifyResult};
use bergshamra_keys::KeysManager;
use uppsala::{Document, NodeId, NodeKind};

use crate::civil_time;

/// Largest accepted base64 SAMLResponse, checked before decoding.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Deepest element nesting the parser accepts; real responses nest about 10 deep.
const MAX_XML_DEPTH: u32 = 64;

const NS_PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
const NS_ASSERTION: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
const NS_DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const STATUS_PREFIX: &str = "urn:oasis:names:tc:SAML:2.0:status:";
const CM_BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";
const ATTR_ROLE: &str = "https://aws.amazon.com/SAML/Attributes/Role";
const ATTR_SESSION_DURATION: &str = "https://aws.amazon.com/SAML/Attributes/SessionDuration";
const ATTR_ROLE_SESSION_NAME: &str = "https://aws.amazon.com/SAML/Attributes/RoleSessionName";

/// SignatureMethod algorithms accepted: RSA PKCS#1 v1.5 and ECDSA with SHA-2 (no SHA-1, no
/// SHA-224, no HMAC, no DSA).
const SIGNATURE_ALGORITHMS: &[&str] = &[
    alg::RSA_SHA256,
    alg::RSA_SHA384,
    alg::RSA_SHA512,
    alg::ECDSA_SHA256,
    alg::ECDSA_SHA384,
    alg::ECDSA_SHA512,
];
const DIGEST_ALGORITHMS: &[&str] = &[alg::SHA256, alg::SHA384, alg::SHA512];
const C14N_ALGORITHMS: &[&str] = &[
    alg::EXC_C14N,
    alg::EXC_C14N_WITH_COMMENTS,
    alg::C14N,
    alg::C14N_WITH_COMMENTS,
    alg::C14N11,
    alg::C14N11_WITH_COMMENTS,
];

/// What the SP trusts about its one IdP.
#[derive(Debug, Clone)]
pub struct IdpTrust {
    /// Expected `<Issuer>` of the Response (when present) and of the Assertion.
    pub entity_id: String,
    /// DER X.509 certificates; any one may verify (rotation). Only their public keys are used:
    /// validity dates and chains are not checked (IdP signing certificates are commonly
    /// self-signed and long expired; trust comes from configuration).
    pub certificates: Vec<Vec<u8>>,
    /// Expected `<Audience>` (the SP entity id).
    pub audience: String,
    /// Expected SubjectConfirmationData `Recipient` and Response `Destination` (the ACS URL).
    pub recipient: String,
    pub clock_skew: Duration,
    /// Oldest IssueInstant accepted (plus the skew), on the Response and on the Assertion.
    pub max_response_age: Duration,
    pub allow_idp_initiated: bool,
}

/// Per-response expectations.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The ID of the AuthnRequest this response must answer; `None` for IdP-initiated login.
    pub in_response_to: Option<&'a str>,
    pub now: SystemTime,
}

/// One `https://aws.amazon.com/SAML/Attributes/Role` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePair {
    pub role_arn: String,
    pub provider_arn: String,
}

/// What a verified assertion says. Built only by [`validate`].
#[derive(Debug, Clone)]
pub struct Assertion {
    /// Assertion ID (the replay cache key).
    pub id: String,
    pub issuer: String,
    pub name_id: String,
    pub in_response_to: Option<String>,
    /// Until when (before the skew) this assertion could be accepted, the replay cache's
    /// horizon: Conditions/@NotOnOrAfter, or earlier the bearer
    /// SubjectConfirmationData/@NotOnOrAfter.
    pub not_on_or_after: SystemTime,
    /// Earliest AuthnStatement/@SessionNotOnOrAfter.
    pub session_not_on_or_after: Option<SystemTime>,
    /// Role attribute values that parse as a role ARN and a SAML provider ARN (either order);
    /// other values are dropped.
    pub roles: Vec<RolePair>,
    /// SessionDuration attribute in seconds, when present and a number.
    pub session_duration: Option<Duration>,
    pub role_session_name: Option<String>,
}

/// Why a SAML response was refused. Display strings are fixed: never XML, NameIDs or attribute
/// values.
#[derive(Debug, thiserror::Error)]
pub enum SamlError {
    #[error("SAML response too large")]
    TooLarge,
    #[error("SAML response is not base64")]
    NotBase64,
    #[error("SAML response contains a DTD or entity declaration")]
    Doctype,
    #[error("SAML response is not well-formed XML")]
    Malformed,
    /// Well-formed XML, but not a SAML 2.0 Response, or a required element or attribute is
    /// missing or unreadable.
    #[error("SAML response lacks a required element or attribute")]
    MissingElement,
    #[error("SAML response is not signed")]
    Unsigned,
    #[error("SAML response signature is not valid")]
    BadSignature,
    #[error("SAML response uses a weak or unsupported signature algorithm")]
    WeakAlgorithm,
    #[error("SAML assertion is not covered by a valid signature")]
    NotSigned,
    #[error("SAML response must contain exactly one assertion")]
    NotOneAssertion,
    #[error("SAML encrypted assertions are not supported")]
    EncryptedAssertion,
    #[error("SAML issuer is not the configured IdP")]
    WrongIssuer,
    #[error("SAML audience is not this service provider")]
    WrongAudience,
    #[error("SAML recipient is not this service provider's ACS URL")]
    WrongRecipient,
    #[error("SAML destination is not this service provider's ACS URL")]
    WrongDestination,
    #[error("SAML subject confirmation is not bearer")]
    NotBearer,
    /// None, or more than one, SubjectConfirmation (of any method).
    #[error("SAML subject must have exactly one subject confirmation")]
    NotOneConfirmation,
    #[error("SAML response or assertion is issued in the future")]
    IssuedInFuture,
    #[error("SAML response or assertion is older than the maximum response age")]
    TooOld,
    #[error("SAML assertion has expired")]
    Expired,
    #[error("SAML assertion is not yet valid")]
    NotYetValid,
    #[error("unsolicited SAML response (IdP-initiated login is disabled)")]
    Unsolicited,
    #[error("SAML response does not answer the pending request")]
    InResponseToMismatch,
    #[error("SAML NameID is not a single text node")]
    BadNameId,
    #[error("SAML status is not success")]
    Status(StatusKind),
    #[error("no usable IdP certificate configured")]
    NoTrustedCertificate,
    #[error("SAML request could not be built")]
    Request,
}

/// The top-level StatusCode of a non-success response (a fixed set, never the IdP's text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    Requester,
    Responder,
    VersionMismatch,
    Other,
}

impl std::fmt::Display for StatusKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StatusKind::Requester => "requester",
            StatusKind::Responder => "responder",
            StatusKind::VersionMismatch => "version mismatch",
            StatusKind::Other => "other",
        })
    }
}

impl SamlError {
    /// True for errors in the request's format (400: too large, not base64, not XML, DTD);
    /// false for refusals (401).
    pub fn is_client_format_error(&self) -> bool {
        match self {
            SamlError::TooLarge
            | SamlError::NotBase64
            | SamlError::Doctype
            | SamlError::Malformed => true,
            SamlError::MissingElement
            | SamlError::Unsigned
            | SamlError::BadSignature
            | SamlError::WeakAlgorithm
            | SamlError::NotSigned
            | SamlError::NotOneAssertion
            | SamlError::EncryptedAssertion
            | SamlError::WrongIssuer
            | SamlError::WrongAudience
            | SamlError::WrongRecipient
            | SamlError::WrongDestination
            | SamlError::NotBearer
            | SamlError::NotOneConfirmation
            | SamlError::IssuedInFuture
            | SamlError::TooOld
            | SamlError::Expired
            | SamlError::NotYetValid
            | SamlError::Unsolicited
            | SamlError::InResponseToMismatch
            | SamlError::BadNameId
            | SamlError::Status(_)
            | SamlError::NoTrustedCertificate
            | SamlError::Request => false,
        }
    }
}

/// Whether `der` is an X.509 certificate whose key [`validate`] can verify with (RSA, or EC
/// P-256/P-384/P-521). For config validation: an unusable certificate never verifies anything.
pub fn certificate_is_usable(der: &[u8]) -> bool {
    bergshamra_keys::loader::load_x509_cert_der(der).is_ok_and(|key| {
        matches!(
            key.algorithm_name(),
            "RSA" | "EC-P256" | "EC-P384" | "EC-P521"
        )
    })
}

/// Verify and read the base64 SAMLResponse. Returns the assertion read from the SAME DOM node
/// the signature covered. Does not consult the replay cache (the caller does, with
/// [`Assertion::id`] until [`Assertion::not_on_or_after`]).
///
/// STS wants the whole base64 SAMLResponse as received, so the caller forwards its input.
pub fn validate(
    saml_response_b64: &str,
    trust: &IdpTrust,
    expect: &Expect<'_>,
) -> Result<Assertion, SamlError> {
    let xml = decode(saml_response_b64)?;
    let doc = parse(&xml)?;

    let response = doc.document_element().ok_or(SamlError::Malformed)?;
    if !is(&doc, response, NS_PROTOCOL, "Response")
        || attr(&doc, response, "Version") != Some("2.0")
    {
        return Err(SamlError::MissingElement);
    }
    // A failed login is reported as such even when the IdP did not sign it; it grants nothing.
    check_status(&doc, response)?;
    let assertion = the_one_assertion(&doc, response)?;

    check_signature_shapes(&doc)?;
    let response_signed = verify_signatures(&doc, response, assertion, trust)?;
    // SAML 2.0 core 3.2.2: a signed Response must name its Destination (checked below when
    // present, whether signed or not).
    if response_signed && attr(&doc, response, "Destination").is_none() {
        return Err(SamlError::WrongDestination);
    }

    // From here on, `assertion` is signed (directly or through the Response).
    read_response(&doc, response, assertion, trust, expect)
}

/// Base64 (whitespace tolerated: form posts wrap lines) to UTF-8 text, refusing DTDs textually.
fn decode(b64: &str) -> Result<String, SamlError> {
    if b64.len() > MAX_RESPONSE_BYTES {
        return Err(SamlError::TooLarge);
    }
    let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| SamlError::NotBase64)?;
    // UTF-8 only: a UTF-16 document would slip past the textual DTD check below.
    let xml = String::from_utf8(bytes).map_err(|_| SamlError::Malformed)?;
    if contains_ignore_ascii_case(&xml, "<!DOCTYPE") || contains_ignore_ascii_case(&xml, "<!ENTITY")
    {
        return Err(SamlError::Doctype);
    }
    Ok(xml)
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn parse(xml: &str) -> Result<Document<'_>, SamlError> {
    uppsala::Parser::new()
        .with_forbid_dtd(true)
        .with_forbid_entities(true)
        .with_max_depth(MAX_XML_DEPTH)
        .parse(xml)
        .map_err(|_| SamlError::Malformed)
}

fn check_status(doc: &Document<'_>, response: NodeId) -> Result<(), SamlError> {
    let status = one_child(doc, response, NS_PROTOCOL, "Status")?;
    let code = one_child(doc, status, NS_PROTOCOL, "StatusCode")?;
    let value = attr(doc, code, "Value").ok_or(SamlError::MissingElement)?;
    match value.strip_prefix(STATUS_PREFIX) {
        Some("Success") => Ok(()),
        Some("Requester") => Err(SamlError::Status(StatusKind::Requester)),
        Some("Responder") => Err(SamlError::Status(StatusKind::Responder)),
        Some("VersionMismatch") => Err(SamlError::Status(StatusKind::VersionMismatch)),
        _ => Err(SamlError::Status(StatusKind::Other)),
    }
}

/// Exactly one Assertion element in the whole document (any namespace, any depth), and it is a
/// direct child of the Response.
fn the_one_assertion(doc: &Document<'_>, response: NodeId) -> Result<NodeId, SamlError> {
    let mut found = None;
    let mut count = 0usize;
    for node in doc.descendants(doc.root()) {
        let Some(element) = doc.element(node) else {
            continue;
        };
        match element.name.local_name.as_ref() {
            "Assertion" => {
                count += 1;
                found = Some(node);
            }
            "EncryptedAssertion" => return Err(SamlError::EncryptedAssertion),
            _ => {}
        }
    }
    match found {
        Some(node)
            if count == 1
                && is(doc, node, NS_ASSERTION, "Assertion")
                && doc.parent(node) == Some(response) =>
        {
            Ok(node)
        }
        _ => Err(SamlError::NotOneAssertion),
    }
}

/// At most two `ds:Signature`s anywhere in the document, each with allowed algorithms and one
/// same-document `#id` reference to its parent element, with C14N/enveloped transforms only. Checked before verification so that
/// no XPath/XSLT transform runs and no Reference resolves outside the document.
fn check_signature_shapes(doc: &Document<'_>) -> Result<(), SamlError> {
    let mut signatures = 0usize;
    for signature in doc.descendants(doc.root()) {
        if !is(doc, signature, NS_DSIG, "Signature") {
            continue;
        }
        signatures += 1;
        let signed_info = one_child(doc, signature, NS_DSIG, "SignedInfo")
            .map_err(|_| SamlError::BadSignature)?;
        let c14n = one_child(doc, signed_info, NS_DSIG, "CanonicalizationMethod")
            .map_err(|_| SamlError::BadSignature)?;
        if !attr(doc, c14n, "Algorithm").is_some_and(|a| C14N_ALGORITHMS.contains(&a)) {
            return Err(SamlError::BadSignature);
        }
        let method = one_child(doc, signed_info, NS_DSIG, "SignatureMethod")
            .map_err(|_| SamlError::BadSignature)?;
        if !attr(doc, method, "Algorithm").is_some_and(|a| SIGNATURE_ALGORITHMS.contains(&a)) {
            return Err(SamlError::WeakAlgorithm);
        }
        // SAML profile (saml-core 5.4): one Reference, to the ID of the element that
        // envelops the signature. A detached or multi-reference signature is refused.
        let references = children(doc, signed_info, NS_DSIG, "Reference");
        let [reference] = references.as_slice() else {
            return Err(SamlError::BadSignature);
        };
        let reference = *reference;
        let uri = attr(doc, reference, "URI").unwrap_or("");
        let id = uri.strip_prefix('#').unwrap_or("");
        if id.is_empty() || !id.chars().all(is_id_char) {
            return Err(SamlError::BadSignature);
        }
        let parent_id = doc.parent(signature).and_then(|p| attr(doc, p, "ID"));
        if parent_id != Some(id) {
            return Err(SamlError::BadSignature);
        }
        let digest = one_child(doc, reference, NS_DSIG, "DigestMethod")
            .map_err(|_| SamlError::BadSignature)?;
        if !attr(doc, digest, "Algorithm").is_some_and(|a| DIGEST_ALGORITHMS.contains(&a)) {
            return Err(SamlError::WeakAlgorithm);
        }
        for transforms in children(doc, reference, NS_DSIG, "Transforms") {
            for transform in doc.children_iter(transforms) {
                if doc.element(transform).is_none() {
                    continue;
                }
                let allowed = is(doc, transform, NS_DSIG, "Transform")
                    && attr(doc, transform, "Algorithm").is_some_and(|a| {
                        a == alg::ENVELOPED_SIGNATURE || C14N_ALGORITHMS.contains(&a)
                    });
                if !allowed {
                    return Err(SamlError::BadSignature);
                }
            }
        }
    }
    match signatures {
        0 => Err(SamlError::Unsigned),
        // At most the Response's and the Assertion's: bounds the verification work.
        1 | 2 => Ok(()),
        _ => Err(SamlError::BadSignature),
    }
}

/// NCName characters (an XML ID); rules out XPointer expressions and other URI forms.
fn is_id_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// Verify every signature against the configured keys only; refuse when any is invalid or
/// none covers the assertion (directly, or through the document element).
fn verify_signatures(
    doc: &Document<'_>,
    response: NodeId,
    assertion: NodeId,
    trust: &IdpTrust,
) -> Result<bool, SamlError> {
    let mut keys = KeysManager::new();
    for der in &trust.certificates {
        if let Ok(key) = bergshamra_keys::loader::load_x509_cert_der(der) {
            keys.add_key(key);
        }
    }
    if keys.is_empty() {
        return Err(SamlError::NoTrustedCertificate);
    }
    // `new` = trusted_keys_only (KeyInfo never supplies a key) + strict reference positions
    // + every Reference digest computed locally.
    let ctx = DsigContext::new(keys);
    let results = bergshamra_dsig::verify::verify_all_document(&ctx, doc)
        .map_err(|_| SamlError::BadSignature)?;
    let mut covered = false;
    let mut response_signed = false;
    for result in results {
        match result {
            VerifyResult::Valid { references, .. } => {
                covered |= references.iter().any(|r| {
                    r.digest_verified
                        && (r.resolved_node == Some(assertion) || r.resolved_node == Some(response))
                });
                response_signed |= references
                    .iter()
                    .any(|r| r.digest_verified && r.resolved_node == Some(response));
            }
            VerifyResult::Invalid { .. } => return Err(SamlError::BadSignature),
        }
    }
    if covered {
        Ok(response_signed)
    } else {
        Err(SamlError::NotSigned)
    }
}

fn read_response(
    doc: &Document<'_>,
    response: NodeId,
    assertion: NodeId,
    trust: &IdpTrust,
    expect: &Expect<'_>,
) -> Result<Assertion, SamlError> {
    // Response envelope (signed or not; a forged envelope can only make us refuse).
    if let Some(issuer) = opt_child(doc, response, NS_ASSERTION, "Issuer")?
        && text(doc, issuer)? != trust.entity_id
    {
        return Err(SamlError::WrongIssuer);
    }
    if attr(doc, response, "Destination").is_some_and(|d| d != trust.recipient) {
        return Err(SamlError::WrongDestination);
    }
    let response_irt = attr(doc, response, "InResponseTo");
    let now = expect.now;
    check_issue_instant(doc, response, trust, now)?;

    // The assertion.
    let id = attr(doc, assertion, "ID")
        .filter(|id| !id.is_empty())
        .ok_or(SamlError::MissingElement)?;
    if attr(doc, assertion, "Version") != Some("2.0") {
        return Err(SamlError::MissingElement);
    }
    let issuer = text(doc, one_child(doc, assertion, NS_ASSERTION, "Issuer")?)?;
    if issuer != trust.entity_id {
        return Err(SamlError::WrongIssuer);
    }
    check_issue_instant(doc, assertion, trust, now)?;

    let skew = trust.clock_skew;
    let conditions = one_child(doc, assertion, NS_ASSERTION, "Conditions")?;
    check_not_before(attr_time(doc, conditions, "NotBefore")?, now, skew)?;
    let conditions_end = attr_time(doc, conditions, "NotOnOrAfter")?;
    check_not_on_or_after(conditions_end, now, skew)?;
    check_audience(doc, conditions, &trust.audience)?;

    let subject = one_child(doc, assertion, NS_ASSERTION, "Subject")?;
    let confirmation = the_bearer_confirmation(doc, subject, trust, expect, response_irt)?;
    let name_id = text(doc, one_child(doc, subject, NS_ASSERTION, "NameID")?)
        .map_err(|_| SamlError::BadNameId)?;
    if name_id.is_empty() {
        return Err(SamlError::BadNameId);
    }

    let mut session_not_on_or_after: Option<SystemTime> = None;
    for statement in children(doc, assertion, NS_ASSERTION, "AuthnStatement") {
        if let Some(end) = attr_time(doc, statement, "SessionNotOnOrAfter")? {
            check_not_on_or_after(Some(end), now, skew)?;
            session_not_on_or_after = Some(session_not_on_or_after.map_or(end, |e| e.min(end)));
        }
    }

    let mut roles = Vec::new();
    let mut session_duration = None;
    let mut role_session_name = None;
    for statement in children(doc, assertion, NS_ASSERTION, "AttributeStatement") {
        for attribute in children(doc, statement, NS_ASSERTION, "Attribute") {
            let values = || children(doc, attribute, NS_ASSERTION, "AttributeValue");
            match attr(doc, attribute, "Name") {
                Some(ATTR_ROLE) => {
                    for value in values() {
                        if let Some(pair) = role_pair(&text(doc, value)?) {
                            roles.push(pair);
                        }
                    }
                }
                Some(ATTR_SESSION_DURATION) => {
                    if let Some(value) = values().first() {
                        session_duration = text(doc, *value)?
                            .parse::<u64>()
                            .ok()
                            .map(Duration::from_secs);
                    }
                }
                Some(ATTR_ROLE_SESSION_NAME) => {
                    if let Some(value) = values().first() {
                        role_session_name = Some(text(doc, *value)?);
                    }
                }
                _ => {}
            }
        }
    }

    let not_on_or_after = match conditions_end {
        Some(end) => end.min(confirmation.not_on_or_after),
        None => confirmation.not_on_or_after,
    };
    Ok(Assertion {
        id: id.to_owned(),
        issuer,
        name_id,
        in_response_to: confirmation.in_response_to,
        not_on_or_after,
        session_not_on_or_after,
        roles,
        session_duration,
        role_session_name,
    })
}

/// `IssueInstant` (required on the Response and on the Assertion, SAML core 3.2.2 and 2.3.3):
/// not later than now + skew, and not older than now - (max age + skew).
fn check_issue_instant(
    doc: &Document<'_>,
    node: NodeId,
    trust: &IdpTrust,
    now: SystemTime,
) -> Result<(), SamlError> {
    let issued = attr_time(doc, node, "IssueInstant")?.ok_or(SamlError::MissingElement)?;
    if now
        .checked_add(trust.clock_skew)
        .is_none_or(|latest| issued > latest)
    {
        return Err(SamlError::IssuedInFuture);
    }
    let oldest = trust
        .max_response_age
        .checked_add(trust.clock_skew)
        .and_then(|age| now.checked_sub(age));
    if oldest.is_some_and(|oldest| issued < oldest) {
        return Err(SamlError::TooOld);
    }
    Ok(())
}

fn check_not_before(
    not_before: Option<SystemTime>,
    now: SystemTime,
    skew: Duration,
) -> Result<(), SamlError> {
    match not_before {
        Some(start) if now.checked_add(skew).is_some_and(|late| late < start) => {
            Err(SamlError::NotYetValid)
        }
        _ => Ok(()),
    }
}

fn check_not_on_or_after(
    end: Option<SystemTime>,
    now: SystemTime,
    skew: Duration,
) -> Result<(), SamlError> {
    match end {
        Some(end) if end.checked_add(skew).is_none_or(|end| now >= end) => Err(SamlError::Expired),
        _ => Ok(()),
    }
}

/// Every AudienceRestriction must name us (SAML core 2.5.1.4); at least one must exist.
fn check_audience(doc: &Document<'_>, conditions: NodeId, audience: &str) -> Result<(), SamlError> {
    let restrictions = children(doc, conditions, NS_ASSERTION, "AudienceRestriction");
    if restrictions.is_empty() {
        return Err(SamlError::WrongAudience);
    }
    for restriction in restrictions {
        let mut ours = false;
        for candidate in children(doc, restriction, NS_ASSERTION, "Audience") {
            ours |= text(doc, candidate)? == audience;
        }
        if !ours {
            return Err(SamlError::WrongAudience);
        }
    }
    Ok(())
}

struct Confirmation {
    not_on_or_after: SystemTime,
    in_response_to: Option<String>,
}

/// The Subject's one SubjectConfirmation, which must be bearer and fit. Several are refused
/// rather than searched for one that fits: which one would decide is then the sender's choice,
/// and the replay horizon would have to cover them all.
fn the_bearer_confirmation(
    doc: &Document<'_>,
    subject: NodeId,
    trust: &IdpTrust,
    expect: &Expect<'_>,
    response_irt: Option<&str>,
) -> Result<Confirmation, SamlError> {
    let confirmations = children(doc, subject, NS_ASSERTION, "SubjectConfirmation");
    let [confirmation] = confirmations.as_slice() else {
        return Err(SamlError::NotOneConfirmation);
    };
    if attr(doc, *confirmation, "Method") != Some(CM_BEARER) {
        return Err(SamlError::NotBearer);
    }
    check_confirmation(doc, *confirmation, trust, expect, response_irt)
}

fn check_confirmation(
    doc: &Document<'_>,
    confirmation: NodeId,
    trust: &IdpTrust,
    expect: &Expect<'_>,
    response_irt: Option<&str>,
) -> Result<Confirmation, SamlError> {
    let data = one_child(doc, confirmation, NS_ASSERTION, "SubjectConfirmationData")?;
    if attr(doc, data, "Recipient") != Some(trust.recipient.as_str()) {
        return Err(SamlError::WrongRecipient);
    }
    check_not_before(
        attr_time(doc, data, "NotBefore")?,
        expect.now,
        trust.clock_skew,
    )?;
    // Bearer confirmations must carry an end (SAML profiles 4.1.4.2).
    let end = attr_time(doc, data, "NotOnOrAfter")?.ok_or(SamlError::MissingElement)?;
    check_not_on_or_after(Some(end), expect.now, trust.clock_skew)?;

    let assertion_irt = attr(doc, data, "InResponseTo");
    match expect.in_response_to {
        Some(want) => {
            if assertion_irt != Some(want) || response_irt.is_some_and(|r| r != want) {
                return Err(SamlError::InResponseToMismatch);
            }
        }
        None => {
            if !trust.allow_idp_initiated {
                return Err(SamlError::Unsolicited);
            }
            // It answers a request we have no record of (another browser, a lost cookie).
            if assertion_irt.is_some() || response_irt.is_some() {
                return Err(SamlError::InResponseToMismatch);
            }
        }
    }
    Ok(Confirmation {
        not_on_or_after: end,
        in_response_to: assertion_irt.map(str::to_owned),
    })
}

/// `role_arn,provider_arn` in either order; anything else is not a usable pair.
fn role_pair(value: &str) -> Option<RolePair> {
    let (a, b) = value.split_once(',')?;
    let (a, b) = (a.trim(), b.trim());
    let is_role = |s: &str| s.starts_with("arn:") && s.contains(":role/");
    let is_provider = |s: &str| s.starts_with("arn:") && s.contains(":saml-provider/");
    let (role, provider) = if is_role(a) && is_provider(b) {
        (a, b)
    } else if is_provider(a) && is_role(b) {
        (b, a)
    } else {
        return None;
    };
    Some(RolePair {
        role_arn: role.to_owned(),
        provider_arn: provider.to_owned(),
    })
}

// ---- DOM helpers -------------------------------------------------------------------------

fn is(doc: &Document<'_>, node: NodeId, ns: &str, local: &str) -> bool {
    doc.element(node)
        .is_some_and(|e| e.name.local_name == local && e.name.namespace_uri.as_deref() == Some(ns))
}

/// An attribute without a namespace (a prefixed `x:Destination` is not `Destination`).
fn attr<'d>(doc: &'d Document<'_>, node: NodeId, local: &str) -> Option<&'d str> {
    doc.element(node)?
        .attributes
        .iter()
        .find(|a| a.name.namespace_uri.is_none() && a.name.local_name == local)
        .map(|a| a.value.as_ref())
}

fn attr_time(
    doc: &Document<'_>,
    node: NodeId,
    local: &str,
) -> Result<Option<SystemTime>, SamlError> {
    attr(doc, node, local)
        .map(|v| parse_instant(v).ok_or(SamlError::MissingElement))
        .transpose()
}

fn children(doc: &Document<'_>, node: NodeId, ns: &str, local: &str) -> Vec<NodeId> {
    doc.children_iter(node)
        .filter(|&c| is(doc, c, ns, local))
        .collect()
}

fn one_child(doc: &Document<'_>, node: NodeId, ns: &str, local: &str) -> Result<NodeId, SamlError> {
    opt_child(doc, node, ns, local)?.ok_or(SamlError::MissingElement)
}

/// At most one such child; two are refused rather than picking one.
fn opt_child(
    doc: &Document<'_>,
    node: NodeId,
    ns: &str,
    local: &str,
) -> Result<Option<NodeId>, SamlError> {
    let mut found = doc.children_iter(node).filter(|&c| is(doc, c, ns, local));
    let first = found.next();
    if found.next().is_some() {
        return Err(SamlError::MissingElement);
    }
    Ok(first)
}

/// The element's text, trimmed, when its children are text or CDATA only. A comment, a
/// processing instruction or an element inside is refused: C14N drops comments, so one
/// injected after signing must not change what we read.
fn text(doc: &Document<'_>, node: NodeId) -> Result<String, SamlError> {
    let mut out = String::new();
    for child in doc.children_iter(node) {
        match doc.node_kind(child) {
            Some(NodeKind::Text(t) | NodeKind::CData(t)) => out.push_str(t),
            _ => return Err(SamlError::MissingElement),
        }
    }
    Ok(out.trim().to_owned())
}

/// xs:dateTime as SAML uses it: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|(+|-)HH:MM)`.
fn parse_instant(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num_in(s, 0..4)?, num_in(s, 5..7)?, num_in(s, 8..10)?);
    let (hour, minute, second) = (num_in(s, 11..13)?, num_in(s, 14..16)?, num_in(s, 17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut nanos: u32 = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut scale = 100_000_000u32;
        for d in fraction.bytes().take(digits.min(9)) {
            nanos += u32::from(d - b'0') * scale;
            scale /= 10;
        }
        rest = fraction.get(digits..)?;
    }
    let offset_secs = match rest {
        "Z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let (h, m) = (num_in(rest, 1..3)?, num_in(rest, 4..6)?);
            if h > 14 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let days =
        civil_time::days_from_civil(year, u32::try_from(month).ok()?, u32::try_from(day).ok()?);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let base = if secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))?
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?
    };
    base.checked_add(Duration::from_nanos(u64::from(nanos)))
}

fn num_in(s: &str, range: std::ops::Range<usize>) -> Option<i64> {
    let part = s.get(range)?;
    if part.bytes().all(|c| c.is_ascii_digit()) {
        part.parse().ok()
    } else {
        None
    }
}

/// Format a time as SAML's `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds).
pub(crate) fn format_instant(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let secs = i64::try_from(secs).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_time::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn b64(xml: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(xml)
    }

    fn trust() -> IdpTrust {
        IdpTrust {
            entity_id: "https://idp".into(),
            certificates: Vec::new(),
            audience: "sp".into(),
            recipient: "https://sp/acs".into(),
            clock_skew: Duration::from_secs(60),
            max_response_age: Duration::from_secs(300),
            allow_idp_initiated: false,
        }
    }

    fn run(b64: &str) -> Result<Assertion, SamlError> {
        validate(
            b64,
            &trust(),
            &Expect {
                in_response_to: Some("_r"),
                now: SystemTime::UNIX_EPOCH,
            },
        )
    }

    #[test]
    fn instants_parse_in_utc_with_fractions_and_offsets() {
        let t = |s| parse_instant(s).map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        assert_eq!(t("1970-01-01T00:00:00Z"), Some(Duration::ZERO));
        assert_eq!(
            t("2023-11-14T22:13:20Z"),
            Some(Duration::from_secs(1_700_000_000))
        );
        assert_eq!(
            t("2023-11-14T22:13:20.250Z"),
            Some(Duration::from_millis(1_700_000_000_250))
        );
        assert_eq!(
            t("2023-11-15T00:13:20+02:00"),
            Some(Duration::from_secs(1_700_000_000))
        );
        for bad in [
            "2023-11-14 22:13:20Z",
            "2023-11-14T22:13:20",
            "2023-13-14T22:13:20Z",
            "2023-11-14T22:13:20.Z",
            "+2023-11-14T22:13:20Z",
            "2023-11-14T22:13:2xZ",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn format_instant_round_trips_through_parse_instant() {
        for secs in [0u64, 951_782_400, 1_700_000_000, 4_102_444_800] {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(parse_instant(&format_instant(t)), Some(t), "{secs}");
        }
        assert_eq!(
            format_instant(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn issue_instant_is_bounded_by_the_skew_ahead_and_the_max_age_plus_skew_behind() {
        // skew 60 s, max age 300 s.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let check = |attr: String| {
            let xml = format!("<r{attr}/>");
            let doc = parse(&xml).unwrap();
            let root = doc.document_element().unwrap();
            check_issue_instant(&doc, root, &trust(), now)
        };
        let at = |offset: i64| {
            let t = if offset >= 0 {
                now + Duration::from_secs(offset.unsigned_abs())
            } else {
                now - Duration::from_secs(offset.unsigned_abs())
            };
            check(format!(r#" IssueInstant="{}""#, format_instant(t)))
        };
        for ok in [0, 60, -360, -100] {
            assert!(at(ok).is_ok(), "{ok}");
        }
        assert!(matches!(at(61), Err(SamlError::IssuedInFuture)));
        assert!(matches!(at(-361), Err(SamlError::TooOld)));
        for bad in ["", r#" IssueInstant="""#, r#" IssueInstant="soon""#] {
            assert!(
                matches!(check(bad.into()), Err(SamlError::MissingElement)),
                "{bad}"
            );
        }
    }

    #[test]
    fn role_pairs_are_read_in_either_order_and_junk_is_dropped() {
        let role = "arn:aws:iam::123456789012:role/Labeler";
        let provider = "arn:aws:iam::123456789012:saml-provider/Corp";
        let want = Some(RolePair {
            role_arn: role.into(),
            provider_arn: provider.into(),
        });
        assert_eq!(role_pair(&format!("{role},{provider}")), want);
        assert_eq!(role_pair(&format!("{provider}, {role}")), want);
        assert_eq!(role_pair(role), None);
        assert_eq!(role_pair(&format!("{role},{role}")), None);
        assert_eq!(role_pair("a,b"), None);
    }

    #[test]
    fn size_limit_applies_to_the_base64_text_before_decoding() {
        let huge = "A".repeat(MAX_RESPONSE_BYTES + 1);
        assert!(matches!(run(&huge), Err(SamlError::TooLarge)));
        assert!(matches!(run("not base64!"), Err(SamlError::NotBase64)));
    }

    #[test]
    fn doctype_and_entities_are_refused_before_parsing_in_any_case() {
        for xml in [
            "<!DOCTYPE r><r/>",
            "<!doctype r><r/>",
            "<r><!ENTITY x 'y'></r>",
            "<?xml version=\"1.0\"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><r>&x;</r>",
        ] {
            assert!(matches!(run(&b64(xml)), Err(SamlError::Doctype)), "{xml}");
        }
    }

    #[test]
    fn non_utf8_and_broken_xml_are_malformed_client_errors() {
        let utf16: Vec<u8> = "<r/>".encode_utf16().flat_map(u16::to_le_bytes).collect();
        let e = run(&base64::engine::general_purpose::STANDARD.encode(utf16)).unwrap_err();
        assert!(matches!(e, SamlError::Malformed) && e.is_client_format_error());
        assert!(matches!(run(&b64("<r>")), Err(SamlError::Malformed)));
        assert!(matches!(run(&b64("<r/>")), Err(SamlError::MissingElement)));
    }

    #[test]
    fn a_response_without_signature_is_unsigned() {
        let xml = concat!(
            r#"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" "#,
            r#"xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_x" Version="2.0">"#,
            r#"<samlp:Status><samlp:StatusCode "#,
            r#"Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>"#,
            r#"<saml:Assertion ID="_a" Version="2.0"/></samlp:Response>"#
        );
        let e = run(&b64(xml)).unwrap_err();
        assert!(matches!(e, SamlError::Unsigned));
        assert!(!e.is_client_format_error());
    }

    #[test]
    fn error_messages_are_fixed_strings() {
        // Display never formats a field: no variant carries response content.
        assert_eq!(
            SamlError::BadNameId.to_string(),
            "SAML NameID is not a single text node"
        );
        assert_eq!(
            SamlError::Status(StatusKind::Responder).to_string(),
            "SAML status is not success"
        );
    }
}
