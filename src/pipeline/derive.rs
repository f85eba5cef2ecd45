//! Stages 6-9 for a derived representation (IIIF `info.json` and images), after the same
//! network, identity, authorize (representation `derived`) and admit stages as an object:
//!
//! 1. the object's metadata: through the cache's metadata table when there is a cache (and the
//!    source does not opt out), else one HEAD of the backend;
//! 2. a strong ETag from the source's version and the normalized request (and, where the answer
//!    depends on them, the limits and the public URL): `If-None-Match` is answered 304 here,
//!    before any byte of the object is read;
//! 3. the derived output from the cache (memory, then disk) when there is one, else rendered:
//!    the probe of this object version (the header facts and a TIFF's parsed directories,
//!    remembered in a bounded map and computed once however many requests ask), the request
//!    resolved against it ([`crate::image::iiif::resolve`]), then one render however many
//!    identical requests arrive at once; the output is stored in the cache;
//! 4. the answer: `Content-Type`, `Content-Length`, the ETag, `Cache-Control: private`.
//!
//! `info.json` is never stored (its `id` carries the request's host unless `[images] base_url`
//! is set); its probe is. Every image error becomes a status in `error.rs` ([`Error::image`]).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, HOST, IF_NONE_MATCH, LOCATION,
};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use sha2::{Digest, Sha256};

use crate::backend::{Backend, BackendError, Caller, ObjectMeta, OwnedCaller};
use crate::cache::key::{CacheKey, ORIGINAL, ObjectId, Partition};
use crate::cache::{Cache, Outcome};
use crate::image::iiif::{self, SizeKind};
use crate::image::source::ObjectBytes;
use crate::image::{ImageError, ImageRequest, Probe, Rendered};
use crate::pipeline::ctx::RequestCtx;
use crate::pipeline::error::Error;
use crate::pipeline::plan::{Plan, Representation};
use crate::pipeline::snapshot::Snapshot;
use crate::web::{self, ResponseBody};

/// The media type of `info.json` asked for with `Accept: application/ld+json`.
const JSON_LD: &str = "application/ld+json;profile=\"http://iiif.io/api/image/3/context.json\"";
/// The cache label suffix of a probe (one per object version and partition).
const PROBE_LABEL: &str = "iiif-probe";

/// What a derived request works with.
pub(super) struct Derive<'a> {
    pub snapshot: &'a Snapshot,
    pub shared: &'a crate::state::Shared,
    pub request: &'a http::request::Parts,
    pub plan: &'a Plan,
    pub caller: Caller<'a>,
}

/// Serve `d.plan` (a IIIF representation).
pub(super) async fn serve(
    d: Derive<'_>,
    ctx: &mut RequestCtx,
) -> Result<Response<ResponseBody>, Error> {
    let source = d.plan.source();
    let backend = d
        .snapshot
        .sources
        .get(source)
        .ok_or(Error::Plan(super::plan::PlanError::UnknownSource))?;
    let backend_err = |error| Error::Backend {
        source_name: source.to_owned(),
        error,
    };
    let cache = d
        .shared
        .cache()
        .filter(|_| d.snapshot.caches(source))
        .map(Arc::clone);
    let partition = Partition::of(&d.caller);
    let object = d.plan.object_id(partition);
    let deadline = tokio::time::Instant::now() + d.snapshot.limits.upstream_first_byte_timeout;
    // Each step's future is boxed: together they are too large for one poll's stack frame.
    let meta = Box::pin(metadata(&cache, &object, backend, d.caller, deadline))
        .await
        .map_err(backend_err)?;
    let version = crate::cache::version_of(&meta);
    let limits = &d.snapshot.images.limits;
    match d.plan.representation() {
        Representation::IiifInfo => {
            let id = service_id(d.snapshot, d.request, d.plan);
            let etag = etag(&[&version, "info.json", &id, &format!("{limits:?}")]);
            if not_modified(&d.request.headers, &etag) {
                ctx.cache(Outcome::Bypass);
                return head(StatusCode::NOT_MODIFIED, &etag, None, 0);
            }
            let bytes = Source {
                d: &d,
                backend,
                cache: &cache,
                object: &object,
                meta: &meta,
                version: &version,
            };
            let probe = Box::pin(bytes.probe()).await?;
            ctx.cache(if cache.is_some() {
                Outcome::Miss
            } else {
                Outcome::Bypass
            });
            let info = iiif::info_json(&id, &probe.image, limits);
            let body = Bytes::from(info.to_string());
            let ld = d
                .request
                .headers
                .get_all(ACCEPT)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("application/ld+json")));
            let ctype = if ld { JSON_LD } else { "application/json" };
            let resp = head(StatusCode::OK, &etag, Some(ctype), body.len() as u64)?;
            Ok(resp.map(|_| web::full(body)))
        }
        Representation::Iiif(request) => {
            let label = derived_label(request, limits);
            let etag = etag(&[&version, &label]);
            if not_modified(&d.request.headers, &etag) {
                ctx.cache(Outcome::Bypass);
                return head(StatusCode::NOT_MODIFIED, &etag, None, 0);
            }
            let entry = CacheKey::new(object.clone(), &version, &label);
            let ctype = request.format.content_type();
            if let Some(cache) = &cache
                && let Some((body, outcome)) = cache.get_derived(&entry).await
            {
                ctx.cache(outcome);
                let resp = head(StatusCode::OK, &etag, Some(ctype), body.len() as u64)?;
                return Ok(resp.map(|_| web::full(body)));
            }
            let bytes = Source {
                d: &d,
                backend,
                cache: &cache,
                object: &object,
                meta: &meta,
                version: &version,
            };
            let work = d.shared.images();
            let (rendered, led) = work
                .rendering
                .run(
                    &entry,
                    Box::pin(async {
                        let rendered = tokio::time::timeout(
                            limits.job_timeout,
                            Box::pin(bytes.render(request)),
                        )
                        .await
                        .unwrap_or(Err(ImageError::TimedOut))?;
                        if let Some(cache) = &cache
                            && rendered.bytes.len() as u64
                                <= crate::config::defaults::IMAGE_CACHED_OUTPUT_BYTES_MAX
                        {
                            cache.put_derived(&entry, rendered.bytes.clone());
                        }
                        Ok(rendered)
                    }),
                )
                .await;
            let rendered = rendered.map_err(|e| Error::image(source, e))?;
            ctx.cache(match (&cache, led) {
                (None, _) => Outcome::Bypass,
                (Some(_), true) => Outcome::Miss,
                (Some(_), false) => Outcome::Coalesced,
            });
            let body = rendered.bytes;
            let resp = head(StatusCode::OK, &etag, Some(ctype), body.len() as u64)?;
            Ok(resp.map(|_| web::full(body)))
        }
        // Served by `video.rs`; the original by the fetch stage.
        Representation::Original | Representation::Video(_) => {
            Err(Error::Plan(super::plan::PlanError::NoRoute))
        }
    }
}

