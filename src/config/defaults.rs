//! Every default limit and timeout, in one place, with units in the names.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::{Limits, RateLimits};

pub const DEFAULT_DATA_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8443);
pub const DEFAULT_ADMIN_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);

pub const TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
pub const HEADER_READ_TIMEOUT_SECS: u64 = 10;
pub const IDLE_TIMEOUT_SECS: u64 = 60;
/// An hour: far longer than any ordinary page load, so a client rarely meets it, and a download
/// in flight at that age still finishes; yet a bound on what one connection can hold: a
/// reloaded TLS certificate, moved network rules tied to a connection, and load balancing across
/// replicas all reach every client within the hour, and no one connection can be kept open
/// indefinitely by a client that keeps sending requests.
pub const MAX_CONNECTION_AGE_SECS: u64 = 3_600;
pub const MAX_CONNECTIONS: usize = 10_000;
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
pub const H2_MAX_PENDING_RESET_STREAMS: usize = 20;
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
pub const SHUTDOWN_GRACE_SECS: u64 = 30;
pub const UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 3_000;
pub const UPSTREAM_FIRST_BYTE_TIMEOUT_SECS: u64 = 15;
pub const UPSTREAM_IDLE_TIMEOUT_SECS: u64 = 30;
pub const UPSTREAM_MAX_RETRIES: u32 = 2;
/// First pause between two attempts of one upstream call; the SDK doubles it, with jitter.
/// The SDK's own default (1 s) is too slow for a request a browser is waiting on.
pub const RETRY_INITIAL_BACKOFF_MS: u64 = 100;
/// Longest pause between two attempts of one upstream call.
pub const RETRY_MAX_BACKOFF_MS: u64 = 1_000;
/// Largest header block accepted from a store or STS (names and values of every header line,
/// summed). S3 sends a few KiB at most (user metadata is capped at 2 KiB); anything larger is
/// refused as a broken answer (502) and none of it reaches the client.
pub const UPSTREAM_MAX_HEADER_BYTES: usize = 64 * 1024;

/// Time a PROXY-protocol peer has to send its header, in milliseconds.
pub const PROXY_PROTOCOL_TIMEOUT_MS: u64 = 3_000;
pub const PROXY_PROTOCOL_TIMEOUT_MS_MAX: u64 = 60_000;
/// What the embedded default lets in.
pub const LOOPBACK_NETS: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// `[admin]`: where admin API changes are kept, relative to the config file's directory (or
/// the working directory for the embedded default).
pub const STATE_DIR: &str = ".bucketgate/state";
/// How often the config file is checked for a change.
pub const RELOAD_POLL_SECS: u64 = 2;
pub const RELOAD_POLL_SECS_MAX: u64 = 3_600;
/// Largest admin API request body.
pub const ADMIN_BODY_MAX_BYTES: usize = 64 * 1024;

/// `[rate_limits]` (stage 4, admit).
pub const PER_IP_RPS: u32 = 1_000;
pub const PER_IP_BURST: u32 = 2_000;
pub const PER_SUBJECT_RPS: u32 = 200;
pub const PER_SUBJECT_BURST: u32 = 400;
pub const MAX_CONNECTIONS_PER_IP: usize = 256;
pub const RATE_MAX: u64 = 1_000_000;
pub const MAX_CONNECTIONS_PER_IP_MAX: u64 = 1_000_000;
/// How often idle rate-limiter keys are evicted.
pub const RATE_LIMIT_EVICT_SECS: u64 = 60;
/// Rate limits shared through Redis (`state/redis/admission.rs`): a node leases at most this
/// fraction (1/n) of its share of a quota per round trip, so the tokens leased but not yet
/// spent by all nodes stay within 10% of the quota.
pub const RATE_LIMIT_LEASE_DIVISOR: u32 = 10;
/// Leased tokens unspent after this long are dropped (the node asks Redis again).
pub const RATE_LIMIT_LEASE_TTL_MS: u64 = 1_000;
/// While Redis is unreachable, one request per this interval tries it again; the others use
/// the per-node quotas without waiting on it.
pub const RATE_LIMIT_REDIS_RETRY_MS: u64 = 1_000;

