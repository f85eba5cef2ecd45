//! The config file exactly as written: serde structs that mirror the TOML layout.
//!
//! Every value is wrapped in [`Spanned`] so that `validate.rs` can point an error at its line and
//! column, and every field is optional so that a missing key becomes a validation error collected
//! with all the others instead of stopping deserialization. Integers are read as `i64` for the same
//! reason: a negative or zero limit is reported by validation, with the key's bounds.
//!
//! `deny_unknown_fields` makes a misspelt key an error that lists the valid keys. Nothing outside
//! `config/` sees these types; the rest of the crate uses the validated types in `mod.rs`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub listener: Option<Spanned<RawListener>>,
    pub admin: Option<Spanned<RawAdmin>>,
    pub limits: Option<Spanned<RawLimits>>,
    pub sources: Option<Spanned<BTreeMap<Spanned<String>, Spanned<RawSource>>>>,
    pub network: Option<Spanned<RawNetwork>>,
    pub rate_limits: Option<Spanned<RawRateLimits>>,
    pub audit: Option<Spanned<RawAudit>>,
    pub cors: Option<Spanned<RawCors>>,
    pub identity: Option<Spanned<RawIdentity>>,
    pub roles: Option<Spanned<BTreeMap<Spanned<String>, Spanned<RawRole>>>>,
    pub projects: Option<Spanned<BTreeMap<Spanned<String>, Spanned<RawProject>>>>,
    pub saml: Option<Spanned<RawSaml>>,
    pub sts: Option<Spanned<RawSts>>,
    pub cache: Option<Spanned<RawCache>>,
    pub redis: Option<Spanned<RawRedis>>,
    pub images: Option<Spanned<RawImages>>,
    pub video: Option<Spanned<RawVideo>>,
}

/// `[redis]`: shared state of several nodes. `password` and `seal_key` are secret references.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    pub url: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub username: Option<Spanned<String>>,
    pub password: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub connect_timeout_ms: Option<Spanned<i64>>,
    pub command_timeout_ms: Option<Spanned<i64>>,
    pub connections: Option<Spanned<i64>>,
    pub node_name: Option<Spanned<String>>,
    pub sync_interval_ms: Option<Spanned<i64>>,
    pub refuse_tokens_issued_during_outage: Option<Spanned<bool>>,
    /// SAML sessions: `env:NAME` or `file:PATH`, 32 bytes as 64 hex characters.
    pub seal_key: Option<Spanned<String>>,
    /// Rate limits: per-node share of a quota while Redis is down.
    pub expected_nodes: Option<Spanned<i64>>,
}

/// `[images]`: derived images (IIIF). Counts in pixels, sizes in bytes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawImages {
    pub enabled: Option<Spanned<bool>>,
    pub base_url: Option<Spanned<String>>,
    pub max_source_pixels: Option<Spanned<i64>>,
    pub max_tiled_source_pixels: Option<Spanned<i64>>,
    pub max_output_pixels: Option<Spanned<i64>>,
    pub max_output_side: Option<Spanned<i64>>,
    pub max_frames: Option<Spanned<i64>>,
    pub max_source_bytes: Option<Spanned<i64>>,
    pub workers: Option<Spanned<i64>>,
    pub queue: Option<Spanned<i64>>,
    pub job_timeout_secs: Option<Spanned<i64>>,
    pub tile_size: Option<Spanned<i64>>,
}

/// `[video]`: derived video (ffmpeg, ffprobe). Times in seconds, sizes in bytes, rates in bits
/// per second.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVideo {
    pub enabled: Option<Spanned<bool>>,
    pub ffmpeg: Option<Spanned<String>>,
    pub ffprobe: Option<Spanned<String>>,
    pub jobs: Option<Spanned<i64>>,
    pub queue: Option<Spanned<i64>>,
    pub job_timeout_secs: Option<Spanned<i64>>,
    pub transcode_timeout_secs: Option<Spanned<i64>>,
    pub max_duration_secs: Option<Spanned<i64>>,
    pub max_width: Option<Spanned<i64>>,
    pub max_height: Option<Spanned<i64>>,
    pub max_pixels: Option<Spanned<i64>>,
    pub max_streams: Option<Spanned<i64>>,
    pub max_bit_rate: Option<Spanned<i64>>,
    pub max_source_bytes: Option<Spanned<i64>>,
    pub containers: Option<Spanned<Vec<Spanned<String>>>>,
    pub video_codecs: Option<Spanned<Vec<Spanned<String>>>>,
    pub audio_codecs: Option<Spanned<Vec<Spanned<String>>>>,
    pub preset: Option<Spanned<String>>,
    pub crf: Option<Spanned<i64>>,
    pub max_output_side: Option<Spanned<i64>>,
    pub segment_secs: Option<Spanned<i64>>,
    pub max_output_width: Option<Spanned<i64>>,
    pub work_dir: Option<Spanned<String>>,
    pub store_bytes: Option<Spanned<i64>>,
}

