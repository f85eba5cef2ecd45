//! The `bucketgate` binary: parse the command line, set up logging, run, map errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bucketgate::Gateway;
use bucketgate::config::{self, Config, KeyAlg, TlsConfig};
use bucketgate::reload::{Control, Trigger};
use bucketgate::telemetry::{self, LogFormat};
use bucketgate::tokens::{self, Grant, Rep, Signer, Target, Ttl};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

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
    /// Dry-run a request through the gateway's own stage functions: the network stage (the
    /// client address it would use, the decision and its rule), then, with a token, identity,
    /// authorize, the rate limits that would apply and the plan. Exit 0 allow, 1 deny, 2 bad
    /// input.
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
        /// A token (JWT) as the client would send it in `Authorization: Bearer`; without it the
        /// dry run stops after the network stage.
        #[arg(long)]
        token: Option<String>,
        /// The request path, e.g. /o/photos/cat.jpg.
        path: String,
    },
    /// Print a signed URL (https://HOST/o/SOURCE/KEY?token=JWT) for one key or a prefix.
    Sign {
        #[command(flatten)]
        mint: MintArgs,
        /// Scheme and host of the gateway, e.g. https://gw.example.com. Default: the config's
        /// listener address, or https://127.0.0.1:8443 without --config.
        #[arg(long)]
        base_url: Option<String>,
    },
    /// Print a session token (a JWT for `Authorization: Bearer` or the session cookie).
    Token {
        #[command(flatten)]
        mint: MintArgs,
    },
    /// Print the SAML service provider metadata (XML) of the config's [saml] table, for the IdP
    /// admin: entity id and the assertion consumer service URL (HTTP-POST).
    SamlMetadata {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Generate a signing key: an HS256 secret or an EdDSA / ES256 key pair (PEM), and print the
    /// [[identity.keys]] table to paste into the config.
    Keygen {
        #[arg(long, value_parser = parse_alg)]
        alg: KeyAlg,
        /// Directory to write the key files to.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Key id (`kid`). Default: key-XXXXXXXX (random).
        #[arg(long)]
        kid: Option<String>,
    },
}

/// What `sign` and `token` put into a token.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["key", "prefix"])))]
struct MintArgs {
    /// Source name, as in /o/SOURCE/...
    #[arg(long)]
    source: String,
    /// One object key (decoded, e.g. `cats/1 2.jpg`).
    #[arg(long)]
    key: Option<String>,
    /// Every key under this prefix (ending in `/`; empty = the whole source).
    #[arg(long)]
    prefix: Option<String>,
    /// Lifetime: 30s, 15m, 1h, 7d (at most 7 days), or `none` if the key allows it.
    #[arg(long, default_value = "15m", value_parser = tokens::parse_ttl)]
    ttl: Ttl,
    /// Bind the token to client addresses (a CIDR or one address).
    #[arg(long, value_parser = tokens::parse_cidr)]
    cip: Option<ipnet::IpNet>,
    /// Use window: once first used (before --ttl runs out), the URL keeps working past its
    /// expiry while it is used at least this often (30s, 10m, 1h); claim `idle`.
    #[arg(long, value_parser = tokens::parse_duration)]
    idle: Option<Duration>,
    /// Use window: the longest it lasts after the first use (claim `max`). Default: the
    /// config's [identity] use_window_max_secs (12 h unless set).
    #[arg(long, value_parser = tokens::parse_duration, requires = "idle")]
    max: Option<Duration>,
    /// Use window: accept it from any client address, not only the first use's (`bind: false`).
    #[arg(long, requires = "idle")]
    no_bind: bool,
    /// Representations the token may see (repeatable): original, derived. Default: any.
    #[arg(long)]
    rep: Vec<Rep>,
    /// Role (`role`): what the token may do; a seed role or one from [roles].
    #[arg(long, default_value = tokens::DEFAULT_ROLE)]
    role: String,
    #[arg(long)]
    project: Option<String>,
    /// Subject (`sub`): who the token is for.
    #[arg(long, default_value = tokens::DEFAULT_SUBJECT)]
    sub: String,
    /// Config whose [[identity.keys]] to sign with. Default: the embedded default's
    /// development key in ./.bucketgate/ (created if missing).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Key id to sign with. Default: the first key that can sign.
    #[arg(long)]
    kid: Option<String>,
}