/// Region used by an s3 source that names none.
pub const DEFAULT_S3_REGION: &str = "us-east-1";

// Upper bounds accepted by config validation. A value above one is almost certainly a typo (an
// extra digit, or milliseconds written into a `_secs` key); the lower bound is 1 everywhere except
// `upstream_max_retries`, which may be 0.
pub const TLS_HANDSHAKE_TIMEOUT_SECS_MAX: u64 = 300;
pub const HEADER_READ_TIMEOUT_SECS_MAX: u64 = 300;
pub const IDLE_TIMEOUT_SECS_MAX: u64 = 3_600;
pub const MAX_CONNECTION_AGE_SECS_MAX: u64 = 86_400;
pub const MAX_CONNECTIONS_MAX: u64 = 1_000_000;
pub const MAX_HEADERS_MAX: u64 = 1_024;
/// hyper refuses a smaller http/1.1 read buffer.
pub const MAX_HEADER_BYTES_MIN: u64 = 8 * 1024;
pub const MAX_HEADER_BYTES_MAX: u64 = 1024 * 1024;
pub const H2_MAX_CONCURRENT_STREAMS_MAX: u64 = 10_000;
pub const H2_MAX_HEADER_LIST_BYTES_MAX: u64 = 1024 * 1024;
pub const H2_MAX_PENDING_RESET_STREAMS_MAX: u64 = 10_000;
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS_MAX: u64 = 100_000;
pub const SHUTDOWN_GRACE_SECS_MAX: u64 = 3_600;
pub const UPSTREAM_CONNECT_TIMEOUT_MS_MAX: u64 = 60_000;
pub const UPSTREAM_FIRST_BYTE_TIMEOUT_SECS_MAX: u64 = 600;
pub const UPSTREAM_IDLE_TIMEOUT_SECS_MAX: u64 = 3_600;
pub const UPSTREAM_MAX_RETRIES_MAX: u64 = 10;

/// `[audit]`: rotate the file when it would grow past this many bytes (100 MiB), keeping this many
/// old files; bounds accepted by validation.
pub const AUDIT_MAX_BYTES: u64 = 100 * 1024 * 1024;
pub const AUDIT_MAX_BYTES_MIN: u64 = 4 * 1024;
pub const AUDIT_MAX_BYTES_MAX: u64 = 1024 * 1024 * 1024 * 1024;
pub const AUDIT_KEEP: u32 = 5;
pub const AUDIT_KEEP_MAX: u64 = 1_000;
/// Audit records waiting for the writer; beyond this they are dropped and counted, so a slow
/// disk never blocks a request.
pub const AUDIT_CHANNEL_CAPACITY: usize = 16 * 1024;
/// An audit record keeps at most this many bytes of a request header it quotes (`Origin`,
/// `Range`): attacker text, bounded like any other.
pub const AUDIT_HEADER_VALUE_MAX_BYTES: usize = 256;
/// On shutdown, time given to the audit writer to write what is queued.
pub const AUDIT_FLUSH_TIMEOUT_SECS: u64 = 5;

/// `[cors]`: how long a browser may cache a preflight answer (1-86400).
pub const CORS_MAX_AGE_SECS: u64 = 600;
pub const CORS_MAX_AGE_SECS_MAX: u64 = 86_400;

/// `[listener] hsts_max_age_secs`: one year, the least the HSTS preload list accepts; at most two
/// years (what the preload list recommends; a longer value is likely a typo).
pub const HSTS_MAX_AGE_SECS: u64 = 31_536_000;
pub const HSTS_MAX_AGE_SECS_MAX: u64 = 2 * 31_536_000;

