#![allow(dead_code)] // each test module uses a part
//! A real Redis (Debian's `redis-server`) on loopback for the scale-out tests: started per test
//! on a free port with no persistence file unless asked, stopped (by PID) and restarted on the
//! same port, killed with the test. Without `redis-server` the tests fail loudly (`tests/run`
//! installs it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::process::ChildGuard;

const READY_ATTEMPTS: u32 = 200;
const READY_INTERVAL: Duration = Duration::from_millis(50);

/// Options of a test Redis.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `requirepass`.
    pub password: Option<String>,
    /// Serve TLS only (`--tls-port`, no plain port) with a certificate for 127.0.0.1 signed by
    /// a CA made here with rcgen; [`RedisServer::ca_file`] is that CA.
    pub tls: bool,
}

/// A running `redis-server`, stopped on drop.
pub struct RedisServer {
    process: Option<ChildGuard>,
    port: u16,
    dir: TempDir,
    options: RedisOptions,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        RedisServer::start_with(RedisOptions::default()).await
    }

    pub async fn start_with(options: RedisOptions) -> RedisServer {
        let dir = tempfile::tempdir().expect("redis dir");
        let port = free_port();
        let mut server = RedisServer {
            process: None,
            port,
            dir,
            options,
        };
        server.spawn().await;
        server
    }

    /// A `[redis]` table for a gateway node named `node` on this server: the password by value
    /// (configs give it by secret reference), rediss:// with the test CA when TLS, the defaults
    /// otherwise (sync every 200 ms), prefix `bg-test`.
    pub fn config(&self, node: &str) -> bucketgate::config::RedisConfig {
        use bucketgate::config::defaults as d;
        bucketgate::config::RedisConfig {
            url: self.plain_url(),
            ca_file: self.options.tls.then(|| self.ca_file()),
            username: None,
            password: self
                .options
                .password
                .clone()
                .map(bucketgate::config::Secret::new),
            prefix: "bg-test".to_owned(),
            connect_timeout: Duration::from_millis(d::REDIS_CONNECT_TIMEOUT_MS),
            command_timeout: Duration::from_millis(d::REDIS_COMMAND_TIMEOUT_MS),
            connections: 2,
            node_name: node.to_owned(),
            sync_interval: Duration::from_millis(d::REDIS_SYNC_INTERVAL_MS),
            refuse_tokens_issued_during_outage: false,
            seal_key: None,
            expected_nodes: 1,
        }
    }

    /// The CA that signed the server's certificate (TLS servers only).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `redis://[:password@]127.0.0.1:port/0`.
    pub fn url(&self) -> String {
        match &self.options.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// `redis://127.0.0.1:port/0` (`rediss://` for a TLS server) without the password (configs
    /// give it by secret reference).
    pub fn plain_url(&self) -> String {
        let scheme = if self.options.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's PID (to stop it from outside, as an operator would).
    pub fn pid(&mut self) -> Option<u32> {
        self.process.as_mut().map(|p| p.child().id())
    }

    /// Stop the server (SIGTERM by PID, reaped). Its data is gone unless it saved.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    /// Start it again on the same port (empty unless it saved).
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let bin = redis_binary();
        let mut cmd = Command::new(&bin);
        if self.options.tls {
            let dir = self.dir.path();
            if !dir.join("ca.pem").exists() {
                write_tls_files(dir);
            }
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(dir.join("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(self.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(p) = &self.options.password {
            cmd.args(["--requirepass", p]);
        }
        let mut guard = ChildGuard::spawn("redis-server", &mut cmd);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        for _ in 0..READY_ATTEMPTS {
            if let Ok(Some(status)) = guard.child().try_wait() {
                panic!("redis-server exited early ({status})");
            }
            let tls = self.options.tls;
            if tokio::task::spawn_blocking(move || {
                if tls {
                    StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                } else {
                    answers_ping(addr)
                }
            })
            .await
            .unwrap_or(false)
            {
                self.process = Some(guard);
                return;
            }
            tokio::time::sleep(READY_INTERVAL).await;
        }
        panic!("redis-server on {addr} did not answer in time");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `redis-server` on PATH or in /usr/bin; a failure (never a skip) without it.
fn redis_binary() -> PathBuf {
    for dir in std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
    {
        let p = dir.join("redis-server");
        if p.is_file() {
            return p;
        }
    }
    panic!("redis-server not found: install it with `./tests/run` (apt-get install redis-server)");
}

/// `ca.pem`, `server.pem` and `server.key` (for 127.0.0.1) in `dir`, made with rcgen.
fn write_tls_files(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bucketgate test redis CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("server params");
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
    std::fs::write(dir.join("server.pem"), cert.pem()).expect("write server.pem");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write server.key");
}

fn free_port() -> u16 {
    let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Whether a Redis answers on `addr` (PONG, or NOAUTH from one that wants a password).
fn answers_ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok()
        && (head.starts_with(b"+PONG") || head.starts_with(b"-NOAU"))
}
