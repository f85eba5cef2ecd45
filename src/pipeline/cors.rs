//! CORS for the configured labeling-UI origins (`[cors]`).
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered after the
//! network stage and before identity: browsers send it without credentials, so it cannot carry a
//! token. A listed origin gets 204 with the allowed methods and headers; any other origin is
//! refused (403) without `Access-Control-Allow-Origin`. Actual responses, errors included, to a
//! listed origin carry the origin itself (never `*`, since credentials are allowed) and the
//! headers a media viewer needs to read.
//!
//! Every request's `Origin` is classified once ([`Cors::outcome`]: `allowed`, `not_listed`,
//! `none`) for the audit record and the unlisted-origin counter: a browser hides a response to
//! an unlisted origin from the page whatever its status, so a missing `[cors]` entry must show
//! somewhere other than in the browser.
//!
//! With `[cors] any_origin_for_token_requests = true`, a request from an unlisted origin that
//! carries no `Cookie` header gets `Access-Control-Allow-Origin: *` without credentials (and its
//! preflight 204 the same way). Such a request can only be authorized by a token in its URL or an
//! `Authorization` header, which the page must already hold and no browser adds by itself, so
//! `*` exposes nothing another site could not read with that token anyway; and a browser refuses
//! `*` for a credentialed (cookie) request, whose answer keeps the listed origins. This is what
//! IIIF viewers embedded on any site, and the IIIF validator, expect.
//!
//! This stage decides only which headers a browser sees; it never grants access to an object.

use std::fmt;
use std::time::Duration;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, COOKIE, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::audit::CorsOutcome;
use crate::config::CorsConfig;
use crate::pipeline::error::Error;

use crate::web::{self, ResponseBody};

const ALLOW_METHODS: &str = "GET, HEAD";
const ALLOW_HEADERS: &str = "Range, Authorization, If-None-Match, If-Modified-Since, If-Range";
const EXPOSE_HEADERS: &str =
    "Content-Range, Accept-Ranges, ETag, Content-Length, Content-Type, X-Request-Id";

/// The CORS policy of one config snapshot.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<HeaderValue>,
    max_age: HeaderValue,
    /// `any_origin_for_token_requests`.
    any_origin: bool,
}

impl Cors {
    pub fn new(config: &CorsConfig) -> Cors {
        Cors {
            // Validated as plain ASCII origins at config load.
            origins: config
                .allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
            max_age: HeaderValue::from(config.max_age.as_secs()),
            any_origin: config.any_origin_for_token_requests,
        }
    }

    /// No origin is allowed: no CORS headers at all.
    pub fn disabled() -> Cors {
        Cors::new(&CorsConfig {
            allowed_origins: Vec::new(),
            max_age: Duration::from_secs(0),
            any_origin_for_token_requests: false,
        })
    }

    fn enabled(&self) -> bool {
        !self.origins.is_empty() || self.any_origin
    }

    /// Whether the request gets `*` (see the module doc): the option is on, the request has one
    /// `Origin` (not a listed one) and no `Cookie` header.
    fn any_origin_for(&self, headers: &HeaderMap) -> bool {
        self.any_origin
            && headers.get_all(ORIGIN).iter().count() == 1
            && !headers.contains_key(COOKIE)
            && self.allowed_origin(headers).is_none()
    }

    /// The request's `Origin`, if it is one of the listed origins (exact, byte for byte).
    fn allowed_origin<'h>(&self, headers: &'h HeaderMap) -> Option<&'h HeaderValue> {
        let mut origins = headers.get_all(ORIGIN).iter();
        let origin = origins.next()?;
        if origins.next().is_some() {
            return None;
        }
        self.origins.iter().any(|o| o == origin).then_some(origin)
    }

    /// What this policy makes of the request's `Origin` (for the audit record and the metric).
    pub fn outcome(&self, headers: &HeaderMap) -> CorsOutcome {
        if !headers.contains_key(ORIGIN) {
            CorsOutcome::None
        } else if self.allowed_origin(headers).is_some() || self.any_origin_for(headers) {
            CorsOutcome::Allowed
        } else {
            CorsOutcome::NotListed
        }
    }

    /// The `[cors]` entry that lists the request's origin, if one does.
    pub fn rule(&self, headers: &HeaderMap) -> Option<CorsRule> {
        self.allowed_origin(headers).map(|origin| CorsRule {
            origin: origin.clone(),
        })
    }
}

/// The `[cors] allowed_origins` entry that matched a request: `allow https://label.example.com`
/// in the audit record's `rule`.
#[derive(Debug, Clone)]
pub struct CorsRule {
    origin: HeaderValue,
}

impl fmt::Display for CorsRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Listed origins are validated as plain ASCII at config load.
        write!(
            f,
            "allow {}",
            String::from_utf8_lossy(self.origin.as_bytes())
        )
    }
}

/// Whether this request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`. Any other `OPTIONS` is an ordinary (refused) method.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(ORIGIN)
        && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// Answer a preflight: 204 with the policy for a listed origin (`rule`, from [`Cors::rule`]),