/// `[identity]`: tolerated clock difference for `exp`/`nbf`, and its upper bound.
pub const CLOCK_SKEW_SECS: u64 = 30;
pub const CLOCK_SKEW_SECS_MAX: u64 = 300;
/// `[identity]`: the session cookie that may carry a token.
pub const SESSION_COOKIE_NAME: &str = "bucketgate_session";
/// `[identity.jwks]`: an unknown `kid` triggers at most one JWKS fetch per interval (1-86400).
pub const JWKS_REFRESH_MIN_INTERVAL_SECS: u64 = 60;
pub const JWKS_REFRESH_MIN_INTERVAL_SECS_MAX: u64 = 86_400;
/// One JWKS fetch (connect, TLS, response) must finish within this.
pub const JWKS_FETCH_TIMEOUT_SECS: u64 = 5;
/// Largest JWKS document accepted.
pub const JWKS_MAX_BYTES: usize = 256 * 1024;
/// Shortest HS256 secret accepted (RFC 7518 3.2: at least the hash size).
pub const HS256_MIN_SECRET_BYTES: usize = 32;
/// Longest token accepted; anything longer is refused before it is parsed.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// `[identity] use_window_max_secs`: the longest a use window lasts after its token's first use,
/// the `max` of a token with `idle` but no `max`, and the largest `max` a token may claim
/// (12 h: a long labeling session); at least a minute, at most 7 days (`sign`'s longest TTL).
pub const USE_WINDOW_MAX_SECS: u64 = 12 * 3600;
pub const USE_WINDOW_MAX_SECS_MIN: u64 = 60;
pub const USE_WINDOW_MAX_SECS_MAX: u64 = 7 * 86_400;
/// Live use windows kept in memory (about 100 bytes each); when full, a new window's first use
/// is refused (503) rather than a live one evicted.
pub const USE_WINDOW_MAX_ENTRIES: usize = 200_000;
/// How often lapsed use windows are swept from memory.
pub const USE_WINDOW_SWEEP_SECS: u64 = 60;

/// `[saml]`: longest session; STS AssumeRoleWithSAML accepts 900 s to 12 h.
pub const SAML_MAX_SESSION_SECS: u64 = 8 * 3600;
pub const SAML_MAX_SESSION_SECS_MIN: u64 = 900;
pub const SAML_MAX_SESSION_SECS_MAX: u64 = 12 * 3600;
/// `[saml]`: oldest IssueInstant accepted (plus the IdP's clock skew), and its bounds.
pub const SAML_MAX_RESPONSE_AGE_SECS: u64 = 300;
pub const SAML_MAX_RESPONSE_AGE_SECS_MIN: u64 = 10;
pub const SAML_MAX_RESPONSE_AGE_SECS_MAX: u64 = 3600;
/// Shortest credential lifetime STS grants; a shorter SAML session ends before its credentials.
pub const STS_MIN_DURATION_SECS: u64 = 900;
/// `[saml.idp]`: tolerated clock difference for NotBefore / NotOnOrAfter, and its upper bound.
pub const SAML_CLOCK_SKEW_SECS: u64 = 60;
pub const SAML_CLOCK_SKEW_SECS_MAX: u64 = 300;
/// Sessions held at once; when full, expired ones are dropped and then new logins wait (503).
/// Highest `[roles.NAME] rank` (the seeds use 10 to 50).
pub const ROLE_RANK_MAX: u64 = 1000;
/// Shortest `[saml] login_cookie_key` secret, in bytes.
pub const SAML_LOGIN_COOKIE_KEY_MIN_BYTES: usize = 32;
pub const SAML_MAX_SESSIONS: usize = 100_000;
/// How often expired sessions are dropped even if nobody presents their cookie.
pub const SAML_SESSION_SWEEP_SECS: u64 = 60;
/// Assertion ids remembered by the replay cache.
pub const SAML_REPLAY_CAPACITY: usize = 100_000;
/// How long a login may take at the IdP: the lifetime of the signed login cookie.
pub const SAML_LOGIN_COOKIE_SECS: u64 = 600;
/// Largest `POST /auth/saml/acs` body: the base64 response (at most 256 KiB) url-encoded
/// (`+`, `/`, `=` become three bytes each) plus RelayState.
pub const SAML_ACS_MAX_BODY_BYTES: usize = 800 * 1024;
/// Time a client has to send the ACS form body.
pub const SAML_ACS_BODY_TIMEOUT_SECS: u64 = 10;
/// A GET or HEAD whose framing leaves the body open (an h2 stream without END_STREAM, a chunked
/// http/1.1 GET) has this long to end it, empty, before the request is refused with 408.
pub const EMPTY_BODY_WAIT_SECS: u64 = 2;
/// Longest `return_to` / RelayState kept; longer ones land on `/`.
pub const SAML_RETURN_TO_MAX_BYTES: usize = 2048;

