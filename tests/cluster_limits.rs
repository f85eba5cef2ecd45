//! Rate limits shared by three gateways through one real Redis (`state/redis/admission.rs`):
//! the quota holds across the nodes within 10%, with the local fast path in use; Redis stopped
//! by PID gives per-node quotas, restarted gives shared ones again without a restart; garbage in
//! a key is handled as "down" for that lookup. Time is one fake admission clock all three
//! gateways share (no sleeps); real-time polling only where a reconnect must happen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use crate::support::redis::RedisServer;
use crate::support::{GatewayBuilder, TestGateway, eventually, test_rate_limits};
use bucketgate::config::{RateLimits, RedisConfig};
use bucketgate::pipeline::admit::{AdmitClock, AnyAdmission, LimitKind};
use bucketgate::state::admission::AdmissionStore;
use bucketgate::state::redis::admission::{AdmissionStats, RedisAdmission};
use bucketgate::state::redis::{Redis, RedisSettings};
use governor::clock::FakeRelativeClock;
use sha2::Digest;

const PREFIX: &str = "limits-test";
const SUBJECT: &str = "test-user"; // the subject of the test token

fn redis_config(server: &RedisServer, expected_nodes: u32) -> RedisConfig {
    RedisConfig {
        url: server.plain_url(),
        ca_file: None,
        username: None,
        password: None,
        prefix: PREFIX.to_owned(),
        connect_timeout: Duration::from_millis(500),
        command_timeout: Duration::from_millis(500),
        connections: 2,
        node_name: "node".to_owned(),
        sync_interval: Duration::from_millis(200),
        refuse_tokens_issued_during_outage: false,
        seal_key: None,
        expected_nodes,
    }
}

/// A gateway on `server` with `limits`, its fs source `local` holding `hello.txt`.
struct Node {
    gw: TestGateway,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(
        server: &RedisServer,
        limits: &RateLimits,
        expected_nodes: u32,
        clock: &FakeRelativeClock,
    ) -> Node {
        let redis = redis_config(server, expected_nodes);
        let limits = limits.clone();
        let (gw, dir) = GatewayBuilder::new()
            .tweak(move |c| {
                c.rate_limits = limits;
                c.redis = Some(redis);
            })
            .clock(AdmitClock::Fake(clock.clone()))
            .start_fs("local")
            .await;
        crate::support::write_file(dir.path(), "hello.txt", b"hello\n");
        let client = gw.client();
        Node {
            gw,
            client,
            _dir: dir,
        }
    }

    /// Send `n` requests; how many were admitted (200). Anything but 200 or 429 fails.
    async fn send(&self, n: usize) -> usize {
        let url = self.gw.url("/o/local/hello.txt");
        let mut admitted = 0;
        for _ in 0..n {
            let status = self.client.get(&url).send().await.unwrap().status();
            match status.as_u16() {
                200 => admitted += 1,
                429 => {}
                other => panic!("unexpected status {other}"),
            }
        }
        admitted
    }

    fn admission(&self) -> &AnyAdmission {
        self.gw.gateway().pipeline().admission()
    }

    fn stats(&self, kind: LimitKind) -> AdmissionStats {
        match self.admission() {
            AnyAdmission::Redis(a) => a.stats(kind),
            AnyAdmission::Memory(_) => panic!("the gateway has no Redis rate limits"),
        }
    }

    /// `/readyz`'s body (200: a degraded store does not make the node unready).
    async fn readyz(&self) -> String {
        let resp = reqwest::get(self.gw.admin_url("/readyz")).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    }

    fn fallback_active(&self) -> bool {
        self.admission().fallback_active()
    }
}

async fn three_nodes(
    server: &RedisServer,
    limits: &RateLimits,
    clock: &FakeRelativeClock,
) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::start(server, limits, 3, clock).await);
    }
    nodes
}