/// `[cache]`: the object cache. Sizes in bytes; `key` is a secret reference.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub memory_bytes: Option<Spanned<i64>>,
    pub chunk_bytes: Option<Spanned<i64>>,
    pub metadata_ttl_secs: Option<Spanned<i64>>,
    pub disk_dir: Option<Spanned<String>>,
    pub disk_bytes: Option<Spanned<i64>>,
    /// `env:NAME` or `file:PATH`: 32 bytes written as 64 hex characters.
    pub key: Option<Spanned<String>>,
    pub key_id: Option<Spanned<String>>,
    /// `encrypt = false`: run the disk tier without a key (entries stored in the clear).
    pub encrypt: Option<Spanned<bool>>,
}

/// `[sts]`: the STS endpoint for SAML sessions and delegated roles.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSts {
    pub region: Option<Spanned<String>>,
    pub endpoint: Option<Spanned<String>>,
    pub timeout_secs: Option<Spanned<i64>>,
    /// The gateway's own keys for AssumeRole: `"default"` or a static-keys table.
    pub credentials: Option<Spanned<RawCredentials>>,
}

/// `[saml]`: SAML single sign-on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSaml {
    pub sp_entity_id: Option<Spanned<String>>,
    pub acs_url: Option<Spanned<String>>,
    pub max_session_secs: Option<Spanned<i64>>,
    pub max_response_age_secs: Option<Spanned<i64>>,
    pub login_cookie_key: Option<Spanned<String>>,
    pub idp: Option<Spanned<RawSamlIdp>>,
}

/// `[saml.idp]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSamlIdp {
    pub entity_id: Option<Spanned<String>>,
    pub sso_url: Option<Spanned<String>>,
    pub certificates: Option<Spanned<Vec<Spanned<String>>>>,
    pub allow_idp_initiated: Option<Spanned<bool>>,
    pub clock_skew_secs: Option<Spanned<i64>>,
    pub role_choice: Option<Spanned<String>>,
    pub roles: Option<Spanned<Vec<Spanned<RawSamlRole>>>>,
}

/// `[[saml.idp.roles]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSamlRole {
    pub role_arn: Option<Spanned<String>>,
    pub provider_arn: Option<Spanned<String>>,
    pub gateway_role: Option<Spanned<String>>,
    pub project: Option<Spanned<String>>,
}

/// A list of CIDR strings, each with its own span.
pub(super) type RawCidrList = Spanned<Vec<Spanned<String>>>;

/// `[network]`: allow/deny lists, trusted proxies, PROXY protocol peers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    pub allow: Option<RawCidrList>,
    pub deny: Option<RawCidrList>,
    pub trusted_proxies: Option<RawCidrList>,
    pub proxy_protocol: Option<RawCidrList>,
    pub proxy_protocol_timeout_ms: Option<Spanned<i64>>,
    pub sources: Option<Spanned<BTreeMap<Spanned<String>, Spanned<RawSourceLists>>>>,
}

/// `[network.sources.NAME]`: lists that narrow the global ones for one source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSourceLists {
    pub allow: Option<RawCidrList>,
    pub deny: Option<RawCidrList>,
}

/// `[identity]`: token verification.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    pub audience: Option<Spanned<String>>,
    pub issuer: Option<Spanned<String>>,
    pub clock_skew_secs: Option<Spanned<i64>>,
    pub cookie_name: Option<Spanned<String>>,
    pub keys: Option<Spanned<Vec<Spanned<RawKey>>>>,
    pub jwks: Option<Spanned<RawJwks>>,
    pub use_window_max_secs: Option<Spanned<i64>>,
}

/// `[[identity.keys]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    pub kid: Option<Spanned<String>>,
    pub alg: Option<Spanned<String>>,
    pub secret: Option<Spanned<String>>,
    pub public_key: Option<Spanned<String>>,
    pub private_key: Option<Spanned<String>>,
    pub allow_non_expiring: Option<Spanned<bool>>,
}

/// `[identity.jwks]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJwks {
    pub url: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub refresh_min_interval_secs: Option<Spanned<i64>>,
}

/// `[roles.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRole {
    pub read_original: Option<Spanned<bool>>,
    pub read_derived: Option<Spanned<bool>>,
    pub rank: Option<Spanned<i64>>,
}

