//! Request bodies, read within bounds: [`read_bounded`] for routes that take a small body (the
//! admin API's JSON, the SAML ACS form), and the checks for routes that take none.
//!
//! Routes that take no request body (GET and HEAD on `/o/`, the SAML GET routes) refuse one by
//! what actually arrives, not by how the request was framed.
//!
//! Most requests say up front that they carry nothing: the h2 HEADERS frame ends the stream, or
//! there is no body framing at all on http/1.1, or `Content-Length: 0`. Some clients and proxies
//! leave an h2 stream open and end it with an empty DATA frame, or send a GET with
//! `Transfer-Encoding: chunked` and a lone last chunk. Those bodies are empty too, but only
//! reading them shows it, so they are read to the end, within a short deadline and a few frames;
//! one data byte refuses the request. The object route reads them only after authorization and
//! the rate limits ([`framing`] first, [`read_to_end_empty`] later), so that an anonymous client
//! cannot park streams here.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;

/// Why a body that should be empty is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotEmpty {
    /// A declared length above zero, or a data frame with bytes in it.
    Data,
    /// The body neither ended nor sent data within the deadline.
    Timeout,
    /// The body failed while it was read (the client reset the stream, bad chunk framing).
    Broken,
}

/// Empty frames (and trailers) tolerated before a body that should be empty counts as data: a
/// flood of empty DATA frames would otherwise wake the request task once per frame.
const MAX_EMPTY_FRAMES: usize = 4;

/// What the framing alone says: `Ok(None)` no body, `Err(Data)` a declared length above zero,
/// `Ok(Some(body))` unknown until read (hand it to [`read_to_end_empty`]).
pub fn framing<B: Body>(body: B) -> Result<Option<B>, NotEmpty> {
    if body.is_end_stream() {
        Ok(None)
    } else if body.size_hint().lower() > 0 {
        Err(NotEmpty::Data)
    } else {
        Ok(Some(body))
    }
}

/// Read `body` to its end within `within`: `Ok` if no frame carried a data byte and there were
/// at most [`MAX_EMPTY_FRAMES`] frames.
pub async fn read_to_end_empty<B: Body>(body: B, within: Duration) -> Result<(), NotEmpty> {
    let read = async {
        let mut body = std::pin::pin!(body);
        let mut frames = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| NotEmpty::Broken)?;
            frames += 1;
            if frames > MAX_EMPTY_FRAMES || frame.data_ref().is_some_and(|d| d.has_remaining()) {
                return Err(NotEmpty::Data);
            }
        }
        Ok(())
    };
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| NotEmpty::Timeout)?
}

/// [`framing`], then [`read_to_end_empty`] if the framing leaves it open.
pub async fn expect_empty<B: Body>(body: B, within: Duration) -> Result<(), NotEmpty> {
    match framing(body)? {
        None => Ok(()),
        Some(body) => read_to_end_empty(body, within).await,
    }
}

/// Why a bounded read gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// Declared or sent more than the limit.
    TooLarge,
    /// The body failed while it was read (the client reset the stream, bad chunk framing).
    Broken,
    /// The body did not end within the deadline.
    Timeout,
}

