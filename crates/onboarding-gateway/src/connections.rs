//! How a listener serves its connections: HTTP/1.1 with the limits of `[gateway]`.
//!
//! warp's own server builds hyper without a timer, so nothing ends a client that sends its
//! headers or its body slowly, and its graceful shutdown waits for every connection however
//! long it takes. This accept loop serves the same warp filter (`warp::service`) through
//! hyper's HTTP/1.1 connection with:
//! - a header read timeout (hyper's, driven by `TokioTimer`): counted from when a connection is
//!   opened or its previous answer was sent, so it also ends idle keep-alive connections; the
//!   connection is closed without an answer;
//! - a body deadline ([`DeadlineBody`]): a body still arriving that long after its headers ends
//!   the request with `408` and closes the connection;
//! - a request timeout: an answer not ready that long after the headers is replaced by `503`;
//!   a client that stops reading its answer for that long loses the connection ([`Stalling`]);
//! - a connection cap: at most `max_connections` connections are open at once; the loop stops
//!   accepting until one closes, and new connections wait in the kernel's listen backlog;
//! - a shutdown deadline: on shutdown the loop stops accepting, lets open requests finish, and
//!   drops the connections still open when the deadline passes.
//!
//! The TCP peer reaches the filter as the request extension [`Peer`] (warp's `addr::remote`
//! only works under `warp::serve`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use onboarding_config::GatewaySettings;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use warp::http::{header, HeaderValue, Request, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

/// The limits one listener serves with (`[gateway]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `gateway.header_read_timeout_seconds`.
    pub header_read: Duration,
    /// `gateway.body_read_timeout_seconds`.
    pub body_read: Duration,
    /// `gateway.request_timeout_seconds`, also the limit for a write that makes no progress.
    pub request: Duration,
    /// `gateway.max_connections`.
    pub max_connections: NonZeroUsize,
    /// `gateway.shutdown_timeout_seconds`.
    pub shutdown: Duration,
}

impl Limits {
    /// The limits `[gateway]` sets.
    pub fn of(gateway: &GatewaySettings) -> Self {
        Self {
            header_read: gateway.header_read_timeout,
            body_read: gateway.body_read_timeout,
            request: gateway.request_timeout,
            max_connections: gateway.max_connections,
            shutdown: gateway.shutdown_timeout,
        }
    }
}

/// The TCP peer of a request's connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

/// The peer address of the request, as `warp::addr::remote` gives it under `warp::serve`.
pub(crate) fn peer() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Clone {
    warp::ext::optional::<Peer>().map(|peer: Option<Peer>| peer.map(|Peer(addr)| addr))
}