/// `[cache]`: memory tier budget (also the embedded default's, which runs memory only), and its
/// bounds; it must hold at least one chunk.
pub const CACHE_MEMORY_BYTES: u64 = 64 * 1024 * 1024;
pub const CACHE_MEMORY_BYTES_MIN: u64 = 1024 * 1024;
pub const CACHE_MEMORY_BYTES_MAX: u64 = 1 << 40;
/// `[cache] chunk_bytes`: objects are cached in aligned chunks of this size, a power of two.
pub const CACHE_CHUNK_BYTES: u64 = 1024 * 1024;
pub const CACHE_CHUNK_BYTES_MIN: u64 = 256 * 1024;
pub const CACHE_CHUNK_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// `[cache] metadata_ttl_secs`: 0 revalidates on every request.
pub const CACHE_METADATA_TTL_SECS: u64 = 60;
pub const CACHE_METADATA_TTL_SECS_MAX: u64 = 86_400;
/// `[cache] disk_bytes`: bounds of the disk tier's budget; it must hold at least two chunks.
pub const CACHE_DISK_BYTES_MIN: u64 = 1024 * 1024;
pub const CACHE_DISK_BYTES_MAX: u64 = 1 << 50;
/// `[cache] key_id`: longest key id (letters, digits, `.`, `_`, `-`).
pub const CACHE_KEY_ID_MAX_CHARS: usize = 32;
/// Bytes of entries waiting for the disk writer; a put beyond this is dropped (and counted), so
/// a slow disk never holds memory or delays a request.
pub const CACHE_DISK_WRITE_QUEUE_BYTES: u64 = 64 * 1024 * 1024;
/// A disk hit refreshes its file's mtime (the recency the index is rebuilt from at start) at most
/// this often, so a hot entry costs no inode write per hit.
pub const CACHE_DISK_TOUCH_INTERVAL_SECS: u64 = 60;

/// `[sts]`: region and per-call timeout (connect to answer), and the timeout's upper bound.
pub const DEFAULT_STS_REGION: &str = "us-east-1";
pub const STS_TIMEOUT_SECS: u64 = 5;
pub const STS_TIMEOUT_SECS_MAX: u64 = 60;
/// Longest credential lifetime STS grants (AssumeRole caps role chaining lower; STS says so).
pub const STS_MAX_DURATION_SECS: u64 = 12 * 3600;
/// `credentials = { assume_role = ... }`: session name and lifetime when not given.
pub const DELEGATED_SESSION_NAME: &str = "bucketgate";
pub const DELEGATED_DURATION_SECS: u64 = 3600;
/// Delegated credentials are refreshed this long before they expire (at most half their life).
pub const DELEGATED_REFRESH_BEFORE_SECS: u64 = 300;
/// After a failed STS refresh: no new attempt for this long, and the `Retry-After` of the 503
/// a request without valid credentials gets.
pub const DELEGATED_RETRY_AFTER_SECS: u64 = 5;
/// The embedded default's development key: id, audience, and file under `.bucketgate/`.
pub const DEV_KEY_ID: &str = "dev";
pub const DEV_AUDIENCE: &str = "bucketgate";
pub const DEV_KEY_FILE: &str = "dev-hs256.key";
/// Revocations file inside the state directory.
pub const REVOCATIONS_FILE: &str = "revocations.json";

