//! Stage 0, the request as an HTTP message: who it is addressed to (`Host`, `:authority`) and how
//! its body is framed (`Transfer-Encoding`). Checked first, before the network stage, so that a
//! message the protocol calls invalid reaches no other stage. Used by the data pipeline and by the
//! admin listener alike; it reads only the request head and allocates nothing.
//!
//! Authority (RFC 9112 section 3.2, RFC 9113 section 8.3.1, RFC 9110 section 4.2.4):
//! - an HTTP/1.1 request has exactly one `Host` field; HTTP/1.0 may have none, but never two;
//! - an h2 request names its authority in `:authority` (or, translated from HTTP/1.1, in `Host`);
//!   a `Host` beside `:authority` must name the same host and port;
//! - every authority (`Host`, `:authority`, an absolute-form target) is `uri-host [":" port]`:
//!   no userinfo (`user@`), no empty host, only the characters RFC 3986 allows, a numeric port.
//!
//! Body framing (RFC 9112 section 6.1): hyper already refuses, with 400 and a closed connection, a
//! `Transfer-Encoding` whose final coding is not `chunked` (or one on HTTP/1.0), and honours
//! `Transfer-Encoding` over `Content-Length` when both come, closing the connection after the
//! response. What reaches us ends in `chunked`: any other coding before it is one we do not
//! implement (501), and `chunked` twice is invalid (400). Either way the connection is closed
//! after the answer (see [`crate::pipeline::error::Error::closes_connection`]).

use std::net::Ipv6Addr;

use http::header::{HOST, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderMap, Uri, Version};

/// Why a request is refused as a message. Statuses are chosen in `error.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("HTTP/1.1 request without a Host header")]
    MissingHost,
    #[error("more than one Host header")]
    RepeatedHost,
    #[error("Host header is not a valid host[:port]")]
    InvalidHost,
    #[error("request authority is not a valid host[:port]")]
    InvalidAuthority,
    #[error("request authority contains userinfo")]
    UserInfo,
    #[error("h2 request without :authority or Host")]
    MissingAuthority,
    #[error("Host header names another host than :authority")]
    AuthorityMismatch,
    #[error("transfer coding other than chunked")]
    UnsupportedTransferCoding,
    #[error("chunked transfer coding applied more than once")]
    RepeatedChunked,
}

/// Stage 0: the authority first, then the body framing.
pub fn check(req: &Parts) -> Result<(), RequestError> {
    check_authority(req.version, &req.uri, &req.headers)?;
    check_transfer_encoding(&req.headers)
}

/// `Host` and the target's authority, by HTTP version.
pub fn check_authority(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), RequestError> {
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(RequestError::RepeatedHost);
    }
    // The Host value as host and port; a value that is not text is no host at all.
    let host = match host {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| RequestError::InvalidHost)
                .and_then(|v| parse_authority(v).map_err(|e| e.for_host()))?,
        ),
        None => None,
    };
    // An absolute-form target (h1) or `:authority` (h2).
    let target = uri
        .authority()
        .map(|a| parse_authority(a.as_str()))
        .transpose()?;
    match version {
        Version::HTTP_2 | Version::HTTP_3 => match (target, host) {
            (None, None) => Err(RequestError::MissingAuthority),
            (Some(target), Some(host)) if !target.same_as(&host, uri.scheme_str()) => {
                Err(RequestError::AuthorityMismatch)
            }
            _ => Ok(()),
        },
        // HTTP/1.0 predates Host: it may have none (but never two, and any it has is valid).
        Version::HTTP_09 | Version::HTTP_10 => Ok(()),
        // HTTP/1.1: Host is required even with an absolute-form target, whose authority then
        // wins over it (RFC 9112 section 3.2.2); both were checked above.
        _ => host.map(|_| ()).ok_or(RequestError::MissingHost),
    }
}

/// Every coding of every `Transfer-Encoding` line, in order (empty list elements are allowed and
/// skipped, RFC 9110 section 5.6.1).
fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), RequestError> {
    let mut chunked = 0usize;
    for line in headers.get_all(TRANSFER_ENCODING) {
        let line = line
            .to_str()
            .map_err(|_| RequestError::UnsupportedTransferCoding)?;
        for coding in line.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if coding.eq_ignore_ascii_case("chunked") {
                chunked += 1;
            } else {
                return Err(RequestError::UnsupportedTransferCoding);
            }
        }
    }
    if chunked > 1 {
        return Err(RequestError::RepeatedChunked);
    }
    Ok(())
}

