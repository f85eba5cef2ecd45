//! SAML AuthnRequest (HTTP-Redirect binding) and SP metadata.
//!
//! Requests are unsigned: the IdP learns nothing secret from them, and the response is bound to
//! the request by its ID (InResponseTo), which the caller remembers in a signed login cookie.

use std::io::Write;
use std::time::SystemTime;

use base64::Engine;
use flate2::Compression;
use flate2::write::DeflateEncoder;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::response::{SamlError, format_instant};

const BINDING_POST: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";

/// Query components: everything but RFC 3986 unreserved characters is encoded.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A fresh request id: `_` and 32 random hex characters (an XML ID must not start with a digit).
pub fn new_request_id() -> String {
    format!("_{}", uuid::Uuid::new_v4().simple())
}

/// HTTP-Redirect binding URL: `sso_url?SAMLRequest=...&RelayState=...` (raw DEFLATE, base64,
/// percent-encoded), unsigned. `sso_url` may already carry a query.
pub fn redirect_url(
    sso_url: &str,
    sp_entity_id: &str,
    acs_url: &str,
    request_id: &str,
    relay_state: Option<&str>,
    now: SystemTime,
) -> Result<String, SamlError> {
    if sso_url.is_empty() || sso_url.contains('#') {
        return Err(SamlError::Request);
    }
    let xml = authn_request(sso_url, sp_entity_id, acs_url, request_id, now);
    let mut deflater = DeflateEncoder::new(Vec::new(), Compression::default());
    deflater
        .write_all(xml.as_bytes())
        .map_err(|_| SamlError::Request)?;
    let deflated = deflater.finish().map_err(|_| SamlError::Request)?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(deflated);

    let mut url = String::with_capacity(sso_url.len() + encoded.len() + 64);
    url.push_str(sso_url);
    url.push(if sso_url.contains('?') { '&' } else { '?' });
    url.push_str("SAMLRequest=");
    url.extend(utf8_percent_encode(&encoded, QUERY));
    if let Some(relay_state) = relay_state {
        url.push_str("&RelayState=");
        url.extend(utf8_percent_encode(relay_state, QUERY));
    }
    Ok(url)
}

fn authn_request(
    destination: &str,
    sp_entity_id: &str,
    acs_url: &str,
    request_id: &str,
    now: SystemTime,
) -> String {
    format!(
        concat!(
            r#"<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" "#,
            r#"xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="{id}" Version="2.0" "#,
            r#"IssueInstant="{instant}" Destination="{destination}" "#,
            r#"AssertionConsumerServiceURL="{acs}" ProtocolBinding="{binding}">"#,
            r#"<saml:Issuer>{issuer}</saml:Issuer>"#,
            r#"<samlp:NameIDPolicy AllowCreate="true"/>"#,
            r#"</samlp:AuthnRequest>"#
        ),
        id = escape(request_id),
        instant = format_instant(now),
        destination = escape(destination),
        acs = escape(acs_url),
        binding = BINDING_POST,
        issuer = escape(sp_entity_id),
    )
}

/// SP metadata XML (EntityDescriptor, SPSSODescriptor, AssertionConsumerService HTTP-POST), for
/// the IdP administrator.
pub fn sp_metadata(sp_entity_id: &str, acs_url: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            "\n",
            r#"<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" "#,
            r#"entityID="{entity}">"#,
            "\n  ",
            r#"<md:SPSSODescriptor AuthnRequestsSigned="false" WantAssertionsSigned="true" "#,
            r#"protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">"#,
            "\n    ",
            r#"<md:AssertionConsumerService Binding="{binding}" Location="{acs}" "#,
            r#"index="0" isDefault="true"/>"#,
            "\n  </md:SPSSODescriptor>\n</md:EntityDescriptor>\n"
        ),
        entity = escape(sp_entity_id),
        binding = BINDING_POST,
        acs = escape(acs_url),
    )
}

