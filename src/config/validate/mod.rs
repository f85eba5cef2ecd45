//! Validation: the raw file structs (`file.rs`) become the typed [`Config`] of `mod.rs`.
//!
//! Two phases. TOML syntax and shape errors (a misspelt key, a string where a number belongs)
//! stop at the first one, because the parser cannot go on after it; that one error is reported
//! with its position and dotted key. Everything after that (required keys, ranges, addresses,
//! names, paths, secrets) is checked in a single pass that collects every error, so a file can be
//! fixed in one go.
//!
//! Relative paths (fs roots, TLS files, `file:` secrets) are resolved from the directory of the
//! config file, so a config behaves the same whatever the working directory of the process.
//! Secrets are resolved here, at load, and never appear in an error message.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::defaults as d;
use super::file::{RawAdmin, RawConfig, RawCredentials, RawLimits, RawListener, RawSource};
use super::file::{RawCidrList, RawNetwork, RawRateLimits};
use super::{
    AdminConfig, Config, FsSource, HstsConfig, Limits, ListenerConfig, NetworkConfig, RateLimits,
    S3Credentials, S3Source, Secret, SourceConfig, SourceLists, TlsConfig,
};

mod audit_cors;
mod identity;
mod saml;
mod sts;

/// One mistake in a config file, printed as `file:line:col: key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: String,
    pub line: usize,
    pub col: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.origin, self.line, self.col, self.key, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// Every mistake found in one config file, in file order. Never empty.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Key shown for TOML syntax errors whose position is not inside any key.
const SYNTAX_KEY: &str = "(syntax)";
/// Key shown when the file itself cannot be read.
const FILE_KEY: &str = "(file)";

pub(super) fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let base_dir = Path::new(origin).parent().unwrap_or(Path::new(""));
    parse_in(text, origin, base_dir)
}

pub(super) fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            origin: origin.clone(),
            line: 1,
            col: 1,
            key: FILE_KEY.to_owned(),
            message: format!(
                "cannot read the config file: {e}; check the path and the file's permissions"
            ),
        }])
    })?;
    parse_in(&text, &origin, path.parent().unwrap_or(Path::new("")))
}

/// The TLS settings the file at `path` names, read from its `[listener]` alone: `None` if the
/// file cannot be read or parsed, or names no usable combination. The file watcher watches these
/// files even when the config as a whole is refused (a certificate that is missing or broken
/// now may be fixed later without touching the config). Nothing is checked on disk.
pub(super) fn tls_named(path: &Path) -> Option<TlsConfig> {
    let text = std::fs::read_to_string(path).ok()?;
    let raw = read_raw(&text).ok()?;
    let listener = raw.listener?.into_inner();
    let base_dir = path.parent().unwrap_or(Path::new(""));
    let resolve = |raw: &Spanned<String>| {
        let raw = raw.get_ref();
        (!raw.is_empty()).then(|| base_dir.join(raw))
    };
    match (
        &listener.tls_cert,
        &listener.tls_key,
        &listener.dev_certificate_dir,
    ) {
        (Some(cert), Some(key), None) => Some(TlsConfig::Files {
            cert: resolve(cert)?,
            key: resolve(key)?,
        }),
        (None, None, Some(dir)) => Some(TlsConfig::Development { dir: resolve(dir)? }),
        _ => None,
    }
}

fn parse_in(text: &str, origin: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let mut checker = Checker {
        text,
        origin,
        base_dir,
        errors: Vec::new(),
    };
    let raw = match read_raw(text) {
        Ok(raw) => raw,
        Err(shape) => {
            checker.push(shape.span, shape.key, shape.message);
            return Err(ConfigErrors(checker.errors));
        }
    };
    let config = checker.config(&raw);
    let mut errors = checker.errors;
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => {
            if errors.is_empty() {
                // Every `None` above is paired with a pushed error; this is a guard, not a path.
                errors.push(ConfigError {
                    origin: origin.to_owned(),
                    line: 1,
                    col: 1,
                    key: FILE_KEY.to_owned(),
                    message: "the configuration is incomplete; compare it with config.toml.example"
                        .to_owned(),
                });
            }
            errors.sort_by_key(|e| (e.line, e.col));
            Err(ConfigErrors(errors))
        }
    }
}

/// A syntax or shape error from the TOML parser, with the dotted key it points into.
struct ShapeError {
    span: Range<usize>,
    key: String,
    message: String,
}

/// TOML text -> raw structs, or the first syntax/shape error.
fn read_raw(text: &str) -> Result<RawConfig, ShapeError> {
    // The recovering parser still builds a table around a syntax error, which is enough to name
    // the key the error sits in.
    let (table, syntax_errors) = DeTable::parse_recoverable(text);
    if let Some(err) = syntax_errors.first() {
        let span = err.span().unwrap_or(0..0);
        return Err(ShapeError {
            key: key_path_at(table.get_ref(), span.start).unwrap_or_else(|| SYNTAX_KEY.to_owned()),
            message: explain_syntax_error(err.message()),
            span,
        });
    }
    toml::from_str::<RawConfig>(text).map_err(|err| {
        let span = err.span().unwrap_or(0..0);
        ShapeError {
            key: key_path_at(table.get_ref(), span.start).unwrap_or_else(|| SYNTAX_KEY.to_owned()),
            message: explain_shape_error(err.message()),
            span,
        }
    })
}

/// Adds the fix to the TOML parser's description of a syntax error.
fn explain_syntax_error(message: &str) -> String {
    if message.starts_with("duplicate key") {
        format!("{message}; each key may be set once per table, remove one of the two")
    } else {
        format!(
            "{message}; fix the TOML syntax (strings are written in double quotes, tables as \
             [name]; see config.toml.example)"
        )
    }
}

/// Adds the fix to serde's description of a shape error.
fn explain_shape_error(message: &str) -> String {
    let message = message.replace("expected i64", "expected an integer");
    if message.starts_with("unknown field") {
        format!("{message}; remove the key or correct its spelling")
    } else if message.starts_with("invalid type") || message.starts_with("invalid value") {
        format!("{message}; write a value of the expected type (see config.toml.example)")
    } else {
        message
    }
}

/// The dotted key whose name or value contains byte `offset`, e.g. `sources.photos.bucket`.
fn key_path_at(table: &DeTable<'_>, offset: usize) -> Option<String> {
    let mut path = Vec::new();
    find_in_table(table, offset, &mut path).then(|| dotted(&path))
}