/// Read a whole body of at most `max` bytes, within `within` if given. A declared length above
/// `max` is refused before any byte is read; so is the first frame that would pass it.
pub async fn read_bounded<B: Body>(
    body: B,
    max: usize,
    within: Option<Duration>,
) -> Result<Bytes, ReadError> {
    let hint = body.size_hint();
    if hint.lower() > max as u64 || hint.upper().is_some_and(|n| n > max as u64) {
        return Err(ReadError::TooLarge);
    }
    let read = async {
        let mut body = std::pin::pin!(body);
        let mut out = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| ReadError::Broken)?;
            if let Ok(mut data) = frame.into_data() {
                if out.len() + data.remaining() > max {
                    return Err(ReadError::TooLarge);
                }
                while data.has_remaining() {
                    let chunk = data.chunk();
                    out.extend_from_slice(chunk);
                    let n = chunk.len();
                    data.advance(n);
                }
            }
        }
        Ok(out.freeze())
    };
    match within {
        Some(within) => tokio::time::timeout(within, read)
            .await
            .map_err(|_| ReadError::Timeout)?,
        None => read.await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::{Empty, Full, StreamBody};

    const WITHIN: Duration = Duration::from_secs(5);

    type Frames =
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>;

    fn frames(items: Vec<Frame<Bytes>>) -> StreamBody<Frames> {
        let items: Vec<_> = items.into_iter().map(Ok).collect();
        StreamBody::new(futures_util::stream::iter(items))
    }

    #[tokio::test]
    async fn framed_empty_and_declared_data_answer_without_reading() {
        assert_eq!(expect_empty(Empty::<Bytes>::new(), WITHIN).await, Ok(()));
        assert_eq!(
            expect_empty(Full::new(Bytes::from_static(b"x")), WITHIN).await,
            Err(NotEmpty::Data)
        );
    }

    #[tokio::test]
    async fn empty_frames_and_trailers_are_no_body() {
        let body = frames(vec![
            Frame::data(Bytes::new()),
            Frame::data(Bytes::new()),
            Frame::trailers(http::HeaderMap::new()),
        ]);
        assert_eq!(expect_empty(body, WITHIN).await, Ok(()));
    }

    #[tokio::test]
    async fn one_data_byte_after_empty_frames_is_a_body() {
        let body = frames(vec![
            Frame::data(Bytes::new()),
            Frame::data(Bytes::from_static(b"a")),
        ]);
        assert_eq!(expect_empty(body, WITHIN).await, Err(NotEmpty::Data));
    }

    #[tokio::test]
    async fn a_flood_of_empty_frames_is_a_body() {
        let empties = |n: usize| {
            (0..n)
                .map(|_| Frame::data(Bytes::new()))
                .collect::<Vec<_>>()
        };
        let body = frames(empties(MAX_EMPTY_FRAMES));
        assert_eq!(expect_empty(body, WITHIN).await, Ok(()));
        let body = frames(empties(MAX_EMPTY_FRAMES + 1));
        assert_eq!(expect_empty(body, WITHIN).await, Err(NotEmpty::Data));
    }

    #[tokio::test]
    async fn a_failing_body_is_broken() {
        let body = StreamBody::new(futures_util::stream::iter(vec![Err::<Frame<Bytes>, _>(
            std::io::Error::other("reset"),
        )]));
        assert_eq!(expect_empty(body, WITHIN).await, Err(NotEmpty::Broken));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_times_out() {
        let body = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, std::io::Error>,
        >());
        assert_eq!(expect_empty(body, WITHIN).await, Err(NotEmpty::Timeout));
    }

    #[tokio::test]
    async fn a_bounded_read_takes_up_to_the_limit_and_refuses_one_byte_more() {
        let body = frames(vec![
            Frame::data(Bytes::from_static(b"ab")),
            Frame::data(Bytes::from_static(b"cd")),
        ]);
        assert_eq!(
            read_bounded(body, 4, Some(WITHIN)).await,
            Ok(Bytes::from_static(b"abcd"))
        );
        let body = frames(vec![
            Frame::data(Bytes::from_static(b"ab")),
            Frame::data(Bytes::from_static(b"cde")),
        ]);
        assert_eq!(read_bounded(body, 4, None).await, Err(ReadError::TooLarge));
    }

    #[tokio::test]
    async fn a_declared_length_above_the_limit_is_refused_unread() {
        let body = Full::new(Bytes::from_static(b"abcde"));
        assert_eq!(read_bounded(body, 4, None).await, Err(ReadError::TooLarge));
    }

    #[tokio::test]
    async fn a_failing_bounded_read_is_broken() {
        let body = StreamBody::new(futures_util::stream::iter(vec![Err::<Frame<Bytes>, _>(
            std::io::Error::other("reset"),
        )]));
        assert_eq!(read_bounded(body, 4, None).await, Err(ReadError::Broken));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_read_that_never_ends_times_out() {
        let body = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, std::io::Error>,
        >());
        assert_eq!(
            read_bounded(body, 4, Some(WITHIN)).await,
            Err(ReadError::Timeout)
        );
    }
}
