//! Configuration: the TOML file's raw structs (`file.rs`, the only place that sees them) are
//! validated into the typed [`Config`] below. Every mistake in a file is collected and reported at
//! once as `file:line:col: key: message`; `bucketgate check` and `serve` share that validation.
//! Defaults, with units in their names, live in `defaults.rs` and nowhere else.
//!
//! This module owns parsing and validation. It must not open sockets, read objects or build
//! clients: `app.rs` turns a `Config` into live parts.

pub mod defaults;
mod file;
pub mod network;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use validate::{ConfigError, ConfigErrors};

/// A validated configuration snapshot. Built only by [`parse`], [`load`] or [`Config::embedded_default`].
#[derive(Debug, Clone)]
pub struct Config {
    pub listener: ListenerConfig,
    pub admin: AdminConfig,
    pub limits: Limits,
    /// Named sources, in name order. Never empty.
    pub sources: BTreeMap<String, SourceConfig>,
    pub network: NetworkConfig,
    pub rate_limits: RateLimits,
    /// `[audit]`: where the one-line-per-request audit log goes.
    pub audit: AuditConfig,
    /// `[cors]`: labeling-UI origins allowed to read objects cross-origin.
    pub cors: CorsConfig,
    /// `[identity]`: token verification. `None`: every object request is refused with 401.
    pub identity: Option<IdentityConfig>,
    /// `[roles.NAME]` merged over the seed roles ([`default_roles`]).
    pub roles: BTreeMap<String, RoleConfig>,
    /// `[projects.NAME]`: the sources and prefixes a project's tokens may reach.
    pub projects: BTreeMap<String, ProjectConfig>,
    /// `[saml]`: SAML single sign-on, the gateway as a service provider. `None`: the `/auth/`
    /// routes answer 404 and SAML session cookies are not read.
    pub saml: Option<SamlConfig>,
    /// `[sts]`: the STS endpoint for SAML sessions and delegated roles.
    pub sts: StsConfig,
    /// `[cache]`: the object and derived-output cache. `None`: no cache (every read goes to
    /// the origin). Built once at start: a reload that changes it is logged and applied at the
    /// next start, except `bypass` (per-source `cache = false`), read per request.
    pub cache: Option<CacheConfig>,
    /// `[redis]`: state shared by several nodes. `None`: every store is this process's own
    /// (one node). Built once at start: a reload that changes it is logged and applied at the
    /// next start.
    pub redis: Option<RedisConfig>,
    /// `[images]`: derived images (IIIF). Absent: the defaults, images on.
    pub images: ImagesConfig,
    /// `[video]`: derived video (ffmpeg). Absent: the defaults, video on.
    pub video: VideoConfig,
}

/// `[redis]`: where the shared state lives and what each store does while Redis is down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `url`: `redis://host:port/db` or `rediss://` (TLS); no password in it.
    pub url: String,
    /// `ca_file`: PEM roots for `rediss://` (the system's bundled roots when `None`).
    pub ca_file: Option<PathBuf>,
    /// `username`: ACL user (Redis 6+); `None`: the default user.
    pub username: Option<String>,
    /// `password`: resolved from its secret reference.
    pub password: Option<Secret>,
    /// `prefix`: first part of every key.
    pub prefix: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// `connections`: multiplexed connections.
    pub connections: usize,
    /// `node_name`: this node in `GET /admin/cluster` (default: the host name).
    pub node_name: String,
    /// `sync_interval_ms`: how often shared versions are polled.
    pub sync_interval: Duration,
    /// `refuse_tokens_issued_during_outage`: while Redis is down, refuse tokens whose `iat` is
    /// after the outage began (a revocation made elsewhere meanwhile cannot be seen).
    pub refuse_tokens_issued_during_outage: bool,
    /// `seal_key`: the AES-256-GCM key SAML session credentials are sealed with before they are
    /// written to Redis. Required when `[saml]` is configured.
    pub seal_key: Option<SealKey>,
    /// `expected_nodes`: a rate-limit quota is divided by this while Redis is down.
    pub expected_nodes: u32,
}