fn find_in_table<'a>(table: &'a DeTable<'_>, offset: usize, path: &mut Vec<&'a str>) -> bool {
    for (key, value) in table {
        path.push(key.get_ref().as_ref());
        if span_contains(&key.span(), offset) {
            return true;
        }
        let found_inside = match value.get_ref() {
            DeValue::Table(inner) => find_in_table(inner, offset, path),
            DeValue::Array(items) => items.into_iter().any(|item| match item.get_ref() {
                DeValue::Table(inner) => find_in_table(inner, offset, path),
                _ => span_contains(&item.span(), offset),
            }),
            _ => false,
        };
        // A header table's own span is its `[header]`; a scalar's is the value itself.
        if found_inside || span_contains(&value.span(), offset) {
            return true;
        }
        path.pop();
    }
    false
}

fn span_contains(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

/// Joins key segments with `.`, quoting any that is not a bare TOML key.
fn dotted<S: AsRef<str>>(segments: &[S]) -> String {
    let quoted: Vec<String> = segments
        .iter()
        .map(|s| {
            let s = s.as_ref();
            let bare = !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if bare { s.to_owned() } else { format!("{s:?}") }
        })
        .collect();
    quoted.join(".")
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// Collects every semantic error while building the typed config.
struct Checker<'a> {
    text: &'a str,
    origin: &'a str,
    base_dir: &'a Path,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn push(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let (line, col) = line_col(self.text, span.start);
        self.errors.push(ConfigError {
            origin: self.origin.to_owned(),
            line,
            col,
            key: key.into(),
            message: message.into(),
        });
    }

    /// `None` only if at least one error was pushed.
    fn config(&mut self, raw: &RawConfig) -> Option<Config> {
        let listener = self.listener(raw.listener.as_ref());
        let admin = self.admin(raw.admin.as_ref(), listener.as_ref());
        let limits = self.limits(raw.limits.as_ref().map(|l| l.get_ref()));
        let sources = self.sources(raw.sources.as_ref());
        let network = self.network(raw.network.as_ref(), raw.sources.as_ref());
        let rate_limits = self.rate_limits(raw.rate_limits.as_ref().map(|r| r.get_ref()));
        let audit = self.audit(raw.audit.as_ref());
        let cors = self.cors(raw.cors.as_ref());
        let identity = self.identity(raw.identity.as_ref());
        let roles = self.roles(raw.roles.as_ref());
        let projects = self.projects(raw.projects.as_ref(), sources.as_ref());
        let saml = self.saml(raw.saml.as_ref(), roles.as_ref(), projects.as_ref());
        let sts = self.sts(raw.sts.as_ref());
        if let Some(saml) = &saml {
            self.saml_sources_need_saml(raw.sources.as_ref(), saml.is_some());
        }
        Some(Config {
            listener: listener?,
            admin: admin?,
            limits: limits?,
            sources: sources?,
            network: network?,
            rate_limits: rate_limits?,
            audit: audit?,
            cors: cors?,
            identity: identity?,
            roles: roles?,
            projects: projects?,
            saml: saml?,
            sts: sts?,
        })
    }

    // ---- [network] ----

    /// A missing `[network]` table or `allow` key is valid and denies everything (fail closed).
    fn network(
        &mut self,
        raw: Option<&Spanned<RawNetwork>>,
        raw_sources: Option<&Spanned<BTreeMap<Spanned<String>, Spanned<RawSource>>>>,
    ) -> Option<NetworkConfig> {
        let before = self.errors.len();
        let Some(raw) = raw else {
            return Some(NetworkConfig {
                proxy_protocol_timeout: Duration::from_millis(d::PROXY_PROTOCOL_TIMEOUT_MS),
                ..NetworkConfig::default()
            });
        };
        let raw = raw.get_ref();
        let allow = self.cidrs(raw.allow.as_ref(), "network.allow");
        let deny = self.cidrs(raw.deny.as_ref(), "network.deny");
        let trusted_proxies = self.cidrs(raw.trusted_proxies.as_ref(), "network.trusted_proxies");
        let proxy_protocol = self.cidrs(raw.proxy_protocol.as_ref(), "network.proxy_protocol");
        let timeout_ms = self.limit(
            &raw.proxy_protocol_timeout_ms,
            "proxy_protocol_timeout_ms",
            d::PROXY_PROTOCOL_TIMEOUT_MS,
            1,
            d::PROXY_PROTOCOL_TIMEOUT_MS_MAX,
        );
        // `limit` names its key `limits.NAME`; this one lives in [network].
        if let Some(last) = self.errors.last_mut()
            && last.key == "limits.proxy_protocol_timeout_ms"
        {
            last.key = "network.proxy_protocol_timeout_ms".to_owned();
        }
        let mut sources = BTreeMap::new();
        if let Some(per_source) = &raw.sources {
            for (name, lists) in per_source.get_ref() {
                let key = dotted(&["network", "sources", name.get_ref().as_str()]);
                let known = raw_sources
                    .is_some_and(|s| s.get_ref().keys().any(|k| k.get_ref() == name.get_ref()));
                if !known {
                    self.push(
                        name.span(),
                        key.clone(),
                        format!(
                            "there is no source named `{}`; per-source lists apply to a                              configured [sources.NAME], fix the name or add the source",
                            name.get_ref()
                        ),
                    );
                    continue;
                }
                let lists = lists.get_ref();
                let allow = lists
                    .allow
                    .as_ref()
                    .map(|a| self.cidrs(Some(a), &format!("{key}.allow")));
                let deny = self.cidrs(lists.deny.as_ref(), &format!("{key}.deny"));
                sources.insert(name.get_ref().clone(), SourceLists { allow, deny });
            }
        }
        (self.errors.len() == before).then(|| NetworkConfig {
            allow,
            deny,
            trusted_proxies,
            proxy_protocol,
            proxy_protocol_timeout: Duration::from_millis(timeout_ms),
            sources,
        })
    }

    /// Every valid CIDR of a list; each invalid one pushes an error at its own position.
    fn cidrs(&mut self, raw: Option<&RawCidrList>, key: &str) -> Vec<ipnet::IpNet> {
        let mut nets = Vec::new();
        for item in raw.map(|l| l.get_ref().as_slice()).unwrap_or_default() {
            match super::network::parse_cidr(item.get_ref()) {
                Ok(net) => nets.push(net),
                Err(e) => self.push(item.span(), key, e.to_string()),
            }
        }
        nets
    }

    // ---- [listener] and [admin] ----

    fn listener(&mut self, raw: Option<&Spanned<RawListener>>) -> Option<ListenerConfig> {
        let Some(raw) = raw else {
            self.push(
                0..0,
                "listener",
                "the [listener] table is missing; add it with `addr = \"127.0.0.1:8443\"` and \
                 either `dev_certificate_dir = \".bucketgate\"` or `tls_cert` + `tls_key`",
            );
            return None;
        };
        let span = raw.span();
        let raw = raw.get_ref();
        let addr = match &raw.addr {
            Some(addr) => self.socket_addr(addr, "listener.addr"),
            None => {
                self.push(
                    span.clone(),
                    "listener.addr",
                    "required key is missing; add `addr = \"127.0.0.1:8443\"` (the IP:PORT the \
                     TLS listener binds)",
                );
                None
            }
        };
        let tls = self.tls(raw, span);
        let hsts = self.hsts(raw);
        Some(ListenerConfig {
            addr: addr?,
            tls: tls?,
            hsts: hsts?,
        })
    }

    /// `hsts_*`: max-age 0 (forget) to two years; `preload` only as the preload list accepts it.
    fn hsts(&mut self, raw: &RawListener) -> Option<HstsConfig> {
        let before = self.errors.len();
        let max_age_secs = self.bounded(
            &raw.hsts_max_age_secs,
            "listener.hsts_max_age_secs",
            d::HSTS_MAX_AGE_SECS,
            0,
            d::HSTS_MAX_AGE_SECS_MAX,
        );
        let include_subdomains = raw
            .hsts_include_subdomains
            .as_ref()
            .is_some_and(|v| *v.get_ref());
        let preload = raw.hsts_preload.as_ref().filter(|v| *v.get_ref());
        if let Some(preload) = preload {
            if !include_subdomains {
                self.push(
                    preload.span(),
                    "listener.hsts_preload",
                    "the HSTS preload list requires includeSubDomains; set \
                     `hsts_include_subdomains = true`, or remove hsts_preload",
                );
            }
            if max_age_secs < d::HSTS_MAX_AGE_SECS {
                self.push(
                    preload.span(),
                    "listener.hsts_preload",
                    format!(
                        "the HSTS preload list requires a max-age of at least one year; set \
                         `hsts_max_age_secs` to {} or more, or remove hsts_preload",
                        d::HSTS_MAX_AGE_SECS
                    ),
                );
            }
        }
        (self.errors.len() == before).then_some(HstsConfig {
            max_age: Duration::from_secs(max_age_secs),
            include_subdomains,
            preload: preload.is_some(),
        })
    }

    fn tls(&mut self, raw: &RawListener, listener_span: Range<usize>) -> Option<TlsConfig> {
        match (&raw.tls_cert, &raw.tls_key, &raw.dev_certificate_dir) {
            (Some(cert), Some(key), None) => {
                let cert = self.existing_file(cert, "listener.tls_cert");
                let key = self.existing_file(key, "listener.tls_key");
                Some(TlsConfig::Files {
                    cert: cert?,
                    key: key?,
                })
            }
            (None, None, Some(dir)) => self
                .path(dir, "listener.dev_certificate_dir")
                .map(|dir| TlsConfig::Development { dir }),
            (Some(_), _, Some(dir)) | (_, Some(_), Some(dir)) => {
                self.push(
                    dir.span(),
                    "listener.dev_certificate_dir",
                    "cannot be combined with tls_cert/tls_key; keep tls_cert + tls_key to serve \
                     your own certificate, or dev_certificate_dir to generate a development \
                     certificate, and remove the other",
                );
                None
            }
            (Some(cert), None, None) => {
                self.push(
                    cert.span(),
                    "listener.tls_cert",
                    "tls_cert is set but tls_key is not; add `tls_key` (the PEM private key of \
                     this certificate), or remove tls_cert and use dev_certificate_dir",
                );
                None
            }
            (None, Some(key), None) => {
                self.push(
                    key.span(),
                    "listener.tls_key",
                    "tls_key is set but tls_cert is not; add `tls_cert` (the PEM certificate \
                     chain for this key), or remove tls_key and use dev_certificate_dir",
                );
                None
            }
            (None, None, None) => {
                self.push(
                    listener_span,
                    "listener",
                    "no TLS certificate is configured; set `tls_cert` and `tls_key` to PEM files, \
                     or `dev_certificate_dir = \".bucketgate\"` to generate a development \
                     certificate",
                );
                None
            }
        }
    }

    fn admin(
        &mut self,
        raw: Option<&Spanned<RawAdmin>>,
        listener: Option<&ListenerConfig>,
    ) -> Option<AdminConfig> {
        // The API keys first, so their errors are reported even when `addr` is wrong too.
        let fields = raw.map(Spanned::get_ref);
        let token = match fields.and_then(|a| a.token.as_ref()) {
            Some(token) => self.secret(token, "admin.token").and_then(|t| {
                if t.expose().len() < 16 {
                    self.push(
                        token.span(),
                        "admin.token",
                        "the admin token is shorter than 16 bytes; use a long random value, e.g. \
                         the output of `openssl rand -hex 32`",
                    );
                    None
                } else {
                    Some(Some(t))
                }
            }),
            None => Some(None),
        };
        let state_dir = match fields.and_then(|a| a.state_dir.as_ref()) {
            Some(dir) => self.path(dir, "admin.state_dir"),
            None => Some(self.base_dir.join(d::STATE_DIR)),
        };
        let reload_poll = Duration::from_secs(self.bounded(
            &fields.and_then(|a| a.reload_poll_secs.clone()),
            "admin.reload_poll_secs",
            d::RELOAD_POLL_SECS,
            1,
            d::RELOAD_POLL_SECS_MAX,
        ));
        let raw_addr = raw.and_then(|a| a.get_ref().addr.as_ref());
        let addr = match raw_addr {
            Some(addr) => self.socket_addr(addr, "admin.addr")?,
            None => d::DEFAULT_ADMIN_ADDR,
        };
        if let Some(listener) = listener
            && addrs_conflict(addr, listener.addr)
        {
            match raw_addr {
                Some(raw_addr) => self.push(
                    raw_addr.span(),
                    "admin.addr",
                    format!(
                        "`{addr}` is also the data listener's address; the admin listener needs \
                         its own port (or port 0), e.g. \"127.0.0.1:9090\""
                    ),
                ),
                None => {
                    let span = raw.map_or(0..0, |a| a.span());
                    self.push(
                        span,
                        "admin.addr",
                        format!(
                            "the default admin address `{addr}` is the data listener's address; \
                             set [admin] addr to another port, or move listener.addr"
                        ),
                    );
                }
            }
            return None;
        }
        Some(AdminConfig {
            addr,
            token: token?,
            state_dir: state_dir?,
            reload_poll,
        })
    }

    // ---- [rate_limits] ----

    fn rate_limits(&mut self, raw: Option<&RawRateLimits>) -> Option<RateLimits> {
        let empty = RawRateLimits::default();
        let r = raw.unwrap_or(&empty);
        let before = self.errors.len();
        macro_rules! rate {
            ($key:ident, $default:expr, $max:expr) => {
                self.bounded(
                    &r.$key,
                    concat!("rate_limits.", stringify!($key)),
                    $default,
                    1,
                    $max,
                )
            };
        }
        let limits = RateLimits {
            per_ip_rps: rate!(per_ip_rps, d::PER_IP_RPS, d::RATE_MAX),
            per_ip_burst: rate!(per_ip_burst, d::PER_IP_BURST, d::RATE_MAX),
            per_subject_rps: rate!(per_subject_rps, d::PER_SUBJECT_RPS, d::RATE_MAX),
            per_subject_burst: rate!(per_subject_burst, d::PER_SUBJECT_BURST, d::RATE_MAX),
            max_connections_per_ip: rate!(
                max_connections_per_ip,
                d::MAX_CONNECTIONS_PER_IP,
                d::MAX_CONNECTIONS_PER_IP_MAX
            ),
        };
        (self.errors.len() == before).then_some(limits)
    }

    fn socket_addr(&mut self, raw: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        match raw.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.push(
                    raw.span(),
                    key,
                    format!(
                        "`{}` is not a socket address; write IP:PORT, e.g. \"127.0.0.1:8443\" or \
                         \"[::1]:8443\" (host names are not accepted)",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }

    // ---- [limits] ----

    fn limits(&mut self, raw: Option<&RawLimits>) -> Option<Limits> {
        let empty = RawLimits::default();
        let r = raw.unwrap_or(&empty);
        let before = self.errors.len();
        // limit!(key, default, max): the value of `limits.key` in 1..=max, or the default.
        macro_rules! limit {
            ($key:ident, $default:expr, $max:expr) => {
                self.limit(&r.$key, stringify!($key), $default, 1, $max)
            };
        }
        let secs = Duration::from_secs;
        let limits = Limits {
            tls_handshake_timeout: secs(limit!(
                tls_handshake_timeout_secs,
                d::TLS_HANDSHAKE_TIMEOUT_SECS,
                d::TLS_HANDSHAKE_TIMEOUT_SECS_MAX
            )),
            header_read_timeout: secs(limit!(
                header_read_timeout_secs,
                d::HEADER_READ_TIMEOUT_SECS,
                d::HEADER_READ_TIMEOUT_SECS_MAX
            )),
            idle_timeout: secs(limit!(
                idle_timeout_secs,
                d::IDLE_TIMEOUT_SECS,
                d::IDLE_TIMEOUT_SECS_MAX
            )),
            max_connection_age: secs(limit!(
                max_connection_age_secs,
                d::MAX_CONNECTION_AGE_SECS,
                d::MAX_CONNECTION_AGE_SECS_MAX
            )),
            max_connections: limit!(max_connections, d::MAX_CONNECTIONS, d::MAX_CONNECTIONS_MAX),
            max_headers: limit!(max_headers, d::MAX_HEADERS, d::MAX_HEADERS_MAX),
            // hyper's http/1.1 read buffer cannot be smaller than 8 KiB.
            max_header_bytes: self.limit(
                &r.max_header_bytes,
                "max_header_bytes",
                d::MAX_HEADER_BYTES,
                d::MAX_HEADER_BYTES_MIN,
                d::MAX_HEADER_BYTES_MAX,
            ),
            h2_max_concurrent_streams: limit!(
                h2_max_concurrent_streams,
                d::H2_MAX_CONCURRENT_STREAMS,
                d::H2_MAX_CONCURRENT_STREAMS_MAX
            ),
            h2_max_header_list_bytes: limit!(
                h2_max_header_list_bytes,
                d::H2_MAX_HEADER_LIST_BYTES,
                d::H2_MAX_HEADER_LIST_BYTES_MAX
            ),
            h2_max_pending_reset_streams: limit!(
                h2_max_pending_reset_streams,
                d::H2_MAX_PENDING_RESET_STREAMS,
                d::H2_MAX_PENDING_RESET_STREAMS_MAX
            ),
            h2_max_local_error_reset_streams: limit!(
                h2_max_local_error_reset_streams,
                d::H2_MAX_LOCAL_ERROR_RESET_STREAMS,
                d::H2_MAX_LOCAL_ERROR_RESET_STREAMS_MAX
            ),
            shutdown_grace: secs(limit!(
                shutdown_grace_secs,
                d::SHUTDOWN_GRACE_SECS,
                d::SHUTDOWN_GRACE_SECS_MAX
            )),
            upstream_connect_timeout: Duration::from_millis(limit!(
                upstream_connect_timeout_ms,
                d::UPSTREAM_CONNECT_TIMEOUT_MS,
                d::UPSTREAM_CONNECT_TIMEOUT_MS_MAX
            )),
            upstream_first_byte_timeout: secs(limit!(
                upstream_first_byte_timeout_secs,
                d::UPSTREAM_FIRST_BYTE_TIMEOUT_SECS,
                d::UPSTREAM_FIRST_BYTE_TIMEOUT_SECS_MAX
            )),
            upstream_idle_timeout: secs(limit!(
                upstream_idle_timeout_secs,
                d::UPSTREAM_IDLE_TIMEOUT_SECS,
                d::UPSTREAM_IDLE_TIMEOUT_SECS_MAX
            )),
            // The one limit where 0 makes sense: no retries.
            upstream_max_retries: self.limit(
                &r.upstream_max_retries,
                "upstream_max_retries",
                d::UPSTREAM_MAX_RETRIES,
                0,
                d::UPSTREAM_MAX_RETRIES_MAX,
            ),
        };
        (self.errors.len() == before).then_some(limits)
    }

    /// The value of `limits.<name>` within `min..=max`, or `default` when absent. A value out of
    /// range pushes an error and yields `default`, so that checking goes on to the next key.
    fn limit<T>(
        &mut self,
        raw: &Option<Spanned<i64>>,
        name: &str,
        default: T,
        min: u64,
        max: u64,
    ) -> T
    where
        T: TryFrom<u64> + fmt::Display + Copy,
    {
        self.bounded(raw, &format!("limits.{name}"), default, min, max)
    }

    /// The value of the integer key `key` (dotted) within `min..=max`, or `default` when absent;
    /// out of range pushes an error and yields `default`.
    fn bounded<T>(
        &mut self,
        raw: &Option<Spanned<i64>>,
        key: &str,
        default: T,
        min: u64,
        max: u64,
    ) -> T
    where
        T: TryFrom<u64> + fmt::Display + Copy,
    {
        let Some(raw) = raw else { return default };
        let value = *raw.get_ref();
        let in_range = u64::try_from(value)
            .ok()
            .filter(|v| (min..=max).contains(v));
        if let Some(v) = in_range.and_then(|v| T::try_from(v).ok()) {
            return v;
        }
        let problem = if value == 0 {
            "0 is not allowed".to_owned()
        } else {
            format!("{value} is out of range")
        };
        self.push(
            raw.span(),
            key,
            format!(
                "{problem}; set a value from {min} to {max}, or remove the key to use \
                 the default {default}"
            ),
        );
        default
    }

    // ---- [sources.NAME] ----

    fn sources(
        &mut self,
        raw: Option<&Spanned<BTreeMap<Spanned<String>, Spanned<RawSource>>>>,
    ) -> Option<BTreeMap<String, SourceConfig>> {
        const NONE_HINT: &str = "add at least one, e.g. a table [sources.local] with \
                                 `kind = \"fs\"` and `root = \"./data\"`";
        let Some(raw) = raw else {
            self.push(
                0..0,
                "sources",
                format!("no sources are configured; {NONE_HINT}"),
            );
            return None;
        };
        if raw.get_ref().is_empty() {
            self.push(
                raw.span(),
                "sources",
                format!("no sources are configured; {NONE_HINT}"),
            );
            return None;
        }
        let before = self.errors.len();
        let mut sources = BTreeMap::new();
        for (name, source) in raw.get_ref() {
            let key = dotted(&["sources", name.get_ref().as_str()]);
            if !is_valid_source_name(name.get_ref()) {
                self.push(
                    name.span(),
                    key.clone(),
                    format!(
                        "`{}` is not a valid source name; use 1 to 63 lowercase letters, digits, \
                         `_` or `-`, starting with a letter or a digit (it appears in URLs as \
                         /o/NAME/...)",
                        name.get_ref()
                    ),
                );
            }
            if let Some(source) = self.source(&key, source) {
                sources.insert(name.get_ref().clone(), source);
            }
        }
        (self.errors.len() == before).then_some(sources)
    }

    fn source(&mut self, key: &str, raw: &Spanned<RawSource>) -> Option<SourceConfig> {
        let span = raw.span();
        let raw = raw.get_ref();
        let Some(kind) = &raw.kind else {
            self.push(
                span,
                format!("{key}.kind"),
                "required key is missing; add `kind = \"fs\"` (a local directory) or \
                 `kind = \"s3\"` (an S3 or S3-compatible bucket)",
            );
            return None;
        };
        match kind.get_ref().as_str() {
            "fs" => self.fs_source(key, span, raw),
            "s3" => self.s3_source(key, span, raw),
            other => {
                self.push(
                    kind.span(),
                    format!("{key}.kind"),
                    format!("unknown kind `{other}`; use \"fs\" or \"s3\""),
                );
                None
            }
        }
    }

    fn fs_source(
        &mut self,
        key: &str,
        span: Range<usize>,
        raw: &RawSource,
    ) -> Option<SourceConfig> {
        let s3_only = [
            ("bucket", raw.bucket.as_ref().map(Spanned::span)),
            ("prefix", raw.prefix.as_ref().map(Spanned::span)),
            ("region", raw.region.as_ref().map(Spanned::span)),
            ("endpoint", raw.endpoint.as_ref().map(Spanned::span)),
            ("path_style", raw.path_style.as_ref().map(Spanned::span)),
            ("credentials", raw.credentials.as_ref().map(Spanned::span)),
        ];
        let mut misplaced = false;
        for (field, field_span) in s3_only {
            if let Some(field_span) = field_span {
                misplaced = true;
                self.push(
                    field_span,
                    format!("{key}.{field}"),
                    format!(
                        "`{field}` is only valid for kind = \"s3\"; remove it, or set \
                         kind = \"s3\" if this source is a bucket"
                    ),
                );
            }
        }
        let Some(root) = &raw.root else {
            self.push(
                span,
                format!("{key}.root"),
                "required key is missing for kind = \"fs\"; add `root = \"./data\"` (a \
                 directory; relative paths are resolved from the config file's directory)",
            );
            return None;
        };
        let root = self.existing_dir(root, &format!("{key}.root"));
        if misplaced {
            return None;
        }
        Some(SourceConfig::Fs(FsSource { root: root? }))
    }

    fn s3_source(
        &mut self,
        key: &str,
        span: Range<usize>,
        raw: &RawSource,
    ) -> Option<SourceConfig> {
        let mut ok = true;
        if let Some(root) = &raw.root {
            ok = false;
            self.push(
                root.span(),
                format!("{key}.root"),
                "`root` is only valid for kind = \"fs\"; remove it, or set kind = \"fs\" if this \
                 source is a local directory",
            );
        }

        let bucket = match &raw.bucket {
            None => {
                self.push(
                    span,
                    format!("{key}.bucket"),
                    "required key is missing for kind = \"s3\"; add `bucket = \"my-bucket\"`",
                );
                None
            }
            Some(bucket) => match bucket_name_problem(bucket.get_ref()) {
                None => Some(bucket.get_ref().clone()),
                Some(problem) => {
                    self.push(
                        bucket.span(),
                        format!("{key}.bucket"),
                        format!(
                            "`{}` is not a valid S3 bucket name: it {problem}; use the bucket's \
                             exact name (3 to 63 lowercase letters, digits, `.` or `-`)",
                            bucket.get_ref()
                        ),
                    );
                    None
                }
            },
        };

        let prefix = match &raw.prefix {
            None => Some(String::new()),
            Some(prefix) => match prefix_problem(prefix.get_ref()) {
                None => Some(prefix.get_ref().clone()),
                Some(fix) => {
                    self.push(prefix.span(), format!("{key}.prefix"), fix);
                    None
                }
            },
        };

        let region = match &raw.region {
            None => Some(d::DEFAULT_S3_REGION.to_owned()),
            Some(region) if is_valid_region(region.get_ref()) => Some(region.get_ref().clone()),
            Some(region) => {
                self.push(
                    region.span(),
                    format!("{key}.region"),
                    format!(
                        "`{}` is not a region name; use a region code such as \"us-east-1\" \
                         (letters, digits and `-`), or remove the key for the default \"{}\"",
                        region.get_ref(),
                        d::DEFAULT_S3_REGION
                    ),
                );
                None
            }
        };

        let endpoint = match &raw.endpoint {
            None => Some(None),
            Some(endpoint) => match normalize_endpoint(endpoint.get_ref()) {
                Ok(url) => Some(Some(url)),
                Err(fix) => {
                    self.push(endpoint.span(), format!("{key}.endpoint"), fix);
                    None
                }
            },
        };

        let path_style = raw.path_style.as_ref().is_some_and(|p| *p.get_ref());
        let credentials = self.credentials(key, raw.credentials.as_ref());

        if !ok {
            return None;
        }
        Some(SourceConfig::S3(S3Source {
            bucket: bucket?,
            prefix: prefix?,
            region: region?,
            endpoint: endpoint?,
            path_style,
            credentials: credentials?,
        }))
    }

    fn credentials(
        &mut self,
        source_key: &str,
        raw: Option<&Spanned<RawCredentials>>,
    ) -> Option<S3Credentials> {
        let key = format!("{source_key}.credentials");
        let Some(raw) = raw else {
            return Some(S3Credentials::DefaultChain);
        };
        match raw.get_ref() {
            RawCredentials::Named(name) if name == "default" => Some(S3Credentials::DefaultChain),
            RawCredentials::Named(name) if name == "saml" => Some(S3Credentials::Saml),
            RawCredentials::Named(_) => {
                // The value is not echoed: a string here may well be a pasted secret.
                self.push(
                    raw.span(),
                    key,
                    "unknown credentials value; write `credentials = \"default\"` for the AWS \
                     default chain, `\"saml\"` for each user's SAML session, a table \
                     `{ access_key_id = \"...\", secret_access_key = \"env:NAME\" }` for static \
                     keys, or `{ assume_role = \"arn:...\", external_id = \"...\" }` for a role",
                );
                None
            }
            RawCredentials::Static(st)
                if st.assume_role.is_some()
                    || st.external_id.is_some()
                    || st.session_name.is_some()
                    || st.duration_secs.is_some() =>
            {
                self.assume_role_credentials(&key, raw.span(), st)
            }
            RawCredentials::Static(st) => {
                let access_key_id = match &st.access_key_id {
                    None => {
                        self.push(
                            raw.span(),
                            format!("{key}.access_key_id"),
                            "required key is missing in static credentials; add \
                             `access_key_id = \"AKIA...\"`",
                        );
                        None
                    }
                    Some(id) if id.get_ref().trim().is_empty() => {
                        self.push(
                            id.span(),
                            format!("{key}.access_key_id"),
                            "is empty; set it to the access key id of the credentials",
                        );
                        None
                    }
                    Some(id) => Some(id.get_ref().trim().to_owned()),
                };
                let secret = match &st.secret_access_key {
                    None => {
                        self.push(
                            raw.span(),
                            format!("{key}.secret_access_key"),
                            "required key is missing in static credentials; add \
                             `secret_access_key = \"env:NAME\"` or `\"file:/path/to/secret\"`",
                        );
                        None
                    }
                    Some(secret) => self.secret(secret, &format!("{key}.secret_access_key")),
                };
                Some(S3Credentials::Static {
                    access_key_id: access_key_id?,
                    secret_access_key: secret?,
                })
            }
        }
    }

    /// Resolves an `env:NAME` or `file:PATH` reference. Messages name the variable or the file,
    /// never the value.
    fn secret(&mut self, raw: &Spanned<String>, key: &str) -> Option<Secret> {
        let span = raw.span();
        let reference = match secret_reference(raw.get_ref()) {
            Ok(reference) => reference,
            Err(fix) => {
                self.push(span, key, fix);
                return None;
            }
        };
        let resolved = match reference {
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(value) if value.is_empty() => Err(format!(
                    "environment variable `{name}` is empty; set it to the secret before starting \
                     bucketgate"
                )),
                Ok(value) => Ok(value),
                Err(std::env::VarError::NotPresent) => Err(format!(
                    "environment variable `{name}` is not set; export it before starting \
                     bucketgate, or use \"file:PATH\" to read the secret from a file"
                )),
                Err(std::env::VarError::NotUnicode(_)) => Err(format!(
                    "environment variable `{name}` is not valid UTF-8; set it to the secret as \
                     plain text"
                )),
            },
            SecretRef::File(path) => {
                let path = self.base_dir.join(path);
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        let value = trim_trailing_newline(&text);
                        if value.is_empty() {
                            Err(format!(
                                "secret file `{}` is empty; write the secret into it",
                                path.display()
                            ))
                        } else {
                            Ok(value.to_owned())
                        }
                    }
                    Err(e) => Err(format!(
                        "cannot read secret file `{}`: {e}; check the path (relative paths are \
                         resolved from the config file's directory) and its permissions",
                        path.display()
                    )),
                }
            }
        };
        match resolved {
            Ok(value) => Some(Secret::new(value)),
            Err(message) => {
                self.push(span, key, message);
                None
            }
        }
    }

    // ---- paths ----

    /// A non-empty path, resolved from the config file's directory.
    fn path(&mut self, raw: &Spanned<String>, key: &str) -> Option<PathBuf> {
        if raw.get_ref().is_empty() {
            self.push(raw.span(), key, "is empty; write a path");
            return None;
        }
        Some(self.base_dir.join(raw.get_ref()))
    }

    fn existing_dir(&mut self, raw: &Spanned<String>, key: &str) -> Option<PathBuf> {
        self.existing(raw, key, Entry::Dir)
    }

    fn existing_file(&mut self, raw: &Spanned<String>, key: &str) -> Option<PathBuf> {
        self.existing(raw, key, Entry::File)
    }

    /// A path that must exist at load as a directory or a regular file.
    fn existing(&mut self, raw: &Spanned<String>, key: &str, want: Entry) -> Option<PathBuf> {
        let path = self.path(raw, key)?;
        let (noun, fix) = match want {
            Entry::Dir => ("directory", "create it or fix the path"),
            Entry::File => ("file", "fix the path"),
        };
        let problem = match std::fs::metadata(&path) {
            Ok(meta) if want.matches(&meta) => return Some(path),
            Ok(_) => format!("is not a {noun}"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => "does not exist".to_owned(),
            Err(e) => format!("cannot be accessed ({e})"),
        };
        self.push(
            raw.span(),
            key,
            format!(
                "{noun} `{}` {problem}; {fix} (relative paths are resolved from the config \
                 file's directory)",
                path.display()
            ),
        );
        None
    }
}

