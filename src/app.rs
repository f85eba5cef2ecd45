//! Composition root: a validated [`Config`] becomes live parts (backends, pipeline, listeners).
//! `main.rs` and the tests both start the gateway through [`Gateway::start`].
//!
//! Startup order: build every backend and the TLS config first (so a bad certificate or an
//! unbuildable source fails before any port is bound), then bind both listeners, then serve.
//! Shutdown: cancel the token; both listeners stop accepting and drain within the grace period.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::backend::fs::FsBackend;
use crate::backend::s3::S3Backend;
use crate::backend::{AnyBackend, BackendError};
use crate::config::{Config, SourceConfig};
use crate::pipeline::{Pipeline, Snapshot};
use crate::server::{self, Role, tls::TlsError};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("setting up TLS")]
    Tls(#[from] TlsError),
    #[error("source {name}: cannot open {root}")]
    FsSource {
        name: String,
        root: PathBuf,
        #[source]
        source: BackendError,
    },
    #[error("source {name}: cannot build the S3 client")]
    S3Source {
        name: String,
        #[source]
        source: BackendError,
    },
    #[error("binding {what} listener on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running gateway: both listeners bound and serving.
pub struct Gateway {
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    metrics: Arc<Metrics>,
    pipeline: Arc<Pipeline>,
    /// The config in force (listener settings from the first one stay until restart).
    config: std::sync::Mutex<Config>,
}

/// Build every live part a request needs from a config. Used at start and by every reload, so a
/// reload validates exactly what a start would.
pub async fn build_snapshot(config: &Config) -> Result<Snapshot, StartError> {
    let mut sources = HashMap::new();
    for (name, source) in &config.sources {
        let backend = match source {
            SourceConfig::Fs(fs) => {
                AnyBackend::Fs(
                    FsBackend::new(&fs.root).map_err(|source| StartError::FsSource {
                        name: name.clone(),
                        root: fs.root.clone(),
                        source,
                    })?,
                )
            }
            SourceConfig::S3(s3) => {
                AnyBackend::S3(S3Backend::new(s3, &config.limits).await.map_err(|source| {
                    StartError::S3Source {
                        name: name.clone(),
                        source,
                    }
                })?)
            }
        };
        sources.insert(name.clone(), backend);
    }
    Ok(Snapshot::new(sources, config.limits.clone()))
}

impl Gateway {
    /// Build everything from `config`, bind the listeners and start serving.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let metrics = Arc::new(Metrics::new());
        let tls = TlsAcceptor::from(server::tls::server_config(&config.listener.tls)?);
        let pipeline = Arc::new(Pipeline::new(
            build_snapshot(&config).await?,
            Arc::clone(&metrics),
        ));
        let admin = Arc::new(Admin::new(Arc::clone(&pipeline)));

        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let data_listener = bind("data", config.listener.addr).await?;
        let admin_listener = bind("admin", config.admin.addr).await?;
        let local = |l: &TcpListener, what: &'static str, addr: SocketAddr| {
            l.local_addr()
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let data_addr = local(&data_listener, "data", config.listener.addr)?;
        let admin_addr = local(&admin_listener, "admin", config.admin.addr)?;

        let shutdown = CancellationToken::new();
        let data = tokio::spawn(server::serve(
            Role::Data,
            data_listener,
            Some(tls),
            Arc::clone(&pipeline),
            config.limits.clone(),
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
        let admin = tokio::spawn(server::serve(
            Role::Admin,
            admin_listener,
            None,
            admin,
            config.limits.clone(),
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
        tracing::info!(%data_addr, %admin_addr, sources = config.sources.len(), "bucketgate serving");
        Ok(Gateway {
            data_addr,
            admin_addr,
            shutdown,
            tasks: vec![data, admin],
            metrics,
            pipeline,
            config: std::sync::Mutex::new(config),
        })
    }

    /// Where the TLS data listener is bound (the real port when configured with port 0).
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// Where the admin listener is bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Build a whole new snapshot from `config` and put it in force; on any error the old one
    /// keeps serving. Listener address, TLS and connection limits apply only at start: a change
    /// to them is logged and ignored until restart.
    pub async fn reload(&self, config: Config) -> Result<(), StartError> {
        let snapshot = build_snapshot(&config).await?;
        let mut current = match self.config.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if current.listener.addr != config.listener.addr || current.admin.addr != config.admin.addr
        {
            tracing::warn!("listener addresses changed in the config; they apply after a restart");
        }
        self.pipeline.replace(snapshot);
        *current = config;
        Ok(())
    }

    /// A token that stops the gateway when cancelled (signal handlers hold one).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stop accepting, let in-flight responses finish within the grace period, and return.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Wait until the gateway has stopped (after its shutdown token was cancelled).
    pub async fn wait(self) {
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "listener task failed");
            }
        }
    }
}
