//! `bucketgate::saml::response::validate` against responses signed by an independent
//! implementation (the signxml test IdP): the valid shapes pass with the right fields, and every
//! attack in the matrix is refused for its own reason. One IdP serves the whole binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime};

use crate::support::saml::TestIdp;
use bucketgate::saml::replay::MemoryReplayCache;
use bucketgate::saml::response::{
    Assertion, Expect, IdpTrust, RolePair, SamlError, StatusKind, validate,
};
use serde_json::{Value, json};

const AUDIENCE: &str = "https://sp.test/saml";
const ACS: &str = "https://sp.test/auth/saml/acs";
const REQUEST_ID: &str = "_4f1c2a9e0b7d4c3e8a6f5b2d1c0e9f8a";
const ROLE: &str = "arn:aws:iam::123456789012:role/Labeler";
const PROVIDER: &str = "arn:aws:iam::123456789012:saml-provider/Corp";

fn idp() -> &'static TestIdp {
    TestIdp::shared()
}

fn trust() -> IdpTrust {
    IdpTrust {
        entity_id: idp().entity_id.clone(),
        certificates: vec![idp().cert_der.clone()],
        audience: AUDIENCE.to_owned(),
        recipient: ACS.to_owned(),
        clock_skew: Duration::from_secs(60),
        max_response_age: Duration::from_secs(300),
        allow_idp_initiated: false,
    }
}

/// A response for the pending request `REQUEST_ID`, with `extra` keys on top of the defaults.
fn response(extra: Value) -> String {
    let mut spec = json!({
        "audience": AUDIENCE,
        "recipient": ACS,
        "in_response_to": REQUEST_ID,
        "roles": [[ROLE, PROVIDER]],
    });
    for (k, v) in extra.as_object().expect("object") {
        spec[k] = v.clone();
    }
    idp().response_blocking(&spec)
}

fn check_with(
    b64: &str,
    trust: &IdpTrust,
    in_response_to: Option<&str>,
) -> Result<Assertion, SamlError> {
    validate(
        b64,
        trust,
        &Expect {
            in_response_to,
            now: SystemTime::now(),
        },
    )
}

fn check(b64: &str) -> Result<Assertion, SamlError> {
    check_with(b64, &trust(), Some(REQUEST_ID))
}

/// Refused, for a 401 (not a client format error), with a message free of response content.
fn refused(b64: &str) -> SamlError {
    let err = check(b64).expect_err("the response must be refused");
    assert_no_content(&err);
    err
}

fn assert_no_content(err: &SamlError) {
    let shown = format!("{err} {err:?}");
    for secret in ["@", "arn:", "admin", "evil", "<", "127.0.0.1"] {
        assert!(
            !shown.contains(secret),
            "error text {shown:?} shows {secret:?}"
        );
    }
}