/// Two listeners that could not both bind. Port 0 picks a free port, so it never conflicts; an
/// unspecified address (`0.0.0.0`, `[::]`) conflicts with every address on its port.
fn addrs_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// `arn:PARTITION:iam::ACCOUNT:RESOURCE` with a 12-digit account: its partition and resource.
/// Each caller checks the resource it expects (a role, a SAML provider) and the partitions.
fn iam_arn_parts(arn: &str) -> Option<(&str, &str)> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()))
        .then_some((partition, resource))
}

/// `[a-z0-9][a-z0-9_-]{0,62}`: the name appears in URL paths and metric labels.
fn is_valid_source_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let Some(first) = bytes.first() else {
        return false;
    };
    bytes.len() <= 63
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

/// What is wrong with an S3 bucket name (general purpose bucket naming rules), phrased to follow
/// "it ...", or `None` if it is valid.
fn bucket_name_problem(name: &str) -> Option<&'static str> {
    const RESERVED_PREFIXES: [&str; 3] = ["xn--", "sthree-", "amzn-s3-demo-"];
    const RESERVED_SUFFIXES: [&str; 4] = ["-s3alias", "--ol-s3", ".mrap", "--x-s3"];
    let bytes = name.as_bytes();
    if !(3..=63).contains(&bytes.len()) {
        return Some("must be 3 to 63 characters long");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
    {
        return Some("may contain only lowercase letters, digits, `.` and `-`");
    }
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !alnum(bytes.first()) || !alnum(bytes.last()) {
        return Some("must begin and end with a lowercase letter or a digit");
    }
    if name.contains("..") {
        return Some("must not contain two adjacent periods");
    }
    if name.parse::<Ipv4Addr>().is_ok() {
        return Some("must not be formatted as an IP address");
    }
    if RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
        || RESERVED_SUFFIXES.iter().any(|s| name.ends_with(s))
    {
        return Some("uses a prefix or suffix that S3 reserves");
    }
    None
}

