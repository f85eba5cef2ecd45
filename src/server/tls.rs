//! TLS server configuration: rustls with ring, TLS 1.2 and 1.3, ALPN h2 and http/1.1. Certificates
//! come from PEM files, or a development certificate generated once and kept on disk.
//!
//! The config in force is a [`LiveTls`]: a reload reads the certificate and key files again and
//! replaces it, so new connections get the new certificate while open ones keep theirs. A new
//! config also starts a new session cache, so no client resumes a session of the old certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading certificate chain {path}")]
    Cert {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCert { path: PathBuf },
    #[error("reading private key {path}")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("certificate and key do not make a usable TLS config")]
    Rustls(#[from] rustls::Error),
    #[error("generating the development certificate")]
    Generate(#[from] rcgen::Error),
    #[error("writing the development certificate to {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// File names of the development certificate inside its directory.
pub const DEV_CERT_FILE: &str = "cert.pem";
pub const DEV_KEY_FILE: &str = "key.pem";

/// The data listener's TLS config in force.
pub struct LiveTls {
    current: ArcSwap<LoadedTls>,
}

impl LiveTls {
    pub fn new(loaded: LoadedTls) -> LiveTls {
        LiveTls {
            current: ArcSwap::from_pointee(loaded),
        }
    }

    /// An acceptor with the config in force now; the connections it accepts keep it.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.current.load().config))
    }

    /// The leaf certificate served to new connections.
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current.load().leaf.clone()
    }

    /// Serve `loaded` to every connection accepted from now on.
    pub fn replace(&self, loaded: LoadedTls) {
        self.current.store(Arc::new(loaded));
    }
}

/// The certificate chain and key files `tls` names (for a development certificate, the files
/// [`ensure_dev_cert`] keeps), whether or not they exist.
pub fn files_of(tls: &TlsConfig) -> [PathBuf; 2] {
    match tls {
        TlsConfig::Files { cert, key } => [cert.clone(), key.clone()],
        TlsConfig::Development { dir } => [dir.join(DEV_CERT_FILE), dir.join(DEV_KEY_FILE)],
    }
}

/// A server TLS config read from its files.
pub struct LoadedTls {
    config: Arc<ServerConfig>,
    leaf: CertificateDer<'static>,
}

impl LoadedTls {
    /// Read the certificate chain and key `tls` names (generating the development certificate
    /// if it is missing) and build the server config. Fails if a file is missing or unreadable,
    /// holds no certificate or key, or the key is not the certificate's.
    pub fn load(tls: &TlsConfig) -> Result<LoadedTls, TlsError> {
        let (cert_path, key_path) = match tls {
            TlsConfig::Files { cert, key } => (cert.clone(), key.clone()),
            TlsConfig::Development { dir } => ensure_dev_cert(dir)?,
        };
        let (config, leaf) = build(&cert_path, &key_path)?;
        Ok(LoadedTls { config, leaf })
    }

    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.leaf
    }
}

fn build(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Arc<ServerConfig>, CertificateDer<'static>), TlsError> {
    let (cert_path, key_path) = (cert_path.to_path_buf(), key_path.to_path_buf());
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Cert {
            path: cert_path.clone(),
            source,
        })?;
    let Some(leaf) = certs.first().cloned() else {
        return Err(TlsError::NoCert { path: cert_path });
    };
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|source| TlsError::Key {
        path: key_path,
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), leaf))
}

/// Create `dir/cert.pem` and `dir/key.pem` (self-signed for localhost, 127.0.0.1 and ::1) unless
/// both exist. The key file is readable by its owner only.
pub fn ensure_dev_cert(dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join(DEV_CERT_FILE);
    let key_path = dir.join(DEV_KEY_FILE);
    if cert_path.is_file() && key_path.is_file() {
        return Ok((cert_path, key_path));
    }
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let generated = rcgen::generate_simple_self_signed(names)?;
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    write_private(&key_path, generated.key_pair.serialize_pem().as_bytes())
        .map_err(write_err(&key_path))?;
    std::fs::write(&cert_path, generated.cert.pem()).map_err(write_err(&cert_path))?;
    Ok((cert_path, key_path))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
