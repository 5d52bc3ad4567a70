//! Codes that are expired, reused, wrong or replaced are refused, and say why.

use std::time::Duration;

use serde_json::{json, Value};

use crate::flow::form_value;
use onboarding_e2e::{unique, Options, Stack};

const PASSWORD: &str = "a quiet cab at midnight";

async fn submit(stack: &Stack, code: &str, password: &str) -> (u16, Value) {
    stack.submit_password(code, password).await
}

#[tokio::test]
async fn a_reused_code_is_refused_and_says_the_account_is_active() {
    let stack = Stack::start("reuse", Options::default()).await;
    let (id, _, mail) = stack.invite_mailed("Reuser").await;
    let code = mail.code();

    let (status, body) = submit(&stack, &code, PASSWORD).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("Active")),
        "{body}"
    );
    assert_eq!(body["id"], id.as_str());

    let (status, body) = submit(&stack, &code, "another fine passphrase").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "already_active");
    assert!(body["message"].as_str().unwrap().contains("already active"));

    let page = stack
        .http
        .get(stack.url(&format!("/confirm?code={code}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 409);
    let html = page.text().await.unwrap();
    assert!(html.contains("already active"));
    assert!(
        !html.contains("type=\"password\""),
        "no password is asked for a used link"
    );
}

#[tokio::test]
async fn a_wrong_code_is_refused_and_the_right_one_still_works() {
    let stack = Stack::start("wrong", Options::default()).await;
    let email = format!("{}@pickup.example", unique("wrong."));
    stack.invite("Wrongo", &email).await;
    let code = stack.wait_for_mail(&email).await.code();

    // Same user and code id, forged tag.
    let mut forged = code.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [forged.as_str(), "not-a-code", ""] {
        let (status, body) = submit(&stack, bad, PASSWORD).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_code");
        assert!(body["message"].as_str().unwrap().contains("link"));
    }
    let page = stack
        .http
        .get(stack.url(&format!("/confirm?code={forged}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 400);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("This link is not valid"));

    let (status, body) = submit(&stack, &code, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn resend_mails_a_new_code_and_kills_the_old_one() {
    let stack = Stack::start("resend", Options::default()).await;
    let (id, email, mail) = stack.invite_mailed("Resender").await;
    let old = mail.code();

    let r = stack.resend(&id).await;
    assert_eq!(r.status(), 202);
    let mails = stack.wait_for_mails(&email, 2).await;
    let new = mails[1].code();
    assert_ne!(old, new);

    let page = stack
        .http
        .get(stack.url(&format!("/confirm?code={old}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 410);
    assert!(page.text().await.unwrap().contains("A newer link was sent"));
    let (status, body) = submit(&stack, &old, PASSWORD).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (410, Some("code_superseded")),
        "{body}"
    );

    let (status, _) = submit(&stack, &new, PASSWORD).await;
    assert_eq!(status, 200);

    let r = stack.resend(&id).await;
    assert_eq!(r.status(), 409, "no resend after activation");
}

#[tokio::test]
async fn an_expired_code_is_refused_marked_expired_listed_and_the_user_can_get_a_new_link() {
    let stack = Stack::start("expired", Options::default()).await;
    let email = format!("{}@pickup.example", unique("late."));
    let created = stack
        .admin(stack.http.post(stack.url("/api/v1/users")))
        .json(&json!({"username": "Latecomer", "email": email, "code_validity_minutes": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(created["code_expires_at"].as_str().unwrap()).unwrap();
    let code = stack.wait_for_mail(&email).await.code();

    // Wait for the real clock to pass the expiry (one minute: the smallest validity allowed).
    while chrono::Utc::now() <= expires_at {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let page = stack
        .http
        .get(stack.url(&format!("/confirm?code={code}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 410);
    let html = page.text().await.unwrap();
    assert!(html.contains("This link has expired"));
    assert!(
        !html.contains("type=\"password\""),
        "no password is asked for an expired link"
    );
    assert!(html.contains("Send me a new link"));

    let (status, body) = submit(&stack, &code, PASSWORD).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (410, Some("code_expired")),
        "{body}"
    );

    // The scheduler records the expiry as an event; admins can list expired invitations.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stack.user(&id).await["state"] != "Expired" {
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduler did not mark the invitation Expired"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let listed: Value = stack.list("state=Expired").await;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["user_id"] == id.as_str()),
        "{listed}"
    );

    // "Send me a new link" mails a fresh code to the address on file, and it works.
    let csrf = form_value(&html, "csrf");
    let r = stack
        .post_form(
            "/confirm/new-link",
            &[("code", code.as_str()), ("csrf", csrf.as_str())],
            &[],
        )
        .await;
    assert_eq!(r.status(), 200);
    let answer = r.text().await.unwrap();
    assert!(answer.contains("Check your email"));
    let mails = stack.wait_for_mails(&email, 2).await;
    let fresh = mails[1].code();
    assert_ne!(fresh, code);
    let (status, _) = submit(&stack, &fresh, PASSWORD).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_views_say_expired_from_the_codes_expiry_before_the_scheduler_records_it() {
    // The scheduler passes once at start, then not for an hour: whatever says `Expired` below
    // read the code's expiry, not a `CodeExpired` event.
    let stack = Stack::start(
        "expired_view",
        Options {
            expiry_scan_seconds: 3600,
            ..Options::default()
        },
    )
    .await;
    let email = format!("{}@pickup.example", unique("lapse."));
    let created = stack
        .admin(stack.http.post(stack.url("/api/v1/users")))
        .json(&json!({"username": "Lapsed", "email": email, "code_validity_minutes": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["state"], "CodeIssued");
    let id = created["id"].as_str().unwrap().to_owned();
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(created["code_expires_at"].as_str().unwrap()).unwrap();
    let listed_in = |list: &Value| {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["user_id"] == id.as_str())
            .cloned()
    };
    assert!(listed_in(&stack.list("state=CodeIssued").await).is_some());
    assert!(listed_in(&stack.list("state=Expired").await).is_none());

    // Wait for the real clock to pass the expiry (one minute: the smallest validity allowed).
    while chrono::Utc::now() <= expires_at {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let user = stack.user(&id).await;
    assert_eq!(user["state"], "Expired", "{user}");
    assert!(user["code_expires_at"].is_null(), "{user}");
    let expired = listed_in(&stack.list("state=Expired").await).expect("listed as Expired");
    assert_eq!(expired["state"], "Expired", "{expired}");
    assert!(expired["code_expires_at"].is_null(), "{expired}");
    let since = chrono::DateTime::parse_from_rfc3339(expired["state_since"].as_str().unwrap());
    assert_eq!(
        since.unwrap(),
        expires_at,
        "Expired since the code's expiry"
    );
    assert!(listed_in(&stack.list("state=CodeIssued").await).is_none());
    let everyone = listed_in(&stack.list("limit=500").await).unwrap();
    assert_eq!(everyone["state"], "Expired");

    // The CLI shows the same view.
    let shown = stack.cli(&["user", "show", &id]);
    assert!(shown.status.success());
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["state"], "Expired", "{shown}");

    // And no scheduler wrote it: the log has no CodeExpired yet.
    let events = stack.cli(&["events", &id]);
    assert!(events.status.success());
    let events = String::from_utf8(events.stdout).unwrap();
    assert!(events.contains("CodeIssued"), "{events}");
    assert!(!events.contains("CodeExpired"), "{events}");
}

#[tokio::test]
async fn a_new_link_request_answers_the_same_whether_or_not_a_link_is_sent() {
    let stack = Stack::start("newlink", Options::default()).await;
    let (id, email, mail) = stack.invite_mailed("Asker").await;
    let old = mail.code();
    let r = stack.resend(&id).await;
    assert_eq!(r.status(), 202);
    stack.wait_for_mails(&email, 2).await;

    // The replaced link's page offers a new link.
    let page = stack
        .http
        .get(stack.url(&format!("/confirm?code={old}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 410);
    let html = page.text().await.unwrap();
    assert!(html.contains("Send me a new link"));
    let csrf = form_value(&html, "csrf");
    let ask = || async {
        let r = stack
            .post_form(
                "/confirm/new-link",
                &[("code", old.as_str()), ("csrf", csrf.as_str())],
                &[],
            )
            .await;
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let sent = ask().await;
    assert_eq!(sent.0, 200);
    assert!(sent.1.contains("Check your email"));
    stack.wait_for_mails(&email, 3).await;

    // Once the invitation is withdrawn no link is sent, and the answer is the same.
    let r = stack
        .admin(
            stack
                .http
                .post(stack.url(&format!("/api/v1/users/{id}/revoke"))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let refused = ask().await;
    assert_eq!(
        refused, sent,
        "the answer must not tell whether a link was sent"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.mails_to(&email).await.len(), 3);
}

/// Event types of one user, from the CLI.
fn event_types(stack: &Stack, id: &str) -> Vec<String> {
    let out = stack.cli(&["events", id]);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["event_type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn opening_the_link_never_changes_anything_and_junk_posts_do_not_burn_the_code() {
    let stack = Stack::start("scanner", Options::default()).await;
    let email = format!("{}@pickup.example", unique("scan."));
    let id = stack.invite("Scanned", &email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mail = stack.wait_for_mail(&email).await;
    let link = mail.link();
    let code = mail.code();
    let before = event_types(&stack, &id);

    // A mail scanner: HEAD, GET twice, then form posts without a usable password.
    let scanner = "Mozilla/5.0 (compatible; SafeLinks scanner)";
    let options = stack
        .http
        .request(reqwest::Method::OPTIONS, &link)
        .send()
        .await
        .unwrap();
    assert!(
        options.status().is_client_error(),
        "OPTIONS is answered without effect"
    );
    assert_eq!(
        stack
            .http
            .head(&link)
            .header("user-agent", scanner)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let mut csrf = String::new();
    for _ in 0..2 {
        let page = stack
            .http
            .get(&link)
            .header("user-agent", scanner)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        csrf = form_value(&page.text().await.unwrap(), "csrf");
    }
    for form in [
        vec![("code", code.as_str()), ("csrf", csrf.as_str())],
        vec![
            ("code", code.as_str()),
            ("csrf", csrf.as_str()),
            ("password", ""),
            ("password_confirm", ""),
        ],
        vec![
            ("code", code.as_str()),
            ("csrf", csrf.as_str()),
            ("password", PASSWORD),
            ("password_confirm", "something else"),
        ],
        vec![
            ("code", code.as_str()),
            ("csrf", csrf.as_str()),
            ("password", "short"),
            ("password_confirm", "short"),
        ],
    ] {
        let r = stack.post_form("/confirm", &form, &[]).await;
        assert_eq!(r.status(), 422);
        let html = r.text().await.unwrap();
        assert!(html.contains("role=\"alert\""), "{html}");
        assert_eq!(
            form_value(&html, "code"),
            code,
            "the form is shown again with the same code"
        );
    }
    let r = stack
        .post_form(
            "/confirm",
            &[
                ("code", code.as_str()),
                ("csrf", csrf.as_str()),
                ("password", "short"),
                ("password_confirm", "short"),
            ],
            &[],
        )
        .await;
    assert!(
        r.text().await.unwrap().contains("too short"),
        "the page names the rule that failed"
    );

    // Only the openings were recorded, each with a coarse client class; no state changed.
    let after = event_types(&stack, &id);
    assert_eq!(after[..before.len()], before[..]);
    assert_eq!(
        after[before.len()..],
        ["LinkOpened", "LinkOpened", "LinkOpened"],
        "{after:?}"
    );
    let view = stack.user(&id).await;
    assert_eq!(view["state"], "CodeIssued");
    assert_eq!(view["links_opened"], 3);
    let out = String::from_utf8(stack.cli(&["events", &id]).stdout).unwrap();
    assert!(out.contains("\"client\":\"link-scanner\""), "{out}");
    assert!(!out.contains("127.0.0.1"), "no client address is recorded");

    // Jane's own submission still works.
    let r = stack
        .post_form(
            "/confirm",
            &[
                ("code", code.as_str()),
                ("csrf", csrf.as_str()),
                ("password", PASSWORD),
                ("password_confirm", PASSWORD),
            ],
            &[],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(stack.user(&id).await["state"], "Active");
}

#[tokio::test]
async fn forms_from_elsewhere_are_refused() {
    let stack = Stack::start("csrf", Options::default()).await;
    let email = format!("{}@pickup.example", unique("csrf."));
    let id = stack.invite("Forged", &email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mail = stack.wait_for_mail(&email).await;
    let code = mail.code();
    let html = stack
        .http
        .get(mail.link())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = form_value(&html, "csrf");
    let good = [
        ("code", code.as_str()),
        ("csrf", csrf.as_str()),
        ("password", PASSWORD),
        ("password_confirm", PASSWORD),
    ];

    let no_token = [
        ("code", code.as_str()),
        ("password", PASSWORD),
        ("password_confirm", PASSWORD),
    ];
    let r = stack.post_form("/confirm", &no_token, &[]).await;
    assert_eq!(r.status(), 403);
    let other_site = stack
        .post_form("/confirm", &good, &[("origin", "https://evil.example")])
        .await;
    assert_eq!(other_site.status(), 403);
    let cross = stack
        .post_form(
            "/confirm",
            &good,
            &[("origin", "null"), ("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(cross.status(), 403);
    assert_eq!(stack.user(&id).await["state"], "CodeIssued");

    let r = stack
        .post_form(
            "/confirm",
            &good,
            &[
                ("origin", stack.base_url.as_str()),
                ("sec-fetch-site", "same-origin"),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn weak_passwords_are_refused_with_the_rule_and_keep_the_code() {
    let stack = Stack::start("weak", Options::default()).await;
    let email = format!("{}@pickup.example", unique("weak."));
    stack.invite("Weakling", &email).await;
    let code = stack.wait_for_mail(&email).await.code();
    for (pw, rule) in [
        ("short", "too_short"),
        ("password1", "common"),
        ("i am weakling!", "contains_username"),
    ] {
        let (status, body) = submit(&stack, &code, pw).await;
        assert_eq!(status, 422, "{pw}: {body}");
        assert_eq!(body["error"], "weak_password");
        assert_eq!(body["rule"]["rule"], rule, "{body}");
    }
    let (status, _) = submit(&stack, &code, PASSWORD).await;
    assert_eq!(status, 200);

    // A list that cannot be read stops every command that opens the store, naming key and path.
    let missing = "/nonexistent/onboard/common-passwords.txt";
    let o = stack.cli_with_env(
        &["user", "show", "Weakling"],
        &[("ONBOARD__PASSWORD_POLICY__COMMON_PASSWORDS_FILE", missing)],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "password_policy.common_passwords_file {missing}: cannot be read"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_reload_loop_cannot_flood_the_log_with_link_openings() {
    let stack = Stack::start("reloads", Options::default()).await;
    let email = format!("{}@pickup.example", unique("reload."));
    let id = stack.invite("Reloader", &email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let link = stack.wait_for_mail(&email).await.link();
    for _ in 0..15 {
        assert_eq!(
            stack.http.get(&link).send().await.unwrap().status(),
            200,
            "the page is always shown"
        );
    }
    assert_eq!(
        stack.user(&id).await["links_opened"],
        10,
        "at most 10 openings a minute per address are recorded"
    );
}
