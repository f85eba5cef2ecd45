//! Stage 5, plan: route and parameters -> [`Target`] (5a, parse), then an admitted grant for it
//! -> [`Plan`] (5b, resolve). Decodes the object key exactly once and refuses anything DESIGN.md
//! "Paths and keys" forbids, before any backend work. A [`Plan`] is built only from an
//! [`Admitted`] [`Grant`]: fetching needs one, so nothing is fetched unauthorized or unadmitted.

use std::collections::HashSet;

pub use crate::cache::key::{CacheKey, ObjectId, Partition};
use crate::config::defaults::MAX_KEY_BYTES;
use crate::pipeline::admit::Admitted;
use crate::pipeline::authorize::{Grant, Resource};
use crate::web::parse::{self, DecodeError};

/// Why a request could not be planned (all are the client's fault: 400, or 404 for a route).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no such route")]
    NoRoute,
    #[error("unknown source")]
    UnknownSource,
    #[error("missing object key")]
    EmptyKey,
    #[error("malformed percent-encoding in the path")]
    BadPercentEncoding,
    #[error("object key is not valid UTF-8")]
    InvalidUtf8,
    #[error("object key contains a control character")]
    ControlCharacter,
    #[error("object key contains a '.' or '..' segment")]
    DotSegment,
    #[error("object key is longer than {MAX_KEY_BYTES} bytes")]
    KeyTooLong,
    #[error("unknown query parameter")]
    UnknownParameter,
    #[error("repeated query parameter")]
    RepeatedParameter,
    /// A IIIF parameter is malformed or not supported (400), naming which.
    #[error("invalid {param}: {why}")]
    IiifParameter { param: &'static str, why: String },
    /// A `/v/` parameter is malformed or not one the part takes (400), naming which.
    #[error("invalid {param}: {why}")]
    VideoParameter { param: &'static str, why: String },
}

/// What a request asks to be served as: the object as stored, or a derived representation
/// carrying its normalized parameters (a video rendition would be another variant).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Representation {
    /// The object's bytes as stored (`/o/`).
    Original,
    /// A IIIF image (`/iiif/3/.../{region}/{size}/{rotation}/{quality}.{format}`).
    Iiif(crate::image::ImageRequest),
    /// A IIIF image's `info.json`.
    IiifInfo,
    /// A video part (`/v/{source}/{key}/{tail}`): `info.json`, a poster, a frame, `web.mp4`,
    /// HLS, the sprite.
    Video(crate::video::VideoRequest),
}

/// The cache label of an `info.json` (never stored: its `id` depends on the request's host).
pub const IIIF_INFO: &str = "iiif-info";

impl Representation {
    /// The class authorization decides on (a role's `read_original` / `read_derived`, a token's
    /// `rep`).
    pub fn class(&self) -> crate::identity::Representation {
        match self {
            Representation::Original => crate::identity::Representation::Original,
            Representation::Iiif(_) | Representation::IiifInfo | Representation::Video(_) => {
                crate::identity::Representation::Derived
            }
        }
    }

    /// The normalized, opaque name the cache keys this representation by: `o`, `iiif:` and the
    /// canonical request, or `iiif-info`.
    pub fn cache_label(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Representation::Original => crate::cache::key::ORIGINAL.into(),
            Representation::Iiif(request) => format!("iiif:{}", request.canonical()).into(),
            Representation::IiifInfo => IIIF_INFO.into(),
            Representation::Video(request) => format!("video:{}", request.canonical()).into(),
        }
    }

    /// What the audit record and `explain` name besides the class: the IIIF path after the key
    /// (`full/max/0/default.jpg`, `info.json`); `None` for the original.
    pub fn params(&self) -> Option<String> {
        match self {
            Representation::Original => None,
            Representation::Iiif(request) => Some(request.canonical().to_owned()),
            Representation::IiifInfo => Some("info.json".to_owned()),
            Representation::Video(request) => Some(format!("video:{}", request.canonical())),
        }
    }
}

/// What to serve: a configured source, a validated key and a representation. Built only by
/// [`resolve`] (and, for benches and unit tests, `plan_object`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    source: String,
    key: String,
    representation: Representation,
}

impl Plan {
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn key(&self) -> &str {
        &self.key
    }
    pub fn representation(&self) -> &Representation {
        &self.representation
    }

    /// The object as `partition` sees it: the cache's metadata key.
    pub fn object_id(&self, partition: Partition) -> ObjectId {
        ObjectId::new(&self.source, &self.key, partition)
    }

    /// The cache key of this plan's response for one `version` of the object (its ETag, known
    /// only once the store has answered) read as `partition`.
    pub fn cache_key(&self, version: &str, partition: Partition) -> CacheKey {
        CacheKey::new(
            self.object_id(partition),
            version,
            &self.representation.cache_label(),
        )
    }
}