/// Serves `filter` on `listener` with `limits` until `shutdown`, then for at most
/// `limits.shutdown` more. `name` labels the log lines and the `onboard_http_*` metrics.
pub(crate) async fn serve<F, R>(
    listener: TcpListener,
    filter: F,
    limits: Limits,
    name: &'static str,
    shutdown: CancellationToken,
) where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    R: Reply,
{
    let service = TowerToHyperService::new(warp::service(filter));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    let open = Arc::new(Semaphore::new(limits.max_connections.get()));
    let graceful = GracefulShutdown::new();
    let force = CancellationToken::new();
    let mut at_cap = false;
    loop {
        if open.available_permits() == 0 && !at_cap {
            tracing::warn!(
                listener = name,
                max_connections = limits.max_connections.get(),
                "every connection slot is taken (gateway.max_connections); new connections wait \
                 in the listen backlog until one closes"
            );
        }
        at_cap = open.available_permits() == 0;
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            permit = open.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of descriptors, or a connection reset before it was accepted.
                    tracing::warn!(listener = name, %error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = service.clone();
        let answer = hyper::service::service_fn(move |request: Request<Incoming>| {
            answer(service.clone(), request, peer, limits, name)
        });
        let io = Stalling::new(TokioIo::new(stream), limits.request);
        let connection = graceful.watch(http.serve_connection(io, answer));
        let force = force.clone();
        tokio::spawn(async move {
            metrics::gauge!("onboard_http_connections", "listener" => name).increment(1.0);
            tokio::select! {
                ended = connection => if let Err(error) = ended {
                    match timed_out(&error) {
                        Some(phase) => {
                            metrics::counter!(
                                "onboard_http_timeouts_total", "listener" => name, "phase" => phase
                            )
                            .increment(1);
                            tracing::debug!(listener = name, %peer, phase, "client too slow; connection closed");
                        }
                        None => tracing::debug!(listener = name, %peer, %error, "connection ended"),
                    }
                },
                _ = force.cancelled() => {}
            }
            // The socket is closed (the connection was dropped) before the slot is given back.
            metrics::gauge!("onboard_http_connections", "listener" => name).decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    let still_open = limits
        .max_connections
        .get()
        .saturating_sub(open.available_permits());
    tracing::info!(
        listener = name,
        open = still_open,
        deadline_seconds = limits.shutdown.as_secs(),
        "stopped accepting; letting open requests finish"
    );
    if tokio::time::timeout(limits.shutdown, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            open = limits
                .max_connections
                .get()
                .saturating_sub(open.available_permits()),
            "connections still open at the shutdown deadline (gateway.shutdown_timeout_seconds); \
             dropping them"
        );
        force.cancel();
    }
}

/// Which of the connection's timeouts ended it: `headers` (hyper's header read timeout) or
/// `answer` ([`Stalling`]: the client stopped reading).
fn timed_out(error: &hyper::Error) -> Option<&'static str> {
    if error.is_timeout() {
        return Some("headers");
    }
    let io = std::error::Error::source(error)?.downcast_ref::<std::io::Error>()?;
    (io.kind() == std::io::ErrorKind::TimedOut).then_some("answer")
}

/// One request: the peer as an extension, the body under its deadline, the answer under the
/// request timeout. A request ended by either is dropped where it stands (a database transaction
/// in progress rolls back) and counted in `onboard_http_timeouts_total`, not by the routes.
async fn answer<S>(
    service: S,
    request: Request<Incoming>,
    peer: SocketAddr,
    limits: Limits,
    name: &'static str,
) -> Result<Response, Infallible>
where
    S: hyper::service::Service<Request<DeadlineBody>, Response = Response, Error = Infallible>,
{
    let late = Arc::new(Notify::new());
    let deadline = tokio::time::Instant::now() + limits.body_read;
    let mut request = request.map(|body| DeadlineBody {
        inner: body,
        deadline,
        sleep: None,
        late: Some(late.clone()),
    });
    request.extensions_mut().insert(Peer(peer));
    tokio::select! {
        biased;
        () = late.notified() => {
            metrics::counter!(
                "onboard_http_timeouts_total", "listener" => name, "phase" => "body"
            )
            .increment(1);
            tracing::debug!(listener = name, %peer, "request body not received in time; answering 408");
            Ok(closing(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} s of its headers \
                     (gateway.body_read_timeout_seconds); send the request again, body and all",
                    limits.body_read.as_secs()
                ),
            ))
        }
        answered = tokio::time::timeout(limits.request, service.call(request)) => match answered {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(never)) => match never {},
            Err(_elapsed) => {
                metrics::counter!(
                    "onboard_http_timeouts_total", "listener" => name, "phase" => "request"
                )
                .increment(1);
                tracing::warn!(
                    listener = name,
                    %peer,
                    seconds = limits.request.as_secs(),
                    "no answer within gateway.request_timeout_seconds; answering 503"
                );
                let mut response = closing(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    format!(
                        "the gateway could not answer within {} s \
                         (gateway.request_timeout_seconds); try again in a moment",
                        limits.request.as_secs()
                    ),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                Ok(response)
            }
        },
    }
}

