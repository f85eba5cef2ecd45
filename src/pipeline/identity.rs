//! Stage 2, identity: the request's one token -> [`Principal`].
//!
//! A token arrives in exactly one place: `Authorization: Bearer`, the session cookie, or the
//! `token` query parameter (already decoded by the plan stage's query check). Two places, two
//! Authorization headers or two cookies of that name: 400. What the token means is
//! `crate::identity`; this file only finds it.

use std::borrow::Cow;

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};

use crate::identity::{Identity, IdentityError, Principal};

/// Find the request's token. `query_token` is the decoded `token=` value, if any.
pub fn find_token<'a>(
    headers: &'a HeaderMap,
    query_token: Option<&'a str>,
    cookie_name: &str,
) -> Result<Cow<'a, str>, IdentityError> {
    let mut found: Option<Cow<'a, str>> = None;
    let mut put = |t: Cow<'a, str>| {
        if found.is_some() {
            return Err(IdentityError::AmbiguousToken);
        }
        found = Some(t);
        Ok(())
    };
    let mut auth = headers.get_all(AUTHORIZATION).iter();
    if let Some(value) = auth.next() {
        if auth.next().is_some() {
            return Err(IdentityError::AmbiguousToken);
        }
        let value = value.to_str().map_err(|_| IdentityError::NotBearer)?;
        let (scheme, token) = value.split_once(' ').ok_or(IdentityError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(IdentityError::NotBearer);
        }
        put(Cow::Borrowed(token.trim()))?;
    }
    // h2 may split cookies over several headers; every pair is looked at.
    for value in headers.get_all(COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            let (name, v) = pair.split_once('=').unwrap_or((pair, ""));
            if name.trim() == cookie_name {
                put(Cow::Borrowed(v.trim().trim_matches('"')))?;
            }
        }
    }
    if let Some(t) = query_token {
        put(Cow::Borrowed(t))?;
    }
    match found {
        Some(t) if t.is_empty() => Err(IdentityError::Missing),
        Some(t) => Ok(t),
        None => Err(IdentityError::Missing),
    }
}

/// Run stage 2. Without `[identity]` every request is refused (fail closed). Returns the token
/// too, so the caller can log its hash.
pub async fn authenticate<'a>(
    identity: Option<&Identity>,
    headers: &'a HeaderMap,
    query_token: Option<&'a str>,
    now: u64,
) -> Result<(Principal, Cow<'a, str>), IdentityError> {
    let identity = identity.ok_or(IdentityError::NotConfigured)?;
    let token = find_token(headers, query_token, identity.cookie_name())?;
    let principal = identity.verify(&token, now).await?;
    Ok((principal, token))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn token_is_found_in_each_single_place() {
        let h = headers(&[("authorization", "Bearer abc")]);
        assert_eq!(find_token(&h, None, "s").unwrap(), "abc");
        let h = headers(&[("cookie", "x=1; s=abc; y=2")]);
        assert_eq!(find_token(&h, None, "s").unwrap(), "abc");
        assert_eq!(
            find_token(&HeaderMap::new(), Some("abc"), "s").unwrap(),
            "abc"
        );
    }

    #[test]
    fn two_places_or_two_of_a_kind_are_ambiguous() {
        let cases: [(HeaderMap, Option<&str>); 4] = [
            (headers(&[("authorization", "Bearer a")]), Some("b")),
            (
                headers(&[("authorization", "Bearer a"), ("cookie", "s=b")]),
                None,
            ),
            (
                headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
                None,
            ),
            (headers(&[("cookie", "s=a"), ("cookie", "s=b")]), None),
        ];
        for (h, q) in cases {
            assert!(matches!(
                find_token(&h, q, "s"),
                Err(IdentityError::AmbiguousToken)
            ));
        }
    }

    #[test]
    fn missing_or_non_bearer_is_refused() {
        assert!(matches!(
            find_token(&HeaderMap::new(), None, "s"),
            Err(IdentityError::Missing)
        ));
        let h = headers(&[("authorization", "Basic YTpi")]);
        assert!(matches!(
            find_token(&h, None, "s"),
            Err(IdentityError::NotBearer)
        ));
        let h = headers(&[("cookie", "other=abc")]);
        assert!(matches!(
            find_token(&h, None, "s"),
            Err(IdentityError::Missing)
        ));
    }
}
