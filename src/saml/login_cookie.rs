//! The login cookie's MAC: a login this gateway started (its AuthnRequest id and `return_to`),
//! sealed with HMAC-SHA256 so that the ACS can trust it when the browser brings it back.
//!
//! The key is random per process unless `[saml] login_cookie_key` names one, or the nodes share
//! one through Redis (`state::redis::login_key`, behind [`SharedLoginKey`]): then every node
//! accepts the cookies of the others, so a login started on one node completes on another. A
//! [`LoginKeyRing`] seals with its current key and opens with any of its keys (current, and the
//! previous one after a rotation, so logins in flight at a rotation complete). This module seals
//! and opens values; it knows nothing of cookies' names or attributes (the HTTP half,
//! `pipeline/auth.rs`, writes them) and never logs.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::SystemRandom;

use crate::civil_time::unix_secs;
use crate::config::defaults as d;

/// Domain separation for the login cookie's MAC.
const LOGIN_MAC_CONTEXT: &[u8] = b"bucketgate-saml-login-v1\n";

/// The HMAC-SHA256 key of login cookies. Never printed.
#[derive(Clone)]
pub struct LoginKey(hmac::Key);

impl LoginKey {
    /// A fresh random key (the default: cookies are then valid on this process only). Fails
    /// only if the system random number generator does.
    pub fn random() -> Result<LoginKey, ring::error::Unspecified> {
        hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new()).map(LoginKey)
    }

    /// The key of `[saml] login_cookie_key` (validation made sure it has at least
    /// `SAML_LOGIN_COOKIE_KEY_MIN_BYTES` bytes).
    pub fn from_secret(secret: &[u8]) -> LoginKey {
        LoginKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The cookie value for `request_id` and `return_to` (already made safe), valid until
    /// `now` + `SAML_LOGIN_COOKIE_SECS`.
    pub fn seal(&self, request_id: &str, return_to: &str, now: SystemTime) -> String {
        let expires = unix_secs(now).saturating_add(d::SAML_LOGIN_COOKIE_SECS);
        let payload = format!("{request_id}\n{expires}\n{return_to}");
        let tag = hmac::sign(&self.0, &mac_input(&payload));
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload.as_bytes()),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The pending login of a cookie value, if its MAC verifies and it has not expired.
    pub fn open(&self, value: &str, now: SystemTime) -> Option<PendingLogin> {
        let (payload, tag) = value.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let payload = String::from_utf8(payload).ok()?;
        hmac::verify(&self.0, &mac_input(&payload), &tag).ok()?;
        let mut parts = payload.splitn(3, '\n');
        let request_id = parts.next()?.to_owned();
        let expires: u64 = parts.next()?.parse().ok()?;
        let return_to = parts.next()?.to_owned();
        (unix_secs(now) < expires).then_some(PendingLogin {
            request_id,
            return_to,
            expires: UNIX_EPOCH + Duration::from_secs(expires),
        })
    }
}

impl fmt::Debug for LoginKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoginKey(<redacted>)")
    }
}

/// The login-cookie keys in force: seal with the current one, open with any.
#[derive(Debug, Clone)]
pub struct LoginKeyRing {
    current: LoginKey,
    previous: Option<LoginKey>,
}

impl LoginKeyRing {
    pub fn new(current: LoginKey, previous: Option<LoginKey>) -> LoginKeyRing {
        LoginKeyRing { current, previous }
    }

    /// [`LoginKey::seal`] with the current key.
    pub fn seal(&self, request_id: &str, return_to: &str, now: SystemTime) -> String {
        self.current.seal(request_id, return_to, now)
    }

    /// [`LoginKey::open`] with the current key, then the previous one.
    pub fn open(&self, value: &str, now: SystemTime) -> Option<PendingLogin> {
        self.current
            .open(value, now)
            .or_else(|| self.previous.as_ref().and_then(|k| k.open(value, now)))
    }
}

/// The shared login key cannot be had (Redis down and no copy fetched yet, or garbage there).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the shared login-cookie key is unavailable")]
pub struct LoginKeyUnavailable;

/// A login-cookie key shared by every node, kept outside the process (Redis), which this module
/// cannot name: object-safe, one boxed future per call. An implementation caches the keys.
pub trait SharedLoginKey: Send + Sync {
    fn keys(
        &self,
    ) -> super::session::BoxFuture<'_, Result<std::sync::Arc<LoginKeyRing>, LoginKeyUnavailable>>;
}

/// A login this gateway started, read back from its cookie.
#[derive(Debug, Clone)]
pub struct PendingLogin {
    /// The AuthnRequest id the response must answer (`InResponseTo`).
    pub request_id: String,
    /// Where the browser goes after the login (a safe same-origin path).
    pub return_to: String,
    /// When the cookie stops being accepted.
    pub expires: SystemTime,
}

fn mac_input(payload: &str) -> Vec<u8> {
    let mut input = Vec::with_capacity(LOGIN_MAC_CONTEXT.len() + payload.len());
    input.extend_from_slice(LOGIN_MAC_CONTEXT);
    input.extend_from_slice(payload.as_bytes());
    input
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn login_cookie_round_trips_and_refuses_tampering_and_expiry() {
        let key = LoginKey::random().unwrap();
        let now = SystemTime::now();
        let value = key.seal("_abc", "/o/x", now);
        let pending = key.open(&value, now).unwrap();
        assert_eq!(
            (pending.request_id.as_str(), pending.return_to.as_str()),
            ("_abc", "/o/x")
        );
        let later = now + Duration::from_secs(d::SAML_LOGIN_COOKIE_SECS + 1);
        assert!(key.open(&value, later).is_none());
        let (payload, tag) = value.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(b"_abc\n99999999999\n//evil.com");
        assert!(key.open(&format!("{forged}.{tag}"), now).is_none());
        assert!(key.open(payload, now).is_none());
        let other = LoginKey::random().unwrap();
        assert!(other.open(&value, now).is_none());
    }

    #[test]
    fn a_configured_key_opens_the_cookies_of_another_holder_of_the_same_key() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let now = SystemTime::now();
        let value = LoginKey::from_secret(secret).seal("_abc", "/", now);
        assert!(LoginKey::from_secret(secret).open(&value, now).is_some());
        let other = LoginKey::from_secret(b"fedcba9876543210fedcba9876543210");
        assert!(other.open(&value, now).is_none());
    }
}