fn subject_limit(rps: u32, burst: u32) -> RateLimits {
    RateLimits {
        per_subject_rps: rps,
        per_subject_burst: burst,
        ..test_rate_limits()
    }
}

fn ip_limit(rps: u32, burst: u32) -> RateLimits {
    RateLimits {
        per_ip_rps: rps,
        per_ip_burst: burst,
        ..test_rate_limits()
    }
}

/// Three nodes, two requests to each every 20 ms of fake time for 3 s (300 rps offered against
/// a quota of 100 rps, burst 100): GCRA on one node would admit burst + rps * 3 s = 400.
async fn quota_holds_across_three_nodes(limits: RateLimits, kind: LimitKind) {
    const RPS: u64 = 100;
    const BURST: u64 = 100;
    const STEP_MS: u64 = 20;
    const STEPS: u64 = 150;
    let server = RedisServer::start().await;
    let clock = FakeRelativeClock::default();
    let nodes = three_nodes(&server, &limits, &clock).await;
    let mut admitted = 0;
    for _ in 0..STEPS {
        for node in &nodes {
            admitted += node.send(2).await;
        }
        clock.advance(Duration::from_millis(STEP_MS));
    }
    let expected = BURST + RPS * STEPS * STEP_MS / 1000;
    let admitted = admitted as u64;
    assert!(
        admitted.abs_diff(expected) * 10 <= expected,
        "admitted {admitted} across three nodes, want {expected} +/- 10%"
    );
    // Per-node limits would have let each node admit up to the whole quota.
    let stats: Vec<AdmissionStats> = nodes.iter().map(|n| n.stats(kind)).collect();
    eprintln!("{kind:?}: admitted {admitted} of {expected}; {stats:?}");
    let local: u64 = stats.iter().map(|s| s.local).sum();
    let round_trips: u64 = stats.iter().map(|s| s.round_trips).sum();
    assert!(
        local > admitted / 3,
        "the leases served requests without Redis: {stats:?}"
    );
    assert!(
        round_trips < 3 * STEPS * 2,
        "fewer round trips than requests: {stats:?}"
    );
    assert!(stats.iter().all(|s| s.fallback == 0 && s.bad_replies == 0));
    for node in nodes {
        node.gw.shutdown().await;
    }
}

#[tokio::test]
async fn per_subject_quota_holds_across_three_nodes_within_ten_percent() {
    quota_holds_across_three_nodes(subject_limit(100, 100), LimitKind::Subject).await;
}

#[tokio::test]
async fn per_ip_quota_holds_across_three_nodes_within_ten_percent() {
    quota_holds_across_three_nodes(ip_limit(100, 100), LimitKind::Ip).await;
}

/// Stopped by PID: each node admits its share (quota / 3) on its own; restarted: one node can
/// again spend the whole shared burst, and the others then nothing, with no restart.
#[tokio::test]
async fn redis_stopped_gives_per_node_quotas_and_restarted_shared_ones_again() {
    let mut server = RedisServer::start().await;
    let clock = FakeRelativeClock::default();
    // rps 30, burst 30: leases of 1 (exact); per node 10, burst 10.
    let nodes = three_nodes(&server, &subject_limit(30, 30), &clock).await;
    let shared = async |nodes: &[Node]| {
        assert_eq!(
            nodes[0].send(40).await,
            30,
            "the whole burst through one node"
        );
        assert_eq!(
            nodes[1].send(10).await,
            0,
            "shared: nothing left for another node"
        );
        assert_eq!(nodes[2].send(10).await, 0);
    };
    shared(&nodes).await;
    assert!(nodes.iter().all(|n| !n.fallback_active()));

    assert!(server.pid().is_some());
    server.stop();
    clock.advance(Duration::from_secs(10));
    for node in &nodes {
        assert_eq!(node.send(20).await, 10, "per node: quota / expected_nodes");
        assert!(node.fallback_active());
        let ready = node.readyz().await;
        assert!(
            ready.contains("rate limits: degraded (per-node quotas"),
            "{ready}"
        );
    }

    server.restart().await;
    // The first request a second after the last try probes Redis; reconnecting takes real time.
    for node in &nodes {
        eventually(
            "shared limits again",
            100,
            Duration::from_millis(50),
            || {
                clock.advance(Duration::from_millis(1_100));
                async {
                    node.send(1).await;
                    (!node.fallback_active()).then_some(())
                }
            },
        )
        .await;
    }
    clock.advance(Duration::from_secs(10));
    shared(&nodes).await;
    assert!(nodes[0].readyz().await.contains("rate limits: ok"));
    for node in nodes {
        node.gw.shutdown().await;
    }
}