/// What is wrong with a key prefix, and how to fix it, or `None` if it is valid.
fn prefix_problem(prefix: &str) -> Option<String> {
    if prefix.starts_with('/') {
        let trimmed = prefix.trim_start_matches('/');
        let suggestion = if trimmed.is_empty() || trimmed.ends_with('/') {
            trimmed.to_owned()
        } else {
            format!("{trimmed}/")
        };
        return Some(format!(
            "must not start with `/` (S3 keys have no leading slash); write \"{suggestion}\""
        ));
    }
    if !prefix.is_empty() && !prefix.ends_with('/') {
        return Some(format!(
            "must end with `/` so that it names a folder; write \"{prefix}/\", or \"\" for the \
             whole bucket"
        ));
    }
    None
}

fn is_valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `http(s)://host[:port]`, with no path, query or user info, as `scheme://authority`; or what
/// is wrong and how to fix it. Messages do not echo the value: user info may hold a password.
fn normalize_endpoint(endpoint: &str) -> Result<String, String> {
    const FORM: &str =
        "write it as http://HOST:PORT or https://HOST, e.g. \"http://127.0.0.1:9000\"";
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| format!("is not a valid URL; {FORM}"))?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => "http",
        Some(s) if s.eq_ignore_ascii_case("https") => "https",
        _ => return Err(format!("must start with http:// or https://; {FORM}")),
    };
    let Some(authority) = uri.authority() else {
        return Err(format!("has no host; {FORM}"));
    };
    if authority.as_str().contains('@') {
        return Err(
            "must not contain user info (`user:password@`); remove it and give keys with \
                    the `credentials` key"
                .to_owned(),
        );
    }
    if authority.host().is_empty() {
        return Err(format!("has no host; {FORM}"));
    }
    if !matches!(uri.path(), "" | "/") {
        return Err(
            "must not have a path; give only scheme, host and port, and put a key \
                    prefix in `prefix`"
                .to_owned(),
        );
    }
    if uri.query().is_some() {
        return Err(format!("must not have a query string; {FORM}"));
    }
    Ok(format!("{scheme}://{authority}"))
}