/// A 32-byte key that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey(pub [u8; 32]);

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `[images]`: the IIIF routes, their public URL and the limits of image jobs. The limits and
/// `base_url` apply on reload; `workers` and `queue` size the decode pool built at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagesConfig {
    /// `enabled = false`: the `/iiif/` routes answer 404.
    pub enabled: bool,
    /// `base_url`: the public URL in front of `/iiif/3/...` in `info.json` (`id`) and
    /// redirects, e.g. `https://assets.example.com`; `None`: `https://{Host}`.
    pub base_url: Option<String>,
    pub max_source_pixels: u64,
    pub max_tiled_source_pixels: u64,
    pub max_output_pixels: u64,
    pub max_output_side: u32,
    pub max_frames: u32,
    pub max_source_bytes: u64,
    /// 0: one per core.
    pub workers: usize,
    pub queue: usize,
    pub job_timeout: Duration,
    pub tile_size: u32,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            enabled: true,
            base_url: None,
            max_source_pixels: defaults::IMAGE_MAX_SOURCE_PIXELS,
            max_tiled_source_pixels: defaults::IMAGE_MAX_TILED_SOURCE_PIXELS,
            max_output_pixels: defaults::IMAGE_MAX_OUTPUT_PIXELS,
            max_output_side: defaults::IMAGE_MAX_OUTPUT_SIDE,
            max_frames: defaults::IMAGE_MAX_FRAMES,
            max_source_bytes: defaults::IMAGE_MAX_SOURCE_BYTES,
            workers: defaults::IMAGE_WORKERS,
            queue: defaults::IMAGE_QUEUE,
            job_timeout: Duration::from_secs(defaults::IMAGE_JOB_TIMEOUT_SECS),
            tile_size: defaults::IMAGE_TILE_SIZE,
        }
    }
}

/// `[video]`: the `/v/` routes, the tools, and the limits of video jobs. The limits apply on
/// reload; `enabled` too; the tools, `jobs`, `queue`, `work_dir` and `store_bytes` are read at
/// start (a reload that changes them is logged and applied at the next start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoConfig {
    /// `enabled = false`: the `/v/` routes answer 404.
    pub enabled: bool,
    /// `ffmpeg`, `ffprobe`: a name looked up in PATH, or an absolute path.
    pub ffmpeg: String,
    pub ffprobe: String,
    /// Children at once (0: one per core) and jobs waiting beyond them (503 past it).
    pub jobs: usize,
    pub queue: usize,
    pub job_timeout: Duration,
    pub transcode_timeout: Duration,
    pub max_duration: Duration,
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
    pub max_streams: u32,
    pub max_bit_rate: u64,
    pub max_source_bytes: u64,
    /// Demuxer names, a subset of `mov`, `matroska`, `avi`, `mpegts`.
    pub containers: Vec<String>,
    /// ffprobe's `codec_name`s accepted.
    pub video_codecs: Vec<String>,
    pub audio_codecs: Vec<String>,
    /// x264 `-preset` and `-crf` of transcodes; longest output side of a transcode.
    pub preset: String,
    pub crf: u8,
    pub max_output_side: u32,
    pub segment_secs: u32,
    /// Widest poster, frame or sprite cell a `w` may ask for.
    pub max_output_width: u32,
    /// The rendition store's directory; `None`: a private directory under the system temp dir,
    /// made at start.
    pub work_dir: Option<PathBuf>,
    pub store_bytes: u64,
}

