//! `[limits]` (timeouts, sizes, retries) and `[rate_limits]` — a child of `validate/mod.rs`, so
//! it shares the [`Checker`] and its range check ([`Checker::bounded`]).

use std::fmt;
use std::time::Duration;

use toml::Spanned;

use super::super::defaults as d;
use super::super::file::RawLimits;
use super::super::file::RawRateLimits;
use super::super::{Limits, RateLimits};
use super::Checker;

impl Checker<'_> {
    // ---- [rate_limits] ----

    pub(super) fn rate_limits(&mut self, raw: Option<&RawRateLimits>) -> Option<RateLimits> {
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

    // ---- [limits] ----

    pub(super) fn limits(&mut self, raw: Option<&RawLimits>) -> Option<Limits> {
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
    pub(super) fn limit<T>(
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
}