fn signal(server: &mut RedisServer, signal: rustix::process::Signal) {
    let pid = server.pid().expect("redis-server runs");
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

/// A Redis that stops answering (SIGSTOP: connections open, no replies) costs one request the
/// command timeout; the rest go straight to the per-node quota without waiting on it, until
/// it answers again (SIGCONT) and the limits are shared again.
#[tokio::test]
async fn redis_too_slow_gives_per_node_quotas_with_one_request_waiting() {
    let mut server = RedisServer::start().await;
    let clock = FakeRelativeClock::default();
    let node = Node::start(&server, &subject_limit(30, 30), 3, &clock).await;
    assert_eq!(node.send(40).await, 30, "shared burst");
    let trips = |node: &Node| {
        node.stats(LimitKind::Ip).round_trips + node.stats(LimitKind::Subject).round_trips
    };

    signal(&mut server, rustix::process::Signal::STOP);
    clock.advance(Duration::from_secs(10));
    let before = trips(&node);
    assert_eq!(node.send(20).await, 10, "per node: quota / expected_nodes");
    assert_eq!(
        trips(&node) - before,
        1,
        "only the first request asked the stalled Redis"
    );
    assert!(node.fallback_active());

    signal(&mut server, rustix::process::Signal::CONT);
    eventually(
        "shared limits again",
        100,
        Duration::from_millis(50),
        || {
            clock.advance(Duration::from_millis(1_100));
            async {
                node.send(1).await;
                (!node.fallback_active()).then_some(())
            }
        },
    )
    .await;
    clock.advance(Duration::from_secs(10));
    assert_eq!(node.send(40).await, 30, "the shared burst again");
    node.gw.shutdown().await;
}

/// Garbage written into a key (another type, bytes that are not a number, a truncated number,
/// NaN) is an error for that lookup: the per-node quota counts, never more, no 5xx, and Redis
/// is not taken for down. A time far in the future (an infinity) refuses and is clamped.
#[tokio::test]
async fn garbage_in_a_key_counts_the_per_node_quota_and_never_more() {
    let server = RedisServer::start().await;
    let clock = FakeRelativeClock::default();
    let nodes = three_nodes(&server, &subject_limit(30, 30), &clock).await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!(
        "{PREFIX}:v1:rate-subject:{}",
        hex::encode(sha2::Sha256::digest(SUBJECT.as_bytes()))
    );

    let garbage: [(&str, &[u8]); 4] = [
        ("bytes", b"\xff\xfe\x00garbage"),
        ("truncated", b"17e"),
        ("nan", b"nan"),
        ("empty", b""),
    ];
    let mut bad_before = 0;
    for (what, value) in garbage {
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
        clock.advance(Duration::from_secs(10)); // every per-node bucket full again
        assert_eq!(nodes[0].send(20).await, 10, "{what}: the per-node quota");
        let stats = nodes[0].stats(LimitKind::Subject);
        assert!(stats.bad_replies > bad_before, "{what}: {stats:?}");
        bad_before = stats.bad_replies;
        assert!(!nodes[0].fallback_active(), "{what}: Redis answered");
    }

    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg(&key)
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        nodes[1].send(20).await,
        10,
        "wrong type: the per-node quota"
    );

    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("inf")
        .query_async(&mut conn)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(10));
    assert_eq!(nodes[2].send(5).await, 0, "a time past the quota refuses");
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        value.parse::<f64>().unwrap().is_finite(),
        "clamped: {value}"
    );
    // Clamped to a full bucket, it drains at the quota's rate: one token per 1/30 s.
    clock.advance(Duration::from_millis(100));
    assert_eq!(nodes[2].send(10).await, 3);

    for node in nodes {
        node.gw.shutdown().await;
    }
}

