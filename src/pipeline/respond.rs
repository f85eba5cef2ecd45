//! Stage 9, respond: response heads for objects and errors, and the streaming body that refuses to
//! look complete when it is not.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, LAST_MODIFIED, REFERRER_POLICY,
    STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::backend::{BackendError, BodyStream, ByteRange, ObjectMeta};
use crate::config::HstsConfig;
use crate::pipeline::error::Error;
use crate::telemetry::{Metrics, RouteLabel};
use crate::web::{self, ResponseBody};

/// Why a response body was cut off. Returning one makes hyper reset the stream (h2) or close the
/// connection (http/1.1), so the client can tell the body is incomplete.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream body failed")]
    Upstream(#[source] BackendError),
    #[error("upstream body ended {missing} bytes early")]
    Truncated { missing: u64 },
    #[error("upstream body is longer than announced")]
    Overlong,
}

impl BodyError {
    /// The `kind` label this failure counts under in `upstream_errors`, if any.
    pub fn upstream_kind(&self) -> Option<&'static str> {
        match self {
            BodyError::Upstream(e) => upstream_error_kind(e),
            BodyError::Truncated { .. } => Some("body_truncated"),
            BodyError::Overlong => Some("body_overlong"),
        }
    }
}

/// The `kind` label of `upstream_errors` for a backend error, or `None` when the store gave an
/// answer rather than failed: a missing key (or a directory in an fs source) is an ordinary 404,
/// seen in `http_requests`, not an upstream fault. A refusal of the gateway's or the user's
/// credentials is counted (`access_denied`): for static and assumed-role sources it means
/// rotated keys or a changed bucket policy, which an operator must hear about. A store that
/// refuses the gateway's own credentials or settings (a wrong secret, region or token) counts as
/// `config_fault`, apart from refusals of a user; so does STS refusing the gateway's `AssumeRole`
/// of a delegated-role source's role.
pub fn upstream_error_kind(e: &BackendError) -> Option<&'static str> {
    match e {
        BackendError::NotFound | BackendError::NotAnObject => None,
        BackendError::AccessDenied
        | BackendError::ConfigFault { .. }
        | BackendError::RoleConfigFault { .. }
        | BackendError::CredentialsUnavailable { .. }
        | BackendError::Changed
        | BackendError::Unreachable(_)
        | BackendError::Timeout(_)
        | BackendError::Stalled(_)
        | BackendError::BodyBroken(_)
        | BackendError::Io(_)
        | BackendError::Protocol(_) => Some(e.kind()),
    }
}

pub const REQUEST_ID: &str = "x-request-id";
/// Nothing a response of ours carries may run, load or be framed: `frame-ancestors` is not covered
/// by `default-src`, so it is named (with `X-Frame-Options` for browsers that predate it).
pub const CSP: &str = "default-src 'none'; frame-ancestors 'none'; sandbox";

/// Headers on every data-listener response.
pub fn security_headers(headers: &mut HeaderMap, request_id: &str) {
    no_framing_headers(headers);
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, v);
    }
}

