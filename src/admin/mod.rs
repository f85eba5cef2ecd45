//! The admin listener (plain HTTP, loopback by default, never the data port): `/healthz` (the
//! process is up), `/readyz` (every source answers), `/metrics` (Prometheus text), and the
//! authenticated `/admin/*` API (`api.rs`).

pub mod api;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::backend::Backend;
use crate::pipeline::respond::ResponseBody;
use crate::pipeline::{ConnInfo, ErrorChain, Pipeline};
use crate::reload::Control;
use crate::server::Handler;

/// How long `/readyz` waits for each source.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Admin {
    pipeline: Arc<Pipeline>,
    control: Arc<Control>,
}

impl Admin {
    pub fn new(pipeline: Arc<Pipeline>, control: Arc<Control>) -> Admin {
        Admin { pipeline, control }
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
        if req.uri().path().starts_with("/admin/") {
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
