//! Listeners: the accept loop, TLS, and per-connection hyper settings. Knows no paths or tokens;
//! it hands each request to a [`Handler`] with the connection's [`ConnInfo`] (both in `web`).
//!
//! Limits enforced here: max connections (excess connections are closed at accept), TLS handshake
//! timeout, header read timeout, idle timeout, maximum connection age, header count and size, h2
//! streams, header list size and reset-stream limits, and the shutdown grace period.
//!
//! A TLS connection speaks what ALPN chose (`h2`, else http/1.1), never what its first bytes
//! look like; the plain-TCP admin listener speaks http/1.1 only.

pub mod per_ip;
pub mod proxy_protocol;
pub mod tls;

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Limits;
use crate::config::defaults::{
    ACCEPT_ERROR_BACKOFF_MS, H2_SEND_BUFFER_BYTES, TLS_SEND_BUFFER_BYTES,
};
use crate::pipeline::Pipeline;
use crate::telemetry::Metrics;
use crate::web::{BoxError, ConnInfo, Handler, ResponseBody};

/// The most a connection's kernel send buffer holds that is not yet sent (`TCP_NOTSENT_LOWAT`).
/// Without it Linux grows the buffer to megabytes and reports a socket writable again only once a
/// third of that has drained, so a client reading slowly but steadily showed no write progress
/// for longer than the idle timeout and was cut. With it our writes follow what the peer takes,
/// in steps of at most this much; the data in flight, and so throughput, is not limited.
#[cfg(any(target_os = "linux", target_os = "android"))]
const UNSENT_LOWAT_BYTES: u32 = 128 * 1024;

/// Spawns hyper's per-stream h2 tasks inside the span current at the spawn, the connection's:
/// hyper-util's `TokioExecutor` spawns them detached, so h2 request events had no connection.
#[derive(Clone, Copy)]
struct InSpanExecutor;

impl<F> hyper::rt::Executor<F> for InSpanExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut.in_current_span());
    }
}

/// After the idle timeout sends GOAWAY (or ends an http/1.1 keep-alive), the time the connection
/// has to finish closing before it is dropped: a live client answers within a round trip.
const IDLE_CLOSE_GRACE_MS: u64 = 1_000;

impl Handler for Pipeline {
    fn proxy_header_timeout(&self, peer: std::net::IpAddr) -> Option<Duration> {
        let snapshot = self.snapshot();
        let network = snapshot.network();
        network
            .requires_proxy_header(peer)
            .then(|| network.proxy_protocol_timeout())
    }

    fn call(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<ResponseBody>> + Send {
        self.handle(req, conn)
    }
}

/// Which listener this is; only the data listener counts connections in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Data,
    Admin,
}

/// The protocol one connection speaks, fixed before any HTTP byte is read: never sniffed from
/// the bytes, so an http/1.1 connection cannot be turned into h2 by sending the h2 preface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    H2,
}

impl Protocol {
    /// What the TLS handshake agreed by ALPN: `h2` is h2; `http/1.1`, or no ALPN at all, is
    /// http/1.1 (h2 over TLS requires ALPN, RFC 9113 3.2).
    fn from_alpn(alpn: Option<&[u8]>) -> Protocol {
        match alpn {
            Some(b"h2") => Protocol::H2,
            _ => Protocol::Http1,
        }
    }
}