/// The headers that keep a browser from sniffing, running or framing a response; on every
/// response of both listeners. Replaces any CSP a route set, so no page can loosen it.
pub fn no_framing_headers(headers: &mut HeaderMap) {
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// The `Strict-Transport-Security` value for `config` (RFC 6797 section 6.1).
pub fn hsts_value(config: &HstsConfig) -> HeaderValue {
    let mut value = format!("max-age={}", config.max_age.as_secs());
    if config.include_subdomains {
        value.push_str("; includeSubDomains");
    }
    if config.preload {
        value.push_str("; preload");
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("max-age=31536000"))
}

/// Ask hyper to close an HTTP/1.x connection after this response (`Connection: close`); h2 has
/// no such header, and a refused h2 stream does not put the connection at risk.
pub fn close_after(headers: &mut HeaderMap, version: http::Version) {
    if version < http::Version::HTTP_2 {
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// HSTS on a response of the TLS data listener (never the plain-HTTP admin listener: RFC 6797
/// section 7.2 forbids it over plain HTTP).
pub fn strict_transport_security(headers: &mut HeaderMap, value: &HeaderValue) {
    headers.insert(STRICT_TRANSPORT_SECURITY, value.clone());
}

/// A small JSON error: `{"error": "...", "request_id": "..."}`, the same text for every cause that
/// maps to the same client message.
pub fn error_response(err: &Error, request_id: &str) -> Response<ResponseBody> {
    let status = err.status();
    // Both strings are ours (a video message may name a parameter): escaped as JSON.
    let body = format!(
        "{{\"error\":{},\"request_id\":\"{}\"}}\n",
        serde_json::Value::String(err.client_message().into_owned()),
        request_id
    );
    let mut resp = Response::new(web::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    err.headers(h);
    resp
}

/// Response head for an object (200, 206 or 304), with validators and the content type filtered.
pub fn object_head(
    status: StatusCode,
    meta: &ObjectMeta,
    range: Option<ByteRange>,
) -> http::response::Builder {
    let mut b = Response::builder().status(status);
    if let Some(h) = b.headers_mut() {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("private"));
        if let Some(v) = meta
            .etag
            .as_deref()
            .and_then(|e| HeaderValue::from_str(e).ok())
        {
            h.insert(ETAG, v);
        }
        if let Some(v) = meta.last_modified.and_then(http_date) {
            h.insert(LAST_MODIFIED, v);
        }
        if status == StatusCode::NOT_MODIFIED {
            return b;
        }
        h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let (ctype, attachment) = safe_content_type(meta.content_type.as_deref());
        h.insert(CONTENT_TYPE, ctype);
        if attachment {
            h.insert(CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
        }
        let len = range.map_or(meta.size, |r| r.len());
        h.insert(CONTENT_LENGTH, HeaderValue::from(len));
        if let Some(r) = range
            && let Ok(v) =
                HeaderValue::from_str(&format!("bytes {}-{}/{}", r.start, r.end, meta.size))
        {
            h.insert(CONTENT_RANGE, v);
        }
    }
    b
}

fn http_date(t: SystemTime) -> Option<HeaderValue> {
    HeaderValue::from_str(&httpdate::fmt_http_date(t)).ok()
}

/// Pass a stored content type only if it is on the safe list (images except SVG, video, audio,
/// JSON, plain text); anything else becomes an octet-stream download.
pub fn safe_content_type(stored: Option<&str>) -> (HeaderValue, bool) {
    const FALLBACK: (HeaderValue, bool) =
        (HeaderValue::from_static("application/octet-stream"), true);
    let Some(stored) = stored else {
        return FALLBACK;
    };
    let mut parts = stored.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let Some((top, sub)) = essence.split_once('/') else {
        return FALLBACK;
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    if !token(top) || !token(sub) {
        return FALLBACK;
    }
    let safe = match top {
        "image" => !sub.contains("svg") && !sub.contains("xml"),
        "video" | "audio" => true,
        "application" => sub == "json",
        "text" => sub == "plain",
        _ => false,
    };
    if !safe {
        return FALLBACK;
    }
    let charset = parts
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
        .map(|(_, v)| v.trim().trim_matches('"').to_ascii_lowercase())
        .filter(|v| token(v));
    let value = match charset {
        Some(cs) if top == "text" || essence == "application/json" => {
            format!("{essence}; charset={cs}")
        }
        _ => essence,
    };
    match HeaderValue::from_str(&value) {
        Ok(v) => (v, false),
        Err(_) => FALLBACK,
    }
}

/// The body of an object response: passes frames through with backpressure (hyper polls for the
/// next frame only when it can write), checks the byte count against what the head announced, and
/// turns any shortfall or upstream failure into a body error.
///
/// Metrics: an upstream failure counts once in `upstream_errors` (with the source) when it
/// happens; the bytes handed to the connection and, for a body that did not finish, one aborted
/// response count on drop. A client that goes away drops the body without an error, so it is an
/// aborted response but never an upstream error.
pub struct StreamingBody {
    stream: BodyStream,
    remaining: u64,
    sent: u64,
    finished: bool,
    /// A body error was returned (and counted); any later poll only repeats that it failed.
    failed: bool,
    route: &'static str,
    source: String,
    metrics: Arc<Metrics>,
}

impl StreamingBody {
    pub fn new(
        stream: BodyStream,
        len: u64,
        route: &'static str,
        source: String,
        metrics: Arc<Metrics>,
    ) -> StreamingBody {
        StreamingBody {
            stream,
            remaining: len,
            sent: 0,
            finished: len == 0,
            failed: false,
            route,
            source,
            metrics,
        }
    }

    /// End the body with `err`, counting it as an upstream error once.
    fn fail(&mut self, err: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.failed = true;
        if let Some(kind) = err.upstream_kind() {
            self.metrics.upstream_error(&self.source, kind);
        }
        tracing::warn!(
            source = %self.source,
            sent = self.sent,
            missing = self.remaining,
            error = %super::ErrorChain(&err),
            "upstream body failed; aborting the response"
        );
        Poll::Ready(Some(Err(err)))
    }
}

impl Body for StreamingBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        if self.failed {
            // Never `None` after a failure: that would read as a complete body.
            return Poll::Ready(Some(Err(BodyError::Truncated {
                missing: self.remaining,
            })));
        }
        match self.stream.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                let n = chunk.len() as u64;
                if n > self.remaining {
                    return self.fail(BodyError::Overlong);
                }
                self.remaining -= n;
                self.sent += n;
                if self.remaining == 0 {
                    self.finished = true;
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => self.fail(BodyError::Upstream(e)),
            Poll::Ready(None) => {
                let missing = self.remaining;
                self.fail(BodyError::Truncated { missing })
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

impl Drop for StreamingBody {
    fn drop(&mut self) {
        let route = RouteLabel { route: self.route };
        self.metrics
            .response_bytes
            .get_or_create(&route)
            .inc_by(self.sent);
        if !self.finished {
            self.metrics.aborted_responses.get_or_create(&route).inc();
            tracing::info!(
                sent = self.sent,
                missing = self.remaining,
                "response body cut off"
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap; src/ may not
mod tests {
    use super::*;

    #[test]
    fn safe_types_pass_and_others_download() {
        let t = |s: Option<&str>| {
            let (v, a) = safe_content_type(s);
            (v.to_str().unwrap().to_owned(), a)
        };
        assert_eq!(t(Some("image/jpeg")), ("image/jpeg".into(), false));
        assert_eq!(t(Some("Video/MP4")), ("video/mp4".into(), false));
        assert_eq!(
            t(Some("text/plain; charset=UTF-8")),
            ("text/plain; charset=utf-8".into(), false)
        );
        assert_eq!(
            t(Some("application/json")),
            ("application/json".into(), false)
        );
        for bad in [
            "text/html",
            "image/svg+xml",
            "application/javascript",
            "application/xml",
            "text/html;x=image/png",
            "garbage",
            "",
        ] {
            assert_eq!(
                t(Some(bad)),
                ("application/octet-stream".into(), true),
                "{bad}"
            );
        }
        assert_eq!(t(None), ("application/octet-stream".into(), true));
    }

    #[test]
    fn hsts_value_names_only_what_is_configured() {
        let v = |secs: u64, include_subdomains: bool, preload: bool| {
            hsts_value(&HstsConfig {
                max_age: std::time::Duration::from_secs(secs),
                include_subdomains,
                preload,
            })
        };
        assert_eq!(hsts_value(&HstsConfig::default()), "max-age=31536000");
        assert_eq!(v(0, false, false), "max-age=0");
        assert_eq!(v(600, true, false), "max-age=600; includeSubDomains");
        assert_eq!(
            v(63_072_000, true, true),
            "max-age=63072000; includeSubDomains; preload"
        );
    }

    #[test]
    fn missing_objects_are_answers_and_store_failures_are_upstream_errors() {
        assert_eq!(upstream_error_kind(&BackendError::NotFound), None);
        assert_eq!(upstream_error_kind(&BackendError::NotAnObject), None);
        assert_eq!(
            upstream_error_kind(&BackendError::Unreachable("refused".into())),
            Some("unreachable")
        );
        assert_eq!(
            upstream_error_kind(&BackendError::AccessDenied),
            Some("access_denied")
        );
        let broken = BodyError::Upstream(BackendError::BodyBroken("reset".into()));
        assert_eq!(broken.upstream_kind(), Some("body_broken"));
        assert_eq!(
            BodyError::Truncated { missing: 1 }.upstream_kind(),
            Some("body_truncated")
        );
        assert_eq!(BodyError::Overlong.upstream_kind(), Some("body_overlong"));
    }
}
