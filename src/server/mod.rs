//! Listeners: the accept loop, TLS, and per-connection hyper settings. Knows no paths or tokens;
//! it hands each request to a [`Handler`] with the connection's [`ConnInfo`].
//!
//! Limits enforced here: max connections (excess connections are closed at accept), TLS handshake
//! timeout, header read timeout, keep-alive idle timeout, header count and size, h2 streams, header
//! list size and reset-stream limits, and the shutdown grace period.

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

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Limits;
use crate::config::defaults::{
    ACCEPT_ERROR_BACKOFF_MS, H2_SEND_BUFFER_BYTES, TLS_SEND_BUFFER_BYTES,
};
use crate::pipeline::respond::ResponseBody;
use crate::pipeline::{ConnInfo, Pipeline};
use crate::telemetry::Metrics;

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

/// Run a listener until `shutdown` fires, then stop accepting, let in-flight requests finish for
/// up to `limits.shutdown_grace`, and drop whatever is left.
#[allow(clippy::too_many_arguments)] // one listener's whole setup, passed once at start
pub async fn serve<H: Handler>(
    role: Role,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
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
                let tls = tls.clone();
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
                                Ok(Ok(stream)) => serve_connection(stream, conn, handler, &limits, shutdown).await,
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
                        None => serve_connection(stream, conn, handler, &limits, shutdown).await,
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

/// Serve HTTP/1.1 or h2 on one established connection, closing it once idle for too long.
async fn serve_connection<IO, H>(
    io: IO,
    conn: ConnInfo,
    handler: Arc<H>,
    limits: &Limits,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let io = IdleIo::new(io);
    let activity = Arc::clone(&io.activity);
    let waiting = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let handler = Arc::clone(&handler);
        let waiting = Waiting::new(&waiting);
        async move {
            let resp = handler.call(req, conn).await;
            drop(waiting);
            Ok::<_, Infallible>(resp)
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
    // No h2 keep-alive PINGs: hyper's server pings even with no stream open, and the PING and
    // its ACK are bytes that `IdleIo` counts, so an idle h2 connection from a live client would
    // never time out. `IdleIo` catches a dead peer without them: a peer that neither sends nor
    // reads makes no read progress and stalls our writes, and a stalled write counts as nothing.
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let idle = limits.idle_timeout;
    // Shutdown and the idle timeout both close gracefully first: h2 sends GOAWAY, so a client
    // knows which of its requests were not taken and can retry them elsewhere; http/1.1 closes
    // after the response in flight. A connection that does not finish closing in time (its
    // client stopped reading) is dropped, unless bytes moved again meanwhile. A request waiting
    // for its backend keeps the connection from being idle: the backend timeouts bound it.
    let mut closing = false;
    // When the idle close started; it is given up on IDLE_CLOSE_GRACE_MS later.
    let grace = Duration::from_millis(IDLE_CLOSE_GRACE_MS);
    let mut give_up: Option<Instant> = None;
    loop {
        let wake = give_up.map_or_else(|| activity.last() + idle, |started| started + grace);
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
            () = tokio::time::sleep_until(wake.into()) => {
                if let Some(started) = give_up.take() {
                    if activity.waiting() || activity.last() > started {
                        // Alive after all: closing stays in effect, the idle clock runs again.
                        continue;
                    }
                    tracing::debug!("idle connection did not close after GOAWAY; dropping it");
                    return;
                }
                if activity.waiting() {
                    activity.touch();
                } else if activity.last().elapsed() >= idle {
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

/// When a connection last moved bytes, in milliseconds since it opened.
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
    /// Requests on this connection whose response head is not ready yet (waiting for a
    /// backend). They move no bytes, but the connection is not idle.
    waiting: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
    fn waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }
}

/// Counts one request as waiting for its response head while it lives; when it ends, the idle
/// clock restarts from then.
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

/// An I/O wrapper that records activity, for the idle timeout.
struct IdleIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> IdleIo<T> {
    fn new(inner: T) -> IdleIo<T> {
        IdleIo {
            inner,
            activity: Arc::new(Activity {
                opened: Instant::now(),
                last_ms: AtomicU64::new(0),
                waiting: AtomicUsize::new(0),
            }),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
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
