//! Minting tokens and keys for the `sign`, `token` and `keygen` commands.
//!
//! A token is a standard JWT (header `{alg, kid, typ: "JWT"}`) with the claims the identity stage
//! reads: `sub`, `aud`, `iss`, `exp`, `iat`, `jti`, `scope`, `role`, `project`, `cip`, `rep`, and
//! for a use window `idle`, `max`, `bind` (`crate::identity::use_window`). Any JWT library can
//! mint the same tokens (see the README); this module is the gateway's own.
//!
//! This module never runs inside `serve`: it reads signing keys (secrets and private keys) that
//! the gateway itself does not need.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;

use crate::config::{Config, KeyAlg, KeyMaterial, Secret};

/// Longest lifetime `sign`/`token` accept without `--ttl none`.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Base URL printed without `--config` (the embedded default's listener).
pub const DEFAULT_BASE_URL: &str = "https://127.0.0.1:8443";
/// `sub` when none is given.
pub const DEFAULT_SUBJECT: &str = "bucketgate-cli";
/// `role` when none is given: the seed role with the fewest rights.
pub const DEFAULT_ROLE: &str = "annotator";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("`{0}` is not a duration; write a number and a unit: 30s, 15m, 1h, 7d (or `none`)")]
    BadDuration(String),
    #[error("a lifetime of {0} is longer than 7 days; use a shorter --ttl")]
    TtlTooLong(String),
    #[error(
        "key `{0}` does not allow non-expiring tokens; give a --ttl, or set \
         allow_non_expiring = true on the key"
    )]
    NonExpiringRefused(String),
    #[error("a lifetime (--ttl, --idle, --max) must be positive")]
    ZeroTtl,
    #[error("`{0}` is not a CIDR; write e.g. 203.0.113.7/32 or 2001:db8::/48")]
    BadCidr(String),
    #[error("`{0}` is not a representation; write `original` or `derived`")]
    BadRepresentation(String),
    #[error("--prefix must be empty (the whole source) or end with `/`, e.g. `cats/`")]
    BadPrefix,
    #[error("--key must not be empty")]
    EmptyKey,
    #[error("the config has no [identity] table, so there is no key to sign with")]
    NoIdentity,
    #[error("the config has no key `{0}` in [[identity.keys]]")]
    UnknownKid(String),
    #[error(
        "no key in [[identity.keys]] can sign: an HS256 key needs its `secret`, an EdDSA or \
         ES256 key its `private_key`; add one, or pick a key with --kid"
    )]
    NoSigningKey,
    #[error("key `{kid}` has no private_key; add `private_key = \"file:PATH\"` to sign with it")]
    NoPrivateKey { kid: String },
    #[error("reading the private key of `{kid}`")]
    ReadPrivateKey {
        kid: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the signing key of `{kid}` is not a valid {alg} PEM private key (PKCS#8)")]
    BadPrivateKey {
        kid: String,
        alg: &'static str,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    #[error("signing the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
    #[error("generating a key")]
    Generate,
    #[error("{} already exists; choose another --kid or --out, or remove it", .0.display())]
    Exists(PathBuf),
    #[error("writing {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{0}` is not a base URL; write https://host[:port] with no path")]
    BadBaseUrl(String),
    #[error("a use window (--idle) needs an expiry: give a --ttl, not `none`")]
    WindowWithoutExp,
    #[error("--idle ({idle} s) is longer than --max ({max} s); use a shorter --idle")]
    IdleAboveMax { idle: u64, max: u64 },
    #[error(
        "--max ({max} s) is longer than the config's [identity] use_window_max_secs ({cap} s), \
         which the gateway would refuse; use a shorter --max or raise use_window_max_secs"
    )]
    MaxAboveCap { max: u64, cap: u64 },
}

/// How long a token lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    For(Duration),
    /// No `exp` claim: only under a key with `allow_non_expiring`.
    Never,
}

