//! Stages 6-9 for a video part (`/v/{source}/{key}/{tail}`), after the same network, identity,
//! authorize (representation `derived`) and admit stages as an object:
//!
//! 1. the tools: without ffmpeg or ffprobe, 503 saying which is missing, before any read;
//! 2. the object's metadata (the cache's table, else one HEAD), its size against
//!    `max_source_bytes` (413);
//! 3. a strong ETag from the source's version, the normalized request and the limits in force
//!    (and, for the texts that carry links, the request's token): `If-None-Match` is 304 here,
//!    before any byte of the object is read;
//! 4. the part, by kind:
//!    - bytes (poster, frame, HLS segment, sprite): from the cache when there is one, else made
//!      once however many identical requests arrive (`video::Work::making`) and stored whole
//!      (up to `VIDEO_CACHED_OUTPUT_BYTES_MAX`);
//!    - texts (`info.json`, the playlist, the VTT track): made per request from the probe, never
//!      stored (their links carry the request's token; `Cache-Control: private, no-store` when
//!      they do);
//!    - `web.mp4`: the rendition store's file, served with one `Range` (suffix and open ranges,
//!      416, `If-Range` with the ETag) and HEAD, streamed in chunks from the open file;
//! 5. every [`VideoError`] becomes a status in `error.rs` ([`Error::video`]).
//!
//! The probe (ffprobe's facts and the frame index) is made once per object version and limits,
//! remembered in `video::Work`, and shared by concurrent requests (`video::Work::probing`).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use http::{HeaderValue, Response, StatusCode};
use sha2::{Digest, Sha256};

use crate::backend::{Caller, ObjectMeta, OwnedCaller};
use crate::cache::key::{CacheKey, ORIGINAL, ObjectId, Partition};
use crate::cache::{Cache, Outcome};
use crate::image::source::ObjectBytes;
use crate::pipeline::ctx::RequestCtx;
use crate::pipeline::error::Error;
use crate::pipeline::plan::{Plan, PlanError};
use crate::pipeline::range::{self, Answer};
use crate::pipeline::respond;
use crate::pipeline::snapshot::Snapshot;
use crate::video::input::Input;
use crate::video::probe::VideoProbe;
use crate::video::request::FrameFormat;
use crate::video::{self, Job, Links, Output, VideoError, VideoLimits, VideoRequest};
use crate::web::{self, ResponseBody};

/// The cache label suffix of a probe (one per object version, partition and limits).
const PROBE_LABEL: &str = "video-probe";
/// Bytes read from a rendition file per body frame.
const FILE_CHUNK_BYTES: usize = 256 * 1024;

/// What a video request works with.
pub(super) struct Serve<'a> {
    pub snapshot: &'a Snapshot,
    pub shared: &'a crate::state::Shared,
    pub request: &'a http::request::Parts,
    pub plan: &'a Plan,
    pub video: &'a VideoRequest,
    pub head_only: bool,
    pub caller: Caller<'a>,
}

