//! The `bucketgate` binary: parse the command line, set up logging, run, map errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use bucketgate::Gateway;
use bucketgate::config::{self, Config, TlsConfig};
use bucketgate::reload::{Control, Trigger};
use bucketgate::telemetry::{self, LogFormat};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bucketgate",
    version,
    about = "TLS gateway that serves bucket objects to labeling UIs"
)]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "pretty")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. Without --config, serve ./data as the source `local` on
    /// https://127.0.0.1:8443 with a development certificate.
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print every error as file:line:col: key: message.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Dry-run a request through the network stage: print the client address the gateway would
    /// use, the decision and the rule that made it. Exit 0 allow, 1 deny, 2 bad input.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        /// The TCP peer (or the PROXY protocol source address), e.g. 203.0.113.7.
        #[arg(long)]
        peer: String,
        /// An X-Forwarded-For header value, as the peer would send it.
        #[arg(long)]
        forwarded_for: Option<String>,
        /// A Forwarded header value (RFC 7239), as the peer would send it.
        #[arg(long)]
        forwarded: Option<String>,
        // Identity (`--token`) joins here with the identity stage.
        /// The request path, e.g. /o/photos/cat.jpg.
        path: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Explain {
            config,
            peer,
            forwarded_for,
            forwarded,
            path,
        } => explain(&config, &peer, forwarded_for, forwarded, &path),
        Command::Serve { config } => {
            telemetry::init_logging(cli.log_format);
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bucketgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(cfg) => {
            println!("{}: ok ({} source(s))", path.display(), cfg.sources.len());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprint!("{errors}");
            ExitCode::from(2)
        }
    }
}

/// Exit code of `explain` for input it cannot judge (bad config, peer, header or path).
const EXPLAIN_BAD_INPUT: u8 = 2;

fn explain(
    path: &std::path::Path,
    peer: &str,
    forwarded_for: Option<String>,
    forwarded: Option<String>,
    request_path: &str,
) -> ExitCode {
    use bucketgate::pipeline::network::{self, NetworkPolicy};
    let config = match config::load(path) {
        Ok(cfg) => cfg,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(EXPLAIN_BAD_INPUT);
        }
    };
    let Some(peer) = config::network::parse_ip(peer) else {
        eprintln!(
            "bucketgate: --peer `{peer}` is not an IP address (e.g. 203.0.113.7 or 2001:db8::1)"
        );
        return ExitCode::from(EXPLAIN_BAD_INPUT);
    };
    if !request_path.starts_with('/') {
        eprintln!("bucketgate: the path must start with `/`, e.g. /o/photos/cat.jpg");
        return ExitCode::from(EXPLAIN_BAD_INPUT);
    }
    let mut headers = http::HeaderMap::new();
    for (flag, name, value) in [
        (
            "--forwarded-for",
            http::header::HeaderName::from_static("x-forwarded-for"),
            forwarded_for,
        ),
        ("--forwarded", http::header::FORWARDED, forwarded),
    ] {
        let Some(value) = value else { continue };
        match http::HeaderValue::from_str(&value) {
            Ok(v) => {
                headers.insert(name, v);
            }
            Err(_) => {
                eprintln!("bucketgate: {flag} is not a valid header value");
                return ExitCode::from(EXPLAIN_BAD_INPUT);
            }
        }
    }
    let policy = NetworkPolicy::compile(&config.network);
    let explanation = network::explain(peer, &headers, request_path, &policy);
    print!("{explanation}");
    if explanation.allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn serve(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let embedded = config_path.is_none();
    let config = match &config_path {
        Some(path) => {
            config::load(path).map_err(|errors| anyhow::anyhow!("invalid config:\n{errors}"))?
        }
        None => {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            let data = cwd.join("data");
            std::fs::create_dir_all(&data)
                .with_context(|| format!("creating {}", data.display()))?;
            Config::embedded_default(&cwd)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let gateway = Gateway::start_with_path(config.clone(), config_path.clone())
            .await
            .context("starting the gateway")?;
        if embedded {
            print_welcome(&config, &gateway);
        }
        if config_path.is_some() {
            tokio::spawn(reload_on_sighup(Arc::clone(gateway.control())));
        }
        let token = gateway.shutdown_token();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: no new connections; draining in-flight requests");
            token.cancel();
        });
        gateway.wait().await;
        tracing::info!("stopped");
        Ok(())
    })
}

fn print_welcome(config: &Config, gateway: &Gateway) {
    let cert = match &config.listener.tls {
        TlsConfig::Development { dir } => dir.join(bucketgate::server::tls::DEV_CERT_FILE),
        TlsConfig::Files { cert, .. } => cert.clone(),
    };
    let data = gateway.data_addr();
    println!("bucketgate is serving ./data as the source `local` (embedded default config)");
    println!("  try:     echo hello > data/hello.txt");
    println!(
        "           curl --cacert {} https://{data}/o/local/hello.txt",
        cert.display()
    );
    println!("  metrics: curl http://{}/metrics", gateway.admin_addr());
}

/// SIGHUP: read the config file again (the same reload the file watcher and the admin API do).
async fn reload_on_sighup(control: Arc<Control>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(hup) => hup,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with the admin API");
                return;
            }
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config file");
            // Errors are logged and counted inside; the old config keeps serving.
            let _ = control.reload_from_file(Trigger::Signal).await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = control;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
