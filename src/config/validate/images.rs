//! `[images]` — a child of `validate/mod.rs`, so it shares the [`Checker`] and its range check.
//!
//! Decisions the messages below explain to the operator:
//! - The table is optional: absent, images are on with the defaults (`enabled = false` turns the
//!   `/iiif/` routes off).
//! - `base_url` is the public `https://` URL in front of `/iiif/3/...` (a path prefix allowed,
//!   no trailing slash, query, fragment or user info); `http://` only for a loopback host (tests
//!   behind a local proxy). It must be configured when the gateway sits behind a proxy that
//!   changes the host or scheme: IIIF viewers follow `info.json`'s `id`.

use std::time::Duration;

use toml::Spanned;

use super::super::ImagesConfig;
use super::super::defaults as d;
use super::super::file::RawImages;
use super::Checker;

impl Checker<'_> {
    /// `[images]`: the defaults when absent; `None` after an error.
    pub(super) fn images(&mut self, raw: Option<&Spanned<RawImages>>) -> Option<ImagesConfig> {
        let empty = RawImages::default();
        let r = raw.map_or(&empty, Spanned::get_ref);
        let before = self.errors.len();
        macro_rules! key {
            ($key:ident, $default:expr, $min:expr, $max:expr) => {
                self.bounded(
                    &r.$key,
                    concat!("images.", stringify!($key)),
                    $default,
                    $min,
                    $max,
                )
            };
        }
        let base_url = r.base_url.as_ref().and_then(|raw| self.base_url(raw));
        let config = ImagesConfig {
            enabled: r.enabled.as_ref().is_none_or(|e| *e.get_ref()),
            base_url,
            max_source_pixels: key!(
                max_source_pixels,
                d::IMAGE_MAX_SOURCE_PIXELS,
                1,
                d::IMAGE_MAX_SOURCE_PIXELS_MAX
            ),
            max_tiled_source_pixels: key!(
                max_tiled_source_pixels,
                d::IMAGE_MAX_TILED_SOURCE_PIXELS,
                1,
                d::IMAGE_MAX_TILED_SOURCE_PIXELS_MAX
            ),
            max_output_pixels: key!(
                max_output_pixels,
                d::IMAGE_MAX_OUTPUT_PIXELS,
                1,
                d::IMAGE_MAX_OUTPUT_PIXELS_MAX
            ),
            max_output_side: key!(
                max_output_side,
                d::IMAGE_MAX_OUTPUT_SIDE,
                1,
                d::IMAGE_MAX_OUTPUT_SIDE_MAX
            ),
            max_frames: key!(max_frames, d::IMAGE_MAX_FRAMES, 1, d::IMAGE_MAX_FRAMES_MAX),
            max_source_bytes: key!(
                max_source_bytes,
                d::IMAGE_MAX_SOURCE_BYTES,
                1,
                d::IMAGE_MAX_SOURCE_BYTES_MAX
            ),
            workers: match &r.workers {
                // 0 is allowed here: one worker per core.
                Some(w) if *w.get_ref() == 0 => 0,
                _ => key!(workers, d::IMAGE_WORKERS, 1, d::IMAGE_WORKERS_MAX),
            },
            queue: key!(queue, d::IMAGE_QUEUE, 0, d::IMAGE_QUEUE_MAX),
            job_timeout: Duration::from_secs(key!(
                job_timeout_secs,
                d::IMAGE_JOB_TIMEOUT_SECS,
                1,
                d::IMAGE_JOB_TIMEOUT_SECS_MAX
            )),
            tile_size: key!(
                tile_size,
                d::IMAGE_TILE_SIZE,
                d::IMAGE_TILE_SIZE_MIN,
                d::IMAGE_TILE_SIZE_MAX
            ),
        };
        if config.tile_size > config.max_output_side
            && let Some(at) = &r.tile_size
        {
            self.push(
                at.span(),
                "images.tile_size",
                format!(
                    "{} is larger than max_output_side ({}): viewers could not fetch a whole \
                     tile; lower tile_size or raise max_output_side",
                    config.tile_size, config.max_output_side
                ),
            );
        }
        (self.errors.len() == before).then_some(config)
    }

    fn base_url(&mut self, raw: &Spanned<String>) -> Option<String> {
        let text = raw.get_ref();
        match base_url_problem(text) {
            None => Some(text.clone()),
            Some(problem) => {
                self.push(
                    raw.span(),
                    "images.base_url",
                    format!(
                        "`{text}` {problem}; write the public URL in front of /iiif/3/, e.g. \
                         \"https://assets.example.com\" or \"https://example.com/gateway\" (http:// \
                         only for a loopback host such as 127.0.0.1)"
                    ),
                );
                None
            }
        }
    }
}

/// Why `text` is not a usable `base_url`.
fn base_url_problem(text: &str) -> Option<&'static str> {
    if text
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || !c.is_ascii())
    {
        return Some("contains spaces, control or non-ASCII characters");
    }
    if text.contains(['?', '#']) {
        return Some("has a query or fragment");
    }
    if text.ends_with('/') {
        return Some("ends with a slash");
    }
    let Ok(uri) = text.parse::<http::Uri>() else {
        return Some("is not a URL");
    };
    let Some(authority) = uri.authority() else {
        return Some("has no host");
    };
    if authority.as_str().contains('@') {
        return Some("has user info");
    }
    let host = authority.host();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") => None,
        Some("http") if loopback => None,
        Some("http") => Some("is http:// on a host that is not loopback"),
        _ => Some("is not an https:// URL"),
    }
}

#[cfg(test)]
mod tests {
    use super::base_url_problem;

    #[test]
    fn base_urls() {
        for ok in [
            "https://assets.example.com",
            "https://example.com:8443/gateway",
            "http://127.0.0.1:8080",
            "http://[::1]:1",
        ] {
            assert_eq!(base_url_problem(ok), None, "{ok}");
        }
        for bad in [
            "assets.example.com",
            "https://assets.example.com/",
            "http://assets.example.com",
            "https://u@assets.example.com",
            "https://assets.example.com/?x",
            "https://a b",
            "ftp://assets.example.com",
        ] {
            assert!(base_url_problem(bad).is_some(), "{bad}");
        }
    }
}
