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
//!
//! This file is the framework: the entry points ([`parse`], [`load`], [`tls_named`]), the
//! syntax/shape phase, and the [`Checker`] that collects errors with the checks every section
//! shares (integer ranges, paths, secret references). Each section is a child module adding its
//! methods to the `Checker`: `listener` (`[listener]`, `[admin]`), `limits` (`[limits]`,
//! `[rate_limits]`), `network`, `sources`, `sts`, `identity` (`[identity]`, `[roles]`,
//! `[projects]`), `saml`, `audit_cors`, `cache` and `redis`.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::file::RawConfig;
use super::{Config, Secret, TlsConfig};

mod audit_cors;
mod cache;
mod identity;
mod images;
mod limits;
mod listener;
mod network;
mod redis;
mod saml;
mod sources;
mod sts;
mod video;

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
        let cache = self.cache(raw.cache.as_ref(), raw.sources.as_ref());
        let redis = self.redis(raw.redis.as_ref(), raw.saml.is_some());
        let images = self.images(raw.images.as_ref());
        let video = self.video(raw.video.as_ref());
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
            cache: cache?,
            redis: redis?,
            images: images?,
            video: video?,
        })
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
