//! The admin listener (plain HTTP, loopback by default, never the data port): `/healthz` (the
//! process is up), `/readyz` (every source answers), `/metrics` (Prometheus text), and the
//! authenticated `/admin/*` API (`Authorization: Bearer <[admin] token>`, compared in constant
//! time; without a configured token every `/admin/` route is 404): network lists and reload in
//! `api.rs`, and here:
//!
//! - `GET /admin/revocations`: the revocation list as JSON;
//! - `POST /admin/revocations` with `{"jti": "..."}` or `{"sub": "...", "issued_before": N}`:
//!   persisted, then effective for the next request.

pub mod api;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::backend::Backend;
use crate::config::Secret;
use crate::config::defaults::ADMIN_MAX_BODY_BYTES;
use crate::identity::revocation::{Revocation, RevocationStore, Revocations};
use crate::pipeline::respond::ResponseBody;
use crate::pipeline::{ConnInfo, ErrorChain, Pipeline};
use crate::reload::Control;
use crate::server::Handler;

/// How long `/readyz` waits for each source.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Admin {
    pipeline: Arc<Pipeline>,
    control: Arc<Control>,
    revocations: Option<Arc<Revocations>>,
    token: Option<Secret>,
}

impl Admin {
    pub fn new(pipeline: Arc<Pipeline>, control: Arc<Control>) -> Admin {
        Admin {
            pipeline,
            control,
            revocations: None,
            token: None,
        }
    }

    /// Serve `/admin/revocations`, authenticated by `token` (none: `/admin/` is 404).
    pub fn with_revocations(
        mut self,
        revocations: Arc<Revocations>,
        token: Option<Secret>,
    ) -> Admin {
        self.revocations = Some(revocations);
        self.token = token;
        self
    }

    /// `Authorization: Bearer <token>`, compared in constant time.
    fn authenticated(&self, req: &Request<Incoming>, token: &Secret) -> bool {
        use subtle::ConstantTimeEq;
        let presented = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(token.expose().as_bytes())))
    }

    async fn admin_api(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let (Some(token), Some(revocations)) = (&self.token, &self.revocations) else {
            return text(StatusCode::NOT_FOUND, "not found\n");
        };
        if !self.authenticated(&req, token) {
            let mut resp = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            return resp;
        }
        if req.uri().path() != "/admin/revocations" {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        match *req.method() {
            Method::GET => match revocations
                .list()
                .await
                .map(|list| serde_json::to_vec(&list))
            {
                Ok(Ok(body)) => json(StatusCode::OK, body),
                Ok(Err(_)) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "revocation store unavailable\n",
                ),
            },
            Method::POST => {
                let body = match http_body_util::Limited::new(req.into_body(), ADMIN_MAX_BODY_BYTES)
                    .collect()
                    .await
                {
                    Ok(b) => b.to_bytes(),
                    Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"),
                };
                let revocation = match Revocation::from_json(&body) {
                    Ok(r) => r,
                    Err(form) => return text(StatusCode::BAD_REQUEST, format!("{form}\n")),
                };
                let what = match &revocation {
                    Revocation::Token { .. } => "revoke jti",
                    Revocation::Subject { .. } => "revoke subject",
                };
                match revocations.revoke(revocation).await {
                    Ok(()) => {
                        self.pipeline.audit().admin_change("admin token", what);
                        tracing::info!(what, "revocation added");
                        text(StatusCode::CREATED, "revoked\n")
                    }
                    Err(e) => {
                        tracing::error!(error = %ErrorChain(&e), "revocation not persisted");
                        text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "revocation not persisted\n",
                        )
                    }
                }
            }
            _ => {
                let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                resp.headers_mut()
                    .insert(http::header::ALLOW, HeaderValue::from_static("GET, POST"));
                resp
            }
        }
    }

    async fn route(&self, req: &Request<Incoming>) -> Response<ResponseBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.ready().await,
            "/metrics" => match self.pipeline.metrics().encode() {
                Ok(body) => {
                    let mut resp = text(StatusCode::OK, body);
                    resp.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    resp
                }
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "metrics encoding failed\n",
                ),
            },
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// Ready when every source answers; the body names the ones that do not (names only).
    async fn ready(&self) -> Response<ResponseBody> {
        let snapshot = self.pipeline.snapshot();
        let checks = snapshot.sources().map(|(name, backend)| async move {
            let outcome = tokio::time::timeout(READY_CHECK_TIMEOUT, backend.ready()).await;
            match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => {
                    tracing::warn!(source = %name, error = %ErrorChain(&e), "source not ready");
                    Some(name.clone())
                }
                Err(_) => {
                    tracing::warn!(source = %name, "source readiness check timed out");
                    Some(name.clone())
                }
            }
        });
        let failed: Vec<String> = futures_util::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect();
        if failed.is_empty() {
            text(StatusCode::OK, "ready\n")
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", failed.join(", ")),
            )
        }
    }
}

impl Handler for Admin {
    async fn call(&self, req: Request<Incoming>, _conn: ConnInfo) -> Response<ResponseBody> {
        let mut resp = self.answer(req).await;
        // Nothing here is a page, but a browser pointed at the admin port must not frame it.
        crate::pipeline::respond::no_framing_headers(resp.headers_mut());
        resp
    }
}

impl Admin {
    async fn answer(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        // The data listener's stage 0, so the admin port is no laxer an HTTP server.
        let (parts, body) = req.into_parts();
        if let Err(e) = crate::pipeline::request::check(&parts) {
            tracing::debug!(error = %e, "admin request refused");
            let body = serde_json::json!({ "error": e.client_message() });
            let mut resp = json(e.status(), format!("{body}\n"));
            if e.closes_connection() {
                crate::pipeline::respond::close_after(resp.headers_mut(), parts.version);
            }
            return resp;
        }
        let req = Request::from_parts(parts, body);
        if req.uri().path().starts_with("/admin/") {
            if req.uri().path() == "/admin/revocations" {
                return self.admin_api(req).await;
            }
            return api::handle(&self.control, req).await;
        }
        self.route(&req).await
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut resp = Response::new(
        http_body_util::Full::new(body.into())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut resp = text(status, body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
