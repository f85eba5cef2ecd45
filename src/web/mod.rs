//! Neutral HTTP plumbing that the listeners (`server`), the data pipeline, the admin router and
//! the SAML routes share: what a connection is ([`ConnInfo`]), what answers a request
//! ([`Handler`]), the one response body type ([`ResponseBody`]) and its small constructors,
//! bounded body reads (`body.rs`) and the header/query parsers (`parse.rs`), each written once.
//!
//! This module knows no routes, tokens, policies or status codes, and must not import
//! `server`, `pipeline`, `admin`, `saml` or any other module of the crate above `config`: it sits
//! below all of them, so each can use it without an import cycle.

pub mod body;
pub mod parse;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

/// Why a response body was cut off, boxed: the typed cause (e.g. the pipeline's `BodyError`)
/// stays inside for whoever logs it. Returning one makes hyper reset the stream (h2) or close
/// the connection (http/1.1), so the client can tell the body is incomplete.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body either listener sends.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> ResponseBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body that is whole in memory.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Any body of ours as a [`ResponseBody`]; its error is boxed only if it occurs.
pub fn boxed<B>(body: B) -> ResponseBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A response with `status`, a whole body, and no header yet.
pub fn full_response(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp
}

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client as the data listener sees it: the TCP peer, or the source address of a PROXY
    /// protocol header sent by a configured peer.
    pub peer: SocketAddr,
    /// The TCP peer that sent a PROXY protocol header, if one did.
    pub proxied_by: Option<SocketAddr>,
}

impl ConnInfo {
    /// A direct connection (no PROXY protocol header).
    pub fn direct(peer: SocketAddr) -> ConnInfo {
        ConnInfo {
            peer,
            proxied_by: None,
        }
    }
}

/// Something that answers requests: the data pipeline, or the admin router.
pub trait Handler: Send + Sync + 'static {
    fn call(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<ResponseBody>> + Send;

    /// If `peer` must open with a PROXY protocol header, the time it has to send it. Asked per
    /// connection, so a reload applies to the next connection.
    fn proxy_header_timeout(&self, _peer: std::net::IpAddr) -> Option<Duration> {
        None
    }
}
