//! The SMTP connections: a pool of lettre connections over sockets of our own, with Nagle's
//! algorithm off (docs/adr/0022).
//!
//! lettre's pooled transport opens its sockets itself and leaves `TCP_NODELAY` unset. Its
//! connection writes a message's body and the closing `.` in two writes; with Nagle on, the
//! second waits until the server acknowledges the first, and the server, which has nothing to
//! answer before it sees the `.`, delays that acknowledgement (40 ms on Linux). Every mail paid
//! that wait. Here the socket is opened by the pool, `TCP_NODELAY` is set on it, and lettre's
//! connection speaks SMTP over it (`AsyncSmtpConnection::connect_with_transport`), TLS included.
//!
//! - Several messages per connection: a connection goes back to the pool after each accepted
//!   mail. One used within [`FRESH`] is used again at once; an older one is checked with `NOOP`
//!   first (the server may have closed it), one idle for [`MAX_IDLE`] is closed.
//! - A failed exchange is never reused: lettre aborts the connection on any error.
//! - PIPELINING: lettre 0.11 cannot pipeline (`AsyncSmtpConnection::send` writes each of MAIL,
//!   RCPT and DATA and reads its reply before the next; its `Extension` has no PIPELINING), so
//!   each mail is five round trips (NOOP only after a pause).
//! - Every exchange (connecting included) is bounded by `timeout_seconds`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, Tls};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

/// A connection used this recently is used again without a `NOOP` first.
pub const FRESH: Duration = Duration::from_secs(1);
/// A connection idle this long is closed rather than used again.
pub const MAX_IDLE: Duration = Duration::from_secs(60);

/// Why an exchange with the SMTP server failed.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// The server's answer or lettre's refusal (lettre tells permanent from transient).
    #[error(transparent)]
    Smtp(#[from] lettre::transport::smtp::Error),
    /// No TCP connection to the server.
    #[error("cannot connect to the SMTP server at {server}: {source}")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    /// The server did not finish the exchange within `timeout_seconds`.
    #[error("the SMTP server did not answer within {0:?}")]
    Timeout(Duration),
}

impl SmtpError {
    /// Retrying cannot help (a 5xx answer, or a mail lettre refuses to send).
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Smtp(e) => e.is_permanent(),
            Self::Connect { .. } | Self::Timeout(_) => false,
        }
    }
}

/// Where and how to connect.
pub struct Server {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub hello_name: ClientId,
    pub credentials: Option<Credentials>,
    pub timeout: Duration,
}

struct Idle {
    connection: AsyncSmtpConnection,
    since: Instant,
}

/// At most `max` connections, each carrying one mail at a time.
pub struct Pool {
    server: Server,
    idle: Mutex<Vec<Idle>>,
    permits: Semaphore,
}

impl Pool {
    pub fn new(server: Server, max: u32) -> Self {
        Self {
            server,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(max.max(1) as usize),
        }
    }

    /// Sends one message on a pooled connection (or a new one) and returns the server's answer
    /// to the final `.`.
    pub async fn send(&self, envelope: &Envelope, message: &[u8]) -> Result<Response, SmtpError> {
        let _permit = self.permits.acquire().await.expect("the pool never closes");
        let timeout = self.server.timeout;
        let exchange = async {
            let mut connection = self.connection().await?;
            let answer = connection.send(envelope, message).await?;
            Ok::<_, SmtpError>((connection, answer))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok((connection, answer))) => {
                self.put_back(connection);
                Ok(answer)
            }
            Ok(Err(e)) => Err(e),
            // The connection is dropped with the future: its socket closes.
            Err(_) => Err(SmtpError::Timeout(timeout)),
        }
    }

    /// Whether the server answers a `NOOP` (on a pooled connection or a new one).
    pub async fn test_connection(&self) -> Result<bool, SmtpError> {
        let _permit = self.permits.acquire().await.expect("the pool never closes");
        let timeout = self.server.timeout;
        let check = async {
            let mut connection = self.connection().await?;
            let ok = connection.test_connected().await;
            Ok::<_, SmtpError>((connection, ok))
        };
        match tokio::time::timeout(timeout, check).await {
            Ok(Ok((connection, true))) => {
                self.put_back(connection);
                Ok(true)
            }
            Ok(Ok((_, false))) => Ok(false),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SmtpError::Timeout(timeout)),
        }
    }

    /// A pooled connection that still works, or a new one.
    async fn connection(&self) -> Result<AsyncSmtpConnection, SmtpError> {
        loop {
            let idle = self.idle.lock().expect("pool lock").pop();
            let Some(Idle {
                mut connection,
                since,
            }) = idle
            else {
                return self.connect().await;
            };
            let idle_for = since.elapsed();
            if idle_for >= MAX_IDLE {
                connection.abort().await;
                continue;
            }
            if idle_for < FRESH || connection.test_connected().await {
                return Ok(connection);
            }
            connection.abort().await;
        }
    }

    fn put_back(&self, connection: AsyncSmtpConnection) {
        if connection.has_broken() {
            return;
        }
        self.idle.lock().expect("pool lock").push(Idle {
            connection,
            since: Instant::now(),
        });
    }

    /// Opens a connection: TCP with `TCP_NODELAY`, implicit TLS or STARTTLS as configured,
    /// EHLO, and AUTH when credentials are set.
    async fn connect(&self) -> Result<AsyncSmtpConnection, SmtpError> {
        let s = &self.server;
        let tcp = TcpStream::connect((s.host.as_str(), s.port))
            .await
            .and_then(|tcp| tcp.set_nodelay(true).map(|()| tcp))
            .map_err(|source| SmtpError::Connect {
                server: format!("{}:{}", s.host, s.port),
                source,
            })?;
        let mut connection = match &s.tls {
            Tls::Wrapper(parameters) => {
                let peer = tcp.peer_addr().ok();
                #[allow(deprecated)] // lettre's one public way to wrap a socket of our own in TLS
                let mut stream =
                    lettre::transport::smtp::client::AsyncNetworkStream::use_existing_tokio1(
                        Box::new(tcp),
                    );
                stream.upgrade_tls(parameters.clone()).await?;
                let stream = Encrypted {
                    inner: stream.compat(),
                    peer,
                };
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &s.hello_name).await?
            }
            _ => AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &s.hello_name).await?,
        };
        match &s.tls {
            Tls::Required(parameters) => {
                connection
                    .starttls(parameters.clone(), &s.hello_name)
                    .await?
            }
            Tls::Opportunistic(parameters) if connection.can_starttls() => {
                connection
                    .starttls(parameters.clone(), &s.hello_name)
                    .await?
            }
            _ => {}
        }
        if let Some(credentials) = &s.credentials {
            connection
                .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await?;
        }
        Ok(connection)
    }
}

/// A TLS stream lettre set up (implicit TLS), seen through tokio's I/O traits so that lettre's
/// connection can run over it.
#[allow(deprecated)]
struct Encrypted {
    inner: Compat<lettre::transport::smtp::client::AsyncNetworkStream>,
    peer: Option<SocketAddr>,
}

impl std::fmt::Debug for Encrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encrypted")
            .field("peer", &self.peer)
            .finish()
    }
}

impl AsyncTokioStream for Encrypted {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.peer
            .ok_or_else(|| std::io::Error::other("the SMTP connection has no peer address"))
    }
}

impl AsyncRead for Encrypted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Encrypted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
