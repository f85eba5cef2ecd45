//! The admin listener (plain HTTP, loopback by default, never the data port): `/healthz` (the
//! process is up), `/readyz` (every source answers; it names the video routes' state, `video:
//! ok` or `video: unavailable: ffmpeg not found`, still ready; with `[redis]` it also names Redis
//! and each store kept there: `ok`, or `degraded (fallback)`, still ready), `/metrics` (Prometheus text), and the
//! authenticated `/admin/*` API in `api.rs` (network lists, revocations, reload, and the cache
//! routes of `cache.rs`).
//!
//! One router: every `/admin/` request passes the same token check (the digest of the
//! `[admin] token` in force, read from [`Control`] on every request, so a reload that rotates or
//! removes it applies to the next request on every route), the same body limit, and every change
//! is recorded through the [`AuditLog`](crate::audit::AuditLog) in one format. Status codes are
//! chosen in `error.rs` only. This module must not decide data-listener access.

pub mod api;
pub mod cache;
pub mod error;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::backend::Backend;
use crate::identity::revocation::Revocations;
use crate::pipeline::Pipeline;
use crate::reload::Control;
use crate::telemetry::ErrorChain;
use crate::web::{ConnInfo, Handler, ResponseBody, full_response};
use error::ProbeError;

/// How long `/readyz` waits for each source.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Admin {
    pipeline: Arc<Pipeline>,
    control: Arc<Control>,
    revocations: Arc<Revocations>,
    /// Cache prewarm jobs, running and recently finished.
    prewarm: cache::Jobs,
}

impl Admin {
    pub fn new(
        pipeline: Arc<Pipeline>,
        control: Arc<Control>,
        revocations: Arc<Revocations>,
    ) -> Admin {
        Admin {
            pipeline,
            control,
            revocations,
            prewarm: cache::Jobs::new(),
        }
    }

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
            return api::handle(self, req).await;
        }
        self.probe(&req).await.unwrap_or_else(|e| e.response())
    }

    /// `/healthz`, `/readyz`, `/metrics`: GET or HEAD, no authentication.
    async fn probe(&self, req: &Request<Incoming>) -> Result<Response<ResponseBody>, ProbeError> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Err(ProbeError::MethodNotAllowed);
        }
        match req.uri().path() {
            "/healthz" => Ok(text(StatusCode::OK, "ok\n")),
            "/readyz" => self.ready().await,
            "/metrics" => {
                let body = self
                    .pipeline
                    .metrics()
                    .encode()
                    .map_err(ProbeError::Metrics)?;
                let mut resp = text(StatusCode::OK, body);
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                Ok(resp)
            }
            _ => Err(ProbeError::NotFound),
        }
    }

    /// Ready when every source answers; the body names the ones that do not (names only).
    async fn ready(&self) -> Result<Response<ResponseBody>, ProbeError> {
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
            Ok(text(
                StatusCode::OK,
                format!("ready\n{}{}", self.video_line(), self.redis_lines()),
            ))
        } else {
            Err(ProbeError::NotReady(failed))
        }
    }
}

impl Admin {
    /// The video routes' state when it is not the usual one: `video: off` (`[video] enabled =
    /// false`) or `video: unavailable: REASON` (ffmpeg or ffprobe missing); nothing when they
    /// work, so a plain node's answer stays `ready`. Never makes the node unready: a gateway
    /// without ffmpeg still serves objects and images.
    fn video_line(&self) -> String {
        if !self.pipeline.snapshot().video_enabled() {
            return "video: off\n".to_owned();
        }
        match self.pipeline.shared().video() {
            None => "video: unavailable: not set up\n".to_owned(),
            Some(work) => match work.fence.tools().unavailable() {
                None => String::new(),
                Some(reason) => format!("video: unavailable: {reason}\n"),
            },
        }
    }

    /// With `[redis]`: one line for Redis and one per store kept there, e.g.
    /// `revocations: degraded (last synced list)`. A degraded store still serves from its
    /// documented fallback, so it does not make the node unready (taking every node out of the
    /// load balancer because Redis is down would turn a degraded service into none).
    fn redis_lines(&self) -> String {
        let shared = self.pipeline.shared();
        let Some(redis) = shared.redis() else {
            return String::new();
        };
        let mut out = format!("redis: {}\n", if redis.healthy() { "ok" } else { "down" });
        let lists = self.control.shared_lists().map(|l| l.health());
        for h in shared.redis_health().into_iter().chain(lists) {
            match h.fallback {
                Some(fallback) => out.push_str(&format!("{}: {} ({fallback})\n", h.store, h.state)),
                None => out.push_str(&format!("{}: {}\n", h.store, h.state)),
            }
        }
        out
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

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut resp = full_response(status, body);
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut resp = full_response(status, body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
