//! Request bodies read up to a limit, whether or not the client announced their length.

use bytes::Bytes;
use warp::{Filter, Rejection};

/// A body over the limit named by `setting` (`max` bytes); answered with 413.
#[derive(Debug)]
pub(crate) struct BodyTooLarge {
    pub(crate) setting: &'static str,
    pub(crate) max: u64,
}
impl warp::reject::Reject for BodyTooLarge {}

/// A body the connection failed to deliver.
#[derive(Debug)]
pub(crate) struct BodyUnreadable;
impl warp::reject::Reject for BodyUnreadable {}

/// The request body, at most `max` bytes, whether or not the client sent a Content-Length
/// (`curl -X POST` without a body sends none). Larger bodies are refused with 413.
pub(crate) fn limited_body(max: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    limited_body_as(max, "gateway.max_body_bytes")
}

/// [`limited_body`] whose limit comes from the setting `setting` (named in the 413 answer).
pub(crate) fn limited_body_as(
    max: u64,
    setting: &'static str,
) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and_then(move |len: Option<u64>| async move {
            match len {
                Some(l) if l > max => Err(warp::reject::custom(BodyTooLarge { setting, max })),
                _ => Ok(()),
            }
        })
        .untuple_one()
        .and(warp::body::stream())
        .and_then(move |stream| collect_limited(stream, max, setting))
}

async fn collect_limited<S, B>(
    stream: S,
    max: u64,
    setting: &'static str,
) -> Result<Bytes, Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: warp::Buf,
{
    use futures::TryStreamExt;
    let mut body = Vec::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(mut chunk) = stream
        .try_next()
        .await
        .map_err(|_| warp::reject::custom(BodyUnreadable))?
    {
        if body.len() as u64 + chunk.remaining() as u64 > max {
            return Err(warp::reject::custom(BodyTooLarge { setting, max }));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(body))
}
