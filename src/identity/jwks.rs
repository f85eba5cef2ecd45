//! The identity provider's JWKS: fetched over TLS (our rustls/ring config, the webpki roots or the
//! configured `ca_file`) once at start and again when a token names an unknown `kid`, at most
//! once per `refresh_min_interval`. Only EdDSA (Ed25519) and ES256 (P-256) public keys with a
//! `kid` are taken; symmetric (`oct`) keys and every other kind are ignored, so a JWKS can never
//! hand out an HMAC secret.
//!
//! One request per fetch over hyper's connection API (http/1.1): a pooled client would add
//! nothing at one request per interval.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::keys::VerifyKey;
use crate::config::defaults::{JWKS_FETCH_TIMEOUT_SECS, JWKS_MAX_BYTES, UPSTREAM_MAX_HEADER_BYTES};
use crate::config::{JwksConfig, KeyAlg};

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("reading ca_file {path}")]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("adding a root certificate")]
    Root(#[source] rustls::Error),
    #[error("TLS client configuration")]
    Tls(#[source] rustls::Error),
    #[error("the JWKS URL has no host")]
    NoHost,
    #[error("connecting to the JWKS host")]
    Connect(#[source] std::io::Error),
    #[error("HTTP exchange with the JWKS host")]
    Http(#[source] hyper::Error),
    #[error("building the JWKS request")]
    Request(#[source] http::Error),
    #[error("the JWKS host answered {0}")]
    Status(http::StatusCode),
    #[error("reading the JWKS body (at most {JWKS_MAX_BYTES} bytes)")]
    Body,
    #[error("the JWKS answer's header block is over {UPSTREAM_MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("the JWKS document is not JSON with a `keys` array")]
    Parse(#[source] serde_json::Error),
    #[error("the JWKS fetch timed out")]
    Timeout,
}

pub struct Jwks {
    url: http::Uri,
    tls: TlsConnector,
    interval: Duration,
    keys: ArcSwap<HashMap<String, Arc<VerifyKey>>>,
    /// When the last refresh for an unknown kid started; held across the fetch so concurrent
    /// requests wait for one fetch instead of starting their own.
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(serde::Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

impl Jwks {
    pub fn new(config: &JwksConfig) -> Result<Jwks, JwksError> {
        let mut roots = rustls::RootCertStore::empty();
        match &config.ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|source| JwksError::CaFile {
                        path: path.clone(),
                        source,
                    })?;
                for cert in certs {
                    roots.add(cert).map_err(JwksError::Root)?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(JwksError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Jwks {
            url: config.url.clone(),
            tls: TlsConnector::from(Arc::new(tls)),
            interval: config.refresh_min_interval,
            keys: ArcSwap::from_pointee(HashMap::new()),
            last_refresh: tokio::sync::Mutex::new(None),
        })
    }

    pub fn get(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.keys.load().get(kid).cloned()
    }

    pub async fn initial_load(&self) {
        match self.fetch().await {
            Ok(n) => tracing::info!(keys = n, "JWKS loaded"),
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::ErrorChain(&e), "JWKS fetch failed")
            }
        }
    }

    /// Refresh because a token named an unknown kid, unless a refresh started less than the
    /// interval ago. Returns whether a refresh ran and succeeded (then the caller looks again).
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.interval) {
            return false;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(n) => {
                tracing::info!(keys = n, "JWKS refreshed for an unknown kid");
                true
            }
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::ErrorChain(&e), "JWKS refresh failed");
                false
            }
        }
    }

    /// Fetch and swap in the key set; returns how many keys it holds.
    async fn fetch(&self) -> Result<usize, JwksError> {
        let body = tokio::time::timeout(
            Duration::from_secs(JWKS_FETCH_TIMEOUT_SECS),
            self.get_document(),
        )
        .await
        .map_err(|_| JwksError::Timeout)??;
        let set: RawSet = serde_json::from_slice(&body).map_err(JwksError::Parse)?;
        let mut keys = HashMap::new();
        for value in set.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let Some(alg) = accepted_alg(&jwk) else {
                continue;
            };
            let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            keys.insert(kid, Arc::new(VerifyKey::new(alg, decoding, false)));
        }
        let n = keys.len();
        self.keys.store(Arc::new(keys));
        Ok(n)
    }

    async fn get_document(&self) -> Result<Bytes, JwksError> {
        let host = self.url.host().ok_or(JwksError::NoHost)?;
        let port = self.url.port_u16().unwrap_or(443);
        let host_for_tls = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host_for_tls.to_owned()).map_err(|_| JwksError::NoHost)?;
        let tcp = TcpStream::connect((host_for_tls, port))
            .await
            .map_err(JwksError::Connect)?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(JwksError::Connect)?;
        // hyper's read buffer bounds the memory a response head takes (its default is about
        // 400 KiB); the header block's own size is checked below.
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(UPSTREAM_MAX_HEADER_BYTES)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(JwksError::Http)?;
        let conn = tokio::spawn(conn);
        let path = self.url.path_and_query().map_or("/", |p| p.as_str());
        let authority = self.url.authority().map_or(host, |a| a.as_str());
        let req = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(JwksError::Request)?;
        let resp = sender.send_request(req).await.map_err(JwksError::Http)?;
        if resp.status() != http::StatusCode::OK {
            conn.abort();
            return Err(JwksError::Status(resp.status()));
        }
        let header_bytes = resp.headers().iter().fold(0usize, |sum, (name, value)| {
            sum.saturating_add(name.as_str().len())
                .saturating_add(value.len())
        });
        if header_bytes > UPSTREAM_MAX_HEADER_BYTES {
            conn.abort();
            return Err(JwksError::HeadersTooLarge);
        }
        // The whole fetch runs under the JWKS timeout; this bounds only the size.
        let body = crate::web::body::read_bounded(resp.into_body(), JWKS_MAX_BYTES, None)
            .await
            .map_err(|_| JwksError::Body)?;
        conn.abort();
        Ok(body)
    }
}

/// EdDSA over Ed25519 and ES256 over P-256 only; a declared `alg` must agree with the key.
fn accepted_alg(jwk: &Jwk) -> Option<KeyAlg> {
    let by_key = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => KeyAlg::EdDsa,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => KeyAlg::Es256,
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_key),
        Some(KeyAlgorithm::EdDSA) if by_key == KeyAlg::EdDsa => Some(by_key),
        Some(KeyAlgorithm::ES256) if by_key == KeyAlg::Es256 => Some(by_key),
        Some(_) => None,
    }
}