/// Parse `30s`, `15m`, `1h`, `7d` or `none`. Over 7 days is refused here; `none` is checked
/// against the key when minting.
pub fn parse_ttl(text: &str) -> Result<Ttl, TokenError> {
    if text == "none" {
        return Ok(Ttl::Never);
    }
    parse_duration(text).map(Ttl::For)
}

/// Parse `30s`, `15m`, `1h`, `7d`: positive, at most 7 days (`--ttl`, `--idle`, `--max`).
pub fn parse_duration(text: &str) -> Result<Duration, TokenError> {
    let bad = || TokenError::BadDuration(text.to_owned());
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(unit_secs).ok_or_else(bad)?;
    if secs == 0 {
        return Err(TokenError::ZeroTtl);
    }
    if secs > MAX_TTL.as_secs() {
        return Err(TokenError::TtlTooLong(text.to_owned()));
    }
    Ok(Duration::from_secs(secs))
}

/// A use window to mint into a token (`--idle`, `--max`, `--no-bind`): see
/// `crate::identity::use_window` for what the gateway does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub idle: Duration,
    /// `None`: the gateway's `use_window_max_secs`.
    pub max: Option<Duration>,
    pub bind: bool,
}

/// What a token may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One object: scope `source:exact/key`.
    Key(String),
    /// Every key under a prefix ending in `/` (scope `source:prefix/`), or the whole source
    /// when empty (`source:`).
    Prefix(String),
}

impl Target {
    pub fn key(key: &str) -> Result<Target, TokenError> {
        if key.is_empty() {
            return Err(TokenError::EmptyKey);
        }
        Ok(Target::Key(key.to_owned()))
    }

    pub fn prefix(prefix: &str) -> Result<Target, TokenError> {
        if !prefix.is_empty() && !prefix.ends_with('/') {
            return Err(TokenError::BadPrefix);
        }
        Ok(Target::Prefix(prefix.to_owned()))
    }

    fn path(&self) -> &str {
        match self {
            Target::Key(k) | Target::Prefix(k) => k,
        }
    }
}

/// The representations a token may see (`rep` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rep {
    Original,
    Derived,
}

impl std::str::FromStr for Rep {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Rep, TokenError> {
        match s {
            "original" => Ok(Rep::Original),
            "derived" => Ok(Rep::Derived),
            other => Err(TokenError::BadRepresentation(other.to_owned())),
        }
    }
}

/// Parse a `cip` binding: a CIDR, or a bare address (a /32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNet, TokenError> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| TokenError::BadCidr(text.to_owned()))
}

/// Everything a token says, apart from the key and the clock.
#[derive(Debug, Clone)]
pub struct Grant {
    pub source: String,
    pub target: Target,
    pub ttl: Ttl,
    pub subject: String,
    pub role: String,
    pub project: Option<String>,
    pub cip: Option<IpNet>,
    pub rep: Vec<Rep>,
}

/// The claims as serialized, in this order.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    sub: &'a str,
    aud: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    iat: u64,
    jti: String,
    scope: Vec<String>,
    role: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    project: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cip: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rep: Vec<Rep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max: Option<u64>,
    /// Written only when false (true is the default with `idle`).
    #[serde(skip_serializing_if = "Option::is_none")]
    bind: Option<bool>,
}

/// A key that can sign, with the audience and issuer tokens must carry.
pub struct Signer {
    kid: String,
    alg: KeyAlg,
    key: EncodingKey,
    allow_non_expiring: bool,
    audience: String,
    issuer: Option<String>,
    /// The config's `use_window_max_secs`: a longer `--max` would be refused.
    use_window_max_secs: u64,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

fn algorithm(alg: KeyAlg) -> Algorithm {
    match alg {
        KeyAlg::Hs256 => Algorithm::HS256,
        KeyAlg::EdDsa => Algorithm::EdDSA,
        KeyAlg::Es256 => Algorithm::ES256,
    }
}

impl Signer {
    /// An HS256 signer from a shared secret (its UTF-8 bytes are the HMAC key).
    pub fn hs256(kid: &str, secret: &Secret, audience: &str, issuer: Option<&str>) -> Signer {
        Signer {
            kid: kid.to_owned(),
            alg: KeyAlg::Hs256,
            key: EncodingKey::from_secret(secret.expose().as_bytes()),
            allow_non_expiring: false,
            audience: audience.to_owned(),
            issuer: issuer.map(str::to_owned),
            use_window_max_secs: crate::config::defaults::USE_WINDOW_MAX_SECS,
        }
    }