impl Default for VideoConfig {
    fn default() -> Self {
        VideoConfig {
            enabled: true,
            ffmpeg: defaults::VIDEO_FFMPEG.to_owned(),
            ffprobe: defaults::VIDEO_FFPROBE.to_owned(),
            jobs: defaults::VIDEO_JOBS,
            queue: defaults::VIDEO_QUEUE,
            job_timeout: Duration::from_secs(defaults::VIDEO_JOB_TIMEOUT_SECS),
            transcode_timeout: Duration::from_secs(defaults::VIDEO_TRANSCODE_TIMEOUT_SECS),
            max_duration: Duration::from_secs(defaults::VIDEO_MAX_DURATION_SECS),
            max_width: defaults::VIDEO_MAX_WIDTH,
            max_height: defaults::VIDEO_MAX_HEIGHT,
            max_pixels: defaults::VIDEO_MAX_PIXELS,
            max_streams: defaults::VIDEO_MAX_STREAMS,
            max_bit_rate: defaults::VIDEO_MAX_BIT_RATE,
            max_source_bytes: defaults::VIDEO_MAX_SOURCE_BYTES,
            containers: defaults::VIDEO_CONTAINERS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            video_codecs: defaults::VIDEO_CODECS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            audio_codecs: defaults::AUDIO_CODECS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            preset: defaults::VIDEO_PRESET.to_owned(),
            crf: defaults::VIDEO_CRF,
            max_output_side: defaults::VIDEO_MAX_OUTPUT_SIDE,
            segment_secs: defaults::VIDEO_SEGMENT_SECS,
            max_output_width: defaults::VIDEO_MAX_OUTPUT_WIDTH,
            work_dir: None,
            store_bytes: defaults::VIDEO_STORE_BYTES,
        }
    }
}

impl VideoConfig {
    /// Whether a reload from `self` to `new` changes what is read only at start.
    pub fn differs_at_start(&self, new: &VideoConfig) -> bool {
        (&self.ffmpeg, &self.ffprobe, self.jobs, self.queue)
            != (&new.ffmpeg, &new.ffprobe, new.jobs, new.queue)
            || (&self.work_dir, self.store_bytes) != (&new.work_dir, new.store_bytes)
    }
}

/// `[cache]`: memory tier, optional encrypted disk tier, chunking and metadata trust.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// `memory_bytes`: byte budget of the memory tier (hot chunks), never exceeded.
    pub memory_bytes: u64,
    /// `chunk_bytes`: objects are cached in aligned chunks of this size (a power of two,
    /// 256 KiB-16 MiB).
    pub chunk_bytes: u64,
    /// `metadata_ttl_secs`: how long an object's metadata (size, ETag) is trusted before the next
    /// request revalidates it with the origin.
    pub metadata_ttl: Duration,
    /// `disk_dir` + `disk_bytes` (+ encryption): `None` = memory only.
    pub disk: Option<DiskCacheConfig>,
    /// Sources written with `cache = false`: always read from the origin.
    pub bypass: std::collections::BTreeSet<String>,
}

/// The disk tier of `[cache]`.
#[derive(Debug, Clone)]
pub struct DiskCacheConfig {
    /// `disk_dir`: the directory entries live in (created if missing; owned by the cache).
    pub dir: PathBuf,
    /// `disk_bytes`: byte budget of the disk tier, never exceeded.
    pub max_bytes: u64,
    /// `key` + `key_id`, or `encrypt = false` written out.
    pub encryption: DiskEncryption,
}

/// How disk entries are protected at rest.
#[derive(Clone)]
pub enum DiskEncryption {
    /// AES-256-GCM per chunk under `key` (32 bytes), tagged with `key_id` so keys can rotate.
    Aes256Gcm { key_id: String, key: [u8; 32] },
    /// `encrypt = false`: stored in the clear (the operator wrote it out).
    Off,
}

impl fmt::Debug for DiskEncryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskEncryption::Aes256Gcm { key_id, .. } => f
                .debug_struct("Aes256Gcm")
                .field("key_id", key_id)
                .finish_non_exhaustive(),
            DiskEncryption::Off => f.write_str("Off"),
        }
    }
}

