//! Stage 1a, the `/auth/` routes: the HTTP half of the SAML service provider (after the
//! network stage and the per-address rate limit, like every request).
//!
//! | route | what |
//! |---|---|
//! | `GET /auth/saml/login?return_to=/path` | 302 to the IdP (HTTP-Redirect AuthnRequest); a signed login cookie remembers the request id and `return_to` |
//! | `POST /auth/saml/acs` | the IdP's response (HTTP-POST binding): form -> login cookie -> [`ServiceProvider::acs`] -> new session cookie, 303 to `return_to` |
//! | `GET /auth/session` | JSON: subject, role, project, expires (unix s); 401 "sign in again" without a live session |
//! | `POST /auth/logout` | ends the session server-side and clears the cookie (204) |
//!
//! This file owns the routes, query and form parsing, bounded body reads, the cookies (read, and
//! every `Set-Cookie` written from the name constants below) and the responses. What a login
//! means (validation, replay, roles, STS, sessions) is `crate::saml::sp`, which takes the parsed
//! values. Nothing from a SAML response, an STS answer or a credential is logged or answered;
//! the error module picks every status.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::Body;

use crate::civil_time::unix_secs;
use crate::config::defaults as d;
use crate::saml::response::SamlError;
use crate::saml::session::{SessionError, SessionStore as _};
use crate::saml::sp::{AcsForm, AuthAudit, SamlState, ServiceProvider, SpError};
use crate::web::body::{NotEmpty, ReadError};
use crate::web::parse::{self, DecodeError, cookies};

/// The session cookie: `__Host-` so it is Secure, host-only and `Path=/`.
pub const SESSION_COOKIE: &str = "__Host-bucketgate-session";
/// The short-lived login cookie (request id + return_to, HMAC-signed).
pub const LOGIN_COOKIE: &str = "__Host-bucketgate-login";
pub const LOGIN_PATH: &str = "/auth/saml/login";
pub const ACS_PATH: &str = "/auth/saml/acs";
pub const SESSION_PATH: &str = "/auth/session";
pub const LOGOUT_PATH: &str = "/auth/logout";
/// Every route of this module starts with it.
pub const AUTH_PREFIX: &str = "/auth/";

/// The `/auth/` routes, parsed once with the request's [`super::route::Route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRoute {
    /// `GET /auth/saml/login`: redirect to the IdP.
    Login,
    /// `POST /auth/saml/acs`: the IdP's response.
    Acs,
    /// `GET|HEAD /auth/session`: who is signed in.
    Session,
    /// `POST /auth/logout`: end the session.
    Logout,
    /// Another path under `/auth/`: 404.
    Unknown,
}

impl AuthRoute {
    /// The route of a path that starts with [`AUTH_PREFIX`].
    pub fn parse(path: &str) -> AuthRoute {
        match path {
            LOGIN_PATH => AuthRoute::Login,
            ACS_PATH => AuthRoute::Acs,
            SESSION_PATH => AuthRoute::Session,
            LOGOUT_PATH => AuthRoute::Logout,
            _ => AuthRoute::Unknown,
        }
    }
}

/// Answer one `/auth/` request. `sp` is `None` without `[saml]` (every route is then 404).
pub async fn handle<B: Body>(
    sp: Option<&ServiceProvider>,
    state: &SamlState,
    route: AuthRoute,
    req: &http::request::Parts,
    body: B,
    audit: &mut AuthAudit,
) -> Result<Response<Bytes>, SpError> {
    let sp = sp.ok_or(SpError::NotConfigured)?;
    let now = state.now();
    let (method, query, headers) = (&req.method, req.uri.query(), &req.headers);
    match route {
        AuthRoute::Login => {
            allow(method, &[Method::GET], "GET")?;
            no_body(body).await?;
            let return_to = login_query(query)?;
            audit.rule = Some("saml login redirect");
            login(sp, state, return_to.as_deref(), now).await
        }
        AuthRoute::Acs => {
            allow(method, &[Method::POST], "POST")?;
            no_query(query)?;
            acs(sp, state, headers, body, now, audit).await
        }
        AuthRoute::Session => {
            allow(method, &[Method::GET, Method::HEAD], "GET, HEAD")?;
            no_query(query)?;
            no_body(body).await?;
            session_info(state, headers, now, audit).await
        }
        AuthRoute::Logout => {
            allow(method, &[Method::POST], "POST")?;
            no_query(query)?;
            logout(state, headers, now, audit).await
        }
        AuthRoute::Unknown => Err(SpError::NoRoute),
    }
}