    /// The signer for the config's key `kid`, or the first key that can sign.
    pub fn from_config(config: &Config, kid: Option<&str>) -> Result<Signer, TokenError> {
        let identity = config.identity.as_ref().ok_or(TokenError::NoIdentity)?;
        let can_sign = |k: &&crate::config::KeyConfig| {
            matches!(k.material, KeyMaterial::Hs256(_)) || k.private_key.is_some()
        };
        let key = match kid {
            Some(kid) => identity
                .keys
                .iter()
                .find(|k| k.kid == kid)
                .ok_or_else(|| TokenError::UnknownKid(kid.to_owned()))?,
            None => identity
                .keys
                .iter()
                .find(can_sign)
                .ok_or(TokenError::NoSigningKey)?,
        };
        let encoding = match (&key.material, key.alg) {
            (KeyMaterial::Hs256(secret), _) => EncodingKey::from_secret(secret.expose().as_bytes()),
            (KeyMaterial::PublicPem(_), alg) => {
                let reference = key.private_key.as_ref().ok_or(TokenError::NoPrivateKey {
                    kid: key.kid.clone(),
                })?;
                let pem = reference
                    .resolve()
                    .map_err(|source| TokenError::ReadPrivateKey {
                        kid: key.kid.clone(),
                        source,
                    })?;
                let parsed = match alg {
                    KeyAlg::EdDsa => EncodingKey::from_ed_pem(pem.expose().as_bytes()),
                    KeyAlg::Es256 | KeyAlg::Hs256 => {
                        EncodingKey::from_ec_pem(pem.expose().as_bytes())
                    }
                };
                parsed.map_err(|source| TokenError::BadPrivateKey {
                    kid: key.kid.clone(),
                    alg: alg.as_str(),
                    source,
                })?
            }
        };
        Ok(Signer {
            kid: key.kid.clone(),
            alg: key.alg,
            key: encoding,
            allow_non_expiring: key.allow_non_expiring,
            audience: identity.audience.clone(),
            issuer: identity.issuer.clone(),
            use_window_max_secs: identity.use_window_max.as_secs(),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Sign a token for `grant`, issued at `now`.
    pub fn mint(&self, grant: &Grant, now: SystemTime) -> Result<String, TokenError> {
        self.mint_with_window(grant, None, now)
    }

    /// [`Signer::mint`], with a use window when `window` is given.
    pub fn mint_with_window(
        &self,
        grant: &Grant,
        window: Option<Window>,
        now: SystemTime,
    ) -> Result<String, TokenError> {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let exp = match grant.ttl {
            Ttl::For(d) if d > MAX_TTL => {
                return Err(TokenError::TtlTooLong(format!("{}s", d.as_secs())));
            }
            Ttl::For(d) => Some(iat + d.as_secs()),
            Ttl::Never if self.allow_non_expiring => None,
            Ttl::Never => return Err(TokenError::NonExpiringRefused(self.kid.clone())),
        };
        let (idle, max, bind) = match window {
            None => (None, None, None),
            Some(_) if exp.is_none() => return Err(TokenError::WindowWithoutExp),
            Some(w) => {
                let idle = w.idle.as_secs();
                let max = w.max.map(|m| m.as_secs());
                let effective = max.unwrap_or(self.use_window_max_secs);
                if effective > self.use_window_max_secs {
                    return Err(TokenError::MaxAboveCap {
                        max: effective,
                        cap: self.use_window_max_secs,
                    });
                }
                if idle > effective {
                    return Err(TokenError::IdleAboveMax {
                        idle,
                        max: effective,
                    });
                }
                (Some(idle), max, (!w.bind).then_some(false))
            }
        };
        let scope = match &grant.target {
            Target::Key(key) => format!("{}:exact/{key}", grant.source),
            Target::Prefix(prefix) => format!("{}:{prefix}", grant.source),
        };
        let claims = Claims {
            sub: &grant.subject,
            aud: &self.audience,
            iss: self.issuer.as_deref(),
            exp,
            iat,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            scope: vec![scope],
            role: &grant.role,
            project: grant.project.as_deref(),
            cip: grant.cip.map(|c| c.to_string()),
            rep: grant.rep.clone(),
            idle,
            max,
            bind,
        };
        let mut header = Header::new(algorithm(self.alg));
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".to_owned());
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(TokenError::Sign)
    }
}

/// Percent-encode a key for a URL path: every byte except unreserved characters, segment by
/// segment (`/` is kept).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Check and normalize a base URL: `https://host[:port]`, no path (a trailing `/` is dropped).
pub fn parse_base_url(text: &str) -> Result<String, TokenError> {
    let trimmed = text.strip_suffix('/').unwrap_or(text);
    let uri: http::Uri = trimmed
        .parse()
        .map_err(|_| TokenError::BadBaseUrl(text.to_owned()))?;
    let ok = matches!(uri.scheme_str(), Some("https" | "http"))
        && uri.authority().is_some()
        && uri.path() == "/"
        && uri.query().is_none()
        && !trimmed.ends_with('/');
    if !ok {
        return Err(TokenError::BadBaseUrl(text.to_owned()));
    }
    Ok(trimmed.to_owned())
}

/// `base/o/{source}/{key}?token=TOKEN`, the key percent-encoded per segment.
pub fn signed_url(base: &str, source: &str, target: &Target, token: &str) -> String {
    let path: Vec<String> = target
        .path()
        .split('/')
        .map(|segment| utf8_percent_encode(segment, PATH_SEGMENT).to_string())
        .collect();
    format!(
        "{base}/o/{}/{}?token={token}",
        utf8_percent_encode(source, PATH_SEGMENT),
        path.join("/")
    )
}

/// The base URL for a config's data listener: its address (loopback for an unspecified one).
pub fn base_url_for(config: &Config) -> String {
    let addr = config.listener.addr;
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("https://{}", std::net::SocketAddr::new(ip, addr.port()))
}

// ---- keygen ----

/// What `keygen` wrote.
#[derive(Debug)]
pub struct Generated {
    /// The files written (secret, or private then public key).
    pub files: Vec<PathBuf>,
    /// The `[[identity.keys]]` table to paste into the config.
    pub snippet: String,
}

/// Write a new key for `alg` under `dir`: an HS256 secret (`KID.hs256.key`, mode 0600), or a
/// PKCS#8 private key (`KID.private.pem`, 0600) and its public key (`KID.public.pem`).
pub fn keygen(alg: KeyAlg, kid: &str, dir: &Path) -> Result<Generated, TokenError> {
    let write = |name: String, contents: &str, private: bool| -> Result<PathBuf, TokenError> {
        let path = dir.join(name);
        write_new(&path, contents.as_bytes(), private)?;
        Ok(std::path::absolute(&path).unwrap_or(path))
    };
    let quoted = |p: &Path| format!("{:?}", format!("file:{}", p.display()));
    match alg {
        KeyAlg::Hs256 => {
            let secret = random_hex(32)?;
            let path = write(format!("{kid}.hs256.key"), &format!("{secret}\n"), true)?;
            let snippet = format!(
                "[[identity.keys]]\nkid = {kid:?}\nalg = \"HS256\"\nsecret = {}\n",
                quoted(&path)
            );
            Ok(Generated {
                files: vec![path],
                snippet,
            })
        }
        KeyAlg::EdDsa | KeyAlg::Es256 => {
            let sig_alg = if alg == KeyAlg::EdDsa {
                &rcgen::PKCS_ED25519
            } else {
                &rcgen::PKCS_ECDSA_P256_SHA256
            };
            let pair = rcgen::KeyPair::generate_for(sig_alg).map_err(|_| TokenError::Generate)?;
            let private = write(format!("{kid}.private.pem"), &pair.serialize_pem(), true)?;
            let public = write(format!("{kid}.public.pem"), &pair.public_key_pem(), false)?;
            let snippet = format!(
                "[[identity.keys]]\nkid = {kid:?}\nalg = \"{}\"\npublic_key = {}\n\
                 # Only where `bucketgate sign`/`token` run; the gateway needs the public key only.\n\
                 private_key = {}\n",
                alg.as_str(),
                quoted(&public),
                quoted(&private),
            );
            Ok(Generated {
                files: vec![private, public],
                snippet,
            })
        }
    }
}

/// A key id for `keygen` without `--kid`: `key-` and 8 random hex digits.
pub fn random_kid() -> Result<String, TokenError> {
    Ok(format!("key-{}", random_hex(4)?))
}

fn random_hex(bytes: usize) -> Result<String, TokenError> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| TokenError::Generate)?;
    Ok(hex::encode(buf))
}

/// Create `path` (never overwrite), private files with mode 0600.
fn write_new(path: &Path, contents: &[u8], private: bool) -> Result<(), TokenError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            TokenError::Exists(path.to_path_buf())
        } else {
            TokenError::Write {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| TokenError::Write {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap; src/ may not
mod tests {
    use super::*;

    #[test]
    fn ttl_units_and_limits() {
        let secs = |s| match parse_ttl(s).unwrap() {
            Ttl::For(d) => d.as_secs(),
            Ttl::Never => u64::MAX,
        };
        assert_eq!(secs("30s"), 30);
        assert_eq!(secs("15m"), 900);
        assert_eq!(secs("1h"), 3600);
        assert_eq!(secs("7d"), 7 * 86_400);
        assert_eq!(parse_ttl("none").unwrap(), Ttl::Never);
        assert!(matches!(parse_ttl("8d"), Err(TokenError::TtlTooLong(_))));
        assert!(matches!(parse_ttl("169h"), Err(TokenError::TtlTooLong(_))));
        assert!(matches!(parse_ttl("0m"), Err(TokenError::ZeroTtl)));
        for bad in [
            "",
            "15",
            "m",
            "1.5h",
            "15 m",
            "-1h",
            "1w",
            "99999999999999999999d",
        ] {
            assert!(
                matches!(parse_ttl(bad), Err(TokenError::BadDuration(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn signed_url_encodes_each_segment_and_keeps_slashes() {
        let url = signed_url(
            "https://127.0.0.1:8443",
            "local",
            &Target::key("cats/a b/ü?#%.jpg").unwrap(),
            "T",
        );
        assert_eq!(
            url,
            "https://127.0.0.1:8443/o/local/cats/a%20b/%C3%BC%3F%23%25.jpg?token=T"
        );
    }

    #[test]
    fn prefix_targets_end_with_a_slash_or_are_empty() {
        assert!(Target::prefix("cats/").is_ok());
        assert!(Target::prefix("").is_ok());
        assert!(matches!(Target::prefix("cats"), Err(TokenError::BadPrefix)));
        assert!(matches!(Target::key(""), Err(TokenError::EmptyKey)));
    }

    #[test]
    fn cidr_accepts_networks_and_bare_addresses() {
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("host").is_err());
    }

    #[test]
    fn base_url_is_scheme_and_authority() {
        assert_eq!(
            parse_base_url("https://gw.example.com/").unwrap(),
            "https://gw.example.com"
        );
        for bad in [
            "gw.example.com",
            "https://gw.example.com/x",
            "ftp://h",
            "https://h?q",
        ] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn minted_claims_follow_the_contract() {
        let signer = Signer::hs256("k1", &Secret::new("s3cret".into()), "aud1", Some("iss1"));
        let grant = Grant {
            source: "local".into(),
            target: Target::prefix("cats/").unwrap(),
            ttl: Ttl::For(Duration::from_secs(900)),
            subject: "alice".into(),
            role: "annotator".into(),
            project: None,
            cip: Some(parse_cidr("127.0.0.1").unwrap()),
            rep: vec![Rep::Derived],
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let token = signer.mint(&grant, now).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some("k1"));
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.alg, Algorithm::HS256);
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.set_audience(&["aud1"]);
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &validation,
        )
        .unwrap();
        let c = data.claims;
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["iss"], "iss1");
        assert_eq!(c["iat"], 1_000_000);
        assert_eq!(c["exp"], 1_000_900);
        assert_eq!(c["scope"], serde_json::json!(["local:cats/"]));
        assert_eq!(c["role"], "annotator");
        assert_eq!(c["cip"], "127.0.0.1/32");
        assert_eq!(c["rep"], serde_json::json!(["derived"]));
        assert_eq!(c["jti"].as_str().unwrap().len(), 32);
        assert!(c.get("project").is_none());
        let never = Grant {
            ttl: Ttl::Never,
            ..grant
        };
        assert!(matches!(
            signer.mint(&never, now),
            Err(TokenError::NonExpiringRefused(_))
        ));
    }

    #[test]
    fn window_flags_become_idle_max_bind_claims_and_nonsense_is_refused() {
        let signer = Signer::hs256("k1", &Secret::new("s3cret".into()), "aud1", None);
        let grant = Grant {
            source: "local".into(),
            target: Target::key("v.mp4").unwrap(),
            ttl: Ttl::For(Duration::from_secs(300)),
            subject: "alice".into(),
            role: "annotator".into(),
            project: None,
            cip: None,
            rep: vec![],
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let claims = |window| {
            let token = signer.mint_with_window(&grant, window, now)?;
            let payload = token.split('.').nth(1).unwrap();
            let json =
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                    .unwrap();
            Ok::<_, TokenError>(serde_json::from_slice::<serde_json::Value>(&json).unwrap())
        };
        let w = |idle, max: Option<u64>, bind| Window {
            idle: Duration::from_secs(idle),
            max: max.map(Duration::from_secs),
            bind,
        };
        let c = claims(Some(w(600, Some(8 * 3600), true))).unwrap();
        assert_eq!(
            (c["idle"].clone(), c["max"].clone()),
            (600.into(), 28_800.into())
        );
        assert!(
            c.get("bind").is_none(),
            "bind=true is the default, not written"
        );
        let c = claims(Some(w(60, None, false))).unwrap();
        assert_eq!(c["idle"], 60);
        assert!(c.get("max").is_none());
        assert_eq!(c["bind"], false);
        let c = claims(None).unwrap();
        assert!(c.get("idle").is_none() && c.get("bind").is_none());
        assert!(matches!(
            claims(Some(w(700, Some(600), true))),
            Err(TokenError::IdleAboveMax { .. })
        ));
        assert!(matches!(
            claims(Some(w(60, Some(13 * 3600), true))),
            Err(TokenError::MaxAboveCap { .. })
        ));
        let forever = Signer {
            allow_non_expiring: true,
            ..Signer::hs256("k1", &Secret::new("s3cret".into()), "aud1", None)
        };
        let never = Grant {
            ttl: Ttl::Never,
            ..grant.clone()
        };
        assert!(matches!(
            forever.mint_with_window(&never, Some(w(60, None, true)), now),
            Err(TokenError::WindowWithoutExp)
        ));
    }

    #[test]
    fn keygen_writes_private_files_owner_only_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        for alg in [KeyAlg::Hs256, KeyAlg::EdDsa, KeyAlg::Es256] {
            let kid = format!("k-{}", alg.as_str());
            let out = keygen(alg, &kid, dir.path()).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&out.files[0])
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{alg:?}");
            }
            assert!(out.snippet.contains(&format!("kid = \"{kid}\"")));
            assert!(matches!(
                keygen(alg, &kid, dir.path()),
                Err(TokenError::Exists(_))
            ));
        }
    }
}