/// A parsed `/o/{source}/{key...}` request before authorization: the source name as written, the
/// decoded and validated key, the representation and the decoded `token` query parameter. Built
/// only by [`parse_object`]; becomes a [`Plan`] only through [`resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    source: String,
    key: String,
    token: Option<String>,
    representation: Representation,
}

impl Resource for Target {
    fn source(&self) -> &str {
        &self.source
    }
    fn key(&self) -> &str {
        &self.key
    }
    fn representation(&self) -> crate::identity::Representation {
        self.representation.class()
    }
}

impl Target {
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn key(&self) -> &str {
        &self.key
    }
    /// The `token` query parameter, percent-decoded.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
    pub fn representation(&self) -> &Representation {
        &self.representation
    }
}

/// Stage 5b, after authorization and admission: a configured source, or 404. Only an admitted
/// request learns whether the source exists.
pub fn resolve(
    admitted: Admitted<Grant<'_, Target>>,
    known_source: impl Fn(&str) -> bool,
) -> Result<Plan, PlanError> {
    let target = admitted.into_inner().into_target();
    if !known_source(&target.source) {
        return Err(PlanError::UnknownSource);
    }
    Ok(Plan {
        source: target.source,
        key: target.key,
        representation: target.representation,
    })
}

/// Parse a `/o/{source}/{key...}` request: route, query and key syntax (400s and the route's
/// 404), and nothing that depends on which sources or keys exist, so that an unauthenticated
/// client learns nothing about them. `path` is the raw (still percent-encoded) path, `query` the
/// raw query string.
pub fn parse_object(path: &str, query: Option<&str>) -> Result<Target, PlanError> {
    let rest = path.strip_prefix("/o/").ok_or(PlanError::NoRoute)?;
    let (source, raw_key) = rest.split_once('/').ok_or(PlanError::NoRoute)?;
    let token = check_query(query)?;
    let key = decode_key(raw_key)?;
    Ok(Target {
        source: source.to_owned(),
        key,
        token,
        representation: Representation::Original,
    })
}

/// A parsed `/iiif/3/` path: the base URI of an image (`{source}/{key}`, redirected to its
/// `info.json`; the key's check kept for the redirect), or a target.
#[derive(Debug)]
pub enum IiifPath {
    Base { key: Result<String, PlanError> },
    Target(Target),
}

/// Parse a `/iiif/3/{source}/{key}[/info.json | /{region}/{size}/{rotation}/{quality}.{format}]`
/// request: the key is ONE segment (`/` written `%2F`), decoded once with the same rules as
/// `/o/`; the query takes `token` only. Any other shape is the route's 404.
pub fn parse_iiif(path: &str, query: Option<&str>) -> Result<IiifPath, PlanError> {
    let rest = path
        .strip_prefix(super::route::IIIF_PREFIX)
        .ok_or(PlanError::NoRoute)?;
    let segments: Vec<&str> = rest.split('/').collect();
    let (source, raw_key, params) = match segments.as_slice() {
        [source, key] => {
            if source.is_empty() {
                return Err(PlanError::NoRoute);
            }
            return Ok(IiifPath::Base {
                key: check_query(query).and_then(|_| decode_key(key)),
            });
        }
        [source, key, params @ ..] if params.len() == 1 || params.len() == 4 => {
            (*source, *key, params)
        }
        _ => return Err(PlanError::NoRoute),
    };
    if source.is_empty() {
        return Err(PlanError::NoRoute);
    }
    let token = check_query(query)?;
    let key = decode_key(raw_key)?;
    let representation = match params {
        ["info.json"] => Representation::IiifInfo,
        [region, size, rotation, quality_format] => Representation::Iiif(
            crate::image::ImageRequest::parse(region, size, rotation, quality_format).map_err(
                |e| match e {
                    crate::image::ImageError::BadParameter { param, why } => {
                        PlanError::IiifParameter { param, why }
                    }
                    other => PlanError::IiifParameter {
                        param: "request",
                        why: other.to_string(),
                    },
                },
            )?,
        ),
        _ => return Err(PlanError::NoRoute),
    };
    Ok(IiifPath::Target(Target {
        source: source.to_owned(),
        key,
        token,
        representation,
    }))
}