fn allow(method: &Method, allowed: &[Method], text: &'static str) -> Result<(), SpError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(SpError::MethodNotAllowed { allow: text })
    }
}

async fn no_body<B: Body>(body: B) -> Result<(), SpError> {
    let within = Duration::from_secs(d::EMPTY_BODY_WAIT_SECS);
    crate::web::body::expect_empty(body, within)
        .await
        .map_err(|e| match e {
            NotEmpty::Timeout => SpError::BodyTimeout,
            NotEmpty::Data | NotEmpty::Broken => SpError::BodyNotAllowed,
        })
}

fn no_query(query: Option<&str>) -> Result<(), SpError> {
    match query {
        None | Some("") => Ok(()),
        Some(_) => Err(SpError::UnknownParameter),
    }
}

/// `return_to` (decoded), the login route's only parameter.
fn login_query(query: Option<&str>) -> Result<Option<String>, SpError> {
    let mut return_to = None;
    for (name, value) in parse::query_pairs(query.unwrap_or_default()) {
        if name.is_empty() && value.is_none() {
            continue;
        }
        let value = value.unwrap_or("");
        if name != "return_to" {
            return Err(SpError::UnknownParameter);
        }
        if return_to.is_some() {
            return Err(SpError::Repeated);
        }
        return_to = Some(decode(value, false)?);
    }
    Ok(return_to)
}

/// Percent-decode (and in form bodies `+` -> space) into UTF-8.
fn decode(value: &str, form: bool) -> Result<String, SpError> {
    parse::percent_decode_utf8(value, form).map_err(|e| match e {
        DecodeError::BadPercent | DecodeError::NotUtf8 => SpError::BadEncoding,
    })
}

async fn login(
    sp: &ServiceProvider,
    state: &SamlState,
    return_to: Option<&str>,
    now: SystemTime,
) -> Result<Response<Bytes>, SpError> {
    let start = sp.login(state, return_to, now).await?;
    // SameSite=None: the IdP posts the response cross-site, and a Lax cookie would not come
    // along; the MAC and the short lifetime make it useless to anyone else.
    let cookie = format!(
        "{LOGIN_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=None; Max-Age={}",
        start.login_cookie,
        d::SAML_LOGIN_COOKIE_SECS
    );
    let mut resp = reply(StatusCode::FOUND);
    let h = resp.headers_mut();
    h.insert(LOCATION, header(&start.redirect_url)?);
    h.append(SET_COOKIE, header(&cookie)?);
    Ok(resp)
}

async fn acs<B: Body>(
    sp: &ServiceProvider,
    state: &SamlState,
    headers: &HeaderMap,
    body: B,
    now: SystemTime,
    audit: &mut AuthAudit,
) -> Result<Response<Bytes>, SpError> {
    let is_form = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(SpError::NotAForm);
    }
    let form = read_body(body).await?;
    let form = acs_form(&form)?;
    let pending = sp
        .pending_login(state, cookies(headers, LOGIN_COOKIE), now)
        .await?;
    let session = sp.acs(state, form, pending, now, audit).await?;
    // Rotation: whatever session the browser had before ends now.
    for old in cookies(headers, SESSION_COOKIE) {
        state.sessions().remove(old).await;
    }
    audit.rule = Some("saml login");

    let max_age = session
        .expires
        .duration_since(now)
        .map_or(0, |d| d.as_secs());
    let mut resp = reply(StatusCode::SEE_OTHER);
    let h = resp.headers_mut();
    h.insert(LOCATION, header(&session.return_to)?);
    h.append(
        SET_COOKIE,
        header(&format!(
            "{SESSION_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}",
            session.id.cookie_value()
        ))?,
    );
    h.append(
        SET_COOKIE,
        header(&format!(
            "{LOGIN_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=None; Max-Age=0"
        ))?,
    );
    Ok(resp)
}

/// Read the form body, at most `SAML_ACS_MAX_BODY_BYTES`, within `SAML_ACS_BODY_TIMEOUT_SECS`.
async fn read_body<B: Body>(body: B) -> Result<Bytes, SpError> {
    let within = Duration::from_secs(d::SAML_ACS_BODY_TIMEOUT_SECS);
    crate::web::body::read_bounded(body, d::SAML_ACS_MAX_BODY_BYTES, Some(within))
        .await
        .map_err(|e| match e {
            ReadError::TooLarge => SpError::BodyTooLarge,
            ReadError::Broken => SpError::BodyRead,
            ReadError::Timeout => SpError::BodyTimeout,
        })
}