/// `[network]`: who may reach the data listener at all. An empty `allow` denies everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkConfig {
    pub allow: Vec<IpNet>,
    /// Deny wins over allow.
    pub deny: Vec<IpNet>,
    /// Peers whose `X-Forwarded-For` / `Forwarded` headers are read.
    pub trusted_proxies: Vec<IpNet>,
    /// Peers that must send a PROXY protocol header on the data listener; nobody else may.
    pub proxy_protocol: Vec<IpNet>,
    pub proxy_protocol_timeout: Duration,
    /// Per-source lists, only for configured sources. They narrow the global lists, never widen.
    pub sources: BTreeMap<String, SourceLists>,
}

/// `[network.sources.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceLists {
    /// `None` (key omitted): no narrowing, the global allow list alone decides. `Some(empty)`:
    /// nobody may reach this source.
    pub allow: Option<Vec<IpNet>>,
    pub deny: Vec<IpNet>,
}

impl NetworkConfig {
    /// Loopback only (`127.0.0.0/8`, `::1/128`): the embedded default.
    pub fn loopback_only() -> NetworkConfig {
        NetworkConfig {
            allow: defaults::LOOPBACK_NETS
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
            proxy_protocol_timeout: Duration::from_millis(defaults::PROXY_PROTOCOL_TIMEOUT_MS),
            ..NetworkConfig::default()
        }
    }
}

/// `[identity]`: how tokens are verified.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Tokens' `aud` must contain this.
    pub audience: String,
    /// If set, tokens' `iss` must equal it.
    pub issuer: Option<String>,
    pub clock_skew: Duration,
    pub cookie_name: String,
    /// Keys from the config, unique by `kid`.
    pub keys: Vec<KeyConfig>,
    pub jwks: Option<JwksConfig>,
    /// The default and largest `max` of a token's use window (`use_window_max_secs`).
    pub use_window_max: Duration,
}

/// The algorithms a key may pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    Hs256,
    EdDsa,
    Es256,
}

impl KeyAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlg::Hs256 => "HS256",
            KeyAlg::EdDsa => "EdDSA",
            KeyAlg::Es256 => "ES256",
        }
    }
}

/// `[[identity.keys]]`.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub kid: String,
    pub alg: KeyAlg,
    /// The verification material, resolved and checked at load.
    pub material: KeyMaterial,
    /// Signing key for `bucketgate sign`/`token` (never read by `serve`): the reference as written.
    pub private_key: Option<KeyRef>,
    pub allow_non_expiring: bool,
}

#[derive(Debug, Clone)]
pub enum KeyMaterial {
    /// HS256: the secret's bytes (UTF-8 as written) are the HMAC key.
    Hs256(Secret),
    /// EdDSA / ES256: a PEM public key (SubjectPublicKeyInfo).
    PublicPem(String),
}

impl KeyMaterial {
    /// The verification key this material makes under `alg`: validation checks that a PEM
    /// parses with it, identity verifies signatures with it.
    pub fn decoding_key(
        &self,
        alg: KeyAlg,
    ) -> Result<jsonwebtoken::DecodingKey, jsonwebtoken::errors::Error> {
        use jsonwebtoken::DecodingKey;
        match (alg, self) {
            (KeyAlg::Hs256, KeyMaterial::Hs256(secret)) => {
                Ok(DecodingKey::from_secret(secret.expose().as_bytes()))
            }
            (KeyAlg::EdDsa, KeyMaterial::PublicPem(pem)) => {
                DecodingKey::from_ed_pem(pem.as_bytes())
            }
            (KeyAlg::Es256, KeyMaterial::PublicPem(pem)) => {
                DecodingKey::from_ec_pem(pem.as_bytes())
            }
            _ => Err(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat.into()),
        }
    }
}

/// An `env:NAME` / `file:PATH` reference kept unresolved (relative paths already resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    Env(String),
    File(PathBuf),
}