fn parse_alg(text: &str) -> Result<KeyAlg, String> {
    match text {
        "HS256" => Ok(KeyAlg::Hs256),
        "EdDSA" => Ok(KeyAlg::EdDsa),
        "ES256" => Ok(KeyAlg::Es256),
        _ => Err("write HS256, EdDSA or ES256".to_owned()),
    }
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
            token,
            path,
        } => explain(
            &config,
            &peer,
            forwarded_for,
            forwarded,
            token.as_deref(),
            &path,
        ),
        Command::Sign { mint, base_url } => report(sign(&mint, base_url.as_deref())),
        Command::Token { mint } => report(token(&mint)),
        Command::Keygen { alg, out, kid } => report(keygen(alg, &out, kid)),
        Command::SamlMetadata { config } => report(saml_metadata(&config)),
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

/// Print the command's output, or its error chain and exit 1.
fn report(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bucketgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The signer and base URL for `sign`/`token`: from `--config`, or the embedded default's
/// development key (the same one `serve` without a config uses).
fn signer(args: &MintArgs) -> anyhow::Result<(Signer, String)> {
    let (config, base) = match &args.config {
        Some(path) => {
            let config = config::load(path)
                .map_err(|errors| anyhow::anyhow!("invalid config:\n{errors}"))?;
            let base = tokens::base_url_for(&config);
            (config, base)
        }
        None => {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            let config = bucketgate::app::embedded_config(&cwd)
                .context("reading the development signing key in ./.bucketgate/")?;
            (config, tokens::DEFAULT_BASE_URL.to_owned())
        }
    };
    Ok((Signer::from_config(&config, args.kid.as_deref())?, base))
}

fn mint(args: &MintArgs, signer: &Signer) -> anyhow::Result<(String, Target)> {
    let target = match (&args.key, &args.prefix) {
        (Some(key), _) => Target::key(key)?,
        (None, Some(prefix)) => Target::prefix(prefix)?,
        (None, None) => anyhow::bail!("give --key or --prefix"),
    };
    let grant = Grant {
        source: args.source.clone(),
        target: target.clone(),
        ttl: args.ttl,
        subject: args.sub.clone(),
        role: args.role.clone(),
        project: args.project.clone(),
        cip: args.cip,
        rep: args.rep.clone(),
    };
    let window = args.idle.map(|idle| tokens::Window {
        idle,
        max: args.max,
        bind: !args.no_bind,
    });
    Ok((
        signer.mint_with_window(&grant, window, SystemTime::now())?,
        target,
    ))
}

fn sign(args: &MintArgs, base_url: Option<&str>) -> anyhow::Result<String> {
    let (signer, default_base) = signer(args)?;
    let base = match base_url {
        Some(url) => tokens::parse_base_url(url)?,
        None => default_base,
    };
    let (token, target) = mint(args, &signer)?;
    Ok(tokens::signed_url(&base, &args.source, &target, &token))
}

fn token(args: &MintArgs) -> anyhow::Result<String> {
    let (signer, _) = signer(args)?;
    Ok(mint(args, &signer)?.0)
}

fn keygen(alg: KeyAlg, out: &std::path::Path, kid: Option<String>) -> anyhow::Result<String> {
    let kid = match kid {
        Some(kid) => kid,
        None => tokens::random_kid()?,
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let generated = tokens::keygen(alg, &kid, out)?;
    for file in &generated.files {
        eprintln!("wrote {}", file.display());
    }
    eprintln!("add this to the config's [identity] section:");
    Ok(generated.snippet)
}

fn saml_metadata(path: &std::path::Path) -> anyhow::Result<String> {
    let config =
        config::load(path).map_err(|errors| anyhow::anyhow!("invalid config:\n{errors}"))?;
    let saml = config.saml.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "{} has no [saml] table; add one (see config.toml.example)",
            path.display()
        )
    })?;
    Ok(bucketgate::saml::sp::metadata(saml))
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
    token: Option<&str>,
    request_path: &str,
) -> ExitCode {
    use bucketgate::pipeline::{self, explain::DryRun};
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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bucketgate: starting the async runtime: {e}");
            return ExitCode::from(EXPLAIN_BAD_INPUT);
        }
    };
    let request = DryRun {
        peer,
        headers: &headers,
        path_and_query: request_path,
        token,
        sessions: None,
    };
    match runtime.block_on(pipeline::explain::explain(&config, request)) {
        Ok(explanation) => {
            print!("{explanation}");
            if explanation.allowed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("bucketgate: {:#}", anyhow::Error::new(e));
            ExitCode::from(EXPLAIN_BAD_INPUT)
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
            bucketgate::app::embedded_config(&cwd)
                .context("creating the development signing key")?
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // Listen for signals before the gateway starts and says so: a signal sent right after
        // the "bucketgate serving" line must be handled, not end the process with the default
        // action (regression: a SIGINT at that moment killed it instead of a clean exit 0).
        let stop = shutdown_signal().context("listening for SIGINT and SIGTERM")?;
        let hangup = if config_path.is_some() {
            hangup_signal()
        } else {
            None
        };
        let gateway = Gateway::start_with_path(config.clone(), config_path.clone())
            .await
            .context("starting the gateway")?;
        if embedded {
            print_welcome(&config, &gateway);
        }
        if let Some(hangup) = hangup {
            tokio::spawn(reload_on_sighup(
                hangup,
                Arc::clone(gateway.control()),
                gateway.shutdown_token(),
            ));
        }
        let token = gateway.shutdown_token();
        tokio::spawn(async move {
            stop.await;
            // A second SIGINT/SIGTERM during the drain (up to shutdown_grace_secs) means now;
            // listened for before the drain is announced, so that none is missed.
            let again = shutdown_signal().ok();
            tracing::info!("shutting down: no new connections; draining in-flight requests");
            token.cancel();
            if let Some(again) = again {
                again.await;
                tracing::warn!("second signal: exiting without waiting for in-flight requests");
                std::process::exit(130);
            }
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
    match welcome_url(config, &format!("https://{data}")) {
        Ok(url) => {
            println!("  try (valid for 1 hour):");
            println!("           curl --cacert {} '{url}'", cert.display());
        }
        Err(e) => println!("  (no signed URL to try: {e:#})"),
    }
    println!("  more:    bucketgate sign --source local --key KEY   (in this directory)");
    println!("  metrics: curl http://{}/metrics", gateway.admin_addr());
}

/// SIGHUP: read the config file again (the same reload the file watcher and the admin API do).
/// Ends at shutdown: its `Control` holds the audit log open, and `Gateway::wait` waits for every
/// holder to let go before the audit writer finishes (regression: with --config, every SIGTERM
/// waited out the 5 s audit flush timeout and warned that records may be lost).
#[cfg(unix)]
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    control: Arc<Control>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        tracing::info!("SIGHUP: reloading the config file");
        // Errors are logged and counted inside; the old config keeps serving.
        let _ = control.reload_from_file(Trigger::Signal).await;
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup(
    hup: std::convert::Infallible,
    _control: Arc<Control>,
    _shutdown: CancellationToken,
) {
    match hup {}
}

/// SIGHUP, listened for from now on; `None` if that fails (then reload with the admin API).
#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup())
        .inspect_err(|e| {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with the admin API");
        })
        .ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Option<std::convert::Infallible> {
    None
}

/// A signed URL for `hello.txt` (written into ./data first if the directory is empty).
fn welcome_url(config: &Config, base: &str) -> anyhow::Result<String> {
    const HELLO: &str = "hello.txt";
    if let Some(bucketgate::config::SourceConfig::Fs(fs)) = config.sources.get("local") {
        let empty = std::fs::read_dir(&fs.root)
            .with_context(|| format!("reading {}", fs.root.display()))?
            .next()
            .is_none();
        if empty {
            let path = fs.root.join(HELLO);
            std::fs::write(&path, "hello from bucketgate\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let signer = Signer::from_config(config, None)?;
    let target = Target::key(HELLO)?;
    let grant = Grant {
        source: "local".to_owned(),
        target: target.clone(),
        ttl: Ttl::For(Duration::from_secs(3600)),
        subject: tokens::DEFAULT_SUBJECT.to_owned(),
        role: tokens::DEFAULT_ROLE.to_owned(),
        project: None,
        cip: None,
        rep: Vec::new(),
    };
    let token = signer.mint(&grant, SystemTime::now())?;
    Ok(tokens::signed_url(base, "local", &target, &token))
}

/// SIGINT or SIGTERM: the handlers are installed when this returns, the future resolves on the
/// first of them.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
