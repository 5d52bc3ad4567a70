//! The caller's `X-Request-Id`: kept as the correlation id of the events an admin request
//! records, repeated on every answer, and a field of the span every log line of the request is
//! written in (a fresh UUID when the caller sent none that can be kept).

use std::convert::Infallible;

use warp::reply::Response;
use warp::Filter;

use crate::error::ApiError;

/// Longest `X-Request-Id` kept; longer ones are refused, not cut.
const MAX_REQUEST_ID: usize = 128;

/// Whether an `X-Request-Id` can be kept as a correlation id: 1 to 128 visible ASCII characters.
fn acceptable_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The caller's `X-Request-Id` (a proxy's or the upstream service's own), or a clear error for
/// one that cannot be kept in the audit log as it is.
pub(crate) fn request_id(
) -> impl Filter<Extract = (Result<Option<String>, ApiError>,), Error = Infallible> + Clone {
    x_request_id().map(|id: Result<Option<String>, ()>| {
        id.map_err(|()| {
            ApiError::field(
                "X-Request-Id",
                format!(
                    "must be 1 to {MAX_REQUEST_ID} visible ASCII characters without spaces \
                     (it becomes the correlation id of the events this request records); \
                     send another or leave the header out"
                ),
            )
        })
    })
}

/// The `X-Request-Id` header: `Ok(None)` without one, `Err(())` for one that cannot be kept
/// (not text, or not [`acceptable_request_id`]).
pub(crate) fn x_request_id(
) -> impl Filter<Extract = (Result<Option<String>, ()>,), Error = Infallible> + Clone {
    warp::header::optional::<String>("x-request-id")
        .map(|id: Option<String>| match id {
            Some(id) if !acceptable_request_id(&id) => Err(()),
            id => Ok(id),
        })
        // warp refuses a header value that is not text.
        .or(warp::any().map(|| Err(())))
        .unify()
}

/// The span of one request: every log line written while the gateway handles it carries its
/// `request_id` (the caller's `X-Request-Id`, or a fresh UUID when there is none that can be
/// kept), `method` and `path` (never the query, which holds the codes of the links). With an
/// OpenTelemetry exporter it is also the request's span in the trace the caller's
/// `traceparent` names (or a new trace).
pub(crate) fn request_span(info: warp::trace::Info<'_>) -> tracing::Span {
    let request_id = info
        .request_headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| acceptable_request_id(id))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %info.method(),
        path = %info.path(),
    );
    // A caller's `traceparent` makes the request part of its trace (docs/adr/0029).
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&RequestHeaders(info.request_headers()))
    });
    // Fails only when no OpenTelemetry layer runs, where there is no trace to join.
    let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
    span
}

/// A request's headers as the trace context propagator reads them.
struct RequestHeaders<'a>(&'a warp::http::HeaderMap);

impl opentelemetry::propagation::Extractor for RequestHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Repeats the caller's `X-Request-Id` on the answer, so that the caller's log and ours meet.
pub(crate) fn echo_request_id(id: Result<Option<String>, ()>, mut response: Response) -> Response {
    if let Some(value) = id
        .ok()
        .flatten()
        .and_then(|id| warp::http::HeaderValue::from_str(&id).ok())
    {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::acceptable_request_id;

    #[test]
    fn request_ids_are_short_visible_ascii() {
        assert!(acceptable_request_id("hr-7f3a:42"));
        assert!(!acceptable_request_id(""));
        assert!(!acceptable_request_id("has space"));
        assert!(!acceptable_request_id("naïve"));
        assert!(!acceptable_request_id(&"x".repeat(129)));
    }
}