impl KeyRef {
    /// Read the referenced value (a trailing newline of a file is dropped).
    pub fn resolve(&self) -> std::io::Result<Secret> {
        match self {
            KeyRef::Env(name) => std::env::var(name).map(Secret::new).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("{name}: {e}"))
            }),
            KeyRef::File(path) => {
                let text = std::fs::read_to_string(path)?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                Ok(Secret::new(
                    text.strip_suffix('\r').unwrap_or(text).to_owned(),
                ))
            }
        }
    }
}

/// `[identity.jwks]`: keys of the customer's identity provider.
#[derive(Debug, Clone)]
pub struct JwksConfig {
    /// An `https://` URL.
    pub url: http::Uri,
    /// Extra PEM root certificate(s); without it, the webpki roots.
    pub ca_file: Option<PathBuf>,
    pub refresh_min_interval: Duration,
}

/// `[roles.NAME]`: what a role may see on the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleConfig {
    /// May read originals (`/o/`).
    pub read_original: bool,
    /// May read derived representations (thumbnails, tiles, video renditions).
    pub read_derived: bool,
    /// How powerful the role is, for `[saml.idp] role_choice = "highest"` (higher wins).
    /// `None`: unranked; validation refuses an unranked role in a SAML role rule when the
    /// choice is "highest", and the SAML service provider ranks one below every ranked role.
    pub rank: Option<u32>,
}

/// The seed platforms' roles and their ranks: owner (50), admin (40), manager (30), reviewer
/// (20), annotator and its alias labeler (10). Every one may read originals and derived
/// representations; a config narrows them.
pub fn default_roles() -> BTreeMap<String, RoleConfig> {
    [
        ("owner", 50),
        ("admin", 40),
        ("manager", 30),
        ("reviewer", 20),
        ("annotator", 10),
        ("labeler", 10),
    ]
    .into_iter()
    .map(|(name, rank)| {
        let role = RoleConfig {
            read_original: true,
            read_derived: true,
            rank: Some(rank),
        };
        (name.to_owned(), role)
    })
    .collect()
}

/// `[projects.NAME]`.
#[derive(Debug, Clone)]
pub struct ProjectConfig {
    /// Same syntax as token scopes. Never empty.
    pub sources: Vec<crate::scope::Scope>,
}

/// `[saml]`: the gateway as a SAML 2.0 service provider of one identity provider.
#[derive(Debug, Clone)]
pub struct SamlConfig {
    /// This service provider's entity id: the `<Audience>` responses must name.
    pub sp_entity_id: String,
    /// The absolute `https://.../auth/saml/acs` URL: Recipient and Destination of responses.
    pub acs_url: String,
    /// Longest session (and STS credential lifetime), 900 s to 12 h.
    pub max_session: Duration,
    /// Oldest IssueInstant (of the Response and of the Assertion) accepted, before the skew.
    pub max_response_age: Duration,
    /// The login cookie's HMAC key (at least `SAML_LOGIN_COOKIE_KEY_MIN_BYTES` bytes, resolved
    /// from `env:NAME` / `file:PATH` at load), shared by the nodes behind one load balancer so
    /// that a login started on one completes on another. `None`: random per process.
    pub login_cookie_key: Option<Secret>,
    pub idp: SamlIdpConfig,
}

/// `[saml.idp]`.
#[derive(Debug, Clone)]
pub struct SamlIdpConfig {
    /// The IdP's entity id: the `<Issuer>` of responses and assertions.
    pub entity_id: String,
    /// Where the login redirects to (HTTP-Redirect binding).
    pub sso_url: String,
    /// DER X.509 signing certificates; any one may verify (more than one during rotation).
    pub certificates: Vec<Vec<u8>>,
    /// Accept responses that answer no login of ours.
    pub allow_idp_initiated: bool,
    pub clock_skew: Duration,
    pub role_choice: RoleChoice,
    /// Which AWS role pairs may be used, each mapped to a gateway role and project. Never empty.
    pub roles: Vec<SamlRoleRule>,
}

