//! Rate limits on every route that reads accounts: the pages behind the links per client, the
//! admin API, bulk uploads and SCIM per admin token, and a client as one IPv4 address or one
//! IPv6 /64 behind a trusted proxy.
//!
//! Each budget is a few requests a minute, refilled one by one over the minute: the requests
//! past it here are sent right after, well before a refill.

use reqwest::{Method, Response};
use serde_json::{json, Value};
use uuid::Uuid;

use onboarding_e2e::{Options, Stack};

const SCIM_ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// A stack with only a gateway, started with `env` on top of its configuration.
async fn gateway(name: &str, options: Options, env: &[(&str, &str)]) -> Stack {
    let stack = Stack::new(name, options).await;
    stack.spawn_with_env("gateway", env);
    stack.wait_ready().await;
    stack
}

/// The `Retry-After` of a `429`, which must be a whole number of seconds, at least 1.
fn retry_after(r: &Response) -> u64 {
    assert_eq!(r.status(), 429);
    let seconds: u64 = r
        .headers()
        .get("retry-after")
        .expect("a 429 carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds");
    assert!((1..=60).contains(&seconds), "Retry-After {seconds}");
    seconds
}

/// The gateway's count of refusals for one route group, from `/metrics`.
async fn refused(stack: &Stack, group: &str) -> u64 {
    let text = stack
        .http
        .get(stack.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("onboard_rate_limited_total{{group=\"{group}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test]
async fn opening_the_links_is_limited_per_client_and_health_is_not() {
    let stack = gateway(
        "pagelimit",
        Options {
            page_rate_limit_per_minute: 2,
            ..Options::default()
        },
        &[],
    )
    .await;
    let open = |method: Method, path: &str| {
        stack
            .http
            .request(method, stack.url(path))
            .header("accept-language", "en")
            .send()
    };
    // Both pages spend one budget; a code that names nothing still costs a request.
    let r = open(Method::GET, "/confirm?code=junk").await.unwrap();
    assert_eq!(r.status(), 400);
    let r = open(Method::HEAD, "/revoke?code=junk").await.unwrap();
    assert_eq!(r.status(), 400);

    let r = open(Method::GET, "/confirm?code=junk").await.unwrap();
    let seconds = retry_after(&r);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = r.text().await.unwrap();
    assert!(html.contains("Please wait a moment"), "{html}");
    assert!(
        html.contains(&format!("Wait {seconds} seconds")),
        "the page says how long to wait: {html}"
    );
    let r = open(Method::GET, "/revoke?code=junk").await.unwrap();
    retry_after(&r);
    assert_eq!(refused(&stack, "pages").await, 2);

    // The public posts have a budget of their own.
    let r = stack
        .http
        .post(stack.url("/api/v1/password-submissions"))
        .json(&json!({"code": "junk", "password": "a quiet cab at midnight"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Health and metrics answer the limited client, however often it asks.
    for _ in 0..5 {
        for path in ["/healthz", "/readyz", "/metrics", "/assets/onboard.css"] {
            let r = stack.http.get(stack.url(path)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
        }
    }
}

#[tokio::test]
async fn an_admin_token_has_one_budget_over_the_api_and_bulk_uploads() {
    let stack = gateway(
        "adminlimit",
        Options {
            admin_rate_limit_per_minute: 3,
            public_rate_limit_per_minute: 2,
            ..Options::default()
        },
        &[],
    )
    .await;
    let unknown = Uuid::new_v4();
    let as_admin = |method: Method, path: String| {
        stack
            .admin(stack.http.request(method, stack.url(&path)))
            .send()
    };
    let r = as_admin(Method::GET, "/api/v1/users".into()).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = as_admin(Method::GET, format!("/api/v1/users/{unknown}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = as_admin(Method::GET, format!("/api/v1/bulk-invites/{unknown}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let r = as_admin(Method::GET, "/api/v1/users".into()).await.unwrap();
    retry_after(&r);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("this admin token") && message.contains("retry in"),
        "{message}"
    );
    // A bulk upload is refused before its file is read, and nothing is created.
    let r = stack
        .admin(stack.http.post(stack.url("/api/v1/bulk-invites")))
        .header("content-type", "text/csv")
        .body("username,email\nLimited,limited@pickup.example\n")
        .send()
        .await
        .unwrap();
    retry_after(&r);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert_eq!(refused(&stack, "api").await, 1);
    assert_eq!(refused(&stack, "bulk").await, 1);

    // Another token, from the same address, has its own budget.
    let r = stack
        .http
        .get(stack.url("/api/v1/users"))
        .bearer_auth(&stack.reader_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Without a valid token the client's own budget counts, apart from the public posts'.
    for token in [None, Some(&stack.revoked_token)] {
        let mut req = stack.http.get(stack.url("/api/v1/users"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        assert_eq!(req.send().await.unwrap().status(), 401);
    }
    let r = stack
        .http
        .get(stack.url("/api/v1/users"))
        .send()
        .await
        .unwrap();
    retry_after(&r);
    assert_eq!(refused(&stack, "api").await, 2);
    let r = stack
        .http
        .post(stack.url("/api/v1/password-submissions"))
        .json(&json!({"code": "junk", "password": "a quiet cab at midnight"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn scim_over_the_token_budget_answers_a_scim_error_with_retry_after() {
    let stack = gateway(
        "scimlimit",
        Options {
            admin_rate_limit_per_minute: 2,
            ..Options::default()
        },
        &[],
    )
    .await;
    let search = || {
        stack
            .admin(
                stack
                    .http
                    .get(stack.url("/scim2/Users?filter=userName%20eq%20%22nobody%22")),
            )
            .send()
    };
    for _ in 0..2 {
        assert_eq!(search().await.unwrap().status(), 200);
    }
    let r = search().await.unwrap();
    retry_after(&r);
    assert_eq!(r.headers()["content-type"], "application/scim+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["schemas"], json!([SCIM_ERROR]), "{body}");
    assert_eq!(body["status"], "429", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("this admin token") && d.contains("retry in")),
        "{body}"
    );
    assert_eq!(refused(&stack, "scim").await, 1);
}

#[tokio::test]
async fn behind_a_trusted_proxy_one_ipv6_64_is_one_client() {
    // The test talks to the gateway from 127.0.0.1, as a reverse proxy on the same host would.
    let stack = gateway(
        "prefix64",
        Options {
            page_rate_limit_per_minute: 2,
            ..Options::default()
        },
        &[("ONBOARD__GATEWAY__TRUSTED_PROXIES", r#"["127.0.0.1"]"#)],
    )
    .await;
    let open_from = |client: &'static str| {
        let stack = &stack;
        async move {
            stack
                .http
                .get(stack.url("/confirm?code=junk"))
                .header("x-forwarded-for", client)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(open_from("2001:db8:1:2::10").await, 400);
    assert_eq!(open_from("2001:db8:1:2:ab::20").await, 400);
    // A third address in the same /64 is the same client, over its budget.
    assert_eq!(open_from("2001:db8:1:2:ffff:ffff:ffff:ffff").await, 429);
    // The neighbouring /64 is another client.
    assert_eq!(open_from("2001:db8:1:3::10").await, 400);
    // An IPv4 address and its IPv4-mapped IPv6 form are one client.
    assert_eq!(open_from("203.0.113.9").await, 400);
    assert_eq!(open_from("::ffff:203.0.113.9").await, 400);
    assert_eq!(open_from("203.0.113.9").await, 429);
    assert_eq!(open_from("203.0.113.10").await, 400);
}
