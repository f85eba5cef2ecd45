#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Session lookup from Redis (issue 15): what a request with a SAML session cookie costs on a
//! node that has never seen the session (a cold node: one `GET`, AES-256-GCM open, JSON parse,
//! principal and credentials rebuilt) and on a node that has (one `GET` and a byte compare with
//! its copy). A real `redis-server` on loopback, started here (no persistence); sessions are
//! created through one store (node A) and looked up through another (node B), each lookup of a
//! fresh session on B being cold. Prints p50/p99/max per kind. Target: p99 < 1 ms on loopback.
//!
//! `cargo bench --features bench --bench redis_sessions` (needs `redis-server` on PATH).

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use bucketgate::credentials::SessionCredentials;
use bucketgate::identity::{Principal, Scope};
use bucketgate::saml::session::{Session, SharedSessionStore as _};
use bucketgate::state::redis::seal::SealKey;
use bucketgate::state::redis::sessions::RedisSessions;
use bucketgate::state::redis::{Redis, RedisSettings};

/// Sessions looked up (each once cold, then once warm).
const SESSIONS: usize = 5_000;

fn session(n: usize, expires: SystemTime) -> Session {
    let arn = format!("arn:aws:sts::123456789012:assumed-role/Labeler/user{n}");
    let credentials = SessionCredentials {
        credentials: Credentials::new(
            format!("ASIA{n:016}"),
            "secret-access-key-0123456789012345678901",
            Some("session-token-".repeat(40)),
            Some(expires),
            "bench",
        ),
        expires,
        assumed_role_arn: arn.clone(),
        subject: Some(format!("user{n}@corp.example")),
    };
    let principal = Principal::saml_session_for_bench(
        arn,
        "annotator".to_owned(),
        "labeling".to_owned(),
        vec![Scope::parse("assets:labels/").unwrap()],
        0,
    );
    Session::new(principal, credentials, expires)
}

fn node(port: u16, seal: &Arc<SealKey>) -> RedisSessions {
    let redis = Redis::connect(&RedisSettings {
        url: format!("redis://127.0.0.1:{port}/0"),
        ca_pem: None,
        password: None,
        username: None,
        prefix: "bench".to_owned(),
        connect_timeout: Duration::from_secs(1),
        command_timeout: Duration::from_secs(1),
        connections: 4,
    })
    .unwrap();
    RedisSessions::new(Arc::new(redis), Arc::clone(seal), SESSIONS * 2)
}

fn report(what: &str, mut micros: Vec<f64>) {
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{what:<34} n={:<6} p50={:>7.1} us  p99={:>7.1} us  max={:>8.1} us",
        micros.len(),
        at(0.50),
        at(0.99),
        at(1.0)
    );
}

fn main() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (apt-get install redis-server)");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let seal = Arc::new(SealKey::new(&[7; 32]).unwrap());
        let a = node(port, &seal);
        let b = node(port, &seal);
        let now = SystemTime::now();
        let expires = now + Duration::from_secs(3600);
        // Redis may take a moment to listen.
        let mut cookies = Vec::with_capacity(SESSIONS);
        for n in 0..SESSIONS {
            let id = loop {
                match a.create(session(n, expires), now).await {
                    Ok(id) => break id,
                    Err(_) if n == 0 => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(e) => panic!("create: {e}"),
                }
            };
            cookies.push(id.cookie_value().to_owned());
        }
        // Warm up B's connections.
        for cookie in cookies.iter().take(50) {
            b.get(cookie, now).await.unwrap();
        }
        let mut cold = Vec::with_capacity(SESSIONS);
        for cookie in &cookies[50..] {
            let t = Instant::now();
            let s = b.get(cookie, now).await.unwrap();
            cold.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(s);
        }
        let mut warm = Vec::with_capacity(SESSIONS);
        for cookie in &cookies[50..] {
            let t = Instant::now();
            let s = b.get(cookie, now).await.unwrap();
            warm.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(s);
        }
        report("cold node (GET + open + parse)", cold);
        report("warm node (GET + compare)", warm);
    });
    let _ = server.kill();
    let _ = server.wait();
}
