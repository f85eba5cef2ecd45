//! The authenticated `/admin/*` API on the admin listener.
//!
//! | route | what |
//! |---|---|
//! | `GET /admin/network` | the lists in force, global and per source |
//! | `PUT /admin/network` | replace them: `{"allow", "deny", "trusted_proxies", "sources"?}` |
//! | `PATCH /admin/network` | `{"add": {...}, "remove": {...}, "source": "name"?}` |
//! | `GET /admin/revocations` | the revocation list |
//! | `POST /admin/revocations` | `{"jti": "..."}` or `{"sub": "...", "issued_before": N}`: persisted, then effective for the next request |
//! | `POST /admin/reload` | read the config file again |
//! | `GET /admin/cluster` | `[redis]`: this node's name and the nodes seen within the heartbeat TTL (`state::redis::cluster::NodeInfo` each); 409 without `[redis]`, 503 when Redis does not answer |
//! | `GET /admin/cache` | cache statistics (`cache::Stats`) |
//! | `POST /admin/cache/purge` | `{"source"}`, `{"source", "prefix"}` or `{"source", "key"}`: `{"purged": N}` entries removed |
//! | `POST /admin/cache/prewarm` | `{"source", "keys": [...]}` or `{"source", "prefix"}`: 202 `{"job": "<id>"}` |
//! | `GET /admin/cache/prewarm/<id>` | `{"state": "running"/"done", "done", "total", "bytes", "errors", "failed": [{"key", "error"}]}` |
//!
//! The cache routes answer 409 when the gateway started without `[cache]`; an unknown source,
//! a `credentials = "saml"` source (prewarm: no authority of its own), a `cache = false` source
//! (prewarm) or a prefix holding more objects than one job reads is 400; a listing the store
//! refused or failed is 502; a prewarm while the most jobs already run is 429. See `cache.rs`
//! for the bounds of prewarm jobs.
//!
//! Without `[admin] token` none of these routes exist (404). With one, every request needs
//! `Authorization: Bearer <token>`, checked against the digest of the token in force now (a
//! reload that rotates or removes it applies to the next request); a missing or wrong one gets
//! 401 with one fixed body, before the route is even looked at. Bodies are JSON, at most
//! `ADMIN_BODY_MAX_BYTES`. Every list change is validated with the config's own CIDR rules,
//! built into a new snapshot, persisted atomically, audited, and only then put in force
//! (`reload/mod.rs`). Every change is recorded through the audit log, one record format.

use std::sync::Arc;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::error::{AdminError, api_json};
use super::{Admin, cache};
use crate::config::defaults::ADMIN_BODY_MAX_BYTES;
use crate::identity::revocation::{Revocation, RevocationStore};
use crate::reload::lists::{ListsError, NetworkLists, Patch};
use crate::reload::{ChangeError, ReloadError, TokenDigest, Trigger};
use crate::telemetry::ErrorChain;
use crate::web::body::{ReadError, read_bounded};
use crate::web::{ResponseBody, parse};

/// Answer one `/admin/...` request.
pub(super) async fn handle(admin: &Admin, req: Request<Incoming>) -> Response<ResponseBody> {
    match route(admin, req).await {
        Ok(resp) => resp,
        Err(err) => {
            if err.status().is_server_error() {
                tracing::error!(error = %ErrorChain(&err), "admin request failed");
            }
            err.response()
        }
    }
}