fn secs_from_now(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

#[test]
fn valid_signed_assertion_yields_its_fields() {
    let b64 = response(json!({
        "name_id": "ada@corp.example",
        "assertion_id": "_a0b1c2d3e4f5",
        "roles": [[ROLE, PROVIDER], [PROVIDER, "arn:aws:iam::123456789012:role/Reviewer"]],
        "session_duration": 3600,
        "role_session_name": "ada",
        "not_on_or_after_offset": 300,
        "scd_not_on_or_after_offset": 200,
        "session_not_on_or_after_offset": 7200,
    }));
    let a = check(&b64).expect("valid response");
    assert_eq!(a.id, "_a0b1c2d3e4f5");
    assert_eq!(a.issuer, idp().entity_id);
    assert_eq!(a.name_id, "ada@corp.example");
    assert_eq!(a.in_response_to.as_deref(), Some(REQUEST_ID));
    assert_eq!(
        a.roles,
        vec![
            RolePair {
                role_arn: ROLE.into(),
                provider_arn: PROVIDER.into()
            },
            RolePair {
                role_arn: "arn:aws:iam::123456789012:role/Reviewer".into(),
                provider_arn: PROVIDER.into()
            },
        ]
    );
    assert_eq!(a.session_duration, Some(Duration::from_secs(3600)));
    assert_eq!(a.role_session_name.as_deref(), Some("ada"));
    // The earlier of Conditions (300 s) and SubjectConfirmationData (200 s).
    assert!(
        (195..=200).contains(&secs_from_now(a.not_on_or_after)),
        "{:?}",
        a.not_on_or_after
    );
    let session = a.session_not_on_or_after.expect("SessionNotOnOrAfter");
    assert!((7195..=7200).contains(&secs_from_now(session)));
}

#[test]
fn response_level_and_double_signatures_are_accepted() {
    for sign in ["response", "both"] {
        let a = check(&response(
            json!({ "sign": sign, "name_id": "bo@corp.example" }),
        ))
        .unwrap_or_else(|e| panic!("sign={sign}: {e:?}"));
        assert_eq!(a.name_id, "bo@corp.example");
    }
}

#[test]
fn ecdsa_p256_signature_is_accepted() {
    let mut trust = trust();
    trust.certificates = vec![idp().ec_cert_der.clone()];
    let a = check_with(&response(json!({ "key": "ec" })), &trust, Some(REQUEST_ID)).expect("ECDSA");
    assert_eq!(a.name_id, "user@corp.example");
}

#[test]
fn rotation_either_configured_certificate_verifies() {
    let mut trust = trust();
    trust.certificates = vec![idp().cert_der.clone(), idp().secondary_cert_der.clone()];
    for key in ["secondary", "primary"] {
        check_with(&response(json!({ "key": key })), &trust, Some(REQUEST_ID))
            .unwrap_or_else(|e| panic!("key={key}: {e:?}"));
    }
}

#[test]
fn signature_by_an_unconfigured_key_is_refused_even_with_its_cert_in_keyinfo() {
    // signxml embeds the signing certificate in KeyInfo; it must not be trusted.
    assert!(matches!(
        refused(&response(json!({ "key": "secondary" }))),
        SamlError::BadSignature
    ));
}

#[test]
fn idp_certificates_are_usable_and_junk_is_not() {
    use bucketgate::saml::response::certificate_is_usable;
    assert!(certificate_is_usable(&idp().cert_der));
    assert!(certificate_is_usable(&idp().ec_cert_der));
    assert!(!certificate_is_usable(b"not a certificate"));
    assert!(!certificate_is_usable(&idp().cert_der[..100]));
}

#[test]
fn no_usable_configured_certificate_is_refused() {
    let mut trust = trust();
    trust.certificates = vec![b"not a certificate".to_vec()];
    let err = check_with(&response(json!({})), &trust, Some(REQUEST_ID)).unwrap_err();
    assert!(matches!(err, SamlError::NoTrustedCertificate));
}

#[test]
fn assertion_tampered_after_signing_is_refused() {
    assert!(matches!(
        refused(&response(json!({ "case": "tampered" }))),
        SamlError::BadSignature
    ));
}

#[test]
fn unsigned_response_is_refused() {
    assert!(matches!(
        refused(&response(json!({ "case": "unsigned" }))),
        SamlError::Unsigned
    ));
}

#[test]
fn second_assertion_next_to_the_signed_one_is_refused() {
    for case in ["two_assertions", "xsw_sibling"] {
        let err = refused(&response(json!({ "case": case })));
        assert!(matches!(err, SamlError::NotOneAssertion), "{case}: {err:?}");
    }
}

#[test]
fn signed_assertion_moved_into_extensions_or_object_is_refused() {
    for case in ["xsw_extensions", "xsw_object"] {
        let err = refused(&response(json!({ "case": case })));
        assert!(matches!(err, SamlError::NotOneAssertion), "{case}: {err:?}");
    }
}

#[test]
fn signed_response_wrapped_in_an_evil_response_is_refused() {
    let err = refused(&response(
        json!({ "case": "xsw_wrapped_response", "sign": "response" }),
    ));
    assert!(matches!(err, SamlError::NotOneAssertion), "{err:?}");
    // Without a second assertion: the one assertion is then not a child of the Response we
    // would read (and the only signature covers the inner Response, not that one).
    let err = refused(&response(
        json!({ "case": "xsw_wrapped_response_only", "sign": "response" }),
    ));
    assert!(matches!(err, SamlError::NotOneAssertion), "{err:?}");
}

#[test]
fn valid_signature_over_another_element_does_not_sign_the_assertion() {
    let err = refused(&response(
        json!({ "case": "signed_fragment", "sign": "none" }),
    ));
    assert!(matches!(err, SamlError::NotSigned), "{err:?}");
}

#[test]
fn signature_beside_instead_of_inside_the_assertion_is_refused() {
    // XML-DSig alone accepts a detached sibling signature; the SAML profile does not.
    let err = refused(&response(json!({ "case": "detached_signature" })));
    assert!(matches!(err, SamlError::BadSignature), "{err:?}");
}

#[test]
fn comment_injected_name_id_is_refused_not_truncated() {
    // The IdP signed `user@corp.com.evil.com`; a comment after `user@corp.com` keeps the
    // signature valid (C14N drops comments) and would truncate a naive first-text-node read.
    let name = "user@corp.com.evil.com";
    let err = refused(&response(
        json!({ "case": "comment_name_id", "name_id": name, "comment_at": 13 }),
    ));
    assert!(matches!(err, SamlError::BadNameId), "{err:?}");
    // The same name without the comment is read whole.
    let a = check(&response(json!({ "name_id": name }))).unwrap();
    assert_eq!(a.name_id, name);
}

#[test]
fn wrong_audience_is_refused() {
    let err = refused(&response(
        json!({ "audience": "https://other-sp.test/saml" }),
    ));
    assert!(matches!(err, SamlError::WrongAudience), "{err:?}");
}

#[test]
fn wrong_recipient_is_refused() {
    let err = refused(&response(
        json!({ "recipient": "https://evil.example/acs", "destination": ACS }),
    ));
    assert!(matches!(err, SamlError::WrongRecipient), "{err:?}");
}

#[test]
fn wrong_destination_is_refused() {
    let err = refused(&response(
        json!({ "destination": "https://evil.example/acs" }),
    ));
    assert!(matches!(err, SamlError::WrongDestination), "{err:?}");
}

#[test]
fn signed_response_without_destination_is_refused_but_an_unsigned_envelope_may_omit_it() {
    let err = refused(&response(
        json!({ "destination": null, "sign": "response" }),
    ));
    assert!(matches!(err, SamlError::WrongDestination), "{err:?}");
    check(&response(
        json!({ "destination": null, "sign": "assertion" }),
    ))
    .expect("only the assertion is signed; Recipient is still checked");
}

#[test]
fn wrong_issuer_is_refused_on_the_assertion_and_on_the_response() {
    let err = refused(&response(json!({ "issuer": "https://evil.example/idp" })));
    assert!(matches!(err, SamlError::WrongIssuer), "{err:?}");
    let err = refused(&response(
        json!({ "response_issuer": "https://evil.example/idp" }),
    ));
    assert!(matches!(err, SamlError::WrongIssuer), "{err:?}");
}

#[test]
fn expired_assertion_is_refused_beyond_the_clock_skew_only() {
    let err = refused(&response(json!({ "not_on_or_after_offset": -120 })));
    assert!(matches!(err, SamlError::Expired), "{err:?}");
    // 30 s late is inside the 60 s skew.
    check(&response(json!({ "not_on_or_after_offset": -30 }))).expect("within skew");
}

#[test]
fn expired_subject_confirmation_or_session_is_refused() {
    let err = refused(&response(json!({ "scd_not_on_or_after_offset": -120 })));
    assert!(matches!(err, SamlError::Expired), "{err:?}");
    let err = refused(&response(json!({ "session_not_on_or_after_offset": -120 })));
    assert!(matches!(err, SamlError::Expired), "{err:?}");
}

#[test]
fn not_yet_valid_assertion_is_refused_beyond_the_clock_skew_only() {
    let err = refused(&response(json!({ "not_before_offset": 300 })));
    assert!(matches!(err, SamlError::NotYetValid), "{err:?}");
    check(&response(json!({ "not_before_offset": 30 }))).expect("within skew");
}

#[test]
fn response_to_another_request_is_refused() {
    let err = refused(&response(
        json!({ "in_response_to": "_someone_elses_request" }),
    ));
    assert!(matches!(err, SamlError::InResponseToMismatch), "{err:?}");
}

#[test]
fn unsolicited_response_is_refused_unless_idp_initiated_login_is_allowed() {
    let unsolicited = response(json!({ "in_response_to": null }));
    let err = check_with(&unsolicited, &trust(), None).unwrap_err();
    assert!(matches!(err, SamlError::Unsolicited), "{err:?}");
    // A pending request does not make an unsolicited response acceptable either.
    let err = check_with(&unsolicited, &trust(), Some(REQUEST_ID)).unwrap_err();
    assert!(matches!(err, SamlError::InResponseToMismatch), "{err:?}");

    let mut open = trust();
    open.allow_idp_initiated = true;
    let a = check_with(&unsolicited, &open, None).expect("IdP-initiated allowed");
    assert_eq!(a.in_response_to, None);
    // With no request pending, a response that answers some request is not ours.
    let err = check_with(&response(json!({})), &open, None).unwrap_err();
    assert!(matches!(err, SamlError::InResponseToMismatch), "{err:?}");
}

#[test]
fn non_bearer_subject_confirmation_is_refused() {
    let err = refused(&response(
        json!({ "method": "urn:oasis:names:tc:SAML:2.0:cm:holder-of-key" }),
    ));
    assert!(matches!(err, SamlError::NotBearer), "{err:?}");
}

#[test]
fn doctype_and_entity_payloads_are_client_format_errors() {
    for case in ["doctype", "entity", "xxe"] {
        let err = check(&response(json!({ "case": case }))).unwrap_err();
        assert!(matches!(err, SamlError::Doctype), "{case}: {err:?}");
        assert!(err.is_client_format_error());
    }
}

#[test]
fn oversized_response_is_refused_before_decoding() {
    let b64 = response(json!({ "case": "oversized" }));
    assert!(b64.len() > bucketgate::saml::response::MAX_RESPONSE_BYTES);
    let err = check(&b64).unwrap_err();
    assert!(matches!(err, SamlError::TooLarge), "{err:?}");
    assert!(err.is_client_format_error());
}

#[test]
fn sha1_signature_or_digest_is_refused() {
    for case in ["sha1", "sha1_digest"] {
        let err = refused(&response(json!({ "case": case })));
        assert!(matches!(err, SamlError::WeakAlgorithm), "{case}: {err:?}");
    }
}

#[test]
fn non_success_status_is_refused_with_its_kind() {
    let err = refused(&response(json!({ "case": "status_error" })));
    assert!(
        matches!(err, SamlError::Status(StatusKind::Responder)),
        "{err:?}"
    );
}

#[test]
fn encrypted_assertion_is_refused() {
    let err = refused(&response(json!({ "case": "encrypted" })));
    assert!(matches!(err, SamlError::EncryptedAssertion), "{err:?}");
}

#[test]
fn idp_answers_our_authn_request_with_a_response_we_accept() {
    // request.rs -> the IdP's HTTP-Redirect endpoint -> its auto-POST form -> validate.
    let request_id = bucketgate::saml::request::new_request_id();
    let url = bucketgate::saml::request::redirect_url(
        &idp().sso_url,
        AUDIENCE,
        ACS,
        &request_id,
        Some("/cats/1.jpg"),
        SystemTime::now(),
    )
    .unwrap();
    let post = idp().follow_redirect_blocking(&url);
    assert_eq!(post.action, ACS);
    assert_eq!(post.relay_state.as_deref(), Some("/cats/1.jpg"));
    let a = check_with(&post.saml_response, &trust(), Some(&request_id)).expect("SSO response");
    assert_eq!(a.in_response_to.as_deref(), Some(request_id.as_str()));
    assert_eq!(a.name_id, "user@corp.example");
}

#[test]
fn replay_cache_accepts_an_assertion_id_once() {
    let b64 = response(json!({}));
    let cache = MemoryReplayCache::new(1000);
    let now = SystemTime::now();
    let first = check(&b64).unwrap();
    assert!(cache.first_use(&first.id, first.not_on_or_after, now));
    // The response itself still validates; the cache is what refuses the replay.
    let again = check(&b64).unwrap();
    assert_eq!(again.id, first.id);
    assert!(!cache.first_use(&again.id, again.not_on_or_after, now));
    // Another login is a new assertion id.
    let other = check(&response(json!({}))).unwrap();
    assert!(cache.first_use(&other.id, other.not_on_or_after, now));
}

#[test]
fn replay_cache_horizon_cannot_be_outlived_by_a_second_confirmation() {
    // Issue 11 replaced the earlier rule (a second bearer confirmation that ends later keeps
    // the assertion acceptable, so the replay cache had to remember it until then): a subject
    // with two confirmations is refused outright, now and once the first one is over.
    let b64 = response(json!({
        "not_on_or_after_offset": 3600,
        "scd_not_on_or_after_offset": 100,
        "extra_confirmation_offset": 3600,
    }));
    let skew = trust().clock_skew;
    let at = |now: SystemTime| {
        validate(
            &b64,
            &trust(),
            &Expect {
                in_response_to: Some(REQUEST_ID),
                now,
            },
        )
    };
    let now = SystemTime::now();
    let later = now + Duration::from_secs(100) + skew + Duration::from_secs(5);
    for when in [now, later] {
        let err = at(when).expect_err("two confirmations");
        assert!(matches!(err, SamlError::NotOneConfirmation), "{err:?}");
    }
}

// ---- issue 11: exactly one bearer SubjectConfirmation ----

const CM_HOLDER_OF_KEY: &str = "urn:oasis:names:tc:SAML:2.0:cm:holder-of-key";
const CM_SENDER_VOUCHES: &str = "urn:oasis:names:tc:SAML:2.0:cm:sender-vouches";

#[test]
fn more_than_one_subject_confirmation_is_refused() {
    // The first confirmation is a bearer one that fits; a second one of any method refuses.
    for method in [
        "urn:oasis:names:tc:SAML:2.0:cm:bearer",
        CM_HOLDER_OF_KEY,
        CM_SENDER_VOUCHES,
    ] {
        let err = refused(&response(json!({
            "extra_confirmation_offset": 300,
            "extra_confirmation_method": method,
        })));
        assert!(
            matches!(err, SamlError::NotOneConfirmation),
            "{method}: {err:?}"
        );
    }
    // A non-bearer confirmation first and the bearer one second: refused as well.
    let err = refused(&response(json!({
        "method": CM_HOLDER_OF_KEY,
        "extra_confirmation_offset": 300,
    })));
    assert!(matches!(err, SamlError::NotOneConfirmation), "{err:?}");
}

#[test]
fn subject_without_a_confirmation_is_refused() {
    let err = refused(&response(json!({ "no_confirmation": true })));
    assert!(matches!(err, SamlError::NotOneConfirmation), "{err:?}");
}

#[test]
fn single_non_bearer_confirmation_of_any_method_is_refused() {
    for method in [CM_HOLDER_OF_KEY, CM_SENDER_VOUCHES, "bearer", ""] {
        let err = refused(&response(json!({ "method": method })));
        assert!(matches!(err, SamlError::NotBearer), "{method}: {err:?}");
    }
}

// ---- issue 11: IssueInstant of the Response and of the Assertion ----

#[test]
fn issue_instant_later_than_now_plus_skew_is_refused() {
    for which in ["response_issue_instant", "assertion_issue_instant"] {
        let err = refused(&response(json!({ which: 120 })));
        assert!(matches!(err, SamlError::IssuedInFuture), "{which}: {err:?}");
    }
    // 30 s ahead is inside the 60 s skew.
    check(&response(json!({ "issue_instant_offset": 30 }))).expect("within skew");
}

#[test]
fn issue_instant_older_than_max_age_plus_skew_is_refused() {
    // max age 300 s + skew 60 s: 390 s old is refused, 330 s old is accepted.
    for which in ["response_issue_instant", "assertion_issue_instant"] {
        let err = refused(&response(json!({ which: -390 })));
        assert!(matches!(err, SamlError::TooOld), "{which}: {err:?}");
    }
    check(&response(json!({ "issue_instant_offset": -330 }))).expect("within max age + skew");
    // The configured age decides: 60 s + skew 60 s refuses a response 150 s old.
    let mut strict = trust();
    strict.max_response_age = Duration::from_secs(60);
    let b64 = response(json!({ "issue_instant_offset": -150 }));
    let err = check_with(&b64, &strict, Some(REQUEST_ID)).unwrap_err();
    assert!(matches!(err, SamlError::TooOld), "{err:?}");
    check(&b64).expect("150 s old under the default 300 s");
}

#[test]
fn missing_or_unparseable_issue_instant_is_refused() {
    for which in ["response_issue_instant", "assertion_issue_instant"] {
        for value in [
            Value::Null,
            json!("yesterday"),
            json!("2024-01-01T00:00:00"),
            json!(""),
        ] {
            let err = refused(&response(json!({ which: value })));
            assert!(
                matches!(err, SamlError::MissingElement),
                "{which} = {value}: {err:?}"
            );
        }
    }
}
