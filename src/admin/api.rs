//! The authenticated `/admin/*` API on the admin listener.
//!
//! | route | what |
//! |---|---|
//! | `GET /admin/network` | the lists in force, global and per source |
//! | `PUT /admin/network` | replace them: `{"allow", "deny", "trusted_proxies", "sources"?}` |
//! | `PATCH /admin/network` | `{"add": {...}, "remove": {...}, "source": "name"?}` |
//! | `POST /admin/reload` | read the config file again |
//!
//! Without `[admin] token` none of these routes exist (404). With one, every request needs
//! `Authorization: Bearer <token>`; a missing or wrong one gets 401 with one fixed body, before
//! the route is even looked at. Bodies are JSON, at most 64 KiB. Every change is validated with
//! the config's own CIDR rules, built into a new snapshot, persisted atomically, audited, and
//! only then put in force (`reload/mod.rs`).

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::config::defaults::ADMIN_BODY_MAX_BYTES;
use crate::pipeline::ErrorChain;
use crate::pipeline::respond::ResponseBody;
use crate::reload::lists::{ListsError, NetworkLists, Patch};
use crate::reload::{ChangeError, Control, ReloadError, TokenDigest, Trigger};
use crate::server::tls::TlsError;

/// Why an admin request was refused. Status codes are chosen in `error.rs`.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("not found")]
    NotFound,
    #[error("unauthorized")]
    Unauthorized,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body larger than 64 KiB")]
    BodyTooLarge,
    #[error("reading the request body")]
    BodyRead,
    #[error("{0}")]
    Invalid(#[from] ListsError),
    #[error("the gateway was started without --config; there is no file to reload")]
    NoConfigFile,
    #[error("the config file is invalid; the previous configuration stays in force")]
    ConfigInvalid(crate::config::ConfigErrors),
    /// The certificate or key files cannot be used; the body says why (paths and parse errors,
    /// never key bytes).
    #[error("the TLS certificate or key cannot be used; the previous one stays in force")]
    TlsInvalid(#[source] TlsError),
    #[error("the change could not be applied; the previous configuration stays in force")]
    Failed,
}

impl AdminError {
    /// The JSON body the admin sees. 401 is one fixed body whatever the cause.
    fn body(&self) -> String {
        let value = match self {
            AdminError::ConfigInvalid(errors) => serde_json::json!({
                "error": self.to_string(),
                "details": errors.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
            AdminError::TlsInvalid(why) => serde_json::json!({
                "error": self.to_string(),
                "details": [ErrorChain(why).to_string()],
            }),
            other => serde_json::json!({ "error": other.to_string() }),
        };
        format!("{value}\n")
    }
}

/// Answer one `/admin/...` request.
pub async fn handle(control: &Control, req: Request<Incoming>) -> Response<ResponseBody> {
    match route(control, req).await {
        Ok(resp) => resp,
        Err(err) => {
            if err.status().is_server_error() {
                tracing::warn!(error = %ErrorChain(&err), "admin request failed");
            }
            let mut resp = json(err.status(), err.body());
            if matches!(err, AdminError::Unauthorized) {
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            resp
        }
    }
}

async fn route(
    control: &Control,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, AdminError> {
    // No token configured: the API does not exist.
    let token = control.admin_token().ok_or(AdminError::NotFound)?;
    let who = authenticate(&token, req.headers())?;
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (path.as_str(), method) {
        ("/admin/network", Method::GET) => Ok(lists_response(&control.network_lists().await)),
        ("/admin/network", Method::PUT) => {
            let body = read_body(req).await?;
            let lists = NetworkLists::from_json(&body)?;
            change(control, &who, "replace", move |_, _| Ok(lists)).await
        }
        ("/admin/network", Method::PATCH) => {
            let body = read_body(req).await?;
            let patch = Patch::from_json(&body)?;
            change(control, &who, "patch", move |current, config| {
                current.patched(&patch, config)
            })
            .await
        }
        ("/admin/reload", Method::POST) => match control.reload_from_file(Trigger::Api).await {
            Ok(()) => {
                audit_admin_change(&who, "reload", &serde_json::json!({ "outcome": "ok" }));
                Ok(json(http::StatusCode::OK, "{\"status\":\"reloaded\"}\n"))
            }
            Err(ReloadError::NoConfigFile) => Err(AdminError::NoConfigFile),
            Err(ReloadError::Config(errors)) => Err(AdminError::ConfigInvalid(errors)),
            Err(ReloadError::Tls(e)) => Err(AdminError::TlsInvalid(e)),
            Err(_) => Err(AdminError::Failed),
        },
        ("/admin/network" | "/admin/reload", _) => Err(AdminError::MethodNotAllowed),
        _ => Err(AdminError::NotFound),
    }
}

async fn change<F>(
    control: &Control,
    who: &str,
    action: &str,
    f: F,
) -> Result<Response<ResponseBody>, AdminError>
where
    F: FnOnce(&NetworkLists, &crate::config::Config) -> Result<NetworkLists, ListsError>,
{
    match control.change_lists(f).await {
        Ok((before, after)) => {
            audit_admin_change(who, action, &before.diff(&after));
            Ok(lists_response(&after))
        }
        Err(ChangeError::Invalid(e)) => Err(AdminError::Invalid(e)),
        Err(e) => {
            tracing::error!(error = %ErrorChain(&e), "admin change of the network lists failed");
            Err(AdminError::Failed)
        }
    }
}

/// `Authorization: Bearer <token>` checked against the configured token in constant time.
/// Returns who made the request, for the audit record.
fn authenticate(token: &TokenDigest, headers: &http::HeaderMap) -> Result<String, AdminError> {
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .ok_or(AdminError::Unauthorized)?;
    if token.matches(presented) {
        Ok(token.who())
    } else {
        Err(AdminError::Unauthorized)
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, AdminError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > ADMIN_BODY_MAX_BYTES as u64) {
        return Err(AdminError::BodyTooLarge);
    }
    match Limited::new(req.into_body(), ADMIN_BODY_MAX_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(AdminError::BodyTooLarge),
        Err(_) => Err(AdminError::BodyRead),
    }
}

/// Write the audit record of an admin action: who (a hash prefix of the token, never the
/// token), what (the diff), when. One JSON line on the `bucketgate::audit` target until the
/// audit module exists; every admin change goes through here so it can be redirected.
pub fn audit_admin_change(who: &str, action: &str, what: &serde_json::Value) {
    let when = httpdate::fmt_http_date(std::time::SystemTime::now());
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let record = serde_json::json!({
        "kind": "admin_change",
        "who": who,
        "action": action,
        "what": what,
        "when": when,
        "unix_ms": unix_ms,
    });
    tracing::info!(target: "bucketgate::audit", record = %record, "admin change");
}

fn lists_response(lists: &NetworkLists) -> Response<ResponseBody> {
    json(http::StatusCode::OK, format!("{}\n", lists.to_json()))
}

fn json(status: http::StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut resp = Response::new(
        http_body_util::Full::new(body.into())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The refusal keeps its typed cause for the log's chain; the body renders it for the admin.
    #[test]
    fn a_refused_certificate_keeps_its_typed_cause_and_the_body_says_why() {
        let path = std::path::PathBuf::from("/etc/bucketgate/tls/cert.pem");
        let err = AdminError::TlsInvalid(TlsError::NoCert { path: path.clone() });
        let cause = std::error::Error::source(&err).unwrap();
        assert!(matches!(
            cause.downcast_ref::<TlsError>(),
            Some(TlsError::NoCert { path: p }) if *p == path
        ));
        assert_eq!(err.status(), http::StatusCode::UNPROCESSABLE_ENTITY);
        let body: serde_json::Value = serde_json::from_str(&err.body()).unwrap();
        assert_eq!(body["error"], err.to_string());
        assert_eq!(
            body["details"][0],
            "/etc/bucketgate/tls/cert.pem holds no certificate"
        );
    }
}
