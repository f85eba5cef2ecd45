//! Upstream failures as a client sees them, against a real origin that misbehaves on purpose
//! (`support/origin.rs`): refused or never-accepted connections become 502 and stalls before
//! headers 504, after a bounded number of attempts; a body that breaks, ends short or stalls after
//! the head was sent is aborted (never finished as if complete), over http/1.1 and h2. After every
//! fault the same
//! gateway keeps serving its other source. A client that goes away mid-body (connection closed,
//! or one h2 stream reset) cancels the upstream GET at once. The first-byte timeout is one budget
//! for the whole wait, retries included, and never cuts a slow download. A store that refuses the
//! gateway's own credentials or settings is a 502 configuration fault, never the client's 403; an
//! answer with an oversized header block is a 502.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::logs::CapturedLogs;
use crate::support::origin::{self, Mode, Origin};
use crate::support::{Proto, TestGateway};
use bucketgate::config::{Limits, SourceConfig};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinHandle;

const HELLO: &[u8] = b"still serving\n";
/// Retries the tests allow the gateway: each request reaches the origin at most 1 + this many
/// times per upstream call.
const MAX_RETRIES: u32 = 1;

/// Short upstream limits so that every fault resolves in about a second.
fn limits() -> Limits {
    Limits {
        upstream_connect_timeout: Duration::from_secs(1),
        upstream_first_byte_timeout: Duration::from_secs(1),
        upstream_idle_timeout: Duration::from_secs(1),
        upstream_max_retries: MAX_RETRIES,
        ..support::test_limits()
    }
}

/// A gateway with the source `origin` (S3 pointed at a misbehaving origin) and the fs source
/// `local` holding `hello.txt`.
struct Bed {
    gw: TestGateway,
    origin: Origin,
    _dir: tempfile::TempDir,
}

async fn bed(mode: Mode) -> Bed {
    bed_with(mode, limits()).await
}

async fn bed_with(mode: Mode, limits: Limits) -> Bed {
    let origin = Origin::start(mode).await;
    let dir = tempfile::tempdir().unwrap();
    support::write_file(dir.path(), "hello.txt", HELLO);
    let sources = BTreeMap::from([
        (
            "origin".to_string(),
            SourceConfig::S3(support::s3::source(
                &origin.endpoint,
                "bucket",
                "",
                "AKIDTEST",
                "secret",
            )),
        ),
        ("local".to_string(), support::fs_source(dir.path())),
    ]);
    let gw = support::GatewayBuilder::new()
        .sources(sources)
        .limits(limits)
        .start()
        .await;
    Bed {
        gw,
        origin,
        _dir: dir,
    }
}