/// `[redis]`: key prefix when none is given (several deployments on one Redis set their own).
pub const REDIS_PREFIX: &str = "bucketgate";
/// Longest `[redis] prefix` and `node_name` (letters, digits, `.`, `_`, `-`).
pub const REDIS_NAME_MAX_CHARS: usize = 64;
/// `[redis] connect_timeout_ms`: time to open a connection (TCP, TLS, AUTH), and its bounds.
pub const REDIS_CONNECT_TIMEOUT_MS: u64 = 1000;
pub const REDIS_CONNECT_TIMEOUT_MS_MIN: u64 = 10;
pub const REDIS_CONNECT_TIMEOUT_MS_MAX: u64 = 30_000;
/// `[redis] command_timeout_ms`: time one command may take before it counts as "Redis down"
/// for that lookup, and its bounds.
pub const REDIS_COMMAND_TIMEOUT_MS: u64 = 250;
pub const REDIS_COMMAND_TIMEOUT_MS_MIN: u64 = 5;
pub const REDIS_COMMAND_TIMEOUT_MS_MAX: u64 = 10_000;
/// `[redis] connections`: multiplexed connections commands are spread over, and the bound.
pub const REDIS_CONNECTIONS: u64 = 4;
pub const REDIS_CONNECTIONS_MAX: u64 = 64;
/// `[redis] sync_interval_ms`: how often a node polls the shared versions (revocations, network
/// lists). A change made on one node is in force on every node within this plus one command;
/// at most 500 so the 1 s promise holds with a slow command.
pub const REDIS_SYNC_INTERVAL_MS: u64 = 200;
pub const REDIS_SYNC_INTERVAL_MS_MIN: u64 = 20;
pub const REDIS_SYNC_INTERVAL_MS_MAX: u64 = 500;
/// `[redis] expected_nodes`: the node count a rate-limit quota is divided by while Redis is
/// down, and its bound.
pub const REDIS_EXPECTED_NODES: u64 = 1;
pub const REDIS_EXPECTED_NODES_MAX: u64 = 1000;
/// Heartbeats for `GET /admin/cluster`: written this often, kept this long (a node not seen for
/// the TTL drops out of the table).
pub const REDIS_HEARTBEAT_SECS: u64 = 2;
pub const REDIS_HEARTBEAT_TTL_SECS: u64 = 10;

/// Bytes read from a backend per body frame: bounds per-response memory.
pub const BODY_CHUNK_BYTES: usize = 64 * 1024;
/// Per-stream h2 send buffer: with the chunk above, what one slow h2 reader can hold in memory.
pub const H2_SEND_BUFFER_BYTES: usize = 32 * 1024;
/// Unsent TLS records rustls may queue per connection (its default is 64 KiB).
pub const TLS_SEND_BUFFER_BYTES: usize = 32 * 1024;
/// Longest decoded object key, in bytes (DESIGN.md "Paths and keys").
pub const MAX_KEY_BYTES: usize = 1024;
/// Pause after an accept error (EMFILE and friends) so the loop does not spin.
pub const ACCEPT_ERROR_BACKOFF_MS: u64 = 50;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tls_handshake_timeout: Duration::from_secs(TLS_HANDSHAKE_TIMEOUT_SECS),
            header_read_timeout: Duration::from_secs(HEADER_READ_TIMEOUT_SECS),
            idle_timeout: Duration::from_secs(IDLE_TIMEOUT_SECS),
            max_connection_age: Duration::from_secs(MAX_CONNECTION_AGE_SECS),
            max_connections: MAX_CONNECTIONS,
            max_headers: MAX_HEADERS,
            max_header_bytes: MAX_HEADER_BYTES,
            h2_max_concurrent_streams: H2_MAX_CONCURRENT_STREAMS,
            h2_max_header_list_bytes: H2_MAX_HEADER_LIST_BYTES,
            h2_max_pending_reset_streams: H2_MAX_PENDING_RESET_STREAMS,
            h2_max_local_error_reset_streams: H2_MAX_LOCAL_ERROR_RESET_STREAMS,
            shutdown_grace: Duration::from_secs(SHUTDOWN_GRACE_SECS),
            upstream_connect_timeout: Duration::from_millis(UPSTREAM_CONNECT_TIMEOUT_MS),
            upstream_first_byte_timeout: Duration::from_secs(UPSTREAM_FIRST_BYTE_TIMEOUT_SECS),
            upstream_idle_timeout: Duration::from_secs(UPSTREAM_IDLE_TIMEOUT_SECS),
            upstream_max_retries: UPSTREAM_MAX_RETRIES,
        }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            per_ip_rps: PER_IP_RPS,
            per_ip_burst: PER_IP_BURST,
            per_subject_rps: PER_SUBJECT_RPS,
            per_subject_burst: PER_SUBJECT_BURST,
            max_connections_per_ip: MAX_CONNECTIONS_PER_IP,
        }
    }
}