/// Parse a `/v/{source}/{key}/{tail...}` request: the key is ONE segment (`/` written `%2F`),
/// decoded once with the same rules as `/o/`; the tail names the part ([`VideoRequest`]); the
/// query takes `token`, and `t` and `w` where the part takes them, each at most once. A tail
/// that names no part is the route's 404.
///
/// [`VideoRequest`]: crate::video::VideoRequest
pub fn parse_video(path: &str, query: Option<&str>) -> Result<Target, PlanError> {
    let rest = path
        .strip_prefix(super::route::VIDEO_PREFIX)
        .ok_or(PlanError::NoRoute)?;
    let (source, rest) = rest.split_once('/').ok_or(PlanError::NoRoute)?;
    let (raw_key, tail) = rest.split_once('/').ok_or(PlanError::NoRoute)?;
    if source.is_empty() || tail.is_empty() {
        return Err(PlanError::NoRoute);
    }
    let mut seen = HashSet::new();
    let mut token = None;
    let mut params: Vec<(&str, String)> = Vec::new();
    for (name, value) in query
        .filter(|q| !q.is_empty())
        .map(parse::query_pairs)
        .into_iter()
        .flatten()
    {
        if !seen.insert(name) {
            return Err(PlanError::RepeatedParameter);
        }
        let decoded =
            parse::percent_decode_utf8(value.unwrap_or(""), false).map_err(|e| match e {
                DecodeError::BadPercent => PlanError::BadPercentEncoding,
                DecodeError::NotUtf8 => PlanError::InvalidUtf8,
            })?;
        if name == "token" {
            token = Some(decoded);
        } else {
            params.push((name, decoded));
        }
    }
    let key = decode_key(raw_key)?;
    let params: Vec<(&str, &str)> = params.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let request = crate::video::VideoRequest::parse(tail, &params).map_err(|e| match e {
        crate::video::VideoError::BadParameter { param, why } => {
            PlanError::VideoParameter { param, why }
        }
        _ => PlanError::NoRoute,
    })?;
    Ok(Target {
        source: source.to_owned(),
        key,
        token,
        representation: Representation::Video(request),
    })
}

/// Parse and plan without authorization: for benches and unit tests of the parsing rules only
/// (feature `bench`); the pipeline goes through [`parse_object`], `authorize`, `admit`, then
/// [`resolve`].
#[cfg(any(test, feature = "bench"))]
pub fn plan_object(
    path: &str,
    query: Option<&str>,
    known_source: impl Fn(&str) -> bool,
) -> Result<Plan, PlanError> {
    let target = parse_object(path, query)?;
    if !known_source(&target.source) {
        return Err(PlanError::UnknownSource);
    }
    Ok(Plan {
        source: target.source,
        key: target.key,
        representation: target.representation,
    })
}

/// `/o/` takes one query parameter, `token` (a signed URL), at most once; every other parameter
/// is refused (S3's own `response-*`, `versionId` must never pass), and repeated names are
/// reported as such. Returns the decoded token.
pub fn check_query(query: Option<&str>) -> Result<Option<String>, PlanError> {
    let Some(q) = query else { return Ok(None) };
    if q.is_empty() {
        return Ok(None);
    }
    let mut seen = HashSet::new();
    let mut unknown = false;
    let mut token = None;
    for (name, value) in parse::query_pairs(q) {
        if !seen.insert(name) {
            return Err(PlanError::RepeatedParameter);
        }
        if name == "token" {
            let decoded =
                parse::percent_decode_utf8(value.unwrap_or(""), false).map_err(|e| match e {
                    DecodeError::BadPercent => PlanError::BadPercentEncoding,
                    DecodeError::NotUtf8 => PlanError::InvalidUtf8,
                })?;
            token = Some(decoded);
        } else {
            unknown = true;
        }
    }
    if unknown {
        return Err(PlanError::UnknownParameter);
    }
    Ok(token)
}