/// Serve `s.video` of `s.plan`'s object.
pub(super) async fn serve(
    s: Serve<'_>,
    ctx: &mut RequestCtx,
) -> Result<Response<ResponseBody>, Error> {
    let source = s.plan.source();
    let video_err = |e| Error::video(source, e);
    let work = s.shared.video().ok_or_else(|| {
        video_err(VideoError::Unavailable(
            "video processing is unavailable: it is not set up in this process".to_owned(),
        ))
    })?;
    // 1. The tools, before any read.
    if let Some(reason) = unavailable(work.fence.tools()) {
        ctx.cache(Outcome::Bypass);
        return Err(video_err(VideoError::Unavailable(reason)));
    }
    let limits = &s.snapshot.video.limits;
    if let Some(w) = s.video.width()
        && w > limits.max_output_width
    {
        return Err(video_err(VideoError::BadParameter {
            param: "w",
            why: format!(
                "must be at most {} (max_output_width)",
                limits.max_output_width
            ),
        }));
    }
    // 2. Metadata.
    let backend = s
        .snapshot
        .sources
        .get(source)
        .ok_or(Error::Plan(PlanError::UnknownSource))?;
    let backend_err = |error| Error::Backend {
        source_name: source.to_owned(),
        error,
    };
    let cache = s
        .shared
        .cache()
        .filter(|_| s.snapshot.caches(source))
        .map(Arc::clone);
    let partition = Partition::of(&s.caller);
    let object = s.plan.object_id(partition);
    let deadline = tokio::time::Instant::now() + s.snapshot.limits.upstream_first_byte_timeout;
    let meta = Box::pin(super::derive::metadata(
        &cache, &object, backend, s.caller, deadline,
    ))
    .await
    .map_err(backend_err)?;
    if meta.size > limits.max_source_bytes {
        return Err(video_err(VideoError::TooLarge(format!(
            "the object is {} bytes, over max_source_bytes ({})",
            meta.size, limits.max_source_bytes
        ))));
    }
    let version = crate::cache::version_of(&meta);
    // 3. ETag and 304.
    let links = links(s.request, s.plan);
    let canonical = s.video.canonical();
    let limits_tag = limits_tag(limits);
    let label = format!("video:{canonical};{limits_tag}");
    let texts = matches!(
        s.video,
        VideoRequest::Info | VideoRequest::HlsPlaylist | VideoRequest::SpriteVtt
    );
    let link_query = if texts {
        links.query.clone().unwrap_or_default()
    } else {
        String::new()
    };
    let etag = super::derive::etag(&[&version, &label, &link_query]);
    let no_store = texts && links.query.is_some();
    if super::derive::not_modified(&s.request.headers, &etag) {
        ctx.cache(Outcome::Bypass);
        return head(StatusCode::NOT_MODIFIED, &etag, None, 0, no_store);
    }
    let entry = CacheKey::new(object.clone(), &version, &label);
    let ctype = content_type(s.video);
    // 4a. Bytes from the cache, before any probe.
    if let Some(ctype) = ctype
        && let Some(cache) = &cache
        && let Some((body, outcome)) = cache.get_derived(&entry).await
    {
        ctx.cache(outcome);
        return bytes_response(&etag, ctype, body);
    }
    let part = Part {
        s: &s,
        work,
        backend,
        cache: &cache,
        object: &object,
        meta: &meta,
        version: &version,
        limits,
        limits_tag: &limits_tag,
    };
    match s.video {
        VideoRequest::Info | VideoRequest::HlsPlaylist | VideoRequest::SpriteVtt => {
            let (body, ctype) = part
                .with_job(&links, async |job| {
                    Ok(match s.video {
                        VideoRequest::HlsPlaylist => {
                            (video::hls::playlist(job)?, "application/vnd.apple.mpegurl")
                        }
                        VideoRequest::SpriteVtt => {
                            (video::sprite::vtt(job)?, "text/vtt; charset=utf-8")
                        }
                        _ => (
                            video::info::info_json(job.probe, job.links).to_string(),
                            "application/json",
                        ),
                    })
                })
                .await
                .map_err(video_err)?;
            ctx.cache(Outcome::Bypass);
            let resp = head(
                StatusCode::OK,
                &etag,
                Some(ctype),
                body.len() as u64,
                no_store,
            )?;
            Ok(resp.map(|_| web::full(body)))
        }
        VideoRequest::WebMp4 => {
            let key = CacheKey::new(object.clone(), &version, &label);
            let (made, _) = work
                .making
                .run(
                    &key,
                    Box::pin(async {
                        let rendition = part
                            .with_job(&links, async |job| {
                                tokio::time::timeout(
                                    limits.transcode_timeout,
                                    Box::pin(video::web::web_mp4(job, &key)),
                                )
                                .await
                                .unwrap_or(Err(VideoError::TimedOut))
                            })
                            .await?;
                        Ok(Output::File(rendition))
                    }),
                )
                .await;
            ctx.cache(Outcome::Bypass);
            // web_mp4 makes files only.
            output_response(
                &s.request.headers,
                &etag,
                made.map_err(video_err)?,
                s.head_only,
            )
        }
        VideoRequest::Poster { .. }
        | VideoRequest::Frame { .. }
        | VideoRequest::HlsSegment { .. }
        | VideoRequest::Sprite => {
            let ctype = ctype.unwrap_or("application/octet-stream");
            let (made, led) = work
                .making
                .run(
                    &entry,
                    Box::pin(async {
                        let body = part
                            .with_job(&links, async |job| {
                                tokio::time::timeout(
                                    limits.job_timeout,
                                    Box::pin(make_bytes(job, s.video)),
                                )
                                .await
                                .unwrap_or(Err(VideoError::TimedOut))
                            })
                            .await?;
                        if let Some(cache) = &cache
                            && body.len() as u64
                                <= crate::config::defaults::VIDEO_CACHED_OUTPUT_BYTES_MAX
                        {
                            cache.put_derived(&entry, body.clone());
                        }
                        Ok(Output::Bytes {
                            body,
                            content_type: ctype,
                        })
                    }),
                )
                .await;
            ctx.cache(match (&cache, led) {
                (None, _) => Outcome::Bypass,
                (Some(_), true) => Outcome::Miss,
                (Some(_), false) => Outcome::Coalesced,
            });
            output_response(
                &s.request.headers,
                &etag,
                made.map_err(video_err)?,
                s.head_only,
            )
        }
    }
}

