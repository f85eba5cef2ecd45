//! The `bucketgate` binary: parse the command line, set up logging, run, map errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bucketgate::Gateway;
use bucketgate::config::{self, Config, TlsConfig};
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
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
        let gateway = Gateway::start(config.clone())
            .await
            .context("starting the gateway")?;
        if embedded {
            print_welcome(&config, &gateway);
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