/// A parsed `uri-host [":" port]`.
#[derive(Debug, PartialEq, Eq)]
struct Authority<'a> {
    host: &'a str,
    port: Option<u16>,
}

impl Authority<'_> {
    /// The same origin server: hosts compared without case, an absent port read as the
    /// scheme's default.
    fn same_as(&self, other: &Authority<'_>, scheme: Option<&str>) -> bool {
        let default = match scheme {
            Some("http") => Some(80),
            Some("https") | None => Some(443),
            Some(_) => None,
        };
        self.host.eq_ignore_ascii_case(other.host)
            && self.port.or(default) == other.port.or(default)
    }
}

/// Why an authority string is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Invalid {
    UserInfo,
    Syntax,
}

impl Invalid {
    fn for_host(self) -> RequestError {
        match self {
            Invalid::UserInfo => RequestError::UserInfo,
            Invalid::Syntax => RequestError::InvalidHost,
        }
    }
}

impl From<Invalid> for RequestError {
    fn from(e: Invalid) -> RequestError {
        match e {
            Invalid::UserInfo => RequestError::UserInfo,
            Invalid::Syntax => RequestError::InvalidAuthority,
        }
    }
}

/// `uri-host [":" port]` (RFC 3986 section 3.2.2 and 3.2.3), with a non-empty host (an `https`
/// URI has one, RFC 9110 section 4.2.2) and a port that fits 16 bits. An empty port (`host:`) is
/// allowed by the grammar and read as no port.
fn parse_authority(s: &str) -> Result<Authority<'_>, Invalid> {
    if s.contains('@') {
        return Err(Invalid::UserInfo);
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or(Invalid::Syntax)?;
        let literal = &rest[..end];
        if literal.parse::<Ipv6Addr>().is_err() && !is_ipv_future(literal) {
            return Err(Invalid::Syntax);
        }
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(Invalid::Syntax),
        };
        (&s[..end + 2], port)
    } else {
        let (host, port) = match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        };
        if host.is_empty() || !is_reg_name(host) {
            return Err(Invalid::Syntax);
        }
        (host, port)
    };
    let port = match port {
        None | Some("") => None,
        Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some(digits.parse::<u16>().map_err(|_| Invalid::Syntax)?)
        }
        Some(_) => return Err(Invalid::Syntax),
    };
    Ok(Authority { host, port })
}

