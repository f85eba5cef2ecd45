//! `[listener]` (address, TLS files or development certificate, HSTS) and `[admin]` (its
//! address must not collide with the data listener) — a child of `validate/mod.rs`, so it shares
//! the [`Checker`].

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::super::defaults as d;
use super::super::file::{RawAdmin, RawListener};
use super::super::{AdminConfig, HstsConfig, ListenerConfig, TlsConfig};
use super::Checker;

impl Checker<'_> {
    pub(super) fn listener(
        &mut self,
        raw: Option<&Spanned<RawListener>>,
    ) -> Option<ListenerConfig> {
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
    pub(super) fn hsts(&mut self, raw: &RawListener) -> Option<HstsConfig> {
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

    pub(super) fn tls(
        &mut self,
        raw: &RawListener,
        listener_span: Range<usize>,
    ) -> Option<TlsConfig> {
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

    pub(super) fn admin(
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

    pub(super) fn socket_addr(&mut self, raw: &Spanned<String>, key: &str) -> Option<SocketAddr> {
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
}

/// Two listeners that could not both bind. Port 0 picks a free port, so it never conflicts; an
/// unspecified address (`0.0.0.0`, `[::]`) conflicts with every address on its port.
pub(super) fn addrs_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap; src/ may not
mod tests {
    use super::*;

    #[test]
    fn listeners_conflict_on_same_port_unless_port_zero() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(addrs_conflict(a("127.0.0.1:9090"), a("127.0.0.1:9090")));
        assert!(addrs_conflict(a("0.0.0.0:9090"), a("127.0.0.1:9090")));
        assert!(!addrs_conflict(a("127.0.0.1:0"), a("127.0.0.1:0")));
        assert!(!addrs_conflict(a("127.0.0.1:9090"), a("127.0.0.1:8443")));
        assert!(!addrs_conflict(a("127.0.0.1:9090"), a("127.0.0.2:9090")));
    }
}