/// `[projects.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProject {
    pub sources: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[audit]`: the audit log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub destination: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub max_bytes: Option<Spanned<i64>>,
    pub keep: Option<Spanned<i64>>,
}

/// `[cors]`: cross-origin access for labeling UIs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCors {
    pub allowed_origins: Option<Spanned<Vec<Spanned<String>>>>,
    pub max_age_secs: Option<Spanned<i64>>,
    pub any_origin_for_token_requests: Option<Spanned<bool>>,
}

/// `[listener]`: the TLS data listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub addr: Option<Spanned<String>>,
    pub tls_cert: Option<Spanned<String>>,
    pub tls_key: Option<Spanned<String>>,
    pub dev_certificate_dir: Option<Spanned<String>>,
    pub hsts_max_age_secs: Option<Spanned<i64>>,
    pub hsts_include_subdomains: Option<Spanned<bool>>,
    pub hsts_preload: Option<Spanned<bool>>,
}

/// `[admin]`: the plain-HTTP admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub addr: Option<Spanned<String>>,
    /// `env:NAME` or `file:PATH`: the bearer token of the `/admin/*` API.
    pub token: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    pub reload_poll_secs: Option<Spanned<i64>>,
}

/// `[rate_limits]`: stage 4 (admit). Every key optional, defaults in `defaults.rs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimits {
    pub per_ip_rps: Option<Spanned<i64>>,
    pub per_ip_burst: Option<Spanned<i64>>,
    pub per_subject_rps: Option<Spanned<i64>>,
    pub per_subject_burst: Option<Spanned<i64>>,
    pub max_connections_per_ip: Option<Spanned<i64>>,
}

/// `[limits]`: every key optional, defaults in `defaults.rs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub tls_handshake_timeout_secs: Option<Spanned<i64>>,
    pub header_read_timeout_secs: Option<Spanned<i64>>,
    pub idle_timeout_secs: Option<Spanned<i64>>,
    pub max_connection_age_secs: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub h2_max_concurrent_streams: Option<Spanned<i64>>,
    pub h2_max_header_list_bytes: Option<Spanned<i64>>,
    pub h2_max_pending_reset_streams: Option<Spanned<i64>>,
    pub h2_max_local_error_reset_streams: Option<Spanned<i64>>,
    pub shutdown_grace_secs: Option<Spanned<i64>>,
    pub upstream_connect_timeout_ms: Option<Spanned<i64>>,
    pub upstream_first_byte_timeout_secs: Option<Spanned<i64>>,
    pub upstream_idle_timeout_secs: Option<Spanned<i64>>,
    pub upstream_max_retries: Option<Spanned<i64>>,
}

/// `[sources.NAME]`: one flat struct for every kind, so that a key of the wrong kind (`bucket` on
/// an fs source) is reported by validation with a message naming the kind it belongs to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub kind: Option<Spanned<String>>,
    // kind = "fs"
    pub root: Option<Spanned<String>>,
    // kind = "s3"
    pub bucket: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub region: Option<Spanned<String>>,
    pub endpoint: Option<Spanned<String>>,
    pub path_style: Option<Spanned<bool>>,
    pub credentials: Option<Spanned<RawCredentials>>,
    /// Any kind: `cache = false` keeps this source out of `[cache]`.
    pub cache: Option<Spanned<bool>>,
}

/// `credentials = "default"`, `"saml"`, `{ access_key_id = ..., secret_access_key = ... }` or
/// `{ assume_role = ..., external_id = ..., session_name = ..., duration_secs = ... }`.
///
/// Hand-written rather than `#[serde(untagged)]`: an untagged enum buffers its input and would
/// lose the spans of the fields inside the table.
#[derive(Debug)]
pub(super) enum RawCredentials {
    /// A bare string; `"default"` and `"saml"` are valid. Kept whole so validation can reject the rest
    /// (without printing it: it could be a pasted secret).
    Named(String),
    /// Boxed: the table is much larger than the name.
    Static(Box<RawStaticCredentials>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStaticCredentials {
    pub access_key_id: Option<Spanned<String>>,
    pub secret_access_key: Option<Spanned<String>>,
    // The delegated-role table (validation refuses a mix with the static keys).
    pub assume_role: Option<Spanned<String>>,
    pub external_id: Option<Spanned<String>>,
    pub session_name: Option<Spanned<String>>,
    pub duration_secs: Option<Spanned<i64>>,
}

impl<'de> Deserialize<'de> for RawCredentials {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CredentialsVisitor;

        impl<'de> Visitor<'de> for CredentialsVisitor {
            type Value = RawCredentials;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "\"default\", \"saml\", a table { access_key_id = \"...\", secret_access_key = \
                     \"env:NAME\" } or a table { assume_role = \"arn:...\", external_id = \"...\" }",
                )
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<RawCredentials, E> {
                Ok(RawCredentials::Named(value.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawCredentials, A::Error> {
                RawStaticCredentials::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|table| RawCredentials::Static(Box::new(table)))
            }
        }

        deserializer.deserialize_any(CredentialsVisitor)
    }
}
