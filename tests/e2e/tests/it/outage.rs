//! Outages of a dependency, as the callers see them: while PostgreSQL is down every door answers
//! `503` with `Retry-After` (not `500`, and not after a long wait), `/readyz` names the missing
//! dependency for each role, a broker outage leaves the gateway ready while the outbox backlog
//! grows on the relay's `/metrics`, and everything works again once the dependency is back.
//! PostgreSQL and the broker are the test's own, so stopping them disturbs no other test.

use std::time::{Duration, Instant};

use reqwest::Response;
use serde_json::{json, Value};

use onboarding_e2e::{free_port, unique, Broker, Options, Postgres, Stack};

/// Starts gateway, relay (with `/readyz` and `/metrics` on a port of its own), email worker and
/// scheduler, and waits for the gateway; returns the relay's base URL.
async fn start_with_relay_endpoint(stack: &Stack) -> String {
    let relay = format!("127.0.0.1:{}", free_port());
    stack.spawn("gateway");
    stack.spawn_with_env("relay", &[("ONBOARD__OBSERVABILITY__METRICS_BIND", &relay)]);
    stack.spawn("email-worker");
    stack.spawn("scheduler");
    stack.wait_ready().await;
    format!("http://{relay}")
}

/// `GET url/readyz`: the status and the body, or `None` while nothing answers.
async fn readiness(stack: &Stack, base: &str) -> Option<(u16, Value)> {
    let r = stack.http.get(format!("{base}/readyz")).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

/// Polls `base/readyz` (up to 60 s) until `accept` holds for its status and body.
async fn readiness_until(
    stack: &Stack,
    base: &str,
    accept: impl Fn(u16, &Value) -> bool,
    what: &str,
) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        if let Some((status, body)) = readiness(stack, base).await {
            if accept(status, &body) {
                return (status, body);
            }
            last = Some((status, body));
        }
        assert!(
            Instant::now() < deadline,
            "{base}/readyz did not say {what} within 60 s; last answer: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn missing(body: &Value) -> Vec<&str> {
    body["missing"]
        .as_array()
        .map(|m| m.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The `Retry-After` of an answer, in seconds; fails the test without one.
fn retry_after(r: &Response) -> u64 {
    let value = r
        .headers()
        .get("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After on the {} answer", r.status()));
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After is not a number of seconds: {value:?}"))
}

async fn invite(stack: &Stack, username: &str, email: &str) -> Response {
    stack
        .admin(stack.http.post(stack.url("/api/v1/users")))
        .json(&json!({"username": username, "email": email}))
        .send()
        .await
        .unwrap()
}

/// One sample of `name` from a Prometheus text page.
fn gauge(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn relay_gauge(stack: &Stack, relay: &str, name: &str) -> Option<f64> {
    let page = stack
        .http
        .get(format!("{relay}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    gauge(&page, name)
}

/// Polls the relay's `/metrics` (up to 60 s) until the gauge `name` is `expected`.
async fn wait_for_gauge(stack: &Stack, relay: &str, name: &str, expected: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = relay_gauge(stack, relay, name).await;
        if value == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} on the relay's /metrics is {value:?}, not {expected}, after 60 s; logs in {}",
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn while_postgresql_is_down_every_door_answers_503_with_retry_after_and_then_works_again() {
    let postgres = Postgres::start("outage-pg-");
    let stack = Stack::new(
        "pgoutage",
        Options {
            database: Some(postgres.url.clone()),
            ..Options::default()
        },
    )
    .await;
    let relay = start_with_relay_endpoint(&stack).await;
    let (_, _, mail) = stack.invite_mailed("BeforeOutage").await;

    postgres.stop();

    // The API: 503 unavailable with Retry-After, and a message that says to retry.
    let email = format!("{}@pickup.example", unique("during."));
    let r = invite(&stack, "DuringOutage", &email).await;
    assert_eq!(r.status(), 503, "{:?}", r.text().await);
    assert!(retry_after(&r) >= 1);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unavailable", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("retry in"),
        "{body}"
    );

    // SCIM: the same, as a SCIM Error message.
    let r = stack
        .admin(stack.http.post(stack.url("/scim2/Users")))
        .header("content-type", "application/scim+json")
        .json(&json!({
            "schemas": [
                "urn:ietf:params:scim:schemas:core:2.0:User",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
            ],
            "userName": "ScimDuringOutage",
            "emails": [{"value": format!("{}@pickup.example", unique("scim.")), "primary": true}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"askPassword": true}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "{:?}", r.text().await);
    assert!(retry_after(&r) >= 1);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:Error"]),
        "{body}"
    );
    assert_eq!(body["status"], "503", "{body}");

    // The page behind the link: an HTML page that says to try again.
    let r = stack
        .http
        .get(stack.url(&format!("/confirm?code={}", mail.code())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(retry_after(&r) >= 1);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = r.text().await.unwrap();
    assert!(page.contains("try again"), "{page}");

    // Readiness: the gateway and the relay both say that PostgreSQL is what they miss.
    for base in [stack.base_url.as_str(), relay.as_str()] {
        let (status, body) = readiness_until(
            &stack,
            base,
            |_, body| missing(body).contains(&"postgres"),
            "that postgres is missing",
        )
        .await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["status"], "unavailable", "{body}");
        assert_ne!(body["checks"]["postgres"], "ok", "{body}");
    }

    // PostgreSQL comes back: the same invitation is accepted and mailed, and both are ready.
    postgres.resume();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = invite(&stack, "DuringOutage", &email).await;
        let status = r.status();
        if status == 201 {
            break;
        }
        assert_eq!(status, 503, "{:?}", r.text().await);
        assert!(
            Instant::now() < deadline,
            "invitations were still refused 60 s after PostgreSQL came back; logs in {}",
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stack.wait_for_mail(&email).await;
    for base in [stack.base_url.as_str(), relay.as_str()] {
        readiness_until(&stack, base, |status, _| status == 200, "ready").await;
    }
}

#[tokio::test]
async fn while_the_broker_is_down_the_gateway_stays_ready_and_the_outbox_backlog_shows() {
    let mut broker = Broker::start("outage-kafka-");
    let stack = Stack::new(
        "brokeroutage",
        Options {
            kafka: Some(broker.addr.clone()),
            ..Options::default()
        },
    )
    .await;
    let relay = start_with_relay_endpoint(&stack).await;
    // One invitation through the whole way, so the relay knows what the broker holds.
    let (id, _, _) = stack.invite_mailed("BeforeOutage").await;
    // The mail's record is appended after the SMTP server accepted it: wait for it too, or it
    // lands in the outbox during the outage.
    stack.wait_for_delivery(&id, "sent").await;
    wait_for_gauge(&stack, &relay, "onboard_outbox_backlog", 0.0).await;

    broker.stop();

    // The relay cannot do its job and says that Kafka is what it misses.
    let (status, body) = readiness_until(
        &stack,
        &relay,
        |_, body| missing(body).contains(&"kafka"),
        "that kafka is missing",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["roles"]["relay"]["missing"],
        json!(["kafka"]),
        "{body}"
    );
    assert_eq!(body["checks"]["postgres"], "ok", "{body}");

    // The gateway needs only PostgreSQL: it stays ready and takes invitations, which wait in
    // the outbox (two events each), as the relay's gauges show.
    let (status, body) = readiness(&stack, &stack.base_url).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(missing(&body), Vec::<&str>::new(), "{body}");
    for i in 0..3 {
        let email = format!("{}@pickup.example", unique("queued."));
        let r = invite(&stack, &format!("Queued{i}"), &email).await;
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
    }
    // The gauge shows what waits in the outbox: the 6 events, and any event of the invitation
    // before the outage that the relay had not published yet (the gauge is sampled every second,
    // so its 0 above may have been read just before that event was appended).
    let pool = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await
            .unwrap();
        let gauge = relay_gauge(&stack, &relay, "onboard_outbox_backlog").await;
        if waiting >= 6 && gauge == Some(waiting as f64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "onboard_outbox_backlog on the relay's /metrics is {gauge:?}, with {waiting} rows in the outbox (6 or more expected), after 60 s; logs in {}",
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let age = relay_gauge(&stack, &relay, "onboard_outbox_oldest_age_seconds").await;
    assert!(age.is_some_and(|a| a > 0.0), "oldest age: {age:?}");

    // The broker comes back (empty: the relay republishes the log): the backlog drains.
    broker.resume();
    wait_for_gauge(&stack, &relay, "onboard_outbox_backlog", 0.0).await;
    assert_eq!(
        relay_gauge(&stack, &relay, "onboard_outbox_oldest_age_seconds").await,
        Some(0.0)
    );
    readiness_until(&stack, &relay, |status, _| status == 200, "ready").await;
}

#[tokio::test]
async fn a_writer_stalled_inside_its_transaction_does_not_hold_every_append_forever() {
    let stack = Stack::new("stalledwriter", Options::default()).await;
    stack.spawn_with_env(
        "gateway",
        &[("ONBOARD__DATABASE__LOCK_TIMEOUT_SECONDS", "1")],
    );
    stack.wait_ready().await;

    // A client takes the lock every append takes (migration 0008) and stops inside its
    // transaction, as a writer whose process froze would.
    let pool = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let mut stalled = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(8029185077895312386)")
        .execute(&mut *stalled)
        .await
        .unwrap();

    // The invitation gives up waiting after lock_timeout: 503 with Retry-After, not a hang.
    let email = format!("{}@pickup.example", unique("stalled."));
    let r = invite(&stack, "BehindStalled", &email).await;
    assert_eq!(r.status(), 503, "{:?}", r.text().await);
    assert!(retry_after(&r) >= 1);

    // Once the stalled writer is gone, the same invitation is accepted.
    stalled.rollback().await.unwrap();
    let r = invite(&stack, "BehindStalled", &email).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
}

#[tokio::test]
async fn roles_started_while_postgresql_is_down_wait_for_it_and_then_work() {
    let postgres = Postgres::start("late-pg-");
    let stack = Stack::new(
        "latepg",
        Options {
            database: Some(postgres.url.clone()),
            ..Options::default()
        },
    )
    .await;
    postgres.stop();

    // Every role starts while PostgreSQL is down; none of them exits.
    let relay = format!("127.0.0.1:{}", free_port());
    let relay = {
        stack.spawn("gateway");
        stack.spawn_with_env("relay", &[("ONBOARD__OBSERVABILITY__METRICS_BIND", &relay)]);
        stack.spawn("email-worker");
        stack.spawn("scheduler");
        format!("http://{relay}")
    };

    // Meanwhile they say that they are not ready, and why.
    for base in [stack.base_url.as_str(), relay.as_str()] {
        let (status, body) = readiness_until(
            &stack,
            base,
            |_, body| missing(body).contains(&"postgres"),
            "that postgres is missing",
        )
        .await;
        assert_eq!(status, 503, "{body}");
    }
    // And each says at WARN what it waits for.
    for role in ["gateway", "relay", "email-worker", "scheduler"] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = stack.logs_of(role);
            if log.contains("WARN") && log.contains("PostgreSQL does not answer") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the {role} did not say that it waits for PostgreSQL within 60 s: {log}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // PostgreSQL starts: every role becomes ready and does its job.
    postgres.resume();
    stack.wait_ready().await;
    readiness_until(&stack, &relay, |status, _| status == 200, "ready").await;
    let (id, _, _) = stack.invite_mailed("AfterLateStart").await;
    stack.wait_for_delivery(&id, "sent").await;
    // None of them stopped on the way (the supervisor-less test would have no relay or worker
    // left to mail otherwise; the logs say so too).
    for role in ["gateway", "relay", "email-worker", "scheduler"] {
        let log = stack.logs_of(role);
        assert!(
            !log.contains("cannot connect to PostgreSQL") && !log.contains("stopped unexpectedly"),
            "the {role} failed: {log}"
        );
    }
}