/// How one role is chosen when a response offers several usable ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleChoice {
    /// The first usable pair, in the order the response lists them.
    First,
    /// Exactly one usable pair; several are refused.
    Only,
    /// The pair mapped to the gateway role of highest `rank` (`[roles.NAME] rank`; the seeds:
    /// owner > admin > manager > reviewer > annotator/labeler); ties go to the first listed.
    Highest,
}

/// `[[saml.idp.roles]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamlRoleRule {
    pub role_arn: String,
    pub provider_arn: String,
    /// A configured role (seed or `[roles.NAME]`).
    pub gateway_role: String,
    /// A configured project: the sources and prefixes the session may reach.
    pub project: String,
}

/// `[audit]`. Default: stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub destination: AuditDestination,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditDestination {
    Stdout,
    /// Append to `path`; when it would grow past `max_bytes`, rename it to `path.1` (and older
    /// ones up to `path.keep`) and start a new file.
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: u32,
    },
    Off,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            destination: AuditDestination::Stdout,
        }
    }
}

/// `[cors]`. Default: no origin allowed (no CORS headers, preflights refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    /// Exact serialized origins (`https://label.example.com`, `http://127.0.0.1:3000`), lowercase,
    /// without a default port.
    pub allowed_origins: Vec<String>,
    pub max_age: Duration,
    /// `any_origin_for_token_requests`: a request that carries no `Cookie` header (its token
    /// is in the URL or an `Authorization` header, which no browser adds by itself) gets
    /// `Access-Control-Allow-Origin: *` without credentials from any origin, and so does its
    /// preflight; cookie requests keep the listed origins with credentials. Default false.
    pub any_origin_for_token_requests: bool,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allowed_origins: Vec::new(),
            max_age: Duration::from_secs(defaults::CORS_MAX_AGE_SECS),
            any_origin_for_token_requests: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Address of the TLS data listener (`127.0.0.1:0` in tests).
    pub addr: SocketAddr,
    pub tls: TlsConfig,
    /// `Strict-Transport-Security` on every response of this listener.
    pub hsts: HstsConfig,
}

/// `[listener] hsts_*`: the `Strict-Transport-Security` header (RFC 6797). Applied on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HstsConfig {
    /// `max-age`; zero tells browsers to forget the host's HSTS policy.
    pub max_age: Duration,
    pub include_subdomains: bool,
    /// Only with `include_subdomains` and a `max_age` of at least a year (the preload list's
    /// rules; validation refuses anything else).
    pub preload: bool,
}

impl Default for HstsConfig {
    fn default() -> Self {
        HstsConfig {
            max_age: Duration::from_secs(defaults::HSTS_MAX_AGE_SECS),
            include_subdomains: false,
            preload: false,
        }
    }
}

#[derive(Debug, Clone)]
pub enum TlsConfig {
    /// PEM certificate chain and private key files.
    Files { cert: PathBuf, key: PathBuf },
    /// Generate (once) and reuse a self-signed development certificate under this directory.
    Development { dir: PathBuf },
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Plain-HTTP admin listener; loopback by default.
    pub addr: SocketAddr,
    /// Bearer token of the `/admin/*` API; `None`: those routes do not exist (404).
    pub token: Option<Secret>,
    /// Where admin API changes are persisted (`network.json`).
    pub state_dir: PathBuf,
    /// How often the config file is checked for changes.
    pub reload_poll: Duration,
}

impl AdminConfig {
    /// An admin listener on `addr` with no API token, state under `state_dir`, and the default
    /// reload poll interval.
    pub fn new(addr: SocketAddr, state_dir: PathBuf) -> AdminConfig {
        AdminConfig {
            addr,
            token: None,
            state_dir,
            reload_poll: Duration::from_secs(defaults::RELOAD_POLL_SECS),
        }
    }
}

/// `[rate_limits]`: stage 4 (admit). Defaults in `defaults.rs`; every value is at least 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    pub per_ip_rps: u32,
    pub per_ip_burst: u32,
    pub per_subject_rps: u32,
    pub per_subject_burst: u32,
    /// Open connections per client address on the data listener.
    pub max_connections_per_ip: usize,
}