/// The 303 from an image's base URI to its `info.json` (IIIF 3.0 section 2.2): `path` is the
/// request's own path with `/info.json`, the query (a `token`) kept.
pub(super) fn redirect(
    snapshot: &Snapshot,
    request: &http::request::Parts,
    info_path: &str,
) -> Result<Response<ResponseBody>, Error> {
    let mut location = public_base(snapshot, request);
    location.push_str(info_path);
    if let Some(q) = request.uri.query() {
        location.push('?');
        location.push_str(q);
    }
    let location = HeaderValue::from_str(&location)
        .map_err(|_| Error::Plan(super::plan::PlanError::BadPercentEncoding))?;
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(LOCATION, location)
        .header(CACHE_CONTROL, "private")
        .body(web::empty())
        .map_err(Error::Internal)
}

/// The object's metadata: the cache's table (one coalesced origin request when stale), else a
/// HEAD within the first-byte budget.
pub(super) async fn metadata(
    cache: &Option<Arc<Cache>>,
    object: &ObjectId,
    backend: &crate::backend::AnyBackend,
    caller: Caller<'_>,
    deadline: tokio::time::Instant,
) -> Result<Arc<ObjectMeta>, BackendError> {
    match cache {
        // The probe reads the head of the file first: chunk 0 comes with a cold metadata read.
        Some(cache) => cache
            .metadata(object, backend, caller, deadline, Some(0), |_| Some(0))
            .await
            .map(|(meta, _)| meta),
        None => {
            let budget = deadline.saturating_duration_since(tokio::time::Instant::now());
            tokio::time::timeout_at(deadline, backend.head(object.key(), caller))
                .await
                .map_err(|_| BackendError::Timeout(budget))?
                .map(Arc::new)
        }
    }
}

/// One version of the object, to probe and render.
struct Source<'a, 'd> {
    d: &'a Derive<'d>,
    backend: &'a Arc<crate::backend::AnyBackend>,
    cache: &'a Option<Arc<Cache>>,
    object: &'a ObjectId,
    meta: &'a Arc<ObjectMeta>,
    version: &'a str,
}

impl Source<'_, '_> {
    /// Ranged reads of this version, through the cache's chunks of the original when cached.
    fn bytes(&self) -> ObjectBytes {
        let limits = &self.d.snapshot.limits;
        let entry = self.cache.as_ref().map(|c| {
            (
                Arc::clone(c),
                CacheKey::new(self.object.clone(), self.version, ORIGINAL),
            )
        });
        ObjectBytes::new(
            Arc::clone(self.backend),
            self.object.key().to_owned(),
            Arc::clone(self.meta),
            OwnedCaller::of(&self.d.caller),
            entry,
            self.d.snapshot.images.limits.max_source_bytes,
        )
        .with_timeouts(
            limits.upstream_first_byte_timeout,
            limits.upstream_idle_timeout,
        )
    }