impl Bed {
    /// The fs source on the same gateway still answers, over `proto`.
    async fn assert_still_serves(&self, client: &reqwest::Client, what: &str) {
        let resp = client
            .get(self.gw.url("/o/local/hello.txt"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "{what}: gateway stopped serving"
        );
        assert_eq!(&resp.bytes().await.unwrap()[..], HELLO, "{what}");
    }

    /// The origin saw at most `calls` upstream calls, each tried at most 1 + MAX_RETRIES times.
    fn assert_bounded_attempts(&self, before: usize, calls: usize, what: &str) {
        let seen = self.origin.requests() - before;
        let most = calls * (1 + MAX_RETRIES as usize);
        assert!(
            seen >= 1 && seen <= most,
            "{what}: origin saw {seen} requests, allowed 1..={most}"
        );
    }
}

/// GET the origin source's object; the response head and how long it took to come.
async fn timed_origin_get(
    client: &reqwest::Client,
    gw: &TestGateway,
) -> (reqwest::Response, Duration) {
    let started = Instant::now();
    let resp = client
        .get(gw.url("/o/origin/photo.png"))
        .send()
        .await
        .unwrap();
    (resp, started.elapsed())
}

/// Headers that must not come through from the origin.
fn assert_no_upstream_headers(headers: &http::HeaderMap, what: &str) {
    for name in headers.keys() {
        assert!(
            !name.as_str().starts_with("x-amz"),
            "{what}: upstream header {name} passed on"
        );
    }
}

/// An error response with the given status and the JSON body naming its request id.
async fn assert_error(resp: reqwest::Response, status: StatusCode, message: &str, what: &str) {
    assert_eq!(resp.status(), status, "{what}");
    assert_no_upstream_headers(resp.headers(), what);
    let id = resp
        .headers()
        .get("x-request-id")
        .expect("x-request-id")
        .to_str()
        .unwrap()
        .to_string();
    let body = resp.text().await.unwrap();
    assert_eq!(
        body.trim_end(),
        format!("{{\"error\":\"{message}\",\"request_id\":\"{id}\"}}"),
        "{what}"
    );
}

#[tokio::test]
async fn refused_origin_is_502_and_the_gateway_keeps_serving() {
    let bed = bed(Mode::Refuse).await;
    for proto in Proto::BOTH {
        let client = bed.gw.client_for(proto);
        let what = format!("{proto:?} refused");
        let resp = client
            .get(bed.gw.url("/o/origin/photo.png"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), proto.version());
        assert_error(
            resp,
            StatusCode::BAD_GATEWAY,
            "storage backend failed",
            &what,
        )
        .await;
        bed.assert_still_serves(&client, &what).await;
    }
    assert_eq!(
        bed.origin.requests(),
        0,
        "nothing listens, so nothing was received"
    );
}

/// A store that never takes the connection (its accept queue is full, so the kernel drops the
/// SYN) is unreachable: 502 after the connect timeout, not 504, which means "took the request
/// and did not answer".
#[tokio::test]
async fn origin_that_never_takes_the_connection_is_502_after_the_connect_timeout() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the accept queue (nothing accepts) until a connect hangs: SYNs are dropped from then on.
    let mut queued = Vec::new();
    let mut hung = false;
    for _ in 0..16 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(e)) => panic!("connect to the full listener failed instead of hanging: {e}"),
            Err(_) => {
                hung = true;
                break;
            }
        }
    }
    assert!(hung, "the listener's accept queue never filled");

    let sources = BTreeMap::from([(
        "origin".to_string(),
        SourceConfig::S3(support::s3::source(
            &format!("http://{addr}"),
            "bucket",
            "",
            "AKIDTEST",
            "secret",
        )),
    )]);
    // The attempt timeout (first byte) counts from before the connect: it must be the longer
    // one, or it fires first and the cause reads as a timeout.
    let limits = Limits {
        upstream_connect_timeout: Duration::from_millis(500),
        upstream_first_byte_timeout: Duration::from_secs(5),
        ..limits()
    };
    let gw = support::GatewayBuilder::new()
        .sources(sources)
        .limits(limits)
        .start()
        .await;
    for proto in Proto::BOTH {
        let what = format!("{proto:?} never accepted");
        let (resp, waited) = timed_origin_get(&gw.client_for(proto), &gw).await;
        assert_error(
            resp,
            StatusCode::BAD_GATEWAY,
            "storage backend failed",
            &what,
        )
        .await;
        assert!(
            waited >= Duration::from_millis(450) && waited < Duration::from_secs(5),
            "{what}: answered after {waited:?}, not by the 0.5 s connect timeout"
        );
    }
    drop((listener, queued));
}