/// Every limit and timeout the gateway enforces. Defaults in `defaults.rs`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// A connection this old is closed gracefully (h2 GOAWAY; http/1.1 after the response in
    /// flight), and dropped `shutdown_grace` later if still open.
    pub max_connection_age: Duration,
    pub max_connections: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_header_list_bytes: u32,
    pub h2_max_pending_reset_streams: usize,
    pub h2_max_local_error_reset_streams: usize,
    pub shutdown_grace: Duration,
    pub upstream_connect_timeout: Duration,
    /// The whole wait for a store's response headers in one request, retries included.
    pub upstream_first_byte_timeout: Duration,
    pub upstream_idle_timeout: Duration,
    /// Retries of an upstream call that has sent nothing to the client yet, within
    /// `upstream_first_byte_timeout`.
    pub upstream_max_retries: u32,
}

#[derive(Debug, Clone)]
pub enum SourceConfig {
    Fs(FsSource),
    S3(S3Source),
}

#[derive(Debug, Clone)]
pub struct FsSource {
    pub root: PathBuf,
}

#[derive(Debug, Clone)]
pub struct S3Source {
    pub bucket: String,
    /// Key prefix inside the bucket, prepended verbatim (empty = none). `photos/` + key.
    pub prefix: String,
    pub region: String,
    /// Custom endpoint for S3-compatible stores (`http://127.0.0.1:9000`); `None` = AWS.
    pub endpoint: Option<String>,
    pub path_style: bool,
    pub credentials: S3Credentials,
}

#[derive(Clone)]
pub enum S3Credentials {
    /// The AWS default chain (env, profile, web identity, ECS, IMDS).
    DefaultChain,
    /// Static keys; the secret was resolved from `env:NAME` or `file:PATH` at load.
    Static {
        access_key_id: String,
        secret_access_key: Secret,
    },
    /// `"saml"`: each request is signed with the requesting user's SAML session credentials; a
    /// request without a session is refused (never signed with anything broader).
    Saml,
    /// One gateway-wide role assumed through STS (delegated access).
    AssumeRole(AssumeRoleConfig),
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            S3Credentials::DefaultChain => f.write_str("DefaultChain"),
            S3Credentials::Static { access_key_id, .. } => f
                .debug_struct("Static")
                .field("access_key_id", access_key_id)
                .field("secret_access_key", &"<redacted>")
                .finish(),
            S3Credentials::Saml => f.write_str("Saml"),
            S3Credentials::AssumeRole(role) => f.debug_tuple("AssumeRole").field(role).finish(),
        }
    }
}

/// `credentials = { assume_role = "arn:...", external_id = "...", ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRoleConfig {
    pub role_arn: String,
    /// Sent as `ExternalId`; the role's trust policy decides whether it must match.
    pub external_id: Option<String>,
    pub session_name: String,
    /// Requested credential lifetime, 900 s to 12 h.
    pub duration: Duration,
}

/// `[sts]`: where STS calls go and how long each may take.
#[derive(Debug, Clone)]
pub struct StsConfig {
    pub region: String,
    /// Custom endpoint (`http://127.0.0.1:5000`); `None` = AWS's regional STS endpoint.
    pub endpoint: Option<String>,
    /// Per call, connect to answer.
    pub timeout: Duration,
    /// The gateway's own keys for signing AssumeRole; `None` = the AWS default chain.
    /// (AssumeRoleWithSAML is unsigned and needs none.)
    pub credentials: Option<StaticKeys>,
}

impl Default for StsConfig {
    fn default() -> Self {
        StsConfig {
            region: defaults::DEFAULT_STS_REGION.to_owned(),
            endpoint: None,
            timeout: Duration::from_secs(defaults::STS_TIMEOUT_SECS),
            credentials: None,
        }
    }
}