/// `SAMLResponse` (required) and `RelayState` (optional), each at most once; other fields are
/// ignored (IdPs add their own).
fn acs_form(form: &[u8]) -> Result<AcsForm, SpError> {
    let form = std::str::from_utf8(form).map_err(|_| SpError::BadEncoding)?;
    let mut saml_response = None;
    let mut relay_state = None;
    for (name, value) in parse::query_pairs(form) {
        let value = value.unwrap_or("");
        let slot = match name {
            "SAMLResponse" => &mut saml_response,
            "RelayState" => &mut relay_state,
            _ => continue,
        };
        if slot.is_some() {
            return Err(SpError::Repeated);
        }
        *slot = Some(decode(value, true)?);
    }
    let saml_response = saml_response
        .filter(|r| !r.is_empty())
        .ok_or(SpError::NoResponse)?;
    Ok(AcsForm {
        saml_response,
        relay_state,
    })
}

async fn session_info(
    state: &SamlState,
    headers: &HeaderMap,
    now: SystemTime,
    audit: &mut AuthAudit,
) -> Result<Response<Bytes>, SpError> {
    let mut found = cookies(headers, SESSION_COOKIE);
    let cookie = found
        .next()
        .ok_or(SpError::Session(SessionError::Unknown))?;
    if found.next().is_some() {
        return Err(SpError::Repeated);
    }
    let session = state
        .sessions()
        .get(cookie, now)
        .await
        .map_err(SpError::Session)?;
    let p = session.principal();
    audit.subject = Some(p.subject().to_owned());
    audit.role = Some(p.role().to_owned());
    audit.project = p.project().map(str::to_owned);
    audit.rule = Some("saml session");
    let body = serde_json::json!({
        "subject": p.subject(),
        "role": p.role(),
        "project": p.project(),
        "expires": unix_secs(session.expires()),
    });
    let mut resp = reply(StatusCode::OK);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    *resp.body_mut() = Bytes::from(format!("{body}\n"));
    Ok(resp)
}

async fn logout(
    state: &SamlState,
    headers: &HeaderMap,
    now: SystemTime,
    audit: &mut AuthAudit,
) -> Result<Response<Bytes>, SpError> {
    for cookie in cookies(headers, SESSION_COOKIE) {
        if let Ok(session) = state.sessions().get(cookie, now).await {
            let p = session.principal();
            audit.subject = Some(p.subject().to_owned());
            audit.role = Some(p.role().to_owned());
            audit.project = p.project().map(str::to_owned);
        }
        state.sessions().remove(cookie).await;
    }
    audit.rule = Some("saml logout");
    let mut resp = reply(StatusCode::NO_CONTENT);
    resp.headers_mut().append(
        SET_COOKIE,
        header(&format!(
            "{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0"
        ))?,
    );
    Ok(resp)
}

fn reply(status: StatusCode) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::new());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn header(value: &str) -> Result<HeaderValue, SpError> {
    HeaderValue::from_str(value).map_err(|_| SpError::Request(SamlError::Request))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn acs_form_reads_each_field_once() {
        let form = acs_form(b"SAMLResponse=PHg%2BYQ%3D%3D&RelayState=%2Fo%2Fx&extra=1").unwrap();
        assert_eq!(
            (form.saml_response.as_str(), form.relay_state.as_deref()),
            ("PHg+YQ==", Some("/o/x"))
        );
        assert!(matches!(
            acs_form(b"SAMLResponse=a&SAMLResponse=b"),
            Err(SpError::Repeated)
        ));
        assert!(matches!(
            acs_form(b"RelayState=x"),
            Err(SpError::NoResponse)
        ));
        assert!(matches!(
            acs_form(b"SAMLResponse=%zz"),
            Err(SpError::BadEncoding)
        ));
    }

    #[test]
    fn login_query_takes_only_return_to() {
        assert_eq!(
            login_query(Some("return_to=%2Fo%2Fa")).unwrap().as_deref(),
            Some("/o/a")
        );
        assert_eq!(login_query(None).unwrap(), None);
        assert!(matches!(
            login_query(Some("return_to=/a&x=1")),
            Err(SpError::UnknownParameter)
        ));
        assert!(matches!(
            login_query(Some("return_to=/a&return_to=/b")),
            Err(SpError::Repeated)
        ));
    }
}