/// Decode a raw key once and validate it.
pub fn decode_key(raw: &str) -> Result<String, PlanError> {
    if raw.is_empty() {
        return Err(PlanError::EmptyKey);
    }
    let bytes = parse::percent_decode_bytes(raw).map_err(|_| PlanError::BadPercentEncoding)?;
    if bytes.len() > MAX_KEY_BYTES {
        return Err(PlanError::KeyTooLong);
    }
    let key = String::from_utf8(bytes).map_err(|_| PlanError::InvalidUtf8)?;
    if key.chars().any(char::is_control) {
        return Err(PlanError::ControlCharacter);
    }
    if key.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(PlanError::DotSegment);
    }
    Ok(key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap; src/ may not
mod tests {
    use super::*;

    fn plan(path: &str, query: Option<&str>) -> Result<Plan, PlanError> {
        plan_object(path, query, |s| s == "local")
    }

    #[test]
    fn key_is_decoded_exactly_once() {
        assert_eq!(decode_key("a%20b").as_deref(), Ok("a b"));
        assert_eq!(decode_key("%252e%252e").as_deref(), Ok("%2e%2e"));
        assert_eq!(decode_key("a+b").as_deref(), Ok("a+b"));
    }

    #[test]
    fn slashes_are_not_merged_or_trimmed() {
        assert_eq!(decode_key("a//b").as_deref(), Ok("a//b"));
        assert_eq!(decode_key("a/b/").as_deref(), Ok("a/b/"));
        assert_eq!(decode_key("a%2Fb").as_deref(), Ok("a/b"));
    }

    #[test]
    fn dot_segments_in_every_encoding_are_refused() {
        for raw in [
            "..",
            ".",
            "a/../b",
            "a/./b",
            "%2e%2e",
            "%2E.",
            ".%2e/x",
            "..%2F",
            "a%2F..%2Fb",
            "x/..",
        ] {
            assert_eq!(decode_key(raw), Err(PlanError::DotSegment), "{raw}");
        }
        assert_eq!(decode_key("...").as_deref(), Ok("..."));
        assert_eq!(decode_key("..a").as_deref(), Ok("..a"));
    }

    #[test]
    fn control_characters_and_bad_utf8_are_refused() {
        assert_eq!(decode_key("a%00b"), Err(PlanError::ControlCharacter));
        assert_eq!(decode_key("a%0Ab"), Err(PlanError::ControlCharacter));
        assert_eq!(decode_key("a%7Fb"), Err(PlanError::ControlCharacter));
        assert_eq!(decode_key("a%C2%85b"), Err(PlanError::ControlCharacter));
        assert_eq!(decode_key("a%FFb"), Err(PlanError::InvalidUtf8));
        assert_eq!(decode_key("a%C0%AE"), Err(PlanError::InvalidUtf8));
    }

    #[test]
    fn malformed_escapes_are_refused() {
        assert_eq!(decode_key("a%2"), Err(PlanError::BadPercentEncoding));
        assert_eq!(decode_key("a%zz"), Err(PlanError::BadPercentEncoding));
        assert_eq!(decode_key("%"), Err(PlanError::BadPercentEncoding));
    }

    #[test]
    fn key_length_limit_is_on_decoded_bytes() {
        let ok = "é".repeat(512); // 1024 bytes
        assert!(decode_key(&ok).is_ok());
        assert_eq!(decode_key(&format!("{ok}a")), Err(PlanError::KeyTooLong));
        let encoded = "%41".repeat(1024);
        assert!(decode_key(&encoded).is_ok());
        assert_eq!(
            decode_key(&format!("{encoded}%41")),
            Err(PlanError::KeyTooLong)
        );
    }

    #[test]
    fn routes_sources_and_queries() {
        assert_eq!(
            plan("/o/local/a.txt", None).map(|p| p.key).as_deref(),
            Ok("a.txt")
        );
        assert_eq!(plan("/o/other/a.txt", None), Err(PlanError::UnknownSource));
        assert_eq!(plan("/o/local", None), Err(PlanError::NoRoute));
        assert_eq!(plan("/x/local/a", None), Err(PlanError::NoRoute));
        assert_eq!(plan("/o/local/", None), Err(PlanError::EmptyKey));
        assert_eq!(
            plan("/o/local/a", Some("")).map(|p| p.key).as_deref(),
            Ok("a")
        );
        assert_eq!(
            plan("/o/local/a", Some("versionId=1")),
            Err(PlanError::UnknownParameter)
        );
        assert_eq!(
            plan("/o/local/a", Some("x=1&x=2")),
            Err(PlanError::RepeatedParameter)
        );
        assert_eq!(
            plan("/o/local/a", Some("response-content-type=text/html")),
            Err(PlanError::UnknownParameter)
        );
    }

    #[test]
    fn the_cache_key_is_the_exact_key_bytes_version_representation_and_partition() {
        let plan = plan("/o/local/a%20b//c", None).unwrap();
        let key = plan.cache_key("\"v1\"", Partition::Gateway);
        assert_eq!(key.source(), "local");
        assert_eq!(key.key(), b"a b//c");
        assert_eq!(key.version(), "\"v1\"");
        assert_eq!(key.representation(), "o");
        assert_eq!(key.partition(), &Partition::Gateway);
        assert_ne!(key, plan.cache_key("\"v2\"", Partition::Gateway));
        assert_ne!(
            key,
            plan.cache_key("\"v1\"", Partition::User("alice".into()))
        );
    }

    #[test]
    fn token_is_the_one_accepted_query_parameter_once() {
        let t = parse_object("/o/local/a", Some("token=a.b%2Ec")).unwrap();
        assert_eq!(t.token(), Some("a.b.c"));
        assert_eq!(
            parse_object("/o/local/a", Some("token=a&token=b")),
            Err(PlanError::RepeatedParameter)
        );
        assert_eq!(
            parse_object("/o/local/a", Some("token=a&x=1")),
            Err(PlanError::UnknownParameter)
        );
        assert_eq!(
            parse_object("/o/local/a", Some("token=%zz")),
            Err(PlanError::BadPercentEncoding)
        );
    }
}