/// Many requests at once on a key this node holds no lease for: one of them leases a batch,
/// the others ask for their own token only, so the node does not take a batch per request
/// (here 50 batches of 100 would have taken 5,000 tokens of a burst of 1,000).
#[tokio::test]
async fn concurrent_requests_on_a_cold_key_lease_one_batch() {
    let server = RedisServer::start().await;
    let config = redis_config(&server, 1);
    let redis = Redis::connect(&RedisSettings::from_config(&config).unwrap()).unwrap();
    let clock = FakeRelativeClock::default();
    // rps 1000, burst 1000, one node: batches of 100, one token per 1,000 us.
    let store = RedisAdmission::new(
        std::sync::Arc::new(redis),
        &ip_limit(1000, 1000),
        1,
        AdmitClock::Fake(clock.clone()),
    );
    let client: std::net::IpAddr = "192.0.2.7".parse().unwrap();
    let results = futures_util::future::join_all((0..50).map(|_| store.admit(client, None))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let conn_client = redis::Client::open(server.url()).unwrap();
    let mut conn = conn_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let tat: String = redis::cmd("GET")
        .arg(format!("{PREFIX}:v1:rate-ip:192.0.2.7"))
        .query_async(&mut conn)
        .await
        .unwrap();
    // The clock stands at 0: the stored time is the tokens taken, in ms.
    let taken = tat.parse::<f64>().unwrap() / 1000.0;
    assert!(
        (50.0..=149.0).contains(&taken),
        "took {taken} tokens for 50 requests (one batch of 100 plus single tokens at most)"
    );
    // And the rest of the batch is spent locally.
    let before = store.stats(LimitKind::Ip);
    for _ in 0..20 {
        store.admit(client, None).await.unwrap();
    }
    let after = store.stats(LimitKind::Ip);
    assert!(after.round_trips - before.round_trips <= 1, "{after:?}");
}

/// A request dropped while it waits on Redis for a batch (its client went away) does not keep
/// the key from leasing batches: once the batch would have expired, the next request leases one
/// and the ones after it are served locally.
#[tokio::test]
async fn a_request_dropped_while_leasing_does_not_stop_batches_for_its_key() {
    let server = RedisServer::start().await;
    let config = redis_config(&server, 1);
    let redis = Redis::connect(&RedisSettings::from_config(&config).unwrap()).unwrap();
    let clock = FakeRelativeClock::default();
    let store = RedisAdmission::new(
        std::sync::Arc::new(redis),
        &ip_limit(1000, 1000),
        1,
        AdmitClock::Fake(clock.clone()),
    );
    let client: std::net::IpAddr = "192.0.2.8".parse().unwrap();
    // Polled once (it sends its command and waits), then dropped.
    let dropped = tokio::time::timeout(Duration::ZERO, store.admit(client, None)).await;
    assert!(dropped.is_err(), "the request was still waiting on Redis");
    assert_eq!(store.stats(LimitKind::Ip).round_trips, 1);

    clock.advance(Duration::from_millis(1_100));
    for _ in 0..20 {
        store.admit(client, None).await.unwrap();
    }
    let stats = store.stats(LimitKind::Ip);
    assert_eq!(stats.round_trips, 2, "one batch for the twenty: {stats:?}");
    assert_eq!(stats.local, 19);
}