/// An access key pair; the secret was resolved from `env:NAME` or `file:PATH` at load.
#[derive(Debug, Clone)]
pub struct StaticKeys {
    pub access_key_id: String,
    pub secret_access_key: Secret,
}

/// A secret value that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Parse and validate config text. `origin` names the file in error messages, and relative paths
/// in the text (fs roots, TLS files, `file:` secrets) are resolved from its directory.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    validate::parse(text, origin)
}

/// Read, parse and validate a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    validate::load(path)
}

/// The TLS certificate settings the config file at `path` names, even if the rest of the file
/// is refused: `None` if it cannot be read or parsed, or names none. Paths are resolved like
/// [`load`] resolves them, and not checked on disk.
pub fn tls_named(path: &Path) -> Option<TlsConfig> {
    validate::tls_named(path)
}

impl Config {
    /// The embedded default used when `serve` gets no config: serve `./data` as the source `local`
    /// on https://127.0.0.1:8443 with a development certificate kept under `./.bucketgate/`, admin
    /// on http://127.0.0.1:9090, with a 64 MiB memory cache (no disk tier).
    ///
    /// Tokens are required here too: the HS256 development key (kid `dev`, audience `bucketgate`)
    /// is read from `dev_key`, the file identity's `keys::ensure_dev_key` keeps under
    /// `./.bucketgate/` (the composition root, `app::embedded_config`, makes it; config only
    /// reads it), so `bucketgate sign` run in the same directory mints tokens this config
    /// accepts. Fails only if that key cannot be read.
    pub fn embedded_default(workdir: &Path, dev_key: &Path) -> std::io::Result<Config> {
        let dev_dir = workdir.join(".bucketgate");
        let key_path = dev_key.to_path_buf();
        let secret = KeyRef::File(key_path.clone()).resolve()?;
        let mut sources = BTreeMap::new();
        sources.insert(
            "local".to_string(),
            SourceConfig::Fs(FsSource {
                root: workdir.join("data"),
            }),
        );
        Ok(Config {
            listener: ListenerConfig {
                addr: defaults::DEFAULT_DATA_ADDR,
                tls: TlsConfig::Development { dir: dev_dir },
                hsts: HstsConfig::default(),
            },
            admin: AdminConfig::new(
                defaults::DEFAULT_ADMIN_ADDR,
                workdir.join(defaults::STATE_DIR),
            ),
            limits: Limits::default(),
            sources,
            network: NetworkConfig::loopback_only(),
            rate_limits: RateLimits::default(),
            audit: AuditConfig::default(),
            cors: CorsConfig::default(),
            identity: Some(IdentityConfig {
                audience: defaults::DEV_AUDIENCE.to_owned(),
                issuer: None,
                clock_skew: Duration::from_secs(defaults::CLOCK_SKEW_SECS),
                cookie_name: defaults::SESSION_COOKIE_NAME.to_owned(),
                keys: vec![KeyConfig {
                    kid: defaults::DEV_KEY_ID.to_owned(),
                    alg: KeyAlg::Hs256,
                    material: KeyMaterial::Hs256(secret),
                    private_key: Some(KeyRef::File(key_path)),
                    allow_non_expiring: false,
                }],
                jwks: None,
                use_window_max: Duration::from_secs(defaults::USE_WINDOW_MAX_SECS),
            }),
            roles: default_roles(),
            projects: BTreeMap::new(),
            saml: None,
            sts: StsConfig::default(),
            // A small memory tier; no disk tier (it would need a key or `encrypt = false`).
            cache: Some(CacheConfig {
                memory_bytes: defaults::CACHE_MEMORY_BYTES,
                chunk_bytes: defaults::CACHE_CHUNK_BYTES,
                metadata_ttl: Duration::from_secs(defaults::CACHE_METADATA_TTL_SECS),
                disk: None,
                bypass: std::collections::BTreeSet::new(),
            }),
            redis: None,
            images: ImagesConfig::default(),
            video: VideoConfig::default(),
        })
    }
}