async fn route(
    admin: &Admin,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, AdminError> {
    // No token configured: the API does not exist. Read on every request: a reload may have
    // rotated or removed it.
    let token = admin.control.admin_token().ok_or(AdminError::NotFound)?;
    let who = authenticate(&token, req.headers())?;
    let control = &admin.control;
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (path.as_str(), method) {
        ("/admin/network", Method::GET) => Ok(lists_response(&control.network_lists().await)),
        ("/admin/network", Method::PUT) => {
            let body = read_body(req).await?;
            let lists = NetworkLists::from_json(&body)?;
            change(admin, &who, "replace", move |_, _| Ok(lists)).await
        }
        ("/admin/network", Method::PATCH) => {
            let body = read_body(req).await?;
            let patch = Patch::from_json(&body)?;
            change(admin, &who, "patch", move |current, config| {
                current.patched(&patch, config)
            })
            .await
        }
        ("/admin/network", _) => Err(AdminError::MethodNotAllowed {
            allow: "GET, PUT, PATCH",
        }),
        ("/admin/revocations", Method::GET) => {
            let list = admin
                .revocations
                .list()
                .await
                .map_err(AdminError::StoreUnavailable)?;
            let body = serde_json::to_vec(&list).map_err(AdminError::Encoding)?;
            Ok(api_json(StatusCode::OK, body))
        }
        ("/admin/revocations", Method::POST) => {
            let body = read_body(req).await?;
            let revocation = Revocation::from_json(&body).map_err(AdminError::InvalidRevocation)?;
            let what = match &revocation {
                Revocation::Token { jti } => serde_json::json!({ "jti": jti }),
                Revocation::Subject { sub, issued_before } => {
                    serde_json::json!({ "sub": sub, "issued_before": issued_before })
                }
            };
            admin
                .revocations
                .revoke(revocation)
                .await
                .map_err(AdminError::NotPersisted)?;
            record(admin, &who, "revoke", &what);
            Ok(api_json(StatusCode::CREATED, "{\"status\":\"revoked\"}\n"))
        }
        ("/admin/revocations", _) => Err(AdminError::MethodNotAllowed { allow: "GET, POST" }),
        ("/admin/reload", Method::POST) => match control.reload_from_file(Trigger::Api).await {
            Ok(()) => {
                record(
                    admin,
                    &who,
                    "reload",
                    &serde_json::json!({ "outcome": "ok" }),
                );
                Ok(api_json(StatusCode::OK, "{\"status\":\"reloaded\"}\n"))
            }
            Err(ReloadError::NoConfigFile) => Err(AdminError::NoConfigFile),
            Err(ReloadError::Config(errors)) => Err(AdminError::ConfigInvalid(errors)),
            Err(ReloadError::Tls(e)) => Err(AdminError::TlsInvalid(e)),
            Err(e @ (ReloadError::State(_) | ReloadError::Build(_))) => {
                Err(AdminError::ReloadFailed(e))
            }
        },
        ("/admin/reload", _) => Err(AdminError::MethodNotAllowed { allow: "POST" }),
        ("/admin/cluster", Method::GET) => {
            let redis = admin
                .pipeline
                .shared()
                .redis()
                .cloned()
                .ok_or(AdminError::ClusterOff)?;
            let now = crate::civil_time::unix_secs(std::time::SystemTime::now());
            let nodes = crate::state::redis::cluster::nodes(&redis, now)
                .await
                .map_err(AdminError::ClusterUnavailable)?;
            let node = control
                .effective_config()
                .await
                .redis
                .map(|r| r.node_name)
                .unwrap_or_default();
            let body = serde_json::json!({ "node": node, "nodes": nodes });
            Ok(api_json(StatusCode::OK, format!("{body}\n")))
        }
        ("/admin/cluster", _) => Err(AdminError::MethodNotAllowed { allow: "GET" }),
        (path, method) if path == "/admin/cache" || path.starts_with("/admin/cache/") => {
            cache_route(admin, &who, path, method, req).await
        }
        _ => Err(AdminError::NotFound),
    }
}

/// The `/admin/cache` routes (see `cache.rs`).
async fn cache_route(
    admin: &Admin,
    who: &str,
    path: &str,
    method: Method,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, AdminError> {
    let allow = match path {
        "/admin/cache" => "GET",
        "/admin/cache/purge" | "/admin/cache/prewarm" => "POST",
        _ if path.starts_with("/admin/cache/prewarm/") => "GET",
        _ => return Err(AdminError::NotFound),
    };
    if method.as_str() != allow {
        return Err(AdminError::MethodNotAllowed { allow });
    }
    let cache = admin
        .pipeline
        .shared()
        .cache()
        .cloned()
        .ok_or(AdminError::CacheOff)?;
    match path {
        "/admin/cache" => {
            let body = serde_json::to_vec(&cache.stats()).map_err(AdminError::Encoding)?;
            Ok(api_json(StatusCode::OK, body))
        }
        "/admin/cache/purge" => {
            let purge = cache::parse_purge(&read_body(req).await?)?;
            let config = admin.control.effective_config().await;
            cache::check_source(
                &config,
                &admin.pipeline.snapshot(),
                cache::purge_source(&purge),
            )?;
            let purged = cache.purge(&purge);
            record(
                admin,
                who,
                "cache-purge",
                &cache::purge_record(&purge, purged),
            );
            Ok(api_json(
                StatusCode::OK,
                format!("{}\n", serde_json::json!({ "purged": purged })),
            ))
        }
        "/admin/cache/prewarm" => {
            let wanted = cache::parse_prewarm(&read_body(req).await?)?;
            let config = admin.control.effective_config().await;
            let snapshot = admin.pipeline.snapshot();
            cache::check_source(&config, &snapshot, &wanted.source)?;
            cache::check_prewarmable(&config, &wanted.source)?;
            let backend = snapshot
                .sources()
                .find(|(name, _)| **name == wanted.source)
                .map(|(_, backend)| backend)
                .ok_or_else(|| AdminError::UnknownSource(wanted.source.clone()))?;
            let keys = cache::keys_to_prewarm(backend, wanted.what.clone()).await?;
            let total = keys.len();
            let job = admin
                .prewarm
                .start(cache, Arc::clone(&snapshot), &wanted.source, keys)?;
            let what = match &wanted.what {
                cache::PrewarmWhat::Keys(_) => serde_json::json!({
                    "source": wanted.source, "job": job.id(), "total": total,
                }),
                cache::PrewarmWhat::Prefix(prefix) => serde_json::json!({
                    "source": wanted.source, "prefix": prefix, "job": job.id(), "total": total,
                }),
            };
            record(admin, who, "cache-prewarm", &what);
            Ok(api_json(
                StatusCode::ACCEPTED,
                format!("{}\n", serde_json::json!({ "job": job.id() })),
            ))
        }
        _ => {
            let id = path.trim_start_matches("/admin/cache/prewarm/");
            let job = admin.prewarm.get(id).ok_or(AdminError::NoSuchJob)?;
            Ok(api_json(StatusCode::OK, format!("{}\n", job.status())))
        }
    }
}

async fn change<F>(
    admin: &Admin,
    who: &str,
    action: &str,
    f: F,
) -> Result<Response<ResponseBody>, AdminError>
where
    F: FnOnce(&NetworkLists, &crate::config::Config) -> Result<NetworkLists, ListsError>,
{
    match admin.control.change_lists(f).await {
        Ok((before, after)) => {
            record(admin, who, action, &before.diff(&after));
            Ok(lists_response(&after))
        }
        Err(ChangeError::Invalid(e)) => Err(AdminError::Invalid(e)),
        Err(e) => Err(AdminError::ChangeFailed(e)),
    }
}

/// `Authorization: Bearer <token>` checked against the configured token in constant time.
/// Returns who made the request, for the audit record.
fn authenticate(token: &TokenDigest, headers: &http::HeaderMap) -> Result<String, AdminError> {
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(parse::bearer)
        .ok_or(AdminError::Unauthorized)?;
    if token.matches(presented) {
        Ok(token.who())
    } else {
        Err(AdminError::Unauthorized)
    }
}

/// The JSON body, at most `ADMIN_BODY_MAX_BYTES` (a larger declared length is refused unread).
async fn read_body(req: Request<Incoming>) -> Result<Bytes, AdminError> {
    read_bounded(req.into_body(), ADMIN_BODY_MAX_BYTES, None)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge => AdminError::BodyTooLarge,
            ReadError::Broken | ReadError::Timeout => AdminError::BodyRead,
        })
}

/// Every admin change goes through here: one audit record (who: a hash prefix of the token,
/// never the token; the action; what changed) and one log line.
fn record(admin: &Admin, who: &str, action: &str, what: &serde_json::Value) {
    admin.pipeline.audit().admin_change(who, action, what);
    tracing::info!(who, action, "admin change");
}

fn lists_response(lists: &NetworkLists) -> Response<ResponseBody> {
    api_json(StatusCode::OK, format!("{}\n", lists.to_json()))
}
