//! `[audit]` and `[cors]` validation (a child of `validate/mod.rs`, so it shares the [`Checker`]).

use toml::Spanned;

use super::super::defaults as d;
use super::super::file::{RawAudit, RawCors};
use super::super::{AuditConfig, AuditDestination, CorsConfig};
use super::Checker;
use std::time::Duration;

impl Checker<'_> {
    pub(super) fn audit(&mut self, raw: Option<&Spanned<RawAudit>>) -> Option<AuditConfig> {
        let Some(raw) = raw else {
            return Some(AuditConfig::default());
        };
        let span = raw.span();
        let raw = raw.get_ref();
        let before = self.errors.len();
        let destination = raw.destination.as_ref().map(|d| (d.get_ref().as_str(), d));
        let is_file = matches!(destination, Some(("file", _)));
        // Keys that only make sense for a file.
        if !is_file {
            let file_only = [
                ("path", raw.path.as_ref().map(Spanned::span)),
                ("max_bytes", raw.max_bytes.as_ref().map(Spanned::span)),
                ("keep", raw.keep.as_ref().map(Spanned::span)),
            ];
            for (key, key_span) in file_only {
                if let Some(key_span) = key_span {
                    self.push(
                        key_span,
                        format!("audit.{key}"),
                        "is used only with `destination = \"file\"`; set that, or remove this key",
                    );
                }
            }
        }
        let config = match destination {
            None | Some(("stdout", _)) => AuditConfig {
                destination: AuditDestination::Stdout,
            },
            Some(("off", _)) => AuditConfig {
                destination: AuditDestination::Off,
            },
            Some(("file", _)) => {
                let path = match &raw.path {
                    Some(path) => self.audit_path(path),
                    None => {
                        self.push(
                            span,
                            "audit.path",
                            "required with `destination = \"file\"`; add e.g. \
                             `path = \"/var/log/bucketgate/audit.log\"`",
                        );
                        None
                    }
                };
                let max_bytes = self.bounded(
                    &raw.max_bytes,
                    "audit.max_bytes",
                    d::AUDIT_MAX_BYTES,
                    d::AUDIT_MAX_BYTES_MIN,
                    d::AUDIT_MAX_BYTES_MAX,
                );
                let keep =
                    self.bounded(&raw.keep, "audit.keep", d::AUDIT_KEEP, 0, d::AUDIT_KEEP_MAX);
                AuditConfig {
                    destination: AuditDestination::File {
                        path: path?,
                        max_bytes,
                        keep,
                    },
                }
            }
            Some((other, raw_destination)) => {
                self.push(
                    raw_destination.span(),
                    "audit.destination",
                    format!(
                        "`{other}` is not a destination; write \"stdout\", \"file\" (with `path`) \
                         or \"off\""
                    ),
                );
                return None;
            }
        };
        (self.errors.len() == before).then_some(config)
    }

    /// The audit file: its directory must exist (the file itself is created at start).
    fn audit_path(&mut self, raw: &Spanned<String>) -> Option<std::path::PathBuf> {
        let path = self.path(raw, "audit.path")?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        if path.is_dir() {
            self.push(
                raw.span(),
                "audit.path",
                format!(
                    "`{}` is a directory; name a file in it, e.g. \"audit.log\"",
                    path.display()
                ),
            );
            return None;
        }
        if !dir.is_dir() {
            self.push(
                raw.span(),
                "audit.path",
                format!(
                    "directory `{}` does not exist; create it or fix the path (relative paths are \
                     resolved from the config file's directory)",
                    dir.display()
                ),
            );
            return None;
        }
        Some(path)
    }

    pub(super) fn cors(&mut self, raw: Option<&Spanned<RawCors>>) -> Option<CorsConfig> {
        let Some(raw) = raw else {
            return Some(CorsConfig::default());
        };
        let raw = raw.get_ref();
        let before = self.errors.len();
        let mut allowed_origins: Vec<String> = Vec::new();
        for origin in raw.allowed_origins.iter().flat_map(|o| o.get_ref()) {
            match origin_problem(origin.get_ref()) {
                Some(problem) => self.push(
                    origin.span(),
                    "cors.allowed_origins",
                    format!(
                        "`{}` {problem}; write an origin exactly as a browser sends it: \
                         scheme://host[:port] in lowercase, e.g. \"https://label.example.com\"",
                        origin.get_ref()
                    ),
                ),
                None if allowed_origins.contains(origin.get_ref()) => self.push(
                    origin.span(),
                    "cors.allowed_origins",
                    format!("`{}` is listed twice; remove one", origin.get_ref()),
                ),
                None => allowed_origins.push(origin.get_ref().clone()),
            }
        }
        let max_age = self.bounded(
            &raw.max_age_secs,
            "cors.max_age_secs",
            d::CORS_MAX_AGE_SECS,
            1,
            d::CORS_MAX_AGE_SECS_MAX,
        );
        (self.errors.len() == before).then(|| CorsConfig {
            allowed_origins,
            max_age: Duration::from_secs(max_age),
            any_origin_for_token_requests: raw
                .any_origin_for_token_requests
                .as_ref()
                .is_some_and(|v| *v.get_ref()),
        })
    }
}

