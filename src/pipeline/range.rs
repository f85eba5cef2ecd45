//! Range and conditional requests (RFC 9110 sections 13 and 14), decided from the object's
//! metadata alone, identically for every backend.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::{
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};

use crate::backend::{Ask, ByteRange, ObjectMeta};

/// What the client asked for with `Range`, before looking at the object (defined with the
/// backends, which forward it in [`Ask`]).
pub use crate::backend::RangeSpec;

/// The part of the object to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    Full,
    Partial(ByteRange),
    Unsatisfiable,
}

/// The outcome of the conditional headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    Proceed,
    NotModified,
    Failed,
}

/// What a GET or HEAD gets, decided from the conditional headers and the object's metadata alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    NotModified,
    PreconditionFailed,
    Unsatisfiable,
    /// Send the object, or one part of it (`None` = all of it).
    Send(Option<ByteRange>),
}

/// Decide the answer: preconditions first, then `If-Range`, then `Range` (never for HEAD).
pub fn answer(headers: &HeaderMap, meta: &ObjectMeta, head_only: bool) -> Answer {
    match preconditions(headers, meta) {
        Precondition::Proceed => {}
        Precondition::NotModified => return Answer::NotModified,
        Precondition::Failed => return Answer::PreconditionFailed,
    }
    let spec = if head_only || !if_range_holds(headers, meta) {
        None
    } else {
        parse_range(headers)
    };
    match select(spec, meta.size) {
        Selection::Full => Answer::Send(None),
        Selection::Partial(r) => Answer::Send(Some(r)),
        Selection::Unsatisfiable => Answer::Unsatisfiable,
    }
}

/// An owned copy of just the headers [`answer`] reads, to carry into a backend's blocking call.
pub fn conditional_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [
        IF_MATCH,
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_UNMODIFIED_SINCE,
        IF_RANGE,
        RANGE,
    ] {
        for value in headers.get_all(&name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// What to ask a store that evaluates ranges and conditions itself, so that its one answer is
/// usually the one [`answer`] decides: the range [`parse_range`] reads, and each condition
/// [`preconditions`] would look at, read the same way. If-Unmodified-Since goes only without
/// If-Match, If-Modified-Since only without If-None-Match (RFC 9110, 13.2.2: S3 would otherwise
/// answer 304 where the RFC says 200); an entity-tag list, a weak tag or `*` is not forwarded
/// (nor the date it overrides): the store sends the object, and [`answer`] decides on its
/// metadata.
pub fn ask(headers: &HeaderMap, head_only: bool) -> Ask {
    let mut ask = Ask {
        head_only,
        range: if head_only {
            None
        } else {
            parse_range(headers)
        },
        ..Ask::default()
    };
    match header_str(headers, IF_MATCH) {
        Some(v) => ask.if_match = one_strong_tag(v),
        None => ask.if_unmodified_since = header_date(headers, IF_UNMODIFIED_SINCE),
    }
    match header_str(headers, IF_NONE_MATCH) {
        Some(v) => ask.if_none_match = one_strong_tag(v),
        None => ask.if_modified_since = header_date(headers, IF_MODIFIED_SINCE),
    }
    ask
}

/// `v` if it is exactly one strong entity tag (`"` etagc* `"`, RFC 9110, 8.8.3), else `None`.
fn one_strong_tag(v: &str) -> Option<String> {
    let v = v.trim();
    let inner = v.strip_prefix('"')?.strip_suffix('"')?;
    inner
        .bytes()
        .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b))
        .then(|| v.to_owned())
}

/// Parse a `Range` header. `None` means "serve the whole object": no header, several headers,
/// several ranges, another unit, or invalid syntax (a server may ignore what it cannot honour).
pub fn parse_range(headers: &HeaderMap) -> Option<RangeSpec> {
    let mut values = headers.get_all(RANGE).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let text = value.to_str().ok()?.trim();
    let (unit, set) = text.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let set = set.trim();
    if set.contains(',') {
        return None;
    }
    let (first, last) = set.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    match (first.is_empty(), last.is_empty()) {
        (true, true) => None,
        (true, false) => Some(RangeSpec::Suffix(digits(last)?)),
        (false, true) => Some(RangeSpec::From(digits(first)?)),
        (false, false) => {
            let (a, b) = (digits(first)?, digits(last)?);
            (a <= b).then_some(RangeSpec::FromTo(a, b))
        }
    }
}

fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Overflowing positions are past any real object's end.
    Some(s.parse().unwrap_or(u64::MAX))
}

/// Resolve a range against an object size: clip past the end, 416 when nothing is left.
pub fn select(spec: Option<RangeSpec>, size: u64) -> Selection {
    let Some(spec) = spec else {
        return Selection::Full;
    };
    if size == 0 {
        return Selection::Unsatisfiable;
    }
    let last = size - 1;
    let (start, end) = match spec {
        RangeSpec::FromTo(a, b) => (a, b.min(last)),
        RangeSpec::From(a) => (a, last),
        RangeSpec::Suffix(0) => return Selection::Unsatisfiable,
        RangeSpec::Suffix(n) => (size.saturating_sub(n), last),
    };
    if start > last {
        return Selection::Unsatisfiable;
    }
    Selection::Partial(ByteRange { start, end })
}

/// Evaluate If-Match, If-Unmodified-Since, If-None-Match and If-Modified-Since, in RFC 9110 order.
pub fn preconditions(headers: &HeaderMap, meta: &ObjectMeta) -> Precondition {
    let etag = meta.etag.as_deref();
    if let Some(v) = header_str(headers, IF_MATCH) {
        if !list_matches(v, etag, true) {
            return Precondition::Failed;
        }
    } else if let Some(since) = header_date(headers, IF_UNMODIFIED_SINCE)
        && meta.last_modified.is_some_and(|lm| lm > since)
    {
        return Precondition::Failed;
    }
    if let Some(v) = header_str(headers, IF_NONE_MATCH) {
        if list_matches(v, etag, false) {
            return Precondition::NotModified;
        }
    } else if let Some(since) = header_date(headers, IF_MODIFIED_SINCE)
        && meta.last_modified.is_some_and(|lm| lm <= since)
    {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

/// `If-Range`: the range applies only if the validator still names this exact representation.
pub fn if_range_holds(headers: &HeaderMap, meta: &ObjectMeta) -> bool {
    let Some(v) = headers.get(IF_RANGE) else {
        return true;
    };
    let Ok(v) = v.to_str() else { return false };
    let v = v.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        // Strong comparison: a weak validator never matches.
        return !v.starts_with("W/") && meta.etag.as_deref() == Some(v);
    }
    match (httpdate::parse_http_date(v), meta.last_modified) {
        (Ok(date), Some(lm)) => date == lm && date_is_strong(lm, SystemTime::now()),
        _ => false,
    }
}

/// A Last-Modified date is a weak validator while the object could still change within the
/// second it names (RFC 9110, 8.8.2.2): two writes in one second share one date. It counts as
/// strong only once a full second has passed after that second ended.
fn date_is_strong(last_modified: SystemTime, now: SystemTime) -> bool {
    now.duration_since(last_modified)
        .is_ok_and(|age| age >= Duration::from_secs(2))
}

fn header_str(headers: &HeaderMap, name: http::HeaderName) -> Option<&str> {
    // An unreadable conditional header is treated as absent.
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn header_date(headers: &HeaderMap, name: http::HeaderName) -> Option<SystemTime> {
    header_str(headers, name).and_then(|v| httpdate::parse_http_date(v.trim()).ok())
}

/// Does an entity-tag list (`*` or `"a", W/"b"`) match `etag`? `strong` selects the comparison.
fn list_matches(list: &str, etag: Option<&str>, strong: bool) -> bool {
    let list = list.trim();
    if list == "*" {
        return true;
    }
    let Some(etag) = etag else { return false };
    let ours = etag.strip_prefix("W/").unwrap_or(etag);
    let ours_weak = etag.starts_with("W/");
    list.split(',').map(str::trim).any(|candidate| {
        let weak = candidate.starts_with("W/");
        let tag = candidate.strip_prefix("W/").unwrap_or(candidate);
        if strong && (weak || ours_weak) {
            return false;
        }
        tag == ours
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap; src/ may not
mod tests {
    use std::time::UNIX_EPOCH;

    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(http::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn meta() -> ObjectMeta {
        ObjectMeta {
            size: 100,
            etag: Some("\"abc\"".into()),
            last_modified: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            content_type: None,
        }
    }

    fn range(v: &str) -> Option<RangeSpec> {
        parse_range(&headers(&[(RANGE, v)]))
    }

    #[test]
    fn range_forms() {
        assert_eq!(range("bytes=0-9"), Some(RangeSpec::FromTo(0, 9)));
        assert_eq!(range("bytes=5-"), Some(RangeSpec::From(5)));
        assert_eq!(range("bytes=-5"), Some(RangeSpec::Suffix(5)));
        assert_eq!(range("BYTES = 1-2"), Some(RangeSpec::FromTo(1, 2)));
        assert_eq!(range("bytes=0-1,3-4"), None);
        assert_eq!(range("bytes=5-4"), None);
        assert_eq!(range("items=0-1"), None);
        assert_eq!(range("bytes=-"), None);
        assert_eq!(range("bytes=+1-2"), None);
        assert_eq!(
            range("bytes=99999999999999999999999-"),
            Some(RangeSpec::From(u64::MAX))
        );
    }

    #[test]
    fn selection_clips_and_refuses() {
        let p = |s, e| Selection::Partial(ByteRange { start: s, end: e });
        assert_eq!(select(Some(RangeSpec::FromTo(0, 9)), 100), p(0, 9));
        assert_eq!(select(Some(RangeSpec::FromTo(90, 200)), 100), p(90, 99));
        assert_eq!(select(Some(RangeSpec::From(99)), 100), p(99, 99));
        assert_eq!(
            select(Some(RangeSpec::From(100)), 100),
            Selection::Unsatisfiable
        );
        assert_eq!(select(Some(RangeSpec::Suffix(10)), 100), p(90, 99));
        assert_eq!(select(Some(RangeSpec::Suffix(1000)), 100), p(0, 99));
        assert_eq!(
            select(Some(RangeSpec::Suffix(0)), 100),
            Selection::Unsatisfiable
        );
        assert_eq!(
            select(Some(RangeSpec::From(0)), 0),
            Selection::Unsatisfiable
        );
        assert_eq!(select(None, 0), Selection::Full);
    }

    #[test]
    fn conditionals() {
        let m = meta();
        assert_eq!(
            preconditions(&headers(&[(IF_NONE_MATCH, "\"abc\"")]), &m),
            Precondition::NotModified
        );
        assert_eq!(
            preconditions(&headers(&[(IF_NONE_MATCH, "W/\"abc\"")]), &m),
            Precondition::NotModified
        );
        assert_eq!(
            preconditions(&headers(&[(IF_NONE_MATCH, "\"x\", \"abc\"")]), &m),
            Precondition::NotModified
        );
        assert_eq!(
            preconditions(&headers(&[(IF_NONE_MATCH, "\"x\"")]), &m),
            Precondition::Proceed
        );
        assert_eq!(
            preconditions(&headers(&[(IF_NONE_MATCH, "*")]), &m),
            Precondition::NotModified
        );
        let lm = httpdate::fmt_http_date(m.last_modified.unwrap());
        let before = httpdate::fmt_http_date(m.last_modified.unwrap() - Duration::from_secs(1));
        assert_eq!(
            preconditions(&headers(&[(IF_MODIFIED_SINCE, &lm)]), &m),
            Precondition::NotModified
        );
        assert_eq!(
            preconditions(&headers(&[(IF_MODIFIED_SINCE, &before)]), &m),
            Precondition::Proceed
        );
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            preconditions(
                &headers(&[(IF_NONE_MATCH, "\"x\""), (IF_MODIFIED_SINCE, &lm)]),
                &m
            ),
            Precondition::Proceed
        );
        assert_eq!(
            preconditions(&headers(&[(IF_MATCH, "\"x\"")]), &m),
            Precondition::Failed
        );
        assert_eq!(
            preconditions(&headers(&[(IF_MATCH, "W/\"abc\"")]), &m),
            Precondition::Failed
        );
        assert_eq!(
            preconditions(&headers(&[(IF_MATCH, "\"abc\"")]), &m),
            Precondition::Proceed
        );
        assert_eq!(
            preconditions(&headers(&[(IF_UNMODIFIED_SINCE, &before)]), &m),
            Precondition::Failed
        );
    }

    #[test]
    fn ask_forwards_what_the_precondition_order_reads() {
        let lm = "Wed, 01 Jan 2025 00:00:00 GMT";
        let date = httpdate::parse_http_date(lm).ok();
        let a = ask(
            &headers(&[
                (RANGE, "bytes=-5"),
                (IF_NONE_MATCH, "\"abc\""),
                (IF_MODIFIED_SINCE, lm),
                (IF_UNMODIFIED_SINCE, lm),
            ]),
            false,
        );
        assert_eq!(
            a,
            Ask {
                head_only: false,
                range: Some(RangeSpec::Suffix(5)),
                if_match: None,
                if_unmodified_since: date,
                if_none_match: Some("\"abc\"".into()),
                if_modified_since: None,
            }
        );
        // A list, a weak tag or `*` is decided here, never by the store; the date it overrides
        // is not forwarded either.
        for v in ["\"a\", \"b\"", "W/\"a\"", "*", "\"a\"b\"", "abc"] {
            let a = ask(&headers(&[(IF_MATCH, v), (IF_UNMODIFIED_SINCE, lm)]), false);
            assert_eq!((a.if_match, a.if_unmodified_since), (None, None), "{v}");
            let a = ask(
                &headers(&[(IF_NONE_MATCH, v), (IF_MODIFIED_SINCE, lm)]),
                false,
            );
            assert_eq!((a.if_none_match, a.if_modified_since), (None, None), "{v}");
        }
        let a = ask(
            &headers(&[(IF_MATCH, " \"x\" "), (IF_MODIFIED_SINCE, lm)]),
            true,
        );
        assert_eq!(a.if_match.as_deref(), Some("\"x\""));
        assert_eq!(a.if_modified_since, date);
        assert!(a.head_only);
        // HEAD never asks for a range; several ranges ask for none.
        assert_eq!(ask(&headers(&[(RANGE, "bytes=0-1")]), true).range, None);
        assert_eq!(
            ask(&headers(&[(RANGE, "bytes=0-1,3-4")]), false).range,
            None
        );
        assert_eq!(ask(&headers(&[]), false), Ask::default());
    }

    #[test]
    fn if_range() {
        let m = meta();
        let lm = httpdate::fmt_http_date(m.last_modified.unwrap());
        assert!(if_range_holds(&headers(&[]), &m));
        assert!(if_range_holds(&headers(&[(IF_RANGE, "\"abc\"")]), &m));
        assert!(!if_range_holds(&headers(&[(IF_RANGE, "\"old\"")]), &m));
        assert!(!if_range_holds(&headers(&[(IF_RANGE, "W/\"abc\"")]), &m));
        assert!(if_range_holds(&headers(&[(IF_RANGE, &lm)]), &m));
        assert!(!if_range_holds(
            &headers(&[(IF_RANGE, "Mon, 01 Jan 2001 00:00:00 GMT")]),
            &m
        ));
    }

    #[test]
    fn if_range_date_of_an_object_modified_this_second_is_weak() {
        let now = SystemTime::now();
        let whole_second =
            UNIX_EPOCH + Duration::from_secs(now.duration_since(UNIX_EPOCH).unwrap().as_secs());
        let m = ObjectMeta {
            last_modified: Some(whole_second),
            ..meta()
        };
        let lm = httpdate::fmt_http_date(whole_second);
        assert!(!if_range_holds(&headers(&[(IF_RANGE, &lm)]), &m));
        assert!(!date_is_strong(
            whole_second,
            whole_second + Duration::from_millis(1999)
        ));
        assert!(date_is_strong(
            whole_second,
            whole_second + Duration::from_secs(2)
        ));
        // A date in the future (clock skew) is never strong.
        assert!(!date_is_strong(
            whole_second + Duration::from_secs(5),
            whole_second
        ));
    }
}