/// Escape for XML text and double-quoted attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Read;
    use std::time::Duration;

    use flate2::read::DeflateDecoder;
    use percent_encoding::percent_decode_str;

    use super::*;

    fn query_param(url: &str, name: &str) -> Option<String> {
        let query = url.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then(|| percent_decode_str(v).decode_utf8().unwrap().into_owned())
        })
    }

    fn inflate(saml_request: &str) -> String {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(saml_request)
            .unwrap();
        let mut xml = String::new();
        DeflateDecoder::new(raw.as_slice())
            .read_to_string(&mut xml)
            .unwrap();
        xml
    }

    const NOW_SECS: u64 = 1_700_000_000; // 2023-11-14T22:13:20Z

    #[test]
    fn request_id_is_underscore_and_32_hex_and_fresh() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 33);
        assert!(a.starts_with('_'));
        assert!(a[1..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn redirect_url_carries_a_raw_deflated_authn_request_and_relay_state() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS);
        let url = redirect_url(
            "https://idp.example.com/sso",
            "https://sp.example.com/saml",
            "https://sp.example.com/auth/saml/acs",
            "_abc123",
            Some("/cats/1.jpg?x=1&y=2"),
            now,
        )
        .unwrap();
        assert!(url.starts_with("https://idp.example.com/sso?SAMLRequest="));
        assert_eq!(
            query_param(&url, "RelayState").as_deref(),
            Some("/cats/1.jpg?x=1&y=2")
        );
        let xml = inflate(&query_param(&url, "SAMLRequest").unwrap());
        assert!(xml.contains(r#"ID="_abc123""#), "{xml}");
        assert!(
            xml.contains(r#"IssueInstant="2023-11-14T22:13:20Z""#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"AssertionConsumerServiceURL="https://sp.example.com/auth/saml/acs""#)
        );
        assert!(xml.contains(r#"Destination="https://idp.example.com/sso""#));
        assert!(xml.contains("<saml:Issuer>https://sp.example.com/saml</saml:Issuer>"));
        assert!(xml.contains(BINDING_POST));
        // The request is well-formed XML.
        assert!(uppsala::parse(&xml).is_ok());
    }

    #[test]
    fn redirect_url_appends_to_an_existing_query_and_omits_absent_relay_state() {
        let url = redirect_url(
            "https://idp.example.com/sso?tenant=7",
            "sp",
            "https://sp/acs",
            "_id",
            None,
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        assert!(url.starts_with("https://idp.example.com/sso?tenant=7&SAMLRequest="));
        assert!(!url.contains("RelayState"));
    }

    #[test]
    fn redirect_url_refuses_an_sso_url_with_a_fragment() {
        let err = redirect_url(
            "https://idp/sso#x",
            "sp",
            "acs",
            "_id",
            None,
            SystemTime::UNIX_EPOCH,
        );
        assert!(matches!(err, Err(SamlError::Request)));
    }

    #[test]
    fn request_values_are_xml_escaped() {
        let url = redirect_url(
            "https://idp/sso",
            "urn:sp\"<&>",
            "https://sp/acs?a=1&b=2",
            "_id",
            None,
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        let xml = inflate(&query_param(&url, "SAMLRequest").unwrap());
        assert!(xml.contains("urn:sp&quot;&lt;&amp;&gt;"), "{xml}");
        assert!(xml.contains("https://sp/acs?a=1&amp;b=2"), "{xml}");
        assert!(uppsala::parse(&xml).is_ok());
    }

    #[test]
    fn sp_metadata_names_the_entity_and_the_post_acs() {
        let xml = sp_metadata("https://sp.example.com/saml", "https://sp.example.com/acs");
        let doc = uppsala::parse(&xml).unwrap();
        let root = doc.document_element().unwrap();
        assert_eq!(
            doc.get_attribute(root, "entityID"),
            Some("https://sp.example.com/saml")
        );
        let acs = doc.get_elements_by_tag_name("AssertionConsumerService");
        assert_eq!(acs.len(), 1);
        assert_eq!(doc.get_attribute(acs[0], "Binding"), Some(BINDING_POST));
        assert_eq!(
            doc.get_attribute(acs[0], "Location"),
            Some("https://sp.example.com/acs")
        );
    }
}