// [images]: derived images (src/image/).
/// Pixels of an untiled source (100 MP).
pub const IMAGE_MAX_SOURCE_PIXELS: u64 = 100_000_000;
/// Pixels of a tiled pyramid's full level (only its tiles are decoded): 10 gigapixels.
pub const IMAGE_MAX_TILED_SOURCE_PIXELS: u64 = 10_000_000_000;
/// Output pixels (IIIF maxArea) and the longest output side (maxWidth / maxHeight).
pub const IMAGE_MAX_OUTPUT_PIXELS: u64 = 16_777_216;
pub const IMAGE_MAX_OUTPUT_SIDE: u32 = 8192;
/// Frames an animated source may declare.
pub const IMAGE_MAX_FRAMES: u32 = 1000;
/// Bytes one job may read from the object (the whole file of an untiled source).
pub const IMAGE_MAX_SOURCE_BYTES: u64 = 256 * 1024 * 1024;
/// Decode threads (0 in the file: one per core) and jobs waiting beyond them.
pub const IMAGE_WORKERS: usize = 0;
pub const IMAGE_QUEUE: usize = 64;
/// Time limit of one image job.
pub const IMAGE_JOB_TIMEOUT_SECS: u64 = 20;
/// Tile side advertised in info.json.
pub const IMAGE_TILE_SIZE: u32 = 512;
/// Bounds of the `[images]` keys (the smallest and largest value each accepts).
pub const IMAGE_MAX_SOURCE_PIXELS_MAX: u64 = 1_000_000_000;
pub const IMAGE_MAX_TILED_SOURCE_PIXELS_MAX: u64 = 1_000_000_000_000;
pub const IMAGE_MAX_OUTPUT_PIXELS_MAX: u64 = 268_435_456;
pub const IMAGE_MAX_OUTPUT_SIDE_MAX: u64 = 65_535;
pub const IMAGE_MAX_FRAMES_MAX: u64 = 100_000;
pub const IMAGE_MAX_SOURCE_BYTES_MAX: u64 = 16 * 1024 * 1024 * 1024;
pub const IMAGE_WORKERS_MAX: u64 = 256;
pub const IMAGE_QUEUE_MAX: u64 = 65_536;
pub const IMAGE_JOB_TIMEOUT_SECS_MAX: u64 = 600;
pub const IMAGE_TILE_SIZE_MIN: u64 = 64;
pub const IMAGE_TILE_SIZE_MAX: u64 = 4096;
/// Probes (an image's header facts and a TIFF's parsed directories) kept per object version,
/// so a tile does not re-read directories.
pub const IMAGE_PROBE_ENTRIES: usize = 4096;
/// Renders of derived outputs kept whole in the cache's memory tier up to this size; larger ones
/// are sent without being stored.
pub const IMAGE_CACHED_OUTPUT_BYTES_MAX: u64 = 16 * 1024 * 1024;

