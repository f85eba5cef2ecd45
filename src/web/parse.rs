//! The request parsers more than one route needs, each written once: the bearer token of an
//! `Authorization` value, cookie pairs, query (and form) pairs, and strict percent-decoding.
//!
//! They only split and decode; what a name means, and whether a repeat or an unknown name is an
//! error, is the caller's decision. Where callers differ (a pair without `=`), the parser reports
//! the difference and lets each caller keep its rule.

use std::borrow::Cow;

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};

/// The token of `Authorization: Bearer <token>`: the scheme is case-insensitive, the token is
/// trimmed and may be empty (the caller refuses it). `None` for another scheme, no space, or a
/// value that is not visible ASCII.
pub fn bearer(value: &HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Every cookie pair of the request, in order, over every `Cookie` header (h2 may split cookies
/// over several): `(name, value)`, both trimmed, the value stripped of surrounding `"`. A pair
/// without `=` has no value (`None`). Headers that are not visible ASCII are skipped.
pub fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, Option<&str>)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (pair.trim(), None),
        })
}

/// Every value of cookie `name`, in order (a pair without `=` has none).
pub fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    cookie_pairs(headers).filter_map(move |(n, v)| if n == name { v } else { None })
}

/// The `&`-separated pairs of a query string or form body, raw (not decoded), every one
/// including empty ones: `(name, value)`, with no value (`None`) for a pair without `=`.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    query.split('&').map(|pair| match pair.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (pair, None),
    })
}

/// Why a value does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A `%` that does not start a `%XX` escape: ambiguous, so refused.
    BadPercent,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

/// Every `%` must start a `%XX` escape; anything else is ambiguous and refused.
pub fn check_percent(raw: &[u8]) -> Result<(), DecodeError> {
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let ok = raw.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && raw.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !ok {
                return Err(DecodeError::BadPercent);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Percent-decode `raw` once, strictly ([`check_percent`] first), to bytes. `+` stays `+`.
pub fn percent_decode_bytes(raw: &str) -> Result<Vec<u8>, DecodeError> {
    check_percent(raw.as_bytes())?;
    Ok(percent_encoding::percent_decode(raw.as_bytes()).collect())
}

/// Percent-decode `raw` once, strictly, into UTF-8. With `plus_is_space` (form bodies,
/// `application/x-www-form-urlencoded`) a `+` is a space; in a URL query it stays `+`.
pub fn percent_decode_utf8(raw: &str, plus_is_space: bool) -> Result<String, DecodeError> {
    check_percent(raw.as_bytes())?;
    let raw: Cow<'_, str> = if plus_is_space && raw.contains('+') {
        Cow::Owned(raw.replace('+', " "))
    } else {
        Cow::Borrowed(raw)
    };
    percent_encoding::percent_decode(raw.as_bytes())
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| DecodeError::NotUtf8)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn value(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_the_token_trimmed() {
        assert_eq!(bearer(&value("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&value("bearer abc")), Some("abc"));
        assert_eq!(bearer(&value("BEARER  abc ")), Some("abc"));
    }

    #[test]
    fn empty_bearer_is_an_empty_token_for_the_caller_to_refuse() {
        assert_eq!(bearer(&value("Bearer ")), Some(""));
        assert_eq!(
            bearer(&value("Bearer")),
            None,
            "no space: not a bearer value"
        );
    }

    #[test]
    fn other_schemes_and_bare_tokens_are_not_bearer() {
        assert_eq!(bearer(&value("Basic abc")), None);
        assert_eq!(bearer(&value("abc")), None);
        assert_eq!(
            bearer(&HeaderValue::from_bytes(b"Bearer \xff").unwrap()),
            None
        );
    }

    fn cookie_headers(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(COOKIE, value(v));
        }
        headers
    }

    #[test]
    fn repeated_cookies_are_all_seen_across_headers() {
        let headers = cookie_headers(&["a=1; b=2", "a=3"]);
        assert_eq!(cookies(&headers, "a").collect::<Vec<_>>(), ["1", "3"]);
        assert_eq!(cookies(&headers, "b").collect::<Vec<_>>(), ["2"]);
        assert_eq!(cookies(&headers, "c").count(), 0);
    }

    #[test]
    fn cookie_values_are_trimmed_and_unquoted() {
        let headers = cookie_headers(&[" a = \"x y\" ;b=\"\"q\"\""]);
        assert_eq!(cookies(&headers, "a").collect::<Vec<_>>(), ["x y"]);
        assert_eq!(cookies(&headers, "b").collect::<Vec<_>>(), ["q"]);
    }

    #[test]
    fn a_cookie_without_equals_has_no_value() {
        let headers = cookie_headers(&["a; b=1"]);
        assert_eq!(
            cookie_pairs(&headers).collect::<Vec<_>>(),
            [("a", None), ("b", Some("1"))]
        );
        assert_eq!(cookies(&headers, "a").count(), 0);
    }

    #[test]
    fn query_pairs_keep_empty_pairs_and_tell_a_missing_equals() {
        assert_eq!(
            query_pairs("a=1&&b&c=").collect::<Vec<_>>(),
            [("a", Some("1")), ("", None), ("b", None), ("c", Some(""))]
        );
        assert_eq!(query_pairs("").collect::<Vec<_>>(), [("", None)]);
        assert_eq!(
            query_pairs("x=a=b").collect::<Vec<_>>(),
            [("x", Some("a=b"))]
        );
    }

    #[test]
    fn plus_is_a_space_only_in_forms() {
        assert_eq!(percent_decode_utf8("a+b%2B", false).unwrap(), "a+b+");
        assert_eq!(percent_decode_utf8("a+b%2B", true).unwrap(), "a b+");
        assert_eq!(percent_decode_bytes("a+b").unwrap(), b"a+b");
    }

    #[test]
    fn invalid_percent_escapes_are_refused() {
        for raw in ["%", "%4", "%zz", "a%g0", "%%41", "ab%"] {
            assert_eq!(
                check_percent(raw.as_bytes()),
                Err(DecodeError::BadPercent),
                "{raw}"
            );
            assert_eq!(
                percent_decode_bytes(raw),
                Err(DecodeError::BadPercent),
                "{raw}"
            );
            assert_eq!(
                percent_decode_utf8(raw, true),
                Err(DecodeError::BadPercent),
                "{raw}"
            );
        }
        assert_eq!(percent_decode_bytes("%41%2f%2F").unwrap(), b"A//");
    }

    #[test]
    fn decoding_happens_once_and_must_give_utf8() {
        assert_eq!(percent_decode_utf8("%252e", false).unwrap(), "%2e");
        assert_eq!(percent_decode_utf8("%C3%A9", false).unwrap(), "é");
        assert_eq!(percent_decode_utf8("%ff", false), Err(DecodeError::NotUtf8));
        assert_eq!(percent_decode_bytes("%ff").unwrap(), [0xff]);
    }
}
