//! Stage 2, identity: the request's one token -> [`Principal`].
//!
//! A token arrives in exactly one place: `Authorization: Bearer`, the token cookie, the SAML
//! session cookie (`__Host-bucketgate-session`, when `[saml]` is configured), or the `token`
//! query parameter (already decoded by the plan stage's query check). Two places, two
//! Authorization headers or two cookies of one name: 400. What a token means is
//! `crate::identity`; what a session is, `crate::saml::session`; this file only finds them.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::identity::{Identity, IdentityError, Principal, TokenUse};
use crate::saml::session::{AnySessionStore, Session, SessionError, SessionStore as _};
use crate::web::parse;

/// Where a request's credential was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<'a> {
    /// A JWT (Bearer, token cookie or `?token=`).
    Token(Cow<'a, str>),
    /// A SAML session id (the session cookie's value).
    Session(&'a str),
}

/// Find the request's one credential. `query_token` is the decoded `token=` value, if any;
/// `token_cookie` the `[identity]` cookie name (if identity is configured), `session_cookie` the
/// SAML session cookie name (if `[saml]` is).
pub fn find_credential<'a>(
    headers: &'a HeaderMap,
    query_token: Option<&'a str>,
    token_cookie: Option<&str>,
    session_cookie: Option<&str>,
) -> Result<Found<'a>, IdentityError> {
    let mut found: Option<Found<'a>> = None;
    let mut put = |t: Found<'a>| {
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
        let token = parse::bearer(value).ok_or(IdentityError::NotBearer)?;
        put(Found::Token(Cow::Borrowed(token)))?;
    }
    // h2 may split cookies over several headers; every pair is looked at. A name without `=`
    // still counts as that cookie, with an empty value.
    for (name, v) in parse::cookie_pairs(headers) {
        let v = v.unwrap_or("");
        if Some(name) == token_cookie {
            put(Found::Token(Cow::Borrowed(v)))?;
        } else if Some(name) == session_cookie {
            put(Found::Session(v))?;
        }
    }
    if let Some(t) = query_token {
        put(Found::Token(Cow::Borrowed(t)))?;
    }
    match found {
        Some(Found::Token(t)) if t.is_empty() => Err(IdentityError::Missing),
        Some(Found::Session("")) | None => Err(IdentityError::Missing),
        Some(f) => Ok(f),
    }
}

/// SAML sessions, when `[saml]` is configured in the snapshot.
#[derive(Clone, Copy)]
pub struct Sessions<'s> {
    pub store: &'s AnySessionStore,
    pub cookie_name: &'s str,
    pub now: SystemTime,
}

/// Who a request is, and with what (stage 2's output: built only by [`authenticate_request`]).
/// Holds no borrowed token: only its hash, for the audit.
pub struct Authenticated(Inner);

// One per request, moved a few times: boxing the token's principal would allocate per request
// to save copying ~200 bytes.
#[expect(
    clippy::large_enum_variant,
    reason = "one per request; a box would allocate per request"
)]
enum Inner {
    Token {
        principal: Principal,
        token_hash: String,
    },
    /// A SAML session: its principal and the user's own STS credentials.
    Session {
        session: Arc<Session>,
        token_hash: String,
    },
}

impl Authenticated {
    pub fn principal(&self) -> &Principal {
        match &self.0 {
            Inner::Token { principal, .. } => principal,
            Inner::Session { session, .. } => session.principal(),
        }
    }

    /// [`crate::audit::token_hash`] of the token or the session id: never the secret itself.
    pub fn token_hash(&self) -> &str {
        match &self.0 {
            Inner::Token { token_hash, .. } | Inner::Session { token_hash, .. } => token_hash,
        }
    }

    /// The user's own credentials and assumed-role ARN, for sources with `credentials = "saml"`.
    pub fn user_credentials(&self) -> Option<crate::credentials::UserCredentials<'_>> {
        match &self.0 {
            Inner::Token { .. } => None,
            Inner::Session { session, .. } => Some(session.user_credentials()),
        }
    }
}

/// Run stage 2 over every place: a token is verified by `identity` at `now` (unix s), used from
/// `at` (its client address and the use-window store), a session id looked up in `sessions`.
/// An unknown or expired session is [`IdentityError::SessionExpired`] (401, "sign in again").
/// With neither configured, every request is refused.
pub async fn authenticate_request(
    identity: Option<&Identity>,
    sessions: Option<Sessions<'_>>,
    headers: &HeaderMap,
    query_token: Option<&str>,
    now: u64,
    at: TokenUse<'_>,
) -> Result<Authenticated, IdentityError> {
    if identity.is_none() && sessions.is_none() {
        return Err(IdentityError::NotConfigured);
    }
    let found = find_credential(
        headers,
        query_token,
        identity.map(Identity::cookie_name),
        sessions.map(|s| s.cookie_name),
    )?;
    match (found, sessions) {
        (Found::Session(id), Some(s)) => {
            let session = s.store.get(id, s.now).await.map_err(|e| match e {
                SessionError::Unavailable => IdentityError::SessionStoreUnavailable,
                _ => IdentityError::SessionExpired,
            })?;
            Ok(Authenticated(Inner::Session {
                session,
                token_hash: crate::audit::token_hash(id),
            }))
        }
        (Found::Token(token), _) => {
            let identity = identity.ok_or(IdentityError::NotConfigured)?;
            let principal = identity.verify(&token, now, at).await?;
            Ok(Authenticated(Inner::Token {
                principal,
                token_hash: crate::audit::token_hash(&token),
            }))
        }
        // A session cookie is only looked for when sessions exist.
        (Found::Session(_), None) => Err(IdentityError::Missing),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// The token alone (no session cookie is looked for).
    fn find_token<'a>(
        headers: &'a HeaderMap,
        query_token: Option<&'a str>,
        cookie_name: &str,
    ) -> Result<Cow<'a, str>, IdentityError> {
        match find_credential(headers, query_token, Some(cookie_name), None)? {
            Found::Token(t) => Ok(t),
            Found::Session(_) => Err(IdentityError::Missing),
        }
    }

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
    fn session_cookie_is_one_more_place() {
        let h = headers(&[("cookie", "x=1; __Host-bucketgate-session=abc")]);
        assert_eq!(
            find_credential(&h, None, Some("s"), Some("__Host-bucketgate-session")).unwrap(),
            Found::Session("abc")
        );
        // Without [saml] the cookie is just another cookie.
        assert!(matches!(
            find_credential(&h, None, Some("s"), None),
            Err(IdentityError::Missing)
        ));
        let both: [(HeaderMap, Option<&str>); 3] = [
            (
                headers(&[
                    ("authorization", "Bearer a"),
                    ("cookie", "__Host-bucketgate-session=b"),
                ]),
                None,
            ),
            (
                headers(&[("cookie", "__Host-bucketgate-session=b; s=a")]),
                None,
            ),
            (
                headers(&[("cookie", "__Host-bucketgate-session=b")]),
                Some("t"),
            ),
        ];
        for (h, q) in both {
            assert!(matches!(
                find_credential(&h, q, Some("s"), Some("__Host-bucketgate-session")),
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
