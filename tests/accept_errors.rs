//! The accept loop under EMFILE: with the process out of file descriptors, connections wait in
//! the listen queue while accept() fails; the loop counts each failure and backs off instead of
//! spinning, and once descriptors are free again it accepts the waiting connections and serves.
//!
//! It lowers RLIMIT_NOFILE and takes every free descriptor of the whole process, so it runs alone
//! in a child process of the test binary ([`support::alone_in_child_process`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support;

use std::fs::File;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::TestGateway;
use bucketgate::config::defaults::ACCEPT_ERROR_BACKOFF_MS;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use socket2::{Domain, Protocol, Socket, Type};

/// Connections that arrive while the process has no descriptor left.
const WAITING: usize = 3;
/// accept() failures the test waits to see before it judges the rate.
const ERRORS_SEEN: u64 = 4;
const EMFILE: i32 = 24;

fn metric(gw: &TestGateway, series: &str) -> u64 {
    let text = gw.gateway().metrics().encode().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .unwrap_or_else(|| panic!("{series} in the metrics"))
        .trim()
        .parse()
        .unwrap()
}

fn accept_errors(gw: &TestGateway) -> u64 {
    metric(gw, "bucketgate_accept_errors_total ")
}

fn open_connections(gw: &TestGateway) -> u64 {
    metric(gw, "bucketgate_open_connections ")
}

/// The highest file descriptor open in this process.
fn highest_fd() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap()
}

/// Lower the soft RLIMIT_NOFILE to just above the descriptors open now, and take every free slot
/// below it: from here on, any new descriptor fails with EMFILE. Returns the slots taken and the
/// limit to restore.
fn exhaust_descriptors() -> (Vec<File>, Rlimit) {
    let saved = getrlimit(Resource::Nofile);
    let lowered = Rlimit {
        current: Some(highest_fd() + 1),
        maximum: saved.maximum,
    };
    setrlimit(Resource::Nofile, lowered).unwrap();
    let mut taken = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => taken.push(f),
            Err(e) if e.raw_os_error() == Some(EMFILE) => break,
            Err(e) => panic!("unexpected error while taking descriptors: {e}"),
        }
        assert!(taken.len() < 100_000, "descriptors never ran out");
    }
    (taken, saved)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_back_off_without_spinning_and_serving_resumes_when_descriptors_free_up() {
    if !support::alone_in_child_process(
        "accept_errors::accept_errors_back_off_without_spinning_and_serving_resumes_when_descriptors_free_up",
    ) {
        return;
    }
    let (gw, dir) = support::GatewayBuilder::new().start_fs("local").await;
    support::write_file(dir.path(), "hello.txt", b"hello\n");
    let addr: SocketAddr = gw.data_addr();
    assert_eq!(accept_errors(&gw), 0);
    assert_eq!(open_connections(&gw), 0);

    // The client sockets exist before the descriptors run out; connect() needs no new one.
    let clients: Vec<Socket> = (0..WAITING)
        .map(|_| Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap())
        .collect();
    let (taken, saved) = exhaust_descriptors();
    assert!(
        File::open("/dev/null").is_err(),
        "the process still has descriptors"
    );

    let started = Instant::now();
    for client in &clients {
        // Loopback: the kernel completes the handshake into the listen queue.
        client.connect(&addr.into()).unwrap();
    }
    let seen = support::eventually(
        "accept() fails while no descriptor is free",
        400,
        Duration::from_millis(10),
        || {
            let n = accept_errors(&gw);
            async move { (n >= ERRORS_SEEN).then_some(n) }
        },
    )
    .await;
    // Read the clock after the counter: each failure after the first waits out the backoff, so
    // at most 1 + elapsed / backoff failures fit. A spinning loop makes thousands by now.
    let elapsed = started.elapsed();
    let most = 1 + elapsed.as_millis() as u64 / ACCEPT_ERROR_BACKOFF_MS;
    assert!(
        seen <= most,
        "{seen} accept errors in {elapsed:?}: more than {most}, the loop does not back off"
    );
    assert_eq!(
        open_connections(&gw),
        0,
        "no connection can be accepted without a descriptor"
    );

    // Descriptors free again: the waiting connections are accepted at the next attempt.
    drop(taken);
    setrlimit(Resource::Nofile, saved).unwrap();
    support::eventually(
        "the waiting connections are accepted",
        400,
        Duration::from_millis(10),
        || {
            let n = open_connections(&gw);
            async move { (n == WAITING as u64).then_some(()) }
        },
    )
    .await;
    let errors_after = accept_errors(&gw);

    let resp = gw
        .client()
        .get(gw.url("/o/local/hello.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(&resp.bytes().await.unwrap()[..], b"hello\n");
    assert_eq!(
        accept_errors(&gw),
        errors_after,
        "accept failed again with descriptors free"
    );
    drop(clients);
}