/// A request waiting for its backend moves no bytes on the client connection, but it is not idle:
/// with an idle timeout shorter than the first-byte timeout the client still gets the 504.
#[tokio::test]
async fn request_waiting_on_a_slow_store_outlasts_the_client_idle_timeout() {
    let bed = bed_with(
        Mode::StallBeforeHeaders,
        Limits {
            idle_timeout: Duration::from_secs(1),
            upstream_first_byte_timeout: Duration::from_millis(2500),
            upstream_max_retries: 0,
            ..limits()
        },
    )
    .await;
    for proto in Proto::BOTH {
        let what = format!("{proto:?} slow store, short idle timeout");
        let client = bed.gw.client_for(proto);
        let resp = client
            .get(bed.gw.url("/o/origin/photo.png"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: the connection was cut: {e}"));
        assert_error(
            resp,
            StatusCode::GATEWAY_TIMEOUT,
            "storage backend timed out",
            &what,
        )
        .await;
        bed.assert_still_serves(&client, &what).await;
    }
}

#[tokio::test]
async fn origin_stalling_before_headers_is_504_after_bounded_retries() {
    let bed = bed(Mode::StallBeforeHeaders).await;
    for proto in Proto::BOTH {
        let client = bed.gw.client_for(proto);
        let what = format!("{proto:?} stall before headers");
        let before = bed.origin.requests();
        let (resp, waited) = timed_origin_get(&client, &bed.gw).await;
        assert_error(
            resp,
            StatusCode::GATEWAY_TIMEOUT,
            "storage backend timed out",
            &what,
        )
        .await;
        // One HEAD, tried at most twice with a 1 s first-byte timeout each.
        assert!(
            waited >= Duration::from_millis(900),
            "{what}: answered after {waited:?}, before the timeout"
        );
        assert!(
            waited < Duration::from_secs(8),
            "{what}: answered only after {waited:?}"
        );
        bed.assert_bounded_attempts(before, 1, &what);
        bed.assert_still_serves(&client, &what).await;
    }
}

/// GET the origin's object and read the body until it ends or fails. Returns the bytes received,
/// whether the response ended in an error, and how long that took from the request.
///
/// The head may not reach the client at all: when the very first body frame already fails,
/// hyper has not flushed the head yet and closes (http/1.1) or resets the stream (h2) without it.
/// That is an aborted response too; what must never happen is a body that ends as if complete.
async fn read_broken_body(
    bed: &Bed,
    client: &reqwest::Client,
    proto: Proto,
    what: &str,
) -> (Vec<u8>, bool, Duration) {
    let started = Instant::now();
    let mut resp = match client.get(bed.gw.url("/o/origin/photo.png")).send().await {
        Ok(resp) => resp,
        Err(e) => {
            assert!(!e.is_timeout(), "{what}: client timed out: {e}");
            return (Vec::new(), true, started.elapsed());
        }
    };
    assert_eq!(resp.version(), proto.version(), "{what}");
    // The head went out before the body broke: it announces the whole object.
    assert_eq!(resp.status(), StatusCode::OK, "{what}");
    assert_eq!(
        resp.content_length(),
        Some(origin::OBJECT_LEN as u64),
        "{what}"
    );
    assert_no_upstream_headers(resp.headers(), what);
    let mut got = Vec::new();
    let failed = loop {
        match tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await {
            Err(_) => panic!("{what}: body neither finished nor failed within 10 s"),
            Ok(Ok(Some(chunk))) => got.extend_from_slice(&chunk),
            Ok(Ok(None)) => break false,
            Ok(Err(_)) => break true,
        }
    };
    (got, failed, started.elapsed())
}

/// The client saw an aborted body: an error, after a correct prefix shorter than the object.
fn assert_aborted(got: &[u8], failed: bool, what: &str) {
    assert!(
        failed,
        "{what}: body of {} bytes ended as if complete",
        got.len()
    );
    assert!(
        got.len() < origin::OBJECT_LEN,
        "{what}: the whole object arrived"
    );
    assert!(
        got == &origin::object_bytes()[..got.len()],
        "{what}: the prefix that arrived is wrong"
    );
}

async fn broken_body_is_aborted(mode: Mode) {
    let bed = bed(mode).await;
    for proto in Proto::BOTH {
        let client = bed.gw.client_for(proto);
        let what = format!("{proto:?} {mode:?}");
        let before = bed.origin.requests();
        let (got, failed, _) = read_broken_body(&bed, &client, proto, &what).await;
        assert_aborted(&got, failed, &what);
        // HEAD and GET; a body that broke after the head went out is never retried.
        bed.assert_bounded_attempts(before, 2, &what);
        assert!(
            bed.origin.requests() - before <= 2,
            "{what}: the broken GET was retried"
        );
        // Same client: for h2 the same connection, which must survive one reset stream.
        bed.assert_still_serves(&client, &what).await;
    }
}

#[tokio::test]
async fn origin_reset_mid_body_aborts_the_response() {
    broken_body_is_aborted(Mode::ResetMidBody).await;
}

#[tokio::test]
async fn origin_short_body_aborts_the_response() {
    broken_body_is_aborted(Mode::ShortBody).await;
}

#[tokio::test]
async fn origin_stalling_mid_body_aborts_after_the_idle_timeout() {
    let bed = bed(Mode::StallMidBody).await;
    for proto in Proto::BOTH {
        let client = bed.gw.client_for(proto);
        let what = format!("{proto:?} stall mid-body");
        let before = bed.origin.requests();
        let (got, failed, waited) = read_broken_body(&bed, &client, proto, &what).await;
        assert_aborted(&got, failed, &what);
        assert!(
            waited >= Duration::from_millis(900),
            "{what}: aborted after {waited:?}, before the 1 s idle timeout"
        );
        assert!(
            waited < Duration::from_secs(5),
            "{what}: aborted only after {waited:?}"
        );
        assert!(
            bed.origin.requests() - before <= 2,
            "{what}: the stalled GET was retried"
        );
        bed.assert_still_serves(&client, &what).await;
    }
}

#[tokio::test]
async fn healthy_origin_serves_the_object_and_ranges() {
    // The control for the fault tests: the same setup with a well-behaved origin works.
    let bed = bed(Mode::Healthy).await;
    let data = origin::object_bytes();
    for proto in Proto::BOTH {
        let client = bed.gw.client_for(proto);
        let resp = client
            .get(bed.gw.url("/o/origin/photo.png"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{proto:?}");
        assert_eq!(resp.headers().get("etag").unwrap(), origin::ETAG);
        assert_no_upstream_headers(resp.headers(), "healthy");
        assert!(resp.bytes().await.unwrap() == data, "{proto:?}: body");
        let resp = client
            .get(bed.gw.url("/o/origin/photo.png"))
            .header("range", "bytes=100-199")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{proto:?}");
        assert!(
            resp.bytes().await.unwrap() == data[100..200],
            "{proto:?}: range body"
        );
    }
}

// --- client disconnects ---------------------------------------------------------------------

/// How much of the endless body the client reads before it goes away.
const READ_BEFORE_DISCONNECT: usize = 256 * 1024;
/// Body bytes the origin may have sent for one cut GET: what the client read plus everything the
/// buffers between can hold (a socket's receive and send buffers at their autotuned maximum on
/// each of the two hops, and 8 MiB for hyper's, h2's and rustls' queues). An upstream read that
/// kept going after the client left would pass it and never see the cut.
fn max_upstream_bytes_per_cut_get() -> u64 {
    let max_of = |path: &str| -> u64 {
        let text = std::fs::read_to_string(path).unwrap();
        text.split_whitespace().last().unwrap().parse().unwrap()
    };
    let per_hop = max_of("/proc/sys/net/ipv4/tcp_rmem") + max_of("/proc/sys/net/ipv4/tcp_wmem");
    READ_BEFORE_DISCONNECT as u64 + 2 * per_hop + 8 * 1024 * 1024
}

/// The upstream idle timeout is far beyond the polls below: only a real cancellation, never an
/// idle timeout, can end the origin's GET in time.
fn patient_limits() -> Limits {
    Limits {
        upstream_idle_timeout: Duration::from_secs(300),
        ..limits()
    }
}

/// Poll until `done`, at most 5 s (200 x 25 ms).
async fn poll_until(what: &str, done: impl Fn() -> bool) {
    support::eventually(what, 200, Duration::from_millis(25), || {
        let ok = done();
        async move { ok.then_some(()) }
    })
    .await;
}

fn open_connections(gw: &TestGateway) -> i64 {
    let text = gw.gateway().metrics().encode().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("bucketgate_open_connections "))
        .expect("open_connections gauge in the metrics")
        .trim()
        .parse()
        .unwrap()
}

/// The sending half of one client connection the test controls.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn send(&mut self, req: http::Request<Empty<Bytes>>) -> http::Response<Incoming> {
        match self {
            Sender::H1(s) => s.send_request(req).await.unwrap(),
            Sender::H2(s) => s.send_request(req).await.unwrap(),
        }
    }
}

/// One client connection over `proto`, and the task that drives it: aborting the task drops the
/// socket, as a client that goes away does.
async fn connect(gw: &TestGateway, proto: Proto) -> (Sender, JoinHandle<()>) {
    let alpn: &[u8] = match proto {
        Proto::H1 => b"http/1.1",
        Proto::H2 => b"h2",
    };
    let tls = gw
        .tls_connect(gw.tls_config(&[alpn], rustls::ALL_VERSIONS))
        .await
        .unwrap();
    let io = TokioIo::new(tls);
    match proto {
        Proto::H1 => {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            let task = tokio::spawn(async move {
                let _ = conn.await;
            });
            (Sender::H1(sender), task)
        }
        Proto::H2 => {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            let task = tokio::spawn(async move {
                let _ = conn.await;
            });
            (Sender::H2(sender), task)
        }
    }
}

fn get(gw: &TestGateway, proto: Proto, path: &str) -> http::Request<Empty<Bytes>> {
    let uri = match proto {
        Proto::H1 => path.to_string(),
        Proto::H2 => gw.url(path),
    };
    let mut req = http::Request::get(uri);
    if proto == Proto::H1 {
        req = req.header(http::header::HOST, gw.data_addr().to_string());
    }
    req.header(
        http::header::AUTHORIZATION,
        format!("Bearer {}", gw.token().expect("test token")),
    )
    .body(Empty::new())
    .unwrap()
}

/// GET the endless object, check its head, and read at least `READ_BEFORE_DISCONNECT` bytes of
/// it, checking each against the pattern. Returns the body, still open.
async fn start_endless_get(bed: &Bed, send: &mut Sender, proto: Proto, what: &str) -> Incoming {
    let resp = send
        .send(get(&bed.gw, proto, "/o/origin/endless.bin"))
        .await;
    assert_eq!(resp.status(), StatusCode::OK, "{what}");
    assert_eq!(resp.version(), proto.version(), "{what}");
    assert_eq!(
        resp.headers()["content-length"],
        origin::ENDLESS_LEN.to_string().as_str(),
        "{what}"
    );
    let mut body = resp.into_body();
    let mut got = 0usize;
    while got < READ_BEFORE_DISCONNECT {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap_or_else(|_| panic!("{what}: no body for 10 s"))
            .unwrap_or_else(|| panic!("{what}: body ended after {got} bytes"))
            .unwrap_or_else(|e| panic!("{what}: body failed after {got} bytes: {e}"));
        if let Ok(data) = frame.into_data() {
            for (i, b) in data.iter().enumerate() {
                assert_eq!(usize::from(*b), (got + i) % 251, "{what}: byte {}", got + i);
            }
            got += data.len();
        }
    }
    body
}

#[tokio::test]
async fn client_closing_the_connection_mid_body_cancels_the_upstream_get() {
    let bed = bed_with(Mode::Endless, patient_limits()).await;
    for proto in Proto::BOTH {
        let what = format!("{proto:?} client disconnect");
        let idle = open_connections(&bed.gw);
        let cut_before = bed.origin.cut_gets();
        let sent_before = bed.origin.body_bytes();

        let (mut send, conn) = connect(&bed.gw, proto).await;
        let body = start_endless_get(&bed, &mut send, proto, &what).await;
        assert_eq!(
            open_connections(&bed.gw),
            idle + 1,
            "{what}: connection counted"
        );
        assert_eq!(
            bed.origin.cut_gets(),
            cut_before,
            "{what}: upstream cut too early"
        );

        // The client goes away: the socket closes with the response still streaming.
        conn.abort();
        let _ = conn.await;
        drop((body, send));

        poll_until(&format!("{what}: the origin sees its GET cut off"), || {
            bed.origin.cut_gets() > cut_before
        })
        .await;
        assert_eq!(
            bed.origin.cut_gets(),
            cut_before + 1,
            "{what}: exactly the one GET was cut"
        );
        let sent = bed.origin.body_bytes() - sent_before;
        let most = max_upstream_bytes_per_cut_get();
        assert!(
            sent <= most,
            "{what}: the origin sent {sent} bytes (at most {most} fit in the buffers) \
             for a client that read {READ_BEFORE_DISCONNECT}"
        );
        poll_until(&format!("{what}: open connections back to {idle}"), || {
            open_connections(&bed.gw) == idle
        })
        .await;
    }
    let client = bed.gw.client();
    bed.assert_still_serves(&client, "after the disconnects")
        .await;
}

#[tokio::test]
async fn h2_stream_reset_mid_body_cancels_the_upstream_get_and_keeps_the_connection() {
    let bed = bed_with(Mode::Endless, patient_limits()).await;
    let what = "h2 stream reset";
    let idle = open_connections(&bed.gw);
    let (mut send, conn) = connect(&bed.gw, Proto::H2).await;
    let body = start_endless_get(&bed, &mut send, Proto::H2, what).await;
    assert_eq!(bed.origin.cut_gets(), 0, "{what}: upstream cut too early");

    // Dropping the body resets the stream (RST_STREAM CANCEL); the connection stays.
    drop(body);
    poll_until("h2 stream reset: the origin sees its GET cut off", || {
        bed.origin.cut_gets() == 1
    })
    .await;
    assert_eq!(
        open_connections(&bed.gw),
        idle + 1,
        "{what}: connection kept"
    );
    assert!(!conn.is_finished(), "{what}: the client connection ended");

    // The same connection serves the next request.
    let resp = send
        .send(get(&bed.gw, Proto::H2, "/o/local/hello.txt"))
        .await;
    assert_eq!(resp.status(), StatusCode::OK, "{what}");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], HELLO, "{what}");
    conn.abort();
}