/// Run a listener until `shutdown` fires, then stop accepting, let in-flight requests finish for
/// up to `limits.shutdown_grace`, and drop whatever is left. With `tls`, each connection is
/// served the TLS config in force when it was accepted (a reload replaces it for new ones) and
/// speaks the protocol its ALPN chose; without (the admin listener), http/1.1 only.
#[allow(clippy::too_many_arguments)] // one listener's whole setup, passed once at start
pub async fn serve<H: Handler>(
    role: Role,
    listener: TcpListener,
    tls: Option<Arc<tls::LiveTls>>,
    handler: Arc<H>,
    limits: Limits,
    metrics: Arc<Metrics>,
    per_ip: Option<Arc<per_ip::PerIpConnections>>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE, ENFILE, ECONNABORTED...: keep serving, but do not spin.
                        metrics.accept_errors.inc();
                        tracing::warn!(error = %e, ?role, "accept failed");
                        tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                        continue;
                    }
                };
                let ip_slot = match &per_ip {
                    Some(per_ip) => match per_ip.try_open(peer.ip()) {
                        Some(slot) => Some(slot),
                        None => {
                            metrics.rejected_connections_per_ip.inc();
                            tracing::debug!(%peer, "max_connections_per_ip reached; closing");
                            continue;
                        }
                    },
                    None => None,
                };
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    metrics.rejected_connections.inc();
                    tracing::debug!(%peer, "max_connections reached; closing");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                #[cfg(any(target_os = "linux", target_os = "android"))]
                let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(UNSENT_LOWAT_BYTES);
                let conn = ConnInfo::direct(peer);
                let shutdown = shutdown.clone();
                let handler = Arc::clone(&handler);
                let metrics = Arc::clone(&metrics);
                let limits = limits.clone();
                // The config in force now: a reload after this accept does not change it.
                let tls = tls.as_ref().map(|tls| tls.acceptor());
                // Debug level: entering an enabled span on every poll costs on the hot path, and
                // the request span already names the peer. With debug on, request spans (h1 and
                // h2 alike, see `InSpanExecutor`) sit inside it.
                let span = tracing::debug_span!("conn", %peer);
                conns.spawn(async move {
                    let _permit = permit;
                    let _ip_slot = ip_slot;
                    let _open = (role == Role::Data).then(|| OpenConnection::new(&metrics));
                    let mut stream = stream;
                    let Some(conn) = read_proxy_header(&mut stream, conn, handler.as_ref(), &metrics).await else {
                        return;
                    };
                    match tls {
                        Some(acceptor) => {
                            // rustls queues at most this much ciphertext for a slow reader before it pushes back.
                            let accept = acceptor.accept_with(stream, |tls| tls.set_buffer_limit(Some(TLS_SEND_BUFFER_BYTES)));
                            let handshake = tokio::time::timeout(limits.tls_handshake_timeout, accept).await;
                            match handshake {
                                Ok(Ok(stream)) => {
                                    let protocol = Protocol::from_alpn(stream.get_ref().1.alpn_protocol());
                                    serve_connection(stream, protocol, conn, handler, &limits, shutdown).await;
                                }
                                Ok(Err(e)) => {
                                    metrics.tls_handshake_failures.inc();
                                    tracing::debug!(error = %e, "TLS handshake failed");
                                }
                                Err(_) => {
                                    metrics.tls_handshake_failures.inc();
                                    tracing::debug!("TLS handshake timed out");
                                }
                            }
                        }
                        None => serve_connection(stream, Protocol::Http1, conn, handler, &limits, shutdown).await,
                    }
                }.instrument(span));
            }
        }
    }
    drop(listener);
    // Every connection task saw `shutdown` and is closing gracefully; wait for them all.
    let drained = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_grace, drained)
        .await
        .is_err()
    {
        tracing::warn!(?role, grace = ?limits.shutdown_grace, "connections still open after the grace period; closing them");
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// Before TLS: from a peer in `network.proxy_protocol`, read the required PROXY header within its
/// timeout and take the client address from it; `None` closes the connection. Other peers are
/// left alone: a header from them fails the TLS handshake.
async fn read_proxy_header<H: Handler>(
    stream: &mut tokio::net::TcpStream,
    conn: ConnInfo,
    handler: &H,
    metrics: &Metrics,
) -> Option<ConnInfo> {
    let Some(timeout) = handler.proxy_header_timeout(conn.peer.ip()) else {
        return Some(conn);
    };
    match tokio::time::timeout(timeout, proxy_protocol::read_header(stream)).await {
        Ok(Ok(proxy_protocol::ProxyHeader::Local)) => Some(conn),
        Ok(Ok(proxy_protocol::ProxyHeader::Proxied { source })) => Some(ConnInfo {
            peer: source,
            proxied_by: Some(conn.peer),
        }),
        Ok(Err(e)) => {
            metrics.proxy_protocol_failures.inc();
            tracing::debug!(error = %e, "PROXY protocol header refused; closing");
            None
        }
        Err(_) => {
            metrics.proxy_protocol_failures.inc();
            tracing::debug!(?timeout, "no PROXY protocol header in time; closing");
            None
        }
    }
}

/// Serve `protocol` on one established connection, closing it once idle for too long or once
/// it reaches `limits.max_connection_age`.
async fn serve_connection<IO, H>(
    io: IO,
    protocol: Protocol,
    conn: ConnInfo,
    handler: Arc<H>,
    limits: &Limits,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let io = FirstLineSplit::new(io, protocol == Protocol::Http1);
    let activity = Arc::new(Activity::new());
    let requests = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let handler = Arc::clone(&handler);
        // In flight from here until its response body ends or is dropped.
        let in_flight = InFlight::new(&requests);
        let waiting = Waiting::new(&requests);
        async move {
            let resp = handler.call(req, conn).await;
            drop(waiting);
            Ok::<_, Infallible>(resp.map(|body| TrackedBody {
                inner: body,
                in_flight: Some(in_flight),
            }))
        }
    });
    let mut builder = auto::Builder::new(InSpanExecutor);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        // hyper refuses buffers under 8 KiB; the header size limit is this read buffer.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.h2_max_header_list_bytes)
        .max_pending_accept_reset_streams(limits.h2_max_pending_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
        // h2 buffers this much per stream before it stops pulling the body: keep a slow reader
        // from parking hundreds of KiB in the gateway (hyper's default is 400 KiB).
        .max_send_buf_size(H2_SEND_BUFFER_BYTES);
    // One protocol per connection, as ALPN decided: the auto builder's own sniffing of the h2
    // preface is off.
    let builder = match protocol {
        Protocol::Http1 => builder.http1_only(),
        Protocol::H2 => builder.http2_only(),
    };
    // No h2 keep-alive PINGs: hyper's server pings even with no stream open. Not needed: a
    // connection with no request in flight is closed by the idle clock whatever it sends, and a
    // peer that stops reading mid-response stalls our writes, which counts as no progress.
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let idle = limits.idle_timeout;
    // Shutdown, the idle timeout and the connection's age all close gracefully first: h2 sends
    // GOAWAY, so a client knows which of its requests were not taken and can retry them
    // elsewhere; http/1.1 closes after the response in flight. A closing connection whose
    // responses stop making progress, or that has none and does not close, is dropped by the
    // idle clock: a long download in flight when the connection reaches its age is not cut.
    let mut closing = false;
    // When the idle close started; it is given up on IDLE_CLOSE_GRACE_MS later.
    let grace = Duration::from_millis(IDLE_CLOSE_GRACE_MS);
    let mut give_up: Option<Instant> = None;
    let aged = tokio::time::sleep(limits.max_connection_age);
    tokio::pin!(aged);
    let mut past_age = false;
    loop {
        let wake = match give_up {
            Some(started) => started + grace,
            // A request waiting for its backend: not idle; look again later.
            None => activity.idle_since().unwrap_or_else(Instant::now) + idle,
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            () = aged.as_mut(), if !past_age => {
                // No new request from here on; the responses in flight finish while they make
                // progress, and the idle clock drops the connection once they stop (or once it
                // has nothing in flight and does not close).
                past_age = true;
                tracing::debug!(age = ?limits.max_connection_age, "connection reached its maximum age; closing");
                if !closing {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {
                if let Some(started) = give_up.take() {
                    if activity.progressing_since(started) {
                        // Alive after all: closing stays in effect, the idle clock runs again.
                        continue;
                    }
                    tracing::debug!("idle connection did not close after GOAWAY; dropping it");
                    return;
                }
                if activity.idle_since().is_some_and(|since| since.elapsed() >= idle) {
                    tracing::debug!(?idle, "closing idle connection");
                    if !closing {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    give_up = Some(Instant::now());
                }
            }
        }
    }
}

/// Keeps the open-connections gauge right however a connection task ends.
struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    fn new(metrics: &Arc<Metrics>) -> OpenConnection {
        metrics.open_connections.inc();
        OpenConnection(Arc::clone(metrics))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.dec();
    }
}

/// What the idle clock of one connection reads. Times are milliseconds since it opened.
///
/// With no request in flight, only the time since the last request ended (or since the
/// connection opened) counts. With a request in flight, the time since its response data last
/// moved counts: hyper takes the next body frame only once the client has taken enough of the
/// last (h2 flow control, the socket's send buffer), so a slow but steady reader is spared and
/// a peer that stopped reading is caught. Bytes on the socket count for nothing, so h2 control
/// frames (PING, SETTINGS, WINDOW_UPDATE, PRIORITY) can keep neither an idle connection nor a
/// stalled stream open. A request still waiting for its backend is never idle.
struct Activity {
    opened: Instant,
    /// When a request arrived, its response head was ready, or response data last moved.
    last_progress_ms: AtomicU64,
    /// When the last request ended, or the connection opened.
    quiet_since_ms: AtomicU64,
    /// Requests received whose response has not ended yet (body finished, or dropped).
    in_flight: AtomicUsize,
    /// Of those, the ones whose response head is not ready yet (waiting for a backend). They
    /// move no bytes, but the connection is not idle.
    waiting: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            quiet_since_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        }
    }
    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
    fn at(&self, ms: &AtomicU64) -> Instant {
        self.opened + Duration::from_millis(ms.load(Ordering::Relaxed))
    }
    /// A request in flight made progress.
    fn touch(&self) {
        self.last_progress_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }
    /// Since when the connection counts as idle; `None` while a request waits for its backend.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            Some(self.at(&self.quiet_since_ms))
        } else if self.waiting.load(Ordering::Relaxed) > 0 {
            None
        } else {
            Some(self.at(&self.last_progress_ms))
        }
    }
    /// Whether a request in flight has moved since `started` (or is waiting for its backend).
    fn progressing_since(&self, started: Instant) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
            && (self.waiting.load(Ordering::Relaxed) > 0
                || self.at(&self.last_progress_ms) > started)
    }
}