/// Why `origin` is not a serialized origin (`scheme://host[:port]`) that a browser could send.
fn origin_problem(origin: &str) -> Option<&'static str> {
    if origin == "*" || origin.contains('*') {
        return Some("is a wildcard, which cannot be used with credentials");
    }
    if origin == "null" {
        return Some("is the opaque origin `null`, which any sandboxed page can send");
    }
    let (scheme, rest) = match origin.split_once("://") {
        Some(parts) => parts,
        None => return Some("is not an origin (no scheme://)"),
    };
    let default_port = match scheme {
        "https" => "443",
        "http" => "80",
        _ => return Some("does not use the http or https scheme (lowercase)"),
    };
    if rest.contains(['/', '?', '#']) {
        return Some("has a path, query or trailing slash; an origin has none");
    }
    if rest.contains('@') {
        return Some("has user info; an origin has none");
    }
    if rest.chars().any(|c| c.is_ascii_uppercase()) {
        return Some("has uppercase letters; browsers send the host in lowercase");
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, tail)) => {
                if addr.parse::<std::net::Ipv6Addr>().is_err() {
                    return Some("has an invalid IPv6 address");
                }
                match tail {
                    "" => (addr, None),
                    t => match t.strip_prefix(':') {
                        Some(p) => (addr, Some(p)),
                        None => return Some("has text after the IPv6 address"),
                    },
                }
            }
            None => return Some("has an unclosed `[`"),
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Some("has no host");
    }
    let host_ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':');
    if !host_ok {
        return Some("has characters that cannot appear in a host name (use punycode)");
    }
    if let Some(port) = port {
        if port == default_port {
            return Some("names the scheme's default port, which browsers omit; remove it");
        }
        if !matches!(port.parse::<u16>(), Ok(p) if p != 0) || port.starts_with('0') {
            return Some("has an invalid port");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::origin_problem;

    #[test]
    fn origins_are_exact_scheme_host_port() {
        for ok in [
            "https://label.example.com",
            "http://127.0.0.1:3000",
            "https://[::1]:8443",
            "https://xn--bcher-kva.example",
        ] {
            assert_eq!(origin_problem(ok), None, "{ok}");
        }
        for bad in [
            "*",
            "https://*.example.com",
            "null",
            "label.example.com",
            "ftp://example.com",
            "https://example.com/",
            "https://example.com/app",
            "https://user@example.com",
            "https://Example.com",
            "https://example.com:443",
            "http://example.com:80",
            "https://example.com:0",
            "https://example.com:99999",
            "https://",
            "https://exa mple.com",
            "https://[::1",
        ] {
            assert!(origin_problem(bad).is_some(), "{bad}");
        }
    }
}