/// else a refusal without `Access-Control-Allow-Origin`.
pub fn preflight(
    cors: &Cors,
    request: &HeaderMap,
    rule: Option<CorsRule>,
) -> Result<Response<ResponseBody>, Error> {
    let mut resp = Response::new(web::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    match rule {
        Some(CorsRule { origin }) => {
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        // Without credentials: the browser sends the actual request only if it carries none.
        None if cors.any_origin_for(request) => {
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        }
        None => return Err(Error::CorsOriginNotAllowed),
    }
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOW_METHODS),
    );
    h.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    h.insert(ACCESS_CONTROL_MAX_AGE, cors.max_age.clone());
    Ok(resp)
}

/// Headers on an actual (non-preflight) response, errors included. `Vary: Origin` whenever CORS
/// is configured, since the answer depends on the request's origin.
pub fn apply(cors: &Cors, request: &HeaderMap, response: &mut HeaderMap) {
    if !cors.enabled() {
        return;
    }
    response.append(VARY, HeaderValue::from_static("Origin"));
    if response.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN) {
        // A preflight answer already has its headers.
        return;
    }
    match cors.allowed_origin(request) {
        Some(origin) => {
            response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            response.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        None if cors.any_origin_for(request) => {
            response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        }
        None => return,
    }
    response.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap; src/ may not
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors::new(&CorsConfig {
            allowed_origins: vec!["https://label.example.com".into()],
            max_age: Duration::from_secs(600),
            any_origin_for_token_requests: false,
        })
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cors_origin_must_match_exactly_once() {
        let c = cors();
        assert!(
            c.allowed_origin(&headers(&[("origin", "https://label.example.com")]))
                .is_some()
        );
        for other in [
            "https://label.example.com.evil.com",
            "http://label.example.com",
            "https://LABEL.example.com",
            "https://label.example.com/",
            "null",
        ] {
            assert!(
                c.allowed_origin(&headers(&[("origin", other)])).is_none(),
                "{other}"
            );
        }
        let twice = headers(&[
            ("origin", "https://label.example.com"),
            ("origin", "https://label.example.com"),
        ]);
        assert!(c.allowed_origin(&twice).is_none());
    }

    #[test]
    fn cors_outcome_tells_listed_unlisted_and_absent_origins_apart() {
        let c = cors();
        let listed = headers(&[("origin", "https://label.example.com")]);
        assert_eq!(c.outcome(&listed), CorsOutcome::Allowed);
        assert_eq!(
            c.rule(&listed).unwrap().to_string(),
            "allow https://label.example.com"
        );
        let other = headers(&[("origin", "https://other.example.com")]);
        assert_eq!(c.outcome(&other), CorsOutcome::NotListed);
        assert!(c.rule(&other).is_none());
        assert_eq!(c.outcome(&HeaderMap::new()), CorsOutcome::None);
        // No [cors] at all: every origin is unlisted (the misconfiguration the metric shows).
        assert_eq!(Cors::disabled().outcome(&listed), CorsOutcome::NotListed);
    }

    #[test]
    fn any_origin_is_star_without_credentials_only_for_cookieless_requests() {
        let c = Cors::new(&CorsConfig {
            allowed_origins: vec!["https://label.example.com".into()],
            max_age: Duration::from_secs(600),
            any_origin_for_token_requests: true,
        });
        let answer = |req: &HeaderMap| {
            let mut resp = HeaderMap::new();
            apply(&c, req, &mut resp);
            (
                resp.get(ACCESS_CONTROL_ALLOW_ORIGIN)
                    .map(|v| v.to_str().unwrap().to_owned()),
                resp.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS),
            )
        };
        let other = headers(&[("origin", "https://viewer.example.org")]);
        assert_eq!(answer(&other), (Some("*".into()), false));
        assert_eq!(c.outcome(&other), CorsOutcome::Allowed);
        // A cookie: only listed origins, with credentials.
        let cookie = headers(&[("origin", "https://viewer.example.org"), ("cookie", "s=1")]);
        assert_eq!(answer(&cookie), (None, false));
        assert_eq!(c.outcome(&cookie), CorsOutcome::NotListed);
        let listed = headers(&[("origin", "https://label.example.com"), ("cookie", "s=1")]);
        assert_eq!(
            answer(&listed),
            (Some("https://label.example.com".into()), true)
        );
        // Preflights: `*` without credentials for a cookieless unlisted origin.
        let pre = preflight(&c, &other, None).unwrap();
        assert_eq!(pre.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!pre.headers().contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
        assert!(preflight(&c, &cookie, None).is_err());
        // Off (the default): nothing for unlisted origins.
        let mut resp = HeaderMap::new();
        apply(&cors(), &other, &mut resp);
        assert!(!resp.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(preflight(&cors(), &other, None).is_err());
    }

    #[test]
    fn cors_disabled_adds_no_headers() {
        let mut resp = HeaderMap::new();
        apply(
            &Cors::disabled(),
            &headers(&[("origin", "https://label.example.com")]),
            &mut resp,
        );
        assert!(resp.is_empty());
    }
}
