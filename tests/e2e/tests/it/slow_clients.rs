//! Slow and idle clients against a real gateway process with small `[gateway]` timeouts: a
//! client that stalls in its headers or its body loses its connection, connections beyond
//! `max_connections` wait until a slot frees, and a stopping gateway does not wait for a
//! stalled client beyond `shutdown_timeout_seconds`.

use std::io::{ErrorKind, Read};
use std::time::{Duration, Instant};

use onboarding_e2e::{Options, Stack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something the gateway must do within a few seconds.
const PATIENCE: Duration = Duration::from_secs(60);

/// A stack with only a gateway, started with `[gateway]` overrides (`KEY`, value), ready.
async fn gateway_with(name: &str, settings: &[(&str, &str)]) -> (Stack, String) {
    let stack = Stack::new(name, Options::default()).await;
    let env: Vec<(String, &str)> = settings
        .iter()
        .map(|(key, value)| (format!("ONBOARD__GATEWAY__{key}"), *value))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    stack.spawn_with_env("gateway", &env);
    let addr = stack.base_url.trim_start_matches("http://").to_owned();
    let deadline = Instant::now() + PATIENCE;
    loop {
        // One connection per request, closed after it: no client pool holds a slot.
        if let Ok(answer) =
            tokio::time::timeout(Duration::from_secs(5), get(&addr, "/healthz")).await
        {
            if answer.is_ok_and(|a| a.starts_with("HTTP/1.1 200")) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not answer /healthz within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (stack, addr)
}

/// `GET path` on a connection of its own (`Connection: close`): the whole answer.
async fn get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Everything the gateway sends on `stream` until it closes the connection; `None` when the
/// connection is still open after [`PATIENCE`].
async fn until_closed(stream: &mut TcpStream) -> Option<String> {
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                // A reset counts as closed too.
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    closed
        .ok()
        .map(|()| String::from_utf8_lossy(&seen).into_owned())
}

/// Whether the gateway has closed `stream`, without waiting: a non-blocking read finds the end
/// of the stream (or a reset) rather than nothing to read yet.
fn closed_now(mut stream: &std::net::TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!(
            "an idle connection got an answer: {}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

#[tokio::test]
async fn a_client_that_stalls_in_its_headers_is_disconnected_without_an_answer() {
    let (_stack, addr) = gateway_with("slowheaders", &[("HEADER_READ_TIMEOUT_SECONDS", "2")]).await;

    // Half a header line, then nothing.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        .await
        .unwrap();
    let seen = until_closed(&mut slow)
        .await
        .expect("the gateway still holds a connection whose headers never ended");
    assert!(seen.is_empty(), "a stalled request got an answer: {seen}");

    // A keep-alive connection that falls silent after its answer is closed the same way.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    let seen = until_closed(&mut idle)
        .await
        .expect("the gateway still holds an idle keep-alive connection");
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");

    // Meanwhile the gateway serves others.
    let answer = get(&addr, "/healthz").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_client_that_stalls_in_its_body_gets_408_and_its_connection_is_closed() {
    let (stack, addr) = gateway_with(
        "slowbody",
        &[
            ("BODY_READ_TIMEOUT_SECONDS", "2"),
            ("REQUEST_TIMEOUT_SECONDS", "30"),
        ],
    )
    .await;

    // The admin API's JSON body and the password page's form, each cut short.
    let requests = [
        format!(
            "POST /api/v1/users HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"username\": \"slow",
            stack.admin_token
        ),
        "POST /confirm HTTP/1.1\r\nHost: gateway\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\ncode=abc"
            .to_owned(),
    ];
    for request in requests {
        let mut slow = TcpStream::connect(&addr).await.unwrap();
        slow.write_all(request.as_bytes()).await.unwrap();
        let seen = until_closed(&mut slow)
            .await
            .expect("the gateway still holds a connection whose body never ended");
        assert!(seen.starts_with("HTTP/1.1 408"), "{seen}");
        assert!(
            seen.to_ascii_lowercase().contains("connection: close"),
            "{seen}"
        );
        assert!(
            seen.contains("\"error\":\"body_timeout\"")
                && seen.contains("gateway.body_read_timeout_seconds"),
            "the answer says which limit was hit: {seen}"
        );
    }

    // Nothing was invited by the cut request.
    let list = stack
        .http
        .get(stack.url("/api/v1/users"))
        .bearer_auth(&stack.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!list.contains("\"slow"), "{list}");
}

#[tokio::test]
async fn beyond_the_connection_cap_a_request_waits_until_an_idle_connection_times_out() {
    let (_stack, addr) = gateway_with(
        "connectioncap",
        &[
            ("MAX_CONNECTIONS", "2"),
            ("HEADER_READ_TIMEOUT_SECONDS", "3"),
        ],
    )
    .await;

    // Two clients take both slots and send nothing (the listen queue is first come, first
    // served, so they are accepted before the request below).
    let mut idle: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // A third client's request waits in the backlog: the gateway does not refuse it ...
    let answer = tokio::time::timeout(PATIENCE, get(&addr, "/healthz"))
        .await
        .expect("a request beyond the cap was never answered")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // ... and is answered only once the header timeout closed an idle connection and freed its slot.
    let closed = idle.iter().filter(|s| closed_now(s)).count();
    assert!(
        closed >= 1,
        "the request beyond max_connections was answered while both idle connections were still open"
    );
    // The other idle connection goes the same way, without an answer.
    for stream in &mut idle {
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut rest = Vec::new();
        match stream.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest)),
            Err(e) => assert!(
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "an idle connection is still open"
            ),
        }
    }
}

#[tokio::test]
async fn a_stopping_gateway_drops_a_stalled_client_at_the_shutdown_deadline() {
    let (stack, addr) = gateway_with(
        "slowshutdown",
        &[
            ("SHUTDOWN_TIMEOUT_SECONDS", "1"),
            // Far beyond the wait for the process below: only the shutdown deadline can end
            // the stalled request in time.
            ("BODY_READ_TIMEOUT_SECONDS", "300"),
            ("REQUEST_TIMEOUT_SECONDS", "600"),
        ],
    )
    .await;

    // `Expect: 100-continue`: the gateway's "100 Continue" says that it reads this body now.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/users HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\nExpect: 100-continue\r\n\r\n",
        stack.admin_token
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
            let n = slow.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the gateway closed the connection instead of reading the body"
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no 100 Continue");
    let seen = String::from_utf8_lossy(&seen).into_owned();
    assert!(seen.starts_with("HTTP/1.1 100"), "{seen}");
    slow.write_all(b"{\"username\": \"stalled").await.unwrap();

    // SIGTERM: the process exits (`signal` waits 30 s for it) ...
    stack.signal("gateway", "TERM");
    // ... the stalled client's connection is gone, without an answer ...
    let rest = until_closed(&mut slow)
        .await
        .expect("the stalled connection outlived the gateway");
    assert!(rest.is_empty(), "the stalled request got an answer: {rest}");
    // ... and the log says why.
    let log = stack.logs_of("gateway");
    assert!(
        log.contains("connections still open at the shutdown deadline"),
        "{log}"
    );
}