/// Why the video routes cannot work now, in the words the client sees: which tool is missing
/// (never the configured path), and what to do about it.
fn unavailable(tools: &video::Tools) -> Option<String> {
    let missing = match (&tools.ffmpeg, &tools.ffprobe) {
        (Ok(_), Ok(_)) => return None,
        (Err(_), Err(_)) => "ffmpeg and ffprobe not found",
        (Err(_), Ok(_)) => "ffmpeg not found",
        (Ok(_), Err(_)) => "ffprobe not found",
    };
    Some(format!(
        "video processing is unavailable: {missing}; install ffmpeg or set [video] ffmpeg and \
         ffprobe"
    ))
}

/// The made-once parts.
async fn make_bytes(job: &Job<'_>, request: &VideoRequest) -> Result<Bytes, VideoError> {
    match *request {
        VideoRequest::Poster { t_ms, width } => video::frame::poster(job, t_ms, width).await,
        VideoRequest::Frame { n, width, format } => {
            video::frame::frame(job, n, width, format).await
        }
        VideoRequest::HlsSegment { n } => video::hls::segment(job, n).await,
        VideoRequest::Sprite => video::sprite::sprite(job).await,
        VideoRequest::Info
        | VideoRequest::HlsPlaylist
        | VideoRequest::SpriteVtt
        | VideoRequest::WebMp4 => Err(VideoError::NoSuchPart("no such video part".to_owned())),
    }
}

/// The media type of a made-once part (`None`: a text or a file).
fn content_type(request: &VideoRequest) -> Option<&'static str> {
    match request {
        VideoRequest::Poster { .. } | VideoRequest::Sprite => Some("image/jpeg"),
        VideoRequest::Frame { format, .. } => Some(match format {
            FrameFormat::Jpg => "image/jpeg",
            FrameFormat::Png => "image/png",
        }),
        VideoRequest::HlsSegment { .. } => Some("video/mp2t"),
        VideoRequest::Info
        | VideoRequest::HlsPlaylist
        | VideoRequest::SpriteVtt
        | VideoRequest::WebMp4 => None,
    }
}

/// 64 bits of SHA-256 over the limits in force: part of every label and ETag, so a reload that
/// changes them never serves an output made under others.
fn limits_tag(limits: &VideoLimits) -> String {
    let digest = Sha256::digest(format!("{limits:?}").as_bytes());
    hex::encode(&digest[..8])
}

/// The links of a response: `/v/{source}/{key}/` (the key's every reserved byte escaped, `/`
/// as `%2F`) and the request's `token`, re-encoded.
fn links(request: &http::request::Parts, plan: &Plan) -> Links {
    let token = request.uri.query().and_then(|q| {
        crate::web::parse::query_pairs(q)
            .find(|(name, _)| *name == "token")
            .and_then(|(_, v)| crate::web::parse::percent_decode_utf8(v.unwrap_or(""), false).ok())
    });
    Links {
        base: format!(
            "{}{}/{}/",
            super::route::VIDEO_PREFIX,
            encode(plan.source()),
            encode(plan.key())
        ),
        query: token.map(|t| format!("token={}", encode(&t))),
    }
}

/// Percent-encode everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, RESERVED).to_string()
}

/// One version of the object, to probe and render.
struct Part<'a, 's> {
    s: &'a Serve<'s>,
    work: &'a Arc<video::Work>,
    backend: &'a Arc<crate::backend::AnyBackend>,
    cache: &'a Option<Arc<Cache>>,
    object: &'a ObjectId,
    meta: &'a Arc<ObjectMeta>,
    version: &'a str,
    limits: &'a VideoLimits,
    limits_tag: &'a str,
}