// --- one first-byte budget ------------------------------------------------------------------

/// Regression (issue 11): each attempt had its own first-byte timeout, so a store that never
/// answered was waited on (1 + retries) x timeout, plus back-off. Retries share one budget.
#[tokio::test]
async fn first_byte_timeout_bounds_the_whole_wait_retries_included() {
    let timeout = Duration::from_secs(1);
    let bed = bed_with(
        Mode::StallBeforeHeaders,
        Limits {
            upstream_first_byte_timeout: timeout,
            upstream_max_retries: 3,
            ..limits()
        },
    )
    .await;
    for proto in Proto::BOTH {
        let what = format!("{proto:?} stall before headers, 3 retries");
        // One timeout per attempt would be 4 s and more.
        let client = assert_504_within_budget(&bed, proto, &what, timeout, 2 * timeout).await;
        bed.assert_still_serves(&client, &what).await;
    }
}

/// One origin GET through `proto` is 504 after the first-byte `budget`, and before `at_most`;
/// the client it used.
async fn assert_504_within_budget(
    bed: &Bed,
    proto: Proto,
    what: &str,
    budget: Duration,
    at_most: Duration,
) -> reqwest::Client {
    let client = bed.gw.client_for(proto);
    let (resp, waited) = timed_origin_get(&client, &bed.gw).await;
    assert_error(
        resp,
        StatusCode::GATEWAY_TIMEOUT,
        "storage backend timed out",
        what,
    )
    .await;
    assert!(
        waited >= budget - Duration::from_millis(100),
        "{what}: answered after {waited:?}, before the timeout"
    );
    assert!(
        waited < at_most,
        "{what}: answered only after {waited:?}, not within about the {budget:?} budget"
    );
    client
}