/// A refusal after which the connection is closed: the rest of its request is not read.
fn closing(status: StatusCode, code: &str, message: String) -> Response {
    let mut response = crate::error::plain(status, code, message);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A connection whose writes fail once they have made no progress for `limit`: a client that
/// stops reading its answers cannot hold its connection (and its slot) for ever.
struct Stalling<I> {
    inner: I,
    limit: Duration,
    /// Armed while a write waits for the client to read.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> Stalling<I> {
    fn new(inner: I, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    /// `Pending` from a write: arm the deadline, or fail once it passed. Anything else
    /// disarms it.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing of its answer for gateway.request_timeout_seconds",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: hyper::rt::Read + Unpin> hyper::rt::Read for Stalling<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: hyper::rt::Write + Unpin> hyper::rt::Write for Stalling<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check(cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.check(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check(cx, polled)
    }
}

/// A request body that, once it is still arriving at its deadline, wakes `late` and yields
/// nothing more: [`answer`] then drops the request and answers `408`, so no route turns the
/// late body into an error of its own.
pub(crate) struct DeadlineBody {
    inner: Incoming,
    deadline: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Taken when the deadline passes.
    late: Option<Arc<Notify>>,
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(late) = &this.late else {
            return Poll::Pending;
        };
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame),
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_ready() {
                    late.notify_one();
                    this.late = None;
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Far longer than any wait below.
    const LONG: Duration = Duration::from_secs(600);

    fn limits() -> Limits {
        Limits {
            header_read: LONG,
            body_read: Duration::from_millis(200),
            request: Duration::from_millis(500),
            max_connections: NonZeroUsize::new(8).unwrap(),
            shutdown: Duration::from_millis(200),
        }
    }

    /// Serves `filter` on a port of its own until the token is cancelled.
    async fn start<F, R>(
        filter: F,
        limits: Limits,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>)
    where
        F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
        R: Reply + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let served = tokio::spawn(serve(listener, filter, limits, "test", stop.clone()));
        (addr, stop, served)
    }

    /// Sends `request` and reads until the server closes the connection.
    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
            .await
            .expect("the server neither answered nor closed the connection")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn an_answer_that_is_not_ready_in_time_becomes_503_with_retry_after() {
        let slow = warp::any().then(|| async {
            tokio::time::sleep(LONG).await;
            "too late"
        });
        let (addr, _stop, _served) = start(slow, limits()).await;
        let answer = exchange(addr, "GET / HTTP/1.1\r\nHost: test\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("retry-after: 5"), "{answer}");
        assert!(
            answer.contains("gateway.request_timeout_seconds"),
            "{answer}"
        );
        assert!(!answer.contains("too late"), "{answer}");
    }

    #[tokio::test]
    async fn a_late_body_ends_the_request_with_408() {
        // A route that would answer 400 to a body it cannot read never sees the late one.
        let echo = warp::body::bytes()
            .map(|body: Bytes| body.len().to_string())
            .recover(|_| async { Ok::<_, Infallible>(StatusCode::BAD_REQUEST) });
        let (addr, _stop, _served) = start(echo, limits()).await;
        let cut = "POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc";
        let answer = exchange(addr, cut).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        assert!(answer.contains("body_timeout"), "{answer}");
        // A whole body is read as it was sent.
        let whole =
            "POST / HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc";
        let answer = exchange(addr, whole).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n3"), "{answer}");
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_its_answer_loses_the_connection() {
        // An answer far larger than the socket buffers on both sides, and a small one.
        let answers = warp::path("big")
            .map(|| "x".repeat(64 << 20))
            .or(warp::any().map(|| "small".to_owned()))
            .unify();
        let one = Limits {
            max_connections: NonZeroUsize::MIN,
            ..limits()
        };
        let (addr, _stop, _served) = start(answers, one).await;
        let mut reader = tokio::net::TcpStream::connect(addr).await.unwrap();
        reader
            .write_all(b"GET /big HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        // With one connection allowed, the next is served once the one that stopped reading
        // was dropped.
        let answer = exchange(
            addr,
            "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.ends_with("\r\n\r\nsmall"), "{answer}");
        // What was in flight still arrives, then the connection ends before its 64 MiB.
        let mut received = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => received += n,
                }
            }
        })
        .await
        .expect("the connection that stopped reading is still open");
        assert!(received < 64 << 20, "the whole answer arrived");
    }

    #[tokio::test]
    async fn the_filter_sees_the_tcp_peer() {
        let who = peer().map(|peer: Option<SocketAddr>| {
            peer.map_or("nobody".to_owned(), |p| p.ip().to_string())
        });
        let (addr, _stop, _served) = start(who, limits()).await;
        let answer = exchange(
            addr,
            "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.ends_with("\r\n\r\n127.0.0.1"), "{answer}");
    }

    #[tokio::test]
    async fn shutdown_ends_at_its_deadline_with_a_request_still_running() {
        let stuck = warp::any().then(|| async {
            tokio::time::sleep(LONG).await;
            "done"
        });
        let limits = Limits {
            request: LONG,
            body_read: LONG / 2,
            ..limits()
        };
        let (addr, stop, served) = start(stuck, limits).await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        // Connections are accepted in order: once a later one is served, the stuck one is open.
        let answer = exchange(addr, "BAD\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), served)
            .await
            .expect("serve did not return after its shutdown deadline")
            .unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut rest))
            .await
            .expect("the stuck connection is still open");
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    }
}