    /// The probe of this version: remembered, or computed once however many requests ask.
    async fn probe(&self) -> Result<Arc<Probe>, Error> {
        let source = self.d.plan.source();
        let work = self.d.shared.images();
        let key = CacheKey::new(self.object.clone(), self.version, PROBE_LABEL);
        if let Some(probe) = work.probe_of(&key) {
            return Ok(probe);
        }
        let limits = &self.d.snapshot.images.limits;
        let (probe, _) = work
            .probing
            .run(
                &key,
                Box::pin(async {
                    let src = self.bytes();
                    let probe = tokio::time::timeout(
                        limits.job_timeout,
                        Box::pin(crate::image::probe(&src, limits)),
                    )
                    .await
                    .unwrap_or(Err(ImageError::TimedOut))?;
                    let probe = Arc::new(probe);
                    work.remember_probe(key.clone(), Arc::clone(&probe));
                    Ok(probe)
                }),
            )
            .await;
        probe.map_err(|e| Error::image(source, e))
    }

    /// Probe, resolve `request` against the image and the limits, render.
    async fn render(&self, request: &ImageRequest) -> Result<Rendered, ImageError> {
        let probe = Box::pin(self.probe()).await.map_err(|e| match e {
            Error::Image { error, .. } => error,
            Error::Backend { error, .. } => ImageError::Source(error),
            other => ImageError::Corrupt(other.to_string()),
        })?;
        let limits = &self.d.snapshot.images.limits;
        let op = iiif::resolve(request, &probe.image, limits)?;
        let src = self.bytes();
        Box::pin(crate::image::render(
            &src,
            &probe,
            &op,
            limits,
            self.d.shared.images().pool(),
        ))
        .await
    }
}

/// The cache label of a derived image: `iiif:` and the canonical request; `max` depends on the
/// output limits too, so they are part of its label (a reload that lowers them never serves an
/// output over them).
fn derived_label(request: &ImageRequest, limits: &crate::image::ImageLimits) -> String {
    let mut label = Representation::Iiif(request.clone())
        .cache_label()
        .into_owned();
    if request.size == SizeKind::Max {
        label.push_str(&format!(
            ";max={},{}",
            limits.max_output_side, limits.max_output_pixels
        ));
    }
    label
}

/// A strong ETag: 128 bits of SHA-256 over the parts (each length-prefixed).
pub(super) fn etag(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    format!("\"{}\"", hex::encode(&h.finalize()[..16]))
}

/// Whether `If-None-Match` names `etag` (or is `*`): weak comparison, as RFC 9110 13.1.2 says.
pub(super) fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// The head of a derived answer (200 or 304).
fn head(
    status: StatusCode,
    etag: &str,
    ctype: Option<&str>,
    len: u64,
) -> Result<Response<ResponseBody>, Error> {
    let mut b = Response::builder()
        .status(status)
        .header(CACHE_CONTROL, "private")
        .header(ETAG, etag);
    if let Some(ctype) = ctype {
        b = b.header(CONTENT_TYPE, ctype).header(CONTENT_LENGTH, len);
    }
    b.body(web::empty()).map_err(Error::Internal)
}

/// `[images] base_url`, else `https://` and the request's host.
fn public_base(snapshot: &Snapshot, request: &http::request::Parts) -> String {
    match &snapshot.images.base_url {
        Some(base) => base.clone(),
        None => {
            // Stage 0 checked that the request has one valid host.
            let host = request
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| request.uri.authority().map(|a| a.as_str()))
                .unwrap_or("localhost");
            format!("https://{host}")
        }
    }
}

/// The image service's public URL (`info.json`'s `id`).
fn service_id(snapshot: &Snapshot, request: &http::request::Parts, plan: &Plan) -> String {
    iiif::service_id(&public_base(snapshot, request), plan.source(), plan.key())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap; src/ may not
mod tests {
    use super::*;

    #[test]
    fn etags_are_strong_and_differ_by_every_part() {
        let a = etag(&["\"v1\"", "iiif:full/max/0/default.jpg"]);
        assert!(
            a.starts_with('"') && a.ends_with('"') && a.len() == 34,
            "{a}"
        );
        assert_ne!(a, etag(&["\"v2\"", "iiif:full/max/0/default.jpg"]));
        assert_ne!(a, etag(&["\"v1\"", "iiif:full/max/0/default.png"]));
        assert_ne!(etag(&["ab", "c"]), etag(&["a", "bc"]));
    }

    #[test]
    fn if_none_match_lists_and_weak_forms_match() {
        let tag = etag(&["x"]);
        let h = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(not_modified(&h(&tag), &tag));
        assert!(not_modified(&h(&format!("\"zz\", W/{tag}")), &tag));
        assert!(not_modified(&h("*"), &tag));
        assert!(!not_modified(&h("\"zz\""), &tag));
        assert!(!not_modified(&HeaderMap::new(), &tag));
    }
}
