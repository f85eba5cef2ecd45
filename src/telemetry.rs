//! Logging setup and the Prometheus metrics. Every metric name lives in this file.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log shippers).
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// Install the global tracing subscriber. `RUST_LOG` overrides the default `info` level.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless; ignore the error it returns.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        // Colour only on a terminal: escape codes in a file or a journal are noise.
        LogFormat::Pretty => builder
            .compact()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamError {
    /// The configured source name (never an endpoint or a bucket).
    pub source: String,
    /// `BackendError::kind()` (`unreachable`, `timeout`, `stalled`, `body_broken`,
    /// `access_denied`, `config_fault` for the gateway's own credentials or settings refused,
    /// ...), or
    /// `body_truncated` / `body_overlong` for a body whose length disagreed with its head.
    /// Which errors count is decided in `pipeline::respond::upstream_error_kind`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitedLabel {
    /// `ip` or `subject`.
    pub key: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabel {
    /// `ok` or `error`.
    pub outcome: &'static str,
    /// `signal`, `file` or `api`.
    pub trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NetworkDecisionLabel {
    /// `allow`, `deny`, or `malformed` (a bad forwarded header from a trusted proxy).
    pub outcome: &'static str,
    /// `global`, `source`, or `forwarded`. Never a CIDR or an address: bounded cardinality.
    pub list: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheTierLabel {
    /// `memory` or `disk`; for bytes served also `origin` (a fill streamed to its waiters).
    pub tier: &'static str,
}

/// All gateway metrics. One instance per running gateway (tests run several in one process).
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    pub response_bytes: Family<RouteLabel, Counter>,
    pub request_duration: Family<RouteLabel, Histogram>,
    pub aborted_responses: Family<RouteLabel, Counter>,
    pub open_connections: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub rejected_connections: Counter<u64, AtomicU64>,
    pub tls_handshake_failures: Counter<u64, AtomicU64>,
    pub accept_errors: Counter<u64, AtomicU64>,
    pub upstream_errors: Family<UpstreamError, Counter>,
    pub network_decisions: Family<NetworkDecisionLabel, Counter>,
    pub proxy_protocol_failures: Counter<u64, AtomicU64>,
    pub rate_limited: Family<RateLimitedLabel, Counter>,
    pub rejected_connections_per_ip: Counter<u64, AtomicU64>,
    pub config_reloads: Family<ReloadLabel, Counter>,
    pub audit_dropped_records: Counter<u64, AtomicU64>,
    pub audit_write_errors: Counter<u64, AtomicU64>,
    /// Chunk lookups answered by a tier, by tier (`memory`, `disk`).
    pub cache_hits: Family<CacheTierLabel, Counter>,
    /// Chunk lookups a tier could not answer, by tier (`memory`, `disk`).
    pub cache_misses: Family<CacheTierLabel, Counter>,
    /// Body bytes handed to responses, by where they came from (`memory`, `disk`, `origin`).
    pub cache_served_bytes: Family<CacheTierLabel, Counter>,
    /// Bytes the cache's fills read from the origin (each once, however many waited on them).
    pub cache_origin_bytes: Counter<u64, AtomicU64>,
    /// Chunk fills the cache started (one origin request each), and those that failed.
    pub cache_fills: Counter<u64, AtomicU64>,
    pub cache_fill_failures: Counter<u64, AtomicU64>,
    /// Readers that joined a fill another request led instead of fetching themselves.
    pub cache_coalesced_waiters: Counter<u64, AtomicU64>,
    /// Entries evicted to stay within a tier's budget, by tier.
    pub cache_evictions: Family<CacheTierLabel, Counter>,
    /// Bytes held by the memory tier.
    pub cache_memory_bytes: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Bytes the disk tier's entry files take (set by the disk tier).
    pub cache_disk_bytes: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Disk entries that failed to decrypt or verify (each deleted, treated as a miss).
    pub cache_integrity_failures: Counter<u64, AtomicU64>,
    pub cache_disk_write_errors: Counter<u64, AtomicU64>,
    pub cache_disk_dropped_writes: Counter<u64, AtomicU64>,
    pub cors_unlisted_origin_responses: Family<RouteLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("bucketgate");
        let requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "http_requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        let response_bytes = Family::<RouteLabel, Counter>::default();
        registry.register(
            "http_response_body_bytes",
            "Object body bytes handed to client connections, by route (small error bodies \
             are not counted; a cut-off body counts what was sent before the cut)",
            response_bytes.clone(),
        );
        let request_duration = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            // 0.5 ms .. ~16 s
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from request head to response head, by route",
            request_duration.clone(),
        );
        let aborted_responses = Family::<RouteLabel, Counter>::default();
        registry.register(
            "http_aborted_responses",
            "Responses whose body was cut off (upstream failure or client gone)",
            aborted_responses.clone(),
        );
        let open_connections = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "open_connections",
            "Open client connections on the data listener",
            open_connections.clone(),
        );
        let rejected_connections = Counter::<u64, AtomicU64>::default();
        registry.register(
            "rejected_connections",
            "Connections closed at accept because max_connections was reached",
            rejected_connections.clone(),
        );
        let tls_handshake_failures = Counter::<u64, AtomicU64>::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_handshake_failures.clone(),
        );
        let accept_errors = Counter::<u64, AtomicU64>::default();
        registry.register(
            "accept_errors",
            "Errors from accept() (EMFILE and the like)",
            accept_errors.clone(),
        );
        let upstream_errors = Family::<UpstreamError, Counter>::default();
        registry.register(
            "upstream_errors",
            "Store failures, once per failed request, by source and kind: before the response \
             head (unreachable, timeout, access_denied, config_fault, ...) or mid-body (body_broken, stalled, \
             io, body_truncated, body_overlong). A missing object (404) and a client that goes \
             away are not upstream errors",
            upstream_errors.clone(),
        );
        let rate_limited = Family::<RateLimitedLabel, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429, by the limit that refused them (ip or subject)",
            rate_limited.clone(),
        );
        let rejected_connections_per_ip = Counter::<u64, AtomicU64>::default();
        registry.register(
            "rejected_connections_per_ip",
            "Connections closed at accept because their address had max_connections_per_ip open",
            rejected_connections_per_ip.clone(),
        );
        let config_reloads = Family::<ReloadLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads and admin changes, by outcome (ok, error) and trigger (signal, file, api)",
            config_reloads.clone(),
        );
        let network_decisions = Family::<NetworkDecisionLabel, Counter>::default();
        registry.register(
            "network_decisions",
            "Network stage decisions, by outcome and the list that decided",
            network_decisions.clone(),
        );
        let proxy_protocol_failures = Counter::<u64, AtomicU64>::default();
        registry.register(
            "proxy_protocol_failures",
            "Connections closed for a missing, malformed or late PROXY protocol header",
            proxy_protocol_failures.clone(),
        );
        let audit_dropped_records = Counter::<u64, AtomicU64>::default();
        registry.register(
            "audit_dropped_records",
            "Audit records dropped because the writer fell behind (queue full)",
            audit_dropped_records.clone(),
        );
        let audit_write_errors = Counter::<u64, AtomicU64>::default();
        registry.register(
            "audit_write_errors",
            "Failed writes (or rotations) of the audit log",
            audit_write_errors.clone(),
        );
        let cache_hits = Family::<CacheTierLabel, Counter>::default();
        registry.register(
            "cache_hits",
            "Cache chunk lookups answered, by tier (memory, disk)",
            cache_hits.clone(),
        );
        let cache_misses = Family::<CacheTierLabel, Counter>::default();
        registry.register(
            "cache_misses",
            "Cache chunk lookups a tier could not answer, by tier (memory, disk)",
            cache_misses.clone(),
        );
        let cache_served_bytes = Family::<CacheTierLabel, Counter>::default();
        registry.register(
            "cache_served_bytes",
            "Body bytes the cache handed to responses, by where they came from (memory, disk, \
             origin: a fill streamed to its waiters)",
            cache_served_bytes.clone(),
        );
        let cache_origin_bytes = Counter::<u64, AtomicU64>::default();
        registry.register(
            "cache_origin_bytes",
            "Bytes the cache's fills read from the origin (once per fill, however many waited)",
            cache_origin_bytes.clone(),
        );
        let cache_fills = Counter::<u64, AtomicU64>::default();
        registry.register(
            "cache_fills",
            "Chunk fills the cache started (one ranged origin GET each)",
            cache_fills.clone(),
        );
        let cache_fill_failures = Counter::<u64, AtomicU64>::default();
        registry.register(
            "cache_fill_failures",
            "Chunk fills that failed (every waiter's response aborted, nothing stored)",
            cache_fill_failures.clone(),
        );
        let cache_coalesced_waiters = Counter::<u64, AtomicU64>::default();
        registry.register(
            "cache_coalesced_waiters",
            "Chunk reads that joined a fill another request led",
            cache_coalesced_waiters.clone(),
        );
        let cache_evictions = Family::<CacheTierLabel, Counter>::default();
        registry.register(
            "cache_evictions",
            "Cache entries evicted to stay within a tier's byte budget, by tier",
            cache_evictions.clone(),
        );
        let cache_memory_bytes = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "cache_memory_bytes",
            "Bytes held by the cache's memory tier",
            cache_memory_bytes.clone(),
        );
        let cache_disk_bytes = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "cache_disk_bytes",
            "Bytes the cache's disk tier entry files take",
            cache_disk_bytes.clone(),
        );
        let cache_integrity_failures = Counter::<u64, AtomicU64>::default();
        registry.register(
            "cache_integrity_failures",
            "Disk cache entries that failed to decrypt or verify (deleted, treated as a miss)",
            cache_integrity_failures.clone(),
        );
        let cache_disk_write_errors = Counter::<u64, AtomicU64>::default();
        registry.register(
            "cache_disk_write_errors",
            "Failed disk cache writes (full disk, I/O error); the first one stops disk writes \
             until the next start",
            cache_disk_write_errors.clone(),
        );
        let cache_disk_dropped_writes = Counter::<u64, AtomicU64>::default();
        registry.register(
            "cache_disk_dropped_writes",
            "Disk cache writes dropped because the write queue was full (a slow disk)",
            cache_disk_dropped_writes.clone(),
        );
        let cors_unlisted_origin_responses = Family::<RouteLabel, Counter>::default();
        registry.register(
            "cors_unlisted_origin_responses",
            "Responses (preflight refusals included) to a request whose Origin [cors] does not \
             list, by route: the browser hides them from the page, so a labeling app's missing \
             [cors] entry shows here. Never labelled by origin (attacker text, unbounded)",
            cors_unlisted_origin_responses.clone(),
        );
        Metrics {
            registry,
            cors_unlisted_origin_responses,
            cache_hits,
            cache_misses,
            cache_served_bytes,
            cache_origin_bytes,
            cache_fills,
            cache_fill_failures,
            cache_coalesced_waiters,
            cache_evictions,
            cache_memory_bytes,
            cache_disk_bytes,
            cache_integrity_failures,
            cache_disk_write_errors,
            cache_disk_dropped_writes,
            network_decisions,
            proxy_protocol_failures,
            requests,
            response_bytes,
            request_duration,
            aborted_responses,
            open_connections,
            rejected_connections,
            tls_handshake_failures,
            accept_errors,
            upstream_errors,
            rate_limited,
            rejected_connections_per_ip,
            config_reloads,
            audit_dropped_records,
            audit_write_errors,
        }
    }

    /// One store failure of the source `source` (the configured name).
    pub fn upstream_error(&self, source: &str, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamError {
                source: source.to_owned(),
                kind,
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Display an error with its whole source chain: `a: b: c`.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}