/// Where a secret comes from.
#[derive(Debug, PartialEq, Eq)]
enum SecretRef<'a> {
    Env(&'a str),
    File(&'a str),
}

/// Parses `env:NAME` / `file:PATH`; anything else is refused without being echoed.
fn secret_reference(value: &str) -> Result<SecretRef<'_>, &'static str> {
    if let Some(name) = value.strip_prefix("env:") {
        let mut bytes = name.bytes();
        let valid = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        return if valid {
            Ok(SecretRef::Env(name))
        } else {
            Err(
                "`env:` must be followed by an environment variable name (letters, digits and \
                 `_`, not starting with a digit), e.g. \"env:BUCKETGATE_S3_SECRET\"",
            )
        };
    }
    if let Some(path) = value.strip_prefix("file:") {
        return if path.is_empty() {
            Err("`file:` must be followed by a path, e.g. \"file:/run/secrets/s3_secret\"")
        } else {
            Ok(SecretRef::File(path))
        };
    }
    Err(
        "a literal secret is not allowed in the config file; put it in an environment variable \
         and write \"env:NAME\", or in a file and write \"file:/path/to/secret\"",
    )
}

/// Secret files usually end with the newline an editor or `echo` added; it is not part of the
/// secret.
fn trim_trailing_newline(text: &str) -> &str {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.strip_suffix('\r').unwrap_or(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap; src/ may not
mod tests {
    use super::*;

    #[test]
    fn line_col_is_one_based_and_counts_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (1, 5));
        assert_eq!(line_col(text, 6), (2, 1));
        // `"` after `bé = ` is byte 12 but character 6 of line 2.
        assert_eq!(line_col(text, 12), (2, 6));
        assert_eq!(line_col(text, 10_000), (3, 1));
    }

    #[test]
    fn line_col_inside_a_multibyte_character_rounds_down() {
        assert_eq!(line_col("é", 1), (1, 1));
    }

    #[test]
    fn source_names_follow_the_documented_pattern() {
        for ok in ["a", "photos", "0", "a-b_c", &"a".repeat(63)] {
            assert!(is_valid_source_name(ok), "{ok}");
        }
        for bad in ["", "Photos", "-a", "_a", "a.b", "a b", "é", &"a".repeat(64)] {
            assert!(!is_valid_source_name(bad), "{bad}");
        }
    }

    #[test]
    fn bucket_names_follow_s3_rules() {
        for ok in ["abc", "my-bucket", "my.bucket.1", &"a".repeat(63)] {
            assert_eq!(bucket_name_problem(ok), None, "{ok}");
        }
        for bad in [
            "ab",
            &"a".repeat(64),
            "My-Bucket",
            "my_bucket",
            "-abc",
            "abc.",
            "a..b",
            "192.168.1.1",
            "xn--abc",
            "abc-s3alias",
        ] {
            assert!(bucket_name_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn prefix_is_empty_or_a_folder_without_leading_slash() {
        assert_eq!(prefix_problem(""), None);
        assert_eq!(prefix_problem("photos/"), None);
        assert_eq!(prefix_problem("a/b/"), None);
        assert!(prefix_problem("photos").is_some_and(|m| m.contains("\"photos/\"")));
        assert!(prefix_problem("/photos").is_some_and(|m| m.contains("\"photos/\"")));
        assert!(prefix_problem("/").is_some());
    }

    #[test]
    fn endpoint_is_scheme_and_authority_only() {
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:9000").as_deref(),
            Ok("http://127.0.0.1:9000")
        );
        assert_eq!(
            normalize_endpoint("HTTPS://s3.example.com/").as_deref(),
            Ok("https://s3.example.com")
        );
        for bad in [
            "127.0.0.1:9000",
            "ftp://host",
            "http://host/bucket",
            "http://host?x=1",
            "http://user:pw@host",
            "http://:9000",
            "not a url",
        ] {
            assert!(normalize_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoint_errors_never_echo_user_info() {
        let message = normalize_endpoint("http://user:hunter2@host").unwrap_err();
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn secret_references_are_env_or_file() {
        assert_eq!(
            secret_reference("env:S3_SECRET"),
            Ok(SecretRef::Env("S3_SECRET"))
        );
        assert_eq!(
            secret_reference("file:/run/s"),
            Ok(SecretRef::File("/run/s"))
        );
        assert!(secret_reference("env:").is_err());
        assert!(secret_reference("env:1X").is_err());
        assert!(secret_reference("file:").is_err());
        let literal = secret_reference("wJalrXUtnFEMI/K7MDENG").unwrap_err();
        assert!(!literal.contains("wJalr"));
    }

    #[test]
    fn secret_file_loses_only_its_trailing_newline() {
        assert_eq!(trim_trailing_newline("s3cr3t\n"), "s3cr3t");
        assert_eq!(trim_trailing_newline("s3cr3t\r\n"), "s3cr3t");
        assert_eq!(trim_trailing_newline("s3cr3t"), "s3cr3t");
        assert_eq!(trim_trailing_newline(" s3cr3t \n"), " s3cr3t ");
    }

    #[test]
    fn listeners_conflict_on_same_port_unless_port_zero() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(addrs_conflict(a("127.0.0.1:9090"), a("127.0.0.1:9090")));
        assert!(addrs_conflict(a("0.0.0.0:9090"), a("127.0.0.1:9090")));
        assert!(!addrs_conflict(a("127.0.0.1:0"), a("127.0.0.1:0")));
        assert!(!addrs_conflict(a("127.0.0.1:9090"), a("127.0.0.1:8443")));
        assert!(!addrs_conflict(a("127.0.0.1:9090"), a("127.0.0.2:9090")));
    }

    #[test]
    fn key_path_names_the_innermost_key() {
        let text = "[listener]\naddr = 1\n[sources.\"My Src\"]\nkind = \"fs\"\n";
        let table = DeTable::parse(text).unwrap();
        let at = |needle: &str| text.find(needle).unwrap();
        assert_eq!(
            key_path_at(table.get_ref(), at("1")).as_deref(),
            Some("listener.addr")
        );
        assert_eq!(
            key_path_at(table.get_ref(), at("addr")).as_deref(),
            Some("listener.addr")
        );
        assert_eq!(
            key_path_at(table.get_ref(), at("\"fs\"")).as_deref(),
            Some("sources.\"My Src\".kind")
        );
    }

    #[test]
    fn shape_errors_say_how_to_fix() {
        let m = explain_shape_error("invalid type: string \"5\", expected i64");
        assert!(
            m.contains("expected an integer") && m.contains("write a value"),
            "{m}"
        );
        let m = explain_shape_error("unknown field `adr`, expected `addr`");
        assert!(m.ends_with("correct its spelling"), "{m}");
    }
}

/// What kind of file system entry a configured path must name.
#[derive(Clone, Copy)]
enum Entry {
    Dir,
    File,
}

impl Entry {
    fn matches(self, meta: &std::fs::Metadata) -> bool {
        match self {
            Entry::Dir => meta.is_dir(),
            Entry::File => meta.is_file(),
        }
    }
}