// [video]: derived video (src/video/).
/// Tools: names looked up in PATH, or paths.
pub const VIDEO_FFMPEG: &str = "ffmpeg";
pub const VIDEO_FFPROBE: &str = "ffprobe";
/// Children at once (0 in the file: one per core) and jobs waiting beyond them.
pub const VIDEO_JOBS: usize = 0;
pub const VIDEO_QUEUE: usize = 32;
/// Time limit of a short job (probe, poster, frame, segment, sprite) and of a whole-file one.
pub const VIDEO_JOB_TIMEOUT_SECS: u64 = 30;
pub const VIDEO_TRANSCODE_TIMEOUT_SECS: u64 = 3600;
/// Source limits: duration (4 h), coded size, streams, overall bit rate, object size.
pub const VIDEO_MAX_DURATION_SECS: u64 = 4 * 3600;
pub const VIDEO_MAX_WIDTH: u32 = 8192;
pub const VIDEO_MAX_HEIGHT: u32 = 8192;
pub const VIDEO_MAX_PIXELS: u64 = 8192 * 4320;
pub const VIDEO_MAX_STREAMS: u32 = 16;
pub const VIDEO_MAX_BIT_RATE: u64 = 400_000_000;
pub const VIDEO_MAX_SOURCE_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// Codecs accepted by default (ffprobe's codec_name).
pub const VIDEO_CODECS: &[&str] = &[
    "h264",
    "hevc",
    "vp8",
    "vp9",
    "av1",
    "mpeg4",
    "mpeg2video",
    "mpeg1video",
    "prores",
    "mjpeg",
];
pub const AUDIO_CODECS: &[&str] = &[
    "aac",
    "mp3",
    "opus",
    "vorbis",
    "ac3",
    "eac3",
    "flac",
    "alac",
    "mp2",
    "pcm_s16le",
    "pcm_s24le",
    "pcm_s16be",
    "pcm_f32le",
];
/// Transcodes: x264 preset and CRF, longest output side.
pub const VIDEO_PRESET: &str = "veryfast";
pub const VIDEO_CRF: u8 = 23;
pub const VIDEO_MAX_OUTPUT_SIDE: u32 = 1920;
/// Target HLS segment length.
pub const VIDEO_SEGMENT_SECS: u32 = 4;
/// Widest poster, frame or sprite cell a `w` may ask for.
pub const VIDEO_MAX_OUTPUT_WIDTH: u32 = 3840;
/// The rendition store's byte budget (web.mp4 files), in the work dir.
pub const VIDEO_STORE_BYTES: u64 = 20 * 1024 * 1024 * 1024;
/// Probes (ffprobe's facts and the frame index) kept per object version.
pub const VIDEO_PROBE_ENTRIES: usize = 1024;
/// Bounds of the `[video]` keys.
pub const VIDEO_JOBS_MAX: u64 = 256;
pub const VIDEO_QUEUE_MAX: u64 = 65_536;
pub const VIDEO_JOB_TIMEOUT_SECS_MAX: u64 = 600;
pub const VIDEO_TRANSCODE_TIMEOUT_SECS_MAX: u64 = 86_400;
pub const VIDEO_MAX_DURATION_SECS_MAX: u64 = 7 * 86_400;
pub const VIDEO_MAX_SIDE_MAX: u64 = 65_535;
pub const VIDEO_MAX_PIXELS_MAX: u64 = 1 << 32;
pub const VIDEO_MAX_STREAMS_MAX: u64 = 1024;
pub const VIDEO_MAX_BIT_RATE_MAX: u64 = 100_000_000_000;
pub const VIDEO_MAX_SOURCE_BYTES_MAX: u64 = 1 << 40;
pub const VIDEO_CRF_MAX: u64 = 51;
/// Narrowest output (`w`, `max_output_side`, `max_output_width`) and the widest.
pub const VIDEO_OUTPUT_SIDE_MIN: u64 = 16;
pub const VIDEO_OUTPUT_SIDE_MAX: u64 = 16_384;
pub const VIDEO_SEGMENT_SECS_MIN: u64 = 2;
pub const VIDEO_SEGMENT_SECS_MAX: u64 = 30;
pub const VIDEO_STORE_BYTES_MIN: u64 = 1024 * 1024;
pub const VIDEO_STORE_BYTES_MAX: u64 = 1 << 44;
/// The containers `[video] containers` may name (and the default: all of them).
pub const VIDEO_CONTAINERS: &[&str] = &["mov", "matroska", "avi", "mpegts"];
/// x264's presets, the values `[video] preset` may take.
pub const VIDEO_PRESETS: &[&str] = &[
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];
/// Renditions made whole in memory (posters, frames, segments, sprites) are kept in the cache up
/// to this size; larger ones are sent without being stored.
pub const VIDEO_CACHED_OUTPUT_BYTES_MAX: u64 = 32 * 1024 * 1024;