/// The HEAD and the GET of one request share the budget too: a HEAD that takes most of it
/// leaves the GET only the rest.
#[tokio::test]
async fn slow_head_and_stalled_get_share_one_first_byte_timeout() {
    let timeout = Duration::from_secs(2);
    let bed = bed_with(
        Mode::SlowHeadThenStall,
        Limits {
            upstream_first_byte_timeout: timeout,
            ..limits()
        },
    )
    .await;
    for proto in Proto::BOTH {
        let what = format!("{proto:?} slow HEAD, stalled GET");
        // A budget per call would be the slow HEAD plus a whole timeout for the GET: 3.5 s.
        let at_most = origin::SLOW_HEAD + timeout - Duration::from_millis(500);
        assert_504_within_budget(&bed, proto, &what, timeout, at_most).await;
    }
}

/// The budget ends with the response head: a download that takes longer than it, and never
/// stalls for the idle timeout, arrives whole.
#[tokio::test]
async fn download_longer_than_the_first_byte_timeout_is_not_cut() {
    let bed = bed(Mode::Trickle).await;
    let budget = limits().upstream_first_byte_timeout;
    let client = bed.gw.client();
    let started = Instant::now();
    let resp = client
        .get(bed.gw.url("/o/origin/photo.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.bytes().await.expect("the whole body");
    let took = started.elapsed();
    assert!(body == origin::object_bytes(), "body differs");
    assert!(
        took > budget + Duration::from_millis(500),
        "the download took {took:?}: too quick to show anything about the {budget:?} budget"
    );
}

// --- oversized header blocks ----------------------------------------------------------------

/// Regression (issue 11): an answer with 100 KiB of headers (within hyper's 400 KiB buffer) was
/// taken as a good answer. Over 64 KiB it is a broken one, and none of it reaches the client.
#[tokio::test]
async fn origin_header_block_over_64_kib_is_502_and_none_of_it_passes() {
    for shape in [origin::HeaderShape::Many, origin::HeaderShape::One] {
        let bed = bed(Mode::HugeHeaders(shape)).await;
        for proto in Proto::BOTH {
            let client = bed.gw.client_for(proto);
            let what = format!("{proto:?} {shape:?} headers");
            let resp = client
                .get(bed.gw.url("/o/origin/photo.png"))
                .send()
                .await
                .unwrap();
            assert!(
                !resp.headers().keys().any(|k| k.as_str().contains("huge")),
                "{what}: origin header passed on"
            );
            assert_error(
                resp,
                StatusCode::BAD_GATEWAY,
                "storage backend failed",
                &what,
            )
            .await;
            let resp = client
                .head(bed.gw.url("/o/origin/photo.png"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_GATEWAY, "{what}: HEAD");
            assert_no_upstream_headers(resp.headers(), &what);
            bed.assert_still_serves(&client, &what).await;
        }
    }
}

// --- the gateway's own credentials or settings refused ----------------------------------------

/// `bucketgate_upstream_errors_total{source, kind}`, 0 when absent.
fn upstream_errors(gw: &TestGateway, source: &str, kind: &str) -> f64 {
    let text = gw.gateway().metrics().encode().unwrap();
    let labels = format!("{{source=\"{source}\",kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("bucketgate_upstream_errors_total")?
                .strip_prefix(&labels)
        })
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The one configuration-fault warning for `source` with `code`, asserted once per request.
fn assert_config_fault_logged(logs: &CapturedLogs, source: &str, code: &str, times: usize) {
    let found = logs
        .config_faults()
        .into_iter()
        .filter(|w| w["source"] == source && w["s3_error_code"] == code)
        .count();
    assert_eq!(
        found,
        times,
        "{source} {code}: configuration-fault warnings in\n{}",
        logs.text()
    );
}

/// Regression (issue 11): a store refusing the gateway's own credentials (a wrong secret, an
/// unknown key id) answered the client 403, as if the client were refused. s3s-fs checks SigV4
/// for real: 502, counted and logged as a configuration fault, the secret nowhere.
#[tokio::test]
async fn wrong_gateway_credentials_are_a_502_configuration_fault() {
    const KEY_ID: &str = "AKIDFAULTSTEST";
    const SECRET: &str = "faults-test-secret-0123456789";
    const WRONG_SECRET: &str = "not-the-faults-secret-987654";
    let (logs, _guard) = CapturedLogs::start();
    let s3 = support::s3::S3sFs::start(KEY_ID, SECRET).await;
    s3.create_bucket("media").await;
    s3.put("media", "photo.png", b"png", Some("image/png"))
        .await;
    let source = |key_id: &str, secret: &str| {
        SourceConfig::S3(support::s3::source(
            &s3.endpoint,
            "media",
            "",
            key_id,
            secret,
        ))
    };
    let sources = BTreeMap::from([
        ("good".to_string(), source(KEY_ID, SECRET)),
        ("wrong-secret".to_string(), source(KEY_ID, WRONG_SECRET)),
        ("unknown-key".to_string(), source("AKIDNOBODYKNOWS", SECRET)),
    ]);
    let gw = support::GatewayBuilder::new()
        .sources(sources)
        .limits(limits())
        .start()
        .await;
    let cases = [
        ("wrong-secret", "SignatureDoesNotMatch"),
        ("unknown-key", "InvalidAccessKeyId"),
    ];
    for proto in Proto::BOTH {
        let client = gw.client_for(proto);
        let ok = client
            .get(gw.url("/o/good/photo.png"))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK, "{proto:?}: the control source");
        for (name, code) in cases {
            let what = format!("{proto:?} {name} ({code})");
            for method in [http::Method::GET, http::Method::HEAD] {
                let resp = client
                    .request(method.clone(), gw.url(&format!("/o/{name}/photo.png")))
                    .send()
                    .await
                    .unwrap();
                if method == http::Method::HEAD {
                    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY, "{what}: HEAD");
                    assert_no_upstream_headers(resp.headers(), &what);
                } else {
                    assert_error(
                        resp,
                        StatusCode::BAD_GATEWAY,
                        "storage backend failed",
                        &what,
                    )
                    .await;
                }
            }
        }
    }
    for (name, code) in cases {
        // GET and HEAD, over both protocols.
        assert_eq!(upstream_errors(&gw, name, "config_fault"), 4.0, "{name}");
        assert_eq!(upstream_errors(&gw, name, "access_denied"), 0.0, "{name}");
        assert_config_fault_logged(&logs, name, code, 4);
    }
    let text = logs.text();
    for secret in [SECRET, WRONG_SECRET] {
        assert!(!text.contains(secret), "a secret in the log:\n{text}");
    }
}

/// Every S3 error code that says the gateway's own settings are wrong is a 502 configuration
/// fault, whether the GET says it or a refused HEAD (no body, no code) has to be explained;
/// `AccessDenied` stays a 403 refusal.
#[tokio::test]
async fn store_error_codes_for_the_gateways_own_settings_are_502_configuration_faults() {
    let (logs, _guard) = CapturedLogs::start();
    let cases: [(u16, &str, StatusCode, &str); 9] = [
        (
            403,
            "SignatureDoesNotMatch",
            StatusCode::BAD_GATEWAY,
            "config_fault",
        ),
        (
            403,
            "InvalidAccessKeyId",
            StatusCode::BAD_GATEWAY,
            "config_fault",
        ),
        (
            400,
            "AuthorizationHeaderMalformed",
            StatusCode::BAD_GATEWAY,
            "config_fault",
        ),
        (400, "ExpiredToken", StatusCode::BAD_GATEWAY, "config_fault"),
        (
            400,
            "TokenRefreshRequired",
            StatusCode::BAD_GATEWAY,
            "config_fault",
        ),
        (400, "InvalidToken", StatusCode::BAD_GATEWAY, "config_fault"),
        (
            403,
            "RequestTimeTooSkewed",
            StatusCode::BAD_GATEWAY,
            "config_fault",
        ),
        (
            301,
            "PermanentRedirect",
            StatusCode::BAD_GATEWAY,
            "config_fault",
        ),
        (403, "AccessDenied", StatusCode::FORBIDDEN, "access_denied"),
    ];
    for (status, code, want, kind) in cases {
        let bed = bed_with(
            Mode::ErrorCode(status, code),
            Limits {
                upstream_max_retries: 0,
                ..limits()
            },
        )
        .await;
        let client = bed.gw.client();
        let what = format!("origin {status} {code}");
        let resp = client
            .get(bed.gw.url("/o/origin/photo.png"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), want, "{what}");
        assert_no_upstream_headers(resp.headers(), &what);
        let body = resp.text().await.unwrap();
        assert!(
            !body.contains(code),
            "{what}: the code reached the client: {body}"
        );
        assert_eq!(upstream_errors(&bed.gw, "origin", kind), 1.0, "{what}");
        let logged = if kind == "config_fault" { 1 } else { 0 };
        assert_config_fault_logged(&logs, "origin", code, logged);
        bed.assert_still_serves(&client, &what).await;
    }
}