impl Part<'_, '_> {
    /// `make` on the job over this version's input and its probe.
    async fn with_job<T>(
        &self,
        links: &Links,
        make: impl AsyncFnOnce(&Job<'_>) -> Result<T, VideoError>,
    ) -> Result<T, VideoError> {
        let input = Box::pin(self.input()).await?;
        let probe = Box::pin(self.probe(&input)).await?;
        let job = Job {
            input: &input,
            probe: &probe,
            limits: self.limits,
            work: self.work,
            links,
        };
        make(&job).await
    }

    /// ffmpeg's input: the fs file, or ranged reads of this version through the cache.
    async fn input(&self) -> Result<Input, VideoError> {
        let limits = &self.s.snapshot.limits;
        let entry = self.cache.as_ref().map(|c| {
            (
                Arc::clone(c),
                CacheKey::new(self.object.clone(), self.version, ORIGINAL),
            )
        });
        let bytes = ObjectBytes::new(
            Arc::clone(self.backend),
            self.object.key().to_owned(),
            Arc::clone(self.meta),
            OwnedCaller::of(&self.s.caller),
            entry,
            self.limits.max_source_bytes,
        )
        .with_timeouts(
            limits.upstream_first_byte_timeout,
            limits.upstream_idle_timeout,
        );
        Input::of_object(self.backend, self.object.key(), bytes).await
    }

    /// The probe of this version: remembered, or made once however many requests ask.
    async fn probe(&self, input: &Input) -> Result<Arc<VideoProbe>, VideoError> {
        let key = CacheKey::new(
            self.object.clone(),
            self.version,
            &format!("{PROBE_LABEL};{}", self.limits_tag),
        );
        if let Some(probe) = self.work.probe_of(&key) {
            return Ok(probe);
        }
        let (probe, _) = self
            .work
            .probing
            .run(
                &key,
                Box::pin(async {
                    let probe = tokio::time::timeout(
                        self.limits.job_timeout,
                        Box::pin(video::probe::probe(input, &self.work.fence, self.limits)),
                    )
                    .await
                    .unwrap_or(Err(VideoError::TimedOut))?;
                    let probe = Arc::new(probe);
                    self.work.remember_probe(key.clone(), Arc::clone(&probe));
                    Ok(probe)
                }),
            )
            .await;
        probe
    }
}

/// The head of an answer made whole (200 or 304): `no_store` for a text carrying a token.
fn head(
    status: StatusCode,
    etag: &str,
    ctype: Option<&str>,
    len: u64,
    no_store: bool,
) -> Result<Response<ResponseBody>, Error> {
    let cache_control = if no_store {
        "private, no-store"
    } else {
        "private"
    };
    let mut b = Response::builder()
        .status(status)
        .header(CACHE_CONTROL, cache_control)
        .header(ETAG, etag);
    if let Some(ctype) = ctype {
        b = b.header(CONTENT_TYPE, ctype).header(CONTENT_LENGTH, len);
    }
    b.body(web::empty()).map_err(Error::Internal)
}

/// The response for a job's output: bytes or text whole, a file with Range and HEAD.
fn output_response(
    headers: &http::HeaderMap,
    etag: &str,
    output: Output,
    head_only: bool,
) -> Result<Response<ResponseBody>, Error> {
    match output {
        Output::Bytes { body, content_type } => bytes_response(etag, content_type, body),
        Output::Text { body, content_type } => {
            bytes_response(etag, content_type, Bytes::from(body))
        }
        Output::File(rendition) => serve_file(headers, etag, rendition, head_only),
    }
}

fn bytes_response(
    etag: &str,
    ctype: &'static str,
    body: Bytes,
) -> Result<Response<ResponseBody>, Error> {
    let resp = head(StatusCode::OK, etag, Some(ctype), body.len() as u64, false)?;
    Ok(resp.map(|_| web::full(body)))
}

/// A rendition file with one `Range` (RFC 9110 section 14), `If-Range` against `etag`, HEAD;
/// the body read from the open file in chunks.
fn serve_file(
    headers: &http::HeaderMap,
    etag: &str,
    rendition: Arc<video::web::Rendition>,
    head_only: bool,
) -> Result<Response<ResponseBody>, Error> {
    let meta = ObjectMeta {
        size: rendition.len,
        etag: Some(etag.to_owned()),
        last_modified: None,
        content_type: Some(rendition.content_type.to_owned()),
    };
    let part = match range::answer(headers, &meta, head_only) {
        Answer::NotModified => {
            return head(StatusCode::NOT_MODIFIED, etag, None, 0, false);
        }
        Answer::PreconditionFailed => return Err(Error::PreconditionFailed),
        Answer::Unsatisfiable => return Err(Error::RangeNotSatisfiable { size: meta.size }),
        Answer::Send(part) => part,
    };
    let status = if part.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut builder = respond::object_head(status, &meta, part);
    if let Some(h) = builder.headers_mut() {
        h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        // A player's range requests must not be refused by a proxy's content sniffing.
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(rendition.content_type),
        );
    }
    if head_only {
        return builder.body(web::empty()).map_err(Error::Internal);
    }
    let (start, len) = part.map_or((0, meta.size), |r| (r.start, r.len()));
    let body = file_body(&rendition, start, len).map_err(|e| Error::Video {
        source_name: String::new(),
        error: VideoError::Unavailable(format!("cannot read a rendition: {e}")),
    })?;
    builder.body(body).map_err(Error::Internal)
}

