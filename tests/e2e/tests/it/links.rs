//! Wrong codes, resend limits, revocation and per-client limits.

use std::time::Duration;

use serde_json::{json, Value};

use crate::flow::form_value;
use onboarding_e2e::{unique, Options, Stack};

const PASSWORD: &str = "a quiet cab at midnight";

fn forge(code: &str, n: u8) -> String {
    let mut forged = code[..code.len() - 1].to_owned();
    let last = code.chars().last().unwrap();
    let pick = ['A', 'B', 'C', 'D', 'E', 'F', 'G'][n as usize % 7];
    forged.push(if last == pick { 'Z' } else { pick });
    forged
}

async fn submit(stack: &Stack, code: &str) -> (u16, Value) {
    stack.submit_password(code, PASSWORD).await
}

async fn wrong_codes_counted(stack: &Stack) -> f64 {
    let metrics = stack
        .http
        .get(stack.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .filter(|l| l.starts_with("onboard_wrong_codes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn wrong_codes_from_a_topic_reader_never_disable_the_link() {
    // A reader of the topic knows Jane's user id and live code id; it can forge as many tags as
    // its per-client budget allows (docs/adr/0021). None of them may cost Jane her link.
    let stack = Stack::start("guesses", Options::default()).await;
    let (id, _, mail) = stack.invite_mailed("Guessed").await;
    let code = mail.code();
    let guesses: Vec<String> = (0..7).map(|n| forge(&code, n)).collect();
    let answers = futures::future::join_all(guesses.iter().map(|g| submit(&stack, g))).await;
    assert!(
        answers
            .iter()
            .all(|(status, body)| *status == 400 && body["error"] == "invalid_code"),
        "{answers:?}"
    );
    for n in 7..10 {
        assert_eq!(submit(&stack, &forge(&code, n)).await.0, 400);
    }
    let user = stack.user(&id).await;
    assert_eq!(user["state"], "CodeIssued", "{user}");
    assert_eq!(user["failed_code_checks"], 0, "{user}");
    assert_eq!(wrong_codes_counted(&stack).await, 10.0);

    // The page still opens and Jane's genuine link still sets her password.
    let page = stack
        .http
        .get(stack.url(&format!("/confirm?code={code}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let (status, body) = submit(&stack, &code).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("Active")),
        "{body}"
    );
}

#[tokio::test]
async fn wrong_codes_through_the_page_form_are_refused_and_change_nothing() {
    let stack = Stack::start("lockout", Options::default()).await;
    let (id, _, mail) = stack.invite_mailed("Locked").await;
    let code = mail.code();
    // The form needs the token of a page rendered for the genuine code: a forger who has one
    // (it opened the real link once) still cannot lock the code with wrong tags.
    let html = stack
        .http
        .get(stack.url(&format!("/confirm?code={code}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = form_value(&html, "csrf");
    for n in 0..6 {
        let forged = forge(&code, n);
        let answer = stack
            .post_form(
                "/confirm",
                &[
                    ("code", forged.as_str()),
                    ("csrf", csrf.as_str()),
                    ("password", PASSWORD),
                    ("password_confirm", PASSWORD),
                ],
                &[
                    ("origin", stack.base_url.as_str()),
                    ("sec-fetch-site", "same-origin"),
                ],
            )
            .await;
        assert!(
            answer.status().is_client_error(),
            "a forged code through the form: {}",
            answer.status()
        );
    }
    let user = stack.user(&id).await;
    assert_eq!(user["state"], "CodeIssued", "{user}");
    assert_eq!(user["failed_code_checks"], 0, "{user}");
    let (status, body) = submit(&stack, &code).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("Active")),
        "{body}"
    );
}

#[tokio::test]
async fn resends_are_limited_with_retry_after() {
    let stack = Stack::start(
        "cooldown",
        Options {
            resend_cooldown_seconds: 3600,
            ..Options::default()
        },
    )
    .await;
    let email = format!("{}@pickup.example", unique("cd."));
    let id = stack.invite("Cooled", &email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = stack.resend(&id).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3500..=3600).contains(&retry), "Retry-After {retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "resend_limited");
}

#[tokio::test]
async fn admins_revoke_invitations_and_users_decline_them_from_the_mail() {
    let stack = Stack::start("revoke", Options::default()).await;
    let sam = format!("{}@pickup.example", unique("rv."));
    let id = stack.invite("Withdrawn", &sam).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let code = stack.wait_for_mail(&sam).await.code();
    let r = stack
        .admin(
            stack
                .http
                .post(stack.url(&format!("/api/v1/users/{id}/revoke"))),
        )
        .json(&json!({"reason": "offer withdrawn"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let view: Value = r.json().await.unwrap();
    assert_eq!(
        (view["state"].as_str(), view["revoked_by"].as_str()),
        (Some("Revoked"), Some("admin"))
    );
    let (status, body) = submit(&stack, &code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (410, Some("invitation_revoked"))
    );
    let page = stack
        .http
        .get(stack.url(&format!("/confirm?code={code}")))
        .send()
        .await
        .unwrap();
    assert!(page.text().await.unwrap().contains("withdrawn"));

    // The name is free again: while nobody holds it, it still finds the revoked account ...
    let shown = stack.cli(&["user", "show", "withdrawn"]);
    assert!(shown.status.success(), "{shown:?}");
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        (shown["id"].as_str(), shown["state"].as_str()),
        (Some(id.as_str()), Some("Revoked"))
    );
    // ... and the administrator invites it again at the right address.
    let right = format!("{}@pickup.example", unique("rv."));
    let again = stack.invite("Withdrawn", &right).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(again, id);
    stack.wait_for_mail(&right).await;
    let shown = stack.cli(&["user", "show", "Withdrawn"]);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        (shown["id"].as_str(), shown["state"].as_str()),
        (Some(again.as_str()), Some("CodeIssued"))
    );
    let history = stack.cli(&["audit", "history", &id]);
    assert!(
        String::from_utf8_lossy(&history.stdout).contains("InvitationRevoked"),
        "{history:?}"
    );

    // The user's side: the mail's "I didn't expect this" link asks first, then declines.
    let jane = format!("{}@pickup.example", unique("rv."));
    let id = stack.invite("Surprised", &jane).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mail = stack.wait_for_mail(&jane).await;
    let revoke_link = mail
        .text()
        .split_whitespace()
        .find(|w| w.contains("/revoke?code="))
        .expect("the mail carries a revoke link")
        .to_owned();
    let forged = format!("{}A", &revoke_link[..revoke_link.len() - 1]);
    let forged = if forged == revoke_link {
        format!("{}B", &revoke_link[..revoke_link.len() - 1])
    } else {
        forged
    };
    let page = stack.http.get(&forged).send().await.unwrap();
    assert_eq!(
        page.status(),
        400,
        "a forged revoke link is not offered the decline button"
    );
    assert!(!page
        .text()
        .await
        .unwrap()
        .contains("Decline the invitation"));
    let ask = stack.http.get(&revoke_link).send().await.unwrap();
    assert_eq!(ask.status(), 200);
    let html = ask.text().await.unwrap();
    assert!(html.contains("Decline this invitation?"));
    assert_eq!(
        stack.user(&id).await["state"],
        "CodeIssued",
        "GET changes nothing"
    );
    let r = stack
        .post_form(
            "/revoke",
            &[
                ("code", &form_value(&html, "code")),
                ("csrf", &form_value(&html, "csrf")),
            ],
            &[],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Invitation declined"));
    let view = stack.user(&id).await;
    assert_eq!(
        (view["state"].as_str(), view["revoked_by"].as_str()),
        (Some("Revoked"), Some("user"))
    );

    let listed: Value = stack.list("state=Revoked&limit=10").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");
    let bad = stack
        .admin(stack.http.get(stack.url("/api/v1/users?state=Gone")))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn one_client_cannot_submit_codes_without_limit() {
    let stack = Stack::start(
        "ratelimit",
        Options {
            public_rate_limit_per_minute: 3,
            ..Options::default()
        },
    )
    .await;
    let garbage = "x".repeat(64);
    for _ in 0..3 {
        assert_eq!(submit(&stack, &garbage).await.0, 400);
    }
    let r = stack
        .http
        .post(stack.url("/api/v1/password-submissions"))
        .json(&json!({"code": garbage, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    // No proxy is trusted: a client cannot claim another address to get a fresh budget.
    let r = stack
        .http
        .post(stack.url("/api/v1/password-submissions"))
        .header("x-forwarded-for", "198.51.100.7")
        .json(&json!({"code": garbage, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget() {
    let stack = Stack::new(
        "proxied",
        Options {
            public_rate_limit_per_minute: 2,
            ..Options::default()
        },
    )
    .await;
    // The test talks to the gateway from 127.0.0.1, as a reverse proxy on the same host would.
    stack.spawn_with_env(
        "gateway",
        &[("ONBOARD__GATEWAY__TRUSTED_PROXIES", r#"["127.0.0.1"]"#)],
    );
    stack.wait_ready().await;
    let garbage = "x".repeat(64);
    let submit_from = |forwarded_for: &'static str| {
        stack
            .http
            .post(stack.url("/api/v1/password-submissions"))
            .header("x-forwarded-for", forwarded_for)
            .json(&json!({"code": garbage, "password": PASSWORD}))
            .send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    for _ in 0..2 {
        assert_eq!(status(submit_from("203.0.113.9").await.unwrap()), 400);
    }
    assert_eq!(status(submit_from("203.0.113.9").await.unwrap()), 429);
    // Another user behind the same proxy is not held up by the first one.
    assert_eq!(status(submit_from("198.51.100.7").await.unwrap()), 400);
    // What a client puts in the header itself stays left of what the proxy appended.
    assert_eq!(
        status(submit_from("198.51.100.50, 203.0.113.9").await.unwrap()),
        429
    );
}

#[tokio::test]
async fn a_retried_request_with_an_idempotency_key_gets_the_first_answer_and_mails_once() {
    let stack = Stack::start("idempotency", Options::default()).await;
    let email = format!("{}@pickup.example", unique("idem."));
    let body = json!({"username": "Retried", "email": email});
    let create = |key: &'static str, body: Value| {
        stack
            .admin(stack.http.post(stack.url("/api/v1/users")))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = create("create-1", body.clone()).await.unwrap();
    assert_eq!(first.status(), 201);
    let location = first.headers()["location"].clone();
    let first: Value = first.json().await.unwrap();
    let again = create("create-1", body.clone()).await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["location"], location);
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        again["id"], first["id"],
        "the same invitation, not a second one"
    );

    let other = create("create-1", json!({"username": "Someone", "email": email}))
        .await
        .unwrap();
    assert_eq!(other.status(), 422);
    assert_eq!(
        other.json::<Value>().await.unwrap()["error"],
        "idempotency_key_reused"
    );

    let id = first["id"].as_str().unwrap();
    for _ in 0..2 {
        let r = stack
            .admin(
                stack
                    .http
                    .post(stack.url(&format!("/api/v1/users/{id}/resend"))),
            )
            .header("idempotency-key", "resend-1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    // Exactly one resend happened: the invitation's code and one more.
    let events = |out: &std::process::Output| -> Vec<Value> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let of = |events: &[Value], event: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["event_type"] == event)
            .map(|e| e["payload"][event]["code_id"].clone())
            .collect()
    };
    let codes = of(&events(&stack.cli(&["events", id])), "CodeIssued");
    assert_eq!(codes.len(), 2, "{codes:?}");
    // The resent code is mailed. The first may have been replaced before its mail went out (then
    // it never does): MailDev holds exactly the mails the worker recorded, one per code at most.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mailed = loop {
        let mailed = of(&events(&stack.cli(&["events", id])), "InvitationMailSent");
        if mailed.contains(&codes[1]) {
            break mailed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the resent code was not mailed: {mailed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        mailed.len() <= 2 && mailed.iter().all(|c| codes.contains(c)),
        "{mailed:?}"
    );
    let mails = stack.wait_for_mails(&email, mailed.len()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        stack.mails_to(&email).await.len(),
        mailed.len(),
        "{} mails",
        mails.len()
    );
}

#[tokio::test]
async fn admins_list_invitations_whose_mail_failed() {
    let nobody = onboarding_e2e::free_port();
    let stack = Stack::start(
        "failedmail",
        Options {
            smtp_port: Some(nobody),
            ..Options::default()
        },
    )
    .await;
    let email = format!("{}@pickup.example", unique("fail."));
    let id = stack.invite("Unreachable", &email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let view = stack.user(&id).await;
        if view["email_delivery"]["status"] == "failed" {
            assert_eq!(
                view["email_delivery"]["permanent"], false,
                "a refused connection is transient: {view}"
            );
            assert!(
                view["email_delivery"]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("transient"),
                "{view}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failure was never recorded: {view}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let failed: Value = stack.list("delivery=failed").await;
    let items = failed["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{failed}"));
    assert!(
        items
            .iter()
            .any(|i| i["user_id"] == id.as_str() && i["delivery"] == "failed"),
        "{failed}"
    );
    let sent: Value = stack.list("delivery=sent").await;
    assert!(sent["items"].as_array().unwrap().is_empty(), "{sent}");
    let bad = stack
        .admin(stack.http.get(stack.url("/api/v1/users?delivery=lost")))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}