/// `unreserved / sub-delims` (RFC 3986 section 2.2, 2.3).
fn is_unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b)
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )`; an IPv4 address is one too. The
/// hex digits of a `%XX` are unreserved characters, so: every `%` well-formed, every other byte
/// unreserved or a sub-delim.
fn is_reg_name(s: &str) -> bool {
    let b = s.as_bytes();
    crate::web::parse::check_percent(b).is_ok()
        && b.iter()
            .all(|&c| c == b'%' || is_unreserved_or_sub_delim(c))
}

/// `IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )`.
fn is_ipv_future(s: &str) -> bool {
    let Some(rest) = s.strip_prefix(['v', 'V']) else {
        return false;
    };
    let Some((version, address)) = rest.split_once('.') else {
        return false;
    };
    !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_hexdigit())
        && !address.is_empty()
        && address
            .bytes()
            .all(|b| b == b':' || is_unreserved_or_sub_delim(b))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn head(version: Version, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().version(version).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn h1(headers: &[(&str, &str)]) -> Result<(), RequestError> {
        check(&head(Version::HTTP_11, "/o/local/a", headers))
    }

    #[test]
    fn valid_hosts_pass() {
        for host in [
            "example.com",
            "example.com:8443",
            "EXAMPLE.com:443",
            "127.0.0.1",
            "127.0.0.1:0",
            "[::1]",
            "[::1]:8443",
            "[2001:db8::1]:443",
            "[v1.fe80::a+en1]",
            "xn--bcher-kva.example",
            "a%41b.example",
            "host:",
            "under_score.example",
        ] {
            assert_eq!(h1(&[("host", host)]), Ok(()), "{host}");
        }
    }

    #[test]
    fn invalid_hosts_are_refused() {
        for host in [
            "",
            ":443",
            "a b",
            "example.com/path",
            "example.com:port",
            "example.com:443:1",
            "example.com:65536",
            "example.com:-1",
            "example.com:+1",
            "[::1",
            "[::1]x",
            "[not-ip]",
            "::1",
            "a%4",
            "a%zz",
            "exa\"mple",
            "example.com?",
            "example.com#",
            "ex\\ample",
        ] {
            assert_eq!(
                h1(&[("host", host)]),
                Err(RequestError::InvalidHost),
                "{host:?}"
            );
        }
        assert_eq!(
            h1(&[("host", "user@example.com")]),
            Err(RequestError::UserInfo)
        );
        assert_eq!(
            h1(&[("host", "user:pw@example.com:443")]),
            Err(RequestError::UserInfo)
        );
    }

    #[test]
    fn http11_needs_exactly_one_host() {
        assert_eq!(h1(&[]), Err(RequestError::MissingHost));
        assert_eq!(
            h1(&[("host", "a.example"), ("host", "a.example")]),
            Err(RequestError::RepeatedHost)
        );
        let h10 = |headers: &[(&str, &str)]| check(&head(Version::HTTP_10, "/", headers));
        assert_eq!(h10(&[]), Ok(()));
        assert_eq!(
            h10(&[("host", "a.example"), ("host", "b.example")]),
            Err(RequestError::RepeatedHost)
        );
        assert_eq!(h10(&[("host", "a b")]), Err(RequestError::InvalidHost));
    }

    #[test]
    fn absolute_form_authority_is_checked_and_host_still_required() {
        let abs =
            |uri: &str, headers: &[(&str, &str)]| check(&head(Version::HTTP_11, uri, headers));
        assert_eq!(
            abs("https://a.example/o/x", &[("host", "a.example")]),
            Ok(())
        );
        assert_eq!(
            abs("https://user@a.example/o/x", &[("host", "a.example")]),
            Err(RequestError::UserInfo)
        );
        assert_eq!(
            abs("https://a.example/o/x", &[]),
            Err(RequestError::MissingHost)
        );
    }

    #[test]
    fn h2_authority_and_host_must_agree() {
        let h2 = |uri: &str, headers: &[(&str, &str)]| check(&head(Version::HTTP_2, uri, headers));
        assert_eq!(h2("https://a.example:8443/o/x", &[]), Ok(()));
        assert_eq!(h2("/o/x", &[("host", "a.example")]), Ok(()));
        assert_eq!(h2("/o/x", &[]), Err(RequestError::MissingAuthority));
        assert_eq!(
            h2("https://user@a.example/o/x", &[]),
            Err(RequestError::UserInfo)
        );
        assert_eq!(
            h2("https://A.example/o/x", &[("host", "a.EXAMPLE:443")]),
            Ok(())
        );
        assert_eq!(
            h2("https://a.example:8443/o/x", &[("host", "a.example:8443")]),
            Ok(())
        );
        assert_eq!(
            h2("https://a.example:8443/o/x", &[("host", "a.example")]),
            Err(RequestError::AuthorityMismatch)
        );
        assert_eq!(
            h2("https://a.example/o/x", &[("host", "b.example")]),
            Err(RequestError::AuthorityMismatch)
        );
        assert_eq!(
            h2(
                "https://a.example/o/x",
                &[("host", "a.example"), ("host", "a.example")]
            ),
            Err(RequestError::RepeatedHost)
        );
    }

    #[test]
    fn only_a_single_final_chunked_is_a_coding_we_implement() {
        let host = ("host", "a.example");
        assert_eq!(h1(&[host, ("transfer-encoding", "chunked")]), Ok(()));
        assert_eq!(h1(&[host, ("transfer-encoding", "Chunked")]), Ok(()));
        assert_eq!(h1(&[host, ("transfer-encoding", " , chunked")]), Ok(()));
        for te in ["gzip, chunked", "identity, chunked", "x-custom,chunked"] {
            assert_eq!(
                h1(&[host, ("transfer-encoding", te)]),
                Err(RequestError::UnsupportedTransferCoding),
                "{te}"
            );
        }
        assert_eq!(
            h1(&[
                host,
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked")
            ]),
            Err(RequestError::UnsupportedTransferCoding)
        );
        assert_eq!(
            h1(&[host, ("transfer-encoding", "chunked, chunked")]),
            Err(RequestError::RepeatedChunked)
        );
        assert_eq!(
            h1(&[
                host,
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ]),
            Err(RequestError::RepeatedChunked)
        );
    }
}