/// `len` bytes of the rendition from `start`, streamed; a file shorter than promised ends the
/// body with an error (never a short body passed off as complete).
fn file_body(
    rendition: &video::web::Rendition,
    start: u64,
    len: u64,
) -> std::io::Result<ResponseBody> {
    Ok(web::boxed(http_body_util::StreamBody::new(frames_exact(
        rendition, start, len,
    )?)))
}

/// The frames of `len` bytes from `start`: data chunks, then an error if the file ended early.
fn frames_exact(
    rendition: &video::web::Rendition,
    start: u64,
    len: u64,
) -> std::io::Result<
    impl futures_util::Stream<Item = Result<http_body::Frame<Bytes>, std::io::Error>> + Send + 'static,
> {
    use futures_util::StreamExt;
    use std::io::Seek;
    use tokio::io::AsyncReadExt;
    // Its own offset: a `try_clone` would share one with every concurrent response.
    let mut file = rendition.reopen()?;
    file.seek(std::io::SeekFrom::Start(start))?;
    let reader = tokio::fs::File::from_std(file).take(len);
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, FILE_CHUNK_BYTES);
    let state = (stream, 0u64, false);
    Ok(futures_util::stream::unfold(
        state,
        move |(mut stream, sent, done)| async move {
            if done {
                return None;
            }
            match stream.next().await {
                Some(Ok(chunk)) => {
                    let sent = sent + chunk.len() as u64;
                    Some((Ok(http_body::Frame::data(chunk)), (stream, sent, false)))
                }
                Some(Err(e)) => Some((Err(e), (stream, sent, true))),
                None if sent < len => Some((
                    Err(std::io::Error::other("rendition ended early")),
                    (stream, sent, true),
                )),
                None => None,
            }
        },
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap; src/ may not
mod tests {
    use super::*;

    #[test]
    fn links_escape_the_key_and_re_encode_the_token() {
        assert_eq!(encode("a/b c.mp4"), "a%2Fb%20c.mp4");
        assert_eq!(encode("k-1_~.x"), "k-1_~.x");
        assert_eq!(encode("é\"<"), "%C3%A9%22%3C");
    }

    #[test]
    fn a_missing_tool_is_named_without_its_path() {
        let tools = video::Tools {
            ffmpeg: Err("/nonexistent/ffmpeg not found".into()),
            ffprobe: Ok("/usr/bin/ffprobe".into()),
        };
        let m = unavailable(&tools).unwrap();
        assert!(m.contains("ffmpeg not found"), "{m}");
        assert!(!m.contains("/nonexistent"), "{m}");
        let ok = video::Tools {
            ffmpeg: Ok("/usr/bin/ffmpeg".into()),
            ffprobe: Ok("/usr/bin/ffprobe".into()),
        };
        assert_eq!(unavailable(&ok), None);
    }

    #[test]
    fn limits_change_the_tag() {
        let a = VideoLimits::default();
        let mut b = a.clone();
        b.crf = 30;
        assert_ne!(limits_tag(&a), limits_tag(&b));
        assert_eq!(limits_tag(&a), limits_tag(&a.clone()));
    }
}