/// Counts one request as in flight while it lives: from its arrival until its response body
/// ends or is dropped (an h2 stream reset, a handler cancelled). When the last one ends, the
/// idle clock restarts from then.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> InFlight {
        // Progress is measured from the request's arrival, not from bytes before it.
        activity.touch();
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        self.0.quiet_since_ms.store(now, Ordering::Relaxed);
        // Release: whoever sees the count drop sees the quiet time stored before it.
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// A response body that marks progress for the idle clock at each frame hyper takes, and ends
/// its request's time in flight when it ends, fails, or is dropped.
struct TrackedBody {
    inner: ResponseBody,
    in_flight: Option<InFlight>,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                if let Some(in_flight) = &this.in_flight {
                    in_flight.0.touch();
                }
            }
            Poll::Ready(None | Some(Err(_))) => this.in_flight = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Counts one request as waiting for its response head while it lives; when it ends, the
/// progress clock restarts from then.
struct Waiting(Arc<Activity>);

impl Waiting {
    fn new(activity: &Arc<Activity>) -> Waiting {
        activity.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(Arc::clone(activity))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.touch();
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The request line an h2 client sends first (the start of the connection preface).
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0";

/// On an http/1.1 connection, hands hyper at most the h2 preface's request line on the first
/// read. Seeing the whole 24-byte preface, hyper's http/1.1 server closes the connection without
/// a word (it expects its caller to switch to h2); seeing only the request line, it refuses
/// the `HTTP/2.0` version as any other unsupported one, with an HTTP/1.1 400, and closes.
/// Costs one extra read per connection; later reads pass through.
struct FirstLineSplit<T> {
    inner: T,
    split: bool,
}

impl<T> FirstLineSplit<T> {
    fn new(inner: T, split: bool) -> FirstLineSplit<T> {
        FirstLineSplit { inner, split }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstLineSplit<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.split || buf.remaining() <= H2_PREFACE_LINE.len() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let mut first = [0u8; H2_PREFACE_LINE.len()];
        let mut small = ReadBuf::new(&mut first);
        let res = Pin::new(&mut self.inner).poll_read(cx, &mut small);
        if matches!(res, Poll::Ready(Ok(()))) {
            self.split = false;
            buf.put_slice(small.filled());
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstLineSplit<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
